//! The orchestrator: push → build → deployment → rollout → health → switch, and the
//! changes that make new deployments (env, rollback, redeploy), scaling, and bringing live
//! deployments back after a restart. It speaks only core traits.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::addons::AddonKind;
use crate::certificates::{CertificateStatus, Certificates};
use crate::deployment::{Deployment, DeploymentStatus, NewDeployment};
use crate::domain::{Build, BuildStatus, EnvVars, Project, ProjectName, Timestamp, User};
use crate::drivers::{
    Artifact, BuildRequest, ImageBuilder, Instance, InstanceSpec, InstanceState, Limits, LogSink, Node, OneOff,
    PushHandler, Pusher, RefUpdate, RepoStore, Runtime, TrafficRouter,
};
use crate::error::{Error, Result};
use crate::hooks::{BuildHooks, HookContext, NoHooks};
use crate::hostname::{Domain, DomainRules, Hostname};
use crate::https::{HttpsChange, HttpsPolicy};
use crate::interactive::{TtySession, TtySize};
use crate::lifecycle::Stopped;
use crate::logs::LogHub;
use crate::metrics::metrics;
use crate::roles::{GitVerb, Role};
use crate::store::{EnvChanges, Store};
use crate::webhooks::{RetryPolicy, WebhookEvent, WebhookSender};

/// Branches whose pushes deploy; others are only stored.
pub const DEPLOY_BRANCHES: [&str; 2] = ["refs/heads/main", "refs/heads/master"];
/// Keep at most this much of a build's output in the store.
const MAX_BUILD_LOG_BYTES: usize = 512 * 1024;
/// How long a one-off command (`paastech run`) may run.
pub const ONE_OFF_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long an interactive one-off may be idle (no input, no output) by default.
pub const INTERACTIVE_IDLE: Duration = Duration::from_secs(30 * 60);
/// The most a one-off command line may weigh, all arguments together.
const MAX_ONE_OFF_BYTES: usize = 64 * 1024;
/// How long a Procfile's `release:` command may run before its deployment fails.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(600);
/// Why a deployment that was on its way when the server stopped is failed at the next start.
pub const INTERRUPTED: &str = "interrupted by a server restart";
/// How many times a web instance is started, each on a new port, while another process
/// takes the port chosen for it before the app binds it (see `wait_serving`).
const PORT_TAKEN_STARTS: usize = 3;

#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    /// Where sources are exported and built (`DIR/NAME/vN`).
    pub releases_dir: PathBuf,
    /// How long a new `web` instance has to answer before the deployment fails.
    pub health_timeout: Duration,
    /// How long replaced instances get between the polite and the forced stop.
    pub stop_grace: Duration,
    /// How long requests in flight to replaced instances may take to finish.
    pub drain_timeout: Duration,
    /// Limits of every instance.
    pub limits: Limits,
    /// Where users reach a project, with `{name}` for the project: shown after a deploy.
    pub app_url: String,
    /// How many of a project's newest builds keep their artifact (image or release
    /// directory) for rollbacks; older ones are removed after each deployment goes live.
    pub keep_builds: usize,
    /// The names a project may not claim as a custom domain (the app domain and the API's
    /// host).
    pub domain_rules: DomainRules,
    /// How long a Procfile's `release:` command may run.
    pub release_timeout: Duration,
    /// How webhook deliveries are attempted (timeout, attempts, first wait).
    pub webhook_retry: RetryPolicy,
    /// How many preview apps one project may have at once.
    pub max_previews: usize,
    /// How long an interactive one-off (`paastech run` from a terminal) may go without
    /// input or output before it is ended.
    pub interactive_idle: Duration,
    /// How long a minute of a project's sleep idle time (`after_minutes`) lasts: 60 s,
    /// except in tests (`[ingress] sleep_minute_secs`).
    pub sleep_minute: Duration,
}

impl OrchestratorConfig {
    pub fn new(releases_dir: PathBuf) -> Self {
        OrchestratorConfig {
            releases_dir,
            health_timeout: Duration::from_secs(30),
            stop_grace: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            limits: Limits::default(),
            app_url: "http://{name}.localhost".into(),
            keep_builds: 10,
            domain_rules: DomainRules::new("localhost"),
            release_timeout: RELEASE_TIMEOUT,
            webhook_retry: RetryPolicy::default(),
            max_previews: crate::previews::DEFAULT_MAX_PER_PROJECT,
            interactive_idle: INTERACTIVE_IDLE,
            sleep_minute: Duration::from_secs(60),
        }
    }
}

/// The instances serving a project's live deployment.
#[derive(Debug, Clone)]
struct Running {
    version: i64,
    instances: Vec<Instance>,
}

pub struct Orchestrator {
    store: Arc<dyn Store>,
    repos: Arc<dyn RepoStore>,
    builder: Arc<dyn ImageBuilder>,
    runtime: Arc<dyn Runtime>,
    traffic: Arc<dyn TrafficRouter>,
    logs: Arc<LogHub>,
    hooks: Arc<dyn BuildHooks>,
    /// Who obtains certificates for projects' names, when the ingress serves HTTPS by ACME.
    certificates: Option<Arc<dyn Certificates>>,
    /// The configured add-on kinds (`[addons.KIND]`), by kind.
    addon_kinds: BTreeMap<String, Arc<dyn AddonKind>>,
    config: OrchestratorConfig,
    /// One deploy at a time per project; different projects in parallel.
    locks: Mutex<HashMap<ProjectName, Arc<tokio::sync::Mutex<()>>>>,
    running: Mutex<HashMap<ProjectName, Running>>,
    /// Each project's last usage reading and chart (`stats.rs`), in memory.
    usage: Mutex<HashMap<ProjectName, crate::stats::UsageHistory>>,
    /// Who sends deploy events to webhooks (`orchestrator/webhooks.rs`); none: none sent.
    webhook_sender: Option<Arc<dyn WebhookSender>>,
}

/// Writes to several sinks, and keeps a bounded copy for the build record.
struct Tee {
    sinks: Vec<Arc<dyn LogSink>>,
    kept: Mutex<String>,
}

impl Tee {
    fn new(sinks: Vec<Arc<dyn LogSink>>) -> Arc<Tee> {
        Arc::new(Tee { sinks, kept: Mutex::new(String::new()) })
    }

    fn text(&self) -> String {
        self.kept.lock().expect("tee lock is never poisoned").clone()
    }
}

impl LogSink for Tee {
    fn line(&self, line: &str) {
        for sink in &self.sinks {
            sink.line(line);
        }
        let mut kept = self.kept.lock().expect("tee lock is never poisoned");
        if kept.len() + line.len() < MAX_BUILD_LOG_BYTES {
            kept.push_str(line);
            kept.push('\n');
        }
    }
}

struct NullSink;

impl LogSink for NullSink {
    fn line(&self, _: &str) {}
}

impl Orchestrator {
    pub fn new(
        store: Arc<dyn Store>,
        repos: Arc<dyn RepoStore>,
        builder: Arc<dyn ImageBuilder>,
        runtime: Arc<dyn Runtime>,
        traffic: Arc<dyn TrafficRouter>,
        logs: Arc<LogHub>,
        config: OrchestratorConfig,
    ) -> Self {
        Orchestrator {
            store,
            repos,
            builder,
            runtime,
            traffic,
            logs,
            config,
            hooks: Arc::new(NoHooks),
            certificates: None,
            addon_kinds: BTreeMap::new(),
            locks: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            usage: Mutex::new(HashMap::new()),
            webhook_sender: None,
        }
    }

    /// Runs these build hooks at every deployment's stages.
    pub fn with_hooks(mut self, hooks: Arc<dyn BuildHooks>) -> Self {
        self.hooks = hooks;
        self
    }

    /// Orders certificates for each project's own name and custom domains through
    /// `certificates`, from when a project or a domain is made until it is removed.
    pub fn with_certificates(mut self, certificates: Arc<dyn Certificates>) -> Self {
        self.certificates = Some(certificates);
        self
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn logs(&self) -> &Arc<LogHub> {
        &self.logs
    }

    pub fn runtime_name(&self) -> &'static str {
        self.runtime.name()
    }

