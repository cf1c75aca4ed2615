//! The workspace service: accounts and keys, workspaces, sessions and their FUSE mounts.
//! No HTTP types here; every method answers `Result<_, ApiError>` and blocks (mounting and
//! committing touch the disk), so the HTTP layer calls it from blocking tasks.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chaserfs_fs::fuse::FuseAdapter;
use chaserfs_fs::{roots, FsError, Store, Workspace};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What went wrong, with a stable snake_case code for clients.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ErrorKind {
    BadRequest,
    Unauthorized,
    NotFound,
    Conflict,
    Internal,
}

impl ApiError {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            code,
            message: message.into(),
        }
    }
    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, code, message)
    }
    fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, code, message)
    }
    fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, code, message)
    }
}

impl From<FsError> for ApiError {
    fn from(e: FsError) -> Self {
        match e {
            FsError::NotFound => ApiError::not_found("not_found", "not found"),
            FsError::Busy(m) => ApiError::conflict("busy", m),
            other => {
                tracing::error!("storage: {other}");
                ApiError::new(
                    ErrorKind::Internal,
                    "internal_error",
                    "internal storage error",
                )
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionType {
    Browser,
    Sandbox,
}

/// A workspace as stored (under `W` + id in the `meta` column family) and as served.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkspaceRecord {
    pub id: Uuid,
    /// Stored; the HTTP layer leaves it out of responses.
    pub account: String,
    pub name: Option<String>,
    pub session_type: SessionType,
    pub image: Option<String>,
    pub template: bool,
    pub status: String,
    pub active_session_id: Option<Uuid>,
    pub last_session_id: Option<Uuid>,
    pub created_at: String,
    pub updated_at: String,
}

/// A session as stored (under `S` + id) and as served.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: Uuid,
    /// Stored; the HTTP layer leaves it out of responses.
    pub account: String,
    pub workspace_id: Uuid,
    pub mountpoint: PathBuf,
    pub status: String,
    pub created_at: String,
    pub ended_at: Option<String>,
}

/// What `POST /v1/workspaces` accepts (the fresh form).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspace {
    pub session_type: SessionType,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub template: bool,
}

pub struct Config {
    pub data_dir: PathBuf,
    /// Where sessions may mount, besides `/workspace`.
    pub mount_root: PathBuf,
    pub commit_interval: Duration,
}

struct Mounted {
    ws: Arc<Workspace>,
    mount: fuser::BackgroundSession,
}

pub struct Service {
    store: Arc<Store>,
    config: Config,
    /// blake3(key) -> account
    keys: HashMap<[u8; 32], String>,
    mounts: Mutex<HashMap<Uuid, Mounted>>,
    /// Serializes record read-modify-writes (names, session starts and ends).
    records: Mutex<()>,
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn key(prefix: u8, id: Uuid) -> Vec<u8> {
    let mut k = vec![prefix];
    k.extend_from_slice(id.as_bytes());
    k
}

const WORKSPACE: u8 = b'W';
const SESSION: u8 = b'S';

impl Service {
    pub fn new(
        store: Arc<Store>,
        config: Config,
        keys: Vec<(String, String)>,
    ) -> ApiResult<Arc<Service>> {
        let keys = keys
            .into_iter()
            .map(|(account, key)| (*blake3::hash(key.as_bytes()).as_bytes(), account))
            .collect();
        let svc = Arc::new(Service {
            store,
            config,
            keys,
            mounts: Mutex::new(HashMap::new()),
            records: Mutex::new(()),
        });
        svc.end_stale_sessions()?;
        Ok(svc)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The account a bearer key belongs to. Keys are kept only as hashes, and compared as
    /// hashes in a map, so the time taken says nothing about how close a wrong key was.
    pub fn authenticate(&self, key: &str) -> ApiResult<String> {
        let h = blake3::hash(key.as_bytes());
        self.keys.get(h.as_bytes()).cloned().ok_or_else(|| {
            ApiError::new(
                ErrorKind::Unauthorized,
                "unauthorized",
                "missing or invalid API key",
            )
        })
    }

    fn get<T: for<'de> Deserialize<'de>>(&self, prefix: u8, id: Uuid) -> ApiResult<Option<T>> {
        match self.store.meta_get(&key(prefix, id))? {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(|e| {
                ApiError::new(ErrorKind::Internal, "internal_error", e.to_string())
            })?)),
            None => Ok(None),
        }
    }

