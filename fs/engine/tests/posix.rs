//! POSIX layer behaviour without FUSE: the errno of each error case, sparse files, chunk
//! sharing, readdir cookies under change, orphans, and space accounting across workspaces.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use chaserfs_engine::format::keys::ROOT_INO;
use chaserfs_engine::format::CHUNK_SIZE;
use chaserfs_engine::ops::{fsck, gc};
use chaserfs_engine::posix::{RENAME_EXCHANGE, RENAME_NOREPLACE};
use chaserfs_engine::{
    roots, Attr, FileKind, FsResult, NewNode, RootId, SetAttr, Store, Workspace,
};
use common::noise;
use uuid::Uuid;

const CS: u64 = CHUNK_SIZE as u64;

fn setup() -> (tempfile::TempDir, Arc<Store>, Workspace) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let id = Uuid::new_v4();
    roots::create_workspace(&store, id, &[]).unwrap();
    let ws = Workspace::open(store.clone(), id).unwrap();
    (dir, store, ws)
}

fn node(kind: FileKind) -> NewNode<'static> {
    NewNode {
        kind,
        perm: 0o755,
        uid: 1000,
        gid: 1000,
        rdev: 0,
        target: b"target",
    }
}

fn file(ws: &Workspace, parent: u64, name: &str) -> u64 {
    ws.create(parent, name.as_bytes(), node(FileKind::Regular))
        .unwrap()
        .ino
}

fn dir(ws: &Workspace, parent: u64, name: &str) -> u64 {
    ws.create(parent, name.as_bytes(), node(FileKind::Directory))
        .unwrap()
        .ino
}

fn errno<T: std::fmt::Debug>(r: FsResult<T>) -> i32 {
    r.expect_err("expected an error").errno()
}

/// A write-back of the kernel's page cache keeps the times the kernel set and flushed (they
/// may arrive before the data); a write of the daemon's own sets them.
#[test]
fn a_write_back_keeps_the_times_the_kernel_sent() {
    let (_d, _s, ws) = setup();
    let f = file(&ws, ROOT_INO, "f");
    let t = chaserfs_engine::Timespec {
        sec: 1_700_000_000,
        nsec: 5,
    };
    ws.setattr(
        f,
        &SetAttr {
            mtime: Some(chaserfs_engine::TimeSet::At(t)),
            ctime: Some(t),
            ..Default::default()
        },
    )
    .unwrap();
    ws.write_back(f, 0, b"hello").unwrap();
    let a = ws.getattr(f).unwrap();
    assert_eq!((a.size, a.mtime, a.ctime), (5, t, t));
    ws.write(f, 5, b"!").unwrap();
    let a = ws.getattr(f).unwrap();
    assert_eq!(a.size, 6);
    assert!(a.mtime > t && a.ctime > t, "{a:?}");
}

