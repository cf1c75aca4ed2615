//! Attacks by hostile tenants (SECURITY.md), each against a real daemon and real mounts: an
//! API key, an archive, a mounted session's processes under any uid, or a client without a
//! key. Each test asserts what the attack must not achieve.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{peak_rss, sh, write_synced, Daemon, Options};
use serde_json::{json, Value};

/// A daemon whose mount root any local user may walk into (a test dir is 0700).
fn daemon_with(args: &[&str]) -> Daemon {
    let d = Daemon::start_with(Options {
        args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    });
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// Runs `cmd` under `sh` in `dir`, as `nobody` or as root; (success, stdout and stderr).
fn run_sh(cmd: &str, dir: &Path, nobody: bool) -> (bool, String) {
    let drop_to_nobody: &[&str] = if nobody {
        &["--reuid=65534", "--regid=65534", "--clear-groups"]
    } else {
        &[]
    };
    let out = Command::new("setpriv")
        .args(drop_to_nobody)
        .args(["sh", "-c", cmd])
        .current_dir(dir)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn as_nobody(cmd: &str, dir: &Path) -> (bool, String) {
    run_sh(cmd, dir, true)
}

fn as_root(cmd: &str, dir: &Path) -> (bool, String) {
    run_sh(cmd, dir, false)
}

/// A tar archive made by Python's tarfile from `entries` (statements adding to `t`).
fn tar_of(dir: &Path, name: &str, entries: &str) -> Vec<u8> {
    let path = dir.join(name);
    let script = format!(
        "import io, os, tarfile, sys\nt = tarfile.open(sys.argv[1], 'w', format=tarfile.GNU_FORMAT)\n{entries}\nt.close()"
    );
    common::python(&script, &path);
    std::fs::read(path).unwrap()
}

fn import(d: &Daemon, query: &str, media: &str, body: &[u8]) -> (u16, Value) {
    d.call_raw(
        "POST",
        &format!("/v1/workspaces/import?{query}"),
        &[
            ("Authorization", &format!("Bearer {}", d.key)),
            ("Content-Type", media),
        ],
        body,
    )
}

fn start_session(d: &Daemon, body: Value) -> (u16, Value) {
    d.call("POST", "/v1/sessions", Some(body))
}

#[test]
fn setuid_files_and_device_nodes_confer_nothing() {
    let d = daemon_with(&[]);
    let work = d.dir.path();
    // An archive with a root-owned setuid copy of `id`, and a block device node for the
    // host's root disk: imported, then mounted, as the attack goes.
    let root_dev = std::fs::metadata("/")
        .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
        .unwrap();
    let setuid = tar_of(
        work,
        "setuid.tar",
        "i = t.gettarinfo('/usr/bin/id', 'id'); i.mode = 0o4755; i.uid = 0; i.gid = 0\n\
         t.addfile(i, open('/usr/bin/id', 'rb'))",
    );
    let (s, v) = import(&d, "name=evil", "application/x-tar", &setuid);
    assert_eq!(s, 201, "{v}");
    let disk = tar_of(
        work,
        "disk.tar",
        &format!(
            "i = tarfile.TarInfo('disk'); i.type = tarfile.BLKTYPE; i.mode = 0o666\n\
             i.devmajor = os.major({root_dev}); i.devminor = os.minor({root_dev}); t.addfile(i)"
        ),
    );
    let (s, v) = import(&d, "name=disk", "application/x-tar", &disk);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_archive")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("device"),
        "{v}"
    );
    assert_eq!(
        d.call("GET", "/v1/workspaces/disk", None).0,
        404,
        "a refused import left a workspace"
    );

    let path = d.mount_root().join("evil");
    let (s, v) = start_session(&d, json!({"workspace": "evil", "mountpoint": path}));
    assert_eq!(s, 201, "{v}");
    let mode = std::fs::metadata(path.join("id"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755, "the import kept the setuid bit");
    // Made inside the session by its root: still nothing, the mount is nosuid and nodev.
    let (ok, out) = as_root(
        "cp /usr/bin/id id2 && chmod 4755 id2 && mknod null c 1 3 && chmod 666 null",
        &path,
    );
    assert!(ok, "{out}");
    for shell in ["./id", "./id2"] {
        let (ok, out) = as_nobody(shell, &path);
        assert!(ok, "{out}");
        assert!(out.contains("uid=65534"), "{out}");
        assert!(!out.contains("euid=0"), "{shell} ran as root: {out}");
    }
    let (ok, out) = as_root("echo x > null", &path);
    assert!(
        !ok && out.contains("Permission denied"),
        "a device node opened: {out}"
    );
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(path.to_str().unwrap()))
        .unwrap();
    assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");
    d.unmount(v["id"].as_str().unwrap());
}

#[test]
fn privileges_from_archives_only_when_the_operator_allows() {
    let d = daemon_with(&[
        "--insecure-suid",
        "--insecure-dev",
        "--insecure-privileged-xattrs",
    ]);
    let work = d.dir.path();
    let tar = tar_of(
        work,
        "trusted.tar",
        "i = tarfile.TarInfo('s'); i.mode = 0o4755; i.size = 1; t.addfile(i, io.BytesIO(b'x'))\n\
         i = tarfile.TarInfo('null'); i.type = tarfile.CHRTYPE; i.mode = 0o666\n\
         i.devmajor = 1; i.devminor = 3; t.addfile(i)",
    );
    let (s, v) = import(&d, "name=trusted", "application/x-tar", &tar);
    assert_eq!(s, 201, "{v}");
    let path = d.mount_root().join("trusted");
    let (s, v) = start_session(&d, json!({"workspace": "trusted", "mountpoint": path}));
    assert_eq!(s, 201, "{v}");
    let mode = std::fs::metadata(path.join("s"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o4755);
    let (ok, out) = as_root("echo x > null", &path);
    assert!(ok, "{out}");
    d.unmount(v["id"].as_str().unwrap());
}

/// `ioctl(2)` on a session's files reaches the daemon every time (the kernel remembers no
/// answer to FUSE_IOCTL), and every program that checks `isatty` on a file it opens sends one.
#[test]
fn ioctls_in_a_session_answer_enotty_and_write_nothing_to_the_log() {
    use std::os::fd::AsRawFd;
    let d = Daemon::start();
    d.create_workspace("w");
    let (_session, mnt) = d.mount("w", "s");
    std::fs::write(mnt.join("f"), b"x").unwrap();
    std::fs::create_dir(mnt.join("dir")).unwrap();
    let log_before = d.log().len();
    // TCGETS (isatty), FS_IOC_GETFLAGS (lsattr) and an invented command, on a file and a
    // directory, many times over.
    const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
    for path in [mnt.join("f"), mnt.join("dir")] {
        let f = std::fs::File::open(&path).unwrap();
        for cmd in [libc::TCGETS, FS_IOC_GETFLAGS, 0xC0DE_0042] {
            for _ in 0..1000 {
                let mut out = [0u8; 256];
                // SAFETY: the buffer outlives the call and is larger than what any of the
                // three commands writes.
                #[allow(unsafe_code)]
                let r = unsafe { libc::ioctl(f.as_raw_fd(), cmd, out.as_mut_ptr()) };
                let err = std::io::Error::last_os_error();
                assert_eq!(r, -1, "ioctl {cmd:#x} on {}", path.display());
                assert_eq!(
                    err.raw_os_error(),
                    Some(libc::ENOTTY),
                    "ioctl {cmd:#x}: {err}"
                );
            }
        }
    }
    // Warnings and errors only: a daemon run with RUST_LOG=debug logs every request.
    let log = d.log();
    let warned: Vec<&str> = log[log_before..]
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(
        warned.len() < 5,
        "6,000 ioctls wrote {} warnings to the daemon's log, the first: {:?}",
        warned.len(),
        warned.first()
    );
    // The mount still works.
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"x");
}

#[test]
fn a_snapshot_session_refuses_writes_at_once() {
    let d = daemon_with(&[]);
    d.create_workspace("w");
    let (sid, path) = d.mount("w", "w");
    std::fs::write(path.join("f"), b"committed").unwrap();
    d.unmount(&sid);
    let (s, v) = d.call(
        "POST",
        "/v1/workspaces/w/snapshots",
        Some(json!({"name": "s1"})),
    );
    assert_eq!(s, 201, "{v}");
    let snap = d.mount_root().join("snap");
    let (s, v) = start_session(
        &d,
        json!({"workspace": "w", "snapshot": "s1", "mountpoint": snap}),
    );
    assert_eq!(s, 201, "{v}");
    let err = std::fs::OpenOptions::new()
        .write(true)
        .open(snap.join("f"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let err = std::fs::write(snap.join("new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    assert_eq!(std::fs::read(snap.join("f")).unwrap(), b"committed");
    d.unmount(v["id"].as_str().unwrap());
}

/// Where the workspace `id` is mounted, from this process's mount table (other tests mount
/// other workspaces meanwhile).
fn mounts_of(id: &str) -> Vec<PathBuf> {
    let source = format!(" - fuse.chaserfs chaserfs:{id} ");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&source))
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .collect()
}

#[test]
fn mountpoints_stay_inside_the_roots_against_a_symlink_flip() {
    let d = daemon_with(&[]);
    let id = d.create_workspace("w")["id"].as_str().unwrap().to_string();
    let root = d.mount_root();
    let outside = d.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o777)).unwrap();
    // A directory a local user may write, in which `nobody` swaps a directory and a symlink
    // to `outside` with RENAME_EXCHANGE as fast as it can.
    let race = root.join("race");
    std::fs::create_dir_all(&race).unwrap();
    std::fs::set_permissions(&race, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let flipper = format!(
        r#"
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
os.mkdir("{race}/a")
os.symlink("{outside}", "{race}/b")
end = time.time() + 120
while time.time() < end and not os.path.exists("{race}/stop"):
    libc.renameat2(-100, b"{race}/a", -100, b"{race}/b", 2)
"#,
        race = race.display(),
        outside = outside.display()
    );
    // The system's Python: a user's (pyenv under /root) is not for `nobody` to run.
    let mut child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["/usr/bin/python3", "-c", &flipper])
        .current_dir("/")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::symlink_metadata(race.join("b")).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "the flipper died");
        assert!(Instant::now() < deadline, "the flipper did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut mounted = 0;
    for i in 0..300 {
        let path = race.join("a").join(format!("m{i}"));
        let (s, v) = start_session(&d, json!({"workspace": "w", "mountpoint": path}));
        if s == 201 {
            mounted += 1;
            d.unmount(v["id"].as_str().unwrap());
        } else {
            assert_eq!(s, 400, "{v}");
        }
        for m in mounts_of(&id) {
            assert!(m.starts_with(&root), "a session mounted at {}", m.display());
        }
    }
    std::fs::write(race.join("stop"), b"").unwrap();
    child.wait().unwrap();
    let created: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
    assert!(created.is_empty(), "made outside the roots: {created:?}");
    eprintln!("{mounted} of 300 session starts mounted");
    // Neither the mount root itself, nor a reserved or foreign place, nor inside a session.
    let (sid, inner) = d.mount("w", "one");
    d.create_workspace("v");
    for bad in [
        root.clone(),
        root.join(".imports/x"),
        PathBuf::from("/etc"),
        d.data_dir().join("m"),
        inner.join("nested"),
    ] {
        let (s, v) = start_session(&d, json!({"workspace": "v", "mountpoint": bad}));
        assert_eq!(s, 400, "{}: {v}", bad.display());
    }
    let (s, v) = start_session(&d, json!({"workspace": "v", "mountpoint": inner}));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("mountpoint_busy")),
        "{v}"
    );
    d.unmount(&sid);
}

