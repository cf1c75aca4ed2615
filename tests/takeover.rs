//! Graceful takeover: `serve --takeover` replaces a running daemon while a process inside a
//! mounted session keeps files open and writes; nothing is lost and nothing sees ENOTCONN.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Daemon;

/// Writes a numbered line every 2 ms to an open file until the file `stop` exists (two
/// minutes at most), stats and lists the directory between writes, keeps an unlinked file
/// open, and reports what it saw.
const WRITER: &str = r#"
import os, sys, time
root, stop = sys.argv[1], sys.argv[2]
f = os.open(root + "/log.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
ino = os.fstat(f).st_ino
g = open(root + "/gone.txt", "w+"); g.write("still here\n"); g.flush()
# Synced, so its page is clean and dropped below: the read must reach the new daemon.
os.fsync(g.fileno())
os.unlink(root + "/gone.txt")
print("ready", flush=True)
n, errors, end = 0, [], time.time() + 120
while not os.path.exists(stop) and time.time() < end:
    try:
        os.write(f, b"line %d\n" % n)
        n += 1
        os.stat(root + "/log.txt")
        os.listdir(root)
    except OSError as e:
        errors.append(str(e))
    time.sleep(0.002)  # a steady pace of writes, not a wait
os.fsync(f)
# From the daemon, not the page cache: the file lives on only by the kernel's reference.
with open("/proc/sys/vm/drop_caches", "w") as c:
    c.write("3")
g.seek(0)
print("lines", n)
print("errors", len(errors), errors[:3])
print("gone", g.read().strip())
print("same_ino", os.stat(root + "/log.txt").st_ino == ino)
"#;

/// Starts [`WRITER`] in `root` until `stop` exists; returns it and its output, once it has
/// said it is ready.
fn start_writer(
    root: &std::path::Path,
    stop: &std::path::Path,
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStdout>,
) {
    let mut writer = Command::new("python3")
        .args(["-c", WRITER])
        .arg(root)
        .arg(stop)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(writer.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    (writer, out)
}

#[test]
fn takeover_keeps_open_files_writing_and_the_api_answering() {
    let mut d = Daemon::start();
    d.create_workspace("tk");
    let (session, path) = d.mount("tk", "tk");
    let stop_writer = d.dir.path().join("writer-stop");
    let (mut writer, mut out) = start_writer(&path, &stop_writer);

    // The API is called throughout, until `stop`; every call must answer.
    let url = d.url.clone();
    let key = d.key.clone();
    let answered = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (answered, stop) = (answered.clone(), stop.clone());
        std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            let mut longest = Duration::ZERO;
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                let r = agent
                    .get(format!("{url}/v1/workspaces/tk"))
                    .header("Authorization", &format!("Bearer {key}"))
                    .call()
                    .expect("the API answers during the takeover");
                assert_eq!(r.status(), 200);
                answered.fetch_add(1, Ordering::SeqCst);
                longest = longest.max(t.elapsed());
                std::thread::sleep(Duration::from_millis(10)); // a steady pace, not a wait
            }
            longest
        })
    };
    // The takeover starts once both are under way, and they stop once both have gone on
    // past it: the new daemon answers calls and takes writes. (A poller that failed ends the
    // wait; joining it shows why.)
    let log_bytes = || std::fs::metadata(path.join("log.txt")).map_or(0, |m| m.len());
    let busy_since = |calls: usize, bytes: u64| {
        poller.is_finished()
            || (answered.load(Ordering::SeqCst) >= calls + 20 && log_bytes() >= bytes + 1000)
    };
    common::wait_until(
        Duration::from_secs(30),
        "API calls and writes before the takeover",
        || busy_since(0, 0),
    );
    let old_pid = d.pid();
    let started = Instant::now();
    assert_eq!(d.take_over(), 0, "the old daemon exits 0\n{}", d.log());
    eprintln!("takeover: old daemon gone after {:?}", started.elapsed());
    assert_ne!(d.pid(), old_pid);
    let (calls, bytes) = (answered.load(Ordering::SeqCst), log_bytes());
    common::wait_until(
        Duration::from_secs(30),
        "API calls and writes after the takeover",
        || busy_since(calls, bytes),
    );
    stop.store(true, Ordering::SeqCst);
    std::fs::write(&stop_writer, b"").unwrap();
    let longest = poller.join().unwrap();
    let calls = answered.load(Ordering::SeqCst);
    eprintln!("API: {calls} calls answered, longest {longest:?}");

    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(writer.wait().unwrap().success(), "{rest}");
    eprintln!("writer: {rest}");
    let field = |k: &str| {
        rest.lines()
            .find_map(|l| l.strip_prefix(&format!("{k} ")))
            .unwrap_or_else(|| panic!("{k} missing: {rest}"))
            .to_string()
    };
    assert!(field("errors").starts_with("0 "), "{rest}");
    assert_eq!(field("gone"), "still here");
    assert_eq!(field("same_ino"), "True");
    let lines: usize = field("lines").parse().unwrap();
    assert!(lines > 100, "{rest}");

    // The session is the same one, served by the new daemon; its end commits everything.
    let (s, v) = d.call("GET", &format!("/v1/sessions/{session}"), None);
    assert_eq!((s, v["status"].as_str()), (200, Some("active")), "{v}");
    d.unmount(&session);
    let (_, again) = d.mount("tk", "tk2");
    let text = std::fs::read_to_string(again.join("log.txt")).unwrap();
    let expected: String = (0..lines).map(|i| format!("line {i}\n")).collect();
    assert!(
        text == expected,
        "{} lines of {lines} came back",
        text.lines().count()
    );
    assert!(!again.join("gone.txt").exists());
}

