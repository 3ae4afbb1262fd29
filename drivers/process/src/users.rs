//! Apps never run as the server's user: each project's builds and processes run as a
//! uid (and gid, the same number) of its own, taken from a configured range and written
//! down per project in `data_dir/run/app-uids`, so no account needs to be made
//! (`useradd`) and a project keeps its uid across restarts.
//!
//! The switch happens in the child between fork and exec ([`AppUser::drop_privileges`]):
//! supplementary groups cleared, gid then uid set (real, effective and saved), the
//! ambient capabilities cleared (they would survive exec for a non-root uid: a server given
//! `CAP_SETUID` as an ambient capability would hand it on), `PR_SET_NO_NEW_PRIVS` (no
//! set-uid binary or file capability gives anything back) and a umask of 007.
//!
//! Files: a release directory belongs to the project's uid, with the server's gid as its
//! group and the set-gid bit on its directories, so what the app makes stays readable by
//! the server (the ingress serves static sites from there) and removable by it
//! (directories group-writable); others get nothing. The data directory is traversable
//! (0711) so that an app reaches its release, and everything else in it is the server's
//! alone.
//!
//! The switch needs root or the capabilities `CAP_SETUID`, `CAP_SETGID` (the switch),
//! `CAP_CHOWN` (release directories) and `CAP_KILL` (stopping another uid's processes),
//! and a data directory that other users may pass to. Without them apps run as the
//! server's own user, and the runtime says so once at start.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use paastech_core::{Error, ProjectName, Result};

/// The default range: far above the uids of people (1000…60000) and of the subordinate
/// ranges `useradd` hands out for rootless containers (100000 on, 65536 a user).
pub const DEFAULT_FIRST_UID: u32 = 2_000_000_000;
pub const DEFAULT_UID_COUNT: u32 = 100_000;

/// The capabilities the switch needs, by number (linux/capability.h) and name.
const NEEDED_CAPS: [(u32, &str); 4] = [(0, "CAP_CHOWN"), (5, "CAP_KILL"), (6, "CAP_SETGID"), (7, "CAP_SETUID")];

/// One project's identity: the uid and gid its processes run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AppUser {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl AppUser {
    /// Becomes this user, for good. Runs in the child between fork and exec: only raw
    /// system calls, nothing allocated.
    pub(crate) fn drop_privileges(self) -> io::Result<()> {
        use nix::libc;
        // SAFETY: plain system calls with integer arguments (and a null list for
        // setgroups with a count of 0).
        #[allow(unsafe_code)]
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(self.gid, self.gid, self.gid) != 0
                || libc::setresuid(self.uid, self.uid, self.uid) != 0
                || libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            {
                return Err(io::Error::last_os_error());
            }
            libc::umask(0o007);
        }
        Ok(())
    }
}

/// The per-project uids of one data directory, and the server's own gid (the group of
/// release directories).
#[derive(Debug)]
pub struct AppUsers {
    first: u32,
    count: u32,
    file: PathBuf,
    data_dir: PathBuf,
    server_gid: u32,
    /// `None`: the server can switch users. `Some`: why not and what would let it (apps
    /// run as the server).
    cannot: Option<(String, String)>,
    cache: Mutex<HashMap<String, u32>>,
}

impl PartialEq for AppUsers {
    fn eq(&self, other: &AppUsers) -> bool {
        (self.first, self.count, &self.file) == (other.first, other.count, &other.file)
    }
}

/// One [`AppUsers`] per data directory, shared by the runtime and the builder of this
/// crate: the range is a key of `[runtime]`, and the builder must give a project's build
/// the uid its processes will have.
fn registry() -> &'static Mutex<HashMap<PathBuf, Arc<AppUsers>>> {
    static USERS: OnceLock<Mutex<HashMap<PathBuf, Arc<AppUsers>>>> = OnceLock::new();
    USERS.get_or_init(Mutex::default)
}