/// Bytes of `data` compressed by the zstd command line.
fn zstd(data: &[u8], args: &[&str]) -> Vec<u8> {
    let mut child = Command::new("zstd")
        .args(args)
        .args(["-c", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(out.status.success());
    out.stdout
}

#[test]
fn decompression_and_header_bombs_are_refused_in_bounded_memory() {
    // Room for all eight at once from one account (a quarter of 32).
    let d = daemon_with(&["--max-archive-streams", "32"]);
    let work = d.dir.path();
    let before = peak_rss(d.pid());
    // A frame that asks for a 2 GiB window, then garbage: 4 KiB on the wire.
    let mut window_bomb = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, 21 << 3];
    window_bomb.resize(4 << 10, 0x5a);
    // A 64 MiB GNU long name, zstd-compressed to a few KiB.
    let long_name = tar_of(
        work,
        "longname.tar",
        "i = tarfile.TarInfo('a' * (64 << 20)); t.addfile(i)",
    );
    let header_bomb = zstd(&long_name, &["-19"]);
    assert!(header_bomb.len() < 1 << 20, "{} bytes", header_bomb.len());
    // A 64 MiB PAX record, zstd-compressed too (the daemon refuses it before reading it all,
    // so a plain upload would meet a closed connection mid-send).
    let pax = zstd(
        &tar_of(
            work,
            "pax.tar",
            "t.format = tarfile.PAX_FORMAT\n\
             i = tarfile.TarInfo('f'); i.pax_headers = {'comment': 'x' * (64 << 20)}; t.addfile(i)",
        ),
        &["-19"],
    );
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (url, key) = (d.url.clone(), d.key.clone());
            let (media, body) = match i % 3 {
                0 => ("application/zstd", window_bomb.clone()),
                1 => ("application/zstd", header_bomb.clone()),
                _ => ("application/zstd", pax.clone()),
            };
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                let mut r = agent
                    .post(format!("{url}/v1/workspaces/import"))
                    .header("Authorization", format!("Bearer {key}"))
                    .header("Content-Type", media)
                    .send(&body[..])
                    .unwrap();
                (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
            })
        })
        .collect();
    for t in threads {
        let (s, body) = t.join().unwrap();
        assert_eq!(s, 400, "{body}");
        assert!(body.contains("invalid_archive"), "{body}");
    }
    let grew = peak_rss(d.pid()).saturating_sub(before);
    eprintln!("peak RSS grew {} MiB", grew >> 20);
    assert!(grew < 256 << 20, "peak RSS grew {} MiB", grew >> 20);
    assert_eq!(
        d.call("GET", "/v1/workspaces", None).1["workspaces"],
        json!([])
    );
}

