//! What a mount's kernel offered at `FUSE_INIT`, kept so that a successor process can answer
//! it again on the same connection (see `mount.rs`).

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// What the kernel offered in `FUSE_INIT`: enough to answer it again in another process.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct KernelOffer {
    pub minor: u32,
    pub flags: u64,
    pub max_readahead: u32,
}

/// Where [`FuseAdapter`] leaves the kernel's offer when it answers `FUSE_INIT`.
pub type OfferSlot = Arc<Mutex<Option<KernelOffer>>>;
