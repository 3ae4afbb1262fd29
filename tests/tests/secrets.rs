//! Issue #14, item 4: config vars sealed at rest. A real server is given config vars
//! through the real API and CLI and a real push; then its database, read directly (the
//! SQLite file's bytes, `sqlite3`, `psql`, `pg_dump`), holds none of them in the clear,
//! while their owner still sees them. A wrong, loose or malformed key file stops the start
//! naming the file; `paastech server rotate-key` refuses beside a running server and
//! otherwise reseals everything with a new key.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use paastech_tests::{Developer, GitRepo, Server, eventually, example, failed, ok, paastech_bin, web};
use serde_json::json;

/// Set through the API, before the first push.
const DATABASE_URL: &str = "postgres://app:Zq81xWv-db-password@db.internal/app";
/// Set through the CLI, after it: a config change, so a new deployment's snapshot.
const API_KEY: &str = "sk-live-77HhQpXv-api-key";
const SECRETS: [&str; 2] = [DATABASE_URL, API_KEY];
/// Parts of the values a partial leak would still show.
const FRAGMENTS: [&str; 2] = ["Zq81xWv", "77HhQpXv"];

fn key_file(server: &Server) -> PathBuf {
    server.data_dir().join("secrets/secrets.key")
}

/// Gives project `name` its config vars (API, then a push, then the CLI) and checks that
/// its owner sees them through the API and the CLI.
fn configure(server: &Server, ada: &Developer, home: &Path, name: &str) {
    let api = server.api();
    let (status, body) = api.req("POST", "/projects", Some(&ada.token), Some(json!({"name": name})));
    assert_eq!(status, 201, "{body}");
    let (status, body) = api.req(
        "PATCH",
        &format!("/projects/{name}/env"),
        Some(&ada.token),
        Some(json!({"DATABASE_URL": DATABASE_URL})),
    );
    assert_eq!(status, 200, "{body}");

    let repo = GitRepo::from_dir(&home.join(name), &example("static-hello"), &ada.key, server.ssh_port, name);
    let (pushed, output) = repo.push("main");
    assert!(pushed, "{output}\n{}", server.log());

    ok(&server.cli(
        home,
        &["login", "--email", "ada@example.com", "--password-stdin"],
        Some(&format!("{}\n", web::PASSWORD)),
    ));
    ok(&server.cli(home, &["env", "set", "-p", name, &format!("API_KEY={API_KEY}")], None));
    assert_owner_sees_the_values(server, ada, home, name);
}

fn assert_owner_sees_the_values(server: &Server, ada: &Developer, home: &Path, name: &str) {
    let (status, env) = server.api().req("GET", &format!("/projects/{name}/env"), Some(&ada.token), None);
    assert_eq!(status, 200, "{env}");
    assert_eq!(env, json!({"DATABASE_URL": DATABASE_URL, "API_KEY": API_KEY}));
    let listed = ok(&server.cli(home, &["env", "list", "-p", name], None));
    for value in SECRETS {
        assert!(listed.contains(value), "{listed}");
    }
    let (status, deployments) =
        server.api().req("GET", &format!("/projects/{name}/deployments"), Some(&ada.token), None);
    assert_eq!(status, 200, "{deployments}");
    assert_eq!(deployments[0]["status"], "live", "{deployments}");
}

fn assert_no_value_in(what: &str, text: &str) {
    for fragment in SECRETS.iter().chain(FRAGMENTS.iter()) {
        assert!(!text.contains(fragment), "{what} holds {fragment:?} in the clear:\n{text}");
    }
}

/// Every file of the SQLite database (the main file, its write-ahead log and index), as
/// bytes.
fn sqlite_files(server: &Server) -> Vec<(PathBuf, Vec<u8>)> {
    ["paastech.db", "paastech.db-wal", "paastech.db-shm"]
        .iter()
        .map(|name| server.data_dir().join(name))
        .filter(|path| path.exists())
        .map(|path| {
            let bytes = std::fs::read(&path).expect("reading the database file");
            (path, bytes)
        })
        .collect()
}

fn assert_sqlite_holds_no_value(server: &Server) {
    let files = sqlite_files(server);
    assert!(!files.is_empty(), "no database file in {}", server.data_dir().display());
    for (path, bytes) in &files {
        for fragment in SECRETS.iter().chain(FRAGMENTS.iter()) {
            assert!(
                !bytes.windows(fragment.len()).any(|w| w == fragment.as_bytes()),
                "{} holds {fragment:?} in the clear",
                path.display()
            );
        }
    }
}

fn sqlite(server: &Server, sql: &str) -> String {
    let db = server.data_dir().join("paastech.db");
    let output = Command::new("sqlite3").arg("-readonly").arg(&db).arg(sql).output().expect("running sqlite3");
    ok(&output)
}

fn rotate_key(server: &Server) -> Output {
    Command::new(paastech_bin())
        .args(["server", "rotate-key", "--config"])
        .arg(&server.config_path)
        .env_remove("PAASTECH_CONFIG")
        .output()
        .expect("running paastech server rotate-key")
}

