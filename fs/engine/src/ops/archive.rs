//! Workspaces as tar archives: `export` writes one committed state as a tar stream, `import`
//! builds a state from one. Both stream: memory holds one piece of one file at a time (and,
//! for import, the overlay between periodic commits), whatever the archive's size.
//!
//! What a round trip keeps: the tree, file contents, modes (setuid, setgid and sticky bits
//! included), owners, modification times to the nanosecond (PAX `mtime`), symlinks, hard
//! links (an inode's second and later names are tar link entries), device numbers, FIFOs,
//! and extended attributes (PAX `SCHILY.xattr.NAME`, as GNU tar and bsdtar write them).
//! Sockets are left out, as tar does.

use std::collections::HashMap;
use std::io::{Read, Write};

use crate::error::FsError;
use crate::format::keys::ROOT_INO;
use crate::format::records::{FileKind, Timespec};
use crate::posix::{NewNode, SetAttr, TimeSet, Workspace};

/// A file's data moves in pieces of this size.
const PIECE: usize = 1 << 20;

/// What one entry costs the overlay until the next commit (its inode, its name twice, the
/// maps holding them), counted with the file data, so an archive of a million entries
/// without data commits every few tens of thousands of them.
const ENTRY_OVERLAY_BYTES: u64 = 4096;

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

/// Writes the state `ws` (a view, [`Workspace::at_root`]) to `out` as a tar archive, paths
/// relative (`./` for the root directory), parents before children, each directory's
/// entries in the order it lists them. Memory holds the path being written and a position
/// per directory above it, at any depth or width.
pub fn export(ws: &Workspace, out: impl Write) -> ArchiveResult<ArchiveReport> {
    let mut ex = Exporter {
        ws,
        tar: tar::Builder::new(out),
        report: ArchiveReport::default(),
        links: FirstLinks::default(),
    };
    ex.entry(ROOT_INO, ROOT_INO, b"", b".")?;
    /// A directory being written: where its listing goes on, and its path's length.
    struct Frame {
        ino: u64,
        offset: u64,
        path_len: usize,
    }
    let mut path = Vec::new();
    let mut frames = vec![Frame {
        ino: ROOT_INO,
        offset: 0,
        path_len: 0,
    }];
    // The top directory's next entries; read again after a subdirectory is done.
    let mut batch = std::collections::VecDeque::new();
    while let Some(top) = frames.last_mut() {
        if batch.is_empty() {
            // A batch ends at a directory: entering it drops the rest of the batch.
            ws.readdir(top.ino, top.offset, |e| {
                let dir = e.kind == FileKind::Directory;
                if e.name != b"." && e.name != b".." {
                    batch.push_back(e);
                    return !dir && batch.len() < 256;
                }
                true
            })?;
        }
        let Some(e) = batch.pop_front() else {
            frames.pop();
            continue;
        };
        top.offset = e.offset;
        path.truncate(top.path_len);
        path.extend_from_slice(&e.name);
        let parent = top.ino;
        if ex.entry(e.ino, parent, &e.name, &path)? {
            path.push(b'/');
            frames.push(Frame {
                ino: e.ino,
                offset: 0,
                path_len: path.len(),
            });
            batch.clear();
        }
    }
    ex.tar
        .into_inner()
        .map_err(ArchiveError::Io)?
        .flush()
        .map_err(ArchiveError::Io)?;
    Ok(ex.report)
}

struct Exporter<'a, W: Write> {
    ws: &'a Workspace,
    tar: tar::Builder<W>,
    report: ArchiveReport,
    links: FirstLinks,
}

