//! Support for the end-to-end journeys: build and start a real `paastech server` process
//! on free loopback ports, talk to it over real HTTP, run the real CLI against it.

pub mod conformance;
pub mod conformance_tty;
pub mod engines;
pub mod pebble;
pub mod smtp;
pub mod swarm;
pub mod web;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub mod webdriver;

/// The `paastech` binary of this workspace, built once per test process.
pub fn paastech_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // Test executables live in target/<profile>/deps; the binary one level up.
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile> directory");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "paastech-cli", "--bin", "paastech"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build for the paastech binary");
        assert!(status.success(), "building the paastech binary failed");
        let bin = profile_dir.join("paastech");
        assert!(bin.exists(), "no paastech binary at {}", bin.display());
        reachable_copy(&bin)
    })
}

/// `bin`, or when a directory above it is closed to other users (a checkout under
/// `/root`), a copy of it where they can run it: the servers the tests start run apps
/// and builds as users of their own, and a static site's web process is this binary.
/// One copy per build of the binary (named by its size and time), shared by the test
/// processes, made under another name and renamed into place.
fn reachable_copy(bin: &Path) -> PathBuf {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let open_to_others =
        |path: &Path| path.ancestors().all(|dir| std::fs::metadata(dir).is_ok_and(|m| m.mode() & 0o001 != 0));
    if open_to_others(bin) {
        return bin.to_owned();
    }
    let meta = std::fs::metadata(bin).expect("the paastech binary's metadata");
    let dir = std::env::temp_dir().join("paastech-test-bin").join(format!(
        "{}-{}",
        meta.len(),
        meta.mtime_nsec() + meta.mtime() * 1_000_000_000
    ));
    let copy = dir.join("paastech");
    if !copy.exists() {
        std::fs::create_dir_all(&dir).expect("a directory for the binary's copy");
        for made in dir.ancestors().take(2) {
            std::fs::set_permissions(made, std::fs::Permissions::from_mode(0o755))
                .expect("opening the copy's directory");
        }
        let partial = dir.join(format!("paastech.{}", std::process::id()));
        std::fs::copy(bin, &partial).expect("copying the paastech binary where app users can run it");
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)).expect("making the copy runnable");
        std::fs::rename(&partial, &copy).expect("putting the copy in place");
        // Copies of earlier builds are of no more use.
        if let Some(parent) = dir.parent() {
            for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
                if entry.path() != dir {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
    assert!(open_to_others(&copy), "{} is not reachable by other users either", copy.display());
    copy
}

/// A free TCP port on 127.0.0.1 (bound then released: good enough on a test machine).
pub fn free_port() -> u16 {
    paastech_core::ports::free_loopback_port().expect("free port")
}

/// The admin URL of the PostgreSQL server the test command started. Tests that need it
/// fail, rather than skip, when it is missing.
pub fn postgres_admin_url() -> String {
    std::env::var("PAASTECH_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "PAASTECH_TEST_POSTGRES_URL is not set: start a test PostgreSQL with \
             `scripts/start-postgres.sh` and export the URL it prints (scripts/test.sh does both)"
        )
    })
}

/// The test redis-server's URL as its admin (`default`), from `scripts/setup/15-redis.sh`.
pub fn redis_admin_url() -> String {
    std::env::var("PAASTECH_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "PAASTECH_TEST_REDIS_URL is not set: start the test redis-server with \
             `source scripts/setup/15-redis.sh`, which exports it (scripts/test.sh does both)"
        )
    })
}

