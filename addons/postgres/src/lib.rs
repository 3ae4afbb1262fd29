//! PostgreSQL add-ons (`[addons.postgres] url = "postgres://admin@host:port/postgres"`): on
//! a server the operator runs, each add-on is a login role with a random password and a
//! database it owns, `CONNECT` revoked from PUBLIC so no other project's role can open it.
//! The app gets `DATABASE_URL`. Backups are `pg_dump --format=custom` streamed out and
//! `pg_restore --clean --if-exists` streamed in, run as argv with the add-on's own role.
//!
//! This is the only crate that knows PostgreSQL add-ons; core sees an [`AddonKind`].

mod url;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{Bool, Text};
use paastech_core::addons::{AddonKind, AddonName, BackupReader, BackupWriter};
use paastech_core::registry::{DriverContext, DriverOptions};
use paastech_core::{EnvVars, Error, ProjectName, Result};
use rand::Rng;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use crate::url::PgUrl;

/// The config var the app reads, as on Heroku.
pub const DATABASE_URL: &str = "DATABASE_URL";

/// How long a connection to the server may take before it counts as down, unless the
/// operator's URL says otherwise (`connect_timeout`).
const CONNECT_TIMEOUT_SECS: u32 = 10;

/// The first bytes of every custom-format dump.
const DUMP_MAGIC: &[u8; 5] = b"PGDMP";

/// Keys of `[addons.postgres]`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct PostgresOptions {
    /// The server, as a superuser or a role with CREATEROLE and CREATEDB.
    pub url: String,
    /// Where `pg_dump` and `pg_restore` are (default: found on `PATH`). Their major
    /// version must be at least the server's.
    pub bin_dir: Option<PathBuf>,
}

/// `[addons.postgres]`, checked.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub server: PgUrl,
    pub bin_dir: Option<PathBuf>,
}

impl DriverOptions<dyn AddonKind> for PostgresOptions {
    type Config = PostgresConfig;

    fn config(self, _context: &DriverContext) -> Result<PostgresConfig> {
        let server = PgUrl::parse(&self.url)?;
        if let Some(dir) = &self.bin_dir {
            for tool in ["pg_dump", "pg_restore"] {
                if !dir.join(tool).is_file() {
                    return Err(Error::Invalid(format!("bin_dir {} has no {tool}", dir.display())));
                }
            }
        }
        Ok(PostgresConfig { server, bin_dir: self.bin_dir })
    }

    fn build(config: PostgresConfig) -> Result<Arc<dyn AddonKind>> {
        Ok(Arc::new(PostgresAddons::new(config)))
    }
}

pub struct PostgresAddons {
    config: PostgresConfig,
}

impl PostgresAddons {
    pub fn new(config: PostgresConfig) -> Self {
        PostgresAddons { config }
    }

    /// The role's and the database's name: `pt_<project>_<addon>`. Both parts are
    /// validated names (lowercase letters, digits, hyphens; no underscore), so the name is
    /// unambiguous, and at most 3 + 40 + 1 + 19 = 63 bytes, PostgreSQL's limit. It is still
    /// only ever put into SQL through the server's own identifier quoting (`%I`).
    pub fn identifier(project: &ProjectName, name: &AddonName) -> String {
        format!("pt_{project}_{name}")
    }

    fn admin_url(&self) -> String {
        let server = &self.config.server;
        if server.has_param("connect_timeout") {
            server.render(&server.userinfo)
        } else {
            let mut with_timeout = server.clone();
            let sep = if with_timeout.query.is_empty() { "" } else { "&" };
            with_timeout.query = format!("{}{sep}connect_timeout={CONNECT_TIMEOUT_SECS}", with_timeout.query);
            with_timeout.render(&server.userinfo)
        }
    }

    /// Runs `work` on a blocking thread with a connection as the operator's role.
    async fn with_admin<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut PgConnection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let url = self.admin_url();
        let host = self.config.server.hostport.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = PgConnection::establish(&url).map_err(|err| {
                Error::Unavailable(format!("cannot reach the postgres add-on server at {host}: {}", one_line(&err)))
            })?;
            work(&mut conn)
        })
        .await
        .map_err(|err| Error::internal("postgres add-on task failed", err))?
    }

    fn tool(&self, name: &str) -> PathBuf {
        self.config.bin_dir.as_ref().map_or_else(|| PathBuf::from(name), |dir| dir.join(name))
    }
}

/// A statement the server builds itself with `format()`: `%I` quotes an identifier and
/// `%L` a literal with PostgreSQL's own rules, so no name or password is ever spliced
/// into SQL by this crate.
#[derive(QueryableByName)]
struct Formatted {
    #[diesel(sql_type = Text)]
    statement: String,
}

#[derive(QueryableByName)]
struct Found {
    #[diesel(sql_type = Bool)]
    found: bool,
}