    /// Writes records of any kinds in one atomic batch.
    fn put(&self, records: &[(u8, Uuid, &dyn erased::Record)]) -> ApiResult<()> {
        let ops: Vec<_> = records
            .iter()
            .map(|(p, id, r)| (key(*p, *id), Some(r.json())))
            .collect();
        Ok(self.store.meta_write(&ops)?)
    }

    fn scan<T: for<'de> Deserialize<'de>>(&self, prefix: u8) -> ApiResult<Vec<T>> {
        self.store
            .meta_scan(&[prefix])?
            .into_iter()
            .map(|(_, v)| {
                serde_json::from_slice(&v).map_err(|e| {
                    ApiError::new(ErrorKind::Internal, "internal_error", e.to_string())
                })
            })
            .collect()
    }

    // ---- workspaces ----

    pub fn list_workspaces(&self, account: &str) -> ApiResult<Vec<WorkspaceRecord>> {
        let mut all: Vec<WorkspaceRecord> = self.scan(WORKSPACE)?;
        all.retain(|w| w.account == account);
        all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(all)
    }

    /// Resolves a name (case-insensitive) or UUID inside the caller's account.
    pub fn resolve(&self, account: &str, selector: &str) -> ApiResult<WorkspaceRecord> {
        let all = self.list_workspaces(account)?;
        let by_name: Vec<_> = all
            .iter()
            .filter(|w| {
                w.name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(selector))
            })
            .collect();
        let by_id: Vec<_> = match Uuid::parse_str(selector) {
            Ok(id) => all.iter().filter(|w| w.id == id).collect(),
            Err(_) => Vec::new(),
        };
        match (by_name.as_slice(), by_id.as_slice()) {
            ([w], []) | ([], [w]) => Ok((*w).clone()),
            ([a], [b]) if a.id == b.id => Ok((*a).clone()),
            ([], []) => Err(ApiError::not_found(
                "workspace_not_found",
                format!("no workspace {selector:?}"),
            )),
            _ => Err(ApiError::conflict(
                "workspace_name_ambiguous",
                format!("{selector:?} names more than one workspace"),
            )),
        }
    }

    fn check_name(&self, account: &str, name: &str, except: Option<Uuid>) -> ApiResult<()> {
        if name.trim().is_empty()
            || name.chars().count() > 64
            || name.chars().any(|c| c.is_control() || c == '/')
        {
            return Err(ApiError::bad(
                "invalid_name",
                "names are 1 to 64 characters, not blank, without '/' or control characters",
            ));
        }
        let clash = self.list_workspaces(account)?.into_iter().any(|w| {
            Some(w.id) != except
                && w.name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
        });
        if clash {
            return Err(ApiError::conflict(
                "workspace_name_taken",
                format!("a workspace is already named {name:?}"),
            ));
        }
        Ok(())
    }

    pub fn create_workspace(
        &self,
        account: &str,
        req: CreateWorkspace,
    ) -> ApiResult<WorkspaceRecord> {
        let _g = self.records.lock();
        let id = Uuid::new_v4();
        let name = match req.name {
            Some(n) => {
                self.check_name(account, &n, None)?;
                n
            }
            None => format!("ws-{}", &id.simple().to_string()[..8]),
        };
        if req.image.is_some() && req.session_type != SessionType::Sandbox {
            return Err(ApiError::bad(
                "image_not_allowed",
                "image applies to sandbox workspaces only",
            ));
        }
        roots::create_workspace(&self.store, id)?;
        let t = now();
        let rec = WorkspaceRecord {
            id,
            account: account.to_string(),
            name: Some(name),
            session_type: req.session_type,
            image: req.image,
            template: req.template,
            status: "ready".into(),
            active_session_id: None,
            last_session_id: None,
            created_at: t.clone(),
            updated_at: t,
        };
        self.put(&[(WORKSPACE, id, &rec)])?;
        Ok(rec)
    }

    // ---- sessions ----

