//! A transient storage failure heals without a restart: the daemon runs out of descriptors
//! (its RLIMIT_NOFILE lowered under it, as `prlimit` does), or the disk refuses one write to
//! the WAL, a table or a segment file (the power-cut layer's injected EIO). Writes fail while it lasts,
//! `/readyz` says so, and once the cause has passed the store reopens in place: the next
//! fsync succeeds within 10 s, sessions stay mounted, and no byte written before, during or
//! after is lost, even when SIGTERM arrives meanwhile.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chaserfs_powercut::PowerCut;
use common::{noise, wait_until, Daemon, Options};

/// Large enough that its commit appends chunks to a segment file (over the 1 MiB that go
/// through the WAL).
const BIG: usize = 3 << 20;

/// Appends `BIG` bytes at a time to `f` and fsyncs, until a write or an fsync fails: with
/// descriptors out, the one that needs a new segment file (the open one full, at 64 MiB).
/// Returns every byte written, the failed step's included.
fn write_until_it_fails(f: &mut std::fs::File, seed: u64) -> Vec<u8> {
    let mut all = Vec::new();
    for step in 0..40 {
        let bytes = noise(seed * 100 + step, BIG);
        let written = f.write_all(&bytes);
        all.extend_from_slice(&bytes);
        if written.is_err() || f.sync_all().is_err() {
            return all;
        }
    }
    panic!("120 MiB written and synced with no descriptor to spare");
}

/// Sets process `pid`'s soft limit on open files with `prlimit`; returns the `SOFT:HARD`
/// limits it had.
fn set_open_files(pid: i32, soft: u64) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (old_soft, hard) = (fields[3], fields[4]);
    restore_open_files(pid, &format!("{soft}:{hard}"));
    format!("{old_soft}:{hard}")
}

