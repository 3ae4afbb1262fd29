//! Projects and what belongs to them. Every route checks ownership: a project of someone
//! else answers 404, so its existence is not revealed. Admins may see and act on all.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use paastech_core::audit::env_change_detail;
use paastech_core::drivers::LogSink;
use paastech_core::store::EnvChanges;
use paastech_core::{
    AuditAction, AuditRecord, Deployment, EnvVars, Error, Project, ProjectName, Role, User, validate_env_key,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::domains::CertificateView;
use super::extract::{JsonBodyErrors, NeedsToken, ParamErrors, RawBodyErrors};
use super::schemas::{EnvChangesSchema, EnvSchema, ProjectNameSchema, ScaleChangeSchema, ScaleSchema};
use super::{JsonBody, PathParam, QueryParams, RawBody};
use crate::AppState;
use crate::audit;
use crate::auth::CurrentUser;
use crate::error::{ApiResult, ErrorStatus};

/// The most instances of one process type a project may ask for.
pub const MAX_INSTANCES: u32 = 20;
/// The largest env value accepted.
pub const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;

#[derive(Deserialize, ToSchema)]
pub struct NewProject {
    /// Unique on the server.
    #[schema(value_type = ProjectNameSchema)]
    pub name: String,
}

#[derive(Serialize, ToSchema)]
pub struct ProjectView {
    pub name: String,
    /// Where to `git push`.
    pub git_url: String,
    /// Where the app is served.
    pub url: String,
    pub owner: String,
    /// The caller's role on the project: `owner`, `developer` or `viewer` (an admin is an
    /// owner of every project).
    pub role: String,
    pub created_at: String,
    /// The status of the newest deployment, or null before the first push.
    pub status: Option<String>,
    pub live_version: Option<i64>,
    /// The HTTPS certificate of `NAME.<domain>`; null when the server obtains none by ACME.
    pub certificate: Option<CertificateView>,
    /// Whether the whole project is stopped (`paastech stop`).
    pub stopped: bool,
    /// The process types kept stopped (`paastech stop [--process TYPE]`).
    pub stopped_processes: Vec<String>,
    /// Whether pushes to other branches make preview apps (`paastech previews on`).
    pub previews_enabled: bool,
    /// Whether its web instances are asleep (`paastech sleep`): the next request wakes them.
    pub asleep: bool,
    /// Set when this project is the preview app of another's branch.
    pub preview_of: Option<PreviewOfView>,
}

#[derive(Serialize, ToSchema)]
pub struct PreviewOfView {
    /// The project previewed.
    pub project: String,
    /// Its branch this app deploys.
    pub branch: String,
}

#[derive(Serialize, ToSchema)]
pub struct DeploymentView {
    pub version: i64,
    pub status: String,
    pub commit: Option<String>,
    pub cause: String,
    pub failure: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<Deployment> for DeploymentView {
    fn from(d: Deployment) -> Self {
        DeploymentView {
            version: d.version,
            status: d.status.as_str().to_owned(),
            commit: d.commit,
            cause: d.cause,
            failure: d.failure,
            created_at: d.created_at.to_rfc3339(),
            updated_at: d.updated_at.to_rfc3339(),
        }
    }
}

/// The project named in the path, if the caller may do what needs `needed` on it: the
/// one door to a project for every API route and UI page (the role itself is decided by
/// `Orchestrator::role_of`). A non-member gets exactly the answer for a project that does
/// not exist, so a project's existence is not revealed; a member lacking the role gets 403
/// naming the role needed.
pub(crate) async fn project_for(state: &AppState, user: &User, name: &str, needed: Role) -> Result<Project, Error> {
    project_and_role(state, user, name, needed).await.map(|(project, _)| project)
}

/// [`project_for`], with the caller's role.
pub(crate) async fn project_and_role(
    state: &AppState,
    user: &User,
    name: &str,
    needed: Role,
) -> Result<(Project, Role), Error> {
    let not_found = || Error::NotFound(format!("project {name:?} not found"));
    let parsed = ProjectName::parse(name).map_err(|_| not_found())?;
    let project = state.store.project(&parsed).await.map_err(|err| match err {
        Error::NotFound(_) => not_found(),
        other => other,
    })?;
    match state.orchestrator.role_of(user, &project).await? {
        None => Err(not_found()),
        Some(role) if !role.allows(needed) => Err(role.refusal(needed, name)),
        Some(role) => Ok((project, role)),
    }
}

async fn view(state: &AppState, project: Project, role: Role) -> Result<ProjectView, Error> {
    let owner = state.store.user(project.owner_id).await?.email;
    let latest = state.store.deployments(project.id, 1).await?;
    let status = latest.first().map(|d| d.status.as_str().to_owned());
    let live_version = state.store.live_deployment(project.id).await?.map(|d| d.version);
    let stopped = state.orchestrator.stopped(&project).await?;
    let asleep = state.orchestrator.sleep_state(&project).await?.asleep;
    let stopped_view = super::lifecycle::stopped_view(state, &project, &stopped).await;
    let preview_of = match &project.preview {
        Some(of) => Some(PreviewOfView {
            project: state.store.project_by_id(of.parent_id).await?.name.to_string(),
            branch: of.branch.clone(),
        }),
        None => None,
    };
    let name = project.name.as_str();
    Ok(ProjectView {
        previews_enabled: project.previews_enabled,
        asleep,
        preview_of,
        stopped: stopped_view.stopped,
        stopped_processes: stopped_view.stopped_processes,
        git_url: state.urls.git_url(name),
        url: state.urls.app_url(name),
        name: name.to_owned(),
        owner,
        role: role.as_str().to_owned(),
        created_at: project.created_at.to_rfc3339(),
        status,
        live_version,
        certificate: state
            .orchestrator
            .app_host(&project.name)
            .and_then(|host| state.orchestrator.certificate(&host))
            .map(CertificateView::from),
    })
}

/// The projects `user` is a member of, with their role, by name: those they own, those
/// they have a row on and the previews of these (an admin's: every project, as owner).
pub(crate) async fn member_projects(state: &AppState, user: &User) -> Result<Vec<(Project, Role)>, Error> {
    if user.is_admin {
        return Ok(state.store.projects(None).await?.into_iter().map(|p| (p, Role::Owner)).collect());
    }
    let mut projects: Vec<(Project, Role)> =
        state.store.projects(Some(user.id)).await?.into_iter().map(|p| (p, Role::Owner)).collect();
    for (project, role) in state.store.collaborations(user.id).await? {
        for preview in state.store.previews(project.id).await? {
            projects.push((preview, role));
        }
        projects.push((project, role));
    }
    projects.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    projects.dedup_by_key(|(project, _)| project.id);
    Ok(projects)
}

/// The projects the caller is a member of, with their role (an admin sees all).
#[utoipa::path(get, path = "/projects", tag = "projects", security(("bearer" = [])),
    responses((status = 200, body = Vec<ProjectView>), NeedsToken))]
