//! One behaviour suite for the store, run against both backends: SQLite in a temp file and a
//! real PostgreSQL (a fresh database per test, so tests run in parallel).
//!
//! PostgreSQL comes from `PAASTECH_TEST_POSTGRES_URL`, an admin URL of a role that may create
//! databases; `scripts/start-postgres.sh` starts a throwaway server and prints one.

use std::collections::BTreeMap;

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl, SqliteConnection};
use paastech_core::addons::AddonName;
use paastech_core::drivers::Limits;
use paastech_core::mail::EmailPurpose;
use paastech_core::store::EnvChanges;
use paastech_core::{
    AuditAction, AuditRecord, AuditScope, DeploymentStatus, Error, Hostname, HttpsPolicy, NewDeployment, PreviewOf,
    ProjectName, Role, SleepState, Stopped, Store, Timestamp, User, WebhookAttempt, WebhookEvent,
};
use paastech_store::{DatabaseKind, Keyring, SqlStore, pending_path, restore_snapshot, rotate_key, snapshot};

/// Where one test's database lives, its secrets key, and the cleanup when the test ends.
struct TestDb {
    url: String,
    keys: tempfile::TempDir,
    _cleanup: Cleanup,
}

enum Cleanup {
    /// Held only so that the directory is removed when the test ends.
    Sqlite {
        _dir: tempfile::TempDir,
    },
    Postgres {
        admin_url: String,
        database: String,
    },
}

/// A connection of the test's own to the SQLite file, which waits for a lock as the store's
/// connections do (a pool that was just dropped may still be closing one that wrote).
fn sqlite_beside(path: &str) -> SqliteConnection {
    let mut conn = SqliteConnection::establish(path).expect("sqlite");
    conn.batch_execute("PRAGMA busy_timeout = 5000").expect("busy timeout");
    conn
}

impl TestDb {
    fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        // A subdirectory that does not exist yet: `open` must create it.
        let url = format!("sqlite://{}", dir.path().join("data/paastech.db").display());
        TestDb { url, keys: keys_dir(), _cleanup: Cleanup::Sqlite { _dir: dir } }
    }

    fn postgres() -> TestDb {
        let admin_url = std::env::var("PAASTECH_TEST_POSTGRES_URL").unwrap_or_else(|_| {
            panic!(
                "PAASTECH_TEST_POSTGRES_URL is not set: the store tests need a real PostgreSQL. \
                 Start a throwaway one with \
                 `export PAASTECH_TEST_POSTGRES_URL=\"$(scripts/start-postgres.sh)\"` \
                 (from the workspace root, as root) and run the tests again"
            )
        });
        let database = format!("paastech_test_{:016x}", rand::random::<u64>());
        let mut admin = PgConnection::establish(&admin_url)
            .unwrap_or_else(|e| panic!("cannot connect to PAASTECH_TEST_POSTGRES_URL: {e}"));
        admin.batch_execute(&format!("CREATE DATABASE {database}")).expect("create test database");
        let url = with_database(&admin_url, &database);
        TestDb { url, keys: keys_dir(), _cleanup: Cleanup::Postgres { admin_url, database } }
    }

    fn key_path(&self) -> std::path::PathBuf {
        self.keys.path().join("secrets/key")
    }

    fn open(&self) -> SqlStore {
        self.try_open().unwrap_or_else(|e| panic!("open {}: {e:?}", self.url))
    }

    /// Opens the store with the key file at `key_path()` (created when missing).
    fn try_open(&self) -> paastech_core::Result<SqlStore> {
        SqlStore::open(&self.url, Keyring::load_or_create(&self.key_path())?)
    }

    /// Runs SQL on a connection of its own, beside the store: as someone with the database
    /// but not the key would.
    fn execute(&self, sql: &str) {
        match self.url.strip_prefix("sqlite://") {
            Some(path) => sqlite_beside(path).batch_execute(sql),
            None => PgConnection::establish(&self.url).expect("postgres").batch_execute(sql),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The one text column (`AS text`) of each row `sql` selects, on a connection of its own.
    fn texts(&self, sql: &str) -> Vec<String> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Text)]
            text: String,
        }
        let query = diesel::sql_query(sql);
        let rows: Vec<Row> = match self.url.strip_prefix("sqlite://") {
            Some(path) => query.load(&mut sqlite_beside(path)),
            None => query.load(&mut PgConnection::establish(&self.url).expect("postgres")),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.into_iter().map(|row| row.text).collect()
    }
}

fn keys_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir for the secrets key")
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Cleanup::Postgres { admin_url, database } = self
            && let Ok(mut admin) = PgConnection::establish(admin_url)
        {
            // FORCE: a pool of a store the test leaked may still hold connections.
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"));
        }
    }
}

/// `postgres://u@h:p/postgres?x` with its database replaced.
fn with_database(url: &str, database: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let (without_query, query) = url.split_at(url.find('?').unwrap_or(url.len()));
    let base_end = without_query[authority_start..].find('/').map_or(without_query.len(), |i| authority_start + i);
    format!("{}/{database}{query}", &url[..base_end])
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::TestDb::sqlite();
                    super::$name(&db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::TestDb::postgres();
                    super::$name(&db).await;
                }
            )*
        }
    };
}

suite!(
    ping_answers,
    first_user_is_admin_second_is_not,
    concurrent_first_users_make_one_admin,
    duplicate_email_is_a_conflict,
    tokens_are_used_expire_and_are_deleted_by_their_owner_only,
    ssh_keys_are_unique_and_deleted_by_their_owner_only,
    projects_are_created_listed_and_unique,
    deleting_a_project_deletes_everything_of_it,
    env_updates_set_and_unset_in_one_go,
    scale_sets_listed_types_only,
    limits_are_set_replaced_and_cleared,
    https_policy_defaults_and_is_replaced,
    stopped_processes_are_replaced_and_go_with_their_project,
    sleep_is_stored_kept_over_a_reopen_and_goes_with_its_project,
    previews_belong_to_their_parent_one_per_branch,
    email_tokens_are_single_use_expire_and_replace_each_other,
    totp_is_sealed_confirmed_refuses_replays_and_recovery_codes_work_once,
    builds_are_created_and_finished,
    a_snapshot_restores_into_an_empty_database_with_builds_moved,
    deployment_versions_increase_per_project,
    deployment_status_follows_the_state_machine,
    concurrent_deployments_get_distinct_versions,
    going_live_supersedes_and_saves_the_env_at_once,
    a_refused_go_live_changes_nothing,
    one_live_deployment_per_project,
    unfinished_deployments_are_interrupted,
    data_survives_reopening_the_store,
    domains_are_unique_listed_deleted_and_go_with_their_project,
    addons_are_unique_per_project_listed_deleted_and_go_with_their_project,
    webhooks_keep_sealed_secrets_and_their_newest_attempts,
    config_values_are_sealed_at_rest_and_read_back,
    a_value_moved_to_another_var_or_project_does_not_open,
    plain_values_are_sealed_at_open_once_and_all_or_nothing,
    a_database_opened_with_another_key_file_is_refused_naming_it,
    rotation_seals_everything_with_a_new_key_and_the_old_one_is_not_needed,
    an_interrupted_rotation_leaves_every_value_readable_and_resumes,
    cron_jobs_stay_with_their_build_and_runs_keep_the_newest_per_job,
    collaborators_have_one_role_per_project_and_go_with_user_and_project,
    a_transfer_moves_the_owner_with_previews_and_keeps_the_old_one_as_owner,
    a_disabled_user_has_no_tokens_and_no_ssh_login,
    a_user_is_deleted_only_without_projects_and_takes_their_rows,
    audit_records_outlive_what_they_name_and_are_read_by_scope,
);

fn host(s: &str) -> Hostname {
    Hostname::parse(s).expect("valid host name")
}

fn name(s: &str) -> ProjectName {
    ProjectName::parse(s).expect("valid project name")
}

async fn new_user(store: &SqlStore, email: &str) -> User {
    store.create_user(email, "$argon2id$fake-hash").await.expect("create user")
}

fn new_deployment(project_id: i64, cause: &str) -> NewDeployment {
    NewDeployment {
        project_id,
        status: DeploymentStatus::Queued,
        build_id: None,
        commit: Some("abc123".into()),
        config: BTreeMap::from([("A".to_owned(), "1".to_owned())]),
        scale: BTreeMap::from([("web".to_owned(), 2)]),
        cause: cause.into(),
    }
}

/// Opens every pooled connection first, so that racing calls start together instead of
/// queueing behind connection setup (which would hide a race).
async fn warm_pool(store: &SqlStore) {
    let pings: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.ping().await })
        })
        .collect();
    for ping in pings {
        ping.await.expect("task").expect("ping");
    }
}

#[track_caller]
fn assert_not_found<T: std::fmt::Debug>(result: Result<T, Error>, mentions: &str) {
    match result {
        Err(Error::NotFound(message)) => assert!(message.contains(mentions), "{message:?} should name {mentions:?}"),
        other => panic!("expected NotFound naming {mentions:?}, got {other:?}"),
    }
}

#[track_caller]
fn assert_conflict<T: std::fmt::Debug>(result: Result<T, Error>, message: &str) {
    match result {
        Err(Error::Conflict(m)) => assert_eq!(m, message),
        other => panic!("expected Conflict {message:?}, got {other:?}"),
    }
}

async fn ping_answers(db: &TestDb) {
    db.open().ping().await.expect("ping");
}

async fn first_user_is_admin_second_is_not(db: &TestDb) {
    let store = db.open();
    let first = new_user(&store, "first@example.com").await;
    let second = store.create_user("second@example.com", "hash-2").await.expect("second user");
    assert!(first.is_admin);
    assert!(!second.is_admin);
    assert_ne!(first.id, second.id);

    assert_eq!(store.user(second.id).await.expect("user"), second);
    let (found, hash) = store.user_by_email("second@example.com").await.expect("by email");
    assert_eq!((found, hash.as_str()), (second.clone(), "hash-2"));
    assert_eq!(store.users().await.expect("users"), vec![first, second]);
    assert_not_found(store.user(424242).await, "user");
    assert_not_found(store.user_by_email("nobody@example.com").await, "user");
}

async fn concurrent_first_users_make_one_admin(db: &TestDb) {
    let store = db.open();
    warm_pool(&store).await;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.create_user(&format!("u{i}@example.com"), "h").await })
        })
        .collect();
    let mut admins = 0;
    for task in tasks {
        if task.await.expect("task").expect("create user").is_admin {
            admins += 1;
        }
    }
    assert_eq!(admins, 1, "exactly one of the racing first users is an admin");
}

