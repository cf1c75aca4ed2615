//! The HTTP layer: axum routes, bearer-key auth, JSON bodies and errors over [`Service`], and
//! the OpenAPI document generated from the same handlers. Only this file knows status codes.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use chaserfs_service::archive;
use chaserfs_service::model::*;
use chaserfs_service::service::{ApiError, DiffQuery, ErrorKind, ListQuery, Service, SessionQuery};

pub mod listener;
pub mod metrics;

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

fn query_error(e: QueryRejection) -> ApiError {
    ApiError::bad("invalid_query", e.body_text())
}

fn path_error(e: PathRejection) -> ApiError {
    ApiError::bad("invalid_path", e.body_text())
}

/// `stream`, failing with `TimedOut` once it yields nothing for `limit`.
fn stalls_fail<S>(
    stream: S,
    limit: std::time::Duration,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send
where
    S: futures_util::Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
{
    futures_util::stream::unfold(Some(stream), move |s| async move {
        let mut s = s?;
        use futures_util::StreamExt;
        match tokio::time::timeout(limit, s.next()).await {
            Ok(Some(item)) => Some((item, Some(s))),
            Ok(None) => None,
            Err(_) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the client sent nothing for {} s", limit.as_secs()),
                )),
                None,
            )),
        }
    })
}

/// Runs a blocking service call off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(e.to_string())))
}

pub fn router(svc: Arc<Service>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/openapi.json", get(openapi_json))
        .route(
            "/v1/workspaces",
            get(list_workspaces).post(create_workspace),
        )
        .route("/v1/workspaces/import", post(import_workspace))
        .route("/v1/workspaces/bulk-delete", post(bulk_delete))
        .route(
            "/v1/workspaces/{workspace}",
            get(get_workspace).delete(delete_workspace),
        )
        .route("/v1/workspaces/{workspace}/clone", post(fork_workspace))
        .route("/v1/workspaces/{workspace}/diff", get(diff_workspace))
        .route("/v1/workspaces/{workspace}/archive", get(workspace_archive))
        .route("/v1/workspaces/{workspace}/name", put(set_name))
        .route("/v1/workspaces/{workspace}/template", put(set_template))
        .route("/v1/workspaces/{workspace}/quota", put(set_quota))
        .route(
            "/v1/workspaces/{workspace}/snapshots",
            get(list_snapshots).post(create_snapshot),
        )
        .route(
            "/v1/workspaces/{workspace}/snapshots/{snapshot}",
            axum::routing::delete(delete_snapshot),
        )
        .route(
            "/v1/workspaces/{workspace}/snapshots/{snapshot}/restore",
            post(restore_snapshot),
        )
        .route("/v1/sessions", get(list_sessions).post(start_session))
        .route("/v1/sessions/{id}", get(get_session).delete(end_session))
        .fallback(|| async {
            HttpError(ApiError::new(
                ErrorKind::NotFound,
                "route_not_found",
                "no such endpoint",
            ))
        })
        .method_not_allowed_fallback(|| async {
            HttpError(ApiError::new(
                ErrorKind::MethodNotAllowed,
                "method_not_allowed",
                "this endpoint does not take that method",
            ))
        })
        .route_layer(axum::middleware::from_fn(metrics::tag_route))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(metrics::track))
        .with_state(svc)
}

/// `GET /metrics` alone: merged into [`router`]'s routes, or served on `--metrics-listen`.
pub fn metrics_router(svc: Arc<Service>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .with_state(svc)
}

// ---- OpenAPI ----

#[derive(OpenApi)]
#[openapi(
    info(
        title = "chaserfs Workspaces API",
        description = "Persistent copy-on-write workspaces for agent sandboxes: create, clone, \
                       snapshot, restore and delete in O(1), and mount them in sessions."
    ),
    paths(
        healthz,
        readyz,
        metrics_text,
        openapi_json,
        list_workspaces,
        create_workspace,
        import_workspace,
        bulk_delete,
        get_workspace,
        delete_workspace,
        fork_workspace,
        diff_workspace,
        workspace_archive,
        set_name,
        set_template,
        set_quota,
        list_snapshots,
        create_snapshot,
        delete_snapshot,
        restore_snapshot,
        list_sessions,
        start_session,
        get_session,
        end_session,
    ),
    components(schemas(ErrorResponse, ErrorBody, ArchiveFormat)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

/// Alive: the API is listening.
#[utoipa::path(get, path = "/healthz", security(()),
    responses((status = 200, description = "alive", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok"
}

/// Ready: the store takes writes. After a failed write (descriptors or the disk ran out, a
/// write the disk refused) it answers 503 `store_unhealthy` until the store has healed, in
/// the background, with every session still mounted.
#[utoipa::path(get, path = "/readyz", security(()), responses(
    (status = 200, description = "ready", body = String, content_type = "text/plain"),
    (status = 503, description = "the store does not take writes now", body = ErrorResponse)))]
