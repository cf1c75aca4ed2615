//! Cluster mode: objects fetched from the object store and kept here, bounded (least recently
//! used first), with reads that wait for a fetch already in flight instead of asking again;
//! and chunks uploaded before a root may refer to them.

use bytes::Bytes;
use indexmap::IndexMap;
use rocksdb::WriteOptions;
use std::collections::HashSet;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;

use crate::error::{FsError, FsResult};
use crate::format::codec::chunk_bytes;
use crate::format::hash::Hash;
use crate::remote::{CommitToken, ObjectKind, Remote};

use super::{chunk_files, kind_cf, Store, CF_NODES};

/// Cluster mode: how long a commit uploads again while collections keep starting sweeps
/// during its upload, before it fails.
pub(super) const STALE_RETRY_FOR: Duration = Duration::from_secs(60);

/// A sequential reader's read-ahead is fetched in pieces, side by side on the prefetch threads,
/// each released to the reader when it is here: a piece is the chunks the object store keeps
/// together ([`Remote::group`]: a pack, 8 MiB), at most this many.
const READ_AHEAD_PIECE: usize = 256;

/// Cluster mode: chunks of read-ahead pieces are also held in memory, the latest this many
/// bytes of them (half the read-ahead, what the eight piece threads hold in flight): the
/// reader they were fetched for copies them from here, without waiting for their write into
/// the cache or reading them back out of it (those it finds gone, it reads from the cache's
/// files, still in the page cache).
const FRESH_BYTES: usize = 64 << 20;
/// ... and at most this many of them (a sequential reader's chunks are mostly full ones).
const FRESH_CHUNKS: usize = 4096;

/// Where prefetch jobs go: read-ahead pieces, which readers wait for, to threads of their own,
/// never queued behind directory walks (each of which takes several round trips); whole-tree
/// hydrations, the least urgent, to one thread of their own.
pub(crate) struct PrefetchQueues {
    pub(crate) pieces: SyncSender<PrefetchJob>,
    pub(crate) walks: SyncSender<PrefetchJob>,
    pub(crate) hydrations: SyncSender<PrefetchJob>,
}

/// What the prefetcher fetches ahead of reads.
pub(crate) enum PrefetchJob {
    /// Chunks, by hash, marked in flight by [`Store::read_ahead_later`].
    Marked(Vec<Hash>),
    /// The children of directory `dir` in the tree at `root`: their records, then the first
    /// chunks of their files.
    Dir { root: Hash, dir: u64 },
    /// The whole tree at `root` (see `remote/hydrate.rs`).
    Hydrate(Hash),
}

/// A cluster host's object cache: bytes held, the bound, and reads served locally (`hits`)
/// or fetched from the object store (`misses`) since start.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CacheStats {
    pub bytes: u64,
    pub limit: u64,
    pub hits: u64,
    pub misses: u64,
    /// Of the misses, objects fetched ahead of a read (see `prefetch.rs`).
    pub prefetched: u64,
}

/// Chunks fetched ahead of reads, verified, as stored (codec byte first), oldest first (see
/// [`FRESH_BYTES`]).
#[derive(Default)]
pub(super) struct FreshChunks {
    chunks: IndexMap<Hash, Bytes>,
    bytes: usize,
}

impl FreshChunks {
    fn insert(&mut self, hash: Hash, data: Bytes) {
        self.bytes += data.len();
        if let Some(old) = self.chunks.insert(hash, data) {
            self.bytes -= old.len();
        }
        while self.bytes > FRESH_BYTES || self.chunks.len() > FRESH_CHUNKS {
            let Some((_, old)) = self.chunks.shift_remove_index(0) else {
                break;
            };
            self.bytes -= old.len();
        }
    }
}

impl Store {
    /// Cluster mode: a chunk the prefetcher fetched lately, if memory still holds it.
    pub(super) fn fresh_chunk(&self, hash: &Hash) -> Option<Bytes> {
        let data = self.fresh.lock().chunks.get(hash).cloned()?;
        self.cache_touch(hash);
        Some(data)
    }

