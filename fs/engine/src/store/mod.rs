//! The object store: RocksDB with one column family per kind of object.
//!
//! - `chunks`: file data chunks, key = BLAKE3 of the bytes. A chunk's stored encoding is a codec
//!   byte and the bytes, lz4-compressed when a probe of the chunk shows it pays
//!   ([`crate::format::codec`]). A data dir appends it to a segment file in the order chunks
//!   are sealed, and the value is where (`segments.rs`); chunks of a small commit or of a
//!   journal entry, and all chunks of stores written before segments, are the value itself,
//!   in RocksDB's integrated BlobDB.
//! - `nodes`: tree nodes ([`crate::format::node::Node`]), key = BLAKE3 of the encoding.
//! - `meta`: root pointers ([`RootId`] → [`RootRecord`]) and, under other prefixes, the
//!   workspace service's records.
//!
//! A data dir's fsync journal ([`crate::format::journal`]) is a second, small RocksDB in
//! `journal/` whose WAL files are recycled (`journal.rs` says why).
//!
//! Objects are immutable. Anything that is about to make a root reference an object pins it
//! first ([`Store::pin`]); the garbage collector never deletes a pinned object (see `gc.rs`).

use indexmap::IndexMap;
use parking_lot::{Condvar, MappedRwLockReadGuard, Mutex, RwLock, RwLockReadGuard};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Options, WriteOptions, DB,
};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::error::{FsError, FsResult};
use crate::format::hash::Hash;
use crate::format::Format;
use crate::remote::{ObjectKind, Remote};
use node_cache::NodeCache;

mod ahead;
mod cache;
mod chunk_files;
mod compaction;
mod journal;
mod key_scan;
mod node_cache;
mod objects;
mod roots;
mod segments;
mod space;

pub use cache::CacheStats;
pub(crate) use cache::{PrefetchJob, PrefetchQueues};
pub use compaction::DeletedRange;
pub(crate) use key_scan::KeyScan;
pub(crate) use objects::copy_span;
pub use space::DiskSpace;
use space::{disk_space, reserve_for};

pub const CF_CHUNKS: &str = "chunks";
pub const CF_NODES: &str = "nodes";
pub const CF_META: &str = "meta";

/// Tuning for [`Store::open`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Bytes of decoded tree nodes kept in memory.
    pub node_cache_bytes: usize,
    /// RocksDB block cache (SST blocks of every column family).
    pub block_cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            node_cache_bytes: 64 << 20,
            block_cache_bytes: 64 << 20,
        }
    }
}

/// Who may not lose which objects right now; see `gc.rs` for the protocol.
#[derive(Default)]
pub(crate) struct Pins {
    pub(crate) counts: HashMap<Hash, u32>,
    /// While a collection runs: every hash pinned since it started (never shrinks).
    pub(crate) gc_protect: Option<HashSet<Hash>>,
}

/// The open databases: the object store, and a data dir's fsync journal (`journal.rs`).
struct Dbs {
    main: DB,
    journal: Option<DB>,
}

impl Dbs {
    fn open(path: &Path, block_cache_bytes: usize, journals: bool) -> FsResult<Dbs> {
        let main = open_db(path, block_cache_bytes)?;
        check_format(&main, path)?;
        let journal = match journals {
            true => Some(journal::open(path, &main)?),
            false => None,
        };
        Ok(Dbs { main, journal })
    }
}

