//! The POSIX layer: a mounted workspace's operations over its committed tree plus an
//! in-memory overlay of changes, which [`Workspace::commit`] turns into a new root.
//!
//! The overlay holds dirty tree entries, dirty inodes (write-back), and dirty chunk buffers.
//! A chunk buffer is sealed (hashed, pinned, queued for the store) when a write fills it to its
//! end, when dirty memory passes a limit, and at commit; sealed chunks are written to RocksDB
//! without the WAL in large batches and flushed before the commit that references them.
//! Nothing here knows about FUSE: every operation returns an [`FsResult`].
//!
//! This file holds the public operations, the overlay's reads and the commit; `dirs` the
//! overlay's directory entries and link counts, `data` its chunk buffers and file data.

use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use crate::error::{FsError, FsResult};
use crate::format::hash::Hash;
use crate::format::keys::{self, Decoded, Kind, ROOT_INO};
use crate::format::records::{self, DirSeq, Dirent, Extent, FileKind, Inode, Super, Timespec};
use crate::metrics as m;
use crate::remote::prefetch::{Job, READ_AHEAD};
use crate::store::{RootId, RootRecord, Store};
use crate::tree::{self, Changes, TreeIter};

mod data;
mod dirs;

use crate::format::CHUNK_SIZE;
const CS: u64 = CHUNK_SIZE as u64;
pub const NAME_MAX: usize = 255;
/// Largest file size (as ext4 with 4 KiB blocks: 16 TiB).
pub const MAX_FILE_SIZE: u64 = 16 << 40;
/// Most names one file may have (a directory may hold any number of subdirectories).
pub const LINK_MAX: u32 = 65_000;
pub const XATTR_NAME_MAX: usize = 255;
pub const XATTR_SIZE_MAX: usize = 64 * 1024;
/// Dirty chunk buffers kept in memory before they are sealed early.
const DIRTY_LIMIT: usize = 64 << 20;
/// Sealed chunks buffered before they are written to the store (unlogged).
const PENDING_LIMIT: usize = 16 << 20;
/// First readdir cookie of a directory's entries; 1 and 2 are "." and "..".
const FIRST_COOKIE: u64 = 3;

pub const RENAME_NOREPLACE: u32 = libc::RENAME_NOREPLACE;
pub const RENAME_EXCHANGE: u32 = libc::RENAME_EXCHANGE;

/// What `stat` shows.
#[derive(Clone, Debug, PartialEq)]
pub struct Attr {
    pub ino: u64,
    pub kind: FileKind,
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// 512-byte blocks held by the file's stored and dirty chunks.
    pub blocks: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub crtime: Timespec,
    pub rdev: u32,
}

impl Attr {
    pub fn mode(&self) -> u32 {
        self.kind.mode_bits() | self.perm
    }
}

#[derive(Clone, Copy, Debug)]
pub enum TimeSet {
    Now,
    At(Timespec),
}

/// A `setattr`: each field that is `Some` changes.
#[derive(Clone, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    pub kind: FileKind,
    /// Pass this back to continue after this entry.
    pub offset: u64,
}

#[derive(Clone, Debug)]
pub struct StatFs {
    pub block_size: u32,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_avail: u64,
    pub files: u64,
    pub files_free: u64,
    pub name_max: u32,
}

/// A workspace's quota: most logical bytes (the sum of file sizes, so a chunk shared with
/// another workspace counts in each) and most inodes. `None` is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    pub bytes: Option<u64>,
    pub inodes: Option<u64>,
}

/// What a new inode is.
pub struct NewNode<'a> {
    pub kind: FileKind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub target: &'a [u8],
}

impl NewNode<'static> {
    /// A regular file or directory owned by root (what the engine's tests and benches make).
    pub fn owned_by_root(kind: FileKind, perm: u32) -> Self {
        NewNode {
            kind,
            perm,
            uid: 0,
            gid: 0,
            rdev: 0,
            target: b"",
        }
    }
}

