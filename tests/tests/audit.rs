//! The audit log (#16): a real server on SQLite and on PostgreSQL records every change —
//! logins and failed logins, keys and tokens, project creation, a `git push` over SSH,
//! redeploy, rollback, env changes (names only), scale, collaborators, admin actions —
//! with who made it and the address it came from (clients bound to other loopback
//! addresses than the server's, so the address is the client's own); the API, the CLI and
//! the pages show each reader what they may read; and records past the retention go.

use std::process::Command;

use paastech_tests::web::{PASSWORD, Web};
use paastech_tests::{Developer, GitRepo, Server, example, fresh_postgres_database, ok, ssh_command};
use serde_json::{Value, json};

const ADMIN: &str = "admin@example.com";
const OWNER: &str = "owner@example.com";
const DEVELOPER: &str = "dev@example.com";
const STRANGER: &str = "stranger@example.com";
/// A config value that must never reach the log.
const SECRET: &str = "hunter2-never-logged";

/// `curl` from `source` (a loopback address of its own): (status, body).
fn curl_from(source: &str, server: &Server, method: &str, path: &str, body: &Value) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--interface", source, "-X", method])
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(body.to_string())
        .arg(format!("{}/api/v1{path}", server.api_url()))
        .output()
        .expect("running curl");
    let text = ok(&output);
    let (body, status) = text.rsplit_once('\n').expect("status line");
    (status.trim().parse().expect("status"), body.to_owned())
}

fn audit(server: &Server, token: &str, query: &str) -> Vec<Value> {
    let (status, body) = server.api().req("GET", &format!("/audit{query}"), Some(token), None);
    assert_eq!(status, 200, "GET /audit{query}: {body}");
    body.as_array().cloned().unwrap_or_default()
}

/// The records' `action detail` lines, newest first.
fn lines(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| format!("{} {}", text(&e["action"]), text(&e["detail"])).trim().to_owned()).collect()
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// The newest record with this action (and, when given, a detail containing `detail`).
fn find<'a>(events: &'a [Value], action: &str, detail: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["action"] == action && text(&e["detail"]).contains(detail))
        .unwrap_or_else(|| panic!("no {action} record with {detail:?} in {:#?}", lines(events)))
}

fn has(events: &[Value], action: &str, detail: &str) -> bool {
    events.iter().any(|e| e["action"] == action && text(&e["detail"]).contains(detail))
}

