//! A project's deploy webhooks: URLs told by a signed POST when a deployment goes live or
//! fails (`crate::webhooks` sends them). The secret is shown once, in the answer to the
//! POST that makes the webhook; another user's project answers 404.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use paastech_core::AuditAction;
use paastech_core::Role;
use paastech_core::{Webhook, WebhookAttempt};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{JsonBodyErrors, NeedsToken, ParamErrors};
use super::projects::project_for;
use super::schemas::ProjectNameSchema;
use super::{JsonBody, PathParam};
use crate::AppState;
use crate::audit;
use crate::auth::CurrentUser;
use crate::error::{ApiResult, ErrorStatus};

#[derive(Deserialize, ToSchema)]
pub struct NewWebhook {
    /// Where deliveries are POSTed: an absolute `http` or `https` URL with a host, without a
    /// user name or password. Redirects are not followed.
    #[schema(examples("https://ci.example.com/paastech"))]
    pub url: String,
    /// The events to deliver: `deploy.succeeded`, `deploy.failed`. Absent or empty: all.
    #[serde(default)]
    pub events: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookView {
    pub id: i64,
    pub url: String,
    pub events: Vec<String>,
    pub created_at: String,
}

/// A webhook just made, with its secret: shown this once.
#[derive(Serialize, ToSchema)]
pub struct WebhookCreated {
    pub id: i64,
    pub url: String,
    pub events: Vec<String>,
    pub created_at: String,
    /// Signs every delivery: `X-PaaSTech-Signature-256: sha256=<hex HMAC-SHA256 of the body
    /// keyed with this secret>`. Not shown again.
    pub secret: String,
}

/// One attempt of a delivery.
#[derive(Serialize, ToSchema)]
pub struct DeliveryAttemptView {
    /// The delivery's id (`X-PaaSTech-Delivery`), the same for each of its attempts.
    pub delivery: String,
    pub event: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// When the attempt started.
    pub at: String,
    /// The receiver's status code; null when it did not answer.
    pub status_code: Option<u16>,
    /// Why there is no answer (connection refused, timeout, …).
    pub error: Option<String>,
    pub duration_ms: u64,
}

fn events(webhook: &Webhook) -> Vec<String> {
    webhook.events.iter().map(|e| e.as_str().to_owned()).collect()
}

impl From<Webhook> for WebhookView {
    fn from(webhook: Webhook) -> Self {
        WebhookView {
            id: webhook.id,
            events: events(&webhook),
            url: webhook.url,
            created_at: webhook.created_at.to_rfc3339(),
        }
    }
}

impl From<WebhookAttempt> for DeliveryAttemptView {
    fn from(attempt: WebhookAttempt) -> Self {
        DeliveryAttemptView {
            delivery: attempt.delivery,
            event: attempt.event.as_str().to_owned(),
            attempt: attempt.attempt,
            at: attempt.at.to_rfc3339(),
            status_code: attempt.status_code,
            error: attempt.error,
            duration_ms: attempt.duration_ms,
        }
    }
}

/// A new webhook secret: `whsec_` + 32 random bytes (from the OS-seeded CSPRNG), as hex.
pub(crate) fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let mut secret = String::with_capacity(6 + 64);
    secret.push_str("whsec_");
    for byte in bytes {
        secret.push_str(&format!("{byte:02x}"));
    }
    secret
}

/// The project's webhooks, oldest first (without their secrets).
#[utoipa::path(get, path = "/projects/{name}/webhooks", tag = "webhooks", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)),
    responses((status = 200, body = Vec<WebhookView>), NeedsToken, ParamErrors, ErrorStatus<403>, ErrorStatus<404>))]
pub async fn list(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
) -> ApiResult<Json<Vec<WebhookView>>> {
    let project = project_for(&state, &user, &name, Role::Developer).await?;
    let webhooks = state.orchestrator.webhooks(&project).await?;
    Ok(Json(webhooks.into_iter().map(Into::into).collect()))
}

/// Adds a webhook; the answer holds its secret, shown this once. 400 names what is wrong
/// with the URL, or the unknown event and the known ones; 409 when the project has 20.
#[utoipa::path(post, path = "/projects/{name}/webhooks", tag = "webhooks", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)), request_body = NewWebhook,
    responses((status = 201, body = WebhookCreated), NeedsToken, ParamErrors, JsonBodyErrors, ErrorStatus<403>, ErrorStatus<404>, ErrorStatus<409>))]
pub async fn add(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
    JsonBody(body): JsonBody<NewWebhook>,
) -> ApiResult<(StatusCode, Json<WebhookCreated>)> {
    let project = project_for(&state, &user, &name, Role::Developer).await?;
    let secret = new_secret();
    let webhook = state.orchestrator.add_webhook(&project, &body.url, &body.events, &secret).await?;
    let detail = format!("#{} {}", webhook.id, webhook.url);
    state.audit(audit::by(&user, AuditAction::WebhookAdded).on(&project).detail(detail)).await;
    Ok((
        StatusCode::CREATED,
        Json(WebhookCreated {
            id: webhook.id,
            events: events(&webhook),
            url: webhook.url,
            created_at: webhook.created_at.to_rfc3339(),
            secret,
        }),
    ))
}

/// Removes a webhook of the project, and its kept deliveries.
#[utoipa::path(delete, path = "/projects/{name}/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path), ("id" = i64, Path, description = "the webhook's id")),
    responses((status = 204, description = "removed"), NeedsToken, ParamErrors, ErrorStatus<403>, ErrorStatus<404>))]
pub async fn remove(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam((name, id)): PathParam<(String, i64)>,
) -> ApiResult<StatusCode> {
    let project = project_for(&state, &user, &name, Role::Developer).await?;
    state.orchestrator.remove_webhook(&project, id).await?;
    state.audit(audit::by(&user, AuditAction::WebhookRemoved).on(&project).detail(format!("#{id}"))).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The last delivery attempts of a webhook, newest first (up to 100: the last 20
/// deliveries of up to 5 attempts).
#[utoipa::path(get, path = "/projects/{name}/webhooks/{id}/deliveries", tag = "webhooks", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path), ("id" = i64, Path, description = "the webhook's id")),
    responses((status = 200, body = Vec<DeliveryAttemptView>), NeedsToken, ParamErrors, ErrorStatus<403>, ErrorStatus<404>))]
pub async fn deliveries(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam((name, id)): PathParam<(String, i64)>,
) -> ApiResult<Json<Vec<DeliveryAttemptView>>> {
    let project = project_for(&state, &user, &name, Role::Developer).await?;
    let attempts = state.orchestrator.webhook_attempts(&project, id).await?;
    Ok(Json(attempts.into_iter().map(Into::into).collect()))
}