/// A fresh, empty PostgreSQL database for one test; returns its URL.
pub fn fresh_postgres_database(prefix: &str) -> String {
    let admin = postgres_admin_url();
    let name = format!("{prefix}_{}_{}", std::process::id(), unique());
    let output = Command::new("psql")
        .args([admin.as_str(), "-v", "ON_ERROR_STOP=1", "-qc", &format!("CREATE DATABASE {name}")])
        .output()
        .expect("running psql");
    assert!(output.status.success(), "creating database {name}: {}", String::from_utf8_lossy(&output.stderr));
    let base = admin.rsplit_once('/').map(|(base, _)| base).expect("admin URL has a database part");
    format!("{base}/{name}")
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    u64::from(nanos) * 1000 + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A running `paastech server` with its own data directory and ports.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub api_port: u16,
    pub ssh_port: u16,
    pub ingress_port: u16,
    /// Variables the server process gets besides the test's own environment.
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Server {
    /// Starts a server; `extra` is appended to its TOML configuration.
    pub fn start(extra: &str) -> Server {
        Server::start_with("", extra, None, Vec::new())
    }

    /// [`Server::start`] with more keys in its `[api]` section (`public_url = "…"`).
    pub fn start_with_api_keys(api_keys: &str, extra: &str) -> Server {
        Server::start_with(api_keys, extra, None, Vec::new())
    }

    /// [`Server::start`] with the ingress on `ingress_port` (a port something else, such
    /// as an ACME CA, was told about before the server started).
    pub fn start_on(extra: &str, ingress_port: u16) -> Server {
        Server::start_with("", extra, Some(ingress_port), Vec::new())
    }

    /// [`Server::start`] with `env` set in the server's environment (a `PATH` with more
    /// tools, say), for this start and every start again.
    pub fn start_with_env(extra: &str, env: &[(&str, &str)]) -> Server {
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Server::start_with("", extra, None, env)
    }

    fn start_with(api_keys: &str, extra: &str, ingress_port: Option<u16>, env: Vec<(String, String)>) -> Server {
        // Another test's server or app may bind a port between its choice here and this
        // server's bind: then it starts again on other ports.
        for _ in 0..3 {
            let mut server = Server::configure(api_keys, extra, ingress_port);
            server.env = env.clone();
            match server.try_spawn() {
                Ok(()) => return server,
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!("paastech server exited before it was ready:\n{log}"),
            }
        }
        panic!("paastech server found its ports taken three times in a row")
    }

    /// A server configured with `extra` but not started: put files into its data
    /// directory, then start it with [`Server::start_again`].
    pub fn configured(extra: &str) -> Server {
        Server::configure("", extra, None)
    }

    fn configure(api_keys: &str, extra: &str, ingress_port: Option<u16>) -> Server {
        let dir = tempfile::tempdir().expect("server temp dir");
        let (api_port, ssh_port) = (free_port(), free_port());
        let ingress_port = ingress_port.unwrap_or_else(free_port);
        let config_path = dir.path().join("paastech.toml");
        let config = format!(
            "data_dir = {data:?}\n\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n{api_keys}\n[ssh]\nlisten = \"127.0.0.1:{ssh_port}\"\n\n\
             [ingress]\nlisten = \"127.0.0.1:{ingress_port}\"\ndomain = \"localhost\"\n\n{extra}\n",
            data = dir.path().join("data").display().to_string(),
        );
        std::fs::write(&config_path, config).expect("writing server config");
        Server { dir, config_path, api_port, ssh_port, ingress_port, env: Vec::new(), child: None }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// What the server has logged so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("paastech server exited before it was ready:\n{log}");
        }
    }

    /// Starts the server process and waits until it answers; if it exits first, its log.
    fn try_spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("server log");
        let child = Command::new(paastech_bin())
            .args(["server", "--config"])
            .arg(&self.config_path)
            .env("PAASTECH_LOG", "info,paastech=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawning paastech server");
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("(exited with {status})\n{}", self.log()));
            }
            if let Ok((200, _)) = self.api().call("GET", "/healthz", None, None) {
                return Ok(());
            }
            assert!(Instant::now() < deadline, "paastech server not ready after 30 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server with SIGTERM, as an operator would, and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server with SIGKILL, as a crash or the OOM killer would: it stops nothing.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again after `stop` or `kill`.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Starts the server again after `stop` or `kill`; when it exits before it is ready,
    /// its log.
    pub fn try_start_again(&mut self) -> Result<(), String> {
        self.try_spawn()
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    pub fn api(&self) -> Api {
        Api { base: format!("{}/api/v1", self.api_url()) }
    }

    /// Runs the `paastech` CLI against this server with its own HOME (so its saved login
    /// is its own), feeding `stdin`.
    pub fn cli(&self, home: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        cli(home, &self.api_url(), args, stdin)
    }
}

impl Drop for Server {
    /// Stops the server as an operator would, so it stops its apps too.
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs the CLI with HOME at `home`, against `server`.
pub fn cli(home: &Path, server: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(paastech_bin())
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("PAASTECH_TOKEN")
        .env("PAASTECH_SERVER", server)
        .current_dir(home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning paastech");
    if let (Some(mut pipe), Some(input)) = (child.stdin.take(), stdin) {
        pipe.write_all(input.as_bytes()).expect("writing CLI stdin");
    }
    child.wait_with_output().expect("waiting for paastech")
}

/// A tiny JSON-over-HTTP client answering `(status, body)`.
pub struct Api {
    pub base: String,
}

impl Api {
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ureq::Error> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let url = format!("{}{path}", self.base);
        let request = ureq::http::Request::builder().method(method).uri(&url);
        let request = match token {
            Some(token) => request.header("Authorization", format!("Bearer {token}")),
            None => request,
        };
        let mut response = match body {
            Some(body) => agent.run(
                request
                    .header("Content-Type", "application/json")
                    .body(serde_json::to_vec(body).expect("json body"))
                    .expect("request"),
            )?,
            None => agent.run(request.body(()).expect("request"))?,
        };
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string()?;
        let value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Ok((status, value))
    }

    /// Like `call`, but panics on a transport error.
    pub fn req(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        self.call(method, path, token, body.as_ref()).unwrap_or_else(|err| panic!("{method} {path}: {err}"))
    }

    /// Signs up and logs in; returns the token.
    pub fn user(&self, email: &str) -> String {
        let password = web::PASSWORD;
        let (status, body) =
            self.req("POST", "/auth/signup", None, Some(json!({"email": email, "password": password})));
        assert_eq!(status, 201, "signup {email}: {body}");
        self.login(email, password)
    }

    pub fn login(&self, email: &str, password: &str) -> String {
        let (status, body) = self.req("POST", "/auth/login", None, Some(json!({"email": email, "password": password})));
        assert_eq!(status, 200, "login {email}: {body}");
        body["token"].as_str().expect("token in login answer").to_owned()
    }
}

/// Generates an ed25519 key pair with the real `ssh-keygen`; returns (private key path,
/// public key line).
pub fn ssh_keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .status()
        .expect("running ssh-keygen");
    assert!(status.success(), "ssh-keygen failed");
    let public = std::fs::read_to_string(path.with_extension("pub")).expect("public key");
    (path, public.trim().to_owned())
}

/// The repository's `examples/NAME` directory.
pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("examples").join(name)
}

