//! A project's tabs: overview, deployments (with build logs and rollback), env, domains, add-ons, scale,
//! logs (live), settings (delete). Every handler starts from `project_for` with the role it needs, the API's
//! ownership rule: someone else's project is the plain 404 page.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect};
use futures_util::StreamExt;
use paastech_core::audit::env_change_detail;
use paastech_core::drivers::InstanceState;
use paastech_core::store::EnvChanges;
use paastech_core::{AuditAction, Role};
use paastech_core::{Deployment, Error, HttpsChange, HttpsPolicy, Project, Timestamp, validate_env_key};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::chart::UsageChart;
use super::pages::Notice;
use super::session::Session;
use super::view::{
    AddonRow, AddonsPage, Badge, BuildLog, CertificateCell, DeploymentRow, Deployments, DomainRow, DomainsPage,
    EnvPage, FieldErrors, InstanceRow, Layout, LogsPage, Overview, PreviewRow, ProjectHead, ScalePage, ScaleRow,
    SettingsPage, When,
};
use super::{UiResult, render};
use crate::AppState;
use crate::api::https::https_detail;
use crate::api::lifecycle::process_detail;
use crate::api::projects::{
    MAX_INSTANCES, check_env_changes, check_scale, project_and_role, project_for, redeploy_record, scale_detail,
};
use crate::audit;

/// Deployments listed on the deployments tab.
const DEPLOYMENTS_SHOWN: i64 = 50;
/// Log lines a logs tab starts with.
const LOG_LINES_SHOWN: usize = 200;
/// The most of a build log one page shows (its end); keeps every page light.
const BUILD_LOG_SHOWN_BYTES: usize = 96 * 1024;

/// The project, the head every tab shows, and its newest `recent` deployments.
pub(super) async fn load(
    state: &AppState,
    session: &Session,
    name: &str,
    tab: &'static str,
    recent: i64,
) -> Result<(Project, ProjectHead, Vec<Deployment>), Error> {
    let (project, role) = project_and_role(state, &session.user, name, tab_role(tab)).await?;
    let deployments = state.store.deployments(project.id, recent).await?;
    let live = state.store.live_deployment(project.id).await?;
    let name = project.name.as_str();
    // A stopped project is not "live" to its owner, whatever its deployments say.
    let badge = if state.orchestrator.stopped(&project).await?.is_all() {
        Badge { class: "old", text: "stopped".into() }
    } else {
        Badge::project(deployments.first(), live.as_ref())
    };
    let head = ProjectHead {
        name: name.to_owned(),
        url: state.urls.app_url(name),
        git_url: state.urls.git_url(name),
        badge,
        live_version: live.as_ref().map(|d| d.version),
        tab,
        developer: role.allows(Role::Developer),
    };
    Ok((project, head, deployments))
}

/// The role a tab needs to be seen: config values, add-on credentials and webhooks are
/// not a viewer's; the forms on each tab check the role of their own action.
fn tab_role(tab: &str) -> Role {
    match tab {
        "env" | "addons" | "webhooks" => Role::Developer,
        _ => Role::Viewer,
    }
}

pub(super) fn layout(session: &Session, head: &ProjectHead, title: &str, live: bool) -> Layout {
    let mut layout = Layout::new(session, format!("{title} · {}", head.name), "projects");
    if live {
        layout.stream = Some(format!("/projects/{}/logs/stream", head.name));
    }
    layout
}

pub(super) fn state_text(state: InstanceState) -> (&'static str, &'static str) {
    match state {
        InstanceState::Starting => ("starting", "busy"),
        InstanceState::Running => ("running", "ok"),
        InstanceState::Restarting => ("restarting", "warn"),
        InstanceState::Crashed => ("crashed", "bad"),
        InstanceState::Stopped => ("stopped", "old"),
    }
}

pub async fn overview(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Query(notice): Query<Notice>,
) -> UiResult {
    overview_page(&state, &session, &name, notice.message(), None, StatusCode::OK).await
}

