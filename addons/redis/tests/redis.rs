//! The Redis add-on against the real redis-server the test command starts
//! (`PAASTECH_TEST_REDIS_URL`, from `scripts/setup/15-redis.sh`), checked with a client of
//! its own as the add-on's user and as the server's admin.

use std::sync::atomic::{AtomicU32, Ordering};

use paastech_addon_redis::{BACKUP_MAGIC, REDIS_KEY_PREFIX, REDIS_URL, RedisAddons, RedisOptions};
use paastech_core::addons::{AddonKind, AddonName};
use paastech_core::registry::{DriverContext, DriverOptions};
use paastech_core::{EnvVars, Error, ProjectName};
use redis::{Commands, Connection, RedisResult, Value};

fn admin_url() -> String {
    std::env::var("PAASTECH_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "PAASTECH_TEST_REDIS_URL is not set: start the test redis-server with \
             `source scripts/setup/15-redis.sh` (scripts/test.sh does), which exports it"
        )
    })
}

fn addons_at(url: &str) -> RedisAddons {
    let options = RedisOptions { url: url.to_owned() };
    RedisAddons::new(options.config(&DriverContext::default()).expect("valid options"))
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

fn connect(url: &str) -> Connection {
    redis::Client::open(url).expect("a redis url").get_connection().expect("connecting")
}

fn admin() -> Connection {
    connect(&admin_url())
}

fn url(vars: &EnvVars) -> &str {
    vars.get(REDIS_URL).expect("REDIS_URL is set")
}

fn prefix(vars: &EnvVars) -> &str {
    vars.get(REDIS_KEY_PREFIX).expect("REDIS_KEY_PREFIX is set")
}

/// The error code of a refused command (`NOPERM`), or what it answered.
fn refused<T: std::fmt::Debug>(result: RedisResult<T>) -> String {
    match result {
        Ok(value) => panic!("expected a refusal, got {value:?}"),
        Err(err) => err.code().unwrap_or("no code").to_owned(),
    }
}

fn user_exists(user: &str) -> bool {
    let found: Value = redis::cmd("ACL").arg("GETUSER").arg(user).query(&mut admin()).expect("ACL GETUSER");
    found != Value::Nil
}

fn keys_under(prefix: &str) -> Vec<String> {
    let mut admin = admin();
    let iter: redis::Iter<String> = admin.scan_match(format!("{prefix}*")).expect("SCAN");
    let mut keys: Vec<String> = iter.map(|key| key.expect("a key")).collect();
    keys.sort();
    keys.dedup();
    keys
}

#[tokio::test]
async fn an_addon_is_a_user_confined_to_its_prefix_and_safe_commands() {
    let addons = addons_at(&admin_url());
    let (first, second) = (project(), project());
    let a = addons.provision(&first, &name("redis")).await.expect("provision a");
    let b = addons.provision(&second, &name("redis")).await.expect("provision b");
    let user = RedisAddons::user(&first, &name("redis"));
    assert_eq!(prefix(&a), format!("pt_{first}_redis:"));
    let parsed = url(&a).strip_prefix(&format!("redis://{user}:")).expect("the add-on's user in the url");
    let (password, server) = parsed.split_once('@').expect("a password");
    assert!(password.len() >= 32 && password.chars().all(|c| c.is_ascii_alphanumeric()), "{password}");
    assert!(admin_url().ends_with(&format!("@{server}")), "the same server: {server}");
    assert!(!url(&b).contains(password), "passwords are random");

    let mut own = connect(url(&a));
    let mut other = connect(url(&b));
    let key = format!("{}greeting", prefix(&a));
    let () = own.set(&key, "hello").expect("SET under its prefix");
    assert_eq!(own.get::<_, String>(&key).expect("GET"), "hello");
    let () = own.hset(format!("{}h", prefix(&a)), "f", 1).expect("a hash under its prefix");
    let b_key = format!("{}secret", prefix(&b));
    let () = other.set(&b_key, "b's").expect("b writes its own");

    // Outside its prefix: another add-on's keys, and keys of nobody.
    assert_eq!(refused(own.get::<_, String>(&b_key)), "NOPERM");
    assert_eq!(refused(own.set::<_, _, ()>(&b_key, "overwritten")), "NOPERM");
    assert_eq!(refused(own.set::<_, _, ()>("unprefixed", "x")), "NOPERM");
    assert_eq!(refused(other.get::<_, String>(&key)), "NOPERM");
    // A script runs with the same rights.
    let script: RedisResult<Value> =
        redis::cmd("EVAL").arg("return redis.call('GET', KEYS[1])").arg(1).arg(&b_key).query(&mut own);
    assert_eq!(refused(script), "NOPERM");
    let script: String =
        redis::cmd("EVAL").arg("return redis.call('GET', KEYS[1])").arg(1).arg(&key).query(&mut own).expect("EVAL");
    assert_eq!(script, "hello");
    // Channels too.
    let published: RedisResult<i64> = own.publish(format!("{}events", prefix(&a)), "x");
    assert!(published.is_ok(), "{published:?}");
    assert_eq!(refused(own.publish::<_, _, i64>(format!("{}events", prefix(&b)), "x")), "NOPERM");

    // Commands that act on the whole server, or show other add-ons' keys.
    for command in [
        &["FLUSHALL"][..],
        &["FLUSHDB"],
        &["KEYS", "*"],
        &["SCAN", "0"],
        &["RANDOMKEY"],
        &["CONFIG", "GET", "*"],
        &["ACL", "LIST"],
        &["SWAPDB", "0", "1"],
        &["MONITOR"],
        &["INFO"],
        &["CLIENT", "LIST"],
        &["SELECT", "1"],
        &["FUNCTION", "FLUSH"],
        &["SCRIPT", "FLUSH"],
        &["PUBSUB", "CHANNELS"],
        &["SHUTDOWN"],
    ] {
        let mut cmd = redis::cmd(command[0]);
        cmd.arg(&command[1..]);
        assert_eq!(refused(cmd.query::<Value>(&mut own)), "NOPERM", "{command:?}");
    }
    assert_eq!(other.get::<_, String>(&b_key).expect("b's key is untouched"), "b's");

    addons.deprovision(&first, &name("redis")).await.expect("deprovision a");
    addons.deprovision(&second, &name("redis")).await.expect("deprovision b");
}

#[tokio::test]
async fn a_second_provision_of_the_same_name_is_a_conflict_and_changes_nothing() {
    let addons = addons_at(&admin_url());
    let project = project();
    let vars = addons.provision(&project, &name("cache")).await.expect("provision");
    let key = format!("{}k", prefix(&vars));
    let () = connect(url(&vars)).set(&key, 7).expect("write");
    let err = addons.provision(&project, &name("cache")).await.expect_err("the name is taken");
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    assert!(err.to_string().contains(&RedisAddons::user(&project, &name("cache"))), "{err}");
    // The first password still works: the user was not reset.
    assert_eq!(connect(url(&vars)).get::<_, i64>(&key).expect("the first one still works"), 7);
    addons.deprovision(&project, &name("cache")).await.expect("deprovision");
}

#[tokio::test]
async fn deprovision_removes_the_user_its_connections_and_its_keys() {
    let addons = addons_at(&admin_url());
    let project = project();
    let vars = addons.provision(&project, &name("redis")).await.expect("provision");
    let user = RedisAddons::user(&project, &name("redis"));
    let mut app = connect(url(&vars));
    // More keys than one SCAN batch.
    for i in 0..450 {
        let () = app.set(format!("{}k{i}", prefix(&vars)), i).expect("write");
    }
    let () = admin().set(format!("pt_{project}_redisx:kept"), "another prefix").expect("write");
    assert!(user_exists(&user));
    assert_eq!(keys_under(prefix(&vars)).len(), 450);

    addons.deprovision(&project, &name("redis")).await.expect("deprovision");
    assert!(!user_exists(&user), "the user is gone");
    assert!(keys_under(prefix(&vars)).is_empty(), "its keys are gone");
    assert_eq!(keys_under(&format!("pt_{project}_redisx:")).len(), 1, "a prefix that only starts alike is kept");
    // The app's open connection is closed, and its password no longer logs in.
    assert!(app.get::<_, Option<String>>(format!("{}k1", prefix(&vars))).is_err(), "the connection is closed");
    assert!(redis::Client::open(url(&vars)).expect("url").get_connection().is_err(), "the login is refused");
    // Nothing left to remove is not an error: a failed create is undone this way.
    addons.deprovision(&project, &name("redis")).await.expect("deprovision again");
    let () = admin().del(format!("pt_{project}_redisx:kept")).expect("cleanup");
}

#[tokio::test]
async fn backup_destroy_create_restore_brings_the_keys_and_their_ttls_back() {
    let addons = addons_at(&admin_url());
    let (project, other) = (project(), project());
    let vars = addons.provision(&project, &name("redis")).await.expect("provision");
    let p = prefix(&vars).to_owned();
    let mut app = connect(url(&vars));
    for i in 0..450 {
        let () = app.set(format!("{p}n{i}"), format!("value {i}")).expect("write");
    }
    let () = app.set_ex(format!("{p}session"), "expiring", 3600).expect("write with a ttl");
    let () = app.hset(format!("{p}user:1"), "email", "ada@example.com").expect("hash");
    let () = app.rpush(format!("{p}queue"), &["a", "b", "c"]).expect("list");
    let () = app.zadd(format!("{p}scores"), "ada", 42).expect("sorted set");
    let () = app.set(format!("{p}bin"), vec![0u8, 255, 10, 13]).expect("binary value");

    let mut dump = Vec::new();
    addons.backup(&project, &name("redis"), &vars, &mut dump).await.expect("backup");
    assert!(dump.starts_with(BACKUP_MAGIC), "the magic header");
    assert!(!dump.windows(p.len()).any(|w| w == p.as_bytes()), "keys are written without the prefix");

    addons.deprovision(&project, &name("redis")).await.expect("destroy");
    let vars = addons.provision(&project, &name("redis")).await.expect("create again");
    assert!(keys_under(&p).is_empty(), "the new add-on is empty");
    let mut app = connect(url(&vars));
    let () = app.set(format!("{p}made-after"), "replaced by the restore").expect("write");

    addons.restore(&project, &name("redis"), &vars, &mut dump.as_slice()).await.expect("restore");
    assert_eq!(keys_under(&p).len(), 455, "the backup's keys, and only them");
    assert_eq!(app.get::<_, String>(format!("{p}n42")).expect("read"), "value 42");
    let ttl: i64 = app.ttl(format!("{p}session")).expect("TTL");
    assert!((3500..=3600).contains(&ttl), "the ttl is kept: {ttl}");
    assert_eq!(app.ttl::<_, i64>(format!("{p}n1")).expect("TTL"), -1, "no ttl stays none");
    assert_eq!(app.hget::<_, _, String>(format!("{p}user:1"), "email").expect("hash"), "ada@example.com");
    assert_eq!(app.lrange::<_, Vec<String>>(format!("{p}queue"), 0, -1).expect("list"), ["a", "b", "c"]);
    assert_eq!(app.zscore::<_, _, i64>(format!("{p}scores"), "ada").expect("zset"), 42);
    assert_eq!(app.get::<_, Vec<u8>>(format!("{p}bin")).expect("binary"), [0u8, 255, 10, 13]);
    assert!(keys_under(&format!("pt_{project}_redis!restore:")).is_empty(), "nothing left staged");
    // The restored keys are the add-on user's to write.
    let () = app.set(format!("{p}n42"), "after").expect("write after restore");

    // The same backup restored into another project's add-on lands under that one's prefix.
    let other_vars = addons.provision(&other, &name("copy")).await.expect("provision another");
    addons.restore(&other, &name("copy"), &other_vars, &mut dump.as_slice()).await.expect("restore elsewhere");
    assert_eq!(keys_under(prefix(&other_vars)).len(), 455);
    assert_eq!(
        connect(url(&other_vars)).get::<_, String>(format!("{}n42", prefix(&other_vars))).expect("read"),
        "value 42"
    );
    assert_eq!(app.get::<_, String>(format!("{p}n42")).expect("read"), "after", "the source is untouched");

    addons.deprovision(&project, &name("redis")).await.expect("deprovision");
    addons.deprovision(&other, &name("copy")).await.expect("deprovision");
}

#[tokio::test]
async fn a_restore_input_that_is_not_a_whole_backup_is_refused_and_changes_nothing() {
    let addons = addons_at(&admin_url());
    let project = project();
    let vars = addons.provision(&project, &name("redis")).await.expect("provision");
    let p = prefix(&vars).to_owned();
    let mut app = connect(url(&vars));
    let () = app.set(format!("{p}kept"), "1").expect("write");
    let mut dump = Vec::new();
    addons.backup(&project, &name("redis"), &vars, &mut dump).await.expect("backup");
    let () = app.set(format!("{p}later"), "2").expect("write");

    // The backup's record, then one whose payload is not a DUMP: Redis checks its checksum.
    let mut forged = dump[..dump.len() - 9].to_vec();
    forged.extend_from_slice(&[b'K', 0, 0, 0, 1, b'x', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, b'b', b'a', b'd']);
    forged.extend_from_slice(&[b'E', 0, 0, 0, 0, 0, 0, 0, 2]);
    let cases: [(&[u8], &str); 5] = [
        (b"", "not a PaaSTech Redis backup"),
        (b"PGDMP\x01\x0e", "not a PaaSTech Redis backup"),
        (b"SET pt_x:y z\r\n", "not a PaaSTech Redis backup"),
        (&dump[..dump.len() - 9], "cut short"),
        (&forged, "redis refused record 2 of the backup (key \"x\")"),
    ];
    for (input, expected) in cases {
        let err = addons.restore(&project, &name("redis"), &vars, &mut &input[..]).await.expect_err(expected);
        assert!(matches!(err, Error::Invalid(_)), "{expected}: {err:?}");
        assert!(err.to_string().contains(expected), "{expected}: {err}");
        assert_eq!(keys_under(&p), [format!("{p}kept"), format!("{p}later")], "{expected}: the data is as it was");
        assert!(keys_under(&format!("pt_{project}_redis!restore:")).is_empty(), "{expected}: nothing left staged");
    }
    addons.deprovision(&project, &name("redis")).await.expect("deprovision");
}

#[tokio::test]
async fn a_server_that_is_down_is_unavailable_and_names_it_not_its_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    // The listener is dropped: nothing answers on that port now.
    let addons = addons_at(&format!("redis://default:hunter2secret@127.0.0.1:{port}"));
    let project = project();
    let err = addons.provision(&project, &name("redis")).await.expect_err("down");
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(!err.to_string().contains("hunter2secret"), "{err}");
    let err = addons.deprovision(&project, &name("redis")).await.expect_err("down");
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn a_server_that_refuses_the_operators_user_leaves_no_user_behind() {
    // An operator's user that may read and write keys but not manage users.
    let limited = format!("pt-limited-{}", std::process::id());
    let () = redis::cmd("ACL")
        .arg(&["SETUSER", &limited, "reset", "on", ">limitedpw", "~*", "&*", "+@all", "-@admin"])
        .query(&mut admin())
        .expect("making the limited user");
    let server = admin_url().rsplit_once('@').map(|(_, server)| server.to_owned()).expect("a server");
    let addons = addons_at(&format!("redis://{limited}:limitedpw@{server}"));

    let project = project();
    let err = addons.provision(&project, &name("redis")).await.expect_err("no ACL rights");
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("refused ACL"), "{err}");
    assert!(!user_exists(&RedisAddons::user(&project, &name("redis"))), "nothing half made");
    let _: i64 = redis::cmd("ACL").arg("DELUSER").arg(&limited).query(&mut admin()).expect("cleanup");
}