pub async fn list(State(state): State<AppState>, CurrentUser(user): CurrentUser) -> ApiResult<Json<Vec<ProjectView>>> {
    use futures_util::{StreamExt, TryStreamExt};
    let projects = member_projects(&state, &user).await?;
    // A few projects' queries at once, as the web UI's dashboard does.
    let views = futures_util::stream::iter(projects)
        .map(|(project, role)| view(&state, project, role))
        .buffered(crate::PARALLEL_QUERIES)
        .try_collect()
        .await?;
    Ok(Json(views))
}

#[utoipa::path(post, path = "/projects", tag = "projects", security(("bearer" = [])), request_body = NewProject,
    responses((status = 201, body = ProjectView), NeedsToken, JsonBodyErrors, ErrorStatus<409>))]
pub async fn create(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    JsonBody(body): JsonBody<NewProject>,
) -> ApiResult<(StatusCode, Json<ProjectView>)> {
    let name = ProjectName::parse(&body.name)?;
    crate::email::require_verified(&state, &user)?;
    let project = state.orchestrator.create_project(user.id, &name).await?;
    tracing::info!(project = %name, user = user.id, "project created");
    state.audit(audit::by(&user, AuditAction::ProjectCreated).on(&project)).await;
    Ok((StatusCode::CREATED, Json(view(&state, project, Role::Owner).await?)))
}

