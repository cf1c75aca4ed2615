//! Cluster mode: chunks fetched from the object store, or staged for upload by this host's
//! sessions, kept in plain files instead of RocksDB.
//!
//! A chunk is appended to the current segment file (one `pwrite`, into the page cache) and
//! read back with one `pread`: no memtable insert, no flush that copies and
//! checksums it again, no blob file read through RocksDB's buffers, and no flushes a commit
//! must wait for. Each object carries a CRC32 of its stored bytes, checked on every read: a
//! mismatch (a bad disk, a range punched by an eviction racing the read) drops the object and
//! the read fetches it again (a staged chunk, in no object store yet, fails the read and its
//! commit instead), so a wrong byte is never served.
//!
//! Which objects stay is decided by the store's LRU (`cache.rs`), which keeps every staged
//! chunk until its commit; an evicted object's range is punched out of its segment (the
//! space is free at once), and a segment whose objects are all gone is deleted. Nothing here survives a restart: a cluster host empties its data
//! dir at start.

use nix::fcntl::{fallocate, FallocateFlags};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{FsError, FsResult};
use crate::format::codec::CHUNK_RAW;
use crate::format::hash::Hash;

/// Chunks start on a page of their segment.
pub(super) const PAGE: u64 = 4096;
/// A segment is closed to appends past this many bytes.
const SEGMENT_BYTES: u64 = 64 << 20;
/// Segments open for appends at once, each taken by the threads that hash to it: a buffered
/// write holds its file's inode lock, and the prefetch threads write side by side.
const LANES: usize = 4;

pub(super) struct ChunkFiles {
    dir: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    index: HashMap<Hash, Slot>,
    segments: HashMap<u64, Segment>,
    /// Per lane, the segment its appends go to, if one is open.
    current: [Option<u64>; LANES],
    next_id: u64,
}

#[derive(Clone, Copy, PartialEq)]
/// Where a chunk's bytes (its stored encoding but the codec byte) are, and a CRC32 of its
/// whole stored encoding.
struct Slot {
    segment: u64,
    offset: u64,
    len: u32,
    codec: u8,
    crc: u32,
}

struct Segment {
    file: Arc<File>,
    /// Where the next append goes.
    end: u64,
    /// Objects indexed in it, or being written into it.
    live: usize,
}

