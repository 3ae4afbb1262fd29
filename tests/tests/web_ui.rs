//! Issue #6 journeys: the web UI of a real `paastech server` process, driven by a real
//! headless Chromium (Debian's `chromium` + `chromium-driver`, over WebDriver), with the
//! real `git` pushing over real SSH. Screenshots of the main pages go to
//! target/tmp/screenshots/, or to `$PAASTECH_SCREENSHOTS` (to refresh docs/screenshots/).
//!
//! The browser tests fail, not skip, when Chromium is missing: run
//! `scripts/setup/50-chromium.sh` (scripts/test.sh does).

use std::path::PathBuf;
use std::time::Duration;

use paastech_tests::web::{PASSWORD, Web};
use paastech_tests::webdriver::Browser;
use paastech_tests::{GitRepo, Server, example, ssh_keygen};

/// Where a screenshot goes: a test run leaves the source tree alone unless asked.
fn screenshot_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("PAASTECH_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots"));
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir.join(format!("{name}.png"))
}

fn sign_up(browser: &Browser, base: &str, email: &str) {
    browser.goto(&format!("{base}/signup"));
    browser.fill("#email", email);
    browser.fill("#password", PASSWORD);
    browser.find("form[action='/signup'] button[type=submit]").click();
    browser.find("a[href='/projects/new']");
    assert!(browser.url().ends_with('/'), "signed up and on the dashboard: {}", browser.url());
}

fn log_out(browser: &Browser) {
    browser.find("form[action='/logout'] button").click();
    browser.find("form[action='/login']");
}

/// Waits for `css` to contain `needle`, failing with what the page showed.
fn expect_text(browser: &Browser, css: &str, needle: &str, secs: u64, server: &Server) -> String {
    browser.wait_text(css, needle, Duration::from_secs(secs)).unwrap_or_else(|seen| {
        panic!(
            "{css} never contained {needle:?} on {}; it showed:\n{seen}\n--- page:\n{}\n--- server log:\n{}",
            browser.url(),
            browser.body_text(),
            server.log()
        )
    })
}

