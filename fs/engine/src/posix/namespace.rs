//! Operations on names: lookup, create, links, removal, rename, and listing a directory.

use crate::error::{FsError, FsResult};
use crate::format::keys::{self, Kind, ROOT_INO};
use crate::format::records::{self, DirSeq, FileKind, Inode, Timespec};

use super::types::*;
use super::{check_name, is_dot, Workspace};

impl Workspace {
    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        let mut st = self.state.lock();
        st.dir(parent)?;
        st.prefetch_dir(parent);
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        if name == b"." {
            return st.attr(parent);
        }
        if name == b".." {
            let p = st.inode(parent)?.parent;
            return st.attr(p);
        }
        let d = st.dirent(parent, name)?.ok_or(FsError::NotFound)?;
        st.attr(d.ino)
    }

    /// Creates a file, directory, symlink, FIFO, socket or device node.
    pub fn create(&self, parent: u64, name: &[u8], new: NewNode<'_>) -> FsResult<Attr> {
        check_name(name)?;
        if is_dot(name) {
            return Err(FsError::Exists);
        }
        let mut st = self.state.lock();
        let p = st.dir(parent)?;
        if st.dirent(parent, name)?.is_some() {
            return Err(FsError::Exists);
        }
        st.check_space(0)?;
        if st.limits.inodes.is_some_and(|q| st.sup.files >= q) {
            return Err(FsError::QuotaExceeded);
        }
        st.check_bytes_quota((name.len() + new.target.len()) as u64)?;
        if new.kind == FileKind::Symlink && (new.target.is_empty() || new.target.len() > 4095) {
            return Err(if new.target.is_empty() {
                FsError::NotFound
            } else {
                FsError::NameTooLong
            });
        }
        // symlink(2) takes a C string; only an archive could ask for one with a NUL in it.
        if new.kind == FileKind::Symlink && new.target.contains(&0) {
            return Err(FsError::Invalid("a symlink target holds a NUL byte"));
        }
        let ino = st.sup.next_ino;
        st.sup.next_ino += 1;
        st.sup.files += 1;
        st.sup.meta_bytes += new.target.len() as u64;
        let now = Timespec::now();
        let mut perm = new.perm & 0o7777;
        let mut gid = new.gid;
        // BSD group semantics on a setgid directory, as every Linux filesystem does.
        if p.perm & libc::S_ISGID != 0 {
            gid = p.gid;
            if new.kind == FileKind::Directory {
                perm |= libc::S_ISGID;
            }
        }
        let is_dir = new.kind == FileKind::Directory;
        let inode = Inode {
            kind: new.kind,
            perm,
            uid: new.uid,
            gid,
            nlink: if is_dir { 2 } else { 1 },
            size: if new.kind == FileKind::Symlink {
                new.target.len() as u64
            } else {
                0
            },
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            rdev: new.rdev,
            parent,
            next_cookie: if is_dir { FIRST_COOKIE } else { 0 },
            alloc_bytes: 0,
            target: new.target.to_vec(),
        };
        st.save(ino, inode);
        st.add_entry(parent, name, ino, new.kind)?;
        st.attr(ino)
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let i = self.state.lock().inode(ino)?;
        if i.kind != FileKind::Symlink {
            return Err(FsError::Invalid("not a symlink"));
        }
        Ok(i.target)
    }

    pub fn link(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> FsResult<Attr> {
        check_name(new_name)?;
        let mut st = self.state.lock();
        let mut i = st.inode(ino)?;
        if i.kind == FileKind::Directory {
            return Err(FsError::NotPermitted);
        }
        st.dir(new_parent)?;
        if is_dot(new_name) || st.dirent(new_parent, new_name)?.is_some() {
            return Err(FsError::Exists);
        }
        if i.nlink == 0 {
            return Err(FsError::NotFound);
        }
        if i.nlink >= LINK_MAX {
            return Err(FsError::TooManyLinks);
        }
        st.check_space(0)?;
        st.check_bytes_quota(new_name.len() as u64)?;
        i.nlink += 1;
        i.ctime = Timespec::now();
        let kind = i.kind;
        st.save(ino, i);
        st.add_entry(new_parent, new_name, ino, kind)?;
        st.attr(ino)
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        let mut st = self.state.lock();
        st.dir(parent)?;
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        let d = st.dirent(parent, name)?.ok_or(FsError::NotFound)?;
        if d.kind == FileKind::Directory {
            return Err(FsError::IsDir);
        }
        st.remove_entry(parent, name, &d)?;
        st.drop_link(d.ino)
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        let mut st = self.state.lock();
        st.dir(parent)?;
        match name {
            b"." => return Err(FsError::Invalid("rmdir of .")),
            b".." => return Err(FsError::NotEmpty),
            _ if name.len() > NAME_MAX => return Err(FsError::NameTooLong),
            _ => {}
        }
        let d = st.dirent(parent, name)?.ok_or(FsError::NotFound)?;
        if d.kind != FileKind::Directory {
            return Err(FsError::NotDir);
        }
        if !st.dir_is_empty(d.ino)? {
            return Err(FsError::NotEmpty);
        }
        st.remove_entry(parent, name, &d)?;
        st.drop_link(d.ino)
    }

    /// rename(2) with `RENAME_NOREPLACE` and `RENAME_EXCHANGE`.
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0 {
            return Err(FsError::Invalid("unsupported rename flags"));
        }
        if flags == RENAME_NOREPLACE | RENAME_EXCHANGE {
            return Err(FsError::Invalid("NOREPLACE and EXCHANGE together"));
        }
        check_name(new_name)?;
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        if is_dot(name) || is_dot(new_name) {
            return Err(FsError::Invalid("rename of . or .."));
        }
        let mut st = self.state.lock();
        st.dir(parent)?;
        st.dir(new_parent)?;
        let src = st.dirent(parent, name)?.ok_or(FsError::NotFound)?;
        let dst = st.dirent(new_parent, new_name)?;
        let src_dir = src.kind == FileKind::Directory;
        if src_dir && st.is_within(new_parent, src.ino)? {
            return Err(FsError::Invalid("cannot move a directory into itself"));
        }
        if flags & RENAME_EXCHANGE != 0 {
            let dst = dst.ok_or(FsError::NotFound)?;
            if dst.kind == FileKind::Directory && st.is_within(parent, dst.ino)? {
                return Err(FsError::Invalid("cannot move a directory into itself"));
            }
            if parent == new_parent && name == new_name {
                return Ok(());
            }
            return st.exchange(parent, name, &src, new_parent, new_name, &dst);
        }
        if dst.is_none() {
            st.check_bytes_quota(new_name.len().saturating_sub(name.len()) as u64)?;
        }
        if let Some(dst) = &dst {
            if flags & RENAME_NOREPLACE != 0 {
                return Err(FsError::Exists);
            }
            if dst.ino == src.ino {
                return Ok(()); // two links to one inode: POSIX says do nothing
            }
            match (src_dir, dst.kind == FileKind::Directory) {
                (false, true) => return Err(FsError::IsDir),
                (true, false) => return Err(FsError::NotDir),
                (true, true) if !st.dir_is_empty(dst.ino)? => return Err(FsError::NotEmpty),
                _ => {}
            }
            st.remove_entry(new_parent, new_name, dst)?;
            st.drop_link(dst.ino)?;
        }
        st.remove_entry(parent, name, &src)?;
        st.add_entry(new_parent, new_name, src.ino, src.kind)?;
        let mut moved = st.inode(src.ino)?;
        moved.ctime = Timespec::now();
        moved.parent = new_parent;
        st.save(src.ino, moved);
        Ok(())
    }

    /// Entries after `offset` (0 to start), "." and ".." first. `f` returns false when full.
    /// Offsets are per-entry cookies, so they stay valid while the directory changes.
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
        mut f: impl FnMut(DirEntry) -> bool,
    ) -> FsResult<()> {
        let mut st = self.state.lock();
        let dir = st.dir(ino)?;
        st.prefetch_dir(ino);
        if offset < 1
            && !f(DirEntry {
                name: b".".to_vec(),
                ino,
                kind: FileKind::Directory,
                offset: 1,
            })
        {
            return Ok(());
        }
        let parent = if ino == ROOT_INO {
            ROOT_INO
        } else {
            dir.parent
        };
        if offset < 2
            && !f(DirEntry {
                name: b"..".to_vec(),
                ino: parent,
                kind: FileKind::Directory,
                offset: 2,
            })
        {
            return Ok(());
        }
        let (_, end) = keys::kind_range(ino, Kind::DirSeq);
        let start = keys::dirseq(ino, (offset + 1).max(FIRST_COOKIE));
        st.scan(&start, &end, |k, v| {
            let cookie = u64::from_be_bytes(k[9..17].try_into().expect("dirseq key"));
            let e: DirSeq = records::decode(v)?;
            Ok(f(DirEntry {
                name: e.name,
                ino: e.ino,
                kind: e.kind,
                offset: cookie,
            }))
        })
    }
}
