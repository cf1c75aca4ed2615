//! Errors the service answers with: a kind (which the HTTP layer maps to a status), a stable
//! snake_case code for programs and a message for people.

use chaserfs_engine::FsError;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ErrorKind {
    BadRequest,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    /// The data dir's disk is full (507).
    InsufficientStorage,
    Internal,
    /// Cluster mode: the object store or the metadata store cannot be reached (503).
    Unavailable,
    /// A limit on concurrent work was reached; retry later (429).
    TooManyRequests,
    /// A limit the operator set for the account (403).
    Forbidden,
}

impl ApiError {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            code,
            message: message.into(),
        }
    }
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, code, message)
    }
    /// Beyond what the operator allows the account (the accounts file).
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, code, message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, code, message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, code, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, "internal_error", message)
    }
    /// A session's final commit failed; its changes are kept for a retry.
    pub fn commit_failed(e: FsError) -> Self {
        let kind = match e {
            FsError::NoSpace => ErrorKind::InsufficientStorage,
            _ => ErrorKind::Internal,
        };
        Self::new(
            kind,
            "commit_failed",
            format!(
                "the session is unmounted but its final commit failed ({e}); its changes are \
                 kept and the commit is retried periodically and on every end request"
            ),
        )
    }
}

impl From<FsError> for ApiError {
    fn from(e: FsError) -> Self {
        match e {
            FsError::NotFound => ApiError::not_found("not_found", "not found"),
            FsError::Busy(m) => ApiError::conflict("workspace_busy", m),
            FsError::Stale => ApiError::conflict(
                "records_changed",
                "records changed on another host meanwhile; retry",
            ),
            FsError::Storage(m) => ApiError::new(
                ErrorKind::Unavailable,
                "storage_unavailable",
                format!("storage error: {m}"),
            ),
            FsError::NoSpace => ApiError::new(
                ErrorKind::InsufficientStorage,
                "no_space",
                "the data dir's disk is full; delete workspaces or snapshots to free space",
            ),
            FsError::QuotaExceeded => ApiError::forbidden(
                "quota_exceeded",
                "the workspace's quota (within the operator's ceiling) is reached",
            ),
            other => {
                tracing::error!("storage: {other}");
                ApiError::internal("internal storage error")
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
