//! Collecting objects no root reaches, across hosts.
//!
//! Protocol (why it never deletes an object a root refers to, while every host commits):
//! 1. One collector at a time: it holds `P gc/lock` on its lease.
//! 2. It lists the bucket's packs, noting the time; only packs listed and last modified more
//!    than the grace period before that time are candidates. Packs uploaded later are never
//!    candidates.
//! 3. It marks from every root (a first pass, while hosts commit freely).
//! 4. It starts the sweep in one transaction: bumps `P gc/count` and creates `P gc/sweep`
//!    (on its lease). A pack index write and a root write that brings new objects carry the
//!    count's revision read before the upload and "no sweep", so a commit whose upload began
//!    before the sweep started is refused and uploads again (after reading every pack index
//!    anew, so it finds deleted objects missing and sends them), and commits wait while the
//!    sweep runs.
//! 5. It marks again from every root read after step 4 (only what is new since step 3 is
//!    walked): every root that will exist during the sweep is one of these, a copy of one
//!    (clone, snapshot, restore bring no new object), or written after the sweep.
//! 6. It reads every pack index (complete now: later index writes are refused) and takes the
//!    candidates: a pack no index names (its commit failed) or none of whose objects is
//!    marked is deleted; one whose marked objects are less than half its bytes has them
//!    copied into new packs, indexed, and is then deleted. Each deletion removes the index
//!    key, then the pack, checking before each batch that its lease is live (a collector
//!    cut off from etcd stops deleting before another can start). A host whose index names a
//!    deleted pack reads the indexes again when the pack is missing, and before any commit
//!    once `P gc/count` moved.
//! 7. It deletes `P gc/sweep`. A collector that dies mid-sweep leaves it to expire with its
//!    lease; a crash anywhere leaves at worst objects for the next collection.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use chaserfs_engine::ops::gc::Marks;
use chaserfs_engine::{FsError, FsResult, Hash, ObjectKind, Store};

use crate::meta::packs::Fence;
use crate::packs::{self, Entry, Location, Refresh};
use crate::Cluster;

/// Packs deleted per batch (between lease checks).
const DELETE_BATCH: usize = 64;
/// Live bytes of sparse packs copied per repack round (bounds the collector's memory).
const REPACK_BATCH: u64 = 64 << 20;

#[derive(Debug, Default, Clone)]
pub struct ClusterGcReport {
    pub roots: usize,
    /// Packs in the bucket when the collection listed it.
    pub packs: usize,
    pub live_nodes: usize,
    pub live_chunks: usize,
    /// Packs deleted: no root reached any of their objects, or their live ones were copied
    /// into new packs (repacked), or no index named them (an upload whose commit failed).
    pub deleted_packs: usize,
    pub repacked_packs: usize,
    /// Bytes of the deleted packs, and the live bytes copied out of them.
    pub freed_bytes: u64,
    pub copied_bytes: u64,
    /// How long commits waited on the sweep (steps 4 to 7).
    pub sweep: Duration,
    pub total: Duration,
}

impl fmt::Display for ClusterGcReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} roots, {} packs; kept {} nodes and {} chunks; deleted {} packs ({} repacked), \
             {} MiB freed, {} MiB copied; commits waited {:?}; took {:?}",
            self.roots,
            self.packs,
            self.live_nodes,
            self.live_chunks,
            self.deleted_packs,
            self.repacked_packs,
            self.freed_bytes >> 20,
            self.copied_bytes >> 20,
            self.sweep,
            self.total
        )
    }
}

/// Runs one collection over the whole cluster. `store` is this host's cluster store (it
/// fetches the nodes marking walks). `Busy` if another host is collecting.
pub fn collect(store: &Store, cluster: &Cluster, grace: Duration) -> FsResult<ClusterGcReport> {
    let started = Instant::now();
    cluster.meta.lock_gc()?;
    let result = run(store, cluster, grace, started);
    cluster.meta.end_sweep();
    cluster.meta.unlock_gc();
    cluster.index.invalidate();
    result
}