#[test]
fn config_vars_are_sealed_in_the_sqlite_file_and_the_key_file_guards_them() {
    let mut server = Server::start("");
    let ada = server.developer("ada@example.com");
    let home = tempfile::tempdir().expect("home");
    configure(&server, &ada, home.path(), "blog");

    // While the server runs (recent writes sit in the write-ahead log) and after it stops.
    assert_sqlite_holds_no_value(&server);
    let key = key_file(&server);
    let mode = std::fs::metadata(&key).expect("the key file is created at first start").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let dir_mode = std::fs::metadata(key.parent().expect("dir")).expect("key dir").permissions().mode();
    assert_eq!(dir_mode & 0o777, 0o700);

    // rotate-key refuses beside the running server, naming the key file.
    let err = failed(&rotate_key(&server));
    assert!(err.contains("running server") && err.contains(&key.display().to_string()), "{err}");

    server.stop();
    assert_sqlite_holds_no_value(&server);
    // Through sqlite: each var is there, by name, with a key id and no value in the clear.
    let vars =
        sqlite(&server, "SELECT key || ' ' || value || ' ' || ifnull(key_id, 'NULL') FROM env_vars ORDER BY key");
    assert_no_value_in("env_vars", &vars);
    let lines: Vec<&str> = vars.lines().collect();
    assert_eq!(lines.len(), 2, "{vars}");
    assert!(lines[0].starts_with("API_KEY ") && lines[1].starts_with("DATABASE_URL "), "{vars}");
    assert!(lines.iter().all(|line| !line.ends_with(" NULL")), "a key id beside each value: {vars}");
    let snapshots =
        sqlite(&server, "SELECT version || ' ' || config || ' ' || ifnull(config_key_id, 'NULL') FROM deployments");
    assert_no_value_in("deployments", &snapshots);
    assert!(snapshots.contains("DATABASE_URL") && snapshots.contains("API_KEY"), "{snapshots}");
    assert!(snapshots.lines().count() >= 2 && !snapshots.contains(" NULL"), "{snapshots}");
    // Nor did the server log them.
    assert_no_value_in("the server log", &server.log());

    // Another key file: the server refuses to start, naming it.
    let original = std::fs::read(&key).expect("key file");
    write_private(&key, format!("xchacha20poly1305:{}\n", "5a".repeat(32)).as_bytes());
    let log = server.try_start_again().expect_err("a server with another key must not start");
    assert!(log.contains(&key.display().to_string()) && log.contains("does not hold"), "{log}");
    // A key file others may read: refused, naming it.
    write_private(&key, &original);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let log = server.try_start_again().expect_err("a key file others may read must be refused");
    assert!(log.contains(&key.display().to_string()) && log.contains("mode 644"), "{log}");
    // A key file that is not one: refused, naming it.
    write_private(&key, b"not a key\n");
    let log = server.try_start_again().expect_err("a malformed key file must be refused");
    assert!(log.contains(&key.display().to_string()) && log.contains("malformed"), "{log}");

    // The right key file: back up and running, values as they were.
    write_private(&key, &original);
    server.start_again();
    assert_owner_sees_the_values(&server, &ada, home.path(), "blog");
    server.stop();

    // Rotation with the server stopped: a new key, every value sealed again with it.
    let key_ids_before = sqlite(&server, "SELECT DISTINCT key_id FROM env_vars");
    let out = ok(&rotate_key(&server));
    assert!(out.contains("sealed") && out.contains(&key.display().to_string()), "{out}");
    assert_ne!(std::fs::read(&key).expect("new key file"), original, "the key file holds the new key");
    let key_ids_after = sqlite(&server, "SELECT DISTINCT key_id FROM env_vars");
    assert_ne!(key_ids_after, key_ids_before);
    assert_eq!(key_ids_after.lines().count(), 1, "{key_ids_after}");
    assert_sqlite_holds_no_value(&server);
    server.start_again();
    assert_owner_sees_the_values(&server, &ada, home.path(), "blog");
    // The site still serves after all this (once the restore, which runs in the background
    // after the server listens, has started it again).
    assert!(
        eventually(Duration::from_secs(30), || server.app_get("blog", "/").0 == 200),
        "the site serves again after the restart: {:?}\n{}",
        server.app_get("blog", "/"),
        server.log()
    );
}

fn write_private(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("writing the key file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

fn psql(url: &str, sql: &str) -> String {
    ok(&Command::new("psql").args([url, "-v", "ON_ERROR_STOP=1", "-Atc", sql]).output().expect("running psql"))
}

#[test]
fn config_vars_are_sealed_in_postgresql() {
    let url = paastech_tests::fresh_postgres_database("secrets");
    let server = Server::start(&format!("[database]\nurl = {url:?}\n"));
    let ada = server.developer("ada@example.com");
    let home = tempfile::tempdir().expect("home");
    configure(&server, &ada, home.path(), "shop");

    let vars = psql(&url, "SELECT key || ' ' || value || ' ' || coalesce(key_id, 'NULL') FROM env_vars ORDER BY key");
    assert_no_value_in("env_vars", &vars);
    assert_eq!(vars.lines().count(), 2, "{vars}");
    assert!(!vars.contains(" NULL"), "a key id beside each value: {vars}");
    let snapshots = psql(&url, "SELECT config || ' ' || coalesce(config_key_id, 'NULL') FROM deployments");
    assert_no_value_in("deployments", &snapshots);
    assert!(snapshots.contains("API_KEY") && !snapshots.contains(" NULL"), "{snapshots}");
    // The whole database, as a backup of it would hold it.
    let dump = ok(&Command::new("pg_dump").args(["--data-only", &url]).output().expect("running pg_dump"));
    assert!(dump.contains("DATABASE_URL"), "the dump has the vars' names: {dump}");
    assert_no_value_in("pg_dump", &dump);
    assert_no_value_in("the server log", &server.log());
}
