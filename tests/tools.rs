//! Real tools on a mounted workspace, as a session would run them: git, tar, sqlite3 with a
//! WAL journal, cargo, and permissions enforced between users. Protects against the FUSE
//! adapter or the engine differing from a local disk in ways real programs notice.

mod common;

use std::path::Path;

use common::{sh, Daemon};

#[test]
fn git_clone_fsck_and_status() {
    let d = Daemon::start();
    d.create_workspace("git");
    let src = d.dir.path().join("src-repo");
    std::fs::create_dir_all(&src).unwrap();
    // A repository of 3,000 files in 30 directories, with history.
    sh(
        "git init -q . && for d in $(seq 1 30); do mkdir -p dir$d; for f in $(seq 1 100); do echo \"$d/$f\" > dir$d/file$f.txt; done; done \
         && git add . && git -c user.name=t -c user.email=t@t commit -qm one \
         && echo more >> dir1/file1.txt && git -c user.name=t -c user.email=t@t commit -qam two",
        &src,
    );
    let (sid, mnt) = d.mount("git", "g");
    sh(&format!("git clone -q {} repo", src.display()), &mnt);
    let repo = mnt.join("repo");
    sh("git fsck --full --strict", &repo);
    assert_eq!(sh("git status --porcelain", &repo), "");
    assert_eq!(sh("git ls-files | wc -l", &repo).trim(), "3000");
    sh("echo change >> dir2/file2.txt && git -c user.name=t -c user.email=t@t commit -qam three && git gc -q && git fsck --strict", &repo);
    assert_eq!(sh("git rev-list --count HEAD", &repo).trim(), "3");
    d.unmount(&sid);
}

#[test]
fn tar_extract_of_twenty_thousand_files_matches_the_source() {
    let d = Daemon::start();
    d.create_workspace("tar");
    let src = d.dir.path().join("tree");
    std::fs::create_dir_all(&src).unwrap();
    sh(
        "for d in $(seq 1 100); do mkdir -p d$d/sub; for f in $(seq 1 200); do echo \"content $d $f\" > d$d/f$f; done; \
         ln -s f1 d$d/link; head -c 300000 /dev/urandom > d$d/sub/blob; done",
        &src,
    );
    let tarball = d.dir.path().join("tree.tar");
    sh(
        &format!("tar -cf {} -C {} .", tarball.display(), src.display()),
        Path::new("/"),
    );
    let (sid, mnt) = d.mount("tar", "t");
    sh(
        &format!("mkdir x && tar -xf {} -C x", tarball.display()),
        &mnt,
    );
    sh(
        &format!("diff -r --no-dereference {} x", src.display()),
        &mnt,
    );
    assert_eq!(sh("find x -type f | wc -l", &mnt).trim(), "20100");
    d.unmount(&sid);
    // And again from a fresh mount, read back from the store.
    let (sid, mnt) = d.mount("tar", "t2");
    sh(
        &format!("diff -r --no-dereference {} x", src.display()),
        &mnt,
    );
    d.unmount(&sid);
}

#[test]
fn sqlite_wal_writes_and_integrity_check() {
    let d = Daemon::start();
    d.create_workspace("db");
    let (sid, mnt) = d.mount("db", "db");
    let out = sh(
        "sqlite3 t.db \"PRAGMA journal_mode=WAL; CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT); \
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<100000) \
         INSERT INTO t SELECT x, hex(randomblob(16)) FROM c; \
         UPDATE t SET b = 'x' WHERE a % 7 = 0; DELETE FROM t WHERE a % 11 = 0; \
         SELECT count(*) FROM t; PRAGMA integrity_check;\"",
        &mnt,
    );
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["wal", "90910", "ok"]
    );
    d.unmount(&sid);
    let (sid, mnt) = d.mount("db", "db2");
    let out = sh(
        "sqlite3 t.db 'PRAGMA integrity_check; SELECT count(*) FROM t;'",
        &mnt,
    );
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["ok", "90910"]);
    d.unmount(&sid);
}

