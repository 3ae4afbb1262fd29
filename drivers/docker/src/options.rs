//! The driver's configuration keys (`[runtime] driver = "docker"`, `[build] driver =
//! "docker"`), their defaults and their checks: what the binary registers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use paastech_core::drivers::{ImageBuilder, Runtime};
use paastech_core::registry::{DriverContext, DriverOptions};
use paastech_core::{Error, Result};
use serde::Deserialize;

use crate::{DockerBuilder, DockerBuilderConfig, DockerRuntime, DockerRuntimeConfig};

/// Keys of `[runtime] driver = "docker"`.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct DockerRuntimeOptions {
    /// The engine's API socket; default `/var/run/docker.sock`.
    pub socket: Option<PathBuf>,
    /// Memory limit of each container, in MiB (default 512); no swap beyond it.
    pub memory_mb: Option<u64>,
    /// CPU limit of each container, in cores (default 1.0).
    pub cpus: Option<f64>,
    /// Most processes per container (default 512).
    pub pids_limit: Option<i64>,
    /// Restarts of a failing container before it stays down (default 5).
    pub max_restarts: Option<u32>,
    /// Label value telling this server's containers from others' on the same engine;
    /// default: derived from data_dir.
    pub namespace: Option<String>,
}

impl DriverOptions<dyn Runtime> for DockerRuntimeOptions {
    type Config = DockerRuntimeConfig;

    fn config(self, context: &DriverContext) -> Result<DockerRuntimeConfig> {
        let mut config = DockerRuntimeConfig {
            namespace: self.namespace.unwrap_or_else(|| context.namespace()),
            registry: context.image_registry.clone(),
            ..DockerRuntimeConfig::default()
        };
        if let Some(socket) = self.socket {
            config.engine.socket = socket;
        }
        if let Some(mb) = self.memory_mb {
            if mb < 4 {
                return Err(Error::Invalid("memory_mb must be at least 4".into()));
            }
            config.default_memory_bytes = mb.saturating_mul(1024 * 1024);
        }
        if let Some(cpus) = self.cpus {
            if !(cpus > 0.0 && cpus.is_finite()) {
                return Err(Error::Invalid("cpus must be a number above 0".into()));
            }
            config.default_cpus = cpus;
        }
        if let Some(pids) = self.pids_limit {
            if pids < 1 {
                return Err(Error::Invalid("pids_limit must be at least 1".into()));
            }
            config.pids_limit = pids;
        }
        if let Some(restarts) = self.max_restarts {
            config.max_restarts = restarts;
        }
        Ok(config)
    }

    fn build(config: DockerRuntimeConfig) -> Result<Arc<dyn Runtime>> {
        Ok(Arc::new(DockerRuntime::new(config)))
    }
}

/// Keys of `[build] driver = "docker"` (besides the platform's own `[build]` keys).
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct DockerBuildOptions {
    /// The engine's API socket; default: `[runtime] socket` when the runtime is Docker,
    /// else `/var/run/docker.sock`.
    pub socket: Option<PathBuf>,
    /// The image a Dockerfile is generated FROM for apps without one; unset: such apps
    /// need a Dockerfile.
    pub base_image: Option<String>,
    /// The longest a build may take, in seconds (default 900).
    pub timeout_secs: Option<u64>,
}

impl DriverOptions<dyn ImageBuilder> for DockerBuildOptions {
    type Config = DockerBuilderConfig;

    fn config(self, context: &DriverContext) -> Result<DockerBuilderConfig> {
        let mut config = DockerBuilderConfig {
            base_image: self.base_image,
            registry: context.image_registry.clone(),
            ..DockerBuilderConfig::default()
        };
        // The builder uses the runtime's engine unless told otherwise: the image it builds
        // is then already where the containers run.
        if let Some(socket) = self.socket.or_else(|| context.runtime_socket_of("docker")) {
            config.engine.socket = socket;
        }
        if let Some(secs) = self.timeout_secs {
            if secs == 0 {
                return Err(Error::Invalid("timeout_secs must be above 0".into()));
            }
            config.timeout = Duration::from_secs(secs);
        }
        Ok(config)
    }

    fn build(config: DockerBuilderConfig) -> Result<Arc<dyn ImageBuilder>> {
        Ok(Arc::new(DockerBuilder::new(config)))
    }
}
