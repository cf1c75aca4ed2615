//! Roots, records and holds in etcd, under the cluster's prefix `P`:
//!
//! | key | value |
//! |---|---|
//! | `P r/w/<uuid>`, `P r/s/<uuid>` | a workspace's or snapshot's root pointer (`RootRecord`, postcard) |
//! | `P m/<hex of the record key>` | a service record (JSON); empty: deleted (a tombstone) |
//! | `P mrev` | empty; rewritten by every transaction that writes records |
//! | `P h/<uuid>` | `host lease nonce` of the host holding the workspace open, on its lease |
//! | `P gc/count` | bumped as each collection starts its sweep |
//! | `P gc/sweep` | the host sweeping, on its lease: exists while a collection deletes |
//! | `P p/<ms>-<pack>` | a pack's index (see `packs.rs`): written in ms since the epoch, hash hex |
//!
//! Every change is one transaction. Record writes carry "no record changed since this host's
//! view" (a compare of `P mrev`'s revision), so hosts decide on current records or retry;
//! deletes leave tombstones so a host catching up (`changes`: keys modified since its view)
//! sees them. A commit carries "this host still holds the workspace, and its root is the one
//! this host last wrote" (fencing): a host whose lease expired can no longer move a root,
//! whatever its clock says.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaserfs_engine::format::records;
use chaserfs_engine::{
    CommitToken, FsError, FsResult, Hash, MetaChange, MetaOp, RootId, RootRecord,
};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use parking_lot::Mutex;
use uuid::Uuid;

use crate::{ClusterConfig, EtcdSecurity, Runtime};

