//! The persistent copy-on-write B+tree that holds one filesystem state.
//!
//! Nodes are immutable and stored under the BLAKE3 hash of their encoding, so a state is one
//! root hash and two states share every subtree they have in common. [`apply`] turns a sorted
//! batch of changes into a new root, writing only the nodes on the paths it changed. Nodes are
//! split near [`TARGET_NODE_BYTES`] and an underfull node is merged with a neighbour, so the
//! tree stays balanced without ever being loaded whole.
//! Nodes are encoded as `format::node` says.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::error::{FsError, FsResult};
use crate::format::hash::Hash;
use crate::format::node::{Node, TARGET_NODE_BYTES};
use crate::store::Store;

const MIN_NODE_BYTES: usize = TARGET_NODE_BYTES / 4;

/// An object to write: its hash and its encoding.
pub type Object = (Hash, Vec<u8>);

/// The encoding and hash of the empty tree.
pub fn empty() -> (Hash, Vec<u8>) {
    let bytes = Node::Leaf(Vec::new()).encode();
    (Hash::of(&bytes), bytes)
}

pub fn get(store: &Store, root: &Hash, key: &[u8]) -> FsResult<Option<Vec<u8>>> {
    let mut node = store.get_node(root)?;
    loop {
        let next = match &*node {
            Node::Leaf(entries) => {
                return Ok(entries
                    .binary_search_by(|(k, _)| k.as_slice().cmp(key))
                    .ok()
                    .map(|i| entries[i].1.clone()))
            }
            Node::Branch(children) => children[Node::child_for(children, key)].1,
        };
        node = store.get_node(&next)?;
    }
}

/// Iterates entries in key order from a start key.
pub struct TreeIter<'a> {
    store: &'a Store,
    /// Path from the root: each node and the index of the child (branch) or entry (leaf) next.
    stack: Vec<(Arc<Node>, usize)>,
}

impl<'a> TreeIter<'a> {
    pub fn new(store: &'a Store, root: &Hash, start: &[u8]) -> FsResult<Self> {
        let mut stack = Vec::new();
        let mut node = store.get_node(root)?;
        loop {
            match &*node {
                Node::Leaf(entries) => {
                    let i = entries.partition_point(|(k, _)| k.as_slice() < start);
                    stack.push((node, i));
                    break;
                }
                Node::Branch(children) => {
                    let i = Node::child_for(children, start);
                    let child = children[i].1;
                    stack.push((node.clone(), i));
                    node = store.get_node(&child)?;
                }
            }
        }
        Ok(TreeIter { store, stack })
    }

    fn step(&mut self) -> FsResult<Option<(Vec<u8>, Vec<u8>)>> {
        loop {
            let Some((node, i)) = self.stack.last_mut() else {
                return Ok(None);
            };
            match &**node {
                Node::Leaf(entries) => {
                    if let Some(e) = entries.get(*i) {
                        *i += 1;
                        return Ok(Some(e.clone()));
                    }
                    self.stack.pop();
                }
                Node::Branch(children) => {
                    // Coming back up from child `i`: move to the next child, or leave.
                    *i += 1;
                    match children.get(*i) {
                        Some((_, h)) => {
                            let mut child = self.store.get_node(h)?;
                            while let Node::Branch(c) = &*child {
                                let first = c[0].1;
                                self.stack.push((child, 0));
                                child = self.store.get_node(&first)?;
                            }
                            self.stack.push((child, 0));
                        }
                        None => {
                            self.stack.pop();
                        }
                    }
                }
            }
        }
    }
}

impl Iterator for TreeIter<'_> {
    type Item = FsResult<(Vec<u8>, Vec<u8>)>;
    fn next(&mut self) -> Option<Self::Item> {
        self.step().transpose()
    }
}

/// A batch of changes: `Some(value)` puts, `None` deletes.
pub type Changes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// A node written by [`apply`] and referenced from its parent.
struct Child {
    first: Vec<u8>,
    hash: Hash,
    /// Encoded size when the node was built here; `None` for an untouched node.
    fresh_size: Option<usize>,
}

/// Builds the nodes of one [`apply`]. Nodes built here are not in RocksDB until the caller
/// writes them, and the shared cache may evict them at any time (a large commit builds more
/// than it holds), so the builder keeps every node it built and reads them from itself.
struct Builder<'a> {
    store: &'a Store,
    built: HashMap<Hash, (Arc<Node>, Vec<u8>)>,
}

