//! File data in the overlay: chunk buffers, sealing (hash, pin, queue for the store),
//! spilling sealed chunks to the store, reads that merge buffers with stored chunks, and
//! size changes.

use bytes::Bytes;
use std::collections::HashSet;

use crate::error::{FsError, FsResult};
use crate::format::hash::Hash;
use crate::format::keys::{self, Kind};
use crate::format::records::{self, Extent, FileKind, Inode, Timespec};
use crate::format::CHUNK_SIZE;
use crate::metrics as m;
use crate::remote::prefetch::READ_AHEAD;

use super::overlay::{State, READ_AHEAD_FILES};
use super::types::*;
use crate::store::copy_span;

/// A stored chunk a read still has to fetch.
pub(super) struct ChunkRead {
    pub(super) at: usize,
    pub(super) in_chunk: usize,
    pub(super) len: usize,
    pub(super) extent: Extent,
}

impl State {
    pub(super) fn load_chunk(&self, e: &Extent) -> FsResult<Vec<u8>> {
        let data = match self.pending.get(&e.hash) {
            Some(d) => d.to_vec(),
            None => self.store.get_chunk(&e.hash)?,
        };
        if data.len() != e.len as usize {
            return Err(FsError::corrupt(format!(
                "chunk {} has the wrong length",
                e.hash
            )));
        }
        Ok(data)
    }

    /// The dirty buffer for a chunk, loading its current bytes unless `fresh`.
    pub(super) fn buffer(&mut self, ino: u64, idx: u64, fresh: bool) -> FsResult<&mut Vec<u8>> {
        if !self.chunks.contains_key(&(ino, idx)) {
            let (data, base) = match fresh {
                true => (Vec::new(), None),
                false => match self.extent(ino, idx)? {
                    Some(e) => {
                        // The root's own chunk, unless the overlay changed it: an fsync
                        // journals a patch over it instead of the whole buffer. Sound while
                        // `kv` loses keys only at a commit (which drops the journal) and
                        // every removal of a buffer whose chunk the root holds writes its
                        // extent key (`set_extent`, cuts, purges): a buffer loaded again is
                        // then never taken for the root's.
                        let of_root = !self.kv.contains_key(&keys::extent(ino, idx));
                        (self.load_chunk(&e)?, of_root.then_some(e.hash))
                    }
                    None => (Vec::new(), None),
                },
            };
            self.dirty_bytes += CHUNK_SIZE;
            self.chunks.insert((ino, idx), data);
            self.journal.created((ino, idx), base);
        }
        Ok(self.chunks.get_mut(&(ino, idx)).expect("just inserted"))
    }

    pub(super) fn pin(&mut self, h: Hash) {
        if self.pins.insert(h) {
            self.store.pin([h]);
        }
    }

    /// Drops every pin of the overlay (it is gone, or its chunks are in a committed root).
    pub(super) fn release_pins(&mut self) {
        let pins: Vec<Hash> = self.pins.drain().collect();
        self.store.unpin(pins);
    }

    /// Points `EXTENT(ino, idx)` at `new` (or makes it a hole), keeping `alloc_bytes` right.
    pub(super) fn set_extent(&mut self, ino: u64, idx: u64, new: Option<Extent>) -> FsResult<()> {
        let old = self.extent(ino, idx)?;
        let mut i = self.inode(ino)?;
        i.alloc_bytes -= old.map_or(0, |e| e.len as u64);
        if old.is_some_and(|o| new.is_none_or(|n| n.hash != o.hash)) {
            self.released_bytes += old.map_or(0, |e| e.len as u64);
        }
        i.alloc_bytes += new.map_or(0, |e| e.len as u64);
        self.save(ino, i);
        match new {
            Some(e) => {
                self.pin(e.hash);
                self.kv
                    .insert(keys::extent(ino, idx), Some(records::encode(&e)));
            }
            None if old.is_some() => {
                self.kv.insert(keys::extent(ino, idx), None);
            }
            None => {}
        }
        Ok(())
    }

    /// Removes a dirty buffer (sealed, cut, replaced or its file gone): the only way one
    /// leaves the overlay, so the journal knows which ones its next entry drops.
    pub(super) fn drop_buffer(&mut self, key: (u64, u64)) -> Option<Vec<u8>> {
        let data = self.chunks.remove(&key)?;
        self.dirty_bytes -= CHUNK_SIZE;
        self.journal.removed(key);
        Some(data)
    }

