//! Issue #11 journeys: nothing is left half-done, whoever hangs up and whatever kills the
//! server. A real server process on the embedded default (local processes + SQLite), real
//! HTTP clients that go away mid-request, real `git` over SSH, `kill -9`.
//!
//! The app is python-hello with a web command that sleeps `$START_DELAY` seconds before it
//! listens, so that a change is still starting when the client hangs up or the server dies.

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use paastech_tests::{Developer, GitRepo, Server, eventually, example};
use serde_json::{Value, json};

/// What every app process of the project `name` has on its command line (the Procfile's
/// last argument), to count them as the operating system sees them.
fn marker(name: &str) -> String {
    format!("reliability-marker-{name}")
}

/// Creates `name` with `START_DELAY` set and pushes python-hello to it as v1.
fn deploy_slow_app(server: &Server, dev: &Developer, name: &str, delay_secs: u32) -> GitRepo {
    let api = server.api();
    let (status, body) = api.req("POST", "/projects", Some(&dev.token), Some(json!({"name": name})));
    assert_eq!(status, 201, "{body}");
    let (status, body) = api.req(
        "PATCH",
        &format!("/projects/{name}/env"),
        Some(&dev.token),
        Some(json!({"START_DELAY": delay_secs.to_string()})),
    );
    assert_eq!(status, 200, "{body}");
    let repo =
        GitRepo::from_dir(&server.dir.path().join(name), &example("python-hello"), &dev.key, server.ssh_port, name);
    repo.write("Procfile", &format!("web: sleep \"$START_DELAY\"; exec python3 app.py {}\n", marker(name)));
    repo.commit_all("a web process that takes its time to start");
    let (ok, output) = repo.push("main");
    assert!(ok, "first push: {output}\n{}", server.log());
    repo
}

/// Sends one request and hangs up before the answer, as `curl --max-time` does.
fn hang_up(server: &Server, token: &str, method: &str, path: &str, body: Value) {
    let body = body.to_string();
    let mut stream = TcpStream::connect(("127.0.0.1", server.api_port)).expect("connect to the API");
    write!(
        stream,
        "{method} /api/v1{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send the request");
    std::thread::sleep(Duration::from_millis(500));
    drop(stream);
}

fn deployments(server: &Server, token: &str, name: &str) -> Vec<Value> {
    let (status, body) = server.api().req("GET", &format!("/projects/{name}/deployments"), Some(token), None);
    assert_eq!(status, 200, "{body}");
    body.as_array().cloned().unwrap_or_default()
}

/// Whether every deployment has reached an end (live, superseded, failed).
fn settled(list: &[Value]) -> bool {
    list.iter().all(|d| matches!(d["status"].as_str(), Some("live" | "superseded" | "failed")))
}

/// Waits until nothing of the project is on its way any more; returns its deployments.
fn wait_settled(server: &Server, token: &str, name: &str) -> Vec<Value> {
    let mut list = Vec::new();
    let ok = eventually(Duration::from_secs(60), || {
        list = deployments(server, token, name);
        settled(&list)
    });
    assert!(ok, "deployments still on their way: {list:#?}\n{}", server.log());
    list
}

/// The app processes of `name` running on this machine, as pids.
fn app_processes(name: &str) -> Vec<String> {
    let output = Command::new("pgrep").args(["-f", &marker(name)]).output().expect("pgrep");
    String::from_utf8_lossy(&output.stdout).split_whitespace().map(str::to_owned).collect()
}

