//! The traits every backend implements. They are object-safe (`Arc<dyn …>`), take `&self`,
//! and speak only core types and `crate::Error`, so local processes, Docker, Podman and
//! Swarm fit behind the same three seams.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::domain::{EnvVars, ProjectName};
use crate::error::{Error, Result};
use crate::hostname::Hostname;
use crate::https::HttpsPolicy;
use crate::interactive::{TtySession, TtySize};

/// Where build output and app output go: one line at a time, never blocking the writer.
pub trait LogSink: Send + Sync {
    fn line(&self, line: &str);
}

/// Stores each project's bare git repository.
#[async_trait]
pub trait RepoStore: Send + Sync {
    /// Creates an empty repository whose HEAD is `main`. Idempotent.
    async fn create(&self, project: &ProjectName) -> Result<()>;
    /// Removes the repository and everything in it. Missing is not an error.
    async fn delete(&self, project: &ProjectName) -> Result<()>;
    /// The on-disk path `git receive-pack` and `git upload-pack` run against.
    fn path(&self, project: &ProjectName) -> PathBuf;
    /// Writes the tree of `commit` (a full hex id) into the empty directory `dest`.
    async fn export(&self, project: &ProjectName, commit: &str, dest: &Path) -> Result<()>;
}

/// What a builder is asked to build: a source tree exported from one commit.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub project: ProjectName,
    pub version: i64,
    pub commit: String,
    /// The exported source tree; the builder may build in place.
    pub source: PathBuf,
    /// Build-time environment: the project's env vars plus what hooks added.
    pub env: EnvVars,
}

/// What a build produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// An image reference (container runtimes) or a release directory (process runtime).
    pub reference: String,
    /// Process type → command, from the Procfile or from detection. A `release` entry is
    /// the release command, not a process type that runs instances.
    pub processes: BTreeMap<String, String>,
}

impl Artifact {
    /// The Procfile's `release:` command: run once per new deployment, before its
    /// instances start.
    pub fn release_command(&self) -> Option<&str> {
        self.processes.get(crate::app::procfile::RELEASE).map(String::as_str).filter(|c| !c.is_empty())
    }

    /// The process types that run instances: every one but `release`.
    pub fn instance_types(&self) -> impl Iterator<Item = &str> {
        self.processes.keys().map(String::as_str).filter(|p| !crate::app::procfile::is_release(p))
    }
}

/// Turns a source tree into an artifact a `Runtime` can start.
#[async_trait]
pub trait ImageBuilder: Send + Sync {
    /// The driver's configuration name (`process`, `docker`, …).
    fn name(&self) -> &'static str;
    async fn build(&self, request: &BuildRequest, log: &dyn LogSink) -> Result<Artifact>;
    /// Frees an artifact no deployment refers to any more.
    async fn remove(&self, artifact: &str) -> Result<()>;
    /// Forgets a deleted project: what the builder keeps for it beside its artifacts (a
    /// download cache, a uid of its own), so that a project made later under the same
    /// name, by anyone, starts from nothing of it. The default keeps nothing.
    async fn forget(&self, project: &ProjectName) -> Result<()> {
        let _ = project;
        Ok(())
    }
}

/// Resource limits applied to each instance. `None` means the runtime's default.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpus: Option<f64>,
}

/// One instance to start: a process type of a deployment.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub project: ProjectName,
    pub version: i64,
    pub process_type: String,
    /// 0-based index among the instances of this process type.
    pub index: u32,
    pub artifact: String,
    pub command: String,
    /// The project's env vars; the runtime adds `PORT` for `web`.
    pub env: EnvVars,
    pub limits: Limits,
}

impl InstanceSpec {
    pub fn is_web(&self) -> bool {
        self.process_type == "web"
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    Starting,
    Running,
    /// Exited and being restarted with backoff.
    Restarting,
    /// Kept failing; no longer restarted.
    Crashed,
    Stopped,
}

/// A running (or recently running) instance as the runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The runtime's own handle: a pid-based id, a container id.
    pub id: String,
    pub project: ProjectName,
    pub version: i64,
    pub process_type: String,
    pub index: u32,
    /// Where the ingress reaches a `web` instance.
    pub addr: Option<SocketAddr>,
    pub state: InstanceState,
    pub restarts: u32,
}

/// What a machine that runs instances is in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    /// The one machine of a runtime that has no cluster (processes, one engine).
    Local,
    Manager,
    Worker,
}

/// Whether a machine is up, as its runtime last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Ready,
    /// Lost: its instances are being started elsewhere.
    Down,
    Disconnected,
    Unknown,
}

/// Whether a machine takes new instances (an operator's choice, on a cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeAvailability {
    Active,
    /// Keeps what it runs, takes nothing new.
    Pause,
    /// Its instances are moved off it.
    Drain,
}

/// One machine a runtime runs instances on, and the instances on it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The runtime's own id of the machine (a swarm node id; `local` for the one machine).
    pub id: String,
    /// The host name the machine reports (not unique: several may share one).
    pub hostname: String,
    /// The address its instances are reached at, when known.
    pub address: Option<IpAddr>,
    pub role: NodeRole,
    pub state: NodeState,
    pub availability: NodeAvailability,
    pub instances: Vec<Instance>,
}

