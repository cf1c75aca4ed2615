//! What changed between two states (`zfs diff` for workspaces): the paths added, removed and
//! modified. Two states share every subtree a change did not touch, and a subtree's hash
//! names its content, so the walk skips equal subtrees without reading them: its cost follows
//! the size of the change, not of the workspace.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::error::{FsError, FsResult};
use crate::hash::Hash;
use crate::keys::{self, Decoded, Kind, ROOT_INO};
use crate::records::{self, Dirent, FileKind, Inode};
use crate::store::Store;
use crate::tree::{self, Node, TreeIter};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Added,
    Removed,
    Modified,
}

/// One changed path. `kind` and `size` are the path's in the newer state (the older one's
/// for a removed path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffEntry {
    /// From the root, `/`-separated; the root directory itself is `/`.
    pub path: Vec<u8>,
    pub change: Change,
    pub kind: FileKind,
    pub size: u64,
}

/// The paths that differ from state `from` to state `to`, in path order, at most `limit`
/// of them; `true` with them if more were left out.
pub fn diff(
    store: &Store,
    from: &Hash,
    to: &Hash,
    limit: usize,
) -> FsResult<(Vec<DiffEntry>, bool)> {
    let changed = changed_entries(store, from, to)?;
    let mut old = Paths::new(store, *from);
    let mut new = Paths::new(store, *to);
    // Inodes whose own records (attributes, data, xattrs) changed, and entries that moved.
    let mut touched = HashSet::new();
    let mut added = Vec::new();
    let mut removed = Vec::new();
    for (key, before, after) in &changed {
        match keys::decode(key) {
            Some(Decoded::Dirent(parent, name)) => {
                if let Some(v) = before {
                    removed.push((parent, name.to_vec(), records::decode::<Dirent>(v)?));
                }
                if let Some(v) = after {
                    added.push((parent, name.to_vec(), records::decode::<Dirent>(v)?));
                }
            }
            Some(Decoded::Inode(ino) | Decoded::Xattr(ino, _) | Decoded::Extent(ino, _)) => {
                touched.insert(ino);
            }
            // The super record, orphans and readdir cookies follow from the rest.
            _ => {}
        }
    }
    let mut out = Vec::new();
    // A moved inode shows as its old path removed and its new path added.
    let unnamed: HashSet<u64> = removed.iter().map(|(_, _, d)| d.ino).collect();
    let mut moved = HashSet::new();
    for (parent, name, d) in &removed {
        let inode = old.inode(d.ino)?;
        out.push(DiffEntry {
            path: join(&old.path(*parent)?, name),
            change: Change::Removed,
            kind: d.kind,
            size: inode.size,
        });
    }
    for (parent, name, d) in &added {
        if unnamed.contains(&d.ino) {
            moved.insert(d.ino);
        }
        let inode = new.inode(d.ino)?;
        out.push(DiffEntry {
            path: join(&new.path(*parent)?, name),
            change: Change::Added,
            kind: d.kind,
            size: inode.size,
        });
    }
    for ino in touched {
        // New files are reported by their names; deleted ones have no inode in `to`.
        if moved.contains(&ino) || ino == keys::SUPER_INO {
            continue;
        }
        let Some(inode) = new.try_inode(ino)? else {
            continue;
        };
        if old.try_inode(ino)?.is_none() {
            continue;
        }
        out.push(DiffEntry {
            path: new.path(ino)?,
            change: Change::Modified,
            kind: inode.kind,
            size: inode.size,
        });
    }
    out.sort_by(|a, b| {
        a.path
            .cmp(&b.path)
            .then((a.change as u8).cmp(&(b.change as u8)))
    });
    let truncated = out.len() > limit;
    out.truncate(limit);
    Ok((out, truncated))
}

type Entry = (Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>);

/// Every key whose value differs: (key, value in `from`, value in `to`). Walks both trees a
/// level at a time, dropping the subtrees they share at each step.
fn changed_entries(store: &Store, from: &Hash, to: &Hash) -> FsResult<Vec<Entry>> {
    let mut left: HashSet<Hash> = HashSet::from([*from]);
    let mut right: HashSet<Hash> = HashSet::from([*to]);
    let mut left_kv = BTreeMap::new();
    let mut right_kv = BTreeMap::new();
    loop {
        let shared: Vec<Hash> = left.intersection(&right).copied().collect();
        for h in &shared {
            left.remove(h);
            right.remove(h);
        }
        if left.is_empty() && right.is_empty() {
            break;
        }
        left = expand(store, left, &mut left_kv)?;
        right = expand(store, right, &mut right_kv)?;
    }
    // Leaves reached at different depths hold entries both sides have.
    let mut out = Vec::new();
    for (k, v) in &left_kv {
        match right_kv.get(k) {
            Some(w) if w == v => {}
            other => out.push((k.clone(), Some(v.clone()), other.cloned())),
        }
    }
    for (k, w) in right_kv {
        if !left_kv.contains_key(&k) {
            out.push((k, None, Some(w)));
        }
    }
    Ok(out)
}