async fn duplicate_email_is_a_conflict(db: &TestDb) {
    let store = db.open();
    new_user(&store, "a@example.com").await;
    assert_conflict(store.create_user("a@example.com", "other").await, "email already registered");
    assert_eq!(store.users().await.expect("users").len(), 1);
}

async fn tokens_are_used_expire_and_are_deleted_by_their_owner_only(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let bob = new_user(&store, "bob@example.com").await;

    let token = store.create_token(alice.id, "laptop", "hash-a", None).await.expect("token");
    assert_eq!((token.user_id, token.name.as_str(), token.last_used_at), (alice.id, "laptop", None));

    let before = Timestamp::now();
    let (used, user) = store.use_token("hash-a").await.expect("use token");
    assert_eq!(user, alice);
    assert_eq!(used.id, token.id);
    let last_used = used.last_used_at.expect("use is recorded");
    assert!(last_used >= before);
    let listed = store.tokens(alice.id).await.expect("tokens");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].last_used_at, Some(last_used), "the use is stored");

    assert_conflict(store.create_token(bob.id, "dup", "hash-a", None).await, "this token already exists");
    assert_not_found(store.create_token(424242, "x", "hash-x", None).await, "user");

    // Expired a second ago: refused, and its use is not recorded.
    let expired = Timestamp(Timestamp::now().0 - 1_000);
    store.create_token(alice.id, "old", "hash-old", Some(expired)).await.expect("token");
    assert!(matches!(store.use_token("hash-old").await, Err(Error::Unauthorized(_))));
    let future = Timestamp(Timestamp::now().0 + 3_600_000);
    store.create_token(alice.id, "ci", "hash-ci", Some(future)).await.expect("token");
    store.use_token("hash-ci").await.expect("a token that expires later works");
    assert!(matches!(store.use_token("no-such-hash").await, Err(Error::Unauthorized(_))));

    // Bob cannot delete Alice's token, nor learn that it exists.
    assert_not_found(store.delete_token(bob.id, token.id).await, "token");
    store.use_token("hash-a").await.expect("still there");
    store.delete_token(alice.id, token.id).await.expect("delete own token");
    assert!(matches!(store.use_token("hash-a").await, Err(Error::Unauthorized(_))));
    assert_not_found(store.delete_token(alice.id, token.id).await, "token");
    let names: Vec<_> = store.tokens(alice.id).await.expect("tokens").into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["old", "ci"]);
    assert!(store.tokens(bob.id).await.expect("tokens").is_empty());
}

async fn ssh_keys_are_unique_and_deleted_by_their_owner_only(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let bob = new_user(&store, "bob@example.com").await;
    let key = store.add_ssh_key(alice.id, "laptop", "SHA256:aaa", "ssh-ed25519 AAAA").await.expect("add key");
    assert_eq!((key.user_id, key.fingerprint.as_str()), (alice.id, "SHA256:aaa"));

    assert_conflict(
        store.add_ssh_key(bob.id, "stolen", "SHA256:aaa", "ssh-ed25519 AAAA").await,
        "this SSH key is already registered",
    );
    let (found, owner) = store.user_by_ssh_fingerprint("SHA256:aaa").await.expect("by fingerprint");
    assert_eq!((found, owner), (key.clone(), alice.clone()));
    assert_not_found(store.user_by_ssh_fingerprint("SHA256:zzz").await, "SSH key");
    assert_eq!(store.ssh_keys(alice.id).await.expect("keys"), vec![key.clone()]);
    assert!(store.ssh_keys(bob.id).await.expect("keys").is_empty());

    assert_not_found(store.delete_ssh_key(bob.id, key.id).await, "SSH key");
    assert_eq!(store.ssh_keys(alice.id).await.expect("keys").len(), 1);
    store.delete_ssh_key(alice.id, key.id).await.expect("delete own key");
    assert_not_found(store.user_by_ssh_fingerprint("SHA256:aaa").await, "SSH key");
    // Once removed, the key may be registered again, by anyone.
    store.add_ssh_key(bob.id, "now mine", "SHA256:aaa", "ssh-ed25519 AAAA").await.expect("re-add");
}

async fn projects_are_created_listed_and_unique(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let bob = new_user(&store, "bob@example.com").await;
    let blog = store.create_project(alice.id, &name("blog")).await.expect("create");
    assert_eq!((blog.name.as_str(), blog.owner_id), ("blog", alice.id));
    let api = store.create_project(alice.id, &name("api")).await.expect("create");
    let shop = store.create_project(bob.id, &name("shop")).await.expect("create");

    assert_conflict(store.create_project(bob.id, &name("blog")).await, "project name already taken");
    assert_not_found(store.create_project(424242, &name("orphan")).await, "user");

    assert_eq!(store.project(&name("blog")).await.expect("project"), blog);
    assert_not_found(store.project(&name("nope")).await, "nope");
    assert_eq!(store.projects(Some(alice.id)).await.expect("list"), vec![api.clone(), blog.clone()]);
    assert_eq!(store.projects(Some(bob.id)).await.expect("list"), vec![shop.clone()]);
    assert_eq!(store.projects(None).await.expect("list"), vec![api, blog, shop]);
}

async fn deleting_a_project_deletes_everything_of_it(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let doomed = store.create_project(alice.id, &name("doomed")).await.expect("create");
    let kept = store.create_project(alice.id, &name("kept")).await.expect("create");
    for project in [&doomed, &kept] {
        let changes = EnvChanges::from([("K".to_owned(), Some("v".to_owned()))]);
        store.update_env(project.id, &changes).await.expect("env");
        store.set_scale(project.id, &BTreeMap::from([("web".to_owned(), 2)])).await.expect("scale");
        let build = store.create_build(project.id, "abc").await.expect("build");
        let mut new = new_deployment(project.id, "push");
        new.build_id = Some(build.id);
        let deployment = store.create_deployment(&new).await.expect("deployment");
        for step in
            [DeploymentStatus::Built, DeploymentStatus::Starting, DeploymentStatus::Healthy, DeploymentStatus::Live]
        {
            store.set_deployment_status(deployment.id, step, None).await.expect("step");
        }
    }
    let doomed_build = store.create_build(doomed.id, "def").await.expect("build");
    store.add_domain(doomed.id, &host("doomed.example.com")).await.expect("domain");

    store.delete_project(doomed.id).await.expect("delete");
    assert_not_found(store.project(&name("doomed")).await, "doomed");
    assert!(store.env(doomed.id).await.expect("env").is_empty());
    assert!(store.scale(doomed.id).await.expect("scale").is_empty());
    assert!(store.deployments(doomed.id, 10).await.expect("deployments").is_empty());
    assert_not_found(store.build(doomed_build.id).await, "build");
    assert_not_found(store.domain(&host("doomed.example.com")).await, "doomed.example.com");
    assert_not_found(store.delete_project(doomed.id).await, "project");

    // The other project is untouched.
    assert_eq!(store.env(kept.id).await.expect("env").len(), 1);
    assert_eq!(store.deployments(kept.id, 10).await.expect("deployments").len(), 1);
    let live = store.live_deployments().await.expect("live");
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].0, kept);
    // The name is free again.
    store.create_project(alice.id, &name("doomed")).await.expect("name reusable");
}

async fn env_updates_set_and_unset_in_one_go(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let project = store.create_project(alice.id, &name("app")).await.expect("create");
    assert!(store.env(project.id).await.expect("env").is_empty());

    let set = EnvChanges::from([
        ("A".to_owned(), Some("1".to_owned())),
        ("B".to_owned(), Some("two words = fine".to_owned())),
        ("C".to_owned(), Some("3".to_owned())),
    ]);
    let env = store.update_env(project.id, &set).await.expect("set");
    assert_eq!(env.len(), 3);

    let change = EnvChanges::from([
        ("A".to_owned(), None),
        ("C".to_owned(), Some("three".to_owned())),
        ("D".to_owned(), Some(String::new())),
        ("NEVER_SET".to_owned(), None),
    ]);
    let env = store.update_env(project.id, &change).await.expect("change");
    let expected = BTreeMap::from([
        ("B".to_owned(), "two words = fine".to_owned()),
        ("C".to_owned(), "three".to_owned()),
        ("D".to_owned(), String::new()),
    ]);
    assert_eq!(env, expected);
    assert_eq!(store.env(project.id).await.expect("env"), expected);
    assert_not_found(store.update_env(424242, &change).await, "project");
}

async fn scale_sets_listed_types_only(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let project = store.create_project(alice.id, &name("app")).await.expect("create");
    assert!(store.scale(project.id).await.expect("scale").is_empty());
    let both = BTreeMap::from([("web".to_owned(), 2), ("worker".to_owned(), 1)]);
    store.set_scale(project.id, &both).await.expect("set");
    store.set_scale(project.id, &BTreeMap::from([("web".to_owned(), 0)])).await.expect("set");
    assert_eq!(
        store.scale(project.id).await.expect("scale"),
        BTreeMap::from([("web".to_owned(), 0), ("worker".to_owned(), 1)])
    );
    assert_not_found(store.set_scale(424242, &both).await, "project");
}

async fn limits_are_set_replaced_and_cleared(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let project = store.create_project(alice.id, &name("app")).await.expect("create");
    assert_eq!(store.limits(project.id).await.expect("limits"), Limits::default());
    let set = Limits { memory_bytes: Some(256 * 1024 * 1024), cpus: Some(0.5) };
    store.set_limits(project.id, &set).await.expect("set");
    assert_eq!(store.limits(project.id).await.expect("limits"), set);
    let memory_only = Limits { memory_bytes: Some(64 * 1024 * 1024), cpus: None };
    store.set_limits(project.id, &memory_only).await.expect("replace");
    assert_eq!(store.limits(project.id).await.expect("limits"), memory_only);
    store.set_limits(project.id, &Limits::default()).await.expect("clear");
    assert_eq!(store.limits(project.id).await.expect("limits"), Limits::default());
    assert_not_found(store.set_limits(424242, &set).await, "project");
}

