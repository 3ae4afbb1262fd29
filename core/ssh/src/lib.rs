//! The SSH git server (russh); the only crate that knows SSH.
//!
//! It authenticates users by public key, accepts exactly two commands —
//! `git-receive-pack` and `git-upload-pack` on one project — and runs them as plain argv
//! (`git receive-pack PATH`), never through a shell. Everything else (shells, terminals,
//! other commands, env other than git's `GIT_PROTOCOL`, forwarding, subsystems) is
//! refused. Who may do what is not decided here: the composition root implements
//! [`GitAccess`].

mod command;
mod keys;
mod session;

use std::any::Any;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use paastech_core::{ProjectName, Result};
use russh::MethodKind;
use russh::server::Server as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

pub use command::{GitService, parse_git_command};
pub use keys::{ParsedKey, parse_public_key};

/// What the server asks of the rest of PaaSTech. Knows nothing of SSH.
#[async_trait]
pub trait GitAccess: Send + Sync {
    /// The user who registered the key with this fingerprint (`SHA256:…`, as
    /// `ssh-keygen -l` prints it), if any.
    async fn user_for_key(&self, fingerprint_sha256: &str) -> Option<i64>;

    /// Opens `project`'s repository for `user_id` (connected from `peer`), to push
    /// (`write`) or fetch. Answer
    /// `NotFound` when the project is missing or not theirs: both reach the user as the
    /// same "project not found or access denied"; `Forbidden` (a member whose role does
    /// not allow the verb) reaches them with its message.
    async fn open_repo(
        &self,
        user_id: i64,
        peer: Option<std::net::IpAddr>,
        project: &ProjectName,
        write: bool,
    ) -> Result<RepoAccess>;
}

/// A repository git may run against.
pub struct RepoAccess {
    /// The bare repository.
    pub path: PathBuf,
    /// Extra environment for the git child (e.g. the pre-receive hook's ticket).
    pub env: Vec<(String, String)>,
    /// Kept alive until git exits, then dropped (e.g. the hook ticket, which revokes itself).
    pub guard: Option<Box<dyn Any + Send>>,
}

impl RepoAccess {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RepoAccess { path: path.into(), env: Vec::new(), guard: None }
    }

    pub fn with_env(mut self, env: Vec<(String, String)>) -> Self {
        self.env = env;
        self
    }

    pub fn with_guard(mut self, guard: impl Any + Send) -> Self {
        self.guard = Some(Box::new(guard));
        self
    }
}

impl std::fmt::Debug for RepoAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The env may carry secrets (the hook token): names only.
        let names: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("RepoAccess").field("path", &self.path).field("env", &names).finish_non_exhaustive()
    }
}

/// How long a connection may take to authenticate, from its first byte (OpenSSH's
/// `LoginGraceTime` is 120 s; git authenticates within a second).
const LOGIN_GRACE: Duration = Duration::from_secs(60);
/// Connections that have not authenticated yet, at most: past it, new ones are closed at
/// once, so a flood of idle connections cannot pile up tasks and memory (as OpenSSH's
/// `MaxStartups`).
const MAX_UNAUTHENTICATED: usize = 64;

/// The SSH git server.
pub struct SshServer {
    config: Arc<russh::server::Config>,
    access: Arc<dyn GitAccess>,
    fingerprint: String,
    login_grace: Duration,
    max_unauthenticated: usize,
}

impl SshServer {
    /// Loads the ed25519 host key at `host_key_path`, generating it (mode 0600) on the first
    /// start so clients keep seeing the same host.
    pub fn new(host_key_path: &Path, access: Arc<dyn GitAccess>) -> Result<Self> {
        let key = keys::load_or_generate_host_key(host_key_path)?;
        let fingerprint = keys::fingerprint(key.public_key());
        let mut methods = russh::MethodSet::empty();
        methods.push(MethodKind::PublicKey);
        let config = russh::server::Config {
            server_id: russh::SshId::Standard("SSH-2.0-PaaSTech".into()),
            methods,
            // OpenSSH probes with "none" first; answering that at once costs nothing.
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: vec![key],
            // A push waits silently while its build runs in the hook, possibly for many
            // minutes: keepalives (answered by any live client) hold the session open and
            // find dead ones; the inactivity timeout is only the last resort.
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 4,
            inactivity_timeout: Some(Duration::from_secs(3600)),
            nodelay: true,
            ..Default::default()
        };
        Ok(SshServer {
            config: Arc::new(config),
            access,
            fingerprint,
            login_grace: LOGIN_GRACE,
            max_unauthenticated: MAX_UNAUTHENTICATED,
        })
    }

