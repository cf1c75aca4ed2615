//! Collecting objects no root reaches, across hosts.
//!
//! Protocol (why it never deletes an object a root refers to, while every host commits):
//! 1. One collector at a time: it holds `P gc/lock` on its lease.
//! 2. It lists the bucket, noting the time; only objects listed, unmarked and last modified
//!    more than the grace period before that time are candidates. Objects uploaded later are
//!    never candidates.
//! 3. It marks from every root (a first pass, while hosts commit freely).
//! 4. It starts the sweep in one transaction: bumps `P gc/count` and creates `P gc/sweep`
//!    (on its lease). A root write that brings new objects carries the count's revision read
//!    before its upload and "no sweep", so a commit whose upload began before the sweep
//!    started is refused and uploads again (finding deleted objects missing and sending them),
//!    and commits wait while the sweep runs.
//! 5. It marks again from every root read after step 4 (only what is new since step 3 is
//!    walked): every root that will exist during the sweep is one of these, a copy of one
//!    (clone, snapshot, restore bring no new object), or written after the sweep.
//! 6. It deletes the unmarked candidates, checking before each batch that its lease is live
//!    (a collector cut off from etcd stops deleting before another can start).
//! 7. It deletes `P gc/sweep`. A collector that dies mid-sweep leaves it to expire with its
//!    lease; a crash anywhere leaves at worst objects for the next collection.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use chaserfs_fs::gc::Marks;
use chaserfs_fs::{FsError, FsResult, ObjectKind, Store};

use crate::Cluster;

/// Objects deleted per batch (between lease checks).
const DELETE_BATCH: usize = 64;

#[derive(Debug, Default, Clone)]
pub struct ClusterGcReport {
    pub roots: usize,
    pub listed: usize,
    pub live_nodes: usize,
    pub live_chunks: usize,
    pub deleted_nodes: usize,
    pub deleted_chunks: usize,
    /// How long commits waited on the sweep (steps 4 to 7).
    pub sweep: Duration,
    pub total: Duration,
}

/// Runs one collection over the whole cluster. `store` is this host's cluster store (it
/// fetches the nodes marking walks). `Busy` if another host is collecting.
pub fn collect(store: &Store, cluster: &Cluster, grace: Duration) -> FsResult<ClusterGcReport> {
    let started = Instant::now();
    cluster.meta.lock_gc()?;
    let result = run(store, cluster, grace, started);
    cluster.meta.end_sweep();
    cluster.meta.unlock_gc();
    result
}

fn run(
    store: &Store,
    cluster: &Cluster,
    grace: Duration,
    started: Instant,
) -> FsResult<ClusterGcReport> {
    let listed_at = SystemTime::now();
    let listed = cluster.objects.list()?;
    let cutoff = listed_at
        .checked_sub(grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut marks = Marks::default();
    for (_, r) in cluster.meta.list_roots()? {
        marks.walk(store, r.root)?;
    }
    cluster.meta.begin_sweep()?;
    let sweep_started = Instant::now();
    let roots = cluster.meta.list_roots()?;
    for (_, r) in &roots {
        marks.walk(store, r.root)?;
    }
    let candidates: Vec<(ObjectKind, chaserfs_fs::Hash)> = listed
        .iter()
        .filter(|(_, _, modified)| *modified < cutoff)
        .filter(|(kind, hash, _)| match kind {
            ObjectKind::Node => !marks.nodes.contains(hash),
            ObjectKind::Chunk => !marks.chunks.contains(hash),
        })
        .map(|(k, h, _)| (*k, *h))
        .collect();
    for batch in candidates.chunks(DELETE_BATCH) {
        cluster
            .meta
            .check_live()
            .map_err(|e| FsError::Storage(format!("collection stopped before deleting: {e}")))?;
        cluster.objects.delete_all(batch)?;
    }
    let deleted: HashSet<_> = candidates.iter().collect();
    Ok(ClusterGcReport {
        roots: roots.len(),
        listed: listed.len(),
        live_nodes: marks.nodes.len(),
        live_chunks: marks.chunks.len(),
        deleted_nodes: deleted
            .iter()
            .filter(|(k, _)| *k == ObjectKind::Node)
            .count(),
        deleted_chunks: deleted
            .iter()
            .filter(|(k, _)| *k == ObjectKind::Chunk)
            .count(),
        sweep: sweep_started.elapsed(),
        total: started.elapsed(),
    })
}
