//! The conformance case of interactive one-offs (`Runtime::run_interactive`,
//! `docs/specs/runtime.md`), for the runtimes that have them (process, Docker, Podman):
//! a shell on a real terminal, driven as a user would.

use std::time::{Duration, Instant};

use paastech_core::drivers::OneOff;
use paastech_core::interactive::{TtyInput, TtySession, TtySize};

use crate::conformance::{AfterRestart, Target, project};

/// One `#[tokio::test]` for the interactive case, with a fresh target from `$target`.
#[macro_export]
macro_rules! conformance_tty_tests {
    ($target:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn interactive_commands_on_a_terminal() {
            let target: $crate::conformance::Target = $target;
            $crate::conformance_tty::interactive_commands_on_a_terminal(&target).await;
        }
    };
}

const WAIT: Duration = Duration::from_secs(30);

/// What a session printed so far, read as a user's screen would show it.
struct Screen {
    session: TtySession,
    seen: Vec<u8>,
}

impl Screen {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    async fn send(&self, bytes: &[u8]) {
        self.session.input.send(TtyInput::Bytes(bytes.to_vec())).await.expect("the session takes input");
    }

    /// Reads until `needle` appears after what was seen before the call (`from`), or panics
    /// after `WAIT` with what the screen shows.
    async fn wait_for(&mut self, from: usize, needle: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if String::from_utf8_lossy(&self.seen[from.min(self.seen.len())..]).contains(needle) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.session.output.recv()).await {
                Ok(Some(bytes)) => self.seen.extend_from_slice(&bytes),
                Ok(None) => panic!("the terminal closed before {needle:?} appeared: {:?}", self.text()),
                Err(_) => panic!("{needle:?} did not appear within {WAIT:?}: {:?}", self.text()),
            }
        }
    }

    /// Reads to the end of the output, then the exit code.
    async fn exit(self) -> paastech_core::Result<i32> {
        let Screen { session, mut seen } = self;
        let TtySession { input, mut output, exit } = session;
        let ended = tokio::time::timeout(WAIT, async {
            while let Some(bytes) = output.recv().await {
                seen.extend_from_slice(&bytes);
            }
            exit.await
        })
        .await;
        // Kept until the end: dropping it is a hang-up.
        drop(input);
        let screen = String::from_utf8_lossy(&seen).into_owned();
        match ended {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => panic!("the session ended without an exit code: {screen:?}"),
            Err(_) => panic!("the session did not end within {WAIT:?}: {screen:?}"),
        }
    }
}

/// The processes of this machine whose command line is exactly `argv` (containers' too:
/// the host sees every pid namespace).
fn processes_running(argv: &[&str]) -> usize {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter(|entry| std::fs::read(entry.path().join("cmdline")).is_ok_and(|cmdline| cmdline == want))
        .count()
}

/// MUST: `run_interactive` runs the command in the deployment's artifact and env on a
/// terminal of the size asked for: typed input reaches it and its output comes back
/// (echoed by the terminal), a resize is seen by the command, Ctrl-C (0x03) interrupts
/// the foreground job without ending the shell, and its exit code comes back after all
/// its output. Hanging up (dropping the session) kills the command and what it started:
/// nothing of it is left running.
pub async fn interactive_commands_on_a_terminal(target: &Target) {
    let runtime = (target.new_runtime)();
    let project = project("tty");
    let mut spec = target.spec(&project, 1, "web", 0);
    spec.process_type = "run".to_owned();
    let run = |argv: &[&str]| OneOff { argv: argv.iter().map(|a| (*a).to_owned()).collect(), timeout: WAIT * 4 };

    let session = runtime
        .run_interactive(spec.clone(), run(&["sh"]), TtySize { rows: 24, cols: 80 })
        .await
        .unwrap_or_else(|e| panic!("starting an interactive shell: {e}"));
    let mut screen = Screen { session, seen: Vec::new() };
    // `$((…))` is expanded by the shell, so the echo of what was typed never matches.
    screen.send(b"echo \"env=$MARKER sum=$((40+2))\"; stty size\n").await;
    screen.wait_for(0, &format!("env={project}-v1 sum=42")).await;
    screen.wait_for(0, "24 80").await;

    let mark = screen.seen.len();
    screen.session.input.send(TtyInput::Resize(TtySize { rows: 41, cols: 132 })).await.expect("resize");
    screen.send(b"stty size\n").await;
    screen.wait_for(mark, "41 132").await;

    // Ctrl-C ends the foreground `sleep`, not the shell, which answers at once.
    let mark = screen.seen.len();
    let started = Instant::now();
    screen.send(b"sleep 100\n").await;
    screen.wait_for(mark, "sleep 100").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    screen.send(&[0x03]).await;
    screen.send(b"echo \"after=$((1+1))\"\n").await;
    screen.wait_for(mark, "after=2").await;
    assert!(started.elapsed() < Duration::from_secs(20), "the sleep was interrupted: {:?}", started.elapsed());

    screen.send(b"echo bye; exit 3\n").await;
    assert_eq!(screen.exit().await.expect("the shell's end"), 3, "its exit code comes back");

    // A hang-up kills what runs, even a job the shell put in a group of its own.
    let secs = (10_000 + std::process::id() % 50_000).to_string();
    let session = runtime
        .run_interactive(spec.clone(), run(&["sh"]), TtySize::DEFAULT)
        .await
        .unwrap_or_else(|e| panic!("starting an interactive shell: {e}"));
    let screen = Screen { session, seen: Vec::new() };
    screen.send(format!("sleep {secs} & sleep {secs}; echo never\n").as_bytes()).await;
    let deadline = Instant::now() + WAIT;
    while processes_running(&["sleep", &secs]) < 2 {
        assert!(Instant::now() < deadline, "both sleeps started: {:?}", screen.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(screen);
    let deadline = Instant::now() + WAIT;
    while processes_running(&["sleep", &secs]) > 0 {
        assert!(Instant::now() < deadline, "a hang-up leaves nothing of the command running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!runtime.list().await.expect("list").iter().any(|i| i.project == project), "a one-off is no instance");
    if target.after_restart == AfterRestart::Adopted {
        // Nothing of the container is left either: a new runtime finds no stray one-off
        // (creation times are in whole seconds, hence the wait).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!((target.new_runtime)().remove_stray_one_offs().await.expect("sweep"), 0, "the container is gone");
    }
}