/// Raises this process's open files limit, for tests that hold thousands of connections.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reading and setting this process's own limit through valid pointers.
    #[allow(unsafe_code)]
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

#[test]
fn idle_connections_and_invented_methods_leave_the_api_and_fsync_working() {
    raise_nofile();
    let d = daemon_with(&[]);
    d.create_workspace("w");
    let (sid, path) = d.mount("w", "w");
    let before = peak_rss(d.pid());
    let addr = d.url.trim_start_matches("http://").to_string();
    // 4,000 connections that never send a byte, held open.
    let mut idle = Vec::new();
    for _ in 0..4000 {
        match TcpStream::connect(&addr) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connect: {e}"),
        }
    }
    let started = Instant::now();
    let (s, v) = d.call("GET", "/v1/workspaces", None);
    assert_eq!(s, 200, "{v}");
    eprintln!(
        "API answered in {:?} with 4,000 idle connections",
        started.elapsed()
    );
    let mut f = std::fs::File::create(path.join("durable")).unwrap();
    f.write_all(b"fsync works").unwrap();
    f.sync_all().unwrap();
    drop(idle);
    // 100,000 requests with methods nobody defined, on a few keep-alive connections.
    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = vec![0u8; 64 << 10];
    for batch in 0..1000 {
        let mut reqs = String::new();
        for i in 0..100 {
            reqs += &format!("M{batch}X{i} /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        }
        if conn.write_all(reqs.as_bytes()).is_err() {
            conn = TcpStream::connect(&addr).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            continue;
        }
        // Read the 100 answers (each ends its headers, bodies are short).
        let mut seen = 0;
        let mut got = Vec::new();
        while seen < 100 {
            let n = match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            got.extend_from_slice(&buf[..n]);
            seen = got.windows(9).filter(|w| w == b"HTTP/1.1 ").count();
        }
        if seen < 100 {
            conn = TcpStream::connect(&addr).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
        }
    }
    let (status, metrics) = {
        let mut r = ureq::get(format!("{}/metrics", d.url)).call().unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    assert_eq!(status, 200);
    assert!(
        metrics.len() < 1 << 20,
        "/metrics is {} bytes",
        metrics.len()
    );
    assert!(metrics.contains("method=\"other\""), "{metrics}");
    assert!(
        !metrics.contains("M999X"),
        "an invented method became a label"
    );
    let grew = peak_rss(d.pid()).saturating_sub(before);
    eprintln!("peak RSS grew {} MiB", grew >> 20);
    assert!(grew < 256 << 20, "peak RSS grew {} MiB", grew >> 20);
    f.write_all(b", still").unwrap();
    f.sync_all().unwrap();
    drop(f);
    d.unmount(&sid);
    let (sid, path) = d.mount("w", "again");
    assert_eq!(sh("cat durable", &path), "fsync works, still");
    d.unmount(&sid);
}

/// A sample of a metric without labels from `/metrics`.
fn metric(d: &Daemon, name: &str) -> f64 {
    d.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[test]
fn stalled_uploads_hold_up_neither_the_api_nor_commits_nor_shutdown() {
    raise_nofile();
    let mut d = daemon_with(&[]);
    d.create_workspace("w");
    let (_sid, path) = d.mount("w", "w");
    let addr = d.url.trim_start_matches("http://").to_string();
    // 600 tar uploads that send their headers and then nothing.
    let mut stalled = Vec::new();
    let mut refused = 0;
    for _ in 0..600 {
        let mut c = TcpStream::connect(&addr).unwrap();
        let req = format!(
            "POST /v1/workspaces/import HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/x-tar\r\nContent-Length: 100000000\r\n\r\n",
            d.key
        );
        c.write_all(req.as_bytes()).unwrap();
        stalled.push(c);
    }
    for c in &mut stalled {
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut head = [0u8; 12];
        if c.read_exact(&mut head).is_ok() && &head[9..12] == b"429" {
            refused += 1;
        }
    }
    eprintln!("{refused} of 600 stalled uploads answered 429 at once");
    assert!(refused >= 590, "only {refused} refused");
    let started = Instant::now();
    let (s, v) = d.call("GET", "/v1/workspaces", None);
    assert_eq!(s, 200, "{v}");
    let took = started.elapsed();
    eprintln!("API answered in {took:?} with 600 stalled uploads");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Periodic commits go on (every second here): unsynced writes get committed.
    std::fs::write(path.join("unsynced"), b"committed by the daemon").unwrap();
    let before = metric(&d, "chaserfs_commit_duration_seconds_count");
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&d, "chaserfs_commit_duration_seconds_count") <= before {
        assert!(Instant::now() < deadline, "no periodic commit\n{}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    // SIGTERM with every upload still stalled: done within 40 s, the session committed.
    let started = Instant::now();
    d.terminate();
    let code = loop {
        if let Some(code) = d.exited() {
            break code;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "SIGTERM still running after 40 s\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("SIGTERM took {:?}", started.elapsed());
    assert_eq!(code, 0, "{}", d.log());
    drop(stalled);
    d.restart();
    let (sid, path) = d.mount("w", "again");
    assert_eq!(
        std::fs::read(path.join("unsynced")).unwrap(),
        b"committed by the daemon"
    );
    d.unmount(&sid);
}

/// A daemon serving `alice` and `bob` (keys `alice-key`, `bob-key`) under `accounts` (the
/// accounts file's text); calls go as alice.
fn accounts_daemon(accounts: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "alice alice-key\nbob bob-key\n").unwrap();
    let file = dir.path().join("accounts.toml");
    std::fs::write(&file, accounts.replace("DIR", dir.path().to_str().unwrap())).unwrap();
    std::fs::write(dir.path().join("alice.token"), "alice-tok\n").unwrap();
    let mut all = vec![
        "--api-keys-file".to_string(),
        keys.display().to_string(),
        "--accounts-file".to_string(),
        file.display().to_string(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    let d = Daemon::start_with(Options {
        args: all,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        key: Some("alice-key".into()),
        ..Default::default()
    });
    // The files are read at start.
    drop(dir);
    d
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

#[test]
fn limits_belong_to_the_operator() {
    let d = accounts_daemon(
        r#"
        [defaults]
        workspaces = 3
        active_sessions = 1
        workspace_bytes = "1M"
        forks_per_call = 2
        [accounts.bob]
        workspaces = 10
        workspace_bytes = "4M"
        account_bytes = "2M"
        "#,
        &["--commit-interval", "1", "--session-retention", "1s"],
        &[],
    );
    let bob =
        |method: &str, path: &str, body: Option<Value>| d.call_as("bob-key", method, path, body);
    // Workspaces and forks a call.
    d.create_workspace("w1");
    let fork = |n: u64| {
        d.call(
            "POST",
            "/v1/workspaces/w1/clone",
            Some(json!({ "count": n })),
        )
    };
    let (s, v) = fork(3);
    assert_eq!((s, code(&v)), (403, "account_limit"), "{v}");
    let (s, v) = fork(2);
    assert_eq!(s, 201, "{v}");
    let (s, v) = d.call(
        "POST",
        "/v1/workspaces",
        Some(json!({"session_type": "sandbox", "name": "w4"})),
    );
    assert_eq!((s, code(&v)), (403, "account_limit"), "{v}");
    // A tenant cannot raise its quota past the operator's ceiling, nor lift it.
    let (s, v) = d.call(
        "PUT",
        "/v1/workspaces/w1/quota",
        Some(json!({"bytes": 2 << 20})),
    );
    assert_eq!((s, code(&v)), (403, "quota_above_limit"), "{v}");
    let (s, v) = d.call(
        "PUT",
        "/v1/workspaces/w1/quota",
        Some(json!({"bytes": null})),
    );
    assert_eq!(s, 200, "{v}");
    let (sid, path) = d.mount("w1", "w1");
    let e = write_synced(&path.join("big"), &vec![7u8; 2 << 20]).unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EDQUOT),
        "2 MiB under a 1 MiB ceiling: {e}"
    );
    // One active session.
    let (s, v) = start_session(
        &d,
        json!({"workspace": "w1-1", "mountpoint": d.mount_root().join("w2")}),
    );
    assert_eq!((s, code(&v)), (429, "too_many_sessions"), "{v}");
    d.unmount(&sid);
    // Bob's bytes: 1 MiB in one workspace, the rest of his 2 MiB in another (names count:
    // each holds a file named `f`), then nothing more.
    let write = |ws: &str, bytes: usize| {
        let (s, v) = bob(
            "POST",
            "/v1/workspaces",
            Some(json!({"session_type": "sandbox", "name": ws})),
        );
        assert_eq!(s, 201, "{v}");
        let mp = d.mount_root().join(format!("bob-{ws}"));
        let (s, v) = bob(
            "POST",
            "/v1/sessions",
            Some(json!({"workspace": ws, "mountpoint": mp})),
        );
        assert_eq!(s, 201, "{v}");
        write_synced(&mp.join("f"), &vec![1u8; bytes]).unwrap();
        let (s, v) = bob(
            "DELETE",
            &format!("/v1/sessions/{}", v["id"].as_str().unwrap()),
            None,
        );
        assert_eq!(s, 200, "{v}");
    };
    write("b1", 1 << 20);
    // A snapshot keeps its bytes whatever the workspace does next: b1's 1 MiB does not fit
    // in the 1 MiB less 2 bytes Bob has left.
    let (s, v) = bob(
        "POST",
        "/v1/workspaces/b1/snapshots",
        Some(json!({"name": "keep"})),
    );
    assert_eq!((s, code(&v)), (403, "account_limit"), "{v}");
    let (s, v) = bob("POST", "/v1/workspaces/b1/clone", Some(json!({"count": 2})));
    assert_eq!(
        (s, code(&v)),
        (403, "account_limit"),
        "two 1 MiB forks over 1 MiB left: {v}"
    );
    write("b2", (1 << 20) - 2);
    let (s, v) = bob(
        "POST",
        "/v1/workspaces",
        Some(json!({"session_type": "sandbox", "name": "b3"})),
    );
    assert_eq!((s, code(&v)), (403, "account_limit"), "{v}");
    let (s, v) = bob(
        "POST",
        "/v1/sessions",
        Some(json!({"workspace": "b1", "mountpoint": d.mount_root().join("b1-again")})),
    );
    assert_eq!((s, code(&v)), (403, "account_limit"), "{v}");
    let (s, v) = d.call_raw(
        "POST",
        "/v1/workspaces/import",
        &[
            ("Authorization", "Bearer bob-key"),
            ("Content-Type", "application/x-tar"),
        ],
        &[0u8; 1024],
    );
    assert_eq!((s, code(&v)), (403, "account_limit"), "{v}");
    // Alice's ended session is forgotten after the retention (1 s here); bob's too.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, list) = d.call("GET", "/v1/sessions", None);
        if list["sessions"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "ended sessions kept: {list}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A GitHub stand-in: answers 404 to every request after `hold`, recording each request's
/// path and headers.
fn fake_github(hold: Duration) -> (String, std::sync::mpsc::Receiver<Vec<String>>) {
    use std::io::BufRead;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut headers = Vec::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    headers.push(line.trim().to_string());
                }
                let _ = tx.send(headers);
                std::thread::sleep(hold);
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            });
        }
    });
    (url, rx)
}

/// Environments of the processes whose command line names `needle`.
fn environs_of(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            let env = std::fs::read(p.path().join("environ")).unwrap_or_default();
            out.push(String::from_utf8_lossy(&env).replace('\0', "\n"));
        }
    }
    out
}

