//! The SSH git server end to end: the real `git` and OpenSSH `ssh` binaries against an
//! `SshServer` on 127.0.0.1, with real bare repositories (`GitRepoStore`) and the real
//! pre-receive plumbing (`HookServer`). The hook re-executes this test binary as
//! `internal pre-receive`, exactly as the `paastech` binary does.

#[path = "../../../drivers/git/tests/support/libtest.rs"]
mod libtest;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use paastech_core::drivers::{LogSink, PushHandler, Pusher, RefUpdate, RepoStore};
use paastech_core::{Error, ProjectName, Result};
use paastech_driver_git::GitRepoStore;
use paastech_driver_git::hook::{self, HookServer};
use paastech_ssh::{GitAccess, RepoAccess, SshServer, parse_public_key};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() == 2 && args[0] == "internal" && args[1] == "pre-receive" {
        std::process::exit(hook::run_client());
    }
    let tests: Vec<libtest::TestCase> = vec![
        ("push_builds_then_clone_and_fetch", || Box::pin(push_builds_then_clone_and_fetch())),
        ("failed_build_rejects_push", || Box::pin(failed_build_rejects_push())),
        ("large_push_and_clone", || Box::pin(large_push_and_clone())),
        ("hook_output_streams_live", || Box::pin(hook_output_streams_live())),
        ("unknown_key_is_refused", || Box::pin(unknown_key_is_refused())),
        ("other_users_project_is_refused", || Box::pin(other_users_project_is_refused())),
        ("only_git_commands_run", || Box::pin(only_git_commands_run())),
        ("forwarding_is_refused", || Box::pin(forwarding_is_refused())),
        ("host_key_persists_across_restarts", || Box::pin(host_key_persists_across_restarts())),
        ("slow_logins_are_cut_off", || Box::pin(slow_logins_are_cut_off())),
    ];
    libtest::main(args, tests)
}

const ALICE: i64 = 1;
const BOB: i64 = 2;

/// Projects, their owners and keys, as the composition root would get them from the store.
struct TestAccess {
    keys: HashMap<String, i64>,
    owners: HashMap<String, i64>,
    store: GitRepoStore,
    hooks: HookServer,
}

#[async_trait]
impl GitAccess for TestAccess {
    async fn user_for_key(&self, fingerprint: &str) -> Option<i64> {
        self.keys.get(fingerprint).copied()
    }

    async fn open_repo(
        &self,
        user_id: i64,
        peer: Option<std::net::IpAddr>,
        project: &ProjectName,
        write: bool,
    ) -> Result<RepoAccess> {
        match self.owners.get(project.as_str()) {
            None => return Err(Error::NotFound(format!("no project {project}"))),
            Some(owner) if *owner != user_id => return Err(Error::NotFound(format!("no project {project}"))),
            Some(_) => {}
        }
        let access = RepoAccess::new(self.store.path(project));
        Ok(if write {
            let ticket = self.hooks.register(project, Pusher { user_id, address: peer });
            access.with_env(ticket.env()).with_guard(ticket)
        } else {
            access
        })
    }
}

/// Exports each pushed commit during pre-receive, logs what `app.txt` says, and fails the
/// push when it says FAIL.
struct TestHandler {
    store: GitRepoStore,
    scratch: PathBuf,
    seen: Mutex<Vec<(String, Pusher, Vec<RefUpdate>)>>,
    /// A push whose app.txt says WAIT holds its hook until the test releases it.
    release: tokio::sync::Notify,
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
            log.line(&format!("-----> building {}", update.refname));
            log.line(&format!("app says {}", app.trim()));
            if app.contains("WAIT") {
                log.line("waiting for the test");
                self.release.notified().await;
                log.line("released");
            }
            if app.contains("FAIL") {
                return Err(Error::Invalid("build failed: app.txt asked for it".to_owned()));
            }
        }
        Ok(())
    }
}

struct Key {
    private: PathBuf,
}

fn keygen(dir: &Path, name: &str) -> (Key, String) {
    let private = dir.join(name);
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&private)
        .status()
        .expect("ssh-keygen");
    assert!(status.success());
    let public = std::fs::read_to_string(private.with_extension("pub")).expect("public key");
    let fingerprint = parse_public_key(&public).expect("valid key").fingerprint;
    (Key { private }, fingerprint)
}

