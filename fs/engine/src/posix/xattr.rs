//! Extended attributes: each held in the inode's own tree keys, counted in the bytes quota.

use crate::error::{FsError, FsResult};
use crate::format::keys::{self, Kind};
use crate::format::records::Timespec;

use super::types::*;
use super::Workspace;

impl Workspace {
    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        if name.is_empty() || name.len() > XATTR_NAME_MAX {
            return Err(FsError::Range);
        }
        if value.len() > XATTR_SIZE_MAX {
            return Err(FsError::Range);
        }
        let mut st = self.state.lock();
        let mut i = st.inode(ino)?;
        let key = keys::xattr(ino, name);
        let old = st.get(&key)?.map(|v| name.len() + v.len());
        if flags & libc::XATTR_CREATE != 0 && old.is_some() {
            return Err(FsError::Exists);
        }
        if flags & libc::XATTR_REPLACE != 0 && old.is_none() {
            return Err(FsError::NoAttr);
        }
        st.check_space(value.len())?;
        let new = (name.len() + value.len()) as u64;
        let old = old.unwrap_or(0) as u64;
        st.check_bytes_quota(new.saturating_sub(old))?;
        st.sup.meta_bytes = st.sup.meta_bytes.saturating_sub(old) + new;
        st.kv.insert(key, Some(value.to_vec()));
        i.ctime = Timespec::now();
        st.save(ino, i);
        Ok(())
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        let st = self.state.lock();
        st.inode(ino)?;
        if name.len() > XATTR_NAME_MAX {
            return Err(FsError::Range);
        }
        st.get(&keys::xattr(ino, name))?.ok_or(FsError::NoAttr)
    }

    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<Vec<u8>>> {
        let st = self.state.lock();
        st.inode(ino)?;
        let (start, end) = keys::kind_range(ino, Kind::Xattr);
        Ok(st
            .keys_in(&start, &end)?
            .into_iter()
            .map(|k| k[9..].to_vec())
            .collect())
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        let mut st = self.state.lock();
        let mut i = st.inode(ino)?;
        let key = keys::xattr(ino, name);
        let Some(value) = st.get(&key)? else {
            return Err(FsError::NoAttr);
        };
        st.sup.meta_bytes = st
            .sup
            .meta_bytes
            .saturating_sub((name.len() + value.len()) as u64);
        st.kv.insert(key, None);
        i.ctime = Timespec::now();
        st.save(ino, i);
        Ok(())
    }
}
