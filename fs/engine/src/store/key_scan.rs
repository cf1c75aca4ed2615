//! The keys of a column family, read without their values.
//!
//! RocksDB's iterators load a value kept in a blob file as they step onto its key, so a scan
//! of `chunks` through them reads every chunk's bytes: one collection read the whole store.
//! With `allow_unprepared_value` an iterator loads a blob only when asked to, which this one
//! never is; rust-rocksdb does not expose that option, so this iterator comes from RocksDB's C
//! API (the same library rust-rocksdb links).

use std::ffi::{c_char, CStr};
use std::marker::PhantomData;

use librocksdb_sys as ffi;
use rocksdb::{AsColumnFamilyRef, AsRawPtr, ColumnFamily, DB};

use crate::error::{FsError, FsResult};

/// Steps through a column family's keys in order, from the first.
pub(crate) struct KeyScan<'a> {
    iter: *mut ffi::rocksdb_iterator_t,
    opts: *mut ffi::rocksdb_readoptions_t,
    // Borrows the database and the column family the iterator reads.
    _db: PhantomData<(&'a DB, &'a ColumnFamily)>,
}

#[allow(unsafe_code)]
impl<'a> KeyScan<'a> {
    /// `cf` must be a column family of `db` (the store has one database).
    pub(crate) fn new(db: &'a DB, cf: &'a ColumnFamily) -> KeyScan<'a> {
        // SAFETY: `db` and `cf` (one of its column families) outlive the iterator (the
        // lifetime says so); the options are freed after it, in `drop`.
        unsafe {
            let opts = ffi::rocksdb_readoptions_create();
            ffi::rocksdb_readoptions_set_allow_unprepared_value(opts, 1);
            // A collection's scan should not evict what reads keep in the block cache.
            ffi::rocksdb_readoptions_set_fill_cache(opts, 0);
            let iter = ffi::rocksdb_create_iterator_cf(db.as_raw_ptr(), opts, cf.inner());
            ffi::rocksdb_iter_seek_to_first(iter);
            KeyScan {
                iter,
                opts,
                _db: PhantomData,
            }
        }
    }

    pub(crate) fn valid(&self) -> bool {
        // SAFETY: `iter` is live until `drop`.
        unsafe { ffi::rocksdb_iter_valid(self.iter) != 0 }
    }

    /// The current key; `None` past the end.
    pub(crate) fn key(&self) -> Option<&[u8]> {
        if !self.valid() {
            return None;
        }
        let mut len = 0;
        // SAFETY: the iterator is valid, so it returns a pointer to `len` bytes that stay
        // until it moves, which needs `&mut self`.
        unsafe {
            let p = ffi::rocksdb_iter_key(self.iter, &mut len);
            if len == 0 {
                return Some(&[]);
            }
            Some(std::slice::from_raw_parts(p.cast::<u8>(), len))
        }
    }

    pub(crate) fn next(&mut self) {
        if self.valid() {
            // SAFETY: `iter` is live and valid.
            unsafe { ffi::rocksdb_iter_next(self.iter) }
        }
    }

    /// The error that ended the scan early, if one did.
    pub(crate) fn status(&self) -> FsResult<()> {
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: `iter` is live; RocksDB allocates the message, freed here.
        unsafe {
            ffi::rocksdb_iter_get_error(self.iter, &mut err);
            if err.is_null() {
                return Ok(());
            }
            let msg = CStr::from_ptr(err).to_string_lossy().into_owned();
            ffi::rocksdb_free(err.cast());
            Err(FsError::Storage(format!("scanning keys: {msg}")))
        }
    }
}

#[allow(unsafe_code)]
impl Drop for KeyScan<'_> {
    fn drop(&mut self) {
        // SAFETY: created in `new`, freed once, the iterator before its options.
        unsafe {
            ffi::rocksdb_iter_destroy(self.iter);
            ffi::rocksdb_readoptions_destroy(self.opts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rocksdb::{ColumnFamilyDescriptor, Options};

    /// The scan never opens a blob file: with every blob file gone it still lists every key,
    /// where RocksDB's own iterator fails on the first value.
    #[test]
    fn keys_are_scanned_without_reading_blob_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let mut blobs = Options::default();
        blobs.set_enable_blob_files(true);
        blobs.set_min_blob_size(16);
        let db = DB::open_cf_descriptors(
            &opts,
            dir.path(),
            vec![ColumnFamilyDescriptor::new("blobs", blobs)],
        )
        .unwrap();
        let cf = db.cf_handle("blobs").unwrap();
        for i in 0..100u32 {
            db.put_cf(cf, i.to_be_bytes(), vec![i as u8; 4096]).unwrap();
        }
        db.flush_cf(cf).unwrap();
        let mut removed = 0;
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "blob") {
                std::fs::remove_file(path).unwrap();
                removed += 1;
            }
        }
        assert!(removed > 0, "the values went to no blob file");

        let mut scan = KeyScan::new(&db, cf);
        let mut keys = Vec::new();
        while let Some(k) = scan.key() {
            keys.push(u32::from_be_bytes(k.try_into().unwrap()));
            scan.next();
        }
        scan.status().unwrap();
        assert_eq!(keys, (0..100).collect::<Vec<_>>());

        let mut values = db.raw_iterator_cf(cf);
        values.seek_to_first();
        assert!(
            values.status().is_err(),
            "a value was read with its blob file gone"
        );
    }
}
