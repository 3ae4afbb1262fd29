//! Certificates by ACME (RFC 8555, with `instant-acme`) for the names the platform
//! serves: core's [`Certificates`], over the ingress's certificate store.
//!
//! The orchestrator says which names each project needs ([`Certificates::set_names`]);
//! one background task orders what is missing (a few names at once), renews what has a
//! third of its lifetime left, retries failures with backoff, and installs each certificate in the ingress's
//! [`CertStore`] the moment it arrives. Challenges are answered by the ingress itself:
//! HTTP-01 tokens on its plain listener, TLS-ALPN-01 certificates on its TLS listener.
//! The account and the certificates are kept under a directory of their own (see
//! [`files`]), so a restart serves them again at once and orders nothing still valid.
//!
//! The only crate that speaks ACME.

mod files;
mod order;
mod schedule;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use instant_acme::{Account, AccountCredentials, NewAccount};
use paastech_core::{CertificateState, CertificateStatus, Certificates, Hostname, Timestamp};
use paastech_ingress::{CertStore, Certificate};
use tokio::sync::Notify;

use crate::files::Files;
use crate::order::OrderError;
use crate::schedule::{Validity, backoff};

/// Let's Encrypt's production directory: the default CA.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// How the CA is to check that this server answers for a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// A token served over plain HTTP on port 80 (the ingress's plain listener).
    Http01,
    /// A special certificate served over TLS on port 443 (the ingress's HTTPS listener).
    TlsAlpn01,
}

impl FromStr for ChallengeKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "http-01" => Ok(ChallengeKind::Http01),
            "tls-alpn-01" => Ok(ChallengeKind::TlsAlpn01),
            other => Err(format!("unknown challenge {other:?}: use \"http-01\" or \"tls-alpn-01\"")),
        }
    }
}

impl fmt::Display for ChallengeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
        })
    }
}

/// How ACME is set up (`[tls]` in the server's configuration).
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The CA's directory URL.
    pub directory: String,
    /// A contact address given to the CA (expiry notices), if any.
    pub email: Option<String>,
    pub challenge: ChallengeKind,
    /// A PEM root the CA's own HTTPS is checked against instead of the system's (a test
    /// or private CA).
    pub ca_file: Option<PathBuf>,
    /// Where the account and certificates are kept.
    pub state_dir: PathBuf,
    /// Names one label under this domain are covered by the operator's wildcard
    /// certificate: nothing is ordered for them.
    pub wildcard_domain: Option<String>,
    /// The wait after a first failure (doubled after each further one, up to `retry_max`).
    pub retry_first: Duration,
    pub retry_max: Duration,
}

impl AcmeConfig {
    pub fn new(directory: impl Into<String>, state_dir: PathBuf) -> AcmeConfig {
        AcmeConfig {
            directory: directory.into(),
            email: None,
            challenge: ChallengeKind::Http01,
            ca_file: None,
            state_dir,
            wildcard_domain: None,
            retry_first: Duration::from_secs(60),
            retry_max: Duration::from_secs(6 * 3600),
        }
    }
}

/// Why ACME cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("cannot use {dir} for ACME state: {source}")]
    StateDir { dir: PathBuf, source: std::io::Error },
}

/// The longest one order may take before it counts as failed.
const ORDER_TIMEOUT: Duration = Duration::from_secs(180);

/// Orders running at once.
const PARALLEL_ORDERS: usize = 4;

/// Orders, renews and serves certificates; see the crate's documentation.
///
/// Cheap to clone (clones share everything).
#[derive(Clone)]
pub struct AcmeManager(Arc<Inner>);

struct Inner {
    config: AcmeConfig,
    files: Files,
    certs: CertStore,
    state: Mutex<State>,
    /// Wakes the task: names were added, or removed.
    wake: Notify,
    /// Created (or read from its file) at the first order, then kept; the lock makes
    /// orders that start together use one account.
    account: tokio::sync::Mutex<Option<Account>>,
}

#[derive(Default)]
struct State {
    /// Who wants which names (a project's name, or an owner the server itself names).
    wanted: HashMap<String, BTreeSet<Hostname>>,
    /// Every name some owner wants and that is not the operator's wildcard's.
    names: BTreeMap<Hostname, Entry>,
}

