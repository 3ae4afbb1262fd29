//! Issue #15's interactive `run`: `paastech run -- sh` driven through a real pseudo-terminal
//! made here, as a user at a terminal drives it, against a real server on the process
//! runtime: typed commands run in the live deployment's env, a window resize reaches the
//! command, Ctrl-C interrupts a job and not the shell, `exit 3` is the CLI's exit code, the
//! local terminal is restored (also when the client is sent SIGTERM), a killed client kills
//! its command, another user's project is refused, and an idle session is ended.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::pty::{Winsize, openpty};
use nix::sys::termios::{LocalFlags, tcgetattr};
use paastech_tests::{GitRepo, Server, example, paastech_bin};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// The CLI running on a pty whose master side the test holds, as a terminal emulator does.
struct Terminal {
    child: Child,
    master: File,
    screen: Arc<Mutex<Vec<u8>>>,
}

impl Terminal {
    /// `paastech ARGS` with the pty's slave side as its controlling terminal and stdio.
    fn spawn(server: &Server, token: &str, args: &[&str]) -> Terminal {
        let pty = openpty(&Winsize { ws_row: 24, ws_col: 80, ws_xpixel: 0, ws_ypixel: 0 }, None).expect("openpty");
        let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup the pty"));
        let mut command = Command::new(paastech_bin());
        command
            .args(args)
            .env("HOME", server.dir.path())
            .env_remove("XDG_CONFIG_HOME")
            .env("PAASTECH_SERVER", server.api_url())
            .env("PAASTECH_TOKEN", token)
            .env("TERM", "xterm")
            .stdin(slave(&pty.slave))
            .stdout(slave(&pty.slave))
            .stderr(slave(&pty.slave));
        // SAFETY: between fork and exec only setsid(2) and ioctl(2) run, both
        // async-signal-safe, and nothing is allocated.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("spawning paastech on a pty");
        drop(pty.slave);
        let master = File::from(pty.master);
        let screen = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().expect("dup the master");
        let seen = Arc::clone(&screen);
        // Reads until the slave side is closed everywhere (EIO).
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                seen.lock().expect("screen").extend_from_slice(&buffer[..n]);
            }
        });
        Terminal { child, master, screen }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().expect("screen")).into_owned()
    }

    fn mark(&self) -> usize {
        self.screen.lock().expect("screen").len()
    }

    fn type_in(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("typing");
    }

    /// Waits until `needle` shows after `from`, or panics with the screen.
    fn wait_for(&self, from: usize, needle: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let screen = self.screen.lock().expect("screen");
            if String::from_utf8_lossy(&screen[from.min(screen.len())..]).contains(needle) {
                return;
            }
            drop(screen);
            assert!(Instant::now() < deadline, "{needle:?} did not show within {WAIT:?}: {:?}", self.text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn resize(&self, rows: u16, cols: u16) {
        let size = nix::libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which outlives the call.
        #[allow(unsafe_code)]
        let done = unsafe { nix::libc::ioctl(self.master.as_raw_fd(), nix::libc::TIOCSWINSZ, &size) };
        assert_eq!(done, 0, "resizing the pty");
    }

    /// The local terminal's line discipline flags (the pty pair shares them).
    fn local_flags(&self) -> LocalFlags {
        tcgetattr(self.master.as_fd()).expect("tcgetattr").local_flags
    }

    fn exit_code(&mut self) -> Option<i32> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "paastech did not exit: {:?}", self.text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes of this machine whose command line is exactly `argv`.
fn processes_running(argv: &[&str]) -> usize {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|entry| entry.ok())
        .filter(|entry| std::fs::read(entry.path().join("cmdline")).is_ok_and(|cmdline| cmdline == want))
        .count()
}

#[test]
fn paastech_run_sh_on_a_terminal() {
    let server = Server::start("");
    let ada = server.developer("ada@example.com");
    let (status, body) = server.api().req("POST", "/projects", Some(&ada.token), Some(json!({"name": "tty"})));
    assert_eq!(status, 201, "{body}");
    let repo =
        GitRepo::from_dir(&server.dir.path().join("repo"), &example("static-hello"), &ada.key, server.ssh_port, "tty");
    let (pushed, output) = repo.push("main");
    assert!(pushed, "{output}");

    let mut terminal = Terminal::spawn(&server, &ada.token, &["run", "-p", "tty", "--", "sh"]);
    // `$((…))` is expanded remotely, so the terminal's echo of the typed line never matches.
    terminal.type_in(b"echo \"project=$PAASTECH_PROJECT sum=$((40+2))\"; stty size\r");
    terminal.wait_for(0, "project=tty sum=42");
    terminal.wait_for(0, "24 80");
    let raw = terminal.local_flags();
    assert!(!raw.intersects(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG), "raw mode: {raw:?}");

    // The window changes: SIGWINCH reaches the CLI, which tells the server.
    let mark = terminal.mark();
    terminal.resize(33, 99);
    std::thread::sleep(Duration::from_millis(500));
    terminal.type_in(b"stty size\r");
    terminal.wait_for(mark, "33 99");

    // Ctrl-C is a byte for the remote terminal: it ends the job, not the shell.
    let mark = terminal.mark();
    let started = Instant::now();
    terminal.type_in(b"sleep 100\r");
    terminal.wait_for(mark, "sleep 100");
    std::thread::sleep(Duration::from_millis(500));
    terminal.type_in(&[0x03]);
    terminal.type_in(b"echo \"after=$((1+1))\"\r");
    terminal.wait_for(mark, "after=2");
    assert!(started.elapsed() < Duration::from_secs(20), "the sleep was interrupted");

    terminal.type_in(b"exit 3\r");
    assert_eq!(terminal.exit_code(), Some(3), "the command's exit code: {:?}", terminal.text());
    let restored = terminal.local_flags();
    assert!(restored.contains(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG), "restored: {restored:?}");

    // A client that goes away (killed: no chance to say goodbye) takes its command along.
    let secs = (20_000 + std::process::id() % 40_000).to_string();
    let mut terminal = Terminal::spawn(&server, &ada.token, &["run", "-p", "tty", "--", "sh"]);
    terminal.type_in(format!("sleep {secs}\r").as_bytes());
    let deadline = Instant::now() + WAIT;
    while processes_running(&["sleep", &secs]) == 0 {
        assert!(Instant::now() < deadline, "the sleep started: {:?}", terminal.text());
        std::thread::sleep(Duration::from_millis(100));
    }
    terminal.child.kill().expect("killing the client");
    let _ = terminal.child.wait();
    let deadline = Instant::now() + WAIT;
    while processes_running(&["sleep", &secs]) > 0 {
        assert!(Instant::now() < deadline, "a hang-up kills the command");
        std::thread::sleep(Duration::from_millis(100));
    }

    // SIGTERM to the client: it restores the terminal and exits as the signal would have;
    // its command goes with it.
    let secs = (30_000 + std::process::id() % 30_000).to_string();
    let mut terminal = Terminal::spawn(&server, &ada.token, &["run", "-p", "tty", "--", "sh"]);
    terminal.type_in(format!("sleep {secs}\r").as_bytes());
    let deadline = Instant::now() + WAIT;
    while processes_running(&["sleep", &secs]) == 0 {
        assert!(Instant::now() < deadline, "the sleep started: {:?}", terminal.text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!terminal.local_flags().contains(LocalFlags::ECHO), "raw while the session runs");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(terminal.child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    assert_eq!(terminal.exit_code(), Some(128 + 15), "{:?}", terminal.text());
    let restored = terminal.local_flags();
    assert!(restored.contains(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG), "restored: {restored:?}");
    let deadline = Instant::now() + WAIT;
    while processes_running(&["sleep", &secs]) > 0 {
        assert!(Instant::now() < deadline, "the client's end kills the command");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Another user's project is refused as if it did not exist, and nothing runs.
    let bob = server.developer("bob@example.com");
    let home = server.dir.path().join("bob");
    std::fs::create_dir_all(&home).expect("bob's home");
    let output = Command::new(paastech_bin())
        .args(["run", "-p", "tty", "--tty", "--", "sh", "-c", "echo ran"])
        .env("HOME", &home)
        .env("PAASTECH_SERVER", server.api_url())
        .env("PAASTECH_TOKEN", &bob.token)
        .stdin(Stdio::null())
        .output()
        .expect("running paastech as bob");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "refused: {stderr}");
    assert!(stderr.contains("not found"), "{stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("ran"));
    // The same through the API, before any upgrade: 404 for Bob; for Ada, a plain GET is
    // told the route is a WebSocket, and a command that is not a JSON array is refused.
    let route = "/projects/tty/run/interactive?command=%5B%22sh%22%5D";
    let (status, body) = server.api().req("GET", route, Some(&bob.token), None);
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    let (status, body) = server.api().req("GET", route, Some(&ada.token), None);
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("WebSocket")), "{body}");
    let (status, body) = server.api().req("GET", "/projects/tty/run/interactive?command=sh", Some(&ada.token), None);
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("JSON array")), "{body}");

    // Without a terminal (stdin a pipe), `run` streams lines as before.
    let output = Command::new(paastech_bin())
        .args(["run", "-p", "tty", "--", "sh", "-c", "echo \"piped=$((2+3))\"; exit 5"])
        .env("HOME", server.dir.path())
        .env("PAASTECH_SERVER", server.api_url())
        .env("PAASTECH_TOKEN", &ada.token)
        .stdin(Stdio::piped())
        .output()
        .expect("running paastech on a pipe");
    assert_eq!(output.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "piped=5\n");
}

