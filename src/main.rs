//! The `chaserfs` binary: the daemon (`serve`), maintenance commands over a data dir, and
//! the API client (`workspaces`, `snapshots`, `sessions`, `mount`, `bench`).

mod bench;
mod client;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chaserfs_cluster::{Cluster, ClusterConfig, EtcdSecurity};
use chaserfs_engine::ops::{fsck, gc};
use chaserfs_engine::{Store, StoreOptions};
use chaserfs_http::listener;
use chaserfs_service::accounts::{parse_size, Accounts};
use chaserfs_service::service::{Config, Service};
use chaserfs_service::takeover;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chaserfs",
    version,
    about = "Copy-on-write workspace storage for agent sandboxes"
)]
struct Cli {
    /// Log as text lines, or as one JSON object per line. `RUST_LOG` sets the levels.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "CHASER_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: the HTTP API, and a FUSE mount per session.
    Serve(Box<ServeArgs>),
    /// Workspaces over the API (CHASER_API_URL, CHASER_API_KEY).
    Workspaces {
        #[command(flatten)]
        opts: client::ClientOpts,
        #[command(subcommand)]
        cmd: client::WorkspacesCmd,
    },
    /// Snapshots over the API.
    Snapshots {
        #[command(flatten)]
        opts: client::ClientOpts,
        #[command(subcommand)]
        cmd: client::SnapshotsCmd,
    },
    /// Sessions over the API.
    Sessions {
        #[command(flatten)]
        opts: client::ClientOpts,
        #[command(subcommand)]
        cmd: client::SessionsCmd,
    },
    /// Mount a workspace at PATH (a session) until Ctrl-C, which ends it.
    Mount {
        #[command(flatten)]
        opts: client::ClientOpts,
        workspace: String,
        path: String,
        /// Serve extended attributes (off by default: each write costs an extra round trip).
        #[arg(long)]
        xattrs: bool,
    },
    /// Benchmark clone, snapshot, restore, create, delete and session start/end against a
    /// running daemon (on workspaces it makes and deletes).
    Bench {
        #[command(flatten)]
        opts: client::ClientOpts,
        #[command(flatten)]
        args: bench::BenchArgs,
    },
    /// Print the `blake3:HEX` form of a key read from stdin, for a keys file.
    HashKey,
    /// Verify every root, object hash and reference in a data dir (daemon stopped), or in a
    /// cluster (with the cluster flags; DATA_DIR is then a scratch cache, emptied).
    Fsck {
        #[arg(long)]
        data_dir: PathBuf,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Delete objects no workspace or snapshot reaches, then compact (daemon stopped); with
    /// the cluster flags, one collection across the cluster (hosts keep running).
    Gc {
        #[arg(long)]
        data_dir: PathBuf,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

/// `chaserfs serve`'s flags.
#[derive(clap::Args)]
struct ServeArgs {
    /// RocksDB data dir (created if missing).
    #[arg(long, default_value = "/var/lib/chaserfs")]
    data_dir: PathBuf,
    /// Address the HTTP API listens on.
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: String,
    /// `ACCOUNT KEY` or `ACCOUNT blake3:HEX` per line (`#` comments). Without it, the
    /// account `default` gets a random key, printed once and written to DATA_DIR/api-key.
    #[arg(long)]
    api_keys_file: Option<PathBuf>,
    /// TOML file of what each account may hold: workspaces, active sessions, bytes, quota
    /// ceilings, forks a call, its GitHub token (README, "Accounts"). Without it, built-in
    /// limits apply to every account.
    #[arg(long)]
    accounts_file: Option<PathBuf>,
    /// Sessions may mount below this directory, and below /workspace.
    #[arg(long, default_value = "/run/chaserfs")]
    mount_root: PathBuf,
    /// Base URL that `owner/repo` imports are cloned from. A token for private
    /// repositories is read from CHASER_GITHUB_TOKEN (the accounts file says who may use it).
    #[arg(long, default_value = "https://github.com")]
    github_url: String,
    /// Seconds between periodic commits of mounted workspaces.
    #[arg(long, default_value_t = 5)]
    commit_interval: u64,
    /// Serve `GET /metrics` on this address instead of on `--listen`.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Take over from the daemon running on this data dir, without unmounting its sessions:
    /// it commits, hands its mounts and listening sockets over, and exits (for upgrades).
    /// `--listen` and `--metrics-listen` are the old daemon's sockets then.
    #[arg(long)]
    takeover: bool,
    /// Most HTTP connections open at once (on each listener); at the limit a new connection
    /// closes the one idle longest.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Seconds a client may take to send a request's headers, or stay idle between requests.
    #[arg(long, default_value_t = 30)]
    header_timeout: u64,
    /// Most bytes of file data one tar import may hold (holes of sparse files count), e.g.
    /// 64G: an upload beyond it is refused, so one request cannot fill the disk.
    #[arg(long, default_value = "64G", value_parser = parse_size)]
    import_max_bytes: u64,
    /// Most tar imports and exports streaming at once; one account may have a quarter of
    /// them (at least one). More answer 429.
    #[arg(long, default_value_t = 16)]
    max_archive_streams: usize,
    /// How long an ended session's record is kept (listed, fetched) before it is forgotten,
    /// e.g. 7d or 12h; its workspace keeps every commit.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    session_retention: Duration,
    #[command(flatten)]
    trust: TrustArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Privileges workspace contents (made by tenants) may confer on the host: all off unless the
/// operator turns them on. SECURITY.md says what each risks.
#[derive(clap::Args)]
struct TrustArgs {
    /// RISK: any local user can become root through a tenant's setuid file. Mounts sessions
    /// `suid` and keeps setuid/setgid bits from imported archives.
    #[arg(long)]
    insecure_suid: bool,
    /// RISK: a tenant's device node can open host devices (disks, memory). Mounts sessions
    /// `dev` and imports device nodes from archives (refused otherwise).
    #[arg(long)]
    insecure_dev: bool,
    /// RISK: a tenant's archive can set file capabilities and security labels. Imports
    /// `security.*` and `trusted.*` extended attributes (dropped otherwise).
    #[arg(long)]
    insecure_privileged_xattrs: bool,
}

/// Joining a cluster: objects in an S3 bucket, roots and records in etcd (see the README's
/// "Running a cluster"). Without these flags the daemon is one process on RocksDB.
#[derive(clap::Args)]
struct ClusterArgs {
    /// S3 endpoint URL of the object store, e.g. http://127.0.0.1:3900. Credentials come
    /// from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
    #[arg(long, env = "CHASER_S3_ENDPOINT", requires_all = ["s3_bucket", "etcd_endpoints"])]
    s3_endpoint: Option<String>,
    #[arg(long, env = "CHASER_S3_BUCKET", requires = "s3_endpoint")]
    s3_bucket: Option<String>,
    #[arg(long, default_value = "garage")]
    s3_region: String,
    /// etcd client URLs, comma-separated.
    #[arg(
        long,
        env = "CHASER_ETCD_ENDPOINTS",
        value_delimiter = ',',
        requires = "s3_endpoint"
    )]
    etcd_endpoints: Option<Vec<String>>,
    /// Prefix of this cluster's keys in etcd.
    #[arg(long, default_value = "/chaserfs/")]
    etcd_prefix: String,
    /// etcd user (etcd's own authentication); the password is read from
    /// CHASER_ETCD_PASSWORD.
    #[arg(long, env = "CHASER_ETCD_USER")]
    etcd_user: Option<String>,
    /// PEM CA certificate etcd's server certificate must chain to (with `https://`
    /// endpoints).
    #[arg(long)]
    etcd_ca_file: Option<PathBuf>,
    /// PEM client certificate for etcd's `--client-cert-auth` (with --etcd-key-file).
    #[arg(long, requires = "etcd_key_file")]
    etcd_cert_file: Option<PathBuf>,
    #[arg(long, requires = "etcd_cert_file")]
    etcd_key_file: Option<PathBuf>,
    /// This host's name in the cluster (default: the machine's hostname and the API port).
    #[arg(long)]
    host_name: Option<String>,
    /// Most bytes of objects cached in the data dir, e.g. 512M or 20G.
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    cache_size: u64,
    /// Seconds a host's hold on its workspaces outlives its last lease renewal: after a
    /// host is lost, its workspaces can be mounted elsewhere this long after.
    #[arg(long, default_value_t = 10)]
    lease_ttl: u64,
    /// Seconds any one request to S3 or etcd may take, retries included.
    #[arg(long, default_value_t = 30)]
    request_timeout: u64,
    /// Seconds between collections of objects no root reaches (one host at a time collects
    /// for the whole cluster); 0: never (run `chaserfs gc` with the cluster flags instead).
    #[arg(long, default_value_t = 600)]
    gc_interval: u64,
    /// Seconds an unreachable object is kept after its upload (an upload whose commit is
    /// still coming is not wasted).
    #[arg(long, default_value_t = 3600)]
    gc_grace: u64,
}

/// A cluster joined: this host's name and the cluster.
type Joined = (String, Arc<Cluster>);

impl ClusterArgs {
    /// Joins the cluster the flags name, if they name one: (this host's name, the cluster).
    fn join(&self, listen: &str) -> anyhow::Result<Option<Joined>> {
        let Some(endpoint) = &self.s3_endpoint else {
            return Ok(None);
        };
        let host = self.host_name.clone().unwrap_or_else(|| {
            let port = listen.rsplit(':').next().unwrap_or("7878");
            format!("{}:{port}", hostname())
        });
        let env = |name: &str| {
            std::env::var(name).with_context(|| format!("{name} is needed to reach S3"))
        };
        let config = ClusterConfig {
            s3_endpoint: endpoint.clone(),
            s3_bucket: self.s3_bucket.clone().unwrap_or_default(),
            s3_region: self.s3_region.clone(),
            s3_access_key: env("AWS_ACCESS_KEY_ID")?,
            s3_secret_key: env("AWS_SECRET_ACCESS_KEY")?,
            etcd_endpoints: self.etcd_endpoints.clone().unwrap_or_default(),
            etcd_prefix: self.etcd_prefix.clone(),
            host: host.clone(),
            lease_ttl: Duration::from_secs(self.lease_ttl.max(2)),
            request_timeout: Duration::from_secs(self.request_timeout.max(1)),
            etcd_security: EtcdSecurity {
                user: match &self.etcd_user {
                    Some(user) => Some((
                        user.clone(),
                        std::env::var("CHASER_ETCD_PASSWORD")
                            .context("CHASER_ETCD_PASSWORD is needed with --etcd-user")?,
                    )),
                    None => None,
                },
                ca_file: self.etcd_ca_file.clone(),
                cert_key_files: self.etcd_cert_file.clone().zip(self.etcd_key_file.clone()),
            },
        };
        let cluster =
            Cluster::connect(&config).map_err(|e| anyhow::anyhow!("joining the cluster: {e}"))?;
        Ok(Some((host, cluster)))
    }

    /// The store over `data_dir`: RocksDB alone, or a cluster host's cache of it.
    fn open_store(
        &self,
        data_dir: &Path,
        listen: &str,
    ) -> anyhow::Result<(Arc<Store>, Option<Joined>)> {
        match self.join(listen)? {
            // Opening the store creates the data dir (durably) on first start.
            None => Ok((Store::open(data_dir).context("opening the data dir")?, None)),
            Some((host, cluster)) => {
                std::fs::create_dir_all(data_dir)?;
                let store = Store::open_cluster(
                    &data_dir.join("cache"),
                    StoreOptions::default(),
                    cluster.clone(),
                    self.cache_size,
                )
                .context("opening the object cache")?;
                Ok((store, Some((host, cluster))))
            }
        }
    }
}

/// Errors end the process with one line, without a backtrace: symbolizing one in this large
/// binary takes seconds, and a failed takeover successor still holds the store meanwhile.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chaserfs: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // `info` unless RUST_LOG says otherwise: requests, sessions and collections are worth seeing.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours for a terminal only, not for a log file or journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match cli.command {
        Command::Serve(args) => serve(*args)?,
        Command::Workspaces { opts, cmd } => client::workspaces(opts, cmd)?,
        Command::Snapshots { opts, cmd } => client::snapshots(opts, cmd)?,
        Command::Sessions { opts, cmd } => client::sessions(opts, cmd)?,
        Command::Mount {
            opts,
            workspace,
            path,
            xattrs,
        } => client::mount(opts, workspace, path, xattrs)?,
        Command::Bench { opts, args } => bench::run(opts, args)?,
        Command::HashKey => {
            let mut key = String::new();
            std::io::stdin().read_line(&mut key)?;
            println!("blake3:{}", blake3::hash(key.trim().as_bytes()).to_hex());
        }
        Command::Fsck { data_dir, cluster } => {
            let (store, _) = cluster.open_store(&data_dir, "fsck")?;
            let report = fsck::check(&store)?;
            println!(
                "fsck: {} roots, {} nodes, {} chunks verified, {} problems",
                report.roots,
                report.nodes,
                report.chunks,
                report.problems.len()
            );
            for p in &report.problems {
                println!("  {p}");
            }
            if !report.is_clean() {
                bail!("fsck found problems");
            }
        }
        Command::Gc { data_dir, cluster } => match cluster.open_store(&data_dir, "gc")? {
            (store, None) => {
                let r = gc::collect(&store, true)?;
                println!(
                    "gc: {} roots; kept {} nodes and {} chunks; deleted {} nodes and {} chunks",
                    r.roots, r.live_nodes, r.live_chunks, r.deleted_nodes, r.deleted_chunks
                );
            }
            (store, Some((_, c))) => {
                let grace = Duration::from_secs(cluster.gc_grace);
                let r = chaserfs_cluster::gc::collect(&store, &c, grace)?;
                println!("gc: {r}");
            }
        },
    }
    Ok(())
}

