//! `paastech server`: the composition root. Reads the configuration, registers and builds
//! the drivers, opens the store, and starts the servers, in one readable function.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use std::time::Duration;

use paastech_acme::{AcmeConfig, AcmeManager};
use paastech_core::addons::AddonKind;
use paastech_core::drivers::{ImageBuilder, Pusher, Runtime};
use paastech_core::logs::LogHub;
use paastech_core::orchestrator::{AUDIT_PRUNE_INTERVAL, CRON_TICK, FOLLOW_INTERVAL, Orchestrator, OrchestratorConfig};
use paastech_core::registry::{DriverContext, ImageRegistry, OptionsSource, Registry};
use paastech_core::stats::STATS_INTERVAL;
use paastech_core::{DomainRules, GitVerb, ProjectName, Store};
use paastech_driver_git::GitRepoStore;
use paastech_driver_git::hook::HookServer;
use paastech_ingress::{CertStore, IngressConfig, IngressRouter, RouteTable};
use paastech_plugins::{HookHost, HookLimits, HookSpec, HostOptions, Stage};
use paastech_ssh::{GitAccess, RepoAccess, SshServer};
use paastech_web::{AppState, PublicUrls, SignupPolicy};
use tokio::net::TcpListener;

use crate::config::{ConfigError, ServerConfig, Signup, Source, TlsSettings};

/// A validated configuration with every default filled in.
pub struct Settings {
    pub source: Source,
    pub config: ServerConfig,
    pub data_dir: PathBuf,
    pub database_url: String,
    /// The key that seals config vars in the database (`[secrets] key_file`).
    pub key_file: PathBuf,
    pub runtime_driver: String,
    pub build_driver: String,
    /// The WASM build hooks, compiled (operator hooks) and checked.
    pub build_hooks: Arc<HookHost>,
    /// How the ingress gets certificates, when it serves HTTPS.
    pub tls: Option<TlsSettings>,
    /// `[registry]`: where container builds are pushed.
    pub image_registry: Option<ImageRegistry>,
    /// `[smtp]`, checked, with the public URL its mails' links point to.
    pub mail: Option<MailSetup>,
}

/// Where a driver's options come from: its section of the TOML file, minus the keys the
/// platform reads there. Errors name the file, the line and the key.
pub struct DriverInput<'a> {
    pub source: &'a Source,
    pub section: &'a str,
    pub table: &'a toml::Table,
    /// Keys of the section that are the platform's, not the driver's.
    pub platform_keys: &'static [&'static str],
    pub context: &'a DriverContext,
}

impl OptionsSource for DriverInput<'_> {
    type Error = ConfigError;

    /// The driver's own keys (beside `driver`), as its options struct.
    fn options<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        self.source.driver_options(self.section, self.table, self.platform_keys)
    }

    fn context(&self) -> &DriverContext {
        self.context
    }

    /// A driver's message names its key first ("memory_mb must be at least 4"): located
    /// at that key's line when it is written, else at the section's `driver`.
    fn error(&self, error: paastech_core::Error) -> ConfigError {
        let message = error.to_string();
        let key = message.split([' ', ':']).next().filter(|key| self.table.contains_key(*key));
        match key.and_then(|key| self.source.line_of_key(self.section, Some(key))) {
            Some(line) => ConfigError {
                file: self.source.file.clone(),
                line: Some(line),
                message: format!("[{}] {message}", self.section),
            },
            None => self.source.driver_error(self.section, message),
        }
    }
}

/// A hook's limits from its timeout and memory settings (named by `keys`), else the
/// defaults; an error names the key and what it must be.
fn hook_limits(
    timeout_ms: Option<u64>,
    memory_mb: Option<u64>,
    [timeout_key, memory_key]: [&'static str; 2],
) -> Result<HookLimits, (&'static str, String)> {
    let mut limits = HookLimits::default();
    if let Some(ms) = timeout_ms {
        if ms == 0 {
            return Err((timeout_key, format!("{timeout_key} must be above 0")));
        }
        limits.timeout = Duration::from_millis(ms);
    }
    if let Some(mb) = memory_mb {
        if mb == 0 || mb > 4096 {
            return Err((memory_key, format!("{memory_key} must be between 1 and 4096")));
        }
        limits.memory_bytes = usize::try_from(mb * 1024 * 1024).unwrap_or(usize::MAX);
    }
    Ok(limits)
}

/// `[build] project_hook_timeout_ms` and `project_hook_memory_mb`: the limits of each call
/// of a project's own hooks.
fn project_hook_limits(config: &ServerConfig) -> Result<HookLimits, (&'static str, String)> {
    let number = |key: &'static str| match config.build.get(key) {
        None => Ok(None),
        Some(value) => value
            .as_integer()
            .and_then(|n| u64::try_from(n).ok())
            .map(Some)
            .ok_or((key, format!("{key} must be a whole number"))),
    };
    let keys = ["project_hook_timeout_ms", "project_hook_memory_mb"];
    hook_limits(number(keys[0])?, number(keys[1])?, keys)
}

/// `[build] keep_builds`: how many of a project's newest builds keep their artifact for
/// rollbacks (default 10). `None` when the value is not a number from 2 to 1000.
fn keep_builds(config: &ServerConfig) -> Option<usize> {
    match config.build.get("keep_builds") {
        None => Some(10),
        Some(value) => value.as_integer().filter(|n| (2..=1000).contains(n)).and_then(|n| usize::try_from(n).ok()),
    }
}

/// Keys the platform itself reads in `[build]`.
const BUILD_PLATFORM_KEYS: &[&str] =
    &["driver", "project_hooks", "keep_builds", "project_hook_timeout_ms", "project_hook_memory_mb"];

/// Keys the platform itself reads in `[runtime]`.
const RUNTIME_PLATFORM_KEYS: &[&str] = &["driver"];

/// What each runtime driver name means: the one place runtime drivers are registered.
/// A driver is its crate (its options type checks its keys and builds it) plus one line
/// here.
fn runtime_drivers<'a>() -> Registry<dyn Runtime, DriverInput<'a>> {
    let mut registry = Registry::new("runtime");
    registry
        .register::<paastech_driver_process::ProcessRuntimeOptions>("process")
        .register::<paastech_driver_docker::DockerRuntimeOptions>("docker")
        .register::<paastech_driver_podman::PodmanRuntimeOptions>("podman")
        .register::<paastech_driver_swarm::SwarmRuntimeOptions>("swarm");
    registry
}

/// The one place build drivers are registered.
fn build_drivers<'a>() -> Registry<dyn ImageBuilder, DriverInput<'a>> {
    let mut registry = Registry::new("build");
    registry
        .register::<paastech_driver_process::ProcessBuildOptions>("process")
        .register::<paastech_driver_docker::DockerBuildOptions>("docker")
        .register::<paastech_driver_podman::PodmanBuildOptions>("podman")
        .register::<paastech_driver_swarm::SwarmBuildOptions>("swarm");
    registry
}

