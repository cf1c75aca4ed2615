//! Operating the daemon: `GET /metrics` (Prometheus text) counts what a real session, real
//! API calls, an import and a collection did, names no workspace, and moves to
//! `--metrics-listen` when given; the log has a line per request and per session start and
//! end, as text or JSON.

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, GitDaemon, Options};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// (status, body) of an unauthenticated GET.
fn get(url: &str) -> (u16, String) {
    let mut r = agent().get(url).call().unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

/// The sum of the samples of `name` whose labels include every `labels` pair.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            if metric != name {
                return None;
            }
            let ok = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Scrapes until `done` holds of the text (collections run in the background), or 30 s.
fn scrape_until(url: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, text) = get(url);
        assert_eq!(status, 200, "{text}");
        if done(&text) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn metrics_count_what_sessions_and_requests_did() {
    let repos = tempfile::tempdir().unwrap();
    common::make_repo(repos.path(), "acme", "tool");
    let git = GitDaemon::start(repos.path());
    let d = Daemon::start_with(Options {
        args: vec!["--github-url".into(), git.url.clone()],
        ..Default::default()
    });
    let metrics = format!("{}/metrics", d.url);
    let name = "secret-project-name";
    let ws = d.create_workspace(name);
    let id = ws["id"].as_str().unwrap().to_string();
    let (sid, path) = d.mount(name, "m");
    let (_, during) = get(&metrics);
    assert_eq!(sample(&during, "chaserfs_sessions_active", &[]), 1.0);
    // 1 MiB of distinct chunks, then the same bytes again: 16 chunks stored, 16 deduplicated.
    let data = common::noise(5, 1 << 20);
    for f in ["a", "b"] {
        let mut file = std::fs::File::create(path.join(f)).unwrap();
        std::io::Write::write_all(&mut file, &data).unwrap();
        file.sync_all().unwrap();
    }
    d.unmount(&sid);
    let (s, _) = d.call("GET", "/v1/workspaces/no-such-one", None);
    assert_eq!(s, 404);
    let (s, _) = d.call("GET", "/no/such/route", None);
    assert_eq!(s, 404);
    let (s, v) = d.call(
        "POST",
        "/v1/workspaces/import",
        Some(serde_json::json!({"github_repo": "acme/tool"})),
    );
    assert_eq!(s, 202, "{v}");
    assert_eq!(d.wait_imported("tool")["status"], "ready");

    // The store gauges are scanned at most every 10 s, so they may lag the writes.
    let text = scrape_until(&metrics, |t| {
        sample(t, "chaserfs_import_duration_seconds_count", &[]) >= 1.0
            && sample(t, "chaserfs_store_logical_bytes", &[]) >= (2 << 20) as f64
    });
    let fuse = "chaserfs_fuse_request_duration_seconds_count";
    for op in ["lookup", "create", "write", "fsync"] {
        assert!(
            sample(&text, fuse, &[("op", op)]) >= 1.0,
            "no {op}:\n{text}"
        );
    }
    assert!(sample(&text, "chaserfs_fsync_duration_seconds_count", &[]) >= 2.0);
    assert!(sample(&text, "chaserfs_commit_duration_seconds_count", &[]) >= 2.0);
    assert!(sample(&text, "chaserfs_commit_bytes_total", &[]) >= (1 << 20) as f64);
    assert!(sample(&text, "chaserfs_chunks_written_total", &[]) >= 16.0);
    assert!(sample(&text, "chaserfs_chunk_bytes_written_total", &[]) >= (1 << 20) as f64);
    assert!(sample(&text, "chaserfs_chunks_deduplicated_total", &[]) >= 16.0);
    assert_eq!(sample(&text, "chaserfs_sessions_started_total", &[]), 1.0);
    assert_eq!(sample(&text, "chaserfs_sessions_ended_total", &[]), 1.0);
    let asked = [("reason", "request")];
    assert_eq!(sample(&text, "chaserfs_sessions_ended_total", &asked), 1.0);
    assert_eq!(
        sample(&text, "chaserfs_session_end_duration_seconds_count", &[]),
        1.0
    );
    assert!(sample(&text, "chaserfs_store_disk_free_bytes", &[]) > 0.0);
    assert!(sample(&text, "chaserfs_store_disk_reserve_bytes", &[]) > 0.0);
    assert_eq!(sample(&text, "chaserfs_sessions_active", &[]), 0.0);
    assert_eq!(sample(&text, "chaserfs_workspaces", &[]), 2.0);
    assert!(sample(&text, "chaserfs_store_logical_bytes", &[]) >= (2 << 20) as f64);
    assert!(sample(&text, "chaserfs_store_disk_bytes", &[]) > 0.0);
    assert_eq!(
        sample(
            &text,
            "chaserfs_import_duration_seconds_count",
            &[("result", "ready")]
        ),
        1.0
    );
    let requests = "chaserfs_http_requests_total";
    let created = [
        ("method", "POST"),
        ("route", "/v1/workspaces"),
        ("status", "201"),
    ];
    assert_eq!(sample(&text, requests, &created), 1.0, "{text}");
    let missing = [("route", "/v1/workspaces/{workspace}"), ("status", "404")];
    assert_eq!(sample(&text, requests, &missing), 1.0, "{text}");
    let unmatched = [("route", "unmatched"), ("status", "404")];
    assert_eq!(sample(&text, requests, &unmatched), 1.0, "{text}");
    assert!(
        sample(
            &text,
            "chaserfs_http_request_duration_seconds_count",
            &[("route", "/v1/sessions")]
        ) >= 1.0
    );
    // Histograms, not summaries: buckets a Prometheus server can aggregate across hosts.
    assert!(text.contains("chaserfs_fuse_request_duration_seconds_bucket{"));
    // Nothing names a workspace, a session or an account's data.
    for secret in [name, &id, &sid, "acme", "no-such-one"] {
        assert!(!text.contains(secret), "{secret:?} in /metrics");
    }

    // A delete wakes the collector: its run is counted with what it freed.
    let (s, v) = d.call("DELETE", &format!("/v1/workspaces/{name}"), None);
    assert!(s == 200 || s == 204, "{s} {v}");
    let text = scrape_until(&metrics, |t| {
        sample(t, "chaserfs_gc_duration_seconds_count", &[]) >= 1.0
    });
    assert!(
        sample(&text, "chaserfs_gc_duration_seconds_count", &[]) >= 1.0,
        "{text}"
    );
    assert!(
        sample(&text, "chaserfs_gc_objects_freed_total", &[]) >= 16.0,
        "{text}"
    );
    // Every panel of the sample dashboard but the cluster's has data (tests/cluster.rs
    // checks those on cluster hosts).
    let missing = common::panels_without_data(&[&text], |title| title.starts_with("Cluster"));
    assert!(missing.is_empty(), "no data for {missing:?}:\n{text}");

    // The log: one line per request and per session start and end, with ids.
    let log = d.log();
    assert!(
        log.lines().any(|l| l.contains("request")
            && l.contains("/v1/workspaces/no-such-one")
            && l.contains("status=404")),
        "{log}"
    );
    for event in ["session started", "session ended"] {
        assert!(
            log.lines()
                .any(|l| l.contains(event) && l.contains(&sid) && l.contains(&id)),
            "no {event:?} line for {sid}:\n{log}"
        );
    }
}

