//! Many chaserfs hosts serving one fleet of workspaces, the way git separates objects from
//! refs: everything a tree references (chunks, nodes) is immutable and named by its hash, so
//! it lives in an S3 bucket ([`objects`]); the little that changes (root pointers, records,
//! which host writes which workspace) lives in etcd ([`meta`]), where transactions make every
//! change atomic and fenced. [`Cluster`] implements the engine's [`Remote`] over both.
//!
//! Engine calls are synchronous (FUSE and blocking API threads); they run their futures on
//! this crate's own small runtime, each bounded by a timeout, so a slow or dead peer gives a
//! clear error instead of a hung session.

pub mod gc;
mod meta;
mod objects;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chaserfs_fs::{FsError, FsResult};

pub use meta::Meta;
pub use objects::{ObjectStats, Objects};

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
}

/// Both stores, as the engine's [`chaserfs_fs::Remote`].
pub struct Cluster {
    runtime: Arc<Runtime>,
    pub objects: Objects,
    pub meta: Meta,
}

impl Cluster {
    /// Connects to both stores (failing clearly if either is unreachable) and takes this
    /// host's lease.
    pub fn connect(config: &ClusterConfig) -> FsResult<Arc<Cluster>> {
        // rustls needs a process-wide crypto provider; a second install is a no-op error.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let runtime = Arc::new(Runtime::new(config.request_timeout)?);
        let objects = Objects::new(config, runtime.clone())?;
        let meta = Meta::connect(config, runtime.clone())?;
        objects.check()?;
        Ok(Arc::new(Cluster {
            runtime,
            objects,
            meta,
        }))
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }
}

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
                Err(_) => Err(FsError::Storage(format!(
                    "{what}: no answer within {:?}",
                    self.timeout
                ))),
            }
        })
    }

    pub fn spawn<F>(&self, f: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(f);
    }
}

impl chaserfs_fs::Remote for Cluster {
    fn get_object(
        &self,
        kind: chaserfs_fs::ObjectKind,
        hash: &chaserfs_fs::Hash,
    ) -> FsResult<Option<Vec<u8>>> {
        self.objects.get(kind, hash)
    }

    fn get_objects(
        &self,
        kind: chaserfs_fs::ObjectKind,
        hashes: &[chaserfs_fs::Hash],
    ) -> FsResult<Vec<Option<Vec<u8>>>> {
        self.objects.get_many(kind, hashes)
    }

    fn put_objects(
        &self,
        objects: Vec<(chaserfs_fs::ObjectKind, chaserfs_fs::Hash, Vec<u8>)>,
    ) -> FsResult<()> {
        self.objects.put_all(objects)
    }

    fn get_root(&self, id: chaserfs_fs::RootId) -> FsResult<Option<chaserfs_fs::RootRecord>> {
        self.meta.get_root(id)
    }

    fn list_roots(&self) -> FsResult<Vec<(chaserfs_fs::RootId, chaserfs_fs::RootRecord)>> {
        self.meta.list_roots()
    }

    fn begin_commit(&self) -> FsResult<chaserfs_fs::CommitToken> {
        self.meta.begin_commit()
    }

    fn create_root(
        &self,
        id: chaserfs_fs::RootId,
        record: &chaserfs_fs::RootRecord,
        meta: &[chaserfs_fs::MetaOp],
        token: chaserfs_fs::CommitToken,
    ) -> FsResult<()> {
        self.meta.create_root(id, record, meta, token)
    }

    fn copy_root(
        &self,
        src: chaserfs_fs::RootId,
        dst: chaserfs_fs::RootId,
        dst_exists: bool,
        meta: &[chaserfs_fs::MetaOp],
    ) -> FsResult<chaserfs_fs::RootRecord> {
        self.meta.copy_root(src, dst, dst_exists, meta)
    }

    fn delete_roots(
        &self,
        ids: &[chaserfs_fs::RootId],
        meta: &[chaserfs_fs::MetaOp],
    ) -> FsResult<()> {
        self.meta.delete_roots(ids, meta)
    }

    fn commit_root(
        &self,
        ws: uuid::Uuid,
        record: &chaserfs_fs::RootRecord,
        token: chaserfs_fs::CommitToken,
    ) -> FsResult<()> {
        self.meta.commit_root(ws, record, token)
    }

    fn meta_write(&self, meta: &[chaserfs_fs::MetaOp]) -> FsResult<()> {
        self.meta.write(meta)
    }

    fn meta_scan(&self, prefix: &[u8]) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>> {
        self.meta.scan(prefix)
    }

    fn meta_changes(&self) -> FsResult<Vec<chaserfs_fs::MetaChange>> {
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
