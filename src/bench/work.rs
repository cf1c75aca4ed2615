//! Running the bench: the workspaces it starts from, each operation's calls on N clients
//! (each with its own connection), and the clean-up of everything it made.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};

use super::baseline::{self, Baselines};
use super::{stopped, BenchArgs, Op, Row, Sample, FLOOR};
use crate::client::Client;

/// What the bench made, deleted at the end whatever happened.
#[derive(Default)]
pub(super) struct Made {
    workspaces: Vec<String>,
    sessions: Vec<String>,
}

pub(super) struct Bench<'a> {
    pub(super) c: &'a Client,
    pub(super) args: &'a BenchArgs,
    pub(super) run: String,
    pub(super) started: Instant,
    pub(super) made: Mutex<Made>,
    pub(super) next: AtomicU64,
}

/// A workspace the operations run on, and what they need of it.
struct Source {
    /// Its size, with --files.
    files: Option<u64>,
    id: String,
    /// One clone of it per client, each with the snapshot `base`: a client restores and
    /// mounts its own (a workspace has one session at a time, and 8 clients measure 8
    /// workspaces restoring at once).
    per_client: Vec<String>,
    base: String,
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

    fn fresh(&self) -> Value {
        json!({"session_type": "sandbox", "name": self.name("w")})
    }

    fn create(&self, c: &Client, body: Value) -> anyhow::Result<String> {
        let w = c.call("POST", "/v1/workspaces", Some(body))?;
        let id = w["id"]
            .as_str()
            .context("workspace without id")?
            .to_string();
        self.made.lock().unwrap().workspaces.push(id.clone());
        Ok(id)
    }

    fn start_session(
        &self,
        c: &Client,
        workspace: &str,
        mountpoint: &str,
    ) -> anyhow::Result<String> {
        let body = json!({"workspace": workspace, "mountpoint": mountpoint});
        let s = c.call("POST", "/v1/sessions", Some(body))?;
        let id = s["id"].as_str().context("session without id")?.to_string();
        self.made.lock().unwrap().sessions.push(id.clone());
        Ok(id)
    }