/// One open, writable workspace.
pub struct Workspace {
    id: uuid::Uuid,
    store: Arc<Store>,
    state: Mutex<State>,
    /// A snapshot's state: never committed (its mount answers EROFS to writes).
    read_only: bool,
}

struct State {
    /// The workspace's id (cluster mode stages its chunks per workspace).
    id: uuid::Uuid,
    store: Arc<Store>,
    root: Hash,
    generation: u64,
    sup: Super,
    kv: Changes,
    inodes: HashMap<u64, Inode>,
    chunks: BTreeMap<(u64, u64), Vec<u8>>,
    dirty_bytes: usize,
    /// Sealed chunks not known to be in the store, shared with spills writing them.
    pending: HashMap<Hash, Bytes>,
    /// Bytes of `pending` no spill has taken yet.
    pending_bytes: usize,
    /// Pending chunks a spill is writing outside the lock (see [`Workspace::write`]).
    spilling: HashSet<Hash>,
    /// Set by [`Workspace::write`]: spills go to `spill_queue`, written once the lock is
    /// released, instead of under it.
    defer_spills: bool,
    spill_queue: Vec<(Hash, Bytes)>,
    /// Chunk hashes this overlay references that no committed root may reach yet.
    pins: HashSet<Hash>,
    /// References the kernel holds per inode (FUSE lookup counts: every entry it was handed,
    /// less what it forgot). An unlinked inode lives on until the last one goes, so open
    /// files stay readable without the daemon seeing opens and closes.
    kernel_refs: HashMap<u64, u64>,
    limits: Limits,
    /// Bytes of stored chunks this overlay stopped referencing (an upper bound of what the
    /// next collection can free: another root may share them). Reported at commit.
    released_bytes: u64,
    /// Cluster mode: per file read, where its reader is and how far chunks were fetched
    /// ahead of it (see `prefetch.rs`).
    read_ahead: HashMap<u64, ReadAhead>,
    /// Cluster mode: directories whose children were fetched ahead (see `prefetch.rs`).
    prefetched_dirs: HashSet<u64>,
}

#[derive(Clone, Copy, Default)]
struct ReadAhead {
    /// End of the last read.
    at: u64,
    /// Chunks up to this offset were asked for.
    fetched_to: u64,
}

/// Files whose readers are followed; past this, the oldest positions are forgotten.
const READ_AHEAD_FILES: usize = 1024;

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

impl State {
    /// Cluster mode: the first lookup or listing in a directory fetches its children ahead.
    fn prefetch_dir(&mut self, dir: u64) {
        if self.store.is_cluster() && self.prefetched_dirs.insert(dir) {
            self.store.prefetch_later(Job::Dir {
                root: self.root,
                dir,
            });
        }
    }

    // ---- reading through the overlay ----

    fn get(&self, key: &[u8]) -> FsResult<Option<Vec<u8>>> {
        match self.kv.get(key) {
            Some(v) => Ok(v.clone()),
            None => tree::get(&self.store, &self.root, key),
        }
    }

    /// Visits entries in `[start, end)` in key order, overlay over tree, until `f` says stop.
    fn scan(
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

    fn keys_in(&self, start: &[u8], end: &[u8]) -> FsResult<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        self.scan(start, end, |k, _| {
            out.push(k.to_vec());
            Ok(true)
        })?;
        Ok(out)
    }

    fn inode(&self, ino: u64) -> FsResult<Inode> {
        if let Some(i) = self.inodes.get(&ino) {
            return Ok(i.clone());
        }
        match self.get(&keys::inode(ino))? {
            Some(v) => records::decode(&v),
            None => Err(FsError::NotFound),
        }
    }

    fn save(&mut self, ino: u64, inode: Inode) {
        self.inodes.insert(ino, inode);
    }