#[test]
fn metrics_listen_moves_the_endpoint_and_logs_can_be_json() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = Daemon::start_with(Options {
        args: vec![
            "--metrics-listen".into(),
            format!("127.0.0.1:{port}"),
            "--log-format".into(),
            "json".into(),
        ],
        ..Default::default()
    });
    let (s, _) = get(&format!("{}/metrics", d.url));
    assert_eq!(s, 404);
    d.create_workspace("w");
    let text = scrape_until(&format!("http://127.0.0.1:{port}/metrics"), |t| {
        sample(t, "chaserfs_http_requests_total", &[]) >= 1.0
    });
    let created = [("route", "/v1/workspaces"), ("status", "201")];
    assert_eq!(sample(&text, "chaserfs_http_requests_total", &created), 1.0);
    let log = d.log();
    let requests: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|v: &serde_json::Value| v["fields"]["message"] == "request")
        .collect();
    assert!(
        requests
            .iter()
            .any(|v| v["fields"]["path"] == "/v1/workspaces" && v["fields"]["status"] == 201),
        "{log}"
    );
}

/// A name found missing is remembered by the kernel (a negative entry), so asking again costs
/// no FUSE request; and whatever then creates the name through the mount is seen at once.
/// Errors answered are counted by operation and errno.
#[test]
fn a_missing_name_is_looked_up_once() {
    let d = Daemon::start();
    d.create_workspace("w");
    let (sid, path) = d.mount("w", "m");
    let metrics = format!("{}/metrics", d.url);
    let lookups = || {
        let (_, text) = get(&metrics);
        sample(
            &text,
            "chaserfs_fuse_request_duration_seconds_count",
            &[("op", "lookup")],
        )
    };
    let before = lookups();
    for name in ["file", "dir", "renamed", "linked"] {
        for _ in 0..100 {
            let e = std::fs::metadata(path.join(name)).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        }
    }
    // A request is counted just after its reply: wait for the fourth, then check no more came.
    let text = scrape_until(&metrics, |t| {
        sample(
            t,
            "chaserfs_fuse_request_duration_seconds_count",
            &[("op", "lookup")],
        ) >= before + 4.0
    });
    let after = sample(
        &text,
        "chaserfs_fuse_request_duration_seconds_count",
        &[("op", "lookup")],
    );
    assert_eq!(after - before, 4.0, "400 stats of 4 missing names");

    std::fs::write(path.join("file"), b"now here").unwrap();
    assert_eq!(std::fs::read(path.join("file")).unwrap(), b"now here");
    std::fs::create_dir(path.join("dir")).unwrap();
    assert!(path.join("dir").is_dir());
    std::fs::rename(path.join("file"), path.join("renamed")).unwrap();
    assert!(!path.join("file").exists());
    assert_eq!(std::fs::read(path.join("renamed")).unwrap(), b"now here");
    std::fs::hard_link(path.join("renamed"), path.join("linked")).unwrap();
    assert_eq!(std::fs::read(path.join("linked")).unwrap(), b"now here");
    std::fs::remove_file(path.join("linked")).unwrap();
    assert!(!path.join("linked").exists());
    // Errors the engine answers (not those the kernel answers itself, such as EEXIST for a
    // name it holds) are counted by operation and errno.
    std::fs::write(path.join("dir/f"), b"x").unwrap();
    std::fs::create_dir(path.join("other")).unwrap();
    std::fs::write(path.join("other/g"), b"y").unwrap();
    let e = std::fs::remove_dir(path.join("dir")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY));
    let e = std::fs::rename(path.join("other"), path.join("dir")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY));
    std::fs::remove_file(path.join("dir/f")).unwrap();
    let (_, text) = get(&metrics);
    let errors = "chaserfs_fuse_errors_total";
    assert_eq!(
        sample(&text, errors, &[("op", "rename"), ("errno", "ENOTEMPTY")]),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, errors, &[("op", "rmdir"), ("errno", "ENOTEMPTY")]),
        1.0,
        "{text}"
    );
    d.unmount(&sid);

    // A later session sees what this one made.
    let (_, path) = d.mount("w", "m2");
    assert!(path.join("dir").is_dir());
    assert_eq!(std::fs::read(path.join("renamed")).unwrap(), b"now here");
    assert!(!path.join("file").exists() && !path.join("linked").exists());
}

