//! Workspaces as tar archives: `export` writes one committed state as a tar stream, `import`
//! builds a state from one. Both stream: memory holds one piece of one file at a time (and,
//! for import, the overlay between periodic commits), whatever the archive's size.
//!
//! What a round trip keeps: the tree, file contents, modes (setuid, setgid and sticky bits
//! included), owners, modification times to the nanosecond (PAX `mtime`), symlinks, hard
//! links (an inode's second and later names are tar link entries), device numbers, FIFOs,
//! and extended attributes (PAX `SCHILY.xattr.NAME`, as GNU tar and bsdtar write them).
//! Sockets are left out, as tar does.

use std::io::Read;

use crate::error::FsError;

mod export;
mod import;
mod sparse;

pub use export::export;
pub use import::import;

/// A file's data moves in pieces of this size.
const PIECE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive is malformed or holds something a workspace cannot (`..` in a path, ...).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Fs(#[from] FsError),
    /// Writing the stream failed (the reader went away).
    #[error("writing the archive: {0}")]
    Io(std::io::Error),
}

pub type ArchiveResult<T> = Result<T, ArchiveError>;

fn invalid(what: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Invalid(what.to_string())
}

/// What an export or import went through.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveReport {
    pub entries: u64,
    pub bytes: u64,
    /// Entries of kinds a workspace does not keep (sockets on export; on import, tar
    /// entry types with no file behind them, such as PAX global headers).
    pub skipped: u64,
    /// Import: setuid/setgid bits and privileged extended attributes dropped by policy.
    pub privileges_dropped: u64,
}

/// How an import treats what an archive claims. An archive is a tenant's: by default it
/// confers no privilege (see SECURITY.md).
#[derive(Clone, Copy, Debug)]
pub struct ImportOptions {
    /// Commit after this many bytes, so the overlay stays bounded.
    pub commit_every: u64,
    /// Refuse the archive once its files hold more than this many bytes (holes of sparse
    /// files included: they cost the reading).
    pub max_bytes: u64,
    /// Keep setuid and setgid bits (cleared otherwise).
    pub setid: bool,
    /// Import device nodes (the archive is refused otherwise).
    pub devices: bool,
    /// Keep `security.*` and `trusted.*` extended attributes (dropped otherwise).
    pub privileged_xattrs: bool,
}

/// Most bytes of headers one entry may have: its own, GNU long names and PAX records (a
/// workspace's paths may be longer than Linux's 4 KiB: this holds a path 16,000 names of
/// 255 bytes deep; extended attribute values are at most 64 KiB). The tar reader holds
/// these in memory, so more is refused before it is read.
pub const MAX_HEADER_BYTES: u64 = 4 << 20;

/// Reads what is left of an entry's data as data (the tar reader would skip it as headers).
fn drain(entry: &mut impl Read, in_data: &std::cell::Cell<bool>) -> ArchiveResult<()> {
    in_data.set(true);
    let drained = std::io::copy(entry, &mut std::io::sink());
    in_data.set(false);
    drained
        .map(|_| ())
        .map_err(|e| invalid(format!("reading the archive: {e}")))
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}
