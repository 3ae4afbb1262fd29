//! `ProcessRuntime`: each instance is `sh -c COMMAND` in its own process group, with a
//! clean environment, supervised by a task that restarts it with backoff.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::Signal;
use paastech_core::drivers::{Instance, InstanceSpec, InstanceState, LogSink, OneOff, Runtime, Usage};
use paastech_core::interactive::{TtySession, TtySize, tty_channels};
use paastech_core::ports::{self, Listener, free_loopback_port};
use paastech_core::{Error, ProjectName, Result};
use tokio::io::AsyncRead;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cgroup::{self, Cgroups, InstanceCgroup};
use crate::group;
use crate::ledger::Ledger;
use crate::lines::Lines;
use crate::users::{AppUser, AppUsers};

/// The directories searched for system tools, and the tail of every app's PATH. Fixed, so
/// that neither the server's PATH nor the app's own files decide which `sh` or `prlimit`
/// runs.
const SYSTEM_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
const SHELL: &str = "/bin/sh";
/// A one-off command past its timeout gets this long between SIGTERM and SIGKILL.
const ONE_OFF_GRACE: Duration = Duration::from_secs(5);

/// When an instance that exited is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// The wait after the first exit; it doubles with each further exit in `window`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// This many exits within `window` and the instance is `Crashed`, not restarted.
    pub max_failures: u32,
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_failures: 5,
            window: Duration::from_secs(60),
        }
    }
}

