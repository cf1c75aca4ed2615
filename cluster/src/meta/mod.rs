//! Roots, records and holds in etcd, under the cluster's prefix (the keys: [`keys`]). This
//! module holds the connection, the state this host keeps of them, and the requests every
//! part sends; each part is its own module: [`roots`], [`records`], [`holds`], [`packs`] (the
//! pack index) and [`gc_lock`] (the collector's lock and sweep), on [`leases`].
//!
//! Every change is one transaction. Record writes carry "no record changed since this host's
//! view" (a compare of `P mrev`'s revision), so hosts decide on current records or retry;
//! deletes leave tombstones so a host catching up (`changes`: keys modified since its view)
//! sees them. A commit carries "this host still holds the workspace, and its root is the one
//! this host last wrote" (fencing): a host whose lease expired can no longer move a root,
//! whatever its clock says.

mod gc_lock;
mod holds;
mod keys;
mod leases;
pub(crate) mod packs;
mod records;
mod roots;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaserfs_engine::{FsError, FsResult};
use etcd_client::{Client, ConnectOptions, GetOptions, Txn};
use parking_lot::Mutex;
use uuid::Uuid;

use crate::{ClusterConfig, EtcdSecurity, Runtime};
use keys::Keys;
use leases::{keep_alive, mark_alive, Lease};

pub struct Meta {
    etcd: Client,
    runtime: Arc<Runtime>,
    keys: Keys,
    host: String,
    ttl: Duration,
    lease: Arc<Mutex<Lease>>,
    held: Mutex<HashMap<Uuid, Held>>,
    /// The etcd revision up to which the caller has seen every record change.
    view: Mutex<Option<i64>>,
    /// The lease the collector lock was taken on, while this host holds it: every step of
    /// the collection is fenced by it (see [`Meta::gc_fence`]).
    gc_lease: Mutex<Option<i64>>,
}

/// A workspace this host holds open.
struct Held {
    token: Vec<u8>,
    /// The revision of the root pointer this host last read or wrote.
    root_rev: i64,
}

fn etcd_error(what: &str, e: etcd_client::Error) -> FsError {
    FsError::Storage(format!("etcd {what}: {e}"))
}

/// A request whose connection was refused is tried again this many times (each pick of the
/// client's rotation over the members may land on a dead one).
const RETRIES: u32 = 8;
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// Whether a request failed before reaching any member (its connection could not be made),
/// so sending it again cannot apply it twice.
fn never_sent(e: &etcd_client::Error) -> bool {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return false;
    };
    // hyper's connector names the connect step in its error; a reset or refused connect.
    if status.message().contains("connect error") {
        return true;
    }
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        source = s.source();
    }
    false
}

fn revision(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.map_or(0, |h| h.revision())
}

impl Meta {
    pub(crate) fn connect(config: &ClusterConfig, runtime: Arc<Runtime>) -> FsResult<Meta> {
        let ttl = config.lease_ttl;
        let keys = Keys::new(config.etcd_prefix.clone());
        let (etcd, lease_id) = runtime.block("etcd connect", async {
            let options = secured(
                ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(config.request_timeout)
                    .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
                    .with_require_leader(true),
                &config.etcd_security,
            )?;
            let mut etcd = Client::connect(&config.etcd_endpoints, Some(options))
                .await
                .map_err(|e| etcd_error("connect", e))?;
            let lease = etcd
                .lease_grant(ttl.as_secs().max(2) as i64, None)
                .await
                .map_err(|e| etcd_error("lease grant", e))?;
            mark_alive(&mut etcd, &keys, &config.host, lease.id())
                .await
                .map_err(|e| etcd_error("lease liveness key", e))?;
            Ok((etcd, lease.id()))
        })?;
        let lease = Arc::new(Mutex::new(Lease {
            id: lease_id,
            renewed: Instant::now(),
            lost: false,
        }));
        runtime.spawn(keep_alive(
            etcd.clone(),
            lease.clone(),
            ttl,
            (keys.clone(), config.host.clone()),
        ));
        tracing::info!(
            "cluster: host {} joined with lease {lease_id:x} (ttl {ttl:?})",
            config.host
        );
        Ok(Meta {
            etcd,
            runtime,
            keys,
            host: config.host.clone(),
            ttl,
            lease,
            held: Mutex::new(HashMap::new()),
            view: Mutex::new(None),
            gc_lease: Mutex::new(None),
        })
    }

    /// This host's lease, refused while it is not known to be alive (see [`Lease::live`]).
    pub(crate) fn live_lease(&self) -> FsResult<i64> {
        self.lease.lock().live(self.ttl)
    }

    async fn txn(&self, what: &str, txn: Txn) -> FsResult<etcd_client::TxnResponse> {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            match self.etcd.clone().txn(txn.clone()).await {
                Err(e) if never_sent(&e) && attempt < RETRIES => attempt += 1,
                r => {
                    crate::metrics::record("etcd", "txn", started, r.is_ok());
                    return r.map_err(|e| etcd_error(what, e));
                }
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    async fn get(
        &self,
        what: &str,
        key: impl Into<Vec<u8>>,
        options: Option<GetOptions>,
    ) -> FsResult<etcd_client::GetResponse> {
        let key = key.into();
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            match self.etcd.clone().get(key.clone(), options.clone()).await {
                Err(e) if never_sent(&e) && attempt < RETRIES => attempt += 1,
                r => {
                    crate::metrics::record("etcd", "get", started, r.is_ok());
                    return r.map_err(|e| etcd_error(what, e));
                }
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    async fn get_kv(&self, key: Vec<u8>) -> FsResult<Option<etcd_client::KeyValue>> {
        let mut r = self.get("get", key, None).await?;
        Ok(r.take_kvs().into_iter().next())
    }
}

/// `options` with the user and TLS settings `security` names.
fn secured(mut options: ConnectOptions, security: &EtcdSecurity) -> FsResult<ConnectOptions> {
    use etcd_client::{Certificate, Identity, TlsOptions};
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| FsError::Storage(format!("reading {}: {e}", path.display())))
    };
    if let Some((user, password)) = &security.user {
        options = options.with_user(user, password);
    }
    if security.ca_file.is_some() || security.cert_key_files.is_some() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &security.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let Some((cert, key)) = &security.cert_key_files {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        options = options.with_tls(tls);
    }
    Ok(options)
}
