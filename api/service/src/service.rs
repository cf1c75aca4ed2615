//! The workspace service: accounts and keys, workspaces, snapshots and the rules between them
//! and sessions. No HTTP types here; every method answers `Result<_, ApiError>` and may block
//! (it writes RocksDB, mounts, runs git), so the HTTP layer calls it from blocking tasks.
//!
//! Records live in RocksDB (`meta` column family, JSON) and, for fast selectors and listings,
//! in an in-memory index loaded at start. Every change is written under the index lock, in
//! the same batch as the root-pointer change it goes with, so disk and memory never disagree
//! and a crash leaves either both or neither. Slow operations (mounting, unmounting, importing)
//! do not hold the lock: they mark their workspace busy instead, and fast operations refuse a
//! busy workspace with 409.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use chaserfs_engine::ops::gc;
use chaserfs_engine::{roots, MetaOp, RootId, Store, Timespec};
use parking_lot::{Condvar, Mutex, MutexGuard};
use serde::Deserialize;
use uuid::Uuid;

use crate::accounts::Policy;
pub use crate::error::{ApiError, ApiResult, ErrorKind};
use crate::model::*;
use crate::sessions::Mounted;

pub struct Config {
    pub data_dir: PathBuf,
    /// Where sessions may mount, besides `/workspace`.
    pub mount_root: PathBuf,
    pub commit_interval: Duration,
    /// Base URL `owner/repo` imports are cloned from.
    pub github_url: String,
    /// What the operator allows each account, its GitHub token included.
    pub accounts: crate::accounts::Accounts,
    /// Cluster mode: this host's name, recorded in the sessions it serves.
    pub host: Option<String>,
    /// What workspace contents may carry into the host: nothing unless the operator says.
    pub trust: Trust,
    /// Most bytes of file data one tar import may hold.
    pub import_max_bytes: u64,
    /// Most archive imports and exports streaming at once (an account may have a quarter).
    pub max_archive_streams: usize,
}

/// Privileges a workspace's contents may confer, each off unless the operator turns it on
/// (`serve --insecure-*`; SECURITY.md says what each risks). Contents come from tenants.
#[derive(Clone, Copy, Debug, Default)]
pub struct Trust {
    /// Mount sessions `suid` (setuid bits and file capabilities take effect) and keep
    /// setuid/setgid bits from imported archives.
    pub suid: bool,
    /// Mount sessions `dev` (device nodes open devices) and import device nodes.
    pub dev: bool,
    /// Import `security.*` and `trusted.*` extended attributes from archives.
    pub privileged_xattrs: bool,
}

/// Names of workspaces: what `PUT .../name` and `POST /v1/workspaces` accept.
pub const NAME_RULE: &str = "names are 1 to 64 characters, without control characters or '/', \
     without leading or trailing whitespace, and not '.' or '..'";
/// Names the API's own paths use under /v1/workspaces/.
const RESERVED_NAMES: [&str; 2] = ["import", "bulk-delete"];
/// Most workspaces one fork makes (as E2B allows).
pub const FORK_MAX: usize = 100;
/// Longest name prefix of a fork: room is left for the `-N` suffix.
const FORK_PREFIX_MAX: usize = 56;
/// Most selectors one bulk delete takes.
pub const BULK_DELETE_MAX: usize = 1000;
/// Largest page of a listing.
pub const LIST_LIMIT_MAX: usize = 1000;
const LIST_LIMIT_DEFAULT: usize = 100;
/// How often a write is decided again when records keep changing on other hosts under it.
const STALE_RETRIES: u64 = 20;
/// How long a call waits for a session start or end on its workspace before answering 409.
pub(crate) const BUSY_WAIT: Duration = Duration::from_secs(10);

pub(crate) const WORKSPACE: u8 = b'W';
pub(crate) const SNAPSHOT: u8 = b'P';
pub(crate) const SESSION: u8 = b'S';

pub(crate) fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn rfc3339(t: Timespec) -> String {
    humantime::format_rfc3339_millis(t.to_system_time()).to_string()
}

