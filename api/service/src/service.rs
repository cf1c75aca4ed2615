//! The service's core: the [`Service`] every operation is a method of, its API keys, its index
//! and the lock over it, how a write is decided under that lock, and waiting for a busy
//! workspace. No HTTP types here; every method answers `Result<_, ApiError>` and may block
//! (it writes RocksDB, mounts, runs git), so the HTTP layer calls it from blocking tasks.
//!
//! Records live in RocksDB (`meta` column family, JSON) and, for fast selectors and listings,
//! in an in-memory index loaded at start. Every change is written under the index lock, in
//! the same batch as the root-pointer change it goes with, so disk and memory never disagree
//! and a crash leaves either both or neither. Slow operations (mounting, unmounting, importing)
//! do not hold the lock: they mark their workspace busy instead, and fast operations refuse a
//! busy workspace with 409.
//!
//! The operations live with their concern (`workspaces`, `snapshots`, `sessions`, `import`,
//! `archive`, `takeover`, `limits`), each an `impl Service` over this core, which imports none
//! of them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use chaserfs_engine::{roots, RootId, Store, Workspace};
use chaserfs_fuse::mount::FuseMount;
use parking_lot::{Condvar, Mutex, MutexGuard};
use uuid::Uuid;

use crate::background::{self, Collector};
pub use crate::config::{Config, Trust};
use crate::error::{ApiError, ApiResult, ErrorKind};
use crate::index::{scan, Index, SESSION, SNAPSHOT, WORKSPACE};
use crate::model::{SessionRecord, SnapshotRecord, WorkspaceRecord, WorkspaceStatus};
use crate::sessions::EndReason;
use crate::warm::WarmTurns;

/// How often a write is decided again when records keep changing on other hosts under it.
const STALE_RETRIES: u64 = 20;
/// How long a call waits for a session start or end on its workspace before answering 409.
pub(crate) const BUSY_WAIT: Duration = Duration::from_secs(10);

/// A session's workspace as this process serves it.
pub(crate) struct Mounted {
    pub(crate) ws: Arc<Workspace>,
    /// `None` once unmounted while the final commit has not succeeded: the overlay stays here,
    /// and the workspace open, until a retry commits it.
    pub(crate) mount: Option<FuseMount>,
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
    gc: Mutex<Option<Collector>>,
    /// Running imports, joined at shutdown.
    pub(crate) imports: Mutex<Vec<JoinHandle<()>>>,
    /// Set at shutdown: running imports stop their git.
    pub(crate) stopping: AtomicBool,
    /// Archive imports and exports streaming now, by account.
    pub(crate) streams: Mutex<HashMap<String, usize>>,
    /// Warm-ups waiting or running, by account.
    pub(crate) warms: WarmTurns,
}

impl Service {
    /// Loads every record and ends what a crashed run left behind. `keys` holds BLAKE3 hashes
    /// of API keys: the service never sees a key at rest.
    pub fn new(
        store: Arc<Store>,
        config: Config,
        keys: Vec<(String, blake3::Hash)>,
    ) -> ApiResult<Arc<Service>> {
        // fsyncs a crash left in the journal become part of their workspace's committed
        // state before anything (a clone, a snapshot, an export) reads it. (A takeover's
        // successor replays them as it opens the workspaces it adopts.)
        let settled = Workspace::settle_journals(&store)?;
        if settled > 0 {
            tracing::info!(
                "committed the fsync journal a previous run left for {settled} workspaces"
            );
        }
        let svc = Self::load(store, config, keys)?;
        svc.recover(&HashSet::new())?;
        Ok(svc)
    }

    pub(crate) fn load(
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
        let gc = background::start(&store)?;
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
            warms: WarmTurns::default(),
        }))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Why this host should get no traffic now, if so: `(code, why)` for `/readyz`. A store
    /// that refuses writes, or, in a cluster, an object store or etcd this host cannot reach.
    /// (A stopping daemon stops accepting connections at once, so probes fail to connect.)
    pub fn unready(&self) -> Option<(&'static str, String)> {
        if let Some(why) = self.store.failure() {
            return Some((
                "store_unhealthy",
                format!(
                    "the store does not take writes ({why}); it heals once the cause has passed"
                ),
            ));
        }
        let why = self.store.remote_unready()?;
        Some((
            "cluster_unreachable",
            format!("the cluster's stores: {why}"),
        ))
    }

    /// The figures `/metrics` reads when scraped. Logical bytes come from each workspace's
    /// root (one cached node read each), so a scrape costs about one read per workspace.
    /// Sessions mounted here, and workspaces of every account.
    pub fn counts(&self) -> (usize, usize) {
        let workspaces = self.lock().workspaces.len();
        (self.mounts.lock().len(), workspaces)
    }

    /// Cluster mode: the object cache's figures (`None` on a single host).
    pub fn cache_stats(&self) -> Option<chaserfs_engine::CacheStats> {
        self.store.is_cluster().then(|| self.store.cache_stats())
    }

    /// What `/metrics` scans the store for.
    pub fn gauges(&self) -> crate::metrics::Gauges {
        // The quotas sessions are held to: the tenant's within the operator's ceiling.
        let quotas: Vec<(Uuid, crate::model::Quota)> = self
            .lock()
            .workspaces
            .values()
            .map(|w| (w.id, self.policy(&w.account).clamp(w.quota)))
            .collect();
        let mut logical_bytes = 0;
        let mut near_quota = 0;
        for (id, quota) in quotas {
            let Ok((_, sup)) = roots::stats(&self.store, RootId::Workspace(id)) else {
                continue;
            };
            logical_bytes += sup.logical_bytes;
            // At 90% or more of either limit (limits up to 2^63 - 1: no product that wraps).
            let near = |used: u64, limit: Option<u64>| limit.is_some_and(|l| used >= l - l / 10);
            if near(sup.used_bytes(), quota.bytes) || near(sup.files, quota.inodes) {
                near_quota += 1;
            }
        }
        let disk = self.store.disk_space().ok();
        crate::metrics::Gauges {
            logical_bytes,
            disk_bytes: self.store.dir_bytes(),
            disk_free_bytes: disk.map(|d| d.avail_bytes()),
            reserve_bytes: self.store.reserve_bytes(),
            near_quota,
        }
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

    /// Runs `act` under the index lock on a workspace no session or slow operation holds.
    /// With `force`, an active session is ended first (commit, unmount); without, 409.
    /// `deleting`: a session whose final commit failed is ended by dropping its changes.
    /// Nothing changes a mounted workspace but its mount: the kernel keeps found and missing
    /// names for the entry TTL (`fs/fuse/src/adapter.rs`), so a change made here to a live one
    /// would have to invalidate them.
    pub(crate) fn with_idle_workspace<T>(
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
                    self.end_session_by_id(session, deleting, EndReason::Forced)?;
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
}
