//! The pre-receive plumbing with the real `git` binary: pushes over git's local transport run
//! the installed hook, which re-executes this test binary as `internal pre-receive` (as the
//! real binary does), which talks to a real `HookServer` over its Unix socket.

#[path = "support/libtest.rs"]
mod libtest;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use paastech_core::drivers::{LogSink, PushHandler, Pusher, RefUpdate, RepoStore};
use paastech_core::{Error, ProjectName, Result};
use paastech_driver_git::GitRepoStore;
use paastech_driver_git::hook::{self, HookServer};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() == 2 && args[0] == "internal" && args[1] == "pre-receive" {
        std::process::exit(hook::run_client());
    }
    let tests: Vec<libtest::TestCase> = vec![
        ("push_runs_handler_and_export_reads_quarantine", || Box::pin(push_runs_handler_and_export_reads_quarantine())),
        ("handler_error_rejects_push", || Box::pin(handler_error_rejects_push())),
        ("unknown_or_revoked_token_is_refused", || Box::pin(unknown_or_revoked_token_is_refused())),
        ("push_without_the_server_is_refused", || Box::pin(push_without_the_server_is_refused())),
        ("socket_and_parent_are_private", || Box::pin(socket_and_parent_are_private())),
    ];
    libtest::main(args, tests)
}

/// Records pushes, exports each pushed commit while the hook runs, and fails the push when
/// the exported `app.txt` says FAIL.
struct TestHandler {
    store: GitRepoStore,
    scratch: PathBuf,
    seen: Mutex<Vec<(String, Pusher, Vec<RefUpdate>)>>,
}

