//! Root pointers (a workspace's or a snapshot's state), pins that keep objects from the
//! collector, open workspaces, and the upper layer's records written with root changes.

use rocksdb::{WriteBatch, WriteOptions};
use std::sync::atomic::Ordering;

use crate::error::{FsError, FsResult};
use crate::format::codec::encode_chunk;
use crate::format::hash::Hash;
use crate::format::journal as journal_format;
use crate::format::roots::{MetaOp, RootId, RootRecord};
use crate::remote::MetaChange;

use crate::format::records::Timespec;

use super::{Pins, Store, CF_CHUNKS, CF_META, CF_NODES, FORMAT_KEY};

/// Record keys may not collide with root pointers, journal entries or the format record.
pub(super) fn check_meta(ops: &[MetaOp]) -> FsResult<()> {
    let own = [RootId::PREFIX, journal_format::PREFIX, FORMAT_KEY[0]];
    if ops
        .iter()
        .any(|(k, _)| k.first().is_some_and(|b| own.contains(b)))
    {
        return Err(FsError::Invalid("meta key collides with the store's own"));
    }
    Ok(())
}

/// Chunk writes at commit smaller than this go through the WAL with the commit; larger ones
/// are written once to blob files (no WAL) and flushed before the commit's root is written.
pub(super) const SMALL_COMMIT_BYTES: usize = 1 << 20;

impl Store {
    /// Marks hashes as in use by a write in flight; the GC will not delete them.
    pub fn pin(&self, hashes: impl IntoIterator<Item = Hash>) {
        let mut p = self.pins.lock();
        let Pins { counts, gc_protect } = &mut *p;
        for h in hashes {
            *counts.entry(h).or_insert(0) += 1;
            if let Some(protect) = gc_protect.as_mut() {
                protect.insert(h);
            }
        }
    }

    pub fn unpin(&self, hashes: impl IntoIterator<Item = Hash>) {
        let mut p = self.pins.lock();
        for h in hashes {
            if let Some(c) = p.counts.get_mut(&h) {
                *c -= 1;
                if *c == 0 {
                    p.counts.remove(&h);
                }
            }
        }
    }

    pub fn get_root(&self, id: RootId) -> FsResult<Option<RootRecord>> {
        if let Some(remote) = &self.remote {
            return remote.get_root(id);
        }
        let db = self.db()?;
        let found = db.get_pinned_cf(db.cf(CF_META), id.key())?;
        match found {
            Some(v) => Ok(Some(crate::format::records::decode(&v)?)),
            None => Ok(None),
        }
    }

    pub fn list_roots(&self) -> FsResult<Vec<(RootId, RootRecord)>> {
        if let Some(remote) = &self.remote {
            return remote.list_roots();
        }
        let mut out = Vec::new();
        let db = self.db()?;
        let iter = db.prefix_iterator_cf(db.cf(CF_META), [RootId::PREFIX]);
        for item in iter {
            let (k, v) = item?;
            if k.first() != Some(&RootId::PREFIX) {
                break;
            }
            let id = RootId::from_key(&k).ok_or_else(|| FsError::corrupt("bad root key"))?;
            out.push((id, crate::format::records::decode(&v)?));
        }
        Ok(out)
    }

    /// Writes a new root for `id` together with the nodes and chunks it introduces, in one
    /// batch. Chunks too large for the WAL go to the segments, and every chunk appended there
    /// is published first, so the root never becomes durable before the objects it references. With `drop_journal`, the
    /// write is synced and the workspace's fsync journal deleted after it (the root now holds
    /// all it held).
    pub fn commit<C: AsRef<[u8]>>(
        &self,
        id: RootId,
        record: &RootRecord,
        nodes: &[(Hash, Vec<u8>)],
        chunks: &[(Hash, C)],
        sync: bool,
        drop_journal: bool,
    ) -> FsResult<()> {
        if let Some(remote) = &self.remote {
            let RootId::Workspace(ws) = id else {
                return Err(FsError::Invalid("only workspaces commit"));
            };
            self.put_chunks(Some(ws), chunks)?;
            return self.upload_and_write_root(remote.as_ref(), Some(ws), nodes, |token| {
                remote.commit_root(ws, record, token)
            });
        }
        let chunk_bytes: usize = chunks.iter().map(|(_, c)| c.as_ref().len()).sum();
        let mut batch = WriteBatch::default();
        if chunk_bytes > SMALL_COMMIT_BYTES {
            self.put_chunks(None, chunks)?;
        } else {
            let db = self.db()?;
            for (h, data) in chunks {
                batch.put_cf(db.cf(CF_CHUNKS), h.0, encode_chunk(data.as_ref()));
            }
        }
        self.publish_chunks()?;
        {
            // A batch names column families by id, so it outlives the handles.
            let db = self.db()?;
            for (h, bytes) in nodes {
                batch.put_cf(db.cf(CF_NODES), h.0, bytes);
            }
            batch.put_cf(
                db.cf(CF_META),
                id.key(),
                crate::format::records::encode(record),
            );
        }
        let _roots = self.roots_lock.lock();
        if let RootId::Workspace(_) = id {
            if self.get_root(id)?.is_none() {
                return Err(FsError::NotFound);
            }
        }
        match (drop_journal, id) {
            // Synced before the journal goes: the root now holds all it held.
            (true, RootId::Workspace(_)) => {
                self.write(batch, true)?;
                self.drop_stale_journals(&[id]);
                Ok(())
            }
            _ => self.write(batch, sync),
        }
    }

