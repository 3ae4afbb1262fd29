//! The SQL store: the one implementation of [`paastech_core::Store`], on SQLite or
//! PostgreSQL through diesel. The only crate that knows SQL.
//!
//! diesel is synchronous, so every trait method checks a connection out of an r2d2 pool and
//! runs its queries on tokio's blocking pool. The query code exists once: the `with_conn!`
//! macro expands the same diesel body for a `SqliteConnection` and a `PgConnection`, which
//! keeps both backends in step and type-checked.
//!
//! Config vars (a project's env and each deployment's snapshot of it) are sealed with the
//! operator's key before they are written and opened when read (`secrets`): the database
//! alone reveals no value.

mod conn;
mod error;
mod rows;
mod schema;
mod secrets;
mod snapshot;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use paastech_core::drivers::Limits;
use paastech_core::mail::EmailPurpose;
use paastech_core::store::EnvChanges;
use paastech_core::{
    Addon, AddonName, ApiToken, Build, BuildStatus, Deployment, DeploymentStatus, Domain, EnvVars, Error, Hostname,
    HttpsPolicy, NewDeployment, Project, ProjectName, Result, SshKey, Stopped, Store, Timestamp, TotpEnrolment, User,
    Webhook, WebhookAttempt, WebhookEvent,
};
use paastech_core::{AuditEvent, AuditRecord, AuditScope, Collaborator, CronJob, CronRun, Role, SleepState};

pub use crate::conn::{MigrationPlan, migration_plan};
use crate::conn::{Pools, write_tx};
use crate::error::{StoreError, conflict_on_unique, missing_or_taken, not_found, not_found_on_fk};
use crate::rows::*;
use crate::schema::*;
pub use crate::secrets::{Keyring, Rotation, pending_path, rotate_key};
pub use crate::snapshot::{DatabaseKind, restore_snapshot, snapshot};

/// The SQL store. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct SqlStore {
    pools: Pools,
    keyring: Arc<Keyring>,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore").field("backend", &self.backend()).finish()
    }
}

impl SqlStore {
    /// `"sqlite"` or `"postgres"`, for logs and diagnostics.
    pub fn backend(&self) -> &'static str {
        match self.pools {
            Pools::Sqlite(_) => "sqlite",
            Pools::Postgres(_) => "postgres",
        }
    }
}

/// Runs `$body` on a pooled connection named `$conn`, on this thread (at open).
macro_rules! on_conn {
    ($pools:expr, |$conn:ident| $body:expr) => {{
        let result: std::result::Result<_, StoreError> = (|| match &$pools {
            Pools::Sqlite(pool) => {
                let mut pooled = pool.get()?;
                let $conn: &mut SqliteConnection = &mut pooled;
                $body
            }
            Pools::Postgres(pool) => {
                let mut pooled = pool.get()?;
                let $conn: &mut PgConnection = &mut pooled;
                $body
            }
        })();
        result.map_err(Error::from)
    }};
}

/// The key ids that sealed stored values and that `$keyring` does not hold, sorted.
macro_rules! unknown_key_ids {
    ($conn:ident, $keyring:expr) => {{
        let mut ids: Vec<Option<String>> = env_vars::table.select(env_vars::key_id).distinct().load($conn)?;
        ids.extend(deployments::table.select(deployments::config_key_id).distinct().load::<Option<String>>($conn)?);
        ids.extend(
            webhooks::table.select(webhooks::secret_key_id).distinct().load::<String>($conn)?.into_iter().map(Some),
        );
        ids.extend(user_totp::table.select(user_totp::key_id).distinct().load::<String>($conn)?.into_iter().map(Some));
        let mut unknown: Vec<String> = ids.into_iter().flatten().filter(|id| !$keyring.holds(id)).collect();
        unknown.sort();
        unknown.dedup();
        unknown
    }};
}

/// Seals stored config values with `$keyring`'s first key, in one write transaction: those
/// still in the clear when `$only_plain`, else every one not sealed with that key yet.
/// Returns how many env vars and deployment snapshots it sealed.
macro_rules! reseal {
    ($conn:ident, $keyring:expr, $only_plain:expr) => {{
        let keyring: &Keyring = $keyring;
        let primary = keyring.key_id().to_owned();
        write_tx($conn, |conn| {
            let mut count = 0u64;
            let vars = env_vars::table
                .inner_join(projects::table)
                .filter(env_vars::key_id.is_null().or(env_vars::key_id.ne(&primary)))
                .select((env_vars::project_id, env_vars::key, env_vars::value, env_vars::key_id, projects::name))
                .load::<(i64, String, String, Option<String>, String)>(conn)?;
            for (project_id, var, value, key_id, project) in vars {
                let plain = match key_id {
                    None => value,
                    Some(_) if $only_plain => continue,
                    Some(key_id) => keyring.open(&key_id, &project, &var, &value)?,
                };
                diesel::update(
                    env_vars::table.filter(env_vars::project_id.eq(project_id)).filter(env_vars::key.eq(&var)),
                )
                .set((env_vars::value.eq(keyring.seal(&project, &var, &plain)?), env_vars::key_id.eq(&primary)))
                .execute(conn)?;
                count += 1;
            }
            let snapshots = deployments::table
                .inner_join(projects::table)
                .filter(deployments::config_key_id.is_null().or(deployments::config_key_id.ne(&primary)))
                .select((deployments::id, deployments::config, deployments::config_key_id, projects::name))
                .load::<(i64, String, Option<String>, String)>(conn)?;
            for (id, config, key_id, project) in snapshots {
                if $only_plain && key_id.is_some() {
                    continue;
                }
                let plain = open_config(&config, key_id.as_deref(), &project, keyring)?;
                diesel::update(deployments::table.find(id))
                    .set((
                        deployments::config.eq(seal_config(&plain, &project, keyring)?),
                        deployments::config_key_id.eq(&primary),
                    ))
                    .execute(conn)?;
                count += 1;
            }
            // Webhook secrets are sealed from the start: only a rotation has any to reseal.
            let secrets = webhooks::table
                .inner_join(projects::table)
                .filter(webhooks::secret_key_id.ne(&primary))
                .select((webhooks::id, webhooks::secret, webhooks::secret_key_id, projects::name))
                .load::<(i64, String, String, String)>(conn)?;
            for (id, secret, key_id, project) in secrets {
                if $only_plain {
                    break;
                }
                let plain = keyring.open(&key_id, &project, WEBHOOK_SECRET_VAR, &secret)?;
                diesel::update(webhooks::table.find(id))
                    .set((
                        webhooks::secret.eq(keyring.seal(&project, WEBHOOK_SECRET_VAR, &plain)?),
                        webhooks::secret_key_id.eq(&primary),
                    ))
                    .execute(conn)?;
                count += 1;
            }
            // TOTP secrets too are sealed from the start.
            let totp = user_totp::table
                .filter(user_totp::key_id.ne(&primary))
                .select((user_totp::user_id, user_totp::secret, user_totp::key_id))
                .load::<(i64, String, String)>(conn)?;
            for (user_id, secret, key_id) in totp {
                if $only_plain {
                    break;
                }
                let label = totp_secret_label(user_id);
                let plain = keyring.open(&key_id, "", &label, &secret)?;
                diesel::update(user_totp::table.find(user_id))
                    .set((user_totp::secret.eq(keyring.seal("", &label, &plain)?), user_totp::key_id.eq(&primary)))
                    .execute(conn)?;
                count += 1;
            }
            Ok(count)
        })
    }};
}

