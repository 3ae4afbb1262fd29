//! The little of Redis URLs this crate needs: where the server is (to give apps a URL to
//! it), checked so that what the operator wrote can be served to add-on users.

use paastech_core::{Error, Result};

/// A `redis://[user[:password]@]host[:port][/0]` URL, split where this crate needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// The URL as written: what the client connects with.
    raw: String,
    /// `user[:password]`, percent-encoded as written; empty when absent.
    userinfo: String,
    /// `host[:port]` as written (`[::1]:6379` stays bracketed).
    pub hostport: String,
}

/// The password never reaches a log.
impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.redacted())
    }
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<Self> {
        let rest = match url.strip_prefix("redis://") {
            Some(rest) => rest,
            None if url.starts_with("rediss://") => {
                return Err(Error::Invalid(
                    "url must start with redis:// (rediss://, Redis over TLS, is not supported)".into(),
                ));
            }
            None => return Err(Error::Invalid("url must start with redis://".into())),
        };
        if rest.contains('?') {
            return Err(Error::Invalid("url takes no parameters (nothing after ?)".into()));
        }
        let (authority, database) = rest.split_once('/').unwrap_or((rest, ""));
        // Add-on users may not SELECT (see the ACL rules): they live in database 0, where
        // this crate also deletes and backs up their keys.
        if !database.is_empty() && database != "0" {
            return Err(Error::Invalid(format!(
                "url names database {database:?}: redis add-ons use database 0 only (their users may not SELECT)"
            )));
        }
        let (userinfo, hostport) = authority.rsplit_once('@').unwrap_or(("", authority));
        if hostport.is_empty() || hostport.starts_with(':') {
            return Err(Error::Invalid("url must name the server's host (redis://user:password@host:port)".into()));
        }
        Ok(RedisUrl { raw: url.to_owned(), userinfo: userinfo.to_owned(), hostport: hostport.to_owned() })
    }

    /// The URL as written, password included: only for the client.
    pub fn as_secret_str(&self) -> &str {
        &self.raw
    }

    /// A URL to the same server as another user.
    pub fn with_user(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@{}", self.hostport)
    }

    fn redacted(&self) -> String {
        match self.userinfo.split_once(':') {
            Some((user, _)) => format!("redis://{user}:***@{}", self.hostport),
            None if self.userinfo.is_empty() => format!("redis://{}", self.hostport),
            None => format!("redis://{}@{}", self.userinfo, self.hostport),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let url = RedisUrl::parse("redis://default:s3cret@127.0.0.1:6379").expect("valid");
        assert_eq!(url.hostport, "127.0.0.1:6379");
        assert_eq!(format!("{url:?}"), "redis://default:***@127.0.0.1:6379");
        assert_eq!(url.with_user("pt_a_b", "pw"), "redis://pt_a_b:pw@127.0.0.1:6379");
        assert_eq!(RedisUrl::parse("redis://[::1]:6379/0").expect("valid").hostport, "[::1]:6379");
        assert_eq!(format!("{:?}", RedisUrl::parse("redis://h").expect("valid")), "redis://h");

        for (bad, why) in [
            ("postgres://h", "url must start with redis://"),
            ("rediss://h:6380", "url must start with redis:// (rediss://, Redis over TLS, is not supported)"),
            ("redis://h/2", "url names database \"2\""),
            ("redis://h?protocol=resp3", "url takes no parameters"),
            ("redis://user:pw@", "url must name the server's host"),
            ("redis://:6379", "url must name the server's host"),
        ] {
            let err = RedisUrl::parse(bad).expect_err(bad);
            assert!(err.to_string().starts_with(why), "{bad}: {err}");
        }
    }
}
