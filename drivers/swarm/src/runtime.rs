//! `SwarmRuntime`: each instance is a replicated swarm service of one replica, labelled
//! like the Docker driver's containers; its state, restarts and address are read from the
//! service's tasks, its output followed from the service's log.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum, EndpointSpec,
    EndpointSpecModeEnum, Limit, NodeSpecAvailabilityEnum, NodeSpecRoleEnum, NodeState as EngineNodeState, Service,
    ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, ServiceSpecModeReplicatedJob, ServiceSpecUpdateConfig,
    ServiceSpecUpdateConfigFailureActionEnum, ServiceSpecUpdateConfigOrderEnum, Task, TaskSpec, TaskSpecContainerSpec,
    TaskSpecContainerSpecPrivileges, TaskSpecLogDriver, TaskSpecResources, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{
    ListNodesOptions, ListServicesOptions, ListTasksOptions, LogsOptionsBuilder, UpdateServiceOptionsBuilder,
};
use futures_util::StreamExt;
use paastech_core::ProjectName;
use paastech_core::drivers::{
    Instance, InstanceSpec, InstanceState, LogSink, Node, NodeAvailability, NodeRole, NodeState, OneOff, Runtime, Usage,
};
use paastech_core::registry::ImageRegistry;
use paastech_core::{Error, Result};
use paastech_driver_docker::DockerRuntimeConfig;
use paastech_driver_docker::engine::{Engine, engine_error, status_of};
use paastech_driver_docker::labels;
use paastech_driver_docker::registry::credentials;
use paastech_driver_docker::runtime::CAPABILITIES;
use tokio::task::JoinHandle;

/// The label of a one-off command's service (its value: the project), in place of the
/// instance labels: `list` does not see it.
const ONE_OFF_LABEL: &str = "paastech.one-off";

#[derive(Debug, Clone, PartialEq)]
pub struct SwarmRuntimeConfig {
    /// What the swarm shares with the Docker driver: the (manager's) engine, the
    /// namespace, the default limits, the restart attempts, the container port.
    pub base: DockerRuntimeConfig,
    /// Where every node pulls the images from, with its credentials.
    pub registry: ImageRegistry,
    /// The stop grace period of every instance, fixed in its service's spec.
    pub stop_grace: Duration,
    /// How long `start` waits for the task to run (scheduling, the pull, the start).
    pub start_timeout: Duration,
    /// The pause before swarm starts a failed task again.
    pub restart_delay: Duration,
}

impl Default for SwarmRuntimeConfig {
    fn default() -> Self {
        SwarmRuntimeConfig {
            base: DockerRuntimeConfig::default(),
            registry: ImageRegistry { address: "127.0.0.1:5000".into(), username: None, password: None },
            stop_grace: Duration::from_secs(10),
            start_timeout: Duration::from_secs(120),
            restart_delay: Duration::from_secs(1),
        }
    }
}

pub struct SwarmRuntime {
    config: SwarmRuntimeConfig,
    engine: Engine,
    /// The log followers of the services this runtime started or attached to, by id.
    followers: Mutex<HashMap<String, JoinHandle<()>>>,
    /// The same services, whose tasks' exits are reported in their output.
    watched: Arc<Mutex<HashMap<String, Watched>>>,
    /// The one task that reads all their tasks, once a second (started on first use).
    watcher: Mutex<Option<JoinHandle<()>>>,
    next: AtomicU64,
    /// When this value was made, in nanoseconds since the epoch: one-off services
    /// created before are another server's.
    made_at: i128,
}