impl AppUsers {
    /// The app users of `data_dir`, with the range `(first, count)` when given (the
    /// runtime's options), else the range already set for it (the builder), else the
    /// default.
    pub fn shared(data_dir: &Path, range: Option<(u32, u32)>) -> Arc<AppUsers> {
        let mut users = registry().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = users.get(data_dir)
            && range.is_none_or(|(first, count)| (existing.first, existing.count) == (first, count))
        {
            return Arc::clone(existing);
        }
        let (first, count) = range.unwrap_or((DEFAULT_FIRST_UID, DEFAULT_UID_COUNT));
        let made = Arc::new(AppUsers::new(data_dir, first, count));
        users.insert(data_dir.to_owned(), Arc::clone(&made));
        made
    }

    fn new(data_dir: &Path, first: u32, count: u32) -> AppUsers {
        AppUsers {
            first,
            count,
            file: data_dir.join("run").join("app-uids"),
            data_dir: data_dir.to_owned(),
            server_gid: effective_ids().1,
            cannot: missing_privileges().or_else(|| closed_above(data_dir)),
            cache: Mutex::default(),
        }
    }

    /// Whether apps get uids of their own here.
    pub(crate) fn switching(&self) -> bool {
        self.cannot.is_none()
    }

    /// The one line the runtime logs at start: which isolation apps get, and which not.
    pub(crate) fn describe(&self) -> String {
        match &self.cannot {
            None => format!(
                "app isolation: each project's builds and processes run as a uid of its own ({}-{}, in {}), \
                 with no access to the data directory, the database, the keys or other projects' files",
                self.first,
                self.first.saturating_add(self.count - 1),
                self.file.display()
            ),
            Some((why, remedy)) => format!(
                "app isolation: none between apps and the server: {why}, so builds and apps run as the server's own \
                 user (uid {}) and can read its data directory, database, keys and every project's files; they still \
                 get a clean environment, their own session and cgroup; {remedy} for a uid per project",
                effective_ids().0
            ),
        }
    }

    /// The user `project` runs as, given one from the range the first time. `None` when
    /// the server cannot switch.
    pub(crate) fn user(&self, project: &ProjectName) -> Result<Option<AppUser>> {
        if !self.switching() {
            return Ok(None);
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&uid) = cache.get(project.as_str()) {
            return Ok(Some(AppUser { uid, gid: uid }));
        }
        let uid = self
            .allocate(project.as_str())
            .map_err(|err| Error::internal(format!("giving project {project} a uid in {}", self.file.display()), err))?
            .ok_or_else(|| {
                Error::Unavailable(format!(
                    "every uid of the app range {}-{} is taken: widen [runtime] app_uids",
                    self.first,
                    self.first.saturating_add(self.count - 1)
                ))
            })?;
        cache.insert(project.as_str().to_owned(), uid);
        Ok(Some(AppUser { uid, gid: uid }))
    }

    /// Reads the file under an exclusive lock (the runtime and the builder allocate
    /// through it, and so would a second server on the same data directory) and appends
    /// the project when it has no uid yet: the lowest free one of the range.
    fn allocate(&self, project: &str) -> io::Result<Option<u32>> {
        let (mut file, text) = self.open_locked()?;
        let (taken, used) = read_uids(&text);
        if let Some(&uid) = taken.get(project) {
            return Ok(Some(uid));
        }
        let Some(uid) = (0..self.count).map(|i| self.first.saturating_add(i)).find(|uid| !used.contains(uid)) else {
            return Ok(None);
        };
        file.seek(io::SeekFrom::End(0))?;
        file.write_all(format!("{project} {uid}\n").as_bytes())?;
        file.sync_data()?;
        Ok(Some(uid))
    }

