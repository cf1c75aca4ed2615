//! Cluster mode: a host's store ([`Store::open_cluster`]) and fetching objects before reads
//! ask for them. A cold host reads a workspace from the object store, one request per node or
//! chunk; requests made one after another cost a round trip each. Two patterns are predictable, and their objects are fetched in
//! parallel batches on a background thread:
//!
//! - a directory first looked into (a lookup or a listing): the tree nodes holding its
//!   entries and its children's records, then the first chunks of its children's files
//!   (`find`, `cat *`, `git status`, a build);
//! - a file read sequentially: the next [`READ_AHEAD`] bytes of its chunks.
//!
//! Best effort: a job dropped when the queue is full, or an object store error, only means
//! the read fetches on its own.

use parking_lot::Mutex;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Weak};

use crate::error::{FsError, FsResult};
use crate::format::hash::Hash;
use crate::format::keys;
use crate::format::node::Node;
use crate::format::records::{self, DirSeq, Extent};
use crate::remote::{ObjectKind, Remote};
use crate::store::{PrefetchJob, PrefetchQueues, Store, StoreOptions};

/// Bytes of a sequentially read file fetched ahead of the reader: more is marked each time
/// the reader comes within half of it. Against 64 MiB, a cold 512 MiB read on a second host
/// went from 267-351 to 323-384 MiB/s (three rounds each, alternating, on Garage on these
/// 2-vCPU machines): at half of 64 MiB left, the reader caught up with pieces still in flight.
/// Memory is bounded by the piece threads (eight 8 MiB pieces in flight), not by this.
pub const READ_AHEAD: u64 = 128 << 20;
/// Per listed directory: at most this many tree nodes, and chunks of this many bytes.
const DIR_NODES: usize = 256;
const DIR_CHUNK_BYTES: u64 = 16 << 20;
/// Per child file, its first chunks only: a directory listing says nothing of big files.
const DIR_CHUNKS_PER_FILE: u64 = 4;
/// Objects per parallel request batch.
const BATCH: usize = 64;
/// Jobs waiting; more are dropped.
const QUEUE: usize = 64;
/// Threads fetching read-ahead pieces: a sequential reader's next pieces download while it
/// reads the ones before (each piece is released to the reader as soon as it is here).
const PIECE_THREADS: usize = 8;
/// Threads walking directories (fetching a listing's nodes and first chunks).
const WALK_THREADS: usize = 4;
/// Hydrations (whole trees, `hydrate.rs`): one at a time, behind what readers ask for.
const HYDRATE_THREADS: usize = 1;
/// Hydrations waiting; more are dropped.
const HYDRATE_QUEUE: usize = 4;

impl Store {
    /// Opens `path` as a cluster host's cache of objects (at most `cache_bytes` of them), with
    /// roots, records and objects in `remote`. The directory is emptied first: it holds
    /// nothing the cluster does not (what a crash left there was never acknowledged).
    pub fn open_cluster(
        path: &Path,
        opts: StoreOptions,
        remote: Arc<dyn Remote>,
        cache_bytes: u64,
    ) -> FsResult<Arc<Store>> {
        if path.exists() {
            std::fs::remove_dir_all(path)
                .map_err(|e| FsError::Storage(format!("{}: {e}", path.display())))?;
        }
        let store = Self::open_inner(path, opts, Some(remote), cache_bytes)?;
        store.set_prefetcher(start(Arc::downgrade(&store)));
        store.start_uploader();
        Ok(store)
    }
}

/// Starts the threads: [`PIECE_THREADS`] for read-ahead pieces, [`WALK_THREADS`] for
/// directory walks, [`HYDRATE_THREADS`] for hydrations, each set on its own queue. They end
/// when the store (which owns the senders) is dropped.
fn start(store: Weak<Store>) -> PrefetchQueues {
    let queue = |threads: usize, waiting: usize| {
        let (jobs, rx) = sync_channel(waiting);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..threads {
            let (store, rx) = (store.clone(), rx.clone());
            std::thread::Builder::new()
                .name("prefetch".into())
                .spawn(move || run(store, rx))
                .expect("spawning a prefetch thread");
        }
        jobs
    };
    PrefetchQueues {
        pieces: queue(PIECE_THREADS, QUEUE),
        walks: queue(WALK_THREADS, QUEUE),
        hydrations: queue(HYDRATE_THREADS, HYDRATE_QUEUE),
    }
}

