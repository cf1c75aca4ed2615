//! The object store: RocksDB with one column family per kind of object.
//!
//! - `chunks`: file data chunks, key = BLAKE3 of the bytes. Values are a codec byte and the
//!   bytes, lz4-compressed when a probe of the chunk shows it pays ([`crate::format::codec`]); they live
//!   in RocksDB's integrated BlobDB, so compaction moves keys, not data.
//! - `nodes`: tree nodes ([`crate::tree::Node`]), key = BLAKE3 of the encoding.
//! - `meta`: root pointers ([`RootId`] → [`RootRecord`]) and, under other prefixes, the
//!   workspace service's records.
//!
//! Objects are immutable. Anything that is about to make a root reference an object pins it
//! first ([`Store::pin`]); the garbage collector never deletes a pinned object (see `gc.rs`).

use parking_lot::{Condvar, MappedRwLockReadGuard, Mutex, RwLock, RwLockReadGuard};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, FlushOptions, Options,
    ReadOptions, WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::error::{FsError, FsResult};
use crate::format::codec::{decode_chunk, encode_chunk, CHUNK_RAW};
use crate::format::hash::Hash;
use crate::format::records::Timespec;
use crate::format::Format;
use crate::remote::prefetch::{Job, Prefetcher};
use crate::remote::{CommitToken, MetaChange, ObjectKind, Remote};
use crate::tree::{Node, NodeCache};

pub const CF_CHUNKS: &str = "chunks";
pub const CF_NODES: &str = "nodes";
pub const CF_META: &str = "meta";

/// Chunk writes at commit smaller than this go through the WAL with the commit; larger ones
/// are written once to blob files (no WAL) and flushed before the commit's root is written.
const SMALL_COMMIT_BYTES: usize = 1 << 20;

/// Which root pointer: a workspace's (mutable) or a snapshot's (immutable).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RootId {
    Workspace(uuid::Uuid),
    Snapshot(uuid::Uuid),
}

impl RootId {
    const PREFIX: u8 = b'R';

    fn key(&self) -> [u8; 18] {
        let (tag, id) = match self {
            RootId::Workspace(id) => (b'w', id),
            RootId::Snapshot(id) => (b's', id),
        };
        let mut k = [0u8; 18];
        k[0] = Self::PREFIX;
        k[1] = tag;
        k[2..].copy_from_slice(id.as_bytes());
        k
    }

    fn from_key(k: &[u8]) -> Option<RootId> {
        if k.len() != 18 || k[0] != Self::PREFIX {
            return None;
        }
        let id = uuid::Uuid::from_slice(&k[2..]).ok()?;
        match k[1] {
            b'w' => Some(RootId::Workspace(id)),
            b's' => Some(RootId::Snapshot(id)),
            _ => None,
        }
    }
}

/// A put (`Some`) or delete (`None`) of an upper layer's record in the `meta` column family,
/// written in the same batch as a root change so both land or neither does.
pub type MetaOp = (Vec<u8>, Option<Vec<u8>>);

/// What a root pointer holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RootRecord {
    pub root: Hash,
    /// Commits since the state was created (clones and snapshots carry it over).
    pub generation: u64,
    pub committed_at: Timespec,
}

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

/// What statvfs says of the data dir's filesystem, in `fragment`-sized blocks.
#[derive(Clone, Copy, Debug)]
pub struct DiskSpace {
    pub blocks: u64,
    pub fragment: u64,
    pub free: u64,
    /// Free blocks an unprivileged writer may use.
    pub avail: u64,
    pub files_free: u64,
}

impl DiskSpace {
    pub fn avail_bytes(&self) -> u64 {
        self.avail * self.fragment
    }
}

/// Space kept free on the data dir's disk: an eighth of the disk, at most 256 MiB.
fn reserve_for(disk: &DiskSpace) -> u64 {
    (disk.blocks * disk.fragment / 8).min(256 << 20)
}

/// Counts of unlogged chunk writes: completed, and known to be covered by a finished flush.
#[derive(Default)]
struct ChunkFlushes {
    written: AtomicU64,
    flushed: AtomicU64,
    /// Tests run code between a flush and its recording, where a racing write would land.
    #[cfg(test)]
    after_flush_hook: Mutex<Option<Box<dyn Fn() + Send>>>,
}