pub struct Store {
    /// The databases; `None` while released ([`Store::release`]): a takeover's successor
    /// holds them then.
    db: RwLock<Option<Dbs>>,
    /// How it was opened, to open it again ([`Store::reopen`]).
    block_cache_bytes: usize,
    /// Why writes fail, from the first failed write until [`Store::heal`] has reopened the
    /// database: RocksDB refuses every write after a background error (a file it could not
    /// create, a write the disk refused) until it is reopened.
    failure: Mutex<Option<String>>,
    /// A data dir's chunk files (`segments.rs`); `None` on a cluster host.
    segments: Option<segments::Segments>,
    /// Released for a takeover: the successor may hold the database, so no heal opens it.
    released: AtomicBool,
    /// A collection runs (see [`Store::collecting`]).
    collecting: AtomicBool,
    path: PathBuf,
    pub(crate) nodes: NodeCache,
    pub(crate) pins: Mutex<Pins>,
    /// Workspaces open for writing; their roots move only by their own commits.
    open: Mutex<HashSet<uuid::Uuid>>,
    /// Serializes root-pointer changes so read-check-write sequences are atomic.
    roots_lock: Mutex<()>,
    /// Chunk bytes that commits stopped referencing since the last collection began: what
    /// tells the collector that a live workspace left garbage behind.
    released_bytes: AtomicU64,
    /// Free bytes that writes may not take: RocksDB needs them to delete, compact and
    /// collect, so a full disk can still be emptied (see [`Store::check_space`]).
    reserve_bytes: u64,
    /// Until when a check found the disk far from its reserve (see [`Store::check_space`]).
    plenty_until: Mutex<Option<std::time::Instant>>,
    /// Whether compactions relocate live blobs (blob GC) right now; see [`Store::compact_with`].
    blob_gc: AtomicBool,
    /// Set when this host is one of a cluster (see `remote.rs`): roots and records live
    /// there, objects are uploaded at commit and fetched on a miss, and RocksDB holds no
    /// roots, only a cache of objects and the chunks not uploaded yet.
    remote: Option<Arc<dyn Remote>>,
    /// Cluster mode: per open workspace, the chunks its overlay wrote here that no committed
    /// root refers to yet. Each commit uploads its workspace's (again, if a collection
    /// started meanwhile) and only a successful commit clears them. A crash loses them with
    /// the overlay they belong to, so they are not recorded on disk. They wait in the
    /// cache's files (`chunk_files.rs`), each with its footprint there, which the cache counts
    /// once it is uploaded.
    staged: Mutex<HashMap<uuid::Uuid, IndexMap<Hash, u32>>>,
    /// Cluster mode: the stored bytes of chunks staged lately, which their upload takes
    /// instead of reading them back from the cache's files (`ahead.rs`).
    staged_bytes: Mutex<ahead::StagedBytes>,
    /// Cluster mode: uploaded or fetched objects kept here, bounded: chunks in files
    /// (`chunk_files.rs`), nodes in RocksDB.
    cache: Mutex<ObjectCache>,
    chunk_files: Option<chunk_files::ChunkFiles>,
    /// Cluster mode: objects a prefetch is fetching; a read that misses one waits for it
    /// (`fetched`) instead of asking the object store again.
    in_flight: Mutex<HashSet<Hash>>,
    fetched: Condvar,
    /// Cluster mode: the chunks the prefetcher fetched lately, in memory.
    fresh: Mutex<cache::FreshChunks>,
    /// Cluster mode: staged chunks sent before their commit (`ahead.rs`), and where to ask.
    ahead: Mutex<ahead::Ahead>,
    uploader: OnceLock<std::sync::mpsc::SyncSender<uuid::Uuid>>,
    prefetcher: OnceLock<PrefetchQueues>,
}

/// Objects a cluster host keeps locally, least recently used first, and their bytes.
struct ObjectCache {
    lru: lru::LruCache<Hash, (ObjectKind, u32)>,
    bytes: u64,
    limit: u64,
    /// Reads served here, and objects fetched from the object store (ahead of reads, or
    /// for them).
    hits: u64,
    misses: u64,
    prefetched: u64,
}

fn kind_cf(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Node => CF_NODES,
        ObjectKind::Chunk => CF_CHUNKS,
    }
}

/// Cluster mode: where fetched chunks are kept, in the data dir (emptied at every start).
const FETCHED_DIR: &str = "fetched";
/// A data dir's chunk files (`segments.rs`).
const SEGMENTS_DIR: &str = "segments";

/// Where a data dir records its on-disk format, in the `meta` column family.
const FORMAT_KEY: &[u8] = b"Fformat";

/// Refuses a data dir of another on-disk format; stamps one that has no record yet (new, or
/// written before formats were recorded, which is this format) with this build's.
fn check_format(db: &DB, path: &Path) -> FsResult<()> {
    let meta = db
        .cf_handle(CF_META)
        .expect("column families are created at open");
    match db.get_cf(meta, FORMAT_KEY)? {
        Some(recorded) => {
            if Format::check(&recorded, &format!("data dir {}", path.display()))? {
                let mut sync = WriteOptions::default();
                sync.set_sync(true);
                db.put_cf_opt(meta, FORMAT_KEY, Format::CURRENT.encode(), &sync)?;
            }
            Ok(())
        }
        None => {
            let mut sync = WriteOptions::default();
            sync.set_sync(true);
            db.put_cf_opt(meta, FORMAT_KEY, Format::CURRENT.encode(), &sync)?;
            Ok(())
        }
    }
}