#[test]
fn git_imports_use_their_own_accounts_token_and_none_of_the_daemons_secrets() {
    let (url, requests) = fake_github(Duration::from_secs(2));
    let d = accounts_daemon(
        "[accounts.alice]\ngithub_token_file = \"DIR/alice.token\"\n",
        &["--github-url", &url],
        &[
            ("CHASER_GITHUB_TOKEN", "operator-tok"),
            ("AWS_SECRET_ACCESS_KEY", "daemon-secret"),
        ],
    );
    let basic = |token: &str| {
        let out = Command::new("base64")
            .arg("-w0")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(format!("x-access-token:{token}").as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        format!(
            "Authorization: Basic {}",
            String::from_utf8(out.stdout).unwrap()
        )
    };
    // Alice's import: her token, and git sees none of the daemon's environment.
    let (s, v) = d.call(
        "POST",
        "/v1/workspaces/import",
        Some(json!({"github_repo": "acme/alice-private"})),
    );
    assert_eq!(s, 202, "{v}");
    let headers = requests.recv_timeout(Duration::from_secs(30)).unwrap();
    let envs = environs_of("acme/alice-private");
    assert!(!envs.is_empty(), "no git process found");
    for env in &envs {
        assert!(!env.contains("daemon-secret"), "git inherited: {env}");
        assert!(!env.contains("operator-tok"), "git inherited: {env}");
    }
    assert!(headers.contains(&basic("alice-tok")), "{headers:?}");
    // Bob's import: no token of his, and none borrowed from the operator.
    let (s, v) = d.call_as(
        "bob-key",
        "POST",
        "/v1/workspaces/import",
        Some(json!({"github_repo": "acme/bob-repo"})),
    );
    assert_eq!(s, 202, "{v}");
    let headers = loop {
        let h = requests.recv_timeout(Duration::from_secs(30)).unwrap();
        if h[0].contains("acme/bob-repo") {
            break h;
        }
    };
    assert!(
        !headers
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("authorization")),
        "{headers:?}"
    );
}

