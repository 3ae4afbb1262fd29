//! Redis add-ons (`[addons.redis] url = "redis://default:PASSWORD@host:port"`): on a Redis
//! 6.2+ server the operator runs (6.2 brought channel rules), each add-on is an ACL user
//! with a random password that may touch only the keys and channels of its own prefix,
//! with a safe set of commands ([`ACL_COMMANDS`]). The app gets `REDIS_URL` and
//! `REDIS_KEY_PREFIX`. Backups stream the prefix's keys (`DUMP` and `PTTL` as the add-on's
//! user) in a format of this crate (see `backup.rs`); restores write them back with
//! `RESTORE`, which the add-on's user may not run, as the operator's user, under the prefix
//! only.
//!
//! This is the only crate that knows Redis add-ons; core sees an [`AddonKind`].

mod backup;
mod url;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use paastech_core::addons::{AddonKind, AddonName, BackupReader, BackupWriter};
use paastech_core::registry::{DriverContext, DriverOptions};
use paastech_core::{EnvVars, Error, ProjectName, Result};
use rand::Rng;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

pub use crate::backup::MAGIC as BACKUP_MAGIC;
pub use crate::url::RedisUrl;

/// The config var holding the add-on user's URL, as on Heroku.
pub const REDIS_URL: &str = "REDIS_URL";
/// The config var holding the prefix every key of the app must start with (`pt_blog_redis:`).
pub const REDIS_KEY_PREFIX: &str = "REDIS_KEY_PREFIX";

/// The commands an add-on's user may run, after its own keys (`~PREFIX*`) and channels
/// (`&PREFIX*`): everything but
/// - `@admin` and `@dangerous` (CONFIG, ACL, DEBUG, FLUSHALL, FLUSHDB, KEYS, INFO, CLIENT
///   LIST/KILL, MONITOR, RESTORE, SORT, SWAPDB, MIGRATE, SHUTDOWN, …);
/// - scripting beyond `EVAL`/`EVALSHA` (and their `_RO`) and `SCRIPT LOAD|EXISTS`: functions
///   and `SCRIPT FLUSH|KILL|DEBUG` act on every user's scripts;
/// - `SCAN` and `RANDOMKEY`: Redis does not filter them by key pattern, so they would show
///   other add-ons' key names;
/// - `SELECT`, `MOVE`, `COPY`: an add-on lives in database 0, where destroy and backup find
///   its keys;
/// - `PUBSUB` (lists every channel) and `MEMORY` but `MEMORY USAGE` (server-wide figures).
///
/// Commands run by a script are checked against the same rules.
pub const ACL_COMMANDS: &[&str] = &[
    "+@all",
    "-@admin",
    "-@dangerous",
    "-@scripting",
    "+eval",
    "+evalsha",
    "+eval_ro",
    "+evalsha_ro",
    "+script|load",
    "+script|exists",
    "-scan",
    "-randomkey",
    "-select",
    "-move",
    "-copy",
    "-pubsub",
    "-memory",
    "+memory|usage",
];

/// How long the server may take to accept a connection before it counts as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one command may take.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Keys asked for per `SCAN` step: each batch of a backup is held in memory at once.
const SCAN_BATCH: usize = 200;
/// The most bytes of keys and payloads a restore sends in one pipeline (a larger record
/// goes alone).
const RESTORE_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Keys of `[addons.redis]`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RedisOptions {
    /// The server, as a user that may run `ACL SETUSER|DELUSER|GETUSER`, `SCAN`, `UNLINK`,
    /// `RESTORE` and `RENAME` on every key (the `default` user of a server with
    /// `requirepass`).
    pub url: String,
}

/// `[addons.redis]`, checked.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub server: RedisUrl,
}

impl DriverOptions<dyn AddonKind> for RedisOptions {
    type Config = RedisConfig;

    fn config(self, _context: &DriverContext) -> Result<RedisConfig> {
        Ok(RedisConfig { server: RedisUrl::parse(&self.url)? })
    }

    fn build(config: RedisConfig) -> Result<Arc<dyn AddonKind>> {
        Ok(Arc::new(RedisAddons::new(config)))
    }
}

pub struct RedisAddons {
    config: RedisConfig,
}

impl RedisAddons {
    pub fn new(config: RedisConfig) -> Self {
        RedisAddons { config }
    }

    /// The ACL user's name: `pt_<project>_<addon>`. Both parts are validated names
    /// (lowercase letters, digits, hyphens; no underscore), so the name is unambiguous and
    /// holds nothing the ACL syntax or a URL would read specially.
    pub fn user(project: &ProjectName, name: &AddonName) -> String {
        format!("pt_{project}_{name}")
    }

