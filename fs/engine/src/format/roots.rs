//! The keys and records of root pointers in the `meta` column family, and the upper layer's
//! records written beside them.

use serde::{Deserialize, Serialize};

use crate::format::hash::Hash;
use crate::format::records::Timespec;

/// Which root pointer: a workspace's (mutable) or a snapshot's (immutable).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RootId {
    Workspace(uuid::Uuid),
    Snapshot(uuid::Uuid),
}

/// A put (`Some`) or delete (`None`) of an upper layer's record in the `meta` column family,
/// written in the same batch as a root change so both land or neither does.
pub type MetaOp = (Vec<u8>, Option<Vec<u8>>);

/// What a root pointer holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RootRecord {
    pub root: Hash,
    /// Commits since the state was created (clones and snapshots carry it over).
    pub generation: u64,
    pub committed_at: Timespec,
}

impl RootId {
    pub(crate) const PREFIX: u8 = b'R';

    pub(crate) fn key(&self) -> [u8; 18] {
        let (tag, id) = match self {
            RootId::Workspace(id) => (b'w', id),
            RootId::Snapshot(id) => (b's', id),
        };
        let mut k = [0u8; 18];
        k[0] = Self::PREFIX;
        k[1] = tag;
        k[2..].copy_from_slice(id.as_bytes());
        k
    }

    pub(crate) fn from_key(k: &[u8]) -> Option<RootId> {
        if k.len() != 18 || k[0] != Self::PREFIX {
            return None;
        }
        let id = uuid::Uuid::from_slice(&k[2..]).ok()?;
        match k[1] {
            b'w' => Some(RootId::Workspace(id)),
            b's' => Some(RootId::Snapshot(id)),
            _ => None,
        }
    }
}