pub struct Meta {
    etcd: Client,
    runtime: Arc<Runtime>,
    prefix: String,
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

struct Lease {
    id: i64,
    renewed: Instant,
    /// etcd answered that the lease expired: every workspace held under it is lost.
    lost: bool,
}

struct Held {
    token: Vec<u8>,
    /// The revision of the root pointer this host last read or wrote.
    root_rev: i64,
}

/// Pack index writes or deletes per transaction (etcd allows 128 operations, 1.5 MiB).
const PACK_TXN: usize = 8;
/// Pack indexes per page of a scan (each at most ~84 KiB; gRPC answers are limited to 4 MiB).
const PACK_PAGE: i64 = 16;

/// What a pack index write is conditional on.
#[derive(Clone, Copy, Debug)]
pub enum Fence {
    /// A commit's: no collection started sweeping since its token.
    Commit(CommitToken),
    /// The collector's: its sweep is still on.
    Sweep,
}

/// Pack indexes read at one etcd revision, with the collections' state at that revision.
pub struct PackScan {
    /// (etcd key, pack name, encoded index).
    pub packs: Vec<(Vec<u8>, Hash, Vec<u8>)>,
    pub revision: i64,
    /// `P gc/count`'s revision (0: no collection ever swept).
    pub gc_count: i64,
    /// A collection was sweeping (deleting packs) at that revision.
    pub sweeping: bool,
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
            mark_alive(&mut etcd, &config.etcd_prefix, &config.host, lease.id())
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
            (config.etcd_prefix.clone(), config.host.clone()),
        ));
        tracing::info!(
            "cluster: host {} joined with lease {lease_id:x} (ttl {ttl:?})",
            config.host
        );
        Ok(Meta {
            etcd,
            runtime,
            prefix: config.etcd_prefix.clone(),
            host: config.host.clone(),
            ttl,
            lease,
            held: Mutex::new(HashMap::new()),
            view: Mutex::new(None),
            gc_lease: Mutex::new(None),
        })
    }

    fn root_key(&self, id: RootId) -> Vec<u8> {
        let (tag, id) = match id {
            RootId::Workspace(id) => ('w', id),
            RootId::Snapshot(id) => ('s', id),
        };
        format!("{}r/{tag}/{id}", self.prefix).into_bytes()
    }

    fn parse_root_key(&self, key: &[u8]) -> Option<RootId> {
        let rest = std::str::from_utf8(key)
            .ok()?
            .strip_prefix(&self.prefix)?
            .strip_prefix("r/")?;
        let (tag, id) = rest.split_once('/')?;
        let id = Uuid::parse_str(id).ok()?;
        match tag {
            "w" => Some(RootId::Workspace(id)),
            "s" => Some(RootId::Snapshot(id)),
            _ => None,
        }
    }

    fn records_prefix(&self) -> Vec<u8> {
        format!("{}m/", self.prefix).into_bytes()
    }

    fn record_key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = self.records_prefix();
        k.extend_from_slice(hex::encode(key).as_bytes());
        k
    }

    /// Bumped by every transaction that writes records: "no record changed since the view"
    /// is one key's revision to compare, whatever the number of records.
    fn records_rev_key(&self) -> Vec<u8> {
        format!("{}mrev", self.prefix).into_bytes()
    }

    fn parse_record_key(&self, key: &[u8]) -> Option<Vec<u8>> {
        hex::decode(key.strip_prefix(self.records_prefix().as_slice())?).ok()
    }

    pub(crate) fn gc_count_key(&self) -> Vec<u8> {
        format!("{}gc/count", self.prefix).into_bytes()
    }

    pub(crate) fn gc_sweep_key(&self) -> Vec<u8> {
        format!("{}gc/sweep", self.prefix).into_bytes()
    }

    /// "No collection started sweeping since `token`": what a root write that brings new
    /// objects carries.
    fn no_sweep_since(&self, token: CommitToken) -> [Compare; 2] {
        [
            Compare::mod_revision(self.gc_count_key(), CompareOp::Equal, token),
            Compare::create_revision(self.gc_sweep_key(), CompareOp::Equal, 0),
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
                        format!("{}gc/", self.prefix),
                        Some(GetOptions::new().with_prefix()),
                    )
                    .await?;
                let sweeping = r.kvs().iter().any(|kv| kv.key() == self.gc_sweep_key());
                if !sweeping {
                    return Ok(r
                        .kvs()
                        .iter()
                        .find(|kv| kv.key() == self.gc_count_key())
                        .map_or(0, |kv| kv.mod_revision()));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }

    fn packs_prefix(&self) -> Vec<u8> {
        format!("{}p/", self.prefix).into_bytes()
    }

    /// A pack index's key: the time it was written first, so a host catching up reads only
    /// the recent end of the range.
    pub(crate) fn pack_key(&self, written_ms: u64, pack: &Hash) -> Vec<u8> {
        format!("{}p/{written_ms:016x}-{}", self.prefix, pack.to_hex()).into_bytes()
    }

    pub(crate) fn parse_pack_key(&self, key: &[u8]) -> Option<Hash> {
        let rest = key.strip_prefix(self.packs_prefix().as_slice())?;
        Hash::from_hex(std::str::from_utf8(rest).ok()?.split_once('-')?.1)
    }

    /// Writes pack indexes (at most [`PACK_TXN`] at a time), refused as `fence` says.
    pub fn put_packs(&self, packs: &[(Vec<u8>, Vec<u8>)], fence: Fence) -> FsResult<()> {
        for batch in packs.chunks(PACK_TXN) {
            let when: Vec<Compare> = match fence {
                Fence::Commit(token) => self.no_sweep_since(token).to_vec(),
                Fence::Sweep => vec![self.gc_fence(self.gc_sweep_key())?.0],
            };
            let ops: Vec<TxnOp> = batch
                .iter()
                .map(|(k, v)| TxnOp::put(k.clone(), v.clone(), None))
                .collect();
            let txn = Txn::new().when(when).and_then(ops);
            let r = self
                .runtime
                .block("etcd put packs", self.txn("put packs", txn))?;
            if !r.succeeded() {
                return Err(match fence {
                    Fence::Commit(_) => FsError::Stale,
                    Fence::Sweep => FsError::Storage("the collection's sweep ended".into()),
                });
            }
        }
        Ok(())
    }

    /// The collector deletes pack indexes (while it sweeps). With no keys (packs no index
    /// names, older than the grace period), only this host's view of its lease is checked.
    pub fn delete_packs(&self, keys: &[Vec<u8>]) -> FsResult<()> {
        if keys.is_empty() {
            return self.gc_fence(self.gc_sweep_key()).map(|_| ());
        }
        for batch in keys.chunks(PACK_TXN) {
            let txn = Txn::new()
                .when([self.gc_fence(self.gc_sweep_key())?.0])
                .and_then(
                    batch
                        .iter()
                        .map(|k| TxnOp::delete(k.clone(), None))
                        .collect::<Vec<_>>(),
                );
            let r = self
                .runtime
                .block("etcd delete packs", self.txn("delete packs", txn))?;
            if !r.succeeded() {
                return Err(FsError::Storage("the collection's sweep ended".into()));
            }
        }
        Ok(())
    }

    /// Pack indexes at one revision: all of them (`since` `None`), or those written since
    /// revision `since.0`, looking only at keys from time `since.1` (ms) on.
    pub fn scan_packs(&self, since: Option<(i64, u64)>) -> FsResult<PackScan> {
        let prefix = self.packs_prefix();
        let mut end = prefix.clone();
        *end.last_mut().unwrap() += 1;
        let mut start = match since {
            Some((_, ms)) => format!("{}p/{ms:016x}", self.prefix).into_bytes(),
            None => prefix.clone(),
        };
        self.runtime.block("etcd scan packs", async {
            let gc = self
                .get(
                    "scan packs",
                    format!("{}gc/", self.prefix),
                    Some(GetOptions::new().with_prefix()),
                )
                .await?;
            let rev = revision(gc.header());
            let mut scan = PackScan {
                packs: Vec::new(),
                revision: rev,
                gc_count: gc
                    .kvs()
                    .iter()
                    .find(|kv| kv.key() == self.gc_count_key())
                    .map_or(0, |kv| kv.mod_revision()),
                sweeping: gc.kvs().iter().any(|kv| kv.key() == self.gc_sweep_key()),
            };
            loop {
                let mut options = GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(PACK_PAGE)
                    .with_revision(rev);
                if let Some((since, _)) = since {
                    options = options.with_min_mod_revision(since + 1);
                }
                let r = self.get("scan packs", start.clone(), Some(options)).await?;
                for kv in r.kvs() {
                    if let Some(pack) = self.parse_pack_key(kv.key()) {
                        scan.packs
                            .push((kv.key().to_vec(), pack, kv.value().to_vec()));
                    }
                }
                match r.kvs().last() {
                    Some(last) if r.more() => {
                        start = last.key().to_vec();
                        start.push(0);
                    }
                    _ => return Ok(scan),
                }
            }
        })
    }

    fn hold_key(&self, ws: Uuid) -> Vec<u8> {
        format!("{}h/{ws}", self.prefix).into_bytes()
    }

    /// "No record changed since the view": what every record write is conditional on.
    /// What every record write carries: no record changed since this host's view, and this
    /// host's lease alive in etcd's eyes (its liveness key exists), so a host cut off past
    /// its lease writes nothing, whatever its clock says.
    fn records_fence(&self) -> FsResult<[Compare; 2]> {
        let view = self
            .view
            .lock()
            .ok_or_else(|| FsError::Storage("records were never read".into()))?;
        let lease = self.live_lease()?;
        Ok([
            Compare::mod_revision(self.records_rev_key(), CompareOp::Less, view + 1),
            Compare::create_revision(alive_key(&self.prefix, lease), CompareOp::Greater, 0),
        ])
    }

    /// Why a fenced record write was refused: this host's lease is gone, or records changed.
    async fn stale_or_lost(&self) -> FsError {
        let lease = self.lease.lock().id;
        match self.get_kv(alive_key(&self.prefix, lease)).await {
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
    fn advance_view(&self, rev: i64) {
        let mut v = self.view.lock();
        *v = Some(v.map_or(rev, |v| v.max(rev)));
    }

    /// The puts of a transaction's record changes (one call per transaction: it bumps
    /// [`Meta::records_rev_key`]).
    fn record_ops(&self, meta: &[MetaOp]) -> Vec<TxnOp> {
        let mut ops: Vec<TxnOp> = meta
            .iter()
            .map(|(k, v)| TxnOp::put(self.record_key(k), v.clone().unwrap_or_default(), None))
            .collect();
        if !ops.is_empty() {
            ops.push(TxnOp::put(self.records_rev_key(), [], None));
        }
        ops
    }

    async fn txn(&self, what: &str, txn: Txn) -> FsResult<etcd_client::TxnResponse> {
        let mut attempt = 0;
        loop {
            match self.etcd.clone().txn(txn.clone()).await {
                Err(e) if never_sent(&e) && attempt < RETRIES => attempt += 1,
                r => return r.map_err(|e| etcd_error(what, e)),
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
        let mut attempt = 0;
        loop {
            match self.etcd.clone().get(key.clone(), options.clone()).await {
                Err(e) if never_sent(&e) && attempt < RETRIES => attempt += 1,
                r => return r.map_err(|e| etcd_error(what, e)),
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    async fn get_kv(&self, key: Vec<u8>) -> FsResult<Option<etcd_client::KeyValue>> {
        let mut r = self.get("get", key, None).await?;
        Ok(r.take_kvs().into_iter().next())
    }

    async fn get_root_kv(&self, id: RootId) -> FsResult<Option<(RootRecord, i64)>> {
        match self.get_kv(self.root_key(id)).await? {
            Some(kv) => Ok(Some((records::decode(kv.value())?, kv.mod_revision()))),
            None => Ok(None),
        }
    }

    /// Why a root change was refused: a host holds one of the workspaces, or records (or
    /// roots) changed since this host looked.
    async fn refusal(&self, ids: &[RootId]) -> FsError {
        for id in ids {
            if let RootId::Workspace(ws) = id {
                if let Ok(Some(kv)) = self.get_kv(self.hold_key(*ws)).await {
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
            let prefix = format!("{}r/", self.prefix);
            let r = self
                .get("list roots", prefix, Some(GetOptions::new().with_prefix()))
                .await?;
            let mut out = Vec::new();
            for kv in r.kvs() {
                let id = self
                    .parse_root_key(kv.key())
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
        let key = self.root_key(id);
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
                .map(|id| TxnOp::get(self.root_key(id), None))
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
                self.root_key(src),
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
                let dst_key = self.root_key(*dst);
                match &old {
                    Some((old, rev)) => {
                        record.generation = record.generation.max(old.generation) + 1;
                        when.push(Compare::mod_revision(dst_key, CompareOp::Equal, *rev));
                        if let RootId::Workspace(ws) = dst {
                            when.push(Compare::create_revision(
                                self.hold_key(*ws),
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
                .map(|d| TxnOp::put(self.root_key(*d), records::encode(&record), None))
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
                let key = self.root_key(*id);
                let (_, rev) = self.get_root_kv(*id).await?.ok_or(FsError::NotFound)?;
                when.push(Compare::mod_revision(key.clone(), CompareOp::Equal, rev));
                if let RootId::Workspace(ws) = id {
                    when.push(Compare::create_revision(
                        self.hold_key(*ws),
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

    /// Refuses while this host's lease is not known to be alive: a host cut off from etcd
    /// stops committing well before its lease can expire there (renewals come every third of
    /// the TTL; two missed ones and it stops).
    fn live_lease(&self) -> FsResult<i64> {
        let l = self.lease.lock();
        if l.lost || l.renewed.elapsed() > self.ttl * 2 / 3 {
            return Err(FsError::Storage(format!(
                "this host's etcd lease was not renewed for {:?} (cut off from etcd?): \
                 commits are refused until it is",
                l.renewed.elapsed()
            )));
        }
        Ok(l.id)
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
        let hold = self.hold_key(ws);
        let root = self.root_key(RootId::Workspace(ws));
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
                self.record_key(prefix),
                Some(GetOptions::new().with_prefix()),
            )
            .await
        })?;
        self.view.lock().get_or_insert(revision(r.header()));
        Ok(r.kvs()
            .iter()
            .filter(|kv| !kv.value().is_empty())
            .filter_map(|kv| Some((self.parse_record_key(kv.key())?, kv.value().to_vec())))
            .collect())
    }

    pub fn changes(&self) -> FsResult<Vec<MetaChange>> {
        let Some(view) = *self.view.lock() else {
            return Ok(Vec::new());
        };
        let r = self.runtime.block("etcd record changes", async {
            // The common case, nothing changed: one key read instead of a range.
            let rev = self
                .get("record changes", self.records_rev_key(), None)
                .await?;
            if rev.kvs().first().is_none_or(|kv| kv.mod_revision() <= view) {
                return Ok(rev);
            }
            self.get(
                "record changes",
                self.records_prefix(),
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
                let key = self.parse_record_key(kv.key())?;
                let value = (!kv.value().is_empty()).then(|| kv.value().to_vec());
                Some((key, value))
            })
            .collect();
        *self.view.lock() = Some(revision(r.header()).max(view));
        Ok(out)
    }

    pub fn acquire(&self, ws: Uuid) -> FsResult<()> {
        let lease = self.live_lease()?;
        let token = format!("{} {lease:x} {:016x}", self.host, rand::random::<u64>()).into_bytes();
        let hold = self.hold_key(ws);
        // A workspace, or a snapshot mounted read-only (ids are unique across both).
        let txn = Txn::new()
            .when([Compare::create_revision(hold.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(
                    hold.clone(),
                    token.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                ),
                TxnOp::get(self.root_key(RootId::Workspace(ws)), None),
                TxnOp::get(self.root_key(RootId::Snapshot(ws)), None),
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
        let hold = self.hold_key(ws);
        let txn = Txn::new()
            .when([Compare::value(hold.clone(), CompareOp::Equal, h.token)])
            .and_then([TxnOp::delete(hold, None)]);
        if let Err(e) = self.runtime.block("etcd release", self.txn("release", txn)) {
            tracing::warn!("releasing workspace {ws}: {e}; it frees when this host's lease ends");
        }
    }

    pub fn is_held(&self, ws: Uuid) -> FsResult<bool> {
        self.runtime.block("etcd get hold", async {
            Ok(self.get_kv(self.hold_key(ws)).await?.is_some())
        })
    }

    fn gc_lock_key(&self) -> Vec<u8> {
        format!("{}gc/lock", self.prefix).into_bytes()
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
    fn gc_fence(&self, key: Vec<u8>) -> FsResult<(Compare, i64)> {
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
        let key = self.gc_lock_key();
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
        let key = self.gc_lock_key();
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
        let (fence, lease) = self.gc_fence(self.gc_lock_key())?;
        let txn = Txn::new().when([fence]).and_then([
            TxnOp::put(
                self.gc_sweep_key(),
                self.gc_token(lease),
                Some(PutOptions::new().with_lease(lease)),
            ),
            TxnOp::put(self.gc_count_key(), self.host.clone(), None),
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
        let key = self.gc_sweep_key();
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

    /// The host holding a workspace, if any.
    pub fn holder(&self, ws: Uuid) -> FsResult<Option<String>> {
        self.runtime.block("etcd get hold", async {
            Ok(self
                .get_kv(self.hold_key(ws))
                .await?
                .map(|kv| holder(kv.value())))
        })
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

/// Exists exactly as long as lease `lease`: record writes compare it (see
/// [`Meta::records_fence`]).
fn alive_key(prefix: &str, lease: i64) -> Vec<u8> {
    format!("{prefix}l/{lease:x}").into_bytes()
}

async fn mark_alive(
    etcd: &mut Client,
    prefix: &str,
    host: &str,
    lease: i64,
) -> Result<(), etcd_client::Error> {
    let put = PutOptions::new().with_lease(lease);
    etcd.put(alive_key(prefix, lease), host, Some(put)).await?;
    Ok(())
}

/// The host name in a hold's value.
fn holder(value: &[u8]) -> String {
    String::from_utf8_lossy(value)
        .split(' ')
        .next()
        .unwrap_or("?")
        .to_string()
}

/// Renews this host's lease every third of its TTL. When etcd says it expired (the host was
/// cut off too long), the workspaces held under it are gone; a new lease is granted for new
/// holds.
async fn keep_alive(
    mut etcd: Client,
    lease: Arc<Mutex<Lease>>,
    ttl: Duration,
    (prefix, host): (String, String),
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
                    Ok(Ok(Some(resp))) if resp.ttl() > 0 => lease.lock().renewed = Instant::now(),
                    Ok(Ok(Some(_))) => {
                        tracing::error!("cluster: this host's lease {id:x} expired");
                        lease.lock().lost = true;
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
                if let Err(e) = mark_alive(&mut etcd, &prefix, &host, g.id()).await {
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
            }
        }
    }
}