/// Opens (creating if missing) the database at `path`, with every column family's options.
fn open_db(path: &Path, block_cache_bytes: usize) -> FsResult<DB> {
    let cache = Cache::new_lru_cache(block_cache_bytes);
    let table = |bloom: bool| {
        let mut t = BlockBasedOptions::default();
        t.set_block_cache(&cache);
        if bloom {
            t.set_bloom_filter(10.0, false);
        }
        t.set_cache_index_and_filter_blocks(true);
        t
    };

    let mut db_opts = Options::default();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    db_opts.set_max_background_jobs(2);
    // Let the kernel read ahead in table and blob files. A flush writes its blobs in key
    // (hash) order, so the chunks of a file written in order lie scattered through the
    // blob files of its flushes; but a sequential read of the file reads all of them soon,
    // and what the kernel reads around each chunk is mostly chunks read next. RocksDB's
    // default (fadvise RANDOM) made every 64 KiB chunk a separate synchronous disk read,
    // which capped cold reads near 300 MB/s.
    db_opts.set_advise_random_on_open(false);
    db_opts.set_keep_log_file_num(4);
    // Flushes and compactions write their files with O_DIRECT where the disk allows it:
    // through the page cache, copying a sequential write's blob bytes into fresh cache
    // pages was a sixth of the machine's CPU, and those pages are rarely read again (the
    // kernel keeps the session's own file pages). Reads stay buffered, for readahead.
    let direct = supports_direct_io(path);
    tracing::debug!(direct, "O_DIRECT for flushes and compactions");
    db_opts.set_use_direct_io_for_flush_and_compaction(direct);
    // Bound memtables across all column families so memory stays flat under write load.
    db_opts.set_db_write_buffer_size(256 << 20);
    // No preallocation: RocksDB would fallocate tens of MiB ahead for each WAL, table and
    // blob file, so the free space the disk reports (which the space reserve relies on,
    // see `check_space`) would swing by hundreds of MiB.
    // (The Rust binding has no setter for this one.)
    let db_opts = db_opts.get_options_from_string("allow_fallocate=false")?;

    let mut chunks = Options::default();
    chunks.set_block_based_table_factory(&table(true));
    chunks.set_enable_blob_files(true);
    chunks.set_min_blob_size(2048);
    chunks.set_blob_file_size(64 << 20);
    // Chunks arrive compressed where it pays (see `encode_chunk`).
    chunks.set_blob_compression_type(DBCompressionType::None);
    // Blob GC only inside the collector's compactions (see `compact_with`): on all the
    // time, every L0 compaction under a sequential write relocated the chunks of the
    // oldest half of the blob files, writing the data a second time (a third of the
    // daemon's CPU and half its disk bandwidth on a 1 GiB write).
    chunks.set_enable_blob_gc(false);
    chunks.set_blob_gc_age_cutoff(0.5);
    chunks.set_compression_type(DBCompressionType::Lz4);
    chunks.set_write_buffer_size(64 << 20);
    chunks.set_max_write_buffer_number(3);

    let mut nodes = Options::default();
    nodes.set_block_based_table_factory(&table(true));
    nodes.set_compression_type(DBCompressionType::Lz4);
    nodes.set_write_buffer_size(32 << 20);

    let mut meta = Options::default();
    meta.set_block_based_table_factory(&table(false));

    let cfs = vec![
        ColumnFamilyDescriptor::new(CF_CHUNKS, chunks),
        ColumnFamilyDescriptor::new(CF_NODES, nodes),
        ColumnFamilyDescriptor::new(CF_META, meta),
    ];
    Ok(DB::open_cf_descriptors(&db_opts, path, cfs)?)
}

/// The open database, read-locked for one operation (see [`Store::db`]).
pub(crate) struct Db<'a>(MappedRwLockReadGuard<'a, DB>);

impl std::ops::Deref for Db<'_> {
    type Target = DB;
    fn deref(&self) -> &DB {
        &self.0
    }
}

impl Db<'_> {
    pub(crate) fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.0
            .cf_handle(name)
            .expect("column families are created at open")
    }
}

impl Store {
    pub fn open(path: &Path) -> FsResult<Arc<Store>> {
        Self::open_with(path, StoreOptions::default())
    }

    pub fn open_with(path: &Path, opts: StoreOptions) -> FsResult<Arc<Store>> {
        Self::open_inner(path, opts, None, 0)
    }

