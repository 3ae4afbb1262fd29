//! ProcessBuilder with the real toolchains: python3 (venv), npm, and a static site, then
//! the built release run by ProcessRuntime and fetched over HTTP.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Collect, alive, copy_tree, example, http_get, wait_until};
use paastech_core::drivers::{Artifact, BuildRequest, ImageBuilder, InstanceSpec, Limits, Runtime};
use paastech_core::{EnvVars, ProjectName};
use paastech_driver_process::{ProcessBuilder, ProcessBuilderConfig, ProcessRuntime, ProcessRuntimeConfig};

struct Fixture {
    _tmp: tempfile::TempDir,
    release: PathBuf,
    cache: PathBuf,
}

/// A release directory (a copy of `example`, or empty) and a cache directory.
fn fixture(example_name: Option<&str>) -> Fixture {
    let tmp = tempfile::tempdir().expect("temp dir");
    let release = tmp.path().join("releases/demo/1");
    match example_name {
        Some(name) => copy_tree(&example(name), &release),
        None => std::fs::create_dir_all(&release).expect("release dir"),
    }
    let cache = tmp.path().join("cache");
    Fixture { _tmp: tmp, release, cache }
}

fn builder(cache: &Path, timeout: Duration, static_server: &[&str]) -> ProcessBuilder {
    ProcessBuilder::new(ProcessBuilderConfig {
        cache_dir: cache.to_owned(),
        timeout,
        static_server: static_server.iter().map(|s| (*s).to_owned()).collect(),
        users: None,
    })
}

fn request(dir: &Path, env: &[(&str, &str)]) -> BuildRequest {
    BuildRequest {
        project: ProjectName::parse("demo").expect("name"),
        version: 1,
        commit: "0".repeat(40),
        source: dir.to_owned(),
        env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
    }
}

