//! Scheduled jobs (`app.json`'s `cron`, rules in `crate::cron`): read and kept with the
//! build at build time, so a rollback runs the jobs of the version it goes back to; run by
//! a background task (started by the binary after `begin_restore`, stopped before
//! `shutdown`) as one-off commands in each project's live deployment.
//!
//! The scheduler follows the orchestrator's `Running` map, which every switch updates:
//! when a project's live version changes, its jobs are read again from the new
//! deployment's build and their timers start from that moment (a new deployment's jobs
//! replace the old ones' from its switch on, and times missed before are not run); a job
//! the deployment did not change keeps its timer, and so its run under way. A project
//! that leaves the map (deleted) loses its timers and its runs under way.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::AbortHandle;

use super::{Background, Orchestrator, app_env};
use crate::cron::{CronJob, CronOutcome, CronRun, Fire, JobTimer};
use crate::domain::{Build, EnvVars, Project, ProjectName, Timestamp};
use crate::drivers::{InstanceSpec, LogSink, OneOff};
use crate::error::{Error, Result};
use crate::metrics::metrics;

/// How often the scheduler looks at the clock: jobs start within this of their time.
pub const CRON_TICK: Duration = Duration::from_secs(1);
/// How long one run of a job may take before it is stopped and recorded failed.
pub const CRON_TIMEOUT: Duration = Duration::from_secs(3600);
/// Why a scheduled time was not run.
const SKIPPED: &str = "the previous run of this job was still going";

/// One project's jobs, as of one live version.
pub(super) struct ProjectJobs {
    project: Project,
    version: i64,
    jobs: Vec<(CronJob, Arc<Mutex<JobTimer>>)>,
    /// Runs under way (of this or an earlier version), aborted when the project goes.
    runs: Vec<AbortHandle>,
}

impl Drop for ProjectJobs {
    fn drop(&mut self) {
        for run in &self.runs {
            run.abort();
        }
    }
}

impl Orchestrator {
    /// Reads `app.json` in the build tree (after the pre-build hooks, which may write it)
    /// and keeps its jobs with the build. A bad file fails the build, naming the entry.
    pub(super) async fn keep_cron_jobs(&self, build: &Build, source: &Path, log: &dyn LogSink) -> Result<()> {
        let source = source.to_owned();
        let jobs = tokio::task::spawn_blocking(move || crate::cron::read_app_json(&source))
            .await
            .map_err(|e| Error::internal("reading app.json", e))??;
        if jobs.is_empty() {
            return Ok(());
        }
        for (index, job) in jobs.iter().enumerate() {
            let zone = job.timezone.as_deref().unwrap_or("UTC");
            log.line(&format!(
                "-----> Scheduled job {}: {} ({zone}): {}",
                CronJob::name(index),
                job.schedule,
                job.command
            ));
        }
        self.store.set_build_cron(build.id, &jobs).await
    }

    /// The jobs of the project's live deployment, each with its next time (none when the
    /// project has nothing live or is stopped), and the kept runs, newest first.
    pub async fn cron(&self, project: &Project) -> Result<(Vec<(CronJob, Option<Timestamp>)>, Vec<CronRun>)> {
        let runs = self.store.cron_runs(project.id).await?;
        let Some(live) = self.store.live_deployment(project.id).await? else {
            return Ok((Vec::new(), runs));
        };
        let jobs = match live.build_id {
            Some(build_id) => self.store.build_cron(build_id).await?,
            None => Vec::new(),
        };
        let stopped = self.store.stopped(project.id).await?.is_all();
        let now = Timestamp::now();
        let jobs = jobs
            .into_iter()
            .map(|job| {
                let next = if stopped { None } else { job.schedule().ok().and_then(|s| s.next_after(now)) };
                (job, next)
            })
            .collect();
        Ok((jobs, runs))
    }

