//! powercut: a test-only filesystem that forgets what was not synced, as a power cut does.
//!
//! In the manner of LazyFS (used by Jepsen against etcd and PostgreSQL), but in memory: every
//! file keeps its current bytes and the bytes it had at its last `fsync`/`fdatasync`, and every
//! directory keeps its current entries and the entries it had at its last `fsync` of the
//! directory. [`PowerCut::cut`] unmounts and throws away everything not yet synced: a file's
//! unsynced writes and truncations, and a directory's unsynced creates, renames and unlinks
//! (a file fsynced under a name its directory never synced is gone; an unlinked file whose
//! directory was not synced comes back with its synced bytes). Then it mounts again, with the
//! kernel's caches gone, as after a reboot.
//!
//! It is strict POSIX, stricter than ext4: a new name is durable only once its directory is
//! fsynced. Hard links, symlinks, xattrs and device nodes are not offered (RocksDB needs none).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;

const PAGE: usize = 16 * 1024;
const ROOT: u64 = 1;
/// What statfs reports: a 64 GiB disk.
const DISK_BLOCKS: u64 = 16 << 20;
/// Attributes and entries are not cached by the kernel: every call comes here.
const TTL: Duration = Duration::ZERO;

/// File bytes in shared pages, so keeping the synced copy costs a page only once it changes.
#[derive(Clone, Default)]
struct Data {
    pages: Vec<Arc<Vec<u8>>>,
    size: u64,
}

impl Data {
    fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        if offset >= self.size {
            return Vec::new();
        }
        let end = self.size.min(offset + len as u64);
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut pos = offset;
        while pos < end {
            let (p, at) = ((pos / PAGE as u64) as usize, (pos % PAGE as u64) as usize);
            let n = (PAGE - at).min((end - pos) as usize);
            out.extend_from_slice(&self.pages[p][at..at + n]);
            pos += n as u64;
        }
        out
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        if end > self.size {
            self.resize(end);
        }
        let mut pos = offset;
        let mut src = data;
        while !src.is_empty() {
            let (p, at) = ((pos / PAGE as u64) as usize, (pos % PAGE as u64) as usize);
            let n = (PAGE - at).min(src.len());
            Arc::make_mut(&mut self.pages[p])[at..at + n].copy_from_slice(&src[..n]);
            src = &src[n..];
            pos += n as u64;
        }
    }

    /// Grows with zeros or cuts; bytes past the size are always zero in the last page.
    fn resize(&mut self, size: u64) {
        let pages = size.div_ceil(PAGE as u64) as usize;
        if size < self.size {
            self.pages.truncate(pages);
            let tail = (size % PAGE as u64) as usize;
            if tail != 0 {
                Arc::make_mut(&mut self.pages[pages - 1])[tail..].fill(0);
            }
        }
        while self.pages.len() < pages {
            self.pages.push(Arc::new(vec![0; PAGE]));
        }
        self.size = size;
    }
}

enum Body {
    File {
        now: Data,
        synced: Data,
    },
    Dir {
        now: BTreeMap<Vec<u8>, u64>,
        synced: BTreeMap<Vec<u8>, u64>,
    },
}

struct Node {
    body: Body,
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    ctime: SystemTime,
}

struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// Open handles per inode: an unlinked file lives while open.
    open: HashMap<u64, u32>,
    /// Fsync calls seen, for tests that want to know syncing happened at all.
    syncs: u64,
    /// Writes to files whose name ends so answer EIO, this many more times (see
    /// [`PowerCut::fail_writes`]).
    fault: Option<(Vec<u8>, u32)>,
    /// Writes that answered EIO so far.
    failed_writes: u64,
}

impl State {
    fn new() -> State {
        let now = SystemTime::now();
        let root = Node {
            body: Body::Dir {
                now: BTreeMap::new(),
                synced: BTreeMap::new(),
            },
            perm: 0o755,
            uid: 0,
            gid: 0,
            mtime: now,
            ctime: now,
        };
        State {
            nodes: [(ROOT, root)].into(),
            next_ino: ROOT + 1,
            open: HashMap::new(),
            syncs: 0,
            fault: None,
            failed_writes: 0,
        }
    }

