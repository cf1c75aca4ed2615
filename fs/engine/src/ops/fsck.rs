//! fsck: walks every root, verifies every object's hash and every reference, and checks that
//! each state is a consistent filesystem (links, directory indexes, counters, every directory
//! reached from the root once). A state's records stream past in key order and are checked
//! in memory bounded by one inode's records and the deepest path, at any size; only a state
//! found inconsistent is read again, whole, to name each problem.

use std::collections::{HashMap, HashSet};

use crate::error::FsResult;
use crate::format::hash::Hash;
use crate::format::keys::{self, Decoded, Kind, ROOT_INO};
use crate::format::node::Node;
use crate::format::records::{self, DirSeq, Dirent, Extent, FileKind, Inode, Super};
use crate::format::roots::RootId;
use crate::format::CHUNK_SIZE;
use crate::store::Store;
use crate::tree::TreeIter;

#[derive(Debug, Default)]
pub struct FsckReport {
    pub roots: usize,
    pub nodes: usize,
    pub chunks: usize,
    pub problems: Vec<String>,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

const MAX_PROBLEMS: usize = 1000;

pub fn check(store: &Store) -> FsResult<FsckReport> {
    let mut report = FsckReport::default();
    let mut good_nodes = HashSet::new();
    let mut good_chunks = HashSet::new();
    for (id, rec) in store.list_roots()? {
        report.roots += 1;
        let problems = &mut report.problems;
        let mut state = StreamCheck::new(store, &id);
        walk(
            store,
            &rec.root,
            &mut good_nodes,
            &mut |k, v, problems| state.entry(k, v, &mut good_chunks, problems),
            problems,
            &id,
        )?;
        if state.finish(problems) {
            reachable(store, &rec.root, state.dirs, &id, problems)?;
        } else {
            // Some entry, readdir index, parent or link count disagrees: name each one. This
            // holds the state's records in memory, which only a damaged state costs.
            let mut cross = CrossCheck::default();
            walk(
                store,
                &rec.root,
                &mut HashSet::new(),
                &mut |k, v, _| cross.entry(k, v),
                &mut Vec::new(),
                &id,
            )?;
            let before = problems.len();
            cross.finish(&id, problems);
            if problems.len() == before {
                problems.push(format!(
                    "{id:?}: names, link counts or readdir indexes disagree (by digest)"
                ));
            }
        }
        report.problems.truncate(MAX_PROBLEMS);
    }
    report.nodes = good_nodes.len();
    report.chunks = good_chunks.len();
    Ok(report)
}

/// Takes a state's entries in key order: (key, value, problems).
type EntrySink<'a> = dyn FnMut(&[u8], &[u8], &mut Vec<String>) + 'a;

/// Verifies the node's hash and structure, then feeds its entries in order to `entry`.
/// Returns the subtree's first key, which its parent's entry must equal.
fn walk(
    store: &Store,
    h: &Hash,
    good: &mut HashSet<Hash>,
    entry: &mut EntrySink<'_>,
    problems: &mut Vec<String>,
    id: &RootId,
) -> FsResult<Option<Vec<u8>>> {
    let Some(bytes) = store.get_node_bytes(h)? else {
        problems.push(format!("{id:?}: missing node {h}"));
        return Ok(None);
    };
    if Hash::of(&bytes) != *h {
        problems.push(format!("{id:?}: node {h} does not match its hash"));
        return Ok(None);
    }
    let node = match Node::decode(&bytes) {
        Ok(n) => n,
        Err(e) => {
            problems.push(format!("{id:?}: node {h}: {e}"));
            return Ok(None);
        }
    };
    good.insert(*h);
    match node {
        Node::Leaf(entries) => {
            for w in entries.windows(2) {
                if w[0].0 >= w[1].0 {
                    problems.push(format!("{id:?}: node {h}: keys out of order"));
                }
            }
            for (k, v) in &entries {
                entry(k, v, problems);
            }
            Ok(entries.first().map(|(k, _)| k.clone()))
        }
        Node::Branch(children) => {
            let mut first_of_all = None;
            for (first, child) in &children {
                let got = walk(store, child, good, entry, problems, id)?;
                if got.as_ref().is_some_and(|k| k != first) {
                    problems.push(format!(
                        "{id:?}: branch {h} key differs from its child's first key"
                    ));
                }
                first_of_all = first_of_all.or(got);
            }
            Ok(first_of_all)
        }
    }
}

/// A digest of a multiset: entries added on one side and subtracted on the other cancel out,
/// so two lists read in different orders can be compared in constant memory.
fn digest(parts: &[&[u8]]) -> u128 {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    u128::from_le_bytes(h.finalize().as_bytes()[..16].try_into().expect("16 bytes"))
}

fn link_digest(ino: u64, kind: FileKind) -> u128 {
    digest(&[b"link", &ino.to_be_bytes(), &[kind as u8]])
}

fn parent_digest(dir: u64, parent: u64) -> u128 {
    digest(&[b"parent", &dir.to_be_bytes(), &parent.to_be_bytes()])
}

/// One state's records, checked as they stream past in key order: what one inode's records
/// say of themselves at once, what names and links say of each other through digests, so
/// memory holds one inode's records at a time whatever the state's size.
struct StreamCheck<'a> {
    store: &'a Store,
    id: &'a RootId,
    last_key: Option<Vec<u8>>,
    sup: Option<(Super, bool)>,
    orphans: HashSet<u64>,
    cur: Option<Current>,
    files: u64,
    logical: u64,
    meta: u64,
    root_ok: bool,
    /// Directories the root reaches if the state is whole: the root and every named one.
    dirs: u64,
    /// Entries naming each inode, less the names its link count claims.
    links: u128,
    /// Directories' entries, less the parents they record.
    parents: u128,
    consistent: bool,
}

