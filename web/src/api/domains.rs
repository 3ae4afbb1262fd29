//! A project's custom domains: the host names it answers on besides `NAME.<domain>`.
//! Routed by the ingress as soon as they are added; another user's project answers 404.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use paastech_core::Domain;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{JsonBodyErrors, NeedsToken, ParamErrors};
use super::projects::visible_project;
use super::schemas::{DomainNameSchema, ProjectNameSchema};
use super::{JsonBody, PathParam};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::error::{ApiResult, ErrorStatus};

#[derive(Deserialize, ToSchema)]
pub struct NewDomain {
    /// A host name; stored lowercase, without a trailing dot. An internationalized name is
    /// taken in its ASCII (`xn--`) form only: given in Unicode, the refusal names that form.
    #[schema(value_type = DomainNameSchema)]
    pub domain: String,
}

#[derive(Serialize, ToSchema)]
pub struct DomainView {
    /// The host name, in its canonical ASCII form.
    pub domain: String,
    /// Where the app answers on it, once DNS points the name at this server.
    pub url: String,
    pub created_at: String,
}

fn view(state: &AppState, domain: Domain) -> DomainView {
    DomainView {
        url: state.urls.domain_url(domain.name.as_str()),
        domain: domain.name.to_string(),
        created_at: domain.created_at.to_rfc3339(),
    }
}

/// The project's custom domains, by name.
#[utoipa::path(get, path = "/projects/{name}/domains", tag = "domains", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)),
    responses((status = 200, body = Vec<DomainView>), NeedsToken, ParamErrors, ErrorStatus<404>))]
pub async fn list(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
) -> ApiResult<Json<Vec<DomainView>>> {
    let project = visible_project(&state, &user, &name).await?;
    let domains = state.orchestrator.domains(&project).await?;
    Ok(Json(domains.into_iter().map(|d| view(&state, d)).collect()))
}

/// Adds a custom domain; the ingress serves the project on it at once. 400 names what is
/// wrong with the name (not a host name, an IP address, a wildcard, a name under the
/// platform's app domain, a Unicode name, with the ASCII form to use); 409 when any project
/// has it already.
#[utoipa::path(post, path = "/projects/{name}/domains", tag = "domains", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)), request_body = NewDomain,
    responses((status = 201, body = DomainView), NeedsToken, ParamErrors, JsonBodyErrors, ErrorStatus<404>, ErrorStatus<409>))]
pub async fn add(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
    JsonBody(body): JsonBody<NewDomain>,
) -> ApiResult<(StatusCode, Json<DomainView>)> {
    let project = visible_project(&state, &user, &name).await?;
    let domain = state.orchestrator.add_domain(&project, &body.domain).await?;
    Ok((StatusCode::CREATED, Json(view(&state, domain))))
}

/// Removes a custom domain of the project; the ingress answers 404 on it at once.
#[utoipa::path(delete, path = "/projects/{name}/domains/{domain}", tag = "domains", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path), ("domain" = DomainNameSchema, Path)),
    responses((status = 204, description = "removed"), NeedsToken, ParamErrors, ErrorStatus<404>))]
pub async fn remove(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam((name, domain)): PathParam<(String, String)>,
) -> ApiResult<StatusCode> {
    let project = visible_project(&state, &user, &name).await?;
    state.orchestrator.remove_domain(&project, &domain).await?;
    Ok(StatusCode::NO_CONTENT)
}
