//! Issue #16 item 3: two-factor login (TOTP) end to end, against a real `paastech server`
//! process: enrolment and login in a real headless Chromium, the API's login with a code,
//! and an admin's reset. The test computes the codes an authenticator app would show.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use paastech_tests::Server;
use paastech_tests::web::PASSWORD;
use paastech_tests::webdriver::Browser;
use serde_json::json;
use totp_rs::{Algorithm, Builder, Secret};

/// The code of the base32 `secret` for the step `offset_steps` away from now.
fn code(secret: &str, offset_steps: i64) -> String {
    let bytes = Secret::try_from_base32(secret.trim()).expect("the page's secret is base32");
    let totp = Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(30)
        .with_secret(bytes.as_ref().to_vec())
        .build()
        .expect("totp");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    let at = now.checked_add_signed(offset_steps * 30).expect("time");
    totp.generate(at).to_string()
}

/// A 6-digit code that is surely not the one of the next step.
fn wrong(code: &str) -> String {
    code.chars().map(|c| if c == '0' { '1' } else { '0' }).collect()
}

fn expect_text(browser: &Browser, css: &str, needle: &str, server: &Server) -> String {
    browser.wait_text(css, needle, Duration::from_secs(10)).unwrap_or_else(|seen| {
        panic!(
            "{css} never contained {needle:?} on {}; it showed:\n{seen}\n--- page:\n{}\n--- server log:\n{}",
            browser.url(),
            browser.body_text(),
            server.log()
        )
    })
}

fn log_in(browser: &Browser, base: &str, email: &str) {
    browser.goto(&format!("{base}/login"));
    browser.fill("#email", email);
    browser.fill("#password", PASSWORD);
    browser.find("form[action='/login'] button[type=submit]").click();
}

fn signed_in(browser: &Browser) -> bool {
    browser.try_find("form[action='/logout']").is_some()
}

#[test]
fn enrolling_and_logging_in_with_a_code_in_the_browser() {
    let server = Server::start("");
    let base = server.api_url();
    let browser = Browser::start();
    let email = "ada@example.com";

    browser.goto(&format!("{base}/signup"));
    browser.fill("#email", email);
    browser.fill("#password", PASSWORD);
    browser.find("form[action='/signup'] button[type=submit]").click();
    browser.find("a[href='/projects/new']");

    // Enrol on Account → Security: a QR code (inline SVG) and the secret as text.
    browser.find("a[href='/account/security']").click();
    expect_text(&browser, "#two-factor-status", "off", &server);
    browser.find("form[action='/account/security/start'] button").click();
    browser.find("figure.qr svg");
    let secret = browser.find("#totp-secret").text();
    assert!(secret.len() >= 32, "a 160-bit secret in base32: {secret:?}");
    // A wrong code does not turn it on.
    browser.fill("#confirm-code", &wrong(&code(&secret, 0)));
    browser.find("form[action='/account/security/confirm'] button").click();
    expect_text(&browser, "#code-error", "Wrong code", &server);
    browser.fill("#confirm-code", &code(&secret, 0));
    browser.find("form[action='/account/security/confirm'] button").click();
    expect_text(&browser, "#two-factor-status", "on", &server);
    let recovery: Vec<String> =
        browser.find("#recovery-codes").text().lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect();
    assert_eq!(recovery.len(), 10, "{recovery:?}");

    // Log out, log in: the password alone starts no session; the code step appears.
    browser.find("form[action='/logout'] button").click();
    browser.find("form[action='/login']");
    log_in(&browser, &base, email);
    browser.find("form[action='/login/code']");
    assert!(!signed_in(&browser), "no session before the second factor");
    browser.goto(&format!("{base}/"));
    assert!(browser.url().ends_with("/login"), "the dashboard is not reachable: {}", browser.url());

    // Back to the code step; a wrong code is refused, the next step's code signs in.
    log_in(&browser, &base, email);
    let next = code(&secret, 1);
    browser.fill("#code", &wrong(&next));
    browser.find("form[action='/login/code'] button").click();
    expect_text(&browser, "#code-error", "Wrong code", &server);
    assert!(!signed_in(&browser));
    browser.fill("#code", &next);
    browser.find("form[action='/login/code'] button").click();
    browser.find("a[href='/projects/new']");
    assert!(signed_in(&browser));

    // The same code again is a replay: refused. A recovery code signs in, once.
    browser.find("form[action='/logout'] button").click();
    browser.find("form[action='/login']");
    log_in(&browser, &base, email);
    browser.fill("#code", &next);
    browser.find("form[action='/login/code'] button").click();
    expect_text(&browser, "#code-error", "Wrong code", &server);
    browser.fill("#code", &recovery[0]);
    browser.find("form[action='/login/code'] button").click();
    browser.find("a[href='/projects/new']");
    browser.find("form[action='/logout'] button").click();
    browser.find("form[action='/login']");
    log_in(&browser, &base, email);
    browser.fill("#code", &recovery[0]);
    browser.find("form[action='/login/code'] button").click();
    expect_text(&browser, "#code-error", "Wrong code", &server);
    assert!(!signed_in(&browser));
    browser.fill("#code", &recovery[1]);
    browser.find("form[action='/login/code'] button").click();
    browser.find("a[href='/projects/new']");
    browser.find("a[href='/account/security']").click();
    expect_text(&browser, "#two-factor-status", "8 recovery codes left", &server);
}

