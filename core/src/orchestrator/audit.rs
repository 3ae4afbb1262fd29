//! The orchestrator's part of the audit log: the deployments a push makes (the only
//! changes that reach it without passing the web layer, which records the others), and
//! dropping records older than the operator's retention.

use std::sync::Arc;
use std::time::Duration;

use super::{Background, Orchestrator};
use crate::audit::{AuditAction, AuditRecord};
use crate::deployment::Deployment;
use crate::domain::{Project, Timestamp};
use crate::drivers::Pusher;
use crate::error::Result;

/// How often records older than the retention are dropped.
pub const AUDIT_PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

impl Orchestrator {
    /// Appends `record` to the audit log. A record that cannot be written is logged, not
    /// returned: the change it describes has already happened, and its caller must learn
    /// that it did.
    pub async fn record(&self, record: AuditRecord) {
        if let Err(err) = self.store.record_audit(&record).await {
            tracing::error!(action = %record.action, error = %err, "cannot write an audit record");
        }
    }

    /// Records what a push of `commit` did to `project`: the version it made live, or why
    /// it failed.
    pub(super) async fn record_push(
        &self,
        pusher: Pusher,
        project: &Project,
        commit: &str,
        deployed: &Result<Deployment>,
    ) {
        let actor = match self.store.user(pusher.user_id).await {
            Ok(user) => Some(user),
            Err(err) => {
                tracing::warn!(user_id = pusher.user_id, error = %err, "reading the pusher for the audit log");
                None
            }
        };
        let short = &commit[..commit.len().min(12)];
        let (action, detail) = match deployed {
            Ok(deployment) => (AuditAction::Deployed, format!("v{} (git push of {short})", deployment.version)),
            Err(err) => (AuditAction::DeployFailed, format!("git push of {short}: {err}")),
        };
        let mut record = AuditRecord::new(action, actor.as_ref(), pusher.address).on(project).detail(detail);
        if actor.is_none() {
            record.actor = Some((pusher.user_id, String::new()));
        }
        self.record(record).await;
    }

    /// Starts dropping audit records older than `retention`, at once and then once every
    /// `every`. The task holds the orchestrator weakly and ends with the returned handle.
    pub fn prune_audit_log(self: &Arc<Self>, retention: Duration, every: Duration) -> Background {
        self.every(every, move |this| async move {
            let keep_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
            let cutoff = Timestamp(Timestamp::now().0.saturating_sub(keep_ms));
            match this.store.prune_audit(cutoff).await {
                Ok(0) => {}
                Ok(dropped) => tracing::info!(dropped, "audit records past their retention dropped"),
                Err(err) => tracing::warn!(error = %err, "dropping old audit records"),
            }
        })
    }
}
