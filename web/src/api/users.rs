//! Admin user management: disable (or enable) and delete accounts. Only admins; to anyone
//! else these routes answer 403, as `GET /users` does.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use paastech_core::{AuditAction, Error, Project, User};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::accounts::UserView;
use super::extract::{JsonBodyErrors, NeedsToken, ParamErrors};
use super::{JsonBody, PathParam, QueryParams};
use crate::AppState;
use crate::audit;
use crate::auth::CurrentUser;
use crate::error::{ApiResult, ErrorStatus};

#[derive(Deserialize, ToSchema)]
pub struct UserChange {
    /// True: the account cannot log in, its tokens and web sessions are deleted and its
    /// SSH keys stop working. False: it may log in again (and its SSH keys work again).
    pub disabled: bool,
}

/// What becomes of the projects of a deleted user.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProjectsFate {
    /// Every project (with its previews) goes to the user named by `to`.
    Transfer,
    /// Every project is deleted, with its apps, repository and data.
    Delete,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteUser {
    /// Required when the user owns projects: `transfer` (with `to`) or `delete`.
    pub projects: Option<ProjectsFate>,
    /// The email of the account that gets the projects, with `projects=transfer`.
    pub to: Option<String>,
}

fn admin_only(user: &User) -> Result<(), Error> {
    if user.is_admin { Ok(()) } else { Err(Error::Forbidden("only admins may manage users".into())) }
}

/// The user named by id or email.
pub(crate) async fn target(state: &AppState, who: &str) -> Result<User, Error> {
    let found = match who.parse::<i64>() {
        Ok(id) => state.store.user(id).await,
        // Stored emails are lowercase and have no control characters (PostgreSQL would
        // fail on a NUL): such a name is nobody's.
        Err(_) if who.chars().any(char::is_control) => Err(Error::NotFound(String::new())),
        Err(_) => state.store.user_by_email(&who.trim().to_lowercase()).await.map(|(user, _)| user),
    };
    found.map_err(|err| match err {
        Error::NotFound(_) => Error::NotFound(format!("no user {who}")),
        other => other,
    })
}

/// Refuses to disable or delete the last admin who can still act: the platform would be
/// left with nobody to manage it.
async fn not_the_last_admin(state: &AppState, target: &User, doing: &str) -> Result<(), Error> {
    if !target.is_admin || target.disabled {
        return Ok(());
    }
    let admins = state.store.users().await?.into_iter().filter(|u| u.is_admin && !u.disabled).count();
    if admins <= 1 {
        return Err(Error::Conflict(format!("{} is the last admin and cannot be {doing}", target.email)));
    }
    Ok(())
}

/// Disables or enables an account (admins only).
#[utoipa::path(patch, path = "/users/{user}", tag = "accounts", security(("bearer" = [])),
    params(("user" = String, Path, description = "the user's id or email")), request_body = UserChange,
    responses((status = 200, body = UserView), NeedsToken, ParamErrors, JsonBodyErrors, ErrorStatus<403>, ErrorStatus<404>, ErrorStatus<409>))]
pub async fn patch(
    State(state): State<AppState>,
    CurrentUser(admin): CurrentUser,
    PathParam(who): PathParam<String>,
    JsonBody(body): JsonBody<UserChange>,
) -> ApiResult<Json<UserView>> {
    admin_only(&admin)?;
    let user = set_disabled(&state, &admin, &who, body.disabled).await?;
    Ok(Json(user.into()))
}

pub(crate) async fn set_disabled(state: &AppState, admin: &User, who: &str, disabled: bool) -> Result<User, Error> {
    let user = target(state, who).await?;
    if disabled {
        not_the_last_admin(state, &user, "disabled").await?;
    }
    let user = state.store.set_user_disabled(user.id, disabled).await?;
    tracing::info!(user = user.id, disabled, by = admin.id, "account disabled or enabled");
    let action = if disabled { AuditAction::UserDisabled } else { AuditAction::UserEnabled };
    state.audit(audit::by(admin, action).detail(user.email.clone())).await;
    Ok(user)
}

/// Deletes an account with its tokens, SSH keys and memberships (admins only). When it
/// owns projects, `projects=transfer&to=EMAIL` gives them to another account and
/// `projects=delete` deletes them; without either, 409 lists them.
#[utoipa::path(delete, path = "/users/{user}", tag = "accounts", security(("bearer" = [])),
    params(("user" = String, Path, description = "the user's id or email"), DeleteUser),
    responses((status = 204, description = "deleted"), NeedsToken, ParamErrors, ErrorStatus<403>, ErrorStatus<404>, ErrorStatus<409>))]
pub async fn delete(
    State(state): State<AppState>,
    CurrentUser(admin): CurrentUser,
    PathParam(who): PathParam<String>,
    QueryParams(query): QueryParams<DeleteUser>,
) -> ApiResult<StatusCode> {
    admin_only(&admin)?;
    delete_user(&state, &admin, &who, query.projects, query.to.as_deref()).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn delete_user(
    state: &AppState,
    admin: &User,
    who: &str,
    fate: Option<ProjectsFate>,
    to: Option<&str>,
) -> Result<(), Error> {
    let user = target(state, who).await?;
    not_the_last_admin(state, &user, "deleted").await?;
    // Previews go with their parents, whichever way.
    let owned: Vec<Project> =
        state.store.projects(Some(user.id)).await?.into_iter().filter(|p| p.preview.is_none()).collect();
    let names: Vec<&str> = owned.iter().map(|p| p.name.as_str()).collect();
    let mut detail = user.email.clone();
    if !owned.is_empty() {
        match fate {
            None => {
                return Err(Error::Conflict(format!(
                    "{} owns projects: {}; pass projects=transfer&to=EMAIL or projects=delete",
                    user.email,
                    names.join(", ")
                )));
            }
            Some(ProjectsFate::Transfer) => {
                let to = to.ok_or_else(|| Error::Invalid("projects=transfer needs to=EMAIL".into()))?;
                let heir = target(state, to).await?;
                if heir.id == user.id || heir.disabled {
                    return Err(Error::Invalid(format!("{to} cannot take the projects of {}", user.email)));
                }
                for project in &owned {
                    state.store.transfer_project(project.id, heir.id).await?;
                }
                detail = format!("{detail}, projects given to {}: {}", heir.email, names.join(", "));
            }
            Some(ProjectsFate::Delete) => {
                for project in &owned {
                    state.orchestrator.delete_project(project).await?;
                }
                detail = format!("{detail}, projects deleted: {}", names.join(", "));
            }
        }
    }
    state.store.delete_user(user.id).await?;
    tracing::info!(user = user.id, by = admin.id, projects = owned.len(), "account deleted");
    state.audit(audit::by(admin, AuditAction::UserDeleted).detail(detail)).await;
    Ok(())
}