impl<W: Write> Exporter<'_, W> {
    /// Writes inode `ino`, named `name` in directory `parent`, at `path`; `true` for a
    /// directory, whose entries come next.
    fn entry(&mut self, ino: u64, parent: u64, name: &[u8], path: &[u8]) -> ArchiveResult<bool> {
        let (ws, tar, report) = (self.ws, &mut self.tar, &mut self.report);
        let attr = ws.getattr(ino)?;
        // As tar does: nothing of a socket is written, not even its PAX header.
        if attr.kind == FileKind::Socket {
            report.skipped += 1;
            return Ok(false);
        }
        let mut pax: Vec<(String, Vec<u8>)> = vec![(
            "mtime".into(),
            format!("{}.{:09}", attr.mtime.sec, attr.mtime.nsec).into_bytes(),
        )];
        for name in ws.listxattr(ino)? {
            let value = ws.getxattr(ino, &name)?;
            match String::from_utf8(name) {
                Ok(name) => pax.push((format!("SCHILY.xattr.{name}"), value)),
                Err(_) => report.skipped += 1,
            }
        }
        let mut header = tar::Header::new_gnu();
        header.set_mode(attr.perm);
        header.set_uid(attr.uid.into());
        header.set_gid(attr.gid.into());
        header.set_mtime(attr.mtime.sec.max(0) as u64);
        header.set_size(0);
        let path_os = header_name(&mut pax, "path", path);
        let io = ArchiveError::Io;
        let several = attr.kind != FileKind::Directory && attr.nlink > 1;
        let first = match several {
            true => self.links.take(ws, ino)?,
            false => None,
        };
        let hard_link = first.map(|first| header_name(&mut pax, "linkpath", &first));
        let symlink_target = match attr.kind {
            FileKind::Symlink if hard_link.is_none() => {
                Some(header_name(&mut pax, "linkpath", &ws.readlink(ino)?))
            }
            _ => None,
        };
        // What import reads back into memory before the entry (the records, their length
        // digits, and up to 2 KiB of headers and padding): refused there, so here.
        let header_bytes: usize = pax.iter().map(|(k, v)| k.len() + v.len() + 32).sum();
        if header_bytes as u64 + 4096 > MAX_HEADER_BYTES {
            return Err(invalid(format!(
                "the headers of {} bytes of path under {} exceed the {MAX_HEADER_BYTES} an \
                 import reads",
                path.len(),
                String::from_utf8_lossy(&path[..path.len().min(200)])
            )));
        }
        let pax_refs = pax.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
        tar.append_pax_extensions(pax_refs).map_err(io)?;
        if let Some(target) = hard_link {
            header.set_entry_type(tar::EntryType::Link);
            tar.append_link(&mut header, &path_os, &target)
                .map_err(io)?;
            report.entries += 1;
            return Ok(false);
        }
        if several {
            self.links.record(ino, attr.nlink - 1, parent, name, path);
        }
        match attr.kind {
            FileKind::Directory => {
                header.set_entry_type(tar::EntryType::Directory);
                tar.append_data(&mut header, &path_os, std::io::empty())
                    .map_err(io)?;
            }
            FileKind::Regular => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(attr.size);
                let data = FileReader {
                    ws,
                    ino,
                    offset: 0,
                    size: attr.size,
                };
                tar.append_data(&mut header, &path_os, data).map_err(io)?;
                report.bytes += attr.size;
            }
            FileKind::Symlink => {
                header.set_entry_type(tar::EntryType::Symlink);
                let target = symlink_target.unwrap_or_default();
                tar.append_link(&mut header, &path_os, &target)
                    .map_err(io)?;
            }
            FileKind::Fifo | FileKind::CharDevice | FileKind::BlockDevice => {
                header.set_entry_type(match attr.kind {
                    FileKind::Fifo => tar::EntryType::Fifo,
                    FileKind::CharDevice => tar::EntryType::Char,
                    _ => tar::EntryType::Block,
                });
                header
                    .set_device_major(libc::major(attr.rdev.into()))
                    .map_err(io)?;
                header
                    .set_device_minor(libc::minor(attr.rdev.into()))
                    .map_err(io)?;
                tar.append_data(&mut header, &path_os, std::io::empty())
                    .map_err(io)?;
            }
            FileKind::Socket => unreachable!("skipped above"),
        }
        report.entries += 1;
        Ok(attr.kind == FileKind::Directory)
    }
}

