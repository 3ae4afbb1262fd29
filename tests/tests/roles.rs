//! Collaborators and roles (#16): every project route and both git verbs as the owner, a
//! developer, a viewer, a non-member and an admin, on SQLite and on PostgreSQL, against a
//! real server; and the admin's journeys (disable, delete with the projects transferred or
//! deleted).
//!
//! The writes in the matrix carry well-formed requests the route then refuses (a bad
//! domain, an unknown add-on…), or ones that change nothing, so that every role's answer
//! is that of the same state: a role allowed gets the route's own answer, a member
//! lacking the role 403 naming it, a non-member exactly what a missing project answers
//! (checked byte for byte by asking again once the project is deleted).

use std::path::Path;

use paastech_tests::{Developer, GitRepo, Server, example, fresh_postgres_database};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    Viewer,
    Developer,
    Owner,
}

/// One route of the matrix: method, path under `/projects/shop`, body, the role it needs,
/// and the status a member with that role (or an admin) gets.
struct Row {
    method: &'static str,
    path: String,
    body: Option<Value>,
    need: Need,
    allowed: u16,
}

fn row(method: &'static str, path: impl Into<String>, body: Option<Value>, need: Need, allowed: u16) -> Row {
    Row { method, path: path.into(), body, need, allowed }
}

/// Every route that takes a project (`web/src/api/mod.rs`), but `DELETE /projects/{name}`,
/// which is asked last.
fn matrix(viewer_email: &str, owner_email: &str) -> Vec<Row> {
    use Need::*;
    vec![
        row("GET", "", None, Viewer, 200),
        row("GET", "/collaborators", None, Viewer, 200),
        // Gives the viewer the role they have: no change.
        row("POST", "/collaborators", Some(json!({"email": viewer_email, "role": "viewer"})), Owner, 200),
        // The project's owner cannot be removed (transfer first).
        row("DELETE", format!("/collaborators/{owner_email}"), None, Owner, 409),
        // A transfer to the owner changes nothing.
        row("POST", "/transfer", Some(json!({"email": owner_email})), Owner, 200),
        row("GET", "/env", None, Developer, 200),
        row("PATCH", "/env", Some(json!({"1BAD": "x"})), Developer, 400),
        row("GET", "/scale", None, Viewer, 200),
        row("PUT", "/scale", Some(json!({"web": 1000})), Developer, 400),
        row("GET", "/deployments", None, Viewer, 200),
        row("POST", "/deployments", Some(json!({"version": 999})), Developer, 404),
        row("GET", "/limits", None, Viewer, 200),
        row("PUT", "/limits", Some(json!({"memory_mb": 0})), Developer, 400),
        row("GET", "/logs?lines=5", None, Viewer, 200),
        row("GET", "/ps", None, Viewer, 200),
        row("GET", "/stats", None, Viewer, 200),
        row("GET", "/domains", None, Viewer, 200),
        row("POST", "/domains", Some(json!({"domain": "not a domain"})), Developer, 400),
        row("DELETE", "/domains/www.example.com", None, Developer, 404),
        row("GET", "/addons", None, Viewer, 200),
        row("POST", "/addons", Some(json!({"kind": "nosuchkind"})), Developer, 400),
        row("GET", "/addons/pg", None, Developer, 404),
        row("DELETE", "/addons/pg", None, Developer, 404),
        row("GET", "/addons/pg/backup", None, Developer, 404),
        row("GET", "/https", None, Viewer, 200),
        row("PATCH", "/https", Some(json!({"hsts_max_age": -1})), Developer, 400),
        row("GET", "/webhooks", None, Developer, 200),
        row("POST", "/webhooks", Some(json!({"url": "ftp://example.com/"})), Developer, 400),
        row("DELETE", "/webhooks/999", None, Developer, 404),
        row("GET", "/webhooks/999/deliveries", None, Developer, 404),
        row("GET", "/previews", None, Viewer, 200),
        row("PUT", "/previews", Some(json!({"enabled": false})), Developer, 200),
        row("GET", "/cron", None, Viewer, 200),
        row("POST", "/run", Some(json!({"command": ["true"]})), Developer, 400),
        // Without `Upgrade: websocket` a member with the role gets a 400 (the access is
        // decided before that).
        row("GET", "/run/interactive?command=%5B%22sh%22%5D", None, Developer, 400),
        row("POST", "/stop", Some(json!({"process": "Not A Type"})), Developer, 400),
        row("POST", "/start", Some(json!({"process": "Not A Type"})), Developer, 400),
        row("POST", "/restart", Some(json!({"process": "Not A Type"})), Developer, 400),
    ]
}

