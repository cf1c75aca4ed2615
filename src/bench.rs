//! `chaserfs bench`: clone, snapshot, restore, create, delete and session start/end against a
//! running daemon, with N clients, for a duration or a count per operation. Everything runs
//! on workspaces the bench makes itself (named `bench-XXXXXXXX-...`, a clone of `--workspace`
//! or a fresh one), so the daemon's own workspaces are read once and never changed, and all
//! of it is deleted at the end, also after Ctrl-C.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use crate::client::{seg, table, Client, ClientOpts};

#[derive(Args)]
pub struct BenchArgs {
    /// Workspace the bench's workspaces start from (cloned once, never changed); a fresh
    /// empty workspace without it. Refused while it has an active session.
    #[arg(long)]
    workspace: Option<String>,
    /// Operations to measure, one after another.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "clone,snapshot,restore,create,delete,session"
    )]
    ops: Vec<Op>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    clients: u64,
    /// Seconds each operation runs for (unless --count).
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

/// One timed call: when it started (since the bench began), how long it took, whether it
/// answered 2xx.
#[derive(Clone, Copy)]
struct Sample {
    at: f64,
    ms: f64,
    ok: bool,
}

/// The samples of one row of the table.
struct Row {
    name: &'static str,
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
    fn json(&self) -> Value {
        let ms = self.ok_ms();
        json!({
            "op": self.name,
            "ops": ms.len(),
            "errors": self.errors(),
            "first_error": self.first_error,
            "seconds": self.seconds,
            "ops_per_sec": ms.len() as f64 / self.seconds.max(1e-9),
            "p50_ms": quantile(&ms, 0.50),
            "p95_ms": quantile(&ms, 0.95),
            "p99_ms": quantile(&ms, 0.99),
            "max_ms": ms.last().copied(),
        })
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

/// What the bench made, deleted at the end whatever happened.
#[derive(Default)]
struct Made {
    workspaces: Vec<String>,
    sessions: Vec<String>,
}

struct Bench<'a> {
    c: &'a Client,
    run: String,
    started: Instant,
    made: Mutex<Made>,
    next: AtomicU64,
}

impl Bench<'_> {
    /// A name no other call of this run uses.
    fn name(&self, kind: &str) -> String {
        format!(
            "{}-{kind}{}",
            self.run,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn create(&self, body: Value) -> anyhow::Result<String> {
        let w = self.c.call("POST", "/v1/workspaces", Some(body))?;
        let id = w["id"]
            .as_str()
            .context("workspace without id")?
            .to_string();
        self.made.lock().unwrap().workspaces.push(id.clone());
        Ok(id)
    }

    /// Times one call, recording it in `samples`.
    fn timed<T>(
        &self,
        samples: &mut Vec<Sample>,
        err: &mut Option<String>,
        call: impl FnOnce() -> anyhow::Result<T>,
    ) -> Option<T> {
        let t0 = Instant::now();
        let r = call();
        samples.push(Sample {
            at: t0.duration_since(self.started).as_secs_f64(),
            ms: t0.elapsed().as_secs_f64() * 1e3,
            ok: r.is_ok(),
        });
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                err.get_or_insert_with(|| format!("{e:#}"));
                None
            }
        }
    }

    /// Deletes every workspace the bench made, ending its sessions first.
    fn clean_up(&self) -> anyhow::Result<usize> {
        let made = std::mem::take(&mut *self.made.lock().unwrap());
        for id in &made.sessions {
            let _ = self.c.call("DELETE", &format!("/v1/sessions/{id}"), None);
        }
        let mut deleted = 0;
        for ids in made.workspaces.chunks(1000) {
            let r = self.c.call(
                "POST",
                "/v1/workspaces/bulk-delete",
                Some(json!({"workspace_ids": ids, "force": true})),
            )?;
            deleted += r["deleted"].as_u64().unwrap_or(0) as usize;
        }
        Ok(deleted)
    }
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
    let b = Bench {
        c: &c,
        run: run_id.clone(),
        started: Instant::now(),
        made: Mutex::new(Made::default()),
        next: AtomicU64::new(1),
    };
    let result = measure(&b, &args, source.as_deref());
    let cleaned = b.clean_up();
    let rows = result?;
    let deleted = cleaned.context("cleaning up the bench's workspaces")?;

