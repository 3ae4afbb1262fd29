//! `/api/v1`: routes, request and response shapes, and the OpenAPI document built from them.

pub(crate) mod accounts;
pub(crate) mod addons;
pub(crate) mod audit;
pub(crate) mod collaborators;
pub(crate) mod cron;
pub(crate) mod domains;
pub(crate) mod email;
pub(crate) mod extract;
pub(crate) mod https;
pub(crate) mod lifecycle;
pub(crate) mod nodes;
pub(crate) mod previews;
pub(crate) mod projects;
pub(crate) mod run;
pub(crate) mod schemas;
pub(crate) mod sleep;
pub(crate) mod stats;
pub(crate) mod two_factor;
pub(crate) mod users;
pub(crate) mod webhooks;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use paastech_core::Error;
use utoipa::OpenApi;

pub use self::extract::{JsonBody, PathParam, QueryParams, RawBody};
use crate::AppState;
use crate::error::{ApiResult, ErrorBody, ErrorStatus, error_response};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi))
        .route("/auth/signup", post(accounts::signup))
        .route("/auth/login", post(accounts::login))
        .route("/auth/verify", post(email::verify))
        .route("/auth/verify/resend", post(email::resend))
        .route("/auth/password/reset", post(email::request_reset))
        .route("/auth/password/reset/confirm", post(email::confirm_reset))
        .route("/me", get(accounts::me))
        .route("/me/2fa", post(two_factor::start_enrolment).delete(two_factor::disable_own))
        .route("/me/2fa/confirm", post(two_factor::confirm_enrolment))
        .route("/tokens", get(accounts::list_tokens).post(accounts::create_token))
        .route("/tokens/{id}", delete(accounts::delete_token))
        .route("/ssh-keys", get(accounts::list_keys).post(accounts::add_key))
        .route("/ssh-keys/{id}", delete(accounts::delete_key))
        .route("/users", get(accounts::list_users))
        .route("/users/{user}", patch(users::patch).delete(users::delete))
        .route("/users/{user}/2fa", delete(two_factor::admin_reset))
        .route("/nodes", get(nodes::list))
        .route("/audit", get(audit::list))
        .route("/projects", get(projects::list).post(projects::create))
        .route("/projects/{name}", get(projects::get).delete(projects::delete))
        .route("/projects/{name}/collaborators", get(collaborators::list).post(collaborators::add))
        .route("/projects/{name}/collaborators/{member}", delete(collaborators::remove))
        .route("/projects/{name}/transfer", post(collaborators::transfer))
        .route("/projects/{name}/env", get(projects::get_env).patch(projects::patch_env))
        .route("/projects/{name}/scale", get(projects::get_scale).put(projects::put_scale))
        .route("/projects/{name}/deployments", get(projects::list_deployments).post(projects::create_deployment))
        .route("/projects/{name}/limits", get(projects::get_limits).put(projects::put_limits))
        .route("/projects/{name}/logs", get(projects::logs))
        .route("/projects/{name}/ps", get(projects::instances))
        .route("/projects/{name}/stats", get(stats::get))
        .route("/projects/{name}/domains", get(domains::list).post(domains::add))
        .route("/projects/{name}/domains/{domain}", delete(domains::remove))
        .route("/projects/{name}/addons", get(addons::list).post(addons::create))
        .route("/projects/{name}/addons/{addon}", get(addons::info).delete(addons::destroy))
        .route("/projects/{name}/addons/{addon}/backup", get(addons::backup))
        .route("/projects/{name}/addons/{addon}/restore", post(addons::restore))
        .route("/projects/{name}/https", get(https::get).patch(https::patch))
        .route("/projects/{name}/webhooks", get(webhooks::list).post(webhooks::add))
        .route("/projects/{name}/webhooks/{id}", delete(webhooks::remove))
        .route("/projects/{name}/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route("/projects/{name}/previews", get(previews::get).put(previews::put))
        .route("/projects/{name}/sleep", get(sleep::get).put(sleep::put))
        .route("/projects/{name}/cron", get(cron::list))
        .route("/projects/{name}/run", post(projects::run))
        .route("/projects/{name}/run/interactive", get(run::interactive))
        .route("/projects/{name}/stop", post(lifecycle::stop))
        .route("/projects/{name}/start", post(lifecycle::start))
        .route("/projects/{name}/restart", post(lifecycle::restart))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "not_found", "no such API route".into())
}

async fn method_not_allowed() -> Response {
    error_response(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route".into())
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: String,
    pub database: String,
}

/// Liveness that means something: the database answers a query.
#[utoipa::path(get, path = "/healthz", tag = "platform",
    responses((status = 200, body = Health), ErrorStatus<503>))]
async fn healthz(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(Health { status: "ok".into(), database: "ok".into() }).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "health check: database unreachable");
            crate::error::ApiError(Error::Unavailable("database unreachable".into())).into_response()
        }
    }
}

async fn openapi() -> ApiResult<Response> {
    Ok(Json(ApiDoc::openapi()).into_response())
}

#[derive(OpenApi)]
#[openapi(
    info(title = "PaaSTech API", description = "Self-hosted PaaS: accounts (and, for admins, users), SSH keys, projects, their collaborators, config, custom domains, HTTPS policy, add-ons (databases), deploy webhooks, scheduled jobs, preview apps, deployments, the audit log, and (for admins) the nodes apps run on. Authenticate with `Authorization: Bearer <token>`."),
    servers((url = "/api/v1")),
    paths(
        healthz,
        accounts::signup, accounts::login, accounts::me,
        email::verify, email::resend, email::request_reset, email::confirm_reset,
        accounts::list_tokens, accounts::create_token, accounts::delete_token,
        accounts::list_keys, accounts::add_key, accounts::delete_key, accounts::list_users,
        users::patch, users::delete,
        two_factor::start_enrolment, two_factor::confirm_enrolment, two_factor::disable_own, two_factor::admin_reset,
        nodes::list,
        audit::list,
        projects::list, projects::create, projects::get, projects::delete,
        collaborators::list, collaborators::add, collaborators::remove, collaborators::transfer,
        projects::get_env, projects::patch_env, projects::get_scale, projects::put_scale,
        projects::list_deployments, projects::create_deployment, projects::get_limits, projects::put_limits, projects::logs, projects::instances, stats::get,
        projects::run, run::interactive,
        lifecycle::stop, lifecycle::start, lifecycle::restart,
        domains::list, domains::add, domains::remove,
        https::get, https::patch,
        addons::list, addons::create, addons::info, addons::destroy, addons::backup, addons::restore,
        webhooks::list, webhooks::add, webhooks::remove, webhooks::deliveries,
        previews::get, previews::put,
        sleep::get, sleep::put,
        cron::list,
    ),
    components(schemas(ErrorBody), responses(ErrorBody)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}
