//! `chaserfs bench`: clone, snapshot, restore, create, delete and session start/end against a
//! running daemon, with N clients (or each of a list of client counts), for a duration or a
//! count per operation. Everything runs on workspaces the bench makes itself (named
//! `bench-XXXXXXXX-...`: a clone of `--workspace`, a fresh one, or with `--files` fresh ones
//! filled through a session), so the daemon's own workspaces are read once and never changed,
//! and all of it is deleted at the end, also after Ctrl-C. `--baseline` measures beside the
//! results, in the same run, the HTTP floor (`GET /healthz` with the same clients) and a
//! native `cp -a` of the same tree on the same disk, and prints each row's p50 against them.
//! It exits non-zero, after its report, when any call failed.
//!
//! This file holds the flags, the rows and the report; `work` runs the operations, `baseline`
//! makes trees and measures the native copy, `plot` draws the SVG.

mod baseline;
mod plot;
mod work;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use crate::client::{seg, table, Client, ClientOpts};

#[derive(Args)]
pub struct BenchArgs {
    /// Workspace the bench's workspaces start from (cloned once, never changed); a fresh
    /// empty workspace without it. Refused while it has an active session.
    #[arg(long, conflicts_with = "files")]
    workspace: Option<String>,
    /// Operations to measure, one after another.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "clone,snapshot,restore,create,delete,session"
    )]
    ops: Vec<Op>,
    /// Concurrent clients; a list (`1,8`) runs every operation with each in turn.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1",
        value_parser = clap::value_parser!(u64).range(1..=256)
    )]
    clients: Vec<u64>,
    /// Seconds each operation runs for (unless --count): a run lasts about this times the
    /// number of operations (a session is one operation, two rows), plus the clean-up.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Operations of each kind, instead of a duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Where session mounts go, on the daemon's host: under its --mount-root.
    #[arg(long, default_value = "/run/chaserfs")]
    mount_root: String,
    /// Draw latency over time and a latency histogram into this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Start from a fresh workspace holding N small files (1,000 per directory), written
    /// through a session mounted under --mount-root, so the bench must run on the daemon's
    /// host. A list (`1,100000`) measures every operation on each size in turn.
    #[arg(long, value_delimiter = ',')]
    files: Vec<u64>,
    /// Also measure, in the same run: the HTTP floor (`GET /healthz` with the same clients,
    /// count and duration) and, with --files, a native `cp -a` + sync of the same tree in
    /// --baseline-dir; each row's p50 is printed as a multiple of both.
    #[arg(long)]
    baseline: bool,
    /// Where --baseline makes and copies the native tree: a directory on the daemon's data
    /// disk, for a like-for-like copy.
    #[arg(long, default_value = "/var/tmp")]
    baseline_dir: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Op {
    Clone,
    Snapshot,
    Restore,
    Create,
    Delete,
    /// Start a session (mount) and end it (commit, unmount): two rows.
    Session,
}

/// The name of the HTTP floor's rows (`--baseline`).
const FLOOR: &str = "GET /healthz";

/// One timed call: when it started (since the bench began), how long it took, whether it
/// answered 2xx.
#[derive(Clone, Copy)]
struct Sample {
    at: f64,
    ms: f64,
    ok: bool,
}

/// The samples of one row of the table: one operation, with one client count, on one
/// workspace (`files`: its size, with --files).
struct Row {
    name: &'static str,
    clients: u64,
    files: Option<u64>,
    seconds: f64,
    samples: Vec<Sample>,
    first_error: Option<String>,
}

