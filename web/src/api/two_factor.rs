//! Two-factor login (TOTP): enrolment and removal for oneself, reset by an admin.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use paastech_core::{AuditAction, Error, User};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{JsonBodyErrors, NeedsToken, ParamErrors};
use super::{JsonBody, PathParam};
use crate::AppState;
use crate::audit;
use crate::auth::CurrentUser;
use crate::email::LOGIN_TOKEN_NAME;
use crate::error::{ApiResult, ErrorStatus};
use crate::two_factor;
use crate::ui::session::SESSION_TOKEN_NAME;

#[derive(Serialize, ToSchema)]
pub struct TwoFactorStarted {
    /// The shared secret in base32, to type into an authenticator app.
    pub secret: String,
    /// `otpauth://totp/PaaSTech:EMAIL?secret=…`: what the QR code of the web UI holds.
    pub otpauth_url: String,
}

#[derive(Deserialize, ToSchema)]
pub struct TwoFactorCode {
    /// A current 6-digit code of the authenticator app (or, to disable, a recovery code).
    #[schema(max_length = 64, example = "123456")]
    pub code: String,
}

#[derive(Serialize, ToSchema)]
pub struct RecoveryCodes {
    /// Ten single-use codes that stand in for a 6-digit code: shown once, stored hashed.
    pub recovery_codes: Vec<String>,
}

/// What a user's enrolment looks like to the pages and the API.
pub(crate) struct Started {
    pub secret: String,
    pub otpauth_url: String,
}

/// Makes a new pending secret for `user` (replacing a pending one); `Conflict` when 2FA
/// is enabled already.
pub(crate) async fn start(state: &AppState, user: &User) -> Result<Started, Error> {
    let secret = two_factor::new_secret();
    state.store.start_totp(user.id, &secret).await?;
    let totp = two_factor::totp(&secret, &user.email)?;
    Ok(Started { secret: two_factor::secret_text(&totp), otpauth_url: two_factor::otpauth_url(&totp)? })
}

/// Enables the pending enrolment when `code` is right for its secret; the recovery codes.
pub(crate) async fn confirm(state: &AppState, user: &User, code: &str) -> Result<Vec<String>, Error> {
    let enrolment = match state.store.totp(user.id).await? {
        Some(enrolment) if !enrolment.enabled => enrolment,
        Some(_) => return Err(Error::Conflict("two-factor login is enabled already".into())),
        None => return Err(Error::NotFound("no two-factor enrolment is pending: start one first".into())),
    };
    let totp = two_factor::totp(&enrolment.secret, &user.email)?;
    let step = two_factor::matching_step(&totp, code, two_factor::now_secs(), None)
        .ok_or_else(|| Error::Invalid("wrong code: type the 6 digits the app shows now".into()))?;
    let codes = two_factor::new_recovery_codes();
    let hashes: Vec<String> = codes.iter().map(|c| two_factor::recovery_hash(c)).collect();
    state.store.enable_totp(user.id, step, &hashes).await?;
    tracing::info!(user = user.id, "two-factor login enabled");
    state.audit(audit::by(user, AuditAction::TwoFactorEnabled)).await;
    Ok(codes)
}

/// Removes `user`'s 2FA when `code` is a current code or a recovery code.
pub(crate) async fn disable(state: &AppState, user: &User, code: &str) -> Result<(), Error> {
    match state.store.totp(user.id).await? {
        Some(enrolment) if enrolment.enabled => {}
        // A pending enrolment has no code to prove yet: dropping it needs none.
        Some(_) => {
            state.store.delete_totp(user.id).await?;
            return Ok(());
        }
        None => return Err(Error::NotFound("two-factor login is not enabled".into())),
    }
    if !two_factor::check(state, user, code).await? {
        return Err(Error::Invalid("wrong code: give a current code or a recovery code".into()));
    }
    state.store.delete_totp(user.id).await?;
    tracing::info!(user = user.id, "two-factor login disabled");
    state.audit(audit::by(user, AuditAction::TwoFactorDisabled)).await;
    Ok(())
}

/// Starts enrolling in two-factor login: a new secret, pending until confirmed (a pending
/// one is replaced). 409 when 2FA is enabled already.
#[utoipa::path(post, path = "/me/2fa", tag = "accounts", security(("bearer" = [])),
    responses((status = 201, body = TwoFactorStarted), NeedsToken, ErrorStatus<409>))]
pub async fn start_enrolment(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
) -> ApiResult<(StatusCode, Json<TwoFactorStarted>)> {
    let started = start(&state, &user).await?;
    Ok((StatusCode::CREATED, Json(TwoFactorStarted { secret: started.secret, otpauth_url: started.otpauth_url })))
}

/// Enables two-factor login with a current code of the pending secret; answers the ten
/// recovery codes, once. 400 for a wrong code, 404 when nothing is pending.
#[utoipa::path(post, path = "/me/2fa/confirm", tag = "accounts", security(("bearer" = [])), request_body = TwoFactorCode,
    responses((status = 200, body = RecoveryCodes), NeedsToken, JsonBodyErrors, ErrorStatus<404>, ErrorStatus<409>))]
pub async fn confirm_enrolment(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    JsonBody(body): JsonBody<TwoFactorCode>,
) -> ApiResult<Json<RecoveryCodes>> {
    two_factor::check_code_length(&body.code)?;
    let recovery_codes = confirm(&state, &user, &body.code).await?;
    Ok(Json(RecoveryCodes { recovery_codes }))
}

/// Disables two-factor login, with a current code or a recovery code. 400 for a wrong
/// code, 404 when it is not enabled.
#[utoipa::path(delete, path = "/me/2fa", tag = "accounts", security(("bearer" = [])), request_body = TwoFactorCode,
    responses((status = 204, description = "disabled"), NeedsToken, JsonBodyErrors, ErrorStatus<404>))]
pub async fn disable_own(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    JsonBody(body): JsonBody<TwoFactorCode>,
) -> ApiResult<StatusCode> {
    two_factor::check_code_length(&body.code)?;
    disable(&state, &user, &body.code).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Resets another user's two-factor login (admins only), for who lost their device and
/// codes: their enrolment and recovery codes go, and their web sessions and login tokens
/// end. 404 when the user has none.
#[utoipa::path(delete, path = "/users/{user}/2fa", tag = "accounts", security(("bearer" = [])),
    params(("user" = String, Path, description = "the user's id or email")),
    responses((status = 204, description = "reset"), NeedsToken, ParamErrors, ErrorStatus<403>, ErrorStatus<404>))]
pub async fn admin_reset(
    State(state): State<AppState>,
    CurrentUser(admin): CurrentUser,
    PathParam(who): PathParam<String>,
) -> ApiResult<StatusCode> {
    reset(&state, &admin, &who).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn reset(state: &AppState, admin: &User, who: &str) -> Result<User, Error> {
    if !admin.is_admin {
        return Err(Error::Forbidden("only admins may reset another user's two-factor login".into()));
    }
    let user = super::users::target(state, who).await?;
    if !state.store.delete_totp(user.id).await? {
        return Err(Error::NotFound(format!("{} has no two-factor login", user.email)));
    }
    let ended = state.store.delete_tokens_named(user.id, &[SESSION_TOKEN_NAME, LOGIN_TOKEN_NAME]).await?;
    tracing::info!(user = user.id, admin = admin.id, sessions_ended = ended, "two-factor login reset by an admin");
    state.audit(audit::by(admin, AuditAction::TwoFactorReset).detail(user.email.clone())).await;
    Ok(user)
}
