//! The on-disk format's version and the constants that shape it. Each store records the format
//! it was written in (a data dir in its `meta` column family, a cluster in its bucket); a build
//! opens only stores of its own format, so a data dir or bucket written with another chunk
//! size, node encoding or chunk codec is refused with both formats named instead of misread.

pub mod codec;
pub mod hash;
pub mod journal;
pub mod keys;
pub mod node;
pub mod records;
pub mod roots;

use serde::{Deserialize, Serialize};

use crate::error::{FsError, FsResult};

/// Bytes of file data per chunk: a file's chunk `i` holds bytes `[i * CHUNK_SIZE, (i + 1) *
/// CHUNK_SIZE)`.
pub const CHUNK_SIZE: usize = 64 * 1024;

/// What a store records of its format. Kept as JSON so that any later build can read it,
/// whatever else it changes, and name what it found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Format {
    /// Raised by any change to how stored bytes are read: keys, records, the tree.
    pub version: u32,
    pub chunk_size: u32,
    /// How tree nodes and records are encoded (postcard, `tree.rs` and `records.rs`).
    pub node_encoding: u32,
    /// How chunk values are stored (a codec byte, then raw or lz4 bytes: `store.rs`).
    pub chunk_codec: u32,
}

impl Format {
    /// The format this build writes and reads. Stores written before formats were recorded
    /// hold version 1, and are stamped when first opened.
    ///
    /// Version 2 adds the fsync journal (`journal.rs`) to data dirs; a version 1 store is
    /// a version 2 store without one. Version 3 keeps the journal in a database of its own
    /// (`journal/` in the data dir), and moves a version 2 journal there when it opens one.
    /// Version 4 adds to a journal entry the chunks of the root its buffers start from
    /// (`JournalEntry::bases`), which an older build would drop. Version 5 keeps chunks in
    /// segment files (`segments/` in the data dir) and their locators as `chunks` values,
    /// which an older build would read as chunk bytes. Version 6 adds locators with a CRC
    /// per 4 KiB page, which a version 5 build would misread. This build opens versions 1 to
    /// 5 (it reads a version 3 entry, chunk values stored whole and locators with one CRC)
    /// and stamps them 6; older builds refuse the dir from then on.
    pub const CURRENT: Format = Format {
        version: 6,
        chunk_size: CHUNK_SIZE as u32,
        node_encoding: 1,
        chunk_codec: 1,
    };

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a format record encodes")
    }

    /// What a new cluster bucket records: a bucket holds no journal, so it is of version 1,
    /// which builds from before the journal read too.
    pub const BUCKET: Format = Format {
        version: 1,
        ..Format::CURRENT
    };

    /// The oldest version this build reads (and upgrades by stamping its own).
    const OLDEST_READ: u32 = 1;

    /// Checks a recorded format against this build's; `what` names the store in the error.
    /// `Ok(true)`: an older version this build reads, to be stamped with [`Format::CURRENT`].
    pub fn check(recorded: &[u8], what: &str) -> FsResult<bool> {
        let found: Format = serde_json::from_slice(recorded).map_err(|e| {
            FsError::Format(format!(
                "{what} has a format record this build cannot read ({e}): {}",
                String::from_utf8_lossy(&recorded[..recorded.len().min(200)])
            ))
        })?;
        let older = Format {
            version: Self::CURRENT.version,
            ..found
        } == Self::CURRENT
            && (Self::OLDEST_READ..Self::CURRENT.version).contains(&found.version);
        if older {
            return Ok(true);
        }
        if found != Self::CURRENT {
            return Err(FsError::Format(format!(
                "{what} was written in on-disk format {}; this build reads format {} only. \
                 Run the chaserfs release that wrote it",
                found.describe(),
                Self::CURRENT.describe()
            )));
        }
        Ok(false)
    }

    fn describe(&self) -> String {
        format!(
            "{} (chunk size {}, node encoding {}, chunk codec {})",
            self.version, self.chunk_size, self.node_encoding, self.chunk_codec
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_format_is_accepted_and_any_other_refused_naming_both() {
        assert!(!Format::check(&Format::CURRENT.encode(), "x").unwrap());
        let v1 = Format {
            version: 1,
            ..Format::CURRENT
        };
        assert!(
            Format::check(&v1.encode(), "x").unwrap(),
            "read, and restamped"
        );
        let newer = Format {
            version: Format::CURRENT.version + 1,
            ..Format::CURRENT
        };
        assert!(Format::check(&newer.encode(), "x").is_err());
        let other = Format {
            chunk_size: 128 * 1024,
            ..Format::CURRENT
        };
        let err = Format::check(&other.encode(), "data dir /d").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("data dir /d"), "{msg}");
        assert!(msg.contains("chunk size 131072"), "{msg}");
        assert!(msg.contains("chunk size 65536"), "{msg}");
        let err = Format::check(b"{\"version\":", "x").unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
    }
}
