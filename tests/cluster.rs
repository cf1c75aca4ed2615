//! Cluster mode, end to end: 3 etcd members and 3 Garage nodes (`scripts/cluster.sh`) and
//! two chaserfs hosts on loopback, all real processes. Each test has its own stores.
//!
//! Run by a plain `cargo test` where etcd and Garage are installed
//! (`scripts/install-cluster-stores.sh`); elsewhere each test prints one line saying it is
//! skipped and why, and passes, unless `CHASERFS_REQUIRE_CLUSTER=1` (CI) makes that a failure.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::stores::{garage_bin, signal, Stores};
use common::{Daemon, LoopDisk, Options};
use serde_json::{json, Value};

const KEY: &str = "chs_cluster_test_key";
/// The key of a second account, `other`.
const OTHER_KEY: &str = "chs_cluster_other_key";
/// Short, so failover tests are quick; the default is 10 s.
const LEASE_TTL: u64 = 3;

impl Stores {
    /// A chaserfs host of this cluster.
    fn host(&self, name: &str, extra: &[&str]) -> Daemon {
        Daemon::start_with(self.host_options(name, extra, None))
    }

    /// Sends `sig` to every Garage node (SIGSTOP: the object store stops answering).
    fn signal_garage(&self, sig: i32) {
        for i in 1..=3 {
            signal(self.pid(&format!("GARAGE_PID_{i}")), sig);
        }
    }

    /// A host whose data dir (its cache of objects) is `data_dir`.
    fn host_in(&self, name: &str, extra: &[&str], data_dir: Option<PathBuf>) -> Daemon {
        Daemon::start_with(self.host_options(name, extra, data_dir))
    }

