//! The web UI: server-rendered pages (askama templates, escaped by default), one CSS file
//! and one small script embedded in the binary. Everything works without JavaScript except
//! the live updates (log tail, deployments appearing), which use `EventSource`.
//!
//! Safety, in one place: every page gets a strict Content-Security-Policy (no inline
//! script), every POST passes [`csrf_guard`], sessions are HttpOnly SameSite=Lax cookies
//! (see [`session`]), and projects are looked up with the API's ownership rule, so another
//! user's project is the same 404 page as one that does not exist.

mod account;
mod audit;
mod chart;
mod collaborators;
mod cron;
mod email;
mod pages;
mod project;
mod security;
pub mod session;
mod users;
mod view;
mod webhooks;

use std::time::Instant;

use askama::Template;
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{Next, from_fn};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use paastech_core::Error;

use crate::AppState;
use session::{Cookies, SESSION_COOKIE, csrf_for_session, same_token};

const CSS: &str = include_str!("../../assets/app.css");
const JS: &str = include_str!("../../assets/app.js");

/// The policy of every UI response: only our own files; no inline script or style, no
/// framing, forms only to ourselves.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::dashboard))
        .route("/signup", get(session::signup_page).post(session::signup))
        .route("/login", get(session::login_page).post(session::login))
        .route("/login/code", post(session::login_code))
        .route("/logout", post(session::logout))
        .route("/verify-email", get(email::verify_page))
        .route("/verify-email/resend", post(email::resend))
        .route("/password/forgot", get(email::forgot_page).post(email::forgot))
        .route("/password/reset", get(email::reset_page).post(email::reset))
        .route("/projects/new", get(pages::new_project_page))
        .route("/projects", post(pages::create_project))
        .route("/projects/{name}", get(project::overview))
        .route("/projects/{name}/deployments", get(project::deployments).post(project::deploy))
        .route("/projects/{name}/deployments/{version}", get(project::build_log))
        .route("/projects/{name}/env", get(project::env_page).post(project::env_save))
        .route("/projects/{name}/env/remove", post(project::env_remove))
        .route("/projects/{name}/scale", get(project::scale_page).post(project::scale_save))
        .route("/projects/{name}/lifecycle", post(project::lifecycle))
        .route("/projects/{name}/domains", get(project::domains_page).post(project::domain_add))
        .route("/projects/{name}/domains/remove", post(project::domain_remove))
        .route("/projects/{name}/addons", get(project::addons_page).post(project::addon_create))
        .route("/projects/{name}/addons/destroy", post(project::addon_destroy))
        .route("/projects/{name}/webhooks", get(webhooks::webhooks_page).post(webhooks::webhook_add))
        .route("/projects/{name}/webhooks/remove", post(webhooks::webhook_remove))
        .route("/projects/{name}/cron", get(cron::cron_page))
        .route("/projects/{name}/audit", get(audit::project_audit_page))
        .route("/projects/{name}/collaborators", get(collaborators::collaborators_page).post(collaborators::member_add))
        .route("/projects/{name}/collaborators/remove", post(collaborators::member_remove))
        .route("/projects/{name}/transfer", post(collaborators::transfer))
        .route("/projects/{name}/https", post(project::https_save))
        .route("/projects/{name}/logs", get(project::logs_page))
        .route("/projects/{name}/logs/stream", get(project::logs_stream))
        .route("/projects/{name}/settings", get(project::settings))
        .route("/projects/{name}/previews", post(project::previews_save))
        .route("/projects/{name}/sleep", post(project::sleep_save))
        .route("/projects/{name}/delete", post(project::delete))
        .route("/account/keys", get(account::keys).post(account::add_key))
        .route("/account/keys/{id}/delete", post(account::delete_key))
        .route("/account/tokens", get(account::tokens).post(account::create_token))
        .route("/account/security", get(security::security))
        .route("/account/security/start", post(security::start))
        .route("/account/security/confirm", post(security::confirm))
        .route("/account/security/disable", post(security::disable))
        .route("/account/tokens/{id}/delete", post(account::delete_token))
        .route("/audit", get(audit::audit_page))
        .route("/admin", get(account::admin))
        .route("/admin/nodes", get(account::nodes))
        .route("/admin/users/disable", post(users::disable))
        .route("/admin/users/delete", post(users::delete))
        .route("/admin/users/reset-2fa", post(users::reset_2fa))
        .route("/assets/app.css", get(|| asset(CSS, "text/css; charset=utf-8")))
        .route("/assets/app.js", get(|| asset(JS, "text/javascript; charset=utf-8")))
        .fallback(not_found_page)
        .layer(from_fn(csrf_guard))
        .layer(from_fn(page_headers))
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    let headers = [(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=3600")];
    (headers, body).into_response()
}

/// Security headers on every UI response, and `Server-Timing` with the time the handler
/// took (what the render-time check reads).
async fn page_headers(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let mut response = next.run(request).await;
    let took = started.elapsed().as_secs_f64() * 1000.0;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Pages carry CSRF tokens and private data: never cached by anyone else.
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));
    }
    if let Ok(value) = HeaderValue::from_str(&format!("render;dur={took:.2}")) {
        headers.insert("server-timing", value);
    }
    response
}