    /// Whether a write to `ino` must fail now (an injected fault), counting it.
    fn inject_fault(&mut self, ino: u64) -> bool {
        let Some((suffix, left)) = &self.fault else {
            return false;
        };
        let named = self.nodes.values().any(|n| match &n.body {
            Body::Dir { now, .. } => now
                .iter()
                .any(|(name, i)| *i == ino && name.ends_with(suffix)),
            Body::File { .. } => false,
        });
        if !named {
            return false;
        }
        let left = left - 1;
        self.fault = (left > 0).then(|| (suffix.clone(), left));
        self.failed_writes += 1;
        true
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let n = self.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        let (kind, size, nlink) = match &n.body {
            Body::File { now, .. } => (FileType::RegularFile, now.size, 1),
            Body::Dir { now, .. } => {
                let subdirs = now
                    .values()
                    .filter(|c| matches!(self.nodes[c].body, Body::Dir { .. }))
                    .count();
                (FileType::Directory, 0, 2 + subdirs as u32)
            }
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: n.mtime,
            mtime: n.mtime,
            ctime: n.ctime,
            crtime: n.ctime,
            kind,
            perm: n.perm,
            nlink,
            uid: n.uid,
            gid: n.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn entries(&mut self, dir: u64) -> Result<&mut BTreeMap<Vec<u8>, u64>, Errno> {
        match &mut self.nodes.get_mut(&dir).ok_or(Errno::ENOENT)?.body {
            Body::Dir { now, .. } => Ok(now),
            Body::File { .. } => Err(Errno::ENOTDIR),
        }
    }

    fn data(&mut self, ino: u64) -> Result<&mut Data, Errno> {
        match &mut self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?.body {
            Body::File { now, .. } => Ok(now),
            Body::Dir { .. } => Err(Errno::EISDIR),
        }
    }

    fn touch(&mut self, ino: u64) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            let t = SystemTime::now();
            n.mtime = t;
            n.ctime = t;
        }
    }

    fn make(
        &mut self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
        dir: bool,
    ) -> Result<FileAttr, Errno> {
        let name = name.as_bytes().to_vec();
        if self.entries(parent)?.contains_key(&name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let body = if dir {
            Body::Dir {
                now: BTreeMap::new(),
                synced: BTreeMap::new(),
            }
        } else {
            Body::File {
                now: Data::default(),
                synced: Data::default(),
            }
        };
        let t = SystemTime::now();
        self.nodes.insert(
            ino,
            Node {
                body,
                perm: (mode & 0o7777) as u16,
                uid: req.uid(),
                gid: req.gid(),
                mtime: t,
                ctime: t,
            },
        );
        self.entries(parent)?.insert(name, ino);
        self.touch(parent);
        self.attr(ino)
    }

    /// Frees inodes nothing can reach any more: not named now, not named by any synced
    /// directory (a cut would bring those back), not open.
    fn collect(&mut self) {
        let mut live = HashSet::new();
        let mut stack = vec![ROOT];
        stack.extend(self.open.keys().copied());
        while let Some(ino) = stack.pop() {
            if !live.insert(ino) {
                continue;
            }
            if let Some(Node {
                body: Body::Dir { now, synced },
                ..
            }) = self.nodes.get(&ino)
            {
                stack.extend(now.values().chain(synced.values()).copied());
            }
        }
        self.nodes.retain(|ino, _| live.contains(ino));
    }

    /// The power cut: only what was synced, reachable through synced names, remains.
    fn cut(&mut self) {
        self.open.clear();
        let mut keep = HashSet::new();
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            if !keep.insert(ino) {
                continue;
            }
            if let Some(Node {
                body: Body::Dir { synced, .. },
                ..
            }) = self.nodes.get(&ino)
            {
                stack.extend(synced.values().copied());
            }
        }
        self.nodes.retain(|ino, _| keep.contains(ino));
        for n in self.nodes.values_mut() {
            match &mut n.body {
                Body::File { now, synced } => *now = synced.clone(),
                Body::Dir { now, synced } => *now = synced.clone(),
            }
        }
    }
}

/// The fuser adapter: one per mount, all sharing the state.
struct Adapter(Arc<Mutex<State>>);

