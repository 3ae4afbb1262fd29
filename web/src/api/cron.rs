//! A project's scheduled jobs (`app.json`'s `cron`, kept with each build): the live
//! deployment's jobs with their next time, and the last runs of each job. Read-only: jobs
//! change with a push. Another user's project answers 404.

use axum::Json;
use axum::extract::State;
use paastech_core::Role;
use paastech_core::{CronJob, CronRun, Timestamp};
use serde::Serialize;
use utoipa::ToSchema;

use super::PathParam;
use super::extract::{NeedsToken, ParamErrors};
use super::projects::project_for;
use super::schemas::ProjectNameSchema;
use crate::AppState;
use crate::auth::CurrentUser;
use crate::error::{ApiResult, ErrorStatus};

/// The project's jobs and their last runs.
#[derive(Serialize, ToSchema)]
pub struct CronView {
    /// The live deployment's jobs, in `app.json` order; empty when nothing is live.
    pub jobs: Vec<CronJobView>,
    /// The kept runs of every job (the newest 20 per job), newest first.
    pub runs: Vec<CronRunView>,
}

#[derive(Serialize, ToSchema)]
pub struct CronJobView {
    /// The job's number: 1 for the first entry of `app.json`'s `cron` list.
    pub job: u32,
    /// `cron.N`: its name, and its output's source in the project log.
    #[schema(examples("cron.1"))]
    pub name: String,
    #[schema(examples("python manage.py clearsessions"))]
    pub command: String,
    /// 5-field cron pattern.
    #[schema(examples("*/5 * * * *"))]
    pub schedule: String,
    /// The IANA time zone the schedule is read in.
    #[schema(examples("UTC"))]
    pub timezone: String,
    /// When it runs next (RFC 3339); null when the project is stopped.
    pub next_run_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CronRunView {
    /// The job's number (`cron.N`).
    pub job: u32,
    pub command: String,
    pub schedule: String,
    /// The deployment it ran in.
    pub version: i64,
    /// The time the schedule named (RFC 3339).
    pub scheduled_at: String,
    /// Null for a skipped time.
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// `succeeded`, `failed` or `skipped` (the previous run was still going).
    #[schema(examples("succeeded"))]
    pub outcome: String,
    /// The command's exit code; null when it did not exit (timeout, no start) or was skipped.
    pub exit_code: Option<i32>,
    /// Why it failed without an exit code, or why it was skipped.
    pub error: Option<String>,
}

fn job_view(index: usize, job: CronJob, next: Option<Timestamp>) -> CronJobView {
    CronJobView {
        job: index as u32 + 1,
        name: CronJob::name(index),
        command: job.command,
        schedule: job.schedule,
        timezone: job.timezone.unwrap_or_else(|| "UTC".into()),
        next_run_at: next.map(Timestamp::to_rfc3339),
    }
}

impl From<CronRun> for CronRunView {
    fn from(run: CronRun) -> Self {
        CronRunView {
            job: run.job,
            command: run.command,
            schedule: run.schedule,
            version: run.version,
            scheduled_at: run.scheduled_at.to_rfc3339(),
            started_at: run.started_at.map(Timestamp::to_rfc3339),
            finished_at: run.finished_at.map(Timestamp::to_rfc3339),
            outcome: run.outcome.as_str().to_owned(),
            exit_code: run.exit_code,
            error: run.error,
        }
    }
}

/// The project's scheduled jobs (of its live deployment) and their last runs.
#[utoipa::path(get, path = "/projects/{name}/cron", tag = "cron", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)),
    responses((status = 200, body = CronView), NeedsToken, ParamErrors, ErrorStatus<404>))]
pub async fn list(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
) -> ApiResult<Json<CronView>> {
    let project = project_for(&state, &user, &name, Role::Viewer).await?;
    let (jobs, runs) = state.orchestrator.cron(&project).await?;
    Ok(Json(CronView {
        jobs: jobs.into_iter().enumerate().map(|(index, (job, next))| job_view(index, job, next)).collect(),
        runs: runs.into_iter().map(Into::into).collect(),
    }))
}