fn run_formatted(conn: &mut PgConnection, what: &str, template: &str, ident: &str, literal: &str) -> Result<()> {
    let Formatted { statement } = diesel::sql_query("SELECT format($1, $2, $3) AS statement")
        .bind::<Text, _>(template)
        .bind::<Text, _>(ident)
        .bind::<Text, _>(literal)
        .get_result(conn)
        .map_err(|err| refused(what, &err))?;
    diesel::sql_query(statement).execute(conn).map_err(|err| refused(what, &err))?;
    Ok(())
}

fn exists(conn: &mut PgConnection, query: &str, name: &str) -> Result<bool> {
    let Found { found } =
        diesel::sql_query(query).bind::<Text, _>(name).get_result(conn).map_err(|err| refused("a look-up", &err))?;
    Ok(found)
}

fn role_exists(conn: &mut PgConnection, role: &str) -> Result<bool> {
    exists(conn, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1) AS found", role)
}

fn database_exists(conn: &mut PgConnection, database: &str) -> Result<bool> {
    exists(conn, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS found", database)
}

/// Removes the database (its sessions ended first) and the role; what is already gone is
/// skipped, so this also undoes a half-made provision.
fn drop_all(conn: &mut PgConnection, ident: &str) -> Result<()> {
    if database_exists(conn, ident)? {
        diesel::sql_query("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1")
            .bind::<Text, _>(ident)
            .execute(conn)
            .map_err(|err| refused("ending the database's sessions", &err))?;
        // FORCE ends sessions that connected between the line above and the drop.
        run_formatted(conn, "dropping the database", "DROP DATABASE IF EXISTS %I WITH (FORCE)", ident, "")?;
    }
    if role_exists(conn, ident)? {
        run_formatted(conn, "dropping the role", "DROP ROLE IF EXISTS %I", ident, "")?;
    }
    Ok(())
}

fn refused(what: &str, err: &diesel::result::Error) -> Error {
    Error::Unavailable(format!("the postgres add-on server refused {what}: {}", one_line(err)))
}

fn one_line(err: &dyn std::fmt::Display) -> String {
    err.to_string().lines().next().unwrap_or_default().trim().to_owned()
}

/// 32 characters from 62: about 190 bits from the thread's CSPRNG (ChaCha, seeded by the
/// OS). Letters and digits only, so the password needs no escaping in a URL.
fn new_password() -> String {
    rand::rng().sample_iter(rand::distr::Alphanumeric).take(32).map(char::from).collect()
}

#[async_trait]
impl AddonKind for PostgresAddons {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn config_keys(&self) -> &'static [&'static str] {
        &[DATABASE_URL]
    }

    async fn provision(&self, project: &ProjectName, name: &AddonName) -> Result<EnvVars> {
        let ident = Self::identifier(project, name);
        let password = new_password();
        let (role, secret) = (ident.clone(), password.clone());
        let made = self
            .with_admin(move |conn| {
                if role_exists(conn, &role)? || database_exists(conn, &role)? {
                    return Err(Error::Conflict(format!("a postgres role or database {role:?} already exists")));
                }
                let steps = |conn: &mut PgConnection| -> Result<()> {
                    run_formatted(
                        conn,
                        "creating the role",
                        "CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD %L",
                        &role,
                        &secret,
                    )?;
                    // The operator's role joins it: without being a member it could neither
                    // give it a database nor, later, drop that database.
                    run_formatted(conn, "granting the role", "GRANT %I TO CURRENT_USER", &role, "")?;
                    run_formatted(conn, "creating the database", "CREATE DATABASE %I OWNER %I", &role, &role)?;
                    run_formatted(
                        conn,
                        "revoking PUBLIC's access",
                        "REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC",
                        &role,
                        "",
                    )
                };
                if let Err(err) = steps(conn) {
                    if let Err(undo) = drop_all(conn, &role) {
                        tracing::error!(role = %role, error = %undo, "a failed postgres add-on could not be removed");
                    }
                    return Err(err);
                }
                Ok(())
            })
            .await;
        made?;
        let url = self.config.server.clone();
        let app_url = PgUrl { database: ident.clone(), ..url };
        let mut vars = EnvVars::new();
        vars.insert(DATABASE_URL.to_owned(), app_url.render(&format!("{ident}:{password}")));
        tracing::info!(project = %project, addon = %name, role = %ident, "postgres add-on provisioned");
        Ok(vars)
    }

    async fn deprovision(&self, project: &ProjectName, name: &AddonName) -> Result<()> {
        let ident = Self::identifier(project, name);
        let role = ident.clone();
        self.with_admin(move |conn| drop_all(conn, &role)).await?;
        tracing::info!(project = %project, addon = %name, role = %ident, "postgres add-on removed");
        Ok(())
    }

    async fn backup(
        &self,
        project: &ProjectName,
        name: &AddonName,
        credentials: &EnvVars,
        out: BackupWriter<'_>,
    ) -> Result<()> {
        let (url, password) = own_access(credentials)?;
        let mut command = tokio::process::Command::new(self.tool("pg_dump"));
        command.args(["--format=custom", "--no-password", "--dbname"]).arg(&url);
        let mut child = spawn(command, password, false)?;
        let mut stdout = child.stdout.take().ok_or_else(|| Error::internal_msg("pg_dump has no stdout"))?;
        let stderr = collect_stderr(&mut child);
        let copied = tokio::io::copy(&mut stdout, out).await;
        let status = child.wait().await.map_err(|err| Error::internal("waiting for pg_dump", err))?;
        let stderr = stderr.await.unwrap_or_default();
        if !status.success() {
            return Err(Error::Unavailable(format!(
                "pg_dump of add-on {name} of {project} failed: {}",
                first_lines(&stderr)
            )));
        }
        copied.map_err(|err| Error::internal("writing the backup", err))?;
        out.flush().await.map_err(|err| Error::internal("writing the backup", err))?;
        Ok(())
    }

    async fn restore(
        &self,
        project: &ProjectName,
        name: &AddonName,
        credentials: &EnvVars,
        input: BackupReader<'_>,
    ) -> Result<()> {
        // Checked before anything runs: pg_restore would say only "did not find magic
        // string", after connecting.
        let mut magic = [0u8; DUMP_MAGIC.len()];
        let mut read = 0;
        while read < magic.len() {
            let n = input
                .read(&mut magic[read..])
                .await
                .map_err(|err| Error::internal("reading the restore input", err))?;
            if n == 0 {
                break;
            }
            read += n;
        }
        if &magic[..read] != DUMP_MAGIC.as_slice() {
            return Err(Error::Invalid(
                "the restore input is not a PostgreSQL custom-format dump (as `addons backup` or `pg_dump --format=custom` write)"
                    .into(),
            ));
        }
        let (url, password) = own_access(credentials)?;
        let mut command = tokio::process::Command::new(self.tool("pg_restore"));
        // As the add-on's own role: objects become its own (no-owner), grants to roles of
        // another server are not replayed, and one transaction leaves the data as it was
        // when anything fails.
        command
            .args([
                "--clean",
                "--if-exists",
                "--no-owner",
                "--no-privileges",
                "--single-transaction",
                "--exit-on-error",
                "--no-password",
                "--dbname",
            ])
            .arg(&url);
        let mut child = spawn(command, password, true)?;
        let mut stdin = child.stdin.take().ok_or_else(|| Error::internal_msg("pg_restore has no stdin"))?;
        let stderr = collect_stderr(&mut child);
        let fed = async {
            stdin.write_all(DUMP_MAGIC).await?;
            tokio::io::copy(input, &mut stdin).await?;
            stdin.shutdown().await
        }
        .await;
        drop(stdin);
        let status = child.wait().await.map_err(|err| Error::internal("waiting for pg_restore", err))?;
        let stderr = stderr.await.unwrap_or_default();
        if !status.success() {
            return Err(Error::Invalid(format!(
                "pg_restore into add-on {name} of {project} failed: {}",
                first_lines(&stderr)
            )));
        }
        fed.map_err(|err| Error::internal("feeding pg_restore", err))?;
        tracing::info!(project = %project, addon = %name, "postgres add-on restored");
        Ok(())
    }
}

