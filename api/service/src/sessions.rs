//! Sessions: a workspace mounted with FUSE at a path, until ended. Mounting and unmounting
//! are slow, so they run with the workspace marked busy instead of under the index lock.

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;

use chaserfs_engine::Workspace;
use chaserfs_fuse::adapter::{FuseAdapter, MountOptions};
use chaserfs_fuse::mount::{session_config, FuseMount, MountFlags};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, ErrorKind};
use crate::index::{key, put, Index, SESSION, WORKSPACE};
use crate::metrics as m;
use crate::model::*;
use crate::mountpoint::{self, Mountpoint};
use crate::pages::{check_limit, decode_cursor, encode_cursor};
use crate::service::{Mounted, Service, BUSY_WAIT};

/// How often a stopping daemon retries the final commits that failed.
const SHUTDOWN_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// Why a session ended, as `chaserfs_sessions_ended_total` labels it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum EndReason {
    /// `DELETE /v1/sessions/{id}` (or the CLI's `sessions end`).
    Request,
    /// A restore or delete with `force=true` ended it first.
    Forced,
    /// Its final commit had failed; a later retry landed.
    Retry,
    /// The daemon stopped (SIGTERM).
    Shutdown,
    /// Its host was lost (a cluster host gone, or this daemon crashed): ended when another
    /// session takes its workspace or snapshot, at the next start, or by a request.
    HostLost,
}

impl EndReason {
    pub(crate) const ALL: [EndReason; 5] = [
        EndReason::Request,
        EndReason::Forced,
        EndReason::Retry,
        EndReason::Shutdown,
        EndReason::HostLost,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EndReason::Request => "request",
            EndReason::Forced => "forced",
            EndReason::Retry => "retry",
            EndReason::Shutdown => "shutdown",
            EndReason::HostLost => "host_lost",
        }
    }
}

/// Tunes the mount's writeback and readahead (its backing device info in sysfs) the way a
/// disk's are. Best effort: a kernel without a knob keeps its default.
/// - `strict_limit` 0: the kernel gives every FUSE mount a strict dirty-page limit of 1% of
///   the dirty threshold, because an unprivileged daemon might never write pages back; with
///   it, writers sleep in the page cache's throttle long before memory is short (random
///   4 KiB writes ran at 6,800 IOPS instead of 235,000). This daemon writes back promptly.
/// - `read_ahead_kb` 2048: the bdi starts at 128 KiB whatever `max_readahead` says, so
///   sequential reads came as 128 KiB requests (cold reads 436 MB/s; 1 MiB: 620-640 MB/s).
///   2 MiB keeps two 1 MiB READs in flight, so one waits on the disk while the other is
///   copied: 1 GiB cold, three runs each, 800-930 MiB/s at 1024, 1150-1220 at 2048, 1120-1170
///   at 4096, 950-1150 at 8192 and above.
pub(crate) fn tune_bdi(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(mountpoint) else {
        return;
    };
    let bdi = format!(
        "/sys/class/bdi/{}:{}",
        libc::major(meta.dev()),
        libc::minor(meta.dev())
    );
    for (knob, value) in [("strict_limit", "0"), ("read_ahead_kb", "2048")] {
        if let Err(e) = std::fs::write(format!("{bdi}/{knob}"), value) {
            tracing::debug!("{bdi}/{knob}: {e}");
        }
    }
}

impl Service {
    /// Mounts an open workspace on the directory `at` (resolved by [`mountpoint::resolve`]).
    pub(crate) fn mount(
        &self,
        ws: Arc<Workspace>,
        at: &Mountpoint,
        options: MountOptions,
    ) -> ApiResult<FuseMount> {
        let fsname = format!("chaserfs:{}", ws.id());
        // A cluster host that lacks the tree starts fetching it now, behind what reads ask for.
        self.store.hydrate_later(ws.committed_root());
        let flags = MountFlags {
            read_only: options.read_only,
            suid: self.config.trust.suid,
            dev: self.config.trust.dev,
        };
        let adapter = FuseAdapter::new(ws, options);
        let mount = FuseMount::mount(
            adapter,
            at.dir.as_fd(),
            &at.path,
            &fsname,
            flags,
            &session_config(),
        )
        .map_err(|e| {
            ApiError::new(
                ErrorKind::Internal,
                "mount_failed",
                format!("mount failed: {e}"),
            )
        })?;
        tune_bdi(&at.path);
        Ok(mount)
    }