    let report = json!({
        "url": c.opts.api_url,
        "run": run_id,
        "clients": args.clients,
        "count": args.count,
        "duration": if args.count.is_none() { Some(args.duration) } else { None },
        "source": args.workspace,
        "interrupted": STOP.load(Ordering::SeqCst),
        "results": rows.iter().map(Row::json).collect::<Vec<_>>(),
        "cleaned_up_workspaces": deleted,
    });
    if let Some(path) = &args.plot {
        plot(path, &rows).with_context(|| format!("drawing {}", path.display()))?;
    }
    if c.opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
        for r in &rows {
            if let Some(e) = &r.first_error {
                println!("{}: first error: {e}", r.name);
            }
        }
        println!("cleaned up: {deleted} workspaces deleted");
        if let Some(path) = &args.plot {
            println!("plot: {}", path.display());
        }
    }
    if STOP.load(Ordering::SeqCst) {
        eprintln!("interrupted: stopped early and cleaned up");
        std::process::exit(130);
    }
    Ok(())
}

fn print_table(report: &Value) {
    let f = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.2}"));
    let rows = report["results"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                r["op"].as_str().unwrap_or_default().to_string(),
                report["clients"].to_string(),
                r["ops"].to_string(),
                format!("{:.1}", r["ops_per_sec"].as_f64().unwrap_or(0.0)),
                f(&r["p50_ms"]),
                f(&r["p95_ms"]),
                f(&r["p99_ms"]),
                f(&r["max_ms"]),
                r["errors"].to_string(),
            ]
        })
        .collect();
    table(
        &[
            "OP", "CLIENTS", "OPS", "OPS/S", "P50 MS", "P95 MS", "P99 MS", "MAX MS", "ERRORS",
        ],
        rows,
    );
}

