//! What the server mails users, and the single-use links in those mails: the address
//! check after sign-up, password resets, and the notice that someone was given access to a
//! project. The messages name the server's public URL (`[api] public_url`); their links go
//! to pages of the web UI. Tokens are random (`auth::new_token`), stored only as their
//! SHA-256 hash, used once, and expire (`EmailPurpose::lifetime`). Without `[smtp]` every
//! flow here is off: accounts count as verified and a reset answers 503 saying why.

use std::sync::Arc;

use paastech_core::mail::{EmailPurpose, Mail, Mailer};
use paastech_core::{AuditAction, Error, Result, Timestamp, User};

use crate::AppState;
use crate::audit;
use crate::auth;
use crate::ui::session::SESSION_TOKEN_NAME;

/// The server's mail: its sender, and where its links point.
pub struct MailSettings {
    pub mailer: Arc<dyn Mailer>,
    /// `https://paastech.example.com`: the web UI's address as users reach it.
    pub public_url: String,
}

/// The name of the tokens `POST /auth/login` makes (a password reset ends them too).
pub const LOGIN_TOKEN_NAME: &str = "login";

/// Why a flow that needs mail is off.
pub fn mail_off() -> Error {
    Error::Unavailable("this server sends no mail (no [smtp] in its configuration): ask an admin".into())
}

/// After a sign-up: with mail, the account is unverified until its link is used, and the
/// link is sent (in the background: a mail server that is slow or down does not fail the
/// sign-up; the user can ask again). Without mail, it counts as verified.
pub async fn account_created(state: &AppState, user: &User) -> Result<()> {
    if state.mail.is_none() {
        return state.store.set_email_verified(user.id, true).await;
    }
    let (state, user) = (state.clone(), user.clone());
    tokio::spawn(async move {
        if let Err(err) = send_link(&state, &user, EmailPurpose::Verify).await {
            tracing::warn!(user = user.id, error = %err, "cannot mail the address check");
        }
    });
    Ok(())
}

/// Whether the user may create projects: with mail, only once their address is verified.
pub fn require_verified(state: &AppState, user: &User) -> Result<()> {
    if state.mail.is_some() && !user.email_verified {
        return Err(Error::Forbidden(format!(
            "verify your email address first: follow the link mailed to {} (or ask for a new one: POST /api/v1/auth/verify/resend, or the dashboard)",
            user.email
        )));
    }
    Ok(())
}

/// Makes a token for `purpose`, keeps its hash, and mails its link to the user.
pub async fn send_link(state: &AppState, user: &User, purpose: EmailPurpose) -> Result<()> {
    let settings = state.mail.as_ref().ok_or_else(mail_off)?;
    let token = auth::new_token();
    let expires = Timestamp(Timestamp::now().0 + purpose.lifetime().as_millis() as i64);
    state.store.create_email_token(user.id, purpose, &auth::token_hash(&token), expires).await?;
    let base = settings.public_url.trim_end_matches('/');
    let mail = match purpose {
        EmailPurpose::Verify => Mail {
            to: user.email.clone(),
            subject: "Verify your email address for PaaSTech".into(),
            body: format!(
                "An account was made with this address on the PaaSTech server at {base}.\n\n\
                 To verify it, open this link (valid for 48 hours, once):\n\n{base}/verify-email?token={token}\n\n\
                 If you did not sign up, ignore this mail.\n"
            ),
        },
        EmailPurpose::Reset => Mail {
            to: user.email.clone(),
            subject: "Reset your PaaSTech password".into(),
            body: format!(
                "Someone asked to reset the password of your account on the PaaSTech server at {base}.\n\n\
                 To choose a new password, open this link (valid for one hour, once):\n\n{base}/password/reset?token={token}\n\n\
                 If it was not you, ignore this mail: your password stays as it is.\n"
            ),
        },
    };
    settings.mailer.send(mail).await
}

/// A password reset asked for `email`: the link goes to the account if there is one.
/// The answer is the same either way, and comes before the mail is sent, so neither its
/// content nor its timing tells whether the address has an account.
pub async fn request_reset(state: &AppState, email: &str) -> Result<()> {
    if state.mail.is_none() {
        return Err(mail_off());
    }
    let email = email.trim().to_lowercase();
    // A malformed address is refused (that says nothing about which accounts exist).
    paastech_core::validate_email(&email)?;
    if email.chars().any(char::is_control) {
        return Err(Error::Invalid(format!("invalid email address {email:?}: control characters")));
    }
    let state = state.clone();
    tokio::spawn(async move {
        match state.store.user_by_email(&email).await {
            Ok((user, _)) => {
                if let Err(err) = send_link(&state, &user, EmailPurpose::Reset).await {
                    tracing::warn!(user = user.id, error = %err, "cannot mail a password reset link");
                }
            }
            Err(Error::NotFound(_)) => tracing::info!("password reset asked for an address without an account"),
            Err(err) => tracing::warn!(error = %err, "password reset: cannot look the address up"),
        }
    });
    Ok(())
}

/// The link's token proves the address: the account is verified.
pub async fn verify(state: &AppState, token: &str) -> Result<User> {
    let user =
        state.store.use_email_token(EmailPurpose::Verify, &auth::token_hash(token), Timestamp::now()).await.map_err(
            |err| match err {
                Error::NotFound(_) => Error::Invalid(
                    "this verification link is unknown, was used already, or has expired: ask for a new one".into(),
                ),
                other => other,
            },
        )?;
    state.store.set_email_verified(user.id, true).await?;
    tracing::info!(user = user.id, "email address verified");
    Ok(User { email_verified: true, ..user })
}

/// Sets a new password with a reset link's token, once. Every session and login token
/// of the account ends (named API tokens stay: they are secrets of their own).
pub async fn reset_password(state: &AppState, token: &str, password: String) -> Result<User> {
    auth::check_password_rules(&password)?;
    let user =
        state.store.use_email_token(EmailPurpose::Reset, &auth::token_hash(token), Timestamp::now()).await.map_err(
            |err| match err {
                Error::NotFound(_) => Error::Invalid(
                    "this reset link is unknown, was used already, or has expired: ask for a new one".into(),
                ),
                other => other,
            },
        )?;
    let hash = auth::hash_password(password).await?;
    state.store.set_password(user.id, &hash).await?;
    // A mailed link proves the address as well as the verification link does.
    state.store.set_email_verified(user.id, true).await?;
    let ended = state.store.delete_tokens_named(user.id, &[SESSION_TOKEN_NAME, LOGIN_TOKEN_NAME]).await?;
    tracing::info!(user = user.id, sessions_ended = ended, "password reset");
    state.audit(audit::by(&user, AuditAction::PasswordReset)).await;
    Ok(User { email_verified: true, ..user })
}

/// Tells `to` that `by` gave them `role` on `project` (in the background; without mail,
/// nothing).
pub fn collaborator_added(state: &AppState, project: &str, to: &str, role: &str, by: &str) {
    let Some(settings) = state.mail.as_ref() else { return };
    let base = settings.public_url.trim_end_matches('/');
    let mail = Mail {
        to: to.to_owned(),
        subject: format!("You were added to {project} on PaaSTech"),
        body: format!(
            "{by} gave you the role {role} on the project {project} on the PaaSTech server at {base}.\n\n\
             Open it: {base}/projects/{project}\n"
        ),
    };
    let mailer = Arc::clone(&settings.mailer);
    tokio::spawn(async move {
        if let Err(err) = mailer.send(mail).await {
            tracing::warn!(error = %err, "cannot mail a collaborator notice");
        }
    });
}
