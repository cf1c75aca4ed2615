//! The S3 bucket: its format record, `format`, and packs of objects (see `packs.rs`),
//! `packs/<blake3 hex of the pack's index>`. An object in a pack is stored as the local store
//! keeps it: a chunk as its codec byte then raw or lz4 bytes, a node as its encoding. Names are
//! content hashes (of the objects a pack holds, and where), so a write of an existing name
//! writes the same objects at the same offsets. The bucket is reached as any `object_store`
//! backend; only [`Objects::new`] knows it is S3.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chaserfs_engine::format::Format;
use chaserfs_engine::{FsError, FsResult, Hash};
use futures::{SinkExt, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{
    ClientOptions, GetOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};

use crate::metrics::record;
use crate::packs::{Entry, Pack, PartCutter, Read};
use crate::{ClusterConfig, Runtime};

/// Requests in flight per fetch batch or delete batch: each costs Garage a round of RPCs, so
/// throughput follows requests in flight (16 -> 64: cold reads 21 -> 39 MiB/s of single
/// chunks in `bench/cluster.sh`).
const PARALLEL: usize = 64;
/// Packs in flight per upload (up to 8 MiB each).
const PACKS_IN_FLIGHT: usize = 8;

pub struct Objects {
    store: Arc<dyn ObjectStore>,
    runtime: Arc<Runtime>,
    pub stats: Arc<ObjectStats>,
    /// Whether the object store answers, for `/readyz` (see [`Objects::failing`]).
    health: Arc<parking_lot::Mutex<Health>>,
}

/// What this host last saw of the object store.
struct Health {
    /// The last failed call's error, until a later call succeeds.
    failing: Option<String>,
    /// Failures so far: a probe that started before the latest one does not clear it.
    failures: u64,
    last_success: Instant,
}

impl Health {
    fn failed(&mut self, why: String) {
        self.failing = Some(why);
        self.failures += 1;
    }
}

/// An object store that has not answered for this long (an idle host, or one whose calls
/// fail) is asked for its format record, so `/readyz` follows it.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// Counters since start, for logs and benchmarks.
#[derive(Default, Debug)]
pub struct ObjectStats {
    /// Objects fetched, in how many requests, and the bytes those requests read.
    pub fetched: AtomicU64,
    pub get_requests: AtomicU64,
    pub fetched_bytes: AtomicU64,
    /// Objects uploaded, in how many packs, and their bytes.
    pub uploaded: AtomicU64,
    pub packs_uploaded: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    /// Chunks not sent because the bucket held them already.
    pub deduplicated: AtomicU64,
}

const PACKS: &str = "packs";
/// The bucket's on-disk format record (`chaserfs_engine::format`), JSON.
const FORMAT: &str = "format";

fn pack_key(pack: &Hash) -> Path {
    Path::from(format!("{PACKS}/{}", pack.to_hex()))
}

/// Whether bodies reach `endpoint` intact without a signature over them: only a store on
/// this host, reached through loopback with no proxy configured, has no wire to alter them.
/// Elsewhere, TLS included (it may end at a load balancer with a plain hop behind it), each
/// upload's body is signed: its SHA-256 computed here and checked by the store, so one
/// altered on the way is refused, not stored (a read would catch it by its hash, but only
/// after the commit was acknowledged). Unsigned, an upload costs the host a sixth less CPU
/// (per 512 MiB sent to a loopback Garage: 1.69-1.81 CPU-seconds against 2.04-2.26) and the
/// store a little less.
pub fn transport_keeps_bodies_intact(endpoint: &str) -> bool {
    !crate::http::proxied() && is_loopback(endpoint)
}

/// Whether `endpoint` names this host through loopback.
fn is_loopback(endpoint: &str) -> bool {
    let Ok(url) = url::Url::parse(endpoint) else {
        return false;
    };
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Some(url::Host::Domain(name)) => name.trim_end_matches('.') == "localhost",
        None => false,
    }
}

fn s3_error(what: &str, e: object_store::Error) -> FsError {
    FsError::Storage(format!("S3 {what}: {e}"))
}