async fn overview_page(
    state: &AppState,
    session: &Session,
    name: &str,
    notice: Option<String>,
    error: Option<String>,
    status: StatusCode,
) -> UiResult {
    let (project, head, deployments) = load(state, session, name, "overview", 5).await?;
    let stopped = state.orchestrator.stopped(&project).await?;
    let sleep = state.orchestrator.sleep_state(&project).await?;
    let stats = state.orchestrator.stats(&project.name).await?;
    let now = Timestamp::now();
    let chart = UsageChart::of(&stats.history, now);
    let instances = stats
        .instances
        .into_iter()
        .map(|s| {
            let i = s.instance;
            let (text, class) = state_text(i.state);
            InstanceRow {
                name: format!("{}.{}", i.process_type, i.index + 1),
                version: i.version,
                state: text.to_owned(),
                state_class: class,
                restarts: i.restarts,
                cpu: s.cpu_percent.map_or("—".into(), |p| format!("{p:.1} %")),
                memory: s.memory_bytes.map_or("—".into(), |m| format!("{:.1} MiB", m as f64 / (1024.0 * 1024.0))),
            }
        })
        .collect();
    let has_keys = !state.store.ssh_keys(session.user.id).await?.is_empty();
    let page = Overview {
        l: layout(session, &head, "Overview", true).with_notice(notice),
        latest: deployments.first().map(|d| DeploymentRow::of(d, now)),
        p: head,
        instances,
        chart,
        has_keys,
        stopped: stopped.is_all(),
        stopped_types: stopped.types().map(str::to_owned).collect(),
        sleep,
        error,
    };
    render(status, &page)
}

#[derive(Deserialize)]
pub struct LifecycleForm {
    /// `stop`, `start` or `restart`.
    action: String,
    /// One process type; absent or empty: every process.
    process: Option<String>,
}

