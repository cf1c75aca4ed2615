//! What a host answers without a key: liveness, readiness (whether the store takes writes)
//! and its Prometheus metrics.

use std::sync::{Arc, LazyLock};
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use chaserfs_service::error::{ApiError, ErrorKind};
use chaserfs_service::model::ErrorResponse;
use chaserfs_service::service::Service;

use crate::extract::HttpError;
use crate::metrics;

/// When this process started serving (set as the router is built).
pub(crate) static STARTED: LazyLock<Instant> = LazyLock::new(Instant::now);

/// What `/healthz` answers: alive, which build, for how long.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`: any answer means the API is up (`/readyz` says whether writes are taken).
    pub status: &'static str,
    /// The daemon's version.
    pub version: &'static str,
    /// Seconds since this process started serving (a takeover's successor counts anew).
    pub uptime_seconds: u64,
}

/// Alive: the API is listening; with the daemon's version and uptime.
#[utoipa::path(get, path = "/healthz", security(()),
    responses((status = 200, description = "alive", body = Health)))]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: STARTED.elapsed().as_secs(),
    })
}

/// Ready: the store takes writes, and, in a cluster, this host reaches etcd (its lease is
/// live) and the object store (its last call succeeded). Otherwise 503 with a code:
/// `store_unhealthy` after a failed write (descriptors or the disk ran out, a write the disk
/// refused) until the store has healed, in the background, with every session still
/// mounted; `cluster_unreachable` while etcd or the object store cannot be reached (an
/// unreachable object store is listed every 5 s until it answers). A stopping daemon stops
/// accepting connections at once.
#[utoipa::path(get, path = "/readyz", security(()), responses(
    (status = 200, description = "ready", body = String, content_type = "text/plain"),
    (status = 503, description = "not ready: store_unhealthy or cluster_unreachable",
     body = ErrorResponse)))]
pub(crate) async fn readyz(State(svc): State<Arc<Service>>) -> Response {
    match svc.unready() {
        None => "ready".into_response(),
        Some((code, why)) => {
            HttpError(ApiError::new(ErrorKind::Unavailable, code, why)).into_response()
        }
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
pub(crate) async fn metrics_text(State(svc): State<Arc<Service>>) -> Response {
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
