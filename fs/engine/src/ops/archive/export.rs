//! A committed state written as a tar stream, with one path and one readdir position per
//! directory in memory, whatever the tree's depth and width.

use std::collections::HashMap;
use std::io::{Read, Write};

use crate::error::FsError;
use crate::format::keys::ROOT_INO;
use crate::format::records::FileKind;
use crate::posix::{Attr, Workspace};

use super::{invalid, ArchiveError, ArchiveReport, ArchiveResult, MAX_HEADER_BYTES, PIECE};

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

pub(super) struct Exporter<'a, W: Write> {
    ws: &'a Workspace,
    tar: tar::Builder<W>,
    report: ArchiveReport,
    links: FirstLinks,
}

/// The first path written of each inode with several names, for its later link entries,
/// until its last name is written. Paths are kept up to a budget; past it, the directory and
/// name, and the path is found again by climbing the directories (slower, but memory stays
/// bounded at any depth).
#[derive(Default)]
pub(super) struct FirstLinks {
    /// Inode -> (its first path, names still to come).
    paths: HashMap<u64, (Vec<u8>, u32)>,
    path_bytes: usize,
    /// Inode -> (directory, name, names still to come).
    places: HashMap<u64, (u64, Vec<u8>, u32)>,
}

pub(super) const FIRST_LINK_PATH_BYTES: usize = 64 << 20;

/// Longest name the tar header's own fields hold.
pub(super) const HEADER_NAME_MAX: usize = 100;

/// What the header names: `name` itself when it fits, else a placeholder, with `name` in the
/// PAX record `key` (`path` or `linkpath`), which every reader prefers. The tar crate's GNU
/// long names would otherwise be used, and they cannot carry a name whose first bytes are not
/// UTF-8 (Linux names are bytes).
pub(super) fn header_name(
    pax: &mut Vec<(String, Vec<u8>)>,
    key: &str,
    name: &[u8],
) -> std::path::PathBuf {
    if name.len() <= HEADER_NAME_MAX {
        return os_path(name.to_vec());
    }
    pax.push((key.into(), name.to_vec()));
    os_path(format!("pax-{key}").into_bytes())
}

pub(super) fn os_path(bytes: Vec<u8>) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStringExt;
    std::ffi::OsString::from_vec(bytes).into()
}

/// A file's contents from the engine, a piece at a time.
pub(super) struct FileReader<'a> {
    ws: &'a Workspace,
    ino: u64,
    offset: u64,
    size: u64,
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
        let mut pax = pax_records(ws, ino, &attr, report)?;
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
        check_header_bytes(&pax, path)?;
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
        let data = FileReader {
            ws,
            ino,
            offset: 0,
            size: attr.size,
        };
        append(tar, &mut header, &path_os, &attr, data, symlink_target)?;
        if attr.kind == FileKind::Regular {
            report.bytes += attr.size;
        }
        report.entries += 1;
        Ok(attr.kind == FileKind::Directory)
    }
}

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

/// The PAX records every entry has: its time to the nanosecond, its xattrs (a name that is not
/// UTF-8 cannot be a PAX key: skipped and counted).
fn pax_records(
    ws: &Workspace,
    ino: u64,
    attr: &Attr,
    report: &mut ArchiveReport,
) -> ArchiveResult<Vec<(String, Vec<u8>)>> {
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
    Ok(pax)
}

/// What import reads back into memory before the entry (the records, their length digits,
/// and up to 2 KiB of headers and padding) is refused there, so here.
fn check_header_bytes(pax: &[(String, Vec<u8>)], path: &[u8]) -> ArchiveResult<()> {
    let header_bytes: usize = pax.iter().map(|(k, v)| k.len() + v.len() + 32).sum();
    if header_bytes as u64 + 4096 > MAX_HEADER_BYTES {
        return Err(invalid(format!(
            "the headers of {} bytes of path under {} exceed the {MAX_HEADER_BYTES} an import \
             reads",
            path.len(),
            String::from_utf8_lossy(&path[..path.len().min(200)])
        )));
    }
    Ok(())
}

/// Appends an entry of a kind that is not a hard link: its header, then its data (`data` is
/// read for a regular file only).
fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    header: &mut tar::Header,
    path_os: &std::path::Path,
    attr: &Attr,
    data: FileReader<'_>,
    symlink_target: Option<std::path::PathBuf>,
) -> ArchiveResult<()> {
    let io = ArchiveError::Io;
    match attr.kind {
        FileKind::Directory => {
            header.set_entry_type(tar::EntryType::Directory);
            tar.append_data(header, path_os, std::io::empty())
                .map_err(io)?;
        }
        FileKind::Regular => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(attr.size);
            tar.append_data(header, path_os, data).map_err(io)?;
        }
        FileKind::Symlink => {
            header.set_entry_type(tar::EntryType::Symlink);
            let target = symlink_target.unwrap_or_default();
            tar.append_link(header, path_os, &target).map_err(io)?;
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
            tar.append_data(header, path_os, std::io::empty())
                .map_err(io)?;
        }
        FileKind::Socket => unreachable!("skipped above"),
    }
    Ok(())
}
