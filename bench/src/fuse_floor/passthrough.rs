//! `fuse-floor --passthrough DIR BACKING [--plain]`: the regular files directly in BACKING,
//! read-only, through FUSE. By default each open is handed to the kernel's FUSE passthrough
//! (`FOPEN_PASSTHROUGH`, Linux 6.9+): reads and mmaps go to the backing file without a round
//! trip to this process. `--plain` serves the same files the ordinary way, each READ a
//! `pread` of the backing file answered over `/dev/fuse` (what fuse-overlayfs does).
//!
//! It measures what the read rows would cost a chaserfs mount that served committed files by
//! passthrough (`bench/passthrough.sh`). The kernel refuses passthrough on a connection that
//! negotiated the writeback cache, so this mount has none, as such a mount would not.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, Request,
};

const TTL: Duration = Duration::from_secs(60);
const ROOT: u64 = 1;
/// As a chaserfs session: the largest request.
const MAX_READ: u32 = 1 << 20;

#[derive(Default)]
struct Inodes {
    by_name: HashMap<OsString, u64>,
    names: HashMap<u64, OsString>,
    /// Per inode, while it is open: its backing id (passthrough) and how many opens share
    /// it; the kernel wants one backing id per inode for all its open handles.
    backing: HashMap<u64, (Arc<BackingId>, usize)>,
    /// `--plain`: each open handle's file.
    handles: HashMap<u64, Arc<File>>,
    next_handle: u64,
}

pub struct Passthrough {
    backing_dir: PathBuf,
    plain: bool,
    /// Whether INIT settled on passthrough (`--plain`, or a kernel without it: no).
    granted: bool,
    inodes: Mutex<Inodes>,
}

impl Passthrough {
    /// The inode number of BACKING's file `name`, given the first time it is asked for.
    fn ino(&self, name: &OsStr) -> u64 {
        let mut inodes = self.inodes.lock().unwrap();
        let next = inodes.names.len() as u64 + ROOT + 1;
        let ino = *inodes.by_name.entry(name.to_owned()).or_insert(next);
        inodes.names.insert(ino, name.to_owned());
        ino
    }

    fn path(&self, ino: u64) -> Result<PathBuf, Errno> {
        let inodes = self.inodes.lock().unwrap();
        let name = inodes.names.get(&ino).ok_or(Errno::ENOENT)?;
        Ok(self.backing_dir.join(name))
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        if ino == ROOT {
            return Ok(attr(ROOT, FileType::Directory, 0, 0o555));
        }
        let meta = std::fs::metadata(self.path(ino)?).map_err(|_| Errno::ENOENT)?;
        Ok(attr(ino, FileType::RegularFile, meta.size(), 0o444))
    }
}

fn attr(ino: u64, kind: FileType, size: u64, perm: u16) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl Filesystem for Passthrough {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for cap in [InitFlags::FUSE_MAX_PAGES, InitFlags::FUSE_ASYNC_READ] {
            let _ = config.add_capabilities(cap);
        }
        if !self.plain {
            // Backing files on a disk filesystem: one level of stacking.
            self.granted = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
        }
        // Read by bench/passthrough.sh, which refuses to print a passthrough row without it.
        println!("passthrough: {}", if self.granted { "on" } else { "off" });
        let _ = config.set_max_readahead(MAX_READ);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 != ROOT || !self.backing_dir.join(name).is_file() {
            return reply.error(Errno::ENOENT);
        }
        match self.attr(self.ino(name)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let file = match self
            .path(ino.0)
            .and_then(|p| File::open(p).map_err(Errno::from))
        {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let mut inodes = self.inodes.lock().unwrap();
        if !self.granted {
            inodes.next_handle += 1;
            let fh = inodes.next_handle;
            inodes.handles.insert(fh, Arc::new(file));
            return reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
        }
        let id = match inodes.backing.get_mut(&ino.0) {
            Some((id, opens)) => {
                *opens += 1;
                id.clone()
            }
            None => match reply.open_backing(&file) {
                Ok(id) => {
                    let id = Arc::new(id);
                    inodes.backing.insert(ino.0, (id.clone(), 1));
                    id
                }
                Err(e) => return reply.error(Errno::from(e)),
            },
        };
        reply.opened_passthrough(FileHandle(ino.0), FopenFlags::empty(), &id);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut inodes = self.inodes.lock().unwrap();
        if !self.granted {
            inodes.handles.remove(&fh.0);
        } else if let Some((_, opens)) = inodes.backing.get_mut(&ino.0) {
            *opens -= 1;
            if *opens == 0 {
                inodes.backing.remove(&ino.0);
            }
        }
        reply.ok();
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // Only `--plain` handles get here: the kernel reads passthrough ones itself.
        let Some(file) = self.inodes.lock().unwrap().handles.get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let mut buf = vec![0; size as usize];
        match file.read_at(&mut buf, offset) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(Errno::from(e)),
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
        if ino.0 != ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        // The regular files only, as LOOKUP serves.
        let mut names: Vec<OsString> = match std::fs::read_dir(&self.backing_dir) {
            Ok(d) => d
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name())
                .collect(),
            Err(e) => return reply.error(Errno::from(e)),
        };
        names.sort();
        for (i, name) in names.iter().enumerate().skip(offset as usize) {
            let ino = INodeNo(self.ino(name));
            if reply.add(ino, i as u64 + 1, FileType::RegularFile, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// Mounts BACKING's files on `dir`, read-only, until the process is killed.
pub fn serve(dir: &Path, backing_dir: &Path, plain: bool) -> anyhow::Result<()> {
    let fs = Passthrough {
        backing_dir: backing_dir.to_path_buf(),
        plain,
        granted: false,
        inodes: Mutex::default(),
    };
    crate::serve_as_a_session(fs, dir, "fuse-floor-passthrough", &[fuser::MountOption::RO])
}
