//! The server's TOML configuration. Unknown keys, wrong types and unknown drivers are
//! errors naming the key or driver, the file and the line, reported before anything
//! listens.

use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};

use paastech_core::Hostname;
use paastech_ingress::{Certificate, CertificateError, IpRange};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};

/// The whole file. Every section is optional; the defaults are the embedded platform.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Where PaaSTech keeps its database, repositories, builds and logs.
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub api: ApiSection,
    #[serde(default)]
    pub ssh: SshSection,
    #[serde(default)]
    pub ingress: IngressSection,
    #[serde(default)]
    pub tls: TlsSection,
    #[serde(default)]
    pub database: DatabaseSection,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub registry: RegistrySection,
    #[serde(default)]
    pub secrets: SecretsSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub webhooks: WebhooksSection,
    #[serde(default)]
    pub previews: PreviewsSection,
    #[serde(default)]
    pub audit: AuditSection,
    /// Mail to users (address checks, password resets, notices); none without it.
    pub smtp: Option<SmtpSection>,
    /// `driver` plus that driver's own keys; checked by the driver registry.
    #[serde(default)]
    pub runtime: toml::Table,
    /// `driver`, `project_hooks`, plus the build driver's own keys.
    #[serde(default)]
    pub build: toml::Table,
    #[serde(default)]
    pub hooks: Vec<HookConfig>,
    /// `[addons.KIND]`: the add-on kinds offered, each with its own keys (checked by the
    /// add-on registry).
    #[serde(default)]
    pub addons: std::collections::BTreeMap<String, toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    #[serde(default = "ApiSection::default_listen")]
    pub listen: SocketAddr,
    /// Open connections at most; past it, a new one is answered 503 and closed.
    #[serde(default = "ApiSection::default_max_connections")]
    pub max_connections: NonZeroUsize,
    /// The host name the ingress serves the API and web UI on too (over HTTPS, with plain
    /// HTTP redirected once a certificate is held), so no other proxy is needed in front.
    /// No project may claim it as a custom domain; when it is `LABEL.<domain>`, the
    /// operator's wildcard certificate covers it and LABEL is no project's name.
    #[serde(default, deserialize_with = "host_name")]
    pub public_host: Option<Hostname>,
    /// How long an interactive `paastech run` session may see neither input nor output
    /// before the server ends it (and kills its command).
    #[serde(default = "ApiSection::default_run_idle_timeout_secs")]
    pub run_idle_timeout_secs: NonZeroU64,
    /// Where users open the web UI (`https://paastech.example.com`): the links in mails
    /// point there. Default: `https://` + `public_host` when that is set.
    pub public_url: Option<String>,
}

fn host_name<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Hostname>, D::Error> {
    let text = String::deserialize(deserializer)?;
    Hostname::parse(&text).map(Some).map_err(|err| serde::de::Error::custom(err.to_string()))
}

impl ApiSection {
    fn default_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 7000))
    }
    fn default_max_connections() -> NonZeroUsize {
        paastech_web::DEFAULT_MAX_CONNECTIONS
    }
    fn default_run_idle_timeout_secs() -> NonZeroU64 {
        NonZeroU64::new(paastech_core::orchestrator::INTERACTIVE_IDLE.as_secs()).expect("a default above zero")
    }
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            listen: Self::default_listen(),
            max_connections: Self::default_max_connections(),
            public_host: None,
            public_url: None,
            run_idle_timeout_secs: Self::default_run_idle_timeout_secs(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshSection {
    #[serde(default = "SshSection::default_listen")]
    pub listen: SocketAddr,
    /// The host name shown in git URLs (default: the ingress domain).
    pub public_host: Option<String>,
}

impl SshSection {
    fn default_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 2222))
    }
}

