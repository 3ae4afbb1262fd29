//! The two-node swarm of `scripts/setup/85-swarm.sh` as the swarm tests use it: the
//! manager's socket and the registry the nodes pull from (its exports), the conformance
//! image built by the Docker builder on the manager's engine and pushed there, and a
//! runtime on it.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use paastech_core::ProjectName;
use paastech_core::drivers::{Artifact, BuildRequest, ImageBuilder};
use paastech_core::registry::ImageRegistry;
use paastech_driver_docker::{DockerBuilder, DockerBuilderConfig, DockerRuntimeConfig, EngineConfig};
use paastech_driver_swarm::{SwarmRuntime, SwarmRuntimeConfig};

use crate::conformance::{Lines, copy_app};

const BASE_IMAGE: &str = "paastech/busybox:latest";

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need the two-node swarm of scripts/setup/85-swarm.sh\n\
             run `source scripts/setup/85-swarm.sh` (scripts/test.sh does)"
        )
    })
}

/// The manager's engine (`PAASTECH_SWARM_SOCKET`).
pub fn manager() -> EngineConfig {
    EngineConfig { socket: PathBuf::from(var("PAASTECH_SWARM_SOCKET")), ..EngineConfig::default() }
}

/// The registry every node pulls from (`PAASTECH_SWARM_REGISTRY`).
pub fn registry() -> ImageRegistry {
    ImageRegistry { address: var("PAASTECH_SWARM_REGISTRY"), username: None, password: None }
}

/// A runtime on the swarm whose services carry `namespace`. Its stop grace is short, so
/// that the cases stay quick.
pub fn runtime(namespace: &str) -> SwarmRuntime {
    SwarmRuntime::new(SwarmRuntimeConfig {
        base: DockerRuntimeConfig {
            engine: manager(),
            namespace: namespace.to_owned(),
            ..DockerRuntimeConfig::default()
        },
        registry: registry(),
        stop_grace: Duration::from_secs(5),
        ..SwarmRuntimeConfig::default()
    })
}

/// The conformance app as an image in the registry, built once per test binary.
pub fn conformance_image() -> &'static Artifact {
    static IMAGE: OnceLock<Artifact> = OnceLock::new();
    IMAGE.get_or_init(|| {
        // Its own thread and async runtime: the tests' runtimes come and go.
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            rt.block_on(async {
                if let Err(err) = runtime("ping").ping().await {
                    panic!(
                        "the swarm manager is needed for these tests and does not answer: {err}\n\
                         start the cluster with `bash scripts/setup/85-swarm.sh` (scripts/test.sh does)"
                    );
                }
                let dir = tempfile::tempdir().expect("temp dir");
                let source = dir.path().join("src");
                copy_app(&source);
                let builder = DockerBuilder::new(DockerBuilderConfig {
                    engine: manager(),
                    base_image: Some(BASE_IMAGE.into()),
                    registry: Some(registry()),
                    ..DockerBuilderConfig::default()
                });
                let request = BuildRequest {
                    project: ProjectName::parse("conformance").expect("name"),
                    version: 1,
                    commit: "0".repeat(40),
                    source,
                    env: Default::default(),
                };
                let log = Lines::default();
                builder
                    .build(&request, &log)
                    .await
                    .unwrap_or_else(|err| panic!("building the conformance image: {err}\n{}", log.all().join("\n")))
            })
        })
        .join()
        .expect("building the conformance image")
    })
}
