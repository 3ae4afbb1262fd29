//! The orchestrator's failure paths, with in-memory fakes of every seam: each fake can fail
//! a chosen call, and every call ticks one shared step counter, so a test can also drop the
//! caller at each await point. Each test asserts what runs, what is stored and what is
//! served afterwards. (Real drivers are exercised by the journeys in `tests/`.)

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{INTERRUPTED, Orchestrator, OrchestratorConfig};
use crate::addons::{Addon, AddonKind, AddonName, BackupReader, BackupWriter};
use crate::audit::{AuditEvent, AuditRecord, AuditScope};
use crate::cron::{CronJob, CronOutcome, CronRun};
use crate::deployment::{Deployment, DeploymentStatus, NewDeployment};
use crate::domain::{ApiToken, Build, BuildStatus, EnvVars, Project, ProjectName, SshKey, Timestamp, User};
use crate::drivers::{
    Artifact, BuildRequest, ImageBuilder, Instance, InstanceSpec, InstanceState, Limits, LogSink, OneOff, RepoStore,
    Runtime, TrafficRouter,
};
use crate::error::{Error, Result};
use crate::hostname::{Domain, Hostname};
use crate::https::{HttpsChange, HttpsPolicy};
use crate::lifecycle::Stopped;
use crate::logs::LogHub;
use crate::mail::EmailPurpose;
use crate::store::{EnvChanges, Store};
use crate::webhooks::{
    AttemptResult, RetryPolicy, Webhook, WebhookAttempt, WebhookEvent, WebhookRequest, WebhookSender,
};

// ----- Shared step counter ----------------------------------------------------------------

/// Counts calls into the fakes; a test waits for the N-th to drop its caller there.
#[derive(Default)]
struct Steps {
    count: AtomicUsize,
    notify: tokio::sync::Notify,
}

impl Steps {
    /// One call into a fake; it yields, so that a caller waiting for this step runs
    /// before the call goes on, as it would at a real await point.
    async fn tick(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
        tokio::task::yield_now().await;
    }