    pub(crate) fn open_inner(
        path: &Path,
        opts: StoreOptions,
        remote: Option<Arc<dyn Remote>>,
        cache_bytes: u64,
    ) -> FsResult<Arc<Store>> {
        let io = |e: std::io::Error| FsError::Storage(format!("{}: {e}", path.display()));
        if !path.exists() {
            std::fs::create_dir_all(path).map_err(io)?;
            // A new directory's name is durable only once its parent is synced; RocksDB syncs
            // the data dir itself, not its parent.
            if let Some(parent) = path.parent() {
                std::fs::File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(io)?;
            }
        }
        let db = Dbs::open(path, opts.block_cache_bytes, remote.is_none())?;
        let (chunk_files, segments) = match remote {
            Some(_) => (
                Some(chunk_files::ChunkFiles::new(&path.join(FETCHED_DIR))?),
                None,
            ),
            None => (
                None,
                Some(segments::Segments::open(&path.join(SEGMENTS_DIR))?),
            ),
        };
        let store = Arc::new(Store {
            db: RwLock::new(Some(db)),
            block_cache_bytes: opts.block_cache_bytes,
            failure: Mutex::new(None),
            segments,
            released: AtomicBool::new(false),
            collecting: AtomicBool::new(false),
            path: path.to_path_buf(),
            nodes: NodeCache::new(opts.node_cache_bytes),
            pins: Mutex::new(Pins::default()),
            open: Mutex::new(HashSet::new()),
            roots_lock: Mutex::new(()),
            released_bytes: AtomicU64::new(0),
            reserve_bytes: reserve_for(&disk_space(path)?),
            plenty_until: Mutex::new(None),
            blob_gc: AtomicBool::new(false),
            remote,
            staged: Mutex::new(HashMap::new()),
            staged_bytes: Mutex::new(ahead::StagedBytes::default()),
            cache: Mutex::new(ObjectCache {
                lru: lru::LruCache::unbounded(),
                bytes: 0,
                limit: cache_bytes,
                hits: 0,
                misses: 0,
                prefetched: 0,
            }),
            chunk_files,
            in_flight: Mutex::new(HashSet::new()),
            fetched: Condvar::new(),
            fresh: Mutex::new(cache::FreshChunks::default()),
            ahead: Mutex::new(ahead::Ahead::default()),
            uploader: OnceLock::new(),
            prefetcher: OnceLock::new(),
        });
        let weak = Arc::downgrade(&store);
        std::thread::Builder::new()
            .name("store-heal".into())
            .spawn(move || heal_when_failed(weak))
            .map_err(|e| FsError::Storage(e.to_string()))?;
        Ok(store)
    }

    /// Drops every cached node, so reads go to RocksDB (tests use it to see what is stored).
    pub fn nodes_cache_clear(&self) {
        self.nodes.clear();
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database, for one operation: [`Store::release`] waits until it is dropped.
    pub(crate) fn db(&self) -> FsResult<Db<'_>> {
        // Recursive: a thread may hold one while it takes another (a writer waiting between
        // the two must not deadlock it).
        RwLockReadGuard::try_map(self.db.read_recursive(), |d| d.as_ref().map(|d| &d.main))
            .map(Db)
            .map_err(|_| self.closed())
    }

