//! `paastech server`: the composition root. Reads the configuration, registers and builds
//! the drivers, opens the store, and starts the servers, in one readable function.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use std::time::Duration;

use paastech_core::drivers::{ImageBuilder, Runtime};
use paastech_core::logs::LogHub;
use paastech_core::orchestrator::{Orchestrator, OrchestratorConfig};
use paastech_core::registry::Registry;
use paastech_core::{ProjectName, Store};
use paastech_driver_git::GitRepoStore;
use paastech_driver_git::hook::HookServer;
use paastech_driver_process::{ProcessBuilder, ProcessBuilderConfig, ProcessRuntime, ProcessRuntimeConfig};
use paastech_ingress::{IngressConfig, IngressRouter, RouteTable};
use paastech_ssh::{GitAccess, RepoAccess, SshServer};
use paastech_web::{AppState, PublicUrls, SignupPolicy};
use tokio::net::TcpListener;

use crate::config::{ConfigError, ServerConfig, Signup, Source};

/// A validated configuration with every default filled in.
pub struct Settings {
    pub source: Source,
    pub config: ServerConfig,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub runtime_driver: String,
    pub build_driver: String,
}

/// What a driver constructor gets: its own keys, and where the platform keeps things.
pub struct DriverInput<'a> {
    pub source: &'a Source,
    pub section: &'static str,
    pub table: &'a toml::Table,
    pub data_dir: &'a Path,
}

impl DriverInput<'_> {
    /// The driver's own keys (beside `driver`), as its options struct.
    fn options<T: serde::de::DeserializeOwned>(&self, platform_keys: &[&str]) -> paastech_core::Result<T> {
        self.source
            .driver_options(self.section, self.table, platform_keys)
            .map_err(|err| paastech_core::Error::Invalid(err.to_string()))
    }
}

/// Keys of `[runtime] driver = "process"`.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ProcessRuntimeOptions {
    /// Seconds between SIGTERM and SIGKILL when an instance stops.
    grace_secs: Option<u64>,
    /// Memory (data segment) limit of each process, in MiB.
    memory_mb: Option<u64>,
}

/// Keys of `[build] driver = "process"` (besides the platform's `project_hooks`).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ProcessBuildOptions {
    /// The longest a build may take, in seconds.
    timeout_secs: Option<u64>,
}

/// Keys the platform itself reads in `[build]`.
const BUILD_PLATFORM_KEYS: &[&str] = &["driver", "project_hooks"];

/// What each driver name means: the one place runtime drivers are registered.
fn runtime_drivers<'a>() -> Registry<dyn Runtime, DriverInput<'a>> {
    let mut registry: Registry<dyn Runtime, DriverInput<'a>> = Registry::new("runtime");
    registry
        .register("process", |input| {
            let options: ProcessRuntimeOptions = input.options(&["driver"])?;
            let mut config = ProcessRuntimeConfig::default();
            if let Some(secs) = options.grace_secs {
                config.grace = Duration::from_secs(secs);
            }
            config.default_memory_bytes = options.memory_mb.map(|mb| mb * 1024 * 1024);
            Ok(Arc::new(ProcessRuntime::new(config)) as Arc<dyn Runtime>)
        })
        .register_disabled("docker", "the Docker driver is not part of this version yet")
        .register_disabled("podman", "the Podman driver is not part of this version yet")
        .register_disabled("swarm", "the Docker Swarm driver is not part of this version yet");
    registry
}