/// The first path written of each inode with several names, for its later link entries,
/// until its last name is written. Paths are kept up to a budget; past it, the directory and
/// name, and the path is found again by climbing the directories (slower, but memory stays
/// bounded at any depth).
#[derive(Default)]
struct FirstLinks {
    /// Inode -> (its first path, names still to come).
    paths: HashMap<u64, (Vec<u8>, u32)>,
    path_bytes: usize,
    /// Inode -> (directory, name, names still to come).
    places: HashMap<u64, (u64, Vec<u8>, u32)>,
}

const FIRST_LINK_PATH_BYTES: usize = 64 << 20;

impl FirstLinks {
    fn record(&mut self, ino: u64, more: u32, parent: u64, name: &[u8], path: &[u8]) {
        if self.path_bytes + path.len() <= FIRST_LINK_PATH_BYTES {
            self.path_bytes += path.len();
            self.paths.insert(ino, (path.to_vec(), more));
        } else {
            self.places.insert(ino, (parent, name.to_vec(), more));
        }
    }

    /// The first path of `ino` for one more of its names, forgotten after the last.
    fn take(&mut self, ws: &Workspace, ino: u64) -> ArchiveResult<Option<Vec<u8>>> {
        if let Some((path, more)) = self.paths.get_mut(&ino) {
            *more -= 1;
            let path = match *more {
                0 => {
                    let (path, _) = self.paths.remove(&ino).expect("present");
                    self.path_bytes -= path.len();
                    path
                }
                _ => path.clone(),
            };
            return Ok(Some(path));
        }
        let Some((dir, name, more)) = self.places.get_mut(&ino) else {
            return Ok(None);
        };
        *more -= 1;
        let (dir, name) = (*dir, name.clone());
        if *more == 0 {
            self.places.remove(&ino);
        }
        Self::climb(ws, dir, &name).map(Some)
    }

    /// The path of `name` in directory `dir`: the directory's names, from it up to the root.
    fn climb(ws: &Workspace, dir: u64, name: &[u8]) -> ArchiveResult<Vec<u8>> {
        let mut names = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut at = dir;
        while at != ROOT_INO {
            if !seen.insert(at) {
                return Err(FsError::corrupt(format!("a directory loop through {at}")).into());
            }
            let parent = ws.lookup(at, b"..")?.ino;
            let mut found = None;
            ws.readdir(parent, 2, |e| {
                if e.ino == at {
                    found = Some(e.name);
                }
                found.is_none()
            })?;
            names.push(found.ok_or_else(|| {
                FsError::corrupt(format!("directory {at} is not named in its parent"))
            })?);
            at = parent;
        }
        let mut path = Vec::new();
        for n in names.iter().rev() {
            path.extend_from_slice(n);
            path.push(b'/');
        }
        path.extend_from_slice(name);
        Ok(path)
    }
}

/// Longest name the tar header's own fields hold.
const HEADER_NAME_MAX: usize = 100;

/// What the header names: `name` itself when it fits, else a placeholder, with `name` in the
/// PAX record `key` (`path` or `linkpath`), which every reader prefers. The tar crate's GNU
/// long names would otherwise be used, and they cannot carry a name whose first bytes are not
/// UTF-8 (Linux names are bytes).
fn header_name(pax: &mut Vec<(String, Vec<u8>)>, key: &str, name: &[u8]) -> std::path::PathBuf {
    if name.len() <= HEADER_NAME_MAX {
        return os_path(name.to_vec());
    }
    pax.push((key.into(), name.to_vec()));
    os_path(format!("pax-{key}").into_bytes())
}

fn os_path(bytes: Vec<u8>) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStringExt;
    std::ffi::OsString::from_vec(bytes).into()
}

