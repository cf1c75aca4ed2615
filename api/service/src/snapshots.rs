//! Snapshots: a workspace's committed state kept under a name, to restore or mount read-only
//! later, and the diff between two committed states. A snapshot copies a root pointer; a diff
//! skips the subtrees both states share.

use chaserfs_engine::{roots, RootId};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::index::{key, put, SNAPSHOT, WORKSPACE};
use crate::model::*;
use crate::names::{check_name_format, named, short_id};
use crate::service::Service;

/// Most changes one diff page lists.
pub const DIFF_LIMIT_MAX: usize = 100_000;
const DIFF_LIMIT_DEFAULT: usize = 10_000;
/// About the most path bytes one diff page holds: a page of paths thousands of directories
/// deep stays this size, and the next page goes on.
const DIFF_PAGE_BYTES: usize = 16 << 20;

fn kind_name(k: chaserfs_engine::FileKind) -> &'static str {
    use chaserfs_engine::FileKind::*;
    match k {
        Regular => "file",
        Directory => "directory",
        Symlink => "symlink",
        Fifo => "fifo",
        Socket => "socket",
        CharDevice => "char_device",
        BlockDevice => "block_device",
    }
}

impl Service {
    pub fn create_snapshot(
        &self,
        account: &str,
        selector: &str,
        req: CreateSnapshot,
    ) -> ApiResult<SnapshotRecord> {
        if let Some(n) = &req.name {
            check_name_format(n)?;
        }
        self.with_idle_workspace(account, selector, req.force, false, |ix, ws| {
            let existing = ix.snapshots.get(&ws.id).map(Vec::as_slice).unwrap_or(&[]);
            let taken = |n: &str| {
                let wanted = n.to_lowercase();
                existing.iter().any(|s| named(&s.name, &wanted))
            };
            let name = match &req.name {
                Some(n) if taken(n) => {
                    return Err(ApiError::conflict(
                        "snapshot_name_taken",
                        format!("the workspace already has a snapshot named {n:?}"),
                    ))
                }
                Some(n) => n.clone(),
                None => loop {
                    let n = format!("snap-{}", short_id());
                    if !taken(&n) {
                        break n;
                    }
                },
            };
            // The workspace is not open, so its committed state cannot move under us.
            let (root, sup) = roots::stats(&self.store, RootId::Workspace(ws.id))?;
            let snap = SnapshotRecord {
                id: Uuid::now_v7(),
                workspace_id: ws.id,
                name,
                root_hash: root.root.to_hex(),
                files: sup.files,
                logical_bytes: sup.logical_bytes,
                metadata_bytes: sup.meta_bytes,
                created_at: now(),
            };
            // A snapshot keeps its bytes after the workspace moves on: it counts.
            self.check_room(ix, account, 0, sup.used_bytes())?;
            roots::snapshot(
                &self.store,
                ws.id,
                snap.id,
                &[put(SNAPSHOT, snap.id, &snap)],
            )?;
            ix.snapshots.entry(ws.id).or_default().push(snap.clone());
            Ok(snap)
        })
    }

    pub fn list_snapshots(&self, account: &str, selector: &str) -> ApiResult<Vec<SnapshotRecord>> {
        let ix = self.lock();
        let ws = ix.resolve(account, selector)?;
        Ok(ix.snapshots.get(&ws.id).cloned().unwrap_or_default())
    }

    /// Points the workspace back at a snapshot's state; the snapshot stays.
    pub fn restore_snapshot(
        &self,
        account: &str,
        selector: &str,
        snapshot: &str,
        force: bool,
    ) -> ApiResult<WorkspaceView> {
        let (rec, snaps) =
            self.with_idle_workspace(account, selector, force, false, |ix, mut ws| {
                let snap = ix.find_snapshot(&ws, snapshot)?.clone();
                ws.updated_at = now();
                roots::restore(&self.store, ws.id, snap.id, &[put(WORKSPACE, ws.id, &ws)])?;
                ix.put_workspace(ws.clone());
                let n = ix.snapshot_count(ws.id);
                Ok((ws, n))
            })?;
        self.view(&rec, snaps)
    }

