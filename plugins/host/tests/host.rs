//! The hook host with real wasmtime running real components: the sample hooks of
//! `examples/hooks` and the hostile guests of `tests/guests` (built for wasm32-wasip2 by
//! `scripts/setup/40-wasm.sh`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paastech_core::ProjectName;
use paastech_core::drivers::{Artifact, LogSink};
use paastech_core::hooks::{BuildHooks, HookContext};
use paastech_plugins::{HookHost, HookLimits, HookSpec, HostOptions, PluginError, Stage};

/// A built component; fails with what to run when it is missing.
fn wasm(name: &str) -> PathBuf {
    let dir = std::env::var_os("PAASTECH_HOOK_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/hooks/wasm32-wasip2/release"));
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the hook components with `bash scripts/setup/40-wasm.sh` (or set PAASTECH_HOOK_WASM_DIR)",
        path.display()
    );
    path
}

#[derive(Default)]
struct Lines(Mutex<Vec<String>>);

impl LogSink for Lines {
    fn line(&self, line: &str) {
        self.0.lock().expect("lines").push(line.to_owned());
    }
}

impl Lines {
    fn text(&self) -> String {
        self.0.lock().expect("lines").join("\n")
    }
}

fn spec(name: &str, file: &str, stages: &[Stage], config: &[(&str, &str)]) -> HookSpec {
    HookSpec {
        name: name.into(),
        path: wasm(file),
        stages: stages.to_vec(),
        config: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        limits: HookLimits::default(),
    }
}

fn host(specs: Vec<HookSpec>) -> HookHost {
    HookHost::new(specs, HostOptions { project_hooks: false, ..HostOptions::default() }).expect("hook host")
}

/// A source tree with these files, and an empty output directory beside it.
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new(files: &[(&str, &[u8])]) -> Tree {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("src")).expect("src");
        std::fs::create_dir_all(dir.path().join("out")).expect("out");
        for (path, content) in files {
            let path = dir.path().join("src").join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
            std::fs::write(path, content).expect("write");
        }
        Tree { dir }
    }

    fn source(&self) -> PathBuf {
        self.dir.path().join("src")
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn ctx(&self, project: &str) -> HookContext {
        HookContext {
            project: ProjectName::parse(project).expect("project name"),
            version: 3,
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            source: Some(self.source()),
        }
    }
}

#[tokio::test]
async fn forbid_files_names_the_first_forbidden_file() {
    let host = host(vec![spec("forbid", "forbid_files", &[Stage::PreBuild], &[("patterns", "*.pem, .env")])]);
    let dirty = Tree::new(&[("app.py", b"print()"), ("config/b.pem", b"k"), ("config/a.pem", b"k")]);
    let log = Lines::default();
    let err = host.pre_build(&dirty.ctx("blog"), &dirty.out(), &log).await.expect_err("a forbidden file");
    let shown = err.to_string();
    assert!(shown.contains("forbidden file config/a.pem") && shown.contains("forbid"), "{shown}");

    let clean = Tree::new(&[("app.py", b"print()"), ("env.txt", b"")]);
    let log = Lines::default();
    host.pre_build(&clean.ctx("blog"), &clean.out(), &log).await.expect("a clean tree passes");
    assert!(log.text().contains("[forbid] forbid-files: 2 files checked"), "{}", log.text());
}

#[tokio::test]
async fn procfile_gen_writes_a_procfile_only_when_there_is_none() {
    let host = host(vec![spec("procfile", "procfile_gen", &[Stage::PreBuild], &[("web", "python3 app.py")])]);
    let tree = Tree::new(&[("app.py", b"print()")]);
    let log = Lines::default();
    host.pre_build(&tree.ctx("blog"), &tree.out(), &log).await.expect("pre-build");
    let procfile = std::fs::read_to_string(tree.out().join("Procfile")).expect("a Procfile in out");
    assert_eq!(procfile, "web: python3 app.py\n");
    assert!(!tree.source().join("Procfile").exists(), "the source tree is not written");

    let tree = Tree::new(&[("Procfile", b"web: ./run")]);
    let log = Lines::default();
    host.pre_build(&tree.ctx("blog"), &tree.out(), &log).await.expect("pre-build");
    assert!(!tree.out().join("Procfile").exists());
    assert!(log.text().contains("has a Procfile"), "{}", log.text());
}

