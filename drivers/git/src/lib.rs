//! `RepoStore` over bare git repositories on disk (git2), and the plumbing that lets git's
//! `pre-receive` hook reach the server's `PushHandler` (see [`hook`]).
//!
//! Layout: one bare repository per project at `ROOT/NAME.git`, HEAD on `main`, with a
//! `hooks/pre-receive` script that re-executes the PaaSTech binary named by `$PAASTECH_EXE`.

mod export;
pub mod hook;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use paastech_core::drivers::RepoStore;
use paastech_core::{Error, ProjectName, Result};

/// The hook every repository gets. The executable comes from the environment the SSH server
/// gives git, never from text written into the script: nothing is interpolated here. Without
/// it (someone pushing to the directory by hand) the push is refused rather than unbuilt.
const PRE_RECEIVE_HOOK: &str = r#"#!/bin/sh
# Installed by PaaSTech: hands the pushed refs to the PaaSTech server, which builds them.
if [ -z "$PAASTECH_EXE" ]; then
    echo "pushes are only accepted through the PaaSTech git server" >&2
    exit 1
fi
exec "$PAASTECH_EXE" internal pre-receive
"#;

/// Bare repositories under one root directory.
#[derive(Debug, Clone)]
pub struct GitRepoStore {
    root: PathBuf,
}

impl GitRepoStore {
    /// The root is created on the first `create`.
    pub fn new(root: PathBuf) -> Self {
        GitRepoStore { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[async_trait]
impl RepoStore for GitRepoStore {
    async fn create(&self, project: &ProjectName) -> Result<()> {
        let path = self.path(project);
        let name = project.to_string();
        run_blocking(move || create_repo(&path, &name)).await
    }

    async fn delete(&self, project: &ProjectName) -> Result<()> {
        let path = self.path(project);
        match tokio::fs::remove_dir_all(&path).await {
            Ok(()) => {
                tracing::info!(project = %project, "repository deleted");
                Ok(())
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(Error::internal(format!("deleting the repository of {project}"), err)),
        }
    }

    fn path(&self, project: &ProjectName) -> PathBuf {
        // ProjectName is a DNS label, so it cannot climb out of the root.
        self.root.join(format!("{project}.git"))
    }

    async fn export(&self, project: &ProjectName, commit: &str, dest: &Path) -> Result<()> {
        let repo = self.path(project);
        let project = project.clone();
        let commit = commit.to_owned();
        let dest = dest.to_owned();
        run_blocking(move || export::export(&repo, &project, &commit, &dest)).await
    }
}

/// git2 is blocking: keep it off the async workers.
async fn run_blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(|err| Error::internal("a git task panicked", err))?
}

fn create_repo(path: &Path, project: &str) -> Result<()> {
    let repo = match git2::Repository::open_bare(path) {
        Ok(repo) => repo,
        Err(_) => {
            let mut opts = git2::RepositoryInitOptions::new();
            // `git init --bare` would point HEAD at master; pushes go to main.
            opts.bare(true).mkdir(true).mkpath(true).initial_head("main").no_reinit(true);
            git2::Repository::init_opts(path, &opts)
                .map_err(|err| Error::internal(format!("creating the repository of {project}"), err))?
        }
    };
    install_hook(repo.path()).map_err(|err| Error::internal(format!("installing the hook of {project}"), err))?;
    tracing::info!(project, path = %path.display(), "repository ready");
    Ok(())
}

/// Writes `hooks/pre-receive` (always: an upgrade may change it) and makes it executable.
fn install_hook(git_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;

    let hooks = git_dir.join("hooks");
    std::fs::create_dir_all(&hooks)?;
    let hook = hooks.join("pre-receive");
    // Written beside and renamed, so a push running right now never sees half a script.
    let tmp = hooks.join(".pre-receive.tmp");
    std::fs::write(&tmp, PRE_RECEIVE_HOOK)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &hook)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ProjectName {
        ProjectName::parse(s).expect("valid test name")
    }

    #[tokio::test]
    async fn create_is_idempotent_and_points_head_at_main() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = GitRepoStore::new(dir.path().join("repos"));
        let project = name("blog");
        store.create(&project).await.expect("create");
        store.create(&project).await.expect("create again");

        let path = store.path(&project);
        assert_eq!(path, dir.path().join("repos/blog.git"));
        let repo = git2::Repository::open_bare(&path).expect("bare repo");
        assert!(repo.is_bare());
        let head = repo.find_reference("HEAD").expect("HEAD");
        assert_eq!(head.symbolic_target(), Some("refs/heads/main"));

        use std::os::unix::fs::PermissionsExt;
        let hook = path.join("hooks/pre-receive");
        let meta = std::fs::metadata(&hook).expect("hook exists");
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        let script = std::fs::read_to_string(&hook).expect("read hook");
        assert!(script.contains(r#"exec "$PAASTECH_EXE" internal pre-receive"#));
    }

    #[tokio::test]
    async fn delete_removes_and_tolerates_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = GitRepoStore::new(dir.path().to_owned());
        let project = name("gone");
        store.delete(&project).await.expect("missing is fine");
        store.create(&project).await.expect("create");
        assert!(store.path(&project).exists());
        store.delete(&project).await.expect("delete");
        assert!(!store.path(&project).exists());
    }

    #[tokio::test]
    async fn export_of_an_unknown_project_or_commit_is_not_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = GitRepoStore::new(dir.path().to_owned());
        let project = name("empty");
        let dest = dir.path().join("out");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let err = store.export(&project, commit, &dest).await.expect_err("no repo");
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
        store.create(&project).await.expect("create");
        let err = store.export(&project, commit, &dest).await.expect_err("no commit");
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
        let err = store.export(&project, "main; rm -rf /", &dest).await.expect_err("bad id");
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    }
}
