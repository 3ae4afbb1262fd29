//! One SSH connection: authentication, channel requests, and running git on a channel.
//!
//! russh hands every channel message both to the [`Handler`] callbacks and to the
//! [`Channel`] object, whose queue is bounded: a `Channel` nobody reads stalls the whole
//! connection. So each session channel gets a task that owns the `Channel` and reads it from
//! the moment it opens; the handler answers the requests (it has the `Session` to reply
//! with) and tells the task what to do through a oneshot.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use paastech_core::{Error, ProjectName};
use russh::keys::ssh_key::PublicKey;
use russh::server::{Auth, ChannelOpenHandle, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use paastech_core::metrics::{OpenGuard, metrics};

use crate::command::{GitService, parse_git_command};
use crate::{GitAccess, RepoAccess};

/// git needs one channel; a few allow connection sharing without letting a client pile up
/// processes.
const MAX_CHANNELS: usize = 4;
/// After git exits its output should end at once; a grandchild holding the pipes open must
/// not keep the channel (and the exit status) hostage.
const OUTPUT_DRAIN: Duration = Duration::from_secs(10);
/// Variables git may inherit from the server; everything else is cleared.
const INHERITED_ENV: [&str; 3] = ["PATH", "HOME", "LANG"];

const DENIED: &str = "project not found or access denied";
const NO_SHELL: &str = "PaaSTech serves git only: there is no shell; use git push or git fetch";
const NO_TTY: &str = "PaaSTech serves git only: terminals are not supported";
const NO_SUBSYSTEM: &str = "PaaSTech serves git only: subsystems are not supported";

pub(crate) struct Factory {
    access: Arc<dyn GitAccess>,
}

impl Factory {
    pub(crate) fn new(access: Arc<dyn GitAccess>) -> Self {
        Factory { access }
    }
}

impl russh::server::Server for Factory {
    type Handler = Connection;

    fn new_client(&mut self, peer: Option<SocketAddr>) -> Connection {
        Connection {
            access: self.access.clone(),
            peer,
            user_id: None,
            channels: HashMap::new(),
            on_auth: None,
            _open: metrics().ssh_connection(),
        }
    }
}

/// What a channel's task should do, decided by the handler.
enum Start {
    Git { service: GitService, project: ProjectName, repo: RepoAccess, user_id: i64, protocol: Option<&'static str> },
    Refuse(String),
}

struct PendingChannel {
    /// Taken by the first shell/exec/subsystem request: a channel runs one thing.
    start: Option<oneshot::Sender<Start>>,
    /// A terminal was asked for; git never does.
    pty: bool,
    /// The wire protocol version the client asked for (`GIT_PROTOCOL`), checked.
    git_protocol: Option<&'static str>,
}

pub(crate) struct Connection {
    access: Arc<dyn GitAccess>,
    peer: Option<SocketAddr>,
    user_id: Option<i64>,
    channels: HashMap<ChannelId, PendingChannel>,
    /// Told once the client has authenticated.
    on_auth: Option<oneshot::Sender<()>>,
    /// Counts the connection open while it lives.
    _open: OpenGuard,
}

impl Connection {
    pub(crate) fn on_authenticated(mut self, tell: oneshot::Sender<()>) -> Self {
        self.on_auth = Some(tell);
        self
    }

    async fn lookup(&self, key: &PublicKey) -> Option<i64> {
        self.access.user_for_key(&crate::keys::fingerprint(key)).await
    }

    /// Answers a shell/exec/subsystem request: success (so the client reads what follows),
    /// then hands the decision to the channel's task. Refusals are then a message on stderr
    /// and exit status 1, which every client shows, instead of a bare protocol failure.
    fn start(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<Option<(oneshot::Sender<Start>, &PendingChannel)>, russh::Error> {
        let Some(pending) = self.channels.get_mut(&channel) else {
            session.channel_failure(channel)?;
            return Ok(None);
        };
        let Some(tx) = pending.start.take() else {
            session.channel_failure(channel)?;
            return Ok(None);
        };
        session.channel_success(channel)?;
        Ok(Some((tx, pending)))
    }

    async fn decide(&self, command: &[u8], protocol: Option<&'static str>) -> Start {
        let Some(user_id) = self.user_id else {
            return Start::Refuse(DENIED.to_owned());
        };
        let parsed = std::str::from_utf8(command)
            .map_err(|_| Error::Invalid("unsupported command".to_owned()))
            .and_then(parse_git_command);
        let (service, project) = match parsed {
            Ok(parsed) => parsed,
            Err(err) => {
                tracing::info!(user_id, peer = ?self.peer, "SSH command refused");
                return Start::Refuse(err.to_string());
            }
        };
        match self.access.open_repo(user_id, self.peer.map(|peer| peer.ip()), &project, service.is_write()).await {
            Ok(repo) => Start::Git { service, project, repo, user_id, protocol },
            Err(Error::NotFound(_) | Error::Unauthorized(_)) => {
                tracing::info!(user_id, project = %project, "git access denied");
                Start::Refuse(DENIED.to_owned())
            }
            // A member whose role does not allow the verb: the message names the role
            // needed (a non-member gets `NotFound`, answered as above).
            Err(Error::Forbidden(message)) => {
                tracing::info!(user_id, project = %project, "git verb refused for the role");
                Start::Refuse(message)
            }
            Err(err) => {
                tracing::error!(user_id, project = %project, error = %err, "opening a repository failed");
                Start::Refuse(format!("cannot open {project} right now: {err}"))
            }
        }
    }
}

impl Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(&mut self, _user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        // Refusing unknown keys before the signature lets the client try its next key.
        Ok(match self.lookup(offer.public_key).await {
            Some(_) => Auth::Accept,
            None => Auth::reject(),
        })
    }

    async fn auth_publickey(&mut self, _user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        match self.lookup(key.public_key).await {
            Some(user_id) => {
                tracing::debug!(user_id, peer = ?self.peer, "SSH key accepted");
                self.user_id = Some(user_id);
                if let Some(tell) = self.on_auth.take() {
                    let _ = tell.send(());
                }
                Ok(Auth::Accept)
            }
            None => Ok(Auth::reject()),
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.channels.len() >= MAX_CHANNELS {
            reply.reject(russh::ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        reply.accept().await;
        let (tx, rx) = oneshot::channel();
        self.channels.insert(channel.id(), PendingChannel { start: Some(tx), pty: false, git_protocol: None });
        tokio::spawn(run_channel(channel, rx));
        Ok(())
    }

    async fn channel_close(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some((tx, pending)) = self.start(channel, session)? else {
            return Ok(());
        };
        let (pty, protocol) = (pending.pty, pending.git_protocol);
        let start = if pty { Start::Refuse(NO_TTY.to_owned()) } else { self.decide(data, protocol).await };
        let _ = tx.send(start);
        Ok(())
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        // Even after a refused terminal (an interactive `ssh git@host`), what the user needs
        // to hear is that there is no shell.
        if let Some((tx, _pty)) = self.start(channel, session)? {
            let _ = tx.send(Start::Refuse(NO_SHELL.to_owned()));
        }
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some((tx, _)) = self.start(channel, session)? {
            let _ = tx.send(Start::Refuse(NO_SUBSYSTEM.to_owned()));
        }
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Refused, and remembered: the shell or command that follows is refused with a
        // message saying why.
        if let Some(pending) = self.channels.get_mut(&channel) {
            pending.pty = true;
        }
        session.channel_failure(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // git asks for its wire protocol this way; that alone is taken, and only as one of
        // the values git knows. Anything else (OpenSSH sends LANG) is refused, which
        // clients ignore: the child's environment stays ours.
        let version = match (name, value) {
            ("GIT_PROTOCOL", "version=2") => Some("version=2"),
            ("GIT_PROTOCOL", "version=1") => Some("version=1"),
            _ => None,
        };
        match (version, self.channels.get_mut(&channel)) {
            (Some(version), Some(pending)) => {
                pending.git_protocol = Some(version);
                session.channel_success(channel)
            }
            _ => session.channel_failure(channel),
        }
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }
}

/// Owns one session channel from its opening: reads it (so the connection never stalls)
/// until the handler says what to run, then runs it.
async fn run_channel(channel: Channel<Msg>, mut start: oneshot::Receiver<Start>) {
    let (mut read, write) = channel.split();
    let mut client_eof = false;
    let start = loop {
        tokio::select! {
            // The handler decides before the session reads the client's next packet, so a
            // decision is always seen before any data sent after the command.
            biased;
            decided = &mut start => match decided {
                Ok(decided) => break decided,
                // The channel closed before any command.
                Err(_) => return,
            },
            msg = read.wait() => match msg {
                None | Some(ChannelMsg::Close) => return,
                Some(ChannelMsg::Eof) => client_eof = true,
                // Requests are answered by the handler; data before a command has no reader.
                Some(_) => {}
            },
        }
    };
    match start {
        Start::Refuse(message) => refuse(&write, &message).await,
        Start::Git { service, project, repo, user_id, protocol } => {
            tracing::info!(user_id, project = %project, service = service.subcommand(), "git started");
            let code = run_git(service, repo, protocol, read, &write, client_eof).await;
            tracing::info!(user_id, project = %project, service = service.subcommand(), code, "git finished");
            metrics().git_operation(service.subcommand());
        }
    }
}

async fn refuse(write: &ChannelWriteHalf<Msg>, message: &str) {
    let mut stderr = write.make_writer_ext(Some(1));
    let _ = stderr.write_all(format!("{message}\n").as_bytes()).await;
    let _ = stderr.flush().await;
    finish(write, 1).await;
}

/// The end of a channel, in the only order git's client accepts: all output (already
/// queued), exit status, EOF, close.
async fn finish(write: &ChannelWriteHalf<Msg>, code: u32) {
    let _ = write.exit_status(code).await;
    let _ = write.eof().await;
    let _ = write.close().await;
}

/// Runs `git SERVICE PATH` with the channel as its stdin/stdout/stderr; returns its exit code.
async fn run_git(
    service: GitService,
    repo: RepoAccess,
    protocol: Option<&str>,
    mut read: ChannelReadHalf,
    write: &ChannelWriteHalf<Msg>,
    client_eof: bool,
) -> u32 {
    let mut command = tokio::process::Command::new("git");
    // An argv, never a shell line: the path is ours, the service one of two words.
    command.arg(service.subcommand()).arg(&repo.path).env_clear();
    for name in INHERITED_ENV {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    if let Some(protocol) = protocol {
        command.env("GIT_PROTOCOL", protocol);
    }
    command
        .envs(repo.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            tracing::error!(error = %err, "cannot start git");
            refuse(write, "the git server is unavailable, try again later").await;
            return 1;
        }
    };
    let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        // All three were piped above.
        refuse(write, "the git server is unavailable, try again later").await;
        return 1;
    };
    let mut stdin = (!client_eof).then_some(stdin);
    let out_pump = tokio::spawn(pump(stdout, write.make_writer()));
    let err_pump = tokio::spawn(pump(stderr, write.make_writer_ext(Some(1))));

    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            msg = read.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if let Some(pipe) = stdin.as_mut() {
                        // git may have stopped reading (it failed): drop the rest.
                        if pipe.write_all(&data).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                // Closing git's stdin is how it learns the client has sent everything.
                Some(ChannelMsg::Eof) => stdin = None,
                None | Some(ChannelMsg::Close) => {
                    tracing::info!("client left before git finished");
                    let _ = child.start_kill();
                    break child.wait().await;
                }
                Some(_) => {}
            },
        }
    };
    drop(stdin);
    // git is done: the hook ticket (or whatever the access holds) may go now.
    drop(repo);

    // Let the pumps finish while still reading the channel, which must never back up.
    let drained = async {
        let _ = tokio::time::timeout(OUTPUT_DRAIN, async {
            let _ = out_pump.await;
            let _ = err_pump.await;
        })
        .await;
    };
    tokio::pin!(drained);
    let mut open = true;
    loop {
        tokio::select! {
            () = &mut drained => break,
            msg = read.wait(), if open => open = !matches!(msg, None | Some(ChannelMsg::Close)),
        }
    }
    let code = exit_code(status);
    finish(write, code).await;
    code
}

async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) {
    // An error means the client is gone; dropping `from` then makes git's writes fail.
    let _ = tokio::io::copy(&mut from, &mut to).await;
    let _ = to.flush().await;
}

fn exit_code(status: std::io::Result<ExitStatus>) -> u32 {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => u32::try_from(code).unwrap_or(1),
            (None, Some(signal)) => 128 + u32::try_from(signal).unwrap_or(0),
            (None, None) => 1,
        },
        Err(err) => {
            tracing::error!(error = %err, "waiting for git failed");
            1
        }
    }
}
