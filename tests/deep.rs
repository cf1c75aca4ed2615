//! Any depth, any width: a chain of directories 100,000 deep and a directory of 1,000,000
//! entries, made through a real mount, go through a diff both ways (pages resumed from their
//! cursors), export streamed into import (paths far longer than the tar header fields), a
//! clone, two restores, a collection and fsck. The daemon's peak memory is reported and
//! bounded, and no log line says corrupt. `CHASERFS_DEEP_DEPTH` and `CHASERFS_DEEP_WIDTH`
//! change the sizes.

mod common;

use std::time::Instant;

use common::{deep_tree, peak_rss_mib, sh, Daemon};
use serde_json::{json, Value};

fn check_through_mount(d: &Daemon, workspace: &str) -> String {
    let (sid, mnt) = d.mount(workspace, workspace);
    let seen = deep_tree::check(&mnt);
    d.unmount(&sid);
    seen
}

/// One page (up to 16 MiB of paths: more than the test client takes, so through curl).
fn diff_page(d: &Daemon, from: &str, to: &str, cursor: &str) -> Value {
    let mut q = format!("from={from}&to={to}");
    if !cursor.is_empty() {
        q += &format!("&cursor={cursor}");
    }
    sh(
        &format!(
            "curl -sSf -o page.json -H 'Authorization: Bearer {}' '{}/v1/workspaces/tree/diff?{q}'",
            d.key, d.url
        ),
        d.dir.path(),
    );
    serde_json::from_slice(&std::fs::read(d.dir.path().join("page.json")).unwrap()).unwrap()
}

#[test]
fn a_chain_100000_deep_and_a_directory_of_a_million_entries() {
    let (depth, width) = deep_tree::size();
    let d = Daemon::start();
    let step = |what: &str, t: Instant| {
        println!(
            "{what}: {:.1} s, daemon peak RSS {} MiB",
            t.elapsed().as_secs_f64(),
            peak_rss_mib(d.pid())
        )
    };
    d.create_workspace("tree");
    let snapshot = |name: &str| {
        let body = json!({"name": name});
        let (s, v) = d.call("POST", "/v1/workspaces/tree/snapshots", Some(body));
        assert_eq!(s, 201, "{v}");
    };
    snapshot("empty");
    let t = Instant::now();
    let (sid, mnt) = d.mount("tree", "tree");
    deep_tree::make(&mnt, depth, width);
    d.unmount(&sid);
    step("made through the mount", t);
    snapshot("full");
    let want = deep_tree::want(depth, width);

    // Diff both ways: each page within its bounds, the next resumed from its cursor, down
    // the chain, far past where a path fits a tar header.
    let t = Instant::now();
    for (from, to, change) in [("empty", "full", "added"), ("full", "empty", "removed")] {
        let mut cursor = String::new();
        let mut deepest = 0;
        for _ in 0..3 {
            let page = diff_page(&d, from, to, &cursor);
            let changes = page["changes"].as_array().unwrap();
            assert!(!changes.is_empty() && changes.len() <= 10_000);
            let bytes: usize = changes
                .iter()
                .map(|c| c["path"].as_str().unwrap().len())
                .sum();
            assert!(bytes <= 17 << 20, "a page of {bytes} bytes of paths");
            let chain = changes
                .iter()
                .filter(|c| c["path"].as_str().unwrap().starts_with("/deep"));
            for c in chain {
                assert_eq!(c["change"], change, "{}", c["path"]);
                let levels = c["path"].as_str().unwrap().matches("/d").count();
                assert!(levels == deepest || levels == deepest + 1, "in path order");
                deepest = levels;
            }
            let Some(next) = page["next_cursor"].as_str() else {
                break;
            };
            cursor = next.to_string();
            assert!(cursor.len() < 600);
        }
        println!("diff {from} -> {to}: 3 pages at most reach {deepest} levels down");
        assert!(deepest > 1000.min(depth - 1));
    }
    step("diffs", t);

    // Export streamed into import: paths up to 2 bytes a level, in PAX records.
    let t = Instant::now();
    let auth = format!("Authorization: Bearer {}", d.key);
    let status = sh(
        &format!(
            "curl -sSf -H '{auth}' '{url}/v1/workspaces/tree/archive?snapshot=full' \
             | curl -sS -o import.json -w '%{{http_code}}' -X POST -T - \
               -H '{auth}' -H 'Content-Type: application/x-tar' \
               '{url}/v1/workspaces/import?name=copy'",
            url = d.url
        ),
        d.dir.path(),
    );
    let imported: Value =
        serde_json::from_slice(&std::fs::read(d.dir.path().join("import.json")).unwrap()).unwrap();
    assert_eq!(status.trim(), "201", "{imported}");
    // The root, wide/ and its entries, deep/, the chain and bottom.
    let files = 1 + 1 + width + 1 + depth + 1;
    assert_eq!(imported["persistence"]["files"], files, "{imported}");
    step("export | import", t);
    assert_eq!(check_through_mount(&d, "copy"), want);

    // A clone, and restores both ways.
    let t = Instant::now();
    let (s, v) = d.call(
        "POST",
        "/v1/workspaces",
        Some(json!({"clone_from": "copy", "name": "clone"})),
    );
    assert_eq!(s, 201, "{v}");
    for snap in ["empty", "full"] {
        let path = format!("/v1/workspaces/tree/snapshots/{snap}/restore");
        let (s, v) = d.call("POST", &path, None);
        assert_eq!(s, 200, "{v}");
    }
    assert_eq!(check_through_mount(&d, "clone"), want);
    assert_eq!(check_through_mount(&d, "tree"), want);
    step("clone, restores and reading back", t);

    // A collection of everything the copies held alone.
    let t = Instant::now();
    for ws in ["clone", "copy"] {
        let (s, v) = d.call("DELETE", &format!("/v1/workspaces/{ws}"), None);
        assert!(s == 200 || s == 204, "{s} {v}");
    }
    let deadline = Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let text = sh(&format!("curl -sSf '{}/metrics'", d.url), d.dir.path());
        let ran = text.lines().any(|l| {
            l.starts_with("chaserfs_gc_duration_seconds_count ")
                && l.rsplit(' ').next().and_then(|n| n.parse::<f64>().ok()) >= Some(1.0)
        });
        if ran || Instant::now() > deadline {
            assert!(ran, "no collection ran");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    step("collection", t);
    let peak = peak_rss_mib(d.pid());
    let log = d.log();
    let mut d = d;
    assert_eq!(d.stop(), 0);
    let t = Instant::now();
    let report = common::fsck(&d.data_dir()).expect("fsck finds the store clean");
    println!("fsck: {:.1} s: {report}", t.elapsed().as_secs_f64());
    assert!(!log.contains("corrupt"), "{log}");
    println!("daemon peak RSS: {peak} MiB");
    assert!(peak < 2048, "the daemon peaked at {peak} MiB");
}