impl RestartPolicy {
    /// The wait before the next start, given how many exits are within the window.
    fn backoff(&self, recent_failures: usize) -> Duration {
        let doublings = u32::try_from(recent_failures.saturating_sub(1)).unwrap_or(u32::MAX).min(20);
        self.initial_backoff.saturating_mul(1 << doublings).min(self.max_backoff)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProcessRuntimeConfig {
    /// The grace period of [`ProcessRuntime::shutdown`].
    pub grace: Duration,
    pub restart: RestartPolicy,
    /// The memory limit of instances whose spec sets none. `None`: unlimited.
    pub default_memory_bytes: Option<u64>,
    /// Where the process groups started are written down, so that the next runtime can
    /// stop those a dead server left running. `None`: not recorded.
    pub ledger: Option<PathBuf>,
    /// Each project's processes run as a uid of its own from here (when the server can
    /// switch users). `None`: as the server's user.
    pub users: Option<Arc<AppUsers>>,
}

impl Default for ProcessRuntimeConfig {
    fn default() -> Self {
        ProcessRuntimeConfig {
            grace: Duration::from_secs(10),
            restart: RestartPolicy::default(),
            default_memory_bytes: None,
            ledger: None,
            users: None,
        }
    }
}

pub struct ProcessRuntime {
    config: ProcessRuntimeConfig,
    ledger: Option<Arc<Ledger>>,
    /// Where each instance gets a cgroup of its own (its figures are read there); `None`:
    /// the machine does not let the server make one, figures come from `/proc`.
    cgroups: Option<Cgroups>,
    instances: Mutex<HashMap<String, Entry>>,
    next_id: AtomicU64,
}

struct Entry {
    shared: Arc<Mutex<Shared>>,
    /// The instance's own cgroup, removed once it is stopped.
    cgroup: Option<Arc<InstanceCgroup>>,
    /// Its memory limit, if it has one.
    memory_limit: Option<u64>,
    /// The uid of its own, when it runs as one (apps isolated from each other).
    uid: Option<u32>,
    /// `Some(grace)` asks the supervisor to stop the instance and end.
    stop: watch::Sender<Option<Duration>>,
    task: JoinHandle<()>,
}

/// What the supervisor and the runtime both see of an instance.
struct Shared {
    instance: Instance,
    /// The process group of the current process, while one runs.
    pgid: Option<i32>,
}

/// Everything needed to start the instance's process again.
pub(crate) struct Launch {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) dir: PathBuf,
    pub(crate) env: Vec<(OsString, OsString)>,
    output: Arc<dyn LogSink>,
    /// `web.0`, as the instance is named in the lines the runtime writes to `output`.
    name: String,
    pub(crate) ledger: Option<Arc<Ledger>>,
    /// The cgroup every process of the instance is moved into before it runs.
    cgroup: Option<Arc<InstanceCgroup>>,
    /// Who it runs as, when not as the server's user.
    pub(crate) user: Option<AppUser>,
}

impl ProcessRuntime {
    /// With a ledger configured, first stops what a previous server left running.
    pub fn new(config: ProcessRuntimeConfig) -> Self {
        let ledger = config.ledger.as_deref().and_then(|path| match Ledger::open(path) {
            Ok(ledger) => Some(Arc::new(ledger)),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "cannot keep the app process ledger");
                None
            }
        });
        let cgroups = Cgroups::detect();
        match &cgroups {
            Some(cgroups) => tracing::info!(?cgroups, "each app instance gets a cgroup of its own"),
            None => tracing::info!("no cgroup can be made here: app instances' figures come from /proc"),
        }
        if let Some(users) = &config.users {
            if users.switching() {
                tracing::info!("{}", users.describe());
            } else {
                tracing::warn!("{}", users.describe());
            }
            if let Err(err) = users.guard_data_dir() {
                tracing::warn!(error = %err, "cannot close the data directory to app users");
            }
        }
        ProcessRuntime { config, ledger, cgroups, instances: Mutex::new(HashMap::new()), next_id: AtomicU64::new(1) }
    }

    /// Stops every instance with the configured grace period, as a server shutting down
    /// does. Dropping the runtime instead kills them at once.
    pub async fn shutdown(&self) {
        let ids: Vec<String> = lock(&self.instances).keys().cloned().collect();
        for id in ids {
            if let Err(err) = self.stop(&id, self.config.grace).await {
                tracing::warn!(instance = %id, error = %err, "stopping instance at shutdown");
            }
        }
    }

    /// How to run `spec`: its Procfile command through the shell, or `argv` (a one-off
    /// command) as it is.
    fn launch(
        &self,
        spec: &InstanceSpec,
        output: Arc<dyn LogSink>,
        port: Option<u16>,
        argv: Option<&[String]>,
    ) -> Result<Launch> {
        let dir = PathBuf::from(&spec.artifact);
        if !dir.is_absolute() || !dir.is_dir() {
            return Err(Error::NotFound(format!("release directory {} does not exist", spec.artifact)));
        }
        let mut env: Vec<(OsString, OsString)> = vec![
            ("PATH".into(), app_path(&dir)),
            ("HOME".into(), dir.clone().into_os_string()),
            ("LANG".into(), "C.UTF-8".into()),
        ];
        env.extend(spec.env.iter().map(|(k, v)| (k.into(), v.into())));
        if let Some(port) = port {
            env.push(("PORT".into(), port.to_string().into()));
        }

        let command: Vec<OsString> = match argv {
            Some(argv) => argv.iter().map(OsString::from).collect(),
            None => vec![SHELL.into(), "-c".into(), spec.command.clone().into()],
        };
        let (program, args) = match spec.limits.memory_bytes.or(self.config.default_memory_bytes) {
            Some(bytes) => {
                let prlimit = find_system_tool("prlimit").ok_or_else(|| {
                    Error::Unavailable(
                        "prlimit (util-linux) is not installed on the server; it is needed to limit memory".into(),
                    )
                })?;
                let mut args: Vec<OsString> = vec![format!("--data={bytes}").into(), "--".into()];
                args.extend(command);
                (prlimit, args)
            }
            None => {
                let mut command = command.into_iter();
                let program = command.next().map(PathBuf::from).unwrap_or_default();
                (program, command.collect())
            }
        };
        if spec.limits.cpus.is_some() {
            tracing::debug!(project = %spec.project, "cpu limits are not applied to local processes");
        }
        let name = format!("{}.{}", spec.process_type, spec.index);
        let user = match &self.config.users {
            Some(users) => {
                let user = users.user(&spec.project)?;
                if let Some(user) = user {
                    users.adopt_release(&dir, user).map_err(|e| {
                        Error::internal(format!("giving release directory {} to uid {}", dir.display(), user.uid), e)
                    })?;
                }
                user
            }
            None => None,
        };
        Ok(Launch { program, args, dir, env, output, name, ledger: self.ledger.clone(), cgroup: None, user })
    }
}

