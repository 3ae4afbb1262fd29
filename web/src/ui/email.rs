//! The pages mailed links open: the address check, and the password reset (asked for on
//! "Forgot your password?", set on the link's page). See `crate::email`.

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use paastech_core::Error;
use serde::Deserialize;

use super::UiResult;
use super::session::{Session, anonymous_page};
use super::view::{FieldErrors, PasswordPage};
use crate::AppState;
use crate::auth::ClientIp;
use crate::email;

#[derive(Deserialize, Default)]
pub struct TokenQuery {
    #[serde(default)]
    token: String,
}

#[derive(Deserialize, Default)]
pub struct ForgotForm {
    #[serde(default)]
    email: String,
}

#[derive(Deserialize, Default)]
pub struct ResetForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    password: String,
}

fn page(headers: &HeaderMap, mode: &'static str, token: &str, errors: FieldErrors, status: StatusCode) -> UiResult {
    let title = match mode {
        "forgot" | "sent" => "Forgot your password?",
        "reset" => "Choose a new password",
        _ => "Email address",
    };
    anonymous_page(headers, title, None, status, |l| PasswordPage { l, mode, token: token.to_owned(), errors })
}

/// The link of the sign-up mail: verifies the address (a GET: the link is single use, and
/// opening it is the whole action).
pub async fn verify_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> UiResult {
    if state.mail.is_none() {
        return page(&headers, "off", "", FieldErrors::default(), StatusCode::SERVICE_UNAVAILABLE);
    }
    match email::verify(&state, &query.token).await {
        Ok(_) => page(&headers, "verified", "", FieldErrors::default(), StatusCode::OK),
        Err(Error::Invalid(message)) => {
            page(&headers, "bad-link", "", FieldErrors::one("form", message), StatusCode::BAD_REQUEST)
        }
        Err(err) => Err(err.into()),
    }
}

/// The dashboard's "send the link again".
pub async fn resend(State(state): State<AppState>, session: Session) -> UiResult {
    if !session.user.email_verified {
        email::send_link(&state, &session.user, paastech_core::mail::EmailPurpose::Verify).await?;
    }
    Ok(Redirect::to("/?done=verify-sent").into_response())
}

pub async fn forgot_page(State(state): State<AppState>, headers: HeaderMap) -> UiResult {
    let mode = if state.mail.is_some() { "forgot" } else { "off" };
    page(&headers, mode, "", FieldErrors::default(), StatusCode::OK)
}

/// Sends the reset link, if the address has an account; the page says the same either way.
pub async fn forgot(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Form(form): Form<ForgotForm>,
) -> UiResult {
    if state.mail.is_none() {
        return page(&headers, "off", "", FieldErrors::default(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let address = form.email.trim().to_lowercase();
    if let Err(err) = state.reset_limiter.attempt(&address, ip) {
        return page(&headers, "forgot", "", FieldErrors::one("email", err.to_string()), StatusCode::TOO_MANY_REQUESTS);
    }
    match email::request_reset(&state, &address).await {
        Ok(()) => page(&headers, "sent", "", FieldErrors::default(), StatusCode::OK),
        Err(Error::Invalid(message)) => {
            page(&headers, "forgot", "", FieldErrors::one("email", message), StatusCode::BAD_REQUEST)
        }
        Err(err) => Err(err.into()),
    }
}

pub async fn reset_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> UiResult {
    let mode = if state.mail.is_some() { "reset" } else { "off" };
    page(&headers, mode, &query.token, FieldErrors::default(), StatusCode::OK)
}

/// Sets the new password; then the login page, which says so.
pub async fn reset(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<ResetForm>) -> UiResult {
    if state.mail.is_none() {
        return page(&headers, "off", "", FieldErrors::default(), StatusCode::SERVICE_UNAVAILABLE);
    }
    match email::reset_password(&state, &form.token, form.password).await {
        Ok(_) => Ok(Redirect::to("/login?done=password-reset").into_response()),
        Err(Error::Invalid(message)) => {
            let field = if message.contains("link") { "form" } else { "password" };
            page(&headers, "reset", &form.token, FieldErrors::one(field, message), StatusCode::BAD_REQUEST)
        }
        Err(err) => Err(err.into()),
    }
}
