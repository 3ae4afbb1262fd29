//! `paastech run -- CMD…` from a terminal: an interactive session over the API's WebSocket
//! (`GET /api/v1/projects/{name}/run/interactive`). The local terminal is put in raw mode
//! for the session's length (every key, Ctrl-C included, goes to the command; the remote
//! terminal echoes), its size is sent at the start and on each SIGWINCH, and the CLI exits
//! with the command's exit code.

use std::io::{IsTerminal, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::termios::{self, SetArg, Termios};
use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use crate::client::Client;

/// How long a read of the socket waits before the keys typed meanwhile are sent: the
/// latency a keystroke can see at most.
const POLL: Duration = Duration::from_millis(10);

/// Whether `run` opens an interactive session: `--tty` and `--no-tty` decide, else whether
/// stdin is a terminal (as `heroku run` and `docker exec -t` do), unless `--json` asked for
/// the output as JSON lines.
pub fn wanted(tty: bool, no_tty: bool, json: bool) -> bool {
    if tty || no_tty {
        return tty;
    }
    !json && std::io::stdin().is_terminal()
}

/// Runs `command` in `project` on a remote terminal; answers its exit code, with the local
/// terminal restored.
pub fn run(client: &Client, project: &str, command: Vec<String>) -> Result<i32> {
    // Blocked here, before any other thread exists, so every thread inherits the mask and
    // only the signal thread sees them (and can restore the terminal before exiting).
    let signals = handled_signals();
    signals.thread_block().context("blocking signals")?;
    // From here on the signals are the signal thread's: it runs before the connection is
    // made, so a Ctrl-C while connecting still ends the CLI.
    let saved: Arc<Mutex<Option<Termios>>> = Arc::default();
    let (to_server, outgoing) = mpsc::channel::<Message>();
    spawn_signals(signals, to_server.clone(), Arc::clone(&saved));

    let size = window_size();
    let mut request =
        session_url(client, project, &command, size)?.into_client_request().context("making the session request")?;
    if let Some(token) = client.token() {
        let value = format!("Bearer {token}").parse().context("the token is not a valid header value")?;
        request.headers_mut().insert("Authorization", value);
    }
    let (mut socket, _) = tungstenite::connect(request).map_err(|err| refused(client, err))?;
    set_read_timeout(&socket, POLL)?;

    let raw = RawMode::enter(Arc::clone(&saved))?;
    spawn_stdin(to_server);
    let ended = relay(&mut socket, &outgoing);
    drop(raw);
    let _ = socket.close(None);
    ended
}

/// The signals whose default would leave the terminal raw, and SIGWINCH.
fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGWINCH, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGINT, Signal::SIGQUIT] {
        set.add(signal);
    }
    set
}

fn session_url(client: &Client, project: &str, command: &[String], size: Option<(u16, u16)>) -> Result<String> {
    let base = client.base();
    let ws_base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        bail!("the server URL {base} is neither http:// nor https://");
    };
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("command", &serde_json::to_string(command)?);
    if let Some((rows, cols)) = size {
        query.append_pair("rows", &rows.to_string()).append_pair("cols", &cols.to_string());
    }
    if let Ok(term) = std::env::var("TERM")
        && !term.is_empty()
    {
        query.append_pair("term", &term);
    }
    Ok(format!("{ws_base}/api/v1/projects/{project}/run/interactive?{}", query.finish()))
}

/// What a refused upgrade or a failed connection means, in the API's own words when it
/// answered with its error body.
fn refused(client: &Client, err: tungstenite::Error) -> anyhow::Error {
    match err {
        tungstenite::Error::Http(response) => {
            let status = response.status();
            let message = response
                .body()
                .as_deref()
                .and_then(|body| serde_json::from_slice::<Value>(body).ok())
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("the server answered {status}"));
            if status == 401 && client.token().is_none() {
                return anyhow!("{message} (run `paastech login` first, or set PAASTECH_TOKEN)");
            }
            anyhow!("{message}")
        }
        other => anyhow!("cannot open a session on the PaaSTech server at {}: {other}", client.base()),
    }
}

fn set_read_timeout(socket: &WebSocket<MaybeTlsStream<TcpStream>>, timeout: Duration) -> Result<()> {
    let tcp = match socket.get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp,
        MaybeTlsStream::Rustls(tls) => tls.get_ref(),
        _ => bail!("unexpected kind of connection"),
    };
    tcp.set_read_timeout(Some(timeout)).context("setting up the connection")
}

