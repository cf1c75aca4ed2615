//! Hydration: a cluster host about to serve a workspace it has not seen fetches the whole
//! namespace first (every tree node, a level at a time in parallel batches), so `ls -R`,
//! `find` and `git status` then run on local reads; and then its most recently modified
//! files' chunks, up to a budget, so their first reads are local too. Session starts queue
//! it in the background (`remote/prefetch.rs`); a scheduler that knows where the next session
//! lands asks for it ahead (`POST /v1/workspaces/{id}/warm`), and that call returns when it
//! is done.

use parking_lot::Mutex;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::error::FsResult;
use crate::format::hash::Hash;
use crate::format::keys::{self, Decoded};
use crate::format::node::Node;
use crate::format::records::{self, Extent, Inode, Timespec};
use crate::remote::ObjectKind;
use crate::store::Store;

/// Tree nodes per parallel request batch.
const NODE_BATCH: usize = 64;
/// Chunks per parallel request batch: whole packs (one request each), at most 32 MiB of full
/// chunks, four packs' worth (a pack larger than that is a batch of its own).
const CHUNK_BATCH: usize = 512;
/// Chunks a hydration considers at most, whatever their sizes: bounds its memory (a heap
/// entry is ~72 bytes) on a tree of millions of tiny files.
const MAX_CHUNKS: usize = 1 << 18;

/// Bytes of the newest files' chunks a hydration fetches before the rest (see
/// [`Store::hydrate`]): a repository's index and the files edited last, not a whole tree.
const RECENT_BYTES: u64 = 8 << 20;

/// One hydration at a time: each fetches in parallel batches already, and more would only
/// split the bandwidth and the cache between them (and let many warm calls pile up fetches).
static HYDRATING: Mutex<()> = Mutex::new(());

/// What a hydration went through; objects already here cost nothing and count too.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Hydrated {
    /// Tree nodes in the state's tree.
    pub nodes: u64,
    /// Chunks chosen (within the budget), and their bytes (a chunk in several files counts
    /// once for each).
    pub chunks: u64,
    pub chunk_bytes: u64,
}

/// A chunk to fetch, ordered by how soon its file was modified, then by its place in the
/// file: the heap keeps the most wanted ones within the budget.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Wanted {
    mtime: Timespec,
    first: Reverse<u64>,
    hash: Hash,
    len: u32,
    ino: u64,
}

impl Store {
    /// Cluster mode: fetches every node of the tree at `root`, then the chunks of its newest
    /// files, up to half the object cache (the rest stays for what sessions read), in the
    /// tree's order. Objects
    /// held here already cost nothing. Without a cluster, everything is local: does nothing.
    /// Waits for a hydration already running.
    pub fn hydrate(&self, root: Hash) -> FsResult<Hydrated> {
        let _one = HYDRATING.lock();
        let mut done = Hydrated::default();
        if !self.is_cluster() {
            return Ok(done);
        }
        let chunk_budget = self.cache_stats().limit / 2;
        let mut wanted = BinaryHeap::new();
        let mut bytes = 0u64;
        // The inode whose records the walk is in (keys sort by inode, its attributes first).
        let mut current = (0u64, Timespec::default());
        let mut level = vec![root];
        while !level.is_empty() {
            done.nodes += level.len() as u64;
            let mut next = Vec::new();
            // A batch fetched, then read: a level larger than the cache is never fetched
            // whole before its first nodes are read (they would be evicted and fetched again).
            for (i, h) in level.iter().enumerate() {
                if i % NODE_BATCH == 0 {
                    self.prefetch(ObjectKind::Node, &level[i..level.len().min(i + NODE_BATCH)]);
                }
                match &*self.get_node(h)? {
                    Node::Branch(children) => next.extend(children.iter().map(|(_, c)| *c)),
                    Node::Leaf(entries) => {
                        for (k, v) in entries {
                            match keys::decode(k) {
                                Some(Decoded::Inode(ino)) => {
                                    let inode: Inode = records::decode(v)?;
                                    current = (ino, inode.mtime);
                                }
                                Some(Decoded::Extent(ino, index)) if chunk_budget > 0 => {
                                    let e: Extent = records::decode(v)?;
                                    let mtime = if ino == current.0 {
                                        current.1
                                    } else {
                                        Timespec::default()
                                    };
                                    bytes += u64::from(e.len);
                                    wanted.push(Reverse(Wanted {
                                        mtime,
                                        first: Reverse(index),
                                        hash: e.hash,
                                        len: e.len,
                                        ino,
                                    }));
                                    // Drop the least wanted past the budget.
                                    while bytes > chunk_budget || wanted.len() > MAX_CHUNKS {
                                        let Some(Reverse(w)) = wanted.pop() else {
                                            break;
                                        };
                                        bytes -= u64::from(w.len);
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
            level = next;
        }
        // The newest files' first RECENT_BYTES come first (a session that starts meanwhile
        // reads them first: `git status` its index), then the rest; each part in the tree's
        // order (inode, then place in the file), then grouped by pack. The cache's files keep
        // chunks in the order given, and inode numbers follow the order files were made in,
        // the order a walk of a tree copied or checked out reads them in: such a read (`find
        // | xargs cat`, a build) and a sequential read of a file then read the cache's disk in
        // order. All newest first had laid a tree written in order out backwards, and its
        // warmed-ahead read ran at 0.62-0.66x of the same tree read from a cache its own cold
        // read filled.
        let mut chosen: Vec<Wanted> = wanted
            .into_sorted_vec()
            .into_iter()
            .map(|Reverse(w)| w)
            .collect();
        let mut recent = 0u64;
        let split = chosen
            .iter()
            .position(|w| {
                recent += u64::from(w.len);
                recent > RECENT_BYTES
            })
            .unwrap_or(chosen.len());
        let tree_order = |w: &Wanted| (w.ino, w.first.0);
        chosen[..split].sort_unstable_by_key(tree_order);
        chosen[split..].sort_unstable_by_key(tree_order);
        let order: Vec<Hash> = chosen.into_iter().map(|w| w.hash).collect();
        done.chunks = order.len() as u64;
        done.chunk_bytes = bytes;
        // By pack, so each request reads a whole pack, not the MiB of it one file has.
        let mut batch = Vec::with_capacity(CHUNK_BATCH);
        for group in self.group(ObjectKind::Chunk, &order, CHUNK_BATCH) {
            if batch.len() + group.len() > CHUNK_BATCH {
                self.prefetch(ObjectKind::Chunk, &batch);
                batch.clear();
            }
            batch.extend(group);
        }
        self.prefetch(ObjectKind::Chunk, &batch);
        Ok(done)
    }
}
