//! Root pointers in etcd: created, copied (clone, snapshot, restore, fork) and deleted with
//! the record changes of the same operation in one transaction, and committed by the host
//! holding the workspace, fenced by its hold and the root it last wrote.

use chaserfs_engine::format::records;
use chaserfs_engine::{CommitToken, FsError, FsResult, MetaOp, RootId, RootRecord};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use uuid::Uuid;

use super::holds::holder;
use super::{revision, Meta};

impl Meta {
    async fn get_root_kv(&self, id: RootId) -> FsResult<Option<(RootRecord, i64)>> {
        match self.get_kv(self.keys.root(id)).await? {
            Some(kv) => Ok(Some((records::decode(kv.value())?, kv.mod_revision()))),
            None => Ok(None),
        }
    }

    /// Why a root change was refused: a host holds one of the workspaces, or records (or
    /// roots) changed since this host looked.
    async fn refusal(&self, ids: &[RootId]) -> FsError {
        for id in ids {
            if let RootId::Workspace(ws) = id {
                if let Ok(Some(kv)) = self.get_kv(self.keys.hold(*ws)).await {
                    return FsError::Busy(format!(
                        "workspace {ws} is open on host {}",
                        holder(kv.value())
                    ));
                }
            }
        }
        self.stale_or_lost().await
    }

    pub fn get_root(&self, id: RootId) -> FsResult<Option<RootRecord>> {
        self.runtime.block("etcd get root", async {
            Ok(self.get_root_kv(id).await?.map(|(r, _)| r))
        })
    }

    pub fn list_roots(&self) -> FsResult<Vec<(RootId, RootRecord)>> {
        self.runtime.block("etcd list roots", async {
            let prefix = self.keys.roots_prefix();
            let r = self
                .get("list roots", prefix, Some(GetOptions::new().with_prefix()))
                .await?;
            let mut out = Vec::new();
            for kv in r.kvs() {
                let id = self
                    .keys
                    .parse_root(kv.key())
                    .ok_or_else(|| FsError::Corrupt("bad root key in etcd".into()))?;
                out.push((id, records::decode(kv.value())?));
            }
            Ok(out)
        })
    }