#[tokio::test]
async fn env_inject_adds_env_at_pre_deploy_and_notify_log_logs_the_version() {
    let host = host(vec![
        spec("env", "env_inject", &[Stage::PreDeploy], &[("GREETING", "hello"), ("REGION", "eu")]),
        spec("notify", "notify_log", &[Stage::PostDeploy], &[]),
    ]);
    let tree = Tree::new(&[]);
    let log = Lines::default();
    let env = host.pre_deploy(&tree.ctx("blog"), &["SECRET".into()], &["web".into()], &log).await.expect("pre-deploy");
    assert_eq!(env.get("GREETING").map(String::as_str), Some("hello"));
    assert_eq!(env.get("REGION").map(String::as_str), Some("eu"));
    // Stages a hook is not configured for do not run it.
    assert!(host.pre_build(&tree.ctx("blog"), &tree.out(), &log).await.expect("pre-build").is_empty());
    host.post_deploy(&tree.ctx("blog"), &log).await;
    assert!(log.text().contains("notify-log: blog v3 is live (0123456)"), "{}", log.text());
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_at_the_timeout_and_the_host_carries_on() {
    let mut looper = spec("looper", "guest_looper", &Stage::ALL, &[]);
    looper.limits.timeout = Duration::from_millis(300);
    let host = Arc::new(host(vec![looper, spec("notify", "notify_log", &[Stage::PostDeploy], &[])]));
    let tree = Tree::new(&[]);
    let log = Lines::default();
    let started = Instant::now();
    let err = host.pre_build(&tree.ctx("blog"), &tree.out(), &log).await.expect_err("a timeout");
    assert!(started.elapsed() < Duration::from_secs(5), "stopped late: {:?}", started.elapsed());
    assert!(err.to_string().contains("operator hook looper (pre-build) timed out after 300 ms"), "{err}");
    assert!(log.text().contains("looper: spinning forever"), "{}", log.text());

    // Post-deploy cannot veto: a timeout there is only logged, and later hooks still run.
    let log = Lines::default();
    host.post_deploy(&tree.ctx("blog"), &log).await;
    assert!(log.text().contains("timed out") && log.text().contains("v3 is live"), "{}", log.text());
}

#[tokio::test]
async fn unbounded_allocation_is_stopped_at_the_memory_cap() {
    let mut hog = spec("hog", "guest_hog", &[Stage::PreBuild], &[]);
    hog.limits.memory_bytes = 16 * 1024 * 1024;
    let host = host(vec![hog]);
    let tree = Tree::new(&[]);
    let log = Lines::default();
    let err = host.pre_build(&tree.ctx("blog"), &tree.out(), &log).await.expect_err("the memory cap");
    assert!(err.to_string().contains("hook hog (pre-build) exceeded its memory limit of 16 MiB"), "{err}");
}

#[tokio::test]
async fn reading_or_writing_outside_the_sandbox_is_denied() {
    let host = host(vec![spec("escape", "guest_escape", &[Stage::PreBuild], &[])]);
    let tree = Tree::new(&[("app.py", b"")]);
    std::os::unix::fs::symlink("/etc/passwd", tree.source().join("leak")).expect("symlink");
    let log = Lines::default();
    let result = host.pre_build(&tree.ctx("blog"), &tree.out(), &log).await;
    let text = log.text();
    assert!(result.is_ok(), "{result:?}\n{text}");
    for needle in [
        "denied reading /etc/passwd",
        "denied reading /source/../etc/passwd",
        "denied reading /source/leak",
        "denied writing /source/planted.txt",
        "no environment variables visible",
        "denied connecting",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    assert!(!tree.source().join("planted.txt").exists());
}

#[tokio::test]
async fn a_panic_fails_with_its_message_and_stdout_reaches_the_log() {
    let host = host(vec![spec("panicker", "guest_panicker", &[Stage::PreBuild], &[])]);
    let tree = Tree::new(&[]);
    let log = Lines::default();
    let err = host.pre_build(&tree.ctx("blog"), &tree.out(), &log).await.expect_err("a panic");
    let shown = err.to_string();
    assert!(shown.contains("hook panicker (pre-build)") && shown.contains("hook panicked on purpose"), "{shown}");
    assert!(log.text().contains("[panicker] panicker: about to panic for blog"), "{}", log.text());
}

#[tokio::test]
async fn a_hostile_hook_does_not_hold_up_another_project() {
    let mut looper = spec("looper", "guest_looper", &[Stage::PreBuild], &[]);
    looper.limits.timeout = Duration::from_secs(3);
    let slow = Arc::new(host(vec![looper]));
    let fast = Arc::new(host(vec![spec("trivial", "guest_trivial", &Stage::ALL, &[])]));
    let tree = Tree::new(&[]);
    let ctx = tree.ctx("slow");
    let out = tree.out();
    let stuck = tokio::spawn({
        let slow = Arc::clone(&slow);
        async move { slow.pre_build(&ctx, &out, &Lines::default()).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let other = Tree::new(&[]);
    let started = Instant::now();
    fast.pre_build(&other.ctx("fast"), &other.out(), &Lines::default()).await.expect("trivial hook");
    assert!(started.elapsed() < Duration::from_secs(2), "blocked for {:?}", started.elapsed());
    assert!(!stuck.is_finished(), "the looper should still be running");
    assert!(stuck.await.expect("join").is_err());
}

#[tokio::test]
async fn missing_and_invalid_files_are_named() {
    let mut missing = spec("trivial", "guest_trivial", &[Stage::PreBuild], &[]);
    missing.path = PathBuf::from("/nonexistent/hook.wasm");
    let err = HookHost::new(vec![missing], HostOptions::default()).err().expect("missing file");
    assert!(matches!(err, PluginError::Read { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/hook.wasm"), "{err}");

    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm not really").expect("write");
    let mut invalid = spec("bad", "guest_trivial", &[Stage::PreBuild], &[]);
    invalid.path = garbage.clone();
    let err = HookHost::new(vec![invalid], HostOptions::default()).err().expect("invalid file");
    assert!(matches!(err, PluginError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains(&garbage.display().to_string()), "{err}");
}

#[tokio::test]
async fn project_hooks_run_after_the_operators_with_their_own_config() {
    let tree = Tree::new(&[("app.py", b"")]);
    let hooks = tree.source().join(".paastech/hooks");
    std::fs::create_dir_all(&hooks).expect("hooks dir");
    std::fs::copy(wasm("procfile_gen"), hooks.join("procfile.wasm")).expect("copy");
    std::fs::write(hooks.join("procfile.toml"), "web = \"./serve --port $PORT\"\n").expect("config");
    std::fs::copy(wasm("notify_log"), hooks.join("notify.wasm")).expect("copy");
    let operator = vec![spec("op-notify", "notify_log", &[Stage::PostDeploy], &[("prefix", "operator")])];
    let host = HookHost::new(operator.clone(), HostOptions::default()).expect("host");
    let log = Lines::default();
    host.pre_build(&tree.ctx("blog"), &tree.out(), &log).await.expect("pre-build");
    assert_eq!(std::fs::read_to_string(tree.out().join("Procfile")).expect("Procfile"), "web: ./serve --port $PORT\n");
    // Later stages reuse what pre-build found, even without a source tree.
    let mut ctx = tree.ctx("blog");
    ctx.source = None;
    host.post_deploy(&ctx, &log).await;
    let text = log.text();
    let (op, project) = (text.find("operator: blog v3").expect(&text), text.find("notify-log: blog v3").expect(&text));
    assert!(op < project, "the operator's hook runs first:\n{text}");

    // Switched off by the operator: ignored.
    let off = HookHost::new(operator, HostOptions { project_hooks: false, ..HostOptions::default() }).expect("host");
    let other = Tree::new(&[]);
    std::fs::create_dir_all(other.source().join(".paastech/hooks")).expect("dir");
    std::fs::copy(wasm("procfile_gen"), other.source().join(".paastech/hooks/p.wasm")).expect("copy");
    off.pre_build(&other.ctx("blog"), &other.out(), &Lines::default()).await.expect("pre-build");
    assert!(!other.out().join("Procfile").exists());
}

#[tokio::test]
async fn an_invalid_project_hook_fails_naming_the_file() {
    let tree = Tree::new(&[(".paastech/hooks/broken.wasm", b"not wasm at all")]);
    let host = HookHost::new(Vec::new(), HostOptions::default()).expect("host");
    let err = host.pre_build(&tree.ctx("blog"), &tree.out(), &Lines::default()).await.expect_err("invalid");
    assert!(err.to_string().contains(".paastech/hooks/broken.wasm is not a valid hook component"), "{err}");
}

#[tokio::test]
async fn post_build_sees_the_build() {
    let host = host(vec![spec("trivial", "guest_trivial", &[Stage::PostBuild], &[])]);
    let tree = Tree::new(&[]);
    let artifact = Artifact {
        reference: tree.source().display().to_string(),
        processes: BTreeMap::from([("web".to_owned(), "./serve".to_owned())]),
    };
    host.post_build(&tree.ctx("blog"), &artifact, &Lines::default()).await.expect("post-build");
}
