//! A workspace's snapshots: listing, taking, restoring and deleting them.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use chaserfs_service::model::*;
use chaserfs_service::service::Service;

use crate::extract::{blocking, path_error, Account, HttpError, JsonBody};

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SnapshotList {
    pub snapshots: Vec<SnapshotRecord>,
}

/// A workspace's snapshots, oldest first.
#[utoipa::path(get, path = "/v1/workspaces/{workspace}/snapshots",
    params(("workspace" = String, Path, description = "name or id")), responses(
    (status = 200, body = SnapshotList),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
pub(crate) async fn list_snapshots(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    sel: Result<Path<String>, PathRejection>,
) -> Result<Json<SnapshotList>, HttpError> {
    let Path(sel) = sel.map_err(path_error)?;
    let snapshots = blocking(move || svc.list_snapshots(&a, &sel)).await?;
    Ok(Json(SnapshotList { snapshots }))
}

/// Snapshot the workspace's committed state. 409 while a session is active unless `force`.
#[utoipa::path(post, path = "/v1/workspaces/{workspace}/snapshots",
    request_body = Option<CreateSnapshot>,
    params(("workspace" = String, Path, description = "name or id")), responses(
    (status = 201, body = SnapshotRecord),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse),
    (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse)))]
pub(crate) async fn create_snapshot(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    sel: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<Option<CreateSnapshot>>,
) -> Result<(StatusCode, Json<SnapshotRecord>), HttpError> {
    let Path(sel) = sel.map_err(path_error)?;
    let req = req.unwrap_or_default();
    let snap = blocking(move || svc.create_snapshot(&a, &sel, req)).await?;
    Ok((StatusCode::CREATED, Json(snap)))
}

/// Delete a snapshot (by name or id); the workspace is unaffected.
#[utoipa::path(delete, path = "/v1/workspaces/{workspace}/snapshots/{snapshot}",
    params(("workspace" = String, Path, description = "name or id"),
           ("snapshot" = String, Path, description = "snapshot name or id")), responses(
    (status = 204, description = "deleted"),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
pub(crate) async fn delete_snapshot(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, HttpError> {
    let Path((sel, snap)) = p.map_err(path_error)?;
    blocking(move || svc.delete_snapshot(&a, &sel, &snap)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Point the workspace back at a snapshot. 409 while a session is active unless `force`.
#[utoipa::path(post, path = "/v1/workspaces/{workspace}/snapshots/{snapshot}/restore",
    request_body = Option<RestoreSnapshot>,
    params(("workspace" = String, Path, description = "name or id"),
           ("snapshot" = String, Path, description = "snapshot name or id")), responses(
    (status = 200, body = WorkspaceView),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse),
    (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse)))]
pub(crate) async fn restore_snapshot(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    p: Result<Path<(String, String)>, PathRejection>,
    JsonBody(req): JsonBody<Option<RestoreSnapshot>>,
) -> Result<Json<WorkspaceView>, HttpError> {
    let Path((sel, snap)) = p.map_err(path_error)?;
    let force = req.unwrap_or_default().force;
    Ok(Json(
        blocking(move || svc.restore_snapshot(&a, &sel, &snap, force)).await?,
    ))
}
