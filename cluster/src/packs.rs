//! Packs: the objects of a commit (chunks and nodes), concatenated into S3 objects of up to
//! [`PACK_BYTES`], so an upload or a cold read costs one request per few MiB instead of one
//! per 64 KiB chunk (Garage here: ~150 PUTs/s of 64 KiB, 9 MiB/s; 95 MiB/s in 4 MiB objects).
//!
//! A pack is `packs/<blake3 hex of its index>` in the bucket, with no header: its index (which
//! object is where, by hash) is one etcd key, `P p/<ms>-<pack>`, written after the pack is uploaded and
//! before any root refers to it, fenced like the commit (see `gc.rs`). Each host keeps every
//! index in memory ([`Index`]): ~70 bytes per object, and 41 in etcd.

use std::collections::HashMap;
use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use chaserfs_engine::{FsError, FsResult, Hash, ObjectKind};
use parking_lot::Mutex;

use crate::meta::packs::PackScan;

/// A pack is closed at this size, or at [`PACK_OBJECTS`] objects (so its index stays a
/// small etcd value: 2048 x 41 bytes).
pub const PACK_BYTES: usize = 8 << 20;
pub const PACK_OBJECTS: usize = 2048;
/// A read of several objects of one pack fetches the gaps between them up to this size
/// rather than making another request.
const READ_GAP: u32 = 256 << 10;
const READ_MAX: u32 = 16 << 20;
/// A host catching up on new pack indexes reads keys written from this long before its
/// last scan on: a write takes at most the request timeout to land, clocks differ a little.
/// A later one is still found, by a full scan when an object is missing.
const CATCH_UP_MARGIN: Duration = Duration::from_secs(300);

/// One object in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: ObjectKind,
    pub hash: Hash,
    pub offset: u32,
    pub len: u32,
}

const ENTRY_BYTES: usize = 1 + 32 + 4 + 4;

/// An index: per object, kind (0 chunk, 1 node), hash, offset and length (little endian).
pub fn encode_entries(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_BYTES);
    for e in entries {
        out.push(match e.kind {
            ObjectKind::Chunk => 0,
            ObjectKind::Node => 1,
        });
        out.extend_from_slice(&e.hash.0);
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.len.to_le_bytes());
    }
    out
}

pub fn decode_entries(bytes: &[u8]) -> FsResult<Vec<Entry>> {
    if !bytes.len().is_multiple_of(ENTRY_BYTES) {
        return Err(FsError::corrupt("a pack index in etcd has a partial entry"));
    }
    bytes
        .chunks_exact(ENTRY_BYTES)
        .map(|b| {
            let kind = match b[0] {
                0 => ObjectKind::Chunk,
                1 => ObjectKind::Node,
                k => return Err(FsError::corrupt(format!("object kind {k} in a pack index"))),
            };
            Ok(Entry {
                kind,
                hash: Hash::from_slice(&b[1..33]).unwrap(),
                offset: u32::from_le_bytes(b[33..37].try_into().unwrap()),
                len: u32::from_le_bytes(b[37..41].try_into().unwrap()),
            })
        })
        .collect()
}

/// A pack ready to upload.
pub struct Pack {
    /// The BLAKE3 hash of its index ([`encode_entries`]). The index names every object by
    /// the hash of its content, and a read verifies each object it fetches against that hash,
    /// so the name stands for the pack's content without hashing its bytes a second time
    /// (6% of a host's CPU during an upload).
    pub name: Hash,
    /// Its objects' bytes: sent one after another, never copied into one buffer.
    pub parts: Vec<Bytes>,
    pub len: usize,
    pub entries: Vec<Entry>,
}

/// An object to pack: kind, hash, stored bytes.
pub type Object = (ObjectKind, Hash, Vec<u8>);

/// Objects, in order, into packs of at most [`PACK_BYTES`] (or one larger object) and
/// [`PACK_OBJECTS`], each made when asked for, so an upload of any size holds one pack being
/// made besides those in flight. Ends at the first error of `objects`.
pub struct Packer<I> {
    objects: I,
    /// The object that did not fit in the pack made last.
    next: Option<Object>,
}

impl<I: Iterator<Item = FsResult<Object>>> Packer<I> {
    pub fn new(objects: I) -> Self {
        Packer {
            objects,
            next: None,
        }
    }
}

impl<I: Iterator<Item = FsResult<Object>>> Iterator for Packer<I> {
    type Item = FsResult<Pack>;

