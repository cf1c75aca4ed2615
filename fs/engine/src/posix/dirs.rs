//! Directory entries in the overlay: names added, removed and exchanged, link counts, and an
//! inode's end once no name and no kernel reference is left.

use std::collections::HashSet;

use crate::error::{FsError, FsResult};
use crate::format::keys::{self, Decoded, ROOT_INO};
use crate::format::records::{self, DirSeq, Dirent, FileKind, Timespec};

use super::overlay::State;
use super::types::*;

impl State {
    pub(super) fn add_entry(
        &mut self,
        parent: u64,
        name: &[u8],
        ino: u64,
        kind: FileKind,
    ) -> FsResult<()> {
        let mut p = self.inode(parent)?;
        let cookie = p.next_cookie.max(FIRST_COOKIE);
        p.next_cookie = cookie + 1;
        let now = Timespec::now();
        p.mtime = now;
        p.ctime = now;
        if kind == FileKind::Directory {
            p.nlink += 1;
        }
        self.save(parent, p);
        self.sup.meta_bytes += name.len() as u64;
        self.kv.insert(
            keys::dirent(parent, name),
            Some(records::encode(&Dirent { ino, kind, cookie })),
        );
        self.kv.insert(
            keys::dirseq(parent, cookie),
            Some(records::encode(&DirSeq {
                ino,
                kind,
                name: name.to_vec(),
            })),
        );
        Ok(())
    }

    pub(super) fn remove_entry(&mut self, parent: u64, name: &[u8], d: &Dirent) -> FsResult<()> {
        let mut p = self.inode(parent)?;
        let now = Timespec::now();
        p.mtime = now;
        p.ctime = now;
        if d.kind == FileKind::Directory {
            p.nlink -= 1;
        }
        self.save(parent, p);
        self.sup.meta_bytes = self.sup.meta_bytes.saturating_sub(name.len() as u64);
        self.kv.insert(keys::dirent(parent, name), None);
        self.kv.insert(keys::dirseq(parent, d.cookie), None);
        Ok(())
    }

    /// RENAME_EXCHANGE: each name now names the other's inode; cookies stay where they were.
    pub(super) fn exchange(
        &mut self,
        p1: u64,
        n1: &[u8],
        d1: &Dirent,
        p2: u64,
        n2: &[u8],
        d2: &Dirent,
    ) -> FsResult<()> {
        for (parent, name, at, to) in [(p1, n1, d1, d2), (p2, n2, d2, d1)] {
            let entry = Dirent {
                ino: to.ino,
                kind: to.kind,
                cookie: at.cookie,
            };
            self.kv
                .insert(keys::dirent(parent, name), Some(records::encode(&entry)));
            let seq = DirSeq {
                ino: to.ino,
                kind: to.kind,
                name: name.to_vec(),
            };
            self.kv
                .insert(keys::dirseq(parent, at.cookie), Some(records::encode(&seq)));
        }
        let now = Timespec::now();
        for (moved, from, to) in [(d1, p1, p2), (d2, p2, p1)] {
            let mut i = self.inode(moved.ino)?;
            i.ctime = now;
            if from != to {
                i.parent = to;
            }
            self.save(moved.ino, i);
            if moved.kind == FileKind::Directory && from != to {
                let mut f = self.inode(from)?;
                f.nlink -= 1;
                self.save(from, f);
                let mut t = self.inode(to)?;
                t.nlink += 1;
                self.save(to, t);
            }
        }
        for p in [p1, p2] {
            let mut i = self.inode(p)?;
            i.mtime = now;
            i.ctime = now;
            self.save(p, i);
        }
        Ok(())
    }

    /// Drops one link to `ino` (all of them for a directory); frees it when none remain and
    /// no handle is open.
    pub(super) fn drop_link(&mut self, ino: u64) -> FsResult<()> {
        let mut i = self.inode(ino)?;
        i.nlink = if i.kind == FileKind::Directory {
            0
        } else {
            i.nlink - 1
        };
        i.ctime = Timespec::now();
        let gone = i.nlink == 0;
        self.save(ino, i);
        if gone {
            if self.kernel_refs.contains_key(&ino) {
                self.kv.insert(keys::orphan(ino), Some(Vec::new()));
            } else {
                self.purge(ino)?;
            }
        }
        Ok(())
    }

    /// Deletes every record of `ino`.
    pub(super) fn purge(&mut self, ino: u64) -> FsResult<()> {
        let i = self.inode(ino)?;
        if i.kind == FileKind::Regular {
            self.sup.logical_bytes -= i.size;
        }
        self.released_bytes += i.alloc_bytes;
        self.sup.files -= 1;
        self.sup.meta_bytes = self.sup.meta_bytes.saturating_sub(i.target.len() as u64);
        let (start, end) = keys::inode_range(ino);
        for k in self.keys_in(&start, &end)? {
            if let Some(Decoded::Xattr(_, name)) = keys::decode(&k) {
                let value = self.get(&k)?.map_or(0, |v| v.len());
                self.sup.meta_bytes = self
                    .sup
                    .meta_bytes
                    .saturating_sub((name.len() + value) as u64);
            }
            self.kv.insert(k, None);
        }
        self.kv.insert(keys::inode(ino), None);
        self.inodes.remove(&ino);
        let dead: Vec<_> = self
            .chunks
            .range((ino, 0)..=(ino, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in dead {
            self.drop_buffer(k);
        }
        if self.get(&keys::orphan(ino))?.is_some() {
            self.kv.insert(keys::orphan(ino), None);
        }
        Ok(())
    }

    /// Whether `dir` is `ancestor` or lies below it.
    pub(super) fn is_within(&self, mut dir: u64, ancestor: u64) -> FsResult<bool> {
        // Any depth; a directory reached twice is a loop, which only a corrupt store holds.
        let mut seen = HashSet::new();
        loop {
            if dir == ancestor {
                return Ok(true);
            }
            if dir == ROOT_INO {
                return Ok(false);
            }
            if !seen.insert(dir) {
                return Err(FsError::corrupt(format!("a directory loop through {dir}")));
            }
            dir = self.inode(dir)?.parent;
        }
    }
}
