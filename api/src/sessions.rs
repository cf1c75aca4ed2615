//! Sessions: a workspace mounted with FUSE at a path, until ended. Mounting and unmounting
//! are slow, so they run with the workspace marked busy instead of under the index lock.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use chaserfs_fs::fuse::FuseAdapter;
use chaserfs_fs::Workspace;
use uuid::Uuid;

use crate::model::*;
use crate::service::{
    now, put, ApiError, ApiResult, ErrorKind, Service, BUSY_WAIT, SESSION, WORKSPACE,
};

pub(crate) struct Mounted {
    pub(crate) ws: Arc<Workspace>,
    pub(crate) mount: fuser::BackgroundSession,
}

impl Service {
    /// Mounts an open workspace at `path` (an existing empty directory).
    pub(crate) fn mount(
        &self,
        ws: Arc<Workspace>,
        path: &Path,
    ) -> ApiResult<fuser::BackgroundSession> {
        let mut cfg = fuser::Config::default();
        cfg.mount_options = vec![
            fuser::MountOption::FSName(format!("chaserfs:{}", ws.id())),
            fuser::MountOption::Subtype("chaserfs".into()),
            // The kernel checks permissions from our modes, so sessions can run as any user.
            fuser::MountOption::DefaultPermissions,
            fuser::MountOption::RW,
            fuser::MountOption::Dev,
            fuser::MountOption::Suid,
        ];
        cfg.acl = fuser::SessionACL::All;
        // Four dispatch threads: measured 2x a single thread on tar -x; more gain nothing on
        // two cores, and the workspace orders operations itself.
        cfg.n_threads = Some(4);
        fuser::spawn_mount(FuseAdapter::new(ws), path, &cfg).map_err(|e| {
            ApiError::new(
                ErrorKind::Internal,
                "mount_failed",
                format!("mount failed: {e}"),
            )
        })
    }

