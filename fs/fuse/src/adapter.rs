//! The FUSE adapter: a thin translation from fuser's callbacks to [`Workspace`] operations.
//! Only this file touches fuser replies; errors become errnos through [`FsError::errno`].

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, Generation,
    INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, PollEvents, PollFlags,
    PollNotifier, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyPoll,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use chaserfs_engine::error::FsError;
use chaserfs_engine::format::records::{FileKind, Timespec};
use chaserfs_engine::posix::{Attr, NewNode, SetAttr, TimeSet, Workspace};

use crate::metrics::{current_op, FuseOp, FUSE_ERRORS, FUSE_IO_ERRORS};
use crate::offer::{KernelOffer, OfferSlot};

/// Entries and attributes are cached by the kernel this long: the daemon is the only writer.
const TTL: Duration = Duration::from_secs(60);

/// Read replies' buffers, kept from one read to the next: a new buffer per read cost a zero
/// fill and, at a MiB, fresh pages. At most [`SPARE_REPLY_BUFS_MAX`] are kept, whatever the number
/// of mounts and threads, each at most the kernel's largest read.
static SPARE_REPLY_BUFS: parking_lot::Mutex<Vec<Vec<u8>>> = parking_lot::Mutex::new(Vec::new());
const SPARE_REPLY_BUFS_MAX: usize = 8;
/// Largest write the kernel sends in one request.
const MAX_WRITE: u32 = 1 << 20;

/// Per-mount choices.
#[derive(Clone, Copy, Debug, Default)]
pub struct MountOptions {
    /// Serve extended attributes. Off, every xattr call answers ENOSYS, which the kernel
    /// remembers for the mount (EOPNOTSUPP to callers, as on a filesystem mounted without
    /// xattr support). That is what makes small writes cheap: FUSE filesystems never get
    /// the kernel's "no security xattrs here" flag (SB_NOSEC), so with xattrs on, every
    /// write(2) first asks the daemon for `security.capability`, a round trip per write.
    pub xattrs: bool,
    /// A snapshot's mount: every change answers EROFS (the kernel refuses most first, the
    /// mount being read-only).
    pub read_only: bool,
}

pub struct FuseAdapter {
    ws: Arc<Workspace>,
    options: MountOptions,
    /// What the kernel offered at INIT, kept for a successor (see `mount.rs`).
    offer: OfferSlot,
    /// Whether INIT settled on the writeback cache: the kernel then keeps regular files'
    /// mtime and ctime (without it, it neither keeps nor sends them).
    writeback_cache: bool,
}

impl FuseAdapter {
    pub fn new(ws: Arc<Workspace>, options: MountOptions) -> Self {
        FuseAdapter {
            ws,
            options,
            offer: OfferSlot::default(),
            writeback_cache: false,
        }
    }

    pub(crate) fn offer_slot(&self) -> OfferSlot {
        self.offer.clone()
    }

    /// Replies with an entry the kernel will hold a reference to (until it forgets it).
    fn entry(&self, reply: ReplyEntry, r: Result<Attr, FsError>) {
        match r {
            Ok(a) => {
                self.ws.retain(a.ino);
                reply.entry(&TTL, &file_attr(&a), Generation(0))
            }
            Err(e) => reply.error(errno(e)),
        }
    }
}

fn errno(e: FsError) -> Errno {
    let (code, name) = e.errno_and_name();
    metrics::counter!(FUSE_ERRORS, "op" => current_op(), "errno" => name).increment(1);
    if matches!(e, FsError::Storage(_) | FsError::Corrupt(_)) {
        metrics::counter!(FUSE_IO_ERRORS).increment(1);
        // At most one line every 10 s: a failing store fails every request, and says so once.
        static LAST_LOGGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = LAST_LOGGED.load(std::sync::atomic::Ordering::Relaxed);
        if now >= last + 10
            && LAST_LOGGED
                .compare_exchange(
                    last,
                    now,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
        {
            tracing::error!("I/O error: {e} (further ones within 10 s are counted, not logged)");
        }
    }
    Errno::from_i32(code)
}

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::Regular => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime.to_system_time(),
        mtime: a.mtime.to_system_time(),
        ctime: a.ctime.to_system_time(),
        crtime: a.crtime.to_system_time(),
        kind: file_type(a.kind),
        perm: a.perm as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 4096,
        flags: 0,
    }
}

