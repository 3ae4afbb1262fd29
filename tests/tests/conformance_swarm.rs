//! The runtime conformance suite (`docs/specs/runtime.md`) on a two-node Docker Swarm:
//! the one `scripts/setup/85-swarm.sh` makes (two engines in network namespaces, node 1
//! the manager), found through `PAASTECH_SWARM_SOCKET` and `PAASTECH_SWARM_REGISTRY`.
//! The conformance image is built by the Docker builder on the manager's engine and pushed
//! to the registry the nodes pull from, as a swarm server's builds are. Without the
//! cluster these tests fail, saying so.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use paastech_core::ProjectName;
use paastech_core::drivers::{Artifact, BuildRequest, ImageBuilder};
use paastech_core::registry::ImageRegistry;
use paastech_driver_docker::{DockerBuilder, DockerBuilderConfig, DockerRuntimeConfig, EngineConfig};
use paastech_driver_swarm::{SwarmRuntime, SwarmRuntimeConfig};
use paastech_tests::conformance::{AfterRestart, Lines, Target, copy_app};

const BASE_IMAGE: &str = "paastech/busybox:latest";

/// The manager's socket and the registry, as the setup script exports them.
fn cluster() -> (PathBuf, ImageRegistry) {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: these tests need the two-node swarm of scripts/setup/85-swarm.sh\n\
                 run `source scripts/setup/85-swarm.sh` (scripts/test.sh does)"
            )
        })
    };
    let registry = ImageRegistry { address: var("PAASTECH_SWARM_REGISTRY"), username: None, password: None };
    (PathBuf::from(var("PAASTECH_SWARM_SOCKET")), registry)
}

fn engine() -> EngineConfig {
    EngineConfig { socket: cluster().0, ..EngineConfig::default() }
}

/// The conformance app as an image in the registry, built once per test binary.
fn image() -> &'static Artifact {
    static IMAGE: OnceLock<Artifact> = OnceLock::new();
    IMAGE.get_or_init(|| {
        // Its own thread and async runtime: the tests' runtimes come and go.
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            rt.block_on(async {
                let runtime = SwarmRuntime::new(SwarmRuntimeConfig {
                    base: DockerRuntimeConfig { engine: engine(), ..DockerRuntimeConfig::default() },
                    ..SwarmRuntimeConfig::default()
                });
                if let Err(err) = runtime.ping().await {
                    panic!(
                        "the swarm manager is needed for these tests and does not answer: {err}\n\
                         start the cluster with `bash scripts/setup/85-swarm.sh` (scripts/test.sh does)"
                    );
                }
                let dir = tempfile::tempdir().expect("temp dir");
                let source = dir.path().join("src");
                copy_app(&source);
                let builder = DockerBuilder::new(DockerBuilderConfig {
                    engine: engine(),
                    base_image: Some(BASE_IMAGE.into()),
                    registry: Some(cluster().1),
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

fn swarm_target() -> Target {
    Target {
        // A namespace of this test's own: a case that removes what another server left
        // (stray one-offs) must not see the other tests' services.
        new_runtime: Box::new(|| {
            Arc::new(SwarmRuntime::new(SwarmRuntimeConfig {
                base: DockerRuntimeConfig {
                    engine: engine(),
                    namespace: format!("conformance-{}", std::process::id()),
                    ..DockerRuntimeConfig::default()
                },
                registry: cluster().1,
                // Short, so that the cases stay quick: the suite's instances all stop
                // at once when asked.
                stop_grace: Duration::from_secs(5),
                ..SwarmRuntimeConfig::default()
            }))
        }),
        artifact: image().clone(),
        after_restart: AfterRestart::Adopted,
        hog_memory_bytes: 64 * 1024 * 1024,
        keep: None,
    }
}

paastech_tests::conformance_tests!(swarm_target());
