//! Third-party conformance suites on a real mounted workspace: pjdfstest (POSIX semantics,
//! every test that passes on ext4 here must pass, exceptions listed with reasons in
//! tests/conformance/pjdfstest.toml) and fsx (100,000 random operations with mmap, truncate,
//! fallocate, punch-hole and copy_file_range, checked against fsx's own model of the file).
//! Both are installed by scripts/setup.sh (`cargo install --locked`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Daemon;

fn tool(name: &str) -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cargo_bin = PathBuf::from(home).join(".cargo/bin").join(name);
    assert!(
        cargo_bin.exists(),
        "{name} is not installed: run scripts/setup.sh"
    );
    cargo_bin
}

fn conf(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/conformance")
        .join(name)
}

#[test]
fn pjdfstest_passes_on_a_mounted_workspace() {
    let d = Daemon::start();
    d.create_workspace("pjd");
    let (sid, mnt) = d.mount("pjd", "pjd");
    let out = Command::new(tool("pjdfstest"))
        .arg("-c")
        .arg(conf("pjdfstest.toml"))
        .arg("-p")
        .arg(&mnt)
        .current_dir(&mnt)
        .env("RUST_BACKTRACE", "0")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let failed: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("FAILED") || l.contains("PASSED UNEXPECTEDLY"))
        .collect();
    let summary = text
        .lines()
        .rev()
        .find(|l| l.starts_with("Summary:"))
        .unwrap_or("no summary");
    println!("pjdfstest: {summary}");
    assert!(
        out.status.success() && failed.is_empty(),
        "pjdfstest: {summary}\n{}\n{}",
        failed.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    // ext4 here: 383 passed, 15 skipped of 398; see README for the one extra skip.
    let passed: usize = summary
        .split(", ")
        .find_map(|p| p.strip_suffix(" passed")?.parse().ok())
        .unwrap_or(0);
    assert!(passed >= 380, "only {passed} passed: {summary}");
    d.unmount(&sid);
}

/// fsx 0.3.2 sometimes draws a zero-length posix_fallocate, which Linux rejects with EINVAL
/// before any filesystem sees it (ext4 here stops the same way on the same seed); fsx then
/// stops with "does not support posix_fallocate". Such a run proves nothing either way.
fn stopped_on_zero_length_fallocate(output: &str) -> bool {
    output.contains("does not support posix_fallocate")
        && output
            .lines()
            .last()
            .is_some_and(|l| l.contains("POSIX_FALLOCATE") && l.contains(" 0x0 bytes)"))
}

#[test]
fn fsx_runs_a_hundred_thousand_operations_clean() {
    let d = Daemon::start();
    d.create_workspace("fsx");
    let (sid, mnt) = d.mount("fsx", "fsx");
    let first: u64 = std::env::var("CHASERFS_FSX_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand_seed);
    // CHASERFS_FSX_OPS: a longer run (1,000,000 for the one reported in the notes).
    let ops: u64 = std::env::var("CHASERFS_FSX_OPS").map_or(100_000, |s| s.parse().unwrap());
    room_for_leaked_mappings(ops);
    let artifacts = d.dir.path().join("fsx-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let config = fsx_config(ops, &artifacts);
    for (attempt, seed) in (first..first + 8).enumerate() {
        println!("fsx: seed {seed} (replay with CHASERFS_FSX_SEED={seed})");
        let file = mnt.join(format!("fsx-{attempt}.bin"));
        let out = Command::new(tool("fsx"))
            .args(["-N", &ops.to_string(), "-S", &seed.to_string(), "-f"])
            .arg(&config)
            .arg("-P")
            .arg(&artifacts)
            .arg(&file)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() && text.contains("All operations completed A-OK!") {
            d.unmount(&sid);
            return;
        }
        assert!(
            stopped_on_zero_length_fallocate(&text),
            "fsx failed with seed {seed}:\n{}",
            text.lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
        println!("fsx: seed {seed} drew a zero-length posix_fallocate (EINVAL on any Linux filesystem); next seed");
    }
    panic!("fsx drew a zero-length posix_fallocate on 8 seeds in a row");
}

/// The fsx configuration for a run of `ops`. Past the default length, fsx's zero-length
/// posix_fallocate (see above) is all but certain to be drawn, so a long run turns that
/// operation off; fallocate stays covered by punch_hole, and by the default run. And a long
/// run draws mapreads less often, so that it leaks no more mappings than the default run
/// (see below): every mapping fsx holds slows each later write and truncate of the file, on
/// any filesystem (natively on ext4 here, fsx's own rate halves within two minutes), and a
/// long run at the default weight would measure fsx, not the filesystem.
fn fsx_config(ops: u64, dir: &std::path::Path) -> PathBuf {
    const DEFAULT_OPS: u64 = 100_000;
    let default = conf("fsx.toml");
    if ops <= DEFAULT_OPS {
        return default;
    }
    let mapread = 5.0 * DEFAULT_OPS as f64 / ops as f64;
    let text = std::fs::read_to_string(&default).unwrap();
    assert!(text.contains("posix_fallocate = 3") && text.contains("mapread = 5"));
    let long = dir.join("fsx-long.toml");
    std::fs::write(
        &long,
        text.replace("posix_fallocate = 3", "posix_fallocate = 0")
            .replace("mapread = 5", &format!("mapread = {mapread:.3}")),
    )
    .unwrap();
    println!(
        "fsx: {ops} operations, posix_fallocate off (fsx 0.3.2 draws zero lengths), \
         mapread weight {mapread:.3} (its leaked mappings as many as in a default run)"
    );
    long
}

/// fsx 0.3.2 never unmaps what a mapread maps (about one operation in ten with
/// `fsx.toml`'s weights), and mmap answers ENOMEM once a process holds
/// `vm.max_map_count` mappings (65,530 by default): past ~600,000 operations fsx fails on
/// any filesystem. Raises the limit (never lowers it) where a run of `ops` needs more: a
/// run of the default length does not.
fn room_for_leaked_mappings(ops: u64) {
    let path = "/proc/sys/vm/max_map_count";
    let limit: u64 = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    // An eighth of the operations, and the process's own mappings.
    let wanted = ops / 8 + 10_000;
    if limit < wanted {
        std::fs::write(path, wanted.to_string())
            .unwrap_or_else(|e| panic!("raising {path} to {wanted} for fsx's mappings: {e}"));
    }
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        % 1_000_000_007
}