/// A file's contents from the engine, a piece at a time.
struct FileReader<'a> {
    ws: &'a Workspace,
    ino: u64,
    offset: u64,
    size: u64,
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.offset >= self.size {
            return Ok(0);
        }
        let want = buf.len().min(PIECE).min((self.size - self.offset) as usize);
        let data = self
            .ws
            .read(self.ino, self.offset, want)
            .map_err(std::io::Error::other)?;
        if data.is_empty() {
            return Err(std::io::Error::other("file shorter than its size"));
        }
        buf[..data.len()].copy_from_slice(&data);
        self.offset += data.len() as u64;
        Ok(data.len())
    }
}

/// Fills the empty workspace `ws` from the tar archive `input`, committing every
/// `opts.commit_every` bytes so the overlay stays bounded. A path with `..`, or a hard link
/// to a path not yet in the archive, makes the archive invalid; the caller throws the
/// workspace away then. Memory is bounded whatever the archive: one piece of file data and
/// at most [`MAX_HEADER_BYTES`] of one entry's headers.
pub fn import(
    ws: &Workspace,
    input: impl Read,
    opts: &ImportOptions,
) -> ArchiveResult<ArchiveReport> {
    let in_data = std::rc::Rc::new(std::cell::Cell::new(false));
    let header_bytes = std::rc::Rc::new(std::cell::Cell::new(0));
    let guarded = HeaderGuard {
        inner: input,
        in_data: in_data.clone(),
        header_bytes: header_bytes.clone(),
    };
    let mut archive = tar::Archive::new(guarded);
    let mut report = ArchiveReport::default();
    // The directories an entry lies in, and directories' times, set last (their entries
    // change them).
    let mut dirs = DirChain::default();
    let mut dir_times: Vec<(u64, Timespec)> = Vec::new();
    let mut since_commit = 0u64;
    let mut buf = vec![0u8; PIECE];
    let entries = archive.entries().map_err(invalid)?;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(format!("reading the archive: {e}")))?;
        // This entry's headers are read (and were held to the bound); the next one's count
        // from here, whether or not this one has data.
        header_bytes.set(0);
        let path = clean_path(&entry.path_bytes())?;
        let h = entry.header();
        let kind = match h.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => FileKind::Regular,
            // The tar reader gives its holes as zeros; they are left holes (see below).
            tar::EntryType::GNUSparse => FileKind::Regular,
            tar::EntryType::Directory => FileKind::Directory,
            tar::EntryType::Symlink => FileKind::Symlink,
            tar::EntryType::Link => FileKind::Regular,
            tar::EntryType::Char => FileKind::CharDevice,
            tar::EntryType::Block => FileKind::BlockDevice,
            tar::EntryType::Fifo => FileKind::Fifo,
            tar::EntryType::XGlobalHeader => {
                report.skipped += 1;
                drain(&mut entry, &in_data)?;
                continue;
            }
            other => {
                return Err(invalid(format!(
                    "{}: tar entries of type {:?} are not supported",
                    show(&path),
                    other.as_byte() as char
                )))
            }
        };
        if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) && !opts.devices {
            return Err(invalid(format!(
                "{}: device nodes are refused (the operator has not allowed them)",
                show(&path)
            )));
        }
        let is_link = h.entry_type() == tar::EntryType::Link;
        let entry_data_len = entry.size();
        let mut perm = h.mode().map_err(invalid)? & 0o7777;
        if !opts.setid && perm & 0o6000 != 0 {
            perm &= !0o6000;
            report.privileges_dropped += 1;
        }
        let uid = h.uid().map_err(invalid)? as u32;
        let gid = h.gid().map_err(invalid)? as u32;
        let mut mtime = Timespec {
            sec: h.mtime().map_err(invalid)? as i64,
            nsec: 0,
        };
        let rdev = match kind {
            FileKind::CharDevice | FileKind::BlockDevice => libc::makedev(
                h.device_major().map_err(invalid)?.unwrap_or(0),
                h.device_minor().map_err(invalid)?.unwrap_or(0),
            ) as u32,
            _ => 0,
        };
        let link_name = entry.link_name_bytes().map(|l| l.into_owned());
        let mut xattrs = Vec::new();
        let mut sparse = PaxSparse::default();
        if let Some(pax) = entry.pax_extensions().map_err(invalid)? {
            for ext in pax {
                let ext = ext.map_err(invalid)?;
                let key = ext.key().map_err(invalid)?;
                if key == "mtime" {
                    mtime = parse_pax_time(ext.value_bytes()).unwrap_or(mtime);
                } else if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    let privileged = name.starts_with("security.") || name.starts_with("trusted.");
                    if privileged && !opts.privileged_xattrs {
                        report.privileges_dropped += 1;
                    } else {
                        xattrs.push((name.as_bytes().to_vec(), ext.value_bytes().to_vec()));
                    }
                } else if let Some(field) = key.strip_prefix("GNU.sparse.") {
                    sparse.field(field, ext.value_bytes());
                }
            }
        }
        let path = match sparse.real_name(&path)? {
            Some(name) => clean_path(&name)?,
            None => path,
        };

        if path.is_empty() {
            // The root directory itself: only its attributes.
            if kind == FileKind::Directory {
                set_owner_mode(ws, ROOT_INO, perm, uid, gid)?;
                set_xattrs(ws, ROOT_INO, &xattrs)?;
                dir_times.push((ROOT_INO, mtime));
            }
            drain(&mut entry, &in_data)?;
            continue;
        }
        let (parent_path, name) = split(&path);
        let parent = dirs.resolve(ws, parent_path, true)?.unwrap_or(ROOT_INO);
        // A later entry for a path replaces the earlier one, as tar does; a directory that
        // meets a directory keeps its contents.
        if let Ok(existing) = ws.lookup(parent, name) {
            if existing.kind == FileKind::Directory {
                if kind == FileKind::Directory && !is_link {
                    set_owner_mode(ws, existing.ino, perm, uid, gid)?;
                    set_xattrs(ws, existing.ino, &xattrs)?;
                    dir_times.push((existing.ino, mtime));
                    report.entries += 1;
                    drain(&mut entry, &in_data)?;
                    continue;
                }
                ws.rmdir(parent, name)
                    .map_err(|e| invalid(format!("{}: {e}", show(&path))))?;
                dirs.forget();
            } else {
                ws.unlink(parent, name)?;
            }
        }
        if is_link {
            let target = clean_path(link_name.as_deref().unwrap_or_default())?;
            let (tp, tn) = split(&target);
            let target_ino = dirs
                .resolve(ws, tp, false)?
                .and_then(|d| ws.lookup(d, tn).ok())
                .filter(|a| a.kind != FileKind::Directory)
                .ok_or_else(|| {
                    invalid(format!(
                        "{}: hard link to {}, which is not an earlier file of the archive",
                        show(&path),
                        show(&target)
                    ))
                })?;
            ws.link(target_ino.ino, parent, name)?;
            report.entries += 1;
            drain(&mut entry, &in_data)?;
            continue;
        }
        let target = match kind {
            FileKind::Symlink => link_name.unwrap_or_default(),
            _ => Vec::new(),
        };
        let attr = ws.create(
            parent,
            name,
            NewNode {
                kind,
                perm,
                uid,
                gid,
                rdev,
                target: &target,
            },
        )?;
        if let (FileKind::Regular, Some(size)) = (kind, sparse.real_size) {
            if report.bytes + size > opts.max_bytes {
                return Err(too_big(opts.max_bytes));
            }
            import_pax_sparse(ws, attr.ino, &mut entry, &sparse, &in_data, &mut buf)?;
            report.bytes += size;
            since_commit += entry_data_len;
        } else if kind == FileKind::Regular {
            let mut offset = 0u64;
            loop {
                in_data.set(true);
                let n = read_full(&mut entry, &mut buf);
                in_data.set(false);
                let n = n.map_err(|e| invalid(format!("{}: {e}", show(&path))))?;
                if n == 0 {
                    break;
                }
                if report.bytes + offset + n as u64 > opts.max_bytes {
                    return Err(too_big(opts.max_bytes));
                }
                // Runs of zeros stay holes, as `cp --sparse` and GNU tar leave them.
                if buf[..n].iter().any(|b| *b != 0) {
                    ws.write(attr.ino, offset, &buf[..n])?;
                    since_commit += n as u64;
                }
                offset += n as u64;
            }
            if ws.getattr(attr.ino)?.size != offset {
                let size = SetAttr {
                    size: Some(offset),
                    ..Default::default()
                };
                ws.setattr(attr.ino, &size)?;
            }
            report.bytes += offset;
        } else {
            drain(&mut entry, &in_data)?;
        }
        set_owner_mode(ws, attr.ino, perm, uid, gid)?;
        set_xattrs(ws, attr.ino, &xattrs)?;
        if kind == FileKind::Directory {
            dir_times.push((attr.ino, mtime));
        } else {
            set_mtime(ws, attr.ino, mtime)?;
        }
        report.entries += 1;
        since_commit += ENTRY_OVERLAY_BYTES;
        if since_commit >= opts.commit_every {
            ws.commit(false)?;
            since_commit = 0;
        }
    }
    // Deepest last-created first does not matter: setting a time changes no parent's time.
    for (ino, t) in dir_times {
        set_mtime(ws, ino, t)?;
    }
    Ok(report)
}