impl Drop for ProcessRuntime {
    /// Processes do not outlive the runtime that manages them.
    fn drop(&mut self) {
        for entry in lock(&self.instances).values() {
            if let Some(pgid) = lock(&entry.shared).pgid {
                group::signal(pgid, Signal::SIGKILL);
            }
            entry.task.abort();
        }
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn start(&self, spec: InstanceSpec, output: Arc<dyn LogSink>) -> Result<Instance> {
        let port = if spec.is_web() {
            Some(free_loopback_port().map_err(|e| Error::internal("finding a free port", e))?)
        } else {
            None
        };
        let mut launch = self.launch(&spec, output, port, None)?;
        launch.cgroup = self.cgroups.as_ref().and_then(|cgroups| match cgroups.create(&launch.name) {
            Ok(cgroup) => Some(Arc::new(cgroup)),
            Err(err) => {
                tracing::warn!(project = %spec.project, instance = %launch.name, error = %err, "cannot make the instance's cgroup; its figures come from /proc");
                None
            }
        });
        let memory_limit = spec.limits.memory_bytes.or(self.config.default_memory_bytes);
        let uid = launch.user.as_ref().map(|user| user.uid);
        let child = match spawn(&launch) {
            Ok(child) => child,
            Err(err) => {
                if let Some(cgroup) = &launch.cgroup {
                    cgroup.remove();
                }
                return Err(Error::internal(format!("starting {} of {}", launch.name, spec.project), err));
            }
        };

        let seq = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-v{}-{}-{}-{seq}", spec.project, spec.version, spec.process_type, spec.index);
        let instance = Instance {
            id: id.clone(),
            project: spec.project,
            version: spec.version,
            process_type: spec.process_type,
            index: spec.index,
            addr: port.map(|port| SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
            state: InstanceState::Running,
            restarts: 0,
        };
        let shared = Arc::new(Mutex::new(Shared { instance: instance.clone(), pgid: group::pgid_of(&child) }));
        let (stop, stop_rx) = watch::channel(None);
        let cgroup = launch.cgroup.clone();
        let task = tokio::spawn(supervise(child, launch, Arc::clone(&shared), stop_rx, self.config.restart));
        lock(&self.instances).insert(id.clone(), Entry { shared, cgroup, memory_limit, uid, stop, task });
        tracing::info!(instance = %id, addr = ?instance.addr, "started instance");
        Ok(instance)
    }

    async fn run_once(&self, spec: InstanceSpec, run: OneOff, output: Arc<dyn LogSink>) -> Result<i32> {
        if run.argv.is_empty() {
            return Err(Error::Invalid("no command to run".into()));
        }
        let launch = self.launch(&spec, output, None, Some(&run.argv))?;
        let (mut child, forwarding) = spawn_forwarding(&launch).map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => {
                Error::Invalid(format!("{}: no such program in the release or on the server", run.program()))
            }
            _ => Error::internal(format!("starting {} in {}", run.program(), spec.project), err),
        })?;
        let pgid = group::pgid_of(&child);
        let ran = match tokio::time::timeout(run.timeout, child.wait()).await {
            Ok(Ok(status)) => Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))),
            Ok(Err(err)) => Err(Error::internal(format!("waiting for {}", run.program()), err)),
            Err(_) => {
                if let Some(pgid) = pgid {
                    group::terminate(&mut child, pgid, ONE_OFF_GRACE).await;
                }
                Err(run.timed_out())
            }
        };
        // What it left running would hold its output open (and outlive it).
        if let Some(pgid) = pgid {
            group::signal(pgid, Signal::SIGKILL);
        }
        for task in forwarding {
            let _ = task.await;
        }
        ran
    }

    async fn run_interactive(&self, spec: InstanceSpec, run: OneOff, size: TtySize) -> Result<TtySession> {
        if run.argv.is_empty() {
            return Err(Error::Invalid("no command to run".into()));
        }
        // The terminal carries the output; nothing goes to a log sink.
        let launch = self.launch(&spec, Arc::new(Discard), None, Some(&run.argv))?;
        let (session, ends) = tty_channels();
        crate::interactive::start(&launch, &run, size, ends)?;
        tracing::info!(project = %spec.project, program = %run.program(), "interactive command started");
        Ok(session)
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        let Some(entry) = lock(&self.instances).remove(id) else {
            return Ok(());
        };
        entry.stop.send_replace(Some(grace));
        if let Err(err) = entry.task.await {
            tracing::warn!(instance = %id, error = %err, "instance supervisor failed");
        }
        if let Some(cgroup) = entry.cgroup {
            let _ = tokio::task::spawn_blocking(move || cgroup.remove()).await;
        }
        tracing::info!(instance = %id, "stopped instance");
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Instance>> {
        Ok(self.instances_where(|_| true))
    }

    async fn status(&self, id: &str) -> Result<Option<Instance>> {
        Ok(lock(&self.instances).get(id).map(|entry| lock(&entry.shared).instance.clone()))
    }

    async fn list_project(&self, project: &ProjectName) -> Result<Vec<Instance>> {
        Ok(self.instances_where(|instance| &instance.project == project))
    }

    /// The port was free when it was chosen, but the app binds it only once it runs: a
    /// process that bound it meanwhile answers the health check while the app fails to
    /// listen. So every socket taking connections to the address must be held by a process
    /// of the instance (its session or its cgroup: the shell, the app, what the app
    /// started); where the server may not read those processes' descriptors (apps under
    /// a uid of their own, a server that is not root), made by the instance's own uid,
    /// which no other project's processes have.
    async fn answers_itself(&self, instance: &Instance) -> Result<bool> {
        let Some(addr) = instance.addr else { return Ok(true) };
        let (session, cgroup, uid) = match lock(&self.instances).get(&instance.id) {
            Some(entry) => (lock(&entry.shared).pgid, entry.cgroup.clone(), entry.uid),
            None => return Ok(false),
        };
        tokio::task::spawn_blocking(move || {
            let mut members = session.map(group::session_members).unwrap_or_default();
            members.extend(cgroup.map(|cgroup| cgroup.pids()).unwrap_or_default());
            listens_itself(addr, &members, uid)
        })
        .await
        .map_err(|err| Error::internal("looking at who listens on an instance's port", err))
    }

    async fn usage(&self, ids: &[String]) -> Result<BTreeMap<String, Usage>> {
        let wanted: Vec<(String, Option<Arc<InstanceCgroup>>, Option<i32>, Option<u64>)> = {
            let instances = lock(&self.instances);
            ids.iter()
                .filter_map(|id| {
                    let entry = instances.get(id)?;
                    Some((id.clone(), entry.cgroup.clone(), lock(&entry.shared).pgid, entry.memory_limit))
                })
                .collect()
        };
        // Reading /proc and cgroup files blocks; a few instances' worth at once.
        tokio::task::spawn_blocking(move || {
            wanted
                .into_iter()
                .map(|(id, cgroup, pgid, memory_limit)| {
                    let mut usage = match &cgroup {
                        Some(cgroup) => cgroup.usage(),
                        None => pgid.map(cgroup::group_usage).unwrap_or_default(),
                    };
                    if cgroup.as_ref().is_some_and(|c| !c.reads_memory()) {
                        usage.memory_bytes = pgid.and_then(|pgid| cgroup::group_usage(pgid).memory_bytes);
                    }
                    usage.memory_limit_bytes = memory_limit;
                    (id, usage)
                })
                .collect()
        })
        .await
        .map_err(|err| Error::internal("reading instances' usage", err))
    }
}

