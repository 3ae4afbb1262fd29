//! Issue #18 journeys: an app with sleep on (its idle time in seconds through the
//! test-only `[ingress] sleep_minute_secs`) falls asleep, its web processes or containers
//! are gone (asked of the OS or the engine, not only of the API), the next request is
//! answered as if it had never slept, 50 requests at once at a wake all succeed with one
//! start of the app, a server restart keeps it asleep, and a wake that cannot finish
//! answers 503 within `[ingress] wake_timeout_secs`. On local processes and on Docker.

use std::process::Command;
use std::time::{Duration, Instant};

use paastech_tests::{Developer, GitRepo, Server, eventually, example, http_get, ok};
use serde_json::{Value, json};

/// A second of the tests' server is a "minute" of idle time; wakes have 8 s.
const CONFIG: &str = "sleep_minute_secs = 1\nwake_timeout_secs = 8\n";

/// What differs between runtimes here.
struct Runtime {
    /// Appended to the server's configuration (after the `[ingress]` keys above).
    config: &'static str,
    example: &'static str,
    /// What the app answers at `/` in version `v`.
    answer: fn(i64) -> String,
    /// What the app prints once each time it starts.
    start_line: &'static str,
    /// Whether `project`'s web runs, asked of the OS or the engine.
    web_runs: fn(&str) -> bool,
}

/// The app's answer at `/`, its body trimmed.
fn page(server: &Server, project: &str) -> (u16, String) {
    let (status, body) = server.app_get(project, "/");
    (status, body.trim().to_owned())
}

fn sleep_view(server: &Server, dev: &Developer, project: &str) -> Value {
    let (status, body) = server.api().req("GET", &format!("/projects/{project}/sleep"), Some(&dev.token), None);
    assert_eq!(status, 200, "{body}");
    body
}

fn asleep(server: &Server, dev: &Developer, project: &str) -> bool {
    sleep_view(server, dev, project)["asleep"] == json!(true)
}

/// How many times the app started: its own start line in the project's log.
fn starts(server: &Server, dev: &Developer, project: &str, line: &str) -> usize {
    let (status, logs) =
        server.api().req("GET", &format!("/projects/{project}/logs?lines=2000"), Some(&dev.token), None);
    assert_eq!(status, 200, "{logs}");
    // Not the build's output, which shows the command (with `$PORT`, not a number).
    logs.as_str().unwrap_or_default().lines().filter(|l| l.contains(line) && !l.contains("$PORT")).count()
}

/// The API's `/metrics`, as `token` reads it.
fn metrics_text(server: &Server, token: &str) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut response = agent
        .get(&format!("http://127.0.0.1:{}/metrics", server.api_port))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .expect("GET /metrics");
    assert_eq!(response.status().as_u16(), 200);
    response.body_mut().read_to_string().expect("body")
}

/// Waits for the sleeper to put `project` to sleep, then checks its web is gone.
fn falls_asleep(server: &Server, dev: &Developer, project: &str, runtime: &Runtime) {
    assert!(
        eventually(Duration::from_secs(30), || asleep(server, dev, project)),
        "asleep after its idle time\n{}",
        server.log()
    );
    assert!(
        eventually(Duration::from_secs(15), || !(runtime.web_runs)(project)),
        "its web processes or containers are gone once asleep"
    );
}

