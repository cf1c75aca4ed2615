//! Operations on a file's bytes and attributes: read, write, fallocate, copy, seek, setattr.

use std::collections::HashSet;

use crate::error::{FsError, FsResult};
use crate::format::hash::Hash;
use crate::format::records::{FileKind, Timespec};

use super::types::*;
use super::Workspace;

impl Workspace {
    /// Reads up to `len` bytes at `offset`; short only at end of file.
    pub fn read(&self, ino: u64, offset: u64, len: usize) -> FsResult<Vec<u8>> {
        let mut out = Vec::new();
        let n = self.read_into(ino, offset, len, &mut out)?;
        out.truncate(n);
        Ok(out)
    }

    /// As [`Self::read`], into `out[..n]`; returns `n`. `out` grows if it is shorter and is
    /// never shortened, and what it held is overwritten: a caller that keeps one buffer for
    /// its reads spares each the zero fill (and the fresh pages) of a new one.
    pub fn read_into(
        &self,
        ino: u64,
        offset: u64,
        len: usize,
        out: &mut Vec<u8>,
    ) -> FsResult<usize> {
        // Plan under the lock, fetch stored chunks outside it so reads run in parallel. The
        // chunks are pinned meanwhile: a commit racing this read cannot let the GC take them.
        let (ahead, (n, fetch)) = {
            let mut st = self.state.lock();
            let plan = st.read_plan(ino, offset, len, out)?;
            let fetch = &plan.1;
            let ahead = match self.store.is_cluster() {
                true => st.read_ahead(ino, offset, len)?,
                false => None,
            };
            if !fetch.is_empty() {
                self.store.pin(fetch.iter().map(|c| c.extent.hash));
            }
            (ahead, plan)
        };
        // Marked and queued outside the workspace's lock (it checks what the cache holds).
        if let Some(ahead) = ahead {
            self.store.read_ahead_later(&ahead);
        }
        if fetch.is_empty() {
            return Ok(n); // all in memory, or holes
        }
        if fetch.len() > 1 {
            self.store
                .fetch_together(fetch.iter().map(|c| c.extent.hash));
        }
        let fetched = fetch.iter().try_for_each(|c| {
            let dst = &mut out[c.at..c.at + c.len];
            self.store
                .read_chunk(&c.extent.hash, c.extent.len as usize, c.in_chunk, dst)
        });
        self.store.unpin(fetch.iter().map(|c| c.extent.hash));
        fetched.map(|()| n)
    }

    /// Writes into the overlay. Sealed chunks the write spills are stored after the lock is
    /// released, so other requests (and other spills) go on meanwhile: under the lock, the
    /// copies into RocksDB's memtable serialized a sequential write on one thread. They stay
    /// in `pending` (reads and commits see them) until they are stored.
    pub fn write(&self, ino: u64, offset: u64, data: &[u8]) -> FsResult<usize> {
        self.write_with_times(ino, offset, data, true)
    }

    /// A write-back of the kernel's page cache (FUSE's writeback cache): as [`Self::write`],
    /// but the file's mtime and ctime stay as they are. The kernel set them at the write(2)
    /// and sends them with a SETATTR of its own, which may reach the daemon before the data
    /// does: a time of the daemon's clock here would overwrite the one every `stat` showed.
    /// (A periodic commit that falls between the two holds the new bytes with the old times
    /// until the next; an fsync sends both before it commits.)
    pub fn write_back(&self, ino: u64, offset: u64, data: &[u8]) -> FsResult<usize> {
        self.write_with_times(ino, offset, data, false)
    }

    fn write_with_times(&self, ino: u64, offset: u64, data: &[u8], times: bool) -> FsResult<usize> {
        let (written, queued) = {
            let mut st = self.state.lock();
            st.defer_spills = true;
            let written = st.write(ino, offset, data, times);
            st.defer_spills = false;
            (written, std::mem::take(&mut st.spill_queue))
        };
        if !queued.is_empty() {
            let stored = self.store.put_chunks(Some(self.id), &queued);
            let mut st = self.state.lock();
            st.spilling_bytes -= queued.iter().map(|(_, d)| d.len()).sum::<usize>();
            for (h, d) in &queued {
                st.spilling.remove(h);
                // A commit meanwhile took what it found in `pending` and wrote it itself.
                if stored.is_err() && st.pending.contains_key(h) {
                    st.pending_bytes += d.len();
                }
            }
            if stored.is_ok() {
                // One pass that keeps the order (a removal each would move the rest each time).
                let spilled: HashSet<&Hash> = queued.iter().map(|(h, _)| h).collect();
                st.pending.retain(|h, _| !spilled.contains(h));
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
                st.drop_buffer((dst, di));
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
                st.write(dst, d_o, &bytes, true)?;
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
        i.ctime = set.ctime.unwrap_or(now);
        st.save(ino, i);
        st.attr(ino)
    }
}
