//! `paastech server`: the composition root. Reads the configuration, registers and builds
//! the drivers, opens the store, and starts the servers, in one readable function.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use paastech_core::Store;
use paastech_core::registry::Registry;
use paastech_web::{AppState, PublicUrls, SignupPolicy};
use tokio::net::TcpListener;

use crate::config::{ConfigError, ServerConfig, Signup, Source};

/// A validated configuration with every default filled in.
pub struct Settings {
    pub config: ServerConfig,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub runtime_driver: String,
    pub build_driver: String,
}

/// What each driver name means: the one place drivers are registered.
fn runtime_drivers() -> Registry<(), toml::Table> {
    let mut registry = Registry::new("runtime");
    registry
        .register("process", |_| Ok(Arc::new(())))
        .register_disabled(
            "docker",
            "the Docker driver is not part of this version yet",
        )
        .register_disabled(
            "podman",
            "the Podman driver is not part of this version yet",
        )
        .register_disabled(
            "swarm",
            "the Docker Swarm driver is not part of this version yet",
        );
    registry
}

fn build_drivers() -> Registry<(), toml::Table> {
    let mut registry = Registry::new("build");
    registry
        .register("process", |_| Ok(Arc::new(())))
        .register_disabled(
            "docker",
            "the Docker builder is not part of this version yet",
        )
        .register_disabled(
            "podman",
            "the Podman builder is not part of this version yet",
        );
    registry
}

fn default_data_dir() -> Result<PathBuf> {
    let base = dirs::data_local_dir()
        .context("no per-user data directory (is HOME set?): set data_dir in a config file")?;
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
    runtime_drivers()
        .check(&runtime_driver)
        .map_err(|err| source.driver_error("runtime", err))?;
    let build_driver = source.driver_name("build", &config.build, &runtime_driver)?;
    build_drivers()
        .check(&build_driver)
        .map_err(|err| source.driver_error("build", err))?;
    // The process drivers take no keys of their own yet: any other key is a typo.
    source.driver_options::<NoOptions>("runtime", &config.runtime, &["driver"])?;
    source.driver_options::<NoOptions>("build", &config.build, &["driver", "project_hooks"])?;
    if let Some(value) = config.build.get("project_hooks")
        && !value.is_bool()
    {
        return Err(source.driver_error("build", "project_hooks must be true or false"));
    }

    if let Some(url) = &config.database.url
        && !["sqlite://", "postgres://", "postgresql://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
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
            message: format!(
                "[[hooks]] {:?}: WASM build hooks are not supported by this version yet",
                hook.name
            ),
        });
    }
    let data_dir = match &config.data_dir {
        Some(dir) => dir.clone(),
        None => default_data_dir().map_err(|err| ConfigError {
            file: None,
            line: None,
            message: err.to_string(),
        })?,
    };
    let database_url = config
        .database
        .url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("paastech.db").display()));
    Ok(Settings {
        config,
        data_dir,
        database_url,
        runtime_driver,
        build_driver,
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoOptions {}

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
    let Settings {
        config,
        data_dir,
        database_url,
        runtime_driver,
        build_driver,
    } = settings;
    create_private_dir(&data_dir)?;

    let store: Arc<dyn Store> = {
        let url = database_url.clone();
        let store = tokio::task::spawn_blocking(move || paastech_store::SqlStore::open(&url))
            .await?
            .with_context(|| format!("opening the database {}", redact(&database_url)))?;
        Arc::new(store)
    };

    let urls = PublicUrls {
        app_domain: config.ingress.domain.clone(),
        app_port: Some(
            config
                .ingress
                .public_port
                .unwrap_or(config.ingress.listen.port()),
        ),
        ssh_host: config
            .ssh
            .public_host
            .clone()
            .unwrap_or_else(|| ssh_host_default(&config)),
        ssh_port: config.ssh.listen.port(),
    };
    let signup = match config.auth.signup {
        Signup::Open => SignupPolicy::Open,
        Signup::Closed => SignupPolicy::Closed,
    };
    let state = AppState::new(store, signup, urls);

    let api = TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("listening for the API on {}", config.api.listen))?;
    tracing::info!(
        api = %config.api.listen,
        data_dir = %data_dir.display(),
        database = %redact(&database_url),
        runtime = %runtime_driver,
        build = %build_driver,
        "paastech server started"
    );
    paastech_web::serve(api, state, shutdown_signal())
        .await
        .context("serving the API")?;
    tracing::info!("paastech server stopped");
    Ok(())
}

/// Git URLs name the API's host when it is not a loopback address; on loopback, the
/// address itself (what a local user can reach).
fn ssh_host_default(config: &ServerConfig) -> String {
    let ip = config.ssh.listen.ip();
    if ip.is_unspecified() {
        config.ingress.domain.clone()
    } else {
        ip.to_string()
    }
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
        let err = load_text("[runtime]\ndriver = \"kubernetes\"\n")
            .err()
            .expect("unknown driver");
        let shown = err.to_string();
        assert!(shown.contains("paastech.toml:2:"), "{shown}");
        assert!(
            shown.contains("\"kubernetes\"") && shown.contains("known drivers: process"),
            "{shown}"
        );

        let err = load_text("[runtime]\ndriver = \"swarm\"\n")
            .err()
            .expect("disabled driver");
        assert!(err.to_string().contains("not enabled"), "{err}");
    }

    #[test]
    fn build_driver_follows_the_runtime_by_default() {
        let Ok(settings) = load_text("data_dir = \"/tmp/x\"\n[runtime]\ndriver = \"process\"\n")
        else {
            panic!("a valid config");
        };
        assert_eq!(settings.build_driver, "process");
        assert_eq!(settings.database_url, "sqlite:///tmp/x/paastech.db");
    }

    #[test]
    fn unknown_keys_beside_driver_are_errors() {
        let err = load_text("[build]\ndriver = \"process\"\nproject_hooks = true\ncolor = 1\n")
            .err()
            .expect("bad key");
        assert_eq!(err.line, Some(4), "{err}");
        assert!(err.to_string().contains("color"), "{err}");
    }
}
