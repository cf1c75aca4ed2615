//! `chaserfs bench` against a real daemon: every operation measured, the table, --json and
//! --plot, a workspace in use refused, and nothing left behind, also after Ctrl-C; workspaces
//! of N files (--files) with several client counts, beside the baselines (--baseline).

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::Value;

fn bench(d: &Daemon, args: &[&str]) -> Output {
    Command::new(common::bin())
        .arg("bench")
        .args(["--mount-root", d.mount_root().to_str().unwrap()])
        .args(args)
        .env("CHASER_API_URL", &d.url)
        .env("CHASER_API_KEY", &d.key)
        .output()
        .unwrap()
}

/// Every workspace's name and root hash, and whether any session is active.
fn state(d: &Daemon) -> (Vec<(String, String, u64)>, bool) {
    let (s, v) = d.call("GET", "/v1/workspaces?limit=100", None);
    assert_eq!(s, 200, "{v}");
    let list = v["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["name"].as_str().unwrap_or("-").to_string(),
                w["persistence"]["root_hash"].to_string(),
                w["persistence"]["snapshot_count"].as_u64().unwrap(),
            )
        })
        .collect();
    let (_, s) = d.call("GET", "/v1/sessions", None);
    let active = s["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["status"] == "active");
    (list, active)
}

fn workspace_with_files(d: &Daemon) {
    d.create_workspace("src");
    let (id, path) = d.mount("src", "src");
    for i in 0..20 {
        std::fs::write(path.join(format!("f{i}")), format!("file {i}\n")).unwrap();
    }
    d.unmount(&id);
}