    fn now(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    async fn reached(&self, step: usize) {
        loop {
            let notified = self.notify.notified();
            if self.now() >= step {
                return;
            }
            notified.await;
        }
    }
}

/// Calls that fail on purpose: name → (calls to let through first, calls to fail then).
#[derive(Default)]
struct Faults(Mutex<HashMap<&'static str, (usize, usize)>>);

impl Faults {
    /// The next call named `call` fails, and `times - 1` after it.
    fn set(&self, call: &'static str, times: usize) {
        self.after(call, 0, times);
    }

    /// `call` succeeds `skip` more times, then fails `times` times.
    fn after(&self, call: &'static str, skip: usize, times: usize) {
        self.0.lock().expect("faults").insert(call, (skip, times));
    }

    fn clear(&self) {
        self.0.lock().expect("faults").clear();
    }

    fn check(&self, call: &'static str) -> Result<()> {
        let mut faults = self.0.lock().expect("faults");
        match faults.get_mut(call) {
            Some((skip, _)) if *skip > 0 => {
                *skip -= 1;
                Ok(())
            }
            Some((_, left)) if *left > 0 => {
                *left -= 1;
                Err(Error::Unavailable(format!("{call} failed on purpose")))
            }
            _ => Ok(()),
        }
    }
}

// ----- Store ------------------------------------------------------------------------------

#[derive(Default)]
struct Data {
    users: Vec<User>,
    projects: Vec<Project>,
    env: HashMap<i64, EnvVars>,
    scale: HashMap<i64, BTreeMap<String, u32>>,
    limits: HashMap<i64, Limits>,
    builds: Vec<Build>,
    deployments: Vec<Deployment>,
    domains: Vec<Domain>,
    https: HashMap<i64, HttpsPolicy>,
    stopped: HashMap<i64, Stopped>,
    sleep: HashMap<i64, crate::sleep::SleepState>,
    next_domain_id: i64,
    addons: Vec<Addon>,
    webhooks: Vec<(Webhook, String)>,
    webhook_attempts: Vec<WebhookAttempt>,
    build_cron: HashMap<i64, Vec<CronJob>>,
    cron_runs: Vec<CronRun>,
    audit: Vec<AuditRecord>,
}

/// The store's contract in memory, for the calls the orchestrator makes.
struct MemStore {
    data: Mutex<Data>,
    faults: Faults,
    steps: Arc<Steps>,
}

impl MemStore {
    async fn enter(&self, call: &'static str) -> Result<std::sync::MutexGuard<'_, Data>> {
        self.steps.tick().await;
        self.faults.check(call)?;
        Ok(self.data.lock().expect("store data"))
    }

    fn not_used<T>() -> Result<T> {
        Err(Error::internal_msg("not used by the orchestrator"))
    }
}

fn apply(env: &mut EnvVars, changes: &EnvChanges) {
    for (key, value) in changes {
        match value {
            Some(value) => env.insert(key.clone(), value.clone()),
            None => env.remove(key),
        };
    }
}

#[async_trait]
impl Store for MemStore {
    async fn ping(&self) -> Result<()> {
        self.enter("ping").await.map(|_| ())
    }
    async fn create_user(&self, email: &str, _: &str) -> Result<User> {
        let mut data = self.enter("create_user").await?;
        let user = User {
            id: data.users.len() as i64 + 1,
            email: email.into(),
            is_admin: false,
            disabled: false,
            created_at: Timestamp(0),
            email_verified: true,
        };
        data.users.push(user.clone());
        Ok(user)
    }
    async fn user(&self, id: i64) -> Result<User> {
        let data = self.enter("user").await?;
        data.users.iter().find(|u| u.id == id).cloned().ok_or_else(|| Error::NotFound("user".into()))
    }
    async fn user_by_email(&self, _: &str) -> Result<(User, String)> {
        Self::not_used()
    }
    async fn set_email_verified(&self, _: i64, _: bool) -> Result<()> {
        Self::not_used()
    }
    async fn set_password(&self, _: i64, _: &str) -> Result<()> {
        Self::not_used()
    }
    async fn create_email_token(&self, _: i64, _: EmailPurpose, _: &str, _: Timestamp) -> Result<()> {
        Self::not_used()
    }
    async fn use_email_token(&self, _: EmailPurpose, _: &str, _: Timestamp) -> Result<User> {
        Self::not_used()
    }
    async fn totp(&self, _: i64) -> Result<Option<crate::domain::TotpEnrolment>> {
        Self::not_used()
    }
    async fn start_totp(&self, _: i64, _: &[u8]) -> Result<()> {
        Self::not_used()
    }
    async fn enable_totp(&self, _: i64, _: i64, _: &[String]) -> Result<()> {
        Self::not_used()
    }
    async fn use_totp_step(&self, _: i64, _: i64) -> Result<bool> {
        Self::not_used()
    }
    async fn use_recovery_code(&self, _: i64, _: &str) -> Result<bool> {
        Self::not_used()
    }
    async fn delete_totp(&self, _: i64) -> Result<bool> {
        Self::not_used()
    }
    async fn delete_tokens_named(&self, _: i64, _: &[&str]) -> Result<usize> {
        Self::not_used()
    }
    async fn users(&self) -> Result<Vec<User>> {
        Self::not_used()
    }
    async fn set_user_disabled(&self, _: i64, _: bool) -> Result<User> {
        Self::not_used()
    }
    async fn delete_user(&self, _: i64) -> Result<()> {
        Self::not_used()
    }
    async fn collaborator_role(&self, _: i64, _: i64) -> Result<Option<crate::roles::Role>> {
        // The owner pushes in these tests: nobody else has a row.
        Ok(None)
    }
    async fn collaborators(&self, _: i64) -> Result<Vec<crate::roles::Collaborator>> {
        Self::not_used()
    }
    async fn set_collaborator(&self, _: i64, _: i64, _: crate::roles::Role) -> Result<crate::roles::Collaborator> {
        Self::not_used()
    }
    async fn remove_collaborator(&self, _: i64, _: i64) -> Result<()> {
        Self::not_used()
    }
    async fn collaborations(&self, _: i64) -> Result<Vec<(Project, crate::roles::Role)>> {
        Self::not_used()
    }
    async fn transfer_project(&self, _: i64, _: i64) -> Result<Project> {
        Self::not_used()
    }
    async fn create_token(&self, _: i64, _: &str, _: &str, _: Option<Timestamp>) -> Result<ApiToken> {
        Self::not_used()
    }
    async fn use_token(&self, _: &str) -> Result<(ApiToken, User)> {
        Self::not_used()
    }
    async fn tokens(&self, _: i64) -> Result<Vec<ApiToken>> {
        Self::not_used()
    }
    async fn delete_token(&self, _: i64, _: i64) -> Result<()> {
        Self::not_used()
    }
    async fn add_ssh_key(&self, _: i64, _: &str, _: &str, _: &str) -> Result<SshKey> {
        Self::not_used()
    }
    async fn ssh_keys(&self, _: i64) -> Result<Vec<SshKey>> {
        Self::not_used()
    }
    async fn delete_ssh_key(&self, _: i64, _: i64) -> Result<()> {
        Self::not_used()
    }
    async fn user_by_ssh_fingerprint(&self, _: &str) -> Result<(SshKey, User)> {
        Self::not_used()
    }
    async fn create_project(&self, owner_id: i64, name: &ProjectName) -> Result<Project> {
        let mut data = self.enter("create_project").await?;
        let project = Project {
            id: data.projects.len() as i64 + 1,
            name: name.clone(),
            owner_id,
            created_at: Timestamp(0),
            previews_enabled: false,
            preview: None,
        };
        data.projects.push(project.clone());
        Ok(project)
    }
    async fn project_by_id(&self, id: i64) -> Result<Project> {
        let data = self.enter("project_by_id").await?;
        data.projects.iter().find(|p| p.id == id).cloned().ok_or_else(|| Error::NotFound("project".into()))
    }
    async fn create_preview(&self, parent: &Project, name: &ProjectName, branch: &str) -> Result<Project> {
        let mut data = self.enter("create_preview").await?;
        if data.projects.iter().any(|p| &p.name == name) {
            return Err(Error::Conflict("taken".into()));
        }
        let project = Project {
            id: data.projects.len() as i64 + 1,
            name: name.clone(),
            owner_id: parent.owner_id,
            created_at: Timestamp(0),
            previews_enabled: false,
            preview: Some(crate::previews::PreviewOf { parent_id: parent.id, branch: branch.to_owned() }),
        };
        data.projects.push(project.clone());
        Ok(project)
    }
    async fn previews(&self, parent_id: i64) -> Result<Vec<Project>> {
        let data = self.enter("previews").await?;
        Ok(data
            .projects
            .iter()
            .filter(|p| p.preview.as_ref().is_some_and(|o| o.parent_id == parent_id))
            .cloned()
            .collect())
    }
    async fn set_previews_enabled(&self, project_id: i64, enabled: bool) -> Result<()> {
        let mut data = self.enter("set_previews_enabled").await?;
        let project =
            data.projects.iter_mut().find(|p| p.id == project_id).ok_or_else(|| Error::NotFound("project".into()))?;
        project.previews_enabled = enabled;
        Ok(())
    }
    async fn project(&self, name: &ProjectName) -> Result<Project> {
        let data = self.enter("project").await?;
        data.projects.iter().find(|p| &p.name == name).cloned().ok_or_else(|| Error::NotFound("project".into()))
    }
    async fn projects(&self, owner_id: Option<i64>) -> Result<Vec<Project>> {
        let data = self.enter("projects").await?;
        Ok(data.projects.iter().filter(|p| owner_id.is_none_or(|id| p.owner_id == id)).cloned().collect())
    }
    async fn delete_project(&self, project_id: i64) -> Result<()> {
        let mut data = self.enter("delete_project").await?;
        data.projects.retain(|p| p.id != project_id);
        data.domains.retain(|d| d.project_id != project_id);
        data.addons.retain(|a| a.project_id != project_id);
        Ok(())
    }
    async fn add_addon(&self, project_id: i64, name: &AddonName, kind: &str) -> Result<Addon> {
        let mut data = self.enter("add_addon").await?;
        if data.addons.iter().any(|a| a.project_id == project_id && &a.name == name) {
            return Err(Error::Conflict("taken".into()));
        }
        let id = i64::try_from(data.addons.len()).unwrap_or(i64::MAX) + 1;
        let addon = Addon { id, project_id, name: name.clone(), kind: kind.to_owned(), created_at: Timestamp(0) };
        data.addons.push(addon.clone());
        Ok(addon)
    }
    async fn addons(&self, project_id: i64) -> Result<Vec<Addon>> {
        let data = self.enter("addons").await?;
        let mut addons: Vec<Addon> = data.addons.iter().filter(|a| a.project_id == project_id).cloned().collect();
        addons.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(addons)
    }
    async fn addon(&self, project_id: i64, name: &AddonName) -> Result<Addon> {
        let data = self.enter("addon").await?;
        data.addons
            .iter()
            .find(|a| a.project_id == project_id && &a.name == name)
            .cloned()
            .ok_or_else(|| Error::NotFound("add-on".into()))
    }
    async fn delete_addon(&self, project_id: i64, name: &AddonName) -> Result<()> {
        let mut data = self.enter("delete_addon").await?;
        let before = data.addons.len();
        data.addons.retain(|a| !(a.project_id == project_id && &a.name == name));
        if data.addons.len() == before { Err(Error::NotFound("add-on".into())) } else { Ok(()) }
    }
    async fn add_domain(&self, project_id: i64, name: &Hostname) -> Result<Domain> {
        let mut data = self.enter("add_domain").await?;
        if data.domains.iter().any(|d| &d.name == name) {
            return Err(Error::Conflict("taken".into()));
        }
        data.next_domain_id += 1;
        let domain = Domain { id: data.next_domain_id, project_id, name: name.clone(), created_at: Timestamp(0) };
        data.domains.push(domain.clone());
        Ok(domain)
    }
    async fn domains(&self, project_id: i64) -> Result<Vec<Domain>> {
        let data = self.enter("domains").await?;
        let mut domains: Vec<Domain> = data.domains.iter().filter(|d| d.project_id == project_id).cloned().collect();
        domains.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(domains)
    }
    async fn domain(&self, name: &Hostname) -> Result<Domain> {
        let data = self.enter("domain").await?;
        data.domains.iter().find(|d| &d.name == name).cloned().ok_or_else(|| Error::NotFound("domain".into()))
    }
    async fn delete_domain(&self, project_id: i64, name: &Hostname) -> Result<()> {
        let mut data = self.enter("delete_domain").await?;
        let before = data.domains.len();
        data.domains.retain(|d| !(d.project_id == project_id && &d.name == name));
        if data.domains.len() == before {
            return Err(Error::NotFound("domain".into()));
        }
        Ok(())
    }
    async fn env(&self, project_id: i64) -> Result<EnvVars> {
        Ok(self.enter("env").await?.env.get(&project_id).cloned().unwrap_or_default())
    }
    async fn update_env(&self, project_id: i64, changes: &EnvChanges) -> Result<EnvVars> {
        let mut data = self.enter("update_env").await?;
        let env = data.env.entry(project_id).or_default();
        apply(env, changes);
        Ok(env.clone())
    }
    async fn scale(&self, project_id: i64) -> Result<BTreeMap<String, u32>> {
        Ok(self.enter("scale").await?.scale.get(&project_id).cloned().unwrap_or_default())
    }
    async fn set_scale(&self, project_id: i64, scale: &BTreeMap<String, u32>) -> Result<()> {
        self.enter("set_scale").await?.scale.entry(project_id).or_default().extend(scale.clone());
        Ok(())
    }
    async fn limits(&self, project_id: i64) -> Result<Limits> {
        Ok(self.enter("limits").await?.limits.get(&project_id).copied().unwrap_or_default())
    }
    async fn set_limits(&self, project_id: i64, limits: &Limits) -> Result<()> {
        self.enter("set_limits").await?.limits.insert(project_id, *limits);
        Ok(())
    }
    async fn https_policy(&self, project_id: i64) -> Result<HttpsPolicy> {
        Ok(self.enter("https_policy").await?.https.get(&project_id).copied().unwrap_or_default())
    }
    async fn stopped(&self, project_id: i64) -> Result<Stopped> {
        Ok(self.enter("stopped").await?.stopped.get(&project_id).cloned().unwrap_or_default())
    }
    async fn set_stopped(&self, project_id: i64, stopped: &Stopped) -> Result<()> {
        self.enter("set_stopped").await?.stopped.insert(project_id, stopped.clone());
        Ok(())
    }
    async fn sleep(&self, project_id: i64) -> Result<crate::sleep::SleepState> {
        Ok(self.enter("sleep").await?.sleep.get(&project_id).cloned().unwrap_or_default())
    }
    async fn set_sleep(&self, project_id: i64, sleep: &crate::sleep::SleepState) -> Result<()> {
        self.enter("set_sleep").await?.sleep.insert(project_id, sleep.clone());
        Ok(())
    }
    async fn set_https_policy(&self, project_id: i64, policy: &HttpsPolicy) -> Result<()> {
        self.enter("set_https_policy").await?.https.insert(project_id, *policy);
        Ok(())
    }
    async fn add_webhook(&self, project_id: i64, url: &str, events: &[WebhookEvent], secret: &str) -> Result<Webhook> {
        let mut data = self.enter("add_webhook").await?;
        let webhook = Webhook {
            id: data.webhooks.len() as i64 + 1,
            project_id,
            url: url.into(),
            events: events.to_vec(),
            created_at: Timestamp(0),
        };
        data.webhooks.push((webhook.clone(), secret.into()));
        Ok(webhook)
    }
    async fn webhooks(&self, project_id: i64) -> Result<Vec<Webhook>> {
        let data = self.enter("webhooks").await?;
        Ok(data.webhooks.iter().filter(|(w, _)| w.project_id == project_id).map(|(w, _)| w.clone()).collect())
    }
    async fn webhooks_with_secrets(&self, project_id: i64) -> Result<Vec<(Webhook, String)>> {
        let data = self.enter("webhooks_with_secrets").await?;
        Ok(data.webhooks.iter().filter(|(w, _)| w.project_id == project_id).cloned().collect())
    }
    async fn delete_webhook(&self, _: i64, _: i64) -> Result<()> {
        Self::not_used()
    }
    async fn record_webhook_attempt(&self, attempt: &WebhookAttempt) -> Result<()> {
        self.enter("record_webhook_attempt").await?.webhook_attempts.insert(0, attempt.clone());
        Ok(())
    }
    async fn webhook_attempts(&self, _: i64, webhook_id: i64) -> Result<Vec<WebhookAttempt>> {
        let data = self.enter("webhook_attempts").await?;
        Ok(data.webhook_attempts.iter().filter(|a| a.webhook_id == webhook_id).cloned().collect())
    }
    async fn set_build_cron(&self, build_id: i64, jobs: &[CronJob]) -> Result<()> {
        self.enter("set_build_cron").await?.build_cron.insert(build_id, jobs.to_vec());
        Ok(())
    }
    async fn build_cron(&self, build_id: i64) -> Result<Vec<CronJob>> {
        Ok(self.enter("build_cron").await?.build_cron.get(&build_id).cloned().unwrap_or_default())
    }
    async fn record_cron_run(&self, run: &CronRun) -> Result<()> {
        self.enter("record_cron_run").await?.cron_runs.insert(0, run.clone());
        Ok(())
    }
    async fn cron_runs(&self, project_id: i64) -> Result<Vec<CronRun>> {
        let data = self.enter("cron_runs").await?;
        Ok(data.cron_runs.iter().filter(|r| r.project_id == project_id).cloned().collect())
    }
    async fn create_build(&self, project_id: i64, commit: &str) -> Result<Build> {
        let mut data = self.enter("create_build").await?;
        let build = Build {
            id: data.builds.len() as i64 + 1,
            project_id,
            commit: commit.into(),
            status: BuildStatus::Building,
            artifact: None,
            processes: BTreeMap::new(),
            log: String::new(),
            created_at: Timestamp(0),
            finished_at: None,
        };
        data.builds.push(build.clone());
        Ok(build)
    }
    async fn finish_build(
        &self,
        build_id: i64,
        status: BuildStatus,
        artifact: Option<&str>,
        processes: &BTreeMap<String, String>,
        log: &str,
    ) -> Result<Build> {
        let mut data = self.enter("finish_build").await?;
        let build = data.builds.iter_mut().find(|b| b.id == build_id).ok_or_else(|| Error::NotFound("build".into()))?;
        build.status = status;
        build.artifact = artifact.map(str::to_owned);
        build.processes = processes.clone();
        build.log = log.into();
        Ok(build.clone())
    }
    async fn build(&self, build_id: i64) -> Result<Build> {
        let data = self.enter("build").await?;
        data.builds.iter().find(|b| b.id == build_id).cloned().ok_or_else(|| Error::NotFound("build".into()))
    }
    async fn clear_build_artifact(&self, build_id: i64) -> Result<()> {
        let mut data = self.enter("clear_build_artifact").await?;
        if let Some(build) = data.builds.iter_mut().find(|b| b.id == build_id) {
            build.artifact = None;
        }
        Ok(())
    }
    async fn create_deployment(&self, new: &NewDeployment) -> Result<Deployment> {
        let mut data = self.enter("create_deployment").await?;
        let version = data.deployments.iter().filter(|d| d.project_id == new.project_id).count() as i64 + 1;
        let deployment = Deployment {
            id: data.deployments.len() as i64 + 1,
            project_id: new.project_id,
            version,
            status: new.status,
            build_id: new.build_id,
            commit: new.commit.clone(),
            config: new.config.clone(),
            scale: new.scale.clone(),
            cause: new.cause.clone(),
            failure: None,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
        };
        data.deployments.push(deployment.clone());
        Ok(deployment)
    }
    async fn set_deployment_status(
        &self,
        deployment_id: i64,
        status: DeploymentStatus,
        failure: Option<&str>,
    ) -> Result<Deployment> {
        let mut data = self.enter("set_deployment_status").await?;
        let deployment = data
            .deployments
            .iter_mut()
            .find(|d| d.id == deployment_id)
            .ok_or_else(|| Error::NotFound("deployment".into()))?;
        deployment.status = deployment.status.next(status)?;
        if let Some(failure) = failure {
            deployment.failure = Some(failure.into());
        }
        Ok(deployment.clone())
    }
    async fn deployments(&self, project_id: i64, limit: i64) -> Result<Vec<Deployment>> {
        let data = self.enter("deployments").await?;
        let mut all: Vec<Deployment> =
            data.deployments.iter().filter(|d| d.project_id == project_id).cloned().collect();
        all.reverse();
        all.truncate(limit as usize);
        Ok(all)
    }
    async fn deployment(&self, project_id: i64, version: i64) -> Result<Deployment> {
        let data = self.enter("deployment").await?;
        data.deployments
            .iter()
            .find(|d| d.project_id == project_id && d.version == version)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("deployment v{version} not found")))
    }
    async fn live_deployments(&self) -> Result<Vec<(Project, Deployment)>> {
        let data = self.enter("live_deployments").await?;
        Ok(data
            .deployments
            .iter()
            .filter(|d| d.status == DeploymentStatus::Live)
            .filter_map(|d| data.projects.iter().find(|p| p.id == d.project_id).map(|p| (p.clone(), d.clone())))
            .collect())
    }
    async fn live_deployment(&self, project_id: i64) -> Result<Option<Deployment>> {
        let data = self.enter("live_deployment").await?;
        Ok(data.deployments.iter().find(|d| d.project_id == project_id && d.status == DeploymentStatus::Live).cloned())
    }
    async fn make_live(&self, deployment_id: i64, env: &EnvChanges) -> Result<Deployment> {
        let mut data = self.enter("make_live").await?;
        let index = data
            .deployments
            .iter()
            .position(|d| d.id == deployment_id)
            .ok_or_else(|| Error::NotFound("deployment".into()))?;
        data.deployments[index].status.next(DeploymentStatus::Live)?;
        let project_id = data.deployments[index].project_id;
        for other in data.deployments.iter_mut().filter(|d| d.project_id == project_id) {
            if other.status == DeploymentStatus::Live {
                other.status = DeploymentStatus::Superseded;
            }
        }
        apply(data.env.entry(project_id).or_default(), env);
        data.deployments[index].status = DeploymentStatus::Live;
        Ok(data.deployments[index].clone())
    }
    async fn interrupt_unfinished(&self, reason: &str) -> Result<Vec<Deployment>> {
        let mut data = self.enter("interrupt_unfinished").await?;
        let mut interrupted = Vec::new();
        for deployment in data.deployments.iter_mut() {
            if !deployment.status.is_terminal() && deployment.status != DeploymentStatus::Live {
                deployment.status = DeploymentStatus::Failed;
                deployment.failure = Some(reason.into());
                interrupted.push(deployment.clone());
            }
        }
        for build in data.builds.iter_mut().filter(|b| b.status == BuildStatus::Building) {
            build.status = BuildStatus::Failed;
        }
        Ok(interrupted)
    }
    async fn record_audit(&self, record: &AuditRecord) -> Result<()> {
        self.enter("record_audit").await?.audit.push(record.clone());
        Ok(())
    }
    async fn audit_events(&self, _: &AuditScope, _: Option<i64>, _: i64) -> Result<Vec<AuditEvent>> {
        Self::not_used()
    }
    async fn prune_audit(&self, cutoff: Timestamp) -> Result<u64> {
        let mut data = self.enter("prune_audit").await?;
        let before = data.audit.len();
        data.audit.retain(|record| record.at >= cutoff);
        Ok((before - data.audit.len()) as u64)
    }
}

// ----- Drivers ----------------------------------------------------------------------------

struct FakeRepos {
    steps: Arc<Steps>,
}

#[async_trait]
impl RepoStore for FakeRepos {
    async fn create(&self, _: &ProjectName) -> Result<()> {
        self.steps.tick().await;
        Ok(())
    }
    async fn delete(&self, _: &ProjectName) -> Result<()> {
        self.steps.tick().await;
        Ok(())
    }
    fn path(&self, project: &ProjectName) -> PathBuf {
        PathBuf::from("/nonexistent").join(project.as_str())
    }
    async fn export(&self, _: &ProjectName, _: &str, _: &Path) -> Result<()> {
        self.steps.tick().await;
        Ok(())
    }
}

struct FakeBuilder {
    steps: Arc<Steps>,
    faults: Faults,
    /// The Procfile's `release:` command of the builds it makes from now on.
    release: Mutex<Option<String>>,
}

#[async_trait]
impl ImageBuilder for FakeBuilder {
    fn name(&self) -> &'static str {
        "fake"
    }
    async fn build(&self, request: &BuildRequest, log: &dyn LogSink) -> Result<Artifact> {
        self.steps.tick().await;
        if let Err(err) = self.faults.check("build") {
            log.line("error: the code does not compile");
            return Err(Error::Invalid(format!("compile error ({err})")));
        }
        let mut processes = BTreeMap::from([("web".to_owned(), "serve".to_owned())]);
        if let Some(release) = self.release.lock().expect("release").clone() {
            processes.insert("release".to_owned(), release);
        }
        Ok(Artifact { reference: format!("image-{}-v{}", request.project, request.version), processes })
    }
    async fn remove(&self, _: &str) -> Result<()> {
        self.steps.tick().await;
        Ok(())
    }
}