/// The one place add-on kinds are registered (`[addons.KIND]`).
fn addon_kinds<'a>() -> Registry<dyn AddonKind, DriverInput<'a>> {
    let mut registry = Registry::new("addons");
    registry.register::<paastech_addon_postgres::PostgresOptions>("postgres");
    registry.register::<paastech_addon_redis::RedisOptions>("redis");
    registry
}

/// The `[addons.KIND]` sections, each with the section name its errors carry.
fn addon_inputs<'a>(
    source: &'a Source,
    config: &'a ServerConfig,
    context: &'a DriverContext,
    sections: &'a [(String, String)],
) -> Vec<(&'a str, DriverInput<'a>)> {
    sections
        .iter()
        .map(|(kind, section)| {
            let table = config.addons.get(kind).expect("sections are made from the configured kinds");
            (kind.as_str(), DriverInput { source, section, table, platform_keys: &[], context })
        })
        .collect()
}

fn addon_sections(config: &ServerConfig) -> Vec<(String, String)> {
    config.addons.keys().map(|kind| (kind.clone(), format!("addons.{kind}"))).collect()
}

/// What every driver is told beside its own keys.
fn driver_context(
    config: &ServerConfig,
    runtime_driver: &str,
    data_dir: &Path,
    image_registry: Option<ImageRegistry>,
) -> Result<DriverContext> {
    Ok(DriverContext {
        image_registry,
        data_dir: data_dir.to_owned(),
        runtime_driver: runtime_driver.to_owned(),
        runtime_socket: config.runtime.get("socket").and_then(toml::Value::as_str).map(PathBuf::from),
        static_server: static_server_argv().context("finding the paastech executable")?,
    })
}

fn default_data_dir() -> Result<PathBuf> {
    let base =
        dirs::data_local_dir().context("no per-user data directory (is HOME set?): set data_dir in a config file")?;
    Ok(base.join("paastech"))
}

/// Reads and checks the configuration: everything that can be wrong in it is reported
/// here, before anything listens.
pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
    let source = match path {
        Some(path) => Source::read(path)?,
        None => Source::embedded(),
    };
    let config = source.parse()?;

    let data_dir = match &config.data_dir {
        Some(dir) => dir.clone(),
        None => default_data_dir().map_err(|err| ConfigError { file: None, line: None, message: err.to_string() })?,
    };
    let runtime_driver = source.driver_name("runtime", &config.runtime, "process")?;
    let build_driver = source.driver_name("build", &config.build, &runtime_driver)?;
    // Whatever drivers are configured, their names and their own keys are checked now,
    // through the registries, so a typo stops the start with its file and line.
    let image_registry = source.image_registry(&config)?;
    let context = driver_context(&config, &runtime_driver, &data_dir, image_registry.clone())
        .map_err(|err| ConfigError { file: None, line: None, message: format!("{err:#}") })?;
    runtime_drivers().check(&runtime_driver, &runtime_input(&source, &config, &context))?;
    build_drivers().check(&build_driver, &build_input(&source, &config, &context))?;
    let sections = addon_sections(&config);
    for (kind, input) in addon_inputs(&source, &config, &context, &sections) {
        addon_kinds().check(kind, &input)?;
    }
    if let Some(value) = config.build.get("project_hooks")
        && !value.is_bool()
    {
        return Err(source.driver_error("build", "project_hooks must be true or false"));
    }
    if keep_builds(&config).is_none() {
        return Err(ConfigError {
            file: source.file.clone(),
            line: source.line_of_key("build", Some("keep_builds")),
            message: "[build] keep_builds must be a whole number from 2 to 1000".into(),
        });
    }

    if !(1..=100).contains(&config.previews.max_per_project) {
        return Err(ConfigError {
            file: source.file.clone(),
            line: source.line_of_key("previews", Some("max_per_project")),
            message: "[previews] max_per_project must be a whole number from 1 to 100".into(),
        });
    }
    if let Some(url) = &config.database.url
        && !["sqlite://", "postgres://", "postgresql://"].iter().any(|scheme| url.starts_with(scheme))
    {
        return Err(ConfigError {
            file: source.file.clone(),
            line: source.line_of_key("database", Some("url")),
            message: "[database] url must start with sqlite:// or postgres://".into(),
        });
    }
    if let Some(host) = &config.api.public_host
        && host.as_str().eq_ignore_ascii_case(config.ingress.domain.trim_matches('.'))
    {
        return Err(ConfigError {
            file: source.file.clone(),
            line: source.line_of_key("api", Some("public_host")),
            message: format!(
                "[api] public_host {host} is the app domain itself: give the API a name of its own, such as paastech.{host}"
            ),
        });
    }
    let build_hooks = Arc::new(load_hooks(&source, &config)?);
    let tls = source.tls(&config)?;
    let database_url =
        config.database.url.clone().unwrap_or_else(|| format!("sqlite://{}", data_dir.join("paastech.db").display()));
    let key_file = match &config.secrets.key_file {
        Some(path) => source.file.as_deref().and_then(Path::parent).unwrap_or(Path::new("")).join(path),
        None => data_dir.join(DEFAULT_KEY_FILE),
    };
    let mail = mail_settings(&source, &config)?;
    Ok(Settings {
        source,
        config,
        data_dir,
        database_url,
        key_file,
        runtime_driver,
        build_driver,
        build_hooks,
        tls,
        image_registry,
        mail,
    })
}

/// The mailer of `[smtp]`, and the public URL its mails' links point to.
pub type MailSetup = (Arc<dyn paastech_core::mail::Mailer>, String);

/// `[smtp]` as a mailer, and the URL its links point to: `[api] public_url`, else
/// `https://` + `[api] public_host`. Mail without a public URL is refused: its links would
/// point nowhere users can reach.
fn mail_settings(source: &Source, config: &ServerConfig) -> Result<Option<MailSetup>, ConfigError> {
    let error = |section: &str, key: &str, message: String| ConfigError {
        file: source.file.clone(),
        line: source.line_of_key(section, Some(key)),
        message,
    };
    if let Some(url) = &config.api.public_url {
        let valid = (url.starts_with("https://") || url.starts_with("http://"))
            && url.split("://").nth(1).is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace));
        if !valid {
            return Err(error(
                "api",
                "public_url",
                format!(
                    "[api] public_url {url:?} must be an http:// or https:// URL, such as https://paastech.example.com"
                ),
            ));
        }
    }
    let Some(smtp) = &config.smtp else { return Ok(None) };
    let public_url = match (&config.api.public_url, &config.api.public_host) {
        (Some(url), _) => url.trim_end_matches('/').to_owned(),
        (None, Some(host)) => format!("https://{host}"),
        (None, None) => {
            return Err(error(
                "smtp",
                "url",
                "[smtp] needs [api] public_url (or public_host): the links in mails point there".into(),
            ));
        }
    };
    let mailer = paastech_mail::SmtpMailer::new(&smtp.url, &smtp.from).map_err(|err| {
        let key = if err.to_string().contains("[smtp] from") { "from" } else { "url" };
        error("smtp", key, err.to_string())
    })?;
    Ok(Some((Arc::new(mailer), public_url)))
}

