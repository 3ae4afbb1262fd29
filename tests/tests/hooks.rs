//! Issue #5 journeys: WASM build hooks on real pushes over SSH — the sample hooks of
//! `examples/hooks` as operator hooks (`[[hooks]]`) and as project hooks
//! (`.paastech/hooks/*.wasm`), and hostile guests that must fail only their own push.
//! The components are built by `scripts/setup/40-wasm.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use paastech_tests::{GitRepo, Server, example, paastech_bin};
use serde_json::json;

/// A built component; fails with what to run when it is missing.
fn wasm(name: &str) -> PathBuf {
    let dir = std::env::var_os("PAASTECH_HOOK_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/hooks/wasm32-wasip2/release"));
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the hook components with `bash scripts/setup/40-wasm.sh` (or set PAASTECH_HOOK_WASM_DIR)",
        path.display()
    );
    path
}

fn create_project(server: &Server, token: &str, name: &str) {
    let (status, body) = server.api().req("POST", "/projects", Some(token), Some(json!({"name": name})));
    assert_eq!(status, 201, "{body}");
}

/// A source tree with python-hello's app.py and nothing that names a process type: it
/// deploys only if a hook writes a Procfile.
fn bare_app(dir: &Path) -> PathBuf {
    let src = dir.join("bare-src");
    std::fs::create_dir_all(&src).expect("src dir");
    std::fs::copy(example("python-hello").join("app.py"), src.join("app.py")).expect("copy app.py");
    src
}

fn add_project_hook(repo: &GitRepo, name: &str, component: &str, config: &str) {
    let dir = repo.dir.join(".paastech/hooks");
    std::fs::create_dir_all(&dir).expect("hooks dir");
    std::fs::copy(wasm(component), dir.join(format!("{name}.wasm"))).expect("copy hook");
    if !config.is_empty() {
        std::fs::write(dir.join(format!("{name}.toml")), config).expect("hook config");
    }
}

fn healthy(server: &Server) -> bool {
    matches!(server.api().call("GET", "/healthz", None, None), Ok((200, _)))
}

#[test]
fn operator_hooks_shape_real_pushes() {
    let toml = format!(
        r#"
[[hooks]]
name = "forbid-secrets"
path = {forbid:?}
stages = ["pre-build"]
[hooks.config]
patterns = ["*.pem", ".env"]

[[hooks]]
name = "procfile"
path = {procfile:?}
stages = ["pre-build"]
[hooks.config]
web = "python3 app.py"

[[hooks]]
name = "env"
path = {env:?}
stages = ["pre-deploy"]
[hooks.config]
GREETING = "injected"

[[hooks]]
name = "notify"
path = {notify:?}
stages = ["post-deploy"]
"#,
        forbid = wasm("forbid_files").display().to_string(),
        procfile = wasm("procfile_gen").display().to_string(),
        env = wasm("env_inject").display().to_string(),
        notify = wasm("notify_log").display().to_string(),
    );
    let server = Server::start(&toml);
    let ada = server.developer("ada@example.com");
    create_project(&server, &ada.token, "op-hooks");
    let src = bare_app(server.dir.path());
    let repo = GitRepo::from_dir(&server.dir.path().join("repo"), &src, &ada.key, server.ssh_port, "op-hooks");

    let (ok, output) = repo.push("main");
    assert!(ok, "push: {output}\n{}", server.log());
    assert!(output.contains("[forbid-secrets] forbid-files: 1 files checked"), "{output}");
    assert!(output.contains("[procfile] procfile-gen: wrote a Procfile with web"), "{output}");
    assert!(output.contains("[env] env-inject: adding GREETING"), "{output}");
    assert!(output.contains(&format!("[notify] notify-log: op-hooks v1 is live ({})", &repo.head()[..7])), "{output}");
    assert_eq!(server.app_get("op-hooks", "/").1.trim(), "injected from python-hello (version 1)");

    // A forbidden file fails the push, naming it; v1 keeps serving.
    repo.write("deploy/key.pem", "-----BEGIN PRIVATE KEY-----\n");
    repo.commit_all("oops");
    let (ok, output) = repo.push("main");
    assert!(!ok, "a forbidden file must fail the push: {output}");
    assert!(
        output.contains("forbid-secrets (pre-build) rejected the deployment: forbidden file deploy/key.pem"),
        "{output}"
    );
    assert_eq!(server.app_get("op-hooks", "/").1.trim(), "injected from python-hello (version 1)");
}