impl Default for SshSection {
    fn default() -> Self {
        SshSection { listen: Self::default_listen(), public_host: None }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressSection {
    #[serde(default = "IngressSection::default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "IngressSection::default_domain")]
    pub domain: String,
    /// The port users reach the ingress on, if a proxy in front changes it.
    pub public_port: Option<u16>,
    /// Where the ingress serves HTTPS (HTTP/1.1 and HTTP/2), with the `[tls]`
    /// certificates; no HTTPS without it.
    pub https_listen: Option<SocketAddr>,
    /// The port users reach HTTPS on, if a proxy or port forwarding in front changes it:
    /// named in app URLs and in redirects to HTTPS (default: the https_listen port).
    pub https_public_port: Option<u16>,
    /// What a new `web` instance must answer (any status below 500) before it gets traffic.
    #[serde(default = "IngressSection::default_health_path")]
    pub health_path: String,
    /// How long a new `web` instance has to answer its health check.
    #[serde(default = "IngressSection::default_health_timeout")]
    pub health_timeout_secs: u64,
    /// How long requests in flight to replaced instances may take before those stop.
    #[serde(default = "IngressSection::default_drain_timeout")]
    pub drain_timeout_secs: u64,
    /// How long an app may take to start answering a request (then the client gets a
    /// 504 page), and then how long it may send nothing in the middle of its answer.
    #[serde(default = "IngressSection::default_backend_timeout")]
    pub backend_timeout_secs: NonZeroU64,
    /// Proxy threads (default: one per core).
    pub threads: Option<NonZeroUsize>,
    /// Addresses or CIDR blocks of proxies in front (a load balancer, a TLS terminator)
    /// whose `X-Forwarded-Proto` reaches apps; from anyone else it is `http`.
    #[serde(default, deserialize_with = "ip_ranges")]
    pub trusted_proxies: Vec<IpRange>,
    /// Open client connections at most; past it, a new one gets a 503 page and is closed.
    #[serde(default = "IngressSection::default_max_connections")]
    pub max_connections: NonZeroUsize,
    /// How long a request for a sleeping app is held while it wakes (its web instances
    /// start and pass their health check); past it, a 503 page saying why.
    #[serde(default = "IngressSection::default_wake_timeout")]
    pub wake_timeout_secs: NonZeroU64,
    /// For tests only: how many seconds a minute of a project's sleep idle time lasts
    /// (`paastech sleep on --after 2` with 1 here sleeps after 2 s). Default 60.
    #[serde(default = "IngressSection::default_sleep_minute")]
    pub sleep_minute_secs: NonZeroU64,
}

fn ip_ranges<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<IpRange>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    texts.iter().map(|text| text.parse().map_err(serde::de::Error::custom)).collect()
}

impl IngressSection {
    fn default_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8000))
    }
    fn default_domain() -> String {
        "localhost".into()
    }
    fn default_health_path() -> String {
        "/".into()
    }
    fn default_health_timeout() -> u64 {
        30
    }
    fn default_drain_timeout() -> u64 {
        30
    }
    fn default_backend_timeout() -> NonZeroU64 {
        NonZeroU64::new(60).unwrap_or(NonZeroU64::MIN)
    }
    fn default_max_connections() -> NonZeroUsize {
        paastech_ingress::DEFAULT_MAX_CONNECTIONS
    }
    fn default_wake_timeout() -> NonZeroU64 {
        NonZeroU64::new(paastech_ingress::DEFAULT_WAKE_TIMEOUT.as_secs()).unwrap_or(NonZeroU64::MIN)
    }
    fn default_sleep_minute() -> NonZeroU64 {
        NonZeroU64::new(60).unwrap_or(NonZeroU64::MIN)
    }
}

impl Default for IngressSection {
    fn default() -> Self {
        IngressSection {
            listen: Self::default_listen(),
            domain: Self::default_domain(),
            public_port: None,
            https_listen: None,
            https_public_port: None,
            health_path: Self::default_health_path(),
            health_timeout_secs: Self::default_health_timeout(),
            drain_timeout_secs: Self::default_drain_timeout(),
            backend_timeout_secs: Self::default_backend_timeout(),
            threads: None,
            trusted_proxies: Vec::new(),
            max_connections: Self::default_max_connections(),
            wake_timeout_secs: Self::default_wake_timeout(),
            sleep_minute_secs: Self::default_sleep_minute(),
        }
    }
}

/// The ingress's certificates: the operator's wildcard for `*.<domain>`, and ACME for
/// every other name (all names when there is no wildcard).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// A PEM certificate chain (leaf first) for `*.<domain>`, served for every app.
    pub cert_file: Option<PathBuf>,
    /// Its PEM private key (PKCS#8, SEC1 or RSA).
    pub key_file: Option<PathBuf>,
    /// The ACME CA's directory URL; default Let's Encrypt.
    pub acme_directory: Option<String>,
    /// A PEM root the CA's HTTPS is checked against (a test or private CA).
    pub acme_ca_file: Option<PathBuf>,
    /// Contact address given to the CA.
    pub email: Option<String>,
    /// `http-01` (default) or `tls-alpn-01`.
    pub challenge: Option<String>,
    /// Seconds before the first retry of a failed order (doubled after each further
    /// failure, up to 6 hours); default 60.
    pub acme_retry_secs: Option<u64>,
}

impl TlsSection {
    /// Whether any ACME key is set.
    fn names_acme(&self) -> bool {
        self.acme_directory.is_some()
            || self.acme_ca_file.is_some()
            || self.email.is_some()
            || self.challenge.is_some()
            || self.acme_retry_secs.is_some()
    }
}

/// How the ingress gets its certificates, checked.
pub struct TlsSettings {
    /// The operator's certificate for `*.<domain>`.
    pub wildcard: Option<Certificate>,
    /// ACME, for every name the wildcard does not cover.
    pub acme: Option<AcmeSettings>,
}

/// The `[tls]` ACME keys, checked, with defaults filled in.
pub struct AcmeSettings {
    pub directory: String,
    pub ca_file: Option<PathBuf>,
    pub email: Option<String>,
    pub challenge: paastech_acme::ChallengeKind,
    pub retry_first: std::time::Duration,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    /// `sqlite:///path/to/file.db` or `postgres://user@host/db`; default: SQLite in data_dir.
    pub url: Option<String>,
}

/// The container registry container builds are pushed to (none by default).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RegistrySection {
    /// `host:port` as image names start with it: `127.0.0.1:5000`, `registry.internal:5000`.
    pub url: Option<String>,
    pub username: Option<String>,
    /// Never logged.
    pub password: Option<String>,
}

