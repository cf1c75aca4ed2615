//! Root pointers: create, clone, snapshot, restore and delete. Each is one small RocksDB write,
//! O(1) in the size of the state.

use std::sync::Arc;

use crate::error::{FsError, FsResult};
use crate::format::keys::{self, ROOT_INO};
use crate::format::records::{self, FileKind, Inode, Super, Timespec};
use crate::format::roots::{MetaOp, RootId, RootRecord};
use crate::store::Store;
use crate::tree::{self, Changes};

/// Creates a workspace holding an empty root directory (mode 0755, owned by root).
pub fn create_workspace(
    store: &Arc<Store>,
    id: uuid::Uuid,
    meta: &[MetaOp],
) -> FsResult<RootRecord> {
    let (empty, _) = tree::empty();
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
        meta_bytes: 0,
    };
    let changes: Changes = [
        (keys::super_key(), Some(records::encode(&sup))),
        (keys::inode(ROOT_INO), Some(records::encode(&root_dir))),
    ]
    .into();
    let (root, nodes) = tree::apply(store, &empty, &changes)?;
    let record = RootRecord {
        root,
        generation: 1,
        committed_at: now,
    };
    store.create_root(RootId::Workspace(id), &record, &nodes, meta)?;
    Ok(record)
}

/// A new workspace `dst` with `src`'s committed state. Changes to either stay their own.
pub fn clone_workspace(
    store: &Store,
    src: uuid::Uuid,
    dst: uuid::Uuid,
    meta: &[MetaOp],
) -> FsResult<RootRecord> {
    fork_workspace(store, src, &[dst], meta)
}

/// Many clones of `src` in one write, all or none (fork N).
pub fn fork_workspace(
    store: &Store,
    src: uuid::Uuid,
    dsts: &[uuid::Uuid],
    meta: &[MetaOp],
) -> FsResult<RootRecord> {
    let dsts: Vec<RootId> = dsts.iter().map(|d| RootId::Workspace(*d)).collect();
    store.copy_root(RootId::Workspace(src), &dsts, false, meta)
}

/// An immutable snapshot `snap` of workspace `ws`'s committed state.
pub fn snapshot(
    store: &Store,
    ws: uuid::Uuid,
    snap: uuid::Uuid,
    meta: &[MetaOp],
) -> FsResult<RootRecord> {
    store.copy_root(
        RootId::Workspace(ws),
        &[RootId::Snapshot(snap)],
        false,
        meta,
    )
}

/// Points workspace `ws` back at snapshot `snap`. Refused while the workspace is open.
pub fn restore(
    store: &Store,
    ws: uuid::Uuid,
    snap: uuid::Uuid,
    meta: &[MetaOp],
) -> FsResult<RootRecord> {
    if store.is_open(ws) {
        return Err(FsError::Busy(format!("workspace {ws} is open")));
    }
    store.copy_root(RootId::Snapshot(snap), &[RootId::Workspace(ws)], true, meta)
}

/// Deletes workspaces' and snapshots' root pointers, all or none; their data goes at the next
/// collection. Refused while one of the workspaces is open.
pub fn delete(store: &Store, ids: &[RootId], meta: &[MetaOp]) -> FsResult<()> {
    for id in ids {
        if let RootId::Workspace(ws) = id {
            if store.is_open(*ws) {
                return Err(FsError::Busy(format!("workspace {ws} is open")));
            }
        }
    }
    store.delete_roots(ids, meta)
}

/// The committed root of a workspace or snapshot with its files and logical bytes.
pub fn stats(store: &Store, id: RootId) -> FsResult<(RootRecord, Super)> {
    let rec = store.get_root(id)?.ok_or(FsError::NotFound)?;
    let sup = tree::get(store, &rec.root, &keys::super_key())?
        .ok_or_else(|| FsError::corrupt("state without a super record"))?;
    Ok((rec, Super::decode(&sup)?.0))
}
