//! Objects by hash: tree nodes (decoded, cached) and file data chunks, read and written.

use rocksdb::{FlushOptions, ReadOptions, WriteOptions};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::error::{FsError, FsResult};
use crate::format::codec::{chunk_bytes, decode_chunk, encode_chunk};
use crate::format::hash::Hash;
use crate::format::node::Node;
use crate::remote::ObjectKind;

use super::{chunk_files, Store, CF_CHUNKS, CF_NODES};

/// Copies `data[from..]` into `dst`, and zeros past the end of `data` (a chunk or buffer
/// shorter than the span read: the file's bytes there are zeros).
pub(crate) fn copy_span(dst: &mut [u8], data: &[u8], from: usize) {
    let data = data.get(from..).unwrap_or_default();
    let m = dst.len().min(data.len());
    dst[..m].copy_from_slice(&data[..m]);
    dst[m..].fill(0);
}

impl Store {
    pub fn get_node(&self, hash: &Hash) -> FsResult<Arc<Node>> {
        if let Some(n) = self.nodes.get(hash) {
            return Ok(n);
        }
        let local = {
            let db = self.db()?;
            let found = db.get_pinned_cf(db.cf(CF_NODES), hash.0)?;
            match found {
                Some(bytes) => Some((Arc::new(Node::decode(&bytes)?), bytes.len())),
                None => None,
            }
        };
        let node = match local {
            Some((node, len)) => {
                self.cache_touch(hash);
                self.nodes.insert(*hash, node.clone(), len);
                node
            }
            None => {
                let bytes = self
                    .fetch(ObjectKind::Node, hash)?
                    .ok_or_else(|| FsError::corrupt(format!("missing node {hash}")))?;
                let node = Arc::new(Node::decode(&bytes)?);
                self.nodes.insert(*hash, node.clone(), bytes.len());
                node
            }
        };
        Ok(node)
    }

    /// The raw encoding of a node, for fsck.
    pub fn get_node_bytes(&self, hash: &Hash) -> FsResult<Option<Vec<u8>>> {
        let local = {
            let db = self.db()?;
            db.get_cf(db.cf(CF_NODES), hash.0)?
        };
        match local {
            Some(b) => Ok(Some(b)),
            None => Ok(self.fetch(ObjectKind::Node, hash)?.map(|b| b.to_vec())),
        }
    }

    /// Reads a chunk and verifies it against its BLAKE3 address. RocksDB's own CRC check is
    /// skipped for chunks: the hash covers the same bytes, and is several times faster than the
    /// portable CRC32C this RocksDB build uses.
    pub fn get_chunk(&self, hash: &Hash) -> FsResult<Vec<u8>> {
        let mut ro = ReadOptions::default();
        ro.set_verify_checksums(false);
        let db = self.db()?;
        let data = match db.get_pinned_cf_opt(db.cf(CF_CHUNKS), hash.0, &ro)? {
            Some(stored) => {
                self.cache_touch(hash);
                decode_chunk(&stored)?
            }
            None => match self.file_chunk(hash) {
                Some(stored) => decode_chunk(&stored)?,
                None => decode_chunk(
                    &self
                        .fetch(ObjectKind::Chunk, hash)?
                        .ok_or_else(|| FsError::corrupt(format!("missing chunk {hash}")))?,
                )?,
            },
        };
        if Hash::of(&data) != *hash {
            return Err(FsError::corrupt(format!(
                "chunk {hash} does not match its hash"
            )));
        }
        Ok(data)
    }

    /// Copies bytes `from..from + dst.len()` of a chunk of `len` bytes into `dst` (bytes past
    /// its end stay as they are: zeros), decoding straight from RocksDB's pinned value where
    /// the chunk is stored raw. The file read path: RocksDB checks the blob's CRC32C (in
    /// hardware, see `.cargo/config.toml`), which costs a fraction of rehashing the chunk
    /// with BLAKE3 on every read; [`Store::get_chunk`] (fsck, read-modify-write) still does.
    pub fn read_chunk(&self, hash: &Hash, len: usize, from: usize, dst: &mut [u8]) -> FsResult<()> {
        let wrong_length = || FsError::corrupt(format!("chunk {hash} has the wrong length"));
        let copy_stored = |dst: &mut [u8], stored: &[u8]| {
            let data = chunk_bytes(stored)?;
            if data.len() != len {
                return Err(wrong_length());
            }
            copy_span(dst, &data, from);
            Ok(())
        };
        if self.remote.is_some() {
            // Fetched ahead of this read and verified then: copied from memory.
            if let Some(stored) = self.fresh_chunk(hash) {
                return copy_stored(dst, &stored);
            }
            // Fetched earlier: one read from the cache's files, into `dst` itself where the
            // read wants the whole chunk (a sequential read does).
            if from == 0 && dst.len() == len && self.file_chunk_into(hash, dst) {
                return Ok(());
            }
            if let Some(stored) = self.file_chunk(hash) {
                return copy_stored(dst, &stored);
            }
        }
        let db = self.db()?;
        let Some(stored) = db.get_pinned_cf(db.cf(CF_CHUNKS), hash.0)? else {
            let stored = self
                .fetch(ObjectKind::Chunk, hash)?
                .ok_or_else(|| FsError::corrupt(format!("missing chunk {hash}")))?;
            return copy_stored(dst, &stored);
        };
        self.cache_touch(hash);
        copy_stored(dst, &stored)
    }

