//! The admin page's user actions: disable or enable an account, delete one with what
//! becomes of its projects, reset one's two-factor login. The API's functions do the work, with the same checks (the
//! last admin is kept; a user with projects is deleted only with their fate said).

use axum::Form;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect};
use paastech_core::Error;
use serde::Deserialize;

use super::UiResult;
use super::session::Session;
use crate::AppState;
use crate::api::users::{ProjectsFate, delete_user, set_disabled};

fn admin_only(session: &Session) -> Result<(), Error> {
    // As the admin page itself: to others it does not exist.
    if session.user.is_admin { Ok(()) } else { Err(Error::NotFound("no such page".into())) }
}

#[derive(Deserialize)]
pub struct DisableForm {
    email: String,
    /// `true` or `false`.
    disabled: String,
}

pub async fn disable(State(state): State<AppState>, session: Session, Form(form): Form<DisableForm>) -> UiResult {
    admin_only(&session)?;
    let disabled = form.disabled == "true";
    set_disabled(&state, &session.user, &form.email, disabled).await?;
    let done = if disabled { "user-disabled" } else { "user-enabled" };
    Ok(Redirect::to(&format!("/admin?done={done}")).into_response())
}

#[derive(Deserialize)]
pub struct DeleteForm {
    email: String,
    /// Empty, `transfer` or `delete`.
    #[serde(default)]
    projects: String,
    #[serde(default)]
    to: String,
}

pub async fn delete(State(state): State<AppState>, session: Session, Form(form): Form<DeleteForm>) -> UiResult {
    admin_only(&session)?;
    let fate = match form.projects.as_str() {
        "" => None,
        "transfer" => Some(ProjectsFate::Transfer),
        "delete" => Some(ProjectsFate::Delete),
        other => return Err(Error::Invalid(format!("unknown choice for the projects: {other:?}")).into()),
    };
    let to = Some(form.to.trim()).filter(|to| !to.is_empty());
    delete_user(&state, &session.user, &form.email, fate, to).await?;
    Ok(Redirect::to("/admin?done=user-deleted").into_response())
}

#[derive(Deserialize)]
pub struct ResetForm {
    email: String,
}

/// Resets a user's two-factor login (lost device); their sessions end.
pub async fn reset_2fa(State(state): State<AppState>, session: Session, Form(form): Form<ResetForm>) -> UiResult {
    admin_only(&session)?;
    let done = match crate::api::two_factor::reset(&state, &session.user, &form.email).await {
        Ok(_) => "2fa-reset",
        // Nothing to reset: say so on the page rather than as an error page.
        Err(Error::NotFound(_)) => "2fa-none",
        Err(other) => return Err(other.into()),
    };
    Ok(Redirect::to(&format!("/admin?done={done}")).into_response())
}