/// The project runs exactly `count` web instances of `version`, seen by the runtime and by
/// the operating system, and the ingress serves that version with `greeting`.
fn assert_serving(server: &Server, token: &str, name: &str, version: i64, count: usize, greeting: &str) {
    let expected = format!("{greeting} from python-hello (version {version})");
    let served = eventually(Duration::from_secs(30), || server.app_get(name, "/").1.trim() == expected);
    assert!(served, "{name} serves {expected:?}; it answers {:?}\n{}", server.app_get(name, "/"), server.log());
    let mut ps = Value::Null;
    let instances = eventually(Duration::from_secs(30), || {
        ps = server.api().req("GET", &format!("/projects/{name}/ps"), Some(token), None).1;
        let all = ps.as_array().cloned().unwrap_or_default();
        all.len() == count && all.iter().all(|i| i["version"] == version && i["state"] == "running")
    });
    assert!(instances, "{name} runs exactly {count} instance(s) of v{version}: {ps:#}");
    let mut pids = Vec::new();
    let processes = eventually(Duration::from_secs(30), || {
        pids = app_processes(name);
        pids.len() == count
    });
    assert!(processes, "{name} has exactly {count} app process(es): {pids:?}");
}

fn env_of(server: &Server, token: &str, name: &str) -> Value {
    server.api().req("GET", &format!("/projects/{name}/env"), Some(token), None).1
}

#[test]
fn clients_that_hang_up_leave_the_project_whole() {
    let server = Server::start("");
    let ada = server.developer("ada@example.com");
    let name = "hangups";
    deploy_slow_app(&server, &ada, name, 2);
    assert_serving(&server, &ada.token, name, 1, 1, "hello");

    // An env change whose new instance takes 2 s to start; the client leaves after 0.5 s.
    hang_up(&server, &ada.token, "PATCH", &format!("/projects/{name}/env"), json!({"GREETING": "bonjour"}));
    let list = wait_settled(&server, &ada.token, name);
    assert_eq!((list[0]["version"].as_i64(), list[0]["status"].as_str()), (Some(2), Some("live")), "{list:#?}");
    assert_eq!(env_of(&server, &ada.token, name), json!({"GREETING": "bonjour", "START_DELAY": "2"}));
    assert_serving(&server, &ada.token, name, 2, 1, "bonjour");

    // A rollback to v1: its build and its config (no GREETING).
    hang_up(&server, &ada.token, "POST", &format!("/projects/{name}/deployments"), json!({"version": 1}));
    let list = wait_settled(&server, &ada.token, name);
    assert_eq!((list[0]["version"].as_i64(), list[0]["status"].as_str()), (Some(3), Some("live")), "{list:#?}");
    assert_eq!(env_of(&server, &ada.token, name), json!({"START_DELAY": "2"}));
    assert_serving(&server, &ada.token, name, 3, 1, "hello");

    // A scale to two instances.
    hang_up(&server, &ada.token, "PUT", &format!("/projects/{name}/scale"), json!({"web": 2}));
    // The count is saved once the added instance answers.
    let mut scale = Value::Null;
    let saved = eventually(Duration::from_secs(30), || {
        scale = server.api().req("GET", &format!("/projects/{name}/scale"), Some(&ada.token), None).1;
        scale["web"] == 2
    });
    assert!(saved, "the scale is saved: {scale}\n{}", server.log());
    assert_serving(&server, &ada.token, name, 3, 2, "hello");
    assert_eq!(deployments(&server, &ada.token, name).len(), 3, "a scale makes no deployment");
}

/// Polls until the newest deployment of `name` is `status`.
fn wait_for_status(server: &Server, token: &str, name: &str, version: i64, status: &str) {
    let mut list = Vec::new();
    let reached = eventually(Duration::from_secs(60), || {
        list = deployments(server, token, name);
        list.first().is_some_and(|d| d["version"] == version && d["status"] == status)
    });
    assert!(reached, "v{version} never reached {status}: {list:#?}\n{}", server.log());
}

fn assert_interrupted(list: &[Value], version: i64) {
    let deployment = list.iter().find(|d| d["version"] == version).expect("the interrupted deployment is listed");
    assert_eq!(deployment["status"], "failed", "{deployment}");
    assert_eq!(deployment["failure"], "interrupted by a server restart", "{deployment}");
}

