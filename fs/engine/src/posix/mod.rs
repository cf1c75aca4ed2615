//! The POSIX layer: a mounted workspace's operations over its committed tree plus an
//! in-memory overlay of changes, which [`Workspace::commit`] turns into a new root.
//!
//! The overlay holds dirty tree entries, dirty inodes (write-back), and dirty chunk buffers.
//! A chunk buffer is sealed (hashed, pinned, queued for the store) when a write fills it to its
//! end, when dirty memory passes a limit, and at commit; sealed chunks are written to RocksDB
//! without the WAL in large batches and flushed before the commit that references them.
//! Nothing here knows about FUSE: every operation returns an [`FsResult`].
//!
//! This file holds a workspace's lifecycle (open, refs, statfs) and its commit; `types` what
//! the operations take and answer; `overlay` the state and its reads; `namespace`, `io` and
//! `xattr` the operations; `dirs` the overlay's directory entries and link counts, `data` its
//! chunk buffers and file data.

use bytes::Bytes;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Instant;

use crate::error::{FsError, FsResult};
use crate::format::hash::Hash;
use crate::format::keys::{self};
use crate::format::records::{self, Super, Timespec};
use crate::format::roots::{RootId, RootRecord};
use crate::metrics as m;
use crate::store::Store;
use crate::tree;

mod data;
mod dirs;
mod io;
mod journal;
mod namespace;
mod overlay;
mod types;
mod xattr;

use overlay::State;
pub use types::{
    Attr, DirEntry, Limits, NewNode, SetAttr, StatFs, TimeSet, LINK_MAX, MAX_FILE_SIZE, NAME_MAX,
    RENAME_EXCHANGE, RENAME_NOREPLACE, XATTR_NAME_MAX, XATTR_SIZE_MAX,
};

/// One open, writable workspace.
pub struct Workspace {
    id: uuid::Uuid,
    store: Arc<Store>,
    state: Mutex<State>,
    /// A snapshot's state: never committed (its mount answers EROFS to writes).
    read_only: bool,
}

fn check_name(name: &[u8]) -> FsResult<()> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(FsError::Invalid("bad file name"));
    }
    Ok(())
}

fn is_dot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

impl Workspace {
    /// Opens a workspace for reading and writing. Only one handle per workspace at a time.
    pub fn open(store: Arc<Store>, id: uuid::Uuid) -> FsResult<Workspace> {
        Self::open_referenced(store, id, &[])
    }

    /// Opens a workspace whose mount this process takes over with the kernel's references
    /// to its inodes, `(inode, count)` (see [`Workspace::kernel_refs`]).
    pub fn open_referenced(
        store: Arc<Store>,
        id: uuid::Uuid,
        refs: &[(u64, u64)],
    ) -> FsResult<Workspace> {
        store.mark_open(id)?;
        let loaded = State::load(&store, RootId::Workspace(id), id).and_then(|mut st| {
            st.kernel_refs = refs.iter().copied().collect();
            // What fsyncs journaled and no commit took in (the process crashed or lost
            // power), committed below.
            let replayed = store.journal(id).and_then(|entries| st.replay(entries));
            // Files unlinked while open when the last session ended are freed now.
            match replayed.and_then(|()| st.purge_orphans()) {
                Ok(()) => Ok(st),
                Err(e) => {
                    st.release_pins();
                    Err(e)
                }
            }
        });
        let ws = match loaded {
            Ok(st) => Workspace {
                id,
                store: store.clone(),
                state: Mutex::new(st),
                read_only: false,
            },
            Err(e) => {
                store.mark_closed(id);
                return Err(e);
            }
        };
        if ws.state.lock().journal.entries > 0 {
            // If this fails (a full disk), the overlay holds what was replayed and the next
            // commit retries, as for any change; the session need not wait for it.
            if let Err(e) = ws.commit(true) {
                tracing::warn!("workspace {id}: committing its replayed fsync journal: {e}");
            }
        }
        Ok(ws)
    }

    /// Opens and commits every workspace a crash left journal entries for, so that clones,
    /// snapshots and exports of their committed state hold what their fsyncs made durable.
    /// Returns how many. Run before anything is served. One that fails stays journaled (and
    /// its chunks kept) for its next open, which answers the error then.
    pub fn settle_journals(store: &Arc<Store>) -> FsResult<usize> {
        let mut settled = 0;
        for id in store.journaled_workspaces()? {
            match Workspace::open(store.clone(), id) {
                Ok(ws) if ws.state.lock().journal.entries == 0 => settled += 1,
                Ok(_) => {} // its commit failed, and said why
                // Its root is gone (a delete drops the journal with it; this is the rest).
                Err(FsError::NotFound) if store.get_root(RootId::Workspace(id))?.is_none() => {
                    store.drop_journal(&[id])?;
                }
                Err(e) => tracing::error!("workspace {id}: replaying its fsync journal: {e}"),
            }
        }
        Ok(settled)
    }

