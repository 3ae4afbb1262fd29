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

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paastech_core::drivers::{LogSink, PushHandler, RefUpdate};
use paastech_core::{Error, ProjectName, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

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
    user_id: i64,
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

    /// Authorizes one hook run for `project` as `user_id`. Pass [`HookTicket::env`] to the
    /// `git receive-pack` child and keep the ticket until it exits: dropping it revokes the
    /// token. A token is good for one hook run.
    pub fn register(&self, project: &ProjectName, user_id: i64) -> HookTicket {
        let token: String = rand::random::<[u8; 32]>().iter().map(|b| format!("{b:02x}")).collect();
        lock(&self.tickets).insert(token.clone(), Registration { project: project.clone(), user_id });
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
        let Some(Registration { project, user_id }) = registration else {
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

        // Log lines go through one queue and one writer task, so they reach the client in
        // order and `LogSink::line` never blocks the handler.
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let sink: Arc<dyn LogSink> = Arc::new(ChannelLog(tx));
        let handler = self.handler.clone();
        let push = tokio::spawn(async move {
            let result = handler.pre_receive(&project, user_id, &updates, sink).await;
            (project, result)
        });
        tokio::pin!(push);
        let mut client_gone = false;
        let outcome = loop {
            tokio::select! {
                // Once the handler is done, whatever it logged is already queued.
                joined = &mut push => break joined,
                Some(line) = rx.recv() => {
                    if !client_gone && write_reply(write, &Reply::Log { line }).await.is_err() {
                        // The push is gone, but the handler keeps going: stopping a build
                        // or a rollout halfway would leave worse state than finishing it.
                        client_gone = true;
                    }
                }
            }
        };
        while let Ok(line) = rx.try_recv() {
            if client_gone || write_reply(write, &Reply::Log { line }).await.is_err() {
                break;
            }
        }
        match outcome {
            Ok((project, Ok(()))) => {
                tracing::info!(project = %project, user_id, "push accepted");
                Ok(())
            }
            Ok((project, Err(err))) => {
                tracing::info!(project = %project, user_id, error = %err, "push rejected");
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

struct ChannelLog(mpsc::UnboundedSender<String>);

impl LogSink for ChannelLog {
    fn line(&self, line: &str) {
        // The connection may be over; a log line is not worth an error.
        let _ = self.0.send(line.to_owned());
    }
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

    #[test]
    fn replies_are_one_json_line_each() {
        let json = serde_json::to_string(&Reply::Log { line: "a\nb".to_owned() }).expect("json");
        assert!(!json.contains('\n'));
        assert_eq!(json, r#"{"type":"log","line":"a\nb"}"#);
    }
}