    /// Turns a dirty buffer into a stored chunk (or a hole, if it is all zeros).
    pub(super) fn seal(&mut self, ino: u64, idx: u64) -> FsResult<()> {
        let Some(mut data) = self.drop_buffer((ino, idx)) else {
            return Ok(());
        };
        let used = data.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
        data.truncate(used);
        if data.is_empty() {
            return self.set_extent(ino, idx, None);
        }
        let hash = Hash::of(&data);
        let len = data.len() as u32;
        self.pin(hash);
        if !self.pending.contains_key(&hash) && !self.store.chunk_exists(&hash)? {
            metrics::counter!(m::CHUNKS_WRITTEN).increment(1);
            metrics::counter!(m::CHUNK_BYTES_WRITTEN).increment(data.len() as u64);
            self.pending_bytes += data.len();
            self.pending.insert(hash, Bytes::from(data));
        } else {
            metrics::counter!(m::CHUNKS_DEDUPLICATED).increment(1);
        }
        self.set_extent(ino, idx, Some(Extent { hash, len }))?;
        if self.pending_bytes > PENDING_LIMIT {
            self.spill()?;
        }
        Ok(())
    }

    /// Writes sealed chunks to the store ahead of the commit (they stay pinned until then),
    /// or, inside [`Workspace::write`], queues them to be written once the lock is released.
    pub(super) fn spill(&mut self) -> FsResult<()> {
        let chunks: Vec<(Hash, Bytes)> = self
            .pending
            .iter()
            .filter(|(h, _)| !self.spilling.contains(*h))
            .map(|(h, d)| (*h, d.clone()))
            .collect();
        self.pending_bytes = 0;
        if self.defer_spills {
            self.spilling_bytes += chunks.iter().map(|(_, d)| d.len()).sum::<usize>();
            self.spilling.extend(chunks.iter().map(|(h, _)| *h));
            self.spill_queue.extend(chunks);
            return Ok(());
        }
        if let Err(e) = self.store.put_chunks(Some(self.id), &chunks) {
            self.pending_bytes = chunks.iter().map(|(_, d)| d.len()).sum();
            return Err(e);
        }
        // One pass that keeps the order (a removal each would move the rest each time).
        let spilled: HashSet<Hash> = chunks.iter().map(|(h, _)| *h).collect();
        self.pending.retain(|h, _| !spilled.contains(h));
        Ok(())
    }

    pub(super) fn seal_all(&mut self) -> FsResult<()> {
        let keys: Vec<_> = self.chunks.keys().copied().collect();
        for (ino, idx) in keys {
            self.seal(ino, idx)?;
        }
        Ok(())
    }

    pub(super) fn regular(&self, ino: u64) -> FsResult<Inode> {
        let i = self.inode(ino)?;
        match i.kind {
            FileKind::Regular => Ok(i),
            FileKind::Directory => Err(FsError::IsDir),
            _ => Err(FsError::Invalid("not a regular file")),
        }
    }

    /// Fills what a read can take from memory (dirty buffers, sealed chunks not yet stored)
    /// and lists the stored chunks still to fetch: (offset in `out`, offset in chunk, length,
    /// extent). The caller fetches those without holding the workspace.
    /// Cluster mode: when a read follows the last one of `ino` (give or take the kernel's
    /// reordering), the chunks of the next [`READ_AHEAD`] bytes not fetched ahead yet.
    pub(super) fn read_ahead(
        &mut self,
        ino: u64,
        offset: u64,
        len: usize,
    ) -> FsResult<Option<Vec<Hash>>> {
        if self.read_ahead.len() > READ_AHEAD_FILES {
            self.read_ahead.clear();
        }
        let end = offset.saturating_add(len as u64);
        let r = self.read_ahead.entry(ino).or_default();
        let sequential = offset.abs_diff(r.at) <= 1 << 20;
        r.at = if sequential { r.at.max(end) } else { end };
        if !sequential || r.fetched_to >= end + READ_AHEAD / 2 {
            return Ok(None);
        }
        let from = r.fetched_to.max(end);
        let to = end + READ_AHEAD;
        r.fetched_to = to;
        let size = self.regular(ino)?.size;
        let mut ahead = Vec::new();
        for idx in from / CS..to.min(size).div_ceil(CS) {
            if self.chunks.contains_key(&(ino, idx)) {
                continue;
            }
            if let Some(e) = self.extent(ino, idx)? {
                if !self.pending.contains_key(&e.hash) {
                    ahead.push(e.hash);
                }
            }
        }
        Ok((!ahead.is_empty()).then_some(ahead))
    }