/// The overview's Stop, Start and Restart buttons (`paastech stop|start|restart`).
pub async fn lifecycle(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<LifecycleForm>,
) -> UiResult {
    let project = project_for(&state, &session.user, &name, Role::Developer).await?;
    let process = form.process.as_deref().map(str::trim).filter(|p| !p.is_empty());
    let (result, done, action) = match form.action.as_str() {
        "stop" => (state.orchestrator.stop(&project, process).await.map(drop), "stopped", AuditAction::Stopped),
        "start" => (state.orchestrator.start(&project, process).await.map(drop), "started", AuditAction::Started),
        "restart" => {
            (state.orchestrator.restart(&project, process).await.map(drop), "restarted", AuditAction::Restarted)
        }
        other => {
            let err = Error::Invalid(format!("unknown action {other:?}: stop, start or restart"));
            return overview_page(
                &state,
                &session,
                &name,
                None,
                Some(format!("That did not work: {err}")),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await;
        }
    };
    match result {
        Ok(()) => {
            tracing::info!(project = %project.name, action = done, "lifecycle change (web)");
            state.audit(audit::by(&session.user, action).on(&project).detail(process_detail(process))).await;
            Ok(Redirect::to(&format!("/projects/{}?done={done}", project.name)).into_response())
        }
        Err(err @ (Error::DeployFailed(_) | Error::Invalid(_) | Error::Conflict(_) | Error::Unavailable(_))) => {
            let message = format!("That did not work: {err}");
            overview_page(&state, &session, &name, None, Some(message), StatusCode::UNPROCESSABLE_ENTITY).await
        }
        Err(other) => Err(other.into()),
    }
}

async fn deployments_page(
    state: &AppState,
    session: &Session,
    name: &str,
    notice: Option<String>,
    error: Option<String>,
    status: StatusCode,
) -> UiResult {
    let (_, head, deployments) = load(state, session, name, "deployments", DEPLOYMENTS_SHOWN + 1).await?;
    let now = Timestamp::now();
    let more = deployments.len() as i64 > DEPLOYMENTS_SHOWN;
    let rows = deployments.iter().take(DEPLOYMENTS_SHOWN as usize).map(|d| DeploymentRow::of(d, now)).collect();
    let page =
        Deployments { l: layout(session, &head, "Deployments", true).with_notice(notice), p: head, rows, error, more };
    render(status, &page)
}

pub async fn deployments(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Query(notice): Query<Notice>,
) -> UiResult {
    deployments_page(&state, &session, &name, notice.message(), None, StatusCode::OK).await
}

#[derive(Deserialize)]
pub struct DeployForm {
    /// A version to roll back to; absent: deploy the latest build again.
    version: Option<i64>,
}

/// The rollback (and redeploy) button. Answers once the new deployment is live, or shows
/// why it failed; the previous deployment keeps serving then.
pub async fn deploy(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<DeployForm>,
) -> UiResult {
    let project = project_for(&state, &session.user, &name, Role::Developer).await?;
    match state.orchestrator.redeploy(&project, form.version).await {
        Ok(deployment) => {
            tracing::info!(project = %project.name, version = deployment.version, "deployed (web)");
            state.audit(redeploy_record(&session.user, &project, form.version, &deployment)).await;
            let to = format!("/projects/{}/deployments?done=deployed&v={}", project.name, deployment.version);
            Ok(Redirect::to(&to).into_response())
        }
        Err(err @ (Error::DeployFailed(_) | Error::Invalid(_) | Error::NotFound(_) | Error::Conflict(_))) => {
            let message = match form.version {
                Some(v) => format!("Rolling back to v{v} did not work: {err}"),
                None => format!("Deploying did not work: {err}"),
            };
            deployments_page(&state, &session, &name, None, Some(message), StatusCode::UNPROCESSABLE_ENTITY).await
        }
        Err(other) => Err(other.into()),
    }
}

pub async fn build_log(
    State(state): State<AppState>,
    session: Session,
    Path((name, version)): Path<(String, i64)>,
) -> UiResult {
    let (project, head, _) = load(&state, &session, &name, "deployments", 5).await?;
    let deployment = state.store.deployment(project.id, version).await?;
    let build = match deployment.build_id {
        Some(id) => Some(state.store.build(id).await?),
        None => None,
    };
    let (build_status, log) = match build {
        Some(build) => (build.status.as_str().to_owned(), build.log),
        None => ("none".to_owned(), String::new()),
    };
    let truncated = log.len() > BUILD_LOG_SHOWN_BYTES;
    let log = if truncated {
        let mut start = log.len() - BUILD_LOG_SHOWN_BYTES;
        while !log.is_char_boundary(start) {
            start += 1;
        }
        log[start..].to_owned()
    } else {
        log
    };
    let page = BuildLog {
        l: layout(&session, &head, &format!("v{version} build log"), false),
        p: head,
        row: DeploymentRow::of(&deployment, Timestamp::now()),
        build_status,
        log,
        truncated,
    };
    render(StatusCode::OK, &page)
}

// ----- Domains --------------------------------------------------------------------------

async fn domains_page_with(
    state: &AppState,
    session: &Session,
    name: &str,
    notice: Option<String>,
    form: (String, FieldErrors),
    https_form: Option<(HttpsForm, Option<String>)>,
    status: StatusCode,
) -> UiResult {
    let (project, head, _) = load(state, session, name, "domains", 5).await?;
    let now = Timestamp::now();
    let domains = state
        .orchestrator
        .domains(&project)
        .await?
        .into_iter()
        .map(|d| {
            let certificate = state.orchestrator.certificate(&d.name);
            // Over HTTPS once the name has a certificate.
            let https = certificate.as_ref().is_some_and(|c| c.state == paastech_core::CertificateState::Valid);
            DomainRow {
                url: state.urls.url(d.name.as_str(), https),
                certificate: certificate.map(CertificateCell::of),
                domain: d.name.to_string(),
                when: When::of(d.created_at, now),
            }
        })
        .collect();
    let own = state.orchestrator.app_host(&project.name).and_then(|host| {
        let cell = state.orchestrator.certificate(&host).map(CertificateCell::of)?;
        Some((host.to_string(), cell))
    });
    let (domain, mut errors) = form;
    let policy = state.orchestrator.https(&project).await?;
    let (https_redirect, hsts_max_age) = match https_form {
        Some((form, hsts_error)) => {
            if let Some(message) = hsts_error {
                errors.add("hsts_max_age", message);
            }
            (form.redirect.is_some(), form.hsts_max_age)
        }
        None => (policy.redirect, policy.hsts_max_age.map(|s| s.to_string()).unwrap_or_default()),
    };
    let l = layout(session, &head, "Domains", false).with_notice(notice);
    render(status, &DomainsPage { l, p: head, domains, own, domain, errors, https_redirect, hsts_max_age })
}

pub async fn domains_page(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Query(notice): Query<Notice>,
) -> UiResult {
    let empty = (String::new(), FieldErrors::default());
    domains_page_with(&state, &session, &name, notice.message(), empty, None, StatusCode::OK).await
}

#[derive(Deserialize)]
pub struct DomainForm {
    #[serde(default)]
    domain: String,
}

pub async fn domain_add(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<DomainForm>,
) -> UiResult {
    let project = project_for(&state, &session.user, &name, Role::Developer).await?;
    let domain = form.domain.trim().to_owned();
    match state.orchestrator.add_domain(&project, &domain).await {
        Ok(added) => {
            let record = audit::by(&session.user, AuditAction::DomainAdded).on(&project).detail(added.name.to_string());
            state.audit(record).await;
            Ok(Redirect::to(&format!("/projects/{}/domains?done=domain-added", project.name)).into_response())
        }
        Err(err @ (Error::Invalid(_) | Error::Conflict(_))) => {
            let status = if matches!(err, Error::Conflict(_)) { StatusCode::CONFLICT } else { StatusCode::BAD_REQUEST };
            let errors = FieldErrors::one("domain", err.to_string());
            domains_page_with(&state, &session, &name, None, (domain, errors), None, status).await
        }
        Err(other) => Err(other.into()),
    }
}

pub async fn domain_remove(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<DomainForm>,
) -> UiResult {
    let project = project_for(&state, &session.user, &name, Role::Developer).await?;
    state.orchestrator.remove_domain(&project, &form.domain).await?;
    state.audit(audit::by(&session.user, AuditAction::DomainRemoved).on(&project).detail(form.domain)).await;
    Ok(Redirect::to(&format!("/projects/{}/domains?done=domain-removed", project.name)).into_response())
}

/// The HTTPS form of the Domains tab: a checkbox (absent when unchecked) and a max-age
/// (empty: HSTS off).
#[derive(Deserialize)]
pub struct HttpsForm {
    redirect: Option<String>,
    #[serde(default)]
    hsts_max_age: String,
}

pub async fn https_save(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<HttpsForm>,
) -> UiResult {
    let project = project_for(&state, &session.user, &name, Role::Developer).await?;
    let typed = form.hsts_max_age.trim();
    let hsts_max_age = if typed.is_empty() {
        Ok(None)
    } else {
        typed
            .parse::<i64>()
            .map_err(|_| Error::Invalid(format!("{typed:?} is not a number of seconds")))
            .and_then(HttpsPolicy::parse_hsts_max_age)
            .map(Some)
    };
    let change = match hsts_max_age {
        Ok(age) => HttpsChange { redirect: Some(form.redirect.is_some()), hsts_max_age: Some(age) },
        Err(err) => {
            let empty = (String::new(), FieldErrors::default());
            let refused = Some((form, Some(err.to_string())));
            return domains_page_with(&state, &session, &name, None, empty, refused, StatusCode::BAD_REQUEST).await;
        }
    };
    let policy = state.orchestrator.set_https(&project, change).await?;
    state.audit(audit::by(&session.user, AuditAction::HttpsChanged).on(&project).detail(https_detail(&policy))).await;
    Ok(Redirect::to(&format!("/projects/{}/domains?done=https-saved", project.name)).into_response())
}

// ----- Env ------------------------------------------------------------------------------

async fn env_page_with(
    state: &AppState,
    session: &Session,
    name: &str,
    notice: Option<String>,
    form: (String, String, FieldErrors),
    status: StatusCode,
) -> UiResult {
    let (project, head, _) = load(state, session, name, "env", 5).await?;
    let vars = state.store.env(project.id).await?.into_iter().collect();
    let (key, value, errors) = form;
    let page =
        EnvPage { l: layout(session, &head, "Env", false).with_notice(notice), p: head, vars, key, value, errors };
    render(status, &page)
}

pub async fn env_page(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Query(notice): Query<Notice>,
) -> UiResult {
    let empty = (String::new(), String::new(), FieldErrors::default());
    env_page_with(&state, &session, &name, notice.message(), empty, StatusCode::OK).await
}

#[derive(Deserialize)]
pub struct EnvForm {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
}

/// Applies one change; a change to a deployed app makes a new deployment, kept only if it
/// goes live.
async fn apply_env(state: &AppState, session: &Session, name: &str, key: String, value: Option<String>) -> UiResult {
    let project = project_for(state, &session.user, name, Role::Developer).await?;
    let shown_value = value.clone().unwrap_or_default();
    let mut errors = FieldErrors::default();
    if let Err(err) = validate_env_key(&key) {
        errors.add("key", err.to_string());
    }
    let changes: EnvChanges = [(key.clone(), value)].into_iter().collect();
    if errors.is_empty()
        && let Err(err) = check_env_changes(&changes)
    {
        errors.add("value", err.to_string());
    }
    if !errors.is_empty() {
        return env_page_with(state, session, name, None, (key, shown_value, errors), StatusCode::BAD_REQUEST).await;
    }
    match state.orchestrator.update_env(&project, &changes).await {
        Ok((_, deployment)) => {
            tracing::info!(project = %project.name, "env changed (web)");
            let detail = env_change_detail(&changes);
            state.audit(audit::by(&session.user, AuditAction::EnvChanged).on(&project).detail(detail)).await;
            let to = match deployment {
                Some(d) => format!("/projects/{}/env?done=env-deployed&v={}", project.name, d.version),
                None => format!("/projects/{}/env?done=env-saved", project.name),
            };
            Ok(Redirect::to(&to).into_response())
        }
        Err(Error::DeployFailed(reason)) => {
            let errors = FieldErrors::one(
                "form",
                format!("The new deployment failed, so nothing changed and the previous one still serves: {reason}"),
            );
            env_page_with(state, session, name, None, (key, shown_value, errors), StatusCode::UNPROCESSABLE_ENTITY)
                .await
        }
        Err(other) => Err(other.into()),
    }
}

pub async fn env_save(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<EnvForm>,
) -> UiResult {
    let key = form.key.trim().to_owned();
    apply_env(&state, &session, &name, key, Some(form.value)).await
}

pub async fn env_remove(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<EnvForm>,
) -> UiResult {
    apply_env(&state, &session, &name, form.key.trim().to_owned(), None).await
}

// ----- Scale ----------------------------------------------------------------------------

/// The process types to offer: the live build's, else those scaled before, else `web`.
async fn process_types(state: &AppState, project: &Project) -> Result<Vec<String>, Error> {
    if let Some(build_id) = state.store.live_deployment(project.id).await?.and_then(|d| d.build_id) {
        let build = state.store.build(build_id).await?;
        // The release command runs once per deployment: it has no instances to scale.
        let types: Vec<String> =
            build.processes.keys().filter(|p| !paastech_core::app::procfile::is_release(p)).cloned().collect();
        if !types.is_empty() {
            return Ok(types);
        }
    }
    let scaled: Vec<String> = state.store.scale(project.id).await?.into_keys().collect();
    Ok(if scaled.is_empty() { vec!["web".to_owned()] } else { scaled })
}

async fn scale_page_with(
    state: &AppState,
    session: &Session,
    name: &str,
    notice: Option<String>,
    sent: Option<(HashMap<String, String>, FieldErrors)>,
    status: StatusCode,
) -> UiResult {
    let (project, head, _) = load(state, session, name, "scale", 5).await?;
    let current = state.store.scale(project.id).await?;
    let (sent, errors) = sent.unwrap_or_default();
    let rows = process_types(state, &project)
        .await?
        .into_iter()
        .map(|process| ScaleRow {
            count: sent
                .get(&process)
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| current.get(&process).copied().unwrap_or(1)),
            process,
        })
        .collect();
    let page = ScalePage {
        l: layout(session, &head, "Scale", false).with_notice(notice),
        p: head,
        rows,
        max: MAX_INSTANCES,
        error: errors.get("form").map(str::to_owned),
    };
    render(status, &page)
}

