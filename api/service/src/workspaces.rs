//! Workspaces: creating, cloning and forking them, listing them, changing their name, quota
//! and template mode, and deleting them. A clone or a fork copies a root pointer, so it costs
//! the same whatever the workspace holds.

use chaserfs_engine::{roots, MetaOp, RootId};
use uuid::Uuid;

use crate::accounts::FORK_MAX;
use crate::error::{ApiError, ApiResult, ErrorKind};
use crate::index::{key, put, Index, SNAPSHOT, WORKSPACE};
use crate::model::*;
use crate::names::{check_image, check_name_format};
use crate::pages::{check_limit, decode_cursor, encode_cursor};
use crate::service::Service;
use crate::sessions::EndReason;

/// Longest name prefix of a fork: room is left for the `-N` suffix.
const FORK_PREFIX_MAX: usize = 56;
/// Most selectors one bulk delete takes.
pub const BULK_DELETE_MAX: usize = 1000;

/// What [`Service::copies`] makes: a clone, or a fork of many.
struct Copies {
    count: usize,
    names: CopyNames,
    template: bool,
    quota: Option<Quota>,
    /// Given by a clone request: must match the source's.
    session_type: Option<SessionType>,
    image: Option<String>,
}

enum CopyNames {
    /// The name given, or a generated one.
    Exact(Option<String>),
    /// PREFIX-1, PREFIX-2, ...: the lowest numbers free.
    Numbered(Option<String>),
}

impl Service {
    /// A workspace as served: its record with the committed state's figures.
    pub(crate) fn view(
        &self,
        rec: &WorkspaceRecord,
        snapshot_count: u64,
    ) -> ApiResult<WorkspaceView> {
        let (root, sup) =
            roots::stats(&self.store, RootId::Workspace(rec.id)).map_err(|e| match e {
                chaserfs_engine::FsError::NotFound => ApiError::not_found(
                    "workspace_not_found",
                    format!("workspace {} was deleted", rec.id),
                ),
                other => other.into(),
            })?;
        Ok(WorkspaceView {
            id: rec.id,
            name: rec.name.clone(),
            session_type: rec.session_type,
            status: rec.status,
            image: rec.image.clone(),
            template: rec.template,
            active_session_id: rec.active_session_id,
            last_session_id: rec.last_session_id,
            cloned_from: rec.cloned_from,
            github_repo: rec.github_repo.clone(),
            import_error: rec.import_error.clone(),
            quota: rec.quota,
            persistence: Persistence {
                root_hash: root.root.to_hex(),
                generation: root.generation,
                files: sup.files,
                logical_bytes: sup.logical_bytes,
                metadata_bytes: sup.meta_bytes,
                last_commit_at: rfc3339(root.committed_at),
                snapshot_count,
                created_at: rec.created_at.clone(),
                updated_at: rec.updated_at.clone(),
            },
        })
    }

    pub fn create_workspace(
        &self,
        account: &str,
        req: CreateWorkspace,
    ) -> ApiResult<WorkspaceView> {
        if let Some(source) = req.clone_from.clone() {
            return self.clone_workspace(account, &source, req);
        }
        let session_type = req.session_type.ok_or_else(|| {
            ApiError::bad(
                "session_type_required",
                "session_type (browser or sandbox) is required unless clone_from is given",
            )
        })?;
        check_image(&req.image, session_type)?;
        self.check_quota(account, req.quota.as_ref())?;
        let mut ix = self.lock();
        let rec = self.decide(&mut ix, |ix| {
            self.check_room(ix, account, 1, 0)?;
            let name = ix.name_for(account, req.name.clone())?;
            let rec = WorkspaceRecord {
                quota: req.quota.unwrap_or_default(),
                ..WorkspaceRecord::new(account, name, session_type, req.image.clone(), req.template)
            };
            roots::create_workspace(&self.store, rec.id, &[put(WORKSPACE, rec.id, &rec)])?;
            ix.put_workspace(rec.clone());
            Ok(rec)
        })?;
        drop(ix);
        self.view(&rec, 0)
    }

