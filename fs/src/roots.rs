//! Root pointers: create, clone, snapshot, restore and delete. Each is one small RocksDB write,
//! O(1) in the size of the state.

use std::sync::Arc;

use crate::error::{FsError, FsResult};
use crate::keys::{self, ROOT_INO};
use crate::records::{self, FileKind, Inode, Super, Timespec};
use crate::store::{RootId, RootRecord, Store};
use crate::tree::{self, Changes};

/// Creates a workspace holding an empty root directory (mode 0755, owned by root).
pub fn create_workspace(store: &Arc<Store>, id: uuid::Uuid) -> FsResult<RootRecord> {
    let (empty, empty_bytes) = tree::empty();
    let now = Timespec::now();
    let root_dir = Inode {
        kind: FileKind::Directory,
        perm: 0o755,
        uid: 0,
        gid: 0,
        nlink: 2,
        size: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        rdev: 0,
        parent: ROOT_INO,
        next_cookie: 3,
        alloc_bytes: 0,
        target: Vec::new(),
    };
    let sup = Super {
        next_ino: ROOT_INO + 1,
        files: 1,
        logical_bytes: 0,
    };
    let changes: Changes = [
        (keys::super_key(), Some(records::encode(&sup))),
        (keys::inode(ROOT_INO), Some(records::encode(&root_dir))),
    ]
    .into();
    // The empty tree must be readable for `apply` to start from it.
    store.nodes.insert(
        empty,
        Arc::new(tree::Node::Leaf(Vec::new())),
        empty_bytes.len(),
    );
    let (root, nodes) = tree::apply(store, &empty, &changes)?;
    let record = RootRecord {
        root,
        generation: 1,
        committed_at: now,
    };
    store.create_root(RootId::Workspace(id), &record, &nodes)?;
    Ok(record)
}

/// A new workspace `dst` with `src`'s committed state. Changes to either stay their own.
pub fn clone_workspace(store: &Store, src: uuid::Uuid, dst: uuid::Uuid) -> FsResult<RootRecord> {
    store.copy_root(RootId::Workspace(src), RootId::Workspace(dst), false)
}

/// An immutable snapshot `snap` of workspace `ws`'s committed state.
pub fn snapshot(store: &Store, ws: uuid::Uuid, snap: uuid::Uuid) -> FsResult<RootRecord> {
    store.copy_root(RootId::Workspace(ws), RootId::Snapshot(snap), false)
}

/// Points workspace `ws` back at snapshot `snap`. Refused while the workspace is open.
pub fn restore(store: &Store, ws: uuid::Uuid, snap: uuid::Uuid) -> FsResult<RootRecord> {
    if store.is_open(ws) {
        return Err(FsError::Busy(format!("workspace {ws} is open")));
    }
    store.copy_root(RootId::Snapshot(snap), RootId::Workspace(ws), true)
}

/// Deletes a workspace's or snapshot's root pointer; its data goes at the next collection.
pub fn delete(store: &Store, id: RootId) -> FsResult<()> {
    if let RootId::Workspace(ws) = id {
        if store.is_open(ws) {
            return Err(FsError::Busy(format!("workspace {ws} is open")));
        }
    }
    store.delete_root(id)
}
