//! The `chaserfs` binary: the daemon (`serve`), maintenance commands over a data dir, and
//! the API client (`workspaces`, `snapshots`, `sessions`, `mount`, `bench`). This file holds
//! the command line and hands each command to its module.

mod bench;
mod client;
mod config;
mod keys;
mod notify;
mod serve;
mod signal;
mod store;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use chaserfs_engine::ops::{fsck, gc};
use chaserfs_service::accounts::parse_size;
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
    /// On an error, print its causes in full with a backtrace (slow to symbolize in this
    /// large binary), not one line.
    #[arg(long, global = true)]
    debug: bool,
    /// The API client's flags, accepted before or after the command.
    #[command(flatten)]
    client: client::ClientOpts,
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
        #[command(subcommand)]
        cmd: client::workspaces::WorkspacesCmd,
    },
    /// Snapshots over the API.
    Snapshots {
        #[command(subcommand)]
        cmd: client::snapshots::SnapshotsCmd,
    },
    /// Sessions over the API.
    Sessions {
        #[command(subcommand)]
        cmd: client::sessions::SessionsCmd,
    },
    /// Mount a workspace at PATH (a session) until Ctrl-C, which ends it.
    Mount {
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
        /// Print the collection's report as one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

/// `chaserfs serve`'s flags.
#[derive(clap::Args)]
struct ServeArgs {
    /// TOML file of these flags by their long names (`data-dir = "/srv/chaserfs"`,
    /// `cache-size = "20G"`); a flag given on the command line or by its environment variable
    /// overrides it. Default: /etc/chaserfs/config.toml, if it exists.
    #[arg(long, env = "CHASER_CONFIG")]
    config: Option<PathBuf>,
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
    /// `--listen` and `--metrics-listen` are the old daemon's sockets then. A daemon sent
    /// SIGHUP starts its own successor this way (with CHASER_TAKEOVER=true).
    #[arg(long, env = "CHASER_TAKEOVER")]
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

/// Whether `--debug` was given (errors in full, with a backtrace).
static DEBUG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Errors end the process with one line, without a backtrace (unless `--debug`): symbolizing
/// one in this large binary takes seconds, and a failed takeover successor still holds the
/// store meanwhile.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if DEBUG.load(std::sync::atomic::Ordering::Relaxed) => {
            eprintln!("chaserfs: {e:?}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("chaserfs: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let (args, config) = config::command_line()?;
    let cli = Cli::try_parse_from(args).unwrap_or_else(|e| {
        // The command line alone parsed (`command_line`): the bad value is the file's.
        match config {
            Some(path) if e.use_stderr() => {
                eprint!("{e}");
                eprintln!("(the value is from the config file {})", path.display());
                std::process::exit(2)
            }
            _ => e.exit(),
        }
    });
    if cli.debug {
        DEBUG.store(true, std::sync::atomic::Ordering::Relaxed);
        // Errors made from now on capture a backtrace (before any other thread starts).
        std::env::set_var("RUST_LIB_BACKTRACE", "1");
    }
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
        Command::Serve(args) => serve::serve(*args)?,
        Command::Workspaces { cmd } => client::workspaces::run(cli.client, cmd)?,
        Command::Snapshots { cmd } => client::snapshots::run(cli.client, cmd)?,
        Command::Sessions { cmd } => client::sessions::run(cli.client, cmd)?,
        Command::Mount {
            workspace,
            path,
            xattrs,
        } => client::sessions::mount(cli.client, workspace, path, xattrs)?,
        Command::Bench { args } => bench::run(cli.client, args)?,
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
        Command::Gc {
            data_dir,
            json,
            cluster,
        } => match cluster.open_store(&data_dir, "gc")? {
            (store, None) => {
                let r = gc::collect(&store, true)?;
                if json {
                    let report = serde_json::json!({
                        "roots": r.roots,
                        "live_nodes": r.live_nodes,
                        "live_chunks": r.live_chunks,
                        "deleted_nodes": r.deleted_nodes,
                        "deleted_chunks": r.deleted_chunks,
                    });
                    println!("{report}");
                } else {
                    println!(
                        "gc: {} roots; kept {} nodes and {} chunks; deleted {} nodes and {} \
                         chunks",
                        r.roots, r.live_nodes, r.live_chunks, r.deleted_nodes, r.deleted_chunks
                    );
                }
            }
            (store, Some((_, c))) => {
                let grace = Duration::from_secs(cluster.gc_grace);
                let r = chaserfs_cluster::gc::collect(&store, &c, grace)?;
                if json {
                    let report = serde_json::json!({
                        "roots": r.roots,
                        "packs": r.packs,
                        "live_nodes": r.live_nodes,
                        "live_chunks": r.live_chunks,
                        "deleted_packs": r.deleted_packs,
                        "repacked_packs": r.repacked_packs,
                        "freed_bytes": r.freed_bytes,
                        "copied_bytes": r.copied_bytes,
                    });
                    println!("{report}");
                } else {
                    println!("gc: {r}");
                }
            }
        },
    }
    Ok(())
}
