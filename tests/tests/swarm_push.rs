//! A server on the two-node swarm of `scripts/setup/85-swarm.sh` (`[runtime] driver =
//! "swarm"`): a Dockerfile app pushed over git+SSH is built on the manager's engine,
//! pushed to the registry the nodes pull from, runs as a swarm service by digest and
//! answers through the ingress at its node's address; pruned builds leave that registry;
//! a server restart adopts the service.
//! (The orchestrator's side of a cluster, routes that follow moving tasks, and the
//! journeys under load are elsewhere: this is the driver wired into the binary.)

use std::process::Command;
use std::time::Duration;

use paastech_tests::{GitRepo, Server, eventually, example};
use serde_json::json;

/// The manager's CLI answer to `args`.
fn manager(args: &[&str]) -> String {
    let socket = std::env::var("PAASTECH_SWARM_SOCKET").unwrap_or_else(|_| {
        panic!("PAASTECH_SWARM_SOCKET is not set: run `source scripts/setup/85-swarm.sh` (scripts/test.sh does)")
    });
    let output = Command::new("docker")
        .args(["-H", &format!("unix://{socket}")])
        .args(args)
        .output()
        .expect("running docker against the swarm manager");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The project's services: (id, image).
fn services(project: &str) -> Vec<(String, String)> {
    let filter = format!("label=paastech.project={project}");
    manager(&["service", "ls", "--filter", &filter, "--format", "{{.ID}} {{.Image}}"])
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(id, image)| (id.to_owned(), image.to_owned())))
        .collect()
}

/// The registry's status for a manifest URL.
fn manifest_status(url: &str) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json";
    agent.get(url).header("Accept", accept).call().map_or(0, |response| response.status().as_u16())
}

/// Removes the project's services, whatever the test left.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (id, _) in services(&self.0) {
            manager(&["service", "rm", &id]);
        }
    }
}

#[test]
fn a_dockerfile_app_runs_on_the_swarm_by_digest_and_is_adopted_after_a_restart() {
    let registry = std::env::var("PAASTECH_SWARM_REGISTRY").unwrap_or_else(|_| {
        panic!("PAASTECH_SWARM_REGISTRY is not set: run `source scripts/setup/85-swarm.sh` (scripts/test.sh does)")
    });
    let socket = std::env::var("PAASTECH_SWARM_SOCKET").expect("PAASTECH_SWARM_SOCKET");
    let project = format!("sw{}", std::process::id());
    let _cleanup = Cleanup(project.clone());
    let mut server = Server::start(&format!(
        "[runtime]\ndriver = \"swarm\"\nsocket = {socket:?}\nstop_grace_secs = 3\n[build]\nkeep_builds = 2\n\
         [registry]\nurl = {registry:?}\n"
    ));
    let ada = server.developer("ada@example.com");
    let (status, body) = server.api().req("POST", "/projects", Some(&ada.token), Some(json!({"name": project})));
    assert_eq!(status, 201, "{body}");
    let repo = GitRepo::from_dir(
        &server.dir.path().join("app"),
        &example("dockerfile-hello"),
        &ada.key,
        server.ssh_port,
        &project,
    );
    let (ok, output) = repo.push("main");
    assert!(ok, "push: {output}\n{}", server.log());
    let repository = format!("{registry}/paastech/{project}");
    assert!(output.contains(&format!("remote: -----> Pushing {repository}:v1 to the registry {registry}")), "{output}");
    let (status, body) = server.app_get(&project, "/");
    assert_eq!((status, body.trim()), (200, "hello from dockerfile-hello (version 1)"), "{}", server.log());
    let running = services(&project);
    assert_eq!(running.len(), 1, "one service for the one web instance: {running:?}");
    assert!(running[0].1.starts_with(&format!("{repository}@sha256:")), "run by digest: {running:?}");

    // With keep_builds = 2, a third build prunes the first: its manifest leaves the
    // nodes' registry, spoken to in plain HTTP as the engines do (an insecure registry).
    let first = running[0].1.split_once('@').map(|(_, digest)| digest.to_owned()).expect("a digest");
    for word in ["two", "three"] {
        let cgi = std::fs::read_to_string(example("dockerfile-hello").join("www/cgi-bin/index.cgi")).expect("cgi");
        repo.write("www/cgi-bin/index.cgi", &cgi.replace("from dockerfile-hello", &format!("from {word}")));
        repo.commit_all(word);
        let (ok, output) = repo.push("main");
        assert!(ok, "push {word}: {output}\n{}", server.log());
    }
    let (status, body) = server.app_get(&project, "/");
    assert_eq!((status, body.trim()), (200, "hello from three (version 3)"), "{}", server.log());
    let manifest = format!("http://{registry}/v2/paastech/{project}/manifests/{first}");
    assert!(
        eventually(Duration::from_secs(20), || manifest_status(&manifest) == 404),
        "the pruned build's manifest is deleted ({}): {}",
        manifest_status(&manifest),
        server.log()
    );
    // The old version is drained, then stopped, after the push returns.
    assert!(
        eventually(Duration::from_secs(60), || services(&project).len() == 1),
        "the old versions' services are removed: {:?}\n{}",
        services(&project),
        server.log()
    );
    let running = services(&project);

    // The restored routes come a moment after the API answers.
    server.restart();
    assert!(
        eventually(Duration::from_secs(30), || server.app_get(&project, "/").1.trim()
            == "hello from three (version 3)"),
        "the app serves again after a restart: {:?}\n{}",
        server.app_get(&project, "/"),
        server.log()
    );
    assert_eq!(services(&project), running, "the same service, adopted: {}", server.log());
    server.stop();
}