    /// Cluster mode: a fetched chunk kept in the cache's files, checked, as stored.
    pub(super) fn file_chunk(&self, hash: &Hash) -> Option<Vec<u8>> {
        let stored = self.chunk_files.as_ref()?.get(hash)?;
        self.cache_touch(hash);
        Some(stored)
    }

    /// Cluster mode: a fetched chunk stored raw, read from the cache's files straight into
    /// `dst`, which it must fill exactly (see [`ChunkFiles::read_raw_into`]).
    pub(super) fn file_chunk_into(&self, hash: &Hash, dst: &mut [u8]) -> bool {
        let read = self
            .chunk_files
            .as_ref()
            .is_some_and(|f| f.read_raw_into(hash, dst));
        if read {
            self.cache_touch(hash);
        }
        read
    }

    /// Cluster mode: an object missing here, from the object store (checked against its
    /// hash, then cached here). `None` without a cluster or if the object store lacks it.
    pub(super) fn fetch(&self, kind: ObjectKind, hash: &Hash) -> FsResult<Option<Bytes>> {
        let Some(remote) = &self.remote else {
            return Ok(None);
        };
        if self.wait_in_flight(hash) {
            // A read-ahead piece wakes its readers before it writes into the cache. (A node
            // may share its hash with a chunk: a file holding its encoding.)
            if kind == ObjectKind::Chunk {
                if let Some(stored) = self.fresh_chunk(hash) {
                    return Ok(Some(stored));
                }
                if let Some(stored) = self.file_chunk(hash) {
                    return Ok(Some(stored.into()));
                }
            }
            let db = self.db()?;
            let local = db.get_cf(db.cf(kind_cf(kind)), hash.0)?;
            drop(db);
            if let Some(bytes) = local {
                self.cache_touch(hash);
                return Ok(Some(bytes.into()));
            }
        }
        let Some(bytes) = remote.get_object(kind, hash)? else {
            return Ok(None);
        };
        self.admit(kind, hash, &bytes)?;
        self.cache.lock().misses += 1;
        Ok(Some(bytes))
    }