/// Sets up the bench's workspaces, then runs each operation in turn.
fn measure(b: &Bench<'_>, args: &BenchArgs, source: Option<&str>) -> anyhow::Result<Vec<Row>> {
    let fresh = || json!({"session_type": "sandbox", "name": b.name("w")});
    let src = match source {
        Some(id) => b.create(json!({"clone_from": id, "name": b.name("src")}))?,
        None => b.create(fresh())?,
    };
    let base = b.name("base");
    if args.ops.contains(&Op::Restore) {
        let path = format!("/v1/workspaces/{src}/snapshots");
        b.c.call("POST", &path, Some(json!({"name": base})))?;
    }
    // One workspace per client for sessions: a workspace has one session at a time.
    let mut session_ws = Vec::new();
    if args.ops.contains(&Op::Session) {
        for _ in 0..args.clients {
            session_ws.push(b.create(json!({"clone_from": src, "name": b.name("s")}))?);
        }
    }

    let mut rows = Vec::new();
    for op in &args.ops {
        if STOP.load(Ordering::SeqCst) {
            break;
        }
        let names: &[&'static str] = match op {
            Op::Clone => &["clone"],
            Op::Snapshot => &["snapshot"],
            Op::Restore => &["restore"],
            Op::Create => &["create"],
            Op::Delete => &["delete"],
            Op::Session => &["session start", "session end"],
        };
        // One client's loop body: the samples of each of `names`.
        let step = |client: usize, out: &mut [Vec<Sample>], err: &mut Option<String>| {
            let (first, rest) = out.split_first_mut().expect("a row");
            match op {
                Op::Clone => {
                    b.timed(first, err, || {
                        b.create(json!({"clone_from": src, "name": b.name("c")}))
                    });
                }
                Op::Snapshot => {
                    let path = format!("/v1/workspaces/{src}/snapshots");
                    let body = json!({"name": b.name("snap")});
                    b.timed(first, err, || b.c.call("POST", &path, Some(body)));
                }
                Op::Restore => {
                    let path = format!("/v1/workspaces/{src}/snapshots/{base}/restore");
                    b.timed(first, err, || b.c.call("POST", &path, None));
                }
                Op::Create => {
                    b.timed(first, err, || b.create(fresh()));
                }
                Op::Delete => {
                    // The clone to delete is made untimed; a failed delete leaves it to
                    // the clean-up.
                    match b.create(json!({"clone_from": src, "name": b.name("d")})) {
                        Ok(id) => {
                            let path = format!("/v1/workspaces/{id}");
                            if b.timed(first, err, || b.c.call("DELETE", &path, None))
                                .is_some()
                            {
                                b.made.lock().unwrap().workspaces.retain(|w| *w != id);
                            }
                        }
                        Err(e) => {
                            err.get_or_insert_with(|| format!("making a clone to delete: {e:#}"));
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
                Op::Session => {
                    let body = json!({
                        "workspace": session_ws[client],
                        "mountpoint": format!("{}/{}-{client}", args.mount_root, b.run),
                    });
                    let started = b.timed(first, err, || {
                        let s = b.c.call("POST", "/v1/sessions", Some(body))?;
                        let id = s["id"].as_str().context("session without id")?.to_string();
                        b.made.lock().unwrap().sessions.push(id.clone());
                        Ok(id)
                    });
                    if let Some(id) = started {
                        let path = format!("/v1/sessions/{id}");
                        if b.timed(&mut rest[0], err, || b.c.call("DELETE", &path, None))
                            .is_some()
                        {
                            b.made.lock().unwrap().sessions.retain(|s| *s != id);
                        }
                    }
                }
            }
        };
        rows.extend(run_op(args, names, &step));
    }
    Ok(rows)
}

type Step<'s> = dyn Fn(usize, &mut [Vec<Sample>], &mut Option<String>) + Sync + 's;

/// Runs `step` on every client until the count or the duration is used up, with a live
/// progress line on a terminal.
fn run_op(args: &BenchArgs, names: &[&'static str], step: &Step<'_>) -> Vec<Row> {
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(args.duration.max(0.0));
    let claimed = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let finished = AtomicBool::new(false);
    let more = || {
        !STOP.load(Ordering::SeqCst)
            && match args.count {
                Some(n) => claimed.fetch_add(1, Ordering::Relaxed) < n,
                None => Instant::now() < deadline,
            }
    };
    let per_client = std::thread::scope(|s| {
        let progress = std::io::stderr().is_terminal().then(|| {
            s.spawn(|| {
                while !finished.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(250));
                    let n = done.load(Ordering::Relaxed);
                    let secs = t0.elapsed().as_secs_f64();
                    let goal = match args.count {
                        Some(c) => format!("{n}/{c} ops"),
                        None => format!("{secs:.1}/{:.0} s, {n} ops", args.duration),
                    };
                    eprint!(
                        "\r\x1b[K{:<14} {goal}  {:.1} ops/s  errors {}",
                        names[0],
                        n as f64 / secs.max(1e-9),
                        failed.load(Ordering::Relaxed)
                    );
                    let _ = std::io::stderr().flush();
                }
                eprint!("\r\x1b[K");
            })
        });
        let clients: Vec<_> = (0..args.clients as usize)
            .map(|client| {
                let (more, done, failed) = (&more, &done, &failed);
                s.spawn(move || {
                    let mut out: Vec<Vec<Sample>> = names.iter().map(|_| Vec::new()).collect();
                    let mut err = None;
                    let errors =
                        |out: &[Vec<Sample>]| out.iter().flatten().filter(|x| !x.ok).count() as u64;
                    while more() {
                        let before = errors(&out);
                        step(client, &mut out, &mut err);
                        done.fetch_add(1, Ordering::Relaxed);
                        failed.fetch_add(errors(&out) - before, Ordering::Relaxed);
                    }
                    (out, err)
                })
            })
            .collect();
        let results: Vec<_> = clients
            .into_iter()
            .map(|h| h.join().expect("bench client"))
            .collect();
        finished.store(true, Ordering::SeqCst);
        if let Some(p) = progress {
            let _ = p.join();
        }
        results
    });
    let seconds = t0.elapsed().as_secs_f64();
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut samples = Vec::new();
            let mut first_error = None;
            for (out, err) in &per_client {
                samples.extend_from_slice(&out[i]);
                if first_error.is_none() {
                    first_error.clone_from(err);
                }
            }
            samples.sort_by(|a, b| a.at.total_cmp(&b.at));
            Row {
                name,
                seconds,
                samples,
                first_error,
            }
        })
        .collect()
}