    /// Fills `out[..total]` with what the overlay holds of bytes `[offset, offset + len)` cut
    /// at the file's size (`total` bytes), and returns `total` and the spans left to read from
    /// stored chunks. `out` may hold anything beforehand: every byte of `out[..total]` is
    /// written here or by those reads, holes included. It grows to `total` if shorter, and is
    /// never shortened.
    pub(super) fn read_plan(
        &self,
        ino: u64,
        offset: u64,
        len: usize,
        out: &mut Vec<u8>,
    ) -> FsResult<(usize, Vec<ChunkRead>)> {
        let i = self.regular(ino)?;
        if offset >= i.size {
            return Ok((0, Vec::new()));
        }
        let end = i.size.min(offset.saturating_add(len as u64));
        let total = (end - offset) as usize;
        // Zero fill for growth only: a reused buffer is overwritten, not cleared first.
        if out.len() < total {
            out.resize(total, 0);
        }
        let mut fetch = Vec::new();
        let mut pos = offset;
        while pos < end {
            let idx = pos / CS;
            let in_chunk = (pos % CS) as usize;
            let n = ((CS - pos % CS).min(end - pos)) as usize;
            let at = (pos - offset) as usize;
            let memory = match self.chunks.get(&(ino, idx)) {
                Some(b) => Some(b.as_slice()),
                None => match self.extent(ino, idx)? {
                    Some(e) => match self.pending.get(&e.hash) {
                        Some(d) => Some(d.as_ref()),
                        None => {
                            fetch.push(ChunkRead {
                                at,
                                in_chunk,
                                len: n,
                                extent: e,
                            });
                            None
                        }
                    },
                    None => Some(&[][..]), // a hole: zeros
                },
            };
            if let Some(data) = memory {
                copy_span(&mut out[at..at + n], data, in_chunk);
            }
            pos += n as u64;
        }
        Ok((total, fetch))
    }

    pub(super) fn read(&self, ino: u64, offset: u64, len: usize) -> FsResult<Vec<u8>> {
        let mut out = Vec::new();
        let (_, fetch) = self.read_plan(ino, offset, len, &mut out)?;
        for c in fetch {
            let data = self.load_chunk(&c.extent)?;
            copy_span(&mut out[c.at..c.at + c.len], &data, c.in_chunk);
        }
        Ok(out)
    }

    /// Refuses growth when the disk is down to its reserve, counting what this overlay holds
    /// in memory or is storing now, and `more` bytes about to join it.
    pub(super) fn check_space(&self, more: usize) -> FsResult<()> {
        let held = self.dirty_bytes + self.pending_bytes + self.spilling_bytes;
        self.store.check_space((held + more) as u64)
    }

    /// Refuses (EDQUOT) growing the counted bytes (file sizes, names, symlink targets,
    /// xattrs) by `growth` past the quota. Growth only: a workspace over its quota can still
    /// shrink and overwrite.
    pub(super) fn check_bytes_quota(&self, growth: u64) -> FsResult<()> {
        match self.limits.bytes {
            Some(q) if growth > 0 && self.sup.used_bytes() + growth > q => {
                Err(FsError::QuotaExceeded)
            }
            _ => Ok(()),
        }
    }

    /// Writes `data` at `offset`; `times` says whether the write sets the file's mtime and
    /// ctime (see [`crate::Workspace::write_back`] for when it does not).
    pub(super) fn write(
        &mut self,
        ino: u64,
        offset: u64,
        data: &[u8],
        times: bool,
    ) -> FsResult<usize> {
        let mut i = self.regular(ino)?;
        if data.is_empty() {
            return Ok(0); // a zero-length write changes nothing, not even the size
        }
        self.check_space(data.len())?;
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(FsError::FileTooBig)?;
        if end > MAX_FILE_SIZE {
            return Err(FsError::FileTooBig);
        }
        self.check_bytes_quota(end.saturating_sub(i.size))?;
        let mut pos = offset;
        while pos < end {
            let idx = pos / CS;
            let in_chunk = (pos % CS) as usize;
            let n = ((CS - pos % CS).min(end - pos)) as usize;
            // A write that covers a whole chunk, or everything of it up to EOF, need not read it.
            let covers = in_chunk == 0 && (n == CHUNK_SIZE || pos + n as u64 >= i.size);
            let src = &data[(pos - offset) as usize..][..n];
            let buf = self.buffer(ino, idx, covers)?;
            // Bytes from here to the write's end change (an append past the end zero-fills).
            let from = buf.len().min(in_chunk);
            if buf.len() <= in_chunk {
                // Appending: no zero fill of bytes about to be overwritten.
                buf.resize(in_chunk, 0);
                buf.extend_from_slice(src);
            } else {
                if buf.len() < in_chunk + n {
                    buf.resize(in_chunk + n, 0);
                }
                buf[in_chunk..in_chunk + n].copy_from_slice(src);
            }
            self.journal.touch((ino, idx), from, in_chunk + n);
            if in_chunk + n == CHUNK_SIZE {
                self.seal(ino, idx)?;
            }
            pos += n as u64;
        }
        i = self.inode(ino)?; // sealing updated alloc_bytes
        if end > i.size {
            self.sup.logical_bytes += end - i.size;
            i.size = end;
        }
        if times {
            let now = Timespec::now();
            i.mtime = now;
            i.ctime = now;
        }
        self.save(ino, i);
        if self.dirty_bytes > DIRTY_LIMIT {
            self.seal_all()?;
        }
        Ok(data.len())
    }

