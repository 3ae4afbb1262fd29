//! Passwords (argon2id), API tokens (random, stored as SHA-256 hashes), the
//! authenticated-user extractor, and the failed-login limiter.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use base64::Engine;
use paastech_core::{Error, User};
use rand::RngCore;
use sha2::{Digest, Sha256};

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

/// Hashes on a blocking thread: argon2 is deliberately slow.
pub async fn hash_password(password: String) -> Result<String, Error> {
    tokio::task::spawn_blocking(move || {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let salt = SaltString::encode_b64(&salt).map_err(|e| Error::internal_msg(format!("salt: {e}")))?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| Error::internal_msg(format!("hashing password: {e}")))
    })
    .await
    .map_err(|e| Error::internal("password hashing task", e))?
}

/// A hash of a password nobody has, verified against when the account does not exist, so
/// that a missing account takes as long to refuse as a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::encode_b64(b"paastech-no-user").expect("16 bytes is a valid salt");
        Argon2::default().hash_password(new_token().as_bytes(), &salt).map(|hash| hash.to_string()).unwrap_or_default()
    })
}

pub async fn verify_password(password: String, hash: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let exists = hash.is_some();
        let hash = hash.unwrap_or_else(|| dummy_hash().to_owned());
        let Ok(parsed) = PasswordHash::new(&hash) else {
            return false;
        };
        let ok = Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok();
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
            Ok((_, user)) => Ok(CurrentUser(user)),
            Err(Error::NotFound(_)) => Err(Error::Unauthorized("invalid or expired token".into()).into()),
            Err(other) => Err(other.into()),
        }
    }
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

/// The peer address, when the server was started with connect info (in-process tests are
/// not).
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        Ok(ClientIp(ip))
    }
}

/// Counts failed logins per account and per address in a sliding window; past the limit,
/// logins are refused with 429 until the window moves on.
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

    /// Refuses when either the account or the address has too many recent failures.
    pub fn check(&self, email: &str, ip: IpAddr) -> Result<(), Error> {
        let now = Instant::now();
        let mut failures = self.failures.lock().expect("limiter lock is never poisoned");
        for key in Self::keys(email, ip) {
            if let Some(times) = failures.get_mut(&key) {
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
        Ok(())
    }

    pub fn record_failure(&self, email: &str, ip: IpAddr) {
        let now = Instant::now();
        let mut failures = self.failures.lock().expect("limiter lock is never poisoned");
        // Bound memory: forget stale entries once the map grows.
        if failures.len() > 10_000 {
            failures.retain(|_, times| times.iter().any(|t| now.duration_since(*t) < self.window));
        }
        for key in Self::keys(email, ip) {
            failures.entry(key).or_default().push(now);
        }
    }

    pub fn record_success(&self, email: &str) {
        let mut failures = self.failures.lock().expect("limiter lock is never poisoned");
        failures.remove(&format!("email:{}", email.to_lowercase()));
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
            assert!(limiter.check("a@b.io", ip).is_ok());
            limiter.record_failure("a@b.io", ip);
        }
        assert!(matches!(limiter.check("A@B.io", "10.0.0.2".parse().expect("ip")), Err(Error::RateLimited(_))));
        assert!(matches!(limiter.check("other@b.io", ip), Err(Error::RateLimited(_))));
        assert!(limiter.check("other@b.io", "10.0.0.3".parse().expect("ip")).is_ok());
    }

    #[test]
    fn limiter_forgets_after_the_window() {
        let limiter = LoginLimiter::new(1, Duration::from_millis(20));
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        limiter.record_failure("a@b.io", ip);
        assert!(limiter.check("a@b.io", ip).is_err());
        std::thread::sleep(Duration::from_millis(30));
        assert!(limiter.check("a@b.io", ip).is_ok());
    }
}
