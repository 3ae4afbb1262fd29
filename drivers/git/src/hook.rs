//! How git's `pre-receive` hook reaches the server's [`PushHandler`].
//!
//! The SSH server runs `git receive-pack` with three variables in its environment:
//! [`ENV_EXE`] (the PaaSTech binary), [`ENV_SOCKET`] (this server's Unix socket) and
//! [`ENV_TOKEN`] (a one-push secret from [`HookServer::register`]). The repository's hook
//! script runs `$PAASTECH_EXE internal pre-receive`, which calls [`run_client`]: it sends the
//! token and the ref updates over the socket, prints the handler's log lines as they arrive
//! (git relays them to the pusher as `remote:` lines) and exits 0 only if the handler accepted.
//!
//! Wire protocol: JSON, one object per line. The client sends one [`Request`]; the server
//! answers with any number of `{"type":"log","line":…}` then exactly one `{"type":"accepted"}`
//! or `{"type":"rejected","message":…}`.
//!
//! The log is relayed through a bounded queue ([`MAX_QUEUED_LINES`], [`MAX_QUEUED_BYTES`]):
//! a build never waits for a slow pusher, and when the queue is full its oldest lines make
//! room for new ones, so the pusher later reads a note saying how many lines it missed,
//! then the newest lines (where a build's error is). The full log is kept elsewhere (the
//! build record and the project's log).

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paastech_core::drivers::{LogSink, PushHandler, Pusher, RefUpdate};
use paastech_core::{Error, ProjectName, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;

/// The PaaSTech executable the hook script runs.
pub const ENV_EXE: &str = "PAASTECH_EXE";
/// The hook server's socket.
pub const ENV_SOCKET: &str = "PAASTECH_HOOK_SOCKET";
/// The secret that ties a hook run to the push the SSH server authorized.
pub const ENV_TOKEN: &str = "PAASTECH_HOOK_TOKEN";

/// A request line can list every ref of a push; this bounds what a stray client can make
/// the server buffer.
const MAX_REQUEST_BYTES: u64 = 16 * 1024 * 1024;
/// The hook sends its request right after connecting.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// At most this many log lines wait for a slow pusher; older ones are dropped past it.
pub const MAX_QUEUED_LINES: usize = 4096;
/// And at most this many bytes of them (a longer single line is cut to this).
pub const MAX_QUEUED_BYTES: usize = 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    token: String,
    updates: Vec<WireUpdate>,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireUpdate {
    refname: String,
    old: String,
    new: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Reply {
    Log { line: String },
    Accepted,
    Rejected { message: String },
}

/// Who a registered token pushes as.
#[derive(Debug, Clone)]
struct Registration {
    project: ProjectName,
    pusher: Pusher,
}

type Tickets = Arc<Mutex<HashMap<String, Registration>>>;

/// Listens on a Unix socket for hook clients and runs the [`PushHandler`] for each push.
/// Cheap to clone; clones share the socket and the registered tickets.
#[derive(Clone)]
pub struct HookServer {
    listener: Arc<UnixListener>,
    socket: PathBuf,
    exe: PathBuf,
    handler: Arc<dyn PushHandler>,
    tickets: Tickets,
}

impl HookServer {
    /// Binds the socket at `path` (mode 0600; its parent, if missing, is created 0700).
    /// A stale socket left by a previous run is replaced; a live one is a conflict. The hook
    /// executable defaults to the running binary; see [`HookServer::with_exe`].
    /// Must be called inside a tokio runtime.
    pub fn bind(path: impl Into<PathBuf>, handler: Arc<dyn PushHandler>) -> Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};

        let socket: PathBuf = path.into();
        let io_err = |what: &str, err: std::io::Error| Error::internal(format!("{what} {}", socket.display()), err);
        if let Some(parent) = socket.parent().filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|err| io_err("creating the directory of", err))?;
        }
        if let Ok(meta) = std::fs::symlink_metadata(&socket) {
            if !meta.file_type().is_socket() {
                return Err(Error::Conflict(format!("{} exists and is not a socket", socket.display())));
            }
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                return Err(Error::Conflict(format!("another server is listening on {}", socket.display())));
            }
            std::fs::remove_file(&socket).map_err(|err| io_err("removing the stale socket", err))?;
        }
        let listener = UnixListener::bind(&socket).map_err(|err| io_err("binding", err))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .map_err(|err| io_err("restricting", err))?;
        let exe = std::env::current_exe().map_err(|err| Error::internal("finding the running executable", err))?;
        Ok(HookServer { listener: Arc::new(listener), socket, exe, handler, tickets: Tickets::default() })
    }

    /// The executable the hook script runs as `EXE internal pre-receive`.
    pub fn with_exe(mut self, exe: impl Into<PathBuf>) -> Self {
        self.exe = exe.into();
        self
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Authorizes one hook run for `project` by `pusher`. Pass [`HookTicket::env`] to the
    /// `git receive-pack` child and keep the ticket until it exits: dropping it revokes the
    /// token. A token is good for one hook run.
    pub fn register(&self, project: &ProjectName, pusher: Pusher) -> HookTicket {
        let token: String = rand::random::<[u8; 32]>().iter().map(|b| format!("{b:02x}")).collect();
        lock(&self.tickets).insert(token.clone(), Registration { project: project.clone(), pusher });
        HookTicket { token, socket: self.socket.clone(), exe: self.exe.clone(), tickets: self.tickets.clone() }
    }

    /// Accepts hook clients until the task is dropped.
    pub async fn serve(&self) -> Result<()> {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let server = self.clone();
                    tokio::spawn(async move { server.handle(stream).await });
                }
                Err(err) => {
                    // Out of descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %err, "accepting a hook connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn handle(&self, stream: UnixStream) {
        let (read, mut write) = stream.into_split();
        let reply = match self.run(read, &mut write).await {
            Ok(()) => Reply::Accepted,
            Err(message) => Reply::Rejected { message },
        };
        // The client may be gone (the pusher hung up); the outcome is already logged.
        let _ = write_reply(&mut write, &reply).await;
    }

    /// Reads the request and runs the handler; `Err` is the message the pusher sees.
    async fn run(
        &self,
        read: tokio::net::unix::OwnedReadHalf,
        write: &mut tokio::net::unix::OwnedWriteHalf,
    ) -> std::result::Result<(), String> {
        let mut line = String::new();
        let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES));
        match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 && line.ends_with('\n') => {}
            _ => return Err("the hook sent no request".to_owned()),
        }
        let request: Request =
            serde_json::from_str(&line).map_err(|err| format!("the hook sent a malformed request: {err}"))?;
        // One use per token: a leaked token cannot start a second build.
        let registration = lock(&self.tickets).remove(&request.token);
        let Some(Registration { project, pusher }) = registration else {
            tracing::warn!("hook connection with an unknown token refused");
            return Err("this push was not authorized by the PaaSTech server".to_owned());
        };
        let updates = request
            .updates
            .into_iter()
            .map(|u| {
                if is_object_id(&u.old) && is_object_id(&u.new) && !u.refname.is_empty() {
                    Ok(RefUpdate { refname: u.refname, old: u.old, new: u.new })
                } else {
                    Err(format!("the hook sent a malformed ref update for {:?}", u.refname))
                }
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;

        // Log lines go through one bounded queue, so they reach the client in order and
        // `LogSink::line` never blocks the handler, whatever the client's pace.
        let queue = Arc::new(LogQueue::new(MAX_QUEUED_LINES, MAX_QUEUED_BYTES));
        let sink: Arc<dyn LogSink> = queue.clone();
        let handler = self.handler.clone();
        let push = tokio::spawn(async move {
            let result = handler.pre_receive(&project, pusher, &updates, sink).await;
            (project, result)
        });
        let outcome = relay(&queue, write, push).await;
        match outcome {
            Ok((project, Ok(()))) => {
                tracing::info!(project = %project, user_id = pusher.user_id, "push accepted");
                Ok(())
            }
            Ok((project, Err(err))) => {
                tracing::info!(project = %project, user_id = pusher.user_id, error = %err, "push rejected");
                Err(err.to_string())
            }
            Err(err) => {
                tracing::error!(error = %err, "the push handler panicked");
                Err("internal error".to_owned())
            }
        }
    }
}

