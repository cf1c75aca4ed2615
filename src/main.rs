//! The `chaserfs` binary: maintenance commands over a data dir (the daemon comes next).

use std::path::PathBuf;

use anyhow::{bail, Context};
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
