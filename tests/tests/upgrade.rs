//! Upgrades keep data: a database written by an earlier release's schema (the committed
//! fixtures of `tests/fixtures/upgrade/`, made by `make.sh` there with the binary of
//! commit 6df45ae, whose newest migration is 2026-12-11) is migrated forward by the
//! current server, and every row the old server wrote reads back: the user logs in with
//! their password, the API token and SSH key are there, the project's config vars decrypt,
//! both deployments are listed. `server --check` names the migrations first and runs none.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use paastech_tests::{Server, fresh_postgres_database, ok, paastech_bin};
use serde_json::json;

/// The newest migration the fixtures' schema has: every later one is pending.
const FIXTURE_SCHEMA: &str = "2026-12-11-000000_webhooks";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join("upgrade")
}

/// The migrations of `backend` newer than the fixtures', by name, in order.
fn newer_migrations(backend: &str) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/store/migrations").join(backend);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("migrations dir")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.as_str() > FIXTURE_SCHEMA)
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no migration newer than the fixture in {}", dir.display());
    names
}

/// The fixture's secrets key where the server looks for it, 0600 as the keyring demands
/// (git keeps no such mode).
fn install_key(server: &Server, fixture: &str) {
    let dir = server.data_dir().join("secrets");
    std::fs::create_dir_all(&dir).expect("secrets dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let key = dir.join("secrets.key");
    std::fs::copy(fixtures().join(fixture), &key).expect("copying the key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

fn check(server: &Server) -> String {
    let output = Command::new(paastech_bin())
        .args(["server", "--check", "--config"])
        .arg(&server.config_path)
        .output()
        .expect("running server --check");
    ok(&output)
}

/// `--check` names every pending migration and runs none (asked twice, same answer); the
/// start migrates; the old rows read back; `--check` then has nothing to run.
fn upgrade_keeps_everything(mut server: Server, backend: &str) {
    let pending = newer_migrations(backend);
    let before = check(&server);
    assert!(before.contains(&format!("a start would run {} migration(s)", pending.len())), "{before}");
    for name in &pending {
        assert!(before.contains(name), "{name} not named:\n{before}");
    }
    assert!(!before.contains(FIXTURE_SCHEMA), "an applied migration named as pending:\n{before}");
    assert_eq!(check(&server), before, "--check changed the database");
    if backend == "sqlite" {
        // Run as root on a stopped server's database, a -shm file of root's would keep
        // the server (its own user) from opening it.
        let made: Vec<String> = std::fs::read_dir(server.data_dir())
            .expect("data dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.starts_with("paastech.db-"))
            .collect();
        assert!(made.is_empty(), "--check made {made:?}");
    }

    server.start_again();
    let api = server.api();
    let token = api.login("ada@example.com", "correct horse battery");
    let (status, me) = api.req("GET", "/me", Some(&token), None);
    assert_eq!((status, me["email"].as_str()), (200, Some("ada@example.com")), "{me}");

    let (status, project) = api.req("GET", "/projects/blog", Some(&token), None);
    assert_eq!(status, 200, "{project}");
    let (status, env) = api.req("GET", "/projects/blog/env", Some(&token), None);
    assert_eq!(status, 200, "{env}");
    assert_eq!(
        env,
        json!({"GREETING": "hello from the old schema", "DATABASE_PASSWORD": "s3cret, with a comma", "RELEASED": "yes"}),
        "config vars sealed by the old server must open"
    );
    let (status, deployments) = api.req("GET", "/projects/blog/deployments", Some(&token), None);
    assert_eq!(status, 200, "{deployments}");
    let versions: Vec<(i64, String)> = deployments
        .as_array()
        .expect("a list")
        .iter()
        .map(|d| (d["version"].as_i64().unwrap_or(0), d["cause"].as_str().unwrap_or_default().to_owned()))
        .collect();
    assert_eq!(versions, [(2, "env: set RELEASED".to_owned()), (1, "push".to_owned())]);
    let (status, keys) = api.req("GET", "/ssh-keys", Some(&token), None);
    assert_eq!(status, 200, "{keys}");
    assert_eq!(keys.as_array().map(Vec::len), Some(1), "{keys}");
    assert_eq!(keys[0]["name"], "laptop", "{keys}");
    let (status, tokens) = api.req("GET", "/tokens", Some(&token), None);
    assert_eq!(status, 200, "{tokens}");
    assert!(tokens.as_array().expect("a list").iter().any(|t| t["name"] == "ci"), "{tokens}");

    // Writes through the new schema work beside the old rows (the old release directory
    // is gone with the old machine, so no deployment is made here).
    let (status, body) = api.req("POST", "/projects", Some(&token), Some(json!({"name": "news"})));
    assert_eq!(status, 201, "{body}");
    let (status, projects) = api.req("GET", "/projects", Some(&token), None);
    assert_eq!(status, 200, "{projects}");
    let mut names: Vec<&str> = projects.as_array().expect("a list").iter().filter_map(|p| p["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["blog", "news"]);
    server.stop();

    let after = check(&server);
    assert!(after.contains("schema up to date, a start would run no migration"), "{after}");
}

#[test]
fn sqlite_database_of_the_previous_schema_is_migrated_and_read_back() {
    let server = Server::configured("");
    std::fs::create_dir_all(server.data_dir()).expect("data dir");
    std::fs::copy(fixtures().join("sqlite.db"), server.data_dir().join("paastech.db")).expect("copying the database");
    install_key(&server, "sqlite-secrets.key");
    upgrade_keeps_everything(server, "sqlite");
}

#[test]
fn postgres_database_of_the_previous_schema_is_migrated_and_read_back() {
    let url = fresh_postgres_database("upgrade");
    let output = Command::new("psql")
        .args([url.as_str(), "-v", "ON_ERROR_STOP=1", "-q", "-f"])
        .arg(fixtures().join("postgres.sql"))
        .output()
        .expect("running psql");
    ok(&output);
    let server = Server::configured(&format!("[database]\nurl = \"{url}\"\n"));
    std::fs::create_dir_all(server.data_dir()).expect("data dir");
    install_key(&server, "postgres-secrets.key");
    upgrade_keeps_everything(server, "postgres");
}

/// A database that does not exist yet: `--check` says a start creates it, runs every
/// migration, and creates nothing itself.
#[test]
fn check_on_a_new_data_dir_creates_nothing() {
    let server = Server::configured("");
    let said = check(&server);
    assert!(said.contains("does not exist yet"), "{said}");
    assert!(said.contains("2025-01-01-000000_init"), "{said}");
    assert!(!server.data_dir().join("paastech.db").exists(), "--check made the database");
}