/// Latency over time (each call a dot, at when it started) above a histogram of latencies
/// (log-spaced bins, each operation's share of its calls), one colour per operation.
fn plot(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let all: Vec<&Sample> = rows.iter().flat_map(|r| &r.samples).collect();
    let lo = all.iter().map(|s| s.ms).fold(f64::MAX, f64::min).max(0.01);
    let hi = all.iter().map(|s| s.ms).fold(0.0, f64::max).max(lo * 2.0);
    let end = all.iter().map(|s| s.at).fold(0.0, f64::max).max(0.1);
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("{e}");

    let root = SVGBackend::new(path, (1100, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(470);
    let mut over_time = ChartBuilder::on(&top)
        .caption("chaserfs bench: latency over time", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end * 1.02, (lo * 0.8..hi * 1.25).log_scale())
        .map_err(|e| err(&e))?;
    over_time
        .configure_mesh()
        .x_desc("seconds since the bench started")
        .y_desc("latency (ms)")
        .draw()
        .map_err(|e| err(&e))?;
    // At most ~2,500 dots per operation, so the file stays small on long runs.
    for (i, r) in rows.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        let every = r.samples.len().div_ceil(2500).max(1);
        over_time
            .draw_series(
                r.samples
                    .iter()
                    .step_by(every)
                    .map(|s| Circle::new((s.at, s.ms.max(lo)), 2, colour.filled())),
            )
            .map_err(|e| err(&e))?
            .label(r.name)
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, colour.filled()));
    }
    // Upper left: the slow operations (sessions) come last, on the right.
    over_time
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;

    const BINS: usize = 40;
    let ratio = (hi / lo).ln() / BINS as f64;
    let bin_of = |ms: f64| (((ms.max(lo) / lo).ln() / ratio) as usize).min(BINS - 1);
    // Shares rather than counts, so a slow operation's few calls show beside a fast one's many.
    let shares: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| {
            let mut c = vec![0.0; BINS];
            for s in &r.samples {
                c[bin_of(s.ms)] += 100.0 / r.samples.len() as f64;
            }
            c
        })
        .collect();
    let top_share = shares.iter().flatten().copied().fold(1.0, f64::max);
    let mut hist = ChartBuilder::on(&bottom)
        .caption("latency histogram", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((lo * 0.8..hi * 1.25).log_scale(), 0.0..top_share * 1.1)
        .map_err(|e| err(&e))?;
    hist.configure_mesh()
        .x_desc("latency (ms)")
        .y_desc("% of the operation's calls")
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (r, c)) in rows.iter().zip(&shares).enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        let centre = |k: usize| lo * ((k as f64 + 0.5) * ratio).exp();
        hist.draw_series(LineSeries::new(
            c.iter().enumerate().map(|(k, n)| (centre(k), *n)),
            colour.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label(r.name)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    hist.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
