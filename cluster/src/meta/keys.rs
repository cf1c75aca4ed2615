//! The etcd key schema, under the cluster's prefix `P`:
//!
//! | key | value |
//! |---|---|
//! | `P r/w/<uuid>`, `P r/s/<uuid>` | a workspace's or snapshot's root pointer (`RootRecord`, postcard) |
//! | `P m/<hex of the record key>` | a service record (JSON); empty: deleted (a tombstone) |
//! | `P mrev` | empty; rewritten by every transaction that writes records |
//! | `P h/<uuid>` | `host lease nonce` of the host holding the workspace open, on its lease |
//! | `P l/<lease>` | the host's name, on that lease: exists exactly as long as the lease |
//! | `P gc/lock` | `host lease` of the host collecting, on its lease |
//! | `P gc/count` | bumped as each collection starts its sweep |
//! | `P gc/sweep` | the host sweeping, on its lease: exists while a collection deletes |
//! | `P p/<ms>-<pack>` | a pack's index (see `packs.rs`): written in ms since the epoch, hash hex |

use chaserfs_engine::{Hash, RootId};
use uuid::Uuid;

/// The keys of one cluster: every key begins with its prefix.
#[derive(Clone, Debug)]
pub(super) struct Keys {
    prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: String) -> Keys {
        Keys { prefix }
    }

    pub(super) fn roots_prefix(&self) -> String {
        format!("{}r/", self.prefix)
    }

    pub(super) fn root(&self, id: RootId) -> Vec<u8> {
        let (tag, id) = match id {
            RootId::Workspace(id) => ('w', id),
            RootId::Snapshot(id) => ('s', id),
        };
        format!("{}r/{tag}/{id}", self.prefix).into_bytes()
    }

    pub(super) fn parse_root(&self, key: &[u8]) -> Option<RootId> {
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

    pub(super) fn records_prefix(&self) -> Vec<u8> {
        format!("{}m/", self.prefix).into_bytes()
    }

    pub(super) fn record(&self, key: &[u8]) -> Vec<u8> {
        let mut k = self.records_prefix();
        k.extend_from_slice(hex::encode(key).as_bytes());
        k
    }

    /// Bumped by every transaction that writes records: "no record changed since the view"
    /// is one key's revision to compare, whatever the number of records.
    pub(super) fn records_rev(&self) -> Vec<u8> {
        format!("{}mrev", self.prefix).into_bytes()
    }

    pub(super) fn parse_record(&self, key: &[u8]) -> Option<Vec<u8>> {
        hex::decode(key.strip_prefix(self.records_prefix().as_slice())?).ok()
    }

    pub(super) fn hold(&self, ws: Uuid) -> Vec<u8> {
        format!("{}h/{ws}", self.prefix).into_bytes()
    }

    /// Exists exactly as long as lease `lease`: record writes compare it (see
    /// [`super::Meta::records_fence`]).
    pub(super) fn alive(&self, lease: i64) -> Vec<u8> {
        format!("{}l/{lease:x}", self.prefix).into_bytes()
    }

    pub(super) fn gc_prefix(&self) -> String {
        format!("{}gc/", self.prefix)
    }

    pub(super) fn gc_lock(&self) -> Vec<u8> {
        format!("{}gc/lock", self.prefix).into_bytes()
    }

    pub(super) fn gc_count(&self) -> Vec<u8> {
        format!("{}gc/count", self.prefix).into_bytes()
    }

    pub(super) fn gc_sweep(&self) -> Vec<u8> {
        format!("{}gc/sweep", self.prefix).into_bytes()
    }

    pub(super) fn packs_prefix(&self) -> Vec<u8> {
        format!("{}p/", self.prefix).into_bytes()
    }

    /// Where the pack indexes written from time `ms` on begin.
    pub(super) fn packs_from(&self, ms: u64) -> Vec<u8> {
        format!("{}p/{ms:016x}", self.prefix).into_bytes()
    }

    /// A pack index's key: the time it was written first, so a host catching up reads only
    /// the recent end of the range.
    pub(super) fn pack(&self, written_ms: u64, pack: &Hash) -> Vec<u8> {
        format!("{}p/{written_ms:016x}-{}", self.prefix, pack.to_hex()).into_bytes()
    }

    pub(super) fn parse_pack(&self, key: &[u8]) -> Option<Hash> {
        let rest = key.strip_prefix(self.packs_prefix().as_slice())?;
        Hash::from_hex(std::str::from_utf8(rest).ok()?.split_once('-')?.1)
    }
}
