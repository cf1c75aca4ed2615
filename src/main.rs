//! The `chaserfs` binary: the daemon (`serve`), maintenance commands over a data dir, and
//! the API client (`workspaces`, `snapshots`, `sessions`, `mount`).

mod client;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chaserfs_api::http;
use chaserfs_api::service::{Config, Service};
use chaserfs_fs::{fsck, gc, Store};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chaserfs",
    version,
    about = "Copy-on-write workspace storage for agent sandboxes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: the HTTP API, and a FUSE mount per session.
    Serve {
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
        /// Sessions may mount below this directory, and below /workspace.
        #[arg(long, default_value = "/run/chaserfs")]
        mount_root: PathBuf,
        /// Base URL that `owner/repo` imports are cloned from. A token for private
        /// repositories is read from CHASER_GITHUB_TOKEN.
        #[arg(long, default_value = "https://github.com")]
        github_url: String,
        /// Seconds between periodic commits of mounted workspaces.
        #[arg(long, default_value_t = 5)]
        commit_interval: u64,
    },
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
    /// Print the `blake3:HEX` form of a key read from stdin, for a keys file.
    HashKey,
    /// Verify every root, object hash and reference in a data dir (daemon stopped).
    Fsck {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Delete objects no workspace or snapshot reaches, then compact (daemon stopped).
    Gc {
        #[arg(long)]
        data_dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        // `info` unless RUST_LOG says otherwise: collections and session ends are worth seeing.
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve {
            data_dir,
            listen,
            api_keys_file,
            mount_root,
            github_url,
            commit_interval,
        } => {
            serve(
                data_dir,
                listen,
                api_keys_file,
                mount_root,
                github_url,
                Duration::from_secs(commit_interval.max(1)),
            )?;
        }
        Command::Workspaces { opts, cmd } => client::workspaces(opts, cmd)?,
        Command::Snapshots { opts, cmd } => client::snapshots(opts, cmd)?,
        Command::Sessions { opts, cmd } => client::sessions(opts, cmd)?,
        Command::Mount {
            opts,
            workspace,
            path,
            xattrs,
        } => client::mount(opts, workspace, path, xattrs)?,
        Command::HashKey => {
            let mut key = String::new();
            std::io::stdin().read_line(&mut key)?;
            println!("blake3:{}", blake3::hash(key.trim().as_bytes()).to_hex());
        }
        Command::Fsck { data_dir } => {
            let store = Store::open(&data_dir).context("opening the data dir")?;
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
        Command::Gc { data_dir } => {
            let store = Store::open(&data_dir).context("opening the data dir")?;
            let r = gc::collect(&store, true)?;
            println!(
                "gc: {} roots; kept {} nodes and {} chunks; deleted {} nodes and {} chunks",
                r.roots, r.live_nodes, r.live_chunks, r.deleted_nodes, r.deleted_chunks
            );
        }
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

fn serve(
    data_dir: PathBuf,
    listen: String,
    api_keys_file: Option<PathBuf>,
    mount_root: PathBuf,
    github_url: String,
    commit_interval: Duration,
) -> anyhow::Result<()> {
    // Opening the store creates the data dir (durably) on first start.
    let store = Store::open(&data_dir).context("opening the data dir")?;
    let data_dir = data_dir.canonicalize()?;
    std::fs::create_dir_all(&mount_root)?;
    let keys = load_keys(&data_dir, api_keys_file.as_deref())?;
    let config = Config {
        data_dir,
        mount_root: mount_root.canonicalize()?,
        commit_interval,
        github_url,
        github_token: std::env::var("CHASER_GITHUB_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
    };
    let svc = Service::new(store, config, keys).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        tracing::info!("listening on {}", listener.local_addr()?);
        eprintln!("chaserfs: listening on http://{}", listener.local_addr()?);
        let committer = svc.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(committer.config().commit_interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                let s = committer.clone();
                let _ = tokio::task::spawn_blocking(move || s.commit_all()).await;
            }
        });
        axum::serve(listener, http::router(svc.clone()))
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        // SIGTERM: commit every session durably and unmount before exiting 0.
        let s: Arc<Service> = svc.clone();
        tokio::task::spawn_blocking(move || s.shutdown()).await?;
        eprintln!("chaserfs: stopped");
        anyhow::Ok(())
    })
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
