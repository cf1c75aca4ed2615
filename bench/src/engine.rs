//! Engine benchmarks, each printed as a table beside a native baseline from the same run.
//!
//! `engine-bench roots [--quick]`: clone, snapshot and restore latency by workspace size.
//! `engine-bench write [--mib N]`: sequential write throughput through the POSIX layer with a
//!   synced commit, against the same bytes written to a plain file with fsync.
//! `engine-bench rss [--files N]`: peak RSS while cloning and walking an N-file workspace.
//! `engine-bench all`: all three.
//!
//! Data dirs live under `--dir` (default: a temp dir under /var/tmp, on the same disk as a
//! plain file baseline).

mod machine;

use machine::machine;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chaserfs_engine::format::keys::ROOT_INO;
use chaserfs_engine::{roots, FileKind, NewNode, RootId, Store, Workspace};
use uuid::Uuid;

fn new_file(ws: &Workspace, parent: u64, name: &str) -> Result<u64> {
    let n = NewNode::owned_by_root(FileKind::Regular, 0o644);
    Ok(ws.create(parent, name.as_bytes(), n)?.ino)
}

fn new_dir(ws: &Workspace, parent: u64, name: &str) -> Result<u64> {
    let n = NewNode::owned_by_root(FileKind::Directory, 0o755);
    Ok(ws.create(parent, name.as_bytes(), n)?.ino)
}

