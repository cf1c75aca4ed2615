//! Many chaserfs hosts serving one fleet of workspaces, the way git separates objects from
//! refs: everything a tree references (chunks, nodes) is immutable and named by its hash, so
//! it lives in an S3 bucket ([`objects`], in packs: [`packs`]); the little that changes (root pointers, records,
//! which host writes which workspace) lives in etcd ([`meta`]), where transactions make every
//! change atomic and fenced. [`Cluster`] implements the engine's [`Remote`] over both.
//!
//! Engine calls are synchronous (FUSE and blocking API threads); they run their futures on
//! this crate's own small runtime, each bounded by a timeout, so a slow or dead peer gives a
//! clear error instead of a hung session.

pub mod gc;
mod http;
mod meta;
pub mod metrics;
mod objects;
pub mod packs;

use bytes::Bytes;
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chaserfs_engine::{CommitToken, FsError, FsResult, Hash, ObjectKind};
use packs::{Index, Object, Refresh};

pub use meta::packs::Fence;
pub use meta::Meta;
pub use objects::{transport_keeps_bodies_intact, ObjectStats, Objects};

/// Where the cluster's two stores are and how this host takes part.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// S3 endpoint URL, e.g. `http://127.0.0.1:3900`.
    pub s3_endpoint: String,
    pub s3_bucket: String,
    pub s3_region: String,
    /// From `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    pub s3_access_key: String,
    pub s3_secret_key: String,
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of this cluster's keys in etcd.
    pub etcd_prefix: String,
    /// This host's name, recorded in the workspaces it holds.
    pub host: String,
    /// TTL of this host's etcd lease: a host that stops renewing it loses its workspaces
    /// this long after its last renewal, and another host may take them over.
    pub lease_ttl: Duration,
    /// Longest any one request to S3 or etcd may take, retries included.
    pub request_timeout: Duration,
    /// How this host proves itself to etcd and checks etcd's certificate.
    pub etcd_security: EtcdSecurity,
}