pub(crate) fn key(prefix: u8, id: Uuid) -> Vec<u8> {
    let mut k = vec![prefix];
    k.extend_from_slice(id.as_bytes());
    k
}

pub(crate) fn put<T: serde::Serialize>(prefix: u8, id: Uuid, rec: &T) -> MetaOp {
    (
        key(prefix, id),
        Some(serde_json::to_vec(rec).expect("records encode")),
    )
}

fn short_id() -> String {
    Uuid::new_v4().simple().to_string()[..8].to_string()
}

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

/// Whether `name` is `lowercase` case-insensitively, without allocating: a workspace may
/// hold thousands of snapshots, and lookups compare against each.
fn named(name: &str, lowercase: &str) -> bool {
    name.chars()
        .flat_map(char::to_lowercase)
        .eq(lowercase.chars())
}

/// Checks a workspace or snapshot name against [`NAME_RULE`].
pub fn check_name_format(name: &str) -> ApiResult<()> {
    let n = name.chars().count();
    if n == 0
        || n > 64
        || name.trim() != name
        || name == "."
        || name == ".."
        || name.chars().any(|c| c.is_control() || c == '/')
    {
        return Err(ApiError::bad("invalid_name", NAME_RULE));
    }
    Ok(())
}

pub(crate) fn check_image(image: &Option<String>, session_type: SessionType) -> ApiResult<()> {
    let Some(image) = image else { return Ok(()) };
    if session_type != SessionType::Sandbox {
        return Err(ApiError::bad(
            "image_not_allowed",
            "image applies to sandbox workspaces only",
        ));
    }
    if image.is_empty()
        || image.len() > 512
        || image.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ApiError::bad(
            "invalid_image",
            "image is an OCI reference of 1 to 512 characters without whitespace",
        ));
    }
    Ok(())
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
    fn check_name(&self, account: &str, name: &str, except: Option<Uuid>) -> ApiResult<()> {
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

    fn snapshot_count(&self, ws: Uuid) -> u64 {
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

/// `GET /v1/workspaces/{workspace}/diff` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DiffQuery {
    /// A snapshot (name or id), or `current`: the workspace's last commit.
    pub from: String,
    /// As `from`; default `current`.
    pub to: Option<String>,
    /// Most changes listed, 1 to 100000 (default 10000). A page also ends after about
    /// 16 MiB of paths.
    #[param(minimum = 1, maximum = 100000)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Most changes one diff page lists.
pub const DIFF_LIMIT_MAX: usize = 100_000;
const DIFF_LIMIT_DEFAULT: usize = 10_000;
/// About the most path bytes one diff page holds: a page of paths thousands of directories
/// deep stays this size, and the next page goes on.
const DIFF_PAGE_BYTES: usize = 16 << 20;

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

/// `GET /v1/workspaces` filters and page.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only templates (`true`) or only non-templates (`false`).
    pub template: Option<bool>,
    pub session_type: Option<SessionType>,
    pub status: Option<WorkspaceStatus>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `GET /v1/sessions` filter and page.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SessionQuery {
    /// Only sessions in this status.
    pub status: Option<SessionStatus>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

pub struct Service {
    pub(crate) store: Arc<Store>,
    pub(crate) config: Config,
    /// (blake3(key), account)
    keys: Vec<(blake3::Hash, String)>,
    pub(crate) index: Mutex<Index>,
    /// Session id -> its mount.
    pub(crate) mounts: Mutex<HashMap<Uuid, Mounted>>,
    /// Signalled whenever a workspace stops being busy.
    pub(crate) idle: Condvar,
    /// Wakes the collector after something was deleted; taken at shutdown.
    gc: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
    /// Running imports, joined at shutdown.
    pub(crate) imports: Mutex<Vec<JoinHandle<()>>>,
    /// Set at shutdown: running imports stop their git.
    pub(crate) stopping: AtomicBool,
    /// Archive imports and exports streaming now, by account.
    pub(crate) streams: Mutex<HashMap<String, usize>>,
}

impl Service {
    /// Loads every record and ends what a crashed run left behind. `keys` holds BLAKE3 hashes
    /// of API keys: the service never sees a key at rest.
    pub fn new(
        store: Arc<Store>,
        config: Config,
        keys: Vec<(String, blake3::Hash)>,
    ) -> ApiResult<Arc<Service>> {
        let svc = Self::load(store, config, keys)?;
        svc.recover(&HashSet::new())?;
        Ok(svc)
    }

    /// As [`Service::new`], readying the sessions a running daemon handed over (see
    /// `takeover.rs`) instead of ending them; [`Service::serve_adopted`] serves them.
    pub fn taking_over(
        store: Arc<Store>,
        config: Config,
        keys: Vec<(String, blake3::Hash)>,
        handover: &crate::takeover::Handover,
        fds: &mut [Option<std::os::fd::OwnedFd>],
    ) -> ApiResult<(Arc<Service>, crate::takeover::Adopted)> {
        let svc = Self::load(store, config, keys)?;
        let adopted = svc.adopt(handover, fds)?;
        Ok((svc, adopted))
    }

    fn load(
        store: Arc<Store>,
        config: Config,
        keys: Vec<(String, blake3::Hash)>,
    ) -> ApiResult<Arc<Service>> {
        let mut index = Index::default();
        for w in scan::<WorkspaceRecord>(&store, WORKSPACE)? {
            index.put_workspace(w);
        }
        let mut snaps = scan::<SnapshotRecord>(&store, SNAPSHOT)?;
        snaps.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        for s in snaps {
            index.snapshots.entry(s.workspace_id).or_default().push(s);
        }
        for s in scan::<SessionRecord>(&store, SESSION)? {
            index.sessions.insert(s.id, s);
        }
        // A cluster's objects are collected across the cluster, not by each host.
        let gc = if store.is_cluster() {
            None
        } else {
            let (gc_wake, wakes) = mpsc::channel();
            let collector = store.clone();
            let gc_thread = std::thread::Builder::new()
                .name("gc".into())
                .spawn(move || collect_when_woken(&collector, wakes))
                .map_err(|e| ApiError::internal(e.to_string()))?;
            Some((gc_wake, gc_thread))
        };
        Ok(Arc::new(Service {
            store,
            config,
            keys: keys.into_iter().map(|(a, h)| (h, a)).collect(),
            index: Mutex::new(index),
            mounts: Mutex::new(HashMap::new()),
            idle: Condvar::new(),
            gc: Mutex::new(gc),
            imports: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            streams: Mutex::new(HashMap::new()),
        }))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Why the store refuses writes now, if it does (it heals in the background).
    pub fn store_failure(&self) -> Option<String> {
        self.store.failure()
    }

    /// The figures `/metrics` reads when scraped. Logical bytes come from each workspace's
    /// root (one cached node read each), so a scrape costs about one read per workspace.
    /// Sessions mounted here, and workspaces of every account.
    pub fn counts(&self) -> (usize, usize) {
        let workspaces = self.lock().workspaces.len();
        (self.mounts.lock().len(), workspaces)
    }

    /// What `/metrics` scans the store for.
    pub fn gauges(&self) -> crate::metrics::Gauges {
        let ids: Vec<Uuid> = self.lock().workspaces.keys().copied().collect();
        let logical_bytes = ids
            .iter()
            .filter_map(|id| roots::stats(&self.store, RootId::Workspace(*id)).ok())
            .map(|(_, sup)| sup.logical_bytes)
            .sum();
        crate::metrics::Gauges {
            logical_bytes,
            disk_bytes: self.store.dir_bytes(),
        }
    }

    /// What the operator allows `account`.
    pub(crate) fn policy(&self, account: &str) -> &Policy {
        self.config.accounts.policy(account)
    }

    /// What a mounted workspace (a session, an import) is held to: its quota within the
    /// operator's ceiling, and its bytes within what its account has left now. Sessions of one
    /// account mounted at once may each use that headroom, so the account can pass its limit
    /// by at most that much per session.
    pub(crate) fn limits_of(
        &self,
        ix: &Index,
        rec: &WorkspaceRecord,
    ) -> ApiResult<chaserfs_engine::Limits> {
        let mut quota = self.policy(&rec.account).clamp(rec.quota);
        if let Some(left) = self.account_bytes_left(ix, &rec.account)? {
            let used = match roots::stats(&self.store, RootId::Workspace(rec.id)) {
                Ok((_, sup)) => sup.used_bytes(),
                Err(chaserfs_engine::FsError::NotFound) => 0,
                Err(e) => return Err(e.into()),
            };
            let cap = used.saturating_add(left);
            quota.bytes = Some(quota.bytes.map_or(cap, |b| b.min(cap)));
        }
        Ok(quota.into())
    }

    /// Refuses a quota a tenant asks for above the operator's ceiling.
    pub(crate) fn check_quota(&self, account: &str, quota: Option<&Quota>) -> ApiResult<()> {
        match quota.map(|q| self.policy(account).check_quota(q)) {
            Some(Err(why)) => Err(ApiError::forbidden("quota_above_limit", why)),
            _ => Ok(()),
        }
    }

    /// Refuses `count` more workspaces holding `bytes` more logical bytes beyond what the
    /// operator allows the account.
    pub(crate) fn check_room(
        &self,
        ix: &Index,
        account: &str,
        count: usize,
        bytes: u64,
    ) -> ApiResult<()> {
        let policy = self.policy(account);
        let (held, _) = ix.held_by(account);
        if held + count as u64 > policy.workspaces {
            return Err(ApiError::forbidden(
                "account_limit",
                format!(
                    "the account holds {held} workspaces; the operator allows it {}",
                    policy.workspaces
                ),
            ));
        }
        if let Some(left) = self.account_bytes_left(ix, account)? {
            if bytes > left || left == 0 {
                return Err(ApiError::forbidden(
                    "account_limit",
                    format!(
                        "the account's workspaces hold {} of the {} bytes the operator \
                         allows it",
                        policy.account_bytes.unwrap_or(0) - left,
                        policy.account_bytes.unwrap_or(0)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Bytes the account may still add, by its workspaces' last commits and its snapshots;
    /// `None` (and nothing read) when the operator set no limit on the account's bytes.
    pub(crate) fn account_bytes_left(&self, ix: &Index, account: &str) -> ApiResult<Option<u64>> {
        let Some(limit) = self.policy(account).account_bytes else {
            return Ok(None);
        };
        let mut used = 0u64;
        for w in ix.workspaces.values().filter(|w| w.account == account) {
            match roots::stats(&self.store, RootId::Workspace(w.id)) {
                Ok((_, sup)) => used = used.saturating_add(sup.used_bytes()),
                Err(chaserfs_engine::FsError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
            for snap in ix.snapshots.get(&w.id).into_iter().flatten() {
                used = used.saturating_add(snap.logical_bytes + snap.metadata_bytes);
            }
        }
        Ok(Some(limit.saturating_sub(used)))
    }

    /// The account a bearer key belongs to. Compares the key's hash with every known hash in
    /// constant time (`blake3::Hash` equality), without stopping at a match.
    pub fn authenticate(&self, key: &str) -> ApiResult<String> {
        let h = blake3::hash(key.as_bytes());
        let mut found = None;
        for (known, account) in &self.keys {
            if *known == h {
                found = Some(account);
            }
        }
        found.cloned().ok_or_else(|| {
            ApiError::new(
                ErrorKind::Unauthorized,
                "unauthorized",
                "missing or invalid API key",
            )
        })
    }

    /// The index, brought up to date with what other hosts wrote (cluster mode). If the
    /// cluster cannot be reached, the index is served as last seen; writes then fail.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Index> {
        let mut ix = self.index.lock();
        if let Err(e) = self.sync(&mut ix) {
            tracing::warn!("reading record changes: {}", e.message);
        }
        ix
    }

    /// Applies records other hosts changed since the last sync (none on a single host).
    pub(crate) fn sync(&self, ix: &mut Index) -> ApiResult<()> {
        for (key, value) in self.store.meta_changes()? {
            ix.apply(&key, value.as_deref())?;
        }
        Ok(())
    }

    /// Runs `decide` (which reads the index and writes) and, while records change on other
    /// hosts between its reading and its writing (cluster mode), catches up and decides
    /// again.
    pub(crate) fn decide<T>(
        &self,
        ix: &mut Index,
        mut decide: impl FnMut(&mut Index) -> ApiResult<T>,
    ) -> ApiResult<T> {
        let mut tries = 0;
        loop {
            match decide(ix) {
                Err(e) if e.code == "records_changed" && tries < STALE_RETRIES => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(rand::random_range(1..=5 * tries)));
                    self.sync(ix)?;
                }
                r => return r,
            }
        }
    }

    pub(crate) fn wake_gc(&self) {
        if let Some((wake, _)) = &*self.gc.lock() {
            let _ = wake.send(());
        }
    }

    /// Marks a workspace no longer busy and wakes whoever waits for it.
    pub(crate) fn release(&self, ix: &mut Index, id: Uuid) {
        ix.busy.remove(&id);
        self.idle.notify_all();
    }

    /// Resolves a workspace and, while a session start or end holds it, waits (up to
    /// [`BUSY_WAIT`]) for it to settle, so callers see the state after, not a 409.
    pub(crate) fn resolve_settled<'a>(
        &'a self,
        ix: &mut MutexGuard<'a, Index>,
        account: &str,
        selector: &str,
    ) -> ApiResult<WorkspaceRecord> {
        let deadline = std::time::Instant::now() + BUSY_WAIT;
        loop {
            let ws = ix.resolve(account, selector)?.clone();
            if !ix.busy.contains(&ws.id) || ws.status == WorkspaceStatus::Importing {
                ix.check_not_busy(&ws)?;
                return Ok(ws);
            }
            if self.idle.wait_until(ix, deadline).timed_out() {
                ix.check_not_busy(&ws)?;
            }
        }
    }

    /// Stops background work so the store can close: running imports (their git is killed
    /// and they are marked failed) and the collector.
    pub(crate) fn stop_background(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let imports: Vec<_> = self.imports.lock().drain(..).collect();
        for t in imports {
            let _ = t.join();
        }
        if let Some((wake, thread)) = self.gc.lock().take() {
            drop(wake);
            let _ = thread.join();
        }
    }

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

    // ---- workspaces ----

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

    /// Runs `act` under the index lock on a workspace no session or slow operation holds.
    /// With `force`, an active session is ended first (commit, unmount); without, 409.
    /// `deleting`: a session whose final commit failed is ended by dropping its changes.
    fn with_idle_workspace<T>(
        &self,
        account: &str,
        selector: &str,
        force: bool,
        deleting: bool,
        mut act: impl FnMut(&mut Index, WorkspaceRecord) -> ApiResult<T>,
    ) -> ApiResult<T> {
        // A new session may start between ending one and acting: try a few times.
        for _ in 0..3 {
            let mut ix = self.lock();
            let ws = self.resolve_settled(&mut ix, account, selector)?;
            match ws.active_session_id {
                None => {
                    let id = ws.id;
                    let mut first = Some(ws);
                    return self.decide(&mut ix, |ix| {
                        // Decided again on the workspace as it is now.
                        let ws = match first.take() {
                            Some(ws) => ws,
                            None => ix.workspaces.get(&id).cloned().ok_or_else(|| {
                                ApiError::not_found("workspace_not_found", "deleted meanwhile")
                            })?,
                        };
                        if let Some(session) = ws.active_session_id {
                            return Err(ApiError::conflict(
                                "session_active",
                                format!("workspace has active session {session}"),
                            ));
                        }
                        act(ix, ws)
                    });
                }
                Some(session) if force => {
                    drop(ix);
                    self.end_session_by_id(session, deleting)?;
                }
                Some(session) => {
                    return Err(ApiError::conflict(
                        "session_active",
                        format!(
                            "workspace has active session {session}; end it or pass force=true"
                        ),
                    ))
                }
            }
        }
        Err(ApiError::conflict(
            "workspace_busy",
            "sessions kept starting on the workspace; retry",
        ))
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
                self.end_session_by_id(id, true)?;
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

    // ---- snapshots ----

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
}

fn scan<T: for<'de> Deserialize<'de>>(store: &Store, prefix: u8) -> ApiResult<Vec<T>> {
    store
        .meta_scan(&[prefix])?
        .into_iter()
        .map(|(_, v)| {
            serde_json::from_slice(&v).map_err(|e| ApiError::internal(format!("record: {e}")))
        })
        .collect()
}

/// Cursors are opaque to clients: hex of `created_at` and id of the last item served.
/// A listing's page size: 1 to [`LIST_LIMIT_MAX`], 100 unless given.
pub(crate) fn check_limit(limit: Option<usize>) -> ApiResult<usize> {
    let limit = limit.unwrap_or(LIST_LIMIT_DEFAULT);
    if !(1..=LIST_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::bad(
            "invalid_limit",
            format!("limit is 1 to {LIST_LIMIT_MAX}"),
        ));
    }
    Ok(limit)
}

/// Where a page ends: listings are in (creation time, id) order.
pub(crate) fn encode_cursor(created_at: &str, id: Uuid) -> String {
    hex::encode(format!("{created_at} {id}"))
}

/// The page's start, from the previous page's `next_cursor` (none or empty: the first page).
pub(crate) fn decode_cursor(c: Option<&str>) -> ApiResult<Option<(String, Uuid)>> {
    let Some(c) = c.filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    let bad = || ApiError::bad("invalid_cursor", "cursor is not one this API returned");
    let text = String::from_utf8(hex::decode(c).map_err(|_| bad())?).map_err(|_| bad())?;
    let (t, id) = text.split_once(' ').ok_or_else(bad)?;
    Ok(Some((
        t.to_string(),
        Uuid::parse_str(id).map_err(|_| bad())?,
    )))
}

/// How often the collector looks at the dead data live workspaces left behind.
const GC_CHECK: Duration = Duration::from_secs(5);
/// Chunk bytes released by commits that make a collection worth running.
const GC_DEAD_BYTES: u64 = 64 << 20;
/// Least time between collections started by dead data, and at least ten times the last
/// collection's duration, so a churning session cannot keep the collector running.
const GC_MIN_GAP: Duration = Duration::from_secs(30);

/// The collector. Deletes wake it (it waits for the burst to settle); and every [`GC_CHECK`]
/// it collects if commits released [`GC_DEAD_BYTES`] or more (`rm -rf` in a live workspace),
/// rate-limited. Each collection compacts, so the space goes back to the disk, and logs what
/// it freed.
fn collect_when_woken(store: &Store, wakes: mpsc::Receiver<()>) {
    let mut last: Option<(std::time::Instant, Duration)> = None;
    loop {
        let trigger = match wakes.recv_timeout(GC_CHECK) {
            Ok(()) => {
                std::thread::sleep(Duration::from_millis(500));
                while wakes.try_recv().is_ok() {}
                "deletes"
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let rested =
                    last.is_none_or(|(at, took)| at.elapsed() >= GC_MIN_GAP.max(took * 10));
                if store.released_bytes() < GC_DEAD_BYTES || !rested {
                    continue;
                }
                "dead data"
            }
        };
        let released = store.released_bytes();
        let before = store.disk_usage().unwrap_or(0);
        let started = std::time::Instant::now();
        let collected = gc::collect(store, true);
        let after = store.disk_usage().unwrap_or(0);
        crate::metrics::record_gc(
            started.elapsed(),
            collected
                .as_ref()
                .map_or(0, |r| (r.deleted_nodes + r.deleted_chunks) as u64),
            before.saturating_sub(after),
        );
        match collected {
            Ok(r) => tracing::info!(
                "gc ({trigger}, {} MiB released by commits): deleted {} nodes and {} chunks; \
                 store {} -> {} MiB in {:?}",
                released >> 20,
                r.deleted_nodes,
                r.deleted_chunks,
                before >> 20,
                after >> 20,
                started.elapsed()
            ),
            Err(e) => tracing::error!("gc: {e}"),
        }
        last = Some((std::time::Instant::now(), started.elapsed()));
    }
}
