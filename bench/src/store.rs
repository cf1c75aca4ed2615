//! The cluster's stores alone: what the S3 bucket and etcd give on this machine, the ceiling
//! every chaserfs cluster figure is measured against (`bench/cluster.sh` prints its rows as
//! fractions of these).
//!
//! `store-bench [ENV_FILE] [--json | --json-file PATH] [--drop-caches] [--objects N]
//!  [--small-objects N] [--ranges N] [--txns N]`
//!
//! ENV_FILE is the file `scripts/cluster.sh start DIR` writes (DIR/env); without it the same
//! variables are read from the environment: CHASER_S3_ENDPOINT, CHASER_S3_BUCKET,
//! AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, CHASER_ETCD_ENDPOINTS (CHASER_S3_REGION, default
//! `garage`). Measured, each with the same client libraries and options chaserfs uses:
//!
//! - PUT and GET of N 8 MiB objects (default 64: the size of a chaserfs pack), 8 and 64 in
//!   flight (chaserfs uploads 8 packs at a time);
//! - PUT and GET of N 64 KiB objects (default 1024: the size of one chunk), 8 and 64 in flight;
//! - ranged GETs of 64 KiB out of the 8 MiB objects, in order, 64 in flight (default 2048
//!   ranges): how chaserfs reads chunks out of packs;
//! - etcd compare-and-put transactions (128-byte values) one after another, and with 16 in
//!   flight (default 2000 in all), as chaserfs moves a root.
//!
//! Every object is incompressible and distinct (Garage deduplicates blocks). `--drop-caches`
//! syncs and drops the page cache before each GET run, as `bench/cluster.sh` does before its
//! cold reads. Everything written (under `store-bench/<uuid>/` in both stores) is deleted at
//! the end, also after an error or Ctrl-C. Output: a markdown table, or with `--json` one
//! JSON object whose `rows` are keyed `put_8mib_x8`, `get_64kib_x64`, `range_64kib_x64`,
//! `etcd_txn_x1`, `etcd_txn_x16` and so on; `--json-file PATH` prints the table and writes
//! the JSON to PATH (what `bench/cluster.sh` reads its ceilings from).

mod machine;

use machine::machine;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use chaserfs_cluster::transport_keeps_bodies_intact;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, DeleteOptions, Txn, TxnOp};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use serde_json::json;
use uuid::Uuid;

const MIB: u64 = 1 << 20;
const BIG: u64 = 8 * MIB;
const SMALL: u64 = 64 << 10;
const ETCD_VALUE: usize = 128;
const ETCD_IN_FLIGHT: usize = 16;

struct Args {
    env_file: Option<PathBuf>,
    json: bool,
    json_file: Option<PathBuf>,
    drop_caches: bool,
    objects: usize,
    small_objects: usize,
    ranges: usize,
    txns: usize,
}

const USAGE: &str = "usage: store-bench [ENV_FILE] [--json | --json-file PATH] [--drop-caches] \
                     [--objects N] [--small-objects N] [--ranges N] [--txns N]";

impl Args {
    fn parse() -> Result<Args> {
        let mut args = Args {
            env_file: None,
            json: false,
            json_file: None,
            drop_caches: false,
            objects: 64,
            small_objects: 1024,
            ranges: 2048,
            txns: 2000,
        };
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            let mut number = || -> Result<usize> {
                let v = it.next().context(USAGE)?;
                let n: usize = v
                    .parse()
                    .with_context(|| format!("{a} {v}: not a number"))?;
                ensure!(n > 0, "{a} must be at least 1");
                Ok(n)
            };
            match a.as_str() {
                "--json" => args.json = true,
                "--json-file" => args.json_file = Some(it.next().context(USAGE)?.into()),
                "--drop-caches" => args.drop_caches = true,
                "--objects" => args.objects = number()?,
                "--small-objects" => args.small_objects = number()?,
                "--ranges" => args.ranges = number()?,
                "--txns" => args.txns = number()?.max(ETCD_IN_FLIGHT),
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                _ if a.starts_with('-') || args.env_file.is_some() => bail!("{USAGE}"),
                _ => args.env_file = Some(PathBuf::from(a)),
            }
        }
        Ok(args)
    }
}

