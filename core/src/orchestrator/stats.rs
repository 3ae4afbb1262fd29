//! Resource figures of projects' instances: read from the runtime on demand (`paastech
//! ps`, the API, the UI) and every [`STATS_INTERVAL`] for each project with instances, so
//! that its chart covers the last hour even when nobody looks.

use std::sync::Arc;
use std::time::Duration;

use super::{Background, Orchestrator};
use crate::domain::{ProjectName, Timestamp};
use crate::drivers::{Instance, InstanceState};
use crate::error::Result;
use crate::stats::StatsPoint;

/// One instance and what it uses now.
#[derive(Debug, Clone)]
pub struct InstanceStats {
    pub instance: Instance,
    /// Percent of one CPU since the reading before; `None` for a first reading or a
    /// runtime that cannot tell.
    pub cpu_percent: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
}

/// A project's instances with their figures, and its chart of the last hour.
#[derive(Debug, Clone)]
pub struct ProjectStats {
    pub instances: Vec<InstanceStats>,
    pub history: Vec<StatsPoint>,
}

impl Orchestrator {
    /// Reads what the project's instances use now (a reading that also goes into its
    /// chart).
    pub async fn stats(&self, project: &ProjectName) -> Result<ProjectStats> {
        let instances = self.instances(project).await?;
        let ids: Vec<String> = instances.iter().filter(|i| counts(i)).map(|i| i.id.clone()).collect();
        let usage = if ids.is_empty() { Default::default() } else { self.runtime.usage(&ids).await? };
        let (shares, history) = {
            let mut all = self.usage.lock().expect("usage lock");
            let history = all.entry(project.clone()).or_default();
            (history.record(Timestamp::now(), &usage), history.points())
        };
        let instances = instances
            .into_iter()
            .map(|instance| {
                let read = usage.get(&instance.id).copied().unwrap_or_default();
                InstanceStats {
                    cpu_percent: shares.get(&instance.id).copied(),
                    memory_bytes: read.memory_bytes,
                    memory_limit_bytes: read.memory_limit_bytes,
                    instance,
                }
            })
            .collect();
        Ok(ProjectStats { instances, history })
    }

    /// Starts reading every running project's figures once every `every`, for the charts.
    /// The task holds the orchestrator weakly and ends with the returned handle.
    pub fn sample_usage(self: &Arc<Self>, every: Duration) -> Background {
        self.every(every, |this| async move {
            let projects: Vec<ProjectName> = this.running.lock().expect("running lock").keys().cloned().collect();
            for project in projects {
                if let Err(err) = this.stats(&project).await {
                    tracing::debug!(%project, error = %err, "reading usage");
                }
            }
        })
    }
}

/// Whether the runtime is asked for an instance's figures: one that runs (or is on its
/// way); a crashed or stopped one uses nothing.
fn counts(instance: &Instance) -> bool {
    matches!(instance.state, InstanceState::Running | InstanceState::Starting | InstanceState::Restarting)
}