impl Builder<'_> {
    fn get(&self, hash: &Hash) -> FsResult<Arc<Node>> {
        match self.built.get(hash) {
            Some((node, _)) => Ok(node.clone()),
            None => self.store.get_node(hash),
        }
    }

    fn keep(&mut self, node: Node) -> Hash {
        let bytes = node.encode();
        let hash = Hash::of(&bytes);
        let node = Arc::new(node);
        // Also cached, for the reads that follow the commit.
        self.store.nodes.insert(hash, node.clone(), bytes.len());
        self.built.insert(hash, (node, bytes));
        hash
    }

    /// Builds a node; `size` is its size as [`Builder::split`] measures it.
    fn node(&mut self, node: Node, size: usize) -> Child {
        let first = match &node {
            Node::Leaf(e) => e[0].0.clone(),
            Node::Branch(c) => c[0].0.clone(),
        };
        let hash = self.keep(node);
        // The same measure as the split, so a piece the split kept is never "underfull".
        Child {
            first,
            hash,
            fresh_size: Some(size),
        }
    }

    /// Cuts sorted entries into nodes of about the target size, none underfull unless alone.
    fn split<T>(
        &mut self,
        entries: Vec<(Vec<u8>, T)>,
        size: impl Fn(&(Vec<u8>, T)) -> usize,
        make: impl Fn(Vec<(Vec<u8>, T)>) -> Node,
    ) -> Vec<Child> {
        let mut pieces = Vec::new();
        let mut cur = Vec::new();
        let mut cur_size = 0;
        for e in entries {
            cur_size += size(&e);
            cur.push(e);
            if cur_size >= TARGET_NODE_BYTES {
                pieces.push((std::mem::take(&mut cur), cur_size));
                cur_size = 0;
            }
        }
        if !cur.is_empty() {
            match pieces.last_mut() {
                Some((last, last_size)) if cur_size < MIN_NODE_BYTES => {
                    last.extend(cur);
                    *last_size += cur_size;
                }
                _ => pieces.push((cur, cur_size)),
            }
        }
        pieces
            .into_iter()
            .map(|(p, size)| self.node(make(p), size))
            .collect()
    }

    fn leaves(&mut self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<Child> {
        self.split(entries, |(k, v)| k.len() + v.len() + 4, Node::Leaf)
    }

    fn branches(&mut self, children: Vec<(Vec<u8>, Hash)>) -> Vec<Child> {
        self.split(children, |(k, _)| k.len() + 34, Node::Branch)
    }

    /// Applies `changes` (sorted, all within this node's range) to the node `hash`, returning
    /// the nodes that replace it at the same level (none if it became empty).
    fn apply_node(
        &mut self,
        hash: &Hash,
        changes: &[(&[u8], Option<&[u8]>)],
    ) -> FsResult<Vec<Child>> {
        let node = self.get(hash)?;
        match &*node {
            Node::Leaf(entries) => Ok(self.leaves(merge(entries, changes))),
            Node::Branch(children) => {
                let mut out: Vec<Child> = Vec::with_capacity(children.len() + 2);
                let mut rest = changes;
                for (i, (first, child)) in children.iter().enumerate() {
                    let n = match children.get(i + 1) {
                        Some((next, _)) => rest.partition_point(|(k, _)| *k < next.as_slice()),
                        None => rest.len(),
                    };
                    let (mine, later) = rest.split_at(n);
                    rest = later;
                    if mine.is_empty() {
                        out.push(Child {
                            first: first.clone(),
                            hash: *child,
                            fresh_size: None,
                        });
                    } else {
                        out.extend(self.apply_node(child, mine)?);
                    }
                }
                self.merge_underfull(&mut out)?;
                if out.is_empty() {
                    return Ok(Vec::new());
                }
                Ok(self.branches(out.into_iter().map(|c| (c.first, c.hash)).collect()))
            }
        }
    }

    /// Merges each freshly built underfull child with a neighbour and re-splits the pair.
    fn merge_underfull(&mut self, children: &mut Vec<Child>) -> FsResult<()> {
        while children.len() > 1 {
            let Some(i) = children
                .iter()
                .position(|c| c.fresh_size.is_some_and(|s| s < MIN_NODE_BYTES))
            else {
                break;
            };
            let j = if i + 1 < children.len() { i + 1 } else { i - 1 };
            let (a, b) = (i.min(j), i.max(j));
            let left = self.get(&children[a].hash)?;
            let right = self.get(&children[b].hash)?;
            let merged = match (&*left, &*right) {
                (Node::Leaf(l), Node::Leaf(r)) => self.leaves(l.iter().chain(r).cloned().collect()),
                (Node::Branch(l), Node::Branch(r)) => {
                    self.branches(l.iter().chain(r).cloned().collect())
                }
                _ => return Err(FsError::corrupt("siblings at different heights")),
            };
            children.splice(a..=b, merged);
        }
        Ok(())
    }
}