/// Checks every `[[hooks]]` entry and compiles its component (a missing or invalid file
/// stops the start, naming the file and the entry's line).
fn load_hooks(source: &Source, config: &ServerConfig) -> Result<HookHost, ConfigError> {
    let base = source.file.as_deref().and_then(Path::parent).map(Path::to_owned).unwrap_or_default();
    let mut specs = Vec::with_capacity(config.hooks.len());
    for (index, hook) in config.hooks.iter().enumerate() {
        let error = |key: Option<&str>, message: String| ConfigError {
            file: source.file.clone(),
            line: source.line_of_array_table("hooks", index, key),
            message: format!("[[hooks]] {:?}: {message}", hook.name),
        };
        if hook.stages.is_empty() {
            return Err(error(
                Some("stages"),
                "stages is empty: name at least one of pre-build, post-build, pre-deploy, post-deploy".into(),
            ));
        }
        let stages = hook
            .stages
            .iter()
            .map(|stage| stage.parse::<Stage>())
            .collect::<Result<Vec<Stage>, String>>()
            .map_err(|message| error(Some("stages"), message))?;
        let hook_config = paastech_plugins::config_table(&hook.config)
            .map_err(|message| error(Some("config"), format!("config.{message}")))?;
        let limits = hook_limits(hook.timeout_ms, hook.memory_mb, ["timeout_ms", "memory_mb"])
            .map_err(|(key, message)| error(Some(key), message))?;
        let path = if hook.path.is_absolute() { hook.path.clone() } else { base.join(&hook.path) };
        if !path.is_file() {
            return Err(error(Some("path"), format!("{} is not a file", path.display())));
        }
        specs.push(HookSpec { name: hook.name.clone(), path, stages, config: hook_config, limits });
    }
    let project_hooks = config.build.get("project_hooks").and_then(toml::Value::as_bool).unwrap_or(true);
    let project_limits = project_hook_limits(config).map_err(|(key, message)| ConfigError {
        file: source.file.clone(),
        line: source.line_of_key("build", Some(key)),
        message: format!("[build] {message}"),
    })?;
    let options = HostOptions { project_hooks, project_limits };
    HookHost::new(specs, options).map_err(|err| {
        let index = match &err {
            paastech_plugins::PluginError::Read { name, .. }
            | paastech_plugins::PluginError::Invalid { name, .. }
            | paastech_plugins::PluginError::Config { name, .. } => config.hooks.iter().position(|h| &h.name == name),
            paastech_plugins::PluginError::Engine(_) => None,
        };
        ConfigError {
            file: source.file.clone(),
            line: index.and_then(|index| source.line_of_array_table("hooks", index, Some("path"))),
            message: format!("[[hooks]] {err}"),
        }
    })
}

/// Where the secrets key lives in data_dir unless `[secrets] key_file` says otherwise: in a
/// directory of its own, created 0700.
const DEFAULT_KEY_FILE: &str = "secrets/secrets.key";

/// `paastech server rotate-key`: a new secrets key, every config value sealed again with
/// it, the old key replaced last (see `paastech_store::rotate_key`). Refused while a server
/// on this machine holds the key file: the server must be stopped first.
pub fn rotate_key(config_path: Option<PathBuf>) -> Result<()> {
    let settings = load(config_path.as_deref())?;
    let rotation = paastech_store::rotate_key(&settings.database_url, &settings.key_file)
        .with_context(|| format!("rotating the secrets key {}", settings.key_file.display()))?;
    println!(
        "sealed {} config values with the new key {} (was {}); {} now holds it: back it up",
        rotation.resealed,
        rotation.new_key_id,
        rotation.old_key_id,
        settings.key_file.display()
    );
    Ok(())
}

pub fn main(config_path: Option<PathBuf>, check: bool) -> Result<()> {
    let settings = load(config_path.as_deref())?;
    if check {
        match &config_path {
            Some(path) => println!("{}: configuration is valid", path.display()),
            None => println!("embedded default configuration is valid"),
        }
        let plan = paastech_store::migration_plan(&settings.database_url)
            .with_context(|| format!("reading the database {}", redact(&settings.database_url)))?;
        print!("{}", describe_migrations(&plan));
        return Ok(());
    }
    // What the server makes is its own: the database, keys, repositories and logs are
    // never readable by app users (whose release directories the process driver opens
    // to them, and only those).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("paastech")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(settings))
}

/// What `server --check` says of the database: which migrations a start would run (it
/// runs none of them).
fn describe_migrations(plan: &paastech_store::MigrationPlan) -> String {
    let mut text = String::new();
    if !plan.database_exists {
        text.push_str("database: does not exist yet; a start creates it\n");
    }
    if plan.pending.is_empty() {
        text.push_str("database: schema up to date, a start would run no migration\n");
    } else {
        text.push_str(&format!("database: a start would run {} migration(s):\n", plan.pending.len()));
        for name in &plan.pending {
            text.push_str(&format!("  {name}\n"));
        }
    }
    if !plan.unknown.is_empty() {
        text.push_str(&format!(
            "database: it records migration(s) this version does not know (written by a newer paastech?): {}\n",
            plan.unknown.join(", ")
        ));
    }
    text
}

/// The argv of the static file server, without its directory: what the process builder
/// runs as a static site's `web` process, and what the ingress recognizes to serve the
/// site's files itself.
fn static_server_argv() -> paastech_core::Result<Vec<String>> {
    let exe = std::env::current_exe()
        .map_err(|err| paastech_core::Error::internal("finding the paastech executable", err))?;
    Ok(vec![exe.display().to_string(), "internal".into(), "serve-static".into()])
}