/// GNU tar's PAX sparse format 1.0 (`--format=posix --sparse`, the default there): the
/// file's real name and size in PAX records, and at the start of its data a map of the data
/// segments (decimal lines: their count, then an offset and a size each), padded to 512
/// bytes, followed by the segments. Formats 0.0 and 0.1 are refused.
#[derive(Default)]
struct PaxSparse {
    major: Option<Vec<u8>>,
    minor: Option<Vec<u8>>,
    name: Option<Vec<u8>>,
    real_size: Option<u64>,
    /// A 0.x record (`offset`, `numbytes`, `map`) was seen.
    old_format: bool,
}

impl PaxSparse {
    fn field(&mut self, field: &str, value: &[u8]) {
        match field {
            "major" => self.major = Some(value.to_vec()),
            "minor" => self.minor = Some(value.to_vec()),
            "name" => self.name = Some(value.to_vec()),
            "realsize" | "size" => {
                self.real_size = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok())
            }
            _ => self.old_format = true,
        }
    }

    /// The file's real path if the entry is a sparse file; an error for a format not taken.
    fn real_name(&self, stored: &[u8]) -> ArchiveResult<Option<Vec<u8>>> {
        let any = self.major.is_some() || self.real_size.is_some() || self.old_format;
        if !any {
            return Ok(None);
        }
        if self.old_format
            || self.major.as_deref() != Some(b"1")
            || self.minor.as_deref() != Some(b"0")
            || self.real_size.is_none()
        {
            return Err(invalid(format!(
                "{}: only PAX sparse format 1.0 is supported (GNU tar --sparse-version=1.0)",
                show(stored)
            )));
        }
        Ok(Some(self.name.clone().unwrap_or_else(|| stored.to_vec())))
    }
}

