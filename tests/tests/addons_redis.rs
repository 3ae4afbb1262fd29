//! Issue #14: Redis add-ons end to end. A real server with `[addons.redis]` on the
//! redis-server the test command starts (`scripts/setup/15-redis.sh`), driven through the
//! CLI and the API; what the add-ons' users may do is checked with `redis-cli` as each
//! project's app would connect (its `REDIS_URL`), and what exists as the server's admin.

use std::process::Command;

use paastech_tests::{Server, failed, ok, redis_admin_url};
use serde_json::{Value, json};

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

/// `redis-cli -u URL ARGS…`: what it printed (it exits 0 on error replies too, printing
/// them, so the output says whether the command was refused).
fn redis_cli(url: &str, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["--no-auth-warning", "-u", url])
        .args(args)
        .output()
        .expect("running redis-cli (scripts/setup/15-redis.sh installs it)");
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)).trim().to_owned()
}

/// Whether the server has this ACL user, and how many keys start with `prefix`, asked as
/// its admin.
fn user_and_keys(user: &str, prefix: &str) -> (bool, usize) {
    let admin = redis_admin_url();
    let found = redis_cli(&admin, &["ACL", "GETUSER", user]);
    let keys = redis_cli(&admin, &["--scan", "--pattern", &format!("{prefix}*")]);
    (!found.is_empty(), keys.lines().filter(|line| !line.is_empty()).count())
}

/// A project name unique to this run: add-ons live on a server shared by every test.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").subsec_nanos();
    format!("{prefix}{}x{nanos}", std::process::id())
}

fn env_of(server: &Server, token: &str, project: &str) -> Value {
    let (status, env) = server.api().req("GET", &format!("/projects/{project}/env"), Some(token), None);
    assert_eq!(status, 200, "{env}");
    env
}

