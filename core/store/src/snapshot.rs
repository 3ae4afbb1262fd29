//! A consistent copy of the platform's database while the server runs, and putting one
//! back into an empty database, for `paastech server backup|restore`.
//!
//! SQLite: `VACUUM INTO` writes a compacted copy as of one read transaction (writers go on
//! beside it, WAL mode); restoring copies that file to where the config's URL points.
//! PostgreSQL: `pg_dump --format=custom` (one snapshot, `--serializable-deferrable` is not
//! needed for a dump) and `pg_restore` into the configured database, which must be empty.
//! The password goes to them in `PGPASSWORD`, never on their command line.

use std::path::Path;
use std::process::{Command, Stdio};

use diesel::prelude::*;
use diesel::sql_types::Text;
use paastech_core::Error;

/// Builds named by a path under the old data directory (`moved.0`: a process build's
/// artifact is its directory, a static site's command names it) are named under the new
/// one (`moved.1`). `sql` binds the old prefix then the new, both with a trailing slash, so
/// that `/data2` is not taken for a path under `/data`. A macro: the same statement on
/// either backend's connection type.
macro_rules! rebase_builds {
    ($conn:expr, $sql:expr, $moved:expr) => {{
        let (old, new) =
            ($moved.0.trim_end_matches('/').to_owned() + "/", $moved.1.trim_end_matches('/').to_owned() + "/");
        if old == new {
            Ok(())
        } else {
            diesel::sql_query($sql)
                .bind::<Text, _>(old)
                .bind::<Text, _>(new)
                .execute($conn)
                .map(drop)
                .map_err(|e| Error::internal("naming the restored builds under the new data directory", e))
        }
    }};
}

/// Which database a snapshot is of, named in the backup's manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    Sqlite,
    Postgres,
}

impl DatabaseKind {
    pub fn of(url: &str) -> Result<DatabaseKind, Error> {
        if url.starts_with("sqlite://") {
            Ok(DatabaseKind::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(DatabaseKind::Postgres)
        } else {
            Err(Error::Invalid(format!("unsupported database url: {}", crate::conn::ACCEPTED_URLS)))
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseKind::Sqlite => "sqlite",
            DatabaseKind::Postgres => "postgres",
        }
    }

    pub fn parse(name: &str) -> Option<DatabaseKind> {
        match name {
            "sqlite" => Some(DatabaseKind::Sqlite),
            "postgres" => Some(DatabaseKind::Postgres),
            _ => None,
        }
    }
}

/// Writes a consistent copy of the database at `url` to `dest` (which must not exist).
pub fn snapshot(url: &str, dest: &Path) -> Result<DatabaseKind, Error> {
    let kind = DatabaseKind::of(url)?;
    match kind {
        DatabaseKind::Sqlite => {
            let path = sqlite_path(url)?;
            let mut conn = SqliteConnection::establish(path)
                .map_err(|e| Error::Unavailable(format!("cannot open SQLite database {path}: {e}")))?;
            let dest = dest.to_str().ok_or_else(|| Error::Invalid("the snapshot path is not UTF-8".into()))?;
            diesel::sql_query("VACUUM INTO ?")
                .bind::<Text, _>(dest)
                .execute(&mut conn)
                .map_err(|e| Error::internal("copying the SQLite database (VACUUM INTO)", e))?;
        }
        DatabaseKind::Postgres => {
            let (url, password) = split_password(url);
            let mut command = Command::new("pg_dump");
            command.args(["--format=custom", "--no-password", "--file"]).arg(dest).arg("--dbname").arg(url);
            run(command, password, "pg_dump")?;
        }
    }
    Ok(kind)
}

/// Puts a snapshot of `kind` back as the database at `url`: a SQLite file that does not
/// exist yet, or a PostgreSQL database with no tables. Builds kept as directories under the
/// backed-up server's data directory (`moved.0`) are then named under the new one
/// (`moved.1`): a process build's artifact is its directory's absolute path.
pub fn restore_snapshot(url: &str, kind: DatabaseKind, src: &Path, moved: (&str, &str)) -> Result<(), Error> {
    let target = DatabaseKind::of(url)?;
    if target != kind {
        return Err(Error::Invalid(format!(
            "the backup holds a {} database and this server's [database] url is {}: restore it onto the same kind",
            kind.as_str(),
            target.as_str()
        )));
    }
    match kind {
        DatabaseKind::Sqlite => {
            let path = Path::new(sqlite_path(url)?);
            if path.exists() {
                return Err(Error::Conflict(format!(
                    "{} exists: a restore only fills an empty data directory",
                    path.display()
                )));
            }
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::internal(format!("creating {}", parent.display()), e))?;
            }
            std::fs::copy(src, path).map_err(|e| Error::internal(format!("writing {}", path.display()), e))?;
            let mut conn = SqliteConnection::establish(sqlite_path(url)?)
                .map_err(|e| Error::Unavailable(format!("cannot open SQLite database {}: {e}", path.display())))?;
            rebase_builds!(
                &mut conn,
                "UPDATE builds SET artifact = replace(artifact, ?1, ?2), processes = replace(processes, ?1, ?2)",
                moved
            )?;
        }
        DatabaseKind::Postgres => {
            let mut conn = PgConnection::establish(url)
                .map_err(|e| Error::Unavailable(format!("cannot connect to PostgreSQL: {}", e.to_string().trim())))?;
            #[derive(QueryableByName)]
            struct Count {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                n: i64,
            }
            let tables: Count =
                diesel::sql_query("SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = 'public'")
                    .get_result(&mut conn)
                    .map_err(|e| Error::internal("reading the database's tables", e))?;
            if tables.n > 0 {
                return Err(Error::Conflict(
                    "the configured PostgreSQL database has tables: a restore only fills an empty database".into(),
                ));
            }
            let (url, password) = split_password(url);
            let mut command = Command::new("pg_restore");
            command.args(["--no-owner", "--exit-on-error", "--single-transaction", "--no-password", "--dbname"]);
            command.arg(url).arg(src);
            run(command, password, "pg_restore")?;
            rebase_builds!(
                &mut conn,
                "UPDATE builds SET artifact = replace(artifact, $1, $2), processes = replace(processes, $1, $2)",
                moved
            )?;
        }
    }
    Ok(())
}

