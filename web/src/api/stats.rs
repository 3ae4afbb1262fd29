//! What a project's instances use: CPU, memory and restarts now, and the last hour.

use axum::Json;
use axum::extract::State;
use paastech_core::Role;
use paastech_core::orchestrator::ProjectStats;
use serde::Serialize;
use utoipa::ToSchema;

use super::PathParam;
use super::extract::{NeedsToken, ParamErrors};
use super::projects::{InstanceView, project_for};
use super::schemas::ProjectNameSchema;
use crate::AppState;
use crate::auth::CurrentUser;
use crate::error::{ApiResult, ErrorStatus};

#[derive(Serialize, ToSchema)]
pub struct StatsView {
    pub instances: Vec<InstanceStatsView>,
    /// The project's instances together, oldest first: a point every 30 s (and one per
    /// request) over the last hour, since the server started.
    pub history: Vec<StatsPointView>,
}

#[derive(Serialize, ToSchema)]
pub struct InstanceStatsView {
    #[serde(flatten)]
    pub instance: InstanceView,
    /// Percent of one CPU since the reading before (two busy CPUs: 200); null for a first
    /// reading, or where the runtime cannot tell.
    pub cpu_percent: Option<f64>,
    /// Memory in use now; null where the runtime cannot tell.
    pub memory_bytes: Option<u64>,
    /// The instance's memory limit, when it has one.
    pub memory_limit_bytes: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct StatsPointView {
    pub at: String,
    pub cpu_percent: Option<f64>,
    pub memory_bytes: Option<u64>,
}

impl From<ProjectStats> for StatsView {
    fn from(stats: ProjectStats) -> Self {
        StatsView {
            instances: stats
                .instances
                .into_iter()
                .map(|i| InstanceStatsView {
                    cpu_percent: i.cpu_percent.map(round),
                    memory_bytes: i.memory_bytes,
                    memory_limit_bytes: i.memory_limit_bytes,
                    instance: i.instance.into(),
                })
                .collect(),
            history: stats
                .history
                .into_iter()
                .map(|p| StatsPointView {
                    at: p.at.to_rfc3339(),
                    cpu_percent: p.cpu_percent.map(round),
                    memory_bytes: p.memory_bytes,
                })
                .collect(),
        }
    }
}

/// Two decimals are all a CPU share read over seconds can tell.
fn round(percent: f64) -> f64 {
    (percent * 100.0).round() / 100.0
}

/// The project's instances with their CPU share, memory and restarts, and the last hour
/// of the project's CPU and memory.
#[utoipa::path(get, path = "/projects/{name}/stats", tag = "deployments", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)),
    responses((status = 200, body = StatsView), NeedsToken, ParamErrors, ErrorStatus<404>))]
pub async fn get(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
) -> ApiResult<Json<StatsView>> {
    let project = project_for(&state, &user, &name, Role::Viewer).await?;
    Ok(Json(state.orchestrator.stats(&project.name).await?.into()))
}
