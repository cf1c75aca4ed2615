//! Key layout of a filesystem state's tree.
//!
//! Every key starts with a big-endian inode number, so all of one inode's records sort
//! together and a file's extents sort by offset:
//!
//! | key                                   | value ([`crate::format::records`]) | why it sorts there                 |
//! |---------------------------------------|----------------------------|------------------------------------|
//! | `ino=0  INODE`                        | `Super`                    | first key of every state           |
//! | `ino=0  ORPHAN  ino:u64`              | empty                      | unlinked but still open; purged at open |
//! | `ino    INODE`                        | `Inode`                    | attributes first, then the rest    |
//! | `ino    XATTR   name`                 | raw value bytes            | listxattr is one prefix scan       |
//! | `parent DIRENT  name`                 | `Dirent`                   | lookup is one point read           |
//! | `parent DIRSEQ  cookie:u64`           | `DirSeq`                   | readdir resumes at a stable cookie |
//! | `ino    EXTENT  chunk_index:u64`      | `Extent`                   | reads and truncates scan in order  |
//!
//! Inode 0 is never a file: it holds the state's super record and its orphan list.

/// Inode number of the root directory of every state.
pub const ROOT_INO: u64 = 1;
/// Holder of the super record and orphan list; never a file.
pub const SUPER_INO: u64 = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    Inode = 0,
    Orphan = 1,
    Xattr = 2,
    Dirent = 3,
    DirSeq = 4,
    Extent = 5,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Inode,
            1 => Kind::Orphan,
            2 => Kind::Xattr,
            3 => Kind::Dirent,
            4 => Kind::DirSeq,
            5 => Kind::Extent,
            _ => return None,
        })
    }
}

pub type Key = Vec<u8>;

fn key(ino: u64, kind: Kind, suffix: &[u8]) -> Key {
    let mut k = Vec::with_capacity(9 + suffix.len());
    k.extend_from_slice(&ino.to_be_bytes());
    k.push(kind as u8);
    k.extend_from_slice(suffix);
    k
}

pub fn super_key() -> Key {
    key(SUPER_INO, Kind::Inode, &[])
}
pub fn orphan(ino: u64) -> Key {
    key(SUPER_INO, Kind::Orphan, &ino.to_be_bytes())
}
pub fn inode(ino: u64) -> Key {
    key(ino, Kind::Inode, &[])
}
pub fn xattr(ino: u64, name: &[u8]) -> Key {
    key(ino, Kind::Xattr, name)
}
pub fn dirent(parent: u64, name: &[u8]) -> Key {
    key(parent, Kind::Dirent, name)
}
/// Where `parent`'s entries after `name` begin (all of them for `None`), in name order.
pub fn dirents_after(parent: u64, name: Option<&[u8]>) -> Key {
    match name {
        Some(name) => {
            let mut k = dirent(parent, name);
            k.push(0);
            k
        }
        None => key(parent, Kind::Dirent, &[]),
    }
}
pub fn dirseq(parent: u64, cookie: u64) -> Key {
    key(parent, Kind::DirSeq, &cookie.to_be_bytes())
}
pub fn extent(ino: u64, index: u64) -> Key {
    key(ino, Kind::Extent, &index.to_be_bytes())
}

/// `[start, end)` covering every key of `kind` for `ino`.
pub fn kind_range(ino: u64, kind: Kind) -> (Key, Key) {
    let end = match Kind::from_byte(kind as u8 + 1) {
        Some(next) => key(ino, next, &[]),
        None => key(ino + 1, Kind::Inode, &[]),
    };
    (key(ino, kind, &[]), end)
}

/// `[start, end)` covering every key of `ino`.
pub fn inode_range(ino: u64) -> (Key, Key) {
    (key(ino, Kind::Inode, &[]), key(ino + 1, Kind::Inode, &[]))
}