#[test]
fn takeover_without_a_running_daemon_fails_clearly() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::bin())
        .args([
            "serve",
            "--takeover",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .arg("--mount-root")
        .arg(d.mount_root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no daemon to take over"), "{err}");
}

#[test]
fn a_successor_that_fails_leaves_the_old_daemon_serving() {
    let d = Daemon::start();
    d.create_workspace("tf");
    let (session, path) = d.mount("tf", "tf");
    std::fs::write(path.join("before.txt"), "before\n").unwrap();
    let mut open = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path.join("open.txt"))
        .unwrap();
    open.write_all(b"one\n").unwrap();
    let pid = d.pid();

    // A successor that asks, takes the handover frame, and dies without acknowledging it.
    let sock = d.data_dir().join("takeover.sock");
    let mut conn = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    conn.write_all(b"chaserfs takeover 2\n").unwrap();
    let mut len = [0u8; 4];
    conn.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    conn.read_exact(&mut body).unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(reply.get("handover").is_some(), "{reply}");
    // Shut down, not only closed: a process the other tests spawn meanwhile may hold a copy
    // of this descriptor for a moment.
    conn.shutdown(std::net::Shutdown::Both).unwrap();
    drop(conn);

    // The old daemon serves its session and the API again; the open file still writes.
    serving_again(&d, pid, &session);
    open.write_all(b"two\n").unwrap();
    open.sync_all().unwrap();
    drop(open);
    std::fs::write(path.join("after.txt"), "after\n").unwrap();
    assert_eq!(
        std::fs::read_to_string(path.join("before.txt")).unwrap(),
        "before\n"
    );
    assert!(
        d.log().contains("serving the sessions again"),
        "{}",
        d.log()
    );

    d.unmount(&session);
    remounted_holds(&d, "tf", "one\ntwo\n");
}

/// Waits until the old daemon (`pid`) answers the API again and still serves `session`.
fn serving_again(d: &Daemon, pid: i32, session: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut status, mut v) = (0, serde_json::Value::Null);
    while Instant::now() < deadline {
        (status, v) = d.call("GET", &format!("/v1/sessions/{session}"), None);
        if status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!((status, v["status"].as_str()), (200, Some("active")), "{v}");
    assert_eq!(d.pid(), pid, "the old daemon still runs");
}

/// The file descriptors of process `pid` that point at `path`.
fn holds(pid: u32, path: &std::path::Path) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|p| p == path))
        })
        .unwrap_or(false)
}

