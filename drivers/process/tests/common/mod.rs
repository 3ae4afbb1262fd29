//! Helpers shared by the builder and runtime tests: a collecting log sink, polling,
//! HTTP over a plain `TcpStream`, and process liveness from `/proc`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paastech_core::drivers::LogSink;

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

    /// How many lines are exactly `line`.
    pub fn exactly(&self, line: &str) -> usize {
        self.lines().iter().filter(|l| *l == line).count()
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

/// Polls `check` every 20 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET path` over HTTP/1.0, retrying the connection until the app listens.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut stream = loop {
            match TcpStream::connect(addr) {
                Ok(stream) => break stream,
                Err(err) => {
                    assert!(Instant::now() < deadline, "app never listened on {addr}: {err}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("send request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read response");
        response
    })
    .await
    .expect("http task")
}

/// Whether `pid` is a live process (a zombie is dead: it only waits to be reaped).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(name)
}

/// Copies a directory tree (files and directories only) into `dest`.
pub fn copy_tree(from: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).expect("create dest");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = dest.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}
