//! chaserfs engine: a content-addressed copy-on-write filesystem stored in RocksDB.
//!
//! Layers, bottom up: [`format`] (what is stored and how: hashes, keys, records, the format
//! version), [`store`] (RocksDB, objects, root pointers, pins), [`remote`] (what a store needs
//! from a cluster when it is one host of many), [`tree`] (the persistent CoW B+tree of one
//! state), [`posix`] (POSIX operations over a tree plus a dirty overlay, and commit),
//! [`roots`] (clone, snapshot, restore, delete), and [`ops`] over whole states (diff, tar
//! archives, garbage collection, fsck). Nothing here knows about FUSE or HTTP; the crate's
//! dependencies say so.

pub mod error;
pub mod format;
pub mod metrics;
pub mod ops;
pub mod posix;
pub mod remote;
pub mod roots;
pub mod store;
pub mod tree;

pub use error::{FsError, FsResult};
pub use format::hash::Hash;
pub use format::records::{FileKind, Timespec};
pub use format::roots::{MetaOp, RootId, RootRecord};
pub use posix::{Attr, DirEntry, Limits, NewNode, SetAttr, StatFs, TimeSet, Workspace};
pub use remote::{CommitToken, Hydrated, MetaChange, ObjectKind, Remote};
pub use store::{CacheStats, Store, StoreOptions};
