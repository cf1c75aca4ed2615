//! The overlay's side of the fsync journal (format and why: `format/journal.rs`): what an
//! fsync appends, which bytes of each chunk buffer changed since the entry before, and the
//! replay of a workspace's entries when it is opened.

use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Deref;

use crate::error::{FsError, FsResult};
use crate::format::hash::Hash;
use crate::format::journal::{BufferPatch, JournalEntry};
use crate::format::keys;
use crate::format::records::{self, Extent, Super};
use crate::format::CHUNK_SIZE;

use super::overlay::State;
use crate::tree::Changes;

/// An entry larger than this (tree changes, buffer bytes and the chunks it stores) is not
/// written: the fsync commits instead, which stores bulk data without the WAL.
const ENTRY_LIMIT: usize = 512 << 10;

/// Entries, and their bytes, since the last commit past which an fsync commits (bounds a
/// replay and what a collection reads of the journal).
const ENTRIES_LIMIT: u64 = 4096;
const BYTES_LIMIT: usize = 16 << 20;

/// Tree changes past which an fsync commits instead of journaling.
const KV_LIMIT: usize = 16384;

/// The overlay's tree changes, and the keys of the overlay's view (changes, dirty inodes)
/// that may differ since the last journal entry: an fsync's entry then costs what changed
/// since the one before, not the whole overlay. Read through `Deref`; every change goes
/// through these methods, so none escapes the next entry.
#[derive(Default)]
pub(super) struct Changed {
    map: Changes,
    /// Hashed, not ordered: between two fsyncs it holds every key changed (a tree of small
    /// files made without one, hundreds of thousands), and each change looks its key up.
    /// In a `BTreeSet`, the key comparisons took 5% of the daemon's CPU making small files.
    since_entry: HashSet<Vec<u8>>,
}

impl Deref for Changed {
    type Target = Changes;
    fn deref(&self) -> &Changes {
        &self.map
    }
}

impl Changed {
    pub(super) fn insert(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.touch(&key);
        self.map.insert(key, value);
    }

    pub(super) fn remove(&mut self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.touch(key);
        self.map.remove(key)
    }

    /// Committed: no change left, and the journal is gone with them (see
    /// [`JournalState::committed`]), so nothing differs from its last entry.
    pub(super) fn committed(&mut self) {
        *self = Changed::default();
    }

    /// The view's value of `key` may have changed (a dirty inode saved, say).
    pub(super) fn touch(&mut self, key: &[u8]) {
        if !self.since_entry.contains(key) {
            self.since_entry.insert(key.to_vec());
        }
    }

    /// Every key of `map` counts as changed.
    pub(super) fn replace(&mut self, map: Changes) {
        let old = std::mem::replace(&mut self.map, map);
        self.since_entry.extend(old.into_keys());
        self.since_entry.extend(self.map.keys().cloned());
    }
}

/// What the overlay knows of its journal since its last commit.
#[derive(Default)]
pub(super) struct JournalState {
    /// The next entry's sequence number.
    pub(super) seq: u64,
    /// Entries written (or replayed) since the last commit, which deletes them, and their
    /// bytes.
    pub(super) entries: u64,
    bytes: usize,
    /// The overlay's tree changes as the entries so far hold them.
    logged_kv: Changes,
    /// Set by a failed commit, which may have landed all the same (its WAL write went
    /// through, its sync failed, and the store's heal replays it): entries over the root
    /// this overlay knows would then be stale, so fsyncs commit until a commit succeeds.
    pub(super) must_commit: bool,
    /// Buffers the last entry holds: one gone since goes into the next entry as dropped,
    /// one still there (and not renewed) as a patch of `touched` if touched.
    logged: HashSet<(u64, u64)>,
    /// Buffers created since the last entry: the next holds them whole (or over their base).
    renewed: HashSet<(u64, u64)>,
    /// Buffers of the last entry removed since (some may be back, in `renewed`).
    removed: HashSet<(u64, u64)>,
    /// Per buffer, the span written since the last entry.
    touched: HashMap<(u64, u64), (usize, usize)>,
    /// Buffers not in the last entry that were loaded from a chunk of the root: the next
    /// entry holds them as a patch of `touched` over that chunk, not whole. A collection
    /// does not mark these chunks: the root does, and an entry applies over that root only.
    bases: HashMap<(u64, u64), Hash>,
}

