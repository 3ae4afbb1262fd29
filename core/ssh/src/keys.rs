//! Users' public keys and the server's host key.

use std::io::Write;
use std::path::Path;

use paastech_core::{Error, Result};
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::{Algorithm, HashAlg, PrivateKey, PublicKey};

/// A validated OpenSSH public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedKey {
    /// `ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`, …
    pub algorithm: String,
    /// `SHA256:…`, as `ssh-keygen -l` prints it; what [`crate::GitAccess::user_for_key`] gets.
    pub fingerprint: String,
    /// `TYPE BASE64`, the comment dropped.
    pub openssh: String,
}

/// RSA below this is breakable; OpenSSH itself refuses less than 1024 and warns below 2048.
const MIN_RSA_BITS: u32 = 2048;

/// Validates one line of an `authorized_keys`-style public key (`TYPE BASE64 [COMMENT]`):
/// ed25519, ECDSA, or RSA of at least 2048 bits.
pub fn parse_public_key(line: &str) -> Result<ParsedKey> {
    let line = line.trim();
    if line.is_empty() {
        return Err(Error::Invalid("the public key is empty".to_owned()));
    }
    if line.contains("PRIVATE KEY") {
        return Err(Error::Invalid(
            "this is a private key: never share it; paste the public key (the .pub file) instead".to_owned(),
        ));
    }
    if line.contains('\n') {
        return Err(Error::Invalid("the public key must be a single line".to_owned()));
    }
    let key = PublicKey::from_openssh(line).map_err(|err| {
        Error::Invalid(format!("not an OpenSSH public key ({err}); expected a line like \"ssh-ed25519 AAAA… comment\""))
    })?;
    let algorithm = key.algorithm();
    match &algorithm {
        Algorithm::Ed25519 | Algorithm::Ecdsa { .. } => {}
        Algorithm::Rsa { .. } => {
            let bits = key.key_data().rsa().map_or(0, |rsa| rsa.key_size());
            if bits < MIN_RSA_BITS {
                return Err(Error::Invalid(format!(
                    "this RSA key has {bits} bits; use at least {MIN_RSA_BITS} (or an ed25519 key)"
                )));
            }
        }
        other => {
            return Err(Error::Invalid(format!("unsupported key type {}: use ed25519, ECDSA or RSA", other.as_str())));
        }
    }
    let mut bare = key.clone();
    bare.set_comment("");
    let openssh =
        bare.to_openssh().map_err(|err| Error::Invalid(format!("the public key cannot be encoded: {err}")))?;
    Ok(ParsedKey {
        algorithm: algorithm.as_str().to_owned(),
        fingerprint: fingerprint(&key),
        openssh: openssh.trim().to_owned(),
    })
}