#[derive(Default)]
struct Entry {
    /// The certificate held for the name, and whether the ingress serves it.
    held: Option<Held>,
    /// Why the last order failed, until one succeeds.
    last_error: Option<String>,
    failures: u32,
    /// When to try again after a failure; `None`: at renewal time, or now without a
    /// certificate.
    retry_at: Option<SystemTime>,
    /// An order for the name is running.
    ordering: bool,
}

struct Held {
    validity: Validity,
    served: bool,
}

impl AcmeManager {
    /// Sets up the state directory and starts the task that orders certificates into
    /// `certs`. Must be called within a tokio runtime.
    pub fn start(config: AcmeConfig, certs: CertStore) -> Result<AcmeManager, AcmeError> {
        let files = Files::new(config.state_dir.clone());
        files.create().map_err(|source| AcmeError::StateDir { dir: config.state_dir.clone(), source })?;
        let manager = AcmeManager(Arc::new(Inner {
            config,
            files,
            certs,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            account: tokio::sync::Mutex::new(None),
        }));
        tokio::spawn(manager.clone().run());
        Ok(manager)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the operator's wildcard certificate covers `name`.
    fn covered(&self, name: &Hostname) -> bool {
        let Some(domain) = &self.0.config.wildcard_domain else { return false };
        let domain = domain.trim_matches('.');
        name.as_str()
            .strip_suffix(domain)
            .and_then(|label| label.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.'))
    }

    /// A name new to the set: its certificate from disk when there is one, served at once
    /// if it has not expired.
    fn adopt(&self, name: &Hostname) -> Entry {
        let mut entry = Entry::default();
        let stored = match self.0.files.read_cert(name.as_str()) {
            Ok(Some(stored)) => stored,
            Ok(None) => return entry,
            Err(err) => {
                tracing::warn!(domain = %name, error = %err, "cannot read the stored certificate: ordering a new one");
                return entry;
            }
        };
        let checked = files::validity(&stored.chain).and_then(|validity| {
            Certificate::from_pem(&stored.chain, &stored.key).map(|cert| (validity, cert)).map_err(|e| e.to_string())
        });
        match checked {
            Ok((validity, cert)) => {
                let served = !validity.expired(SystemTime::now());
                if served {
                    self.0.certs.insert(name.as_str(), cert);
                    tracing::info!(domain = %name, "serving the stored certificate");
                }
                entry.held = Some(Held { validity, served });
            }
            Err(err) => {
                tracing::warn!(domain = %name, error = %err, "the stored certificate is unusable: ordering a new one");
            }
        }
        entry
    }

    /// The task: starts the orders that are due (a few at once, so one name whose
    /// validation hangs delays no other), then sleeps until the next thing is due, an
    /// order ends, or the set of names changes.
    async fn run(self) {
        let mut orders = tokio::task::JoinSet::new();
        loop {
            let notified = self.0.wake.notified();
            let room = PARALLEL_ORDERS.saturating_sub(orders.len());
            let (due, next) = self.due(SystemTime::now(), room);
            for name in due {
                let this = self.clone();
                orders.spawn(async move { this.attempt(&name).await });
            }
            // Never longer than an hour: a clock step or a suspended machine is seen.
            let wait = next.map_or(Duration::from_secs(3600), |next| {
                next.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO).min(Duration::from_secs(3600))
            });
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep(wait) => {}
                Some(_) = orders.join_next(), if !orders.is_empty() => {}
            }
        }
    }

    /// At most `room` names due for an order now, marked as being ordered, and when the
    /// next one is due (retiring expired certificates on the way).
    fn due(&self, now: SystemTime, room: usize) -> (Vec<Hostname>, Option<SystemTime>) {
        let mut state = self.state();
        let mut due = Vec::new();
        let mut next: Option<SystemTime> = None;
        for (name, entry) in &mut state.names {
            if let Some(held) = &mut entry.held
                && held.served
                && held.validity.expired(now)
            {
                held.served = false;
                self.0.certs.remove(name.as_str());
                tracing::warn!(domain = %name, "certificate expired: no longer served over https");
            }
            // When the name next needs an order: its retry after a failure, else its
            // renewal, else (no certificate, or an expired one) now.
            let at = match (&entry.held, entry.retry_at) {
                (_, Some(retry)) => retry,
                (Some(held), None) if !held.validity.expired(now) => held.validity.renew_at(),
                _ => now,
            };
            if entry.ordering {
                // Its order's end wakes the task.
            } else if at <= now && due.len() < room {
                entry.ordering = true;
                due.push(name.clone());
            } else if at <= now {
                // Due, but as many orders as allowed run: one of them ending wakes the task.
            } else {
                next = Some(next.map_or(at, |n: SystemTime| n.min(at)));
            }
            // A served certificate's expiry wakes the task too, to stop serving it.
            if let Some(held) = &entry.held
                && held.served
            {
                let end = held.validity.not_after;
                next = Some(next.map_or(end, |n| n.min(end)));
            }
        }
        (due, next)
    }

