//! The runtime conformance suite: one generic set of cases every `Runtime` passes (local
//! processes, Docker, Podman alike), as `docs/specs/runtime.md` specifies. A driver's test
//! file builds a [`Target`] (a runtime factory and the conformance app built for it) and
//! calls each case from its own `#[tokio::test]`.
//!
//! The app is `tests/apps/conformance`: busybox `httpd` + a CGI page, with the process
//! types `web`, `crash` and `hog` (see its README).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paastech_core::ProjectName;
use paastech_core::drivers::{
    Artifact, Instance, InstanceSpec, InstanceState, Limits, LogSink, OneOff, Runtime, TrafficRouter,
};
use paastech_ingress::{IngressConfig, IngressRouter, RouteTable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a runtime keeps of its instances when the server restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRestart {
    /// Instances outlive the runtime (containers) and a new runtime lists them: the
    /// orchestrator adopts them.
    Adopted,
    /// Instances end with the runtime (processes): a new runtime lists none and the
    /// orchestrator starts them again.
    Ended,
}

/// A runtime under test.
pub struct Target {
    /// A new runtime, as a server (re)starting makes one. Every call is a fresh instance
    /// talking to the same backend.
    pub new_runtime: Box<dyn Fn() -> Arc<dyn Runtime> + Send + Sync>,
    /// The conformance app, built for this runtime (a directory, an image).
    pub artifact: Artifact,
    pub after_restart: AfterRestart,
    /// The memory limit the `limits` case gives the hog.
    pub hog_memory_bytes: u64,
    /// Whether `usage` reads every running instance (else only some: a swarm manager
    /// reads the containers of its own node).
    pub usage_everywhere: bool,
    /// Whatever must live as long as the target (the app's directory).
    pub keep: Option<tempfile::TempDir>,
}

/// One `#[tokio::test]` per case of the suite, each with a fresh target from `$target`
/// (an expression giving a [`Target`]). A driver's test file is this one line.
#[macro_export]
macro_rules! conformance_tests {
    ($target:expr) => {
        $crate::conformance_tests!(@cases $target;
            start_stop_replace, env_and_port, logs_reach_the_sink, crashed_instances_are_restarted,
            scale_round_robin, health_gated_switch, reconcile_after_restart, limits_are_enforced,
            one_off_commands_run_once, stray_one_offs_are_removed_after_a_restart, status_and_list_project,
            usage_is_read, sleep_and_wake);
    };
    (@cases $target:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let target: $crate::conformance::Target = $target;
                $crate::conformance::$case(&target).await;
            }
        )*
    };
}

/// The conformance app's source directory.
pub fn app_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("apps").join("conformance")
}

/// A copy of the app in `dest` (created), as a release directory of the process builder.
pub fn copy_app(dest: &Path) -> Artifact {
    copy_dir(&app_dir(), dest);
    let detected = paastech_core::app::detect(dest).expect("the conformance app has a Procfile");
    Artifact { reference: dest.display().to_string(), processes: detected.processes }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("creating the app copy");
    for entry in std::fs::read_dir(from).expect("reading the conformance app") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copying a file");
        }
    }
}

/// A project name no other case (or concurrent run) uses.
pub(crate) fn project(case: &str) -> ProjectName {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let salt = std::process::id() % 100_000;
    ProjectName::parse(&format!("conf-{case}-{salt}-{n}")).expect("a valid project name")
}

/// A sink that keeps every line.
#[derive(Default)]
pub struct Lines(Mutex<Vec<String>>);

impl Lines {
    pub fn all(&self) -> Vec<String> {
        self.0.lock().expect("lines lock").clone()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.all().iter().filter(|l| l.contains(needle)).count()
    }
}

impl LogSink for Lines {
    fn line(&self, line: &str) {
        self.0.lock().expect("lines lock").push(line.to_owned());
    }
}

impl Target {
    pub(crate) fn spec(&self, project: &ProjectName, version: i64, process: &str, index: u32) -> InstanceSpec {
        let command = self
            .artifact
            .processes
            .get(process)
            .unwrap_or_else(|| panic!("the conformance app has no {process} process"))
            .clone();
        let env = BTreeMap::from([
            ("PAASTECH_VERSION".to_owned(), version.to_string()),
            ("MARKER".to_owned(), format!("{project}-v{version}")),
        ]);
        InstanceSpec {
            project: project.clone(),
            version,
            process_type: process.to_owned(),
            index,
            artifact: self.artifact.reference.clone(),
            command,
            env,
            limits: Limits::default(),
        }
    }
}

