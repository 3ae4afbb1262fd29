//! Signals to whole process groups: every instance and build step leads its own session
//! (and so its own group), so one signal reaches the shell, the app and anything the app
//! started.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::time::Instant;

/// Makes the process `command` starts the leader of a new session, and so of a new
/// process group whose id is its pid. A session of its own means no controlling terminal
/// (a hangup of the operator's terminal never reaches apps) and, on kernels that group
/// scheduling by session (autogroup, the default on desktop and many server kernels), a
/// CPU share of its own: a busy app competes with the ingress and the API as one peer,
/// not inside the server's share.
pub(crate) fn own_session(command: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed; setsid(2) is one, and nothing is allocated.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(std::io::Error::from));
    }
}

/// The group id of a child started by [`own_session`]: its own pid. `None` for a
/// value that must never be signalled (0 and 1 would hit our own group or init).
pub(crate) fn pgid_of(child: &Child) -> Option<i32> {
    child.id().and_then(|pid| i32::try_from(pid).ok()).filter(|&pid| pid > 1)
}

/// Sends `signal` to the group; a group that no longer exists is not an error.
pub(crate) fn signal(pgid: i32, signal: Signal) {
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(err) => tracing::warn!(pgid, %signal, error = %err, "signalling a process group"),
    }
}

/// Whether any process of the group is still alive. Zombies do not count: an orphan
/// is reaped by init, and an init that never reaps (as in some containers and VMs) must
/// not make every stop wait its whole grace period.
pub(crate) fn alive(pgid: i32) -> bool {
    if killpg(Pid::from_raw(pgid), None) == Err(Errno::ESRCH) {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .any(|stat| live_member(&stat, pgid))
}

/// Parses `/proc/PID/stat`: `pid (comm) state ppid pgrp …`, where comm may hold spaces
/// and parentheses, hence the split at the last `)`.
fn live_member(stat: &str, pgid: i32) -> bool {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let state = fields.next();
    let pgrp = fields.nth(1).and_then(|f| f.parse::<i32>().ok());
    pgrp == Some(pgid) && !matches!(state, Some("Z" | "X" | "x"))
}

/// SIGKILL to every process of the session led by `sid`, whatever process group it is in
/// (a shell with job control puts each job in a group of its own), until none is left
/// alive or a few seconds passed.
pub(crate) async fn kill_session(sid: i32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let members = session_members(sid);
        if members.is_empty() || Instant::now() >= deadline {
            return;
        }
        for pid in members {
            match nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(err) => tracing::warn!(pid, error = %err, "killing a process of an interactive session"),
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The live (not zombie) processes of session `sid`.
pub(crate) fn session_members(sid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()))
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| live_in_session(&stat, sid))
        })
        .collect()
}

/// `/proc/PID/stat` again: `pid (comm) state ppid pgrp session …`.
fn live_in_session(stat: &str, sid: i32) -> bool {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let state = fields.next();
    let session = fields.nth(2).and_then(|f| f.parse::<i32>().ok());
    session == Some(sid) && !matches!(state, Some("Z" | "X" | "x"))
}

/// SIGTERM to the group, then SIGKILL to what is left after `grace`. Reaps the leader and
/// returns once the group is gone (or SIGKILL was sent to it).
pub(crate) async fn terminate(child: &mut Child, pgid: i32, grace: Duration) {
    signal(pgid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    let mut leader_reaped = false;
    loop {
        if !leader_reaped {
            leader_reaped = matches!(child.try_wait(), Ok(Some(_)) | Err(_));
        }
        if leader_reaped && !alive(pgid) {
            return;
        }
        if Instant::now() >= deadline {
            signal(pgid, Signal::SIGKILL);
            if !leader_reaped {
                let _ = child.wait().await;
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_stat() {
        assert!(live_member("42 (sleep) S 1 40 40 0 -1", 40));
        assert!(live_member("42 (a) b) (c) R 1 40 40 0", 40));
        assert!(!live_member("42 (sleep) Z 1 40 40 0 -1", 40));
        assert!(!live_member("42 (sleep) S 1 41 41 0 -1", 40));
        assert!(!live_member("garbage", 40));
        assert!(live_in_session("42 (sleep) S 1 43 40 0 -1", 40));
        assert!(!live_in_session("42 (sleep) Z 1 43 40 0 -1", 40));
        assert!(!live_in_session("42 (sleep) S 1 40 41 0 -1", 40));
    }
}