    fn prepare_mountpoint(&self, raw: &str) -> ApiResult<Mountpoint> {
        mountpoint::resolve(raw, &self.config.mount_root, &self.config.data_dir)
    }

    pub fn start_session(&self, account: &str, req: &StartSession) -> ApiResult<SessionView> {
        let started = std::time::Instant::now();
        let result = match &req.snapshot {
            Some(snapshot) => self.start_snapshot_session(account, req, snapshot),
            None => self.start_workspace_session(account, req),
        };
        if let Ok(v) = &result {
            let took = started.elapsed();
            metrics::counter!(m::SESSIONS_STARTED).increment(1);
            metrics::histogram!(m::SESSION_START_SECONDS).record(took.as_secs_f64());
            tracing::info!(
                target: "chaserfs::session",
                session = %v.id,
                workspace = %v.workspace_id,
                snapshot = ?v.snapshot_id,
                mountpoint = %v.mountpoint.display(),
                ms = m::millis(took),
                "session started"
            );
        }
        result
    }

    fn start_workspace_session(&self, account: &str, req: &StartSession) -> ApiResult<SessionView> {
        let options = MountOptions {
            xattrs: req.xattrs,
            read_only: false,
        };
        let ws_id = {
            let mut ix = self.lock();
            let ws = self.resolve_settled(&mut ix, account, &req.workspace)?;
            self.check_session_room(&ix, account, true)?;
            if let Some(active) = ws.active_session_id {
                // In a cluster, a session whose host is gone (its hold on the workspace
                // expired with the host's lease) is over: a new one takes its place.
                if !self.host_lost(active, ws.id) {
                    let host = ix.sessions.get(&active).and_then(|s| s.host.as_deref());
                    return Err(ApiError::conflict(
                        "session_active",
                        match host {
                            Some(h) => format!(
                                "workspace already has active session {active}, on host {h}"
                            ),
                            None => format!("workspace already has active session {active}"),
                        },
                    ));
                }
            }
            ix.busy.insert(ws.id);
            ws.id
        };
        let result = self.mount_session(account, ws_id, &req.mountpoint, options);
        self.release(&mut self.lock(), ws_id);
        result
    }

    /// A snapshot mounted read-only. The snapshot is held open (like a workspace) until the
    /// session ends, so it cannot be deleted meanwhile; its workspace stays free.
    fn start_snapshot_session(
        &self,
        account: &str,
        req: &StartSession,
        selector: &str,
    ) -> ApiResult<SessionView> {
        let (ws_id, snap_id) = {
            let mut ix = self.lock();
            let ws = self.resolve_settled(&mut ix, account, &req.workspace)?;
            self.check_session_room(&ix, account, false)?;
            (ws.id, ix.find_snapshot(&ws, selector)?.id)
        };
        let at = self.prepare_mountpoint(&req.mountpoint)?;
        // Whatever fails from here, a directory made for the mount goes again.
        self.mount_snapshot_at(account, req, (ws_id, snap_id), &at)
            .inspect_err(|_| at.forget())
    }

    fn mount_snapshot_at(
        &self,
        account: &str,
        req: &StartSession,
        (ws_id, snap_id): (Uuid, Uuid),
        at: &Mountpoint,
    ) -> ApiResult<SessionView> {
        let snap = Workspace::open_snapshot(self.store.clone(), snap_id).map_err(|e| match e {
            chaserfs_engine::FsError::Busy(_) => ApiError::conflict(
                "snapshot_mounted",
                format!("snapshot {snap_id} is mounted by another session"),
            ),
            other => other.into(),
        })?;
        let snap = Arc::new(snap);
        let options = MountOptions {
            xattrs: req.xattrs,
            read_only: true,
        };
        let mount = self.mount(snap.clone(), at, options)?;
        let session = SessionRecord {
            id: Uuid::now_v7(),
            account: account.to_string(),
            workspace_id: ws_id,
            made_mountpoint: at.made,
            mountpoint: at.path.clone(),
            status: SessionStatus::Active,
            created_at: now(),
            ended_at: None,
            commit_error: None,
            xattrs: req.xattrs,
            host: self.config.host.clone(),
            snapshot_id: Some(snap_id),
        };
        self.record_session(&session, snap, mount, |ix| {
            let mut ops = vec![put(SESSION, session.id, &session)];
            // Sessions of this snapshot whose host was lost (it held the snapshot) are over.
            for lost in ix.sessions.values() {
                if lost.snapshot_id == Some(snap_id) && lost.status != SessionStatus::Ended {
                    let mut lost = lost.clone();
                    lost.status = SessionStatus::Ended;
                    lost.ended_at = Some(now());
                    ops.push(put(SESSION, lost.id, &lost));
                }
            }
            let lost_ended = ops.len() - 1;
            Ok((ops, lost_ended))
        })
    }

