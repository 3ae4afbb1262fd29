//! `PodmanRuntime`: each instance is a container of the build's image, labelled with what
//! it runs, locked down (no privileges, no capabilities, no-new-privileges, memory, CPU,
//! pids and ulimits), publishing its `PORT` on a free loopback port below the ephemeral
//! range, restarted by the engine on failure a bounded number of times. Containers
//! outlive the server; `list` finds them again by their labels.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::StreamExt;
use paastech_core::drivers::{Instance, InstanceSpec, InstanceState, LogSink, OneOff, Runtime, Usage};
use paastech_core::interactive::{TtySession, TtySize, tty_channels};
use paastech_core::ports::free_loopback_port;
use paastech_core::registry::ImageRegistry;
use paastech_core::{Error, ProjectName, Result};
use podman_api::conn::TtyChunk;
use podman_api::opts::{ContainerDeleteOpts, ContainerListFilter, ContainerListOpts, ContainerLogsOpts};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::libpod::Engine;
use crate::lines::LineBuf;

/// Where a rootful Podman serves its API by default.
pub const DEFAULT_SOCKET: &str = "/run/podman/podman.sock";

/// The labels every container carries; `list` reads instances back from them.
pub const LABEL_PROJECT: &str = "paastech.project";
pub const LABEL_DEPLOYMENT: &str = "paastech.deployment";
pub const LABEL_PROCESS: &str = "paastech.process";
pub const LABEL_INDEX: &str = "paastech.index";
/// Which server (data directory) manages the container, so that servers sharing one
/// engine (or tests running in parallel) never list, adopt or stop each other's containers.
pub const LABEL_NAMESPACE: &str = "paastech.namespace";
/// The label of a one-off command's container (its value: the project), in place of the
/// instance labels: `list` does not see it, reconcile does not adopt or stop it.
pub const LABEL_ONE_OFF: &str = "paastech.one-off";

/// Capabilities given back after dropping all: what images that start as root and then
/// switch to their own user need for that (the same set as the Docker driver). No
/// `NET_BIND_SERVICE`: apps listen on `$PORT`, above 1024.
const CAPABILITIES: &[&str] = &["CHOWN", "SETUID", "SETGID"];

/// A container's log file is rotated past this size by the engine.
const LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// The CFS period CPU limits are expressed in.
const CPU_PERIOD_US: u64 = 100_000;

/// One resource limit of the processes in a container, as in `nofile=1024:1024`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ulimit {
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

impl FromStr for Ulimit {
    type Err = String;

    /// `NAME=SOFT:HARD`, or `NAME=N` for both; `NAME` as in `ulimit` (`nofile`, `nproc`).
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let invalid = || format!("{text:?} is not a ulimit: expected NAME=SOFT:HARD, like \"nofile=1024:1024\"");
        let (name, values) = text.split_once('=').ok_or_else(invalid)?;
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(invalid());
        }
        let parse = |v: &str| v.trim().parse::<u64>().map_err(|_| invalid());
        let (soft, hard) = match values.split_once(':') {
            Some((soft, hard)) => (parse(soft)?, parse(hard)?),
            None => {
                let both = parse(values)?;
                (both, both)
            }
        };
        if soft > hard {
            return Err(format!("{text:?}: the soft limit is above the hard limit"));
        }
        Ok(Ulimit { name, soft, hard })
    }
}

/// The ulimits every container gets unless configured otherwise: Podman's own defaults
/// exceed the hard limits of small hosts, and the container then fails to start.
pub fn default_ulimits() -> Vec<Ulimit> {
    vec![
        Ulimit { name: "nofile".into(), soft: 1024, hard: 1024 },
        Ulimit { name: "nproc".into(), soft: 1024, hard: 1024 },
    ]
}

#[derive(Debug, Clone, PartialEq)]
pub struct PodmanRuntimeConfig {
    /// The engine's API socket.
    pub socket: PathBuf,
    /// The OCI runtime containers run with (`runc`; `crun` fails on cgroup v1 hosts).
    pub oci_runtime: String,
    /// Resource limits of the processes in each container. `nofile` and `nproc` are
    /// always set (from [`default_ulimits`] when missing here): Podman replaces its
    /// defaults wholesale with what is given, and an unset one exceeds the host's limit.
    pub ulimits: Vec<Ulimit>,
    /// The memory limit of instances whose spec sets none.
    pub default_memory_bytes: u64,
    /// The CPU limit of instances whose spec sets none, in CPUs.
    pub default_cpus: f64,
    /// The most processes (and threads) one container may run.
    pub pids_limit: u32,
    /// How many times the engine restarts a container that exits with a failure before
    /// it stays down (`Crashed`).
    pub max_restarts: u32,
    /// The port `web` containers listen on inside (their `PORT`).
    pub container_port: u16,
    /// The value of the `paastech.namespace` label: `list` sees, and reconcile touches,
    /// only containers labelled with it.
    pub namespace: String,
    /// The registry builds are pushed to: an image of it not on this engine is pulled
    /// (by digest) before its container is created.
    pub registry: Option<ImageRegistry>,
}

