//! Decoded tree nodes by hash, least recently used first, bounded by their size.

use lru::LruCache;
use parking_lot::Mutex;
use std::sync::Arc;

use crate::format::hash::Hash;
use crate::format::node::Node;

/// Decoded nodes by hash, bounded by their encoded size.
pub struct NodeCache {
    inner: Mutex<CacheInner>,
    capacity: usize,
}

struct CacheInner {
    lru: LruCache<Hash, (Arc<Node>, usize)>,
    used: usize,
}

impl NodeCache {
    pub fn new(capacity: usize) -> Self {
        NodeCache {
            inner: Mutex::new(CacheInner {
                lru: LruCache::unbounded(),
                used: 0,
            }),
            capacity,
        }
    }

    pub fn get(&self, h: &Hash) -> Option<Arc<Node>> {
        self.inner.lock().lru.get(h).map(|(n, _)| n.clone())
    }

    pub fn insert(&self, h: Hash, node: Arc<Node>, size: usize) {
        let mut g = self.inner.lock();
        let CacheInner { lru, used } = &mut *g;
        // Decoded nodes take about twice their encoding in memory.
        let cost = size * 2 + 64;
        if let Some((_, old)) = lru.put(h, (node, cost)) {
            *used -= old;
        }
        *used += cost;
        while *used > self.capacity {
            match lru.pop_lru() {
                Some((_, (_, c))) => *used -= c,
                None => break,
            }
        }
    }

    pub fn clear(&self) {
        let mut g = self.inner.lock();
        g.lru.clear();
        g.used = 0;
    }
}
