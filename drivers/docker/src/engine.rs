//! The connection to the engine: opened on first use, API version negotiated once, and
//! the engine's errors turned into core errors. Public for the Swarm driver, which speaks
//! to a manager's engine through the same client.

use std::path::PathBuf;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as EngineError;
use paastech_core::Error;
use tokio::sync::OnceCell;

pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Where the engine is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// The engine's API socket (`unix://` prefix optional).
    pub socket: PathBuf,
    /// The longest one API request may take before its answer starts (streams, such as a
    /// build's output, are not cut by it).
    pub request_timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { socket: PathBuf::from(DEFAULT_DOCKER_SOCKET), request_timeout: Duration::from_secs(120) }
    }
}

/// A lazily opened client: the server may start before the engine answers, and an engine
/// that is down is reported on the request that needs it, with the socket's path.
pub struct Engine {
    config: EngineConfig,
    client: OnceCell<Docker>,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Self {
        Engine { config, client: OnceCell::new() }
    }

    pub fn socket(&self) -> String {
        self.config.socket.display().to_string()
    }

    pub async fn client(&self) -> paastech_core::Result<&Docker> {
        self.client
            .get_or_try_init(|| async {
                let socket = self.socket();
                let unavailable = |err: EngineError| {
                    Error::Unavailable(format!("cannot reach the container engine at {socket}: {err}"))
                };
                let docker = Docker::connect_with_unix(
                    &socket,
                    self.config.request_timeout.as_secs().max(1),
                    bollard::API_DEFAULT_VERSION,
                )
                .map_err(unavailable)?;
                // bollard speaks a newer API than Debian's engine (1.41): ask the engine.
                let docker = docker.negotiate_version().await.map_err(unavailable)?;
                tracing::info!(socket = %socket, api = ?docker.client_version(), "connected to the container engine");
                Ok(docker)
            })
            .await
    }
}

/// The engine's HTTP status, when it answered with an error.
pub fn status_of(err: &EngineError) -> Option<u16> {
    match err {
        EngineError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// A core error for a failed engine request: what was being done, and what the engine said.
pub fn engine_error(what: impl std::fmt::Display, err: EngineError) -> Error {
    match &err {
        EngineError::DockerResponseServerError { status_code: 404, message } => {
            Error::NotFound(format!("{what}: {message}"))
        }
        EngineError::DockerResponseServerError { status_code: 409, message } => {
            Error::Conflict(format!("{what}: {message}"))
        }
        EngineError::DockerResponseServerError { status_code: 400, message } => {
            Error::Invalid(format!("{what}: {message}"))
        }
        EngineError::DockerResponseServerError { message, .. } => Error::internal(format!("{what}: {message}"), err),
        EngineError::IOError { .. } | EngineError::RequestTimeoutError | EngineError::HyperResponseError { .. } => {
            Error::Unavailable(format!("{what}: the container engine did not answer: {err}"))
        }
        _ => Error::internal(format!("{what}: {err}"), err),
    }
}