/// The inode whose records stream past.
struct Current {
    ino: u64,
    inode: Option<Inode>,
    subdirs: u32,
    /// Its entries, less its readdir index.
    index: u128,
    alloc: u64,
}

impl<'a> StreamCheck<'a> {
    fn new(store: &'a Store, id: &'a RootId) -> Self {
        StreamCheck {
            store,
            id,
            last_key: None,
            sup: None,
            orphans: HashSet::new(),
            cur: None,
            files: 0,
            logical: 0,
            meta: 0,
            root_ok: false,
            dirs: 0,
            links: 0,
            parents: 0,
            consistent: true,
        }
    }

    fn entry(
        &mut self,
        k: &[u8],
        v: &[u8],
        good_chunks: &mut HashSet<Hash>,
        problems: &mut Vec<String>,
    ) {
        let id = self.id;
        if self.last_key.as_deref().is_some_and(|l| l >= k) {
            problems.push(format!("{id:?}: keys out of order across nodes"));
        }
        self.last_key = Some(k.to_vec());
        let decoded = keys::decode(k);
        let ino = match decoded {
            Some(
                Decoded::Inode(i)
                | Decoded::Xattr(i, _)
                | Decoded::Dirent(i, _)
                | Decoded::DirSeq(i, _)
                | Decoded::Extent(i, _),
            ) => Some(i),
            _ => None,
        };
        if let Some(ino) = ino {
            if self.cur.as_ref().is_none_or(|c| c.ino != ino) {
                self.finish_current(problems);
                self.cur = Some(Current {
                    ino,
                    inode: None,
                    subdirs: 0,
                    index: 0,
                    alloc: 0,
                });
            }
        }
        let ok = match decoded {
            Some(Decoded::Super) => Super::decode(v).map(|s| self.sup = Some(s)).is_ok(),
            Some(Decoded::Orphan(ino)) => {
                self.orphans.insert(ino);
                true
            }
            Some(Decoded::Inode(ino)) => self.inode(ino, v, problems),
            Some(Decoded::Xattr(_, name)) => {
                self.meta += (name.len() + v.len()) as u64;
                true
            }
            Some(Decoded::Dirent(parent, name)) => self.dirent(parent, name, v),
            Some(Decoded::DirSeq(_, cookie)) => self.dirseq(cookie, v),
            Some(Decoded::Extent(ino, idx)) => self.extent(ino, idx, v, good_chunks, problems),
            None => false,
        };
        if !ok {
            let what = match decoded {
                Some(Decoded::Super) => "super",
                Some(Decoded::Inode(_)) => "inode",
                Some(Decoded::Dirent(..)) => "dirent",
                Some(Decoded::DirSeq(..)) => "dirseq",
                Some(Decoded::Extent(..)) => "extent",
                _ => "unknown",
            };
            problems.push(format!(
                "{id:?}: bad {what} record under key {}",
                hex::encode(k)
            ));
        }
    }