    /// A new workspace with the source's metadata and committed state: one root-pointer copy.
    fn clone_workspace(
        &self,
        account: &str,
        source: &str,
        req: CreateWorkspace,
    ) -> ApiResult<WorkspaceView> {
        let copies = Copies {
            count: 1,
            names: CopyNames::Exact(req.name),
            template: req.template,
            quota: req.quota,
            session_type: req.session_type,
            image: req.image,
        };
        let mut views = self.copies(account, source, copies)?;
        Ok(views.remove(0))
    }

    /// Fork N: `count` clones of a workspace made in one write, all or none, named
    /// `PREFIX-1`, `PREFIX-2`, ... (the lowest numbers free; PREFIX defaults to the source's
    /// name).
    pub fn fork_workspace(
        &self,
        account: &str,
        source: &str,
        req: ForkWorkspace,
    ) -> ApiResult<Vec<WorkspaceView>> {
        let count = req.count.unwrap_or(1);
        if !(1..=FORK_MAX).contains(&count) {
            return Err(ApiError::bad(
                "invalid_count",
                format!("count is 1 to {FORK_MAX}"),
            ));
        }
        let allowed = self.policy(account).forks_per_call;
        if count > allowed {
            return Err(ApiError::forbidden(
                "account_limit",
                format!("the operator allows this account at most {allowed} forks a call"),
            ));
        }
        if let Some(prefix) = &req.name {
            check_name_format(prefix)?;
            if prefix.chars().count() > FORK_PREFIX_MAX {
                return Err(ApiError::bad(
                    "invalid_name",
                    format!("a fork's name prefix is at most {FORK_PREFIX_MAX} characters"),
                ));
            }
        }
        let copies = Copies {
            count,
            names: CopyNames::Numbered(req.name),
            template: req.template,
            quota: req.quota,
            session_type: None,
            image: None,
        };
        self.copies(account, source, copies)
    }

    fn copies(&self, account: &str, source: &str, req: Copies) -> ApiResult<Vec<WorkspaceView>> {
        self.check_quota(account, req.quota.as_ref())?;
        let mut ix = self.lock();
        let src = self.resolve_settled(&mut ix, account, source)?;
        if let Some(active) = src.active_session_id {
            return Err(ApiError::conflict(
                "session_active",
                format!("cannot clone while the source has active session {active}"),
            ));
        }
        if req.session_type.is_some_and(|t| t != src.session_type) {
            return Err(ApiError::bad(
                "session_type_mismatch",
                "a clone inherits the source's session_type",
            ));
        }
        if req.image.is_some() && req.image != src.image {
            return Err(ApiError::bad(
                "image_mismatch",
                "a clone inherits the source's image",
            ));
        }
        let recs = self.decide(&mut ix, |ix| {
            let bytes = match self.policy(account).account_bytes {
                Some(_) => roots::stats(&self.store, RootId::Workspace(src.id))?
                    .1
                    .used_bytes(),
                None => 0,
            };
            self.check_room(
                ix,
                account,
                req.count,
                bytes.saturating_mul(req.count as u64),
            )?;
            let names = match &req.names {
                CopyNames::Exact(name) => vec![ix.name_for(account, name.clone())?],
                CopyNames::Numbered(prefix) => {
                    let base: String = match prefix {
                        Some(p) => p.clone(),
                        None => src.name.clone().unwrap_or_else(|| "ws".into()),
                    };
                    let base: String = base.chars().take(FORK_PREFIX_MAX).collect();
                    (1..)
                        .map(|i| format!("{base}-{i}"))
                        .filter(|n| ix.check_name(account, n, None).is_ok())
                        .take(req.count)
                        .collect()
                }
            };
            let recs: Vec<WorkspaceRecord> = names
                .into_iter()
                .map(|name| WorkspaceRecord {
                    cloned_from: Some(src.id),
                    github_repo: src.github_repo.clone(),
                    quota: req.quota.unwrap_or(src.quota),
                    ..WorkspaceRecord::new(
                        account,
                        name,
                        src.session_type,
                        src.image.clone(),
                        req.template,
                    )
                })
                .collect();
            let ids: Vec<Uuid> = recs.iter().map(|r| r.id).collect();
            let meta: Vec<MetaOp> = recs.iter().map(|r| put(WORKSPACE, r.id, r)).collect();
            roots::fork_workspace(&self.store, src.id, &ids, &meta)?;
            for rec in &recs {
                ix.put_workspace(rec.clone());
            }
            Ok(recs)
        })?;
        drop(ix);
        recs.iter().map(|rec| self.view(rec, 0)).collect()
    }