/// One HTTP/1.1 GET: (status, body), or what went wrong.
pub async fn http_get(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, String), String> {
    http_get_within(addr, host, path, Duration::from_secs(10)).await
}

/// [`http_get`], given `timeout` to answer.
async fn http_get_within(addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let work = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status =
            text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or(format!("no status: {text:?}"))?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, work).await.unwrap_or_else(|_| Err(format!("GET {addr}: timeout")))
}

/// Polls `check` until it holds or `timeout` passes; returns whether it held.
async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn serves(addr: SocketAddr, needle: &str) -> bool {
    matches!(http_get(addr, "localhost", "/").await, Ok((200, body)) if body.contains(needle))
}

async fn find(runtime: &dyn Runtime, id: &str) -> Option<Instance> {
    runtime.list().await.expect("list").into_iter().find(|i| i.id == id)
}

async fn start(runtime: &dyn Runtime, spec: InstanceSpec) -> (Instance, Arc<Lines>) {
    let lines = Arc::new(Lines::default());
    let what = format!("{} {}.{}", spec.project, spec.process_type, spec.index);
    let instance = runtime.start(spec, lines.clone()).await.unwrap_or_else(|e| panic!("starting {what}: {e}"));
    (instance, lines)
}

/// A web instance's address is one the ingress reaches: on loopback when the runtime is
/// one machine (its node has no address), else the address of the node `nodes` shows it on.
async fn reachable_address(runtime: &dyn Runtime, instance: &Instance) {
    let addr = instance.addr.expect("a web instance has an address");
    let nodes = runtime.nodes().await.expect("nodes");
    let node = nodes
        .iter()
        .find(|n| n.instances.iter().any(|i| i.id == instance.id))
        .unwrap_or_else(|| panic!("no node shows instance {}: {nodes:?}", instance.id));
    match node.address {
        Some(ip) => assert_eq!(addr.ip(), ip, "published at the address of its node {}", node.id),
        None => assert!(addr.ip().is_loopback(), "web instances of one machine are published on loopback only: {addr}"),
    }
}

const STARTUP: Duration = Duration::from_secs(30);
const GRACE: Duration = Duration::from_secs(5);

/// MUST: start runs an instance that serves; list shows it; a second version runs beside
/// it (a replacement); stop ends one without touching the other; stopping again, or an
/// unknown id, is not an error.
pub async fn start_stop_replace(target: &Target) {
    let runtime = (target.new_runtime)();
    let project = project("replace");
    let (v1, _) = start(runtime.as_ref(), target.spec(&project, 1, "web", 0)).await;
    let addr1 = v1.addr.expect("a web instance has an address");
    reachable_address(runtime.as_ref(), &v1).await;
    assert!(eventually(STARTUP, || serves(addr1, "version=1")).await, "v1 serves at {addr1}");
    let listed = find(runtime.as_ref(), &v1.id).await.expect("list shows the started instance");
    assert_eq!(
        (listed.project, listed.version, listed.process_type.as_str(), listed.index),
        (project.clone(), 1, "web", 0)
    );
    assert_eq!(listed.state, InstanceState::Running);
    assert_eq!(listed.addr, Some(addr1));

    let (v2, _) = start(runtime.as_ref(), target.spec(&project, 2, "web", 0)).await;
    let addr2 = v2.addr.expect("address");
    assert_ne!(addr1, addr2, "two instances never share an address");
    assert!(eventually(STARTUP, || serves(addr2, "version=2")).await, "v2 serves at {addr2}");
    assert!(serves(addr1, "version=1").await, "v1 still serves while v2 starts");

    runtime.stop(&v1.id, GRACE).await.expect("stop v1");
    assert!(find(runtime.as_ref(), &v1.id).await.is_none(), "a stopped instance is no longer listed");
    assert!(
        eventually(Duration::from_secs(10), || async { http_get(addr1, "localhost", "/").await.is_err() }).await,
        "nothing answers at v1's address after stop"
    );
    assert!(serves(addr2, "version=2").await, "stopping v1 leaves v2 serving");
    runtime.stop(&v1.id, GRACE).await.expect("stopping twice is not an error");
    runtime.stop("no-such-instance", GRACE).await.expect("an unknown id is not an error");
    runtime.stop(&v2.id, GRACE).await.expect("stop v2");
}