    /// Orders `name`'s certificate (marked as being ordered by `due`), and records what
    /// came of it.
    async fn attempt(&self, name: &Hostname) {
        if !self.state().names.contains_key(name) {
            // Removed since it was found due.
            return;
        }
        tracing::info!(domain = %name, challenge = %self.0.config.challenge, "ordering a certificate");
        let result = match tokio::time::timeout(ORDER_TIMEOUT, self.order(name)).await {
            Ok(result) => result,
            Err(_) => Err(format!("the order did not finish within {} s", ORDER_TIMEOUT.as_secs())),
        };
        let mut state = self.state();
        let Some(entry) = state.names.get_mut(name) else {
            // Removed while it was ordered: nothing of it may stay.
            self.0.certs.remove(name.as_str());
            if let Err(err) = self.0.files.remove_cert(name.as_str()) {
                tracing::warn!(domain = %name, error = %err, "cannot delete a certificate no longer needed");
            }
            return;
        };
        entry.ordering = false;
        match result {
            Ok(validity) => {
                tracing::info!(domain = %name, "certificate issued and served");
                entry.held = Some(Held { validity, served: true });
                entry.last_error = None;
                entry.failures = 0;
                entry.retry_at = None;
            }
            Err(error) => {
                entry.failures = entry.failures.saturating_add(1);
                let wait = backoff(entry.failures, self.0.config.retry_first, self.0.config.retry_max);
                tracing::warn!(domain = %name, error = %error, retry_in_secs = wait.as_secs(), "certificate order failed");
                entry.last_error = Some(error);
                entry.retry_at = Some(SystemTime::now() + wait);
            }
        }
    }

    /// One order, with the account (made or loaded first); the certificate is stored,
    /// then served. A CA that forgot the account gets a new one, once.
    async fn order(&self, name: &Hostname) -> Result<Validity, String> {
        for attempt in 0..2 {
            let account = {
                let mut cached = self.0.account.lock().await;
                match cached.as_ref() {
                    Some(account) => account.clone(),
                    None => cached.insert(self.account().await?).clone(),
                }
            };
            match order::order(&account, name.as_str(), self.0.config.challenge, &self.0.certs).await {
                Ok(issued) => return self.keep(name, &issued.chain, &issued.key),
                Err(OrderError::UnknownAccount(why)) if attempt == 0 => {
                    tracing::warn!(error = %why, "the ACME account is gone: making a new one");
                    let mut cached = self.0.account.lock().await;
                    // Another order may have replaced it already.
                    if cached.as_ref().is_some_and(|c| c.id() == account.id()) {
                        *cached = None;
                        if let Err(err) = self.0.files.remove_account() {
                            return Err(format!("cannot delete the stale ACME account: {err}"));
                        }
                    }
                }
                Err(err) => return Err(err.to_string()),
            }
        }
        Err("the ACME server refused a new account too".into())
    }

    /// Checks, stores and serves a new certificate.
    fn keep(&self, name: &Hostname, chain: &str, key: &str) -> Result<Validity, String> {
        let cert = Certificate::from_pem(chain.as_bytes(), key.as_bytes())
            .map_err(|err| format!("the ACME server issued a certificate this server cannot use: {err}"))?;
        let validity = files::validity(chain.as_bytes())?;
        self.0
            .files
            .write_cert(name.as_str(), chain.as_bytes(), key.as_bytes())
            .map_err(|err| format!("cannot store the certificate in {}: {err}", self.0.files.dir().display()))?;
        self.0.certs.insert(name.as_str(), cert);
        Ok(validity)
    }