fn procs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Starts the artifact's `web` process and returns what `GET path` answers.
async fn run_web(artifact: &Artifact, env: EnvVars, path: &str) -> (String, std::sync::Arc<Collect>) {
    let runtime = ProcessRuntime::new(ProcessRuntimeConfig::default());
    let output = Collect::new();
    let spec = InstanceSpec {
        project: ProjectName::parse("demo").expect("name"),
        version: 1,
        process_type: "web".into(),
        index: 0,
        artifact: artifact.reference.clone(),
        command: artifact.processes["web"].clone(),
        env,
        limits: Limits::default(),
    };
    let instance = runtime.start(spec, output.clone()).await.expect("start web");
    let response = http_get(instance.addr.expect("address"), path).await;
    runtime.stop(&instance.id, Duration::from_secs(2)).await.expect("stop");
    (response, output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_and_runs_the_python_example() {
    let f = fixture(Some("python-hello"));
    let log = Collect::new();
    let artifact = builder(&f.cache, Duration::from_secs(120), &[])
        .build(&request(&f.release, &[]), log.as_ref())
        .await
        .unwrap_or_else(|e| panic!("build failed: {e}\n{}", log.text()));

    assert_eq!(artifact.reference, f.release.to_str().expect("utf-8"));
    assert_eq!(artifact.processes, procs(&[("web", "python3 app.py")]));
    assert!(f.release.join(".venv/bin/python3").exists(), "no venv was made");
    let text = log.text();
    assert!(text.contains("Detected a python app, commands from the Procfile"), "{text}");
    assert!(text.contains("Running python3 -m venv"), "{text}");

    let env = EnvVars::from([("GREETING".to_owned(), "hey".to_owned())]);
    let (response, output) = run_web(&artifact, env, "/").await;
    assert!(response.contains("hey from python-hello"), "{response}");
    assert!(output.text().contains("GET / HTTP/1.0"), "{}", output.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_requirements_are_installed_with_pip() {
    // `pip` itself is the one requirement: pip really runs `install -r`, and with
    // PIP_NO_INDEX (the build env reaches the steps) it needs no network.
    let f = fixture(None);
    std::fs::write(f.release.join("requirements.txt"), "# offline\npip\n").expect("write");
    std::fs::write(f.release.join("Procfile"), "web: python3 -m http.server $PORT\n").expect("write");
    let log = Collect::new();
    let result = builder(&f.cache, Duration::from_secs(300), &[])
        .build(&request(&f.release, &[("PIP_NO_INDEX", "1")]), log.as_ref())
        .await;
    let text = log.text();
    result.unwrap_or_else(|e| panic!("build failed: {e}\n{text}"));
    assert!(
        text.contains(
            "Running .venv/bin/pip install --disable-pip-version-check --progress-bar off -r requirements.txt"
        ),
        "{text}"
    );
    assert!(text.contains("Requirement already satisfied: pip"), "{text}");
    assert!(f.cache.join("pip").is_dir(), "the pip cache lives under cache_dir");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_and_runs_the_node_example() {
    let f = fixture(Some("node-hello"));
    let log = Collect::new();
    let artifact = builder(&f.cache, Duration::from_secs(120), &[])
        .build(&request(&f.release, &[]), log.as_ref())
        .await
        .unwrap_or_else(|e| panic!("build failed: {e}\n{}", log.text()));
    assert_eq!(artifact.processes, procs(&[("web", "npm start")]));
    assert!(log.text().contains("Running npm install --no-audit --no-fund"), "{}", log.text());
    assert!(f.cache.join("npm").is_dir());

    let env = EnvVars::from([("PAASTECH_VERSION".to_owned(), "3".to_owned())]);
    let (response, _) = run_web(&artifact, env, "/").await;
    assert!(response.contains("hello from node-hello (version 3)"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_sites_get_the_configured_server() {
    let f = fixture(Some("static-hello"));
    // Any argv prefix works; this one has a space and quotes to prove the quoting, and
    // serves `$1` (the appended directory) with python's http.server.
    let server =
        ["/bin/sh", "-c", "exec python3 -m http.server \"$PORT\" --bind 127.0.0.1 --directory \"$1\"", "static server"];
    let log = Collect::new();
    let artifact = builder(&f.cache, Duration::from_secs(60), &server)
        .build(&request(&f.release, &[]), log.as_ref())
        .await
        .unwrap_or_else(|e| panic!("build failed: {e}\n{}", log.text()));
    let web = &artifact.processes["web"];
    assert!(web.starts_with("/bin/sh -c 'exec python3 -m http.server \"$PORT\""), "{web}");
    assert!(web.ends_with(&format!("'static server' {}", f.release.display())), "{web}");
    assert_eq!(artifact.processes.len(), 1);

    let (response, _) = run_web(&artifact, EnvVars::new(), "/style.css").await;
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    assert!(response.contains("font-family"), "{response}");

    let err = builder(&f.cache, Duration::from_secs(60), &[])
        .build(&request(&f.release, &[]), log.as_ref())
        .await
        .expect_err("no static server configured");
    assert_eq!(err.code(), "unavailable", "{err}");
}

fn node_app(dir: &Path, scripts: &str) {
    std::fs::write(
        dir.join("package.json"),
        format!("{{\"name\": \"t\", \"version\": \"1.0.0\", \"scripts\": {scripts}}}"),
    )
    .expect("write package.json");
}

#[tokio::test]
async fn a_slow_step_is_killed_with_its_group() {
    let f = fixture(None);
    node_app(&f.release, r#"{"postinstall": "echo before-sleep; sleep 300 & echo $! > bg.pid; sleep 300"}"#);
    let log = Collect::new();
    let started = Instant::now();
    let err = builder(&f.cache, Duration::from_secs(3), &[])
        .build(&request(&f.release, &[]), log.as_ref())
        .await
        .expect_err("times out");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    let message = err.to_string();
    assert!(message.contains("`npm install --no-audit --no-fund` timed out"), "{message}");
    assert!(log.text().contains("before-sleep"), "output is streamed as it comes: {}", log.text());
    let pid: u32 = std::fs::read_to_string(f.release.join("bg.pid")).expect("pid file").trim().parse().expect("pid");
    wait_until("the background sleep to die", Duration::from_secs(5), || !alive(pid)).await;
}

#[tokio::test]
async fn a_failing_step_fails_the_build_and_the_env_is_clean() {
    let f = fixture(None);
    node_app(&f.release, r#"{"postinstall": "env > build-env.txt; echo to-stderr >&2; exit 3"}"#);
    let log = Collect::new();
    let err = builder(&f.cache, Duration::from_secs(60), &[])
        .build(&request(&f.release, &[("BUILD_FLAG", "on")]), log.as_ref())
        .await
        .expect_err("fails");
    assert_eq!(err.code(), "invalid");
    assert!(err.to_string().contains("`npm install --no-audit --no-fund` failed"), "{err}");
    assert!(log.text().contains("to-stderr"), "stderr reaches the log: {}", log.text());

    let env = std::fs::read_to_string(f.release.join("build-env.txt")).expect("env dump");
    assert!(env.lines().any(|l| l == "BUILD_FLAG=on"), "{env}");
    assert!(env.lines().any(|l| l == "LANG=C.UTF-8"), "{env}");
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    assert!(!env.contains("CARGO_MANIFEST_DIR"), "the server's env leaked: {env}");
    assert!(!env.contains("RUST_TEST_THREADS") && !env.contains("CARGO_PKG_NAME"), "{env}");
}

#[tokio::test]
async fn detection_errors_and_missing_tools() {
    let f = fixture(None);
    let b = builder(&f.cache, Duration::from_secs(60), &[]);
    let log = Collect::new();

    let err = b.build(&request(&f.release, &[]), log.as_ref()).await.expect_err("empty");
    assert!(err.to_string().contains("none of Procfile, requirements.txt"), "{err}");

    std::fs::write(f.release.join("requirements.txt"), "").expect("write");
    let err = b.build(&request(&f.release, &[]), log.as_ref()).await.expect_err("no procfile");
    assert!(err.to_string().contains("add a Procfile"), "{err}");

    // A Procfile alone: nothing to build, its commands as they are.
    let g = fixture(None);
    std::fs::write(g.release.join("Procfile"), "worker: ./run.sh\n").expect("write");
    let artifact = b.build(&request(&g.release, &[]), log.as_ref()).await.expect("procfile only");
    assert_eq!(artifact.processes, procs(&[("worker", "./run.sh")]));

    // Go is not installed on this machine; if it ever is, the build really runs.
    let h = fixture(None);
    std::fs::write(h.release.join("go.mod"), "module example.com/x\n\ngo 1.20\n").expect("write");
    std::fs::write(h.release.join("main.go"), "package main\nfunc main() {}\n").expect("write");
    let go_installed =
        std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("go").is_file()));
    let result = b.build(&request(&h.release, &[]), log.as_ref()).await;
    if go_installed {
        let artifact = result.expect("go build");
        assert_eq!(artifact.processes, procs(&[("web", "bin/app")]));
        assert!(h.release.join("bin/app").is_file());
    } else {
        let err = result.expect_err("go is missing");
        assert_eq!(err.code(), "unavailable");
        assert!(err.to_string().contains("go is not installed on the server"), "{err}");
    }
}

#[tokio::test]
async fn remove_deletes_a_release_directory() {
    let f = fixture(Some("static-hello"));
    let b = builder(&f.cache, Duration::from_secs(60), &[]);
    let reference = f.release.to_str().expect("utf-8");
    b.remove(reference).await.expect("remove");
    assert!(!f.release.exists());
    b.remove(reference).await.expect("missing is not an error");
    for bad in ["relative/dir", "/", "/tmp"] {
        assert_eq!(b.remove(bad).await.expect_err(bad).code(), "invalid", "{bad}");
    }
    assert!(Path::new("/tmp").is_dir());
}
