//! A state built from a tar stream, entry by entry, committing as it goes so the overlay stays
//! bounded; headers are held to a bound before the tar reader reads them.

use std::io::Read;

use crate::error::FsError;
use crate::format::keys::ROOT_INO;
use crate::format::records::{FileKind, Timespec};
use crate::posix::{NewNode, SetAttr, TimeSet, Workspace};

use super::sparse::{import_pax_sparse, PaxSparse};
use super::{
    drain, invalid, read_full, show, ArchiveError, ArchiveReport, ArchiveResult, ImportOptions,
    MAX_HEADER_BYTES, PIECE,
};

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
    let mut importer = Importer {
        ws,
        opts,
        in_data,
        report: ArchiveReport::default(),
        dirs: DirChain::default(),
        dir_times: Vec::new(),
        since_commit: 0,
        buf: vec![0u8; PIECE],
    };
    let entries = archive.entries().map_err(invalid)?;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(format!("reading the archive: {e}")))?;
        // This entry's headers are read (and were held to the bound); the next one's count
        // from here, whether or not this one has data.
        header_bytes.set(0);
        importer.entry(&mut entry)?;
    }
    // Deepest last-created first does not matter: setting a time changes no parent's time.
    for (ino, t) in importer.dir_times {
        set_mtime(ws, ino, t)?;
    }
    Ok(importer.report)
}

/// An import in progress.
struct Importer<'a> {
    ws: &'a Workspace,
    opts: &'a ImportOptions,
    /// Set while an entry's data is read (the header bound does not count it).
    in_data: std::rc::Rc<std::cell::Cell<bool>>,
    report: ArchiveReport,
    /// The directories an entry lies in, and directories' times, set last (their entries
    /// change them).
    dirs: DirChain,
    dir_times: Vec<(u64, Timespec)>,
    since_commit: u64,
    buf: Vec<u8>,
}

/// What one entry's headers say.
struct Meta {
    path: Vec<u8>,
    kind: FileKind,
    /// A hard link to an earlier entry.
    is_link: bool,
    data_len: u64,
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    rdev: u32,
    link_name: Option<Vec<u8>>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse: PaxSparse,
}

