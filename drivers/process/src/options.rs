//! The driver's configuration keys (`[runtime] driver = "process"`, `[build] driver =
//! "process"`), their defaults and their checks: what the binary registers.

use std::sync::Arc;
use std::time::Duration;

use paastech_core::drivers::{ImageBuilder, Runtime};
use paastech_core::registry::{DriverContext, DriverOptions};
use paastech_core::{Error, Result};
use serde::Deserialize;

use crate::users::{AppUsers, DEFAULT_FIRST_UID, DEFAULT_UID_COUNT};
use crate::{ProcessBuilder, ProcessBuilderConfig, ProcessRuntime, ProcessRuntimeConfig};

/// Keys of `[runtime] driver = "process"`.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct ProcessRuntimeOptions {
    /// Seconds between SIGTERM and SIGKILL when an instance stops.
    pub grace_secs: Option<u64>,
    /// Memory (data segment) limit of each process, in MiB.
    pub memory_mb: Option<u64>,
    /// `[first, last]`: the uids (and gids, the same numbers) given to projects, one each,
    /// when the server can switch users. Default: 2000000000 to 2000099999.
    pub app_uids: Option<[u32; 2]>,
}

/// The range `[first, last]` as (first, count), checked: no uid of a person or of the
/// system (below 1000), not `nobody` (65534), not -1 (4294967295, "no change" to setresuid).
fn uid_range(app_uids: Option<[u32; 2]>) -> Result<(u32, u32)> {
    let Some([first, last]) = app_uids else {
        return Ok((DEFAULT_FIRST_UID, DEFAULT_UID_COUNT));
    };
    if first < 1000 {
        return Err(Error::Invalid(format!("app_uids must start at 1000 or above (system accounts), not {first}")));
    }
    if last < first {
        return Err(Error::Invalid(format!("app_uids is [first, last]: {last} is below {first}")));
    }
    if last == u32::MAX {
        return Err(Error::Invalid("app_uids must end below 4294967295 (it means no uid)".into()));
    }
    if (first..=last).contains(&65534) {
        return Err(Error::Invalid("app_uids must not hold 65534 (nobody)".into()));
    }
    Ok((first, last - first + 1))
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
        config.users = Some(AppUsers::shared(&context.data_dir, Some(uid_range(self.app_uids)?)));
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
            // The same uids as the runtime's (whose options set the range).
            users: Some(AppUsers::shared(&context.data_dir, None)),
        })
    }

    fn build(config: ProcessBuilderConfig) -> Result<Arc<dyn ImageBuilder>> {
        Ok(Arc::new(ProcessBuilder::new(config)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_ranges_are_checked() {
        assert_eq!(uid_range(None).expect("default"), (DEFAULT_FIRST_UID, DEFAULT_UID_COUNT));
        assert_eq!(uid_range(Some([70000, 70099])).expect("ok"), (70000, 100));
        assert_eq!(uid_range(Some([5000, 5000])).expect("one uid"), (5000, 1));
        for (range, needle) in [
            ([0, 100], "1000 or above"),
            ([999, 2000], "1000 or above"),
            ([3000, 2000], "below 3000"),
            ([60000, 70000], "65534"),
            ([100000, u32::MAX], "4294967295"),
        ] {
            let err = uid_range(Some(range)).expect_err("refused").to_string();
            assert!(err.contains(needle), "{range:?}: {err}");
        }
    }
}