    pub fn builder_name(&self) -> &'static str {
        self.builder.name()
    }

    fn lock_for(&self, project: &ProjectName) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().expect("locks are never poisoned");
        Arc::clone(locks.entry(project.clone()).or_default())
    }

    /// Takes the project's deploy lock, telling `log` when it has to wait for another.
    async fn exclusive(&self, project: &ProjectName, log: &dyn LogSink) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self.lock_for(project);
        match Arc::clone(&lock).try_lock_owned() {
            Ok(guard) => guard,
            Err(_) => {
                log.line(&format!("-----> Another deploy of {project} is running; waiting for it to finish"));
                lock.lock_owned().await
            }
        }
    }

    // ----- Projects -------------------------------------------------------------------

    /// Creates the project and its repository; neither exists if either fails.
    /// Runs a change of a project's state on a task of its own, and waits for its answer.
    /// Whoever waits may hang up (an HTTP client that goes away drops this future): the
    /// change still runs to its end, or to its undo, never stopping half-way. Changes of
    /// one project are serialized by its lock, inside `work`.
    async fn detached<T, F, Fut>(self: &Arc<Self>, work: F) -> Result<T>
    where
        F: FnOnce(Arc<Orchestrator>) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        tokio::spawn(work(Arc::clone(self)))
            .await
            .unwrap_or_else(|err| Err(Error::internal("a project change stopped unexpectedly", err)))
    }

    // ----- Projects -------------------------------------------------------------------

    /// Creates the project and its repository; neither exists if either fails.
    pub async fn create_project(self: &Arc<Self>, owner_id: i64, name: &ProjectName) -> Result<Project> {
        self.check_project_name(name)?;
        let name = name.clone();
        self.detached(move |this| async move {
            let project = this.store.create_project(owner_id, &name).await?;
            if let Err(err) = this.repos.create(&name).await {
                if let Err(cleanup) = this.store.delete_project(project.id).await {
                    tracing::error!(project = %name, error = %cleanup, "cannot remove a half-created project");
                }
                return Err(err);
            }
            this.traffic.switch(&name, Vec::new(), Duration::ZERO).await;
            this.want_certificates(&project, &[]);
            Ok(project)
        })
        .await
    }

    /// Stops everything of the project and deletes it, its repository, releases and logs.
    pub async fn delete_project(self: &Arc<Self>, project: &Project) -> Result<()> {
        let project = project.clone();
        self.detached(move |this| async move { this.delete_project_now(&project).await }).await
    }

    async fn delete_project_now(&self, project: &Project) -> Result<()> {
        for preview in self.store.previews(project.id).await? {
            self.remove_project(&preview).await?;
        }
        self.remove_project(project).await
    }

    /// Deletes one project (not its previews: they go first) under its lock.
    async fn remove_project(&self, project: &Project) -> Result<()> {
        let _guard = self.exclusive(&project.name, &NullSink).await;
        // First: an add-on that cannot be destroyed keeps the project whole and serving.
        self.deprovision_all(project).await?;
        self.traffic.remove(&project.name);
        if let Some(certificates) = &self.certificates {
            certificates.set_names(project.name.as_str(), &[]);
        }
        let running = self.running.lock().expect("running lock").remove(&project.name);
        if let Some(running) = running {
            self.stop_instances(&running.instances).await;
        }
        self.store.delete_project(project.id).await?;
        if project.preview.is_none() {
            self.repos.delete(&project.name).await?;
        }
        if let Err(err) = self.builder.forget(&project.name).await {
            tracing::warn!(project = %project.name, error = %err, "cannot forget the deleted project's build cache and uid");
        }
        let releases = self.config.releases_dir.join(project.name.as_str());
        if let Err(err) = tokio::fs::remove_dir_all(&releases).await
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(project = %project.name, error = %err, "cannot remove release directories");
        }
        self.logs.remove(&project.name);
        self.usage.lock().expect("usage lock").remove(&project.name);
        self.locks.lock().expect("locks are never poisoned").remove(&project.name);
        Ok(())
    }

    // ----- Custom domains -------------------------------------------------------------

    /// The project's custom domains, by name.
    pub async fn domains(&self, project: &Project) -> Result<Vec<Domain>> {
        self.store.domains(project.id).await
    }

    /// Gives the project a custom domain and routes it at once. `input` is validated (and
    /// put in its canonical form) against the platform's rules; a domain another project
    /// has is a `Conflict` that names that project only when it has the same owner.
    pub async fn add_domain(self: &Arc<Self>, project: &Project, input: &str) -> Result<Domain> {
        let name = self.config.domain_rules.parse(input)?;
        let project = project.clone();
        self.detached(move |this| async move {
            let _guard = this.exclusive(&project.name, &NullSink).await;
            let domain = match this.store.add_domain(project.id, &name).await {
                Err(Error::Conflict(_)) => return Err(this.domain_taken(&project, &name).await),
                other => other?,
            };
            this.route_domains(&project).await?;
            tracing::info!(project = %project.name, domain = %name, "custom domain added");
            Ok(domain)
        })
        .await
    }

    /// Why `name` cannot be added to `project`: it belongs to a project, named only when
    /// the same user owns both (anyone else learns nothing about other users' projects).
    async fn domain_taken(&self, project: &Project, name: &Hostname) -> Error {
        let holder = match self.store.domain(name).await {
            Ok(domain) => domain.project_id,
            // Freed since: still taken as far as this request could tell.
            Err(_) => return Error::Conflict(format!("domain {name} is taken by another project")),
        };
        if holder == project.id {
            return Error::Conflict(format!("domain {name} is already a domain of project {}", project.name));
        }
        let siblings = self.store.projects(Some(project.owner_id)).await.unwrap_or_default();
        match siblings.iter().find(|p| p.id == holder) {
            Some(other) => Error::Conflict(format!("domain {name} is taken by your project {}", other.name)),
            None => Error::Conflict(format!("domain {name} is taken by another project")),
        }
    }

    /// Takes a custom domain from the project; it answers "not found" at once.
    pub async fn remove_domain(self: &Arc<Self>, project: &Project, input: &str) -> Result<()> {
        let not_found = || Error::NotFound(format!("{input:?} is not a domain of project {}", project.name));
        let name = Hostname::parse(input).map_err(|_| not_found())?;
        let project = project.clone();
        self.detached(move |this| async move {
            let _guard = this.exclusive(&project.name, &NullSink).await;
            this.store.delete_domain(project.id, &name).await?;
            this.route_domains(&project).await?;
            tracing::info!(project = %project.name, domain = %name, "custom domain removed");
            Ok(())
        })
        .await
    }

    /// Routes exactly the project's stored custom domains to it, and has certificates
    /// ordered for exactly those and its own name.
    async fn route_domains(&self, project: &Project) -> Result<()> {
        let names: Vec<Hostname> = self.store.domains(project.id).await?.into_iter().map(|d| d.name).collect();
        self.traffic.set_domains(&project.name, &names);
        self.want_certificates(project, &names);
        Ok(())
    }

    /// The project's own host name, `NAME.<domain>`.
    pub fn app_host(&self, project: &ProjectName) -> Option<Hostname> {
        Hostname::parse(&format!("{project}.{}", self.config.domain_rules.app_domain)).ok()
    }

    /// Makes the project's own name and `domains` the names it has certificates for.
    fn want_certificates(&self, project: &Project, domains: &[Hostname]) {
        let Some(certificates) = &self.certificates else { return };
        let names: Vec<Hostname> = self.app_host(&project.name).into_iter().chain(domains.iter().cloned()).collect();
        certificates.set_names(project.name.as_str(), &names);
    }

    /// Where the certificate for `name` (a project's own name or a custom domain)
    /// stands; `None` when the server obtains no certificates.
    pub fn certificate(&self, name: &Hostname) -> Option<CertificateStatus> {
        self.certificates.as_ref()?.status(name)
    }

    /// Refuses the one name whose `NAME.<domain>` is the API's public host: the ingress
    /// sends that host to the API, so a project there would never be reached.
    fn check_project_name(&self, name: &ProjectName) -> Result<()> {
        if crate::previews::is_preview_form(name) {
            return Err(Error::Invalid(format!(
                "project name {name:?} is reserved: names with \"--\" are those of preview apps (BRANCH--PROJECT)"
            )));
        }
        let rules = &self.config.domain_rules;
        let Some(api_host) = rules.api_host.as_deref() else { return Ok(()) };
        let own = format!("{name}.{}", rules.app_domain.trim_matches('.'));
        if own.eq_ignore_ascii_case(api_host.trim_end_matches('.')) {
            return Err(Error::Invalid(format!(
                "project name {name:?} is reserved: {own} is where this server's API and web UI are served"
            )));
        }
        Ok(())
    }

    // ----- HTTPS policy ---------------------------------------------------------------

    /// The project's HTTPS policy (redirect and HSTS).
    pub async fn https(&self, project: &Project) -> Result<HttpsPolicy> {
        self.store.https_policy(project.id).await
    }

    /// Changes the project's HTTPS policy: stored first, then applied by the ingress for
    /// every request after the answer. `Invalid` (nothing changed) for an out-of-range
    /// max-age.
    pub async fn set_https(self: &Arc<Self>, project: &Project, change: HttpsChange) -> Result<HttpsPolicy> {
        let project = project.clone();
        self.detached(move |this| async move {
            let _guard = this.exclusive(&project.name, &NullSink).await;
            let policy = this.store.https_policy(project.id).await?.apply(change)?;
            this.store.set_https_policy(project.id, &policy).await?;
            this.traffic.set_https(&project.name, policy);
            tracing::info!(project = %project.name, redirect = policy.redirect, hsts_max_age = ?policy.hsts_max_age, "https policy changed");
            Ok(policy)
        })
        .await
    }

    /// Hands the project's stored HTTPS policy to the ingress.
    async fn route_https(&self, project: &Project) -> Result<()> {
        let policy = self.store.https_policy(project.id).await?;
        self.traffic.set_https(&project.name, policy);
        Ok(())
    }

    /// The caller's role on the project, or `None` when they are not a member: the one
    /// place a role is decided, for the API, the web UI and git alike. Admins act as
    /// owners everywhere; the project's owner (`Project::owner_id`) is an owner; anyone
    /// else has the role of their row. A preview app takes its parent's members (it has
    /// its parent's owner too). A disabled account is nobody's member.
    pub async fn role_of(&self, user: &User, project: &Project) -> Result<Option<Role>> {
        if user.disabled {
            return Ok(None);
        }
        if user.is_admin || project.owner_id == user.id {
            return Ok(Some(Role::Owner));
        }
        let members_of = project.preview.as_ref().map_or(project.id, |of| of.parent_id);
        self.store.collaborator_role(members_of, user.id).await
    }

    /// Whether `user_id` may run git's `verb` on `project`'s repository: fetch needs a
    /// viewer, push a developer. A non-member (or a missing project) gets the same "not
    /// found or access denied"; a member lacking the role a refusal naming it.
    pub async fn authorize_repo(&self, user_id: i64, name: &ProjectName, verb: GitVerb) -> Result<PathBuf> {
        let denied = || Error::NotFound("project not found or access denied".into());
        let project = self.store.project(name).await.map_err(|_| denied())?;
        let user = self.store.user(user_id).await.map_err(|_| denied())?;
        match self.role_of(&user, &project).await? {
            None => return Err(denied()),
            Some(role) if !role.allows(verb.needed()) => return Err(role.refusal(verb.needed(), name.as_str())),
            Some(_) => {}
        }
        if project.preview.is_some() {
            let parent = self.source_repo(&project).await?;
            return Err(Error::Invalid(format!(
                "{name} is a preview app and has no repository of its own: push its branch to {parent}"
            )));
        }
        Ok(self.repos.path(name))
    }

    // ----- Deployments ----------------------------------------------------------------

    /// Builds `commit` and rolls it out as a new deployment; the push's handler.
    pub async fn deploy_commit(&self, project: &Project, commit: &str, log: Arc<dyn LogSink>) -> Result<Deployment> {
        let _guard = self.exclusive(&project.name, log.as_ref()).await;
        let env = self.store.env(project.id).await?;
        let scale = self.store.scale(project.id).await?;
        let build = self.store.create_build(project.id, commit).await?;
        let new = NewDeployment {
            project_id: project.id,
            status: DeploymentStatus::Queued,
            build_id: Some(build.id),
            commit: Some(commit.to_owned()),
            config: env.clone(),
            scale,
            cause: "push".into(),
        };
        let deployment = match self.store.create_deployment(&new).await {
            Ok(deployment) => deployment,
            Err(err) => {
                let _ = self.store.finish_build(build.id, BuildStatus::Failed, None, &BTreeMap::new(), "").await;
                return Err(err);
            }
        };
        self.logs.note(&project.name, &format!("deploying v{} (commit {})", deployment.version, short(commit)));
        let built = async {
            let building = self.store.set_deployment_status(deployment.id, DeploymentStatus::Building, None).await?;
            let artifact = self.build(project, &building, &build, &env, Arc::clone(&log)).await?;
            let built = self.store.set_deployment_status(deployment.id, DeploymentStatus::Built, None).await?;
            Ok((built, artifact))
        }
        .await;
        match built {
            Ok((built, artifact)) => {
                self.roll_out(project, built, &artifact, log, &EnvChanges::new(), ReleasePhase::Run).await
            }
            Err(err) => Err(self.fail(project, &deployment, err).await),
        }
    }

    async fn build(
        &self,
        project: &Project,
        deployment: &Deployment,
        build: &Build,
        env: &EnvVars,
        log: Arc<dyn LogSink>,
    ) -> Result<Artifact> {
        let commit = build.commit.as_str();
        let tee = Tee::new(vec![log, self.logs.sink(&project.name, "build")]);
        let source = self.release_dir(&project.name, deployment.version);
        let result = async {
            if tokio::fs::try_exists(&source).await.unwrap_or(false) {
                tokio::fs::remove_dir_all(&source)
                    .await
                    .map_err(|e| Error::internal("clearing the release directory", e))?;
            }
            tokio::fs::create_dir_all(&source)
                .await
                .map_err(|e| Error::internal("creating the release directory", e))?;
            tee.line(&format!("-----> Building {} v{} from {}", project.name, deployment.version, short(commit)));
            self.repos.export(&self.source_repo(project).await?, commit, &source).await?;
            let ctx = HookContext {
                project: project.name.clone(),
                version: deployment.version,
                commit: Some(commit.to_owned()),
                source: Some(source.clone()),
            };
            let mut build_env = env.clone();
            build_env.extend(self.pre_build(&ctx, &source, tee.as_ref()).await?);
            self.keep_cron_jobs(build, &source, tee.as_ref()).await?;
            let request = BuildRequest {
                project: project.name.clone(),
                version: deployment.version,
                commit: commit.to_owned(),
                source: source.clone(),
                env: build_env,
            };
            let artifact = self.builder.build(&request, tee.as_ref()).await?;
            self.hooks.post_build(&ctx, &artifact, tee.as_ref()).await?;
            Ok(artifact)
        }
        .await;
        match result {
            Ok(artifact) => {
                if artifact.instance_types().next().is_none() {
                    let err = Error::DeployFailed("the build defines no process types: add a Procfile".into());
                    let _ = self.finish_build(build, BuildStatus::Failed, None, &BTreeMap::new(), &tee).await;
                    let _ = tokio::fs::remove_dir_all(&source).await;
                    return Err(err);
                }
                // A builder that made an image does not need the exported source any more.
                if Path::new(&artifact.reference) != source {
                    let _ = tokio::fs::remove_dir_all(&source).await;
                }
                let processes: Vec<&str> = artifact.instance_types().collect();
                tee.line(&format!("-----> Build succeeded; process types: {}", processes.join(", ")));
                if let Some(command) = artifact.release_command() {
                    tee.line(&format!("-----> Release command: {command}"));
                }
                self.finish_build(build, BuildStatus::Succeeded, Some(&artifact.reference), &artifact.processes, &tee)
                    .await?;
                Ok(artifact)
            }
            Err(err) => {
                tee.line(&format!("-----> Build failed: {err}"));
                let _ = self.finish_build(build, BuildStatus::Failed, None, &BTreeMap::new(), &tee).await;
                let _ = tokio::fs::remove_dir_all(&source).await;
                Err(match err {
                    Error::DeployFailed(m) => Error::DeployFailed(m),
                    Error::Invalid(m) => Error::DeployFailed(format!("build failed: {m}")),
                    other => Error::DeployFailed(format!("build failed: {other}")),
                })
            }
        }
    }

    /// Runs the pre-build hooks, then copies what they wrote into the build tree.
    async fn pre_build(&self, ctx: &HookContext, source: &Path, log: &dyn LogSink) -> Result<EnvVars> {
        let out = source.with_extension("hook-out");
        let _ = tokio::fs::remove_dir_all(&out).await;
        tokio::fs::create_dir_all(&out).await.map_err(|e| Error::internal("creating the hook output directory", e))?;
        let result = self.hooks.pre_build(ctx, &out, log).await;
        let copied = match &result {
            Ok(_) => {
                let (from, to) = (out.clone(), source.to_owned());
                tokio::task::spawn_blocking(move || copy_tree(&from, &to))
                    .await
                    .map_err(|e| Error::internal("copying hook output", e))?
                    .map_err(|e| Error::internal("copying hook output into the build tree", e))
            }
            Err(_) => Ok(()),
        };
        let _ = tokio::fs::remove_dir_all(&out).await;
        copied?;
        result
    }

    async fn finish_build(
        &self,
        build: &Build,
        status: BuildStatus,
        artifact: Option<&str>,
        processes: &BTreeMap<String, String>,
        tee: &Tee,
    ) -> Result<Build> {
        metrics().build(status == BuildStatus::Succeeded, since(build.created_at));
        self.store.finish_build(build.id, status, artifact, processes, &tee.text()).await
    }

    fn release_dir(&self, project: &ProjectName, version: i64) -> PathBuf {
        self.config.releases_dir.join(project.as_str()).join(format!("v{version}"))
    }

    /// Marks the deployment failed and returns the error to report.
    async fn fail(&self, project: &Project, deployment: &Deployment, err: Error) -> Error {
        let reason = err.to_string();
        if let Err(store_err) =
            self.store.set_deployment_status(deployment.id, DeploymentStatus::Failed, Some(&reason)).await
        {
            tracing::error!(project = %project.name, error = %store_err, "cannot record a failed deployment");
        }
        self.logs.note(&project.name, &format!("v{} failed: {reason}", deployment.version));
        metrics().deploy(false, since(deployment.created_at));
        self.deploy_event(project, deployment, WebhookEvent::DeployFailed, Some(&reason));
        tracing::warn!(project = %project.name, version = deployment.version, reason = %reason, "deployment failed");
        match err {
            Error::DeployFailed(_) => err,
            other => Error::DeployFailed(format!("v{} failed: {other}", deployment.version)),
        }
    }

    /// The process types and counts a deployment runs: every type of the build (not its
    /// release command), `web` and the others once unless scaled otherwise, and none of
    /// a type that is `stopped`.
    fn plan(artifact: &Artifact, scale: &BTreeMap<String, u32>, stopped: &Stopped) -> Vec<(String, u32)> {
        stopped.apply(
            artifact
                .instance_types()
                .map(|process| (process.to_owned(), scale.get(process).copied().unwrap_or(1)))
                .collect(),
        )
    }

    /// Starts a built deployment (after its release command, when `phase` says to run
    /// it), checks its health, switches traffic to it, records it live together with `env`
    /// (the config change it carries), and stops the deployment it replaces. Each step that
    /// fails undoes the ones before it: what was started is stopped, traffic goes back, the
    /// store keeps the previous deployment live and the env unchanged, and the deployment is
    /// recorded failed.
    async fn roll_out(
        &self,
        project: &Project,
        deployment: Deployment,
        artifact: &Artifact,
        log: Arc<dyn LogSink>,
        env: &EnvChanges,
        phase: ReleasePhase,
    ) -> Result<Deployment> {
        let ctx = self.hook_context(project, &deployment, artifact);
        let mut started: Vec<Instance> = Vec::new();
        let healthy = async {
            let starting = self.store.set_deployment_status(deployment.id, DeploymentStatus::Starting, None).await?;
            let extra_env = self.pre_deploy(&ctx, &starting, artifact, log.as_ref()).await?;
            if let (ReleasePhase::Run, Some(command)) = (phase, artifact.release_command()) {
                self.run_release(project, &starting, artifact, command, &extra_env, &log).await?;
            }
            log.line(&format!("-----> Starting v{}", deployment.version));
            // A deployment of a sleeping project starts and checks its web like any other
            // (a broken push still fails); it is awake once live, and sleeps again after
            // its idle time.
            self.start_and_check(project, &starting, artifact, &extra_env, &mut started, log.as_ref()).await?;
            self.store.set_deployment_status(deployment.id, DeploymentStatus::Healthy, None).await
        }
        .await;
        if let Err(err) = healthy {
            self.stop_instances(&started).await;
            return Err(self.fail(project, &deployment, err).await);
        }

        let previous = self.running.lock().expect("running lock").get(&project.name).cloned();
        self.traffic.switch(&project.name, web_addrs(&started), self.config.drain_timeout).await;
        let live = match self.store.make_live(deployment.id, env).await {
            Ok(live) => live,
            Err(err) => {
                // The store still says the previous deployment is live: so must the ingress.
                let back = previous.as_ref().map(|p| web_addrs(&p.instances)).unwrap_or_default();
                self.traffic.switch(&project.name, back, self.config.drain_timeout).await;
                self.stop_instances(&started).await;
                return Err(self.fail(project, &deployment, err).await);
            }
        };
        metrics().deploy(true, since(deployment.created_at));
        self.mark_awake(project).await;
        self.deploy_event(project, &live, WebhookEvent::DeploySucceeded, None);
        self.running
            .lock()
            .expect("running lock")
            .insert(project.name.clone(), Running { version: live.version, instances: started });
        if let Some(previous) = previous {
            // Traffic has moved and drained: the pusher need not wait for the old instances'
            // polite stop (up to the grace period).
            let (runtime, grace) = (Arc::clone(&self.runtime), self.config.stop_grace);
            tokio::spawn(async move {
                for instance in previous.instances {
                    if let Err(err) = runtime.stop(&instance.id, grace).await {
                        tracing::warn!(instance = %instance.id, error = %err, "cannot stop a replaced instance");
                    }
                }
            });
        }
        self.prune_builds(project, &live).await;
        self.hooks.post_deploy(&ctx, log.as_ref()).await;
        self.logs.note(&project.name, &format!("v{} is live", live.version));
        tracing::info!(project = %project.name, version = live.version, "deployment live");
        Ok(live)
    }

    /// Runs the release command of a new deployment once, with its config, its output
    /// going to `log` (the push) and to the project's log as `release`. A non-zero exit, a
    /// timeout or a command that cannot start fails the deployment; nothing of the
    /// deployment has started yet, so nothing is left to undo.
    async fn run_release(
        &self,
        project: &Project,
        deployment: &Deployment,
        artifact: &Artifact,
        command: &str,
        extra_env: &EnvVars,
        log: &Arc<dyn LogSink>,
    ) -> Result<()> {
        let output = Tee::new(vec![Arc::clone(log), self.logs.sink(&project.name, "release")]);
        output.line(&format!("-----> Running release command: {command}"));
        let spec = InstanceSpec {
            project: project.name.clone(),
            version: deployment.version,
            process_type: crate::app::procfile::RELEASE.into(),
            index: 0,
            artifact: artifact.reference.clone(),
            command: command.to_owned(),
            env: app_env(project, deployment, extra_env.clone()),
            limits: self.limits_of(project).await?,
        };
        // The Procfile line is the app's own shell command, as for its process types.
        let run =
            OneOff { argv: vec!["sh".into(), "-c".into(), command.to_owned()], timeout: self.config.release_timeout };
        let failed = |why: String| {
            output.line(&format!("-----> Release command failed: {why}"));
            Err(Error::DeployFailed(format!("release command `{command}` {why}")))
        };
        match self.runtime.run_once(spec, run, Arc::clone(&output) as Arc<dyn LogSink>).await {
            Ok(0) => {
                output.line("-----> Release command exited with code 0");
                tracing::info!(project = %project.name, version = deployment.version, "release command succeeded");
                Ok(())
            }
            Ok(code) => failed(format!("exited with code {code}")),
            Err(err) => failed(format!("failed: {err}")),
        }
    }

    /// What hooks are told about a deployment; the build's tree is its source when the
    /// artifact is a directory that still exists (local processes).
    fn hook_context(&self, project: &Project, deployment: &Deployment, artifact: &Artifact) -> HookContext {
        let dir = PathBuf::from(&artifact.reference);
        HookContext {
            project: project.name.clone(),
            version: deployment.version,
            commit: deployment.commit.clone(),
            source: (dir.is_absolute() && dir.is_dir()).then_some(dir),
        }
    }

    async fn pre_deploy(
        &self,
        ctx: &HookContext,
        deployment: &Deployment,
        artifact: &Artifact,
        log: &dyn LogSink,
    ) -> Result<EnvVars> {
        let env_names: Vec<String> = deployment.config.keys().cloned().collect();
        let process_types: Vec<String> = artifact.instance_types().map(str::to_owned).collect();
        self.hooks.pre_deploy(ctx, &env_names, &process_types, log).await
    }

    async fn start_and_check(
        &self,
        project: &Project,
        deployment: &Deployment,
        artifact: &Artifact,
        extra_env: &EnvVars,
        started: &mut Vec<Instance>,
        log: &dyn LogSink,
    ) -> Result<()> {
        let limits = self.limits_of(project).await?;
        let env = app_env(project, deployment, extra_env.clone());
        // Stopped stays stopped whatever deploys (as a Heroku app scaled to zero stays at
        // zero): only `start` starts it.
        let stopped = self.store.stopped(project.id).await?;
        // The live deployment of a sleeping project (the restore at start) leaves its web
        // to its first request; a new deployment starts and checks it.
        let asleep = deployment.status == DeploymentStatus::Live && self.store.sleep(project.id).await?.asleep;
        let planned = if asleep {
            let mut planned = stopped.clone();
            planned.stop(Some("web"));
            planned
        } else {
            stopped.clone()
        };
        if stopped.is_all() {
            log.line(&format!(
                "-----> {} is stopped: v{} starts no instance (`paastech start` starts it)",
                project.name, deployment.version
            ));
        } else {
            for process in artifact.instance_types().filter(|p| stopped.contains(p)) {
                log.line(&format!("-----> {process} is stopped: not started (`paastech start --process {process}`)"));
            }
        }
        let (first, mut specs) = (started.len(), Vec::new());
        for (process, count) in Self::plan(artifact, &deployment.scale, &planned) {
            for index in 0..count {
                let spec = instance_spec(project, deployment, artifact, &process, index, &env, limits);
                started.push(self.start_instance(spec.clone()).await?);
                specs.push(spec);
            }
        }
        for (instance, spec) in started[first..].iter_mut().zip(&specs).filter(|(i, _)| i.process_type == "web") {
            log.line(&format!("-----> Waiting for web.{} to answer HTTP", instance.index + 1));
            self.wait_serving(project, instance, spec).await?;
        }
        // Processes without a health check must at least not have died straight away.
        let ids: Vec<&str> = started.iter().map(|i| i.id.as_str()).collect();
        let states = self.runtime.list_project(&project.name).await?;
        if let Some(dead) =
            states.iter().find(|i| ids.contains(&i.id.as_str()) && matches!(i.state, InstanceState::Crashed))
        {
            return Err(Error::DeployFailed(format!(
                "{}.{} exited at start; see `paastech logs`",
                dead.process_type,
                dead.index + 1
            )));
        }
        Ok(())
    }

    /// Starts one instance, its output going to the project's log as `TYPE.N`.
    async fn start_instance(&self, spec: InstanceSpec) -> Result<Instance> {
        let output = self.logs.sink(&spec.project, &format!("{}.{}", spec.process_type, spec.index + 1));
        self.runtime.start(spec, output).await
    }

    /// Waits for a web instance to answer on its own address ([`Self::wait_healthy`]).
    /// When another process answers there instead (it took the port before the app bound
    /// it: [`Runtime::answers_itself`]), the instance is stopped and started again from
    /// `spec`, on another port, a few times; `instance` is then the new one.
    async fn wait_serving(&self, project: &Project, instance: &mut Instance, spec: &InstanceSpec) -> Result<()> {
        let name = format!("web.{}", instance.index + 1);
        for attempt in 1..=PORT_TAKEN_STARTS {
            let addr =
                instance.addr.ok_or_else(|| Error::internal_msg(format!("the runtime gave {name} no address")))?;
            self.wait_healthy(project, instance, addr).await?;
            if self.runtime.answers_itself(instance).await? {
                return Ok(());
            }
            tracing::warn!(project = %project.name, instance = %instance.id, %addr, "another process answers on the instance's port");
            self.stop_instances(std::slice::from_ref(instance)).await;
            if attempt == PORT_TAKEN_STARTS {
                break;
            }
            self.logs.note(
                &project.name,
                &format!("{name}: another process took its port {addr} before it listened; starting it on another"),
            );
            *instance = self.start_instance(spec.clone()).await?;
        }
        Err(Error::DeployFailed(format!(
            "{name}: another process took each port chosen for it ({PORT_TAKEN_STARTS} tries) before it listened"
        )))
    }

    /// Waits for a web instance to answer, failing early if it exits.
    async fn wait_healthy(&self, project: &Project, instance: &Instance, addr: SocketAddr) -> Result<()> {
        let name = format!("web.{}", instance.index + 1);
        let exited = async {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let Ok(status) = self.runtime.status(&instance.id).await else {
                    continue;
                };
                match status {
                    Some(i) if i.restarts > 0 || matches!(i.state, InstanceState::Crashed | InstanceState::Stopped) => {
                        return;
                    }
                    None => return,
                    _ => {}
                }
            }
        };
        tokio::select! {
            result = self.traffic.wait_healthy(addr, self.config.health_timeout) => result.map_err(|err| {
                Error::DeployFailed(format!("{name} did not pass its health check: {err}"))
            }),
            () = exited => {
                let tail = self.logs.tail(&project.name, 5).join("\n");
                Err(Error::DeployFailed(format!("{name} exited at start; last log lines:\n{tail}")))
            }
        }
    }

    async fn stop_instances(&self, instances: &[Instance]) {
        for instance in instances {
            if let Err(err) = self.runtime.stop(&instance.id, self.config.stop_grace).await {
                tracing::warn!(instance = %instance.id, error = %err, "cannot stop instance");
            }
        }
    }

    /// Removes the artifacts of builds older than the newest `keep_builds` (never the live
    /// one's), so disk use stays bounded; their records and logs stay. Failures are only
    /// logged: a leftover artifact costs space, not correctness.
    async fn prune_builds(&self, project: &Project, live: &Deployment) {
        let keep = self.config.keep_builds.max(2);
        let Ok(deployments) = self.store.deployments(project.id, 500).await else { return };
        let mut seen: Vec<i64> = Vec::new();
        for build_id in deployments.iter().filter_map(|d| d.build_id) {
            if !seen.contains(&build_id) {
                seen.push(build_id);
            }
        }
        for build_id in seen.into_iter().skip(keep).filter(|id| Some(*id) != live.build_id) {
            let Ok(build) = self.store.build(build_id).await else { continue };
            let Some(artifact) = build.artifact.as_deref() else { continue };
            match self.builder.remove(artifact).await {
                Ok(()) => {
                    if let Err(err) = self.store.clear_build_artifact(build_id).await {
                        tracing::warn!(project = %project.name, build = build_id, error = %err, "cannot record a pruned build");
                    }
                    tracing::info!(project = %project.name, build = build_id, "removed an old build's artifact");
                }
                Err(err) => {
                    tracing::warn!(project = %project.name, build = build_id, error = %err, "cannot remove an old build")
                }
            }
        }
    }

    /// The artifact of a deployment's build, if it has a successful one.
    async fn artifact_of(&self, deployment: &Deployment) -> Result<(Build, Artifact)> {
        let build_id = deployment
            .build_id
            .ok_or_else(|| Error::Invalid(format!("v{} has no build to deploy", deployment.version)))?;
        let build = self.store.build(build_id).await?;
        match (&build.status, &build.artifact) {
            (BuildStatus::Succeeded, Some(reference)) => {
                let artifact = Artifact { reference: reference.clone(), processes: build.processes.clone() };
                Ok((build, artifact))
            }
            (BuildStatus::Succeeded, None) => Err(Error::Invalid(format!(
                "the build of v{} was removed to save space (only the newest {} builds are kept); push its commit again",
                deployment.version, self.config.keep_builds
            ))),
            _ => Err(Error::Invalid(format!("v{} has no successful build to deploy", deployment.version))),
        }
    }

    /// A new deployment of an existing build with the given config; `env` is the change to
    /// the project's env that is saved when (and only if) it goes live.
    async fn deploy_build(
        &self,
        project: &Project,
        build: &Build,
        artifact: &Artifact,
        config: EnvVars,
        cause: Cause,
        env: &EnvChanges,
    ) -> Result<Deployment> {
        let Cause { text: cause, phase } = cause;
        let scale = self.store.scale(project.id).await?;
        let deployment = self
            .store
            .create_deployment(&NewDeployment {
                project_id: project.id,
                status: DeploymentStatus::Queued,
                build_id: Some(build.id),
                commit: Some(build.commit.clone()),
                config,
                scale,
                cause: cause.clone(),
            })
            .await?;
        self.logs.note(&project.name, &format!("deploying v{} ({cause})", deployment.version));
        let built = match self.store.set_deployment_status(deployment.id, DeploymentStatus::Built, None).await {
            Ok(built) => built,
            Err(err) => return Err(self.fail(project, &deployment, err).await),
        };
        // Nobody waits on a push here: the release command's output goes to the app log.
        self.roll_out(project, built, artifact, Arc::new(NullSink), env, phase).await
    }

    /// The newest deployment that has a successful build: among the last 100, else the
    /// live one (behind a long run of failed pushes).
    async fn latest_built(&self, project: &Project) -> Result<Option<(Deployment, Build, Artifact)>> {
        let recent = self.store.deployments(project.id, 100).await?;
        let live = self.store.live_deployment(project.id).await?;
        for deployment in recent.into_iter().chain(live) {
            if deployment.build_id.is_none() {
                continue;
            }
            if let Ok((build, artifact)) = self.artifact_of(&deployment).await {
                return Ok(Some((deployment, build, artifact)));
            }
        }
        Ok(None)
    }

    /// Changes the env. With a live (or built) app this makes a new deployment, and the
    /// change is saved only if that deployment goes live (in the same transaction).
    pub async fn update_env(
        self: &Arc<Self>,
        project: &Project,
        changes: &EnvChanges,
    ) -> Result<(EnvVars, Option<Deployment>)> {
        let (project, changes) = (project.clone(), changes.clone());
        self.detached(move |this| async move { this.update_env_now(&project, &changes).await }).await
    }

    async fn update_env_now(&self, project: &Project, changes: &EnvChanges) -> Result<(EnvVars, Option<Deployment>)> {
        let _guard = self.exclusive(&project.name, &NullSink).await;
        self.update_env_locked(project, changes).await
    }

    /// `update_env` for a caller that holds the project's lock already.
    async fn update_env_locked(
        &self,
        project: &Project,
        changes: &EnvChanges,
    ) -> Result<(EnvVars, Option<Deployment>)> {
        let mut env = self.store.env(project.id).await?;
        for (key, value) in changes {
            match value {
                Some(value) => env.insert(key.clone(), value.clone()),
                None => env.remove(key),
            };
        }
        let Some((_, build, artifact)) = self.latest_built(project).await? else {
            return Ok((self.store.update_env(project.id, changes).await?, None));
        };
        let set: Vec<&str> = changes.iter().filter(|(_, v)| v.is_some()).map(|(k, _)| k.as_str()).collect();
        let unset: Vec<&str> = changes.iter().filter(|(_, v)| v.is_none()).map(|(k, _)| k.as_str()).collect();
        let mut cause = String::from("env:");
        if !set.is_empty() {
            cause.push_str(&format!(" set {}", set.join(", ")));
        }
        if !unset.is_empty() {
            cause.push_str(&format!(" unset {}", unset.join(", ")));
        }
        // A config change is a new release, as on Heroku: its release command runs with the
        // new config (an add-on's `DATABASE_URL` may be new).
        let deployment = self.deploy_build(project, &build, &artifact, env.clone(), Cause::run(cause), changes).await?;
        Ok((env, Some(deployment)))
    }

    /// Deploys again: the latest build with the current env, or, with `version`, that
    /// version's build *and* config (a rollback, which also restores the env).
    pub async fn redeploy(self: &Arc<Self>, project: &Project, version: Option<i64>) -> Result<Deployment> {
        let project = project.clone();
        self.detached(move |this| async move { this.redeploy_now(&project, version).await }).await
    }

    async fn redeploy_now(&self, project: &Project, version: Option<i64>) -> Result<Deployment> {
        let _guard = self.exclusive(&project.name, &NullSink).await;
        match version {
            None => {
                let (_, build, artifact) = self
                    .latest_built(project)
                    .await?
                    .ok_or_else(|| Error::Invalid(format!("{} has no build yet: git push first", project.name)))?;
                let env = self.store.env(project.id).await?;
                // The latest build with the current config is a new release (Heroku's
                // `releases:retry` reruns its release phase too).
                let cause = Cause::run("redeploy".into());
                self.deploy_build(project, &build, &artifact, env, cause, &EnvChanges::new()).await
            }
            Some(version) => {
                let target = self.store.deployment(project.id, version).await?;
                let (build, artifact) = self.artifact_of(&target).await?;
                // The project's env becomes the restored one, so later changes build on it.
                let current = self.store.env(project.id).await?;
                let mut restore: EnvChanges =
                    current.keys().filter(|k| !target.config.contains_key(*k)).map(|k| (k.clone(), None)).collect();
                restore.extend(target.config.iter().map(|(k, v)| (k.clone(), Some(v.clone()))));
                let cause = Cause::skip(format!("rollback to v{version}"));
                // A rollback brings back code and config that already ran their release
                // command: as on Heroku, it does not run it again.
                let config = target.config.clone();
                self.deploy_build(project, &build, &artifact, config, cause, &restore).await
            }
        }
    }

    /// Sets instance counts (types not named keep theirs) and applies them to the live
    /// deployment without a new version. The counts are saved only once the instances they
    /// add answer; if one does not, those started are stopped and nothing changes.
    pub async fn scale(
        self: &Arc<Self>,
        project: &Project,
        scale: &BTreeMap<String, u32>,
    ) -> Result<BTreeMap<String, u32>> {
        let (project, scale) = (project.clone(), scale.clone());
        self.detached(move |this| async move { this.scale_now(&project, &scale).await }).await
    }

    async fn scale_now(&self, project: &Project, scale: &BTreeMap<String, u32>) -> Result<BTreeMap<String, u32>> {
        let _guard = self.exclusive(&project.name, &NullSink).await;
        let live = self.live_artifact(project).await?;
        if let Some(release) = scale.keys().find(|p| crate::app::procfile::is_release(p)) {
            return Err(Error::Invalid(format!(
                "{release:?} is the release command, run once per deployment: it cannot be scaled"
            )));
        }
        if let Some((_, artifact)) = &live
            && let Some(unknown) = scale.keys().find(|p| !artifact.instance_types().any(|t| t == p.as_str()))
        {
            let known: Vec<&str> = artifact.instance_types().collect();
            return Err(Error::Invalid(format!(
                "no process type {unknown:?} in the live deployment; it has: {}",
                known.join(", ")
            )));
        }
        let mut wanted = self.store.scale(project.id).await?;
        wanted.extend(scale.iter().map(|(process, count)| (process.clone(), *count)));
        match live {
            Some((deployment, artifact)) => self.apply_scale(project, &deployment, &artifact, scale, &wanted).await?,
            None => self.store.set_scale(project.id, scale).await?,
        }
        Ok(wanted)
    }

    /// The live deployment and its build's artifact, if something is live.
    async fn live_artifact(&self, project: &Project) -> Result<Option<(Deployment, Artifact)>> {
        match self.store.live_deployment(project.id).await? {
            Some(deployment) => {
                let (_, artifact) = self.artifact_of(&deployment).await?;
                Ok(Some((deployment, artifact)))
            }
            None => Ok(None),
        }
    }

    /// Starts what `wanted` adds (each web instance must answer), saves `change`, switches
    /// traffic, then stops what `wanted` removes. A failure before the save stops what it
    /// started and leaves everything as it was.
    async fn apply_scale(
        &self,
        project: &Project,
        deployment: &Deployment,
        artifact: &Artifact,
        change: &BTreeMap<String, u32>,
        wanted: &BTreeMap<String, u32>,
    ) -> Result<()> {
        let current = self.running.lock().expect("running lock").get(&project.name).cloned();
        let Some(running) = current else {
            return self.store.set_scale(project.id, change).await;
        };
        // A stopped type keeps its new count for when it is started; a sleeping web, for
        // when it wakes.
        let mut stopped = self.store.stopped(project.id).await?;
        if self.store.sleep(project.id).await?.asleep {
            stopped.stop(Some("web"));
        }
        let mut started: Vec<Instance> = Vec::new();
        let added = async {
            let ctx = self.hook_context(project, deployment, artifact);
            let limits = self.limits_of(project).await?;
            let hook_log = self.logs.sink(&project.name, "hooks");
            let extra_env = self.pre_deploy(&ctx, deployment, artifact, hook_log.as_ref()).await?;
            let env = app_env(project, deployment, extra_env);
            for (process, count) in Self::plan(artifact, wanted, &stopped) {
                let have = running.instances.iter().filter(|i| i.process_type == process).count() as u32;
                for index in have..count {
                    let spec = instance_spec(project, deployment, artifact, &process, index, &env, limits);
                    let instance = self.start_instance(spec.clone()).await?;
                    let web = process == "web" && instance.addr.is_some();
                    started.push(instance);
                    if web {
                        self.wait_serving(project, started.last_mut().expect("just started"), &spec).await?;
                    }
                }
            }
            self.store.set_scale(project.id, change).await
        }
        .await;
        if let Err(err) = added {
            self.stop_instances(&started).await;
            return Err(err);
        }
        let plan: BTreeMap<String, u32> = Self::plan(artifact, wanted, &stopped).into_iter().collect();
        let (to_stop, mut kept): (Vec<Instance>, Vec<Instance>) = running
            .instances
            .into_iter()
            .partition(|i| plan.get(&i.process_type).is_some_and(|count| i.index >= *count));
        kept.extend(started);
        let web = web_addrs(&kept);
        self.running
            .lock()
            .expect("running lock")
            .insert(project.name.clone(), Running { version: running.version, instances: kept });
        self.traffic.switch(&project.name, web, self.config.drain_timeout).await;
        self.stop_instances(&to_stop).await;
        self.logs.note(&project.name, &format!("scaled: {}", describe_scale(wanted)));
        Ok(())
    }

    /// The limits of the project's instances: its own, else the server-wide ones.
    async fn limits_of(&self, project: &Project) -> Result<Limits> {
        let own = self.store.limits(project.id).await?;
        Ok(Limits {
            memory_bytes: own.memory_bytes.or(self.config.limits.memory_bytes),
            cpus: own.cpus.or(self.config.limits.cpus),
        })
    }

    /// Sets the project's own limits (`None`: the server's default) and, once it has a
    /// build, applies them with a new deployment; they are kept only if it goes live.
    pub async fn set_limits(self: &Arc<Self>, project: &Project, limits: &Limits) -> Result<Option<Deployment>> {
        let (project, limits) = (project.clone(), *limits);
        self.detached(move |this| async move { this.set_limits_now(&project, &limits).await }).await
    }

    async fn set_limits_now(&self, project: &Project, limits: &Limits) -> Result<Option<Deployment>> {
        let _guard = self.exclusive(&project.name, &NullSink).await;
        let previous = self.store.limits(project.id).await?;
        self.store.set_limits(project.id, limits).await?;
        let deployed = async {
            let Some((_, build, artifact)) = self.latest_built(project).await? else {
                return Ok(None);
            };
            let env = self.store.env(project.id).await?;
            let cause = Cause::skip(format!("limits: {}", describe_limits(limits)));
            // Limits change how the app runs, not what it is: no new release command.
            self.deploy_build(project, &build, &artifact, env, cause, &EnvChanges::new()).await.map(Some)
        }
        .await;
        if deployed.is_err()
            && let Err(err) = self.store.set_limits(project.id, &previous).await
        {
            tracing::error!(project = %project.name, error = %err, "cannot restore the limits of a failed change");
        }
        deployed
    }

    // ----- Stop, start, restart ------------------------------------------------------

    /// What is stopped of the project (`paastech stop`).
    pub async fn stopped(&self, project: &Project) -> Result<Stopped> {
        self.store.stopped(project.id).await
    }

    /// The process types of the live deployment (none before the first one).
    pub async fn process_types(&self, project: &Project) -> Result<Vec<String>> {
        Ok(self
            .live_artifact(project)
            .await?
            .map(|(_, artifact)| artifact.instance_types().map(str::to_owned).collect())
            .unwrap_or_default())
    }

    /// The live deployment's process types, checked to contain `process` when one is
    /// named: `Invalid` names the types there are.
    async fn check_process(&self, project: &Project, process: Option<&str>) -> Result<Vec<String>> {
        let live = self.live_artifact(project).await?;
        let known: Vec<String> =
            live.as_ref().map(|(_, a)| a.instance_types().map(str::to_owned).collect()).unwrap_or_default();
        let Some(process) = process else { return Ok(known) };
        if crate::app::procfile::is_release(process) {
            return Err(Error::Invalid(format!(
                "{process:?} is the release command, run once per deployment: it cannot be stopped or started"
            )));
        }
        if live.is_none() {
            return Err(Error::Invalid(format!(
                "no process type {process:?}: {} has no live deployment",
                project.name
            )));
        }
        if !known.iter().any(|p| p == process) {
            return Err(Error::Invalid(format!(
                "no process type {process:?} in the live deployment; it has: {}",
                known.join(", ")
            )));
        }
        Ok(known)
    }

    /// Stops the project's instances (of `process` alone when given) and keeps them
    /// stopped, across server restarts and whatever deploys, until `start`. The project
    /// keeps its deployments and config; when its `web` is stopped its names answer 503
    /// with a page saying the app is stopped. Stopping what is stopped changes nothing.
    pub async fn stop(self: &Arc<Self>, project: &Project, process: Option<&str>) -> Result<Stopped> {
        let (project, process) = (project.clone(), process.map(str::to_owned));
        self.detached(move |this| async move { this.stop_now(&project, process.as_deref()).await }).await
    }

    async fn stop_now(&self, project: &Project, process: Option<&str>) -> Result<Stopped> {
        let _guard = self.exclusive(&project.name, &NullSink).await;
        self.check_process(project, process).await?;
        let mut stopped = self.store.stopped(project.id).await?;
        stopped.stop(process);
        // Stored first: a server that dies half-way through starts nothing of it again.
        self.store.set_stopped(project.id, &stopped).await?;
        let current = self.running.lock().expect("running lock").get(&project.name).cloned();
        let web_stopped = stopped.contains("web");
        if let Some(running) = current {
            let (gone, kept): (Vec<Instance>, Vec<Instance>) =
                running.instances.into_iter().partition(|i| stopped.contains(&i.process_type));
            let web = web_addrs(&kept);
            self.running
                .lock()
                .expect("running lock")
                .insert(project.name.clone(), Running { version: running.version, instances: kept });
            self.traffic.set_stopped(&project.name, web_stopped);
            // Out of the ingress and drained before they are stopped.
            self.traffic.switch(&project.name, web, self.config.drain_timeout).await;
            self.stop_instances(&gone).await;
        } else {
            self.traffic.set_stopped(&project.name, web_stopped);
        }
        let what = process.map_or_else(|| "every process".to_owned(), |p| format!("{p} processes"));
        self.logs.note(&project.name, &format!("stopped {what}"));
        tracing::info!(project = %project.name, process = process.unwrap_or("*"), "stopped");
        Ok(stopped)
    }

    /// Starts what `stop` stopped (only `process` when given) in the live deployment:
    /// each web instance must answer its health check before traffic reaches it. When one
    /// does not, those started are stopped and it stays stopped. Starting what runs
    /// changes nothing.
    pub async fn start(self: &Arc<Self>, project: &Project, process: Option<&str>) -> Result<Stopped> {
        let (project, process) = (project.clone(), process.map(str::to_owned));
        self.detached(move |this| async move { this.start_now(&project, process.as_deref()).await }).await
    }

    async fn start_now(&self, project: &Project, process: Option<&str>) -> Result<Stopped> {
        let _guard = self.exclusive(&project.name, &NullSink).await;
        let known = self.check_process(project, process).await?;
        let before = self.store.stopped(project.id).await?;
        let mut after = before.clone();
        after.start(process, known.iter().map(String::as_str));
        if after == before {
            return Ok(after);
        }
        let Some((deployment, artifact)) = self.live_artifact(project).await? else {
            // Nothing to run yet: the next deployment starts.
            self.store.set_stopped(project.id, &after).await?;
            self.traffic.set_stopped(&project.name, after.contains("web"));
            return Ok(after);
        };
        let running = self
            .running
            .lock()
            .expect("running lock")
            .get(&project.name)
            .cloned()
            .unwrap_or(Running { version: deployment.version, instances: Vec::new() });
        let scale = self.store.scale(project.id).await?;
        let mut started: Vec<Instance> = Vec::new();
        let result = async {
            let ctx = self.hook_context(project, &deployment, &artifact);
            let limits = self.limits_of(project).await?;
            let hook_log = self.logs.sink(&project.name, "hooks");
            let extra_env = self.pre_deploy(&ctx, &deployment, &artifact, hook_log.as_ref()).await?;
            let env = app_env(project, &deployment, extra_env);
            for (process, count) in Self::plan(&artifact, &scale, &after) {
                if !before.contains(&process) {
                    continue;
                }
                for index in 0..count {
                    let spec = instance_spec(project, &deployment, &artifact, &process, index, &env, limits);
                    let instance = self.start_instance(spec.clone()).await?;
                    let web = process == "web" && instance.addr.is_some();
                    started.push(instance);
                    if web {
                        self.wait_serving(project, started.last_mut().expect("just started"), &spec).await?;
                    }
                }
            }
            self.store.set_stopped(project.id, &after).await
        }
        .await;
        if let Err(err) = result {
            self.stop_instances(&started).await;
            return Err(err);
        }
        let mut instances = running.instances;
        instances.extend(started);
        let web = web_addrs(&instances);
        self.running
            .lock()
            .expect("running lock")
            .insert(project.name.clone(), Running { version: deployment.version, instances });
        self.traffic.set_stopped(&project.name, after.contains("web"));
        self.traffic.switch(&project.name, web, self.config.drain_timeout).await;
        if before.contains("web") && !after.contains("web") {
            // Its web runs again: a sleep it was in before the stop is over.
            self.mark_awake(project).await;
        }
        let what = process.map_or_else(|| "every process".to_owned(), |p| format!("{p} processes"));
        self.logs.note(&project.name, &format!("started {what} of v{}", deployment.version));
        tracing::info!(project = %project.name, process = process.unwrap_or("*"), "started");
        Ok(after)
    }

    /// Replaces the live deployment's instances (of `process` alone when given) one by
    /// one, as a deploy does: a new instance starts and, for `web`, answers its health
    /// check, traffic moves to it, the old one is drained and stopped; no request to `web`
    /// fails. A stopped project (or type) is refused: `start` starts it. When a new
    /// instance fails, it is stopped and the old one keeps serving; those replaced already
    /// stay replaced. The answer is the instances restarted, as `TYPE.N`.
    pub async fn restart(self: &Arc<Self>, project: &Project, process: Option<&str>) -> Result<Vec<String>> {
        let (project, process) = (project.clone(), process.map(str::to_owned));
        self.detached(move |this| async move { this.restart_now(&project, process.as_deref()).await }).await
    }

    async fn restart_now(&self, project: &Project, process: Option<&str>) -> Result<Vec<String>> {
        let _guard = self.exclusive(&project.name, &NullSink).await;
        self.check_process(project, process).await?;
        let stopped = self.store.stopped(project.id).await?;
        match process {
            None if stopped.is_all() => {
                return Err(Error::Conflict(format!("{} is stopped: `paastech start` starts it", project.name)));
            }
            Some(process) if stopped.contains(process) => {
                return Err(Error::Conflict(format!(
                    "{process} of {} is stopped: `paastech start --process {process}` starts it",
                    project.name
                )));
            }
            _ => {}
        }
        let (deployment, artifact) = self
            .live_artifact(project)
            .await?
            .ok_or_else(|| Error::Invalid(format!("{} has nothing live to restart: git push first", project.name)))?;
        let Some(running) = self.running.lock().expect("running lock").get(&project.name).cloned() else {
            return Err(Error::Unavailable(format!(
                "{} runs no instance to restart: its live deployment could not be started; see `paastech logs`",
                project.name
            )));
        };
        let ctx = self.hook_context(project, &deployment, &artifact);
        let limits = self.limits_of(project).await?;
        let hook_log = self.logs.sink(&project.name, "hooks");
        let extra_env = self.pre_deploy(&ctx, &deployment, &artifact, hook_log.as_ref()).await?;
        let env = app_env(project, &deployment, extra_env);
        let mut current = running.instances.clone();
        let mut restarted = Vec::new();
        let mut targets: Vec<&Instance> =
            running.instances.iter().filter(|i| process.is_none_or(|p| p == i.process_type)).collect();
        targets.sort_by(|a, b| (&a.process_type, a.index).cmp(&(&b.process_type, b.index)));
        for old in targets {
            let name = format!("{}.{}", old.process_type, old.index + 1);
            let spec = instance_spec(project, &deployment, &artifact, &old.process_type, old.index, &env, limits);
            let mut new = self.start_instance(spec.clone()).await?;
            if old.process_type == "web"
                && new.addr.is_some()
                && let Err(err) = self.wait_serving(project, &mut new, &spec).await
            {
                self.stop_instances(std::slice::from_ref(&new)).await;
                self.logs.note(&project.name, &format!("restart of {name} failed; the old one keeps running: {err}"));
                return Err(err);
            }
            if let Some(slot) = current.iter_mut().find(|i| i.id == old.id) {
                *slot = new;
            }
            let web = web_addrs(&current);
            self.running
                .lock()
                .expect("running lock")
                .insert(project.name.clone(), Running { version: running.version, instances: current.clone() });
            // Traffic moves to the new instance and drains from the old before it stops.
            self.traffic.switch(&project.name, web, self.config.drain_timeout).await;
            self.stop_instances(std::slice::from_ref(old)).await;
            restarted.push(name);
        }
        self.logs.note(&project.name, &format!("restarted {}", restarted.join(", ")));
        tracing::info!(project = %project.name, instances = restarted.len(), "restarted");
        Ok(restarted)
    }

    /// Prepares a one-off command (`paastech run -- CMD…`) in the live deployment: its
    /// build, its config and the project's limits, with `argv` run as it is (no shell).
    /// Bad input and a project with nothing live are refused here, before anything runs.
    pub async fn prepare_run(&self, project: &Project, argv: Vec<String>) -> Result<PreparedRun> {
        if argv.first().is_none_or(|program| program.is_empty()) {
            return Err(Error::Invalid("command: give the program to run and its arguments".into()));
        }
        if argv.iter().any(|arg| arg.contains('\0')) {
            return Err(Error::Invalid("command: arguments cannot contain NUL bytes".into()));
        }
        if argv.iter().map(String::len).sum::<usize>() > MAX_ONE_OFF_BYTES {
            return Err(Error::Invalid(format!("command: longer than {} KiB", MAX_ONE_OFF_BYTES / 1024)));
        }
        let (deployment, artifact) = self
            .live_artifact(project)
            .await?
            .ok_or_else(|| Error::Invalid(format!("{} has nothing live to run in: git push first", project.name)))?;
        let env = app_env(project, &deployment, EnvVars::new());
        let spec = InstanceSpec {
            project: project.name.clone(),
            version: deployment.version,
            process_type: "run".into(),
            index: 0,
            artifact: artifact.reference,
            command: String::new(),
            env,
            limits: self.limits_of(project).await?,
        };
        Ok(PreparedRun { runtime: self.runtime.clone(), spec, run: OneOff { argv, timeout: ONE_OFF_TIMEOUT } })
    }

    /// [`prepare_run`](Self::prepare_run) for a command run on a terminal: the same checks,
    /// deployment, env, limits and timeout, plus the idle limit the caller applies.
    /// `term` is the user's terminal type, given to the command as `TERM`.
    pub async fn prepare_interactive(
        &self,
        project: &Project,
        argv: Vec<String>,
        term: Option<String>,
    ) -> Result<PreparedInteractive> {
        let mut prepared = self.prepare_run(project, argv).await?;
        if let Some(term) = term {
            prepared.spec.env.insert("TERM".into(), term);
        }
        Ok(PreparedInteractive { prepared, idle: self.config.interactive_idle })
    }

    /// The project's instances as the runtime sees them.
    pub async fn instances(&self, project: &ProjectName) -> Result<Vec<Instance>> {
        let mut all: Vec<Instance> = self.runtime.list_project(project).await?;
        all.sort_by(|a, b| (&a.process_type, a.index, a.version).cmp(&(&b.process_type, b.index, b.version)));
        Ok(all)
    }

    /// The machines the runtime runs instances on, each with the instances on it now
    /// (every project's: for admins).
    pub async fn nodes(&self) -> Result<Vec<Node>> {
        let mut nodes = self.runtime.nodes().await?;
        for node in &mut nodes {
            node.instances.sort_by(|a, b| {
                (&a.project, &a.process_type, a.index, a.version).cmp(&(
                    &b.project,
                    &b.process_type,
                    b.index,
                    b.version,
                ))
            });
        }
        Ok(nodes)
    }

    /// The first step of a server start, taken before anything listens: deployments a
    /// stopped server left on their way are recorded failed and their leftovers removed;
    /// every project answers 503 and its lock is held until its live deployment runs again,
    /// so work that arrives meanwhile waits for the restore instead of racing it. Then
    /// [`Restore::run`] does the rest, in the background.
    pub async fn begin_restore(self: &Arc<Self>) -> Result<Restore> {
        let projects = self.store.projects(None).await?;
        let interrupted = self.store.interrupt_unfinished(INTERRUPTED).await?;
        for deployment in &interrupted {
            let Some(project) = projects.iter().find(|p| p.id == deployment.project_id) else { continue };
            tracing::warn!(project = %project.name, version = deployment.version, "deployment interrupted by a server restart");
            self.logs.note(&project.name, &format!("v{} failed: {INTERRUPTED}", deployment.version));
            // A build that never finished leaves its half-made release directory.
            let unfinished = match deployment.build_id {
                Some(id) => self.store.build(id).await.map(|b| b.artifact.is_none()).unwrap_or(false),
                None => false,
            };
            if unfinished {
                let dir = self.release_dir(&project.name, deployment.version);
                for leftover in [dir.with_extension("hook-out"), dir] {
                    if let Err(err) = tokio::fs::remove_dir_all(&leftover).await
                        && err.kind() != std::io::ErrorKind::NotFound
                    {
                        tracing::warn!(project = %project.name, error = %err, "cannot remove an interrupted build's files");
                    }
                }
            }
        }
        let mut held = Vec::with_capacity(projects.len());
        for project in projects {
            self.traffic.switch(&project.name, Vec::new(), Duration::ZERO).await;
            // Its custom domains answer like its own name from now on (503 until restored).
            self.route_domains(&project).await?;
            self.route_https(&project).await?;
            // A stopped project says so at once, and stays so: the restore starts nothing of it.
            let stopped = self.store.stopped(project.id).await?;
            self.traffic.set_stopped(&project.name, stopped.contains("web"));
            // A sleeping project stays asleep: its first request wakes it.
            if self.store.sleep(project.id).await?.asleep {
                self.traffic.set_asleep(&project.name, true);
            }
            let guard = self.lock_for(&project.name).lock_owned().await;
            held.push((project, guard));
        }
        Ok(Restore { orchestrator: Arc::clone(self), held })
    }

    /// Both steps of a server start at once: [`Self::begin_restore`], then [`Restore::run`].
    pub async fn restore(self: &Arc<Self>) -> Result<()> {
        self.begin_restore().await?.run().await
    }

    /// Brings one project's live deployment back, under its lock: adopts its instances that
    /// outlived the server, or starts them again, and stops the project's other instances.
    async fn restore_project(&self, project: &Project, existing: &[Instance]) -> Result<()> {
        let live = self.store.live_deployment(project.id).await?;
        let mut stopped = self.store.stopped(project.id).await?;
        if self.store.sleep(project.id).await?.asleep {
            // Its web instances that outlived the server (a sleep cut short) go too.
            stopped.stop(Some("web"));
        }
        // Instances of a stopped type that outlived the server (a stop cut short) go too.
        let (kept, stale): (Vec<Instance>, Vec<Instance>) =
            existing.iter().filter(|i| i.project == project.name).cloned().partition(|i| {
                live.as_ref().is_some_and(|d| d.version == i.version) && !stopped.contains(&i.process_type)
            });
        for instance in &stale {
            tracing::info!(instance = %instance.id, "stopping an instance of no live deployment");
        }
        self.stop_instances(&stale).await;
        let Some(mut deployment) = live else { return Ok(()) };
        let log = self.logs.sink(&project.name, "paastech");
        let (_, artifact) = self.artifact_of(&deployment).await?;
        for instance in &kept {
            let output = self.logs.sink(&project.name, &format!("{}.{}", instance.process_type, instance.index + 1));
            if let Err(err) = self.runtime.attach(&instance.id, output).await {
                tracing::warn!(instance = %instance.id, error = %err, "cannot follow an adopted instance's output");
            }
        }
        let mut started = kept;
        if started.is_empty() {
            // The project's scale may have changed since the deployment was made.
            deployment.scale = self.store.scale(project.id).await?;
            let ctx = self.hook_context(project, &deployment, &artifact);
            let checked = async {
                let extra_env = self.pre_deploy(&ctx, &deployment, &artifact, log.as_ref()).await?;
                self.start_and_check(project, &deployment, &artifact, &extra_env, &mut started, log.as_ref()).await
            }
            .await;
            if let Err(err) = checked {
                self.stop_instances(&started).await;
                return Err(err);
            }
        }
        let web = web_addrs(&started);
        self.running
            .lock()
            .expect("running lock")
            .insert(project.name.clone(), Running { version: deployment.version, instances: started });
        self.traffic.switch(&project.name, web, Duration::ZERO).await;
        self.logs.note(&project.name, &format!("v{} restored after a server start", deployment.version));
        Ok(())
    }

    /// Stops every instance at server shutdown, unless the runtime's instances outlive the
    /// server (containers), which the next start adopts. Deployments stay live in the store,
    /// so the next start brings them back either way.
    pub async fn shutdown(&self) {
        let all: Vec<Running> = self.running.lock().expect("running lock").drain().map(|(_, r)| r).collect();
        if self.runtime.instances_outlive_server() {
            let count: usize = all.iter().map(|r| r.instances.len()).sum();
            tracing::info!(instances = count, "leaving instances running; the next start adopts them");
            return;
        }
        for running in all {
            self.stop_instances(&running.instances).await;
        }
    }

    /// The running version of a project, if any.
    pub fn running_version(&self, project: &ProjectName) -> Option<i64> {
        self.running.lock().expect("running lock").get(project).map(|r| r.version)
    }
}

