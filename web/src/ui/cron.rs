//! A project's Cron tab: the live deployment's scheduled jobs (from its `app.json`) with
//! their next time, and the last runs of each. Read-only: jobs change with a push.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use paastech_core::{CronJob, CronOutcome, Timestamp};

use super::project::{layout, load};
use super::session::Session;
use super::view::{Layout, ProjectHead, When};
use super::{UiResult, render};
use crate::AppState;

/// Runs shown under each job.
const RUNS_SHOWN: usize = 10;

pub struct RunRow {
    pub scheduled: When,
    pub version: i64,
    /// `exit 0`, `exit 4`, `skipped`, or the error.
    pub result: String,
    /// `ok`, `bad` or `old`: the badge's look.
    pub tone: &'static str,
    /// How long it ran, when it did.
    pub took: String,
}

pub struct JobRow {
    /// `cron.N`.
    pub name: String,
    pub command: String,
    pub schedule: String,
    pub timezone: String,
    /// When it runs next (RFC 3339), or why it does not.
    pub next: String,
    pub runs: Vec<RunRow>,
}

#[derive(Template)]
#[template(path = "cron.html")]
pub struct CronPage {
    pub l: Layout,
    pub p: ProjectHead,
    pub jobs: Vec<JobRow>,
}

pub async fn cron_page(State(state): State<AppState>, session: Session, Path(name): Path<String>) -> UiResult {
    let (project, head, _) = load(&state, &session, &name, "cron", 5).await?;
    let (jobs, runs) = state.orchestrator.cron(&project).await?;
    let now = Timestamp::now();
    let jobs = jobs
        .into_iter()
        .enumerate()
        .map(|(index, (job, next))| JobRow {
            name: CronJob::name(index),
            runs: runs
                .iter()
                .filter(|r| r.job as usize == index + 1)
                .take(RUNS_SHOWN)
                .map(|r| RunRow {
                    scheduled: When::of(r.scheduled_at, now),
                    version: r.version,
                    result: match (r.outcome, r.exit_code, &r.error) {
                        (CronOutcome::Skipped, _, _) => "skipped".into(),
                        (_, Some(code), _) => format!("exit {code}"),
                        (_, None, error) => error.clone().unwrap_or_default(),
                    },
                    tone: match r.outcome {
                        CronOutcome::Succeeded => "ok",
                        CronOutcome::Failed => "bad",
                        CronOutcome::Skipped => "old",
                    },
                    took: match (r.started_at, r.finished_at) {
                        (Some(start), Some(end)) => format!("{} ms", (end.0 - start.0).max(0)),
                        _ => String::new(),
                    },
                })
                .collect(),
            command: job.command,
            schedule: job.schedule,
            timezone: job.timezone.unwrap_or_else(|| "UTC".into()),
            next: next.map_or_else(|| "not while stopped".to_owned(), Timestamp::to_rfc3339),
        })
        .collect();
    let l = layout(&session, &head, "Cron", false);
    render(StatusCode::OK, &CronPage { l, p: head, jobs })
}