pub struct Store {
    /// The database; `None` while released ([`Store::release`]): a takeover's successor
    /// holds it then.
    db: RwLock<Option<DB>>,
    /// How it was opened, to open it again ([`Store::reopen`]).
    block_cache_bytes: usize,
    /// Why writes fail, from the first failed write until [`Store::heal`] has reopened the
    /// database: RocksDB refuses every write after a background error (a file it could not
    /// create, a write the disk refused) until it is reopened.
    failure: Mutex<Option<String>>,
    /// Chunks written without the WAL that no flush of ours has covered yet: a reopen would
    /// lose the ones still in a memtable, so [`Store::heal`] reads them back and writes them
    /// again. 32 bytes per 64 KiB chunk; cleared by each flush.
    unflushed: Mutex<HashSet<Hash>>,
    /// Chunks read back by a heal whose reopen failed, written once one succeeds.
    healing: Mutex<Vec<(Hash, Vec<u8>)>>,
    /// Released for a takeover: the successor may hold the database, so no heal opens it.
    released: AtomicBool,
    /// A collection runs (see [`Store::collecting`]).
    collecting: AtomicBool,
    path: PathBuf,
    pub(crate) nodes: NodeCache,
    pub(crate) pins: Mutex<Pins>,
    /// Workspaces open for writing; their roots move only by their own commits.
    open: Mutex<HashSet<uuid::Uuid>>,
    /// Flush generations of chunks written without the WAL: see [`Store::flush_chunks`].
    chunk_flushes: ChunkFlushes,
    /// Serializes root-pointer changes so read-check-write sequences are atomic.
    roots_lock: Mutex<()>,
    /// Chunk bytes that commits stopped referencing since the last collection began: what
    /// tells the collector that a live workspace left garbage behind.
    released_bytes: AtomicU64,
    /// Free bytes that writes may not take: RocksDB needs them to delete, compact and
    /// collect, so a full disk can still be emptied (see [`Store::check_space`]).
    reserve_bytes: u64,
    /// Whether compactions relocate live blobs (blob GC) right now; see [`Store::compact_with`].
    blob_gc: AtomicBool,
    /// Set when this host is one of a cluster (see `remote.rs`): roots and records live
    /// there, objects are uploaded at commit and fetched on a miss, and RocksDB holds no
    /// roots, only a cache of objects and the chunks not uploaded yet.
    remote: Option<Arc<dyn Remote>>,
    /// Cluster mode: per open workspace, the chunks its overlay wrote here that no committed
    /// root refers to yet. Each commit uploads its workspace's (again, if a collection
    /// started meanwhile) and only a successful commit clears them. A crash loses them with
    /// the overlay they belong to, so they are not recorded on disk.
    staged: Mutex<HashMap<uuid::Uuid, HashSet<Hash>>>,
    /// Cluster mode: uploaded or fetched objects kept in RocksDB, bounded.
    cache: Mutex<ObjectCache>,
    /// Cluster mode: objects a prefetch is fetching; a read that misses one waits for it
    /// (`fetched`) instead of asking the object store again.
    in_flight: Mutex<HashSet<Hash>>,
    fetched: Condvar,
    prefetcher: OnceLock<Prefetcher>,
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

/// Cluster mode: how long a commit uploads again while collections keep starting sweeps
/// during its upload, before it fails.
const STALE_RETRY_FOR: Duration = Duration::from_secs(60);

/// Bytes per upload request batch: bounds the memory an upload of staged chunks takes (the
/// object store packs a batch into a few objects and sends them in parallel).
const UPLOAD_BATCH_BYTES: usize = 32 << 20;

fn kind_cf(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Node => CF_NODES,
        ObjectKind::Chunk => CF_CHUNKS,
    }
}

/// Where a data dir records its on-disk format, in the `meta` column family.
const FORMAT_KEY: &[u8] = b"Fformat";

/// Record keys may not collide with root pointers or the format record.
fn check_meta(ops: &[MetaOp]) -> FsResult<()> {
    if ops
        .iter()
        .any(|(k, _)| k.first() == Some(&RootId::PREFIX) || k.first() == FORMAT_KEY.first())
    {
        return Err(FsError::Invalid("meta key collides with the store's own"));
    }
    Ok(())
}

/// Refuses a data dir of another on-disk format; stamps one that has no record yet (new, or
/// written before formats were recorded, which is this format) with this build's.
fn check_format(db: &DB, path: &Path) -> FsResult<()> {
    let meta = db
        .cf_handle(CF_META)
        .expect("column families are created at open");
    match db.get_cf(meta, FORMAT_KEY)? {
        Some(recorded) => Format::check(&recorded, &format!("data dir {}", path.display())),
        None => {
            let mut sync = WriteOptions::default();
            sync.set_sync(true);
            db.put_cf_opt(meta, FORMAT_KEY, Format::CURRENT.encode(), &sync)?;
            Ok(())
        }
    }
}

