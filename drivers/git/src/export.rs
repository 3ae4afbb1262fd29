//! Writing one commit's tree into a directory, also from inside a running `pre-receive`.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use git2::{ErrorCode, FileMode, ObjectType, Oid, Repository, Tree};
use paastech_core::{Error, ProjectName, Result};

pub(crate) fn export(repo_path: &Path, project: &ProjectName, commit: &str, dest: &Path) -> Result<()> {
    let valid_id = matches!(commit.len(), 40 | 64) && commit.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid_id {
        return Err(Error::Invalid(format!("{commit:?} is not a full commit id")));
    }
    let oid = Oid::from_str(commit).map_err(|_| Error::Invalid(format!("{commit:?} is not a full commit id")))?;
    let repo = Repository::open_bare(repo_path)
        .map_err(|_| Error::NotFound(format!("project {project} has no repository")))?;

    let commit_obj = match repo.find_commit(oid) {
        Ok(found) => found,
        Err(err) if err.code() == ErrorCode::NotFound => {
            // During pre-receive the pushed objects are not in the object store yet: git keeps
            // them in a quarantine directory until every hook has agreed. The hook runs in
            // another process than ours, so we cannot read GIT_QUARANTINE_PATH; look for the
            // quarantine directories instead and read through them.
            add_quarantine_alternates(&repo)
                .map_err(|err| Error::internal(format!("reading the pushed objects of {project}"), err))?;
            repo.find_commit(oid)
                .map_err(|_| Error::NotFound(format!("commit {commit} not found in project {project}")))?
        }
        Err(err) => {
            return Err(Error::internal(format!("reading commit {commit} of {project}"), err));
        }
    };
    let tree = commit_obj.tree().map_err(|err| Error::internal(format!("reading the tree of {commit}"), err))?;

    fs::create_dir_all(dest).map_err(|err| Error::internal(format!("creating {}", dest.display()), err))?;
    write_tree(&repo, &tree, dest)?;
    tracing::debug!(project = %project, commit, dest = %dest.display(), "commit exported");
    Ok(())
}

/// Adds every quarantine directory of an ongoing push as an alternate object directory.
/// Another push's quarantine may be added too; that only widens what we can read, and the
/// lookup is by exact id.
fn add_quarantine_alternates(repo: &Repository) -> std::result::Result<(), git2::Error> {
    let objects = repo.path().join("objects");
    let Ok(entries) = fs::read_dir(&objects) else {
        return Ok(());
    };
    let odb = repo.odb()?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // git ≥ 2.21 names them tmp_objdir-incoming-XXXXXX; older ones incoming-XXXXXX.
        let is_quarantine = name.starts_with("tmp_objdir-incoming-") || name.starts_with("incoming-");
        if is_quarantine && entry.file_type().is_ok_and(|t| t.is_dir()) {
            odb.add_disk_alternate(&entry.path().to_string_lossy())?;
        }
    }
    Ok(())
}

/// Git tree entry names come from whoever pushed. These could write outside `dir` or
/// plant a repository, so they are refused or skipped.
fn checked_name(name: &[u8]) -> Result<Option<&OsStr>> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(Error::Invalid(format!(
            "the pushed tree has an invalid entry name {:?}",
            String::from_utf8_lossy(name)
        )));
    }
    if name.eq_ignore_ascii_case(b".git") {
        return Ok(None);
    }
    Ok(Some(OsStr::from_bytes(name)))
}

/// Writes `tree` into the existing directory `dir`. Every file and directory is created new
/// (`create_new`, `create_dir`): an entry never writes through a symlink or over something a
/// previous entry made, so a crafted tree (a symlink and a directory of the same name) fails
/// instead of writing outside `dir`.
fn write_tree(repo: &Repository, tree: &Tree<'_>, dir: &Path) -> Result<()> {
    for entry in tree.iter() {
        let Some(name) = checked_name(entry.name_bytes())? else {
            continue;
        };
        let path = dir.join(name);
        let io_err = |err: std::io::Error| Error::internal(format!("writing {}", path.display()), err);
        match entry.kind() {
            Some(ObjectType::Tree) => {
                let subtree = repo
                    .find_tree(entry.id())
                    .map_err(|err| Error::internal(format!("reading tree {}", entry.id()), err))?;
                fs::create_dir(&path).map_err(io_err)?;
                write_tree(repo, &subtree, &path)?;
            }
            Some(ObjectType::Blob) => {
                let blob = repo
                    .find_blob(entry.id())
                    .map_err(|err| Error::internal(format!("reading blob {}", entry.id()), err))?;
                let mode = entry.filemode();
                if mode == i32::from(FileMode::Link) {
                    std::os::unix::fs::symlink(OsStr::from_bytes(blob.content()), &path).map_err(io_err)?;
                } else {
                    let perm = if mode == i32::from(FileMode::BlobExecutable) { 0o755 } else { 0o644 };
                    let mut file =
                        fs::OpenOptions::new().write(true).create_new(true).mode(perm).open(&path).map_err(io_err)?;
                    file.write_all(blob.content()).map_err(io_err)?;
                    // The umask may have masked the mode: builders rely on the exec bit.
                    file.set_permissions(fs::Permissions::from_mode(perm)).map_err(io_err)?;
                }
            }
            // A submodule (a commit entry) has no content in this repository.
            Some(ObjectType::Commit) => {
                tracing::debug!(path = %path.display(), "skipping submodule");
            }
            _ => {
                return Err(Error::Invalid(format!(
                    "the pushed tree has an entry of unknown kind at {}",
                    path.display()
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_that_escape_are_refused() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"/etc", b"a\0b"] {
            assert!(checked_name(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(checked_name(b".git").expect("skipped"), None);
        assert_eq!(checked_name(b".GIT").expect("skipped"), None);
        assert_eq!(checked_name(b"src").expect("ok"), Some(OsStr::new("src")));
        assert_eq!(checked_name(b"..hidden").expect("ok"), Some(OsStr::new("..hidden")));
    }

    /// A tree crafted with git2 (git itself would refuse to make it): a symlink `a` to
    /// somewhere else, then a directory `a` with a file. The file must not land there.
    #[test]
    fn crafted_tree_cannot_write_through_a_symlink() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).expect("outside dir");
        let repo = Repository::init_bare(tmp.path().join("r.git")).expect("init");

        let file = repo.blob(b"pwned").expect("blob");
        let mut inner = repo.treebuilder(None).expect("treebuilder");
        inner.insert("x", file, 0o100644).expect("insert");
        let inner = inner.write().expect("inner tree");
        let link = repo.blob(outside.to_string_lossy().as_bytes()).expect("link blob");

        // A TreeBuilder dedups names, so build the raw tree object by hand.
        let mut raw = Vec::new();
        raw.extend_from_slice(b"120000 a\0");
        raw.extend_from_slice(link.as_bytes());
        raw.extend_from_slice(b"40000 a\0");
        raw.extend_from_slice(inner.as_bytes());
        let odb = repo.odb().expect("odb");
        let tree_id = odb.write(ObjectType::Tree, &raw).expect("raw tree");
        let tree = repo.find_tree(tree_id).expect("tree");

        let dest = tmp.path().join("dest");
        fs::create_dir(&dest).expect("dest");
        assert!(write_tree(&repo, &tree, &dest).is_err());
        assert!(!outside.join("x").exists(), "wrote through the symlink");
    }
}
