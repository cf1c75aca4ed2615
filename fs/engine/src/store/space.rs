//! The data dir's disk: free space, the reserve writes may not take, and the store's size.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{FsError, FsResult};

use super::{Store, CF_CHUNKS, CF_META, CF_NODES};

/// statvfs of the filesystem holding `path`.
pub(super) fn disk_space(path: &Path) -> FsResult<DiskSpace> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| FsError::Invalid("data dir path"))?;
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is NUL-terminated and `s` is a valid out-pointer for statvfs.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::statvfs(c.as_ptr(), s.as_mut_ptr()) };
    if rc != 0 {
        return Err(FsError::Storage(format!(
            "statvfs: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    #[allow(unsafe_code)]
    let s = unsafe { s.assume_init() };
    Ok(DiskSpace {
        blocks: s.f_blocks,
        fragment: s.f_frsize,
        free: s.f_bfree,
        avail: s.f_bavail,
        files_free: s.f_ffree,
    })
}

/// What statvfs says of the data dir's filesystem, in `fragment`-sized blocks.
#[derive(Clone, Copy, Debug)]
pub struct DiskSpace {
    pub blocks: u64,
    pub fragment: u64,
    pub free: u64,
    /// Free blocks an unprivileged writer may use.
    pub avail: u64,
    pub files_free: u64,
}

/// A check that finds this much free beyond what it needs stands for [`PLENTY_FOR`]: writes
/// then skip a statvfs and a RocksDB property read each (two per `write` + `fsync` pair
/// before). What a writer adds meanwhile (its unwritten bytes and memtables, capped in the
/// hundreds of MiB; a disk's worth of 100 ms) stays far below it.
const PLENTY: u64 = 2 << 30;
const PLENTY_FOR: Duration = Duration::from_millis(100);

/// Space kept free on the data dir's disk: an eighth of the disk, at most 256 MiB.
pub(super) fn reserve_for(disk: &DiskSpace) -> u64 {
    (disk.blocks * disk.fragment / 8).min(256 << 20)
}

impl DiskSpace {
    pub fn avail_bytes(&self) -> u64 {
        self.avail * self.fragment
    }
}

impl Store {
    pub fn disk_space(&self) -> FsResult<DiskSpace> {
        disk_space(&self.path)
    }

    pub fn reserve_bytes(&self) -> u64 {
        self.reserve_bytes
    }

    /// Refuses (ENOSPC) a write that would leave less than the reserve free, counting
    /// `unwritten` bytes the caller holds in memory and will write later. Deletes never call
    /// this, so they can always use the reserve.
    pub fn check_space(&self, unwritten: u64) -> FsResult<()> {
        if self.plenty_until.lock().is_some_and(|t| Instant::now() < t) {
            return Ok(());
        }
        // Chunks in memtables are on their way to the disk too (up to 3 x 64 MiB).
        let memtables = {
            let db = self.db()?;
            db.property_int_value_cf(db.cf(CF_CHUNKS), "rocksdb.cur-size-all-mem-tables")?
                .unwrap_or(0)
        };
        let needed = self.reserve_bytes + unwritten + memtables;
        let avail = self.disk_space()?.avail_bytes();
        if avail < needed {
            return Err(FsError::NoSpace);
        }
        if avail - needed >= PLENTY {
            *self.plenty_until.lock() = Some(Instant::now() + PLENTY_FOR);
        }
        Ok(())
    }

    /// Bytes of every file in the data dir (tables, blobs, WAL, manifest, a cluster host's
    /// fetched chunks): what the store takes on disk now, as allocated (the fetched chunks'
    /// files have holes). Files RocksDB deletes meanwhile count as nothing.
    pub fn dir_bytes(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return 0;
            };
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.blocks() * 512,
                    Err(_) => 0,
                })
                .sum()
        }
        walk(self.path())
    }

    /// Bytes RocksDB reports for live SST and blob files, per column family, and the
    /// segments' allocated bytes.
    pub fn disk_usage(&self) -> FsResult<u64> {
        let mut total = self.segments.as_ref().map_or(0, |s| s.allocated_bytes());
        let db = self.db()?;
        for cf in [CF_CHUNKS, CF_NODES, CF_META] {
            let cf = db.cf(cf);
            for prop in [
                "rocksdb.total-sst-files-size",
                "rocksdb.total-blob-file-size",
            ] {
                total += db.property_int_value_cf(cf, prop)?.unwrap_or(0);
            }
        }
        Ok(total)
    }
}
