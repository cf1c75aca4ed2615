//! Spills outside the workspace lock: two writers stream files past the overlay's pending
//! limit (so each write that seals the limit's worth stores those chunks after releasing the
//! lock), while a third thread commits and reads back what is already written, and a fourth
//! collects garbage. Every read must see the bytes written, and after a durable commit and a
//! reopen with cold caches both files must be whole and fsck clean. Guards the hand-off
//! between `pending`, the spill in flight and a commit that takes the chunks meanwhile.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use chaserfs_engine::format::keys::ROOT_INO;
use chaserfs_engine::ops::{fsck, gc};
use chaserfs_engine::{roots, FsError, Store, Workspace};
use common::{noise, regular_file};
use uuid::Uuid;

const WS: Uuid = Uuid::from_u128(7);
const MIB: usize = 1 << 20;
/// Per file: three times the pending limit (16 MiB).
const FILE_MIB: usize = 48;

fn create(ws: &Workspace, name: &str) -> u64 {
    ws.create(ROOT_INO, name.as_bytes(), regular_file())
        .unwrap()
        .ino
}

#[test]
fn spilled_chunks_stay_readable_and_reach_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    roots::create_workspace(&store, WS, &[]).unwrap();
    let ws = Arc::new(Workspace::open(store.clone(), WS).unwrap());
    let files: Vec<(u64, Arc<Vec<u8>>)> = (0..2u64)
        .map(|i| {
            (
                create(&ws, &format!("f{i}")),
                Arc::new(noise(i + 1, FILE_MIB * MIB)),
            )
        })
        .collect();
    // How many MiB of each file are written so far.
    let progress: Arc<Vec<AtomicU64>> = Arc::new((0..2).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));

    let writers: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(i, (ino, data))| {
            let (ws, data, progress, ino) = (ws.clone(), data.clone(), progress.clone(), *ino);
            std::thread::spawn(move || {
                for m in 0..FILE_MIB {
                    let at = m * MIB;
                    ws.write(ino, at as u64, &data[at..at + MIB]).unwrap();
                    progress[i].store(m as u64 + 1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let checker = {
        let (ws, files, progress, done) =
            (ws.clone(), files.clone(), progress.clone(), done.clone());
        std::thread::spawn(move || {
            let mut round = 0u64;
            while !done.load(Ordering::SeqCst) {
                round += 1;
                ws.commit(round.is_multiple_of(4)).unwrap();
                for (i, (ino, data)) in files.iter().enumerate() {
                    let written = progress[i].load(Ordering::SeqCst) as usize;
                    if written == 0 {
                        continue;
                    }
                    let m = (round as usize * 7 + i) % written;
                    let got = ws.read(*ino, (m * MIB) as u64, MIB).unwrap();
                    assert!(
                        got == data[m * MIB..(m + 1) * MIB],
                        "file {i}, MiB {m}, round {round}"
                    );
                }
            }
            round
        })
    };
    let collector = {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                match gc::collect(&store, false) {
                    Ok(_) | Err(FsError::Busy(_)) => {}
                    Err(e) => panic!("gc: {e}"),
                }
            }
        })
    };
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let rounds = checker.join().unwrap();
    collector.join().unwrap();
    assert!(rounds > 1, "the checker committed only {rounds} time(s)");

    ws.commit(true).unwrap();
    drop(ws);
    gc::collect(&store, true).unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let report = fsck::check(&store).unwrap();
    assert!(report.is_clean(), "fsck: {:?}", report.problems);
    let ws = Workspace::open(store, WS).unwrap();
    for (i, (ino, data)) in files.iter().enumerate() {
        assert_eq!(ws.getattr(*ino).unwrap().size, data.len() as u64);
        let got = ws.read(*ino, 0, data.len()).unwrap();
        assert!(got == **data, "file {i} differs after reopen");
    }
}
