//! The driver's configuration keys (`[runtime] driver = "podman"`, `[build] driver =
//! "podman"`), their defaults and their checks: what the binary registers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use paastech_core::drivers::{ImageBuilder, Runtime};
use paastech_core::registry::{DriverContext, DriverOptions};
use paastech_core::{Error, Result};
use serde::Deserialize;

use crate::{PodmanBuilder, PodmanBuilderConfig, PodmanRuntime, PodmanRuntimeConfig, Ulimit};

/// Keys of `[runtime] driver = "podman"`.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct PodmanRuntimeOptions {
    /// The libpod API socket; default `/run/podman/podman.sock`.
    pub socket: Option<PathBuf>,
    /// The OCI runtime of containers; default `runc` (crun fails on cgroup v1 hosts).
    pub runtime: Option<String>,
    /// Ulimits of each container, `NAME=SOFT:HARD`; default nofile and nproc 1024:1024.
    pub ulimits: Option<Vec<String>>,
    /// Memory limit of each container, in MiB (default 512); no swap beyond it.
    pub memory_mb: Option<u64>,
    /// CPU limit of each container, in cores (default 1.0).
    pub cpus: Option<f64>,
    /// Most processes per container (default 512).
    pub pids_limit: Option<u32>,
    /// Restarts of a failing container before it stays down (default 5).
    pub max_restarts: Option<u32>,
    /// Label value telling this server's containers from others' on the same engine;
    /// default: derived from data_dir.
    pub namespace: Option<String>,
}

impl DriverOptions<dyn Runtime> for PodmanRuntimeOptions {
    type Config = PodmanRuntimeConfig;

    fn config(self, context: &DriverContext) -> Result<PodmanRuntimeConfig> {
        let invalid = |message: String| Error::Invalid(message);
        let mut config = PodmanRuntimeConfig {
            namespace: self.namespace.unwrap_or_else(|| context.namespace()),
            registry: context.image_registry.clone(),
            ..PodmanRuntimeConfig::default()
        };
        if let Some(socket) = self.socket {
            config.socket = socket;
        }
        if let Some(runtime) = self.runtime {
            if runtime.trim().is_empty() {
                return Err(invalid("runtime must name an OCI runtime, like \"runc\"".into()));
            }
            config.oci_runtime = runtime;
        }
        if let Some(ulimits) = self.ulimits {
            config.ulimits = ulimits
                .iter()
                .map(|u| u.parse::<Ulimit>().map_err(|e| invalid(format!("ulimits: {e}"))))
                .collect::<Result<_>>()?;
        }
        if let Some(mb) = self.memory_mb {
            if mb < 6 {
                return Err(invalid("memory_mb must be at least 6".into()));
            }
            config.default_memory_bytes = mb.saturating_mul(1024 * 1024);
        }
        if let Some(cpus) = self.cpus {
            if !(cpus > 0.0 && cpus.is_finite()) {
                return Err(invalid("cpus must be a number above 0".into()));
            }
            config.default_cpus = cpus;
        }
        if let Some(pids) = self.pids_limit {
            if pids < 1 {
                return Err(invalid("pids_limit must be at least 1".into()));
            }
            config.pids_limit = pids;
        }
        if let Some(restarts) = self.max_restarts {
            config.max_restarts = restarts;
        }
        Ok(config)
    }

    fn build(config: PodmanRuntimeConfig) -> Result<Arc<dyn Runtime>> {
        Ok(Arc::new(PodmanRuntime::new(config)))
    }
}

/// Keys of `[build] driver = "podman"` (besides the platform's own `[build]` keys).
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct PodmanBuildOptions {
    /// The libpod API socket; default: `[runtime] socket` when the runtime is Podman,
    /// else `/run/podman/podman.sock`.
    pub socket: Option<PathBuf>,
    /// The image a Dockerfile is generated FROM for apps without one; unset: such apps
    /// need a Dockerfile.
    pub base_image: Option<String>,
    /// The longest a build may take, in seconds (default 900).
    pub timeout_secs: Option<u64>,
}

impl DriverOptions<dyn ImageBuilder> for PodmanBuildOptions {
    type Config = PodmanBuilderConfig;

    fn config(self, context: &DriverContext) -> Result<PodmanBuilderConfig> {
        let mut config = PodmanBuilderConfig {
            base_image: self.base_image,
            registry: context.image_registry.clone(),
            ..PodmanBuilderConfig::default()
        };
        // The builder uses the runtime's engine unless told otherwise: the image it builds
        // is then already where the containers run.
        if let Some(socket) = self.socket.or_else(|| context.runtime_socket_of("podman")) {
            config.socket = socket;
        }
        if let Some(secs) = self.timeout_secs {
            if secs == 0 {
                return Err(Error::Invalid("timeout_secs must be above 0".into()));
            }
            config.timeout = Duration::from_secs(secs);
        }
        Ok(config)
    }

    fn build(config: PodmanBuilderConfig) -> Result<Arc<dyn ImageBuilder>> {
        Ok(Arc::new(PodmanBuilder::new(config)))
    }
}
