//! Sessions against the real daemon: mounting over HTTP, the mountpoint rules, one session per
//! workspace, persistence across sessions and restarts, SIGTERM, and a SIGKILL while a writer
//! fsyncs. Protects the data plane's promises to a session.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{checksum, is_mounted, Daemon};
use serde_json::json;

#[test]
fn a_session_mounts_and_its_files_persist_across_sessions_and_restarts() {
    let mut d = Daemon::start();
    d.create_workspace("proj");
    let (sid, mnt) = d.mount("proj", "a");
    assert!(is_mounted(&mnt));
    let (_, w) = d.call("GET", "/v1/workspaces/proj", None);
    assert_eq!(w["active_session_id"], sid.as_str());
    let (s, _) = d.call("GET", &format!("/v1/sessions/{sid}"), None);
    assert_eq!(s, 200);
    std::fs::create_dir_all(mnt.join("dir/sub")).unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(mnt.join("dir/sub/big.bin"), &big).unwrap();
    std::fs::write(mnt.join("small.txt"), b"hello").unwrap();
    std::os::unix::fs::symlink("small.txt", mnt.join("link")).unwrap();
    let sum = checksum(&mnt.join("dir/sub/big.bin"));
    d.unmount(&sid);
    assert!(!is_mounted(&mnt));
    let (_, w) = d.call("GET", "/v1/workspaces/proj", None);
    assert_eq!(w["active_session_id"], serde_json::Value::Null);
    assert_eq!(w["last_session_id"], sid.as_str());

    assert_eq!(d.stop(), 0);
    d.restart();
    let (sid2, mnt2) = d.mount("proj", "b");
    assert_eq!(checksum(&mnt2.join("dir/sub/big.bin")), sum);
    assert_eq!(std::fs::read(mnt2.join("small.txt")).unwrap(), b"hello");
    assert_eq!(
        std::fs::read_link(mnt2.join("link")).unwrap().to_str(),
        Some("small.txt")
    );
    d.unmount(&sid2);
}

/// The times a writer's `stat` showed are the times every later session shows, to the
/// nanosecond: git's index records them, and a mismatch makes `git status` read every file
/// again (on a cold cluster host, from the object store). The kernel keeps a written file's
/// mtime and ctime itself on these mounts (writeback cache) and sends both when it flushes.
#[test]
fn a_later_session_shows_the_times_the_writer_saw() {
    use std::os::unix::fs::MetadataExt;
    let times = |path: &std::path::Path| {
        let m = std::fs::metadata(path).unwrap();
        (
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
            m.len(),
        )
    };
    let d = Daemon::start();
    d.create_workspace("times");
    let (sid, mnt) = d.mount("times", "a");
    let mut seen = Vec::new();
    for i in 0..20 {
        let path = mnt.join(format!("f{i}"));
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&vec![i as u8; 1000 * (i + 1)]).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        f.write_all(b"more").unwrap();
        f.sync_all().unwrap();
        drop(f);
        seen.push(times(&path));
    }
    d.unmount(&sid);
    let (sid, mnt) = d.mount("times", "b");
    for (i, want) in seen.iter().enumerate() {
        let got = times(&mnt.join(format!("f{i}")));
        assert_eq!(
            &got, want,
            "f{i}: (mtime, ctime, size) now vs as its writer saw them"
        );
    }
    d.unmount(&sid);
}

#[test]
fn mountpoints_are_checked_and_a_workspace_has_one_session() {
    let d = Daemon::start();
    d.create_workspace("w");
    d.create_workspace("other");
    let try_mount = |ws: &str, path: &str| {
        d.call(
            "POST",
            "/v1/sessions",
            Some(json!({"workspace": ws, "mountpoint": path})),
        )
    };
    for (path, code) in [
        ("/etc", "mountpoint_not_allowed"),
        ("/usr/lib", "mountpoint_not_allowed"),
        ("relative/path", "invalid_mountpoint"),
    ] {
        let (s, v) = try_mount("w", path);
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some(code)),
            "{path}: {v}"
        );
    }
    let escape = format!("{}/x/../../etc", d.mount_root().display());
    assert_eq!(try_mount("w", &escape).0, 400);
    let full = d.mount_root().join("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("f"), b"x").unwrap();
    let (s, v) = try_mount("w", full.to_str().unwrap());
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("mountpoint_not_empty"))
    );
    let (s, v) = try_mount("nope", d.mount_root().join("n").to_str().unwrap());
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("workspace_not_found"))
    );

    let (sid, mnt) = d.mount("w", "one");
    let (s, v) = try_mount("w", d.mount_root().join("two").to_str().unwrap());
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("session_active"))
    );
    let (s, v) = try_mount("other", mnt.to_str().unwrap());
    assert_eq!(s, 409, "mounting over a live mount: {v}");
    // Errors leave everything as it was.
    assert!(is_mounted(&mnt));
    let (s, v) = d.call_as("wrong-key", "GET", "/v1/sessions", None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (_, list) = d.call("GET", "/v1/sessions", None);
    assert_eq!(list["sessions"].as_array().unwrap().len(), 1);
    d.unmount(&sid);
}

