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
pub const SESSION_END_SECONDS: &str = "chaserfs_session_end_duration_seconds";
pub const SESSION_END_FAILURES: &str = "chaserfs_session_end_failures_total";
pub const IMPORT_SECONDS: &str = "chaserfs_import_duration_seconds";
pub const GC_SECONDS: &str = "chaserfs_gc_duration_seconds";
pub const GC_OBJECTS_FREED: &str = "chaserfs_gc_objects_freed_total";
pub const GC_BYTES_FREED: &str = "chaserfs_gc_bytes_freed_total";
pub const STORE_DISK_BYTES: &str = "chaserfs_store_disk_bytes";
pub const STORE_LOGICAL_BYTES: &str = "chaserfs_store_logical_bytes";
pub const WORKSPACES: &str = "chaserfs_workspaces";
pub const WORKSPACES_NEAR_QUOTA: &str = "chaserfs_workspaces_near_quota";
pub const DISK_FREE_BYTES: &str = "chaserfs_store_disk_free_bytes";
pub const DISK_RESERVE_BYTES: &str = "chaserfs_store_disk_reserve_bytes";
pub const CACHE_BYTES: &str = "chaserfs_cluster_cache_bytes";
pub const CACHE_LIMIT_BYTES: &str = "chaserfs_cluster_cache_limit_bytes";
pub const CACHE_HITS: &str = "chaserfs_cluster_cache_hits_total";
pub const CACHE_MISSES: &str = "chaserfs_cluster_cache_misses_total";
pub const CACHE_PREFETCHED: &str = "chaserfs_cluster_cache_prefetched_total";

/// Registers the help text of every service metric.
pub fn describe() {
    describe_gauge!(SESSIONS_ACTIVE, "Sessions mounted on this host");
    describe_counter!(SESSIONS_STARTED, "Sessions started (mounted)");
    describe_counter!(
        SESSIONS_ENDED,
        "Sessions ended (committed and unmounted), by reason: request, forced (a restore or \
         delete with force), retry (after a failed final commit), shutdown, host_lost"
    );
    describe_histogram!(
        SESSION_END_SECONDS,
        Unit::Seconds,
        "From a session's end to its unmount, final commit and record"
    );
    describe_counter!(
        SESSION_END_FAILURES,
        "Attempts at a final commit of an ending session that failed (the session stays \
         commit_failed, its changes kept, and is retried every commit interval: one stuck \
         session counts again at each retry)"
    );
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
    describe_gauge!(
        WORKSPACES_NEAR_QUOTA,
        "Workspaces at 90% or more of their bytes or inodes quota (writes past it answer EDQUOT)"
    );
    describe_gauge!(
        DISK_FREE_BYTES,
        Unit::Bytes,
        "Bytes free on the data dir's disk (statvfs f_bavail)"
    );
    describe_gauge!(
        DISK_RESERVE_BYTES,
        Unit::Bytes,
        "Bytes of the data dir's disk writes may not take: below this free, writes answer ENOSPC"
    );
    describe_gauge!(
        CACHE_BYTES,
        Unit::Bytes,
        "Cluster mode: bytes of objects held in the local cache"
    );
    describe_gauge!(
        CACHE_LIMIT_BYTES,
        Unit::Bytes,
        "Cluster mode: the local cache's bound (--cache-size, less if the disk filled)"
    );
    describe_counter!(
        CACHE_HITS,
        "Cluster mode: object reads the local cache served"
    );
    describe_counter!(
        CACHE_MISSES,
        "Cluster mode: objects fetched from the object store"
    );
    describe_counter!(
        CACHE_PREFETCHED,
        "Cluster mode: of the objects fetched, those fetched ahead of a read"
    );
    // At 0 from the start, so rates and alerts on them read 0, not "no data".
    for reason in crate::sessions::EndReason::ALL {
        metrics::counter!(SESSIONS_ENDED, "reason" => reason.as_str()).increment(0);
    }
    for counter in [
        SESSIONS_STARTED,
        SESSION_END_FAILURES,
        GC_OBJECTS_FREED,
        GC_BYTES_FREED,
    ] {
        metrics::counter!(counter).increment(0);
    }
}

/// Counts `n` sessions ended for `reason`.
pub(crate) fn sessions_ended(reason: crate::sessions::EndReason, n: usize) {
    metrics::counter!(SESSIONS_ENDED, "reason" => reason.as_str()).increment(n as u64);
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
    // Left as it was if statvfs failed: 0 would read as a full disk.
    if let Some(free) = g.disk_free_bytes {
        metrics::gauge!(DISK_FREE_BYTES).set(free as f64);
    }
    metrics::gauge!(DISK_RESERVE_BYTES).set(g.reserve_bytes as f64);
    metrics::gauge!(WORKSPACES_NEAR_QUOTA).set(g.near_quota as f64);
}

/// Cluster mode: the object cache's figures, at each scrape.
pub fn publish_cache(c: chaserfs_engine::CacheStats) {
    metrics::gauge!(CACHE_BYTES).set(c.bytes as f64);
    metrics::gauge!(CACHE_LIMIT_BYTES).set(c.limit as f64);
    metrics::counter!(CACHE_HITS).absolute(c.hits);
    metrics::counter!(CACHE_MISSES).absolute(c.misses);
    metrics::counter!(CACHE_PREFETCHED).absolute(c.prefetched);
}

/// How long scanned gauges are served before they are read again.
const GAUGE_TTL: Duration = Duration::from_secs(10);

/// What `/metrics` reads from the service when scraped.
#[derive(Clone, Copy)]
pub struct Gauges {
    pub logical_bytes: u64,
    pub disk_bytes: u64,
    /// `None` if statvfs failed.
    pub disk_free_bytes: Option<u64>,
    pub reserve_bytes: u64,
    pub near_quota: u64,
}