#[tokio::test]
async fn a_backup_reads_from_the_configured_server_whatever_host_the_project_config_names() {
    let addons = addons_at(&admin_url());
    let project = project();
    let vars = addons.provision(&project, &name("redis")).await.expect("provision");
    let () = connect(url(&vars)).set(format!("{}k", prefix(&vars)), "v").expect("write");
    // The project's owner may edit REDIS_URL: the platform must not connect where it says.
    let server = admin_url().rsplit_once('@').map(|(_, server)| server.to_owned()).expect("a server");
    let mut edited = vars.clone();
    edited.insert(REDIS_URL.to_owned(), url(&vars).replace(&server, "192.0.2.1:6379"));
    let mut dump = Vec::new();
    addons.backup(&project, &name("redis"), &edited, &mut dump).await.expect("backup from the configured server");
    assert!(dump.windows(2).any(|w| w == b"\x01k"), "the key is in the backup");

    let mut no_url = vars.clone();
    no_url.remove(REDIS_URL);
    let err = addons.backup(&project, &name("redis"), &no_url, &mut Vec::new()).await.expect_err("no REDIS_URL");
    assert!(matches!(err, Error::Invalid(_)) && err.to_string().contains("has no REDIS_URL"), "{err:?}");
    addons.deprovision(&project, &name("redis")).await.expect("deprovision");
}
