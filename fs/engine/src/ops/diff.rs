//! What changed between two states (`zfs diff` for workspaces): the paths added, removed and
//! modified, a page at a time, in memory bounded by the page and the walk's frontier at any
//! depth and width.
//!
//! 1. [`changed_keys`] walks both trees together in key order and skips every subtree they
//!    share (a subtree's hash names its content), so its cost follows the size of the change,
//!    not of the workspace. What it finds reduces to two sets of inode numbers: inodes changed
//!    in place and directories whose entries changed.
//! 2. Those directories and their ancestors, in each state, are marked.
//! 3. [`Walk`] goes through both namespaces together in path order (a directory's entries by
//!    name, a directory before its contents), entering only marked directories and
//!    directories that exist on one side only. A page ends after `limit` entries or
//!    `max_bytes` of paths; its [`Cursor`] names a directory and an entry, not a path, so it
//!    stays small at any depth.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::error::{FsError, FsResult};
use crate::format::hash::Hash;
use crate::format::keys::{self, Decoded, Kind, ROOT_INO};
use crate::format::node::Node;
use crate::format::records::{self, Dirent, FileKind, Inode};
use crate::store::Store;
use crate::tree::{self, TreeIter};

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

/// One page of a diff, and where the next one starts (`None`: this was the last).
#[derive(Debug)]
pub struct DiffPage {
    pub entries: Vec<DiffEntry>,
    pub next: Option<Cursor>,
}

/// Where a page stopped: the last entry it gave, by its directory (in the newer state, or
/// the older one for a removed directory) and its name there. Bound to the two states.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    states: [u8; 8],
    older: bool,
    dir: u64,
    name: Vec<u8>,
    change: Change,
}

impl Cursor {
    /// Hex text, at most ~530 characters whatever the depth.
    pub fn encode(&self) -> String {
        let mut b = self.states.to_vec();
        b.push(self.older as u8);
        b.extend_from_slice(&self.dir.to_be_bytes());
        b.push(self.change as u8);
        b.extend_from_slice(&self.name);
        hex::encode(b)
    }

    /// `None` for text [`Cursor::encode`] did not make.
    pub fn decode(text: &str) -> Option<Cursor> {
        let b = hex::decode(text).ok()?;
        if b.len() < 18 || b.len() > 18 + crate::posix::NAME_MAX {
            return None;
        }
        let change = match b[17] {
            0 => Change::Added,
            1 => Change::Removed,
            2 => Change::Modified,
            _ => return None,
        };
        let dir = u64::from_be_bytes(b[9..17].try_into().ok()?);
        if dir < ROOT_INO {
            return None;
        }
        Some(Cursor {
            states: b[..8].try_into().ok()?,
            older: match b[8] {
                0 => false,
                1 => true,
                _ => return None,
            },
            dir,
            name: b[18..].to_vec(),
            change,
        })
    }
}

/// The paths that differ from state `from` to state `to`, in path order, after `after` (a
/// previous page's cursor), at most `limit` of them and about `max_bytes` of paths (never
/// fewer than one).
pub fn diff(
    store: &Store,
    from: &Hash,
    to: &Hash,
    after: Option<&Cursor>,
    limit: usize,
    max_bytes: usize,
) -> FsResult<DiffPage> {
    let states = states_tag(from, to);
    if after.is_some_and(|c| c.states != states) {
        return Err(FsError::Invalid("the cursor is for other states"));
    }
    if from == to {
        return Ok(DiffPage {
            entries: Vec::new(),
            next: None,
        });
    }
    let sides = [Side::new(store, *from), Side::new(store, *to)];
    let marks = Marks::find(&sides)?;
    let mut walk = Walk {
        sides,
        marks,
        stack: Vec::new(),
        path: b"/".to_vec(),
        on_path: [HashSet::from([ROOT_INO]), HashSet::from([ROOT_INO])],
        listings: None,
        page: Vec::new(),
        page_bytes: 0,
        limit: limit.max(1),
        max_bytes,
        states,
        last: None,
    };
    walk.run(after)?;
    let full = walk.stopped();
    Ok(DiffPage {
        next: if full { walk.last.take() } else { None },
        entries: walk.page,
    })
}

