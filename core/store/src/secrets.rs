//! Config vars at rest: every value is sealed with XChaCha20-Poly1305 under the operator's
//! key file before it reaches the database, and opened again when read. This module alone
//! knows the cipher and the key file's format; the rest of the store sees `seal`/`open`.
//!
//! A sealed value is `base64(nonce ‖ ciphertext ‖ tag)` with a fresh random 24-byte nonce,
//! stored beside the id of the key that sealed it. The associated data is the project's
//! name and the var's name, so a value copied into another var's or project's row fails to
//! open instead of being read as that var.
//!
//! The key file holds one 32-byte key as hex. Its id (the first 8 bytes of a SHA-256 of
//! the key, as hex) is derived, not stored, so a replaced file cannot claim the old id.
//! While a server runs it holds a shared lock on the key file; `rotate_key` takes it
//! exclusively, so a rotation never runs beside a server on this machine.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use paastech_core::Error;
use rand::RngCore;
use sha2::{Digest, Sha256};

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
/// The one line of a key file that is not a comment: the algorithm, then the key in hex.
const KEY_PREFIX: &str = "xchacha20poly1305:";
const KEY_FILE_HEADER: &str = "# PaaSTech secrets key: the config vars in the database can only be read with it.\n\
# Back it up apart from the database; `paastech server rotate-key` replaces it.\n";

/// One key and where it came from (for messages). Never printed: no `Debug` of the cipher.
struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
    path: PathBuf,
}

impl Key {
    fn new(bytes: &[u8; KEY_LEN], path: PathBuf) -> Result<Key, Error> {
        let cipher = XChaCha20Poly1305::new_from_slice(bytes)
            .map_err(|_| Error::internal_msg("the secrets key has the wrong length"))?;
        Ok(Key { id: key_id(bytes), cipher, path })
    }
}

fn key_id(bytes: &[u8; KEY_LEN]) -> String {
    let digest = Sha256::new().chain_update(b"paastech secrets key id\0").chain_update(bytes).finalize();
    hex(&digest[..8])
}

/// The keys the store seals and opens config vars with: the first seals, every one opens
/// what carries its id.
pub struct Keyring {
    keys: Vec<Key>,
    /// The key file, held open with a shared lock while this keyring lives (a server's
    /// lifetime), so that `rotate_key` can tell a server is running.
    _lock: Option<File>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("key_ids", &self.keys.iter().map(|k| &k.id).collect::<Vec<_>>()).finish()
    }
}

impl Keyring {
    /// The key in `path`, created (mode 0600, in a directory created 0700) when there is
    /// none. A key left beside it by an interrupted rotation (`PATH.new`) is loaded too, to
    /// open what was already sealed with it. Refuses a key file that group or others may
    /// read or write, or that is not a key file, naming the file.
    pub fn load_or_create(path: &Path) -> Result<Keyring, Error> {
        if !path.exists() {
            create_key_file(path)?;
            tracing::info!(path = %path.display(), "created a new secrets key file: back it up");
        }
        let mut file = open_key_file(path)?;
        match file.try_lock_shared() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Unavailable(format!(
                    "the secrets key file {} is locked by a key rotation (paastech server rotate-key): wait for it to finish",
                    path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::internal(format!("cannot lock the secrets key file {}", path.display()), e));
            }
        }
        let mut keys = vec![read_key(&mut file, path)?];
        let pending = pending_path(path);
        if pending.exists() {
            let key = read_key(&mut open_key_file(&pending)?, &pending)?;
            tracing::warn!(
                path = %pending.display(),
                "a key rotation was interrupted: its new key is used to read values; run `paastech server rotate-key` again to finish it"
            );
            if key.id != keys[0].id {
                keys.push(key);
            }
        }
        Ok(Keyring { keys, _lock: Some(file) })
    }

    /// The id of the key new values are sealed with.
    pub fn key_id(&self) -> &str {
        &self.keys[0].id
    }

    pub(crate) fn holds(&self, key_id: &str) -> bool {
        self.keys.iter().any(|k| k.id == key_id)
    }

    /// What a message about a missing key names: the files and the ids they hold.
    pub(crate) fn describe(&self) -> String {
        let files: Vec<String> = self.keys.iter().map(|k| format!("{} (key {})", k.path.display(), k.id)).collect();
        files.join(" and ")
    }

    /// Seals `value` of var `var` of project `project` with the first key.
    pub(crate) fn seal(&self, project: &str, var: &str, value: &str) -> Result<String, Error> {
        let mut nonce = XNonce::default();
        rand::rng().fill_bytes(&mut nonce);
        let aad = associated_data(project, var);
        let sealed = self.keys[0]
            .cipher
            .encrypt(&nonce, Payload { msg: value.as_bytes(), aad: &aad })
            .map_err(|_| Error::internal_msg(format!("cannot seal config var {var} of project {project}")))?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(BASE64.encode(out))
    }

    /// Opens what `seal` made for this var of this project with the key `key_id`. A value
    /// sealed for another var or project, or damaged, is an error naming the var, never
    /// its value.
    pub(crate) fn open(&self, key_id: &str, project: &str, var: &str, sealed: &str) -> Result<String, Error> {
        let key = self.keys.iter().find(|k| k.id == key_id).ok_or_else(|| {
            Error::internal_msg(format!(
                "config var {var} of project {project} is sealed with key {key_id}, which is not loaded: {} holds another key",
                self.describe()
            ))
        })?;
        let damaged = || {
            Error::internal_msg(format!(
                "cannot decrypt config var {var} of project {project} with key {key_id}: the stored value was not sealed \
                 for this var and project, or it is damaged"
            ))
        };
        let bytes = BASE64.decode(sealed).map_err(|_| damaged())?;
        if bytes.len() < NONCE_LEN {
            return Err(damaged());
        }
        let (nonce_bytes, ciphertext) = bytes.split_at(NONCE_LEN);
        let mut nonce = XNonce::default();
        nonce.copy_from_slice(nonce_bytes);
        let aad = associated_data(project, var);
        let plain = key.cipher.decrypt(&nonce, Payload { msg: ciphertext, aad: &aad }).map_err(|_| damaged())?;
        String::from_utf8(plain).map_err(|_| damaged())
    }
}