impl ChunkFiles {
    /// Opens `dir` (created if missing) for fetched chunks; it must be empty or hold only
    /// what an earlier run left, which is ignored.
    pub(super) fn new(dir: &Path) -> FsResult<ChunkFiles> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        Ok(ChunkFiles {
            dir: dir.to_path_buf(),
            state: Mutex::new(State::default()),
        })
    }

    pub(super) fn contains(&self, hash: &Hash) -> bool {
        self.state.lock().index.contains_key(hash)
    }

    /// Stores a verified chunk (its stored encoding); a chunk held already is left as it is.
    pub(super) fn put(&self, hash: &Hash, stored: &[u8]) -> FsResult<()> {
        // The codec byte stays in the index, and the bytes start on a page: a chunk's pages
        // are its own (freed whole when it goes), and a full chunk's write fills whole pages.
        let Some((&codec, data)) = stored.split_first() else {
            return Err(FsError::corrupt(format!("chunk {hash} is empty")));
        };
        let len = data.len() as u64;
        let mut freed = Vec::new();
        let (id, file, offset) = {
            let mut s = self.state.lock();
            if s.index.contains_key(hash) {
                return Ok(());
            }
            let lane = lane();
            let open = s.current[lane].filter(|id| {
                s.segments[id].end.next_multiple_of(PAGE) + len <= SEGMENT_BYTES.max(len)
            });
            let id = match open {
                Some(id) => id,
                None => {
                    let id = s.next_id;
                    let path = self.segment_path(id);
                    let file = File::options()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .open(&path)
                        .map_err(|e| io_error(&path, e))?;
                    s.next_id += 1;
                    let closed = s.current[lane].replace(id);
                    s.segments.insert(
                        id,
                        Segment {
                            file: Arc::new(file),
                            end: 0,
                            live: 0,
                        },
                    );
                    // A closed segment with nothing left in it goes now.
                    if let Some(closed) = closed {
                        self.delete_if_empty(&mut s, closed, &mut freed);
                    }
                    id
                }
            };
            let seg = s.segments.get_mut(&id).expect("the open segment");
            let offset = seg.end.next_multiple_of(PAGE);
            seg.end = offset + len;
            seg.live += 1;
            (id, seg.file.clone(), offset)
        };
        // Written outside the lock: readers only find the slot once it is indexed, below.
        let written = file.write_all_at(data, offset);
        let slot = Slot {
            segment: id,
            offset,
            len: data.len() as u32,
            codec,
            crc: crc32fast::hash(stored),
        };
        let mut s = self.state.lock();
        if written.is_ok() && !s.index.contains_key(hash) {
            s.index.insert(*hash, slot);
        } else {
            // Failed, or another put of the same chunk indexed it meanwhile: a dead copy.
            self.release_slot(&mut s, slot, &mut freed);
        }
        drop(s);
        release(freed);
        written.map_err(|e| io_error(&self.segment_path(id), e))
    }

    /// A chunk's stored encoding, checked against the CRC taken when it was stored. `None`
    /// if it is not here, or no longer readable as it was stored (it is dropped then).
    pub(super) fn get(&self, hash: &Hash) -> Option<Vec<u8>> {
        let (slot, file) = self.slot(hash)?;
        let mut buf = vec![0u8; 1 + slot.len as usize];
        buf[0] = slot.codec;
        let read = file.read_exact_at(&mut buf[1..], slot.offset);
        let intact = read.is_ok() && crc32fast::hash(&buf) == slot.crc;
        self.checked(hash, slot, intact, read.err()).then_some(buf)
    }

    /// A chunk stored raw and exactly `dst.len()` bytes long, read straight into `dst` (one
    /// `pread`, no buffer between) and checked as [`ChunkFiles::get`] checks it. False if it
    /// is not here, not stored raw, of another length, or damaged (dropped then, and `dst`
    /// holds whatever was read).
    pub(super) fn read_raw_into(&self, hash: &Hash, dst: &mut [u8]) -> bool {
        let Some((slot, file)) = self.slot(hash) else {
            return false;
        };
        if slot.codec != CHUNK_RAW || slot.len as usize != dst.len() {
            return false;
        }
        let read = file.read_exact_at(dst, slot.offset);
        let intact = read.is_ok() && {
            let mut crc = crc32fast::Hasher::new();
            crc.update(&[slot.codec]);
            crc.update(dst);
            crc.finalize() == slot.crc
        };
        self.checked(hash, slot, intact, read.err())
    }

    fn slot(&self, hash: &Hash) -> Option<(Slot, Arc<File>)> {
        let s = self.state.lock();
        let slot = *s.index.get(hash)?;
        Some((slot, s.segments[&slot.segment].file.clone()))
    }

    /// After a read of `slot`: whether what was read can be served. A chunk damaged on disk
    /// is dropped, so the reader fetches it again.
    fn checked(
        &self,
        hash: &Hash,
        slot: Slot,
        intact: bool,
        error: Option<std::io::Error>,
    ) -> bool {
        let mut s = self.state.lock();
        // Still indexed after the read, so not evicted during it: an eviction drops the
        // slot from the index before its pages are freed.
        if s.index.get(hash) != Some(&slot) {
            return false;
        }
        if intact {
            return true;
        }
        tracing::warn!(
            "cached chunk {hash} in {} is damaged ({}): fetching it again",
            self.segment_path(slot.segment).display(),
            error.map_or("CRC mismatch".into(), |e| e.to_string())
        );
        let mut freed = Vec::new();
        self.remove_locked(&mut s, hash, &mut freed);
        drop(s);
        release(freed);
        false
    }

    /// Writes every segment's dirty pages to the disk and waits for them.
    pub(super) fn sync(&self) -> FsResult<()> {
        let segments: Vec<(u64, Arc<File>)> = {
            let s = self.state.lock();
            s.segments
                .iter()
                .map(|(id, seg)| (*id, seg.file.clone()))
                .collect()
        };
        for (id, file) in segments {
            file.sync_data()
                .map_err(|e| io_error(&self.segment_path(id), e))?;
        }
        Ok(())
    }

    /// Drops chunks (evicted) from the index: at once, no read finds them any more. Their
    /// disk space goes back when the caller releases what this returns, after any lock of its
    /// own (a punch writes the range's dirty pages back first).
    pub(super) fn remove(&self, hashes: &[Hash]) -> Removed {
        let mut freed = Vec::new();
        let mut s = self.state.lock();
        for hash in hashes {
            self.remove_locked(&mut s, hash, &mut freed);
        }
        Removed(freed)
    }

    fn remove_locked(&self, s: &mut State, hash: &Hash, freed: &mut Vec<Freed>) {
        if let Some(slot) = s.index.remove(hash) {
            self.release_slot(s, slot, freed);
        }
    }

    /// A slot no index entry names any more: its pages go, and its segment if it was the
    /// last one there.
    fn release_slot(&self, s: &mut State, slot: Slot, freed: &mut Vec<Freed>) {
        let seg = s
            .segments
            .get_mut(&slot.segment)
            .expect("a segment with a slot");
        seg.live -= 1;
        freed.push(Freed::Pages(
            seg.file.clone(),
            slot.offset,
            u64::from(slot.len).next_multiple_of(PAGE),
        ));
        self.delete_if_empty(s, slot.segment, freed);
    }

    /// Deletes a segment that holds nothing and takes no more appends.
    fn delete_if_empty(&self, s: &mut State, id: u64, freed: &mut Vec<Freed>) {
        if s.current.contains(&Some(id)) || s.segments.get(&id).is_none_or(|seg| seg.live > 0) {
            return;
        }
        s.segments.remove(&id);
        freed.push(Freed::Segment(self.segment_path(id)));
    }

    fn segment_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:08}.seg"))
    }
}