struct Cast {
    admin: Developer,
    owner: Developer,
    developer: Developer,
    viewer: Developer,
    stranger: Developer,
}

const ADMIN: &str = "admin@example.com";
const OWNER: &str = "owner@example.com";
const DEVELOPER: &str = "dev@example.com";
const VIEWER: &str = "viewer@example.com";
const STRANGER: &str = "stranger@example.com";

fn cast(server: &Server) -> Cast {
    // The first account is the admin.
    let admin = server.developer(ADMIN);
    let cast = Cast {
        admin,
        owner: server.developer(OWNER),
        developer: server.developer(DEVELOPER),
        viewer: server.developer(VIEWER),
        stranger: server.developer(STRANGER),
    };
    let api = server.api();
    let (status, body) = api.req("POST", "/projects", Some(&cast.owner.token), Some(json!({"name": "shop"})));
    assert_eq!(status, 201, "{body}");
    for (email, role) in [(DEVELOPER, "developer"), (VIEWER, "viewer")] {
        let (status, body) = api.req(
            "POST",
            "/projects/shop/collaborators",
            Some(&cast.owner.token),
            Some(json!({"email": email, "role": role})),
        );
        assert_eq!(status, 201, "adding {email}: {body}");
        assert_eq!(body["role"], role);
    }
    cast
}

fn role_matrix(server: &Server) {
    let cast = cast(server);
    let api = server.api();
    let rows = matrix(VIEWER, OWNER);
    let members = [
        ("owner", &cast.owner, Need::Owner),
        ("admin", &cast.admin, Need::Owner),
        ("developer", &cast.developer, Need::Developer),
        ("viewer", &cast.viewer, Need::Viewer),
    ];
    let mut strangers = Vec::new();
    for r in &rows {
        let path = format!("/projects/shop{}", r.path);
        for (who, member, has) in members {
            let (status, body) = api.req(r.method, &path, Some(&member.token), r.body.clone());
            if has >= r.need {
                assert_eq!(status, r.allowed, "{who}: {} {path}: {body}", r.method);
            } else {
                let needed = format!("{:?}", r.need).to_lowercase();
                assert_eq!(status, 403, "{who}: {} {path}: {body}", r.method);
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains(&format!("needs the {needed} role")), "{who}: {} {path}: {body}", r.method);
            }
        }
        let answer = api.req(r.method, &path, Some(&cast.stranger.token), r.body.clone());
        assert_eq!(answer.0, 404, "non-member: {} {path}: {}", r.method, answer.1);
        strangers.push(answer);
    }
    // The project's audit log (`GET /audit?project=`): any member reads it.
    for (who, member, _) in members {
        let (status, body) = api.req("GET", "/audit?project=shop", Some(&member.token), None);
        assert_eq!(status, 200, "{who}: GET /audit?project=shop: {body}");
    }
    let stranger_audit = api.req("GET", "/audit?project=shop", Some(&cast.stranger.token), None);
    assert_eq!(stranger_audit.0, 404, "non-member: GET /audit?project=shop: {}", stranger_audit.1);

    // Emails are matched as stored (lowercase); one no account can have is nobody's.
    let (status, body) = api.req(
        "POST",
        "/projects/shop/collaborators",
        Some(&cast.owner.token),
        Some(json!({"email": " Viewer@Example.COM ", "role": "viewer"})),
    );
    assert_eq!((status, &body["email"]), (200, &json!(VIEWER)), "{body}");
    for email in ["nobody@example.com", "viewer@example.com\u{0}"] {
        let (status, body) = api.req(
            "POST",
            "/projects/shop/collaborators",
            Some(&cast.owner.token),
            Some(json!({"email": email, "role": "viewer"})),
        );
        assert_eq!(status, 404, "{email:?}: {body}");
        assert_eq!(body["error"]["message"], "no user with this email can be added");
    }

    // Listings show the member's projects with their role; the stranger's has none.
    for (member, role) in [(&cast.owner, "owner"), (&cast.developer, "developer"), (&cast.viewer, "viewer")] {
        let (_, list) = api.req("GET", "/projects", Some(&member.token), None);
        assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
        assert_eq!((&list[0]["name"], &list[0]["role"]), (&json!("shop"), &json!(role)), "{list}");
    }
    let (_, list) = api.req("GET", "/projects", Some(&cast.stranger.token), None);
    assert_eq!(list, json!([]));

    git_verbs(server, &cast);

    // Deleting: owners only (an admin deletes another project below).
    for (who, member) in [("developer", &cast.developer), ("viewer", &cast.viewer)] {
        let (status, body) = api.req("DELETE", "/projects/shop", Some(&member.token), None);
        assert_eq!(status, 403, "{who}: {body}");
    }
    let stranger_delete = api.req("DELETE", "/projects/shop", Some(&cast.stranger.token), None);
    assert_eq!(api.req("DELETE", "/projects/shop", Some(&cast.owner.token), None).0, 204);
    // Now that "shop" is missing, the non-member's answers must not have differed.
    assert_eq!(api.req("DELETE", "/projects/shop", Some(&cast.stranger.token), None), stranger_delete);
    let audit_now = api.req("GET", "/audit?project=shop", Some(&cast.stranger.token), None);
    assert_eq!(audit_now, stranger_audit, "a non-member's audit read differs from a missing project's");
    for (r, before) in rows.iter().zip(&strangers) {
        let path = format!("/projects/shop{}", r.path);
        let now = api.req(r.method, &path, Some(&cast.stranger.token), r.body.clone());
        assert_eq!(&now, before, "a non-member's {} {path} differs from a missing project's", r.method);
    }
    let (status, _) = api.req("POST", "/projects", Some(&cast.owner.token), Some(json!({"name": "other"})));
    assert_eq!(status, 201);
    assert_eq!(api.req("DELETE", "/projects/other", Some(&cast.admin.token), None).0, 204);
}

