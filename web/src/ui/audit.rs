//! The audit log's pages: Account → Audit log (what the user may read: everything for an
//! admin, else their own actions and their projects' records) and a project's Audit tab.
//! Both read through `api::audit::events_for`, so the pages show what the API would.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use paastech_core::{AuditEvent, Timestamp};
use serde::Deserialize;

use super::project::{layout, load};
use super::session::Session;
use super::view::{Layout, ProjectHead, When};
use super::{UiResult, render};
use crate::AppState;
use crate::api::audit::{AuditQuery, events_for};

/// Records a page shows; an "Older" link leads to the next ones.
const PAGE: i64 = 100;

pub struct AuditRow {
    pub at: When,
    pub actor: String,
    pub address: String,
    pub project: Option<String>,
    pub action: String,
    pub detail: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
pub struct AuditPage {
    pub l: Layout,
    pub rows: Vec<AuditRow>,
    /// The link to older records, when there may be some.
    pub older: Option<String>,
    pub everything: bool,
}

#[derive(Template)]
#[template(path = "project_audit.html")]
pub struct ProjectAuditPage {
    pub l: Layout,
    pub p: ProjectHead,
    pub rows: Vec<AuditRow>,
    pub older: Option<String>,
}

#[derive(Deserialize)]
pub struct Older {
    before: Option<i64>,
}

fn rows(events: &[AuditEvent]) -> Vec<AuditRow> {
    let now = Timestamp::now();
    events
        .iter()
        .map(|e| AuditRow {
            at: When::of(e.at, now),
            actor: e.actor.clone().filter(|email| !email.is_empty()).unwrap_or_else(|| "(no account)".into()),
            address: e.address.clone().unwrap_or_default(),
            project: e.project.clone(),
            action: e.action.clone(),
            detail: e.detail.clone(),
        })
        .collect()
}

/// `?before=ID` of the oldest record shown, when the page is full.
fn older(path: &str, events: &[AuditEvent]) -> Option<String> {
    let oldest = events.last().filter(|_| events.len() as i64 >= PAGE)?;
    Some(format!("{path}?before={}", oldest.id))
}

pub async fn audit_page(State(state): State<AppState>, session: Session, Query(page): Query<Older>) -> UiResult {
    let query = AuditQuery { project: None, before: page.before, limit: Some(PAGE) };
    let events = events_for(&state, &session.user, &query).await?;
    let page = AuditPage {
        l: Layout::new(&session, "Audit log", "audit"),
        rows: rows(&events),
        older: older("/audit", &events),
        everything: session.user.is_admin,
    };
    render(StatusCode::OK, &page)
}

pub async fn project_audit_page(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Query(page): Query<Older>,
) -> UiResult {
    let (project, head, _) = load(&state, &session, &name, "audit", 5).await?;
    let query = AuditQuery { project: Some(project.name.to_string()), before: page.before, limit: Some(PAGE) };
    let events = events_for(&state, &session.user, &query).await?;
    let page = ProjectAuditPage {
        l: layout(&session, &head, "Audit", false),
        older: older(&format!("/projects/{}/audit", project.name), &events),
        p: head,
        rows: rows(&events),
    };
    render(StatusCode::OK, &page)
}