#[test]
fn a_developer_deploys_configures_rolls_back_and_deletes_from_the_browser() {
    let server = Server::start("");
    let base = server.api_url();
    let browser = Browser::start();

    // Sign up (the first account: an admin).
    browser.goto(&format!("{base}/signup"));
    browser.screenshot(&screenshot_path("signup"));
    sign_up(&browser, &base, "ada@example.com");

    // Add an SSH key.
    let (key, public) = ssh_keygen(server.dir.path(), "ada_key");
    browser.find("a[href='/account/keys']").click();
    browser.fill("#public_key", &public);
    browser.find("form[action='/account/keys'] button[type=submit]").click();
    expect_text(&browser, ".notice", "SSH key added", 10, &server);
    expect_text(&browser, "table.list", "ada_key", 5, &server);
    browser.screenshot(&screenshot_path("ssh-keys"));

    // Create a project: the page shows its git remote and the commands to push.
    browser.goto(&format!("{base}/projects/new"));
    browser.fill("#name", "Bad_Name");
    browser.find("form[action='/projects'] button").click();
    expect_text(&browser, "#name-error", "invalid project name", 5, &server);
    browser.fill("#name", "webapp");
    browser.find("form[action='/projects'] button").click();
    expect_text(&browser, ".notice", "Project created", 10, &server);
    let git_url = format!("ssh://git@127.0.0.1:{}/webapp.git", server.ssh_port);
    expect_text(&browser, "pre.commands", &format!("git remote add paastech {git_url}"), 5, &server);
    assert_eq!(browser.find("code.copy").text(), git_url);

    // Push with the real git over SSH while the deployments tab is open: v1 appears live
    // without a reload.
    browser.find("nav.tabs a[href='/projects/webapp/deployments']").click();
    browser.find("#deployments-live");
    browser.execute("document.body.setAttribute('data-marker', 'not reloaded'); return null;");
    let repo =
        GitRepo::from_dir(&server.dir.path().join("webapp"), &example("python-hello"), &key, server.ssh_port, "webapp");
    let (ok, output) = repo.push("main");
    assert!(ok, "push: {output}\n{}", server.log());
    expect_text(&browser, "#v1", "live", 15, &server);
    assert_eq!(
        browser.find("body").attr("data-marker").as_deref(),
        Some("not reloaded"),
        "the deployment appeared through the live update, not a reload"
    );
    assert!(browser.find("#v1").text().contains(&repo.head()[..8]), "the commit is shown");
    let (status, body) = server.app_get("webapp", "/");
    assert_eq!((status, body.trim()), (200, "hello from python-hello (version 1)"));
    browser.goto(&format!("{base}/projects/webapp"));
    expect_text(&browser, "#overview-live", "web.1", 5, &server);
    browser.screenshot(&screenshot_path("project-overview"));

    // The build log of v1.
    browser.goto(&format!("{base}/projects/webapp/deployments/1"));
    expect_text(&browser, "pre.log", "Build succeeded", 5, &server);
    browser.screenshot(&screenshot_path("build-log"));

    // Change an env var: a new deployment, and the page says so.
    browser.find("nav.tabs a[href='/projects/webapp/env']").click();
    browser.fill("#key", "GREETING");
    browser.fill("#value", "bonjour");
    browser.find("form.row button[type=submit]").click();
    expect_text(&browser, ".notice", "new deployment: v2 is live", 60, &server);
    assert_eq!(server.app_get("webapp", "/").1.trim(), "bonjour from python-hello (version 2)");
    browser.screenshot(&screenshot_path("project-env"));

    // A custom domain from the Domains tab: the app answers on it at once.
    browser.find("nav.tabs a[href='/projects/webapp/domains']").click();
    browser.fill("#domain", "www.webapp.example");
    browser.find("form[action='/projects/webapp/domains'] button[type=submit]").click();
    expect_text(&browser, ".notice", "Domain added", 30, &server);
    expect_text(&browser, "table.domains", "www.webapp.example", 5, &server);
    let (status, body) = paastech_tests::http_get(server.ingress_port, "www.webapp.example", "/");
    assert_eq!((status, body.trim()), (200, "bonjour from python-hello (version 2)"));
    browser.screenshot(&screenshot_path("project-domains"));

    // Roll back to v1 with its button: its code and its config.
    browser.find("nav.tabs a[href='/projects/webapp/deployments']").click();
    browser.find("button[data-rollback='1']").click();
    expect_text(&browser, ".notice", "Deployed: v3 is live", 60, &server);
    expect_text(&browser, "#v3", "rollback to v1", 5, &server);
    assert_eq!(server.app_get("webapp", "/").1.trim(), "hello from python-hello (version 3)");
    browser.screenshot(&screenshot_path("project-deployments"));

    // The live log shows the app's own output as it happens.
    browser.find("nav.tabs a[href='/projects/webapp/logs']").click();
    expect_text(&browser, "#log-state", "Live", 10, &server);
    let (status, _) = server.app_get("webapp", "/seen-in-the-browser");
    assert_eq!(status, 404);
    expect_text(&browser, "#log", "GET /seen-in-the-browser", 10, &server);
    browser.screenshot(&screenshot_path("project-logs"));

    // Scale, tokens, admin.
    browser.find("nav.tabs a[href='/projects/webapp/scale']").click();
    browser.fill("#scale-web", "1");
    browser.find("form[action='/projects/webapp/scale'] button").click();
    expect_text(&browser, ".notice", "Scale saved", 30, &server);
    browser.screenshot(&screenshot_path("project-scale"));

    // Stop, start and restart from the overview's buttons (issue #15).
    browser.goto(&format!("{base}/projects/webapp"));
    browser.find("button[data-lifecycle='stop']").click();
    expect_text(&browser, ".notice", "Stopped", 30, &server);
    expect_text(&browser, "#processes", "stopped", 5, &server);
    let (status, body) = server.app_get("webapp", "/");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("app stopped"), "{body}");
    browser.screenshot(&screenshot_path("project-stopped"));
    browser.find("button[data-lifecycle='start']").click();
    expect_text(&browser, ".notice", "Started", 60, &server);
    assert_eq!(server.app_get("webapp", "/").1.trim(), "hello from python-hello (version 3)");
    browser.find("button[data-lifecycle='restart']").click();
    expect_text(&browser, ".notice", "Restarted", 60, &server);
    assert_eq!(server.app_get("webapp", "/").0, 200);

    browser.goto(&format!("{base}/account/tokens"));
    browser.fill("#token-name", "ci");
    browser.find("form[action='/account/tokens'] button").click();
    let token = expect_text(&browser, "#new-token", "pt_", 10, &server);
    let (status, me) = server.api().req("GET", "/me", Some(token.trim()), None);
    assert_eq!((status, me["email"].as_str()), (200, Some("ada@example.com")), "the shown token works");
    browser.goto(&format!("{base}/account/tokens"));
    assert!(!browser.source().contains(token.trim()), "the token is shown once only");
    browser.screenshot(&screenshot_path("api-tokens"));

    browser.goto(&format!("{base}/admin"));
    expect_text(&browser, "main", "Runtime driver", 5, &server);
    expect_text(&browser, "main", "webapp", 5, &server);
    browser.screenshot(&screenshot_path("admin"));
    // The nodes page (issue #13): the process runtime's one machine and the app on it.
    browser.find("a[href='/admin/nodes']").click();
    expect_text(&browser, "h1", "Nodes", 5, &server);
    expect_text(&browser, "main", "local", 5, &server);
    expect_text(&browser, "main table.list", "webapp", 5, &server);
    expect_text(&browser, "main table.list", "web.1", 5, &server);
    browser.screenshot(&screenshot_path("admin-nodes"));

    browser.goto(&format!("{base}/"));
    expect_text(&browser, "table.list", "webapp", 5, &server);
    expect_text(&browser, "table.list", "live", 5, &server);
    browser.screenshot(&screenshot_path("dashboard"));
    browser.set_size(390, 844);
    browser.goto(&format!("{base}/projects/webapp"));
    browser.find("#overview-live");
    browser.screenshot(&screenshot_path("project-overview-phone"));
    browser.set_size(1280, 900);

    // A second user sees the plain 404 page for ada's project, on every tab.
    log_out(&browser);
    sign_up(&browser, &base, "bob@example.com");
    for path in ["/projects/webapp", "/projects/webapp/env", "/projects/webapp/logs", "/projects/webapp/deployments/1"]
    {
        browser.goto(&format!("{base}{path}"));
        expect_text(&browser, "h1", "Not found", 5, &server);
        assert!(!browser.source().contains("GREETING"), "{path} shows nothing of the project");
    }
    browser.screenshot(&screenshot_path("not-found"));
    for path in ["/admin", "/admin/nodes"] {
        browser.goto(&format!("{base}{path}"));
        expect_text(&browser, "h1", "Not found", 5, &server);
    }
    browser.goto(&format!("{base}/"));
    log_out(&browser);

    // Ada logs in again and deletes the project, confirming with its name.
    browser.screenshot(&screenshot_path("login"));
    browser.fill("#email", "ada@example.com");
    browser.fill("#password", PASSWORD);
    browser.find("form[action='/login'] button[type=submit]").click();
    browser.find("a[href='/projects/new']");
    browser.goto(&format!("{base}/projects/webapp/settings"));
    browser.fill("#confirm", "webap");
    browser.find("form[action='/projects/webapp/delete'] button").click();
    expect_text(&browser, "#confirm-error", "to confirm", 5, &server);
    browser.screenshot(&screenshot_path("project-settings"));
    browser.fill("#confirm", "webapp");
    browser.find("form[action='/projects/webapp/delete'] button").click();
    expect_text(&browser, ".notice", "Project deleted", 30, &server);
    assert!(browser.try_find("a[href='/projects/webapp']").is_none(), "gone from the dashboard");
    assert_eq!(server.app_get("webapp", "/").0, 404, "no longer served");
}

