//! `paastech server backup|restore --config FILE`: the whole platform as one tar stream.
//!
//! A backup is taken while the server runs: first a consistent copy of the database (the
//! store's `snapshot`: `VACUUM INTO` for SQLite, `pg_dump` for PostgreSQL), then the files
//! of `data_dir` — the bare repositories, the builds (`releases/`), the SSH host key, the
//! ACME account and certificates, the app logs — and the secrets key. Everything the
//! database names was there before the snapshot, so the copy is consistent where it
//! matters: a push that lands meanwhile adds objects the restored database does not name.
//!
//! The archive: `MANIFEST.json` first (format, version, database kind), then `database`,
//! `secrets.key` and `data/…`. A restore fills an empty `data_dir` (and the configured
//! database, which must be empty, and key file, which must not exist) and undoes what it
//! wrote when anything fails; then `paastech server` starts every live deployment again.

use std::fs;
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use paastech_store::DatabaseKind;
use serde::{Deserialize, Serialize};

use crate::server::{self, Settings};

const MANIFEST: &str = "MANIFEST.json";
const DATABASE: &str = "database";
const SECRETS_KEY: &str = "secrets.key";
const DATA: &str = "data";
const FORMAT: u32 = 1;
/// What a running server keeps in `data_dir` that belongs to that run only (its hook socket).
const SKIPPED_DIRS: [&str; 1] = ["run"];

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: u32,
    paastech: String,
    database: String,
    /// The backed-up server's data directory: builds the database names by path under it
    /// are renamed under the restoring server's.
    data_dir: PathBuf,
    /// Milliseconds since the Unix epoch.
    created_at: i64,
}

/// Writes the backup of the server `config_path` describes to stdout.
pub fn backup(config_path: Option<PathBuf>) -> Result<()> {
    let settings = server::load(config_path.as_deref())?;
    let stdout = io::stdout();
    if stdout.is_terminal() {
        bail!("the backup is a tar stream: redirect it to a file (paastech server backup --config FILE > backup.tar)");
    }
    let staging = tempfile::tempdir().context("making a staging directory")?;
    let db_copy = staging.path().join(DATABASE);
    let kind = paastech_store::snapshot(&settings.database_url, &db_copy).context("copying the database")?;

    let mut tar = tar::Builder::new(BufWriter::new(stdout.lock()));
    // Symlinks (a build's virtualenv has some) are kept as links, never followed out.
    tar.follow_symlinks(false);
    let manifest = Manifest {
        format: FORMAT,
        paastech: env!("CARGO_PKG_VERSION").to_owned(),
        database: kind.as_str().to_owned(),
        data_dir: settings.data_dir.clone(),
        created_at: paastech_core::Timestamp::now().0,
    };
    let manifest = serde_json::to_vec_pretty(&manifest).context("writing the manifest")?;
    append_bytes(&mut tar, MANIFEST, &manifest, 0o600)?;
    append_file(&mut tar, &db_copy, Path::new(DATABASE)).context("adding the database")?;
    if settings.key_file.exists() {
        append_file(&mut tar, &settings.key_file, Path::new(SECRETS_KEY)).context("adding the secrets key")?;
    }
    let mut skipped = skipped_files(&settings);
    skipped.extend(SKIPPED_DIRS.iter().map(|dir| settings.data_dir.join(dir)));
    append_tree(&mut tar, &settings.data_dir, Path::new(DATA), &skipped)?;
    let mut out = tar.into_inner().context("finishing the archive")?;
    out.flush().context("writing the archive")?;
    eprintln!("backup of {} written ({} database)", settings.data_dir.display(), kind.as_str());
    Ok(())
}

/// Files of `data_dir` that go in under their own names, or not at all: the live
/// database (its snapshot goes instead) and the secrets key.
fn skipped_files(settings: &Settings) -> Vec<PathBuf> {
    let mut skipped = vec![settings.key_file.clone()];
    if let Some(db) = settings.database_url.strip_prefix("sqlite://") {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            skipped.push(PathBuf::from(format!("{db}{suffix}")));
        }
    }
    skipped
}

/// Adds the files under `dir` as `in_archive/…`, but those in `skipped`, in name order.
/// Symlinks are added as links; a file that vanishes meanwhile (a log rotated, a build
/// pruned) is left out.
fn append_tree<W: Write>(tar: &mut tar::Builder<W>, dir: &Path, in_archive: &Path, skipped: &[PathBuf]) -> Result<()> {
    let mut entries: Vec<_> = match fs::read_dir(dir) {
        Ok(entries) => entries.flatten().collect(),
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("reading {}", dir.display())),
    };
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if skipped.contains(&path) {
            continue;
        }
        let name = in_archive.join(entry.file_name());
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            tar.append_dir(&name, &path).with_context(|| format!("adding {}", path.display()))?;
            append_tree(tar, &path, &name, skipped)?;
        } else if kind.is_file() || kind.is_symlink() {
            let added =
                if kind.is_file() { append_file(tar, &path, &name) } else { tar.append_path_with_name(&path, &name) };
            match added {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err).with_context(|| format!("adding {}", path.display())),
            }
        }
        // Sockets and fifos belong to a running process: not part of a backup.
    }
    Ok(())
}