/// Authorizes one run of the hook; revoked when dropped.
pub struct HookTicket {
    token: String,
    socket: PathBuf,
    exe: PathBuf,
    tickets: Tickets,
}

impl HookTicket {
    /// The variables to add to the environment of `git receive-pack`.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (ENV_EXE.to_owned(), self.exe.to_string_lossy().into_owned()),
            (ENV_SOCKET.to_owned(), self.socket.to_string_lossy().into_owned()),
            (ENV_TOKEN.to_owned(), self.token.clone()),
        ]
    }
}

impl std::fmt::Debug for HookTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("HookTicket").field("socket", &self.socket).finish_non_exhaustive()
    }
}

impl Drop for HookTicket {
    fn drop(&mut self) {
        lock(&self.tickets).remove(&self.token);
    }
}

/// Writes the handler's log lines to the client as they come, until the handler is done,
/// then what is left; returns the handler's outcome.
async fn relay<T>(
    queue: &LogQueue,
    write: &mut tokio::net::unix::OwnedWriteHalf,
    push: tokio::task::JoinHandle<T>,
) -> std::result::Result<T, tokio::task::JoinError> {
    tokio::pin!(push);
    let mut client_gone = false;
    let outcome = loop {
        tokio::select! {
            // Once the handler is done, whatever it logged is already queued.
            joined = &mut push => break joined,
            line = queue.next() => {
                if !client_gone && write_reply(write, &Reply::Log { line }).await.is_err() {
                    // The push is gone, but the handler keeps going: stopping a build
                    // or a rollout halfway would leave worse state than finishing it.
                    client_gone = true;
                    queue.close();
                }
            }
        }
    };
    while let Some(line) = queue.try_next() {
        if client_gone || write_reply(write, &Reply::Log { line }).await.is_err() {
            break;
        }
    }
    outcome
}