impl Node {
    /// The machine this server runs on, as a runtime without a cluster describes it.
    pub fn local(instances: Vec<Instance>) -> Node {
        // Linux's own answer; a machine without it is still described.
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .unwrap_or_else(|_| "localhost".to_owned());
        Node {
            id: "local".to_owned(),
            hostname,
            address: None,
            role: NodeRole::Local,
            state: NodeState::Ready,
            availability: NodeAvailability::Active,
            instances,
        }
    }
}

/// Runs instances: local processes, containers, services.
#[async_trait]
pub trait Runtime: Send + Sync {
    /// The driver's configuration name (`process`, `docker`, …).
    fn name(&self) -> &'static str;
    /// Starts one instance; its stdout and stderr go to `output`. Returns once it has been
    /// started (not once it is healthy: health is checked by the orchestrator).
    async fn start(&self, spec: InstanceSpec, output: Arc<dyn LogSink>) -> Result<Instance>;
    /// Stops an instance: a polite signal, then a forced one after `grace`. Unknown is not
    /// an error.
    async fn stop(&self, id: &str, grace: Duration) -> Result<()>;
    /// Every instance this runtime manages, including ones started before a restart of
    /// the server (containers carry labels; processes do not survive their parent).
    async fn list(&self) -> Result<Vec<Instance>>;
    /// One instance as `list` would show it now; `None` when the runtime does not manage
    /// it (never started, stopped, or another server's). For polling one instance (a health
    /// wait): a runtime answers it without looking at every other instance. The default
    /// goes through `list`, so every runtime has it.
    async fn status(&self, id: &str) -> Result<Option<Instance>> {
        Ok(self.list().await?.into_iter().find(|instance| instance.id == id))
    }
    /// The instances of one project, as `list` would show them. The default goes through
    /// `list`; a runtime that can ask its backend for one project's only does.
    async fn list_project(&self, project: &ProjectName) -> Result<Vec<Instance>> {
        Ok(self.list().await?.into_iter().filter(|instance| &instance.project == project).collect())
    }
    /// Whether instances keep running when the server stops (containers do, processes do
    /// not). If so, a server stop leaves them running and the next start adopts them, so
    /// apps are not interrupted by a server restart.
    fn instances_outlive_server(&self) -> bool {
        false
    }
    /// Sends the output of an instance this runtime did not start in this process (one
    /// adopted after a server restart) to `output`. Runtimes whose instances cannot outlive
    /// the server have nothing to attach to.
    async fn attach(&self, id: &str, output: Arc<dyn LogSink>) -> Result<()> {
        let _ = (id, output);
        Ok(())
    }
    /// Runs a one-off command (`paastech run`) in the deployment `spec` describes: its
    /// artifact, env and limits, but `run.argv` as an argument vector (no shell) instead of
    /// a Procfile command, once, without restarts, a port or traffic. Its stdout and
    /// stderr go to `output`, all of it before this returns its exit code. Past
    /// `run.timeout` it is stopped, and that is an error.
    async fn run_once(&self, spec: InstanceSpec, run: OneOff, output: Arc<dyn LogSink>) -> Result<i32> {
        let _ = (spec, run, output);
        Err(Error::Unavailable(format!("the {} runtime cannot run one-off commands", self.name())))
    }
    /// Runs a one-off command as [`run_once`](Runtime::run_once) does (artifact, env,
    /// limits, timeout, removed afterwards), but on a pseudo-terminal of `size` that it
    /// leads (its controlling terminal), for a user typing at it: `paastech run -- sh`
    /// from a terminal. Returns once it has started; see [`TtySession`] for what ends it.
    async fn run_interactive(&self, spec: InstanceSpec, run: OneOff, size: TtySize) -> Result<TtySession> {
        let _ = (spec, run, size);
        Err(Error::Unavailable(format!("the {} runtime cannot run interactive commands", self.name())))
    }
    /// Removes the one-off commands a previous server left running: it stopped without
    /// waiting for them (a crash, a kill), and containers outlive it. The ones started
    /// through this runtime value are not touched. How many it removed. (A runtime that
    /// stops them otherwise, as the process runtime's ledger does, keeps this default.)
    async fn remove_stray_one_offs(&self) -> Result<usize> {
        Ok(0)
    }
    /// The machines instances run on, each with the instances on it now (`paastech
    /// nodes`). A runtime without a cluster is one machine: this default, with every
    /// instance `list` shows.
    async fn nodes(&self) -> Result<Vec<Node>> {
        Ok(vec![Node::local(self.list().await?)])
    }
    /// Whether what answers on a web instance's address is the instance itself: checked
    /// once its health check passes, before traffic goes there. A runtime that chooses a
    /// free port for the app to bind (local processes) can lose it to another process
    /// between the choice and the bind; the app then cannot listen, and that process
    /// answers for it. The default, for runtimes whose engine binds an instance's address
    /// as it starts it (a container's published port), is yes.
    async fn answers_itself(&self, instance: &Instance) -> Result<bool> {
        let _ = instance;
        Ok(true)
    }
    /// Whether an instance's address can change while it keeps its id (a swarm task
    /// restarted on another port or moved to another node). If so the orchestrator keeps
    /// each live deployment's routes in step with `list_project`; otherwise an address is
    /// fixed from `start` to `stop`.
    fn instance_addresses_move(&self) -> bool {
        false
    }
    /// What the instances `ids` use now (`paastech ps`, `GET /projects/{name}/stats`), by
    /// id; an id it cannot read figures for is left out. The default reads none: its
    /// instances show no figures.
    async fn usage(&self, ids: &[String]) -> Result<BTreeMap<String, Usage>> {
        let _ = ids;
        Ok(BTreeMap::new())
    }
}