impl ProcessRuntime {
    /// The instances of the table that `keep` accepts, in `list`'s order.
    fn instances_where(&self, keep: impl Fn(&Instance) -> bool) -> Vec<Instance> {
        let mut instances: Vec<Instance> = lock(&self.instances)
            .values()
            .map(|entry| lock(&entry.shared).instance.clone())
            .filter(|instance| keep(instance))
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
        instances
    }
}

/// Whether every socket listening where a connection to `addr` arrives is held by one of
/// `members` (pids), or, for those whose descriptors cannot be read, was made by `uid`.
/// Nothing listening is not listening itself.
fn listens_itself(addr: SocketAddr, members: &[i32], uid: Option<u32>) -> bool {
    let listening: Vec<Listener> = ports::listeners().into_iter().filter(|l| l.takes(addr)).collect();
    let mut held = HashSet::new();
    let mut unreadable = false;
    for pid in members {
        match std::fs::read_dir(format!("/proc/{pid}/fd")) {
            Ok(fds) => held.extend(fds.flatten().filter_map(|fd| ports::socket_inode(&fd.path()))),
            Err(_) => unreadable = true,
        }
    }
    !listening.is_empty() && listening.iter().all(|l| held.contains(&l.inode) || (unreadable && Some(l.uid) == uid))
}

