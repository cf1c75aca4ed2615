//! The fsync journal's reads and writes (format: `format/journal.rs`). A data dir's only:
//! a cluster host's fsync commits, since its journal would be lost with the host.
//!
//! The journal is a RocksDB of its own, in `journal/`, whose WAL files are recycled
//! (`recycle_log_file_num`; the object store's cannot be: RocksDB refuses it beside the
//! unlogged writes a cluster host's object cache makes). An entry's synced write then overwrites blocks of a WAL file
//! already as long as it needs, and its `fdatasync` writes those blocks and no inode: the
//! sync of a WAL that grows also commits the filesystem's journal for its new size (on this
//! ext4, a 4 KiB append + fdatasync takes 0.235 ms, an overwrite + fdatasync 0.097).
//!
//! An entry's sealed chunks are stored beside it, durably, and in the object store through
//! its WAL, unsynced, where reads and other seals find them. Opening the journal puts every
//! chunk it holds in the object store durably before any workspace replays, so a chunk
//! another workspace's entry deduplicated against is there whichever replays first. A
//! workspace's entries go after the synced root write that takes them in (which also makes
//! their chunks durable in the object store, written before it); one a crash leaves behind
//! is over another root, so replay ignores it and the commit after deletes it.

use rocksdb::{Options, WriteBatch, WriteOptions, DB};
use std::path::Path;

use crate::error::{FsError, FsResult};
use crate::format::codec::encode_chunk;
use crate::format::hash::Hash;
use crate::format::journal::{self, JournalEntry};
use crate::format::records;

use super::{Store, CF_CHUNKS, CF_META};

/// Where a data dir keeps its journal.
const JOURNAL_DIR: &str = "journal";

/// WAL bytes between two memtable switches, and so how long each recycled WAL file is.
const WAL_BYTES: usize = 4 << 20;

/// Written and deleted to fill WAL files at open (see [`prime`]).
const PAD_KEY: &[u8] = b"P";

/// Opens the journal of the data dir at `path` (creating it), moves a format 2 journal in
/// from `main`'s records, puts the chunks it holds in `main`, and leaves a recycled WAL file
/// in use.
pub(super) fn open(path: &Path, main: &DB) -> FsResult<DB> {
    let dir = path.join(JOURNAL_DIR);
    let new = !dir.exists();
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.set_recycle_log_file_num(2);
    opts.set_write_buffer_size(WAL_BYTES);
    opts.set_max_background_jobs(1);
    opts.set_keep_log_file_num(2);
    // Entries live one commit interval: a flush that compressed them was a twentieth of the
    // daemon's CPU under a stream of fsyncs.
    opts.set_compression_type(rocksdb::DBCompressionType::None);
    // As the object store's: no preallocation (free space stays what the reserve reads),
    // and a fallocated block's first write would change the file's extents, a metadata
    // commit at each sync, which recycling is here to avoid.
    let opts = opts.get_options_from_string("allow_fallocate=false")?;
    let db = DB::open(&opts, &dir)?;
    if new {
        // The new directory's name is durable once the data dir is synced.
        std::fs::File::open(path)
            .and_then(|d| d.sync_all())
            .map_err(|e| FsError::Storage(format!("{}: {e}", path.display())))?;
    }
    migrate(main, &db)?;
    restore_chunks(main, &db)?;
    // Only speed depends on it: a journal that cannot prime (a nearly full disk) works.
    if super::disk_space(path)?.avail_bytes() > 16 * WAL_BYTES as u64 {
        if let Err(e) = prime(&db, &dir) {
            tracing::warn!("fsync journal: filling WAL files to recycle: {e}");
        }
    }
    Ok(db)
}

/// Moves format 2's entries, in `main`'s `meta` column family, into the journal (their
/// chunks are in `main` already: format 2 wrote them in the entry's batch).
fn migrate(main: &DB, journal_db: &DB) -> FsResult<()> {
    let meta = main
        .cf_handle(CF_META)
        .expect("column families are created at open");
    let mut batch = WriteBatch::default();
    for item in main.prefix_iterator_cf(meta, [journal::PREFIX]) {
        let (k, v) = item?;
        if journal::workspace_of(&k).is_none() {
            break;
        }
        batch.put(k, v);
    }
    if batch.is_empty() {
        return Ok(());
    }
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    journal_db.write_opt(batch, &sync)?;
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(meta, [journal::PREFIX], [journal::PREFIX + 1]);
    main.write_opt(batch, &sync)?;
    Ok(())
}