impl Objects {
    pub(crate) fn new(config: &ClusterConfig, runtime: Arc<Runtime>) -> FsResult<Objects> {
        let attempt_timeout = (config.request_timeout / 3).max(Duration::from_secs(1));
        let mut s3 = AmazonS3Builder::new();
        if crate::http::plain_http_without_proxy(&config.s3_endpoint) {
            s3 = s3.with_http_connector(crate::http::QuickAckConnector {
                connect_timeout: Duration::from_secs(5),
                attempt_timeout,
            });
        }
        let s3 = s3
            .with_endpoint(&config.s3_endpoint)
            .with_bucket_name(&config.s3_bucket)
            .with_region(&config.s3_region)
            .with_access_key_id(&config.s3_access_key)
            .with_secret_access_key(&config.s3_secret_key)
            .with_unsigned_payload(transport_keeps_bodies_intact(&config.s3_endpoint))
            // Client options replace the builder's own (`with_allow_http` among them), so
            // plain-HTTP endpoints are allowed here.
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(true)
                    .with_connect_timeout(Duration::from_secs(5))
                    // One attempt gets a third of the budget: a request stalled on a dying
                    // node (Garage takes seconds to notice one) is retried, not waited out.
                    .with_timeout(attempt_timeout),
            )
            .with_retry(RetryConfig {
                max_retries: 5,
                retry_timeout: config.request_timeout,
                ..RetryConfig::default()
            })
            .build()
            .map_err(|e| s3_error("configuration", e))?;
        let store: Arc<dyn ObjectStore> = Arc::new(s3);
        let health = Arc::new(parking_lot::Mutex::new(Health {
            failing: None,
            failures: 0,
            last_success: Instant::now(),
        }));
        runtime.spawn(probe(store.clone(), health.clone()));
        Ok(Objects {
            store,
            runtime,
            stats: Arc::new(ObjectStats::default()),
            health,
        })
    }

    /// Why the object store is failing, if its last call failed (after retries, or for want
    /// of an answer) and none has succeeded since.
    pub fn failing(&self) -> Option<String> {
        self.health.lock().failing.clone()
    }

    /// Notes the outcome of a call that reached the object store, for [`Objects::failing`].
    fn settle<T>(&self, result: FsResult<T>) -> FsResult<T> {
        let mut health = self.health.lock();
        match &result {
            Ok(_) => {
                health.failing = None;
                health.last_success = Instant::now();
            }
            Err(e) => health.failed(e.to_string()),
        }
        result
    }

    /// Fails clearly if the bucket cannot be listed (wrong endpoint, bucket or key).
    pub(crate) fn check(&self) -> FsResult<()> {
        self.runtime.block("S3 bucket check", async {
            let mut list = self.store.list(Some(&Path::from(PACKS)));
            match list.next().await {
                Some(Err(e)) => Err(s3_error("listing the bucket", e)),
                _ => Ok(()),
            }
        })
    }

    /// Refuses a bucket written in another on-disk format; records this build's in one that
    /// has no record yet (new, or written before formats were recorded: this format). Hosts
    /// that race to record it write the same bytes.
    pub(crate) fn check_format(&self, bucket: &str) -> FsResult<()> {
        let key = Path::from(FORMAT);
        self.runtime.block("S3 format record", async {
            match self.store.get(&key).await {
                Ok(found) => {
                    let bytes = found.bytes().await.map_err(|e| s3_error("get", e))?;
                    // A bucket holds no journal: version 1 and 2 buckets are alike, and
                    // stay as they were recorded (see `Format::BUCKET`).
                    Format::check(&bytes, &format!("bucket {bucket}")).map(drop)
                }
                Err(object_store::Error::NotFound { .. }) => {
                    let record = PutPayload::from(Format::BUCKET.encode());
                    self.store
                        .put(&key, record)
                        .await
                        .map_err(|e| s3_error("put", e))?;
                    Ok(())
                }
                Err(e) => Err(s3_error("get", e)),
            }
        })
    }

    /// The bytes of each read's parts, in its order (`None`: its pack is gone),
    /// [`PARALLEL`] requests at a time. The requests run on the runtime's threads, which read
    /// the responses off the sockets (polled from the caller's thread, every piece of a body
    /// woke it) and cut them into parts as they come ([`PartCutter`]).
    pub fn get_reads(&self, reads: &[Read]) -> FsResult<Vec<Option<Vec<Bytes>>>> {
        let wanted: Vec<(Path, std::ops::Range<u64>, PartCutter)> = reads
            .iter()
            .map(|r| (pack_key(&r.pack), r.range.clone(), PartCutter::new(r)))
            .collect();
        let (store, stats) = (self.store.clone(), self.stats.clone());
        let task = self.runtime.spawn_joined(async move {
            futures::stream::iter(wanted.into_iter().map(|(key, range, mut cut)| {
                let (store, stats) = (store.clone(), stats.clone());
                async move {
                    let started = Instant::now();
                    let parts = cut.len();
                    let got = async {
                        let options = GetOptions::new().with_range(Some(range));
                        let mut body = store.get_opts(&key, options).await?.into_stream();
                        let mut bytes = 0;
                        while let Some(piece) = body.next().await {
                            let piece = piece?;
                            bytes += piece.len() as u64;
                            cut.push(&piece);
                        }
                        Ok::<_, object_store::Error>((cut, bytes))
                    }
                    .await;
                    let ok = matches!(got, Ok(_) | Err(object_store::Error::NotFound { .. }));
                    record("s3", "get", started, ok);
                    match got {
                        Ok((cut, bytes)) => {
                            stats.get_requests.fetch_add(1, Ordering::Relaxed);
                            stats.fetched.fetch_add(parts as u64, Ordering::Relaxed);
                            stats.fetched_bytes.fetch_add(bytes, Ordering::Relaxed);
                            Ok(Some((key, cut)))
                        }
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(s3_error("get", e)),
                    }
                }
            }))
            .buffered(PARALLEL)
            .try_collect::<Vec<_>>()
            .await
        });
        let got = self.runtime.block("S3 get", task);
        // No request made, nothing learned.
        let got = if reads.is_empty() {
            got
        } else {
            self.settle(got)
        };
        // A body short of its index is a damaged pack, not a failing object store.
        got?.into_iter()
            .map(|cut| match cut {
                Some((key, cut)) => cut
                    .finish()
                    .map(Some)
                    .ok_or_else(|| FsError::corrupt(format!("{key} is shorter than its index"))),
                None => Ok(None),
            })
            .collect()
    }

    /// Uploads packs as `packs` makes them (on the calling thread), [`PACKS_IN_FLIGHT`] in
    /// flight at all times, and returns each one's name and entries. The next pack is made
    /// while those before it are in flight, so the pipe never drains between them; memory
    /// holds the packs in flight and one more. Each PUT has the request timeout.
    pub fn put_packs(
        &self,
        packs: impl Iterator<Item = FsResult<Pack>>,
    ) -> FsResult<Vec<(Hash, Vec<Entry>)>> {
        let (tx, rx) = futures::channel::mpsc::channel::<Pack>(0);
        let (store, stats) = (self.store.clone(), self.stats.clone());
        let timeout = self.runtime.timeout();
        let uploads = self.runtime.spawn_joined(async move {
            rx.map(|p| {
                let (store, stats) = (store.clone(), stats.clone());
                async move {
                    let started = Instant::now();
                    let key = pack_key(&p.name);
                    let put = store.put(&key, p.parts.iter().cloned().collect());
                    let put = match tokio::time::timeout(timeout, put).await {
                        Ok(put) => put.map_err(|e| s3_error("put", e)),
                        Err(_) => {
                            crate::metrics::timed_out("s3");
                            Err(FsError::Storage(format!(
                                "S3 upload: no answer within {timeout:?}"
                            )))
                        }
                    };
                    record("s3", "put", started, put.is_ok());
                    put?;
                    stats.packs_uploaded.fetch_add(1, Ordering::Relaxed);
                    stats
                        .uploaded
                        .fetch_add(p.entries.len() as u64, Ordering::Relaxed);
                    stats
                        .uploaded_bytes
                        .fetch_add(p.len as u64, Ordering::Relaxed);
                    Ok::<_, FsError>((p.name, p.entries))
                }
            })
            .buffer_unordered(PACKS_IN_FLIGHT)
            .try_collect::<Vec<_>>()
            .await
        });
        let mut tx = tx;
        let mut made = Ok(());
        let mut any = false;
        for pack in packs {
            match pack {
                // Waits while the uploads are a pack ahead; refused once they failed.
                Ok(pack) => {
                    any = true;
                    if futures::executor::block_on(tx.send(pack)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    made = Err(e);
                    break;
                }
            }
        }
        drop(tx);
        let mut uploaded = futures::executor::block_on(uploads);
        if any {
            uploaded = self.settle(uploaded);
        }
        made?;
        uploaded
    }

    /// Every pack in the bucket: (name, size, last modified), for the collector.
    pub fn list_packs(&self) -> FsResult<Vec<(Hash, u64, std::time::SystemTime)>> {
        let started = Instant::now();
        let listed = self.runtime.block("S3 list", async {
            let mut out = Vec::new();
            let mut list = self.store.list(Some(&Path::from(PACKS)));
            while let Some(meta) = list.next().await {
                let meta = meta.map_err(|e| s3_error("list", e))?;
                let Some(hash) = meta.location.filename().and_then(Hash::from_hex) else {
                    continue;
                };
                out.push((hash, meta.size, meta.last_modified.into()));
            }
            Ok(out)
        });
        record("s3", "list", started, listed.is_ok());
        self.settle(listed)
    }

    /// Deletes packs, [`PARALLEL`] at a time.
    pub fn delete_packs(&self, packs: &[Hash]) -> FsResult<()> {
        let deleted = self.runtime.block("S3 delete", async {
            futures::stream::iter(packs.iter().map(|pack| {
                let store = self.store.clone();
                async move {
                    let started = Instant::now();
                    let deleted = store.delete(&pack_key(pack)).await;
                    let ok = matches!(deleted, Ok(()) | Err(object_store::Error::NotFound { .. }));
                    record("s3", "delete", started, ok);
                    match deleted {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                        Err(e) => Err(s3_error("delete", e)),
                    }
                }
            }))
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
        });
        if packs.is_empty() {
            return deleted;
        }
        self.settle(deleted)
    }
}

