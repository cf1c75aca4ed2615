//! The collector's thread (on a single host; a cluster's objects are collected across the
//! cluster): it frees what deletes and commits left unreferenced, and gives the space back to
//! the disk, without holding up the requests that caused it.

use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use chaserfs_engine::ops::gc;
use chaserfs_engine::Store;

use crate::error::{ApiError, ApiResult};

/// The collector's thread and the channel that wakes it.
pub(crate) type Collector = (mpsc::Sender<()>, JoinHandle<()>);

/// Starts the collector, unless the store is a cluster's.
pub(crate) fn start(store: &Arc<Store>) -> ApiResult<Option<Collector>> {
    // A cluster's objects are collected across the cluster, not by each host.
    if store.is_cluster() {
        return Ok(None);
    }
    let (gc_wake, wakes) = mpsc::channel();
    let collector = store.clone();
    let gc_thread = std::thread::Builder::new()
        .name("gc".into())
        .spawn(move || collect_when_woken(&collector, wakes))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Some((gc_wake, gc_thread)))
}

/// How often the collector looks at the dead data live workspaces left behind.
const GC_CHECK: Duration = Duration::from_secs(5);
/// Chunk bytes released by commits that make a collection worth running.
const GC_DEAD_BYTES: u64 = 64 << 20;
/// Least time between collections started by dead data, and at least ten times the last
/// collection's duration, so a churning session cannot keep the collector running.
const GC_MIN_GAP: Duration = Duration::from_secs(30);

/// The collector. Deletes wake it (it waits for the burst to settle); and every [`GC_CHECK`]
/// it collects if commits released [`GC_DEAD_BYTES`] or more (`rm -rf` in a live workspace),
/// rate-limited. Each collection compacts, so the space goes back to the disk, and logs what
/// it freed.
fn collect_when_woken(store: &Store, wakes: mpsc::Receiver<()>) {
    let mut last: Option<(std::time::Instant, Duration)> = None;
    loop {
        let trigger = match wakes.recv_timeout(GC_CHECK) {
            Ok(()) => {
                std::thread::sleep(Duration::from_millis(500));
                while wakes.try_recv().is_ok() {}
                "deletes"
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let rested =
                    last.is_none_or(|(at, took)| at.elapsed() >= GC_MIN_GAP.max(took * 10));
                if store.released_bytes() < GC_DEAD_BYTES || !rested {
                    continue;
                }
                "dead data"
            }
        };
        let released = store.released_bytes();
        let before = store.disk_usage().unwrap_or(0);
        let started = std::time::Instant::now();
        let collected = gc::collect(store, true);
        let after = store.disk_usage().unwrap_or(0);
        crate::metrics::record_gc(
            started.elapsed(),
            collected
                .as_ref()
                .map_or(0, |r| (r.deleted_nodes + r.deleted_chunks) as u64),
            before.saturating_sub(after),
        );
        match collected {
            Ok(r) => tracing::info!(
                "gc ({trigger}, {} MiB released by commits): deleted {} nodes and {} chunks; \
                 store {} -> {} MiB in {:?}",
                released >> 20,
                r.deleted_nodes,
                r.deleted_chunks,
                before >> 20,
                after >> 20,
                started.elapsed()
            ),
            Err(e) => tracing::error!("gc: {e}"),
        }
        last = Some((std::time::Instant::now(), started.elapsed()));
    }
}