    /// Other limits on connections that have not authenticated (tests use short ones).
    pub fn with_login_limits(mut self, grace: Duration, max_unauthenticated: usize) -> Self {
        self.login_grace = grace;
        self.max_unauthenticated = max_unauthenticated;
        self
    }

    /// The host key's fingerprint (`SHA256:…`), for logs and for users to check.
    pub fn host_key_fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Serves connections from `listener` until the future is dropped. Sessions already
    /// running carry on to their end.
    ///
    /// Boxed here (coerced to `dyn Future`, not inlined into callers) so that the sessions'
    /// code is compiled in this crate at its opt-level: an `async fn` is compiled wherever it
    /// is polled, and the binary's crate builds at opt-level 0 (the release profile).
    #[inline(never)]
    pub fn serve(self, listener: TcpListener) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(self.run(listener))
    }

    async fn run(self, listener: TcpListener) {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, fingerprint = %self.fingerprint, "SSH git server listening");
        }
        let mut factory = session::Factory::new(self.access);
        let logins = Arc::new(Semaphore::new(self.max_unauthenticated));
        // A flood of refused connections is said once a minute, not once each.
        let mut warned_full: Option<std::time::Instant> = None;
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, mostly: wait for some to close.
                    tracing::warn!(error = %err, "accepting an SSH connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(login) = logins.clone().try_acquire_owned() else {
                if warned_full.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    warned_full = Some(std::time::Instant::now());
                    tracing::warn!(%peer, limit = self.max_unauthenticated,
                        "too many SSH connections waiting to authenticate: closing new ones until some finish");
                }
                continue;
            };
            let _ = socket.set_nodelay(true);
            // A second handle on the socket, to shut it down if login takes too long:
            // russh's session task only ends when its socket does.
            let (socket, cut) = match duplicate(socket) {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot take an SSH connection");
                    continue;
                }
            };
            let (authenticated, on_auth) = oneshot::channel();
            let handler = factory.new_client(Some(peer)).on_authenticated(authenticated);
            let config = self.config.clone();
            tokio::spawn(session(config, socket, cut, handler, login, on_auth, self.login_grace));
        }
    }
}

fn duplicate(socket: TcpStream) -> std::io::Result<(TcpStream, std::net::TcpStream)> {
    let socket = socket.into_std()?;
    let cut = socket.try_clone()?;
    Ok((TcpStream::from_std(socket)?, cut))
}

/// Runs one connection. It holds a place among the unauthenticated (`login`) until it
/// authenticates, and is cut off (`cut` shut down) if that does not happen within `grace`.
async fn session(
    config: Arc<russh::server::Config>,
    socket: TcpStream,
    cut: std::net::TcpStream,
    handler: session::Connection,
    login: OwnedSemaphorePermit,
    on_auth: oneshot::Receiver<()>,
    grace: Duration,
) {
    let deadline = tokio::time::Instant::now() + grace;
    // The version exchange happens here: a client that sends nothing must not hold it.
    let session = match tokio::time::timeout_at(deadline, russh::server::run_stream(config, socket, handler)).await {
        Ok(Ok(session)) => session,
        Ok(Err(err)) => return tracing::debug!(error = %err, "SSH connection setup failed"),
        Err(_) => return tracing::debug!("SSH client sent no version in time: closed"),
    };
    let handle = session.handle();
    tokio::pin!(session);
    tokio::select! {
        ended = &mut session => return log_end(ended),
        authenticated = on_auth => if authenticated.is_err() {
            // The handler is gone: the session ended.
            return log_end(session.await);
        },
        () = tokio::time::sleep_until(deadline) => {
            tracing::debug!("SSH client did not authenticate in time: disconnected");
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, "authentication took too long".into(), String::new())
                .await;
            // A moment for the message to go out, then the socket is shut whatever the
            // client does.
            let _ = tokio::time::timeout(Duration::from_millis(500), &mut session).await;
            let _ = cut.shutdown(std::net::Shutdown::Both);
            drop(login);
            let _ = session.await;
            return;
        }
    }
    drop((login, cut));
    log_end(session.await);
}

fn log_end(ended: std::result::Result<(), russh::Error>) {
    // Clients hanging up, scanners, failed key exchanges: routine on an open port.
    if let Err(error) = ended {
        tracing::debug!(error = %error, "SSH session ended with an error");
    }
}
