//! The FUSE adapter's metrics (see the engine's `metrics.rs` for how they are recorded).

use std::time::Instant;

pub const FUSE_REQUEST_SECONDS: &str = "chaserfs_fuse_request_duration_seconds";
pub const FUSE_IO_ERRORS: &str = "chaserfs_fuse_io_errors_total";
pub const FUSE_ERRORS: &str = "chaserfs_fuse_errors_total";

thread_local! {
    /// The FUSE operation this thread serves now (set by [`FuseOp::start`]).
    static CURRENT_OP: std::cell::Cell<&'static str> = const { std::cell::Cell::new("other") };
}

/// The FUSE operation the calling thread serves.
pub fn current_op() -> &'static str {
    CURRENT_OP.with(std::cell::Cell::get)
}

/// Registers the help text of the adapter's metrics.
pub fn describe() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_histogram!(
        FUSE_REQUEST_SECONDS,
        Unit::Seconds,
        "FUSE requests served, by operation (the count is the number of requests)"
    );
    describe_counter!(
        FUSE_ERRORS,
        "FUSE requests the engine answered with an error, by operation and errno name"
    );
    describe_counter!(
        FUSE_IO_ERRORS,
        "FUSE requests answered EIO: the store failed or found corruption (see the log)"
    );
    // At 0 from the start, so an alert on it reads 0, not "no data".
    metrics::counter!(FUSE_IO_ERRORS).increment(0);
    // The errors an operator alerts on: a tenant at its quota, the host's disk full.
    for errno in ["EDQUOT", "ENOSPC"] {
        metrics::counter!(FUSE_ERRORS, "op" => "write", "errno" => errno).increment(0);
    }
}

/// Times a FUSE request from its callback's start to its end (the reply), recorded on drop.
pub struct FuseOp {
    op: &'static str,
    started: Instant,
}

impl FuseOp {
    pub fn start(op: &'static str) -> FuseOp {
        CURRENT_OP.with(|c| c.set(op));
        FuseOp {
            op,
            started: Instant::now(),
        }
    }
}

thread_local! {
    /// Per operation, its histogram's handle: looking it up in the registry at every request
    /// (a key built, hashed and compared) took 8% of the daemon's CPU creating small files.
    static HISTOGRAMS: std::cell::RefCell<std::collections::HashMap<&'static str, metrics::Histogram>> =
        std::cell::RefCell::default();
}

impl Drop for FuseOp {
    fn drop(&mut self) {
        let seconds = self.started.elapsed().as_secs_f64();
        HISTOGRAMS.with_borrow_mut(|h| {
            h.entry(self.op)
                .or_insert_with(|| metrics::histogram!(FUSE_REQUEST_SECONDS, "op" => self.op))
                .record(seconds)
        });
    }
}