    fn host_options(&self, name: &str, extra: &[&str], data_dir: Option<PathBuf>) -> Options {
        let mut args: Vec<String> = [
            "--s3-endpoint",
            self.var("CHASER_S3_ENDPOINT"),
            "--s3-bucket",
            self.var("CHASER_S3_BUCKET"),
            "--etcd-endpoints",
            self.var("CHASER_ETCD_ENDPOINTS"),
            "--etcd-prefix",
            &self.prefix,
            "--host-name",
            name,
            "--lease-ttl",
            &LEASE_TTL.to_string(),
            "--api-keys-file",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let keys = self.dir.path().join("keys");
        std::fs::write(&keys, format!("default {KEY}\nother {OTHER_KEY}\n")).unwrap();
        args.push(keys.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        Options {
            args,
            env: ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
                .iter()
                .map(|k| (k.to_string(), self.var(k).to_string()))
                .collect(),
            key: Some(KEY.into()),
            data_dir,
        }
    }

    /// Bytes the bucket holds, as Garage counts them (its admin API's JSON, exact).
    fn bucket_bytes(&self) -> u64 {
        let out = Command::new(garage_bin().expect("garage"))
            .args(["-c"])
            .arg(self.dir.path().join("garage1.toml"))
            .args([
                "json-api",
                "GetBucketInfo",
                r#"{"globalAlias": "chaserfs"}"#,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "garage json-api GetBucketInfo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let info: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
        });
        info["bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("no bytes in GetBucketInfo's answer: {info}"))
    }

    /// The bucket's size once `done` holds of it (Garage updates its counters shortly after
    /// writes and deletes); panics saying `what` it waited for, and the last size, if that
    /// takes more than three minutes (on a loaded machine its counters lagged a deletion by
    /// over a minute once).
    fn wait_bucket_bytes(&self, what: &str, done: impl Fn(u64) -> bool) -> u64 {
        let t = Instant::now();
        loop {
            let n = self.bucket_bytes();
            if done(n) {
                return n;
            }
            assert!(
                t.elapsed() < Duration::from_secs(180),
                "timed out after {:?} waiting for {what}: the bucket holds {n} bytes",
                t.elapsed()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Writes `data` to `path` and fsyncs it: acknowledged once this returns.
fn write_synced(path: &Path, data: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

/// The sum of a metric's samples in a `/metrics` text: every series whose line starts with
/// `series` (a name, or a name and its labels).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

const S3_GETS: &str = "chaserfs_cluster_request_duration_seconds_count{store=\"s3\",op=\"get\"}";

fn start_session(d: &Daemon, ws: &str, sub: &str) -> (u16, Value, PathBuf) {
    let path = d.mount_root().join(sub);
    let (s, v) = d.call(
        "POST",
        "/v1/sessions",
        Some(json!({"workspace": ws, "mountpoint": path})),
    );
    (s, v, path)
}

#[test]
fn hosts_serve_the_same_workspaces() {
    let Some(stores) = Stores::start_or_skip(&[]) else {
        return;
    };
    let a = stores.host("host-a", &[]);
    let b = stores.host("host-b", &[]);

    // Made on one host, seen and changed on the other.
    a.create_workspace("alpha");
    let (s, v) = b.call("GET", "/v1/workspaces/alpha", None);
    assert_eq!(s, 200, "{v}");
    let (s, v) = b.call(
        "POST",
        "/v1/workspaces",
        Some(json!({"clone_from": "alpha", "name": "alpha-clone"})),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = a.call("GET", "/v1/workspaces/alpha-clone", None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["cloned_from"],
        b.call("GET", "/v1/workspaces/alpha", None).1["id"]
    );

    // Names are unique across hosts.
    let (s, v) = b.call(
        "POST",
        "/v1/workspaces",
        Some(json!({"session_type": "sandbox", "name": "ALPHA"})),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("workspace_name_taken")),
        "{v}"
    );

    // Files written through a session on A, snapshotted on B, restored on A.
    let (sid, path) = a.mount("alpha", "alpha");
    write_synced(&path.join("one.txt"), b"first version");
    a.unmount(&sid);
    let (s, v) = b.call(
        "POST",
        "/v1/workspaces/alpha/snapshots",
        Some(json!({"name": "v1"})),
    );
    assert_eq!(s, 201, "{v}");
    let (sid, path) = b.mount("alpha", "alpha");
    assert_eq!(
        std::fs::read(path.join("one.txt")).unwrap(),
        b"first version"
    );
    write_synced(&path.join("one.txt"), b"second version");
    b.unmount(&sid);
    let (s, v) = a.call("POST", "/v1/workspaces/alpha/snapshots/v1/restore", None);
    assert_eq!(s, 200, "{v}");
    let (sid, path) = a.mount("alpha", "alpha2");
    assert_eq!(
        std::fs::read(path.join("one.txt")).unwrap(),
        b"first version"
    );

    // A snapshot mounted read-only on B while A writes the workspace; held on B's lease, so
    // A cannot delete it meanwhile.
    let ro = b.mount_root().join("alpha-v1");
    let (s, v) = b.call(
        "POST",
        "/v1/sessions",
        Some(json!({"workspace": "alpha", "snapshot": "v1", "mountpoint": ro})),
    );
    assert_eq!(s, 201, "{v}");
    let ro_session = v["id"].as_str().unwrap().to_string();
    assert_eq!(std::fs::read(ro.join("one.txt")).unwrap(), b"first version");
    let err = std::fs::write(ro.join("one.txt"), b"no").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let (s, v) = a.call("DELETE", "/v1/workspaces/alpha/snapshots/v1", None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("snapshot_mounted")),
        "{v}"
    );
    b.unmount(&ro_session);

    // Fork N from B of a workspace A has not mounted: all at once, seen on A.
    let (s, v) = b.call(
        "POST",
        "/v1/workspaces/alpha-clone/clone",
        Some(json!({"count": 40})),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = a.call("GET", "/v1/workspaces/alpha-clone-40", None);
    assert_eq!(s, 200, "{v}");

    // One writer per workspace: while A has it mounted, B can neither mount nor delete it.
    let (s, v, _) = start_session(&b, "alpha", "alpha-b");
    assert_eq!(s, 409, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.ends_with(&format!("{sid}, on host host-a")), "{v}");
    // Any host says which host serves the session, and filters by host.
    let (s, v) = b.call("GET", "/v1/sessions?workspace=alpha&status=active", None);
    assert_eq!(s, 200, "{v}");
    let active = v["sessions"].as_array().unwrap();
    assert_eq!(active.len(), 1, "{v}");
    assert_eq!(
        (&active[0]["id"], &active[0]["host"]),
        (&json!(sid), &json!("host-a"))
    );
    let (_, v) = b.call("GET", "/v1/sessions?host=host-b&status=active", None);
    assert_eq!(v["sessions"], json!([]), "{v}");
    let (s, v) = b.call("DELETE", "/v1/workspaces/alpha?force=true", None);
    assert_eq!(s, 409, "{v}");
    a.unmount(&sid);
    let (s, v) = b.call("DELETE", "/v1/workspaces/alpha", None);
    assert_eq!(s, 204, "{v}");
    let (s, _) = a.call("GET", "/v1/workspaces/alpha", None);
    assert_eq!(s, 404);
}

/// SIGKILL the host in the middle of a session: after the lease TTL another host mounts the
/// workspace at the last acknowledged commit, every fsynced file intact.
#[test]
fn a_killed_host_s_workspace_moves_to_another_host() {
    let Some(stores) = Stores::start_or_skip(&[]) else {
        return;
    };
    let mut a = stores.host("host-a", &["--commit-interval", "3600"]);
    let b = stores.host("host-b", &[]);
    a.create_workspace("work");
    let (_, path) = a.mount("work", "work");
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let data = common::noise(i, 100_000 + i as usize * 7919);
        write_synced(&path.join(format!("f{i}")), &data);
        acknowledged.push(data);
    }
    // Written but never synced (and no periodic commit): may be lost, must not corrupt.
    std::fs::write(path.join("unsynced"), b"maybe").unwrap();

    a.kill();
    let killed = Instant::now();
    let (s, v, _) = start_session(&b, "work", "work-b");
    assert_eq!(
        s, 409,
        "the dead host's hold lasts until its lease expires: {v}"
    );
    let (session, path) = loop {
        let (s, v, path) = start_session(&b, "work", "work-b");
        if s == 201 {
            break (v["id"].as_str().unwrap().to_string(), path);
        }
        assert_eq!(s, 409, "{v}");
        assert!(
            killed.elapsed() < Duration::from_secs(LEASE_TTL * 4),
            "no failover: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let failover = killed.elapsed();
    println!("failover after SIGKILL: {failover:?} (lease TTL {LEASE_TTL} s)");
    // Not before the lease expired: it was renewed at most a third of the TTL before the kill.
    assert!(failover >= Duration::from_secs(LEASE_TTL) * 2 / 3 - Duration::from_millis(200));
    for (i, data) in acknowledged.iter().enumerate() {
        assert_eq!(
            &std::fs::read(path.join(format!("f{i}"))).unwrap(),
            data,
            "f{i}"
        );
    }
    // The lost session was ended, the new one is the workspace's.
    let (_, ws) = b.call("GET", "/v1/workspaces/work", None);
    assert_eq!(ws["active_session_id"], session.as_str());
    let (_, sessions) = b.call("GET", "/v1/sessions", None);
    let ended = sessions
        .as_array()
        .or_else(|| sessions["sessions"].as_array())
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "ended")
        .count();
    assert_eq!(ended, 1, "{sessions}");
    b.unmount(&session);
}

/// Fencing: a host paused past its lease (as a partition would cut it off) loses the
/// workspace to another host, and when it wakes its commits are refused (fsync answers EIO)
/// instead of overwriting the new host's work.
#[test]
fn a_host_that_lost_its_lease_cannot_commit() {
    let Some(stores) = Stores::start_or_skip(&[]) else {
        return;
    };
    let a = stores.host("host-a", &["--commit-interval", "3600"]);
    let b = stores.host("host-b", &[]);
    a.create_workspace("fenced");
    let (_, path_a) = a.mount("fenced", "fenced");
    write_synced(&path_a.join("before"), b"from A");
    let mut open_on_a = std::fs::File::create(path_a.join("late")).unwrap();

    signal(a.pid(), libc::SIGSTOP);
    let paused = Instant::now();
    let (session_b, path_b) = loop {
        let (s, v, path) = start_session(&b, "fenced", "fenced-b");
        if s == 201 {
            break (v["id"].as_str().unwrap().to_string(), path);
        }
        assert!(paused.elapsed() < Duration::from_secs(LEASE_TTL * 4), "{v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    write_synced(&path_b.join("after"), b"from B");
    signal(a.pid(), libc::SIGCONT);

    // A wakes: its writes land in its overlay, but no commit of it can move the root now.
    open_on_a.write_all(b"A's late write").unwrap();
    let err = open_on_a
        .sync_all()
        .expect_err("a fenced host's fsync must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(std::fs::read(path_b.join("after")).unwrap(), b"from B");
    assert_eq!(std::fs::read(path_b.join("before")).unwrap(), b"from A");
    assert!(!path_b.join("late").exists());
    b.unmount(&session_b);
    let (_, ws) = a.call("GET", "/v1/workspaces/fenced", None);
    assert_eq!(ws["active_session_id"], Value::Null, "{ws}");
}

/// A chunk is stored once in the bucket whichever host writes it.
#[test]
fn identical_data_is_uploaded_once_across_hosts() {
    let Some(stores) = Stores::start_or_skip(&[]) else {
        return;
    };
    let a = stores.host("host-a", &[]);
    let b = stores.host("host-b", &[]);
    let data = common::noise(7, 8 << 20);
    a.create_workspace("one");
    b.create_workspace("two");
    let (sa, pa) = a.mount("one", "one");
    write_synced(&pa.join("big"), &data);
    a.unmount(&sa);
    let after_first =
        stores.wait_bucket_bytes("the bucket to count the first copy", |n| n >= 8 << 20);
    let (sb, pb) = b.mount("two", "two");
    write_synced(&pb.join("copy"), &data);
    // Fresh bytes committed after the copy: once Garage counts them, it has counted what the
    // copy uploaded before them (its counters lag writes; a fixed sleep would guess how long).
    const MARKER: u64 = 2 << 20;
    write_synced(&pb.join("marker"), &common::noise(8, MARKER as usize));
    b.unmount(&sb);
    let after_second = stores.wait_bucket_bytes(
        "the bucket to count the marker written after the second copy",
        |n| n >= after_first + MARKER,
    );
    println!(
        "bucket: {after_first} bytes after the first copy, {after_second} after the second \
         and a {MARKER}-byte marker"
    );
    assert!(
        after_second < after_first + MARKER + (1 << 20),
        "the second copy was stored again: {after_first} -> {after_second} (marker {MARKER})"
    );
    let (sb, pb) = b.mount("one", "one-on-b");
    assert_eq!(std::fs::read(pb.join("big")).unwrap(), data);
    b.unmount(&sb);
}

/// A Garage node down: reads and writes go on (every object is on all three nodes, writes
/// need two). All of S3 unreachable: fsync fails with EIO after the request timeout instead
/// of hanging, nothing is lost, and the next fsync once S3 is back succeeds.
#[test]
fn object_store_faults() {
    let Some(stores) = Stores::start_or_skip(&[]) else {
        return;
    };
    let a = stores.host(
        "host-a",
        // Longer than Garage takes to notice a dead node (requests routed to it stall ~5 s).
        &["--commit-interval", "3600", "--request-timeout", "15"],
    );
    let b = stores.host("host-b", &[]);
    a.create_workspace("faults");
    let (sid, path) = a.mount("faults", "faults");
    write_synced(&path.join("early"), &common::noise(1, 1 << 20));

    let g3 = stores.pid("GARAGE_PID_3");
    signal(g3, libc::SIGKILL);
    let during = common::noise(2, 3 << 20);
    write_synced(&path.join("during"), &during);

    let (g1, g2) = (stores.pid("GARAGE_PID_1"), stores.pid("GARAGE_PID_2"));
    signal(g1, libc::SIGSTOP);
    signal(g2, libc::SIGSTOP);
    let mut f = std::fs::File::create(path.join("stalled")).unwrap();
    f.write_all(&common::noise(3, 1 << 20)).unwrap();
    let (s, ready) = a.call("GET", "/readyz", None);
    assert_eq!(s, 200, "{ready}");
    let t = Instant::now();
    let err = f.sync_all().expect_err("fsync with S3 gone must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    println!("fsync with S3 stopped failed after {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(60));
    // The host says it is not ready, and the metrics count the calls given up.
    let (s, ready) = a.call("GET", "/readyz", None);
    assert_eq!(
        (s, ready["error"]["code"].as_str()),
        (503, Some("cluster_unreachable")),
        "{ready}"
    );
    // Anyone may ask: the answer names no endpoint, bucket or key.
    let said = ready.to_string();
    for secret in ["127.0.0.1", "chaserfs", "packs/"] {
        assert!(!said.contains(secret), "{said}");
    }
    let (_, text) = a.call("GET", "/metrics", None);
    let text = text.as_str().expect("metrics text");
    let failed: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("chaserfs_cluster_request_timeouts_total{store=\"s3\"}")
                || (l.starts_with("chaserfs_cluster_request_errors_total{")
                    && l.contains("store=\"s3\""))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(failed >= 1.0, "{text}");
    signal(g1, libc::SIGCONT);
    signal(g2, libc::SIGCONT);
    f.sync_all().expect("fsync once S3 is back");
    let (s, ready) = a.call("GET", "/readyz", None);
    assert_eq!(s, 200, "{ready}");
    drop(f);
    a.unmount(&sid);

    // Another host, cold, reads everything back with one Garage node still down.
    let (sid, path) = b.mount("faults", "faults-b");
    assert_eq!(std::fs::read(path.join("during")).unwrap(), during);
    assert_eq!(
        std::fs::read(path.join("stalled")).unwrap(),
        common::noise(3, 1 << 20)
    );
    b.unmount(&sid);
}

/// The etcd leader killed: the API answers again once the other two members elect one.
#[test]
fn etcd_leader_loss() {
    let Some(stores) = Stores::start_or_skip(&[]) else {
        return;
    };
    let a = stores.host("host-a", &[]);
    a.create_workspace("before");
    let status = stores.etcdctl(&["endpoint", "status", "-w", "json"]);
    let status: Value = serde_json::from_str(&status).unwrap();
    let leader_id = status[0]["Status"]["leader"].as_u64().unwrap();
    let leader = status
        .as_array()
        .unwrap()
        .iter()
        .position(|m| m["Status"]["header"]["member_id"].as_u64() == Some(leader_id))
        .unwrap();
    signal(
        stores.pid(&format!("ETCD_PID_{}", leader + 1)),
        libc::SIGKILL,
    );
    let killed = Instant::now();
    loop {
        let (s, v) = a.call(
            "POST",
            "/v1/workspaces",
            Some(json!({"session_type": "sandbox", "name": "after"})),
        );
        if s == 201 {
            break;
        }
        // A create whose answer was lost with the leader may have landed: the retry finds
        // the name taken, and the workspace there.
        if v["error"]["code"] == "workspace_name_taken" {
            let (s, v) = a.call("GET", "/v1/workspaces/after", None);
            assert_eq!(s, 200, "{v}");
            break;
        }
        assert_eq!(s, 503, "{v}");
        assert!(killed.elapsed() < Duration::from_secs(30), "{v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "API writes again {:?} after the etcd leader was killed",
        killed.elapsed()
    );
    let (s, v) = a.call("GET", "/v1/workspaces/before", None);
    assert_eq!(s, 200, "{v}");
}

/// A host that never saw a workspace mounts it at once and reads it lazily.
#[test]
fn cold_start_on_another_host() {
    let Some(stores) = Stores::start_or_skip(&[]) else {
        return;
    };
    let a = stores.host("host-a", &[]);
    let b = stores.host("host-b", &[]);
    a.create_workspace("tree");
    let (sid, path) = a.mount("tree", "tree");
    for d in 0..20 {
        std::fs::create_dir(path.join(format!("d{d}"))).unwrap();
        for f in 0..100 {
            std::fs::write(
                path.join(format!("d{d}/f{f}")),
                format!("file {d}/{f}\n").repeat(f + 1),
            )
            .unwrap();
        }
    }
    a.unmount(&sid);
    let t = Instant::now();
    let (sid, path) = b.mount("tree", "tree-b");
    let mounted = t.elapsed();
    let mut n = 0;
    for d in 0..20 {
        for f in 0..100 {
            let text = std::fs::read_to_string(path.join(format!("d{d}/f{f}"))).unwrap();
            assert_eq!(text, format!("file {d}/{f}\n").repeat(f + 1));
            n += 1;
        }
    }
    println!(
        "cold mount {mounted:?}; {n} files read cold in {:?}",
        t.elapsed() - mounted
    );
    assert!(mounted < Duration::from_secs(5), "{mounted:?}");
    b.unmount(&sid);
}

/// The sample Grafana dashboard on two cluster hosts after a short run (A writes, B reads
/// cold, both collect): every panel has data, and the cluster's series count what happened.
#[test]
fn the_sample_dashboard_has_data_on_cluster_hosts() {
    let Some(stores) = Stores::start_or_skip(&[]) else {
        return;
    };
    let a = stores.host("host-a", &["--gc-interval", "1"]);
    let b = stores.host("host-b", &["--gc-interval", "1"]);
    a.create_workspace("dash");
    let (sid, path) = a.mount("dash", "dash");
    let data = common::noise(9, 4 << 20);
    write_synced(&path.join("data"), &data);
    a.unmount(&sid);
    let (sid, path) = b.mount("dash", "dash-b");
    assert!(std::fs::read(path.join("data")).unwrap() == data);
    b.unmount(&sid);

    let value = metric;
    let collections = "chaserfs_gc_duration_seconds_count";
    let (ta, tb) = common::wait_for(Duration::from_secs(60), "a collection", || {
        let (ta, tb) = (a.metrics(), b.metrics());
        (value(&ta, collections) + value(&tb, collections) >= 1.0).then_some((ta, tb))
    });
    let missing = common::panels_without_data(&[&ta, &tb], |_| false);
    assert!(missing.is_empty(), "no data for {missing:?}:\n{ta}\n{tb}");

    let requests = "chaserfs_cluster_request_duration_seconds_count";
    let put = format!("{requests}{{store=\"s3\",op=\"put\"}}");
    let txn = format!("{requests}{{store=\"etcd\",op=\"txn\"}}");
    assert!(value(&ta, &put) >= 1.0, "{ta}");
    assert!(value(&tb, S3_GETS) >= 1.0, "{tb}");
    assert!(value(&ta, &txn) >= 1.0 && value(&tb, &txn) >= 1.0);
    assert_eq!(value(&ta, "chaserfs_cluster_request_errors_total"), 0.0);
    assert!(
        value(&tb, "chaserfs_cluster_cache_misses_total") >= 64.0,
        "{tb}"
    );
    assert!(value(&tb, "chaserfs_cluster_cache_limit_bytes") > 0.0);
    assert_eq!(value(&tb, "chaserfs_cluster_leases_lost_total"), 0.0);
    // Renewed every third of the lease TTL (3 s here).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let renewed = value(&tb, "chaserfs_cluster_lease_renewed_timestamp_seconds");
    assert!(now - renewed < 10.0, "renewed at {renewed}, now {now}");
}

/// A host asked to warm a workspace ahead of a session holds its whole tree and data: the
/// session then starts and reads every file with the object store stopped (a read that still
/// needed it would stall and fail). A host that lacks the tree starts fetching it at session
/// start too.
#[test]
fn a_warmed_host_reads_with_the_object_store_stopped() {
    let Some(stores) = Stores::start_or_skip(&[]) else {
        return;
    };
    let a = stores.host("host-a", &[]);
    let b = stores.host("host-b", &["--request-timeout", "5"]);
    a.create_workspace("warm");
    let (sid, path) = a.mount("warm", "warm");
    for d in 0..10 {
        std::fs::create_dir(path.join(format!("d{d}"))).unwrap();
        for f in 0..100 {
            std::fs::write(
                path.join(format!("d{d}/f{f}")),
                format!("{d}/{f}\n").repeat(f + 1),
            )
            .unwrap();
        }
    }
    let big = common::noise(5, 6 << 20);
    write_synced(&path.join("big"), &big);
    a.unmount(&sid);

    let (s, v) = b.call("POST", "/v1/workspaces/warm/warm", None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["cluster"], true, "{v}");
    assert!(v["nodes"].as_u64().unwrap() > 0, "{v}");
    // Every file's chunk, and the big file's 96.
    assert!(v["chunks"].as_u64().unwrap() >= 1000 + 96, "{v}");
    assert!(v["chunk_bytes"].as_u64().unwrap() >= 6 << 20, "{v}");
    let (s, e) = b.call("POST", "/v1/workspaces/nope/warm", None);
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("workspace_not_found")),
        "{e}"
    );

    stores.signal_garage(libc::SIGSTOP);
    let (sid, path) = b.mount("warm", "warm-b");
    let read = std::panic::catch_unwind(|| {
        for d in 0..10 {
            for f in 0..100 {
                let text = std::fs::read_to_string(path.join(format!("d{d}/f{f}"))).unwrap();
                assert_eq!(text, format!("{d}/{f}\n").repeat(f + 1));
            }
        }
        assert!(
            std::fs::read(path.join("big")).unwrap() == big,
            "big differs"
        );
    });
    stores.signal_garage(libc::SIGCONT);
    read.expect("a warmed workspace read with the object store stopped");
    b.unmount(&sid);
}

/// Warm-ups take turns on a host: while one of an account's waits or runs, its second gets
/// 503 `warm_busy`, and another account's waits for its turn and is served (with one slot per
/// host it got 503 too, so a tenant warming again and again kept everyone else out).
#[test]
fn warm_ups_take_turns_by_account() {
    let Some(stores) = Stores::start_or_skip(&[]) else {
        return;
    };
    let a = stores.host("host-a", &[]);
    let b = stores.host("host-b", &["--request-timeout", "30"]);
    for (key, name) in [(KEY, "mine"), (OTHER_KEY, "theirs")] {
        let body = json!({"session_type": "sandbox", "name": name});
        let (s, v) = a.call_as(key, "POST", "/v1/workspaces", Some(body));
        assert_eq!(s, 201, "{v}");
        let mountpoint = a.mount_root().join(name);
        let body = json!({"workspace": name, "mountpoint": mountpoint});
        let (s, v) = a.call_as(key, "POST", "/v1/sessions", Some(body));
        assert_eq!(s, 201, "{v}");
        write_synced(&mountpoint.join("f"), name.as_bytes());
        let session = format!("/v1/sessions/{}", v["id"].as_str().unwrap());
        let (s, v) = a.call_as(key, "DELETE", &session, None);
        assert_eq!(s, 200, "{v}");
    }

    stores.signal_garage(libc::SIGSTOP);
    let b = Arc::new(b);
    let warm = |key: &'static str, workspace: &'static str| {
        let b = b.clone();
        std::thread::spawn(move || {
            b.call_as(
                key,
                "POST",
                &format!("/v1/workspaces/{workspace}/warm"),
                None,
            )
        })
    };
    // While the object store is stopped, the first of one account's two warm-ups cannot end:
    // the second is refused as soon as both are in, and only then does the other account ask.
    let ordered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mine = [warm(KEY, "mine"), warm(KEY, "mine")];
        let refused = common::wait_for(Duration::from_secs(20), "one refused", || {
            mine.iter().position(|c| c.is_finished())
        });
        let other = warm(OTHER_KEY, "theirs");
        std::thread::sleep(Duration::from_millis(300));
        assert!(!other.is_finished(), "the other account waits for its turn");
        (mine, refused, other)
    }));
    stores.signal_garage(libc::SIGCONT);
    let (mine, refused, other) = ordered.expect("the warm-ups' order");
    let [first, second] = mine.map(|c| c.join().unwrap());
    let (busy, served) = match refused {
        0 => (first, second),
        _ => (second, first),
    };
    assert_eq!(
        (busy.0, busy.1["error"]["code"].as_str()),
        (503, Some("warm_busy")),
        "{}",
        busy.1
    );
    assert_eq!(served.0, 200, "{}", served.1);
    let other = other.join().unwrap();
    assert_eq!(other.0, 200, "the other account's warm-up: {}", other.1);
    assert_eq!(other.1["cluster"], true, "{}", other.1);
}

/// A large write goes up to the object store while it is written, before its fsync; a
/// collection that deletes those packs before the fsync (no root refers to them yet) only
/// makes the fsync send them again: the other host reads every byte.
#[test]
fn a_large_write_goes_up_before_its_fsync_and_a_collection_cannot_lose_it() {
    let Some(stores) = Stores::start_or_skip(&[]) else {
        return;
    };
    let quiet = ["--gc-interval", "0", "--commit-interval", "3600"];
    let a = stores.host("host-a", &quiet);
    let b = stores.host("host-b", &quiet);
    a.create_workspace("ahead");
    let (sid, path) = a.mount("ahead", "ahead");
    let data = common::noise(21, 112 << 20);
    let src = stores.dir.path().join("ahead-src");
    std::fs::write(&src, &data).unwrap();
    // O_DIRECT: the bytes reach the daemon now, not when the page cache writes them back;
    // and no fsync, so no commit.
    let dd = Command::new("dd")
        .arg(format!("if={}", src.display()))
        .arg(format!("of={}", path.join("big").display()))
        .args(["bs=1M", "oflag=direct", "status=none"])
        .output()
        .unwrap();
    assert!(
        dd.status.success(),
        "{}",
        String::from_utf8_lossy(&dd.stderr)
    );
    let sent = stores.wait_bucket_bytes("an upload ahead of the fsync", |n| n >= 64 << 20);
    println!("{} MiB in the bucket before any fsync", sent >> 20);

    let report = collect(&stores);
    assert!(report["deleted_packs"].as_u64().unwrap() >= 1, "{report}");

    std::fs::File::open(path.join("big"))
        .unwrap()
        .sync_all()
        .expect("the fsync sends what the collection deleted again");
    a.unmount(&sid);
    let (sid, path) = b.mount("ahead", "ahead-b");
    assert!(
        std::fs::read(path.join("big")).unwrap() == data,
        "B reads other bytes"
    );
    b.unmount(&sid);
    let (ok, out) = stores.cli(&["fsck"]);
    assert!(ok, "cluster fsck: {out}");
}

/// A file whose chunks reached the daemon out of order (the kernel's write-back and parallel
/// writers interleave them; here its two halves, written a MiB of each at a time) lies
/// interleaved in its packs. A cold host reads it back with a request per pack, each pack
/// fetched whole, not a request per MiB of it.
#[test]
fn an_interleaved_file_reads_back_cold_a_pack_per_request() {
    let Some(stores) = Stores::start_or_skip(&[]) else {
        return;
    };
    let quiet = ["--gc-interval", "0", "--commit-interval", "3600"];
    let a = stores.host("host-a", &quiet);
    let b = stores.host("host-b", &quiet);
    a.create_workspace("mixed");
    let (sid, path) = a.mount("mixed", "mixed");
    const MIB: usize = 64;
    let data = common::noise(23, MIB << 20);
    let src = stores.dir.path().join("mixed-src");
    std::fs::write(&src, &data).unwrap();
    // MiB 0, 32, 1, 33, ...: O_DIRECT, so each reaches the daemon (and is sealed) in turn.
    for m in (0..MIB / 2).flat_map(|m| [m, m + MIB / 2]) {
        let dd = Command::new("dd")
            .arg(format!("if={}", src.display()))
            .arg(format!("of={}", path.join("big").display()))
            .arg(format!("skip={m}"))
            .arg(format!("seek={m}"))
            .args([
                "bs=1M",
                "count=1",
                "conv=notrunc",
                "oflag=direct",
                "status=none",
            ])
            .output()
            .unwrap();
        assert!(
            dd.status.success(),
            "{}",
            String::from_utf8_lossy(&dd.stderr)
        );
    }
    std::fs::File::open(path.join("big"))
        .unwrap()
        .sync_all()
        .unwrap();
    a.unmount(&sid);

    let (sid, path) = b.mount("mixed", "mixed-b");
    assert!(
        std::fs::read(path.join("big")).unwrap() == data,
        "B reads other bytes"
    );
    b.unmount(&sid);
    // 64 MiB in 8 or 9 packs, and the tree's few nodes. Fetched in file order, a MiB at a
    // time, it took 60 or more.
    let gets = metric(&b.metrics(), S3_GETS);
    println!("{gets} GETs for {MIB} MiB read cold");
    assert!(gets <= 24.0, "{gets} GETs for {MIB} MiB");
}

/// A read of a file's middle on a cold host (an mmap's page fault, a reader that seeks)
/// follows no earlier read, so no read-ahead covers it: its chunks are fetched together, a
/// request per stretch of a pack, not a round trip each (16 in a row for a MiB, which made a
/// cold `git status` read its index in 0.54-0.71 s).
#[test]
fn a_cold_read_of_a_file_s_middle_fetches_its_chunks_together() {
    let Some(stores) = Stores::start_or_skip(&[]) else {
        return;
    };
    // A cache of 4 MiB: the warm call below fetches the tree and only the file's first 2 MiB.
    let quiet = ["--gc-interval", "0", "--commit-interval", "3600"];
    let a = stores.host("host-a", &quiet);
    let b = stores.host("host-b", &[&quiet[..], &["--cache-size", "4M"]].concat());
    a.create_workspace("middle");
    let (sid, path) = a.mount("middle", "middle");
    let data = common::noise(31, 32 << 20);
    write_synced(&path.join("big"), &data);
    a.unmount(&sid);

    let (s, v) = b.call("POST", "/v1/workspaces/middle/warm", None);
    assert_eq!(s, 200, "{v}");
    let (sid, path) = b.mount("middle", "middle-b");
    let before = metric(&b.metrics(), S3_GETS);
    let mut got = vec![0u8; 1 << 20];
    let f = std::fs::File::open(path.join("big")).unwrap();
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut got, 16 << 20).unwrap();
    assert!(got == data[16 << 20..17 << 20], "B reads other bytes");
    let gets = metric(&b.metrics(), S3_GETS) - before;
    drop(f);
    b.unmount(&sid);
    // One or two (the MiB may straddle two packs); a GET per chunk made 16 or more.
    println!("{gets} GETs for a cold MiB in the middle of a file");
    assert!(gets <= 4.0, "{gets} GETs for a cold MiB");
}

/// A workspace 100,000 directories deep with a directory of 1,000,000 entries, made on one
/// host, read back whole by a cold session on another (`CHASERFS_DEEP_*` change the sizes).
#[test]
fn a_deep_and_wide_tree_moves_to_a_cold_host() {
    let (depth, width) = common::deep_tree::size();
    let Some(stores) = Stores::start_or_skip(&[]) else {
        return;
    };
    let a = stores.host("host-a", &[]);
    let b = stores.host("host-b", &[]);
    a.create_workspace("tree");
    let t = Instant::now();
    let (sid, path) = a.mount("tree", "tree");
    common::deep_tree::make(&path, depth, width);
    a.unmount(&sid);
    println!(
        "made and committed on host A in {:.1} s (peak RSS {} MiB)",
        t.elapsed().as_secs_f64(),
        common::peak_rss_mib(a.pid())
    );
    let t = Instant::now();
    let (sid, path) = b.mount("tree", "tree-b");
    let seen = common::deep_tree::check(&path);
    b.unmount(&sid);
    println!(
        "read back cold on host B in {:.1} s (peak RSS {} MiB)",
        t.elapsed().as_secs_f64(),
        common::peak_rss_mib(b.pid())
    );
    assert_eq!(seen, common::deep_tree::want(depth, width));
    for host in [&a, &b] {
        assert!(!host.log().contains("corrupt"), "{}", host.log());
    }
}

impl Stores {
    /// Runs `chaserfs ARGS` with this cluster's flags (a maintenance command).
    fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = self.cli_command(args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// `chaserfs ARGS` with this cluster's flags, not started yet.
    fn cli_command(&self, args: &[&str]) -> Command {
        let scratch = self.dir.path().join(format!("cli-{}", rand_suffix()));
        let mut cmd = Command::new(common::bin());
        cmd.args(args)
            .arg("--data-dir")
            .arg(&scratch)
            .args(["--s3-endpoint", self.var("CHASER_S3_ENDPOINT")])
            .args(["--s3-bucket", self.var("CHASER_S3_BUCKET")])
            .args(["--etcd-endpoints", self.var("CHASER_ETCD_ENDPOINTS")])
            .args(["--etcd-prefix", &self.prefix])
            .args(["--lease-ttl", &LEASE_TTL.to_string()])
            .envs(
                ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
                    .iter()
                    .map(|k| (k.to_string(), self.var(k).to_string())),
            );
        cmd
    }
}

/// One collection across the cluster (`chaserfs gc --json`, no grace period): its report.
fn collect(stores: &Stores) -> Value {
    let gc = stores
        .cli_command(&["gc", "--json", "--gc-grace", "0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&gc.stdout);
    assert!(
        gc.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("gc's report is not JSON ({e}): {stdout}"))
}

fn rand_suffix() -> u64 {
    static N: AtomicU16 = AtomicU16::new(0);
    u64::from(N.fetch_add(1, Ordering::SeqCst))
}

/// Collections across hosts while another host keeps committing: the deleted workspace's
/// data leaves the bucket, and every object every root refers to stays (a cluster fsck reads
/// every root's every node and chunk back from S3). A collection that deleted a commit's
/// freshly uploaded chunks before its root landed would fail the fsck.
#[test]
fn collection_across_hosts_keeps_what_roots_reach() {
    let Some(stores) = Stores::start_or_skip(&[]) else {
        return;
    };
    let a = stores.host("host-a", &["--gc-interval", "0"]);
    let b = stores.host(
        "host-b",
        &["--gc-interval", "0", "--commit-interval", "3600"],
    );
    a.create_workspace("doomed");
    let (sid, path) = a.mount("doomed", "doomed");
    write_synced(&path.join("big"), &common::noise(11, 16 << 20));
    a.unmount(&sid);
    b.create_workspace("live");
    let (sid, live) = b.mount("live", "live");
    let before = stores.wait_bucket_bytes("the bucket to count the doomed workspace", |n| {
        n >= 16 << 20
    });

    let writer = {
        let live = live.clone();
        std::thread::spawn(move || {
            let mut last = HashMap::new();
            for i in 0..60u64 {
                let data = common::noise(1000 + i, 200_000 + (i as usize % 7) * 65_536);
                write_synced(&live.join(format!("f{}", i % 5)), &data);
                last.insert(i % 5, data);
            }
            last
        })
    };
    let (s, v) = a.call("DELETE", "/v1/workspaces/doomed", None);
    assert_eq!(s, 204, "{v}");
    let mut runs = Vec::new();
    while !writer.is_finished() {
        let (ok, out) = stores.cli(&["gc", "--gc-grace", "0"]);
        assert!(ok, "{out}");
        runs.push(out);
    }
    let last = writer.join().unwrap();
    let (ok, out) = stores.cli(&["gc", "--gc-grace", "0"]);
    assert!(ok, "{out}");
    println!("{} collections during the writes; last: {out}", runs.len());
    assert!(!runs.is_empty());
    for (i, data) in &last {
        assert_eq!(&std::fs::read(live.join(format!("f{i}"))).unwrap(), data);
    }
    b.unmount(&sid);
    let (ok, out) = stores.cli(&["fsck"]);
    assert!(ok, "cluster fsck: {out}");
    let after = stores.wait_bucket_bytes(
        "the deleted workspace's 16 MiB to leave the bucket (8 MiB at least)",
        |n| n + (8 << 20) <= before,
    );
    println!("bucket {before} -> {after} bytes");
}

/// Objects are uploaded in packs (many objects per S3 object), so a pack can hold live and
/// dead objects at once: a collection copies the live objects of a mostly dead pack into a
/// new pack and deletes the old one, and the copies read back, cold on another host.
#[test]
fn a_mostly_dead_pack_is_repacked() {
    let Some(stores) = Stores::start_or_skip(&[]) else {
        return;
    };
    let a = stores.host("host-a", &["--gc-interval", "0"]);
    let b = stores.host("host-b", &["--gc-interval", "0"]);
    let keep = common::noise(21, 1 << 20);
    let drop = common::noise(22, 5 << 20);
    a.create_workspace("mixed");
    // One commit (at the session's end) makes one pack of both files.
    let (sid, path) = a.mount("mixed", "mixed");
    std::fs::write(path.join("keep"), &keep).unwrap();
    std::fs::write(path.join("drop"), &drop).unwrap();
    a.unmount(&sid);
    let (sid, path) = a.mount("mixed", "mixed");
    std::fs::remove_file(path.join("drop")).unwrap();
    a.unmount(&sid);
    let before = stores.wait_bucket_bytes("the bucket to count both files", |n| n >= 6 << 20);
    let report = collect(&stores);
    println!("{report}");
    assert!(report["repacked_packs"].as_u64().unwrap() >= 1, "{report}");
    let (sid, path) = b.mount("mixed", "mixed-b");
    assert_eq!(std::fs::read(path.join("keep")).unwrap(), keep);
    assert!(!path.join("drop").exists());
    b.unmount(&sid);
    let (ok, out) = stores.cli(&["fsck"]);
    assert!(ok, "cluster fsck: {out}");
    let after = stores.wait_bucket_bytes(
        "the dropped file's 5 MiB to leave the bucket (4 MiB at least)",
        |n| n + (4 << 20) <= before,
    );
    println!("bucket {before} -> {after} bytes");
}

/// The cache disk full: a host whose data dir is a 256 MiB disk reads a workspace larger
/// than that disk (its cache keeps what fits; reads go on from memory), writes a file larger
/// than the disk with fsyncs (what went up leaves the disk as the cache evicts it), and a
/// write past the disk with no fsync (no commit empties it) answers ENOSPC, never EIO, with
/// the daemon serving on and what was fsynced before intact.
#[test]
fn a_full_cache_disk() {
    let Some(stores) = Stores::start_or_skip(&[]) else {
        return;
    };
    let a = stores.host("host-a", &[]);
    let disk = LoopDisk::new("256M");
    let b = stores.host_in(
        "host-b",
        &["--commit-interval", "3600"],
        Some(disk.path().join("data")),
    );
    a.create_workspace("big");
    let (sid, path) = a.mount("big", "big");
    let files: Vec<Vec<u8>> = (0..5).map(|i| common::noise(500 + i, 64 << 20)).collect();
    for (i, data) in files.iter().enumerate() {
        write_synced(&path.join(format!("f{i}")), data);
    }
    a.unmount(&sid);

    let (sid, path) = b.mount("big", "big-b");
    for (i, data) in files.iter().enumerate() {
        assert!(
            std::fs::read(path.join(format!("f{i}"))).unwrap() == *data,
            "f{i} read wrong on the host with the small disk"
        );
    }
    println!(
        "{} MiB free on the cache disk after reading 320 MiB",
        disk.avail() >> 20
    );
    write_synced(&path.join("small"), b"fits");
    // 384 MiB fsynced every 16 MiB: each fsync is a commit, after which the cache may evict.
    let piece = |i: u64| common::noise(9000 + i, 1 << 20);
    {
        let mut f = std::fs::File::create(path.join("large")).unwrap();
        for i in 0..384 {
            f.write_all(&piece(i)).unwrap();
            if i % 16 == 15 {
                f.sync_data().unwrap();
            }
        }
    }
    println!(
        "{} MiB free on the cache disk after writing 384 MiB",
        disk.avail() >> 20
    );
    // Staged writes stay until a commit sends them: 320 MiB of them cannot fit.
    let err = {
        let mut f = std::fs::File::create(path.join("filler")).unwrap();
        (0..320)
            .find_map(|i| f.write_all(&piece(1000 + i)).err())
            .or_else(|| f.sync_data().err())
            .expect("320 MiB staged on a 256 MiB disk without an error")
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    let (s, v) = b.call("GET", "/v1/workspaces/big", None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(std::fs::read(path.join("small")).unwrap(), b"fits");
    assert!(std::fs::read(path.join("f0")).unwrap() == files[0]);
    std::fs::remove_file(path.join("filler")).unwrap();
    b.unmount(&sid);

    // What B committed, read on A.
    let (sid, path) = a.mount("big", "big-again");
    assert_eq!(std::fs::read(path.join("small")).unwrap(), b"fits");
    assert!(!path.join("filler").exists());
    let large = std::fs::read(path.join("large")).unwrap();
    assert_eq!(large.len(), 384 << 20);
    for (i, got) in large.chunks(1 << 20).enumerate() {
        assert!(
            got == piece(i as u64),
            "MiB {i} of the large file read wrong on A"
        );
    }
    a.unmount(&sid);
}

/// Fetched chunks are kept in plain files (`fs/engine/src/store/chunk_files.rs`); one damaged
/// there (a bad disk) is fetched again, never served. B reads a 96 MiB file (so at least its
/// first 32 MiB are no longer in memory, only in the files), every byte of those files is
/// overwritten, and the file reads back right, with the damage in B's log.
#[test]
fn a_damaged_cached_chunk_is_fetched_again() {
    let Some(stores) = Stores::start_or_skip(&[]) else {
        return;
    };
    let a = stores.host("host-a", &[]);
    let dir = tempfile::tempdir().unwrap();
    let b = stores.host_in("host-b", &[], Some(dir.path().join("data")));
    a.create_workspace("damage");
    let (sid, path) = a.mount("damage", "damage");
    let data = common::noise(77, 96 << 20);
    write_synced(&path.join("f"), &data);
    a.unmount(&sid);

    let (sid, path) = b.mount("damage", "damage-b");
    assert!(std::fs::read(path.join("f")).unwrap() == data);
    let mut damaged = 0;
    for segment in std::fs::read_dir(dir.path().join("data/cache/fetched")).unwrap() {
        let segment = segment.unwrap().path();
        let len = std::fs::metadata(&segment).unwrap().len();
        std::fs::write(&segment, vec![0x5a; len as usize]).unwrap();
        damaged += len;
    }
    assert!(damaged >= 32 << 20, "{damaged} bytes in the cache's files");
    // The kernel's copy of the file goes, so the reads reach B.
    std::fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
    assert!(
        std::fs::read(path.join("f")).unwrap() == data,
        "the file read wrong after its cached chunks were damaged"
    );
    assert!(b.log().contains("is damaged"), "{}", b.log());
    b.unmount(&sid);
}

/// The collector's crash test, across hosts: `chaserfs gc` processes SIGKILLed at random
/// moments (listing, marking, sweeping, deleting) while a host commits. Every fsync
/// succeeds (a killed collector's sweep ends with its lease), the next collection runs once
/// its lock expires, and a cluster fsck finds every object every root refers to.
#[test]
fn collectors_killed_mid_collection_lose_nothing() {
    let Some(stores) = Stores::start_or_skip(&[]) else {
        return;
    };
    let b = stores.host(
        "host-b",
        &["--gc-interval", "0", "--commit-interval", "3600"],
    );
    b.create_workspace("live");
    let (sid, live) = b.mount("live", "live");
    // The writer keeps committing until the collectors have been killed often enough.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let live = live.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut last = HashMap::new();
            let mut i = 0u64;
            while i < 100 || !stop.load(Ordering::SeqCst) {
                // Overwrites leave the previous versions for the collectors.
                let data = common::noise(2000 + i, 150_000 + (i as usize % 5) * 65_536);
                write_synced(&live.join(format!("f{}", i % 4)), &data);
                last.insert(i % 4, data);
                i += 1;
            }
            last
        })
    };
    let mut kills = 0;
    // Spread over startup, listing, marking and sweeping; a collector that finished before
    // its kill halves the spread so the kills happen however fast collections are.
    let mut spread_ms = 1200;
    for attempt in 0.. {
        if kills >= 3 && writer.is_finished() {
            break;
        }
        if kills >= 3 {
            stop.store(true, Ordering::SeqCst);
        }
        assert!(attempt < 200, "{kills} kills in {attempt} collections");
        let mut gc = stores.cli_command(&["gc", "--gc-grace", "0"]);
        let mut child = gc
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Not a wait for anything: the kill's moment in the collection, spread as above.
        std::thread::sleep(Duration::from_millis(rand_suffix() * 151 % spread_ms));
        match child.try_wait().unwrap() {
            None => {
                signal(child.id() as i32, libc::SIGKILL);
                kills += 1;
                child.wait().unwrap();
            }
            // A collection that completed; one refused by a killed collector's lock does not
            // count.
            Some(status) if status.success() => spread_ms = (spread_ms / 2).max(1),
            Some(_) => {}
        }
    }
    let last = writer.join().unwrap();
    // The last killed collector's lock goes with its lease.
    let t = Instant::now();
    let out = loop {
        let (ok, out) = stores.cli(&["gc", "--gc-grace", "0"]);
        if ok {
            break out;
        }
        assert!(t.elapsed() < Duration::from_secs(LEASE_TTL * 5), "{out}");
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("{kills} collectors killed; then {out}");
    assert!(kills > 0);
    for (i, data) in &last {
        assert_eq!(&std::fs::read(live.join(format!("f{i}"))).unwrap(), data);
    }
    b.unmount(&sid);
    let (ok, out) = stores.cli(&["fsck"]);
    assert!(ok, "cluster fsck: {out}");
}

/// etcd with its authentication on: a host given the user and password serves and commits;
/// one without them, or with a wrong password, refuses to start and says why.
#[test]
fn etcd_authentication() {
    let Some(stores) = Stores::start_or_skip(&[]) else {
        return;
    };
    stores.etcdctl(&["user", "add", "root:s3cret-pw"]);
    stores.etcdctl(&["auth", "enable"]);
    let refused = |password: Option<&str>| {
        let mut o = stores.host_options("intruder", &[], None);
        if let Some(p) = password {
            o.args.extend(["--etcd-user".into(), "root".into()]);
            o.env.push(("CHASER_ETCD_PASSWORD".into(), p.into()));
        }
        let err = refused_to_start(o);
        assert!(err.contains("etcd"), "{err}");
    };
    refused(None);
    refused(Some("wrong"));
    let mut o = stores.host_options("host-a", &["--etcd-user", "root"], None);
    o.env
        .push(("CHASER_ETCD_PASSWORD".into(), "s3cret-pw".into()));
    let a = Daemon::start_with(o);
    a.create_workspace("authed");
    let (sid, path) = a.mount("authed", "authed");
    write_synced(&path.join("f"), b"through an authenticated etcd");
    a.unmount(&sid);
    let (s, w) = a.call("GET", "/v1/workspaces/authed", None);
    assert_eq!(s, 200, "{w}");
    assert_eq!(w["persistence"]["files"], 2, "{w}");
}

/// etcd over TLS with client certificates (`--client-cert-auth`), beside the test's Garage: a
/// host given the CA and its certificate serves and commits; one without the CA refuses to
/// start.
#[test]
fn etcd_over_tls() {
    let Some(stores) = Stores::start_or_skip(&["openssl"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sh = |cmd: &str| common::sh(cmd, d);
    let ext = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n";
    std::fs::write(d.join("ext"), ext).unwrap();
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=test-ca 2>/dev/null");
    for name in ["server", "client"] {
        sh(&format!(
            "openssl req -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.csr -subj /CN={name} 2>/dev/null && \
             openssl x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out {name}.pem -days 1 -extfile ext 2>/dev/null"
        ));
    }
    let port = |_: ()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (client_port, peer_port) = (port(()), port(()));
    let url = format!("https://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let mut etcd = Command::new(common::stores::etcd_bin().expect("etcd"))
        .args(["--name", "tls", "--data-dir"])
        .arg(d.join("etcd"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("tls={peer}")])
        .args(["--cert-file", "server.pem", "--key-file", "server.key"])
        .args(["--trusted-ca-file", "ca.pem", "--client-cert-auth"])
        .current_dir(d)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(d.join("etcd.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", client_port)).is_err() {
        assert!(Instant::now() < deadline, "etcd did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let with_etcd = |extra: &[&str]| {
        let mut o = stores.host_options("tls-host", extra, None);
        let at = o.args.iter().position(|a| a == "--etcd-endpoints").unwrap();
        o.args[at + 1] = url.clone();
        o
    };
    let pem = |f: &str| d.join(f).display().to_string();
    // Without the CA, the host cannot trust etcd and does not start.
    refused_to_start(with_etcd(&[]));
    let a = Daemon::start_with(with_etcd(&[
        "--etcd-ca-file",
        &pem("ca.pem"),
        "--etcd-cert-file",
        &pem("client.pem"),
        "--etcd-key-file",
        &pem("client.key"),
    ]));
    a.create_workspace("tls");
    let (sid, path) = a.mount("tls", "tls");
    write_synced(&path.join("f"), b"through etcd over TLS");
    a.unmount(&sid);
    let (s, w) = a.call("GET", "/v1/workspaces/tls", None);
    assert_eq!(
        (s, w["persistence"]["files"].as_u64()),
        (200, Some(2)),
        "{w}"
    );
    drop(a);
    let _ = etcd.kill();
    let _ = etcd.wait();
}

/// Runs `chaserfs serve` with `o` on a fresh data dir; it must exit, failing. Its stderr.
fn refused_to_start(o: Options) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--mount-root")
        .arg(dir.path().join("mnt"))
        .args(["--listen", "127.0.0.1:0"])
        .args(&o.args)
        .envs(o.env)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "started when it must not: {err}");
    err
}