/// `/healthz` answers without a key with the daemon's version and how long it has served;
/// `/metrics` has the build, the start time and every error counter from the start.
#[test]
fn a_fresh_daemon_tells_its_version_uptime_and_zero_errors() {
    let d = Daemon::start();
    let (status, body) = get(&format!("{}/healthz", d.url));
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"), "{v}");
    let first = v["uptime_seconds"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let (_, body) = get(&format!("{}/healthz", d.url));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["uptime_seconds"].as_u64().unwrap() > first, "{v}");

    // Every error counter is there from the start, at 0, with the build and the start time.
    let (_, text) = get(&format!("{}/metrics", d.url));
    for counter in [
        "chaserfs_commit_errors_total",
        "chaserfs_fuse_io_errors_total",
        "chaserfs_sessions_started_total",
        "chaserfs_gc_objects_freed_total",
    ] {
        assert!(
            text.lines().any(|l| l == format!("{counter} 0")),
            "{counter} missing:\n{text}"
        );
    }
    let version = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(
        sample(&text, "chaserfs_build_info", &version),
        1.0,
        "{text}"
    );
    // The process: memory and descriptors as /proc shows them.
    let rss = sample(&text, "process_resident_memory_bytes", &[]);
    assert!(rss > (1 << 20) as f64 && rss < (4u64 << 30) as f64, "{rss}");
    let fds = sample(&text, "process_open_fds", &[]);
    let open = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .unwrap()
        .count() as f64;
    assert!(fds > 3.0 && (fds - open).abs() < 16.0, "{fds} vs {open}");
    assert!(text.contains("\nprocess_cpu_seconds_total "), "{text}");
    let started = sample(&text, "chaserfs_start_time_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(now - 60.0 < started && started <= now, "{started} vs {now}");
}