impl Importer<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> ArchiveResult<()> {
        let Some(meta) = self.meta(entry)? else {
            self.report.skipped += 1;
            return drain(entry, &self.in_data);
        };
        let ws = self.ws;
        let path = &meta.path;
        if path.is_empty() {
            // The root directory itself: only its attributes.
            if meta.kind == FileKind::Directory {
                set_owner_mode(ws, ROOT_INO, meta.perm, meta.uid, meta.gid)?;
                set_xattrs(ws, ROOT_INO, &meta.xattrs)?;
                self.dir_times.push((ROOT_INO, meta.mtime));
            }
            return drain(entry, &self.in_data);
        }
        let (parent_path, name) = split(path);
        let parent = self
            .dirs
            .resolve(ws, parent_path, true)?
            .unwrap_or(ROOT_INO);
        if self.replace(parent, name, &meta)? {
            self.report.entries += 1;
            return drain(entry, &self.in_data);
        }
        if meta.is_link {
            self.hard_link(parent, name, &meta)?;
            self.report.entries += 1;
            return drain(entry, &self.in_data);
        }
        let target = match meta.kind {
            FileKind::Symlink => meta.link_name.clone().unwrap_or_default(),
            _ => Vec::new(),
        };
        let attr = ws.create(
            parent,
            name,
            NewNode {
                kind: meta.kind,
                perm: meta.perm,
                uid: meta.uid,
                gid: meta.gid,
                rdev: meta.rdev,
                target: &target,
            },
        )?;
        if meta.kind == FileKind::Regular {
            self.file_data(attr.ino, entry, &meta)?;
        } else {
            drain(entry, &self.in_data)?;
        }
        set_owner_mode(ws, attr.ino, meta.perm, meta.uid, meta.gid)?;
        set_xattrs(ws, attr.ino, &meta.xattrs)?;
        if meta.kind == FileKind::Directory {
            self.dir_times.push((attr.ino, meta.mtime));
        } else {
            set_mtime(ws, attr.ino, meta.mtime)?;
        }
        self.report.entries += 1;
        self.since_commit += ENTRY_OVERLAY_BYTES;
        if self.since_commit >= self.opts.commit_every {
            ws.commit(false)?;
            self.since_commit = 0;
        }
        Ok(())
    }

    /// An entry's headers; `None` for entries with no file behind them (PAX global headers).
    fn meta<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> ArchiveResult<Option<Meta>> {
        let opts = self.opts;
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
            tar::EntryType::XGlobalHeader => return Ok(None),
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
        let mut perm = h.mode().map_err(invalid)? & 0o7777;
        if !opts.setid && perm & 0o6000 != 0 {
            perm &= !0o6000;
            self.report.privileges_dropped += 1;
        }
        let uid = h.uid().map_err(invalid)? as u32;
        let gid = h.gid().map_err(invalid)? as u32;
        let mtime = Timespec {
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
        let mut meta = Meta {
            path,
            kind,
            is_link,
            data_len: entry.size(),
            perm,
            uid,
            gid,
            mtime,
            rdev,
            link_name: entry.link_name_bytes().map(|l| l.into_owned()),
            xattrs: Vec::new(),
            sparse: PaxSparse::default(),
        };
        self.pax(entry, &mut meta)?;
        if let Some(name) = meta.sparse.real_name(&meta.path)? {
            meta.path = clean_path(&name)?;
        }
        Ok(Some(meta))
    }

    /// What an entry's PAX records add: a time to the nanosecond, xattrs, a sparse file's map.
    fn pax<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        meta: &mut Meta,
    ) -> ArchiveResult<()> {
        let Some(pax) = entry.pax_extensions().map_err(invalid)? else {
            return Ok(());
        };
        for ext in pax {
            let ext = ext.map_err(invalid)?;
            let key = ext.key().map_err(invalid)?;
            if key == "mtime" {
                meta.mtime = parse_pax_time(ext.value_bytes()).unwrap_or(meta.mtime);
            } else if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                let privileged = name.starts_with("security.") || name.starts_with("trusted.");
                if privileged && !self.opts.privileged_xattrs {
                    self.report.privileges_dropped += 1;
                } else {
                    meta.xattrs
                        .push((name.as_bytes().to_vec(), ext.value_bytes().to_vec()));
                }
            } else if let Some(field) = key.strip_prefix("GNU.sparse.") {
                meta.sparse.field(field, ext.value_bytes());
            }
        }
        Ok(())
    }

    /// A later entry for a path replaces the earlier one, as tar does; a directory that meets
    /// a directory keeps its contents (then `true`: the entry is done).
    fn replace(&mut self, parent: u64, name: &[u8], meta: &Meta) -> ArchiveResult<bool> {
        let ws = self.ws;
        let Ok(existing) = ws.lookup(parent, name) else {
            return Ok(false);
        };
        if existing.kind == FileKind::Directory {
            if meta.kind == FileKind::Directory && !meta.is_link {
                set_owner_mode(ws, existing.ino, meta.perm, meta.uid, meta.gid)?;
                set_xattrs(ws, existing.ino, &meta.xattrs)?;
                self.dir_times.push((existing.ino, meta.mtime));
                return Ok(true);
            }
            ws.rmdir(parent, name)
                .map_err(|e| invalid(format!("{}: {e}", show(&meta.path))))?;
            self.dirs.forget();
        } else {
            ws.unlink(parent, name)?;
        }
        Ok(false)
    }

    fn hard_link(&mut self, parent: u64, name: &[u8], meta: &Meta) -> ArchiveResult<()> {
        let ws = self.ws;
        let target = clean_path(meta.link_name.as_deref().unwrap_or_default())?;
        let (tp, tn) = split(&target);
        let target_ino = self
            .dirs
            .resolve(ws, tp, false)?
            .and_then(|d| ws.lookup(d, tn).ok())
            .filter(|a| a.kind != FileKind::Directory)
            .ok_or_else(|| {
                invalid(format!(
                    "{}: hard link to {}, which is not an earlier file of the archive",
                    show(&meta.path),
                    show(&target)
                ))
            })?;
        ws.link(target_ino.ino, parent, name)?;
        Ok(())
    }

    /// A regular file's data, within the import's byte bound.
    fn file_data<R: Read>(
        &mut self,
        ino: u64,
        entry: &mut tar::Entry<'_, R>,
        meta: &Meta,
    ) -> ArchiveResult<()> {
        let (ws, max) = (self.ws, self.opts.max_bytes);
        if let Some(size) = meta.sparse.real_size {
            if self.report.bytes + size > max {
                return Err(too_big(max));
            }
            import_pax_sparse(ws, ino, entry, &meta.sparse, &self.in_data, &mut self.buf)?;
            self.report.bytes += size;
            self.since_commit += meta.data_len;
            return Ok(());
        }
        let mut offset = 0u64;
        loop {
            self.in_data.set(true);
            let n = read_full(entry, &mut self.buf);
            self.in_data.set(false);
            let n = n.map_err(|e| invalid(format!("{}: {e}", show(&meta.path))))?;
            if n == 0 {
                break;
            }
            if self.report.bytes + offset + n as u64 > max {
                return Err(too_big(max));
            }
            // Runs of zeros stay holes, as `cp --sparse` and GNU tar leave them.
            if self.buf[..n].iter().any(|b| *b != 0) {
                ws.write(ino, offset, &self.buf[..n])?;
                self.since_commit += n as u64;
            }
            offset += n as u64;
        }
        if ws.getattr(ino)?.size != offset {
            let size = SetAttr {
                size: Some(offset),
                ..Default::default()
            };
            ws.setattr(ino, &size)?;
        }
        self.report.bytes += offset;
        Ok(())
    }
}