fn states_tag(from: &Hash, to: &Hash) -> [u8; 8] {
    let mut h = blake3::Hasher::new();
    h.update(&from.0);
    h.update(&to.0);
    h.finalize().as_bytes()[..8].try_into().expect("8 bytes")
}

/// One state: its tree and lookups in it.
struct Side<'a> {
    store: &'a Store,
    root: Hash,
}

impl<'a> Side<'a> {
    fn new(store: &'a Store, root: Hash) -> Self {
        Side { store, root }
    }

    fn inode(&self, ino: u64) -> FsResult<Option<Inode>> {
        tree::get(self.store, &self.root, &keys::inode(ino))?
            .map(|v| records::decode(&v))
            .transpose()
    }

    fn is_dir(&self, ino: u64) -> FsResult<bool> {
        Ok(self
            .inode(ino)?
            .is_some_and(|i| i.kind == FileKind::Directory && i.nlink > 0))
    }

    fn dirent(&self, dir: u64, name: &[u8]) -> FsResult<Option<Dirent>> {
        tree::get(self.store, &self.root, &keys::dirent(dir, name))?
            .map(|v| records::decode(&v))
            .transpose()
    }

    /// `dir`'s entries in name order, after `after`.
    fn listing(&self, dir: u64, after: Option<&[u8]>) -> FsResult<Listing<'a>> {
        let (_, end) = keys::kind_range(dir, Kind::Dirent);
        let start = keys::dirents_after(dir, after);
        Ok(Listing {
            iter: TreeIter::new(self.store, &self.root, &start)?,
            end,
            head: None,
        })
    }

    /// The name of directory `dir` in its parent, found by listing the parent.
    fn name_of(&self, dir: u64, parent: u64) -> FsResult<Vec<u8>> {
        let mut list = self.listing(parent, None)?;
        while let Some((name, d)) = list.next()? {
            if d.ino == dir {
                return Ok(name);
            }
        }
        Err(FsError::corrupt(format!(
            "directory {dir} is not named in its parent {parent}"
        )))
    }
}

/// A directory's entries, read as the walk needs them.
struct Listing<'a> {
    iter: TreeIter<'a>,
    end: Vec<u8>,
    head: Option<(Vec<u8>, Dirent)>,
}

impl Listing<'_> {
    fn peek(&mut self) -> FsResult<Option<&[u8]>> {
        if self.head.is_none() {
            self.head = match self.iter.next().transpose()? {
                Some((k, v)) if k < self.end => Some((k[9..].to_vec(), records::decode(&v)?)),
                _ => None,
            };
        }
        Ok(self.head.as_ref().map(|(n, _)| n.as_slice()))
    }

    fn next(&mut self) -> FsResult<Option<(Vec<u8>, Dirent)>> {
        self.peek()?;
        Ok(self.head.take())
    }
}

/// Where the namespace walk must go: inodes changed in place (present in both states), and
/// directories with a changed entry beneath them, per state.
struct Marks {
    touched: HashSet<u64>,
    /// `[older, newer]`: directories to enter, by each state's parent links.
    dirty: [HashSet<u64>; 2],
}