#[test]
fn sigterm_commits_and_unmounts_every_session() {
    let mut d = Daemon::start();
    d.create_workspace("t");
    let (_, mnt) = d.mount("t", "t");
    std::fs::write(mnt.join("unsynced.txt"), b"written, never fsynced").unwrap();
    assert_eq!(d.stop(), 0);
    assert!(!is_mounted(&mnt));
    d.restart();
    let (_, mnt) = d.mount("t", "t2");
    assert_eq!(
        std::fs::read(mnt.join("unsynced.txt")).unwrap(),
        b"written, never fsynced"
    );
}

#[test]
fn sigkill_keeps_every_fsynced_file_and_restart_cleans_the_stale_mount() {
    let mut d = Daemon::start();
    d.create_workspace("c");
    let (_, mnt) = d.mount("c", "c");
    let synced = Arc::new(Mutex::new(Vec::new()));
    // Set just before the SIGKILL: the writer's errors after it are the daemon's death,
    // before it a failure.
    let killed = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mnt, synced, killed) = (mnt.clone(), synced.clone(), killed.clone());
        std::thread::spawn(move || {
            for i in 0.. {
                let name = format!("f{i}");
                let data = vec![(i % 250) as u8 + 1; 1000 + (i * 37) % 70_000];
                let ok = (|| -> std::io::Result<()> {
                    let mut f = std::fs::File::create(mnt.join(&name))?;
                    f.write_all(&data)?;
                    f.sync_all()
                })();
                if let Err(e) = ok {
                    assert!(
                        killed.load(Ordering::SeqCst),
                        "{name} failed before the SIGKILL: {e}"
                    );
                    return; // the daemon is gone
                }
                synced.lock().unwrap().push((name, data));
            }
        })
    };
    // The kill lands while the writer is busy: after it has fsynced a good number of files.
    common::wait_until(
        Duration::from_secs(60),
        "the writer to fsync 50 files",
        || synced.lock().unwrap().len() >= 50 || writer.is_finished(),
    );
    killed.store(true, Ordering::SeqCst);
    d.kill();
    writer.join().unwrap();
    let synced = synced.lock().unwrap().clone();
    assert!(
        synced.len() > 10,
        "only {} files were fsynced",
        synced.len()
    );
    let out = std::process::Command::new(common::bin())
        .arg("fsck")
        .arg("--data-dir")
        .arg(d.data_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fsck: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    d.restart();
    assert!(!is_mounted(&mnt), "the stale mount was not cleaned up");
    let (_, s) = d.call("GET", "/v1/workspaces/c", None);
    assert_eq!(s["active_session_id"], serde_json::Value::Null);
    let (_, mnt) = d.mount("c", "c");
    for (name, data) in &synced {
        assert!(
            std::fs::read(mnt.join(name)).unwrap() == *data,
            "{name} lost or torn after fsync"
        );
    }
}

#[test]
fn periodic_commits_save_unsynced_writes_from_a_crash() {
    let mut d = Daemon::start(); // tests run the daemon with --commit-interval 1
    d.create_workspace("p");
    let (_, mnt) = d.mount("p", "p");
    const TEXT: &[u8] = b"saved by the periodic commit";
    std::fs::write(mnt.join("never-fsynced.txt"), TEXT).unwrap();
    // Until a periodic commit holds the file, bytes and all (the API reports the committed
    // state; the kernel's writeback cache may send the bytes a moment after the close).
    common::wait_until(
        Duration::from_secs(30),
        "a periodic commit of never-fsynced.txt",
        || {
            let (_, w) = d.call("GET", "/v1/workspaces/p", None);
            w["persistence"]["files"] == 2 && w["persistence"]["logical_bytes"] == TEXT.len()
        },
    );
    d.kill();
    d.restart();
    let (_, mnt) = d.mount("p", "p");
    assert_eq!(std::fs::read(mnt.join("never-fsynced.txt")).unwrap(), TEXT);
}