#[test]
fn redis_addons_are_private_per_project_and_are_backed_up_and_restored() {
    let server = Server::start(&format!("[addons.redis]\nurl = {:?}\n", redis_admin_url()));
    let api = server.api();
    let ada = api.user("ada@example.com");
    let (first, second) = (unique("cache"), unique("other"));
    for project in [&first, &second] {
        let (status, body) = api.req("POST", "/projects", Some(&ada), Some(json!({"name": project})));
        assert_eq!(status, 201, "{body}");
    }
    let home = tempfile::tempdir().expect("home");
    ok(&server.cli(
        home.path(),
        &["login", "--email", "ada@example.com", "--password-stdin"],
        Some(paastech_tests::web::PASSWORD),
    ));

    // Bad input first: nothing is made.
    let refused = failed(&server.cli(home.path(), &["addons", "create", "memcached", "-p", &first], None));
    assert!(refused.contains("\"memcached\"") && refused.contains("configured are redis"), "{refused}");

    let created = ok(&server.cli(home.path(), &["addons", "create", "redis", "-p", &first], None));
    assert!(created.contains("Created redis (redis)"), "{created}");
    ok(&server.cli(home.path(), &["addons", "create", "redis", "--as", "cache", "-p", &second], None));
    let taken = failed(&server.cli(home.path(), &["addons", "create", "redis", "-p", &first], None));
    assert!(taken.contains("already has an add-on named redis"), "{taken}");
    let listed: Value = serde_json::from_str(&ok(&server.cli(home.path(), &["addons", "--json", "-p", &first], None)))
        .expect("a JSON listing");
    assert_eq!(listed[0]["name"], "redis", "{listed}");
    assert_eq!(listed[0]["kind"], "redis", "{listed}");

    // The apps' config: their own user on the operator's server, and their key prefix.
    let (env_a, env_b) = (env_of(&server, &ada, &first), env_of(&server, &ada, &second));
    let (user_a, prefix_a) = (format!("pt_{first}_redis"), format!("pt_{first}_redis:"));
    let prefix_b = format!("pt_{second}_cache:");
    assert_eq!(env_a["REDIS_KEY_PREFIX"], prefix_a, "{env_a}");
    assert_eq!(env_b["REDIS_KEY_PREFIX"], prefix_b, "{env_b}");
    let url_a = env_a["REDIS_URL"].as_str().expect("REDIS_URL").to_owned();
    let url_b = env_b["REDIS_URL"].as_str().expect("REDIS_URL").to_owned();
    assert!(url_a.starts_with(&format!("redis://{user_a}:")), "{url_a}");
    let info = ok(&server.cli(home.path(), &["addons", "info", "redis", "-p", &first], None));
    assert!(info.contains(&format!("REDIS_URL={url_a}")) && info.contains("kind:    redis"), "{info}");

    // Each app reads and writes its own keys, and cannot touch the other's.
    assert_eq!(redis_cli(&url_a, &["SET", &format!("{prefix_a}greeting"), "hello"]), "OK");
    assert_eq!(redis_cli(&url_a, &["SET", &format!("{prefix_a}session"), "s", "EX", "3600"]), "OK");
    assert_eq!(redis_cli(&url_a, &["GET", &format!("{prefix_a}greeting")]), "hello");
    assert_eq!(redis_cli(&url_b, &["SET", &format!("{prefix_b}mine"), "b"]), "OK");
    let stolen = redis_cli(&url_b, &["GET", &format!("{prefix_a}greeting")]);
    assert!(stolen.starts_with("NOPERM"), "B reads A's key: {stolen}");
    let overwritten = redis_cli(&url_b, &["SET", &format!("{prefix_a}greeting"), "pwned"]);
    assert!(overwritten.starts_with("NOPERM"), "B writes A's key: {overwritten}");
    let listed = redis_cli(&url_b, &["KEYS", "*"]);
    assert!(listed.starts_with("NOPERM"), "B lists keys: {listed}");
    let flushed = redis_cli(&url_b, &["FLUSHALL"]);
    assert!(flushed.starts_with("NOPERM"), "B flushes the server: {flushed}");
    assert_eq!(redis_cli(&url_a, &["GET", &format!("{prefix_a}greeting")]), "hello");

    // Another user does not see the add-ons at all.
    let eve = api.user("eve@example.com");
    assert_eq!(api.req("GET", &format!("/projects/{first}/addons"), Some(&eve), None).0, 404);
    assert_eq!(api.req("GET", &format!("/projects/{first}/addons/redis/backup"), Some(&eve), None).0, 404);

    // Backup, destroy, create, restore: the keys come back, with their TTLs.
    let backup = server.cli(home.path(), &["addons", "backup", "redis", "-p", &first], None);
    ok(&backup);
    assert!(backup.stdout.starts_with(b"PTREDIS1"), "a PaaSTech Redis backup of {} bytes", backup.stdout.len());
    let refused = failed(&server.cli(home.path(), &["addons", "destroy", "redis", "-p", &first], None));
    assert!(refused.contains("--yes"), "destroying asks for confirmation: {refused}");
    ok(&server.cli(home.path(), &["addons", "destroy", "redis", "-p", &first, "--yes"], None));
    assert_eq!(user_and_keys(&user_a, &prefix_a), (false, 0), "the user and its keys are gone");
    let env = env_of(&server, &ada, &first);
    assert!(env.get("REDIS_URL").is_none() && env.get("REDIS_KEY_PREFIX").is_none(), "unset: {env}");
    let gone = redis_cli(&url_a, &["GET", &format!("{prefix_a}greeting")]);
    assert!(gone.contains("WRONGPASS"), "the old password is refused: {gone}");

    ok(&server.cli(home.path(), &["addons", "create", "redis", "-p", &first], None));
    let url_a = env_of(&server, &ada, &first)["REDIS_URL"].as_str().expect("REDIS_URL").to_owned();
    assert_eq!(redis_cli(&url_a, &["GET", &format!("{prefix_a}greeting")]), "", "a new, empty add-on");

    // Not a backup: refused, and the data is left as it was.
    let (status, body) = api.req("POST", &format!("/projects/{first}/addons/redis/restore"), Some(&ada), None);
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("not a PaaSTech Redis backup"), "{body}");

    let backup_file = home.path().join("cache.backup");
    std::fs::write(&backup_file, &backup.stdout).expect("write backup");
    let restore = Command::new(paastech_tests::paastech_bin())
        .args(["addons", "restore", "redis", "-p", &first])
        .env("HOME", home.path())
        .env("PAASTECH_SERVER", server.api_url())
        .env_remove("PAASTECH_TOKEN")
        .stdin(std::fs::File::open(&backup_file).expect("backup file"))
        .output()
        .expect("paastech addons restore");
    ok(&restore);
    assert_eq!(redis_cli(&url_a, &["GET", &format!("{prefix_a}greeting")]), "hello", "the keys are back");
    let ttl: i64 = redis_cli(&url_a, &["TTL", &format!("{prefix_a}session")]).parse().expect("a TTL");
    assert!((3000..=3600).contains(&ttl), "the TTL is back: {ttl}");
    assert_eq!(redis_cli(&url_b, &["GET", &format!("{prefix_b}mine")]), "b", "the other add-on is untouched");

    // Deleting a project destroys its add-on: the user and its keys.
    for (project, user, prefix) in
        [(&first, user_a.as_str(), prefix_a.as_str()), (&second, &format!("pt_{second}_cache"), prefix_b.as_str())]
    {
        let (status, body) = api.req("DELETE", &format!("/projects/{project}"), Some(&ada), None);
        assert_eq!(status, 204, "{body}");
        assert_eq!(user_and_keys(user, prefix), (false, 0), "{project}");
    }
}

#[test]
fn a_redis_server_that_is_down_is_a_clear_error_and_leaves_nothing() {
    let port = paastech_tests::free_port();
    let server = Server::start(&format!("[addons.redis]\nurl = \"redis://default:hunter2pw@127.0.0.1:{port}\"\n"));
    let api = server.api();
    let token = api.user("ada@example.com");
    let (status, body) = api.req("POST", "/projects", Some(&token), Some(json!({"name": "down"})));
    assert_eq!(status, 201, "{body}");
    let (status, body) = api.req("POST", "/projects/down/addons", Some(&token), Some(json!({"kind": "redis"})));
    assert_eq!(status, 503, "{body}");
    assert!(message(&body).contains(&format!("redis add-on server at 127.0.0.1:{port}")), "{body}");
    assert!(!body.to_string().contains("hunter2pw"), "the admin password is not shown: {body}");
    let (_, list) = api.req("GET", "/projects/down/addons", Some(&token), None);
    assert_eq!(list, json!([]));
    let (_, env) = api.req("GET", "/projects/down/env", Some(&token), None);
    assert_eq!(env, json!({}));
}
