//! Add-ons: a backing service (a PostgreSQL database, a Redis namespace, …) made for one
//! project by a driver that knows the service. Core knows no service: an add-on kind
//! provisions something and answers its credentials as config vars (`DATABASE_URL`), which
//! the orchestrator sets as an env change does; it streams backups out and restores in
//! through plain byte streams. Each kind is one crate, registered by the binary under
//! `[addons.KIND]` like the runtime drivers.

use std::fmt;

use async_trait::async_trait;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::domain::{EnvVars, ProjectName, Timestamp};
use crate::error::{Error, Result};

/// An add-on's name inside its project: `[a-z][a-z0-9-]{0,17}[a-z0-9]` (2 to 19
/// characters). Short, so that a kind can derive its own identifiers from the project's
/// name and this one and stay under its server's limits (PostgreSQL's 63 bytes).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct AddonName(String);

impl AddonName {
    pub const MAX_LEN: usize = 19;
    pub const RULE: &'static str = "an add-on name is 2 to 19 characters: lowercase letters, digits and hyphens, starting with a letter and not ending with a hyphen";

    pub fn parse(name: &str) -> Result<Self> {
        let bytes = name.as_bytes();
        let ok = (2..=Self::MAX_LEN).contains(&bytes.len())
            && bytes[0].is_ascii_lowercase()
            && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes[bytes.len() - 1] != b'-';
        if ok {
            Ok(AddonName(name.to_owned()))
        } else {
            Err(Error::Invalid(format!("invalid add-on name {name:?}: {}", Self::RULE)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AddonName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One add-on as the store keeps it. Its credentials are not here: they are config vars
/// of the project (sealed at rest like every other value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Addon {
    pub id: i64,
    pub project_id: i64,
    pub name: AddonName,
    /// The `[addons.KIND]` that made it.
    pub kind: String,
    pub created_at: Timestamp,
}

/// Something an add-on's backup is written to: a response body, a file.
pub type BackupWriter<'a> = &'a mut (dyn AsyncWrite + Send + Unpin);
/// Something a backup is read back from: a request body, a file.
pub type BackupReader<'a> = &'a mut (dyn AsyncRead + Send + Unpin);

/// A kind of add-on (PostgreSQL, Redis, …), implemented by one crate. Every method is
/// all-or-nothing on the service's side: a `provision` that fails leaves nothing behind,
/// and `deprovision` of something already gone succeeds, so the orchestrator can undo a
/// half-made create by calling it.
#[async_trait]
pub trait AddonKind: Send + Sync {
    /// The kind's name as configured: `postgres` for `[addons.postgres]`.
    fn kind(&self) -> &'static str;

    /// The config vars `provision` answers (`["DATABASE_URL"]`): what attaching sets and
    /// detaching unsets, and what an add-on's backup reads its credentials from.
    fn config_keys(&self) -> &'static [&'static str];

    /// Makes the add-on `name` of `project` and answers the config vars that give an app
    /// access to it (`DATABASE_URL`, …). A name that is already provisioned is
    /// [`Error::Conflict`]; a server that is down is [`Error::Unavailable`].
    async fn provision(&self, project: &ProjectName, name: &AddonName) -> Result<EnvVars>;

    /// Removes the add-on and all its data. Succeeds when there is nothing to remove.
    async fn deprovision(&self, project: &ProjectName, name: &AddonName) -> Result<()>;

    /// Streams a backup of the add-on's data to `out`, never holding it whole in memory.
    /// `credentials` are the vars `provision` answered: a kind uses the add-on's own
    /// access where it can, rather than its administrator's.
    async fn backup(
        &self,
        project: &ProjectName,
        name: &AddonName,
        credentials: &EnvVars,
        out: BackupWriter<'_>,
    ) -> Result<()>;

    /// Replaces the add-on's data with a backup `backup` wrote, read from `input`. Input
    /// that is not such a backup is [`Error::Invalid`].
    async fn restore(
        &self,
        project: &ProjectName,
        name: &AddonName,
        credentials: &EnvVars,
        input: BackupReader<'_>,
    ) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addon_names() {
        for good in ["postgres", "db", "main-db", "a1", "abcdefghijklmnopqrs"] {
            assert!(AddonName::parse(good).is_ok(), "{good} should be valid");
        }
        for bad in ["", "a", "1db", "Db", "db-", "db_1", "db.x", "abcdefghijklmnopqrst", "d b", "é1"] {
            let err = AddonName::parse(bad).expect_err(bad);
            assert!(err.to_string().contains("invalid add-on name"), "{bad}: {err}");
        }
    }
}
