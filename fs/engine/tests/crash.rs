//! Crash test: a child process commits heavily (with clones, snapshots, deletes and GC runs
//! mixed in, commits over 1 MiB whose chunks are written without the WAL, overlays large
//! enough to spill chunks before their commit, and a thread that collects and compacts all
//! the while) and is killed with SIGKILL at random moments, many times. After each kill the
//! store must reopen with every workspace at a committed state, nothing that was fsynced
//! lost, and fsck clean. Protects the commit order, the chunk flushes and the GC against torn
//! writes. (SIGKILL keeps the page cache, so this proves what RocksDB's memtables lose; the
//! power-cut test in tests/powercut.rs proves what reaches the disk.)

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use chaserfs_engine::format::keys::ROOT_INO;
use chaserfs_engine::ops::{fsck, gc};
use chaserfs_engine::{roots, RootId, SetAttr, Store, Workspace};
use common::{noise, regular_file};
use uuid::Uuid;

const MAIN: Uuid = Uuid::from_u128(1);
const FILES: u64 = 10;

/// What file `i` holds once generation `g` wrote it: 0..300 KiB of a pattern of `g`.
fn content(g: u64) -> Vec<u8> {
    let len = (g * 7919) % (300 * 1024);
    (0..len).map(|j| ((j / 4096) as u8) ^ (g as u8)).collect()
}

/// `big` is rewritten every generation with 1.2 MiB (a commit over 1 MiB: unlogged chunks).
fn big(g: u64) -> Vec<u8> {
    noise(g, 1_200_000 + (g as usize % 7) * 10_000)
}

/// `huge` is rewritten every fifth generation with 17 MiB, past the overlay's pending limit,
/// so chunks spill to the store before the commit that refers to them.
fn huge(g: u64) -> Vec<u8> {
    noise(g, 17 << 20)
}

fn read_all(ws: &Workspace, ino: u64) -> Vec<u8> {
    ws.read(ino, 0, 1 << 30).unwrap()
}

fn lookup(ws: &Workspace, name: &str) -> Option<u64> {
    ws.lookup(ROOT_INO, name.as_bytes()).ok().map(|a| a.ino)
}

fn generation(ws: &Workspace) -> u64 {
    lookup(ws, "gen").map_or(0, |ino| {
        String::from_utf8(read_all(ws, ino))
            .unwrap()
            .parse()
            .unwrap()
    })
}

fn put_file(ws: &Workspace, name: &str, data: &[u8]) {
    let ino = match lookup(ws, name) {
        Some(ino) => ino,
        None => {
            ws.create(ROOT_INO, name.as_bytes(), regular_file())
                .unwrap()
                .ino
        }
    };
    ws.setattr(
        ino,
        &SetAttr {
            size: Some(0),
            ..Default::default()
        },
    )
    .unwrap();
    ws.write(ino, 0, data).unwrap();
}

/// Runs in the child: commits generation after generation until killed.
fn child(dir: &Path) {
    let store = Store::open(dir).unwrap();
    if store.get_root(RootId::Workspace(MAIN)).unwrap().is_none() {
        roots::create_workspace(&store, MAIN, &[]).unwrap();
    }
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("synced.log"))
        .unwrap();
    // End any line a kill left unfinished (an empty line parses as nothing).
    log.write_all(b"\n").unwrap();
    // Collections with compaction run all the time, racing every commit's chunk flush.
    let collector = store.clone();
    std::thread::spawn(move || loop {
        match gc::collect(&collector, true) {
            Ok(_) | Err(chaserfs_engine::FsError::Busy(_)) => {}
            Err(e) => panic!("gc: {e}"),
        }
        std::thread::sleep(Duration::from_millis(5));
    });
    let mut ws = Workspace::open(store.clone(), MAIN).unwrap();
    let mut g = generation(&ws);
    loop {
        g += 1;
        put_file(&ws, &format!("f{}", g % FILES), &content(g));
        put_file(&ws, "big", &big(g));
        if g.is_multiple_of(5) {
            put_file(&ws, "huge", &huge(g));
        }
        put_file(&ws, "gen", g.to_string().as_bytes());
        let sync = g.is_multiple_of(3);
        ws.commit(sync).unwrap();
        if sync {
            // One write(2) per line: `writeln!` may split the number and the newline, and a kill
            // between them would glue this number to the next run's.
            log.write_all(format!("{g}\n").as_bytes()).unwrap();
            log.sync_all().unwrap();
        }
        let side = Uuid::from_u128(1000 + g as u128);
        match g % 10 {
            4 => {
                roots::snapshot(&store, MAIN, side, &[]).unwrap();
            }
            6 => {
                roots::clone_workspace(&store, MAIN, side, &[]).unwrap();
            }
            8 => {
                // Drop older clones and snapshots, then collect, while the main workspace is open.
                for (id, _) in store.list_roots().unwrap() {
                    if id != RootId::Workspace(MAIN) {
                        roots::delete(&store, &[id], &[]).unwrap();
                    }
                }
                match gc::collect(&store, false) {
                    Ok(_) | Err(chaserfs_engine::FsError::Busy(_)) => {}
                    Err(e) => panic!("gc: {e}"),
                }
            }
            9 => {
                // Reopen the workspace now and then, as a new session would.
                drop(ws);
                ws = Workspace::open(store.clone(), MAIN).unwrap();
            }
            _ => {}
        }
    }
}

