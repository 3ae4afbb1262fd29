//! Issue #13's journey on the two-node swarm of `scripts/setup/85-swarm.sh`: the real `git`
//! over real SSH to a server whose runtime is `swarm`, a Dockerfile app built on the
//! manager's engine and pushed to the registry the nodes pull from, served by the real
//! ingress from replicas on both nodes; a push under load, env change and rollback; node 2's
//! engine stopped under load (its replicas move, the routes follow); a server restart that
//! adopts the services. Stops and starts node 2, so nextest runs it alone
//! (`.config/nextest.toml`). Without the cluster it fails, saying so.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paastech_tests::{GitRepo, Server, eventually, example, http_get};
use serde_json::{Value, json};

fn var(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run `source scripts/setup/85-swarm.sh` (scripts/test.sh does)"))
}

/// `85-swarm.sh VERB 2`: stops or starts node 2's engine.
fn node2(verb: &str) {
    let script = var("PAASTECH_SWARM_SETUP");
    let status = Command::new("bash").arg(&script).args([verb, "2"]).status().expect("running the setup script");
    assert!(status.success(), "{script} {verb} 2: {status}");
}

/// The manager's CLI, to look at what the driver did and to clean up after the test.
fn manager(args: &[&str]) -> String {
    let socket = format!("unix://{}", var("PAASTECH_SWARM_SOCKET"));
    let output = Command::new("docker").arg("-H").arg(&socket).args(args).output().expect("running docker");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Removes the project's services however the test ends, and starts node 2 again.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        node2("start-node");
        let services = manager(&["service", "ls", "-q", "--filter", &format!("label=paastech.project={}", self.0)]);
        for id in services.split_whitespace() {
            manager(&["service", "rm", id]);
        }
    }
}

/// The app's page: `GREETING from WORD (version N) on HOST`, HOST the replica's container.
fn page(server: &Server, project: &str) -> (String, String) {
    let (status, body) = server.app_get(project, "/");
    let body = body.trim();
    let (text, host) = body.rsplit_once(" on ").unwrap_or((body, ""));
    (format!("{status} {text}"), host.to_owned())
}

/// The replicas that answer `tries` requests.
fn replicas_seen(server: &Server, project: &str, want: &str, tries: usize) -> BTreeSet<String> {
    let mut hosts = BTreeSet::new();
    for _ in 0..tries {
        let (text, host) = page(server, project);
        assert_eq!(text, want);
        hosts.insert(host);
    }
    hosts
}

/// `GET /nodes`: for each node (id, role, state), the ids of the running web instances of
/// the project's deployment `version` on it.
fn nodes(server: &Server, admin: &str, project: &str, version: i64) -> Vec<(String, String, String, Vec<String>)> {
    let (status, body) = server.api().req("GET", "/nodes", Some(admin), None);
    assert_eq!(status, 200, "{body}");
    let list = body.as_array().cloned().unwrap_or_default();
    list.iter()
        .map(|node| {
            let text = |key: &str| node[key].as_str().unwrap_or_default().to_owned();
            let instances = node["instances"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|i| {
                    i["project"] == project
                        && i["version"] == version
                        && i["process_type"] == "web"
                        && i["state"] == "running"
                })
                .map(|i| i["id"].as_str().unwrap_or_default().to_owned())
                .collect();
            (text("id"), text("role"), text("state"), instances)
        })
        .collect()
}

fn registry_tags(project: &str) -> String {
    let url = format!("http://{}/v2/paastech/{project}/tags/list", var("PAASTECH_SWARM_REGISTRY"));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    match agent.get(&url).call() {
        Ok(mut response) => response.body_mut().read_to_string().unwrap_or_default(),
        Err(err) => err.to_string(),
    }
}

/// One request of a [`Load`]: when it ended, and what failed (status and body) if it did.
type Outcome = (Instant, Result<(), String>);

/// A client requesting the app in a loop until stopped: each request's time and outcome.
struct Load {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
    seen: Arc<Mutex<Vec<Outcome>>>,
}

impl Load {
    fn start(server: &Server, project: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (port, host) = (server.ingress_port, format!("{project}.localhost"));
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                // Bounded: the test stops it long before.
                let deadline = Instant::now() + Duration::from_secs(600);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let (status, body) = http_get(port, &host, "/");
                    let outcome = if status == 200 { Ok(()) } else { Err(format!("{status} {}", body.trim())) };
                    seen.lock().expect("load lock").push((Instant::now(), outcome));
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Load { stop, thread, seen }
    }