struct Fixture {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    store: GitRepoStore,
    handler: Arc<TestHandler>,
    alice: Key,
    bob: Key,
    mallory: Key,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn fixture() -> Fixture {
    fixture_with(|server| server).await
}

/// A fixture whose server is first passed through `configure`.
async fn fixture_with(configure: impl FnOnce(SshServer) -> SshServer) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let (alice, alice_fp) = keygen(root, "alice");
    let (bob, bob_fp) = keygen(root, "bob");
    let (mallory, _) = keygen(root, "mallory");

    let store = GitRepoStore::new(root.join("repos"));
    for name in ["blog", "shop"] {
        store.create(&ProjectName::parse(name).expect("name")).await.expect("create repo");
    }
    let handler = Arc::new(TestHandler {
        store: store.clone(),
        scratch: root.join("scratch"),
        seen: Mutex::new(Vec::new()),
        release: tokio::sync::Notify::new(),
    });
    let hooks = HookServer::bind(root.join("run/hooks.sock"), handler.clone()).expect("hook server");
    let serving = hooks.clone();
    tokio::spawn(async move { serving.serve().await });

    let access = Arc::new(TestAccess {
        keys: HashMap::from([(alice_fp, ALICE), (bob_fp, BOB)]),
        owners: HashMap::from([("blog".to_owned(), ALICE), ("shop".to_owned(), BOB)]),
        store: store.clone(),
        hooks,
    });
    let server = configure(SshServer::new(&root.join("state/ssh_host_ed25519_key"), access).expect("ssh server"));
    let (addr, server) = serve(server).await;
    Fixture { dir, addr, store, handler, alice, bob, mallory, server }
}

async fn start_server(host_key: &Path, access: Arc<dyn GitAccess>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    serve(SshServer::new(host_key, access).expect("ssh server")).await
}

async fn serve(server: SshServer) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    (addr, tokio::spawn(server.serve(listener)))
}

