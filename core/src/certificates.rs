//! Certificates for the names projects answer on: what the orchestrator asks of whoever
//! obtains them (ACME, in `paastech-acme`), and what it can tell users about each name.

use serde::Serialize;

use crate::domain::Timestamp;
use crate::hostname::Hostname;

/// Obtains and renews certificates for the names it is given, and serves them.
///
/// The set of names is only ever what the platform serves (projects' own names and their
/// custom domains), given when a project or a domain is made: never a name a stranger's
/// request mentions, so nobody can make the server order certificates for anything else.
pub trait Certificates: Send + Sync {
    /// Makes `names` the whole set of names `owner` (a project's name) needs certificates
    /// for. Names new to the set are ordered in the background; names that left it stop
    /// being served and their certificates are deleted. Returns at once.
    fn set_names(&self, owner: &str, names: &[Hostname]);

    /// What is known of `name`'s certificate; `None` for a name not in any set.
    fn status(&self, name: &Hostname) -> Option<CertificateStatus>;
}

/// Where a name's certificate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateState {
    /// None yet: being ordered, or waiting for the next attempt after a failure.
    Pending,
    /// Served, and not expired.
    Valid,
    /// The last order failed and no valid certificate is served (`last_error` says why).
    Failed,
    /// The certificate held has expired and is no longer served; a new one is on its way.
    Expired,
    /// Covered by the operator's certificate (`[tls] cert_file`); nothing is ordered.
    Operator,
}

impl CertificateState {
    pub fn as_str(self) -> &'static str {
        match self {
            CertificateState::Pending => "pending",
            CertificateState::Valid => "valid",
            CertificateState::Failed => "failed",
            CertificateState::Expired => "expired",
            CertificateState::Operator => "operator",
        }
    }
}

/// One name's certificate, as users are shown it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateStatus {
    pub state: CertificateState,
    /// When the certificate served expires.
    pub expires_at: Option<Timestamp>,
    /// Why the last order failed, when it did (kept while a valid certificate is served,
    /// until an order succeeds).
    pub last_error: Option<String>,
    /// When the next order (a retry, or the renewal) starts.
    pub next_attempt_at: Option<Timestamp>,
}
