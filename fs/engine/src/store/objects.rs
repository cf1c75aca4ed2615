//! Objects by hash: tree nodes (decoded, cached) and file data chunks, read and written.

use rocksdb::{ReadOptions, WriteBatch};
use std::sync::Arc;

use crate::error::{FsError, FsResult};
use crate::format::codec::{chunk_bytes, decode_chunk, encode_chunk};
use crate::format::hash::Hash;
use crate::format::node::Node;
use crate::remote::ObjectKind;

use super::segments::{Locator, PUBLISH_BYTES};
use super::{chunk_files, Store, CF_CHUNKS, CF_NODES};

/// Copies `data[from..]` into `dst`, and zeros past the end of `data` (a chunk or buffer
/// shorter than the span read: the file's bytes there are zeros).
pub(crate) fn copy_span(dst: &mut [u8], data: &[u8], from: usize) {
    let data = data.get(from..).unwrap_or_default();
    let m = dst.len().min(data.len());
    dst[..m].copy_from_slice(&data[..m]);
    dst[m..].fill(0);
}

/// Where [`Store::held`] found a chunk.
enum Held<R> {
    /// Appended and not published: its stored encoding, in memory.
    Pending(Arc<Vec<u8>>),
    /// In a segment file.
    Segment(Locator),
    /// Stored whole in RocksDB: what the caller made of it.
    Whole(R),
    /// Not in this store's database: in a cluster host's cache files, or the object store.
    Elsewhere,
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

    /// Where this store holds a chunk's stored encoding, looked for in the order a read
    /// must: pending in memory before the index (a publish indexes a chunk before it stops
    /// pending), then its `chunks` value. `whole` makes what the caller wants of a value
    /// stored whole while RocksDB pins it.
    fn held<R>(
        &self,
        hash: &Hash,
        ro: &ReadOptions,
        whole: impl FnOnce(&[u8]) -> FsResult<R>,
    ) -> FsResult<Held<R>> {
        if let Some(stored) = self.segments.as_ref().and_then(|s| s.pending(hash)) {
            return Ok(Held::Pending(stored));
        }
        let db = self.db()?;
        let Some(value) = db.get_pinned_cf_opt(db.cf(CF_CHUNKS), hash.0, ro)? else {
            return Ok(Held::Elsewhere);
        };
        if let Some(loc) = Locator::decode(&value) {
            return Ok(Held::Segment(loc));
        }
        self.cache_touch(hash);
        Ok(Held::Whole(whole(&value)?))
    }

