//! The fsync journal of a data dir's workspaces, in the `meta` column family.
//!
//! An fsync of a workspace whose changes since its last commit are small appends one entry
//! (one WAL write and one WAL sync) instead of committing: no chunk is sealed, no tree path
//! rewritten. Each entry holds what changed since the entry before: the overlay's tree
//! entries (dirty inodes and the super record included) whose value changed, and of its
//! chunk buffers the bytes written. The next commit deletes the workspace's entries in the
//! batch that writes its root; opening a workspace replays the entries written over its
//! root, in order, and commits.
//!
//! | key                              | value          |
//! |----------------------------------|----------------|
//! | `J  workspace:uuid  seq:u64`     | `JournalEntry` |

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::format::hash::Hash;

/// First byte of every journal key (root pointers are `R`, the format record `F`).
pub const PREFIX: u8 = b'J';

/// One fsync's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The root and generation the overlay was over: an entry over any other is stale (its
    /// workspace committed since, in a batch that failed to delete it), and is ignored.
    pub base: Hash,
    pub generation: u64,
    /// The overlay's tree changes that are new since the entry before: puts (`Some`) and
    /// deletes (`None`) of a key of the tree.
    pub kv: Vec<(Bytes, Option<Bytes>)>,
    /// Keys the overlay no longer changes (the tree's value stands again).
    pub unset: Vec<Bytes>,
    /// Every chunk buffer the overlay holds at this fsync; a buffer the entry does not list
    /// is gone (sealed into a chunk `kv` points at, or dropped).
    pub buffers: Vec<BufferPatch>,
}

/// A chunk buffer at an fsync: its length, and the bytes written since the entry before.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BufferPatch {
    pub ino: u64,
    pub idx: u64,
    pub len: u32,
    /// `bytes` is the whole buffer (it is new since the entry before), or a patch at `at`.
    pub whole: bool,
    pub at: u32,
    pub bytes: Bytes,
}

/// The key of a workspace's entry `seq`.
pub fn key(ws: uuid::Uuid, seq: u64) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[0] = PREFIX;
    k[1..17].copy_from_slice(ws.as_bytes());
    k[17..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Every key of a workspace's entries is in `[start, end)`.
pub fn range(ws: uuid::Uuid) -> ([u8; 25], [u8; 25]) {
    // No entry reaches seq u64::MAX (one per fsync).
    (key(ws, 0), key(ws, u64::MAX))
}

/// The workspace a journal key belongs to.
pub fn workspace_of(k: &[u8]) -> Option<uuid::Uuid> {
    if k.len() != 25 || k[0] != PREFIX {
        return None;
    }
    uuid::Uuid::from_slice(&k[1..17]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workspace_s_keys_sort_by_seq_inside_its_range() {
        let ws = uuid::Uuid::from_u128(7);
        let (start, end) = range(ws);
        assert!(start <= key(ws, 0) && key(ws, 0) < key(ws, 1) && key(ws, 1 << 40) < end);
        assert!(key(uuid::Uuid::from_u128(8), 0) >= end);
        assert_eq!(workspace_of(&key(ws, 3)), Some(ws));
        assert_eq!(workspace_of(b"Rw"), None);
    }
}