    /// Checks a requested mountpoint and creates it if missing. Refuses anything outside the
    /// allowed prefixes, inside the data dir, already a mount, or not an empty directory.
    fn prepare_mountpoint(&self, raw: &str) -> ApiResult<PathBuf> {
        let path = PathBuf::from(raw);
        if !path.is_absolute()
            || raw.contains('\0')
            || path
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(ApiError::bad(
                "invalid_mountpoint",
                "the mountpoint must be an absolute path without . or ..",
            ));
        }
        let allowed = [self.config.mount_root.as_path(), Path::new("/workspace")];
        if !allowed.iter().any(|root| path.starts_with(root)) {
            return Err(ApiError::bad(
                "mountpoint_not_allowed",
                format!(
                    "mountpoints must lie under {} or /workspace",
                    self.config.mount_root.display()
                ),
            ));
        }
        if path.starts_with(&self.config.data_dir) || self.config.data_dir.starts_with(&path) {
            return Err(ApiError::bad(
                "mountpoint_not_allowed",
                "the mountpoint overlaps the data dir",
            ));
        }
        std::fs::create_dir_all(&path).map_err(|e| {
            ApiError::bad(
                "invalid_mountpoint",
                format!("cannot create the mountpoint: {e}"),
            )
        })?;
        // Symlinks could lead outside the allowed prefixes: check where it really is.
        let real = path
            .canonicalize()
            .map_err(|e| ApiError::bad("invalid_mountpoint", e.to_string()))?;
        if !allowed.iter().any(|root| {
            real.starts_with(root.canonicalize().unwrap_or_else(|_| root.to_path_buf()))
        }) {
            return Err(ApiError::bad(
                "mountpoint_not_allowed",
                "the mountpoint resolves outside the allowed prefixes",
            ));
        }
        if is_mount(&real) {
            return Err(ApiError::conflict(
                "mountpoint_busy",
                "something is already mounted there",
            ));
        }
        let mut entries = std::fs::read_dir(&real)
            .map_err(|e| ApiError::bad("invalid_mountpoint", e.to_string()))?;
        if entries.next().is_some() {
            return Err(ApiError::conflict(
                "mountpoint_not_empty",
                "the mountpoint is not an empty directory",
            ));
        }
        Ok(real)
    }

    pub fn start_session(
        &self,
        account: &str,
        selector: &str,
        mountpoint: &str,
    ) -> ApiResult<SessionView> {
        let ws_id = {
            let mut ix = self.lock();
            let ws = self.resolve_settled(&mut ix, account, selector)?;
            if let Some(active) = ws.active_session_id {
                return Err(ApiError::conflict(
                    "session_active",
                    format!("workspace already has active session {active}"),
                ));
            }
            ix.busy.insert(ws.id);
            ws.id
        };
        let result = self.mount_session(account, ws_id, mountpoint);
        self.release(&mut self.lock(), ws_id);
        result
    }

    fn mount_session(
        &self,
        account: &str,
        ws_id: Uuid,
        mountpoint: &str,
    ) -> ApiResult<SessionView> {
        let path = self.prepare_mountpoint(mountpoint)?;
        let ws = Arc::new(Workspace::open(self.store.clone(), ws_id)?);
        let mount = self.mount(ws.clone(), &path)?;
        let t = now();
        let session = SessionRecord {
            id: Uuid::now_v7(),
            account: account.to_string(),
            workspace_id: ws_id,
            mountpoint: path,
            status: SessionStatus::Active,
            created_at: t.clone(),
            ended_at: None,
        };
        let mut ix = self.lock();
        // The workspace was busy, so nothing deleted or changed it meanwhile.
        let mut rec = ix.workspaces[&ws_id].clone();
        rec.active_session_id = Some(session.id);
        rec.updated_at = t;
        let written = self.store.meta_write(&[
            put(SESSION, session.id, &session),
            put(WORKSPACE, rec.id, &rec),
        ]);
        if let Err(e) = written {
            drop(ix);
            let _ = mount.umount_and_join();
            return Err(e.into());
        }
        ix.put_workspace(rec);
        ix.sessions.insert(session.id, session.clone());
        self.mounts.lock().insert(session.id, Mounted { ws, mount });
        Ok(SessionView::from(&session))
    }

    pub fn list_sessions(&self, account: &str) -> ApiResult<Vec<SessionView>> {
        let ix = self.lock();
        let mut out: Vec<&SessionRecord> = ix
            .sessions
            .values()
            .filter(|s| s.account == account)
            .collect();
        out.sort_by(|a, b| (&a.created_at, a.id).cmp(&(&b.created_at, b.id)));
        Ok(out.into_iter().map(SessionView::from).collect())
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
    /// session as the workspace's last. Ending an ended session answers it as it is.
    pub fn end_session(&self, account: &str, id: &str) -> ApiResult<SessionView> {
        let s = self.session(Some(account), id)?;
        Ok(SessionView::from(&self.end(s)?))
    }

    pub(crate) fn end_session_by_id(&self, id: Uuid) -> ApiResult<()> {
        let s = self.session(None, &id.to_string())?;
        self.end(s).map(|_| ())
    }

    fn end(&self, mut s: SessionRecord) -> ApiResult<SessionRecord> {
        {
            let mut ix = self.lock();
            // Another call may be ending it right now: wait for that, then answer its result.
            let deadline = std::time::Instant::now() + BUSY_WAIT;
            while ix.busy.contains(&s.workspace_id) {
                if self.idle.wait_until(&mut ix, deadline).timed_out() {
                    return Err(ApiError::conflict(
                        "workspace_busy",
                        "the session's workspace stayed busy; retry",
                    ));
                }
            }
            if ix.sessions.get(&s.id).map(|c| c.status) != Some(SessionStatus::Active) {
                return Ok(ix.sessions.get(&s.id).cloned().unwrap_or(s));
            }
            ix.busy.insert(s.workspace_id);
        }
        let result = self.unmount_and_record(&mut s);
        self.release(&mut self.lock(), s.workspace_id);
        result.map(|_| s)
    }

    fn unmount_and_record(&self, s: &mut SessionRecord) -> ApiResult<()> {
        let mounted = self.mounts.lock().remove(&s.id);
        if let Some(m) = mounted {
            if let Err(e) = m.mount.umount_and_join() {
                tracing::warn!(
                    "unmount of {} failed ({e}); detaching",
                    s.mountpoint.display()
                );
                detach(&s.mountpoint);
            }
            m.ws.commit(true)?;
        }
        s.status = SessionStatus::Ended;
        s.ended_at = Some(now());
        let mut ix = self.lock();
        let mut ops = vec![put(SESSION, s.id, &*s)];
        let ws = ix.workspaces.get(&s.workspace_id).cloned().map(|mut w| {
            if w.active_session_id == Some(s.id) {
                w.active_session_id = None;
            }
            w.last_session_id = Some(s.id);
            w.updated_at = now();
            ops.push(put(WORKSPACE, w.id, &w));
            w
        });
        self.store.meta_write(&ops)?;
        if let Some(w) = ws {
            ix.put_workspace(w);
        }
        ix.sessions.insert(s.id, s.clone());
        Ok(())
    }

    /// Commits every mounted workspace without syncing: the periodic commit.
    pub fn commit_all(&self) {
        let mounted: Vec<Arc<Workspace>> =
            self.mounts.lock().values().map(|m| m.ws.clone()).collect();
        for ws in mounted {
            if let Err(e) = ws.commit(false) {
                tracing::error!("periodic commit of {}: {e}", ws.id());
            }
        }
    }

    /// Ends every session and stops background work: on SIGTERM.
    pub fn shutdown(&self) {
        let ids: Vec<Uuid> = self.mounts.lock().keys().copied().collect();
        for id in ids {
            if let Err(e) = self.end_session_by_id(id) {
                tracing::error!("ending session {id}: {e:?}");
            }
        }
        self.stop_background();
    }

    /// What a crashed run left: sessions still active (their mounts are detached, their
    /// workspaces' last commit stands) and imports that were running (marked failed).
    pub(crate) fn recover(&self) -> ApiResult<()> {
        let mut ix = self.lock();
        let stale: Vec<SessionRecord> = ix
            .sessions
            .values()
            .filter(|s| s.status == SessionStatus::Active)
            .cloned()
            .collect();
        for mut s in stale {
            tracing::warn!("ending session {} left by a previous run", s.id);
            detach(&s.mountpoint);
            s.status = SessionStatus::Ended;
            s.ended_at = Some(now());
            let mut ops = vec![put(SESSION, s.id, &s)];
            if let Some(w) = ix.workspaces.get(&s.workspace_id) {
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

/// Whether `path` is a mount point: listed as one in /proc/self/mountinfo.
fn is_mount(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = path.to_string_lossy();
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|m| m.replace("\\040", " ") == target)
    })
}

/// Lazily detaches whatever is mounted at `path` (a stale FUSE mount answers ENOTCONN).
pub(crate) fn detach(path: &Path) {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: a valid NUL-terminated path; umount2 reads it and nothing else.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        tracing::debug!(
            "detach {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
}
