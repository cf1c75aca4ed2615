//! A cluster's two stores for one test: 3 etcd members and 3 Garage nodes started by
//! `scripts/cluster.sh`, each a real process, stopped (and resumed first, if a test paused
//! one) on drop. Shared by the chaserfs tests (`tests/cluster.rs`) and the engine's
//! (`fs/tests/model.rs`), so it uses the standard library only.

#![allow(dead_code)] // each test binary uses part of it

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};

pub struct Stores {
    pub dir: tempfile::TempDir,
    /// What `DIR/env` exports: endpoints, credentials, and each process's pid.
    pub env: HashMap<String, String>,
    /// An etcd prefix of this test's own.
    pub prefix: String,
}

static NEXT_SLOT: AtomicU16 = AtomicU16::new(0);

/// `scripts/cluster.sh`, found from the calling package up.
fn script() -> PathBuf {
    let mut dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    loop {
        let s = dir.join("scripts/cluster.sh");
        if s.exists() {
            return s;
        }
        dir = dir.parent().expect("scripts/cluster.sh above the package");
    }
}

impl Stores {
    pub fn start() -> Stores {
        let dir = tempfile::Builder::new()
            .prefix("chaserfs-cluster")
            .tempdir_in("/var/tmp")
            .unwrap();
        // Ports apart from other tests of this binary and of other runs, below the kernel's
        // ephemeral range (32768 up) so no client socket takes them.
        let slot = NEXT_SLOT.fetch_add(1, Ordering::SeqCst);
        let base = 10000 + (std::process::id() % 50) as u16 * 400 + slot * 50;
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir.path())
            .env("PORT_BASE", base.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cluster.sh start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(dir.path().join("env"))
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Stores {
            prefix: format!("/test-{}-{slot}/", std::process::id()),
            dir,
            env,
        }
    }

    pub fn var(&self, k: &str) -> &str {
        &self.env[k]
    }

    /// `etcdctl ARGS` against this cluster's etcd; its standard output.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let out = Command::new("etcdctl")
            .arg(format!("--endpoints={}", self.var("CHASER_ETCD_ENDPOINTS")))
            .args(args)
            .output()
            .expect("etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn pid(&self, name: &str) -> i32 {
        self.var(name).parse().unwrap()
    }
}

pub fn signal(pid: i32, sig: i32) {
    // SAFETY: signalling a process this test started.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, sig);
    }
}

impl Drop for Stores {
    fn drop(&mut self) {
        for (k, v) in &self.env {
            if k.contains("_PID_") {
                if let Ok(pid) = v.parse::<i32>() {
                    signal(pid, libc::SIGCONT);
                }
            }
        }
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}