impl Default for PodmanRuntimeConfig {
    fn default() -> Self {
        PodmanRuntimeConfig {
            socket: PathBuf::from(DEFAULT_SOCKET),
            oci_runtime: "runc".into(),
            ulimits: default_ulimits(),
            default_memory_bytes: 512 * 1024 * 1024,
            default_cpus: 1.0,
            pids_limit: 512,
            max_restarts: 5,
            container_port: 5000,
            namespace: "default".into(),
            registry: None,
        }
    }
}

pub struct PodmanRuntime {
    config: PodmanRuntimeConfig,
    engine: Engine,
    /// The task streaming each started container's output, by container id.
    followers: Mutex<HashMap<String, JoinHandle<()>>>,
    next_name: AtomicU64,
    /// When this value was made, in whole seconds since the epoch: one-off containers
    /// created before are another server's.
    made_at: i64,
}

impl PodmanRuntime {
    /// Connects lazily: the engine is first reached by the first call.
    pub fn new(config: PodmanRuntimeConfig) -> Self {
        let engine = Engine::new(&config.socket);
        PodmanRuntime {
            config,
            engine,
            followers: Mutex::new(HashMap::new()),
            next_name: AtomicU64::new(0),
            made_at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64),
        }
    }

    /// Checks that the engine answers, with an error saying how to start it if not.
    pub async fn ping(&self) -> Result<()> {
        self.engine.ping().await
    }

    /// The ulimits sent to the engine: the configured ones, plus the defaults of those
    /// that must always be set.
    fn ulimits(&self) -> Vec<Ulimit> {
        let mut ulimits = self.config.ulimits.clone();
        for default in default_ulimits() {
            if !ulimits.iter().any(|u| u.name == default.name) {
                ulimits.push(default);
            }
        }
        ulimits
    }

    /// The libpod SpecGenerator of an instance's container; a web one publishes its `PORT`
    /// on `host_port` of loopback (0: the engine picks).
    fn container_spec(&self, spec: &InstanceSpec, name: &str, host_port: u16) -> Value {
        let mut env = spec.env.clone();
        if spec.is_web() {
            env.insert("PORT".into(), self.config.container_port.to_string());
        }
        let labels = BTreeMap::from([
            (LABEL_PROJECT, spec.project.to_string()),
            (LABEL_DEPLOYMENT, spec.version.to_string()),
            (LABEL_PROCESS, spec.process_type.clone()),
            (LABEL_INDEX, spec.index.to_string()),
            (LABEL_NAMESPACE, self.config.namespace.clone()),
        ]);
        let memory = spec.limits.memory_bytes.unwrap_or(self.config.default_memory_bytes);
        let cpus = spec.limits.cpus.unwrap_or(self.config.default_cpus).max(0.01);
        let rlimits: Vec<Value> =
            self.ulimits().iter().map(|u| json!({"type": u.name, "soft": u.soft, "hard": u.hard})).collect();
        let mut body = json!({
            "name": name,
            "image": spec.artifact,
            "env": env,
            "labels": labels,
            "oci_runtime": self.config.oci_runtime,
            "privileged": false,
            "no_new_privileges": true,
            "cap_drop": ["ALL"],
            "cap_add": CAPABILITIES,
            // An init as PID 1 passes the polite stop signal on: a shell or a server that
            // is PID 1 itself would ignore it and wait for the forced kill.
            "init": true,
            "r_limits": rlimits,
            "resource_limits": {
                // Swap equal to memory: no swap beyond the limit.
                "memory": {"limit": memory, "swap": memory},
                "cpu": {"quota": (cpus * CPU_PERIOD_US as f64).round() as i64, "period": CPU_PERIOD_US},
                "pids": {"limit": self.config.pids_limit},
            },
            "restart_policy": "on-failure",
            "restart_tries": self.config.max_restarts,
            "log_configuration": {"driver": "k8s-file", "size": LOG_MAX_BYTES},
        });
        if !spec.command.is_empty() {
            // A Procfile line is a shell command, whatever the image's entrypoint is.
            body["entrypoint"] = json!(["/bin/sh", "-c"]);
            body["command"] = json!([spec.command]);
        }
        if spec.is_web() {
            body["portmappings"] = json!([{
                "container_port": self.config.container_port,
                "host_ip": Ipv4Addr::LOCALHOST.to_string(),
                "host_port": host_port,
                "protocol": "tcp",
            }]);
        }
        body
    }

    /// The libpod SpecGenerator of a one-off command's container: an instance's (image, env,
    /// limits, lockdown), but running `run.argv` once, without a port, a restart or instance
    /// labels.
    fn one_off_spec(&self, spec: &InstanceSpec, run: &OneOff, name: &str) -> Value {
        let mut body = self.container_spec(spec, name, 0);
        // In place of the image's entrypoint and command, as `start` puts a Procfile command.
        body["entrypoint"] = json!([run.program()]);
        body["command"] = json!(run.argv.get(1..).unwrap_or_default());
        body["env"] = json!(spec.env);
        body["labels"] = json!(BTreeMap::from([
            (LABEL_NAMESPACE, self.config.namespace.clone()),
            (LABEL_ONE_OFF, spec.project.to_string()),
        ]));
        // The engine then execs the program itself, and a missing one fails the start with
        // an error naming it (catatonit's does not). No signal needs passing on: a timeout kills.
        body["init"] = json!(false);
        if let Some(fields) = body.as_object_mut() {
            for field in ["portmappings", "restart_policy", "restart_tries"] {
                fields.remove(field);
            }
        }
        body
    }

    /// The libpod stats of the containers `ids`, one reading: `{"Error": null, "Stats":
    /// [{ContainerID, CPUNano, MemUsage, MemLimit, …}]}`. The engine answers only an
    /// `Error` when one of the containers is gone, so that case is asked again one
    /// container at a time.
    async fn read_stats(&self, ids: &[String]) -> Result<Vec<Value>> {
        let stats = |ids: Vec<String>| async move {
            let opts = podman_api::opts::ContainerStatsOpts::builder().containers(ids).build();
            match self.engine.podman.containers().stats(&opts).await {
                Ok(answer) if answer["Error"].is_null() => Ok(answer["Stats"].as_array().cloned().unwrap_or_default()),
                Ok(_) | Err(podman_api::Error::Fault { .. }) => Ok(Vec::new()),
                Err(err) => Err(self.engine.error("reading container stats", err)),
            }
        };
        let all = stats(ids.to_vec()).await?;
        if all.len() == ids.len() || ids.len() < 2 {
            return Ok(all);
        }
        let mut found = Vec::new();
        for id in ids {
            found.extend(stats(vec![id.clone()]).await?);
        }
        Ok(found)
    }

    /// Every container of this runtime's namespace (running or not), or only those that
    /// also pass `filter` (a label filter: the engine does the filtering).
    async fn containers(&self, filter: Option<ContainerListFilter>) -> Result<Vec<podman_api::models::ListContainer>> {
        let mut filters = vec![ContainerListFilter::LabelKeyVal(LABEL_NAMESPACE.into(), self.config.namespace.clone())];
        filters.extend(filter);
        let opts = ContainerListOpts::builder().all(true).filter(filters).build();
        self.engine.podman.containers().list(&opts).await.map_err(|e| self.engine.error("listing containers", e))
    }

    /// A name that says what runs in it and never clashes with a leftover container.
    fn container_name(&self, spec: &InstanceSpec, process: &str) -> String {
        let seq = self.next_name.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let suffix = (u64::from(nanos) ^ (seq << 32)) & 0xff_ffff;
        format!("paastech-{}-v{}-{process}-{}-{suffix:06x}", spec.project, spec.version, spec.index + 1)
    }

    /// Creates and starts an instance's container, its id. A web container's host port is
    /// picked here, below the ephemeral range, as the Docker runtime does: a port the engine
    /// picks comes from that range, where the kernel also takes client connections' own
    /// ports, and one such container was refused every connection for its whole health
    /// wait. A port taken between the pick and the start is picked again, a few times.
    async fn create_and_start(&self, spec: &InstanceSpec, name: &str, label: &str) -> Result<String> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let host_port = if spec.is_web() {
                free_loopback_port().map_err(|e| Error::internal("finding a free port", e))?
            } else {
                0
            };
            let body = self.container_spec(spec, name, host_port);
            // Podman checks the image and the spec here: what it refuses fails this deploy.
            let created = self.engine.post_json("creating a container", "containers/create", &body).await.map_err(
                |err| match err {
                    Error::Unavailable(_) => err,
                    other => Error::DeployFailed(format!("{label} of {} could not be created: {other}", spec.artifact)),
                },
            )?;
            let id = created
                .get("Id")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::internal_msg("podman created a container but gave no id"))?
                .to_owned();
            let Err(err) = self.engine.podman.containers().get(&id).start(None).await else {
                return Ok(id);
            };
            let err = self.engine.error("starting a container", err);
            if let Err(cleanup) = remove(&self.engine, &id, Duration::ZERO).await {
                tracing::warn!(container = %id, error = %cleanup, "cannot remove a container that did not start");
            }
            if spec.is_web() && attempt < 4 && err.to_string().contains("address already in use") {
                tracing::debug!(port = host_port, "host port taken meanwhile, picking another");
                continue;
            }
            return Err(match err {
                Error::Unavailable(_) => err,
                other => Error::DeployFailed(format!("{label} could not start: {other}")),
            });
        }
    }

    /// The loopback address the engine published the container's `PORT` on.
    async fn published_addr(&self, id: &str) -> Result<SocketAddr> {
        let data = self
            .engine
            .podman
            .containers()
            .get(id)
            .inspect()
            .await
            .map_err(|e| self.engine.error("inspecting a container", e))?;
        let key = format!("{}/tcp", self.config.container_port);
        let port = data
            .network_settings
            .and_then(|n| n.ports)
            .and_then(|mut ports| ports.remove(&key))
            .flatten()
            .and_then(|bindings| bindings.into_iter().find_map(|b| b.host_port?.parse::<u16>().ok()))
            .filter(|port| *port != 0)
            .ok_or_else(|| Error::internal_msg(format!("podman published no host port for {key} of container {id}")))?;
        Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    }

    /// One instance as the engine sees it now; `None` when it no longer exists or is not
    /// one of ours.
    async fn inspect_instance(&self, id: String) -> Result<Option<Instance>> {
        let data = match self.engine.podman.containers().get(&id).inspect().await {
            Ok(data) => data,
            Err(err) => {
                return match self.engine.error("inspecting a container", err) {
                    Error::NotFound(_) => Ok(None),
                    other => Err(other),
                };
            }
        };
        let labels = data.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default();
        if labels.get(LABEL_NAMESPACE) != Some(&self.config.namespace) {
            return Ok(None);
        }
        let Some(identity) = Identity::from_labels(&labels) else {
            return Ok(None);
        };
        let restarts = data.restart_count.and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
        let (status, exit_code) = data
            .state
            .as_ref()
            .map(|s| (s.status.clone().unwrap_or_default(), s.exit_code.unwrap_or(0)))
            .unwrap_or_default();
        let state = instance_state(&status, exit_code, restarts, self.config.max_restarts);
        let key = format!("{}/tcp", self.config.container_port);
        let addr = (identity.process_type == "web")
            .then(|| {
                data.network_settings
                    .and_then(|n| n.ports)
                    .and_then(|mut ports| ports.remove(&key))
                    .flatten()
                    .and_then(|bindings| bindings.into_iter().find_map(|b| b.host_port?.parse::<u16>().ok()))
                    .map(|port| SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            })
            .flatten();
        Ok(Some(Instance {
            id: data.id.unwrap_or(id),
            project: identity.project,
            version: identity.version,
            process_type: identity.process_type,
            index: identity.index,
            addr,
            state,
            restarts,
        }))
    }

    /// The instances of this namespace's containers that pass `filter`: listed by the
    /// engine with it, then each inspected.
    async fn instances(&self, filter: Option<ContainerListFilter>) -> Result<Vec<Instance>> {
        let listed = self.containers(filter).await?;
        // The restart count is only in a container's inspection.
        let inspections = listed.into_iter().filter_map(|c| c.id).map(|id| self.inspect_instance(id));
        let mut instances = Vec::new();
        for result in futures_util::future::join_all(inspections).await {
            if let Some(instance) = result? {
                instances.push(instance);
            }
        }
        instances.sort_by(|a, b| {
            (&a.project, a.version, &a.process_type, a.index, &a.id).cmp(&(
                &b.project,
                b.version,
                &b.process_type,
                b.index,
                &b.id,
            ))
        });
        Ok(instances)
    }

    fn followers(&self) -> MutexGuard<'_, HashMap<String, JoinHandle<()>>> {
        self.followers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for PodmanRuntime {
    /// Containers outlive the server (that is how it finds them again), their log
    /// followers do not.
    fn drop(&mut self) {
        for (_, task) in self.followers().drain() {
            task.abort();
        }
    }
}

#[async_trait]
impl Runtime for PodmanRuntime {
    fn name(&self) -> &'static str {
        "podman"
    }

    async fn start(&self, spec: InstanceSpec, output: Arc<dyn LogSink>) -> Result<Instance> {
        let name = self.container_name(&spec, &spec.process_type);
        let label = format!("{}.{}", spec.process_type, spec.index + 1);
        if let Some(registry) =
            self.config.registry.as_ref().filter(|r| spec.artifact.starts_with(&format!("{}/", r.address)))
        {
            crate::registry::ensure_image(&self.engine, registry, &spec.artifact).await?;
        }
        let id = self.create_and_start(&spec, &name, &label).await?;
        let addr = if spec.is_web() {
            match self.published_addr(&id).await {
                Ok(addr) => Some(addr),
                Err(err) => {
                    let _ = remove(&self.engine, &id, Duration::ZERO).await;
                    return Err(err);
                }
            }
        } else {
            None
        };

        let follower =
            tokio::spawn(follow(self.engine.clone(), id.clone(), label, output, self.config.max_restarts, 0));
        if let Some(old) = self.followers().insert(id.clone(), follower) {
            old.abort();
        }
        tracing::info!(container = %id, name = %name, addr = ?addr, "started container");
        Ok(Instance {
            id,
            project: spec.project,
            version: spec.version,
            process_type: spec.process_type,
            index: spec.index,
            addr,
            state: InstanceState::Running,
            restarts: 0,
        })
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        if let Some(task) = self.followers().remove(id) {
            task.abort();
        }
        // Only this server's containers: any other id is unknown here.
        if self.inspect_instance(id.to_owned()).await?.is_none() {
            return Ok(());
        }
        remove(&self.engine, id, grace).await?;
        tracing::info!(container = %id, "stopped container");
        Ok(())
    }

    /// Containers keep running when the server stops; the next start adopts them.
    fn instances_outlive_server(&self) -> bool {
        true
    }

    /// Follows the output of a container started before this server did, from now on:
    /// the lines already in its log are counted and skipped, not sent again.
    async fn attach(&self, id: &str, output: Arc<dyn LogSink>) -> Result<()> {
        let instance = self
            .inspect_instance(id.to_owned())
            .await?
            .ok_or_else(|| Error::NotFound(format!("container {id} is not one of this server's")))?;
        let mut existing = 0usize;
        read_log(&self.engine.podman.containers().get(&instance.id), false, |_| existing += 1).await;
        let label = format!("{}.{}", instance.process_type, instance.index + 1);
        let follower = tokio::spawn(follow(
            self.engine.clone(),
            instance.id.clone(),
            label,
            output,
            self.config.max_restarts,
            existing,
        ));
        if let Some(old) = self.followers().insert(instance.id, follower) {
            old.abort();
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Instance>> {
        self.instances(None).await
    }

    /// One inspection of the one container, not a listing.
    async fn status(&self, id: &str) -> Result<Option<Instance>> {
        self.inspect_instance(id.to_owned()).await
    }

    /// The engine lists only the project's containers (a label filter), and only those are
    /// inspected.
    async fn usage(&self, ids: &[String]) -> Result<BTreeMap<String, Usage>> {
        let entries = self.read_stats(ids).await?;
        Ok(ids
            .iter()
            .filter_map(|id| {
                let entry =
                    entries.iter().find(|e| e["ContainerID"].as_str().is_some_and(|c| c.starts_with(id.as_str())))?;
                Some((id.clone(), usage_of(entry)))
            })
            .collect())
    }

    async fn list_project(&self, project: &ProjectName) -> Result<Vec<Instance>> {
        self.instances(Some(ContainerListFilter::LabelKeyVal(LABEL_PROJECT.into(), project.to_string()))).await
    }

    async fn remove_stray_one_offs(&self) -> Result<usize> {
        let listed = self.containers(Some(ContainerListFilter::LabelKey(LABEL_ONE_OFF.into()))).await?;
        let mut removed = 0;
        for container in listed {
            let (Some(id), Some(created)) = (container.id, container.created) else { continue };
            if created.timestamp() >= self.made_at {
                continue;
            }
            remove(&self.engine, &id, Duration::ZERO).await?;
            removed += 1;
        }
        Ok(removed)
    }

    async fn run_once(&self, spec: InstanceSpec, run: OneOff, output: Arc<dyn LogSink>) -> Result<i32> {
        if run.argv.is_empty() {
            return Err(Error::Invalid("a one-off command needs a program to run".into()));
        }
        let name = self.container_name(&spec, "run");
        let body = self.one_off_spec(&spec, &run, &name);
        // Its own task: when the caller gives up (a dropped request), the container is still
        // removed, at the latest at the timeout.
        tokio::spawn(run_one_off(self.engine.clone(), body, run, output, self.config.registry.clone()))
            .await
            .map_err(|err| Error::internal("running a one-off command", err))?
    }

    async fn run_interactive(&self, spec: InstanceSpec, run: OneOff, size: TtySize) -> Result<TtySession> {
        if run.argv.is_empty() {
            return Err(Error::Invalid("a one-off command needs a program to run".into()));
        }
        let name = self.container_name(&spec, "run");
        let body = self.one_off_spec(&spec, &run, &name);
        let (session, ends) = tty_channels();
        crate::interactive::start(self.engine.clone(), body, run, size, self.config.registry.as_ref(), ends).await?;
        Ok(session)
    }
}

/// Stops (the stop signal, then SIGKILL after `grace`) and removes a container in one
/// call. podman-api's stop sends its timeout as `Timeout`, which libpod 4.3 ignores (it
/// waits its default 10 s); removal's `timeout` is read.
pub(crate) async fn remove(engine: &Engine, id: &str, grace: Duration) -> Result<()> {
    let timeout = usize::try_from(grace.as_secs()).unwrap_or(usize::MAX);
    let opts = ContainerDeleteOpts::builder().force(true).timeout(timeout).build();
    match engine.podman.containers().get(id).delete(&opts).await {
        Ok(()) => Ok(()),
        Err(err) => match engine.error("removing a container", err) {
            Error::NotFound(_) => Ok(()),
            other => Err(other),
        },
    }
}

/// Creates and runs a one-off command's container (`body`), then removes it whatever
/// happened (which also kills a command past its timeout).
async fn run_one_off(
    engine: Engine,
    body: Value,
    run: OneOff,
    output: Arc<dyn LogSink>,
    registry: Option<ImageRegistry>,
) -> Result<i32> {
    let image = body["image"].as_str().unwrap_or_default().to_owned();
    if let Some(registry) = registry.as_ref().filter(|r| image.starts_with(&format!("{}/", r.address))) {
        crate::registry::ensure_image(&engine, registry, &image).await?;
    }
    let doing = format!("creating a container of {image}");
    let created = engine.post_json(&doing, "containers/create", &body).await?;
    let id = created
        .get("Id")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::internal_msg("podman created a container but gave no id"))?
        .to_owned();
    let result = run_to_exit(&engine, &id, &run, output.as_ref()).await;
    if let Err(err) = remove(&engine, &id, Duration::ZERO).await {
        tracing::warn!(container = %id, error = %err, "cannot remove a one-off container");
    }
    result
}

/// Starts a created one-off container; its exit code, once all its output is in `output`.
async fn run_to_exit(engine: &Engine, id: &str, run: &OneOff, output: &dyn LogSink) -> Result<i32> {
    let container = engine.podman.containers().get(id);
    // Podman answers 500 for a program missing from the image: the command's fault.
    container.start(None).await.map_err(|err| match engine.error(&format!("running {}", run.program()), err) {
        err @ Error::Unavailable(_) => err,
        other => Error::Invalid(other.to_string()),
    })?;
    let mut passed_on = 0usize;
    // The log stream ends once the container has exited.
    let finished = async {
        let exited = async {
            container.wait(&Default::default()).await.map_err(|e| engine.error("waiting for a container", e))?;
            let data = container.inspect().await.map_err(|e| engine.error("inspecting a container", e))?;
            Ok::<_, Error>(data.state.and_then(|s| s.exit_code).unwrap_or_default())
        };
        let streamed = read_log(&container, true, |line| {
            passed_on += 1;
            output.line(line);
        });
        let (code, ()) = tokio::join!(exited, streamed);
        code
    };
    let code = tokio::time::timeout(run.timeout, finished).await.map_err(|_| run.timed_out())??;
    // A follow that ended early (an engine hiccup) missed lines: read to the end once more.
    let mut read = 0usize;
    read_log(&container, false, |line| {
        read += 1;
        if read > passed_on {
            output.line(line);
        }
    })
    .await;
    Ok(code)
}

/// What a container's labels say it runs.
struct Identity {
    project: ProjectName,
    version: i64,
    process_type: String,
    index: u32,
}

impl Identity {
    fn from_labels(labels: &HashMap<String, String>) -> Option<Identity> {
        Some(Identity {
            project: ProjectName::parse(labels.get(LABEL_PROJECT)?).ok()?,
            version: labels.get(LABEL_DEPLOYMENT)?.parse().ok()?,
            process_type: labels.get(LABEL_PROCESS)?.clone(),
            index: labels.get(LABEL_INDEX)?.parse().ok()?,
        })
    }
}

/// An instance's state from the engine's status of its container. An exited container
/// is `Restarting` while its restart policy will start it again, else `Crashed`.
fn instance_state(status: &str, exit_code: i32, restarts: u32, max_restarts: u32) -> InstanceState {
    match status {
        "running" | "paused" => InstanceState::Running,
        "created" | "configured" | "initialized" => InstanceState::Starting,
        "stopping" | "removing" => InstanceState::Stopped,
        "exited" | "stopped" if exit_code != 0 && restarts < max_restarts => InstanceState::Restarting,
        _ => InstanceState::Crashed,
    }
}

/// Streams a container's output into `output` until the container is gone or has
/// stopped for good. The engine ends a log stream when the container exits; after a
/// restart by its policy the stream is opened again from the start and the lines already
/// passed on are skipped (the API's timestamps have whole seconds only, too coarse to
/// resume from), so no run's output is lost or repeated, even a run that started and
/// exited between two looks.
async fn follow(
    engine: Engine,
    id: String,
    label: String,
    output: Arc<dyn LogSink>,
    max_restarts: u32,
    mut passed_on: usize,
) {
    let containers = engine.podman.containers();
    let container = containers.get(&id);
    let mut reported_exit: Option<String> = None;
    let mut final_read = false;
    loop {
        let mut read = 0usize;
        read_log(&container, true, |line| {
            read += 1;
            if read > passed_on {
                passed_on = read;
                output.line(line);
            }
        })
        .await;

        let data = match container.inspect().await {
            Ok(data) => data,
            Err(podman_api::Error::Fault { code, .. }) if code.as_u16() == 404 => return,
            Err(error) => {
                tracing::debug!(container = %id, error = %error, "inspecting a followed container");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let restarts = data.restart_count.and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
        let Some(state) = data.state else {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        let status = state.status.unwrap_or_default();
        if status == "exited" || status == "stopped" {
            let code = state.exit_code.unwrap_or(0);
            let finished = state.finished_at.map(|t| t.to_rfc3339());
            if reported_exit != finished {
                output.line(&format!("paastech: {label} exited (code {code})"));
                reported_exit = finished;
            }
            if instance_state(&status, code, restarts, max_restarts) == InstanceState::Crashed {
                // Runs since the stream ended may have come and gone: read to the end once more.
                if !final_read {
                    final_read = true;
                    continue;
                }
                output.line(&format!("paastech: {label} crashed: not restarting after {restarts} restarts"));
                return;
            }
        }
        // Running again (or about to be): follow on from the last line seen.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Reads a container's log from its start, one line at a time; with `follow`, until the
/// container stops. A stream error ends the read (the follower looks again).
async fn read_log(container: &podman_api::api::Container, follow: bool, mut emit: impl FnMut(&str)) {
    let opts = ContainerLogsOpts::builder().follow(follow).stdout(true).stderr(true).build();
    let mut stream = container.logs(&opts);
    let (mut out, mut err) = (LineBuf::default(), LineBuf::default());
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(TtyChunk::StdOut(bytes)) => out.push(&bytes, &mut emit),
            Ok(TtyChunk::StdErr(bytes)) => err.push(&bytes, &mut emit),
            Ok(TtyChunk::StdIn(_)) => {}
            Err(error) => {
                tracing::debug!(container = %container.id(), error = %error, "container log stream ended");
                break;
            }
        }
    }
    out.finish(&mut emit);
    err.finish(&mut emit);
}

/// One container's figures from a libpod stats entry (every container of this runtime has
/// a memory limit: the spec's or the default).
fn usage_of(entry: &Value) -> Usage {
    Usage {
        cpu_ns: entry["CPUNano"].as_u64(),
        memory_bytes: entry["MemUsage"].as_u64(),
        memory_limit_bytes: entry["MemLimit"].as_u64().filter(|&limit| limit > 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ulimits() {
        let ok: &[(&str, (&str, u64, u64))] = &[
            ("nofile=1024:1024", ("nofile", 1024, 1024)),
            ("nproc=512", ("nproc", 512, 512)),
            (" NOFILE = 10 : 20 ", ("nofile", 10, 20)),
        ];
        for (text, (name, soft, hard)) in ok {
            assert_eq!(text.parse::<Ulimit>(), Ok(Ulimit { name: (*name).into(), soft: *soft, hard: *hard }));
        }
        for bad in ["nofile", "=1:2", "nofile=a:b", "nofile=2:1", "no-file=1:1", "nofile=1:2:3"] {
            assert!(bad.parse::<Ulimit>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn maps_container_states() {
        let cases: &[(&str, i32, u32, InstanceState)] = &[
            ("running", 0, 0, InstanceState::Running),
            ("running", 0, 2, InstanceState::Running),
            ("created", 0, 0, InstanceState::Starting),
            ("exited", 3, 0, InstanceState::Restarting),
            ("exited", 3, 2, InstanceState::Restarting),
            ("exited", 3, 3, InstanceState::Crashed),
            ("exited", 0, 0, InstanceState::Crashed),
            ("stopping", 0, 0, InstanceState::Stopped),
            ("something-new", 0, 0, InstanceState::Crashed),
        ];
        for (status, code, restarts, want) in cases {
            assert_eq!(instance_state(status, *code, *restarts, 3), *want, "{status} {code} {restarts}");
        }
    }

    #[test]
    fn container_spec_is_locked_down() {
        let runtime = PodmanRuntime::new(PodmanRuntimeConfig {
            ulimits: vec!["nofile=2048:4096".parse().expect("ulimit")],
            ..PodmanRuntimeConfig::default()
        });
        let mut spec = InstanceSpec {
            project: ProjectName::parse("demo").expect("name"),
            version: 4,
            process_type: "web".into(),
            index: 1,
            artifact: "localhost/paastech/demo:v4".into(),
            command: "exec httpd -f -p $PORT".into(),
            env: BTreeMap::from([("GREETING".into(), "hi".into())]),
            limits: Default::default(),
        };
        spec.limits.cpus = Some(0.5);
        let body = runtime.container_spec(&spec, "n", 15000);
        assert_eq!(body["no_new_privileges"], true);
        assert_eq!(body["privileged"], false);
        assert_eq!(body["cap_drop"], json!(["ALL"]));
        assert_eq!(body["cap_add"], json!(["CHOWN", "SETUID", "SETGID"]));
        assert_eq!(body["oci_runtime"], "runc");
        assert_eq!(body["env"], json!({"GREETING": "hi", "PORT": "5000"}));
        assert_eq!(
            body["labels"],
            json!({"paastech.project": "demo", "paastech.deployment": "4", "paastech.process": "web",
                   "paastech.index": "1", "paastech.namespace": "default"})
        );
        assert_eq!(body["resource_limits"]["memory"]["limit"], 512 * 1024 * 1024);
        assert_eq!(body["resource_limits"]["cpu"]["quota"], 50_000);
        assert_eq!(
            body["r_limits"],
            json!([{"type": "nofile", "soft": 2048, "hard": 4096}, {"type": "nproc", "soft": 1024, "hard": 1024}])
        );
        assert_eq!(body["portmappings"][0]["host_ip"], "127.0.0.1");
        assert_eq!(body["portmappings"][0]["host_port"], 15000);
        assert_eq!(body["command"], json!(["exec httpd -f -p $PORT"]));

        spec.process_type = "worker".into();
        spec.command = String::new();
        let body = runtime.container_spec(&spec, "n", 0);
        assert!(body.get("portmappings").is_none() && body.get("command").is_none(), "{body}");
        assert!(body["env"].get("PORT").is_none());
    }

    #[test]
    fn one_off_spec_runs_argv_once_without_a_port() {
        let runtime = PodmanRuntime::new(PodmanRuntimeConfig::default());
        let spec = InstanceSpec {
            project: ProjectName::parse("demo").expect("name"),
            version: 4,
            process_type: "web".into(),
            index: 0,
            artifact: "localhost/paastech/demo:v4".into(),
            command: "exec httpd -f -p $PORT".into(),
            env: BTreeMap::from([("GREETING".into(), "hi".into())]),
            limits: Default::default(),
        };
        let run = OneOff { argv: vec!["rake".into(), "db:migrate".into()], timeout: Duration::from_secs(60) };
        let body = runtime.one_off_spec(&spec, &run, "n");
        assert_eq!(body["image"], "localhost/paastech/demo:v4");
        assert_eq!((&body["entrypoint"], &body["command"]), (&json!(["rake"]), &json!(["db:migrate"])), "no shell");
        assert_eq!(body["env"], json!({"GREETING": "hi"}), "no PORT");
        assert_eq!(body["labels"], json!({"paastech.one-off": "demo", "paastech.namespace": "default"}));
        for absent in ["portmappings", "restart_policy", "restart_tries"] {
            assert!(body.get(absent).is_none(), "{absent}: {body}");
        }
        assert_eq!(body["init"], false);
        // The lockdown and limits of an instance.
        assert_eq!(body["no_new_privileges"], true);
        assert_eq!(body["cap_drop"], json!(["ALL"]));
        assert_eq!(body["resource_limits"]["pids"]["limit"], 512);
        assert_eq!(body["resource_limits"]["memory"]["limit"], 512 * 1024 * 1024);
    }
}
