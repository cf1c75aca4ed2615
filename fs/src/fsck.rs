//! fsck: walks every root, verifies every object's hash and every reference, and checks that
//! each state is a consistent filesystem (links, directory indexes, counters).

use std::collections::{HashMap, HashSet};

use crate::error::FsResult;
use crate::hash::Hash;
use crate::keys::{self, Decoded, ROOT_INO};
use crate::posix::CHUNK_SIZE;
use crate::records::{self, DirSeq, Dirent, Extent, FileKind, Inode, Super};
use crate::store::{RootId, Store};
use crate::tree::Node;

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
        let mut state = StateCheck::default();
        walk(
            store,
            &rec.root,
            &mut good_nodes,
            &mut state,
            &mut report.problems,
            &id,
        )?;
        state.finish(store, &id, &mut good_chunks, &mut report.problems)?;
        report.problems.truncate(MAX_PROBLEMS);
    }
    report.nodes = good_nodes.len();
    report.chunks = good_chunks.len();
    Ok(report)
}

/// Verifies the node's hash and structure, then feeds its entries in order to `state`.
/// Returns the subtree's first key, which its parent's entry must equal.
fn walk(
    store: &Store,
    h: &Hash,
    good: &mut HashSet<Hash>,
    state: &mut StateCheck,
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
                state.entry(k, v, problems, id);
            }
            Ok(entries.first().map(|(k, _)| k.clone()))
        }
        Node::Branch(children) => {
            let mut first_of_all = None;
            for (first, child) in &children {
                let got = walk(store, child, good, state, problems, id)?;
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

#[derive(Default)]
struct StateCheck {
    last_key: Option<Vec<u8>>,
    sup: Option<Super>,
    inodes: HashMap<u64, Inode>,
    /// Links found per inode: dirents naming it, plus "." and ".." for directories.
    links: HashMap<u64, u32>,
    dirents: HashMap<(u64, Vec<u8>), Dirent>,
    dirseqs: HashMap<(u64, u64), DirSeq>,
    extents: Vec<(u64, u64, Extent)>,
    orphans: HashSet<u64>,
}

impl StateCheck {
    fn entry(&mut self, k: &[u8], v: &[u8], problems: &mut Vec<String>, id: &RootId) {
        if self.last_key.as_deref().is_some_and(|l| l >= k) {
            problems.push(format!("{id:?}: keys out of order across nodes"));
        }
        self.last_key = Some(k.to_vec());
        let bad = |problems: &mut Vec<String>, what: &str| {
            problems.push(format!(
                "{id:?}: bad {what} record under key {}",
                hex::encode(k)
            ))
        };
        match keys::decode(k) {
            Some(Decoded::Super) => match records::decode(v) {
                Ok(s) => self.sup = Some(s),
                Err(_) => bad(problems, "super"),
            },
            Some(Decoded::Orphan(ino)) => {
                self.orphans.insert(ino);
            }
            Some(Decoded::Inode(ino)) => match records::decode(v) {
                Ok(i) => {
                    self.inodes.insert(ino, i);
                }
                Err(_) => bad(problems, "inode"),
            },
            Some(Decoded::Xattr(..)) => {}
            Some(Decoded::Dirent(parent, name)) => match records::decode::<Dirent>(v) {
                Ok(d) => {
                    *self.links.entry(d.ino).or_default() += 1;
                    self.dirents.insert((parent, name.to_vec()), d);
                }
                Err(_) => bad(problems, "dirent"),
            },
            Some(Decoded::DirSeq(parent, cookie)) => match records::decode(v) {
                Ok(d) => {
                    self.dirseqs.insert((parent, cookie), d);
                }
                Err(_) => bad(problems, "dirseq"),
            },
            Some(Decoded::Extent(ino, idx)) => match records::decode(v) {
                Ok(e) => self.extents.push((ino, idx, e)),
                Err(_) => bad(problems, "extent"),
            },
            None => bad(problems, "unknown"),
        }
    }

    fn finish(
        self,
        store: &Store,
        id: &RootId,
        good_chunks: &mut HashSet<Hash>,
        problems: &mut Vec<String>,
    ) -> FsResult<()> {
        let mut p = |s: String| problems.push(format!("{id:?}: {s}"));
        let Some(sup) = &self.sup else {
            p("no super record".into());
            return Ok(());
        };
        match self.inodes.get(&ROOT_INO) {
            Some(i) if i.kind == FileKind::Directory => {}
            _ => p("root directory missing".into()),
        }
        let mut logical = 0;
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
            if *ino >= sup.next_ino {
                p(format!("inode {ino} at or past next_ino {}", sup.next_ino));
            }
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
            if i.nlink == 0 && !self.orphans.contains(ino) {
                p(format!("inode {ino}: no links and not an orphan"));
            }
            if i.kind == FileKind::Regular {
                logical += i.size;
            }
        }
        let mut alloc: HashMap<u64, u64> = HashMap::new();
        for (ino, idx, e) in &self.extents {
            match self.inodes.get(ino) {
                Some(i) if i.kind == FileKind::Regular => {
                    if idx * CHUNK_SIZE as u64 + e.len as u64 > i.size {
                        p(format!("inode {ino}: extent {idx} past end of file"));
                    }
                }
                _ => p(format!(
                    "extent {idx} of missing or non-regular inode {ino}"
                )),
            }
            *alloc.entry(*ino).or_default() += e.len as u64;
            if good_chunks.contains(&e.hash) {
                continue;
            }
            // get_chunk decodes and verifies the hash; any failure is a problem to report.
            match store.get_chunk(&e.hash) {
                Err(err) => p(format!("inode {ino}: chunk {}: {err}", e.hash)),
                Ok(data) if data.len() != e.len as usize => {
                    p(format!("chunk {} has the wrong length", e.hash))
                }
                Ok(_) => {
                    good_chunks.insert(e.hash);
                }
            }
        }
        for (ino, i) in &self.inodes {
            if i.kind == FileKind::Regular && alloc.get(ino).copied().unwrap_or(0) != i.alloc_bytes
            {
                p(format!(
                    "inode {ino}: alloc_bytes {} disagrees with its extents",
                    i.alloc_bytes
                ));
            }
        }
        if sup.files != self.inodes.len() as u64 {
            p(format!(
                "super counts {} files, found {}",
                sup.files,
                self.inodes.len()
            ));
        }
        if sup.logical_bytes != logical {
            p(format!(
                "super counts {} bytes, found {logical}",
                sup.logical_bytes
            ));
        }
        Ok(())
    }
}
