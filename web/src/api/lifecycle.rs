//! Stop, start and restart a project's processes (`paastech stop|start|restart`): the
//! owner's (or an admin's) calls; another user's project answers 404 like a missing one.

use axum::Json;
use axum::extract::State;
use paastech_core::AuditAction;
use paastech_core::Role;
use paastech_core::{Error, Stopped};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{NeedsToken, ParamErrors, RawBodyErrors};
use super::projects::project_for;
use super::schemas::ProjectNameSchema;
use super::{PathParam, RawBody};
use crate::AppState;
use crate::audit;
use crate::auth::CurrentUser;
use crate::error::{ApiResult, ErrorStatus};

/// The longest process type name accepted (a Procfile's are short words).
const MAX_PROCESS_BYTES: usize = 64;

#[derive(Deserialize, ToSchema, Default)]
pub struct ProcessRequest {
    /// Only this process type (a name from the Procfile, such as `web` or `worker`);
    /// absent: every process of the project.
    #[schema(example = "web")]
    pub process: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct StoppedView {
    /// Whether the whole project is stopped (every process type, also ones a later push
    /// adds).
    pub stopped: bool,
    /// The process types kept stopped, by name: of the live deployment's when the whole
    /// project is stopped.
    pub stopped_processes: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RestartView {
    /// The instances replaced, as `TYPE.N`, in the order they were.
    pub restarted: Vec<String>,
}

/// The body's `process`: none, an empty body or `null` means every process.
fn process_of(body: &[u8]) -> Result<Option<String>, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let request = serde_json::from_slice::<Option<ProcessRequest>>(body)
        .map_err(|err| Error::Invalid(format!("invalid request body: {err}")))?
        .unwrap_or_default();
    match request.process {
        Some(process) if process.is_empty() || process.len() > MAX_PROCESS_BYTES => Err(Error::Invalid(format!(
            "process: give a process type of the Procfile (1 to {MAX_PROCESS_BYTES} bytes), or none for every process"
        ))),
        other => Ok(other),
    }
}

pub(crate) async fn stopped_view(state: &AppState, project: &paastech_core::Project, stopped: &Stopped) -> StoppedView {
    if stopped.is_empty() {
        return StoppedView { stopped: false, stopped_processes: Vec::new() };
    }
    let known = state.orchestrator.process_types(project).await.unwrap_or_default();
    StoppedView { stopped: stopped.is_all(), stopped_processes: stopped.of(known.iter().map(String::as_str)) }
}

/// Stops the project's instances, or those of one process type, and keeps them stopped
/// (across server restarts, pushes and config changes) until `start`. Deployments and
/// config stay. With `web` stopped, the app's addresses answer 503 "app stopped".
#[utoipa::path(post, path = "/projects/{name}/stop", tag = "deployments", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)),
    request_body(content = Option<ProcessRequest>, content_type = "application/json",
        description = "optional: absent or empty stops every process"),
    responses((status = 200, body = StoppedView), NeedsToken, ParamErrors, RawBodyErrors, ErrorStatus<403>, ErrorStatus<404>))]
pub async fn stop(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
    RawBody(body): RawBody,
) -> ApiResult<Json<StoppedView>> {
    let project = project_for(&state, &user, &name, Role::Developer).await?;
    let process = process_of(&body)?;
    let stopped = state.orchestrator.stop(&project, process.as_deref()).await?;
    tracing::info!(project = %project.name, user = user.id, process = process.as_deref().unwrap_or("*"), "stopped");
    state.audit(audit::by(&user, AuditAction::Stopped).on(&project).detail(process_detail(process.as_deref()))).await;
    Ok(Json(stopped_view(&state, &project, &stopped).await))
}

/// Starts what `stop` stopped (of one process type when given) in the live deployment.
/// Answers once its web instances pass their health check, or 422 with the reason (it
/// stays stopped).
#[utoipa::path(post, path = "/projects/{name}/start", tag = "deployments", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)),
    request_body(content = Option<ProcessRequest>, content_type = "application/json",
        description = "optional: absent or empty starts every process"),
    responses((status = 200, body = StoppedView), NeedsToken, ParamErrors, RawBodyErrors, ErrorStatus<403>, ErrorStatus<404>, ErrorStatus<422>))]
pub async fn start(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
    RawBody(body): RawBody,
) -> ApiResult<Json<StoppedView>> {
    let project = project_for(&state, &user, &name, Role::Developer).await?;
    let process = process_of(&body)?;
    let stopped = state.orchestrator.start(&project, process.as_deref()).await?;
    tracing::info!(project = %project.name, user = user.id, process = process.as_deref().unwrap_or("*"), "started");
    state.audit(audit::by(&user, AuditAction::Started).on(&project).detail(process_detail(process.as_deref()))).await;
    Ok(Json(stopped_view(&state, &project, &stopped).await))
}

/// Replaces the live deployment's instances (of one process type when given) one by one:
/// each new web instance answers its health check before traffic moves to it and the old
/// one is drained and stopped, so no request fails. A stopped project or type answers 409
/// (start it instead); a new instance that fails answers 422 and the old one keeps serving.
#[utoipa::path(post, path = "/projects/{name}/restart", tag = "deployments", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)),
    request_body(content = Option<ProcessRequest>, content_type = "application/json",
        description = "optional: absent or empty restarts every process"),
    responses((status = 200, body = RestartView), NeedsToken, ParamErrors, RawBodyErrors, ErrorStatus<403>, ErrorStatus<404>,
        ErrorStatus<409>, ErrorStatus<422>, ErrorStatus<503>))]
pub async fn restart(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
    RawBody(body): RawBody,
) -> ApiResult<Json<RestartView>> {
    let project = project_for(&state, &user, &name, Role::Developer).await?;
    let process = process_of(&body)?;
    let restarted = state.orchestrator.restart(&project, process.as_deref()).await?;
    tracing::info!(project = %project.name, user = user.id, instances = restarted.len(), "restarted");
    state.audit(audit::by(&user, AuditAction::Restarted).on(&project).detail(process_detail(process.as_deref()))).await;
    Ok(Json(RestartView { restarted }))
}

/// A stop, start or restart's detail: the process type, or the whole project.
pub(crate) fn process_detail(process: Option<&str>) -> String {
    process.map_or_else(|| "all processes".to_owned(), |process| format!("process {process}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_is_read_from_an_optional_body() {
        let cases: &[(&str, Result<Option<&str>, ()>)] = &[
            ("", Ok(None)),
            ("  \n", Ok(None)),
            ("null", Ok(None)),
            ("{}", Ok(None)),
            (r#"{"process": null}"#, Ok(None)),
            (r#"{"process": "worker"}"#, Ok(Some("worker"))),
            (r#"{"process": ""}"#, Err(())),
            (r#"{"process": 3}"#, Err(())),
            ("[", Err(())),
        ];
        for (body, expected) in cases {
            let got = process_of(body.as_bytes()).map_err(|_| ());
            assert_eq!(got.as_ref().map(|p| p.as_deref()), expected.as_ref().map(|p| *p), "{body:?}");
        }
        assert!(process_of(format!(r#"{{"process": "{}"}}"#, "w".repeat(65)).as_bytes()).is_err());
    }
}