    /// Records a mounted session with the writes `ops` decides (again, if records changed
    /// on other hosts meanwhile), or unmounts it if they cannot be made. `ops` also says how
    /// many sessions of lost hosts its writes end.
    fn record_session(
        &self,
        session: &SessionRecord,
        ws: Arc<Workspace>,
        mount: FuseMount,
        mut ops: impl FnMut(&Index) -> ApiResult<(Vec<chaserfs_engine::MetaOp>, usize)>,
    ) -> ApiResult<SessionView> {
        let mut ix = self.lock();
        let written = self.decide(&mut ix, |ix| {
            // Checked again where the record is written: starts racing past the first check.
            let writes = session.snapshot_id.is_none();
            self.check_session_room(ix, &session.account, writes)?;
            let (ops, lost_ended) = ops(ix)?;
            self.store.meta_write(&ops)?;
            for (k, v) in &ops {
                ix.apply(k, v.as_deref())?;
            }
            Ok(lost_ended)
        });
        let lost_ended = match written {
            Ok(n) => n,
            Err(e) => {
                drop(ix);
                let _ = mount.umount_and_join();
                return Err(e);
            }
        };
        m::sessions_ended(EndReason::HostLost, lost_ended);
        self.mounts.lock().insert(
            session.id,
            Mounted {
                ws,
                mount: Some(mount),
            },
        );
        Ok(SessionView::from(session))
    }

    fn mount_session(
        &self,
        account: &str,
        ws_id: Uuid,
        mountpoint: &str,
        options: MountOptions,
    ) -> ApiResult<SessionView> {
        let at = self.prepare_mountpoint(mountpoint)?;
        // Whatever fails from here, a directory made for the mount goes again.
        self.mount_session_at(account, ws_id, &at, options)
            .inspect_err(|_| at.forget())
    }

    fn mount_session_at(
        &self,
        account: &str,
        ws_id: Uuid,
        at: &Mountpoint,
        options: MountOptions,
    ) -> ApiResult<SessionView> {
        let ws = Arc::new(Workspace::open(self.store.clone(), ws_id)?);
        // The workspace is busy, so its quota cannot change until the session is recorded.
        {
            let ix = self.lock();
            ws.set_limits(self.limits_of(&ix, &ix.workspaces[&ws_id])?);
        }
        let mount = self.mount(ws.clone(), at, options)?;
        let t = now();
        let session = SessionRecord {
            id: Uuid::now_v7(),
            account: account.to_string(),
            workspace_id: ws_id,
            made_mountpoint: at.made,
            mountpoint: at.path.clone(),
            status: SessionStatus::Active,
            created_at: t.clone(),
            ended_at: None,
            commit_error: None,
            xattrs: options.xattrs,
            host: self.config.host.clone(),
            snapshot_id: None,
        };
        self.record_session(&session, ws, mount, |ix| {
            // The workspace was busy here, and held (opened) against other hosts, so nothing
            // deleted it meanwhile.
            let mut rec = ix.workspaces[&ws_id].clone();
            let mut ops = vec![put(SESSION, session.id, &session)];
            let mut lost_ended = 0;
            // A session whose host was lost ends now.
            if let Some(mut lost) = rec
                .active_session_id
                .and_then(|old| ix.sessions.get(&old).cloned())
            {
                tracing::warn!(
                    "session {} ended: its host {} was lost; its last commit stands",
                    lost.id,
                    lost.host.as_deref().unwrap_or("?")
                );
                lost.status = SessionStatus::Ended;
                lost.ended_at = Some(t.clone());
                lost.commit_error = Some(
                    "its host was lost; changes after the session's last commit are gone".into(),
                );
                ops.push(put(SESSION, lost.id, &lost));
                rec.last_session_id = Some(lost.id);
                lost_ended = 1;
            }
            rec.active_session_id = Some(session.id);
            rec.updated_at = t.clone();
            ops.push(put(WORKSPACE, rec.id, &rec));
            Ok((ops, lost_ended))
        })
    }