    /// One page of the account's workspaces, oldest first, and the cursor of the next page.
    pub fn list_workspaces(
        &self,
        account: &str,
        q: &ListQuery,
    ) -> ApiResult<(Vec<WorkspaceView>, Option<String>)> {
        let limit = check_limit(q.limit)?;
        let after = decode_cursor(q.cursor.as_deref())?;
        let page: Vec<(WorkspaceRecord, u64)> = {
            let ix = self.lock();
            let mut all: Vec<&WorkspaceRecord> = ix
                .workspaces
                .values()
                .filter(|w| w.account == account)
                .filter(|w| q.template.is_none_or(|t| w.template == t))
                .filter(|w| q.session_type.is_none_or(|t| w.session_type == t))
                .filter(|w| q.status.is_none_or(|s| w.status == s))
                .filter(|w| {
                    after
                        .as_ref()
                        .is_none_or(|(t, id)| (&w.created_at, &w.id) > (t, id))
                })
                .collect();
            all.sort_by(|a, b| (&a.created_at, a.id).cmp(&(&b.created_at, b.id)));
            all.into_iter()
                .take(limit + 1)
                .map(|w| (w.clone(), ix.snapshot_count(w.id)))
                .collect()
        };
        let next = if page.len() > limit {
            let last = &page[limit - 1].0;
            Some(encode_cursor(&last.created_at, last.id))
        } else {
            None
        };
        let mut out = Vec::with_capacity(limit);
        for (rec, snaps) in page.into_iter().take(limit) {
            match self.view(&rec, snaps) {
                Ok(v) => out.push(v),
                // Deleted since the page was read.
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok((out, next))
    }

    pub fn get_workspace(&self, account: &str, selector: &str) -> ApiResult<WorkspaceView> {
        let (rec, snaps) = {
            let ix = self.lock();
            let w = ix.resolve(account, selector)?;
            (w.clone(), ix.snapshot_count(w.id))
        };
        self.view(&rec, snaps)
    }

    /// Fetches a workspace's committed tree, and its newest files' chunks, onto this host
    /// ahead of a session (the engine's `Store::hydrate`); returns when they are here. A
    /// single host holds everything already. Warm-ups take turns (see `warm.rs`): one of
    /// each account at a time, 503 `warm_busy` for another.
    pub fn warm_workspace(&self, account: &str, selector: &str) -> ApiResult<WarmView> {
        let id = self.lock().resolve(account, selector)?.id;
        let _turn = self.warms.wait(account, &self.stopping)?;
        // Read once its turn came: the latest commit.
        let root = self.store.get_root(RootId::Workspace(id))?.ok_or_else(|| {
            ApiError::not_found("workspace_not_found", format!("workspace {id} was deleted"))
        })?;
        let done = self.store.hydrate(root.root)?;
        self.store.write_out_cache()?;
        Ok(WarmView {
            workspace_id: id,
            cluster: self.store.is_cluster(),
            nodes: done.nodes,
            chunks: done.chunks,
            chunk_bytes: done.chunk_bytes,
        })
    }

    /// Applies `change` to a workspace's record and writes it.
    fn update_record(
        &self,
        account: &str,
        selector: &str,
        change: impl Fn(&Index, &mut WorkspaceRecord) -> ApiResult<()>,
    ) -> ApiResult<WorkspaceView> {
        let mut ix = self.lock();
        let rec = self.decide(&mut ix, |ix| {
            let mut rec = ix.resolve(account, selector)?.clone();
            change(ix, &mut rec)?;
            rec.updated_at = now();
            self.store.meta_write(&[put(WORKSPACE, rec.id, &rec)])?;
            ix.put_workspace(rec.clone());
            Ok(rec)
        })?;
        let snaps = ix.snapshot_count(rec.id);
        drop(ix);
        self.view(&rec, snaps)
    }

    /// Sets (`Some`) or clears (`None`) a workspace's name.
    pub fn rename(
        &self,
        account: &str,
        selector: &str,
        name: Option<String>,
    ) -> ApiResult<WorkspaceView> {
        self.update_record(account, selector, |ix, rec| {
            if let Some(n) = &name {
                ix.check_name(account, n, Some(rec.id))?;
            }
            rec.name = name.clone();
            Ok(())
        })
    }

    /// Sets a workspace's quota (both limits; `None` lifts one). A mounted session enforces
    /// it from the next operation on.
    pub fn set_quota(
        &self,
        account: &str,
        selector: &str,
        quota: Quota,
    ) -> ApiResult<WorkspaceView> {
        self.check_quota(account, Some(&quota))?;
        let view = self.update_record(account, selector, |_, rec| {
            rec.quota = quota;
            Ok(())
        })?;
        let limits = {
            let ix = self.lock();
            match ix.workspaces.get(&view.id) {
                Some(rec) => self.limits_of(&ix, rec)?,
                None => return Ok(view),
            }
        };
        for m in self.mounts.lock().values() {
            if m.ws.id() == view.id {
                m.ws.set_limits(limits);
            }
        }
        Ok(view)
    }

    pub fn set_template(
        &self,
        account: &str,
        selector: &str,
        template: bool,
    ) -> ApiResult<WorkspaceView> {
        self.update_record(account, selector, |_, rec| {
            rec.template = template;
            Ok(())
        })
    }

    /// Deletes a workspace and its snapshots in one batch; GC frees their data.
    pub fn delete_workspace(&self, account: &str, selector: &str, force: bool) -> ApiResult<Uuid> {
        if force {
            // Sessions of its snapshots end first, as its own session does.
            let read_only: Vec<Uuid> = {
                let ix = self.lock();
                let ws = ix.resolve(account, selector)?.id;
                ix.sessions
                    .values()
                    .filter(|s| s.workspace_id == ws && s.snapshot_id.is_some())
                    .filter(|s| s.status != SessionStatus::Ended)
                    .map(|s| s.id)
                    .collect()
            };
            for id in read_only {
                self.end_session_by_id(id, true, EndReason::Forced)?;
            }
        }
        let id = self.with_idle_workspace(account, selector, force, true, |ix, ws| {
            let snaps = ix.snapshots.get(&ws.id).cloned().unwrap_or_default();
            if snaps.iter().any(|s| self.store.is_open(s.id)) {
                return Err(ApiError::conflict(
                    "snapshot_mounted",
                    "a snapshot of the workspace is mounted by a session; end it or pass \
                     force=true",
                ));
            }
            let mut ids = vec![RootId::Workspace(ws.id)];
            let mut meta: Vec<MetaOp> = vec![(key(WORKSPACE, ws.id), None)];
            for s in &snaps {
                ids.push(RootId::Snapshot(s.id));
                meta.push((key(SNAPSHOT, s.id), None));
            }
            roots::delete(&self.store, &ids, &meta)?;
            ix.remove_workspace(ws.id);
            Ok(ws.id)
        })?;
        self.wake_gc();
        Ok(id)
    }

    /// Deletes each workspace on its own: one's failure leaves the others deleted.
    pub fn bulk_delete(&self, account: &str, req: BulkDelete) -> ApiResult<Vec<BulkDeleteResult>> {
        if req.workspace_ids.len() > BULK_DELETE_MAX {
            return Err(ApiError::bad(
                "too_many_workspaces",
                format!("at most {BULK_DELETE_MAX} workspaces per bulk delete"),
            ));
        }
        Ok(req
            .workspace_ids
            .into_iter()
            .map(|sel| {
                let resolved = self.lock().resolve(account, &sel).map(|w| w.id).ok();
                let (status, id, error) = match self.delete_workspace(account, &sel, req.force) {
                    Ok(id) => (DeleteOutcome::Deleted, Some(id), None),
                    Err(e) => {
                        let status = match (e.kind, e.code) {
                            (ErrorKind::NotFound, _) => DeleteOutcome::NotFound,
                            (ErrorKind::Conflict, "workspace_name_ambiguous") => {
                                DeleteOutcome::Error
                            }
                            (ErrorKind::Conflict, _) => DeleteOutcome::Busy,
                            _ => DeleteOutcome::Error,
                        };
                        let body = ErrorBody {
                            code: e.code.to_string(),
                            message: e.message,
                        };
                        (status, resolved, Some(body))
                    }
                };
                BulkDeleteResult {
                    workspace: sel,
                    id,
                    status,
                    error,
                }
            })
            .collect())
    }
}