#[utoipa::path(get, path = "/projects/{name}", tag = "projects", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)), responses((status = 200, body = ProjectView), NeedsToken, ParamErrors, ErrorStatus<404>))]
pub async fn get(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
) -> ApiResult<Json<ProjectView>> {
    let (project, role) = project_and_role(&state, &user, &name, Role::Viewer).await?;
    Ok(Json(view(&state, project, role).await?))
}

/// Deletes the project, its repository, its deployments and its running instances.
#[utoipa::path(delete, path = "/projects/{name}", tag = "projects", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)), responses((status = 204, description = "deleted"), NeedsToken, ParamErrors, ErrorStatus<403>, ErrorStatus<404>))]
pub async fn delete(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
) -> ApiResult<StatusCode> {
    let project = project_for(&state, &user, &name, Role::Owner).await?;
    state.orchestrator.delete_project(&project).await?;
    tracing::info!(project = %project.name, user = user.id, "project deleted");
    state.audit(audit::by(&user, AuditAction::ProjectDeleted).on(&project)).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/projects/{name}/env", tag = "config", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)), responses((status = 200, body = EnvSchema), NeedsToken, ParamErrors, ErrorStatus<403>, ErrorStatus<404>))]
pub async fn get_env(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
) -> ApiResult<Json<EnvVars>> {
    let project = project_for(&state, &user, &name, Role::Developer).await?;
    Ok(Json(state.store.env(project.id).await?))
}

pub(crate) fn check_env_changes(changes: &EnvChanges) -> Result<(), Error> {
    if changes.is_empty() {
        return Err(Error::Invalid("no changes: send {\"KEY\": \"value\"} to set, {\"KEY\": null} to unset".into()));
    }
    for (key, value) in changes {
        validate_env_key(key)?;
        if let Some(value) = value {
            if value.len() > MAX_ENV_VALUE_BYTES {
                return Err(Error::Invalid(format!("value of {key} too long: at most {MAX_ENV_VALUE_BYTES} bytes")));
            }
            if value.contains('\0') {
                return Err(Error::Invalid(format!("value of {key} contains a NUL byte")));
            }
        }
    }
    Ok(())
}

/// `{"KEY": "value"}` sets, `{"KEY": null}` unsets; answers the whole resulting env. Once
/// the project has a build, a change makes a new deployment and is kept only if that
/// deployment goes live (otherwise 422, and nothing changed).
#[utoipa::path(patch, path = "/projects/{name}/env", tag = "config", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)), request_body = EnvChangesSchema,
    responses((status = 200, body = EnvSchema), NeedsToken, ParamErrors, JsonBodyErrors, ErrorStatus<403>, ErrorStatus<404>, ErrorStatus<422>))]
pub async fn patch_env(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
    JsonBody(changes): JsonBody<EnvChanges>,
) -> ApiResult<Json<EnvVars>> {
    let project = project_for(&state, &user, &name, Role::Developer).await?;
    check_env_changes(&changes)?;
    let (env, _) = state.orchestrator.update_env(&project, &changes).await?;
    tracing::info!(project = %project.name, keys = changes.len(), "env changed");
    state.audit(audit::by(&user, AuditAction::EnvChanged).on(&project).detail(env_change_detail(&changes))).await;
    Ok(Json(env))
}