fn sqlite_path(url: &str) -> Result<&str, Error> {
    url.strip_prefix("sqlite://")
        .filter(|p| !p.is_empty() && *p != "/")
        .ok_or_else(|| Error::Invalid(format!("database url names no file: {}", crate::conn::ACCEPTED_URLS)))
}

fn run(mut command: Command, password: Option<String>, program: &str) -> Result<(), Error> {
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    let output = command
        .env_remove("PGSERVICE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| Error::Unavailable(format!("cannot run {program} (PostgreSQL's client tools): {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(Error::Unavailable(format!("{program} failed: {}", stderr.lines().take(3).collect::<Vec<_>>().join(" | "))))
    }
}

/// The URL without its password, and the password (percent-decoded), so that the password
/// travels in the environment rather than on a command line anyone on the machine can read.
fn split_password(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else { return (url.to_owned(), None) };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else { return (url.to_owned(), None) };
    let Some((user, password)) = userinfo.split_once(':') else { return (url.to_owned(), None) };
    (
        format!("{scheme}://{user}@{host}{tail}"),
        Some(percent_encoding::percent_decode_str(password).decode_utf8_lossy().into_owned()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_leaves_the_url() {
        assert_eq!(
            split_password("postgres://ada:p%40ss:w@db.example:5432/paas?sslmode=require"),
            ("postgres://ada@db.example:5432/paas?sslmode=require".to_owned(), Some("p@ss:w".to_owned()))
        );
        assert_eq!(split_password("postgres://ada@db/paas"), ("postgres://ada@db/paas".to_owned(), None));
        assert_eq!(split_password("postgresql:///paas"), ("postgresql:///paas".to_owned(), None));
    }

    #[test]
    fn a_sqlite_snapshot_is_a_copy_that_a_restore_puts_back_once() {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}", dir.path().join("live.db").display());
        let mut conn = SqliteConnection::establish(url.strip_prefix("sqlite://").expect("path")).expect("open");
        diesel::sql_query("CREATE TABLE t (v TEXT)").execute(&mut conn).expect("create");
        diesel::sql_query("INSERT INTO t VALUES ('kept')").execute(&mut conn).expect("insert");
        diesel::sql_query("CREATE TABLE builds (artifact TEXT, processes TEXT)").execute(&mut conn).expect("create");
        for artifact in ["/a/releases/p/v1", "/ab/releases/p/v1", "paastech/p:v1"] {
            diesel::sql_query("INSERT INTO builds VALUES (?, ?)")
                .bind::<Text, _>(artifact)
                .bind::<Text, _>(format!(r#"{{"web":"serve {artifact}"}}"#))
                .execute(&mut conn)
                .expect("insert");
        }

        let copy = dir.path().join("copy.db");
        assert_eq!(snapshot(&url, &copy).expect("snapshot"), DatabaseKind::Sqlite);
        let restored = format!("sqlite://{}", dir.path().join("new/restored.db").display());
        restore_snapshot(&restored, DatabaseKind::Sqlite, &copy, ("/a", "/b")).expect("restore");
        let mut conn = SqliteConnection::establish(restored.strip_prefix("sqlite://").expect("path")).expect("open");
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            v: String,
        }
        let row: Row = diesel::sql_query("SELECT v FROM t").get_result(&mut conn).expect("row");
        assert_eq!(row.v, "kept");
        let artifacts: Vec<Row> =
            diesel::sql_query("SELECT artifact AS v FROM builds ORDER BY rowid").load(&mut conn).expect("builds");
        let artifacts: Vec<&str> = artifacts.iter().map(|r| r.v.as_str()).collect();
        assert_eq!(artifacts, ["/b/releases/p/v1", "/ab/releases/p/v1", "paastech/p:v1"], "only paths under /a move");
        let processes: Row = diesel::sql_query("SELECT processes AS v FROM builds ORDER BY rowid LIMIT 1")
            .get_result(&mut conn)
            .expect("row");
        assert_eq!(processes.v, r#"{"web":"serve /b/releases/p/v1"}"#);

        let again =
            restore_snapshot(&restored, DatabaseKind::Sqlite, &copy, ("/a", "/b")).expect_err("not over a database");
        assert!(matches!(again, Error::Conflict(_)), "{again}");
        let postgres =
            restore_snapshot("postgres://x@h/db", DatabaseKind::Sqlite, &copy, ("/a", "/b")).expect_err("kind");
        assert!(postgres.to_string().contains("same kind"), "{postgres}");
    }
}