#[test]
fn a_server_killed_during_a_build_or_a_start_comes_back_whole() {
    let mut server = Server::start("");
    let ada = server.developer("ada@example.com");
    let name = "killed";
    let repo = deploy_slow_app(&server, &ada, name, 0);
    assert_serving(&server, &ada.token, name, 1, 1, "hello");

    // kill -9 while v2 builds: a line that is not a comment makes the builder create a
    // venv with pip (ensurepip takes seconds) and run pip, which installs nothing offline.
    repo.write("requirements.txt", "# a change that makes a new build\n--no-index\n");
    repo.commit_all("second");
    let push = {
        let repo_dir = repo.dir.clone();
        let key = ada.key.clone();
        let port = server.ssh_port;
        std::thread::spawn(move || push_from(&repo_dir, &key, port))
    };
    wait_for_status(&server, &ada.token, name, 2, "building");
    server.kill();
    let (ok, _) = push.join().expect("push thread");
    assert!(!ok, "a push whose server died is not accepted");
    server.start_again();
    assert_serving(&server, &ada.token, name, 1, 1, "hello");
    let list = wait_settled(&server, &ada.token, name);
    assert_interrupted(&list, 2);
    let releases = server.data_dir().join("releases").join(name);
    assert!(!releases.join("v2").exists(), "the interrupted build's files are removed");

    // kill -9 while v3 (an env change whose instance takes 5 s to answer) starts.
    let api = server.api();
    let changer = {
        let (api, token) = (server.api(), ada.token.clone());
        std::thread::spawn(move || {
            api.call(
                "PATCH",
                "/projects/killed/env",
                Some(&token),
                Some(&json!({"START_DELAY": "5", "GREETING": "hi"})),
            )
        })
    };
    wait_for_status(&server, &ada.token, name, 3, "starting");
    server.kill();
    let _ = changer.join().expect("env change thread");
    server.start_again();
    assert_serving(&server, &ada.token, name, 1, 1, "hello");
    let list = wait_settled(&server, &ada.token, name);
    assert_interrupted(&list, 3);
    assert_eq!(env_of(&server, &ada.token, name), json!({"START_DELAY": "0"}), "the change was not kept");
    drop(api);

    // The next push works.
    let (ok, output) = repo.push("main");
    assert!(ok, "{output}\n{}", server.log());
    assert_serving(&server, &ada.token, name, 4, 1, "hello");
}

/// `git push` from `dir` as a separate process (for a thread: `GitRepo` stays with the test).
fn push_from(dir: &Path, key: &Path, port: u16) -> (bool, String) {
    let output = Command::new("git")
        .args(["push", "-q", "paastech", "main"])
        .current_dir(dir)
        .env("GIT_SSH_COMMAND", paastech_tests::ssh_command(key, port))
        .output()
        .expect("git push");
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn a_push_during_the_restore_after_a_restart_ends_served() {
    let mut server = Server::start("");
    let ada = server.developer("ada@example.com");
    let name = "restored";
    let repo = deploy_slow_app(&server, &ada, name, 3);
    assert_serving(&server, &ada.token, name, 1, 1, "hello");
    repo.write("requirements.txt", "# v2\n");
    repo.commit_all("second");

    // The restore starts v1 again, which takes 3 s; the push arrives meanwhile.
    server.restart();
    let (ok, output) = repo.push("main");
    assert!(ok, "{output}\n{}", server.log());
    assert!(output.contains("Deployed restored v2"), "{output}");
    assert_serving(&server, &ada.token, name, 2, 1, "hello");
    // Nothing switches it back later.
    std::thread::sleep(Duration::from_secs(4));
    assert_serving(&server, &ada.token, name, 2, 1, "hello");
    let list = wait_settled(&server, &ada.token, name);
    let statuses: Vec<(i64, &str)> =
        list.iter().map(|d| (d["version"].as_i64().unwrap_or(0), d["status"].as_str().unwrap_or(""))).collect();
    assert_eq!(statuses, vec![(2, "live"), (1, "superseded")]);
}
