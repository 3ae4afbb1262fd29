//! The process groups this runtime started, written down so that a server that died
//! without stopping them (killed, out of memory, power cut) can stop them at its next start:
//! processes are children of the server, and orphans would otherwise run forever, holding
//! ports and memory.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sys::signal::Signal;

use crate::group;

pub(crate) struct Ledger {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl Ledger {
    /// Kills every group a previous run recorded that is still the same group (same
    /// leader start time, so a reused pid is never hit), then starts an empty ledger.
    pub(crate) fn open(path: &Path) -> std::io::Result<Ledger> {
        if let Ok(text) = std::fs::read_to_string(path) {
            for line in text.lines() {
                let Some((pgid, started)) = line.split_once(' ') else { continue };
                let (Ok(pgid), Ok(started)) = (pgid.parse::<i32>(), started.parse::<u64>()) else { continue };
                if pgid > 1 && start_time(pgid) == Some(started) {
                    tracing::warn!(pgid, "stopping an app process left running by a previous server");
                    group::signal(pgid, Signal::SIGKILL);
                }
            }
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).write(true).truncate(true).open(path)?;
        Ok(Ledger { path: path.to_owned(), file: Mutex::new(Some(file)) })
    }

    /// Notes a new group, led by `pgid`.
    pub(crate) fn record(&self, pgid: i32) {
        let Some(started) = start_time(pgid) else { return };
        let mut file = self.file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(handle) = file.as_mut()
            && let Err(err) = writeln!(handle, "{pgid} {started}")
        {
            tracing::warn!(path = %self.path.display(), error = %err, "cannot record an app process");
            *file = None;
        }
    }
}

/// The start time of a process, in clock ticks since boot (`/proc/PID/stat`, field 22).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state …`: comm may hold spaces and parentheses; field 3 follows the last `)`.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_this_process_is_stable() {
        let me = i32::try_from(std::process::id()).expect("pid fits");
        let first = start_time(me).expect("own start time");
        assert_eq!(start_time(me), Some(first));
        assert_eq!(start_time(i32::MAX), None);
    }

    #[test]
    fn a_recorded_group_is_killed_at_the_next_open_and_others_are_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run").join("processes");
        let spawn = || {
            use std::os::unix::process::CommandExt;
            std::process::Command::new("sleep").arg("30").process_group(0).spawn().expect("sleep")
        };
        let (mut recorded, mut stranger) = (spawn(), spawn());
        let recorded_pid = i32::try_from(recorded.id()).expect("pid");
        let ledger = Ledger::open(&path).expect("ledger");
        ledger.record(recorded_pid);
        drop(ledger);
        // A stale line for the stranger's pid with the wrong start time must not hit it.
        let stranger_pid = i32::try_from(stranger.id()).expect("pid");
        let mut text = std::fs::read_to_string(&path).expect("ledger file");
        text.push_str(&format!("{stranger_pid} 1\n"));
        std::fs::write(&path, text).expect("write");

        let _ledger = Ledger::open(&path).expect("reopen");
        let status = recorded.wait().expect("wait");
        assert!(!status.success(), "the recorded group was killed");
        assert!(stranger.try_wait().expect("try_wait").is_none(), "the stranger still runs");
        let _ = stranger.kill();
        let _ = stranger.wait();
        assert_eq!(std::fs::read_to_string(&path).expect("ledger"), "", "a fresh ledger");
    }
}