/// Asks for the bucket's format record whenever no call has succeeded for [`PROBE_EVERY`]:
/// an answer (found or not) clears a failure no call made since, and no answer is one.
async fn probe(store: Arc<dyn ObjectStore>, health: Arc<parking_lot::Mutex<Health>>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let failures = {
            let h = health.lock();
            if h.failing.is_none() && h.last_success.elapsed() < PROBE_EVERY {
                continue;
            }
            h.failures
        };
        let started = Instant::now();
        let answered = tokio::time::timeout(PROBE_EVERY, store.head(&Path::from(FORMAT))).await;
        let failed = match answered {
            Ok(Ok(_) | Err(object_store::Error::NotFound { .. })) => None,
            Ok(Err(e)) => Some(format!("S3 head {FORMAT}: {e}")),
            Err(_) => Some(format!(
                "S3 head {FORMAT}: no answer within {PROBE_EVERY:?}"
            )),
        };
        record("s3", "head", started, failed.is_none());
        let mut h = health.lock();
        match failed {
            None => {
                if h.failures == failures {
                    h.failing = None;
                }
                h.last_success = Instant::now();
            }
            Some(why) => h.failed(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn only_loopback_endpoints_count_as_wireless() {
        for endpoint in [
            "http://127.0.0.1:3900",
            "http://127.1:3900",
            "http://[::1]:3900",
            "http://[::ffff:127.0.0.1]:3900",
            "http://localhost:3900",
            "http://LOCALHOST.:3900",
        ] {
            assert!(is_loopback(endpoint), "{endpoint}");
        }
        for endpoint in [
            "https://s3.example.com",
            "http://10.0.0.5:3900",
            "http://localhost@10.0.0.5:3900",
            "http://s3.example.com",
            "not a url",
        ] {
            assert!(!is_loopback(endpoint), "{endpoint}");
        }
    }
}