impl JournalState {
    /// Bytes `[start, end)` of buffer `(ino, idx)` changed.
    pub(super) fn touch(&mut self, key: (u64, u64), start: usize, end: usize) {
        let span = self.touched.entry(key).or_insert((start, end));
        span.0 = span.0.min(start);
        span.1 = span.1.max(end);
    }

    /// A buffer was created: no entry holds its bytes. `base`: it holds the bytes of that
    /// chunk of the root (nothing written since the root changed it), which any replay of
    /// the journal finds in the store.
    pub(super) fn created(&mut self, key: (u64, u64), base: Option<Hash>) {
        self.renewed.insert(key);
        match base {
            Some(h) => self.bases.insert(key, h),
            None => self.bases.remove(&key),
        };
    }

    /// A buffer left the overlay ([`State::drop_buffer`]).
    pub(super) fn removed(&mut self, key: (u64, u64)) {
        if self.logged.contains(&key) {
            self.removed.insert(key);
        }
    }

    /// A buffer was cut to `len`.
    pub(super) fn truncated(&mut self, key: (u64, u64), len: usize) {
        self.touch(key, len, len);
    }

    /// The overlay was committed: the journal is gone with it.
    pub(super) fn committed(&mut self) {
        *self = JournalState {
            seq: self.seq,
            ..JournalState::default()
        };
    }
}

/// An entry ready to append, and what the overlay's journal state becomes once it is.
pub(super) struct NextEntry {
    pub(super) entry: JournalEntry,
    /// Sealed chunks not stored yet, written in the entry's batch.
    pub(super) chunks: Vec<(Hash, Bytes)>,
    pub(super) bytes: usize,
    /// No buffer written, cut, created or dropped since the last entry.
    buffers_as_logged: bool,
}

impl NextEntry {
    /// Whether the entry holds nothing the last one did not.
    pub(super) fn is_empty(&self) -> bool {
        self.entry.kv.is_empty()
            && self.entry.unset.is_empty()
            && self.chunks.is_empty()
            && self.buffers_as_logged
    }
}

impl State {
    /// Whether the overlay holds no change at all.
    pub(super) fn is_clean(&self) -> bool {
        self.kv.is_empty()
            && self.inodes.is_empty()
            && self.chunks.is_empty()
            && self.pending.is_empty()
    }

