//! Holds: which host has a workspace (or a snapshot mounted read-only) open, a key on that
//! host's lease, so a lost host's workspaces free themselves when its lease expires.

use chaserfs_engine::{FsError, FsResult, RootId};
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use uuid::Uuid;

use super::{Held, Meta};

impl Meta {
    pub fn acquire(&self, ws: Uuid) -> FsResult<()> {
        let lease = self.live_lease()?;
        let token = format!("{} {lease:x} {:016x}", self.host, rand::random::<u64>()).into_bytes();
        let hold = self.keys.hold(ws);
        // A workspace, or a snapshot mounted read-only (ids are unique across both).
        let txn = Txn::new()
            .when([Compare::create_revision(hold.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(
                    hold.clone(),
                    token.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                ),
                TxnOp::get(self.keys.root(RootId::Workspace(ws)), None),
                TxnOp::get(self.keys.root(RootId::Snapshot(ws)), None),
            ])
            .or_else([TxnOp::get(hold.clone(), None)]);
        let r = self
            .runtime
            .block("etcd acquire", self.txn("acquire", txn))?;
        let first_kv = |r: &etcd_client::TxnResponse| {
            r.op_responses().into_iter().find_map(|op| match op {
                TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                _ => None,
            })
        };
        if !r.succeeded() {
            let by = first_kv(&r).map_or_else(|| "another host".into(), |kv| holder(kv.value()));
            return Err(FsError::Busy(format!(
                "workspace {ws} is open on host {by}"
            )));
        }
        let Some(root) = first_kv(&r) else {
            // Deleted meanwhile.
            self.held.lock().insert(ws, Held { token, root_rev: 0 });
            self.release(ws);
            return Err(FsError::NotFound);
        };
        self.held.lock().insert(
            ws,
            Held {
                token,
                root_rev: root.mod_revision(),
            },
        );
        Ok(())
    }

    pub fn release(&self, ws: Uuid) {
        let Some(h) = self.held.lock().remove(&ws) else {
            return;
        };
        let hold = self.keys.hold(ws);
        let txn = Txn::new()
            .when([Compare::value(hold.clone(), CompareOp::Equal, h.token)])
            .and_then([TxnOp::delete(hold, None)]);
        if let Err(e) = self.runtime.block("etcd release", self.txn("release", txn)) {
            tracing::warn!("releasing workspace {ws}: {e}; it frees when this host's lease ends");
        }
    }

    pub fn is_held(&self, ws: Uuid) -> FsResult<bool> {
        self.runtime.block("etcd get hold", async {
            Ok(self.get_kv(self.keys.hold(ws)).await?.is_some())
        })
    }

    /// The host holding a workspace, if any.
    pub fn holder(&self, ws: Uuid) -> FsResult<Option<String>> {
        self.runtime.block("etcd get hold", async {
            Ok(self
                .get_kv(self.keys.hold(ws))
                .await?
                .map(|kv| holder(kv.value())))
        })
    }
}

/// The host name in a hold's value.
pub(super) fn holder(value: &[u8]) -> String {
    String::from_utf8_lossy(value)
        .split(' ')
        .next()
        .unwrap_or("?")
        .to_string()
}
