//! The routes of mailed links: verifying the address, resetting a forgotten password.
//! Without `[smtp]` they answer 503 saying the server sends no mail.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::JsonBody;
use super::accounts::UserView;
use super::extract::{JsonBodyErrors, NeedsToken};
use crate::AppState;
use crate::auth::{ClientIp, CurrentUser};
use crate::email;
use crate::error::{ApiResult, ErrorStatus};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    /// The `token` of the mailed link.
    #[schema(min_length = 1, max_length = 200)]
    pub token: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    #[schema(format = Email, max_length = 254, example = "ada@example.com")]
    pub email: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetConfirm {
    /// The `token` of the mailed link.
    #[schema(min_length = 1, max_length = 200)]
    pub token: String,
    /// At least 8 characters, at most 1024 bytes.
    #[schema(min_length = 8, max_length = 1024)]
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct Accepted {
    pub message: String,
}

/// Verifies the account's address with the token of the link mailed at sign-up (once).
#[utoipa::path(post, path = "/auth/verify", tag = "accounts", request_body = TokenBody,
    responses((status = 200, body = UserView), JsonBodyErrors, ErrorStatus<503>))]
pub async fn verify(State(state): State<AppState>, JsonBody(body): JsonBody<TokenBody>) -> ApiResult<Json<UserView>> {
    if state.mail.is_none() {
        return Err(email::mail_off().into());
    }
    Ok(Json(email::verify(&state, &body.token).await?.into()))
}

/// Mails the caller a new verification link; 409 when the address is verified already.
#[utoipa::path(post, path = "/auth/verify/resend", tag = "accounts", security(("bearer" = [])),
    responses((status = 202, body = Accepted), NeedsToken, ErrorStatus<409>, ErrorStatus<503>))]
pub async fn resend(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    if state.mail.is_none() {
        return Err(email::mail_off().into());
    }
    if user.email_verified {
        return Err(paastech_core::Error::Conflict(format!("{} is verified already", user.email)).into());
    }
    email::send_link(&state, &user, paastech_core::mail::EmailPurpose::Verify).await?;
    Ok((StatusCode::ACCEPTED, Json(Accepted { message: format!("a new link was mailed to {}", user.email) })))
}

/// Asks for a password reset link. The answer is the same whether or not an account has
/// the address; five requests an hour per address or client, then 429. 400 for a
/// malformed address.
#[utoipa::path(post, path = "/auth/password/reset", tag = "accounts", request_body = ResetRequest,
    responses((status = 202, body = Accepted), JsonBodyErrors, ErrorStatus<429>, ErrorStatus<503>))]
pub async fn request_reset(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(body): JsonBody<ResetRequest>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    if state.mail.is_none() {
        return Err(email::mail_off().into());
    }
    let address = body.email.trim().to_lowercase();
    paastech_core::validate_email(&address)?;
    // Never marked as succeeded: every request counts.
    let _counted = state.reset_limiter.attempt(&address, ip)?;
    email::request_reset(&state, &address).await?;
    let message = "if an account has this address, a link to reset its password was mailed to it (valid for one hour)";
    Ok((StatusCode::ACCEPTED, Json(Accepted { message: message.into() })))
}

/// Sets a new password with the token of a reset link (once, within the hour). Every
/// session and login token of the account ends; its named API tokens stay.
#[utoipa::path(post, path = "/auth/password/reset/confirm", tag = "accounts", request_body = ResetConfirm,
    responses((status = 204, description = "password set"), JsonBodyErrors, ErrorStatus<503>))]
pub async fn confirm_reset(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<ResetConfirm>,
) -> ApiResult<StatusCode> {
    if state.mail.is_none() {
        return Err(email::mail_off().into());
    }
    email::reset_password(&state, &body.token, body.password).await?;
    Ok(StatusCode::NO_CONTENT)
}
