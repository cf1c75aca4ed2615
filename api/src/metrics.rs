//! `GET /metrics` in Prometheus text format, and the service's own metrics (HTTP requests,
//! sessions, imports, collections). The engine's are in `chaserfs_fs::metrics`. Labels name
//! routes as templates (`/v1/workspaces/{workspace}`) and never a workspace, snapshot or
//! session, so the endpoint needs no key and reveals nothing across accounts.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::service::Service;

pub const HTTP_REQUESTS: &str = "chaserfs_http_requests_total";
pub const HTTP_SECONDS: &str = "chaserfs_http_request_duration_seconds";
pub const SESSIONS_ACTIVE: &str = "chaserfs_sessions_active";
pub const SESSIONS_STARTED: &str = "chaserfs_sessions_started_total";
pub const SESSIONS_ENDED: &str = "chaserfs_sessions_ended_total";
pub const SESSION_START_SECONDS: &str = "chaserfs_session_start_duration_seconds";
pub const IMPORT_SECONDS: &str = "chaserfs_import_duration_seconds";
pub const GC_SECONDS: &str = "chaserfs_gc_duration_seconds";
pub const GC_OBJECTS_FREED: &str = "chaserfs_gc_objects_freed_total";
pub const GC_BYTES_FREED: &str = "chaserfs_gc_bytes_freed_total";
pub const STORE_DISK_BYTES: &str = "chaserfs_store_disk_bytes";
pub const STORE_LOGICAL_BYTES: &str = "chaserfs_store_logical_bytes";
pub const WORKSPACES: &str = "chaserfs_workspaces";

/// Latency buckets, in seconds: FUSE requests take tens of microseconds, imports minutes.
const BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (the daemon calls it once, at start) and
/// drains its histograms every few seconds, so memory stays bounded between scrapes.
pub fn install() -> Result<(), String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    chaserfs_fs::metrics::describe();
    describe();
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(5));
            upkeep.run_upkeep();
        })
        .map_err(|e| e.to_string())?;
    let _ = HANDLE.set(handle);
    Ok(())
}

fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "API requests, by method, route template and status"
    );
    describe_histogram!(
        HTTP_SECONDS,
        Unit::Seconds,
        "API request latency, by method and route template"
    );
    describe_gauge!(SESSIONS_ACTIVE, "Sessions mounted on this host");
    describe_counter!(SESSIONS_STARTED, "Sessions started (mounted)");
    describe_counter!(SESSIONS_ENDED, "Sessions ended (committed and unmounted)");
    describe_histogram!(
        SESSION_START_SECONDS,
        Unit::Seconds,
        "From a session request to its workspace mounted"
    );
    describe_histogram!(
        IMPORT_SECONDS,
        Unit::Seconds,
        "GitHub imports, by result (ready or failed)"
    );
    describe_histogram!(
        GC_SECONDS,
        Unit::Seconds,
        "Collections of unreachable objects"
    );
    describe_counter!(
        GC_OBJECTS_FREED,
        "Objects (chunks, nodes, packs) collections deleted"
    );
    describe_counter!(
        GC_BYTES_FREED,
        Unit::Bytes,
        "Bytes collections gave back (store size before minus after)"
    );
    describe_gauge!(
        STORE_DISK_BYTES,
        Unit::Bytes,
        "Bytes of the data dir's files (in a cluster: the local cache and staging)"
    );
    describe_gauge!(
        STORE_LOGICAL_BYTES,
        Unit::Bytes,
        "Sum of every workspace's file sizes (shared data counted once per workspace)"
    );
    describe_gauge!(WORKSPACES, "Workspaces, every account");
}

/// A route layer: tags the response with the route template that served it, for [`track`].
pub async fn tag_route(path: MatchedPath, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    resp.extensions_mut().insert(path);
    resp
}

/// The outermost layer: counts and times every request, and logs one line for it.
pub async fn track(req: Request, next: Next) -> Response {
    let started = Instant::now();
    // Labels come from a closed set, so no client can add series: methods outside it are
    // `other`, and paths are route templates (or `unmatched`).
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let req_method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    let elapsed = started.elapsed();
    let route = resp
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let status = resp.status().as_u16();
    metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route.clone(),
        "status" => status.to_string())
    .increment(1);
    metrics::histogram!(HTTP_SECONDS, "method" => method, "route" => route)
        .record(elapsed.as_secs_f64());
    // The path (with names and ids) goes to the log only, which the operator alone reads.
    tracing::info!(
        target: "chaserfs::http",
        method = %req_method,
        path,
        status,
        ms = millis(elapsed),
        "request"
    );
    resp
}

/// A duration in milliseconds to 0.01 ms, for log lines.
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// One collection's figures (single host or cluster).
pub fn record_gc(took: Duration, objects: u64, bytes: u64) {
    metrics::histogram!(GC_SECONDS).record(took.as_secs_f64());
    metrics::counter!(GC_OBJECTS_FREED).increment(objects);
    metrics::counter!(GC_BYTES_FREED).increment(bytes);
}

/// The text `GET /metrics` answers: the scrape-time figures read from `svc`, then every
/// metric rendered. `None` if this process installed no recorder.
pub fn render(svc: &Service) -> Option<String> {
    let handle = HANDLE.get()?;
    // The gauges read every workspace's root: at most once per GAUGE_TTL, however often
    // (and by whomever, without a key) `/metrics` is scraped.
    static LAST: parking_lot::Mutex<Option<(Instant, Gauges)>> = parking_lot::Mutex::new(None);
    let mut last = LAST.lock();
    let g = match &*last {
        Some((at, g)) if at.elapsed() < GAUGE_TTL => *g,
        _ => {
            let g = svc.gauges();
            *last = Some((Instant::now(), g));
            g
        }
    };
    drop(last);
    let (sessions, workspaces) = svc.counts();
    metrics::gauge!(SESSIONS_ACTIVE).set(sessions as f64);
    metrics::gauge!(WORKSPACES).set(workspaces as f64);
    metrics::gauge!(STORE_LOGICAL_BYTES).set(g.logical_bytes as f64);
    metrics::gauge!(STORE_DISK_BYTES).set(g.disk_bytes as f64);
    Some(handle.render())
}

/// How long scanned gauges are served before they are read again.
const GAUGE_TTL: Duration = Duration::from_secs(10);

/// What `/metrics` reads from the service when scraped.
#[derive(Clone, Copy)]
pub struct Gauges {
    pub logical_bytes: u64,
    pub disk_bytes: u64,
}
