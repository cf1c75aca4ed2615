//! What the POSIX layer's operations take and answer, and its limits.

use crate::format::records::{FileKind, Timespec};
use crate::format::CHUNK_SIZE;

pub(super) const CS: u64 = CHUNK_SIZE as u64;

pub const NAME_MAX: usize = 255;

/// Largest file size (as ext4 with 4 KiB blocks: 16 TiB).
pub const MAX_FILE_SIZE: u64 = 16 << 40;

/// Most names one file may have (a directory may hold any number of subdirectories).
pub const LINK_MAX: u32 = 65_000;

pub const XATTR_NAME_MAX: usize = 255;

pub const XATTR_SIZE_MAX: usize = 64 * 1024;

/// Dirty chunk buffers kept in memory before they are sealed early.
pub(super) const DIRTY_LIMIT: usize = 64 << 20;

/// Sealed chunks buffered before they are written to the store (`Store::put_chunks`).
pub(super) const PENDING_LIMIT: usize = 16 << 20;

/// First readdir cookie of a directory's entries; 1 and 2 are "." and "..".
pub(super) const FIRST_COOKIE: u64 = 3;

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
    /// The change time the kernel keeps itself on a writeback-cache mount, sent with the
    /// times it flushes: stored as sent, so every later session (on any host) shows the
    /// ctime the writer saw, as git's index recorded it. Otherwise the change time is now.
    pub ctime: Option<Timespec>,
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

impl Attr {
    pub fn mode(&self) -> u32 {
        self.kind.mode_bits() | self.perm
    }
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