/// MUST: the spec's env vars reach the process unchanged; a web instance gets PORT and
/// listens on it; the instance's address reaches that port.
pub async fn env_and_port(target: &Target) {
    let runtime = (target.new_runtime)();
    let project = project("env");
    let mut spec = target.spec(&project, 1, "web", 0);
    spec.env.insert("GREETING".into(), "hello 'quoted' $NOT_EXPANDED \"x\"".into());
    let (web, _) = start(runtime.as_ref(), spec).await;
    let addr = web.addr.expect("address");
    assert!(eventually(STARTUP, || serves(addr, "marker=")).await, "serves at {addr}");
    let (_, body) = http_get(addr, "localhost", "/").await.expect("GET /");
    assert!(body.contains(&format!("marker={project}-v1")), "{body}");
    assert!(body.contains("greeting=hello 'quoted' $NOT_EXPANDED \"x\""), "values pass unchanged: {body}");
    let port: u16 = body
        .lines()
        .find_map(|l| l.strip_prefix("port="))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("PORT is set to a number: {body}"));
    assert!(port > 0, "{body}");
    runtime.stop(&web.id, GRACE).await.expect("stop");

    // A process that is not web gets no address.
    let (crash, _) = start(runtime.as_ref(), target.spec(&project, 1, "crash", 0)).await;
    assert_eq!(crash.addr, None, "only web instances are published");
    runtime.stop(&crash.id, GRACE).await.expect("stop");
}

/// MUST: what the process writes to stdout and stderr reaches the sink, line by line.
pub async fn logs_reach_the_sink(target: &Target) {
    let runtime = (target.new_runtime)();
    let project = project("logs");
    let (web, lines) = start(runtime.as_ref(), target.spec(&project, 1, "web", 0)).await;
    let addr = web.addr.expect("address");
    assert!(
        eventually(STARTUP, || async { lines.count("conformance web starting on port") > 0 }).await,
        "stdout reaches the sink: {:?}",
        lines.all()
    );
    assert!(eventually(STARTUP, || serves(addr, "marker=")).await);
    assert!(
        eventually(Duration::from_secs(10), || async { lines.count("cgi: served /") > 0 }).await,
        "stderr reaches the sink: {:?}",
        lines.all()
    );
    runtime.stop(&web.id, GRACE).await.expect("stop");
}

/// MUST: an instance that exits is started again (its `restarts` grows), and one that
/// keeps failing ends `Crashed` and stays listed until stopped.
pub async fn crashed_instances_are_restarted(target: &Target) {
    let runtime = (target.new_runtime)();
    let project = project("crash");
    let (crash, lines) = start(runtime.as_ref(), target.spec(&project, 1, "crash", 0)).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            find(runtime.as_ref(), &crash.id).await.is_some_and(|i| i.restarts >= 1)
        })
        .await,
        "restarts grows: {:?}",
        find(runtime.as_ref(), &crash.id).await
    );
    assert!(
        eventually(Duration::from_secs(60), || async {
            find(runtime.as_ref(), &crash.id).await.is_some_and(|i| i.state == InstanceState::Crashed)
        })
        .await,
        "one that keeps failing ends crashed: {:?}",
        find(runtime.as_ref(), &crash.id).await
    );
    let status = runtime.status(&crash.id).await.expect("status");
    assert_eq!(status.map(|i| i.state), Some(InstanceState::Crashed), "status says so too");
    assert!(
        eventually(Duration::from_secs(10), || async { lines.count("crash: exiting at once") >= 2 }).await,
        "every run's output is in the sink: {:?}",
        lines.all()
    );
    runtime.stop(&crash.id, GRACE).await.expect("stop");
    assert!(find(runtime.as_ref(), &crash.id).await.is_none());
}

