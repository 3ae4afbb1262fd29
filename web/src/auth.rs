//! Passwords (argon2id), API tokens (random, stored as SHA-256 hashes), the
//! authenticated-user extractor, and the failed-login limiter.
//!
//! Each argon2 computation takes about 19 MiB and a core for a while, so at most
//! [`argon2_permits`] run at once; the others wait their turn.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use base64::Engine;
use paastech_core::{Error, User};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::AppState;
use crate::error::ApiError;

pub const MIN_PASSWORD_LEN: usize = 8;
pub const MAX_PASSWORD_LEN: usize = 1024;

pub fn check_password_rules(password: &str) -> Result<(), Error> {
    let len = password.chars().count();
    if len < MIN_PASSWORD_LEN {
        return Err(Error::Invalid(format!("password too short: use at least {MIN_PASSWORD_LEN} characters")));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(Error::Invalid(format!("password too long: at most {MAX_PASSWORD_LEN} bytes")));
    }
    Ok(())
}

/// How many argon2 hashes or verifications run at once: one per core (at most 8), as
/// each keeps a core busy; more would only make each one slower and take more memory.
pub fn argon2_permits() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get).clamp(1, 8)
}

fn argon2_gate() -> &'static Arc<Semaphore> {
    static GATE: OnceLock<Arc<Semaphore>> = OnceLock::new();
    GATE.get_or_init(|| Arc::new(Semaphore::new(argon2_permits())))
}

/// Runs argon2 `work` on a blocking thread once one of the [`argon2_permits`] is free.
/// The permit goes with the work, so a request that gives up waiting for the answer
/// still holds its place until the computation ends.
async fn run_argon2<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    let permit = argon2_gate()
        .clone()
        .acquire_owned()
        .await
        .map_err(|err| Error::internal("waiting for a password slot", err))?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
    .map_err(|err| Error::internal("password hashing task", err))
}

/// Hashes on a blocking thread: argon2 is deliberately slow.
pub async fn hash_password(password: String) -> Result<String, Error> {
    run_argon2(move || {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        Argon2::default()
            .hash_password_with_salt(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| Error::internal_msg(format!("hashing password: {e}")))
    })
    .await?
}

/// A hash of a password nobody has, verified against when the account does not exist, so
/// that a missing account takes as long to refuse as a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        Argon2::default()
            .hash_password_with_salt(new_token().as_bytes(), b"paastech-no-user")
            .map(|hash| hash.to_string())
            .unwrap_or_default()
    })
}

pub async fn verify_password(password: String, hash: Option<String>) -> bool {
    run_argon2(move || {
        let exists = hash.is_some();
        let hash = hash.unwrap_or_else(|| dummy_hash().to_owned());
        let ok = Argon2::default().verify_password(password.as_bytes(), hash.as_str()).is_ok();
        ok && exists
    })
    .await
    .unwrap_or(false)
}

/// A new secret token: `pt_` + 32 random bytes, base64url.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("pt_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Tokens are high-entropy, so a fast hash is enough; only the hash is stored.
pub fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The user a request's bearer token belongs to.
pub struct CurrentUser(pub User);

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| Error::Unauthorized("missing Authorization: Bearer <token> header".into()))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| Error::Unauthorized("the Authorization header must be \"Bearer <token>\"".into()))?;
        match state.store.use_token(&token_hash(token)).await {
            Ok((_, user)) => {
                if state.require_2fa
                    && !enrolment_route(parts.uri.path())
                    && !crate::two_factor::enabled(state, &user).await?
                {
                    return Err(Error::Forbidden(
                        "this server requires two-factor login: turn it on first (POST /api/v1/me/2fa, or Account → Security in the web UI)"
                            .into(),
                    )
                    .into());
                }
                Ok(CurrentUser(user))
            }
            Err(Error::NotFound(_)) => Err(Error::Unauthorized("invalid or expired token".into()).into()),
            Err(other) => Err(other.into()),
        }
    }
}

/// The API routes a user without two-factor login may still use when the server requires
/// it: who they are, and enrolling.
fn enrolment_route(path: &str) -> bool {
    let path = path.strip_prefix("/api/v1").unwrap_or(path);
    matches!(path, "/me" | "/me/2fa" | "/me/2fa/confirm")
}