fn run(store: Weak<Store>, jobs: Arc<Mutex<Receiver<PrefetchJob>>>) {
    loop {
        let Ok(job) = jobs.lock().recv() else {
            return;
        };
        let Some(store) = store.upgrade() else {
            return;
        };
        let done = match job {
            // One call, so the object store's reads of the batch run in parallel.
            PrefetchJob::Marked(hashes) => {
                store.fetch_marked(ObjectKind::Chunk, &hashes, true);
                Ok(())
            }
            PrefetchJob::Dir { root, dir } => children(&store, root, dir),
            PrefetchJob::Hydrate(root) => store.hydrate(root).map(|h| {
                tracing::debug!("hydrated {root}: {h:?}");
            }),
        };
        if let Err(e) = done {
            tracing::debug!("prefetch: {e}");
        }
    }
}

/// A directory's children: its entries' nodes, then the nodes holding the records of the
/// inodes they name (the directory's files, created together, have neighbouring numbers),
/// then the first chunks of those files.
fn children(store: &Arc<Store>, root: Hash, dir: u64) -> FsResult<()> {
    let (start, end) = keys::kind_range(dir, keys::Kind::DirSeq);
    let (mut lo, mut hi) = (u64::MAX, 0);
    for (_, v) in entries(&nodes(store, root, &start, &end)?, &start, &end) {
        let e: DirSeq = records::decode(v)?;
        (lo, hi) = (lo.min(e.ino), hi.max(e.ino));
    }
    if lo > hi {
        return Ok(());
    }
    let (start, end) = (keys::inode(lo), keys::inode(hi.saturating_add(1)));
    let leaves = nodes(store, root, &start, &end)?;
    let mut chunks = Vec::new();
    let mut bytes = 0u64;
    for (k, v) in entries(&leaves, &start, &end) {
        let Some(keys::Decoded::Extent(_, index)) = keys::decode(k) else {
            continue;
        };
        if index >= DIR_CHUNKS_PER_FILE {
            continue;
        }
        let e: Extent = records::decode(v)?;
        bytes += u64::from(e.len);
        if bytes > DIR_CHUNK_BYTES {
            break;
        }
        chunks.push(e.hash);
    }
    for batch in chunks.chunks(BATCH) {
        store.prefetch(ObjectKind::Chunk, batch);
    }
    Ok(())
}

/// The entries of `leaves` in `start..end`, in order.
fn entries<'a>(
    leaves: &'a [Arc<Node>],
    start: &'a [u8],
    end: &'a [u8],
) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
    leaves
        .iter()
        .filter_map(|l| match &**l {
            Node::Leaf(entries) => Some(entries),
            Node::Branch(_) => None,
        })
        .flatten()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .filter(move |(k, _)| *k >= start && *k < end)
}

/// Walks the tree at `root` one level at a time, fetching each level's nodes that cover
/// `start..end` in parallel batches (at most [`DIR_NODES`] in all); returns the leaves.
fn nodes(store: &Arc<Store>, root: Hash, start: &[u8], end: &[u8]) -> FsResult<Vec<Arc<Node>>> {
    let mut level = vec![root];
    let mut leaves = Vec::new();
    let mut fetched = 0;
    while !level.is_empty() && fetched < DIR_NODES {
        level.truncate(DIR_NODES - fetched);
        fetched += level.len();
        for batch in level.chunks(BATCH) {
            store.prefetch(ObjectKind::Node, batch);
        }
        let mut next = Vec::new();
        for h in &level {
            let node = store.get_node(h)?;
            match &*node {
                Node::Leaf(_) => leaves.push(node.clone()),
                Node::Branch(children) => {
                    for (i, (first, child)) in children.iter().enumerate() {
                        // Child i holds keys from its first key (any key, for the first
                        // child) up to the next child's first key.
                        let starts_before_end = i == 0 || first.as_slice() < end;
                        let ends_after_start = children
                            .get(i + 1)
                            .is_none_or(|(next, _)| next.as_slice() > start);
                        if starts_before_end && ends_after_start {
                            next.push(*child);
                        }
                    }
                }
            }
        }
        level = next;
    }
    Ok(leaves)
}