/// (account, BLAKE3 of the key) from a keys file, or for the generated key of `default`.
/// Only hashes are kept: the daemon reads `DATA_DIR/api-key.blake3`, and `DATA_DIR/api-key`
/// is there for the operator to read (and may be deleted).
fn load_keys(data_dir: &Path, file: Option<&Path>) -> anyhow::Result<Vec<(String, blake3::Hash)>> {
    if let Some(file) = file {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let [account, key] = line.split_whitespace().collect::<Vec<_>>()[..] else {
                bail!("{}:{}: expected `ACCOUNT KEY`", file.display(), n + 1);
            };
            let hash = match key.strip_prefix("blake3:") {
                Some(hex) => blake3::Hash::from_hex(hex)
                    .with_context(|| format!("{}:{}: bad blake3 hash", file.display(), n + 1))?,
                None => blake3::hash(key.as_bytes()),
            };
            keys.push((account.to_string(), hash));
        }
        return Ok(keys);
    }
    let hash_path = data_dir.join("api-key.blake3");
    if let Ok(hex) = std::fs::read_to_string(&hash_path) {
        let hash = blake3::Hash::from_hex(hex.trim()).context("reading api-key.blake3")?;
        return Ok(vec![("default".into(), hash)]);
    }
    let key_path = data_dir.join("api-key");
    if let Ok(key) = std::fs::read_to_string(&key_path) {
        // A data dir from before keys were kept hashed: keep its key.
        let hash = blake3::hash(key.trim().as_bytes());
        write_private(&hash_path, &hash.to_hex())?;
        return Ok(vec![("default".into(), hash)]);
    }
    let key = format!("chs_{}", hex_key());
    let hash = blake3::hash(key.as_bytes());
    write_private(&key_path, &key)?;
    write_private(&hash_path, &hash.to_hex())?;
    println!(
        "API key for account `default` (also in {}): {key}",
        key_path.display()
    );
    Ok(vec![("default".into(), hash)])
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut f, format!("{text}\n").as_bytes())?;
    f.sync_all()?;
    // The name is durable only once its directory is synced.
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn hex_key() -> String {
    let bytes: [u8; 24] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let ServeArgs {
        data_dir,
        listen,
        api_keys_file,
        accounts_file,
        mount_root,
        github_url,
        commit_interval,
        metrics_listen,
        takeover,
        max_connections,
        header_timeout,
        import_max_bytes,
        max_archive_streams,
        session_retention,
        trust,
        cluster,
    } = args;
    let commit_interval = Duration::from_secs(commit_interval.max(1));
    raise_open_files_limit();
    let limits = listener::Limits {
        max_connections: max_connections.max(1),
        header_timeout: Duration::from_secs(header_timeout.max(1)),
    };
    chaserfs_http::metrics::install().map_err(|e| anyhow::anyhow!("metrics: {e}"))?;
    // Taking over: the running daemon hands over its sessions and sockets and closes the
    // store; it exits once this process has readied every session (see takeover.rs). Any
    // error before then returns them all to it.
    let started = std::time::Instant::now();
    let inherited = if takeover {
        if cluster.s3_endpoint.is_some() {
            bail!("--takeover is not supported for cluster hosts");
        }
        Some(takeover::request(&data_dir).map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    let (store, joined) = open_store(&cluster, &data_dir, &listen, takeover)?;
    if let Some((host, c)) = &joined {
        if api_keys_file.is_none() {
            bail!("a cluster host needs --api-keys-file: every host serves the same keys");
        }
        tracing::info!(
            "cluster host {host}: objects in {}, records in etcd, cache {} MiB",
            cluster.s3_endpoint.as_deref().unwrap_or(""),
            cluster.cache_size >> 20
        );
        spawn_cluster_stats(store.clone(), c.clone());
        if cluster.gc_interval > 0 {
            spawn_cluster_gc(
                store.clone(),
                c.clone(),
                Duration::from_secs(cluster.gc_interval),
                Duration::from_secs(cluster.gc_grace),
            )?;
        }
    }
    let stats = joined.as_ref().map(|(_, c)| (store.clone(), c.clone()));
    let host = joined.map(|(h, _)| h);
    let data_dir = data_dir.canonicalize()?;
    std::fs::create_dir_all(&mount_root)?;
    // Imports mount their new workspace here, where no other local user may look.
    let imports = mount_root.join(chaserfs_service::mountpoint::IMPORTS_DIR);
    std::fs::create_dir_all(&imports)?;
    std::fs::set_permissions(
        &imports,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    let keys = load_keys(&data_dir, api_keys_file.as_deref())?;
    // The operator's token serves every account only while the operator's `default` is the
    // only one; with a keys file, the accounts file names who may use it.
    let accounts = Accounts::load(
        accounts_file.as_deref(),
        std::env::var("CHASER_GITHUB_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        api_keys_file.is_none(),
    )
    .map_err(anyhow::Error::msg)?;
    let config = Config {
        data_dir: data_dir.clone(),
        mount_root: mount_root.canonicalize()?,
        commit_interval,
        github_url,
        accounts,
        host,
        trust: chaserfs_service::service::Trust {
            suid: trust.insecure_suid,
            dev: trust.insecure_dev,
            privileged_xattrs: trust.insecure_privileged_xattrs,
        },
        import_max_bytes,
        max_archive_streams,
    };
    let (svc, listeners) = match inherited {
        None => {
            let svc =
                Service::new(store, config, keys).map_err(|e| anyhow::anyhow!("{}", e.message))?;
            let bind = |addr: &str, what: &str| -> anyhow::Result<OwnedFd> {
                let l = std::net::TcpListener::bind(addr)
                    .with_context(|| format!("binding {addr}{what}"))?;
                Ok(l.into())
            };
            let listeners = takeover::Listeners {
                api: bind(&listen, "")?,
                metrics: match &metrics_listen {
                    Some(addr) => Some(bind(addr, " (--metrics-listen)")?),
                    None => None,
                },
            };
            (svc, listeners)
        }
        Some((handover, fds, conn)) => {
            let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
            let api = fds[handover.api_listener].take().context("no API socket")?;
            let metrics = handover.metrics_listener.and_then(|i| fds[i].take());
            let (svc, adopted) = Service::taking_over(store, config, keys, &handover, &mut fds)
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            takeover::acknowledge(conn).map_err(anyhow::Error::msg)?;
            svc.serve_adopted(adopted);
            tracing::info!(
                "took over {} sessions from process {} in {:.0} ms",
                handover.sessions.len(),
                handover.pid,
                started.elapsed().as_secs_f64() * 1e3
            );
            (svc, takeover::Listeners { api, metrics })
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (requests, mut successor) = tokio::sync::mpsc::channel(1);
        // A data dir that cannot hold a socket (some FUSE and network filesystems) costs
        // only the takeover, not the daemon.
        if let Err(e) = takeover::listen(&data_dir, requests) {
            tracing::warn!(
                "no takeover socket at {}: {e}; serve --takeover cannot replace this daemon",
                takeover::socket_path(&data_dir).display()
            );
        }
        // The daemon's own work runs on threads of its own, never queued behind requests.
        let committer = svc.clone();
        on_own_thread("commit", move || loop {
            std::thread::sleep(committer.config().commit_interval);
            committer.commit_all();
            match committer.prune_sessions(session_retention) {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    "forgot {n} sessions that ended over {} ago",
                    humantime::format_duration(session_retention)
                ),
                Err(e) => tracing::warn!("pruning ended sessions: {}", e.message),
            }
        })?;
        let mut app = chaserfs_http::router(svc.clone());
        match &listeners.metrics {
            Some(fd) => {
                let metrics = tcp_listener(fd)?;
                tracing::info!("metrics on http://{}/metrics", metrics.local_addr()?);
                let routes = chaserfs_http::metrics_router(svc.clone());
                tokio::spawn(listener::serve(
                    metrics,
                    routes,
                    limits,
                    std::future::pending(),
                ));
            }
            None => app = app.merge(chaserfs_http::metrics_router(svc.clone())),
        }
        let listeners = Arc::new(listeners);
        // Serves HTTP until SIGTERM, or until a successor takes over.
        loop {
            let listener = tcp_listener(&listeners.api)?;
            tracing::info!("listening on {}", listener.local_addr()?);
            eprintln!("chaserfs: listening on http://{}", listener.local_addr()?);
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let mut server =
                tokio::spawn(listener::serve(listener, app.clone(), limits, async move {
                    let _ = stopped.await;
                }));
            // Without a takeover socket the channel is closed and only a signal ends this.
            let request = tokio::select! {
                _ = shutdown_signal() => None,
                Some(r) = successor.recv() => Some(r),
            };
            let _ = stop.send(());
            let Some(request) = request else {
                // Requests in flight get a while to finish; a client that holds its request
                // open longer does not hold up the commit of every session.
                match tokio::time::timeout(DRAIN_ON_STOP, &mut server).await {
                    Ok(served) => served??,
                    Err(_) => {
                        tracing::warn!(
                            "requests still running after {} s; stopping without them",
                            DRAIN_ON_STOP.as_secs()
                        );
                        server.abort();
                    }
                }
                break;
            };
            // Requests being served finish first; new connections wait in the backlog.
            if tokio::time::timeout(DRAIN_WAIT, &mut server).await.is_err() {
                let why = format!("requests still running after {} s", DRAIN_WAIT.as_secs());
                tracing::warn!("takeover refused: {why}");
                takeover::refuse(request, &why);
                continue;
            }
            let (s, l) = (svc.clone(), listeners.clone());
            match tokio::task::spawn_blocking(move || takeover::answer(&s, request, &l)).await? {
                Ok(()) => {
                    eprintln!("chaserfs: handed over to a successor");
                    std::process::exit(0);
                }
                Err(e) => tracing::warn!("takeover failed: {e}; serving again"),
            }
        }
        // SIGTERM: commit every session durably and unmount before exiting 0.
        let s: Arc<Service> = svc.clone();
        on_own_thread("shutdown", move || s.shutdown())?.await?;
        if let Some((store, cluster)) = stats {
            tracing::info!("{}", cluster_stats(&store, &cluster));
        }
        eprintln!("chaserfs: stopped");
        anyhow::Ok(())
    })
}

/// Raises the soft limit on open descriptors to the hard one: every session, connection and
/// RocksDB file takes one, and running out fails writes (the default soft limit is 1,024).
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("raising the open files limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("reading the open files limit: {e}"),
    }
}

/// Runs `work` on a thread of its own (inside the runtime's context); the receiver yields
/// once it has returned.
fn on_own_thread(
    name: &str,
    work: impl FnOnce() + Send + 'static,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<()>> {
    let (done, finished) = tokio::sync::oneshot::channel();
    let rt = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _rt = rt.enter();
            work();
            let _ = done.send(());
        })?;
    Ok(finished)
}