/// Relays until the server's last message: output to stdout, keys and resizes to the
/// server. Answers the exit code, or the error the server gave.
fn relay(socket: &mut WebSocket<MaybeTlsStream<TcpStream>>, outgoing: &mpsc::Receiver<Message>) -> Result<i32> {
    let mut stdout = std::io::stdout().lock();
    loop {
        while let Ok(message) = outgoing.try_recv() {
            socket.send(message).context("sending to the session")?;
        }
        match socket.read() {
            Ok(Message::Binary(bytes)) => {
                stdout.write_all(&bytes)?;
                stdout.flush()?;
            }
            Ok(Message::Text(text)) => {
                let event: Value = serde_json::from_str(&text).context("unexpected message from the server")?;
                if let Some(code) = event["exit_code"].as_i64() {
                    return Ok(i32::try_from(code).unwrap_or(1));
                }
                if let Some(message) = event["error"]["message"].as_str() {
                    bail!("{message}");
                }
            }
            Ok(Message::Close(_)) => bail!("the server ended the session without the command's exit code"),
            Ok(_) => {}
            Err(tungstenite::Error::Io(err))
                if matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                bail!("the server ended the session without the command's exit code")
            }
            Err(err) => return Err(err).context("reading from the session"),
        }
    }
}

/// Sends what is typed, as it is typed. At the end of stdin (only when `--tty` was forced
/// on a pipe) it stops: the session goes on until the command ends.
fn spawn_stdin(to_server: mpsc::Sender<Message>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buffer = [0u8; 4096];
        loop {
            match stdin.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to_server.send(Message::Binary(buffer[..n].to_vec().into())).is_err() {
                        return;
                    }
                }
            }
        }
    });
}

/// Waits for the blocked signals: a window change is sent as a resize; any other restores
/// the terminal and exits as that signal would have (128 + N).
fn spawn_signals(signals: SigSet, to_server: mpsc::Sender<Message>, saved: Arc<Mutex<Option<Termios>>>) {
    std::thread::spawn(move || {
        loop {
            let Ok(signal) = signals.wait() else { return };
            if signal == Signal::SIGWINCH {
                if let Some((rows, cols)) = window_size() {
                    let resize = serde_json::json!({ "resize": { "rows": rows, "cols": cols } });
                    let _ = to_server.send(Message::Text(resize.to_string().into()));
                }
                continue;
            }
            // Taken, not copied: the guard then has nothing left to restore over it.
            if let Some(saved) = lock(&saved).take() {
                restore(&saved);
            }
            std::process::exit(128 + signal as i32);
        }
    });
}

/// The local terminal's size (rows, cols), when stdout or stdin is a terminal.
fn window_size() -> Option<(u16, u16)> {
    let stdout = std::io::stdout();
    let stdin = std::io::stdin();
    [stdout.as_fd(), stdin.as_fd()].into_iter().find_map(size_of)
}

fn size_of(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let mut size = nix::libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which outlives the call.
    #[allow(unsafe_code)]
    let done = unsafe { nix::libc::ioctl(fd.as_raw_fd(), nix::libc::TIOCGWINSZ, &mut size) };
    (done == 0 && size.ws_row > 0 && size.ws_col > 0).then_some((size.ws_row, size.ws_col))
}

/// The local terminal in raw mode while this lives (when stdin is a terminal): restored
/// when dropped, on every way out of the session, unwinding included, or by the signal
/// thread, which shares the saved mode.
struct RawMode {
    saved: Arc<Mutex<Option<Termios>>>,
}

impl RawMode {
    fn enter(saved: Arc<Mutex<Option<Termios>>>) -> Result<RawMode> {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            let mode = termios::tcgetattr(stdin.as_fd()).context("reading the terminal's mode")?;
            let mut raw = mode.clone();
            termios::cfmakeraw(&mut raw);
            // Saved first: a signal that arrives once the mode changed finds it.
            *lock(&saved) = Some(mode);
            termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).context("putting the terminal in raw mode")?;
        }
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = lock(&self.saved).take() {
            restore(&saved);
        }
    }
}

/// A poisoned lock only means a panic elsewhere; the saved mode is still the one to restore.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn restore(saved: &Termios) {
    let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, saved);
}