async fn https_policy_defaults_and_is_replaced(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let project = store.create_project(alice.id, &name("app")).await.expect("create");
    let other = store.create_project(alice.id, &name("other")).await.expect("create");
    assert_eq!(store.https_policy(project.id).await.expect("policy"), HttpsPolicy::default());
    let off = HttpsPolicy { redirect: false, hsts_max_age: Some(300) };
    store.set_https_policy(project.id, &off).await.expect("set");
    assert_eq!(store.https_policy(project.id).await.expect("policy"), off);
    assert_eq!(store.https_policy(other.id).await.expect("policy"), HttpsPolicy::default());
    let on = HttpsPolicy { redirect: true, hsts_max_age: None };
    store.set_https_policy(project.id, &on).await.expect("replace");
    assert_eq!(store.https_policy(project.id).await.expect("policy"), on);
    assert_not_found(store.set_https_policy(424242, &off).await, "project");
    store.set_https_policy(project.id, &off).await.expect("set");
    store.delete_project(project.id).await.expect("delete");
    let again = store.create_project(alice.id, &name("app")).await.expect("create again");
    assert_eq!(store.https_policy(again.id).await.expect("policy"), HttpsPolicy::default());
}

async fn stopped_processes_are_replaced_and_go_with_their_project(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let project = store.create_project(alice.id, &name("app")).await.expect("create");
    let other = store.create_project(alice.id, &name("other")).await.expect("create");
    assert!(store.stopped(project.id).await.expect("stopped").is_empty());
    let mut worker = Stopped::default();
    worker.stop(Some("worker"));
    worker.stop(Some("clock"));
    store.set_stopped(project.id, &worker).await.expect("set");
    assert_eq!(store.stopped(project.id).await.expect("stopped"), worker);
    assert!(store.stopped(other.id).await.expect("stopped").is_empty());
    store.set_stopped(project.id, &Stopped::all()).await.expect("replace");
    assert_eq!(store.stopped(project.id).await.expect("stopped"), Stopped::all());
    store.set_stopped(project.id, &Stopped::default()).await.expect("clear");
    assert!(store.stopped(project.id).await.expect("stopped").is_empty());
    assert_not_found(store.set_stopped(424242, &worker).await, "project");
    store.set_stopped(project.id, &Stopped::all()).await.expect("set");
    drop(store);
    // Reopened: a server start reads what was stopped.
    let store = db.open();
    assert_eq!(store.stopped(project.id).await.expect("stopped after reopening"), Stopped::all());
    store.delete_project(project.id).await.expect("delete");
    let again = store.create_project(alice.id, &name("app")).await.expect("create again");
    assert!(store.stopped(again.id).await.expect("stopped").is_empty());
}

async fn sleep_is_stored_kept_over_a_reopen_and_goes_with_its_project(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let project = store.create_project(alice.id, &name("app")).await.expect("create");
    let other = store.create_project(alice.id, &name("other")).await.expect("create");
    assert_eq!(store.sleep(project.id).await.expect("sleep"), SleepState::default(), "off and awake until set");
    let asleep = SleepState {
        enabled: true,
        after_minutes: 7,
        workers_keep_awake: false,
        asleep: true,
        wake_error: Some("web.1 did not answer".into()),
    };
    store.set_sleep(project.id, &asleep).await.expect("set");
    assert_eq!(store.sleep(project.id).await.expect("sleep"), asleep);
    assert_eq!(store.sleep(other.id).await.expect("sleep"), SleepState::default());
    let awake = SleepState { asleep: false, wake_error: None, ..asleep.clone() };
    store.set_sleep(project.id, &awake).await.expect("replace");
    assert_eq!(store.sleep(project.id).await.expect("sleep"), awake);
    assert_not_found(store.set_sleep(424242, &asleep).await, "project");
    store.set_sleep(project.id, &asleep).await.expect("set");
    drop(store);
    // Reopened: a server start reads that it sleeps.
    let store = db.open();
    assert_eq!(store.sleep(project.id).await.expect("sleep after reopening"), asleep);
    store.delete_project(project.id).await.expect("delete");
    let again = store.create_project(alice.id, &name("app")).await.expect("create again");
    assert_eq!(store.sleep(again.id).await.expect("sleep"), SleepState::default());
}

async fn email_tokens_are_single_use_expire_and_replace_each_other(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    assert!(!alice.email_verified, "a new account has not proved its address");
    store.set_email_verified(alice.id, true).await.expect("verify");
    assert!(store.user(alice.id).await.expect("user").email_verified);
    assert_not_found(store.set_email_verified(424242, true).await, "user");

    let later = Timestamp(Timestamp::now().0 + 3_600_000);
    store.create_email_token(alice.id, EmailPurpose::Reset, "hash-1", later).await.expect("token");
    // Another purpose does not take it.
    assert_not_found(store.use_email_token(EmailPurpose::Verify, "hash-1", Timestamp::now()).await, "link");
    // A newer reset token replaces the unused one.
    store.create_email_token(alice.id, EmailPurpose::Reset, "hash-2", later).await.expect("token");
    assert_not_found(store.use_email_token(EmailPurpose::Reset, "hash-1", Timestamp::now()).await, "link");
    let user = store.use_email_token(EmailPurpose::Reset, "hash-2", Timestamp::now()).await.expect("use");
    assert_eq!(user.id, alice.id);
    assert_not_found(store.use_email_token(EmailPurpose::Reset, "hash-2", Timestamp::now()).await, "link");
    // Expired.
    store.create_email_token(alice.id, EmailPurpose::Verify, "hash-3", later).await.expect("token");
    assert_not_found(store.use_email_token(EmailPurpose::Verify, "hash-3", Timestamp(later.0 + 1)).await, "link");
    assert_not_found(store.create_email_token(424242, EmailPurpose::Verify, "hash-4", later).await, "user");

    store.set_password(alice.id, "new-hash").await.expect("password");
    assert_eq!(store.user_by_email("alice@example.com").await.expect("user").1, "new-hash");
    store.create_token(alice.id, "web session", "t1", None).await.expect("token");
    store.create_token(alice.id, "login", "t2", None).await.expect("token");
    store.create_token(alice.id, "ci", "t3", None).await.expect("token");
    assert_eq!(store.delete_tokens_named(alice.id, &["web session", "login"]).await.expect("delete"), 2);
    let left: Vec<_> = store.tokens(alice.id).await.expect("tokens").into_iter().map(|t| t.name).collect();
    assert_eq!(left, ["ci"]);
}

async fn previews_belong_to_their_parent_one_per_branch(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let shop = store.create_project(alice.id, &name("shop")).await.expect("create");
    assert!(!shop.previews_enabled && shop.preview.is_none());
    store.set_previews_enabled(shop.id, true).await.expect("on");
    assert!(store.project(&name("shop")).await.expect("project").previews_enabled);
    assert_not_found(store.set_previews_enabled(424242, true).await, "project");

    let login = store.create_preview(&shop, &name("login--shop"), "feature/login").await.expect("preview");
    assert_eq!((login.owner_id, login.previews_enabled), (alice.id, false));
    assert_eq!(login.preview, Some(PreviewOf { parent_id: shop.id, branch: "feature/login".into() }));
    assert_eq!(store.project_by_id(login.id).await.expect("by id"), login);
    assert_eq!(store.project(&name("login--shop")).await.expect("by name"), login);
    assert_conflict(store.create_preview(&shop, &name("login--shop"), "other").await, "project name already taken");
    assert_conflict(
        store.create_preview(&shop, &name("login2--shop"), "feature/login").await,
        "project name already taken",
    );
    let gone = paastech_core::Project { id: 424242, ..shop.clone() };
    assert_not_found(store.create_preview(&gone, &name("x--gone"), "x").await, "project");
    let fix = store.create_preview(&shop, &name("fix--shop"), "fix").await.expect("preview");
    let names: Vec<_> = store.previews(shop.id).await.expect("previews").into_iter().map(|p| p.name).collect();
    assert_eq!(names, [name("fix--shop"), name("login--shop")]);
    assert!(store.previews(login.id).await.expect("previews of a preview").is_empty());

    // A preview is a project: deleting it leaves its parent and siblings.
    store.delete_project(login.id).await.expect("delete preview");
    assert_eq!(store.previews(shop.id).await.expect("previews").len(), 1);
    assert_not_found(store.project_by_id(login.id).await, "project");
    drop(store);
    let store = db.open();
    assert_eq!(store.project(&name("fix--shop")).await.expect("reopened").preview, fix.preview);
}

/// `paastech server backup|restore`'s database half, on either backend: a copy taken
/// while the store is open, restored into another empty database, where it opens with the
/// same key and names the builds under the new data directory.
async fn a_snapshot_restores_into_an_empty_database_with_builds_moved(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let project = store.create_project(alice.id, &name("app")).await.expect("create");
    let build = store.create_build(project.id, "0123abc").await.expect("build");
    let processes = BTreeMap::from([("web".to_owned(), "serve /srv/old/releases/app/v1".to_owned())]);
    let artifact = "/srv/old/releases/app/v1";
    store
        .finish_build(build.id, paastech_core::BuildStatus::Succeeded, Some(artifact), &processes, "")
        .await
        .expect("finish");
    let changes: EnvChanges = BTreeMap::from([("SECRET".to_owned(), Some("s3cret".to_owned()))]);
    store.update_env(project.id, &changes).await.expect("env");

    let copies = tempfile::tempdir().expect("dir");
    let copy = copies.path().join("database");
    let kind = snapshot(&db.url, &copy).expect("snapshot while open");
    assert_eq!(kind, if db.url.starts_with("sqlite://") { DatabaseKind::Sqlite } else { DatabaseKind::Postgres });

    let other = if kind == DatabaseKind::Sqlite { TestDb::sqlite() } else { TestDb::postgres() };
    restore_snapshot(&other.url, kind, &copy, ("/srv/old", "/srv/new")).expect("restore");
    std::fs::create_dir_all(other.key_path().parent().expect("key dir")).expect("key dir");
    std::fs::copy(db.key_path(), other.key_path()).expect("the backup's key");
    let restored = other.open();
    let moved = restored.build(build.id).await.expect("build");
    assert_eq!(moved.artifact.as_deref(), Some("/srv/new/releases/app/v1"));
    assert_eq!(moved.processes["web"], "serve /srv/new/releases/app/v1");
    assert_eq!(restored.env(project.id).await.expect("env")["SECRET"], "s3cret", "sealed values open with the key");

    let again =
        restore_snapshot(&other.url, kind, &copy, ("/srv/old", "/srv/new")).expect_err("only into an empty one");
    assert!(matches!(again, Error::Conflict(_)), "{again}");
}