#[test]
fn a_session_with_neither_input_nor_output_is_ended_at_the_idle_limit() {
    // The harness writes [api] itself: the key goes into the file between two starts.
    let mut server = Server::start("");
    server.stop();
    let config = std::fs::read_to_string(&server.config_path).expect("config");
    std::fs::write(&server.config_path, config.replacen("[api]\n", "[api]\nrun_idle_timeout_secs = 3\n", 1))
        .expect("config");
    server.start_again();
    let ada = server.developer("ada@example.com");
    let (status, body) = server.api().req("POST", "/projects", Some(&ada.token), Some(json!({"name": "idle"})));
    assert_eq!(status, 201, "{body}");
    let repo =
        GitRepo::from_dir(&server.dir.path().join("repo"), &example("static-hello"), &ada.key, server.ssh_port, "idle");
    let (pushed, output) = repo.push("main");
    assert!(pushed, "{output}");

    let secs = (60_000 + std::process::id() % 40_000).to_string();
    let mut terminal = Terminal::spawn(&server, &ada.token, &["run", "-p", "idle", "--", "sh"]);
    terminal.type_in(format!("sleep {secs}\r").as_bytes());
    let deadline = Instant::now() + WAIT;
    while processes_running(&["sleep", &secs]) == 0 {
        assert!(Instant::now() < deadline, "the sleep started: {:?}", terminal.text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = Instant::now();
    assert_eq!(terminal.exit_code(), Some(1), "the CLI fails: {:?}", terminal.text());
    assert!(started.elapsed() < Duration::from_secs(20), "ended near the limit: {:?}", started.elapsed());
    terminal.wait_for(0, "no input or output for 3 s");
    let deadline = Instant::now() + WAIT;
    while processes_running(&["sleep", &secs]) > 0 {
        assert!(Instant::now() < deadline, "the idle command was killed");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A client that keeps its connection open but stops reading while the command writes
    // without end: past the idle limit it counts as gone, and the command is killed.
    let marker = format!("flood-{}", std::process::id());
    let command = format!("%5B%22yes%22%2C%22{marker}%22%5D");
    let mut client = std::net::TcpStream::connect(("127.0.0.1", server.api_port)).expect("connect to the API");
    let upgrade = format!(
        "GET /api/v1/projects/idle/run/interactive?command={command} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Authorization: Bearer {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        ada.token
    );
    client.write_all(upgrade.as_bytes()).expect("upgrade request");
    let mut head = [0u8; 12];
    client.read_exact(&mut head).expect("the answer's status line");
    assert_eq!(&head, b"HTTP/1.1 101", "switched to the WebSocket");
    let deadline = Instant::now() + WAIT;
    while processes_running(&["yes", &marker]) == 0 {
        assert!(Instant::now() < deadline, "the flood started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + WAIT;
    while processes_running(&["yes", &marker]) > 0 {
        assert!(Instant::now() < deadline, "a client that stopped reading is taken as gone");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(client);
}