#[test]
fn a_successor_that_dies_after_the_handover_leaves_every_session_working() {
    let d = Daemon::start();
    d.create_workspace("td");
    let (session, path) = d.mount("td", "td");
    let mut open = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path.join("open.txt"))
        .unwrap();
    open.write_all(b"one\n").unwrap();
    let pid = d.pid();

    // A successor that receives the handover and the store, then fails on its own flags.
    let out = d
        .successor(&["--api-keys-file", "/nonexistent"])
        .wait_with_output()
        .unwrap();
    assert!(!out.status.success());
    serving_again(&d, pid, &session);
    open.write_all(b"two\n").unwrap();
    open.sync_all().unwrap();

    // A successor killed while it holds the store: it blocks reading its accounts file (a
    // FIFO nobody writes), which it reads after opening the store.
    let fifo = d.data_dir().parent().unwrap().join("accounts.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let mut successor = d.successor(&["--accounts-file", fifo.to_str().unwrap()]);
    let lock = d.data_dir().canonicalize().unwrap().join("LOCK");
    common::wait_until(
        Duration::from_secs(30),
        "the successor to open the store",
        || holds(successor.id(), &lock),
    );
    successor.kill().unwrap();
    successor.wait().unwrap();
    serving_again(&d, pid, &session);
    open.write_all(b"three\n").unwrap();
    open.sync_all().unwrap();
    drop(open);
    std::fs::write(path.join("after.txt"), "after\n").unwrap();

    d.unmount(&session);
    remounted_holds(&d, "td", "one\ntwo\nthree\n");
}

/// Workspace `ws`, mounted again, holds `open.txt` with `open` and `after.txt`.
fn remounted_holds(d: &Daemon, ws: &str, open: &str) {
    let (_, again) = d.mount(ws, &format!("{ws}2"));
    assert_eq!(
        std::fs::read_to_string(again.join("open.txt")).unwrap(),
        open
    );
    assert_eq!(
        std::fs::read_to_string(again.join("after.txt")).unwrap(),
        "after\n"
    );
}

/// systemd's end of `NOTIFY_SOCKET`: a datagram socket that daemons started with
/// [`Notify::env`] tell their state (READY, RELOADING, MAINPID, STOPPING).
struct Notify {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    socket: std::os::unix::net::UnixDatagram,
}

impl Notify {
    fn new() -> Notify {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        Notify {
            _dir: dir,
            path,
            socket,
        }
    }

    /// The options of a daemon that notifies this socket.
    fn daemon_options(&self) -> common::Options {
        common::Options {
            env: vec![("NOTIFY_SOCKET".into(), self.path.display().to_string())],
            ..Default::default()
        }
    }

    /// A daemon that notifies this socket, once it said it is ready.
    fn start_daemon(&self) -> Daemon {
        let d = Daemon::start_with(self.daemon_options());
        assert_eq!(self.recv(), format!("MAINPID={}\nREADY=1", d.pid()));
        d
    }

