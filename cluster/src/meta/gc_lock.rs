//! The collector's keys in etcd (the protocol is in `gc.rs` of the crate): the lock one host
//! collects under, the sweep during which commits wait, and what a commit carries so that a
//! sweep begun since its upload refuses it.

use chaserfs_engine::{CommitToken, FsError, FsResult};
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use std::time::Duration;

use super::Meta;

impl Meta {
    /// "No collection started sweeping since `token`": what a root write that brings new
    /// objects carries.
    pub(super) fn no_sweep_since(&self, token: CommitToken) -> [Compare; 2] {
        [
            Compare::mod_revision(self.keys.gc_count(), CompareOp::Equal, token),
            Compare::create_revision(self.keys.gc_sweep(), CompareOp::Equal, 0),
        ]
    }

    /// Waits while a collection sweeps (up to the request timeout), then returns the
    /// collection count's revision.
    pub fn begin_commit(&self) -> FsResult<CommitToken> {
        self.runtime.block("etcd begin commit", async {
            loop {
                let r = self
                    .get(
                        "begin commit",
                        self.keys.gc_prefix(),
                        Some(GetOptions::new().with_prefix()),
                    )
                    .await?;
                let sweeping = r.kvs().iter().any(|kv| kv.key() == self.keys.gc_sweep());
                if !sweeping {
                    return Ok(r
                        .kvs()
                        .iter()
                        .find(|kv| kv.key() == self.keys.gc_count())
                        .map_or(0, |kv| kv.mod_revision()));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }

    /// What the collector lock and the sweep key hold: this host and the lease they live on,
    /// so no other process (even one with the same host name) and no other lease matches.
    fn gc_token(&self, lease: i64) -> String {
        format!("{} {lease:x}", self.host)
    }

    /// What every step of a collection carries: `key` (the collector lock or the sweep) still
    /// holding this host's token for the lease the lock was taken on. Once that lease
    /// expires the key is gone and etcd refuses the step, whatever this host's clock says and
    /// whichever process took the lock since; and a host given a new lease stops collecting.
    pub(super) fn gc_fence(&self, key: Vec<u8>) -> FsResult<(Compare, i64)> {
        let held = (*self.gc_lease.lock())
            .ok_or_else(|| FsError::Storage("this host does not hold the collector lock".into()))?;
        if self.live_lease()? != held {
            return Err(FsError::Storage(
                "this host's lease changed during the collection".into(),
            ));
        }
        let token = self.gc_token(held);
        Ok((Compare::value(key, CompareOp::Equal, token), held))
    }

    /// Takes the cluster's collector lock for this host (`Busy` if another host collects).
    pub fn lock_gc(&self) -> FsResult<()> {
        let lease = self.live_lease()?;
        let key = self.keys.gc_lock();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                self.gc_token(lease),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        if self
            .runtime
            .block("etcd gc lock", self.txn("gc lock", txn))?
            .succeeded()
        {
            *self.gc_lease.lock() = Some(lease);
            Ok(())
        } else {
            Err(FsError::Busy("another host is collecting".into()))
        }
    }

    pub fn unlock_gc(&self) {
        let Some(held) = self.gc_lease.lock().take() else {
            return;
        };
        let key = self.keys.gc_lock();
        let txn = Txn::new()
            .when([Compare::value(
                key.clone(),
                CompareOp::Equal,
                self.gc_token(held),
            )])
            .and_then([TxnOp::delete(key, None)]);
        if let Err(e) = self
            .runtime
            .block("etcd gc unlock", self.txn("gc unlock", txn))
        {
            tracing::warn!("releasing the collector lock: {e}; it frees with this host's lease");
        }
    }

    /// Starts a sweep: from here, commits whose upload began earlier are refused and new
    /// ones wait (see `gc.rs`).
    pub fn begin_sweep(&self) -> FsResult<()> {
        let (fence, lease) = self.gc_fence(self.keys.gc_lock())?;
        let txn = Txn::new().when([fence]).and_then([
            TxnOp::put(
                self.keys.gc_sweep(),
                self.gc_token(lease),
                Some(PutOptions::new().with_lease(lease)),
            ),
            TxnOp::put(self.keys.gc_count(), self.host.clone(), None),
        ]);
        if self
            .runtime
            .block("etcd begin sweep", self.txn("begin sweep", txn))?
            .succeeded()
        {
            Ok(())
        } else {
            Err(FsError::Busy("the collector lock was lost".into()))
        }
    }

    pub fn end_sweep(&self) {
        let Some(held) = *self.gc_lease.lock() else {
            return;
        };
        let key = self.keys.gc_sweep();
        let txn = Txn::new()
            .when([Compare::value(
                key.clone(),
                CompareOp::Equal,
                self.gc_token(held),
            )])
            .and_then([TxnOp::delete(key, None)]);
        if let Err(e) = self
            .runtime
            .block("etcd end sweep", self.txn("end sweep", txn))
        {
            tracing::warn!("ending the sweep: {e}; it ends with this host's lease");
        }
    }
}