/// Puts every chunk the journal holds in `main`, durably, in batches of at most 16 MiB.
fn restore_chunks(main: &DB, journal_db: &DB) -> FsResult<()> {
    let cf = main
        .cf_handle(CF_CHUNKS)
        .expect("column families are created at open");
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    let mut batch = WriteBatch::default();
    for item in journal_db.prefix_iterator([journal::CHUNK_PREFIX]) {
        let (k, v) = item?;
        let Some(hash) = journal::chunk_of(&k) else {
            break;
        };
        batch.put_cf(cf, hash.0, v);
        if batch.size_in_bytes() > 16 << 20 {
            main.write_opt(std::mem::take(&mut batch), &sync)?;
        }
    }
    if !batch.is_empty() {
        main.write_opt(batch, &sync)?;
    }
    Ok(())
}

/// Switches memtables over WAL_BYTES of padding until the WAL in use is a recycled file at
/// least that long (RocksDB recycles no file of an earlier open): the first switch frees a
/// file to recycle, the next takes it and frees another as long.
fn prime(db: &DB, dir: &Path) -> FsResult<()> {
    for _ in 0..4 {
        if live_wal_len(dir)? >= WAL_BYTES as u64 {
            return Ok(());
        }
        // Put and delete in one memtable: the flush writes no table of it.
        let mut batch = WriteBatch::default();
        batch.put(PAD_KEY, vec![0u8; WAL_BYTES]);
        batch.delete(PAD_KEY);
        db.write(batch)?;
        db.flush()?;
    }
    tracing::debug!("fsync journal: no recycled WAL file after 4 switches");
    Ok(())
}

/// The length of the WAL file in use (the highest-numbered).
fn live_wal_len(dir: &Path) -> FsResult<u64> {
    let io = |e: std::io::Error| FsError::Storage(format!("{}: {e}", dir.display()));
    let mut live: Option<(u64, u64)> = None;
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if live.is_none_or(|(n, _)| number > n) {
            live = Some((number, entry.metadata().map_err(io)?.len()));
        }
    }
    Ok(live.map_or(0, |(_, len)| len))
}

impl Store {
    /// Whether fsyncs may append to the journal instead of committing.
    pub(crate) fn journals(&self) -> bool {
        self.remote.is_none()
    }

