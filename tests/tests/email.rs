//! Issue #16, item 2: mail. A real SMTP server on loopback (aiosmtpd, which
//! scripts/test.sh installs as python3-aiosmtpd, writing what it receives to a maildir)
//! gets the address check at sign-up, whose link verifies the account (an unverified one
//! may log in but not create projects); a password reset by link works end to end (the old
//! password refused after it, the link refused a second time and after its hour, the same
//! answer for an unknown address). Without `[smtp]`, these flows are off and say so.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use paastech_tests::web::{PASSWORD, Web};
use paastech_tests::{Server, eventually, free_port};
use serde_json::{Value, json};

const PUBLIC_URL: &str = "https://paastech.example.com";

/// aiosmtpd on 127.0.0.1:`port`, storing each message as a file in `dir/new`.
struct SmtpSink {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl SmtpSink {
    fn start() -> SmtpSink {
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

    fn maildir(&self) -> PathBuf {
        self.dir.path().join("maildir").join("new")
    }

    /// Every message received so far, oldest first, as text (headers and body, the body's
    /// quoted-printable encoding undone).
    fn messages(&self) -> Vec<String> {
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
    fn wait_for(&self, to: &str, needle: &str) -> String {
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

/// The token of the first link in `mail` that starts with `prefix`.
fn token_after(mail: &str, prefix: &str) -> String {
    let start = mail.find(prefix).unwrap_or_else(|| panic!("no link {prefix} in {mail}")) + prefix.len();
    mail[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect()
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

fn mail_server(sink: &SmtpSink) -> Server {
    Server::start_with_api_keys(
        &format!("public_url = {PUBLIC_URL:?}\n"),
        &format!("[smtp]\nurl = \"smtp://127.0.0.1:{}\"\nfrom = \"PaaSTech <paastech@example.com>\"\n", sink.port),
    )
}

fn count_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|e| e.count()).unwrap_or(0)
}

#[test]
fn signup_mails_a_link_that_verifies_the_address_before_projects_can_be_made() {
    let sink = SmtpSink::start();
    let server = mail_server(&sink);
    let api = server.api();
    let (status, body) =
        api.req("POST", "/auth/signup", None, Some(json!({"email": "ada@example.com", "password": PASSWORD})));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["email_verified"], false, "{body}");
    let token = api.login("ada@example.com", PASSWORD);

    // Unverified: may log in, not create projects.
    let (status, body) = api.req("POST", "/projects", Some(&token), Some(json!({"name": "blog"})));
    assert_eq!(status, 403, "{body}");
    assert!(message(&body).contains("verify your email address"), "{body}");

    let mail = sink.wait_for("ada@example.com", "verify-email");
    assert!(mail.contains("Subject: Verify your email address"), "{mail}");
    assert!(mail.contains(&format!("{PUBLIC_URL}/verify-email?token=")), "the link names the public URL: {mail}");
    let link = token_after(&mail, "/verify-email?token=");

    // The web UI's page of the link verifies; the dashboard offered a new link before.
    let mut web = Web::new(&server.api_url());
    web.log_in("ada@example.com");
    let dashboard = web.get("/");
    assert!(dashboard.body.contains("id=\"unverified\""), "{}", dashboard.body);
    let page = web.get(&format!("/verify-email?token={link}"));
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("id=\"verified\""), "{}", page.body);
    let again = web.get(&format!("/verify-email?token={link}"));
    assert_eq!(again.status, 400, "a link works once: {}", again.body);
    assert!(!web.get("/").body.contains("id=\"unverified\""));

    let (status, me) = api.req("GET", "/me", Some(&token), None);
    assert_eq!((status, &me["email_verified"]), (200, &json!(true)), "{me}");
    let (status, body) = api.req("POST", "/projects", Some(&token), Some(json!({"name": "blog"})));
    assert_eq!(status, 201, "verified, the account makes projects: {body}");
    let (status, body) = api.req("POST", "/auth/verify/resend", Some(&token), None);
    assert_eq!(status, 409, "{body}");

    // Through the API, and a resent link replaces the first.
    let (status, _) =
        api.req("POST", "/auth/signup", None, Some(json!({"email": "bob@example.com", "password": PASSWORD})));
    assert_eq!(status, 201);
    let first = token_after(&sink.wait_for("bob@example.com", "verify-email"), "/verify-email?token=");
    let bob = api.login("bob@example.com", PASSWORD);
    let (status, body) = api.req("POST", "/auth/verify/resend", Some(&bob), None);
    assert_eq!(status, 202, "{body}");
    let mut second = first.clone();
    eventually(Duration::from_secs(20), || {
        second = token_after(&sink.wait_for("bob@example.com", "verify-email"), "/verify-email?token=");
        second != first
    });
    assert_ne!(first, second, "a new link was mailed");
    let (status, body) = api.req("POST", "/auth/verify", None, Some(json!({"token": first})));
    assert_eq!(status, 400, "the replaced link: {body}");
    let (status, body) = api.req("POST", "/auth/verify", None, Some(json!({"token": second})));
    assert_eq!((status, &body["email_verified"]), (200, &json!(true)), "{body}");
}

#[test]
fn a_password_is_reset_by_a_single_use_link_and_unknown_addresses_get_the_same_answer() {
    let sink = SmtpSink::start();
    let server = mail_server(&sink);
    let api = server.api();
    api.user("ada@example.com");
    let old_session = api.login("ada@example.com", PASSWORD);
    let received = count_in(&sink.maildir());

    let (status, known) = api.req("POST", "/auth/password/reset", None, Some(json!({"email": "Ada@Example.com "})));
    assert_eq!(status, 202, "{known}");
    let (status, unknown) = api.req("POST", "/auth/password/reset", None, Some(json!({"email": "nobody@example.com"})));
    assert_eq!((status, &unknown), (202, &known), "the same answer for an unknown address");

    let mail = sink.wait_for("ada@example.com", "/password/reset?token=");
    assert!(mail.contains(&format!("{PUBLIC_URL}/password/reset?token=")), "{mail}");
    let link = token_after(&mail, "/password/reset?token=");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count_in(&sink.maildir()), received + 1, "nothing was mailed for the unknown address");

    // Through the web UI's page: the new password, then the link is spent.
    let mut web = Web::new(&server.api_url());
    let page = web.get(&format!("/password/reset?token={link}"));
    assert_eq!(page.status, 200, "{}", page.body);
    let weak = web.post("/password/reset", &[("csrf", &page.csrf()), ("token", &link), ("password", "short")]);
    assert_eq!(weak.status, 400, "a password the rules refuse: {}", weak.body);
    let page = web.get(&format!("/password/reset?token={link}"));
    let set =
        web.post("/password/reset", &[("csrf", &page.csrf()), ("token", &link), ("password", "a brand new password")]);
    assert_eq!(set.status, 303, "{}", set.body);
    assert_eq!(set.header("location"), Some("/login?done=password-reset"));

    let (status, _) =
        api.req("POST", "/auth/login", None, Some(json!({"email": "ada@example.com", "password": PASSWORD})));
    assert_eq!(status, 401, "the old password no longer works");
    let (status, _) = api.req(
        "POST",
        "/auth/login",
        None,
        Some(json!({"email": "ada@example.com", "password": "a brand new password"})),
    );
    assert_eq!(status, 200);
    let (status, _) = api.req("GET", "/me", Some(&old_session), None);
    assert_eq!(status, 401, "the sessions of before the reset ended");
    let (status, body) = api.req(
        "POST",
        "/auth/password/reset/confirm",
        None,
        Some(json!({"token": link, "password": "yet another password"})),
    );
    assert_eq!(status, 400, "a link works once: {body}");
    assert!(message(&body).contains("used already"), "{body}");

    // A link older than its hour: the server is told the time by the token's record, so
    // the test ages it in the database the server uses.
    let (status, _) = api.req("POST", "/auth/password/reset", None, Some(json!({"email": "ada@example.com"})));
    assert_eq!(status, 202);
    let mut late = link.clone();
    eventually(Duration::from_secs(20), || {
        late = token_after(&sink.wait_for("ada@example.com", "/password/reset?token="), "/password/reset?token=");
        late != link
    });
    let database = server.data_dir().join("paastech.db");
    let aged = Command::new("sqlite3")
        .arg(&database)
        .arg("UPDATE email_tokens SET expires_at = expires_at - 3600001 WHERE used_at IS NULL;")
        .status()
        .expect("sqlite3 (scripts/test.sh installs it)");
    assert!(aged.success());
    let (status, body) = api.req(
        "POST",
        "/auth/password/reset/confirm",
        None,
        Some(json!({"token": late, "password": "yet another password"})),
    );
    assert_eq!(status, 400, "an expired link: {body}");
}

#[test]
fn without_smtp_the_mail_flows_are_off_and_say_so() {
    let server = Server::start("");
    let api = server.api();
    let token = api.user("ada@example.com");
    let (status, me) = api.req("GET", "/me", Some(&token), None);
    assert_eq!((status, &me["email_verified"]), (200, &json!(true)), "nothing to verify without mail: {me}");
    let (status, body) = api.req("POST", "/projects", Some(&token), Some(json!({"name": "blog"})));
    assert_eq!(status, 201, "{body}");
    let (status, body) = api.req("POST", "/auth/password/reset", None, Some(json!({"email": "ada@example.com"})));
    assert_eq!(status, 503, "{body}");
    assert!(message(&body).contains("no [smtp]"), "{body}");
    let page = Web::new(&server.api_url()).get("/password/forgot");
    assert!(page.body.contains("This server sends no mail"), "{}", page.body);
}
