//! The PostgreSQL add-on against the real server the test command starts
//! (`PAASTECH_TEST_POSTGRES_URL`, from `scripts/start-postgres.sh`), checked with `psql`.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use paastech_addon_postgres::{DATABASE_URL, PgUrl, PostgresAddons, PostgresOptions};
use paastech_core::addons::{AddonKind, AddonName};
use paastech_core::registry::{DriverContext, DriverOptions};
use paastech_core::{EnvVars, Error, ProjectName};

fn admin_url() -> String {
    std::env::var("PAASTECH_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "PAASTECH_TEST_POSTGRES_URL is not set: start a test PostgreSQL with \
             `scripts/start-postgres.sh` and export the URL it prints (scripts/test.sh does both)"
        )
    })
}

fn addons_at(url: &str) -> PostgresAddons {
    let options = PostgresOptions { url: url.to_owned(), bin_dir: None };
    PostgresAddons::new(options.config(&DriverContext::default()).expect("valid options"))
}

/// A project name no other test (nor an earlier run) uses.
fn project() -> ProjectName {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").subsec_nanos();
    ProjectName::parse(&format!("p{}-{nanos}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)))
        .expect("valid project name")
}

fn name(s: &str) -> AddonName {
    AddonName::parse(s).expect("valid add-on name")
}

/// `psql URL -c SQL`: its output, or its error message.
fn psql(url: &str, sql: &str) -> Result<String, String> {
    let output =
        Command::new("psql").args([url, "-X", "-v", "ON_ERROR_STOP=1", "-tAc", sql]).output().expect("running psql");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn database_url(vars: &EnvVars) -> &str {
    vars.get(DATABASE_URL).expect("DATABASE_URL is set")
}

/// Whether the server (asked as the admin) has a role and a database of that name.
fn role_and_database(ident: &str) -> (bool, bool) {
    let admin = admin_url();
    let role = psql(&admin, &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{ident}'")).expect("query");
    let db = psql(&admin, &format!("SELECT count(*) FROM pg_database WHERE datname = '{ident}'")).expect("query");
    (role == "1", db == "1")
}

#[tokio::test]
async fn an_addon_is_a_database_only_its_own_role_can_open() {
    let addons = addons_at(&admin_url());
    let (first, second) = (project(), project());
    let a = addons.provision(&first, &name("db")).await.expect("provision a");
    let b = addons.provision(&second, &name("db")).await.expect("provision b");
    let (a_url, b_url) = (database_url(&a), database_url(&b));
    let a_ident = PostgresAddons::identifier(&first, &name("db"));
    assert!(a_url.contains(&format!("/{a_ident}")), "{a_url}");
    let password = PgUrl::parse(a_url).expect("url").password().expect("a password").to_owned();
    assert!(password.len() >= 32 && password.chars().all(|c| c.is_ascii_alphanumeric()), "{password}");
    assert_ne!(Some(password.as_str()), PgUrl::parse(b_url).expect("url").password(), "passwords are random");

    psql(a_url, "CREATE TABLE notes (body text); INSERT INTO notes VALUES ('hello')").expect("the owner writes");
    assert_eq!(psql(a_url, "SELECT body FROM notes").expect("the owner reads"), "hello");

    // The second project's role, pointed at the first one's database.
    let mut intruder = PgUrl::parse(b_url).expect("url");
    intruder.database = a_ident.clone();
    let refused = psql(&intruder.render(&intruder.userinfo), "SELECT body FROM notes")
        .expect_err("another project's role must not connect");
    assert!(refused.contains("permission denied for database"), "{refused}");

    // The role has no powers beyond its database.
    let powers =
        psql(a_url, "SELECT rolsuper OR rolcreaterole OR rolcreatedb FROM pg_roles WHERE rolname = current_user")
            .expect("query");
    assert_eq!(powers, "f");

    addons.deprovision(&first, &name("db")).await.expect("deprovision a");
    addons.deprovision(&second, &name("db")).await.expect("deprovision b");
}

#[tokio::test]
async fn a_second_provision_of_the_same_name_is_a_conflict_and_changes_nothing() {
    let addons = addons_at(&admin_url());
    let project = project();
    let vars = addons.provision(&project, &name("db")).await.expect("provision");
    psql(database_url(&vars), "CREATE TABLE t (x int); INSERT INTO t VALUES (7)").expect("write");
    let err = addons.provision(&project, &name("db")).await.expect_err("the name is taken");
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    assert_eq!(psql(database_url(&vars), "SELECT x FROM t").expect("the first one still works"), "7");
    addons.deprovision(&project, &name("db")).await.expect("deprovision");
}

#[tokio::test]
async fn deprovision_drops_the_database_and_the_role_even_with_a_session_open() {
    let addons = addons_at(&admin_url());
    let project = project();
    let vars = addons.provision(&project, &name("db")).await.expect("provision");
    let ident = PostgresAddons::identifier(&project, &name("db"));
    assert_eq!(role_and_database(&ident), (true, true));

    // An app still connected must not keep the database alive.
    let mut session = Command::new("psql")
        .args([database_url(&vars), "-X", "-c", "SELECT pg_sleep(30)"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("psql");
    std::thread::sleep(std::time::Duration::from_millis(500));

    addons.deprovision(&project, &name("db")).await.expect("deprovision");
    assert_eq!(role_and_database(&ident), (false, false));
    let _ = session.kill();
    let _ = session.wait();
    // Nothing left to remove is not an error: a failed create is undone this way.
    addons.deprovision(&project, &name("db")).await.expect("deprovision again");
}

#[tokio::test]
async fn backup_destroy_create_restore_brings_the_rows_back() {
    let addons = addons_at(&admin_url());
    let project = project();
    let vars = addons.provision(&project, &name("db")).await.expect("provision");
    psql(database_url(&vars), "CREATE TABLE notes (id serial PRIMARY KEY, body text); INSERT INTO notes (body) SELECT 'row ' || n FROM generate_series(1, 500) n")
        .expect("write");

    let mut dump = Vec::new();
    addons.backup(&project, &name("db"), &vars, &mut dump).await.expect("backup");
    assert!(dump.starts_with(b"PGDMP"), "a custom-format dump");

    addons.deprovision(&project, &name("db")).await.expect("destroy");
    let vars = addons.provision(&project, &name("db")).await.expect("create again");
    psql(database_url(&vars), "SELECT 1 FROM notes").expect_err("the new database is empty");

    addons.restore(&project, &name("db"), &vars, &mut dump.as_slice()).await.expect("restore");
    assert_eq!(psql(database_url(&vars), "SELECT count(*) FROM notes").expect("read"), "500");
    assert_eq!(psql(database_url(&vars), "SELECT body FROM notes WHERE id = 42").expect("read"), "row 42");
    // Restored objects belong to the add-on's role, which can write them.
    psql(database_url(&vars), "INSERT INTO notes (body) VALUES ('after')").expect("write after restore");

    // Restoring again over existing tables replaces them (--clean --if-exists).
    addons.restore(&project, &name("db"), &vars, &mut dump.as_slice()).await.expect("restore over");
    assert_eq!(psql(database_url(&vars), "SELECT count(*) FROM notes").expect("read"), "500");

    addons.deprovision(&project, &name("db")).await.expect("deprovision");
}

#[tokio::test]
async fn a_restore_input_that_is_not_a_dump_is_refused_and_changes_nothing() {
    let addons = addons_at(&admin_url());
    let project = project();
    let vars = addons.provision(&project, &name("db")).await.expect("provision");
    psql(database_url(&vars), "CREATE TABLE t (x int); INSERT INTO t VALUES (1)").expect("write");

    for input in [&b"CREATE TABLE evil (x int);"[..], b"", b"PG"] {
        let err = addons.restore(&project, &name("db"), &vars, &mut &input[..]).await.expect_err("not a dump");
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
        assert!(err.to_string().contains("not a PostgreSQL custom-format dump"), "{err}");
    }
    // A dump's magic followed by garbage reaches pg_restore, which refuses it.
    let err = addons
        .restore(&project, &name("db"), &vars, &mut &b"PGDMPgarbage that is no archive"[..])
        .await
        .expect_err("a broken dump");
    assert!(err.to_string().contains("pg_restore"), "{err}");
    assert_eq!(psql(database_url(&vars), "SELECT x FROM t").expect("data unchanged"), "1");
    addons.deprovision(&project, &name("db")).await.expect("deprovision");
}

#[tokio::test]
async fn a_server_that_is_down_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    // The listener is dropped: nothing answers on that port now.
    let addons = addons_at(&format!("postgres://paastech@127.0.0.1:{port}/postgres"));
    let err = addons.provision(&project(), &name("db")).await.expect_err("down");
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
}

#[tokio::test]
async fn a_provision_that_fails_half_way_leaves_no_role_behind() {
    // An operator's role that may create roles but not databases: the role is made, then
    // the database is refused.
    let admin = admin_url();
    let limited = format!("pt_limited_{}", std::process::id());
    psql(&admin, &format!("DROP ROLE IF EXISTS {limited}; CREATE ROLE {limited} LOGIN CREATEROLE NOCREATEDB"))
        .expect("making the limited role");
    let mut url = PgUrl::parse(&admin).expect("url");
    url.userinfo = limited.clone();
    let addons = addons_at(&url.render(&limited));

    let project = project();
    let err = addons.provision(&project, &name("db")).await.expect_err("no CREATEDB");
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("creating the database"), "{err}");
    let ident = PostgresAddons::identifier(&project, &name("db"));
    assert_eq!(role_and_database(&ident), (false, false), "nothing half made");
    psql(&admin, &format!("DROP ROLE {limited}")).expect("cleanup");
}

#[test]
fn options_are_checked() {
    let context = DriverContext::default();
    let bad = PostgresOptions { url: "mysql://root@db/x".into(), bin_dir: None };
    let err = bad.config(&context).expect_err("not postgres");
    assert!(err.to_string().starts_with("url "), "{err}");
    let no_tools = PostgresOptions { url: admin_url(), bin_dir: Some("/nonexistent".into()) };
    let err = no_tools.config(&context).expect_err("no pg_dump there");
    assert!(err.to_string().contains("bin_dir /nonexistent has no pg_dump"), "{err}");
}