// ----- Without a browser: CSRF, headers, cookies, escaping, ownership -------------------

#[test]
fn forms_need_their_csrf_token_and_pages_are_locked_down() {
    let server = Server::start("");
    let mut web = Web::new(&server.api_url());

    // Not signed in: pages lead to the login page.
    let page = web.get("/");
    assert_eq!((page.status, page.header("location")), (303, Some("/login")));

    // The sign-up form without its double-submit token, or with the wrong one, is refused.
    let page = web.get("/signup");
    let csrf = page.csrf();
    let pre = page.set_cookies().into_iter().find(|c| c.starts_with("paastech_csrf=")).expect("pre-session cookie");
    assert!(pre.contains("HttpOnly") && pre.contains("SameSite=Lax") && !pre.contains("Secure"), "{pre}");
    let refused = web.post("/signup", &[("email", "ada@example.com"), ("password", PASSWORD)]);
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("Form refused"));
    let refused = web.post("/signup", &[("csrf", "pt_wrong"), ("email", "ada@example.com"), ("password", PASSWORD)]);
    assert_eq!(refused.status, 403);
    let signed = web.post("/signup", &[("csrf", &csrf), ("email", "ada@example.com"), ("password", PASSWORD)]);
    assert_eq!((signed.status, signed.header("location")), (303, Some("/")));
    let session = signed.set_cookies().into_iter().find(|c| c.starts_with("paastech_session=")).expect("session");
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Lax"), "{session}");

    // Every page carries the security headers.
    let dashboard = web.get("/");
    assert_eq!(dashboard.status, 200);
    assert_eq!(
        dashboard.header("content-security-policy"),
        Some(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
        )
    );
    assert_eq!(dashboard.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(dashboard.header("referrer-policy"), Some("same-origin"));
    assert!(!dashboard.body.contains("<script>") && !dashboard.body.contains(" style="), "no inline script or style");

    // Signed-in forms: without the session's token, refused; with it, done.
    let csrf = web.get("/projects/new").csrf();
    let refused = web.post("/projects", &[("name", "blog")]);
    assert_eq!(refused.status, 403);
    let refused = web.post("/projects", &[("name", "blog"), ("csrf", &"0".repeat(64))]);
    assert_eq!(refused.status, 403);
    let refused =
        web.send("POST", "/projects", Some(&[("name", "blog"), ("csrf", &csrf)]), &[("Sec-Fetch-Site", "cross-site")]);
    assert_eq!(refused.status, 403, "a cross-site post is refused even with a token");
    assert_eq!(web.get("/projects/blog").status, 404, "nothing was created");
    let created = web.post("/projects", &[("name", "blog"), ("csrf", &csrf)]);
    assert_eq!((created.status, created.header("location")), (303, Some("/projects/blog?done=created")));

    // Everything shown is escaped.
    let hostile = "<script>alert(1)</script>\"'&";
    let saved = web.post("/projects/blog/env", &[("csrf", &csrf), ("key", "HOSTILE"), ("value", hostile)]);
    assert_eq!(saved.status, 303, "{}", saved.body);
    let env = web.get("/projects/blog/env");
    assert!(!env.body.contains("<script>alert"), "unescaped value on the page");
    assert!(
        env.body.contains("&#60;script&#62;alert(1)&#60;/script&#62;") || env.body.contains("&lt;script&gt;"),
        "{}",
        env.body
    );

    // A field error is shown next to its field, the entered value kept.
    let bad = web.post("/projects/blog/env", &[("csrf", &csrf), ("key", "1BAD"), ("value", "x")]);
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("id=\"key-error\"") && bad.body.contains("invalid env var name"), "{}", bad.body);

    // The Domains tab: its forms need the token, errors show next to the field.
    let refused = web.post("/projects/blog/domains", &[("domain", "www.blog.example")]);
    assert_eq!(refused.status, 403);
    let added = web.post("/projects/blog/domains", &[("csrf", &csrf), ("domain", "www.blog.example")]);
    assert_eq!((added.status, added.header("location")), (303, Some("/projects/blog/domains?done=domain-added")));
    let page = web.get("/projects/blog/domains");
    assert!(page.body.contains("www.blog.example"), "{}", page.body);
    let bad = web.post("/projects/blog/domains", &[("csrf", &csrf), ("domain", "blog.localhost")]);
    assert_eq!(bad.status, 400);
    assert!(
        bad.body.contains("id=\"domain-error\"") && bad.body.contains("names under localhost are the platform"),
        "{}",
        bad.body
    );
    assert!(bad.body.contains("value=\"blog.localhost\""), "the entered value is kept");

    // The HTTPS form on the same tab: the token, then the policy saved and shown again.
    assert_eq!(web.post("/projects/blog/https", &[("hsts_max_age", "300")]).status, 403);
    let saved = web.post("/projects/blog/https", &[("csrf", &csrf), ("hsts_max_age", "300")]);
    assert_eq!((saved.status, saved.header("location")), (303, Some("/projects/blog/domains?done=https-saved")));
    let page = web.get("/projects/blog/domains");
    assert!(
        page.body.contains("value=\"300\"") && !page.body.contains("name=\"redirect\" value=\"on\" checked"),
        "{}",
        page.body
    );
    let bad = web.post("/projects/blog/https", &[("csrf", &csrf), ("redirect", "on"), ("hsts_max_age", "99999999999")]);
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("id=\"hsts-error\"") && bad.body.contains("hsts_max_age"), "{}", bad.body);

    // Another user: ada's project is the same 404 page as a project that does not exist.
    let mut bob = Web::new(&server.api_url());
    bob.sign_up("bob@example.com");
    let theirs = bob.get("/projects/blog");
    let missing = bob.get("/projects/no-such-project");
    assert_eq!((theirs.status, missing.status), (404, 404));
    assert_eq!(theirs.body, missing.body, "a 404 reveals nothing");
    let bob_csrf = bob.get("/projects/new").csrf();
    let delete = bob.post("/projects/blog/delete", &[("csrf", &bob_csrf), ("confirm", "blog")]);
    assert_eq!(delete.status, 404);
    assert_eq!(web.get("/projects/blog").status, 200, "still there for ada");
    let remove = bob.post("/projects/blog/domains/remove", &[("csrf", &bob_csrf), ("domain", "www.blog.example")]);
    assert_eq!(remove.status, 404);
    let removed = web.post("/projects/blog/domains/remove", &[("csrf", &csrf), ("domain", "www.blog.example")]);
    assert_eq!(removed.status, 303, "{}", removed.body);
    assert!(!web.get("/projects/blog/domains").body.contains("www.blog.example"), "gone from the list");
    // Ada's token does not work in bob's forms, nor bob's in ada's.
    assert_eq!(bob.post("/projects/blog/delete", &[("csrf", &csrf), ("confirm", "blog")]).status, 403);

    // Over HTTPS (as a proxy reports it) the session cookie is Secure.
    let mut carol = Web::new(&server.api_url());
    let page = carol.send("GET", "/signup", None, &[("X-Forwarded-Proto", "https")]);
    let csrf_c = page.csrf();
    let signed = carol.send(
        "POST",
        "/signup",
        Some(&[("csrf", &csrf_c), ("email", "carol@example.com"), ("password", PASSWORD)]),
        &[("X-Forwarded-Proto", "https")],
    );
    let session = signed.set_cookies().into_iter().find(|c| c.starts_with("paastech_session=")).expect("session");
    assert!(session.ends_with("; Secure"), "{session}");

    // Logging out ends the session on the server, not only in the browser.
    let stolen = web.cookies.get("paastech_session").cloned().expect("session");
    assert_eq!(web.post("/logout", &[("csrf", &csrf)]).status, 303);
    let mut replay = Web::new(&server.api_url());
    replay.cookies.insert("paastech_session".into(), stolen);
    assert_eq!(replay.get("/").status, 303, "the old session cookie no longer works");

    // The API is unchanged beside the UI.
    assert_eq!(server.api().req("GET", "/healthz", None, None).0, 200);
    assert_eq!(server.api().req("GET", "/nope", None, None).1["error"]["code"], "not_found");
}