    /// Reads a chunk and verifies it against its BLAKE3 address. RocksDB's own CRC check is
    /// skipped for chunks: the hash covers the same bytes, and is several times faster than the
    /// portable CRC32C this RocksDB build uses.
    pub fn get_chunk(&self, hash: &Hash) -> FsResult<Vec<u8>> {
        let mut ro = ReadOptions::default();
        ro.set_verify_checksums(false);
        let data = match self.held(hash, &ro, decode_chunk)? {
            Held::Pending(stored) => decode_chunk(&stored)?,
            Held::Segment(loc) => decode_chunk(&self.segments()?.read(hash, &loc)?)?,
            Held::Whole(data) => data,
            Held::Elsewhere => match self.file_chunk(hash) {
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
    /// the chunk is stored whole. The file read path: it checks the CRCs RocksDB and the
    /// segments keep (RocksDB's in hardware, see `.cargo/config.toml`), which cost a
    /// fraction of rehashing the chunk with BLAKE3 on every read; [`Store::get_chunk`]
    /// (fsck, read-modify-write) still rehashes.
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
        match self.held(hash, &ReadOptions::default(), |value| {
            copy_stored(dst, value)
        })? {
            Held::Pending(stored) => copy_stored(dst, &stored),
            Held::Whole(()) => Ok(()),
            // In a segment: the pages the read wants, straight into `dst` where it wants the
            // whole chunk (a sequential read does), checked against their CRCs.
            Held::Segment(loc) => {
                let segments = self.segments()?;
                if segments.read_raw(hash, &loc, len, from, dst)? {
                    return Ok(());
                }
                copy_stored(dst, &segments.read(hash, &loc)?)
            }
            Held::Elsewhere => {
                let stored = self
                    .fetch(ObjectKind::Chunk, hash)?
                    .ok_or_else(|| FsError::corrupt(format!("missing chunk {hash}")))?;
                copy_stored(dst, &stored)
            }
        }
    }

    fn segments(&self) -> FsResult<&super::segments::Segments> {
        self.segments
            .as_ref()
            .ok_or_else(|| FsError::corrupt("a chunk locator on a cluster host"))
    }

    /// Whether a chunk needs no writing. In cluster mode, never: a chunk cached here may be
    /// gone from the object store (collected) and another workspace's chunks may never be
    /// committed, so each overlay uploads every chunk it seals, and the upload skips what the
    /// object store holds.
    pub fn chunk_exists(&self, hash: &Hash) -> FsResult<bool> {
        if self.remote.is_some() {
            return Ok(false);
        }
        if self
            .segments
            .as_ref()
            .is_some_and(|s| s.pending(hash).is_some())
        {
            return Ok(true);
        }
        let db = self.db()?;
        let cf = db.cf(CF_CHUNKS);
        if !db.key_may_exist_cf(cf, hash.0) {
            return Ok(false);
        }
        let found = db.get_pinned_cf(cf, hash.0)?.is_some();
        Ok(found)
    }

    /// Appends chunks to the data dir's segment file, where reads find them at once; they
    /// are durable and indexed at the next publish ([`Store::publish_chunks`]), which every
    /// commit and journal entry that may name them makes first. Callers pin them first. In
    /// cluster mode they are staged for upload with workspace `owner`'s next commit.
    pub fn put_chunks<C: AsRef<[u8]>>(
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
        // A released store takes no writes: its successor owns the data dir.
        drop(self.db()?);
        let segments = self.segments()?;
        let mut pending = 0;
        for (h, data) in chunks {
            // A second copy would be space no collection finds (a seal racing a commit that
            // wrote the same chunk, or a file's chunks written again unchanged).
            if self.chunk_exists(h)? {
                continue;
            }
            pending = self.wrote_files(segments.append(*h, encode_chunk(data.as_ref())))?;
        }
        // Bounds what waits in memory between commits.
        if pending >= PUBLISH_BYTES {
            self.publish_chunks()?;
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

    /// Makes every chunk appended so far durable and indexed: syncs the segments they went
    /// to, then writes their locators with a synced WAL write, so no locator ever names bytes
    /// a crash could lose.
    pub(super) fn publish_chunks(&self) -> FsResult<()> {
        let Some(segments) = &self.segments else {
            return Ok(());
        };
        let _one = segments.publishing();
        let ready = self.wrote_files(segments.sync())?;
        if ready.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        {
            let db = self.db()?;
            for (h, loc) in &ready {
                batch.put_cf(db.cf(CF_CHUNKS), h.0, loc.encode());
            }
        }
        self.write(batch, true)?;
        segments.published(&ready);
        Ok(())
    }

    /// Deletes objects no root needs (the collector's sweep), and gives back the pages of
    /// the chunks among them that lie in segments, once their deletion is synced: a locator
    /// that outlived a crash must not name a hole.
    pub(crate) fn delete_objects(&self, cf_name: &str, hashes: &[Hash]) -> FsResult<()> {
        let mut batch = WriteBatch::default();
        let mut freed = Vec::new();
        {
            let db = self.db()?;
            let cf = db.cf(cf_name);
            for h in hashes {
                if cf_name == CF_CHUNKS {
                    // A chunk stored whole is read here too: a collection reads what it
                    // deletes of stores written before segments, never what it keeps.
                    if let Some(loc) = db.get_pinned_cf(cf, h.0)?.and_then(|v| Locator::decode(&v))
                    {
                        freed.push(loc);
                    }
                }
                batch.delete_cf(cf, h.0);
            }
        }
        self.write(batch, !freed.is_empty())?;
        if let Some(segments) = &self.segments {
            segments.free(&freed);
        }
        Ok(())
    }
}