/// The one place build drivers are registered.
fn build_drivers<'a>() -> Registry<dyn ImageBuilder, DriverInput<'a>> {
    let mut registry: Registry<dyn ImageBuilder, DriverInput<'a>> = Registry::new("build");
    registry
        .register("process", |input| {
            let options: ProcessBuildOptions = input.options(BUILD_PLATFORM_KEYS)?;
            let exe = std::env::current_exe()
                .map_err(|err| paastech_core::Error::internal("finding the paastech executable", err))?;
            let config = ProcessBuilderConfig {
                cache_dir: input.data_dir.join("cache"),
                timeout: Duration::from_secs(options.timeout_secs.unwrap_or(15 * 60)),
                static_server: vec![exe.display().to_string(), "internal".into(), "serve-static".into()],
            };
            Ok(Arc::new(ProcessBuilder::new(config)) as Arc<dyn ImageBuilder>)
        })
        .register_disabled("docker", "the Docker builder is not part of this version yet")
        .register_disabled("podman", "the Podman builder is not part of this version yet");
    registry
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

    let runtime_driver = source.driver_name("runtime", &config.runtime, "process")?;
    runtime_drivers().check(&runtime_driver).map_err(|err| source.driver_error("runtime", err))?;
    let build_driver = source.driver_name("build", &config.build, &runtime_driver)?;
    build_drivers().check(&build_driver).map_err(|err| source.driver_error("build", err))?;
    // Each driver's own keys are checked now, so a typo stops the start with its line.
    if runtime_driver == "process" {
        source.driver_options::<ProcessRuntimeOptions>("runtime", &config.runtime, &["driver"])?;
    }
    if build_driver == "process" {
        source.driver_options::<ProcessBuildOptions>("build", &config.build, BUILD_PLATFORM_KEYS)?;
    }
    if let Some(value) = config.build.get("project_hooks")
        && !value.is_bool()
    {
        return Err(source.driver_error("build", "project_hooks must be true or false"));
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
    if let Some(hook) = config.hooks.first() {
        return Err(ConfigError {
            file: source.file.clone(),
            line: source.line_of_key("hooks", None),
            message: format!("[[hooks]] {:?}: WASM build hooks are not supported by this version yet", hook.name),
        });
    }
    let data_dir = match &config.data_dir {
        Some(dir) => dir.clone(),
        None => default_data_dir().map_err(|err| ConfigError { file: None, line: None, message: err.to_string() })?,
    };
    let database_url =
        config.database.url.clone().unwrap_or_else(|| format!("sqlite://{}", data_dir.join("paastech.db").display()));
    Ok(Settings { source, config, data_dir, database_url, runtime_driver, build_driver })
}

pub fn main(config_path: Option<PathBuf>, check: bool) -> Result<()> {
    let settings = load(config_path.as_deref())?;
    if check {
        match &config_path {
            Some(path) => println!("{}: configuration is valid", path.display()),
            None => println!("embedded default configuration is valid"),
        }
        return Ok(());
    }
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("paastech")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(settings))
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

async fn serve(settings: Settings) -> Result<()> {
    let Settings { source, config, data_dir, database_url, runtime_driver, build_driver } = settings;
    create_private_dir(&data_dir)?;

    let store: Arc<dyn Store> = {
        let url = database_url.clone();
        let store = tokio::task::spawn_blocking(move || paastech_store::SqlStore::open(&url))
            .await?
            .with_context(|| format!("opening the database {}", redact(&database_url)))?;
        Arc::new(store)
    };

    // Drivers, as configured.
    let runtime = {
        let input = DriverInput { source: &source, section: "runtime", table: &config.runtime, data_dir: &data_dir };
        build_with(runtime_drivers(), &runtime_driver, input)?
    };
    let builder = {
        let input = DriverInput { source: &source, section: "build", table: &config.build, data_dir: &data_dir };
        build_with(build_drivers(), &build_driver, input)?
    };
    let repos = Arc::new(GitRepoStore::new(data_dir.join("repos")));

    // The orchestrator, with the ingress as its traffic router.
    let routes = RouteTable::new();
    let traffic = Arc::new(IngressRouter::new(routes.clone(), config.ingress.health_path.clone()));
    let logs = Arc::new(LogHub::new(data_dir.join("logs"), APP_LOG_MAX_BYTES));
    let mut orchestrator_config = OrchestratorConfig::new(data_dir.join("releases"));
    orchestrator_config.health_timeout = Duration::from_secs(config.ingress.health_timeout_secs);
    orchestrator_config.drain_timeout = Duration::from_secs(config.ingress.drain_timeout_secs);
    let orchestrator = Arc::new(Orchestrator::new(store, repos, builder, runtime, traffic, logs, orchestrator_config));

    // Every listener is bound before anything is served, so a taken port stops the start.
    let api = bind(config.api.listen, "the API").await?;
    let ssh_listener = bind(config.ssh.listen, "SSH").await?;
    let ingress_listener = bind(config.ingress.listen, "the ingress").await?;
    let hooks = HookServer::bind(data_dir.join("run").join("hooks.sock"), Arc::clone(&orchestrator) as _)
        .context("starting the git hook socket")?;
    let access = Arc::new(RepoAccessPolicy { orchestrator: Arc::clone(&orchestrator), hooks: hooks.clone() });
    let ssh = SshServer::new(&data_dir.join("ssh_host_ed25519_key"), access).context("loading the SSH host key")?;

    orchestrator.restore().await.context("restoring live deployments")?;

    let urls = PublicUrls {
        app_domain: config.ingress.domain.clone(),
        app_port: Some(config.ingress.public_port.unwrap_or(config.ingress.listen.port())),
        ssh_host: config.ssh.public_host.clone().unwrap_or_else(|| ssh_host_default(&config)),
        ssh_port: config.ssh.listen.port(),
    };
    let signup = match config.auth.signup {
        Signup::Open => SignupPolicy::Open,
        Signup::Closed => SignupPolicy::Closed,
    };
    let state = AppState::new(Arc::clone(&orchestrator), signup, urls);

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
    tokio::spawn(async move {
        if let Err(err) = ssh.serve(ssh_listener).await {
            tracing::error!(error = %err, "SSH server stopped");
        }
    });
    let ingress = tokio::spawn(paastech_ingress::serve(
        ingress_listener,
        IngressConfig::new(config.ingress.domain.clone()),
        routes,
        stopped(),
    ));
    tracing::info!(
        api = %config.api.listen,
        ssh = %config.ssh.listen,
        ingress = %config.ingress.listen,
        domain = %config.ingress.domain,
        data_dir = %data_dir.display(),
        database = %redact(&database_url),
        runtime = %runtime_driver,
        build = %build_driver,
        "paastech server started"
    );
    let api_server = tokio::spawn(paastech_web::serve(api, state, stopped()));

    shutdown_signal().await;
    let _ = stop_tx.send(true);
    orchestrator.shutdown().await;
    let _ = ingress.await;
    match api_server.await {
        Ok(result) => result.context("serving the API")?,
        Err(err) => tracing::error!(error = %err, "API server task failed"),
    }
    tracing::info!("paastech server stopped");
    Ok(())
}

/// App logs are rotated past this size (one old file is kept).
const APP_LOG_MAX_BYTES: u64 = 8 * 1024 * 1024;

fn build_with<'a, T: ?Sized>(
    registry: Registry<T, DriverInput<'a>>,
    name: &str,
    input: DriverInput<'a>,
) -> Result<Arc<T>> {
    registry.build(name, input).map_err(|err| anyhow::anyhow!("{err}"))
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("listening for {what} on {addr}"))
}

