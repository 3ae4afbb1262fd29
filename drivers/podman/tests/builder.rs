//! PodmanBuilder against the real engine: the Dockerfile example built and run, a
//! Dockerfile generated for a static site, and the failures a pusher must understand.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{BASE_IMAGE, Collect, example, http_get, owner, socket};
use paastech_core::drivers::{BuildRequest, ImageBuilder, InstanceSpec, Limits, Runtime};
use paastech_core::{Error, ProjectName};
use paastech_driver_podman::{PodmanBuilder, PodmanBuilderConfig, PodmanRuntime, PodmanRuntimeConfig};

fn builder(base_image: Option<&str>) -> PodmanBuilder {
    PodmanBuilder::new(PodmanBuilderConfig {
        socket: socket(),
        base_image: base_image.map(str::to_owned),
        ..PodmanBuilderConfig::default()
    })
}

/// A unique project name per test run, so parallel runs never share an image tag.
fn project(prefix: &str) -> ProjectName {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    ProjectName::parse(&format!("{prefix}-{}-{nanos}", std::process::id())).expect("project name")
}

fn request(project: &ProjectName, source: &std::path::Path) -> BuildRequest {
    BuildRequest {
        project: project.clone(),
        version: 1,
        commit: "0".repeat(40),
        source: source.to_owned(),
        env: Default::default(),
    }
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("dest");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_and_runs_the_dockerfile_example() {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_tree(&example("dockerfile-hello"), dir.path());
    let project = project("df");
    let builder = builder(None);
    let log = Collect::new();
    let started = Instant::now();
    let artifact = builder.build(&request(&project, dir.path()), log.as_ref()).await.unwrap_or_else(|err| {
        panic!("build: {err}\n{}", log.text());
    });
    println!("dockerfile-hello built in {:?}", started.elapsed());
    assert_eq!(artifact.reference, format!("localhost/paastech/{project}:v1"));
    assert_eq!(artifact.processes.get("web").map(String::as_str), Some(""), "the image's own CMD is web");
    assert!(log.count("Building the Dockerfile") == 1, "{}", log.text());
    assert!(log.count("STEP") >= 3, "the engine's output streams to the log:\n{}", log.text());

    let runtime = PodmanRuntime::new(PodmanRuntimeConfig {
        socket: socket(),
        namespace: owner("builder"),
        ..PodmanRuntimeConfig::default()
    });
    let spec = InstanceSpec {
        project: project.clone(),
        version: 1,
        process_type: "web".into(),
        index: 0,
        artifact: artifact.reference.clone(),
        command: String::new(),
        env: [("GREETING".to_owned(), "salut".to_owned()), ("PAASTECH_VERSION".to_owned(), "1".to_owned())].into(),
        limits: Limits::default(),
    };
    let output = Collect::new();
    let instance = runtime.start(spec, output.clone()).await.expect("start");
    let response = http_get(instance.addr.expect("address"), "/cgi-bin/index.cgi").await;
    runtime.stop(&instance.id, Duration::from_secs(2)).await.expect("stop");
    assert!(response.contains("salut from dockerfile-hello (version 1)"), "{response}\n{}", output.text());

    builder.remove(&artifact.reference).await.expect("remove the image");
    builder.remove(&artifact.reference).await.expect("removing twice is fine");
    assert!(matches!(builder.remove("docker.io/library/alpine").await, Err(Error::Invalid(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generates_a_dockerfile_for_a_static_site_from_the_base_image() {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_tree(&example("static-hello"), dir.path());
    // A symlink to a server file is sent as a link, never as the file.
    std::os::unix::fs::symlink("/etc/shadow", dir.path().join("leak.txt")).expect("symlink");
    let project = project("static");
    let builder = builder(Some(BASE_IMAGE));
    let log = Collect::new();
    let artifact = builder
        .build(&request(&project, dir.path()), log.as_ref())
        .await
        .unwrap_or_else(|err| panic!("build: {err}\n{}", log.text()));
    assert!(log.count("No Dockerfile: generated one for a static app") == 1, "{}", log.text());
    let web = artifact.processes.get("web").cloned().unwrap_or_default();
    assert!(web.contains("httpd"), "{web}");

    let runtime = Arc::new(PodmanRuntime::new(PodmanRuntimeConfig {
        socket: socket(),
        namespace: owner("static"),
        ..PodmanRuntimeConfig::default()
    }));
    let spec = InstanceSpec {
        project: project.clone(),
        version: 1,
        process_type: "web".into(),
        index: 0,
        artifact: artifact.reference.clone(),
        command: web,
        env: Default::default(),
        limits: Limits::default(),
    };
    let instance = runtime.start(spec, Collect::new()).await.expect("start");
    let addr = instance.addr.expect("address");
    let page = http_get(addr, "/").await;
    let leak = http_get(addr, "/leak.txt").await;
    runtime.stop(&instance.id, Duration::from_secs(2)).await.expect("stop");
    builder.remove(&artifact.reference).await.expect("remove");
    assert!(page.contains(" 200 "), "{page}");
    assert!(!leak.contains("root:"), "a symlink brought a server file into the image: {leak}");
}

#[tokio::test]
async fn without_a_dockerfile_or_base_image_the_build_says_what_is_needed() {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_tree(&example("static-hello"), dir.path());
    let err = builder(None).build(&request(&project("nodf"), dir.path()), &*Collect::new()).await.expect_err("refused");
    assert!(matches!(err, Error::Invalid(_)) && err.to_string().contains("Dockerfile"), "{err}");
}

#[tokio::test]
async fn a_failing_dockerfile_fails_the_build_with_its_output() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("Dockerfile"), format!("FROM {BASE_IMAGE}\nRUN echo about to fail && exit 7\n"))
        .expect("Dockerfile");
    let log = Collect::new();
    let err = builder(None).build(&request(&project("bad"), dir.path()), log.as_ref()).await.expect_err("fails");
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("podman build failed"), "{err}");
    assert!(log.count("about to fail") >= 1, "the failing step's output is in the log:\n{}", log.text());
}

#[tokio::test]
async fn a_generated_dockerfile_says_when_the_base_image_lacks_the_toolchain() {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_tree(&example("python-hello"), dir.path());
    let log = Collect::new();
    let err = builder(Some(BASE_IMAGE))
        .build(&request(&project("py"), dir.path()), log.as_ref())
        .await
        .expect_err("busybox has no python3");
    assert!(err.to_string().contains("has no python3") && err.to_string().contains("Dockerfile"), "{err}");
}
