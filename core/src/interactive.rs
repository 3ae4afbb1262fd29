//! Interactive one-off commands (`paastech run -- sh` from a terminal): the command runs
//! with a pseudo-terminal of its own, keystrokes and window sizes go in, the terminal's
//! bytes come out. The runtime owns the command from start to removal; this is what it
//! hands back while the command runs.

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::drivers::OneOff;
use crate::error::Result;

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

impl TtySize {
    /// What a session starts with when the client says nothing (a VT100's screen).
    pub const DEFAULT: TtySize = TtySize { rows: 24, cols: 80 };
}

/// What the user sends to an interactive command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TtyInput {
    /// Bytes typed, as the terminal sends them (0x03 is Ctrl-C: the pty's line discipline
    /// makes it SIGINT for the command's foreground process group).
    Bytes(Vec<u8>),
    /// The user's window changed size (the command gets SIGWINCH).
    Resize(TtySize),
}

/// How many messages each direction buffers before the sender waits: enough to absorb a
/// burst of output, small enough that a client that stops reading stops the command's
/// writes (the pty blocks it) rather than filling the server's memory.
pub const TTY_CHANNEL_BUFFER: usize = 64;

/// An interactive command while it runs, as a runtime hands it back.
///
/// Dropping `input` (or `output`) hangs up: the runtime kills the command and everything
/// it started, and removes it (unlike a non-interactive one-off, an interactive shell
/// without its user is pointless). `output` ends once the command has ended and all its
/// terminal output was delivered; then `exit` answers its exit code (128 + N for a command
/// killed by signal N), or the error that ended it (its timeout).
pub struct TtySession {
    pub input: mpsc::Sender<TtyInput>,
    pub output: mpsc::Receiver<Vec<u8>>,
    pub exit: oneshot::Receiver<Result<i32>>,
}

/// The runtime's ends of a [`TtySession`], made together with it.
pub struct TtyEnds {
    pub input: mpsc::Receiver<TtyInput>,
    pub output: mpsc::Sender<Vec<u8>>,
    pub exit: oneshot::Sender<Result<i32>>,
}

/// A connected pair: the session the caller keeps, the ends the runtime's task keeps.
pub fn tty_channels() -> (TtySession, TtyEnds) {
    let (input_tx, input_rx) = mpsc::channel(TTY_CHANNEL_BUFFER);
    let (output_tx, output_rx) = mpsc::channel(TTY_CHANNEL_BUFFER);
    let (exit_tx, exit_rx) = oneshot::channel();
    (
        TtySession { input: input_tx, output: output_rx, exit: exit_rx },
        TtyEnds { input: input_rx, output: output_tx, exit: exit_tx },
    )
}

/// How a runtime's interactive session ended.
#[derive(Debug)]
pub enum TtyEnd {
    /// The command ended: its exit code, or why it could not be read.
    Exited(Result<i32>),
    /// It ran past `OneOff::timeout` and was stopped.
    TimedOut,
    /// The caller dropped its ends: nobody waits for an answer.
    HungUp,
}

impl TtyEnd {
    /// Answers the caller on `exit` how the session ended (`run` words a timeout). Call it
    /// once all output was sent and `output` dropped: the caller reads that first. A
    /// hang-up (or no end at all) answers nothing.
    pub fn report(ended: Option<TtyEnd>, run: &OneOff, exit: oneshot::Sender<Result<i32>>) {
        let answer = match ended {
            Some(TtyEnd::Exited(code)) => code,
            Some(TtyEnd::TimedOut) => Err(run.timed_out()),
            Some(TtyEnd::HungUp) | None => return,
        };
        let _ = exit.send(answer);
    }
}

/// Sleeps until `deadline`, or forever without one (a `select!` branch that is off until
/// a deadline is set).
pub async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
