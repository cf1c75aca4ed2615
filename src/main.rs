//! The `chaserfs` binary: the daemon (`serve`) and maintenance commands over a data dir.

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
        /// `ACCOUNT KEY` per line (`#` comments). Without it, the account `default` gets a
        /// random key, printed once and kept in DATA_DIR/api-key.
        #[arg(long)]
        api_keys_file: Option<PathBuf>,
        /// Sessions may mount below this directory, and below /workspace.
        #[arg(long, default_value = "/run/chaserfs")]
        mount_root: PathBuf,
        /// Base URL that `owner/repo` imports are cloned from.
        #[arg(long, default_value = "https://github.com")]
        github_url: String,
        /// Seconds between periodic commits of mounted workspaces.
        #[arg(long, default_value_t = 5)]
        commit_interval: u64,
    },
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
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve {
            data_dir,
            listen,
            api_keys_file,
            mount_root,
            github_url: _,
            commit_interval,
        } => {
            serve(
                data_dir,
                listen,
                api_keys_file,
                mount_root,
                Duration::from_secs(commit_interval.max(1)),
            )?;
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

/// `ACCOUNT KEY` pairs from a keys file, or the generated key of the `default` account.
fn load_keys(data_dir: &Path, file: Option<&Path>) -> anyhow::Result<Vec<(String, String)>> {
    if let Some(file) = file {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                [account, key] => keys.push((account.to_string(), key.to_string())),
                _ => bail!("{}:{}: expected `ACCOUNT KEY`", file.display(), n + 1),
            }
        }
        return Ok(keys);
    }
    let path = data_dir.join("api-key");
    if let Ok(key) = std::fs::read_to_string(&path) {
        return Ok(vec![("default".into(), key.trim().to_string())]);
    }
    let key = format!("chs_{}", hex_key());
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    std::io::Write::write_all(&mut f, format!("{key}\n").as_bytes())?;
    println!(
        "API key for account `default` (also in {}): {key}",
        path.display()
    );
    Ok(vec![("default".into(), key)])
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
    commit_interval: Duration,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&data_dir)?;
    let data_dir = data_dir.canonicalize()?;
    std::fs::create_dir_all(&mount_root)?;
    let keys = load_keys(&data_dir, api_keys_file.as_deref())?;
    let store = Store::open(&data_dir).context("opening the data dir")?;
    let config = Config {
        data_dir,
        mount_root: mount_root.canonicalize()?,
        commit_interval,
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

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