/// The project's and the var's names, each length-prefixed so no two pairs give the same
/// bytes.
fn associated_data(project: &str, var: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(32 + project.len() + var.len());
    aad.extend_from_slice(b"paastech config var v1\0");
    for part in [project, var] {
        aad.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad
}

/// Where a rotation writes its new key before the values are sealed again with it.
pub fn pending_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".new");
    path.with_file_name(name)
}

fn open_key_file(path: &Path) -> Result<File, Error> {
    let file = File::open(path)
        .map_err(|e| Error::Invalid(format!("cannot open the secrets key file {}: {e}", path.display())))?;
    let mode = file
        .metadata()
        .map_err(|e| Error::Invalid(format!("cannot read the secrets key file {}: {e}", path.display())))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(Error::Invalid(format!(
            "the secrets key file {} has mode {:o}: others may read it; make it 0600 (chmod 600) and start again",
            path.display(),
            mode & 0o777
        )));
    }
    Ok(file)
}

fn read_key(file: &mut File, path: &Path) -> Result<Key, Error> {
    let mut text = String::new();
    // Bounded: a key file is a few hundred bytes.
    file.take(4096)
        .read_to_string(&mut text)
        .map_err(|e| Error::Invalid(format!("cannot read the secrets key file {}: {e}", path.display())))?;
    let bytes = parse_key(&text).ok_or_else(|| {
        Error::Invalid(format!(
            "the secrets key file {} is malformed: expected one line {KEY_PREFIX}<64 hex digits>",
            path.display()
        ))
    })?;
    Key::new(&bytes, path.to_owned())
}

fn parse_key(text: &str) -> Option<[u8; KEY_LEN]> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
    let line = lines.next()?;
    if lines.next().is_some() {
        return None;
    }
    let digits = line.strip_prefix(KEY_PREFIX)?.as_bytes();
    if digits.len() != KEY_LEN * 2 {
        return None;
    }
    let mut key = [0u8; KEY_LEN];
    for (byte, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(key)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn new_key() -> [u8; KEY_LEN] {
    let mut key = [0u8; KEY_LEN];
    rand::rng().fill_bytes(&mut key);
    key
}

/// Writes a new random key to `path` (which must not exist) and returns it: to a
/// temporary file first, synced, then renamed, so `path` is either absent or whole.
fn create_key_file(path: &Path) -> Result<[u8; KEY_LEN], Error> {
    let key = new_key();
    write_key_file(path, &key)?;
    Ok(key)
}

fn write_key_file(path: &Path, key: &[u8; KEY_LEN]) -> Result<(), Error> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::internal(format!("cannot create the directory of the secrets key {}", dir.display()), e))?;
    let mut temp_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    temp_name.push(".tmp");
    let temp = path.with_file_name(temp_name);
    let failed =
        |e: std::io::Error| Error::internal(format!("cannot write the secrets key file {}", path.display()), e);
    let _ = std::fs::remove_file(&temp);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp).map_err(failed)?;
    file.write_all(format!("{KEY_FILE_HEADER}{KEY_PREFIX}{}\n", hex(key)).as_bytes()).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    drop(file);
    std::fs::rename(&temp, path).map_err(failed)?;
    sync_dir(dir).map_err(failed)
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What `rotate_key` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub old_key_id: String,
    pub new_key_id: String,
    /// Config vars and deployment snapshots sealed again.
    pub resealed: u64,
}

