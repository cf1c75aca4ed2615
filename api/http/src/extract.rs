//! What every handler shares: the caller's account from its bearer key, JSON bodies, path
//! and query errors in the API's shape, service errors as responses (the one place that maps
//! an error's kind to a status), and running the service's blocking calls off the async
//! workers.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;

use chaserfs_service::error::{ApiError, ErrorKind};
use chaserfs_service::model::{ErrorBody, ErrorResponse};
use chaserfs_service::service::Service;

/// Request bodies larger than this answer 413.
pub const BODY_LIMIT: usize = 64 * 1024;

/// A service error as an HTTP response: its kind gives the status, and the body is the API's
/// error shape.
pub struct HttpError(pub ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError(e)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let HttpError(e) = self;
        let status = match e.kind {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        };
        let body = ErrorResponse {
            error: ErrorBody {
                code: e.code.to_string(),
                message: e.message,
            },
        };
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// The caller's account, from `Authorization: Bearer KEY`.
pub struct Account(pub String);

impl FromRequestParts<Arc<Service>> for Account {
    type Rejection = HttpError;
    async fn from_request_parts(parts: &mut Parts, svc: &Arc<Service>) -> Result<Self, HttpError> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let key = match value.split_once(' ') {
            Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") => key.trim(),
            _ => "",
        };
        Ok(Account(svc.authenticate(key)?))
    }
}

/// A JSON request body with errors in the API's shape. An empty body reads as `null`, so
/// `JsonBody<Option<T>>` makes a body optional. A body with a Content-Type other than
/// JSON answers 415; one without a Content-Type is read as JSON.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = HttpError;
    async fn from_request(req: Request, state: &S) -> Result<Self, HttpError> {
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| {
                let media = v.to_str().unwrap_or("").split(';').next().unwrap_or("");
                let media = media.trim().to_ascii_lowercase();
                media == "application/json" || media.ends_with("+json")
            })
            .unwrap_or(true);
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    ErrorKind::PayloadTooLarge,
                    "body_too_large",
                    format!("request bodies are at most {BODY_LIMIT} bytes"),
                )
            } else {
                ApiError::bad("invalid_body", e.body_text())
            }
        })?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"null"
        } else if !json_type {
            return Err(HttpError(ApiError::new(
                ErrorKind::UnsupportedMediaType,
                "unsupported_media_type",
                "request bodies are JSON (Content-Type: application/json)",
            )));
        } else {
            &bytes
        };
        // Syntax first, then shape: serde reads some wrong types as syntax errors.
        let value: serde_json::Value = serde_json::from_slice(text)
            .map_err(|e| ApiError::bad("invalid_json", format!("malformed JSON: {e}")))?;
        // Only objects: serde would also read a struct from an array of its fields.
        if !(value.is_object() || value.is_null()) {
            return Err(HttpError(ApiError::bad(
                "invalid_body",
                "the body must be a JSON object",
            )));
        }
        if value.is_null() && text == b"null" && bytes.iter().all(u8::is_ascii_whitespace) {
            return T::deserialize(value).map(JsonBody).map_err(|_| {
                ApiError::bad("invalid_body", "a JSON object body is required").into()
            });
        }
        T::deserialize(value)
            .map(JsonBody)
            .map_err(|e| ApiError::bad("invalid_body", e.to_string()).into())
    }
}

pub(crate) fn query_error(e: QueryRejection) -> ApiError {
    ApiError::bad("invalid_query", e.body_text())
}

pub(crate) fn path_error(e: PathRejection) -> ApiError {
    ApiError::bad("invalid_path", e.body_text())
}

/// Runs a blocking service call off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(e.to_string())))
}
