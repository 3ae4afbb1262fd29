//! The dashboard and project creation, and what several pages share: project rows and the
//! confirmations shown after a redirect.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use paastech_core::{AuditAction, Error, Project, ProjectName, Role, Timestamp, User};
use serde::Deserialize;

use super::session::Session;
use super::view::{Badge, Dashboard, FieldErrors, Layout, NewProject, ProjectRow, When};
use super::{UiResult, render};
use crate::AppState;
use crate::api::projects::member_projects;
use crate::audit;

/// After a POST, pages redirect with `?done=WHAT[&v=N]`; the page turns that into a
/// sentence. Only these fixed sentences can appear, so a crafted link shows nothing odd.
#[derive(Deserialize, Default)]
pub struct Notice {
    done: Option<String>,
    v: Option<i64>,
}

impl Notice {
    pub fn message(&self) -> Option<String> {
        let v = self.v.map(|v| format!("v{v}")).unwrap_or_else(|| "the new deployment".into());
        let text = match self.done.as_deref()? {
            "created" => "Project created. Push your code to deploy it.".to_owned(),
            "deleted" => "Project deleted.".to_owned(),
            "env-deployed" => format!("Saved. The change made a new deployment: {v} is live."),
            "env-saved" => "Saved. It applies from the first deployment.".to_owned(),
            "deployed" => format!("Deployed: {v} is live."),
            "scaled" => "Scale saved and applied.".to_owned(),
            "stopped" => {
                "Stopped: the app answers 503 and stays stopped, across pushes and server restarts, until started."
                    .to_owned()
            }
            "started" => "Started: its instances answer again.".to_owned(),
            "restarted" => "Restarted: every instance was replaced, one by one.".to_owned(),
            "domain-added" => "Domain added: the app answers on it as soon as its DNS points here.".to_owned(),
            "domain-removed" => "Domain removed.".to_owned(),
            "webhook-removed" => "Webhook removed: no more events are sent to it.".to_owned(),
            "addon-created" => {
                format!("Add-on created: its config is set, and {v} is live if the project has a build.")
            }
            "addon-destroyed" => "Add-on destroyed, with its data.".to_owned(),
            "previews-on" => "Previews on: a push to another branch deploys it as a preview app.".to_owned(),
            "previews-off" => "Previews off: the preview apps are removed.".to_owned(),
            "sleep-on" => "Sleep on: the web processes stop when idle, and the next request wakes them.".to_owned(),
            "sleep-off" => "Sleep off: the web processes keep running.".to_owned(),
            "verify-sent" => "A new link is on its way: open it to verify your address.".to_owned(),
            "https-saved" => "HTTPS policy saved: it applies to the next request.".to_owned(),
            "key-added" => "SSH key added.".to_owned(),
            "2fa-disabled" => "Two-factor login is off.".to_owned(),
            "2fa-none" => "That user has no two-factor login to reset.".to_owned(),
            "2fa-required" => "This server requires two-factor login: set it up to go on.".to_owned(),
            "2fa-reset" => {
                "Two-factor login reset: the user logs in with their password alone, and their sessions ended."
                    .to_owned()
            }
            "key-removed" => "SSH key removed.".to_owned(),
            "token-revoked" => "Token revoked.".to_owned(),
            "member-set" => "Saved: the member has this role now.".to_owned(),
            "member-removed" => "Member removed.".to_owned(),
            "transferred" => "Transferred: the project has its new owner, and you stay an owner member.".to_owned(),
            "left" => "You left the project.".to_owned(),
            "user-disabled" => "Account disabled: its sessions, tokens and SSH keys no longer work.".to_owned(),
            "user-enabled" => "Account enabled again.".to_owned(),
            "user-deleted" => "Account deleted.".to_owned(),
            _ => return None,
        };
        Some(text)
    }
}