    /// Stops the loop; every request's time and outcome.
    fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("load thread");
        std::mem::take(&mut *self.seen.lock().expect("load lock"))
    }
}

fn failures(seen: &[Outcome]) -> Vec<&String> {
    seen.iter().filter_map(|(_, outcome)| outcome.as_ref().err()).collect()
}

fn set_cgi(repo: &GitRepo, word: &str) {
    let cgi = std::fs::read_to_string(example("dockerfile-hello").join("www/cgi-bin/index.cgi")).expect("cgi");
    // The replica's container name too, to see which one answered.
    let cgi = cgi
        .replace("from dockerfile-hello", &format!("from {word}"))
        .replace("(version ${PAASTECH_VERSION:-unknown})\"", "(version ${PAASTECH_VERSION:-unknown}) on $(hostname)\"");
    assert!(cgi.contains("$(hostname)"), "the example's page changed: {cgi}");
    repo.write("www/cgi-bin/index.cgi", &cgi);
    repo.commit_all(word);
}

#[test]
fn swarm_push_scale_over_both_nodes_replace_rollback_lose_a_node_and_restart() {
    let project = format!("sj{}", std::process::id() % 100_000);
    let _cleanup = Cleanup(project.clone());
    let mut server = Server::start(&format!(
        "[runtime]\ndriver = \"swarm\"\nsocket = {:?}\nnamespace = \"journey-{}\"\nstop_grace_secs = 3\n\
         [registry]\nurl = {:?}\n",
        var("PAASTECH_SWARM_SOCKET"),
        std::process::id(),
        var("PAASTECH_SWARM_REGISTRY"),
    ));
    // The first account is an admin: it may list nodes.
    let ada = server.developer("ada@example.com");
    let (status, body) = server.api().req("POST", "/projects", Some(&ada.token), Some(json!({"name": project})));
    assert_eq!(status, 201, "{body}");

    // A Dockerfile app, built on the manager, pushed to the registry, run by the swarm.
    let repo = GitRepo::from_dir(
        &server.dir.path().join("app"),
        &example("dockerfile-hello"),
        &ada.key,
        server.ssh_port,
        &project,
    );
    set_cgi(&repo, "one");
    let started = Instant::now();
    let (ok, output) = repo.push("main");
    assert!(ok, "first push: {output}\n{}", server.log());
    eprintln!("first push took {:.1}s", started.elapsed().as_secs_f64());
    assert!(output.contains(&format!("Deployed {project} v1")), "{output}");
    assert!(registry_tags(&project).contains("\"v1\""), "the build is in the registry: {}", registry_tags(&project));
    assert_eq!(page(&server, &project).0, "200 hello from one (version 1)");

    // Four replicas, spread over both nodes, every one of them served by the ingress.
    let (status, body) =
        server.api().req("PUT", &format!("/projects/{project}/scale"), Some(&ada.token), Some(json!({"web": 4})));
    assert_eq!(status, 200, "{body}");
    let spread = nodes(&server, &ada.token, &project, 1);
    assert_eq!(spread.len(), 2, "two nodes: {spread:?}");
    assert_eq!(spread.iter().map(|n| n.3.len()).sum::<usize>(), 4, "four replicas: {spread:?}");
    assert!(spread.iter().all(|n| !n.3.is_empty()), "replicas on both nodes: {spread:?}");
    let hosts = replicas_seen(&server, &project, "200 hello from one (version 1)", 24);
    assert_eq!(hosts.len(), 4, "the ingress serves from all four: {hosts:?}");

    // A second push replaces them under load: no request fails.
    set_cgi(&repo, "two");
    let load = Load::start(&server, &project);
    let started = Instant::now();
    let (ok, output) = repo.push("main");
    eprintln!("second push (4 replicas) took {:.1}s", started.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_millis(300));
    let seen = load.finish();
    assert!(ok, "{output}\n{}", server.log());
    assert!(seen.len() > 20, "the load ran: {} requests", seen.len());
    let failed = failures(&seen);
    assert!(failed.is_empty(), "{} of {} requests failed during the push: {failed:?}", failed.len(), seen.len());
    let hosts = replicas_seen(&server, &project, "200 hello from two (version 2)", 24);
    assert_eq!(hosts.len(), 4, "four new replicas: {hosts:?}");
    assert!(
        eventually(Duration::from_secs(30), || {
            manager(&["service", "ls", "-q", "--filter", &format!("label=paastech.project={project}")])
                .split_whitespace()
                .count()
                == 4
        }),
        "the old version's services are removed"
    );

    // An env change and a rollback, each a new deployment on the swarm.
    let (status, body) = server.api().req(
        "PATCH",
        &format!("/projects/{project}/env"),
        Some(&ada.token),
        Some(json!({"GREETING": "bonjour"})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(page(&server, &project).0, "200 bonjour from two (version 3)");
    let (status, body) = server.api().req(
        "POST",
        &format!("/projects/{project}/deployments"),
        Some(&ada.token),
        Some(json!({"version": 1})),
    );
    assert_eq!(status, 201, "{body}");
    let hosts = replicas_seen(&server, &project, "200 hello from one (version 4)", 24);
    assert_eq!(hosts.len(), 4, "the rollback keeps the scale: {hosts:?}");

    // Node 2's engine stops under load: its replicas move to the manager, the routes follow
    // them, and the app keeps answering.
    let spread = nodes(&server, &ada.token, &project, 4);
    assert!(spread.iter().all(|n| !n.3.is_empty()), "v4's replicas are on both nodes before the loss: {spread:?}");
    let load = Load::start(&server, &project);
    std::thread::sleep(Duration::from_millis(500));
    let lost = Instant::now();
    node2("stop-node");
    let moved = eventually(Duration::from_secs(120), || {
        let now = nodes(&server, &ada.token, &project, 4);
        now.iter().any(|n| n.1 == "manager" && n.3.len() == 4) && {
            let answers: Vec<(String, String)> = (0..12).map(|_| page(&server, &project)).collect();
            answers.iter().all(|(text, _)| text == "200 hello from one (version 4)")
                && answers.iter().map(|(_, host)| host).collect::<BTreeSet<_>>().len() == 4
        }
    });
    let settled = lost.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let seen = load.finish();
    assert!(
        moved,
        "the replicas moved to the manager: {:?}\n{}",
        nodes(&server, &ada.token, &project, 4),
        server.log()
    );
    let failed = failures(&seen);
    let last_failure = seen.iter().rev().find(|(_, outcome)| outcome.is_err()).map(|(at, _)| at.duration_since(lost));
    eprintln!(
        "node 2 lost: 4 replicas on the manager and served after {:.1}s; {} of {} requests failed, the last {:?} after the loss",
        settled.as_secs_f64(),
        failed.len(),
        seen.len(),
        last_failure
    );
    // A request in flight on node 2's containers when they are killed fails (the ingress
    // sends again only what never reached a backend); every later one must be answered:
    // unreachable replicas are passed over at once, and the routes follow the moved tasks.
    let late: Vec<_> = seen
        .iter()
        .filter(|(at, outcome)| outcome.is_err() && at.duration_since(lost) > Duration::from_secs(1))
        .collect();
    assert!(
        late.is_empty() && failed.len() <= 4,
        "{} of {} requests failed after the node's loss, {} of them more than 1 s after it: {failed:?}",
        failed.len(),
        seen.len(),
        late.len()
    );

    // Node 2 back; a server restart adopts the running services instead of replacing them.
    node2("start-node");
    let before: BTreeSet<String> = nodes(&server, &ada.token, &project, 4).into_iter().flat_map(|n| n.3).collect();
    assert_eq!(before.len(), 4, "{before:?}");
    server.restart();
    // The restore adopts the live deployment in the background once the server listens.
    assert!(
        eventually(Duration::from_secs(60), || page(&server, &project).0 == "200 hello from one (version 4)"),
        "the app serves again after a restart: {:?}\n{}",
        page(&server, &project),
        server.log()
    );
    let after: BTreeSet<String> = nodes(&server, &ada.token, &project, 4).into_iter().flat_map(|n| n.3).collect();
    assert_eq!(after, before, "the same four services after the restart");

    // Deleting the project removes its services.
    let (status, body): (u16, Value) =
        server.api().req("DELETE", &format!("/projects/{project}"), Some(&ada.token), None);
    assert!(status == 200 || status == 204, "{status} {body}");
    assert!(
        eventually(Duration::from_secs(60), || {
            manager(&["service", "ls", "-q", "--filter", &format!("label=paastech.project={project}")]).is_empty()
        }),
        "the project's services are removed"
    );
}
