//! API benchmark: clone, snapshot and restore over real HTTP against a real daemon, with 1 and
//! with 8 concurrent clients, on a 1-file and on a 100,000-file workspace. Printed beside two
//! baselines from the same run: the HTTP floor (`GET /healthz` with the same clients) and a
//! native copy of the same tree (`cp -a` on the same disk), which is what a clone costs
//! without copy-on-write.
//!
//! `api-bench [--files N] [--ops N] [--chaserfs PATH] [--cluster DIR]`
//! (defaults: 100000 files, 2000 operations per figure, the `chaserfs` next to this binary).
//! With `--cluster DIR` (stores started by `scripts/cluster.sh start DIR`), the daemon is a
//! cluster host: clones and snapshots are etcd transactions, objects go to Garage.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

struct Daemon {
    child: Child,
    url: String,
    key: String,
    mount_root: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

impl Daemon {
    fn start(bin: &Path, dir: &Path, cluster: Option<&Path>) -> Result<Daemon> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(dir.join("daemon.log"))?;
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--mount-root")
            .arg(dir.join("mnt"));
        let mut key = None;
        if let Some(stores) = cluster {
            let env = std::fs::read_to_string(stores.join("env"))
                .context("reading the cluster's env (scripts/cluster.sh start DIR)")?;
            for (k, v) in env
                .lines()
                .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
            {
                cmd.env(k, v);
            }
            let k = "chs_api_bench_cluster_key".to_string();
            std::fs::write(dir.join("keys"), format!("default {k}\n"))?;
            cmd.arg("--api-keys-file")
                .arg(dir.join("keys"))
                .args(["--etcd-prefix", &format!("/api-bench-{port}/")]);
            key = Some(k);
        }
        let child = cmd
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while agent().get(format!("{url}/healthz")).call().is_err() {
            if Instant::now() > deadline {
                bail!("daemon did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let key = match key {
            Some(k) => k,
            None => std::fs::read_to_string(dir.join("data/api-key"))?
                .trim()
                .to_string(),
        };
        Ok(Daemon {
            child,
            url,
            key,
            mount_root: dir.join("mnt"),
        })
    }

    fn call(
        &self,
        a: &ureq::Agent,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.url);
        let auth = format!("Bearer {}", self.key);
        let mut resp = match method {
            "GET" => a.get(&url).header("Authorization", &auth).call()?,
            "DELETE" => a.delete(&url).header("Authorization", &auth).call()?,
            _ => a
                .post(&url)
                .header("Authorization", &auth)
                .send_json(body.unwrap_or(json!({})))?,
        };
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string()?;
        if status >= 300 {
            bail!("{method} {path}: {status} {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// Writes `files` small files, 1,000 per directory, under `root`.
fn make_tree(root: &Path, files: usize) -> Result<()> {
    for i in 0..files {
        let dir = root.join(format!("d{:04}", i / 1000));
        if i % 1000 == 0 {
            std::fs::create_dir_all(&dir)?;
        }
        std::fs::write(dir.join(format!("f{i}")), format!("file {i}\n"))?;
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Figure {
    ops_per_s: f64,
    p50: Duration,
    p99: Duration,
}

/// Runs `ops` calls of `op` spread over `clients` threads, each with its own keep-alive
/// connection; `op` gets the call's index.
fn measure(
    clients: usize,
    ops: usize,
    op: impl Fn(&ureq::Agent, usize) -> Result<()> + Send + Sync + 'static,
) -> Result<Figure> {
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (op, next) = (op.clone(), next.clone());
            std::thread::spawn(move || -> Result<Vec<Duration>> {
                let a = agent();
                let mut times = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= ops {
                        return Ok(times);
                    }
                    let t = Instant::now();
                    op(&a, i)?;
                    times.push(t.elapsed());
                }
            })
        })
        .collect();
    let mut all = Vec::with_capacity(ops);
    for t in threads {
        all.extend(t.join().expect("client thread")?);
    }
    let elapsed = started.elapsed();
    all.sort();
    Ok(Figure {
        ops_per_s: ops as f64 / elapsed.as_secs_f64(),
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
    })
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn main() -> Result<()> {
    let mut files = 100_000usize;
    let mut ops = 2000usize;
    let mut bin = std::env::current_exe()?.with_file_name("chaserfs");
    let mut cluster = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--files" => files = args.next().context("--files N")?.parse()?,
            "--ops" => ops = args.next().context("--ops N")?.parse()?,
            "--chaserfs" => bin = args.next().context("--chaserfs PATH")?.into(),
            "--cluster" => cluster = Some(PathBuf::from(args.next().context("--cluster DIR")?)),
            other => bail!("unknown argument {other}"),
        }
    }
    let work = tempfile::Builder::new()
        .prefix("chaserfs-api-bench")
        .tempdir_in("/var/tmp")?;
    let d = Arc::new(Daemon::start(&bin, work.path(), cluster.as_deref())?);
    let a = agent();

    // The two source workspaces, filled through a session.
    let sizes =
        [("1 file", 1usize), (&*format!("{files} files"), files)].map(|(l, n)| (l.to_string(), n));
    for (i, (_, n)) in sizes.iter().enumerate() {
        let name = format!("src{i}");
        d.call(
            &a,
            "POST",
            "/v1/workspaces",
            Some(json!({"session_type": "sandbox", "name": name})),
        )?;
        let mnt = d.mount_root.join(&name);
        let s = d.call(
            &a,
            "POST",
            "/v1/sessions",
            Some(json!({"workspace": name, "mountpoint": mnt})),
        )?;
        let t = Instant::now();
        make_tree(&mnt, *n)?;
        d.call(
            &a,
            "DELETE",
            &format!("/v1/sessions/{}", s["id"].as_str().unwrap()),
            None,
        )?;
        eprintln!(
            "filled {name} with {n} files in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        d.call(
            &a,
            "POST",
            &format!("/v1/workspaces/{name}/snapshots"),
            Some(json!({"name": "base"})),
        )?;
    }

    // Native baseline: copying the same tree on the same disk.
    let mut native = Vec::new();
    for (label, n) in &sizes {
        let src = work.path().join(format!("native-{n}"));
        make_tree(&src, *n)?;
        Command::new("sync").status()?;
        let t = Instant::now();
        let ok = Command::new("cp")
            .arg("-a")
            .arg(&src)
            .arg(work.path().join(format!("native-{n}-copy")))
            .stdout(Stdio::null())
            .status()?
            .success();
        if !ok {
            bail!("cp -a failed");
        }
        Command::new("sync").status()?;
        native.push((label.clone(), t.elapsed()));
    }

    println!("\n### Clone, snapshot and restore over HTTP ({ops} operations per row)\n");
    println!("| workspace | operation | clients | ops/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|");
    let mut rows: Vec<(String, &str, usize, Figure)> = Vec::new();
    for clients in [1usize, 8] {
        let floor = measure(clients, ops, {
            let d = d.clone();
            move |a, _| d.call(a, "GET", "/healthz", None).map(|_| ())
        })?;
        println!(
            "| (HTTP floor) | GET /healthz | {clients} | {:.0} | {} | {} |",
            floor.ops_per_s,
            ms(floor.p50),
            ms(floor.p99)
        );
        for (i, (label, _)) in sizes.iter().enumerate() {
            let src = format!("src{i}");
            let run = format!("c{clients}");
            let clone = measure(clients, ops, {
                let (d, src, run) = (d.clone(), src.clone(), run.clone());
                move |a, k| {
                    let body = json!({"clone_from": src, "name": format!("{src}-{run}-{k}")});
                    d.call(a, "POST", "/v1/workspaces", Some(body)).map(|_| ())
                }
            })?;
            let snapshot = measure(clients, ops, {
                let (d, src, run) = (d.clone(), src.clone(), run.clone());
                move |a, k| {
                    let body = json!({"name": format!("{run}-{k}")});
                    let path = format!("/v1/workspaces/{src}/snapshots");
                    d.call(a, "POST", &path, Some(body)).map(|_| ())
                }
            })?;
            // Restores of one workspace: each client restores its own clone, so that 8
            // clients measure 8 workspaces restoring at once.
            for c in 0..clients {
                let body = json!({"clone_from": src, "name": format!("{src}-{run}-r{c}")});
                d.call(&a, "POST", "/v1/workspaces", Some(body))?;
                let path = format!("/v1/workspaces/{src}-{run}-r{c}/snapshots");
                d.call(&a, "POST", &path, Some(json!({"name": "base"})))?;
            }
            let restore = measure(clients, ops, {
                let (d, src, run) = (d.clone(), src.clone(), run.clone());
                move |a, k| {
                    let path = format!(
                        "/v1/workspaces/{src}-{run}-r{}/snapshots/base/restore",
                        k % clients
                    );
                    d.call(a, "POST", &path, Some(json!({}))).map(|_| ())
                }
            })?;
            for (op, f) in [
                ("clone", clone),
                ("snapshot", snapshot),
                ("restore", restore),
            ] {
                println!(
                    "| {label} | {op} | {clients} | {:.0} | {} | {} |",
                    f.ops_per_s,
                    ms(f.p50),
                    ms(f.p99)
                );
                rows.push((label.clone(), op, clients, f));
            }
        }
    }
    println!("\nNative baseline, `cp -a` of the same tree + sync (a clone without copy-on-write):");
    for (label, t) in &native {
        println!("- {label}: {} ms", ms(*t));
    }
    println!(
        "\n{} p50 and ops/s relative to the 1-file workspace (target: p50 within 1.5x):",
        sizes[1].0
    );
    for (label, op, clients, f) in &rows {
        if *label != sizes[1].0 {
            continue;
        }
        let base = rows
            .iter()
            .find(|(l, o, c, _)| *l == sizes[0].0 && o == op && c == clients)
            .map(|r| &r.3)
            .expect("1-file row");
        println!(
            "- {op}, {clients} client(s): p50 {:.2}x, ops/s {:.2}x",
            f.p50.as_secs_f64() / base.p50.as_secs_f64(),
            f.ops_per_s / base.ops_per_s
        );
    }
    Ok(())
}