#[test]
fn cargo_builds_a_crate_on_the_mount() {
    let d = Daemon::start();
    d.create_workspace("rust");
    let (sid, mnt) = d.mount("rust", "r");
    sh(
        "cargo new -q --vcs none hello && cd hello && printf 'fn main() { println!(\"hi from the mount\"); }\\n' > src/main.rs \
         && CARGO_TARGET_DIR=target cargo build -q --offline",
        &mnt,
    );
    assert_eq!(
        sh("./hello/target/debug/hello", &mnt).trim(),
        "hi from the mount"
    );
    d.unmount(&sid);
}

#[test]
fn modes_keep_other_users_out() {
    let d = Daemon::start();
    d.create_workspace("perm");
    let (sid, mnt) = d.mount("perm", "p");
    sh("chmod 1777 . && setpriv --reuid=1000 --regid=1000 --clear-groups sh -c 'echo secret > mine && chmod 600 mine && echo shared > open && chmod 644 open'", &mnt);
    let as_other = |cmd: &str| {
        std::process::Command::new("setpriv")
            .args([
                "--reuid=1001",
                "--regid=1001",
                "--clear-groups",
                "sh",
                "-c",
                cmd,
            ])
            .current_dir(&mnt)
            .output()
            .unwrap()
    };
    assert!(
        !as_other("cat mine").status.success(),
        "another user read a 0600 file"
    );
    assert!(as_other("cat open").status.success());
    assert!(
        !as_other("echo x >> open").status.success(),
        "another user wrote a 0644 file"
    );
    assert!(
        !as_other("rm open").status.success(),
        "sticky directory let another user delete"
    );
    assert_eq!(sh("stat -c '%u %a' mine", &mnt).trim(), "1000 600");
    d.unmount(&sid);
}

#[test]
fn flock_and_fcntl_locks_exclude_other_processes() {
    let d = Daemon::start();
    d.create_workspace("locks");
    let (sid, mnt) = d.mount("locks", "l");
    std::fs::write(mnt.join("lockfile"), b"").unwrap();
    // flock(2): a second process cannot take the lock while the first holds it. The holder
    // says when it has the lock (a file outside the mount) and keeps it until its stdin
    // closes.
    let held = d.dir.path().join("lock-held");
    let mut holder = std::process::Command::new("flock")
        .args([
            "lockfile",
            "sh",
            "-c",
            "touch \"$0\" && exec cat >/dev/null",
        ])
        .arg(&held)
        .current_dir(&mnt)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_until(
        std::time::Duration::from_secs(30),
        "the first flock to take the lock",
        || held.exists(),
    );
    let second = std::process::Command::new("flock")
        .args(["-n", "lockfile", "true"])
        .current_dir(&mnt)
        .status()
        .unwrap();
    assert!(!second.success(), "flock was granted twice");
    // fcntl(2) record locks, through Python's lockf.
    let py = "import fcntl, os, sys, time\n\
              f = open('rec', 'w'); fcntl.lockf(f, fcntl.LOCK_EX)\n\
              if os.fork() == 0:\n\
              \x20   g = open('rec', 'w')\n\
              \x20   try: fcntl.lockf(g, fcntl.LOCK_EX | fcntl.LOCK_NB); os._exit(1)\n\
              \x20   except OSError: os._exit(0)\n\
              _, st = os.wait(); sys.exit(os.waitstatus_to_exitcode(st))\n";
    let status = std::process::Command::new("python3")
        .args(["-c", py])
        .current_dir(&mnt)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "an fcntl lock was granted to a second process"
    );
    drop(holder.stdin.take()); // the holder's `cat` ends, and the lock goes with it
    assert!(holder.wait().unwrap().success());
    assert!(std::process::Command::new("flock")
        .args(["-n", "lockfile", "true"])
        .current_dir(&mnt)
        .status()
        .unwrap()
        .success());
    d.unmount(&sid);
}