/// A workspace's files count, as the API reports it (committed state).
fn committed_files(d: &Daemon, ws: &str) -> u64 {
    let (_, w) = d.call("GET", &format!("/v1/workspaces/{ws}"), None);
    w["persistence"]["files"].as_u64().unwrap()
}

#[test]
fn xattrs_are_off_unless_the_session_asks_and_then_persist() {
    let d = Daemon::start();
    d.create_workspace("plain");
    let (sid, mnt) = d.mount("plain", "plain");
    let (_, s) = d.call("GET", &format!("/v1/sessions/{sid}"), None);
    assert_eq!(s["xattrs"], false);
    std::fs::write(mnt.join("f"), b"x").unwrap();
    let refused = common::sh(
        "python3 -c 'import os, errno\ntry:\n os.setxattr(\"f\", \"user.k\", b\"v\")\n print(\"set\")\nexcept OSError as e:\n print(\"EOPNOTSUPP\" if e.errno == errno.EOPNOTSUPP else e)'",
        &mnt,
    );
    assert_eq!(refused.trim(), "EOPNOTSUPP");
    d.unmount(&sid);

    d.create_workspace("attrs");
    let path = d.mount_root().join("attrs");
    let body = json!({"workspace": "attrs", "mountpoint": path, "xattrs": true});
    let (status, s) = d.call("POST", "/v1/sessions", Some(body.clone()));
    assert_eq!(status, 201, "{s}");
    assert_eq!(s["xattrs"], true);
    std::fs::write(path.join("f"), b"x").unwrap();
    common::sh(
        "python3 -c 'import os; os.setxattr(\"f\", \"user.k\", b\"v1\")'",
        &path,
    );
    d.unmount(s["id"].as_str().unwrap());
    let (status, s) = d.call("POST", "/v1/sessions", Some(body));
    assert_eq!(status, 201, "{s}");
    let got = common::sh(
        "python3 -c 'import os; print(os.getxattr(\"f\", \"user.k\").decode(), os.listxattr(\"f\"))'",
        &path,
    );
    assert_eq!(got.trim(), "v1 ['user.k']");
    d.unmount(s["id"].as_str().unwrap());
}

/// The kernel opens files without telling the daemon (no OPEN or RELEASE), so an unlinked
/// file's life follows the kernel's references: readable through an open descriptor after
/// its unlink, gone from the workspace once closed.
#[test]
fn an_unlinked_open_file_stays_readable_until_closed_then_is_freed() {
    let d = Daemon::start();
    d.create_workspace("w");
    let (sid, mnt) = d.mount("w", "w");
    std::fs::write(mnt.join("keep"), b"k").unwrap();
    let out = common::sh(
        "python3 -c 'import os\nfd = os.open(\"doomed\", os.O_CREAT | os.O_RDWR, 0o600)\nos.write(fd, b\"still here\" * 10000)\nos.unlink(\"doomed\")\nd = os.open(\".\", os.O_RDONLY); os.fsync(d)\nos.lseek(fd, 0, 0)\nprint(os.read(fd, 10).decode(), os.path.exists(\"doomed\"))\nos.close(fd)'",
        &mnt,
    );
    assert_eq!(out.trim(), "still here False");
    // Root, `keep`; the orphan goes once the kernel forgets it (asynchronously, so poll).
    let dir = std::fs::File::open(&mnt).unwrap();
    common::wait_until(
        Duration::from_secs(30),
        "the closed orphan to be freed (2 files committed)",
        || {
            dir.sync_all().unwrap();
            committed_files(&d, "w") == 2
        },
    );
    d.unmount(&sid);
    assert_eq!(committed_files(&d, "w"), 2);
}