    /// Whether a chunk needs no writing. In cluster mode, never: a chunk cached here may be
    /// gone from the object store (collected) and another workspace's chunks may never be
    /// committed, so each overlay uploads every chunk it seals, and the upload skips what the
    /// object store holds.
    pub fn chunk_exists(&self, hash: &Hash) -> FsResult<bool> {
        if self.remote.is_some() {
            return Ok(false);
        }
        let db = self.db()?;
        let cf = db.cf(CF_CHUNKS);
        if !db.key_may_exist_cf(cf, hash.0) {
            return Ok(false);
        }
        let found = db.get_pinned_cf(cf, hash.0)?.is_some();
        Ok(found)
    }

    /// Writes chunks without the WAL: the bytes go to disk once, into blob files, at the next
    /// flush. Callers pin them first; [`Store::commit`] flushes before any root refers to them.
    /// In cluster mode they are staged for upload with workspace `owner`'s next commit.
    pub fn put_chunks_unlogged<C: AsRef<[u8]>>(
        &self,
        owner: Option<uuid::Uuid>,
        chunks: &[(Hash, C)],
    ) -> FsResult<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        if let (Some(_), Some(ws)) = (&self.remote, owner) {
            return self.stage_chunks(ws, chunks);
        }
        let db = self.db()?;
        let cf = db.cf(CF_CHUNKS);
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        // One put per chunk, not one batch: a batch of many MiB grows by doubling into fresh
        // pages (copies and page faults were a third of a sequential write's daemon CPU), and
        // unlogged chunk writes need no atomicity (they are pinned until a commit refers to them).
        for (h, data) in chunks {
            let encoded = encode_chunk(data.as_ref());
            let _counting = self.chunk_flushes.counting.read();
            self.wrote(db.put_cf_opt(cf, h.0, encoded, &wo))?;
            // After the put: a flush that takes it from the set started after it landed.
            self.unflushed.lock().insert(*h);
            // Counted after the write: a flush that starts after this count covers it.
            self.chunk_flushes.written.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Cluster mode: stages chunks for upload with workspace `ws`'s next commit. They go to
    /// the cache's files (one `pwrite` into the page cache), not RocksDB: no memtable insert,
    /// no flush that copies and checksums them and writes them around the page cache, and no
    /// read of them back from the disk for the upload (together a third of a large write's
    /// CPU on the host). Not durable here, and need not be: a crash loses them with the
    /// overlay they belong to, and a commit makes them durable in the object store.
    fn stage_chunks<C: AsRef<[u8]>>(&self, ws: uuid::Uuid, chunks: &[(Hash, C)]) -> FsResult<()> {
        let files = self
            .chunk_files
            .as_ref()
            .expect("a cluster host's chunk files");
        let mut written = Vec::with_capacity(chunks.len());
        let mut failed = Ok(());
        for (i, (h, data)) in chunks.iter().enumerate() {
            let encoded = encode_chunk(data.as_ref());
            if let Err(e) = files.put(h, &encoded) {
                failed = Err(e);
                break;
            }
            written.push((i, *h, chunk_files::footprint(encoded.len()) as u32));
            // Kept before it is staged: an upload that finds it staged finds it here too.
            self.keep_staged(*h, encoded);
        }
        // Those written are staged even if a later one failed: the next commit sends them
        // (the caller keeps the batch to stage again), and the cache then holds them.
        let staged = {
            let mut staged = self.staged.lock();
            let set = staged.entry(ws).or_default();
            set.extend(written.iter().map(|&(_, h, n)| (h, n)));
            set.len()
        };
        for &(i, h, _) in &written {
            // An eviction of a copy the cache held of the same chunk, before it was staged,
            // removed it: written again (evictions skip staged chunks, under the same lock).
            if !files.contains(&h) {
                files.put(&h, &encode_chunk(chunks[i].1.as_ref()))?;
            }
        }
        failed?;
        self.upload_ahead_later(ws, staged);
        Ok(())
    }

    /// Makes every unlogged chunk write that completed before this call durable. Every path
    /// that flushes `chunks` (commits, compaction) goes through here, and each flush records
    /// only the writes it was sure to cover: the count read *before* it started. A write that
    /// lands during a flush stays counted as unflushed, so the next commit flushes again.
    pub(super) fn flush_chunks(&self, always: bool) -> FsResult<()> {
        // A put another workspace's seal may have deduplicated against is in this count,
        // even one that has landed and is not counted yet: this waits for it.
        let covered = {
            let _counted = self.chunk_flushes.counting.write();
            self.chunk_flushes.written.load(Ordering::SeqCst)
        };
        if !always && self.chunk_flushes.flushed.load(Ordering::SeqCst) >= covered {
            return Ok(());
        }
        let mut fo = FlushOptions::default();
        fo.set_wait(true);
        {
            // Held throughout, so no heal runs between taking the set and putting it back.
            let db = self.db()?;
            // Chunks written from now on are not covered by this flush.
            let covering = std::mem::take(&mut *self.unflushed.lock());
            if let Err(e) = self.wrote(db.flush_cf_opt(db.cf(CF_CHUNKS), &fo)) {
                self.unflushed.lock().extend(covering);
                return Err(e);
            }
        }
        #[cfg(test)]
        if let Some(hook) = self.chunk_flushes.after_flush_hook.lock().take() {
            hook();
        }
        self.chunk_flushes
            .flushed
            .fetch_max(covered, Ordering::SeqCst);
        Ok(())
    }

    /// Whether some unlogged chunk write is not known to be flushed.
    pub fn chunks_unflushed(&self) -> bool {
        self.chunk_flushes.flushed.load(Ordering::SeqCst)
            < self.chunk_flushes.written.load(Ordering::SeqCst)
    }
}
