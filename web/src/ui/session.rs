//! Cookie sessions and CSRF tokens.
//!
//! A session is an API token (random, stored only as its SHA-256 hash, with an expiry)
//! named "web session"; the cookie holds the secret, HttpOnly and SameSite=Lax, Secure
//! when the request came over HTTPS. Logging out deletes the token. The CSRF token of a
//! session is a keyed hash of its secret, so it needs no storage and dies with the session.
//! Before there is a session (the sign-up and log-in forms) a random double-submit cookie
//! plays that part.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, extract::Query};
use paastech_core::{AuditAction, Error, Timestamp, User, validate_email};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::view::{AuthPage, FieldErrors, Layout, LoginCodePage};
use super::{UiError, UiResult, render};
use crate::AppState;
use crate::SignupPolicy;
use crate::audit;
use crate::auth::{self, ClientIp};

pub const SESSION_COOKIE: &str = "paastech_session";
pub const PRE_SESSION_COOKIE: &str = "paastech_csrf";
/// Holds the secret of a half-done login (right password, code still to come).
pub const PENDING_LOGIN_COOKIE: &str = "paastech_2fa";
/// How long a half-done login waits for its code.
const PENDING_LOGIN_SECS: u64 = 300;
/// The name sessions have among a user's tokens.
pub const SESSION_TOKEN_NAME: &str = "web session";
const SESSION_LIFETIME_SECS: i64 = 7 * 24 * 3600;

/// The cookies of a request, by name.
pub struct Cookies(HashMap<String, String>);

impl Cookies {
    pub fn from_headers(headers: &HeaderMap) -> Cookies {
        let mut cookies = HashMap::new();
        for value in headers.get_all(header::COOKIE) {
            let Ok(value) = value.to_str() else { continue };
            for pair in value.split(';') {
                if let Some((name, value)) = pair.trim().split_once('=') {
                    cookies.entry(name.trim().to_owned()).or_insert_with(|| value.trim().to_owned());
                }
            }
        }
        Cookies(cookies)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }
}

/// The session-bound CSRF token: SHA-256 over a fixed label and the session secret. The
/// secret never leaves the HttpOnly cookie, so a page on another site cannot compute it.
pub fn csrf_for_session(secret: &str) -> String {
    let digest = Sha256::new().chain_update(b"paastech web csrf v1\0").chain_update(secret.as_bytes()).finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two tokens in time independent of where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the browser reached us over HTTPS (directly, or through a proxy that says so).
/// Trusting the header only ever adds `Secure`, which cannot weaken anything.
fn is_https(headers: &HeaderMap) -> bool {
    headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

fn cookie(name: &str, value: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("paastech_invalid=; Max-Age=0"))
}

/// The signed-in user of a page request. Without a valid session cookie, a page redirects
/// to the log-in page.
pub struct Session {
    pub user: User,
    pub token_id: i64,
    /// The CSRF token every form of the page carries.
    pub csrf: String,
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let cookies = Cookies::from_headers(&parts.headers);
        let Some(secret) = cookies.get(SESSION_COOKIE) else {
            return Err(Redirect::to("/login").into_response());
        };
        match state.store.use_token(&auth::token_hash(secret)).await {
            Ok((token, user)) => {
                let path = parts.uri.path();
                let enrolling = path.starts_with("/account/security") || path == "/logout";
                if state.require_2fa && !enrolling {
                    match crate::two_factor::enabled(state, &user).await {
                        Ok(true) => {}
                        Ok(false) => return Err(Redirect::to("/account/security?done=2fa-required").into_response()),
                        Err(err) => return Err(UiError(err).into_response()),
                    }
                }
                Ok(Session { user, token_id: token.id, csrf: csrf_for_session(secret) })
            }
            Err(Error::NotFound(_)) => {
                // Expired or revoked: forget the cookie too.
                let mut response = Redirect::to("/login").into_response();
                response.headers_mut().append(header::SET_COOKIE, cookie(SESSION_COOKIE, "", 0, false));
                Err(response)
            }
            Err(other) => Err(UiError(other).into_response()),
        }
    }
}

/// The pre-session CSRF token of the request, and whether it still has to be set.
fn pre_session_token(headers: &HeaderMap) -> (String, bool) {
    match Cookies::from_headers(headers).get(PRE_SESSION_COOKIE) {
        Some(token) if token.len() >= 32 && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
            (token.to_owned(), false)
        }
        _ => (auth::new_token(), true),
    }
}