#[test]
fn the_api_asks_for_the_code_and_an_admin_resets_it() {
    let server = Server::start("");
    let api = server.api();
    let admin = api.user("admin@example.com");
    let bob = api.user("bob@example.com");

    let (status, started) = api.req("POST", "/me/2fa", Some(&bob), None);
    assert_eq!(status, 201, "{started}");
    let secret = started["secret"].as_str().expect("secret").to_owned();
    let url = started["otpauth_url"].as_str().expect("url");
    assert!(url.starts_with("otpauth://totp/PaaSTech:bob%40example.com?") && url.contains(&secret), "{url}");
    let (status, body) =
        api.req("POST", "/me/2fa/confirm", Some(&bob), Some(json!({"code": wrong(&code(&secret, 0))})));
    assert_eq!(status, 400, "{body}");
    let (status, body) = api.req("POST", "/me/2fa/confirm", Some(&bob), Some(json!({"code": code(&secret, 0)})));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["recovery_codes"].as_array().map(Vec::len), Some(10), "{body}");
    let recovery = body["recovery_codes"][0].as_str().expect("recovery code").to_owned();
    let (status, _) = api.req("POST", "/me/2fa", Some(&bob), None);
    assert_eq!(status, 409, "enabled already");

    // API tokens are unaffected (a second secret already); logins need the code.
    assert_eq!(api.req("GET", "/me", Some(&bob), None).0, 200);
    let login = |code: Option<String>| {
        let mut body = json!({"email": "bob@example.com", "password": PASSWORD});
        if let Some(code) = code {
            body["code"] = json!(code);
        }
        api.req("POST", "/auth/login", None, Some(body))
    };
    let (status, body) = login(None);
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("two_factor_required")), "{body}");
    let (status, body) = login(Some(wrong(&code(&secret, 1))));
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{body}");
    let (status, body) = login(Some(code(&secret, 1)));
    assert_eq!(status, 200, "{body}");
    let session = body["token"].as_str().expect("token").to_owned();
    let (status, _) = login(Some(code(&secret, 1)));
    assert_eq!(status, 401, "a code is used once");

    // The CLI asks for the code (here: the line after the password).
    let home = tempfile::tempdir().expect("home");
    let refused = server.cli(
        home.path(),
        &["login", "--email", "bob@example.com", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("two-factor"), "{refused:?}");
    // (This step's code is used already: a recovery code.)
    let stdin = format!("{PASSWORD}\n{recovery}\n");
    let logged = server.cli(home.path(), &["login", "--email", "bob@example.com", "--password-stdin"], Some(&stdin));
    assert!(logged.status.success(), "{logged:?}");
    assert!(String::from_utf8_lossy(&logged.stdout).contains("Logged in"), "{logged:?}");

    // Only an admin resets another user's 2FA; it ends their login tokens.
    let (status, _) = api.req("DELETE", "/users/admin@example.com/2fa", Some(&bob), None);
    assert_eq!(status, 403);
    let (status, body) = api.req("DELETE", "/users/bob@example.com/2fa", Some(&admin), None);
    assert_eq!(status, 204, "{body}");
    assert_eq!(api.req("GET", "/me", Some(&session), None).0, 401, "the login token ended");
    let (status, body) = login(None);
    assert_eq!(status, 200, "the password alone again: {body}");
    let (status, _) = api.req("DELETE", "/users/bob@example.com/2fa", Some(&admin), None);
    assert_eq!(status, 404, "nothing left to reset");

    // The admin page's button does the same.
    let bob = api.login("bob@example.com", PASSWORD);
    let (_, started) = api.req("POST", "/me/2fa", Some(&bob), None);
    let secret = started["secret"].as_str().expect("secret").to_owned();
    let (status, _) = api.req("POST", "/me/2fa/confirm", Some(&bob), Some(json!({"code": code(&secret, 0)})));
    assert_eq!(status, 200);
    assert_eq!(login(None).0, 401);
    let mut web = paastech_tests::web::Web::new(&server.api_url());
    let csrf = web.get("/login").csrf();
    let signed = web.post("/login", &[("csrf", &csrf), ("email", "admin@example.com"), ("password", PASSWORD)]);
    assert_eq!(signed.status, 303, "{}", signed.body);
    let csrf = web.get("/admin").csrf();
    let reset = web.post("/admin/users/reset-2fa", &[("csrf", &csrf), ("email", "bob@example.com")]);
    assert_eq!((reset.status, reset.header("location")), (303, Some("/admin?done=2fa-reset")), "{}", reset.body);
    assert_eq!(api.req("GET", "/me", Some(&bob), None).0, 401, "the login token ended");
    assert_eq!(login(None).0, 200, "the password alone again");
}

