//! The HTTP layer: axum routes, bearer-key auth and JSON errors over [`Service`].
//! Only this file knows status codes.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::service::{ApiError, CreateWorkspace, ErrorKind, Service};

/// Request bodies larger than this answer 413.
const BODY_LIMIT: usize = 64 * 1024;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self.kind {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (
            status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

fn json_error(r: JsonRejection) -> ApiError {
    let code = match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            return ApiError::new(ErrorKind::BadRequest, "body_too_large", r.body_text());
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ => "invalid_json",
    };
    ApiError::new(ErrorKind::BadRequest, code, r.body_text())
}

/// The caller's account, from `Authorization: Bearer KEY`.
pub struct Account(pub String);

impl FromRequestParts<Arc<Service>> for Account {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, svc: &Arc<Service>) -> Result<Self, ApiError> {
        let key = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        Ok(Account(svc.authenticate(key.trim())?))
    }
}

/// Runs a blocking service call off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(ApiError::new(
            ErrorKind::Internal,
            "internal_error",
            e.to_string(),
        ))
    })
}

/// A record as served: everything but the owning account.
fn view<T: serde::Serialize>(rec: &T) -> Value {
    let mut v = serde_json::to_value(rec).expect("records serialize");
    if let Some(o) = v.as_object_mut() {
        o.remove("account");
    }
    v
}

pub fn router(svc: Arc<Service>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/v1/workspaces",
            get(list_workspaces).post(create_workspace),
        )
        .route("/v1/workspaces/{workspace}", get(get_workspace))
        .route("/v1/sessions", get(list_sessions).post(start_session))
        .route("/v1/sessions/{id}", get(get_session).delete(end_session))
        .fallback(|| async {
            ApiError::new(ErrorKind::NotFound, "route_not_found", "no such endpoint")
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(svc)
}

async fn list_workspaces(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
) -> Result<Json<Value>, ApiError> {
    let list = blocking(move || svc.list_workspaces(&a)).await?;
    Ok(Json(
        json!({"workspaces": list.iter().map(view).collect::<Vec<_>>()}),
    ))
}

async fn create_workspace(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    body: Result<Json<CreateWorkspace>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(req) = body.map_err(json_error)?;
    let rec = blocking(move || svc.create_workspace(&a, req)).await?;
    Ok((StatusCode::CREATED, Json(view(&rec))))
}

async fn get_workspace(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    Path(sel): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rec = blocking(move || svc.resolve(&a, &sel)).await?;
    Ok(Json(view(&rec)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartSession {
    workspace: String,
    mountpoint: String,
}

async fn start_session(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    body: Result<Json<StartSession>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(req) = body.map_err(json_error)?;
    let rec = blocking(move || svc.start_session(&a, &req.workspace, &req.mountpoint)).await?;
    Ok((StatusCode::CREATED, Json(view(&rec))))
}

async fn list_sessions(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
) -> Result<Json<Value>, ApiError> {
    let list = blocking(move || svc.list_sessions(&a)).await?;
    Ok(Json(
        json!({"sessions": list.iter().map(view).collect::<Vec<_>>()}),
    ))
}

async fn get_session(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rec = blocking(move || svc.get_session(&a, &id)).await?;
    Ok(Json(view(&rec)))
}

async fn end_session(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rec = blocking(move || svc.end_session(&a, &id)).await?;
    Ok(Json(view(&rec)))
}
