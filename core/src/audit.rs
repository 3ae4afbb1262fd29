//! The audit log: every change to accounts and projects, with who made it, when and from
//! which address. Pure types here; the store keeps the records (`Store::record_audit`,
//! `audit_events`, `prune_audit`), the web layer and the push path write them, and
//! `orchestrator/audit.rs` drops those older than the operator's retention.
//!
//! A record names its actor and project twice, by id (what visibility is decided on) and
//! by name as it was then (what is shown): the record outlives a deleted user or project,
//! and a later project of the same name does not inherit the old one's log. Config values
//! never reach it: an env change records the names of the variables only.

use std::fmt;
use std::net::IpAddr;

use crate::domain::{Project, Timestamp, User};
use crate::store::EnvChanges;

/// What happened. The names (`as_str`) are what the API, CLI and UI show, and what the
/// store keeps: they never change once released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    Signup,
    Login,
    LoginFailed,
    PasswordReset,
    TwoFactorEnabled,
    TwoFactorDisabled,
    TokenCreated,
    TokenDeleted,
    KeyAdded,
    KeyDeleted,
    ProjectCreated,
    ProjectDeleted,
    ProjectTransferred,
    /// A push that went live (or a redeploy of the live version).
    Deployed,
    /// A push whose build, hooks, release step or health check failed.
    DeployFailed,
    Rollback,
    EnvChanged,
    Scaled,
    LimitsChanged,
    Stopped,
    Started,
    Restarted,
    CommandRun,
    DomainAdded,
    DomainRemoved,
    HttpsChanged,
    AddonCreated,
    AddonDestroyed,
    AddonRestored,
    WebhookAdded,
    WebhookRemoved,
    PreviewsChanged,
    CollaboratorAdded,
    CollaboratorRemoved,
    UserDisabled,
    UserEnabled,
    UserDeleted,
    TwoFactorReset,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Signup => "signup",
            AuditAction::Login => "login",
            AuditAction::LoginFailed => "login.failed",
            AuditAction::PasswordReset => "password.reset",
            AuditAction::TwoFactorEnabled => "2fa.enable",
            AuditAction::TwoFactorDisabled => "2fa.disable",
            AuditAction::TokenCreated => "token.create",
            AuditAction::TokenDeleted => "token.delete",
            AuditAction::KeyAdded => "key.add",
            AuditAction::KeyDeleted => "key.delete",
            AuditAction::ProjectCreated => "project.create",
            AuditAction::ProjectDeleted => "project.delete",
            AuditAction::ProjectTransferred => "project.transfer",
            AuditAction::Deployed => "deploy",
            AuditAction::DeployFailed => "deploy.failed",
            AuditAction::Rollback => "rollback",
            AuditAction::EnvChanged => "env.change",
            AuditAction::Scaled => "scale",
            AuditAction::LimitsChanged => "limits",
            AuditAction::Stopped => "stop",
            AuditAction::Started => "start",
            AuditAction::Restarted => "restart",
            AuditAction::CommandRun => "run",
            AuditAction::DomainAdded => "domain.add",
            AuditAction::DomainRemoved => "domain.remove",
            AuditAction::HttpsChanged => "https",
            AuditAction::AddonCreated => "addon.create",
            AuditAction::AddonDestroyed => "addon.destroy",
            AuditAction::AddonRestored => "addon.restore",
            AuditAction::WebhookAdded => "webhook.add",
            AuditAction::WebhookRemoved => "webhook.remove",
            AuditAction::PreviewsChanged => "previews",
            AuditAction::CollaboratorAdded => "collaborator.add",
            AuditAction::CollaboratorRemoved => "collaborator.remove",
            AuditAction::UserDisabled => "user.disable",
            AuditAction::UserEnabled => "user.enable",
            AuditAction::UserDeleted => "user.delete",
            AuditAction::TwoFactorReset => "user.2fa.reset",
        }
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The most a record's detail may weigh; longer ones are cut (at a character boundary).
pub const MAX_DETAIL_BYTES: usize = 2048;

