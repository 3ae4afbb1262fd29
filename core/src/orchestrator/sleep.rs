//! Scale to zero: the sleeper puts a project's web instances to sleep after its idle time
//! (`Orchestrator::sleep_idle`, a `Background` task like the usage sampler), and `wake`
//! starts them again when the ingress holds a request for it. Both run under the project's
//! lock like every other change of its state, so a wake never races a deploy, a scale or
//! another wake: a wake that finds the project awake (another one won) starts nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Background, NullSink, Orchestrator, Running, app_env, instance_spec, web_addrs};
use crate::domain::{Project, ProjectName};
use crate::drivers::{Instance, InstanceState};
use crate::error::{Error, Result};
use crate::metrics::metrics;
use crate::sleep::SleepState;

/// A change of a project's sleep settings (`PUT /projects/{name}/sleep`); `None` keeps the
/// current value.
#[derive(Debug, Clone, Default)]
pub struct SleepChange {
    pub enabled: bool,
    pub after_minutes: Option<u32>,
    pub workers_keep_awake: Option<bool>,
}

impl Orchestrator {
    /// The project's sleep settings and whether it sleeps now.
    pub async fn sleep_state(&self, project: &Project) -> Result<SleepState> {
        self.store.sleep(project.id).await
    }

    /// Changes the project's sleep settings. Turning sleep off wakes a sleeping project
    /// (its web instances start and pass their health check before this answers).
    pub async fn set_sleep(self: &Arc<Self>, project: &Project, change: SleepChange) -> Result<SleepState> {
        if let Some(minutes) = change.after_minutes {
            SleepState::check_after_minutes(minutes)?;
        }
        let project = project.clone();
        self.detached(move |this| async move {
            let _guard = this.exclusive(&project.name, &NullSink).await;
            let mut state = this.store.sleep(project.id).await?;
            state.enabled = change.enabled;
            state.after_minutes = change.after_minutes.unwrap_or(state.after_minutes);
            state.workers_keep_awake = change.workers_keep_awake.unwrap_or(state.workers_keep_awake);
            this.store.set_sleep(project.id, &state).await?;
            let what = if state.enabled {
                format!("on, after {} min without a request", state.after_minutes)
            } else {
                "off".into()
            };
            this.logs.note(&project.name, &format!("sleep {what}"));
            if !state.enabled && state.asleep {
                this.wake_locked(&project, this.config.health_timeout).await?;
            }
            this.store.sleep(project.id).await
        })
        .await
    }

    /// Wakes a sleeping project: starts its web instances as at a deploy (each must pass
    /// its health check within `timeout`), routes traffic to them, and records it awake.
    /// A project that is awake (woken by a wake that ran first) is left as it is. A failed
    /// wake stops what it started, keeps the project asleep and records why (shown by the
    /// API and `paastech ps`). The ingress calls this through its `Waker`, once per
    /// sleeping project however many requests wait.
    pub async fn wake(self: &Arc<Self>, name: &ProjectName, timeout: Duration) -> Result<()> {
        let name = name.clone();
        self.detached(move |this| async move {
            let _guard = this.exclusive(&name, &NullSink).await;
            let project = this.store.project(&name).await?;
            this.wake_locked(&project, timeout).await
        })
        .await
    }

    /// [`Self::wake`] with the project's lock held.
    async fn wake_locked(&self, project: &Project, timeout: Duration) -> Result<()> {
        let mut state = self.store.sleep(project.id).await?;
        if !state.asleep {
            return Ok(());
        }
        let begun = Instant::now();
        let mut started: Vec<Instance> = Vec::new();
        let woken = self.start_web(project, timeout, &mut started).await;
        let woken = match woken {
            Ok(running) => {
                state.asleep = false;
                state.wake_error = None;
                match self.store.set_sleep(project.id, &state).await {
                    Ok(()) => Ok(running),
                    Err(err) => Err(("failed", err)),
                }
            }
            Err(err) => Err(err),
        };
        let running = match woken {
            Ok(running) => running,
            Err((outcome, err)) => {
                self.stop_instances(&started).await;
                metrics().wake(outcome, begun.elapsed());
                let why = err.to_string();
                self.logs.note(&project.name, &format!("wake failed: {why}"));
                tracing::warn!(project = %project.name, error = %why, "wake failed");
                let mut state = self.store.sleep(project.id).await.unwrap_or(state);
                state.wake_error = Some(why);
                if let Err(err) = self.store.set_sleep(project.id, &state).await {
                    tracing::error!(project = %project.name, error = %err, "cannot record a failed wake");
                }
                return Err(err);
            }
        };
        let web = web_addrs(&running.instances);
        self.running.lock().expect("running lock").insert(project.name.clone(), running);
        self.traffic.switch(&project.name, web, self.config.drain_timeout).await;
        self.traffic.set_asleep(&project.name, false);
        let took = begun.elapsed();
        metrics().wake("succeeded", took);
        self.logs.note(&project.name, &format!("woke up in {} ms", took.as_millis()));
        tracing::info!(project = %project.name, ms = took.as_millis() as u64, "woke up");
        Ok(())
    }