/// The log lines waiting for the client: at most `max_lines` lines and `max_bytes` bytes.
/// When full, the oldest waiting lines are dropped and counted, and the reader gets a note
/// in their place.
struct LogQueue {
    state: Mutex<QueueState>,
    ready: Notify,
    max_lines: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct QueueState {
    lines: VecDeque<String>,
    bytes: usize,
    /// Lines dropped just before `lines[0]` (the reader has seen what came before).
    dropped: u64,
    /// The client is gone: nothing more is kept.
    closed: bool,
}

impl LogQueue {
    fn new(max_lines: usize, max_bytes: usize) -> Self {
        LogQueue { state: Mutex::default(), ready: Notify::new(), max_lines: max_lines.max(1), max_bytes }
    }

    /// The next line (or note) for the client, once there is one.
    async fn next(&self) -> String {
        loop {
            if let Some(line) = self.try_next() {
                return line;
            }
            // `notify_one` stores a wakeup when nobody waits, so none is lost between the
            // check above and this wait.
            self.ready.notified().await;
        }
    }

    fn try_next(&self) -> Option<String> {
        let mut state = lock(&self.state);
        if state.dropped > 0 {
            let dropped = std::mem::take(&mut state.dropped);
            let s = if dropped == 1 { "" } else { "s" };
            return Some(format!("[{dropped} line{s} dropped: the client reads too slowly]"));
        }
        let line = state.lines.pop_front()?;
        state.bytes -= line.len();
        Some(line)
    }

    fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        state.lines.clear();
        state.bytes = 0;
    }

    /// Lines and bytes waiting.
    #[cfg(test)]
    fn queued(&self) -> (usize, usize) {
        let state = lock(&self.state);
        (state.lines.len(), state.bytes)
    }
}

impl LogSink for LogQueue {
    fn line(&self, line: &str) {
        let line = truncate(line, self.max_bytes);
        let mut state = lock(&self.state);
        if state.closed {
            return;
        }
        while !state.lines.is_empty()
            && (state.lines.len() >= self.max_lines || state.bytes + line.len() > self.max_bytes)
        {
            if let Some(old) = state.lines.pop_front() {
                state.bytes -= old.len();
                state.dropped += 1;
            }
        }
        state.bytes += line.len();
        state.lines.push_back(line.to_owned());
        drop(state);
        self.ready.notify_one();
    }
}