fn journey(server: &Server) {
    let api = server.api();
    let admin: Developer = server.developer(ADMIN);
    let owner = server.developer(OWNER);
    let dev = server.developer(DEVELOPER);
    let stranger = server.developer(STRANGER);

    // Failed logins from 127.0.0.2: one on an account, one on no account.
    let wrong = json!({"email": OWNER, "password": "not the password"});
    assert_eq!(curl_from("127.0.0.2", server, "POST", "/auth/login", &wrong).0, 401);
    let nobody = json!({"email": "nobody@example.com", "password": "whatever it is"});
    assert_eq!(curl_from("127.0.0.2", server, "POST", "/auth/login", &nobody).0, 401);

    // The owner's project and its changes.
    let (status, body) = api.req("POST", "/projects", Some(&owner.token), Some(json!({"name": "shop"})));
    assert_eq!(status, 201, "{body}");
    let member = json!({"email": DEVELOPER, "role": "developer"});
    assert_eq!(api.req("POST", "/projects/shop/collaborators", Some(&owner.token), Some(member)).0, 201);
    let env = json!({"SECRET_TOKEN": SECRET, "PLAIN": "x"});
    assert_eq!(api.req("PATCH", "/projects/shop/env", Some(&owner.token), Some(env)).0, 200);
    assert_eq!(api.req("PATCH", "/projects/shop/env", Some(&owner.token), Some(json!({"PLAIN": null}))).0, 200);
    let (status, body) = api.req("POST", "/tokens", Some(&owner.token), Some(json!({"name": "ci"})));
    assert_eq!(status, 201, "{body}");
    let token_id = body["id"].as_i64().expect("token id");
    assert_eq!(api.req("DELETE", &format!("/tokens/{token_id}"), Some(&owner.token), None).0, 204);

    // The developer pushes over SSH from 127.0.0.3.
    let work = server.dir.path().join("work");
    let repo = GitRepo::from_dir(&work, &example("static-hello"), &dev.key, server.ssh_port, "shop");
    let push = Command::new("git")
        .current_dir(&repo.dir)
        .env("GIT_SSH_COMMAND", format!("{} -o BindAddress=127.0.0.3", ssh_command(&dev.key, server.ssh_port)))
        .args(["push", "paastech", "main"])
        .output()
        .expect("git push");
    assert!(push.status.success(), "push: {}", String::from_utf8_lossy(&push.stderr));
    let head = repo.head();
    assert_eq!(api.req("PUT", "/projects/shop/scale", Some(&dev.token), Some(json!({"web": 2}))).0, 200);
    let (status, body) = api.req("POST", "/projects/shop/deployments", Some(&dev.token), None);
    assert_eq!(status, 201, "redeploy: {body}");
    let (status, body) = api.req("POST", "/projects/shop/deployments", Some(&owner.token), Some(json!({"version": 1})));
    assert_eq!(status, 201, "rollback: {body}");

    // A push whose build fails is recorded too, with the reason.
    repo.write("app.json", r#"{"cron": [{"command": "true", "schedule": "not a schedule"}]}"#);
    repo.commit_all("a bad schedule");
    let (pushed, output) = repo.push("main");
    assert!(!pushed, "{output}");

    // Admin actions.
    let disable = json!({"disabled": true});
    assert_eq!(api.req("PATCH", &format!("/users/{STRANGER}"), Some(&admin.token), Some(disable)).0, 200);
    let (status, _) =
        api.req("PATCH", &format!("/users/{STRANGER}"), Some(&admin.token), Some(json!({"disabled": false})));
    assert_eq!(status, 200);
    assert_eq!(api.req("DELETE", &format!("/users/{STRANGER}"), Some(&admin.token), None).0, 204);
    drop(stranger);

    // The project's log, for a member of any role: what happened to it, by whom, from where.
    let shop = audit(server, &dev.token, "?project=shop");
    let actions: Vec<&str> = shop.iter().map(|e| text(&e["action"])).collect();
    assert_eq!(
        actions,
        [
            "deploy.failed",
            "rollback",
            "deploy",
            "scale",
            "deploy",
            "env.change",
            "env.change",
            "collaborator.add",
            "project.create"
        ],
        "{:#?}",
        lines(&shop)
    );
    assert!(shop.windows(2).all(|w| w[0]["id"].as_i64() > w[1]["id"].as_i64()), "newest first");
    assert!(text(&shop[0]["detail"]).contains("app.json"), "{}", shop[0]);
    let shop = &shop[1..];
    let pushed = &shop[3];
    assert_eq!(pushed["actor"], DEVELOPER);
    assert_eq!(pushed["address"], "127.0.0.3", "a push's address is the SSH client's");
    assert!(text(&pushed["detail"]).contains(&format!("v1 (git push of {})", &head[..12])), "{pushed}");
    assert_eq!(shop[2]["detail"], "web=2");
    assert_eq!((&shop[1]["actor"], &shop[1]["detail"]), (&json!(DEVELOPER), &json!("v2 (redeploy)")));
    assert_eq!((&shop[0]["actor"], &shop[0]["detail"]), (&json!(OWNER), &json!("to v1, as v3")));
    assert_eq!(shop[4]["detail"], "unset PLAIN");
    assert_eq!(shop[5]["detail"], "set PLAIN, SECRET_TOKEN");
    assert_eq!(shop[6]["detail"], "dev@example.com as developer");
    for event in shop {
        assert_eq!(event["project"], "shop");
        assert!(event["at"].as_str().is_some_and(|at| at.ends_with('Z')), "{event}");
    }
    // Paging: older than a record.
    let older = audit(server, &dev.token, &format!("?project=shop&limit=2&before={}", shop[1]["id"]));
    assert_eq!(lines(&older), lines(&shop[2..4]));
    // Not a member: the project is not found.
    let (status, _) = api.req("GET", "/audit?project=shop", Some(&server.api().user("other@example.com")), None);
    assert_eq!(status, 404);

    // Without a project: a member reads their own actions and their projects' records.
    let mine = audit(server, &owner.token, "");
    let failed = find(&mine, "login.failed", "wrong password");
    assert_eq!((&failed["actor"], &failed["address"]), (&json!(OWNER), &json!("127.0.0.2")));
    assert!(has(&mine, "token.create", "ci") && has(&mine, "token.delete", "ci"));
    assert!(has(&mine, "deploy", "git push"), "the project's records, whoever made them");
    assert!(has(&mine, "login", "api") && has(&mine, "key.add", "SHA256:"));
    assert!(!has(&mine, "user.disable", ""), "no admin action on others: {:#?}", lines(&mine));
    assert!(!has(&mine, "login.failed", "no such account"));
    assert!(mine.iter().all(|e| e["actor"] == OWNER || e["project"] == "shop"), "{:#?}", lines(&mine));
    let api_address = find(&mine, "token.create", "ci")["address"].clone();
    assert_eq!(api_address, "127.0.0.1");

    // An admin reads everything.
    let all = audit(server, &admin.token, "?limit=1000");
    let anonymous = find(&all, "login.failed", "no such account");
    assert_eq!((&anonymous["actor"], &anonymous["address"]), (&Value::Null, &json!("127.0.0.2")));
    assert_eq!(find(&all, "user.disable", STRANGER)["actor"], ADMIN);
    assert!(has(&all, "user.enable", STRANGER));
    assert!(has(&all, "user.delete", STRANGER));
    assert!(has(&all, "signup", ""));
    assert!(!serde_json::to_string(&all).expect("json").contains(SECRET), "a config value reached the log");

    // The CLI.
    let home = server.dir.path().join("dev-home");
    std::fs::create_dir_all(&home).expect("home");
    ok(&server.cli(&home, &["login", "--email", DEVELOPER, "--password-stdin"], Some(&format!("{PASSWORD}\n"))));
    let listed = ok(&server.cli(&home, &["audit", "-p", "shop"], None));
    assert!(listed.contains("ACTION") && listed.contains("env.change"), "{listed}");
    assert!(listed.contains("127.0.0.3") && listed.contains("set PLAIN, SECRET_TOKEN"), "{listed}");
    let json_out = ok(&server.cli(&home, &["audit", "-p", "shop", "--limit", "1", "--json"], None));
    let parsed: Value = serde_json::from_str(&json_out).expect("json listing");
    let newest = lines(parsed.as_array().expect("array"));
    assert!(newest.len() == 1 && newest[0].starts_with("deploy.failed git push of"), "{newest:?}");

    // The pages: the project's Audit tab and the account's log, read as each user may.
    let mut web = Web::new(&server.api_url());
    web.log_in(DEVELOPER);
    let tab = web.get("/projects/shop/audit");
    assert_eq!(tab.status, 200, "{}", tab.body);
    assert!(tab.body.contains("collaborator.add") && tab.body.contains("127.0.0.3"), "{}", tab.body);
    assert!(!tab.body.contains(SECRET));
    let page = web.get("/audit");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("rollback") && !page.body.contains("user.delete"), "{}", page.body);
    let mut admin_web = Web::new(&server.api_url());
    admin_web.log_in(ADMIN);
    let page = admin_web.get("/audit");
    assert!(page.body.contains("user.delete") && page.body.contains("no such account"), "{}", page.body);
    // The web logins are records too.
    assert!(has(&audit(server, &admin.token, ""), "login", "web"));

    // The project's other changes, each recorded with what changed.
    let changes: [(&str, &str, Value, &str, &str); 10] = [
        ("POST", "/domains", json!({"domain": "www.shop.test"}), "domain.add", "www.shop.test"),
        ("DELETE", "/domains/www.shop.test", Value::Null, "domain.remove", "www.shop.test"),
        ("PATCH", "/https", json!({"hsts_max_age": 600}), "https", "hsts max-age 600"),
        ("PUT", "/previews", json!({"enabled": true}), "previews", "on"),
        ("PUT", "/limits", json!({"memory_mb": 256}), "limits", "\"memory_mb\":256"),
        ("POST", "/stop", json!({"process": "web"}), "stop", "process web"),
        ("POST", "/start", json!({"process": "web"}), "start", "process web"),
        ("POST", "/restart", Value::Null, "restart", "all processes"),
        ("POST", "/run", json!({"command": ["true", "--secret-argument"]}), "run", "true"),
        ("PUT", "/previews", json!({"enabled": false}), "previews", "off"),
    ];
    for (method, path, body, _, _) in &changes {
        let body = (!body.is_null()).then(|| body.clone());
        let (status, answer) = api.req(method, &format!("/projects/shop{path}"), Some(&dev.token), body);
        assert!((200..300).contains(&status), "{method} {path}: {status} {answer}");
    }
    let newest = audit(server, &dev.token, &format!("?project=shop&limit={}", changes.len()));
    let mut expected: Vec<String> =
        changes.iter().map(|(_, _, _, action, detail)| format!("{action} {detail}")).collect();
    expected.reverse();
    for (event, want) in newest.iter().zip(&expected) {
        let line = format!("{} {}", text(&event["action"]), text(&event["detail"]));
        let (action, detail) = want.split_once(' ').expect("action and detail");
        assert!(
            line.starts_with(action) && line.contains(detail),
            "{line:?} should be {want:?}: {:#?}",
            lines(&newest)
        );
        assert_eq!((&event["actor"], &event["address"]), (&json!(DEVELOPER), &json!("127.0.0.1")));
    }
    assert_eq!(newest.len(), expected.len(), "{:#?}", lines(&newest));
    assert!(!newest.iter().any(|e| text(&e["detail"]).contains("--secret-argument")), "a run's arguments are not kept");
}

