//! `/v1/workspaces` and a workspace's own routes: listing, creating, forking, renaming,
//! quotas and template mode, diffs, and deleting one or many.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use chaserfs_service::error::ApiError;
use chaserfs_service::model::*;
use chaserfs_service::service::Service;

use crate::extract::{blocking, path_error, query_error, Account, HttpError, JsonBody};

#[derive(Serialize, Deserialize, ToSchema)]
pub struct WorkspaceList {
    pub workspaces: Vec<WorkspaceView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct WorkspaceForks {
    /// The clones, in name order.
    pub workspaces: Vec<WorkspaceView>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct BulkDeleteResponse {
    /// One per selector, in order.
    pub results: Vec<BulkDeleteResult>,
    pub deleted: usize,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// End an active session first (commit, unmount) instead of answering 409.
    force: Option<bool>,
}
/// List the account's workspaces, oldest first, a page at a time.
#[utoipa::path(get, path = "/v1/workspaces", params(ListQuery), responses(
    (status = 200, body = WorkspaceList),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse)))]
pub(crate) async fn list_workspaces(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<WorkspaceList>, HttpError> {
    let Query(q) = q.map_err(query_error)?;
    let (workspaces, next_cursor) = blocking(move || svc.list_workspaces(&a, &q)).await?;
    Ok(Json(WorkspaceList {
        workspaces,
        next_cursor,
    }))
}

/// Create a workspace: fresh (`session_type`) or cloned (`clone_from`, refused while the
/// source has an active session).
#[utoipa::path(post, path = "/v1/workspaces", request_body = CreateWorkspace, responses(
    (status = 201, body = WorkspaceView),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 403, body = ErrorResponse, description = "beyond what the operator allows the account"),
    (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse),
    (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse)))]
pub(crate) async fn create_workspace(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    JsonBody(req): JsonBody<CreateWorkspace>,
) -> Result<(StatusCode, Json<WorkspaceView>), HttpError> {
    let rec = blocking(move || svc.create_workspace(&a, req)).await?;
    Ok((StatusCode::CREATED, Json(rec)))
}

/// Fork N: `count` clones of the workspace (1 to 100) made in one write, all or none, named
/// PREFIX-1, PREFIX-2, ... with the lowest numbers free. Refused while the workspace has an
/// active session. Each clone is O(1), whatever the workspace's size.
#[utoipa::path(post, path = "/v1/workspaces/{workspace}/clone",
    params(("workspace" = String, Path, description = "name or id")),
    request_body = Option<ForkWorkspace>, responses(
    (status = 201, body = WorkspaceForks),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 403, body = ErrorResponse, description = "beyond what the operator allows the account"),
    (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse),
    (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse)))]
pub(crate) async fn fork_workspace(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    p: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<Option<ForkWorkspace>>,
) -> Result<(StatusCode, Json<WorkspaceForks>), HttpError> {
    let Path(ws) = p.map_err(path_error)?;
    let workspaces = blocking(move || svc.fork_workspace(&a, &ws, req.unwrap_or_default())).await?;
    Ok((StatusCode::CREATED, Json(WorkspaceForks { workspaces })))
}

/// What changed between two committed states of the workspace (`from`, `to`: snapshots or
/// `current`): paths added, removed and modified, in path order. Subtrees both states share
/// are skipped unread, so the cost follows the size of the change.
#[utoipa::path(get, path = "/v1/workspaces/{workspace}/diff",
    params(("workspace" = String, Path, description = "name or id"), DiffQuery), responses(
    (status = 200, body = WorkspaceDiff),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
pub(crate) async fn diff_workspace(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<DiffQuery>, QueryRejection>,
) -> Result<Json<WorkspaceDiff>, HttpError> {
    let Path(ws) = p.map_err(path_error)?;
    let Query(q) = q.map_err(query_error)?;
    Ok(Json(blocking(move || svc.diff(&a, &ws, &q)).await?))
}

/// Delete many workspaces; each is deleted wholly or not at all, with a result per selector.
#[utoipa::path(post, path = "/v1/workspaces/bulk-delete", request_body = BulkDelete, responses(
    (status = 200, body = BulkDeleteResponse),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse)))]
pub(crate) async fn bulk_delete(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    JsonBody(req): JsonBody<BulkDelete>,
) -> Result<Json<BulkDeleteResponse>, HttpError> {
    let results = blocking(move || svc.bulk_delete(&a, req)).await?;
    let deleted = results
        .iter()
        .filter(|r| r.status == DeleteOutcome::Deleted)
        .count();
    Ok(Json(BulkDeleteResponse { results, deleted }))
}