    /// Zeros `[start, end)` of a file: whole chunks become holes, partial ones are rewritten.
    pub(super) fn zero_range(&mut self, ino: u64, start: u64, end: u64) -> FsResult<()> {
        let mut pos = start;
        while pos < end {
            let idx = pos / CS;
            let in_chunk = (pos % CS) as usize;
            let n = ((CS - pos % CS).min(end - pos)) as usize;
            if n == CHUNK_SIZE {
                self.drop_buffer((ino, idx));
                self.set_extent(ino, idx, None)?;
            } else if self.chunks.contains_key(&(ino, idx)) || self.extent(ino, idx)?.is_some() {
                let buf = self.buffer(ino, idx, false)?;
                let stop = (in_chunk + n).min(buf.len());
                if in_chunk < stop {
                    buf[in_chunk..stop].fill(0);
                    self.journal.touch((ino, idx), in_chunk, stop);
                }
            }
            pos += n as u64;
        }
        Ok(())
    }

    pub(super) fn set_size(&mut self, ino: u64, size: u64) -> FsResult<()> {
        let i = self.regular(ino)?;
        if size > MAX_FILE_SIZE {
            return Err(FsError::FileTooBig);
        }
        self.check_bytes_quota(size.saturating_sub(i.size))?;
        if size < i.size {
            // Drop whole chunks past the new end, then cut the chunk it falls in.
            let first_dead = size.div_ceil(CS);
            let dead: Vec<_> = self
                .chunks
                .range((ino, first_dead)..=(ino, u64::MAX))
                .map(|(k, _)| *k)
                .collect();
            for k in dead {
                self.drop_buffer(k);
            }
            let (_, end) = keys::kind_range(ino, Kind::Extent);
            for k in self.keys_in(&keys::extent(ino, first_dead), &end)? {
                let idx = u64::from_be_bytes(k[9..17].try_into().expect("extent key"));
                self.set_extent(ino, idx, None)?;
            }
            let keep = (size % CS) as usize;
            if keep != 0 {
                let idx = size / CS;
                if self.chunks.contains_key(&(ino, idx)) || self.extent(ino, idx)?.is_some() {
                    self.buffer(ino, idx, false)?.truncate(keep);
                    self.journal.truncated((ino, idx), keep);
                }
            }
        }
        let mut i = self.inode(ino)?;
        self.sup.logical_bytes = self.sup.logical_bytes - i.size + size;
        i.size = size;
        let now = Timespec::now();
        i.mtime = now;
        i.ctime = now;
        self.save(ino, i);
        Ok(())
    }

    /// Chunk indexes from `from` on that hold data (stored or dirty), in order, up to `limit`.
    pub(super) fn data_chunks(&self, ino: u64, from: u64, limit: u64) -> FsResult<Vec<u64>> {
        let mut set: std::collections::BTreeSet<u64> = self
            .chunks
            .range((ino, from)..(ino, limit))
            .filter(|(_, b)| b.iter().any(|x| *x != 0))
            .map(|((_, i), _)| *i)
            .collect();
        let end = keys::extent(ino, limit);
        self.scan(&keys::extent(ino, from), &end, |k, _| {
            let idx = u64::from_be_bytes(k[9..17].try_into().expect("extent key"));
            if !self.chunks.contains_key(&(ino, idx)) {
                set.insert(idx);
            }
            Ok(true)
        })?;
        Ok(set.into_iter().collect())
    }
}
