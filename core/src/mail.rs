//! Mail to users (issue #16): the seam the server's `[smtp]` fills (crate `paastech-mail`),
//! and the single-use links mailed for address verification and password resets. Without
//! a mailer these flows are off, and the routes that need one say so.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;

/// One plain-text message to one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub body: String,
}

/// Sends mail. An error names what failed (the server, the address), never the message.
#[async_trait]
pub trait Mailer: Send + Sync {
    async fn send(&self, mail: Mail) -> Result<()>;
}

/// What a mailed link's token is for; each purpose is its own namespace of tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailPurpose {
    /// Proves the account's address (sent at sign-up, and again on request).
    Verify,
    /// Sets a new password without the old one.
    Reset,
}

impl EmailPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            EmailPurpose::Verify => "verify",
            EmailPurpose::Reset => "reset",
        }
    }

    /// How long a link stays usable: a reset link an hour (it is as good as the password),
    /// a verification link two days.
    pub fn lifetime(self) -> Duration {
        match self {
            EmailPurpose::Verify => Duration::from_secs(48 * 3600),
            EmailPurpose::Reset => Duration::from_secs(3600),
        }
    }
}