    /// Retires the uid of a deleted project (a `NAME -` line): a project made later under
    /// that name, whoever owns it, gets a new uid, so what the old one left (in `/tmp`,
    /// in a shared memory segment) stays out of its reach; the retired uid is never handed
    /// out again.
    pub(crate) fn retire(&self, project: &ProjectName) -> io::Result<()> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.remove(project.as_str());
        let (mut file, text) = self.open_locked()?;
        if read_uids(&text).0.contains_key(project.as_str()) {
            file.seek(io::SeekFrom::End(0))?;
            file.write_all(format!("{project} -\n").as_bytes())?;
            file.sync_data()?;
        }
        Ok(())
    }

    /// The uid file, made if missing, under an exclusive lock (held until the file is
    /// dropped), and what it says.
    fn open_locked(&self) -> io::Result<(File, String)> {
        if let Some(parent) = self.file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut file = File::options().read(true).append(true).create(true).open(&self.file)?;
        file.lock()?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        Ok((file, text))
    }

    /// Makes the data directory traversable (never listable) by app users and takes
    /// group and others' access off everything else in it but `releases` and `cache`,
    /// which a server of an older version (or another umask) may have left readable.
    pub(crate) fn guard_data_dir(&self) -> io::Result<()> {
        if !self.switching() {
            return Ok(());
        }
        traversable(&self.data_dir)?;
        if !reachable_by_others(&self.data_dir) {
            tracing::warn!(
                data_dir = %self.data_dir.display(),
                "a directory above the data directory is closed to other users (no o+x): apps still start in their \
                 release directory, but nothing reaches it by its absolute path (virtualenv scripts, a static site's \
                 own server); put data_dir where every user may pass, such as /var/lib/paastech"
            );
        }
        for entry in std::fs::read_dir(&self.data_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let kind = entry.file_type()?;
            if kind.is_symlink() {
                continue;
            }
            if name == "releases" || name == "cache" {
                traversable(&entry.path())?;
                continue;
            }
            let mode = entry.metadata()?.mode() & 0o7777;
            if mode & 0o077 != 0 {
                std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode & 0o700))?;
            }
        }
        Ok(())
    }

    /// Gives the release directory `dir` (and everything in it) to `user`, with the
    /// server's group and nothing for others, and makes the directories above it in the
    /// data directory traversable. Symbolic links are changed, never followed.
    pub(crate) fn give_release(&self, dir: &Path, user: AppUser) -> io::Result<()> {
        for ancestor in dir.ancestors().skip(1) {
            if !ancestor.starts_with(&self.data_dir) {
                break;
            }
            traversable(ancestor)?;
        }
        give_tree(dir, user.uid, self.server_gid)
    }

    /// Gives `dir` to `user` when it is a release of this data directory that the server
    /// still owns: restored from a backup (which keeps no uid map), or built before the
    /// server could switch users. A directory outside the data directory, or one another
    /// uid owns, is left as it is.
    pub(crate) fn adopt_release(&self, dir: &Path, user: AppUser) -> io::Result<()> {
        if !dir.starts_with(&self.data_dir) {
            return Ok(());
        }
        let owner = std::fs::metadata(dir)?.uid();
        if owner == user.uid || owner != effective_ids().0 {
            return Ok(());
        }
        self.give_release(dir, user)
    }

    /// The project's own cache directory (`cache/PROJECT`), made and given to its user:
    /// download caches and the build's HOME, never shared with another project.
    pub(crate) fn project_cache(&self, cache_dir: &Path, project: &ProjectName, user: AppUser) -> io::Result<PathBuf> {
        let dir = cache_dir.join(project.as_str());
        std::fs::create_dir_all(dir.join("home"))?;
        for ancestor in dir.ancestors().skip(1) {
            if !ancestor.starts_with(&self.data_dir) {
                break;
            }
            traversable(ancestor)?;
        }
        // Only the two directories: what the builds cached there is the app's already.
        give_dir(&dir, user.uid, self.server_gid)?;
        give_dir(&dir.join("home"), user.uid, self.server_gid)?;
        Ok(dir)
    }
}

/// The uid file's lines in order (`NAME UID` gives NAME a uid, `NAME -` retires it): each
/// project's uid now, and every uid ever given (a retired one too).
fn read_uids(text: &str) -> (BTreeMap<&str, u32>, std::collections::BTreeSet<u32>) {
    let (mut taken, mut used) = (BTreeMap::new(), std::collections::BTreeSet::new());
    for (name, uid) in text.lines().filter_map(|line| line.split_once(' ')) {
        match uid.trim() {
            "-" => {
                taken.remove(name);
            }
            uid => {
                if let Ok(uid) = uid.parse() {
                    taken.insert(name, uid);
                    used.insert(uid);
                }
            }
        }
    }
    (taken, used)
}

