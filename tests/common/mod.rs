//! Test helpers: a real `chaserfs serve` process on a loopback port, with its own data dir and
//! mount root, driven over real HTTP.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub key: String,
    child: Option<Child>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_chaserfs")
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
        let dir = tempfile::Builder::new()
            .prefix("chaserfs-test")
            .tempdir_in("/var/tmp")
            .unwrap();
        let mut d = Daemon {
            dir,
            url: String::new(),
            key: String::new(),
            child: None,
        };
        d.restart();
        d
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn mount_root(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// Starts the daemon (again) on a fresh port and waits for /healthz.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let port = free_port();
        self.url = format!("http://127.0.0.1:{port}");
        let log =
            std::fs::File::create(self.dir.path().join(format!("daemon-{port}.log"))).unwrap();
        let child = Command::new(bin())
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--commit-interval",
                "1",
            ])
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--mount-root")
            .arg(self.mount_root())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = agent().get(format!("{}/healthz", self.url)).call() {
                if r.status() == 200 {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "daemon did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.key = std::fs::read_to_string(self.data_dir().join("api-key"))
            .unwrap()
            .trim()
            .to_string();
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(&mut self) -> i32 {
        let mut child = self.child.take().expect("running");
        signal(&child, libc::SIGTERM);
        child.wait().unwrap().code().unwrap_or(-1)
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
        if self.child.is_some() {
            self.stop();
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

pub fn checksum(path: &Path) -> String {
    sh(&format!("sha256sum {}", path.display()), Path::new("/"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
