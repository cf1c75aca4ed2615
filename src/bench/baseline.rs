//! `--files` and `--baseline`: the tree the bench writes (through a session, and natively),
//! the native `cp -a` of it, and the baselines each row's p50 is set against.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::{counted, stopped, FLOOR};

/// Writes `files` small files, 1,000 per directory, under `root` (which may not exist yet);
/// stops early after Ctrl-C.
pub(super) fn make_tree(root: &Path, files: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    for i in 0..files {
        let dir = root.join(format!("d{:04}", i / 1000));
        if i % 1000 == 0 {
            if stopped() {
                return Ok(());
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let f = dir.join(format!("f{i}"));
        std::fs::write(&f, format!("file {i}\n"))
            .with_context(|| format!("writing {}", f.display()))?;
    }
    Ok(())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let ok = cmd
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("running {cmd:?}"))?
        .success();
    if !ok {
        bail!("{cmd:?} failed");
    }
    Ok(())
}

/// Milliseconds for `cp -a` + `sync` of a tree of `files` files made under `dir` (a clone
/// without copy-on-write, on the disk `dir` is on); `dir` is removed after.
pub(super) fn native_cp_a(dir: &Path, files: u64) -> anyhow::Result<f64> {
    let copy = || -> anyhow::Result<f64> {
        make_tree(&dir.join("tree"), files)?;
        run(&mut Command::new("sync"))?;
        let t = Instant::now();
        run(Command::new("cp")
            .arg("-a")
            .arg(dir.join("tree"))
            .arg(dir.join("copy")))?;
        run(&mut Command::new("sync"))?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    let ms = copy();
    let _ = std::fs::remove_dir_all(dir);
    ms.with_context(|| format!("the native baseline in {}", dir.display()))
}

/// The baselines measured in the run.
#[derive(Default)]
pub(super) struct Baselines {
    /// The HTTP floor's p50 (ms), by client count.
    pub(super) floor: Vec<(u64, f64)>,
    /// `cp -a` + sync (ms), by the tree's size.
    pub(super) native: Vec<(u64, f64)>,
}

impl Baselines {
    pub(super) fn floor_ms(&self, clients: u64) -> Option<f64> {
        let f = self.floor.iter().find(|(c, _)| *c == clients)?.1;
        (f > 0.0).then_some(f)
    }

    pub(super) fn native_ms(&self, files: u64) -> Option<f64> {
        let ms = self.native.iter().find(|(n, _)| *n == files)?.1;
        (ms > 0.0).then_some(ms)
    }

    pub(super) fn json(&self, dir: &Path) -> Value {
        json!({
            "http_floor": self.floor.iter()
                .map(|(c, ms)| json!({"clients": c, "p50_ms": ms}))
                .collect::<Vec<_>>(),
            "native_cp_a": self.native.iter()
                .map(|(n, ms)| json!({"files": n, "ms": ms}))
                .collect::<Vec<_>>(),
            "native_dir": dir,
        })
    }

    /// The baselines under the table, and what its last columns are.
    pub(super) fn print(&self, dir: &Path) {
        let floor: Vec<String> = self
            .floor
            .iter()
            .map(|(c, ms)| format!("{ms:.3} ms with {}", counted(*c, "client")))
            .collect();
        if !floor.is_empty() {
            println!(
                "baseline, HTTP floor ({FLOOR}), p50: {}; P50/FLOOR is each row's p50 over it",
                floor.join(", ")
            );
        }
        if self.native.is_empty() {
            return;
        }
        let native: Vec<String> = self
            .native
            .iter()
            .map(|(n, ms)| format!("{} {ms:.1} ms", counted(*n, "file")))
            .collect();
        println!(
            "baseline, native cp -a + sync of the same tree in {}: {}; P50/CP -A is each row's p50 over it",
            dir.display(),
            native.join(", ")
        );
    }
}