/// A working copy that pushes to a PaaSTech server with the real `git` over real SSH.
pub struct GitRepo {
    pub dir: PathBuf,
    key: PathBuf,
    ssh_port: u16,
}

impl GitRepo {
    /// A new repository at `dir` holding a copy of `source`, committed on `main`, with a
    /// `paastech` remote for `project`.
    pub fn from_dir(dir: &Path, source: &Path, key: &Path, ssh_port: u16, project: &str) -> GitRepo {
        std::fs::create_dir_all(dir).expect("repo dir");
        copy_tree(source, dir);
        let repo = GitRepo { dir: dir.to_owned(), key: key.to_owned(), ssh_port };
        repo.git(&["init", "-q", "-b", "main"]);
        repo.git(&["remote", "add", "paastech", &format!("ssh://git@127.0.0.1:{ssh_port}/{project}.git")]);
        repo.commit_all("first commit");
        repo
    }

    fn command(&self) -> Command {
        let mut command = Command::new("git");
        command
            .current_dir(&self.dir)
            .env("GIT_SSH_COMMAND", ssh_command(&self.key, self.ssh_port))
            .env("GIT_AUTHOR_NAME", "Ada")
            .env("GIT_AUTHOR_EMAIL", "ada@example.com")
            .env("GIT_COMMITTER_NAME", "Ada")
            .env("GIT_COMMITTER_EMAIL", "ada@example.com")
            .env_remove("GIT_DIR");
        command
    }