fn restore_open_files(pid: i32, limits: &str) {
    let out = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={limits}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// An HTTP/1.1 connection opened in advance: it needs no new descriptor in the daemon, so it
/// answers while the daemon has none to spare.
struct Conn(BufReader<TcpStream>);

impl Conn {
    fn open(d: &Daemon) -> Conn {
        let addr = d.url.trim_start_matches("http://").to_string();
        Conn(BufReader::new(TcpStream::connect(addr).unwrap()))
    }

    fn get(&mut self, path: &str) -> (u16, String) {
        let req = format!("GET {path} HTTP/1.1\r\nHost: chaserfs\r\n\r\n");
        self.0.get_mut().write_all(req.as_bytes()).unwrap();
        let mut status = String::new();
        self.0.read_line(&mut status).unwrap();
        let code = status.split(' ').nth(1).unwrap().parse().unwrap();
        let mut len = 0;
        loop {
            let mut line = String::new();
            self.0.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        self.0.read_exact(&mut body).unwrap();
        (code, String::from_utf8_lossy(&body).into_owned())
    }
}

/// Writes and fsyncs a whole file.
fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Calls fsync on `f` until it succeeds; how long that took. Panics after `limit`.
fn fsync_until_ok(f: &std::fs::File, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        match f.sync_all() {
            Ok(()) => return started.elapsed(),
            Err(e) if started.elapsed() < limit => {
                eprintln!("fsync: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("fsync still fails after {limit:?}: {e}"),
        }
    }
}

/// The files and their bytes, as a remount sees them.
fn assert_kept(d: &Daemon, workspace: &str, sub: &str, files: &[(&str, &[u8])]) {
    let (session, mnt) = d.mount(workspace, sub);
    for (name, data) in files {
        let got =
            std::fs::read(mnt.join(name)).unwrap_or_else(|e| panic!("{name}: {e}\n{}", d.log()));
        assert!(
            got == *data,
            "{name}: {} bytes of {} came back",
            got.len(),
            data.len()
        );
    }
    d.unmount(&session);
}

fn failures_logged(d: &Daemon) -> usize {
    d.log().matches("writes fail until the store heals").count()
}

#[test]
fn a_descriptor_shortage_heals_without_a_restart() {
    let d = Daemon::start();
    d.create_workspace("fd");
    let (session, mnt) = d.mount("fd", "fd");
    let before = noise(1, BIG);
    write_synced(&mnt.join("before"), &before).unwrap();
    let mut api = Conn::open(&d);
    assert_eq!(api.get("/readyz").0, 200);

    // No descriptor to spare: a commit cannot create the segment its chunks go to.
    let mut f = std::fs::File::create(mnt.join("during")).unwrap();
    let limits = set_open_files(d.pid(), 3);
    let during = write_until_it_fails(&mut f, 2);
    let (status, body) = api.get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("store_unhealthy"), "{body}");
    // The session still reads what it wrote.
    assert!(std::fs::read(mnt.join("during")).unwrap() == during);

    restore_open_files(d.pid(), &limits);
    let took = fsync_until_ok(&f, Duration::from_secs(10));
    eprintln!("fsync succeeded {took:?} after the limit was raised");
    drop(f);
    // A segment write may succeed before the store's next heal (once a second) says so.
    wait_until(Duration::from_secs(10), "ready again", || {
        api.get("/readyz").0 == 200
    });
    let after = noise(3, BIG);
    write_synced(&mnt.join("after"), &after).unwrap();
    assert_eq!(
        failures_logged(&d),
        1,
        "one line per state change\n{}",
        d.log()
    );
    assert!(d.log().contains("store healed"), "{}", d.log());

    d.unmount(&session);
    assert_kept(
        &d,
        "fd",
        "fd2",
        &[("before", &before), ("during", &during), ("after", &after)],
    );
}

#[test]
fn sigterm_while_unhealthy_commits_every_change_once_healed() {
    let mut d = Daemon::start();
    d.create_workspace("st");
    let (_, mnt) = d.mount("st", "st");
    let before = noise(4, BIG);
    write_synced(&mnt.join("before"), &before).unwrap();

    // Created before the limit: a create refused under it would leave no file to keep.
    let mut unsynced = std::fs::File::create(mnt.join("unsynced")).unwrap();
    let limits = set_open_files(d.pid(), 3);
    // Each fsync commits (3 MiB is past a journal entry), until one fails.
    let acked_not = write_until_it_fails(&mut unsynced, 5);
    drop(unsynced);
    d.terminate();
    // It does not exit while the session's changes are uncommitted.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(d.exited(), None, "{}", d.log());
    restore_open_files(d.pid(), &limits);
    let deadline = Instant::now() + Duration::from_secs(40);
    let code = loop {
        if let Some(code) = d.exited() {
            break code;
        }
        assert!(Instant::now() < deadline, "still running\n{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, 0, "{}", d.log());

    d.restart();
    assert_kept(
        &d,
        "st",
        "st2",
        &[("before", &before), ("unsynced", &acked_not)],
    );
}

#[test]
fn a_failed_write_to_the_wal_or_a_table_heals() {
    let disk = tempfile::Builder::new()
        .prefix("chaserfs-heal")
        .tempdir_in("/var/tmp")
        .unwrap();
    let pc = PowerCut::mount(disk.path()).unwrap();
    let data: PathBuf = disk.path().join("data");
    let d = Daemon::start_with(Options {
        data_dir: Some(data),
        ..Options::default()
    });
    d.create_workspace("io");
    let (session, mnt) = d.mount("io", "io");
    let before = noise(6, BIG);
    write_synced(&mnt.join("before"), &before).unwrap();

    let mut kept: Vec<(String, Vec<u8>)> = vec![("before".into(), before)];
    // The WAL takes a small commit and a large one's chunk locators; a segment its chunks;
    // a table the collector's flush of them, which a deleted workspace wakes.
    for (n, (suffix, len)) in [(".log", 1000), (".seg", BIG), (".sst", BIG)]
        .into_iter()
        .enumerate()
    {
        let failed = pc.failed_writes();
        pc.fail_writes(suffix, 1);
        let name = format!("during{n}");
        let bytes = noise(10 + n as u64, len);
        let mut f = std::fs::File::create(mnt.join(&name)).unwrap();
        f.write_all(&bytes).unwrap();
        if suffix == ".sst" {
            let id = d.create_workspace("scratch")["id"]
                .as_str()
                .unwrap()
                .to_string();
            let (status, body) = d.call("DELETE", &format!("/v1/workspaces/{id}"), None);
            assert!(status < 300, "{status} {body}");
            wait_until(Duration::from_secs(30), "the collector's flush", || {
                pc.failed_writes() > failed
            });
        }
        let first = f.sync_all();
        assert_eq!(pc.failed_writes(), failed + 1, "the {suffix} fault fired");
        eprintln!("{suffix}: first fsync {first:?}");
        let took = fsync_until_ok(&f, Duration::from_secs(10));
        eprintln!("{suffix}: fsync succeeded after {took:?}");
        kept.push((name, bytes));
        let after = noise(20 + n as u64, len);
        write_synced(&mnt.join(format!("after{n}")), &after).unwrap();
        kept.push((format!("after{n}"), after));
    }
    d.unmount(&session);
    let files: Vec<(&str, &[u8])> = kept
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    assert_kept(&d, "io", "io2", &files);
}
