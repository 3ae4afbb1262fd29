//! Account → Security: enrolling in two-factor login (TOTP) and turning it off.

use axum::Form;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use paastech_core::Error;
use serde::Deserialize;

use super::pages::Notice;
use super::session::Session;
use super::view::{FieldErrors, Layout, PendingTotp, SecurityPage};
use super::{UiResult, render};
use crate::AppState;
use crate::api::two_factor;

async fn page(
    state: &AppState,
    session: &Session,
    notice: Option<String>,
    recovery_codes: Option<Vec<String>>,
    errors: FieldErrors,
    status: StatusCode,
) -> UiResult {
    let enrolment = state.store.totp(session.user.id).await?;
    let (enabled, recovery_left) = enrolment.as_ref().map_or((false, 0), |e| (e.enabled, e.recovery_codes_left));
    let pending = match enrolment {
        Some(e) if !e.enabled => {
            let totp = crate::two_factor::totp(&e.secret, &session.user.email)?;
            let url = crate::two_factor::otpauth_url(&totp)?;
            Some(PendingTotp {
                secret: crate::two_factor::secret_text(&totp),
                qr_svg: crate::two_factor::qr_svg(&url)?,
            })
        }
        _ => None,
    };
    let l = Layout::new(session, "Security", "security").with_notice(notice);
    render(status, &SecurityPage { l, enabled, recovery_left, pending, recovery_codes, errors })
}

pub async fn security(State(state): State<AppState>, session: Session, Query(notice): Query<Notice>) -> UiResult {
    page(&state, &session, notice.message(), None, FieldErrors::default(), StatusCode::OK).await
}

pub async fn start(State(state): State<AppState>, session: Session) -> UiResult {
    match two_factor::start(&state, &session.user).await {
        // Enabled already (another tab): the page says so.
        Ok(_) | Err(Error::Conflict(_)) => Ok(Redirect::to("/account/security").into_response()),
        Err(other) => Err(other.into()),
    }
}

#[derive(Deserialize)]
pub struct CodeForm {
    #[serde(default)]
    code: String,
}

pub async fn confirm(State(state): State<AppState>, session: Session, Form(form): Form<CodeForm>) -> UiResult {
    match two_factor::confirm(&state, &session.user, &form.code).await {
        Ok(codes) => page(&state, &session, None, Some(codes), FieldErrors::default(), StatusCode::OK).await,
        Err(Error::Invalid(message)) => {
            let errors = FieldErrors::one("code", capitalized(&message));
            page(&state, &session, None, None, errors, StatusCode::BAD_REQUEST).await
        }
        Err(Error::NotFound(_) | Error::Conflict(_)) => Ok(Redirect::to("/account/security").into_response()),
        Err(other) => Err(other.into()),
    }
}

pub async fn disable(State(state): State<AppState>, session: Session, Form(form): Form<CodeForm>) -> UiResult {
    match two_factor::disable(&state, &session.user, &form.code).await {
        Ok(()) | Err(Error::NotFound(_)) => Ok(Redirect::to("/account/security?done=2fa-disabled").into_response()),
        Err(Error::Invalid(message)) => {
            let errors = FieldErrors::one("code", capitalized(&message));
            page(&state, &session, None, None, errors, StatusCode::BAD_REQUEST).await
        }
        Err(other) => Err(other.into()),
    }
}

/// An API message as a sentence for the page.
fn capitalized(message: &str) -> String {
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => format!("{}{}.", first.to_uppercase(), chars.as_str()),
        None => String::new(),
    }
}
