//! Interactive one-offs on a real pseudo-terminal: the command leads a session of its own
//! whose controlling terminal is the pty's slave side, so the line discipline does what a
//! terminal does (echo, Ctrl-C as SIGINT to the foreground process group, SIGWINCH on a
//! resize); the runtime keeps the master side and relays it to the session's channels.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::pty::{Winsize, openpty};
use paastech_core::drivers::OneOff;
use paastech_core::interactive::{TtyEnd, TtyEnds, TtyInput, TtySize, sleep_until_some};
use paastech_core::{Error, Result};
use tokio::io::unix::AsyncFd;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::group;
use crate::runtime::Launch;

/// How long the terminal's last output is read after the command ended, before its end
/// is reported anyway (something outside its session may hold the terminal open).
const DRAIN: Duration = Duration::from_secs(2);
/// Input taken from the user but not yet written to the pty; past it, the session stops
/// taking input until the command reads.
const MAX_PENDING_INPUT: usize = 64 * 1024;

/// Starts `launch` on a new pty of `size` and returns once it runs; a task then relays the
/// terminal until the command ends, the user hangs up, or `run.timeout` passes.
pub(crate) fn start(launch: &Launch, run: &OneOff, size: TtySize, ends: TtyEnds) -> Result<()> {
    let winsize = Winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    let pty = openpty(&winsize, None).map_err(|err| Error::internal("opening a pseudo-terminal", err))?;
    let child = spawn_on(launch, pty.slave).map_err(|err| match err.kind() {
        io::ErrorKind::NotFound => {
            Error::Invalid(format!("{}: no such program in the release or on the server", run.program()))
        }
        _ => Error::internal(format!("starting {} on a terminal", run.program()), err),
    })?;
    let sid = group::pgid_of(&child);
    if let (Some(ledger), Some(sid)) = (&launch.ledger, sid) {
        ledger.record(sid);
    }
    let master = nonblocking(pty.master).map_err(|err| Error::internal("setting up the pseudo-terminal", err))?;
    tokio::spawn(relay(child, master, sid, ends, run.clone()));
    Ok(())
}

/// Spawns the command with the slave side as stdin, stdout and stderr, in a new session
/// whose controlling terminal it is. The parent's copies of the slave are closed on
/// return, so the master reads end-of-file (EIO) once the command's session is gone.
fn spawn_on(launch: &Launch, slave: OwnedFd) -> io::Result<Child> {
    let mut command = Command::new(&launch.program);
    command
        .args(&launch.args)
        .current_dir(&launch.dir)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave))
        .kill_on_drop(true);
    // SAFETY: the closure runs in the child between fork and exec, after stdio was set up,
    // where only async-signal-safe calls are allowed: setsid(2) and ioctl(2) are, and
    // nothing is allocated.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid().map_err(io::Error::from)?;
            // The terminal on stdin becomes the new session's controlling terminal.
            if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    if let Some(user) = launch.user {
        // SAFETY: as above: in the child, after the terminal is its own; raw system calls
        // only.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || user.drop_privileges());
        }
    }
    command.spawn()
}

fn nonblocking(master: OwnedFd) -> io::Result<AsyncFd<File>> {
    let flags = OFlag::from_bits_truncate(fcntl(&master, FcntlArg::F_GETFL)?);
    fcntl(&master, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    // SAFETY: the `File` owns the descriptor, keeps it open and never changes it while the
    // `AsyncFd` holds it.
    #[allow(unsafe_code)]
    let registered = unsafe { AsyncFd::register(File::from(master)) };
    Ok(registered?)
}

/// Tells the pty (and so the foreground process group, by SIGWINCH) the new size.
fn resize(master: &File, size: TtySize) -> io::Result<()> {
    let winsize = nix::libc::winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which outlives the call.
    #[allow(unsafe_code)]
    let done = unsafe { nix::libc::ioctl(master.as_raw_fd(), nix::libc::TIOCSWINSZ, &winsize) };
    if done == -1 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

async fn relay(mut child: Child, master: AsyncFd<File>, sid: Option<i32>, ends: TtyEnds, run: OneOff) {
    let TtyEnds { mut input, output, exit } = ends;
    let deadline = Instant::now() + run.timeout;
    let mut pending: Vec<u8> = Vec::new();
    let mut buffer = vec![0u8; 16 * 1024];
    let mut output_open = true;
    let mut ended: Option<TtyEnd> = None;
    let mut drain_until: Option<Instant> = None;
    loop {
        if let Some(end) = &ended
            && (!output_open || matches!(end, TtyEnd::HungUp))
        {
            break;
        }
        tokio::select! {
            readable = master.readable(), if output_open => {
                let Ok(mut guard) = readable else { output_open = false; continue };
                match guard.try_io(|fd| fd.get_ref().read(&mut buffer)) {
                    Err(_would_block) => {}
                    // EIO: no process holds the slave side any more.
                    Ok(Ok(0)) | Ok(Err(_)) => output_open = false,
                    Ok(Ok(n)) => {
                        if output.send(buffer[..n].to_vec()).await.is_err() {
                            ended = Some(TtyEnd::HungUp);
                        }
                    }
                }
            }
            writable = master.writable(), if !pending.is_empty() && ended.is_none() => {
                let Ok(mut guard) = writable else { pending.clear(); continue };
                match guard.try_io(|fd| fd.get_ref().write(&pending)) {
                    Err(_would_block) => {}
                    Ok(Ok(n)) => { pending.drain(..n); }
                    Ok(Err(err)) => {
                        tracing::debug!(error = %err, "writing to an interactive command's terminal");
                        pending.clear();
                    }
                }
            }
            message = input.recv(), if ended.is_none() && pending.len() < MAX_PENDING_INPUT => match message {
                Some(TtyInput::Bytes(bytes)) => pending.extend_from_slice(&bytes),
                Some(TtyInput::Resize(size)) => {
                    if let Err(err) = resize(master.get_ref(), size) {
                        tracing::debug!(error = %err, "resizing an interactive command's terminal");
                    }
                }
                None => ended = Some(TtyEnd::HungUp),
            },
            () = output.closed(), if ended.is_none() => ended = Some(TtyEnd::HungUp),
            status = child.wait(), if ended.is_none() => {
                let code = match status {
                    Ok(status) => {
                        use std::os::unix::process::ExitStatusExt;
                        status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
                    }
                    Err(_) => -1,
                };
                // What it left in its session would hold the terminal open (and outlive it).
                if let Some(sid) = sid {
                    group::kill_session(sid).await;
                }
                ended = Some(TtyEnd::Exited(Ok(code)));
                drain_until = Some(Instant::now() + DRAIN);
            }
            () = tokio::time::sleep_until(deadline), if ended.is_none() => {
                ended = Some(TtyEnd::TimedOut);
                if let Some(sid) = sid {
                    group::kill_session(sid).await;
                }
                drain_until = Some(Instant::now() + DRAIN);
            }
            () = sleep_until_some(drain_until) => output_open = false,
        }
    }
    if let Some(sid) = sid {
        group::kill_session(sid).await;
    }
    let _ = child.wait().await;
    // All output first, then the end: the caller reads `output` to its end before `exit`.
    drop(output);
    TtyEnd::report(ended, &run, exit);
}