/// A snapshot mounted read-only while its workspace has a session of its own: it shows the
/// snapshot's state, every change answers EROFS, it cannot be deleted (nor its workspace,
/// without force) while mounted, and ending it leaves the workspace's record alone.
#[test]
fn a_snapshot_mounts_read_only_beside_its_workspace() {
    let mut d = Daemon::start();
    d.create_workspace("proj");
    let (sid, live) = d.mount("proj", "live");
    std::fs::create_dir(live.join("src")).unwrap();
    std::fs::write(live.join("src/main.rs"), b"fn main() {}\n").unwrap();
    d.unmount(&sid);
    let (s, v) = d.call(
        "POST",
        "/v1/workspaces/proj/snapshots",
        Some(json!({"name": "v1"})),
    );
    assert_eq!(s, 201, "{v}");
    let (sid, live) = d.mount("proj", "live");
    std::fs::write(live.join("src/main.rs"), b"fn main() { changed() }\n").unwrap();

    let ro_path = d.mount_root().join("v1");
    let body = json!({"workspace": "proj", "snapshot": "v1", "mountpoint": ro_path});
    let (s, ro) = d.call("POST", "/v1/sessions", Some(body.clone()));
    assert_eq!(s, 201, "{ro}");
    assert_eq!(ro["read_only"], true);
    assert_eq!(ro["snapshot_id"], v["id"]);
    let rid = ro["id"].as_str().unwrap().to_string();
    assert_eq!(
        std::fs::read(ro_path.join("src/main.rs")).unwrap(),
        b"fn main() {}\n"
    );
    let erofs = |r: std::io::Result<()>| {
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS));
    };
    erofs(std::fs::write(ro_path.join("new"), b"x"));
    erofs(std::fs::write(ro_path.join("src/main.rs"), b"x"));
    erofs(std::fs::remove_file(ro_path.join("src/main.rs")));
    erofs(std::fs::create_dir(ro_path.join("d")));
    erofs(std::fs::rename(ro_path.join("src"), ro_path.join("src2")));
    erofs(std::os::unix::fs::symlink("x", ro_path.join("l")));
    erofs(std::fs::set_permissions(
        ro_path.join("src/main.rs"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    ));
    // The live workspace goes on writing meanwhile.
    std::fs::write(live.join("after"), b"still writable").unwrap();

    // One session per snapshot; the snapshot and its workspace are kept while it is mounted.
    let other = json!({"workspace": "proj", "snapshot": "v1",
                       "mountpoint": d.mount_root().join("v1-again")});
    let (s, v) = d.call("POST", "/v1/sessions", Some(other));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("snapshot_mounted")),
        "{v}"
    );
    // The directory made for the refused mount went again.
    assert!(!d.mount_root().join("v1-again").exists());
    let (s, v) = d.call("DELETE", "/v1/workspaces/proj/snapshots/v1", None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("snapshot_mounted")),
        "{v}"
    );
    let missing = json!({"workspace": "proj", "snapshot": "nope",
                         "mountpoint": d.mount_root().join("nope")});
    let (s, v) = d.call("POST", "/v1/sessions", Some(missing));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("snapshot_not_found")),
        "{v}"
    );

    let (s, v) = d.call("DELETE", &format!("/v1/sessions/{rid}"), None);
    assert_eq!(s, 200, "{v}");
    assert!(!is_mounted(&ro_path));
    let (_, w) = d.call("GET", "/v1/workspaces/proj", None);
    assert_eq!(w["active_session_id"], sid.as_str());
    d.unmount(&sid);
    let (_, w) = d.call("GET", "/v1/workspaces/proj", None);
    assert_eq!(w["last_session_id"], sid.as_str());

    // Mounted again after a restart; a forced workspace delete ends it first.
    d.stop();
    d.restart();
    let (s, ro) = d.call("POST", "/v1/sessions", Some(body));
    assert_eq!(s, 201, "{ro}");
    assert_eq!(
        std::fs::read(ro_path.join("src/main.rs")).unwrap(),
        b"fn main() {}\n"
    );
    let (s, v) = d.call("DELETE", "/v1/workspaces/proj", None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("snapshot_mounted")),
        "{v}"
    );
    let (s, v) = d.call("DELETE", "/v1/workspaces/proj?force=true", None);
    assert_eq!(s, 204, "{v}");
    assert!(!is_mounted(&ro_path));
    let (_, v) = d.call(
        "GET",
        &format!("/v1/sessions/{}", ro["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(v["status"], "ended");
    d.stop();
    common::fsck(&d.data_dir()).unwrap();
}

/// A mountpoint directory the daemon made goes when its session ends; one that was there
/// before stays.
#[test]
fn an_ended_session_leaves_no_directory_the_daemon_made() {
    let d = Daemon::start();
    d.create_workspace("w");
    let (sid, made) = d.mount("w", "made/here");
    assert!(is_mounted(&made));
    d.unmount(&sid);
    assert!(!made.exists(), "{} is still there", made.display());
    assert!(
        made.parent().unwrap().is_dir(),
        "only the mountpoint itself goes"
    );

    let kept = d.mount_root().join("kept");
    std::fs::create_dir(&kept).unwrap();
    let (sid, path) = d.mount("w", "kept");
    assert_eq!(path, kept);
    d.unmount(&sid);
    assert!(kept.is_dir(), "a directory the daemon did not make is left");
}
