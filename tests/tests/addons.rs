//! Issue #14: PostgreSQL add-ons end to end. A real server with `[addons.postgres]` on the
//! PostgreSQL the test command starts, the python-postgres example pushed over real SSH on
//! the process runtime, its data through the ingress, the API and the CLI, checked as the
//! server's superuser with `psql`.

use std::process::Command;
use std::time::Duration;

use paastech_tests::{GitRepo, Server, eventually, example, failed, ok, postgres_admin_url};
use serde_json::{Value, json};

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

fn psql(url: &str, sql: &str) -> Result<String, String> {
    let output = Command::new("psql").args([url, "-X", "-v", "ON_ERROR_STOP=1", "-tAc", sql]).output().expect("psql");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// How many roles and databases of this name the server has, asked as its admin.
fn role_and_database(name: &str) -> (String, String) {
    let admin = postgres_admin_url();
    (
        psql(&admin, &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{name}'")).expect("roles"),
        psql(&admin, &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'")).expect("databases"),
    )
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// A project name unique to this run: add-ons live on a server shared by every test.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").subsec_nanos();
    format!("{prefix}{}x{nanos}", std::process::id())
}

#[test]
fn a_postgres_addon_keeps_an_apps_data_is_private_and_is_backed_up_and_restored() {
    let mut server = Server::start(&format!("[addons.postgres]\nurl = {:?}\n", postgres_admin_url()));
    let api = server.api();
    let ada = server.developer("ada@example.com");
    let notes = unique("notes");
    let (status, body) = api.req("POST", "/projects", Some(&ada.token), Some(json!({"name": notes})));
    assert_eq!(status, 201, "{body}");

    // Bad inputs first: nothing is made.
    let path = format!("/projects/{notes}/addons");
    let (status, body) = api.req("POST", &path, Some(&ada.token), Some(json!({"kind": "mysql"})));
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("\"mysql\"") && message(&body).contains("configured are postgres"), "{body}");

    // Created before the first push (no build yet: no deployment), named after its kind.
    let (status, body) = api.req("POST", &path, Some(&ada.token), Some(json!({"kind": "postgres"})));
    assert_eq!(status, 201, "{body}");
    assert_eq!((body["addon"]["name"].as_str(), body["addon"]["kind"].as_str()), (Some("postgres"), Some("postgres")));
    assert_eq!(body["deployment_version"], Value::Null);
    let (status, body) = api.req("POST", &path, Some(&ada.token), Some(json!({"kind": "postgres"})));
    assert_eq!(status, 409, "a name in use: {body}");
    let (status, list) = api.req("GET", &path, Some(&ada.token), None);
    assert_eq!(status, 200, "{list}");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    let (status, info) = api.req("GET", &format!("{path}/postgres"), Some(&ada.token), None);
    assert_eq!(status, 200, "{info}");
    let database_url = info["config"]["DATABASE_URL"].as_str().expect("DATABASE_URL").to_owned();
    let ident = format!("pt_{notes}_postgres");
    assert!(database_url.ends_with(&format!("/{ident}")), "{database_url}");
    assert_eq!(role_and_database(&ident), ("1".into(), "1".into()));

    // The app, pushed over SSH, writes and reads through DATABASE_URL.
    let repo = GitRepo::from_dir(
        &server.dir.path().join("notes"),
        &example("python-postgres"),
        &ada.key,
        server.ssh_port,
        &notes,
    );
    let (pushed, output) = repo.push("main");
    assert!(pushed, "{output}\n{}", server.log());
    // The table is made by the release step alone (the app never creates it).
    assert!(
        output.contains("Running release command: python3 migrate.py")
            && output.contains("migrated: 1 statement(s) applied"),
        "the migration ran in the push: {output}"
    );
    assert_eq!(server.app_get(&notes, "/add?text=first%20note").0, 200);
    assert_eq!(server.app_get(&notes, "/notes"), (200, "first note\n".into()));

    // Kept across a redeploy (v2), a new push (v3), a rollback to v1 (v4) and a server
    // restart; the migration runs again on each new release and finds its table there.
    let (status, body) = api.req("POST", &format!("/projects/{notes}/deployments"), Some(&ada.token), Some(json!({})));
    assert_eq!(status, 201, "{body}");
    assert_eq!(server.app_get(&notes, "/notes"), (200, "first note\n".into()));
    repo.write("README.md", "notes, v3\n");
    repo.commit_all("v3");
    let (pushed, output) = repo.push("main");
    assert!(pushed && output.contains("migrated: 1 statement(s) applied"), "{output}\n{}", server.log());
    assert_eq!(server.app_get(&notes, "/notes"), (200, "first note\n".into()));
    let (status, body) =
        api.req("POST", &format!("/projects/{notes}/deployments"), Some(&ada.token), Some(json!({"version": 1})));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["version"], 4, "{body}");
    assert_eq!(server.app_get(&notes, "/notes"), (200, "first note\n".into()));
    server.restart();
    assert!(
        eventually(Duration::from_secs(30), || server.app_get(&notes, "/notes") == (200, "first note\n".into())),
        "after a restart: {:?}\n{}",
        server.app_get(&notes, "/notes"),
        server.log()
    );

    // Another project's credentials cannot open this database.
    let other = unique("other");
    let (status, body) = api.req("POST", "/projects", Some(&ada.token), Some(json!({"name": other})));
    assert_eq!(status, 201, "{body}");
    let (status, body) =
        api.req("POST", &format!("/projects/{other}/addons"), Some(&ada.token), Some(json!({"kind": "postgres"})));
    assert_eq!(status, 201, "{body}");
    let (_, other_info) = api.req("GET", &format!("/projects/{other}/addons/postgres"), Some(&ada.token), None);
    let other_url = other_info["config"]["DATABASE_URL"].as_str().expect("DATABASE_URL");
    let (base, _) = other_url.rsplit_once('/').expect("a database part");
    let refused = psql(&format!("{base}/{ident}"), "SELECT text FROM notes").expect_err("refused");
    assert!(refused.contains("permission denied for database"), "{refused}");

    // Another user does not see the add-ons at all.
    let eve = api.user("eve@example.com");
    assert_eq!(api.req("GET", &path, Some(&eve), None).0, 404);
    assert_eq!(api.req("GET", &format!("{path}/postgres/backup"), Some(&eve), None).0, 404);

    // Backup, destroy, create, restore: the rows come back.
    let base_url = format!("{}{path}/postgres", api.base);
    let mut response = agent()
        .get(&format!("{base_url}/backup"))
        .header("Authorization", &format!("Bearer {}", ada.token))
        .call()
        .expect("backup");
    assert_eq!(response.status().as_u16(), 200);
    let dump = response.body_mut().with_config().limit(256 * 1024 * 1024).read_to_vec().expect("backup body");
    assert!(dump.starts_with(b"PGDMP"), "a custom-format dump of {} bytes", dump.len());

    let home = tempfile::tempdir().expect("home");
    ok(&server.cli(
        home.path(),
        &["login", "--email", "ada@example.com", "--password-stdin"],
        Some(paastech_tests::web::PASSWORD),
    ));
    let refused = failed(&server.cli(home.path(), &["addons", "destroy", "postgres", "-p", &notes], None));
    assert!(refused.contains("--yes"), "destroying asks for confirmation: {refused}");
    ok(&server.cli(home.path(), &["addons", "destroy", "postgres", "-p", &notes, "--yes"], None));
    assert_eq!(role_and_database(&ident), ("0".into(), "0".into()), "the role and the database are gone");
    let (status, env) = api.req("GET", &format!("/projects/{notes}/env"), Some(&ada.token), None);
    assert_eq!(status, 200);
    assert!(env.get("DATABASE_URL").is_none(), "unset: {env}");
    assert_eq!(server.app_get(&notes, "/notes").0, 503, "the app runs on, without a database");

    let created = server.cli(home.path(), &["addons", "create", "postgres", "-p", &notes], None);
    assert!(created.status.success(), "{}\n{}", String::from_utf8_lossy(&created.stderr), server.log());
    let listed = String::from_utf8_lossy(&created.stdout).into_owned();
    assert!(listed.contains("postgres"), "{listed}");
    assert!(
        eventually(Duration::from_secs(30), || server.app_get(&notes, "/notes") == (200, String::new())),
        "a new, empty database: {:?}",
        server.app_get(&notes, "/notes")
    );

    // Not a dump: refused, and the data is left as it was.
    let response = agent()
        .post(&format!("{base_url}/restore"))
        .header("Authorization", &format!("Bearer {}", ada.token))
        .send(&b"SELECT 'not a dump';"[..])
        .expect("restore");
    assert_eq!(response.status().as_u16(), 400);

    let dump_file = home.path().join("notes.dump");
    std::fs::write(&dump_file, &dump).expect("write dump");
    let restore = Command::new(paastech_tests::paastech_bin())
        .args(["addons", "restore", "postgres", "-p", &notes])
        .env("HOME", home.path())
        .env("PAASTECH_SERVER", server.api_url())
        .env_remove("PAASTECH_TOKEN")
        .stdin(std::fs::File::open(&dump_file).expect("dump file"))
        .output()
        .expect("paastech addons restore");
    ok(&restore);
    assert_eq!(server.app_get(&notes, "/notes"), (200, "first note\n".into()), "the rows are back");

    // Deleting the project destroys its add-on.
    let (status, body) = api.req("DELETE", &format!("/projects/{notes}"), Some(&ada.token), None);
    assert_eq!(status, 204, "{body}");
    assert_eq!(role_and_database(&ident), ("0".into(), "0".into()));
    let (status, _) = api.req("DELETE", &format!("/projects/{other}"), Some(&ada.token), None);
    assert_eq!(status, 204);
}

#[test]
fn a_postgres_server_that_is_down_is_a_clear_error_and_leaves_nothing() {
    let port = paastech_tests::free_port();
    let server =
        Server::start(&format!("[addons.postgres]\nurl = \"postgres://paastech@127.0.0.1:{port}/postgres\"\n"));
    let api = server.api();
    let token = api.user("ada@example.com");
    let (status, body) = api.req("POST", "/projects", Some(&token), Some(json!({"name": "down"})));
    assert_eq!(status, 201, "{body}");
    let (status, body) = api.req("POST", "/projects/down/addons", Some(&token), Some(json!({"kind": "postgres"})));
    assert_eq!(status, 503, "{body}");
    assert!(message(&body).contains(&format!("127.0.0.1:{port}")), "{body}");
    let (_, list) = api.req("GET", "/projects/down/addons", Some(&token), None);
    assert_eq!(list, json!([]));
    let (_, env) = api.req("GET", "/projects/down/env", Some(&token), None);
    assert_eq!(env, json!({}));
}

#[test]
fn the_addons_tab_lists_creates_and_destroys_with_confirmation() {
    let server = Server::start(&format!("[addons.postgres]\nurl = {:?}\n", postgres_admin_url()));
    let mut web = paastech_tests::web::Web::new(&server.api_url());
    web.sign_up("ada@example.com");
    let csrf = web.get("/projects/new").csrf();
    let project = unique("ui");
    let created = web.post("/projects", &[("name", &project), ("csrf", &csrf)]);
    assert_eq!(created.status, 303, "{}", created.body);

    let page = web.get(&format!("/projects/{project}/addons"));
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("aria-current=\"page\">Add-ons</a>"), "the tab: {}", page.body);
    assert!(page.body.contains("No add-ons yet") && page.body.contains("<option value=\"postgres\""), "{}", page.body);

    let path = format!("/projects/{project}/addons");
    let refused = web.post(&path, &[("kind", "postgres"), ("name", "db")]);
    assert_eq!(refused.status, 403, "the form needs its token");
    let bad = web.post(&path, &[("csrf", &csrf), ("kind", "postgres"), ("name", "Bad_Name")]);
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("id=\"name-error\"") && bad.body.contains("invalid add-on name"), "{}", bad.body);
    let added = web.post(&path, &[("csrf", &csrf), ("kind", "postgres"), ("name", "db")]);
    assert_eq!(added.status, 303, "{}", added.body);
    assert!(
        added.header("location").is_some_and(|l| l.contains("done=addon-created")),
        "{:?}",
        added.header("location")
    );
    let ident = format!("pt_{project}_db");
    assert_eq!(role_and_database(&ident), ("1".into(), "1".into()));
    let page = web.get(&path);
    assert!(page.body.contains("<th scope=\"row\" data-label=\"Name\">db</th>"), "{}", page.body);

    // Destroying asks for the name to be typed.
    let destroy = format!("{path}/destroy");
    let unconfirmed = web.post(&destroy, &[("csrf", &csrf), ("name", "db"), ("confirm", "")]);
    assert_eq!(unconfirmed.status, 422);
    assert!(unconfirmed.body.contains("id=\"destroy-error\""), "{}", unconfirmed.body);
    assert_eq!(role_and_database(&ident), ("1".into(), "1".into()), "kept");
    let destroyed = web.post(&destroy, &[("csrf", &csrf), ("name", "db"), ("confirm", "db")]);
    assert_eq!(destroyed.status, 303, "{}", destroyed.body);
    assert_eq!(role_and_database(&ident), ("0".into(), "0".into()));
    assert!(web.get(&path).body.contains("No add-ons yet"));
}
