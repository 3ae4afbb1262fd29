//! ProcessRuntime against real processes: `sh`, `python3`, real sockets.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Collect, alive, copy_tree, example, http_get, wait_until};
use paastech_core::ProjectName;
use paastech_core::drivers::{Instance, InstanceSpec, InstanceState, Limits, Runtime};
use paastech_driver_process::{ProcessRuntime, ProcessRuntimeConfig, RestartPolicy};

const WAIT: Duration = Duration::from_secs(15);

fn runtime() -> ProcessRuntime {
    ProcessRuntime::new(ProcessRuntimeConfig {
        grace: Duration::from_secs(2),
        restart: RestartPolicy {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            max_failures: 3,
            window: Duration::from_secs(60),
        },
        default_memory_bytes: None,
        ledger: None,
        users: None,
    })
}

fn spec(dir: &std::path::Path, process_type: &str, command: &str) -> InstanceSpec {
    InstanceSpec {
        project: ProjectName::parse("demo").expect("name"),
        version: 7,
        process_type: process_type.to_owned(),
        index: 0,
        artifact: dir.to_str().expect("utf-8 path").to_owned(),
        command: command.to_owned(),
        env: Default::default(),
        limits: Limits::default(),
    }
}

async fn state_of(runtime: &ProcessRuntime, id: &str) -> Option<Instance> {
    runtime.list().await.expect("list").into_iter().find(|i| i.id == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_python_example_over_http() {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_tree(&example("python-hello"), dir.path());
    let runtime = runtime();
    let log = Collect::new();
    let mut spec = spec(dir.path(), "web", "python3 app.py");
    spec.env.insert("GREETING".into(), "bonjour".into());
    spec.env.insert("PAASTECH_VERSION".into(), "7".into());

    let instance = runtime.start(spec, log.clone()).await.expect("start");
    assert_eq!(instance.state, InstanceState::Running);
    assert_eq!(instance.restarts, 0);
    let addr = instance.addr.expect("a web instance has an address");
    assert!(addr.ip().is_loopback());

    let response = http_get(addr, "/").await;
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    assert!(response.contains("bonjour from python-hello (version 7)"), "{response}");
    wait_until("the request in the app's log", WAIT, || log.count("\"GET / HTTP/1.0\" 200") == 1).await;

    let listed = runtime.list().await.expect("list");
    assert_eq!(listed, std::slice::from_ref(&instance));
    runtime.stop(&instance.id, Duration::from_secs(2)).await.expect("stop");
    assert!(runtime.list().await.expect("list").is_empty());
    assert!(std::net::TcpStream::connect(addr).is_err(), "the app still listens after stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_listener_of_the_instances_own_processes_is_the_instance() {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_tree(&example("python-hello"), dir.path());
    let runtime = runtime();
    // The app binds its port two seconds in, from a child of the instance's shell.
    let instance =
        runtime.start(spec(dir.path(), "web", "sleep 2; python3 app.py"), Collect::new()).await.expect("start");
    let addr = instance.addr.expect("a web instance has an address");
    assert!(!runtime.answers_itself(&instance).await.expect("look"), "nothing listens yet");
    // Another process takes the port first: it would answer a health check.
    let thief = std::net::TcpListener::bind(addr).expect("take the instance's port");
    assert!(!runtime.answers_itself(&instance).await.expect("look"), "the listener is another process's");
    drop(thief);
    let response = http_get(addr, "/").await;
    assert!(response.contains("hello from python-hello"), "{response}");
    assert!(runtime.answers_itself(&instance).await.expect("look"), "the app's own listener");
    runtime.stop(&instance.id, Duration::from_secs(2)).await.expect("stop");
    assert!(!runtime.answers_itself(&instance).await.expect("look"), "a stopped instance answers nothing");
}

#[tokio::test]
async fn apps_get_their_env_and_nothing_of_the_servers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = runtime();
    let log = Collect::new();
    let mut spec = spec(dir.path(), "worker", "env; exec sleep 60");
    spec.env.insert("GREETING".into(), "hi there; $(not run)".into());
    let worker = runtime.start(spec, log.clone()).await.expect("start");
    assert_eq!(worker.addr, None);
    wait_until("the env listing", WAIT, || log.value("GREETING").is_some()).await;

    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some(), "the test's own env is the server's");
    let names: BTreeSet<String> =
        log.lines().iter().filter_map(|l| l.split_once('=').map(|(k, _)| k.to_owned())).collect();
    let allowed: BTreeSet<String> =
        ["PATH", "HOME", "LANG", "PWD", "SHLVL", "OLDPWD", "_", "GREETING"].map(String::from).into();
    assert!(names.is_subset(&allowed), "leaked: {:?}", names.difference(&allowed).collect::<Vec<_>>());
    assert_eq!(log.value("GREETING").as_deref(), Some("hi there; $(not run)"));
    assert_eq!(log.value("LANG").as_deref(), Some("C.UTF-8"));
    assert_eq!(log.value("HOME").as_deref(), dir.path().to_str());
    let path = log.value("PATH").expect("PATH");
    assert!(path.starts_with(&format!("{}/.venv/bin:", dir.path().display())), "{path}");
    assert!(path.ends_with(":/usr/local/bin:/usr/bin:/bin"), "{path}");
    assert!(!names.contains("PORT"), "a worker gets no PORT");

    let web_log = Collect::new();
    let web = runtime
        .start(spec_with(dir.path(), "web", "echo PORT=$PORT; exec sleep 60"), web_log.clone())
        .await
        .expect("start web");
    wait_until("the web port", WAIT, || web_log.value("PORT").is_some()).await;
    let port = web.addr.expect("address").port();
    assert_eq!(web_log.value("PORT"), Some(port.to_string()));
}

#[tokio::test]
async fn apps_lead_a_session_of_their_own() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = runtime();
    let log = Collect::new();
    // Fields 5 and 6 of /proc/PID/stat: process group and session.
    let command = "echo PID=$$; echo PGRP=$(cut -d' ' -f5 /proc/$$/stat); echo SID=$(cut -d' ' -f6 /proc/$$/stat); \
                   exec sleep 60";
    runtime.start(spec(dir.path(), "worker", command), log.clone()).await.expect("start");
    wait_until("the ids", WAIT, || log.value("SID").is_some()).await;
    let pid = log.value("PID").expect("pid");
    assert_eq!(log.value("PGRP"), Some(pid.clone()), "leads its process group");
    assert_eq!(log.value("SID"), Some(pid), "leads its session");
    let ours = std::fs::read_to_string("/proc/self/stat").expect("own stat");
    let our_session = ours.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(3)).expect("session");
    assert_ne!(log.value("SID").as_deref(), Some(our_session), "not in the server's session");
}