/// The attributes sent with a negative entry: the kernel reads only the node id (0).
fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: std::time::UNIX_EPOCH,
        mtime: std::time::UNIX_EPOCH,
        ctime: std::time::UNIX_EPOCH,
        crtime: std::time::UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(Timespec::from_system_time(t)),
    }
}

fn empty(reply: ReplyEmpty, r: Result<(), FsError>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

fn data(reply: ReplyData, r: Result<Vec<u8>, FsError>) {
    match r {
        Ok(d) => reply.data(&d),
        Err(e) => reply.error(errno(e)),
    }
}

fn attr(reply: ReplyAttr, r: Result<Attr, FsError>) {
    match r {
        Ok(a) => reply.attr(&TTL, &file_attr(&a)),
        Err(e) => reply.error(errno(e)),
    }
}

fn xattr_reply(reply: ReplyXattr, data: Vec<u8>, size: u32) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(&data);
    }
}

/// A new inode owned by the caller. The kernel has already applied the umask to `mode` (we
/// do not ask for FUSE_DONT_MASK).
fn new_node<'a>(
    req: &Request,
    kind: FileKind,
    mode: u32,
    rdev: u32,
    target: &'a [u8],
) -> NewNode<'a> {
    NewNode {
        kind,
        perm: mode & 0o7777,
        uid: req.uid(),
        gid: req.gid(),
        rdev,
        target,
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each capability is asked for alone, so one the kernel lacks does not sink the rest.
        for (cap, why) in [
            // Buffer writes in the page cache and send them in large batches: the daemon is
            // the only writer, so the kernel's cached size and mtime are authoritative.
            (InitFlags::FUSE_WRITEBACK_CACHE, "writeback cache"),
            // Requests larger than 128 KiB, so max_write can be 1 MiB.
            (InitFlags::FUSE_MAX_PAGES, "1 MiB requests"),
            (InitFlags::FUSE_BIG_WRITES, "large writes"),
            // Several reads of one file in flight at once.
            (InitFlags::FUSE_ASYNC_READ, "async reads"),
            // `ls -l` style listings get attributes with the entries in one round trip.
            (InitFlags::FUSE_DO_READDIRPLUS, "readdirplus"),
            (InitFlags::FUSE_READDIRPLUS_AUTO, "adaptive readdirplus"),
            // Lookups and creates in one directory need not be serialized by the kernel;
            // the engine orders them itself.
            (
                InitFlags::FUSE_PARALLEL_DIROPS,
                "parallel directory operations",
            ),
        ] {
            let granted = config.add_capabilities(cap).is_ok();
            if !granted {
                tracing::debug!("kernel does not offer {why}");
            }
            if cap == InitFlags::FUSE_WRITEBACK_CACHE {
                self.writeback_cache = granted;
            }
        }
        // Not requested: FUSE_POSIX_LOCKS / FUSE_FLOCK_LOCKS. Without them the kernel keeps
        // fcntl and flock locks itself, which is right for processes sharing this mount.
        let _ = config.set_max_write(MAX_WRITE);
        let max_readahead = match config.set_max_readahead(MAX_WRITE) {
            Ok(_) => MAX_WRITE,
            Err(kernel_max) => kernel_max,
        };
        let _ = config.set_time_granularity(Duration::from_nanos(1));
        *self.offer.lock().expect("offer") = Some(KernelOffer {
            minor: config.kernel_abi().1,
            flags: config.capabilities().bits(),
            max_readahead,
        });
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _op = FuseOp::start("lookup");
        match self.ws.lookup(parent.0, name.as_bytes()) {
            // A negative entry (node 0) the kernel keeps for TTL, as it keeps found ones: no
            // process changes a mounted workspace but through this mount, which updates the
            // kernel's entries as it goes. Tools probe many missing names (a compiler's include
            // path, Python's import path, git's config files) and ask again each time.
            Err(FsError::NotFound) => reply.entry(&TTL, &negative_attr(), Generation(0)),
            r => self.entry(reply, r),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _op = FuseOp::start("getattr");
        attr(reply, self.ws.getattr(ino.0));
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
        ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _op = FuseOp::start("setattr");
        if self.options.read_only {
            return reply.error(Errno::EROFS);
        }
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            ctime: ctime.map(Timespec::from_system_time),
        };
        attr(reply, self.ws.setattr(ino.0, &set));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _op = FuseOp::start("readlink");
        data(reply, self.ws.readlink(ino.0));
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _op = FuseOp::start("mknod");
        if self.options.read_only {
            return reply.error(Errno::EROFS);
        }
        let Some(kind) = FileKind::from_mode(mode)
            .filter(|k| !matches!(k, FileKind::Directory | FileKind::Symlink))
        else {
            return reply.error(Errno::EINVAL);
        };
        self.entry(
            reply,
            self.ws.create(
                parent.0,
                name.as_bytes(),
                new_node(req, kind, mode, rdev, b""),
            ),
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
        let _op = FuseOp::start("mkdir");
        if self.options.read_only {
            return reply.error(Errno::EROFS);
        }
        self.entry(
            reply,
            self.ws.create(
                parent.0,
                name.as_bytes(),
                new_node(req, FileKind::Directory, mode, 0, b""),
            ),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = FuseOp::start("unlink");
        if self.options.read_only {
            return reply.error(Errno::EROFS);
        }
        empty(reply, self.ws.unlink(parent.0, name.as_bytes()));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = FuseOp::start("rmdir");
        if self.options.read_only {
            return reply.error(Errno::EROFS);
        }
        empty(reply, self.ws.rmdir(parent.0, name.as_bytes()));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _op = FuseOp::start("symlink");
        if self.options.read_only {
            return reply.error(Errno::EROFS);
        }
        let target = target.as_os_str().as_bytes();
        self.entry(
            reply,
            self.ws.create(
                parent.0,
                link_name.as_bytes(),
                new_node(req, FileKind::Symlink, 0o777, 0, target),
            ),
        );
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
        let _op = FuseOp::start("rename");
        if self.options.read_only {
            return reply.error(Errno::EROFS);
        }
        empty(
            reply,
            self.ws.rename(
                parent.0,
                name.as_bytes(),
                newparent.0,
                newname.as_bytes(),
                flags.bits(),
            ),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _op = FuseOp::start("link");
        if self.options.read_only {
            return reply.error(Errno::EROFS);
        }
        self.entry(reply, self.ws.link(ino.0, newparent.0, newname.as_bytes()));
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _op = FuseOp::start("open");
        // ENOSYS: the kernel stops sending OPEN and RELEASE for files (FUSE_NO_OPEN_SUPPORT)
        // and keeps their cached pages, as FOPEN_KEEP_CACHE would: two round trips less per
        // file. Nothing is lost: handles carry no state here, and an unlinked file's lifetime
        // follows the kernel's references (`forget`), not its opens.
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
        let _op = FuseOp::start("read");
        let mut buf = SPARE_REPLY_BUFS.lock().pop().unwrap_or_default();
        match self.ws.read_into(ino.0, offset, size as usize, &mut buf) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(errno(e)),
        }
        let mut spare = SPARE_REPLY_BUFS.lock();
        if spare.len() < SPARE_REPLY_BUFS_MAX {
            spare.push(buf);
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _op = FuseOp::start("write");
        if self.options.read_only {
            return reply.error(Errno::EROFS);
        }
        // From the writeback cache: the kernel owns the file's times and sends them itself.
        let written = if self.writeback_cache && wf.contains(WriteFlags::FUSE_WRITE_CACHE) {
            self.ws.write_back(ino.0, offset, data)
        } else {
            self.ws.write(ino.0, offset, data)
        };
        match written {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
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
        let _op = FuseOp::start("flush");
        // Nothing to do at close: no POSIX locks here, and the kernel writes back dirty pages
        // before it would send FLUSH. ENOSYS makes it stop sending FLUSH at all (one round
        // trip less per close(2)); writeback errors still reach close through the kernel.
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _op = FuseOp::start("release");
        // Only files made by CREATE before the first OPEN was refused get here.
        reply.ok();
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _op = FuseOp::start("forget");
        if let Err(e) = self.ws.release(ino.0, nlookup) {
            tracing::error!("forget of inode {}: {e}", ino.0);
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
        let _op = FuseOp::start("fsync");
        // Durable means committed: the whole workspace's overlay becomes a synced root.
        empty(reply, self.ws.fsync());
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _op = FuseOp::start("opendir");
        // As for files (FUSE_NO_OPENDIR_SUPPORT): no OPENDIR and RELEASEDIR round trips; the
        // kernel checks the inode is a directory itself.
        reply.error(Errno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _op = FuseOp::start("readdir");
        let r = self.ws.readdir(ino.0, offset, |e| {
            !reply.add(
                INodeNo(e.ino),
                e.offset,
                file_type(e.kind),
                OsStr::from_bytes(&e.name),
            )
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _op = FuseOp::start("readdirplus");
        // Collect first: attributes cannot be read while the listing holds the workspace.
        let mut entries = Vec::new();
        if let Err(e) = self.ws.readdir(ino.0, offset, |e| {
            entries.push(e);
            entries.len() < 256
        }) {
            return reply.error(errno(e));
        }
        for e in entries {
            let Ok(a) = self.ws.getattr(e.ino) else {
                continue;
            };
            if reply.add(
                INodeNo(e.ino),
                e.offset,
                OsStr::from_bytes(&e.name),
                &TTL,
                &file_attr(&a),
                Generation(0),
            ) {
                break;
            }
            // The kernel takes a reference to every entry it is given but "." and "..".
            if e.name != b"." && e.name != b".." {
                self.ws.retain(e.ino);
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _op = FuseOp::start("fsyncdir");
        empty(reply, self.ws.fsync());
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _op = FuseOp::start("statfs");
        match self.ws.statfs() {
            Ok(s) => reply.statfs(
                s.blocks,
                s.blocks_free,
                s.blocks_avail,
                s.files,
                s.files_free,
                s.block_size,
                s.name_max,
                s.block_size,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _op = FuseOp::start("setxattr");
        if self.options.read_only {
            return reply.error(Errno::EROFS);
        }
        if !self.options.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        empty(
            reply,
            self.ws.setxattr(ino.0, name.as_bytes(), value, flags),
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _op = FuseOp::start("getxattr");
        if !self.options.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        match self.ws.getxattr(ino.0, name.as_bytes()) {
            Ok(v) => xattr_reply(reply, v, size),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _op = FuseOp::start("listxattr");
        if !self.options.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        match self.ws.listxattr(ino.0) {
            Ok(names) => {
                let mut out = Vec::new();
                for n in names {
                    out.extend_from_slice(&n);
                    out.push(0);
                }
                xattr_reply(reply, out, size);
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = FuseOp::start("removexattr");
        if self.options.read_only {
            return reply.error(Errno::EROFS);
        }
        if !self.options.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        empty(reply, self.ws.removexattr(ino.0, name.as_bytes()));
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        let _op = FuseOp::start("access");
        // Permission checks are the kernel's (default_permissions); this only confirms the inode.
        empty(reply, self.ws.getattr(ino.0).map(|_| ()));
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
        let _op = FuseOp::start("create");
        if self.options.read_only {
            return reply.error(Errno::EROFS);
        }
        // ENOSYS: the kernel makes new files with MKNOD instead (remembering the answer) and
        // then opens them itself, since OPEN is refused too. CREATE would hand out a file
        // handle whose RELEASE costs a round trip at every close. The kernel still marks the
        // file as created by this open, so a new 0444 file is writable through it.
        reply.error(Errno::ENOSYS);
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
        let _op = FuseOp::start("fallocate");
        if self.options.read_only {
            return reply.error(Errno::EROFS);
        }
        empty(reply, self.ws.fallocate(ino.0, offset, length, mode));
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let _op = FuseOp::start("lseek");
        if offset < 0 {
            return reply.error(Errno::EINVAL);
        }
        match self.ws.seek(ino.0, offset as u64, whence) {
            Ok(o) => reply.offset(o as i64),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _op = FuseOp::start("copy_file_range");
        if self.options.read_only {
            return reply.error(Errno::EROFS);
        }
        // Whole aligned chunks are shared, not copied. One reply carries at most u32::MAX.
        let len = len.min(u32::MAX as u64 & !0xffff);
        match self
            .ws
            .copy_range(ino_in.0, offset_in, ino_out.0, offset_out, len)
        {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        let _op = FuseOp::start("ioctl");
        // No ioctl is served: ENOTTY, as ext4 answers one it does not know. The kernel asks
        // every time (it remembers no answer to IOCTL), and `isatty` on every file a program
        // opens asks: fuser's default answer wrote a warning line to the log each time, a
        // line any process in a session could have repeated to fill the host's disk.
        reply.error(Errno::ENOTTY);
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: PollNotifier,
        _events: PollEvents,
        _flags: PollFlags,
        reply: ReplyPoll,
    ) {
        let _op = FuseOp::start("poll");
        // ENOSYS: the kernel stops asking for the mount and reports files always ready, as a
        // disk filesystem's are. Answered here so fuser's default logs nothing.
        reply.error(Errno::ENOSYS);
    }
}