/// etcd's authentication and TLS (an `https://` endpoint). Without them, etcd must sit on a
/// network only the cluster's hosts reach (SECURITY.md).
#[derive(Clone, Debug, Default)]
pub struct EtcdSecurity {
    /// (user, password) for etcd's own authentication.
    pub user: Option<(String, String)>,
    /// PEM CA certificate that etcd's server certificate must chain to.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate and key, for etcd's `--client-cert-auth`.
    pub cert_key_files: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Both stores, as the engine's [`chaserfs_engine::Remote`].
pub struct Cluster {
    runtime: Arc<Runtime>,
    pub objects: Objects,
    pub meta: Meta,
    /// Which pack holds each object.
    pub index: Index,
}

impl Cluster {
    /// Connects to both stores (failing clearly if either is unreachable) and takes this
    /// host's lease.
    pub fn connect(config: &ClusterConfig) -> FsResult<Arc<Cluster>> {
        // rustls needs a process-wide crypto provider; a second install is a no-op error.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        metrics::describe();
        let runtime = Arc::new(Runtime::new(config.request_timeout)?);
        let objects = Objects::new(config, runtime.clone())?;
        let meta = Meta::connect(config, runtime.clone())?;
        objects.check()?;
        objects.check_format(&config.s3_bucket)?;
        let cluster = Cluster {
            runtime,
            objects,
            meta,
            index: Index::default(),
        };
        cluster.refresh(Refresh::Full)?;
        Ok(Arc::new(cluster))
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub(crate) fn refresh(&self, how: Refresh) -> FsResult<()> {
        self.index.refresh(how, |since| self.meta.scan_packs(since))
    }

    /// Objects in the order asked (`None`: in no pack), nearby ones of a pack in one request.
    /// An object missing from this host's index may be in a pack another host wrote since it
    /// last looked, and one in a pack gone from the bucket may have been repacked by a
    /// collection: both read the index again, then try once more.
    fn fetch(&self, wanted: &[(ObjectKind, Hash)]) -> FsResult<Vec<Option<Bytes>>> {
        let mut out = vec![None; wanted.len()];
        let mut todo: Vec<usize> = (0..wanted.len()).collect();
        let mut pack_gone = false;
        for round in 0..3 {
            match round {
                0 => {}
                1 if !pack_gone => self.refresh(Refresh::CatchUp)?,
                _ => self.refresh(Refresh::Full)?,
            }
            let mut located = Vec::new();
            let mut missing = Vec::new();
            for i in todo {
                let (kind, hash) = &wanted[i];
                match self.index.locate(*kind, hash) {
                    Some(l) => located.push((i, l)),
                    None => missing.push(i),
                }
            }
            let reads = packs::plan_reads(&located);
            for (read, parts) in reads.iter().zip(self.objects.get_reads(&reads)?) {
                let Some(parts) = parts else {
                    pack_gone = true;
                    missing.extend(read.parts.iter().map(|p| p.0));
                    continue;
                };
                for (&(i, _, _), bytes) in read.parts.iter().zip(parts) {
                    out[i] = Some(bytes);
                }
            }
            todo = missing;
            if todo.is_empty() {
                break;
            }
        }
        Ok(out)
    }

    /// Uploads the objects no pack holds yet, in packs, then their indexes (fenced by
    /// `token`: `Stale` if a collection started sweeping since).
    fn upload(
        &self,
        objects: &mut dyn Iterator<Item = FsResult<Object>>,
        token: CommitToken,
    ) -> FsResult<()> {
        // An index read before the last sweep may name packs it deleted.
        self.refresh(if self.index.current_for(token) {
            Refresh::CatchUp
        } else {
            Refresh::Full
        })?;
        let mut seen = HashSet::new();
        let known = AtomicU64::new(0);
        let fresh = objects.filter(|object| match object {
            Ok((kind, hash, _)) if self.index.contains(*kind, hash) => {
                known.fetch_add(u64::from(*kind == ObjectKind::Chunk), Ordering::Relaxed);
                false
            }
            Ok((kind, hash, _)) => seen.insert((*kind, *hash)),
            Err(_) => true,
        });
        let stored = self.store_packs(fresh, Fence::Commit(token));
        self.objects
            .stats
            .deduplicated
            .fetch_add(known.into_inner(), Ordering::Relaxed);
        stored
    }

    /// Packs `objects` and uploads the packs as they are made, recording their indexes
    /// under `fence` after every [`INDEX_EVERY`] of them: a pack becomes reachable only once
    /// the S3 object it names exists, and a collection that starts during a long upload
    /// refuses it within that many packs.
    fn store_packs(
        &self,
        objects: impl Iterator<Item = FsResult<Object>>,
        fence: Fence,
    ) -> FsResult<()> {
        let mut packer = packs::Packer::new(objects);
        loop {
            let uploaded = self.objects.put_packs(packer.by_ref().take(INDEX_EVERY))?;
            if uploaded.is_empty() {
                return Ok(());
            }
            let ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let indexes: Vec<_> = uploaded
                .iter()
                .map(|(name, entries)| {
                    (self.meta.pack_key(ms, name), packs::encode_entries(entries))
                })
                .collect();
            self.meta.put_packs(&indexes, fence)?;
            for (name, entries) in &uploaded {
                self.index.add(*name, entries);
            }
        }
    }
}

/// Packs an upload sends between two writes of their indexes (512 MiB of full packs).
const INDEX_EVERY: usize = 64;

/// A tokio runtime that synchronous callers block on.
pub struct Runtime {
    rt: tokio::runtime::Runtime,
    timeout: Duration,
}

impl Runtime {
    fn new(timeout: Duration) -> FsResult<Runtime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cluster-io")
            .enable_all()
            .build()
            .map_err(|e| FsError::Storage(format!("starting the cluster runtime: {e}")))?;
        Ok(Runtime { rt, timeout })
    }

    /// Runs `f` to completion from a synchronous caller, failing after the request timeout.
    /// Callable from any thread but this runtime's own workers (API handlers block on their
    /// own blocking pool, not here).
    pub fn block<T>(&self, what: &str, f: impl Future<Output = FsResult<T>>) -> FsResult<T> {
        let _enter = self.rt.enter();
        futures::executor::block_on(async {
            match tokio::time::timeout(self.timeout, f).await {
                Ok(r) => r,
                Err(_) => {
                    metrics::timed_out(if what.starts_with("S3") { "s3" } else { "etcd" });
                    Err(FsError::Storage(format!(
                        "{what}: no answer within {:?}",
                        self.timeout
                    )))
                }
            }
        })
    }

    /// The timeout each call (request, transaction) gets.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `f` on the runtime; the future returned (awaitable from any thread, with
    /// `futures::executor::block_on`) gives its result. Dropped before then (a caller that
    /// timed out), it ends the task: nothing runs on for no one.
    pub fn spawn_joined<T: Send + 'static>(
        &self,
        f: impl Future<Output = FsResult<T>> + Send + 'static,
    ) -> impl Future<Output = FsResult<T>> {
        struct AbortOnDrop(tokio::task::AbortHandle);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let task = self.rt.spawn(f);
        let abort = AbortOnDrop(task.abort_handle());
        async move {
            let _abort = abort;
            task.await
                .map_err(|e| FsError::Storage(format!("a cluster task ended: {e}")))?
        }
    }