#[async_trait::async_trait]
impl PushHandler for Orchestrator {
    async fn pre_receive(
        &self,
        name: &ProjectName,
        pusher: Pusher,
        updates: &[RefUpdate],
        log: Arc<dyn LogSink>,
    ) -> Result<()> {
        let project = self.store.project(name).await?;
        // Checked again here: the hook's ticket says who pushes, not that they still may.
        self.authorize_repo(pusher.user_id, name, GitVerb::Push).await?;
        for update in updates {
            if update.is_delete() && DEPLOY_BRANCHES.contains(&update.refname.as_str()) {
                return Err(Error::Invalid(format!("{} is the deployed branch; it cannot be deleted", update.refname)));
            }
        }
        let deploy = updates.iter().rev().find(|u| !u.is_delete() && DEPLOY_BRANCHES.contains(&u.refname.as_str()));
        if let Some(update) = deploy {
            let deployed = self.deploy_commit(&project, &update.new, Arc::clone(&log)).await;
            self.record_push(pusher, &project, &update.new, &deployed).await;
            let deployment = deployed?;
            let url = self.config.app_url.replace("{name}", project.name.as_str());
            log.line(&format!("-----> Deployed {} v{}: {url}", project.name, deployment.version));
        }
        self.push_previews(pusher, &project, updates, &log, deploy.is_some()).await
    }
}