/// `paastech internal serve-static DIR`: a static site, run as an app's `web` process.
pub fn serve_static(dir: PathBuf) -> Result<()> {
    let port: u16 = std::env::var("PORT").context("PORT is not set")?.parse().context("PORT is not a port number")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)), "the static site").await?;
        println!("serving {} on port {port}", dir.display());
        paastech_ingress::serve_static(listener, dir, shutdown_signal()).await.context("serving static files")
    })
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PAASTECH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr);
    // One JSON object a line, for log collectors (`PAASTECH_LOG_FORMAT=json`).
    match std::env::var("PAASTECH_LOG_FORMAT").as_deref() {
        Ok("json") => logs.json().init(),
        Ok("text") | Err(_) => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        Ok(other) => {
            logs.with_ansi(false).init();
            tracing::warn!(format = other, "PAASTECH_LOG_FORMAT is json or text: logging as text");
        }
    }
}

async fn serve(settings: Settings) -> Result<()> {
    let Settings {
        source,
        config,
        data_dir,
        database_url,
        key_file,
        runtime_driver,
        build_driver,
        build_hooks,
        tls,
        image_registry,
        mail,
    } = settings;
    let hook_host = Arc::clone(&build_hooks);
    create_private_dir(&data_dir)?;

    let store: Arc<dyn Store> = {
        let url = database_url.clone();
        // The key stays locked (shared) while the server runs, so a rotation waits for it.
        let keyring = paastech_store::Keyring::load_or_create(&key_file)
            .with_context(|| format!("loading the secrets key {}", key_file.display()))?;
        let store = tokio::task::spawn_blocking(move || paastech_store::SqlStore::open(&url, keyring))
            .await?
            .with_context(|| format!("opening the database {}", redact(&database_url)))?;
        Arc::new(store)
    };

    // Drivers, as configured.
    let context = driver_context(&config, &runtime_driver, &data_dir, image_registry.clone())?;
    let runtime = runtime_drivers().build(&runtime_driver, &runtime_input(&source, &config, &context))?;
    let builder = build_drivers().build(&build_driver, &build_input(&source, &config, &context))?;
    let repos = Arc::new(GitRepoStore::new(data_dir.join("repos")));
    let sections = addon_sections(&config);
    let addons = addon_inputs(&source, &config, &context, &sections)
        .iter()
        .map(|(kind, input)| addon_kinds().build(kind, input))
        .collect::<Result<Vec<_>, _>>()?;

    // The orchestrator, with the ingress as its traffic router.
    let routes = RouteTable::new();
    // Static sites built by the process builder are answered by the ingress from their
    // files (it recognizes the static server's processes by this argv).
    let traffic = Arc::new(
        IngressRouter::new(routes.clone(), config.ingress.health_path.clone())
            .serve_static_sites(static_server_argv().context("finding the paastech executable")?),
    );
    let logs = Arc::new(LogHub::new(data_dir.join("logs"), APP_LOG_MAX_BYTES));
    let mut orchestrator_config = OrchestratorConfig::new(data_dir.join("releases"));
    orchestrator_config.health_timeout = Duration::from_secs(config.ingress.health_timeout_secs);
    orchestrator_config.drain_timeout = Duration::from_secs(config.ingress.drain_timeout_secs);
    orchestrator_config.sleep_minute = Duration::from_secs(config.ingress.sleep_minute_secs.get());
    orchestrator_config.keep_builds = keep_builds(&config).unwrap_or(10);
    orchestrator_config.max_previews = usize::try_from(config.previews.max_per_project).unwrap_or(1);
    orchestrator_config.interactive_idle = Duration::from_secs(config.api.run_idle_timeout_secs.get());
    // Names under the app domain are projects' own: no project may claim one.
    orchestrator_config.domain_rules = DomainRules::new(config.ingress.domain.clone());
    // Nor the API's public host, nor (when it is `LABEL.<domain>`) take LABEL as a name.
    orchestrator_config.domain_rules.api_host = config.api.public_host.as_ref().map(ToString::to_string);
    let urls = PublicUrls {
        app_domain: config.ingress.domain.clone(),
        app_port: Some(config.ingress.public_port.unwrap_or(config.ingress.listen.port())),
        https_port: https_public_port(&config),
        ssh_host: config.ssh.public_host.clone().unwrap_or_else(|| ssh_host_default(&config)),
        ssh_port: config.ssh.listen.port(),
    };
    // The certificates the ingress serves over HTTPS: the operator's wildcard, and what
    // ACME orders for each project's names from the moment they are made.
    let certs = tls.as_ref().map(|tls| {
        let certs = CertStore::new(&config.ingress.domain);
        certs.set_wildcard(tls.wildcard.clone());
        certs
    });
    let acme = match (&tls, &certs) {
        (Some(TlsSettings { acme: Some(settings), wildcard }), Some(certs)) => {
            let mut acme_config = AcmeConfig::new(settings.directory.clone(), data_dir.join("acme"));
            acme_config.email = settings.email.clone();
            acme_config.challenge = settings.challenge;
            acme_config.ca_file = settings.ca_file.clone();
            acme_config.retry_first = settings.retry_first;
            acme_config.wildcard_domain = wildcard.is_some().then(|| config.ingress.domain.clone());
            Some(AcmeManager::start(acme_config, certs.clone()).context("starting ACME")?)
        }
        _ => None,
    };
    orchestrator_config.app_url = urls.app_url("{name}");
    let mut orchestrator = Orchestrator::new(store, repos, builder, runtime, traffic, logs, orchestrator_config)
        .with_hooks(Arc::clone(&build_hooks) as _)
        .with_addon_kinds(addons)
        .with_webhooks(Arc::new(paastech_web::webhooks::HttpWebhookSender {
            allow_private_targets: config.webhooks.allow_private_targets,
        }));
    if let Some(acme) = &acme {
        orchestrator = orchestrator.with_certificates(Arc::new(acme.clone()));
    }
    let orchestrator = Arc::new(orchestrator);

    // Every listener is bound before anything is served, so a taken port stops the start.
    let api = bind(config.api.listen, "the API").await?;
    let ssh_listener = bind(config.ssh.listen, "SSH").await?;
    let ingress_listener = bind(config.ingress.listen, "the ingress").await?;
    let https_listener = match config.ingress.https_listen {
        Some(addr) => Some(bind(addr, "the ingress's HTTPS").await?),
        None => None,
    };
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(bind(addr, "the metrics").await?),
        None => None,
    };
    // The API's listener for the ingress alone (`[api] public_host`), on a loopback port
    // only the ingress is told of: there the ingress's X-Forwarded-For is believed.
    let api_behind_ingress = match config.api.public_host {
        Some(_) => Some(bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), "the API behind the ingress").await?),
        None => None,
    };
    if let (Some(host), Some(listener)) = (&config.api.public_host, &api_behind_ingress) {
        // A project made before the operator chose this name would take it back at the
        // restore (and lose it to the API): the operator has to choose.
        if let Some(label) = api_label(host, &config.ingress.domain)
            && let Ok(name) = ProjectName::parse(&label)
            && orchestrator.store().project(&name).await.is_ok()
        {
            anyhow::bail!(
                "[api] public_host {host} is the address of project {label}: choose another name for the API, or delete or rename that project"
            );
        }
        let addr = listener.local_addr().context("the API's listener for the ingress")?;
        route_api(&routes, host, &config.ingress.domain, addr);
        // Its certificate by ACME too, unless the operator's wildcard covers it.
        if let Some(acme) = &acme {
            use paastech_core::Certificates as _;
            acme.set_names("@api", std::slice::from_ref(host));
        }
    }
    let hooks = HookServer::bind(data_dir.join("run").join("hooks.sock"), Arc::clone(&orchestrator) as _)
        .context("starting the git hook socket")?;
    let access = Arc::new(RepoAccessPolicy { orchestrator: Arc::clone(&orchestrator), hooks: hooks.clone() });
    let ssh = SshServer::new(&data_dir.join("ssh_host_ed25519_key"), access).context("loading the SSH host key")?;

    // Before anything is served: deployments a stopped server left half-done are recorded
    // failed, and each project's lock is taken. Live deployments then start again in the
    // background: the API answers meanwhile, each project answers 503 until its deployment
    // is back, and a push or change to it waits for that.
    let restore = orchestrator.begin_restore().await.context("reconciling deployments left by the last run")?;
    tokio::spawn(async move {
        if let Err(err) = restore.run().await {
            tracing::error!(error = %err, "cannot restore live deployments");
        }
    });
    // On a runtime whose instances' addresses move (swarm), routes follow them; the
    // follower leaves each project alone until its restore releases its lock.
    let follower = orchestrator.follow_instances(FOLLOW_INTERVAL);
    // Every running project's CPU and memory, read for its chart of the last hour.
    let sampler = orchestrator.sample_usage(STATS_INTERVAL);
    // Scheduled jobs (app.json `cron`) of each live deployment as it runs again; times
    // missed while the server was down are not run.
    let scheduler = orchestrator.schedule_cron(CRON_TICK);
    // Audit records past the operator's retention are dropped at start and then hourly.
    let retention = Duration::from_secs(u64::from(config.audit.retention_days.get()) * 86_400);
    let audit_pruner = orchestrator.prune_audit_log(retention, AUDIT_PRUNE_INTERVAL);
    // Idle projects with sleep on have their web instances stopped; looked at a few times
    // per minute of idle time (more often with the tests' short minutes).
    let sleeper = orchestrator.sleep_idle(sleep_check_interval(config.ingress.sleep_minute_secs.get()));

    let signup = match config.auth.signup {
        Signup::Open => SignupPolicy::Open,
        Signup::Closed => SignupPolicy::Closed,
    };
    let mut hook_names: Vec<String> = hook_host.operator_hooks().into_iter().map(str::to_owned).collect();
    if hook_host.project_hooks_allowed() {
        hook_names.push("project hooks (.paastech/hooks/*.wasm)".into());
    }
    let mut state = AppState::new(Arc::clone(&orchestrator), signup, urls).with_hook_names(hook_names);
    state.require_2fa = config.auth.require_2fa;
    if let Some((mailer, public_url)) = mail {
        tracing::info!(%public_url, "mail on: address checks and password resets by mail");
        state = state.with_mail(mailer, public_url);
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    tokio::spawn(async move {
        if let Err(err) = hooks.serve().await {
            tracing::error!(error = %err, "git hook socket stopped");
        }
    });
    tokio::spawn(ssh.serve(ssh_listener));
    let mut ingress_config = IngressConfig::new(config.ingress.domain.clone());
    if let Some(threads) = config.ingress.threads {
        ingress_config.threads = threads;
    }
    ingress_config.trusted_proxies = config.ingress.trusted_proxies.clone();
    ingress_config.backend_timeout = Duration::from_secs(config.ingress.backend_timeout_secs.get());
    ingress_config.max_connections = config.ingress.max_connections;
    ingress_config.https_public_port = config.ingress.https_public_port;
    // A request for a sleeping app wakes it through the orchestrator, on this runtime: the
    // ingress's threads run their own, which must not carry a project's start.
    ingress_config.waker = Some(Arc::new(OrchestratorWaker {
        orchestrator: Arc::clone(&orchestrator),
        runtime: tokio::runtime::Handle::current(),
    }));
    ingress_config.wake_timeout = Duration::from_secs(config.ingress.wake_timeout_secs.get());
    let ingress = match (https_listener, certs) {
        (Some(https), Some(certs)) => tokio::spawn(paastech_ingress::serve_with_https(
            ingress_listener,
            https,
            certs,
            ingress_config,
            routes,
            stopped(),
        )),
        _ => tokio::spawn(paastech_ingress::serve(ingress_listener, ingress_config, routes, stopped())),
    };
    tracing::info!(
        api = %config.api.listen,
        ssh = %config.ssh.listen,
        ingress = %config.ingress.listen,
        https = %config.ingress.https_listen.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        metrics = %config.metrics.listen.map_or_else(|| "on the API (admins)".to_owned(), |a| a.to_string()),
        domain = %config.ingress.domain,
        data_dir = %data_dir.display(),
        database = %redact(&database_url),
        runtime = %runtime_driver,
        build = %build_driver,
        registry = %image_registry.as_ref().map_or("none", |r| r.address.as_str()),
        "paastech server started"
    );
    let behind_ingress = api_behind_ingress.map(|listener| {
        let serve = paastech_web::serve_behind_ingress(listener, state.clone(), config.api.max_connections, stopped());
        tokio::spawn(async move {
            if let Err(err) = serve.await {
                tracing::error!(error = %err, "serving the API behind the ingress failed");
            }
        })
    });
    let metrics_server = metrics_listener.map(|listener| {
        let serve = paastech_web::serve_metrics(listener, state.clone(), stopped());
        tokio::spawn(async move {
            if let Err(err) = serve.await {
                tracing::error!(error = %err, "serving the metrics failed");
            }
        })
    });
    let api_server = tokio::spawn(paastech_web::serve(api, state, config.api.max_connections, stopped()));

    shutdown_signal().await;
    let _ = stop_tx.send(true);
    if let Some(follower) = follower {
        follower.stop().await;
    }
    sampler.stop().await;
    scheduler.stop().await;
    audit_pruner.stop().await;
    sleeper.stop().await;
    orchestrator.shutdown().await;
    let _ = ingress.await;
    if let Some(behind_ingress) = behind_ingress {
        let _ = behind_ingress.await;
    }
    if let Some(metrics_server) = metrics_server {
        let _ = metrics_server.await;
    }
    match api_server.await {
        Ok(result) => result.context("serving the API")?,
        Err(err) => tracing::error!(error = %err, "API server task failed"),
    }
    tracing::info!("paastech server stopped");
    Ok(())
}