/// Pseudo-random, incompressible bytes (xorshift), generated outside any timed region.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Fills a workspace with `files` small files (1,000 per directory) and `data_bytes` in one file.
fn populate(store: &Arc<Store>, id: Uuid, files: usize, data_bytes: usize) -> Result<()> {
    roots::create_workspace(store, id, &[])?;
    let ws = Workspace::open(store.clone(), id)?;
    let mut dir = ROOT_INO;
    for i in 0..files {
        if i % 1000 == 0 {
            dir = new_dir(&ws, ROOT_INO, &format!("d{:04}", i / 1000))?;
        }
        let f = new_file(&ws, dir, &format!("f{i:07}"))?;
        ws.write(f, 0, format!("file {i}\n").as_bytes())?;
        if i % 50_000 == 49_999 {
            ws.commit(false)?;
        }
    }
    if data_bytes > 0 {
        let f = new_file(&ws, ROOT_INO, "data")?;
        let piece = random_bytes(1 << 20, 7);
        for off in (0..data_bytes).step_by(1 << 20) {
            let mut p = piece.clone();
            for (i, c) in p.chunks_mut(4096).enumerate() {
                c[..8].copy_from_slice(&((off + i * 4096) as u64).to_le_bytes());
                // no dedup
            }
            ws.write(f, off as u64, &p)?;
        }
    }
    ws.close()?;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn bench_roots(base: &Path, quick: bool) -> Result<()> {
    let sizes: Vec<(&str, usize, usize)> = if quick {
        vec![("1 file", 1, 0), ("10,000 files", 10_000, 0)]
    } else {
        vec![
            ("1 file", 1, 0),
            ("10,000 files", 10_000, 0),
            ("100,000 files", 100_000, 0),
            ("1 GiB of data", 1, 1 << 30),
        ]
    };
    let iters = 300;
    let store = Store::open(&base.join("roots"))?;
    let mut states = Vec::new();
    for (label, files, data) in sizes {
        let id = Uuid::new_v4();
        populate(&store, id, files, data)?;
        let snap = Uuid::new_v4();
        roots::snapshot(&store, id, snap, &[])?;
        states.push((label, id, snap, [Vec::new(), Vec::new(), Vec::new()]));
    }
    // Let RocksDB finish flushing and compacting what the build wrote, then interleave the
    // sizes so background noise falls on all of them alike.
    store.compact()?;
    for _ in 0..iters {
        for (_, id, snap, times) in states.iter_mut() {
            let t = Instant::now();
            roots::clone_workspace(&store, *id, Uuid::new_v4(), &[])?;
            times[0].push(t.elapsed());
            let t = Instant::now();
            roots::snapshot(&store, *id, Uuid::new_v4(), &[])?;
            times[1].push(t.elapsed());
            let t = Instant::now();
            roots::restore(&store, *id, *snap, &[])?;
            times[2].push(t.elapsed());
        }
    }
    println!(
        "\n### Clone, snapshot and restore latency ({iters} each, ms; {})\n",
        machine()
    );
    println!("| workspace | clone p50 | clone p99 | snapshot p50 | snapshot p99 | restore p50 | restore p99 |");
    println!("|---|---|---|---|---|---|---|");
    let mut p50s = Vec::new();
    for (label, _, _, mut times) in states {
        for v in times.iter_mut() {
            v.sort();
        }
        let [c, s, r] = &times;
        p50s.push((
            label,
            percentile(c, 0.5),
            percentile(s, 0.5),
            percentile(r, 0.5),
        ));
        println!(
            "| {label} | {} | {} | {} | {} | {} | {} |",
            ms(percentile(c, 0.5)),
            ms(percentile(c, 0.99)),
            ms(percentile(s, 0.5)),
            ms(percentile(s, 0.99)),
            ms(percentile(r, 0.5)),
            ms(percentile(r, 0.99))
        );
    }
    let (_, c1, s1, r1) = p50s[0];
    println!("\np50 ratio to the 1-file workspace (clone / snapshot / restore):");
    for (label, c, s, r) in &p50s[1..] {
        let ratio = |a: &Duration, b: &Duration| a.as_secs_f64() / b.as_secs_f64();
        println!(
            "- {label}: {:.2}x / {:.2}x / {:.2}x",
            ratio(c, &c1),
            ratio(s, &s1),
            ratio(r, &r1)
        );
    }
    Ok(())
}

fn bench_write(base: &Path, mib: usize) -> Result<()> {
    let bytes = mib << 20;
    let pieces: Vec<Vec<u8>> = (0..mib)
        .map(|i| random_bytes(1 << 20, i as u64 + 1))
        .collect();

    // Native: the same bytes to a plain file on the same disk, fsync at the end.
    let native_path = base.join("native.bin");
    let t = Instant::now();
    {
        let mut f = std::fs::File::create(&native_path)?;
        for p in &pieces {
            f.write_all(p)?;
        }
        f.sync_all()?;
    }
    let native = t.elapsed();
    std::fs::remove_file(&native_path)?;

    let store = Store::open(&base.join("write"))?;
    let id = Uuid::new_v4();
    roots::create_workspace(&store, id, &[])?;
    let ws = Workspace::open(store.clone(), id)?;
    let f = new_file(&ws, ROOT_INO, "big")?;
    let t = Instant::now();
    for (i, p) in pieces.iter().enumerate() {
        ws.write(f, (i << 20) as u64, p)?;
    }
    ws.commit(true)?;
    let engine = t.elapsed();

    let mbs = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    println!(
        "\n### Sequential write, {mib} MiB in 1 MiB writes, synced at the end ({})\n",
        machine()
    );
    println!("| path | seconds | MB/s | ratio to native |");
    println!("|---|---|---|---|");
    println!(
        "| native file + fsync | {:.2} | {:.0} | 1.00 |",
        native.as_secs_f64(),
        mbs(native)
    );
    println!(
        "| chaserfs POSIX layer + commit(sync) | {:.2} | {:.0} | {:.2} |",
        engine.as_secs_f64(),
        mbs(engine),
        mbs(engine) / mbs(native)
    );
    Ok(())
}

fn bench_rss(base: &Path, files: usize) -> Result<()> {
    let path = base.join("rss");
    let id = Uuid::new_v4();
    let t = Instant::now();
    {
        let store = Store::open(&path)?;
        populate(&store, id, files, 0)?;
    }
    let build = t.elapsed();
    // The clone and walk run in a fresh process, so its peak RSS is theirs alone.
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["rss-walk", path.to_str().context("path")?, &id.to_string()])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "rss-walk failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "\n### Peak RSS, clone and walk of a {files}-file workspace ({})\n",
        machine()
    );
    println!("| phase | seconds | peak RSS |");
    println!("|---|---|---|");
    println!(
        "| build (another process) | {:.1} | - |",
        build.as_secs_f64()
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

/// Opens the store, clones workspace `id`, walks the clone (readdir + getattr of every entry)
/// and prints a table row with the process's peak RSS.
fn rss_walk(path: &Path, id: Uuid) -> Result<()> {
    let t = Instant::now();
    let store = Store::open(path)?;
    let clone = Uuid::new_v4();
    roots::clone_workspace(&store, id, clone, &[])?;
    let ws = Workspace::open(store.clone(), clone)?;
    let mut seen = 0u64;
    let mut stack = vec![ROOT_INO];
    while let Some(dir) = stack.pop() {
        let mut entries = Vec::new();
        ws.readdir(dir, 0, |e| {
            entries.push(e);
            true
        })?;
        for e in entries {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            let a = ws.getattr(e.ino)?;
            seen += 1;
            if a.kind == FileKind::Directory {
                stack.push(e.ino);
            }
        }
    }
    let walk = t.elapsed();
    let peak = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    drop(ws);
    roots::delete(&store, &[RootId::Workspace(clone)], &[])?;
    println!(
        "| open + clone + walk ({seen} entries, readdir + getattr each) | {:.1} | {} MiB |",
        walk.as_secs_f64(),
        peak / 1024
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().map(String::as_str).unwrap_or("all");
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    let quick = args.iter().any(|a| a == "--quick");
    let base: PathBuf = match flag("--dir") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from("/var/tmp"),
    };
    std::fs::create_dir_all(&base)?;
    let tmp = tempfile::Builder::new()
        .prefix("chaserfs-bench")
        .tempdir_in(&base)?;
    let mib: usize = flag("--mib").map_or(Ok(1024), str::parse)?;
    let files: usize = flag("--files").map_or(Ok(1_000_000), str::parse)?;
    match what {
        "roots" => bench_roots(tmp.path(), quick)?,
        "write" => bench_write(tmp.path(), mib)?,
        "rss" => bench_rss(tmp.path(), files)?,
        "rss-walk" => return rss_walk(Path::new(&args[1]), args[2].parse()?),
        "all" => {
            bench_roots(tmp.path(), quick)?;
            bench_write(tmp.path(), mib)?;
            bench_rss(tmp.path(), files)?;
        }
        other => anyhow::bail!("unknown benchmark {other:?}: roots, write, rss or all"),
    }
    Ok(())
}
