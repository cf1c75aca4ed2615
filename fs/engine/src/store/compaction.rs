//! Compactions: whole or over the key ranges a collection deleted from, with blob GC when the
//! disk has room for it, so deleted data goes back to the disk.

use rocksdb::FlushOptions;
use std::sync::atomic::Ordering;

use crate::error::FsResult;

use super::{Store, CF_CHUNKS, CF_META, CF_NODES};

/// The first and last key a sweep deleted in a column family.
pub type DeletedRange = (&'static str, Vec<u8>, Vec<u8>);

/// A column family and a key range in it (`None`: open-ended).
pub(super) type KeyRange<'a> = (&'a str, Option<&'a [u8]>, Option<&'a [u8]>);

impl Store {
    /// Flushes memtables and compacts every column family fully, bottommost files included
    /// (tests and benchmarks use it to measure settled sizes).
    pub fn compact(&self) -> FsResult<()> {
        let all = [CF_CHUNKS, CF_NODES, CF_META].map(|cf| (cf, None, None));
        self.compact_with(&all, true)
    }

    /// Compacts only the key ranges a collection deleted from, without forcing a rewrite of
    /// bottommost files nothing reached: the tombstones meet the values they delete, and blob
    /// files no key refers to any more are dropped. Cheaper than [`Store::compact`] on a
    /// busy store, which is why the collector uses it.
    pub fn compact_ranges(&self, ranges: &[DeletedRange]) -> FsResult<()> {
        let ranges: Vec<_> = ranges
            .iter()
            .map(|(cf, first, last)| (*cf, Some(first.as_slice()), Some(last.as_slice())))
            .collect();
        self.compact_with(&ranges, false)
    }

    /// Flushes, then compacts each range, relocating the live chunks of old blob files (blob
    /// GC) when the disk has room for it. A compaction that ran without relocation and freed
    /// enough for it is followed by one forced compaction of the chunks that relocates, so
    /// partly dead blob files give their space back too.
    pub(super) fn compact_with(
        &self,
        ranges: &[KeyRange<'_>],
        force_bottommost: bool,
    ) -> FsResult<()> {
        let mut fo = FlushOptions::default();
        fo.set_wait(true);
        for name in [CF_CHUNKS, CF_NODES, CF_META] {
            let db = self.db()?;
            self.wrote(db.flush_cf_opt(db.cf(name), &fo))?;
        }
        let mut force = rocksdb::CompactOptions::default();
        force.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        let plain = rocksdb::CompactOptions::default();
        let co = if force_bottommost { &force } else { &plain };
        let relocate = self.room_for_blob_gc()?;
        if !relocate {
            tracing::info!("blob GC skipped: low on space");
        }
        let compacted = (|| {
            self.set_blob_gc(relocate)?;
            for (cf, from, to) in ranges {
                let db = self.db()?;
                db.compact_range_cf_opt(db.cf(cf), *from, *to, co);
            }
            if !relocate && self.room_for_blob_gc()? {
                tracing::info!("blob GC: room again, relocating");
                self.set_blob_gc(true)?;
                let db = self.db()?;
                db.compact_range_cf_opt(db.cf(CF_CHUNKS), None::<&[u8]>, None::<&[u8]>, &force);
            }
            Ok(())
        })();
        self.set_blob_gc(false)?;
        compacted
    }

    /// Blob GC rewrites the live chunks of the oldest half of the blob files before it frees
    /// them, so it may need as much free space as half the blob files hold: more than the
    /// reserve on a nearly full disk, where RocksDB meeting ENOSPC would stop writing. Without
    /// it, blob files are still dropped once all their chunks are dead.
    pub(super) fn room_for_blob_gc(&self) -> FsResult<bool> {
        let blobs = {
            let db = self.db()?;
            db.property_int_value_cf(db.cf(CF_CHUNKS), "rocksdb.total-blob-file-size")?
                .unwrap_or(0)
        };
        Ok(self.disk_space()?.avail_bytes() >= self.reserve_bytes + blobs / 2)
    }

    pub(super) fn set_blob_gc(&self, on: bool) -> FsResult<()> {
        if self.blob_gc.swap(on, Ordering::SeqCst) != on {
            let value = if on { "true" } else { "false" };
            let db = self.db()?;
            db.set_options_cf(
                db.cf(CF_CHUNKS),
                &[("enable_blob_garbage_collection", value)],
            )?;
        }
        Ok(())
    }
}