/// Routes `[api] public_host` to the API's listener for the ingress, as the ingress
/// routes an app: under `LABEL` when the host is `LABEL.<domain>` (a name no project may
/// take, see `Orchestrator::create_project`), else as a custom domain of a route no
/// project can be named (`@api`; a project's custom domain can never be this host).
fn route_api(routes: &RouteTable, host: &paastech_core::Hostname, domain: &str, addr: std::net::SocketAddr) {
    match api_label(host, domain) {
        Some(label) => {
            routes.set_backends(&label, vec![addr]);
        }
        None => {
            routes.set_backends("@api", vec![addr]);
            routes.set_domains("@api", &[host.as_str()]);
        }
    }
}

/// `LABEL` when the API's public host is `LABEL.<domain>`.
fn api_label(host: &paastech_core::Hostname, domain: &str) -> Option<String> {
    let domain = domain.trim_matches('.').to_ascii_lowercase();
    let label = host.as_str().strip_suffix(domain.as_str())?.strip_suffix('.')?;
    (!label.is_empty() && !label.contains('.')).then(|| label.to_owned())
}

/// The port users reach the ingress's HTTPS on, when it serves HTTPS.
fn https_public_port(config: &ServerConfig) -> Option<u16> {
    let listen = config.ingress.https_listen?;
    Some(config.ingress.https_public_port.unwrap_or(listen.port()))
}