impl Row {
    fn ok_ms(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.samples.iter().filter(|s| s.ok).map(|s| s.ms).collect();
        v.sort_by(f64::total_cmp);
        v
    }
    fn errors(&self) -> usize {
        self.samples.iter().filter(|s| !s.ok).count()
    }
    /// The row's name in a plot's legend: with its clients and size when the run has several.
    fn label(&self, several: bool) -> String {
        match (several, self.files) {
            (false, _) => self.name.to_string(),
            (true, None) => format!("{}, {}", self.name, counted(self.clients, "client")),
            (true, Some(n)) => format!(
                "{}, {}, {}",
                self.name,
                counted(self.clients, "client"),
                counted(n, "file")
            ),
        }
    }
    fn json(&self, baselines: Option<&baseline::Baselines>) -> Value {
        let ms = self.ok_ms();
        let p50 = quantile(&ms, 0.50);
        let mut v = json!({
            "op": self.name,
            "clients": self.clients,
            "ops": ms.len(),
            "errors": self.errors(),
            "first_error": self.first_error,
            "seconds": self.seconds,
            "ops_per_sec": ms.len() as f64 / self.seconds.max(1e-9),
            "p50_ms": p50,
            "p95_ms": quantile(&ms, 0.95),
            "p99_ms": quantile(&ms, 0.99),
            "max_ms": ms.last().copied(),
        });
        if let Some(n) = self.files {
            v["files"] = json!(n);
        }
        if let (Some(b), Some(p50)) = (baselines, p50) {
            if self.name != FLOOR {
                v["x_http_floor"] = json!(b.floor_ms(self.clients).map(|f| p50 / f));
                if let Some(n) = self.files {
                    v["x_native_cp_a"] = json!(b.native_ms(n).map(|c| p50 / c));
                }
            }
        }
        v
    }
}

fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i])
}

/// Set by Ctrl-C or SIGTERM: the clients stop, the bench cleans up and exits.
static STOP: AtomicBool = AtomicBool::new(false);

fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

pub fn run(opts: ClientOpts, args: BenchArgs) -> anyhow::Result<()> {
    let c = Client::new(opts);
    // The first Ctrl-C stops the clients and lets the clean-up run; a second one exits.
    std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("signal runtime");
        rt.block_on(crate::signal::shutdown_signal());
        STOP.store(true, Ordering::SeqCst);
        rt.block_on(crate::signal::shutdown_signal());
        std::process::exit(130);
    });

    let source = match &args.workspace {
        Some(ws) => {
            let w = c.call("GET", &format!("/v1/workspaces/{}", seg(ws)), None)?;
            if !w["active_session_id"].is_null() {
                bail!("workspace {ws} has an active session; bench runs only against workspaces nobody is using");
            }
            Some(w["id"].as_str().unwrap_or_default().to_string())
        }
        None => None,
    };

    let run_id = format!("bench-{:08x}", rand::random::<u32>());
    let b = work::Bench {
        c: &c,
        args: &args,
        run: run_id.clone(),
        started: Instant::now(),
        made: Mutex::new(work::Made::default()),
        next: AtomicU64::new(1),
    };
    let result = work::measure(&b, source.as_deref());
    let cleaned = b.clean_up();
    let (rows, baselines) = result?;
    let deleted = cleaned.context("cleaning up the bench's workspaces")?;
    let baselines = args.baseline.then_some(baselines);

    let report = json!({
        "url": c.opts.api_url,
        "run": run_id,
        "clients": match args.clients[..] {
            [one] => json!(one),
            _ => json!(args.clients),
        },
        "count": args.count,
        "duration": if args.count.is_none() { Some(args.duration) } else { None },
        "source": args.workspace,
        "files": (!args.files.is_empty()).then_some(&args.files),
        "interrupted": stopped(),
        "results": rows.iter().map(|r| r.json(baselines.as_ref())).collect::<Vec<_>>(),
        "baseline": baselines.as_ref().map(|b| b.json(&args.baseline_dir)),
        "cleaned_up_workspaces": deleted,
    });
    let several = args.clients.len() > 1 || args.files.len() > 1;
    let calls: usize = rows.iter().map(|r| r.samples.len()).sum();
    let errors: usize = rows.iter().map(Row::errors).sum();
    if let Some(path) = &args.plot {
        let heading = heading(&report, &args, calls, errors);
        plot::plot(path, &heading, &rows, several)
            .with_context(|| format!("drawing {}", path.display()))?;
    }
    if c.opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report, &args);
        for r in &rows {
            if let Some(e) = &r.first_error {
                println!("{}: first error: {e}", r.label(several));
            }
        }
        if let Some(b) = &baselines {
            b.print(&args.baseline_dir);
        }
        print_sizes(&report);
        println!("cleaned up: {deleted} workspaces deleted");
        if let Some(path) = &args.plot {
            println!("plot: {}", path.display());
        }
    }
    if stopped() {
        eprintln!("interrupted: stopped early and cleaned up");
        std::process::exit(130);
    }
    if errors > 0 {
        bail!("{errors} of {calls} operations failed (the ERRORS column; each row's first error above)");
    }
    Ok(())
}

