//! The SSH git server (russh); the only crate that knows SSH.
//!
//! It authenticates users by public key, accepts exactly two commands —
//! `git-receive-pack` and `git-upload-pack` on one project — and runs them as plain argv
//! (`git receive-pack PATH`), never through a shell. Everything else (shells, terminals,
//! other commands, env, forwarding, subsystems) is refused. Who may do what is not decided
//! here: the composition root implements [`GitAccess`].

mod command;
mod keys;
mod session;

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use paastech_core::{Error, ProjectName, Result};
use russh::MethodKind;
use russh::server::Server as _;
use tokio::net::TcpListener;

pub use command::{GitService, parse_git_command};
pub use keys::{ParsedKey, parse_public_key};

/// What the server asks of the rest of PaaSTech. Knows nothing of SSH.
#[async_trait]
pub trait GitAccess: Send + Sync {
    /// The user who registered the key with this fingerprint (`SHA256:…`, as
    /// `ssh-keygen -l` prints it), if any.
    async fn user_for_key(&self, fingerprint_sha256: &str) -> Option<i64>;

    /// Opens `project`'s repository for `user_id`, to push (`write`) or fetch. Answer
    /// `NotFound` or `Forbidden` when the project is missing or not theirs: both reach the
    /// user as the same "project not found or access denied".
    async fn open_repo(&self, user_id: i64, project: &ProjectName, write: bool) -> Result<RepoAccess>;
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

/// The SSH git server.
pub struct SshServer {
    config: Arc<russh::server::Config>,
    access: Arc<dyn GitAccess>,
    fingerprint: String,
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
        Ok(SshServer { config: Arc::new(config), access, fingerprint })
    }

    /// The host key's fingerprint (`SHA256:…`), for logs and for users to check.
    pub fn host_key_fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Serves connections from `listener` until the future is dropped. Sessions already
    /// running carry on to their end.
    pub async fn serve(self, listener: TcpListener) -> Result<()> {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, fingerprint = %self.fingerprint, "SSH git server listening");
        }
        let mut factory = session::Factory::new(self.access);
        factory
            .run_on_socket(self.config, &listener)
            .await
            .map_err(|err| Error::internal("the SSH server stopped", err))
    }
}