async fn readyz(State(svc): State<Arc<Service>>) -> Response {
    match svc.store_failure() {
        None => "ready".into_response(),
        Some(why) => HttpError(ApiError::new(
            ErrorKind::Unavailable,
            "store_unhealthy",
            format!("the store does not take writes ({why}); it heals once the cause has passed"),
        ))
        .into_response(),
    }
}

/// Prometheus metrics of this host: FUSE requests, commits, fsyncs, chunks, store size,
/// collections, sessions, API requests, imports. No key needed: no label names a workspace,
/// snapshot or session. Served on `--metrics-listen` instead when that is given.
#[utoipa::path(get, path = "/metrics", security(()), responses(
    (status = 200, description = "Prometheus text format", body = String,
     content_type = "text/plain"),
    (status = 404, description = "metrics are not enabled in this process", body = String,
     content_type = "text/plain")))]
async fn metrics_text(State(svc): State<Arc<Service>>) -> Response {
    match tokio::task::spawn_blocking(move || metrics::render(&svc)).await {
        Ok(Some(text)) => {
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
        }
        _ => (
            StatusCode::NOT_FOUND,
            "metrics are not enabled in this process\n",
        )
            .into_response(),
    }
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", security(()),
    responses((status = 200, description = "the OpenAPI document", body = Object)))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

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
pub struct SnapshotList {
    pub snapshots: Vec<SnapshotRecord>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
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

// ---- workspaces ----

/// List the account's workspaces, oldest first, a page at a time.
#[utoipa::path(get, path = "/v1/workspaces", params(ListQuery), responses(
    (status = 200, body = WorkspaceList),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse)))]
async fn list_workspaces(
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
async fn create_workspace(
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
async fn fork_workspace(
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
async fn diff_workspace(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<DiffQuery>, QueryRejection>,
) -> Result<Json<WorkspaceDiff>, HttpError> {
    let Path(ws) = p.map_err(path_error)?;
    let Query(q) = q.map_err(query_error)?;
    Ok(Json(blocking(move || svc.diff(&a, &ws, &q)).await?))
}

/// Stream a tar (or tar.zst) of the workspace's last commit or of a snapshot.
#[utoipa::path(get, path = "/v1/workspaces/{workspace}/archive",
    params(("workspace" = String, Path, description = "name or id"), ArchiveQuery),
    responses(
    (status = 200, description = "the archive, streamed",
        content(("application/x-tar"), ("application/zstd"))),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse),
    (status = 429, body = ErrorResponse, description = "too many archive streams running")))]
