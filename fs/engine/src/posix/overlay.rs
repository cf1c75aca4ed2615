//! The overlay: a workspace's state as its committed tree plus the changes not committed yet
//! (dirty entries, inodes and chunks), and reads that see both.

use bytes::Bytes;
use indexmap::IndexMap;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::error::{FsError, FsResult};
use crate::format::hash::Hash;
use crate::format::keys::{self, Decoded, Kind};
use crate::format::records::{self, Dirent, Extent, FileKind, Inode, Super};
use crate::format::roots::RootId;
use crate::store::PrefetchJob;
use crate::store::Store;
use crate::tree::{self, TreeIter};

use super::journal::{Changed, JournalState};
use super::types::*;

pub(super) struct State {
    /// The workspace's id (cluster mode stages its chunks per workspace).
    pub(super) id: uuid::Uuid,
    pub(super) store: Arc<Store>,
    pub(super) root: Hash,
    pub(super) generation: u64,
    pub(super) sup: Super,
    pub(super) kv: Changed,
    pub(super) inodes: HashMap<u64, Inode>,
    pub(super) chunks: BTreeMap<(u64, u64), Vec<u8>>,
    pub(super) dirty_bytes: usize,
    /// Sealed chunks not known to be in the store, shared with spills writing them; in the
    /// order they were sealed, which a cluster host's packs keep (files are read back in the
    /// order they were written).
    pub(super) pending: IndexMap<Hash, Bytes>,
    /// Bytes of `pending` no spill has taken yet.
    pub(super) pending_bytes: usize,
    /// Pending chunks a spill is writing outside the lock (see [`Workspace::write`]).
    pub(super) spilling: HashSet<Hash>,
    /// Their bytes: on their way to the disk, so counted against its space until stored.
    pub(super) spilling_bytes: usize,
    /// Set by [`Workspace::write`]: spills go to `spill_queue`, written once the lock is
    /// released, instead of under it.
    pub(super) defer_spills: bool,
    pub(super) spill_queue: Vec<(Hash, Bytes)>,
    /// Chunk hashes this overlay references that no committed root may reach yet.
    pub(super) pins: HashSet<Hash>,
    /// References the kernel holds per inode (FUSE lookup counts: every entry it was handed,
    /// less what it forgot). An unlinked inode lives on until the last one goes, so open
    /// files stay readable without the daemon seeing opens and closes.
    pub(super) kernel_refs: HashMap<u64, u64>,
    pub(super) limits: Limits,
    /// Bytes of stored chunks this overlay stopped referencing (an upper bound of what the
    /// next collection can free: another root may share them). Reported at commit.
    pub(super) released_bytes: u64,
    /// Cluster mode: per file read, where its reader is and how far chunks were fetched
    /// ahead of it (see `prefetch.rs`).
    pub(super) read_ahead: HashMap<u64, ReadAhead>,
    /// Cluster mode: directories whose children were fetched ahead (see `prefetch.rs`).
    pub(super) prefetched_dirs: HashSet<u64>,
    /// What fsyncs journaled since the last commit (see `journal.rs`).
    pub(super) journal: JournalState,
}

#[derive(Clone, Copy, Default)]
pub(super) struct ReadAhead {
    /// End of the last read.
    pub(super) at: u64,
    /// Chunks up to this offset were asked for.
    pub(super) fetched_to: u64,
}

/// Files whose readers are followed; past this, the oldest positions are forgotten.
pub(super) const READ_AHEAD_FILES: usize = 1024;

/// `Super::meta_bytes` of a state whose super record predates it: one walk of the state,
/// once, when a workspace written by an older build is opened (its next commit records it).
pub(super) fn count_meta_bytes(store: &Store, root: &Hash) -> FsResult<u64> {
    let mut bytes = 0u64;
    for kv in TreeIter::new(store, root, &[])? {
        let (k, v) = kv?;
        bytes += match keys::decode(&k) {
            Some(Decoded::Dirent(_, name)) => name.len() as u64,
            Some(Decoded::Xattr(_, name)) => (name.len() + v.len()) as u64,
            Some(Decoded::Inode(_)) => records::decode::<Inode>(&v)?.target.len() as u64,
            _ => 0,
        };
    }
    Ok(bytes)
}

impl State {
    /// Cluster mode: the first lookup or listing in a directory fetches its children ahead.
    pub(super) fn prefetch_dir(&mut self, dir: u64) {
        if self.store.is_cluster() && self.prefetched_dirs.insert(dir) {
            self.store.prefetch_later(PrefetchJob::Dir {
                root: self.root,
                dir,
            });
        }
    }

    // ---- reading through the overlay ----

    pub(super) fn get(&self, key: &[u8]) -> FsResult<Option<Vec<u8>>> {
        match self.kv.get(key) {
            Some(v) => Ok(v.clone()),
            None => tree::get(&self.store, &self.root, key),
        }
    }

