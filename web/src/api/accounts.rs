//! Accounts: signup, login, tokens, SSH keys.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use paastech_core::{ApiToken, AuditAction, Error, SshKey, Timestamp, User, validate_email};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{JsonBodyErrors, NeedsToken, ParamErrors};
use super::{JsonBody, PathParam};
use crate::AppState;
use crate::SignupPolicy;
use crate::audit;
use crate::auth::{self, ClientIp, CurrentUser, MaybeUser};
use crate::error::{ApiResult, ErrorStatus, error_response};

/// The error code of a login that needs its second factor.
pub const TWO_FACTOR_REQUIRED: &str = "two_factor_required";

/// Login tokens expire; tokens made with `POST /tokens` do not.
const LOGIN_TOKEN_LIFETIME_MS: i64 = 30 * 24 * 3600 * 1000;

#[derive(Deserialize, ToSchema)]
pub struct Credentials {
    /// Compared without case and surrounding spaces.
    #[schema(format = Email, max_length = 254, example = "ada@example.com")]
    pub email: String,
    /// At least 8 characters, at most 1024 bytes.
    #[schema(min_length = 8, max_length = 1024, example = "correct horse battery")]
    pub password: String,
}

#[derive(Deserialize, ToSchema)]
pub struct LoginRequest {
    /// Compared without case and surrounding spaces.
    #[schema(format = Email, max_length = 254, example = "ada@example.com")]
    pub email: String,
    #[schema(max_length = 1024, example = "correct horse battery")]
    pub password: String,
    /// With two-factor login: a current 6-digit code, or one of the recovery codes.
    #[schema(max_length = 64, example = "123456")]
    pub code: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct UserView {
    pub id: i64,
    pub email: String,
    pub is_admin: bool,
    /// Set by an admin: the account cannot log in, nor use tokens or SSH keys.
    pub disabled: bool,
    pub created_at: String,
    /// Whether the address was proved by its mailed link (on a server without mail:
    /// always). An unverified account may log in but not create projects.
    pub email_verified: bool,
}

impl From<User> for UserView {
    fn from(user: User) -> Self {
        UserView {
            id: user.id,
            email: user.email,
            is_admin: user.is_admin,
            disabled: user.disabled,
            created_at: user.created_at.to_rfc3339(),
            email_verified: user.email_verified,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct TokenCreated {
    pub id: i64,
    pub name: String,
    /// The secret: shown once, stored only as a hash.
    pub token: String,
    pub expires_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenView {
    pub id: i64,
    pub name: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub expires_at: Option<String>,
}

impl From<ApiToken> for TokenView {
    fn from(t: ApiToken) -> Self {
        TokenView {
            id: t.id,
            name: t.name,
            created_at: t.created_at.to_rfc3339(),
            last_used_at: t.last_used_at.map(Timestamp::to_rfc3339),
            expires_at: t.expires_at.map(Timestamp::to_rfc3339),
        }
    }
}

#[derive(Deserialize, ToSchema)]
pub struct NewToken {
    /// 1 to 100 printable characters, not only spaces.
    #[schema(min_length = 1, max_length = 100, example = "ci")]
    pub name: String,
}

#[derive(Deserialize, ToSchema)]
pub struct NewSshKey {
    /// 1 to 100 printable characters; absent or blank: the key's comment.
    #[schema(max_length = 100, example = "laptop")]
    pub name: Option<String>,
    /// One OpenSSH public key line, `ssh-ed25519 AAAA… comment` (ed25519, ECDSA, or RSA
    /// of at least 2048 bits); spaces around it are ignored.
    #[schema(
        pattern = "^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) AAAA[A-Za-z0-9+/]+={0,2}( .*)?$",
        example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC0IBxv7GciRNxnYJKUB8KCCRnaszwdF4KsRUxht8WUP ada@laptop"
    )]
    pub public_key: String,
}

#[derive(Serialize, ToSchema)]
pub struct SshKeyView {
    pub id: i64,
    pub name: String,
    pub fingerprint: String,
    pub public_key: String,
    pub created_at: String,
}

impl From<SshKey> for SshKeyView {
    fn from(k: SshKey) -> Self {
        SshKeyView {
            id: k.id,
            name: k.name,
            fingerprint: k.fingerprint,
            public_key: k.public_key,
            created_at: k.created_at.to_rfc3339(),
        }
    }
}

pub(crate) fn check_name(kind: &str, name: &str) -> Result<(), Error> {
    if name.trim().is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(Error::Invalid(format!("{kind} name must be 1 to 100 printable characters")));
    }
    Ok(())
}

/// Creates an account. The first account is an admin; with `signup = "closed"` only admins
/// may create accounts.
#[utoipa::path(post, path = "/auth/signup", tag = "accounts", request_body = Credentials,
    // A token is optional: an admin's lets them create accounts when sign-up is closed.
    security((), ("bearer" = [])),
    responses((status = 201, body = UserView), JsonBodyErrors, NeedsToken, ErrorStatus<403>, ErrorStatus<409>))]