/// A real ingress on a free port serving `table`; stops when the returned sender drops.
async fn ingress(table: RouteTable) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind ingress");
    let addr = listener.local_addr().expect("ingress addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(paastech_ingress::serve(listener, IngressConfig::new("localhost"), table, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

fn instance_of(body: &str) -> String {
    body.lines().find_map(|l| l.strip_prefix("instance=")).unwrap_or_default().to_owned()
}

/// MUST: N instances of one process type run side by side, each with its own address,
/// and the ingress serves them round-robin.
pub async fn scale_round_robin(target: &Target) {
    const N: u32 = 3;
    let runtime = (target.new_runtime)();
    let project = project("scale");
    let mut instances = Vec::new();
    for index in 0..N {
        instances.push(start(runtime.as_ref(), target.spec(&project, 1, "web", index)).await.0);
    }
    let addrs: Vec<SocketAddr> = instances.iter().map(|i| i.addr.expect("address")).collect();
    for addr in &addrs {
        assert!(eventually(STARTUP, || serves(*addr, "marker=")).await, "{addr} serves");
    }
    let listed: Vec<Instance> =
        runtime.list().await.expect("list").into_iter().filter(|i| i.project == project).collect();
    let mut indexes: Vec<u32> = listed.iter().map(|i| i.index).collect();
    indexes.sort_unstable();
    assert_eq!(indexes, (0..N).collect::<Vec<_>>(), "{listed:?}");

    let table = RouteTable::new();
    table.set_backends(project.as_str(), addrs.clone());
    let (ingress_addr, _stop) = ingress(table).await;
    let host = format!("{project}.localhost");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..(N * 4) {
        let (status, body) = http_get(ingress_addr, &host, "/").await.expect("GET through the ingress");
        assert_eq!(status, 200, "{body}");
        *seen.entry(instance_of(&body)).or_default() += 1;
    }
    assert_eq!(seen.len(), N as usize, "every instance answers: {seen:?}");
    assert!(seen.values().all(|&n| n == 4), "round-robin spreads requests evenly: {seen:?}");
    for instance in instances {
        runtime.stop(&instance.id, GRACE).await.expect("stop");
    }
}

/// Requests the ingress without pause until stopped: (requests, failures, last bodies).
struct ClientLoop {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
    last: Arc<Mutex<String>>,
    count: Arc<AtomicUsize>,
}

impl ClientLoop {
    fn start(ingress: SocketAddr, host: String) -> ClientLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let last = Arc::new(Mutex::new(String::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let (s, l, c) = (stop.clone(), last.clone(), count.clone());
        let task = tokio::spawn(async move {
            let mut failures = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match http_get(ingress, &host, "/").await {
                    Ok((200, body)) => *l.lock().expect("last lock") = body,
                    Ok((status, body)) => failures.push(format!("{status}: {body}")),
                    Err(err) => failures.push(err),
                }
                c.fetch_add(1, Ordering::Relaxed);
            }
            (c.load(Ordering::Relaxed), failures)
        });
        ClientLoop { stop, task, last, count }
    }

    fn last(&self) -> String {
        self.last.lock().expect("last lock").clone()
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("client loop")
    }
}

/// MUST: with the orchestrator's sequence (start, health check, switch, drain, stop) no
/// request fails while one version replaces another, and a new version that never
/// becomes healthy is never switched to.
pub async fn health_gated_switch(target: &Target) {
    let runtime = (target.new_runtime)();
    let project = project("switch");
    let table = RouteTable::new();
    let router = IngressRouter::new(table.clone(), "/");
    let (ingress_addr, _stop) = ingress(table).await;

    let (v1, _) = start(runtime.as_ref(), target.spec(&project, 1, "web", 0)).await;
    let addr1 = v1.addr.expect("address");
    router.wait_healthy(addr1, STARTUP).await.expect("v1 becomes healthy");
    assert!(runtime.answers_itself(&v1).await.expect("who answers"), "v1 answers on its address itself");
    router.switch(&project, vec![addr1], Duration::from_secs(10)).await;

    let client = ClientLoop::start(ingress_addr, format!("{project}.localhost"));
    assert!(
        eventually(Duration::from_secs(10), || async { client.last().contains("version=1") }).await,
        "v1 serves through the ingress"
    );

    let (v2, _) = start(runtime.as_ref(), target.spec(&project, 2, "web", 0)).await;
    let addr2 = v2.addr.expect("address");
    router.wait_healthy(addr2, STARTUP).await.expect("v2 becomes healthy");
    router.switch(&project, vec![addr2], Duration::from_secs(10)).await;
    runtime.stop(&v1.id, GRACE).await.expect("stop v1");
    assert!(
        eventually(Duration::from_secs(10), || async { client.last().contains("version=2") }).await,
        "v2 serves after the switch"
    );

    // A version whose web process dies at start never gets traffic.
    let mut broken = target.spec(&project, 3, "web", 0);
    broken.command = target.artifact.processes["crash"].clone();
    let (v3, _) = start(runtime.as_ref(), broken).await;
    let addr3 = v3.addr.expect("address");
    let health = router.wait_healthy(addr3, Duration::from_secs(5)).await;
    assert!(health.is_err(), "a web instance that exits is not healthy");
    runtime.stop(&v3.id, GRACE).await.expect("stop v3");
    let before = client.count.load(Ordering::Relaxed);
    assert!(eventually(Duration::from_secs(10), || async { client.count.load(Ordering::Relaxed) > before + 5 }).await);
    assert!(client.last().contains("version=2"), "v2 keeps serving: {}", client.last());

    let (requests, failures) = client.finish().await;
    assert!(requests > 10, "the client loop ran ({requests} requests)");
    assert!(failures.is_empty(), "{} of {requests} requests failed during the switches: {failures:?}", failures.len());
    runtime.stop(&v2.id, GRACE).await.expect("stop v2");
}

/// Wakes a project as the orchestrator does, with nothing but the runtime and the router:
/// its web instance started, health-checked, routed, the asleep mark cleared.
struct RuntimeWaker {
    runtime: Arc<dyn Runtime>,
    router: IngressRouter,
    spec: InstanceSpec,
    started: Mutex<Vec<Instance>>,
}

#[async_trait::async_trait]
impl paastech_ingress::Waker for RuntimeWaker {
    async fn wake(&self, _project: &str, timeout: Duration) -> Result<(), String> {
        let instance =
            self.runtime.start(self.spec.clone(), Arc::new(Lines::default())).await.map_err(|e| e.to_string())?;
        let addr = instance.addr.ok_or("no address")?;
        self.started.lock().expect("started").push(instance);
        self.router.wait_healthy(addr, timeout).await.map_err(|e| e.to_string())?;
        self.router.switch(&self.spec.project, vec![addr], Duration::from_secs(5)).await;
        self.router.set_asleep(&self.spec.project, false);
        Ok(())
    }
}

/// MUST: what sleep and wake do through the runtime works: a deployment's web instance
/// stopped (gone from `list`, nothing at its address) while the project's route is
/// asleep, then started again from the same spec, healthy and served; requests that
/// arrive at the ingress meanwhile are held and answered, with one start for all.
pub async fn sleep_and_wake(target: &Target) {
    let runtime = (target.new_runtime)();
    let project = project("sleep");
    let table = RouteTable::new();
    let router = IngressRouter::new(table.clone(), "/");
    let spec = target.spec(&project, 1, "web", 0);
    let (v1, _) = start(runtime.as_ref(), spec.clone()).await;
    let addr1 = v1.addr.expect("address");
    router.wait_healthy(addr1, STARTUP).await.expect("v1 becomes healthy");
    router.switch(&project, vec![addr1], Duration::from_secs(5)).await;

    // Asleep: out of the route, then stopped.
    router.set_asleep(&project, true);
    router.switch(&project, Vec::new(), Duration::from_secs(5)).await;
    runtime.stop(&v1.id, GRACE).await.expect("stop for sleep");
    assert!(find(runtime.as_ref(), &v1.id).await.is_none(), "a sleeping web instance is not listed");
    assert!(
        eventually(Duration::from_secs(10), || async { http_get(addr1, "localhost", "/").await.is_err() }).await,
        "nothing answers at its address while it sleeps"
    );

    let waker = Arc::new(RuntimeWaker {
        runtime: Arc::clone(&runtime),
        router: IngressRouter::new(table.clone(), "/"),
        spec,
        started: Mutex::new(Vec::new()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind ingress");
    let ingress_addr = listener.local_addr().expect("ingress addr");
    let mut config = IngressConfig::new("localhost");
    config.waker = Some(waker.clone() as Arc<dyn paastech_ingress::Waker>);
    config.wake_timeout = STARTUP;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(paastech_ingress::serve(listener, config, table, async {
        let _ = stopped.await;
    }));
    let host = format!("{project}.localhost");
    let held: Vec<_> = (0..10)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move { http_get_within(ingress_addr, &host, "/", STARTUP + GRACE).await })
        })
        .collect();
    for answer in held {
        let (status, body) = answer.await.expect("join").expect("an answer");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("version=1"), "the woken instance answers: {body}");
    }
    let started = waker.started.lock().expect("started").clone();
    assert_eq!(started.len(), 1, "one start for every held request");
    let woken = find(runtime.as_ref(), &started[0].id).await.expect("the woken instance is listed");
    assert_eq!(woken.state, InstanceState::Running);
    runtime.stop(&started[0].id, GRACE).await.expect("stop the woken instance");
    let _ = stop.send(());
}