impl fmt::Debug for RegistrySection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrySection")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Where the key that seals config vars at rest lives.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SecretsSection {
    /// The key file (relative paths are relative to the config file's directory); default
    /// `secrets/secrets.key` in data_dir. Created (0600) on first start when missing.
    pub key_file: Option<PathBuf>,
}

/// Where deploy webhooks may be sent.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WebhooksSection {
    /// Let webhooks reach loopback and private addresses (default: refused, so that a
    /// user's webhook cannot probe the server's own network).
    #[serde(default)]
    pub allow_private_targets: bool,
}

/// The mail server users' mail goes through.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSection {
    /// `smtp://HOST:PORT` (plain), `smtp://HOST:587?tls=required` (STARTTLS) or
    /// `smtps://HOST:465`, with `USER:PASSWORD@` before the host for a login.
    pub url: String,
    /// The sender: `PaaSTech <paastech@example.com>` or a bare address.
    pub from: String,
}

/// Preview apps (`paastech previews on`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewsSection {
    /// How many preview apps one project may have at once (1 to 100).
    #[serde(default = "default_max_previews")]
    pub max_per_project: i64,
}

impl Default for PreviewsSection {
    fn default() -> Self {
        PreviewsSection { max_per_project: default_max_previews() }
    }
}

fn default_max_previews() -> i64 {
    paastech_core::previews::DEFAULT_MAX_PER_PROJECT as i64
}

/// The audit log (`paastech audit`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// How many days records are kept; older ones are dropped (checked every hour).
    #[serde(default = "default_audit_retention_days")]
    pub retention_days: std::num::NonZeroU32,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection { retention_days: default_audit_retention_days() }
    }
}

fn default_audit_retention_days() -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(paastech_core::audit::DEFAULT_RETENTION_DAYS).expect("a default above zero")
}

/// Prometheus's own listener. Without it, `GET /metrics` is on the API listener, for
/// admins' tokens only.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Where `GET /metrics` is served without a token (keep it on a private address).
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Signup {
    #[default]
    Open,
    Closed,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    #[serde(default)]
    pub signup: Signup,
    /// Every user must turn on two-factor login before anything else.
    #[serde(default)]
    pub require_2fa: bool,
}

/// One `[[hooks]]` entry: an operator's WASM build hook, run for every project.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    pub name: String,
    /// The component; relative paths are relative to the config file's directory.
    pub path: PathBuf,
    /// `pre-build`, `post-build`, `pre-deploy`, `post-deploy`.
    pub stages: Vec<String>,
    /// What the hook reads with `config(key)`.
    #[serde(default)]
    pub config: toml::Table,
    /// Wall time of one call (default 10 000).
    pub timeout_ms: Option<u64>,
    /// Memory cap of one call (default 64).
    pub memory_mb: Option<u64>,
}

/// A configuration error, with where it is when that is known.
#[derive(Debug)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{line}: {}", file.display(), self.message),
            (Some(file), None) => write!(f, "{}: {}", file.display(), self.message),
            (None, Some(line)) => write!(f, "line {line}: {}", self.message),
            (None, None) => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The text of a configuration, kept to point at lines of it.
pub struct Source {
    pub file: Option<PathBuf>,
    pub text: String,
}