/// `line` cut to at most `max` bytes, on a character boundary.
fn truncate(line: &str, max: usize) -> &str {
    if line.len() <= max {
        return line;
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The map stays consistent even if a holder panicked: every operation is one call.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn is_object_id(id: &str) -> bool {
    matches!(id.len(), 40 | 64) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

async fn write_reply(write: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}

/// The hook side: `paastech internal pre-receive` calls this and exits with its result.
/// Reads git's `OLD NEW REF` lines from stdin, asks the server, prints the log lines as they
/// come. Returns 0 if the push is accepted, 1 otherwise. Plain blocking I/O: it needs no
/// runtime (and must not be called from inside an async task).
pub fn run_client() -> i32 {
    match client() {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(message) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "error: {message}");
            let _ = out.flush();
            1
        }
    }
}

fn client() -> std::result::Result<bool, String> {
    let (Some(socket), Some(token)) = (std::env::var_os(ENV_SOCKET), std::env::var(ENV_TOKEN).ok()) else {
        return Err("pushes are only accepted through the PaaSTech git server".to_owned());
    };
    let updates = parse_updates(std::io::stdin().lock())?;
    let mut stream = std::os::unix::net::UnixStream::connect(&socket)
        .map_err(|err| format!("cannot reach the PaaSTech server: {err}"))?;
    let mut request = serde_json::to_vec(&Request { token, updates }).map_err(|err| err.to_string())?;
    request.push(b'\n');
    stream.write_all(&request).map_err(|err| format!("cannot reach the PaaSTech server: {err}"))?;

    // No read timeout: a build can take many minutes. If the server dies, the socket closes
    // and the read below ends.
    let mut out = std::io::stdout().lock();
    for line in std::io::BufReader::new(stream).lines() {
        let line = line.map_err(|err| format!("lost the PaaSTech server: {err}"))?;
        let reply: Reply = serde_json::from_str(&line).map_err(|err| format!("bad answer from the server: {err}"))?;
        // Writes may fail if git is gone; the outcome still decides the exit code.
        match reply {
            Reply::Log { line } => {
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            Reply::Accepted => return Ok(true),
            Reply::Rejected { message } => {
                let _ = writeln!(out, "push rejected: {message}");
                let _ = out.flush();
                return Ok(false);
            }
        }
    }
    Err("the PaaSTech server closed the connection before deciding".to_owned())
}

/// git's pre-receive input: one `OLD NEW REFNAME` line per ref.
fn parse_updates(input: impl BufRead) -> std::result::Result<Vec<WireUpdate>, String> {
    let mut updates = Vec::new();
    for line in input.lines() {
        let line = line.map_err(|err| format!("reading the pushed refs: {err}"))?;
        if line.is_empty() {
            continue;
        }
        let mut parts = line.splitn(3, ' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(old), Some(new), Some(refname)) if is_object_id(old) && is_object_id(new) => {
                updates.push(WireUpdate { refname: refname.to_owned(), old: old.to_owned(), new: new.to_owned() });
            }
            _ => return Err(format!("unexpected pre-receive input {line:?}")),
        }
    }
    Ok(updates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_git_pre_receive_input() {
        let zero = "0".repeat(40);
        let a = "a".repeat(40);
        let input = format!("{zero} {a} refs/heads/main\n{a} {zero} refs/tags/v1\n");
        let updates = parse_updates(input.as_bytes()).expect("parse");
        assert_eq!(updates.len(), 2);
        assert_eq!(updates[0].refname, "refs/heads/main");
        assert_eq!(updates[0].old, zero);
        assert_eq!(updates[1].new, zero);
        assert!(parse_updates(&b"garbage\n"[..]).is_err());
        assert!(parse_updates(format!("{a} xyz refs/heads/main\n").as_bytes()).is_err());
    }

    fn drain(queue: &LogQueue) -> Vec<String> {
        std::iter::from_fn(|| queue.try_next()).collect()
    }

    #[test]
    fn a_full_queue_drops_its_oldest_lines_and_says_how_many() {
        let queue = LogQueue::new(4, 1024);
        for i in 0..10 {
            queue.line(&format!("line {i}"));
        }
        assert_eq!(queue.queued(), (4, 4 * "line 0".len()));
        let want = ["[6 lines dropped: the client reads too slowly]", "line 6", "line 7", "line 8", "line 9"];
        assert_eq!(drain(&queue), want);
        assert_eq!(queue.queued(), (0, 0));

        // The count starts again, and the note sits where the lines went missing.
        queue.line("a");
        assert_eq!(queue.try_next().as_deref(), Some("a"));
        for line in ["b", "c", "d", "e", "f"] {
            queue.line(line);
        }
        assert_eq!(drain(&queue), ["[1 line dropped: the client reads too slowly]", "c", "d", "e", "f"]);
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_too() {
        let queue = LogQueue::new(100, 10);
        for line in ["aaaa", "bbbb", "cccc", "dddd"] {
            queue.line(line);
            assert!(queue.queued().1 <= 10);
        }
        assert_eq!(drain(&queue), ["[2 lines dropped: the client reads too slowly]", "cccc", "dddd"]);
        // A line longer than the whole bound is cut to it, on a character boundary.
        queue.line("ééééééé");
        assert_eq!(drain(&queue), ["ééééé"]);
    }

    #[test]
    fn a_closed_queue_keeps_nothing() {
        let queue = LogQueue::new(4, 1024);
        queue.line("before");
        queue.close();
        queue.line("after");
        assert_eq!(queue.queued(), (0, 0));
        assert!(queue.try_next().is_none());
    }

    /// A build floods far more than the bound at a pusher that reads nothing until the build
    /// is over: the queue never holds more than its bound, the build never waits, and the
    /// pusher then reads the first lines (those the socket took), the note, and the last
    /// lines, through the real relay over a real socket.
    #[tokio::test]
    async fn a_flood_to_a_client_that_does_not_read_stays_bounded() {
        const LINES: usize = 100_000;
        let (server, client) = UnixStream::pair().expect("socket pair");
        let (_read, mut write) = server.into_split();
        let queue = Arc::new(LogQueue::new(MAX_QUEUED_LINES, MAX_QUEUED_BYTES));
        let (flooded_tx, flooded_rx) = tokio::sync::oneshot::channel();
        let sink: Arc<dyn LogSink> = queue.clone();
        let observed = queue.clone();
        let push = tokio::spawn(async move {
            let padding = "x".repeat(100);
            let mut most = (0, 0);
            for i in 0..LINES {
                sink.line(&format!("line {i} {padding}"));
                let (lines, bytes) = observed.queued();
                most = (most.0.max(lines), most.1.max(bytes));
                if i % 1000 == 0 {
                    // Let the relay run, as a real build's awaits would.
                    tokio::task::yield_now().await;
                }
            }
            sink.line("the last line");
            let _ = flooded_tx.send(());
            most
        });
        let relayed = tokio::spawn(async move {
            let outcome = relay(&queue, &mut write, push).await;
            let _ = write_reply(&mut write, &Reply::Accepted).await;
            outcome
        });

        // Nothing is read until the build is over.
        tokio::time::timeout(Duration::from_secs(60), flooded_rx).await.expect("the flood ends").expect("flooded");
        let mut seen = Vec::new();
        let mut lines = BufReader::new(client).lines();
        while let Some(line) = lines.next_line().await.expect("read") {
            match serde_json::from_str::<Reply>(&line).expect("reply") {
                Reply::Log { line } => seen.push(line),
                Reply::Accepted => break,
                Reply::Rejected { message } => panic!("rejected: {message}"),
            }
        }
        let most = relayed.await.expect("relay").expect("push");
        assert!(most.0 <= MAX_QUEUED_LINES && most.1 <= MAX_QUEUED_BYTES, "queued at most {most:?}");
        assert_eq!(seen.first().map(String::as_str), Some(format!("line 0 {}", "x".repeat(100)).as_str()));
        assert_eq!(seen.last().map(String::as_str), Some("the last line"));
        let notes: Vec<&String> = seen.iter().filter(|l| l.contains("dropped: the client reads too slowly")).collect();
        assert!(!notes.is_empty(), "no note among {} lines", seen.len());
        let dropped: usize = notes
            .iter()
            .map(|note| {
                note.trim_start_matches('[').split(' ').next().and_then(|n| n.parse::<usize>().ok()).expect("count")
            })
            .sum();
        // Every line is either seen or counted as dropped.
        assert_eq!(seen.len() - notes.len() + dropped, LINES + 1, "{notes:?}");
        assert!(seen.len() < LINES / 4, "{} lines were kept for the client", seen.len());
    }

    #[test]
    fn replies_are_one_json_line_each() {
        let json = serde_json::to_string(&Reply::Log { line: "a\nb".to_owned() }).expect("json");
        assert!(!json.contains('\n'));
        assert_eq!(json, r#"{"type":"log","line":"a\nb"}"#);
    }
}