/// How long SIGTERM waits for the requests being served before committing and unmounting.
const DRAIN_ON_STOP: Duration = Duration::from_secs(10);

/// How long a takeover waits for the requests being served to finish.
const DRAIN_WAIT: Duration = Duration::from_secs(30);

/// Opens the store; when taking over, as soon as the old daemon's exit has released it.
fn open_store(
    cluster: &ClusterArgs,
    data_dir: &Path,
    listen: &str,
    takeover: bool,
) -> anyhow::Result<(Arc<Store>, Option<Joined>)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match cluster.open_store(data_dir, listen) {
            Err(e) if takeover && std::time::Instant::now() < deadline => {
                tracing::debug!("store not free yet: {e:#}");
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// A tokio listener on another descriptor of `fd`'s socket: the socket outlives it.
fn tcp_listener(fd: &OwnedFd) -> anyhow::Result<tokio::net::TcpListener> {
    let l = std::net::TcpListener::from(fd.try_clone()?);
    l.set_nonblocking(true)?;
    Ok(tokio::net::TcpListener::from_std(l)?)
}

/// Logs the object traffic and cache figures every minute they changed.
fn spawn_cluster_stats(store: Arc<Store>, cluster: Arc<Cluster>) {
    std::thread::spawn(move || {
        let mut last = String::new();
        loop {
            std::thread::sleep(Duration::from_secs(60));
            let now = cluster_stats(&store, &cluster);
            if now != last {
                tracing::info!("{now}");
                last = now;
            }
        }
    });
}

/// A cluster host's object traffic and cache figures since start.
fn cluster_stats(store: &Store, cluster: &Cluster) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let s = &cluster.objects.stats;
    let c = store.cache_stats();
    // Reads that fetched for themselves; prefetched objects count as local.
    let reads = (c.hits + c.misses - c.prefetched).max(1);
    format!(
        "cluster objects: fetched {} in {} requests ({} MiB, {} ahead of reads), uploaded {} \
         in {} packs ({} MiB), {} chunks found in S3 already; {} objects indexed; cache {} of \
         {} MiB, {:.1}% of {} reads local",
        s.fetched.load(Relaxed),
        s.get_requests.load(Relaxed),
        s.fetched_bytes.load(Relaxed) >> 20,
        c.prefetched,
        s.uploaded.load(Relaxed),
        s.packs_uploaded.load(Relaxed),
        s.uploaded_bytes.load(Relaxed) >> 20,
        s.deduplicated.load(Relaxed),
        cluster.index.len(),
        c.bytes >> 20,
        c.limit >> 20,
        100.0 * c.hits as f64 / reads as f64,
        reads
    )
}

/// Every `interval`, one collection across the cluster, if no other host is collecting.
fn spawn_cluster_gc(
    store: Arc<Store>,
    cluster: Arc<Cluster>,
    interval: Duration,
    grace: Duration,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("cluster-gc".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            let started = std::time::Instant::now();
            match chaserfs_cluster::gc::collect(&store, &cluster, grace) {
                Ok(r) => {
                    chaserfs_service::metrics::record_gc(
                        started.elapsed(),
                        r.deleted_packs as u64,
                        r.freed_bytes,
                    );
                    tracing::info!("cluster gc: {r}")
                }
                Err(chaserfs_engine::FsError::Busy(_)) => {}
                Err(e) => tracing::error!("cluster gc: {e}"),
            }
        })?;
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