    /// Starts the live deployment's web instances (its scale; none when `web` is
    /// stopped), each healthy within `timeout` of the call, into `started`. The answer is the
    /// project's `Running` entry with them added; the error says how it failed (`failed`
    /// or `timeout`, for the metric).
    async fn start_web(
        &self,
        project: &Project,
        timeout: Duration,
        started: &mut Vec<Instance>,
    ) -> std::result::Result<Running, (&'static str, Error)> {
        let deadline = Instant::now() + timeout;
        let failed = |err| ("failed", err);
        let (deployment, artifact) = self
            .live_artifact(project)
            .await
            .map_err(failed)?
            .ok_or_else(|| failed(Error::Invalid(format!("{} has no live deployment to wake", project.name))))?;
        let stopped = self.store.stopped(project.id).await.map_err(failed)?;
        let scale = self.store.scale(project.id).await.map_err(failed)?;
        let count = Self::plan(&artifact, &scale, &stopped)
            .into_iter()
            .find(|(process, _)| process == "web")
            .map_or(0, |(_, count)| count);
        let mut running = self
            .running
            .lock()
            .expect("running lock")
            .get(&project.name)
            .cloned()
            .unwrap_or(Running { version: deployment.version, instances: Vec::new() });
        let ctx = self.hook_context(project, &deployment, &artifact);
        let limits = self.limits_of(project).await.map_err(failed)?;
        let hook_log = self.logs.sink(&project.name, "hooks");
        let extra_env = self.pre_deploy(&ctx, &deployment, &artifact, hook_log.as_ref()).await.map_err(failed)?;
        let env = app_env(project, &deployment, extra_env);
        let (first, mut specs) = (started.len(), Vec::new());
        for index in 0..count {
            let spec = instance_spec(project, &deployment, &artifact, "web", index, &env, limits);
            started.push(self.start_instance(spec.clone()).await.map_err(failed)?);
            specs.push(spec);
        }
        for (instance, spec) in started[first..].iter_mut().zip(&specs) {
            match tokio::time::timeout_at(deadline, self.wait_serving(project, instance, spec)).await {
                Ok(result) => result.map_err(failed)?,
                Err(_) => {
                    let secs = timeout.as_secs_f32();
                    return Err((
                        "timeout",
                        Error::Unavailable(format!(
                            "web.{} did not answer its health check within the wake timeout ({secs} s)",
                            instance.index + 1
                        )),
                    ));
                }
            }
        }
        running.instances.extend(started.iter().cloned());
        Ok(running)
    }

    /// Starts putting projects to sleep: once every `every`, each project with web
    /// instances whose ingress route has had no request for its idle time (and that no
    /// other process type keeps awake) has its web instances stopped. A project whose lock
    /// is taken (a deploy, a wake) is looked at again next round. The task holds the
    /// orchestrator weakly and ends with the returned handle.
    pub fn sleep_idle(self: &Arc<Self>, every: Duration) -> Background {
        self.every(every, |this| async move {
            let minute = this.config.sleep_minute;
            // Cheap first: the shortest idle time is a minute, and asking the ingress
            // costs no store query.
            let candidates: Vec<ProjectName> = this
                .running
                .lock()
                .expect("running lock")
                .iter()
                .filter(|(_, running)| running.instances.iter().any(|i| i.process_type == "web"))
                .map(|(name, _)| name.clone())
                .collect();
            for name in candidates {
                if this.traffic.idle_for(&name).is_none_or(|idle| idle < minute) {
                    continue;
                }
                if let Err(err) = this.put_to_sleep(&name).await {
                    tracing::warn!(project = %name, error = %err, "cannot put a project to sleep");
                }
            }
        })
    }

    /// Puts one project to sleep when it should sleep now: recorded asleep first (so a
    /// server start starts no web instance of it), then its route marked asleep and emptied
    /// (requests in flight drain), then its web instances stopped. The deployment stays
    /// live; other process types keep running.
    pub(super) async fn put_to_sleep(&self, name: &ProjectName) -> Result<()> {
        let lock = self.lock_for(name);
        let Ok(_guard) = lock.try_lock_owned() else { return Ok(()) };
        let project = self.store.project(name).await?;
        let mut state = self.store.sleep(project.id).await?;
        let Some(running) = self.running.lock().expect("running lock").get(name).cloned() else { return Ok(()) };
        let (web, others): (Vec<Instance>, Vec<Instance>) =
            running.instances.into_iter().partition(|i| i.process_type == "web");
        let others_running = others.iter().any(|i| !matches!(i.state, InstanceState::Crashed | InstanceState::Stopped));
        let idle = self.traffic.idle_for(name);
        if !state.sleeps_now(idle, self.config.sleep_minute, !web.is_empty(), others_running) {
            return Ok(());
        }
        // What sleeping gives back, for the log: read before they stop.
        let ids: Vec<String> = web.iter().map(|i| i.id.clone()).collect();
        let freed: u64 = self
            .runtime
            .usage(&ids)
            .await
            .map(|usage| usage.values().filter_map(|u| u.memory_bytes).sum())
            .unwrap_or(0);
        state.asleep = true;
        state.wake_error = None;
        self.store.set_sleep(project.id, &state).await?;
        self.running
            .lock()
            .expect("running lock")
            .insert(name.clone(), Running { version: running.version, instances: others });
        self.traffic.set_asleep(name, true);
        self.traffic.switch(name, Vec::new(), self.config.drain_timeout).await;
        self.stop_instances(&web).await;
        metrics().sleep();
        let note = if freed > 0 { format!("; {} MiB freed", freed / (1024 * 1024)) } else { String::new() };
        self.logs.note(name, &format!("asleep after {} min without a request{note}", state.after_minutes));
        tracing::info!(project = %name, instances = web.len(), freed_bytes = freed, "asleep");
        Ok(())
    }

    /// Records a sleeping project awake once a deployment or a start ran its web
    /// instances: its idle time counts from now.
    pub(super) async fn mark_awake(&self, project: &Project) {
        let Ok(mut state) = self.store.sleep(project.id).await else { return };
        if !state.asleep {
            return;
        }
        state.asleep = false;
        state.wake_error = None;
        if let Err(err) = self.store.set_sleep(project.id, &state).await {
            tracing::error!(project = %project.name, error = %err, "cannot record a project awake");
        }
        self.traffic.set_asleep(&project.name, false);
    }
}
