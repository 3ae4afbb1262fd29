//! A project's sleep (scale to zero, `paastech sleep on|off`): whether its web instances
//! stop after an idle time with no request, and whether they are asleep now. A request
//! for a sleeping app is held by the ingress while it wakes.

use axum::Json;
use axum::extract::State;
use paastech_core::Role;
use paastech_core::orchestrator::SleepChange;
use paastech_core::sleep::SleepState;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{JsonBodyErrors, NeedsToken, ParamErrors};
use super::projects::project_for;
use super::schemas::ProjectNameSchema;
use super::{JsonBody, PathParam};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::error::{ApiResult, ErrorStatus};

#[derive(Serialize, ToSchema)]
pub struct SleepView {
    /// Whether the web instances stop after `after_minutes` without a request.
    pub enabled: bool,
    /// The idle time before they do, in minutes.
    #[schema(example = 30)]
    pub after_minutes: u32,
    /// Whether running instances of other process types (a worker) keep the project
    /// awake; when false only web requests count.
    pub workers_keep_awake: bool,
    /// Whether the web instances are asleep now (the next request wakes them).
    pub asleep: bool,
    /// Why the last wake failed, until one succeeds.
    pub wake_error: Option<String>,
}

impl From<SleepState> for SleepView {
    fn from(state: SleepState) -> Self {
        SleepView {
            enabled: state.enabled,
            after_minutes: state.after_minutes,
            workers_keep_awake: state.workers_keep_awake,
            asleep: state.asleep,
            wake_error: state.wake_error,
        }
    }
}

/// Turns sleep on or off. Absent fields keep their value (30 minutes at first).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SleepRequest {
    pub enabled: bool,
    /// Minutes without a request before the web instances stop (1 to 10080, a week).
    #[schema(minimum = 1, maximum = 10080, example = 30)]
    pub after_minutes: Option<u32>,
    /// Whether running instances of other process types keep the project awake.
    pub workers_keep_awake: Option<bool>,
}

/// The project's sleep settings and whether it is asleep.
#[utoipa::path(get, path = "/projects/{name}/sleep", tag = "projects", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)),
    responses((status = 200, body = SleepView), NeedsToken, ParamErrors, ErrorStatus<404>))]
pub async fn get(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
) -> ApiResult<Json<SleepView>> {
    let project = project_for(&state, &user, &name, Role::Viewer).await?;
    Ok(Json(state.orchestrator.sleep_state(&project).await?.into()))
}

/// Changes the project's sleep settings (`paastech sleep on|off [--after MINUTES]`).
/// Turning it off wakes a sleeping project before answering (422 when its web does not
/// start).
#[utoipa::path(put, path = "/projects/{name}/sleep", tag = "projects", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)), request_body = SleepRequest,
    responses((status = 200, body = SleepView), NeedsToken, ParamErrors, JsonBodyErrors, ErrorStatus<403>, ErrorStatus<404>, ErrorStatus<422>))]
pub async fn put(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
    JsonBody(body): JsonBody<SleepRequest>,
) -> ApiResult<Json<SleepView>> {
    let project = project_for(&state, &user, &name, Role::Developer).await?;
    if let Some(minutes) = body.after_minutes {
        SleepState::check_after_minutes(minutes)?;
    }
    let change = SleepChange {
        enabled: body.enabled,
        after_minutes: body.after_minutes,
        workers_keep_awake: body.workers_keep_awake,
    };
    let slept = state.orchestrator.set_sleep(&project, change).await?;
    tracing::info!(project = %project.name, user = user.id, enabled = slept.enabled, after_minutes = slept.after_minutes, "sleep set");
    Ok(Json(slept.into()))
}
