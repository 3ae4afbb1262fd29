//! The driver's configuration keys (`[runtime] driver = "process"`, `[build] driver =
//! "process"`), their defaults and their checks: what the binary registers.

use std::sync::Arc;
use std::time::Duration;

use paastech_core::drivers::{ImageBuilder, Runtime};
use paastech_core::registry::{DriverContext, DriverOptions};
use paastech_core::{Error, Result};
use serde::Deserialize;

use crate::{ProcessBuilder, ProcessBuilderConfig, ProcessRuntime, ProcessRuntimeConfig};

/// Keys of `[runtime] driver = "process"`.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct ProcessRuntimeOptions {
    /// Seconds between SIGTERM and SIGKILL when an instance stops.
    pub grace_secs: Option<u64>,
    /// Memory (data segment) limit of each process, in MiB.
    pub memory_mb: Option<u64>,
}

impl DriverOptions<dyn Runtime> for ProcessRuntimeOptions {
    type Config = ProcessRuntimeConfig;

    fn config(self, context: &DriverContext) -> Result<ProcessRuntimeConfig> {
        let mut config = ProcessRuntimeConfig::default();
        if let Some(secs) = self.grace_secs {
            config.grace = Duration::from_secs(secs);
        }
        if let Some(mb) = self.memory_mb {
            // Below a few MiB not even the dynamic loader maps its libraries.
            if mb < 4 {
                return Err(Error::Invalid("memory_mb must be at least 4".into()));
            }
            config.default_memory_bytes = Some(mb.saturating_mul(1024 * 1024));
        }
        config.ledger = Some(context.data_dir.join("run").join("processes"));
        Ok(config)
    }

    fn build(config: ProcessRuntimeConfig) -> Result<Arc<dyn Runtime>> {
        Ok(Arc::new(ProcessRuntime::new(config)))
    }
}

/// Keys of `[build] driver = "process"` (besides the platform's own `[build]` keys).
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct ProcessBuildOptions {
    /// The longest a build may take, in seconds (default 900).
    pub timeout_secs: Option<u64>,
}

impl DriverOptions<dyn ImageBuilder> for ProcessBuildOptions {
    type Config = ProcessBuilderConfig;

    fn config(self, context: &DriverContext) -> Result<ProcessBuilderConfig> {
        if self.timeout_secs == Some(0) {
            return Err(Error::Invalid("timeout_secs must be above 0".into()));
        }
        Ok(ProcessBuilderConfig {
            cache_dir: context.data_dir.join("cache"),
            timeout: Duration::from_secs(self.timeout_secs.unwrap_or(15 * 60)),
            static_server: context.static_server.clone(),
        })
    }

    fn build(config: ProcessBuilderConfig) -> Result<Arc<dyn ImageBuilder>> {
        Ok(Arc::new(ProcessBuilder::new(config)))
    }
}
