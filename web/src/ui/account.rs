//! Account pages (SSH keys, API tokens) and the admin page.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use paastech_core::{AuditAction, Error, Timestamp};
use serde::Deserialize;

use super::pages::{Notice, project_rows};
use super::project::state_text;
use super::session::{SESSION_TOKEN_NAME, Session};
use super::view::{
    AdminPage, FieldErrors, KeyRow, KeysPage, Layout, NodeInstanceRow, NodeRow, NodesPage, TokenRow, TokensPage,
    UserRow, When,
};
use super::{UiResult, render};
use crate::AppState;
use crate::api::accounts::check_name;
use crate::audit;
use crate::auth;

async fn keys_page(
    state: &AppState,
    session: &Session,
    notice: Option<String>,
    form: (String, String, FieldErrors),
    status: StatusCode,
) -> UiResult {
    let now = Timestamp::now();
    let keys = state
        .store
        .ssh_keys(session.user.id)
        .await?
        .into_iter()
        .map(|k| KeyRow { id: k.id, name: k.name, fingerprint: k.fingerprint, when: When::of(k.created_at, now) })
        .collect();
    let (name, public_key, errors) = form;
    let page =
        KeysPage { l: Layout::new(session, "SSH keys", "keys").with_notice(notice), keys, name, public_key, errors };
    render(status, &page)
}

pub async fn keys(State(state): State<AppState>, session: Session, Query(notice): Query<Notice>) -> UiResult {
    let empty = (String::new(), String::new(), FieldErrors::default());
    keys_page(&state, &session, notice.message(), empty, StatusCode::OK).await
}

#[derive(Deserialize)]
pub struct KeyForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    public_key: String,
}

pub async fn add_key(State(state): State<AppState>, session: Session, Form(form): Form<KeyForm>) -> UiResult {
    let mut errors = FieldErrors::default();
    let line = form.public_key.trim().to_owned();
    let parsed = match paastech_ssh::parse_public_key(&line) {
        Ok(parsed) => Some(parsed),
        Err(err) => {
            errors.add("public_key", err.to_string());
            None
        }
    };
    let name = match form.name.trim() {
        "" => line.split_whitespace().nth(2).map(str::to_owned).unwrap_or_else(|| "key".to_owned()),
        name => name.to_owned(),
    };
    if let Err(err) = check_name("key", &name) {
        errors.add("name", err.to_string());
    }
    if let (Some(parsed), true) = (parsed, errors.is_empty()) {
        match state.store.add_ssh_key(session.user.id, &name, &parsed.fingerprint, &parsed.openssh).await {
            Ok(key) => {
                tracing::info!(user = session.user.id, fingerprint = %key.fingerprint, "ssh key added (web)");
                let detail = format!("{} {}", key.name, key.fingerprint);
                state.audit(audit::by(&session.user, AuditAction::KeyAdded).detail(detail)).await;
                return Ok(Redirect::to("/account/keys?done=key-added").into_response());
            }
            Err(err @ Error::Conflict(_)) => errors.add("public_key", err.to_string()),
            Err(other) => return Err(other.into()),
        }
    }
    let status = if errors.has("public_key") && errors.get("public_key").is_some_and(|m| m.contains("already")) {
        StatusCode::CONFLICT
    } else {
        StatusCode::BAD_REQUEST
    };
    keys_page(&state, &session, None, (form.name, form.public_key, errors), status).await
}

pub async fn delete_key(State(state): State<AppState>, session: Session, Path(id): Path<i64>) -> UiResult {
    crate::api::accounts::remove_key(&state, &session.user, id).await?;
    Ok(Redirect::to("/account/keys?done=key-removed").into_response())
}

async fn tokens_page(
    state: &AppState,
    session: &Session,
    notice: Option<String>,
    created: Option<String>,
    form: (String, FieldErrors),
    status: StatusCode,
) -> UiResult {
    let now = Timestamp::now();
    let tokens = state
        .store
        .tokens(session.user.id)
        .await?
        .into_iter()
        // Expired sessions linger in the store until revoked; they are of no interest.
        .filter(|t| t.expires_at.is_none_or(|at| at > now))
        .map(|t| TokenRow {
            is_session: t.name == SESSION_TOKEN_NAME,
            is_current: t.id == session.token_id,
            id: t.id,
            name: t.name,
            created: When::of(t.created_at, now),
            last_used: t.last_used_at.map(|at| When::of(at, now)),
            expires: t
                .expires_at
                .map(|at| When { iso: at.to_rfc3339(), ago: at.to_rfc3339().chars().take(10).collect() }),
        })
        .collect();
    let (name, errors) = form;
    let page = TokensPage {
        l: Layout::new(session, "API tokens", "tokens").with_notice(notice),
        tokens,
        created,
        name,
        errors,
    };
    render(status, &page)
}