/// MUST: a new runtime (a server restart) lists what the previous one started when the
/// runtime's instances outlive it, and can stop them; when they do not, it lists none of
/// them and they are gone.
pub async fn reconcile_after_restart(target: &Target) {
    let project = project("reconcile");
    let first = (target.new_runtime)();
    let (web, _) = start(first.as_ref(), target.spec(&project, 1, "web", 0)).await;
    let addr = web.addr.expect("address");
    assert!(eventually(STARTUP, || serves(addr, "version=1")).await);
    drop(first);

    let second = (target.new_runtime)();
    let seen = find(second.as_ref(), &web.id).await;
    match target.after_restart {
        AfterRestart::Adopted => {
            let seen = seen.expect("a new runtime lists the instance started before the restart");
            assert_eq!(
                (seen.project.clone(), seen.version, seen.process_type.as_str(), seen.index),
                (project.clone(), 1, "web", 0)
            );
            assert_eq!(seen.addr, Some(addr), "at the same address");
            assert_eq!(seen.state, InstanceState::Running);
            assert_eq!(second.status(&web.id).await.expect("status"), Some(seen.clone()), "status sees it too");
            assert_eq!(second.list_project(&project).await.expect("list_project"), vec![seen.clone()]);
            assert!(serves(addr, "version=1").await, "and it kept serving");
            second.stop(&web.id, GRACE).await.expect("the new runtime stops it");
            assert!(find(second.as_ref(), &web.id).await.is_none());
        }
        AfterRestart::Ended => {
            assert!(seen.is_none(), "a new runtime lists no instance of the old one: {seen:?}");
            assert_eq!(second.status(&web.id).await.expect("status"), None);
            assert_eq!(second.list_project(&project).await.expect("list_project"), vec![]);
            assert!(
                eventually(Duration::from_secs(10), || async { http_get(addr, "localhost", "/").await.is_err() }).await,
                "the old instance ended with its runtime"
            );
        }
    }
}

