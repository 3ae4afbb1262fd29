//! PodmanRuntime against the real engine: real containers of the local busybox image,
//! real published ports.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{BASE_IMAGE, Collect, http_get, owner, socket, wait_until};
use paastech_core::drivers::{Instance, InstanceSpec, InstanceState, Limits, Runtime};
use paastech_core::{Error, ProjectName};
use paastech_driver_podman::{PodmanRuntime, PodmanRuntimeConfig};

const WAIT: Duration = Duration::from_secs(30);

fn runtime(owner: &str) -> PodmanRuntime {
    PodmanRuntime::new(PodmanRuntimeConfig {
        socket: socket(),
        namespace: owner.to_owned(),
        max_restarts: 2,
        ..PodmanRuntimeConfig::default()
    })
}

fn spec(process_type: &str, command: &str) -> InstanceSpec {
    InstanceSpec {
        project: ProjectName::parse("demo").expect("name"),
        version: 3,
        process_type: process_type.to_owned(),
        index: 0,
        artifact: BASE_IMAGE.to_owned(),
        command: command.to_owned(),
        env: Default::default(),
        limits: Limits::default(),
    }
}

async fn find(runtime: &PodmanRuntime, id: &str) -> Option<Instance> {
    runtime.list().await.expect("list").into_iter().find(|i| i.id == id)
}

/// Stops whatever a test left behind, even when it failed half-way.
struct Cleanup(Arc<PodmanRuntime>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let runtime = Arc::clone(&self.0);
        let handle = tokio::runtime::Handle::current();
        let _ = std::thread::spawn(move || {
            handle.block_on(async {
                for instance in runtime.list().await.unwrap_or_default() {
                    let _ = runtime.stop(&instance.id, Duration::ZERO).await;
                }
            })
        })
        .join();
    }
}