    /// Drops the journals of the workspaces among `ids` once a synced root write made them
    /// stale (or, for a new root, made sure no journal of its id can apply to it). One that
    /// fails to go stays stale: replay ignores it, the next commit deletes it.
    fn drop_stale_journals(&self, ids: &[RootId]) {
        let ws: Vec<uuid::Uuid> = ids
            .iter()
            .filter_map(|id| match id {
                RootId::Workspace(ws) => Some(*ws),
                _ => None,
            })
            .collect();
        if let Err(e) = self.drop_journal(&ws) {
            tracing::warn!("deleting the stale fsync journals of {ws:?}: {e}");
        }
    }

    pub(crate) fn write(&self, batch: WriteBatch, sync: bool) -> FsResult<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        let db = self.db()?;
        self.wrote(db.write_opt(batch, &wo))
    }

    /// Makes every write so far durable (WAL fsync).
    pub fn sync_wal(&self) -> FsResult<()> {
        let db = self.db()?;
        self.wrote(db.flush_wal(true))?;
        Ok(())
    }

    /// Points a new root id at `record`, writing the nodes it introduces.
    pub(crate) fn create_root(
        &self,
        id: RootId,
        record: &RootRecord,
        nodes: &[(Hash, Vec<u8>)],
        meta: &[MetaOp],
    ) -> FsResult<()> {
        let hashes: Vec<Hash> = nodes.iter().map(|(h, _)| *h).chain([record.root]).collect();
        self.pin(hashes.iter().copied());
        let result = (|| {
            if let Some(remote) = &self.remote {
                check_meta(meta)?;
                return self.upload_and_write_root(remote.as_ref(), None, nodes, |token| {
                    remote.create_root(id, record, meta, token)
                });
            }
            let _roots = self.roots_lock.lock();
            if self.get_root(id)?.is_some() {
                return Err(FsError::Exists);
            }
            let mut batch = WriteBatch::default();
            let db = self.db()?;
            for (h, bytes) in nodes {
                batch.put_cf(db.cf(CF_NODES), h.0, bytes);
            }
            batch.put_cf(
                db.cf(CF_META),
                id.key(),
                crate::format::records::encode(record),
            );
            self.add_meta(&mut batch, meta)?;
            self.write(batch, true)?;
            self.drop_stale_journals(&[id]);
            Ok(())
        })();
        self.unpin(hashes);
        result
    }

    /// Points every `dsts` root at `src`'s root: clone (of one or many), snapshot and
    /// restore. One small write (with `meta`), all or none, and atomic with respect to a
    /// collection's start (see `gc.rs`).
    pub(crate) fn copy_root(
        &self,
        src: RootId,
        dsts: &[RootId],
        dst_exists: bool,
        meta: &[MetaOp],
    ) -> FsResult<RootRecord> {
        if let Some(remote) = &self.remote {
            check_meta(meta)?;
            return remote.copy_root(src, dsts, dst_exists, meta);
        }
        let _roots = self.roots_lock.lock();
        let mut record = self.get_root(src)?.ok_or(FsError::NotFound)?;
        record.committed_at = Timespec::now();
        let mut batch = WriteBatch::default();
        let db = self.db()?;
        for dst in dsts {
            let old = self.get_root(*dst)?;
            if old.is_some() != dst_exists {
                return Err(if dst_exists {
                    FsError::NotFound
                } else {
                    FsError::Exists
                });
            }
            if let Some(old) = old {
                record.generation = record.generation.max(old.generation) + 1;
            }
            batch.put_cf(
                db.cf(CF_META),
                dst.key(),
                crate::format::records::encode(&record),
            );
        }
        self.add_meta(&mut batch, meta)?;
        self.write(batch, true)?;
        // A restore replaces the state fsyncs journaled over, journal and all (and a clone's
        // new id has none, whatever a workspace of that id left).
        self.drop_stale_journals(dsts);
        Ok(record)
    }

    /// Starts a collection: from now on every pinned hash is also kept in the protect set,
    /// which starts with every hash pinned now. Returns the roots to mark from.
    pub(crate) fn begin_gc(&self) -> FsResult<Vec<(RootId, RootRecord)>> {
        if self.remote.is_some() {
            // Its roots are the cluster's: a local sweep would see none and free everything.
            return Err(FsError::Busy(
                "a cluster host's objects are collected across the cluster".into(),
            ));
        }
        let _roots = self.roots_lock.lock();
        {
            let mut p = self.pins.lock();
            if p.gc_protect.is_some() {
                return Err(FsError::Busy("a collection is already running".into()));
            }
            p.gc_protect = Some(p.counts.keys().copied().collect());
        }
        self.released_bytes.store(0, Ordering::SeqCst);
        match self.list_roots() {
            Ok(r) => Ok(r),
            Err(e) => {
                self.end_gc();
                Err(e)
            }
        }
    }

    pub(crate) fn end_gc(&self) {
        self.pins.lock().gc_protect = None;
    }

    /// Deletes every root of `ids` and applies `meta`, all or nothing.
    pub(crate) fn delete_roots(&self, ids: &[RootId], meta: &[MetaOp]) -> FsResult<()> {
        if let Some(remote) = &self.remote {
            check_meta(meta)?;
            return remote.delete_roots(ids, meta);
        }
        let _roots = self.roots_lock.lock();
        let mut batch = WriteBatch::default();
        let db = self.db()?;
        for id in ids {
            if self.get_root(*id)?.is_none() {
                return Err(FsError::NotFound);
            }
            batch.delete_cf(db.cf(CF_META), id.key());
        }
        self.add_meta(&mut batch, meta)?;
        self.write(batch, true)?;
        self.drop_stale_journals(ids);
        Ok(())
    }

    /// One writer per workspace: on this host, and in cluster mode across hosts.
    pub(crate) fn mark_open(&self, id: uuid::Uuid) -> FsResult<()> {
        if !self.open.lock().insert(id) {
            return Err(FsError::Busy(format!("workspace {id} is already open")));
        }
        if let Some(remote) = &self.remote {
            if let Err(e) = remote.acquire(id) {
                self.open.lock().remove(&id);
                return Err(e);
            }
        }
        Ok(())
    }

    pub(crate) fn mark_closed(&self, id: uuid::Uuid) {
        let staged = self.staged.lock().remove(&id);
        if let Some(staged) = staged {
            self.forget_staged(staged);
        }
        self.reset_ahead(id, true);
        if self.open.lock().remove(&id) {
            if let Some(remote) = &self.remote {
                remote.release(id);
            }
        }
    }

    /// Whether the workspace is open here or, in cluster mode, on any host (an unreachable
    /// cluster counts as open: nothing may move the root then).
    pub fn is_open(&self, id: uuid::Uuid) -> bool {
        if self.open.lock().contains(&id) {
            return true;
        }
        match &self.remote {
            Some(remote) => remote.is_held(id).unwrap_or(true),
            None => false,
        }
    }

    pub(crate) fn note_released(&self, bytes: u64) {
        self.released_bytes.fetch_add(bytes, Ordering::SeqCst);
    }

    /// Chunk bytes committed roots stopped referencing since the last collection began (an
    /// upper bound of what a collection would free now: clones and snapshots may share them).
    pub fn released_bytes(&self) -> u64 {
        self.released_bytes.load(Ordering::SeqCst)
    }

    /// Applies puts (`Some`) and deletes (`None`) to `meta` atomically and durably. In
    /// cluster mode, refused (`Busy`) if records changed since the last [`Store::meta_changes`].
    pub fn meta_write(&self, ops: &[MetaOp]) -> FsResult<()> {
        if let Some(remote) = &self.remote {
            check_meta(ops)?;
            return remote.meta_write(ops);
        }
        let mut batch = WriteBatch::default();
        self.add_meta(&mut batch, ops)?;
        self.write(batch, true)
    }

    pub(super) fn add_meta(&self, batch: &mut WriteBatch, ops: &[MetaOp]) -> FsResult<()> {
        check_meta(ops)?;
        let db = self.db()?;
        let cf = db.cf(CF_META);
        for (k, v) in ops {
            match v {
                Some(v) => batch.put_cf(cf, k, v),
                None => batch.delete_cf(cf, k),
            }
        }
        Ok(())
    }

    /// Cluster mode: records other hosts changed since the last call (see
    /// [`Remote::meta_changes`]); a single host has none.
    pub fn meta_changes(&self) -> FsResult<Vec<MetaChange>> {
        match &self.remote {
            Some(remote) => remote.meta_changes(),
            None => Ok(Vec::new()),
        }
    }

    pub fn meta_scan(&self, prefix: &[u8]) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>> {
        if let Some(remote) = &self.remote {
            return remote.meta_scan(prefix);
        }
        let mut out = Vec::new();
        let db = self.db()?;
        for item in db.prefix_iterator_cf(db.cf(CF_META), prefix) {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}