fn too_big(max: u64) -> ArchiveError {
    invalid(format!(
        "the archive's files hold more than {max} bytes, the most this import may take"
    ))
}

/// Writes a PAX 1.0 sparse file's segments into `ino` (holes stay holes) and sets its size. The map is bounded like any header ([`MAX_HEADER_BYTES`]).
fn import_pax_sparse(
    ws: &Workspace,
    ino: u64,
    entry: &mut impl Read,
    sparse: &PaxSparse,
    in_data: &std::cell::Cell<bool>,
    buf: &mut [u8],
) -> ArchiveResult<()> {
    let real_size = sparse.real_size.expect("a sparse file");
    let bad = |what: &str| invalid(format!("a sparse file's map: {what}"));
    in_data.set(true);
    let result = (|| {
        let mut map = Vec::new();
        let numbers: Vec<u64> = loop {
            let mut block = [0u8; 512];
            entry
                .read_exact(&mut block)
                .map_err(|e| bad(&e.to_string()))?;
            map.extend_from_slice(&block);
            if map.len() as u64 > MAX_HEADER_BYTES {
                return Err(bad("larger than the most a header may be"));
            }
            let lines: Vec<&[u8]> = map.split(|b| *b == b'\n').collect();
            let complete = lines.len() - 1;
            if complete == 0 {
                continue;
            }
            let count: usize = parse_decimal(lines[0]).ok_or_else(|| bad("no count"))? as usize;
            if complete > count * 2 {
                break lines[..=count * 2]
                    .iter()
                    .map(|l| parse_decimal(l).ok_or_else(|| bad("not a number")))
                    .collect::<ArchiveResult<_>>()?;
            }
        };
        let mut end = 0u64;
        for pair in numbers[1..].chunks(2) {
            let (offset, len) = (pair[0], pair[1]);
            let stop = offset.checked_add(len).ok_or_else(|| bad("overflow"))?;
            if offset < end || stop > real_size {
                return Err(bad("segments out of order or past the file's size"));
            }
            let mut done = 0u64;
            while done < len {
                let n = ((len - done) as usize).min(buf.len());
                entry
                    .read_exact(&mut buf[..n])
                    .map_err(|e| invalid(format!("a sparse file's data: {e}")))?;
                if buf[..n].iter().any(|b| *b != 0) {
                    ws.write(ino, offset + done, &buf[..n])?;
                }
                done += n as u64;
            }
            end = stop;
        }
        std::io::copy(entry, &mut std::io::sink())
            .map_err(|e| invalid(format!("a sparse file's data: {e}")))?;
        Ok(())
    })();
    in_data.set(false);
    result?;
    let size = SetAttr {
        size: Some(real_size),
        ..Default::default()
    };
    ws.setattr(ino, &size)?;
    Ok(())
}