    /// One page of the account's sessions, oldest first, and the cursor of the next page.
    pub fn list_sessions(
        &self,
        account: &str,
        q: &SessionQuery,
    ) -> ApiResult<(Vec<SessionView>, Option<String>)> {
        let ix = self.lock();
        let workspace = match q.workspace.as_deref() {
            None => None,
            Some(sel) => match (ix.resolve(account, sel), Uuid::parse_str(sel)) {
                (Ok(w), _) => Some(w.id),
                // A deleted workspace's ended sessions, by its id.
                (Err(e), Ok(id)) if e.code == "workspace_not_found" => Some(id),
                (Err(e), _) => return Err(e),
            },
        };
        let (page, next) = session_page(&ix, q.limit, q.cursor.as_deref(), |s| {
            s.account == account
                && q.status.is_none_or(|want| s.status == want)
                && workspace.is_none_or(|id| s.workspace_id == id)
                && (q.host.is_none() || s.host == q.host)
        })?;
        Ok((page.into_iter().map(SessionView::from).collect(), next))
    }

    /// The operator's view: one page of every account's sessions, oldest first, with their
    /// accounts. 403 `operator_only` unless the accounts file makes `account` an operator.
    pub fn list_all_sessions(
        &self,
        account: &str,
        q: &AdminSessionQuery,
    ) -> ApiResult<(Vec<AdminSessionView>, Option<String>)> {
        if !self.policy(account).operator {
            return Err(ApiError::new(
                ErrorKind::Forbidden,
                "operator_only",
                "only an account the accounts file makes `operator = true` sees every account's \
                 sessions",
            ));
        }
        let ix = self.lock();
        let (page, next) = session_page(&ix, q.limit, q.cursor.as_deref(), |s| {
            q.account.as_ref().is_none_or(|a| s.account == *a)
                && q.status.is_none_or(|want| s.status == want)
                && q.workspace_id.is_none_or(|id| s.workspace_id == id)
                && (q.host.is_none() || s.host == q.host)
        })?;
        let views = page
            .into_iter()
            .map(|s| AdminSessionView {
                account: s.account.clone(),
                session: SessionView::from(s),
            })
            .collect();
        Ok((views, next))
    }

    /// Forgets sessions that ended more than `retention` ago (their workspaces keep every
    /// commit; only the record of the session goes), so records stay bounded.
    pub fn prune_sessions(&self, retention: std::time::Duration) -> ApiResult<usize> {
        let cutoff = std::time::SystemTime::now() - retention;
        let mut ix = self.lock();
        let old: Vec<Uuid> = ix
            .sessions
            .values()
            .filter(|s| s.status == SessionStatus::Ended)
            .filter(|s| {
                s.ended_at
                    .as_deref()
                    .and_then(|t| humantime::parse_rfc3339(t).ok())
                    .is_some_and(|t| t < cutoff)
            })
            .map(|s| s.id)
            .collect();
        // etcd takes at most 128 operations a transaction.
        for batch in old.chunks(100) {
            let ops: Vec<chaserfs_engine::MetaOp> =
                batch.iter().map(|id| (key(SESSION, *id), None)).collect();
            self.store.meta_write(&ops)?;
            for (k, _) in &ops {
                ix.apply(k, None)?;
            }
        }
        Ok(old.len())
    }

    fn session(&self, account: Option<&str>, id: &str) -> ApiResult<SessionRecord> {
        let missing = || ApiError::not_found("session_not_found", format!("no session {id:?}"));
        let uuid = Uuid::parse_str(id).map_err(|_| missing())?;
        let ix = self.lock();
        let s = ix.sessions.get(&uuid).ok_or_else(missing)?;
        if account.is_some_and(|a| a != s.account) {
            return Err(missing());
        }
        Ok(s.clone())
    }

    pub fn get_session(&self, account: &str, id: &str) -> ApiResult<SessionView> {
        Ok(SessionView::from(&self.session(Some(account), id)?))
    }

    /// Unmounts (the kernel writes back its cache first), commits durably, and records the
    /// session as the workspace's last. Ending an ended session answers it as it is; ending a
    /// `commit_failed` one retries its commit.
    pub fn end_session(&self, account: &str, id: &str) -> ApiResult<SessionView> {
        let s = self.session(Some(account), id)?;
        Ok(SessionView::from(&self.end(
            s,
            false,
            EndReason::Request,
        )?))
    }