    /// The prefix of every key (and channel) of the add-on: `pt_<project>_<addon>:`. The
    /// colon ends it, so no add-on's prefix starts another's.
    pub fn key_prefix(project: &ProjectName, name: &AddonName) -> String {
        format!("{}:", Self::user(project, name))
    }

    /// Where a restore puts keys until the whole backup has been read: outside the
    /// add-on's prefix (the user cannot see them), and no add-on's prefix (`!` is in no
    /// name).
    fn staging_prefix(project: &ProjectName, name: &AddonName) -> String {
        format!("{}!restore:", Self::user(project, name))
    }

    async fn admin(&self) -> Result<MultiplexedConnection> {
        connect(self.config.server.as_secret_str(), &self.config.server.hostport).await
    }

    fn refused(&self, what: &str, err: &redis::RedisError) -> Error {
        refused(&self.config.server.hostport, what, err)
    }

    /// Unlinks every key matching `prefix*`, a `SCAN` batch at a time (never `KEYS`, which
    /// blocks the server for the whole keyspace).
    async fn delete_prefixed(&self, conn: &mut MultiplexedConnection, prefix: &str) -> Result<u64> {
        let mut deleted = 0;
        let mut cursor = 0u64;
        loop {
            let (next, keys) = scan(conn, cursor, prefix).await.map_err(|err| self.refused("SCAN", &err))?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(conn)
                    .await
                    .map_err(|err| self.refused("UNLINK", &err))?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// Reads the backup into the staging prefix; any error leaves the add-on's own keys
    /// as they were (the staged ones are removed).
    async fn stage(&self, conn: &mut MultiplexedConnection, staging: &str, input: BackupReader<'_>) -> Result<u64> {
        let mut reader = backup::Reader::open(input).await?;
        self.delete_prefixed(conn, staging).await?;
        let mut count = 0;
        let staged = async {
            // RESTOREs go in pipelines of a batch of records each: one round trip per
            // batch, not per key, with at most RESTORE_BATCH_BYTES held (or one record).
            let mut batch: Vec<backup::Record> = Vec::new();
            let mut batch_bytes = 0;
            loop {
                let record = reader.next().await?;
                let end = record.is_none();
                if let Some(record) = record {
                    batch_bytes += record.key.len() + record.payload.len();
                    batch.push(record);
                }
                if !batch.is_empty() && (end || batch.len() >= SCAN_BATCH || batch_bytes >= RESTORE_BATCH_BYTES) {
                    count += self.restore_batch(conn, staging, &batch, count).await?;
                    batch.clear();
                    batch_bytes = 0;
                }
                if end {
                    return Ok(count);
                }
            }
        }
        .await;
        if staged.is_err()
            && let Err(err) = self.delete_prefixed(conn, staging).await
        {
            tracing::error!(prefix = %staging, error = %err, "a failed redis restore left staged keys");
        }
        staged
    }

    /// `RESTORE`s one batch under `staging`; `before` records came before it (for the
    /// error's record number).
    async fn restore_batch(
        &self,
        conn: &mut MultiplexedConnection,
        staging: &str,
        batch: &[backup::Record],
        before: u64,
    ) -> Result<u64> {
        let mut pipe = redis::pipe();
        for record in batch {
            let mut key = staging.as_bytes().to_vec();
            key.extend_from_slice(&record.key);
            pipe.cmd("RESTORE").arg(key).arg(record.ttl_ms).arg(&record.payload).arg("REPLACE");
        }
        // Each reply on its own: the first refusal names its record.
        let replies: Vec<redis::RedisResult<Value>> =
            pipe.ignore_errors().query_async(conn).await.map_err(|err| self.refused("RESTORE", &err))?;
        for ((number, record), reply) in (before + 1..).zip(batch).zip(replies) {
            match reply {
                Ok(_) => {}
                // The operator's user may not RESTORE: the server refuses, not the input.
                Err(err) if err.code() == Some("NOPERM") || err.code().is_none() => {
                    return Err(self.refused("RESTORE", &err));
                }
                Err(err) => {
                    return Err(Error::Invalid(format!(
                        "redis refused record {number} of the backup (key {:?}): {}: nothing was restored",
                        String::from_utf8_lossy(&record.key),
                        one_line(&err)
                    )));
                }
            }
        }
        Ok(batch.len() as u64)
    }
}

/// A multiplexed connection, its failure named by the server's address (never its URL,
/// which holds a password).
async fn connect(url: &str, hostport: &str) -> Result<MultiplexedConnection> {
    let client = redis::Client::open(url)
        .map_err(|err| Error::Invalid(format!("a redis url for {hostport} does not parse: {}", one_line(&err))))?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    client.get_multiplexed_async_connection_with_config(&config).await.map_err(|err| {
        Error::Unavailable(format!("cannot reach the redis add-on server at {hostport}: {}", one_line(&err)))
    })
}

fn refused(hostport: &str, what: &str, err: &redis::RedisError) -> Error {
    Error::Unavailable(format!("the redis add-on server at {hostport} refused {what}: {}", one_line(err)))
}

fn one_line(err: &dyn std::fmt::Display) -> String {
    err.to_string().lines().next().unwrap_or_default().trim().to_owned()
}

/// `prefix` as a `SCAN MATCH` pattern: the prefix taken literally, then anything.
fn pattern(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 2);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    pattern
}

async fn scan(conn: &mut MultiplexedConnection, cursor: u64, prefix: &str) -> redis::RedisResult<(u64, Vec<Vec<u8>>)> {
    redis::cmd("SCAN")
        .arg(cursor)
        .arg("MATCH")
        .arg(pattern(prefix))
        .arg("COUNT")
        .arg(SCAN_BATCH)
        .query_async(conn)
        .await
}

/// The add-on user's password, from its `REDIS_URL` (`redis://USER:PASSWORD@HOST:PORT`).
fn own_password(credentials: &EnvVars) -> Result<String> {
    let url =
        credentials.get(REDIS_URL).ok_or_else(|| Error::Invalid(format!("the add-on's config has no {REDIS_URL}")))?;
    url.strip_prefix("redis://")
        .and_then(|rest| rest.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password.to_owned())
        .filter(|password| !password.is_empty())
        .ok_or_else(|| Error::Invalid(format!("the add-on's {REDIS_URL} has no password (redis://USER:PASSWORD@HOST)")))
}

/// 32 characters from 62: about 190 bits from the thread's CSPRNG (ChaCha, seeded by the
/// OS). Letters and digits only, so the password needs no escaping in a URL.
fn new_password() -> String {
    rand::rng().sample_iter(rand::distr::Alphanumeric).take(32).map(char::from).collect()
}

#[async_trait]
impl AddonKind for RedisAddons {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn config_keys(&self) -> &'static [&'static str] {
        &[REDIS_URL, REDIS_KEY_PREFIX]
    }