#[async_trait]
impl PushHandler for TestHandler {
    async fn pre_receive(
        &self,
        project: &ProjectName,
        pusher: Pusher,
        updates: &[RefUpdate],
        log: Arc<dyn LogSink>,
    ) -> Result<()> {
        self.seen.lock().expect("lock").push((project.to_string(), pusher, updates.to_vec()));
        for update in updates.iter().filter(|u| !u.is_delete()) {
            let dest = self.scratch.join(&update.new);
            self.store.export(project, &update.new, &dest).await?;
            let app = std::fs::read_to_string(dest.join("app.txt")).map_err(|e| Error::internal("read", e))?;
            log.line(&format!("building {}", update.refname));
            log.line(&format!("app says {}", app.trim()));
            if app.contains("FAIL") {
                return Err(Error::Invalid("build failed: app.txt asked for it".to_owned()));
            }
        }
        Ok(())
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: GitRepoStore,
    handler: Arc<TestHandler>,
    hooks: HookServer,
    project: ProjectName,
    work: PathBuf,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_owned();
    let store = GitRepoStore::new(root.join("repos"));
    let project = ProjectName::parse("blog").expect("name");
    store.create(&project).await.expect("create repo");
    let handler =
        Arc::new(TestHandler { store: store.clone(), scratch: root.join("scratch"), seen: Mutex::new(Vec::new()) });
    let hooks = HookServer::bind(root.join("run/hook.sock"), handler.clone()).expect("bind hook server");
    let serving = hooks.clone();
    tokio::spawn(async move { serving.serve().await });
    let work = root.join("work");
    std::fs::create_dir(&work).expect("work dir");
    git(&work, &["init", "-q", "-b", "main"]).await;
    Fixture { _dir: dir, root, store, handler, hooks, project, work }
}

/// Runs git with no user or system configuration.
fn git_command(cwd: &Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("git");
    cmd.args(args)
        .current_dir(cwd)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .env_remove(hook::ENV_EXE)
        .env_remove(hook::ENV_SOCKET)
        .env_remove(hook::ENV_TOKEN);
    cmd
}

async fn git(cwd: &Path, args: &[&str]) -> String {
    let out = git_command(cwd, args).output().await.expect("run git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn commit(work: &Path, app: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(work.join("app.txt"), app).expect("write app");
    std::fs::create_dir_all(work.join("bin")).expect("bin dir");
    std::fs::write(work.join("bin/run"), "#!/bin/sh\necho hi\n").expect("write run");
    std::fs::set_permissions(work.join("bin/run"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    if !work.join("link").exists() {
        std::os::unix::fs::symlink("app.txt", work.join("link")).expect("symlink");
    }
    git(work, &["add", "-A"]).await;
    git(work, &["commit", "-q", "-m", app]).await;
    git(work, &["rev-parse", "HEAD"]).await
}

async fn push(f: &Fixture, env: &[(String, String)]) -> Output {
    let remote = f.store.path(&f.project);
    let remote = remote.to_str().expect("utf-8 path");
    let mut cmd = git_command(&f.work, &["push", remote, "main"]);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.output().await.expect("run git push")
}

fn remote_main(f: &Fixture) -> Option<String> {
    let repo = git2::Repository::open_bare(f.store.path(&f.project)).expect("open");
    repo.refname_to_id("refs/heads/main").ok().map(|id| id.to_string())
}

async fn push_runs_handler_and_export_reads_quarantine() {
    let f = fixture().await;
    let head = commit(&f.work, "hello").await;
    let ticket = f.hooks.register(&f.project, Pusher { user_id: 7, address: None });
    let out = push(&f, &ticket.env()).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "push failed: {stderr}");
    assert!(stderr.contains("remote: building refs/heads/main"), "{stderr}");
    assert!(stderr.contains("remote: app says hello"), "{stderr}");
    assert_eq!(remote_main(&f).as_deref(), Some(head.as_str()));

    let seen = f.handler.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1);
    let (project, user, updates) = &seen[0];
    assert_eq!((project.as_str(), user.user_id), ("blog", 7));
    assert_eq!(updates, &vec![RefUpdate { refname: "refs/heads/main".into(), old: "0".repeat(40), new: head.clone() }]);

    // What the handler exported inside the hook: content, exec bit, symlink, no .git.
    use std::os::unix::fs::PermissionsExt;
    let exported = f.root.join("scratch").join(&head);
    assert_eq!(std::fs::read_to_string(exported.join("app.txt")).expect("app"), "hello");
    let mode = std::fs::metadata(exported.join("bin/run")).expect("run").permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    let mode = std::fs::metadata(exported.join("app.txt")).expect("app").permissions().mode();
    assert_eq!(mode & 0o111, 0);
    assert_eq!(std::fs::read_link(exported.join("link")).expect("link"), PathBuf::from("app.txt"));
    assert!(!exported.join(".git").exists());

    // After the push the objects are in the store proper: export works from outside a hook.
    let again = f.root.join("again");
    f.store.export(&f.project, &head, &again).await.expect("export after push");
    assert_eq!(std::fs::read_to_string(again.join("app.txt")).expect("app"), "hello");
}

async fn handler_error_rejects_push() {
    let f = fixture().await;
    let good = commit(&f.work, "fine").await;
    let ticket = f.hooks.register(&f.project, Pusher { user_id: 1, address: None });
    let out = push(&f, &ticket.env()).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    drop(ticket);

    commit(&f.work, "please FAIL").await;
    let ticket = f.hooks.register(&f.project, Pusher { user_id: 1, address: None });
    let out = push(&f, &ticket.env()).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "push should fail: {stderr}");
    assert!(stderr.contains("remote: app says please FAIL"), "{stderr}");
    assert!(stderr.contains("remote: push rejected: build failed: app.txt asked for it"), "{stderr}");
    assert!(stderr.contains("pre-receive hook declined"), "{stderr}");
    assert_eq!(remote_main(&f).as_deref(), Some(good.as_str()), "the ref must not move");
}

async fn unknown_or_revoked_token_is_refused() {
    let f = fixture().await;
    commit(&f.work, "hello").await;
    let ticket = f.hooks.register(&f.project, Pusher { user_id: 1, address: None });
    let mut env = ticket.env();
    drop(ticket);
    let out = push(&f, &env).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("not authorized"), "{stderr}");

    for (key, value) in &mut env {
        if key == hook::ENV_TOKEN {
            *value = "f".repeat(64);
        }
    }
    let out = push(&f, &env).await;
    assert!(!out.status.success());
    assert!(f.handler.seen.lock().expect("lock").is_empty(), "the handler must not run");
    assert_eq!(remote_main(&f), None);

    // A token is good for one hook run only.
    let ticket = f.hooks.register(&f.project, Pusher { user_id: 1, address: None });
    let out = push(&f, &ticket.env()).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    commit(&f.work, "second").await;
    let out = push(&f, &ticket.env()).await;
    assert!(!out.status.success(), "a token must not be reused");
}

async fn push_without_the_server_is_refused() {
    let f = fixture().await;
    commit(&f.work, "hello").await;
    let out = push(&f, &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("only accepted through the PaaSTech git server"), "{stderr}");
    assert_eq!(remote_main(&f), None);
}

async fn socket_and_parent_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let f = fixture().await;
    let socket = f.hooks.socket_path();
    let mode = std::fs::metadata(socket).expect("socket").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let mode = std::fs::metadata(socket.parent().expect("parent")).expect("dir").permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    // A second server on a live socket is a conflict, not a silent takeover.
    let err = HookServer::bind(socket, f.handler.clone()).err().expect("conflict");
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
}