/// The add-on's URL without its password (for the argv) and the password (for the
/// environment, which other users of the machine cannot read).
fn own_access(credentials: &EnvVars) -> Result<(String, String)> {
    let url = credentials
        .get(DATABASE_URL)
        .ok_or_else(|| Error::Invalid(format!("the add-on's config has no {DATABASE_URL}")))?;
    let url = PgUrl::parse(url).map_err(|err| Error::Invalid(format!("the add-on's {DATABASE_URL}: {err}")))?;
    let password = url.password().map(url::percent_decode).unwrap_or_default();
    Ok((url.without_password(), password))
}

fn spawn(mut command: tokio::process::Command, password: String, stdin: bool) -> Result<tokio::process::Child> {
    let program = command.as_std().get_program().to_string_lossy().into_owned();
    command
        .env("PGPASSWORD", password)
        .env_remove("PGSERVICE")
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(if stdin { Stdio::null() } else { Stdio::piped() })
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| Error::Unavailable(format!("cannot run {program}: {err}")))
}

/// Reads the child's stderr beside the data stream, so neither pipe can fill and stall it.
fn collect_stderr(child: &mut tokio::process::Child) -> tokio::task::JoinHandle<String> {
    let stderr = child.stderr.take();
    tokio::spawn(async move {
        let mut text = String::new();
        if let Some(mut stderr) = stderr {
            // Bounded: a tool gone wild cannot fill memory through its messages.
            let _ = (&mut stderr).take(64 * 1024).read_to_string(&mut text).await;
            let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
        }
        text
    })
}

fn first_lines(stderr: &str) -> String {
    let text: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).take(3).collect();
    if text.is_empty() { "it exited with an error and said nothing".into() } else { text.join("; ") }
}
