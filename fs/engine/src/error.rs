//! One error type for every engine outcome, and the one place it becomes an errno.

use std::fmt;

/// What an engine operation can answer. Storage failures become `EIO` in [`FsError::errno`]
/// and nowhere else.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("file name too long")]
    NameTooLong,
    #[error("file too large")]
    FileTooBig,
    #[error("no such attribute")]
    NoAttr,
    #[error("result too large")]
    Range,
    #[error("operation not supported")]
    NotSupported,
    #[error("operation not permitted")]
    NotPermitted,
    #[error("too many links")]
    TooManyLinks,
    #[error("no data at or after the offset")]
    NoSuchOffset,
    #[error("busy: {0}")]
    Busy(String),
    /// Cluster mode: records changed on another host since this host's view; decide again.
    #[error("records changed on another host; retry")]
    Stale,
    #[error("no space left on the data dir's disk")]
    NoSpace,
    #[error("the workspace's quota is exceeded")]
    QuotaExceeded,
    #[error("corrupt store: {0}")]
    Corrupt(String),
    #[error("storage error: {0}")]
    Storage(String),
    /// The store was written in another on-disk format (see `format.rs`).
    #[error("{0}")]
    Format(String),
}

impl FsError {
    /// The errno a POSIX caller sees.
    pub fn errno(&self) -> i32 {
        self.errno_and_name().0
    }

    /// The errno and its name (for metrics labels: a closed set).
    pub fn errno_and_name(&self) -> (i32, &'static str) {
        match self {
            FsError::NotFound => (libc::ENOENT, "ENOENT"),
            FsError::Exists => (libc::EEXIST, "EEXIST"),
            FsError::NotDir => (libc::ENOTDIR, "ENOTDIR"),
            FsError::IsDir => (libc::EISDIR, "EISDIR"),
            FsError::NotEmpty => (libc::ENOTEMPTY, "ENOTEMPTY"),
            FsError::Invalid(_) => (libc::EINVAL, "EINVAL"),
            FsError::NameTooLong => (libc::ENAMETOOLONG, "ENAMETOOLONG"),
            FsError::FileTooBig => (libc::EFBIG, "EFBIG"),
            FsError::NoAttr => (libc::ENODATA, "ENODATA"),
            FsError::Range => (libc::ERANGE, "ERANGE"),
            FsError::NotSupported => (libc::EOPNOTSUPP, "EOPNOTSUPP"),
            FsError::NotPermitted => (libc::EPERM, "EPERM"),
            FsError::TooManyLinks => (libc::EMLINK, "EMLINK"),
            FsError::NoSuchOffset => (libc::ENXIO, "ENXIO"),
            FsError::Busy(_) => (libc::EBUSY, "EBUSY"),
            FsError::Stale => (libc::EAGAIN, "EAGAIN"),
            FsError::NoSpace => (libc::ENOSPC, "ENOSPC"),
            FsError::QuotaExceeded => (libc::EDQUOT, "EDQUOT"),
            FsError::Corrupt(_) | FsError::Storage(_) | FsError::Format(_) => (libc::EIO, "EIO"),
        }
    }

    pub fn corrupt(what: impl fmt::Display) -> Self {
        FsError::Corrupt(what.to_string())
    }
}

impl From<rocksdb::Error> for FsError {
    fn from(e: rocksdb::Error) -> Self {
        let text = e.into_string();
        // RocksDB reports a full disk as an IO error carrying strerror(ENOSPC).
        if text.contains("No space left on device") {
            FsError::NoSpace
        } else {
            FsError::Storage(text)
        }
    }
}

pub type FsResult<T> = Result<T, FsError>;