pub async fn signup(
    State(state): State<AppState>,
    MaybeUser(caller): MaybeUser,
    JsonBody(body): JsonBody<Credentials>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    let email = body.email.trim().to_lowercase();
    validate_email(&email)?;
    // `validate_email` lets control characters through; PostgreSQL refuses a NUL in text.
    if email.chars().any(char::is_control) {
        return Err(Error::Invalid(format!("invalid email address {email:?}: control characters")).into());
    }
    auth::check_password_rules(&body.password)?;
    if state.signup == SignupPolicy::Closed && !caller.as_ref().is_some_and(|u| u.is_admin) {
        // The very first account must always be possible, or nobody could ever get in.
        if !state.store.users().await?.is_empty() {
            return Err(Error::Forbidden(
                "sign-up is closed on this server: ask an admin to create your account".into(),
            )
            .into());
        }
    }
    let hash = auth::hash_password(body.password).await?;
    let mut user = state.store.create_user(&email, &hash).await?;
    tracing::info!(user = user.id, admin = user.is_admin, "account created");
    let record = match &caller {
        Some(admin) if admin.is_admin => audit::by(admin, AuditAction::Signup).detail(format!("created {email}")),
        _ => audit::by(&user, AuditAction::Signup),
    };
    state.audit(record).await;
    crate::email::account_created(&state, &user).await?;
    user.email_verified = state.mail.is_none();
    Ok((StatusCode::CREATED, Json(user.into())))
}

#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    pub token: String,
    pub expires_at: String,
    pub user: UserView,
}

/// Exchanges email and password (and, with two-factor login, a code) for a token. Ten
/// failures a minute for one account or one address answer 429 until the minute has
/// passed; a missing or wrong code is a failure. A right password without the `code` a
/// two-factor account needs answers 401 with the error code `two_factor_required`.
#[utoipa::path(post, path = "/auth/login", tag = "accounts", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), JsonBodyErrors, ErrorStatus<401>, ErrorStatus<403>, ErrorStatus<429>))]
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(body): JsonBody<LoginRequest>,
) -> ApiResult<Response> {
    if let Some(code) = &body.code {
        crate::two_factor::check_code_length(code)?;
    }
    let email = body.email.trim().to_lowercase();
    // Counted as a failure until the password proves right.
    let attempt = state.limiter.attempt(&email, ip)?;
    // No account has control characters in its email (signup refuses them), and PostgreSQL
    // would fail on a NUL: such an email is simply not found.
    let lookup = if email.chars().any(char::is_control) {
        Err(Error::NotFound("no user with this email".into()))
    } else {
        state.store.user_by_email(&email).await
    };
    let found = match lookup {
        Ok(found) => Some(found),
        Err(Error::NotFound(_)) => None,
        Err(other) => return Err(other.into()),
    };
    let hash = found.as_ref().map(|(_, hash)| hash.clone());
    if !auth::verify_password(body.password, hash).await {
        tracing::warn!(%ip, "failed login");
        let record = match &found {
            Some((user, _)) => audit::by(user, AuditAction::LoginFailed).detail("api: wrong password"),
            None => audit::anonymous(AuditAction::LoginFailed).detail("api: no such account"),
        };
        state.audit(record).await;
        return Err(Error::Unauthorized("wrong email or password".into()).into());
    }
    let (user, _) = found.expect("verify_password is false without a user");
    if user.disabled {
        attempt.succeeded();
        state.audit(audit::by(&user, AuditAction::LoginFailed).detail("api: account disabled")).await;
        // Only after the password: the answer tells nothing to who does not know it.
        return Err(Error::Forbidden("this account is disabled; ask an admin".into()).into());
    }
    if crate::two_factor::enabled(&state, &user).await? {
        // The attempt stays a failure until the second factor is right too: a guesser who
        // has the password gets no more tries at the code than at a password.
        let Some(code) = body.code.as_deref() else {
            return Ok(error_response(
                StatusCode::UNAUTHORIZED,
                TWO_FACTOR_REQUIRED,
                "this account has two-factor login: send a current code (or a recovery code) as \"code\"".into(),
            ));
        };
        if !crate::two_factor::check(&state, &user, code).await? {
            tracing::warn!(%ip, user = user.id, "failed login: wrong two-factor code");
            state.audit(audit::by(&user, AuditAction::LoginFailed).detail("api: wrong two-factor code")).await;
            return Err(Error::Unauthorized("wrong two-factor code".into()).into());
        }
    }
    attempt.succeeded();
    let token = auth::new_token();
    let expires = Timestamp(Timestamp::now().0 + LOGIN_TOKEN_LIFETIME_MS);
    state.store.create_token(user.id, crate::email::LOGIN_TOKEN_NAME, &auth::token_hash(&token), Some(expires)).await?;
    state.audit(audit::by(&user, AuditAction::Login).detail("api")).await;
    Ok(Json(LoginResponse { token, expires_at: expires.to_rfc3339(), user: user.into() }).into_response())
}

#[utoipa::path(get, path = "/me", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, body = UserView), NeedsToken))]
pub async fn me(CurrentUser(user): CurrentUser) -> Json<UserView> {
    Json(user.into())
}

