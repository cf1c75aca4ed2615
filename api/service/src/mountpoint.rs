//! Where a session may mount. A requested path is resolved one component at a time from the
//! operator's root, never following a symlink and never crossing into another mount
//! (`openat2` with `RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV`); missing directories are made
//! relative to their parent's descriptor; the mount is then made on the final descriptor.
//! Directories on the way must be the daemon's and writable by no one else. So a path
//! swapped for a symlink between the check and the mount redirects nothing, a recorded
//! mountpoint keeps meaning the place mounted, and no session mounts inside another
//! session's mount (or any other mount).

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use crate::error::{ApiError, ApiResult};

/// The one path outside the mount root a session may mount at (and beneath).
pub const WORKSPACE_ROOT: &str = "/workspace";
/// Under the mount root, root-only (0700): where imports mount their new workspace.
pub const IMPORTS_DIR: &str = ".imports";

/// A directory to mount on: its `O_PATH` descriptor, the path it was reached by, and whether
/// the daemon made it (then it is removed again when its session ends).
pub struct Mountpoint {
    pub dir: OwnedFd,
    pub path: PathBuf,
    pub made: bool,
}

impl Mountpoint {
    /// A mount on it failed: the directory goes again if the daemon made it.
    pub fn forget(&self) {
        if self.made {
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

/// Resolves (creating what is missing) a session's requested mountpoint: an empty directory
/// strictly beneath `mount_root`, or `/workspace` or beneath it, outside `data_dir`.
/// `mount_root` and `data_dir` are canonical (the operator's, resolved at start).
pub fn resolve(raw: &str, mount_root: &Path, data_dir: &Path) -> ApiResult<Mountpoint> {
    let path = PathBuf::from(raw);
    if !path.is_absolute()
        || raw.contains('\0')
        || path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(ApiError::bad(
            "invalid_mountpoint",
            "the mountpoint must be an absolute path without . or ..",
        ));
    }
    let not_allowed = |why: &str| ApiError::bad("mountpoint_not_allowed", why.to_string());
    let (base, rel) = if let Ok(rel) = path.strip_prefix(mount_root) {
        match rel.components().next() {
            None => return Err(not_allowed("the mount root itself is not a mountpoint")),
            Some(c) if c.as_os_str() == IMPORTS_DIR => {
                return Err(not_allowed("that directory is reserved for imports"))
            }
            Some(_) => (mount_root, rel),
        }
    } else if path.starts_with(WORKSPACE_ROOT) {
        (Path::new("/"), path.strip_prefix("/").expect("absolute"))
    } else {
        return Err(not_allowed(&format!(
            "mountpoints must lie under {} or {WORKSPACE_ROOT}",
            mount_root.display()
        )));
    };
    if path.starts_with(data_dir) || data_dir.starts_with(&path) {
        return Err(not_allowed("the mountpoint overlaps the data dir"));
    }
    let (dir, made) = open_beneath(base, rel, 0o755)?;
    // Empty: a mount would hide what is there.
    let listed = std::fs::read_dir(fd_path(&dir))
        .map_err(|e| ApiError::bad("invalid_mountpoint", e.to_string()))?;
    if listed.into_iter().next().is_some() {
        return Err(ApiError::conflict(
            "mountpoint_not_empty",
            "the mountpoint is not an empty directory",
        ));
    }
    Ok(Mountpoint { dir, path, made })
}

/// Opens (making missing directories with `mode`) the directory `rel` beneath `base`,
/// following no symlink and crossing no mount; and whether it made the last one.
pub fn open_beneath(base: &Path, rel: &Path, mode: u32) -> ApiResult<(OwnedFd, bool)> {
    let bad = |code: &'static str, msg: String| ApiError::bad(code, msg);
    let mut dir: OwnedFd = std::fs::File::open(base)
        .map_err(|e| bad("invalid_mountpoint", format!("{}: {e}", base.display())))?
        .into();
    let mut at = base.to_path_buf();
    let mut made = false;
    let mut rest = rel.components().peekable();
    while let Some(c) = rest.next() {
        let name = c.as_os_str();
        at.push(name);
        let last = rest.peek().is_none();
        let how = || {
            OpenHow::new()
                .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
                .resolve(
                    ResolveFlag::RESOLVE_BENEATH
                        | ResolveFlag::RESOLVE_NO_SYMLINKS
                        | ResolveFlag::RESOLVE_NO_XDEV,
                )
        };
        let mut opened = openat2(dir.as_fd(), name, how());
        if matches!(opened, Err(Errno::ENOENT)) {
            match nix::sys::stat::mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(mode)) {
                Ok(()) => {
                    made = last;
                    opened = openat2(dir.as_fd(), name, how());
                }
                Err(Errno::EEXIST) => opened = openat2(dir.as_fd(), name, how()),
                Err(e) => {
                    return Err(bad(
                        "invalid_mountpoint",
                        format!("cannot create {}: {e}", at.display()),
                    ))
                }
            }
        }
        dir = match opened {
            Ok(fd) => fd,
            Err(Errno::ELOOP) => {
                return Err(bad(
                    "mountpoint_not_allowed",
                    format!("{} is a symbolic link", at.display()),
                ))
            }
            Err(Errno::EXDEV) if last => {
                return Err(ApiError::conflict(
                    "mountpoint_busy",
                    "something is already mounted there",
                ))
            }
            Err(Errno::EXDEV) => {
                return Err(bad(
                    "mountpoint_not_allowed",
                    format!("{} is inside another mount", at.display()),
                ))
            }
            Err(Errno::ENOTDIR) => {
                return Err(bad(
                    "invalid_mountpoint",
                    format!("{} is not a directory", at.display()),
                ))
            }
            Err(e) => return Err(bad("invalid_mountpoint", format!("{}: {e}", at.display()))),
        };
        // A directory on the way that another user could rename or replace would let the
        // path mean something else later (when it is unmounted, say): refused.
        if !last {
            let st = nix::sys::stat::fstat(dir.as_fd())
                .map_err(|e| bad("invalid_mountpoint", format!("{}: {e}", at.display())))?;
            if st.st_uid != nix::unistd::geteuid().as_raw() || st.st_mode & 0o022 != 0 {
                return Err(bad(
                    "mountpoint_not_allowed",
                    format!(
                        "{} may be changed by other users (it must be the daemon's, and \
                         writable by no one else)",
                        at.display()
                    ),
                ));
            }
        }
    }
    Ok((dir, made))
}

/// The path the kernel reads `fd`'s directory through (a magic link to the object itself).
fn fd_path(fd: &OwnedFd) -> String {
    use std::os::fd::AsRawFd;
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}
