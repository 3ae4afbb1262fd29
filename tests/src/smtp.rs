//! An SMTP server on loopback for the mail journeys: aiosmtpd (Debian's
//! python3-aiosmtpd, which scripts/test.sh installs) writing each message it receives to
//! a maildir the test reads.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{eventually, free_port};

/// aiosmtpd on 127.0.0.1:`port`, storing each message as a file in `dir/new`.
pub struct SmtpSink {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl SmtpSink {
    pub fn start() -> SmtpSink {
        let dir = tempfile::tempdir().expect("maildir");
        let port = free_port();
        let child = Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(dir.path().join("maildir"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("/usr/bin/python3 -m aiosmtpd (python3-aiosmtpd: scripts/test.sh installs it)");
        let mut sink = SmtpSink { child, port, dir };
        let up = eventually(Duration::from_secs(15), || TcpStream::connect(("127.0.0.1", port)).is_ok());
        if !up {
            let _ = sink.child.kill();
            panic!("aiosmtpd did not listen on 127.0.0.1:{port}: is python3-aiosmtpd installed (scripts/test.sh)?");
        }
        sink
    }

    pub fn maildir(&self) -> PathBuf {
        self.dir.path().join("maildir").join("new")
    }

    /// Every message received so far, oldest first, as text (headers and body, the body's
    /// quoted-printable encoding undone).
    pub fn messages(&self) -> Vec<String> {
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(self.maildir())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| (e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), e.path()))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files.iter().filter_map(|(_, path)| std::fs::read_to_string(path).ok()).map(|m| quoted_printable(&m)).collect()
    }

    /// The newest message to `to` whose text has `needle`, waiting up to 20 s for it.
    pub fn wait_for(&self, to: &str, needle: &str) -> String {
        let mut found = None;
        eventually(Duration::from_secs(20), || {
            found = self
                .messages()
                .into_iter()
                .rev()
                .find(|m| m.lines().any(|l| l.eq_ignore_ascii_case(&format!("To: {to}"))) && m.contains(needle));
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no mail to {to} with {needle:?}; received: {:#?}", self.messages()))
    }
}

impl SmtpSink {
    /// Verifies `email`'s account with the link of its sign-up mail, through the API.
    pub fn verify(&self, api: &crate::Api, email: &str) {
        let mail = self.wait_for(email, "/verify-email?token=");
        let start = mail.find("/verify-email?token=").map(|i| i + "/verify-email?token=".len()).unwrap_or(0);
        let token: String =
            mail[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect();
        let (status, body) = api.req("POST", "/auth/verify", None, Some(serde_json::json!({ "token": token })));
        assert_eq!(status, 200, "verifying {email}: {body}");
    }

    /// The server's `[smtp]` section for this sink.
    pub fn config(&self) -> String {
        format!("[smtp]\nurl = \"smtp://127.0.0.1:{}\"\nfrom = \"PaaSTech <paastech@example.com>\"\n", self.port)
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `text` with quoted-printable soft line breaks and `=XX` escapes undone (lettre encodes
/// bodies with lines longer than 76 characters so).
fn quoted_printable(text: &str) -> String {
    let joined = text.replace("=\r\n", "").replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'=' && i + 2 < bytes.len())
            .then(|| std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()))
            .flatten();
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