/// Whether a new deployment runs the build's release command: every new release does
/// (a push, a config change, a redeploy); a rollback and a limits change do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReleasePhase {
    Run,
    Skip,
}

/// Why a deployment of an existing build is made (shown in the deployment list), and whether
/// it runs the build's release command.
struct Cause {
    text: String,
    phase: ReleasePhase,
}

impl Cause {
    fn run(text: String) -> Cause {
        Cause { text, phase: ReleasePhase::Run }
    }

    fn skip(text: String) -> Cause {
        Cause { text, phase: ReleasePhase::Skip }
    }
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(10)]
}

fn describe_limits(limits: &Limits) -> String {
    let memory =
        limits.memory_bytes.map(|b| format!("memory={}MB", b / (1024 * 1024))).unwrap_or("memory=default".into());
    let cpus = limits.cpus.map(|c| format!("cpus={c}")).unwrap_or("cpus=default".into());
    format!("{memory} {cpus}")
}

fn describe_scale(scale: &BTreeMap<String, u32>) -> String {
    scale.iter().map(|(p, n)| format!("{p}={n}")).collect::<Vec<_>>().join(" ")
}

/// Copies files and directories from `from` into `to`, replacing files of the same name.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            if target.is_symlink() {
                std::fs::remove_file(&target)?;
            }
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Instance `index` of `process` in `deployment`.
fn instance_spec(
    project: &Project,
    deployment: &Deployment,
    artifact: &Artifact,
    process: &str,
    index: u32,
    env: &EnvVars,
    limits: Limits,
) -> InstanceSpec {
    InstanceSpec {
        project: project.name.clone(),
        version: deployment.version,
        process_type: process.to_owned(),
        index,
        artifact: artifact.reference.clone(),
        command: artifact.processes.get(process).cloned().unwrap_or_default(),
        env: env.clone(),
        limits,
    }
}

