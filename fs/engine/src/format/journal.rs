//! The fsync journal of a data dir's workspaces, in a RocksDB of its own (`journal/` in the
//! data dir; format 2 kept it in the object store's `meta` column family, and a format 2 data
//! dir's entries move when it is first opened).
//!
//! An fsync of a workspace whose changes since its last commit are small appends one entry
//! (one WAL write and one WAL sync) instead of committing: no chunk is sealed, no tree path
//! rewritten. Each entry holds what changed since the entry before: the overlay's tree
//! entries (dirty inodes and the super record included) whose value changed, and of its
//! chunk buffers the bytes written. The next commit deletes the workspace's entries in the
//! batch that writes its root; opening a workspace replays the entries written over its
//! root, in order, and commits.
//!
//! | key                                       | value                                |
//! |-------------------------------------------|--------------------------------------|
//! | `J  workspace:uuid  seq:u64`              | `JournalEntry`                       |
//! | `K  workspace:uuid  seq:u64  hash:[u8;32]`| a chunk entry `seq` sealed, as stored |

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::format::hash::Hash;

/// First byte of every entry's key (and of format 2's entries among the object store's
/// records, where root pointers are `R` and the format record `F`).
pub const PREFIX: u8 = b'J';

/// First byte of every chunk's key.
pub const CHUNK_PREFIX: u8 = b'K';

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
    /// The chunk buffers new or changed since the entry before (with `dropped: None`, as
    /// format 3 wrote them: every buffer the overlay holds, and one not listed is gone).
    pub buffers: Vec<BufferPatch>,
    /// Buffers new since the entry before that were loaded from a chunk of the root
    /// (`base`), as `(ino, idx, chunk)`: their patch applies to that chunk's bytes, so a
    /// 4 KiB write into a stored file journals 4 KiB, not its whole 64 KiB buffer. The root
    /// holds the chunk for as long as the entry can apply.
    pub bases: Vec<(u64, u64, Hash)>,
    /// Buffers the entry before held that are gone (sealed into a chunk `kv` points at, or
    /// dropped). `None` for a format 3 entry, which lists every buffer instead, so an fsync
    /// after one small write into a file with many dirty buffers wrote them all.
    pub dropped: Option<Vec<(u64, u64)>>,
}

/// An entry as format 3 wrote it: [`JournalEntry`] without `bases` and `dropped`, its
/// `buffers` all the overlay held. Format 4 added the two fields at the end
/// ([`decode_entry`]).
#[derive(Deserialize)]
struct EntryV3 {
    base: Hash,
    generation: u64,
    kv: Vec<(Bytes, Option<Bytes>)>,
    unset: Vec<Bytes>,
    buffers: Vec<BufferPatch>,
}

/// Decodes an entry of this format or of format 3. Deterministic: postcard reads fields in
/// order, so a format 3 entry always runs out of bytes where `bases` would begin, and an
/// entry of this format always decodes as one (RocksDB checksums every value).
pub fn decode_entry(bytes: &[u8]) -> Result<JournalEntry, postcard::Error> {
    postcard::from_bytes::<JournalEntry>(bytes).or_else(|e| {
        let v3: EntryV3 = postcard::from_bytes(bytes).map_err(|_| e)?;
        Ok(JournalEntry {
            base: v3.base,
            generation: v3.generation,
            kv: v3.kv,
            unset: v3.unset,
            buffers: v3.buffers,
            bases: Vec::new(),
            dropped: None,
        })
    })
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

/// The key of a chunk entry `seq` of workspace `ws` sealed: stored beside it, since the
/// object store holds it only unsynced until the commit that takes the entry in.
pub fn chunk_key(ws: uuid::Uuid, seq: u64, hash: &Hash) -> [u8; 57] {
    let mut k = [0u8; 57];
    k[..25].copy_from_slice(&key(ws, seq));
    k[0] = CHUNK_PREFIX;
    k[25..].copy_from_slice(&hash.0);
    k
}

/// Every key of a workspace's chunks is in `[start, end)`.
pub fn chunk_range(ws: uuid::Uuid) -> ([u8; 25], [u8; 25]) {
    let (mut start, mut end) = range(ws);
    start[0] = CHUNK_PREFIX;
    end[0] = CHUNK_PREFIX;
    (start, end)
}

/// The hash of a chunk key's chunk.
pub fn chunk_of(k: &[u8]) -> Option<Hash> {
    if k.len() != 57 || k[0] != CHUNK_PREFIX {
        return None;
    }
    Some(Hash(k[25..].try_into().ok()?))
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

    #[derive(Serialize)]
    struct WrittenV3 {
        base: Hash,
        generation: u64,
        kv: Vec<(Bytes, Option<Bytes>)>,
        unset: Vec<Bytes>,
        buffers: Vec<BufferPatch>,
    }

    #[test]
    fn entries_of_format_3_and_of_this_format_decode_as_written() {
        let patch = BufferPatch {
            ino: 2,
            idx: 1,
            len: 65536,
            whole: false,
            at: 4096,
            bytes: Bytes::from(vec![7u8; 4096]),
        };
        let kv = vec![(Bytes::from_static(b"k"), Some(Bytes::from_static(b"v")))];
        let v3 = postcard::to_stdvec(&WrittenV3 {
            base: Hash::of(b"root"),
            generation: 3,
            kv: kv.clone(),
            unset: vec![Bytes::from_static(b"u")],
            buffers: vec![patch.clone()],
        })
        .unwrap();
        let mut want = JournalEntry {
            base: Hash::of(b"root"),
            generation: 3,
            kv,
            unset: vec![Bytes::from_static(b"u")],
            buffers: vec![patch],
            bases: vec![],
            dropped: None,
        };
        assert_eq!(decode_entry(&v3).unwrap(), want);
        want.bases = vec![(2, 1, Hash::of(b"chunk"))];
        want.dropped = Some(vec![(2, 3)]);
        let v4 = postcard::to_stdvec(&want).unwrap();
        assert_eq!(decode_entry(&v4).unwrap(), want);
        want.bases.clear();
        want.dropped = Some(vec![]);
        let v4 = postcard::to_stdvec(&want).unwrap();
        assert_eq!(decode_entry(&v4).unwrap(), want);
        assert!(decode_entry(&v3[..v3.len() - 1]).is_err());
    }

    #[test]
    fn a_workspace_s_keys_sort_by_seq_inside_its_range() {
        let ws = uuid::Uuid::from_u128(7);
        let (start, end) = range(ws);
        assert!(start <= key(ws, 0) && key(ws, 0) < key(ws, 1) && key(ws, 1 << 40) < end);
        assert!(key(uuid::Uuid::from_u128(8), 0) >= end);
        assert_eq!(workspace_of(&key(ws, 3)), Some(ws));
        assert_eq!(workspace_of(b"Rw"), None);
        let h = Hash::of(b"chunk");
        let (start, end) = chunk_range(ws);
        assert!(
            start[..] <= chunk_key(ws, 0, &h)[..] && chunk_key(ws, u64::MAX - 1, &h)[..] < end[..]
        );
        assert!(chunk_key(uuid::Uuid::from_u128(8), 0, &h)[..] >= end[..]);
        assert_eq!(chunk_of(&chunk_key(ws, 3, &h)), Some(h));
        assert_eq!(chunk_of(&key(ws, 3)), None);
        assert_eq!(workspace_of(&chunk_key(ws, 3, &h)), None);
    }
}
