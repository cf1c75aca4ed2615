//! Test helpers: a real `chaserfs serve` process on a loopback port, with its own data dir and
//! mount root, driven over real HTTP.
#![allow(dead_code)]

pub mod stores;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub key: String,
    child: Option<Child>,
    options: Options,
}

/// How to start a test daemon beyond the defaults.
#[derive(Clone, Default)]
pub struct Options {
    /// Extra `serve` arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// The key tests call with, when `args` names a keys file.
    pub key: Option<String>,
    /// A data dir elsewhere than DIR/data (a power-cut or small filesystem, say).
    pub data_dir: Option<PathBuf>,
}

/// The daemon under test: cargo's build, or `CHASERFS_TEST_BIN` (a long run, such as 500
/// power cuts, keeps a copy of the binary while the target dir is rebuilt).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("CHASERFS_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_chaserfs").into())
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("chaserfs-test")
            .tempdir_in("/var/tmp")
            .unwrap();
        let mut d = Daemon {
            dir,
            url: String::new(),
            key: String::new(),
            child: None,
            options,
        };
        d.restart();
        d
    }

    pub fn data_dir(&self) -> PathBuf {
        self.options
            .data_dir
            .clone()
            .unwrap_or_else(|| self.dir.path().join("data"))
    }

    pub fn mount_root(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// Starts the daemon (again) on a fresh port and waits for /healthz.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let port = free_port();
        self.url = format!("http://127.0.0.1:{port}");
        self.child = Some(self.spawn(port, &[]));
        self.wait_ready();
    }

    /// Starts `serve --takeover` on the same data dir and port; returns the old daemon's
    /// exit code once it has handed over and exited.
    pub fn take_over(&mut self) -> i32 {
        let mut old = self.child.take().expect("running");
        let port: u16 = self.url.rsplit(':').next().unwrap().parse().unwrap();
        self.child = Some(self.spawn(port, &["--takeover"]));
        let code = old.wait().unwrap().code().unwrap_or(-1);
        self.wait_ready();
        code
    }

    /// Starts `serve --takeover` with `extra` flags on the same data dir and port, leaving
    /// this daemon in place (for successors that are meant to fail).
    pub fn successor(&self, extra: &[&str]) -> Child {
        let port: u16 = self.url.rsplit(':').next().unwrap().parse().unwrap();
        let args: Vec<&str> = ["--takeover"].iter().chain(extra).copied().collect();
        self.spawn(port, &args)
    }

    fn spawn(&self, port: u16, extra: &[&str]) -> Child {
        let n = std::fs::read_dir(self.dir.path()).unwrap().count();
        let log =
            std::fs::File::create(self.dir.path().join(format!("daemon-{port}-{n}.log"))).unwrap();
        // Commit every second unless the test chose an interval.
        let interval: &[&str] = if self.options.args.iter().any(|a| a == "--commit-interval") {
            &[]
        } else {
            &["--commit-interval", "1"]
        };
        // An empty config file: not the machine's /etc/chaserfs/config.toml, if it has one.
        let config = self.dir.path().join("config.toml");
        if !config.exists() {
            std::fs::write(&config, "").unwrap();
        }
        Command::new(bin())
            .env("CHASER_CONFIG", &config)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(interval)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--mount-root")
            .arg(self.mount_root())
            .args(&self.options.args)
            .args(extra)
            .envs(self.options.env.iter().cloned())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = agent().get(format!("{}/healthz", self.url)).call() {
                if r.status() == 200 {
                    break;
                }
            }
            if Instant::now() > deadline {
                panic!("daemon did not become ready; its log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.key = match &self.options.key {
            Some(k) => k.clone(),
            // The generated key; the same as before if a test deleted the file.
            None => std::fs::read_to_string(self.data_dir().join("api-key"))
                .map(|k| k.trim().to_string())
                .unwrap_or_else(|_| self.key.clone()),
        };
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(&mut self) -> i32 {
        let mut child = self.child.take().expect("running");
        signal(&child, libc::SIGTERM);
        child.wait().unwrap().code().unwrap_or(-1)
    }

    /// SIGTERM without waiting; [`Daemon::exited`] tells when it has gone.
    pub fn terminate(&self) {
        signal(self.child.as_ref().expect("running"), libc::SIGTERM);
    }

    /// The exit code once the daemon has exited (it is then no longer running).
    pub fn exited(&mut self) -> Option<i32> {
        let status = self.child.as_mut().expect("running").try_wait().unwrap()?;
        self.child = None;
        Some(status.code().unwrap_or(-1))
    }

    /// SIGKILL: no commit, no unmount.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// (status, body) of a request with the account key.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(&self.key.clone(), method, path, body)
    }

    pub fn call_as(
        &self,
        key: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}{}", self.url, path);
        let auth = format!("Bearer {key}");
        let a = agent();
        let mut resp = match (method, body) {
            ("GET", _) => a.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => a.delete(&url).header("Authorization", &auth).call(),
            ("POST", Some(b)) => a.post(&url).header("Authorization", &auth).send_json(b),
            ("PUT", Some(b)) => a.put(&url).header("Authorization", &auth).send_json(b),
            ("POST", None) => a.post(&url).header("Authorization", &auth).send_empty(),
            (m, _) => panic!("unsupported {m}"),
        }
        .unwrap();
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub fn create_workspace(&self, name: &str) -> Value {
        let (s, v) = self.call(
            "POST",
            "/v1/workspaces",
            Some(serde_json::json!({"session_type": "sandbox", "name": name})),
        );
        assert_eq!(s, 201, "{v}");
        v
    }

    /// Starts a session of `workspace` mounted at MOUNT_ROOT/`sub`; returns (session id, path).
    pub fn mount(&self, workspace: &str, sub: &str) -> (String, PathBuf) {
        let path = self.mount_root().join(sub);
        let body = serde_json::json!({"workspace": workspace, "mountpoint": path});
        let (s, v) = self.call("POST", "/v1/sessions", Some(body));
        assert_eq!(s, 201, "{v}");
        (v["id"].as_str().unwrap().to_string(), path)
    }

    pub fn unmount(&self, session: &str) {
        let (s, v) = self.call("DELETE", &format!("/v1/sessions/{session}"), None);
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["status"], "ended");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A daemon that keeps uncommitted changes does not exit at SIGTERM; a failed test
            // must not wait for it forever.
            signal(&child, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(60);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // A test that failed midway (say, after a SIGKILL) may leave a dead mount behind.
        let root = self.mount_root();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for m in info.lines().filter_map(|l| l.split(' ').nth(4)) {
            if Path::new(m).starts_with(&root) {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: sending a signal to our own child process.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// Polls `cond` every 50 ms until it holds; panics saying what it waited for if `timeout`
/// passes first. For conditions a test would otherwise guess a sleep for.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(timeout, what, || cond().then_some(()));
}

/// Polls `f` every 50 ms until it gives a value, and returns it; panics saying what it
/// waited for if `timeout` passes first.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether something is mounted at `path`.
pub fn is_mounted(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4) == Some(&*p))
}

/// Runs a shell command, panicking with its output if it fails.
pub fn sh(cmd: &str, dir: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A small ext4 filesystem in an image file, loop-mounted; unmounted and removed on drop.
pub struct LoopDisk {
    dir: tempfile::TempDir,
}

impl LoopDisk {
    pub fn new(size: &str) -> LoopDisk {
        let dir = tempfile::Builder::new()
            .prefix("chaserfs-fulldisk")
            .tempdir_in("/var/tmp")
            .unwrap();
        let img = dir.path().join("disk.img");
        let mnt = dir.path().join("disk");
        std::fs::create_dir(&mnt).unwrap();
        sh(
            &format!(
                "truncate -s {size} {img} && mkfs.ext4 -q -m 0 -F {img} && mount -o loop {img} {mnt}",
                img = img.display(),
                mnt = mnt.display()
            ),
            Path::new("/"),
        );
        LoopDisk { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("disk")
    }

    pub fn avail(&self) -> u64 {
        sh(
            &format!("df --output=avail -B1 {} | tail -1", self.path().display()),
            Path::new("/"),
        )
        .trim()
        .parse()
        .unwrap()
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.path()).status();
    }
}

/// Writes `path` in 1 MiB pieces of fresh bytes (nothing to deduplicate), fdatasync every
/// 16 MiB, until an error; returns it.
pub fn fill_until_error(path: &Path) -> std::io::Error {
    let mut f = match std::fs::File::create(path) {
        Ok(f) => f,
        Err(e) => return e, // full already
    };
    for i in 1u64.. {
        if let Err(e) = f.write_all(&noise(i * 1000 + path.as_os_str().len() as u64, 1 << 20)) {
            return e;
        }
        if i % 16 == 0 {
            if let Err(e) = f.sync_data() {
                return e;
            }
        }
        assert!(i < 4096, "4 GiB written to a small disk without an error");
    }
    unreachable!()
}

pub fn checksum(path: &Path) -> String {
    sh(&format!("sha256sum {}", path.display()), Path::new("/"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

impl Daemon {
    /// A request with raw bytes and headers, for malformed input.
    pub fn call_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Value) {
        let url = format!("{}{}", self.url, path);
        let a = agent();
        let mut resp = match method {
            "POST" => {
                let mut r = a.post(&url);
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r.send(body)
            }
            "PUT" => {
                let mut r = a.put(&url);
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r.send(body)
            }
            "GET" => {
                let mut r = a.get(&url);
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r.call()
            }
            "DELETE" => {
                let mut r = a.delete(&url);
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r.call()
            }
            m => panic!("unsupported {m}"),
        }
        .unwrap();
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// The text of `/metrics` (it needs no key).
    pub fn metrics(&self) -> String {
        let (status, text) = self.call_raw("GET", "/metrics", &[], b"");
        assert_eq!(status, 200, "{text}");
        text.as_str().expect("metrics are text").to_string()
    }

    /// Polls a workspace until its status is no longer `importing`.
    pub fn wait_imported(&self, selector: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (s, v) = self.call("GET", &format!("/v1/workspaces/{selector}"), None);
            assert_eq!(s, 200, "{v}");
            if v["status"] != "importing" {
                return v;
            }
            assert!(Instant::now() < deadline, "import did not finish: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Bytes the data dir's files take on the disk, as allocated (a segment gives a deleted
    /// chunk's pages back as a hole, its length unchanged). RocksDB deletes files while we
    /// walk, so vanished ones count as nothing (`du` would fail on them).
    pub fn data_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fn walk(p: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(p) else {
                return 0;
            };
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.blocks() * 512,
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.data_dir())
    }

    /// The daemon's log so far, for assertion messages.
    pub fn log(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("daemon-") {
                out += &std::fs::read_to_string(e.path()).unwrap_or_default();
            }
        }
        out
    }
}

/// Serves `base` (holding OWNER/REPO repositories) with `git daemon` on a loopback port;
/// killed on drop.
pub struct GitDaemon {
    child: Child,
    pub url: String,
}

impl GitDaemon {
    pub fn start(base: &Path) -> GitDaemon {
        let port = free_port();
        let child = Command::new("git")
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", base.display()),
            ])
            .arg(base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "git daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        GitDaemon {
            child,
            url: format!("git://127.0.0.1:{port}"),
        }
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes BASE/OWNER/REPO a repository with a few commits and files; returns its HEAD.
pub fn make_repo(base: &Path, owner: &str, repo: &str) -> String {
    let dir = base.join(owner).join(repo);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    sh(
        "git init -q -b main . && git config user.email t@example.com && git config user.name t",
        &dir,
    );
    for i in 0..3 {
        std::fs::write(
            dir.join(format!("src/file{i}.txt")),
            format!("content {i}\n"),
        )
        .unwrap();
        std::fs::write(dir.join("README.md"), format!("# {repo}\nrevision {i}\n")).unwrap();
        sh(
            &format!("git add -A && git commit -q -m 'commit {i}'"),
            &dir,
        );
    }
    sh("git rev-parse HEAD", &dir).trim().to_string()
}

/// `chaserfs fsck` of a data dir (daemon stopped): `Ok(report)` when clean, else the report.
pub fn fsck(data_dir: &Path) -> Result<String, String> {
    let out = Command::new(bin())
        .args(["fsck", "--data-dir"])
        .arg(data_dir)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(report)
    } else {
        Err(report)
    }
}

/// Incompressible bytes that differ per seed (lz4 and dedup would hide what the disk holds).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs a Python script (`python3 -c SCRIPT ARG`); its stdout, or a panic with its stderr.
pub fn python(script: &str, arg: &Path) -> String {
    python_with(script, &[arg.as_os_str()])
}

/// [`python`] with any arguments.
pub fn python_with(script: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

impl LoopDisk {
    /// Fills the disk with a file (returned) that leaves `room` bytes free.
    pub fn fill_leaving(&self, room: u64) -> PathBuf {
        let ballast = self.path().join("ballast");
        sh(
            &format!("fallocate -l {} {}", self.avail() - room, ballast.display()),
            Path::new("/"),
        );
        ballast
    }
}

/// Writes a file and fsyncs it; with the kernel's writeback cache a quota error can surface
/// at the write or at the fsync.
pub fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Peak resident memory of a process, in MiB.
pub fn peak_rss_mib(pid: i32) -> u64 {
    peak_rss(pid) >> 20
}

/// Peak resident memory of a process, in bytes.
pub fn peak_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb << 10
}

/// A tree as deep and as wide as a session likes: `wide/` with WIDTH empty files, and
/// `deep/d/d/.../d/bottom`, DEPTH directories down.
#[allow(dead_code)]
pub mod deep_tree {
    use std::path::Path;

    /// DEPTH and WIDTH: 100,000 and 1,000,000 unless `CHASERFS_DEEP_DEPTH` and
    /// `CHASERFS_DEEP_WIDTH` say otherwise.
    pub fn size() -> (usize, usize) {
        let get = |var: &str, default| {
            std::env::var(var).map_or(default, |v| v.parse().expect("a number"))
        };
        (
            get("CHASERFS_DEEP_DEPTH", 100_000),
            get("CHASERFS_DEEP_WIDTH", 1_000_000),
        )
    }

    /// Makes `wide/` with WIDTH empty files and `deep/d/d/.../d/bottom`, DEPTH directories down.
    const MAKE: &str = r#"
import os, sys
os.chdir(sys.argv[1])
depth, width = int(sys.argv[2]), int(sys.argv[3])
os.mkdir("wide")
for i in range(width):
    os.mknod("wide/%07d" % i)
os.mkdir("deep")
os.chdir("deep")
for _ in range(depth):
    os.mkdir("d")
    os.chdir("d")
open("bottom", "w").write("at the bottom\n")
"#;

    /// Prints the entries in `wide/`, the directories down `deep/`, and what `bottom` holds.
    const CHECK: &str = r#"
import os, sys
os.chdir(sys.argv[1])
width = sum(1 for _ in os.scandir("wide"))
os.chdir("deep")
depth = 0
while os.path.isdir("d"):
    os.chdir("d")
    depth += 1
print(width, depth, open("bottom").read().strip())
"#;

    /// Makes the tree in `dir` (a mountpoint), as a session would: mkdir and chdir.
    pub fn make(dir: &Path, depth: usize, width: usize) {
        let (depth, width) = (depth.to_string(), width.to_string());
        super::python_with(MAKE, &[dir.as_os_str(), depth.as_ref(), width.as_ref()]);
    }

    /// What [`check`] says of the tree made with these sizes.
    pub fn want(depth: usize, width: usize) -> String {
        format!("{width} {depth} at the bottom")
    }

    /// The tree in `dir` read back: entries in `wide/`, levels down `deep/`, `bottom`.
    pub fn check(dir: &Path) -> String {
        super::python(CHECK, dir).trim().to_string()
    }
}

/// The sample Grafana dashboard (`packaging/grafana-dashboard.json`): each panel's title and
/// the metrics its queries read (a histogram's `_bucket`/`_count` series as rendered).
pub fn dashboard_panels() -> Vec<(String, Vec<String>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    panels
        .iter()
        .map(|p| {
            let mut metrics = Vec::new();
            for target in p["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                for prefix in ["chaserfs_", "process_"] {
                    for (at, _) in expr.match_indices(prefix) {
                        let name: String = expr[at..]
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        if !metrics.contains(&name) {
                            metrics.push(name);
                        }
                    }
                }
            }
            (p["title"].as_str().expect("title").to_string(), metrics)
        })
        .collect()
}

/// Whether a `/metrics` text has a sample of `metric` (any labels).
pub fn has_series(text: &str, metric: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix(metric)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

/// The dashboard's panels some metric of which none of `scrapes` has.
pub fn panels_without_data(scrapes: &[&str], skip: impl Fn(&str) -> bool) -> Vec<String> {
    dashboard_panels()
        .into_iter()
        .filter(|(title, _)| !skip(title))
        .flat_map(|(title, metrics)| {
            metrics
                .into_iter()
                .filter(|m| !scrapes.iter().any(|t| has_series(t, m)))
                .map(move |m| format!("{title}: {m}"))
                .collect::<Vec<_>>()
        })
        .collect()
}
