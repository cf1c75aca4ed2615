//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use chaserfs_engine::{FileKind, NewNode};

/// A new regular file, mode 0644, owned by root.
pub fn regular_file() -> NewNode<'static> {
    NewNode::owned_by_root(FileKind::Regular, 0o644)
}

/// Incompressible bytes that differ per seed (lz4 and dedup would hide what the disk holds).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
