//! `GET /audit`: the audit log, as far as the caller may read it — a project's records
//! for its members (any role), and with no project: everything for admins, and for others
//! their own actions and the records of the projects they are members of now.

use axum::Json;
use axum::extract::State;
use paastech_core::audit::{DEFAULT_PAGE, MAX_PAGE};
use paastech_core::{AuditEvent, AuditScope, Error, Role, User};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::QueryParams;
use super::extract::{NeedsToken, ParamErrors};
use super::projects::{member_projects, project_for};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::error::{ApiResult, ErrorStatus};

#[derive(Deserialize, utoipa::IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this project's records (members of any role may read them).
    #[param(nullable = false, example = "shop")]
    pub project: Option<String>,
    /// Only records older than this one (an `id` of a previous page), for the next page.
    #[param(nullable = false)]
    pub before: Option<i64>,
    /// How many, newest first (default 100; below 1 counts as 1, above 1000 as 1000).
    #[param(nullable = false, example = 50)]
    pub limit: Option<i64>,
}

/// One change: who made it, when, from which address, to what.
#[derive(Serialize, ToSchema)]
pub struct AuditEventView {
    /// Increases with every record; pass the last one's as `before` for the next page.
    pub id: i64,
    pub at: String,
    /// The email of who made the change (as it was then); null for a login attempt on no
    /// account.
    pub actor: Option<String>,
    /// The client's address (for a push, the SSH peer's).
    pub address: Option<String>,
    /// The project changed (its name then), if any.
    pub project: Option<String>,
    /// What happened: `login`, `login.failed`, `deploy`, `rollback`, `env.change`,
    /// `scale`, `collaborator.add`, `user.delete`, … (see the README for the whole list).
    #[schema(example = "env.change")]
    pub action: String,
    /// What changed, in words (env var names, never their values).
    #[schema(example = "set DATABASE_URL; unset DEBUG")]
    pub detail: String,
}

impl From<AuditEvent> for AuditEventView {
    fn from(event: AuditEvent) -> Self {
        AuditEventView {
            id: event.id,
            at: event.at.to_rfc3339(),
            actor: event.actor.filter(|email| !email.is_empty()),
            address: event.address,
            project: event.project,
            action: event.action,
            detail: event.detail,
        }
    }
}

/// The records `user` may read, newest first, as `query` narrows them.
pub(crate) async fn events_for(state: &AppState, user: &User, query: &AuditQuery) -> Result<Vec<AuditEvent>, Error> {
    let scope = match query.project.as_deref() {
        Some(name) => AuditScope::Project(project_for(state, user, name, Role::Viewer).await?.id),
        None if user.is_admin => AuditScope::All,
        None => {
            let project_ids = member_projects(state, user).await?.into_iter().map(|(p, _)| p.id).collect();
            AuditScope::Member { user_id: user.id, project_ids }
        }
    };
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    state.store.audit_events(&scope, query.before, limit).await
}

/// The audit log, newest first: with `project`, that project's records (for its members);
/// without, everything for an admin, and for anyone else their own actions (logins
/// included) and the records of the projects they are members of.
#[utoipa::path(get, path = "/audit", tag = "accounts", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, body = Vec<AuditEventView>), NeedsToken, ParamErrors, ErrorStatus<404>))]
pub async fn list(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    QueryParams(query): QueryParams<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEventView>>> {
    let events = events_for(&state, &user, &query).await?;
    Ok(Json(events.into_iter().map(Into::into).collect()))
}