const HTTPD: &str = "echo starting on $PORT; mkdir -p /tmp/www && echo \"$GREETING from podman\" > /tmp/www/index.html \
                     && exec httpd -f -v -p $PORT -h /tmp/www";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_http_on_a_loopback_port_and_stops() {
    let runtime = Arc::new(runtime(&owner("serve")));
    let _cleanup = Cleanup(Arc::clone(&runtime));
    let log = Collect::new();
    let mut web = spec("web", HTTPD);
    web.env.insert("GREETING".into(), "bonjour; $(not run)".into());

    let started = Instant::now();
    let instance = runtime.start(web, log.clone()).await.expect("start");
    let addr = instance.addr.expect("a web instance has an address");
    assert!(addr.ip().is_loopback(), "{addr}");
    // Outside the range client connections take their own ports from.
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").expect("the ephemeral range");
    let ephemeral_low: u16 = ephemeral.split_whitespace().next().and_then(|low| low.parse().ok()).expect("its low end");
    assert!(addr.port() < ephemeral_low, "{addr} is in the ephemeral range ({ephemeral})");
    assert_eq!((instance.state, instance.restarts), (InstanceState::Running, 0));

    let response = http_get(addr, "/").await;
    println!("first answer after {:?}", started.elapsed());
    assert!(response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"), "{response}");
    assert!(response.contains("bonjour; $(not run) from podman"), "{response}");
    wait_until("the app's output", WAIT, async || log.count("starting on 5000") == 1).await;

    let listed = runtime.list().await.expect("list");
    assert_eq!(listed, std::slice::from_ref(&instance), "list reads the labels back");

    let stopping = Instant::now();
    runtime.stop(&instance.id, Duration::from_secs(1)).await.expect("stop");
    println!("stop took {:?}", stopping.elapsed());
    assert!(runtime.list().await.expect("list").is_empty());
    assert!(std::net::TcpStream::connect(addr).is_err(), "the port is still published after stop");
    runtime.stop(&instance.id, Duration::from_secs(1)).await.expect("stopping an unknown instance is fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_are_locked_down_and_limited() {
    let runtime = Arc::new(runtime(&owner("locked")));
    let _cleanup = Cleanup(Arc::clone(&runtime));
    let log = Collect::new();
    let mut worker = spec(
        "worker",
        "grep -E '^(NoNewPrivs|CapEff|CapBnd):' /proc/self/status | tr -d '\\t' | tr ':' '='; \
         echo nofile=$(ulimit -n); echo nproc=$(ulimit -u); \
         echo memory=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null); \
         echo quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu.max 2>/dev/null); \
         echo pids=$(cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max 2>/dev/null); \
         echo port=${PORT:-none}; exec sleep 600",
    );
    worker.limits = Limits { memory_bytes: Some(64 * 1024 * 1024), cpus: Some(0.5) };
    let instance = runtime.start(worker, log.clone()).await.expect("start");
    assert_eq!(instance.addr, None, "a worker publishes nothing");
    wait_until("the report", WAIT, async || log.value("port").is_some()).await;

    let text = log.text();
    assert_eq!(log.value("NoNewPrivs").as_deref(), Some("1"), "{text}");
    // CHOWN, SETGID, SETUID only.
    assert_eq!(log.value("CapEff").as_deref(), Some("00000000000000c1"), "{text}");
    assert_eq!(log.value("CapBnd").as_deref(), Some("00000000000000c1"), "{text}");
    assert_eq!(log.value("nofile").as_deref(), Some("1024"), "{text}");
    assert_eq!(log.value("nproc").as_deref(), Some("1024"), "{text}");
    assert_eq!(log.value("memory").as_deref(), Some("67108864"), "{text}");
    let quota = log.value("quota").unwrap_or_default();
    assert!(quota.starts_with("50000"), "{text}");
    assert_eq!(log.value("pids").as_deref(), Some("512"), "{text}");
    assert_eq!(log.value("port").as_deref(), Some("none"), "{text}");
    runtime.stop(&instance.id, Duration::ZERO).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_container_is_restarted_then_crashed_with_its_output() {
    let runtime = Arc::new(runtime(&owner("crash")));
    let _cleanup = Cleanup(Arc::clone(&runtime));
    let log = Collect::new();
    let instance = runtime.start(spec("web", "echo run $HOSTNAME; exit 3"), log.clone()).await.expect("start");

    wait_until("a restart", WAIT, async || find(&runtime, &instance.id).await.is_some_and(|i| i.restarts > 0)).await;
    wait_until("the crash", WAIT, async || {
        find(&runtime, &instance.id).await.is_some_and(|i| i.state == InstanceState::Crashed)
    })
    .await;
    let crashed = find(&runtime, &instance.id).await.expect("listed");
    assert_eq!(crashed.restarts, 2, "max_restarts");
    // Each run's output is followed, and each exit is told.
    wait_until("the crash note", WAIT, async || log.count("crashed") == 1).await;
    assert_eq!(log.count("run "), 3, "each run's output once:\n{}", log.text());
    assert!(log.count("web.1 exited (code 3)") >= 1, "{}", log.text());
    runtime.stop(&instance.id, Duration::ZERO).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_outlive_the_runtime_and_are_found_by_their_owner() {
    let me = owner("reconcile");
    let first = runtime(&me);
    let first_log = Collect::new();
    let worker =
        first.start(spec("worker", "echo before restart; exec sleep 600"), first_log.clone()).await.expect("start");
    // The line is written before the restart (on a loaded machine the container may take a
    // while to run its first command): it is old output for the next runtime.
    wait_until("the first line", WAIT, async || first_log.count("before restart") == 1).await;
    drop(first);

    // A new runtime with the same owner (a restarted server) finds the container...
    let again = Arc::new(runtime(&me));
    let _cleanup = Cleanup(Arc::clone(&again));
    let found = again.list().await.expect("list");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (found[0].id.as_str(), found[0].project.as_str(), found[0].version, found[0].process_type.as_str()),
        (worker.id.as_str(), "demo", 3, "worker")
    );
    assert_eq!(found[0].state, InstanceState::Running);
    // ...another owner sees nothing of it, and cannot stop it.
    let other = runtime(&owner("someone-else"));
    assert!(other.list().await.expect("list").is_empty());
    other.stop(&worker.id, Duration::ZERO).await.expect("not an error: unknown to it");
    assert_eq!(again.list().await.expect("list").len(), 1, "another namespace's stop left it running");
    assert!(again.instances_outlive_server());

    // A restarted server follows the output from now on, without what was logged before.
    let log = Collect::new();
    again.attach(&worker.id, log.clone()).await.expect("attach");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(log.count("before restart") == 0, "old output is not sent again: {}", log.text());
    again.stop(&worker.id, Duration::ZERO).await.expect("stop");
    assert!(again.list().await.expect("list").is_empty());
}

#[tokio::test]
async fn start_failures_are_deploy_failures() {
    let runtime = runtime(&owner("missing"));
    let mut missing = spec("web", "true");
    missing.artifact = "localhost/paastech/no-such-image:v1".into();
    match runtime.start(missing, Collect::new()).await {
        Err(Error::DeployFailed(message)) => assert!(message.contains("no-such-image"), "{message}"),
        other => panic!("expected a deploy failure, got {other:?}"),
    }
    assert!(runtime.list().await.expect("list").is_empty(), "nothing is left behind");
}

#[tokio::test]
async fn an_engine_that_does_not_answer_is_unavailable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = PodmanRuntime::new(PodmanRuntimeConfig {
        socket: dir.path().join("podman.sock"),
        ..PodmanRuntimeConfig::default()
    });
    for result in
        [runtime.list().await.map(|_| ()), runtime.start(spec("web", "true"), Collect::new()).await.map(|_| ())]
    {
        match result {
            Err(Error::Unavailable(message)) => {
                assert!(message.contains("podman.sock") && message.contains("podman system service"), "{message}")
            }
            other => panic!("expected unavailable, got {other:?}"),
        }
    }
}