/// Adds a file as long as it was when opened: a log the server appends to meanwhile must
/// not write more bytes than the entry's header announced (nor fewer, if it shrank).
fn append_file<W: Write>(tar: &mut tar::Builder<W>, path: &Path, name: &Path) -> io::Result<()> {
    let file = fs::File::open(path)?;
    let meta = file.metadata()?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata(&meta);
    let len = meta.len();
    let body = (&file).take(len).chain(io::repeat(0)).take(len);
    tar.append_data(&mut header, name, body)
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, name: &str, bytes: &[u8], mode: u32) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(mode);
    header.set_mtime(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    );
    header.set_cksum();
    tar.append_data(&mut header, name, bytes).with_context(|| format!("adding {name}"))
}

/// Reads a backup from stdin into the empty `data_dir` (and database, and key file) of
/// the server `config_path` describes.
pub fn restore(config_path: Option<PathBuf>) -> Result<()> {
    let settings = server::load(config_path.as_deref())?;
    let stdin = io::stdin();
    if stdin.is_terminal() {
        bail!("the backup is read from stdin: paastech server restore --config FILE < backup.tar");
    }
    let data_dir = &settings.data_dir;
    if fs::read_dir(data_dir).map(|mut d| d.next().is_some()).unwrap_or(false) {
        bail!("{} is not empty: a restore only fills an empty data directory", data_dir.display());
    }
    if settings.key_file.exists() {
        bail!("the secrets key file {} exists: a restore writes the backup's key there", settings.key_file.display());
    }
    let created_dir = !data_dir.exists();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let restored = unpack(&settings, stdin.lock());
    if restored.is_err() {
        // Nothing half made: the directory goes back to empty, the key file to absent.
        let _ = fs::remove_file(&settings.key_file);
        if created_dir {
            let _ = fs::remove_dir_all(data_dir);
        } else if let Ok(entries) = fs::read_dir(data_dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let _ = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            }
        }
    }
    let kind = restored?;
    eprintln!(
        "restored into {} ({} database); start the server: every live deployment starts again",
        data_dir.display(),
        kind.as_str()
    );
    Ok(())
}

fn unpack(settings: &Settings, input: impl Read) -> Result<DatabaseKind> {
    let staging = tempfile::tempdir().context("making a staging directory")?;
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    let mut entries = archive.entries().context("reading the backup")?;
    let not_a_backup = || anyhow::anyhow!("not a PaaSTech backup (it must start with {MANIFEST})");
    let mut first = entries.next().ok_or_else(not_a_backup)?.map_err(|_| not_a_backup())?;
    if first.path().ok().as_deref() != Some(Path::new(MANIFEST)) {
        return Err(not_a_backup());
    }
    let mut text = Vec::new();
    first.by_ref().take(64 * 1024).read_to_end(&mut text).context("reading the manifest")?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|err| anyhow::anyhow!("{MANIFEST}: {err}"))?;
    if manifest.format != FORMAT {
        bail!("backup format {} is not the one this version reads ({FORMAT})", manifest.format);
    }
    let kind = DatabaseKind::parse(&manifest.database)
        .ok_or_else(|| anyhow::anyhow!("{MANIFEST}: unknown database kind {:?}", manifest.database))?;

    let mut database = None;
    for entry in entries {
        let mut entry = entry.context("reading the backup")?;
        let path = entry.path().context("reading the backup")?.into_owned();
        let dest = if path == Path::new(DATABASE) {
            let dest = staging.path().join(DATABASE);
            database = Some(dest.clone());
            dest
        } else if path == Path::new(SECRETS_KEY) {
            let mut key = Vec::new();
            entry.read_to_end(&mut key).context("reading the secrets key")?;
            write_new(&settings.key_file, &key)?;
            continue;
        } else if let Ok(rest) = path.strip_prefix(DATA) {
            inside(&settings.data_dir, rest)?
        } else {
            bail!("unexpected entry {} in the backup", path.display());
        };
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        entry.unpack(&dest).with_context(|| format!("writing {}", dest.display()))?;
    }
    let database = database.ok_or_else(|| anyhow::anyhow!("the backup holds no database"))?;
    let moved = (
        manifest.data_dir.to_str().context("the backup's data_dir is not UTF-8")?,
        settings.data_dir.to_str().context("data_dir is not UTF-8")?,
    );
    paastech_store::restore_snapshot(&settings.database_url, kind, &database, moved)
        .context("restoring the database")?;
    Ok(kind)
}

/// `rest` under `root`, refused when it could leave it: only plain names, and no symlink
/// on the way (an earlier entry of the archive may have made one).
fn inside(root: &Path, rest: &Path) -> Result<PathBuf> {
    let mut dest = root.to_path_buf();
    for component in rest.components() {
        let Component::Normal(name) = component else {
            bail!("the backup holds a path that leaves the data directory: {}", rest.display());
        };
        if fs::symlink_metadata(&dest).is_ok_and(|m| m.file_type().is_symlink()) {
            bail!("the backup writes through a symbolic link: {}", rest.display());
        }
        dest.push(name);
    }
    Ok(dest)
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes).with_context(|| format!("writing {}", path.display()))
}
