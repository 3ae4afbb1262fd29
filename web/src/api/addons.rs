//! A project's add-ons (`[addons.KIND]` on the server): list, create, info, destroy, and
//! their data streamed out (backup) and in (restore). Owner or admin only: another user's
//! project answers 404. Creating and destroying change the config vars, which makes a new
//! deployment as an env change does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use paastech_core::Role;
use paastech_core::{Addon, AddonName, AuditAction, Error};
use serde::{Deserialize, Serialize};
use tokio_util::io::{ReaderStream, StreamReader};
use utoipa::ToSchema;

use super::extract::{JsonBodyErrors, NeedsToken, ParamErrors};
use super::projects::project_for;
use super::schemas::{AddonNameSchema, ProjectNameSchema};
use super::{JsonBody, PathParam};
use crate::AppState;
use crate::audit;
use crate::auth::CurrentUser;
use crate::error::{ApiResult, ErrorStatus};

/// The largest restore taken (a `Content-Length` over it answers 413 before anything runs).
const MAX_RESTORE_BYTES: u64 = 64 << 30;

/// How much of a backup may wait between the add-on's tool and the client.
const BACKUP_BUFFER_BYTES: usize = 64 * 1024;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAddon {
    /// A kind the server offers (`[addons.KIND]` in its config), such as `postgres`.
    pub kind: String,
    /// The add-on's name in the project; default: the kind.
    #[schema(value_type = Option<AddonNameSchema>)]
    pub name: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AddonView {
    pub name: String,
    pub kind: String,
    pub created_at: String,
}

impl From<Addon> for AddonView {
    fn from(addon: Addon) -> Self {
        AddonView { name: addon.name.to_string(), kind: addon.kind, created_at: addon.created_at.to_rfc3339() }
    }
}

#[derive(Serialize, ToSchema)]
pub struct AddonInfo {
    pub name: String,
    pub kind: String,
    pub created_at: String,
    /// The config vars it gives the app (its credentials, such as `DATABASE_URL`).
    pub config: BTreeMap<String, String>,
}

#[derive(Serialize, ToSchema)]
pub struct AddonChange {
    pub addon: AddonView,
    /// The deployment the config change made; null when the project has no build yet.
    pub deployment_version: Option<i64>,
}

fn addon_name(name: &str) -> Result<AddonName, Error> {
    AddonName::parse(name)
}

/// The project's add-ons, by name.
#[utoipa::path(get, path = "/projects/{name}/addons", tag = "addons", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)),
    responses((status = 200, body = Vec<AddonView>), NeedsToken, ParamErrors, ErrorStatus<404>))]
pub async fn list(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
) -> ApiResult<Json<Vec<AddonView>>> {
    let project = project_for(&state, &user, &name, Role::Viewer).await?;
    let addons = state.orchestrator.addons(&project).await?;
    Ok(Json(addons.into_iter().map(AddonView::from).collect()))
}

/// Provisions an add-on and sets its config vars (a new deployment once the project has a
/// build). 400 for a kind the server does not offer (the message lists those it does) or
/// a bad name; 409 when the name or one of its vars is taken; 422 when the new deployment
/// fails (nothing is kept); 503 when the add-on's server is down or refuses.
#[utoipa::path(post, path = "/projects/{name}/addons", tag = "addons", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)), request_body = NewAddon,
    responses((status = 201, body = AddonChange), NeedsToken, ParamErrors, JsonBodyErrors, ErrorStatus<403>, ErrorStatus<404>,
        ErrorStatus<409>, ErrorStatus<503>))]
pub async fn create(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
    JsonBody(body): JsonBody<NewAddon>,
) -> ApiResult<(StatusCode, Json<AddonChange>)> {
    let project = project_for(&state, &user, &name, Role::Developer).await?;
    let (addon, deployment) = state.orchestrator.create_addon(&project, &body.kind, body.name.as_deref()).await?;
    let detail = format!("{} ({})", addon.name, addon.kind);
    state.audit(audit::by(&user, AuditAction::AddonCreated).on(&project).detail(detail)).await;
    let change = AddonChange { addon: addon.into(), deployment_version: deployment.map(|d| d.version) };
    Ok((StatusCode::CREATED, Json(change)))
}

/// One add-on and its config vars.
#[utoipa::path(get, path = "/projects/{name}/addons/{addon}", tag = "addons", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path), ("addon" = AddonNameSchema, Path)),
    responses((status = 200, body = AddonInfo), NeedsToken, ParamErrors, ErrorStatus<403>, ErrorStatus<404>, ErrorStatus<503>))]
pub async fn info(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam((name, addon)): PathParam<(String, String)>,
) -> ApiResult<Json<AddonInfo>> {
    let project = project_for(&state, &user, &name, Role::Developer).await?;
    let (addon, config) = state.orchestrator.addon_info(&project, &addon_name(&addon)?).await?;
    Ok(Json(AddonInfo {
        name: addon.name.to_string(),
        kind: addon.kind,
        created_at: addon.created_at.to_rfc3339(),
        config,
    }))
}

/// Unsets the add-on's config vars (a new deployment once the project has a build), then
/// destroys it and its data.
#[utoipa::path(delete, path = "/projects/{name}/addons/{addon}", tag = "addons", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path), ("addon" = AddonNameSchema, Path)),
    responses((status = 204, description = "destroyed"), NeedsToken, ParamErrors, ErrorStatus<403>, ErrorStatus<404>, ErrorStatus<422>,
        ErrorStatus<503>))]