#[derive(Deserialize, Default)]
pub struct AuthForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

#[derive(Deserialize, Default)]
pub struct AuthQuery {
    done: Option<String>,
}

fn auth_page(
    headers: &HeaderMap,
    signup: bool,
    email: &str,
    errors: FieldErrors,
    notice: Option<String>,
    status: StatusCode,
) -> UiResult {
    let title = if signup { "Sign up" } else { "Log in" };
    anonymous_page(headers, title, notice, status, |l| AuthPage { l, signup, email: email.to_owned(), errors })
}

/// A page for whoever is not logged in (its forms carry the pre-session CSRF token, set
/// as a cookie when the browser has none yet).
pub(super) fn anonymous_page<T: askama::Template>(
    headers: &HeaderMap,
    title: &str,
    notice: Option<String>,
    status: StatusCode,
    page: impl FnOnce(Layout) -> T,
) -> UiResult {
    let (token, is_new) = pre_session_token(headers);
    let mut layout = Layout::anonymous(title);
    layout.csrf = token.clone();
    layout.auth_links = true;
    layout.notice = notice;
    let mut response = render(status, &page(layout))?;
    if is_new {
        // A day is plenty to fill in a form; the cookie is replaced by the session.
        response
            .headers_mut()
            .append(header::SET_COOKIE, cookie(PRE_SESSION_COOKIE, &token, 86_400, is_https(headers)));
    }
    Ok(response)
}

async fn signed_in(state: &AppState, headers: &HeaderMap) -> bool {
    match Cookies::from_headers(headers).get(SESSION_COOKIE) {
        Some(secret) => state.store.use_token(&auth::token_hash(secret)).await.is_ok(),
        None => false,
    }
}

pub async fn login_page(State(state): State<AppState>, headers: HeaderMap, Query(query): Query<AuthQuery>) -> UiResult {
    if signed_in(&state, &headers).await {
        return Ok(Redirect::to("/").into_response());
    }
    let notice = match query.done.as_deref() {
        Some("logout") => Some("You are logged out.".to_owned()),
        Some("password-reset") => Some("Your password is set: log in with it.".to_owned()),
        _ => None,
    };
    auth_page(&headers, false, "", FieldErrors::default(), notice, StatusCode::OK)
}

pub async fn signup_page(State(state): State<AppState>, headers: HeaderMap) -> UiResult {
    if signed_in(&state, &headers).await {
        return Ok(Redirect::to("/").into_response());
    }
    auth_page(&headers, true, "", FieldErrors::default(), None, StatusCode::OK)
}

/// Starts a session for `user` and sends the browser to the dashboard.
async fn start_session(state: &AppState, headers: &HeaderMap, user: &User) -> UiResult {
    let secret = auth::new_token();
    let expires = Timestamp(Timestamp::now().0 + SESSION_LIFETIME_SECS * 1000);
    state.store.create_token(user.id, SESSION_TOKEN_NAME, &auth::token_hash(&secret), Some(expires)).await?;
    let secure = is_https(headers);
    let mut response = Redirect::to("/").into_response();
    let set = response.headers_mut();
    set.append(header::SET_COOKIE, cookie(SESSION_COOKIE, &secret, SESSION_LIFETIME_SECS, secure));
    set.append(header::SET_COOKIE, cookie(PRE_SESSION_COOKIE, "", 0, secure));
    Ok(response)
}

pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Form(form): Form<AuthForm>,
) -> UiResult {
    let email = form.email.trim().to_lowercase();
    // Counted as a failure until the password proves right.
    let attempt = match state.limiter.attempt(&email, ip) {
        Ok(attempt) => attempt,
        Err(err) => {
            let errors = FieldErrors::one("form", err.to_string());
            return auth_page(&headers, false, &email, errors, None, StatusCode::TOO_MANY_REQUESTS);
        }
    };
    let found = match state.store.user_by_email(&email).await {
        Ok(found) => Some(found),
        Err(Error::NotFound(_)) => None,
        Err(other) => return Err(other.into()),
    };
    let hash = found.as_ref().map(|(_, hash)| hash.clone());
    // Verified even without an account, so a missing one takes as long as a wrong password.
    let verified = auth::verify_password(form.password, hash).await;
    let user = match found {
        Some((user, _)) if verified => user,
        found => {
            tracing::warn!(%ip, "failed web login");
            let record = match &found {
                Some((user, _)) => audit::by(user, AuditAction::LoginFailed).detail("web: wrong password"),
                None => audit::anonymous(AuditAction::LoginFailed).detail("web: no such account"),
            };
            state.audit(record).await;
            let errors = FieldErrors::one("password", "Wrong email or password.".into());
            return auth_page(&headers, false, &email, errors, None, StatusCode::UNAUTHORIZED);
        }
    };
    if user.disabled {
        attempt.succeeded();
        state.audit(audit::by(&user, AuditAction::LoginFailed).detail("web: account disabled")).await;
        let errors = FieldErrors::one("form", "This account is disabled: ask an admin.".into());
        return auth_page(&headers, false, &email, errors, None, StatusCode::FORBIDDEN);
    }
    if crate::two_factor::enabled(&state, &user).await? {
        // No session yet: a server-side record of the half-done login, bound to the user,
        // that only the right code turns into one. The attempt stays a failure until then.
        let secret = auth::new_token();
        pending_logins().insert(&auth::token_hash(&secret), user.id);
        let mut response = code_page(&headers, FieldErrors::default(), StatusCode::OK)?;
        response.headers_mut().append(
            header::SET_COOKIE,
            cookie(PENDING_LOGIN_COOKIE, &secret, PENDING_LOGIN_SECS as i64, is_https(&headers)),
        );
        return Ok(response);
    }
    attempt.succeeded();
    state.audit(audit::by(&user, AuditAction::Login).detail("web")).await;
    start_session(&state, &headers, &user).await
}

fn code_page(headers: &HeaderMap, errors: FieldErrors, status: StatusCode) -> UiResult {
    anonymous_page(headers, "Two-factor code", None, status, |l| LoginCodePage { l, errors })
}

/// Half-done logins by the hash of their cookie's secret: the user and when it lapses.
/// In memory: a restart only asks for the password again.
pub(crate) struct PendingLogins(Mutex<HashMap<String, (i64, Instant)>>);

pub(crate) fn pending_logins() -> &'static PendingLogins {
    static PENDING: OnceLock<PendingLogins> = OnceLock::new();
    PENDING.get_or_init(|| PendingLogins(Mutex::new(HashMap::new())))
}

impl PendingLogins {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (i64, Instant)>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn insert(&self, hash: &str, user_id: i64) {
        let now = Instant::now();
        let mut pending = self.lock();
        pending.retain(|_, (_, lapses)| *lapses > now);
        pending.insert(hash.to_owned(), (user_id, now + Duration::from_secs(PENDING_LOGIN_SECS)));
    }

    /// The user of a half-done login that has not lapsed.
    fn user(&self, hash: &str) -> Option<i64> {
        let pending = self.lock();
        pending.get(hash).filter(|(_, lapses)| *lapses > Instant::now()).map(|(user, _)| *user)
    }

    /// Ends a half-done login: true for the one caller that got it (single use).
    fn take(&self, hash: &str) -> bool {
        self.lock().remove(hash).is_some()
    }
}

#[derive(Deserialize, Default)]
pub struct CodeForm {
    #[serde(default)]
    code: String,
}

