//! A project's members: its owner (`Project::owner_id`) and its collaborators, each with a
//! role, and the transfer of the project to another user. Members see the list; owners
//! change it. A preview app has no members of its own: its parent's act on it.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use paastech_core::AuditAction;
use paastech_core::{Collaborator, Error, Project, Role, User};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{JsonBodyErrors, NeedsToken, ParamErrors};
use super::projects::project_for;
use super::schemas::ProjectNameSchema;
use super::{JsonBody, PathParam};
use crate::AppState;
use crate::audit;
use crate::auth::CurrentUser;
use crate::error::{ApiResult, ErrorStatus};

/// A role's name, as requests and answers spell it.
#[derive(Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RoleName {
    /// Everything, including deleting the project, its members and transferring it.
    Owner,
    /// Push, deploy, config, scale, run, domains, add-ons, webhooks, previews.
    Developer,
    /// Read only, never config values, add-on credentials or webhooks.
    Viewer,
}

impl From<RoleName> for Role {
    fn from(name: RoleName) -> Role {
        match name {
            RoleName::Owner => Role::Owner,
            RoleName::Developer => Role::Developer,
            RoleName::Viewer => Role::Viewer,
        }
    }
}

#[derive(Deserialize, ToSchema)]
pub struct NewCollaborator {
    /// The email of an existing account.
    #[schema(examples("dev@example.com"))]
    pub email: String,
    pub role: RoleName,
}

#[derive(Deserialize, ToSchema)]
pub struct Transfer {
    /// The email of the account that becomes the project's owner.
    #[schema(examples("new-owner@example.com"))]
    pub email: String,
}

#[derive(Serialize, ToSchema)]
pub struct MemberView {
    pub email: String,
    /// `owner`, `developer` or `viewer`.
    pub role: String,
    /// True for the project's owner (`owner` in the project's view), who cannot be removed:
    /// transfer the project first.
    pub primary: bool,
    /// When they became a member (for the owner: when the project was made).
    pub since: String,
}

impl From<Collaborator> for MemberView {
    fn from(c: Collaborator) -> Self {
        MemberView {
            email: c.email,
            role: c.role.as_str().to_owned(),
            primary: false,
            since: c.created_at.to_rfc3339(),
        }
    }
}

/// The one answer for an email that cannot be added, whether no account has it or the
/// account is disabled.
fn no_such_member() -> Error {
    Error::NotFound("no user with this email can be added".into())
}

/// A preview app's members are its parent's: its own list cannot change.
fn not_a_preview(project: &Project) -> Result<(), Error> {
    match project.preview {
        Some(_) => Err(Error::Invalid(format!(
            "{} is a preview app: its members are those of the project it previews",
            project.name
        ))),
        None => Ok(()),
    }
}

/// The account with this email that may become a member.
async fn member_to_be(state: &AppState, email: &str) -> Result<User, Error> {
    // Stored emails are lowercase and have no control characters (signup sees to it;
    // PostgreSQL would fail on a NUL): such an email is simply nobody's.
    let email = email.trim().to_lowercase();
    if email.chars().any(char::is_control) {
        return Err(no_such_member());
    }
    match state.store.user_by_email(&email).await {
        Ok((user, _)) if !user.disabled => Ok(user),
        Ok(_) | Err(Error::NotFound(_)) => Err(no_such_member()),
        Err(other) => Err(other),
    }
}

pub(crate) async fn members(state: &AppState, project: &Project) -> Result<Vec<MemberView>, Error> {
    // A preview's members are its parent's.
    let of = match &project.preview {
        Some(preview) => state.store.project_by_id(preview.parent_id).await?,
        None => project.clone(),
    };
    let owner = state.store.user(of.owner_id).await?;
    let mut members = vec![MemberView {
        email: owner.email,
        role: Role::Owner.as_str().to_owned(),
        primary: true,
        since: of.created_at.to_rfc3339(),
    }];
    members.extend(state.store.collaborators(of.id).await?.into_iter().map(MemberView::from));
    Ok(members)
}

/// Gives the user `role`: adds them, or changes the role they have. 201 when added, 200
/// when changed.
pub(crate) async fn add_member(
    state: &AppState,
    by: &User,
    project: &Project,
    email: &str,
    role: Role,
) -> Result<(StatusCode, MemberView), Error> {
    not_a_preview(project)?;
    let user = member_to_be(state, email).await?;
    if user.id == project.owner_id {
        return Err(Error::Conflict(format!("{} is the project's owner already", user.email)));
    }
    let had = state.store.collaborator_role(project.id, user.id).await?;
    let member = state.store.set_collaborator(project.id, user.id, role).await?;
    tracing::info!(project = %project.name, user = user.id, role = %role, by = by.id, "collaborator set");
    let detail = format!("{} as {role}", user.email);
    state.audit(audit::by(by, AuditAction::CollaboratorAdded).on(project).detail(detail)).await;
    if had != Some(role) {
        crate::email::collaborator_added(state, project.name.as_str(), &user.email, &role.to_string(), &by.email);
    }
    let status = if had.is_some() { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, member.into()))
}