/// What an instance uses, as [`Runtime::usage`] reads it. A figure the runtime cannot read
/// is `None`, never a zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time used, in nanoseconds: a counter since the instance (or its current process
    /// or container) started, whose growth between two readings is its CPU share.
    pub cpu_ns: Option<u64>,
    /// Memory in use now, in bytes.
    pub memory_bytes: Option<u64>,
    /// The most memory it may use, when it is limited.
    pub memory_limit_bytes: Option<u64>,
}

/// A one-off command: what `paastech run -- CMD…` asks for.
#[derive(Debug, Clone)]
pub struct OneOff {
    /// The program and its arguments; never empty.
    pub argv: Vec<String>,
    /// How long it may run.
    pub timeout: Duration,
}

impl OneOff {
    /// The program to run.
    pub fn program(&self) -> &str {
        self.argv.first().map_or("", String::as_str)
    }

    /// What a runtime answers for a command it stopped at its timeout.
    pub fn timed_out(&self) -> Error {
        Error::Invalid(format!("the command ran longer than {} s and was stopped", self.timeout.as_secs()))
    }
}

/// One ref a `git push` wants to move. `old` is all zeros for a new ref, `new` all zeros
/// for a deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    pub refname: String,
    pub old: String,
    pub new: String,
}

impl RefUpdate {
    pub fn is_delete(&self) -> bool {
        self.new.bytes().all(|b| b == b'0')
    }
}

/// Who pushes: the user the SSH key belongs to, and the address the push came from (for
/// the audit log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pusher {
    pub user_id: i64,
    pub address: Option<std::net::IpAddr>,
}

/// Who receives a push before its refs move (git's pre-receive): the orchestrator.
#[async_trait]
pub trait PushHandler: Send + Sync {
    /// Runs before any ref of the push moves. Lines written to `log` reach the pusher as
    /// `remote:` lines; an error rejects the whole push with its message. The pushed
    /// objects are readable through `RepoStore::export` while this runs.
    async fn pre_receive(
        &self,
        project: &ProjectName,
        pusher: Pusher,
        updates: &[RefUpdate],
        log: Arc<dyn LogSink>,
    ) -> Result<()>;
}

/// Moves a project's HTTP traffic: the ingress, seen from the orchestrator.
#[async_trait]
pub trait TrafficRouter: Send + Sync {
    /// Waits until an instance answers its health check (any status below 500), or fails
    /// with what was last seen once `timeout` has passed.
    async fn wait_healthy(&self, addr: SocketAddr, timeout: Duration) -> Result<()>;
    /// Sends the project's traffic to exactly `backends` (none: the project answers "no live
    /// deployment"), then waits up to `drain` for requests still in flight to backends that
    /// are no longer used.
    async fn switch(&self, project: &ProjectName, backends: Vec<SocketAddr>, drain: Duration);
    /// Forgets the project: its address and its custom domains answer "not found".
    fn remove(&self, project: &ProjectName);
    /// Makes `domains` the whole set of custom domains served like the project's own
    /// address (at once, for every request after this call); domains it had before and
    /// not in the set answer "not found".
    fn set_domains(&self, project: &ProjectName, domains: &[Hostname]);
    /// Makes `policy` the project's HTTPS policy (redirect and HSTS) for every request
    /// after this call, on its own name and its custom domains alike.
    fn set_https(&self, project: &ProjectName, policy: HttpsPolicy);
    /// Whether the project's web process is stopped (`paastech stop`): while it has no
    /// backends, its names answer 503 with a page saying the app is stopped rather than
    /// "no live deployment". Kept across `switch`.
    fn set_stopped(&self, project: &ProjectName, stopped: bool);
    /// How long the project's web has had no request, counted from its last request or
    /// the last `switch` that gave it backends, and zero while a request is in flight;
    /// `None` when the router cannot tell (then it never sleeps). Read by the sleeper.
    fn idle_for(&self, project: &ProjectName) -> Option<Duration> {
        let _ = project;
        None
    }
    /// Whether the project sleeps (`paastech sleep`): while it has no backends, a request
    /// to it is held while it is woken, instead of answered "no live deployment". Kept
    /// across `switch`.
    fn set_asleep(&self, project: &ProjectName, asleep: bool) {
        let _ = (project, asleep);
    }
}
