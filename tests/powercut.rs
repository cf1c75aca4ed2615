//! Power cuts: the daemon's data dir lives on the power-cut layer (tests/powercut), which
//! forgets every write and name not yet fsynced. Clients write through a mounted session and
//! log each acknowledged fsync here, outside; at a random moment the daemon is SIGKILLed and the
//! power cut; then `chaserfs fsck` must be clean, the daemon must start, and every acknowledged
//! file, append, overwrite, rename and SQLite row must be there with the right bytes. Small
//! fsyncs go to the daemon's fsync journal and larger ones commit, so both are cut through;
//! `patch` takes writes of any size at any offset and truncates, each fdatasynced, and must
//! hold what the last one acknowledged byte for byte (or, where the one in flight wrote,
//! the byte it wrote).
//!
//! Cycles: CHASERFS_POWERCUT_CYCLES (default 50).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chaserfs_powercut::PowerCut;
use common::{Daemon, Options};

const RECORD: usize = 64;
const BLOCK: usize = 4096;
const BLOCKS: usize = 64;

/// Append record `k` of the file `log`.
fn record(k: usize) -> Vec<u8> {
    format!("{k:063}\n").into_bytes()
}

/// Mostly small files; every tenth is 1.5 MiB, so its commit writes chunks without the WAL
/// and must flush them before the root that refers to them.
fn small(cycle: usize, i: usize) -> Vec<u8> {
    let len = if i % 10 == 9 {
        3 << 19
    } else {
        100 + (cycle * 7919 + i * 104_729) % 9000
    };
    common::noise((cycle as u64) << 32 | i as u64, len)
}

/// A block of `over` (or the whole of `r`) at version `v`: the version in every 8 bytes.
fn versioned(v: u64, len: usize) -> Vec<u8> {
    v.to_le_bytes().iter().copied().cycle().take(len).collect()
}

/// The version a versioned buffer holds, if it is whole (not torn).
fn version_of(buf: &[u8]) -> Option<u64> {
    let v = u64::from_le_bytes(buf.get(..8)?.try_into().ok()?);
    (buf == versioned(v, buf.len())).then_some(v)
}

fn fsync_dir(p: &Path) -> std::io::Result<()> {
    std::fs::File::open(p)?.sync_all()
}

/// What clients saw acknowledged, across cycles.
#[derive(Default)]
struct Acked {
    small: Vec<(String, Vec<u8>)>,
    log_len: usize,
    blocks: Vec<u64>,
    renamed: u64,
    rows: u64,
    /// `patch` as its last acknowledged fdatasync left it, and as the change in flight
    /// would leave it.
    patched: Vec<u8>,
    patching: Option<Vec<u8>>,
}

/// Change `n` of `patch`: a write of 1 byte to 12 KiB at an offset below 192 KiB (across
/// chunk boundaries too), or every sixteenth a truncate to below 256 KiB.
enum Patch {
    Write(u64, Vec<u8>),
    Truncate(u64),
}

fn patch_step(cycle: usize, n: u64) -> Patch {
    let r = |k: u64| (cycle as u64 * 1_000_003 + n * 7919 + k * 104_729) % 1_000_000_007;
    if n % 16 == 15 {
        return Patch::Truncate(r(1) % (256 << 10));
    }
    let len = 1 + r(3) as usize % 12_288;
    let bytes = (0..len)
        .map(|j| ((n as usize + j) % 251) as u8 + 1)
        .collect();
    Patch::Write(r(2) % (192 << 10), bytes)
}

impl Patch {
    fn apply(&self, file: &[u8]) -> Vec<u8> {
        let mut after = file.to_vec();
        match self {
            Patch::Truncate(len) => after.resize(*len as usize, 0),
            Patch::Write(at, bytes) => {
                let at = *at as usize;
                if after.len() < at + bytes.len() {
                    after.resize(at + bytes.len(), 0);
                }
                after[at..at + bytes.len()].copy_from_slice(bytes);
            }
        }
        after
    }
}

/// The clients' errors, told apart by when they came. Until the daemon is killed every call
/// must succeed: an error then fails the run. After it the mount is gone and every call
/// fails, as expected.
#[derive(Default)]
struct Errors {
    /// Set just before the daemon is killed.
    killed: AtomicBool,
    /// Errors reported while `killed` was not set.
    before_kill: Mutex<Vec<String>>,
}

impl Errors {
    fn report(&self, client: &str, e: impl std::fmt::Display) {
        if !self.killed.load(Ordering::SeqCst) {
            self.before_kill
                .lock()
                .unwrap()
                .push(format!("{client}: {e}"));
        }
    }
}