    /// Ends a session; with `discard_failed`, a session whose final commit already failed
    /// drops its changes instead of retrying (its workspace is about to be deleted).
    pub(crate) fn end_session_by_id(
        &self,
        id: Uuid,
        discard_failed: bool,
        why: EndReason,
    ) -> ApiResult<()> {
        let s = self.session(None, &id.to_string())?;
        self.end(s, discard_failed, why).map(|_| ())
    }

    fn end(
        &self,
        mut s: SessionRecord,
        discard_failed: bool,
        why: EndReason,
    ) -> ApiResult<SessionRecord> {
        {
            let mut ix = self.lock();
            // Another call may be ending it right now: wait for that, then answer its result.
            let deadline = std::time::Instant::now() + BUSY_WAIT;
            while ix.busy.contains(&s.held_id()) {
                if self.idle.wait_until(&mut ix, deadline).timed_out() {
                    return Err(ApiError::conflict(
                        "workspace_busy",
                        "the session's workspace stayed busy; retry",
                    ));
                }
            }
            match ix.sessions.get(&s.id) {
                Some(c) if c.status != SessionStatus::Ended => s = c.clone(),
                current => return Ok(current.cloned().unwrap_or(s)),
            }
            ix.busy.insert(s.held_id());
        }
        let result = self.unmount_and_record(&mut s, discard_failed, why);
        self.release(&mut self.lock(), s.held_id());
        result.map(|_| s)
    }

    /// Cluster mode: whether a session not mounted here is over because its host lost its
    /// hold on the workspace (the host stopped renewing its lease). A single host's sessions
    /// are all its own.
    pub(crate) fn host_lost(&self, session: Uuid, ws: Uuid) -> bool {
        self.store.is_cluster()
            && !self.mounts.lock().contains_key(&session)
            && !self.store.is_open(ws)
    }

    fn unmount_and_record(
        &self,
        s: &mut SessionRecord,
        discard_failed: bool,
        why: EndReason,
    ) -> ApiResult<()> {
        let started = std::time::Instant::now();
        if self.store.is_cluster()
            && !self.mounts.lock().contains_key(&s.id)
            && !self.host_lost(s.id, s.held_id())
        {
            return Err(ApiError::conflict(
                "session_on_other_host",
                format!(
                    "session {} is served by host {}: end it there",
                    s.id,
                    s.host.as_deref().unwrap_or("?")
                ),
            ));
        }
        let mounted = self.mounts.lock().remove(&s.id);
        let unmounted_here = mounted.as_ref().is_some_and(|m| m.mount.is_some());
        // The workspace stays open (held, in a cluster) until the session is recorded ended,
        // so no other host takes the session for lost meanwhile.
        let mut closing = None;
        // Not mounted here: its host was lost (another cluster host, or a crash).
        let why = if mounted.is_none() {
            EndReason::HostLost
        } else {
            why
        };
        if let Some(mut m) = mounted {
            if let Some(mount) = m.mount.take() {
                match mount.umount_and_join() {
                    Ok(()) => {
                        if let Err(e) = m.ws.unmounted() {
                            tracing::warn!("session {}: freeing unlinked files: {e}", s.id);
                        }
                    }
                    // Open files may keep a detached mount alive: their inodes stay.
                    Err(e) => {
                        tracing::warn!(
                            "unmount of {} failed ({e}); detaching",
                            s.mountpoint.display()
                        );
                        detach(&s.mountpoint);
                    }
                }
            }
            let discard = discard_failed && s.status == SessionStatus::CommitFailed;
            if discard {
                // What fsyncs journaled stays: it was acknowledged durable, and the next
                // open commits it (a delete of the workspace drops it).
                tracing::warn!("session {}: changes that never committed discarded", s.id);
            } else if let Err(e) = m.ws.commit(true) {
                // The mount is gone but the changes are not: keep them, and the workspace
                // open, for the next attempt.
                tracing::error!("session {}: final commit failed: {e}", s.id);
                metrics::counter!(m::SESSION_END_FAILURES).increment(1);
                self.mounts.lock().insert(s.id, m);
                s.status = SessionStatus::CommitFailed;
                s.commit_error = Some(e.to_string());
                let mut ix = self.lock();
                // Memory holds the truth meanwhile; the record is written too unless the disk
                // is full (a write there could stop RocksDB).
                if !matches!(e, chaserfs_engine::FsError::NoSpace) {
                    if let Err(w) = self.store.meta_write(&[put(SESSION, s.id, &*s)]) {
                        tracing::warn!("recording session {}: {w}", s.id);
                    }
                }
                ix.sessions.insert(s.id, s.clone());
                return Err(ApiError::commit_failed(e));
            }
            closing = Some(m);
        }
        s.status = SessionStatus::Ended;
        s.ended_at = Some(now());
        s.commit_error = None;
        let mut ix = self.lock();
        let ended = s.clone();
        let recorded = self.decide(&mut ix, |ix| {
            let mut ops = vec![put(SESSION, ended.id, &ended)];
            // A snapshot's session leaves its workspace's record as it is.
            let workspace = ix
                .workspaces
                .get(&ended.workspace_id)
                .filter(|_| ended.snapshot_id.is_none());
            if let Some(mut w) = workspace.cloned() {
                if w.active_session_id == Some(ended.id) {
                    w.active_session_id = None;
                }
                w.last_session_id = Some(ended.id);
                w.updated_at = now();
                ops.push(put(WORKSPACE, w.id, &w));
            }
            self.store.meta_write(&ops)?;
            for (k, v) in &ops {
                ix.apply(k, v.as_deref())?;
            }
            Ok(())
        });
        drop(ix);
        drop(closing);
        // A directory the daemon made for the mount goes with it (if still empty): the
        // directories above it are the daemon's, writable by no one else, so the path still
        // names it. Never on another host's behalf.
        if unmounted_here && s.made_mountpoint {
            let _ = std::fs::remove_dir(&s.mountpoint);
        }
        if recorded.is_ok() {
            m::sessions_ended(why, 1);
            metrics::histogram!(m::SESSION_END_SECONDS).record(started.elapsed().as_secs_f64());
            let lasted = humantime::parse_rfc3339_weak(&s.created_at)
                .ok()
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default();
            tracing::info!(
                target: "chaserfs::session",
                session = %s.id,
                workspace = %s.workspace_id,
                lasted_s = m::millis(lasted) / 1e3,
                "session ended"
            );
        }
        recorded
    }