pub async fn scale_page(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Query(notice): Query<Notice>,
) -> UiResult {
    scale_page_with(&state, &session, &name, notice.message(), None, StatusCode::OK).await
}

/// The form has one number field per process type, named after it.
pub async fn scale_save(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> UiResult {
    let project = project_for(&state, &session.user, &name, Role::Developer).await?;
    let mut scale = BTreeMap::new();
    let mut errors = FieldErrors::default();
    let mut bad_field = None;
    for (process, count) in form.iter().filter(|(k, _)| k.as_str() != "csrf") {
        match count.trim().parse::<u32>() {
            Ok(n) if n <= MAX_INSTANCES => {
                scale.insert(process.clone(), n);
            }
            _ => bad_field = Some(process.clone()),
        }
    }
    if let Some(process) = bad_field {
        errors.add("form", format!("{process}: enter a whole number from 0 to {MAX_INSTANCES}"));
    } else if let Err(err) = check_scale(&scale) {
        errors.add("form", err.to_string());
    }
    if errors.is_empty() {
        match state.orchestrator.scale(&project, &scale).await {
            Ok(_) => {
                tracing::info!(project = %project.name, "scaled (web)");
                let detail = scale_detail(&scale);
                state.audit(audit::by(&session.user, AuditAction::Scaled).on(&project).detail(detail)).await;
                return Ok(Redirect::to(&format!("/projects/{}/scale?done=scaled", project.name)).into_response());
            }
            Err(err @ (Error::Invalid(_) | Error::DeployFailed(_))) => errors.add("form", err.to_string()),
            Err(other) => return Err(other.into()),
        }
    }
    scale_page_with(&state, &session, &name, None, Some((form, errors)), StatusCode::BAD_REQUEST).await
}

// ----- Logs -----------------------------------------------------------------------------

pub async fn logs_page(State(state): State<AppState>, session: Session, Path(name): Path<String>) -> UiResult {
    let (project, head, _) = load(&state, &session, &name, "logs", 5).await?;
    let lines = state.orchestrator.logs().tail(&project.name, LOG_LINES_SHOWN);
    let page = LogsPage { l: layout(&session, &head, "Logs", true), p: head, lines };
    render(StatusCode::OK, &page)
}

/// Server-sent events: each new line of the project's log (its instances' output, build
/// output and the platform's notes) as one event, until the page goes away or the server
/// stops.
pub async fn logs_stream(State(state): State<AppState>, session: Session, Path(name): Path<String>) -> UiResult {
    let project = project_for(&state, &session.user, &name, Role::Viewer).await?;
    let follower = state.orchestrator.logs().follow(&project.name);
    let lines = futures_util::stream::unfold(follower, |mut rx| async move {
        let data = match rx.recv().await {
            Ok(line) => line,
            Err(RecvError::Lagged(n)) => format!("... {n} lines skipped"),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok::<_, Infallible>(Event::default().data(data)), rx))
    })
    .take_until(state.stopped());
    Ok(Sse::new(lines).keep_alive(KeepAlive::default()).into_response())
}