    fn dir(&self, ino: u64) -> FsResult<Inode> {
        let i = self.inode(ino)?;
        if i.kind != FileKind::Directory {
            return Err(FsError::NotDir);
        }
        if i.nlink == 0 {
            return Err(FsError::NotFound);
        }
        Ok(i)
    }

    fn dirent(&self, parent: u64, name: &[u8]) -> FsResult<Option<Dirent>> {
        self.get(&keys::dirent(parent, name))?
            .map(|v| records::decode(&v))
            .transpose()
    }

    fn extent(&self, ino: u64, idx: u64) -> FsResult<Option<Extent>> {
        self.get(&keys::extent(ino, idx))?
            .map(|v| records::decode(&v))
            .transpose()
    }

    fn attr(&self, ino: u64) -> FsResult<Attr> {
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

    fn dir_is_empty(&self, ino: u64) -> FsResult<bool> {
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
    fn load(store: &Arc<Store>, root: RootId, id: uuid::Uuid) -> FsResult<State> {
        let rec = store.get_root(root)?.ok_or(FsError::NotFound)?;
        State::at(store, rec.root, rec.generation, id)
    }

    /// The state whose tree is `root`, with an empty overlay.
    fn at(store: &Arc<Store>, root: Hash, generation: u64, id: uuid::Uuid) -> FsResult<State> {
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
            kv: Changes::new(),
            inodes: HashMap::new(),
            chunks: BTreeMap::new(),
            dirty_bytes: 0,
            pending: HashMap::new(),
            pending_bytes: 0,
            spilling: HashSet::new(),
            defer_spills: false,
            spill_queue: Vec::new(),
            pins: HashSet::new(),
            kernel_refs: HashMap::new(),
            released_bytes: 0,
            limits: Limits::default(),
            read_ahead: HashMap::new(),
            prefetched_dirs: HashSet::new(),
        })
    }

