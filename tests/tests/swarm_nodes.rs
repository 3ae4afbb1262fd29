//! `Runtime::nodes` on the two-node swarm of `scripts/setup/85-swarm.sh`: both machines
//! with their roles, states and addresses, and each instance on the node that runs it,
//! published at that node's address.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paastech_core::ProjectName;
use paastech_core::drivers::{Instance, InstanceSpec, Limits, NodeAvailability, NodeRole, NodeState, Runtime};
use paastech_tests::conformance::{Lines, http_get};
use paastech_tests::swarm::{conformance_image, runtime};

fn web(project: &ProjectName, index: u32) -> InstanceSpec {
    let artifact = conformance_image();
    InstanceSpec {
        project: project.clone(),
        version: 1,
        process_type: "web".into(),
        index,
        artifact: artifact.reference.clone(),
        command: artifact.processes["web"].clone(),
        env: BTreeMap::from([("MARKER".to_owned(), format!("{project}-{index}"))]),
        limits: Limits::default(),
    }
}

async fn serves(instance: &Instance, needle: &str) -> bool {
    let addr = instance.addr.expect("a web instance has an address");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if matches!(http_get(addr, "localhost", "/").await, Ok((200, body)) if body.contains(needle)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_show_both_machines_and_where_each_instance_runs() {
    let runtime = runtime(&format!("nodes-{}", std::process::id()));
    let nodes = runtime.nodes().await.expect("nodes");
    assert_eq!(nodes.len(), 2, "the test swarm's two nodes: {nodes:?}");
    assert_eq!(nodes.iter().filter(|n| n.role == NodeRole::Manager).count(), 1, "{nodes:?}");
    assert_eq!(nodes.iter().filter(|n| n.role == NodeRole::Worker).count(), 1, "{nodes:?}");
    assert!(
        nodes.iter().all(|n| n.state == NodeState::Ready && n.availability == NodeAvailability::Active),
        "{nodes:?}"
    );
    assert_ne!(nodes[0].id, nodes[1].id);
    let addresses: Vec<IpAddr> = nodes.iter().map(|n| n.address.expect("a node's address")).collect();
    assert_ne!(addresses[0], addresses[1], "each node has its own address: {nodes:?}");
    assert!(nodes.iter().all(|n| n.instances.is_empty()), "no instance of this namespace yet: {nodes:?}");

    // Swarm spreads tasks over the nodes by their load: a few instances land on both.
    let project = ProjectName::parse(&format!("nodes-{}", std::process::id() % 100_000)).expect("name");
    let mut started: Vec<Instance> = Vec::new();
    let mut on_both = false;
    for index in 0..6 {
        let instance =
            runtime.start(web(&project, index), Arc::new(Lines::default())).await.expect("starting an instance");
        started.push(instance);
        let nodes = runtime.nodes().await.expect("nodes");
        for instance in &started {
            let holders: Vec<_> = nodes.iter().filter(|n| n.instances.iter().any(|i| i.id == instance.id)).collect();
            assert_eq!(holders.len(), 1, "an instance is on exactly one node: {nodes:?}");
            let addr = instance.addr.expect("address");
            assert_eq!(Some(addr.ip()), holders[0].address, "published at its node's address");
        }
        on_both = nodes.iter().all(|n| !n.instances.is_empty());
        if on_both && started.len() >= 2 {
            break;
        }
    }
    assert!(on_both, "instances run on both nodes: {:?}", runtime.nodes().await);
    for instance in &started {
        let marker = format!("marker={project}-{}", instance.index);
        assert!(serves(instance, &marker).await, "{} serves at {:?}", instance.id, instance.addr);
    }
    for instance in &started {
        runtime.stop(&instance.id, Duration::from_secs(5)).await.expect("stop");
    }
    let nodes = runtime.nodes().await.expect("nodes");
    assert!(nodes.iter().all(|n| n.instances.is_empty()), "stopped instances are on no node: {nodes:?}");
}

/// SHOULD (docs/specs/runtime.md, Logs): each exit of an instance is a line of its
/// output, as on Docker: swarm's tasks are read for it, since the service's log does not
/// say when a task ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_exit_is_a_line_of_the_output() {
    let runtime = runtime(&format!("exits-{}", std::process::id()));
    let project = ProjectName::parse(&format!("exits-{}", std::process::id() % 100_000)).expect("name");
    let mut spec = web(&project, 0);
    spec.process_type = "crash".into();
    spec.command = conformance_image().processes["crash"].clone();
    let lines = Arc::new(Lines::default());
    let crash = runtime.start(spec, lines.clone()).await.expect("start");
    let deadline = Instant::now() + Duration::from_secs(30);
    while lines.count("paastech: crash.0 exited (exit status ") < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(lines.count("paastech: crash.0 exited (exit status ") >= 2, "one line per exit: {:?}", lines.all());
    runtime.stop(&crash.id, Duration::from_secs(5)).await.expect("stop");
}

/// MUST (docs/specs/runtime.md, Swarm): a task swarm cannot run is an error saying why,
/// not a wait until the start timeout, and nothing of it is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_the_nodes_cannot_pull_fails_the_start_saying_so() {
    let runtime = runtime(&format!("pull-{}", std::process::id()));
    let project = ProjectName::parse(&format!("pull-{}", std::process::id() % 100_000)).expect("name");
    let mut spec = web(&project, 0);
    let missing = format!("{}/paastech/nothing@sha256:{}", paastech_tests::swarm::registry().address, "0".repeat(64));
    spec.artifact = missing.clone();
    let started = Instant::now();
    let err = runtime.start(spec, Arc::new(Lines::default())).await.expect_err("no such image");
    assert!(started.elapsed() < Duration::from_secs(60), "it failed at once: {:?}", started.elapsed());
    assert!(err.to_string().contains("swarm could not start"), "{err}");
    assert!(err.to_string().contains("nothing"), "swarm's reason names the image: {err}");
    assert_eq!(runtime.list_project(&project).await.expect("list_project"), vec![], "no service is left");
}
