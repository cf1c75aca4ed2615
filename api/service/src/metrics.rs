//! The service's metrics (sessions, imports, collections, the store), through the `metrics`
//! facade; the HTTP layer renders them at `GET /metrics` with its own and the engine's. Labels
//! never name a workspace, snapshot or session, so the endpoint reveals nothing across
//! accounts.

use std::time::{Duration, Instant};

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

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

/// Registers the help text of every service metric.
pub fn describe() {
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
    // At 0 from the start, so rates and alerts on them read 0, not "no data".
    for counter in [
        SESSIONS_STARTED,
        SESSIONS_ENDED,
        GC_OBJECTS_FREED,
        GC_BYTES_FREED,
    ] {
        metrics::counter!(counter).increment(0);
    }
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

/// Sets the gauges read at scrape time: sessions and workspaces (counted), and the store's
/// figures from `read`, which reads every workspace's root: at most once per [`GAUGE_TTL`],
/// however often (and by whomever, without a key) `/metrics` is scraped.
pub fn publish_gauges((sessions, workspaces): (usize, usize), read: impl FnOnce() -> Gauges) {
    static LAST: parking_lot::Mutex<Option<(Instant, Gauges)>> = parking_lot::Mutex::new(None);
    let mut last = LAST.lock();
    let g = match &*last {
        Some((at, g)) if at.elapsed() < GAUGE_TTL => *g,
        _ => {
            let g = read();
            *last = Some((Instant::now(), g));
            g
        }
    };
    drop(last);
    metrics::gauge!(SESSIONS_ACTIVE).set(sessions as f64);
    metrics::gauge!(WORKSPACES).set(workspaces as f64);
    metrics::gauge!(STORE_LOGICAL_BYTES).set(g.logical_bytes as f64);
    metrics::gauge!(STORE_DISK_BYTES).set(g.disk_bytes as f64);
}

/// How long scanned gauges are served before they are read again.
const GAUGE_TTL: Duration = Duration::from_secs(10);

/// What `/metrics` reads from the service when scraped.
#[derive(Clone, Copy)]
pub struct Gauges {
    pub logical_bytes: u64,
    pub disk_bytes: u64,
}