/// `SHA256:…` without padding, the form `ssh-keygen -l` prints.
pub(crate) fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Reads the ed25519 host key at `path`, or makes one there (mode 0600) on first start, so
/// clients see the same host key across restarts.
pub(crate) fn load_or_generate_host_key(path: &Path) -> Result<PrivateKey> {
    match std::fs::read_to_string(path) {
        Ok(pem) => PrivateKey::from_openssh(pem.as_bytes())
            .map_err(|err| Error::internal(format!("reading the SSH host key {}", path.display()), err)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => generate_host_key(path),
        Err(err) => Err(Error::internal(format!("reading the SSH host key {}", path.display()), err)),
    }
}

fn generate_host_key(path: &Path) -> Result<PrivateKey> {
    use std::os::unix::fs::OpenOptionsExt;

    // russh's own generator wants rand 0.10; a 32-byte seed from the OS is all ed25519 needs.
    let seed: [u8; 32] = rand::random();
    let key = PrivateKey::new(KeypairData::Ed25519(Ed25519Keypair::from_seed(&seed)), "paastech host key")
        .map_err(|err| Error::internal("making the SSH host key", err))?;
    let pem = key.to_openssh(LineEnding::LF).map_err(|err| Error::internal("encoding the SSH host key", err))?;
    let io_err = |err: std::io::Error| Error::internal(format!("writing the SSH host key {}", path.display()), err);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err)?;
    }
    // Written under another name and renamed: a crash never leaves half a key, and
    // create_new with 0600 means the key is never readable by others, not even briefly.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io_err)?;
    file.write_all(pem.as_bytes()).and_then(|()| file.sync_all()).map_err(io_err)?;
    std::fs::rename(&tmp, path).map_err(io_err)?;
    tracing::info!(path = %path.display(), fingerprint = %fingerprint(key.public_key()), "SSH host key generated");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDbRWVHNq8S/YbWFQ3iSvjn8s3JtrmdiL+rtN+5eBqzy alice@laptop";

    fn keygen(kind: &str, bits: Option<&str>, dir: &Path) -> (String, String) {
        let path = dir.join(format!("key-{kind}-{}", bits.unwrap_or("d")));
        let mut cmd = std::process::Command::new("ssh-keygen");
        cmd.args(["-q", "-t", kind, "-N", "", "-C", "me@host", "-f"]).arg(&path);
        if let Some(bits) = bits {
            cmd.args(["-b", bits]);
        }
        let status = cmd.status().expect("ssh-keygen");
        assert!(status.success());
        let public = std::fs::read_to_string(path.with_extension("pub")).expect("pub");
        let out = std::process::Command::new("ssh-keygen").arg("-lf").arg(&path).output().expect("ssh-keygen -l");
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        let fingerprint = listing.split_whitespace().nth(1).expect("fingerprint").to_owned();
        (public, fingerprint)
    }

    #[test]
    fn parses_keys_like_ssh_keygen() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (kind, bits, algorithm) in [
            ("ed25519", None, "ssh-ed25519"),
            ("ecdsa", Some("256"), "ecdsa-sha2-nistp256"),
            ("ecdsa", Some("384"), "ecdsa-sha2-nistp384"),
            ("rsa", Some("2048"), "ssh-rsa"),
        ] {
            let (public, expected) = keygen(kind, bits, dir.path());
            let parsed = parse_public_key(&public).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(parsed.algorithm, algorithm);
            assert_eq!(parsed.fingerprint, expected, "{kind}");
            assert!(parsed.fingerprint.starts_with("SHA256:"));
            let mut words = public.split_whitespace();
            let expected_openssh = format!("{} {}", words.next().expect("type"), words.next().expect("base64"));
            assert_eq!(parsed.openssh, expected_openssh);
        }
    }

    #[test]
    fn refuses_bad_keys_saying_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (small_rsa, _) = keygen("rsa", Some("1024"), dir.path());
        let (base64_start, rest) = ED25519.split_at(40);
        let truncated = base64_start.to_owned();
        let corrupted = format!("{base64_start}!{}", &rest[1..]);
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "empty"),
            ("hello world".to_owned(), "not an OpenSSH public key"),
            ("ssh-ed25519".to_owned(), "not an OpenSSH public key"),
            (truncated, "not an OpenSSH public key"),
            (corrupted, "not an OpenSSH public key"),
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----"
                    .to_owned(),
                "private key",
            ),
            (format!("{ED25519}\n{ED25519}"), "single line"),
            (small_rsa, "1024 bits"),
            (
                // The ed25519 blob under another type name.
                ED25519.replace("ssh-ed25519", "ssh-rsa"),
                "not an OpenSSH public key",
            ),
        ];
        for (input, why) in cases {
            match parse_public_key(&input) {
                Err(Error::Invalid(message)) => {
                    assert!(message.contains(why), "{input:?}: {message}")
                }
                other => panic!("{input:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn comment_and_whitespace_are_dropped() {
        let parsed = parse_public_key(&format!("  {ED25519}  \n")).expect("valid");
        assert_eq!(parsed.openssh, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDbRWVHNq8S/YbWFQ3iSvjn8s3JtrmdiL+rtN+5eBqzy");
    }

    #[test]
    fn host_key_is_generated_once_then_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state/ssh_host_ed25519_key");
        let first = load_or_generate_host_key(&path).expect("generate");
        assert_eq!(first.algorithm(), Algorithm::Ed25519);
        let mode = std::fs::metadata(&path).expect("key file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = load_or_generate_host_key(&path).expect("load");
        assert_eq!(fingerprint(first.public_key()), fingerprint(second.public_key()));
        // ssh-keygen reads what we wrote: it is a real OpenSSH private key.
        let out = std::process::Command::new("ssh-keygen").arg("-lf").arg(&path).output().expect("ssh-keygen");
        assert!(String::from_utf8_lossy(&out.stdout).contains(&fingerprint(first.public_key())));
    }
}