    async fn provision(&self, project: &ProjectName, name: &AddonName) -> Result<EnvVars> {
        let user = Self::user(project, name);
        let prefix = Self::key_prefix(project, name);
        let password = new_password();
        let mut admin = self.admin().await?;
        let existing: Value = redis::cmd("ACL")
            .arg("GETUSER")
            .arg(&user)
            .query_async(&mut admin)
            .await
            .map_err(|err| self.refused("ACL GETUSER", &err))?;
        if existing != Value::Nil {
            return Err(Error::Conflict(format!("a redis user {user:?} already exists")));
        }
        // One command, each rule its own argument: Redis applies all of them or, when one
        // is refused, none, so a failed provision leaves no user.
        let mut setuser = redis::cmd("ACL");
        setuser
            .arg("SETUSER")
            .arg(&user)
            .arg("reset")
            .arg("on")
            .arg(format!(">{password}"))
            .arg(format!("~{}", pattern(&prefix)))
            .arg(format!("&{}", pattern(&prefix)))
            .arg(ACL_COMMANDS);
        let _: Value = setuser.query_async(&mut admin).await.map_err(|err| self.refused("ACL SETUSER", &err))?;

        let mut vars = EnvVars::new();
        vars.insert(REDIS_URL.to_owned(), self.config.server.with_user(&user, &password));
        vars.insert(REDIS_KEY_PREFIX.to_owned(), prefix);
        tracing::info!(project = %project, addon = %name, user = %user, "redis add-on provisioned");
        Ok(vars)
    }

