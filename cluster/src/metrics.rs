//! A cluster host's requests to its stores and its lease, through the `metrics` facade (the
//! daemon renders them at `GET /metrics`): what an on-call alerts on when S3 or etcd slows
//! down, fails, or cuts this host off.

use std::time::Instant;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

pub const REQUEST_SECONDS: &str = "chaserfs_cluster_request_duration_seconds";
pub const REQUEST_ERRORS: &str = "chaserfs_cluster_request_errors_total";
pub const REQUEST_TIMEOUTS: &str = "chaserfs_cluster_request_timeouts_total";
pub const LEASE_RENEWED: &str = "chaserfs_cluster_lease_renewed_timestamp_seconds";
pub const LEASES_LOST: &str = "chaserfs_cluster_leases_lost_total";

/// The requests timed, as `(store, op)` labels: a closed set.
const REQUESTS: [(&str, &str); 7] = [
    ("s3", "get"),
    ("s3", "head"),
    ("s3", "put"),
    ("s3", "list"),
    ("s3", "delete"),
    ("etcd", "get"),
    ("etcd", "txn"),
];

/// Registers the help text, and every series at 0 (so rates read 0, not "no data").
pub fn describe() {
    describe_histogram!(
        REQUEST_SECONDS,
        Unit::Seconds,
        "Requests to the object store (s3) and to etcd, by store and operation, retries included"
    );
    describe_counter!(
        REQUEST_ERRORS,
        "Requests to the object store or etcd answered with an error (after retries), by store \
         and operation"
    );
    describe_counter!(
        REQUEST_TIMEOUTS,
        "Calls to the object store or etcd given up after --request-timeout without an answer, \
         by store"
    );
    describe_gauge!(
        LEASE_RENEWED,
        Unit::Seconds,
        "When etcd last renewed this host's lease (Unix time): past two thirds of \
         --lease-ttl, commits are refused (renewals come every third)"
    );
    describe_counter!(
        LEASES_LOST,
        "Leases of this host that etcd let expire (its workspaces went to other hosts)"
    );
    for (store, op) in REQUESTS {
        metrics::counter!(REQUEST_ERRORS, "store" => store, "op" => op).increment(0);
    }
    for store in ["s3", "etcd"] {
        metrics::counter!(REQUEST_TIMEOUTS, "store" => store).increment(0);
    }
    metrics::counter!(LEASES_LOST).increment(0);
    lease_renewed();
}

/// Times one request to `store` (`s3` or `etcd`); `ok` is whether it succeeded.
pub(crate) fn record(store: &'static str, op: &'static str, started: Instant, ok: bool) {
    metrics::histogram!(REQUEST_SECONDS, "store" => store, "op" => op)
        .record(started.elapsed().as_secs_f64());
    if !ok {
        metrics::counter!(REQUEST_ERRORS, "store" => store, "op" => op).increment(1);
    }
}

/// A call to `store` given up for want of an answer (the request timeout).
pub(crate) fn timed_out(store: &'static str) {
    metrics::counter!(REQUEST_TIMEOUTS, "store" => store).increment(1);
}

/// The lease was granted or renewed now.
pub(crate) fn lease_renewed() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!(LEASE_RENEWED).set(now);
}
