//! `GET /metrics`: the platform's figures for Prometheus (OpenMetrics text). On the API
//! listener it takes an admin's token (`Authorization: Bearer …`, as any API call); on the
//! listener of `[metrics] listen`, which the operator keeps on a private address, it takes
//! none, as Prometheus scrapes expect.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use paastech_core::Error;
use paastech_core::metrics;

use crate::AppState;
use crate::auth::CurrentUser;
use crate::error::ApiResult;

/// For admins, on the API listener.
pub(crate) async fn for_admin(State(state): State<AppState>, CurrentUser(user): CurrentUser) -> ApiResult<Response> {
    if !user.is_admin {
        return Err(Error::Forbidden("only admins may read the metrics".into()).into());
    }
    Ok(render(&state).await)
}

/// The routes of the `[metrics] listen` listener: `/metrics` for anyone who reaches it.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(|State(state): State<AppState>| async move { render(&state).await }))
        .with_state(state)
}

/// Reads what the store holds (a scrape is the only time anyone asks), then renders.
async fn render(state: &AppState) -> Response {
    let projects = state.store.projects(None).await.map(|p| p.len() as u64);
    let users = state.store.users().await.map(|u| u.len() as u64);
    let nodes = state.orchestrator.nodes().await;
    for err in [projects.as_ref().err(), users.as_ref().err(), nodes.as_ref().err()].into_iter().flatten() {
        // The other figures still go out; this one keeps its last value.
        tracing::warn!(error = %err, "metrics: cannot read the store or the runtime");
    }
    let figures = metrics::metrics();
    figures.set_store_figures(projects.ok(), users.ok());
    if let Ok(nodes) = nodes {
        figures.set_instances(&nodes);
    }
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], metrics::encode()).into_response()
}