    fn next(&mut self) -> Option<FsResult<Pack>> {
        let mut parts = Vec::new();
        let mut len = 0;
        let mut entries = Vec::new();
        loop {
            let (kind, hash, object) = match self.next.take() {
                Some(o) => o,
                None => match self.objects.next() {
                    Some(Ok(o)) => o,
                    Some(Err(e)) => return Some(Err(e)),
                    None => break,
                },
            };
            if !entries.is_empty()
                && (len + object.len() > PACK_BYTES || entries.len() == PACK_OBJECTS)
            {
                self.next = Some((kind, hash, object));
                break;
            }
            entries.push(Entry {
                kind,
                hash,
                offset: len as u32,
                len: object.len() as u32,
            });
            len += object.len();
            parts.push(Bytes::from(object));
        }
        if entries.is_empty() {
            return None;
        }
        Some(Ok(Pack {
            name: Hash::of(&encode_entries(&entries)),
            parts,
            len,
            entries,
        }))
    }
}

/// Where an object is.
#[derive(Clone, Copy, Debug)]
pub struct Location {
    pub pack: Hash,
    pub offset: u32,
    pub len: u32,
}

/// One ranged GET: a span of a pack and the objects in it (index in the caller's list,
/// offset in the span, length).
#[derive(Debug)]
pub struct Read {
    pub pack: Hash,
    pub range: Range<u64>,
    pub parts: Vec<(usize, usize, usize)>,
}

/// Cuts a read's body, as it arrives in pieces of any size, into its parts' bytes: a part
/// that lies within one piece is a slice of it (no copy); one that spans pieces is copied
/// together. Collecting the whole body first would copy every byte once more, into a fresh
/// buffer the size of the read.
pub struct PartCutter {
    /// Per part, its offset in the body and length, by offset (as [`plan_reads`] makes them).
    parts: Vec<(usize, usize)>,
    done: Vec<Option<Bytes>>,
    partial: Vec<Option<BytesMut>>,
    /// The bytes the read asked for: a buffer is never sized past them, whatever the index
    /// says.
    asked: usize,
    /// Body bytes before the next piece.
    pos: usize,
    /// The parts before this one are done.
    first: usize,
}