/// Runs the clients on the session mounted at `mnt` until `stop` or an error (the daemon
/// died, or a failure: each goes to `errors`).
fn clients(
    mnt: &Path,
    cycle: usize,
    acked: &Arc<Mutex<Acked>>,
    stop: &Arc<AtomicBool>,
    errors: &Errors,
) {
    std::thread::scope(|s| {
        // Files: create, write, fsync.
        s.spawn(|| {
            let dir = mnt.join("small");
            for i in 0.. {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let name = format!("{cycle}-{i}");
                let data = small(cycle, i);
                let ok = (|| {
                    let mut f = std::fs::File::create(dir.join(&name))?;
                    f.write_all(&data)?;
                    f.sync_all()
                })();
                if let Err(e) = ok {
                    errors.report(&format!("small/{name}"), e);
                    return;
                }
                acked.lock().unwrap().small.push((name, data));
            }
        });
        // Appends with fdatasync, and now and then an in-place overwrite with fsync.
        s.spawn(|| {
            let ok = (|| -> std::io::Result<()> {
                let mut log = std::fs::OpenOptions::new()
                    .append(true)
                    .open(mnt.join("log"))?;
                let over = std::fs::OpenOptions::new()
                    .write(true)
                    .open(mnt.join("over"))?;
                let mut k = log.metadata()?.len() as usize / RECORD;
                for n in 0u64.. {
                    if stop.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    log.write_all(&record(k))?;
                    log.sync_data()?;
                    k += 1;
                    acked.lock().unwrap().log_len = k * RECORD;
                    if n % 4 == 3 {
                        let b = (n as usize * 7) % BLOCKS;
                        let v = acked.lock().unwrap().blocks[b] + 1;
                        std::os::unix::fs::FileExt::write_all_at(
                            &over,
                            &versioned(v, BLOCK),
                            (b * BLOCK) as u64,
                        )?;
                        over.sync_all()?;
                        acked.lock().unwrap().blocks[b] = v;
                    }
                }
                Ok(())
            })();
            if let Err(e) = ok {
                errors.report("log and over", e);
            }
        });
        // Atomic replace: write a temporary file, fsync, rename over, fsync the directory.
        s.spawn(|| loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let v = acked.lock().unwrap().renamed + 1;
            let ok = (|| {
                let tmp = mnt.join("r.tmp");
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&versioned(v, 3000 + (v as usize % 5000)))?;
                f.sync_all()?;
                std::fs::rename(&tmp, mnt.join("r"))?;
                fsync_dir(mnt)
            })();
            if let Err(e) = ok {
                errors.report(&format!("r version {v}"), e);
                return;
            }
            acked.lock().unwrap().renamed = v;
        });
        // Patches: each change fdatasynced; `patching` is set before it starts.
        s.spawn(|| {
            let ok = (|| -> std::io::Result<()> {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(mnt.join("patch"))?;
                for n in 0u64.. {
                    if stop.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    let step = patch_step(cycle, n);
                    let after = step.apply(&acked.lock().unwrap().patched);
                    acked.lock().unwrap().patching = Some(after.clone());
                    match &step {
                        Patch::Truncate(len) => f.set_len(*len)?,
                        Patch::Write(at, bytes) => {
                            std::os::unix::fs::FileExt::write_all_at(&f, bytes, *at)?
                        }
                    }
                    f.sync_data()?;
                    let mut a = acked.lock().unwrap();
                    a.patched = after;
                    a.patching = None;
                }
                Ok(())
            })();
            if let Err(e) = ok {
                errors.report("patch", e);
            }
        });
        // SQLite in WAL mode with synchronous=FULL: a row is acknowledged when its INSERT
        // (its own transaction) has returned.
        s.spawn(|| {
            if let Err(e) = sqlite_inserts(mnt, acked, stop) {
                errors.report("sqlite3", e);
            }
        });
    });
}