/// Runs one instance until it is stopped or has crashed: waits for the process, restarts
/// it with backoff when it exits, gives up after too many exits in the window.
async fn supervise(
    first: Child,
    launch: Launch,
    shared: Arc<Mutex<Shared>>,
    mut stop: watch::Receiver<Option<Duration>>,
    policy: RestartPolicy,
) {
    let mut current = Some(first);
    let mut failures: VecDeque<Instant> = VecDeque::new();
    loop {
        if let Some(mut child) = current.take() {
            let pgid = group::pgid_of(&child);
            tokio::select! {
                status = child.wait() => {
                    // Whatever the app left running in its group would hold its port.
                    if let Some(pgid) = pgid {
                        group::signal(pgid, Signal::SIGKILL);
                    }
                    let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                    launch.output.line(&format!("paastech: {} exited ({status})", launch.name));
                }
                grace = requested_stop(&mut stop) => {
                    if let Some(pgid) = pgid {
                        group::terminate(&mut child, pgid, grace).await;
                    }
                    set_state(&shared, InstanceState::Stopped, None);
                    return;
                }
            }
        }

        let now = Instant::now();
        failures.push_back(now);
        while failures.front().is_some_and(|&t| now.duration_since(t) > policy.window) {
            failures.pop_front();
        }
        if failures.len() >= policy.max_failures as usize {
            launch.output.line(&format!(
                "paastech: {} crashed: it stopped {} times within {}s, not restarting",
                launch.name,
                failures.len(),
                policy.window.as_secs()
            ));
            set_state(&shared, InstanceState::Crashed, None);
            let id = lock(&shared).instance.id.clone();
            tracing::warn!(instance = %id, "instance crashed");
            return;
        }
        let backoff = policy.backoff(failures.len());
        set_state(&shared, InstanceState::Restarting, None);
        launch.output.line(&format!("paastech: restarting {} in {:.1}s", launch.name, backoff.as_secs_f64()));
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = requested_stop(&mut stop) => {
                set_state(&shared, InstanceState::Stopped, None);
                return;
            }
        }

        lock(&shared).instance.restarts += 1;
        match spawn(&launch) {
            Ok(child) => {
                set_state(&shared, InstanceState::Running, group::pgid_of(&child));
                current = Some(child);
            }
            Err(err) => launch.output.line(&format!("paastech: could not start {}: {err}", launch.name)),
        }
    }
}

/// Resolves when a stop is requested, with its grace period. If the runtime went away
/// without asking (it was dropped), that is a stop without grace.
async fn requested_stop(stop: &mut watch::Receiver<Option<Duration>>) -> Duration {
    match stop.wait_for(Option::is_some).await {
        Ok(grace) => grace.unwrap_or_default(),
        Err(_) => Duration::ZERO,
    }
}

fn set_state(shared: &Mutex<Shared>, state: InstanceState, pgid: Option<i32>) {
    let mut shared = lock(shared);
    shared.instance.state = state;
    shared.pgid = pgid;
}

