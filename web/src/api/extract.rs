//! Extractors that answer in the API's error shape when a request is malformed, in place
//! of axum's plain-text rejections, and the OpenAPI responses each of them can produce, so
//! a route's document lists what its extractors really answer.

use std::collections::BTreeMap;

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;
use axum::{Json, body::Bytes};
use serde::de::DeserializeOwned;
use utoipa::openapi::{RefOr, response::Response as OpenApiResponse};

use crate::error::{error_response, error_response_ref};

/// A JSON object body, as `axum::Json` reads it, but a malformed one answers in the API's
/// error shape. Every body the API takes is an object: serde would also read a struct from
/// an array of its fields (`[null, null]`), which the document does not allow.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<serde_json::Value>::from_request(req, state)
            .await
            .map_err(|rejection| json_rejection(&rejection))?;
        if !value.is_object() {
            return Err(error_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                format!("request body must be a JSON object, not {}", json_kind(&value)),
            ));
        }
        serde_path_to_error::deserialize(value).map(JsonBody).map_err(|err| {
            error_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                format!("request body does not fit this route: {err}"),
            )
        })
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The body as bytes, for a route that parses it itself; a body over the limit answers 413
/// in the API's error shape.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state).await.map(RawBody).map_err(|rejection| bytes_rejection(&rejection))
    }
}

/// `axum::extract::Path`, but a segment that does not parse (`/tokens/abc`) answers 400 in
/// the API's error shape.
pub struct PathParam<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParam<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(PathParam(value)),
            Err(rejection) => Err(path_rejection(&rejection)),
        }
    }
}

/// `axum::extract::Query`, but a parameter that does not parse (`?lines=-1`) answers 400 in
/// the API's error shape.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(QueryParams(value)),
            Err(rejection) => Err(query_rejection(&rejection)),
        }
    }
}

fn json_rejection(rejection: &JsonRejection) -> Response {
    match rejection {
        JsonRejection::JsonSyntaxError(err) => error_response(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("request body is not valid JSON: {}", innermost(err)),
        ),
        JsonRejection::JsonDataError(err) => error_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("request body does not fit this route: {}", innermost(err)),
        ),
        JsonRejection::MissingJsonContentType(_) => error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the request body must be JSON, sent with Content-Type: application/json".into(),
        ),
        JsonRejection::BytesRejection(err) => bytes_rejection(err),
        // A kind added by a later axum: its own status, our shape.
        other => error_response(other.status(), "invalid", lowercase_first(&other.body_text())),
    }
}

fn bytes_rejection(rejection: &BytesRejection) -> Response {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body too large: at most {} bytes", crate::MAX_BODY_BYTES),
        );
    }
    error_response(rejection.status(), "invalid", format!("reading the request body: {}", innermost(rejection)))
}

fn path_rejection(rejection: &PathRejection) -> Response {
    let status = rejection.status();
    if status.is_server_error() {
        // The route and its extractor disagree: a bug of ours, not of the request.
        tracing::error!(error = %rejection.body_text(), "path parameters do not fit the route");
        return error_response(status, "internal", "internal error".into());
    }
    let detail = match rejection {
        PathRejection::FailedToDeserializePathParams(err) => err.kind().to_string(),
        other => other.body_text(),
    };
    error_response(status, "invalid", format!("invalid path parameter: {}", lowercase_first(&detail)))
}

fn query_rejection(rejection: &QueryRejection) -> Response {
    error_response(rejection.status(), "invalid", format!("invalid query parameter: {}", innermost(rejection)))
}

/// The most specific message in an error's chain (serde's, naming the field and why).
fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The error statuses one extractor (or a rule every route shares) can answer, for a
/// route's `responses(...)` beside its own.
fn errors(statuses: &[u16]) -> BTreeMap<String, RefOr<OpenApiResponse>> {
    statuses.iter().map(|status| (status.to_string(), error_response_ref(*status))).collect()
}

/// What a route that needs a bearer token answers without a valid one.
pub struct NeedsToken;

impl utoipa::IntoResponses for NeedsToken {
    fn responses() -> BTreeMap<String, RefOr<OpenApiResponse>> {
        errors(&[401])
    }
}

/// What [`JsonBody`] answers for a body it cannot take.
pub struct JsonBodyErrors;

impl utoipa::IntoResponses for JsonBodyErrors {
    fn responses() -> BTreeMap<String, RefOr<OpenApiResponse>> {
        errors(&[400, 413, 415, 422])
    }
}

/// What [`RawBody`] answers for a body it cannot take.
pub struct RawBodyErrors;

impl utoipa::IntoResponses for RawBodyErrors {
    fn responses() -> BTreeMap<String, RefOr<OpenApiResponse>> {
        errors(&[400, 413])
    }
}

/// What [`PathParam`] and [`QueryParams`] answer for a parameter that does not parse.
pub struct ParamErrors;

impl utoipa::IntoResponses for ParamErrors {
    fn responses() -> BTreeMap<String, RefOr<OpenApiResponse>> {
        errors(&[400])
    }
}