    /// An inode's record; `false` if it does not decode.
    fn inode(&mut self, ino: u64, v: &[u8], problems: &mut Vec<String>) -> bool {
        let Ok(i) = records::decode::<Inode>(v) else {
            return false;
        };
        self.files += 1;
        if i.kind == FileKind::Regular {
            self.logical += i.size;
        }
        self.meta += i.target.len() as u64;
        if let Some((sup, _)) = &self.sup {
            if ino >= sup.next_ino {
                problems.push(format!(
                    "{:?}: inode {ino} at or past next_ino {}",
                    self.id, sup.next_ino
                ));
            }
        }
        if ino == ROOT_INO && i.kind == FileKind::Directory {
            self.root_ok = true;
        }
        self.cur.as_mut().expect("started by entry").inode = Some(i);
        true
    }

    /// A directory entry: its name, the link and parent it adds, its readdir index entry.
    fn dirent(&mut self, parent: u64, name: &[u8], v: &[u8]) -> bool {
        let Ok(d) = records::decode::<Dirent>(v) else {
            return false;
        };
        self.meta += name.len() as u64;
        self.links = self.links.wrapping_add(link_digest(d.ino, d.kind));
        let cur = self.cur.as_mut().expect("started by entry");
        if d.kind == FileKind::Directory {
            cur.subdirs += 1;
            self.parents = self.parents.wrapping_add(parent_digest(d.ino, parent));
        }
        let entry = digest(&[name, &d.ino.to_be_bytes(), &d.cookie.to_be_bytes()]);
        cur.index = cur.index.wrapping_add(entry);
        if !cur
            .inode
            .as_ref()
            .is_some_and(|i| i.kind == FileKind::Directory)
        {
            self.consistent = false;
        }
        true
    }

    /// A readdir index entry: it cancels its directory entry's digest.
    fn dirseq(&mut self, cookie: u64, v: &[u8]) -> bool {
        let Ok(s) = records::decode::<DirSeq>(v) else {
            return false;
        };
        let entry = digest(&[&s.name, &s.ino.to_be_bytes(), &cookie.to_be_bytes()]);
        let cur = self.cur.as_mut().expect("started by entry");
        cur.index = cur.index.wrapping_sub(entry);
        true
    }

    /// A file's extent: within the file, and its chunk stored and whole (read once per chunk).
    fn extent(
        &mut self,
        ino: u64,
        idx: u64,
        v: &[u8],
        good_chunks: &mut HashSet<Hash>,
        problems: &mut Vec<String>,
    ) -> bool {
        let Ok(e) = records::decode::<Extent>(v) else {
            return false;
        };
        let id = self.id;
        let cur = self.cur.as_mut().expect("started by entry");
        match &cur.inode {
            Some(i) if i.kind == FileKind::Regular => {
                if idx * CHUNK_SIZE as u64 + e.len as u64 > i.size {
                    problems.push(format!(
                        "{id:?}: inode {ino}: extent {idx} past end of file"
                    ));
                }
            }
            _ => problems.push(format!(
                "{id:?}: extent {idx} of missing or non-regular inode {ino}"
            )),
        }
        cur.alloc += e.len as u64;
        if !good_chunks.contains(&e.hash) {
            // get_chunk decodes and verifies the hash.
            match self.store.get_chunk(&e.hash) {
                Err(err) => problems.push(format!("{id:?}: inode {ino}: chunk {}: {err}", e.hash)),
                Ok(data) if data.len() != e.len as usize => {
                    problems.push(format!("{id:?}: chunk {} has the wrong length", e.hash))
                }
                Ok(_) => {
                    good_chunks.insert(e.hash);
                }
            }
        }
        true
    }

