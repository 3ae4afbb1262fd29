//! `DockerRuntime`: each instance is a labelled container, restarted by the engine when it
//! fails, its output followed from the engine's log into the instance's sink.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, ContainerSummary, HostConfig,
    HostConfigLogConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder, WaitContainerOptions,
};
use futures_util::StreamExt;
use paastech_core::ProjectName;
use paastech_core::drivers::{Instance, InstanceSpec, InstanceState, LogSink, OneOff, Runtime, Usage};
use paastech_core::interactive::{TtySession, TtySize, tty_channels};
use paastech_core::ports::free_loopback_port;
use paastech_core::registry::ImageRegistry;
use paastech_core::{Error, Result};
use tokio::task::JoinHandle;

use crate::engine::{Engine, EngineConfig, engine_error, status_of};
use crate::labels;

/// Capabilities given back after dropping all: what images that start as root and then
/// switch to their own user (nginx, most official images' entrypoints) need for that.
/// No `NET_BIND_SERVICE`: apps listen on `$PORT`, above 1024.
pub const CAPABILITIES: &[&str] = &["CHOWN", "SETUID", "SETGID"];

/// The label of a one-off command's container (its value: the project), in place of the
/// instance labels: `list` does not see it, reconcile does not adopt or stop it.
const ONE_OFF_LABEL: &str = "paastech.one-off";

#[derive(Debug, Clone, PartialEq)]
pub struct DockerRuntimeConfig {
    pub engine: EngineConfig,
    /// Which server's containers these are: `list` sees, and `stop` touches, only
    /// containers labelled with it, so servers sharing an engine leave each other alone
    /// (a server's reconcile at start removes what it does not know).
    pub namespace: String,
    /// The memory limit of instances whose spec sets none (no swap beyond it).
    pub default_memory_bytes: u64,
    /// The CPU limit of instances whose spec sets none, in cores.
    pub default_cpus: f64,
    /// The most processes (and threads) one container may have: a fork bomb stays inside.
    pub pids_limit: i64,
    /// How many times the engine restarts a failing container before it stays down
    /// (`Crashed`).
    pub max_restarts: u32,
    /// The port `web` containers listen on inside (their `PORT`).
    pub container_port: u16,
    /// The registry builds are pushed to: an image not on this engine is pulled from it
    /// (by digest), with its credentials.
    pub registry: Option<ImageRegistry>,
}

impl Default for DockerRuntimeConfig {
    fn default() -> Self {
        DockerRuntimeConfig {
            engine: EngineConfig::default(),
            namespace: "default".into(),
            default_memory_bytes: 512 * 1024 * 1024,
            default_cpus: 1.0,
            pids_limit: 512,
            max_restarts: 5,
            container_port: 5000,
            registry: None,
        }
    }
}

pub struct DockerRuntime {
    config: DockerRuntimeConfig,
    engine: Engine,
    /// The log followers of the containers this runtime started, by container id.
    followers: Mutex<HashMap<String, JoinHandle<()>>>,
    next: AtomicU64,
    /// When this value was made, in whole seconds since the epoch: one-off containers
    /// created before are another server's.
    made_at: i64,
}