/// App logs are rotated past this size (one old file is kept).
const APP_LOG_MAX_BYTES: u64 = 8 * 1024 * 1024;

fn runtime_input<'a>(source: &'a Source, config: &'a ServerConfig, context: &'a DriverContext) -> DriverInput<'a> {
    DriverInput { source, section: "runtime", table: &config.runtime, platform_keys: RUNTIME_PLATFORM_KEYS, context }
}

fn build_input<'a>(source: &'a Source, config: &'a ServerConfig, context: &'a DriverContext) -> DriverInput<'a> {
    DriverInput { source, section: "build", table: &config.build, platform_keys: BUILD_PLATFORM_KEYS, context }
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("listening for {what} on {addr}"))
}

/// How often the sleeper looks for idle projects: four times per minute of idle time,
/// between 250 ms (the tests' one-second minutes) and 15 s.
fn sleep_check_interval(minute_secs: u64) -> Duration {
    (Duration::from_secs(minute_secs) / 4).clamp(Duration::from_millis(250), Duration::from_secs(15))
}

/// The ingress's way to wake a sleeping project: the orchestrator's `wake`, run on the
/// server's runtime (the caller is an ingress thread's).
struct OrchestratorWaker {
    orchestrator: Arc<Orchestrator>,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl paastech_ingress::Waker for OrchestratorWaker {
    async fn wake(&self, project: &str, timeout: Duration) -> Result<(), String> {
        let name = ProjectName::parse(project).map_err(|err| err.to_string())?;
        let orchestrator = Arc::clone(&self.orchestrator);
        match self.runtime.spawn(async move { orchestrator.wake(&name, timeout).await }).await {
            Ok(result) => result.map_err(|err| err.to_string()),
            Err(err) => Err(format!("the wake stopped unexpectedly: {err}")),
        }
    }
}

/// Who may push and fetch over SSH: members by role (`Orchestrator::authorize_repo`). A push gets a
/// one-time ticket for the pre-receive hook, valid while git runs.
struct RepoAccessPolicy {
    orchestrator: Arc<Orchestrator>,
    hooks: HookServer,
}

#[async_trait::async_trait]
impl GitAccess for RepoAccessPolicy {
    async fn user_for_key(&self, fingerprint: &str) -> Option<i64> {
        self.orchestrator.store().user_by_ssh_fingerprint(fingerprint).await.ok().map(|(_, user)| user.id)
    }