/// The user, if the request carries a valid token; no token is not an error.
pub struct MaybeUser(pub Option<User>);

impl FromRequestParts<AppState> for MaybeUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if parts.headers.contains_key(axum::http::header::AUTHORIZATION) {
            CurrentUser::from_request_parts(parts, state).await.map(|CurrentUser(user)| MaybeUser(Some(user)))
        } else {
            Ok(MaybeUser(None))
        }
    }
}

/// Marks a request that came through the ingress's listener for the API (see
/// [`crate::serve_behind_ingress`]): its `X-Forwarded-For` was written by the ingress.
#[derive(Clone, Copy, Debug)]
pub struct BehindIngress;

/// The client's address: the peer's, or behind the ingress the address the ingress saw
/// (the last `X-Forwarded-For` entry); unspecified when the server was started without
/// connect info (in-process tests).
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip());
        let forwarded = || {
            // The ingress appends the address it saw to whatever the client sent: the
            // last entry of the last field is the only one it vouches for.
            let last = parts.headers.get_all("x-forwarded-for").iter().next_back()?;
            last.to_str().ok()?.rsplit(',').next()?.trim().parse::<IpAddr>().ok()
        };
        let behind_ingress = parts.extensions.get::<BehindIngress>().is_some();
        let ip = if behind_ingress { forwarded().or(peer) } else { peer };
        Ok(ClientIp(ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))))
    }
}

