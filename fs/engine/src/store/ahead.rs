//! Cluster mode: a large write's chunks go up to the object store while it is written, so its
//! fsync (the commit) sends only the tail. Once a workspace has a batch of staged chunks not
//! sent yet, a thread of its own uploads them, reading each as the upload goes and keeping
//! the object store's packs in flight while the writer stages more. They stay staged: the
//! commit still offers every staged chunk, and the object store's index of what it holds
//! skips those already sent (or sends them again if a collection deleted them meanwhile, as
//! for any upload that a sweep overtook). A commit that finds an upload ahead running waits
//! for it to send what is staged, which keeps the pipe full across the fsync. Best effort: a
//! full queue or an error leaves the work to the commit.

use indexmap::IndexMap;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Weak};

use crate::error::{FsError, FsResult};
use crate::format::hash::Hash;
use crate::format::CHUNK_SIZE;
use crate::remote::{CommitToken, ObjectKind};

use super::Store;

/// Staged chunks not sent yet that start an upload ahead: 16 MiB of full chunks, two packs.
/// The upload then goes on with what the writer stages meanwhile, so starting early leaves no
/// CPU idle while a large write begins (at 64 MiB, a fifth of a second of one vCPU each time).
const AHEAD_CHUNKS: usize = (16 << 20) / CHUNK_SIZE;
/// Chunks one upload ahead sends at most (1 GiB of full chunks) before it writes their packs'
/// index and starts again: bounds the index it holds in memory.
const AHEAD_STREAM_CHUNKS: usize = (1 << 30) / CHUNK_SIZE;

/// Stored bytes of staged chunks kept in memory for their upload, at most this many: a few
/// packs beyond the batch that starts an upload ahead, so a writer the upload keeps up with
/// is never read back.
const STAGED_BYTES: usize = 64 << 20;

/// The stored bytes of chunks staged lately, until their upload takes them. A chunk not here
/// (the bound was reached, or an upload failed after taking it) is read back from the cache's
/// files, where it stays while staged.
#[derive(Default)]
pub(super) struct StagedBytes {
    chunks: HashMap<Hash, Vec<u8>>,
    bytes: usize,
}

/// A workspace's uploads (ahead and at commit) take its lock, so they never send the same
/// chunks side by side (each would make a pack of them, and both packs would stay). A
/// commit says it is waiting, and an upload ahead ends once it has sent the chunks staged
/// by then.
#[derive(Default)]
pub(super) struct UploadLock {
    lock: Mutex<()>,
    commits_waiting: AtomicUsize,
}

impl UploadLock {
    /// Takes the lock for a commit: an upload ahead holding it sends what is staged now and
    /// stops.
    pub(super) fn commit(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.commits_waiting.fetch_add(1, Ordering::SeqCst);
        let held = self.lock.lock();
        self.commits_waiting.fetch_sub(1, Ordering::SeqCst);
        held
    }
}

/// Per workspace: what was sent ahead, whether the uploader has it queued, and the lock its
/// uploads take.
#[derive(Default)]
pub(super) struct Ahead {
    sent: HashMap<uuid::Uuid, Sent>,
    queued: HashSet<uuid::Uuid>,
    locks: HashMap<uuid::Uuid, Arc<UploadLock>>,
}

struct Sent {
    /// How far into the staged chunks (in staging order) the uploader got: its progress only.
    through: usize,
    /// The chunks it sent: in packs the object store indexed, which stay while no
    /// collection starts, whichever session staged them.
    hashes: HashSet<Hash>,
    /// The commit token the first of them went up with.
    first: CommitToken,
}

impl Store {
    /// Starts the uploader thread; it ends when the store is dropped.
    pub(crate) fn start_uploader(self: &Arc<Self>) {
        let (tx, rx) = sync_channel::<uuid::Uuid>(4);
        let store: Weak<Store> = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("upload-ahead".into())
            .spawn(move || {
                while let Ok(ws) = rx.recv() {
                    let Some(store) = store.upgrade() else { return };
                    if let Err(e) = store.upload_ahead(ws) {
                        tracing::debug!("upload ahead: {e}");
                    }
                }
            });
        match spawned {
            Ok(_) => {
                let _ = self.uploader.set(tx);
            }
            Err(e) => tracing::warn!("no upload-ahead thread: {e}"),
        }
    }

    /// After a write staged chunks for `ws` (`staged` of them now): asks the uploader to
    /// send them once a batch is waiting.
    pub(super) fn upload_ahead_later(&self, ws: uuid::Uuid, staged: usize) {
        let Some(tx) = self.uploader.get() else {
            return;
        };
        let mut ahead = self.ahead.lock();
        let through = ahead.sent.get(&ws).map_or(0, |s| s.through);
        // Queued once: the uploader goes on while full batches wait.
        if staged >= through + AHEAD_CHUNKS && ahead.queued.insert(ws) && tx.try_send(ws).is_err() {
            ahead.queued.remove(&ws);
        }
    }