fn ssh_options(key: &Key) -> Vec<String> {
    let key = key.private.to_str().expect("utf-8 path");
    [
        "-F",
        "/dev/null",
        "-i",
        key,
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// git with no user or system configuration, over ssh with `key`.
fn git_command(cwd: &Path, key: &Key, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("git");
    cmd.args(args)
        .current_dir(cwd)
        .env("GIT_SSH_COMMAND", format!("ssh {}", ssh_options(key).join(" ")))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .kill_on_drop(true);
    cmd
}

async fn git(cwd: &Path, key: &Key, args: &[&str]) -> Output {
    tokio::time::timeout(Duration::from_secs(60), git_command(cwd, key, args).output())
        .await
        .expect("git timed out")
        .expect("run git")
}

async fn git_ok(cwd: &Path, key: &Key, args: &[&str]) -> String {
    let out = git(cwd, key, args).await;
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn ssh(key: &Key, addr: SocketAddr, extra: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new("ssh");
    cmd.args(ssh_options(key))
        .args(["-p", &addr.port().to_string()])
        .args(extra)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), cmd.output()).await.expect("ssh timed out").expect("run ssh")
}

fn url(f: &Fixture, project: &str) -> String {
    format!("ssh://git@127.0.0.1:{}/{project}.git", f.addr.port())
}

/// A work tree with one commit whose app.txt says `app`.
async fn work_tree(f: &Fixture, name: &str, app: &str) -> (PathBuf, String) {
    let work = f.dir.path().join(name);
    std::fs::create_dir(&work).expect("work dir");
    git_ok(&work, &f.alice, &["init", "-q", "-b", "main"]).await;
    (work.clone(), commit(f, &work, app).await)
}

async fn commit(f: &Fixture, work: &Path, app: &str) -> String {
    std::fs::write(work.join("app.txt"), app).expect("write");
    git_ok(work, &f.alice, &["add", "-A"]).await;
    git_ok(work, &f.alice, &["commit", "-q", "-m", app]).await;
    git_ok(work, &f.alice, &["rev-parse", "HEAD"]).await
}

fn remote_main(f: &Fixture, project: &str) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(f.store.path(&ProjectName::parse(project).expect("name")))
        .args(["rev-parse", "--verify", "-q", "refs/heads/main"])
        .output()
        .expect("git rev-parse");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

async fn push_builds_then_clone_and_fetch() {
    let f = fixture().await;
    let (work, head) = work_tree(&f, "work", "hello over ssh").await;
    let out = git(&work, &f.alice, &["push", &url(&f, "blog"), "main"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "push failed: {stderr}");
    assert!(stderr.contains("remote: -----> building refs/heads/main"), "{stderr}");
    assert!(stderr.contains("remote: app says hello over ssh"), "{stderr}");
    assert_eq!(remote_main(&f, "blog").as_deref(), Some(head.as_str()));

    let seen = f.handler.seen.lock().expect("lock").clone();
    let expected = vec![RefUpdate { refname: "refs/heads/main".into(), old: "0".repeat(40), new: head.clone() }];
    // The hook learns who pushed, and from where (the SSH peer, for the audit log).
    let loopback = Some(std::net::IpAddr::from([127, 0, 0, 1]));
    assert_eq!(seen, vec![("blog".to_owned(), Pusher { user_id: ALICE, address: loopback }, expected)]);
    let exported = f.dir.path().join("scratch").join(&head).join("app.txt");
    assert_eq!(std::fs::read_to_string(exported).expect("exported during the hook"), "hello over ssh");

    // Clone, then fetch a second push.
    let clone = f.dir.path().join("clone");
    git_ok(f.dir.path(), &f.alice, &["clone", "-q", &url(&f, "blog"), clone.to_str().expect("utf-8")]).await;
    assert_eq!(std::fs::read_to_string(clone.join("app.txt")).expect("cloned"), "hello over ssh");
    let second = commit(&f, &work, "second").await;
    // The spaced command form and a path without `.git` work as well.
    let bare_url = format!("ssh://git@127.0.0.1:{}/blog", f.addr.port());
    git_ok(&work, &f.alice, &["push", "--receive-pack=git receive-pack", &bare_url, "main"]).await;
    git_ok(&clone, &f.alice, &["fetch", "-q", "origin"]).await;
    assert_eq!(git_ok(&clone, &f.alice, &["rev-parse", "origin/main"]).await, second);
    // git asks for wire protocol v2 (GIT_PROTOCOL, sent as an SSH env request) and gets it.
    let out = git_command(&clone, &f.alice, &["-c", "protocol.version=2", "ls-remote", "origin"])
        .env("GIT_TRACE_PACKET", "1")
        .output()
        .await
        .expect("git ls-remote");
    let trace = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{trace}");
    assert!(trace.contains("< version 2"), "the server speaks protocol v2: {trace}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&second));
}

async fn failed_build_rejects_push() {
    let f = fixture().await;
    let (work, good) = work_tree(&f, "work", "fine").await;
    git_ok(&work, &f.alice, &["push", "-q", &url(&f, "blog"), "main"]).await;
    commit(&f, &work, "please FAIL").await;
    let out = git(&work, &f.alice, &["push", &url(&f, "blog"), "main"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "push should fail: {stderr}");
    assert!(stderr.contains("remote: app says please FAIL"), "{stderr}");
    assert!(stderr.contains("remote: push rejected: build failed: app.txt asked for it"), "{stderr}");
    assert!(stderr.contains("pre-receive hook declined"), "{stderr}");
    assert_eq!(remote_main(&f, "blog").as_deref(), Some(good.as_str()), "the ref must not move");
}

/// Log lines reach the pusher while the handler is still running, not when it ends: the
/// handler waits until the test has read its first line from git's stderr.
async fn hook_output_streams_live() {
    use tokio::io::AsyncReadExt;
    let f = fixture().await;
    let (work, head) = work_tree(&f, "work", "WAIT").await;
    let mut push = git_command(&work, &f.alice, &["push", &url(&f, "blog"), "main"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("git push");
    let mut stderr = push.stderr.take().expect("piped");
    let mut seen = Vec::new();
    let waiting = async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("remote: waiting for the test") {
            let n = stderr.read(&mut buf).await.expect("read stderr");
            assert!(n > 0, "git ended first: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(30), waiting).await.expect("the log line never streamed");
    assert_eq!(remote_main(&f, "blog"), None, "the ref moved before the handler finished");
    f.handler.release.notify_one();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).await.expect("read stderr");
    assert!(push.wait().await.expect("wait").success(), "{rest}");
    assert!(rest.contains("remote: released"), "{rest}");
    assert_eq!(remote_main(&f, "blog").as_deref(), Some(head.as_str()));
}

/// Many times the SSH window in both directions: flow control and the end-of-stream order
/// must hold for real packs, not only for tiny ones.
async fn large_push_and_clone() {
    let f = fixture().await;
    let (work, _) = work_tree(&f, "work", "big").await;
    // Incompressible, so the pack is as large as the file.
    let data: Vec<u8> = (0..12 * 1024 * 1024).map(|_| rand_byte()).collect();
    std::fs::write(work.join("blob.bin"), &data).expect("write blob");
    let head = commit(&f, &work, "big").await;
    git_ok(&work, &f.alice, &["push", "-q", &url(&f, "blog"), "main"]).await;
    assert_eq!(remote_main(&f, "blog").as_deref(), Some(head.as_str()));
    let clone = f.dir.path().join("clone");
    git_ok(f.dir.path(), &f.alice, &["clone", "-q", &url(&f, "blog"), clone.to_str().expect("utf-8")]).await;
    assert!(std::fs::read(clone.join("blob.bin")).expect("cloned blob") == data);
}

/// A cheap xorshift: test data only needs to be incompressible, not secret.
fn rand_byte() -> u8 {
    use std::cell::Cell;
    thread_local!(static STATE: Cell<u64> = const { Cell::new(0x9e37_79b9_7f4a_7c15) });
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x >> 24) as u8
    })
}

async fn unknown_key_is_refused() {
    let f = fixture().await;
    let (work, _) = work_tree(&f, "work", "hello").await;
    let out = git(&work, &f.mallory, &["push", &url(&f, "blog"), "main"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("Permission denied (publickey)"), "{stderr}");
    assert_eq!(remote_main(&f, "blog"), None);
    assert!(f.handler.seen.lock().expect("lock").is_empty());
}

async fn other_users_project_is_refused() {
    let f = fixture().await;
    let (work, _) = work_tree(&f, "work", "hello").await;
    // Bob owns "shop", not "blog"; "nothing" does not exist. Same answer for both.
    for (project, args) in [
        ("blog", vec!["push".to_owned(), url(&f, "blog"), "main".to_owned()]),
        ("blog", vec!["fetch".to_owned(), url(&f, "blog")]),
        ("nothing", vec!["push".to_owned(), url(&f, "nothing"), "main".to_owned()]),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = git(&work, &f.bob, &args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{project}: {stderr}");
        assert!(stderr.contains("project not found or access denied"), "{project}: {stderr}");
    }
    assert_eq!(remote_main(&f, "blog"), None);
    // Bob can push his own.
    git_ok(&work, &f.bob, &["push", "-q", &url(&f, "shop"), "main"]).await;
    assert!(remote_main(&f, "shop").is_some());
}

async fn only_git_commands_run() {
    let f = fixture().await;
    let host = "git@127.0.0.1";
    // (arguments, exit status, message on stderr)
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec![host, "ls"], 1, "unsupported command"),
        (vec![host, "git-receive-pack 'blog.git'; touch /tmp/paastech-pwned"], 1, "invalid repository path"),
        (vec![host, "git-upload-pack '../shop.git'"], 1, "invalid repository path"),
        (vec![host, "git-upload-archive 'blog.git'"], 1, "unsupported command"),
        (vec!["-T", host], 1, "there is no shell"),
        (vec!["-s", host, "sftp"], 1, "subsystems are not supported"),
        // The pty request is refused; OpenSSH gives up itself when a terminal was forced.
        (vec!["-tt", host], 255, "PTY allocation request failed"),
        (vec!["-tt", host, "git-upload-pack 'blog.git'"], 255, "PTY allocation request failed"),
    ];
    for (args, code, message) in cases {
        let out = ssh(&f.alice, f.addr, &args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    assert!(!Path::new("/tmp/paastech-pwned").exists());
}

async fn forwarding_is_refused() {
    let f = fixture().await;
    let host = "git@127.0.0.1";
    // direct-tcpip (ssh -W / -L): the channel open is refused.
    let out = ssh(&f.alice, f.addr, &["-W", &format!("127.0.0.1:{}", f.addr.port()), host]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("stdio forwarding failed"), "{stderr}");
    // tcpip-forward (ssh -R): the global request is refused.
    let out = ssh(&f.alice, f.addr, &["-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:1", "-N", host]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("remote port forwarding failed"), "{stderr}");
}

/// The server's host key as a client sees it, via ssh-keyscan.
async fn scanned_fingerprint(addr: SocketAddr) -> String {
    let out = tokio::process::Command::new("ssh-keyscan")
        .args(["-t", "ed25519", "-p", &addr.port().to_string(), "127.0.0.1"])
        .output()
        .await
        .expect("ssh-keyscan");
    let scanned = temp_file(&out.stdout);
    let out = std::process::Command::new("ssh-keygen").arg("-lf").arg(scanned.path()).output().expect("ssh-keygen");
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    listing.split_whitespace().nth(1).unwrap_or_else(|| panic!("no key scanned: {listing}")).to_owned()
}

fn temp_file(content: &[u8]) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(content).expect("write");
    file
}

async fn host_key_persists_across_restarts() {
    use std::os::unix::fs::PermissionsExt;
    let f = fixture().await;
    let key_path = f.dir.path().join("state/ssh_host_ed25519_key");
    let mode = std::fs::metadata(&key_path).expect("host key written").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let first = scanned_fingerprint(f.addr).await;

    let access: Arc<dyn GitAccess> = Arc::new(TestAccess {
        keys: HashMap::new(),
        owners: HashMap::new(),
        store: f.store.clone(),
        hooks: HookServer::bind(f.dir.path().join("run2/hooks.sock"), f.handler.clone()).expect("hooks"),
    });
    let expected = SshServer::new(&key_path, access.clone()).expect("server").host_key_fingerprint().to_owned();
    let (addr, server) = start_server(&key_path, access).await;
    let second = scanned_fingerprint(addr).await;
    server.abort();
    assert!(first.starts_with("SHA256:"), "{first}");
    assert_eq!(first, second);
    assert_eq!(first, expected);
}

/// What a raw TCP client gets from the server: its bytes until the server closes, or
/// `None` if it is still open after `within`.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| got)
}

async fn slow_logins_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Long enough for a real login on a loaded machine, short enough for a test.
    const GRACE: Duration = Duration::from_secs(3);
    let f = fixture_with(|server| server.with_login_limits(GRACE, 2)).await;
    let started = tokio::time::Instant::now();
    // One client says nothing at all; another sends its version and then nothing.
    let mut silent = tokio::net::TcpStream::connect(f.addr).await.expect("connect");
    let mut stalled = tokio::net::TcpStream::connect(f.addr).await.expect("connect");
    stalled.write_all(b"SSH-2.0-stalled\r\n").await.expect("send version");
    let mut banner = [0u8; 17];
    stalled.read_exact(&mut banner).await.expect("server version");
    assert_eq!(&banner, b"SSH-2.0-PaaSTech\r");

    // Both hold the two places for unauthenticated connections: a third is closed at once.
    let mut third = tokio::net::TcpStream::connect(f.addr).await.expect("connect");
    let got = read_until_closed(&mut third, GRACE / 2).await;
    assert_eq!(got.as_deref(), Some(&b""[..]), "the third connection is closed without a word");

    // Past the grace time both are cut off, whatever they do not send.
    let got = read_until_closed(&mut silent, GRACE * 3).await.expect("the silent client is cut off");
    assert!(got.starts_with(b"SSH-2.0-PaaSTech"), "{}", String::from_utf8_lossy(&got));
    assert!(read_until_closed(&mut stalled, GRACE * 3).await.is_some(), "the stalled client is cut off");
    assert!(started.elapsed() >= GRACE, "not before the grace time: {:?}", started.elapsed());

    // Their places are free again, and a session that authenticated outlives the grace time.
    let mut fetch = tokio::process::Command::new("ssh")
        .args(ssh_options(&f.alice))
        .args(["-p", &f.addr.port().to_string(), "git@127.0.0.1", "git-upload-pack 'blog.git'"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("ssh");
    let mut stdout = fetch.stdout.take().expect("stdout");
    let mut advertised = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), stdout.read_exact(&mut advertised))
        .await
        .expect("upload-pack answers in time")
        .expect("upload-pack's advertisement");
    tokio::time::sleep(GRACE + Duration::from_secs(1)).await;
    // A flush packet: "nothing wanted", and upload-pack ends cleanly.
    let mut stdin = fetch.stdin.take().expect("stdin");
    stdin.write_all(b"0000").await.expect("the session is still open");
    drop(stdin);
    let mut rest = Vec::new();
    let _ = stdout.read_to_end(&mut rest).await;
    let out = tokio::time::timeout(Duration::from_secs(10), fetch.wait_with_output()).await.expect("ssh ends");
    let out = out.expect("ssh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
