//! A node lost under the swarm driver (`scripts/setup/85-swarm.sh stop-node 2`): swarm
//! starts its instance on the other node, and the instance keeps its id while its address
//! moves to that node (`Runtime::instance_addresses_move`), which is what the orchestrator
//! follows. Stops and starts node 2's engine, so nextest runs it alone among the swarm
//! tests (the `swarm` test group, `.config/nextest.toml`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paastech_core::ProjectName;
use paastech_core::drivers::{InstanceSpec, InstanceState, Limits, NodeRole, NodeState, Runtime};
use paastech_tests::conformance::{Lines, http_get};
use paastech_tests::swarm::{conformance_image, runtime};

fn setup(verb: &str) {
    let script = std::env::var("PAASTECH_SWARM_SETUP").unwrap_or_else(|_| {
        panic!("PAASTECH_SWARM_SETUP is not set: run `source scripts/setup/85-swarm.sh` (scripts/test.sh does)")
    });
    let status = Command::new("bash").arg(&script).args([verb, "2"]).status().expect("running the setup script");
    assert!(status.success(), "{script} {verb} 2: {status}");
}

/// Starts node 2's engine again however the test ends.
struct Node2Back;

impl Drop for Node2Back {
    fn drop(&mut self) {
        setup("start-node");
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_nodes_instance_moves_and_keeps_its_id() {
    let runtime = runtime(&format!("faults-{}", std::process::id()));
    assert!(runtime.instance_addresses_move(), "swarm addresses move");
    let nodes = runtime.nodes().await.expect("nodes");
    let address = |role: NodeRole| -> IpAddr {
        nodes.iter().find(|n| n.role == role).and_then(|n| n.address).expect("a node of each role")
    };
    let (manager, worker) = (address(NodeRole::Manager), address(NodeRole::Worker));

    // An instance on the worker (node 2): swarm spreads them, so one of a few lands there.
    let project = ProjectName::parse(&format!("faults-{}", std::process::id() % 100_000)).expect("name");
    let mut started = Vec::new();
    let mut on_worker = None;
    for index in 0..6 {
        let instance = runtime.start(web(&project, index), Arc::new(Lines::default())).await.expect("start");
        if instance.addr.map(|a| a.ip()) == Some(worker) {
            on_worker = Some(instance.clone());
        }
        started.push(instance);
        if on_worker.is_some() {
            break;
        }
    }
    let moved = on_worker.unwrap_or_else(|| panic!("no instance landed on the worker: {started:?}"));
    let old = moved.addr.expect("address");
    let marker = format!("marker={project}-{}", moved.index);
    assert!(
        tokio::time::timeout(Duration::from_secs(30), async {
            while !matches!(http_get(old, "localhost", "/").await, Ok((200, ref body)) if body.contains(&marker)) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .is_ok(),
        "it serves at {old} first"
    );

    let _back = Node2Back;
    let lost = Instant::now();
    setup("stop-node");
    // Swarm notices the node is gone (its heartbeats stop), then starts the task elsewhere.
    let mut now = None;
    while lost.elapsed() < Duration::from_secs(90) {
        if let Some(instance) = runtime.status(&moved.id).await.expect("status")
            && instance.state == InstanceState::Running
            && instance.addr.is_some_and(|a| a.ip() == manager)
            && let Some(addr) = instance.addr
            && matches!(http_get(addr, "localhost", "/").await, Ok((200, ref body)) if body.contains(&marker))
        {
            now = Some(instance);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let now = now.unwrap_or_else(|| {
        panic!("the instance did not move to the manager within 90 s of losing node 2: {:?}", started)
    });
    println!("node 2 lost: instance {} serving on the manager after {:?}", moved.id, lost.elapsed());
    assert_eq!((now.id.as_str(), now.index), (moved.id.as_str(), moved.index), "the same instance, moved");
    let listed = runtime.list_project(&project).await.expect("list_project");
    assert!(listed.iter().any(|i| i.id == moved.id && i.addr == now.addr), "list_project follows it: {listed:?}");
    let nodes = runtime.nodes().await.expect("nodes");
    let down = nodes.iter().find(|n| n.role == NodeRole::Worker).expect("the worker is still listed");
    assert_ne!(down.state, NodeState::Ready, "the lost node is not ready: {nodes:?}");

    // Stopping does not wait for the lost node's task, which will never answer.
    let stopping = Instant::now();
    for instance in &started {
        runtime.stop(&instance.id, Duration::from_secs(5)).await.expect("stop");
    }
    assert!(stopping.elapsed() < Duration::from_secs(60), "stops took {:?}", stopping.elapsed());
    assert_eq!(runtime.list_project(&project).await.expect("list_project"), vec![]);
}