    /// What the inode's own records say, once all of them went past.
    fn finish_current(&mut self, problems: &mut Vec<String>) {
        let Some(cur) = self.cur.take() else { return };
        let id = self.id;
        let ino = cur.ino;
        let Some(i) = cur.inode else {
            problems.push(format!(
                "{id:?}: records of inode {ino}, which does not exist"
            ));
            self.consistent = false;
            return;
        };
        if cur.index != 0 {
            self.consistent = false;
        }
        if i.kind == FileKind::Regular && cur.alloc != i.alloc_bytes {
            problems.push(format!(
                "{id:?}: inode {ino}: alloc_bytes {} disagrees with its extents",
                i.alloc_bytes
            ));
        }
        let orphan = self.orphans.contains(&ino);
        if i.nlink == 0 && !orphan {
            problems.push(format!("{id:?}: inode {ino}: no links and not an orphan"));
        }
        // The names the link count claims: a directory's count also holds its "." and each
        // subdirectory's "..".
        let named = match i.kind {
            FileKind::Directory if ino == ROOT_INO => {
                if i.nlink != 2 + cur.subdirs {
                    self.consistent = false;
                }
                self.dirs += 1;
                0
            }
            FileKind::Directory if i.nlink == 0 && orphan => 0,
            FileKind::Directory => match i.nlink.checked_sub(1 + cur.subdirs) {
                Some(1) => {
                    self.dirs += 1;
                    self.parents = self.parents.wrapping_sub(parent_digest(ino, i.parent));
                    1
                }
                _ => {
                    self.consistent = false;
                    0
                }
            },
            _ => i.nlink,
        };
        let claimed = link_digest(ino, i.kind).wrapping_mul(named as u128);
        self.links = self.links.wrapping_sub(claimed);
    }

    /// Reports the counters; `false` if names, links or indexes disagree somewhere.
    fn finish(&mut self, problems: &mut Vec<String>) -> bool {
        self.finish_current(problems);
        let id = self.id;
        let Some((sup, meta_counted)) = &self.sup else {
            problems.push(format!("{id:?}: no super record"));
            return self.consistent;
        };
        if !self.root_ok {
            problems.push(format!("{id:?}: root directory missing"));
        }
        if sup.files != self.files {
            problems.push(format!(
                "{id:?}: super counts {} files, found {}",
                sup.files, self.files
            ));
        }
        if sup.logical_bytes != self.logical {
            problems.push(format!(
                "{id:?}: super counts {} bytes, found {}",
                sup.logical_bytes, self.logical
            ));
        }
        if *meta_counted && sup.meta_bytes != self.meta {
            problems.push(format!(
                "{id:?}: super counts {} bytes of names, targets and xattrs, found {}",
                sup.meta_bytes, self.meta
            ));
        }
        self.consistent && self.links == 0 && self.parents == 0
    }
}

/// Every directory is reached from the root, once: a walk down the namespace, holding the
/// path it is on (a directory met again on it is a loop), at any depth.
fn reachable(
    store: &Store,
    root: &Hash,
    dirs: u64,
    id: &RootId,
    problems: &mut Vec<String>,
) -> FsResult<()> {
    let mut path: Vec<(u64, Option<Vec<u8>>)> = vec![(ROOT_INO, None)];
    let mut on_path = HashSet::from([ROOT_INO]);
    let mut reached = 1u64;
    let mut listing: Option<TreeIter<'_>> = None;
    while let Some((dir, after)) = path.last() {
        let (_, end) = keys::kind_range(*dir, Kind::Dirent);
        let iter = match &mut listing {
            Some(iter) => iter,
            None => {
                let from = keys::dirents_after(*dir, after.as_deref());
                listing.insert(TreeIter::new(store, root, &from)?)
            }
        };
        let mut next = None;
        for kv in iter.by_ref() {
            let (k, v) = kv?;
            if k >= end {
                break;
            }
            let d: Dirent = records::decode(&v)?;
            if d.kind == FileKind::Directory {
                next = Some((k[9..].to_vec(), d.ino));
                break;
            }
        }
        let Some((name, sub)) = next else {
            on_path.remove(dir);
            path.pop();
            listing = None;
            continue;
        };
        path.last_mut().expect("a directory").1 = Some(name);
        if !on_path.insert(sub) {
            problems.push(format!("{id:?}: a directory loop through inode {sub}"));
            continue;
        }
        reached += 1;
        path.push((sub, None));
        listing = None;
    }
    if reached != dirs {
        problems.push(format!(
            "{id:?}: {dirs} directories are named, the root reaches {reached}"
        ));
    }
    Ok(())
}

/// Names each disagreement between entries, readdir indexes, parents and link counts,
/// holding one state's records in memory (only when [`StreamCheck`] found one).
#[derive(Default)]
struct CrossCheck {
    inodes: HashMap<u64, Inode>,
    /// Links found per inode: dirents naming it, plus "." and ".." for directories.
    links: HashMap<u64, u32>,
    dirents: HashMap<(u64, Vec<u8>), Dirent>,
    dirseqs: HashMap<(u64, u64), DirSeq>,
    orphans: HashSet<u64>,
}

