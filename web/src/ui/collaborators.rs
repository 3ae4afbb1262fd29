//! A project's Collaborators tab: its members with their roles; owners add one (or change
//! a role), remove one and transfer the project. The forms call the API's own functions,
//! so both check the same roles and say the same things.

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use paastech_core::{Error, Role};
use serde::Deserialize;

use super::pages::Notice;
use super::project::{layout, load};
use super::session::Session;
use super::view::{FieldErrors, Layout, ProjectHead};
use super::{UiResult, render};
use crate::AppState;
use crate::api::collaborators::{MemberView, add_member, members, remove_member, transfer_project};
use crate::api::projects::{project_and_role, project_for};

#[derive(Template)]
#[template(path = "collaborators.html")]
pub struct CollaboratorsPage {
    pub l: Layout,
    pub p: ProjectHead,
    pub members: Vec<MemberView>,
    /// Whether the viewer may change them (an owner or an admin).
    pub manage: bool,
    /// The viewer's email: their own row offers "Leave".
    pub me: String,
    /// The add form's values, shown again with its error.
    pub email: String,
    pub role: String,
    pub errors: FieldErrors,
}

async fn page(
    state: &AppState,
    session: &Session,
    name: &str,
    notice: Option<String>,
    form: (String, String, FieldErrors),
    status: StatusCode,
) -> UiResult {
    let (project, head, _) = load(state, session, name, "collaborators", 1).await?;
    let (_, role) = project_and_role(state, &session.user, name, Role::Viewer).await?;
    let members = members(state, &project).await?;
    let (email, role_field, errors) = form;
    let page = CollaboratorsPage {
        l: layout(session, &head, "Collaborators", false).with_notice(notice),
        p: head,
        members,
        manage: role == Role::Owner && project.preview.is_none(),
        me: session.user.email.clone(),
        email,
        role: role_field,
        errors,
    };
    render(status, &page)
}

pub async fn collaborators_page(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Query(notice): Query<Notice>,
) -> UiResult {
    let empty = (String::new(), "developer".to_owned(), FieldErrors::default());
    page(&state, &session, &name, notice.message(), empty, StatusCode::OK).await
}

#[derive(Deserialize)]
pub struct MemberForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    role: String,
}

/// A refusal the form shows beside its field; anything else is the error page.
fn form_error(err: Error, field: &'static str) -> Result<(StatusCode, FieldErrors), Error> {
    let status = match &err {
        Error::Invalid(_) => StatusCode::BAD_REQUEST,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::Conflict(_) => StatusCode::CONFLICT,
        _ => return Err(err),
    };
    Ok((status, FieldErrors::one(field, err.to_string())))
}

pub async fn member_add(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<MemberForm>,
) -> UiResult {
    let project = project_for(&state, &session.user, &name, Role::Owner).await?;
    let result = match Role::parse(&form.role) {
        Ok(role) => add_member(&state, &session.user, &project, &form.email, role).await.map(drop),
        Err(err) => Err(err),
    };
    match result {
        Ok(()) => {
            Ok(Redirect::to(&format!("/projects/{}/collaborators?done=member-set", project.name)).into_response())
        }
        Err(err) => {
            let (status, errors) = form_error(err, "email")?;
            page(&state, &session, &name, None, (form.email, form.role, errors), status).await
        }
    }
}

pub async fn member_remove(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<MemberForm>,
) -> UiResult {
    // Any member may leave; removing someone else is an owner's.
    let leaving = form.email == session.user.email;
    let project = project_for(&state, &session.user, &name, if leaving { Role::Viewer } else { Role::Owner }).await?;
    match remove_member(&state, &session.user, &project, &form.email).await {
        Ok(()) if leaving => Ok(Redirect::to("/?done=left").into_response()),
        Ok(()) => {
            Ok(Redirect::to(&format!("/projects/{}/collaborators?done=member-removed", project.name)).into_response())
        }
        Err(err) => {
            let (status, errors) = form_error(err, "members")?;
            page(&state, &session, &name, None, (String::new(), "developer".into(), errors), status).await
        }
    }
}

pub async fn transfer(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<MemberForm>,
) -> UiResult {
    let project = project_for(&state, &session.user, &name, Role::Owner).await?;
    match transfer_project(&state, &session.user, &project, &form.email).await {
        Ok(_) => {
            Ok(Redirect::to(&format!("/projects/{}/collaborators?done=transferred", project.name)).into_response())
        }
        Err(err) => {
            let (status, errors) = form_error(err, "transfer")?;
            page(&state, &session, &name, None, (String::new(), "developer".into(), errors), status).await
        }
    }
}