#[test]
fn project_hooks_shape_real_pushes_unless_switched_off() {
    let server = Server::start("");
    let ada = server.developer("ada@example.com");
    create_project(&server, &ada.token, "proj-hooks");
    let src = bare_app(server.dir.path());
    let repo = GitRepo::from_dir(&server.dir.path().join("repo"), &src, &ada.key, server.ssh_port, "proj-hooks");
    add_project_hook(&repo, "10-forbid", "forbid_files", "patterns = \"*.pem,.env\"\n");
    add_project_hook(&repo, "20-procfile", "procfile_gen", "web = \"python3 app.py\"\n");
    add_project_hook(&repo, "30-env", "env_inject", "GREETING = \"from-the-repo\"\n");
    add_project_hook(&repo, "40-notify", "notify_log", "prefix = \"shipped\"\n");
    repo.commit_all("hooks");

    let (ok, output) = repo.push("main");
    assert!(ok, "push: {output}\n{}", server.log());
    assert!(output.contains("[20-procfile] procfile-gen: wrote a Procfile with web"), "{output}");
    assert!(output.contains("[40-notify] shipped: proj-hooks v1 is live"), "{output}");
    assert_eq!(server.app_get("proj-hooks", "/").1.trim(), "from-the-repo from python-hello (version 1)");

    repo.write(".env", "SECRET=1\n");
    repo.commit_all("env file");
    let (ok, output) = repo.push("main");
    assert!(
        !ok && output.contains("project hook 10-forbid (pre-build) rejected the deployment: forbidden file .env"),
        "{output}"
    );
    repo.git(&["rm", "-q", ".env"]);

    // A project hook that is not a component fails the push, naming the file.
    std::fs::write(repo.dir.join(".paastech/hooks/50-broken.wasm"), "not a component").expect("write");
    repo.commit_all("broken hook");
    let (ok, output) = repo.push("main");
    assert!(!ok && output.contains(".paastech/hooks/50-broken.wasm is not a valid hook component"), "{output}");
    assert_eq!(server.app_get("proj-hooks", "/").1.trim(), "from-the-repo from python-hello (version 1)");

    // The operator switches project hooks off: the repo's hooks (broken one included)
    // are ignored, so nothing writes a Procfile and the build cannot tell how to run the app.
    let off = Server::start("[build]\nproject_hooks = false\n");
    let bob = off.developer("bob@example.com");
    create_project(&off, &bob.token, "no-hooks");
    let src = bare_app(off.dir.path());
    let repo = GitRepo::from_dir(&off.dir.path().join("repo"), &src, &bob.key, off.ssh_port, "no-hooks");
    add_project_hook(&repo, "20-procfile", "procfile_gen", "web = \"python3 app.py\"\n");
    std::fs::write(repo.dir.join(".paastech/hooks/50-broken.wasm"), "not a component").expect("write");
    repo.commit_all("hooks");
    let (ok, output) = repo.push("main");
    assert!(!ok && output.contains("cannot tell how to build"), "{output}");
    assert!(!output.contains("procfile-gen") && !output.contains("50-broken"), "{output}");
}