/// MUST: an instance that allocates without bound is stopped by its memory limit (and
/// restarted or crashed as any failing instance), while the host and other instances
/// are unaffected.
pub async fn limits_are_enforced(target: &Target) {
    let runtime = (target.new_runtime)();
    let project = project("limits");
    let (web, _) = start(runtime.as_ref(), target.spec(&project, 1, "web", 0)).await;
    let addr = web.addr.expect("address");
    assert!(eventually(STARTUP, || serves(addr, "marker=")).await);

    let mut hog = target.spec(&project, 1, "hog", 0);
    hog.limits = Limits { memory_bytes: Some(target.hog_memory_bytes), cpus: Some(0.5) };
    let started = Instant::now();
    let (hog, lines) = start(runtime.as_ref(), hog).await;
    assert!(
        eventually(Duration::from_secs(60), || async {
            find(runtime.as_ref(), &hog.id).await.is_some_and(|i| {
                i.restarts >= 1 || matches!(i.state, InstanceState::Crashed | InstanceState::Restarting)
            })
        })
        .await,
        "the hog is stopped by its limit: {:?}; output {:?}",
        find(runtime.as_ref(), &hog.id).await,
        lines.all()
    );
    // The engine may report the kill before its log has reached the sink.
    assert!(
        eventually(Duration::from_secs(10), || async { lines.count("hog: allocating without bound") >= 1 }).await,
        "the hog's output is in the sink: {:?}",
        lines.all()
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(serves(addr, "marker=").await, "another instance keeps serving");
    runtime.stop(&hog.id, GRACE).await.expect("stop hog");
    runtime.stop(&web.id, GRACE).await.expect("stop web");
}

/// MUST: `usage` reads what each running instance uses: an instance holding 128 MiB shows
/// at least 100 MB of memory, its limit, and a CPU counter that grows with its work; an id
/// the runtime does not know is left out. (A runtime that reads only some of its instances
/// may leave this one out, never give it wrong figures.)
pub async fn usage_is_read(target: &Target) {
    const LIMIT: u64 = 400 * 1024 * 1024;
    let runtime = (target.new_runtime)();
    let project = project("usage");
    let mut spec = target.spec(&project, 1, "ballast", 0);
    spec.limits = Limits { memory_bytes: Some(LIMIT), cpus: None };
    let (ballast, lines) = start(runtime.as_ref(), spec).await;
    assert!(
        eventually(Duration::from_secs(60), || async { lines.count("ballast: holding 134217728 bytes") >= 1 }).await,
        "the ballast is made: {:?}",
        lines.all()
    );
    let ids = vec![ballast.id.clone(), "no-such-instance".to_owned()];
    let last = Arc::new(Mutex::new(None));
    let everywhere = target.usage_everywhere;
    let read = eventually(Duration::from_secs(30), || {
        let (runtime, ids, last) = (Arc::clone(&runtime), ids.clone(), Arc::clone(&last));
        async move {
            let usage = runtime.usage(&ids).await.expect("usage");
            let absent_here = !everywhere && usage.is_empty();
            let ok = absent_here
                || usage.len() == 1
                    && usage.get(&ids[0]).is_some_and(|u| {
                        u.memory_bytes.is_some_and(|m| m >= 100_000_000)
                            && u.memory_limit_bytes == Some(LIMIT)
                            && u.cpu_ns.is_some_and(|ns| ns > 0)
                    });
            *last.lock().expect("last reading") = Some(usage);
            ok
        }
    })
    .await;
    assert!(read, "the ballast's figures: {:?}", last.lock().expect("last reading"));
    runtime.stop(&ballast.id, GRACE).await.expect("stop ballast");
}

/// MUST: a one-off command runs once in the deployment's artifact and env, as an argument
/// vector; its output (stdout and stderr) is all in the sink when `run_once` returns its exit
/// code; it gets no restart and is not listed. A program the artifact lacks is an error (or
/// a failed run) naming it; one that outlives its timeout is stopped, and that is an error.
pub async fn one_off_commands_run_once(target: &Target) {
    let runtime = (target.new_runtime)();
    let project = project("oneoff");
    let mut spec = target.spec(&project, 1, "web", 0);
    spec.process_type = "run".to_owned();
    let run =
        |argv: &[&str], timeout: Duration| OneOff { argv: argv.iter().map(|a| (*a).to_owned()).collect(), timeout };

    let lines = Arc::new(Lines::default());
    let script = "echo \"one-off $MARKER in $(pwd)\"; ls www >/dev/null; echo to-stderr >&2; exit 7";
    let code = runtime
        .run_once(spec.clone(), run(&["sh", "-c", script], STARTUP), lines.clone())
        .await
        .unwrap_or_else(|e| panic!("running a one-off command: {e}"));
    assert_eq!(code, 7, "its exit code comes back: {:?}", lines.all());
    assert_eq!(lines.count(&format!("one-off {project}-v1 in ")), 1, "stdout, with the env: {:?}", lines.all());
    assert_eq!(lines.count("to-stderr"), 1, "stderr too: {:?}", lines.all());
    assert!(
        !runtime.list().await.expect("list").iter().any(|i| i.project == project),
        "a one-off command is no instance"
    );
    assert_eq!(runtime.list_project(&project).await.expect("list_project"), vec![], "not even of its project");

    // Containers run with no-new-privileges (a one-off is locked down as an instance is):
    // the kernel says so for the process itself, whichever way the engine was told.
    if target.after_restart == AfterRestart::Adopted {
        let lines = Arc::new(Lines::default());
        let argv = ["grep", "NoNewPrivs", "/proc/self/status"];
        let code = runtime.run_once(spec.clone(), run(&argv, STARTUP), lines.clone()).await.expect("grep NoNewPrivs");
        assert_eq!(code, 0, "{:?}", lines.all());
        assert!(
            lines.all().iter().any(|l| l.split_whitespace().eq(["NoNewPrivs:", "1"])),
            "no-new-privileges is set: {:?}",
            lines.all()
        );
    }

    let lines = Arc::new(Lines::default());
    match runtime.run_once(spec.clone(), run(&["no-such-program", "x"], STARTUP), lines.clone()).await {
        Err(err) => assert!(err.to_string().contains("no-such-program"), "the error names the program: {err}"),
        Ok(code) => {
            assert_ne!(code, 0, "a missing program fails");
            assert!(lines.count("no-such-program") >= 1, "the output names the program: {:?}", lines.all());
        }
    }

    let started = Instant::now();
    let lines = Arc::new(Lines::default());
    let late = runtime.run_once(spec, run(&["sleep", "60"], Duration::from_secs(1)), lines.clone()).await;
    let err = late.expect_err("a command past its timeout is an error");
    assert!(err.to_string().contains("1 s"), "the error says the limit: {err}");
    assert!(started.elapsed() < Duration::from_secs(20), "it was stopped: {:?}", started.elapsed());
    assert!(!runtime.list().await.expect("list").iter().any(|i| i.project == project));
}

/// A one-off command still running when its server went away is removed by the next
/// server, and that server's own one-offs are left alone. (Containers outlive a server.
/// The process runtime kills a previous server's groups from its ledger when it is made:
/// nothing is left for this call, and its own test covers the ledger.)
pub async fn stray_one_offs_are_removed_after_a_restart(target: &Target) {
    let old = (target.new_runtime)();
    if target.after_restart == AfterRestart::Ended {
        assert_eq!(old.remove_stray_one_offs().await.expect("sweep"), 0);
        return;
    }
    let project = project("stray");
    let mut spec = target.spec(&project, 1, "web", 0);
    spec.process_type = "run".to_owned();
    let start = |runtime: Arc<dyn Runtime>, marker: &'static str, secs: u32| {
        let (spec, lines) = (spec.clone(), Arc::new(Lines::default()));
        let argv = ["sh", "-c", &format!("echo {marker}; exec sleep {secs}")].map(str::to_owned).to_vec();
        let run = OneOff { argv, timeout: Duration::from_secs(120) };
        let output = lines.clone();
        (tokio::spawn(async move { runtime.run_once(spec, run, output).await }), lines)
    };
    // The old server's command; the server "crashes" (nothing will wait for it).
    let (stray, stray_lines) = start(old.clone(), "stray-started", 60);
    assert!(
        eventually(STARTUP, || async { stray_lines.count("stray-started") == 1 }).await,
        "the one-off started: {:?}",
        stray_lines.all()
    );
    // Creation times are in whole seconds.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let new = (target.new_runtime)();
    let (own, own_lines) = start(new.clone(), "own-started", 6);
    assert!(
        eventually(STARTUP, || async { own_lines.count("own-started") == 1 }).await,
        "the new server's one-off started: {:?}",
        own_lines.all()
    );

    assert_eq!(new.remove_stray_one_offs().await.expect("removing strays"), 1, "the old server's one-off");
    let ended = tokio::time::timeout(Duration::from_secs(20), stray).await.expect("the stray one-off ended");
    assert!(!matches!(ended.expect("join"), Ok(0)), "it was stopped, not left to finish");
    assert_eq!(new.remove_stray_one_offs().await.expect("removing strays"), 0, "nothing else is a stray");
    let own = tokio::time::timeout(Duration::from_secs(60), own).await.expect("the new server's one-off ended");
    assert_eq!(own.expect("join").expect("ran"), 0, "the new server's one-off ran to its end");
}