fn sqlite_inserts(
    mnt: &Path,
    acked: &Arc<Mutex<Acked>>,
    stop: &Arc<AtomicBool>,
) -> std::io::Result<()> {
    // -bail: on the first error (the mount died) sqlite3 exits, so a read here never waits
    // for an answer that will not come.
    let mut db = Command::new("sqlite3")
        .arg("-bail")
        .arg(mnt.join("db.sqlite"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut input = db.stdin.take().expect("piped");
    let mut output = BufReader::new(db.stdout.take().expect("piped"));
    let result = (|| {
        writeln!(
            input,
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
             CREATE TABLE IF NOT EXISTS t(n INTEGER PRIMARY KEY, pad TEXT);"
        )?;
        let mut line = String::new();
        output.read_line(&mut line)?;
        if line.trim() != "wal" {
            return Err(std::io::Error::other(format!(
                "journal_mode=WAL answered {line:?}"
            )));
        }
        let mut n = acked.lock().unwrap().rows;
        // Rows a previous cycle committed without our seeing the answer are there too.
        writeln!(input, "SELECT coalesce(max(n), 0) FROM t;")?;
        line.clear();
        output.read_line(&mut line)?;
        let max: u64 = line
            .trim()
            .parse()
            .map_err(|_| std::io::Error::other(format!("SELECT max(n) answered {line:?}")))?;
        n = n.max(max);
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            writeln!(
                input,
                "INSERT INTO t VALUES({n}, hex(randomblob(200))); SELECT {n};"
            )?;
            line.clear();
            output.read_line(&mut line)?;
            if line.trim() != n.to_string() {
                // sqlite3 -bail exited at an error (its stderr says which), or answered
                // something else.
                return Err(std::io::Error::other(format!(
                    "row {n}: sqlite3 answered {line:?}"
                )));
            }
            acked.lock().unwrap().rows = n;
        }
        Ok(())
    })();
    drop(input);
    let _ = db.kill(); // exited already, if it bailed out
    let stderr = db.wait_with_output().map(|o| o.stderr).unwrap_or_default();
    result.map_err(|e| {
        let said = String::from_utf8_lossy(&stderr);
        std::io::Error::other(format!("{e}; sqlite3's stderr: {}", said.trim()))
    })
}

/// Everything acknowledged is there, whole. `small_from`: the first small file to read (all of
/// them but in long runs, where the older ones are read every tenth cycle).
fn verify(mnt: &Path, acked: &Acked, cycle: usize, small_from: usize) {
    for (name, data) in &acked.small[small_from..] {
        let got = std::fs::read(mnt.join("small").join(name))
            .unwrap_or_else(|e| panic!("cycle {cycle}: small/{name}: {e}"));
        assert!(got == *data, "cycle {cycle}: small/{name} differs");
    }
    let log = std::fs::read(mnt.join("log")).unwrap();
    assert!(
        log.len() >= acked.log_len,
        "cycle {cycle}: log is {} bytes, {} were fdatasynced",
        log.len(),
        acked.log_len
    );
    let want: Vec<u8> = (0..log.len().div_ceil(RECORD)).flat_map(record).collect();
    assert!(
        log == want[..log.len()],
        "cycle {cycle}: log holds wrong bytes"
    );
    let over = std::fs::read(mnt.join("over")).unwrap();
    for (b, &v) in acked.blocks.iter().enumerate() {
        let got = version_of(&over[b * BLOCK..(b + 1) * BLOCK]);
        assert!(
            got.is_some_and(|g| g >= v),
            "cycle {cycle}: block {b} holds {got:?}, version {v} was fsynced"
        );
    }
    let patch = std::fs::read(mnt.join("patch")).unwrap();
    let before = &acked.patched;
    let after = acked.patching.as_ref().unwrap_or(before);
    assert!(
        patch.len() == before.len() || patch.len() == after.len(),
        "cycle {cycle}: patch is {} bytes, {} were fdatasynced ({} in flight)",
        patch.len(),
        before.len(),
        after.len()
    );
    let at = |f: &[u8], i: usize| f.get(i).copied().unwrap_or(0);
    if let Some(i) =
        (0..patch.len()).find(|&i| patch[i] != at(before, i) && patch[i] != at(after, i))
    {
        panic!(
            "cycle {cycle}: patch byte {i} is {}: {} was fdatasynced, {} in flight",
            patch[i],
            at(before, i),
            at(after, i)
        );
    }
    let r = std::fs::read(mnt.join("r")).unwrap();
    let got = version_of(&r);
    assert!(
        got.is_some_and(|g| g >= acked.renamed),
        "cycle {cycle}: r holds {got:?}, version {} was renamed in durably",
        acked.renamed
    );
    let out = Command::new("sqlite3")
        .arg(mnt.join("db.sqlite"))
        .arg(format!(
            "PRAGMA integrity_check; SELECT count(*) FROM t; \
             SELECT count(*) FROM t WHERE n BETWEEN 1 AND {};",
            acked.rows
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"ok"), "cycle {cycle}: sqlite: {text}");
    assert_eq!(
        lines.get(2).map(|l| l.trim().to_string()),
        Some(acked.rows.to_string()),
        "cycle {cycle}: {} rows were committed: {text}",
        acked.rows
    );
}

#[test]
fn acknowledged_writes_survive_power_cuts() {
    let cycles: usize =
        std::env::var("CHASERFS_POWERCUT_CYCLES").map_or(50, |s| s.parse().unwrap());
    let disk = tempfile::Builder::new()
        .prefix("chaserfs-powercut")
        .tempdir_in("/var/tmp")
        .unwrap();
    let mut pc = PowerCut::mount(disk.path()).unwrap();
    let data: PathBuf = disk.path().join("data");
    let mut d = Daemon::start_with(Options {
        data_dir: Some(data.clone()),
        ..Options::default()
    });
    d.create_workspace("pc");
    let (_, mnt) = d.mount("pc", "pc");
    std::fs::create_dir(mnt.join("small")).unwrap();
    std::fs::write(mnt.join("log"), b"").unwrap();
    std::fs::write(mnt.join("over"), versioned(0, BLOCK * BLOCKS)).unwrap();
    std::fs::write(mnt.join("r"), versioned(0, 100)).unwrap();
    std::fs::write(mnt.join("patch"), b"").unwrap();
    std::fs::File::open(mnt.join("over"))
        .unwrap()
        .sync_all()
        .unwrap();
    let acked = Arc::new(Mutex::new(Acked {
        blocks: vec![0; BLOCKS],
        ..Acked::default()
    }));
    let mut mnt = mnt;
    for cycle in 0..cycles {
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Errors::default());
        let runner = {
            let (mnt, acked, stop, errors) =
                (mnt.clone(), acked.clone(), stop.clone(), errors.clone());
            std::thread::spawn(move || clients(&mnt, cycle, &acked, &stop, &errors))
        };
        // Not a wait for anything: the power cut comes at a random moment of the writes.
        std::thread::sleep(Duration::from_millis(200 + rand::random::<u64>() % 1000));
        // The power cut: the daemon dies mid-write, then every unsynced byte and name goes.
        errors.killed.store(true, Ordering::SeqCst);
        d.kill();
        stop.store(true, Ordering::SeqCst);
        runner.join().unwrap();
        let early = errors.before_kill.lock().unwrap();
        assert!(
            early.is_empty(),
            "cycle {cycle}: clients failed before the power cut:\n{}",
            early.join("\n")
        );
        drop(early);
        pc.cut().unwrap();
        if let Err(report) = common::fsck(&data) {
            panic!("cycle {cycle}: fsck after the power cut: {report}");
        }
        d.restart();
        let (_, m) = d.mount("pc", &format!("pc{cycle}"));
        mnt = m;
        let mut a = acked.lock().unwrap();
        // Long runs read every file every tenth cycle and at the end, else the newest 2,000.
        let full = a.small.len() <= 5000 || cycle % 10 == 9 || cycle + 1 == cycles;
        let from = if full { 0 } else { a.small.len() - 2000 };
        verify(&mnt, &a, cycle, from);
        // Patches go on from what the cut left (the change in flight may have landed).
        a.patched = std::fs::read(mnt.join("patch")).unwrap();
        a.patching = None;
        // Big files go once checked, so the data dir (which the layer holds in memory) stays
        // bounded and the collector has garbage to take; their deletes race the next cut like
        // any other write (an undone delete brings back a file nobody checks).
        let (big, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut a.small)
            .into_iter()
            .partition(|(_, data)| data.len() > 1 << 20);
        a.small = kept;
        for (name, _) in big {
            std::fs::remove_file(mnt.join("small").join(name)).unwrap();
        }
        // Appends continue from the last whole record.
        let len = std::fs::metadata(mnt.join("log")).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("log"))
            .unwrap()
            .set_len(len / RECORD as u64 * RECORD as u64)
            .unwrap();
        println!(
            "cycle {cycle}: {} small files, {} log bytes, {} renames, {} rows acknowledged",
            a.small.len(),
            a.log_len,
            a.renamed,
            a.rows
        );
    }
    let a = acked.lock().unwrap();
    assert!(
        a.small.len() > cycles && a.rows > cycles as u64 && a.renamed > cycles as u64,
        "too little was acknowledged to prove anything: {} files, {} rows, {} renames",
        a.small.len(),
        a.rows,
        a.renamed
    );
    assert!(pc.syncs() > 0);
}
