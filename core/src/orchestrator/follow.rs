//! Routes that follow moving instances. On a runtime whose instances' addresses can change
//! while they keep their id (a swarm task restarted on another port, or moved to another
//! node: `Runtime::instance_addresses_move`), a background task keeps each live
//! deployment's routes in step with what the runtime lists. The orchestrator's own
//! switches (deploy, scale, rollback, restore) stay the source of truth: the follower only
//! touches a project whose lock is free, starts from what the last switch routed (the
//! addresses in `Running`), and changes only the addresses of the instances it holds.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::{JoinHandle, JoinSet};

use super::{Orchestrator, Running, web_addrs};
use crate::domain::ProjectName;
use crate::drivers::{Instance, InstanceState};
use crate::error::Result;

/// How often the follower looks at every live deployment's instances.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(2);
/// How long a new address has to answer its health check within a round; one that does
/// not is tried again the next round, not routed.
const FOLLOW_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// How many projects a round looks at at once, so a round's calls to the runtime (one
/// listing per project) are bounded however many projects there are.
const FOLLOW_PARALLEL: usize = 8;

/// The running follower (see [`Orchestrator::follow_instances`]); dropping it stops it.
/// A background task of the orchestrator (the route follower, the usage sampler): it ends
/// with this handle.
pub struct Background {
    task: JoinHandle<()>,
}

impl Background {
    pub(super) fn new(task: JoinHandle<()>) -> Background {
        Background { task }
    }

    /// Stops the task and waits until its round (if one is running) is gone.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Orchestrator {
    /// Runs `round` with the orchestrator once every `every`, the first at once. A round
    /// that took longer than `every` is not followed by a burst of rounds. The task holds
    /// the orchestrator weakly (it ends when the orchestrator is gone) and ends with the
    /// returned handle.
    pub(super) fn every<F, R>(self: &Arc<Self>, every: Duration, round: F) -> Background
    where
        F: Fn(Arc<Orchestrator>) -> R + Send + 'static,
        R: Future<Output = ()> + Send,
    {
        let orchestrator = Arc::downgrade(self);
        Background::new(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(this) = orchestrator.upgrade() else { return };
                round(this).await;
            }
        }))
    }
}