pub async fn destroy(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam((name, addon)): PathParam<(String, String)>,
) -> ApiResult<StatusCode> {
    let project = project_for(&state, &user, &name, Role::Developer).await?;
    state.orchestrator.destroy_addon(&project, &addon_name(&addon)?).await?;
    state.audit(audit::by(&user, AuditAction::AddonDestroyed).on(&project).detail(addon)).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The add-on's data, streamed (for PostgreSQL, a `pg_dump --format=custom` archive). A
/// failure after the first bytes cuts the response short.
#[utoipa::path(get, path = "/projects/{name}/addons/{addon}/backup", tag = "addons", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path), ("addon" = AddonNameSchema, Path)),
    responses((status = 200, description = "the backup", content_type = "application/octet-stream", body = Vec<u8>),
        NeedsToken, ParamErrors, ErrorStatus<403>, ErrorStatus<404>, ErrorStatus<503>))]
pub async fn backup(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam((name, addon)): PathParam<(String, String)>,
) -> ApiResult<Response> {
    let project = project_for(&state, &user, &name, Role::Developer).await?;
    let addon = addon_name(&addon)?;
    // A missing add-on answers 404 before any byte is sent.
    state.orchestrator.addon_info(&project, &addon).await?;
    let (mut writer, reader) = tokio::io::duplex(BACKUP_BUFFER_BYTES);
    let (done, outcome) = tokio::sync::oneshot::channel::<Result<(), Error>>();
    let orchestrator = std::sync::Arc::clone(&state.orchestrator);
    let file_name = format!("{}-{addon}.dump", project.name);
    tokio::spawn(async move {
        let result = orchestrator.backup_addon(&project, &addon, &mut writer).await;
        if let Err(err) = &result {
            tracing::error!(project = %project.name, addon = %addon, error = %err, "add-on backup failed");
        }
        drop(writer);
        let _ = done.send(result);
    });
    // After the data, the outcome: a failed backup ends the body with an error, so the
    // client sees a cut transfer rather than a short file that looks whole.
    let tail = futures_util::stream::once(outcome).filter_map(|outcome| async move {
        match outcome {
            Ok(Ok(())) => None,
            Ok(Err(err)) => Some(Err(std::io::Error::other(err.to_string()))),
            Err(_) => Some(Err(std::io::Error::other("the backup stopped"))),
        }
    });
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{file_name}\"")),
    ];
    Ok((headers, Body::from_stream(ReaderStream::new(reader).chain(tail))).into_response())
}

/// Replaces the add-on's data with a backup streamed in the body. 400 when the body is not
/// such a backup; the data is left as it was when the restore fails.
#[utoipa::path(post, path = "/projects/{name}/addons/{addon}/restore", tag = "addons", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path), ("addon" = AddonNameSchema, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204, description = "restored"), NeedsToken, ParamErrors, ErrorStatus<403>, ErrorStatus<404>, ErrorStatus<413>,
        ErrorStatus<503>))]
pub async fn restore(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam((name, addon)): PathParam<(String, String)>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let project = project_for(&state, &user, &name, Role::Developer).await?;
    let addon = addon_name(&addon)?;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_RESTORE_BYTES) {
        let message = format!("a restore is at most {} GiB", MAX_RESTORE_BYTES >> 30);
        return Ok(crate::error::error_response(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message));
    }
    // A chunked body declares no length: it is cut off where it passes the limit, which
    // fails the restore (each kind restores all or nothing) and answers 413.
    let too_large = Arc::new(AtomicBool::new(false));
    let stream = at_most(body.into_data_stream().map_err(std::io::Error::other), MAX_RESTORE_BYTES, &too_large);
    let mut reader = StreamReader::new(stream);
    let restored = state.orchestrator.restore_addon(&project, &addon, &mut reader).await;
    if too_large.load(Ordering::Relaxed) {
        let message = format!("a restore is at most {} GiB", MAX_RESTORE_BYTES >> 30);
        return Ok(crate::error::error_response(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message));
    }
    restored?;
    state.audit(audit::by(&user, AuditAction::AddonRestored).on(&project).detail(addon.to_string())).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The chunks of `stream` while they total at most `limit` bytes; past it, one error (and
/// `exceeded` set), then the end.
fn at_most<S>(stream: S, limit: u64, exceeded: &Arc<AtomicBool>) -> impl Stream<Item = std::io::Result<Bytes>> + use<S>
where
    S: Stream<Item = std::io::Result<Bytes>>,
{
    let exceeded = Arc::clone(exceeded);
    let mut total = 0u64;
    stream
        .map(move |chunk| {
            let chunk = chunk?;
            total = total.saturating_add(chunk.len() as u64);
            if total > limit {
                exceeded.store(true, Ordering::Relaxed);
                return Err(std::io::Error::other(format!("the body is over {limit} bytes")));
            }
            Ok(chunk)
        })
        .scan(false, |failed, item| {
            // Nothing after the first error: the reader must not see the rest as data.
            let stop = *failed;
            *failed |= item.is_err();
            std::future::ready((!stop).then_some(item))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_is_cut_off_past_the_limit() {
        let chunks = || futures_util::stream::iter([b"abcd", b"efgh", b"ijkl"].map(|c| Ok(Bytes::from_static(c))));
        let exceeded = Arc::new(AtomicBool::new(false));
        let items: Vec<_> = at_most(chunks(), 12, &exceeded).collect().await;
        assert_eq!(items.len(), 3);
        assert!(items.iter().all(Result::is_ok) && !exceeded.load(Ordering::Relaxed));

        let items: Vec<_> = at_most(chunks(), 7, &exceeded).collect().await;
        assert_eq!(items.len(), 2, "one chunk, then one error, then nothing");
        assert!(items[0].is_ok() && items[1].is_err());
        assert!(exceeded.load(Ordering::Relaxed));
    }
}
