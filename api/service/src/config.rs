//! What the operator starts the service with: where it keeps its data and mounts, what each
//! account may hold, and what tenants' contents are trusted with.

use std::path::PathBuf;
use std::time::Duration;

pub struct Config {
    pub data_dir: PathBuf,
    /// Where sessions may mount, besides `/workspace`.
    pub mount_root: PathBuf,
    pub commit_interval: Duration,
    /// Base URL `owner/repo` imports are cloned from.
    pub github_url: String,
    /// What the operator allows each account, its GitHub token included.
    pub accounts: crate::accounts::Accounts,
    /// Cluster mode: this host's name, recorded in the sessions it serves.
    pub host: Option<String>,
    /// What workspace contents may carry into the host: nothing unless the operator says.
    pub trust: Trust,
    /// Most bytes of file data one tar import may hold.
    pub import_max_bytes: u64,
    /// Most archive imports and exports streaming at once (an account may have a quarter).
    pub max_archive_streams: usize,
}

/// Privileges a workspace's contents may confer, each off unless the operator turns it on
/// (`serve --insecure-*`; SECURITY.md says what each risks). Contents come from tenants.
#[derive(Clone, Copy, Debug, Default)]
pub struct Trust {
    /// Mount sessions `suid` (setuid bits and file capabilities take effect) and keep
    /// setuid/setgid bits from imported archives.
    pub suid: bool,
    /// Mount sessions `dev` (device nodes open devices) and import device nodes.
    pub dev: bool,
    /// Import `security.*` and `trusted.*` extended attributes from archives.
    pub privileged_xattrs: bool,
}
