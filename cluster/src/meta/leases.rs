//! This host's etcd lease: its holds, its collector lock and its liveness key live on it. It
//! is renewed every third of its TTL; when etcd says it expired, a new one is granted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chaserfs_engine::{FsError, FsResult};
use etcd_client::{Client, PutOptions};
use parking_lot::Mutex;

use super::keys::Keys;

pub(super) struct Lease {
    pub(super) id: i64,
    pub(super) renewed: Instant,
    /// etcd answered that the lease expired: every workspace held under it is lost.
    pub(super) lost: bool,
}

impl Lease {
    /// Refuses while this host's lease is not known to be alive: a host cut off from etcd
    /// stops committing well before its lease can expire there (renewals come every third of
    /// the TTL; two missed ones and it stops).
    pub(super) fn live(&self, ttl: Duration) -> FsResult<i64> {
        if self.lost || self.renewed.elapsed() > ttl * 2 / 3 {
            return Err(FsError::Storage(format!(
                "this host's etcd lease was not renewed for {:?} (cut off from etcd?): \
                 commits are refused until it is",
                self.renewed.elapsed()
            )));
        }
        Ok(self.id)
    }
}

/// Puts lease `lease`'s liveness key ([`Keys::alive`]).
pub(super) async fn mark_alive(
    etcd: &mut Client,
    keys: &Keys,
    host: &str,
    lease: i64,
) -> Result<(), etcd_client::Error> {
    let put = PutOptions::new().with_lease(lease);
    etcd.put(keys.alive(lease), host, Some(put)).await?;
    Ok(())
}

/// Renews this host's lease every third of its TTL. When etcd says it expired (the host was
/// cut off too long), the workspaces held under it are gone; a new lease is granted for new
/// holds.
pub(super) async fn keep_alive(
    mut etcd: Client,
    lease: Arc<Mutex<Lease>>,
    ttl: Duration,
    (keys, host): (Keys, String),
) {
    let every = ttl / 3;
    loop {
        let id = lease.lock().id;
        if let Ok((mut keeper, mut stream)) = etcd.lease_keep_alive(id).await {
            loop {
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match tokio::time::timeout(every, stream.message()).await {
                    Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                        lease.lock().renewed = Instant::now();
                        crate::metrics::lease_renewed();
                    }
                    Ok(Ok(Some(_))) => {
                        tracing::error!("cluster: this host's lease {id:x} expired");
                        lease.lock().lost = true;
                        metrics::counter!(crate::metrics::LEASES_LOST).increment(1);
                        break;
                    }
                    _ => break,
                }
                tokio::time::sleep(every).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        if lease.lock().lost {
            if let Ok(g) = etcd.lease_grant(ttl.as_secs().max(2) as i64, None).await {
                if let Err(e) = mark_alive(&mut etcd, &keys, &host, g.id()).await {
                    tracing::warn!("cluster: marking lease {:x} alive: {e}; retrying", g.id());
                    let _ = etcd.lease_revoke(g.id()).await;
                    tokio::time::sleep(every).await;
                    continue;
                }
                tracing::warn!("cluster: new lease {:x}", g.id());
                *lease.lock() = Lease {
                    id: g.id(),
                    renewed: Instant::now(),
                    lost: false,
                };
                crate::metrics::lease_renewed();
            }
        }
    }
}
