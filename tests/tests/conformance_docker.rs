//! The runtime conformance suite (`docs/specs/runtime.md`) on a real Docker engine: the
//! one `scripts/setup/20-docker.sh` installs and starts, at its standard socket. Without
//! an engine these tests fail, saying so.

use std::sync::{Arc, OnceLock};

use paastech_core::ProjectName;
use paastech_core::drivers::{Artifact, BuildRequest, ImageBuilder};
use paastech_driver_docker::{DockerBuilder, DockerBuilderConfig, DockerRuntime, DockerRuntimeConfig};
use paastech_tests::conformance::{AfterRestart, Lines, Target, copy_app};

const BASE_IMAGE: &str = "paastech/busybox:latest";

/// The conformance app as an image, built once per test binary by the Docker builder
/// (a Dockerfile generated from its Procfile, FROM the local busybox image).
fn image() -> &'static Artifact {
    static IMAGE: OnceLock<Artifact> = OnceLock::new();
    IMAGE.get_or_init(|| {
        // Its own thread and async runtime: the tests' runtimes come and go.
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            rt.block_on(async {
                let runtime = DockerRuntime::new(DockerRuntimeConfig::default());
                if let Err(err) = runtime.ping().await {
                    panic!(
                        "the Docker engine is needed for these tests and does not answer: {err}\n\
                         start it with `bash scripts/setup/20-docker.sh` (scripts/test.sh does)"
                    );
                }
                let dir = tempfile::tempdir().expect("temp dir");
                let source = dir.path().join("src");
                copy_app(&source);
                let builder = DockerBuilder::new(DockerBuilderConfig {
                    base_image: Some(BASE_IMAGE.into()),
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

fn docker_target() -> Target {
    Target {
        // A namespace of this test's own: a case that removes what another server left
        // (stray one-offs) must not see the other tests' containers.
        new_runtime: Box::new(|| {
            Arc::new(DockerRuntime::new(DockerRuntimeConfig {
                namespace: format!("conformance-{}", std::process::id()),
                ..DockerRuntimeConfig::default()
            }))
        }),
        artifact: image().clone(),
        after_restart: AfterRestart::Adopted,
        hog_memory_bytes: 64 * 1024 * 1024,
        usage_everywhere: true,
        keep: None,
    }
}

paastech_tests::conformance_tests!(docker_target());
paastech_tests::conformance_tty_tests!(docker_target());