impl Orchestrator {
    /// Starts keeping live deployments' routes in step with their instances' addresses,
    /// one round every `every`, when the runtime says its addresses move; `None` (nothing
    /// started) when they are fixed from start to stop. The task holds the orchestrator
    /// weakly and ends with the returned handle.
    pub fn follow_instances(self: &Arc<Self>, every: Duration) -> Option<Background> {
        if !self.runtime.instance_addresses_move() {
            return None;
        }
        let orchestrator = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            // A round that took longer than `every` is not followed by a burst of rounds.
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate: the restore is still bringing deployments back.
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(this) = orchestrator.upgrade() else { return };
                this.follow_round().await;
            }
        });
        tracing::info!(
            runtime = self.runtime.name(),
            every_ms = every.as_millis() as u64,
            "routes follow the instances"
        );
        Some(Background { task })
    }

    /// One round: every project with a live deployment running here, a few at a time.
    /// Errors are logged; the next round tries again.
    pub(super) async fn follow_round(self: &Arc<Self>) {
        let projects: Vec<ProjectName> = self.running.lock().expect("running lock").keys().cloned().collect();
        let mut pending = projects.into_iter();
        let mut round = JoinSet::new();
        loop {
            while round.len() < FOLLOW_PARALLEL {
                let Some(project) = pending.next() else { break };
                let this = Arc::clone(self);
                round.spawn(async move {
                    if let Err(err) = this.follow_project(&project).await {
                        tracing::warn!(project = %project, error = %err, "cannot follow the instances' addresses; trying again next round");
                    }
                });
            }
            if round.join_next().await.is_none() {
                return;
            }
        }
    }

    /// Brings one project's routes in step with where its live deployment's web instances
    /// answer now: a new address is routed once it passes its health check, a vanished or
    /// not-running instance is taken out at once. Left alone while its lock is held (a
    /// deploy, scale, rollback or restore decides the routes; the next round looks again).
    async fn follow_project(&self, project: &ProjectName) -> Result<()> {
        let Some(_guard) = self.try_exclusive(project) else {
            tracing::debug!(project = %project, "a change of the project is running; following it next round");
            return Ok(());
        };
        let Some(running) = self.running.lock().expect("running lock").get(project).cloned() else {
            return Ok(());
        };
        let listed = self.runtime.list_project(project).await?;
        // Where each of the deployment's web instances answers now, by its (stable) id.
        let serving: HashMap<&str, SocketAddr> = listed
            .iter()
            .filter(|i| i.version == running.version && i.process_type == "web" && i.state == InstanceState::Running)
            .filter_map(|i| Some((i.id.as_str(), i.addr?)))
            .collect();
        let mut next = running.instances.clone();
        let mut moved: Vec<(usize, SocketAddr)> = Vec::new();
        for (k, instance) in next.iter_mut().enumerate().filter(|(_, i)| i.process_type == "web") {
            match serving.get(instance.id.as_str()) {
                Some(addr) if instance.addr == Some(*addr) => {}
                Some(addr) => {
                    // Its old address is gone at once; the new one waits for its check.
                    instance.addr = None;
                    moved.push((k, *addr));
                }
                None => instance.addr = None,
            }
        }
        for (k, addr) in self.answering(&moved).await {
            next[k].addr = Some(addr);
        }
        let before = web_addrs(&running.instances);
        if web_addrs(&next).is_empty() && !before.is_empty() {
            // No instance is listed running (swarm between a task's end and its
            // replacement, or a listing caught mid-update): a request is still served when
            // any replica can serve it, so the previous addresses that still answer stay.
            let previous: Vec<(usize, SocketAddr)> =
                running.instances.iter().enumerate().filter_map(|(k, i)| Some((k, i.addr?))).collect();
            for (k, addr) in self.answering(&previous).await {
                next[k].addr = Some(addr);
            }
        }
        if same_addrs(&next, &running.instances) {
            return Ok(());
        }
        let after = web_addrs(&next);
        self.running
            .lock()
            .expect("running lock")
            .insert(project.clone(), Running { version: running.version, instances: next });
        if sorted(before.clone()) != sorted(after.clone()) {
            let shown: Vec<String> = after.iter().map(SocketAddr::to_string).collect();
            tracing::info!(project = %project, from = ?before, to = ?after, "routes follow the instances");
            self.logs.note(project, &format!("routes follow the web instances: {}", describe(&shown)));
            self.traffic.switch(project, after, self.config.drain_timeout).await;
        }
        Ok(())
    }

    /// Those of `candidates` (an index into a deployment's instances, and an address)
    /// that pass a health check within the round's timeout, checked at once.
    async fn answering(&self, candidates: &[(usize, SocketAddr)]) -> Vec<(usize, SocketAddr)> {
        let mut checks = JoinSet::new();
        for &(k, addr) in candidates {
            let traffic = Arc::clone(&self.traffic);
            checks.spawn(async move { (k, addr, traffic.wait_healthy(addr, FOLLOW_HEALTH_TIMEOUT).await) });
        }
        let mut passed = Vec::new();
        while let Some(checked) = checks.join_next().await {
            match checked {
                Ok((k, addr, Ok(()))) => passed.push((k, addr)),
                Ok((_, addr, Err(err))) => {
                    tracing::info!(addr = %addr, error = %err, "an instance's address does not answer yet; trying again next round");
                }
                Err(err) => tracing::warn!(error = %err, "a health check stopped unexpectedly"),
            }
        }
        passed
    }

    /// The project's lock if it is free now (and the project has one: a project deleted
    /// meanwhile has none, and none is made for it here).
    fn try_exclusive(&self, project: &ProjectName) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        let lock = self.locks.lock().expect("locks are never poisoned").get(project).cloned()?;
        lock.try_lock_owned().ok()
    }
}

fn same_addrs(a: &[Instance], b: &[Instance]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.id == y.id && x.addr == y.addr)
}

fn sorted(mut addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    addrs.sort();
    addrs
}

fn describe(addrs: &[String]) -> String {
    if addrs.is_empty() { "none answers".to_owned() } else { addrs.join(", ") }
}