#[test]
fn changes_are_recorded_with_who_and_where_and_read_by_role_on_sqlite() {
    let server = Server::start("");
    journey(&server);
}

#[test]
fn changes_are_recorded_with_who_and_where_and_read_by_role_on_postgres() {
    let url = fresh_postgres_database("paastech_audit");
    let server = Server::start(&format!("[database]\nurl = \"{url}\"\n"));
    journey(&server);
}

#[test]
fn records_past_the_retention_are_dropped() {
    let mut server = Server::start("[audit]\nretention_days = 2\n");
    let ada = server.developer("ada@example.com");
    let before = audit(&server, &ada.token, "");
    assert!(has(&before, "signup", "") && has(&before, "key.add", ""), "{:#?}", lines(&before));
    // Age the signup record past the retention, and another within it.
    let db = server.data_dir().join("paastech.db");
    let day_ms: i64 = 86_400_000;
    let sql = format!(
        "UPDATE audit_events SET at = at - {} WHERE action = 'signup'; UPDATE audit_events SET at = at - {} WHERE action = 'key.add';",
        3 * day_ms,
        day_ms
    );
    server.stop();
    ok(&Command::new("sqlite3").arg(&db).arg(&sql).output().expect("running sqlite3"));
    server.start_again();
    let after = audit(&server, &ada.token, "");
    assert!(!has(&after, "signup", ""), "dropped at start: {:#?}", lines(&after));
    assert!(has(&after, "key.add", ""), "kept within the retention: {:#?}", lines(&after));
}
