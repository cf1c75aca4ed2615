//! The fsync journal's reads and writes (format: `format/journal.rs`). A data dir's only:
//! a cluster host's fsync commits, since its journal would be lost with the host.

use rocksdb::WriteBatch;

use crate::error::{FsError, FsResult};
use crate::format::codec::encode_chunk;
use crate::format::hash::Hash;
use crate::format::journal::{self, JournalEntry};
use crate::format::records;

use super::{Db, Store, CF_CHUNKS, CF_META};

impl Store {
    /// Whether fsyncs may append to the journal instead of committing.
    pub(crate) fn journals(&self) -> bool {
        self.remote.is_none()
    }

    /// Appends entry `seq` of workspace `ws` (`bytes` long) durably, with the sealed chunks
    /// it references that are not stored yet, in one batch. Chunks written unlogged earlier
    /// are flushed first: the entry may reference them.
    pub(crate) fn append_journal(
        &self,
        ws: uuid::Uuid,
        seq: u64,
        entry: &JournalEntry,
        chunks: &[(Hash, bytes::Bytes)],
        bytes: usize,
    ) -> FsResult<()> {
        if !self.journals() {
            return Err(FsError::Invalid("a cluster host keeps no journal"));
        }
        // As a commit: nothing is written unless it fits, with room for WAL and manifest
        // (RocksDB that meets a full disk stops writing altogether until restarted).
        if self.disk_space()?.avail_bytes() < 2 * bytes as u64 + (4 << 20) {
            return Err(FsError::NoSpace);
        }
        self.flush_chunks(false)?;
        let mut batch = WriteBatch::default();
        {
            let db = self.db()?;
            for (h, data) in chunks {
                batch.put_cf(db.cf(CF_CHUNKS), h.0, encode_chunk(data));
            }
            batch.put_cf(
                db.cf(CF_META),
                journal::key(ws, seq),
                records::encode(entry),
            );
        }
        self.write(batch, true)
    }

    /// Workspace `ws`'s entries, oldest first.
    pub(crate) fn journal(&self, ws: uuid::Uuid) -> FsResult<Vec<JournalEntry>> {
        let mut out = Vec::new();
        if !self.journals() {
            return Ok(out);
        }
        let (start, end) = journal::range(ws);
        let db = self.db()?;
        for item in db.iterator_cf(
            db.cf(CF_META),
            rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
        ) {
            let (k, v) = item?;
            if *k >= end[..] {
                break;
            }
            out.push(records::decode(&v)?);
        }
        Ok(out)
    }

    /// The workspaces that have journal entries.
    pub fn journaled_workspaces(&self) -> FsResult<Vec<uuid::Uuid>> {
        let mut out: Vec<uuid::Uuid> = Vec::new();
        if !self.journals() {
            return Ok(out);
        }
        let db = self.db()?;
        for item in db.prefix_iterator_cf(db.cf(CF_META), [journal::PREFIX]) {
            let (k, _) = item?;
            let Some(ws) = journal::workspace_of(&k) else {
                break;
            };
            if out.last() != Some(&ws) {
                out.push(ws);
            }
        }
        Ok(out)
    }

    /// Deletes workspace `ws`'s entries.
    pub(crate) fn delete_journal(&self, ws: uuid::Uuid) -> FsResult<()> {
        let mut batch = WriteBatch::default();
        drop_journal(&mut batch, &self.db()?, ws);
        self.write(batch, true)
    }

    /// Every chunk some journal entry's tree changes reference: live until the entry goes.
    pub(crate) fn journal_chunks(&self) -> FsResult<Vec<Hash>> {
        let mut out = Vec::new();
        for ws in self.journaled_workspaces()? {
            for entry in self.journal(ws)? {
                for (k, v) in &entry.kv {
                    if let (true, Some(v)) = (crate::format::keys::is_extent(k), v) {
                        out.push(records::decode::<records::Extent>(v)?.hash);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Adds the deletion of workspace `ws`'s entries to `batch`.
pub(super) fn drop_journal(batch: &mut WriteBatch, db: &Db<'_>, ws: uuid::Uuid) {
    let (start, end) = journal::range(ws);
    batch.delete_range_cf(db.cf(CF_META), start, end);
}