impl Source {
    pub fn read(path: &Path) -> Result<Source, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
            file: Some(path.to_owned()),
            line: None,
            message: format!("cannot read the config file: {err}"),
        })?;
        Ok(Source { file: Some(path.to_owned()), text })
    }

    pub fn embedded() -> Source {
        Source { file: None, text: String::new() }
    }

    fn error(&self, line: Option<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError { file: self.file.clone(), line, message: message.into() }
    }

    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())].bytes().filter(|b| *b == b'\n').count() + 1
    }

    /// The line where `section.key` is written (or the section itself, with `key` None).
    pub fn line_of_key(&self, section: &str, key: Option<&str>) -> Option<usize> {
        let doc = DeTable::parse(&self.text).ok()?;
        let (section_key, section_value) = doc.get_ref().iter().find(|(k, _)| k.get_ref() == section)?;
        let Some(key) = key else {
            return Some(self.line_of(section_key.span().start));
        };
        match section_value.get_ref() {
            DeValue::Table(table) => {
                table.iter().find(|(k, _)| k.get_ref() == key).map(|(k, _)| self.line_of(k.span().start))
            }
            _ => None,
        }
    }

    /// The line of the `index`th `[[section]]` table (or of its `key`, when written).
    pub fn line_of_array_table(&self, section: &str, index: usize, key: Option<&str>) -> Option<usize> {
        let doc = DeTable::parse(&self.text).ok()?;
        let (_, value) = doc.get_ref().iter().find(|(k, _)| k.get_ref() == section)?;
        let DeValue::Array(items) = value.get_ref() else {
            return None;
        };
        let item = items.get(index)?;
        if let (Some(key), DeValue::Table(table)) = (key, item.get_ref())
            && let Some((k, _)) = table.iter().find(|(k, _)| k.get_ref() == key)
        {
            return Some(self.line_of(k.span().start));
        }
        // A table's span starts after its `[[section]]` header: point at the header.
        let start = item.span().start;
        let header = self.text[..start.min(self.text.len())].rfind(&format!("[[{section}]]")).unwrap_or(start);
        Some(self.line_of(header))
    }

    pub fn parse(&self) -> Result<ServerConfig, ConfigError> {
        toml::from_str(&self.text).map_err(|err| {
            let line = err.span().map(|span| self.line_of(span.start));
            let message = err.message().trim_end().to_owned();
            let message = match err.span().and_then(|span| self.key_at(span.start)) {
                Some(key) if !message.contains(&format!("`{}`", key.rsplit('.').next().unwrap_or(&key))) => {
                    format!("{key}: {message}")
                }
                _ => message,
            };
            self.error(line, message)
        })
    }

    /// The dotted name of the key written on the line holding `offset` (`ssh.listen`), read
    /// off the text, since toml's error names the key only when it has no position.
    fn key_at(&self, offset: usize) -> Option<String> {
        let line_no = self.line_of(offset);
        let lines: Vec<&str> = self.text.lines().collect();
        let line = lines.get(line_no - 1)?;
        let (key, _) = line.split_once('=')?;
        let key = key.trim();
        if key.is_empty() || key.starts_with('#') {
            return None;
        }
        let section = lines[..line_no - 1]
            .iter()
            .rev()
            .map(|l| l.trim())
            .find(|l| l.starts_with('['))
            .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
        Some(match section {
            Some(section) => format!("{section}.{key}"),
            None => key.to_owned(),
        })
    }

    /// Deserializes a driver's own keys (the section minus `driver` and the keys the
    /// platform reads there), naming the offending key and its line on error.
    pub fn driver_options<T: DeserializeOwned>(
        &self,
        section: &str,
        table: &toml::Table,
        platform_keys: &[&str],
    ) -> Result<T, ConfigError> {
        let mut options = table.clone();
        for key in platform_keys {
            options.remove(*key);
        }
        serde_path_to_error::deserialize(toml::Value::Table(options)).map_err(|err| {
            let inner = err.inner().to_string();
            // serde names an unknown key in backquotes; a type error is located by its path.
            let key = inner
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next())
                .map(str::to_owned)
                .or_else(|| err.path().iter().next().map(|segment| segment.to_string()));
            let line = key
                .as_deref()
                .and_then(|key| self.line_of_key(section, Some(key)))
                .or_else(|| self.line_of_key(section, None));
            let message = match key {
                Some(key) if !inner.contains(&format!("`{key}`")) => {
                    format!("[{section}] {key}: {inner}")
                }
                _ => format!("[{section}] {inner}"),
            };
            self.error(line, message)
        })
    }

    /// The `driver` of a section, or `default` when the key is absent.
    pub fn driver_name(&self, section: &str, table: &toml::Table, default: &str) -> Result<String, ConfigError> {
        match table.get("driver") {
            None => Ok(default.to_owned()),
            Some(toml::Value::String(name)) => Ok(name.clone()),
            Some(other) => Err(self.error(
                self.line_of_key(section, Some("driver")),
                format!("[{section}] driver: expected a string, found {}", other.type_str()),
            )),
        }
    }

    /// How the ingress gets its certificates (`None` without HTTPS): the operator's
    /// certificate for `*.<domain>` (`[tls] cert_file`, `key_file`, paths relative to the
    /// config file), read and checked, and ACME, used for every name when there is no
    /// certificate file, and beside it (for custom domains) when an ACME key is set.
    /// Errors name the key, its line and the file that is wrong.
    pub fn tls(&self, config: &ServerConfig) -> Result<Option<TlsSettings>, ConfigError> {
        let tls = &config.tls;
        let at =
            |section: &str, key: &str| self.line_of_key(section, Some(key)).or_else(|| self.line_of_key(section, None));
        if config.ingress.https_listen.is_none() {
            let set = [
                ("cert_file", tls.cert_file.is_some()),
                ("key_file", tls.key_file.is_some()),
                ("acme_directory", tls.acme_directory.is_some()),
                ("acme_ca_file", tls.acme_ca_file.is_some()),
                ("email", tls.email.is_some()),
                ("challenge", tls.challenge.is_some()),
                ("acme_retry_secs", tls.acme_retry_secs.is_some()),
            ];
            return match set.iter().find(|(_, set)| *set) {
                None => Ok(None),
                Some((key, _)) => Err(self.error(
                    at("tls", key),
                    format!("tls.{key} is set but [ingress] https_listen is not: nothing would serve certificates"),
                )),
            };
        }
        let wildcard = self.wildcard(config)?;
        let acme = if wildcard.is_none() || tls.names_acme() { Some(self.acme(tls)?) } else { None };
        Ok(Some(TlsSettings { wildcard, acme }))
    }

    /// The `[tls]` ACME keys, checked.
    fn acme(&self, tls: &TlsSection) -> Result<AcmeSettings, ConfigError> {
        let at = |key: &str| self.line_of_key("tls", Some(key)).or_else(|| self.line_of_key("tls", None));
        let directory = tls.acme_directory.clone().unwrap_or_else(|| paastech_acme::LETS_ENCRYPT.to_owned());
        if !directory.starts_with("https://") || directory.len() <= "https://".len() {
            return Err(self.error(
                at("acme_directory"),
                format!("tls.acme_directory must be an https:// URL (an ACME directory), not {directory:?}"),
            ));
        }
        if let Some(email) = &tls.email
            && let Err(err) = paastech_core::validate_email(email)
        {
            return Err(self.error(at("email"), format!("tls.email: {err}")));
        }
        let challenge = match &tls.challenge {
            None => paastech_acme::ChallengeKind::Http01,
            Some(name) => name.parse().map_err(|err| self.error(at("challenge"), format!("tls.challenge: {err}")))?,
        };
        let ca_file = match &tls.acme_ca_file {
            None => None,
            Some(path) => {
                let base = self.file.as_deref().and_then(Path::parent).unwrap_or(Path::new(""));
                let path = base.join(path);
                let pem = std::fs::read(&path).map_err(|err| {
                    self.error(at("acme_ca_file"), format!("tls.acme_ca_file: cannot read {}: {err}", path.display()))
                })?;
                if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                    return Err(self.error(
                        at("acme_ca_file"),
                        format!("tls.acme_ca_file: {} holds no PEM certificate", path.display()),
                    ));
                }
                Some(path)
            }
        };
        let retry_first = match tls.acme_retry_secs {
            None => std::time::Duration::from_secs(60),
            Some(0) => return Err(self.error(at("acme_retry_secs"), "tls.acme_retry_secs must be at least 1")),
            Some(secs) => std::time::Duration::from_secs(secs),
        };
        Ok(AcmeSettings { directory, ca_file, email: tls.email.clone(), challenge, retry_first })
    }

    /// The operator's certificate, when `cert_file` and `key_file` are set.
    fn wildcard(&self, config: &ServerConfig) -> Result<Option<Certificate>, ConfigError> {
        let tls = &config.tls;
        let at =
            |section: &str, key: &str| self.line_of_key(section, Some(key)).or_else(|| self.line_of_key(section, None));
        let (cert_file, key_file) = match (&tls.cert_file, &tls.key_file) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            (Some(_), None) => {
                return Err(self.error(at("tls", "cert_file"), "tls.cert_file is set without tls.key_file"));
            }
            (None, Some(_)) => {
                return Err(self.error(at("tls", "key_file"), "tls.key_file is set without tls.cert_file"));
            }
        };
        let base = self.file.as_deref().and_then(Path::parent).unwrap_or(Path::new(""));
        let (cert_path, key_path) = (base.join(cert_file), base.join(key_file));
        let read = |key: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|err| self.error(at("tls", key), format!("tls.{key}: cannot read {}: {err}", path.display())))
        };
        let (chain, private_key) = (read("cert_file", &cert_path)?, read("key_file", &key_path)?);
        Certificate::from_pem(&chain, &private_key).map(Some).map_err(|err| {
            let (key, path) = match err {
                CertificateError::NoCertificate
                | CertificateError::CertificatePem(_)
                | CertificateError::BadCertificate(_) => ("cert_file", &cert_path),
                CertificateError::KeyMismatch => {
                    return self.error(
                        at("tls", "key_file"),
                        format!("tls.key_file: {}: {err} in {}", key_path.display(), cert_path.display()),
                    );
                }
                _ => ("key_file", &key_path),
            };
            self.error(at("tls", key), format!("tls.{key}: {}: {err}", path.display()))
        })
    }

    /// The `[registry]` section, checked: a `host[:port]` without scheme or path, and a
    /// username and a password together or neither.
    pub fn image_registry(
        &self,
        config: &ServerConfig,
    ) -> Result<Option<paastech_core::registry::ImageRegistry>, ConfigError> {
        let section = &config.registry;
        let at = |key: &str| self.line_of_key("registry", Some(key)).or_else(|| self.line_of_key("registry", None));
        let Some(url) = &section.url else {
            if section.username.is_some() || section.password.is_some() {
                return Err(self.error(at("username"), "[registry] credentials without a url: set url too"));
            }
            return Ok(None);
        };
        let address = url.trim();
        let valid = !address.is_empty()
            && !address.contains("://")
            && !address.contains('/')
            && !address.contains(char::is_whitespace)
            && address.bytes().all(|b| b.is_ascii_graphic());
        if !valid {
            return Err(self.error(
                at("url"),
                format!("[registry] url {url:?} must be a host and port, like \"127.0.0.1:5000\" (no scheme, no path)"),
            ));
        }
        if section.username.is_some() != section.password.is_some() {
            let missing = if section.username.is_none() { "username" } else { "password" };
            return Err(self.error(at("url"), format!("[registry] {missing} is missing: give both or neither")));
        }
        Ok(Some(paastech_core::registry::ImageRegistry {
            address: address.to_owned(),
            username: section.username.clone(),
            password: section.password.clone(),
        }))
    }

    /// Wraps a registry's message (unknown driver, options) with the line of `driver`.
    pub fn driver_error(&self, section: &str, message: impl fmt::Display) -> ConfigError {
        let line = self.line_of_key(section, Some("driver")).or_else(|| self.line_of_key(section, None));
        self.error(line, format!("[{section}] {message}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> Source {
        Source { file: Some(PathBuf::from("paastech.toml")), text: text.to_owned() }
    }

    #[test]
    fn empty_file_is_the_embedded_default() {
        let config = source("").parse().expect("empty config parses");
        assert_eq!(config.api.listen, "127.0.0.1:7000".parse().expect("addr"));
        assert_eq!(config.ssh.listen, "127.0.0.1:2222".parse().expect("addr"));
        assert_eq!(config.ingress.listen, "127.0.0.1:8000".parse().expect("addr"));
        assert_eq!(config.ingress.domain, "localhost");
        assert_eq!(config.auth.signup, Signup::Open);
        assert!(config.database.url.is_none());
        assert_eq!((config.api.max_connections.get(), config.ingress.max_connections.get()), (1024, 10_000));
        assert_eq!(config.api.run_idle_timeout_secs.get(), 1800);
    }

    #[test]
    fn the_interactive_idle_limit_is_read_and_zero_is_refused() {
        let config = source("[api]\nrun_idle_timeout_secs = 5\n").parse().expect("parses");
        assert_eq!(config.api.run_idle_timeout_secs.get(), 5);
        let err = source("[api]\nrun_idle_timeout_secs = 0\n").parse().expect_err("zero is refused");
        assert!(err.to_string().contains("api.run_idle_timeout_secs"), "{err}");
    }

    #[test]
    fn connection_caps_are_read_and_zero_is_refused_naming_the_key() {
        let config = source("[api]\nmax_connections = 8\n[ingress]\nmax_connections = 9\n").parse().expect("parses");
        assert_eq!((config.api.max_connections.get(), config.ingress.max_connections.get()), (8, 9));
        for (text, key, line) in [
            ("[api]\nmax_connections = 0\n", "api.max_connections", 2),
            ("[ingress]\n\nmax_connections = 0\n", "ingress.max_connections", 3),
        ] {
            let err = source(text).parse().expect_err(text);
            let shown = err.to_string();
            assert!(shown.starts_with(&format!("paastech.toml:{line}: {key}:")), "{shown:?}");
            assert!(shown.contains("nonzero"), "{shown:?}");
        }
    }

    #[test]
    fn trusted_proxies_are_addresses_and_blocks() {
        let config = source("[ingress]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n").parse().expect("parses");
        let ranges: Vec<String> = config.ingress.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(ranges, ["10.0.0.0/8", "::1/128"]);
        assert!(source("").parse().expect("parses").ingress.trusted_proxies.is_empty(), "none by default");
    }

    #[test]
    fn the_briefs_example_parses() {
        let text = r#"
data_dir = "/var/lib/paastech"
[api]
listen = "127.0.0.1:7000"
[ssh]
listen = "127.0.0.1:2222"
[ingress]
listen = "127.0.0.1:8000"
domain = "localhost"
[database]
url = "sqlite:///var/lib/paastech/paastech.db"
[runtime]
driver = "process"
[build]
driver = "process"
project_hooks = true
[auth]
signup = "closed"
[[hooks]]
name = "forbid-secrets"
path = "hooks/forbid-files.wasm"
stages = ["pre-build"]
[hooks.config]
patterns = "*.pem,.env"
"#;
        let config = source(text).parse().expect("example parses");
        assert_eq!(config.hooks.len(), 1);
        assert_eq!(config.hooks[0].config.get("patterns").and_then(|v| v.as_str()), Some("*.pem,.env"));
        assert_eq!(config.auth.signup, Signup::Closed);
    }

    #[test]
    fn errors_name_the_key_the_file_and_the_line() {
        let cases = [
            ("[api]\nlisten = \"127.0.0.1:7000\"\nlistne = \"x\"\n", "listne", 3),
            ("colour = \"blue\"\n", "colour", 1),
            ("[ingress]\n\ndomain = 42\n", "string", 3),
            ("[api]\nlisten = \"not an address\"\n", "address", 2),
            ("[auth]\nsignup = \"maybe\"\n", "maybe", 2),
            ("[ssh]\nlisten = 7\n", "listen", 2),
            ("[ingress]\nthreads = 0\n", "nonzero", 2),
            ("[ingress]\n\nbackend_timeout_secs = 0\n", "nonzero", 3),
            ("[ingress]\ntrusted_proxies = [\"10.0.0.1\", \"10.0.0.0/33\"]\n", "0 to 32", 2),
        ];
        for (text, needle, line) in cases {
            let err = source(text).parse().expect_err(text);
            let shown = err.to_string();
            assert!(shown.contains(needle), "{shown:?} should mention {needle:?}");
            assert_eq!(err.line, Some(line), "{shown:?}");
            assert!(shown.starts_with(&format!("paastech.toml:{line}:")), "{shown:?}");
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ExampleOptions {
        #[allow(dead_code)]
        grace_seconds: Option<u64>,
    }

    #[test]
    fn driver_option_errors_name_the_key_and_line() {
        let text = "[runtime]\ndriver = \"process\"\n\ngrace_secnds = 3\n";
        let src = source(text);
        let config = src.parse().expect("section itself parses");
        let err =
            src.driver_options::<ExampleOptions>("runtime", &config.runtime, &["driver"]).expect_err("unknown key");
        assert_eq!(err.line, Some(4));
        assert!(err.to_string().contains("grace_secnds"), "{err}");

        let text = "[runtime]\ndriver = \"process\"\ngrace_seconds = \"soon\"\n";
        let src = source(text);
        let config = src.parse().expect("section itself parses");
        let err =
            src.driver_options::<ExampleOptions>("runtime", &config.runtime, &["driver"]).expect_err("wrong type");
        assert_eq!(err.line, Some(3));
        assert!(err.to_string().contains("grace_seconds"), "{err}");
    }

    /// A directory with a config file (`text`) and a certificate for `*.apps.test`:
    /// `wild.pem`, `wild.key`, and `other.key` (the key of another certificate).
    fn tls_files(text: &str) -> (tempfile::TempDir, Source) {
        let dir = tempfile::tempdir().expect("tempdir");
        let wild = rcgen::generate_simple_self_signed(vec!["*.apps.test".to_owned()]).expect("certificate");
        let other = rcgen::generate_simple_self_signed(vec!["other.test".to_owned()]).expect("certificate");
        std::fs::write(dir.path().join("wild.pem"), wild.cert.pem()).expect("write");
        std::fs::write(dir.path().join("wild.key"), wild.signing_key.serialize_pem()).expect("write");
        std::fs::write(dir.path().join("other.key"), other.signing_key.serialize_pem()).expect("write");
        std::fs::write(dir.path().join("junk.pem"), "-----BEGIN CERTIFICATE-----\n!!!\n").expect("write");
        let source = Source { file: Some(dir.path().join("paastech.toml")), text: text.to_owned() };
        (dir, source)
    }

    const HTTPS: &str = "[ingress]\ndomain = \"apps.test\"\nhttps_listen = \"127.0.0.1:8443\"\n";

    #[test]
    fn the_operators_certificate_is_read_relative_to_the_config() {
        let (_dir, src) = tls_files(&format!("{HTTPS}[tls]\ncert_file = \"wild.pem\"\nkey_file = \"wild.key\"\n"));
        let config = src.parse().expect("parses");
        assert_eq!(config.ingress.https_listen, Some("127.0.0.1:8443".parse().expect("addr")));
        let tls = src.tls(&config).expect("a valid certificate").expect("https");
        assert!(tls.wildcard.is_some());
        assert!(tls.acme.is_none(), "the operator's certificate alone: no ACME");
        let (_dir, src) = tls_files("");
        assert!(src.tls(&src.parse().expect("parses")).expect("no tls").is_none(), "no https by default");
    }

    #[test]
    fn certificate_errors_name_the_key_the_file_and_the_line() {
        let cases: &[(&str, usize, &[&str])] = &[
            (
                "[tls]\ncert_file = \"missing.pem\"\nkey_file = \"wild.key\"\n",
                5,
                &["tls.cert_file", "missing.pem", "cannot read"],
            ),
            (
                "[tls]\ncert_file = \"wild.pem\"\nkey_file = \"gone.key\"\n",
                6,
                &["tls.key_file", "gone.key", "cannot read"],
            ),
            (
                "[tls]\ncert_file = \"junk.pem\"\nkey_file = \"wild.key\"\n",
                5,
                &["tls.cert_file", "junk.pem", "malformed"],
            ),
            (
                "[tls]\ncert_file = \"wild.key\"\nkey_file = \"wild.key\"\n",
                5,
                &["tls.cert_file", "wild.key", "no PEM certificate"],
            ),
            (
                "[tls]\ncert_file = \"wild.pem\"\nkey_file = \"wild.pem\"\n",
                6,
                &["tls.key_file", "wild.pem", "no PEM private key"],
            ),
            (
                "[tls]\ncert_file = \"wild.pem\"\nkey_file = \"other.key\"\n",
                6,
                &["tls.key_file", "other.key", "does not match the certificate", "wild.pem"],
            ),
            ("[tls]\ncert_file = \"wild.pem\"\n", 5, &["tls.cert_file is set without tls.key_file"]),
            ("[tls]\nacme_directory = \"http://ca.test/dir\"\n", 5, &["tls.acme_directory", "https://"]),
            ("[tls]\nemail = \"not an address\"\n", 5, &["tls.email"]),
            ("[tls]\nchallenge = \"dns-01\"\n", 5, &["tls.challenge", "dns-01", "http-01", "tls-alpn-01"]),
            ("[tls]\nacme_ca_file = \"nope.pem\"\n", 5, &["tls.acme_ca_file", "nope.pem", "cannot read"]),
            ("[tls]\nacme_ca_file = \"wild.key\"\n", 5, &["tls.acme_ca_file", "no PEM certificate"]),
            ("[tls]\nacme_retry_secs = 0\n", 5, &["tls.acme_retry_secs", "at least 1"]),
        ];
        for &(tls, line, needles) in cases {
            let (_dir, src) = tls_files(&format!("{HTTPS}{tls}"));
            let config = src.parse().expect("parses");
            let err = src.tls(&config).err().unwrap_or_else(|| panic!("{tls} should be refused"));
            let shown = err.to_string();
            for needle in needles {
                assert!(shown.contains(needle), "{shown:?} should mention {needle:?}");
            }
            assert_eq!(err.line, Some(line), "{shown}");
            assert!(shown.contains("paastech.toml:"), "{shown}");
        }
        // A certificate without an HTTPS listener would serve nothing.
        let (_dir, src) = tls_files("[tls]\ncert_file = \"wild.pem\"\nkey_file = \"wild.key\"\n");
        let err = src.tls(&src.parse().expect("parses")).err().expect("no https_listen");
        assert_eq!(err.line, Some(2), "{err}");
        assert!(err.to_string().contains("https_listen is not"), "{err}");
        let (_dir, src) = tls_files("[tls]\nemail = \"ops@example.com\"\n");
        let err = src.tls(&src.parse().expect("parses")).err().expect("no https_listen");
        assert!(err.to_string().contains("tls.email is set but [ingress] https_listen is not"), "{err}");
    }

    #[test]
    fn acme_orders_every_name_without_a_certificate_file_and_custom_domains_beside_one() {
        // HTTPS alone: every name by ACME, from Let's Encrypt, by HTTP-01.
        let (_dir, src) = tls_files(HTTPS);
        let tls = src.tls(&src.parse().expect("parses")).expect("valid").expect("https");
        assert!(tls.wildcard.is_none());
        let acme = tls.acme.expect("acme");
        assert_eq!(acme.directory, paastech_acme::LETS_ENCRYPT);
        assert_eq!(acme.challenge, paastech_acme::ChallengeKind::Http01);
        assert_eq!(acme.retry_first, std::time::Duration::from_secs(60));
        // Every key, relative to the config file.
        let (dir, src) = tls_files(&format!(
            "{HTTPS}[tls]\ncert_file = \"wild.pem\"\nkey_file = \"wild.key\"\nacme_directory = \"https://127.0.0.1:14000/dir\"\n\
             acme_ca_file = \"wild.pem\"\nemail = \"ops@example.com\"\nchallenge = \"tls-alpn-01\"\nacme_retry_secs = 5\n"
        ));
        let tls = src.tls(&src.parse().expect("parses")).expect("valid").expect("https");
        assert!(tls.wildcard.is_some());
        let acme = tls.acme.expect("acme beside the wildcard");
        assert_eq!(acme.directory, "https://127.0.0.1:14000/dir");
        assert_eq!(acme.ca_file, Some(dir.path().join("wild.pem")));
        assert_eq!(acme.email.as_deref(), Some("ops@example.com"));
        assert_eq!(acme.challenge, paastech_acme::ChallengeKind::TlsAlpn01);
        assert_eq!(acme.retry_first, std::time::Duration::from_secs(5));
    }

    #[test]
    fn the_registry_is_a_host_and_port_with_both_credentials_or_none() {
        let registry = |text: &str| {
            let source = source(text);
            let config = source.parse().expect("parses");
            source.image_registry(&config)
        };
        assert!(registry("").expect("no registry").is_none());
        let found = registry("[registry]\nurl = \"127.0.0.1:5000\"\n").expect("valid").expect("a registry");
        assert_eq!((found.address.as_str(), found.username), ("127.0.0.1:5000", None));
        let found = registry("[registry]\nurl = \"r.internal:5000\"\nusername = \"ci\"\npassword = \"s3cret\"\n")
            .expect("valid")
            .expect("a registry");
        assert_eq!((found.username.as_deref(), found.password.as_deref()), (Some("ci"), Some("s3cret")));
        for (text, line, needle) in [
            ("[registry]\nurl = \"http://127.0.0.1:5000\"\n", 2, "no scheme"),
            ("[registry]\n\nurl = \"r:5000/path\"\n", 3, "must be a host and port"),
            ("[registry]\nurl = \"r:5000\"\nusername = \"ci\"\n", 2, "password is missing"),
            ("[registry]\npassword = \"x\"\n", 1, "without a url"),
            ("[registry]\nurl = \"r:5000\"\nuser = \"ci\"\n", 3, "user"),
        ] {
            let err = match source(text).parse() {
                Err(err) => err,
                Ok(config) => source(text).image_registry(&config).expect_err(text),
            };
            assert!(err.to_string().contains(needle), "{text:?}: {err}");
            assert_eq!(err.line, Some(line), "{text:?}: {err}");
        }
        let config =
            source("[registry]\nurl = \"r:5000\"\nusername = \"ci\"\npassword = \"s3cret\"\n").parse().expect("parses");
        assert!(!format!("{:?}", config.registry).contains("s3cret"));
    }

    #[test]
    fn driver_name_defaults_and_locates() {
        let src = source("[runtime]\n\ndriver = \"kubernetes\"\n");
        let config = src.parse().expect("parses");
        assert_eq!(src.driver_name("runtime", &config.runtime, "process").ok().as_deref(), Some("kubernetes"));
        assert_eq!(src.driver_error("runtime", "unknown").line, Some(3));
        assert_eq!(src.driver_name("build", &config.build, "process").ok().as_deref(), Some("process"));
    }
}