#[utoipa::path(get, path = "/users", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, body = Vec<UserView>), NeedsToken, ErrorStatus<403>))]
pub async fn list_users(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
) -> ApiResult<Json<Vec<UserView>>> {
    if !user.is_admin {
        return Err(Error::Forbidden("only admins may list users".into()).into());
    }
    Ok(Json(state.store.users().await?.into_iter().map(Into::into).collect()))
}

#[utoipa::path(get, path = "/tokens", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, body = Vec<TokenView>), NeedsToken))]
pub async fn list_tokens(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
) -> ApiResult<Json<Vec<TokenView>>> {
    Ok(Json(state.store.tokens(user.id).await?.into_iter().map(Into::into).collect()))
}

/// Creates a long-lived API token; the secret is in this response only.
#[utoipa::path(post, path = "/tokens", tag = "accounts", security(("bearer" = [])), request_body = NewToken,
    responses((status = 201, body = TokenCreated), NeedsToken, JsonBodyErrors))]
pub async fn create_token(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    JsonBody(body): JsonBody<NewToken>,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    check_name("token", &body.name)?;
    let token = auth::new_token();
    let stored = state.store.create_token(user.id, body.name.trim(), &auth::token_hash(&token), None).await?;
    state.audit(audit::by(&user, AuditAction::TokenCreated).detail(stored.name.clone())).await;
    Ok((StatusCode::CREATED, Json(TokenCreated { id: stored.id, name: stored.name, token, expires_at: None })))
}

#[utoipa::path(delete, path = "/tokens/{id}", tag = "accounts", security(("bearer" = [])),
    params(("id" = i64, Path, description = "the token's id, from `GET /tokens`")),
    responses((status = 204, description = "revoked"), NeedsToken, ParamErrors, ErrorStatus<404>))]
pub async fn delete_token(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(id): PathParam<i64>,
) -> ApiResult<StatusCode> {
    revoke_token(&state, &user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/ssh-keys", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, body = Vec<SshKeyView>), NeedsToken))]
pub async fn list_keys(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
) -> ApiResult<Json<Vec<SshKeyView>>> {
    Ok(Json(state.store.ssh_keys(user.id).await?.into_iter().map(Into::into).collect()))
}

/// Registers an SSH public key for `git push`. A malformed key is a 400 saying why; a key
/// already registered (on any account) is a 409.
#[utoipa::path(post, path = "/ssh-keys", tag = "accounts", security(("bearer" = [])), request_body = NewSshKey,
    responses((status = 201, body = SshKeyView), NeedsToken, JsonBodyErrors, ErrorStatus<409>))]
pub async fn add_key(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    JsonBody(body): JsonBody<NewSshKey>,
) -> ApiResult<(StatusCode, Json<SshKeyView>)> {
    let parsed = paastech_ssh::parse_public_key(&body.public_key)?;
    let name = match body.name.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => name.to_owned(),
        // Default to the key's comment, as `ssh-keygen` wrote it, else its type.
        _ => body.public_key.split_whitespace().nth(2).map(str::to_owned).unwrap_or_else(|| parsed.algorithm.clone()),
    };
    check_name("key", &name)?;
    let key = state.store.add_ssh_key(user.id, &name, &parsed.fingerprint, &parsed.openssh).await?;
    tracing::info!(user = user.id, fingerprint = %key.fingerprint, "ssh key added");
    state.audit(audit::by(&user, AuditAction::KeyAdded).detail(format!("{} {}", key.name, key.fingerprint))).await;
    Ok((StatusCode::CREATED, Json(key.into())))
}

#[utoipa::path(delete, path = "/ssh-keys/{id}", tag = "accounts", security(("bearer" = [])),
    params(("id" = i64, Path, description = "the key's id, from `GET /ssh-keys`")),
    responses((status = 204, description = "removed"), NeedsToken, ParamErrors, ErrorStatus<404>))]
pub async fn delete_key(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(id): PathParam<i64>,
) -> ApiResult<StatusCode> {
    remove_key(&state, &user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes one of `user`'s tokens (a session is one), recording its name.
pub(crate) async fn revoke_token(state: &AppState, user: &User, id: i64) -> Result<(), Error> {
    let name = state.store.tokens(user.id).await?.into_iter().find(|t| t.id == id).map(|t| t.name);
    state.store.delete_token(user.id, id).await?;
    state.audit(audit::by(user, AuditAction::TokenDeleted).detail(name.unwrap_or_else(|| format!("#{id}")))).await;
    Ok(())
}

/// Removes one of `user`'s SSH keys, recording its name and fingerprint.
pub(crate) async fn remove_key(state: &AppState, user: &User, id: i64) -> Result<(), Error> {
    let key = state.store.ssh_keys(user.id).await?.into_iter().find(|k| k.id == id);
    state.store.delete_ssh_key(user.id, id).await?;
    let detail = key.map_or_else(|| format!("#{id}"), |key| format!("{} {}", key.name, key.fingerprint));
    state.audit(audit::by(user, AuditAction::KeyDeleted).detail(detail)).await;
    Ok(())
}