fn reply_entry(reply: ReplyEntry, r: Result<FileAttr, Errno>) {
    match r {
        Ok(a) => reply.entry(&TTL, &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for Adapter {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut st = self.0.lock();
        let r = st
            .entries(parent.0)
            .and_then(|e| e.get(name.as_bytes()).copied().ok_or(Errno::ENOENT))
            .and_then(|ino| st.attr(ino));
        reply_entry(reply, r);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.0.lock().attr(ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut st = self.0.lock();
        let r = (|| {
            if let Some(size) = size {
                st.data(ino.0)?.resize(size);
                st.touch(ino.0);
            }
            let n = st.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)?;
            if let Some(m) = mode {
                n.perm = (m & 0o7777) as u16;
            }
            n.uid = uid.unwrap_or(n.uid);
            n.gid = gid.unwrap_or(n.gid);
            if let Some(t) = mtime {
                n.mtime = match t {
                    TimeOrNow::Now => SystemTime::now(),
                    TimeOrNow::SpecificTime(t) => t,
                };
            }
            n.ctime = SystemTime::now();
            st.attr(ino.0)
        })();
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(reply, self.0.lock().make(req, parent.0, name, mode, true));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.0.lock();
        let r = (|| {
            let ino = *st
                .entries(parent.0)?
                .get(name.as_bytes())
                .ok_or(Errno::ENOENT)?;
            if matches!(st.nodes[&ino].body, Body::Dir { .. }) {
                return Err(Errno::EISDIR);
            }
            st.entries(parent.0)?.remove(name.as_bytes());
            st.touch(parent.0);
            st.collect();
            Ok(())
        })();
        reply_empty(reply, r);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.0.lock();
        let r = (|| {
            let ino = *st
                .entries(parent.0)?
                .get(name.as_bytes())
                .ok_or(Errno::ENOENT)?;
            if !st.entries(ino)?.is_empty() {
                return Err(Errno::ENOTEMPTY);
            }
            st.entries(parent.0)?.remove(name.as_bytes());
            st.touch(parent.0);
            st.collect();
            Ok(())
        })();
        reply_empty(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut st = self.0.lock();
        let r = (|| {
            if flags.bits() & !libc::RENAME_NOREPLACE != 0 {
                return Err(Errno::EINVAL);
            }
            let ino = *st
                .entries(parent.0)?
                .get(name.as_bytes())
                .ok_or(Errno::ENOENT)?;
            let is_dir = matches!(st.nodes[&ino].body, Body::Dir { .. });
            if let Some(&old) = st.entries(newparent.0)?.get(newname.as_bytes()) {
                if flags.bits() & libc::RENAME_NOREPLACE != 0 {
                    return Err(Errno::EEXIST);
                }
                match (is_dir, &st.nodes[&old].body) {
                    (false, Body::Dir { .. }) => return Err(Errno::EISDIR),
                    (true, Body::File { .. }) => return Err(Errno::ENOTDIR),
                    (true, Body::Dir { now, .. }) if !now.is_empty() => {
                        return Err(Errno::ENOTEMPTY)
                    }
                    _ => {}
                }
            }
            st.entries(parent.0)?.remove(name.as_bytes());
            st.entries(newparent.0)?
                .insert(newname.as_bytes().to_vec(), ino);
            st.touch(parent.0);
            st.touch(newparent.0);
            st.collect();
            Ok(())
        })();
        reply_empty(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut st = self.0.lock();
        if !st.nodes.contains_key(&ino.0) {
            return reply.error(Errno::ENOENT);
        }
        *st.open.entry(ino.0).or_insert(0) += 1;
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut st = self.0.lock();
        match st.make(req, parent.0, name, mode, false) {
            Ok(a) => {
                *st.open.entry(a.ino.0).or_insert(0) += 1;
                reply.created(&TTL, &a, Generation(0), FileHandle(0), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.0.lock().data(ino.0) {
            Ok(d) => reply.data(&d.read(offset, size as usize)),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut st = self.0.lock();
        if st.inject_fault(ino.0) {
            reply.error(Errno::EIO);
            return;
        }
        match st.data(ino.0) {
            Ok(d) => {
                d.write(offset, data);
                st.touch(ino.0);
                reply.written(data.len() as u32);
            }
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = self.0.lock();
        if let Some(n) = st.open.get_mut(&ino.0) {
            *n -= 1;
            if *n == 0 {
                st.open.remove(&ino.0);
                st.collect();
            }
        }
        reply.ok();
    }

    /// fsync and fdatasync: the file's bytes and size become what a cut keeps.
    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = self.0.lock();
        st.syncs += 1;
        match st.nodes.get_mut(&ino.0).map(|n| &mut n.body) {
            Some(Body::File { now, synced }) => {
                *synced = now.clone();
                reply.ok()
            }
            Some(Body::Dir { .. }) => reply.ok(),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.0.lock().entries(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut st = self.0.lock();
        let entries: Vec<(Vec<u8>, u64)> = match st.entries(ino.0) {
            Ok(e) => e.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            Err(e) => return reply.error(e),
        };
        let all = [(b".".to_vec(), ino.0), (b"..".to_vec(), ino.0)]
            .into_iter()
            .chain(entries);
        for (i, (name, child)) in all.enumerate().skip(offset as usize) {
            let kind = match st.nodes.get(&child).map(|n| &n.body) {
                Some(Body::Dir { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            if reply.add(
                INodeNo(child),
                (i + 1) as u64,
                kind,
                OsStr::from_bytes(&name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    /// fsync of a directory: its entries as they are now become what a cut keeps.
    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = self.0.lock();
        st.syncs += 1;
        match st.nodes.get_mut(&ino.0).map(|n| &mut n.body) {
            Some(Body::Dir { now, synced }) => {
                *synced = now.clone();
                st.collect();
                reply.ok()
            }
            Some(Body::File { .. }) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let st = self.0.lock();
        let used: u64 = st
            .nodes
            .values()
            .map(|n| match &n.body {
                Body::File { now, .. } => now.size.div_ceil(4096),
                Body::Dir { .. } => 1,
            })
            .sum();
        let free = DISK_BLOCKS.saturating_sub(used);
        reply.statfs(
            DISK_BLOCKS,
            free,
            free,
            1 << 20,
            (1 << 20) - st.nodes.len() as u64,
            4096,
            255,
            4096,
        );
    }

    /// Preallocation is accepted and does nothing but grow the size when asked to.
    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut st = self.0.lock();
        let r = st.data(ino.0).and_then(|d| {
            if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
                return Err(Errno::EOPNOTSUPP);
            }
            if mode & libc::FALLOC_FL_KEEP_SIZE == 0 && offset + length > d.size {
                d.resize(offset + length);
            }
            Ok(())
        });
        reply_empty(reply, r);
    }
}

/// A mounted power-cut filesystem. Dropping it unmounts.
pub struct PowerCut {
    state: Arc<Mutex<State>>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl PowerCut {
    /// Mounts an empty power-cut filesystem at `mountpoint` (an existing empty directory).
    pub fn mount(mountpoint: &Path) -> std::io::Result<PowerCut> {
        let mut pc = PowerCut {
            state: Arc::new(Mutex::new(State::new())),
            mountpoint: mountpoint.to_path_buf(),
            session: None,
        };
        pc.attach()?;
        Ok(pc)
    }

    fn attach(&mut self) -> std::io::Result<()> {
        let mut cfg = fuser::Config::default();
        cfg.mount_options = vec![
            fuser::MountOption::FSName("powercut".into()),
            fuser::MountOption::RW,
        ];
        cfg.acl = fuser::SessionACL::All;
        cfg.n_threads = Some(2);
        let adapter = Adapter(self.state.clone());
        self.session = Some(fuser::spawn_mount(adapter, &self.mountpoint, &cfg)?);
        Ok(())
    }

    /// Cuts the power: unmounts (whatever used the mount must be dead by now: an open file
    /// makes this fail with EBUSY), throws away every unsynced write and name, and mounts
    /// again with cold kernel caches.
    pub fn cut(&mut self) -> std::io::Result<()> {
        if let Some(s) = self.session.take() {
            // The session thread may end with ECONNABORTED for a reply the unmount cut off;
            // what matters is that the mount is gone.
            if let Err(e) = s.umount_and_join() {
                if self.is_mounted() {
                    return Err(e);
                }
            }
        }
        self.state.lock().cut();
        self.attach()
    }

    fn is_mounted(&self) -> bool {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let target = self.mountpoint.to_string_lossy();
        info.lines()
            .any(|l| l.split(' ').nth(4) == Some(target.as_ref()))
    }

    /// fsync and fsyncdir calls served so far.
    pub fn syncs(&self) -> u64 {
        self.state.lock().syncs
    }

    /// Makes the next `times` writes to files whose names end with `suffix` answer EIO, as a
    /// failing disk would (0: none).
    pub fn fail_writes(&self, suffix: &str, times: u32) {
        self.state.lock().fault = (times > 0).then(|| (suffix.as_bytes().to_vec(), times));
    }

    /// Writes that answered EIO so far (see [`PowerCut::fail_writes`]).
    pub fn failed_writes(&self) -> u64 {
        self.state.lock().failed_writes
    }
}

impl Drop for PowerCut {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sync_dir(p: &Path) {
        std::fs::File::open(p).unwrap().sync_all().unwrap();
    }

    /// The layer must lose what was not synced, or the power-cut test proves nothing.
    #[test]
    fn a_cut_keeps_exactly_what_was_synced() {
        let dir = tempfile::tempdir().unwrap();
        let mut pc = PowerCut::mount(dir.path()).unwrap();
        let m = dir.path();

        // Synced file under a synced name, then unsynced appends, truncation and overwrite.
        let mut a = std::fs::File::create(m.join("a")).unwrap();
        a.write_all(&vec![1u8; 40_000]).unwrap();
        a.sync_all().unwrap();
        sync_dir(m);
        a.write_all(b"appended, never synced").unwrap();
        drop(a);
        std::fs::OpenOptions::new()
            .write(true)
            .open(m.join("a"))
            .unwrap()
            .set_len(100)
            .unwrap();

        // A synced file whose name was never synced; a file whose bytes are never synced.
        std::fs::create_dir(m.join("sub")).unwrap();
        sync_dir(m);
        let mut b = std::fs::File::create(m.join("sub/b")).unwrap();
        b.write_all(b"synced bytes, unsynced name").unwrap();
        b.sync_all().unwrap();
        drop(b);
        std::fs::write(m.join("c"), b"never synced").unwrap();

        // A synced file, renamed and another unlinked without syncing the directory.
        std::fs::write(m.join("d"), b"d").unwrap();
        std::fs::File::open(m.join("d"))
            .unwrap()
            .sync_all()
            .unwrap();
        std::fs::write(m.join("e"), b"e").unwrap();
        std::fs::File::open(m.join("e"))
            .unwrap()
            .sync_all()
            .unwrap();
        sync_dir(m);
        std::fs::rename(m.join("d"), m.join("d2")).unwrap();
        std::fs::remove_file(m.join("e")).unwrap();

        // Before the cut everything is as written.
        assert_eq!(std::fs::metadata(m.join("a")).unwrap().len(), 100);
        assert!(m.join("sub/b").exists() && m.join("c").exists() && m.join("d2").exists());

        pc.cut().unwrap();

        assert_eq!(std::fs::read(m.join("a")).unwrap(), vec![1u8; 40_000]);
        assert!(m.join("sub").is_dir());
        assert!(!m.join("sub/b").exists(), "an unsynced name survived");
        // `c`'s name was synced with the directory later on, its bytes never.
        assert_eq!(
            std::fs::read(m.join("c")).unwrap(),
            b"",
            "unsynced bytes survived"
        );
        assert_eq!(
            std::fs::read(m.join("d")).unwrap(),
            b"d",
            "an unsynced rename survived"
        );
        assert!(!m.join("d2").exists());
        assert_eq!(
            std::fs::read(m.join("e")).unwrap(),
            b"e",
            "an unsynced unlink survived"
        );

        // A file created after the last directory sync is gone entirely.
        std::fs::write(m.join("late"), b"late").unwrap();
        std::fs::File::open(m.join("late"))
            .unwrap()
            .sync_all()
            .unwrap();
        pc.cut().unwrap();
        assert!(!m.join("late").exists(), "an unsynced name survived");

        // A synced rename survives; the layer keeps working after a cut.
        std::fs::rename(m.join("d"), m.join("d3")).unwrap();
        sync_dir(m);
        pc.cut().unwrap();
        assert_eq!(std::fs::read(m.join("d3")).unwrap(), b"d");
        assert!(!m.join("d").exists());
        assert!(pc.syncs() >= 8);
    }
}
