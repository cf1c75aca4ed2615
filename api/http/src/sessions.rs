//! `/v1/sessions`: mounting a workspace or snapshot, listing sessions, and ending one.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use chaserfs_service::model::*;
use chaserfs_service::service::Service;

use crate::extract::{blocking, path_error, query_error, Account, HttpError, JsonBody};

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Mount a workspace at a path (FUSE) before answering.
#[utoipa::path(post, path = "/v1/sessions", request_body = StartSession, responses(
    (status = 201, body = SessionView),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse),
    (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse),
    (status = 403, body = ErrorResponse, description = "beyond what the operator allows the account"),
    (status = 429, body = ErrorResponse, description = "the account's active sessions are at the operator's limit")))]
pub(crate) async fn start_session(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    JsonBody(req): JsonBody<StartSession>,
) -> Result<(StatusCode, Json<SessionView>), HttpError> {
    let rec = blocking(move || svc.start_session(&a, &req)).await?;
    Ok((StatusCode::CREATED, Json(rec)))
}

/// The account's sessions, active and ended (until `--session-retention` after their end),
/// oldest first, a page at a time.
#[utoipa::path(get, path = "/v1/sessions", params(SessionQuery), responses(
    (status = 200, body = SessionList),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 404, body = ErrorResponse, description = "`workspace` names no workspace of the account"),
    (status = 409, body = ErrorResponse, description = "`workspace` is one workspace's name and another's id")))]
pub(crate) async fn list_sessions(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    q: Result<Query<SessionQuery>, QueryRejection>,
) -> Result<Json<SessionList>, HttpError> {
    let Query(q) = q.map_err(query_error)?;
    let (sessions, next_cursor) = blocking(move || svc.list_sessions(&a, &q)).await?;
    Ok(Json(SessionList {
        sessions,
        next_cursor,
    }))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct AdminSessionList {
    pub sessions: Vec<AdminSessionView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The operator's view: every account's sessions (with their accounts), oldest first, a page at
/// a time; for an account the accounts file makes `operator = true` (or the one account
/// there is without a keys file). Which host serves what, which session holds a workspace.
#[utoipa::path(get, path = "/v1/admin/sessions", params(AdminSessionQuery), responses(
    (status = 200, body = AdminSessionList),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 403, body = ErrorResponse, description = "the account is not an operator")))]
pub(crate) async fn list_all_sessions(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    q: Result<Query<AdminSessionQuery>, QueryRejection>,
) -> Result<Json<AdminSessionList>, HttpError> {
    let Query(q) = q.map_err(query_error)?;
    let (sessions, next_cursor) = blocking(move || svc.list_all_sessions(&a, &q)).await?;
    Ok(Json(AdminSessionList {
        sessions,
        next_cursor,
    }))
}

#[utoipa::path(get, path = "/v1/sessions/{id}",
    params(("id" = String, Path, description = "session id")), responses(
    (status = 200, body = SessionView),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 404, body = ErrorResponse)))]
pub(crate) async fn get_session(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<SessionView>, HttpError> {
    let Path(id) = id.map_err(path_error)?;
    Ok(Json(blocking(move || svc.get_session(&a, &id)).await?))
}

/// End a session: unmount, commit durably, record it as the workspace's last session. If the
/// final commit fails, the session stays `commit_failed` with its changes kept (500, or 507
/// for a full disk); ending it again retries.
#[utoipa::path(delete, path = "/v1/sessions/{id}",
    params(("id" = String, Path, description = "session id")), responses(
    (status = 200, body = SessionView),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse),
    (status = 500, body = ErrorResponse), (status = 507, body = ErrorResponse)))]
pub(crate) async fn end_session(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<SessionView>, HttpError> {
    let Path(id) = id.map_err(path_error)?;
    Ok(Json(blocking(move || svc.end_session(&a, &id)).await?))
}