// ----- Settings -------------------------------------------------------------------------

pub async fn settings(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Query(notice): Query<Notice>,
) -> UiResult {
    settings_page(&state, &session, &name, notice.message(), FieldErrors::default(), StatusCode::OK).await
}

async fn settings_page(
    state: &AppState,
    session: &Session,
    name: &str,
    notice: Option<String>,
    errors: FieldErrors,
    status: StatusCode,
) -> UiResult {
    let (project, head, _) = load(state, session, name, "settings", 5).await?;
    let now = Timestamp::now();
    let mut previews = Vec::new();
    for preview in state.orchestrator.previews(&project).await? {
        previews.push(PreviewRow {
            url: state.urls.app_url(preview.name.as_str()),
            branch: preview.preview.as_ref().map(|of| of.branch.clone()).unwrap_or_default(),
            live_version: state.store.live_deployment(preview.id).await?.map(|d| d.version),
            name: preview.name.to_string(),
            when: When::of(preview.created_at, now),
        });
    }
    let preview_of = match &project.preview {
        Some(of) => Some((state.store.project_by_id(of.parent_id).await?.name.to_string(), of.branch.clone())),
        None => None,
    };
    let page = SettingsPage {
        l: layout(session, &head, "Settings", false).with_notice(notice),
        p: head,
        errors,
        previews_enabled: project.previews_enabled,
        previews,
        preview_of,
        sleep: state.orchestrator.sleep_state(&project).await?,
        max_sleep_minutes: paastech_core::sleep::MAX_AFTER_MINUTES,
    };
    render(status, &page)
}