    /// The entry an fsync appends now; `None` when it, or the journal since the last commit,
    /// is too large (the fsync commits).
    pub(super) fn journal_entry(&self) -> Option<NextEntry> {
        let j = &self.journal;
        if j.must_commit || j.entries >= ENTRIES_LIMIT || self.kv.len() > KV_LIMIT {
            return None;
        }
        // The view's value of each key that may have changed: the super record, a dirty
        // inode's record, else the tree change (`None` if the view has none).
        let super_key = keys::super_key();
        let view = |k: &[u8]| -> Option<Option<Vec<u8>>> {
            if let Some(keys::Decoded::Inode(ino)) = keys::decode(k) {
                if let Some(inode) = self.inodes.get(&ino) {
                    return Some(Some(records::encode(inode)));
                }
            }
            self.kv.get(k).cloned()
        };
        let mut size = 0usize;
        let mut changed = Vec::new();
        let mut unset = Vec::new();
        // In key order, so an entry's bytes do not depend on a hash seed.
        let mut candidates: Vec<&Vec<u8>> = self.kv.since_entry.iter().collect();
        candidates.sort_unstable();
        let candidates = candidates.into_iter().filter(|k| **k != super_key);
        let values = candidates
            .map(|k| (k.as_slice(), view(k)))
            .chain([(super_key.as_slice(), Some(Some(records::encode(&self.sup))))]);
        for (k, v) in values {
            match v {
                Some(v) if j.logged_kv.get(k) != Some(&v) => {
                    size += k.len() + v.as_ref().map_or(0, Vec::len);
                    changed.push((Bytes::copy_from_slice(k), v.map(Bytes::from)));
                }
                None if j.logged_kv.contains_key(k) => unset.push(Bytes::copy_from_slice(k)),
                _ => {}
            }
        }
        // All of them, as a commit takes them: one a spill is writing outside the lock may
        // not be stored yet.
        let chunks: Vec<(Hash, Bytes)> =
            self.pending.iter().map(|(h, d)| (*h, d.clone())).collect();
        size += chunks.iter().map(|(_, d)| d.len()).sum::<usize>();
        let mut buffers = Vec::new();
        let mut bases = Vec::new();
        // Buffers written or created since the last entry; every other one is as the last
        // entry left it (a buffer is created only with `created`, so a new one is renewed).
        let mut changed_buffers: Vec<(u64, u64)> = j
            .touched
            .keys()
            .chain(&j.renewed)
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        changed_buffers.retain(|k| self.chunks.contains_key(k));
        for (ino, idx) in changed_buffers {
            let buf = &self.chunks[&(ino, idx)];
            // Whether replay holds this buffer's bytes as of the entry before.
            let logged = j.logged.contains(&(ino, idx)) && !j.renewed.contains(&(ino, idx));
            let base = j.bases.get(&(ino, idx)).filter(|_| !logged);
            if let Some(h) = base {
                bases.push((ino, idx, *h));
                size += 32;
            }
            let (whole, at, bytes) = if !logged && base.is_none() {
                (true, 0, buf.as_slice())
            } else if let Some(&(start, end)) = j.touched.get(&(ino, idx)) {
                let end = end.min(buf.len());
                let start = start.min(end);
                (false, start, &buf[start..end])
            } else if logged {
                // As the entry before left it.
                continue;
            } else {
                (false, 0, &buf[..0])
            };
            size += bytes.len() + 32;
            if size > ENTRY_LIMIT {
                return None;
            }
            buffers.push(BufferPatch {
                ino,
                idx,
                len: buf.len() as u32,
                whole,
                at: at as u32,
                bytes: Bytes::copy_from_slice(bytes),
            });
        }
        let mut dropped: Vec<(u64, u64)> = j
            .removed
            .iter()
            .filter(|k| !self.chunks.contains_key(k))
            .copied()
            .collect();
        dropped.sort_unstable();
        size += dropped.len() * 16;
        if size > ENTRY_LIMIT || j.bytes + size > BYTES_LIMIT {
            return None;
        }
        let entry = JournalEntry {
            base: self.root,
            generation: self.generation,
            kv: changed,
            unset,
            buffers,
            bases,
            dropped: Some(dropped),
        };
        let buffers_as_logged = entry.buffers.is_empty()
            && entry.bases.is_empty()
            && entry.dropped.as_ref().is_some_and(Vec::is_empty);
        Some(NextEntry {
            entry,
            chunks,
            bytes: size,
            buffers_as_logged,
        })
    }

    /// `next` was appended: its chunks are stored now (and stay pinned until the commit),
    /// and the next entry holds what changes after it.
    pub(super) fn journaled(&mut self, next: NextEntry) {
        for (h, d) in &next.chunks {
            // `pending_bytes` counts what no spill has taken.
            if self.pending.shift_remove(h).is_some() && !self.spilling.contains(h) {
                self.pending_bytes = self.pending_bytes.saturating_sub(d.len());
            }
        }
        let j = &mut self.journal;
        j.seq += 1;
        j.entries += 1;
        j.bytes += next.bytes;
        for k in &next.entry.unset {
            j.logged_kv.remove(k.as_ref());
        }
        for (k, v) in &next.entry.kv {
            j.logged_kv
                .insert(k.to_vec(), v.as_ref().map(|v| v.to_vec()));
        }
        self.kv.since_entry.clear();
        // The buffers the entry holds: those of the last one but the dropped, and the new.
        for k in next.entry.dropped.iter().flatten() {
            j.logged.remove(k);
        }
        let chunks = &self.chunks;
        j.logged
            .extend(j.renewed.drain().filter(|k| chunks.contains_key(k)));
        j.touched.clear();
        j.bases.clear();
        j.removed.clear();
    }

