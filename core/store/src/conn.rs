//! Opening the database: parsing the URL, the connection pools, per-connection setup,
//! migrations, and write transactions that behave the same on both backends.

use std::path::Path;
use std::time::Duration;

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use paastech_core::Error;

use crate::error::StoreError;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// SQLite allows one writer at a time, so more connections only buy concurrent readers;
/// each costs its page cache. The idle server should stay small.
const SQLITE_POOL_SIZE: u32 = 4;
const POSTGRES_POOL_SIZE: u32 = 8;
/// How long a query waits for a free connection before giving up.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long SQLite waits for another connection's write lock.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;
/// Attempts of a write transaction that lost a race (PostgreSQL serialization failures).
const MAX_TX_ATTEMPTS: u32 = 30;

pub(crate) const ACCEPTED_URLS: &str =
    "use sqlite:///absolute/path.db, sqlite://relative/path.db, postgres://user@host/db or postgresql://user@host/db";

#[derive(Clone)]
pub(crate) enum Pools {
    Sqlite(Pool<ConnectionManager<SqliteConnection>>),
    Postgres(Pool<ConnectionManager<PgConnection>>),
}

enum Target<'a> {
    Sqlite(&'a str),
    Postgres(&'a str),
}

fn parse_url(url: &str) -> Result<Target<'_>, Error> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() || path == "/" {
            return Err(Error::Invalid(format!("database url {url:?} names no file: {ACCEPTED_URLS}")));
        }
        return Ok(Target::Sqlite(path));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Target::Postgres(url));
    }
    // Only the scheme is echoed: the rest may hold a password.
    let scheme = url.split_once("://").map_or("(none)", |(scheme, _)| scheme);
    Err(Error::Invalid(format!("unsupported database url scheme {scheme:?}: {ACCEPTED_URLS}")))
}

pub(crate) fn open(url: &str) -> Result<Pools, Error> {
    match parse_url(url)? {
        Target::Sqlite(path) => open_sqlite(path),
        Target::Postgres(url) => open_postgres(url),
    }
}

fn migrate<C: MigrationHarness<DB>, DB: diesel::backend::Backend>(
    conn: &mut C,
    migrations: EmbeddedMigrations,
) -> Result<(), Error> {
    conn.run_pending_migrations(migrations)
        .map(|applied| {
            if !applied.is_empty() {
                tracing::info!(count = applied.len(), "applied database migrations");
            }
        })
        .map_err(|source| Error::Internal { message: "database migration failed".into(), source: Some(source) })
}

diesel::table! {
    /// diesel's own record of the migrations it ran (read here, never written).
    __diesel_schema_migrations (version) {
        version -> Text,
    }
}

/// The versions diesel recorded, or `None` when its table does not exist (an empty
/// database: every migration is pending). A macro: the same query on either connection.
macro_rules! applied_versions {
    ($conn:expr) => {
        match __diesel_schema_migrations::table.select(__diesel_schema_migrations::version).load::<String>($conn) {
            Ok(versions) => Ok(Some(versions)),
            // SQLite: "no such table"; PostgreSQL: "relation … does not exist".
            Err(diesel::result::Error::DatabaseError(_, info))
                if info.message().contains("no such table") || info.message().contains("does not exist") =>
            {
                Ok(None)
            }
            Err(err) => Err(Error::internal("reading the database's applied migrations", err)),
        }
    };
}

/// What a start would do to a database's schema, found without changing anything: the
/// migrations it would run, in order, and those the database records that this binary
/// does not know (it was written by a newer version). Migrations only move forward: a
/// start runs the pending ones and never a down migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationPlan {
    /// `false` for a SQLite file that does not exist yet (a start creates it).
    pub database_exists: bool,
    /// The names (`2026-12-12-000000_cron`) of the migrations a start would run.
    pub pending: Vec<String>,
    /// Versions the database records that no migration of this binary has.
    pub unknown: Vec<String>,
}

