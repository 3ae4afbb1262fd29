//! A deployment (a release): version N of a project = one build + one snapshot of config.
//! Its life is a persisted state machine; an illegal transition is an error, so a restart
//! can resume from whatever was stored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::{EnvVars, Timestamp};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    /// Recorded, nothing done yet.
    Queued,
    /// Its build is running.
    Building,
    /// It has an artifact (new, or reused by a rollback or a config change).
    Built,
    /// Its instances are starting.
    Starting,
    /// Its instances answer their health check; traffic has not moved yet.
    Healthy,
    /// It serves the project.
    Live,
    /// A newer deployment took over.
    Superseded,
    /// Build, start or health check failed; the reason is stored beside it.
    Failed,
}

impl DeploymentStatus {
    pub const ALL: [DeploymentStatus; 8] = [
        DeploymentStatus::Queued,
        DeploymentStatus::Building,
        DeploymentStatus::Built,
        DeploymentStatus::Starting,
        DeploymentStatus::Healthy,
        DeploymentStatus::Live,
        DeploymentStatus::Superseded,
        DeploymentStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Queued => "queued",
            DeploymentStatus::Building => "building",
            DeploymentStatus::Built => "built",
            DeploymentStatus::Starting => "starting",
            DeploymentStatus::Healthy => "healthy",
            DeploymentStatus::Live => "live",
            DeploymentStatus::Superseded => "superseded",
            DeploymentStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| Error::internal_msg(format!("unknown deployment status {s:?} in store")))
    }

    /// Failed and superseded deployments never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, DeploymentStatus::Failed | DeploymentStatus::Superseded)
    }

    /// Whether `self → next` is a step of the machine.
    pub fn can_become(self, next: DeploymentStatus) -> bool {
        use DeploymentStatus::*;
        match (self, next) {
            (Queued, Building | Built) => true,
            (Building, Built) => true,
            (Built, Starting) => true,
            (Starting, Healthy) => true,
            (Healthy, Live) => true,
            (Live, Superseded) => true,
            (from, Failed) => !from.is_terminal() && from != Live,
            _ => false,
        }
    }

    /// The checked step: `Ok(next)` or an error naming both states.
    pub fn next(self, next: DeploymentStatus) -> Result<DeploymentStatus> {
        if self.can_become(next) {
            Ok(next)
        } else {
            Err(Error::Conflict(format!("a deployment cannot go from {} to {}", self.as_str(), next.as_str())))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub id: i64,
    pub project_id: i64,
    /// 1, 2, 3… per project, in creation order.
    pub version: i64,
    pub status: DeploymentStatus,
    pub build_id: Option<i64>,
    pub commit: Option<String>,
    /// The env vars this deployment runs with, frozen when it was made.
    pub config: EnvVars,
    /// Instances per process type, frozen when it was made.
    pub scale: BTreeMap<String, u32>,
    /// Why it was made: "push", "env", "rollback to v3", "redeploy".
    pub cause: String,
    /// Why it failed, if it did.
    pub failure: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// What a caller supplies to record a new deployment; the store assigns id and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeployment {
    pub project_id: i64,
    pub status: DeploymentStatus,
    pub build_id: Option<i64>,
    pub commit: Option<String>,
    pub config: EnvVars,
    pub scale: BTreeMap<String, u32>,
    pub cause: String,
}

#[cfg(test)]
mod tests {
    use super::DeploymentStatus::{self, *};

    #[test]
    fn happy_path_is_allowed() {
        let path = [Queued, Building, Built, Starting, Healthy, Live, Superseded];
        for pair in path.windows(2) {
            assert!(pair[0].next(pair[1]).is_ok(), "{:?} -> {:?}", pair[0], pair[1]);
        }
        // A rollback or config change reuses a build.
        assert!(Queued.next(Built).is_ok());
    }

    #[test]
    fn illegal_transitions_are_errors() {
        for (from, to) in [
            (Queued, Live),
            (Building, Starting),
            (Built, Live),
            (Live, Starting),
            (Live, Failed),
            (Failed, Building),
            (Superseded, Live),
            (Failed, Failed),
        ] {
            assert!(from.next(to).is_err(), "{from:?} -> {to:?} should be refused");
        }
    }

    #[test]
    fn every_live_step_can_fail() {
        for from in [Queued, Building, Built, Starting, Healthy] {
            assert!(from.can_become(Failed), "{from:?}");
        }
    }

    #[test]
    fn status_names_round_trip() {
        for status in DeploymentStatus::ALL {
            assert_eq!(DeploymentStatus::parse(status.as_str()).ok(), Some(status));
        }
        assert!(DeploymentStatus::parse("exploded").is_err());
    }
}
