//! A project's HTTPS policy: the redirect from plain HTTP, and HSTS.

use axum::Json;
use axum::extract::State;
use paastech_core::AuditAction;
use paastech_core::Role;
use paastech_core::https::MAX_HSTS_MAX_AGE;
use paastech_core::{HttpsChange, HttpsPolicy};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use super::extract::{JsonBodyErrors, NeedsToken, ParamErrors};
use super::projects::project_for;
use super::schemas::ProjectNameSchema;
use super::{JsonBody, PathParam};
use crate::AppState;
use crate::audit;
use crate::auth::CurrentUser;
use crate::error::{ApiResult, ErrorStatus};

#[derive(Serialize, ToSchema)]
pub struct HttpsView {
    /// Plain HTTP to the project's names answers 301 (308 for methods other than GET and
    /// HEAD) to the same URL over HTTPS, for each name the server holds a certificate for.
    pub redirect: bool,
    /// HTTPS answers carry `Strict-Transport-Security: max-age=N`; null: no HSTS.
    #[schema(minimum = 0, maximum = 63072000)]
    pub hsts_max_age: Option<u32>,
}

impl From<HttpsPolicy> for HttpsView {
    fn from(policy: HttpsPolicy) -> Self {
        HttpsView { redirect: policy.redirect, hsts_max_age: policy.hsts_max_age }
    }
}

/// A change to the policy: a field left out stays as it is.
#[derive(Deserialize, ToSchema)]
pub struct HttpsPatch {
    /// Turns the redirect to HTTPS on or off.
    #[serde(default, deserialize_with = "given")]
    #[schema(value_type = bool)]
    pub redirect: Option<bool>,
    /// Seconds, 0 to 63072000 (two years); null turns HSTS off. 0 tells browsers to forget
    /// an earlier max-age.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>, minimum = 0, maximum = 63072000)]
    pub hsts_max_age: Option<Option<i64>>,
}

/// A field that may be left out but, when given, is a boolean (`null` is refused).
fn given<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    bool::deserialize(d).map(Some)
}

/// A field that is present, `null` included: `Some(None)` for `null`, while a missing
/// field stays `None` (by `#[serde(default)]`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    Option::<i64>::deserialize(d).map(Some)
}

impl HttpsPatch {
    fn change(&self) -> paastech_core::Result<HttpsChange> {
        let hsts_max_age = match self.hsts_max_age {
            None => None,
            Some(None) => Some(None),
            Some(Some(seconds)) => Some(Some(HttpsPolicy::parse_hsts_max_age(seconds).map_err(|_| {
                paastech_core::Error::Invalid(format!(
                    "hsts_max_age={seconds}: use 0 to {MAX_HSTS_MAX_AGE} seconds (two years), or null to turn HSTS off"
                ))
            })?)),
        };
        Ok(HttpsChange { redirect: self.redirect, hsts_max_age })
    }
}

/// The project's HTTPS policy.
#[utoipa::path(get, path = "/projects/{name}/https", tag = "domains", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)),
    responses((status = 200, body = HttpsView), NeedsToken, ParamErrors, ErrorStatus<404>))]
pub async fn get(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
) -> ApiResult<Json<HttpsView>> {
    let project = project_for(&state, &user, &name, Role::Viewer).await?;
    Ok(Json(state.orchestrator.https(&project).await?.into()))
}

/// Changes the project's HTTPS policy; the ingress applies it to the next request. 400
/// names a field out of range (nothing changes then).
#[utoipa::path(patch, path = "/projects/{name}/https", tag = "domains", security(("bearer" = [])),
    params(("name" = ProjectNameSchema, Path)), request_body = HttpsPatch,
    responses((status = 200, body = HttpsView), NeedsToken, ParamErrors, JsonBodyErrors, ErrorStatus<403>, ErrorStatus<404>))]
pub async fn patch(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    PathParam(name): PathParam<String>,
    JsonBody(body): JsonBody<HttpsPatch>,
) -> ApiResult<Json<HttpsView>> {
    let project = project_for(&state, &user, &name, Role::Developer).await?;
    let change = body.change()?;
    let policy = state.orchestrator.set_https(&project, change).await?;
    state.audit(audit::by(&user, AuditAction::HttpsChanged).on(&project).detail(https_detail(&policy))).await;
    Ok(Json(policy.into()))
}

/// An HTTPS policy change's detail: `redirect on, hsts off`.
pub(crate) fn https_detail(policy: &HttpsPolicy) -> String {
    let redirect = if policy.redirect { "on" } else { "off" };
    match policy.hsts_max_age {
        Some(max_age) => format!("redirect {redirect}, hsts max-age {max_age}"),
        None => format!("redirect {redirect}, hsts off"),
    }
}