/// [`MigrationPlan`] of the database at `url`. SQLite is opened read-only (no file made,
/// not even its -wal and -shm) and PostgreSQL is only read, so this works beside a running
/// server and writes nothing, not even diesel's bookkeeping table.
pub fn migration_plan(url: &str) -> Result<MigrationPlan, Error> {
    match parse_url(url)? {
        Target::Sqlite(path) => {
            if !Path::new(path).exists() {
                return plan::<diesel::sqlite::Sqlite>(SQLITE_MIGRATIONS, None, false);
            }
            // A URI (diesel opens every file with SQLITE_OPEN_URI) that creates nothing:
            // mode=ro while a server has the WAL open (its -wal and -shm exist, and hold
            // what it wrote last); immutable=1 when they do not (a stopped server left
            // everything in the file), since even a read-only open would make them, owned
            // by whoever runs the check (root), and the server could not open them.
            let wal = ["-wal", "-shm"].iter().all(|suffix| Path::new(&format!("{path}{suffix}")).exists());
            let mode = if wal { "mode=ro" } else { "immutable=1" };
            let uri = format!("file:{}?{mode}", path.replace('%', "%25").replace('?', "%3f").replace('#', "%23"));
            let mut conn = SqliteConnection::establish(&uri)
                .map_err(|e| Error::Unavailable(format!("cannot open SQLite database {path}: {e}")))?;
            let applied = applied_versions!(&mut conn)?;
            plan::<diesel::sqlite::Sqlite>(SQLITE_MIGRATIONS, applied, true)
        }
        Target::Postgres(url) => {
            let mut conn = PgConnection::establish(url)
                .map_err(|e| Error::Unavailable(format!("cannot connect to PostgreSQL: {}", e.to_string().trim())))?;
            let applied = applied_versions!(&mut conn)?;
            plan::<diesel::pg::Pg>(POSTGRES_MIGRATIONS, applied, true)
        }
    }
}

fn plan<DB: diesel::backend::Backend>(
    migrations: EmbeddedMigrations,
    applied: Option<Vec<String>>,
    database_exists: bool,
) -> Result<MigrationPlan, Error> {
    use diesel::migration::MigrationSource;
    let known = MigrationSource::<DB>::migrations(&migrations).map_err(|source| Error::Internal {
        message: "reading the embedded migrations".into(),
        source: Some(source),
    })?;
    let applied = applied.unwrap_or_default();
    let mut pending: Vec<(String, String)> = known
        .iter()
        .map(|m| (m.name().version().to_string(), m.name().to_string()))
        .filter(|(version, _)| !applied.contains(version))
        .collect();
    pending.sort();
    let known_versions: Vec<String> = known.iter().map(|m| m.name().version().to_string()).collect();
    let mut unknown: Vec<String> = applied.into_iter().filter(|v| !known_versions.contains(v)).collect();
    unknown.sort();
    Ok(MigrationPlan { database_exists, pending: pending.into_iter().map(|(_, name)| name).collect(), unknown })
}

fn open_sqlite(path: &str) -> Result<Pools, Error> {
    if let Some(parent) = Path::new(path).parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::internal(format!("cannot create database directory {}", parent.display()), e))?;
    }
    // One connection first, outside the pool: its error says why the file cannot be opened,
    // where the pool would only time out.
    let mut conn = SqliteConnection::establish(path)
        .map_err(|e| Error::Unavailable(format!("cannot open SQLite database {path}: {e}")))?;
    setup_sqlite(&mut conn).map_err(|e| Error::internal("cannot configure SQLite", e))?;
    migrate(&mut conn, SQLITE_MIGRATIONS)?;
    drop(conn);

    let pool = Pool::builder()
        .max_size(SQLITE_POOL_SIZE)
        .min_idle(Some(1))
        .connection_timeout(CHECKOUT_TIMEOUT)
        .connection_customizer(Box::new(SqliteSetup))
        .build(ConnectionManager::<SqliteConnection>::new(path))
        .map_err(|e| Error::internal("cannot start the SQLite connection pool", e))?;
    tracing::info!(path, "opened SQLite store");
    Ok(Pools::Sqlite(pool))
}