/// Who may push and fetch over SSH: the owner of a project, or an admin. A push gets a
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

    async fn open_repo(&self, user_id: i64, project: &ProjectName, write: bool) -> paastech_core::Result<RepoAccess> {
        let path = self.orchestrator.authorize_repo(user_id, project).await?;
        let access = RepoAccess::new(path);
        Ok(if write {
            let ticket = self.hooks.register(project, user_id);
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
    fn unknown_drivers_are_named_with_the_known_ones() {
        let err = load_text("[runtime]\ndriver = \"kubernetes\"\n").err().expect("unknown driver");
        let shown = err.to_string();
        assert!(shown.contains("paastech.toml:2:"), "{shown}");
        assert!(shown.contains("\"kubernetes\"") && shown.contains("known drivers: process"), "{shown}");

        let err = load_text("[runtime]\ndriver = \"swarm\"\n").err().expect("disabled driver");
        assert!(err.to_string().contains("not enabled"), "{err}");
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
    fn unknown_keys_beside_driver_are_errors() {
        let err = load_text("[build]\ndriver = \"process\"\nproject_hooks = true\ncolor = 1\n").err().expect("bad key");
        assert_eq!(err.line, Some(4), "{err}");
        assert!(err.to_string().contains("color"), "{err}");
    }
}