fn run(
    store: &Store,
    cluster: &Cluster,
    grace: Duration,
    started: Instant,
) -> FsResult<ClusterGcReport> {
    let listed_at = SystemTime::now();
    let listed = cluster.objects.list_packs()?;
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
    // Read after the sweep began: every pack a commit can still index is here (a commit's
    // index write carries its token, refused from here on).
    let mut indexes = HashMap::new();
    for (key, pack, value) in cluster.meta.scan_packs(None)?.packs {
        indexes.insert(pack, (key, packs::decode_entries(&value)?));
    }
    let live = |e: &Entry| match e.kind {
        ObjectKind::Node => marks.nodes.contains(&e.hash),
        ObjectKind::Chunk => marks.chunks.contains(&e.hash),
    };
    let mut report = ClusterGcReport {
        roots: roots.len(),
        packs: listed.len(),
        live_nodes: marks.nodes.len(),
        live_chunks: marks.chunks.len(),
        ..ClusterGcReport::default()
    };
    // (index key if any, pack): deleted; sparse packs are copied first.
    let mut doomed: Vec<(Option<Vec<u8>>, Hash)> = Vec::new();
    let mut sparse: Vec<(Vec<u8>, Hash, Vec<Entry>)> = Vec::new();
    for (pack, size, modified) in &listed {
        if *modified >= cutoff {
            continue;
        }
        let Some((key, entries)) = indexes.remove(pack) else {
            doomed.push((None, *pack));
            report.freed_bytes += size;
            continue;
        };
        let kept: Vec<Entry> = entries.into_iter().filter(live).collect();
        let kept_bytes: u64 = kept.iter().map(|e| u64::from(e.len)).sum();
        if kept.is_empty() {
            doomed.push((Some(key), *pack));
            report.freed_bytes += size;
        } else if kept_bytes * 2 < *size {
            sparse.push((key, *pack, kept));
            report.freed_bytes += size - kept_bytes;
        }
    }
    report.repacked_packs = sparse.len();
    repack(cluster, &sparse, &mut report)?;
    doomed.extend(sparse.into_iter().map(|(key, pack, _)| (Some(key), pack)));
    report.deleted_packs = doomed.len();
    for batch in doomed.chunks(DELETE_BATCH) {
        // The index first (fenced by the collection's lease, even when the batch has no
        // index): a pack no index names is read by no one.
        let keys: Vec<Vec<u8>> = batch.iter().filter_map(|(k, _)| k.clone()).collect();
        cluster
            .meta
            .delete_packs(&keys)
            .map_err(|e| FsError::Storage(format!("collection stopped before deleting: {e}")))?;
        let names: Vec<Hash> = batch.iter().map(|(_, p)| *p).collect();
        cluster.objects.delete_packs(&names)?;
    }
    report.sweep = sweep_started.elapsed();
    report.total = started.elapsed();
    Ok(report)
}

/// Copies the live objects of mostly dead packs into new packs, indexed before the old ones
/// are deleted, so every live object is in some indexed pack throughout.
fn repack(
    cluster: &Cluster,
    sparse: &[(Vec<u8>, Hash, Vec<Entry>)],
    report: &mut ClusterGcReport,
) -> FsResult<()> {
    let mut batch: Vec<(usize, Location, Entry)> = Vec::new();
    let mut bytes = 0;
    let entries = sparse
        .iter()
        .flat_map(|(_, pack, kept)| kept.iter().map(move |e| (*pack, *e)));
    let mut entries = entries.peekable();
    while let Some((pack, e)) = entries.next() {
        let at = Location {
            pack,
            offset: e.offset,
            len: e.len,
        };
        batch.push((batch.len(), at, e));
        bytes += u64::from(e.len);
        if bytes < REPACK_BATCH && entries.peek().is_some() {
            continue;
        }
        let located: Vec<(usize, Location)> = batch.iter().map(|(i, l, _)| (*i, *l)).collect();
        let reads = packs::plan_reads(&located);
        let mut objects: Vec<Option<Vec<u8>>> = vec![None; batch.len()];
        for (read, parts) in reads.iter().zip(cluster.objects.get_reads(&reads)?) {
            let parts = parts.ok_or_else(|| {
                FsError::Storage(format!("pack {} vanished while repacking", read.pack))
            })?;
            for (&(i, _, _), bytes) in read.parts.iter().zip(parts) {
                objects[i] = Some(bytes.to_vec());
            }
        }
        let mut copy = Vec::with_capacity(batch.len());
        for ((_, l, e), object) in batch.drain(..).zip(objects) {
            let object = object.ok_or_else(|| {
                FsError::corrupt(format!("pack {} is shorter than its index", l.pack))
            })?;
            copy.push((e.kind, e.hash, object));
        }
        cluster.store_packs(copy.into_iter().map(Ok), Fence::Sweep)?;
        report.copied_bytes += bytes;
        bytes = 0;
    }
    // The collector's own reads find the copies at once.
    cluster.refresh(Refresh::CatchUp)
}