    /// Starts running every live deployment's jobs at their times, one tick every `every`.
    /// The task holds the orchestrator weakly and ends with the returned handle.
    pub fn schedule_cron(self: &Arc<Self>, every: Duration) -> Background {
        let orchestrator = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let mut projects: HashMap<ProjectName, ProjectJobs> = HashMap::new();
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(this) = orchestrator.upgrade() else { return };
                this.cron_tick(&mut projects, Timestamp::now()).await;
            }
        });
        tracing::info!(every_ms = every.as_millis() as u64, "scheduled jobs run");
        Background::new(task)
    }

    /// One tick: follows the live versions, then starts (or skips) what is due at `now`.
    pub(super) async fn cron_tick(self: &Arc<Self>, projects: &mut HashMap<ProjectName, ProjectJobs>, now: Timestamp) {
        let live: HashMap<ProjectName, i64> =
            self.running.lock().expect("running lock").iter().map(|(name, r)| (name.clone(), r.version)).collect();
        // A project no longer running here (deleted): its timers and runs go.
        projects.retain(|name, _| live.contains_key(name));
        for (name, version) in live {
            if projects.get(&name).is_some_and(|p| p.version == version) {
                continue;
            }
            match self.load_cron(&name, version, now).await {
                Ok((project, mut jobs)) => {
                    if !jobs.is_empty() {
                        tracing::info!(project = %name, version, jobs = jobs.len(), "scheduled jobs follow the live deployment");
                    }
                    let mut runs = Vec::new();
                    if let Some(mut old) = projects.remove(&name) {
                        // A job the new deployment left as it was (same place, command,
                        // schedule and zone) is the same job: it keeps its clock and its run
                        // under way, so a config change or a redeploy neither skips one of
                        // its times nor lets it run twice at once.
                        for (index, (job, timer)) in jobs.iter_mut().enumerate() {
                            if let Some((old_job, old_timer)) = old.jobs.get(index)
                                && old_job == job
                            {
                                *timer = Arc::clone(old_timer);
                            }
                        }
                        // Runs of the previous version go on to their end, and stay abortable.
                        runs = std::mem::take(&mut old.runs);
                    }
                    projects.insert(name, ProjectJobs { project, version, jobs, runs });
                }
                Err(err) => {
                    tracing::warn!(project = %name, version, error = %err, "cannot read the scheduled jobs; trying again next tick");
                }
            }
        }
        for entry in projects.values_mut() {
            entry.runs.retain(|run| !run.is_finished());
            for (index, (job, timer)) in entry.jobs.iter().enumerate() {
                let fire = timer.lock().expect("timer lock").tick(now);
                match fire {
                    None => {}
                    Some(Fire::Run(at)) => {
                        let this = Arc::clone(self);
                        let (project, job, timer) = (entry.project.clone(), job.clone(), Arc::clone(timer));
                        let version = entry.version;
                        let run = tokio::spawn(async move {
                            this.run_cron_job(&project, version, index, &job, at).await;
                            timer.lock().expect("timer lock").finished();
                        });
                        entry.runs.push(run.abort_handle());
                    }
                    Some(Fire::Skip(at)) => {
                        let run = CronRun {
                            project_id: entry.project.id,
                            job: index as u32 + 1,
                            command: job.command.clone(),
                            schedule: job.schedule.clone(),
                            version: entry.version,
                            scheduled_at: at,
                            started_at: None,
                            finished_at: None,
                            outcome: CronOutcome::Skipped,
                            exit_code: None,
                            error: Some(SKIPPED.into()),
                        };
                        let this = Arc::clone(self);
                        let project = entry.project.name.clone();
                        tokio::spawn(async move { this.skip_cron_run(&project, run).await });
                    }
                }
            }
        }
    }

    /// The project and the jobs of its deployment `version`, with their timers from `now`.
    async fn load_cron(
        &self,
        name: &ProjectName,
        version: i64,
        now: Timestamp,
    ) -> Result<(Project, Vec<(CronJob, Arc<Mutex<JobTimer>>)>)> {
        let project = self.store.project(name).await?;
        let deployment = self.store.deployment(project.id, version).await?;
        let jobs = match deployment.build_id {
            // A preview app runs none of its branch's jobs: they are the project's, and a
            // preview's would run beside them with its config.
            Some(_) if project.preview.is_some() => Vec::new(),
            Some(build_id) => self.store.build_cron(build_id).await?,
            None => Vec::new(),
        };
        let mut timed = Vec::with_capacity(jobs.len());
        for job in jobs {
            // Checked at build time; a stored job that no longer parses is left out, loudly.
            match job.schedule() {
                Ok(schedule) => timed.push((job, Arc::new(Mutex::new(JobTimer::new(schedule, now))))),
                Err(err) => {
                    tracing::error!(project = %name, version, error = %err, "a stored scheduled job is invalid")
                }
            }
        }
        Ok((project, timed))
    }

    /// Runs one scheduled time of a job in the live deployment (`sh -c COMMAND`, its output
    /// into the project log as `cron.N`, N = `index` + 1) and records it. Nothing runs, and nothing is
    /// recorded, when the project is stopped or its live deployment is no longer `version`.
    async fn run_cron_job(&self, project: &Project, version: i64, index: usize, job: &CronJob, at: Timestamp) {
        let output = self.logs.sink(&project.name, &CronJob::name(index));
        let prepared = async {
            if self.store.stopped(project.id).await?.is_all() {
                return Ok(None);
            }
            let Some((deployment, artifact)) = self.live_artifact(project).await? else { return Ok(None) };
            if deployment.version != version {
                return Ok(None);
            }
            let spec = InstanceSpec {
                project: project.name.clone(),
                version,
                process_type: "cron".into(),
                index: index as u32,
                artifact: artifact.reference,
                command: String::new(),
                env: app_env(project, &deployment, EnvVars::new()),
                limits: self.limits_of(project).await?,
            };
            Ok::<_, Error>(Some(spec))
        }
        .await;
        let spec = match prepared {
            Ok(Some(spec)) => spec,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(project = %project.name, job = index, error = %err, "cannot prepare a scheduled job");
                let now = Timestamp::now();
                self.record_cron_run(cron_run(project, version, index, job, at, now, Err(err))).await;
                return;
            }
        };
        output.line(&format!("running `{}` (scheduled {})", job.command, show_time(at)));
        let started = Timestamp::now();
        // The job's command is the app's own shell line, as a Procfile entry is.
        let run = OneOff { argv: vec!["sh".into(), "-c".into(), job.command.clone()], timeout: CRON_TIMEOUT };
        let result = self.runtime.run_once(spec, run, Arc::clone(&output)).await;
        match &result {
            Ok(code) => output.line(&format!("exited with code {code}")),
            Err(err) => output.line(&format!("failed: {err}")),
        }
        self.record_cron_run(cron_run(project, version, index, job, at, started, result)).await;
    }

    /// Records a time skipped because the job's previous run was still going, unless the
    /// project is stopped (a stopped project has no times, run or skipped).
    async fn skip_cron_run(&self, project: &ProjectName, run: CronRun) {
        match self.store.stopped(run.project_id).await {
            Ok(stopped) if stopped.is_all() => return,
            Ok(_) => {}
            Err(err) => tracing::warn!(project = %project, error = %err, "cannot tell whether the project is stopped"),
        }
        let name = CronJob::name(run.job.saturating_sub(1) as usize);
        self.logs.sink(project, &name).line(&format!("skipped the run of {}: {SKIPPED}", show_time(run.scheduled_at)));
        self.record_cron_run(run).await;
    }

    async fn record_cron_run(&self, run: CronRun) {
        metrics().cron_run(run.outcome.as_str());
        if let Err(err) = self.store.record_cron_run(&run).await {
            tracing::warn!(project_id = run.project_id, job = run.job, error = %err, "cannot record a scheduled job's run");
        }
    }
}

/// The record of a run that started at `started` and ended now with `result`.
fn cron_run(
    project: &Project,
    version: i64,
    index: usize,
    job: &CronJob,
    at: Timestamp,
    started: Timestamp,
    result: Result<i32>,
) -> CronRun {
    let (outcome, exit_code, error) = match result {
        Ok(0) => (CronOutcome::Succeeded, Some(0), None),
        Ok(code) => (CronOutcome::Failed, Some(code), None),
        Err(err) => (CronOutcome::Failed, None, Some(err.to_string())),
    };
    CronRun {
        project_id: project.id,
        job: index as u32 + 1,
        command: job.command.clone(),
        schedule: job.schedule.clone(),
        version,
        scheduled_at: at,
        started_at: Some(started),
        finished_at: Some(Timestamp::now()),
        outcome,
        exit_code,
        error,
    }
}

fn show_time(at: Timestamp) -> String {
    at.to_rfc3339()
}