    /// Waits while a prefetch fetches `hash`; whether it did.
    pub(super) fn wait_in_flight(&self, hash: &Hash) -> bool {
        let mut in_flight = self.in_flight.lock();
        if !in_flight.contains(hash) {
            return false;
        }
        // One deadline: every finished fetch wakes every waiter.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while in_flight.contains(hash) {
            if self
                .fetched
                .wait_until(&mut in_flight, deadline)
                .timed_out()
            {
                break;
            }
        }
        true
    }

    /// Checks an object from the object store against its hash and caches it here (a
    /// failed cache write only costs a later fetch).
    pub(super) fn admit(&self, kind: ObjectKind, hash: &Hash, bytes: &[u8]) -> FsResult<()> {
        verify(kind, hash, bytes)?;
        if let Err(e) = self.cache_put(kind, hash, bytes) {
            tracing::warn!("caching {hash}: {e}");
        }
        Ok(())
    }

    /// Caches a verified object here.
    fn cache_put(&self, kind: ObjectKind, hash: &Hash, bytes: &[u8]) -> FsResult<()> {
        // The cache leaves twice the reserve free, so it never takes the room writes need.
        // Past that it only costs the copy: the read goes on from memory, and the cache
        // shrinks to what it holds, so later objects take the place of older ones.
        if let Err(FsError::NoSpace) = self.check_space(bytes.len() as u64 + self.reserve_bytes) {
            let mut c = self.cache.lock();
            if c.limit > c.bytes {
                tracing::warn!(
                    "the cache disk is full: the object cache shrinks to {} MiB",
                    c.bytes >> 20
                );
                c.limit = c.bytes;
            }
            return Ok(());
        }
        let held = match (&self.chunk_files, kind) {
            (Some(files), ObjectKind::Chunk) => {
                files.put(hash, bytes)?;
                chunk_files::footprint(bytes.len())
            }
            _ => {
                let mut wo = WriteOptions::default();
                wo.disable_wal(true);
                let db = self.db()?;
                db.put_cf_opt(db.cf(kind_cf(kind)), hash.0, bytes, &wo)?;
                bytes.len()
            }
        };
        self.cache_insert(kind, *hash, held);
        Ok(())
    }

    /// Cluster mode: fetches, in parallel, the objects of `hashes` not held here (see
    /// `prefetch.rs`). Errors are left to the reads that need the objects.
    pub(crate) fn prefetch(&self, kind: ObjectKind, hashes: &[Hash]) {
        let wanted = self.mark_in_flight(kind, hashes);
        self.fetch_marked(kind, &wanted, false);
    }

    /// Cluster mode: the chunks of one read, those not held here fetched together (a request
    /// per stretch of a pack) before the read copies them one by one. A read the kernel
    /// makes of a file's middle (an mmap's fault, a reader that seeks) follows no earlier
    /// read and gets no read-ahead: fetched each alone, the 16 chunks of a 1 MiB read cost 16
    /// round trips in a row (a cold `git status` read its 1.5 MB index so, in 0.54-0.71 s).
    /// On one host it does nothing, and collects nothing.
    pub(crate) fn fetch_together(&self, hashes: impl Iterator<Item = Hash>) {
        if self.remote.is_some() {
            self.prefetch(ObjectKind::Chunk, &hashes.collect::<Vec<_>>());
        }
    }

    /// Marks the objects of `hashes` neither held here nor already in flight as in flight:
    /// a read that needs one waits for its fetch ([`Store::wait_in_flight`]) instead of asking
    /// the object store again. Whoever marks them fetches them ([`Store::fetch_marked`]).
    pub(crate) fn mark_in_flight(&self, kind: ObjectKind, hashes: &[Hash]) -> Vec<Hash> {
        if self.remote.is_none() {
            return Vec::new();
        }
        let Ok(db) = self.db() else {
            return Vec::new();
        };
        let cf = db.cf(kind_cf(kind));
        // Looked up without the locks, which every read takes: an object stored meanwhile
        // is only fetched twice.
        let in_files = |h: &Hash| {
            kind == ObjectKind::Chunk && self.chunk_files.as_ref().is_some_and(|f| f.contains(h))
        };
        let missing: Vec<Hash> = hashes
            .iter()
            .filter(|h| {
                let cached = (kind == ObjectKind::Node && self.nodes.get(h).is_some())
                    || in_files(h)
                    || (db.key_may_exist_cf(cf, h.0)
                        && matches!(db.get_pinned_cf(cf, h.0), Ok(Some(_))));
                !cached
            })
            .copied()
            .collect();
        drop(db);
        let fresh = self.fresh.lock();
        let mut in_flight = self.in_flight.lock();
        missing
            .into_iter()
            // In memory (fetched, in the cache soon), or being fetched.
            .filter(|h| !fresh.chunks.contains_key(h) && in_flight.insert(*h))
            .collect()
    }

    /// Fetches objects [`Store::mark_in_flight`] marked, caches them, and clears their marks
    /// (waking the reads that wait for them), whether or not the fetch succeeded. A
    /// read-ahead piece (`hand_over`) goes to memory first, and its readers are woken before
    /// its writes into the cache; other objects' readers, each as soon as it is cached.
    pub(crate) fn fetch_marked(&self, kind: ObjectKind, wanted: &[Hash], hand_over: bool) {
        let Some(remote) = &self.remote else {
            return;
        };
        if wanted.is_empty() {
            return;
        }
        // Cleared however this ends (a panic included): a mark left set holds readers. Marks
        // cleared one by one leave the set, so a read-ahead that marks one again keeps it.
        struct Clear<'a>(&'a Store, HashSet<Hash>);
        impl Drop for Clear<'_> {
            fn drop(&mut self) {
                self.0.clear_in_flight(&self.1.drain().collect::<Vec<_>>());
            }
        }
        let mut clear = Clear(self, wanted.iter().copied().collect());
        let objects = match remote.get_objects(kind, wanted) {
            Ok(objects) => objects,
            Err(e) => return tracing::debug!("prefetch: {e}"),
        };
        let verified = wanted.iter().zip(objects).filter_map(|(h, bytes)| {
            let bytes = bytes?;
            verify(kind, h, &bytes)
                .map_err(|e| tracing::warn!("prefetch: {e}"))
                .ok()?;
            Some((h, bytes))
        });
        let cache_put = |h: &Hash, bytes: &[u8]| {
            if let Err(e) = self.cache_put(kind, h, bytes) {
                tracing::warn!("prefetch: {e}");
            }
        };
        let mut n = 0;
        if hand_over && kind == ObjectKind::Chunk {
            let verified: Vec<_> = verified.collect();
            let mut fresh = self.fresh.lock();
            for (h, bytes) in &verified {
                fresh.insert(**h, bytes.clone());
            }
            drop(fresh);
            drop(clear);
            for (h, bytes) in &verified {
                cache_put(h, bytes);
                n += 1;
            }
        } else {
            for (h, bytes) in verified {
                cache_put(h, &bytes);
                clear.1.remove(h);
                self.clear_in_flight(std::slice::from_ref(h));
                n += 1;
            }
        }
        let mut c = self.cache.lock();
        c.misses += n;
        c.prefetched += n;
    }

    fn clear_in_flight(&self, hashes: &[Hash]) {
        let mut in_flight = self.in_flight.lock();
        for h in hashes {
            in_flight.remove(h);
        }
        self.fetched.notify_all();
    }

    /// Cluster mode: queues a prefetch for the background thread (`remote/prefetch.rs`); a
    /// job that finds the queue full is dropped, and the read fetches on its own.
    pub(crate) fn prefetch_later(&self, job: PrefetchJob) {
        if let Some(queues) = self.prefetcher.get() {
            let _ = queues.walks.try_send(job);
        }
    }

    /// Cluster mode: queues a hydration of the tree at `root` (`remote/hydrate.rs`) for the
    /// background; dropped if several are waiting already.
    pub fn hydrate_later(&self, root: Hash) {
        if let Some(queues) = self.prefetcher.get() {
            let _ = queues.hydrations.try_send(PrefetchJob::Hydrate(root));
        }
    }

    /// Cluster mode: queues a fetch of a file's next chunks, marked in flight at once (so the
    /// reader, about to need the first of them, waits for the batch instead of fetching each
    /// alone). A job the full queue drops is unmarked.
    pub(crate) fn read_ahead_later(&self, hashes: &[Hash]) {
        let Some(queues) = self.prefetcher.get() else {
            return;
        };
        let marked = self.mark_in_flight(ObjectKind::Chunk, hashes);
        // In pieces, fetched side by side, each released to the reader when it is here.
        for piece in self.group(ObjectKind::Chunk, &marked, READ_AHEAD_PIECE) {
            if let Err(
                TrySendError::Full(PrefetchJob::Marked(piece))
                | TrySendError::Disconnected(PrefetchJob::Marked(piece)),
            ) = queues.pieces.try_send(PrefetchJob::Marked(piece))
            {
                self.clear_in_flight(&piece);
            }
        }
    }

    /// Groups objects by where the object store keeps them, at most `max` in a group (see
    /// [`Remote::group`]).
    pub(crate) fn group(&self, kind: ObjectKind, hashes: &[Hash], max: usize) -> Vec<Vec<Hash>> {
        match &self.remote {
            Some(remote) => remote.group(kind, hashes, max),
            None => hashes.chunks(max.max(1)).map(<[Hash]>::to_vec).collect(),
        }
    }

    /// Cluster mode: where [`Store::prefetch_later`] sends its jobs.
    pub(crate) fn set_prefetcher(&self, queues: PrefetchQueues) {
        let _ = self.prefetcher.set(queues);
    }

    /// Cluster mode: records an object as cached (uploaded or fetched) and evicts the least
    /// recently used ones past the limit. Chunks not uploaded yet are never evicted.
    pub(super) fn cache_insert(&self, kind: ObjectKind, hash: Hash, len: usize) {
        if self.remote.is_none() {
            return;
        }
        let evicted = {
            let mut c = self.cache.lock();
            if let Some((_, old)) = c.lru.put(hash, (kind, len as u32)) {
                c.bytes -= u64::from(old);
            }
            c.bytes += len as u64;
            let mut out = Vec::new();
            while c.bytes > c.limit {
                let Some((h, (k, n))) = c.lru.pop_lru() else {
                    break;
                };
                c.bytes -= u64::from(n);
                out.push((h, k));
            }
            out
        };
        if evicted.is_empty() {
            return;
        }
        // A chunk a workspace staged again since it was cached stays for its upload. The
        // files drop the others under the staged lock, so a chunk staged meanwhile is either
        // seen staged here or found missing by its staging, which writes it again.
        let staged = self.staged.lock();
        let evicted: Vec<(Hash, ObjectKind)> = evicted
            .into_iter()
            .filter(|(h, _)| !staged.values().any(|s| s.contains_key(h)))
            .collect();
        // Whatever kind the entry was last recorded as: a chunk and a node may share a hash.
        // The disk space goes back once the staged lock is released: stagings need not wait
        // for the punches.
        let removed = self.chunk_files.as_ref().map(|files| {
            let hashes: Vec<Hash> = evicted.iter().map(|(h, _)| *h).collect();
            files.remove(&hashes)
        });
        drop(staged);
        if let Some(removed) = removed {
            removed.release();
        }
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        for (h, k) in &evicted {
            let deleted = self
                .db()
                .and_then(|db| Ok(db.delete_cf_opt(db.cf(kind_cf(*k)), h.0, &wo)?));
            if let Err(e) = deleted {
                tracing::warn!("evicting {h} from the cache: {e}");
            }
        }
    }

    pub(super) fn cache_touch(&self, hash: &Hash) {
        if self.remote.is_some() {
            let mut c = self.cache.lock();
            c.lru.promote(hash);
            c.hits += 1;
        }
    }

    /// Cluster mode: writes the cache's files out to the disk and waits. A warm-up ends with
    /// it, so the session's reads that follow do not share the disk with the kernel's
    /// write-back of what the warm-up fetched.
    pub fn write_out_cache(&self) -> FsResult<()> {
        self.chunk_files
            .as_ref()
            .map_or(Ok(()), |files| files.sync())
    }

    /// Cluster mode: the object cache's figures.
    pub fn cache_stats(&self) -> CacheStats {
        let c = self.cache.lock();
        CacheStats {
            bytes: c.bytes,
            limit: c.limit,
            hits: c.hits,
            misses: c.misses,
            prefetched: c.prefetched,
        }
    }

    pub fn is_cluster(&self) -> bool {
        self.remote.is_some()
    }

    /// Cluster mode: uploads `nodes` and every chunk staged for `owner` (read as the upload
    /// goes), before a root may refer to them. They stay staged until the
    /// commit succeeds.
    pub(super) fn upload(
        &self,
        remote: &dyn Remote,
        owner: Option<uuid::Uuid>,
        nodes: &[(Hash, Vec<u8>)],
        token: CommitToken,
    ) -> FsResult<Vec<(Hash, u32)>> {
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        {
            let db = self.db()?;
            for (h, bytes) in nodes {
                db.put_cf_opt(db.cf(CF_NODES), h.0, bytes, &wo)?;
            }
        }
        let staged: Vec<(Hash, u32)> = owner
            .and_then(|ws| {
                let staged = self.staged.lock();
                Some(staged.get(&ws)?.iter().map(|(h, n)| (*h, *n)).collect())
            })
            .unwrap_or_default();
        let hashes: Vec<Hash> = staged.iter().map(|(h, _)| *h).collect();
        // Chunks sent ahead (`ahead.rs`) are in the object store still, unless a collection
        // started since: then every staged chunk is offered again.
        let offered = match owner {
            Some(ws) => self.not_sent_ahead(ws, token, &hashes),
            None => Vec::new(),
        };
        // Nodes and chunks in one upload, the chunks read as it goes.
        let mut nodes_then_chunks = nodes
            .iter()
            .map(|(h, b)| FsResult::Ok((ObjectKind::Node, *h, b.clone())))
            .chain(offered.iter().map(|h| {
                let stored = self
                    .staged_chunk(h)?
                    .ok_or_else(|| FsError::corrupt(format!("staged chunk {h} is missing")))?;
                Ok((ObjectKind::Chunk, *h, stored))
            }));
        remote.put_objects(&mut nodes_then_chunks, token)?;
        for (h, b) in nodes {
            self.cache_insert(ObjectKind::Node, *h, b.len());
        }
        Ok(staged)
    }

    /// Cluster mode: uploads what a new root of `owner` refers to and then writes the root
    /// with `write_root`, again from the upload if a collection started in between (its
    /// sweep may have deleted an object the upload found present). A success unstages the
    /// workspace's chunks, now in the object store and referenced.
    pub(super) fn upload_and_write_root(
        &self,
        remote: &dyn Remote,
        owner: Option<uuid::Uuid>,
        nodes: &[(Hash, Vec<u8>)],
        write_root: impl Fn(CommitToken) -> FsResult<()>,
    ) -> FsResult<()> {
        // Each refusal means a sweep started during the upload; sweeps are rare (one per
        // `--gc-interval`), so this gives up only if collections run back to back.
        let started = std::time::Instant::now();
        // Never beside an upload ahead of this workspace's (`ahead.rs`): both would pack
        // the same chunks.
        let lock = owner.map(|ws| self.upload_lock(ws));
        let _one = lock.as_ref().map(|l| l.commit());
        let uploaded = loop {
            let token = remote.begin_commit()?;
            let written = self
                .upload(remote, owner, nodes, token)
                .and_then(|uploaded| write_root(token).map(|()| uploaded));
            match written {
                Err(FsError::Stale) if started.elapsed() < STALE_RETRY_FOR => {
                    tracing::info!("a collection started during the upload: uploading again");
                }
                Err(FsError::Stale) => {
                    return Err(FsError::Storage(format!(
                        "collections kept starting during this commit's upload for {:?}",
                        STALE_RETRY_FOR
                    )))
                }
                Err(e) => return Err(e),
                Ok(uploaded) => break uploaded,
            }
        };
        if let Some(ws) = owner {
            if let Some(set) = self.staged.lock().get_mut(&ws) {
                let uploaded: HashSet<&Hash> = uploaded.iter().map(|(h, _)| h).collect();
                set.retain(|h, _| !uploaded.contains(h));
            }
            self.reset_ahead(ws, false);
            // Now the cache's to keep or evict, at the footprints recorded when staged.
            for (h, len) in uploaded {
                // Kept bytes a staging of the same chunk left after its upload took them.
                self.take_staged(&h);
                self.cache_insert(ObjectKind::Chunk, h, len as usize);
            }
        }
        Ok(())
    }
}

/// Checks an object from the object store against its hash.
fn verify(kind: ObjectKind, hash: &Hash, bytes: &[u8]) -> FsResult<()> {
    let matches = match kind {
        ObjectKind::Node => Hash::of(bytes) == *hash,
        ObjectKind::Chunk => Hash::of(&chunk_bytes(bytes)?) == *hash,
    };
    if !matches {
        return Err(FsError::corrupt(format!(
            "object {hash} from the object store does not match its hash"
        )));
    }
    Ok(())
}