fn open_postgres(url: &str) -> Result<Pools, Error> {
    // libpq's messages name host and port, never the password.
    let mut conn = PgConnection::establish(url)
        .map_err(|e| Error::Unavailable(format!("cannot connect to PostgreSQL: {}", e.to_string().trim())))?;
    migrate(&mut conn, POSTGRES_MIGRATIONS)?;
    drop(conn);

    let pool = Pool::builder()
        .max_size(POSTGRES_POOL_SIZE)
        .min_idle(Some(1))
        .connection_timeout(CHECKOUT_TIMEOUT)
        .build(ConnectionManager::<PgConnection>::new(url))
        .map_err(|e| Error::internal("cannot start the PostgreSQL connection pool", e))?;
    tracing::info!("opened PostgreSQL store");
    Ok(Pools::Postgres(pool))
}

/// Settings SQLite keeps per connection: WAL lets readers run beside the writer,
/// `busy_timeout` makes a writer wait for the lock instead of failing at once, and foreign
/// keys (off by default in SQLite) make deletes cascade as in PostgreSQL.
fn setup_sqlite(conn: &mut SqliteConnection) -> QueryResult<()> {
    use diesel::connection::SimpleConnection;
    conn.batch_execute(&format!(
        "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS};
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA foreign_keys = ON;"
    ))
}

#[derive(Debug)]
struct SqliteSetup;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqliteSetup {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        setup_sqlite(conn).map_err(diesel::r2d2::Error::QueryError)
    }
}

/// One attempt at a transaction that reads then writes and must see no concurrent writer in
/// between (first user is admin, next version number, checked status step).
pub(crate) trait TxConn: Sized {
    fn tx_once<T>(&mut self, body: &mut impl FnMut(&mut Self) -> Result<T, StoreError>) -> Result<T, StoreError>;
}

impl TxConn for SqliteConnection {
    /// `BEGIN IMMEDIATE` takes the write lock up front: writers queue (busy_timeout) instead
    /// of failing when a read lock cannot be upgraded.
    fn tx_once<T>(&mut self, body: &mut impl FnMut(&mut Self) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.immediate_transaction(|conn| body(conn))
    }
}

impl TxConn for PgConnection {
    /// SERIALIZABLE: PostgreSQL aborts one of two racing transactions with a serialization
    /// failure, and `write_tx` runs it again.
    fn tx_once<T>(&mut self, body: &mut impl FnMut(&mut Self) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.build_transaction().serializable().run(|conn| body(conn))
    }
}

/// Runs `body` in a write transaction, again if it lost a race to a concurrent writer.
pub(crate) fn write_tx<C: TxConn, T>(
    conn: &mut C,
    mut body: impl FnMut(&mut C) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut attempt = 1;
    loop {
        match conn.tx_once(&mut body) {
            Err(e) if e.is_retryable() && attempt < MAX_TX_ATTEMPTS => {
                // A little jitter so that the losers of one race do not collide again.
                let jitter = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::from(d.subsec_micros() % 3_000));
                std::thread::sleep(Duration::from_micros(u64::from(attempt) * 1_000 + jitter));
                attempt += 1;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(matches!(parse_url("sqlite:///var/lib/p.db"), Ok(Target::Sqlite("/var/lib/p.db"))));
        assert!(matches!(parse_url("sqlite://p.db"), Ok(Target::Sqlite("p.db"))));
        assert!(matches!(parse_url("postgres://u@h/db"), Ok(Target::Postgres("postgres://u@h/db"))));
        assert!(matches!(parse_url("postgresql://u@h/db"), Ok(Target::Postgres(_))));
        for bad in ["sqlite://", "sqlite:///", "mysql://u:secret@h/db", "/var/lib/p.db", ""] {
            match parse_url(bad) {
                Err(Error::Invalid(message)) => {
                    assert!(message.contains("sqlite:///absolute/path.db"), "{message}");
                    assert!(!message.contains("secret"), "{message}");
                }
                _ => panic!("{bad:?} should be refused"),
            }
        }
    }
}