/// Replaces the key in `path` with a new one and seals every value of the database at
/// `database_url` again with it, so that a crash at any point leaves every value readable:
///
/// 1. the new key is written beside the old one (`PATH.new`, whole or absent);
/// 2. every value is sealed again with it, in one transaction;
/// 3. `PATH.new` is renamed over `PATH`: the old key is gone last.
///
/// A server start in between loads both keys. Running again after a crash resumes with
/// the key already in `PATH.new`. Refuses while a server holds the key file.
pub fn rotate_key(database_url: &str, path: &Path) -> Result<Rotation, Error> {
    let mut file = File::open(path).map_err(|e| {
        Error::Invalid(format!("cannot open the secrets key file {}: {e}: nothing to rotate", path.display()))
    })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(Error::Conflict(format!(
                "the secrets key file {} is in use by a running server: stop every server using it, then rotate",
                path.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(Error::internal(format!("cannot lock the secrets key file {}", path.display()), e));
        }
    }
    drop(open_key_file(path)?);
    let old = read_key(&mut file, path)?;
    let pending = pending_path(path);
    let new = if pending.exists() {
        tracing::info!(path = %pending.display(), "resuming an interrupted key rotation");
        read_key(&mut open_key_file(&pending)?, &pending)?
    } else {
        let bytes = create_key_file(&pending)?;
        Key::new(&bytes, pending.clone())?
    };
    let (old_key_id, new_key_id) = (old.id.clone(), new.id.clone());
    let keyring = Keyring { keys: vec![new, old], _lock: None };
    let store = crate::SqlStore::open(database_url, keyring)?;
    let resealed = store.reseal_all()?;
    drop(store);
    std::fs::rename(&pending, path)
        .and_then(|()| sync_dir(path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))))
        .map_err(|e| {
            Error::internal(
                format!(
                    "every value is sealed with the new key in {}, but it could not replace {}: move it there by hand",
                    pending.display(),
                    path.display()
                ),
                e,
            )
        })?;
    Ok(Rotation { old_key_id, new_key_id, resealed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring(dir: &Path) -> Keyring {
        Keyring::load_or_create(&dir.join("key")).expect("keyring")
    }

    #[test]
    fn sealed_values_open_only_for_their_var_and_project() {
        let dir = tempfile::tempdir().expect("temp dir");
        let keys = keyring(dir.path());
        let sealed = keys.seal("blog", "DATABASE_URL", "postgres://secret").expect("seal");
        assert!(!sealed.contains("secret"));
        assert_eq!(keys.open(keys.key_id(), "blog", "DATABASE_URL", &sealed).expect("open"), "postgres://secret");
        // Two seals of one value differ: a fresh nonce each time.
        assert_ne!(sealed, keys.seal("blog", "DATABASE_URL", "postgres://secret").expect("seal"));
        for (project, var) in [("blog", "OTHER"), ("shop", "DATABASE_URL"), ("blogD", "ATABASE_URL")] {
            let err = keys.open(keys.key_id(), project, var, &sealed).expect_err("moved value must not open");
            let message = err.to_string();
            assert!(message.contains(var) && message.contains(project), "{message}");
            assert!(!message.contains("secret"), "{message}");
        }
    }

    #[test]
    fn key_files_are_created_private_and_read_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("secrets/key");
        let first = Keyring::load_or_create(&path).expect("created");
        let mode = std::fs::metadata(&path).expect("key file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(dir.path().join("secrets")).expect("dir").permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        let again = Keyring::load_or_create(&path).expect("read back");
        assert_eq!(first.key_id(), again.key_id());
    }

    #[test]
    fn a_start_during_a_rotation_is_refused_and_a_rotation_beside_a_server_too() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("key");
        let server = Keyring::load_or_create(&path).expect("created");
        // A second server beside the first is no rotation: both hold the key shared.
        drop(Keyring::load_or_create(&path).expect("shared"));
        let message = rotate_key("sqlite:///nonexistent/never-opened.db", &path).expect_err("refused").to_string();
        assert!(message.contains("running server") && message.contains(&path.display().to_string()), "{message}");
        drop(server);

        // What a rotation holds while it runs.
        let rotation = File::open(&path).expect("key file");
        rotation.try_lock().expect("exclusive lock");
        let message = Keyring::load_or_create(&path).expect_err("a start must wait for the rotation").to_string();
        assert!(message.contains("key rotation") && message.contains(&path.display().to_string()), "{message}");
        drop(rotation);
        Keyring::load_or_create(&path).expect("starts once the rotation is over");
    }

    #[test]
    fn loose_or_malformed_key_files_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("key");
        drop(Keyring::load_or_create(&path).expect("created"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let message = Keyring::load_or_create(&path).expect_err("0644 must be refused").to_string();
        assert!(message.contains(&path.display().to_string()) && message.contains("644"), "{message}");

        for bad in
            ["", "xchacha20poly1305:abcd\n", "aes:00\n", &format!("{KEY_PREFIX}{}\n{KEY_PREFIX}{0}\n", "0".repeat(64))]
        {
            std::fs::write(&path, bad).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            let message = Keyring::load_or_create(&path).expect_err("malformed must be refused").to_string();
            assert!(message.contains(&path.display().to_string()) && message.contains("malformed"), "{message}");
        }
    }
}