/// Disk space to give back, done after the lock is released: a punch writes the range's
/// dirty pages back first, and nothing waits behind that.
enum Freed {
    Pages(Arc<File>, u64, u64),
    /// Readers that hold the file still read it; their check of the index after the read
    /// tells them the chunk is gone.
    Segment(PathBuf),
}

/// Chunks [`ChunkFiles::remove`] dropped from the index, whose space is not given back yet.
/// Their slots are never reused (segments only grow, and ids only increase), so the release
/// may come after the chunks are stored again.
#[must_use = "release() gives the disk space back"]
pub(super) struct Removed(Vec<Freed>);

impl Removed {
    pub(super) fn release(self) {
        release(self.0);
    }
}

fn release(freed: Vec<Freed>) {
    for f in freed {
        match f {
            Freed::Pages(file, offset, len) => punch_hole(&file, offset, len),
            Freed::Segment(path) => {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!("removing {}: {e}", path.display());
                }
            }
        }
    }
}

/// A chunk's disk footprint in the files: whole pages.
pub(super) fn footprint(stored_len: usize) -> usize {
    stored_len.saturating_sub(1).next_multiple_of(PAGE as usize)
}

/// This thread's lane.
fn lane() -> usize {
    use std::hash::{BuildHasher, RandomState};
    thread_local!(static LANE: usize = RandomState::new().hash_one(std::thread::current().id()) as usize % LANES);
    LANE.with(|l| *l)
}

/// Frees `len` bytes (whole pages) at `offset`.
pub(super) fn punch_hole(file: &File, offset: u64, len: u64) {
    let punched = fallocate(
        file,
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        offset as libc::off_t,
        len as libc::off_t,
    );
    if let Err(e) = punched {
        // Not every filesystem punches holes: the space then comes back with the segment.
        tracing::debug!("punching a hole: {e}");
    }
}

