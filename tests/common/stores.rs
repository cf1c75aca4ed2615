//! A cluster's two stores for one test: 3 etcd members and 3 Garage nodes started by
//! `scripts/cluster.sh`, each a real process, stopped (and resumed first, if a test paused
//! one) on drop. Shared by the chaserfs tests (`tests/cluster.rs`) and the engine's
//! (`fs/engine/tests/model.rs`), so it uses the standard library only.
//!
//! Where etcd or Garage is not installed, a test that needs them is skipped with one line on
//! stderr ([`Stores::start_or_skip`]), unless `CHASERFS_REQUIRE_CLUSTER=1` (as in CI) makes
//! their absence a failure.

#![allow(dead_code)] // each test binary uses part of it

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
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

/// Set to 1 where the cluster tests must run (CI): a missing store is then a failure.
pub const REQUIRE_ENV: &str = "CHASERFS_REQUIRE_CLUSTER";

/// An executable file at `p`.
fn executable(p: &Path) -> bool {
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `name` on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
}

/// A store's binary as `scripts/cluster.sh` finds it: `$VAR` if set, else `name` on PATH,
/// else `fallback`. Why not, when there is none.
fn find_bin(var: &str, name: &str, fallback: &str) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        return if executable(&p) {
            Ok(p)
        } else {
            Err(format!("{var}={} is not an executable file", p.display()))
        };
    }
    on_path(name)
        .or_else(|| Some(PathBuf::from(fallback)).filter(|p| executable(p)))
        .ok_or_else(|| format!("no {name} ({var} unset, none on PATH, none at {fallback})"))
}

/// Garage: `$GARAGE_BIN`, `garage` on PATH, or where `scripts/install-cluster-stores.sh`
/// builds it.
pub fn garage_bin() -> Result<PathBuf, String> {
    find_bin(
        "GARAGE_BIN",
        "garage",
        "/var/cache/chaserfs/garage/bin/garage",
    )
}

/// etcd: `$ETCD_BIN`, `etcd` on PATH, or Debian's.
pub fn etcd_bin() -> Result<PathBuf, String> {
    find_bin("ETCD_BIN", "etcd", "/usr/bin/etcd")
}

/// What a cluster test needs that this machine lacks: etcd, etcdctl and Garage, and the
/// tools named in `extra` (on PATH). Empty when everything is there.
pub fn missing(extra: &[&str]) -> Vec<String> {
    let mut missing: Vec<String> = [garage_bin(), etcd_bin()]
        .into_iter()
        .filter_map(Result::err)
        .collect();
    for tool in ["etcdctl"].iter().chain(extra) {
        if on_path(tool).is_none() {
            missing.push(format!("no {tool} on PATH"));
        }
    }
    missing
}

/// Whether the calling test can have its stores (and the `extra` tools) here. If not, it
/// prints one line to stderr naming the test and what is missing, and answers false (the
/// test returns, passing); with `CHASERFS_REQUIRE_CLUSTER=1` it panics instead.
pub fn available(extra: &[&str]) -> bool {
    let missing = missing(extra);
    if missing.is_empty() {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("a cluster test")
        .to_string();
    let why = missing.join("; ");
    if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
        panic!("{test}: {why}; {REQUIRE_ENV}=1 requires the cluster tests to run");
    }
    // Straight to the stderr descriptor: eprintln! would be captured, and shown only for a
    // failing test.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {why} (scripts/install-cluster-stores.sh installs etcd, Garage and \
         openssl; {REQUIRE_ENV}=1 makes this a failure)"
    );
    false
}

impl Stores {
    /// The stores, started, if this machine has them (see [`available`]); `extra`: other
    /// tools the test needs on PATH.
    pub fn start_or_skip(extra: &[&str]) -> Option<Stores> {
        available(extra).then(Stores::start)
    }

    /// Starts the stores; they must be installed (see [`Stores::start_or_skip`]). A start
    /// that fails (once in a CI run, all three Garage nodes aborted as they started) is tried
    /// again on other ports, twice at most, and said on stderr.
    pub fn start() -> Stores {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Stores::try_start() {
                Ok(stores) => return stores,
                Err(why) => {
                    let _ = writeln!(std::io::stderr(), "stores did not start, again: {why}");
                    failures.push(why);
                }
            }
        }
        panic!("cluster.sh start failed three times: {failures:#?}");
    }

    fn try_start() -> Result<Stores, String> {
        let dir = tempfile::Builder::new()
            .prefix("chaserfs-cluster")
            .tempdir_in("/var/tmp")
            .unwrap();
        // Ports apart from other tests of this binary and of other runs, below the kernel's
        // ephemeral range (32768 up) so no client socket takes them.
        let slot = NEXT_SLOT.fetch_add(1, Ordering::SeqCst);
        let base = 10000 + (std::process::id() % 50) as u16 * 400 + slot * 50;
        let mut cmd = Command::new("bash");
        cmd.arg(script())
            .arg("start")
            .arg(dir.path())
            .env("PORT_BASE", base.to_string());
        // The binaries `available` found, so the script runs the same ones.
        if let Ok(garage) = garage_bin() {
            cmd.env("GARAGE_BIN", garage);
        }
        if let Ok(etcd) = etcd_bin() {
            cmd.env("ETCD_BIN", etcd);
        }
        let out = cmd.output().unwrap();
        if !out.status.success() {
            let logs: String = (1..=3)
                .map(|i| {
                    let log = std::fs::read_to_string(dir.path().join(format!("garage{i}.log")));
                    let log = log.unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(5).collect();
                    format!("garage{i}.log ends: {tail:?}\n")
                })
                .collect();
            let _ = Command::new("bash")
                .arg(script())
                .arg("stop")
                .arg(dir.path())
                .status();
            return Err(format!(
                "ports from {base}: {}{}{logs}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let env = std::fs::read_to_string(dir.path().join("env"))
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(Stores {
            prefix: format!("/test-{}-{slot}/", std::process::id()),
            dir,
            env,
        })
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
