//! chaserfs engine: a content-addressed copy-on-write filesystem stored in RocksDB.
//!
//! Layers, bottom up: [`store`] (RocksDB, objects, root pointers, pins), [`tree`] (the
//! persistent CoW B+tree of one state), [`posix`] (POSIX operations over a tree plus a dirty
//! overlay, and commit), [`roots`] (clone, snapshot, restore, delete), [`gc`] and [`fsck`];
//! [`remote`] is what a store needs from a cluster when it is one host of many.
//! Nothing here knows about FUSE or HTTP.

pub mod archive;
pub mod diff;
pub mod error;
pub mod format;
pub mod fsck;
pub mod fuse;
pub mod gc;
pub mod hash;
pub mod keys;
pub mod metrics;
pub mod mount;
pub mod posix;
mod prefetch;
pub mod records;
pub mod remote;
pub mod roots;
pub mod store;
pub mod tree;

pub use error::{FsError, FsResult};
pub use hash::Hash;
pub use posix::{Attr, DirEntry, Limits, NewNode, SetAttr, StatFs, TimeSet, Workspace};
pub use records::{FileKind, Timespec};
pub use remote::{CommitToken, MetaChange, ObjectKind, Remote};
pub use store::{CacheStats, MetaOp, RootId, RootRecord, Store, StoreOptions};
