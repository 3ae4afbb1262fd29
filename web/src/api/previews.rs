//! A project's preview apps: whether pushes to its other branches make them, and which
//! there are. Each preview is a project of its own (`/projects/{preview}` shows it).

use axum::Json;
use axum::extract::State;
use paastech_core::AuditAction;
use paastech_core::Project;
use paastech_core::Role;
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

#[derive(Serialize, ToSchema)]
pub struct PreviewsView {
    /// Whether a push to a branch other than main (or master) deploys it as a preview app.
    pub enabled: bool,
    /// The project's preview apps, by name.
    pub previews: Vec<PreviewView>,
}

#[derive(Serialize, ToSchema)]
pub struct PreviewView {
    /// The preview's own project name, `BRANCH--PROJECT`.
    pub name: String,
    /// The branch it deploys.
    pub branch: String,
    /// Where it is served.
    pub url: String,
    /// Its live version, or null while none is live.
    pub live_version: Option<i64>,
    pub created_at: String,
}

/// Turns previews on or off. Off removes every preview app the project has.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewsChange {
    pub enabled: bool,
}

async fn view(state: &AppState, project: &Project) -> paastech_core::Result<PreviewsView> {
    let mut previews = Vec::new();
    for preview in state.orchestrator.previews(project).await? {
        let live_version = state.store.live_deployment(preview.id).await?.map(|d| d.version);
        previews.push(PreviewView {
            url: state.urls.app_url(preview.name.as_str()),
            branch: preview.preview.as_ref().map(|of| of.branch.clone()).unwrap_or_default(),
            name: preview.name.to_string(),
            live_version,
            created_at: preview.created_at.to_rfc3339(),
        });
    }
    Ok(PreviewsView { enabled: project.previews_enabled, previews })
}

/// Whether the project makes preview apps, and those it has.
#[utoipa::path(get, path = "/projects/{name}/previews", tag = "projects", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)),
    responses((status = 200, body = PreviewsView), NeedsToken, ParamErrors, ErrorStatus<404>))]
pub async fn get(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
) -> ApiResult<Json<PreviewsView>> {
    let project = project_for(&state, &user, &name, Role::Viewer).await?;
    Ok(Json(view(&state, &project).await?))
}

/// Turns the project's previews on or off (`paastech previews on|off`); off removes its
/// preview apps. 400 for a preview app itself (its parent has the setting).
#[utoipa::path(put, path = "/projects/{name}/previews", tag = "projects", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)), request_body = PreviewsChange,
    responses((status = 200, body = PreviewsView), NeedsToken, ParamErrors, JsonBodyErrors, ErrorStatus<403>, ErrorStatus<404>))]
pub async fn put(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
    JsonBody(body): JsonBody<PreviewsChange>,
) -> ApiResult<Json<PreviewsView>> {
    let project = project_for(&state, &user, &name, Role::Developer).await?;
    let project = state.orchestrator.set_previews(&project, body.enabled).await?;
    let detail = if body.enabled { "on" } else { "off" };
    state.audit(audit::by(&user, AuditAction::PreviewsChanged).on(&project).detail(detail)).await;
    Ok(Json(view(&state, &project).await?))
}