#[derive(Deserialize)]
pub struct PreviewsForm {
    /// The checkbox: present when ticked.
    enabled: Option<String>,
}

/// Turns preview apps on or off (off removes them).
pub async fn previews_save(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<PreviewsForm>,
) -> UiResult {
    let project = project_for(&state, &session.user, &name, Role::Developer).await?;
    let enabled = form.enabled.is_some();
    match state.orchestrator.set_previews(&project, enabled).await {
        Ok(_) => {
            let detail = if enabled { "on" } else { "off" };
            state.audit(audit::by(&session.user, AuditAction::PreviewsChanged).on(&project).detail(detail)).await;
            let done = if enabled { "previews-on" } else { "previews-off" };
            Ok(Redirect::to(&format!("/projects/{}/settings?done={done}", project.name)).into_response())
        }
        Err(Error::Invalid(message)) => {
            let errors = FieldErrors::one("previews", message);
            settings_page(&state, &session, &name, None, errors, StatusCode::UNPROCESSABLE_ENTITY).await
        }
        Err(err) => Err(err.into()),
    }
}

#[derive(Deserialize)]
pub struct SleepForm {
    /// The checkbox: present when ticked.
    enabled: Option<String>,
    /// Minutes without a request; as typed.
    #[serde(default)]
    after_minutes: String,
}

