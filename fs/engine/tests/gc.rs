//! Garbage collection racing live writers: collections run back to back while other threads
//! write, spill, share chunks, commit, clone and snapshot. Nothing reachable may be deleted.
//! Protects against the worst bug a store like this can have: a GC that deletes live data.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chaserfs_engine::format::keys::ROOT_INO;
use chaserfs_engine::format::CHUNK_SIZE;
use chaserfs_engine::ops::{fsck, gc};
use chaserfs_engine::{roots, RootId, Store, Workspace};
use common::{noise, regular_file};
use uuid::Uuid;

#[test]
fn collections_racing_writers_delete_nothing_live() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2u64 {
        let (store, stop) = (store.clone(), stop.clone());
        writers.push(std::thread::spawn(move || {
            let id = Uuid::from_u128(w as u128 + 1);
            roots::create_workspace(&store, id, &[]).unwrap();
            let ws = Workspace::open(store.clone(), id).unwrap();
            let mut expected = Vec::new();
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) || round < 20 {
                round += 1;
                let name = format!("f{}", round % 7);
                let attr = match ws.lookup(ROOT_INO, name.as_bytes()) {
                    Ok(a) => a,
                    Err(_) => ws
                        .create(ROOT_INO, name.as_bytes(), regular_file())
                        .unwrap(),
                };
                // Large enough now and then to spill chunks before the commit; the same seed
                // recurs, so writes often dedup against chunks the GC is deciding about.
                let len = if round.is_multiple_of(5) {
                    20 << 20
                } else {
                    3 * CHUNK_SIZE + 17
                };
                let bytes = noise(round % 11, len);
                ws.setattr(
                    attr.ino,
                    &chaserfs_engine::SetAttr {
                        size: Some(0),
                        ..Default::default()
                    },
                )
                .unwrap();
                ws.write(attr.ino, 0, &bytes).unwrap();
                // A shared copy, then drop the source's old version.
                let copy = ws
                    .create(ROOT_INO, format!("c{round}").as_bytes(), regular_file())
                    .unwrap();
                ws.copy_range(attr.ino, 0, copy.ino, 0, bytes.len() as u64)
                    .unwrap();
                expected.retain(|(n, _): &(String, Vec<u8>)| *n != name);
                expected.push((name, bytes.clone()));
                expected.push((format!("c{round}"), bytes));
                if round.is_multiple_of(3) {
                    ws.unlink(ROOT_INO, format!("c{round}").as_bytes()).unwrap();
                    expected.pop();
                }
                ws.commit(round.is_multiple_of(2)).unwrap();
                if round.is_multiple_of(4) {
                    let snap = Uuid::new_v4();
                    roots::snapshot(&store, id, snap, &[]).unwrap();
                    roots::delete(&store, &[RootId::Snapshot(snap)], &[]).unwrap();
                }
            }
            (ws, expected)
        }));
    }
    let mut runs = 0;
    let mut deleted = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(8);
    while std::time::Instant::now() < deadline {
        let report = gc::collect(&store, runs % 5 == 4).unwrap();
        deleted += report.deleted_chunks + report.deleted_nodes;
        runs += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let (ws, expected) = w.join().unwrap();
        let report = gc::collect(&store, false).unwrap();
        deleted += report.deleted_chunks + report.deleted_nodes;
        store.nodes_cache_clear();
        for (name, bytes) in expected {
            let a = ws.lookup(ROOT_INO, name.as_bytes()).unwrap();
            assert!(
                ws.read(a.ino, 0, bytes.len() + 1).unwrap() == bytes,
                "{name} changed under the GC"
            );
        }
    }
    let report = fsck::check(&store).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    // And it collected: overwritten versions, unlinked copies and deleted snapshots left
    // garbage, all of it gone once the writers are done (a last collection finds none).
    let last = gc::collect(&store, false).unwrap();
    println!("gc race: {runs} collections while writing deleted {deleted} objects; fsck clean");
    assert!(runs >= 5);
    assert!(deleted > 0, "collections racing writers deleted nothing");
    assert_eq!(
        (last.deleted_chunks, last.deleted_nodes),
        (0, 0),
        "garbage was left behind: {last:?}"
    );
}