    /// Frees the files a previous session left unlinked but open, except those the kernel
    /// still references (a mount taken over from another process).
    fn purge_orphans(&mut self) -> FsResult<()> {
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
            // Files unlinked while open when the last session ended are freed now.
            st.purge_orphans()?;
            Ok(st)
        });
        match loaded {
            Ok(st) => Ok(Workspace {
                id,
                store,
                state: Mutex::new(st),
                read_only: false,
            }),
            Err(e) => {
                store.mark_closed(id);
                Err(e)
            }
        }
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

    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        let mut st = self.state.lock();
        st.dir(parent)?;
        st.prefetch_dir(parent);
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        if name == b"." {
            return st.attr(parent);
        }
        if name == b".." {
            let p = st.inode(parent)?.parent;
            return st.attr(p);
        }
        let d = st.dirent(parent, name)?.ok_or(FsError::NotFound)?;
        st.attr(d.ino)
    }

    /// Creates a file, directory, symlink, FIFO, socket or device node.
    pub fn create(&self, parent: u64, name: &[u8], new: NewNode<'_>) -> FsResult<Attr> {
        check_name(name)?;
        if is_dot(name) {
            return Err(FsError::Exists);
        }
        let mut st = self.state.lock();
        let p = st.dir(parent)?;
        if st.dirent(parent, name)?.is_some() {
            return Err(FsError::Exists);
        }
        st.check_space(0)?;
        if st.limits.inodes.is_some_and(|q| st.sup.files >= q) {
            return Err(FsError::QuotaExceeded);
        }
        st.check_bytes_quota((name.len() + new.target.len()) as u64)?;
        if new.kind == FileKind::Symlink && (new.target.is_empty() || new.target.len() > 4095) {
            return Err(if new.target.is_empty() {
                FsError::NotFound
            } else {
                FsError::NameTooLong
            });
        }
        // symlink(2) takes a C string; only an archive could ask for one with a NUL in it.
        if new.kind == FileKind::Symlink && new.target.contains(&0) {
            return Err(FsError::Invalid("a symlink target holds a NUL byte"));
        }
        let ino = st.sup.next_ino;
        st.sup.next_ino += 1;
        st.sup.files += 1;
        st.sup.meta_bytes += new.target.len() as u64;
        let now = Timespec::now();
        let mut perm = new.perm & 0o7777;
        let mut gid = new.gid;
        // BSD group semantics on a setgid directory, as every Linux filesystem does.
        if p.perm & libc::S_ISGID != 0 {
            gid = p.gid;
            if new.kind == FileKind::Directory {
                perm |= libc::S_ISGID;
            }
        }
        let is_dir = new.kind == FileKind::Directory;
        let inode = Inode {
            kind: new.kind,
            perm,
            uid: new.uid,
            gid,
            nlink: if is_dir { 2 } else { 1 },
            size: if new.kind == FileKind::Symlink {
                new.target.len() as u64
            } else {
                0
            },
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            rdev: new.rdev,
            parent,
            next_cookie: if is_dir { FIRST_COOKIE } else { 0 },
            alloc_bytes: 0,
            target: new.target.to_vec(),
        };
        st.save(ino, inode);
        st.add_entry(parent, name, ino, new.kind)?;
        st.attr(ino)
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let i = self.state.lock().inode(ino)?;
        if i.kind != FileKind::Symlink {
            return Err(FsError::Invalid("not a symlink"));
        }
        Ok(i.target)
    }

    pub fn link(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> FsResult<Attr> {
        check_name(new_name)?;
        let mut st = self.state.lock();
        let mut i = st.inode(ino)?;
        if i.kind == FileKind::Directory {
            return Err(FsError::NotPermitted);
        }
        st.dir(new_parent)?;
        if is_dot(new_name) || st.dirent(new_parent, new_name)?.is_some() {
            return Err(FsError::Exists);
        }
        if i.nlink == 0 {
            return Err(FsError::NotFound);
        }
        if i.nlink >= LINK_MAX {
            return Err(FsError::TooManyLinks);
        }
        st.check_space(0)?;
        st.check_bytes_quota(new_name.len() as u64)?;
        i.nlink += 1;
        i.ctime = Timespec::now();
        let kind = i.kind;
        st.save(ino, i);
        st.add_entry(new_parent, new_name, ino, kind)?;
        st.attr(ino)
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        let mut st = self.state.lock();
        st.dir(parent)?;
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        let d = st.dirent(parent, name)?.ok_or(FsError::NotFound)?;
        if d.kind == FileKind::Directory {
            return Err(FsError::IsDir);
        }
        st.remove_entry(parent, name, &d)?;
        st.drop_link(d.ino)
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        let mut st = self.state.lock();
        st.dir(parent)?;
        match name {
            b"." => return Err(FsError::Invalid("rmdir of .")),
            b".." => return Err(FsError::NotEmpty),
            _ if name.len() > NAME_MAX => return Err(FsError::NameTooLong),
            _ => {}
        }
        let d = st.dirent(parent, name)?.ok_or(FsError::NotFound)?;
        if d.kind != FileKind::Directory {
            return Err(FsError::NotDir);
        }
        if !st.dir_is_empty(d.ino)? {
            return Err(FsError::NotEmpty);
        }
        st.remove_entry(parent, name, &d)?;
        st.drop_link(d.ino)
    }

    /// rename(2) with `RENAME_NOREPLACE` and `RENAME_EXCHANGE`.
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0 {
            return Err(FsError::Invalid("unsupported rename flags"));
        }
        if flags == RENAME_NOREPLACE | RENAME_EXCHANGE {
            return Err(FsError::Invalid("NOREPLACE and EXCHANGE together"));
        }
        check_name(new_name)?;
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        if is_dot(name) || is_dot(new_name) {
            return Err(FsError::Invalid("rename of . or .."));
        }
        let mut st = self.state.lock();
        st.dir(parent)?;
        st.dir(new_parent)?;
        let src = st.dirent(parent, name)?.ok_or(FsError::NotFound)?;
        let dst = st.dirent(new_parent, new_name)?;
        let src_dir = src.kind == FileKind::Directory;
        if src_dir && st.is_within(new_parent, src.ino)? {
            return Err(FsError::Invalid("cannot move a directory into itself"));
        }
        if flags & RENAME_EXCHANGE != 0 {
            let dst = dst.ok_or(FsError::NotFound)?;
            if dst.kind == FileKind::Directory && st.is_within(parent, dst.ino)? {
                return Err(FsError::Invalid("cannot move a directory into itself"));
            }
            if parent == new_parent && name == new_name {
                return Ok(());
            }
            return st.exchange(parent, name, &src, new_parent, new_name, &dst);
        }
        if dst.is_none() {
            st.check_bytes_quota(new_name.len().saturating_sub(name.len()) as u64)?;
        }
        if let Some(dst) = &dst {
            if flags & RENAME_NOREPLACE != 0 {
                return Err(FsError::Exists);
            }
            if dst.ino == src.ino {
                return Ok(()); // two links to one inode: POSIX says do nothing
            }
            match (src_dir, dst.kind == FileKind::Directory) {
                (false, true) => return Err(FsError::IsDir),
                (true, false) => return Err(FsError::NotDir),
                (true, true) if !st.dir_is_empty(dst.ino)? => return Err(FsError::NotEmpty),
                _ => {}
            }
            st.remove_entry(new_parent, new_name, dst)?;
            st.drop_link(dst.ino)?;
        }
        st.remove_entry(parent, name, &src)?;
        st.add_entry(new_parent, new_name, src.ino, src.kind)?;
        let mut moved = st.inode(src.ino)?;
        moved.ctime = Timespec::now();
        moved.parent = new_parent;
        st.save(src.ino, moved);
        Ok(())
    }

    pub fn setattr(&self, ino: u64, set: &SetAttr) -> FsResult<Attr> {
        let mut st = self.state.lock();
        if let Some(size) = set.size {
            st.set_size(ino, size)?;
        }
        let mut i = st.inode(ino)?;
        let now = Timespec::now();
        if let Some(mode) = set.mode {
            i.perm = mode & 0o7777;
        }
        if set.uid.is_some() || set.gid.is_some() {
            // chown clears setuid, and setgid when group-executable, as Linux does.
            if i.kind != FileKind::Directory && set.mode.is_none() {
                i.perm &= !libc::S_ISUID;
                if i.perm & libc::S_IXGRP != 0 {
                    i.perm &= !libc::S_ISGID;
                }
            }
            i.uid = set.uid.unwrap_or(i.uid);
            i.gid = set.gid.unwrap_or(i.gid);
        }
        let pick = |t: TimeSet| match t {
            TimeSet::Now => now,
            TimeSet::At(t) => t,
        };
        if let Some(t) = set.atime {
            i.atime = pick(t);
        }
        if let Some(t) = set.mtime {
            i.mtime = pick(t);
        }
        i.ctime = now;
        st.save(ino, i);
        st.attr(ino)
    }

    /// Reads up to `len` bytes at `offset`; short only at end of file.
    pub fn read(&self, ino: u64, offset: u64, len: usize) -> FsResult<Vec<u8>> {
        // Plan under the lock, fetch stored chunks outside it so reads run in parallel. The
        // chunks are pinned meanwhile: a commit racing this read cannot let the GC take them.
        let (mut out, fetch) = {
            let mut st = self.state.lock();
            let plan = st.read_plan(ino, offset, len)?;
            if self.store.is_cluster() {
                if let Some(ahead) = st.read_ahead(ino, offset, len)? {
                    self.store.prefetch_later(Job::Chunks(ahead));
                }
            }
            if plan.1.is_empty() {
                return Ok(plan.0); // all in memory, or holes
            }
            self.store.pin(plan.1.iter().map(|c| c.extent.hash));
            plan
        };
        let fetched = fetch.iter().try_for_each(|c| {
            let dst = &mut out[c.at..c.at + c.len];
            self.store
                .read_chunk(&c.extent.hash, c.extent.len as usize, c.in_chunk, dst)
        });
        self.store.unpin(fetch.iter().map(|c| c.extent.hash));
        fetched.map(|()| out)
    }

    /// Writes into the overlay. Sealed chunks the write spills are stored after the lock is
    /// released, so other requests (and other spills) go on meanwhile: under the lock, the
    /// copies into RocksDB's memtable serialized a sequential write on one thread. They stay
    /// in `pending` (reads and commits see them) until they are stored.
    pub fn write(&self, ino: u64, offset: u64, data: &[u8]) -> FsResult<usize> {
        let (written, queued) = {
            let mut st = self.state.lock();
            st.defer_spills = true;
            let written = st.write(ino, offset, data);
            st.defer_spills = false;
            (written, std::mem::take(&mut st.spill_queue))
        };
        if !queued.is_empty() {
            let stored = self.store.put_chunks_unlogged(Some(self.id), &queued);
            let mut st = self.state.lock();
            for (h, d) in &queued {
                st.spilling.remove(h);
                // A commit meanwhile took what it found in `pending` and wrote it itself.
                if stored.is_ok() {
                    st.pending.remove(h);
                } else if st.pending.contains_key(h) {
                    st.pending_bytes += d.len();
                }
            }
            stored?;
        }
        written
    }

    /// fallocate(2): allocate (sizes only: holes already read as zeros), `KEEP_SIZE`,
    /// `PUNCH_HOLE` (with `KEEP_SIZE`) and `ZERO_RANGE`.
    pub fn fallocate(&self, ino: u64, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        const KNOWN: i32 =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !KNOWN != 0 {
            return Err(FsError::NotSupported);
        }
        if len == 0 {
            return Err(FsError::Invalid("fallocate of zero length"));
        }
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        if punch && (zero || !keep) {
            return Err(FsError::NotSupported);
        }
        let end = offset.checked_add(len).ok_or(FsError::FileTooBig)?;
        if end > MAX_FILE_SIZE {
            return Err(FsError::FileTooBig);
        }
        let mut st = self.state.lock();
        let i = st.regular(ino)?;
        if punch || zero {
            st.zero_range(ino, offset, end.min(i.size))?;
        }
        if !keep && end > i.size {
            st.set_size(ino, end)?;
        } else if punch || zero {
            let mut i = st.inode(ino)?;
            let now = Timespec::now();
            i.mtime = now;
            i.ctime = now;
            st.save(ino, i);
        }
        Ok(())
    }

    /// Copies a byte range between files of this workspace. Whole aligned chunks are shared,
    /// not copied. Returns the bytes copied (short at the source's end of file).
    pub fn copy_range(
        &self,
        src: u64,
        src_off: u64,
        dst: u64,
        dst_off: u64,
        len: u64,
    ) -> FsResult<u64> {
        let mut st = self.state.lock();
        let s = st.regular(src)?;
        st.regular(dst)?;
        if src_off >= s.size || len == 0 {
            return Ok(0);
        }
        let len = len.min(s.size - src_off);
        if dst_off.checked_add(len).is_none_or(|e| e > MAX_FILE_SIZE) {
            return Err(FsError::FileTooBig);
        }
        if src == dst && src_off < dst_off + len && dst_off < src_off + len {
            return Err(FsError::Invalid("overlapping copy within one file"));
        }
        let dst_size = st.inode(dst)?.size;
        st.check_bytes_quota((dst_off + len).saturating_sub(dst_size))?;
        let mut done = 0;
        while done < len {
            let (so, d_o) = (src_off + done, dst_off + done);
            let rest = len - done;
            let aligned = so % CS == 0 && d_o % CS == 0;
            let d_size = st.inode(dst)?.size;
            // The source chunk's tail past its EOF is zeros, so a final partial chunk can be
            // shared when the destination ends there too.
            if aligned && (rest >= CS || (so + rest == s.size && d_o + rest >= d_size)) {
                let (si, di) = (so / CS, d_o / CS);
                st.seal(src, si)?;
                if st.chunks.remove(&(dst, di)).is_some() {
                    st.dirty_bytes -= CHUNK_SIZE;
                }
                let e = st.extent(src, si)?;
                st.set_extent(dst, di, e)?;
                let n = rest.min(CS);
                let mut d = st.inode(dst)?;
                if d_o + n > d.size {
                    st.sup.logical_bytes += d_o + n - d.size;
                    d.size = d_o + n;
                    st.save(dst, d);
                }
                done += n;
            } else {
                let n = rest.min(CS - so % CS).min(CS - d_o % CS);
                let bytes = st.read(src, so, n as usize)?;
                st.write(dst, d_o, &bytes)?;
                done += n;
            }
        }
        let mut d = st.inode(dst)?;
        let now = Timespec::now();
        d.mtime = now;
        d.ctime = now;
        st.save(dst, d);
        Ok(len)
    }

    /// lseek with `SEEK_DATA` or `SEEK_HOLE`.
    pub fn seek(&self, ino: u64, offset: u64, whence: i32) -> FsResult<u64> {
        let st = self.state.lock();
        let i = st.regular(ino)?;
        if offset >= i.size {
            return Err(FsError::NoSuchOffset);
        }
        let first = offset / CS;
        let last = i.size.div_ceil(CS);
        let data = st.data_chunks(ino, first, last)?;
        match whence {
            libc::SEEK_DATA => match data.first() {
                Some(&idx) => Ok(offset.max(idx * CS)),
                None => Err(FsError::NoSuchOffset),
            },
            libc::SEEK_HOLE => {
                let mut idx = first;
                for d in data {
                    if d != idx {
                        break;
                    }
                    idx += 1;
                }
                Ok(offset.max(idx * CS).min(i.size))
            }
            _ => Err(FsError::Invalid("whence")),
        }
    }

    /// Entries after `offset` (0 to start), "." and ".." first. `f` returns false when full.
    /// Offsets are per-entry cookies, so they stay valid while the directory changes.
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
        mut f: impl FnMut(DirEntry) -> bool,
    ) -> FsResult<()> {
        let mut st = self.state.lock();
        let dir = st.dir(ino)?;
        st.prefetch_dir(ino);
        if offset < 1
            && !f(DirEntry {
                name: b".".to_vec(),
                ino,
                kind: FileKind::Directory,
                offset: 1,
            })
        {
            return Ok(());
        }
        let parent = if ino == ROOT_INO {
            ROOT_INO
        } else {
            dir.parent
        };
        if offset < 2
            && !f(DirEntry {
                name: b"..".to_vec(),
                ino: parent,
                kind: FileKind::Directory,
                offset: 2,
            })
        {
            return Ok(());
        }
        let (_, end) = keys::kind_range(ino, Kind::DirSeq);
        let start = keys::dirseq(ino, (offset + 1).max(FIRST_COOKIE));
        st.scan(&start, &end, |k, v| {
            let cookie = u64::from_be_bytes(k[9..17].try_into().expect("dirseq key"));
            let e: DirSeq = records::decode(v)?;
            Ok(f(DirEntry {
                name: e.name,
                ino: e.ino,
                kind: e.kind,
                offset: cookie,
            }))
        })
    }

    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        if name.is_empty() || name.len() > XATTR_NAME_MAX {
            return Err(FsError::Range);
        }
        if value.len() > XATTR_SIZE_MAX {
            return Err(FsError::Range);
        }
        let mut st = self.state.lock();
        let mut i = st.inode(ino)?;
        let key = keys::xattr(ino, name);
        let old = st.get(&key)?.map(|v| name.len() + v.len());
        if flags & libc::XATTR_CREATE != 0 && old.is_some() {
            return Err(FsError::Exists);
        }
        if flags & libc::XATTR_REPLACE != 0 && old.is_none() {
            return Err(FsError::NoAttr);
        }
        st.check_space(value.len())?;
        let new = (name.len() + value.len()) as u64;
        let old = old.unwrap_or(0) as u64;
        st.check_bytes_quota(new.saturating_sub(old))?;
        st.sup.meta_bytes = st.sup.meta_bytes.saturating_sub(old) + new;
        st.kv.insert(key, Some(value.to_vec()));
        i.ctime = Timespec::now();
        st.save(ino, i);
        Ok(())
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        let st = self.state.lock();
        st.inode(ino)?;
        if name.len() > XATTR_NAME_MAX {
            return Err(FsError::Range);
        }
        st.get(&keys::xattr(ino, name))?.ok_or(FsError::NoAttr)
    }

    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<Vec<u8>>> {
        let st = self.state.lock();
        st.inode(ino)?;
        let (start, end) = keys::kind_range(ino, Kind::Xattr);
        Ok(st
            .keys_in(&start, &end)?
            .into_iter()
            .map(|k| k[9..].to_vec())
            .collect())
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        let mut st = self.state.lock();
        let mut i = st.inode(ino)?;
        let key = keys::xattr(ino, name);
        let Some(value) = st.get(&key)? else {
            return Err(FsError::NoAttr);
        };
        st.sup.meta_bytes = st
            .sup
            .meta_bytes
            .saturating_sub((name.len() + value.len()) as u64);
        st.kv.insert(key, None);
        i.ctime = Timespec::now();
        st.save(ino, i);
        Ok(())
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

    /// fsync(2) of anything in the workspace: a durable commit of the whole overlay.
    pub fn fsync(&self) -> FsResult<()> {
        let started = Instant::now();
        let r = self.commit(true);
        metrics::histogram!(m::FSYNC_SECONDS).record(started.elapsed().as_secs_f64());
        r.map(|_| ())
    }

    /// Commits the overlay as the workspace's new root in one batch; with `sync`, durable
    /// (WAL fsynced) before it returns. Returns the committed root.
    pub fn commit(&self, sync: bool) -> FsResult<Hash> {
        if self.read_only {
            return Ok(self.state.lock().root);
        }
        let started = Instant::now();
        let mut st = self.state.lock();
        st.seal_all()?;
        for (ino, inode) in std::mem::take(&mut st.inodes) {
            st.kv
                .insert(keys::inode(ino), Some(records::encode(&inode)));
        }
        if st.kv.is_empty() && st.pending.is_empty() {
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
        let chunks: Vec<(Hash, Bytes)> = st.pending.drain().collect();
        let record = RootRecord {
            root,
            generation: st.generation + 1,
            committed_at: Timespec::now(),
        };
        let result = self
            .store
            .commit(RootId::Workspace(self.id), &record, &nodes, &chunks, sync);
        self.store.unpin(node_pins);
        metrics::histogram!(m::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                metrics::counter!(m::COMMIT_BYTES).increment((chunk_bytes + node_bytes) as u64);
                st.root = root;
                st.generation += 1;
                st.kv.clear();
                st.pending_bytes = 0;
                self.store
                    .note_released(std::mem::take(&mut st.released_bytes));
                let pins: Vec<Hash> = st.pins.drain().collect();
                self.store.unpin(pins);
                Ok(root)
            }
            Err(e) => {
                metrics::counter!(m::COMMIT_ERRORS).increment(1);
                st.pending.extend(chunks);
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
        let pins: Vec<Hash> = self.state.get_mut().pins.drain().collect();
        self.store.unpin(pins);
        self.store.mark_closed(self.id);
    }
}

/// `Super::meta_bytes` of a state whose super record predates it: one walk of the state,
/// once, when a workspace written by an older build is opened (its next commit records it).
fn count_meta_bytes(store: &Store, root: &Hash) -> FsResult<u64> {
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