/// Turns sleep on or off, with its idle time (off wakes a sleeping app).
pub async fn sleep_save(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<SleepForm>,
) -> UiResult {
    let project = project_for(&state, &session.user, &name, Role::Developer).await?;
    let enabled = form.enabled.is_some();
    let after = match form.after_minutes.trim() {
        "" => Ok(None),
        typed => typed
            .parse::<u32>()
            .map_err(|_| Error::Invalid("Give the idle time as a whole number of minutes.".into()))
            .and_then(paastech_core::SleepState::check_after_minutes)
            .map(Some),
    };
    let change = after.map(|after_minutes| paastech_core::orchestrator::SleepChange {
        enabled,
        after_minutes,
        workers_keep_awake: None,
    });
    match change {
        Ok(change) => match state.orchestrator.set_sleep(&project, change).await {
            Ok(_) => {
                let done = if enabled { "sleep-on" } else { "sleep-off" };
                Ok(Redirect::to(&format!("/projects/{}/settings?done={done}", project.name)).into_response())
            }
            Err(Error::Invalid(message) | Error::DeployFailed(message) | Error::Unavailable(message)) => {
                let errors = FieldErrors::one("sleep", message);
                settings_page(&state, &session, &name, None, errors, StatusCode::UNPROCESSABLE_ENTITY).await
            }
            Err(err) => Err(err.into()),
        },
        Err(Error::Invalid(message)) => {
            let errors = FieldErrors::one("sleep", message);
            settings_page(&state, &session, &name, None, errors, StatusCode::UNPROCESSABLE_ENTITY).await
        }
        Err(err) => Err(err.into()),
    }
}

#[derive(Deserialize)]
pub struct DeleteForm {
    #[serde(default)]
    confirm: String,
}