fn journey(runtime: &Runtime, project: &str) {
    let mut server = Server::start(&format!("{CONFIG}\n{}", runtime.config));
    let ada = server.developer("ada@example.com");
    let (status, body) = server.api().req("POST", "/projects", Some(&ada.token), Some(json!({ "name": project })));
    assert_eq!(status, 201, "{body}");
    let repo = GitRepo::from_dir(
        &server.dir.path().join("app"),
        &example(runtime.example),
        &ada.key,
        server.ssh_port,
        project,
    );
    let (pushed, output) = repo.push("main");
    assert!(pushed, "push: {output}\n{}", server.log());
    assert_eq!(page(&server, project), (200, (runtime.answer)(1)));
    assert!((runtime.web_runs)(project), "the web runs before it sleeps");
    assert_eq!(sleep_view(&server, &ada, project)["enabled"], json!(false), "off by default");

    // Sleep on, idle for 3 "minutes" (3 s here); nobody else sees it, a viewer may read
    // but not change it, and 0 minutes is refused.
    let bob = server.developer("bob@example.com");
    let put = |server: &Server, token: &str, body: Value| {
        server.api().req("PUT", &format!("/projects/{project}/sleep"), Some(token), Some(body))
    };
    assert_eq!(put(&server, &bob.token, json!({"enabled": true})).0, 404, "someone else's project");
    let (status, body) = server.api().req(
        "POST",
        &format!("/projects/{project}/collaborators"),
        Some(&ada.token),
        Some(json!({"email": "bob@example.com", "role": "viewer"})),
    );
    assert!(status < 300, "{status} {body}");
    assert_eq!(sleep_view(&server, &bob, project)["enabled"], json!(false), "a viewer reads it");
    let (status, body) = put(&server, &bob.token, json!({"enabled": true}));
    assert_eq!(status, 403, "a viewer may not change it: {body}");
    let (status, body) = put(&server, &ada.token, json!({"enabled": true, "after_minutes": 0}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(page(&server, project).0, 200);
    let (status, body) = put(&server, &ada.token, json!({"enabled": true, "after_minutes": 3}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"enabled": true, "after_minutes": 3, "workers_keep_awake": true, "asleep": false, "wake_error": null})
    );

    // Requests keep it awake (one every 0.8 s, the idle time is 3 s); then it falls
    // asleep, and says so.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(800));
        assert_eq!(server.app_get(project, "/").0, 200);
        assert!(!asleep(&server, &ada, project), "requests keep it awake");
    }
    falls_asleep(&server, &ada, project, runtime);
    let (_, view) = server.api().req("GET", &format!("/projects/{project}"), Some(&ada.token), None);
    assert_eq!(view["asleep"], json!(true), "{view}");
    let home = tempfile::tempdir().expect("home");
    ok(&server.cli(
        home.path(),
        &["login", "--email", "ada@example.com", "--password-stdin"],
        Some(paastech_tests::web::PASSWORD),
    ));
    let ps = ok(&server.cli(home.path(), &["ps", "-p", project], None));
    assert!(ps.contains("web: asleep"), "{ps}");

    // 50 requests at once at the wake: every one answered by the app, one start.
    let started_before = starts(&server, &ada, project, runtime.start_line);
    let began = Instant::now();
    let port = server.ingress_port;
    let host = format!("{project}.localhost");
    let answers: Vec<(u16, String)> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..50).map(|_| scope.spawn(|| http_get(port, &host, "/"))).collect();
        clients.into_iter().map(|c| c.join().expect("client thread")).collect()
    });
    let took = began.elapsed();
    for (status, body) in &answers {
        assert_eq!(
            (*status, body.trim()),
            (200, (runtime.answer)(1).as_str()),
            "every held request is answered by the app"
        );
    }
    eprintln!("50 requests at a wake answered in {:.0} ms", took.as_secs_f64() * 1000.0);
    assert!(!asleep(&server, &ada, project));
    assert!((runtime.web_runs)(project));
    assert_eq!(
        starts(&server, &ada, project, runtime.start_line),
        started_before + 1,
        "exactly one start\n{}",
        server.log()
    );

    // Counted: the first user is an admin, who reads `/metrics`.
    let metrics = metrics_text(&server, &ada.token);
    let sample =
        |name: &str| metrics.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok()).unwrap_or(0);
    let wakes = sample("paastech_wakes_total{outcome=\"succeeded\"} ");
    // As many wakes as sleeps so far (one each, or two on a machine slow enough that the
    // app slept as soon as sleep was turned on), each timed.
    assert!(wakes >= 1 && wakes == sample("paastech_sleeps_total "), "{metrics}");
    assert_eq!(sample("paastech_wake_duration_seconds_count{outcome=\"succeeded\"} "), wakes, "{metrics}");

    // Asleep again; a server restart keeps it asleep (nothing of its web starts), and the
    // first request after wakes it.
    falls_asleep(&server, &ada, project, runtime);
    server.restart();
    let restored = eventually(Duration::from_secs(60), || {
        let (_, logs) = server.api().req("GET", &format!("/projects/{project}/logs?lines=50"), Some(&ada.token), None);
        logs.as_str().is_some_and(|l| l.contains("v1 restored after a server start"))
    });
    assert!(restored, "the restore went through the project\n{}", server.log());
    assert!(asleep(&server, &ada, project), "still asleep after a restart");
    assert!(!(runtime.web_runs)(project), "the restore starts no web of a sleeping app");
    let began = Instant::now();
    assert_eq!(page(&server, project), (200, (runtime.answer)(1)));
    eprintln!("first request after a restart answered in {:.0} ms", began.elapsed().as_secs_f64() * 1000.0);

    // A deploy of a sleeping project starts and checks its web like any other, and leaves
    // it awake (asleep again after its idle time).
    falls_asleep(&server, &ada, project, runtime);
    let (status, body) =
        server.api().req("POST", &format!("/projects/{project}/deployments"), Some(&ada.token), Some(json!({})));
    assert_eq!(status, 201, "{body}\n{}", server.log());
    assert!(!asleep(&server, &ada, project), "a deployment wakes it");
    assert_eq!(page(&server, project), (200, (runtime.answer)(2)));

    // Off: stays awake past its idle time.
    let (status, body) = put(&server, &ada.token, json!({"enabled": false}));
    assert_eq!(status, 200, "{body}");
    std::thread::sleep(Duration::from_secs(4));
    assert!(!asleep(&server, &ada, project), "sleep off");
    assert!((runtime.web_runs)(project));
}

// ----- Local processes --------------------------------------------------------------------