pub async fn tokens(State(state): State<AppState>, session: Session, Query(notice): Query<Notice>) -> UiResult {
    tokens_page(&state, &session, notice.message(), None, (String::new(), FieldErrors::default()), StatusCode::OK).await
}

#[derive(Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    name: String,
}

/// Creates a long-lived API token and shows its secret on this response only.
pub async fn create_token(State(state): State<AppState>, session: Session, Form(form): Form<TokenForm>) -> UiResult {
    let name = form.name.trim().to_owned();
    if let Err(err) = check_name("token", &name) {
        let errors = FieldErrors::one("name", err.to_string());
        return tokens_page(&state, &session, None, None, (name, errors), StatusCode::BAD_REQUEST).await;
    }
    let secret = auth::new_token();
    state.store.create_token(session.user.id, &name, &auth::token_hash(&secret), None).await?;
    tracing::info!(user = session.user.id, "api token created (web)");
    state.audit(audit::by(&session.user, AuditAction::TokenCreated).detail(name.clone())).await;
    let notice = Some(format!("Token {name:?} created."));
    tokens_page(&state, &session, notice, Some(secret), (String::new(), FieldErrors::default()), StatusCode::CREATED)
        .await
}

pub async fn delete_token(State(state): State<AppState>, session: Session, Path(id): Path<i64>) -> UiResult {
    crate::api::accounts::revoke_token(&state, &session.user, id).await?;
    if id == session.token_id {
        // Revoking this very session is logging out.
        return Ok(Redirect::to("/login").into_response());
    }
    Ok(Redirect::to("/account/tokens?done=token-revoked").into_response())
}

/// Users, every project, and what the platform runs on. Only admins; to others it does
/// not exist.
pub async fn admin(State(state): State<AppState>, session: Session, Query(notice): Query<Notice>) -> UiResult {
    if !session.user.is_admin {
        return Err(Error::NotFound("no such page".into()).into());
    }
    let now = Timestamp::now();
    let users = state.store.users().await?;
    let projects = state.store.projects(None).await?;
    let mut counts: HashMap<i64, usize> = HashMap::new();
    for project in &projects {
        *counts.entry(project.owner_id).or_default() += 1;
    }
    let owners: HashMap<i64, String> = users.iter().map(|u| (u.id, u.email.clone())).collect();
    let user_rows = users
        .into_iter()
        .map(|u| UserRow {
            projects: counts.get(&u.id).copied().unwrap_or(0),
            email: u.email,
            is_admin: u.is_admin,
            disabled: u.disabled,
            when: When::of(u.created_at, now),
        })
        .collect();
    let page = AdminPage {
        l: Layout::new(&session, "Admin", "admin").with_notice(notice.message()),
        users: user_rows,
        projects: project_rows(
            &state,
            projects.into_iter().map(|p| (p, paastech_core::Role::Owner)).collect(),
            &owners,
        )
        .await?,
        runtime: state.orchestrator.runtime_name().to_owned(),
        builder: state.orchestrator.builder_name().to_owned(),
        hooks: state.hook_names.as_ref().clone(),
    };
    render(StatusCode::OK, &page)
}

/// The machines the runtime runs instances on, and every project's instances on each.
/// Only admins, read-only; to others it does not exist.
pub async fn nodes(State(state): State<AppState>, session: Session) -> UiResult {
    use paastech_core::drivers::{NodeAvailability, NodeRole, NodeState};
    if !session.user.is_admin {
        return Err(Error::NotFound("no such page".into()).into());
    }
    let nodes = state
        .orchestrator
        .nodes()
        .await?
        .into_iter()
        .map(|node| {
            let (node_state, state_class) = match node.state {
                NodeState::Ready => ("ready", "ok"),
                NodeState::Down => ("down", "bad"),
                NodeState::Disconnected => ("disconnected", "bad"),
                NodeState::Unknown => ("unknown", "warn"),
            };
            NodeRow {
                id: node.id,
                hostname: node.hostname,
                address: node.address.map_or_else(|| "-".to_owned(), |a| a.to_string()),
                role: match node.role {
                    NodeRole::Local => "local",
                    NodeRole::Manager => "manager",
                    NodeRole::Worker => "worker",
                },
                state: node_state,
                state_class,
                availability: match node.availability {
                    NodeAvailability::Active => "active",
                    NodeAvailability::Pause => "pause",
                    NodeAvailability::Drain => "drain",
                },
                instances: node
                    .instances
                    .into_iter()
                    .map(|i| {
                        let (text, class) = state_text(i.state);
                        NodeInstanceRow {
                            project: i.project.to_string(),
                            name: format!("{}.{}", i.process_type, i.index + 1),
                            version: i.version,
                            state: text.to_owned(),
                            state_class: class,
                            address: i.addr.map_or_else(|| "-".to_owned(), |a| a.to_string()),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    let page = NodesPage {
        l: Layout::new(&session, "Nodes", "admin"),
        runtime: state.orchestrator.runtime_name().to_owned(),
        nodes,
    };
    render(StatusCode::OK, &page)
}