    /// Commits every mounted workspace without syncing, and retries the final commit of
    /// sessions whose end failed: the periodic commit.
    pub fn commit_all(&self) {
        let (mounted, failed): (Vec<_>, Vec<_>) = self
            .mounts
            .lock()
            .iter()
            .map(|(id, m)| (*id, m.ws.clone(), m.mount.is_some()))
            .partition(|(_, _, mounted)| *mounted);
        // A failing store has said so once; it heals in the background, and the next
        // interval tries again.
        let failing = self.store.failure().is_some();
        for (_, ws, _) in mounted {
            if let Err(e) = ws.commit(false) {
                if !failing && self.store.failure().is_none() {
                    tracing::error!("periodic commit of {}: {e}", ws.id());
                }
            }
        }
        for (id, _, _) in failed {
            if self.end_session_by_id(id, false, EndReason::Retry).is_ok() {
                tracing::info!("session {id}: final commit succeeded on retry");
            }
        }
    }

    /// Ends every session and stops background work: on SIGTERM.
    /// A session whose final commit fails (a full disk, a store that is down) keeps its
    /// changes in memory, and the daemon does not exit: it retries until every session is
    /// committed. Only SIGKILL drops them, and the operator is told so.
    pub fn shutdown(&self) {
        let mut failing: Option<String> = None;
        loop {
            // Read while no session start or end is under way: an end takes its session out
            // of `mounts` while it commits and puts it back if that fails, so a list read
            // meanwhile (the periodic retry of a failed end, say) would miss it, and the
            // daemon would exit with its changes.
            let (ids, settled) = {
                let mut ix = self.lock();
                let deadline = std::time::Instant::now() + BUSY_WAIT;
                while !ix.busy.is_empty() && !self.idle.wait_until(&mut ix, deadline).timed_out() {}
                let ids: Vec<Uuid> = self.mounts.lock().keys().copied().collect();
                (ids, ix.busy.is_empty())
            };
            let mut failed = Vec::new();
            for id in ids {
                if let Err(e) = self.end_session_by_id(id, false, EndReason::Shutdown) {
                    failed.push(format!("{id}: {}", e.message));
                }
            }
            if failed.is_empty() && settled {
                break;
            }
            if failed.is_empty() {
                continue;
            }
            let now = failed.join("; ");
            if failing.as_deref() != Some(now.as_str()) {
                tracing::error!(
                    "stopping: {} sessions hold changes that could not be committed ({now}); \
                     retrying every {} s until they are (SIGKILL would lose them)",
                    failed.len(),
                    SHUTDOWN_RETRY.as_secs()
                );
                failing = Some(now);
            }
            std::thread::sleep(SHUTDOWN_RETRY);
        }
        self.stop_background();
    }