/// Starts the process in its own session and streams its output to the instance's sink.
fn spawn(launch: &Launch) -> io::Result<Child> {
    spawn_forwarding(launch).map(|(child, _)| child)
}

/// [`spawn`], with the tasks forwarding its stdout and stderr, which end once both are
/// closed.
fn spawn_forwarding(launch: &Launch) -> io::Result<(Child, Vec<JoinHandle<()>>)> {
    let mut command = Command::new(&launch.program);
    command
        .args(&launch.args)
        .current_dir(&launch.dir)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    group::own_session(&mut command);
    if let Some(cgroup) = &launch.cgroup {
        // Opened here, before the fork, and held by the command (closed with it in the
        // server, at exec in the child, which writes to them first).
        let files = cgroup.procs_files()?;
        // SAFETY: the closure runs in the child between fork and exec; `join` only calls
        // write(2) on files opened before the fork, and allocates nothing.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || cgroup::join(&files));
        }
    }
    if let Some(user) = launch.user {
        // SAFETY: runs in the child between fork and exec, after the cgroup was joined
        // (which needs the server's rights); only raw system calls, nothing allocated.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || user.drop_privileges());
        }
    }
    let mut child = command.spawn()?;
    if let (Some(ledger), Some(pgid)) = (&launch.ledger, group::pgid_of(&child)) {
        ledger.record(pgid);
    }
    let mut forwarding = Vec::with_capacity(2);
    if let Some(stdout) = child.stdout.take() {
        forwarding.push(tokio::spawn(forward(stdout, Arc::clone(&launch.output))));
    }
    if let Some(stderr) = child.stderr.take() {
        forwarding.push(tokio::spawn(forward(stderr, Arc::clone(&launch.output))));
    }
    Ok((child, forwarding))
}

async fn forward(stream: impl AsyncRead + Unpin, output: Arc<dyn LogSink>) {
    let mut lines = Lines::new(stream);
    while let Some(line) = lines.next_line().await {
        output.line(&line);
    }
}

/// A sink for what has nowhere to go.
struct Discard;

impl LogSink for Discard {
    fn line(&self, _line: &str) {}
}

/// The release's own tools first, then the system's.
fn app_path(dir: &Path) -> OsString {
    let mut path = OsString::new();
    for sub in [".venv/bin", "node_modules/.bin", crate::builder::PINNED_BIN] {
        path.push(dir.join(sub));
        path.push(":");
    }
    path.push(SYSTEM_PATH);
    path
}

fn find_system_tool(name: &str) -> Option<PathBuf> {
    SYSTEM_PATH.split(':').map(|dir| Path::new(dir).join(name)).find(|path| path.is_file())
}

/// A poisoned lock only means a panic elsewhere; the data is still consistent enough to
/// report and to kill processes with.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RestartPolicy::default();
        let waits: Vec<u128> = (1..=9).map(|n| policy.backoff(n).as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        assert_eq!(policy.backoff(1000), Duration::from_secs(30));
    }

    /// Where the descriptors of the instance's processes cannot be read (gone here; under
    /// another uid for a server that is not root), the uid that made the socket decides.
    #[test]
    fn a_listener_whose_holders_cannot_be_read_is_the_instances_if_its_uid_made_it() {
        let held = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = held.local_addr().expect("addr");
        let own_uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").expect("own /proc entry"));
        let us = std::process::id() as i32;
        assert!(listens_itself(addr, &[us], None), "held by a member");
        assert!(!listens_itself(addr, &[], Some(own_uid)), "no member holds it");
        let vanished = i32::MAX;
        assert!(listens_itself(addr, &[vanished], Some(own_uid)), "made by the instance's uid");
        assert!(!listens_itself(addr, &[vanished], Some(own_uid + 1)), "made by another uid");
        assert!(!listens_itself(addr, &[vanished], None), "no uid of its own to go by");
        let other = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let nobody = other.local_addr().expect("addr");
        drop(other);
        assert!(!listens_itself(nobody, &[us], None), "nothing listens");
    }
}