    /// The next notification.
    fn recv(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self
            .socket
            .recv(&mut buf)
            .expect("a notification within 60 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// The next notification, which must be a `MAINPID=`: the pid.
    fn main_pid(&self) -> i32 {
        self.recv()
            .strip_prefix("MAINPID=")
            .expect("the successor's MAINPID")
            .parse()
            .unwrap()
    }
}

/// Sends signal `sig` (`-HUP`, `-TERM`, ...) to `pid`.
fn kill(sig: &str, pid: i32) {
    let sent = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// Waits until `pid` (not this test's child) has exited: gone, or a zombie its new parent
/// has not reaped yet.
fn wait_gone(pid: i32) {
    common::wait_until(Duration::from_secs(60), "the process's exit", || {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .unwrap()
                .trim_start()
                .starts_with('Z'),
        }
    });
}

/// systemd's side of `Type=notify` (packaging/chaserfs.service), played over a real
/// NOTIFY_SOCKET: READY at start; a reload (SIGHUP, as `ExecReload`) while a process writes in
/// a session: RELOADING, then the successor's MAINPID and READY, and the old daemon exits 0
/// with no write failed; a stop of the new main process; then a cold start with the same
/// command line, which finds every line written.
#[test]
fn a_reload_by_sighup_moves_the_service_to_its_successor() {
    let notify = Notify::new();
    let mut d = notify.start_daemon();
    let old_pid = d.pid();

    d.create_workspace("tk");
    let (_, path) = d.mount("tk", "tk");
    let stop_writer = d.dir.path().join("writer-stop");
    let (mut writer, mut out) = start_writer(&path, &stop_writer);
    let log_bytes = || std::fs::metadata(path.join("log.txt")).map_or(0, |m| m.len());
    common::wait_until(Duration::from_secs(30), "writes before the reload", || {
        log_bytes() >= 1000
    });

    kill("-HUP", old_pid);
    assert_eq!(notify.recv(), "RELOADING=1");
    let main_pid = notify.main_pid();
    assert_ne!(main_pid, old_pid);
    // Not this test's child: killed if the test fails before it stops it.
    struct Successor(Option<i32>);
    impl Drop for Successor {
        fn drop(&mut self) {
            if let Some(pid) = self.0 {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
    let mut successor = Successor(Some(main_pid));
    assert_eq!(notify.recv(), format!("MAINPID={main_pid}\nREADY=1"));
    let code = common::wait_for(Duration::from_secs(30), "the old daemon's exit", || {
        d.exited()
    });
    assert_eq!(code, 0, "{}", d.log());
    let bytes = log_bytes();
    common::wait_until(Duration::from_secs(30), "writes after the reload", || {
        log_bytes() >= bytes + 1000
    });
    std::fs::write(&stop_writer, b"").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(writer.wait().unwrap().success(), "{rest}");
    assert!(rest.contains("errors 0 "), "{rest}");
    let lines: usize = rest
        .lines()
        .find_map(|l| l.strip_prefix("lines "))
        .unwrap()
        .parse()
        .unwrap();

    // `systemctl stop`: SIGTERM to the main process, now the successor.
    kill("-TERM", main_pid);
    assert_eq!(notify.recv(), "STOPPING=1");
    wait_gone(main_pid);
    successor.0 = None;

    // A cold start, with the same command line and no takeover.
    d.restart();
    assert_eq!(notify.recv(), format!("MAINPID={}\nREADY=1", d.pid()));
    let (_, again) = d.mount("tk", "tk2");
    let text = std::fs::read_to_string(again.join("log.txt")).unwrap();
    assert_eq!(text.lines().count(), lines, "every line written came back");
}

/// A stop sent the moment the successor of a reload becomes the main process (before it
/// serves) is kept until it can act on it: it finishes the takeover, says READY, then stops
/// cleanly (every session committed and unmounted), instead of dying with the mounts.
#[test]
fn a_stop_during_a_reload_is_not_lost() {
    let notify = Notify::new();
    let mut d = notify.start_daemon();
    let old_pid = d.pid();
    d.create_workspace("tk");
    let (_, path) = d.mount("tk", "tk");
    // Written but not synced: only a clean stop commits it.
    std::fs::write(path.join("kept.txt"), b"committed at the stop\n").unwrap();

    kill("-HUP", old_pid);
    assert_eq!(notify.recv(), "RELOADING=1");
    let main_pid = notify.main_pid();
    kill("-TERM", main_pid);
    assert_eq!(notify.recv(), format!("MAINPID={main_pid}\nREADY=1"));
    assert_eq!(notify.recv(), "STOPPING=1");
    wait_gone(main_pid);
    assert_eq!(
        common::wait_for(Duration::from_secs(30), "the old daemon's exit", || d
            .exited()),
        0
    );
    assert!(!common::is_mounted(&path), "the stop unmounted the session");
    d.restart();
    assert_eq!(notify.recv(), format!("MAINPID={}\nREADY=1", d.pid()));
    let (_, again) = d.mount("tk", "tk2");
    assert_eq!(
        std::fs::read_to_string(again.join("kept.txt")).unwrap(),
        "committed at the stop\n"
    );
}

/// A successor that cannot tell systemd it is the main process (the notify socket is gone)
/// takes nothing over: systemd would take the old daemon's exit for the service's and stop
/// the successor with every session. The old daemon serves on.
#[test]
fn a_successor_systemd_cannot_hear_leaves_the_old_daemon_serving() {
    let notify = Notify::new();
    let d = notify.start_daemon();
    let pid = d.pid();
    d.create_workspace("deaf");
    let (session, path) = d.mount("deaf", "deaf");
    std::fs::write(path.join("before.txt"), "before\n").unwrap();
    std::fs::remove_file(&notify.path).unwrap();

    // Killed if it took over after all, so a failure cannot leave it serving.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut successor = KillOnDrop(d.successor(&[]));
    let status = common::wait_for(Duration::from_secs(60), "the successor's exit", || {
        successor.0.try_wait().unwrap()
    });
    assert!(!status.success());
    assert!(
        d.log().contains("MAINPID"),
        "the successor says why: {}",
        d.log()
    );
    serving_again(&d, pid, &session);
    std::fs::write(path.join("after.txt"), "after\n").unwrap();
    d.unmount(&session);
    let (_, again) = d.mount("deaf", "deaf2");
    assert_eq!(
        std::fs::read_to_string(again.join("after.txt")).unwrap(),
        "after\n"
    );
}
