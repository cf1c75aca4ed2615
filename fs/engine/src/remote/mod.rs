//! What a store needs from a cluster, when it is one host of many (`chaserfs serve` with an
//! object store and a metadata store). Objects (chunks and tree nodes) live in the object
//! store, and the local RocksDB holds a bounded cache of them plus the chunks written but not
//! yet uploaded; root pointers, records and the one-writer-per-workspace leases live in the
//! metadata store. The engine only sees this trait: `chaserfs-cluster` implements it over S3
//! and etcd.

pub(crate) mod hydrate;
pub(crate) mod prefetch;

pub use hydrate::Hydrated;

use bytes::Bytes;

use crate::error::FsResult;
use crate::format::hash::Hash;
use crate::format::roots::{MetaOp, RootId, RootRecord};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Chunk,
    Node,
}

/// What [`Remote::begin_commit`] saw of the cluster's collections; a root write carrying it
/// is refused (`Stale`) if a collection started since.
pub type CommitToken = i64;

/// A change to a record key since the last [`Remote::meta_changes`]: `None` is a delete.
pub type MetaChange = (Vec<u8>, Option<Vec<u8>>);

/// Every method may block on the network. Errors are `FsError::Storage` (unreachable, timed
/// out), `Busy` (another host holds the workspace, or records changed since the caller's
/// view: see [`Remote::meta_changes`]), `NotFound` / `Exists` as for a local store.
pub trait Remote: Send + Sync {
    /// Why this host cannot serve writes now (cut off from the stores), if it cannot: what
    /// `/readyz` tells.
    fn unready(&self) -> Option<String>;

    /// An object's stored bytes (a chunk in [`crate::format::codec::encode_chunk`]'s encoding, a node
    /// in its own), or `None` if the object store does not have it.
    fn get_object(&self, kind: ObjectKind, hash: &Hash) -> FsResult<Option<Bytes>>;

    /// Several objects at once, in the order asked, fetched in parallel (prefetch).
    /// Objects of one response share its buffer (no copy each).
    fn get_objects(&self, kind: ObjectKind, hashes: &[Hash]) -> FsResult<Vec<Option<Bytes>>>;

    /// Groups `hashes` (in the order the caller wants them) by where the object store keeps them (each in
    /// one group), at most `max` in a group, in the order of each group's first hash: a
    /// read-ahead or a hydration then fetches a group with as few requests as the store's
    /// layout allows (one per pack), not a request per stretch of a pack.
    fn group(&self, kind: ObjectKind, hashes: &[Hash], max: usize) -> Vec<Vec<Hash>> {
        let _ = kind;
        hashes.chunks(max.max(1)).map(<[Hash]>::to_vec).collect()
    }

    /// Uploads objects (kind, hash, stored bytes) for a commit that began with `token`
    /// ([`Remote::begin_commit`]): `Stale` if a collection started since (the caller begins
    /// again). Objects the object store already holds are not sent again. `objects` is read
    /// as the upload goes, so its size does not bound the memory taken; its first error ends
    /// the upload with that error.
    fn put_objects(
        &self,
        objects: &mut dyn Iterator<Item = FsResult<(ObjectKind, Hash, Vec<u8>)>>,
        token: CommitToken,
    ) -> FsResult<()>;

    fn get_root(&self, id: RootId) -> FsResult<Option<RootRecord>>;
    fn list_roots(&self) -> FsResult<Vec<(RootId, RootRecord)>>;

    /// Starts a write of new objects and a root that refers to them: waits while a
    /// collection sweeps, and returns what the root write must carry. The caller uploads
    /// after this, so an object the upload found present can only have been deleted by a
    /// collection that started since, which the root write then detects.
    fn begin_commit(&self) -> FsResult<CommitToken>;

    /// Points a new root id at `record` (whose objects are uploaded), with `meta`.
    fn create_root(
        &self,
        id: RootId,
        record: &RootRecord,
        meta: &[MetaOp],
        token: CommitToken,
    ) -> FsResult<()>;
    /// Clone, snapshot, restore: every `dsts` root gets `src`'s root, all or none. A restored
    /// workspace (`dst_exists`) must not be open on any host.
    fn copy_root(
        &self,
        src: RootId,
        dsts: &[RootId],
        dst_exists: bool,
        meta: &[MetaOp],
    ) -> FsResult<RootRecord>;
    /// Deletes roots (workspaces not open on any host) with `meta`, all or none.
    fn delete_roots(&self, ids: &[RootId], meta: &[MetaOp]) -> FsResult<()>;
    /// Moves an open workspace's root. Fenced: refused unless this host still holds the
    /// workspace and its root is the one this host last saw.
    fn commit_root(&self, ws: uuid::Uuid, record: &RootRecord, token: CommitToken) -> FsResult<()>;

    /// Record writes (no root change). Every record write is refused (`Busy`) if any record
    /// changed since the caller's last [`Remote::meta_changes`]: callers apply the changes to
    /// their view and decide again.
    fn meta_write(&self, meta: &[MetaOp]) -> FsResult<()>;
    fn meta_scan(&self, prefix: &[u8]) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Records changed since the last call (the first call: none, callers scan first), in
    /// order. After it returns, record writes are checked against this view.
    fn meta_changes(&self) -> FsResult<Vec<MetaChange>>;

    /// Takes the workspace for this host (one writer per workspace): `Busy` if another host
    /// holds it. Held until [`Remote::release`] or until this host stops renewing its lease.
    fn acquire(&self, ws: uuid::Uuid) -> FsResult<()>;
    fn release(&self, ws: uuid::Uuid);
    /// Whether some host (this one included) holds the workspace.
    fn is_held(&self, ws: uuid::Uuid) -> FsResult<bool>;
}
