//! Request extractors whose every rejection is a problem document with the right code:
//! JSON bodies (content type, size limit, syntax, and which field was wrong), path parameters,
//! query strings and the `Idempotency-Key` header.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use basalt::api::{IDEMPOTENCY_KEY_HEADER, ProblemType};
use basalt::meta::is_valid_idempotency_key;
use basalt::size::Size;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::ApiError;

/// A JSON request body: `application/json` (else `unsupported-media-type`), at most
/// [`super::BODY_LIMIT_BYTES`] (else `payload-too-large`), valid for `T` (else `bad-request`,
/// or `invalid-size` / `invalid-replicas` when that field is what failed).
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(request.headers()) {
            return Err(ApiError::new(
                ProblemType::UnsupportedMediaType,
                "the request body must be application/json",
            ));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        ProblemType::PayloadTooLarge,
                        format!(
                            "the request body is larger than {} bytes",
                            super::BODY_LIMIT_BYTES
                        ),
                    )
                } else {
                    ApiError::new(ProblemType::BadRequest, rejection.body_text())
                }
            })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// `application/json`, or any `application/*+json`, with any parameters (`charset=utf-8`).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Decodes a body into `T`: a JSON object (serde would also take an array for a struct), and
/// on failure names the problem by the field that is wrong.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|error| {
        ApiError::new(
            ProblemType::BadRequest,
            format!("invalid JSON body: {error}"),
        )
    })?;
    let serde_json::Value::Object(fields) = &value else {
        return Err(ApiError::new(
            ProblemType::BadRequest,
            "the request body must be a JSON object",
        ));
    };
    T::deserialize(&value).map_err(|error| classify(fields, &error))
}

/// Sizes and replica counts have their own problem types; anything else is `bad-request`.
fn classify(
    fields: &serde_json::Map<String, serde_json::Value>,
    error: &serde_json::Error,
) -> ApiError {
    for key in ["size", "chunk_size"] {
        let Some(value) = fields.get(key) else {
            continue;
        };
        if value.is_null() && key != "size" {
            continue;
        }
        if let Err(size_error) = Size::deserialize(value) {
            return ApiError::new(ProblemType::InvalidSize, format!("{key}: {size_error}"));
        }
    }
    if let Some(value) = fields.get("replicas").filter(|value| !value.is_null())
        && u8::deserialize(value).is_err()
    {
        return ApiError::new(
            ProblemType::InvalidReplicas,
            format!("replicas: {value} is not a replica count (1..=5)"),
        );
    }
    ApiError::new(ProblemType::BadRequest, format!("invalid request: {error}"))
}

/// A path parameter; a malformed one (a node id that is not a number) is `bad-request`.
#[derive(Debug)]
pub(crate) struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| ApiPath(value))
            .map_err(|rejection| ApiError::new(ProblemType::BadRequest, rejection.body_text()))
    }
}

/// A query string; a malformed one (an unknown state, a count that is not a number, an
/// unknown parameter) is `invalid-parameter`.
#[derive(Debug)]
pub(crate) struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| ApiQuery(value))
            .map_err(|rejection| {
                ApiError::new(ProblemType::InvalidParameter, rejection.body_text())
            })
    }
}

/// The `Idempotency-Key` header, if present: 1..=255 printable ASCII characters, given once.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let invalid = || {
        ApiError::new(
            ProblemType::InvalidIdempotencyKey,
            "Idempotency-Key must be given once, as 1..=255 printable ASCII characters",
        )
    };
    let mut values = headers.get_all(IDEMPOTENCY_KEY_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid());
    }
    let key = value.to_str().map_err(|_| invalid())?;
    if !is_valid_idempotency_key(key) {
        return Err(invalid());
    }
    Ok(Some(key.to_owned()))
}