struct FakeRuntime {
    steps: Arc<Steps>,
    faults: Faults,
    started: AtomicUsize,
    instances: Mutex<Vec<Instance>>,
    /// What `instance_addresses_move` answers (a swarm's would be true).
    moves: AtomicBool,
    /// The one-off commands run, in order.
    one_offs: Mutex<Vec<OneOffRun>>,
    /// Held by a test, keeps every one-off command running until released.
    one_off_gate: tokio::sync::RwLock<()>,
    /// The exit code one-off commands answer.
    exit_code: AtomicI32,
    /// How many of the next web instances find their port taken by another process.
    taken_ports: AtomicUsize,
}

/// A one-off command the fake runtime ran, and what ran beside it then.
#[derive(Debug, Clone)]
struct OneOffRun {
    version: i64,
    argv: Vec<String>,
    env: EnvVars,
    /// How many instances of the same version were running when it ran.
    instances_of_its_version: usize,
}

impl FakeRuntime {
    fn instances(&self) -> Vec<Instance> {
        self.instances.lock().expect("instances").clone()
    }

    /// The instance with this id, changed as a cluster would change it (moved, ended).
    fn change(&self, id: &str, change: impl FnOnce(&mut Instance)) {
        let mut instances = self.instances.lock().expect("instances");
        change(instances.iter_mut().find(|i| i.id == id).expect("an instance with this id"));
    }

    /// The ids of the running web instances, oldest first.
    fn web_ids(&self) -> Vec<String> {
        self.instances().into_iter().filter(|i| i.process_type == "web").map(|i| i.id).collect()
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }
    async fn start(&self, spec: InstanceSpec, _: Arc<dyn LogSink>) -> Result<Instance> {
        self.steps.tick().await;
        self.faults.check("start")?;
        let n = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let instance = Instance {
            id: format!("i{n}"),
            project: spec.project.clone(),
            version: spec.version,
            process_type: spec.process_type.clone(),
            index: spec.index,
            addr: spec.is_web().then(|| SocketAddr::from(([127, 0, 0, 1], 20_000 + n as u16))),
            state: InstanceState::Running,
            restarts: 0,
        };
        self.instances.lock().expect("instances").push(instance.clone());
        Ok(instance)
    }
    async fn stop(&self, id: &str, _: Duration) -> Result<()> {
        self.steps.tick().await;
        self.instances.lock().expect("instances").retain(|i| i.id != id);
        Ok(())
    }
    async fn run_once(&self, spec: InstanceSpec, run: OneOff, output: Arc<dyn LogSink>) -> Result<i32> {
        self.steps.tick().await;
        self.faults.check("run_once")?;
        let instances_of_its_version = self.instances().iter().filter(|i| i.version == spec.version).count();
        self.one_offs.lock().expect("one-offs").push(OneOffRun {
            version: spec.version,
            argv: run.argv,
            env: spec.env,
            instances_of_its_version,
        });
        output.line("migrating the database");
        drop(self.one_off_gate.read().await);
        Ok(self.exit_code.load(Ordering::SeqCst))
    }
    async fn list(&self) -> Result<Vec<Instance>> {
        self.steps.tick().await;
        self.faults.check("list")?;
        Ok(self.instances())
    }
    fn instance_addresses_move(&self) -> bool {
        self.moves.load(Ordering::SeqCst)
    }
    async fn answers_itself(&self, _: &Instance) -> Result<bool> {
        let taken = self.taken_ports.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        Ok(taken.is_err())
    }
}

struct FakeTraffic {
    steps: Arc<Steps>,
    unhealthy: AtomicBool,
    /// Addresses whose health check fails, whatever `unhealthy` says.
    silent: Mutex<Vec<SocketAddr>>,
    /// How many times `switch` was called.
    switches: AtomicUsize,
    routes: Mutex<HashMap<ProjectName, Vec<SocketAddr>>>,
    /// Custom domain → the project it is routed to.
    domains: Mutex<BTreeMap<String, ProjectName>>,
    /// The HTTPS policy the ingress was last given, per project.
    https: Mutex<HashMap<ProjectName, HttpsPolicy>>,
    /// Projects whose web process is stopped (they answer the stopped page).
    stopped: Mutex<HashMap<ProjectName, bool>>,
    /// What `idle_for` answers for every project (`None`: it cannot tell).
    idle: Mutex<Option<Duration>>,
    /// Projects the ingress was told sleep.
    asleep: Mutex<HashMap<ProjectName, bool>>,
}

impl FakeTraffic {
    fn routed_domains(&self) -> BTreeMap<String, ProjectName> {
        self.domains.lock().expect("domains").clone()
    }
}

#[async_trait]
impl TrafficRouter for FakeTraffic {
    async fn wait_healthy(&self, addr: SocketAddr, _: Duration) -> Result<()> {
        self.steps.tick().await;
        if self.unhealthy.load(Ordering::SeqCst) || self.silent.lock().expect("silent").contains(&addr) {
            return Err(Error::DeployFailed(format!("{addr} answered 503")));
        }
        Ok(())
    }
    async fn switch(&self, project: &ProjectName, mut backends: Vec<SocketAddr>, _: Duration) {
        self.steps.tick().await;
        self.switches.fetch_add(1, Ordering::SeqCst);
        backends.sort();
        self.routes.lock().expect("routes").insert(project.clone(), backends);
    }
    fn remove(&self, project: &ProjectName) {
        self.routes.lock().expect("routes").remove(project);
        self.domains.lock().expect("domains").retain(|_, p| p != project);
    }
    fn set_domains(&self, project: &ProjectName, domains: &[Hostname]) {
        let mut routed = self.domains.lock().expect("domains");
        routed.retain(|_, p| p != project);
        routed.extend(domains.iter().map(|d| (d.to_string(), project.clone())));
    }
    fn set_https(&self, project: &ProjectName, policy: HttpsPolicy) {
        self.https.lock().expect("https").insert(project.clone(), policy);
    }
    fn set_stopped(&self, project: &ProjectName, stopped: bool) {
        self.stopped.lock().expect("stopped").insert(project.clone(), stopped);
    }
    fn idle_for(&self, _: &ProjectName) -> Option<Duration> {
        *self.idle.lock().expect("idle")
    }
    fn set_asleep(&self, project: &ProjectName, asleep: bool) {
        self.asleep.lock().expect("asleep").insert(project.clone(), asleep);
    }
}

// ----- The world a test runs in -----------------------------------------------------------

struct World {
    orchestrator: Arc<Orchestrator>,
    store: Arc<MemStore>,
    builder: Arc<FakeBuilder>,
    runtime: Arc<FakeRuntime>,
    traffic: Arc<FakeTraffic>,
    steps: Arc<Steps>,
    project: Project,
    dir: tempfile::TempDir,
}

impl World {
    /// A project with `webs` web instances of v1 live, and `GREETING=hello`.
    async fn new(webs: u32) -> World {
        World::with_addon_kinds(webs, Vec::new()).await
    }