    pub fn create_root(
        &self,
        id: RootId,
        record: &RootRecord,
        meta: &[MetaOp],
        token: CommitToken,
    ) -> FsResult<()> {
        let key = self.keys.root(id);
        let mut ops = vec![TxnOp::put(key.clone(), records::encode(record), None)];
        ops.extend(self.record_ops(meta));
        let mut when = vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)];
        when.extend(self.records_fence()?);
        when.extend(self.no_sweep_since(token));
        let txn = Txn::new()
            .when(when)
            .and_then(ops)
            .or_else([TxnOp::get(key, None)]);
        self.runtime.block("etcd create root", async {
            let r = self.txn("create root", txn).await?;
            if r.succeeded() {
                self.advance_view(revision(r.header()));
                return Ok(());
            }
            let exists = r.op_responses().into_iter().any(|op| match op {
                TxnOpResponse::Get(g) => !g.kvs().is_empty(),
                _ => false,
            });
            Err(if exists {
                FsError::Exists
            } else {
                self.stale_or_lost().await
            })
        })
    }

    /// Every `dsts` root gets `src`'s root in one transaction, all or none. A fork of N
    /// puts 2N+1 keys in it: etcd's `--max-txn-ops` (128 by default) must allow that.
    pub fn copy_root(
        &self,
        src: RootId,
        dsts: &[RootId],
        dst_exists: bool,
        meta: &[MetaOp],
    ) -> FsResult<RootRecord> {
        let records_fence = self.records_fence()?;
        self.runtime.block("etcd copy root", async {
            // Every pointer in one round trip.
            let reads: Vec<TxnOp> = std::iter::once(src)
                .chain(dsts.iter().copied())
                .map(|id| TxnOp::get(self.keys.root(id), None))
                .collect();
            let r = self.txn("read roots", Txn::new().and_then(reads)).await?;
            let mut found = Vec::new();
            for op in r.op_responses() {
                if let TxnOpResponse::Get(g) = op {
                    found.push(match g.kvs().first() {
                        Some(kv) => Some((
                            records::decode::<RootRecord>(kv.value())?,
                            kv.mod_revision(),
                        )),
                        None => None,
                    });
                }
            }
            if found.len() != dsts.len() + 1 {
                return Err(FsError::Storage("etcd answered a short transaction".into()));
            }
            let mut found = found.into_iter();
            let (mut record, src_rev) = found.next().flatten().ok_or(FsError::NotFound)?;
            let mut when = vec![Compare::mod_revision(
                self.keys.root(src),
                CompareOp::Equal,
                src_rev,
            )];
            when.extend(records_fence);
            for (dst, old) in dsts.iter().zip(found) {
                if old.is_some() != dst_exists {
                    return Err(if dst_exists {
                        FsError::NotFound
                    } else {
                        FsError::Exists
                    });
                }
                let dst_key = self.keys.root(*dst);
                match &old {
                    Some((old, rev)) => {
                        record.generation = record.generation.max(old.generation) + 1;
                        when.push(Compare::mod_revision(dst_key, CompareOp::Equal, *rev));
                        if let RootId::Workspace(ws) = dst {
                            when.push(Compare::create_revision(
                                self.keys.hold(*ws),
                                CompareOp::Equal,
                                0,
                            ));
                        }
                    }
                    None => when.push(Compare::create_revision(dst_key, CompareOp::Equal, 0)),
                }
            }
            record.committed_at = chaserfs_engine::Timespec::now();
            let mut ops: Vec<TxnOp> = dsts
                .iter()
                .map(|d| TxnOp::put(self.keys.root(*d), records::encode(&record), None))
                .collect();
            ops.extend(self.record_ops(meta));
            let r = self
                .txn("copy root", Txn::new().when(when).and_then(ops))
                .await?;
            if r.succeeded() {
                self.advance_view(revision(r.header()));
                Ok(record)
            } else {
                Err(self.refusal(dsts).await)
            }
        })
    }

    pub fn delete_roots(&self, ids: &[RootId], meta: &[MetaOp]) -> FsResult<()> {
        let records_fence = self.records_fence()?;
        self.runtime.block("etcd delete roots", async {
            let mut when = records_fence.to_vec();
            let mut ops = Vec::new();
            for id in ids {
                let key = self.keys.root(*id);
                let (_, rev) = self.get_root_kv(*id).await?.ok_or(FsError::NotFound)?;
                when.push(Compare::mod_revision(key.clone(), CompareOp::Equal, rev));
                if let RootId::Workspace(ws) = id {
                    when.push(Compare::create_revision(
                        self.keys.hold(*ws),
                        CompareOp::Equal,
                        0,
                    ));
                }
                ops.push(TxnOp::delete(key, None));
            }
            ops.extend(self.record_ops(meta));
            let r = self
                .txn("delete roots", Txn::new().when(when).and_then(ops))
                .await?;
            if r.succeeded() {
                self.advance_view(revision(r.header()));
                Ok(())
            } else {
                Err(self.refusal(ids).await)
            }
        })
    }

    pub fn commit_root(&self, ws: Uuid, record: &RootRecord, token: CommitToken) -> FsResult<()> {
        let gc_token = token;
        let (token, root_rev) = match self.held.lock().get(&ws) {
            Some(h) => (h.token.clone(), h.root_rev),
            None => {
                return Err(FsError::Storage(format!(
                    "workspace {ws} is not held by this host"
                )))
            }
        };
        self.live_lease()?;
        let hold = self.keys.hold(ws);
        let root = self.keys.root(RootId::Workspace(ws));
        let mut when = vec![
            Compare::value(hold.clone(), CompareOp::Equal, token.clone()),
            Compare::mod_revision(root.clone(), CompareOp::Equal, root_rev),
        ];
        when.extend(self.no_sweep_since(gc_token));
        let txn = Txn::new()
            .when(when)
            .and_then([TxnOp::put(root.clone(), records::encode(record), None)])
            .or_else([TxnOp::get(hold, None), TxnOp::get(root, None)]);
        self.runtime.block("etcd commit", async {
            let r = self.txn("commit", txn).await?;
            if r.succeeded() {
                if let Some(h) = self.held.lock().get_mut(&ws) {
                    h.root_rev = revision(r.header());
                }
                return Ok(());
            }
            let mut gets = r.op_responses().into_iter().filter_map(|op| match op {
                TxnOpResponse::Get(g) => Some(g.kvs().first().cloned()),
                _ => None,
            });
            let holder_now = gets.next().flatten().map(|kv| kv.value().to_vec());
            let root_now = gets.next().flatten().map(|kv| kv.mod_revision());
            Err(FsError::Storage(match holder_now {
                // Held and not moved: a collection started sweeping; upload again.
                Some(v) if v == token && root_now == Some(root_rev) => return Err(FsError::Stale),
                Some(v) if v == token => {
                    format!("the root of workspace {ws} moved while this host held it")
                }
                Some(v) => format!(
                    "workspace {ws} was taken over by host {} (this host's lease expired): \
                     the commit is refused",
                    holder(&v)
                ),
                None => format!(
                    "this host's hold on workspace {ws} expired with its lease: the commit \
                     is refused"
                ),
            }))
        })
    }
}