/// What a user's TOTP secret is sealed for, with an empty project name (no project has
/// one): a secret copied into another user's row, or into a config var, does not open.
fn totp_secret_label(user_id: i64) -> String {
    format!("totp-secret:{user_id}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// The var name a webhook's secret is sealed for (with its project's name): a secret
/// copied into an env var's row, or into another project's webhook, does not open.
const WEBHOOK_SECRET_VAR: &str = "webhook-secret";

/// `NotFound` unless the project has this webhook; inside a query body.
macro_rules! ensure_webhook {
    ($conn:ident, $project_id:expr, $webhook_id:expr) => {
        webhooks::table
            .filter(webhooks::project_id.eq($project_id))
            .filter(webhooks::id.eq($webhook_id))
            .select(webhooks::id)
            .first::<i64>($conn)
            .optional()?
            .ok_or_else(|| not_found(format!("the project has no webhook {}", $webhook_id)))?
    };
}

/// The name of the project with this id (what its config values are sealed for), or
/// `NotFound`.
macro_rules! project_name {
    ($conn:ident, $project_id:expr) => {
        projects::table
            .find($project_id)
            .select(projects::name)
            .first::<String>($conn)
            .optional()?
            .ok_or_else(|| not_found("project not found"))?
    };
}

/// Runs `$body` on a pooled connection named `$conn`, on the blocking pool. The body is
/// expanded once per backend, so it must be plain diesel that both backends accept. It
/// returns `Result<_, StoreError>`; captured values must be owned (the closure is `move`).
macro_rules! with_conn {
    ($store:expr, |$conn:ident| $body:expr) => {{
        let pools = $store.pools.clone();
        let joined = tokio::task::spawn_blocking(move || -> std::result::Result<_, StoreError> {
            match pools {
                Pools::Sqlite(pool) => {
                    let mut pooled = pool.get()?;
                    let $conn: &mut SqliteConnection = &mut pooled;
                    $body
                }
                Pools::Postgres(pool) => {
                    let mut pooled = pool.get()?;
                    let $conn: &mut PgConnection = &mut pooled;
                    $body
                }
            }
        })
        .await;
        match joined {
            Ok(result) => result.map_err(Error::from),
            Err(e) => Err(Error::internal("database task failed", e)),
        }
    }};
}

/// `NotFound` unless the project exists; inside a transaction, before writing its rows.
macro_rules! ensure_project {
    ($conn:ident, $project_id:expr) => {
        projects::table
            .find($project_id)
            .select(projects::id)
            .first::<i64>($conn)
            .optional()?
            .ok_or_else(|| not_found("project not found"))?
    };
}

/// Applies `$changes` (an `&EnvChanges`) to the env vars of the project `$project_id`
/// named `$project`, each value sealed with `$keyring`; inside a transaction.
macro_rules! apply_env_changes {
    ($conn:ident, $keyring:expr, $project_id:expr, $project:expr, $changes:expr) => {
        for (key, value) in $changes {
            diesel::delete(env_vars::table.filter(env_vars::project_id.eq($project_id)).filter(env_vars::key.eq(key)))
                .execute($conn)?;
            if let Some(value) = value {
                diesel::insert_into(env_vars::table)
                    .values((
                        env_vars::project_id.eq($project_id),
                        env_vars::key.eq(key),
                        env_vars::value.eq($keyring.seal($project, key, value)?),
                        env_vars::key_id.eq($keyring.key_id()),
                    ))
                    .execute($conn)?;
            }
        }
    };
}

/// The project's env vars, opened; inside a query body.
macro_rules! load_env {
    ($conn:ident, $keyring:expr, $project_id:expr, $project:expr) => {{
        let rows = env_vars::table
            .filter(env_vars::project_id.eq($project_id))
            .select((env_vars::key, env_vars::value, env_vars::key_id))
            .load::<(String, String, Option<String>)>($conn)?;
        let mut env = EnvVars::new();
        for (var, value, key_id) in rows {
            let value = match key_id {
                Some(key_id) => $keyring.open(&key_id, $project, &var, &value)?,
                // Written in the clear before values were sealed; `open` seals those.
                None => value,
            };
            env.insert(var, value);
        }
        env
    }};
}

/// The deployment row with this id, or `NotFound`.
macro_rules! deployment_row {
    ($conn:ident, $deployment_id:expr) => {
        deployments::table
            .find($deployment_id)
            .select(DeploymentRow::as_select())
            .first($conn)
            .optional()?
            .ok_or_else(|| not_found("deployment not found"))?
    };
}

impl SqlStore {
    /// Opens the database at `url` and brings its schema up to date.
    ///
    /// Accepted: `sqlite:///absolute/path.db`, `sqlite://relative/path.db` (the parent
    /// directory is created), `postgres://…` and `postgresql://…` (libpq connection URLs).
    /// Anything else is `Error::Invalid`; a database that cannot be reached is
    /// `Error::Unavailable`. Blocks while it connects and migrates: call it at startup.
    ///
    /// Config vars are sealed with `keyring`'s first key and opened with whichever of its
    /// keys sealed them. A database holding values sealed with a key the keyring lacks is
    /// refused (`Error::Invalid`, naming the key files): it was opened with the wrong key
    /// file. Values still in the clear (written before they were sealed) are sealed now, in
    /// one transaction, so an interrupted open leaves them as they were and the next one
    /// seals them.
    pub fn open(url: &str, keyring: Keyring) -> Result<SqlStore> {
        let store = SqlStore { pools: conn::open(url)?, keyring: Arc::new(keyring) };
        let keyring = &*store.keyring;
        let unknown = on_conn!(store.pools, |conn| Ok(unknown_key_ids!(conn, keyring)))?;
        if !unknown.is_empty() {
            return Err(Error::Invalid(format!(
                "the database holds config vars sealed with key {}, which the secrets key file {} does not hold: \
                 start with the key file they were sealed with (restore it from a backup); without it they cannot be read",
                unknown.join(", "),
                keyring.describe()
            )));
        }
        let sealed = on_conn!(store.pools, |conn| reseal!(conn, keyring, true))?;
        if sealed > 0 {
            tracing::info!(count = sealed, "sealed config values that were stored in the clear");
        }
        Ok(store)
    }

    /// Seals every config value again with the keyring's first key, in one transaction;
    /// returns how many vars and snapshots it sealed. For `rotate_key`.
    pub(crate) fn reseal_all(&self) -> Result<u64> {
        let keyring = &*self.keyring;
        on_conn!(self.pools, |conn| reseal!(conn, keyring, false))
    }
}

/// How precisely a token's last use is kept.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;

fn now() -> i64 {
    Timestamp::now().0
}

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> Result<()> {
        with_conn!(self, |conn| {
            diesel::sql_query("SELECT 1").execute(conn)?;
            Ok(())
        })
    }

    async fn create_user(&self, email: &str, password_hash: &str) -> Result<User> {
        let (email, password_hash) = (email.to_owned(), password_hash.to_owned());
        with_conn!(self, |conn| {
            // Count and insert in one write transaction: of two first sign-ups racing,
            // exactly one sees an empty table.
            write_tx(conn, |conn| {
                let is_admin = users::table.count().get_result::<i64>(conn)? == 0;
                let row = diesel::insert_into(users::table)
                    .values(NewUserRow { email: &email, password_hash: &password_hash, is_admin, created_at: now() })
                    .returning(UserRow::as_returning())
                    .get_result(conn)
                    .map_err(conflict_on_unique("email already registered"))?;
                Ok(User::from(row))
            })
        })
    }

    async fn user(&self, id: i64) -> Result<User> {
        with_conn!(self, |conn| {
            let row = users::table
                .find(id)
                .select(UserRow::as_select())
                .first(conn)
                .optional()?
                .ok_or_else(|| not_found("user not found"))?;
            Ok(User::from(row))
        })
    }

    async fn user_by_email(&self, email: &str) -> Result<(User, String)> {
        let email = email.to_owned();
        with_conn!(self, |conn| {
            let row = users::table
                .filter(users::email.eq(&email))
                .select(UserRow::as_select())
                .first(conn)
                .optional()?
                .ok_or_else(|| not_found("no user with this email"))?;
            let hash = row.password_hash.clone();
            Ok((User::from(row), hash))
        })
    }

    async fn set_email_verified(&self, user_id: i64, verified: bool) -> Result<()> {
        with_conn!(self, |conn| {
            let changed =
                diesel::update(users::table.find(user_id)).set(users::email_verified.eq(verified)).execute(conn)?;
            if changed == 0 {
                return Err(not_found("user not found"));
            }
            Ok(())
        })
    }

    async fn set_password(&self, user_id: i64, password_hash: &str) -> Result<()> {
        let password_hash = password_hash.to_owned();
        with_conn!(self, |conn| {
            let changed = diesel::update(users::table.find(user_id))
                .set(users::password_hash.eq(&password_hash))
                .execute(conn)?;
            if changed == 0 {
                return Err(not_found("user not found"));
            }
            Ok(())
        })
    }

    async fn create_email_token(
        &self,
        user_id: i64,
        purpose: EmailPurpose,
        token_hash: &str,
        expires_at: Timestamp,
    ) -> Result<()> {
        let token_hash = token_hash.to_owned();
        with_conn!(self, |conn| {
            write_tx(conn, |conn| {
                diesel::delete(
                    email_tokens::table
                        .filter(email_tokens::user_id.eq(user_id))
                        .filter(email_tokens::purpose.eq(purpose.as_str()))
                        .filter(email_tokens::used_at.is_null()),
                )
                .execute(conn)?;
                diesel::insert_into(email_tokens::table)
                    .values((
                        email_tokens::user_id.eq(user_id),
                        email_tokens::purpose.eq(purpose.as_str()),
                        email_tokens::token_hash.eq(&token_hash),
                        email_tokens::created_at.eq(now()),
                        email_tokens::expires_at.eq(expires_at.0),
                    ))
                    .execute(conn)
                    .map_err(not_found_on_fk("user not found"))?;
                Ok(())
            })
        })
    }

    async fn use_email_token(&self, purpose: EmailPurpose, token_hash: &str, now: Timestamp) -> Result<User> {
        let token_hash = token_hash.to_owned();
        with_conn!(self, |conn| {
            write_tx(conn, |conn| {
                // One UPDATE decides: of two uses racing, one changes the row, the other
                // finds it used.
                let used = diesel::update(
                    email_tokens::table
                        .filter(email_tokens::token_hash.eq(&token_hash))
                        .filter(email_tokens::purpose.eq(purpose.as_str()))
                        .filter(email_tokens::used_at.is_null())
                        .filter(email_tokens::expires_at.gt(now.0)),
                )
                .set(email_tokens::used_at.eq(now.0))
                .returning(email_tokens::user_id)
                .get_result::<i64>(conn)
                .optional()?
                .ok_or_else(|| not_found("the link is unknown, used or expired"))?;
                let row = users::table.find(used).select(UserRow::as_select()).first(conn)?;
                Ok(User::from(row))
            })
        })
    }

    async fn totp(&self, user_id: i64) -> Result<Option<TotpEnrolment>> {
        let keyring = Arc::clone(&self.keyring);
        with_conn!(self, |conn| {
            let row = user_totp::table
                .find(user_id)
                .select((user_totp::secret, user_totp::key_id, user_totp::enabled, user_totp::last_step))
                .first::<(String, String, bool, Option<i64>)>(conn)
                .optional()?;
            let Some((sealed, key_id, enabled, last_step)) = row else {
                return Ok(None);
            };
            let plain = keyring.open(&key_id, "", &totp_secret_label(user_id), &sealed)?;
            let secret = unhex(&plain)
                .ok_or_else(|| Error::internal_msg(format!("the TOTP secret of user {user_id} is not hex")))?;
            let recovery_codes_left: i64 =
                recovery_codes::table.filter(recovery_codes::user_id.eq(user_id)).count().get_result(conn)?;
            Ok(Some(TotpEnrolment { secret, enabled, last_step, recovery_codes_left }))
        })
    }

    async fn start_totp(&self, user_id: i64, secret: &[u8]) -> Result<()> {
        let keyring = Arc::clone(&self.keyring);
        let plain = hex(secret);
        with_conn!(self, |conn| {
            write_tx(conn, |conn| {
                let enabled =
                    user_totp::table.find(user_id).select(user_totp::enabled).first::<bool>(conn).optional()?;
                if enabled == Some(true) {
                    return Err(StoreError::Core(Error::Conflict(
                        "two-factor login is enabled already: disable it first".into(),
                    )));
                }
                diesel::delete(user_totp::table.find(user_id)).execute(conn)?;
                diesel::insert_into(user_totp::table)
                    .values((
                        user_totp::user_id.eq(user_id),
                        user_totp::secret.eq(keyring.seal("", &totp_secret_label(user_id), &plain)?),
                        user_totp::key_id.eq(keyring.key_id()),
                        user_totp::enabled.eq(false),
                        user_totp::created_at.eq(now()),
                    ))
                    .execute(conn)
                    .map_err(not_found_on_fk("user not found"))?;
                Ok(())
            })
        })
    }

    async fn enable_totp(&self, user_id: i64, step: i64, recovery_hashes: &[String]) -> Result<()> {
        let hashes = recovery_hashes.to_vec();
        with_conn!(self, |conn| {
            write_tx(conn, |conn| {
                let changed = diesel::update(user_totp::table.find(user_id).filter(user_totp::enabled.eq(false)))
                    .set((user_totp::enabled.eq(true), user_totp::last_step.eq(step)))
                    .execute(conn)?;
                if changed == 0 {
                    return Err(not_found("no two-factor enrolment is pending: start one first"));
                }
                diesel::delete(recovery_codes::table.filter(recovery_codes::user_id.eq(user_id))).execute(conn)?;
                for hash in &hashes {
                    diesel::insert_into(recovery_codes::table)
                        .values((recovery_codes::user_id.eq(user_id), recovery_codes::code_hash.eq(hash)))
                        .execute(conn)?;
                }
                Ok(())
            })
        })
    }

    async fn use_totp_step(&self, user_id: i64, step: i64) -> Result<bool> {
        with_conn!(self, |conn| {
            let changed = diesel::update(
                user_totp::table
                    .find(user_id)
                    .filter(user_totp::enabled.eq(true))
                    .filter(user_totp::last_step.is_null().or(user_totp::last_step.lt(step))),
            )
            .set(user_totp::last_step.eq(step))
            .execute(conn)?;
            Ok(changed == 1)
        })
    }

    async fn use_recovery_code(&self, user_id: i64, code_hash: &str) -> Result<bool> {
        let code_hash = code_hash.to_owned();
        with_conn!(self, |conn| {
            let deleted = diesel::delete(
                recovery_codes::table
                    .filter(recovery_codes::user_id.eq(user_id))
                    .filter(recovery_codes::code_hash.eq(&code_hash)),
            )
            .execute(conn)?;
            Ok(deleted == 1)
        })
    }

    async fn delete_totp(&self, user_id: i64) -> Result<bool> {
        with_conn!(self, |conn| {
            write_tx(conn, |conn| {
                diesel::delete(recovery_codes::table.filter(recovery_codes::user_id.eq(user_id))).execute(conn)?;
                Ok(diesel::delete(user_totp::table.find(user_id)).execute(conn)? == 1)
            })
        })
    }

    async fn delete_tokens_named(&self, user_id: i64, names: &[&str]) -> Result<usize> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        with_conn!(self, |conn| {
            let deleted = diesel::delete(
                api_tokens::table.filter(api_tokens::user_id.eq(user_id)).filter(api_tokens::name.eq_any(&names)),
            )
            .execute(conn)?;
            Ok(deleted)
        })
    }

    async fn users(&self) -> Result<Vec<User>> {
        with_conn!(self, |conn| {
            let rows = users::table.order(users::id).select(UserRow::as_select()).load(conn)?;
            Ok(rows.into_iter().map(User::from).collect())
        })
    }

    async fn set_user_disabled(&self, user_id: i64, disabled: bool) -> Result<User> {
        with_conn!(self, |conn| {
            write_tx(conn, |conn| {
                let row = diesel::update(users::table.find(user_id))
                    .set(users::disabled.eq(disabled))
                    .returning(UserRow::as_returning())
                    .get_result(conn)
                    .optional()?
                    .ok_or_else(|| not_found("user not found"))?;
                if disabled {
                    // Web sessions are tokens too: every way in ends with the same delete.
                    diesel::delete(api_tokens::table.filter(api_tokens::user_id.eq(user_id))).execute(conn)?;
                }
                Ok(User::from(row))
            })
        })
    }

    async fn delete_user(&self, user_id: i64) -> Result<()> {
        with_conn!(self, |conn| {
            write_tx(conn, |conn| {
                let owned: Vec<String> = projects::table
                    .filter(projects::owner_id.eq(user_id))
                    .order(projects::name)
                    .select(projects::name)
                    .load(conn)?;
                if !owned.is_empty() {
                    return Err(StoreError::Core(Error::Conflict(format!(
                        "the user still owns projects: {}",
                        owned.join(", ")
                    ))));
                }
                diesel::delete(collaborators::table.filter(collaborators::user_id.eq(user_id))).execute(conn)?;
                diesel::delete(api_tokens::table.filter(api_tokens::user_id.eq(user_id))).execute(conn)?;
                diesel::delete(ssh_keys::table.filter(ssh_keys::user_id.eq(user_id))).execute(conn)?;
                diesel::delete(email_tokens::table.filter(email_tokens::user_id.eq(user_id))).execute(conn)?;
                diesel::delete(user_totp::table.find(user_id)).execute(conn)?;
                diesel::delete(recovery_codes::table.filter(recovery_codes::user_id.eq(user_id))).execute(conn)?;
                if diesel::delete(users::table.find(user_id)).execute(conn)? == 0 {
                    return Err(not_found("user not found"));
                }
                Ok(())
            })
        })
    }

    async fn collaborator_role(&self, project_id: i64, user_id: i64) -> Result<Option<Role>> {
        with_conn!(self, |conn| {
            let role = collaborators::table
                .find((project_id, user_id))
                .select(collaborators::role)
                .first::<String>(conn)
                .optional()?;
            match role {
                None => Ok(None),
                Some(role) => Ok(Some(
                    Role::parse(&role).map_err(|_| Error::internal_msg(format!("unknown role {role:?} in store")))?,
                )),
            }
        })
    }

    async fn collaborators(&self, project_id: i64) -> Result<Vec<Collaborator>> {
        with_conn!(self, |conn| {
            let rows = collaborators::table
                .inner_join(users::table)
                .filter(collaborators::project_id.eq(project_id))
                .order((collaborators::created_at, collaborators::user_id))
                .select((collaborators::user_id, users::email, collaborators::role, collaborators::created_at))
                .load::<(i64, String, String, i64)>(conn)?;
            let members = rows
                .into_iter()
                .map(|(user_id, email, role, at)| rows::collaborator(project_id, user_id, email, &role, at))
                .collect::<Result<Vec<_>>>()?;
            Ok(members)
        })
    }

    async fn set_collaborator(&self, project_id: i64, user_id: i64, role: Role) -> Result<Collaborator> {
        with_conn!(self, |conn| {
            write_tx(conn, |conn| {
                ensure_project!(conn, project_id);
                let email = users::table
                    .find(user_id)
                    .select(users::email)
                    .first::<String>(conn)
                    .optional()?
                    .ok_or_else(|| not_found("user not found"))?;
                let changed = diesel::update(collaborators::table.find((project_id, user_id)))
                    .set(collaborators::role.eq(role.as_str()))
                    .execute(conn)?;
                if changed == 0 {
                    diesel::insert_into(collaborators::table)
                        .values(NewCollaboratorRow { project_id, user_id, role: role.as_str(), created_at: now() })
                        .execute(conn)?;
                }
                let created_at = collaborators::table
                    .find((project_id, user_id))
                    .select(collaborators::created_at)
                    .first::<i64>(conn)?;
                Ok(Collaborator { project_id, user_id, email, role, created_at: Timestamp(created_at) })
            })
        })
    }

    async fn remove_collaborator(&self, project_id: i64, user_id: i64) -> Result<()> {
        with_conn!(self, |conn| {
            if diesel::delete(collaborators::table.find((project_id, user_id))).execute(conn)? == 0 {
                return Err(not_found("this user is not a collaborator of the project"));
            }
            Ok(())
        })
    }

    async fn collaborations(&self, user_id: i64) -> Result<Vec<(Project, Role)>> {
        with_conn!(self, |conn| {
            let rows = collaborators::table
                .inner_join(projects::table)
                .filter(collaborators::user_id.eq(user_id))
                .order(projects::name)
                .select((ProjectRow::as_select(), collaborators::role))
                .load::<(ProjectRow, String)>(conn)?;
            let mut projects = Vec::with_capacity(rows.len());
            for (row, role) in rows {
                let role =
                    Role::parse(&role).map_err(|_| Error::internal_msg(format!("unknown role {role:?} in store")))?;
                projects.push((Project::try_from(row)?, role));
            }
            Ok(projects)
        })
    }

    async fn transfer_project(&self, project_id: i64, new_owner_id: i64) -> Result<Project> {
        with_conn!(self, |conn| {
            write_tx(conn, |conn| {
                let old_owner = projects::table
                    .find(project_id)
                    .select(projects::owner_id)
                    .first::<i64>(conn)
                    .optional()?
                    .ok_or_else(|| not_found("project not found"))?;
                users::table
                    .find(new_owner_id)
                    .select(users::id)
                    .first::<i64>(conn)
                    .optional()?
                    .ok_or_else(|| not_found("user not found"))?;
                if old_owner != new_owner_id {
                    let rows = collaborators::table.filter(collaborators::project_id.eq(project_id));
                    diesel::delete(rows.filter(collaborators::user_id.eq_any([new_owner_id, old_owner])))
                        .execute(conn)?;
                    diesel::insert_into(collaborators::table)
                        .values(NewCollaboratorRow {
                            project_id,
                            user_id: old_owner,
                            role: Role::Owner.as_str(),
                            created_at: now(),
                        })
                        .execute(conn)?;
                    // A preview app is its parent's owner's: it moves with the parent.
                    diesel::update(
                        projects::table.filter(projects::id.eq(project_id).or(projects::preview_of.eq(project_id))),
                    )
                    .set(projects::owner_id.eq(new_owner_id))
                    .execute(conn)?;
                }
                let row = projects::table.find(project_id).select(ProjectRow::as_select()).first(conn)?;
                Ok(Project::try_from(row)?)
            })
        })
    }

    async fn create_token(
        &self,
        user_id: i64,
        name: &str,
        token_hash: &str,
        expires_at: Option<Timestamp>,
    ) -> Result<ApiToken> {
        let (name, token_hash) = (name.to_owned(), token_hash.to_owned());
        with_conn!(self, |conn| {
            let row = diesel::insert_into(api_tokens::table)
                .values(NewTokenRow {
                    user_id,
                    name: &name,
                    token_hash: &token_hash,
                    created_at: now(),
                    expires_at: expires_at.map(|t| t.0),
                })
                .returning(TokenRow::as_returning())
                .get_result(conn)
                .map_err(missing_or_taken("user not found", "this token already exists"))?;
            Ok(ApiToken::from(row))
        })
    }

    /// A missing and an expired token are both `Unauthorized`: to the caller they are the
    /// same bad credential.
    async fn use_token(&self, token_hash: &str) -> Result<(ApiToken, User)> {
        let token_hash = token_hash.to_owned();
        with_conn!(self, |conn| {
            let (mut token, user) = api_tokens::table
                .inner_join(users::table)
                .filter(api_tokens::token_hash.eq(&token_hash))
                .select((TokenRow::as_select(), UserRow::as_select()))
                .first::<(TokenRow, UserRow)>(conn)
                .optional()?
                .ok_or_else(|| StoreError::Core(Error::Unauthorized("invalid API token".into())))?;
            if user.disabled {
                return Err(StoreError::Core(Error::Unauthorized("this account is disabled".into())));
            }
            let now = now();
            if token.expires_at.is_some_and(|expires| expires <= now) {
                return Err(StoreError::Core(Error::Unauthorized("API token expired".into())));
            }
            // Every authenticated request comes through here: record a use at most once a
            // minute, so reads do not each cost a database write.
            if token.last_used_at.is_none_or(|last| now - last >= LAST_USED_RESOLUTION_MS) {
                diesel::update(api_tokens::table.find(token.id)).set(api_tokens::last_used_at.eq(now)).execute(conn)?;
                token.last_used_at = Some(now);
            }
            Ok((ApiToken::from(token), User::from(user)))
        })
    }

    async fn tokens(&self, user_id: i64) -> Result<Vec<ApiToken>> {
        with_conn!(self, |conn| {
            let rows = api_tokens::table
                .filter(api_tokens::user_id.eq(user_id))
                .order(api_tokens::id)
                .select(TokenRow::as_select())
                .load(conn)?;
            Ok(rows.into_iter().map(ApiToken::from).collect())
        })
    }

    async fn delete_token(&self, user_id: i64, token_id: i64) -> Result<()> {
        with_conn!(self, |conn| {
            // Another user's token is "not found" too: its existence is not theirs to know.
            let deleted = diesel::delete(
                api_tokens::table.filter(api_tokens::id.eq(token_id)).filter(api_tokens::user_id.eq(user_id)),
            )
            .execute(conn)?;
            if deleted == 0 {
                return Err(not_found("token not found"));
            }
            Ok(())
        })
    }

    async fn add_ssh_key(&self, user_id: i64, name: &str, fingerprint: &str, public_key: &str) -> Result<SshKey> {
        let (name, fingerprint, public_key) = (name.to_owned(), fingerprint.to_owned(), public_key.to_owned());
        with_conn!(self, |conn| {
            let row = diesel::insert_into(ssh_keys::table)
                .values(NewSshKeyRow {
                    user_id,
                    name: &name,
                    fingerprint: &fingerprint,
                    public_key: &public_key,
                    created_at: now(),
                })
                .returning(SshKeyRow::as_returning())
                .get_result(conn)
                .map_err(missing_or_taken("user not found", "this SSH key is already registered"))?;
            Ok(SshKey::from(row))
        })
    }

    async fn ssh_keys(&self, user_id: i64) -> Result<Vec<SshKey>> {
        with_conn!(self, |conn| {
            let rows = ssh_keys::table
                .filter(ssh_keys::user_id.eq(user_id))
                .order(ssh_keys::id)
                .select(SshKeyRow::as_select())
                .load(conn)?;
            Ok(rows.into_iter().map(SshKey::from).collect())
        })
    }

    async fn delete_ssh_key(&self, user_id: i64, key_id: i64) -> Result<()> {
        with_conn!(self, |conn| {
            let deleted =
                diesel::delete(ssh_keys::table.filter(ssh_keys::id.eq(key_id)).filter(ssh_keys::user_id.eq(user_id)))
                    .execute(conn)?;
            if deleted == 0 {
                return Err(not_found("SSH key not found"));
            }
            Ok(())
        })
    }

    async fn user_by_ssh_fingerprint(&self, fingerprint: &str) -> Result<(SshKey, User)> {
        let fingerprint = fingerprint.to_owned();
        with_conn!(self, |conn| {
            let (key, user) = ssh_keys::table
                .inner_join(users::table)
                .filter(ssh_keys::fingerprint.eq(&fingerprint))
                .select((SshKeyRow::as_select(), UserRow::as_select()))
                .first::<(SshKeyRow, UserRow)>(conn)
                .optional()?
                .ok_or_else(|| not_found("no user has this SSH key"))?;
            // A disabled account's keys are kept (enabling it again restores them) but
            // let nobody in.
            if user.disabled {
                return Err(not_found("no user has this SSH key"));
            }
            Ok((SshKey::from(key), User::from(user)))
        })
    }

    async fn create_project(&self, owner_id: i64, name: &ProjectName) -> Result<Project> {
        let name = name.clone();
        with_conn!(self, |conn| {
            let row = diesel::insert_into(projects::table)
                .values(NewProjectRow {
                    owner_id,
                    name: name.as_str(),
                    created_at: now(),
                    preview_of: None,
                    preview_branch: None,
                })
                .returning(ProjectRow::as_returning())
                .get_result(conn)
                .map_err(missing_or_taken("user not found", "project name already taken"))?;
            Ok(Project::try_from(row)?)
        })
    }

    async fn project(&self, name: &ProjectName) -> Result<Project> {
        let name = name.clone();
        with_conn!(self, |conn| {
            let row = projects::table
                .filter(projects::name.eq(name.as_str()))
                .select(ProjectRow::as_select())
                .first(conn)
                .optional()?
                .ok_or_else(|| not_found(format!("project {name} not found")))?;
            Ok(Project::try_from(row)?)
        })
    }

    async fn project_by_id(&self, id: i64) -> Result<Project> {
        with_conn!(self, |conn| {
            let row = projects::table
                .find(id)
                .select(ProjectRow::as_select())
                .first(conn)
                .optional()?
                .ok_or_else(|| not_found("project not found"))?;
            Ok(Project::try_from(row)?)
        })
    }

    async fn create_preview(&self, parent: &Project, name: &ProjectName, branch: &str) -> Result<Project> {
        let (parent_id, owner_id, name, branch) = (parent.id, parent.owner_id, name.clone(), branch.to_owned());
        with_conn!(self, |conn| {
            let row = diesel::insert_into(projects::table)
                .values(NewProjectRow {
                    owner_id,
                    name: name.as_str(),
                    created_at: now(),
                    preview_of: Some(parent_id),
                    preview_branch: Some(branch.as_str()),
                })
                .returning(ProjectRow::as_returning())
                .get_result(conn)
                .map_err(missing_or_taken("project not found", "project name already taken"))?;
            Ok(Project::try_from(row)?)
        })
    }

    async fn previews(&self, parent_id: i64) -> Result<Vec<Project>> {
        with_conn!(self, |conn| {
            let rows = projects::table
                .filter(projects::preview_of.eq(parent_id))
                .select(ProjectRow::as_select())
                .order(projects::name)
                .load(conn)?;
            let previews = rows.into_iter().map(Project::try_from).collect::<Result<Vec<_>>>()?;
            Ok(previews)
        })
    }

    async fn set_previews_enabled(&self, project_id: i64, enabled: bool) -> Result<()> {
        with_conn!(self, |conn| {
            let changed = diesel::update(projects::table.find(project_id))
                .set(projects::previews_enabled.eq(enabled))
                .execute(conn)?;
            if changed == 0 {
                return Err(not_found("project not found"));
            }
            Ok(())
        })
    }

    async fn projects(&self, owner_id: Option<i64>) -> Result<Vec<Project>> {
        with_conn!(self, |conn| {
            let mut query = projects::table.select(ProjectRow::as_select()).order(projects::name).into_boxed();
            if let Some(owner_id) = owner_id {
                query = query.filter(projects::owner_id.eq(owner_id));
            }
            let rows = query.load(conn)?;
            let projects = rows.into_iter().map(Project::try_from).collect::<Result<Vec<_>>>()?;
            Ok(projects)
        })
    }

    async fn delete_project(&self, project_id: i64) -> Result<()> {
        with_conn!(self, |conn| {
            // The foreign keys cascade too; deleting explicitly keeps "everything of the
            // project goes" true even on a SQLite connection opened without foreign keys.
            write_tx(conn, |conn| {
                diesel::delete(deployments::table.filter(deployments::project_id.eq(project_id))).execute(conn)?;
                let builds_of = builds::table.filter(builds::project_id.eq(project_id)).select(builds::id);
                diesel::delete(build_cron::table.filter(build_cron::build_id.eq_any(builds_of))).execute(conn)?;
                diesel::delete(builds::table.filter(builds::project_id.eq(project_id))).execute(conn)?;
                diesel::delete(cron_runs::table.filter(cron_runs::project_id.eq(project_id))).execute(conn)?;
                diesel::delete(env_vars::table.filter(env_vars::project_id.eq(project_id))).execute(conn)?;
                diesel::delete(collaborators::table.filter(collaborators::project_id.eq(project_id))).execute(conn)?;
                diesel::delete(process_scale::table.filter(process_scale::project_id.eq(project_id))).execute(conn)?;
                diesel::delete(project_limits::table.filter(project_limits::project_id.eq(project_id)))
                    .execute(conn)?;
                diesel::delete(project_https::table.filter(project_https::project_id.eq(project_id))).execute(conn)?;
                diesel::delete(stopped_processes::table.filter(stopped_processes::project_id.eq(project_id)))
                    .execute(conn)?;
                diesel::delete(project_sleep::table.find(project_id)).execute(conn)?;
                diesel::delete(domains::table.filter(domains::project_id.eq(project_id))).execute(conn)?;
                diesel::delete(addons::table.filter(addons::project_id.eq(project_id))).execute(conn)?;
                let hooks = webhooks::table.filter(webhooks::project_id.eq(project_id)).select(webhooks::id);
                diesel::delete(webhook_attempts::table.filter(webhook_attempts::webhook_id.eq_any(hooks)))
                    .execute(conn)?;
                diesel::delete(webhooks::table.filter(webhooks::project_id.eq(project_id))).execute(conn)?;
                if diesel::delete(projects::table.find(project_id)).execute(conn)? == 0 {
                    return Err(not_found("project not found"));
                }
                Ok(())
            })
        })
    }

    async fn env(&self, project_id: i64) -> Result<EnvVars> {
        let keyring = Arc::clone(&self.keyring);
        with_conn!(self, |conn| {
            // A project that does not exist has no vars, as before values were sealed.
            let Some(project) =
                projects::table.find(project_id).select(projects::name).first::<String>(conn).optional()?
            else {
                return Ok(EnvVars::new());
            };
            Ok(load_env!(conn, keyring, project_id, &project))
        })
    }

    async fn update_env(&self, project_id: i64, changes: &EnvChanges) -> Result<EnvVars> {
        let changes = changes.clone();
        let keyring = Arc::clone(&self.keyring);
        with_conn!(self, |conn| {
            write_tx(conn, |conn| {
                let project = project_name!(conn, project_id);
                apply_env_changes!(conn, keyring, project_id, &project, &changes);
                Ok(load_env!(conn, keyring, project_id, &project))
            })
        })
    }

    async fn scale(&self, project_id: i64) -> Result<BTreeMap<String, u32>> {
        with_conn!(self, |conn| {
            let rows = process_scale::table
                .filter(process_scale::project_id.eq(project_id))
                .select((process_scale::process_type, process_scale::count))
                .load::<(String, i64)>(conn)?;
            let mut scale = BTreeMap::new();
            for (process_type, count) in rows {
                let count = u32::try_from(count)
                    .map_err(|e| Error::internal(format!("invalid scale {count} of {process_type} in store"), e))?;
                scale.insert(process_type, count);
            }
            Ok(scale)
        })
    }

    /// Sets the count of each listed process type; types not listed keep theirs (like
    /// `heroku ps:scale web=2`, which leaves `worker` alone). A count of 0 is stored as 0.
    async fn set_scale(&self, project_id: i64, scale: &BTreeMap<String, u32>) -> Result<()> {
        let scale = scale.clone();
        with_conn!(self, |conn| {
            write_tx(conn, |conn| {
                ensure_project!(conn, project_id);
                for (process_type, count) in &scale {
                    diesel::delete(
                        process_scale::table
                            .filter(process_scale::project_id.eq(project_id))
                            .filter(process_scale::process_type.eq(process_type)),
                    )
                    .execute(conn)?;
                    diesel::insert_into(process_scale::table)
                        .values((
                            process_scale::project_id.eq(project_id),
                            process_scale::process_type.eq(process_type),
                            process_scale::count.eq(i64::from(*count)),
                        ))
                        .execute(conn)?;
                }
                Ok(())
            })
        })
    }

    async fn limits(&self, project_id: i64) -> Result<Limits> {
        with_conn!(self, |conn| {
            let row = project_limits::table
                .find(project_id)
                .select((project_limits::memory_mb, project_limits::cpus))
                .first::<(Option<i64>, Option<f64>)>(conn)
                .optional()?;
            let (memory_mb, cpus) = row.unwrap_or((None, None));
            Ok(Limits {
                memory_bytes: memory_mb.and_then(|mb| u64::try_from(mb).ok()).map(|mb| mb * 1024 * 1024),
                cpus,
            })
        })
    }

    async fn set_limits(&self, project_id: i64, limits: &Limits) -> Result<()> {
        let memory_mb = limits.memory_bytes.map(|bytes| i64::try_from(bytes / (1024 * 1024)).unwrap_or(i64::MAX));
        let cpus = limits.cpus;
        with_conn!(self, |conn| {
            write_tx(conn, |conn| {
                ensure_project!(conn, project_id);
                diesel::delete(project_limits::table.find(project_id)).execute(conn)?;
                if memory_mb.is_some() || cpus.is_some() {
                    diesel::insert_into(project_limits::table)
                        .values((
                            project_limits::project_id.eq(project_id),
                            project_limits::memory_mb.eq(memory_mb),
                            project_limits::cpus.eq(cpus),
                        ))
                        .execute(conn)?;
                }
                Ok(())
            })
        })
    }

    async fn https_policy(&self, project_id: i64) -> Result<HttpsPolicy> {
        with_conn!(self, |conn| {
            let row = project_https::table
                .find(project_id)
                .select((project_https::https_redirect, project_https::hsts_max_age))
                .first::<(bool, Option<i64>)>(conn)
                .optional()?;
            Ok(match row {
                // A stored age out of range (written by hand) is dropped rather than sent.
                Some((redirect, age)) => {
                    HttpsPolicy { redirect, hsts_max_age: age.and_then(|a| HttpsPolicy::parse_hsts_max_age(a).ok()) }
                }
                None => HttpsPolicy::default(),
            })
        })
    }

    async fn set_https_policy(&self, project_id: i64, policy: &HttpsPolicy) -> Result<()> {
        let (redirect, age) = (policy.redirect, policy.hsts_max_age.map(i64::from));
        with_conn!(self, |conn| {
            write_tx(conn, |conn| {
                ensure_project!(conn, project_id);
                diesel::delete(project_https::table.find(project_id)).execute(conn)?;
                diesel::insert_into(project_https::table)
                    .values((
                        project_https::project_id.eq(project_id),
                        project_https::https_redirect.eq(redirect),
                        project_https::hsts_max_age.eq(age),
                    ))
                    .execute(conn)?;
                Ok(())
            })
        })
    }

    async fn stopped(&self, project_id: i64) -> Result<Stopped> {
        with_conn!(self, |conn| {
            let rows = stopped_processes::table
                .filter(stopped_processes::project_id.eq(project_id))
                .select(stopped_processes::process_type)
                .load::<String>(conn)?;
            Ok(Stopped::from_rows(rows))
        })
    }

    async fn set_stopped(&self, project_id: i64, stopped: &Stopped) -> Result<()> {
        let rows = stopped.to_rows();
        with_conn!(self, |conn| {
            write_tx(conn, |conn| {
                ensure_project!(conn, project_id);
                diesel::delete(stopped_processes::table.filter(stopped_processes::project_id.eq(project_id)))
                    .execute(conn)?;
                for process_type in &rows {
                    diesel::insert_into(stopped_processes::table)
                        .values((
                            stopped_processes::project_id.eq(project_id),
                            stopped_processes::process_type.eq(process_type),
                        ))
                        .execute(conn)?;
                }
                Ok(())
            })
        })
    }

    async fn sleep(&self, project_id: i64) -> Result<SleepState> {
        with_conn!(self, |conn| {
            let row = project_sleep::table
                .find(project_id)
                .select((
                    project_sleep::enabled,
                    project_sleep::after_minutes,
                    project_sleep::workers_keep_awake,
                    project_sleep::asleep,
                    project_sleep::wake_error,
                ))
                .first::<(bool, i32, bool, bool, Option<String>)>(conn)
                .optional()?;
            Ok(match row {
                Some((enabled, after, workers_keep_awake, asleep, wake_error)) => SleepState {
                    enabled,
                    // Stored by `set_sleep` from a checked u32; a row written by hand that
                    // is out of range falls back to the default rather than failing.
                    after_minutes: u32::try_from(after).unwrap_or(paastech_core::sleep::DEFAULT_AFTER_MINUTES).max(1),
                    workers_keep_awake,
                    asleep,
                    wake_error,
                },
                None => SleepState::default(),
            })
        })
    }

    async fn set_sleep(&self, project_id: i64, sleep: &SleepState) -> Result<()> {
        let sleep = sleep.clone();
        let after = i32::try_from(sleep.after_minutes).unwrap_or(i32::MAX);
        with_conn!(self, |conn| {
            write_tx(conn, |conn| {
                ensure_project!(conn, project_id);
                diesel::delete(project_sleep::table.find(project_id)).execute(conn)?;
                diesel::insert_into(project_sleep::table)
                    .values((
                        project_sleep::project_id.eq(project_id),
                        project_sleep::enabled.eq(sleep.enabled),
                        project_sleep::after_minutes.eq(after),
                        project_sleep::workers_keep_awake.eq(sleep.workers_keep_awake),
                        project_sleep::asleep.eq(sleep.asleep),
                        project_sleep::wake_error.eq(sleep.wake_error.as_deref()),
                    ))
                    .execute(conn)?;
                Ok(())
            })
        })
    }

    async fn add_domain(&self, project_id: i64, name: &Hostname) -> Result<Domain> {
        let name = name.clone();
        with_conn!(self, |conn| {
            let row = diesel::insert_into(domains::table)
                .values((
                    domains::project_id.eq(project_id),
                    domains::name.eq(name.as_str()),
                    domains::created_at.eq(now()),
                ))
                .returning(DomainRow::as_returning())
                .get_result(conn)
                .map_err(missing_or_taken("project not found", "this domain is taken by another project"))?;
            Ok(Domain::try_from(row)?)
        })
    }

    async fn domains(&self, project_id: i64) -> Result<Vec<Domain>> {
        with_conn!(self, |conn| {
            let rows = domains::table
                .filter(domains::project_id.eq(project_id))
                .order(domains::name)
                .select(DomainRow::as_select())
                .load(conn)?;
            Ok(rows.into_iter().map(Domain::try_from).collect::<Result<Vec<_>>>()?)
        })
    }

    async fn domain(&self, name: &Hostname) -> Result<Domain> {
        let name = name.clone();
        with_conn!(self, |conn| {
            let row = domains::table
                .filter(domains::name.eq(name.as_str()))
                .select(DomainRow::as_select())
                .first(conn)
                .optional()?
                .ok_or_else(|| not_found(format!("domain {name} not found")))?;
            Ok(Domain::try_from(row)?)
        })
    }

    async fn delete_domain(&self, project_id: i64, name: &Hostname) -> Result<()> {
        let name = name.clone();
        with_conn!(self, |conn| {
            let deleted = diesel::delete(
                domains::table.filter(domains::project_id.eq(project_id)).filter(domains::name.eq(name.as_str())),
            )
            .execute(conn)?;
            if deleted == 0 {
                return Err(not_found(format!("{name} is not a domain of this project")));
            }
            Ok(())
        })
    }

    async fn add_addon(&self, project_id: i64, name: &AddonName, kind: &str) -> Result<Addon> {
        let (name, kind) = (name.clone(), kind.to_owned());
        with_conn!(self, |conn| {
            let row = diesel::insert_into(addons::table)
                .values((
                    addons::project_id.eq(project_id),
                    addons::name.eq(name.as_str()),
                    addons::kind.eq(&kind),
                    addons::created_at.eq(now()),
                ))
                .returning(AddonRow::as_returning())
                .get_result(conn)
                .map_err(missing_or_taken(
                    "project not found",
                    format!("the project already has an add-on named {name}"),
                ))?;
            Ok(Addon::try_from(row)?)
        })
    }

    async fn addons(&self, project_id: i64) -> Result<Vec<Addon>> {
        with_conn!(self, |conn| {
            let rows = addons::table
                .filter(addons::project_id.eq(project_id))
                .order(addons::name)
                .select(AddonRow::as_select())
                .load(conn)?;
            Ok(rows.into_iter().map(Addon::try_from).collect::<Result<Vec<_>>>()?)
        })
    }

    async fn addon(&self, project_id: i64, name: &AddonName) -> Result<Addon> {
        let name = name.clone();
        with_conn!(self, |conn| {
            let row = addons::table
                .filter(addons::project_id.eq(project_id))
                .filter(addons::name.eq(name.as_str()))
                .select(AddonRow::as_select())
                .first(conn)
                .optional()?
                .ok_or_else(|| not_found(format!("the project has no add-on named {name}")))?;
            Ok(Addon::try_from(row)?)
        })
    }

    async fn delete_addon(&self, project_id: i64, name: &AddonName) -> Result<()> {
        let name = name.clone();
        with_conn!(self, |conn| {
            let deleted = diesel::delete(
                addons::table.filter(addons::project_id.eq(project_id)).filter(addons::name.eq(name.as_str())),
            )
            .execute(conn)?;
            if deleted == 0 {
                return Err(not_found(format!("the project has no add-on named {name}")));
            }
            Ok(())
        })
    }

    async fn add_webhook(&self, project_id: i64, url: &str, events: &[WebhookEvent], secret: &str) -> Result<Webhook> {
        let url = url.to_owned();
        let events = events.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(",");
        let secret = secret.to_owned();
        let keyring = Arc::clone(&self.keyring);
        with_conn!(self, |conn| {
            let project = project_name!(conn, project_id);
            let row = diesel::insert_into(webhooks::table)
                .values((
                    webhooks::project_id.eq(project_id),
                    webhooks::url.eq(&url),
                    webhooks::events.eq(&events),
                    webhooks::secret.eq(keyring.seal(&project, WEBHOOK_SECRET_VAR, &secret)?),
                    webhooks::secret_key_id.eq(keyring.key_id()),
                    webhooks::created_at.eq(now()),
                ))
                .returning(WebhookRow::as_returning())
                .get_result(conn)
                .map_err(not_found_on_fk("project not found"))?;
            Ok(Webhook::try_from(row)?)
        })
    }

    async fn webhooks(&self, project_id: i64) -> Result<Vec<Webhook>> {
        with_conn!(self, |conn| {
            let rows = webhooks::table
                .filter(webhooks::project_id.eq(project_id))
                .order(webhooks::id)
                .select(WebhookRow::as_select())
                .load(conn)?;
            Ok(rows.into_iter().map(Webhook::try_from).collect::<Result<Vec<_>>>()?)
        })
    }

    async fn webhooks_with_secrets(&self, project_id: i64) -> Result<Vec<(Webhook, String)>> {
        let keyring = Arc::clone(&self.keyring);
        with_conn!(self, |conn| {
            let rows = webhooks::table
                .inner_join(projects::table)
                .filter(webhooks::project_id.eq(project_id))
                .order(webhooks::id)
                .select((WebhookRow::as_select(), webhooks::secret, webhooks::secret_key_id, projects::name))
                .load::<(WebhookRow, String, String, String)>(conn)?;
            let mut hooks = Vec::with_capacity(rows.len());
            for (row, secret, key_id, project) in rows {
                let secret = keyring.open(&key_id, &project, WEBHOOK_SECRET_VAR, &secret)?;
                hooks.push((Webhook::try_from(row)?, secret));
            }
            Ok(hooks)
        })
    }

    async fn delete_webhook(&self, project_id: i64, webhook_id: i64) -> Result<()> {
        with_conn!(self, |conn| {
            write_tx(conn, |conn| {
                ensure_webhook!(conn, project_id, webhook_id);
                diesel::delete(webhook_attempts::table.filter(webhook_attempts::webhook_id.eq(webhook_id)))
                    .execute(conn)?;
                diesel::delete(webhooks::table.find(webhook_id)).execute(conn)?;
                Ok(())
            })
        })
    }

    async fn record_webhook_attempt(&self, attempt: &WebhookAttempt) -> Result<()> {
        let attempt = attempt.clone();
        with_conn!(self, |conn| {
            write_tx(conn, |conn| {
                let exists =
                    webhooks::table.find(attempt.webhook_id).select(webhooks::id).first::<i64>(conn).optional()?;
                if exists.is_none() {
                    return Ok(());
                }
                diesel::insert_into(webhook_attempts::table)
                    .values((
                        webhook_attempts::webhook_id.eq(attempt.webhook_id),
                        webhook_attempts::delivery.eq(&attempt.delivery),
                        webhook_attempts::event.eq(attempt.event.as_str()),
                        webhook_attempts::attempt.eq(i64::from(attempt.attempt)),
                        webhook_attempts::at.eq(attempt.at.0),
                        webhook_attempts::status_code.eq(attempt.status_code.map(i64::from)),
                        webhook_attempts::error.eq(&attempt.error),
                        webhook_attempts::duration_ms.eq(i64::try_from(attempt.duration_ms).unwrap_or(i64::MAX)),
                    ))
                    .execute(conn)?;
                let keep_from = webhook_attempts::table
                    .filter(webhook_attempts::webhook_id.eq(attempt.webhook_id))
                    .order(webhook_attempts::id.desc())
                    .offset(paastech_core::webhooks::KEPT_ATTEMPTS - 1)
                    .select(webhook_attempts::id)
                    .first::<i64>(conn)
                    .optional()?;
                if let Some(oldest_kept) = keep_from {
                    diesel::delete(
                        webhook_attempts::table
                            .filter(webhook_attempts::webhook_id.eq(attempt.webhook_id))
                            .filter(webhook_attempts::id.lt(oldest_kept)),
                    )
                    .execute(conn)?;
                }
                Ok(())
            })
        })
    }

    async fn webhook_attempts(&self, project_id: i64, webhook_id: i64) -> Result<Vec<WebhookAttempt>> {
        with_conn!(self, |conn| {
            ensure_webhook!(conn, project_id, webhook_id);
            let rows = webhook_attempts::table
                .filter(webhook_attempts::webhook_id.eq(webhook_id))
                .order(webhook_attempts::id.desc())
                .select(WebhookAttemptRow::as_select())
                .load(conn)?;
            Ok(rows.into_iter().map(WebhookAttempt::try_from).collect::<Result<Vec<_>>>()?)
        })
    }

    async fn set_build_cron(&self, build_id: i64, jobs: &[CronJob]) -> Result<()> {
        let jobs = cron_jobs_to_json(jobs)?;
        with_conn!(self, |conn| {
            write_tx(conn, |conn| {
                diesel::delete(build_cron::table.find(build_id)).execute(conn)?;
                diesel::insert_into(build_cron::table)
                    .values((build_cron::build_id.eq(build_id), build_cron::jobs.eq(&jobs)))
                    .execute(conn)
                    .map_err(not_found_on_fk("build not found"))?;
                Ok(())
            })
        })
    }

    async fn build_cron(&self, build_id: i64) -> Result<Vec<CronJob>> {
        let jobs = with_conn!(self, |conn| {
            Ok(build_cron::table.find(build_id).select(build_cron::jobs).first::<String>(conn).optional()?)
        })?;
        jobs.map_or_else(|| Ok(Vec::new()), |text| cron_jobs_from_json(&text))
    }

    async fn record_cron_run(&self, run: &CronRun) -> Result<()> {
        let run = run.clone();
        with_conn!(self, |conn| {
            write_tx(conn, |conn| {
                let exists = projects::table.find(run.project_id).select(projects::id).first::<i64>(conn).optional()?;
                if exists.is_none() {
                    return Ok(());
                }
                let job = i64::from(run.job);
                diesel::insert_into(cron_runs::table)
                    .values((
                        cron_runs::project_id.eq(run.project_id),
                        cron_runs::job.eq(job),
                        cron_runs::command.eq(&run.command),
                        cron_runs::schedule.eq(&run.schedule),
                        cron_runs::version.eq(run.version),
                        cron_runs::scheduled_at.eq(run.scheduled_at.0),
                        cron_runs::started_at.eq(run.started_at.map(|t| t.0)),
                        cron_runs::finished_at.eq(run.finished_at.map(|t| t.0)),
                        cron_runs::outcome.eq(run.outcome.as_str()),
                        cron_runs::exit_code.eq(run.exit_code.map(i64::from)),
                        cron_runs::error.eq(&run.error),
                    ))
                    .execute(conn)?;
                let of_job = cron_runs::project_id.eq(run.project_id).and(cron_runs::job.eq(job));
                let keep_from = cron_runs::table
                    .filter(of_job)
                    .order(cron_runs::id.desc())
                    .offset(paastech_core::cron::KEPT_RUNS - 1)
                    .select(cron_runs::id)
                    .first::<i64>(conn)
                    .optional()?;
                if let Some(oldest_kept) = keep_from {
                    diesel::delete(cron_runs::table.filter(of_job).filter(cron_runs::id.lt(oldest_kept)))
                        .execute(conn)?;
                }
                Ok(())
            })
        })
    }

    async fn cron_runs(&self, project_id: i64) -> Result<Vec<CronRun>> {
        with_conn!(self, |conn| {
            let rows = cron_runs::table
                .filter(cron_runs::project_id.eq(project_id))
                .order(cron_runs::id.desc())
                .select(CronRunRow::as_select())
                .load(conn)?;
            Ok(rows.into_iter().map(CronRun::try_from).collect::<Result<Vec<_>>>()?)
        })
    }

    async fn create_build(&self, project_id: i64, commit: &str) -> Result<Build> {
        let commit = commit.to_owned();
        with_conn!(self, |conn| {
            let row = diesel::insert_into(builds::table)
                .values(NewBuildRow {
                    project_id,
                    commit: &commit,
                    status: BuildStatus::Building.as_str(),
                    processes: "{}",
                    log: "",
                    created_at: now(),
                })
                .returning(BuildRow::as_returning())
                .get_result(conn)
                .map_err(not_found_on_fk("project not found"))?;
            Ok(Build::try_from(row)?)
        })
    }

    async fn finish_build(
        &self,
        build_id: i64,
        status: BuildStatus,
        artifact: Option<&str>,
        processes: &BTreeMap<String, String>,
        log: &str,
    ) -> Result<Build> {
        let processes = to_json(processes, "build processes")?;
        let (artifact, log) = (artifact.map(str::to_owned), log.to_owned());
        with_conn!(self, |conn| {
            let row = diesel::update(builds::table.find(build_id))
                .set((
                    builds::status.eq(status.as_str()),
                    builds::artifact.eq(&artifact),
                    builds::processes.eq(&processes),
                    builds::log.eq(&log),
                    builds::finished_at.eq(now()),
                ))
                .returning(BuildRow::as_returning())
                .get_result(conn)
                .optional()?
                .ok_or_else(|| not_found("build not found"))?;
            Ok(Build::try_from(row)?)
        })
    }

    async fn build(&self, build_id: i64) -> Result<Build> {
        with_conn!(self, |conn| {
            let row = builds::table
                .find(build_id)
                .select(BuildRow::as_select())
                .first(conn)
                .optional()?
                .ok_or_else(|| not_found("build not found"))?;
            Ok(Build::try_from(row)?)
        })
    }

    async fn clear_build_artifact(&self, build_id: i64) -> Result<()> {
        with_conn!(self, |conn| {
            let updated =
                diesel::update(builds::table.find(build_id)).set(builds::artifact.eq(None::<String>)).execute(conn)?;
            if updated == 0 {
                return Err(not_found("build not found"));
            }
            Ok(())
        })
    }

    async fn create_deployment(&self, new: &NewDeployment) -> Result<Deployment> {
        let scale = to_json(&new.scale, "deployment scale")?;
        let new = new.clone();
        let keyring = Arc::clone(&self.keyring);
        with_conn!(self, |conn| {
            write_tx(conn, |conn| {
                let project = project_name!(conn, new.project_id);
                let config = seal_config(&new.config, &project, &keyring)?;
                let latest = deployments::table
                    .filter(deployments::project_id.eq(new.project_id))
                    .select(diesel::dsl::max(deployments::version))
                    .first::<Option<i64>>(conn)?;
                let now = now();
                let row = diesel::insert_into(deployments::table)
                    .values(NewDeploymentRow {
                        project_id: new.project_id,
                        version: latest.unwrap_or(0) + 1,
                        status: new.status.as_str(),
                        build_id: new.build_id,
                        commit: new.commit.as_deref(),
                        config: &config,
                        scale: &scale,
                        cause: &new.cause,
                        created_at: now,
                        updated_at: now,
                        config_key_id: Some(keyring.key_id()),
                    })
                    .returning(DeploymentRow::as_returning())
                    .get_result(conn)
                    .map_err(|e| match e {
                        // A concurrent writer took this version first: count again.
                        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => StoreError::Retry,
                        DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _) => {
                            not_found("build not found")
                        }
                        e => StoreError::Db(e),
                    })?;
                Ok(row.open(&project, &keyring)?)
            })
        })
    }

    async fn set_deployment_status(
        &self,
        deployment_id: i64,
        status: DeploymentStatus,
        failure: Option<&str>,
    ) -> Result<Deployment> {
        let failure = failure.map(str::to_owned);
        let keyring = Arc::clone(&self.keyring);
        with_conn!(self, |conn| {
            // Read, check and write in one write transaction, so two racing steps cannot both
            // pass the check against the same old status.
            write_tx(conn, |conn| {
                let row = deployment_row!(conn, deployment_id);
                DeploymentStatus::parse(&row.status)?.next(status)?;
                let row = diesel::update(deployments::table.find(deployment_id))
                    .set((
                        deployments::status.eq(status.as_str()),
                        deployments::failure.eq(failure.as_ref().or(row.failure.as_ref())),
                        deployments::updated_at.eq(now()),
                    ))
                    .returning(DeploymentRow::as_returning())
                    .get_result(conn)?;
                let project = project_name!(conn, row.project_id);
                Ok(row.open(&project, &keyring)?)
            })
        })
    }

    async fn deployments(&self, project_id: i64, limit: i64) -> Result<Vec<Deployment>> {
        let keyring = Arc::clone(&self.keyring);
        with_conn!(self, |conn| {
            let rows = deployments::table
                .inner_join(projects::table)
                .filter(deployments::project_id.eq(project_id))
                .order(deployments::version.desc())
                .limit(limit.max(0))
                .select((DeploymentRow::as_select(), projects::name))
                .load::<(DeploymentRow, String)>(conn)?;
            let deployments =
                rows.into_iter().map(|(row, project)| row.open(&project, &keyring)).collect::<Result<Vec<_>>>()?;
            Ok(deployments)
        })
    }

    async fn deployment(&self, project_id: i64, version: i64) -> Result<Deployment> {
        let keyring = Arc::clone(&self.keyring);
        with_conn!(self, |conn| {
            let (row, project) = deployments::table
                .inner_join(projects::table)
                .filter(deployments::project_id.eq(project_id))
                .filter(deployments::version.eq(version))
                .select((DeploymentRow::as_select(), projects::name))
                .first::<(DeploymentRow, String)>(conn)
                .optional()?
                .ok_or_else(|| not_found(format!("deployment v{version} not found")))?;
            Ok(row.open(&project, &keyring)?)
        })
    }

    async fn live_deployments(&self) -> Result<Vec<(Project, Deployment)>> {
        let keyring = Arc::clone(&self.keyring);
        with_conn!(self, |conn| {
            let rows = deployments::table
                .inner_join(projects::table)
                .filter(deployments::status.eq(DeploymentStatus::Live.as_str()))
                .order((projects::name, deployments::version))
                .select((ProjectRow::as_select(), DeploymentRow::as_select()))
                .load::<(ProjectRow, DeploymentRow)>(conn)?;
            let mut live = Vec::with_capacity(rows.len());
            for (project, deployment) in rows {
                let deployment = deployment.open(&project.name, &keyring)?;
                live.push((Project::try_from(project)?, deployment));
            }
            Ok(live)
        })
    }

    async fn live_deployment(&self, project_id: i64) -> Result<Option<Deployment>> {
        let keyring = Arc::clone(&self.keyring);
        with_conn!(self, |conn| {
            let row = deployments::table
                .inner_join(projects::table)
                .filter(deployments::project_id.eq(project_id))
                .filter(deployments::status.eq(DeploymentStatus::Live.as_str()))
                .select((DeploymentRow::as_select(), projects::name))
                .first::<(DeploymentRow, String)>(conn)
                .optional()?;
            Ok(row.map(|(row, project)| row.open(&project, &keyring)).transpose()?)
        })
    }

    async fn make_live(&self, deployment_id: i64, env: &EnvChanges) -> Result<Deployment> {
        let env = env.clone();
        let keyring = Arc::clone(&self.keyring);
        with_conn!(self, |conn| {
            write_tx(conn, |conn| {
                let row = deployment_row!(conn, deployment_id);
                let project = project_name!(conn, row.project_id);
                DeploymentStatus::parse(&row.status)?.next(DeploymentStatus::Live)?;
                let now = now();
                // The one-live index holds at every statement: the old one steps down first.
                diesel::update(
                    deployments::table
                        .filter(deployments::project_id.eq(row.project_id))
                        .filter(deployments::status.eq(DeploymentStatus::Live.as_str())),
                )
                .set((deployments::status.eq(DeploymentStatus::Superseded.as_str()), deployments::updated_at.eq(now)))
                .execute(conn)?;
                apply_env_changes!(conn, keyring, row.project_id, &project, &env);
                let row = diesel::update(deployments::table.find(deployment_id))
                    .set((deployments::status.eq(DeploymentStatus::Live.as_str()), deployments::updated_at.eq(now)))
                    .returning(DeploymentRow::as_returning())
                    .get_result(conn)?;
                Ok(row.open(&project, &keyring)?)
            })
        })
    }

    async fn interrupt_unfinished(&self, reason: &str) -> Result<Vec<Deployment>> {
        let reason = reason.to_owned();
        let unfinished: Vec<&'static str> = DeploymentStatus::ALL
            .into_iter()
            .filter(|s| !s.is_terminal() && *s != DeploymentStatus::Live)
            .map(DeploymentStatus::as_str)
            .collect();
        let keyring = Arc::clone(&self.keyring);
        with_conn!(self, |conn| {
            write_tx(conn, |conn| {
                let now = now();
                let rows = diesel::update(deployments::table.filter(deployments::status.eq_any(&unfinished)))
                    .set((
                        deployments::status.eq(DeploymentStatus::Failed.as_str()),
                        deployments::failure.eq(&reason),
                        deployments::updated_at.eq(now),
                    ))
                    .returning(DeploymentRow::as_returning())
                    .get_results(conn)?;
                diesel::update(builds::table.filter(builds::status.eq(BuildStatus::Building.as_str())))
                    .set((builds::status.eq(BuildStatus::Failed.as_str()), builds::finished_at.eq(now)))
                    .execute(conn)?;
                let mut names = BTreeMap::new();
                let mut interrupted = Vec::with_capacity(rows.len());
                for row in rows {
                    let project = match names.get(&row.project_id) {
                        Some(name) => name,
                        None => names.entry(row.project_id).or_insert(project_name!(conn, row.project_id)),
                    };
                    interrupted.push(row.open(project, &keyring)?);
                }
                Ok(interrupted)
            })
        })
    }

    async fn record_audit(&self, record: &AuditRecord) -> Result<()> {
        let record = record.clone();
        with_conn!(self, |conn| {
            diesel::insert_into(audit_events::table)
                .values((
                    audit_events::at.eq(record.at.0),
                    audit_events::actor_id.eq(record.actor.as_ref().map(|(id, _)| *id)),
                    audit_events::actor.eq(record.actor.as_ref().map(|(_, email)| email.as_str())),
                    audit_events::address.eq(record.address.map(|address| address.to_string())),
                    audit_events::project_id.eq(record.project.as_ref().map(|(id, _)| *id)),
                    audit_events::project.eq(record.project.as_ref().map(|(_, name)| name.as_str())),
                    audit_events::action.eq(record.action.as_str()),
                    audit_events::detail.eq(&record.detail),
                ))
                .execute(conn)?;
            Ok(())
        })
    }

    async fn audit_events(&self, scope: &AuditScope, before: Option<i64>, limit: i64) -> Result<Vec<AuditEvent>> {
        let scope = scope.clone();
        with_conn!(self, |conn| {
            let mut query = audit_events::table
                .select(AuditEventRow::as_select())
                .order(audit_events::id.desc())
                .limit(limit.max(0))
                .into_boxed();
            match &scope {
                AuditScope::All => {}
                AuditScope::Project(project_id) => query = query.filter(audit_events::project_id.eq(*project_id)),
                AuditScope::Member { user_id, project_ids } => {
                    // The preview apps of the member's projects are theirs to read too.
                    let previews = projects::table
                        .filter(projects::preview_of.eq_any(project_ids.clone()))
                        .select(projects::id.nullable());
                    query = query.filter(
                        audit_events::actor_id
                            .eq(*user_id)
                            .or(audit_events::project_id.eq_any(project_ids.clone()))
                            .or(audit_events::project_id.eq_any(previews)),
                    );
                }
            }
            if let Some(before) = before {
                query = query.filter(audit_events::id.lt(before));
            }
            let rows: Vec<AuditEventRow> = query.load(conn)?;
            Ok(rows.into_iter().map(AuditEvent::from).collect::<Vec<_>>())
        })
    }

    async fn prune_audit(&self, cutoff: Timestamp) -> Result<u64> {
        with_conn!(self, |conn| {
            let deleted = diesel::delete(audit_events::table.filter(audit_events::at.lt(cutoff.0))).execute(conn)?;
            Ok(deleted as u64)
        })
    }
}