/// The env of an app's processes: the deployment's config, what its pre-deploy hooks added
/// (`extra`), and which project and version they are.
fn app_env(project: &Project, deployment: &Deployment, extra: EnvVars) -> EnvVars {
    let mut env = deployment.config.clone();
    env.extend(extra);
    env.insert("PAASTECH_VERSION".into(), deployment.version.to_string());
    env.insert("PAASTECH_PROJECT".into(), project.name.to_string());
    env
}

/// A one-off command ready to run: see [`Orchestrator::prepare_run`]. It is not an
/// instance: it gets no traffic, no restart, and does not count towards the scale.
pub struct PreparedRun {
    runtime: Arc<dyn Runtime>,
    spec: InstanceSpec,
    run: OneOff,
}

impl PreparedRun {
    /// Runs it; its output goes to `output`; the answer is its exit code.
    pub async fn run(self, output: Arc<dyn LogSink>) -> Result<i32> {
        self.runtime.run_once(self.spec, self.run, output).await
    }
}

/// An interactive one-off ready to start: see [`Orchestrator::prepare_interactive`].
pub struct PreparedInteractive {
    prepared: PreparedRun,
    idle: Duration,
}

impl PreparedInteractive {
    /// Starts it on a terminal of `size`.
    pub async fn start(self, size: TtySize) -> Result<TtySession> {
        let PreparedRun { runtime, spec, run } = self.prepared;
        runtime.run_interactive(spec, run, size).await
    }

