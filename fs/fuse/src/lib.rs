//! chaserfs's FUSE adapter: serves an engine [`chaserfs_engine::Workspace`] on a kernel mount
//! ([`adapter`]), mounts and unmounts it ([`mount`]), and hands a live mount to another
//! process without unmounting it (takeover's FUSE half: [`offer`] and [`mount`]). The engine
//! knows nothing of FUSE; this crate is the only one that speaks it.

pub mod adapter;
pub mod metrics;
pub mod mount;
pub mod offer;
