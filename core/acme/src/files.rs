//! What ACME keeps on disk under its state directory (mode 0700): the account's
//! credentials (`account.json`) and each name's certificate chain and key
//! (`certs/NAME.pem`, `certs/NAME.key`), every file mode 0600 and written whole (a
//! temporary file renamed over the old one), so a crash never leaves half a key.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::schedule::Validity;

pub(crate) struct Files {
    dir: PathBuf,
}

/// A certificate read back from disk.
pub(crate) struct Stored {
    pub chain: Vec<u8>,
    pub key: Vec<u8>,
}

impl Files {
    pub fn new(dir: PathBuf) -> Files {
        Files { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn certs(&self) -> PathBuf {
        self.dir.join("certs")
    }

    /// Creates the directories (mode 0700) if missing.
    pub fn create(&self) -> io::Result<()> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(self.certs())
    }

    pub fn read_account(&self) -> io::Result<Option<Vec<u8>>> {
        read_if_exists(&self.dir.join("account.json"))
    }

    pub fn write_account(&self, json: &[u8]) -> io::Result<()> {
        write_private(&self.dir.join("account.json"), json)
    }

    pub fn remove_account(&self) -> io::Result<()> {
        remove_if_exists(&self.dir.join("account.json"))
    }

    /// The certificate stored for `name` (a validated host name: safe as a file name).
    pub fn read_cert(&self, name: &str) -> io::Result<Option<Stored>> {
        let certs = self.certs();
        let (Some(chain), Some(key)) =
            (read_if_exists(&certs.join(format!("{name}.pem")))?, read_if_exists(&certs.join(format!("{name}.key")))?)
        else {
            return Ok(None);
        };
        Ok(Some(Stored { chain, key }))
    }

    /// Stores `name`'s certificate: the key first, so a chain on disk always has its key.
    pub fn write_cert(&self, name: &str, chain: &[u8], key: &[u8]) -> io::Result<()> {
        let certs = self.certs();
        write_private(&certs.join(format!("{name}.key")), key)?;
        write_private(&certs.join(format!("{name}.pem")), chain)
    }

    pub fn remove_cert(&self, name: &str) -> io::Result<()> {
        let certs = self.certs();
        remove_if_exists(&certs.join(format!("{name}.pem")))?;
        remove_if_exists(&certs.join(format!("{name}.key")))
    }
}

/// The validity of the first certificate (the leaf) of a PEM chain.
pub(crate) fn validity(chain: &[u8]) -> Result<Validity, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain).map_err(|err| format!("not a PEM certificate: {err}"))?;
    let cert = pem.parse_x509().map_err(|err| format!("not an X.509 certificate: {err}"))?;
    let time = |asn1: x509_parser::time::ASN1Time| {
        let secs = asn1.timestamp();
        match u64::try_from(secs) {
            Ok(secs) => SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            Err(_) => SystemTime::UNIX_EPOCH,
        }
    };
    let validity = cert.validity();
    Ok(Validity { not_before: time(validity.not_before), not_after: time(validity.not_after) })
}

fn read_if_exists(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// Writes `bytes` to `path` with mode 0600, through a temporary file renamed over it.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn certificates_round_trip_with_private_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = Files::new(dir.path().join("acme"));
        files.create().expect("create");
        assert!(files.read_cert("www.example.com").expect("read").is_none());
        files.write_cert("www.example.com", b"chain", b"key").expect("write");
        let stored = files.read_cert("www.example.com").expect("read").expect("stored");
        assert_eq!((stored.chain.as_slice(), stored.key.as_slice()), (&b"chain"[..], &b"key"[..]));
        for file in ["certs/www.example.com.pem", "certs/www.example.com.key"] {
            let mode = fs::metadata(files.dir().join(file)).expect("metadata").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        let mode = fs::metadata(files.dir()).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        files.remove_cert("www.example.com").expect("remove");
        assert!(files.read_cert("www.example.com").expect("read").is_none());
        files.remove_cert("www.example.com").expect("removing twice is fine");
    }

    #[test]
    fn reads_the_leafs_validity() {
        let mut params = rcgen::CertificateParams::new(vec!["a.example.com".to_owned()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = rcgen::date_time_ymd(2026, 4, 1);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let validity = validity(cert.pem().as_bytes()).expect("validity");
        let since_epoch = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).expect("after epoch").as_secs();
        assert_eq!(since_epoch(validity.not_before), 1_767_225_600);
        assert_eq!(since_epoch(validity.not_after), 1_775_001_600);
        assert!(super::validity(b"not a certificate").is_err());
    }
}
