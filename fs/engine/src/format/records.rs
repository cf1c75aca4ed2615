//! The values stored under the tree's keys (see [`crate::format::keys`]), encoded with postcard.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{FsError, FsResult};
use crate::format::hash::Hash;

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("records always encode")
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> FsResult<T> {
    postcard::from_bytes(bytes).map_err(|e| FsError::corrupt(format!("record: {e}")))
}

/// Per-state counters and allocators, kept incrementally.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Super {
    pub next_ino: u64,
    /// Inodes in the state, the root directory included.
    pub files: u64,
    /// Sum of regular-file sizes.
    pub logical_bytes: u64,
    /// What the namespace itself holds: every entry's name, symlink targets, and extended
    /// attributes (name and value). Counted against the bytes quota with `logical_bytes`, so
    /// hard links, symlinks and xattrs cannot store data past it.
    pub meta_bytes: u64,
}

/// `Super` as states written before `meta_bytes` hold it.
#[derive(Deserialize)]
struct SuperWithoutMeta {
    next_ino: u64,
    files: u64,
    logical_bytes: u64,
}

impl Super {
    /// Decodes a state's super record; `false` with it when the record predates
    /// `meta_bytes` (then 0), which the caller counts if it needs it.
    pub fn decode(bytes: &[u8]) -> FsResult<(Super, bool)> {
        if let Ok(sup) = postcard::from_bytes::<Super>(bytes) {
            return Ok((sup, true));
        }
        // The older record is a strict prefix of the current one: decoding it as the current
        // one always runs out of bytes, so the two never overlap.
        let old: SuperWithoutMeta = decode(bytes)?;
        let sup = Super {
            next_ino: old.next_ino,
            files: old.files,
            logical_bytes: old.logical_bytes,
            meta_bytes: 0,
        };
        Ok((sup, false))
    }

    /// Bytes counted against a bytes quota.
    pub fn used_bytes(&self) -> u64 {
        self.logical_bytes.saturating_add(self.meta_bytes)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

impl Timespec {
    pub fn now() -> Self {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timespec {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        }
    }

    pub fn to_system_time(self) -> SystemTime {
        if self.sec >= 0 {
            UNIX_EPOCH + std::time::Duration::new(self.sec as u64, self.nsec)
        } else {
            UNIX_EPOCH - std::time::Duration::from_secs(self.sec.unsigned_abs())
                + std::time::Duration::from_nanos(self.nsec as u64)
        }
    }

    pub fn from_system_time(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timespec {
                sec: d.as_secs() as i64,
                nsec: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let (mut sec, mut nsec) = (-(d.as_secs() as i64), d.subsec_nanos());
                if nsec > 0 {
                    sec -= 1;
                    nsec = 1_000_000_000 - nsec;
                }
                Timespec { sec, nsec }
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileKind {
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::Regular,
            libc::S_IFDIR => FileKind::Directory,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            _ => return None,
        })
    }

    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::Regular => libc::S_IFREG,
            FileKind::Directory => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
            FileKind::CharDevice => libc::S_IFCHR,
            FileKind::BlockDevice => libc::S_IFBLK,
        }
    }
}

/// An inode's attributes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inode {
    pub kind: FileKind,
    /// Permission bits, setuid/setgid/sticky included (no type bits).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub crtime: Timespec,
    pub rdev: u32,
    /// Directories: the parent directory (a directory has exactly one). Other inodes: the
    /// directory they were created or last renamed into (0 in stores from before), a hint
    /// for finding a name (`diff`) that an unlink of that hard link leaves stale.
    pub parent: u64,
    /// Directories: the next readdir cookie to hand out.
    pub next_cookie: u64,
    /// Regular files: bytes held in stored chunks, for `st_blocks`.
    pub alloc_bytes: u64,
    /// Symlinks: the target.
    pub target: Vec<u8>,
}

/// A directory entry, under `DIRENT(parent, name)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dirent {
    pub ino: u64,
    pub kind: FileKind,
    pub cookie: u64,
}

/// The same entry indexed by its cookie, under `DIRSEQ(parent, cookie)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DirSeq {
    pub ino: u64,
    pub kind: FileKind,
    pub name: Vec<u8>,
}

/// One stored chunk of a file, under `EXTENT(ino, index)`: bytes
/// `[index * CHUNK_SIZE, index * CHUNK_SIZE + len)` are the chunk, the rest of the span reads as
/// zeros. Trailing zeros are never stored, and an all-zero chunk is no extent at all.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Extent {
    pub hash: Hash,
    pub len: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_super_record_without_meta_bytes_decodes_as_uncounted() {
        let old = encode(&(7u64, 3u64, 4096u64));
        let (sup, counted) = Super::decode(&old).unwrap();
        assert!(!counted);
        assert_eq!((sup.next_ino, sup.files, sup.logical_bytes), (7, 3, 4096));
        let new = Super {
            meta_bytes: 300,
            ..sup
        };
        assert_eq!(Super::decode(&encode(&new)).unwrap(), (new, true));
        assert!(Super::decode(&encode(&(7u64, 3u64))).is_err());
    }
}
