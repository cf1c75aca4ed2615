//! A full data-dir disk, on a 1 GiB loop-mounted ext4: writes answer ENOSPC (never EIO, never a
//! hang), fsynced data stays intact, the daemon stays healthy, deletes still work and give the
//! space back, writes work again without a restart, and fsck is clean after it. And a session
//! whose final commit meets a full disk keeps its changes until a retry can commit them.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{checksum, fill_until_error, noise, Daemon, LoopDisk, Options};

/// Writes and fsyncs a file; the error if any.
fn try_write(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[test]
fn a_full_disk_answers_enospc_and_recovers_without_a_restart() {
    let disk = LoopDisk::new("1G");
    let mut d = Daemon::start_with(Options {
        data_dir: Some(disk.path().join("data")),
        ..Options::default()
    });
    d.create_workspace("keep");
    d.create_workspace("filler");
    let (keep_sid, keep) = d.mount("keep", "keep");
    try_write(&keep.join("kept.bin"), &noise(1, 100 << 20)).unwrap();
    let kept = checksum(&keep.join("kept.bin"));
    let (s, _) = d.call(
        "POST",
        "/v1/workspaces/filler/snapshots",
        Some(serde_json::json!({"name": "before"})),
    );
    assert_eq!(s, 201);
    let (filler_sid, filler) = d.mount("filler", "filler");

    // Fill the disk through a session: the answer is ENOSPC, not EIO, and it comes.
    let started = Instant::now();
    let e = fill_until_error(&filler.join("fill.bin"));
    assert_eq!(
        e.raw_os_error(),
        Some(libc::ENOSPC),
        "filling the disk answered {e}\n{}",
        d.log()
    );
    assert!(started.elapsed() < Duration::from_secs(120));
    // Another workspace's writer meets the same wall.
    let e = fill_until_error(&keep.join("more.bin"));
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");

    // The daemon is healthy, the API works, fsynced data is intact.
    let (s, _) = d.call("GET", "/healthz", None);
    assert_eq!(s, 200);
    let (s, v) = d.call("GET", "/v1/workspaces/keep", None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(checksum(&keep.join("kept.bin")), kept);

    // Deleting files frees the space (the collector runs on dead data), and writes work again
    // without a restart.
    std::fs::remove_file(filler.join("fill.bin")).unwrap();
    let _ = std::fs::remove_file(keep.join("more.bin")); // its create may have failed
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match try_write(&keep.join("after.bin"), &noise(3, 32 << 20)) {
            Ok(()) => break,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                assert!(
                    Instant::now() < deadline,
                    "writes still fail 90 s after the delete (avail {} bytes)\n{}",
                    disk.avail(),
                    d.log()
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    assert_eq!(checksum(&keep.join("kept.bin")), kept);

    // Fill again, then end the sessions and delete a workspace with its snapshot: all work
    // on a full disk, and the space comes back.
    let e = fill_until_error(&filler.join("fill2.bin"));
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    d.unmount(&filler_sid);
    d.unmount(&keep_sid);
    let (s, v) = d.call("DELETE", "/v1/workspaces/filler", None);
    assert_eq!(s, 204, "{v}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while disk.avail() < 600 << 20 {
        assert!(
            Instant::now() < deadline,
            "space not back after deleting the workspace: {} bytes free\n{}",
            disk.avail(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // After a restart: fsck clean, the kept files intact.
    assert_eq!(d.stop(), 0);
    common::fsck(&d.data_dir()).unwrap();
    d.restart();
    let (sid, keep) = d.mount("keep", "keep2");
    assert_eq!(checksum(&keep.join("kept.bin")), kept);
    assert_eq!(
        std::fs::read(keep.join("after.bin")).unwrap(),
        noise(3, 32 << 20)
    );
    d.unmount(&sid);
}

/// Defect: a session whose final commit failed dropped its changes. Now they stay in memory,
/// the session says `commit_failed`, and ending it again once there is space commits them.
#[test]
fn a_failed_final_commit_keeps_the_changes_until_a_retry_commits_them() {
    let disk = LoopDisk::new("1G");
    let mut d = Daemon::start_with(Options {
        data_dir: Some(disk.path().join("data")),
        // No periodic commit: the changes stay in the session's overlay until it ends.
        args: vec!["--commit-interval".into(), "3600".into()],
        ..Options::default()
    });
    d.create_workspace("w");
    let (sid, mnt) = d.mount("w", "w");
    let data = noise(9, 40 << 20);
    // Closing the file hands the kernel's cached pages to the daemon.
    std::fs::write(mnt.join("unsynced.bin"), &data).unwrap();
    // Someone else fills the disk.
    let ballast = disk.fill_leaving(512 << 10);
    let (s, v) = d.call("DELETE", &format!("/v1/sessions/{sid}"), None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (507, Some("commit_failed")),
        "{v}"
    );
    let (_, sess) = d.call("GET", &format!("/v1/sessions/{sid}"), None);
    assert_eq!(sess["status"], "commit_failed", "{sess}");
    assert!(sess["commit_error"].as_str().is_some(), "{sess}");
    assert!(!common::is_mounted(&mnt));
    // The workspace stays with its session: nothing may move its root meanwhile.
    let (_, w) = d.call("GET", "/v1/workspaces/w", None);
    assert_eq!(w["active_session_id"], sid.as_str(), "{w}");
    let (s, _) = d.call(
        "POST",
        "/v1/workspaces",
        Some(serde_json::json!({"clone_from": "w"})),
    );
    assert_eq!(s, 409);

    std::fs::remove_file(&ballast).unwrap();
    let (s, v) = d.call("DELETE", &format!("/v1/sessions/{sid}"), None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "ended");
    assert_eq!(v["commit_error"], serde_json::Value::Null);
    // Durable: even a SIGKILL now keeps them.
    d.kill();
    d.restart();
    let (sid, mnt) = d.mount("w", "w2");
    assert!(std::fs::read(mnt.join("unsynced.bin")).unwrap() == data);
    d.unmount(&sid);
}

/// Defect: SIGTERM with a final commit failing (a full disk) logged "uncommitted changes are
/// lost" and exited 0. Now the daemon stays until it can commit them, then exits 0 with every
/// written byte kept.
#[test]
fn a_shutdown_on_a_full_disk_waits_until_the_changes_are_committed() {
    let disk = LoopDisk::new("1G");
    let mut d = Daemon::start_with(Options {
        data_dir: Some(disk.path().join("data")),
        args: vec!["--commit-interval".into(), "3600".into()],
        ..Options::default()
    });
    d.create_workspace("w");
    let (_sid, mnt) = d.mount("w", "w");
    let synced = noise(10, 8 << 20);
    try_write(&mnt.join("synced.bin"), &synced).unwrap();
    let written = noise(11, 40 << 20);
    std::fs::write(mnt.join("written.bin"), &written).unwrap();
    let ballast = disk.fill_leaving(512 << 10);
    d.terminate();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        d.exited(),
        None,
        "exited with uncommitted changes:\n{}",
        d.log()
    );
    std::fs::remove_file(&ballast).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(code) = d.exited() {
            break code;
        }
        assert!(
            Instant::now() < deadline,
            "did not stop once there was space\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code, 0, "{}", d.log());
    d.restart();
    let (sid, mnt) = d.mount("w", "w2");
    assert!(std::fs::read(mnt.join("synced.bin")).unwrap() == synced);
    assert!(std::fs::read(mnt.join("written.bin")).unwrap() == written);
    d.unmount(&sid);
}