#[test]
fn with_require_2fa_a_user_must_enrol_before_anything_else() {
    let server = Server::start("[auth]\nrequire_2fa = true\n");
    let api = server.api();
    let bob = api.user("bob@example.com");
    let (status, body) = api.req("GET", "/projects", Some(&bob), None);
    assert_eq!(status, 403, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("requires two-factor login")), "{body}");
    assert_eq!(api.req("GET", "/me", Some(&bob), None).0, 200);
    let (status, started) = api.req("POST", "/me/2fa", Some(&bob), None);
    assert_eq!(status, 201, "{started}");
    let secret = started["secret"].as_str().expect("secret").to_owned();
    let (status, body) = api.req("POST", "/me/2fa/confirm", Some(&bob), Some(json!({"code": code(&secret, 0)})));
    assert_eq!(status, 200, "{body}");
    assert_eq!(api.req("GET", "/projects", Some(&bob), None).0, 200, "enrolled: everything again");

    // In the web UI, every page leads to Account → Security until enrolled.
    let mut web = paastech_tests::web::Web::new(&server.api_url());
    let csrf = web.get("/signup").csrf();
    let signed = web.post("/signup", &[("csrf", &csrf), ("email", "carol@example.com"), ("password", PASSWORD)]);
    assert_eq!(signed.status, 303, "{}", signed.body);
    let page = web.get("/projects/new");
    assert_eq!((page.status, page.header("location")), (303, Some("/account/security?done=2fa-required")));
    let page = web.get("/account/security?done=2fa-required");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("requires two-factor login"), "{}", page.body);
}