/// Forms that exist before there is a session: they use a double-submit cookie.
const PRE_SESSION_FORMS: [&str; 5] = ["/login", "/login/code", "/signup", "/password/forgot", "/password/reset"];

/// Every POST must carry the CSRF token of the page it came from in its `csrf` field:
/// the session-bound token for signed-in forms, the double-submit cookie's value for the
/// sign-up and log-in forms. Cross-site requests (as browsers label them) are refused too.
async fn csrf_guard(request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let cross_site = request.headers().get("sec-fetch-site").is_some_and(|v| v.as_bytes() == b"cross-site");
    let cookies = Cookies::from_headers(request.headers());
    let path = request.uri().path().to_owned();
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, crate::MAX_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => {
            let message = format!("The form is too large: at most {} bytes.", crate::MAX_BODY_BYTES);
            return error_page(StatusCode::PAYLOAD_TOO_LARGE, "Too large", &message);
        }
    };
    let sent = form_field(&bytes, "csrf");
    let expected = if PRE_SESSION_FORMS.contains(&path.as_str()) {
        cookies.get(session::PRE_SESSION_COOKIE).map(str::to_owned)
    } else {
        cookies.get(SESSION_COOKIE).map(csrf_for_session)
    };
    let valid = match (sent, expected) {
        (Some(sent), Some(expected)) => !expected.is_empty() && same_token(sent, &expected),
        _ => false,
    };
    if cross_site || !valid {
        tracing::warn!(path = %path, "form refused: missing or wrong CSRF token");
        return error_page(
            StatusCode::FORBIDDEN,
            "Form refused",
            "This form was not sent from a PaaSTech page you have open, or it has expired. Go back, reload the page and try again.",
        );
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// The raw value of `name` in an `application/x-www-form-urlencoded` body. Tokens are
/// hex or base64url, which encoding leaves unchanged, so no decoding is needed.
fn form_field<'a>(body: &'a [u8], name: &str) -> Option<&'a str> {
    let body = std::str::from_utf8(body).ok()?;
    body.split('&').find_map(|pair| match pair.split_once('=') {
        Some((key, value)) if key == name => Some(value),
        _ => None,
    })
}

/// An error shown as a page; "not found" is the same page whatever the reason.
pub struct UiError(pub Error);

impl From<Error> for UiError {
    fn from(err: Error) -> Self {
        UiError(err)
    }
}

impl From<askama::Error> for UiError {
    fn from(err: askama::Error) -> Self {
        UiError(Error::internal("rendering a page", err))
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = crate::error::status_of(&self.0);
        match &self.0 {
            Error::NotFound(_) => not_found_response(),
            Error::Unauthorized(_) => Redirect::to("/login").into_response(),
            Error::Internal { .. } | Error::Unavailable(_) => {
                tracing::error!(error = %self.0, source = ?std::error::Error::source(&self.0), "page failed");
                error_page(status, "Something went wrong", &format!("{} The error has been logged.", self.0))
            }
            other => error_page(status, "That did not work", &other.to_string()),
        }
    }
}

pub type UiResult<T = Response> = Result<T, UiError>;

fn not_found_response() -> Response {
    error_page(StatusCode::NOT_FOUND, "Not found", "There is nothing here, or it is not yours to see.")
}

async fn not_found_page() -> Response {
    not_found_response()
}

pub(crate) fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    let page = view::ErrorPage { l: view::Layout::anonymous(title), message: message.to_owned() };
    match page.render() {
        Ok(body) => (status, Html(body)).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "rendering the error page");
            (status, message.to_owned()).into_response()
        }
    }
}

/// Renders a template as a full page.
pub(crate) fn render<T: Template>(status: StatusCode, page: &T) -> UiResult {
    Ok((status, Html(page.render()?)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_are_found_by_exact_name() {
        let body = b"name=blog&csrf=abc_-1&xcsrf=no";
        assert_eq!(form_field(body, "csrf"), Some("abc_-1"));
        assert_eq!(form_field(body, "name"), Some("blog"));
        assert_eq!(form_field(b"xcsrf=no", "csrf"), None);
        assert_eq!(form_field(b"", "csrf"), None);
        assert_eq!(form_field(&[0xff, 0xfe], "csrf"), None);
    }
}
