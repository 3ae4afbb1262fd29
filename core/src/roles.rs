//! Who may do what on a project: the roles of its members, pure. Which role each API
//! route, UI page and git verb needs is written beside it (the web crate and
//! [`GitVerb::needed`]); the one place a caller's role is found is
//! `Orchestrator::role_of`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::domain::Timestamp;
use crate::error::{Error, Result};

/// A member's role on a project, ordered: each role may do all that the ones below it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads the project: info, deployments, logs, instances, stats, scheduled jobs,
    /// domains, add-on names; never config values, add-on credentials or webhooks.
    Viewer,
    /// Changes and runs the project: push, deploy, rollback, env, scale, limits, run,
    /// domains, HTTPS, add-ons, webhooks, previews, stop/start/restart.
    Developer,
    /// Everything, including deleting the project, its collaborators and transferring it.
    Owner,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Owner, Role::Developer, Role::Viewer];

    pub fn parse(name: &str) -> Result<Role> {
        match name {
            "owner" => Ok(Role::Owner),
            "developer" => Ok(Role::Developer),
            "viewer" => Ok(Role::Viewer),
            other => Err(Error::Invalid(format!("unknown role {other:?}: use owner, developer or viewer"))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Developer => "developer",
            Role::Viewer => "viewer",
        }
    }

    /// Whether a member with this role may do what needs `needed`.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }

    /// The refusal a member gets who lacks `needed` (a non-member gets "not found" instead,
    /// so a project's existence is not revealed).
    pub fn refusal(self, needed: Role, project: &str) -> Error {
        Error::Forbidden(format!(
            "this needs the {} role on project {project:?}; you are {} {}",
            needed.as_str(),
            article(self),
            self.as_str()
        ))
    }
}

fn article(role: Role) -> &'static str {
    match role {
        Role::Owner => "an",
        Role::Developer | Role::Viewer => "a",
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The two things git may do over SSH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitVerb {
    /// `git-upload-pack`: clone and fetch.
    Fetch,
    /// `git-receive-pack`: push, which deploys.
    Push,
}

impl GitVerb {
    pub fn needed(self) -> Role {
        match self {
            GitVerb::Fetch => Role::Viewer,
            GitVerb::Push => Role::Developer,
        }
    }
}

/// A user's row on a project other than its owner's (who is `Project::owner_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collaborator {
    pub project_id: i64,
    pub user_id: i64,
    pub email: String,
    pub role: Role,
    pub created_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_allows_exactly_what_it_should() {
        use Role::*;
        // (member's role, needed role, allowed)
        let table = [
            (Owner, Owner, true),
            (Owner, Developer, true),
            (Owner, Viewer, true),
            (Developer, Owner, false),
            (Developer, Developer, true),
            (Developer, Viewer, true),
            (Viewer, Owner, false),
            (Viewer, Developer, false),
            (Viewer, Viewer, true),
        ];
        for (role, needed, allowed) in table {
            assert_eq!(role.allows(needed), allowed, "{role} doing what needs {needed}");
        }
    }

    #[test]
    fn git_verbs_need_viewer_to_fetch_and_developer_to_push() {
        assert!(Role::Viewer.allows(GitVerb::Fetch.needed()));
        assert!(!Role::Viewer.allows(GitVerb::Push.needed()));
        assert!(Role::Developer.allows(GitVerb::Push.needed()));
    }

    #[test]
    fn roles_parse_and_print_the_same_names() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()).expect("own name parses"), role);
        }
        for bad in ["", "Owner", "admin", "developer "] {
            let err = Role::parse(bad).expect_err(bad);
            assert!(err.to_string().contains("owner, developer or viewer"), "{err}");
        }
    }

    #[test]
    fn a_refusal_names_the_role_needed() {
        let err = Role::Viewer.refusal(Role::Developer, "blog");
        assert!(matches!(err, Error::Forbidden(_)));
        assert_eq!(err.to_string(), "this needs the developer role on project \"blog\"; you are a viewer");
    }
}