/// Where the stores are and the bucket's key.
struct Config {
    endpoint: String,
    bucket: String,
    region: String,
    key_id: String,
    secret: String,
    etcd: Vec<String>,
}

impl Config {
    /// From `export NAME=VALUE` lines of an env file, or else from the environment.
    fn load(env_file: Option<&FsPath>) -> Result<Config> {
        let mut vars = std::collections::HashMap::new();
        if let Some(path) = env_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            for line in text.lines() {
                let line = line.trim();
                let line = line.strip_prefix("export ").unwrap_or(line);
                if let Some((k, v)) = line.split_once('=') {
                    let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
                    vars.insert(k.trim().to_string(), v.to_string());
                }
            }
        }
        let get = |name: &str| -> Result<String> {
            vars.get(name)
                .cloned()
                .or_else(|| std::env::var(name).ok())
                .filter(|v| !v.is_empty())
                .with_context(|| {
                    format!("{name} is not set (pass the env file of scripts/cluster.sh)")
                })
        };
        Ok(Config {
            endpoint: get("CHASER_S3_ENDPOINT")?,
            bucket: get("CHASER_S3_BUCKET")?,
            region: get("CHASER_S3_REGION").unwrap_or_else(|_| "garage".into()),
            key_id: get("AWS_ACCESS_KEY_ID")?,
            secret: get("AWS_SECRET_ACCESS_KEY")?,
            etcd: get("CHASER_ETCD_ENDPOINTS")?
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        })
    }

    /// The bucket, with chaserfs's client options (cluster/src/objects.rs: unsigned bodies
    /// only to a store on this host) but a longer per-request timeout: 64 uploads
    /// of 8 MiB share the link.
    fn s3(&self) -> Result<Arc<dyn ObjectStore>> {
        let s3 = AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_bucket_name(&self.bucket)
            .with_region(&self.region)
            .with_access_key_id(&self.key_id)
            .with_secret_access_key(&self.secret)
            .with_unsigned_payload(transport_keeps_bodies_intact(&self.endpoint))
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(true)
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(120)),
            )
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(300),
                ..RetryConfig::default()
            })
            .build()
            .context("S3 configuration")?;
        Ok(Arc::new(s3))
    }

    async fn etcd(&self) -> Result<Client> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(30))
            .with_require_leader(true);
        Client::connect(&self.etcd, Some(options))
            .await
            .context("connecting to etcd")
    }
}

/// One measured run: `count` operations of `bytes` in all, `in_flight` at a time.
struct Row {
    key: String,
    store: &'static str,
    operation: String,
    in_flight: usize,
    count: usize,
    bytes: u64,
    elapsed: Duration,
    /// Each operation's latency, sorted.
    latencies: Vec<Duration>,
}

impl Row {
    fn secs(&self) -> f64 {
        self.elapsed.as_secs_f64().max(1e-9)
    }
    fn mib_per_s(&self) -> Option<f64> {
        (self.bytes > 0).then(|| self.bytes as f64 / MIB as f64 / self.secs())
    }
    fn ops_per_s(&self) -> f64 {
        self.count as f64 / self.secs()
    }
    fn percentile_ms(&self, q: f64) -> f64 {
        let Some(last) = self.latencies.len().checked_sub(1) else {
            return 0.0;
        };
        let i = ((last as f64) * q).round() as usize;
        self.latencies[i].as_secs_f64() * 1000.0
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "store": self.store,
            "operation": self.operation,
            "in_flight": self.in_flight,
            "count": self.count,
            "bytes": self.bytes,
            "seconds": self.secs(),
            "mib_per_s": self.mib_per_s(),
            "ops_per_s": self.ops_per_s(),
            "p50_ms": self.percentile_ms(0.5),
            "p99_ms": self.percentile_ms(0.99),
        })
    }
}