    /// Appends entry `seq` of workspace `ws` (`bytes` long) durably, with the sealed chunks
    /// it references that are not stored yet. Chunks appended to the segments earlier are
    /// published first: the entry may reference them.
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
        if self.disk_space()?.avail_bytes() < 3 * bytes as u64 + (4 << 20) {
            return Err(FsError::NoSpace);
        }
        self.publish_chunks()?;
        let encoded: Vec<(Hash, Vec<u8>)> =
            chunks.iter().map(|(h, d)| (*h, encode_chunk(d))).collect();
        let mut batch = WriteBatch::default();
        for (h, v) in &encoded {
            batch.put(journal::chunk_key(ws, seq, h), v);
        }
        batch.put(journal::key(ws, seq), records::encode(entry));
        self.journal_write(batch, true)?;
        // Then where reads and seals look for them, once durable here (see the module's doc).
        if !encoded.is_empty() {
            let mut batch = WriteBatch::default();
            {
                let db = self.db()?;
                for (h, v) in encoded {
                    batch.put_cf(db.cf(CF_CHUNKS), h.0, v);
                }
            }
            self.write(batch, false)?;
        }
        Ok(())
    }

    fn journal_write(&self, batch: WriteBatch, sync: bool) -> FsResult<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        let db = self.journal_db()?;
        self.wrote(db.write_opt(batch, &wo))
    }

    /// Workspace `ws`'s entries, oldest first.
    pub(crate) fn journal(&self, ws: uuid::Uuid) -> FsResult<Vec<JournalEntry>> {
        let mut out = Vec::new();
        if !self.journals() {
            return Ok(out);
        }
        let (start, end) = journal::range(ws);
        let db = self.journal_db()?;
        for item in db.iterator(rocksdb::IteratorMode::From(
            &start,
            rocksdb::Direction::Forward,
        )) {
            let (k, v) = item?;
            if *k >= end[..] {
                break;
            }
            out.push(
                journal::decode_entry(&v)
                    .map_err(|e| FsError::corrupt(format!("journal entry: {e}")))?,
            );
        }
        Ok(out)
    }

    /// The workspaces that have journal entries.
    pub fn journaled_workspaces(&self) -> FsResult<Vec<uuid::Uuid>> {
        let mut out: Vec<uuid::Uuid> = Vec::new();
        if !self.journals() {
            return Ok(out);
        }
        let db = self.journal_db()?;
        for item in db.prefix_iterator([journal::PREFIX]) {
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

    /// Deletes workspace `ws`'s entries and chunks: called once a synced root write has made
    /// them stale, so unsynced (a crash may leave them; see the module's doc).
    pub(crate) fn drop_journal(&self, ws: &[uuid::Uuid]) -> FsResult<()> {
        if !self.journals() || ws.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        for ws in ws {
            for (start, end) in [journal::range(*ws), journal::chunk_range(*ws)] {
                batch.delete_range(start, end);
            }
        }
        self.journal_write(batch, false)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::journal::BufferPatch;

    fn entry(byte: u8) -> JournalEntry {
        JournalEntry {
            base: Hash::of(b"root"),
            generation: 1,
            kv: vec![],
            unset: vec![],
            buffers: vec![BufferPatch {
                ino: 2,
                idx: 0,
                len: 4096,
                whole: true,
                at: 0,
                bytes: vec![byte; 4096].into(),
            }],
            bases: vec![(2, 1, Hash::of(b"chunk"))],
            dropped: Some(vec![(2, 3)]),
        }
    }

    /// What recycling is for: an entry's sync writes into a WAL file already long enough,
    /// so no file of the journal grows (and its inode need not be written) as entries land.
    #[test]
    fn entries_land_in_a_recycled_wal_file_that_does_not_grow() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let wal = dir.path().join(JOURNAL_DIR);
        let before = live_wal_len(&wal).unwrap();
        assert!(
            before >= WAL_BYTES as u64,
            "the WAL in use is {before} bytes"
        );
        let ws = uuid::Uuid::from_u128(1);
        for seq in 0..200 {
            store
                .append_journal(ws, seq, &entry(seq as u8), &[], 4096)
                .unwrap();
        }
        assert_eq!(live_wal_len(&wal).unwrap(), before);
        let entries = store.journal(ws).unwrap();
        assert_eq!(entries.len(), 200);
        assert_eq!(entries[199], entry(199));
    }

    /// An entry's chunk lives in the object store unsynced: a power cut may take it from
    /// there, and the journal's open puts it back before anything replays. A dropped journal
    /// leaves no chunk behind.
    #[test]
    fn an_entry_s_chunks_are_back_in_the_object_store_when_the_journal_opens() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ws = uuid::Uuid::from_u128(1);
        let data = bytes::Bytes::from(vec![5u8; 65536]);
        let h = Hash::of(&data);
        store
            .append_journal(ws, 0, &entry(1), &[(h, data.clone())], data.len())
            .unwrap();
        assert_eq!(store.get_chunk(&h).unwrap(), data);
        {
            let db = store.db().unwrap();
            db.delete_cf(db.cf(CF_CHUNKS), h.0).unwrap();
        }
        assert!(!store.chunk_exists(&h).unwrap());
        store.release();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.get_chunk(&h).unwrap(), data);
        assert_eq!(store.journaled_workspaces().unwrap(), [ws]);

        store.drop_journal(&[ws]).unwrap();
        assert!(store.journaled_workspaces().unwrap().is_empty());
        let db = store.journal_db().unwrap();
        assert!(db.prefix_iterator([journal::CHUNK_PREFIX]).next().is_none());
    }

    /// A format 2 data dir kept its entries among the object store's records: they move into
    /// the journal when it opens, in order, and leave the records.
    #[test]
    fn a_format_2_journal_moves_out_of_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ws = uuid::Uuid::from_u128(3);
        {
            let db = store.db().unwrap();
            for seq in 0..3 {
                let v = records::encode(&entry(seq as u8));
                db.put_cf(db.cf(CF_META), journal::key(ws, seq), v).unwrap();
            }
        }
        store.release();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.journal(ws).unwrap(), [entry(0), entry(1), entry(2)]);
        let db = store.db().unwrap();
        let left = db
            .prefix_iterator_cf(db.cf(CF_META), [journal::PREFIX])
            .next();
        assert!(left.is_none_or(|kv| kv.unwrap().0[0] != journal::PREFIX));
    }
}