    /// How long the session may see neither input nor output before the caller ends it
    /// (by dropping the session, which kills the command).
    pub fn idle_limit(&self) -> Duration {
        self.idle
    }
}

/// A server start's restore, begun: every project's lock is held. See
/// [`Orchestrator::begin_restore`].
pub struct Restore {
    orchestrator: Arc<Orchestrator>,
    held: Vec<(Project, tokio::sync::OwnedMutexGuard<()>)>,
}

impl Restore {
    /// Removes what a previous server left running that nothing wants, then brings each
    /// project's live deployment back, releasing each project's lock once it is done.
    pub async fn run(self) -> Result<()> {
        let Restore { orchestrator: this, held } = self;
        match this.runtime.remove_stray_one_offs().await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "removed one-off commands a previous server left running"),
            Err(err) => tracing::warn!(error = %err, "cannot remove one-off commands a previous server left running"),
        }
        let existing = this.runtime.list().await?;
        // Instances of projects deleted meanwhile (listed after the instances, so a project
        // created since is known here).
        let projects = this.store.projects(None).await?;
        let orphans: Vec<Instance> =
            existing.iter().filter(|i| !projects.iter().any(|p| p.name == i.project)).cloned().collect();
        this.stop_instances(&orphans).await;
        for (project, guard) in held {
            if let Err(err) = this.restore_project(&project, &existing).await {
                tracing::error!(project = %project.name, error = %err, "cannot restore the live deployment");
                this.logs.note(&project.name, &format!("the live deployment could not be restored: {err}"));
            }
            drop(guard);
        }
        Ok(())
    }
}

/// Where the ingress reaches the `web` instances among `instances`.
fn web_addrs(instances: &[Instance]) -> Vec<SocketAddr> {
    instances.iter().filter(|i| i.process_type == "web").filter_map(|i| i.addr).collect()
}

mod addons;
mod audit;
mod cron;
mod follow;
mod previews;
mod sleep;
mod stats;
mod webhooks;
pub use audit::AUDIT_PRUNE_INTERVAL;
pub use cron::CRON_TICK;
pub use follow::{Background, FOLLOW_INTERVAL};
pub use sleep::SleepChange;
pub use stats::{InstanceStats, ProjectStats};

#[cfg(test)]
mod tests;

/// The time from `then` to now (zero if the clock went back).
fn since(then: Timestamp) -> Duration {
    let now = Timestamp::now().0;
    Duration::from_millis(u64::try_from(now.saturating_sub(then.0)).unwrap_or(0))
}
