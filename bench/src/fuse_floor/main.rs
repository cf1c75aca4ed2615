//! fuse-floor: what one FUSE round trip costs on this machine, with nothing behind it.
//!
//! Mounts a hello-world filesystem (a root directory holding one empty file) with the same
//! fuser and the same number of threads as a chaserfs session, but with attribute and entry
//! timeouts of zero, so the kernel asks again on every call. Then `fstat`s the open file N
//! times: each is one GETATTR round trip that the filesystem answers at once. Prints the
//! median of several rounds in microseconds, and, with `--json`, `{"round_trip_us": X}`.
//!
//!   fuse-floor [--calls N] [--json]      (default 20,000 calls per round, 5 rounds)
//!   fuse-floor --serve DIR [--no-writeback]
//!                                        (a filesystem with nothing behind it: `null.rs`)
//!   fuse-floor --passthrough DIR BACKING [--plain]
//!                                        (BACKING's files, read-only: `passthrough.rs`)

use std::ffi::OsStr;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{bail, Context};

mod null;
mod passthrough;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, ReplyAttr, ReplyEntry,
    Request,
};

const ROOT: u64 = 1;
const FILE: u64 = 2;
const ROUNDS: usize = 5;

struct Hello;

fn attr(ino: u64) -> FileAttr {
    let dir = ino == ROOT;
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: if dir {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: if dir { 0o755 } else { 0o644 },
        nlink: if dir { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl Filesystem for Hello {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 == ROOT && name == "file" {
            reply.entry(&Duration::ZERO, &attr(FILE), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino.0 {
            ROOT | FILE => reply.attr(&Duration::ZERO, &attr(ino.0)),
            _ => reply.error(Errno::ENOENT),
        }
    }
}

/// Mounts `fs` on `dir` as chaserfs mounts a session (four threads, every user allowed,
/// `default_permissions`, the bdi tuned: `read_ahead_kb` 2048, `strict_limit` 0), prints
/// "serving DIR" for the bench scripts, and serves until the process is killed.
fn serve_as_a_session<FS: Filesystem + Send + 'static>(
    fs: FS,
    dir: &std::path::Path,
    fsname: &str,
    options: &[fuser::MountOption],
) -> anyhow::Result<()> {
    let mut config = fuser::Config::default();
    config.n_threads = Some(4);
    config.acl = fuser::SessionACL::All;
    config.mount_options = vec![
        fuser::MountOption::FSName(fsname.into()),
        fuser::MountOption::DefaultPermissions,
    ];
    config.mount_options.extend_from_slice(options);
    let session = fuser::spawn_mount(fs, dir, &config)?;
    let dev = std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(dir)?);
    let bdi = format!("/sys/class/bdi/{}:{}", libc::major(dev), libc::minor(dev));
    for (knob, value) in [("strict_limit", "0"), ("read_ahead_kb", "2048")] {
        let _ = std::fs::write(format!("{bdi}/{knob}"), value);
    }
    println!("serving {}", dir.display());
    session.join()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut calls = 20_000usize;
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--calls" => calls = args.next().context("--calls N")?.parse()?,
            "--json" => json = true,
            "--serve" => {
                let dir = args.next().context("--serve DIR [--no-writeback]")?;
                let writeback = match args.next().as_deref() {
                    None => true,
                    Some("--no-writeback") => false,
                    Some(_) => bail!("usage: fuse-floor --serve DIR [--no-writeback]"),
                };
                return null::serve(dir.as_ref(), writeback);
            }
            "--passthrough" => {
                let usage = "--passthrough DIR BACKING [--plain]";
                let dir = args.next().context(usage)?;
                let backing = args.next().context(usage)?;
                let plain = match args.next().as_deref() {
                    None => false,
                    Some("--plain") => true,
                    Some(_) => bail!("usage: fuse-floor {usage}"),
                };
                return passthrough::serve(dir.as_ref(), backing.as_ref(), plain);
            }
            _ => bail!(
                "usage: fuse-floor [--calls N] [--json] | fuse-floor --serve DIR [--no-writeback] \
                 | fuse-floor --passthrough DIR BACKING [--plain]"
            ),
        }
    }
    let dir = tempfile::tempdir()?;
    let mut config = fuser::Config::default();
    // As many threads as a chaserfs session reads its mount with.
    config.n_threads = Some(4);
    config.mount_options = vec![fuser::MountOption::FSName("fuse-floor".into())];
    let session = fuser::spawn_mount(Hello, dir.path(), &config)?;
    let file = std::fs::File::open(dir.path().join("file"))
        .context("opening the hello-world mount's file")?;
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..calls {
            file.metadata()?;
        }
        rounds.push(t.elapsed().as_secs_f64() * 1e6 / calls as f64);
    }
    drop(file);
    drop(session);
    rounds.sort_by(f64::total_cmp);
    let median = rounds[ROUNDS / 2];
    if json {
        println!("{}", serde_json::json!({ "round_trip_us": median }));
    } else {
        println!(
            "FUSE round trip (fstat on a hello-world mount, attributes never cached): {median:.1} µs \
             (median of {ROUNDS} rounds of {calls} calls)"
        );
    }
    Ok(())
}