    /// The fsync journal's database, as [`Store::db`] (a cluster host has none).
    pub(crate) fn journal_db(&self) -> FsResult<Db<'_>> {
        if !self.journals() {
            return Err(FsError::Invalid("a cluster host keeps no journal"));
        }
        RwLockReadGuard::try_map(self.db.read_recursive(), |d| {
            d.as_ref().and_then(|d| d.journal.as_ref())
        })
        .map(Db)
        .map_err(|_| self.closed())
    }

    /// Why the databases are not open.
    fn closed(&self) -> FsError {
        FsError::Storage(if self.released.load(Ordering::SeqCst) {
            "the store is closed (handed over)".into()
        } else {
            "the store is reopening after a failed write".into()
        })
    }

    /// Closes the database, once every operation using it has finished; until
    /// [`Store::reopen`], every operation fails. A takeover's successor opens it meanwhile.
    /// Durable state only survives: callers commit first.
    pub fn release(&self) {
        // Chunks sealed since the last commit, indexed for the successor; and no more
        // appends to a segment the successor may collect.
        if let Err(e) = self.publish_chunks() {
            tracing::warn!("publishing chunks before the handover: {e}");
        }
        if let Some(Err(e)) = self.segments.as_ref().map(|s| s.close()) {
            tracing::warn!("closing the open segment before the handover: {e}");
        }
        let mut db = self.db.write();
        self.released.store(true, Ordering::SeqCst);
        drop(db.take());
    }

    /// Opens the database again after [`Store::release`], once no other process holds it.
    pub fn reopen(&self) -> FsResult<()> {
        let mut db = self.db.write();
        if db.is_none() {
            *db = Some(Dbs::open(
                &self.path,
                self.block_cache_bytes,
                self.journals(),
            )?);
            // Opened as configured, without blob GC (see `compact_with`).
            self.blob_gc.store(false, Ordering::SeqCst);
            if let Some(segments) = &self.segments {
                segments.skip_existing()?;
            }
            self.released.store(false, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Why writes fail now, if they do (see [`Store::heal`]).
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().clone()
    }

    /// Cluster mode: why the cluster's stores cannot take this host's writes now, if they
    /// cannot (see [`Remote::unready`]).
    pub fn remote_unready(&self) -> Option<String> {
        self.remote.as_ref()?.unready()
    }

    /// Whether a collection (its compaction included) is running (see `gc.rs`).
    pub fn collecting(&self) -> bool {
        self.collecting.load(Ordering::SeqCst)
    }

    /// Marks a collection as running until the guard is dropped.
    pub(crate) fn collection(&self) -> impl Drop + '_ {
        struct Running<'a>(&'a AtomicBool);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        self.collecting.store(true, Ordering::SeqCst);
        Running(&self.collecting)
    }

    /// Records a failed write of a chunk file, as [`Store::wrote`] does a database's.
    fn wrote_files<T>(&self, result: FsResult<T>) -> FsResult<T> {
        result.inspect_err(|e| {
            if let FsError::Storage(why) = e {
                self.record_failure(why);
            }
        })
    }

    fn record_failure(&self, why: &str) {
        let mut failure = self.failure.lock();
        if failure.is_none() {
            tracing::error!("store: a write failed ({why}); writes fail until the store heals");
            metrics::gauge!(crate::metrics::STORE_HEALTHY).set(0.0);
            *failure = Some(why.to_string());
        }
    }

    /// Records a failed write: the store is unhealthy until [`Store::heal`] succeeds.
    fn wrote<T>(&self, result: Result<T, rocksdb::Error>) -> FsResult<T> {
        result.map_err(|e| {
            self.record_failure(e.as_ref());
            e.into()
        })
    }

    /// After a failed write, once the cause has passed (a file can be made and synced in the
    /// data dir): closes the database and opens it again, in place, while every caller waits.
    /// What went through the WAL is replayed by the reopen; chunks not published yet wait in
    /// memory (`segments.rs`), so no overlay loses a byte. Sessions stay mounted throughout.
    pub fn heal(&self) -> FsResult<()> {
        // Not the space reserve: a full disk is emptied by deletes, which need a database
        // that takes writes again.
        probe_writable(&self.path)?;
        let mut db = self.db.write();
        if self.released.load(Ordering::SeqCst) {
            return Err(FsError::Storage("the store is closed (handed over)".into()));
        }
        drop(db.take());
        let reopened = Dbs::open(&self.path, self.block_cache_bytes, self.journals())?;
        self.blob_gc.store(false, Ordering::SeqCst);
        *db = Some(reopened);
        *self.failure.lock() = None;
        metrics::gauge!(crate::metrics::STORE_HEALTHY).set(1.0);
        Ok(())
    }

    // ---- objects ----

    // ---- disk space ----

    // ---- garbage accounting ----

    // ---- pins ----

    // ---- roots ----

    // ---- open workspaces ----

    // ---- metadata for upper layers ----
}

/// Heals the store (see [`Store::heal`]) after a failed write: tries once a second while the
/// store lives.
fn heal_when_failed(store: std::sync::Weak<Store>) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let Some(store) = store.upgrade() else {
            return;
        };
        let Some(why) = store.failure() else {
            continue;
        };
        match store.heal() {
            Ok(()) => tracing::info!("store healed (writes had failed: {why}); writes work again"),
            Err(e) => tracing::debug!("store not healed yet: {e}"),
        }
    }
}

/// Whether a file can be created, written and synced in `dir` now (descriptors and the disk
/// are back).
fn probe_writable(dir: &Path) -> FsResult<()> {
    use std::io::Write;
    let probe = dir.join(".heal-probe");
    let written = std::fs::File::create(&probe)
        .and_then(|mut f| f.write_all(&[0u8; 4096]).and_then(|()| f.sync_data()));
    let _ = std::fs::remove_file(&probe);
    written.map_err(|e| FsError::Storage(format!("{}: {e}", probe.display())))
}