#[test]
fn error_cases_answer_the_posix_errno() {
    let (_d, _s, ws) = setup();
    let d = dir(&ws, ROOT_INO, "d");
    let f = file(&ws, ROOT_INO, "f");
    let sub = dir(&ws, d, "sub");
    file(&ws, sub, "x");
    assert_eq!(errno(ws.lookup(ROOT_INO, b"missing")), libc::ENOENT);
    assert_eq!(
        errno(ws.create(ROOT_INO, b"f", node(FileKind::Regular))),
        libc::EEXIST
    );
    assert_eq!(
        errno(ws.create(f, b"x", node(FileKind::Regular))),
        libc::ENOTDIR
    );
    assert_eq!(errno(ws.lookup(f, b"x")), libc::ENOTDIR);
    assert_eq!(
        errno(ws.create(ROOT_INO, &[b'n'; 256], node(FileKind::Regular))),
        libc::ENAMETOOLONG
    );
    ws.create(ROOT_INO, &[b'n'; 255], node(FileKind::Regular))
        .unwrap();
    assert_eq!(errno(ws.unlink(ROOT_INO, b"d")), libc::EISDIR);
    assert_eq!(errno(ws.rmdir(ROOT_INO, b"f")), libc::ENOTDIR);
    assert_eq!(errno(ws.rmdir(ROOT_INO, b"d")), libc::ENOTEMPTY);
    assert_eq!(errno(ws.rmdir(d, b".")), libc::EINVAL);
    assert_eq!(errno(ws.read(d, 0, 10)), libc::EISDIR);
    assert_eq!(errno(ws.write(d, 0, b"x")), libc::EISDIR);
    assert_eq!(errno(ws.link(d, ROOT_INO, b"dlink")), libc::EPERM);
    // Moving a directory into itself or below itself.
    assert_eq!(errno(ws.rename(ROOT_INO, b"d", d, b"d2", 0)), libc::EINVAL);
    assert_eq!(
        errno(ws.rename(ROOT_INO, b"d", sub, b"d2", 0)),
        libc::EINVAL
    );
    assert_eq!(
        errno(ws.rename(ROOT_INO, b"f", ROOT_INO, b"d", 0)),
        libc::EISDIR
    );
    assert_eq!(
        errno(ws.rename(ROOT_INO, b"d", ROOT_INO, b"f", 0)),
        libc::ENOTDIR
    );
    let e = dir(&ws, ROOT_INO, "e");
    assert_eq!(
        errno(ws.rename(ROOT_INO, b"e", d, b"sub", 0)),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno(ws.rename(ROOT_INO, b"f", ROOT_INO, b"e", RENAME_NOREPLACE)),
        libc::EEXIST
    );
    assert_eq!(
        errno(ws.rename(ROOT_INO, b"f", ROOT_INO, b"nope", RENAME_EXCHANGE)),
        libc::ENOENT
    );
    assert_eq!(
        errno(ws.rename(
            ROOT_INO,
            b"f",
            ROOT_INO,
            b"e",
            RENAME_EXCHANGE | RENAME_NOREPLACE
        )),
        libc::EINVAL
    );
    assert_eq!(errno(ws.write(f, (16 << 40) - 1, b"xy")), libc::EFBIG);
    assert_eq!(
        errno(ws.setattr(
            f,
            &SetAttr {
                size: Some((16 << 40) + 1),
                ..Default::default()
            }
        )),
        libc::EFBIG
    );
    assert_eq!(errno(ws.getxattr(f, b"user.none")), libc::ENODATA);
    assert_eq!(errno(ws.removexattr(f, b"user.none")), libc::ENODATA);
    ws.setxattr(f, b"user.a", b"1", 0).unwrap();
    assert_eq!(
        errno(ws.setxattr(f, b"user.a", b"2", libc::XATTR_CREATE)),
        libc::EEXIST
    );
    assert_eq!(
        errno(ws.setxattr(f, b"user.b", b"2", libc::XATTR_REPLACE)),
        libc::ENODATA
    );
    assert_eq!(errno(ws.seek(f, 0, libc::SEEK_DATA)), libc::ENXIO);
    assert_eq!(errno(ws.fallocate(f, 0, 0, 0)), libc::EINVAL);
    assert_eq!(
        errno(ws.fallocate(f, 0, 10, libc::FALLOC_FL_PUNCH_HOLE)),
        libc::EOPNOTSUPP
    );
    // Replacing an empty directory, and exchanging a file with a directory, both work.
    ws.rename(ROOT_INO, b"e", d, b"sub2", 0).unwrap();
    ws.rename(d, b"sub2", d, b"sub", RENAME_EXCHANGE).unwrap();
    assert_eq!(ws.lookup(d, b"sub").unwrap().ino, e);
    assert_eq!(ws.lookup(d, b"sub2").unwrap().ino, sub);
    ws.rename(ROOT_INO, b"f", d, b"sub", RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(ws.lookup(ROOT_INO, b"f").unwrap().kind, FileKind::Directory);
    assert_eq!(ws.lookup(ROOT_INO, b"..").unwrap().ino, ROOT_INO);
    assert_eq!(ws.lookup(ROOT_INO, b"f").unwrap().ino, e);
    assert_eq!(ws.lookup(e, b"..").unwrap().ino, ROOT_INO);
    ws.commit(true).unwrap();
    let report = fsck::check(ws.store()).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

#[test]
fn every_file_type_links_and_times() {
    let (_d, _s, ws) = setup();
    let f = file(&ws, ROOT_INO, "f");
    let l = ws.create(ROOT_INO, b"l", node(FileKind::Symlink)).unwrap();
    assert_eq!((l.kind, l.size), (FileKind::Symlink, 6));
    assert_eq!(ws.readlink(l.ino).unwrap(), b"target");
    for (name, kind, rdev) in [
        ("p", FileKind::Fifo, 0),
        ("s", FileKind::Socket, 0),
        ("c", FileKind::CharDevice, 0x0103),
        ("b", FileKind::BlockDevice, 0x0801),
    ] {
        let a = ws
            .create(ROOT_INO, name.as_bytes(), NewNode { rdev, ..node(kind) })
            .unwrap();
        assert_eq!((a.kind, a.rdev), (kind, rdev));
    }
    let a = ws.link(f, ROOT_INO, b"f2").unwrap();
    assert_eq!(a.nlink, 2);
    ws.write(f, 0, b"hello").unwrap();
    assert_eq!(
        ws.read(ws.lookup(ROOT_INO, b"f2").unwrap().ino, 0, 100)
            .unwrap(),
        b"hello"
    );
    ws.unlink(ROOT_INO, b"f").unwrap();
    assert_eq!(ws.getattr(f).unwrap().nlink, 1);
    let t = chaserfs_engine::Timespec {
        sec: 1_000_000_000,
        nsec: 123_456_789,
    };
    let a: Attr = ws
        .setattr(
            f,
            &SetAttr {
                mode: Some(0o4750),
                uid: Some(7),
                gid: Some(8),
                atime: Some(chaserfs_engine::TimeSet::At(t)),
                mtime: Some(chaserfs_engine::TimeSet::At(t)),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        (a.perm, a.uid, a.gid, a.mtime, a.atime),
        (0o4750, 7, 8, t, t)
    );
    assert!(a.ctime > t);
    // chown alone clears setuid, as Linux does.
    let a = ws
        .setattr(
            f,
            &SetAttr {
                uid: Some(9),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(a.perm, 0o750);
    // setgid directories hand their group down.
    let d = ws
        .create(
            ROOT_INO,
            b"g",
            NewNode {
                perm: 0o2775,
                gid: 55,
                ..node(FileKind::Directory)
            },
        )
        .unwrap();
    let sub = ws
        .create(
            d.ino,
            b"sub",
            NewNode {
                gid: 1,
                ..node(FileKind::Directory)
            },
        )
        .unwrap();
    assert_eq!((sub.gid, sub.perm & 0o2000), (55, 0o2000));
    let st = ws.statfs().unwrap();
    assert!(st.blocks > 0 && st.name_max == 255 && st.files >= 8);
}

#[test]
fn sparse_files_truncate_punch_and_seek() {
    let (_d, store, ws) = setup();
    let f = file(&ws, ROOT_INO, "sparse");
    ws.write(f, 10 * CS + 5, b"tail").unwrap();
    let a = ws.getattr(f).unwrap();
    assert_eq!(a.size, 10 * CS + 9);
    let data = ws.read(f, 0, (11 * CS) as usize).unwrap();
    assert_eq!(data.len() as u64, 10 * CS + 9);
    assert!(data[..(10 * CS + 5) as usize].iter().all(|b| *b == 0));
    assert_eq!(&data[(10 * CS + 5) as usize..], b"tail");
    assert_eq!(ws.seek(f, 0, libc::SEEK_DATA).unwrap(), 10 * CS);
    assert_eq!(ws.seek(f, 0, libc::SEEK_HOLE).unwrap(), 0);
    assert_eq!(
        ws.seek(f, 10 * CS + 1, libc::SEEK_HOLE).unwrap(),
        10 * CS + 9
    );
    ws.commit(true).unwrap();
    let a = ws.getattr(f).unwrap();
    assert_eq!(a.blocks, 1, "only the 9 stored bytes count, not the hole");
    // Holes cost nothing: a 1 GiB sparse file with 3 bytes at its end stores one chunk
    // (sparseness has the chunk's granularity, as a filesystem with 64 KiB blocks).
    let big = file(&ws, ROOT_INO, "big");
    ws.setattr(
        big,
        &SetAttr {
            size: Some(1 << 30),
            ..Default::default()
        },
    )
    .unwrap();
    ws.write(big, (1 << 30) - 3, b"end").unwrap();
    ws.commit(true).unwrap();
    assert_eq!(ws.getattr(big).unwrap().blocks, CS / 512);
    // Truncate down then up leaves zeros, not old data.
    let g = file(&ws, ROOT_INO, "g");
    ws.write(g, 0, &vec![7u8; 3 * CHUNK_SIZE]).unwrap();
    ws.setattr(
        g,
        &SetAttr {
            size: Some(CS + 10),
            ..Default::default()
        },
    )
    .unwrap();
    ws.setattr(
        g,
        &SetAttr {
            size: Some(3 * CS),
            ..Default::default()
        },
    )
    .unwrap();
    let d = ws.read(g, 0, 3 * CHUNK_SIZE).unwrap();
    assert!(d[..(CS + 10) as usize].iter().all(|b| *b == 7));
    assert!(d[(CS + 10) as usize..].iter().all(|b| *b == 0));
    // Punch a hole across a chunk boundary, keep the size.
    ws.write(g, 0, &vec![9u8; 3 * CHUNK_SIZE]).unwrap();
    ws.fallocate(
        g,
        CS - 10,
        CS + 20,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
    )
    .unwrap();
    let d = ws.read(g, 0, 3 * CHUNK_SIZE).unwrap();
    assert_eq!(d.len(), 3 * CHUNK_SIZE);
    for (i, b) in d.iter().enumerate() {
        let hole = (CS - 10..2 * CS + 10).contains(&(i as u64));
        assert_eq!(*b, if hole { 0 } else { 9 }, "byte {i}");
    }
    // fallocate extends the size unless KEEP_SIZE.
    ws.fallocate(g, 0, 5 * CS, 0).unwrap();
    assert_eq!(ws.getattr(g).unwrap().size, 5 * CS);
    ws.fallocate(g, 0, 9 * CS, libc::FALLOC_FL_KEEP_SIZE)
        .unwrap();
    assert_eq!(ws.getattr(g).unwrap().size, 5 * CS);
    ws.commit(true).unwrap();
    assert!(fsck::check(&store).unwrap().is_clean());
}

/// A read into a buffer that held other bytes (the FUSE adapter reuses its replies' buffers)
/// writes every byte it returns: stored chunks, a stored chunk shorter than the span read,
/// holes, and an unsynced buffer shorter than its chunk.
#[test]
fn a_read_into_a_used_buffer_overwrites_every_byte() {
    let (_d, _store, ws) = setup();
    let f = file(&ws, ROOT_INO, "f");
    ws.write(f, 0, &vec![7u8; CHUNK_SIZE]).unwrap();
    ws.write(f, 2 * CS, &[5u8; 100]).unwrap();
    ws.commit(true).unwrap();
    let size = 4 * CS + 50;
    let grow = SetAttr {
        size: Some(size),
        ..Default::default()
    };
    ws.setattr(f, &grow).unwrap();
    ws.write(f, 3 * CS + 10, &[3u8; 20]).unwrap();
    let mut want = vec![0u8; size as usize];
    want[..CHUNK_SIZE].fill(7);
    want[2 * CHUNK_SIZE..2 * CHUNK_SIZE + 100].fill(5);
    want[3 * CHUNK_SIZE + 10..3 * CHUNK_SIZE + 30].fill(3);
    let mut buf = vec![0xAAu8; 8 * CHUNK_SIZE];
    let n = ws.read_into(f, 5, 5 * CHUNK_SIZE, &mut buf).unwrap();
    assert_eq!(n as u64, size - 5, "cut at the file's size");
    assert_eq!(buf.len(), 8 * CHUNK_SIZE, "never shortened");
    assert!(buf[..n] == want[5..], "every byte of the span written");
    assert_eq!(ws.read(f, 5, 5 * CHUNK_SIZE).unwrap(), want[5..]);
    // Past the end: nothing, and the buffer as it was.
    assert_eq!(ws.read_into(f, size, 10, &mut buf).unwrap(), 0);
}

#[test]
fn copy_range_shares_chunks_instead_of_copying() {
    let (_d, store, ws) = setup();
    let src = file(&ws, ROOT_INO, "src");
    let data: Vec<u8> = (0..(8 * CS + 100)).map(|i| (i % 253) as u8).collect();
    ws.write(src, 0, &data).unwrap();
    ws.commit(true).unwrap();
    store.compact().unwrap();
    let before = gc::collect(&store, false).unwrap().live_chunks;
    let dst = file(&ws, ROOT_INO, "dst");
    assert_eq!(
        ws.copy_range(src, 0, dst, 0, 1 << 40).unwrap(),
        data.len() as u64
    );
    assert_eq!(ws.read(dst, 0, data.len() + 10).unwrap(), data);
    // Unaligned copies copy bytes, and still read back right.
    let odd = file(&ws, ROOT_INO, "odd");
    assert_eq!(ws.copy_range(src, 7, odd, 3, 2 * CS).unwrap(), 2 * CS);
    assert_eq!(
        ws.read(odd, 3, 2 * CHUNK_SIZE).unwrap(),
        &data[7..7 + 2 * CHUNK_SIZE]
    );
    ws.commit(true).unwrap();
    let after = gc::collect(&store, false).unwrap().live_chunks;
    // The aligned copy added no chunk; the unaligned one added at most 3.
    assert!(after <= before + 3, "chunks before {before}, after {after}");
}

#[test]
fn readdir_cookies_stay_valid_while_a_large_directory_changes() {
    let (_d, _s, ws) = setup();
    let d = dir(&ws, ROOT_INO, "big");
    const N: usize = 100_000;
    for i in 0..N {
        file(&ws, d, &format!("f{i:06}"));
        if i % 20_000 == 0 {
            ws.commit(false).unwrap();
        }
    }
    ws.commit(false).unwrap();
    // Page through it 1,000 at a time; between pages, delete some entries not yet seen,
    // delete some already seen, and add new ones.
    let mut seen = HashSet::new();
    let mut deleted = HashSet::new();
    let mut offset = 0;
    let mut round = 0;
    loop {
        let mut page = Vec::new();
        ws.readdir(d, offset, |e| {
            page.push(e);
            page.len() < 1000
        })
        .unwrap();
        let Some(last) = page.last() else { break };
        offset = last.offset;
        for e in page {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            assert!(
                seen.insert(e.name.clone()),
                "{:?} listed twice",
                String::from_utf8_lossy(&e.name)
            );
            assert!(!deleted.contains(&e.name), "deleted entry listed");
        }
        round += 1;
        for k in 0..5 {
            let ahead = format!("f{:06}", (round * 997 + k * 131) % N).into_bytes();
            if !seen.contains(&ahead) && deleted.insert(ahead.clone()) {
                ws.unlink(d, &ahead).unwrap();
            }
        }
        if round <= 50 {
            file(&ws, d, &format!("new{round}")); // after every cookie handed out so far
        }
        if round % 10 == 0 {
            ws.commit(false).unwrap();
        }
    }
    for i in 0..N {
        let name = format!("f{i:06}").into_bytes();
        assert!(
            seen.contains(&name) ^ deleted.contains(&name),
            "f{i:06} missed"
        );
    }
    for r in 1..=50 {
        assert!(
            seen.contains(format!("new{r}").as_bytes()),
            "new{r}, added mid-listing, missed"
        );
    }
}

#[test]
fn unlinked_files_live_while_the_kernel_holds_them_even_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let id = Uuid::new_v4();
    {
        let store = Store::open(dir.path()).unwrap();
        roots::create_workspace(&store, id, &[]).unwrap();
        let ws = Workspace::open(store.clone(), id).unwrap();
        let f = file(&ws, ROOT_INO, "f");
        ws.write(f, 0, b"still here").unwrap();
        ws.retain(f);
        ws.unlink(ROOT_INO, b"f").unwrap();
        assert_eq!(ws.read(f, 0, 100).unwrap(), b"still here");
        ws.commit(true).unwrap();
        assert!(fsck::check(&store).unwrap().is_clean());
        // Crash with the file still open: the next open frees it.
    }
    let store = Store::open(dir.path()).unwrap();
    let ws = Workspace::open(store.clone(), id).unwrap();
    assert_eq!(ws.counters().files, 1);
    ws.commit(true).unwrap();
    let g = file(&ws, ROOT_INO, "g");
    // Two kernel references (say, a lookup and a readdirplus entry), forgotten one by one.
    ws.retain(g);
    ws.retain(g);
    ws.unlink(ROOT_INO, b"g").unwrap();
    ws.release(g, 1).unwrap();
    assert!(
        ws.getattr(g).is_ok(),
        "freed while the kernel still held a reference"
    );
    ws.release(g, 1).unwrap();
    assert!(ws.getattr(g).is_err());
    ws.commit(true).unwrap();
    assert_eq!(ws.counters().files, 1);
    assert!(fsck::check(&store).unwrap().is_clean());
}

fn chunk_store_bytes(store: &Store) -> u64 {
    store.compact().unwrap();
    store.disk_usage().unwrap()
}

/// Every byte under the data dir: SST and blob files, WAL, manifest, logs.
fn dir_bytes(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

#[test]
fn identical_data_is_stored_once_and_deleting_everything_frees_it() {
    let (dir, store, ws) = setup();
    let empty = chunk_store_bytes(&store);
    let empty_dir = dir_bytes(dir.path());
    let data = noise(1, 100 << 20);
    let f = file(&ws, ROOT_INO, "data");
    ws.write(f, 0, &data).unwrap();
    let first_id = ws.id();
    ws.close().unwrap();
    let once = chunk_store_bytes(&store);
    let id2 = Uuid::new_v4();
    roots::create_workspace(&store, id2, &[]).unwrap();
    let ws2 = Workspace::open(store.clone(), id2).unwrap();
    let f2 = file(&ws2, ROOT_INO, "copy");
    for piece in data.chunks(1 << 20) {
        let off = ws2.getattr(f2).unwrap().size;
        ws2.write(f2, off, piece).unwrap();
    }
    ws2.close().unwrap();
    let twice = chunk_store_bytes(&store);
    let growth = (twice - once) as f64 / (once - empty) as f64;
    println!(
        "dedup: empty {empty} B, once {once} B, twice {twice} B, growth {:.4}%",
        growth * 100.0
    );
    assert!(
        growth < 0.01,
        "writing the same 100 MiB again grew the store by {:.2}%",
        growth * 100.0
    );
    for id in [first_id, id2] {
        roots::delete(&store, &[RootId::Workspace(id)], &[]).unwrap();
    }
    gc::collect(&store, true).unwrap();
    chunk_store_bytes(&store);
    let after = dir_bytes(dir.path());
    println!("data dir: {empty_dir} B empty, {after} B after deleting everything and GC");
    assert!(
        after <= empty_dir + (10 << 20),
        "{after} bytes left after GC, {empty_dir} when empty"
    );
    drop(store);
    drop(dir);
}

/// Every change from `from` to `to`, read in pages of at most `limit` entries and about
/// `max_bytes` of paths; the same as one page of everything.
fn diff_pages(
    store: &Store,
    from: chaserfs_engine::Hash,
    to: chaserfs_engine::Hash,
    limit: usize,
    max_bytes: usize,
) -> Vec<chaserfs_engine::ops::diff::DiffEntry> {
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page =
            chaserfs_engine::ops::diff::diff(store, &from, &to, cursor.as_ref(), limit, max_bytes)
                .unwrap();
        assert!(!page.entries.is_empty() || page.next.is_none());
        all.extend(page.entries);
        // Cursors travel as text.
        match page.next {
            Some(c) => {
                cursor = Some(chaserfs_engine::ops::diff::Cursor::decode(&c.encode()).unwrap())
            }
            None => return all,
        }
    }
}

fn diff_of(
    store: &Store,
    from: chaserfs_engine::Hash,
    to: chaserfs_engine::Hash,
) -> Vec<(String, char)> {
    let entries = diff_pages(store, from, to, 10_000, usize::MAX);
    // Page by page, one entry at a time, the same list.
    assert_eq!(diff_pages(store, from, to, 1, usize::MAX), entries);
    entries
        .into_iter()
        .map(|e| {
            let c = match e.change {
                chaserfs_engine::ops::diff::Change::Added => '+',
                chaserfs_engine::ops::diff::Change::Removed => '-',
                chaserfs_engine::ops::diff::Change::Modified => 'M',
            };
            (String::from_utf8(e.path).unwrap(), c)
        })
        .collect()
}

/// `diff` names exactly what changed between two states: added, removed, renamed (removed
/// and added), written, chmodded and hard-linked paths, with their parents modified, and
/// nothing else (3,000 untouched files beside them); equal states differ in nothing.
#[test]
fn diff_lists_what_changed_between_two_states() {
    let (_d, store, ws) = setup();
    let src = dir(&ws, ROOT_INO, "src");
    let big = dir(&ws, ROOT_INO, "big");
    for i in 0..3000 {
        let f = file(&ws, big, &format!("f{i}"));
        ws.write(f, 0, format!("file {i}").as_bytes()).unwrap();
    }
    let main = file(&ws, src, "main.rs");
    ws.write(main, 0, b"fn main() {}").unwrap();
    let lib = file(&ws, src, "lib.rs");
    ws.write(lib, 0, b"pub fn f() {}").unwrap();
    let old = file(&ws, ROOT_INO, "old.txt");
    ws.write(old, 0, b"old").unwrap();
    let mode = file(&ws, ROOT_INO, "mode.sh");
    let before = ws.commit(true).unwrap();
    assert!(diff_of(&store, before, before).is_empty());

    ws.write(main, 0, b"fn main() { changed() }").unwrap();
    ws.unlink(ROOT_INO, b"old.txt").unwrap();
    ws.rename(src, b"lib.rs", src, b"lib2.rs", 0).unwrap();
    file(&ws, src, "new.rs");
    dir(&ws, ROOT_INO, "docs");
    ws.link(main, ROOT_INO, b"main-link.rs").unwrap();
    let set = SetAttr {
        mode: Some(0o755),
        ..Default::default()
    };
    ws.setattr(mode, &set).unwrap();
    let after = ws.commit(true).unwrap();

    let want = [
        ("/", 'M'),
        ("/docs", '+'),
        ("/main-link.rs", '+'),
        ("/mode.sh", 'M'),
        ("/old.txt", '-'),
        ("/src", 'M'),
        ("/src/lib.rs", '-'),
        ("/src/lib2.rs", '+'),
        ("/src/main.rs", 'M'),
        ("/src/new.rs", '+'),
    ];
    let got = diff_of(&store, before, after);
    let got: Vec<(&str, char)> = got.iter().map(|(p, c)| (p.as_str(), *c)).collect();
    assert_eq!(got, want);
    // Backwards, additions are removals and the other way round.
    let back = diff_of(&store, after, before);
    assert!(back.contains(&("/old.txt".into(), '+')));
    assert!(back.contains(&("/src/new.rs".into(), '-')));
    assert!(back.contains(&("/src/main.rs".into(), 'M')));
    // Sizes are the newer state's.
    let entries = diff_pages(&store, before, after, 10_000, usize::MAX);
    let main_entry = entries.iter().find(|e| e.path == b"/src/main.rs").unwrap();
    assert_eq!(main_entry.size, b"fn main() { changed() }".len() as u64);
    assert_eq!(main_entry.kind, FileKind::Regular);
    // A limit keeps the first paths and says where to go on.
    let first =
        chaserfs_engine::ops::diff::diff(&store, &before, &after, None, 3, usize::MAX).unwrap();
    assert!(first.next.is_some());
    assert_eq!(first.entries.len(), 3);
    // A cursor aimed elsewhere (at a file, at inode 0) is refused as stale or as not one
    // diff made, never taken for corruption.
    let text = first.next.as_ref().unwrap().encode();
    for at in [main, 0] {
        let forged = format!("{}{at:016x}{}", &text[..18], &text[34..]);
        match chaserfs_engine::ops::diff::Cursor::decode(&forged) {
            None => assert_eq!(at, 0),
            Some(c) => {
                let e = chaserfs_engine::ops::diff::diff(
                    &store,
                    &before,
                    &after,
                    Some(&c),
                    3,
                    usize::MAX,
                );
                assert!(
                    matches!(e, Err(chaserfs_engine::FsError::Invalid(_))),
                    "{e:?}"
                );
            }
        }
    }
    // A cursor is bound to its two states.
    let e = chaserfs_engine::ops::diff::diff(
        &store,
        &after,
        &before,
        first.next.as_ref(),
        3,
        usize::MAX,
    );
    assert!(
        matches!(e, Err(chaserfs_engine::FsError::Invalid(_))),
        "{e:?}"
    );
    // A directory replaced by another of the same name: the old one's contents removed, the
    // new one's added, in path order.
    let other = dir(&ws, ROOT_INO, "other");
    file(&ws, other, "inside");
    ws.rename(ROOT_INO, b"other", ROOT_INO, b"src", 0)
        .unwrap_err();
    for name in ["lib2.rs", "main.rs", "new.rs"] {
        ws.unlink(src, name.as_bytes()).unwrap();
    }
    ws.rename(ROOT_INO, b"other", ROOT_INO, b"src", 0).unwrap();
    let replaced = ws.commit(true).unwrap();
    let got = diff_of(&store, after, replaced);
    let want = [
        ("/", 'M'),
        // Its other name went with the old directory: found though its hint is stale.
        ("/main-link.rs", 'M'),
        ("/src", '-'),
        ("/src", '+'),
        ("/src/inside", '+'),
        ("/src/lib2.rs", '-'),
        ("/src/main.rs", '-'),
        ("/src/new.rs", '-'),
    ];
    let got: Vec<(&str, char)> = got.iter().map(|(p, c)| (p.as_str(), *c)).collect();
    assert_eq!(got, want);

    // A directory moved is one directory: its old name removed, its new one added, and what
    // changed beneath it listed where it is now, not its whole contents twice.
    let docs = ws.lookup(ROOT_INO, b"docs").unwrap().ino;
    let inner = file(&ws, docs, "inner");
    file(&ws, docs, "keep");
    let before_move = ws.commit(true).unwrap();
    let new_src = ws.lookup(ROOT_INO, b"src").unwrap().ino;
    ws.rename(ROOT_INO, b"docs", new_src, b"docs2", 0).unwrap();
    ws.write(inner, 0, b"changed").unwrap();
    let moved = ws.commit(true).unwrap();
    let want = [
        ("/", 'M'),
        ("/docs", '-'),
        ("/src", 'M'),
        ("/src/docs2", '+'),
        ("/src/docs2/inner", 'M'),
    ];
    let got = diff_of(&store, before_move, moved);
    let got: Vec<(&str, char)> = got.iter().map(|(p, c)| (p.as_str(), *c)).collect();
    assert_eq!(got, want);
    let back = diff_of(&store, moved, before_move);
    let back: Vec<(&str, char)> = back.iter().map(|(p, c)| (p.as_str(), *c)).collect();
    assert_eq!(
        back,
        [
            ("/", 'M'),
            ("/docs", '+'),
            ("/docs/inner", 'M'),
            ("/src", 'M'),
            ("/src/docs2", '-'),
        ]
    );
}

/// Depth is not a loop: a file at the bottom of 6,000 nested directories (a chain a session
/// makes with `mkdir d; cd d` in a loop) is named by diff in both directions. A depth guard
/// answered "corrupt store: a directory loop" past 4,096 levels.
#[test]
fn diff_names_paths_at_any_depth() {
    let (_d, store, ws) = setup();
    let before = ws.commit(true).unwrap();
    let mut at = ROOT_INO;
    for _ in 0..6_000 {
        at = dir(&ws, at, "d");
    }
    file(&ws, at, "bottom");
    let after = ws.commit(true).unwrap();
    let want = format!("{}/bottom", "/d".repeat(6_000));
    let added = diff_pages(&store, before, after, 100_000, usize::MAX);
    assert_eq!(added.len(), 6_002, "the root, every directory and the file");
    assert_eq!(added.last().unwrap().path, want.as_bytes());
    // Pages of about 1 MB of paths: each resumes 3,000 levels down from a small cursor.
    let paged = diff_pages(&store, before, after, 100_000, 1 << 20);
    assert_eq!(paged, added);
    let removed = diff_pages(&store, after, before, 100_000, 1 << 20);
    assert!(removed
        .iter()
        .any(|e| e.path == want.as_bytes()
            && e.change == chaserfs_engine::ops::diff::Change::Removed));
}

/// Exports leave sockets out whole (tar has no type for them): no stray PAX header that the
/// next entry would inherit, so the archive imports again. Hard links to a socket too; and a
/// symlink's second name is a hard link, never a copy of its target.
#[test]
fn sockets_are_left_out_of_exports_whole() {
    use chaserfs_engine::ops::archive::{export, import};
    let (_d, store, ws) = setup();
    let sock = ws
        .create(
            ROOT_INO,
            b"a.sock",
            NewNode {
                kind: FileKind::Socket,
                ..node(FileKind::Regular)
            },
        )
        .unwrap()
        .ino;
    ws.link(sock, ROOT_INO, b"b.sock").unwrap();
    let f = file(&ws, ROOT_INO, "z-file");
    ws.write(f, 0, b"after the socket").unwrap();
    let link = ws
        .create(
            ROOT_INO,
            b"sym",
            NewNode {
                kind: FileKind::Symlink,
                target: b"z-file",
                ..node(FileKind::Regular)
            },
        )
        .unwrap()
        .ino;
    ws.link(link, ROOT_INO, b"sym2").unwrap();
    let root = ws.commit(true).unwrap();
    let mut tar = Vec::new();
    let report = export(&Workspace::at_root(store.clone(), root).unwrap(), &mut tar).unwrap();
    assert_eq!(report.skipped, 2, "both names of the socket");
    let id = Uuid::new_v4();
    roots::create_workspace(&store, id, &[]).unwrap();
    let copy = Workspace::open(store.clone(), id).unwrap();
    let opts = import_options();
    import(&copy, &tar[..], &opts).expect("the export imports again");
    assert!(copy.lookup(ROOT_INO, b"a.sock").is_err());
    let f = copy.lookup(ROOT_INO, b"z-file").unwrap();
    assert_eq!(copy.read(f.ino, 0, 100).unwrap(), b"after the socket");
    let s1 = copy.lookup(ROOT_INO, b"sym").unwrap();
    let s2 = copy.lookup(ROOT_INO, b"sym2").unwrap();
    assert_eq!(s1.ino, s2.ino, "one symlink with two names");
    assert_eq!(copy.readlink(s2.ino).unwrap(), b"z-file");
}

/// Defect: the import's bound on an entry's headers was reset only by an entry's data, so
/// the headers of consecutive entries without data (directories, empty files, symlinks)
/// added up, and an archive of a few thousand of them was refused as a "header bomb".
#[test]
fn archives_of_many_entries_without_data_import() {
    use chaserfs_engine::ops::archive::{export, import};
    let (_d, store, ws) = setup();
    // Names past the 100 bytes of a tar header: each entry carries a PAX path record.
    let long = "n".repeat(180);
    for i in 0..4_000 {
        let d = dir(&ws, ROOT_INO, &format!("{long}-dir-{i}"));
        file(&ws, d, &format!("{long}-empty-{i}"));
        ws.create(
            d,
            format!("{long}-link-{i}").as_bytes(),
            NewNode {
                kind: FileKind::Symlink,
                target: b"elsewhere",
                ..node(FileKind::Regular)
            },
        )
        .unwrap();
    }
    let root = ws.commit(true).unwrap();
    let mut tar = Vec::new();
    export(&Workspace::at_root(store.clone(), root).unwrap(), &mut tar).unwrap();
    assert!(tar.len() as u64 > 4 * chaserfs_engine::ops::archive::MAX_HEADER_BYTES);
    let id = Uuid::new_v4();
    roots::create_workspace(&store, id, &[]).unwrap();
    let copy = Workspace::open(store.clone(), id).unwrap();
    let opts = import_options();
    let report = import(&copy, &tar[..], &opts).expect("12,000 entries without data import");
    assert_eq!(report.skipped, 0);
    let d = copy
        .lookup(ROOT_INO, format!("{long}-dir-3999").as_bytes())
        .unwrap();
    copy.lookup(d.ino, format!("{long}-empty-3999").as_bytes())
        .unwrap();
}

/// Defect: the import made a file's missing parents by recursion, one frame per level, and
/// kept every directory's whole path: a file 100,000 levels deep (one tar entry with a 200 KB
/// PAX path, no directory entries) overflowed the stack and took the daemon down.
#[test]
fn an_archive_entry_100000_levels_deep_imports() {
    use chaserfs_engine::ops::archive::import;
    const DEPTH: usize = 100_000;
    let (_d, store, _ws) = setup();
    let mut path = "d/".repeat(DEPTH);
    path.push_str("deep.txt");
    let mut tar = tar::Builder::new(Vec::new());
    tar.append_pax_extensions([("path", path.as_bytes())])
        .unwrap();
    let mut header = tar::Header::new_ustar();
    header.set_path("deep.txt").unwrap();
    header.set_size(5);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    tar.append(&header, &b"deep\n"[..]).unwrap();
    let tar = tar.into_inner().unwrap();
    let id = Uuid::new_v4();
    roots::create_workspace(&store, id, &[]).unwrap();
    let ws = Workspace::open(store.clone(), id).unwrap();
    let opts = import_options();
    // On a thread with a small stack: a walk that recursed per level would not fit.
    std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(move || {
            import(&ws, &tar[..], &opts).expect("a deep entry imports");
            let mut at = ROOT_INO;
            for _ in 0..DEPTH {
                at = ws.lookup(at, b"d").unwrap().ino;
            }
            let f = ws.lookup(at, b"deep.txt").unwrap();
            assert_eq!(ws.read(f.ino, 0, 10).unwrap(), b"deep\n");
        })
        .unwrap()
        .join()
        .unwrap();
}

/// What the daemon imports with by default, with room for any test's archive.
fn import_options() -> chaserfs_engine::ops::archive::ImportOptions {
    chaserfs_engine::ops::archive::ImportOptions {
        commit_every: 1 << 30,
        max_bytes: 1 << 30,
        setid: false,
        devices: false,
        privileged_xattrs: false,
    }
}