/// rwx for the owner, x for group and others: reachable, not listable.
fn traversable(dir: &Path) -> io::Result<()> {
    let mode = std::fs::metadata(dir)?.mode() & 0o7777;
    let wanted = (mode & 0o700) | 0o011;
    if mode != wanted {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(wanted))?;
    }
    Ok(())
}

/// `chown -R uid:gid` without following links; directories `2770` (set-gid: what the app
/// makes has the server's group), files the owner's bits copied to the group, nothing
/// for others. The mode is set first, while the server still owns the file (a server
/// that is not root has `CAP_CHOWN` but not `CAP_FOWNER`); chown keeps a directory's
/// set-gid bit.
fn give_tree(root: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let mut stack = vec![root.to_owned()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if !meta.file_type().is_symlink() {
            if meta.is_dir() {
                for entry in std::fs::read_dir(&path)? {
                    stack.push(entry?.path());
                }
            }
            set_mode(&path, &meta, private_mode(&meta))?;
        }
        if (meta.uid(), meta.gid()) != (uid, gid) {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

/// [`give_tree`] of one directory, not what is in it.
fn give_dir(dir: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    set_mode(dir, &meta, 0o2770)?;
    if (meta.uid(), meta.gid()) != (uid, gid) {
        std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    }
    Ok(())
}

fn private_mode(meta: &std::fs::Metadata) -> u32 {
    if meta.is_dir() {
        0o2770
    } else {
        let owner = meta.mode() & 0o700;
        owner | (owner >> 3)
    }
}

/// chmod unless the mode is already `wanted` (a file the app owns by now cannot be
/// changed by a server that is not root, and need not be).
fn set_mode(path: &Path, meta: &std::fs::Metadata, wanted: u32) -> io::Result<()> {
    if meta.mode() & 0o7777 != wanted {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted))?;
    }
    Ok(())
}

/// Why apps could not be given uids of their own under `data_dir`, and what would let
/// them: a directory above it that other users cannot pass (a data directory in root's
/// home, the default of a server run as root from a shell) would keep every app from its
/// release by path, and a virtualenv's scripts name their interpreter by path.
fn closed_above(data_dir: &Path) -> Option<(String, String)> {
    let closed = data_dir
        .ancestors()
        .skip(1)
        .filter(|dir| dir.exists())
        .find(|dir| std::fs::metadata(dir).is_ok_and(|m| m.mode() & 0o001 == 0))?;
    Some((
        format!(
            "the data directory {} is below {}, which other users cannot pass, so apps of their own uids could not \
             reach their releases",
            data_dir.display(),
            closed.display()
        ),
        "set data_dir where every user may pass, such as /var/lib/paastech,".into(),
    ))
}

/// Why this process cannot switch users, or `None` when it can: it is root with the
/// capabilities, or holds them (effective) as another uid.
fn missing_privileges() -> Option<(String, String)> {
    let remedy =
        "run the server as root or with CAP_SETUID, CAP_SETGID, CAP_CHOWN and CAP_KILL (the packaged unit does)";
    missing_capabilities().map(|why| (why, remedy.to_owned()))
}

fn missing_capabilities() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok();
    let effective = status.as_deref().and_then(|s| capabilities(s, "CapEff"));
    let Some(effective) = effective else {
        return Some("its capabilities cannot be read from /proc/self/status".into());
    };
    let missing: Vec<&str> =
        NEEDED_CAPS.iter().filter(|(bit, _)| effective & (1 << bit) == 0).map(|(_, name)| *name).collect();
    if missing.is_empty() {
        None
    } else {
        Some(format!("the server (uid {}) lacks {}", effective_ids().0, missing.join(", ")))
    }
}