#[test]
#[ignore = "runs only as the crash test's child process"]
fn crash_child() {
    let dir = std::env::var("CHASERFS_CRASH_DIR")
        .expect("crash_child runs only under killed_writers_leave_committed_states");
    child(Path::new(&dir));
}

fn verify(dir: &Path, round: usize) -> u64 {
    let store = Store::open(dir).unwrap();
    let report = fsck::check(&store).unwrap();
    assert!(
        report.is_clean(),
        "round {round}: fsck: {:?}",
        report.problems
    );
    if store.get_root(RootId::Workspace(MAIN)).unwrap().is_none() {
        return 0; // killed before the first workspace was created
    }
    let synced = std::fs::read_to_string(dir.join("synced.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    let ws = Workspace::open(store.clone(), MAIN).unwrap();
    let g = generation(&ws);
    assert!(
        g >= synced,
        "round {round}: at generation {g}, but {synced} was fsynced"
    );
    for i in 0..FILES {
        let last = (1..=g).rev().find(|x| x % FILES == i);
        match (last, lookup(&ws, &format!("f{i}"))) {
            (None, None) => {}
            (Some(w), Some(ino)) => assert!(
                read_all(&ws, ino) == content(w),
                "round {round}: f{i} is not generation {w}'s"
            ),
            (want, got) => panic!("round {round}: f{i}: expected {want:?}, found {got:?}"),
        }
    }
    let last_huge = (1..=g).rev().find(|x| x % 5 == 0);
    for (name, want) in [
        ("big", (g > 0).then(|| big(g))),
        ("huge", last_huge.map(huge)),
    ] {
        match (want, lookup(&ws, name)) {
            (None, None) => {}
            (Some(want), Some(ino)) => assert!(
                read_all(&ws, ino) == want,
                "round {round}: {name} does not hold its last committed bytes (generation {g})"
            ),
            (want, got) => panic!(
                "round {round}: {name}: expected {:?} bytes, found inode {got:?}",
                want.map(|w| w.len())
            ),
        }
    }
    // Every clone and snapshot is a committed state too.
    for (id, rec) in store.list_roots().unwrap() {
        if let RootId::Workspace(side) = id {
            if side != MAIN {
                let w = Workspace::open(store.clone(), side).unwrap();
                let sg = generation(&w);
                assert!(
                    sg <= g && rec.generation > 0,
                    "round {round}: clone at generation {sg}"
                );
            }
        }
    }
    g
}

#[test]
fn killed_writers_leave_committed_states() {
    let rounds: usize = std::env::var("CHASERFS_CRASH_ROUNDS").map_or(25, |s| s.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut last = 0;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--ignored", "--nocapture"])
            .env("CHASERFS_CRASH_DIR", dir.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let delay = 150 + rand::random::<u64>() % 600;
        std::thread::sleep(Duration::from_millis(delay));
        if let Some(status) = child.try_wait().unwrap() {
            panic!("round {round}: the child exited by itself: {status}");
        }
        // SIGKILL: no destructors, no flushes.
        child.kill().unwrap();
        child.wait().unwrap();
        let g = verify(dir.path(), round);
        assert!(
            g >= last,
            "round {round}: went back from generation {last} to {g}"
        );
        last = g;
    }
    assert!(
        last > rounds as u64,
        "the child made too little progress to test anything: {last}"
    );
    println!("crash test: {rounds} kills, reached generation {last}");
}
