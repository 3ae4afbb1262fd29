//! Issue #16, item 2: mail. A real SMTP server on loopback (aiosmtpd, which
//! scripts/test.sh installs as python3-aiosmtpd, writing what it receives to a maildir)
//! gets the address check at sign-up, whose link verifies the account (an unverified one
//! may log in but not create projects); a password reset by link works end to end (the old
//! password refused after it, the link refused a second time and after its hour, the same
//! answer for an unknown address). Without `[smtp]`, these flows are off and say so.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use paastech_tests::smtp::SmtpSink;
use paastech_tests::web::{PASSWORD, Web};
use paastech_tests::{Server, eventually};
use serde_json::{Value, json};

const PUBLIC_URL: &str = "https://paastech.example.com";

/// The token of the first link in `mail` that starts with `prefix`.
fn token_after(mail: &str, prefix: &str) -> String {
    let start = mail.find(prefix).unwrap_or_else(|| panic!("no link {prefix} in {mail}")) + prefix.len();
    mail[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect()
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

fn mail_server(sink: &SmtpSink) -> Server {
    Server::start_with_api_keys(&format!("public_url = {PUBLIC_URL:?}\n"), &sink.config())
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

    // Given access to a project, Bob is told by mail.
    let (status, body) = api.req(
        "POST",
        "/projects/blog/collaborators",
        Some(&token),
        Some(json!({"email": "bob@example.com", "role": "developer"})),
    );
    assert_eq!(status, 201, "{body}");
    let notice = sink.wait_for("bob@example.com", "You were added to blog");
    assert!(
        notice.contains("ada@example.com gave you the role developer")
            && notice.contains(&format!("{PUBLIC_URL}/projects/blog")),
        "{notice}"
    );
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
