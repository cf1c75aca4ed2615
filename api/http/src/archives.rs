//! Archives streamed both ways: a workspace's committed state out as tar or tar.zst, and an
//! upload in as a new workspace (the same route takes a GitHub import's JSON body). Bodies
//! are streamed, never buffered, and a client that stalls is cut off.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use chaserfs_service::archive;
use chaserfs_service::error::ApiError;
use chaserfs_service::model::*;
use chaserfs_service::service::Service;

use crate::extract::{blocking, path_error, query_error, Account, HttpError, JsonBody};

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

/// Stream a tar (or tar.zst) of the workspace's last commit or of a snapshot.
#[utoipa::path(get, path = "/v1/workspaces/{workspace}/archive",
    params(("workspace" = String, Path, description = "name or id"), ArchiveQuery),
    responses(
    (status = 200, description = "the archive, streamed",
        content(("application/x-tar"), ("application/zstd"))),
    (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse),
    (status = 429, body = ErrorResponse, description = "too many archive streams running")))]
pub(crate) async fn workspace_archive(
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
pub(crate) async fn import_workspace(
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
