//! Issue #15 item 1 journeys: `stop`, `start` and `restart` of a project on local processes,
//! through the real API, CLI and ingress, with the app pushed over real SSH. A stopped app
//! answers 503 with the "app stopped" page, stays stopped over a config change and a server
//! restart, and serves again once started; `restart` under `wrk` load fails no request.

use std::process::Command;
use std::time::{Duration, Instant};

use paastech_tests::{Developer, GitRepo, Server, eventually, example, failed, ok};
use serde_json::{Value, json};

/// A web process and a worker that only sleeps (visible in `ps` while it runs).
const PROCFILE: &str = "web: python3 app.py\nworker: while true; do sleep 1; done\n";

/// The project's instances that run (or start), as `(name, id)`, by name.
fn running(server: &Server, token: &str, project: &str) -> Vec<(String, String)> {
    let (status, body) = server.api().req("GET", &format!("/projects/{project}/ps"), Some(token), None);
    assert_eq!(status, 200, "{body}");
    let mut out: Vec<(String, String)> = body
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| matches!(i["state"].as_str(), Some("running" | "starting")))
        .map(|i| (i["name"].as_str().unwrap_or_default().to_owned(), i["id"].as_str().unwrap_or_default().to_owned()))
        .collect();
    out.sort();
    out
}

fn names(instances: &[(String, String)]) -> Vec<&str> {
    instances.iter().map(|(name, _)| name.as_str()).collect()
}

fn post(server: &Server, token: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    server.api().req("POST", path, Some(token), body)
}

/// A project `name` of `dev` running the python example with [`PROCFILE`], `webs` web
/// instances.
fn deploy(server: &Server, dev: &Developer, name: &str, webs: u32) -> GitRepo {
    let (status, body) = post(server, &dev.token, "/projects", Some(json!({ "name": name })));
    assert_eq!(status, 201, "{body}");
    let repo =
        GitRepo::from_dir(&server.dir.path().join(name), &example("python-hello"), &dev.key, server.ssh_port, name);
    repo.write("Procfile", PROCFILE);
    repo.commit_all("a web and a worker");
    let (pushed, output) = repo.push("main");
    assert!(pushed, "push: {output}\n{}", server.log());
    let (status, body) =
        server.api().req("PUT", &format!("/projects/{name}/scale"), Some(&dev.token), Some(json!({"web": webs})));
    assert_eq!(status, 200, "{body}");
    repo
}

fn assert_stopped_page(server: &Server, project: &str) {
    let (status, body) = server.app_get(project, "/");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("app stopped"), "the stopped page, not the generic one: {body}");
}

#[test]
fn a_stopped_app_says_so_stays_stopped_over_a_config_change_and_a_restart_and_starts_again() {
    let mut server = Server::start("");
    let ada = server.developer("ada@example.com");
    let repo = deploy(&server, &ada, "lc", 2);
    assert_eq!(server.app_get("lc", "/").0, 200);
    assert_eq!(names(&running(&server, &ada.token, "lc")), ["web.1", "web.2", "worker.1"]);

    // Only the worker: the web keeps serving.
    let (status, body) = post(&server, &ada.token, "/projects/lc/stop", Some(json!({"process": "worker"})));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"stopped": false, "stopped_processes": ["worker"]}));
    assert_eq!(names(&running(&server, &ada.token, "lc")), ["web.1", "web.2"]);
    assert_eq!(server.app_get("lc", "/").0, 200);

    // Bad input: a type the Procfile does not have, someone else's project, a stopped type.
    let (status, body) = post(&server, &ada.token, "/projects/lc/stop", Some(json!({"process": "clock"})));
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("\"clock\"") && message.contains("web, worker"), "{message}");
    let bob = server.developer("bob@example.com");
    for verb in ["stop", "start", "restart"] {
        let (status, body) = post(&server, &bob.token, &format!("/projects/lc/{verb}"), None);
        assert_eq!(status, 404, "{verb} of someone else's project: {body}");
    }
    let (status, body) = post(&server, &ada.token, "/projects/lc/restart", Some(json!({"process": "worker"})));
    assert_eq!(status, 409, "{body}");
    assert_eq!(names(&running(&server, &ada.token, "lc")), ["web.1", "web.2"], "bob stopped nothing");

    // The whole project, through the CLI.
    let home = tempfile::tempdir().expect("home");
    ok(&server.cli(
        home.path(),
        &["login", "--email", "ada@example.com", "--password-stdin"],
        Some(paastech_tests::web::PASSWORD),
    ));
    let said = ok(&server.cli(home.path(), &["stop", "-p", "lc"], None));
    assert!(said.contains("Stopped lc"), "{said}");
    assert_stopped_page(&server, "lc");
    assert!(running(&server, &ada.token, "lc").is_empty());
    let refused = failed(&server.cli(home.path(), &["restart", "-p", "lc"], None));
    assert!(refused.contains("lc is stopped") && refused.contains("paastech start"), "{refused}");
    let info = ok(&server.cli(home.path(), &["projects", "info", "-p", "lc"], None));
    assert!(info.contains("stopped:"), "{info}");

    // A config change makes a live deployment with the new config, and starts nothing.
    let (status, body) =
        server.api().req("PATCH", "/projects/lc/env", Some(&ada.token), Some(json!({"GREETING": "bonjour"})));
    assert_eq!(status, 200, "{body}");
    assert_stopped_page(&server, "lc");
    assert!(running(&server, &ada.token, "lc").is_empty(), "a config change does not start a stopped app");
    // Nor does a push (as on Heroku, an app scaled to zero stays at zero): it goes live and
    // says it is stopped.
    repo.write("Procfile", &format!("{PROCFILE}# v3\n"));
    repo.commit_all("a push to a stopped app");
    let (pushed, output) = repo.push("main");
    assert!(pushed, "a push to a stopped app is built and goes live: {output}");
    assert!(output.contains("remote: -----> lc is stopped: v3 starts no instance"), "{output}");
    assert_stopped_page(&server, "lc");
    assert!(running(&server, &ada.token, "lc").is_empty(), "a push does not start a stopped app");

    // A server restart neither: the stopped page answers as soon as it listens.
    server.restart();
    assert_stopped_page(&server, "lc");
    let restored = eventually(Duration::from_secs(60), || {
        let (_, logs) = server.api().req("GET", "/projects/lc/logs?lines=50", Some(&ada.token), None);
        logs.as_str().is_some_and(|l| l.contains("v3 restored after a server start"))
    });
    assert!(restored, "the restore went through the project\n{}", server.log());
    assert!(running(&server, &ada.token, "lc").is_empty(), "the restore starts nothing of a stopped app");
    assert_stopped_page(&server, "lc");

    let said = ok(&server.cli(home.path(), &["start", "-p", "lc"], None));
    assert!(said.contains("Started lc"), "{said}");
    assert_eq!(server.app_get("lc", "/"), (200, "bonjour from python-hello (version 3)\n".to_owned()));
    assert_eq!(names(&running(&server, &ada.token, "lc")), ["web.1", "web.2", "worker.1"]);
    let (_, project) = server.api().req("GET", "/projects/lc", Some(&ada.token), None);
    assert_eq!((&project["stopped"], &project["stopped_processes"]), (&json!(false), &json!([])), "{project}");
}