/// Copies `data[from..]` into `dst`; bytes of `dst` past the end of `data` stay as they are.
pub(crate) fn copy_span(dst: &mut [u8], data: &[u8], from: usize) {
    if from < data.len() {
        let m = dst.len().min(data.len() - from);
        dst[..m].copy_from_slice(&data[from..from + m]);
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
    // Let the kernel read ahead in table and blob files: a file's chunks are laid out in
    // the order they were written, so a sequential read of a file is mostly a sequential
    // read of a blob file. RocksDB's default (fadvise RANDOM) made every 64 KiB chunk a
    // separate synchronous disk read, which capped cold reads near 300 MB/s.
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

    /// Opens `path` as a cluster host's cache of objects (at most `cache_bytes` of them), with
    /// roots, records and objects in `remote`. The directory is emptied first: it holds
    /// nothing the cluster does not (what a crash left there was never acknowledged).
    pub fn open_cluster(
        path: &Path,
        opts: StoreOptions,
        remote: Arc<dyn Remote>,
        cache_bytes: u64,
    ) -> FsResult<Arc<Store>> {
        if path.exists() {
            std::fs::remove_dir_all(path)
                .map_err(|e| FsError::Storage(format!("{}: {e}", path.display())))?;
        }
        let store = Self::open_inner(path, opts, Some(remote), cache_bytes)?;
        let _ = store
            .prefetcher
            .set(Prefetcher::start(Arc::downgrade(&store)));
        Ok(store)
    }

    fn open_inner(
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
        let db = open_db(path, opts.block_cache_bytes)?;
        check_format(&db, path)?;
        let store = Arc::new(Store {
            db: RwLock::new(Some(db)),
            block_cache_bytes: opts.block_cache_bytes,
            failure: Mutex::new(None),
            unflushed: Mutex::new(HashSet::new()),
            healing: Mutex::new(Vec::new()),
            released: AtomicBool::new(false),
            collecting: AtomicBool::new(false),
            path: path.to_path_buf(),
            nodes: NodeCache::new(opts.node_cache_bytes),
            pins: Mutex::new(Pins::default()),
            open: Mutex::new(HashSet::new()),
            chunk_flushes: ChunkFlushes::default(),
            roots_lock: Mutex::new(()),
            released_bytes: AtomicU64::new(0),
            reserve_bytes: reserve_for(&disk_space(path)?),
            blob_gc: AtomicBool::new(false),
            remote,
            staged: Mutex::new(HashMap::new()),
            cache: Mutex::new(ObjectCache {
                lru: lru::LruCache::unbounded(),
                bytes: 0,
                limit: cache_bytes,
                hits: 0,
                misses: 0,
                prefetched: 0,
            }),
            in_flight: Mutex::new(HashSet::new()),
            fetched: Condvar::new(),
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
        RwLockReadGuard::try_map(self.db.read_recursive(), Option::as_ref)
            .map(Db)
            .map_err(|_| {
                FsError::Storage(if self.released.load(Ordering::SeqCst) {
                    "the store is closed (handed over)".into()
                } else {
                    "the store is reopening after a failed write".into()
                })
            })
    }

    /// Closes the database, once every operation using it has finished; until
    /// [`Store::reopen`], every operation fails. A takeover's successor opens it meanwhile.
    /// Durable state only survives: callers commit first.
    pub fn release(&self) {
        let mut db = self.db.write();
        self.released.store(true, Ordering::SeqCst);
        drop(db.take());
    }

    /// Opens the database again after [`Store::release`], once no other process holds it.
    pub fn reopen(&self) -> FsResult<()> {
        let mut db = self.db.write();
        if db.is_none() {
            *db = Some(open_db(&self.path, self.block_cache_bytes)?);
            // Opened as configured, without blob GC (see `compact_with`).
            self.blob_gc.store(false, Ordering::SeqCst);
            self.released.store(false, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Why writes fail now, if they do (see [`Store::heal`]).
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().clone()
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

    /// Records a failed write: the store is unhealthy until [`Store::heal`] succeeds.
    fn wrote<T>(&self, result: Result<T, rocksdb::Error>) -> FsResult<T> {
        result.map_err(|e| {
            let mut failure = self.failure.lock();
            if failure.is_none() {
                tracing::error!("store: a write failed ({e}); writes fail until the store heals");
                metrics::gauge!(crate::metrics::STORE_HEALTHY).set(0.0);
                *failure = Some(e.to_string());
            }
            e.into()
        })
    }

    /// After a failed write, once the cause has passed (a file can be made and synced in the
    /// data dir): closes the database and opens it again, in place,
    /// while every caller waits. Chunks written without the WAL that no flush covered are
    /// read back first and written again after, so no overlay loses a byte; what went
    /// through the WAL is replayed by the reopen. Sessions stay mounted throughout.
    pub fn heal(&self) -> FsResult<()> {
        // Not the space reserve: a full disk is emptied by deletes, which need a database
        // that takes writes again.
        probe_writable(&self.path)?;
        let mut db = self.db.write();
        if self.released.load(Ordering::SeqCst) {
            return Err(FsError::Storage("the store is closed (handed over)".into()));
        }
        if let Some(old) = db.take() {
            let hashes: Vec<Hash> = self.unflushed.lock().iter().copied().collect();
            let cf = old
                .cf_handle(CF_CHUNKS)
                .expect("column families are created at open");
            let mut healing = self.healing.lock();
            for h in hashes {
                match old.get_cf(cf, h.0) {
                    Ok(Some(v)) => healing.push((h, v)),
                    Ok(None) => {}
                    Err(e) => tracing::error!("heal: reading back chunk {h}: {e}"),
                }
            }
            drop(old);
        }
        let reopened = open_db(&self.path, self.block_cache_bytes)?;
        let mut healing = self.healing.lock();
        let cf = reopened
            .cf_handle(CF_CHUNKS)
            .expect("column families are created at open");
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        for (h, v) in healing.iter() {
            reopened.put_cf_opt(cf, h.0, v, &wo)?;
        }
        let mut fo = FlushOptions::default();
        fo.set_wait(true);
        reopened.flush_cf_opt(cf, &fo)?;
        healing.clear();
        self.unflushed.lock().clear();
        self.blob_gc.store(false, Ordering::SeqCst);
        *db = Some(reopened);
        *self.failure.lock() = None;
        metrics::gauge!(crate::metrics::STORE_HEALTHY).set(1.0);
        Ok(())
    }

    // ---- objects ----

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
            None => self.fetch(ObjectKind::Node, hash),
        }
    }

    /// Cluster mode: an object missing here, from the object store (checked against its
    /// hash, then cached here). `None` without a cluster or if the object store lacks it.
    fn fetch(&self, kind: ObjectKind, hash: &Hash) -> FsResult<Option<Vec<u8>>> {
        let Some(remote) = &self.remote else {
            return Ok(None);
        };
        if self.wait_in_flight(hash) {
            let db = self.db()?;
            let local = db.get_cf(db.cf(kind_cf(kind)), hash.0)?;
            drop(db);
            if let Some(bytes) = local {
                self.cache_touch(hash);
                return Ok(Some(bytes));
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
    fn wait_in_flight(&self, hash: &Hash) -> bool {
        let mut in_flight = self.in_flight.lock();
        if !in_flight.contains(hash) {
            return false;
        }
        while in_flight.contains(hash) {
            if self
                .fetched
                .wait_for(&mut in_flight, Duration::from_secs(60))
                .timed_out()
            {
                break;
            }
        }
        true
    }

    /// Checks an object from the object store against its hash and caches it here.
    fn admit(&self, kind: ObjectKind, hash: &Hash, bytes: &[u8]) -> FsResult<()> {
        let matches = match kind {
            ObjectKind::Node => Hash::of(bytes) == *hash,
            ObjectKind::Chunk => Hash::of(&decode_chunk(bytes)?) == *hash,
        };
        if !matches {
            return Err(FsError::corrupt(format!(
                "object {hash} from the object store does not match its hash"
            )));
        }
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
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        let db = self.db()?;
        db.put_cf_opt(db.cf(kind_cf(kind)), hash.0, bytes, &wo)?;
        drop(db);
        self.cache_insert(kind, *hash, bytes.len());
        Ok(())
    }

    /// Cluster mode: fetches, in parallel, the objects of `hashes` not held here (see
    /// `prefetch.rs`). Errors are left to the reads that need the objects.
    pub(crate) fn prefetch(&self, kind: ObjectKind, hashes: &[Hash]) {
        let Some(remote) = &self.remote else {
            return;
        };
        let Ok(db) = self.db() else {
            return;
        };
        let cf = db.cf(kind_cf(kind));
        let wanted: Vec<Hash> = {
            let mut in_flight = self.in_flight.lock();
            hashes
                .iter()
                .filter(|h| {
                    let cached = (kind == ObjectKind::Node && self.nodes.get(h).is_some())
                        || (db.key_may_exist_cf(cf, h.0)
                            && matches!(db.get_pinned_cf(cf, h.0), Ok(Some(_))));
                    !cached && in_flight.insert(**h)
                })
                .copied()
                .collect()
        };
        drop(db);
        if wanted.is_empty() {
            return;
        }
        match remote.get_objects(kind, &wanted) {
            Ok(objects) => {
                let mut n = 0;
                for (h, bytes) in wanted.iter().zip(objects) {
                    let Some(bytes) = bytes else { continue };
                    match self.admit(kind, h, &bytes) {
                        Ok(()) => n += 1,
                        Err(e) => tracing::warn!("prefetch: {e}"),
                    }
                }
                let mut c = self.cache.lock();
                c.misses += n;
                c.prefetched += n;
            }
            Err(e) => tracing::debug!("prefetch: {e}"),
        }
        let mut in_flight = self.in_flight.lock();
        for h in &wanted {
            in_flight.remove(h);
        }
        self.fetched.notify_all();
    }

    /// Cluster mode: queues a prefetch for the background thread.
    pub(crate) fn prefetch_later(&self, job: Job) {
        if let Some(p) = self.prefetcher.get() {
            p.send(job);
        }
    }

    /// Cluster mode: records an object as cached (uploaded or fetched) and evicts the least
    /// recently used ones past the limit. Chunks not uploaded yet are never evicted.
    fn cache_insert(&self, kind: ObjectKind, hash: Hash, len: usize) {
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
        let staged = self.staged.lock();
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        for (h, k) in evicted {
            if staged.values().any(|s| s.contains(&h)) {
                continue;
            }
            let deleted = self
                .db()
                .and_then(|db| Ok(db.delete_cf_opt(db.cf(kind_cf(k)), h.0, &wo)?));
            if let Err(e) = deleted {
                tracing::warn!("evicting {h} from the cache: {e}");
            }
        }
    }

    fn cache_touch(&self, hash: &Hash) {
        if self.remote.is_some() {
            let mut c = self.cache.lock();
            c.lru.promote(hash);
            c.hits += 1;
        }
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
            None => decode_chunk(
                &self
                    .fetch(ObjectKind::Chunk, hash)?
                    .ok_or_else(|| FsError::corrupt(format!("missing chunk {hash}")))?,
            )?,
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
        let db = self.db()?;
        let Some(stored) = db.get_pinned_cf(db.cf(CF_CHUNKS), hash.0)? else {
            let stored = self
                .fetch(ObjectKind::Chunk, hash)?
                .ok_or_else(|| FsError::corrupt(format!("missing chunk {hash}")))?;
            let data = decode_chunk(&stored)?;
            if data.len() != len {
                return Err(FsError::corrupt(format!(
                    "chunk {hash} has the wrong length"
                )));
            }
            copy_span(dst, &data, from);
            return Ok(());
        };
        self.cache_touch(hash);
        let wrong_length = || FsError::corrupt(format!("chunk {hash} has the wrong length"));
        let mut copy = |data: &[u8]| {
            if data.len() != len {
                return Err(wrong_length());
            }
            copy_span(dst, data, from);
            Ok(())
        };
        match stored.split_first() {
            Some((&CHUNK_RAW, raw)) => copy(raw),
            _ => copy(&decode_chunk(&stored)?),
        }
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
        let db = self.db()?;
        let cf = db.cf(CF_CHUNKS);
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        // One put per chunk, not one batch: a batch of many MiB grows by doubling into fresh
        // pages (copies and page faults were a third of a sequential write's daemon CPU), and
        // unlogged chunk writes need no atomicity (they are pinned until a commit refers to them).
        for (h, data) in chunks {
            self.wrote(db.put_cf_opt(cf, h.0, encode_chunk(data.as_ref()), &wo))?;
            // After the put: a flush that takes it from the set started after it landed.
            self.unflushed.lock().insert(*h);
        }
        drop(db);
        // Counted after the write: a flush that starts after this count covers these bytes.
        self.chunk_flushes.written.fetch_add(1, Ordering::SeqCst);
        if let (Some(_), Some(ws)) = (&self.remote, owner) {
            self.staged
                .lock()
                .entry(ws)
                .or_default()
                .extend(chunks.iter().map(|(h, _)| *h));
        }
        Ok(())
    }

    /// Cluster mode: uploads `nodes` and every chunk staged for `owner`, in batches of about
    /// [`UPLOAD_BATCH_BYTES`], before a root may refer to them. They stay staged until the
    /// commit succeeds.
    fn upload(
        &self,
        remote: &dyn Remote,
        owner: Option<uuid::Uuid>,
        nodes: &[(Hash, Vec<u8>)],
        token: CommitToken,
    ) -> FsResult<Vec<Hash>> {
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        {
            let db = self.db()?;
            for (h, bytes) in nodes {
                db.put_cf_opt(db.cf(CF_NODES), h.0, bytes, &wo)?;
            }
        }
        let staged: Vec<Hash> = owner
            .and_then(|ws| self.staged.lock().get(&ws).cloned())
            .unwrap_or_default()
            .into_iter()
            .collect();
        // Nodes and chunks share batches: a small commit is one upload.
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        let nodes_then_chunks = nodes
            .iter()
            .map(|(h, b)| FsResult::Ok((ObjectKind::Node, *h, b.clone())))
            .chain(staged.iter().map(|h| {
                let db = self.db()?;
                let stored = db
                    .get_cf(db.cf(CF_CHUNKS), h.0)?
                    .ok_or_else(|| FsError::corrupt(format!("staged chunk {h} is missing")))?;
                Ok((ObjectKind::Chunk, *h, stored))
            }));
        for object in nodes_then_chunks {
            let object: (ObjectKind, Hash, Vec<u8>) = object?;
            batch_bytes += object.2.len();
            batch.push(object);
            if batch_bytes >= UPLOAD_BATCH_BYTES {
                remote.put_objects(std::mem::take(&mut batch), token)?;
                batch_bytes = 0;
            }
        }
        if !batch.is_empty() {
            remote.put_objects(batch, token)?;
        }
        for (h, b) in nodes {
            self.cache_insert(ObjectKind::Node, *h, b.len());
        }
        Ok(staged)
    }

    /// Cluster mode: uploads what a new root of `owner` refers to and then writes the root
    /// with `write_root`, again from the upload if a collection started in between (its
    /// sweep may have deleted an object the upload found present). A success unstages the
    /// workspace's chunks, now in the object store and referenced.
    fn upload_and_write_root(
        &self,
        remote: &dyn Remote,
        owner: Option<uuid::Uuid>,
        nodes: &[(Hash, Vec<u8>)],
        write_root: impl Fn(CommitToken) -> FsResult<()>,
    ) -> FsResult<()> {
        // Each refusal means a sweep started during the upload; sweeps are rare (one per
        // `--gc-interval`), so this gives up only if collections run back to back.
        let started = std::time::Instant::now();
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
                for h in &uploaded {
                    set.remove(h);
                }
            }
            for h in uploaded {
                let db = self.db()?;
                let len = db
                    .get_pinned_cf(db.cf(CF_CHUNKS), h.0)?
                    .map_or(0, |v| v.len());
                drop(db);
                self.cache_insert(ObjectKind::Chunk, h, len);
            }
        }
        Ok(())
    }

    /// Makes every unlogged chunk write that completed before this call durable. Every path
    /// that flushes `chunks` (commits, compaction) goes through here, and each flush records
    /// only the writes it was sure to cover: the count read *before* it started. A write that
    /// lands during a flush stays counted as unflushed, so the next commit flushes again.
    fn flush_chunks(&self, always: bool) -> FsResult<()> {
        let covered = self.chunk_flushes.written.load(Ordering::SeqCst);
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

    // ---- disk space ----

    pub fn disk_space(&self) -> FsResult<DiskSpace> {
        disk_space(&self.path)
    }

    pub fn reserve_bytes(&self) -> u64 {
        self.reserve_bytes
    }

    /// Refuses (ENOSPC) a write that would leave less than the reserve free, counting
    /// `unwritten` bytes the caller holds in memory and will write later. Deletes never call
    /// this, so they can always use the reserve.
    pub fn check_space(&self, unwritten: u64) -> FsResult<()> {
        // Chunks in memtables are on their way to the disk too (up to 3 x 64 MiB).
        let memtables = {
            let db = self.db()?;
            db.property_int_value_cf(db.cf(CF_CHUNKS), "rocksdb.cur-size-all-mem-tables")?
                .unwrap_or(0)
        };
        let needed = self.reserve_bytes + unwritten + memtables;
        if self.disk_space()?.avail_bytes() < needed {
            return Err(FsError::NoSpace);
        }
        Ok(())
    }

    /// Blob GC rewrites the live chunks of the oldest half of the blob files before it frees
    /// them, so it may need as much free space as half the blob files hold: more than the
    /// reserve on a nearly full disk, where RocksDB meeting ENOSPC would stop writing. Without
    /// it, blob files are still dropped once all their chunks are dead.
    fn room_for_blob_gc(&self) -> FsResult<bool> {
        let blobs = {
            let db = self.db()?;
            db.property_int_value_cf(db.cf(CF_CHUNKS), "rocksdb.total-blob-file-size")?
                .unwrap_or(0)
        };
        Ok(self.disk_space()?.avail_bytes() >= self.reserve_bytes + blobs / 2)
    }

    fn set_blob_gc(&self, on: bool) -> FsResult<()> {
        if self.blob_gc.swap(on, Ordering::SeqCst) != on {
            let value = if on { "true" } else { "false" };
            let db = self.db()?;
            db.set_options_cf(
                db.cf(CF_CHUNKS),
                &[("enable_blob_garbage_collection", value)],
            )?;
        }
        Ok(())
    }

    // ---- garbage accounting ----

    pub(crate) fn note_released(&self, bytes: u64) {
        self.released_bytes.fetch_add(bytes, Ordering::SeqCst);
    }

    /// Chunk bytes committed roots stopped referencing since the last collection began (an
    /// upper bound of what a collection would free now: clones and snapshots may share them).
    pub fn released_bytes(&self) -> u64 {
        self.released_bytes.load(Ordering::SeqCst)
    }

    // ---- pins ----

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

    // ---- roots ----

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
    /// batch. Chunks too large for the WAL are written unlogged and flushed first, so the root
    /// never becomes durable before the objects it references.
    pub fn commit<C: AsRef<[u8]>>(
        &self,
        id: RootId,
        record: &RootRecord,
        nodes: &[(Hash, Vec<u8>)],
        chunks: &[(Hash, C)],
        sync: bool,
    ) -> FsResult<()> {
        if let Some(remote) = &self.remote {
            let RootId::Workspace(ws) = id else {
                return Err(FsError::Invalid("only workspaces commit"));
            };
            self.put_chunks_unlogged(Some(ws), chunks)?;
            return self.upload_and_write_root(remote.as_ref(), Some(ws), nodes, |token| {
                remote.commit_root(ws, record, token)
            });
        }
        let chunk_bytes: usize = chunks.iter().map(|(_, c)| c.as_ref().len()).sum();
        let mut batch = WriteBatch::default();
        if chunk_bytes > SMALL_COMMIT_BYTES {
            self.put_chunks_unlogged(None, chunks)?;
        } else {
            let db = self.db()?;
            for (h, data) in chunks {
                batch.put_cf(db.cf(CF_CHUNKS), h.0, encode_chunk(data.as_ref()));
            }
        }
        self.flush_chunks(false)?;
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
        self.write(batch, sync)
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
            self.write(batch, true)
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
        self.write(batch, true)
    }

    // ---- open workspaces ----

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
        self.staged.lock().remove(&id);
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

    // ---- metadata for upper layers ----

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

    fn add_meta(&self, batch: &mut WriteBatch, ops: &[MetaOp]) -> FsResult<()> {
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

    /// Bytes of every file in the data dir (tables, blobs, WAL, manifest): what the store
    /// takes on disk now. Files RocksDB deletes meanwhile count as nothing.
    pub fn dir_bytes(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return 0;
            };
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(self.path())
    }

    /// Bytes RocksDB reports for live SST and blob files, per column family.
    pub fn disk_usage(&self) -> FsResult<u64> {
        let mut total = 0;
        let db = self.db()?;
        for cf in [CF_CHUNKS, CF_NODES, CF_META] {
            let cf = db.cf(cf);
            for prop in [
                "rocksdb.total-sst-files-size",
                "rocksdb.total-blob-file-size",
            ] {
                total += db.property_int_value_cf(cf, prop)?.unwrap_or(0);
            }
        }
        Ok(total)
    }

    /// Flushes memtables and compacts every column family fully, bottommost files included
    /// (tests and benchmarks use it to measure settled sizes).
    pub fn compact(&self) -> FsResult<()> {
        let all = [CF_CHUNKS, CF_NODES, CF_META].map(|cf| (cf, None, None));
        self.compact_with(&all, true)
    }

    /// Compacts only the key ranges a collection deleted from, without forcing a rewrite of
    /// bottommost files nothing reached: the tombstones meet the values they delete, and blob
    /// files no key refers to any more are dropped. Cheaper than [`Store::compact`] on a
    /// busy store, which is why the collector uses it.
    pub fn compact_ranges(&self, ranges: &[crate::ops::gc::DeletedRange]) -> FsResult<()> {
        let ranges: Vec<_> = ranges
            .iter()
            .map(|(cf, first, last)| (*cf, Some(first.as_slice()), Some(last.as_slice())))
            .collect();
        self.compact_with(&ranges, false)
    }

    /// Flushes, then compacts each range, relocating the live chunks of old blob files (blob
    /// GC) when the disk has room for it. A compaction that ran without relocation and freed
    /// enough for it is followed by one forced compaction of the chunks that relocates, so
    /// partly dead blob files give their space back too.
    fn compact_with(&self, ranges: &[KeyRange<'_>], force_bottommost: bool) -> FsResult<()> {
        self.flush_chunks(true)?;
        let mut fo = FlushOptions::default();
        fo.set_wait(true);
        for name in [CF_NODES, CF_META] {
            let db = self.db()?;
            self.wrote(db.flush_cf_opt(db.cf(name), &fo))?;
        }
        let mut force = rocksdb::CompactOptions::default();
        force.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        let plain = rocksdb::CompactOptions::default();
        let co = if force_bottommost { &force } else { &plain };
        let relocate = self.room_for_blob_gc()?;
        if !relocate {
            tracing::info!("blob GC skipped: low on space");
        }
        let compacted = (|| {
            self.set_blob_gc(relocate)?;
            for (cf, from, to) in ranges {
                let db = self.db()?;
                db.compact_range_cf_opt(db.cf(cf), *from, *to, co);
            }
            if !relocate && self.room_for_blob_gc()? {
                tracing::info!("blob GC: room again, relocating");
                self.set_blob_gc(true)?;
                let db = self.db()?;
                db.compact_range_cf_opt(db.cf(CF_CHUNKS), None::<&[u8]>, None::<&[u8]>, &force);
            }
            Ok(())
        })();
        self.set_blob_gc(false)?;
        compacted
    }
}

/// A column family and a key range in it (`None`: open-ended).
type KeyRange<'a> = (&'a str, Option<&'a [u8]>, Option<&'a [u8]>);

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
fn supports_direct_io(dir: &Path) -> bool {
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

/// statvfs of the filesystem holding `path`.
fn disk_space(path: &Path) -> FsResult<DiskSpace> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| FsError::Invalid("data dir path"))?;
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is NUL-terminated and `s` is a valid out-pointer for statvfs.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::statvfs(c.as_ptr(), s.as_mut_ptr()) };
    if rc != 0 {
        return Err(FsError::Storage(format!(
            "statvfs: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    #[allow(unsafe_code)]
    let s = unsafe { s.assume_init() };
    Ok(DiskSpace {
        blocks: s.f_blocks,
        fragment: s.f_frsize,
        free: s.f_bfree,
        avail: s.f_bavail,
        files_free: s.f_ffree,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Defect: a compaction cleared the "chunks not flushed" flag after its flush, so a chunk
    /// written unlogged between that flush and the clearing was never flushed, and a synced
    /// root could refer to a chunk that lived only in the memtable.
    #[test]
    fn a_chunk_written_during_a_compaction_flush_is_flushed_by_the_next_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ws = uuid::Uuid::from_u128(1);
        let record = crate::roots::create_workspace(&store, ws, &[]).unwrap();
        store
            .put_chunks_unlogged(None, &[(Hash::of(b"early"), vec![1; 4096])])
            .unwrap();
        let racing = vec![2u8; 4096];
        let writer = store.clone();
        let hook_chunk = racing.clone();
        *store.chunk_flushes.after_flush_hook.lock() = Some(Box::new(move || {
            writer
                .put_chunks_unlogged(None, &[(Hash::of(&hook_chunk), hook_chunk.clone())])
                .unwrap();
        }));
        store.compact().unwrap();
        // (The compaction itself may have flushed it since; what matters is that nothing
        // counts it as flushed without a flush that started after it.)
        assert!(
            store.chunks_unflushed(),
            "a write that raced a compaction's flush was counted as flushed"
        );
        // A small commit (chunks through the WAL) whose root would refer to the racing chunk.
        store
            .commit::<Vec<u8>>(RootId::Workspace(ws), &record, &[], &[], true)
            .unwrap();
        assert_eq!(
            memtable_entries(&store, CF_CHUNKS),
            0,
            "a synced commit left an unlogged chunk in the memtable"
        );
        assert!(!store.chunks_unflushed());
        assert_eq!(store.get_chunk(&Hash::of(&racing)).unwrap(), racing);
    }
}