    pub fn spawn<F>(&self, f: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(f);
    }
}

impl chaserfs_engine::Remote for Cluster {
    fn unready(&self) -> Option<String> {
        // Said without the errors' text (endpoints, keys): `/readyz` answers anyone; the
        // errors themselves reach the callers that met them and the log.
        if self.meta.live_lease().is_err() {
            return Some("etcd has not renewed this host's lease lately".into());
        }
        self.objects
            .failing()
            .map(|_| "the object store's last answer was an error or none".into())
    }

    fn get_object(&self, kind: ObjectKind, hash: &Hash) -> FsResult<Option<Bytes>> {
        Ok(self.fetch(&[(kind, *hash)])?.pop().flatten())
    }

    fn get_objects(&self, kind: ObjectKind, hashes: &[Hash]) -> FsResult<Vec<Option<Bytes>>> {
        let wanted: Vec<_> = hashes.iter().map(|h| (kind, *h)).collect();
        self.fetch(&wanted)
    }

    /// By pack: a cold sequential reader's requests then read whole packs (8 MiB). A file
    /// written by several threads at once (the kernel's write-back does) has its chunks
    /// interleaved in its packs, a MiB here and a MiB there; in file order they would cost a
    /// request per MiB. Objects not indexed here yet go together (their fetch finds them).
    fn group(&self, kind: ObjectKind, hashes: &[Hash], max: usize) -> Vec<Vec<Hash>> {
        packs::group_by_pack(hashes, &self.index.packs_of(kind, hashes), max)
    }

    fn put_objects(
        &self,
        objects: &mut dyn Iterator<Item = FsResult<Object>>,
        token: CommitToken,
    ) -> FsResult<()> {
        self.upload(objects, token)
    }

    fn get_root(
        &self,
        id: chaserfs_engine::RootId,
    ) -> FsResult<Option<chaserfs_engine::RootRecord>> {
        self.meta.get_root(id)
    }

    fn list_roots(&self) -> FsResult<Vec<(chaserfs_engine::RootId, chaserfs_engine::RootRecord)>> {
        self.meta.list_roots()
    }

    fn begin_commit(&self) -> FsResult<chaserfs_engine::CommitToken> {
        self.meta.begin_commit()
    }

    fn create_root(
        &self,
        id: chaserfs_engine::RootId,
        record: &chaserfs_engine::RootRecord,
        meta: &[chaserfs_engine::MetaOp],
        token: chaserfs_engine::CommitToken,
    ) -> FsResult<()> {
        self.meta.create_root(id, record, meta, token)
    }

    fn copy_root(
        &self,
        src: chaserfs_engine::RootId,
        dsts: &[chaserfs_engine::RootId],
        dst_exists: bool,
        meta: &[chaserfs_engine::MetaOp],
    ) -> FsResult<chaserfs_engine::RootRecord> {
        self.meta.copy_root(src, dsts, dst_exists, meta)
    }

    fn delete_roots(
        &self,
        ids: &[chaserfs_engine::RootId],
        meta: &[chaserfs_engine::MetaOp],
    ) -> FsResult<()> {
        self.meta.delete_roots(ids, meta)
    }

    fn commit_root(
        &self,
        ws: uuid::Uuid,
        record: &chaserfs_engine::RootRecord,
        token: chaserfs_engine::CommitToken,
    ) -> FsResult<()> {
        self.meta.commit_root(ws, record, token)
    }

    fn meta_write(&self, meta: &[chaserfs_engine::MetaOp]) -> FsResult<()> {
        self.meta.write(meta)
    }

    fn meta_scan(&self, prefix: &[u8]) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>> {
        self.meta.scan(prefix)
    }

    fn meta_changes(&self) -> FsResult<Vec<chaserfs_engine::MetaChange>> {
        self.meta.changes()
    }

    fn acquire(&self, ws: uuid::Uuid) -> FsResult<()> {
        self.meta.acquire(ws)
    }

    fn release(&self, ws: uuid::Uuid) {
        self.meta.release(ws)
    }

    fn is_held(&self, ws: uuid::Uuid) -> FsResult<bool> {
        self.meta.is_held(ws)
    }
}