/// Finds a member's row by email or user id (digits).
async fn member_id(state: &AppState, project: &Project, member: &str) -> Result<(i64, String), Error> {
    let rows = state.store.collaborators(project.id).await?;
    let found = match member.parse::<i64>() {
        Ok(id) => rows.iter().find(|c| c.user_id == id),
        Err(_) => rows.iter().find(|c| c.email == member),
    };
    match found {
        Some(c) => Ok((c.user_id, c.email.clone())),
        None if project.owner_id.to_string() == member || state.store.user(project.owner_id).await?.email == member => {
            Err(Error::Conflict("the project's owner cannot be removed: transfer the project first".into()))
        }
        None => Err(Error::NotFound(format!("{member} is not a collaborator of {}", project.name))),
    }
}

/// The project's members: its owner first, then its collaborators, oldest first.
#[utoipa::path(get, path = "/projects/{name}/collaborators", tag = "collaborators", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)),
    responses((status = 200, body = Vec<MemberView>), NeedsToken, ParamErrors, ErrorStatus<404>))]
pub async fn list(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
) -> ApiResult<Json<Vec<MemberView>>> {
    let project = project_for(&state, &user, &name, Role::Viewer).await?;
    Ok(Json(members(&state, &project).await?))
}

/// Adds a member with a role, or changes the role of one (owners only). An email no
/// account has, or a disabled account's, answers 404 "no user with this email can be
/// added" (the same for both).
#[utoipa::path(post, path = "/projects/{name}/collaborators", tag = "collaborators", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)), request_body = NewCollaborator,
    responses((status = 201, body = MemberView, description = "added"), (status = 200, body = MemberView, description = "role changed"),
        NeedsToken, ParamErrors, JsonBodyErrors, ErrorStatus<403>, ErrorStatus<404>, ErrorStatus<409>))]
pub async fn add(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
    JsonBody(body): JsonBody<NewCollaborator>,
) -> ApiResult<(StatusCode, Json<MemberView>)> {
    let project = project_for(&state, &user, &name, Role::Owner).await?;
    let (status, member) = add_member(&state, &user, &project, &body.email, body.role.into()).await?;
    Ok((status, Json(member)))
}

/// Removes a collaborator, named by email or user id: owners remove anyone but the
/// project's owner (409: transfer first); any member may remove themselves.
#[utoipa::path(delete, path = "/projects/{name}/collaborators/{member}", tag = "collaborators", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path), ("member" = String, Path, description = "the member's email or user id")),
    responses((status = 204, description = "removed"), NeedsToken, ParamErrors, ErrorStatus<403>, ErrorStatus<404>, ErrorStatus<409>))]
pub async fn remove(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam((name, member)): PathParam<(String, String)>,
) -> ApiResult<StatusCode> {
    let leaving = member == user.email || member == user.id.to_string();
    let needed = if leaving { Role::Viewer } else { Role::Owner };
    let project = project_for(&state, &user, &name, needed).await?;
    remove_member(&state, &user, &project, &member).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn remove_member(state: &AppState, by: &User, project: &Project, member: &str) -> Result<(), Error> {
    not_a_preview(project)?;
    let (user_id, email) = member_id(state, project, member).await?;
    state.store.remove_collaborator(project.id, user_id).await?;
    tracing::info!(project = %project.name, user = user_id, by = by.id, "collaborator removed");
    state.audit(audit::by(by, AuditAction::CollaboratorRemoved).on(project).detail(email)).await;
    Ok(())
}

/// Makes another user the project's owner (and its previews'); the previous owner stays
/// a member with the `owner` role and may leave. Owners only.
#[utoipa::path(post, path = "/projects/{name}/transfer", tag = "collaborators", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)), request_body = Transfer,
    responses((status = 200, body = Vec<MemberView>, description = "the members after the transfer"),
        NeedsToken, ParamErrors, JsonBodyErrors, ErrorStatus<403>, ErrorStatus<404>))]
pub async fn transfer(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
    JsonBody(body): JsonBody<Transfer>,
) -> ApiResult<Json<Vec<MemberView>>> {
    let project = project_for(&state, &user, &name, Role::Owner).await?;
    let project = transfer_project(&state, &user, &project, &body.email).await?;
    Ok(Json(members(&state, &project).await?))
}

pub(crate) async fn transfer_project(
    state: &AppState,
    by: &User,
    project: &Project,
    email: &str,
) -> Result<Project, Error> {
    not_a_preview(project)?;
    let to = member_to_be(state, email).await?;
    let project = state.store.transfer_project(project.id, to.id).await?;
    tracing::info!(project = %project.name, to = to.id, by = by.id, "project transferred");
    state.audit(audit::by(by, AuditAction::ProjectTransferred).on(&project).detail(format!("to {}", to.email))).await;
    Ok(project)
}
