//! Plain data: the things users and operators name.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Milliseconds since the Unix epoch, UTC. One representation for every store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        let now = time::OffsetDateTime::now_utc();
        Timestamp((now.unix_timestamp_nanos() / 1_000_000) as i64)
    }

    /// RFC 3339, the form the API shows.
    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1_000_000;
        time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_else(|| self.0.to_string())
    }
}

/// A project name, valid as a DNS label: `[a-z][a-z0-9-]{0,38}[a-z0-9]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ProjectName(String);

impl ProjectName {
    /// The longest name: room for `NAME-vN-TYPE-N` in names engines cap at 63.
    pub const MAX_LEN: usize = 40;
    pub const RULE: &'static str = "a project name is 2 to 40 characters: lowercase letters, digits and hyphens, starting with a letter and not ending with a hyphen";

    pub fn parse(name: &str) -> Result<Self> {
        let bytes = name.as_bytes();
        let ok = (2..=Self::MAX_LEN).contains(&bytes.len())
            && bytes[0].is_ascii_lowercase()
            && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes[bytes.len() - 1] != b'-';
        if ok {
            Ok(ProjectName(name.to_owned()))
        } else {
            Err(Error::Invalid(format!("invalid project name {name:?}: {}", Self::RULE)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ProjectName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ProjectName::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An email is only checked for shape: something@something.something, no spaces.
pub fn validate_email(email: &str) -> Result<()> {
    let valid = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
        });
    if valid { Ok(()) } else { Err(Error::Invalid(format!("invalid email address {email:?}"))) }
}

/// Env var names as a POSIX shell accepts them: `[A-Za-z_][A-Za-z0-9_]*`. `PORT` is the
/// platform's to set.
pub fn validate_env_key(key: &str) -> Result<()> {
    let mut chars = key.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && key.len() <= 256;
    if !valid {
        return Err(Error::Invalid(format!(
            "invalid env var name {key:?}: use letters, digits and underscores, not starting with a digit"
        )));
    }
    if key == "PORT" {
        return Err(Error::Invalid("PORT is set by the platform for the web process".into()));
    }
    Ok(())
}

pub type EnvVars = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub is_admin: bool,
    /// Set by an admin: the account cannot log in and its tokens and SSH keys are refused.
    pub disabled: bool,
    pub created_at: Timestamp,
    /// Whether the address was proved by a mailed link (always, on a server without mail).
    pub email_verified: bool,
}

/// A user's TOTP enrolment (two-factor login): pending until a first code confirms it.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpEnrolment {
    /// The shared secret (RFC 6238), opened from its sealed form.
    pub secret: Vec<u8>,
    pub enabled: bool,
    /// The last time step a code was accepted for: that step and earlier ones are refused.
    pub last_step: Option<i64>,
    /// How many unused recovery codes are left.
    pub recovery_codes_left: i64,
}

impl std::fmt::Debug for TotpEnrolment {
    // Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpEnrolment")
            .field("enabled", &self.enabled)
            .field("last_step", &self.last_step)
            .field("recovery_codes_left", &self.recovery_codes_left)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshKey {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// The key in OpenSSH one-line form, without its comment.
    pub public_key: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub id: i64,
    pub name: ProjectName,
    pub owner_id: i64,
    pub created_at: Timestamp,
    /// Whether pushes to branches other than the deployed one make preview apps.
    pub previews_enabled: bool,
    /// Set when this project is the preview app of another's branch.
    pub preview: Option<crate::previews::PreviewOf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildStatus {
    Building,
    Succeeded,
    Failed,
}

impl BuildStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildStatus::Building => "building",
            BuildStatus::Succeeded => "succeeded",
            BuildStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "building" => Ok(BuildStatus::Building),
            "succeeded" => Ok(BuildStatus::Succeeded),
            "failed" => Ok(BuildStatus::Failed),
            other => Err(Error::internal_msg(format!("unknown build status {other:?} in store"))),
        }
    }
}

/// The artifact made from one commit, with its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    pub id: i64,
    pub project_id: i64,
    pub commit: String,
    pub status: BuildStatus,
    /// What the builder produced: an image reference or a directory, per driver.
    pub artifact: Option<String>,
    /// Process types and their commands (the Procfile, explicit or detected).
    pub processes: BTreeMap<String, String>,
    pub log: String,
    pub created_at: Timestamp,
    pub finished_at: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names() {
        let cases = [
            ("blog", true),
            ("a1", true),
            ("my-app-2", true),
            ("x", false),
            ("", false),
            ("1app", false),
            ("-app", false),
            ("app-", false),
            ("App", false),
            ("my_app", false),
            ("my.app", false),
            ("a-very-long-name-that-is-exactly-40-char", true),
            ("a-very-long-name-that-is-exactly-41-chars", false),
            ("héllo", false),
        ];
        for (name, ok) in cases {
            assert_eq!(ProjectName::parse(name).is_ok(), ok, "{name:?}");
        }
    }

    #[test]
    fn emails() {
        for (email, ok) in [
            ("a@b.io", true),
            ("first.last@example.com", true),
            ("no-at.example.com", false),
            ("@example.com", false),
            ("a@localhost", false),
            ("a b@example.com", false),
            ("a@.com", false),
        ] {
            assert_eq!(validate_email(email).is_ok(), ok, "{email:?}");
        }
    }

    #[test]
    fn env_keys() {
        for (key, ok) in [
            ("DATABASE_URL", true),
            ("_x", true),
            ("a1", true),
            ("1A", false),
            ("", false),
            ("A-B", false),
            ("A B", false),
            ("PORT", false),
        ] {
            assert_eq!(validate_env_key(key).is_ok(), ok, "{key:?}");
        }
    }

    #[test]
    fn timestamps_format_as_rfc3339() {
        assert_eq!(Timestamp(0).to_rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(Timestamp(1_500).to_rfc3339(), "1970-01-01T00:00:01.5Z");
    }
}