fn parse_decimal(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Reads what is left of an entry's data as data (the tar reader would skip it as headers).
fn drain(entry: &mut impl Read, in_data: &std::cell::Cell<bool>) -> ArchiveResult<()> {
    in_data.set(true);
    let drained = std::io::copy(entry, &mut std::io::sink());
    in_data.set(false);
    drained
        .map(|_| ())
        .map_err(|e| invalid(format!("reading the archive: {e}")))
}

/// The archive as the tar reader sees it: every byte it reads that is not an entry's data
/// (headers, long names, PAX records, padding) counts against [`MAX_HEADER_BYTES`] until
/// the import loop takes the entry (and resets the count), so a giant header is refused
/// before it is held.
struct HeaderGuard<R> {
    inner: R,
    in_data: std::rc::Rc<std::cell::Cell<bool>>,
    header_bytes: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.in_data.get() {
            return self.inner.read(buf);
        }
        let room = MAX_HEADER_BYTES.saturating_sub(self.header_bytes.get());
        if room == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("an entry's headers exceed {MAX_HEADER_BYTES} bytes"),
            ));
        }
        let len = buf.len().min(room as usize);
        let n = self.inner.read(&mut buf[..len])?;
        self.header_bytes.set(self.header_bytes.get() + n as u64);
        Ok(n)
    }
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

/// Owner first, then mode: a change of owner may clear setuid and setgid bits.
fn set_owner_mode(ws: &Workspace, ino: u64, perm: u32, uid: u32, gid: u32) -> ArchiveResult<()> {
    let owner = SetAttr {
        uid: Some(uid),
        gid: Some(gid),
        ..Default::default()
    };
    ws.setattr(ino, &owner)?;
    let mode = SetAttr {
        mode: Some(perm),
        ..Default::default()
    };
    ws.setattr(ino, &mode)?;
    Ok(())
}