/// Runs `wrk` against the app through the ingress for `seconds`; answers its report.
fn wrk(server: &Server, project: &str, seconds: u64) -> std::thread::JoinHandle<String> {
    let host = format!("Host: {project}.localhost:{}", server.ingress_port);
    let url = format!("http://127.0.0.1:{}/", server.ingress_port);
    std::thread::spawn(move || {
        let output = Command::new("wrk")
            .args(["-t", "1", "-c", "4", "-d", &format!("{seconds}s"), "--timeout", "5s", "-H", &host, &url])
            .output()
            .expect("running wrk (scripts/test.sh installs it)");
        assert!(output.status.success(), "wrk: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    })
}

#[test]
fn a_restart_under_load_replaces_every_instance_and_fails_no_request() {
    let server = Server::start("");
    let ada = server.developer("ada@example.com");
    // One web instance: no other one for the ingress to retry on, so any gap would show.
    let _repo = deploy(&server, &ada, "busy", 1);
    let before = running(&server, &ada.token, "busy");
    assert_eq!(names(&before), ["web.1", "worker.1"]);

    let load = wrk(&server, "busy", 8);
    std::thread::sleep(Duration::from_secs(2));
    let began = Instant::now();
    let (status, body) = post(&server, &ada.token, "/projects/busy/restart", None);
    let took = began.elapsed();
    eprintln!("restart under load took {:.1}s", took.as_secs_f64());
    assert_eq!(status, 200, "{body}\n{}", server.log());
    assert_eq!(body, json!({"restarted": ["web.1", "worker.1"]}));
    assert!(took < Duration::from_secs(5), "the restart ({took:?}) ran inside the load");
    let report = load.join().expect("wrk thread");
    assert!(!report.contains("Non-2xx"), "every answer is 200:\n{report}");
    assert!(!report.contains("Socket errors"), "no request failed:\n{report}");
    let requests: u64 = report
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").and_then(|(n, _)| n.trim().parse().ok()))
        .unwrap_or(0);
    assert!(requests > 100, "the load ran:\n{report}");

    let after = running(&server, &ada.token, "busy");
    assert_eq!(names(&after), ["web.1", "worker.1"]);
    for ((name, old), (_, new)) in before.iter().zip(&after) {
        assert_ne!(old, new, "{name} is a new instance");
    }
    // `--process web` replaces only the web instances.
    let (status, body) = post(&server, &ada.token, "/projects/busy/restart", Some(json!({"process": "web"})));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"restarted": ["web.1"]}));
    let last = running(&server, &ada.token, "busy");
    assert_ne!(last[0], after[0], "web.1 is new");
    assert_eq!(last[1], after[1], "the worker kept running");
    assert_eq!(server.app_get("busy", "/").0, 200);
}