fn spec_with(dir: &std::path::Path, process_type: &str, command: &str) -> InstanceSpec {
    spec(dir, process_type, command)
}

#[tokio::test]
async fn restarts_an_exited_process_then_gives_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = runtime();

    // Exits once, then keeps running: restarted once and running again.
    let log = Collect::new();
    let once = runtime
        .start(
            spec(dir.path(), "worker", "if [ -e ran ]; then echo again; exec sleep 60; fi; touch ran; exit 1"),
            log.clone(),
        )
        .await
        .expect("start");
    wait_until("the second run", WAIT, || log.exactly("again") == 1).await;
    let now = state_of(&runtime, &once.id).await.expect("listed");
    assert_eq!((now.state, now.restarts), (InstanceState::Running, 1));

    // Always exits: started max_failures (3) times, then Crashed and left alone.
    let log = Collect::new();
    let failing = runtime.start(spec(dir.path(), "clock", "echo starting; exit 3"), log.clone()).await.expect("start");
    let mut crashed = None;
    let deadline = Instant::now() + WAIT;
    while crashed.is_none() {
        assert!(Instant::now() < deadline, "never crashed: {}", log.text());
        let now = state_of(&runtime, &failing.id).await.expect("still listed");
        if now.state == InstanceState::Crashed {
            crashed = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(crashed.map(|c| c.restarts), Some(2));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(log.exactly("starting"), 3, "{}", log.text());
    assert!(log.text().contains("crashed"), "{}", log.text());

    runtime.stop(&failing.id, Duration::from_secs(1)).await.expect("stop a crashed instance");
    runtime.stop(&failing.id, Duration::from_secs(1)).await.expect("unknown is not an error");
    assert_eq!(runtime.list().await.expect("list").len(), 1);
}

#[tokio::test]
async fn stop_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = runtime();

    // A polite app: SIGTERM ends the shell and its child quickly.
    let log = Collect::new();
    let polite = runtime
        .start(spec(dir.path(), "worker", "echo leader=$$; sleep 300 & echo child=$!; wait"), log.clone())
        .await
        .expect("start");
    wait_until("the pids", WAIT, || log.value("child").is_some()).await;
    let pids = [log.value("leader"), log.value("child")].map(|p| p.and_then(|p| p.parse::<u32>().ok()).expect("pid"));
    assert!(pids.iter().all(|&p| alive(p)));
    let started = Instant::now();
    runtime.stop(&polite.id, Duration::from_secs(5)).await.expect("stop");
    assert!(started.elapsed() < Duration::from_secs(4), "SIGTERM should have sufficed");
    wait_until("the group to die", WAIT, || pids.iter().all(|&p| !alive(p))).await;

    // A stubborn app ignores SIGTERM (its child inherits that): SIGKILL after the grace.
    let log = Collect::new();
    let stubborn = runtime
        .start(
            spec(
                dir.path(),
                "worker",
                "trap '' TERM; echo leader=$$; sleep 300 & echo child=$!; while :; do sleep 0.05; done",
            ),
            log.clone(),
        )
        .await
        .expect("start");
    wait_until("the pids", WAIT, || log.value("child").is_some()).await;
    let pids = [log.value("leader"), log.value("child")].map(|p| p.and_then(|p| p.parse::<u32>().ok()).expect("pid"));
    let started = Instant::now();
    runtime.stop(&stubborn.id, Duration::from_millis(500)).await.expect("stop");
    assert!(started.elapsed() >= Duration::from_millis(500), "it waited the grace period");
    wait_until("the group to die", WAIT, || pids.iter().all(|&p| !alive(p))).await;
    assert!(runtime.list().await.expect("list").is_empty());
}

