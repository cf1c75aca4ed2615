//! The pack index in etcd: one key per pack (which object is where in it, see `packs.rs` of
//! the crate), written after its pack is uploaded, fenced by the commit or by the collector's
//! sweep, and read at one revision with the collections' state.

use chaserfs_engine::{CommitToken, FsError, FsResult, Hash};
use etcd_client::{Compare, GetOptions, Txn, TxnOp};

use super::{revision, Meta};

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

impl Meta {
    /// A pack index's key: the time it was written first, so a host catching up reads only
    /// the recent end of the range.
    pub(crate) fn pack_key(&self, written_ms: u64, pack: &Hash) -> Vec<u8> {
        self.keys.pack(written_ms, pack)
    }

    /// Writes pack indexes (at most [`PACK_TXN`] at a time), refused as `fence` says.
    pub fn put_packs(&self, packs: &[(Vec<u8>, Vec<u8>)], fence: Fence) -> FsResult<()> {
        for batch in packs.chunks(PACK_TXN) {
            let when: Vec<Compare> = match fence {
                Fence::Commit(token) => self.no_sweep_since(token).to_vec(),
                Fence::Sweep => vec![self.gc_fence(self.keys.gc_sweep())?.0],
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
            return self.gc_fence(self.keys.gc_sweep()).map(|_| ());
        }
        for batch in keys.chunks(PACK_TXN) {
            let txn = Txn::new()
                .when([self.gc_fence(self.keys.gc_sweep())?.0])
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
        let prefix = self.keys.packs_prefix();
        let mut end = prefix.clone();
        *end.last_mut().unwrap() += 1;
        let mut start = match since {
            Some((_, ms)) => self.keys.packs_from(ms),
            None => prefix.clone(),
        };
        self.runtime.block("etcd scan packs", async {
            let gc = self
                .get(
                    "scan packs",
                    self.keys.gc_prefix(),
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
                    .find(|kv| kv.key() == self.keys.gc_count())
                    .map_or(0, |kv| kv.mod_revision()),
                sweeping: gc.kvs().iter().any(|kv| kv.key() == self.keys.gc_sweep()),
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
                    if let Some(pack) = self.keys.parse_pack(kv.key()) {
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
}
