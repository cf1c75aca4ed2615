//! `fuse-floor --serve DIR`: a filesystem with nothing behind it, mounted as a chaserfs
//! session is (the same fuser, four threads, the writeback cache, 1 MiB requests, two
//! MiB of readahead, `default_permissions`, 60 s entry and attribute timeouts, negative
//! entries, no OPEN, CREATE or FLUSH), so a workload run on it costs the FUSE part alone:
//! the kernel's requests and their round trips, with no store behind them. Files keep their
//! size and attributes in memory; writes are dropped and reads answer zeros; fsync answers
//! at once. What a data-path row costs here is the least any FUSE filesystem on this
//! machine pays for it without kernel passthrough (`bench/datapath.sh` runs the data and
//! small-file rows on it).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

const TTL: Duration = Duration::from_secs(60);
const ROOT: u64 = 1;
/// As a chaserfs session: the largest request.
const MAX_WRITE: u32 = 1 << 20;
static ZEROS: [u8; MAX_WRITE as usize] = [0; MAX_WRITE as usize];

struct Node {
    attr: FileAttr,
    /// A directory's entries.
    children: Option<BTreeMap<OsString, u64>>,
}

pub struct Null {
    nodes: Mutex<HashMap<u64, Node>>,
    next: AtomicU64,
    /// Whether to ask for the writeback cache (`--no-writeback`: not, as a mount that served
    /// reads by passthrough could not; see `passthrough.rs`).
    writeback: bool,
}

impl Null {
    pub fn new(writeback: bool) -> Null {
        let root = Node {
            attr: attr(ROOT, FileType::Directory, 0o755, 0, 0),
            children: Some(BTreeMap::new()),
        };
        Null {
            nodes: Mutex::new(HashMap::from([(ROOT, root)])),
            next: AtomicU64::new(ROOT + 1),
            writeback,
        }
    }

    fn make(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        kind: FileType,
        mode: u32,
    ) -> Result<FileAttr, Errno> {
        let mut nodes = self.nodes.lock().unwrap();
        let dir = nodes.get_mut(&parent).ok_or(Errno::ENOENT)?;
        let children = dir.children.as_mut().ok_or(Errno::ENOTDIR)?;
        if children.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next.fetch_add(1, Ordering::Relaxed);
        children.insert(name.to_owned(), ino);
        let a = attr(ino, kind, (mode & 0o7777) as u16, req.uid(), req.gid());
        let children = (kind == FileType::Directory).then(BTreeMap::new);
        nodes.insert(ino, Node { attr: a, children });
        Ok(a)
    }

    fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let mut nodes = self.nodes.lock().unwrap();
        let ino = *nodes
            .get(&parent)
            .and_then(|p| p.children.as_ref()?.get(name))
            .ok_or(Errno::ENOENT)?;
        let node = nodes.get(&ino).ok_or(Errno::ENOENT)?;
        match (&node.children, dir) {
            (Some(c), true) if !c.is_empty() => return Err(Errno::ENOTEMPTY),
            (Some(_), false) => return Err(Errno::EISDIR),
            (None, true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        // The node stays: the kernel may still write back or ask for an unlinked file.
        nodes.get_mut(&ino).expect("found above").attr.nlink = 0;
        if let Some(c) = nodes.get_mut(&parent).and_then(|p| p.children.as_mut()) {
            c.remove(name);
        }
        Ok(())
    }

    fn with_attr(&self, ino: u64, change: impl FnOnce(&mut FileAttr)) -> Result<FileAttr, Errno> {
        let mut nodes = self.nodes.lock().unwrap();
        let node = nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        change(&mut node.attr);
        Ok(node.attr)
    }
}

fn attr(ino: u64, kind: FileType, perm: u16, uid: u32, gid: u32) -> FileAttr {
    let now = SystemTime::now();
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid,
        gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn entry(reply: ReplyEntry, a: Result<FileAttr, Errno>) {
    match a {
        Ok(a) => reply.entry(&TTL, &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::Now => SystemTime::now(),
        TimeOrNow::SpecificTime(t) => t,
    }
}

impl Filesystem for Null {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if self.writeback {
            let _ = config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE);
        }
        for cap in [
            InitFlags::FUSE_MAX_PAGES,
            InitFlags::FUSE_BIG_WRITES,
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_PARALLEL_DIROPS,
        ] {
            let _ = config.add_capabilities(cap);
        }
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        let _ = config.set_time_granularity(Duration::from_nanos(1));
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let nodes = self.nodes.lock().unwrap();
        let found = nodes
            .get(&parent.0)
            .and_then(|p| p.children.as_ref()?.get(name))
            .and_then(|ino| nodes.get(ino));
        match found {
            Some(n) => reply.entry(&TTL, &n.attr, Generation(0)),
            // A negative entry, kept for TTL as chaserfs's are.
            None => {
                let mut negative = attr(0, FileType::RegularFile, 0, 0, 0);
                negative.nlink = 0;
                reply.entry(&TTL, &negative, Generation(0))
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.with_attr(ino.0, |_| {}) {
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
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = self.with_attr(ino.0, |a| {
            if let Some(m) = mode {
                a.perm = (m & 0o7777) as u16;
            }
            a.uid = uid.unwrap_or(a.uid);
            a.gid = gid.unwrap_or(a.gid);
            if let Some(s) = size {
                a.size = s;
            }
            if let Some(t) = atime {
                a.atime = time(t);
            }
            if let Some(t) = mtime {
                a.mtime = time(t);
            }
            a.ctime = ctime.unwrap_or_else(SystemTime::now);
        });
        match set {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        entry(
            reply,
            self.make(req, parent.0, name, FileType::RegularFile, mode),
        );
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
        entry(
            reply,
            self.make(req, parent.0, name, FileType::Directory, mode),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
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
        match self.with_attr(ino.0, |_| {}) {
            Ok(a) => {
                let n = a.size.saturating_sub(offset).min(u64::from(size)) as usize;
                reply.data(&ZEROS[..n.min(ZEROS.len())]);
            }
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
        let end = offset + data.len() as u64;
        match self.with_attr(ino.0, |a| a.size = a.size.max(end)) {
            Ok(_) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

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
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        match self.with_attr(ino.0, |a| {
            if !keep_size {
                a.size = a.size.max(offset + length);
            }
        }) {
            Ok(_) => reply.ok(),
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
        let nodes = self.nodes.lock().unwrap();
        let Some(children) = nodes.get(&ino.0).and_then(|n| n.children.as_ref()) else {
            return reply.error(Errno::ENOTDIR);
        };
        for (i, (name, child)) in children.iter().enumerate().skip(offset as usize) {
            let kind = nodes
                .get(child)
                .map_or(FileType::RegularFile, |n| n.attr.kind);
            if reply.add(INodeNo(*child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = 1 << 32; // 16 TiB of 4 KiB blocks: fio checks for room
        reply.statfs(blocks, blocks, blocks, 1 << 32, 1 << 32, 4096, 255, 4096);
    }
}

/// Mounts the null filesystem on `dir` until the process is killed.
pub fn serve(dir: &Path, writeback: bool) -> anyhow::Result<()> {
    crate::serve_as_a_session(Null::new(writeback), dir, "fuse-floor", &[])
}