fn merge(
    entries: &[(Vec<u8>, Vec<u8>)],
    changes: &[(&[u8], Option<&[u8]>)],
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::with_capacity(entries.len() + changes.len());
    let (mut i, mut j) = (0, 0);
    while i < entries.len() || j < changes.len() {
        let take_change = match (entries.get(i), changes.get(j)) {
            (Some((ek, _)), Some((ck, _))) => {
                if ek.as_slice() == *ck {
                    i += 1; // replaced or deleted by the change
                    true
                } else {
                    *ck < ek.as_slice()
                }
            }
            (None, Some(_)) => true,
            _ => false,
        };
        if take_change {
            let (k, v) = changes[j];
            if let Some(v) = v {
                out.push((k.to_vec(), v.to_vec()));
            }
            j += 1;
        } else {
            out.push(entries[i].clone());
            i += 1;
        }
    }
    out
}

/// Applies `changes` to the tree at `root`. Returns the new root and the new nodes that it
/// references (hash, encoding), which the caller writes in the same batch as the root pointer.
pub fn apply(store: &Store, root: &Hash, changes: &Changes) -> FsResult<(Hash, Vec<Object>)> {
    if changes.is_empty() {
        return Ok((*root, Vec::new()));
    }
    let flat: Vec<(&[u8], Option<&[u8]>)> = changes
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_deref()))
        .collect();
    let mut b = Builder {
        store,
        built: HashMap::new(),
    };
    // The empty tree is known without a lookup (a new workspace starts from it unwritten).
    let empty_root = b.keep(Node::Leaf(Vec::new()));
    let mut level = b.apply_node(root, &flat)?;
    let new_root = loop {
        match level.len() {
            0 => break empty_root,
            1 => {
                // A branch left with one child hands the root down to it.
                let mut h = level[0].hash;
                loop {
                    match &*b.get(&h)? {
                        Node::Branch(c) if c.len() == 1 => h = c[0].1,
                        _ => break,
                    }
                }
                break h;
            }
            _ => level = b.branches(level.into_iter().map(|c| (c.first, c.hash)).collect()),
        }
    };
    // Only nodes the new root reaches are written; merges leave some built nodes behind.
    let mut written = Vec::new();
    let mut stack = vec![new_root];
    while let Some(h) = stack.pop() {
        if let Some((node, bytes)) = b.built.remove(&h) {
            if let Node::Branch(children) = &*node {
                stack.extend(children.iter().map(|(_, c)| *c));
            }
            written.push((h, bytes));
        }
    }
    Ok((new_root, written))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn store() -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        (dir, s)
    }

    fn write(store: &Store, nodes: &[(Hash, Vec<u8>)]) {
        let mut batch = rocksdb::WriteBatch::default();
        let db = store.db().unwrap();
        for (h, b) in nodes {
            batch.put_cf(db.cf(crate::store::CF_NODES), h.0, b);
        }
        drop(db);
        store.write(batch, false).unwrap();
    }

    fn depth(store: &Store, root: &Hash) -> usize {
        match &*store.get_node(root).unwrap() {
            Node::Leaf(_) => 1,
            Node::Branch(c) => {
                let d: Vec<usize> = c.iter().map(|(_, h)| depth(store, h)).collect();
                assert!(d.iter().all(|x| *x == d[0]), "unbalanced");
                d[0] + 1
            }
        }
    }

    #[test]
    fn node_encoding_round_trips_and_rejects_garbage() {
        let n = Node::Leaf(vec![(b"a".to_vec(), vec![1; 300]), (b"b".to_vec(), vec![])]);
        assert_eq!(Node::decode(&n.encode()).unwrap(), n);
        let b = Node::Branch(vec![(b"k".to_vec(), Hash::of(b"x"))]);
        assert_eq!(Node::decode(&b.encode()).unwrap(), b);
        let mut bad = n.encode();
        bad.push(0);
        assert!(Node::decode(&bad).is_err());
        assert!(Node::decode(&[7]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn apply_matches_a_btreemap(batches in proptest::collection::vec(
            proptest::collection::vec((0u32..3000, proptest::option::weighted(0.7, 0usize..200)), 1..400), 1..8)) {
            let (_d, store) = store();
            let (mut root, empty_bytes) = empty();
            write(&store, &[(root, empty_bytes)]);
            let mut model = BTreeMap::new();
            for batch in batches {
                let mut changes = Changes::new();
                for (k, v) in batch {
                    let key = k.to_be_bytes().to_vec();
                    let val = v.map(|n| vec![k as u8; n]);
                    match &val { Some(v) => { model.insert(key.clone(), v.clone()); } None => { model.remove(&key); } }
                    changes.insert(key, val);
                }
                let (r, nodes) = apply(&store, &root, &changes).unwrap();
                write(&store, &nodes);
                store.nodes.clear(); // read back from RocksDB, not the cache
                root = r;
                let all: Vec<_> = TreeIter::new(&store, &root, &[]).unwrap().map(|e| e.unwrap()).collect();
                let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                prop_assert_eq!(all, want);
                depth(&store, &root);
                for probe in [0u32, 7, 1500, 2999, 5000] {
                    let key = probe.to_be_bytes();
                    prop_assert_eq!(get(&store, &root, &key).unwrap(), model.get(key.as_slice()).cloned());
                    let from: Vec<_> = TreeIter::new(&store, &root, &key).unwrap().take(5).map(|e| e.unwrap().0).collect();
                    let want: Vec<_> = model.range(key.to_vec()..).take(5).map(|(k, _)| k.clone()).collect();
                    prop_assert_eq!(from, want);
                }
            }
        }
    }

    /// A commit whose new nodes outgrow the node cache must still find every node it built
    /// (they are not in RocksDB until the caller writes them).
    #[test]
    fn a_commit_larger_than_the_node_cache_builds_from_its_own_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let opts = crate::store::StoreOptions {
            node_cache_bytes: 64 << 10,
            ..Default::default()
        };
        let store = Store::open_with(dir.path(), opts).unwrap();
        let (mut root, _) = empty();
        let mut model = BTreeMap::new();
        // Two large commits (~2 MB of entries each, 30x the cache), the second over the first.
        for round in 0u32..2 {
            let mut changes = Changes::new();
            for i in 0u32..40_000 {
                let k = (i * 2 + round).to_be_bytes().to_vec();
                let v = vec![(i % 251) as u8; 20 + (i % 40) as usize];
                model.insert(k.clone(), v.clone());
                changes.insert(k, Some(v));
            }
            let (r, nodes) = apply(&store, &root, &changes).unwrap();
            write(&store, &nodes);
            root = r;
        }
        store.nodes.clear();
        let all: Vec<_> = TreeIter::new(&store, &root, &[])
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        let want: Vec<_> = model.into_iter().collect();
        assert!(
            all == want,
            "the tree read back differs from what was applied"
        );
        depth(&store, &root);
    }

    #[test]
    fn the_same_contents_give_the_same_root_and_deleting_all_gives_the_empty_tree() {
        let (_d, store) = store();
        let (empty_root, bytes) = empty();
        write(&store, &[(empty_root, bytes)]);
        let mut changes = Changes::new();
        for i in 0u32..20_000 {
            changes.insert(i.to_be_bytes().to_vec(), Some(vec![1; 40]));
        }
        let (root, nodes) = apply(&store, &empty_root, &changes).unwrap();
        write(&store, &nodes);
        assert!(depth(&store, &root) >= 2);
        // A one-key change rewrites only one path.
        let one: Changes = [(5u32.to_be_bytes().to_vec(), Some(vec![2]))].into();
        let (r2, n2) = apply(&store, &root, &one).unwrap();
        assert_eq!(n2.len(), depth(&store, &root));
        write(&store, &n2);
        let back: Changes = [(5u32.to_be_bytes().to_vec(), Some(vec![1; 40]))].into();
        assert_eq!(apply(&store, &r2, &back).unwrap().0, root);
        let all: Changes = changes.keys().map(|k| (k.clone(), None)).collect();
        assert_eq!(apply(&store, &root, &all).unwrap().0, empty_root);
    }
}
