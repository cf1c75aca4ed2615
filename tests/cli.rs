//! The `chaserfs` API client against the real daemon: every subcommand, tables and --json,
//! CHASER_API_URL / CHASER_API_KEY from the environment, and `mount` ended by Ctrl-C.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, GitDaemon, Options};
use serde_json::Value;

fn cli(d: &Daemon, args: &[&str]) -> Output {
    Command::new(common::bin())
        .args(args)
        .env("CHASER_API_URL", &d.url)
        .env("CHASER_API_KEY", &d.key)
        .output()
        .unwrap()
}

/// Runs a command that must succeed; returns its stdout.
fn ok(d: &Daemon, args: &[&str]) -> String {
    let out = cli(d, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(d: &Daemon, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    serde_json::from_str(&ok(d, &a)).unwrap()
}

#[test]
fn workspaces_snapshots_and_sessions_from_the_cli() {
    let repos = tempfile::tempdir().unwrap();
    common::make_repo(repos.path(), "octo", "tool");
    let git = GitDaemon::start(repos.path());
    let d = Daemon::start_with(Options {
        args: vec!["--github-url".into(), git.url.clone()],
        ..Default::default()
    });

    let w = json(
        &d,
        &["workspaces", "create", "--name", "proj", "--image", "img:1"],
    );
    assert_eq!(w["name"], "proj");
    assert_eq!(w["session_type"], "sandbox");
    let table = ok(&d, &["workspaces", "list"]);
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("NAME") && header.contains("STATUS"),
        "{table}"
    );
    assert!(
        table.lines().nth(1).unwrap().starts_with("proj "),
        "{table}"
    );
    assert_eq!(json(&d, &["workspaces", "get", "PROJ"])["id"], w["id"]);

    // A session started from the CLI writes something the clone then has.
    let mnt = d.mount_root().join("cli");
    let mnt_s = mnt.display().to_string();
    let s = json(&d, &["sessions", "start", "proj", &mnt_s]);
    std::fs::write(mnt.join("f.txt"), "cli\n").unwrap();
    let sessions = ok(&d, &["sessions", "list"]);
    assert!(sessions.contains("active"), "{sessions}");
    let listed = json(
        &d,
        &[
            "sessions",
            "list",
            "--workspace",
            "proj",
            "--status",
            "active",
        ],
    );
    assert_eq!(listed["sessions"][0]["id"], s["id"], "{listed}");
    let listed = json(&d, &["sessions", "list", "--status", "ended"]);
    assert_eq!(listed["sessions"], serde_json::json!([]), "{listed}");
    let ended = json(&d, &["sessions", "end", s["id"].as_str().unwrap()]);
    assert_eq!(ended["status"], "ended");

    let c = json(&d, &["workspaces", "clone", "proj", "--name", "copy"]);
    assert_eq!(c["image"], "img:1");
    assert_eq!(c["persistence"]["files"], 2);
    assert_eq!(
        json(&d, &["workspaces", "rename", "copy", "copy2"])["name"],
        "copy2"
    );
    let cleared = json(&d, &["workspaces", "rename", "copy2", "--clear"]);
    assert_eq!(cleared["name"], Value::Null);
    let copy_id = cleared["id"].as_str().unwrap().to_string();
    assert_eq!(
        json(&d, &["workspaces", "template", "proj", "on"])["template"],
        true
    );
    let templates = json(&d, &["workspaces", "list", "--templates"]);
    assert_eq!(templates["workspaces"].as_array().unwrap().len(), 1);

    let snap = json(&d, &["snapshots", "create", "proj", "v1"]);
    assert_eq!(snap["name"], "v1");
    let list = ok(&d, &["snapshots", "list", "proj"]);
    assert!(list.lines().nth(1).unwrap().starts_with("v1 "), "{list}");
    // The snapshot mounted read-only, and a fork of three.
    let ro_mnt = d.mount_root().join("cli-v1").display().to_string();
    let ro = json(
        &d,
        &["sessions", "start", "proj", &ro_mnt, "--snapshot", "v1"],
    );
    assert_eq!(ro["read_only"], true, "{ro}");
    assert_eq!(
        std::fs::read_to_string(std::path::Path::new(&ro_mnt).join("f.txt")).unwrap(),
        "cli\n"
    );
    json(&d, &["sessions", "end", ro["id"].as_str().unwrap()]);
    let s = json(&d, &["sessions", "start", "proj", &mnt_s]);
    std::fs::write(mnt.join("new.txt"), "n\n").unwrap();
    // Ended by its workspace's name, the flags before the command (no environment).
    let out = Command::new(common::bin())
        .args(["--api-url", &d.url, "--api-key", &d.key, "--json"])
        .args(["sessions", "end", "proj"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let ended: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&ended["id"], &ended["status"]),
        (&s["id"], &"ended".into())
    );
    let out = Command::new(common::bin())
        .args(["sessions", "end", "proj"])
        .env("CHASER_API_URL", &d.url)
        .env("CHASER_API_KEY", &d.key)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "chaserfs: workspace proj has no active session",
        "one line, no backtrace"
    );
    // With --debug (anywhere on the line): the error in full, with a backtrace.
    let out = Command::new(common::bin())
        .args(["--debug", "sessions", "end", "proj"])
        .env("CHASER_API_URL", &d.url)
        .env("CHASER_API_KEY", &d.key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("chaserfs: workspace proj has no active session")
            && stderr.contains("Stack backtrace:"),
        "{stderr}"
    );
    let diff = ok(&d, &["workspaces", "diff", "proj", "--from", "v1"]);
    assert_eq!(diff, "M /\n+ /new.txt\n");
    // Out as tar and tar.zst, and back in as new workspaces with the same contents.
    let tar = d.dir.path().join("proj.tar");
    let tar_s = tar.display().to_string();
    assert!(ok(&d, &["workspaces", "export", "proj", &tar_s]).starts_with("wrote "));
    let zst_s = d.dir.path().join("v1.tar.zst").display().to_string();
    ok(
        &d,
        &["workspaces", "export", "proj", &zst_s, "--snapshot", "v1"],
    );
    let back = json(
        &d,
        &["workspaces", "import-archive", &tar_s, "--name", "back"],
    );
    assert_eq!(back["status"], "ready", "{back}");
    let again = d.dir.path().join("back.tar");
    ok(
        &d,
        &["workspaces", "export", "back", &again.display().to_string()],
    );
    assert!(std::fs::read(&again).unwrap() == std::fs::read(&tar).unwrap());
    let old = json(
        &d,
        &["workspaces", "import-archive", &zst_s, "--name", "old"],
    );
    assert_eq!(old["persistence"]["files"], 2, "{old}");
    let missing = d.dir.path().join("missing.tar").display().to_string();
    let out = cli(
        &d,
        &[
            "workspaces",
            "export",
            "proj",
            &missing,
            "--snapshot",
            "nope",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("snapshot_not_found"));
    assert!(
        !std::path::Path::new(&missing).exists(),
        "no file for a failed export"
    );
    assert!(!std::path::Path::new(&format!("{missing}.part")).exists());
    ok(&d, &["workspaces", "delete", "back", "old"]);
    let forks = json(&d, &["workspaces", "fork", "proj", "--count", "3"]);
    let names: Vec<&str> = forks["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["proj-1", "proj-2", "proj-3"]);
    let table = ok(&d, &["workspaces", "fork", "proj", "--name", "t"]);
    assert!(table.lines().nth(1).unwrap().starts_with("t-1 "), "{table}");
    for w in ["proj-1", "proj-2", "proj-3", "t-1"] {
        ok(&d, &["workspaces", "delete", w]);
    }
    let r = json(&d, &["snapshots", "restore", "proj", "v1", "--force"]);
    assert_eq!(r["persistence"]["root_hash"], snap["root_hash"]);
    ok(&d, &["snapshots", "delete", "proj", "v1"]);
    assert_eq!(
        json(&d, &["snapshots", "list", "proj"])["snapshots"],
        Value::Array(vec![])
    );

    // Errors: exit status 1 and the API's code on stderr.
    let out = cli(&d, &["workspaces", "get", "missing"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("workspace_not_found"));
    let out = Command::new(common::bin())
        .args(["workspaces", "list"])
        .env("CHASER_API_URL", &d.url)
        .env("CHASER_API_KEY", "wrong")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"));

    // Import waits for the clone and reports the result.
    let imported = json(&d, &["workspaces", "import", "octo/tool"]);
    assert_eq!(imported["status"], "ready", "{imported}");
    assert_eq!(imported["name"], "tool");
    let out = cli(&d, &["workspaces", "import", "octo/absent"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("import failed"));

    // Delete one, then several (a bulk delete) with a per-workspace table.
    ok(&d, &["workspaces", "delete", &copy_id]);
    let bulk = ok(&d, &["workspaces", "delete", "tool", "proj", "--force"]);
    assert!(bulk.contains("deleted"), "{bulk}");
    let out = cli(&d, &["workspaces", "delete", "nope", "tool-2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not_found"));
}

#[test]
fn mount_runs_until_ctrl_c() {
    let d = Daemon::start();
    d.create_workspace("m");
    let path = d.mount_root().join("m");
    let child = Command::new(common::bin())
        .args(["mount", "m"])
        .arg(&path)
        .env("CHASER_API_URL", &d.url)
        .env("CHASER_API_KEY", &d.key)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !common::is_mounted(&path) {
        assert!(Instant::now() < deadline, "not mounted");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(path.join("kept.txt"), "kept\n").unwrap();
    // SAFETY: interrupting our own child, as Ctrl-C would.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ended"));
    assert!(!common::is_mounted(&path));
    let (_, sessions) = d.call("GET", "/v1/sessions", None);
    assert_eq!(sessions["sessions"][0]["status"], "ended");
    let (session, p2) = d.mount("m", "again");
    assert_eq!(
        std::fs::read_to_string(p2.join("kept.txt")).unwrap(),
        "kept\n"
    );
    d.unmount(&session);
}

/// `serve`'s config file: its values apply where neither a flag nor its environment variable
/// is given (here `listen`, `mount-root` and `log-format` from the file, `data-dir` from the
/// command line over the file's); a key that is no flag of serve, or a value the flag refuses,
/// stops the daemon with an error that names the file.
#[test]
fn serve_reads_its_config_file() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("config.toml");
    let from_file = dir.path().join("data-from-file");
    let from_flag = dir.path().join("data-from-flag");
    std::fs::write(
        &config,
        format!(
            "data-dir = {:?}\nlisten = \"127.0.0.1:{port}\"\nmount_root = {:?}\n\
             log-format = \"json\"\nsession-retention = \"2h\"\n",
            from_file,
            dir.path().join("mnt")
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut child = Command::new(common::bin())
        .args(["serve", "--data-dir"])
        .arg(&from_flag)
        .env("CHASER_CONFIG", &config)
        .stderr(log)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/healthz");
    common::wait_until(
        Duration::from_secs(30),
        "the daemon on the file's port",
        || ureq::get(&url).call().is_ok(),
    );
    assert!(from_flag.join("api-key").exists());
    assert!(!from_file.exists());
    // SAFETY: stopping our own child.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    let first = log.lines().find(|l| l.starts_with('{')).expect(&log);
    assert!(serde_json::from_str::<Value>(first).is_ok(), "{log}");

    // Writable by others: refused, whatever it says.
    std::fs::write(&config, "").unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    // `serve --config` with that file alone, when it refuses to start: (exit code, stderr).
    let refused = || {
        let out = Command::new(common::bin())
            .args(["serve", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stderr)
    };
    let (code, stderr) = refused();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("writable by group or others"), "{stderr}");
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();

    // A flag the file supplies may be one another flag given here requires.
    std::fs::write(
        &config,
        "s3-bucket = \"b\"\netcd-endpoints = \"http://127.0.0.1:1\"\n",
    )
    .unwrap();
    let out = Command::new(common::bin())
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--request-timeout", "1", "--data-dir"])
        .arg(dir.path().join("cluster-data"))
        .env("CHASER_S3_ENDPOINT", "http://127.0.0.1:1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains("required"), "{stderr}");

    for (text, code, says) in [
        ("bogus = 1\n", 1, "`bogus` is not a flag"),
        ("takeover = true\n", 1, "`takeover` is not a flag"),
        ("commit-interval = \"soon\"\n", 2, "invalid value 'soon'"),
        ("listen = [\n", 1, "TOML parse error"),
    ] {
        std::fs::write(&config, text).unwrap();
        let (got, stderr) = refused();
        assert_eq!(got, Some(code), "{text}: {stderr}");
        assert!(stderr.contains(says), "{text}: {stderr}");
        assert!(
            stderr.contains(config.to_str().unwrap()),
            "{text}: {stderr}"
        );
    }
}