#[utoipa::path(get, path = "/projects/{name}/scale", tag = "config", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)), responses((status = 200, body = ScaleSchema), NeedsToken, ParamErrors, ErrorStatus<404>))]
pub async fn get_scale(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
) -> ApiResult<Json<BTreeMap<String, u32>>> {
    let project = project_for(&state, &user, &name, Role::Viewer).await?;
    Ok(Json(state.store.scale(project.id).await?))
}

/// The record of a redeploy (`rolled_back_to`: none) or a rollback that made `deployment`.
pub(crate) fn redeploy_record(
    user: &User,
    project: &Project,
    rolled_back_to: Option<i64>,
    deployment: &Deployment,
) -> AuditRecord {
    let record = match rolled_back_to {
        Some(version) => {
            audit::by(user, AuditAction::Rollback).detail(format!("to v{version}, as v{}", deployment.version))
        }
        None => audit::by(user, AuditAction::Deployed).detail(format!("v{} (redeploy)", deployment.version)),
    };
    record.on(project)
}

/// A scale change's detail: `web=2 worker=1`.
pub(crate) fn scale_detail(scale: &BTreeMap<String, u32>) -> String {
    scale.iter().map(|(process, count)| format!("{process}={count}")).collect::<Vec<_>>().join(" ")
}

pub(crate) fn check_scale(scale: &BTreeMap<String, u32>) -> Result<(), Error> {
    if scale.is_empty() {
        return Err(Error::Invalid("no process types: send {\"web\": 2}".into()));
    }
    for (process, count) in scale {
        let valid = !process.is_empty()
            && process.len() <= 63
            && process.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(Error::Invalid(format!("invalid process type {process:?}")));
        }
        if *count > MAX_INSTANCES {
            return Err(Error::Invalid(format!(
                "{process}={count}: at most {MAX_INSTANCES} instances per process type"
            )));
        }
    }
    Ok(())
}

#[utoipa::path(put, path = "/projects/{name}/scale", tag = "config", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)), request_body = ScaleChangeSchema,
    responses((status = 200, body = ScaleSchema), NeedsToken, ParamErrors, JsonBodyErrors, ErrorStatus<403>, ErrorStatus<404>, ErrorStatus<422>))]
pub async fn put_scale(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
    JsonBody(scale): JsonBody<BTreeMap<String, u32>>,
) -> ApiResult<Json<BTreeMap<String, u32>>> {
    let project = project_for(&state, &user, &name, Role::Developer).await?;
    check_scale(&scale)?;
    let scaled = state.orchestrator.scale(&project, &scale).await?;
    state.audit(audit::by(&user, AuditAction::Scaled).on(&project).detail(scale_detail(&scale))).await;
    Ok(Json(scaled))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// How many, newest first (default 50; below 1 counts as 1, above 500 as 500).
    #[param(nullable = false, example = 20)]
    pub limit: Option<i64>,
}

/// Newest first.
#[utoipa::path(get, path = "/projects/{name}/deployments", tag = "deployments", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path), Page), responses((status = 200, body = Vec<DeploymentView>), NeedsToken, ParamErrors, ErrorStatus<404>))]
pub async fn list_deployments(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
    QueryParams(page): QueryParams<Page>,
) -> ApiResult<Json<Vec<DeploymentView>>> {
    let project = project_for(&state, &user, &name, Role::Viewer).await?;
    let limit = page.limit.unwrap_or(50).clamp(1, 500);
    let deployments = state.store.deployments(project.id, limit).await?;
    Ok(Json(deployments.into_iter().map(Into::into).collect()))
}

/// A project's own instance limits; null means the server's default.
#[derive(Serialize, Deserialize, ToSchema, Default, Debug, PartialEq)]
pub struct LimitsBody {
    /// Memory of each instance, in MiB (16 to 65536).
    #[schema(minimum = 16, maximum = 65536, example = 256)]
    pub memory_mb: Option<u64>,
    /// CPUs of each instance (0.01 to 64); ignored by the process runtime.
    #[schema(minimum = 0.01, maximum = 64.0, example = 0.5)]
    pub cpus: Option<f64>,
}