/// A decoded key, for fsck, GC and tests.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    Super,
    Orphan(u64),
    Inode(u64),
    Xattr(u64, &'a [u8]),
    Dirent(u64, &'a [u8]),
    DirSeq(u64, u64),
    Extent(u64, u64),
}

pub fn decode(k: &[u8]) -> Option<Decoded<'_>> {
    if k.len() < 9 {
        return None;
    }
    let ino = u64::from_be_bytes(k[..8].try_into().ok()?);
    let rest = &k[9..];
    let be = |r: &[u8]| r.try_into().ok().map(u64::from_be_bytes);
    Some(match (ino, Kind::from_byte(k[8])?) {
        (SUPER_INO, Kind::Inode) if rest.is_empty() => Decoded::Super,
        (SUPER_INO, Kind::Orphan) => Decoded::Orphan(be(rest)?),
        (_, Kind::Inode) if rest.is_empty() => Decoded::Inode(ino),
        (_, Kind::Xattr) => Decoded::Xattr(ino, rest),
        (_, Kind::Dirent) => Decoded::Dirent(ino, rest),
        (_, Kind::DirSeq) => Decoded::DirSeq(ino, be(rest)?),
        (_, Kind::Extent) => Decoded::Extent(ino, be(rest)?),
        _ => return None,
    })
}

/// Whether `k` is an extent key: the only values that reference chunks.
pub fn is_extent(k: &[u8]) -> bool {
    k.len() == 17 && k[8] == Kind::Extent as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_key() -> impl Strategy<Value = Key> {
        let name = proptest::collection::vec(any::<u8>(), 1..20);
        prop_oneof![
            (1u64..u64::MAX).prop_map(inode),
            (1u64..u64::MAX, name.clone()).prop_map(|(i, n)| xattr(i, &n)),
            (1u64..u64::MAX, name).prop_map(|(i, n)| dirent(i, &n)),
            (1u64..u64::MAX, any::<u64>()).prop_map(|(i, c)| dirseq(i, c)),
            (1u64..u64::MAX, any::<u64>()).prop_map(|(i, c)| extent(i, c)),
            any::<u64>().prop_map(orphan),
        ]
    }

    proptest! {
        #[test]
        fn keys_round_trip(k in any_key()) {
            let d = decode(&k).expect("decodes");
            let again = match d {
                Decoded::Super => super_key(),
                Decoded::Orphan(i) => orphan(i),
                Decoded::Inode(i) => inode(i),
                Decoded::Xattr(i, n) => xattr(i, n),
                Decoded::Dirent(i, n) => dirent(i, n),
                Decoded::DirSeq(i, c) => dirseq(i, c),
                Decoded::Extent(i, c) => extent(i, c),
            };
            prop_assert_eq!(again, k);
        }

        #[test]
        fn extents_sort_by_offset_within_their_inode(i in 1u64..u64::MAX - 1, a: u64, b: u64) {
            prop_assert_eq!(extent(i, a).cmp(&extent(i, b)), a.cmp(&b));
            let (lo, hi) = inode_range(i);
            prop_assert!(lo <= extent(i, a) && extent(i, a) < hi);
            prop_assert!(extent(i, u64::MAX) < inode(i + 1));
        }

        #[test]
        fn kind_ranges_hold_only_their_kind(i in 1u64..u64::MAX - 1, c: u64, n in proptest::collection::vec(any::<u8>(), 0..10)) {
            let (lo, hi) = kind_range(i, Kind::DirSeq);
            prop_assert!(lo <= dirseq(i, c) && dirseq(i, c) < hi);
            prop_assert!(dirent(i, &n) < lo);
            prop_assert!(extent(i, 0) >= hi);
        }
    }

    #[test]
    fn super_sorts_first_and_orphans_before_root() {
        assert!(super_key() < orphan(0));
        assert!(orphan(u64::MAX) < inode(ROOT_INO));
        assert_eq!(decode(&super_key()), Some(Decoded::Super));
    }
}
