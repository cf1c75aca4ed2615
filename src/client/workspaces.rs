//! `chaserfs workspaces`: create, list, show, clone, fork, diff, limit, rename and delete
//! workspaces over the API, import them (from GitHub or a tar file) and export them.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::{human_bytes, s, seg, table, Client, ClientOpts};

#[derive(Subcommand)]
pub enum WorkspacesCmd {
    /// Create a fresh workspace.
    Create {
        #[arg(long, default_value = "sandbox", value_parser = ["sandbox", "browser"])]
        session_type: String,
        #[arg(long)]
        name: Option<String>,
        /// OCI image (sandbox only).
        #[arg(long)]
        image: Option<String>,
        /// Flag it as a template.
        #[arg(long)]
        template: bool,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// List workspaces (every page).
    List {
        /// Only templates.
        #[arg(long)]
        templates: bool,
    },
    /// Show one workspace.
    Get { workspace: String },
    /// Clone a workspace (O(1)); refused while the source has an active session.
    Clone {
        source: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        template: bool,
        /// Limits of the clone (default: the source's).
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// Fork N: COUNT clones in one call, all or none, named PREFIX-1, PREFIX-2, ...
    Fork {
        source: String,
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Name prefix (default: the source's name).
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        template: bool,
        /// Limits of the clones (default: the source's).
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// What changed between two states: `+`, `-` or `M` and the path, a line each.
    Diff {
        workspace: String,
        /// A snapshot, or `current` (the last commit).
        #[arg(long)]
        from: String,
        #[arg(long, default_value = "current")]
        to: String,
    },
    /// Set a workspace's quota; a limit not given is lifted. Sessions enforce it at once.
    Quota {
        workspace: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// Set a workspace's name, or clear it with --clear.
    Rename {
        workspace: String,
        #[arg(required_unless_present = "clear")]
        name: Option<String>,
        #[arg(long, conflicts_with = "name")]
        clear: bool,
    },
    /// Turn template mode on or off.
    Template {
        workspace: String,
        #[arg(value_parser = ["on", "off"])]
        mode: String,
    },
    /// Delete workspaces (one call per workspace, or one bulk delete for several).
    Delete {
        #[arg(required = true)]
        workspaces: Vec<String>,
        /// End active sessions first.
        #[arg(long)]
        force: bool,
    },
    /// Import a GitHub repository (`owner/repo`), showing progress until it is ready.
    Import {
        repo: String,
        #[arg(long)]
        name: Option<String>,
        /// Answer at once instead of waiting for the clone.
        #[arg(long)]
        no_wait: bool,
    },
    /// Write the workspace's last commit, or a snapshot, to FILE as tar (tar.zst if FILE
    /// ends in .zst; `-` for stdout).
    Export {
        workspace: String,
        file: String,
        #[arg(long)]
        snapshot: Option<String>,
    },
    /// A new workspace from a tar or tar.zst file.
    ImportArchive {
        file: std::path::PathBuf,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_parser = ["sandbox", "browser"])]
        session_type: Option<String>,
        #[arg(long)]
        image: Option<String>,
        #[arg(long)]
        template: bool,
    },
}

/// A workspace's limits on the command line.
#[derive(Args)]
pub struct QuotaArgs {
    /// Most logical bytes (the sum of file sizes).
    #[arg(long)]
    quota_bytes: Option<u64>,
    /// Most files, directories and other inodes.
    #[arg(long)]
    quota_inodes: Option<u64>,
}

impl QuotaArgs {
    fn json(&self) -> Value {
        json!({"bytes": self.quota_bytes, "inodes": self.quota_inodes})
    }

    /// The quota to send with a create or clone: none unless a limit was given.
    fn given(&self) -> Value {
        if self.quota_bytes.is_none() && self.quota_inodes.is_none() {
            Value::Null
        } else {
            self.json()
        }
    }
}

fn workspace_rows(list: &[Value]) {
    let rows = list
        .iter()
        .map(|w| {
            let p = &w["persistence"];
            vec![
                s(&w["name"]),
                s(&w["id"]),
                s(&w["session_type"]),
                s(&w["status"]),
                if w["template"] == true { "yes" } else { "no" }.into(),
                s(&p["files"]),
                human_bytes(p["logical_bytes"].as_u64().unwrap_or(0)),
                s(&p["snapshot_count"]),
                s(&w["active_session_id"]),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "ID",
            "TYPE",
            "STATUS",
            "TEMPLATE",
            "FILES",
            "SIZE",
            "SNAPSHOTS",
            "SESSION",
        ],
        rows,
    );
}

pub(super) fn workspace_detail(w: &Value) {
    workspace_rows(std::slice::from_ref(w));
    let limit = |v: &Value| v.as_u64().map_or("none".to_string(), |n| n.to_string());
    let q = &w["quota"];
    if !q["bytes"].is_null() || !q["inodes"].is_null() {
        println!(
            "quota: {} bytes, {} inodes",
            limit(&q["bytes"]),
            limit(&q["inodes"])
        );
    }
    if let Some(e) = w["import_error"].as_str() {
        println!("import error: {e}");
    }
}

pub fn run(opts: ClientOpts, cmd: WorkspacesCmd) -> anyhow::Result<()> {
    let c = Client::new(opts);
    match cmd {
        WorkspacesCmd::Create {
            session_type,
            name,
            image,
            template,
            quota,
        } => {
            let body = json!({"session_type": session_type, "name": name, "image": image,
                              "template": template, "quota": quota.given()});
            let w = c.call("POST", "/v1/workspaces", Some(body))?;
            c.print(&w, workspace_detail);
        }
        WorkspacesCmd::List { templates } => {
            let filter = if templates { "&template=true" } else { "" };
            let all = c.all_pages(&format!("/v1/workspaces?limit=1000{filter}"), "workspaces")?;
            c.print(&json!({"workspaces": all}), |_| workspace_rows(&all));
        }
        WorkspacesCmd::Get { workspace } => {
            let w = c.call("GET", &format!("/v1/workspaces/{}", seg(&workspace)), None)?;
            c.print(&w, workspace_detail);
        }
        WorkspacesCmd::Clone {
            source,
            name,
            template,
            quota,
        } => {
            let body = json!({"clone_from": source, "name": name, "template": template,
                              "quota": quota.given()});
            let w = c.call("POST", "/v1/workspaces", Some(body))?;
            c.print(&w, workspace_detail);
        }
        WorkspacesCmd::Fork {
            source,
            count,
            name,
            template,
            quota,
        } => {
            let path = format!("/v1/workspaces/{}/clone", seg(&source));
            let body = json!({"count": count, "name": name, "template": template,
                              "quota": quota.given()});
            let forks = c.call("POST", &path, Some(body))?;
            let list = forks["workspaces"].as_array().cloned().unwrap_or_default();
            c.print(&forks, |_| workspace_rows(&list));
        }
        WorkspacesCmd::Diff {
            workspace,
            from,
            to,
        } => diff(&c, workspace, from, to)?,
        WorkspacesCmd::Quota { workspace, quota } => {
            let path = format!("/v1/workspaces/{}/quota", seg(&workspace));
            let w = c.call("PUT", &path, Some(quota.json()))?;
            c.print(&w, workspace_detail);
        }
        WorkspacesCmd::Rename {
            workspace,
            name,
            clear: _,
        } => {
            let path = format!("/v1/workspaces/{}/name", seg(&workspace));
            let w = c.call("PUT", &path, Some(json!({ "name": name })))?;
            c.print(&w, workspace_detail);
        }
        WorkspacesCmd::Template { workspace, mode } => {
            let path = format!("/v1/workspaces/{}/template", seg(&workspace));
            let w = c.call("PUT", &path, Some(json!({"template": mode == "on"})))?;
            c.print(&w, workspace_detail);
        }
        WorkspacesCmd::Delete { workspaces, force } => delete(&c, workspaces, force)?,
        WorkspacesCmd::Export {
            workspace,
            file,
            snapshot,
        } => export(&c, workspace, file, snapshot)?,
        WorkspacesCmd::ImportArchive {
            file,
            name,
            session_type,
            image,
            template,
        } => import_archive(&c, file, name, session_type, image, template)?,
        WorkspacesCmd::Import {
            repo,
            name,
            no_wait,
        } => import(&c, repo, name, no_wait)?,
    }
    Ok(())
}

/// Every page of a diff: lines as they come, or one JSON document of all the changes.
fn diff(c: &Client, workspace: String, from: String, to: String) -> anyhow::Result<()> {
    let path = format!(
        "/v1/workspaces/{}/diff?from={}&to={}&limit=100000",
        seg(&workspace),
        seg(&from),
        seg(&to)
    );
    let mut all: Option<Value> = None;
    let mut cursor = String::new();
    loop {
        let mut d = c.call("GET", &format!("{path}&cursor={cursor}"), None)?;
        let next = d["next_cursor"].as_str().map(str::to_string);
        if c.opts.json {
            let changes = d["changes"].take();
            let doc = all.get_or_insert_with(|| {
                d["changes"] = Value::Array(Vec::new());
                d["truncated"] = false.into();
                d["next_cursor"] = Value::Null;
                d
            });
            if let (Some(to), Value::Array(more)) = (doc["changes"].as_array_mut(), changes) {
                to.extend(more);
            }
        } else {
            for ch in d["changes"].as_array().into_iter().flatten() {
                let mark = match ch["change"].as_str() {
                    Some("added") => "+",
                    Some("removed") => "-",
                    _ => "M",
                };
                println!("{mark} {}", s(&ch["path"]));
            }
        }
        match next {
            Some(n) => cursor = n,
            None => break,
        }
    }
    if let Some(doc) = all {
        println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
    }
    Ok(())
}

/// One workspace: one call; several: one bulk delete, failing unless every one was deleted.
fn delete(c: &Client, workspaces: Vec<String>, force: bool) -> anyhow::Result<()> {
    if let [one] = workspaces.as_slice() {
        let path = format!("/v1/workspaces/{}?force={force}", seg(one));
        c.call("DELETE", &path, None)?;
        c.print(&json!({"deleted": one}), |_| println!("deleted {one}"));
    } else {
        let body = json!({"workspace_ids": workspaces, "force": force});
        let r = c.call("POST", "/v1/workspaces/bulk-delete", Some(body))?;
        let results = r["results"].as_array().cloned().unwrap_or_default();
        c.print(&r, |_| {
            let rows = results
                .iter()
                .map(|x| {
                    vec![
                        s(&x["workspace"]),
                        s(&x["status"]),
                        s(&x["error"]["message"]),
                    ]
                })
                .collect();
            table(&["WORKSPACE", "RESULT", "REASON"], rows);
        });
        if results.iter().any(|x| x["status"] != "deleted") {
            bail!("not every workspace was deleted");
        }
    }
    Ok(())
}

/// Writes the workspace's last commit, or a snapshot, to `file` (`-`: stdout).
fn export(
    c: &Client,
    workspace: String,
    file: String,
    snapshot: Option<String>,
) -> anyhow::Result<()> {
    let zst = file.ends_with(".zst");
    let mut path = format!(
        "/v1/workspaces/{}/archive?format={}",
        seg(&workspace),
        if zst { "tar.zst" } else { "tar" }
    );
    if let Some(snap) = &snapshot {
        path += &format!("&snapshot={}", seg(snap));
    }
    let bytes = if file == "-" {
        c.download(&path, &mut std::io::stdout().lock())?
    } else {
        // Into a temporary name, so a cut transfer never leaves a short FILE.
        let part = format!("{file}.part");
        let mut out = std::fs::File::create(&part).with_context(|| format!("creating {part}"))?;
        let n = c.download(&path, &mut out).inspect_err(|_| {
            let _ = std::fs::remove_file(&part);
        })?;
        out.sync_all()?;
        std::fs::rename(&part, &file)?;
        n
    };
    if file != "-" {
        c.print(&json!({"file": file, "bytes": bytes}), |_| {
            println!("wrote {file} ({})", human_bytes(bytes))
        });
    }
    Ok(())
}

/// A new workspace from a tar or tar.zst file.
fn import_archive(
    c: &Client,
    file: std::path::PathBuf,
    name: Option<String>,
    session_type: Option<String>,
    image: Option<String>,
    template: bool,
) -> anyhow::Result<()> {
    let mut query = Vec::new();
    for (k, v) in [
        ("name", name),
        ("session_type", session_type),
        ("image", image),
    ] {
        if let Some(v) = v {
            query.push(format!("{k}={}", seg(&v)));
        }
    }
    if template {
        query.push("template=true".into());
    }
    let zst = file.extension().is_some_and(|e| e == "zst");
    let media = if zst {
        "application/zstd"
    } else {
        "application/x-tar"
    };
    let path = format!("/v1/workspaces/import?{}", query.join("&"));
    let w = c.upload(&path, media, &file)?;
    c.print(&w, workspace_detail);
    Ok(())
}

/// Imports a GitHub repository, showing progress until it is ready (unless `no_wait`).
fn import(c: &Client, repo: String, name: Option<String>, no_wait: bool) -> anyhow::Result<()> {
    let body = json!({"github_repo": repo, "name": name});
    let mut w = c.call("POST", "/v1/workspaces/import", Some(body))?;
    let id = s(&w["id"]);
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    while !no_wait && w["status"] == "importing" {
        if tty {
            eprint!(
                "\rimporting {repo} into {} ... {:.0}s",
                s(&w["name"]),
                started.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
        w = c.call("GET", &format!("/v1/workspaces/{id}"), None)?;
    }
    if tty && !no_wait {
        eprintln!(
            "\rimported {repo}: {} in {:.1}s          ",
            s(&w["status"]),
            started.elapsed().as_secs_f64()
        );
    }
    c.print(&w, workspace_detail);
    if w["status"] == "failed" {
        bail!("import failed: {}", s(&w["import_error"]));
    }
    Ok(())
}