#[test]
fn project_hook_limits_come_from_the_config() {
    // 1 MiB is less than a Rust component's own linear memory: the hook cannot even start.
    let server = Server::start("[build]\nproject_hook_memory_mb = 1\n");
    let ada = server.developer("ada@example.com");
    create_project(&server, &ada.token, "tight-hooks");
    let src = bare_app(server.dir.path());
    let repo = GitRepo::from_dir(&server.dir.path().join("repo"), &src, &ada.key, server.ssh_port, "tight-hooks");
    add_project_hook(&repo, "20-procfile", "procfile_gen", "web = \"python3 app.py\"\n");
    repo.commit_all("hooks");
    let (ok, output) = repo.push("main");
    assert!(!ok, "{output}");
    assert!(output.contains("project hook 20-procfile (pre-build) exceeded its memory limit of 1 MiB"), "{output}");
}

#[test]
fn server_check_names_an_invalid_hook_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("bad.wasm"), "garbage").expect("write");
    let config = dir.path().join("paastech.toml");
    std::fs::write(&config, "[[hooks]]\nname = \"bad\"\npath = \"bad.wasm\"\nstages = [\"pre-build\"]\n")
        .expect("config");
    let output =
        Command::new(paastech_bin()).args(["server", "--check", "--config"]).arg(&config).output().expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("paastech.toml:3") && stderr.contains("bad.wasm"), "{stderr}");

    std::fs::copy(wasm("notify_log"), dir.path().join("bad.wasm")).expect("copy");
    let output =
        Command::new(paastech_bin()).args(["server", "--check", "--config"]).arg(&config).output().expect("run");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn hostile_project_hooks_fail_only_their_push() {
    let server = Server::start("");
    let ada = server.developer("ada@example.com");
    create_project(&server, &ada.token, "hostile");
    create_project(&server, &ada.token, "bystander");
    let dir = server.dir.path();
    let hostile =
        GitRepo::from_dir(&dir.join("hostile"), &example("python-hello"), &ada.key, server.ssh_port, "hostile");
    let bystander =
        GitRepo::from_dir(&dir.join("bystander"), &example("python-hello"), &ada.key, server.ssh_port, "bystander");

    // An infinite loop, stopped at the default 10 s timeout, while another project deploys.
    add_project_hook(&hostile, "looper", "guest_looper", "");
    hostile.commit_all("looper");
    let started = Instant::now();
    let looping = std::thread::spawn(move || (hostile.push("main"), hostile));
    std::thread::sleep(Duration::from_millis(500));
    let (ok, output) = bystander.push("main");
    assert!(ok, "the other project deploys meanwhile: {output}\n{}", server.log());
    assert!(healthy(&server));
    let ((ok, output), hostile) = looping.join().expect("push thread");
    assert!(!ok && output.contains("project hook looper (pre-build) timed out after 10 s"), "{output}");
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    std::fs::remove_file(hostile.dir.join(".paastech/hooks/looper.wasm")).expect("rm");

    let cases = [
        ("hog", "guest_hog", "project hook hog (pre-build) exceeded its memory limit of 64 MiB"),
        ("panicker", "guest_panicker", "hook panicked on purpose"),
    ];
    for (name, component, expected) in cases {
        add_project_hook(&hostile, name, component, "");
        hostile.commit_all(name);
        let (ok, output) = hostile.push("main");
        assert!(!ok && output.contains(expected), "{name}: {output}");
        assert!(healthy(&server), "{name}");
        std::fs::remove_file(hostile.dir.join(format!(".paastech/hooks/{name}.wasm"))).expect("rm");
    }

    // Reading outside the tree (directly, through `..`, through a symlink) is denied.
    add_project_hook(&hostile, "escape", "guest_escape", "");
    std::os::unix::fs::symlink("/etc/passwd", hostile.dir.join("leak")).expect("symlink");
    hostile.commit_all("escape");
    let (ok, output) = hostile.push("main");
    assert!(ok, "{output}");
    for needle in ["denied reading /etc/passwd", "denied reading /source/leak", "denied writing /source/planted.txt"] {
        assert!(output.contains(needle), "{needle}: {output}");
    }
    assert!(!output.contains("escape: READ"), "{output}");
    assert_eq!(server.app_get("hostile", "/").1.trim(), "hello from python-hello (version 4)");
    assert_eq!(server.app_get("bystander", "/").1.trim(), "hello from python-hello (version 1)");
}