/// Runs `op(0..count)`, `in_flight` at a time; each call returns the bytes it moved.
async fn timed<F, Fut>(
    in_flight: usize,
    count: usize,
    op: F,
) -> Result<(Duration, Vec<Duration>, u64)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<u64>>,
{
    let start = Instant::now();
    let done: Vec<(Duration, u64)> = futures::stream::iter(0..count)
        .map(|i| {
            let op = &op;
            async move {
                let t = Instant::now();
                let bytes = op(i).await?;
                Ok::<_, anyhow::Error>((t.elapsed(), bytes))
            }
        })
        .buffer_unordered(in_flight)
        .try_collect()
        .await?;
    let elapsed = start.elapsed();
    let bytes = done.iter().map(|d| d.1).sum();
    let mut latencies: Vec<Duration> = done.into_iter().map(|d| d.0).collect();
    latencies.sort();
    Ok((elapsed, latencies, bytes))
}

/// Incompressible bytes (xorshift), distinct per seed, made outside any timed region.
fn random_bytes(len: u64, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len as usize + 8);
    while (out.len() as u64) < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len as usize);
    Bytes::from(out)
}

fn size_name(bytes: u64) -> String {
    if bytes >= MIB {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

fn size_key(bytes: u64) -> String {
    size_name(bytes).replace(' ', "").to_lowercase()
}

/// The S3 half: the bucket, the prefix everything is written under, and what it holds.
struct S3Bench {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    drop_caches: bool,
    seed: u64,
}

impl S3Bench {
    fn key(&self, set: &str, i: usize) -> Path {
        Path::from(format!("{}/{set}/{i:06}", self.prefix))
    }

    /// PUTs `count` new objects of `size` bytes into `set`.
    async fn put(&mut self, set: &str, size: u64, count: usize, in_flight: usize) -> Result<Row> {
        let payloads: Vec<Bytes> = (0..count)
            .map(|i| random_bytes(size, self.seed + i as u64))
            .collect();
        self.seed += count as u64;
        let (elapsed, latencies, bytes) = timed(in_flight, count, |i| {
            let (store, key, body) = (self.store.clone(), self.key(set, i), payloads[i].clone());
            async move {
                store
                    .put(&key, PutPayload::from(body))
                    .await
                    .with_context(|| format!("PUT {key}"))?;
                Ok(size)
            }
        })
        .await?;
        Ok(Row {
            key: format!("put_{}_x{in_flight}", size_key(size)),
            store: "S3",
            operation: format!("PUT {}", size_name(size)),
            in_flight,
            count,
            bytes,
            elapsed,
            latencies,
        })
    }

    /// GETs each whole object of `set` (`count` of `size` bytes).
    async fn get(&self, set: &str, size: u64, count: usize, in_flight: usize) -> Result<Row> {
        drop_caches(self.drop_caches)?;
        let (elapsed, latencies, bytes) = timed(in_flight, count, |i| {
            let (store, key) = (self.store.clone(), self.key(set, i));
            async move {
                let got = store
                    .get(&key)
                    .await
                    .with_context(|| format!("GET {key}"))?;
                let body = got.bytes().await.with_context(|| format!("GET {key}"))?;
                ensure!(body.len() as u64 == size, "GET {key}: {} bytes", body.len());
                Ok(size)
            }
        })
        .await?;
        Ok(Row {
            key: format!("get_{}_x{in_flight}", size_key(size)),
            store: "S3",
            operation: format!("GET {}", size_name(size)),
            in_flight,
            count,
            bytes,
            elapsed,
            latencies,
        })
    }

    /// `ranges` GETs of `range` bytes out of the `count` objects of `size` bytes in `set`, in
    /// order (object by object, offset by offset).
    async fn get_ranges(
        &self,
        set: &str,
        size: u64,
        count: usize,
        range: u64,
        ranges: usize,
    ) -> Result<Row> {
        const IN_FLIGHT: usize = 64;
        drop_caches(self.drop_caches)?;
        let per_object = (size / range) as usize;
        let (elapsed, latencies, bytes) = timed(IN_FLIGHT, ranges, |i| {
            let store = self.store.clone();
            let key = self.key(set, (i / per_object) % count);
            let start = (i % per_object) as u64 * range;
            async move {
                let body = store
                    .get_range(&key, start..start + range)
                    .await
                    .with_context(|| format!("GET {key} bytes {start}+{range}"))?;
                ensure!(
                    body.len() as u64 == range,
                    "GET {key}: {} bytes",
                    body.len()
                );
                Ok(range)
            }
        })
        .await?;
        Ok(Row {
            key: format!("range_{}_x{IN_FLIGHT}", size_key(range)),
            store: "S3",
            operation: format!("ranged GET {} of {}", size_name(range), size_name(size)),
            in_flight: IN_FLIGHT,
            count: ranges,
            bytes,
            elapsed,
            latencies,
        })
    }

    /// Deletes everything under the prefix.
    async fn clean(&self) -> Result<usize> {
        let keys: Vec<Path> = self
            .store
            .list(Some(&Path::from(self.prefix.as_str())))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .context("listing what store-bench wrote")?;
        let n = keys.len();
        futures::stream::iter(keys.into_iter().map(|key| {
            let store = self.store.clone();
            async move {
                match store.delete(&key).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(e).with_context(|| format!("DELETE {key}")),
                }
            }
        }))
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await?;
        Ok(n)
    }
}

/// `sync` and drop the page cache (what `bench/cluster.sh` does before a cold read), if asked.
fn drop_caches(enabled: bool) -> Result<()> {
    if !enabled {
        return Ok(());
    }
    let status = std::process::Command::new("sync")
        .status()
        .context("running sync")?;
    ensure!(status.success(), "sync failed");
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache (root?)")
}

/// The S3 runs, in order: the GETs read what the PUTs wrote.
async fn s3_rows(s3: &mut S3Bench, args: &Args) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let (big, small) = (args.objects, args.small_objects);
    for in_flight in [8, 64] {
        let set = format!("big-x{in_flight}");
        rows.push(progress(s3.put(&set, BIG, big, in_flight).await?));
    }
    // Each GET run reads the set the other PUT run wrote, so neither reads what it just wrote.
    rows.push(progress(s3.get("big-x64", BIG, big, 8).await?));
    rows.push(progress(s3.get("big-x8", BIG, big, 64).await?));
    rows.push(progress(
        s3.get_ranges("big-x64", BIG, big, SMALL, args.ranges)
            .await?,
    ));
    for in_flight in [8, 64] {
        let set = format!("small-x{in_flight}");
        rows.push(progress(s3.put(&set, SMALL, small, in_flight).await?));
    }
    rows.push(progress(s3.get("small-x64", SMALL, small, 8).await?));
    rows.push(progress(s3.get("small-x8", SMALL, small, 64).await?));
    Ok(rows)
}

