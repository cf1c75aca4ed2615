//! The engine's metrics, through the `metrics` facade: every call is a no-op until the daemon
//! installs a recorder (its `/metrics` endpoint), so tests and tools pay nothing. Labels carry
//! operation names only, never workspace names or ids.

pub const COMMIT_SECONDS: &str = "chaserfs_commit_duration_seconds";
pub const COMMIT_BYTES: &str = "chaserfs_commit_bytes_total";
pub const COMMIT_ERRORS: &str = "chaserfs_commit_errors_total";
pub const FSYNC_SECONDS: &str = "chaserfs_fsync_duration_seconds";
pub const FSYNCS_JOURNALED: &str = "chaserfs_fsyncs_journaled_total";
pub const CHUNKS_WRITTEN: &str = "chaserfs_chunks_written_total";
pub const CHUNK_BYTES_WRITTEN: &str = "chaserfs_chunk_bytes_written_total";
pub const CHUNKS_DEDUPLICATED: &str = "chaserfs_chunks_deduplicated_total";
pub const STORE_HEALTHY: &str = "chaserfs_store_healthy";

/// Registers the help text of every engine metric.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        STORE_HEALTHY,
        "1 while the store takes writes; 0 from a failed write until it heals (see the log)"
    );
    metrics::gauge!(STORE_HEALTHY).set(1.0);
    describe_histogram!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "Commits of a mounted workspace's changes as a new root (periodic, fsync, session end)"
    );
    describe_counter!(
        COMMIT_BYTES,
        Unit::Bytes,
        "Bytes of new chunks and tree nodes written by commits"
    );
    describe_counter!(
        COMMIT_ERRORS,
        "Commits that failed (the changes stay pending)"
    );
    describe_histogram!(
        FSYNC_SECONDS,
        Unit::Seconds,
        "fsync and fsyncdir: the journal entry or commit that makes a workspace durable"
    );
    describe_counter!(
        FSYNCS_JOURNALED,
        "fsyncs made durable by a journal entry instead of a commit (the rest committed)"
    );
    describe_counter!(
        CHUNKS_WRITTEN,
        "New chunks stored (content not stored before)"
    );
    describe_counter!(
        CHUNK_BYTES_WRITTEN,
        Unit::Bytes,
        "Bytes of new chunks stored"
    );
    describe_counter!(
        CHUNKS_DEDUPLICATED,
        "Chunks written whose content was stored already (kept once)"
    );
    // At 0 from the start, so an alert on them reads 0, not "no data", until one fires.
    for counter in [
        COMMIT_BYTES,
        COMMIT_ERRORS,
        FSYNCS_JOURNALED,
        CHUNKS_WRITTEN,
        CHUNK_BYTES_WRITTEN,
        CHUNKS_DEDUPLICATED,
    ] {
        metrics::counter!(counter).increment(0);
    }
}