pub(super) fn io_error(path: &Path, e: std::io::Error) -> FsError {
    FsError::Storage(format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(i: u8) -> Hash {
        Hash::of(&[i])
    }

    fn only_segment(dir: &Path) -> PathBuf {
        let mut segments = std::fs::read_dir(dir).unwrap();
        let seg = segments.next().unwrap().unwrap().path();
        assert!(segments.next().is_none(), "one segment");
        seg
    }

    #[test]
    fn chunks_read_back_and_evicted_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        let files = ChunkFiles::new(dir.path()).unwrap();
        let big = vec![7u8; 40 << 20];
        files.put(&hash(1), &big).unwrap();
        files.put(&hash(2), &big).unwrap(); // past SEGMENT_BYTES: a second segment
        files.put(&hash(3), b"small").unwrap();
        assert_eq!(files.get(&hash(1)).unwrap(), big);
        assert_eq!(files.get(&hash(3)).unwrap(), b"small");
        assert!(files.get(&hash(4)).is_none());
        let segments = || std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(segments(), 2);
        files.remove(&[hash(1)]).release();
        assert!(!files.contains(&hash(1)));
        assert_eq!(
            segments(),
            1,
            "the first segment emptied and closed: deleted"
        );
        files.remove(&[hash(2)]).release();
        assert_eq!(segments(), 1, "the second segment still holds a chunk");
        assert_eq!(files.get(&hash(3)).unwrap(), b"small");
    }

    #[test]
    fn a_removed_chunk_gives_back_all_its_pages() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let files = ChunkFiles::new(dir.path()).unwrap();
        // Small chunks: each starts on a page of its own, so none shares a page.
        for i in 0..8 {
            files.put(&hash(i), &[i; 1000]).unwrap();
        }
        let seg = only_segment(dir.path());
        let allocated = || std::fs::metadata(&seg).unwrap().blocks() * 512;
        std::fs::File::open(&seg).unwrap().sync_all().unwrap();
        assert_eq!(allocated(), 8 * PAGE);
        files
            .remove(&(0..7).map(hash).collect::<Vec<_>>())
            .release();
        assert_eq!(allocated(), PAGE, "seven of eight chunks' pages freed");
        assert_eq!(files.get(&hash(7)).unwrap(), vec![7u8; 1000]);
        assert_eq!(footprint(1001), PAGE as usize);
    }

    #[test]
    fn a_raw_chunk_reads_straight_into_a_buffer_of_its_length_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let files = ChunkFiles::new(dir.path()).unwrap();
        let stored = |codec: u8, fill: u8| [&[codec][..], &[fill; 8192][..]].concat();
        files.put(&hash(1), &stored(CHUNK_RAW, 1)).unwrap();
        files.put(&hash(2), &stored(CHUNK_RAW + 1, 2)).unwrap();
        let mut dst = vec![0u8; 8192];
        assert!(files.read_raw_into(&hash(1), &mut dst));
        assert_eq!(dst, vec![1u8; 8192]);
        assert!(
            !files.read_raw_into(&hash(1), &mut dst[..4096]),
            "another length"
        );
        assert!(!files.read_raw_into(&hash(2), &mut dst), "not stored raw");
        assert!(!files.read_raw_into(&hash(3), &mut dst), "not here");
        assert!(files.contains(&hash(1)) && files.contains(&hash(2)));
        // Damaged on disk: refused and dropped, so the next read fetches it.
        let f = File::options()
            .write(true)
            .open(only_segment(dir.path()))
            .unwrap();
        f.write_all_at(&[9], 100).unwrap();
        assert!(!files.read_raw_into(&hash(1), &mut dst));
        assert!(!files.contains(&hash(1)));
    }

    #[test]
    fn a_damaged_chunk_is_dropped_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let files = ChunkFiles::new(dir.path()).unwrap();
        files.put(&hash(1), &[1u8; 8192]).unwrap();
        let seg = only_segment(dir.path());
        let f = File::options().write(true).open(seg).unwrap();
        f.write_all_at(&[2], 100).unwrap();
        assert!(files.get(&hash(1)).is_none());
        assert!(
            !files.contains(&hash(1)),
            "dropped, so the next read fetches it"
        );
    }
}