impl LimitsBody {
    fn check(&self) -> Result<paastech_core::drivers::Limits, Error> {
        if let Some(mb) = self.memory_mb
            && !(16..=65_536).contains(&mb)
        {
            return Err(Error::Invalid(format!("memory_mb={mb}: use 16 to 65536 (MiB), or null for the default")));
        }
        if let Some(cpus) = self.cpus
            && !(0.01..=64.0).contains(&cpus)
        {
            return Err(Error::Invalid(format!("cpus={cpus}: use 0.01 to 64, or null for the default")));
        }
        Ok(paastech_core::drivers::Limits { memory_bytes: self.memory_mb.map(|mb| mb * 1024 * 1024), cpus: self.cpus })
    }

    fn of(limits: paastech_core::drivers::Limits) -> Self {
        LimitsBody { memory_mb: limits.memory_bytes.map(|b| b / (1024 * 1024)), cpus: limits.cpus }
    }
}

#[utoipa::path(get, path = "/projects/{name}/limits", tag = "config", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)), responses((status = 200, body = LimitsBody), NeedsToken, ParamErrors, ErrorStatus<404>))]
pub async fn get_limits(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
) -> ApiResult<Json<LimitsBody>> {
    let project = project_for(&state, &user, &name, Role::Viewer).await?;
    Ok(Json(LimitsBody::of(state.store.limits(project.id).await?)))
}

/// Sets the project's instance limits, overriding the server's defaults. Once the project
/// has a build this makes a new deployment; if that fails (422), nothing changed.
#[utoipa::path(put, path = "/projects/{name}/limits", tag = "config", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)), request_body = LimitsBody,
    responses((status = 200, body = LimitsBody), NeedsToken, ParamErrors, JsonBodyErrors, ErrorStatus<403>, ErrorStatus<404>, ErrorStatus<422>))]
pub async fn put_limits(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
    JsonBody(body): JsonBody<LimitsBody>,
) -> ApiResult<Json<LimitsBody>> {
    let project = project_for(&state, &user, &name, Role::Developer).await?;
    let limits = body.check()?;
    state.orchestrator.set_limits(&project, &limits).await?;
    let now = LimitsBody::of(state.store.limits(project.id).await?);
    let detail = serde_json::to_string(&now).unwrap_or_default();
    state.audit(audit::by(&user, AuditAction::LimitsChanged).on(&project).detail(detail)).await;
    Ok(Json(now))
}

#[derive(Deserialize, ToSchema, Default)]
pub struct DeployRequest {
    /// Roll back to this version (its build and its config); absent: deploy the latest
    /// build again with the current config.
    pub version: Option<i64>,
}

/// Redeploys, or rolls back to `version`. Answers once the new deployment is live, or 422
/// with the reason if it failed (the previous deployment keeps serving).
#[utoipa::path(post, path = "/projects/{name}/deployments", tag = "deployments", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)),
    request_body(content = Option<DeployRequest>, content_type = "application/json",
        description = "optional: absent or empty redeploys the latest build"),
    responses((status = 201, body = DeploymentView), NeedsToken, ParamErrors, RawBodyErrors, ErrorStatus<403>, ErrorStatus<404>, ErrorStatus<422>))]
pub async fn create_deployment(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
    RawBody(body): RawBody,
) -> ApiResult<(StatusCode, Json<DeploymentView>)> {
    let project = project_for(&state, &user, &name, Role::Developer).await?;
    // No body, an empty one or `null`: the latest build again.
    let request: DeployRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DeployRequest::default()
    } else {
        serde_json::from_slice::<Option<DeployRequest>>(&body)
            .map_err(|err| Error::Invalid(format!("invalid request body: {err}")))?
            .unwrap_or_default()
    };
    let deployment = state.orchestrator.redeploy(&project, request.version).await?;
    state.audit(redeploy_record(&user, &project, request.version, &deployment)).await;
    Ok((StatusCode::CREATED, Json(deployment.into())))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Keep the response open and stream new lines.
    #[param(nullable = false)]
    pub follow: Option<bool>,
    /// How many past lines to start with (default 100; above 10000 counts as 10000).
    #[param(nullable = false, minimum = 0, example = 100)]
    pub lines: Option<usize>,
}