    /// Opens a snapshot read-only, while its workspace may be open too. Held open like a
    /// workspace (one handle at a time; in a cluster, on this host's lease), so it cannot be
    /// deleted meanwhile. Commits do nothing; callers refuse writes (its mount answers EROFS).
    pub fn open_snapshot(store: Arc<Store>, snapshot: uuid::Uuid) -> FsResult<Workspace> {
        store.mark_open(snapshot)?;
        match State::load(&store, RootId::Snapshot(snapshot), snapshot) {
            Ok(st) => Ok(Workspace {
                id: snapshot,
                store,
                state: Mutex::new(st),
                read_only: true,
            }),
            Err(e) => {
                store.mark_closed(snapshot);
                Err(e)
            }
        }
    }

    /// A read-only view of the state whose tree is `root`, not held open: the caller keeps
    /// the tree from being collected meanwhile (a pin, or a root that cannot change).
    pub fn at_root(store: Arc<Store>, root: Hash) -> FsResult<Workspace> {
        let st = State::at(&store, root, 0, uuid::Uuid::nil())?;
        Ok(Workspace {
            id: uuid::Uuid::nil(),
            store,
            state: Mutex::new(st),
            read_only: true,
        })
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub fn id(&self) -> uuid::Uuid {
        self.id
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The last committed root.
    pub fn committed_root(&self) -> Hash {
        self.state.lock().root
    }

    /// Files and logical bytes, including uncommitted changes.
    pub fn counters(&self) -> Super {
        self.state.lock().sup.clone()
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        self.state.lock().attr(ino)
    }

    /// The data dir's disk, or the quota where one is set, so `df` in a session tells how
    /// much this workspace may still write.
    pub fn statfs(&self) -> FsResult<StatFs> {
        let (sup, limits) = {
            let st = self.state.lock();
            (st.sup.clone(), st.limits)
        };
        let disk = self.store.disk_space()?;
        let block_size = 4096u64;
        let scale = |n: u64| n * disk.fragment / block_size;
        let used = sup.used_bytes().div_ceil(block_size);
        let (mut blocks, mut free, mut avail) = (
            scale(disk.blocks).max(used),
            scale(disk.free),
            scale(disk.avail),
        );
        if let Some(q) = limits.bytes {
            let left = q.saturating_sub(sup.used_bytes()) / block_size;
            blocks = q / block_size;
            free = free.min(left);
            avail = avail.min(left);
        }
        let (files, files_free) = match limits.inodes {
            Some(q) => (q, q.saturating_sub(sup.files)),
            None => (sup.files + disk.files_free, disk.files_free),
        };
        Ok(StatFs {
            block_size: block_size as u32,
            blocks,
            blocks_free: free,
            blocks_avail: avail,
            files,
            files_free,
            name_max: NAME_MAX as u32,
        })
    }

    /// Sets the quota enforced from now on (existing contents may exceed it).
    pub fn set_limits(&self, limits: Limits) {
        self.state.lock().limits = limits;
    }

    /// Records one more kernel reference to `ino`: it outlives its last link until
    /// [`Workspace::release`] drops every reference.
    pub fn retain(&self, ino: u64) {
        *self.state.lock().kernel_refs.entry(ino).or_insert(0) += 1;
    }

    /// The kernel's references, `(inode, count)`: what a process taking the mount over needs.
    pub fn kernel_refs(&self) -> Vec<(u64, u64)> {
        let st = self.state.lock();
        st.kernel_refs.iter().map(|(i, n)| (*i, *n)).collect()
    }

    /// Takes the kernel's references of a snapshot mount taken over from another process.
    pub fn inherit_refs(&self, refs: &[(u64, u64)]) {
        self.state.lock().kernel_refs = refs.iter().copied().collect();
    }

    /// Drops `n` kernel references to `ino` (FUSE `forget`); an unlinked inode without
    /// references is freed.
    pub fn release(&self, ino: u64, n: u64) -> FsResult<()> {
        let mut st = self.state.lock();
        let Some(refs) = st.kernel_refs.get_mut(&ino) else {
            return Ok(());
        };
        *refs = refs.saturating_sub(n);
        if *refs == 0 {
            st.kernel_refs.remove(&ino);
            if st.inode(ino).is_ok_and(|i| i.nlink == 0) {
                st.purge(ino)?;
            }
        }
        Ok(())
    }

    /// The workspace's mount is gone (a plain unmount, not a lazy detach): the kernel holds
    /// no reference to any inode now, whatever FORGETs it never sent, so files unlinked while
    /// referenced are freed before the final commit instead of at the next session's start.
    pub fn unmounted(&self) -> FsResult<()> {
        let mut st = self.state.lock();
        st.kernel_refs.clear();
        st.purge_orphans()
    }

    /// fsync(2) of anything in the workspace: every change so far durable. Small changes
    /// are appended to the fsync journal (one WAL write and sync; `journal.rs`), larger ones
    /// and a cluster host's are committed.
    pub fn fsync(&self) -> FsResult<()> {
        if self.read_only {
            return Ok(());
        }
        let started = Instant::now();
        let mut st = self.state.lock();
        let r = if st.is_clean() {
            self.store.sync_wal()
        } else {
            self.sync_changes(&mut st)
        };
        metrics::histogram!(m::FSYNC_SECONDS).record(started.elapsed().as_secs_f64());
        r
    }

    /// An fsync of an overlay with changes: one journal entry of what changed since the last
    /// one, or a commit (see `journal.rs`). A store that failed a write journals nothing
    /// until it heals, and an entry that fails is replaced by a commit: the fsync is served
    /// wherever the store can take it.
    fn sync_changes(&self, st: &mut State) -> FsResult<()> {
        let journals = self.store.journals() && self.store.failure().is_none();
        match journals.then(|| st.journal_entry()).flatten() {
            // What the last entry holds (an fsync again, of another file, say).
            Some(next) if next.is_empty() => self.store.sync_wal(),
            Some(next) => {
                match self.store.append_journal(
                    self.id,
                    st.journal.seq,
                    &next.entry,
                    &next.chunks,
                    next.bytes,
                ) {
                    Ok(()) => {
                        st.journaled(next);
                        metrics::counter!(m::FSYNCS_JOURNALED).increment(1);
                        Ok(())
                    }
                    // The entry may have landed all the same (its WAL write went through,
                    // the sync failed): the commit deletes it, and until one succeeds fsyncs
                    // commit.
                    Err(e) => {
                        tracing::debug!(
                            "workspace {}: journal entry failed ({e}); committing",
                            self.id
                        );
                        st.journal.entries += 1;
                        st.journal.must_commit = true;
                        self.commit_locked(st, true).map(drop)
                    }
                }
            }
            None => self.commit_locked(st, true).map(drop),
        }
    }

    /// Commits the overlay as the workspace's new root in one batch; with `sync`, durable
    /// (WAL fsynced) before it returns. Returns the committed root.
    pub fn commit(&self, sync: bool) -> FsResult<Hash> {
        if self.read_only {
            return Ok(self.state.lock().root);
        }
        let mut st = self.state.lock();
        self.commit_locked(&mut st, sync)
    }

    fn commit_locked(&self, st: &mut State, sync: bool) -> FsResult<Hash> {
        let started = Instant::now();
        st.seal_all()?;
        for (ino, inode) in std::mem::take(&mut st.inodes) {
            st.kv
                .insert(keys::inode(ino), Some(records::encode(&inode)));
        }
        let drop_journal = st.journal.entries > 0;
        if st.kv.is_empty() && st.pending.is_empty() && !drop_journal {
            if sync {
                self.store.sync_wal()?;
            }
            return Ok(st.root);
        }
        let sup = records::encode(&st.sup);
        st.kv.insert(keys::super_key(), Some(sup));
        let (root, nodes) = tree::apply(&self.store, &st.root, &st.kv)?;
        // Nothing is written unless all of it fits: RocksDB that meets a full disk stops
        // writing altogether until restarted. Nodes land twice (WAL, then their table), chunks
        // once (or twice, at most 1 MiB, in a small commit), plus room for WAL and manifest.
        let chunk_bytes: usize = st.pending.values().map(|d| d.len()).sum();
        let node_bytes: usize = nodes.iter().map(|(_, b)| b.len()).sum();
        let needed = (chunk_bytes + 2 * node_bytes) as u64 + (4 << 20);
        if self.store.disk_space()?.avail_bytes() < needed {
            return Err(FsError::NoSpace);
        }
        let node_pins: Vec<Hash> = nodes.iter().map(|(h, _)| *h).chain([root]).collect();
        self.store.pin(node_pins.iter().copied());
        let chunks: Vec<(Hash, Bytes)> = st.pending.drain(..).collect();
        let record = RootRecord {
            root,
            generation: st.generation + 1,
            committed_at: Timespec::now(),
        };
        let result = self.store.commit(
            RootId::Workspace(self.id),
            &record,
            &nodes,
            &chunks,
            sync,
            drop_journal,
        );
        self.store.unpin(node_pins);
        metrics::histogram!(m::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                metrics::counter!(m::COMMIT_BYTES).increment((chunk_bytes + node_bytes) as u64);
                st.root = root;
                st.generation += 1;
                st.kv.committed();
                st.pending_bytes = 0;
                st.journal.committed();
                self.store
                    .note_released(std::mem::take(&mut st.released_bytes));
                st.release_pins();
                Ok(root)
            }
            Err(e) => {
                metrics::counter!(m::COMMIT_ERRORS).increment(1);
                st.pending.extend(chunks);
                st.journal.must_commit = true;
                Err(e)
            }
        }
    }

    /// Commits durably and closes.
    pub fn close(self) -> FsResult<Hash> {
        self.commit(true)
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        self.state.get_mut().release_pins();
        self.store.mark_closed(self.id);
    }
}