    pub fn git(&self, args: &[&str]) -> Output {
        let output = self.command().args(args).output().expect("running git");
        assert!(output.status.success(), "git {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        output
    }

    /// Runs git and returns its output whatever the exit status.
    pub fn try_git(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("running git")
    }

    pub fn write(&self, path: &str, contents: &str) {
        let path = self.dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("parent dir");
        }
        std::fs::write(path, contents).expect("writing a file");
    }

    pub fn commit_all(&self, message: &str) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
    }

    /// `git push paastech <refspec>`: (success, everything git printed).
    pub fn push(&self, refspec: &str) -> (bool, String) {
        let output = self.try_git(&["push", "paastech", refspec]);
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    }

    pub fn head(&self) -> String {
        String::from_utf8_lossy(&self.git(&["rev-parse", "HEAD"]).stdout).trim().to_owned()
    }
}

/// What git uses to reach the server: OpenSSH with this key, trusting the new host.
pub fn ssh_command(key: &Path, port: u16) -> String {
    format!(
        "ssh -i {} -p {port} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes",
        key.display()
    )
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("reading example") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            std::fs::create_dir_all(&target).expect("dir");
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copying a file");
        }
    }
}

/// One HTTP/1.1 GET through the ingress with the given Host: (status, body).
pub fn http_get(port: u16, host: &str, path: &str) -> (u16, String) {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting to the ingress");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").expect("request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("response");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, decode_chunked(&text, body))
}

fn decode_chunked(head: &str, body: String) -> String {
    let headers = head.split("\r\n\r\n").next().unwrap_or_default().to_ascii_lowercase();
    if !headers.contains("transfer-encoding: chunked") {
        return body;
    }
    let mut out = String::new();
    let mut rest = body.as_str();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || tail.len() < size {
            break;
        }
        out.push_str(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `check` until it holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    check()
}

/// The first line (`Name:`) of `/proc/PID/status` of each live process (not a zombie,
/// which an init that never reaps may keep) whose real uid is `uid` and whose working
/// directory is below `under` (a server's data directory).
pub fn processes_of(uid: u64, under: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok())
        // Every server of the tests maps its first project to the same uid: only those
        // working below this server's directory are its own.
        .filter(|entry| std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(under)))
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("status")).ok())
        .filter(|status| {
            let real = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().next());
            let state = status.lines().find_map(|l| l.strip_prefix("State:")).unwrap_or_default();
            real == Some(&uid.to_string()) && !state.trim_start().starts_with('Z')
        })
        .map(|status| status.lines().next().unwrap_or_default().to_owned())
        .collect()
}

/// A signed-up user with a registered SSH key: their token and private key path.
pub struct Developer {
    pub token: String,
    pub key: PathBuf,
}

impl Server {
    pub fn developer(&self, email: &str) -> Developer {
        let api = self.api();
        let token = api.user(email);
        let name = email.split('@').next().unwrap_or("dev").replace('.', "_");
        let (key, public) = ssh_keygen(self.dir.path(), &format!("{name}_key"));
        let (status, body) = api.req("POST", "/ssh-keys", Some(&token), Some(json!({"public_key": public})));
        assert_eq!(status, 201, "adding a key: {body}");
        Developer { token, key }
    }

    /// GET through this server's ingress as `http://PROJECT.localhost/PATH`.
    pub fn app_get(&self, project: &str, path: &str) -> (u16, String) {
        http_get(self.ingress_port, &format!("{project}.localhost:{}", self.ingress_port), path)
    }
}

/// A command's stdout, asserting that it succeeded (else its exit code and both outputs).
pub fn ok(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A command's stderr, asserting that it failed.
pub fn failed(output: &Output) -> String {
    assert!(!output.status.success(), "should fail; stdout: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).into_owned()
}