    /// Replays `entries` (oldest first) over the committed state: the overlay becomes what
    /// the entries written over this root held. Entries over another root are stale (their
    /// commit landed); the commit that follows deletes every one.
    pub(super) fn replay(&mut self, entries: Vec<JournalEntry>) -> FsResult<()> {
        self.journal.entries = entries.len() as u64;
        // Sequence numbers start again at 0 with this open: until the commit that follows
        // succeeds and deletes these entries, a new entry would take one of their keys and be
        // replayed among them, so fsyncs commit.
        self.journal.must_commit = !entries.is_empty();
        let mut buffers: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
        let mut kv = Changes::new();
        let mut replayed = false;
        for e in entries {
            if e.base != self.root || e.generation != self.generation {
                continue;
            }
            // A buffer loaded from a chunk of this root starts from that chunk's bytes.
            for (ino, idx, h) in &e.bases {
                buffers.insert((*ino, *idx), self.store.get_chunk(h)?);
            }
            for p in &e.buffers {
                let end = p.at as usize + p.bytes.len();
                let len = p.len as usize;
                if len > CHUNK_SIZE || end > len || (p.whole && p.bytes.len() != len) {
                    return Err(FsError::corrupt("journal buffer of a wrong shape"));
                }
                if p.whole {
                    buffers.insert((p.ino, p.idx), p.bytes.to_vec());
                    continue;
                }
                let b = buffers
                    .get_mut(&(p.ino, p.idx))
                    .ok_or_else(|| FsError::corrupt("journal patch of a buffer it never held"))?;
                if b.len() < end {
                    b.resize(end, 0);
                }
                b[p.at as usize..end].copy_from_slice(&p.bytes);
                b.resize(len, 0);
            }
            match &e.dropped {
                Some(dropped) => {
                    for k in dropped {
                        buffers.remove(k);
                    }
                }
                // Format 3: the entry lists every buffer the overlay held.
                None => {
                    let live: HashSet<(u64, u64)> =
                        e.buffers.iter().map(|p| (p.ino, p.idx)).collect();
                    buffers.retain(|k, _| live.contains(k));
                }
            }
            for k in &e.unset {
                kv.remove(k.as_ref());
            }
            for (k, v) in e.kv {
                if keys::decode(&k).is_none() {
                    return Err(FsError::corrupt("journal entry of a key of no kind"));
                }
                kv.insert(k.to_vec(), v.map(|v| v.to_vec()));
            }
            replayed = true;
        }
        if !replayed {
            return Ok(());
        }
        self.kv.replace(kv);
        if let Some(Some(sup)) = self.kv.remove(&keys::super_key()) {
            self.sup = Super::decode(&sup)?.0;
        }
        // Pinned like a live overlay's until the commit that follows: a collection running
        // meanwhile may have read the journal before that commit deleted it.
        let hashes: Vec<Hash> = self
            .kv
            .iter()
            .filter(|(k, _)| keys::is_extent(k))
            .filter_map(|(_, v)| v.as_ref())
            .map(|v| records::decode::<Extent>(v).map(|e| e.hash))
            .collect::<FsResult<_>>()?;
        for h in hashes {
            self.pin(h);
        }
        self.dirty_bytes = buffers.len() * CHUNK_SIZE;
        // No entry holds them since this open (whatever came before is stale).
        self.journal.renewed.extend(buffers.keys());
        self.chunks = buffers;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::records::FileKind;
    use crate::posix::{NewNode, SetAttr, Workspace};
    use crate::store::Store;

    fn setup() -> (tempfile::TempDir, std::sync::Arc<Store>, Workspace, u64) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = uuid::Uuid::new_v4();
        crate::roots::create_workspace(&store, id, &[]).unwrap();
        let ws = Workspace::open(store.clone(), id).unwrap();
        let ino = ws.create(keys::ROOT_INO, b"f", regular()).unwrap().ino;
        (dir, store, ws, ino)
    }