/// This process's effective uid and gid.
fn effective_ids() -> (u32, u32) {
    // SAFETY: geteuid(2) and getegid(2) cannot fail and touch no memory.
    #[allow(unsafe_code)]
    unsafe {
        (nix::libc::geteuid(), nix::libc::getegid())
    }
}

/// A capability mask line (`CapEff:\t000001ffffffffff`) of `/proc/PID/status`.
fn capabilities(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        u64::from_str_radix(value.trim(), 16).ok()
    })
}

/// Whether a user who is neither the owner nor in the group can reach `path`: every
/// directory on the way has `o+x`. Tools of the server found on PATH in a private home
/// (`/root/.cargo/bin`, a pyenv shim) are of no use to an app user.
pub(crate) fn reachable_by_others(path: &Path) -> bool {
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    // The path itself too: a directory of PATH must be searchable, a program executable.
    path.ancestors().all(|dir| std::fs::metadata(dir).is_ok_and(|m| m.mode() & 0o001 != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_capability_masks() {
        let status = "Name:\tpaastech\nCapInh:\t0000000000000000\nCapEff:\t00000000000000e1\n";
        assert_eq!(capabilities(status, "CapEff"), Some(0xe1));
        assert_eq!(capabilities(status, "CapInh"), Some(0));
        assert_eq!(capabilities(status, "CapAmb"), None);
    }

    #[test]
    fn reachable_means_every_directory_on_the_way_open_to_others() {
        let tmp = tempfile::tempdir().expect("dir");
        let bin = tmp.path().join("bin");
        std::fs::create_dir(&bin).expect("mkdir");
        let chmod = |path: &Path, mode| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
        chmod(tmp.path(), 0o755).expect("chmod");
        chmod(&bin, 0o755).expect("chmod");
        assert!(reachable_by_others(&bin));
        chmod(&bin, 0o750).expect("chmod");
        assert!(!reachable_by_others(&bin), "the directory itself closed");
        chmod(&bin, 0o711).expect("chmod");
        chmod(tmp.path(), 0o700).expect("chmod");
        assert!(!reachable_by_others(&bin), "a directory above it closed");
        assert!(!reachable_by_others(&tmp.path().join("missing")));
        assert!(reachable_by_others(Path::new("/bin/sh")));
    }

    #[test]
    fn projects_get_the_lowest_free_uid_and_keep_it() {
        let dir = tempfile::tempdir().expect("dir");
        let users = AppUsers::new(dir.path(), 5000, 2);
        assert_eq!(users.allocate("blog").expect("alloc"), Some(5000));
        assert_eq!(users.allocate("shop").expect("alloc"), Some(5001));
        assert_eq!(users.allocate("blog").expect("alloc"), Some(5000));
        assert_eq!(users.allocate("wiki").expect("alloc"), None, "the range is full");
        // Another process (a restart) reads the same file.
        let again = AppUsers::new(dir.path(), 5000, 2);
        assert_eq!(again.allocate("shop").expect("alloc"), Some(5001));
    }

    #[test]
    fn a_deleted_projects_uid_is_retired_never_given_again() {
        let dir = tempfile::tempdir().expect("dir");
        let users = AppUsers::new(dir.path(), 5000, 3);
        let blog = ProjectName::parse("blog").expect("name");
        assert_eq!(users.allocate("blog").expect("alloc"), Some(5000));
        assert_eq!(users.allocate("shop").expect("alloc"), Some(5001));
        users.retire(&blog).expect("retire");
        users.retire(&blog).expect("retiring twice is no error");
        assert_eq!(users.allocate("blog").expect("alloc"), Some(5002), "a new blog gets a new uid");
        assert_eq!(users.allocate("shop").expect("alloc"), Some(5001), "others keep theirs");
        assert_eq!(users.allocate("wiki").expect("alloc"), None, "5000 is retired, not free");
        let text = std::fs::read_to_string(dir.path().join("run").join("app-uids")).expect("file");
        assert_eq!(text, "blog 5000\nshop 5001\nblog -\nblog 5002\n");
    }
}