fn set_mtime(ws: &Workspace, ino: u64, t: Timespec) -> ArchiveResult<()> {
    let times = SetAttr {
        atime: Some(TimeSet::At(t)),
        mtime: Some(TimeSet::At(t)),
        ..Default::default()
    };
    ws.setattr(ino, &times)?;
    Ok(())
}

fn set_xattrs(ws: &Workspace, ino: u64, xattrs: &[(Vec<u8>, Vec<u8>)]) -> ArchiveResult<()> {
    for (name, value) in xattrs {
        ws.setxattr(ino, name, value, 0)?;
    }
    Ok(())
}

/// The directory at `path`, made (mode 0755, owned by root) with its parents if missing.
/// The directories along the path of the last directory resolved, root first: an archive
/// lists a directory's entries together, so most entries share most of their parent's path
/// with the one before. Memory is one path, whatever the depth (a map of every directory's
/// path would hold the square of a deep chain), and nothing recurses.
#[derive(Default)]
struct DirChain {
    path: Vec<u8>,
    /// Per name along `path`: where it ends in `path`, and its directory's inode.
    inos: Vec<(usize, u64)>,
}

impl DirChain {
    /// The directory at `path` (empty: the root), made with its missing parents if `create`,
    /// else `None` if one is missing. A name on the way that is not a directory is an error.
    fn resolve(&mut self, ws: &Workspace, path: &[u8], create: bool) -> ArchiveResult<Option<u64>> {
        // Keep the names this path shares with the last one.
        let common = self
            .path
            .iter()
            .zip(path)
            .take_while(|(a, b)| a == b)
            .count();
        let kept = self
            .inos
            .iter()
            .take_while(|(end, _)| *end <= common && (*end == path.len() || path[*end] == b'/'))
            .count();
        self.inos.truncate(kept);
        let mut at = self.inos.last().map_or(0, |(end, _)| *end);
        self.path.truncate(at);
        let mut ino = self.inos.last().map_or(ROOT_INO, |(_, ino)| *ino);
        while at < path.len() {
            let start = if at == 0 { 0 } else { at + 1 };
            let end = path[start..]
                .iter()
                .position(|b| *b == b'/')
                .map_or(path.len(), |i| start + i);
            let name = &path[start..end];
            ino = match ws.lookup(ino, name) {
                Ok(a) if a.kind == FileKind::Directory => a.ino,
                Ok(_) => {
                    return Err(invalid(format!(
                        "{} is used as a directory but is not one",
                        show(&path[..end])
                    )))
                }
                Err(FsError::NotFound) if create => {
                    ws.create(
                        ino,
                        name,
                        NewNode::owned_by_root(FileKind::Directory, 0o755),
                    )?
                    .ino
                }
                Err(FsError::NotFound) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            self.path.extend_from_slice(&path[at..end]);
            self.inos.push((end, ino));
            at = end;
        }
        Ok(Some(ino))
    }

    /// Forgets every directory known (one was removed).
    fn forget(&mut self) {
        self.path.clear();
        self.inos.clear();
    }
}

/// A relative path without `.` components, leading `/` or trailing `/`; `..` is refused.
fn clean_path(raw: &[u8]) -> ArchiveResult<Vec<u8>> {
    let mut out: Vec<u8> = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(invalid(format!("{}: `..` in a path", show(raw)))),
            p => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(p);
            }
        }
    }
    Ok(out)
}

/// (parent path, last name) of a non-empty clean path.
fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// `SEC[.FRACTION]` as PAX writes times.
fn parse_pax_time(v: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(v).ok()?;
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = sec.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nsec = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    Some(Timespec { sec, nsec })
}