    /// Checks a requested mountpoint and creates it if missing. Refuses anything outside the
    /// allowed prefixes, inside the data dir, already a mount, or not an empty directory.
    fn prepare_mountpoint(&self, raw: &str) -> ApiResult<PathBuf> {
        let path = PathBuf::from(raw);
        if !path.is_absolute()
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
    ) -> ApiResult<SessionRecord> {
        let _g = self.records.lock();
        let mut ws_rec = self.resolve(account, selector)?;
        if let Some(active) = ws_rec.active_session_id {
            return Err(ApiError::conflict(
                "session_active",
                format!("workspace already has active session {active}"),
            ));
        }
        let path = self.prepare_mountpoint(mountpoint)?;
        let ws = Arc::new(Workspace::open(self.store.clone(), ws_rec.id)?);
        let mut cfg = fuser::Config::default();
        cfg.mount_options = vec![
            fuser::MountOption::FSName(format!("chaserfs:{}", ws_rec.id)),
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
        let mount = fuser::spawn_mount(FuseAdapter::new(ws.clone()), &path, &cfg).map_err(|e| {
            ApiError::new(
                ErrorKind::Internal,
                "mount_failed",
                format!("mount failed: {e}"),
            )
        })?;
        let t = now();
        let rec = SessionRecord {
            id: Uuid::new_v4(),
            account: account.to_string(),
            workspace_id: ws_rec.id,
            mountpoint: path,
            status: "active".into(),
            created_at: t.clone(),
            ended_at: None,
        };
        ws_rec.active_session_id = Some(rec.id);
        ws_rec.updated_at = t;
        self.put(&[(SESSION, rec.id, &rec), (WORKSPACE, ws_rec.id, &ws_rec)])?;
        self.mounts.lock().insert(rec.id, Mounted { ws, mount });
        Ok(rec)
    }

    pub fn list_sessions(&self, account: &str) -> ApiResult<Vec<SessionRecord>> {
        let mut out: Vec<SessionRecord> = self.scan(SESSION)?;
        out.retain(|s| s.account == account);
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        Ok(out)
    }

    pub fn get_session(&self, account: &str, id: &str) -> ApiResult<SessionRecord> {
        let missing = || ApiError::not_found("session_not_found", format!("no session {id:?}"));
        let id = Uuid::parse_str(id).map_err(|_| missing())?;
        let s: SessionRecord = self.get(SESSION, id)?.ok_or_else(missing)?;
        if s.account != account {
            return Err(missing());
        }
        Ok(s)
    }

    /// Unmounts (the kernel writes back its cache first), commits durably, and records the
    /// session as the workspace's last.
    pub fn end_session(&self, account: &str, id: &str) -> ApiResult<SessionRecord> {
        let _g = self.records.lock();
        let mut s = self.get_session(account, id)?;
        if s.status != "active" {
            return Ok(s);
        }
        self.finish(&mut s)?;
        Ok(s)
    }

    fn finish(&self, s: &mut SessionRecord) -> ApiResult<()> {
        if let Some(m) = self.mounts.lock().remove(&s.id) {
            if let Err(e) = m.mount.umount_and_join() {
                tracing::warn!(
                    "unmount of {} failed ({e}); detaching",
                    s.mountpoint.display()
                );
                detach(&s.mountpoint);
            }
            m.ws.commit(true)?;
        }
        s.status = "ended".into();
        s.ended_at = Some(now());
        match self.get::<WorkspaceRecord>(WORKSPACE, s.workspace_id)? {
            Some(mut w) => {
                if w.active_session_id == Some(s.id) {
                    w.active_session_id = None;
                }
                w.last_session_id = Some(s.id);
                w.updated_at = now();
                self.put(&[(SESSION, s.id, &*s), (WORKSPACE, w.id, &w)])
            }
            None => self.put(&[(SESSION, s.id, &*s)]),
        }
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

    /// Ends every session: on SIGTERM.
    pub fn shutdown(&self) {
        let _g = self.records.lock();
        let ids: Vec<Uuid> = self.mounts.lock().keys().copied().collect();
        for id in ids {
            if let Ok(Some(mut s)) = self.get::<SessionRecord>(SESSION, id) {
                if let Err(e) = self.finish(&mut s) {
                    tracing::error!("ending session {id}: {e:?}");
                }
            }
        }
    }

    /// Sessions a crashed run left active: detach their mounts and mark them ended.
    fn end_stale_sessions(&self) -> ApiResult<()> {
        let all: Vec<SessionRecord> = self.scan(SESSION)?;
        for mut s in all {
            if s.status == "active" {
                tracing::warn!("ending session {} left by a previous run", s.id);
                detach(&s.mountpoint);
                self.finish(&mut s)?;
            }
        }
        Ok(())
    }
}

/// Records of different types written in one batch.
mod erased {
    pub trait Record {
        fn json(&self) -> Vec<u8>;
    }

    impl<T: serde::Serialize> Record for T {
        fn json(&self) -> Vec<u8> {
            serde_json::to_vec(self).expect("records encode")
        }
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
fn detach(path: &Path) {
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