    async fn deprovision(&self, project: &ProjectName, name: &AddonName) -> Result<()> {
        let user = Self::user(project, name);
        let mut admin = self.admin().await?;
        // The user first, so the app can write no more keys (Redis 7 also closes its
        // connections); then its keys, and what a failed restore may have left staged.
        let _: u64 = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&user)
            .query_async(&mut admin)
            .await
            .map_err(|err| self.refused("ACL DELUSER", &err))?;
        let keys = self.delete_prefixed(&mut admin, &Self::key_prefix(project, name)).await?;
        self.delete_prefixed(&mut admin, &Self::staging_prefix(project, name)).await?;
        tracing::info!(project = %project, addon = %name, user = %user, keys, "redis add-on removed");
        Ok(())
    }

    async fn backup(
        &self,
        project: &ProjectName,
        name: &AddonName,
        credentials: &EnvVars,
        out: BackupWriter<'_>,
    ) -> Result<()> {
        let prefix = Self::key_prefix(project, name);
        let hostport = &self.config.server.hostport;
        // The add-on's own user reads the values; SCAN, which it may not run (it would see
        // every add-on's key names), runs as the operator's, matching the prefix only.
        // Only the password comes from the project's config, which its owner can edit:
        // the server and the user are this crate's own, so an edited REDIS_URL cannot point
        // the platform at another host.
        let password = own_password(credentials)?;
        let own_url = self.config.server.with_user(&Self::user(project, name), &password);
        let mut own = connect(&own_url, hostport).await?;
        let mut admin = self.admin().await?;
        let write_err = |err| Error::internal("writing the backup", err);
        backup::write_magic(out).await.map_err(write_err)?;
        let mut count = 0u64;
        let mut cursor = 0u64;
        loop {
            let (next, keys) = scan(&mut admin, cursor, &prefix).await.map_err(|err| self.refused("SCAN", &err))?;
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.cmd("PTTL").arg(key).cmd("DUMP").arg(key);
                }
                let values: Vec<Value> = pipe
                    .query_async(&mut own)
                    .await
                    .map_err(|err| refused(hostport, "PTTL or DUMP as the add-on's user", &err))?;
                for (key, pair) in keys.iter().zip(values.chunks(2)) {
                    let [ttl, payload] = pair else {
                        return Err(Error::internal_msg("redis answered fewer replies than commands"));
                    };
                    let ttl: i64 = redis::from_redis_value_ref(ttl)
                        .map_err(|err| Error::internal("reading PTTL's answer", err))?;
                    let payload: Option<Vec<u8>> = redis::from_redis_value_ref(payload)
                        .map_err(|err| Error::internal("reading DUMP's answer", err))?;
                    let ttl_ms = match ttl {
                        -1 => 0,
                        // Less than a millisecond left reads 0, which RESTORE takes as
                        // "no expiry": keep it expiring.
                        left if left >= 0 => left.max(1).unsigned_abs(),
                        // -2: the key expired or was deleted since SCAN saw it.
                        _ => continue,
                    };
                    let Some(payload) = payload else { continue };
                    let Some(relative) = key.strip_prefix(prefix.as_bytes()) else { continue };
                    backup::write_record(out, relative, ttl_ms, &payload).await.map_err(write_err)?;
                    count += 1;
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        backup::write_end(out, count).await.map_err(write_err)?;
        out.flush().await.map_err(write_err)?;
        tracing::info!(project = %project, addon = %name, keys = count, "redis add-on backed up");
        Ok(())
    }

    async fn restore(
        &self,
        project: &ProjectName,
        name: &AddonName,
        _credentials: &EnvVars,
        input: BackupReader<'_>,
    ) -> Result<()> {
        let prefix = Self::key_prefix(project, name);
        let staging = Self::staging_prefix(project, name);
        let hostport = &self.config.server.hostport;
        // RESTORE and RENAME are beyond the add-on's user (RESTORE is @dangerous): the
        // operator's user runs them, on keys this crate names under the prefix only.
        let mut admin = self.admin().await?;
        let count = self.stage(&mut admin, &staging, input).await?;
        // The whole backup is staged: now replace the add-on's keys with it.
        let removed = self.delete_prefixed(&mut admin, &prefix).await?;
        let mut cursor = 0u64;
        loop {
            let (next, keys) = scan(&mut admin, cursor, &staging).await.map_err(|err| self.refused("SCAN", &err))?;
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                for key in &keys {
                    let Some(relative) = key.strip_prefix(staging.as_bytes()) else { continue };
                    let mut target = prefix.as_bytes().to_vec();
                    target.extend_from_slice(relative);
                    pipe.cmd("RENAME").arg(key).arg(target);
                }
                let replies: Vec<redis::RedisResult<Value>> = pipe
                    .ignore_errors()
                    .query_async(&mut admin)
                    .await
                    .map_err(|err| self.refused("RENAME of the restored keys", &err))?;
                for reply in replies {
                    match reply {
                        Ok(_) => {}
                        // SCAN may answer a key twice; the first RENAME moved it already.
                        Err(err) if err.detail().is_some_and(|detail| detail.contains("no such key")) => {}
                        Err(err) => {
                            return Err(Error::Unavailable(format!(
                                "the redis add-on server at {hostport} refused RENAME of a restored key, part of the \
                                 backup is restored and the rest is under {staging}: {}",
                                one_line(&err)
                            )));
                        }
                    }
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        tracing::info!(project = %project, addon = %name, keys = count, removed, "redis add-on restored");
        Ok(())
    }
}