/// Whether the filesystem holding `dir` takes O_DIRECT writes (tmpfs before Linux 6.6 and
/// some FUSE filesystems refuse them with EINVAL), probed with one aligned 4 KiB block.
pub(super) fn supports_direct_io(dir: &Path) -> bool {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    const BLOCK: usize = 4096;
    let probe = dir.join(".direct-io-probe");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .and_then(|mut f| {
            let buf = vec![0u8; 2 * BLOCK];
            let skip = buf.as_ptr().align_offset(BLOCK);
            f.write_all(&buf[skip..skip + BLOCK])
        });
    let _ = std::fs::remove_file(&probe);
    written.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::roots::RootId;

    fn memtable_entries(store: &Store, cf: &str) -> u64 {
        [
            "rocksdb.num-entries-active-mem-table",
            "rocksdb.num-entries-imm-mem-tables",
        ]
        .iter()
        .map(|p| {
            let db = store.db().unwrap();
            db.property_int_value_cf(db.cf(cf), *p).unwrap().unwrap()
        })
        .sum()
    }

    /// A released store answers errors and leaves the directory to another process (which
    /// may open it meanwhile); reopened, it serves what was written before.
    #[test]
    fn a_released_store_lets_another_open_it_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .meta_write(&[(b"k".to_vec(), Some(b"before".to_vec()))])
            .unwrap();
        store.release();
        assert!(matches!(store.meta_scan(b"k"), Err(FsError::Storage(_))));
        let other = Store::open(dir.path()).expect("free while released");
        assert!(store.reopen().is_err(), "held by the other");
        drop(other);
        store.reopen().unwrap();
        assert_eq!(store.meta_scan(b"k").unwrap()[0].1, b"before");
    }

    /// A large commit's chunks go to a segment, in order; the commit publishes them, so they
    /// read back after a reopen; a collection of them gives their pages back.
    #[test]
    fn a_large_commit_s_chunks_lie_in_order_in_a_segment_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ws = uuid::Uuid::from_u128(1);
        let record = crate::roots::create_workspace(&store, ws, &[]).unwrap();
        let chunks: Vec<(Hash, Vec<u8>)> = (0..32u32)
            .map(|i| {
                // Noise, so each is stored raw (65,536 bytes, 16 pages).
                let mut data = vec![0u8; 65536];
                blake3::Hasher::new()
                    .update(&i.to_le_bytes())
                    .finalize_xof()
                    .fill(&mut data);
                (Hash::of(&data), data)
            })
            .collect();
        store.put_chunks(None, &chunks).unwrap();
        // Pending: read from memory, and not indexed yet.
        assert_eq!(store.get_chunk(&chunks[3].0).unwrap(), chunks[3].1);
        assert_eq!(memtable_entries(&store, CF_CHUNKS), 0);
        store
            .commit::<Vec<u8>>(RootId::Workspace(ws), &record, &[], &[], true, false)
            .unwrap();
        assert_eq!(memtable_entries(&store, CF_CHUNKS), 32, "published");
        let locators: Vec<segments::Locator> = {
            let db = store.db().unwrap();
            chunks
                .iter()
                .map(|(h, _)| {
                    let v = db.get_cf(db.cf(CF_CHUNKS), h.0).unwrap().unwrap();
                    segments::Locator::decode(&v).expect("a locator")
                })
                .collect()
        };
        assert!(
            locators.windows(2).all(|w| w[0].follows(&w[1])),
            "in the order written: {locators:?}"
        );
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        for (h, data) in &chunks {
            assert_eq!(&store.get_chunk(h).unwrap(), data);
            let mut dst = vec![0u8; 4096];
            store.read_chunk(h, data.len(), 8192, &mut dst).unwrap();
            assert_eq!(dst, data[8192..12288]);
        }
        let allocated = || store.segments.as_ref().unwrap().allocated_bytes();
        let before = allocated();
        assert!(before >= 32 * 65536, "{before}");
        let hashes: Vec<Hash> = chunks.iter().map(|(h, _)| *h).collect();
        store.delete_objects(CF_CHUNKS, &hashes[..16]).unwrap();
        assert_eq!(
            allocated(),
            before - 16 * 65536,
            "half the pages given back"
        );
        assert!(store.get_chunk(&hashes[0]).is_err());
        assert_eq!(store.get_chunk(&hashes[20]).unwrap(), chunks[20].1);
    }
}
