//! Records in the store (the `meta` column family: a prefix byte and the id, JSON) and the
//! in-memory index over them that selectors, listings and limit checks read. The index changes
//! only with the write it goes with, under the service's lock.

use std::collections::{HashMap, HashSet};

use chaserfs_engine::{MetaOp, Store};
use serde::Deserialize;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::model::{SessionRecord, SnapshotRecord, WorkspaceRecord, WorkspaceStatus};
use crate::names::{check_name_format, named, short_id, RESERVED_NAMES};

/// Each kind of record's key prefix; the id follows it.
pub(crate) const WORKSPACE: u8 = b'W';
pub(crate) const SNAPSHOT: u8 = b'P';
pub(crate) const SESSION: u8 = b'S';

pub(crate) fn key(prefix: u8, id: Uuid) -> Vec<u8> {
    let mut k = vec![prefix];
    k.extend_from_slice(id.as_bytes());
    k
}

/// A record written as JSON, for a batch.
pub(crate) fn put<T: serde::Serialize>(prefix: u8, id: Uuid, rec: &T) -> MetaOp {
    (
        key(prefix, id),
        Some(serde_json::to_vec(rec).expect("records encode")),
    )
}

/// Every record of one kind, as stored.
pub(crate) fn scan<T: for<'de> Deserialize<'de>>(store: &Store, prefix: u8) -> ApiResult<Vec<T>> {
    store
        .meta_scan(&[prefix])?
        .into_iter()
        .map(|(_, v)| {
            serde_json::from_slice(&v).map_err(|e| ApiError::internal(format!("record: {e}")))
        })
        .collect()
}

/// Every record, indexed for selectors, plus which workspaces a slow operation holds.
#[derive(Default)]
pub(crate) struct Index {
    pub(crate) workspaces: HashMap<Uuid, WorkspaceRecord>,
    /// (account, lowercased name) -> workspace
    names: HashMap<(String, String), Uuid>,
    /// Per workspace, in creation order.
    pub(crate) snapshots: HashMap<Uuid, Vec<SnapshotRecord>>,
    pub(crate) sessions: HashMap<Uuid, SessionRecord>,
    /// Workspaces a session start or end, or an import, is working on.
    pub(crate) busy: HashSet<Uuid>,
    /// Per account: (workspaces, of which importing), kept with `workspaces` so a limit check
    /// costs no scan.
    held: HashMap<String, (u64, u64)>,
}

fn name_key(account: &str, name: &str) -> (String, String) {
    (account.to_string(), name.to_lowercase())
}

impl Index {
    pub(crate) fn put_workspace(&mut self, rec: WorkspaceRecord) {
        if let Some(old) = self.workspaces.remove(&rec.id) {
            self.forget(&old);
        }
        if let Some(n) = &rec.name {
            self.names.insert(name_key(&rec.account, n), rec.id);
        }
        let held = self.held.entry(rec.account.clone()).or_default();
        held.0 += 1;
        held.1 += u64::from(rec.status == WorkspaceStatus::Importing);
        self.workspaces.insert(rec.id, rec);
    }

    pub(crate) fn remove_workspace(&mut self, id: Uuid) {
        if let Some(old) = self.workspaces.remove(&id) {
            self.forget(&old);
        }
        self.snapshots.remove(&id);
    }

    /// Drops what the name index and the counts hold of a workspace record.
    fn forget(&mut self, old: &WorkspaceRecord) {
        if let Some(n) = &old.name {
            let k = name_key(&old.account, n);
            if self.names.get(&k) == Some(&old.id) {
                self.names.remove(&k);
            }
        }
        if let Some(held) = self.held.get_mut(&old.account) {
            held.0 -= 1;
            held.1 -= u64::from(old.status == WorkspaceStatus::Importing);
        }
    }

    /// (workspaces, of which importing) of an account.
    pub(crate) fn held_by(&self, account: &str) -> (u64, u64) {
        self.held.get(account).copied().unwrap_or_default()
    }

    /// Applies a record another host wrote (cluster mode; `None`: deleted).
    pub(crate) fn apply(&mut self, key: &[u8], value: Option<&[u8]>) -> ApiResult<()> {
        fn json<T: for<'de> Deserialize<'de>>(v: &[u8]) -> ApiResult<T> {
            serde_json::from_slice(v).map_err(|e| ApiError::internal(format!("record: {e}")))
        }
        let Some((&prefix, id)) = key.split_first() else {
            return Ok(());
        };
        let Ok(id) = Uuid::from_slice(id) else {
            return Ok(());
        };
        match (prefix, value) {
            (WORKSPACE, Some(v)) => self.put_workspace(json(v)?),
            (WORKSPACE, None) => self.remove_workspace(id),
            (SNAPSHOT, Some(v)) => {
                let snap: SnapshotRecord = json(v)?;
                let list = self.snapshots.entry(snap.workspace_id).or_default();
                list.retain(|s| s.id != snap.id);
                list.push(snap);
                list.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
            }
            (SNAPSHOT, None) => {
                for list in self.snapshots.values_mut() {
                    list.retain(|s| s.id != id);
                }
            }
            (SESSION, Some(v)) => {
                self.sessions.insert(id, json(v)?);
            }
            (SESSION, None) => {
                self.sessions.remove(&id);
            }
            _ => {}
        }
        Ok(())
    }