impl SwarmRuntime {
    pub fn new(config: SwarmRuntimeConfig) -> Self {
        let engine = Engine::new(config.base.engine.clone());
        SwarmRuntime {
            config,
            engine,
            followers: Mutex::new(HashMap::new()),
            watched: Arc::new(Mutex::new(HashMap::new())),
            watcher: Mutex::new(None),
            next: AtomicU64::new(0),
            made_at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128),
        }
    }

    /// Checks that the manager answers.
    pub async fn ping(&self) -> Result<()> {
        let docker = self.engine.client().await?;
        docker
            .ping()
            .await
            .map_err(|err| engine_error(format!("pinging the swarm manager at {}", self.engine.socket()), err))?;
        Ok(())
    }

    fn followers(&self) -> MutexGuard<'_, HashMap<String, JoinHandle<()>>> {
        self.followers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A unique service name of at most 63 characters (swarm's limit), readable in
    /// `docker service ls`.
    fn service_name(&self, spec: &InstanceSpec, process: &str) -> String {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let process: String =
            process.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
        let suffix = format!("-{:x}{seq}", nanos & 0x00ff_ffff);
        let mut name = format!("paastech-{}-v{}-{process}-{}", spec.project, spec.version, spec.index);
        name.truncate(63 - suffix.len());
        name + &suffix
    }

    /// The service of one instance: one replica, restarted on failure up to
    /// `max_restarts`, start-first updates, the port published in host mode on a port
    /// the engine picks, locked down and limited like a Docker container.
    fn service_spec(&self, spec: &InstanceSpec) -> ServiceSpec {
        let labels = HashMap::from([
            (labels::NAMESPACE.to_owned(), self.config.base.namespace.clone()),
            (labels::PROJECT.to_owned(), spec.project.to_string()),
            (labels::DEPLOYMENT.to_owned(), spec.version.to_string()),
            (labels::PROCESS.to_owned(), spec.process_type.clone()),
            (labels::INDEX.to_owned(), spec.index.to_string()),
        ]);
        let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if spec.is_web() {
            env.push(format!("PORT={}", self.config.base.container_port));
        }
        let args =
            (!spec.command.is_empty()).then(|| vec!["/bin/sh".to_owned(), "-c".to_owned(), spec.command.clone()]);
        let endpoint = spec.is_web().then(|| EndpointSpec {
            // No virtual IP: it needs IPVS, and the ingress reaches tasks directly.
            mode: Some(EndpointSpecModeEnum::DNSRR),
            ports: Some(vec![EndpointPortConfig {
                protocol: Some(EndpointPortConfigProtocolEnum::TCP),
                target_port: Some(i64::from(self.config.base.container_port)),
                // Chosen by the node's engine: a fixed port would stop a start-first
                // update or a second instance on the same node.
                published_port: None,
                publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                ..Default::default()
            }]),
        });
        ServiceSpec {
            name: Some(self.service_name(spec, &spec.process_type)),
            labels: Some(labels.clone()),
            task_template: Some(TaskSpec {
                container_spec: Some(self.container_spec(spec, args, env, labels)),
                resources: Some(self.resources(spec)),
                restart_policy: Some(TaskSpecRestartPolicy {
                    condition: Some(TaskSpecRestartPolicyConditionEnum::ON_FAILURE),
                    delay: Some(nanos(self.config.restart_delay)),
                    max_attempts: Some(i64::from(self.config.base.max_restarts)),
                    window: Some(0),
                }),
                log_driver: Some(bounded_logs()),
                ..Default::default()
            }),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
                ..Default::default()
            }),
            update_config: Some(ServiceSpecUpdateConfig {
                parallelism: Some(1),
                delay: Some(nanos(Duration::from_secs(1))),
                monitor: Some(nanos(Duration::from_secs(5))),
                failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::PAUSE),
                order: Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST),
                ..Default::default()
            }),
            endpoint_spec: endpoint,
            ..Default::default()
        }
    }

    fn container_spec(
        &self,
        spec: &InstanceSpec,
        args: Option<Vec<String>>,
        env: Vec<String>,
        labels: HashMap<String, String>,
    ) -> TaskSpecContainerSpec {
        TaskSpecContainerSpec {
            image: Some(spec.artifact.clone()),
            args,
            env: Some(env),
            labels: Some(labels),
            // API 1.46 and later: an older engine (Docker 20.10 speaks 1.41) ignores it,
            // and must default to it itself (`dockerd --no-new-privileges`).
            privileges: Some(TaskSpecContainerSpecPrivileges { no_new_privileges: Some(true), ..Default::default() }),
            capability_drop: Some(vec!["ALL".into()]),
            capability_add: Some(CAPABILITIES.iter().map(|c| format!("CAP_{c}")).collect()),
            // An init as PID 1 passes the polite stop signal on (see the Docker driver).
            init: Some(true),
            stop_grace_period: Some(nanos(self.config.stop_grace)),
            ..Default::default()
        }
    }

    fn resources(&self, spec: &InstanceSpec) -> TaskSpecResources {
        let memory = spec.limits.memory_bytes.unwrap_or(self.config.base.default_memory_bytes);
        let cpus = spec.limits.cpus.unwrap_or(self.config.base.default_cpus);
        TaskSpecResources {
            limits: Some(Limit {
                memory_bytes: Some(i64::try_from(memory).unwrap_or(i64::MAX)),
                nano_cpus: Some((cpus * 1e9) as i64),
                pids: Some(self.config.base.pids_limit),
            }),
            ..Default::default()
        }
    }

    /// A one-off command's service: an instance's image, env, limits and lockdown, as a
    /// job run once (`replicated-job`, no restart), with no port and no instance labels.
    fn one_off_spec(&self, spec: &InstanceSpec, run: &OneOff) -> ServiceSpec {
        let mut service = self.service_spec(spec);
        service.name = Some(self.service_name(spec, "run"));
        let labels = HashMap::from([
            (labels::NAMESPACE.to_owned(), self.config.base.namespace.clone()),
            (ONE_OFF_LABEL.to_owned(), spec.project.to_string()),
        ]);
        service.labels = Some(labels.clone());
        service.endpoint_spec = None;
        service.update_config = None;
        service.mode = Some(ServiceSpecMode {
            replicated_job: Some(ServiceSpecModeReplicatedJob { max_concurrent: Some(1), total_completions: Some(1) }),
            ..Default::default()
        });
        if let Some(task) = service.task_template.as_mut() {
            task.restart_policy = Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                ..Default::default()
            });
            if let Some(container) = task.container_spec.as_mut() {
                // In place of the image's command, as `start` puts a Procfile command.
                container.args = Some(run.argv.clone());
                container.env = Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect());
                container.labels = Some(labels);
                // The engine then execs the program itself, and a missing one fails the
                // task with an error naming it.
                container.init = Some(false);
            }
        }
        service
    }

    /// This namespace's services that carry `label` (a key, or `key=value`).
    async fn services(&self, docker: &Docker, label: &str) -> Result<Vec<Service>> {
        let namespace = format!("{}={}", labels::NAMESPACE, self.config.base.namespace);
        let filters = HashMap::from([("label".to_owned(), vec![label.to_owned(), namespace])]);
        docker
            .list_services(Some(ListServicesOptions { filters: Some(filters), ..Default::default() }))
            .await
            .map_err(|err| engine_error("listing swarm services", err))
    }

    /// Whether a service is one of this namespace's (instances or one-offs).
    fn is_ours(&self, service: &Service) -> bool {
        service_labels(service).get(labels::NAMESPACE) == Some(&self.config.base.namespace)
    }

    /// The services' instances, read from their tasks and the nodes' addresses.
    async fn instances_of(&self, docker: &Docker, services: Vec<Service>) -> Result<Vec<Instance>> {
        let ids: Vec<String> = services.iter().filter_map(|s| s.id.clone()).collect();
        let tasks = tasks_of(docker, &ids).await?;
        let nodes = node_addresses(docker).await?;
        let mut instances: Vec<Instance> = services
            .iter()
            .filter_map(|service| {
                let id = service.id.as_deref()?;
                let own: Vec<&Task> = tasks.iter().filter(|t| t.service_id.as_deref() == Some(id)).collect();
                self.instance_of(service, &own, &nodes)
            })
            .collect();
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

    /// An instance as its service's labels and its tasks describe it. The current task
    /// is the newest one (swarm makes a new task for each restart); `restarts` counts the
    /// earlier tasks that ended (kept as the swarm's task history, `--task-history-limit`).
    fn instance_of(&self, service: &Service, tasks: &[&Task], nodes: &HashMap<String, IpAddr>) -> Option<Instance> {
        let labels = service_labels(service);
        let project = ProjectName::parse(labels.get(labels::PROJECT)?).ok()?;
        let version = labels.get(labels::DEPLOYMENT)?.parse().ok()?;
        let process_type = labels.get(labels::PROCESS)?.clone();
        let index = labels.get(labels::INDEX)?.parse().ok()?;
        let current = newest(tasks);
        let restarts = tasks
            .iter()
            .filter(|t| Some(t.id.as_deref()) != current.map(|c| c.id.as_deref()))
            .filter(|t| matches!(task_state(t), Some(TaskState::FAILED | TaskState::COMPLETE | TaskState::REJECTED)))
            .count();
        let max_restarts = service
            .spec
            .as_ref()
            .and_then(|s| s.task_template.as_ref())
            .and_then(|t| t.restart_policy.as_ref())
            .and_then(|r| r.max_attempts)
            .unwrap_or(i64::from(self.config.base.max_restarts));
        let state =
            match current.and_then(task_state) {
                None => InstanceState::Starting,
                Some(TaskState::RUNNING) => InstanceState::Running,
                Some(
                    TaskState::NEW
                    | TaskState::ALLOCATED
                    | TaskState::PENDING
                    | TaskState::ASSIGNED
                    | TaskState::ACCEPTED
                    | TaskState::PREPARING
                    | TaskState::READY
                    | TaskState::STARTING,
                ) => {
                    if restarts > 0 {
                        InstanceState::Restarting
                    } else {
                        InstanceState::Starting
                    }
                }
                // It ended by itself: swarm makes the next task at once while attempts are
                // left (a moment between the two reads as restarting), and `on-failure` does
                // not restart a success.
                Some(TaskState::FAILED | TaskState::REJECTED | TaskState::ORPHANED) => {
                    if (restarts as i64) < max_restarts { InstanceState::Restarting } else { InstanceState::Crashed }
                }
                Some(TaskState::COMPLETE) => InstanceState::Crashed,
                Some(TaskState::SHUTDOWN | TaskState::REMOVE) => InstanceState::Stopped,
            };
        let addr = current.and_then(|task| self.address_of(task, nodes));
        Some(Instance {
            id: service.id.clone()?,
            project,
            version,
            process_type,
            index,
            addr,
            state,
            restarts: u32::try_from(restarts).unwrap_or(u32::MAX),
        })
    }

    /// Where a task's container port is published: its node's address and the port the
    /// node's engine chose.
    fn address_of(&self, task: &Task, nodes: &HashMap<String, IpAddr>) -> Option<SocketAddr> {
        let ip = nodes.get(task.node_id.as_deref()?)?;
        let target = i64::from(self.config.base.container_port);
        let port = task
            .status
            .as_ref()?
            .port_status
            .as_ref()?
            .ports
            .as_ref()?
            .iter()
            .find(|p| p.target_port == Some(target))?
            .published_port?;
        Some(SocketAddr::new(*ip, u16::try_from(port).ok()?))
    }

    /// Waits until the new service's task runs (and, for `web`, its address is known);
    /// a task that cannot start (no image, no node) is an error saying why.
    async fn wait_started(&self, docker: &Docker, id: &str, web: bool) -> Result<Instance> {
        let deadline = Instant::now() + self.config.start_timeout;
        let mut last = String::from("no task was scheduled");
        loop {
            let service = docker
                .inspect_service(id, None)
                .await
                .map_err(|err| engine_error(format!("inspecting service {}", short(id)), err))?;
            let tasks = tasks_of(docker, &[id.to_owned()]).await?;
            let nodes = node_addresses(docker).await?;
            let refs: Vec<&Task> = tasks.iter().collect();
            if let Some(mut instance) = self.instance_of(&service, &refs, &nodes) {
                let current = newest(&refs);
                let state = current.and_then(task_state);
                if state == Some(TaskState::REJECTED) {
                    let why = current.and_then(task_error).unwrap_or_else(|| "rejected".into());
                    return Err(Error::Unavailable(format!("swarm could not start a task of {id}: {why}")));
                }
                // A task that ran and exited did start: the crash is the caller's to see
                // (restarts, Crashed). Its address is the last one it was published at.
                let ran = matches!(state, Some(TaskState::RUNNING | TaskState::FAILED | TaskState::COMPLETE));
                if instance.addr.is_none() && web {
                    instance.addr = refs.iter().rev().find_map(|t| self.address_of(t, &nodes));
                }
                if ran && (instance.addr.is_some() || !web) {
                    return Ok(instance);
                }
                if let Some(task) = current {
                    last = task_error(task).or_else(|| task_message(task)).unwrap_or(last);
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "the swarm did not run service {} within {} s: {last}",
                    short(id),
                    self.config.start_timeout.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Scales the service to nothing (its tasks get the polite stop and the spec's grace
    /// period), waits until no task of it runs on a node that is up and swarm has reaped
    /// them, then removes it.
    async fn remove_service(&self, docker: &Docker, service: &Service, wait: Duration) -> Result<()> {
        let Some(id) = service.id.as_deref() else { return Ok(()) };
        let replicated = service.spec.as_ref().and_then(|s| s.mode.as_ref()).and_then(|m| m.replicated.as_ref());
        if let (Some(spec), Some(_), Some(version)) =
            (service.spec.clone(), replicated, service.version.as_ref().and_then(|v| v.index))
        {
            let mut spec = spec;
            spec.mode = Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: Some(0) }),
                ..Default::default()
            });
            let options = UpdateServiceOptionsBuilder::default().version(i32::try_from(version).unwrap_or(0)).build();
            match docker.update_service(id, spec, options, None).await {
                Ok(_) => self.wait_tasks_down(docker, id, wait).await,
                Err(err) if status_of(&err) == Some(404) => return Ok(()),
                Err(err) => tracing::warn!(service = %short(id), error = %err, "scaling down failed; removing"),
            }
        }
        match docker.delete_service(id).await {
            Err(err) if status_of(&err) != Some(404) => {
                Err(engine_error(format!("removing service {}", short(id)), err))
            }
            _ => Ok(()),
        }
    }

    async fn wait_tasks_down(&self, docker: &Docker, id: &str, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            let up = match (tasks_of(docker, &[id.to_owned()]).await, node_addresses(docker).await) {
                (Ok(tasks), Ok(nodes)) => tasks.iter().any(|t| {
                    // A task on a node that is down is never heard of again.
                    let on_live_node = t.node_id.as_deref().is_some_and(|n| nodes.contains_key(n));
                    // A scaled-down task is deleted by swarm's task reaper once it is
                    // down. Removing the service meanwhile races that reaper, and Docker
                    // 20.10's manager dies of it (swarmkit's SetServiceTasksRemove reads
                    // a task just deleted): wait until the reaper is done.
                    let reaping = t.desired_state == Some(TaskState::REMOVE);
                    on_live_node && (reaping || !matches!(task_state(t), Some(s) if is_terminal(s)))
                }),
                _ => false,
            };
            if !up {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(service = %short(id), "tasks still up after the grace period; removing the service");
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Follows a service's log into `output` from `since`, and reports its tasks' exits
    /// there as `name` (`web.0`): all of them for a new service (`since` 0), those after
    /// now for an adopted one.
    fn follow(&self, docker: &Docker, id: &str, name: String, output: Arc<dyn LogSink>, since: i64) {
        let task = tokio::spawn(follow_logs(docker.clone(), id.to_owned(), output.clone(), since));
        if let Some(previous) = self.followers().insert(id.to_owned(), task) {
            previous.abort();
        }
        let watch = Watched { name, output, reported: HashSet::new(), primed: since == 0 };
        lock(&self.watched).insert(id.to_owned(), watch);
        let mut watcher = lock(&self.watcher);
        if watcher.is_none() {
            *watcher = Some(tokio::spawn(watch_exits(docker.clone(), self.watched.clone())));
        }
    }

    async fn stop_follower(&self, id: &str) {
        lock(&self.watched).remove(id);
        let follower = self.followers().remove(id);
        if let Some(task) = follower {
            // The last lines may still be on their way; a moment, no more.
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_millis(500), task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for SwarmRuntime {
    /// Services outlive the runtime (a restarted server adopts them); followers do not.
    fn drop(&mut self) {
        for (_, task) in self.followers().drain() {
            task.abort();
        }
        if let Some(watcher) = lock(&self.watcher).take() {
            watcher.abort();
        }
    }
}

#[async_trait]
impl Runtime for SwarmRuntime {
    fn name(&self) -> &'static str {
        "swarm"
    }

    fn instances_outlive_server(&self) -> bool {
        true
    }

    fn instance_addresses_move(&self) -> bool {
        true
    }

    async fn start(&self, spec: InstanceSpec, output: Arc<dyn LogSink>) -> Result<Instance> {
        let docker = self.engine.client().await?;
        let service = self.service_spec(&spec);
        let created = docker
            .create_service(service, credentials(&self.config.registry))
            .await
            .map_err(|err| engine_error(format!("creating a swarm service for {}", spec.artifact), err))?;
        let id = created.id.ok_or_else(|| Error::internal_msg("the swarm answered a new service without an id"))?;
        self.follow(docker, &id, format!("{}.{}", spec.process_type, spec.index), output, 0);
        match self.wait_started(docker, &id, spec.is_web()).await {
            Ok(instance) => {
                tracing::info!(service = %short(&id), addr = ?instance.addr, image = %spec.artifact, "started swarm service");
                Ok(instance)
            }
            Err(err) => {
                self.stop_follower(&id).await;
                if let Err(cleanup) = docker.delete_service(&id).await {
                    tracing::warn!(service = %short(&id), error = %cleanup, "cannot remove a service that did not start");
                }
                Err(err)
            }
        }
    }

    /// The service's tasks get the polite signal and the grace period of its spec
    /// (`stop_grace_secs`: swarm has no per-stop grace, and changing the spec's would
    /// replace the task); this returns once they are down, waiting at most that grace
    /// or `grace`, whichever is longer, and a margin.
    async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        let docker = self.engine.client().await?;
        let service = match docker.inspect_service(id, None).await {
            Ok(service) if self.is_ours(&service) => service,
            Ok(_) => {
                tracing::warn!(service = %short(id), "not stopping a service the platform did not start");
                return Ok(());
            }
            Err(err) if status_of(&err) == Some(404) => return Ok(()),
            Err(err) => return Err(engine_error(format!("inspecting service {}", short(id)), err)),
        };
        let wait = grace.max(self.config.stop_grace) + Duration::from_secs(15);
        self.remove_service(docker, &service, wait).await?;
        self.stop_follower(id).await;
        tracing::info!(service = %short(id), "stopped swarm service");
        Ok(())
    }

    /// Follows an adopted service's output from now on.
    async fn attach(&self, id: &str, output: Arc<dyn LogSink>) -> Result<()> {
        let docker = self.engine.client().await?;
        let service = match docker.inspect_service(id, None).await {
            Ok(service) if self.is_ours(&service) => service,
            Ok(_) => return Err(Error::NotFound(format!("service {} is not the platform's", short(id)))),
            Err(err) => return Err(engine_error(format!("inspecting service {}", short(id)), err)),
        };
        let labels = service_labels(&service);
        let name = match (labels.get(labels::PROCESS), labels.get(labels::INDEX)) {
            (Some(process), Some(index)) => format!("{process}.{index}"),
            _ => short(id).to_owned(),
        };
        self.follow(docker, id, name, output, unix_now());
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Instance>> {
        let docker = self.engine.client().await?;
        let services = self.services(docker, labels::PROJECT).await?;
        self.instances_of(docker, services).await
    }

    /// One inspection of the service and a listing of its own tasks.
    async fn status(&self, id: &str) -> Result<Option<Instance>> {
        let docker = self.engine.client().await?;
        let service = match docker.inspect_service(id, None).await {
            Ok(service) if self.is_ours(&service) => service,
            Ok(_) => return Ok(None),
            Err(err) if status_of(&err) == Some(404) => return Ok(None),
            Err(err) => return Err(engine_error(format!("inspecting service {}", short(id)), err)),
        };
        Ok(self.instances_of(docker, vec![service]).await?.pop())
    }

    /// The manager lists only the project's services (a label filter), and only their
    /// tasks are read.
    async fn list_project(&self, project: &ProjectName) -> Result<Vec<Instance>> {
        let docker = self.engine.client().await?;
        let services = self.services(docker, &format!("{}={project}", labels::PROJECT)).await?;
        self.instances_of(docker, services).await
    }

    async fn remove_stray_one_offs(&self) -> Result<usize> {
        let docker = self.engine.client().await?;
        let mut removed = 0;
        for service in self.services(docker, ONE_OFF_LABEL).await? {
            if parse_nanos(service.created_at.as_deref()) >= self.made_at {
                continue;
            }
            if let Some(id) = service.id.as_deref() {
                match docker.delete_service(id).await {
                    Err(err) if status_of(&err) != Some(404) => {
                        return Err(engine_error(format!("removing one-off service {}", short(id)), err));
                    }
                    _ => removed += 1,
                }
            }
        }
        Ok(removed)
    }

    async fn run_once(&self, spec: InstanceSpec, run: OneOff, output: Arc<dyn LogSink>) -> Result<i32> {
        if run.argv.is_empty() {
            return Err(Error::Invalid("a one-off command needs a program to run".into()));
        }
        let docker = self.engine.client().await?.clone();
        let service = self.one_off_spec(&spec, &run);
        let registry = self.config.registry.clone();
        // Its own task: when the caller gives up (a dropped request), the service is still
        // removed, at the latest at the timeout.
        tokio::spawn(run_one_off(docker, service, run, output, registry))
            .await
            .map_err(|err| Error::internal("running a one-off command", err))?
    }

    /// Read from the manager's engine, which has the figures of the containers on its own
    /// node only: a task on another node is left out (its instance shows none).
    async fn usage(&self, ids: &[String]) -> Result<BTreeMap<String, Usage>> {
        let docker = self.engine.client().await?;
        let mut usage = BTreeMap::new();
        for task in tasks_of(docker, ids).await? {
            let running = task.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING);
            let container =
                task.status.as_ref().and_then(|s| s.container_status.as_ref()).and_then(|c| c.container_id.clone());
            let (Some(service), Some(container), true) = (task.service_id.clone(), container, running) else {
                continue;
            };
            if let Some(figures) = paastech_driver_docker::stats::container_usage(docker, &container).await? {
                usage.insert(service, figures);
            }
        }
        Ok(usage)
    }

    async fn nodes(&self) -> Result<Vec<Node>> {
        let docker = self.engine.client().await?;
        let engine_nodes = docker
            .list_nodes(None::<ListNodesOptions>)
            .await
            .map_err(|err| engine_error("listing the swarm's nodes", err))?;
        let services = self.services(docker, labels::PROJECT).await?;
        let ids: Vec<String> = services.iter().filter_map(|s| s.id.clone()).collect();
        let tasks = tasks_of(docker, &ids).await?;
        let addresses = node_addresses(docker).await?;
        let mut nodes: Vec<Node> = engine_nodes
            .iter()
            .filter_map(|node| {
                let spec = node.spec.as_ref();
                let status = node.status.as_ref();
                Some(Node {
                    id: node.id.clone()?,
                    hostname: node.description.as_ref().and_then(|d| d.hostname.clone()).unwrap_or_default(),
                    address: node_address(node),
                    role: match spec.and_then(|s| s.role) {
                        Some(NodeSpecRoleEnum::MANAGER) => NodeRole::Manager,
                        _ => NodeRole::Worker,
                    },
                    state: match status.and_then(|s| s.state) {
                        Some(EngineNodeState::READY) => NodeState::Ready,
                        Some(EngineNodeState::DOWN) => NodeState::Down,
                        Some(EngineNodeState::DISCONNECTED) => NodeState::Disconnected,
                        _ => NodeState::Unknown,
                    },
                    availability: match spec.and_then(|s| s.availability) {
                        Some(NodeSpecAvailabilityEnum::PAUSE) => NodeAvailability::Pause,
                        Some(NodeSpecAvailabilityEnum::DRAIN) => NodeAvailability::Drain,
                        _ => NodeAvailability::Active,
                    },
                    instances: Vec::new(),
                })
            })
            .collect();
        for service in &services {
            let Some(id) = service.id.as_deref() else { continue };
            let own: Vec<&Task> = tasks.iter().filter(|t| t.service_id.as_deref() == Some(id)).collect();
            let (Some(instance), Some(node_id)) =
                (self.instance_of(service, &own, &addresses), newest(&own).and_then(|t| t.node_id.clone()))
            else {
                continue;
            };
            if let Some(node) = nodes.iter_mut().find(|n| n.id == node_id) {
                node.instances.push(instance);
            }
        }
        nodes.sort_by(|a, b| (a.role != NodeRole::Manager, &a.id).cmp(&(b.role != NodeRole::Manager, &b.id)));
        Ok(nodes)
    }
}

/// Creates a one-off command's job, forwards its output, and answers its exit code; the
/// service is removed whatever happened (which also stops a command past its timeout).
async fn run_one_off(
    docker: Docker,
    service: ServiceSpec,
    run: OneOff,
    output: Arc<dyn LogSink>,
    registry: ImageRegistry,
) -> Result<i32> {
    let created = docker
        .create_service(service, credentials(&registry))
        .await
        .map_err(|err| engine_error(format!("creating a one-off service for {}", run.program()), err))?;
    let id = created.id.ok_or_else(|| Error::internal_msg("the swarm answered a new service without an id"))?;
    // How many lines the follow forwarded: the log of one task is read in the same order
    // each time, so a second read skips that many.
    let forwarded = Arc::new(Mutex::new(LogPosition::default()));
    let follower = tokio::spawn({
        let (docker, id, output, forwarded) = (docker.clone(), id.clone(), output.clone(), forwarded.clone());
        async move {
            let mut position = LogPosition::default();
            let count = |position: &LogPosition| lock(&forwarded).lines = position.lines;
            forward_log(&docker, &id, 0, true, &mut position, Skip::Nothing, output.as_ref(), count).await;
        }
    });
    let result = match tokio::time::timeout(run.timeout, job_exit(&docker, &id, &run)).await {
        Ok(result) => result,
        Err(_) => Err(run.timed_out()),
    };
    follower.abort();
    if result.is_ok() {
        // The follow may not have delivered everything when the task ended: read the
        // whole log once more, forwarding what it had not.
        let skip = Skip::Lines(lock(&forwarded).lines);
        let mut position = LogPosition::default();
        forward_log(&docker, &id, 0, false, &mut position, skip, output.as_ref(), |_| {}).await;
    }
    if let Err(err) = docker.delete_service(&id).await
        && status_of(&err) != Some(404)
    {
        tracing::warn!(service = %short(&id), error = %err, "cannot remove a one-off service");
    }
    result
}

/// The exit code of a job's task, once it ended; a task that could not run at all (a
/// program the image lacks) is an error with swarm's reason, which names it.
async fn job_exit(docker: &Docker, id: &str, run: &OneOff) -> Result<i32> {
    loop {
        let tasks = match tasks_of(docker, &[id.to_owned()]).await {
            Ok(tasks) => tasks,
            Err(Error::NotFound(_)) => {
                return Err(Error::Unavailable(format!("the one-off command {} was removed", run.program())));
            }
            Err(err) => return Err(err),
        };
        let refs: Vec<&Task> = tasks.iter().collect();
        if let Some(task) = newest(&refs)
            && let Some(state) = task_state(task)
            && is_terminal(state)
        {
            let code = task.status.as_ref().and_then(|s| s.container_status.as_ref()).and_then(|c| c.exit_code);
            // A program that ran and failed is "task: non-zero exit (N)"; anything else
            // (the container could not start: no such program) is swarm's reason.
            let ran = task_error(task).is_none_or(|err| err.starts_with("task: non-zero exit"));
            return match (state, code) {
                (TaskState::COMPLETE | TaskState::FAILED, Some(code)) if ran => {
                    Ok(i32::try_from(code).unwrap_or(i32::MAX))
                }
                _ => Err(Error::Invalid(format!(
                    "running {}: {}",
                    run.program(),
                    task_error(task).unwrap_or_else(|| format!("the task ended {state:?}"))
                ))),
            };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A followed service, as the exit watcher sees it.
struct Watched {
    /// How its output names it: `web.0`.
    name: String,
    output: Arc<dyn LogSink>,
    /// Its tasks whose exit is reported (or was before it was followed).
    reported: HashSet<String>,
    /// Whether exits seen now are new: false until the first look at an adopted service,
    /// whose earlier exits its previous server reported.
    primed: bool,
}

/// Adds `paastech: web.0 exited (exit status N)` to a followed service's output for each
/// of its tasks that ended, as the Docker driver does for a container; one listing of
/// every followed service's tasks a second, whatever their number.
async fn watch_exits(docker: Docker, watched: Arc<Mutex<HashMap<String, Watched>>>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ids: Vec<String> = lock(&watched).keys().cloned().collect();
        if ids.is_empty() {
            continue;
        }
        let Ok(mut tasks) = tasks_of(&docker, &ids).await else { continue };
        tasks.sort_by_key(created_nanos);
        let mut watched = lock(&watched);
        for task in &tasks {
            let (Some(service), Some(id)) = (task.service_id.as_deref(), task.id.as_deref()) else { continue };
            let Some(entry) = watched.get_mut(service) else { continue };
            // A rejected task never ran: it has no exit to report.
            if !matches!(task_state(task), Some(TaskState::FAILED | TaskState::COMPLETE))
                || !entry.reported.insert(id.to_owned())
                || !entry.primed
            {
                continue;
            }
            let code = task.status.as_ref().and_then(|s| s.container_status.as_ref()).and_then(|c| c.exit_code);
            let code = code.map_or_else(|| "unknown".to_owned(), |c| c.to_string());
            entry.output.line(&format!("paastech: {} exited (exit status {code})", entry.name));
        }
        for id in &ids {
            if let Some(entry) = watched.get_mut(id) {
                entry.primed = true;
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Follows a service's log into `output` until the service is gone: swarm keeps one log
/// across its tasks (restarts included). A stream that ends while the service exists is
/// opened again a little before it ended, skipping the lines up to the last one forwarded
/// (by the engine's timestamp). Nothing is kept per line: an instance logs for months.
async fn follow_logs(docker: Docker, id: String, output: Arc<dyn LogSink>, mut since: i64) {
    let mut position = LogPosition::default();
    let mut skip = Skip::Nothing;
    loop {
        forward_log(&docker, &id, since, true, &mut position, skip, output.as_ref(), |_| {}).await;
        skip = Skip::UpTo(position.last_stamp.clone());
        if matches!(docker.inspect_service(&id, None).await, Err(err) if status_of(&err) == Some(404)) {
            return;
        }
        since = (unix_now() - 5).max(0);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Where a reading of a service's log got to.
#[derive(Default)]
struct LogPosition {
    /// The engine's timestamp of the last line read (RFC 3339, fixed-width nanoseconds:
    /// compares as text).
    last_stamp: String,
    /// How many lines were read.
    lines: usize,
}

/// What a reading of a log leaves out, because an earlier reading forwarded it.
#[derive(Clone)]
enum Skip {
    Nothing,
    /// Lines stamped up to this (a log opened again after its stream ended).
    UpTo(String),
    /// The first N lines (the same task's log read again to its end).
    Lines(usize),
}

/// Forwards a service's log from `since` (seconds since the epoch) into `output`, but
/// what `skip` says; `position` follows the reading, and `progress` sees it after each
/// line.
#[allow(clippy::too_many_arguments)]
async fn forward_log(
    docker: &Docker,
    id: &str,
    since: i64,
    follow: bool,
    position: &mut LogPosition,
    skip: Skip,
    output: &dyn LogSink,
    progress: impl Fn(&LogPosition),
) {
    let options = LogsOptionsBuilder::default()
        .follow(follow)
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .since(i32::try_from(since).unwrap_or(0))
        .build();
    let mut stream = docker.service_logs(id, Some(options));
    while let Some(item) = stream.next().await {
        let bytes = match item {
            Ok(LogOutput::StdOut { message } | LogOutput::StdErr { message } | LogOutput::Console { message }) => {
                message
            }
            Ok(LogOutput::StdIn { .. }) => continue,
            Err(err) => {
                tracing::debug!(service = %short(id), error = %err, "log stream ended");
                break;
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        for raw in text.lines() {
            let (stamp, line) = raw.split_once(' ').unwrap_or((raw, ""));
            position.lines += 1;
            let skipped = match &skip {
                Skip::Nothing => false,
                Skip::UpTo(last) => stamp <= last.as_str(),
                Skip::Lines(n) => position.lines <= *n,
            };
            if stamp > position.last_stamp.as_str() {
                position.last_stamp = stamp.to_owned();
            }
            if !skipped {
                output.line(line);
                progress(position);
            }
        }
    }
}

/// The tasks of `services` (ids), in one listing; a service removed meanwhile is skipped.
async fn tasks_of(docker: &Docker, services: &[String]) -> Result<Vec<Task>> {
    if services.is_empty() {
        return Ok(Vec::new());
    }
    let list = |ids: Vec<String>| {
        let filters = HashMap::from([("service".to_owned(), ids)]);
        docker.list_tasks(Some(ListTasksOptions { filters: Some(filters) }))
    };
    match list(services.to_vec()).await {
        Ok(tasks) => Ok(tasks),
        // The manager looks each service up: one removed since it was listed fails the
        // whole listing. Then one at a time, without the missing.
        Err(err) if status_of(&err) == Some(404) && services.len() > 1 => {
            let mut all = Vec::new();
            for id in services {
                match list(vec![id.clone()]).await {
                    Ok(tasks) => all.extend(tasks),
                    Err(err) if status_of(&err) == Some(404) => {}
                    Err(err) => return Err(engine_error("listing swarm tasks", err)),
                }
            }
            Ok(all)
        }
        Err(err) => Err(engine_error("listing swarm tasks", err)),
    }
}

/// The address of every node that is up, by node id.
async fn node_addresses(docker: &Docker) -> Result<HashMap<String, IpAddr>> {
    let nodes = docker
        .list_nodes(None::<ListNodesOptions>)
        .await
        .map_err(|err| engine_error("listing the swarm's nodes", err))?;
    Ok(nodes
        .iter()
        .filter(|n| n.status.as_ref().and_then(|s| s.state) == Some(EngineNodeState::READY))
        .filter_map(|n| Some((n.id.clone()?, node_address(n)?)))
        .collect())
}

/// A node's address: what it reports, else (a manager that reports `0.0.0.0`) the
/// address it is a manager at.
fn node_address(node: &bollard::models::Node) -> Option<IpAddr> {
    let reported = node.status.as_ref().and_then(|s| s.addr.as_deref()).and_then(|a| a.parse::<IpAddr>().ok());
    match reported {
        Some(ip) if !ip.is_unspecified() => Some(ip),
        _ => node
            .manager_status
            .as_ref()
            .and_then(|m| m.addr.as_deref())
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .map(|a| a.ip()),
    }
}

fn service_labels(service: &Service) -> HashMap<String, String> {
    service.spec.as_ref().and_then(|s| s.labels.clone()).unwrap_or_default()
}

fn task_state(task: &Task) -> Option<TaskState> {
    task.status.as_ref()?.state
}

fn task_error(task: &Task) -> Option<String> {
    task.status.as_ref()?.err.clone().filter(|e| !e.is_empty())
}

fn task_message(task: &Task) -> Option<String> {
    task.status.as_ref()?.message.clone().filter(|m| !m.is_empty())
}

fn is_terminal(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::COMPLETE
            | TaskState::FAILED
            | TaskState::REJECTED
            | TaskState::SHUTDOWN
            | TaskState::REMOVE
            | TaskState::ORPHANED
    )
}

/// The task created last: swarm makes a new one for every restart.
fn newest<'a>(tasks: &[&'a Task]) -> Option<&'a Task> {
    tasks.iter().copied().max_by_key(|t| created_nanos(t))
}

fn created_nanos(task: &Task) -> i128 {
    parse_nanos(task.created_at.as_deref())
}

/// An engine's RFC 3339 time in nanoseconds since the epoch; 0 when missing.
fn parse_nanos(at: Option<&str>) -> i128 {
    at.and_then(|at| time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok())
        .map_or(0, |at| at.unix_timestamp_nanos())
}

/// The engine's log driver for instances: bounded on every node's disk.
fn bounded_logs() -> TaskSpecLogDriver {
    TaskSpecLogDriver {
        name: Some("json-file".into()),
        options: Some(HashMap::from([
            ("max-size".to_owned(), "10m".to_owned()),
            ("max-file".to_owned(), "2".to_owned()),
        ])),
    }
}

fn nanos(duration: Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bollard::models::{ContainerStatus, ObjectVersion, PortStatus, TaskStatus};
    use paastech_core::drivers::Limits;

    use super::*;

    fn spec(process: &str) -> InstanceSpec {
        InstanceSpec {
            project: ProjectName::parse("demo").expect("name"),
            version: 4,
            process_type: process.into(),
            index: 2,
            artifact: "10.0.0.1:5000/paastech/demo@sha256:abc".into(),
            command: "exec httpd -f -p $PORT".into(),
            env: BTreeMap::from([("GREETING".into(), "hi".into())]),
            limits: Limits { memory_bytes: Some(128 * 1024 * 1024), cpus: Some(0.5) },
        }
    }

    fn service(runtime: &SwarmRuntime) -> Service {
        Service {
            id: Some("svc1".into()),
            version: Some(ObjectVersion { index: Some(7) }),
            spec: Some(runtime.service_spec(&spec("web"))),
            ..Default::default()
        }
    }

    fn task(id: &str, created: &str, state: TaskState, port: Option<i64>) -> Task {
        Task {
            id: Some(id.into()),
            created_at: Some(created.into()),
            service_id: Some("svc1".into()),
            node_id: Some("node2".into()),
            status: Some(TaskStatus {
                state: Some(state),
                container_status: Some(ContainerStatus { exit_code: Some(1), ..Default::default() }),
                port_status: Some(PortStatus {
                    ports: port.map(|p| {
                        vec![EndpointPortConfig {
                            target_port: Some(5000),
                            published_port: Some(p),
                            ..Default::default()
                        }]
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_newest_task_is_the_instance_and_the_ended_ones_are_its_restarts() {
        let runtime = SwarmRuntime::new(SwarmRuntimeConfig::default());
        let service = service(&runtime);
        let nodes = HashMap::from([("node2".to_owned(), "10.0.0.12".parse::<IpAddr>().expect("ip"))]);
        let of = |tasks: &[Task]| {
            let refs: Vec<&Task> = tasks.iter().collect();
            runtime.instance_of(&service, &refs, &nodes).expect("an instance")
        };

        // Listed in any order; a whole second without a fraction is older than one with.
        let running = [
            task("t3", "2026-12-05T10:00:01.5Z", TaskState::RUNNING, Some(32770)),
            task("t1", "2026-12-05T10:00:01Z", TaskState::FAILED, Some(32768)),
            task("t2", "2026-12-05T10:00:01.45Z", TaskState::FAILED, Some(32769)),
        ];
        let instance = of(&running);
        assert_eq!((instance.state, instance.restarts), (InstanceState::Running, 2));
        assert_eq!(instance.addr, Some("10.0.0.12:32770".parse().expect("addr")), "the current task's port");
        assert_eq!(
            (instance.id.as_str(), instance.project.as_str(), instance.version, instance.process_type.as_str()),
            ("svc1", "demo", 4, "web")
        );
        assert_eq!(instance.index, 2);

        let starting = [task("t1", "2026-12-05T10:00:01Z", TaskState::PREPARING, None)];
        assert_eq!((of(&starting).state, of(&starting).addr), (InstanceState::Starting, None));
        let again = [
            task("t1", "2026-12-05T10:00:01Z", TaskState::FAILED, Some(32768)),
            task("t2", "2026-12-05T10:00:02Z", TaskState::READY, None),
        ];
        assert_eq!((of(&again).state, of(&again).restarts), (InstanceState::Restarting, 1));

        // Attempts left (5 by default): the next task is on its way; none left: crashed.
        let failed = [task("t1", "2026-12-05T10:00:01Z", TaskState::FAILED, Some(32768))];
        assert_eq!(of(&failed).state, InstanceState::Restarting);
        let spent: Vec<Task> = (0..6)
            .map(|i| task(&format!("t{i}"), &format!("2026-12-05T10:00:0{i}Z"), TaskState::FAILED, Some(32768)))
            .collect();
        assert_eq!((of(&spent).state, of(&spent).restarts), (InstanceState::Crashed, 5));
        // `on-failure` does not restart a success.
        let done = [task("t1", "2026-12-05T10:00:01Z", TaskState::COMPLETE, None)];
        assert_eq!(of(&done).state, InstanceState::Crashed);

        // A task on a node that is not up (not in `nodes`) has no address.
        let elsewhere = HashMap::new();
        let refs: Vec<&Task> = running.iter().collect();
        assert_eq!(runtime.instance_of(&service, &refs, &elsewhere).expect("instance").addr, None);

        // Another service without the platform's labels is no instance.
        let foreign = Service { id: Some("x".into()), spec: Some(ServiceSpec::default()), ..Default::default() };
        assert_eq!(runtime.instance_of(&foreign, &refs, &nodes), None);
    }

    #[test]
    fn an_instance_is_one_locked_down_replica_published_in_host_mode() {
        let runtime = SwarmRuntime::new(SwarmRuntimeConfig::default());
        let service = runtime.service_spec(&spec("web"));
        assert!(service.name.as_deref().is_some_and(|n| n.starts_with("paastech-demo-v4-web-2-") && n.len() <= 63));
        let labels = service.labels.expect("labels");
        assert_eq!(labels.get(labels::PROJECT).map(String::as_str), Some("demo"));
        assert_eq!(labels.get(labels::INDEX).map(String::as_str), Some("2"));
        assert_eq!(service.mode.and_then(|m| m.replicated).and_then(|r| r.replicas), Some(1));
        let endpoint = service.endpoint_spec.expect("a web instance publishes its port");
        assert_eq!(endpoint.mode, Some(EndpointSpecModeEnum::DNSRR));
        let port = &endpoint.ports.expect("ports")[0];
        assert_eq!(
            (port.target_port, port.published_port, port.publish_mode),
            (Some(5000), None, Some(EndpointPortConfigPublishModeEnum::HOST)),
            "the engine picks the published port"
        );
        let update = service.update_config.expect("update config");
        assert_eq!(update.order, Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST));
        let task = service.task_template.expect("task");
        let container = task.container_spec.expect("container");
        assert_eq!(container.env, Some(vec!["GREETING=hi".to_owned(), "PORT=5000".to_owned()]));
        assert_eq!(container.args.as_ref().map(|a| a[2].as_str()), Some("exec httpd -f -p $PORT"));
        assert_eq!(container.capability_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(container.privileges.and_then(|p| p.no_new_privileges), Some(true));
        let limits = task.resources.and_then(|r| r.limits).expect("limits");
        assert_eq!(
            (limits.memory_bytes, limits.nano_cpus, limits.pids),
            (Some(128 << 20), Some(500_000_000), Some(512))
        );
        let restart = task.restart_policy.expect("restart policy");
        assert_eq!(
            (restart.condition, restart.max_attempts),
            (Some(TaskSpecRestartPolicyConditionEnum::ON_FAILURE), Some(5))
        );
        assert_eq!(task.log_driver.and_then(|l| l.name).as_deref(), Some("json-file"));

        // Other process types publish nothing and get no PORT.
        let worker = runtime.service_spec(&spec("worker"));
        assert!(worker.endpoint_spec.is_none());
        let env = worker.task_template.and_then(|t| t.container_spec).and_then(|c| c.env).expect("env");
        assert!(!env.iter().any(|e| e.starts_with("PORT=")), "{env:?}");
    }

    #[test]
    fn a_one_off_is_a_job_run_once_without_a_port_or_instance_labels() {
        let runtime = SwarmRuntime::new(SwarmRuntimeConfig::default());
        let run = OneOff { argv: vec!["rake".into(), "db:migrate".into()], timeout: Duration::from_secs(60) };
        let service = runtime.one_off_spec(&spec("web"), &run);
        let mode = service.mode.expect("mode");
        assert!(mode.replicated.is_none());
        assert_eq!(mode.replicated_job.and_then(|j| j.total_completions), Some(1));
        assert!(service.endpoint_spec.is_none());
        let labels = service.labels.expect("labels");
        assert_eq!(labels.get(ONE_OFF_LABEL).map(String::as_str), Some("demo"));
        assert!(!labels.contains_key(labels::PROJECT), "list does not see it: {labels:?}");
        let task = service.task_template.expect("task");
        assert_eq!(task.restart_policy.and_then(|r| r.condition), Some(TaskSpecRestartPolicyConditionEnum::NONE));
        let container = task.container_spec.expect("container");
        assert_eq!(container.args, Some(run.argv.clone()), "the argument vector, no shell");
        assert_eq!(container.env, Some(vec!["GREETING=hi".to_owned()]), "the project's env, no PORT");
        assert_eq!(container.capability_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(task.resources.and_then(|r| r.limits).and_then(|l| l.memory_bytes), Some(128 << 20));
    }
}