impl DockerRuntime {
    pub fn new(config: DockerRuntimeConfig) -> Self {
        let engine = Engine::new(config.engine.clone());
        DockerRuntime {
            config,
            engine,
            followers: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            made_at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64),
        }
    }

    /// Checks that the engine answers; the server calls it at start so that a missing
    /// engine stops the start with the socket's path.
    pub async fn ping(&self) -> Result<()> {
        let docker = self.engine.client().await?;
        docker
            .ping()
            .await
            .map_err(|err| engine_error(format!("pinging the engine at {}", self.engine.socket()), err))?;
        Ok(())
    }

    fn container_name(&self, spec: &InstanceSpec, process: &str) -> String {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let process: String =
            process.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
        format!("paastech-{}-v{}-{process}-{}-{:x}{seq}", spec.project, spec.version, spec.index, nanos)
    }

    fn create_body(&self, spec: &InstanceSpec, host_port: Option<u16>) -> ContainerCreateBody {
        let port_key = format!("{}/tcp", self.config.container_port);
        let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if host_port.is_some() {
            env.push(format!("PORT={}", self.config.container_port));
        }
        let cmd = (!spec.command.is_empty()).then(|| vec!["/bin/sh".to_owned(), "-c".to_owned(), spec.command.clone()]);
        let memory = spec.limits.memory_bytes.unwrap_or(self.config.default_memory_bytes);
        let memory = i64::try_from(memory).unwrap_or(i64::MAX);
        let cpus = spec.limits.cpus.unwrap_or(self.config.default_cpus);
        let port_bindings = host_port.map(|port| {
            HashMap::from([(
                port_key.clone(),
                Some(vec![PortBinding { host_ip: Some("127.0.0.1".into()), host_port: Some(port.to_string()) }]),
            )])
        });
        let labels = HashMap::from([
            (labels::NAMESPACE.to_owned(), self.config.namespace.clone()),
            (labels::PROJECT.to_owned(), spec.project.to_string()),
            (labels::DEPLOYMENT.to_owned(), spec.version.to_string()),
            (labels::PROCESS.to_owned(), spec.process_type.clone()),
            (labels::INDEX.to_owned(), spec.index.to_string()),
        ]);
        ContainerCreateBody {
            image: Some(spec.artifact.clone()),
            cmd,
            env: Some(env),
            labels: Some(labels),
            exposed_ports: host_port.map(|_| vec![port_key]),
            host_config: Some(HostConfig {
                port_bindings,
                privileged: Some(false),
                security_opt: Some(vec!["no-new-privileges".into()]),
                cap_drop: Some(vec!["ALL".into()]),
                cap_add: Some(CAPABILITIES.iter().map(|c| (*c).to_owned()).collect()),
                memory: Some(memory),
                // The same as memory: no swap, so the limit is the limit.
                memory_swap: Some(memory),
                nano_cpus: Some((cpus * 1e9) as i64),
                pids_limit: Some(self.config.pids_limit),
                // An init as PID 1 passes the polite stop signal on: a shell or a server
                // that is PID 1 itself would ignore it and wait for the forced kill.
                init: Some(true),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::ON_FAILURE),
                    maximum_retry_count: Some(i64::from(self.config.max_restarts)),
                }),
                // The engine keeps the logs on disk: bounded.
                log_config: Some(HostConfigLogConfig {
                    typ: Some("json-file".into()),
                    config: Some(HashMap::from([
                        ("max-size".to_owned(), "10m".to_owned()),
                        ("max-file".to_owned(), "2".to_owned()),
                    ])),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The containers of this runtime's namespace (running or not) that carry `label` (a
    /// key, or `key=value`).
    async fn containers(&self, docker: &Docker, label: &str) -> Result<Vec<ContainerSummary>> {
        let namespace = format!("{}={}", labels::NAMESPACE, self.config.namespace);
        let filters = HashMap::from([("label", vec![label, namespace.as_str()])]);
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        docker.list_containers(Some(options)).await.map_err(|err| engine_error("listing containers", err))
    }

    /// The body of a one-off command's container: an instance's (image, env, limits,
    /// lockdown), but running `run.argv` once, without a port, a restart or instance labels.
    fn one_off_body(&self, spec: &InstanceSpec, run: &OneOff) -> ContainerCreateBody {
        let mut body = self.create_body(spec, None);
        // In place of the image's command, as `start` puts a Procfile command.
        body.cmd = Some(run.argv.clone());
        body.labels = Some(HashMap::from([
            (labels::NAMESPACE.to_owned(), self.config.namespace.clone()),
            (ONE_OFF_LABEL.to_owned(), spec.project.to_string()),
        ]));
        if let Some(host) = body.host_config.as_mut() {
            host.restart_policy = None;
            // The engine then execs the program itself, and a missing one fails the start
            // with an error naming it. No signal needs passing on: a timeout kills.
            host.init = Some(false);
        }
        body
    }

    async fn create_and_start(&self, docker: &Docker, spec: &InstanceSpec) -> Result<(String, Option<u16>)> {
        // The engine gives a random host port a new value at every restart, which would
        // leave the ingress pointing at nothing: the runtime picks the port and keeps it.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let host_port = if spec.is_web() {
                Some(free_loopback_port().map_err(|e| Error::internal("finding a free port", e))?)
            } else {
                None
            };
            let name = self.container_name(spec, &spec.process_type);
            let body = self.create_body(spec, host_port);
            let id = create_container(docker, &name, body, self.config.registry.as_ref()).await?;
            match docker.start_container(&id, None).await {
                Ok(()) => return Ok((id, host_port)),
                Err(err) => {
                    let _ = remove_container(docker, &id).await;
                    let taken = err.to_string().contains("already allocated")
                        || err.to_string().contains("address already in use");
                    if taken && attempt < 4 {
                        tracing::debug!(port = ?host_port, "host port taken meanwhile, picking another");
                        continue;
                    }
                    return Err(engine_error(format!("starting a container of {}", spec.artifact), err));
                }
            }
        }
    }

    fn followers(&self) -> MutexGuard<'_, HashMap<String, JoinHandle<()>>> {
        self.followers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Removes a container, running or not; one already gone (or being removed) is no error.
pub(crate) async fn remove_container(docker: &Docker, id: &str) -> Result<()> {
    match docker.remove_container(id, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await {
        // 409: the engine is already removing it.
        Err(err) if !matches!(status_of(&err), Some(404 | 409)) => {
            Err(engine_error(format!("removing container {}", short(id)), err))
        }
        _ => Ok(()),
    }
}

/// Creates a container named `name`; its id. An image of the registry that this engine
/// does not have (another node built it, or it was pruned here) is pulled first.
pub(crate) async fn create_container(
    docker: &Docker,
    name: &str,
    body: ContainerCreateBody,
    registry: Option<&ImageRegistry>,
) -> Result<String> {
    let image = body.image.clone().unwrap_or_default();
    let options = CreateContainerOptionsBuilder::default().name(name).build();
    let from_registry = registry.filter(|r| image.starts_with(&format!("{}/", r.address)));
    let first = match (docker.create_container(Some(options.clone()), body.clone()).await, from_registry) {
        (Err(err), Some(registry)) if status_of(&err) == Some(404) => {
            pull(docker, registry, &image).await?;
            docker.create_container(Some(options), body).await
        }
        (result, _) => result,
    };
    match first {
        Ok(created) => Ok(created.id),
        Err(err) if status_of(&err) == Some(404) => Err(Error::NotFound(format!("image {image} does not exist"))),
        Err(err) => Err(engine_error(format!("creating a container for {image}"), err)),
    }
}

/// Pulls `image` (a digest reference) from `registry`.
async fn pull(docker: &Docker, registry: &ImageRegistry, image: &str) -> Result<()> {
    tracing::info!(image, "pulling an image from the registry");
    let options = CreateImageOptionsBuilder::default().from_image(image).build();
    let mut stream = docker.create_image(Some(options), None, crate::registry::credentials(registry));
    while let Some(item) = stream.next().await {
        if let Err(err) = item {
            let why = match err {
                bollard::errors::Error::DockerStreamError { error } => error,
                other => other.to_string(),
            };
            return Err(Error::Unavailable(format!(
                "pulling {image} from the registry {} failed: {why}",
                registry.address
            )));
        }
    }
    Ok(())
}

impl Drop for DockerRuntime {
    /// Containers outlive the runtime (a restarted server adopts them); followers do not.
    fn drop(&mut self) {
        for (_, task) in self.followers().drain() {
            task.abort();
        }
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn instances_outlive_server(&self) -> bool {
        true
    }

    async fn start(&self, spec: InstanceSpec, output: Arc<dyn LogSink>) -> Result<Instance> {
        let docker = self.engine.client().await?;
        let (id, host_port) = self.create_and_start(docker, &spec).await?;
        let name = format!("{}.{}", spec.process_type, spec.index);
        let task = tokio::spawn(follow_logs(docker.clone(), id.clone(), name, output, 0));
        self.followers().insert(id.clone(), task);
        let instance = Instance {
            id: id.clone(),
            project: spec.project,
            version: spec.version,
            process_type: spec.process_type,
            index: spec.index,
            addr: host_port.map(|port| SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
            state: InstanceState::Running,
            restarts: 0,
        };
        tracing::info!(instance = %short(&id), addr = ?instance.addr, image = %spec.artifact, "started container");
        Ok(instance)
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        let docker = self.engine.client().await?;
        // Only the platform's own containers: an id from elsewhere is unknown here.
        match docker.inspect_container(id, None::<InspectContainerOptions>).await {
            Ok(inspect) if self.is_ours(&inspect) => {}
            Ok(_) => {
                tracing::warn!(container = %short(id), "not stopping a container the platform did not start");
                return Ok(());
            }
            Err(err) if status_of(&err) == Some(404) => return Ok(()),
            Err(err) => return Err(engine_error(format!("inspecting container {}", short(id)), err)),
        }
        let secs = i32::try_from(grace.as_secs() + u64::from(grace.subsec_nanos() > 0)).unwrap_or(i32::MAX);
        match docker.stop_container(id, Some(StopContainerOptionsBuilder::default().t(secs).build())).await {
            Ok(()) => {}
            // 304: already stopped; 404: already gone.
            Err(err) if matches!(status_of(&err), Some(304 | 404)) => {}
            Err(err) => tracing::warn!(container = %short(id), error = %err, "polite stop failed; removing by force"),
        }
        remove_container(docker, id).await?;
        let follower = self.followers().remove(id);
        if let Some(task) = follower {
            // The stream ends with the container; give the last lines a moment, no more.
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task).await.is_err() {
                abort.abort();
            }
        }
        tracing::info!(container = %short(id), "stopped container");
        Ok(())
    }

    /// Follows an adopted container's output from now on (its past lines were forwarded by
    /// the server that started it).
    async fn attach(&self, id: &str, output: Arc<dyn LogSink>) -> Result<()> {
        let docker = self.engine.client().await?;
        let inspect = match docker.inspect_container(id, None::<InspectContainerOptions>).await {
            Ok(inspect) if self.is_ours(&inspect) => inspect,
            Ok(_) => {
                return Err(paastech_core::Error::NotFound(format!("container {} is not the platform's", short(id))));
            }
            Err(err) => return Err(engine_error(format!("inspecting container {}", short(id)), err)),
        };
        let name = self
            .instance_of(&inspect)
            .map(|i| format!("{}.{}", i.process_type, i.index))
            .unwrap_or_else(|| short(id).to_owned());
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let task = tokio::spawn(follow_logs(docker.clone(), id.to_owned(), name, output, now));
        if let Some(previous) = self.followers().insert(id.to_owned(), task) {
            previous.abort();
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Instance>> {
        self.instances(labels::PROJECT).await
    }

    /// One inspection of the one container, not a listing.
    async fn status(&self, id: &str) -> Result<Option<Instance>> {
        let docker = self.engine.client().await?;
        match docker.inspect_container(id, None::<InspectContainerOptions>).await {
            Ok(inspect) if self.is_ours(&inspect) => Ok(self.instance_of(&inspect)),
            Ok(_) => Ok(None),
            Err(err) if status_of(&err) == Some(404) => Ok(None),
            Err(err) => Err(engine_error(format!("inspecting container {}", short(id)), err)),
        }
    }

    async fn usage(&self, ids: &[String]) -> Result<BTreeMap<String, Usage>> {
        let docker = self.engine.client().await?;
        let read = futures_util::future::join_all(ids.iter().map(|id| crate::stats::container_usage(docker, id))).await;
        let mut usage = BTreeMap::new();
        for (id, read) in ids.iter().zip(read) {
            if let Some(figures) = read? {
                usage.insert(id.clone(), figures);
            }
        }
        Ok(usage)
    }

    /// The engine lists only the project's containers (a label filter), and only those are
    /// inspected.
    async fn list_project(&self, project: &ProjectName) -> Result<Vec<Instance>> {
        self.instances(&format!("{}={project}", labels::PROJECT)).await
    }

    async fn remove_stray_one_offs(&self) -> Result<usize> {
        let docker = self.engine.client().await?;
        let mut removed = 0;
        for summary in self.containers(docker, ONE_OFF_LABEL).await? {
            let (Some(id), Some(created)) = (summary.id, summary.created) else { continue };
            if created < self.made_at {
                remove_container(docker, &id).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn run_once(&self, spec: InstanceSpec, run: OneOff, output: Arc<dyn LogSink>) -> Result<i32> {
        if run.argv.is_empty() {
            return Err(Error::Invalid("a one-off command needs a program to run".into()));
        }
        let docker = self.engine.client().await?.clone();
        let name = self.container_name(&spec, "run");
        let body = self.one_off_body(&spec, &run);
        // Its own task: when the caller gives up (a dropped request), the container is still
        // removed, at the latest at the timeout.
        tokio::spawn(run_one_off(docker, name, body, run, output, self.config.registry.clone()))
            .await
            .map_err(|err| Error::internal("running a one-off command", err))?
    }

    async fn run_interactive(&self, spec: InstanceSpec, run: OneOff, size: TtySize) -> Result<TtySession> {
        if run.argv.is_empty() {
            return Err(crate::interactive::no_program());
        }
        let docker = self.engine.client().await?.clone();
        let name = self.container_name(&spec, "run");
        let body = self.one_off_body(&spec, &run);
        let (session, ends) = tty_channels();
        crate::interactive::start(docker, &name, body, run, size, self.config.registry.as_ref(), ends).await?;
        Ok(session)
    }
}

impl DockerRuntime {
    /// The instances of this namespace's containers that carry `label` (a key, or
    /// `key=value`): listed by the engine with that filter, then each inspected (the
    /// restart count and the published port are only in an inspection).
    async fn instances(&self, label: &str) -> Result<Vec<Instance>> {
        let docker = self.engine.client().await?;
        let summaries = self.containers(docker, label).await?;
        let ids: Vec<String> = summaries.into_iter().filter_map(|s| s.id).collect();
        let inspected = futures_util::future::join_all(
            ids.iter().map(|id| docker.inspect_container(id, None::<InspectContainerOptions>)),
        )
        .await;
        let mut instances = Vec::new();
        for (id, result) in ids.iter().zip(inspected) {
            match result {
                Ok(inspect) => match self.instance_of(&inspect) {
                    Some(instance) => instances.push(instance),
                    None => tracing::warn!(container = %short(id), "a container with unreadable paastech labels"),
                },
                // Removed between the listing and the inspection.
                Err(err) if status_of(&err) == Some(404) => {}
                Err(err) => return Err(engine_error(format!("inspecting container {}", short(id)), err)),
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

    /// An instance as the labels and the engine's state describe it.
    fn instance_of(&self, inspect: &ContainerInspectResponse) -> Option<Instance> {
        let labels = inspect.config.as_ref()?.labels.as_ref()?;
        let project = ProjectName::parse(labels.get(labels::PROJECT)?).ok()?;
        let version = labels.get(labels::DEPLOYMENT)?.parse().ok()?;
        let process_type = labels.get(labels::PROCESS)?.clone();
        let index = labels.get(labels::INDEX)?.parse().ok()?;
        let port_key = format!("{}/tcp", self.config.container_port);
        let addr = inspect
            .host_config
            .as_ref()
            .and_then(|h| h.port_bindings.as_ref())
            .and_then(|bindings| bindings.get(&port_key).cloned().flatten())
            .and_then(|bindings| bindings.into_iter().next())
            .and_then(|binding| binding.host_port?.parse::<u16>().ok())
            .map(|port| SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        let state = inspect.state.as_ref();
        let status = state.and_then(|s| s.status).unwrap_or(ContainerStateStatusEnum::EMPTY);
        let state = match status {
            ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::PAUSED => InstanceState::Running,
            ContainerStateStatusEnum::RESTARTING => InstanceState::Restarting,
            ContainerStateStatusEnum::CREATED | ContainerStateStatusEnum::EMPTY => InstanceState::Starting,
            // The platform removes what it stops: a container that exited did so by itself
            // and the engine has given up restarting it (or it exited with success, which
            // `on-failure` does not restart either).
            ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD => InstanceState::Crashed,
            ContainerStateStatusEnum::REMOVING | ContainerStateStatusEnum::STOPPING => InstanceState::Stopped,
        };
        Some(Instance {
            id: inspect.id.clone()?,
            project,
            version,
            process_type,
            index,
            addr,
            state,
            restarts: inspect.restart_count.and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
        })
    }
}

impl DockerRuntime {
    /// Whether the container is one of this namespace's instances.
    fn is_ours(&self, inspect: &ContainerInspectResponse) -> bool {
        inspect.config.as_ref().and_then(|c| c.labels.as_ref()).is_some_and(|l| {
            l.contains_key(labels::PROJECT) && l.get(labels::NAMESPACE) == Some(&self.config.namespace)
        })
    }
}

/// Follows a container's log into `output` across the engine's restarts of it, until the
/// container stays down or is removed. Lines carry the engine's timestamps, so the lines
/// already forwarded are skipped when the log is opened again after a restart.
async fn follow_logs(docker: Docker, id: String, name: String, output: Arc<dyn LogSink>, mut since: i64) {
    let mut last_stamp = String::new();
    let mut last_exit = String::new();
    loop {
        forward_log(&docker, &id, since, &mut last_stamp, output.as_ref()).await;
        since = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64 - 5).unwrap_or(0).max(0);
        let inspect = match docker.inspect_container(&id, None::<InspectContainerOptions>).await {
            Ok(inspect) => inspect,
            Err(_) => return,
        };
        let state = inspect.state.unwrap_or_default();
        if let Some(finished) = state.finished_at.filter(|f| *f != last_exit && !f.starts_with("0001-"))
            && !state.running.unwrap_or(false)
        {
            let code = state.exit_code.unwrap_or_default();
            let oom = if state.oom_killed.unwrap_or(false) { ", out of memory" } else { "" };
            output.line(&format!("paastech: {name} exited (exit status {code}{oom})"));
            last_exit = finished;
        }
        match state.status {
            Some(ContainerStateStatusEnum::RESTARTING | ContainerStateStatusEnum::CREATED) => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Some(ContainerStateStatusEnum::RUNNING) => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => return,
        }
    }
}

/// Creates and runs a one-off command's container, then removes it whatever happened (which
/// also kills a command past its timeout).
async fn run_one_off(
    docker: Docker,
    name: String,
    body: ContainerCreateBody,
    run: OneOff,
    output: Arc<dyn LogSink>,
    registry: Option<ImageRegistry>,
) -> Result<i32> {
    let id = create_container(&docker, &name, body, registry.as_ref()).await?;
    let result = run_to_exit(&docker, &id, &run, output.as_ref()).await;
    if let Err(err) = remove_container(&docker, &id).await {
        tracing::warn!(container = %short(&id), error = %err, "cannot remove a one-off container");
    }
    result
}

/// Starts a created one-off container; its exit code, once all its output is in `output`.
async fn run_to_exit(docker: &Docker, id: &str, run: &OneOff, output: &dyn LogSink) -> Result<i32> {
    docker.start_container(id, None).await.map_err(|err| engine_error(format!("running {}", run.program()), err))?;
    let mut last_stamp = String::new();
    // The log stream ends once the container has exited.
    let finished = async {
        let (code, ()) = tokio::join!(exit_code(docker, id), forward_log(docker, id, 0, &mut last_stamp, output));
        code
    };
    let code = tokio::time::timeout(run.timeout, finished).await.map_err(|_| run.timed_out())??;
    // A follow that ended early (an engine hiccup) missed lines: read to the end once more.
    forward_log(docker, id, 0, &mut last_stamp, output).await;
    Ok(code)
}

/// A container's exit code, once it has exited.
pub(crate) async fn exit_code(docker: &Docker, id: &str) -> Result<i32> {
    let mut wait = std::pin::pin!(docker.wait_container(id, None::<WaitContainerOptions>));
    let code = match wait.next().await {
        Some(Ok(exit)) => exit.status_code,
        // bollard turns a non-zero exit into an error.
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
        Some(Err(err)) => return Err(engine_error(format!("waiting for container {}", short(id)), err)),
        None => return Err(Error::internal_msg(format!("the engine gave no exit code for container {}", short(id)))),
    };
    Ok(i32::try_from(code).unwrap_or(i32::MAX))
}

/// Forwards a container's log from `since` (seconds since the epoch) into `output`,
/// following it while the container runs; lines not newer than `last_stamp` (the newest
/// engine timestamp an earlier reading forwarded) are skipped, and `last_stamp` becomes the
/// newest of this reading. Within one reading nothing is skipped: the engine merges stdout
/// and stderr, and a line of one may come after a newer line of the other.
async fn forward_log(docker: &Docker, id: &str, since: i64, last_stamp: &mut String, output: &dyn LogSink) {
    let forwarded_up_to = last_stamp.clone();
    let options = LogsOptionsBuilder::default()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .since(i32::try_from(since).unwrap_or(0))
        .build();
    let mut stream = docker.logs(id, Some(options));
    while let Some(item) = stream.next().await {
        let bytes = match item {
            Ok(LogOutput::StdOut { message } | LogOutput::StdErr { message } | LogOutput::Console { message }) => {
                message
            }
            Ok(LogOutput::StdIn { .. }) => continue,
            Err(err) => {
                tracing::debug!(container = %short(id), error = %err, "log stream ended");
                break;
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        for line in text.lines() {
            let (stamp, line) = line.split_once(' ').unwrap_or((line, ""));
            // RFC 3339 with fixed-width nanoseconds: compares as text.
            if stamp <= forwarded_up_to.as_str() {
                continue;
            }
            if stamp > last_stamp.as_str() {
                *last_stamp = stamp.to_owned();
            }
            output.line(line);
        }
    }
}

pub(crate) fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use paastech_core::drivers::Limits;

    use super::*;

    #[test]
    fn one_off_body_runs_argv_once_without_a_port() {
        let runtime = DockerRuntime::new(DockerRuntimeConfig::default());
        let spec = InstanceSpec {
            project: ProjectName::parse("demo").expect("name"),
            version: 4,
            process_type: "web".into(),
            index: 0,
            artifact: "paastech/demo:v4".into(),
            command: "exec httpd -f -p $PORT".into(),
            env: BTreeMap::from([("GREETING".into(), "hi".into())]),
            limits: Limits { memory_bytes: Some(128 * 1024 * 1024), cpus: Some(0.5) },
        };
        let run = OneOff { argv: vec!["rake".into(), "db:migrate".into()], timeout: Duration::from_secs(60) };
        let body = runtime.one_off_body(&spec, &run);
        assert_eq!(body.image.as_deref(), Some("paastech/demo:v4"));
        assert_eq!(body.cmd, Some(run.argv.clone()), "the argument vector, no shell");
        assert_eq!(body.env, Some(vec!["GREETING=hi".to_owned()]), "the project's env, no PORT");
        assert_eq!(body.exposed_ports, None);
        let labels = body.labels.expect("labels");
        assert_eq!(labels.get(ONE_OFF_LABEL).map(String::as_str), Some("demo"));
        assert!(!labels.contains_key(labels::PROJECT), "list does not see it: {labels:?}");
        let host = body.host_config.expect("host config");
        assert_eq!(host.port_bindings, None);
        assert_eq!(host.restart_policy, None);
        assert_eq!(host.init, Some(false));
        // The lockdown and limits of an instance.
        assert_eq!(host.privileged, Some(false));
        assert_eq!(host.security_opt, Some(vec!["no-new-privileges".to_owned()]));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(host.memory, Some(128 * 1024 * 1024));
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.pids_limit, Some(512));
    }
}