async fn builds_are_created_and_finished(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let project = store.create_project(alice.id, &name("app")).await.expect("create");
    let build = store.create_build(project.id, "0123abc").await.expect("build");
    assert_eq!(build.status, paastech_core::BuildStatus::Building);
    assert_eq!((build.commit.as_str(), build.artifact.as_deref(), build.finished_at), ("0123abc", None, None));

    let processes = BTreeMap::from([("web".to_owned(), "python app.py".to_owned())]);
    let done = store
        .finish_build(build.id, paastech_core::BuildStatus::Succeeded, Some("/builds/1"), &processes, "step 1\nok\n")
        .await
        .expect("finish");
    assert_eq!(done.status, paastech_core::BuildStatus::Succeeded);
    assert_eq!(done.artifact.as_deref(), Some("/builds/1"));
    assert_eq!(done.processes, processes);
    assert_eq!(done.log, "step 1\nok\n");
    assert!(done.finished_at.is_some());
    assert_eq!(store.build(build.id).await.expect("build"), done);

    store.clear_build_artifact(build.id).await.expect("clear the artifact");
    let cleared = store.build(build.id).await.expect("build");
    assert_eq!((cleared.artifact, cleared.status, cleared.log), (None, done.status, done.log));
    assert_not_found(store.clear_build_artifact(424242).await, "build");

    assert_not_found(store.build(424242).await, "build");
    assert_not_found(store.create_build(424242, "x").await, "project");
    let none = BTreeMap::new();
    assert_not_found(store.finish_build(424242, paastech_core::BuildStatus::Failed, None, &none, "").await, "build");
}

async fn cron_jobs_stay_with_their_build_and_runs_keep_the_newest_per_job(db: &TestDb) {
    use paastech_core::{CronJob, CronOutcome, CronRun, Timestamp};
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let project = store.create_project(alice.id, &name("app")).await.expect("create");
    let first = store.create_build(project.id, "aaa").await.expect("build");
    let second = store.create_build(project.id, "bbb").await.expect("build");
    let jobs = vec![
        CronJob { command: "echo one".into(), schedule: "* * * * *".into(), timezone: None },
        CronJob { command: "./two".into(), schedule: "0 3 * * *".into(), timezone: Some("Europe/Paris".into()) },
    ];
    store.set_build_cron(first.id, &jobs).await.expect("set jobs");
    assert_eq!(store.build_cron(first.id).await.expect("jobs"), jobs);
    // A build without app.json jobs has none; setting again replaces.
    assert_eq!(store.build_cron(second.id).await.expect("jobs"), vec![]);
    store.set_build_cron(first.id, &jobs[1..]).await.expect("replace jobs");
    assert_eq!(store.build_cron(first.id).await.expect("jobs"), jobs[1..].to_vec());
    assert_not_found(store.set_build_cron(424242, &jobs).await, "build");

    let run = |job: u32, minute: i64, outcome: CronOutcome| CronRun {
        project_id: project.id,
        job,
        command: "echo one".into(),
        schedule: "* * * * *".into(),
        version: 3,
        scheduled_at: Timestamp(minute * 60_000),
        started_at: (outcome != CronOutcome::Skipped).then_some(Timestamp(minute * 60_000 + 5)),
        finished_at: (outcome != CronOutcome::Skipped).then_some(Timestamp(minute * 60_000 + 900)),
        outcome,
        exit_code: match outcome {
            CronOutcome::Succeeded => Some(0),
            CronOutcome::Failed => Some(4),
            CronOutcome::Skipped => None,
        },
        error: (outcome == CronOutcome::Skipped).then(|| "the previous run was still going".to_owned()),
    };
    let kept = paastech_core::cron::KEPT_RUNS;
    for minute in 0..kept + 5 {
        let outcome = [CronOutcome::Succeeded, CronOutcome::Failed, CronOutcome::Skipped][(minute % 3) as usize];
        store.record_cron_run(&run(0, minute, outcome)).await.expect("record");
    }
    store.record_cron_run(&run(1, 0, CronOutcome::Succeeded)).await.expect("record another job");
    let runs = store.cron_runs(project.id).await.expect("runs");
    // Job 0 keeps its newest KEPT_RUNS, job 1 its one: newest first.
    assert_eq!(runs.len() as i64, kept + 1);
    assert_eq!(runs[0], run(1, 0, CronOutcome::Succeeded));
    let job0: Vec<i64> = runs.iter().filter(|r| r.job == 0).map(|r| r.scheduled_at.0 / 60_000).collect();
    assert_eq!(job0, (5..kept + 5).rev().collect::<Vec<_>>());
    let failed = runs.iter().find(|r| r.outcome == CronOutcome::Failed).expect("a failed run");
    assert_eq!(failed.exit_code, Some(4));
    let skipped = runs.iter().find(|r| r.outcome == CronOutcome::Skipped).expect("a skipped time");
    assert_eq!((skipped.started_at, skipped.exit_code), (None, None));

    // A deleted project's jobs and runs go with it; a late run of it is not an error.
    store.delete_project(project.id).await.expect("delete");
    assert_eq!(store.build_cron(first.id).await.expect("jobs"), vec![]);
    assert_eq!(store.cron_runs(project.id).await.expect("runs"), vec![]);
    store.record_cron_run(&run(0, 99, CronOutcome::Succeeded)).await.expect("late run");
    assert_eq!(store.cron_runs(project.id).await.expect("runs"), vec![]);
}

async fn deployment_versions_increase_per_project(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let one = store.create_project(alice.id, &name("one")).await.expect("create");
    let two = store.create_project(alice.id, &name("two")).await.expect("create");

    let mut versions = Vec::new();
    for cause in ["push", "env", "rollback to v1"] {
        versions.push(store.create_deployment(&new_deployment(one.id, cause)).await.expect("deploy").version);
    }
    assert_eq!(versions, [1, 2, 3]);
    let other = store.create_deployment(&new_deployment(two.id, "push")).await.expect("deploy");
    assert_eq!(other.version, 1, "versions count per project");

    let v2 = store.deployment(one.id, 2).await.expect("v2");
    let expected = new_deployment(one.id, "env");
    assert_eq!(
        (v2.status, v2.build_id, v2.commit, v2.config, v2.scale, v2.cause.as_str(), v2.failure),
        (expected.status, None, expected.commit, expected.config, expected.scale, "env", None)
    );
    let newest_first: Vec<_> =
        store.deployments(one.id, 10).await.expect("list").into_iter().map(|d| d.version).collect();
    assert_eq!(newest_first, [3, 2, 1]);
    let limited: Vec<_> = store.deployments(one.id, 2).await.expect("list").into_iter().map(|d| d.version).collect();
    assert_eq!(limited, [3, 2]);
    assert_not_found(store.deployment(one.id, 9).await, "v9");
    assert_not_found(store.create_deployment(&new_deployment(424242, "push")).await, "project");
    let mut dangling = new_deployment(one.id, "push");
    dangling.build_id = Some(424242);
    assert_not_found(store.create_deployment(&dangling).await, "build");
}

async fn deployment_status_follows_the_state_machine(db: &TestDb) {
    use DeploymentStatus::*;
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let project = store.create_project(alice.id, &name("app")).await.expect("create");
    let first = store.create_deployment(&new_deployment(project.id, "push")).await.expect("deploy");
    assert_eq!(first.status, Queued);

    match store.set_deployment_status(first.id, Live, None).await {
        Err(Error::Conflict(message)) => assert!(message.contains("queued") && message.contains("live"), "{message}"),
        other => panic!("queued -> live must be refused, got {other:?}"),
    }
    assert_eq!(store.deployment(project.id, 1).await.expect("v1").status, Queued, "a refused step changes nothing");
    assert!(store.live_deployments().await.expect("live").is_empty());

    let mut last = first.clone();
    for step in [Building, Built, Starting, Healthy, Live] {
        last = store.set_deployment_status(first.id, step, None).await.expect("legal step");
        assert_eq!(last.status, step);
    }
    assert!(last.updated_at >= first.updated_at);
    let live = store.live_deployments().await.expect("live");
    assert_eq!(live, vec![(project.clone(), last.clone())]);
    assert!(store.set_deployment_status(first.id, Failed, Some("late")).await.is_err(), "live cannot fail");

    let second = store.create_deployment(&new_deployment(project.id, "push")).await.expect("deploy");
    let failed = store.set_deployment_status(second.id, Failed, Some("health check timed out")).await.expect("fail");
    assert_eq!((failed.status, failed.failure.as_deref()), (Failed, Some("health check timed out")));
    assert!(matches!(store.set_deployment_status(second.id, Building, None).await, Err(Error::Conflict(_))));

    store.set_deployment_status(first.id, Superseded, None).await.expect("superseded");
    assert!(store.live_deployments().await.expect("live").is_empty());
    assert_not_found(store.set_deployment_status(424242, Building, None).await, "deployment");
}

/// A deployment of `project_id` walked up to `Healthy`.
async fn healthy_deployment(store: &SqlStore, project_id: i64) -> paastech_core::Deployment {
    use DeploymentStatus::*;
    let deployment = store.create_deployment(&new_deployment(project_id, "push")).await.expect("deploy");
    for step in [Building, Built, Starting, Healthy] {
        store.set_deployment_status(deployment.id, step, None).await.expect("legal step");
    }
    store.deployment(project_id, deployment.version).await.expect("read back")
}

async fn going_live_supersedes_and_saves_the_env_at_once(db: &TestDb) {
    use DeploymentStatus::*;
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let project = store.create_project(alice.id, &name("app")).await.expect("create");
    let other = store.create_project(alice.id, &name("other")).await.expect("create");
    assert_eq!(store.live_deployment(project.id).await.expect("live"), None);
    store.update_env(project.id, &EnvChanges::from([("OLD".into(), Some("1".into()))])).await.expect("env");

    let v1 = healthy_deployment(&store, project.id).await;
    let live = store.make_live(v1.id, &EnvChanges::new()).await.expect("v1 live");
    assert_eq!(live.status, Live);
    let theirs = healthy_deployment(&store, other.id).await;
    store.make_live(theirs.id, &EnvChanges::new()).await.expect("other project's live");

    let v2 = healthy_deployment(&store, project.id).await;
    let changes = EnvChanges::from([("OLD".into(), None), ("NEW".into(), Some("2".into()))]);
    store.make_live(v2.id, &changes).await.expect("v2 live");
    assert_eq!(store.live_deployment(project.id).await.expect("live").map(|d| d.version), Some(2));
    assert_eq!(store.deployment(project.id, 1).await.expect("v1").status, Superseded);
    assert_eq!(store.env(project.id).await.expect("env"), BTreeMap::from([("NEW".into(), "2".into())]));
    // Another project's live deployment is not touched.
    assert_eq!(store.live_deployment(other.id).await.expect("live").map(|d| d.id), Some(theirs.id));
}