/// `n` compare-and-put transactions on one key, one after another: each puts the key only if
/// it is still at the revision the last one left (as chaserfs moves a root).
async fn cas_loop(mut etcd: Client, key: String, n: usize) -> Result<Vec<Duration>> {
    let value = random_bytes(ETCD_VALUE as u64, n as u64).to_vec();
    let mut revision = None;
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let when = match revision {
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            Some(rev) => Compare::mod_revision(key.clone(), CompareOp::Equal, rev),
        };
        let txn = Txn::new().when(vec![when]).and_then(vec![TxnOp::put(
            key.clone(),
            value.clone(),
            None,
        )]);
        let t = Instant::now();
        let reply = etcd.txn(txn).await.context("etcd txn")?;
        latencies.push(t.elapsed());
        ensure!(reply.succeeded(), "etcd txn on {key}: the compare failed");
        revision = reply.header().map(|h| h.revision());
    }
    Ok(latencies)
}

/// Transactions one at a time, then [`ETCD_IN_FLIGHT`] at a time (each on its own key).
async fn etcd_rows(etcd: &Client, prefix: &str, txns: usize) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for in_flight in [1, ETCD_IN_FLIGHT] {
        let each = txns / in_flight;
        let start = Instant::now();
        let loops = (0..in_flight)
            .map(|i| cas_loop(etcd.clone(), format!("{prefix}/x{in_flight}/{i}"), each));
        let mut latencies: Vec<Duration> = futures::future::try_join_all(loops)
            .await?
            .into_iter()
            .flatten()
            .collect();
        let elapsed = start.elapsed();
        latencies.sort();
        rows.push(progress(Row {
            key: format!("etcd_txn_x{in_flight}"),
            store: "etcd",
            operation: format!("compare-and-put txn ({ETCD_VALUE} B)"),
            in_flight,
            count: each * in_flight,
            bytes: 0,
            elapsed,
            latencies,
        }));
    }
    Ok(rows)
}