    fn end_session(&self, c: &Client, id: &str) -> anyhow::Result<Value> {
        let r = c.call("DELETE", &format!("/v1/sessions/{id}"), None)?;
        self.made.lock().unwrap().sessions.retain(|s| s != id);
        Ok(r)
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

    /// Makes a workspace to run on: a clone of `from`, or a fresh one (filled with `files`
    /// files through a session), and its clones per client.
    fn source(&self, from: Option<&str>, files: Option<u64>) -> anyhow::Result<Source> {
        let c = self.c;
        let id = match from {
            Some(id) => self.create(c, json!({"clone_from": id, "name": self.name("src")}))?,
            None => self.create(c, self.fresh())?,
        };
        if let Some(n) = files {
            let mnt = format!("{}/{}", self.args.mount_root, self.name("fill"));
            let session = self.start_session(c, &id, &mnt)?;
            let t = Instant::now();
            let written = baseline::make_tree(std::path::Path::new(&mnt), n).with_context(|| {
                format!("writing through the session mounted at {mnt} (--files needs the bench on the daemon's host)")
            });
            let ended = self.end_session(c, &session);
            written?;
            ended?;
            eprintln!(
                "filled a workspace with {} in {:.1} s",
                super::counted(n, "file"),
                t.elapsed().as_secs_f64()
            );
        }
        let base = self.name("base");
        let ops = &self.args.ops;
        let mut per_client = Vec::new();
        if ops.contains(&Op::Restore) || ops.contains(&Op::Session) {
            let clients = self.args.clients.iter().copied().max().unwrap_or(1);
            for _ in 0..clients {
                let w = self.create(c, json!({"clone_from": id, "name": self.name("s")}))?;
                if ops.contains(&Op::Restore) {
                    let path = format!("/v1/workspaces/{w}/snapshots");
                    c.call("POST", &path, Some(json!({"name": base})))?;
                }
                per_client.push(w);
            }
        }
        Ok(Source {
            files,
            id,
            per_client,
            base,
        })
    }

    /// Deletes every workspace the bench made, ending its sessions first.
    pub(super) fn clean_up(&self) -> anyhow::Result<usize> {
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

/// Sets up the bench's workspaces (and with --baseline --files the native copies), then for
/// each client count: the HTTP floor (--baseline), and each operation on each workspace.
pub(super) fn measure(
    b: &Bench<'_>,
    source: Option<&str>,
) -> anyhow::Result<(Vec<Row>, Baselines)> {
    let args = b.args;
    let mut baselines = Baselines::default();
    let mut sources = Vec::new();
    if args.files.is_empty() {
        sources.push(b.source(source, None)?);
    }
    for &n in &args.files {
        if stopped() {
            break;
        }
        sources.push(b.source(None, Some(n))?);
        if args.baseline && !stopped() {
            let dir = args.baseline_dir.join(format!("{}-native-{n}", b.run));
            let ms = baseline::native_cp_a(&dir, n)?;
            if !stopped() {
                baselines.native.push((n, ms));
            }
        }
    }

    let mut rows = Vec::new();
    for &clients in &args.clients {
        if args.baseline && !stopped() {
            let floor =
                |c: &Client, _: usize, out: &mut [Vec<Sample>], err: &mut Option<String>| {
                    b.timed(&mut out[0], err, || c.call("GET", "/healthz", None));
                };
            let row = run_op(b, clients, &[FLOOR], &floor).remove(0);
            if let Some(p50) = super::quantile(&row.ok_ms(), 0.5) {
                baselines.floor.push((clients, p50));
            }
            rows.push(row);
        }
        for src in &sources {
            for &op in &args.ops {
                if stopped() {
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
                let call = |c: &Client,
                            client: usize,
                            out: &mut [Vec<Sample>],
                            err: &mut Option<String>| {
                    step(b, src, op, c, client, out, err)
                };
                rows.extend(run_op(b, clients, names, &call).into_iter().map(|mut r| {
                    r.files = src.files;
                    r
                }));
            }
        }
    }
    Ok((rows, baselines))
}

/// One call of `op` by `client` (two for a session: its start and its end), recorded in
/// `out`, one list per row.
fn step(
    b: &Bench<'_>,
    src: &Source,
    op: Op,
    c: &Client,
    client: usize,
    out: &mut [Vec<Sample>],
    err: &mut Option<String>,
) {
    let (first, rest) = out.split_first_mut().expect("a row");
    let id = &src.id;
    match op {
        Op::Clone => {
            b.timed(first, err, || {
                b.create(c, json!({"clone_from": id, "name": b.name("c")}))
            });
        }
        Op::Snapshot => {
            let path = format!("/v1/workspaces/{id}/snapshots");
            let body = json!({"name": b.name("snap")});
            b.timed(first, err, || c.call("POST", &path, Some(body)));
        }
        Op::Restore => {
            let w = &src.per_client[client];
            let path = format!("/v1/workspaces/{w}/snapshots/{}/restore", src.base);
            b.timed(first, err, || c.call("POST", &path, None));
        }
        Op::Create => {
            b.timed(first, err, || b.create(c, b.fresh()));
        }
        Op::Delete => {
            // The clone to delete is made untimed; a failed delete leaves it to the clean-up.
            match b.create(c, json!({"clone_from": id, "name": b.name("d")})) {
                Ok(w) => {
                    let path = format!("/v1/workspaces/{w}");
                    if b.timed(first, err, || c.call("DELETE", &path, None))
                        .is_some()
                    {
                        b.made.lock().unwrap().workspaces.retain(|x| *x != w);
                    }
                }
                Err(e) => {
                    err.get_or_insert_with(|| format!("making a clone to delete: {e:#}"));
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        Op::Session => {
            let mnt = format!("{}/{}-{client}", b.args.mount_root, b.run);
            let w = &src.per_client[client];
            if let Some(id) = b.timed(first, err, || b.start_session(c, w, &mnt)) {
                b.timed(&mut rest[0], err, || b.end_session(c, &id));
            }
        }
    }
}

type Step<'s> = dyn Fn(&Client, usize, &mut [Vec<Sample>], &mut Option<String>) + Sync + 's;

/// Runs `step` on `clients` clients, each with its own connection, until the count or the
/// duration is used up, with a live progress line on a terminal. The rows have no `files`.
fn run_op(b: &Bench<'_>, clients: u64, names: &[&'static str], step: &Step<'_>) -> Vec<Row> {
    let args = b.args;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(args.duration.max(0.0));
    let claimed = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let finished = AtomicBool::new(false);
    let more = || {
        !stopped()
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
                        "\r\x1b[K{:<14} {clients} clients  {goal}  {:.1} ops/s  errors {}",
                        names[0],
                        n as f64 / secs.max(1e-9),
                        failed.load(Ordering::Relaxed)
                    );
                    let _ = std::io::stderr().flush();
                }
                eprint!("\r\x1b[K");
            })
        });
        let handles: Vec<_> = (0..clients as usize)
            .map(|client| {
                let (more, done, failed) = (&more, &done, &failed);
                s.spawn(move || {
                    let c = Client::new(b.c.opts.clone());
                    let mut out: Vec<Vec<Sample>> = names.iter().map(|_| Vec::new()).collect();
                    let mut err = None;
                    let errors =
                        |out: &[Vec<Sample>]| out.iter().flatten().filter(|x| !x.ok).count() as u64;
                    while more() {
                        let before = errors(&out);
                        step(&c, client, &mut out, &mut err);
                        done.fetch_add(1, Ordering::Relaxed);
                        failed.fetch_add(errors(&out) - before, Ordering::Relaxed);
                    }
                    (out, err)
                })
            })
            .collect();
        let results: Vec<_> = handles
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
                clients,
                files: None,
                seconds,
                samples,
                first_error,
            }
        })
        .collect()
}