async fn a_refused_go_live_changes_nothing(db: &TestDb) {
    use DeploymentStatus::*;
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let project = store.create_project(alice.id, &name("app")).await.expect("create");
    let v1 = healthy_deployment(&store, project.id).await;
    store.make_live(v1.id, &EnvChanges::new()).await.expect("v1 live");
    // v2 never passed its health check: it cannot go live, and its env change is not saved.
    let v2 = store.create_deployment(&new_deployment(project.id, "env")).await.expect("deploy");
    store.set_deployment_status(v2.id, Built, None).await.expect("built");
    let changes = EnvChanges::from([("SECRET".into(), Some("x".into()))]);
    assert!(matches!(store.make_live(v2.id, &changes).await, Err(Error::Conflict(_))));
    assert_eq!(store.live_deployment(project.id).await.expect("live").map(|d| d.id), Some(v1.id));
    assert!(store.env(project.id).await.expect("env").is_empty());
    assert_not_found(store.make_live(424242, &changes).await, "deployment");
}

async fn one_live_deployment_per_project(db: &TestDb) {
    use DeploymentStatus::*;
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let project = store.create_project(alice.id, &name("app")).await.expect("create");
    let v1 = healthy_deployment(&store, project.id).await;
    store.make_live(v1.id, &EnvChanges::new()).await.expect("v1 live");
    // The plain status step cannot make a second live deployment beside the first.
    let v2 = healthy_deployment(&store, project.id).await;
    assert!(store.set_deployment_status(v2.id, Live, None).await.is_err(), "a second live deployment");
    assert_eq!(store.deployment(project.id, 2).await.expect("v2").status, Healthy);
    // After 60 failed deployments the live one is still found.
    for _ in 0..60 {
        let failed = store.create_deployment(&new_deployment(project.id, "push")).await.expect("deploy");
        store.set_deployment_status(failed.id, Failed, Some("build failed")).await.expect("fail");
    }
    assert_eq!(store.live_deployment(project.id).await.expect("live").map(|d| d.version), Some(1));
}

async fn unfinished_deployments_are_interrupted(db: &TestDb) {
    use DeploymentStatus::*;
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let project = store.create_project(alice.id, &name("app")).await.expect("create");
    let live = healthy_deployment(&store, project.id).await;
    store.make_live(live.id, &EnvChanges::new()).await.expect("live");
    let build = store.create_build(project.id, "abc123").await.expect("build");
    let building = store
        .create_deployment(&NewDeployment { build_id: Some(build.id), ..new_deployment(project.id, "push") })
        .await
        .expect("deploy");
    store.set_deployment_status(building.id, Building, None).await.expect("building");
    let starting = store.create_deployment(&new_deployment(project.id, "env")).await.expect("deploy");
    for step in [Built, Starting] {
        store.set_deployment_status(starting.id, step, None).await.expect("step");
    }
    let queued = store.create_deployment(&new_deployment(project.id, "redeploy")).await.expect("deploy");
    let failed = store.create_deployment(&new_deployment(project.id, "push")).await.expect("deploy");
    store.set_deployment_status(failed.id, Failed, Some("build failed")).await.expect("fail");

    let mut interrupted: Vec<i64> = store
        .interrupt_unfinished("interrupted by a server restart")
        .await
        .expect("interrupt")
        .iter()
        .map(|d| d.id)
        .collect();
    interrupted.sort_unstable();
    assert_eq!(interrupted, vec![building.id, starting.id, queued.id]);
    for version in [building.version, starting.version, queued.version] {
        let d = store.deployment(project.id, version).await.expect("read");
        assert_eq!((d.status, d.failure.as_deref()), (Failed, Some("interrupted by a server restart")));
    }
    assert_eq!(
        store.deployment(project.id, failed.version).await.expect("read").failure.as_deref(),
        Some("build failed")
    );
    assert_eq!(store.live_deployment(project.id).await.expect("live").map(|d| d.id), Some(live.id));
    assert_eq!(store.build(build.id).await.expect("build").status, paastech_core::BuildStatus::Failed);
    assert!(store.interrupt_unfinished("again").await.expect("interrupt").is_empty(), "nothing left to interrupt");
}

async fn concurrent_deployments_get_distinct_versions(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let project = store.create_project(alice.id, &name("busy")).await.expect("create");
    warm_pool(&store).await;
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(
                async move { store.create_deployment(&new_deployment(project.id, &format!("push {i}"))).await },
            )
        })
        .collect();
    let mut versions = Vec::new();
    for task in tasks {
        versions.push(task.await.expect("task").expect("create deployment").version);
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=12).collect::<Vec<i64>>());
}

async fn data_survives_reopening_the_store(db: &TestDb) {
    let (user, project) = {
        let store = db.open();
        let user = new_user(&store, "alice@example.com").await;
        let project = store.create_project(user.id, &name("durable")).await.expect("create");
        store.create_deployment(&new_deployment(project.id, "push")).await.expect("deploy");
        (user, project)
    };
    let store = db.open();
    assert_eq!(store.user(user.id).await.expect("user"), user);
    assert_eq!(store.project(&name("durable")).await.expect("project"), project);
    let next = store.create_deployment(&new_deployment(project.id, "redeploy")).await.expect("deploy");
    assert_eq!(next.version, 2, "version numbering continues after a reopen");
    // Reopening runs the migrations again: already applied, nothing to do, no error.
    assert!(!store.create_user("bob@example.com", "h").await.expect("user").is_admin);
}

fn test_keyring() -> (tempfile::TempDir, Keyring) {
    let dir = keys_dir();
    let keyring = Keyring::load_or_create(&dir.path().join("key")).expect("keyring");
    (dir, keyring)
}

#[test]
fn open_refuses_unknown_urls() {
    for url in ["mysql://root@localhost/db", "paastech.db", "sqlite://"] {
        let (_dir, keyring) = test_keyring();
        match SqlStore::open(url, keyring) {
            Err(Error::Invalid(message)) => assert!(message.contains("postgres://"), "{message}"),
            other => panic!("{url:?} should be refused as invalid, got {other:?}"),
        }
    }
}

