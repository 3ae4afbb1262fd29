//! A project's custom domains: the host names it answers on besides `NAME.<domain>`.
//! Routed by the ingress as soon as they are added; another user's project answers 404.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use paastech_core::AuditAction;
use paastech_core::Role;
use paastech_core::{CertificateState, CertificateStatus, Domain};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{JsonBodyErrors, NeedsToken, ParamErrors};
use super::projects::project_for;
use super::schemas::{DomainNameSchema, ProjectNameSchema};
use super::{JsonBody, PathParam};
use crate::AppState;
use crate::audit;
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
    /// Its HTTPS certificate; null when the server obtains none by ACME.
    pub certificate: Option<CertificateView>,
}

/// Where a name's HTTPS certificate stands.
#[derive(Serialize, ToSchema)]
pub struct CertificateView {
    /// `pending` (being ordered), `valid`, `failed` (the last order failed and none is
    /// served: see `last_error`), `expired` (no longer served; a new one is on its way) or
    /// `operator` (covered by the operator's certificate).
    pub status: String,
    /// When the certificate served expires.
    pub expires_at: Option<String>,
    /// Why the last order failed (kept until an order succeeds).
    pub last_error: Option<String>,
    /// When the next order starts: a retry, or the renewal.
    pub next_attempt_at: Option<String>,
}

impl From<CertificateStatus> for CertificateView {
    fn from(status: CertificateStatus) -> Self {
        CertificateView {
            status: status.state.as_str().to_owned(),
            expires_at: status.expires_at.map(|t| t.to_rfc3339()),
            last_error: status.last_error,
            next_attempt_at: status.next_attempt_at.map(|t| t.to_rfc3339()),
        }
    }
}

fn view(state: &AppState, domain: Domain) -> DomainView {
    let certificate = state.orchestrator.certificate(&domain.name);
    // Over HTTPS once the name has a certificate.
    let https = certificate.as_ref().is_some_and(|c| c.state == CertificateState::Valid);
    DomainView {
        url: state.urls.url(domain.name.as_str(), https),
        certificate: certificate.map(CertificateView::from),
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
    let project = project_for(&state, &user, &name, Role::Viewer).await?;
    let domains = state.orchestrator.domains(&project).await?;
    Ok(Json(domains.into_iter().map(|d| view(&state, d)).collect()))
}

/// Adds a custom domain; the ingress serves the project on it at once. 400 names what is
/// wrong with the name (not a host name, an IP address, a wildcard, a name under the
/// platform's app domain, a Unicode name, with the ASCII form to use); 409 when any project
/// has it already.
#[utoipa::path(post, path = "/projects/{name}/domains", tag = "domains", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)), request_body = NewDomain,
    responses((status = 201, body = DomainView), NeedsToken, ParamErrors, JsonBodyErrors, ErrorStatus<403>, ErrorStatus<404>, ErrorStatus<409>))]
pub async fn add(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
    JsonBody(body): JsonBody<NewDomain>,
) -> ApiResult<(StatusCode, Json<DomainView>)> {
    let project = project_for(&state, &user, &name, Role::Developer).await?;
    let domain = state.orchestrator.add_domain(&project, &body.domain).await?;
    state.audit(audit::by(&user, AuditAction::DomainAdded).on(&project).detail(domain.name.to_string())).await;
    Ok((StatusCode::CREATED, Json(view(&state, domain))))
}

/// Removes a custom domain of the project; the ingress answers 404 on it at once.
#[utoipa::path(delete, path = "/projects/{name}/domains/{domain}", tag = "domains", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path), ("domain" = DomainNameSchema, Path)),
    responses((status = 204, description = "removed"), NeedsToken, ParamErrors, ErrorStatus<403>, ErrorStatus<404>))]
pub async fn remove(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam((name, domain)): PathParam<(String, String)>,
) -> ApiResult<StatusCode> {
    let project = project_for(&state, &user, &name, Role::Developer).await?;
    state.orchestrator.remove_domain(&project, &domain).await?;
    state.audit(audit::by(&user, AuditAction::DomainRemoved).on(&project).detail(domain)).await;
    Ok(StatusCode::NO_CONTENT)
}