/// The project's log as plain text, one line per entry: its instances' output and the
/// platform's notes. With `follow=true` the response streams new lines as they come.
#[utoipa::path(get, path = "/projects/{name}/logs", tag = "deployments", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path), LogQuery),
    responses((status = 200, content_type = "text/plain", body = String), NeedsToken, ParamErrors, ErrorStatus<404>))]
pub async fn logs(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
    QueryParams(query): QueryParams<LogQuery>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let project = project_for(&state, &user, &name, Role::Viewer).await?;
    let hub = state.orchestrator.logs();
    let lines = query.lines.unwrap_or(100).min(10_000);
    // Subscribe before reading the tail so no line falls between the two.
    let follower = query.follow.unwrap_or(false).then(|| hub.follow(&project.name));
    let mut tail = hub.tail(&project.name, lines).join("\n");
    if !tail.is_empty() {
        tail.push('\n');
    }
    let head = futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(bytes::Bytes::from(tail)) });
    let headers = [
        (axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        (axum::http::header::CACHE_CONTROL, "no-cache"),
    ];
    let Some(follower) = follower else {
        return Ok((headers, axum::body::Body::from_stream(head)).into_response());
    };
    let rest = futures_util::stream::unfold(follower, |mut rx| async move {
        let chunk = match rx.recv().await {
            Ok(line) => line + "\n",
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                format!("... {n} lines skipped\n")
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(bytes::Bytes::from(chunk)), rx))
    });
    use futures_util::StreamExt;
    // A followed log ends when the server stops, so it never holds up a shutdown.
    let rest = rest.take_until(Box::pin(state.stopped()));
    Ok((headers, axum::body::Body::from_stream(head.chain(rest))).into_response())
}

#[derive(Deserialize, ToSchema)]
pub struct RunRequest {
    /// The program and its arguments, run as they are: no shell (give `["sh", "-c", "…"]`
    /// for one). The program is not empty; no argument holds a NUL byte.
    #[schema(min_items = 1, example = json!(["sh", "-c", "echo hello"]))]
    pub command: Vec<String>,
}

/// Runs a one-off command in the live deployment (its build, config and limits), as
/// `heroku run` does. The answer streams as JSON lines: `{"line": "…"}` for each line of
/// output, then `{"exit_code": N}`, or `{"error": {"code", "message"}}` if it could not
/// run to its end (it is stopped after an hour). It keeps running if the client goes away.
#[utoipa::path(post, path = "/projects/{name}/run", tag = "deployments", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)), request_body = RunRequest,
    responses((status = 200, content_type = "application/x-ndjson", body = String), NeedsToken, ParamErrors, JsonBodyErrors, ErrorStatus<403>, ErrorStatus<404>))]
pub async fn run(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
    JsonBody(body): JsonBody<RunRequest>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let project = project_for(&state, &user, &name, Role::Developer).await?;
    let program = body.command.first().cloned().unwrap_or_default();
    let prepared = state.orchestrator.prepare_run(&project, body.command).await?;
    tracing::info!(project = %project.name, user = user.id, %program, "one-off command started");
    // The program's name only: arguments may carry secrets.
    state.audit(audit::by(&user, AuditAction::CommandRun).on(&project).detail(program)).await;
    let (events, rx) = tokio::sync::mpsc::channel(RUN_EVENTS_BUFFERED);
    let sink = Arc::new(RunOutput { events, skipped: AtomicUsize::new(0) });
    tokio::spawn(async move {
        let outcome = match prepared.run(sink.clone()).await {
            Ok(code) => serde_json::json!({ "exit_code": code }),
            Err(err) => serde_json::json!({ "error": { "code": err.code(), "message": err.to_string() } }),
        };
        sink.flush_skipped();
        // The last event waits for room: it is never the one dropped.
        let _ = sink.events.send(format!("{outcome}\n")).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(bytes::Bytes::from(event)), rx))
    });
    let headers =
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson"), (axum::http::header::CACHE_CONTROL, "no-cache")];
    Ok((headers, axum::body::Body::from_stream(stream)).into_response())
}