#[test]
fn bench_measures_every_operation_and_leaves_nothing_behind() {
    let d = Daemon::start();
    workspace_with_files(&d);
    let before = state(&d);
    let svg = d.dir.path().join("bench.svg");

    let out = bench(
        &d,
        &[
            "--workspace",
            "src",
            "--count",
            "12",
            "--clients",
            "3",
            "--json",
            "--plot",
            svg.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["results"].as_array().unwrap();
    let ops: Vec<&str> = rows.iter().map(|r| r["op"].as_str().unwrap()).collect();
    assert_eq!(
        ops,
        [
            "clone",
            "snapshot",
            "restore",
            "create",
            "delete",
            "session start",
            "session end"
        ]
    );
    for r in rows {
        assert_eq!(r["ops"], 12, "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        let q: Vec<f64> = ["p50_ms", "p95_ms", "p99_ms", "max_ms"]
            .iter()
            .map(|k| r[*k].as_f64().unwrap())
            .collect();
        assert!(q[0] > 0.0 && q.windows(2).all(|w| w[0] <= w[1]), "{r}");
        assert!(r["ops_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    }
    // 12 clones, 12 creates, the source's copy and 3 session workspaces; the 12 deleted
    // by the delete step are gone already.
    assert_eq!(report["cleaned_up_workspaces"], 28, "{report}");
    assert_eq!(state(&d), before, "the bench left something behind");

    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg"), "{}", &plot[..100]);
    for label in [
        "latency over time",
        "latency histogram",
        "clone",
        "session end",
    ] {
        assert!(plot.contains(label), "{label} missing from the plot");
    }
    assert!(plot.matches("<circle").count() >= 7 * 12, "a dot per call");
    assert!(
        plot.contains("clients 3 | 12 calls per operation | from src | 0 of 84 calls failed"),
        "the parameters are missing from the plot"
    );

    // The table, for one operation.
    let out = bench(&d, &["--ops", "clone", "--count", "5"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("OP ") && header.contains("P99 MS"),
        "{text}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[..3], ["clone", "1", "5"], "{text}");
    assert_eq!(*row.last().unwrap(), "0", "errors: {text}");
    assert_eq!(state(&d), before);
}

/// Calls that fail make the run fail: sessions under a mount root the daemon refuses.
#[test]
fn bench_exits_non_zero_when_calls_fail() {
    let d = Daemon::start();
    let out = Command::new(common::bin())
        .args([
            "bench",
            "--mount-root",
            "/nonexistent-root",
            "--ops",
            "clone,session",
        ])
        .args(["--count", "3", "--json"])
        .env("CHASER_API_URL", &d.url)
        .env("CHASER_API_KEY", &d.key)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("3 of 6 operations failed"), "{stderr}");
    // The report is still printed: the clones worked, every session start failed, and no end
    // was attempted.
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors: Vec<(String, u64, u64)> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let op = r["op"].as_str().unwrap().to_string();
            (
                op,
                r["ops"].as_u64().unwrap(),
                r["errors"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        [
            ("clone".into(), 3, 0),
            ("session start".into(), 0, 3),
            ("session end".into(), 0, 0)
        ],
        "{report}"
    );
}

#[test]
fn bench_refuses_a_workspace_in_use_and_cleans_up_after_ctrl_c() {
    let d = Daemon::start();
    workspace_with_files(&d);
    let before = state(&d);

    let (session, _) = d.mount("src", "busy");
    let out = bench(&d, &["--workspace", "src", "--count", "3"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has an active session"),
        "{out:?}"
    );
    d.unmount(&session);
    assert_eq!(state(&d), before, "a refused bench made something");

    // Ctrl-C while sessions start and end, after a phase of clones: the bench stops, ends
    // its session, deletes what it made, and exits 130.
    let mut child = Command::new(common::bin())
        .args(["bench", "--workspace", "src", "--duration", "3"])
        .args(["--ops", "clone,session"])
        .args(["--mount-root", d.mount_root().to_str().unwrap()])
        .env("CHASER_API_URL", &d.url)
        .env("CHASER_API_KEY", &d.key)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !state(&d).1 {
        assert!(t0.elapsed() < Duration::from_secs(60), "no session started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "bench ignored Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130));
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("session start") && text.contains("clone"),
        "{text}"
    );
    assert_eq!(
        state(&d),
        before,
        "Ctrl-C left the bench's workspaces behind"
    );
}

#[test]
fn bench_fills_workspaces_of_n_files_and_sets_rows_against_the_baselines() {
    let d = Daemon::start();
    let before = state(&d);
    let dir = d.dir.path().to_str().unwrap();
    let out = bench(
        &d,
        &[
            "--files",
            "1,300",
            "--clients",
            "1,2",
            "--ops",
            "clone,restore",
            "--count",
            "4",
            "--baseline",
            "--baseline-dir",
            dir,
            "--json",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("filled a workspace with 300 files"),
        "{stderr}"
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows: Vec<(&str, u64, Option<u64>)> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["ops"], 4, "{r}");
            assert_eq!(r["errors"], 0, "{r}");
            if r["op"] != "GET /healthz" {
                assert!(r["x_http_floor"].as_f64().unwrap() > 0.0, "{r}");
                assert!(r["x_native_cp_a"].as_f64().unwrap() > 0.0, "{r}");
            }
            let op = r["op"].as_str().unwrap();
            (op, r["clients"].as_u64().unwrap(), r["files"].as_u64())
        })
        .collect();
    let mut expected = Vec::new();
    for clients in [1, 2] {
        expected.push(("GET /healthz", clients, None));
        for files in [1, 300] {
            expected.push(("clone", clients, Some(files)));
            expected.push(("restore", clients, Some(files)));
        }
    }
    assert_eq!(rows, expected);
    assert_eq!(report["clients"], serde_json::json!([1, 2]));
    let native = report["baseline"]["native_cp_a"].as_array().unwrap();
    assert_eq!(native.len(), 2, "{report}");
    assert!(native.iter().all(|n| n["ms"].as_f64().unwrap() > 0.0));
    assert_eq!(
        report["baseline"]["http_floor"].as_array().unwrap().len(),
        2
    );
    // Per size: the source and a clone per client (2); 4 clones per row of clones.
    assert_eq!(report["cleaned_up_workspaces"], 2 * 3 + 4 * 4, "{report}");
    assert_eq!(state(&d), before, "the bench left something behind");
}

/// The table with --files and --baseline: a FILES column, the two ratio columns, the
/// baselines and the sizes' comparison under it; no native tree left behind.
#[test]
fn bench_table_shows_sizes_and_baselines() {
    let d = Daemon::start();
    let before = state(&d);
    let dir = d.dir.path().to_str().unwrap();
    let out = bench(
        &d,
        &[
            "--files",
            "1,50",
            "--ops",
            "clone",
            "--count",
            "3",
            "--baseline",
            "--baseline-dir",
            dir,
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let header = text.lines().next().unwrap();
    assert!(
        header.starts_with("OP ") && header.contains(" FILES ") && header.ends_with("P50/CP -A"),
        "{text}"
    );
    for line in [
        "baseline, HTTP floor",
        "baseline, native cp -a",
        "against the 1-file workspace",
        "50 files, clone, 1 client: p50 ",
    ] {
        assert!(text.contains(line), "{line} missing: {text}");
    }
    let left: Vec<_> = std::fs::read_dir(d.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("-native-"))
        .collect();
    assert!(left.is_empty(), "native trees left behind: {left:?}");
    assert_eq!(state(&d), before);
}