impl CrossCheck {
    fn entry(&mut self, k: &[u8], v: &[u8]) {
        match keys::decode(k) {
            Some(Decoded::Orphan(ino)) => {
                self.orphans.insert(ino);
            }
            Some(Decoded::Inode(ino)) => {
                if let Ok(i) = records::decode(v) {
                    self.inodes.insert(ino, i);
                }
            }
            Some(Decoded::Dirent(parent, name)) => {
                if let Ok(d) = records::decode::<Dirent>(v) {
                    *self.links.entry(d.ino).or_default() += 1;
                    self.dirents.insert((parent, name.to_vec()), d);
                }
            }
            Some(Decoded::DirSeq(parent, cookie)) => {
                if let Ok(d) = records::decode(v) {
                    self.dirseqs.insert((parent, cookie), d);
                }
            }
            _ => {}
        }
    }

    fn finish(self, id: &RootId, problems: &mut Vec<String>) {
        let mut p = |s: String| problems.push(format!("{id:?}: {s}"));
        let mut subdirs: HashMap<u64, u32> = HashMap::new();
        for ((parent, name), d) in &self.dirents {
            match self.inodes.get(&d.ino) {
                None => p(format!(
                    "entry {:?} in {parent} names missing inode {}",
                    String::from_utf8_lossy(name),
                    d.ino
                )),
                Some(i) if i.kind != d.kind => {
                    p(format!("entry for inode {} has the wrong type", d.ino))
                }
                Some(i) if i.kind == FileKind::Directory => {
                    *subdirs.entry(*parent).or_default() += 1;
                    if i.parent != *parent {
                        p(format!(
                            "directory {} records parent {} but lives in {parent}",
                            d.ino, i.parent
                        ));
                    }
                }
                Some(_) => {}
            }
            match self.dirseqs.get(&(*parent, d.cookie)) {
                Some(s) if s.ino == d.ino && s.name == *name => {}
                _ => p(format!(
                    "entry {:?} in {parent} has no matching readdir index",
                    String::from_utf8_lossy(name)
                )),
            }
            if !matches!(self.inodes.get(parent), Some(i) if i.kind == FileKind::Directory) {
                p(format!("entry in {parent}, which is not a directory"));
            }
        }
        for ((parent, _), s) in &self.dirseqs {
            if !self.dirents.contains_key(&(*parent, s.name.clone())) {
                p(format!("readdir index in {parent} without an entry"));
            }
        }
        for (ino, i) in &self.inodes {
            let named = self.links.get(ino).copied().unwrap_or(0);
            let want = match i.kind {
                FileKind::Directory if *ino == ROOT_INO => {
                    2 + subdirs.get(ino).copied().unwrap_or(0)
                }
                FileKind::Directory if named == 0 && self.orphans.contains(ino) => 0,
                FileKind::Directory => 1 + named + subdirs.get(ino).copied().unwrap_or(0),
                _ => named,
            };
            if i.nlink != want {
                p(format!(
                    "inode {ino}: nlink {} but {want} links found",
                    i.nlink
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::roots::RootRecord;
    use crate::posix::{NewNode, Workspace};
    use crate::tree::{self, Changes};
    use std::sync::Arc;

    /// A workspace with `/a/b/c` (directories), `/a/f` (a file with a second name `/g`),
    /// closed and committed; its id and the inode numbers of a, b, c and f.
    fn state() -> (tempfile::TempDir, Arc<Store>, uuid::Uuid, [u64; 4]) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = uuid::Uuid::new_v4();
        crate::roots::create_workspace(&store, id, &[]).unwrap();
        let ws = Workspace::open(store.clone(), id).unwrap();
        let mk = |parent, name: &str, kind| {
            let new = NewNode::owned_by_root(kind, 0o755);
            ws.create(parent, name.as_bytes(), new).unwrap().ino
        };
        let a = mk(ROOT_INO, "a", FileKind::Directory);
        let b = mk(a, "b", FileKind::Directory);
        let c = mk(b, "c", FileKind::Directory);
        let f = mk(a, "f", FileKind::Regular);
        ws.write(f, 0, b"data").unwrap();
        ws.link(f, ROOT_INO, b"g").unwrap();
        ws.close().unwrap();
        (dir, store, id, [a, b, c, f])
    }

    fn problems(store: &Store) -> Vec<String> {
        check(store).unwrap().problems
    }

    /// Rewrites records of the workspace's committed state, as a damaged store would hold.
    fn damage(store: &Store, id: uuid::Uuid, changes: Vec<(Vec<u8>, Option<Vec<u8>>)>) {
        let rid = RootId::Workspace(id);
        let rec = store.get_root(rid).unwrap().unwrap();
        let changes: Changes = changes.into_iter().collect();
        let (root, nodes) = tree::apply(store, &rec.root, &changes).unwrap();
        let next = RootRecord { root, ..rec };
        store
            .commit(rid, &next, &nodes, &[] as &[(Hash, Vec<u8>)], true, false)
            .unwrap();
    }

    fn inode(store: &Store, id: uuid::Uuid, ino: u64) -> Inode {
        let rec = store.get_root(RootId::Workspace(id)).unwrap().unwrap();
        records::decode(
            &tree::get(store, &rec.root, &keys::inode(ino))
                .unwrap()
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn a_whole_state_is_clean() {
        let (_d, store, _, _) = state();
        assert_eq!(problems(&store), Vec::<String>::new());
    }

    #[test]
    fn a_wrong_link_count_is_named() {
        let (_d, store, id, [_, _, _, f]) = state();
        let mut i = inode(&store, id, f);
        i.nlink = 3;
        damage(
            &store,
            id,
            vec![(keys::inode(f), Some(records::encode(&i)))],
        );
        let found = problems(&store);
        assert!(
            found
                .iter()
                .any(|p| p.contains(&format!("inode {f}: nlink 3 but 2"))),
            "{found:?}"
        );
    }

    #[test]
    fn an_entry_without_its_readdir_index_or_inode_is_named() {
        let (_d, store, id, [a, _, _, _]) = state();
        let rec = store.get_root(RootId::Workspace(id)).unwrap().unwrap();
        let d: Dirent = records::decode(
            &tree::get(&store, &rec.root, &keys::dirent(a, b"f"))
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        damage(&store, id, vec![(keys::dirseq(a, d.cookie), None)]);
        let found = problems(&store);
        assert!(
            found
                .iter()
                .any(|p| p.contains("has no matching readdir index")),
            "{found:?}"
        );

        let (_d, store, id, [a, _, _, _]) = state();
        let ghost = Dirent {
            ino: 999,
            kind: FileKind::Regular,
            cookie: 77,
        };
        damage(
            &store,
            id,
            vec![(keys::dirent(a, b"ghost"), Some(records::encode(&ghost)))],
        );
        let found = problems(&store);
        assert!(
            found.iter().any(|p| p.contains("names missing inode 999")),
            "{found:?}"
        );

        let (_d, store, id, _) = state();
        damage(
            &store,
            id,
            vec![(keys::xattr(999, b"user.x"), Some(b"v".to_vec()))],
        );
        let found = problems(&store);
        assert!(
            found.iter().any(|p| p.contains("records of inode 999")),
            "{found:?}"
        );
    }

    /// `b/c` made the parent of `b`, and `b`'s entry in `a` moved into `c`: every count and
    /// parent agrees, but the root no longer reaches `b` and `c`, which reach each other.
    #[test]
    fn directories_the_root_does_not_reach_are_named() {
        let (_d, store, id, [a, b, c, _]) = state();
        let rec = store.get_root(RootId::Workspace(id)).unwrap().unwrap();
        let entry = tree::get(&store, &rec.root, &keys::dirent(a, b"b"))
            .unwrap()
            .unwrap();
        let d: Dirent = records::decode(&entry).unwrap();
        let mut ia = inode(&store, id, a);
        let mut ib = inode(&store, id, b);
        let mut ic = inode(&store, id, c);
        ia.nlink -= 1;
        ib.parent = c;
        ic.nlink += 1;
        let seq = crate::format::records::DirSeq {
            ino: b,
            kind: FileKind::Directory,
            name: b"b".to_vec(),
        };
        damage(
            &store,
            id,
            vec![
                (keys::dirent(a, b"b"), None),
                (keys::dirseq(a, d.cookie), None),
                (keys::dirent(c, b"b"), Some(entry)),
                (keys::dirseq(c, d.cookie), Some(records::encode(&seq))),
                (keys::inode(a), Some(records::encode(&ia))),
                (keys::inode(b), Some(records::encode(&ib))),
                (keys::inode(c), Some(records::encode(&ic))),
            ],
        );
        let found = problems(&store);
        assert!(
            found
                .iter()
                .any(|p| p.contains("4 directories are named, the root reaches 2")),
            "{found:?}"
        );
    }
}
