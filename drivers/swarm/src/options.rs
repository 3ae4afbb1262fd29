//! The driver's configuration keys (`[runtime] driver = "swarm"`, `[build] driver =
//! "swarm"`), their defaults and their checks: what the binary registers. The keys shared
//! with the Docker driver are checked by the Docker driver's own options, so both say the
//! same about the same key.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use paastech_core::drivers::{ImageBuilder, Runtime};
use paastech_core::registry::{DriverContext, DriverOptions};
use paastech_core::{Error, Result};
use paastech_driver_docker::{DockerBuildOptions, DockerRuntimeOptions};
use serde::Deserialize;

use crate::{SwarmRuntime, SwarmRuntimeConfig};

/// Keys of `[runtime] driver = "swarm"`.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct SwarmRuntimeOptions {
    /// A manager's API socket; default `/var/run/docker.sock`.
    pub socket: Option<PathBuf>,
    /// Memory limit of each instance, in MiB (default 512).
    pub memory_mb: Option<u64>,
    /// CPU limit of each instance, in cores (default 1.0).
    pub cpus: Option<f64>,
    /// Most processes per instance (default 512).
    pub pids_limit: Option<i64>,
    /// Restarts of a failing instance before it stays down (default 5).
    pub max_restarts: Option<u32>,
    /// Label value telling this server's services from others' on the same swarm;
    /// default: derived from data_dir.
    pub namespace: Option<String>,
    /// How long an instance has to exit after the polite stop signal, in seconds
    /// (default 10). Fixed when its service is made: changing it later would replace
    /// the task.
    pub stop_grace_secs: Option<u64>,
    /// How long `start` waits for the task to run, in seconds (default 120): scheduling
    /// and pulling the image on a node.
    pub start_timeout_secs: Option<u64>,
}

impl DriverOptions<dyn Runtime> for SwarmRuntimeOptions {
    type Config = SwarmRuntimeConfig;

    fn config(self, context: &DriverContext) -> Result<SwarmRuntimeConfig> {
        let Some(registry) = context.image_registry.clone() else {
            return Err(Error::Invalid(
                "[registry] url must be set for the swarm runtime: every node pulls each build from it".into(),
            ));
        };
        let base = DockerRuntimeOptions {
            socket: self.socket,
            memory_mb: self.memory_mb,
            cpus: self.cpus,
            pids_limit: self.pids_limit,
            max_restarts: self.max_restarts,
            namespace: self.namespace,
        }
        .config(context)?;
        let mut config = SwarmRuntimeConfig { base, registry, ..SwarmRuntimeConfig::default() };
        if let Some(secs) = self.stop_grace_secs {
            config.stop_grace = Duration::from_secs(secs);
        }
        if let Some(secs) = self.start_timeout_secs {
            if secs == 0 {
                return Err(Error::Invalid("start_timeout_secs must be above 0".into()));
            }
            config.start_timeout = Duration::from_secs(secs);
        }
        Ok(config)
    }

    fn build(config: SwarmRuntimeConfig) -> Result<Arc<dyn Runtime>> {
        Ok(Arc::new(SwarmRuntime::new(config)))
    }
}

/// Keys of `[build] driver = "swarm"`: the Docker builder on the manager's engine (or
/// `socket`), pushing every build to the `[registry]` the nodes pull from.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct SwarmBuildOptions {
    /// The engine that builds; default: `[runtime] socket` (the manager's).
    pub socket: Option<PathBuf>,
    /// The image a Dockerfile is generated FROM for apps without one.
    pub base_image: Option<String>,
    /// The longest a build may take, in seconds (default 900).
    pub timeout_secs: Option<u64>,
}

impl DriverOptions<dyn ImageBuilder> for SwarmBuildOptions {
    type Config = <DockerBuildOptions as DriverOptions<dyn ImageBuilder>>::Config;

    fn config(self, context: &DriverContext) -> Result<Self::Config> {
        if context.image_registry.is_none() {
            return Err(Error::Invalid(
                "[registry] url must be set for swarm builds: the nodes pull each build from it".into(),
            ));
        }
        DockerBuildOptions {
            socket: self.socket.or_else(|| context.runtime_socket_of("swarm")),
            base_image: self.base_image,
            timeout_secs: self.timeout_secs,
        }
        .config(context)
    }

    fn build(config: Self::Config) -> Result<Arc<dyn ImageBuilder>> {
        <DockerBuildOptions as DriverOptions<dyn ImageBuilder>>::build(config)
    }
}

#[cfg(test)]
mod tests {
    use paastech_core::registry::ImageRegistry;

    use super::*;

    fn context(registry: bool) -> DriverContext {
        DriverContext {
            data_dir: "/tmp/x".into(),
            runtime_driver: "swarm".into(),
            runtime_socket: Some("/run/manager.sock".into()),
            image_registry: registry.then(|| ImageRegistry {
                address: "10.0.0.1:5000".into(),
                username: None,
                password: None,
            }),
            ..DriverContext::default()
        }
    }

    #[test]
    fn a_swarm_without_a_registry_is_refused() {
        let err = SwarmRuntimeOptions::default().config(&context(false)).expect_err("no registry");
        assert!(err.to_string().contains("[registry] url"), "{err}");
        let err = SwarmBuildOptions::default().config(&context(false)).expect_err("no registry");
        assert!(err.to_string().contains("[registry] url"), "{err}");
    }

    #[test]
    fn keys_are_checked_and_defaulted() {
        let config = SwarmRuntimeOptions { stop_grace_secs: Some(3), memory_mb: Some(64), ..Default::default() }
            .config(&context(true))
            .expect("valid");
        assert_eq!(config.stop_grace, Duration::from_secs(3));
        assert_eq!(config.base.default_memory_bytes, 64 * 1024 * 1024);
        assert_eq!(config.registry.address, "10.0.0.1:5000");
        let err = SwarmRuntimeOptions { cpus: Some(0.0), ..Default::default() }.config(&context(true));
        assert!(err.expect_err("no cpu").to_string().contains("cpus"));
        let err = SwarmRuntimeOptions { start_timeout_secs: Some(0), ..Default::default() }.config(&context(true));
        assert!(err.expect_err("no time").to_string().contains("start_timeout_secs"));
        // The builder is the manager's engine unless told otherwise.
        let build = SwarmBuildOptions::default().config(&context(true)).expect("valid");
        assert_eq!(build.engine.socket, PathBuf::from("/run/manager.sock"));
        assert!(build.registry.is_some());
    }
}
