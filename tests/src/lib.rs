//! Support for the end-to-end journeys: build and start a real `paastech server` process
//! on free loopback ports, talk to it over real HTTP, run the real CLI against it.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The `paastech` binary of this workspace, built once per test process.
pub fn paastech_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // Test executables live in target/<profile>/deps; the binary one level up.
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile> directory");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "paastech-cli",
                "--bin",
                "paastech",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build for the paastech binary");
        assert!(status.success(), "building the paastech binary failed");
        let bin = profile_dir.join("paastech");
        assert!(bin.exists(), "no paastech binary at {}", bin.display());
        bin
    })
}

/// A free TCP port on 127.0.0.1 (bound then released: good enough on a test machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
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

/// A fresh, empty PostgreSQL database for one test; returns its URL.
pub fn fresh_postgres_database(prefix: &str) -> String {
    let admin = postgres_admin_url();
    let name = format!("{prefix}_{}_{}", std::process::id(), unique());
    let output = Command::new("psql")
        .args([
            admin.as_str(),
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            &format!("CREATE DATABASE {name}"),
        ])
        .output()
        .expect("running psql");
    assert!(
        output.status.success(),
        "creating database {name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let base = admin
        .rsplit_once('/')
        .map(|(base, _)| base)
        .expect("admin URL has a database part");
    format!("{base}/{name}")
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u64::from(nanos) * 1000 + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A running `paastech server` with its own data directory and ports.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub api_port: u16,
    pub ssh_port: u16,
    pub ingress_port: u16,
    child: Option<Child>,
}

impl Server {
    /// Starts a server; `extra` is appended to its TOML configuration.
    pub fn start(extra: &str) -> Server {
        let dir = tempfile::tempdir().expect("server temp dir");
        let (api_port, ssh_port, ingress_port) = (free_port(), free_port(), free_port());
        let config_path = dir.path().join("paastech.toml");
        let config = format!(
            "data_dir = {data:?}\n\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n\n[ssh]\nlisten = \"127.0.0.1:{ssh_port}\"\n\n\
             [ingress]\nlisten = \"127.0.0.1:{ingress_port}\"\ndomain = \"localhost\"\n\n{extra}\n",
            data = dir.path().join("data").display().to_string(),
        );
        std::fs::write(&config_path, config).expect("writing server config");
        let mut server = Server {
            dir,
            config_path,
            api_port,
            ssh_port,
            ingress_port,
            child: None,
        };
        server.spawn();
        server
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
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("server log");
        let child = Command::new(paastech_bin())
            .args(["server", "--config"])
            .arg(&self.config_path)
            .env("PAASTECH_LOG", "info,paastech=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawning paastech server");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "paastech server exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            if let Ok((200, _)) = self.api().call("GET", "/healthz", None, None) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "paastech server not ready after 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server with SIGTERM, as an operator would, and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
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
        Api {
            base: format!("{}/api/v1", self.api_url()),
        }
    }

    /// Runs the `paastech` CLI against this server with its own HOME (so its saved login
    /// is its own), feeding `stdin`.
    pub fn cli(&self, home: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        cli(home, &self.api_url(), args, stdin)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
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
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, value))
    }

    /// Like `call`, but panics on a transport error.
    pub fn req(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call(method, path, token, body.as_ref())
            .unwrap_or_else(|err| panic!("{method} {path}: {err}"))
    }

    /// Signs up and logs in; returns the token.
    pub fn user(&self, email: &str) -> String {
        let password = "correct horse battery";
        let (status, body) = self.req(
            "POST",
            "/auth/signup",
            None,
            Some(json!({"email": email, "password": password})),
        );
        assert_eq!(status, 201, "signup {email}: {body}");
        self.login(email, password)
    }

    pub fn login(&self, email: &str, password: &str) -> String {
        let (status, body) = self.req(
            "POST",
            "/auth/login",
            None,
            Some(json!({"email": email, "password": password})),
        );
        assert_eq!(status, 200, "login {email}: {body}");
        body["token"]
            .as_str()
            .expect("token in login answer")
            .to_owned()
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