/// The second step of a login with two-factor: the code (or a recovery code) for the
/// half-done login of the cookie.
pub async fn login_code(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Form(form): Form<CodeForm>,
) -> UiResult {
    let secret = Cookies::from_headers(&headers).get(PENDING_LOGIN_COOKIE).map(str::to_owned);
    let hash = secret.as_deref().map(auth::token_hash);
    let user = match hash.as_deref().and_then(|h| pending_logins().user(h)) {
        Some(user_id) => match state.store.user(user_id).await {
            Ok(user) if !user.disabled => Some(user),
            Ok(_) | Err(Error::NotFound(_)) => None,
            Err(other) => return Err(other.into()),
        },
        None => None,
    };
    let (Some(user), Some(hash)) = (user, hash) else {
        let errors = FieldErrors::one("form", "This login has expired: log in again.".into());
        return auth_page(&headers, false, "", errors, None, StatusCode::UNAUTHORIZED);
    };
    let attempt = match state.limiter.attempt(&user.email, ip) {
        Ok(attempt) => attempt,
        Err(err) => {
            return code_page(&headers, FieldErrors::one("form", err.to_string()), StatusCode::TOO_MANY_REQUESTS);
        }
    };
    if !crate::two_factor::check(&state, &user, &form.code).await? {
        tracing::warn!(%ip, user = user.id, "failed web login: wrong two-factor code");
        state.audit(audit::by(&user, AuditAction::LoginFailed).detail("web: wrong two-factor code")).await;
        let errors = FieldErrors::one("code", "Wrong code.".into());
        return code_page(&headers, errors, StatusCode::UNAUTHORIZED);
    }
    if !pending_logins().take(&hash) {
        // Another request finished this login first.
        let errors = FieldErrors::one("form", "This login has expired: log in again.".into());
        return auth_page(&headers, false, "", errors, None, StatusCode::UNAUTHORIZED);
    }
    attempt.succeeded();
    state.audit(audit::by(&user, AuditAction::Login).detail("web, with a two-factor code")).await;
    let mut response = start_session(&state, &headers, &user).await?;
    response.headers_mut().append(header::SET_COOKIE, cookie(PENDING_LOGIN_COOKIE, "", 0, is_https(&headers)));
    Ok(response)
}

pub async fn signup(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<AuthForm>) -> UiResult {
    let email = form.email.trim().to_lowercase();
    let mut errors = FieldErrors::default();
    if let Err(err) = validate_email(&email) {
        errors.add("email", err.to_string());
    }
    if let Err(err) = auth::check_password_rules(&form.password) {
        errors.add("password", err.to_string());
    }
    if state.signup == SignupPolicy::Closed && !state.store.users().await?.is_empty() {
        errors.add("form", "Sign-up is closed on this server: ask an admin to create your account.".into());
    }
    if !errors.is_empty() {
        return auth_page(&headers, true, &email, errors, None, StatusCode::BAD_REQUEST);
    }
    let hash = auth::hash_password(form.password).await?;
    let user = match state.store.create_user(&email, &hash).await {
        Ok(user) => user,
        Err(Error::Conflict(_)) => {
            let errors = FieldErrors::one("email", "An account with this email exists already: log in instead.".into());
            return auth_page(&headers, true, &email, errors, None, StatusCode::CONFLICT);
        }
        Err(other) => return Err(other.into()),
    };
    tracing::info!(user = user.id, admin = user.is_admin, "account created (web)");
    state.audit(audit::by(&user, AuditAction::Signup)).await;
    crate::email::account_created(&state, &user).await?;
    start_session(&state, &headers, &user).await
}

pub async fn logout(State(state): State<AppState>, headers: HeaderMap, session: Session) -> UiResult {
    match state.store.delete_token(session.user.id, session.token_id).await {
        Ok(()) | Err(Error::NotFound(_)) => {}
        Err(other) => return Err(other.into()),
    }
    let mut response = Redirect::to("/login?done=logout").into_response();
    response.headers_mut().append(header::SET_COOKIE, cookie(SESSION_COOKIE, "", 0, is_https(&headers)));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_parsed_from_every_header() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; paastech_session=pt_x"));
        headers.append(header::COOKIE, HeaderValue::from_static("b=; c = 3"));
        let cookies = Cookies::from_headers(&headers);
        assert_eq!(cookies.get(SESSION_COOKIE), Some("pt_x"));
        assert_eq!(cookies.get("c"), Some("3"));
        assert_eq!(cookies.get("b"), None, "empty is absent");
        assert_eq!(cookies.get("d"), None);
    }

    #[test]
    fn csrf_tokens_are_bound_to_the_session() {
        let (a, b) = (csrf_for_session("pt_one"), csrf_for_session("pt_two"));
        assert_eq!(a, csrf_for_session("pt_one"));
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(same_token(&a, &a.clone()));
        assert!(!same_token(&a, &b));
        assert!(!same_token(&a, &a[..63]));
    }

    #[test]
    fn cookies_are_http_only_lax_and_secure_over_https() {
        let plain = cookie(SESSION_COOKIE, "v", 60, false);
        assert_eq!(plain.to_str().ok(), Some("paastech_session=v; Path=/; Max-Age=60; HttpOnly; SameSite=Lax"));
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let secure = cookie(SESSION_COOKIE, "v", 60, is_https(&headers));
        assert!(secure.to_str().is_ok_and(|s| s.ends_with("; Secure")));
    }
}
