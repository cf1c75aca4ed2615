//! `GET /metrics` in Prometheus text format: the HTTP layer's own metrics (requests by route
//! template), the service's and the engine's. Labels name routes as templates
//! (`/v1/workspaces/{workspace}`), never a workspace, snapshot or session, so the endpoint
//! needs no key and reveals nothing across accounts.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use chaserfs_service::metrics::{millis, publish_cache, publish_gauges};
use chaserfs_service::service::Service;
use metrics::{describe_counter, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "chaserfs_http_requests_total";
pub const HTTP_SECONDS: &str = "chaserfs_http_request_duration_seconds";
pub const BUILD_INFO: &str = "chaserfs_build_info";
pub const START_TIME: &str = "chaserfs_start_time_seconds";

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
    chaserfs_engine::metrics::describe();
    chaserfs_fuse::metrics::describe();
    chaserfs_service::metrics::describe();
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
    metrics::describe_gauge!(PROCESS_RSS, Unit::Bytes, "The daemon's resident memory");
    metrics::describe_gauge!(PROCESS_FDS, "Descriptors the daemon has open");
    describe_counter!(
        PROCESS_CPU,
        Unit::Seconds,
        "CPU time the daemon has used, user and system (whole seconds)"
    );
    metrics::describe_gauge!(BUILD_INFO, "Always 1; its `version` label is the daemon's");
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::describe_gauge!(
        START_TIME,
        Unit::Seconds,
        "When this process started, in seconds since the Unix epoch (a takeover restarts it)"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!(START_TIME).set(now);
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

/// The text `GET /metrics` answers: the scrape-time gauges read from `svc`, then every
/// metric rendered. `None` if this process installed no recorder.
pub fn render(svc: &Service) -> Option<String> {
    let handle = HANDLE.get()?;
    publish_gauges(svc.counts(), || svc.gauges());
    if let Some(cache) = svc.cache_stats() {
        publish_cache(cache);
    }
    publish_process();
    Some(handle.render())
}

pub const PROCESS_RSS: &str = "process_resident_memory_bytes";
pub const PROCESS_FDS: &str = "process_open_fds";
pub const PROCESS_CPU: &str = "process_cpu_seconds_total";

/// The daemon process's memory, descriptors and CPU time, read from /proc at each scrape
/// (under the names Prometheus's own clients use).
fn publish_process() {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
        if let Some(kib) = rss_kib {
            metrics::gauge!(PROCESS_RSS).set((kib * 1024) as f64);
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!(PROCESS_FDS).set(fds.count() as f64);
    }
    // utime and stime, fields 14 and 15, in USER_HZ ticks (100 a second on Linux, whatever
    // the kernel's own tick); the command name before them may hold spaces, so count from ')'.
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        let after_name = stat.rsplit(')').next().unwrap_or_default();
        let ticks: u64 = after_name
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|t| t.parse::<u64>().ok())
            .sum();
        metrics::counter!(PROCESS_CPU).absolute(ticks / 100);
    }
}