/// One change, as it is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub at: Timestamp,
    /// Who made the change (id, email then); `None` for a login attempt on no account.
    pub actor: Option<(i64, String)>,
    /// Where the request came from (the API's client address, the SSH peer of a push).
    pub address: Option<IpAddr>,
    /// The project changed (id, name then), if any.
    pub project: Option<(i64, String)>,
    pub action: AuditAction,
    /// What changed, in words: the names of env vars, `web=2`, the version deployed, the
    /// collaborator and role, … Never a secret.
    pub detail: String,
}

impl AuditRecord {
    /// A record of `action` by `actor` now, on no project, with no detail yet.
    pub fn new(action: AuditAction, actor: Option<&User>, address: Option<IpAddr>) -> AuditRecord {
        AuditRecord {
            at: Timestamp::now(),
            actor: actor.map(|user| (user.id, user.email.clone())),
            address,
            project: None,
            action,
            detail: String::new(),
        }
    }

    pub fn on(mut self, project: &Project) -> AuditRecord {
        self.project = Some((project.id, project.name.to_string()));
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> AuditRecord {
        let mut detail = detail.into();
        if detail.len() > MAX_DETAIL_BYTES {
            let mut end = MAX_DETAIL_BYTES;
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail.truncate(end);
        }
        self.detail = detail;
        self
    }
}

/// One change, as the log shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Increases with every record: the log's order, and the cursor of its pages.
    pub id: i64,
    pub at: Timestamp,
    pub actor_id: Option<i64>,
    /// The actor's email when the change was made.
    pub actor: Option<String>,
    pub address: Option<String>,
    pub project_id: Option<i64>,
    /// The project's name when the change was made.
    pub project: Option<String>,
    /// An [`AuditAction`] name.
    pub action: String,
    pub detail: String,
}

/// Which records a reader may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditScope {
    /// Every record: an admin's view.
    All,
    /// The records of one project (by id): its members' view of it.
    Project(i64),
    /// A user's own view: what they did themselves (their account's records included) and
    /// what anyone did to the projects they are members of now (`project_ids`: those they
    /// own and those they collaborate on, with their preview apps).
    Member { user_id: i64, project_ids: Vec<i64> },
}

/// How many records a page holds unless the reader asks otherwise, and at most.
pub const DEFAULT_PAGE: i64 = 100;
pub const MAX_PAGE: i64 = 1000;

/// How long records are kept unless the operator says otherwise (`[audit] retention_days`).
pub const DEFAULT_RETENTION_DAYS: u32 = 365;

/// An env change's detail: the names it sets and unsets (`set A, B; unset C`), never a
/// value.
pub fn env_change_detail(changes: &EnvChanges) -> String {
    let names = |set: bool| -> Vec<&str> {
        changes.iter().filter(|(_, value)| value.is_some() == set).map(|(key, _)| key.as_str()).collect()
    };
    let mut parts = Vec::new();
    for (verb, keys) in [("set", names(true)), ("unset", names(false))] {
        if !keys.is_empty() {
            parts.push(format!("{verb} {}", keys.join(", ")));
        }
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_change_detail_names_keys_only() {
        let change = |pairs: &[(&str, Option<&str>)]| -> EnvChanges {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned))).collect()
        };
        let detail = env_change_detail(&change(&[("B", Some("secret")), ("A", Some("x")), ("C", None)]));
        assert_eq!(detail, "set A, B; unset C");
        assert!(!detail.contains("secret"));
        assert_eq!(env_change_detail(&change(&[("C", None)])), "unset C");
        assert_eq!(env_change_detail(&change(&[("A", Some(""))])), "set A");
    }

    #[test]
    fn a_long_detail_is_cut_at_a_character_boundary() {
        let record = AuditRecord::new(AuditAction::EnvChanged, None, None).detail("é".repeat(MAX_DETAIL_BYTES));
        assert!(record.detail.len() <= MAX_DETAIL_BYTES);
        assert!(record.detail.len() >= MAX_DETAIL_BYTES - 1);
        assert!(record.detail.chars().all(|c| c == 'é'));
    }
}