impl PartCutter {
    pub fn new(read: &Read) -> PartCutter {
        let parts: Vec<(usize, usize)> = read.parts.iter().map(|&(_, at, len)| (at, len)).collect();
        let done = parts
            .iter()
            .map(|&(_, len)| (len == 0).then(Bytes::new))
            .collect();
        PartCutter {
            partial: vec![None; parts.len()],
            asked: (read.range.end - read.range.start) as usize,
            parts,
            done,
            pos: 0,
            first: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.parts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The body's next piece.
    pub fn push(&mut self, piece: &Bytes) {
        let (start, end) = (self.pos, self.pos + piece.len());
        for p in self.first..self.parts.len() {
            let (at, len) = self.parts[p];
            if at >= end {
                break;
            }
            let part_end = at + len;
            if part_end <= start || self.done[p].is_some() {
                continue;
            }
            if at >= start && part_end <= end {
                self.done[p] = Some(piece.slice(at - start..part_end - start));
                continue;
            }
            let room = len.min(self.asked.saturating_sub(at));
            let buf = self.partial[p].get_or_insert_with(|| BytesMut::with_capacity(room));
            buf.extend_from_slice(&piece[at.max(start) - start..part_end.min(end) - start]);
            if part_end <= end {
                self.done[p] = self.partial[p].take().map(BytesMut::freeze);
            }
        }
        self.pos = end;
        while self.done.get(self.first).is_some_and(Option::is_some) {
            self.first += 1;
        }
    }

    /// Each part's bytes, in the read's order; `None` if the body ended short of one.
    pub fn finish(self) -> Option<Vec<Bytes>> {
        self.done.into_iter().collect()
    }
}

/// Reads for objects at `locations` (by position in the caller's list): objects of one
/// pack close to each other share a read.
pub fn plan_reads(locations: &[(usize, Location)]) -> Vec<Read> {
    let mut sorted: Vec<&(usize, Location)> = locations.iter().collect();
    sorted.sort_by_key(|(_, l)| (l.pack, l.offset));
    let mut reads: Vec<Read> = Vec::new();
    for (i, l) in sorted {
        let (start, end) = (u64::from(l.offset), u64::from(l.offset) + u64::from(l.len));
        if let Some(r) = reads.last_mut() {
            if r.pack == l.pack
                && start <= r.range.end + u64::from(READ_GAP)
                && end.max(r.range.end) - r.range.start <= u64::from(READ_MAX)
            {
                r.range.end = r.range.end.max(end);
                r.parts
                    .push((*i, (start - r.range.start) as usize, l.len as usize));
                continue;
            }
        }
        reads.push(Read {
            pack: l.pack,
            range: start..end,
            parts: vec![(*i, 0, l.len as usize)],
        });
    }
    reads
}

/// `hashes` grouped by the pack of each (`packs`, alike in length; `None` is a group too), in
/// the order of each group's first hash, at most `max` in a group.
pub fn group_by_pack(hashes: &[Hash], packs: &[Option<Hash>], max: usize) -> Vec<Vec<Hash>> {
    let mut groups: indexmap::IndexMap<Option<Hash>, Vec<Hash>> = Default::default();
    for (h, pack) in hashes.iter().zip(packs) {
        groups.entry(*pack).or_default().push(*h);
    }
    groups
        .into_values()
        .flat_map(|g| {
            g.chunks(max.max(1))
                .map(<[Hash]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every pack index this host has read: which pack holds each object.
#[derive(Default)]
pub struct Index {
    state: Mutex<IndexState>,
    /// Held while a scan runs, so concurrent misses wait for one scan instead of each
    /// making their own.
    scanning: Mutex<()>,
}

#[derive(Default)]
struct IndexState {
    packs: Vec<Hash>,
    objects: HashMap<(ObjectKind, Hash), (u32, u32, u32)>,
    /// Every pack index written up to this etcd revision is here (0: never scanned).
    revision: i64,
    /// When that scan started (ms since the epoch), for the next catch-up's key range.
    scanned_ms: u64,
    /// `P gc/count`'s revision at the last full scan, if no sweep ran then: no pack was
    /// deleted since as long as the count has not moved. `None`: a full scan is due.
    gc_count: Option<i64>,
}

/// How much of the pack indexes a refresh reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refresh {
    /// Those written since the last scan.
    CatchUp,
    /// All of them, forgetting packs deleted since.
    Full,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Index {
    pub fn locate(&self, kind: ObjectKind, hash: &Hash) -> Option<Location> {
        let s = self.state.lock();
        s.objects
            .get(&(kind, *hash))
            .map(|&(pack, offset, len)| Location {
                pack: s.packs[pack as usize],
                offset,
                len,
            })
    }

    /// The pack holding each object, `None` where none this host indexed does.
    pub fn packs_of(&self, kind: ObjectKind, hashes: &[Hash]) -> Vec<Option<Hash>> {
        let s = self.state.lock();
        hashes
            .iter()
            .map(|h| {
                s.objects
                    .get(&(kind, *h))
                    .map(|&(pack, ..)| s.packs[pack as usize])
            })
            .collect()
    }

    pub fn contains(&self, kind: ObjectKind, hash: &Hash) -> bool {
        self.state.lock().objects.contains_key(&(kind, *hash))
    }

    pub fn len(&self) -> usize {
        self.state.lock().objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a commit carrying collection token `token` may trust this index to name no
    /// deleted pack (else it must refresh in full first).
    pub fn current_for(&self, token: i64) -> bool {
        self.state.lock().gc_count == Some(token)
    }

    /// Reads pack indexes from etcd with `scan` (given what to read since: `None` for all).
    pub fn refresh(
        &self,
        how: Refresh,
        scan: impl FnOnce(Option<(i64, u64)>) -> FsResult<PackScan>,
    ) -> FsResult<()> {
        let _one = self.scanning.lock();
        let since = {
            let s = self.state.lock();
            match how {
                Refresh::CatchUp if s.revision > 0 => Some((
                    s.revision,
                    s.scanned_ms
                        .saturating_sub(CATCH_UP_MARGIN.as_millis() as u64),
                )),
                _ => None,
            }
        };
        let started_ms = now_ms();
        let scan = scan(since)?;
        let mut decoded = Vec::with_capacity(scan.packs.len());
        for (_, pack, value) in &scan.packs {
            decoded.push((*pack, decode_entries(value)?));
        }
        let mut s = self.state.lock();
        if since.is_none() {
            s.packs.clear();
            s.objects.clear();
            s.gc_count = (!scan.sweeping).then_some(scan.gc_count);
        }
        for (pack, entries) in decoded {
            s.add(pack, &entries);
        }
        s.revision = scan.revision;
        s.scanned_ms = started_ms;
        Ok(())
    }

    /// Packs this host wrote (their indexes are in etcd).
    pub fn add(&self, pack: Hash, entries: &[Entry]) {
        self.state.lock().add(pack, entries);
    }

    /// Forgets what the last full scan saw of collections: the next commit scans in full
    /// (this host just deleted packs).
    pub fn invalidate(&self) {
        self.state.lock().gc_count = None;
    }
}

impl IndexState {
    fn add(&mut self, pack: Hash, entries: &[Entry]) {
        let id = self.packs.len() as u32;
        self.packs.push(pack);
        for e in entries {
            self.objects.insert((e.kind, e.hash), (id, e.offset, e.len));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pack of objects in memory.
    fn build(objects: impl IntoIterator<Item = Object>) -> Vec<Pack> {
        Packer::new(objects.into_iter().map(Ok))
            .collect::<FsResult<_>>()
            .unwrap()
    }

    #[test]
    fn interleaved_packs_group_whole_in_first_wanted_order() {
        let h = |i: u8| Hash::of(&[i]);
        let (p, q) = (Some(h(100)), Some(h(101)));
        let hashes: Vec<Hash> = (0..7).map(h).collect();
        let packs = [p, q, p, None, q, p, None];
        assert_eq!(
            group_by_pack(&hashes, &packs, 8),
            vec![vec![h(0), h(2), h(5)], vec![h(1), h(4)], vec![h(3), h(6)]]
        );
        // At most `max` in a group; nothing lost.
        assert_eq!(
            group_by_pack(&hashes, &packs, 2),
            vec![
                vec![h(0), h(2)],
                vec![h(5)],
                vec![h(1), h(4)],
                vec![h(3), h(6)]
            ]
        );
        assert!(group_by_pack(&[], &[], 0).is_empty());
    }

    fn object(i: u8, len: usize) -> (ObjectKind, Hash, Vec<u8>) {
        let bytes = vec![i; len];
        (ObjectKind::Chunk, Hash::of(&bytes), bytes)
    }

    #[test]
    fn packs_close_at_their_size_and_count_and_index_every_byte() {
        let objects: Vec<_> = (0..200).map(|i| object(i as u8, 65536)).collect();
        let packs = build(objects.clone());
        assert_eq!(packs.len(), 2, "200 x 64 KiB in 8 MiB packs");
        assert_eq!(packs[0].entries.len(), 128);
        let mut seen = 0;
        for p in &packs {
            let bytes = p.parts.concat();
            assert_eq!(p.len, bytes.len());
            assert_eq!(p.name, Hash::of(&encode_entries(&p.entries)));
            let decoded = decode_entries(&encode_entries(&p.entries)).unwrap();
            assert_eq!(decoded, p.entries);
            for e in &p.entries {
                let (_, hash, bytes) = &objects[seen];
                assert_eq!(e.hash, *hash);
                let at = e.offset as usize;
                assert_eq!(&p.parts.concat()[at..at + e.len as usize], &bytes[..]);
                seen += 1;
            }
        }
        assert_eq!(seen, 200);
        let small = build((0..5000).map(|i| object(i as u8, 10)));
        assert_eq!(
            small.iter().map(|p| p.entries.len()).collect::<Vec<_>>(),
            [2048, 2048, 904]
        );
        let big = build([object(1, PACK_BYTES + 1), object(2, 1)]);
        assert_eq!(
            big.len(),
            2,
            "an object larger than a pack gets one of its own"
        );
        assert!(decode_entries(&[0; 40]).is_err());
    }

    #[test]
    fn a_body_in_pieces_of_any_size_cuts_into_its_parts() {
        let body: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        // Parts by offset, with a gap, a zero-length part and two alike.
        let parts = [
            (0, 100),
            (100, 3000),
            (3500, 10),
            (3510, 0),
            (3510, 6490),
            (3510, 6490),
        ];
        let read = Read {
            pack: Hash::of(b"p"),
            range: 0..body.len() as u64,
            parts: parts
                .iter()
                .enumerate()
                .map(|(i, &(at, len))| (i, at, len))
                .collect(),
        };
        for piece in [1, 7, 100, 3000, 4096, 10_000] {
            let mut cut = PartCutter::new(&read);
            for p in body.chunks(piece) {
                cut.push(&Bytes::copy_from_slice(p));
            }
            let got = cut.finish().expect("every part");
            for (&(at, len), bytes) in parts.iter().zip(&got) {
                assert_eq!(&bytes[..], &body[at..at + len], "pieces of {piece}");
            }
        }
        let mut short = PartCutter::new(&read);
        short.push(&Bytes::copy_from_slice(&body[..9_999]));
        assert!(short.finish().is_none(), "a body short of its last part");
    }

    #[test]
    fn reads_of_nearby_objects_share_a_request() {
        let (a, b) = (Hash::of(b"a"), Hash::of(b"b"));
        let at = |pack, offset, len| Location { pack, offset, len };
        let reads = plan_reads(&[
            (0, at(a, 100_000, 10)),
            (1, at(a, 0, 100)),
            (2, at(b, 0, 5)),
            (3, at(a, 100 + READ_GAP + 1_000_000, 7)),
            (4, at(a, 50, 100)),
        ]);
        let spans: Vec<_> = reads.iter().map(|r| (r.pack, r.range.clone())).collect();
        assert_eq!(reads.len(), 3, "{spans:?}");
        let first = reads
            .iter()
            .find(|r| r.range.start == 0 && r.parts.len() == 3);
        let first = first.expect("objects 1, 4 and 0 in one read");
        assert_eq!(first.range, 0..100_010);
        assert_eq!(first.parts, [(1, 0, 100), (4, 50, 100), (0, 100_000, 10)]);
    }
}
