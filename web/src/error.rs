//! One error type for every handler: core errors map to status codes; a 5xx logs its
//! source chain and answers a sanitized message.

use std::collections::BTreeMap;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use paastech_core::Error;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::{self, RefOr};

#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        ApiError(err)
    }
}

/// `{"error": {"code": "...", "message": "..."}}`
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: not_found, conflict, invalid, unauthorized, forbidden,
    /// rate_limited, deploy_failed, unavailable, internal, too_large,
    /// unsupported_media_type, method_not_allowed, two_factor_required (a login whose
    /// password is right but that lacks the code), too_many_connections (past
    /// `[api] max_connections`, answered by the listener before any route).
    pub code: String,
    /// What went wrong, for a person to read.
    pub message: String,
}

/// The name of the one response component every error status refers to.
pub const ERROR_RESPONSE: &str = "Error";

/// Registers [`ERROR_RESPONSE`] in the OpenAPI document: every error status of every route
/// answers this body.
impl<'r> utoipa::ToResponse<'r> for ErrorBody {
    fn response() -> (&'r str, RefOr<openapi::Response>) {
        let content = openapi::ContentBuilder::new().schema(Some(openapi::Ref::from_schema_name("ErrorBody"))).build();
        let response = openapi::ResponseBuilder::new()
            .description("an error: `error.code` says which kind, `error.message` says why")
            .content("application/json", content)
            .build();
        (ERROR_RESPONSE, response.into())
    }
}

/// One error status in a route's `responses(...)`, as a reference to the shared error
/// response with what the status means in this API: `ErrorStatus<404>`.
pub struct ErrorStatus<const CODE: u16>;

impl<const CODE: u16> utoipa::IntoResponses for ErrorStatus<CODE> {
    fn responses() -> BTreeMap<String, RefOr<openapi::Response>> {
        BTreeMap::from([(CODE.to_string(), error_response_ref(CODE))])
    }
}

/// A reference to the shared error response, described for `status`.
pub fn error_response_ref(status: u16) -> RefOr<openapi::Response> {
    let description = match status {
        400 => {
            "malformed request (JSON syntax, a parameter that does not parse) or a value the route refuses; the message says which"
        }
        401 => "no `Authorization: Bearer <token>` header, or a token that is invalid or expired",
        403 => "signed in, but not allowed to do this",
        404 => "no such thing, or not yours: another user's project answers exactly like a missing one",
        409 => "conflicts with what exists: the name or key is taken",
        413 => "request body larger than 64 KiB",
        415 => "request body not sent as `Content-Type: application/json`",
        422 => {
            "JSON that does not fit the request schema (a field missing or of the wrong type), or a deployment that failed to go live (the previous one keeps serving)"
        }
        429 => "too many failed logins for this account or address; try again in a minute",
        503 => "a backend does not answer: the database, or (for `/nodes`) the runtime",
        _ => "an error",
    };
    let mut reference = openapi::Ref::from_response_name(ERROR_RESPONSE);
    reference.description = description.to_owned();
    RefOr::Ref(reference)
}

pub fn status_of(err: &Error) -> StatusCode {
    match err {
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::Conflict(_) => StatusCode::CONFLICT,
        Error::Invalid(_) => StatusCode::BAD_REQUEST,
        Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        Error::DeployFailed(_) => StatusCode::UNPROCESSABLE_ENTITY,
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub fn error_response(status: StatusCode, code: &str, message: String) -> Response {
    let body = ErrorBody { error: ErrorDetail { code: code.to_owned(), message } };
    (status, Json(body)).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(&self.0);
        if status.is_server_error() {
            let mut chain = String::new();
            let mut source = std::error::Error::source(&self.0);
            while let Some(err) = source {
                chain.push_str(": ");
                chain.push_str(&err.to_string());
                source = err.source();
            }
            tracing::error!(error = %self.0, source = %chain, "request failed");
        }
        let mut response = error_response(status, self.0.code(), self.0.to_string());
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert("www-authenticate", axum::http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