/// Whether a process of `project`'s (its env names it) runs: asked of `/proc`.
fn process_runs(project: &str) -> bool {
    let marker = format!("PAASTECH_PROJECT={project}\0");
    let Ok(dir) = std::fs::read_dir("/proc") else { return false };
    dir.flatten().any(|entry| {
        let environ = entry.path().join("environ");
        std::fs::read(environ).is_ok_and(|env| env.windows(marker.len()).any(|w| w == marker.as_bytes()))
    })
}

fn python_answer(version: i64) -> String {
    format!("hello from python-hello (version {version})")
}

const PROCESS: Runtime = Runtime {
    config: "",
    example: "python-hello",
    answer: python_answer,
    start_line: "python-hello listening on",
    web_runs: process_runs,
};

#[test]
fn an_idle_app_sleeps_and_the_next_requests_wake_it_once_on_processes() {
    journey(&PROCESS, &format!("zs{}", std::process::id()));
}

/// A wake that cannot finish (the app hangs at start) answers 503 within the wake
/// timeout, the project shows why, and the next wake once the app is fixed succeeds.
#[test]
fn a_wake_that_does_not_finish_answers_503_within_the_timeout() {
    let server = Server::start(CONFIG);
    let ada = server.developer("ada@example.com");
    let project = format!("zb{}", std::process::id());
    let (status, body) = server.api().req("POST", "/projects", Some(&ada.token), Some(json!({ "name": project })));
    assert_eq!(status, 201, "{body}");
    let hang = server.dir.path().join("hang");
    let repo = GitRepo::from_dir(
        &server.dir.path().join("app"),
        &example("python-hello"),
        &ada.key,
        server.ssh_port,
        &project,
    );
    // While the file exists the web process never listens.
    repo.write(
        "Procfile",
        &format!("web: if test -e {}; then exec sleep 600; fi; exec python3 app.py\n", hang.display()),
    );
    repo.commit_all("a web that hangs on demand");
    let (pushed, output) = repo.push("main");
    assert!(pushed, "push: {output}\n{}", server.log());
    let (status, body) = server.api().req(
        "PUT",
        &format!("/projects/{project}/sleep"),
        Some(&ada.token),
        Some(json!({"enabled": true, "after_minutes": 1})),
    );
    assert_eq!(status, 200, "{body}");
    falls_asleep(&server, &ada, &project, &PROCESS);

    std::fs::write(&hang, "").expect("hang file");
    let began = Instant::now();
    let (status, html) = server.app_get(&project, "/");
    let took = began.elapsed();
    assert_eq!(status, 503, "{html}");
    assert!(html.contains("could not be woken") && html.contains("8 s"), "the page says why: {html}");
    assert!(took < Duration::from_secs(8 + 3), "answered within the timeout: {took:?}");
    assert!(took >= Duration::from_secs(7), "held until the timeout: {took:?}");
    let shown = eventually(Duration::from_secs(10), || {
        sleep_view(&server, &ada, &project)["wake_error"].as_str().is_some_and(|e| e.contains("8 s"))
    });
    assert!(shown, "the project shows the failed wake: {}", sleep_view(&server, &ada, &project));
    assert!(asleep(&server, &ada, &project), "a failed wake leaves it asleep");
    assert!(eventually(Duration::from_secs(15), || !process_runs(&project)), "what the failed wake started is stopped");

    std::fs::remove_file(&hang).expect("removing the hang file");
    assert_eq!(page(&server, &project), (200, python_answer(1)));
    assert_eq!(sleep_view(&server, &ada, &project)["wake_error"], Value::Null, "cleared by a wake that succeeds");
}

// ----- Docker -----------------------------------------------------------------------------

/// Whether a web container of `project` runs: asked of the engine.
fn docker_web_runs(project: &str) -> bool {
    let output = Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=paastech.project={project}"),
            "--filter",
            "label=paastech.process=web",
        ])
        .output()
        .expect("docker ps");
    assert!(output.status.success(), "docker answers (scripts/setup/20-docker.sh starts it): {output:?}");
    !String::from_utf8_lossy(&output.stdout).trim().is_empty()
}

fn dockerfile_answer(version: i64) -> String {
    format!("hello from dockerfile-hello (version {version})")
}

/// Removes the project's containers however the test ends.
struct Containers(String);

impl Drop for Containers {
    fn drop(&mut self) {
        let ids = Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("label=paastech.project={}", self.0)])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .unwrap_or_default();
        if !ids.is_empty() {
            let _ = Command::new("docker").args(["rm", "-f"]).args(&ids).output();
        }
    }
}

#[test]
fn an_idle_app_sleeps_and_the_next_requests_wake_it_once_on_docker() {
    let runtime = Runtime {
        config: "[runtime]\ndriver = \"docker\"\n",
        example: "dockerfile-hello",
        answer: dockerfile_answer,
        start_line: "dockerfile-hello listening on port",
        web_runs: docker_web_runs,
    };
    let project = format!("zd{}", std::process::id());
    let _containers = Containers(project.clone());
    journey(&runtime, &project);
}
