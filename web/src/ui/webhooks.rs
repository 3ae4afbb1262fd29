//! A project's Webhooks tab: its deploy webhooks with their last delivery attempts, a form
//! to add one (the secret is shown on that response only), and a button to remove one.

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use paastech_core::Role;
use paastech_core::webhooks::WebhookEvent;
use paastech_core::{AuditAction, Error, Timestamp};
use serde::Deserialize;

use super::pages::Notice;
use super::project::{layout, load};
use super::session::Session;
use super::view::{FieldErrors, Layout, ProjectHead, When};
use super::{UiResult, render};
use crate::AppState;
use crate::api::projects::project_for;
use crate::api::webhooks::new_secret;
use crate::audit;

/// Attempts shown under each webhook.
const ATTEMPTS_SHOWN: usize = 10;

pub struct AttemptRow {
    pub when: When,
    pub event: &'static str,
    pub attempt: u32,
    /// `200`, or the error.
    pub result: String,
    /// `ok` or `bad`: the badge's look.
    pub tone: &'static str,
    pub duration_ms: u64,
}

pub struct WebhookRow {
    pub id: i64,
    pub url: String,
    pub events: String,
    pub when: When,
    pub attempts: Vec<AttemptRow>,
}

#[derive(Template)]
#[template(path = "webhooks.html")]
pub struct WebhooksPage {
    pub l: Layout,
    pub p: ProjectHead,
    pub webhooks: Vec<WebhookRow>,
    /// The secret of a webhook just made: shown this once.
    pub created: Option<String>,
    /// Every event, and whether the add form has it ticked.
    pub events: Vec<(&'static str, bool)>,
    pub url: String,
    pub errors: FieldErrors,
}

async fn page(
    state: &AppState,
    session: &Session,
    name: &str,
    notice: Option<String>,
    created: Option<String>,
    (form, errors): (WebhookForm, FieldErrors),
    status: StatusCode,
) -> UiResult {
    let (project, head, _) = load(state, session, name, "webhooks", 5).await?;
    let now = Timestamp::now();
    let mut webhooks = Vec::new();
    for hook in state.orchestrator.webhooks(&project).await? {
        let attempts = state.orchestrator.webhook_attempts(&project, hook.id).await?;
        webhooks.push(WebhookRow {
            id: hook.id,
            events: hook.events.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(", "),
            when: When::of(hook.created_at, now),
            url: hook.url,
            attempts: attempts
                .into_iter()
                .take(ATTEMPTS_SHOWN)
                .map(|a| AttemptRow {
                    when: When::of(a.at, now),
                    event: a.event.as_str(),
                    attempt: a.attempt,
                    tone: if a.status_code.is_some_and(|c| (200..300).contains(&c)) { "ok" } else { "bad" },
                    result: match (a.status_code, a.error) {
                        (Some(code), _) => code.to_string(),
                        (None, error) => error.unwrap_or_default(),
                    },
                    duration_ms: a.duration_ms,
                })
                .collect(),
        });
    }
    let events = WebhookEvent::ALL.iter().map(|e| (e.as_str(), form.events.iter().any(|f| f == e.as_str()))).collect();
    let l = layout(session, &head, "Webhooks", false).with_notice(notice);
    render(status, &WebhooksPage { l, p: head, webhooks, created, events, url: form.url, errors })
}

pub async fn webhooks_page(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Query(notice): Query<Notice>,
) -> UiResult {
    let empty = (WebhookForm::default(), FieldErrors::default());
    page(&state, &session, &name, notice.message(), None, empty, StatusCode::OK).await
}

/// The add form: the URL and the ticked events (none ticked: all).
#[derive(Default)]
pub struct WebhookForm {
    url: String,
    events: Vec<String>,
}

pub async fn webhook_add(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> UiResult {
    let project = project_for(&state, &session.user, &name, Role::Developer).await?;
    let form = WebhookForm::of(pairs);
    let secret = new_secret();
    match state.orchestrator.add_webhook(&project, form.url.trim(), &form.events, &secret).await {
        Ok(hook) => {
            let detail = format!("#{} {}", hook.id, hook.url);
            state.audit(audit::by(&session.user, AuditAction::WebhookAdded).on(&project).detail(detail)).await;
            let notice = Some(format!("Webhook {} added: deploy events are POSTed to it.", hook.id));
            let empty = (WebhookForm::default(), FieldErrors::default());
            page(&state, &session, &name, notice, Some(secret), empty, StatusCode::CREATED).await
        }
        Err(err @ (Error::Invalid(_) | Error::Conflict(_))) => {
            let status = if matches!(err, Error::Conflict(_)) { StatusCode::CONFLICT } else { StatusCode::BAD_REQUEST };
            let errors = FieldErrors::one("url", err.to_string());
            page(&state, &session, &name, None, None, (form, errors), status).await
        }
        Err(other) => Err(other.into()),
    }
}

impl WebhookForm {
    /// From `url=…&events=a&events=b`, read as pairs: a struct field cannot take a
    /// repeated key.
    fn of(pairs: Vec<(String, String)>) -> WebhookForm {
        let mut form = WebhookForm::default();
        for (key, value) in pairs {
            match key.as_str() {
                "url" => form.url = value,
                "events" => form.events.push(value),
                _ => {}
            }
        }
        form
    }
}

#[derive(Deserialize)]
pub struct RemoveForm {
    id: i64,
}

pub async fn webhook_remove(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<RemoveForm>,
) -> UiResult {
    let project = project_for(&state, &session.user, &name, Role::Developer).await?;
    state.orchestrator.remove_webhook(&project, form.id).await?;
    let record = audit::by(&session.user, AuditAction::WebhookRemoved).on(&project).detail(format!("#{}", form.id));
    state.audit(record).await;
    Ok(Redirect::to(&format!("/projects/{}/webhooks?done=webhook-removed", project.name)).into_response())
}
