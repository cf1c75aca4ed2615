//! The HTTP layer: axum routes, bearer-key auth, JSON bodies and errors over [`Service`], and
//! the OpenAPI document generated from the same handlers. Only this crate knows status codes.
//! Handlers live in one module per resource; this file routes them, and makes and serves the
//! document that lists them.

use std::sync::{Arc, LazyLock};

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use chaserfs_service::error::{ApiError, ErrorKind};
use chaserfs_service::model::{ArchiveFormat, ErrorBody, ErrorResponse};
use chaserfs_service::service::Service;

mod archives;
mod extract;
pub mod listener;
pub mod metrics;
mod sessions;
mod snapshots;
mod system;
mod workspaces;

pub use extract::{Account, HttpError, JsonBody, BODY_LIMIT};
pub use sessions::{AdminSessionList, SessionList};
pub use snapshots::SnapshotList;
pub use workspaces::{BulkDeleteResponse, DeleteQuery, WorkspaceForks, WorkspaceList};

// The handlers by their own names: in `paths(...)` below, a module path would become a tag
// of the document.
use archives::*;
use sessions::*;
use snapshots::*;
use system::*;
use workspaces::*;

pub fn router(svc: Arc<Service>) -> Router {
    LazyLock::force(&STARTED);
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
        .route("/v1/workspaces/{workspace}/warm", post(warm_workspace))
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
        .route("/v1/admin/sessions", get(list_all_sessions))
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
        warm_workspace,
        set_quota,
        list_snapshots,
        create_snapshot,
        delete_snapshot,
        restore_snapshot,
        list_sessions,
        start_session,
        get_session,
        end_session,
        list_all_sessions,
    ),
    components(schemas(ErrorResponse, ErrorBody, ArchiveFormat, Health)),
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

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", security(()),
    responses((status = 200, description = "the OpenAPI document", body = Object)))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
