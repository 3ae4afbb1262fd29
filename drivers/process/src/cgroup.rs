//! What an instance uses, read from a cgroup of its own where the machine allows it (made
//! under the server's own cgroup, so every limit the server runs under still holds), else
//! from `/proc` over the instance's process group.
//!
//! cgroup v1 (a `memory` and a `cpuacct` hierarchy) and v2 (one unified hierarchy) are
//! both read. Each process of an instance is moved into its cgroup between fork and exec,
//! by writing `0` to the cgroup's `cgroup.procs` through a file the server opened before
//! the fork, so nothing it starts escapes it. Without a writable cgroup (an unprivileged
//! server, a read-only `/sys`), the instance runs as before and its figures come from
//! `/proc`: the resident memory and CPU time of the processes in its group (the CPU time
//! of children that have already exited is then not counted).

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use paastech_core::drivers::Usage;

/// Where instance cgroups are made, found once when the runtime is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cgroups {
    /// cgroup v1: the server's own cgroup in the memory and in the cpuacct hierarchy.
    V1 { memory: PathBuf, cpuacct: PathBuf },
    /// cgroup v2: the server's own cgroup; `memory` when the memory controller could be
    /// given to its children.
    V2 { base: PathBuf, memory: bool },
}

/// Distinguishes instance cgroups of one server process from those of another.
static NEXT: AtomicU64 = AtomicU64::new(0);

