//! Durability against the real daemon: a commit far larger than the node cache, and what a
//! session keeps when its final commit fails. Protects "fsync means durable" for big sessions.

mod common;

use std::path::Path;

use common::{noise, Daemon, Options};

const DIRS: usize = 300;
const PER_DIR: usize = 1000;

fn file_text(d: usize, f: usize) -> String {
    format!("file {f} of dir {d}\n")
}

/// Writes DIRS x PER_DIR small files with two threads.
fn write_tree(root: &Path) {
    std::thread::scope(|s| {
        for half in 0..2 {
            s.spawn(move || {
                for d in (half..DIRS).step_by(2) {
                    let dir = root.join(format!("d{d}"));
                    std::fs::create_dir(&dir).unwrap();
                    for f in 0..PER_DIR {
                        std::fs::write(dir.join(format!("f{f}")), file_text(d, f)).unwrap();
                    }
                }
            });
        }
    });
}

fn check_tree(root: &Path) {
    std::thread::scope(|s| {
        for half in 0..2 {
            s.spawn(move || {
                for d in (half..DIRS).step_by(2) {
                    let dir = root.join(format!("d{d}"));
                    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), PER_DIR, "d{d}");
                    for f in 0..PER_DIR {
                        let got = std::fs::read_to_string(dir.join(format!("f{f}"))).unwrap();
                        assert_eq!(got, file_text(d, f));
                    }
                }
            });
        }
    });
}

/// 300,000 new files in one commit: the commit builds ~100 MB of tree nodes, more than the
/// node cache holds, and must still write every one of them.
#[test]
fn three_hundred_thousand_files_commit_at_once_and_read_back_after_a_remount() {
    let mut d = Daemon::start_with(Options {
        args: vec!["--commit-interval".into(), "3600".into()],
        ..Options::default()
    });
    d.create_workspace("many");
    let (_, mnt) = d.mount("many", "m");
    write_tree(&mnt);
    // One fsync commits the whole workspace.
    let f = std::fs::File::open(mnt.join("d0/f0")).unwrap();
    f.sync_all()
        .unwrap_or_else(|e| panic!("fsync: {e}\n{}", d.log()));
    drop(f);
    // No unmount, no final commit: what the fsync made durable is all there is.
    d.kill();
    d.restart();
    let (_, w) = d.call("GET", "/v1/workspaces/many", None);
    assert_eq!(
        w["persistence"]["files"],
        (DIRS * PER_DIR + DIRS + 1) as u64,
        "{w}"
    );
    let (sid, mnt) = d.mount("many", "m2");
    check_tree(&mnt);
    d.unmount(&sid);
}

/// `rm -rf` inside a live session frees its space without any workspace being deleted: the
/// collector notices the dead data commits leave behind.
#[test]
fn space_from_files_deleted_in_a_live_session_returns_to_the_disk() {
    let d = Daemon::start();
    d.create_workspace("churn");
    let (sid, mnt) = d.mount("churn", "c");
    let empty = d.data_bytes();
    std::fs::create_dir(mnt.join("node_modules")).unwrap();
    for i in 0..16 {
        let f = mnt.join(format!("node_modules/blob{i}"));
        std::fs::write(&f, noise(i, 64 << 20)).unwrap();
    }
    std::fs::File::open(mnt.join("node_modules/blob0"))
        .unwrap()
        .sync_all()
        .unwrap();
    let full = d.data_bytes();
    assert!(
        full > empty + (900 << 20),
        "1 GiB written, data dir {empty} -> {full} bytes"
    );
    std::fs::remove_dir_all(mnt.join("node_modules")).unwrap();
    // The periodic commit (1 s here) records the delete; the collector takes it from there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let now = d.data_bytes();
        if now < empty + (100 << 20) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "data dir still {now} bytes (empty {empty}, full {full}) 90 s after the delete\n{}",
            d.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    // The collector logs once it is done, after the compaction that returned the space.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !d.log().contains("gc (dead data") {
        assert!(std::time::Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    d.unmount(&sid);
}

/// An fsync the daemon journaled (no commit) survives SIGKILL: after the restart it is in the
/// workspace, and in a clone of it, since the daemon commits what the journal holds before it
/// serves anything.
#[test]
fn fsyncs_journaled_before_a_kill_are_in_the_restarted_workspace_and_its_clones() {
    let mut d = Daemon::start_with(Options {
        // No periodic commit during the test: the fsyncs alone make the data durable.
        args: vec!["--commit-interval".into(), "3600".into()],
        ..Options::default()
    });
    d.create_workspace("j");
    let (_, mnt) = d.mount("j", "j");
    let first = common::noise(1, 100_000);
    common::write_synced(&mnt.join("a"), &first).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("a"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"patched", 70_000).unwrap();
    f.sync_data().unwrap();
    std::io::Write::write_all(&mut f, b"never synced").unwrap();
    let metrics = d.metrics();
    let journaled: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("chaserfs_fsyncs_journaled_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(journaled >= 2.0, "{journaled} fsyncs journaled:\n{metrics}");
    d.kill();
    drop(f);
    d.restart();
    assert!(
        d.log()
            .contains("committed the fsync journal a previous run left for 1 workspaces"),
        "{}",
        d.log()
    );
    let mut want = first.clone();
    want[70_000..70_007].copy_from_slice(b"patched");
    let (s, v) = d.call(
        "POST",
        "/v1/workspaces",
        Some(serde_json::json!({"clone_from": "j", "name": "j2"})),
    );
    assert_eq!(s, 201, "{v}");
    for name in ["j", "j2"] {
        let (_, m) = d.mount(name, &format!("{name}-after"));
        assert!(std::fs::read(m.join("a")).unwrap() == want, "{name}/a");
    }
}
