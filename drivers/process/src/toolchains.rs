//! The interpreters on this machine a build may use: every Python 3 (`python3` and
//! `python3.X` on the server's PATH, pyenv's versions, uv's managed ones) and every Node
//! (`node` on PATH, nvm's versions), each with its exact version. Which one an app gets is
//! core's rule (`paastech_core::app::versions`); this module only looks.
//!
//! pyenv's `shims` directory is skipped: a shim picks its version from the directory it
//! runs in (`.python-version`), so it is not one interpreter; pyenv's versions are read
//! from its `versions/` directory instead.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use paastech_core::app::versions::Interpreter;
use semver::Version;
use tokio::process::Command;

/// The PATH of an environment without one.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// How long an interpreter may take to say its version.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Every Python 3 found, one entry per real interpreter (symlinks resolved), any order.
pub async fn pythons(env: &ToolEnv) -> Vec<Interpreter> {
    let mut found = Vec::new();
    for dir in env.path_dirs() {
        if dir.file_name() == Some(OsStr::new("shims")) {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let versioned = name.strip_prefix("python3.").is_some_and(is_number);
            if name == "python3" || versioned {
                let path = entry.path();
                if let Some(version) = python_version(&path).await {
                    found.push(Interpreter { version, path });
                }
            }
        }
    }
    // pyenv: versions/3.12.1/bin/python3.
    if let Some(root) = env.var("PYENV_ROOT").map(PathBuf::from).or_else(|| env.home().map(|h| h.join(".pyenv"))) {
        found.extend(named_versions(&root.join("versions"), "", "bin/python3"));
    }
    // uv: python/cpython-3.12.4-linux-x86_64-gnu/bin/python3.
    let uv_dir = env.var("UV_PYTHON_INSTALL_DIR").map(PathBuf::from).or_else(|| {
        let data = env.var("XDG_DATA_HOME").map(PathBuf::from).or_else(|| env.home().map(|h| h.join(".local/share")));
        data.map(|d| d.join("uv/python"))
    });
    if let Some(dir) = uv_dir {
        found.extend(named_versions(&dir, "cpython-", "bin/python3"));
    }
    unique(found.into_iter().filter(|i| i.version.major == 3).collect())
}

/// Every Node found, one entry per real binary, any order.
pub async fn nodes(env: &ToolEnv) -> Vec<Interpreter> {
    let mut found = Vec::new();
    for dir in env.path_dirs() {
        let path = dir.join("node");
        if path.is_file()
            && let Some(version) = node_version(&path).await
        {
            found.push(Interpreter { version, path });
        }
    }
    // nvm: versions/node/v20.1.0/bin/node.
    if let Some(root) = env.var("NVM_DIR").map(PathBuf::from).or_else(|| env.home().map(|h| h.join(".nvm"))) {
        found.extend(named_versions(&root.join("versions/node"), "v", "bin/node"));
    }
    unique(found)
}

/// Whether `uv` is on the server's PATH.
pub fn uv(env: &ToolEnv) -> Option<PathBuf> {
    env.path_dirs().into_iter().map(|dir| dir.join("uv")).find(|path| path.is_file())
}

/// What discovery reads of the environment: the build's (its PATH; HOME, which is the
/// project's own when apps run as their own user; PYENV_ROOT, NVM_DIR, …).
#[derive(Debug, Clone, Default)]
pub struct ToolEnv {
    pub vars: Vec<(String, String)>,
}

impl ToolEnv {
    /// A build's environment, as its steps get it.
    pub fn of(env: &[(std::ffi::OsString, std::ffi::OsString)]) -> ToolEnv {
        let vars =
            env.iter().map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned())).collect();
        ToolEnv { vars }
    }

    /// Its PATH.
    pub fn path(&self) -> std::ffi::OsString {
        self.var("PATH").unwrap_or(DEFAULT_PATH).into()
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.vars.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str()).filter(|v| !v.is_empty())
    }

    fn home(&self) -> Option<PathBuf> {
        self.var("HOME").map(PathBuf::from)
    }

    fn path_dirs(&self) -> Vec<PathBuf> {
        std::env::split_paths(self.var("PATH").unwrap_or(DEFAULT_PATH)).collect()
    }
}

fn is_number(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// The interpreters under `dir` whose directory names are `PREFIX` + a version (and
/// anything after a `-`), at `binary` inside each.
fn named_versions(dir: &Path, prefix: &str, binary: &str) -> Vec<Interpreter> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix(prefix)?.split('-').next()?.to_owned();
            let version = Version::parse(&version).ok()?;
            let path = entry.path().join(binary);
            path.is_file().then_some(Interpreter { version, path })
        })
        .collect()
}

/// Drops entries that are the same binary by another name (`python3` → `python3.11`).
fn unique(found: Vec<Interpreter>) -> Vec<Interpreter> {
    let mut seen = Vec::new();
    let mut kept = Vec::new();
    for interpreter in found {
        let real = std::fs::canonicalize(&interpreter.path).unwrap_or_else(|_| interpreter.path.clone());
        if !seen.contains(&real) {
            seen.push(real);
            kept.push(interpreter);
        }
    }
    kept
}

async fn python_version(path: &Path) -> Option<Version> {
    let text = output_of(path, &["-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"]).await?;
    Version::parse(text.trim()).ok()
}

async fn node_version(path: &Path) -> Option<Version> {
    let text = output_of(path, &["--version"]).await?;
    Version::parse(text.trim().trim_start_matches('v')).ok()
}

/// What `path ARGS` prints, when it runs and succeeds in time.
async fn output_of(path: &Path, args: &[&str]) -> Option<String> {
    let child = Command::new(path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let output = tokio::time::timeout(VERSION_TIMEOUT, child.wait_with_output()).await.ok()?.ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_directories_are_read_and_others_ignored() {
        let dir = tempfile::tempdir().expect("temp dir");
        for name in ["cpython-3.12.4-linux-x86_64-gnu", "cpython-3.13.0-linux-x86_64-gnu", "pypy-3.10.0-linux", "junk"]
        {
            let bin = dir.path().join(name).join("bin");
            std::fs::create_dir_all(&bin).expect("dir");
            std::fs::write(bin.join("python3"), "").expect("file");
        }
        // Named like a version but without its binary: not an interpreter.
        std::fs::create_dir_all(dir.path().join("cpython-3.11.9-linux")).expect("dir");
        let mut versions: Vec<String> =
            named_versions(dir.path(), "cpython-", "bin/python3").iter().map(|i| i.version.to_string()).collect();
        versions.sort();
        assert_eq!(versions, ["3.12.4", "3.13.0"]);
    }
}