    /// Visits entries in `[start, end)` in key order, overlay over tree, until `f` says stop.
    pub(super) fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> FsResult<bool>,
    ) -> FsResult<()> {
        let mut tree = TreeIter::new(&self.store, &self.root, start)?;
        let mut next_tree = || -> FsResult<Option<(Vec<u8>, Vec<u8>)>> {
            Ok(tree.next().transpose()?.filter(|(k, _)| k.as_slice() < end))
        };
        let mut over = self.kv.range(start.to_vec()..end.to_vec());
        let mut t = next_tree()?;
        let mut o = over.next();
        loop {
            let overlay_first = match (&t, &o) {
                (None, None) => return Ok(()),
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((tk, _)), Some((ok, _))) => ok.as_slice() <= tk.as_slice(),
            };
            let go_on = if overlay_first {
                let (k, v) = o.take().expect("checked");
                if t.as_ref().is_some_and(|(tk, _)| tk == k) {
                    t = next_tree()?; // shadowed by the overlay
                }
                o = over.next();
                match v {
                    Some(v) => f(k, v)?,
                    None => true,
                }
            } else {
                let (k, v) = t.take().expect("checked");
                t = next_tree()?;
                f(&k, &v)?
            };
            if !go_on {
                return Ok(());
            }
        }
    }

    pub(super) fn keys_in(&self, start: &[u8], end: &[u8]) -> FsResult<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        self.scan(start, end, |k, _| {
            out.push(k.to_vec());
            Ok(true)
        })?;
        Ok(out)
    }

    pub(super) fn inode(&self, ino: u64) -> FsResult<Inode> {
        if let Some(i) = self.inodes.get(&ino) {
            return Ok(i.clone());
        }
        match self.get(&keys::inode(ino))? {
            Some(v) => records::decode(&v),
            None => Err(FsError::NotFound),
        }
    }

    pub(super) fn save(&mut self, ino: u64, inode: Inode) {
        self.kv.touch(&keys::inode(ino));
        self.inodes.insert(ino, inode);
    }

    pub(super) fn dir(&self, ino: u64) -> FsResult<Inode> {
        let i = self.inode(ino)?;
        if i.kind != FileKind::Directory {
            return Err(FsError::NotDir);
        }
        if i.nlink == 0 {
            return Err(FsError::NotFound);
        }
        Ok(i)
    }

    pub(super) fn dirent(&self, parent: u64, name: &[u8]) -> FsResult<Option<Dirent>> {
        self.get(&keys::dirent(parent, name))?
            .map(|v| records::decode(&v))
            .transpose()
    }

    pub(super) fn extent(&self, ino: u64, idx: u64) -> FsResult<Option<Extent>> {
        self.get(&keys::extent(ino, idx))?
            .map(|v| records::decode(&v))
            .transpose()
    }

    pub(super) fn attr(&self, ino: u64) -> FsResult<Attr> {
        let i = self.inode(ino)?;
        let dirty: u64 = self
            .chunks
            .range((ino, 0)..=(ino, u64::MAX))
            .map(|(_, b)| b.len() as u64)
            .sum();
        Ok(Attr {
            ino,
            kind: i.kind,
            perm: i.perm,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            size: i.size,
            blocks: (i.alloc_bytes + dirty).div_ceil(512),
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
            crtime: i.crtime,
            rdev: i.rdev,
        })
    }

    pub(super) fn dir_is_empty(&self, ino: u64) -> FsResult<bool> {
        let (start, end) = keys::kind_range(ino, Kind::DirSeq);
        let mut empty = true;
        self.scan(&start, &end, |_, _| {
            empty = false;
            Ok(false)
        })?;
        Ok(empty)
    }
}

impl State {
    /// The committed state of `root`, with an empty overlay.
    pub(super) fn load(store: &Arc<Store>, root: RootId, id: uuid::Uuid) -> FsResult<State> {
        let rec = store.get_root(root)?.ok_or(FsError::NotFound)?;
        State::at(store, rec.root, rec.generation, id)
    }

    /// The state whose tree is `root`, with an empty overlay.
    pub(super) fn at(
        store: &Arc<Store>,
        root: Hash,
        generation: u64,
        id: uuid::Uuid,
    ) -> FsResult<State> {
        let sup_bytes = tree::get(store, &root, &keys::super_key())?
            .ok_or_else(|| FsError::corrupt("state without a super record"))?;
        Ok(State {
            id,
            store: store.clone(),
            root,
            generation,
            sup: match Super::decode(&sup_bytes)? {
                (sup, true) => sup,
                (sup, false) => Super {
                    meta_bytes: count_meta_bytes(store, &root)?,
                    ..sup
                },
            },
            kv: Changed::default(),
            inodes: HashMap::new(),
            chunks: BTreeMap::new(),
            dirty_bytes: 0,
            pending: IndexMap::new(),
            pending_bytes: 0,
            spilling: HashSet::new(),
            spilling_bytes: 0,
            defer_spills: false,
            spill_queue: Vec::new(),
            pins: HashSet::new(),
            kernel_refs: HashMap::new(),
            released_bytes: 0,
            limits: Limits::default(),
            read_ahead: HashMap::new(),
            prefetched_dirs: HashSet::new(),
            journal: JournalState::default(),
        })
    }

    /// Frees the files a previous session left unlinked but open, except those the kernel
    /// still references (a mount taken over from another process).
    pub(super) fn purge_orphans(&mut self) -> FsResult<()> {
        let (start, end) = keys::kind_range(keys::SUPER_INO, Kind::Orphan);
        for k in self.keys_in(&start, &end)? {
            let ino = u64::from_be_bytes(k[9..17].try_into().expect("orphan key"));
            if !self.kernel_refs.contains_key(&ino) {
                self.purge(ino)?;
            }
        }
        Ok(())
    }
}