    /// Keeps a staged chunk's stored bytes for its upload, while they fit.
    pub(super) fn keep_staged(&self, h: Hash, stored: Vec<u8>) {
        let mut kept = self.staged_bytes.lock();
        if kept.bytes + stored.len() <= STAGED_BYTES && !kept.chunks.contains_key(&h) {
            kept.bytes += stored.len();
            kept.chunks.insert(h, stored);
        }
    }

    /// A staged chunk's stored bytes for its upload: taken from memory, or read back from
    /// the cache's files (checked against their CRC there).
    pub(super) fn staged_chunk(&self, h: &Hash) -> FsResult<Option<Vec<u8>>> {
        if let Some(stored) = self.take_staged(h) {
            return Ok(Some(stored));
        }
        Ok(self.chunk_files.as_ref().and_then(|files| files.get(h)))
    }

    /// The chunks a closed workspace staged and no commit sent: their kept bytes are
    /// dropped, and their copies in the cache's files are the cache's to evict in turn.
    pub(super) fn forget_staged(&self, staged: IndexMap<Hash, u32>) {
        for (h, footprint) in staged {
            self.take_staged(&h);
            self.cache_insert(ObjectKind::Chunk, h, footprint as usize);
        }
    }

    pub(super) fn take_staged(&self, h: &Hash) -> Option<Vec<u8>> {
        let mut kept = self.staged_bytes.lock();
        let stored = kept.chunks.remove(h)?;
        kept.bytes -= stored.len();
        Some(stored)
    }

    /// Of `ws`'s staged `chunks`, those a commit with `token` must still offer: all but the
    /// ones sent ahead, unless a collection started since the first of those went up.
    pub(super) fn not_sent_ahead(
        &self,
        ws: uuid::Uuid,
        token: CommitToken,
        chunks: &[Hash],
    ) -> Vec<Hash> {
        let ahead = self.ahead.lock();
        match ahead.sent.get(&ws) {
            Some(sent) if sent.first == token => chunks
                .iter()
                .filter(|h| !sent.hashes.contains(*h))
                .copied()
                .collect(),
            _ => chunks.to_vec(),
        }
    }

    /// The lock `ws`'s uploads (ahead and at commit) take.
    pub(super) fn upload_lock(&self, ws: uuid::Uuid) -> Arc<UploadLock> {
        self.ahead.lock().locks.entry(ws).or_default().clone()
    }

    /// After a commit of `ws` sent its staged chunks, or when it closes: starts again (what
    /// a commit left staged came after its upload began).
    pub(super) fn reset_ahead(&self, ws: uuid::Uuid, closed: bool) {
        let mut ahead = self.ahead.lock();
        ahead.sent.remove(&ws);
        if closed {
            ahead.locks.remove(&ws);
        }
    }

    /// Sends `ws`'s staged chunks not sent yet while the writer stages more, until none is
    /// left, or a commit waits and those staged before it are sent.
    fn upload_ahead(&self, ws: uuid::Uuid) -> FsResult<()> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        self.ahead.lock().queued.remove(&ws);
        let lock = self.upload_lock(ws);
        loop {
            let _one = lock.lock.lock();
            // A commit is waiting for the lock: it sends every staged chunk itself.
            if lock.commits_waiting.load(Ordering::SeqCst) > 0 {
                return Ok(());
            }
            let through = self.ahead.lock().sent.get(&ws).map_or(0, |s| s.through);
            let staged = self.staged.lock().get(&ws).map_or(0, |set| set.len());
            if staged < through + AHEAD_CHUNKS {
                return Ok(());
            }
            let token = remote.begin_commit()?;
            let mut sending = Vec::new();
            // Once a commit waits, the chunks staged by then: this upload sends them on,
            // keeping the pipe full, rather than stopping for the commit to send them after
            // the packs in flight drain. Chunks staged later are the commit's.
            let mut commit_wants: Option<usize> = None;
            let put = {
                let mut chunks = std::iter::from_fn(|| {
                    if sending.len() == AHEAD_STREAM_CHUNKS {
                        return None;
                    }
                    let staged = self.staged.lock();
                    let set = staged.get(&ws)?;
                    if lock.commits_waiting.load(Ordering::SeqCst) > 0
                        && through + sending.len() >= *commit_wants.get_or_insert(set.len())
                    {
                        return None;
                    }
                    let h = *set.get_index(through + sending.len())?.0;
                    drop(staged);
                    sending.push(h);
                    // Gone: damaged in the cache's files, or evicted once its workspace closed.
                    Some(self.staged_chunk(&h).and_then(|stored| {
                        Ok((ObjectKind::Chunk, h, stored.ok_or(FsError::NotFound)?))
                    }))
                });
                remote.put_objects(&mut chunks, token)
            };
            // Past them either way: a failed upload is not tried again over the same chunks
            // (one gone from RocksDB would fail every retry after all the rest); the commit
            // offers every staged chunk not recorded as sent.
            let mut ahead = self.ahead.lock();
            let sent = ahead.sent.entry(ws).or_insert_with(|| Sent {
                through: 0,
                hashes: HashSet::new(),
                first: token,
            });
            sent.through = through + sending.len();
            put?;
            sent.hashes.extend(sending);
        }
    }
}