async fn workspace_archive(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<ArchiveQuery>, QueryRejection>,
) -> Result<Response, HttpError> {
    let Path(ws) = p.map_err(path_error)?;
    let Query(q) = q.map_err(query_error)?;
    let zst = q.format == Some(ArchiveFormat::TarZst);
    let slot = svc.stream_slot(&a)?;
    let src = blocking(move || svc.archive_source(&a, &ws, q.snapshot.as_deref())).await?;
    let file: String = src
        .name
        .chars()
        .map(|c| match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '.' | '-' | '_' => c,
            _ => '_',
        })
        .collect();
    let (media, file) = if zst {
        ("application/zstd", format!("{file}.tar.zst"))
    } else {
        ("application/x-tar", format!("{file}.tar"))
    };
    let (tx, rx) = tokio::sync::mpsc::channel(archive::QUEUE);
    tokio::task::spawn_blocking(move || {
        archive::write_archive(&src, archive::BodyWriter::new(tx), zst);
        drop(slot);
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|piece| (piece, rx))
    });
    let disposition = format!("attachment; filename=\"{file}\"");
    Ok((
        [
            (header::CONTENT_TYPE, media.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

/// Import a GitHub repository (a JSON body): answers at once with the workspace
/// `importing`; it turns `ready` once cloned, or `failed` with `import_error`. Or import a
/// tar archive (a `application/x-tar` body, or `application/zstd` for tar.zst; the new
/// workspace's fields in the query): answers 201 once the workspace is ready.
#[utoipa::path(post, path = "/v1/workspaces/import", params(ArchiveImport),
    request_body(content((ImportWorkspace = "application/json"), ("application/x-tar"), ("application/zstd"))),
    responses(
    (status = 201, body = WorkspaceView, description = "a tar archive, imported"),
    (status = 202, body = WorkspaceView, description = "a GitHub import, started"),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 403, body = ErrorResponse, description = "beyond what the operator allows the account, or the quota"),
    (status = 409, body = ErrorResponse),
    (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse),
    (status = 429, body = ErrorResponse, description = "too many archive streams running"),
    (status = 507, body = ErrorResponse)))]
async fn import_workspace(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    q: Result<Query<ArchiveImport>, QueryRejection>,
    req: Request,
) -> Result<(StatusCode, Json<WorkspaceView>), HttpError> {
    let media = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let zst = match media.as_str() {
        "application/x-tar" | "application/tar" => false,
        "application/zstd" | "application/x-zstd" => true,
        _ => {
            // The query is for tar uploads; a GitHub import's fields are in its body.
            let Query(q) = q.map_err(query_error)?;
            if q.name.is_some() || q.session_type.is_some() || q.image.is_some() || q.template {
                return Err(HttpError(ApiError::bad(
                    "invalid_query",
                    "query parameters describe a tar upload; a GitHub import's fields go in \
                     its JSON body",
                )));
            }
            let JsonBody(body) = JsonBody::<ImportWorkspace>::from_request(req, &svc).await?;
            let rec = blocking(move || svc.import_workspace(&a, body)).await?;
            return Ok((StatusCode::ACCEPTED, Json(rec)));
        }
    };
    let Query(q) = q.map_err(query_error)?;
    let slot = svc.stream_slot(&a)?;
    // Streamed, not buffered: tar bodies are not held to the JSON size limit. A client
    // that sends nothing for STALL_TIMEOUT fails its import.
    use futures_util::TryStreamExt;
    let stream = req
        .into_body()
        .into_data_stream()
        .map_err(std::io::Error::other);
    let stream = Box::pin(stalls_fail(stream, archive::STALL_TIMEOUT));
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let view = blocking(move || {
        let _slot = slot;
        svc.import_archive(&a, q, reader, zst)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Delete many workspaces; each is deleted wholly or not at all, with a result per selector.
#[utoipa::path(post, path = "/v1/workspaces/bulk-delete", request_body = BulkDelete, responses(
    (status = 200, body = BulkDeleteResponse),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse)))]
async fn bulk_delete(
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
async fn get_workspace(
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
async fn delete_workspace(
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
async fn set_name(
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

/// Turn template mode on or off.
#[utoipa::path(put, path = "/v1/workspaces/{workspace}/template", request_body = SetTemplate,
    params(("workspace" = String, Path, description = "name or id")), responses(
    (status = 200, body = WorkspaceView),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse),
    (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse)))]
async fn set_template(
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
async fn set_quota(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    sel: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<Quota>,
) -> Result<Json<WorkspaceView>, HttpError> {
    let Path(sel) = sel.map_err(path_error)?;
    Ok(Json(blocking(move || svc.set_quota(&a, &sel, req)).await?))
}

// ---- snapshots ----

/// A workspace's snapshots, oldest first.
#[utoipa::path(get, path = "/v1/workspaces/{workspace}/snapshots",
    params(("workspace" = String, Path, description = "name or id")), responses(
    (status = 200, body = SnapshotList),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
async fn list_snapshots(
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
async fn create_snapshot(
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
async fn delete_snapshot(
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
async fn restore_snapshot(
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

// ---- sessions ----

/// Mount a workspace at a path (FUSE) before answering.
#[utoipa::path(post, path = "/v1/sessions", request_body = StartSession, responses(
    (status = 201, body = SessionView),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse),
    (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse),
    (status = 403, body = ErrorResponse, description = "beyond what the operator allows the account"),
    (status = 429, body = ErrorResponse, description = "the account's active sessions are at the operator's limit")))]
async fn start_session(
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
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse)))]
async fn list_sessions(
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

#[utoipa::path(get, path = "/v1/sessions/{id}",
    params(("id" = String, Path, description = "session id")), responses(
    (status = 200, body = SessionView),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 404, body = ErrorResponse)))]
async fn get_session(
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
async fn end_session(
    State(svc): State<Arc<Service>>,
    Account(a): Account,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<SessionView>, HttpError> {
    let Path(id) = id.map_err(path_error)?;
    Ok(Json(blocking(move || svc.end_session(&a, &id)).await?))
}