/// The plot's first line: what ran, where, when, and how many calls failed.
fn heading(report: &Value, args: &BenchArgs, calls: usize, errors: usize) -> String {
    let how_long = match args.count {
        Some(n) => format!("{n} calls per operation"),
        None => format!("{} s per operation", args.duration),
    };
    let mut parts = vec![
        format!("{}", report["run"].as_str().unwrap_or_default()),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        report["url"].as_str().unwrap_or_default().to_string(),
        format!("clients {}", report["clients"]),
        how_long,
    ];
    if let Some(ws) = &args.workspace {
        parts.push(format!("from {ws}"));
    }
    if !args.files.is_empty() {
        parts.push(format!("files {}", report["files"]));
    }
    parts.push(format!("{errors} of {calls} calls failed"));
    parts.join(" | ")
}

/// `1 client`, `8 clients`.
fn counted(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// A ratio, with two decimals unless it is far below 1.
fn times(x: f64) -> String {
    if x >= 0.1 {
        format!("{x:.2}x")
    } else {
        format!("{x:.2e}x")
    }
}

/// One row per result; FILES with --files, and the p50's multiples of the baselines with
/// --baseline.
fn print_table(report: &Value, args: &BenchArgs) {
    let f = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.2}"));
    let x = |v: &Value| v.as_f64().map_or("-".into(), times);
    let sizes = !args.files.is_empty();
    let rows = report["results"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let mut row = vec![r["op"].as_str().unwrap_or_default().to_string()];
            if sizes {
                row.push(r["files"].as_u64().map_or("-".into(), |n| n.to_string()));
            }
            row.extend([
                r["clients"].to_string(),
                r["ops"].to_string(),
                format!("{:.1}", r["ops_per_sec"].as_f64().unwrap_or(0.0)),
                f(&r["p50_ms"]),
                f(&r["p95_ms"]),
                f(&r["p99_ms"]),
                f(&r["max_ms"]),
                r["errors"].to_string(),
            ]);
            if args.baseline {
                row.push(x(&r["x_http_floor"]));
                if sizes {
                    row.push(x(&r["x_native_cp_a"]));
                }
            }
            row
        })
        .collect();
    let mut headers = vec!["OP"];
    if sizes {
        headers.push("FILES");
    }
    headers.extend([
        "CLIENTS", "OPS", "OPS/S", "P50 MS", "P95 MS", "P99 MS", "MAX MS", "ERRORS",
    ]);
    if args.baseline {
        headers.push("P50/FLOOR");
        if sizes {
            headers.push("P50/CP -A");
        }
    }
    table(&headers, rows);
}

/// With several --files sizes: each larger workspace's p50 and ops/s as multiples of the
/// smallest one's, operation by operation (what a workspace's size costs).
fn print_sizes(report: &Value) {
    let rows: Vec<&Value> = report["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["files"].is_u64())
        .collect();
    let Some(smallest) = rows.iter().filter_map(|r| r["files"].as_u64()).min() else {
        return;
    };
    let mut header = false;
    for r in &rows {
        let Some(base) = rows
            .iter()
            .find(|b| b["files"] == smallest && b["op"] == r["op"] && b["clients"] == r["clients"])
        else {
            continue;
        };
        if r["files"] == smallest {
            continue;
        }
        let ratio = |k: &str| Some(r[k].as_f64()? / base[k].as_f64().filter(|v| *v > 0.0)?);
        if !header {
            println!("against the {smallest}-file workspace (p50, ops/s):");
            header = true;
        }
        println!(
            "  {}, {}, {}: p50 {}, ops/s {}",
            counted(r["files"].as_u64().unwrap_or_default(), "file"),
            r["op"].as_str().unwrap_or_default(),
            counted(r["clients"].as_u64().unwrap_or_default(), "client"),
            ratio("p50_ms").map_or("-".into(), times),
            ratio("ops_per_sec").map_or("-".into(), times),
        );
    }
}