#[test]
fn open_reports_an_unreachable_postgres() {
    // Port 1 on loopback: nothing listens there.
    let (_dir, keyring) = test_keyring();
    match SqlStore::open("postgres://nobody:secret@127.0.0.1:1/db", keyring) {
        Err(Error::Unavailable(message)) => assert!(!message.contains("secret"), "{message}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[test]
fn database_urls_are_rewritten_for_test_databases() {
    assert_eq!(with_database("postgres://u@h:5/postgres", "t1"), "postgres://u@h:5/t1");
    assert_eq!(with_database("postgres://u@h:5", "t1"), "postgres://u@h:5/t1");
    assert_eq!(with_database("postgres://u@h/postgres?sslmode=disable", "t1"), "postgres://u@h/t1?sslmode=disable");
}

async fn domains_are_unique_listed_deleted_and_go_with_their_project(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let blog = store.create_project(alice.id, &name("blog")).await.expect("create");
    let shop = store.create_project(alice.id, &name("shop")).await.expect("create");
    let www = store.add_domain(blog.id, &host("www.example.com")).await.expect("add");
    assert_eq!((www.project_id, www.name.as_str()), (blog.id, "www.example.com"));
    assert!(www.created_at.0 > 0);
    let apex = store.add_domain(blog.id, &host("example.com")).await.expect("add");

    assert_conflict(
        store.add_domain(shop.id, &host("www.example.com")).await,
        "this domain is taken by another project",
    );
    assert_conflict(
        store.add_domain(blog.id, &host("www.example.com")).await,
        "this domain is taken by another project",
    );
    assert_not_found(store.add_domain(424242, &host("orphan.example.com")).await, "project");

    assert_eq!(store.domains(blog.id).await.expect("list"), vec![apex.clone(), www.clone()], "by name");
    assert!(store.domains(shop.id).await.expect("list").is_empty());
    assert_eq!(store.domain(&host("www.example.com")).await.expect("domain"), www);
    assert_not_found(store.domain(&host("nope.example.com")).await, "nope.example.com");

    // Only the project that has it can delete it.
    assert_not_found(store.delete_domain(shop.id, &host("www.example.com")).await, "www.example.com");
    store.delete_domain(blog.id, &host("www.example.com")).await.expect("delete");
    assert_not_found(store.delete_domain(blog.id, &host("www.example.com")).await, "www.example.com");
    assert_eq!(store.domains(blog.id).await.expect("list"), vec![apex]);
    // Free again, for any project.
    store.add_domain(shop.id, &host("www.example.com")).await.expect("taken by another");
}

fn addon(s: &str) -> AddonName {
    AddonName::parse(s).expect("valid add-on name")
}

async fn addons_are_unique_per_project_listed_deleted_and_go_with_their_project(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let blog = store.create_project(alice.id, &name("blog")).await.expect("create");
    let shop = store.create_project(alice.id, &name("shop")).await.expect("create");
    let main = store.add_addon(blog.id, &addon("postgres"), "postgres").await.expect("add");
    assert_eq!((main.project_id, main.name.as_str(), main.kind.as_str()), (blog.id, "postgres", "postgres"));
    assert!(main.created_at.0 > 0);
    let cache = store.add_addon(blog.id, &addon("analytics"), "postgres").await.expect("add");
    // Names are per project: another project may use the same one.
    let other = store.add_addon(shop.id, &addon("postgres"), "postgres").await.expect("same name elsewhere");

    assert_conflict(
        store.add_addon(blog.id, &addon("postgres"), "postgres").await,
        "the project already has an add-on named postgres",
    );
    assert_not_found(store.add_addon(424242, &addon("orphan"), "postgres").await, "project");

    assert_eq!(store.addons(blog.id).await.expect("list"), vec![cache.clone(), main.clone()], "by name");
    assert_eq!(store.addon(blog.id, &addon("postgres")).await.expect("one"), main);
    assert_not_found(store.addon(blog.id, &addon("nope")).await, "nope");

    store.delete_addon(blog.id, &addon("postgres")).await.expect("delete");
    assert_not_found(store.delete_addon(blog.id, &addon("postgres")).await, "postgres");
    assert_eq!(store.addons(blog.id).await.expect("list"), vec![cache]);
    assert_eq!(store.addons(shop.id).await.expect("list"), vec![other]);

    store.delete_project(blog.id).await.expect("delete project");
    assert!(store.addons(blog.id).await.expect("list").is_empty(), "the add-ons go with their project");
}

fn attempt(webhook_id: i64, n: u32) -> WebhookAttempt {
    WebhookAttempt {
        webhook_id,
        delivery: format!("d-{n}"),
        event: WebhookEvent::DeploySucceeded,
        attempt: n,
        at: Timestamp(1_000 + i64::from(n)),
        status_code: n.is_multiple_of(2).then_some(500),
        error: (!n.is_multiple_of(2)).then(|| "connection refused".to_owned()),
        duration_ms: u64::from(n),
    }
}

async fn webhooks_keep_sealed_secrets_and_their_newest_attempts(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let blog = store.create_project(alice.id, &name("blog")).await.expect("create");
    let shop = store.create_project(alice.id, &name("shop")).await.expect("create");
    let all = store.add_webhook(blog.id, "http://127.0.0.1:9/a", &WebhookEvent::ALL, "whsec-one").await.expect("add");
    assert_eq!((all.project_id, all.url.as_str()), (blog.id, "http://127.0.0.1:9/a"));
    assert_eq!(all.events, WebhookEvent::ALL.to_vec());
    let failed = store
        .add_webhook(blog.id, "https://example.com/b", &[WebhookEvent::DeployFailed], "whsec-two")
        .await
        .expect("add");
    assert_not_found(store.add_webhook(424242, "http://x/", &WebhookEvent::ALL, "s").await, "project");

    assert_eq!(store.webhooks(blog.id).await.expect("list"), vec![all.clone(), failed.clone()]);
    assert_eq!(
        store.webhooks_with_secrets(blog.id).await.expect("secrets"),
        vec![(all.clone(), "whsec-one".to_owned()), (failed.clone(), "whsec-two".to_owned())]
    );
    // The secret is sealed at rest: the database does not hold it.
    let stored = db.texts("SELECT secret AS text FROM webhooks");
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().all(|s| !s.contains("whsec")), "{stored:?}");
    assert!(store.webhooks(shop.id).await.expect("list").is_empty());

    // Only the newest attempts are kept, newest first.
    let kept = paastech_core::webhooks::KEPT_ATTEMPTS as u32;
    for n in 1..=kept + 3 {
        store.record_webhook_attempt(&attempt(all.id, n)).await.expect("record");
    }
    let attempts = store.webhook_attempts(blog.id, all.id).await.expect("attempts");
    assert_eq!(attempts.len(), kept as usize);
    assert_eq!(attempts[0], attempt(all.id, kept + 3));
    assert_eq!(attempts.last().expect("oldest").attempt, 4);
    assert!(store.webhook_attempts(blog.id, failed.id).await.expect("none yet").is_empty());
    // Another project's webhook is not found through this one.
    assert_not_found(store.webhook_attempts(shop.id, all.id).await, "webhook");
    assert_not_found(store.delete_webhook(shop.id, all.id).await, "webhook");

    store.delete_webhook(blog.id, all.id).await.expect("delete");
    assert_not_found(store.delete_webhook(blog.id, all.id).await, "webhook");
    // An attempt finishing after its webhook was removed is dropped, not an error.
    store.record_webhook_attempt(&attempt(all.id, 1)).await.expect("dropped");
    assert_eq!(store.webhooks(blog.id).await.expect("list"), vec![failed]);
    assert_eq!(db.texts("SELECT delivery AS text FROM webhook_attempts"), Vec::<String>::new());

    store.delete_project(blog.id).await.expect("delete project");
    assert!(db.texts("SELECT url AS text FROM webhooks").is_empty(), "the webhooks go with their project");
}

const SECRET: &str = "s3cr3t-Value-of-the-db-password";

/// Everything stored of config vars, as the database holds it (value, key id), and each
/// deployment's config snapshot with its key id.
fn stored_config(db: &TestDb) -> Vec<String> {
    let mut rows = db.texts(
        "SELECT project_id || ' ' || key || '=' || value || ' key ' || COALESCE(key_id, 'NULL') AS text FROM env_vars",
    );
    rows.extend(
        db.texts("SELECT id || ' ' || config || ' key ' || COALESCE(config_key_id, 'NULL') AS text FROM deployments"),
    );
    rows
}

fn set(vars: &[(&str, &str)]) -> EnvChanges {
    vars.iter().map(|(k, v)| ((*k).to_owned(), Some((*v).to_owned()))).collect()
}

async fn config_values_are_sealed_at_rest_and_read_back(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let project = store.create_project(alice.id, &name("blog")).await.expect("create");
    let env = store.update_env(project.id, &set(&[("DATABASE_URL", SECRET), ("EMPTY", "")])).await.expect("set");
    assert_eq!(env.get("DATABASE_URL").map(String::as_str), Some(SECRET));
    let mut new = new_deployment(project.id, "env");
    new.config = env.clone();
    let deployment = store.create_deployment(&new).await.expect("deploy");
    assert_eq!(deployment.config, env);

    let stored = stored_config(db);
    assert_eq!(stored.len(), 3, "{stored:?}");
    for row in &stored {
        assert!(!row.contains(SECRET) && !row.contains("s3cr3t"), "stored in the clear: {row}");
        assert!(!row.ends_with(" key NULL"), "no key id beside the value: {row}");
    }
    // The key id beside each value is the key file's.
    let keyring = Keyring::load_or_create(&db.key_path()).expect("keyring");
    assert!(stored.iter().all(|row| row.ends_with(&format!(" key {}", keyring.key_id()))), "{stored:?}");

    // Every read path opens them again.
    assert_eq!(store.env(project.id).await.expect("env"), env);
    assert_eq!(store.deployment(project.id, 1).await.expect("deployment").config, env);
    assert_eq!(store.deployments(project.id, 10).await.expect("deployments")[0].config, env);
    store.set_deployment_status(deployment.id, DeploymentStatus::Building, None).await.expect("step");
    store.set_deployment_status(deployment.id, DeploymentStatus::Built, None).await.expect("step");
    store.set_deployment_status(deployment.id, DeploymentStatus::Starting, None).await.expect("step");
    store.set_deployment_status(deployment.id, DeploymentStatus::Healthy, None).await.expect("step");
    let live = store.make_live(deployment.id, &set(&[("LATER", SECRET)])).await.expect("live");
    assert_eq!(live.config, env);
    assert_eq!(store.live_deployment(project.id).await.expect("live").map(|d| d.config), Some(env.clone()));
    assert_eq!(store.live_deployments().await.expect("live")[0].1.config, env);
    assert_eq!(store.env(project.id).await.expect("env").get("LATER").map(String::as_str), Some(SECRET));
    assert!(stored_config(db).iter().all(|row| !row.contains(SECRET)));
    // Reopened, with the same key file: the same values.
    drop(store);
    assert_eq!(db.open().env(project.id).await.expect("env").get("DATABASE_URL").map(String::as_str), Some(SECRET));
}

fn assert_does_not_open(result: paastech_core::Result<impl std::fmt::Debug>, var: &str, project: &str) {
    match result {
        Err(Error::Internal { message, .. }) => {
            assert!(message.contains(var) && message.contains(project), "{message}");
            assert!(message.contains("not sealed for this var and project"), "{message}");
            assert!(!message.contains(SECRET), "{message}");
        }
        other => panic!("a moved value must not open, got {other:?}"),
    }
}

async fn a_value_moved_to_another_var_or_project_does_not_open(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let blog = store.create_project(alice.id, &name("blog")).await.expect("create");
    let shop = store.create_project(alice.id, &name("shop")).await.expect("create");
    store.update_env(blog.id, &set(&[("SECRET_KEY", SECRET), ("DEBUG", "1")])).await.expect("set");
    store.update_env(shop.id, &set(&[("SECRET_KEY", "shop's own")])).await.expect("set");

    // Someone with write access to the database copies blog's sealed SECRET_KEY into
    // DEBUG, hoping the app prints DEBUG.
    db.execute(&format!(
        "UPDATE env_vars SET value = (SELECT value FROM env_vars WHERE project_id = {0} AND key = 'SECRET_KEY') \
         WHERE project_id = {0} AND key = 'DEBUG'",
        blog.id
    ));
    assert_does_not_open(store.env(blog.id).await, "DEBUG", "blog");
    // Or into the same var of another project.
    db.execute(&format!(
        "UPDATE env_vars SET value = (SELECT value FROM env_vars WHERE project_id = {} AND key = 'SECRET_KEY') \
         WHERE project_id = {} AND key = 'SECRET_KEY'",
        blog.id, shop.id
    ));
    assert_does_not_open(store.env(shop.id).await, "SECRET_KEY", "shop");

    // A deployment snapshot's value moved to another var of the snapshot.
    let mut new = new_deployment(blog.id, "env");
    new.config = BTreeMap::from([("SECRET_KEY".to_owned(), SECRET.to_owned()), ("DEBUG".to_owned(), "1".to_owned())]);
    let deployment = store.create_deployment(&new).await.expect("deploy");
    let config = db.texts(&format!("SELECT config AS text FROM deployments WHERE id = {}", deployment.id));
    let mut snapshot: BTreeMap<String, String> = serde_json::from_str(&config[0]).expect("json");
    let sealed = snapshot["SECRET_KEY"].clone();
    snapshot.insert("DEBUG".into(), sealed);
    let moved = serde_json::to_string(&snapshot).expect("json");
    db.execute(&format!("UPDATE deployments SET config = '{moved}' WHERE id = {}", deployment.id));
    assert_does_not_open(store.deployment(blog.id, deployment.version).await, "DEBUG", "blog");
}

async fn plain_values_are_sealed_at_open_once_and_all_or_nothing(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let project = store.create_project(alice.id, &name("blog")).await.expect("create");
    let deployment = store.create_deployment(&new_deployment(project.id, "push")).await.expect("deploy");
    drop(store);
    // What a database written before values were sealed holds: values in the clear, no
    // key id. One deployment's snapshot is broken, so the first sealing fails midway.
    db.execute(&format!(
        "INSERT INTO env_vars (project_id, key, value) VALUES ({0}, 'LEGACY', '{SECRET}');
         INSERT INTO env_vars (project_id, key, value) VALUES ({0}, 'OTHER', 'plain too');
         UPDATE deployments SET config = '{{\"LEGACY\":\"{SECRET}\"}}', config_key_id = NULL WHERE id = {1};",
        project.id, deployment.id
    ));
    let second = format!(
        "INSERT INTO deployments (project_id, version, status, config, scale, cause, created_at, updated_at) \
         VALUES ({}, 2, 'failed', 'not json', '{{}}', 'push', 1, 1)",
        project.id
    );
    db.execute(&second);
    let before = stored_config(db);
    match db.try_open() {
        Err(Error::Internal { message, .. }) => assert!(message.contains("deployment config"), "{message}"),
        other => panic!("a broken snapshot must stop the sealing, got {other:?}"),
    }
    assert_eq!(stored_config(db), before, "a failed sealing changes nothing");

    // Mended, the next open seals every value, in the vars and in the snapshot.
    db.execute("UPDATE deployments SET config = '{}' WHERE version = 2");
    let store = db.open();
    let sealed = stored_config(db);
    assert_eq!(sealed.len(), 4, "{sealed:?}");
    assert!(sealed.iter().all(|row| !row.contains(SECRET) && !row.contains("plain too")), "{sealed:?}");
    assert!(sealed.iter().all(|row| !row.ends_with(" key NULL")), "{sealed:?}");
    let env = store.env(project.id).await.expect("env");
    assert_eq!(env.get("LEGACY").map(String::as_str), Some(SECRET));
    assert_eq!(env.get("OTHER").map(String::as_str), Some("plain too"));
    let config = store.deployment(project.id, deployment.version).await.expect("deployment").config;
    assert_eq!(config.get("LEGACY").map(String::as_str), Some(SECRET));
    drop(store);
    // Opening again has nothing left to seal: the stored bytes stay as they are.
    drop(db.open());
    assert_eq!(stored_config(db), sealed);
}

async fn a_database_opened_with_another_key_file_is_refused_naming_it(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let project = store.create_project(alice.id, &name("blog")).await.expect("create");
    store.update_env(project.id, &set(&[("TOKEN", SECRET)])).await.expect("set");
    drop(store);
    let (dir, other) = test_keyring();
    match SqlStore::open(&db.url, other) {
        Err(Error::Invalid(message)) => {
            assert!(message.contains(&dir.path().join("key").display().to_string()), "{message}");
            assert!(message.contains("does not hold"), "{message}");
        }
        other => panic!("another key must be refused, got {other:?}"),
    }
}

async fn rotation_seals_everything_with_a_new_key_and_the_old_one_is_not_needed(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let project = store.create_project(alice.id, &name("blog")).await.expect("create");
    let env = store.update_env(project.id, &set(&[("TOKEN", SECRET), ("MODE", "prod")])).await.expect("set");
    let mut new = new_deployment(project.id, "env");
    new.config = env.clone();
    store.create_deployment(&new).await.expect("deploy");
    let hook = store.add_webhook(project.id, "http://127.0.0.1:9/", &WebhookEvent::ALL, "whsec-x").await.expect("hook");

    // A server holds the key file while it runs: no rotation beside it.
    match rotate_key(&db.url, &db.key_path()) {
        Err(Error::Conflict(message)) => {
            assert!(message.contains(&db.key_path().display().to_string()), "{message}");
            assert!(message.contains("running server"), "{message}");
        }
        other => panic!("a rotation beside an open store must be refused, got {other:?}"),
    }
    drop(store);

    let old_key_file = std::fs::read(db.key_path()).expect("old key file");
    let before = stored_config(db);
    let rotation = rotate_key(&db.url, &db.key_path()).expect("rotate");
    assert_ne!(rotation.old_key_id, rotation.new_key_id);
    assert_eq!(rotation.resealed, 4, "two vars, one snapshot and one webhook secret");
    let secret_keys = db.texts("SELECT secret_key_id AS text FROM webhooks");
    assert_eq!(secret_keys, vec![rotation.new_key_id.clone()], "the webhook secret is sealed with the new key");
    assert!(!pending_path(&db.key_path()).exists(), "the new key took the old one's place");
    let after = stored_config(db);
    assert!(after.iter().all(|row| row.ends_with(&format!(" key {}", rotation.new_key_id))), "{after:?}");
    assert!(after.iter().all(|row| !before.contains(row)), "every value sealed again");

    // The key file alone (the old key is gone) opens everything.
    let store = db.open();
    assert_eq!(store.env(project.id).await.expect("env"), env);
    assert_eq!(store.deployment(project.id, 1).await.expect("deployment").config, env);
    assert_eq!(store.webhooks_with_secrets(project.id).await.expect("hooks"), vec![(hook, "whsec-x".to_owned())]);
    drop(store);
    // And the old key no longer does.
    let (dir, _) = test_keyring();
    let old_path = dir.path().join("old.key");
    std::fs::write(&old_path, old_key_file).expect("old key");
    std::fs::set_permissions(&old_path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let old = Keyring::load_or_create(&old_path).expect("old keyring");
    assert_eq!(old.key_id(), rotation.old_key_id);
    assert!(matches!(SqlStore::open(&db.url, old), Err(Error::Invalid(_))));
}

async fn an_interrupted_rotation_leaves_every_value_readable_and_resumes(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let project = store.create_project(alice.id, &name("blog")).await.expect("create");
    store.update_env(project.id, &set(&[("TOKEN", SECRET)])).await.expect("set");
    drop(store);
    let key = db.key_path();
    let pending = pending_path(&key);
    let old_key_file = std::fs::read(&key).expect("key file");

    // A crash after the new key was written, before any value was sealed with it.
    let (dir, fresh) = test_keyring();
    drop(fresh);
    std::fs::copy(dir.path().join("key"), &pending).expect("pending key");
    let store = db.open();
    assert_eq!(store.env(project.id).await.expect("env")["TOKEN"], SECRET);
    // A value written meanwhile is sealed with the key file's key.
    store.update_env(project.id, &set(&[("MEANWHILE", "m")])).await.expect("set");
    drop(store);
    let rotation = rotate_key(&db.url, &key).expect("resumed rotation");
    assert_eq!(
        rotation.new_key_id,
        Keyring::load_or_create(&key).expect("keyring").key_id(),
        "resumed with the key in PATH.new"
    );
    assert!(!pending.exists());
    assert_eq!(db.open().env(project.id).await.expect("env")["MEANWHILE"], "m");

    // A crash after every value was sealed with the new key, before it replaced the old:
    // the new key still in PATH.new, the old one in PATH.
    std::fs::rename(&key, &pending).expect("new key back to PATH.new");
    std::fs::write(&key, &old_key_file).expect("old key back");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let store = db.open();
    assert_eq!(store.env(project.id).await.expect("env")["TOKEN"], SECRET);
    drop(store);
    let finished = rotate_key(&db.url, &key).expect("finish");
    assert_eq!(finished.new_key_id, rotation.new_key_id);
    assert_eq!(finished.resealed, 0, "everything was sealed with it already");
    assert!(!pending.exists());
    assert_eq!(db.open().env(project.id).await.expect("env")["TOKEN"], SECRET);
}

async fn collaborators_have_one_role_per_project_and_go_with_user_and_project(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let bob = new_user(&store, "bob@example.com").await;
    let carol = new_user(&store, "carol@example.com").await;
    let shop = store.create_project(alice.id, &name("shop")).await.expect("create");
    let blog = store.create_project(alice.id, &name("blog")).await.expect("create");
    assert_eq!(store.collaborator_role(shop.id, bob.id).await.expect("role"), None);

    let added = store.set_collaborator(shop.id, bob.id, Role::Viewer).await.expect("add");
    assert_eq!((added.user_id, added.email.as_str(), added.role), (bob.id, "bob@example.com", Role::Viewer));
    // Adding again changes the role of the one row.
    let changed = store.set_collaborator(shop.id, bob.id, Role::Developer).await.expect("change");
    assert_eq!((changed.role, changed.created_at), (Role::Developer, added.created_at));
    store.set_collaborator(shop.id, carol.id, Role::Owner).await.expect("add");
    store.set_collaborator(blog.id, bob.id, Role::Viewer).await.expect("add");
    let members: Vec<_> =
        store.collaborators(shop.id).await.expect("list").into_iter().map(|c| (c.email, c.role)).collect();
    assert_eq!(
        members,
        [("bob@example.com".to_owned(), Role::Developer), ("carol@example.com".to_owned(), Role::Owner)]
    );
    assert_eq!(store.collaborator_role(shop.id, bob.id).await.expect("role"), Some(Role::Developer));
    let of_bob: Vec<_> = store
        .collaborations(bob.id)
        .await
        .expect("collaborations")
        .into_iter()
        .map(|(p, role)| (p.name.to_string(), role))
        .collect();
    assert_eq!(of_bob, [("blog".to_owned(), Role::Viewer), ("shop".to_owned(), Role::Developer)]);
    assert_not_found(store.set_collaborator(424242, bob.id, Role::Viewer).await, "project");
    assert_not_found(store.set_collaborator(shop.id, 424242, Role::Viewer).await, "user");

    store.remove_collaborator(shop.id, carol.id).await.expect("remove");
    assert_not_found(store.remove_collaborator(shop.id, carol.id).await, "not a collaborator");
    assert_eq!(store.collaborator_role(shop.id, carol.id).await.expect("role"), None);

    // A project deleted takes its rows; a user deleted takes theirs.
    store.delete_project(blog.id).await.expect("delete project");
    assert_eq!(store.collaborations(bob.id).await.expect("collaborations").len(), 1);
    store.delete_user(bob.id).await.expect("delete user");
    assert!(store.collaborators(shop.id).await.expect("list").is_empty());
}

async fn a_transfer_moves_the_owner_with_previews_and_keeps_the_old_one_as_owner(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let bob = new_user(&store, "bob@example.com").await;
    let shop = store.create_project(alice.id, &name("shop")).await.expect("create");
    let preview = store.create_preview(&shop, &name("fix--shop"), "fix").await.expect("preview");
    store.set_collaborator(shop.id, bob.id, Role::Developer).await.expect("add");

    let moved = store.transfer_project(shop.id, bob.id).await.expect("transfer");
    assert_eq!(moved.owner_id, bob.id);
    assert_eq!(store.project_by_id(preview.id).await.expect("preview").owner_id, bob.id);
    assert_eq!(store.collaborator_role(shop.id, bob.id).await.expect("role"), None, "the owner has no row");
    assert_eq!(store.collaborator_role(shop.id, alice.id).await.expect("role"), Some(Role::Owner));
    let names: Vec<_> = store.projects(Some(bob.id)).await.expect("projects").into_iter().map(|p| p.name).collect();
    assert_eq!(names, [name("fix--shop"), name("shop")]);
    assert_not_found(store.transfer_project(shop.id, 424242).await, "user");
    assert_not_found(store.transfer_project(424242, bob.id).await, "project");
    // Back again: alice's row goes, bob keeps one.
    store.transfer_project(shop.id, alice.id).await.expect("transfer back");
    assert_eq!(store.collaborator_role(shop.id, alice.id).await.expect("role"), None);
    assert_eq!(store.collaborator_role(shop.id, bob.id).await.expect("role"), Some(Role::Owner));
}

async fn a_disabled_user_has_no_tokens_and_no_ssh_login(db: &TestDb) {
    let store = db.open();
    let _admin = new_user(&store, "admin@example.com").await;
    let bob = new_user(&store, "bob@example.com").await;
    store.create_token(bob.id, "cli", "hash-1", None).await.expect("token");
    store.add_ssh_key(bob.id, "laptop", "SHA256:bob", "ssh-ed25519 AAAA bob").await.expect("key");
    let disabled = store.set_user_disabled(bob.id, true).await.expect("disable");
    assert!(disabled.disabled);
    assert!(store.user(bob.id).await.expect("user").disabled);
    assert!(store.tokens(bob.id).await.expect("tokens").is_empty(), "disabling ends every token and session");
    // A token made while disabled (no route makes one, but the check is the store's) is refused.
    store.create_token(bob.id, "late", "hash-2", None).await.expect("token");
    let refused = store.use_token("hash-2").await.expect_err("disabled");
    assert!(matches!(&refused, Error::Unauthorized(m) if m.contains("disabled")), "{refused:?}");
    assert_not_found(store.user_by_ssh_fingerprint("SHA256:bob").await, "SSH key");
    // Enabled again, the key works (tokens were ended for good).
    store.set_user_disabled(bob.id, false).await.expect("enable");
    assert_eq!(store.user_by_ssh_fingerprint("SHA256:bob").await.expect("key").1.id, bob.id);
    assert_not_found(store.set_user_disabled(424242, true).await, "user");
}

async fn a_user_is_deleted_only_without_projects_and_takes_their_rows(db: &TestDb) {
    let store = db.open();
    let _admin = new_user(&store, "admin@example.com").await;
    let bob = new_user(&store, "bob@example.com").await;
    store.create_project(bob.id, &name("shop")).await.expect("create");
    store.create_project(bob.id, &name("blog")).await.expect("create");
    store.create_token(bob.id, "cli", "hash-1", None).await.expect("token");
    store.add_ssh_key(bob.id, "laptop", "SHA256:bob", "ssh-ed25519 AAAA bob").await.expect("key");
    assert_conflict(store.delete_user(bob.id).await, "the user still owns projects: blog, shop");
    for project in store.projects(Some(bob.id)).await.expect("projects") {
        store.delete_project(project.id).await.expect("delete project");
    }
    store.delete_user(bob.id).await.expect("delete");
    assert_not_found(store.user(bob.id).await, "user");
    assert!(store.use_token("hash-1").await.is_err());
    assert_not_found(store.user_by_ssh_fingerprint("SHA256:bob").await, "SSH key");
    assert_not_found(store.delete_user(bob.id).await, "user");
    // The email can sign up again.
    new_user(&store, "bob@example.com").await;
}

async fn totp_is_sealed_confirmed_refuses_replays_and_recovery_codes_work_once(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let bob = new_user(&store, "bob@example.com").await;
    assert_eq!(store.totp(alice.id).await.expect("none yet"), None);
    let secret = [0xabu8; 20];
    store.start_totp(alice.id, &secret).await.expect("start");
    // Sealed at rest: neither the bytes as hex nor anything readable is stored.
    let stored = db.texts("SELECT secret AS text FROM user_totp");
    assert_eq!(stored.len(), 1);
    assert!(!stored[0].contains(&"ab".repeat(20)), "the secret is stored in the clear: {stored:?}");
    let pending = store.totp(alice.id).await.expect("read").expect("pending");
    assert_eq!((pending.secret.as_slice(), pending.enabled, pending.last_step), (&secret[..], false, None));
    // A pending enrolment accepts no code yet.
    assert!(!store.use_totp_step(alice.id, 100).await.expect("use"));

    let hashes: Vec<String> = (0..10).map(|i| format!("hash-{i}")).collect();
    store.enable_totp(alice.id, 100, &hashes).await.expect("enable");
    assert!(matches!(store.enable_totp(alice.id, 101, &hashes).await, Err(Error::NotFound(_))), "enabled once");
    assert!(matches!(store.start_totp(alice.id, &[1u8; 20]).await, Err(Error::Conflict(_))));
    let enabled = store.totp(alice.id).await.expect("read").expect("enabled");
    assert_eq!((enabled.enabled, enabled.last_step, enabled.recovery_codes_left), (true, Some(100), 10));

    // The confirming step, and any earlier one, is a replay; a later one passes once.
    assert!(!store.use_totp_step(alice.id, 100).await.expect("use"));
    assert!(!store.use_totp_step(alice.id, 99).await.expect("use"));
    assert!(store.use_totp_step(alice.id, 101).await.expect("use"));
    assert!(!store.use_totp_step(alice.id, 101).await.expect("use"));
    assert!(!store.use_totp_step(bob.id, 500).await.expect("bob has none"));

    assert!(store.use_recovery_code(alice.id, "hash-3").await.expect("use"));
    assert!(!store.use_recovery_code(alice.id, "hash-3").await.expect("used"));
    assert!(!store.use_recovery_code(bob.id, "hash-4").await.expect("not bob's"));
    assert_eq!(store.totp(alice.id).await.expect("read").expect("enabled").recovery_codes_left, 9);

    // A rotation seals the secret again with the new key; the new key alone opens it.
    drop(store);
    let rotation = rotate_key(&db.url, &db.key_path()).expect("rotate");
    assert_eq!(db.texts("SELECT key_id AS text FROM user_totp"), vec![rotation.new_key_id.clone()]);
    let store = db.open();
    assert_eq!(store.totp(alice.id).await.expect("read").expect("enabled").secret, secret.to_vec());

    assert!(store.delete_totp(alice.id).await.expect("delete"));
    assert!(!store.delete_totp(alice.id).await.expect("gone"));
    assert_eq!(store.totp(alice.id).await.expect("read"), None);
    assert!(!store.use_recovery_code(alice.id, "hash-4").await.expect("codes went with it"));
}

async fn audit_records_outlive_what_they_name_and_are_read_by_scope(db: &TestDb) {
    let store = db.open();
    let alice = new_user(&store, "alice@example.com").await;
    let bob = new_user(&store, "bob@example.com").await;
    let shop = store.create_project(alice.id, &name("shop")).await.expect("create");
    let blog = store.create_project(bob.id, &name("blog")).await.expect("create");
    let preview = store.create_preview(&shop, &name("login--shop"), "login").await.expect("preview");
    let address: std::net::IpAddr = "192.0.2.7".parse().expect("address");
    let record = |action, actor: &User| AuditRecord::new(action, Some(actor), Some(address));
    store.record_audit(&record(AuditAction::Login, &alice)).await.expect("record");
    store.record_audit(&record(AuditAction::EnvChanged, &alice).on(&shop).detail("set A")).await.expect("record");
    store.record_audit(&record(AuditAction::Deployed, &alice).on(&preview).detail("v1")).await.expect("record");
    store.record_audit(&record(AuditAction::Login, &bob)).await.expect("record");
    store.record_audit(&record(AuditAction::Scaled, &bob).on(&blog).detail("web=2")).await.expect("record");
    let mut unknown = AuditRecord::new(AuditAction::LoginFailed, None, None).detail("unknown account");
    unknown.at = Timestamp(unknown.at.0 - 10_000);
    store.record_audit(&unknown).await.expect("record");

    let actions = |events: Vec<paastech_core::AuditEvent>| -> Vec<String> {
        events.into_iter().map(|e| format!("{} {}", e.action, e.project.unwrap_or_default())).collect()
    };
    let all = store.audit_events(&AuditScope::All, None, 100).await.expect("all");
    assert_eq!(all.len(), 6);
    assert!(all.windows(2).all(|pair| pair[0].id > pair[1].id), "newest first: {all:?}");
    let env = &all[4];
    assert_eq!(
        (env.action.as_str(), env.actor.as_deref(), env.actor_id, env.address.as_deref()),
        ("env.change", Some("alice@example.com"), Some(alice.id), Some("192.0.2.7"))
    );
    assert_eq!((env.project.as_deref(), env.project_id, env.detail.as_str()), (Some("shop"), Some(shop.id), "set A"));
    assert_eq!((all[0].actor.as_deref(), all[0].address.as_deref()), (None, None));

    // Paging: older than a record, at most `limit`.
    let page = store.audit_events(&AuditScope::All, Some(all[1].id), 2).await.expect("page");
    assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), [all[2].id, all[3].id]);

    let of_shop = store.audit_events(&AuditScope::Project(shop.id), None, 100).await.expect("project");
    assert_eq!(actions(of_shop), ["env.change shop"]);
    // Bob collaborates on shop: he reads its records and its preview's, and his own, not
    // alice's login.
    let bob_view = AuditScope::Member { user_id: bob.id, project_ids: vec![blog.id, shop.id] };
    let seen = actions(store.audit_events(&bob_view, None, 100).await.expect("member"));
    assert_eq!(seen, ["scale blog", "login ", "deploy login--shop", "env.change shop"]);
    let alone = AuditScope::Member { user_id: bob.id, project_ids: vec![] };
    assert_eq!(actions(store.audit_events(&alone, None, 100).await.expect("member")), ["scale blog", "login "]);

    // Records outlive the project they name: deleting it keeps them, and a new project of
    // the same name does not inherit them.
    store.delete_project(blog.id).await.expect("delete");
    let again = store.create_project(alice.id, &name("blog")).await.expect("create");
    assert!(store.audit_events(&AuditScope::Project(again.id), None, 100).await.expect("project").is_empty());
    assert_eq!(store.audit_events(&AuditScope::All, None, 100).await.expect("all").len(), 6);

    // Pruning drops what is older than the cutoff only.
    let pruned = store.prune_audit(Timestamp(Timestamp::now().0 - 5_000)).await.expect("prune");
    assert_eq!(pruned, 1);
    let left = store.audit_events(&AuditScope::All, None, 100).await.expect("all");
    assert_eq!(left.len(), 5);
    assert!(left.iter().all(|e| e.action != "login.failed"));
}