/// Get a workspace by name or id.
#[utoipa::path(get, path = "/v1/workspaces/{workspace}",
    params(("workspace" = String, Path, description = "name or id")), responses(
    (status = 200, body = WorkspaceView),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
pub(crate) async fn get_workspace(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    sel: Result<Path<String>, PathRejection>,
) -> Result<Json<WorkspaceView>, HttpError> {
    let Path(sel) = sel.map_err(path_error)?;
    Ok(Json(blocking(move || svc.get_workspace(&a, &sel)).await?))
}

/// Delete a workspace and its snapshots. With `force=true` an active session is ended first.
#[utoipa::path(delete, path = "/v1/workspaces/{workspace}",
    params(("workspace" = String, Path, description = "name or id"), DeleteQuery), responses(
    (status = 204, description = "deleted"),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
pub(crate) async fn delete_workspace(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    sel: Result<Path<String>, PathRejection>,
    q: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<StatusCode, HttpError> {
    let Path(sel) = sel.map_err(path_error)?;
    let Query(q) = q.map_err(query_error)?;
    let force = q.force.unwrap_or(false);
    blocking(move || svc.delete_workspace(&a, &sel, force)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Set (a string) or clear (`null`) a workspace's name.
#[utoipa::path(put, path = "/v1/workspaces/{workspace}/name", request_body = SetName,
    params(("workspace" = String, Path, description = "name or id")), responses(
    (status = 200, body = WorkspaceView),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse),
    (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse)))]
pub(crate) async fn set_name(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    sel: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<SetName>,
) -> Result<Json<WorkspaceView>, HttpError> {
    let Path(sel) = sel.map_err(path_error)?;
    let name = req.name.ok_or_else(|| {
        ApiError::bad(
            "invalid_body",
            "name is required: a string sets it, null clears it",
        )
    })?;
    Ok(Json(blocking(move || svc.rename(&a, &sel, name)).await?))
}

/// Warm a workspace on this host ahead of a session (cluster mode): fetch its committed tree
/// (its whole namespace) and its most recently modified files' chunks, up to half the host's
/// object cache. Returns when they are here; a session started next reads them locally. A
/// single host holds everything already (`cluster: false`, nothing fetched). Warm-ups take
/// turns on a host, first come first served, one of each account at a time.
#[utoipa::path(post, path = "/v1/workspaces/{workspace}/warm",
    params(("workspace" = String, Path, description = "name or id")), responses(
    (status = 200, body = WarmView),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 404, body = ErrorResponse),
    (status = 503, body = ErrorResponse,
        description = "a warm-up of this account waits or runs on this host, or this one \
            waited 60 s for its turn")))]
pub(crate) async fn warm_workspace(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    sel: Result<Path<String>, PathRejection>,
) -> Result<Json<WarmView>, HttpError> {
    let Path(sel) = sel.map_err(path_error)?;
    Ok(Json(blocking(move || svc.warm_workspace(&a, &sel)).await?))
}

/// Turn template mode on or off.
#[utoipa::path(put, path = "/v1/workspaces/{workspace}/template", request_body = SetTemplate,
    params(("workspace" = String, Path, description = "name or id")), responses(
    (status = 200, body = WorkspaceView),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse),
    (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse)))]
pub(crate) async fn set_template(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    sel: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<SetTemplate>,
) -> Result<Json<WorkspaceView>, HttpError> {
    let Path(sel) = sel.map_err(path_error)?;
    Ok(Json(
        blocking(move || svc.set_template(&a, &sel, req.template)).await?,
    ))
}

/// Set a workspace's quota: most logical bytes and most inodes (`null` or absent: no limit).
/// Sessions enforce it at once (EDQUOT); contents already over it stay.
#[utoipa::path(put, path = "/v1/workspaces/{workspace}/quota", request_body = Quota,
    params(("workspace" = String, Path, description = "name or id")), responses(
    (status = 200, body = WorkspaceView),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 403, body = ErrorResponse, description = "above the operator's ceiling"),
    (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse),
    (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse)))]
pub(crate) async fn set_quota(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    sel: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<Quota>,
) -> Result<Json<WorkspaceView>, HttpError> {
    let Path(sel) = sel.map_err(path_error)?;
    Ok(Json(blocking(move || svc.set_quota(&a, &sel, req)).await?))
}