/// A line on stderr as each run ends.
fn progress(row: Row) -> Row {
    let rate = match row.mib_per_s() {
        Some(m) => format!("{m:.1} MiB/s, {:.0} ops/s", row.ops_per_s()),
        None => format!("{:.0} ops/s", row.ops_per_s()),
    };
    eprintln!(
        "store-bench: {} {} x{}: {rate}",
        row.store, row.operation, row.in_flight
    );
    row
}

fn print_table(config: &Config, args: &Args, rows: &[Row]) {
    println!(
        "stores: S3 {} (bucket {}), etcd {} member(s); {}; page cache {} before each GET run",
        config.endpoint,
        config.bucket,
        config.etcd.len(),
        machine(),
        if args.drop_caches { "dropped" } else { "kept" },
    );
    println!();
    println!("| store | operation | in flight | count | MiB/s | ops/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        let mib = r.mib_per_s().map_or(String::new(), |m| format!("{m:.1}"));
        println!(
            "| {} | {} | {} | {} | {mib} | {:.1} | {:.2} | {:.2} |",
            r.store,
            r.operation,
            r.in_flight,
            r.count,
            r.ops_per_s(),
            r.percentile_ms(0.5),
            r.percentile_ms(0.99),
        );
    }
}

fn to_json(config: &Config, args: &Args, rows: &[Row]) -> serde_json::Value {
    let table: serde_json::Map<String, serde_json::Value> =
        rows.iter().map(|r| (r.key.clone(), r.json())).collect();
    json!({
        "machine": machine(),
        "s3_endpoint": config.endpoint,
        "s3_bucket": config.bucket,
        "etcd_endpoints": config.etcd,
        "page_cache_dropped": args.drop_caches,
        "rows": table,
    })
}

/// Every run, stopping early on Ctrl-C.
async fn run(s3: &mut S3Bench, etcd: &Client, args: &Args) -> Result<Vec<Row>> {
    let prefix = s3.prefix.clone();
    let all = async {
        let mut rows = s3_rows(s3, args).await?;
        rows.extend(etcd_rows(etcd, &prefix, args.txns).await?);
        Ok(rows)
    };
    tokio::select! {
        rows = all => rows,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse()?;
    // rustls needs a process-wide crypto provider before object_store's first client.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = Config::load(args.env_file.as_deref())?;
    let etcd = config.etcd().await?;
    let mut s3 = S3Bench {
        store: config.s3()?,
        prefix: format!("store-bench/{}", Uuid::new_v4()),
        drop_caches: args.drop_caches,
        seed: rand_seed(),
    };
    let result = run(&mut s3, &etcd, &args).await;
    // Clean up whatever happened, and report the first failure.
    let cleaned = s3.clean().await;
    let etcd_cleaned = etcd
        .kv_client()
        .delete(s3.prefix.clone(), Some(DeleteOptions::new().with_prefix()))
        .await
        .context("deleting store-bench's etcd keys");
    if let (Ok(objects), Ok(_)) = (&cleaned, &etcd_cleaned) {
        let prefix = &s3.prefix;
        eprintln!("store-bench: deleted {objects} objects and the etcd keys under {prefix}");
    }
    let rows = result?;
    cleaned?;
    etcd_cleaned?;
    let json = serde_json::to_string(&to_json(&config, &args, &rows))?;
    if let Some(path) = &args.json_file {
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
        print_table(&config, &args, &rows);
    } else if args.json {
        println!("{json}");
    } else {
        print_table(&config, &args, &rows);
    }
    Ok(())
}

/// A different seed each run, so no run's objects match an earlier one's blocks.
fn rand_seed() -> u64 {
    let u = Uuid::new_v4().as_u128();
    (u as u64) ^ ((u >> 64) as u64)
}