/// Deletes the project once its name has been typed.
pub async fn delete(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<DeleteForm>,
) -> UiResult {
    let project = project_for(&state, &session.user, &name, Role::Owner).await?;
    if form.confirm.trim() != project.name.as_str() {
        let message = format!("Type the project's name, {}, to confirm.", project.name);
        let errors = FieldErrors::one("confirm", message);
        return settings_page(&state, &session, &name, None, errors, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    state.orchestrator.delete_project(&project).await?;
    tracing::info!(project = %project.name, user = session.user.id, "project deleted (web)");
    state.audit(audit::by(&session.user, AuditAction::ProjectDeleted).on(&project)).await;
    Ok(Redirect::to("/?done=deleted").into_response())
}

// ----- Add-ons ----------------------------------------------------------------------------

struct AddonsForm {
    kind: String,
    name: String,
    errors: FieldErrors,
    destroy_error: Option<(String, String)>,
}

async fn addons_page_with(
    state: &AppState,
    session: &Session,
    name: &str,
    notice: Option<String>,
    form: AddonsForm,
    status: StatusCode,
) -> UiResult {
    let (project, head, _) = load(state, session, name, "addons", 5).await?;
    let now = Timestamp::now();
    let addons = state
        .orchestrator
        .addons(&project)
        .await?
        .into_iter()
        .map(|a| {
            let error = form.destroy_error.as_ref().filter(|(n, _)| n == a.name.as_str()).map(|(_, e)| e.clone());
            AddonRow { name: a.name.to_string(), kind: a.kind, when: When::of(a.created_at, now), error }
        })
        .collect();
    let kinds = state.orchestrator.addon_kind_names().into_iter().map(str::to_owned).collect();
    let l = layout(session, &head, "Add-ons", false).with_notice(notice);
    let page = AddonsPage { l, p: head, addons, kinds, kind: form.kind, name: form.name, errors: form.errors };
    render(status, &page)
}

pub async fn addons_page(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Query(notice): Query<Notice>,
) -> UiResult {
    let form =
        AddonsForm { kind: String::new(), name: String::new(), errors: FieldErrors::default(), destroy_error: None };
    addons_page_with(&state, &session, &name, notice.message(), form, StatusCode::OK).await
}

#[derive(Deserialize)]
pub struct AddonCreateForm {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
}

pub async fn addon_create(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<AddonCreateForm>,
) -> UiResult {
    let project = project_for(&state, &session.user, &name, Role::Developer).await?;
    let addon_name = form.name.trim().to_owned();
    let given = (!addon_name.is_empty()).then_some(addon_name.as_str());
    match state.orchestrator.create_addon(&project, &form.kind, given).await {
        Ok((addon, deployment)) => {
            let detail = format!("{} ({})", addon.name, addon.kind);
            state.audit(audit::by(&session.user, AuditAction::AddonCreated).on(&project).detail(detail)).await;
            let v = deployment.map(|d| format!("&v={}", d.version)).unwrap_or_default();
            Ok(Redirect::to(&format!("/projects/{}/addons?done=addon-created{v}", project.name)).into_response())
        }
        Err(err @ (Error::Invalid(_) | Error::Conflict(_) | Error::Unavailable(_) | Error::DeployFailed(_))) => {
            let status = match err {
                Error::Conflict(_) => StatusCode::CONFLICT,
                Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                Error::DeployFailed(_) => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::BAD_REQUEST,
            };
            let form = AddonsForm {
                kind: form.kind,
                name: addon_name,
                errors: FieldErrors::one("name", err.to_string()),
                destroy_error: None,
            };
            addons_page_with(&state, &session, &name, None, form, status).await
        }
        Err(other) => Err(other.into()),
    }
}

#[derive(Deserialize)]
pub struct AddonDestroyForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    confirm: String,
}

/// Destroys an add-on once its name has been typed.
pub async fn addon_destroy(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<AddonDestroyForm>,
) -> UiResult {
    let project = project_for(&state, &session.user, &name, Role::Developer).await?;
    let refused = |message: String| AddonsForm {
        kind: String::new(),
        name: String::new(),
        errors: FieldErrors::default(),
        destroy_error: Some((form.name.clone(), message)),
    };
    if form.confirm.trim() != form.name {
        let message = format!("Type the add-on's name, {}, to confirm: its data is deleted.", form.name);
        return addons_page_with(&state, &session, &name, None, refused(message), StatusCode::UNPROCESSABLE_ENTITY)
            .await;
    }
    let addon = paastech_core::AddonName::parse(&form.name)?;
    match state.orchestrator.destroy_addon(&project, &addon).await {
        Ok(_) => {
            let record = audit::by(&session.user, AuditAction::AddonDestroyed).on(&project).detail(addon.to_string());
            state.audit(record).await;
            Ok(Redirect::to(&format!("/projects/{}/addons?done=addon-destroyed", project.name)).into_response())
        }
        Err(err @ (Error::Unavailable(_) | Error::DeployFailed(_))) => {
            let status = if matches!(err, Error::Unavailable(_)) {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            addons_page_with(&state, &session, &name, None, refused(err.to_string()), status).await
        }
        Err(other) => Err(other.into()),
    }
}
