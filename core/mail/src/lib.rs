//! Mail to users over SMTP: the server's `[smtp] url` and `from`, through lettre on tokio
//! with rustls (ring, the web PKI's roots: no OpenSSL). This crate alone speaks SMTP; the
//! rest of the server sees `paastech_core::mail::Mailer`.
//!
//! `url` is lettre's: `smtp://HOST:PORT` (plain, for a relay on loopback or a private
//! network), `smtp://HOST:587?tls=required` (STARTTLS), `smtps://HOST:465` (TLS from the
//! start), with `USER:PASSWORD@` before the host when the server wants a login.

use std::time::Duration;

use async_trait::async_trait;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use paastech_core::mail::{Mail, Mailer};
use paastech_core::{Error, Result};

/// How long one message may take to hand over.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// The server as the operator wrote it, without a password: for errors and logs.
    server: String,
}

impl SmtpMailer {
    /// Checks `url` and `from`; connects only when a message is sent.
    pub fn new(url: &str, from: &str) -> Result<SmtpMailer> {
        let from: Mailbox =
            from.parse().map_err(|err| Error::Invalid(format!("[smtp] from {from:?} is not a mail address: {err}")))?;
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|err| Error::Invalid(format!("[smtp] url {:?}: {err}", without_password(url))))?
            .timeout(Some(SEND_TIMEOUT))
            .build();
        Ok(SmtpMailer { transport, from, server: without_password(url) })
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, mail: Mail) -> Result<()> {
        let to: Mailbox = mail
            .to
            .parse()
            .map_err(|err| Error::Invalid(format!("cannot mail {:?}: not a mail address: {err}", mail.to)))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject)
            .header(ContentType::TEXT_PLAIN)
            .body(mail.body)
            .map_err(|err| Error::internal("building a mail", err))?;
        self.transport
            .send(message)
            .await
            .map_err(|err| Error::Unavailable(format!("the mail server {} refused or failed: {err}", self.server)))?;
        tracing::info!(server = %self.server, "mail sent");
        Ok(())
    }
}

/// `url` with any password replaced by `***`, for messages.
fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(without_password("smtps://me:secret@mail.example.com:465"), "smtps://me:***@mail.example.com:465");
        assert_eq!(without_password("smtp://127.0.0.1:2525"), "smtp://127.0.0.1:2525");
    }

    #[test]
    fn bad_settings_are_named() {
        let err = SmtpMailer::new("smtp://127.0.0.1:2525", "not an address").err().expect("refused").to_string();
        assert!(err.contains("[smtp] from"), "{err}");
        let err = SmtpMailer::new("ftp://me:secret@x", "a@example.com").err().expect("refused").to_string();
        assert!(err.contains("[smtp] url") && !err.contains("secret"), "{err}");
    }
}