/// One level down: branches become their children; leaves give up their entries.
fn expand(
    store: &Store,
    nodes: HashSet<Hash>,
    entries: &mut BTreeMap<Vec<u8>, Vec<u8>>,
) -> FsResult<HashSet<Hash>> {
    let mut next = HashSet::new();
    for h in nodes {
        match &*store.get_node(&h)? {
            Node::Leaf(kv) => entries.extend(kv.iter().cloned()),
            Node::Branch(children) => next.extend(children.iter().map(|(_, c)| *c)),
        }
    }
    Ok(next)
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if p != b"/" {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Paths of inodes in one state. An inode records the directory it was last named in
/// (`Inode::parent`), so a path costs a listing of each directory on the way up; a file whose
/// hint is stale (its hard link there was removed) is found by one scan of every entry.
struct Paths<'a> {
    store: &'a Store,
    root: Hash,
    /// Directory listings read so far: directory -> (inode -> name).
    listings: HashMap<u64, HashMap<u64, Vec<u8>>>,
    /// Every entry, once a stale hint made it necessary: inode -> (parent, name).
    everything: Option<HashMap<u64, (u64, Vec<u8>)>>,
    /// Names found so far: inode -> (parent, name), so a deep path's directories are each
    /// looked up once, not once per path beneath them.
    named: HashMap<u64, (u64, Vec<u8>)>,
}

impl<'a> Paths<'a> {
    fn new(store: &'a Store, root: Hash) -> Self {
        Paths {
            store,
            root,
            listings: HashMap::new(),
            everything: None,
            named: HashMap::new(),
        }
    }

    fn try_inode(&self, ino: u64) -> FsResult<Option<Inode>> {
        tree::get(self.store, &self.root, &keys::inode(ino))?
            .map(|v| records::decode(&v))
            .transpose()
    }

    fn inode(&self, ino: u64) -> FsResult<Inode> {
        self.try_inode(ino)?
            .ok_or_else(|| FsError::corrupt(format!("entry names missing inode {ino}")))
    }

    /// The path from the root, at any depth. A loop is an inode reached twice on the way up,
    /// which only a corrupt store can hold; depth alone is never one.
    fn path(&mut self, ino: u64) -> FsResult<Vec<u8>> {
        let mut parts = Vec::new();
        let mut seen = HashSet::new();
        let mut at = ino;
        while at != ROOT_INO {
            if !seen.insert(at) {
                return Err(FsError::corrupt(format!(
                    "a directory loop through inode {at}"
                )));
            }
            let (parent, name) = self.name(at)?;
            parts.push(name);
            at = parent;
        }
        let mut path = b"/".to_vec();
        for (i, name) in parts.iter().rev().enumerate() {
            if i > 0 {
                path.push(b'/');
            }
            path.extend_from_slice(name);
        }
        Ok(path)
    }

    fn name(&mut self, ino: u64) -> FsResult<(u64, Vec<u8>)> {
        if let Some(known) = self.named.get(&ino) {
            return Ok(known.clone());
        }
        let found = self.find_name(ino)?;
        self.named.insert(ino, found.clone());
        Ok(found)
    }

    fn find_name(&mut self, ino: u64) -> FsResult<(u64, Vec<u8>)> {
        let hint = self.inode(ino)?.parent;
        if hint != 0 {
            if !self.listings.contains_key(&hint) {
                let listing = self.list(hint)?;
                self.listings.insert(hint, listing);
            }
            if let Some(name) = self.listings[&hint].get(&ino) {
                return Ok((hint, name.clone()));
            }
        }
        if self.everything.is_none() {
            self.everything = Some(self.scan_all()?);
        }
        self.everything
            .as_ref()
            .and_then(|all| all.get(&ino).cloned())
            .ok_or_else(|| FsError::corrupt(format!("inode {ino} has no name")))
    }

    fn list(&self, dir: u64) -> FsResult<HashMap<u64, Vec<u8>>> {
        let (start, end) = keys::kind_range(dir, Kind::Dirent);
        let mut names = HashMap::new();
        for kv in TreeIter::new(self.store, &self.root, &start)? {
            let (k, v) = kv?;
            if k >= end {
                break;
            }
            let d: Dirent = records::decode(&v)?;
            names.entry(d.ino).or_insert_with(|| k[9..].to_vec());
        }
        Ok(names)
    }

    fn scan_all(&self) -> FsResult<HashMap<u64, (u64, Vec<u8>)>> {
        let mut all = HashMap::new();
        for kv in TreeIter::new(self.store, &self.root, &[])? {
            let (k, v) = kv?;
            if let Some(Decoded::Dirent(parent, name)) = keys::decode(&k) {
                let d: Dirent = records::decode(&v)?;
                all.entry(d.ino).or_insert((parent, name.to_vec()));
            }
        }
        Ok(all)
    }
}