/// Counts failed logins per account and per address in a sliding window; past the limit,
/// logins are refused with 429 until the window moves on.
///
/// An attempt is counted, as a failure, *before* its password is checked
/// ([`LoginLimiter::attempt`]), in the same step as the check against the limit, and given
/// back when it succeeds: parallel guesses cannot all pass the check before any of them
/// is counted.
pub struct LoginLimiter {
    max_failures: usize,
    window: Duration,
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl LoginLimiter {
    pub fn new(max_failures: usize, window: Duration) -> Self {
        LoginLimiter { max_failures, window, failures: Mutex::new(HashMap::new()) }
    }

    fn keys(email: &str, ip: IpAddr) -> [String; 2] {
        [format!("email:{}", email.to_lowercase()), format!("ip:{ip}")]
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Instant>>> {
        // Every change is one call under the lock: the map is consistent even after a panic.
        self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a login attempt for the account and the address, or refuses it when either
    /// has too many recent failures. The attempt stays counted as a failure unless
    /// [`Attempt::succeeded`] is called.
    pub fn attempt(&self, email: &str, ip: IpAddr) -> Result<Attempt<'_>, Error> {
        let now = Instant::now();
        let keys = Self::keys(email, ip);
        let mut failures = self.lock();
        // Bound memory: forget stale entries once the map grows.
        if failures.len() > 10_000 {
            failures.retain(|_, times| times.iter().any(|t| now.duration_since(*t) < self.window));
        }
        for key in &keys {
            if let Some(times) = failures.get_mut(key) {
                times.retain(|t| now.duration_since(*t) < self.window);
                if times.len() >= self.max_failures {
                    let retry = times
                        .first()
                        .map(|first| self.window.saturating_sub(now.duration_since(*first)).as_secs() + 1)
                        .unwrap_or(1);
                    return Err(Error::RateLimited(format!("too many failed logins; try again in {retry} s")));
                }
            }
        }
        for key in &keys {
            failures.entry(key.clone()).or_default().push(now);
        }
        Ok(Attempt { limiter: self, keys, at: now })
    }
}

/// A login attempt counted by [`LoginLimiter::attempt`]; a failure unless it succeeds.
#[must_use = "an attempt is a failure unless `succeeded` is called"]
pub struct Attempt<'a> {
    limiter: &'a LoginLimiter,
    keys: [String; 2],
    at: Instant,
}

impl Attempt<'_> {
    /// The password was right: the account's failures are forgotten, and this attempt no
    /// longer counts against the address.
    pub fn succeeded(self) {
        let [account, address] = &self.keys;
        let mut failures = self.limiter.lock();
        failures.remove(account);
        if let Some(times) = failures.get_mut(address) {
            if let Some(i) = times.iter().rposition(|t| *t == self.at) {
                times.remove(i);
            }
            if times.is_empty() {
                failures.remove(address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn password_round_trip() {
        let hash = hash_password("correct horse".into()).await.expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse".into(), Some(hash.clone())).await);
        assert!(!verify_password("wrong horse".into(), Some(hash)).await);
        assert!(!verify_password("anything".into(), None).await);
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with("pt_") && a.len() > 40);
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a), token_hash(&b));
        assert_eq!(token_hash(&a).len(), 64);
    }

    #[test]
    fn limiter_blocks_after_max_failures_per_account_and_address() {
        let limiter = LoginLimiter::new(3, Duration::from_secs(60));
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        for _ in 0..3 {
            drop(limiter.attempt("a@b.io", ip).expect("under the limit"));
        }
        assert!(matches!(limiter.attempt("A@B.io", "10.0.0.2".parse().expect("ip")), Err(Error::RateLimited(_))));
        assert!(matches!(limiter.attempt("other@b.io", ip), Err(Error::RateLimited(_))));
        assert!(limiter.attempt("other@b.io", "10.0.0.3".parse().expect("ip")).is_ok());
    }

    #[test]
    fn a_successful_attempt_gives_its_place_back() {
        let limiter = LoginLimiter::new(2, Duration::from_secs(60));
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        // Many good logins from one address never add up to a limit.
        for _ in 0..10 {
            limiter.attempt("a@b.io", ip).expect("under the limit").succeeded();
        }
        // A success forgets the account's failures, but not the address's other ones.
        drop(limiter.attempt("a@b.io", ip).expect("first failure"));
        drop(limiter.attempt("c@d.io", ip).expect("second failure"));
        assert!(limiter.attempt("x@y.io", ip).is_err(), "the address is at its limit");
        assert!(limiter.attempt("a@b.io", "10.0.0.9".parse().expect("ip")).is_ok());
    }

    /// Parallel guesses: each is counted before its password is checked, so no more than
    /// the limit ever reach the check, however many arrive at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn parallel_guesses_are_counted_before_they_are_verified() {
        let limiter = Arc::new(LoginLimiter::new(5, Duration::from_secs(60)));
        let hash = hash_password("the right one".into()).await.expect("hash");
        let verified = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let barrier = Arc::new(tokio::sync::Barrier::new(50));
        let guesses: Vec<_> = (0..50)
            .map(|i| {
                let (limiter, hash, verified, barrier) =
                    (limiter.clone(), hash.clone(), verified.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let ip: IpAddr = "10.0.0.1".parse().expect("ip");
                    // What the login handlers do.
                    let attempt = limiter.attempt("a@b.io", ip)?;
                    verified.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if verify_password(format!("guess {i}"), Some(hash)).await {
                        attempt.succeeded();
                    }
                    Ok::<(), Error>(())
                })
            })
            .collect();
        let mut limited = 0;
        for guess in guesses {
            if let Err(Error::RateLimited(_)) = guess.await.expect("guess task") {
                limited += 1;
            }
        }
        assert_eq!(verified.load(std::sync::atomic::Ordering::SeqCst), 5);
        assert_eq!(limited, 45);
    }

    #[test]
    fn limiter_forgets_after_the_window() {
        let limiter = LoginLimiter::new(1, Duration::from_millis(20));
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        drop(limiter.attempt("a@b.io", ip).expect("first"));
        assert!(limiter.attempt("a@b.io", ip).is_err());
        std::thread::sleep(Duration::from_millis(30));
        assert!(limiter.attempt("a@b.io", ip).is_ok());
    }

    /// However many hashes and verifications are asked for at once, at most
    /// `argon2_permits()` run at the same time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn argon2_runs_at_most_its_permits_at_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..24)
            .map(|_| {
                let (running, peak) = (running.clone(), peak.clone());
                tokio::spawn(run_argon2(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    // Stands for the hash: long enough for the others to pile up.
                    std::thread::sleep(Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                }))
            })
            .collect();
        for task in tasks {
            task.await.expect("task").expect("argon2 slot");
        }
        let peak = peak.load(Ordering::SeqCst);
        assert!(peak <= argon2_permits(), "{peak} ran at once, more than {}", argon2_permits());
        assert!(peak >= 1);
    }
}
