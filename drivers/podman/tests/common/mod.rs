//! Helpers shared by the runtime and builder tests: the engine they need (they fail, not
//! skip, without it), a collecting log sink, polling, HTTP over a plain `TcpStream`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paastech_core::drivers::LogSink;

/// The image every test container starts from; `scripts/setup/30-podman.sh` imports it.
pub const BASE_IMAGE: &str = "localhost/paastech/busybox:latest";

/// The engine's socket: `PAASTECH_PODMAN_SOCKET` or Podman's standard one. Panics with
/// how to get one when nothing answers there, or the base image is missing.
pub fn socket() -> PathBuf {
    let socket = std::env::var_os("PAASTECH_PODMAN_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(paastech_driver_podman::DEFAULT_SOCKET));
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_ok(),
        "these tests need Podman's API at {}: run `scripts/setup/30-podman.sh` as root \
         (it installs podman and starts `podman system service`)",
        socket.display()
    );
    socket
}

/// A unique owner label per test, so parallel tests never see each other's containers.
pub fn owner(test: &str) -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    format!("test-{test}-{}-{nanos}", std::process::id())
}

#[derive(Default)]
pub struct Collect(Mutex<Vec<String>>);

impl Collect {
    pub fn new() -> Arc<Self> {
        Arc::new(Collect::default())
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lock().expect("log lock").clone()
    }

    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    pub fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    /// The value after `key=` on the first line that starts with it.
    pub fn value(&self, key: &str) -> Option<String> {
        let prefix = format!("{key}=");
        self.lines().iter().find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
    }
}

impl LogSink for Collect {
    fn line(&self, line: &str) {
        self.0.lock().expect("log lock").push(line.to_owned());
    }
}

/// Polls `check` every 50 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET path` over HTTP/1.0, retrying the connection until the app answers.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let attempt = (|| -> std::io::Result<String> {
                let mut stream = TcpStream::connect(addr)?;
                stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
                let mut response = String::new();
                stream.read_to_string(&mut response)?;
                Ok(response)
            })();
            match attempt {
                // The engine's port forwarder accepts before the app listens: an empty
                // answer means "not yet".
                Ok(response) if !response.is_empty() => return response,
                other => {
                    assert!(Instant::now() < deadline, "app never answered on {addr}: {other:?}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    })
    .await
    .expect("http task")
}

pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(name)
}