impl Cgroups {
    /// The cgroups this process may make children in, if any.
    pub(crate) fn detect() -> Option<Cgroups> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let found = locate(&mountinfo, &own)?;
        let writable = |dir: &Path| {
            let probe = dir.join(format!("paastech-probe-{}", std::process::id()));
            std::fs::create_dir(&probe).and_then(|()| std::fs::remove_dir(&probe)).is_ok()
        };
        let cgroups = match found {
            Cgroups::V1 { memory, cpuacct } => {
                (writable(&memory) && writable(&cpuacct)).then_some(Cgroups::V1 { memory, cpuacct })
            }
            Cgroups::V2 { base, .. } => {
                if !writable(&base) {
                    return None;
                }
                // Refused when the server's cgroup has processes of its own and is not the
                // root (v2's "no internal processes"): memory then comes from /proc.
                let memory = std::fs::OpenOptions::new()
                    .write(true)
                    .open(base.join("cgroup.subtree_control"))
                    .and_then(|mut f| f.write_all(b"+memory"))
                    .is_ok()
                    || std::fs::read_to_string(base.join("cgroup.subtree_control"))
                        .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
                Some(Cgroups::V2 { base, memory })
            }
        }?;
        cgroups.remove_stale();
        Some(cgroups)
    }

    /// Removes the empty instance cgroups a server that is gone left (it was killed before
    /// it could; its ledger has stopped their processes by now). Those of a server that
    /// runs (another one in the same cgroup) are its own.
    fn remove_stale(&self) {
        let bases = match self {
            Cgroups::V1 { memory, cpuacct } => vec![memory, cpuacct],
            Cgroups::V2 { base, .. } => vec![base],
        };
        let ours = format!("paastech-{}-", std::process::id());
        // `paastech-PID-N-NAME`, and the probes `paastech-probe-PID` (never left behind).
        for base in bases {
            let Ok(entries) = std::fs::read_dir(base) else { continue };
            for entry in entries.filter_map(|e| e.ok()) {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let Some(pid) = name.strip_prefix("paastech-").and_then(|rest| rest.split('-').next()) else {
                    continue;
                };
                let gone = pid.parse::<u32>().is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
                if gone && !name.starts_with(&ours) && entry.path().is_dir() {
                    // A cgroup that still has processes is not removed (EBUSY): left as it is.
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
    }

    /// Makes the cgroup of the instance `name`.
    pub(crate) fn create(&self, name: &str) -> io::Result<InstanceCgroup> {
        let leaf =
            format!("paastech-{}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed), sanitize(name));
        let dirs = match self {
            Cgroups::V1 { memory, cpuacct } => vec![memory.join(&leaf), cpuacct.join(&leaf)],
            Cgroups::V2 { base, .. } => vec![base.join(&leaf)],
        };
        for (made, dir) in dirs.iter().enumerate() {
            if let Err(err) = std::fs::create_dir(dir) {
                for dir in &dirs[..made] {
                    let _ = std::fs::remove_dir(dir);
                }
                return Err(err);
            }
        }
        let (memory, cpu) = match self {
            Cgroups::V1 { .. } => {
                (Some(dirs[0].join("memory.usage_in_bytes")), CpuFile::V1(dirs[1].join("cpuacct.usage")))
            }
            Cgroups::V2 { memory, .. } => {
                (memory.then(|| dirs[0].join("memory.current")), CpuFile::V2(dirs[0].join("cpu.stat")))
            }
        };
        Ok(InstanceCgroup { dirs, memory, cpu })
    }
}

/// An instance's own cgroup (one directory per hierarchy), removed with the instance.
#[derive(Debug)]
pub(crate) struct InstanceCgroup {
    dirs: Vec<PathBuf>,
    memory: Option<PathBuf>,
    cpu: CpuFile,
}

#[derive(Debug)]
enum CpuFile {
    /// Nanoseconds.
    V1(PathBuf),
    /// `usage_usec N` among other lines.
    V2(PathBuf),
}

impl InstanceCgroup {
    /// Files a child writes `0` to before exec, to move itself in: one per hierarchy.
    /// A directory removed meanwhile (by an operator's cleanup) is made again.
    pub(crate) fn procs_files(&self) -> io::Result<Vec<OwnedFd>> {
        self.dirs
            .iter()
            .map(|dir| {
                std::fs::create_dir_all(dir)?;
                std::fs::OpenOptions::new().write(true).open(dir.join("cgroup.procs")).map(OwnedFd::from)
            })
            .collect()
    }

    /// The processes in it now (none if its file cannot be read).
    pub(crate) fn pids(&self) -> Vec<i32> {
        let Some(dir) = self.dirs.first() else { return Vec::new() };
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        procs.lines().filter_map(|line| line.trim().parse().ok()).collect()
    }

    /// What its processes use now; a figure whose file cannot be read is `None`.
    pub(crate) fn usage(&self) -> Usage {
        let number = |path: &Path| std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse::<u64>().ok());
        let cpu_ns = match &self.cpu {
            CpuFile::V1(path) => number(path),
            CpuFile::V2(path) => std::fs::read_to_string(path).ok().and_then(|s| v2_usage_usec(&s)).map(|us| us * 1000),
        };
        Usage { cpu_ns, memory_bytes: self.memory.as_deref().and_then(number), memory_limit_bytes: None }
    }

    /// Whether memory is read here (else from `/proc`).
    pub(crate) fn reads_memory(&self) -> bool {
        self.memory.is_some()
    }

    /// Removes its directories; a cgroup that still has processes (none should: the group
    /// was killed) is left with a warning.
    pub(crate) fn remove(&self) {
        for dir in &self.dirs {
            // The kernel takes the killed processes out a moment after they are reaped.
            let mut tries = 0;
            while let Err(err) = std::fs::remove_dir(dir) {
                tries += 1;
                if err.kind() == io::ErrorKind::NotFound {
                    break;
                }
                if tries >= 50 {
                    tracing::warn!(cgroup = %dir.display(), error = %err, "cannot remove an instance's cgroup");
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

/// Moves the calling process into the cgroups whose `cgroup.procs` files are `files`.
/// Called between fork and exec: `write(2)` only, nothing allocated.
pub(crate) fn join(files: &[OwnedFd]) -> io::Result<()> {
    for file in files {
        nix::unistd::write(file, b"0").map_err(io::Error::from)?;
    }
    Ok(())
}

/// What the processes of the group `pgid` use, from `/proc`: resident memory and CPU time.
pub(crate) fn group_usage(pgid: i32) -> Usage {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Usage::default() };
    let page = page_size();
    let ticks = clock_ticks();
    let (mut memory, mut cpu, mut seen) = (0u64, 0u64, false);
    for entry in entries.filter_map(|e| e.ok()) {
        if !entry.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some(fields) = stat_fields(&stat) else { continue };
        if fields.pgrp != pgid {
            continue;
        }
        seen = true;
        memory += fields.rss_pages * page;
        cpu += (fields.utime + fields.stime) * (1_000_000_000 / ticks);
    }
    if seen {
        Usage { cpu_ns: Some(cpu), memory_bytes: Some(memory), memory_limit_bytes: None }
    } else {
        Usage::default()
    }
}

/// The fields of `/proc/PID/stat` read here.
#[derive(Debug, PartialEq, Eq)]
struct StatFields {
    pgrp: i32,
    utime: u64,
    stime: u64,
    rss_pages: u64,
}

/// `pid (comm) state ppid pgrp session … utime(14) stime(15) … rss(24)`; comm may hold
/// spaces and parentheses, hence the split at the last `)`.
fn stat_fields(stat: &str) -> Option<StatFields> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field N is fields[N - 3].
    let field = |n: usize| fields.get(n - 3).copied();
    Some(StatFields {
        pgrp: field(5)?.parse().ok()?,
        utime: field(14)?.parse().ok()?,
        stime: field(15)?.parse().ok()?,
        rss_pages: field(24)?.parse::<i64>().ok()?.max(0) as u64,
    })
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().map_or(4096, |v| v.max(1) as u64)
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().map_or(100, |v| v.max(1) as u64)
}

fn v2_usage_usec(cpu_stat: &str) -> Option<u64> {
    cpu_stat.lines().find_map(|line| line.strip_prefix("usage_usec ")?.trim().parse().ok())
}

/// An instance name as a directory name: `web.1` stays, anything odd is `_`.
fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') { c } else { '_' }).collect()
}

/// Where the server's own cgroups are, from `/proc/self/mountinfo` and `/proc/self/cgroup`.
/// v1 when both a memory and a cpuacct hierarchy are mounted (also on hybrid machines,
/// whose unified hierarchy then has no controllers), else v2.
fn locate(mountinfo: &str, own: &str) -> Option<Cgroups> {
    // (mount point, root within the hierarchy, fs type, super options)
    let mounts: Vec<(&str, &str, &str, &str)> = mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let before: Vec<&str> = before.split(' ').collect();
            let after: Vec<&str> = after.split(' ').collect();
            Some((*before.get(4)?, *before.get(3)?, *after.first()?, *after.get(2)?))
        })
        .collect();
    // `ID:CONTROLLERS:PATH` lines; v2's is `0::PATH`.
    let own_path = |controller: Option<&str>| -> Option<&str> {
        own.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            match controller {
                Some(c) => controllers.split(',').any(|x| x == c).then_some(path),
                None => controllers.is_empty().then_some(path),
            }
        })
    };
    let dir = |point: &str, root: &str, path: &str| -> PathBuf {
        let inside = if root != "/" { path.strip_prefix(root).unwrap_or(path) } else { path };
        Path::new(point).join(inside.trim_start_matches('/'))
    };
    let v1 = |controller: &str| -> Option<PathBuf> {
        let (point, root, _, _) =
            mounts.iter().find(|(_, _, fs, options)| *fs == "cgroup" && options.split(',').any(|o| o == controller))?;
        Some(dir(point, root, own_path(Some(controller))?))
    };
    if let (Some(memory), Some(cpuacct)) = (v1("memory"), v1("cpuacct")) {
        return Some(Cgroups::V1 { memory, cpuacct });
    }
    let (point, root, _, _) = mounts.iter().find(|(_, _, fs, _)| *fs == "cgroup2")?;
    Some(Cgroups::V2 { base: dir(point, root, own_path(None)?), memory: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTS: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn v1_hierarchies_are_found_under_the_servers_own_cgroups() {
        let own = "4:memory:/process_api/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n";
        assert_eq!(
            locate(HYBRID_MOUNTS, own),
            Some(Cgroups::V1 {
                memory: PathBuf::from("/sys/fs/cgroup/memory/process_api/abc"),
                cpuacct: PathBuf::from("/sys/fs/cgroup/cpuacct"),
            })
        );
        // Debian's joined cpu,cpuacct hierarchy.
        let joined = "33 31 0:30 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        let own = "5:cpu,cpuacct:/system.slice/paastech.service\n4:memory:/system.slice/paastech.service\n";
        assert_eq!(
            locate(joined, own),
            Some(Cgroups::V1 {
                memory: PathBuf::from("/sys/fs/cgroup/memory/system.slice/paastech.service"),
                cpuacct: PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/system.slice/paastech.service"),
            })
        );
    }

    #[test]
    fn v2_is_the_unified_hierarchy_with_a_container_root_taken_off() {
        let mounts = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            locate(mounts, "0::/system.slice/paastech.service\n"),
            Some(Cgroups::V2 { base: PathBuf::from("/sys/fs/cgroup/system.slice/paastech.service"), memory: false })
        );
        // In a container whose cgroup namespace shows its own cgroup as a mount root.
        let mounts = "30 23 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            locate(mounts, "0::/docker/abc/app\n"),
            Some(Cgroups::V2 { base: PathBuf::from("/sys/fs/cgroup/app"), memory: false })
        );
        assert_eq!(locate("", "0::/\n"), None);
    }

    #[test]
    fn proc_stat_fields_survive_odd_command_names() {
        let stat = "4242 (my (odd) app) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000 123456789 2560 18446744073709551615";
        assert_eq!(stat_fields(stat), Some(StatFields { pgrp: 4242, utime: 250, stime: 50, rss_pages: 2560 }));
        assert_eq!(stat_fields("garbage"), None);
    }

    #[test]
    fn v2_cpu_stat_gives_microseconds() {
        assert_eq!(v2_usage_usec("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n"), Some(1500));
        assert_eq!(v2_usage_usec("nr_periods 0\n"), None);
    }
}