    fn regular() -> NewNode<'static> {
        NewNode {
            kind: FileKind::Regular,
            perm: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            target: b"",
        }
    }

    fn journal_bytes(store: &Store, ws: uuid::Uuid) -> usize {
        store
            .journal(ws)
            .unwrap()
            .iter()
            .map(|e| records::encode(e).len())
            .sum()
    }

    /// A session that fsyncs large changes in a loop: the journal between two commits stays
    /// under its caps (the fsyncs past them commit), whatever the loop writes.
    #[test]
    fn a_loop_of_large_fsyncs_keeps_the_journal_bounded() {
        let (_dir, store, ws, ino) = setup();
        let mut commits = 0;
        let mut root = ws.committed_root();
        for i in 0..400u64 {
            // 448 KiB at a new offset each time: under one entry's cap, over the journal's
            // in a few dozen.
            let mut data = vec![0u8; 448 << 10];
            blake3::Hasher::new()
                .update(&i.to_le_bytes())
                .finalize_xof()
                .fill(&mut data);
            ws.write(ino, i * (1 << 20) + 4096, &data).unwrap();
            ws.fsync().unwrap();
            if ws.committed_root() != root {
                commits += 1;
                root = ws.committed_root();
            }
            let bytes = journal_bytes(&store, ws.id());
            assert!(
                bytes <= BYTES_LIMIT + ENTRY_LIMIT,
                "journal of {bytes} bytes"
            );
        }
        assert!(commits >= 5, "only {commits} fsyncs committed");
    }

    /// A write into a committed file journals the bytes written as a patch over the root's
    /// chunk, not the chunk's whole buffer; a reopen without a commit (as after a crash)
    /// replays the patches onto those chunks.
    #[test]
    fn a_write_into_a_stored_chunk_journals_a_patch_over_it() {
        let (_dir, store, ws, ino) = setup();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        ws.write(ino, 0, &data).unwrap();
        ws.commit(true).unwrap();
        let mut want = data.clone();
        // Into the second chunk, and past the end of the fourth (3,392 bytes long).
        ws.write(ino, 70_000, b"patched").unwrap();
        want[70_000..70_007].copy_from_slice(b"patched");
        ws.write(ino, 199_995, b"0123456789").unwrap();
        want.truncate(199_995);
        want.extend_from_slice(b"0123456789");
        ws.fsync().unwrap();
        let first = store.journal(ws.id()).unwrap().pop().unwrap();
        assert_eq!(first.bases.len(), 2, "{:?}", first.bases);
        assert!(
            first
                .buffers
                .iter()
                .all(|b| !b.whole && b.bytes.len() <= 10),
            "{:?}",
            first.buffers
        );
        // Then a patch over what that entry holds, as before.
        ws.write(ino, 65_536, b"X").unwrap();
        want[65_536] = b'X';
        ws.fsync().unwrap();
        let second = store.journal(ws.id()).unwrap().pop().unwrap();
        assert!(second.bases.is_empty());
        // Only the buffer written since: the other is as the entry before left it.
        assert_eq!(second.buffers.len(), 1, "{:?}", second.buffers);
        // A fourth buffer the root changed in this overlay is no base: it goes whole.
        ws.write(ino, 140_000, b"sealed").unwrap();
        want[140_000..140_006].copy_from_slice(b"sealed");
        ws.state.lock().seal(ino, 2).unwrap();
        ws.write(ino, 140_010, b"again").unwrap();
        want[140_010..140_015].copy_from_slice(b"again");
        ws.fsync().unwrap();
        let third = store.journal(ws.id()).unwrap().pop().unwrap();
        assert!(third.bases.is_empty(), "{:?}", third.bases);
        assert!(third.buffers.iter().any(|b| b.whole && b.idx == 2));
        // A cut inside the third chunk drops the fourth's buffer, then a write past the cut.
        let cut = SetAttr {
            size: Some(150_000),
            ..SetAttr::default()
        };
        ws.setattr(ino, &cut).unwrap();
        want.truncate(150_000);
        ws.fsync().unwrap();
        let fourth = store.journal(ws.id()).unwrap().pop().unwrap();
        assert_eq!(fourth.dropped, Some(vec![(ino, 3)]));
        ws.write(ino, 180_000, b"tail").unwrap();
        want.resize(180_000, 0);
        want.extend_from_slice(b"tail");
        ws.fsync().unwrap();
        let id = ws.id();
        drop(ws);
        let ws = Workspace::open(store.clone(), id).unwrap();
        assert_eq!(ws.read(ino, 0, 300_000).unwrap(), want);
        ws.commit(true).unwrap();
        drop(ws);
        let ws = Workspace::open(store, id).unwrap();
        assert_eq!(ws.read(ino, 0, 300_000).unwrap(), want);
    }

    /// An fsync's entry holds the keys changed since the entry before, however many the
    /// overlay holds: a chmod after 300 creates journals the file's inode and the super
    /// record only; an unlink, its names and inode. A reopen replays all of it.
    #[test]
    fn an_fsync_journals_only_what_changed_since_the_last() {
        let (_dir, store, ws, _) = setup();
        let mut inos = Vec::new();
        for i in 0..300 {
            let name = format!("f{i}");
            inos.push(
                ws.create(keys::ROOT_INO, name.as_bytes(), regular())
                    .unwrap()
                    .ino,
            );
        }
        ws.fsync().unwrap();
        let first = store.journal(ws.id()).unwrap().pop().unwrap();
        assert!(first.kv.len() > 900, "{} keys", first.kv.len());
        let chmod = SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        };
        ws.setattr(inos[7], &chmod).unwrap();
        ws.fsync().unwrap();
        let second = store.journal(ws.id()).unwrap().pop().unwrap();
        let got: Vec<&[u8]> = second.kv.iter().map(|(k, _)| k.as_ref()).collect();
        let (inode, sup) = (keys::inode(inos[7]), keys::super_key());
        let want = [inode.as_slice(), sup.as_slice()];
        // The file's inode, and the super record if it changed.
        assert!(got.iter().all(|k| want.contains(k)), "{got:?}");
        assert!(got.contains(&inode.as_slice()));
        ws.unlink(keys::ROOT_INO, b"f9").unwrap();
        ws.fsync().unwrap();
        let third = store.journal(ws.id()).unwrap().pop().unwrap();
        assert!(
            third.kv.len() <= 6,
            "{} keys: {:?}",
            third.kv.len(),
            third.kv
        );
        let id = ws.id();
        drop(ws);
        let ws = Workspace::open(store, id).unwrap();
        assert_eq!(ws.getattr(inos[7]).unwrap().perm, 0o600);
        assert!(matches!(
            ws.lookup(keys::ROOT_INO, b"f9"),
            Err(FsError::NotFound)
        ));
        assert_eq!(ws.lookup(keys::ROOT_INO, b"f299").unwrap().ino, inos[299]);
        // A commit leaves no key to compare at the next entry (none kept across commits).
        ws.create(keys::ROOT_INO, b"late", regular()).unwrap();
        ws.commit(true).unwrap();
        assert!(ws.state.lock().kv.since_entry.is_empty());
    }

    #[derive(Clone, Debug)]
    enum Op {
        Write(u64, usize, u8),
        Cut(u64),
        Punch(u64, u64),
        /// From the second file: source offset, destination offset, length.
        Copy(u64, u64, u64),
        Fsync,
        Commit,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let chunk = CHUNK_SIZE as u64;
        prop_oneof![
            4 => (0u64..300_000, 1usize..20_000, any::<u8>()).prop_map(|(o, n, b)| Op::Write(o, n, b)),
            1 => (0u64..300_000, 1usize..140_000, any::<u8>()).prop_map(|(o, n, b)| Op::Write(o, n, b)),
            1 => (0u64..300_000).prop_map(Op::Cut),
            1 => (0u64..300_000, 1u64..140_000).prop_map(|(o, n)| Op::Punch(o, n)),
            1 => (0u64..200_000, 0u64..300_000, 1u64..140_000).prop_map(|(s, d, n)| Op::Copy(s, d, n)),
            // Chunk-aligned: the chunks are shared, not copied.
            1 => (0u64..3, 0u64..5, 1u64..3).prop_map(move |(s, d, n)| Op::Copy(s * chunk, d * chunk, n * chunk)),
            3 => Just(Op::Fsync),
            1 => Just(Op::Commit),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Writes, cuts, punched holes, copies (shared chunks and copied bytes), fsyncs and
        /// commits over a stored file, then a reopen without a commit (as after a crash):
        /// the file is what the last fsync or commit saw, byte for byte, whichever mix of
        /// whole buffers, patches over entries and patches over the root's chunks the
        /// journal held.
        #[test]
        fn a_reopen_finds_what_the_last_fsync_saw(ops in proptest::collection::vec(op(), 1..40)) {
            let (_dir, store, ws, ino) = setup();
            let new = NewNode { kind: FileKind::Regular, perm: 0o644, uid: 0, gid: 0, rdev: 0, target: b"" };
            let src = ws.create(keys::ROOT_INO, b"g", new).unwrap().ino;
            let other: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8 ^ 0x5a).collect();
            ws.write(src, 0, &other).unwrap();
            let first: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
            ws.write(ino, 0, &first).unwrap();
            ws.commit(true).unwrap();
            let (mut now, mut synced) = (first.clone(), first);
            for op in ops {
                match op {
                    Op::Write(at, n, b) => {
                        ws.write(ino, at, &vec![b; n]).unwrap();
                        let end = at as usize + n;
                        if now.len() < end {
                            now.resize(end, 0);
                        }
                        now[at as usize..end].fill(b);
                    }
                    Op::Cut(size) => {
                        let cut = SetAttr { size: Some(size), ..SetAttr::default() };
                        ws.setattr(ino, &cut).unwrap();
                        now.resize(size as usize, 0);
                    }
                    Op::Punch(at, n) => {
                        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                        ws.fallocate(ino, at, n, mode).unwrap();
                        let end = ((at + n) as usize).min(now.len());
                        if (at as usize) < end {
                            now[at as usize..end].fill(0);
                        }
                    }
                    Op::Copy(from, to, n) => {
                        let copied = ws.copy_range(src, from, ino, to, n).unwrap() as usize;
                        let from = from as usize;
                        let want = n.min(other.len().saturating_sub(from) as u64) as usize;
                        proptest::prop_assert_eq!(copied, want);
                        let end = to as usize + copied;
                        if copied > 0 {
                            if now.len() < end {
                                now.resize(end, 0);
                            }
                            now[to as usize..end].copy_from_slice(&other[from..from + copied]);
                        }
                    }
                    Op::Fsync => {
                        ws.fsync().unwrap();
                        synced = now.clone();
                    }
                    Op::Commit => {
                        ws.commit(false).unwrap();
                        synced = now.clone();
                    }
                }
            }
            let id = ws.id();
            drop(ws);
            let ws = Workspace::open(store, id).unwrap();
            let back = ws.read(ino, 0, 500_000).unwrap();
            let first_diff = back.iter().zip(&synced).position(|(a, b)| a != b);
            proptest::prop_assert!(
                back == synced,
                "{} bytes back, {} synced, first difference at {first_diff:?}",
                back.len(),
                synced.len()
            );
        }
    }

    /// An fsync that changes nothing since the last writes no entry; a change of any kind
    /// (a byte, a truncate) does.
    #[test]
    fn an_fsync_of_nothing_new_writes_no_entry() {
        let (_dir, store, ws, ino) = setup();
        ws.write(ino, 0, b"hello").unwrap();
        ws.fsync().unwrap();
        let entries = || store.journal(ws.id()).unwrap().len();
        assert_eq!(entries(), 1);
        ws.fsync().unwrap();
        ws.fsync().unwrap();
        assert_eq!(entries(), 1);
        ws.write(ino, 1, b"E").unwrap();
        ws.fsync().unwrap();
        assert_eq!(entries(), 2);
        let last = store.journal(ws.id()).unwrap().pop().unwrap();
        assert_eq!(last.buffers.len(), 1);
        assert_eq!(
            (last.buffers[0].at, &last.buffers[0].bytes[..]),
            (1, &b"E"[..])
        );
        assert!(!last.buffers[0].whole);
        ws.commit(false).unwrap();
        assert_eq!(entries(), 0, "a commit takes the journal in");
    }
}