    /// As `new`, with these add-on kinds configured.
    async fn with_addon_kinds(webs: u32, kinds: Vec<Arc<dyn AddonKind>>) -> World {
        let steps = Arc::new(Steps::default());
        let store = Arc::new(MemStore { data: Mutex::default(), faults: Faults::default(), steps: Arc::clone(&steps) });
        let builder =
            Arc::new(FakeBuilder { steps: Arc::clone(&steps), faults: Faults::default(), release: Mutex::default() });
        let runtime = Arc::new(FakeRuntime {
            steps: Arc::clone(&steps),
            faults: Faults::default(),
            started: AtomicUsize::new(0),
            instances: Mutex::default(),
            moves: AtomicBool::new(false),
            one_offs: Mutex::default(),
            one_off_gate: tokio::sync::RwLock::new(()),
            exit_code: AtomicI32::new(0),
            taken_ports: AtomicUsize::new(0),
        });
        let traffic = Arc::new(FakeTraffic {
            steps: Arc::clone(&steps),
            unhealthy: AtomicBool::new(false),
            silent: Mutex::default(),
            switches: AtomicUsize::new(0),
            routes: Mutex::default(),
            domains: Mutex::default(),
            https: Mutex::default(),
            stopped: Mutex::default(),
            idle: Mutex::default(),
            asleep: Mutex::default(),
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let mut world = World {
            orchestrator: Arc::new(
                Orchestrator::new(
                    Arc::clone(&store) as _,
                    Arc::new(FakeRepos { steps: Arc::clone(&steps) }),
                    Arc::clone(&builder) as _,
                    Arc::clone(&runtime) as _,
                    Arc::clone(&traffic) as _,
                    Arc::new(LogHub::new(dir.path().join("logs"), 1 << 20)),
                    OrchestratorConfig::new(dir.path().join("releases")),
                )
                .with_addon_kinds(kinds),
            ),
            store,
            builder,
            runtime,
            traffic,
            steps,
            project: Project {
                id: 0,
                name: ProjectName::parse("app").expect("name"),
                owner_id: 0,
                created_at: Timestamp(0),
                previews_enabled: false,
                preview: None,
            },
            dir,
        };
        let owner = world.store.create_user("ada@example.com", "hash").await.expect("user");
        world.project = world.orchestrator.create_project(owner.id, &world.project.name).await.expect("project");
        world.store.set_scale(world.project.id, &BTreeMap::from([("web".into(), webs)])).await.expect("scale");
        world.store.update_env(world.project.id, &changes(&[("GREETING", Some("hello"))])).await.expect("env");
        world.push().await.expect("v1 deploys");
        world.serves(1, webs).await;
        world
    }

    /// The same store, drivers and files, with a new orchestrator: a server restart.
    fn restarted(&self) -> Arc<Orchestrator> {
        self.restarted_with(OrchestratorConfig::new(self.dir.path().join("releases")))
    }

    /// A new orchestrator over the same store and drivers, with `config`.
    fn restarted_with(&self, config: OrchestratorConfig) -> Arc<Orchestrator> {
        Arc::new(self.new_orchestrator(config))
    }

    fn new_orchestrator(&self, config: OrchestratorConfig) -> Orchestrator {
        Orchestrator::new(
            Arc::clone(&self.store) as _,
            Arc::new(FakeRepos { steps: Arc::clone(&self.steps) }),
            Arc::clone(&self.builder) as _,
            Arc::clone(&self.runtime) as _,
            Arc::clone(&self.traffic) as _,
            Arc::new(LogHub::new(self.dir.path().join("logs"), 1 << 20)),
            config,
        )
    }

    async fn push(&self) -> Result<Deployment> {
        self.orchestrator.deploy_commit(&self.project, "c0ffee", Arc::new(super::NullSink)).await
    }

    async fn env(&self) -> EnvVars {
        self.store.env(self.project.id).await.expect("env")
    }

    async fn deployment(&self, version: i64) -> Deployment {
        self.store.deployment(self.project.id, version).await.expect("deployment")
    }

    /// Waits until nothing of the project's runs on the orchestrator (its lock is free)
    /// and replaced instances have been stopped (in the background).
    async fn settle(&self, version: i64) {
        drop(self.orchestrator.lock_for(&self.project.name).lock().await);
        for _ in 0..200 {
            if self.runtime.instances().iter().all(|i| i.version == version) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Exactly `webs` instances of `version` run, the ingress sends traffic to exactly
    /// them, the store says `version` is live, and no deployment is left on its way.
    #[track_caller]
    fn serves(&self, version: i64, webs: u32) -> impl Future<Output = ()> + '_ {
        let caller = std::panic::Location::caller();
        async move {
            self.settle(version).await;
            let instances = self.runtime.instances();
            let versions: Vec<i64> = instances.iter().map(|i| i.version).collect();
            assert_eq!(versions, vec![version; webs as usize], "instances running ({caller})");
            let mut addrs: Vec<SocketAddr> = instances.iter().filter_map(|i| i.addr).collect();
            addrs.sort();
            let routes = self.traffic.routes.lock().expect("routes").get(&self.project.name).cloned();
            assert_eq!(routes, Some(addrs), "ingress backends ({caller})");
            let live = self.store.live_deployment(self.project.id).await.expect("live");
            assert_eq!(live.map(|d| d.version), Some(version), "live deployment in the store ({caller})");
            assert_eq!(self.orchestrator.running_version(&self.project.name), Some(version), "running ({caller})");
            for deployment in self.store.deployments(self.project.id, 1000).await.expect("deployments") {
                assert!(
                    deployment.status.is_terminal() || deployment.status == DeploymentStatus::Live,
                    "v{} left {:?} ({caller})",
                    deployment.version,
                    deployment.status
                );
            }
        }
    }
}

fn changes(pairs: &[(&str, Option<&str>)]) -> EnvChanges {
    pairs.iter().map(|(k, v)| (k.to_string(), v.map(str::to_owned))).collect()
}

fn vars(pairs: &[(&str, &str)]) -> EnvVars {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[track_caller]
fn assert_failed<T: std::fmt::Debug>(result: Result<T>, mentions: &str) {
    match result {
        Err(Error::DeployFailed(message)) => assert!(message.contains(mentions), "{message:?} should say {mentions:?}"),
        other => panic!("expected a failed deployment saying {mentions:?}, got {other:?}"),
    }
}

// ----- Failure paths ----------------------------------------------------------------------

#[tokio::test]
async fn a_failed_build_keeps_the_previous_deployment() {
    let world = World::new(1).await;
    world.builder.faults.set("build", 1);
    assert_failed(world.push().await, "build failed");
    world.serves(1, 1).await;
    let v2 = world.deployment(2).await;
    assert_eq!(v2.status, DeploymentStatus::Failed);
    assert_eq!(world.store.build(v2.build_id.expect("build")).await.expect("build").status, BuildStatus::Failed);
    // The next push works.
    world.push().await.expect("v3 deploys");
    world.serves(3, 1).await;
}

#[tokio::test]
async fn a_failed_start_stops_what_started_and_keeps_the_config() {
    let world = World::new(2).await;
    let starts = world.runtime.started.load(Ordering::SeqCst);
    // The first of v2's two instances starts, the second does not.
    world.runtime.faults.after("start", 1, 1);
    let result = world.orchestrator.update_env(&world.project, &changes(&[("GREETING", Some("bonjour"))])).await;
    assert_failed(result, "start failed on purpose");
    world.serves(1, 2).await;
    assert_eq!(world.runtime.started.load(Ordering::SeqCst), starts + 1, "one v2 instance started, and was stopped");
    assert_eq!(world.env().await, vars(&[("GREETING", "hello")]), "the config is unchanged");
    assert_eq!(world.deployment(2).await.status, DeploymentStatus::Failed);
}

#[tokio::test]
async fn a_failed_health_check_stops_the_new_instances() {
    let world = World::new(1).await;
    world.traffic.unhealthy.store(true, Ordering::SeqCst);
    let result = world.orchestrator.update_env(&world.project, &changes(&[("GREETING", None)])).await;
    assert_failed(result, "did not pass its health check");
    world.serves(1, 1).await;
    assert_eq!(world.env().await, vars(&[("GREETING", "hello")]));
    let v2 = world.deployment(2).await;
    assert_eq!(v2.status, DeploymentStatus::Failed);
    assert!(v2.failure.as_deref().is_some_and(|f| f.contains("health check")), "{:?}", v2.failure);
}

#[tokio::test]
async fn a_web_instance_whose_port_another_process_took_is_started_again_on_another() {
    let world = World::new(2).await;
    let starts = world.runtime.started.load(Ordering::SeqCst);
    world.runtime.taken_ports.store(2, Ordering::SeqCst);
    let result = world.orchestrator.update_env(&world.project, &changes(&[("GREETING", Some("bonjour"))])).await;
    let (_, deployment) = result.expect("v2 deploys");
    assert_eq!(deployment.map(|d| d.version), Some(2));
    // Two v2 instances serve (`serves` checks the routes are exactly theirs), after two
    // starts that lost their port.
    world.serves(2, 2).await;
    assert_eq!(world.runtime.started.load(Ordering::SeqCst), starts + 4);
    let log = world.orchestrator.logs().tail(&world.project.name, 50).join("\n");
    assert!(log.contains("another process took its port"), "{log}");
}

#[tokio::test]
async fn a_web_instance_that_never_gets_its_port_fails_the_deployment() {
    let world = World::new(1).await;
    world.runtime.taken_ports.store(super::PORT_TAKEN_STARTS, Ordering::SeqCst);
    let result = world.orchestrator.update_env(&world.project, &changes(&[("GREETING", Some("bonjour"))])).await;
    assert_failed(result, "another process took each port chosen for it");
    world.serves(1, 1).await;
    assert_eq!(world.env().await, vars(&[("GREETING", "hello")]), "the config is unchanged");
    assert_eq!(world.deployment(2).await.status, DeploymentStatus::Failed);
}

#[tokio::test]
async fn a_store_failure_when_going_live_switches_traffic_back() {
    let world = World::new(2).await;
    world.store.faults.set("make_live", 1);
    let result = world.orchestrator.update_env(&world.project, &changes(&[("GREETING", Some("bonjour"))])).await;
    assert_failed(result, "make_live failed on purpose");
    // Traffic had moved to v2: it is back on v1's instances, and v2's are stopped.
    world.serves(1, 2).await;
    assert_eq!(world.env().await, vars(&[("GREETING", "hello")]));
    assert_eq!(world.deployment(2).await.status, DeploymentStatus::Failed);
}

#[tokio::test]
async fn a_store_failure_on_a_rollback_restores_nothing() {
    let world = World::new(1).await;
    world.orchestrator.update_env(&world.project, &changes(&[("GREETING", Some("bonjour"))])).await.expect("v2");
    world.serves(2, 1).await;
    world.store.faults.set("make_live", 1);
    assert_failed(world.orchestrator.redeploy(&world.project, Some(1)).await, "make_live failed on purpose");
    world.serves(2, 1).await;
    assert_eq!(world.env().await, vars(&[("GREETING", "bonjour")]), "v1's config is not restored");
    // Without the fault, the rollback restores v1's build and config.
    let v4 = world.orchestrator.redeploy(&world.project, Some(1)).await.expect("rollback");
    world.serves(v4.version, 1).await;
    assert_eq!(world.env().await, vars(&[("GREETING", "hello")]));
}

#[tokio::test]
async fn a_store_outage_mid_change_is_recorded_failed_at_the_next_start() {
    let world = World::new(1).await;
    // Every status write fails: the change cannot even record that it failed.
    world.store.faults.set("set_deployment_status", usize::MAX);
    let result = world.orchestrator.update_env(&world.project, &changes(&[("GREETING", Some("bonjour"))])).await;
    assert_failed(result, "set_deployment_status failed on purpose");
    world.store.faults.clear();
    assert_eq!(world.deployment(2).await.status, DeploymentStatus::Queued, "left on its way");
    assert_eq!(world.env().await, vars(&[("GREETING", "hello")]));

    // The next server start records it failed, and brings v1 back.
    let restarted = world.restarted();
    restarted.restore().await.expect("restore");
    let v2 = world.deployment(2).await;
    assert_eq!((v2.status, v2.failure.as_deref()), (DeploymentStatus::Failed, Some(INTERRUPTED)));
    let world = World { orchestrator: restarted, ..world };
    world.serves(1, 1).await;
}

#[tokio::test]
async fn limits_are_kept_only_if_the_app_runs_with_them() {
    let world = World::new(1).await;
    world.traffic.unhealthy.store(true, Ordering::SeqCst);
    let limits = Limits { memory_bytes: Some(64 << 20), cpus: Some(0.5) };
    assert_failed(world.orchestrator.set_limits(&world.project, &limits).await, "health check");
    assert_eq!(world.store.limits(world.project.id).await.expect("limits"), Limits::default());
    world.serves(1, 1).await;
    world.traffic.unhealthy.store(false, Ordering::SeqCst);
    world.orchestrator.set_limits(&world.project, &limits).await.expect("limits apply");
    assert_eq!(world.store.limits(world.project.id).await.expect("limits"), limits);
    world.serves(3, 1).await;
}

// ----- Scaling ----------------------------------------------------------------------------

#[tokio::test]
async fn scaling_up_and_down_moves_traffic_without_a_new_version() {
    let world = World::new(1).await;
    let scale = |n| BTreeMap::from([("web".to_owned(), n)]);
    assert_eq!(world.orchestrator.scale(&world.project, &scale(3)).await.expect("scale up"), scale(3));
    world.serves(1, 3).await;
    world.orchestrator.scale(&world.project, &scale(1)).await.expect("scale down");
    world.serves(1, 1).await;
    assert_eq!(world.store.scale(world.project.id).await.expect("scale"), scale(1));
}

#[tokio::test]
async fn a_failed_scale_up_stops_what_it_started_and_keeps_the_count() {
    let world = World::new(1).await;
    let scale = BTreeMap::from([("web".to_owned(), 3)]);
    // The first added instance starts, the second does not.
    world.runtime.faults.after("start", 1, 1);
    assert!(world.orchestrator.scale(&world.project, &scale).await.is_err());
    world.serves(1, 1).await;
    assert_eq!(world.store.scale(world.project.id).await.expect("scale")["web"], 1);
    // An added web instance that does not answer is stopped too.
    world.traffic.unhealthy.store(true, Ordering::SeqCst);
    assert!(world.orchestrator.scale(&world.project, &scale).await.is_err());
    world.serves(1, 1).await;
    assert_eq!(world.store.scale(world.project.id).await.expect("scale")["web"], 1);
}

// ----- Stop, start, restart ---------------------------------------------------------------

impl World {
    /// Whether the ingress was told the project's web is stopped.
    fn ingress_says_stopped(&self) -> bool {
        self.traffic.stopped.lock().expect("stopped").get(&self.project.name).copied().unwrap_or(false)
    }
}

#[tokio::test]
async fn a_stopped_project_stays_stopped_over_a_push_a_scale_and_a_restart_until_started() {
    let world = World::new(2).await;
    let stopped = world.orchestrator.stop(&world.project, None).await.expect("stop");
    assert!(stopped.is_all());
    assert!(world.runtime.instances().is_empty(), "its instances are stopped");
    assert_eq!(world.traffic.routes.lock().expect("routes").get(&world.project.name), Some(&Vec::new()));
    assert!(world.ingress_says_stopped());
    assert!(world.store.stopped(world.project.id).await.expect("stored").is_all());
    // Stopping again changes nothing.
    assert!(world.orchestrator.stop(&world.project, None).await.expect("stop again").is_all());

    // A push goes live and keeps its config, but starts nothing; so does a scale.
    let v2 = world.push().await.expect("v2 deploys");
    assert_eq!(v2.status, DeploymentStatus::Live);
    world.orchestrator.scale(&world.project, &BTreeMap::from([("web".to_owned(), 3)])).await.expect("scale");
    assert!(world.runtime.instances().is_empty(), "a push or a scale starts nothing of a stopped project");
    assert_eq!(world.env().await, vars(&[("GREETING", "hello")]));
    match world.orchestrator.restart(&world.project, None).await {
        Err(Error::Conflict(message)) => assert!(message.contains("paastech start"), "{message}"),
        other => panic!("a restart of a stopped project is refused, got {other:?}"),
    }

    // A server restart starts nothing of it either, and the ingress still says stopped.
    world.traffic.stopped.lock().expect("stopped").clear();
    let restarted = world.restarted();
    restarted.restore().await.expect("restore");
    assert!(world.runtime.instances().is_empty(), "the restore starts nothing of a stopped project");
    assert!(world.ingress_says_stopped());

    let world = World { orchestrator: restarted, ..world };
    assert!(world.orchestrator.start(&world.project, None).await.expect("start").is_empty());
    world.serves(2, 3).await;
    assert!(!world.ingress_says_stopped());
    assert!(world.store.stopped(world.project.id).await.expect("stored").is_empty());
}

impl World {
    fn ingress_says_asleep(&self) -> bool {
        self.traffic.asleep.lock().expect("asleep").get(&self.project.name).copied().unwrap_or(false)
    }

    async fn asleep(&self) -> bool {
        self.store.sleep(self.project.id).await.expect("sleep").asleep
    }
}

#[tokio::test]
async fn an_idle_project_sleeps_wakes_once_for_many_and_stays_asleep_over_a_restart() {
    let world = World::new(2).await;
    let name = world.project.name.clone();
    let on = super::SleepChange { enabled: true, after_minutes: Some(5), workers_keep_awake: None };
    world.orchestrator.set_sleep(&world.project, on).await.expect("sleep on");
    // Not idle long enough, or the ingress cannot tell: it stays awake.
    *world.traffic.idle.lock().expect("idle") = Some(Duration::from_secs(299));
    world.orchestrator.put_to_sleep(&name).await.expect("look");
    *world.traffic.idle.lock().expect("idle") = None;
    world.orchestrator.put_to_sleep(&name).await.expect("look");
    assert!(!world.asleep().await);
    world.serves(1, 2).await;

    *world.traffic.idle.lock().expect("idle") = Some(Duration::from_secs(300));
    world.orchestrator.put_to_sleep(&name).await.expect("sleep");
    assert!(world.asleep().await, "stored asleep");
    assert!(world.ingress_says_asleep());
    assert!(world.runtime.instances().is_empty(), "its web instances are stopped");
    assert_eq!(world.traffic.routes.lock().expect("routes").get(&name), Some(&Vec::new()));
    assert_eq!(world.store.live_deployment(world.project.id).await.expect("live").map(|d| d.version), Some(1));

    // A server restart starts none of it, and tells the ingress it sleeps.
    world.traffic.asleep.lock().expect("asleep").clear();
    let restarted = world.restarted();
    restarted.restore().await.expect("restore");
    assert!(world.runtime.instances().is_empty(), "the restore starts no web of a sleeping project");
    assert!(world.ingress_says_asleep());
    let world = World { orchestrator: restarted, ..world };

    // Eight wakes at once (as many flights as a racing ingress could make): one start of
    // each web instance.
    let before = world.runtime.started.load(Ordering::SeqCst);
    *world.traffic.idle.lock().expect("idle") = Some(Duration::ZERO);
    let wakes: Vec<_> = (0..8)
        .map(|_| {
            let (orchestrator, name) = (Arc::clone(&world.orchestrator), name.clone());
            tokio::spawn(async move { orchestrator.wake(&name, Duration::from_secs(5)).await })
        })
        .collect();
    for wake in wakes {
        wake.await.expect("join").expect("woken");
    }
    assert_eq!(world.runtime.started.load(Ordering::SeqCst) - before, 2, "one start per web instance");
    world.serves(1, 2).await;
    assert!(!world.asleep().await);
    assert!(!world.ingress_says_asleep());
}

#[tokio::test]
async fn a_failed_wake_stays_asleep_says_why_and_a_push_wakes_it() {
    let world = World::new(1).await;
    let name = world.project.name.clone();
    let on = super::SleepChange { enabled: true, after_minutes: Some(1), workers_keep_awake: None };
    world.orchestrator.set_sleep(&world.project, on).await.expect("sleep on");
    *world.traffic.idle.lock().expect("idle") = Some(Duration::from_secs(60));
    world.orchestrator.put_to_sleep(&name).await.expect("sleep");
    assert!(world.asleep().await);

    world.traffic.unhealthy.store(true, Ordering::SeqCst);
    let err = world.orchestrator.wake(&name, Duration::from_secs(5)).await.expect_err("an unhealthy web");
    assert!(err.to_string().contains("health check"), "{err}");
    assert!(world.runtime.instances().is_empty(), "what the wake started is stopped");
    let state = world.store.sleep(world.project.id).await.expect("sleep");
    assert!(state.asleep, "still asleep");
    assert!(state.wake_error.as_deref().is_some_and(|e| e.contains("health check")), "{state:?}");
    assert!(world.ingress_says_asleep());

    // A push starts and checks its web like any deployment, and it is awake once live.
    world.traffic.unhealthy.store(false, Ordering::SeqCst);
    *world.traffic.idle.lock().expect("idle") = Some(Duration::ZERO);
    world.push().await.expect("v2 deploys");
    world.serves(2, 1).await;
    let state = world.store.sleep(world.project.id).await.expect("sleep");
    assert!(!state.asleep && state.wake_error.is_none(), "{state:?}");
    assert!(!world.ingress_says_asleep());
}

#[tokio::test]
async fn a_start_that_does_not_answer_stays_stopped() {
    let world = World::new(1).await;
    world.orchestrator.stop(&world.project, Some("web")).await.expect("stop web");
    assert!(world.ingress_says_stopped());
    world.traffic.unhealthy.store(true, Ordering::SeqCst);
    assert_failed(world.orchestrator.start(&world.project, None).await, "health check");
    assert!(world.runtime.instances().is_empty(), "what started is stopped again");
    assert!(world.store.stopped(world.project.id).await.expect("stored").contains("web"));
    assert!(world.ingress_says_stopped());
    world.traffic.unhealthy.store(false, Ordering::SeqCst);
    world.orchestrator.start(&world.project, Some("web")).await.expect("start web");
    world.serves(1, 1).await;
}

#[tokio::test]
async fn an_unknown_process_type_is_refused_naming_those_there_are() {
    let world = World::new(1).await;
    for result in [
        world.orchestrator.stop(&world.project, Some("worker")).await,
        world.orchestrator.start(&world.project, Some("worker")).await,
    ] {
        match result {
            Err(Error::Invalid(message)) => {
                assert!(message.contains("\"worker\"") && message.contains("it has: web"), "{message}")
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }
    assert!(matches!(world.orchestrator.restart(&world.project, Some("release")).await, Err(Error::Invalid(_))));
    world.serves(1, 1).await;
}

#[tokio::test]
async fn a_restart_replaces_each_web_instance_once_the_new_one_answers() {
    let world = World::new(2).await;
    let before = world.runtime.web_ids();
    let switches = world.traffic.switches.load(Ordering::SeqCst);
    let restarted = world.orchestrator.restart(&world.project, None).await.expect("restart");
    assert_eq!(restarted, vec!["web.1", "web.2"]);
    world.serves(1, 2).await;
    let after = world.runtime.web_ids();
    assert!(after.iter().all(|id| !before.contains(id)), "every instance is new: {before:?} → {after:?}");
    // One switch per instance: never both old ones out of traffic at once.
    assert_eq!(world.traffic.switches.load(Ordering::SeqCst), switches + 2);
    assert_eq!(world.deployments_count().await, 1, "no new version");

    // A new instance that does not answer is stopped; the old one keeps serving.
    world.traffic.unhealthy.store(true, Ordering::SeqCst);
    assert_failed(world.orchestrator.restart(&world.project, Some("web")).await, "health check");
    world.serves(1, 2).await;
    assert_eq!(world.runtime.web_ids(), after);
}

impl World {
    async fn deployments_count(&self) -> usize {
        self.store.deployments(self.project.id, 1000).await.expect("deployments").len()
    }
}

#[tokio::test]
async fn the_live_deployment_is_found_after_many_failed_pushes() {
    let world = World::new(1).await;
    world.builder.faults.set("build", 120);
    for _ in 0..120 {
        assert!(world.push().await.is_err());
    }
    let scaled = world.orchestrator.scale(&world.project, &BTreeMap::from([("web".to_owned(), 2)])).await;
    assert!(scaled.is_ok(), "{scaled:?}");
    world.serves(1, 2).await;
    assert!(world.orchestrator.prepare_run(&world.project, vec!["true".into()]).await.is_ok());
    // An env change still deploys (the live build), rather than only saving the env.
    let (_, deployed) = world
        .orchestrator
        .update_env(&world.project, &changes(&[("GREETING", Some("bonjour"))]))
        .await
        .expect("env change");
    assert_eq!(deployed.map(|d| d.version), Some(122));
    world.serves(122, 2).await;
}

// ----- Hang-ups ---------------------------------------------------------------------------

/// Runs `change` on a fresh world once to count its steps, then again for each step k,
/// dropping the caller right after the k-th call into a fake. Every time, the change must
/// end exactly as if nobody had hung up.
async fn hang_up_at_every_step<F, Fut>(webs: u32, change: F, expect: impl AsyncFn(&World))
where
    F: Fn(Arc<Orchestrator>, Project) -> Fut,
    Fut: Future<Output = ()>,
{
    let world = World::new(webs).await;
    let start = world.steps.now();
    change(Arc::clone(&world.orchestrator), world.project.clone()).await;
    let total = world.steps.now() - start;
    expect(&world).await;
    assert!(total > 5, "the change made only {total} calls");
    for k in 1..total {
        let world = World::new(webs).await;
        let start = world.steps.now();
        tokio::select! {
            () = change(Arc::clone(&world.orchestrator), world.project.clone()) => {
                panic!("the change ended before step {k} of {total}")
            }
            () = world.steps.reached(start + k) => {}
        }
        expect(&world).await;
    }
}

#[tokio::test]
async fn an_env_change_completes_whoever_hangs_up() {
    hang_up_at_every_step(
        2,
        |orchestrator, project| async move {
            orchestrator.update_env(&project, &changes(&[("GREETING", Some("bonjour"))])).await.expect("env change");
        },
        async |world: &World| {
            world.serves(2, 2).await;
            assert_eq!(world.env().await, vars(&[("GREETING", "bonjour")]));
        },
    )
    .await;
}

#[tokio::test]
async fn a_rollback_completes_whoever_hangs_up() {
    hang_up_at_every_step(
        1,
        |orchestrator, project| async move {
            orchestrator.redeploy(&project, Some(1)).await.expect("rollback");
        },
        async |world: &World| {
            world.serves(2, 1).await;
            assert_eq!(world.deployment(2).await.cause, "rollback to v1");
        },
    )
    .await;
}

#[tokio::test]
async fn a_scale_completes_whoever_hangs_up() {
    hang_up_at_every_step(
        1,
        |orchestrator, project| async move {
            orchestrator.scale(&project, &BTreeMap::from([("web".to_owned(), 3)])).await.expect("scale");
        },
        async |world: &World| {
            world.serves(1, 3).await;
            assert_eq!(world.store.scale(world.project.id).await.expect("scale")["web"], 3);
        },
    )
    .await;
}

// ----- Restarts ---------------------------------------------------------------------------

#[tokio::test]
async fn a_start_fails_what_was_on_its_way_and_serves_the_live_one() {
    let world = World::new(1).await;
    // A server killed during a build left v2 building, with its build unfinished.
    let build = world.store.create_build(world.project.id, "beef").await.expect("build");
    let v2 = world
        .store
        .create_deployment(&NewDeployment {
            project_id: world.project.id,
            status: DeploymentStatus::Queued,
            build_id: Some(build.id),
            commit: Some("beef".into()),
            config: EnvVars::new(),
            scale: BTreeMap::new(),
            cause: "push".into(),
        })
        .await
        .expect("v2");
    world.store.set_deployment_status(v2.id, DeploymentStatus::Building, None).await.expect("building");
    let half_built = world.dir.path().join("releases/app/v2");
    std::fs::create_dir_all(&half_built).expect("release dir");

    let world = World { orchestrator: world.restarted(), ..world };
    world.orchestrator.restore().await.expect("restore");
    let v2 = world.deployment(2).await;
    assert_eq!((v2.status, v2.failure.as_deref()), (DeploymentStatus::Failed, Some(INTERRUPTED)));
    assert_eq!(world.store.build(build.id).await.expect("build").status, BuildStatus::Failed);
    assert!(!half_built.exists(), "the half-made release directory is removed");
    world.serves(1, 1).await;
    world.push().await.expect("the next push works");
    world.serves(3, 1).await;
}

#[tokio::test]
async fn a_push_during_the_restore_waits_for_it_and_stays_live() {
    let world = World::new(1).await;
    // A restart: the runtime lost its instances (processes die with the server).
    world.runtime.instances.lock().expect("instances").clear();
    let world = World { orchestrator: world.restarted(), ..world };
    let restore = world.orchestrator.begin_restore().await.expect("begin restore");
    let push = tokio::spawn({
        let (orchestrator, project) = (Arc::clone(&world.orchestrator), world.project.clone());
        async move { orchestrator.deploy_commit(&project, "f00d", Arc::new(super::NullSink)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!push.is_finished(), "the push waits for the restore");
    assert_eq!(world.store.deployments(world.project.id, 10).await.expect("deployments").len(), 1);
    restore.run().await.expect("restore");
    let v2 = push.await.expect("task").expect("the push deploys after the restore");
    assert_eq!(v2.version, 2);
    world.serves(2, 1).await;
}

// ----- Release phase ----------------------------------------------------------------------

/// A log sink that keeps every line, as a push's output does.
#[derive(Default)]
struct Lines(Mutex<Vec<String>>);

impl LogSink for Lines {
    fn line(&self, line: &str) {
        self.0.lock().expect("lines").push(line.to_owned());
    }
}

impl Lines {
    fn text(&self) -> String {
        self.0.lock().expect("lines").join("\n")
    }
}

impl World {
    fn releases(&self) -> Vec<OneOffRun> {
        self.runtime.one_offs.lock().expect("one-offs").clone()
    }

    async fn push_logged(&self, lines: &Arc<Lines>) -> Result<Deployment> {
        self.orchestrator.deploy_commit(&self.project, "c0ffee", Arc::clone(lines) as _).await
    }
}

#[tokio::test]
async fn a_release_command_runs_once_per_new_release_before_its_instances() {
    let world = World::new(1).await;
    assert!(world.releases().is_empty(), "a build without a release line runs none");
    *world.builder.release.lock().expect("release") = Some("python3 migrate.py".into());

    let lines = Arc::new(Lines::default());
    world.push_logged(&lines).await.expect("v2 deploys");
    world.serves(2, 1).await;
    let releases = world.releases();
    assert_eq!(releases.len(), 1, "{releases:?}");
    assert_eq!((releases[0].version, releases[0].instances_of_its_version), (2, 0), "before any v2 instance");
    assert_eq!(releases[0].argv, ["sh", "-c", "python3 migrate.py"]);
    assert_eq!(releases[0].env.get("GREETING").map(String::as_str), Some("hello"));
    assert_eq!(releases[0].env.get("PAASTECH_VERSION").map(String::as_str), Some("2"));
    let output = lines.text();
    for expected in
        ["Running release command: python3 migrate.py", "migrating the database", "Release command exited with code 0"]
    {
        assert!(output.contains(expected), "{expected:?} is not in the push's output:\n{output}");
    }

    // A config change is a new release: it runs again, with the new config.
    world
        .orchestrator
        .update_env(&world.project, &changes(&[("DATABASE_URL", Some("postgres://db"))]))
        .await
        .expect("v3");
    world.serves(3, 1).await;
    let releases = world.releases();
    assert_eq!(releases.len(), 2, "{releases:?}");
    assert_eq!((releases[1].version, releases[1].instances_of_its_version), (3, 0));
    assert_eq!(releases[1].env.get("DATABASE_URL").map(String::as_str), Some("postgres://db"));

    // A rollback, a scale and a restart do not run it.
    world.orchestrator.redeploy(&world.project, Some(2)).await.expect("rollback to v2");
    world.serves(4, 1).await;
    world.orchestrator.scale(&world.project, &BTreeMap::from([("web".to_owned(), 2)])).await.expect("scale");
    world.serves(4, 2).await;
    let world = World { orchestrator: world.restarted(), ..world };
    world.orchestrator.restore().await.expect("restore");
    world.serves(4, 2).await;
    assert_eq!(world.releases().len(), 2, "{:?}", world.releases());

    // It is no process type: it cannot be scaled.
    match world.orchestrator.scale(&world.project, &BTreeMap::from([("release".to_owned(), 1)])).await {
        Err(Error::Invalid(message)) => assert!(message.contains("release command"), "{message}"),
        other => panic!("scaling the release command: {other:?}"),
    }
}

#[tokio::test]
async fn a_failing_release_command_fails_the_deployment_and_the_previous_one_serves() {
    let world = World::new(2).await;
    *world.builder.release.lock().expect("release") = Some("./migrate".into());
    world.runtime.exit_code.store(3, Ordering::SeqCst);
    let starts = world.runtime.started.load(Ordering::SeqCst);

    let lines = Arc::new(Lines::default());
    assert_failed(world.push_logged(&lines).await, "release command `./migrate` exited with code 3");
    world.serves(1, 2).await;
    assert_eq!(world.runtime.started.load(Ordering::SeqCst), starts, "no v2 instance started");
    let v2 = world.deployment(2).await;
    assert_eq!(v2.status, DeploymentStatus::Failed);
    assert!(v2.failure.as_deref().is_some_and(|f| f.contains("exited with code 3")), "{:?}", v2.failure);
    let output = lines.text();
    assert!(output.contains("migrating the database"), "the step's own output reaches the push:\n{output}");
    assert!(output.contains("Release command failed: exited with code 3"), "{output}");

    // One that cannot run at all (a timeout, a missing program) fails the same way, and
    // an env change it fails leaves the config as it was.
    world.runtime.exit_code.store(0, Ordering::SeqCst);
    world.runtime.faults.set("run_once", 1);
    let result = world.orchestrator.update_env(&world.project, &changes(&[("GREETING", Some("bonjour"))])).await;
    assert_failed(result, "release command `./migrate` failed: run_once failed on purpose");
    world.serves(1, 2).await;
    assert_eq!(world.env().await, vars(&[("GREETING", "hello")]));

    // Once it succeeds, the deployment goes live.
    world.push().await.expect("v4 deploys");
    world.serves(4, 2).await;
}

// ----- Custom domains ---------------------------------------------------------------------

#[tokio::test]
async fn a_custom_domain_is_routed_at_once_kept_over_a_restart_and_unique() {
    let world = World::new(1).await;
    let app = world.project.name.clone();
    let added = world.orchestrator.add_domain(&world.project, "WWW.Example.com.").await.expect("add");
    assert_eq!(added.name.as_str(), "www.example.com", "stored in its canonical form");
    assert_eq!(world.traffic.routed_domains(), BTreeMap::from([("www.example.com".to_string(), app.clone())]));

    let invalid = world.orchestrator.add_domain(&world.project, "blog.localhost").await;
    assert!(matches!(&invalid, Err(Error::Invalid(m)) if m.contains("platform's")), "{invalid:?}");
    let again = world.orchestrator.add_domain(&world.project, "www.example.com").await;
    assert!(matches!(&again, Err(Error::Conflict(m)) if m.contains("already a domain of project app")), "{again:?}");

    // Another owner's project learns that the name is taken, not by whom.
    let stranger = world.store.create_user("bo@example.com", "hash").await.expect("user");
    let (other_name, site_name) =
        (ProjectName::parse("other").expect("name"), ProjectName::parse("site").expect("name"));
    let other = world.orchestrator.create_project(stranger.id, &other_name).await.expect("project");
    let taken = world.orchestrator.add_domain(&other, "www.example.com").await;
    assert!(matches!(&taken, Err(Error::Conflict(m)) if m.contains("taken by another project")), "{taken:?}");
    // The same owner's other project is named.
    let sibling = world.orchestrator.create_project(world.project.owner_id, &site_name).await.expect("project");
    let taken = world.orchestrator.add_domain(&sibling, "www.example.com").await;
    assert!(matches!(&taken, Err(Error::Conflict(m)) if m.contains("your project app")), "{taken:?}");

    // A restart routes the stored domains again, before the deployment is back.
    world.traffic.domains.lock().expect("domains").clear();
    let world = World { orchestrator: world.restarted(), ..world };
    let restore = world.orchestrator.begin_restore().await.expect("begin restore");
    assert_eq!(world.traffic.routed_domains(), BTreeMap::from([("www.example.com".to_string(), app.clone())]));
    restore.run().await.expect("restore");
    world.serves(1, 1).await;

    let missing = world.orchestrator.remove_domain(&world.project, "nope.example.com").await;
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");
    world.orchestrator.remove_domain(&world.project, "www.example.com").await.expect("remove");
    assert!(world.traffic.routed_domains().is_empty(), "a removed domain is routed nowhere");
    assert!(world.store.domains(world.project.id).await.expect("domains").is_empty());
    // Once free, another project may take it.
    world.orchestrator.add_domain(&other, "www.example.com").await.expect("free again");
}

// ----- HTTPS policy -----------------------------------------------------------------------

#[tokio::test]
async fn an_https_policy_is_stored_applied_at_once_and_again_at_a_restart() {
    let world = World::new(1).await;
    let app = world.project.name.clone();
    assert_eq!(world.orchestrator.https(&world.project).await.expect("policy"), HttpsPolicy::default());
    let change = HttpsChange { redirect: Some(false), hsts_max_age: Some(Some(300)) };
    let set = world.orchestrator.set_https(&world.project, change).await.expect("set");
    let expected = HttpsPolicy { redirect: false, hsts_max_age: Some(300) };
    assert_eq!(set, expected);
    assert_eq!(world.store.https_policy(world.project.id).await.expect("stored"), expected);
    assert_eq!(world.traffic.https.lock().expect("https").get(&app), Some(&expected));

    let invalid = HttpsChange { redirect: Some(true), hsts_max_age: Some(Some(63_072_001)) };
    let refused = world.orchestrator.set_https(&world.project, invalid).await;
    assert!(matches!(&refused, Err(Error::Invalid(m)) if m.contains("hsts_max_age")), "{refused:?}");
    assert_eq!(world.store.https_policy(world.project.id).await.expect("stored"), expected, "nothing changed");

    // The ingress of a new server process knows nothing: the restore hands it the policy.
    world.traffic.https.lock().expect("https").clear();
    let world = World { orchestrator: world.restarted(), ..world };
    let restore = world.orchestrator.begin_restore().await.expect("begin restore");
    assert_eq!(world.traffic.https.lock().expect("https").get(&app), Some(&expected));
    restore.run().await.expect("restore");
}

#[tokio::test]
async fn the_api_hosts_label_is_no_project_name_and_its_host_no_domain() {
    let mut world = World::new(1).await;
    let mut config = OrchestratorConfig::new(world.dir.path().join("releases"));
    config.domain_rules.api_host = Some("paastech.localhost".into());
    world.orchestrator = world.restarted_with(config);
    let owner = world.project.owner_id;
    let taken = world.orchestrator.create_project(owner, &ProjectName::parse("paastech").expect("name")).await;
    assert!(matches!(&taken, Err(Error::Invalid(m)) if m.contains("reserved")), "{taken:?}");
    world
        .orchestrator
        .create_project(owner, &ProjectName::parse("paastech2").expect("name"))
        .await
        .expect("other names");
    let refused = world.orchestrator.add_domain(&world.project, "paastech.localhost").await;
    assert!(matches!(&refused, Err(Error::Invalid(_))), "{refused:?}");
}

#[tokio::test]
async fn a_domain_change_completes_whoever_hangs_up() {
    let world = World::new(1).await;
    for _ in 0..3 {
        let start = world.steps.now();
        let add = tokio::spawn({
            let (orchestrator, project) = (Arc::clone(&world.orchestrator), world.project.clone());
            async move { orchestrator.add_domain(&project, "www.example.com").await }
        });
        world.steps.reached(start + 1).await;
        add.abort();
        world.settle(1).await;
        let stored: Vec<String> =
            world.store.domains(world.project.id).await.expect("domains").iter().map(|d| d.name.to_string()).collect();
        let routed: Vec<String> = world.traffic.routed_domains().into_keys().collect();
        assert_eq!(stored, vec!["www.example.com".to_string()]);
        assert_eq!(routed, stored, "what is routed is what is stored");
        world.orchestrator.remove_domain(&world.project, "www.example.com").await.expect("remove");
    }
}

/// Records the names each owner wants certificates for.
#[derive(Default)]
struct FakeCertificates(Mutex<BTreeMap<String, Vec<String>>>);

impl FakeCertificates {
    fn wanted(&self) -> BTreeMap<String, Vec<String>> {
        self.0.lock().expect("certificates").clone()
    }
}

impl crate::certificates::Certificates for FakeCertificates {
    fn set_names(&self, owner: &str, names: &[Hostname]) {
        let mut wanted = self.0.lock().expect("certificates");
        if names.is_empty() {
            wanted.remove(owner);
        } else {
            wanted.insert(owner.to_owned(), names.iter().map(Hostname::to_string).collect());
        }
    }

    fn status(&self, _: &Hostname) -> Option<crate::certificates::CertificateStatus> {
        None
    }
}

#[tokio::test]
async fn certificates_are_wanted_for_exactly_the_names_projects_have() {
    let world = World::new(1).await;
    let certs = Arc::new(FakeCertificates::default());
    let config = OrchestratorConfig::new(world.dir.path().join("releases"));
    let orchestrator = Arc::new(world.new_orchestrator(config).with_certificates(Arc::clone(&certs) as _));
    let wanted = |pairs: &[(&str, &[&str])]| -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(owner, names)| ((*owner).to_owned(), names.iter().map(|n| (*n).to_owned()).collect()))
            .collect()
    };
    // A start asks for every project's names before anything is served.
    let restore = orchestrator.begin_restore().await.expect("begin restore");
    assert_eq!(certs.wanted(), wanted(&[("app", &["app.localhost"])]));
    restore.run().await.expect("restore");

    let site = orchestrator
        .create_project(world.project.owner_id, &ProjectName::parse("site").expect("name"))
        .await
        .expect("project");
    orchestrator.add_domain(&world.project, "www.example.com").await.expect("add");
    assert_eq!(
        certs.wanted(),
        wanted(&[("app", &["app.localhost", "www.example.com"]), ("site", &["site.localhost"])])
    );
    // A refused domain asks for nothing.
    let taken = orchestrator.add_domain(&site, "www.example.com").await;
    assert!(matches!(taken, Err(Error::Conflict(_))), "{taken:?}");
    orchestrator.remove_domain(&world.project, "www.example.com").await.expect("remove");
    orchestrator.delete_project(&site).await.expect("delete");
    assert_eq!(certs.wanted(), wanted(&[("app", &["app.localhost"])]));
}

// ----- Routes that follow moving instances ------------------------------------------------

/// An address on another node of a cluster.
fn elsewhere(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 2], port))
}

fn sorted(mut addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    addrs.sort();
    addrs
}

impl World {
    /// A project with `webs` web instances of v1 live, on a runtime whose addresses move.
    async fn moving(webs: u32) -> World {
        let world = World::new(webs).await;
        world.runtime.moves.store(true, Ordering::SeqCst);
        world
    }

    /// What the ingress routes the project to now, sorted.
    fn routes(&self) -> Vec<SocketAddr> {
        self.traffic.routes.lock().expect("routes").get(&self.project.name).cloned().unwrap_or_default()
    }

    fn switches(&self) -> usize {
        self.traffic.switches.load(Ordering::SeqCst)
    }

    fn addr_of(&self, id: &str) -> SocketAddr {
        self.runtime.instances().into_iter().find(|i| i.id == id).and_then(|i| i.addr).expect("an address")
    }
}

#[tokio::test]
async fn a_moved_instance_is_routed_at_its_new_address_once_it_answers() {
    let world = World::moving(2).await;
    let ids = world.runtime.web_ids();
    let stays = world.addr_of(&ids[1]);
    // The cluster restarted the first instance's task on another node, where it does not
    // answer yet.
    world.runtime.change(&ids[0], |i| i.addr = Some(elsewhere(30_001)));
    world.traffic.silent.lock().expect("silent").push(elsewhere(30_001));
    world.orchestrator.follow_round().await;
    assert_eq!(world.routes(), vec![stays], "the old address is out at once, the new one not in before it answers");
    world.traffic.silent.lock().expect("silent").clear();
    world.orchestrator.follow_round().await;
    assert_eq!(world.routes(), sorted(vec![elsewhere(30_001), stays]), "in once it answers");
    world.serves(1, 2).await;
    let switches = world.switches();
    world.orchestrator.follow_round().await;
    assert_eq!(world.switches(), switches, "a round that finds nothing new switches nothing");

    // A deploy's switch is the truth again, and the follower follows its instances.
    world.push().await.expect("v2 deploys");
    world.serves(2, 2).await;
    let v2 = world.runtime.web_ids();
    world.runtime.change(&v2[1], |i| i.addr = Some(elsewhere(30_002)));
    world.orchestrator.follow_round().await;
    world.serves(2, 2).await;
    assert!(world.routes().contains(&elsewhere(30_002)), "{:?}", world.routes());
}

#[tokio::test]
async fn a_dead_or_vanished_instance_is_taken_out_within_a_round() {
    let world = World::moving(3).await;
    let ids = world.runtime.web_ids();
    let stays = world.addr_of(&ids[2]);
    world.runtime.change(&ids[0], |i| i.state = InstanceState::Crashed);
    world.runtime.instances.lock().expect("instances").retain(|i| i.id != ids[1]);
    world.orchestrator.follow_round().await;
    assert_eq!(world.routes(), vec![stays]);
    // Restarted where it was: routed again once it answers.
    world.runtime.change(&ids[0], |i| i.state = InstanceState::Running);
    world.orchestrator.follow_round().await;
    assert_eq!(world.routes(), sorted(vec![world.addr_of(&ids[0]), stays]));
}

#[tokio::test]
async fn with_no_instance_running_the_addresses_that_still_answer_stay() {
    let world = World::moving(2).await;
    let ids = world.runtime.web_ids();
    let before = world.routes();
    for id in &ids {
        world.runtime.change(id, |i| i.state = InstanceState::Restarting);
    }
    world.orchestrator.follow_round().await;
    assert_eq!(world.routes(), before, "a request is served while any replica can serve it");
    // Once they stop answering too, nothing is routed (the ingress says so) ...
    world.traffic.silent.lock().expect("silent").extend(before.iter().copied());
    world.orchestrator.follow_round().await;
    assert_eq!(world.routes(), Vec::<SocketAddr>::new());
    // ... until the tasks run again, wherever the cluster put them.
    for (n, id) in ids.iter().enumerate() {
        world.runtime.change(id, |i| {
            i.state = InstanceState::Running;
            i.addr = Some(elsewhere(30_010 + n as u16));
        });
    }
    world.orchestrator.follow_round().await;
    assert_eq!(world.routes(), vec![elsewhere(30_010), elsewhere(30_011)]);
}

#[tokio::test]
async fn a_project_whose_lock_is_held_is_left_alone_until_it_is_free() {
    let world = World::moving(1).await;
    let (before, switches) = (world.routes(), world.switches());
    let id = world.runtime.web_ids().remove(0);
    world.runtime.change(&id, |i| i.addr = Some(elsewhere(30_003)));
    let guard = world.orchestrator.lock_for(&world.project.name).lock_owned().await;
    world.orchestrator.follow_round().await;
    assert_eq!((world.routes(), world.switches()), (before, switches), "a running change decides the routes");
    drop(guard);
    world.orchestrator.follow_round().await;
    assert_eq!(world.routes(), vec![elsewhere(30_003)]);
}

#[tokio::test]
async fn a_failed_listing_changes_nothing_and_the_next_round_follows() {
    let world = World::moving(1).await;
    let before = world.routes();
    let id = world.runtime.web_ids().remove(0);
    world.runtime.change(&id, |i| i.addr = Some(elsewhere(30_004)));
    world.runtime.faults.set("list", 1);
    world.orchestrator.follow_round().await;
    assert_eq!(world.routes(), before);
    world.orchestrator.follow_round().await;
    assert_eq!(world.routes(), vec![elsewhere(30_004)]);
}

#[tokio::test]
async fn the_follower_runs_in_the_background_until_stopped() {
    let world = World::moving(1).await;
    let follower = world.orchestrator.follow_instances(Duration::from_millis(10)).expect("a follower");
    let id = world.runtime.web_ids().remove(0);
    world.runtime.change(&id, |i| i.addr = Some(elsewhere(30_005)));
    let mut followed = false;
    for _ in 0..500 {
        if world.routes() == vec![elsewhere(30_005)] {
            followed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(followed, "routes {:?}", world.routes());
    follower.stop().await;
    world.runtime.change(&id, |i| i.addr = Some(elsewhere(30_006)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(world.routes(), vec![elsewhere(30_005)], "a stopped follower switches nothing");
}

#[tokio::test]
async fn a_runtime_whose_addresses_do_not_move_starts_no_follower() {
    let world = World::new(1).await;
    assert!(world.orchestrator.follow_instances(Duration::from_millis(10)).is_none());
}

// ----- Nodes ------------------------------------------------------------------------------

#[tokio::test]
async fn a_runtime_without_a_cluster_is_one_local_node_with_every_instance() {
    let world = World::new(2).await;
    let nodes = world.orchestrator.nodes().await.expect("nodes");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!((nodes[0].id.as_str(), nodes[0].role), ("local", crate::drivers::NodeRole::Local));
    let listed: Vec<(String, u32)> = nodes[0].instances.iter().map(|i| (i.process_type.clone(), i.index)).collect();
    assert_eq!(listed, vec![("web".to_owned(), 0), ("web".to_owned(), 1)]);
}

// ----- Add-ons ----------------------------------------------------------------------------

/// An add-on kind that keeps what it provisioned in memory.
#[derive(Default)]
struct FakeAddons {
    provisioned: Mutex<std::collections::BTreeSet<String>>,
    faults: Faults,
}

impl FakeAddons {
    fn provisioned(&self) -> Vec<String> {
        self.provisioned.lock().expect("provisioned").iter().cloned().collect()
    }
}

#[async_trait]
impl AddonKind for FakeAddons {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn config_keys(&self) -> &'static [&'static str] {
        &["FAKE_URL"]
    }

    async fn provision(&self, project: &ProjectName, name: &AddonName) -> Result<EnvVars> {
        self.faults.check("provision")?;
        let id = format!("{project}/{name}");
        if !self.provisioned.lock().expect("provisioned").insert(id.clone()) {
            return Err(Error::Conflict(format!("{id} exists")));
        }
        Ok(vars(&[("FAKE_URL", &format!("fake://{id}"))]))
    }

    async fn deprovision(&self, project: &ProjectName, name: &AddonName) -> Result<()> {
        self.faults.check("deprovision")?;
        self.provisioned.lock().expect("provisioned").remove(&format!("{project}/{name}"));
        Ok(())
    }

    async fn backup(&self, _: &ProjectName, _: &AddonName, _: &EnvVars, _: BackupWriter<'_>) -> Result<()> {
        Ok(())
    }

    async fn restore(&self, _: &ProjectName, _: &AddonName, _: &EnvVars, _: BackupReader<'_>) -> Result<()> {
        Ok(())
    }
}

async fn addon_world() -> (World, Arc<FakeAddons>) {
    let fake = Arc::new(FakeAddons::default());
    let world = World::with_addon_kinds(1, vec![Arc::clone(&fake) as Arc<dyn AddonKind>]).await;
    (world, fake)
}

fn addon_name(s: &str) -> AddonName {
    AddonName::parse(s).expect("add-on name")
}

#[tokio::test]
async fn creating_an_addon_sets_its_vars_in_a_new_deployment_and_destroying_it_unsets_them() {
    let (world, fake) = addon_world().await;
    let (addon, deployment) = world.orchestrator.create_addon(&world.project, "fake", None).await.expect("create");
    assert_eq!((addon.name.as_str(), addon.kind.as_str()), ("fake", "fake"), "named after its kind by default");
    assert_eq!(deployment.map(|d| d.version), Some(2));
    world.serves(2, 1).await;
    assert_eq!(world.deployment(2).await.config.get("FAKE_URL").map(String::as_str), Some("fake://app/fake"));
    assert_eq!(world.env().await, vars(&[("FAKE_URL", "fake://app/fake"), ("GREETING", "hello")]));
    assert_eq!(fake.provisioned(), vec!["app/fake"]);
    let (_, credentials) = world.orchestrator.addon_info(&world.project, &addon_name("fake")).await.expect("info");
    assert_eq!(credentials, vars(&[("FAKE_URL", "fake://app/fake")]));

    let deployment = world.orchestrator.destroy_addon(&world.project, &addon_name("fake")).await.expect("destroy");
    assert_eq!(deployment.map(|d| d.version), Some(3));
    world.serves(3, 1).await;
    assert_eq!(world.env().await, vars(&[("GREETING", "hello")]));
    assert!(fake.provisioned().is_empty(), "deprovisioned");
    assert!(world.orchestrator.addons(&world.project).await.expect("list").is_empty());
}

#[tokio::test]
async fn a_create_whose_deployment_fails_leaves_nothing_behind() {
    let (world, fake) = addon_world().await;
    world.runtime.faults.set("start", 1);
    let result = world.orchestrator.create_addon(&world.project, "fake", Some("db")).await;
    assert_failed(result, "start failed on purpose");
    world.serves(1, 1).await;
    assert_eq!(world.env().await, vars(&[("GREETING", "hello")]), "config as it was");
    assert!(world.orchestrator.addons(&world.project).await.expect("list").is_empty(), "no record");
    assert!(fake.provisioned().is_empty(), "deprovisioned");

    // A failed provision records nothing and changes no config.
    fake.faults.set("provision", 1);
    let err = world.orchestrator.create_addon(&world.project, "fake", Some("db")).await.expect_err("refused");
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(world.orchestrator.addons(&world.project).await.expect("list").is_empty());
    assert_eq!(world.env().await, vars(&[("GREETING", "hello")]));
    world.serves(1, 1).await;
}

#[tokio::test]
async fn an_unknown_kind_a_taken_name_and_a_clashing_var_are_refused() {
    let (world, fake) = addon_world().await;
    let err = world.orchestrator.create_addon(&world.project, "mysql", None).await.expect_err("unknown kind");
    assert!(
        matches!(&err, Error::Invalid(m) if m.contains("\"mysql\"") && m.contains("configured are fake")),
        "{err:?}"
    );
    let err = world.orchestrator.create_addon(&world.project, "fake", Some("Bad_Name")).await.expect_err("bad name");
    assert!(matches!(&err, Error::Invalid(m) if m.contains("invalid add-on name")), "{err:?}");

    world.orchestrator.create_addon(&world.project, "fake", Some("db")).await.expect("create");
    let err = world.orchestrator.create_addon(&world.project, "fake", Some("db")).await.expect_err("taken");
    assert!(matches!(&err, Error::Conflict(m) if m.contains("already has an add-on named db")), "{err:?}");
    // A second add-on would overwrite the first one's FAKE_URL.
    let err = world.orchestrator.create_addon(&world.project, "fake", Some("other")).await.expect_err("clash");
    assert!(matches!(&err, Error::Conflict(m) if m.contains("FAKE_URL is already set")), "{err:?}");
    assert_eq!(fake.provisioned(), vec!["app/db"], "nothing else provisioned");
    let err = world.orchestrator.destroy_addon(&world.project, &addon_name("nope")).await.expect_err("none");
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
}

#[tokio::test]
async fn deleting_a_project_destroys_its_addons_or_keeps_it_whole() {
    let (world, fake) = addon_world().await;
    world.orchestrator.create_addon(&world.project, "fake", Some("db")).await.expect("create");
    fake.faults.set("deprovision", 1);
    let err = world.orchestrator.delete_project(&world.project).await.expect_err("the add-on cannot go");
    assert!(matches!(&err, Error::Unavailable(m) if m.contains("db: deprovision failed on purpose")), "{err:?}");
    world.serves(2, 1).await;
    assert_eq!(fake.provisioned(), vec!["app/db"]);

    world.orchestrator.delete_project(&world.project).await.expect("delete");
    assert!(fake.provisioned().is_empty(), "the add-on is destroyed with its project");
}

/// Answers each request with the next of `answers` (then 200), or never when `hang`.
#[derive(Default)]
struct FakeSender {
    answers: Mutex<Vec<AttemptResult>>,
    sent: Mutex<Vec<WebhookRequest>>,
    hang: bool,
}

#[async_trait]
impl WebhookSender for FakeSender {
    async fn send(&self, request: &WebhookRequest) -> AttemptResult {
        self.sent.lock().expect("sent").push(request.clone());
        if self.hang {
            std::future::pending::<()>().await;
        }
        let mut answers = self.answers.lock().expect("answers");
        if answers.is_empty() { AttemptResult::Answered(200) } else { answers.remove(0) }
    }
}

impl World {
    fn with_sender(&self, sender: &Arc<FakeSender>, timeout: Duration) -> Arc<Orchestrator> {
        let mut config = OrchestratorConfig::new(self.dir.path().join("releases"));
        config.webhook_retry = RetryPolicy { base_delay: Duration::from_millis(10), max_attempts: 3, timeout };
        Arc::new(self.new_orchestrator(config).with_webhooks(Arc::clone(sender) as _))
    }

    /// The attempts kept for `webhook`, once there are `count` (or after 5 s).
    async fn attempts(&self, webhook: i64, count: usize) -> Vec<WebhookAttempt> {
        for _ in 0..500 {
            let attempts = self.store.webhook_attempts(self.project.id, webhook).await.expect("attempts");
            if attempts.len() >= count {
                return attempts;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.store.webhook_attempts(self.project.id, webhook).await.expect("attempts")
    }
}

#[tokio::test]
async fn a_deploy_event_is_retried_after_a_5xx_and_each_attempt_kept() {
    let world = World::new(1).await;
    let sender = Arc::new(FakeSender {
        answers: Mutex::new(vec![AttemptResult::Answered(500), AttemptResult::Failed("connection reset".into())]),
        ..FakeSender::default()
    });
    let orchestrator = world.with_sender(&sender, Duration::from_secs(5));
    let hook = orchestrator.add_webhook(&world.project, "http://127.0.0.1:9/hook", &[], "whsec").await.expect("add");
    let refused = orchestrator
        .add_webhook(&world.project, "http://127.0.0.1:9/refused", &["deploy.failed".into()], "s2")
        .await
        .expect("add");
    orchestrator.deploy_commit(&world.project, "c0ffee", Arc::new(super::NullSink)).await.expect("v2 deploys");

    let attempts = world.attempts(hook.id, 3).await;
    let summary: Vec<_> = attempts.iter().map(|a| (a.attempt, a.status_code, a.error.clone())).collect();
    assert_eq!(
        summary,
        vec![(3, Some(200), None), (2, None, Some("connection reset".into())), (1, Some(500), None)],
        "newest first"
    );
    assert!(attempts.iter().all(|a| a.delivery == attempts[0].delivery && a.event == WebhookEvent::DeploySucceeded));
    let sent = sender.sent.lock().expect("sent").clone();
    assert_eq!(sent.len(), 3, "only the webhook that wants deploy.succeeded is called: {sent:?}");
    let payload = &sent[0].payload;
    assert_eq!((payload.project.as_str(), payload.version, payload.status.as_str()), ("app", 2, "live"));
    assert_eq!((payload.commit.as_deref(), sent[0].secret.as_str()), (Some("c0ffee"), "whsec"));
    assert!(world.store.webhook_attempts(world.project.id, refused.id).await.expect("none").is_empty());
}

#[tokio::test]
async fn a_receiver_that_never_answers_delays_no_deploy_and_a_failure_is_told() {
    let world = World::new(1).await;
    let sender = Arc::new(FakeSender { hang: true, ..FakeSender::default() });
    let orchestrator = world.with_sender(&sender, Duration::from_millis(50));
    let hook = orchestrator
        .add_webhook(&world.project, "https://example.com/h", &["deploy.failed".into()], "s")
        .await
        .expect("add");
    world.builder.faults.set("build", 1);
    let started = std::time::Instant::now();
    let failed = orchestrator.deploy_commit(&world.project, "bad", Arc::new(super::NullSink)).await;
    assert_failed(failed, "build failed");
    assert!(started.elapsed() < Duration::from_secs(2), "the deploy did not wait for the receiver");

    // Three attempts, each cut at the timeout, then the delivery gives up.
    let attempts = world.attempts(hook.id, 3).await;
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    assert!(attempts.iter().all(|a| a.error.as_deref() == Some("no answer within 0.05 s")), "{attempts:?}");
    let sent = sender.sent.lock().expect("sent").clone();
    assert_eq!(sent[0].payload.event, WebhookEvent::DeployFailed);
    assert_eq!(sent[0].payload.status, "failed");
    assert!(sent[0].payload.reason.as_deref().is_some_and(|r| r.contains("build failed")), "{:?}", sent[0].payload);
}

#[tokio::test]
async fn a_project_has_at_most_max_webhooks() {
    let world = World::new(1).await;
    for n in 0..crate::webhooks::MAX_WEBHOOKS {
        let url = format!("http://127.0.0.1:9/{n}");
        world.orchestrator.add_webhook(&world.project, &url, &[], "s").await.expect("under the limit");
    }
    match world.orchestrator.add_webhook(&world.project, "http://127.0.0.1:9/x", &[], "s").await {
        Err(Error::Conflict(message)) => assert!(message.contains("the most it may have"), "{message}"),
        other => panic!("one more is refused, got {other:?}"),
    }
    // The URL and events are checked first, whatever the count.
    let bad = world.orchestrator.add_webhook(&world.project, "ftp://x/", &[], "s").await;
    assert!(matches!(bad, Err(Error::Invalid(_))), "{bad:?}");
}

// ----- Scheduled jobs -----------------------------------------------------------------------

impl World {
    /// Every kept run of the project's jobs, newest first, once `count` are there.
    async fn cron_runs(&self, count: usize) -> Vec<CronRun> {
        for _ in 0..400 {
            let runs = self.store.cron_runs(self.project.id).await.expect("runs");
            if runs.len() >= count {
                return runs;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.store.cron_runs(self.project.id).await.expect("runs")
    }
}

/// Minute `m` after an arbitrary hour, plus `s` seconds.
fn minute(m: i64, s: i64) -> Timestamp {
    Timestamp(1_796_000_400_000 + m * 60_000 + s * 1000)
}

#[tokio::test]
async fn scheduled_jobs_run_in_the_live_deployment_follow_it_and_stop_with_the_project() {
    // Versions: v1 with a job, v2 an env change (the same build), v3 a push without jobs,
    // v4 a rollback to v1.
    let world = World::new(1).await;
    let v1_build = world.deployment(1).await.build_id.expect("v1 has a build");
    let job = CronJob { command: "echo one".into(), schedule: "* * * * *".into(), timezone: None };
    world.store.set_build_cron(v1_build, std::slice::from_ref(&job)).await.expect("jobs");
    let mut jobs = HashMap::new();

    // The first tick only starts the clock: the time before it is not run.
    world.orchestrator.cron_tick(&mut jobs, minute(0, 30)).await;
    world.orchestrator.cron_tick(&mut jobs, minute(0, 59)).await;
    assert!(world.releases().is_empty(), "nothing due yet");
    world.orchestrator.cron_tick(&mut jobs, minute(1, 0)).await;
    let runs = world.cron_runs(1).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!((runs[0].job, runs[0].version, runs[0].scheduled_at), (1, 1, minute(1, 0)));
    assert_eq!((runs[0].outcome, runs[0].exit_code), (CronOutcome::Succeeded, Some(0)));
    let one_offs = world.releases();
    assert_eq!(one_offs.len(), 1);
    assert_eq!(one_offs[0].argv, ["sh", "-c", "echo one"]);
    assert_eq!(one_offs[0].env.get("PAASTECH_VERSION").map(String::as_str), Some("1"));
    assert_eq!(one_offs[0].env.get("GREETING").map(String::as_str), Some("hello"));
    let listed = world.orchestrator.cron(&world.project).await.expect("listing");
    assert_eq!(listed.0.len(), 1);
    assert!(listed.0[0].1.is_some(), "a next time while running");

    // A non-zero exit is recorded with its code.
    world.runtime.exit_code.store(4, Ordering::SeqCst);
    world.orchestrator.cron_tick(&mut jobs, minute(2, 0)).await;
    let runs = world.cron_runs(2).await;
    assert_eq!((runs[0].outcome, runs[0].exit_code), (CronOutcome::Failed, Some(4)));
    world.runtime.exit_code.store(0, Ordering::SeqCst);

    // A config change keeps the unchanged job's clock: the time it was waiting for runs,
    // in the new deployment.
    world.orchestrator.cron_tick(&mut jobs, minute(2, 30)).await;
    world.orchestrator.update_env(&world.project, &changes(&[("GREETING", Some("hi"))])).await.expect("v2");
    world.serves(2, 1).await;
    world.orchestrator.cron_tick(&mut jobs, minute(3, 0)).await;
    let runs = world.cron_runs(3).await;
    assert_eq!((runs[0].version, runs[0].scheduled_at), (2, minute(3, 0)), "{runs:?}");
    assert_eq!(world.releases()[2].env.get("GREETING").map(String::as_str), Some("hi"));

    // Stopped: the time passes without a run, and nothing is listed as next.
    world.orchestrator.stop(&world.project, None).await.expect("stop");
    world.orchestrator.cron_tick(&mut jobs, minute(4, 0)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(world.releases().len(), 3, "no run while stopped");
    assert_eq!(world.cron_runs(4).await.len(), 3);
    assert_eq!(world.orchestrator.cron(&world.project).await.expect("listing").0[0].1, None);
    world.orchestrator.start(&world.project, None).await.expect("start");

    // A new deployment without jobs replaces them from its switch on.
    world.push().await.expect("v3");
    world.serves(3, 1).await;
    world.orchestrator.cron_tick(&mut jobs, minute(5, 0)).await;
    world.orchestrator.cron_tick(&mut jobs, minute(6, 0)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(world.releases().len(), 3, "v3 has no jobs");

    // A rollback to v1's build brings its jobs back, from the next time after it.
    world.orchestrator.redeploy(&world.project, Some(1)).await.expect("rollback");
    world.serves(4, 1).await;
    world.orchestrator.cron_tick(&mut jobs, minute(6, 30)).await;
    world.orchestrator.cron_tick(&mut jobs, minute(7, 0)).await;
    let runs = world.cron_runs(4).await;
    assert_eq!((runs[0].version, runs[0].scheduled_at), (4, minute(7, 0)), "{runs:?}");

    // A deleted project's jobs are gone.
    world.orchestrator.delete_project(&world.project).await.expect("delete");
    world.orchestrator.cron_tick(&mut jobs, minute(8, 0)).await;
    assert!(jobs.is_empty());
    assert_eq!(world.releases().len(), 4);
}

#[tokio::test]
async fn a_job_time_that_comes_while_its_run_is_going_is_skipped_and_recorded() {
    let world = World::new(1).await;
    let v1_build = world.deployment(1).await.build_id.expect("v1 has a build");
    let job = CronJob { command: "sleep 90".into(), schedule: "* * * * *".into(), timezone: None };
    world.store.set_build_cron(v1_build, &[job]).await.expect("jobs");
    let mut jobs = HashMap::new();
    world.orchestrator.cron_tick(&mut jobs, minute(0, 30)).await;

    let gate = world.runtime.one_off_gate.write().await;
    world.orchestrator.cron_tick(&mut jobs, minute(1, 0)).await;
    world.orchestrator.cron_tick(&mut jobs, minute(2, 0)).await;
    let runs = world.cron_runs(1).await;
    assert_eq!(runs.len(), 1, "only the skipped time is recorded while the run goes on: {runs:?}");
    assert_eq!((runs[0].outcome, runs[0].scheduled_at, runs[0].started_at), (CronOutcome::Skipped, minute(2, 0), None));
    assert_eq!(world.releases().len(), 1, "one run at once");
    drop(gate);
    let runs = world.cron_runs(2).await;
    assert_eq!((runs[0].outcome, runs[0].scheduled_at), (CronOutcome::Succeeded, minute(1, 0)), "{runs:?}");

    // The run ended: the next time runs.
    world.orchestrator.cron_tick(&mut jobs, minute(3, 0)).await;
    assert_eq!(world.cron_runs(3).await[0].scheduled_at, minute(3, 0));

    // A stopped project records no skipped time either.
    let gate = world.runtime.one_off_gate.write().await;
    world.orchestrator.cron_tick(&mut jobs, minute(4, 0)).await;
    for _ in 0..400 {
        if world.releases().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(world.releases().len(), 3, "the run at 4:00 started");
    world.orchestrator.stop(&world.project, None).await.expect("stop");
    world.orchestrator.cron_tick(&mut jobs, minute(5, 0)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(gate);
    let runs = world.cron_runs(4).await;
    assert_eq!(runs.len(), 4, "{runs:?}");
    assert_eq!((runs[0].outcome, runs[0].scheduled_at), (CronOutcome::Succeeded, minute(4, 0)), "{runs:?}");
}