/// Output lines a slow client has not read yet; past it, lines are counted and skipped
/// (a sink never blocks the command).
const RUN_EVENTS_BUFFERED: usize = 4096;

/// A one-off command's output, as JSON-line events for the response.
struct RunOutput {
    events: tokio::sync::mpsc::Sender<String>,
    skipped: AtomicUsize,
}

impl RunOutput {
    fn flush_skipped(&self) {
        let skipped = self.skipped.swap(0, Ordering::Relaxed);
        if skipped > 0 {
            let note =
                serde_json::json!({ "line": format!("... {skipped} lines skipped (the client read too slowly)") });
            if self.events.try_send(format!("{note}\n")).is_err() {
                self.skipped.fetch_add(skipped, Ordering::Relaxed);
            }
        }
    }
}

impl LogSink for RunOutput {
    fn line(&self, line: &str) {
        self.flush_skipped();
        let event = serde_json::json!({ "line": line });
        if self.events.try_send(format!("{event}\n")).is_err() {
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct InstanceView {
    pub id: String,
    /// `web.1`, `worker.2`, …
    pub name: String,
    pub process_type: String,
    pub version: i64,
    pub state: String,
    pub restarts: u32,
}

/// The project's instances and their state.
#[utoipa::path(get, path = "/projects/{name}/ps", tag = "deployments", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)), responses((status = 200, body = Vec<InstanceView>), NeedsToken, ParamErrors, ErrorStatus<404>))]
pub async fn instances(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
) -> ApiResult<Json<Vec<InstanceView>>> {
    let project = project_for(&state, &user, &name, Role::Viewer).await?;
    let instances = state.orchestrator.instances(&project.name).await?;
    Ok(Json(instances.into_iter().map(InstanceView::from).collect()))
}

impl From<paastech_core::drivers::Instance> for InstanceView {
    fn from(i: paastech_core::drivers::Instance) -> Self {
        InstanceView {
            name: format!("{}.{}", i.process_type, i.index + 1),
            id: i.id,
            process_type: i.process_type,
            version: i.version,
            state: serde_json::to_value(i.state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
            restarts: i.restarts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_changes_are_validated() {
        type Changes<'a> = &'a [(&'a str, Option<&'a str>)];
        let cases: [(Changes, bool); 6] = [
            (&[("A", Some("1"))], true),
            (&[("A", None)], true),
            (&[], false),
            (&[("1A", Some("x"))], false),
            (&[("PORT", Some("80"))], false),
            (&[("A", Some("a\0b"))], false),
        ];
        for (changes, ok) in cases {
            let changes: EnvChanges = changes.iter().map(|(k, v)| (k.to_string(), v.map(str::to_owned))).collect();
            assert_eq!(check_env_changes(&changes).is_ok(), ok, "{changes:?}");
        }
    }

    #[test]
    fn scale_is_validated() {
        let cases: [(&[(&str, u32)], bool); 5] = [
            (&[("web", 2)], true),
            (&[("web", 0), ("worker", 3)], true),
            (&[], false),
            (&[("web", 21)], false),
            (&[("we b", 1)], false),
        ];
        for (scale, ok) in cases {
            let scale: BTreeMap<String, u32> = scale.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            assert_eq!(check_scale(&scale).is_ok(), ok, "{scale:?}");
        }
    }
}