    /// The account stored for this directory, or a new one (then stored).
    async fn account(&self) -> Result<Account, String> {
        let config = &self.0.config;
        let unreachable = |err: instant_acme::Error| {
            format!("cannot reach the ACME server at {}: {}", config.directory, order::explain("", err))
        };
        let builder = || match &config.ca_file {
            Some(root) => Account::builder_with_root(root)
                .map_err(|err| format!("cannot use {} as the ACME server's root: {err}", root.display())),
            None => Account::builder().map_err(|err| format!("cannot set up the ACME client: {err}")),
        };
        let stored = self.0.files.read_account().map_err(|err| format!("cannot read the ACME account: {err}"))?;
        if let Some(json) = stored
            && let Ok(saved) = serde_json::from_slice::<SavedAccount>(&json)
            && saved.directory == config.directory
        {
            return builder()?.from_credentials(saved.credentials).await.map_err(unreachable);
        }
        let contact = config.email.as_ref().map(|email| format!("mailto:{email}"));
        let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
        let new = NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false };
        let (account, credentials) =
            builder()?.create(&new, config.directory.clone(), None).await.map_err(unreachable)?;
        let saved = SavedAccount { directory: config.directory.clone(), credentials };
        let json = serde_json::to_vec(&saved).map_err(|err| format!("cannot store the ACME account: {err}"))?;
        self.0.files.write_account(&json).map_err(|err| format!("cannot store the ACME account: {err}"))?;
        tracing::info!(directory = %config.directory, "ACME account created");
        Ok(account)
    }
}

/// `account.json`: the credentials, and the directory they belong to (another directory
/// configured later gets a new account).
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedAccount {
    directory: String,
    credentials: AccountCredentials,
}

impl Certificates for AcmeManager {
    fn set_names(&self, owner: &str, names: &[Hostname]) {
        let names: BTreeSet<Hostname> = names.iter().filter(|name| !self.covered(name)).cloned().collect();
        let mut state = self.state();
        let before = if names.is_empty() {
            state.wanted.remove(owner).unwrap_or_default()
        } else {
            state.wanted.insert(owner.to_owned(), names.clone()).unwrap_or_default()
        };
        let still_wanted = |state: &State, name: &Hostname| state.wanted.values().any(|set| set.contains(name));
        let mut changed = false;
        for gone in before.difference(&names) {
            if still_wanted(&state, gone) {
                continue;
            }
            state.names.remove(gone);
            self.0.certs.remove(gone.as_str());
            if let Err(err) = self.0.files.remove_cert(gone.as_str()) {
                tracing::warn!(domain = %gone, error = %err, "cannot delete a certificate no longer needed");
            }
            changed = true;
        }
        for new in &names {
            if !state.names.contains_key(new) {
                let entry = self.adopt(new);
                state.names.insert(new.clone(), entry);
                changed = true;
            }
        }
        drop(state);
        if changed {
            self.0.wake.notify_one();
        }
    }

    fn status(&self, name: &Hostname) -> Option<CertificateStatus> {
        if self.covered(name) {
            return Some(CertificateStatus {
                state: CertificateState::Operator,
                expires_at: None,
                last_error: None,
                next_attempt_at: None,
            });
        }
        let state = self.state();
        let entry = state.names.get(name)?;
        let now = SystemTime::now();
        let stamp = |t: SystemTime| {
            Timestamp(
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            )
        };
        let (state, expires_at) = match &entry.held {
            Some(held) if held.served && !held.validity.expired(now) => {
                (CertificateState::Valid, Some(stamp(held.validity.not_after)))
            }
            Some(held) => (CertificateState::Expired, Some(stamp(held.validity.not_after))),
            None if entry.last_error.is_some() && !entry.ordering => (CertificateState::Failed, None),
            None => (CertificateState::Pending, None),
        };
        let next = if entry.ordering {
            None
        } else {
            match (&entry.held, entry.retry_at) {
                (_, Some(retry)) => Some(retry),
                (Some(held), None) if state == CertificateState::Valid => Some(held.validity.renew_at()),
                _ => None,
            }
        };
        Some(CertificateStatus {
            state,
            expires_at,
            last_error: entry.last_error.clone(),
            next_attempt_at: next.map(stamp),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_kinds_parse_by_their_acme_names() {
        assert_eq!("http-01".parse::<ChallengeKind>(), Ok(ChallengeKind::Http01));
        assert_eq!("tls-alpn-01".parse::<ChallengeKind>(), Ok(ChallengeKind::TlsAlpn01));
        let err = "dns-01".parse::<ChallengeKind>().expect_err("not supported");
        assert!(err.contains("dns-01") && err.contains("http-01"), "{err}");
        assert_eq!(ChallengeKind::TlsAlpn01.to_string(), "tls-alpn-01");
    }
}