    pub fn delete_snapshot(&self, account: &str, selector: &str, snapshot: &str) -> ApiResult<()> {
        {
            let mut ix = self.lock();
            let ws = ix.resolve(account, selector)?.clone();
            self.decide(&mut ix, |ix| {
                let snap = ix.find_snapshot(&ws, snapshot)?.id;
                if self.store.is_open(snap) {
                    return Err(ApiError::conflict(
                        "snapshot_mounted",
                        format!("snapshot {snap} is mounted by a session; end it first"),
                    ));
                }
                roots::delete(
                    &self.store,
                    &[RootId::Snapshot(snap)],
                    &[(key(SNAPSHOT, snap), None)],
                )?;
                if let Some(list) = ix.snapshots.get_mut(&ws.id) {
                    list.retain(|s| s.id != snap);
                }
                Ok(())
            })?;
        }
        self.wake_gc();
        Ok(())
    }

    /// The paths added, removed and modified from one committed state of a workspace to
    /// another (snapshots, or `current`), found by skipping the subtrees both share.
    pub fn diff(&self, account: &str, selector: &str, q: &DiffQuery) -> ApiResult<WorkspaceDiff> {
        let limit = q.limit.unwrap_or(DIFF_LIMIT_DEFAULT);
        if !(1..=DIFF_LIMIT_MAX).contains(&limit) {
            return Err(ApiError::bad(
                "invalid_limit",
                format!("limit is 1 to {DIFF_LIMIT_MAX}"),
            ));
        }
        let (from, to) = {
            let mut ix = self.lock();
            let ws = self.resolve_settled(&mut ix, account, selector)?;
            let state = |sel: &str| -> ApiResult<RootId> {
                if sel == "current" {
                    return Ok(RootId::Workspace(ws.id));
                }
                Ok(RootId::Snapshot(ix.find_snapshot(&ws, sel)?.id))
            };
            (
                state(&q.from)?,
                state(q.to.as_deref().unwrap_or("current"))?,
            )
        };
        let root = |id: RootId| -> ApiResult<chaserfs_engine::Hash> {
            Ok(self
                .store
                .get_root(id)?
                .ok_or_else(|| ApiError::not_found("snapshot_not_found", "deleted meanwhile"))?
                .root)
        };
        let (from, to) = (root(from)?, root(to)?);
        let bad_cursor = |why: &str| ApiError::bad("invalid_cursor", why.to_string());
        let after = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => Some(
                chaserfs_engine::ops::diff::Cursor::decode(c)
                    .ok_or_else(|| bad_cursor("cursor is not one this API returned"))?,
            ),
        };
        let page = chaserfs_engine::ops::diff::diff(
            &self.store,
            &from,
            &to,
            after.as_ref(),
            limit,
            DIFF_PAGE_BYTES,
        )
        .map_err(|e| match e {
            chaserfs_engine::FsError::Invalid(why) => bad_cursor(why),
            e => e.into(),
        })?;
        let changes = page
            .entries
            .into_iter()
            .map(|c| PathChange {
                path: String::from_utf8_lossy(&c.path).into_owned(),
                change: match c.change {
                    chaserfs_engine::ops::diff::Change::Added => ChangeKind::Added,
                    chaserfs_engine::ops::diff::Change::Removed => ChangeKind::Removed,
                    chaserfs_engine::ops::diff::Change::Modified => ChangeKind::Modified,
                },
                kind: kind_name(c.kind).into(),
                size: c.size,
            })
            .collect();
        Ok(WorkspaceDiff {
            from_root: from.to_hex(),
            to_root: to.to_hex(),
            changes,
            truncated: page.next.is_some(),
            next_cursor: page.next.map(|c| c.encode()),
        })
    }
}