    /// A name (case-insensitive) or UUID, inside the caller's account only.
    pub(crate) fn resolve(&self, account: &str, selector: &str) -> ApiResult<&WorkspaceRecord> {
        let by_name = self
            .names
            .get(&name_key(account, selector))
            .and_then(|id| self.workspaces.get(id));
        let by_id = Uuid::parse_str(selector)
            .ok()
            .and_then(|id| self.workspaces.get(&id))
            .filter(|w| w.account == account);
        match (by_name, by_id) {
            (Some(a), Some(b)) if a.id != b.id => Err(ApiError::conflict(
                "workspace_name_ambiguous",
                format!(
                    "{selector:?} is the name of workspace {} and the id of another; \
                     select by the other's id or rename one",
                    a.id
                ),
            )),
            (Some(w), _) | (None, Some(w)) => Ok(w),
            (None, None) => Err(ApiError::not_found(
                "workspace_not_found",
                format!("no workspace {selector:?}"),
            )),
        }
    }

    /// Checks `name` is well formed, not reserved and free in the account.
    pub(crate) fn check_name(
        &self,
        account: &str,
        name: &str,
        except: Option<Uuid>,
    ) -> ApiResult<()> {
        check_name_format(name)?;
        if RESERVED_NAMES.iter().any(|r| r.eq_ignore_ascii_case(name)) {
            return Err(ApiError::bad(
                "name_reserved",
                format!("{name:?} is reserved by the API's paths"),
            ));
        }
        match self.names.get(&name_key(account, name)) {
            Some(id) if Some(*id) != except => Err(ApiError::conflict(
                "workspace_name_taken",
                format!("a workspace is already named {name:?}"),
            )),
            _ => Ok(()),
        }
    }

    /// `preferred` if it is a free, valid name, else a fresh `ws-xxxxxxxx`.
    pub(crate) fn pick_name(&self, account: &str, preferred: Option<&str>) -> String {
        if let Some(p) = preferred {
            if self.check_name(account, p, None).is_ok() {
                return p.to_string();
            }
        }
        loop {
            let n = format!("ws-{}", short_id());
            if !self.names.contains_key(&name_key(account, &n)) {
                return n;
            }
        }
    }

    /// The name given (checked) or a generated one.
    pub(crate) fn name_for(&self, account: &str, given: Option<String>) -> ApiResult<String> {
        match given {
            Some(n) => {
                self.check_name(account, &n, None)?;
                Ok(n)
            }
            None => Ok(self.pick_name(account, None)),
        }
    }

    pub(crate) fn snapshot_count(&self, ws: Uuid) -> u64 {
        self.snapshots.get(&ws).map_or(0, |s| s.len() as u64)
    }

    pub(crate) fn find_snapshot(
        &self,
        ws: &WorkspaceRecord,
        selector: &str,
    ) -> ApiResult<&SnapshotRecord> {
        let list = self.snapshots.get(&ws.id).map(Vec::as_slice).unwrap_or(&[]);
        let id = Uuid::parse_str(selector).ok();
        let wanted = selector.to_lowercase();
        list.iter()
            .find(|s| named(&s.name, &wanted))
            .or_else(|| list.iter().find(|s| Some(s.id) == id))
            .ok_or_else(|| {
                ApiError::not_found(
                    "snapshot_not_found",
                    format!("workspace {} has no snapshot {selector:?}", ws.id),
                )
            })
    }

    /// Refuses changes while a slow operation holds the workspace.
    pub(crate) fn check_not_busy(&self, ws: &WorkspaceRecord) -> ApiResult<()> {
        if ws.status == WorkspaceStatus::Importing {
            return Err(ApiError::conflict(
                "workspace_importing",
                "the workspace is being imported; retry when its status is ready or failed",
            ));
        }
        if self.busy.contains(&ws.id) {
            return Err(ApiError::conflict(
                "workspace_busy",
                "a session is starting or ending on this workspace; retry shortly",
            ));
        }
        Ok(())
    }
}