#[tokio::test]
async fn dropping_the_runtime_kills_its_instances() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = runtime();
    let log = Collect::new();
    runtime
        .start(spec(dir.path(), "worker", "echo leader=$$; sleep 300 & echo child=$!; wait"), log.clone())
        .await
        .expect("start");
    wait_until("the pids", WAIT, || log.value("child").is_some()).await;
    let pids = [log.value("leader"), log.value("child")].map(|p| p.and_then(|p| p.parse::<u32>().ok()).expect("pid"));
    drop(runtime);
    wait_until("the group to die", WAIT, || pids.iter().all(|&p| !alive(p))).await;
}

#[tokio::test]
async fn shutdown_stops_everything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = runtime();
    let log = Collect::new();
    for index in 0..2 {
        let mut spec = spec(dir.path(), "web", "echo leader=$$; exec sleep 300");
        spec.index = index;
        runtime.start(spec, log.clone()).await.expect("start");
    }
    wait_until("both pids", WAIT, || log.count("leader=") == 2).await;
    let pids: Vec<u32> = log.lines().iter().filter_map(|l| l.strip_prefix("leader=")?.parse().ok()).collect();
    let listed = runtime.list().await.expect("list");
    assert_eq!(listed.iter().map(|i| i.index).collect::<Vec<_>>(), [0, 1]);
    assert_ne!(listed[0].addr, listed[1].addr);
    runtime.shutdown().await;
    assert!(runtime.list().await.expect("list").is_empty());
    wait_until("the processes to die", WAIT, || pids.iter().all(|&p| !alive(p))).await;
}

#[tokio::test]
async fn a_memory_hog_dies_under_its_limit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let hog = "python3 -c 'x = bytes(2 * 1024 ** 3); print(\"survived\")'";

    // The limit from the spec.
    let runtime = runtime();
    let log = Collect::new();
    let mut limited = spec(dir.path(), "worker", hog);
    limited.limits.memory_bytes = Some(256 * 1024 * 1024);
    runtime.start(limited, log.clone()).await.expect("start");
    wait_until("a MemoryError", WAIT, || log.count("MemoryError") >= 1).await;
    assert_eq!(log.count("survived"), 0);

    // The runtime's default limit.
    let runtime = ProcessRuntime::new(ProcessRuntimeConfig {
        default_memory_bytes: Some(256 * 1024 * 1024),
        ..ProcessRuntimeConfig::default()
    });
    let log = Collect::new();
    runtime.start(spec(dir.path(), "worker", hog), log.clone()).await.expect("start");
    wait_until("a MemoryError", WAIT, || log.count("MemoryError") >= 1).await;
    assert_eq!(log.count("survived"), 0);

    // Without a limit the same allocation succeeds (2 GiB, lazily zeroed by calloc), which
    // shows the limit is what killed it.
    let runtime = self::runtime();
    let log = Collect::new();
    runtime.start(spec(dir.path(), "worker", hog), log.clone()).await.expect("start");
    wait_until("the unlimited run", WAIT, || log.count("survived") >= 1).await;
}

#[tokio::test]
async fn a_missing_release_directory_is_not_found() {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let gone = dir.path().join("gone");
    let err = runtime.start(spec(&gone, "web", "true"), Arc::new(Collect::default())).await.expect_err("missing dir");
    assert_eq!(err.code(), "not_found", "{err}");
}