/// MUST: `status(id)` answers one instance as `list` shows it, and `None` once it is
/// stopped or for an id the runtime never had; `list_project` answers exactly one
/// project's instances (not those of a project whose name starts the same).
pub async fn status_and_list_project(target: &Target) {
    let runtime = (target.new_runtime)();
    let project = project("status");
    let other = ProjectName::parse(&format!("{project}-b")).expect("a valid project name");
    let (web, _) = start(runtime.as_ref(), target.spec(&project, 1, "web", 0)).await;
    let (worker, _) = start(runtime.as_ref(), target.spec(&project, 2, "crash", 0)).await;
    let (elsewhere, _) = start(runtime.as_ref(), target.spec(&other, 1, "web", 0)).await;
    let addr = web.addr.expect("address");
    assert!(eventually(STARTUP, || serves(addr, "version=1")).await, "serves at {addr}");

    let status = runtime.status(&web.id).await.expect("status").expect("status of a started instance");
    assert_eq!(
        (&status.id, &status.project, status.version, status.process_type.as_str(), status.index, status.addr),
        (&web.id, &project, 1, "web", 0, Some(addr))
    );
    assert_eq!(status.state, InstanceState::Running);
    assert_eq!(Some(&status), find(runtime.as_ref(), &web.id).await.as_ref(), "as list shows it");

    let ids = |instances: Vec<Instance>| {
        let mut ids: Vec<String> = instances.into_iter().map(|i| i.id).collect();
        ids.sort();
        ids
    };
    let mut want = vec![web.id.clone(), worker.id.clone()];
    want.sort();
    assert_eq!(ids(runtime.list_project(&project).await.expect("list_project")), want, "both, and only, of its own");
    assert_eq!(ids(runtime.list_project(&other).await.expect("list_project")), vec![elsewhere.id.clone()]);
    let unknown = ProjectName::parse(&format!("{project}-none")).expect("a valid project name");
    assert_eq!(runtime.list_project(&unknown).await.expect("list_project"), vec![], "a project with none");

    runtime.stop(&web.id, GRACE).await.expect("stop");
    assert_eq!(runtime.status(&web.id).await.expect("status"), None, "a stopped instance is unknown");
    assert_eq!(ids(runtime.list_project(&project).await.expect("list_project")), vec![worker.id.clone()]);
    assert_eq!(runtime.status("no-such-instance").await.expect("status"), None, "an unknown id");
    runtime.stop(&worker.id, GRACE).await.expect("stop");
    runtime.stop(&elsewhere.id, GRACE).await.expect("stop");
}
