//! Garbage collection: mark everything reachable, then sweep the rest.
//!
//! Protocol (why it never deletes a live object, even while workspaces are written):
//! 1. Anything that is about to make a root reference an object pins it first (`Store::pin`),
//!    and keeps it pinned until that root is written: overlays pin their sealed and shared
//!    chunks until their commit, commits pin their new nodes, root copies run under the roots
//!    lock.
//! 2. `begin_gc`, under the roots lock, copies every current pin into a protect set, which from
//!    then on also receives every new pin; then it reads every root pointer.
//! 3. Mark walks every root, the chunks of every fsync journal entry, then every protected
//!    hash (nodes recursively). Any error while marking aborts the collection before anything
//!    is deleted.
//! 4. Sweep deletes unmarked objects in batches, each checked against the protect set under
//!    the pin lock it is deleted under, so an object pinned during the sweep survives.
//!
//! An object reachable from a root at any moment of the collection was reachable from a root
//! read in step 2, or was pinned after step 2 began. A crash at any point leaves at worst
//! unreachable objects for the next collection.

use std::collections::HashSet;

use crate::error::FsResult;
use crate::format::hash::Hash;
use crate::format::keys;
use crate::format::node::Node;
use crate::format::records::{self, Extent};
use crate::store::{DeletedRange, KeyScan, Store, CF_CHUNKS, CF_NODES};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct GcReport {
    pub roots: usize,
    pub live_nodes: usize,
    pub live_chunks: usize,
    pub deleted_nodes: usize,
    pub deleted_chunks: usize,
}

const SWEEP_BATCH: usize = 1024;

/// Reclaims every object no root or write in flight reaches. With `compact`, RocksDB then
/// compacts the key ranges the sweep deleted from, so the space goes back to the disk.
pub fn collect(store: &Store, compact: bool) -> FsResult<GcReport> {
    let roots = store.begin_gc()?;
    // Until the compaction below has ended too.
    let _running = store.collection();
    let result = mark_and_sweep(store, roots.iter().map(|(_, r)| r.root).collect());
    store.end_gc();
    let (mut report, ranges) = result?;
    report.roots = roots.len();
    if compact {
        store.compact_ranges(&ranges)?;
    }
    Ok(report)
}

/// What a collection found reachable. A cluster's collector (`chaserfs-cluster`) marks with
/// it too.
#[derive(Default)]
pub struct Marks {
    pub nodes: HashSet<Hash>,
    pub chunks: HashSet<Hash>,
}

impl Marks {
    /// Marks every node and chunk reachable from `root`; subtrees already marked are skipped,
    /// so walking many clones costs what they do not share.
    pub fn walk(&mut self, store: &Store, root: Hash) -> FsResult<()> {
        let mut stack = vec![root];
        while let Some(h) = stack.pop() {
            if !self.nodes.insert(h) {
                continue;
            }
            match &*store.get_node(&h)? {
                Node::Branch(children) => stack.extend(children.iter().map(|(_, c)| *c)),
                Node::Leaf(entries) => {
                    for (k, v) in entries {
                        if keys::is_extent(k) {
                            let e: Extent = records::decode(v)?;
                            self.chunks.insert(e.hash);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn mark_and_sweep(store: &Store, roots: Vec<Hash>) -> FsResult<(GcReport, Vec<DeletedRange>)> {
    let mut marks = Marks {
        nodes: HashSet::new(),
        chunks: HashSet::new(),
    };
    for root in roots {
        marks.walk(store, root)?;
    }
    // Chunks that fsyncs journaled and no commit has taken in yet (the journal of a
    // workspace open now is pinned too; one a crash left is replayed at its next open).
    marks.chunks.extend(store.journal_chunks()?);
    // Objects pinned since the start: nodes of commits in flight (walked, since a new node's
    // children may be new too) and chunks of overlays.
    let protected: Vec<Hash> = store
        .pins
        .lock()
        .gc_protect
        .as_ref()
        .map(|p| p.iter().copied().collect())
        .unwrap_or_default();
    for h in protected {
        if store.get_node_bytes(&h)?.is_some() {
            marks.walk(store, h)?;
        } else {
            marks.chunks.insert(h);
        }
    }
    let mut report = GcReport {
        live_nodes: marks.nodes.len(),
        live_chunks: marks.chunks.len(),
        ..GcReport::default()
    };
    let mut ranges = Vec::new();
    let (n, range) = sweep(store, CF_NODES, &marks.nodes)?;
    report.deleted_nodes = n;
    ranges.extend(range);
    let (n, range) = sweep(store, CF_CHUNKS, &marks.chunks)?;
    report.deleted_chunks = n;
    ranges.extend(range);
    Ok((report, ranges))
}

/// Deletes what `live` lacks; returns how many, and the range of keys deleted.
fn sweep(
    store: &Store,
    cf_name: &'static str,
    live: &HashSet<Hash>,
) -> FsResult<(usize, Option<DeletedRange>)> {
    let db = store.db()?;
    let mut deleted = 0;
    let mut range: Option<DeletedRange> = None;
    let mut candidates = Vec::with_capacity(SWEEP_BATCH);
    let cf = db.cf(cf_name);
    // Keys only: a default iterator would read every chunk's bytes out of the blob files.
    let mut iter = KeyScan::new(&db, cf);
    loop {
        let done = !iter.valid();
        if !done {
            if let Some(h) = iter.key().and_then(Hash::from_slice) {
                if !live.contains(&h) {
                    candidates.push(h);
                }
            }
            iter.next();
        }
        if candidates.len() >= SWEEP_BATCH || (done && !candidates.is_empty()) {
            let pins = store.pins.lock();
            let mut doomed = Vec::with_capacity(candidates.len());
            for h in candidates.drain(..) {
                let protected = pins.counts.contains_key(&h)
                    || pins.gc_protect.as_ref().is_some_and(|p| p.contains(&h));
                if !protected {
                    doomed.push(h);
                    deleted += 1;
                    // Keys come in order, so the first delete starts the range.
                    match &mut range {
                        None => range = Some((cf_name, h.0.to_vec(), h.0.to_vec())),
                        Some((_, _, last)) => *last = h.0.to_vec(),
                    }
                }
            }
            store.delete_objects(cf_name, &doomed)?;
        }
        if done {
            iter.status()?;
            return Ok((deleted, range));
        }
    }
}