impl Marks {
    fn find(sides: &[Side<'_>; 2]) -> FsResult<Marks> {
        let mut touched = HashSet::new();
        let mut dirs = HashSet::new();
        // The last inode whose own record was added or removed: its other records follow it
        // in key order and are not changes in place.
        let mut not_in_both = None;
        changed_keys(
            sides[0].store,
            &sides[0].root,
            &sides[1].root,
            |k, before, after| {
                match keys::decode(k) {
                    Some(Decoded::Dirent(parent, _)) => {
                        dirs.insert(parent);
                    }
                    Some(Decoded::Inode(ino)) => {
                        if before.is_some() && after.is_some() {
                            touched.insert(ino);
                        } else {
                            not_in_both = Some(ino);
                        }
                    }
                    Some(Decoded::Xattr(ino, _) | Decoded::Extent(ino, _))
                        if not_in_both != Some(ino) =>
                    {
                        touched.insert(ino);
                    }
                    // The super record, orphans and readdir cookies follow from the rest.
                    _ => {}
                }
                Ok(())
            },
        )?;
        let mut marks = Marks {
            touched,
            dirty: [HashSet::new(), HashSet::new()],
        };
        for (side, dirty) in sides.iter().zip(&mut marks.dirty) {
            for &dir in &dirs {
                mark_up(side, dirty, dir)?;
            }
        }
        // An inode changed in place is found through the directory it was last named in
        // (`Inode::parent`). A file whose hint is stale (that link was removed, another
        // remains) is found by one scan of every entry.
        let newer = &sides[1];
        let mut by_hint: HashMap<u64, HashSet<u64>> = HashMap::new();
        for &ino in marks.touched.iter().filter(|&&i| i != ROOT_INO) {
            // An open file unlinked everywhere has no name to report.
            if let Some(i) = newer.inode(ino)?.filter(|i| i.nlink > 0) {
                by_hint.entry(i.parent).or_default().insert(ino);
            }
        }
        let mut lost = HashSet::new();
        for (hint, mut inos) in by_hint {
            let mut list = newer.listing(hint, None)?;
            while !inos.is_empty() {
                let Some((_, d)) = list.next()? else { break };
                if inos.remove(&d.ino) {
                    mark_up(newer, &mut marks.dirty[1], hint)?;
                }
            }
            lost.extend(inos);
        }
        if !lost.is_empty() {
            for kv in TreeIter::new(newer.store, &newer.root, &[])? {
                let (k, v) = kv?;
                if let Some(Decoded::Dirent(parent, _)) = keys::decode(&k) {
                    if lost.contains(&records::decode::<Dirent>(&v)?.ino) {
                        mark_up(newer, &mut marks.dirty[1], parent)?;
                    }
                }
            }
        }
        Ok(marks)
    }
}

/// Marks `dir` and its ancestors in `side` (nothing if `dir` is not there). Stops at a
/// directory marked before, whose ancestors are marked already.
fn mark_up(side: &Side<'_>, dirty: &mut HashSet<u64>, dir: u64) -> FsResult<()> {
    let mut at = dir;
    while !dirty.contains(&at) {
        let Some(inode) = side.inode(at)? else {
            return Ok(());
        };
        dirty.insert(at);
        if at == ROOT_INO {
            return Ok(());
        }
        at = inode.parent;
    }
    Ok(())
}

/// One tree's position in a key-order walk: the nodes from the root down, each with the index
/// of its next item (a child of a branch, an entry of a leaf) and its height (0: a leaf).
struct Pos {
    stack: Vec<(Arc<Node>, usize, u32)>,
}

/// What a [`Pos`] has next.
enum Item {
    Subtree(Hash, u32),
    Entry(Vec<u8>),
}

impl Pos {
    fn new(store: &Store, root: &Hash) -> FsResult<Pos> {
        let node = store.get_node(root)?;
        let mut height = 0;
        let mut at = node.clone();
        while let Node::Branch(children) = &*at {
            height += 1;
            let first = children
                .first()
                .ok_or_else(|| FsError::corrupt("an empty branch"))?
                .1;
            at = store.get_node(&first)?;
        }
        let mut pos = Pos {
            stack: vec![(node, 0, height)],
        };
        pos.settle();
        Ok(pos)
    }

    /// Pops finished nodes, so the top (if any) has an item next.
    fn settle(&mut self) {
        while let Some((node, i, _)) = self.stack.last() {
            let len = match &**node {
                Node::Leaf(e) => e.len(),
                Node::Branch(c) => c.len(),
            };
            if *i < len {
                return;
            }
            self.stack.pop();
            if let Some(parent) = self.stack.last_mut() {
                parent.1 += 1;
            }
        }
    }

    fn key(&self) -> Option<&[u8]> {
        let (node, i, _) = self.stack.last()?;
        Some(match &**node {
            Node::Leaf(e) => &e[*i].0,
            Node::Branch(c) => &c[*i].0,
        })
    }

    fn item(&self) -> Option<Item> {
        let (node, i, h) = self.stack.last()?;
        Some(match &**node {
            Node::Leaf(e) => Item::Entry(e[*i].1.clone()),
            Node::Branch(c) => Item::Subtree(c[*i].1, h - 1),
        })
    }