/// Fetch (`git-upload-pack`) needs a viewer, push (`git-receive-pack`) a developer.
fn git_verbs(server: &Server, cast: &Cast) {
    let work = server.dir.path().join("git");
    let source = example("static-hello");
    let repo = |name: &str, who: &Developer| -> GitRepo {
        GitRepo::from_dir(&work.join(name), &source, &who.key, server.ssh_port, "shop")
    };
    let clone = |who: &Developer, into: &str| {
        let url = format!("ssh://git@127.0.0.1:{}/shop.git", server.ssh_port);
        let out = std::process::Command::new("git")
            .args(["clone", "-q", &url])
            .arg(work.join(into))
            .env("GIT_SSH_COMMAND", paastech_tests::ssh_command(&who.key, server.ssh_port))
            .output()
            .expect("running git clone");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    std::fs::create_dir_all(&work).expect("work dir");

    // A branch other than main deploys nothing (previews are off): the verb alone is tried.
    let (ok, text) = repo("owner", &cast.owner).push("main:refs/heads/owner");
    assert!(ok, "owner push: {text}");
    let (ok, text) = repo("developer", &cast.developer).push("main:refs/heads/developer");
    assert!(ok, "developer push: {text}");
    let (ok, text) = repo("admin", &cast.admin).push("main:refs/heads/admin");
    assert!(ok, "admin push: {text}");
    let (ok, text) = repo("viewer", &cast.viewer).push("main:refs/heads/viewer");
    assert!(!ok && text.contains("needs the developer role"), "viewer push: {text}");
    let (ok, text) = repo("stranger", &cast.stranger).push("main:refs/heads/stranger");
    assert!(!ok && text.contains("project not found or access denied"), "stranger push: {text}");

    for (who, member) in [("owner", &cast.owner), ("developer", &cast.developer), ("viewer", &cast.viewer)] {
        let (ok, text) = clone(member, &format!("clone-{who}"));
        assert!(ok, "{who} clone: {text}");
    }
    let (ok, text) = clone(&cast.admin, "clone-admin");
    assert!(ok, "admin clone: {text}");
    let (ok, text) = clone(&cast.stranger, "clone-stranger");
    assert!(!ok && text.contains("project not found or access denied"), "stranger clone: {text}");
    // The stranger's answer is the one for a project that does not exist.
    let url = format!("ssh://git@127.0.0.1:{}/ghost.git", server.ssh_port);
    let out = std::process::Command::new("git")
        .args(["ls-remote", &url])
        .env("GIT_SSH_COMMAND", paastech_tests::ssh_command(&cast.owner.key, server.ssh_port))
        .output()
        .expect("git ls-remote");
    assert!(String::from_utf8_lossy(&out.stderr).contains("project not found or access denied"));
    assert!(Path::new(&work.join("clone-viewer/.git")).exists());
}

#[test]
fn the_role_matrix_on_sqlite() {
    role_matrix(&Server::start(""));
}

#[test]
fn the_role_matrix_on_postgres() {
    let url = fresh_postgres_database("paastech_roles");
    role_matrix(&Server::start(&format!("[database]\nurl = {url:?}\n")));
}

/// An admin disables an account (its login, token and SSH key refused), and deletes
/// accounts with their projects transferred or deleted; the last admin stays.
fn admin_journeys(server: &Server) {
    let api = server.api();
    let admin = server.developer(ADMIN);
    let bob = server.developer("bob@example.com");
    let carol = server.developer("carol@example.com");
    for name in ["bobs-app", "bobs-blog"] {
        assert_eq!(api.req("POST", "/projects", Some(&bob.token), Some(json!({"name": name}))).0, 201);
    }
    let work = server.dir.path().join("admin-git");
    let repo = GitRepo::from_dir(&work, &example("static-hello"), &bob.key, server.ssh_port, "bobs-app");
    let (ok, text) = repo.push("main:refs/heads/before");
    assert!(ok, "bob's push before: {text}");

    // Only admins manage users.
    let (status, _) = api.req("PATCH", "/users/bob@example.com", Some(&carol.token), Some(json!({"disabled": true})));
    assert_eq!(status, 403);
    let (status, body) =
        api.req("PATCH", "/users/bob@example.com", Some(&admin.token), Some(json!({"disabled": true})));
    assert_eq!((status, &body["disabled"]), (200, &json!(true)), "{body}");
    let (status, body) = api.req("GET", "/me", Some(&bob.token), None);
    assert_eq!(status, 401, "a disabled account's token: {body}");
    let (status, body) = api.req(
        "POST",
        "/auth/login",
        None,
        Some(json!({"email": "bob@example.com", "password": paastech_tests::web::PASSWORD})),
    );
    assert_eq!(status, 403, "a disabled account's login: {body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("disabled"), "{body}");
    let (ok, text) = repo.push("main:refs/heads/after");
    // Refused at authentication: the key belongs to nobody who may log in.
    assert!(!ok && text.contains("Permission denied (publickey)"), "a disabled account's SSH key: {text}");
    let (_, users) = api.req("GET", "/users", Some(&admin.token), None);
    let bob_row = users.as_array().and_then(|u| u.iter().find(|u| u["email"] == "bob@example.com")).cloned();
    assert_eq!(bob_row.map(|u| u["disabled"].clone()), Some(json!(true)));

    // The last admin can neither disable nor delete themselves.
    let (status, body) =
        api.req("PATCH", "/users/admin@example.com", Some(&admin.token), Some(json!({"disabled": true})));
    assert_eq!(status, 409, "{body}");
    let (status, body) = api.req("DELETE", "/users/admin@example.com", Some(&admin.token), None);
    assert_eq!(status, 409, "{body}");

    // Deleting a user with projects asks what to do with them.
    let (status, body) = api.req("DELETE", "/users/bob@example.com", Some(&admin.token), None);
    assert_eq!(status, 409, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("bobs-app, bobs-blog"), "the refusal lists the projects: {body}");
    let (status, body) =
        api.req("DELETE", "/users/bob@example.com?projects=transfer&to=carol@example.com", Some(&admin.token), None);
    assert_eq!(status, 204, "{body}");
    let (_, list) = api.req("GET", "/projects", Some(&carol.token), None);
    let owned: Vec<(&Value, &Value)> =
        list.as_array().map(|l| l.iter().map(|p| (&p["name"], &p["role"])).collect()).unwrap_or_default();
    assert_eq!(owned, [(&json!("bobs-app"), &json!("owner")), (&json!("bobs-blog"), &json!("owner"))]);
    let (_, members) = api.req("GET", "/projects/bobs-app/collaborators", Some(&carol.token), None);
    assert_eq!(members.as_array().map(Vec::len), Some(1), "the deleted owner's row went with them: {members}");
    let (status, _) = api.req(
        "POST",
        "/auth/login",
        None,
        Some(json!({"email": "bob@example.com", "password": paastech_tests::web::PASSWORD})),
    );
    assert_eq!(status, 401);

    // …or deletes them with the user.
    let dave = server.developer("dave@example.com");
    assert_eq!(api.req("POST", "/projects", Some(&dave.token), Some(json!({"name": "daves-app"}))).0, 201);
    let (status, body) = api.req("DELETE", "/users/dave@example.com?projects=delete", Some(&admin.token), None);
    assert_eq!(status, 204, "{body}");
    assert_eq!(api.req("GET", "/projects/daves-app", Some(&admin.token), None).0, 404);

    // Enabled again, an account logs in.
    let (status, _) = api.req("PATCH", "/users/carol@example.com", Some(&admin.token), Some(json!({"disabled": true})));
    assert_eq!(status, 200);
    let (status, _) =
        api.req("PATCH", "/users/carol@example.com", Some(&admin.token), Some(json!({"disabled": false})));
    assert_eq!(status, 200);
    api.login("carol@example.com", paastech_tests::web::PASSWORD);
}

/// `paastech access` and `paastech users`, end to end.
fn cli_journey(server: &Server) {
    let home = tempfile::tempdir().expect("home");
    let home = home.path();
    let admin = server.developer(ADMIN);
    let owner = server.developer(OWNER);
    server.developer(DEVELOPER);
    let api = server.api();
    assert_eq!(api.req("POST", "/projects", Some(&owner.token), Some(json!({"name": "shop"}))).0, 201);
    let run = |token: &str, args: &[&str]| {
        let mut all = vec!["--token", token];
        all.extend_from_slice(args);
        server.cli(home, &all, None)
    };
    let out =
        paastech_tests::ok(&run(&owner.token, &["access", "add", DEVELOPER, "--role", "developer", "-p", "shop"]));
    assert!(out.contains("dev@example.com is a developer of shop"), "{out}");
    let out = paastech_tests::ok(&run(&owner.token, &["access", "list", "-p", "shop"]));
    assert!(out.contains("owner@example.com") && out.contains("developer"), "{out}");
    let out = paastech_tests::ok(&run(&owner.token, &["access", "transfer", DEVELOPER, "-p", "shop"]));
    assert!(out.contains("dev@example.com owns shop now"), "{out}");
    let err = paastech_tests::failed(&run(&owner.token, &["access", "remove", DEVELOPER, "-p", "shop"]));
    assert!(err.contains("transfer the project first"), "{err}");
    paastech_tests::ok(&run(&owner.token, &["access", "remove", OWNER, "-p", "shop"]));
    let (status, _) = api.req("GET", "/projects/shop", Some(&owner.token), None);
    assert_eq!(status, 404, "the old owner left");
    let out = paastech_tests::ok(&run(&admin.token, &["users", "disable", OWNER]));
    assert!(out.contains("disabled"), "{out}");
    let out = paastech_tests::ok(&run(&admin.token, &["users", "list"]));
    assert!(out.lines().any(|l| l.contains(OWNER) && l.contains("disabled")), "{out}");
    paastech_tests::ok(&run(&admin.token, &["users", "delete", OWNER]));
    let err = paastech_tests::failed(&run(&admin.token, &["users", "delete", DEVELOPER]));
    assert!(err.contains("shop"), "the refusal lists the projects: {err}");
    paastech_tests::ok(&run(&admin.token, &["users", "delete", DEVELOPER, "--projects", "delete"]));
}

#[test]
fn admin_journeys_on_sqlite() {
    admin_journeys(&Server::start(""));
}

#[test]
fn admin_journeys_on_postgres() {
    let url = fresh_postgres_database("paastech_admin");
    admin_journeys(&Server::start(&format!("[database]\nurl = {url:?}\n")));
}

#[test]
fn access_and_users_from_the_cli() {
    cli_journey(&Server::start(""));
}

/// The Collaborators tab and the admin page's user actions, through the web UI's forms
/// (CSRF tokens and all).
fn web_journey(server: &Server) {
    use paastech_tests::web::Web;
    let base = format!("http://127.0.0.1:{}", server.api_port);
    let admin = server.developer(ADMIN);
    let owner = server.developer(OWNER);
    server.developer(VIEWER);
    server.developer(STRANGER);
    let api = server.api();
    assert_eq!(api.req("POST", "/projects", Some(&owner.token), Some(json!({"name": "shop"}))).0, 201);
    let _ = admin;

    let mut web = Web::new(&base);
    web.log_in(OWNER);
    let tab = web.get("/projects/shop/collaborators");
    assert_eq!(tab.status, 200, "{}", tab.body);
    assert!(tab.body.contains("Add a member") && tab.body.contains("Transfer the project"));
    let csrf = tab.csrf();
    // Without the CSRF token, nothing is done.
    let refused = web.post("/projects/shop/collaborators", &[("email", VIEWER), ("role", "viewer")]);
    assert_eq!(refused.status, 403, "{}", refused.body);
    let unknown = web
        .post("/projects/shop/collaborators", &[("csrf", &csrf), ("email", "nobody@example.com"), ("role", "viewer")]);
    assert_eq!(unknown.status, 404);
    assert!(unknown.body.contains("no user with this email can be added"), "{}", unknown.body);
    let added = web.post("/projects/shop/collaborators", &[("csrf", &csrf), ("email", VIEWER), ("role", "viewer")]);
    assert_eq!(added.status, 303, "{}", added.body);
    let tab = web.get("/projects/shop/collaborators");
    assert!(tab.body.contains(VIEWER), "{}", tab.body);

    // The viewer sees the members, no forms to change them, and no Env tab content.
    let mut viewer = Web::new(&base);
    viewer.log_in(VIEWER);
    let dashboard = viewer.get("/");
    assert!(dashboard.body.contains("/projects/shop") && dashboard.body.contains("viewer"), "{}", dashboard.body);
    let tab = viewer.get("/projects/shop/collaborators");
    assert_eq!(tab.status, 200);
    assert!(!tab.body.contains("Add a member") && tab.body.contains("Leave"), "{}", tab.body);
    assert_eq!(viewer.get("/projects/shop/env").status, 403);
    // Nor are the tabs it may not open offered.
    let overview = viewer.get("/projects/shop");
    assert!(!overview.body.contains("href=\"/projects/shop/env\""), "{}", overview.body);
    assert!(web.get("/projects/shop").body.contains("href=\"/projects/shop/env\""));
    assert_eq!(viewer.get("/projects/shop/logs").status, 200);
    let csrf = tab.csrf();
    let refused = viewer.post("/projects/shop/delete", &[("csrf", &csrf), ("confirm", "shop")]);
    assert_eq!(refused.status, 403);
    // A non-member's pages are the missing project's.
    let mut stranger = Web::new(&base);
    stranger.log_in(STRANGER);
    assert_eq!(stranger.get("/projects/shop/collaborators").status, 404);
    assert_eq!(stranger.get("/projects/shop").status, 404);

    // The viewer leaves.
    let left = viewer.post("/projects/shop/collaborators/remove", &[("csrf", &csrf), ("email", VIEWER)]);
    assert_eq!(left.status, 303, "{}", left.body);
    assert_eq!(viewer.get("/projects/shop").status, 404);

    // The admin disables the stranger from the admin page: their session ends.
    let mut admin_web = Web::new(&base);
    admin_web.log_in(ADMIN);
    let page = admin_web.get("/admin");
    let csrf = page.csrf();
    let done = admin_web.post("/admin/users/disable", &[("csrf", &csrf), ("email", STRANGER), ("disabled", "true")]);
    assert_eq!(done.status, 303, "{}", done.body);
    assert!(admin_web.get("/admin").body.contains("disabled"));
    assert_eq!(stranger.get("/").status, 303, "a disabled account's session is over");
    let refused = admin_web.post("/admin/users/delete", &[("csrf", &csrf), ("email", OWNER)]);
    assert_eq!(refused.status, 409, "{}", refused.body);
    let done = admin_web
        .post("/admin/users/delete", &[("csrf", &csrf), ("email", OWNER), ("projects", "transfer"), ("to", ADMIN)]);
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(admin_web.get("/projects/shop/collaborators").status, 200);
}

#[test]
fn collaborators_tab_and_admin_page() {
    web_journey(&Server::start(""));
}

/// A preview app has no members of its own: its parent's act on it with their roles, and
/// a transfer of the parent moves it too.
#[test]
fn a_preview_app_takes_its_parents_members() {
    let server = Server::start("");
    let api = server.api();
    let c = cast(&server);
    let (status, body) =
        api.req("PUT", "/projects/shop/previews", Some(&c.developer.token), Some(json!({"enabled": true})));
    assert_eq!(status, 200, "{body}");
    let repo = GitRepo::from_dir(
        &server.dir.path().join("preview"),
        &example("static-hello"),
        &c.developer.key,
        server.ssh_port,
        "shop",
    );
    // The developer's push of a branch makes the preview.
    let (ok, text) = repo.push("main:refs/heads/feature");
    assert!(ok, "{text}\n{}", server.log());
    let preview = "/projects/feature--shop";
    for (who, member) in [("owner", &c.owner), ("developer", &c.developer), ("viewer", &c.viewer), ("admin", &c.admin)]
    {
        let (status, body) = api.req("GET", preview, Some(&member.token), None);
        assert_eq!(status, 200, "{who}: {body}");
    }
    let (status, body) = api.req("GET", &format!("{preview}/env"), Some(&c.developer.token), None);
    assert_eq!(status, 200, "{body}");
    let (status, body) = api.req("GET", &format!("{preview}/env"), Some(&c.viewer.token), None);
    assert_eq!(status, 403, "{body}");
    let (status, body) = api.req("GET", preview, Some(&c.stranger.token), None);
    assert_eq!(status, 404, "{body}");
    // Its members are its parent's, and are changed there.
    let (_, members) = api.req("GET", &format!("{preview}/collaborators"), Some(&c.viewer.token), None);
    assert_eq!(members.as_array().map(Vec::len), Some(3), "{members}");
    let (status, body) = api.req(
        "POST",
        &format!("{preview}/collaborators"),
        Some(&c.owner.token),
        Some(json!({"email": STRANGER, "role": "viewer"})),
    );
    assert_eq!(status, 400, "{body}");
    // The parent's transfer takes the preview along: the new owner lists both as theirs.
    let (status, body) =
        api.req("POST", "/projects/shop/transfer", Some(&c.owner.token), Some(json!({"email": DEVELOPER})));
    assert_eq!(status, 200, "{body}");
    let (_, list) = api.req("GET", "/projects", Some(&c.developer.token), None);
    let roles: Vec<(&Value, &Value)> =
        list.as_array().map(|l| l.iter().map(|p| (&p["name"], &p["role"])).collect()).unwrap_or_default();
    assert_eq!(roles, [(&json!("feature--shop"), &json!("owner")), (&json!("shop"), &json!("owner"))]);
    // The stranger, once a viewer of the parent, sees the preview too.
    let (status, _) = api.req(
        "POST",
        "/projects/shop/collaborators",
        Some(&c.developer.token),
        Some(json!({"email": STRANGER, "role": "viewer"})),
    );
    assert_eq!(status, 201);
    assert_eq!(api.req("GET", preview, Some(&c.stranger.token), None).0, 200);
}