    async fn open_repo(
        &self,
        user_id: i64,
        peer: Option<std::net::IpAddr>,
        project: &ProjectName,
        write: bool,
    ) -> paastech_core::Result<RepoAccess> {
        let verb = if write { GitVerb::Push } else { GitVerb::Fetch };
        let path = self.orchestrator.authorize_repo(user_id, project, verb).await?;
        let access = RepoAccess::new(path);
        Ok(if write {
            let ticket = self.hooks.register(project, Pusher { user_id, address: peer });
            access.with_env(ticket.env()).with_guard(ticket)
        } else {
            access
        })
    }
}

/// Git URLs name the API's host when it is not a loopback address; on loopback, the
/// address itself (what a local user can reach).
fn ssh_host_default(config: &ServerConfig) -> String {
    let ip = config.ssh.listen.ip();
    if ip.is_unspecified() { config.ingress.domain.clone() } else { ip.to_string() }
}

/// Hides a password in a database URL for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;
    use paastech_core::registry::DriverOptions;
    use paastech_driver_podman::{PodmanRuntimeOptions, Ulimit};

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite:///var/lib/p.db"), "sqlite:///var/lib/p.db");
    }

    fn load_text(text: &str) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("paastech.toml");
        std::fs::write(&path, text).expect("write config");
        load(Some(&path))
    }

    #[test]
    fn the_readmes_configuration_example_loads() {
        let readme = include_str!("../../README.md");
        let section = readme.split("\n## Configuration\n").nth(1).expect("a Configuration section");
        let block = section.split("```toml\n").nth(1).and_then(|b| b.split("\n```").next()).expect("a toml block");
        // Its certificate files, beside the config as the example names them.
        let dir = tempfile::tempdir().expect("tempdir");
        let wild = rcgen::generate_simple_self_signed(vec!["*.apps.localhost".to_owned()]).expect("certificate");
        std::fs::write(dir.path().join("wildcard.pem"), wild.cert.pem()).expect("write");
        std::fs::write(dir.path().join("wildcard.key"), wild.signing_key.serialize_pem()).expect("write");
        let path = dir.path().join("paastech.toml");
        std::fs::write(&path, block).expect("write config");
        let settings = load(Some(&path)).unwrap_or_else(|err| panic!("the README's example does not load: {err}"));
        let tls = settings.tls.as_ref().expect("the example serves https");
        assert!(tls.wildcard.is_some() && tls.acme.is_some(), "the operator's wildcard, and ACME beside it");
        assert_eq!((settings.runtime_driver.as_str(), settings.build_driver.as_str()), ("process", "process"));
        assert_eq!(settings.config.ingress.trusted_proxies.len(), 1);
        assert_eq!(
            (settings.config.api.max_connections.get(), settings.config.ingress.max_connections.get()),
            (1024, 10_000)
        );
    }

    #[test]
    fn the_apis_public_host_is_a_host_name_other_than_the_app_domain() {
        let settings = load_text("[api]\npublic_host = \"PaaSTech.Example.com.\"\n").expect("a host name");
        assert_eq!(settings.config.api.public_host.as_ref().map(|h| h.as_str()), Some("paastech.example.com"));
        for (text, needle) in [
            ("[api]\npublic_host = \"not a host\"\n", "paastech.toml:2:"),
            ("[api]\npublic_host = \"10.0.0.1\"\n", "paastech.toml:2:"),
            ("[api]\npublic_host = \"localhost\"\n", "at least two labels"),
            (
                "[api]\npublic_host = \"apps.example.com\"\n[ingress]\ndomain = \"apps.example.com\"\n",
                "is the app domain itself",
            ),
        ] {
            let shown = load_text(text).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(shown.contains(needle), "{text:?}: {shown}");
        }
    }

    #[test]
    fn addon_kinds_and_their_keys_are_checked() {
        let settings =
            load_text("[addons.postgres]\nurl = \"postgres://admin@127.0.0.1:5432/postgres\"\n").expect("postgres");
        assert!(settings.config.addons.contains_key("postgres"));
        let settings = load_text("[addons.redis]\nurl = \"redis://default:pw@127.0.0.1:6379\"\n").expect("redis");
        assert!(settings.config.addons.contains_key("redis"));
        for (text, needle) in [
            ("[addons.mysql]\nurl = \"mysql://x\"\n", "known drivers: postgres, redis"),
            ("[addons.postgres]\nurl = \"mysql://x\"\n", "[addons.postgres] url must start with postgres://"),
            ("[addons.postgres]\nurl = \"postgres://a@h/p\"\nport = 1\n", "unknown field `port`"),
            ("[addons.postgres]\n", "missing field `url`"),
            ("[addons.redis]\nurl = \"rediss://h:6380\"\n", "[addons.redis] url must start with redis://"),
            ("[addons.redis]\nurl = \"redis://h:6379/3\"\n", "redis add-ons use database 0 only"),
            ("[addons.redis]\nurl = \"redis://h\"\npassword = \"x\"\n", "unknown field `password`"),
        ] {
            let shown = load_text(text).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(shown.contains(needle), "{text:?}: {shown}");
        }
    }

    #[test]
    fn unknown_drivers_are_named_with_the_known_ones() {
        let err = load_text("[runtime]\ndriver = \"kubernetes\"\n").err().expect("unknown driver");
        let shown = err.to_string();
        assert!(shown.contains("paastech.toml:2:"), "{shown}");
        assert!(
            shown.contains("\"kubernetes\"") && shown.contains("known drivers: docker, podman, process, swarm"),
            "{shown}"
        );
    }

    #[test]
    fn swarm_needs_a_registry_and_builds_on_the_manager() {
        let err = load_text("[runtime]\ndriver = \"swarm\"\nsocket = \"/run/m.sock\"\n").err().expect("no registry");
        assert!(err.to_string().contains("[registry] url must be set"), "{err}");
        let text = "data_dir = \"/tmp/x\"\n[runtime]\ndriver = \"swarm\"\nsocket = \"/run/m.sock\"\nstop_grace_secs = 3\n\
                    [registry]\nurl = \"10.0.0.1:5000\"\n";
        let Ok(settings) = load_text(text) else {
            panic!("a valid swarm config");
        };
        assert_eq!(settings.build_driver, "swarm", "the build driver follows the runtime");
        let context = driver_context(&settings.config, "swarm", &settings.data_dir, settings.image_registry.clone())
            .expect("context");
        let input = build_input(&settings.source, &settings.config, &context);
        let build = input
            .options::<paastech_driver_swarm::SwarmBuildOptions>()
            .and_then(|o| o.config(&context).map_err(|e| input.error(e)))
            .unwrap_or_else(|e| panic!("build config: {e}"));
        assert_eq!(build.engine.socket, Path::new("/run/m.sock"), "builds run on the manager's engine");
        let err = load_text("[runtime]\ndriver = \"swarm\"\nstop_grace = 3\n[registry]\nurl = \"r:5000\"\n")
            .err()
            .expect("typo");
        assert!(err.to_string().contains("stop_grace") && err.line == Some(3), "{err}");
    }

    #[test]
    fn docker_keys_are_checked() {
        let text = "data_dir = \"/tmp/x\"\n[runtime]\ndriver = \"docker\"\nsocket = \"/run/d.sock\"\nmemory_mb = 256\ncpus = 0.5\n\
                    [build]\nbase_image = \"paastech/busybox:latest\"\n";
        let Ok(settings) = load_text(text) else {
            panic!("a valid docker config");
        };
        assert_eq!(settings.build_driver, "docker", "the build driver follows the runtime");
        let err = load_text("[runtime]\ndriver = \"docker\"\nmemroy_mb = 1\n").err().expect("typo");
        assert!(err.to_string().contains("memroy_mb") && err.line == Some(3), "{err}");
        let err = load_text("[runtime]\ndriver = \"docker\"\ncpus = 0\n").err().expect("no cpu");
        assert!(err.to_string().contains("cpus must be"), "{err}");
    }

    #[test]
    fn podman_keys_are_checked() {
        let text = "data_dir = \"/tmp/x\"\n[runtime]\ndriver = \"podman\"\nsocket = \"/run/p.sock\"\nruntime = \"runc\"\n\
                    ulimits = [\"nofile=2048:2048\"]\nmemory_mb = 256\ncpus = 0.5\n[build]\nbase_image = \"paastech/busybox\"\n";
        let Ok(settings) = load_text(text) else {
            panic!("a valid podman config");
        };
        assert_eq!(settings.build_driver, "podman", "the build driver follows the runtime");
        let context = driver_context(&settings.config, "podman", &settings.data_dir, None).expect("context");
        let options: PodmanRuntimeOptions =
            runtime_input(&settings.source, &settings.config, &context).options().expect("options");
        let config = options.config(&context).expect("config");
        assert_eq!(config.socket, Path::new("/run/p.sock"));
        assert_eq!(config.ulimits, vec!["nofile=2048:2048".parse::<Ulimit>().expect("ulimit")]);
        assert_eq!((config.default_memory_bytes, config.default_cpus), (256 * 1024 * 1024, 0.5));
        assert_eq!(config.namespace, context.namespace());
        let err = load_text("[runtime]\ndriver = \"podman\"\nulimit = []\n").err().expect("typo");
        assert!(err.to_string().contains("ulimit") && err.line == Some(3), "{err}");
        let err = load_text("[runtime]\ndriver = \"podman\"\nulimits = [\"nofile=9:1\"]\n").err().expect("bad");
        assert!(err.to_string().contains("soft limit is above"), "{err}");
        let err = load_text("[runtime]\ndriver = \"podman\"\n[build]\nbase_imag = \"x\"\n").err().expect("typo");
        assert!(err.to_string().contains("base_imag"), "{err}");
    }

    /// Each registered driver's own keys are checked at start through the registry: a
    /// typo names the file, the line and the key; a value out of range names its key and
    /// the line it is on.
    #[test]
    fn every_drivers_keys_are_checked_at_start_with_file_line_and_key() {
        let cases = [
            ("[runtime]\ndriver = \"process\"\ngrace_sec = 1\n", 3, "grace_sec"),
            ("[runtime]\ndriver = \"docker\"\n\nsockett = \"/x\"\n", 4, "sockett"),
            ("[runtime]\ndriver = \"podman\"\nnamespace = \"a\"\npid_limit = 5\n", 4, "pid_limit"),
            ("[build]\ndriver = \"process\"\ntimeout = 1\n", 3, "timeout"),
            ("[runtime]\ndriver = \"process\"\n[build]\ndriver = \"docker\"\nbase = \"x\"\n", 5, "base"),
            ("[build]\ndriver = \"podman\"\nkeep_builds = 3\nsocket_path = \"/x\"\n", 4, "socket_path"),
            ("[runtime]\ndriver = \"process\"\nmemory_mb = 2\n", 3, "memory_mb must be at least 4"),
            ("[runtime]\ndriver = \"docker\"\ncpus = 1\npids_limit = 0\n", 4, "pids_limit must be at least 1"),
            ("[runtime]\ndriver = \"podman\"\n\nmemory_mb = 5\n", 4, "memory_mb must be at least 6"),
            ("[build]\ndriver = \"docker\"\ntimeout_secs = 0\n", 3, "timeout_secs must be above 0"),
        ];
        for (text, line, needle) in cases {
            let err = load_text(text).err().unwrap_or_else(|| panic!("{text:?} loaded"));
            let shown = err.to_string();
            assert!(shown.contains("paastech.toml:") && shown.contains(needle), "{text:?}: {shown}");
            assert_eq!(err.line, Some(line), "{text:?}: {shown}");
        }
    }

    #[test]
    fn a_builder_on_the_runtimes_engine_uses_its_socket() {
        use paastech_driver_docker::DockerBuildOptions;
        let settings = load_text("data_dir = \"/tmp/x\"\n[runtime]\ndriver = \"docker\"\nsocket = \"/run/d.sock\"\n")
            .unwrap_or_else(|err| panic!("a valid config: {err}"));
        let context =
            driver_context(&settings.config, &settings.runtime_driver, &settings.data_dir, None).expect("context");
        let input = build_input(&settings.source, &settings.config, &context);
        let config = input.options::<DockerBuildOptions>().and_then(|o| o.config(&context).map_err(|e| input.error(e)));
        assert_eq!(config.map(|c| c.engine.socket).ok(), Some(PathBuf::from("/run/d.sock")));
        // Not when the runtime is another engine: its socket means nothing to Docker.
        let settings = load_text("data_dir = \"/tmp/x\"\n[runtime]\ndriver = \"podman\"\nsocket = \"/run/p.sock\"\n[build]\ndriver = \"docker\"\n")
            .unwrap_or_else(|err| panic!("a valid config: {err}"));
        let context =
            driver_context(&settings.config, &settings.runtime_driver, &settings.data_dir, None).expect("context");
        let input = build_input(&settings.source, &settings.config, &context);
        let config = input.options::<DockerBuildOptions>().and_then(|o| o.config(&context).map_err(|e| input.error(e)));
        assert_eq!(
            config.map(|c| c.engine.socket).ok(),
            Some(PathBuf::from(paastech_driver_docker::DEFAULT_DOCKER_SOCKET))
        );
    }

    #[test]
    fn build_driver_follows_the_runtime_by_default() {
        let Ok(settings) = load_text("data_dir = \"/tmp/x\"\n[runtime]\ndriver = \"process\"\n") else {
            panic!("a valid config");
        };
        assert_eq!(settings.build_driver, "process");
        assert_eq!(settings.database_url, "sqlite:///tmp/x/paastech.db");
    }

    #[test]
    fn hook_errors_name_the_entry_and_its_line() {
        let cases = [
            (
                "[[hooks]]\nname = \"a\"\npath = \"/nonexistent/a.wasm\"\nstages = [\"pre-build\"]\n",
                3,
                "/nonexistent/a.wasm",
            ),
            (
                "[build]\nproject_hooks = true\n\n[[hooks]]\nname = \"b\"\npath = \"b.wasm\"\nstages = [\"pre-built\"]\n",
                7,
                "unknown stage \"pre-built\"",
            ),
            ("[[hooks]]\nname = \"c\"\npath = \"c.wasm\"\nstages = []\n", 4, "stages is empty"),
            ("[[hooks]]\nname = \"d\"\npath = \"d.wasm\"\nstages = [\"pre-build\"]\ntimeout_ms = 0\n", 5, "timeout_ms"),
            ("[build]\nproject_hook_timeout_ms = 0\n", 2, "[build] project_hook_timeout_ms must be above 0"),
            (
                "[build]\ndriver = \"process\"\nproject_hook_memory_mb = 5000\n",
                3,
                "[build] project_hook_memory_mb must be between 1 and 4096",
            ),
            ("[build]\nproject_hook_memory_mb = \"big\"\n", 2, "project_hook_memory_mb must be a whole number"),
            (
                "[[hooks]]\nname = \"e\"\npath = \"e.wasm\"\nstages = [\"pre-build\"]\n[hooks.config]\nx = { y = 1 }\n",
                5,
                "config.x",
            ),
        ];
        for (text, line, needle) in cases {
            let err = load_text(text).err().expect(text);
            let shown = err.to_string();
            assert!(shown.contains(needle), "{shown:?} should mention {needle:?}");
            assert_eq!(err.line, Some(line), "{shown}");
        }
        // A file that is there but is not a component: named with its entry's path line.
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("bad.wasm"), b"not wasm").expect("write");
        let path = dir.path().join("paastech.toml");
        std::fs::write(&path, "[[hooks]]\nname = \"first\"\npath = \"bad.wasm\"\nstages = [\"pre-build\"]\n")
            .expect("write config");
        let err = load(Some(&path)).err().expect("invalid component");
        assert!(err.to_string().contains("bad.wasm") && err.to_string().contains("first"), "{err}");
        assert_eq!(err.line, Some(3), "{err}");
    }

    #[test]
    fn unknown_keys_beside_driver_are_errors() {
        let err = load_text("[build]\ndriver = \"process\"\nproject_hooks = true\ncolor = 1\n").err().expect("bad key");
        assert_eq!(err.line, Some(4), "{err}");
        assert!(err.to_string().contains("color"), "{err}");
    }
}