/// What one entry costs the overlay until the next commit (its inode, its name twice, the
/// maps holding them), counted with the file data, so an archive of a million entries
/// without data commits every few tens of thousands of them.
pub(super) const ENTRY_OVERLAY_BYTES: u64 = 4096;

pub(super) fn too_big(max: u64) -> ArchiveError {
    invalid(format!(
        "the archive's files hold more than {max} bytes, the most this import may take"
    ))
}

/// The archive as the tar reader sees it: every byte it reads that is not an entry's data
/// (headers, long names, PAX records, padding) counts against [`MAX_HEADER_BYTES`] until
/// the import loop takes the entry (and resets the count), so a giant header is refused
/// before it is held.
pub(super) struct HeaderGuard<R> {
    inner: R,
    in_data: std::rc::Rc<std::cell::Cell<bool>>,
    header_bytes: std::rc::Rc<std::cell::Cell<u64>>,
}

/// Owner first, then mode: a change of owner may clear setuid and setgid bits.
pub(super) fn set_owner_mode(
    ws: &Workspace,
    ino: u64,
    perm: u32,
    uid: u32,
    gid: u32,
) -> ArchiveResult<()> {
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

pub(super) fn set_mtime(ws: &Workspace, ino: u64, t: Timespec) -> ArchiveResult<()> {
    let times = SetAttr {
        atime: Some(TimeSet::At(t)),
        mtime: Some(TimeSet::At(t)),
        ..Default::default()
    };
    ws.setattr(ino, &times)?;
    Ok(())
}

pub(super) fn set_xattrs(
    ws: &Workspace,
    ino: u64,
    xattrs: &[(Vec<u8>, Vec<u8>)],
) -> ArchiveResult<()> {
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
pub(super) struct DirChain {
    path: Vec<u8>,
    /// Per name along `path`: where it ends in `path`, and its directory's inode.
    inos: Vec<(usize, u64)>,
}

/// A relative path without `.` components, leading `/` or trailing `/`; `..` is refused.
pub(super) fn clean_path(raw: &[u8]) -> ArchiveResult<Vec<u8>> {
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
pub(super) fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// `SEC[.FRACTION]` as PAX writes times.
pub(super) fn parse_pax_time(v: &[u8]) -> Option<Timespec> {
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
