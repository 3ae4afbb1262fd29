//! The little of PostgreSQL connection URLs this crate needs: where the server is (to give
//! apps a URL to it) and how to hand a password to `pg_dump` outside its argv.

use paastech_core::{Error, Result};

/// A `postgres://` or `postgresql://` URL, split where this crate needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    /// `user[:password]`, percent-encoded as written; empty when absent.
    pub userinfo: String,
    /// `host[:port]` as written (`[::1]:5432` stays bracketed).
    pub hostport: String,
    pub database: String,
    /// What follows `?`, as written; empty when absent.
    pub query: String,
}

/// The password never reaches a log.
impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.redacted())
    }
}

impl PgUrl {
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| Error::Invalid("url must start with postgres:// or postgresql://".into()))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, database) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = authority.rsplit_once('@').unwrap_or(("", authority));
        if hostport.is_empty() || hostport.starts_with(':') {
            return Err(Error::Invalid("url must name the server's host (postgres://user@host:port/db)".into()));
        }
        Ok(PgUrl {
            userinfo: userinfo.to_owned(),
            hostport: hostport.to_owned(),
            database: database.to_owned(),
            query: query.to_owned(),
        })
    }

    /// The user, without the password (still percent-encoded).
    pub fn user(&self) -> &str {
        self.userinfo.split_once(':').map_or(self.userinfo.as_str(), |(user, _)| user)
    }

    /// The password, if the URL has one (still percent-encoded).
    pub fn password(&self) -> Option<&str> {
        self.userinfo.split_once(':').map(|(_, password)| password)
    }

    /// The same URL without its password: what may go into an argv or a log.
    pub fn without_password(&self) -> String {
        self.render(self.user())
    }

    fn redacted(&self) -> String {
        match self.password() {
            Some(_) => self.render(&format!("{}:***", self.user())),
            None => self.render(self.user()),
        }
    }

    pub fn render(&self, userinfo: &str) -> String {
        let at = if userinfo.is_empty() { "" } else { "@" };
        let query = if self.query.is_empty() { String::new() } else { format!("?{}", self.query) };
        format!("postgres://{userinfo}{at}{}/{}{query}", self.hostport, self.database)
    }

    /// Whether the query already sets `key`.
    pub fn has_param(&self, key: &str) -> bool {
        self.query.split('&').any(|pair| pair.split_once('=').map_or(pair, |(k, _)| k) == key)
    }
}

/// Percent-decoding of a URL part (a password written `p%40ss`).
pub fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_operators_write() {
        let url = PgUrl::parse("postgres://admin:s%40cret@db.example:5433/postgres?sslmode=require").expect("valid");
        assert_eq!(url.user(), "admin");
        assert_eq!(url.password(), Some("s%40cret"));
        assert_eq!(url.hostport, "db.example:5433");
        assert_eq!(url.database, "postgres");
        assert!(url.has_param("sslmode"));
        assert!(!url.has_param("connect_timeout"));
        assert_eq!(url.without_password(), "postgres://admin@db.example:5433/postgres?sslmode=require");
        assert_eq!(format!("{url:?}"), "postgres://admin:***@db.example:5433/postgres?sslmode=require");
        assert_eq!(percent_decode("s%40cret"), "s@cret");

        let bare = PgUrl::parse("postgresql://[::1]").expect("valid");
        assert_eq!(bare.hostport, "[::1]");
        assert_eq!(bare.user(), "");
        assert_eq!(bare.without_password(), "postgres://[::1]/");
    }

    #[test]
    fn refuses_what_is_not_a_server() {
        for bad in ["mysql://a@b/c", "postgres://", "postgres://user@/db", "postgres://:5432/db", "localhost:5432"] {
            assert!(PgUrl::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