    fn advance(&mut self) {
        if let Some(top) = self.stack.last_mut() {
            top.1 += 1;
        }
        self.settle();
    }

    /// Replaces the subtree next by its items.
    fn descend(&mut self, store: &Store, hash: &Hash, height: u32) -> FsResult<()> {
        self.stack.push((store.get_node(hash)?, 0, height));
        self.settle();
        Ok(())
    }
}

/// Calls `f(key, value in from, value in to)` for every key whose value differs, in key
/// order, holding one path of nodes per tree.
fn changed_keys(
    store: &Store,
    from: &Hash,
    to: &Hash,
    mut f: impl FnMut(&[u8], Option<&[u8]>, Option<&[u8]>) -> FsResult<()>,
) -> FsResult<()> {
    if from == to {
        return Ok(());
    }
    let (mut a, mut b) = (Pos::new(store, from)?, Pos::new(store, to)?);
    loop {
        let order = match (a.key(), b.key()) {
            (None, None) => return Ok(()),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => x.cmp(y),
        };
        match (order, a.item(), b.item()) {
            (_, Some(Item::Subtree(x, _)), Some(Item::Subtree(y, _))) if x == y => {
                a.advance();
                b.advance();
            }
            // The side with the smaller key goes first: its entry is not on the other side.
            (std::cmp::Ordering::Less, Some(Item::Subtree(h, ht)), _) => {
                a.descend(store, &h, ht)?
            }
            (std::cmp::Ordering::Less, Some(Item::Entry(v)), _) => {
                f(a.key().expect("an item"), Some(&v), None)?;
                a.advance();
            }
            (std::cmp::Ordering::Greater, _, Some(Item::Subtree(h, ht))) => {
                b.descend(store, &h, ht)?
            }
            (std::cmp::Ordering::Greater, _, Some(Item::Entry(w))) => {
                f(b.key().expect("an item"), None, Some(&w))?;
                b.advance();
            }
            // Equal keys: open subtrees (the taller first, so equal heights meet) until both
            // sides are at entries.
            (_, Some(Item::Subtree(x, hx)), Some(Item::Subtree(y, hy))) => {
                if hx >= hy {
                    a.descend(store, &x, hx)?;
                }
                if hy >= hx {
                    b.descend(store, &y, hy)?;
                }
            }
            (_, Some(Item::Subtree(x, hx)), _) => a.descend(store, &x, hx)?,
            (_, _, Some(Item::Subtree(y, hy))) => b.descend(store, &y, hy)?,
            (_, Some(Item::Entry(v)), Some(Item::Entry(w))) => {
                if v != w {
                    f(a.key().expect("an item"), Some(&v), Some(&w))?;
                }
                a.advance();
                b.advance();
            }
            _ => unreachable!("a key without an item"),
        }
    }
}

/// One directory on the walk's path: the directory in each state (`None` where the path is
/// not a directory there), and the name handled last.
struct Frame {
    dirs: [Option<u64>; 2],
    /// Length of `Walk::path` for this directory, with its trailing `/`.
    path_len: usize,
    after: Option<Vec<u8>>,
}

struct Walk<'a> {
    sides: [Side<'a>; 2],
    marks: Marks,
    stack: Vec<Frame>,
    /// The top frame's path.
    path: Vec<u8>,
    /// Each side's directories on the path, for the loop check.
    on_path: [HashSet<u64>; 2],
    /// The top frame's listings, opened at its `after`.
    listings: Option<[Option<Listing<'a>>; 2]>,
    page: Vec<DiffEntry>,
    page_bytes: usize,
    limit: usize,
    max_bytes: usize,
    states: [u8; 8],
    /// The page's last entry, or where it resumed.
    last: Option<Cursor>,
}

impl Walk<'_> {
    fn run(&mut self, after: Option<&Cursor>) -> FsResult<()> {
        match self.walk(after) {
            Ok(()) | Err(Stop::Full) => Ok(()),
            Err(Stop::Err(e)) => Err(e),
        }
    }

    fn stopped(&self) -> bool {
        !self.stack.is_empty()
    }

    fn walk(&mut self, after: Option<&Cursor>) -> Result<(), Stop> {
        self.stack.push(Frame {
            dirs: [Some(ROOT_INO), Some(ROOT_INO)],
            path_len: 1,
            after: None,
        });
        match after {
            None => {
                if self.marks.touched.contains(&ROOT_INO) {
                    self.emit(1, b"", Change::Modified, ROOT_INO)?;
                }
            }
            Some(c) if c.name.is_empty() => {}
            Some(c) => self.resume(c)?,
        }
        loop {
            let Some(frame) = self.stack.last() else {
                return Ok(());
            };
            if self.listings.is_none() {
                let mut open = [None, None];
                for (s, side) in self.sides.iter().enumerate() {
                    if let Some(dir) = frame.dirs[s] {
                        open[s] = Some(side.listing(dir, frame.after.as_deref())?);
                    }
                }
                self.listings = Some(open);
            }
            let lists = self.listings.as_mut().expect("opened above");
            let mut names = [None, None];
            for s in 0..2 {
                if let Some(l) = &mut lists[s] {
                    names[s] = l.peek()?.map(<[u8]>::to_vec);
                }
            }
            let name = match (&names[0], &names[1]) {
                (None, None) => {
                    self.pop();
                    continue;
                }
                (Some(a), Some(b)) => a.min(b).clone(),
                (Some(a), None) => a.clone(),
                (None, Some(b)) => b.clone(),
            };
            let mut found = [None, None];
            for s in 0..2 {
                if names[s].as_ref() == Some(&name) {
                    found[s] = lists[s].as_mut().expect("peeked").next()?.map(|(_, d)| d);
                }
            }
            self.stack.last_mut().expect("a frame").after = Some(name.clone());
            self.visit(&name, found, None)?;
        }
    }

    /// Rebuilds the path down to the cursor's directory, then finishes its entry.
    fn resume(&mut self, c: &Cursor) -> Result<(), Stop> {
        let stale = || Stop::Err(FsError::Invalid("a stale cursor"));
        let side = &self.sides[!c.older as usize];
        if !side.is_dir(c.dir)? {
            return Err(stale());
        }
        let mut chain = Vec::new();
        let mut seen = HashSet::new();
        let mut at = c.dir;
        while at != ROOT_INO {
            if !seen.insert(at) {
                return Err(stale());
            }
            let parent = side.inode(at)?.ok_or_else(stale)?.parent;
            chain.push(side.name_of(at, parent).map_err(|_| stale())?);
            at = parent;
        }
        for name in chain.into_iter().rev() {
            let found = self.lookup(&name)?;
            self.stack.last_mut().expect("a frame").after = Some(name.clone());
            if !self.enter(&name, found)? {
                return Err(stale());
            }
        }
        if self.stack.last().expect("a frame").dirs[!c.older as usize] != Some(c.dir) {
            return Err(stale());
        }
        let found = self.lookup(&c.name)?;
        self.stack.last_mut().expect("a frame").after = Some(c.name.clone());
        self.visit(&c.name, found, Some(c.change))
    }

    fn lookup(&self, name: &[u8]) -> FsResult<[Option<Dirent>; 2]> {
        let frame = self.stack.last().expect("a frame");
        let mut found = [None, None];
        for (s, side) in self.sides.iter().enumerate() {
            if let Some(dir) = frame.dirs[s] {
                found[s] = side.dirent(dir, name)?;
            }
        }
        Ok(found)
    }

    /// Reports the entry `name` of the top frame (none of it up to `done`, where a page
    /// stopped), then enters it if there is a change beneath.
    fn visit(
        &mut self,
        name: &[u8],
        [old, new]: [Option<Dirent>; 2],
        done: Option<Change>,
    ) -> Result<(), Stop> {
        let frame = self.stack.last().expect("a frame");
        let in_place = frame.dirs[0] == frame.dirs[1];
        match (old, new) {
            (Some(o), Some(n)) if in_place && o.ino == n.ino => {
                if done.is_none() && self.marks.touched.contains(&n.ino) {
                    self.emit(1, name, Change::Modified, n.ino)?;
                }
            }
            _ => {
                if let (Some(o), None) = (old, done) {
                    self.emit(0, name, Change::Removed, o.ino)?;
                }
                if let Some(n) = new {
                    if !matches!(done, Some(Change::Added | Change::Modified)) {
                        self.emit(1, name, Change::Added, n.ino)?;
                    }
                }
            }
        }
        self.enter(name, [old, new])?;
        Ok(())
    }

    /// Pushes the frame of entry `name` if the walk must go beneath it; `false` if not.
    fn enter(&mut self, name: &[u8], found: [Option<Dirent>; 2]) -> FsResult<bool> {
        let mut dirs = found.map(|d| d.filter(|d| d.kind == FileKind::Directory).map(|d| d.ino));
        // A directory moved (renamed, exchanged) is one directory: what changed beneath it
        // is listed where it is now, against what it held before; at its old place only
        // its name is.
        if dirs[0] != dirs[1] {
            if let Some(old) = dirs[0] {
                if self.sides[1].is_dir(old)? {
                    dirs[0] = None;
                }
            }
            if let [None, Some(new)] = dirs {
                if self.sides[0].is_dir(new)? {
                    dirs[0] = Some(new);
                }
            }
        }
        let changed_beneath = match dirs {
            [None, None] => false,
            // The same directory in both: only where a change was marked.
            [Some(a), Some(b)] if a == b => {
                self.marks.dirty[0].contains(&a) || self.marks.dirty[1].contains(&b)
            }
            // On one side only, or two different directories: all of it differs.
            _ => true,
        };
        if !changed_beneath {
            return Ok(false);
        }
        for (s, dir) in dirs.iter().enumerate() {
            if dir.is_some_and(|d| self.on_path[s].contains(&d)) {
                return Err(FsError::corrupt(format!(
                    "a directory loop through inode {}",
                    dir.expect("on the path")
                )));
            }
        }
        for (s, dir) in dirs.iter().enumerate() {
            self.on_path[s].extend(*dir);
        }
        let len = self.stack.last().expect("a frame").path_len;
        self.path.truncate(len);
        self.path.extend_from_slice(name);
        self.path.push(b'/');
        self.stack.push(Frame {
            dirs,
            path_len: self.path.len(),
            after: None,
        });
        self.listings = None;
        Ok(true)
    }

    fn pop(&mut self) {
        if let Some(f) = self.stack.pop() {
            for (s, dir) in f.dirs.iter().enumerate() {
                if let Some(d) = dir {
                    self.on_path[s].remove(d);
                }
            }
        }
        self.listings = None;
        if let Some(f) = self.stack.last() {
            self.path.truncate(f.path_len);
        }
    }

    /// Adds the entry `name` of the top frame (empty: the root itself), its inode read from
    /// side `s`, unless the page is full.
    fn emit(&mut self, s: usize, name: &[u8], change: Change, ino: u64) -> Result<(), Stop> {
        let frame = self.stack.last().expect("a frame");
        let path_len = frame.path_len + name.len();
        if self.page.len() >= self.limit
            || (!self.page.is_empty() && self.page_bytes + path_len > self.max_bytes)
        {
            return Err(Stop::Full);
        }
        let inode = self.sides[s]
            .inode(ino)?
            .ok_or_else(|| FsError::corrupt(format!("entry names missing inode {ino}")))?;
        let mut path = self.path[..frame.path_len].to_vec();
        path.extend_from_slice(name);
        self.last = Some(Cursor {
            states: self.states,
            older: frame.dirs[1].is_none(),
            dir: frame.dirs[1]
                .or(frame.dirs[0])
                .expect("a frame is a directory"),
            name: name.to_vec(),
            change,
        });
        self.page_bytes += path.len();
        self.page.push(DiffEntry {
            path,
            change,
            kind: inode.kind,
            size: inode.size,
        });
        Ok(())
    }
}

/// Why the walk stopped early: the page is full, or an error.
enum Stop {
    Full,
    Err(FsError),
}

impl From<FsError> for Stop {
    fn from(e: FsError) -> Self {
        Stop::Err(e)
    }
}
