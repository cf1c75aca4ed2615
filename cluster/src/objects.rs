//! Objects in an S3 bucket, one per chunk or node, named by kind and hash:
//! `chunks/<blake3 hex>` (the chunk's stored encoding: codec byte, then raw or lz4 bytes) and
//! `nodes/<blake3 hex>` (the node's encoding). Names are content hashes, so a write of an
//! existing name writes the same bytes, and a chunk the bucket already holds is not sent
//! again (dedup across hosts).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chaserfs_fs::{FsError, FsResult, Hash, ObjectKind};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use crate::{ClusterConfig, Runtime};

/// Requests in flight per upload, fetch batch or delete batch: each object costs Garage a
/// round of RPCs and fsyncs, so throughput follows requests in flight (16 -> 64: cold reads
/// 21 -> 39 MiB/s, uploads 9 -> 12 MiB/s in `bench/cluster.sh`).
const PARALLEL: usize = 64;

pub struct Objects {
    s3: Arc<AmazonS3>,
    runtime: Arc<Runtime>,
    pub stats: ObjectStats,
}

/// Counters since start, for logs and benchmarks.
#[derive(Default, Debug)]
pub struct ObjectStats {
    pub fetched: AtomicU64,
    pub fetched_bytes: AtomicU64,
    pub uploaded: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    /// Chunks not sent because the bucket held them already.
    pub deduplicated: AtomicU64,
}

pub(crate) fn key(kind: ObjectKind, hash: &Hash) -> Path {
    let dir = match kind {
        ObjectKind::Chunk => "chunks",
        ObjectKind::Node => "nodes",
    };
    Path::from(format!("{dir}/{}", hash.to_hex()))
}

fn s3_error(what: &str, e: object_store::Error) -> FsError {
    FsError::Storage(format!("S3 {what}: {e}"))
}

impl Objects {
    pub(crate) fn new(config: &ClusterConfig, runtime: Arc<Runtime>) -> FsResult<Objects> {
        let s3 = AmazonS3Builder::new()
            .with_endpoint(&config.s3_endpoint)
            .with_bucket_name(&config.s3_bucket)
            .with_region(&config.s3_region)
            .with_access_key_id(&config.s3_access_key)
            .with_secret_access_key(&config.s3_secret_key)
            // Client options replace the builder's own (`with_allow_http` among them), so
            // plain-HTTP endpoints are allowed here.
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(true)
                    .with_connect_timeout(Duration::from_secs(5))
                    // One attempt gets a third of the budget: a request stalled on a dying
                    // node (Garage takes seconds to notice one) is retried, not waited out.
                    .with_timeout((config.request_timeout / 3).max(Duration::from_secs(1))),
            )
            .with_retry(RetryConfig {
                max_retries: 5,
                retry_timeout: config.request_timeout,
                ..RetryConfig::default()
            })
            .build()
            .map_err(|e| s3_error("configuration", e))?;
        Ok(Objects {
            s3: Arc::new(s3),
            runtime,
            stats: ObjectStats::default(),
        })
    }

    /// Fails clearly if the bucket cannot be listed (wrong endpoint, bucket or key).
    pub(crate) fn check(&self) -> FsResult<()> {
        self.runtime.block("S3 bucket check", async {
            let mut list = self.s3.list(Some(&Path::from("nodes")));
            match list.next().await {
                Some(Err(e)) => Err(s3_error("listing the bucket", e)),
                _ => Ok(()),
            }
        })
    }

    async fn get_one(&self, kind: ObjectKind, hash: &Hash) -> FsResult<Option<Vec<u8>>> {
        match self.s3.get(&key(kind, hash)).await {
            Ok(r) => {
                let bytes = r.bytes().await.map_err(|e| s3_error("get", e))?;
                self.stats.fetched.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .fetched_bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Ok(Some(bytes.to_vec()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_error("get", e)),
        }
    }

    pub fn get(&self, kind: ObjectKind, hash: &Hash) -> FsResult<Option<Vec<u8>>> {
        self.runtime.block("S3 get", self.get_one(kind, hash))
    }

    /// Objects in the order asked, [`PARALLEL`] requests at a time.
    pub fn get_many(&self, kind: ObjectKind, hashes: &[Hash]) -> FsResult<Vec<Option<Vec<u8>>>> {
        self.runtime.block("S3 get", async {
            futures::stream::iter(hashes.iter().map(|h| self.get_one(kind, h)))
                .buffered(PARALLEL)
                .try_collect()
                .await
        })
    }

    /// Uploads objects, [`PARALLEL`] at a time. A chunk the bucket holds is skipped (one HEAD
    /// request instead of the bytes); nodes are small and almost always new, so they are
    /// written without asking.
    pub fn put_all(&self, objects: Vec<(ObjectKind, Hash, Vec<u8>)>) -> FsResult<()> {
        if objects.is_empty() {
            return Ok(());
        }
        self.runtime.block("S3 upload", async {
            futures::stream::iter(objects.into_iter().map(|(kind, hash, bytes)| {
                let s3 = self.s3.clone();
                let stats = &self.stats;
                async move {
                    let path = key(kind, &hash);
                    if kind == ObjectKind::Chunk {
                        match s3.head(&path).await {
                            Ok(_) => {
                                stats.deduplicated.fetch_add(1, Ordering::Relaxed);
                                return Ok(());
                            }
                            Err(object_store::Error::NotFound { .. }) => {}
                            Err(e) => return Err(s3_error("head", e)),
                        }
                    }
                    let n = bytes.len() as u64;
                    s3.put(&path, PutPayload::from(bytes))
                        .await
                        .map_err(|e| s3_error("put", e))?;
                    stats.uploaded.fetch_add(1, Ordering::Relaxed);
                    stats.uploaded_bytes.fetch_add(n, Ordering::Relaxed);
                    Ok::<(), FsError>(())
                }
            }))
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
        })
    }

    /// Every object in the bucket: (kind, hash, last modified), for the collector.
    pub fn list(&self) -> FsResult<Vec<(ObjectKind, Hash, std::time::SystemTime)>> {
        self.runtime.block("S3 list", async {
            let mut out = Vec::new();
            for (dir, kind) in [("chunks", ObjectKind::Chunk), ("nodes", ObjectKind::Node)] {
                let mut list = self.s3.list(Some(&Path::from(dir)));
                while let Some(meta) = list.next().await {
                    let meta = meta.map_err(|e| s3_error("list", e))?;
                    let Some(hash) = meta.location.filename().and_then(Hash::from_hex) else {
                        continue;
                    };
                    out.push((kind, hash, meta.last_modified.into()));
                }
            }
            Ok(out)
        })
    }

    /// Deletes objects, [`PARALLEL`] at a time.
    pub fn delete_all(&self, objects: &[(ObjectKind, Hash)]) -> FsResult<()> {
        self.runtime.block("S3 delete", async {
            futures::stream::iter(objects.iter().map(|(kind, hash)| {
                let s3 = self.s3.clone();
                async move {
                    match s3.delete(&key(*kind, hash)).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                        Err(e) => Err(s3_error("delete", e)),
                    }
                }
            }))
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
        })
    }
}