#[test]
fn session_lists_are_paged_and_filtered() {
    let d = daemon_with(&[]);
    d.create_workspace("w");
    let mut ids = Vec::new();
    for i in 0..3 {
        let (sid, _) = d.mount("w", &format!("m{i}"));
        d.unmount(&sid);
        ids.push(sid);
    }
    let (live, _) = d.mount("w", "live");
    let (s, page) = d.call("GET", "/v1/sessions?limit=2", None);
    assert_eq!(s, 200, "{page}");
    let first: Vec<&str> = page["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(first, [ids[0].as_str(), ids[1].as_str()]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, page) = d.call(
        "GET",
        &format!("/v1/sessions?limit=2&cursor={cursor}"),
        None,
    );
    let second: Vec<&str> = page["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(second, [ids[2].as_str(), live.as_str()]);
    assert!(page["next_cursor"].is_null(), "{page}");
    let (_, active) = d.call("GET", "/v1/sessions?status=active", None);
    let active = active["sessions"].as_array().unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0]["id"], live.as_str());
    // By workspace (name or id), and by host (none on a single host).
    d.create_workspace("other");
    let (elsewhere, _) = d.mount("other", "elsewhere");
    let ids_of = |query: &str| -> Vec<String> {
        let (s, v) = d.call("GET", &format!("/v1/sessions?{query}"), None);
        assert_eq!(s, 200, "{query}: {v}");
        v["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids_of("workspace=other"), [elsewhere.as_str()]);
    assert_eq!(ids_of("workspace=w&status=active"), [live.as_str()]);
    let (_, w) = d.call("GET", "/v1/workspaces/w", None);
    let w_id = w["id"].as_str().unwrap();
    assert_eq!(ids_of(&format!("workspace={w_id}")).len(), 4);
    assert!(ids_of("host=somewhere").is_empty());
    let (s, v) = d.call("GET", "/v1/sessions?workspace=nope", None);
    assert_eq!(s, 404, "{v}");
    d.unmount(&elsewhere);
    for bad in [
        "limit=0",
        "limit=1001",
        "cursor=zz",
        "status=gone",
        "colour=red",
    ] {
        let (s, v) = d.call("GET", &format!("/v1/sessions?{bad}"), None);
        assert_eq!(s, 400, "{bad}: {v}");
    }
    d.unmount(&live);
}

/// The operator's view of every account's sessions is for an account the accounts file makes
/// `operator = true` (bob here): a tenant (alice) gets 403 and sees no one else's; the file
/// cannot make every account an operator through `[defaults]`.
#[test]
fn only_an_operator_sees_every_account_s_sessions() {
    let d = accounts_daemon("[accounts.bob]\noperator = true\n", &[], &[]);
    let bob = |path: &str| d.call_as("bob-key", "GET", path, None);
    let alice_ws = d.create_workspace("a1")["id"].as_str().unwrap().to_string();
    let (sa, _) = d.mount("a1", "a1");
    let (s, w) = d.call_as(
        "bob-key",
        "POST",
        "/v1/workspaces",
        Some(json!({"session_type": "sandbox", "name": "b1"})),
    );
    assert_eq!(s, 201, "{w}");
    let path = d.mount_root().join("b1");
    let (s, sb) = d.call_as(
        "bob-key",
        "POST",
        "/v1/sessions",
        Some(json!({"workspace": "b1", "mountpoint": path})),
    );
    assert_eq!(s, 201, "{sb}");

    let (s, e) = d.call("GET", "/v1/admin/sessions", None);
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (403, Some("operator_only")),
        "{e}"
    );
    let (s, all) = bob("/v1/admin/sessions");
    assert_eq!(s, 200, "{all}");
    let accounts: Vec<&str> = all["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["account"].as_str().unwrap())
        .collect();
    assert_eq!(accounts, ["alice", "bob"], "{all}");
    let (_, alices) = bob("/v1/admin/sessions?account=alice&status=active");
    assert_eq!(alices["sessions"].as_array().unwrap().len(), 1, "{alices}");
    assert_eq!(alices["sessions"][0]["id"], sa.as_str());
    let (_, holder) = bob(&format!("/v1/admin/sessions?workspace_id={alice_ws}"));
    assert_eq!(holder["sessions"][0]["account"], "alice", "{holder}");
    let (_, first) = bob("/v1/admin/sessions?limit=1");
    assert_eq!(first["sessions"][0]["account"], "alice", "{first}");
    let cursor = first["next_cursor"].as_str().expect("a second page");
    let (_, second) = bob(&format!("/v1/admin/sessions?limit=1&cursor={cursor}"));
    assert_eq!(second["sessions"][0]["account"], "bob", "{second}");
    assert_eq!(second["next_cursor"], Value::Null);
    let (_, ended) = bob("/v1/admin/sessions?status=ended");
    assert_eq!(ended["sessions"].as_array().unwrap().len(), 0);
    let (s, _) = bob("/v1/admin/sessions?bogus=1");
    assert_eq!(s, 400);
    // The CLI's view, as the operator.
    let out = Command::new(common::bin())
        .args(["sessions", "all", "--status", "active", "--json"])
        .env("CHASER_API_URL", &d.url)
        .env("CHASER_API_KEY", "bob-key")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 2, "{listed}");
    d.unmount(&sa);
    let (s, _) = d.call_as(
        "bob-key",
        "DELETE",
        &format!("/v1/sessions/{}", sb["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(s, 200);

    // Never every account at once.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("accounts.toml");
    std::fs::write(&file, "[defaults]\noperator = true\n").unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "alice alice-key\n").unwrap();
    let out = Command::new(common::bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--accounts-file")
        .arg(&file)
        .arg("--api-keys-file")
        .arg(&keys)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("never in [defaults]"), "{stderr}");
}
