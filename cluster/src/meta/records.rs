//! Service records in etcd: written under "no record changed since this host's view" and
//! this host's lease, read whole (`scan`) or as the changes since the view (`changes`).

use chaserfs_engine::{FsError, FsResult, MetaChange, MetaOp};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};

use super::{revision, Meta};

impl Meta {
    /// What every record write carries: no record changed since this host's view, and this
    /// host's lease alive in etcd's eyes (its liveness key exists), so a host cut off past
    /// its lease writes nothing, whatever its clock says.
    pub(super) fn records_fence(&self) -> FsResult<[Compare; 2]> {
        let view = self
            .view
            .lock()
            .ok_or_else(|| FsError::Storage("records were never read".into()))?;
        let lease = self.live_lease()?;
        Ok([
            Compare::mod_revision(self.keys.records_rev(), CompareOp::Less, view + 1),
            Compare::create_revision(self.keys.alive(lease), CompareOp::Greater, 0),
        ])
    }

    /// Why a fenced record write was refused: this host's lease is gone, or records changed.
    pub(super) async fn stale_or_lost(&self) -> FsError {
        let lease = self.lease.lock().id;
        match self.get_kv(self.keys.alive(lease)).await {
            Ok(None) => FsError::Storage(
                "this host's etcd lease expired: record writes are refused until it is renewed"
                    .into(),
            ),
            Ok(Some(_)) => FsError::Stale,
            Err(e) => e,
        }
    }

    /// After a transaction that held "no record changed since the view" at revision `rev`,
    /// the only record changes up to `rev` are the caller's own, which it applies itself.
    pub(super) fn advance_view(&self, rev: i64) {
        let mut v = self.view.lock();
        *v = Some(v.map_or(rev, |v| v.max(rev)));
    }

    /// The puts of a transaction's record changes (one call per transaction: it bumps
    /// [`super::keys::Keys::records_rev`]).
    pub(super) fn record_ops(&self, meta: &[MetaOp]) -> Vec<TxnOp> {
        let mut ops: Vec<TxnOp> = meta
            .iter()
            .map(|(k, v)| TxnOp::put(self.keys.record(k), v.clone().unwrap_or_default(), None))
            .collect();
        if !ops.is_empty() {
            ops.push(TxnOp::put(self.keys.records_rev(), [], None));
        }
        ops
    }

    pub fn write(&self, meta: &[MetaOp]) -> FsResult<()> {
        let txn = Txn::new()
            .when(self.records_fence()?)
            .and_then(self.record_ops(meta));
        self.runtime.block("etcd write records", async {
            let r = self.txn("write records", txn).await?;
            if r.succeeded() {
                self.advance_view(revision(r.header()));
                Ok(())
            } else {
                Err(self.stale_or_lost().await)
            }
        })
    }

    pub fn scan(&self, prefix: &[u8]) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let r = self.runtime.block("etcd scan records", async {
            self.get(
                "scan records",
                self.keys.record(prefix),
                Some(GetOptions::new().with_prefix()),
            )
            .await
        })?;
        self.view.lock().get_or_insert(revision(r.header()));
        Ok(r.kvs()
            .iter()
            .filter(|kv| !kv.value().is_empty())
            .filter_map(|kv| Some((self.keys.parse_record(kv.key())?, kv.value().to_vec())))
            .collect())
    }

    pub fn changes(&self) -> FsResult<Vec<MetaChange>> {
        let Some(view) = *self.view.lock() else {
            return Ok(Vec::new());
        };
        let r = self.runtime.block("etcd record changes", async {
            // The common case, nothing changed: one key read instead of a range.
            let rev = self
                .get("record changes", self.keys.records_rev(), None)
                .await?;
            if rev.kvs().first().is_none_or(|kv| kv.mod_revision() <= view) {
                return Ok(rev);
            }
            self.get(
                "record changes",
                self.keys.records_prefix(),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_min_mod_revision(view + 1),
                ),
            )
            .await
        })?;
        let mut kvs: Vec<&etcd_client::KeyValue> = r.kvs().iter().collect();
        kvs.sort_by_key(|kv| kv.mod_revision());
        let out = kvs
            .into_iter()
            .filter_map(|kv| {
                let key = self.keys.parse_record(kv.key())?;
                let value = (!kv.value().is_empty()).then(|| kv.value().to_vec());
                Some((key, value))
            })
            .collect();
        *self.view.lock() = Some(revision(r.header()).max(view));
        Ok(out)
    }
}