    /// What a crashed run left: sessions still active (their mounts are detached, their
    /// workspaces' last commit stands) and imports that were running (marked failed).
    pub(crate) fn recover(&self, served: &std::collections::HashSet<Uuid>) -> ApiResult<()> {
        let mut ix = self.lock();
        let cluster = self.store.is_cluster();
        let stale: Vec<SessionRecord> = ix
            .sessions
            .values()
            .filter(|s| s.status != SessionStatus::Ended && !served.contains(&s.id))
            // In a cluster: only sessions of this host, or whose host is gone.
            .filter(|s| {
                !cluster || (s.host == self.config.host && !self.store.is_open(s.held_id()))
            })
            .cloned()
            .collect();
        for mut s in stale {
            tracing::warn!("ending session {} left by a previous run", s.id);
            detach(&s.mountpoint);
            s.status = SessionStatus::Ended;
            s.ended_at = Some(now());
            let mut ops = vec![put(SESSION, s.id, &s)];
            let workspace = ix
                .workspaces
                .get(&s.workspace_id)
                .filter(|_| s.snapshot_id.is_none());
            if let Some(w) = workspace {
                let mut w = w.clone();
                if w.active_session_id == Some(s.id) {
                    w.active_session_id = None;
                }
                w.last_session_id = Some(s.id);
                ops.push(put(WORKSPACE, w.id, &w));
                self.store.meta_write(&ops)?;
                ix.put_workspace(w);
            } else {
                self.store.meta_write(&ops)?;
            }
            m::sessions_ended(EndReason::HostLost, 1);
            ix.sessions.insert(s.id, s);
        }
        let importing: Vec<WorkspaceRecord> = ix
            .workspaces
            .values()
            .filter(|w| w.status == WorkspaceStatus::Importing)
            .cloned()
            .collect();
        for mut w in importing {
            detach(&self.import_mountpoint(w.id));
            let _ = std::fs::remove_dir(self.import_mountpoint(w.id));
            w.status = WorkspaceStatus::Failed;
            w.import_error = Some("the daemon stopped while the import ran".into());
            w.updated_at = now();
            self.store.meta_write(&[put(WORKSPACE, w.id, &w)])?;
            ix.put_workspace(w);
        }
        Ok(())
    }
}

/// One page of the sessions `keep` selects, oldest first, after `cursor`; and the cursor of
/// the next page, if there is one. Only the page is sorted: the first `limit + 1` are
/// selected in linear time.
fn session_page<'a>(
    ix: &'a Index,
    limit: Option<usize>,
    cursor: Option<&str>,
    keep: impl Fn(&SessionRecord) -> bool,
) -> ApiResult<(Vec<&'a SessionRecord>, Option<String>)> {
    let limit = check_limit(limit)?;
    let after = decode_cursor(cursor)?;
    let mut page: Vec<&SessionRecord> = ix
        .sessions
        .values()
        .filter(|s| {
            after
                .as_ref()
                .is_none_or(|(t, id)| (&s.created_at, &s.id) > (t, id))
        })
        .filter(|s| keep(s))
        .collect();
    let by_start =
        |a: &&SessionRecord, b: &&SessionRecord| (&a.created_at, a.id).cmp(&(&b.created_at, b.id));
    if page.len() > limit + 1 {
        page.select_nth_unstable_by(limit, by_start);
        page.truncate(limit + 1);
    }
    page.sort_by(by_start);
    let next = page
        .get(limit)
        .map(|_| encode_cursor(&page[limit - 1].created_at, page[limit - 1].id));
    page.truncate(limit);
    Ok((page, next))
}

/// Lazily detaches whatever is mounted at `path` (a stale FUSE mount answers ENOTCONN).
pub(crate) fn detach(path: &Path) {
    use nix::mount::MntFlags;
    if let Err(e) = nix::mount::umount2(path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
        tracing::debug!("detach {}: {e}", path.display());
    }
}