/// One row per project with its status and newest deployment: one small query per
/// project for its few newest deployments, several at a time so that their round trips
/// overlap (hundreds of projects stay well within a page's time budget).
pub(crate) async fn project_rows(
    state: &AppState,
    projects: Vec<(Project, Role)>,
    owners: &HashMap<i64, String>,
) -> Result<Vec<ProjectRow>, Error> {
    use futures_util::{StreamExt, TryStreamExt};
    let now = Timestamp::now();
    futures_util::stream::iter(projects)
        .map(|(project, role)| async move {
            let recent = state.store.deployments(project.id, 1).await?;
            let live = state.store.live_deployment(project.id).await?;
            let latest = recent.first();
            let name = project.name.as_str();
            Ok::<_, Error>(ProjectRow {
                url: state.urls.app_url(name),
                badge: Badge::project(latest, live.as_ref()),
                owner: owners.get(&project.owner_id).cloned().unwrap_or_default(),
                role: role.as_str(),
                last: latest.map(|d| format!("v{} · {}", d.version, d.cause)),
                when: latest.map(|d| When::of(d.created_at, now)),
                name: name.to_owned(),
            })
        })
        .buffered(crate::PARALLEL_QUERIES)
        .try_collect()
        .await
}

pub async fn dashboard(State(state): State<AppState>, session: Session, Query(notice): Query<Notice>) -> UiResult {
    // Admins see every project on the admin page; here, as everyone, those they are a
    // member of.
    let as_member = User { is_admin: false, ..session.user.clone() };
    let projects = member_projects(&state, &as_member).await?;
    let rows = project_rows(&state, projects, &HashMap::new()).await?;
    let has_keys = !state.store.ssh_keys(session.user.id).await?.is_empty();
    let page = Dashboard {
        l: Layout::new(&session, "Projects", "projects").with_notice(notice.message()),
        projects: rows,
        has_keys,
        unverified: state.mail.is_some() && !session.user.email_verified,
    };
    render(StatusCode::OK, &page)
}

pub async fn new_project_page(session: Session) -> UiResult {
    let page = NewProject {
        l: Layout::new(&session, "New project", "projects"),
        name: String::new(),
        errors: FieldErrors::default(),
    };
    render(StatusCode::OK, &page)
}

#[derive(Deserialize)]
pub struct NewProjectForm {
    #[serde(default)]
    name: String,
}

pub async fn create_project(
    State(state): State<AppState>,
    session: Session,
    Form(form): Form<NewProjectForm>,
) -> UiResult {
    let name = form.name.trim().to_owned();
    let result = match ProjectName::parse(&name) {
        Ok(parsed) => match crate::email::require_verified(&state, &session.user) {
            Ok(()) => state.orchestrator.create_project(session.user.id, &parsed).await,
            Err(err) => Err(Error::Invalid(err.to_string())),
        },
        Err(err) => Err(err),
    };
    match result {
        Ok(project) => {
            let parsed = &project.name;
            tracing::info!(project = %parsed, user = session.user.id, "project created (web)");
            state.audit(audit::by(&session.user, AuditAction::ProjectCreated).on(&project)).await;
            Ok(Redirect::to(&format!("/projects/{parsed}?done=created")).into_response())
        }
        Err(err @ (Error::Invalid(_) | Error::Conflict(_))) => {
            let status = if matches!(err, Error::Conflict(_)) { StatusCode::CONFLICT } else { StatusCode::BAD_REQUEST };
            let page = NewProject {
                l: Layout::new(&session, "New project", "projects"),
                name,
                errors: FieldErrors::one("name", err.to_string()),
            };
            render(status, &page)
        }
        Err(other) => Err(other.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_are_fixed_sentences() {
        let notice = |done: &str, v| Notice { done: Some(done.into()), v }.message();
        assert_eq!(notice("deployed", Some(6)).as_deref(), Some("Deployed: v6 is live."));
        assert!(notice("env-deployed", Some(2)).is_some_and(|m| m.contains("new deployment: v2 is live")));
        assert_eq!(notice("<script>", None), None);
        assert_eq!(Notice::default().message(), None);
    }
}
