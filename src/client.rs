//! The API client behind `chaserfs workspaces|snapshots|sessions|mount`: plain HTTP calls to
//! a running daemon, human tables by default and the API's JSON with `--json`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Args, Clone)]
pub struct ClientOpts {
    /// Base URL of the daemon's API.
    #[arg(
        long,
        env = "CHASER_API_URL",
        default_value = "http://127.0.0.1:7878",
        global = true
    )]
    pub(crate) api_url: String,
    /// API key (Bearer).
    #[arg(long, env = "CHASER_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

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

#[derive(Subcommand)]
pub enum SnapshotsCmd {
    /// Snapshot a workspace's committed state.
    Create {
        workspace: String,
        name: Option<String>,
        /// End an active session first.
        #[arg(long)]
        force: bool,
    },
    List {
        workspace: String,
    },
    /// Point a workspace back at a snapshot.
    Restore {
        workspace: String,
        snapshot: String,
        /// End an active session first.
        #[arg(long)]
        force: bool,
    },
    Delete {
        workspace: String,
        snapshot: String,
    },
}

#[derive(Subcommand)]
pub enum SessionsCmd {
    /// Mount a workspace at a path on the daemon's machine.
    Start {
        workspace: String,
        mountpoint: String,
        /// Serve extended attributes (off by default: each write costs an extra round trip).
        #[arg(long)]
        xattrs: bool,
        /// Mount this snapshot of the workspace instead, read-only.
        #[arg(long)]
        snapshot: Option<String>,
    },
    List,
    /// Commit, unmount and end a session.
    End {
        id: String,
    },
}

pub(crate) struct Client {
    pub(crate) opts: ClientOpts,
    agent: ureq::Agent,
}

/// Percent-encodes a path segment (names may hold spaces, '?', '#', ...).
pub(crate) fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Client {
    pub(crate) fn new(opts: ClientOpts) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Client { opts, agent }
    }

    /// Calls the API; a non-2xx answer becomes an error carrying its code and message.
    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.opts.api_url.trim_end_matches('/'));
        let auth = self.auth();
        let a = &self.agent;
        let resp = match (method, body) {
            ("GET", _) => a.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => a.delete(&url).header("Authorization", &auth).call(),
            ("POST", b) => a
                .post(&url)
                .header("Authorization", &auth)
                .send_json(b.unwrap_or(json!({}))),
            ("PUT", b) => a
                .put(&url)
                .header("Authorization", &auth)
                .send_json(b.unwrap_or(json!({}))),
            (m, _) => bail!("unsupported method {m}"),
        };
        Self::answer(resp.with_context(|| format!("calling {url}"))?)
    }

    /// Every item of a paged listing (`path` has a query already), following `next_cursor`.
    fn all_pages(&self, path: &str, field: &str) -> anyhow::Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = match &cursor {
                Some(c) => self.call("GET", &format!("{path}&cursor={c}"), None)?,
                None => self.call("GET", path, None)?,
            };
            all.extend(page[field].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return Ok(all),
            }
        }
    }

    /// Sends the file at `from` as the body, streamed.
    fn upload(&self, path: &str, media: &str, from: &std::path::Path) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.opts.api_url.trim_end_matches('/'));
        let mut file =
            std::fs::File::open(from).with_context(|| format!("opening {}", from.display()))?;
        let resp = self
            .agent
            .post(&url)
            .header("Authorization", &self.auth())
            .header("Content-Type", media)
            .send(ureq::SendBody::from_reader(&mut file))
            .with_context(|| format!("calling {url}"))?;
        Self::answer(resp)
    }

    /// Copies a 2xx answer's body into `to`, streamed; returns the bytes copied.
    fn download(&self, path: &str, to: &mut dyn std::io::Write) -> anyhow::Result<u64> {
        let url = format!("{}{path}", self.opts.api_url.trim_end_matches('/'));
        let mut resp = self
            .agent
            .get(&url)
            .header("Authorization", &self.auth())
            .call()
            .with_context(|| format!("calling {url}"))?;
        if !resp.status().is_success() {
            return Self::answer(resp).map(|_| 0);
        }
        let mut body = resp.body_mut().with_config().limit(u64::MAX).reader();
        std::io::copy(&mut body, to).context("reading the archive (cut off?)")
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.opts.api_key.as_deref().unwrap_or(""))
    }

    /// The answer's JSON; a non-2xx answer becomes an error carrying its code and message.
    fn answer(mut resp: ureq::http::Response<ureq::Body>) -> anyhow::Result<Value> {
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string()?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !(200..300).contains(&status) {
            let code = value["error"]["code"].as_str().unwrap_or("http_error");
            let msg = value["error"]["message"].as_str().unwrap_or("");
            bail!("{status} {code}: {msg}");
        }
        Ok(value)
    }

    fn print(&self, value: &Value, human: impl FnOnce(&Value)) {
        if self.opts.json {
            println!("{}", serde_json::to_string_pretty(value).expect("json"));
        } else {
            human(value);
        }
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints rows under headers, columns padded to their widest cell.
pub(crate) fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
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

fn workspace_detail(w: &Value) {
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

fn snapshot_rows(list: &[Value]) {
    let rows = list
        .iter()
        .map(|s_| {
            vec![
                s(&s_["name"]),
                s(&s_["id"]),
                s(&s_["files"]),
                human_bytes(s_["logical_bytes"].as_u64().unwrap_or(0)),
                s(&s_["created_at"]),
            ]
        })
        .collect();
    table(&["NAME", "ID", "FILES", "SIZE", "CREATED"], rows);
}

fn session_rows(list: &[Value]) {
    let rows = list
        .iter()
        .map(|x| {
            vec![
                s(&x["id"]),
                s(&x["workspace_id"]),
                s(&x["mountpoint"]),
                s(&x["status"]),
                s(&x["created_at"]),
                s(&x["ended_at"]),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "WORKSPACE",
            "MOUNTPOINT",
            "STATUS",
            "STARTED",
            "ENDED",
        ],
        rows,
    );
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

pub fn workspaces(opts: ClientOpts, cmd: WorkspacesCmd) -> anyhow::Result<()> {
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
        } => {
            let path = format!(
                "/v1/workspaces/{}/diff?from={}&to={}&limit=100000",
                seg(&workspace),
                seg(&from),
                seg(&to)
            );
            // Every page: lines as they come, or one JSON document of all the changes.
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
                    if let (Some(to), Value::Array(more)) = (doc["changes"].as_array_mut(), changes)
                    {
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
        }
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
        WorkspacesCmd::Delete { workspaces, force } => {
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
        }
        WorkspacesCmd::Export {
            workspace,
            file,
            snapshot,
        } => {
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
                let mut out =
                    std::fs::File::create(&part).with_context(|| format!("creating {part}"))?;
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
        }
        WorkspacesCmd::ImportArchive {
            file,
            name,
            session_type,
            image,
            template,
        } => {
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
        }
        WorkspacesCmd::Import {
            repo,
            name,
            no_wait,
        } => {
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
        }
    }
    Ok(())
}

pub fn snapshots(opts: ClientOpts, cmd: SnapshotsCmd) -> anyhow::Result<()> {
    let c = Client::new(opts);
    let base = |ws: &str| format!("/v1/workspaces/{}/snapshots", seg(ws));
    match cmd {
        SnapshotsCmd::Create {
            workspace,
            name,
            force,
        } => {
            let body = json!({"name": name, "force": force});
            let snap = c.call("POST", &base(&workspace), Some(body))?;
            c.print(&snap, |v| snapshot_rows(std::slice::from_ref(v)));
        }
        SnapshotsCmd::List { workspace } => {
            let r = c.call("GET", &base(&workspace), None)?;
            let list = r["snapshots"].as_array().cloned().unwrap_or_default();
            c.print(&r, |_| snapshot_rows(&list));
        }
        SnapshotsCmd::Restore {
            workspace,
            snapshot,
            force,
        } => {
            let path = format!("{}/{}/restore", base(&workspace), seg(&snapshot));
            let w = c.call("POST", &path, Some(json!({ "force": force })))?;
            c.print(&w, workspace_detail);
        }
        SnapshotsCmd::Delete {
            workspace,
            snapshot,
        } => {
            let path = format!("{}/{}", base(&workspace), seg(&snapshot));
            c.call("DELETE", &path, None)?;
            c.print(&json!({"deleted": snapshot}), |_| {
                println!("deleted snapshot {snapshot}")
            });
        }
    }
    Ok(())
}

pub fn sessions(opts: ClientOpts, cmd: SessionsCmd) -> anyhow::Result<()> {
    let c = Client::new(opts);
    match cmd {
        SessionsCmd::Start {
            workspace,
            mountpoint,
            xattrs,
            snapshot,
        } => {
            let body = json!({"workspace": workspace, "mountpoint": mountpoint, "xattrs": xattrs,
                              "snapshot": snapshot});
            let sess = c.call("POST", "/v1/sessions", Some(body))?;
            c.print(&sess, |v| session_rows(std::slice::from_ref(v)));
        }
        SessionsCmd::List => {
            let list = c.all_pages("/v1/sessions?limit=1000", "sessions")?;
            c.print(&json!({"sessions": list}), |_| session_rows(&list));
        }
        SessionsCmd::End { id } => {
            let sess = c.call("DELETE", &format!("/v1/sessions/{}", seg(&id)), None)?;
            c.print(&sess, |v| session_rows(std::slice::from_ref(v)));
        }
    }
    Ok(())
}

/// Starts a session at `path` and ends it (commit, unmount) on Ctrl-C or SIGTERM.
pub fn mount(
    opts: ClientOpts,
    workspace: String,
    path: String,
    xattrs: bool,
) -> anyhow::Result<()> {
    let c = Client::new(opts);
    let body = json!({"workspace": workspace, "mountpoint": path, "xattrs": xattrs});
    let sess = c.call("POST", "/v1/sessions", Some(body))?;
    let id = s(&sess["id"]);
    if c.opts.json {
        println!("{}", serde_json::to_string(&sess)?);
    } else {
        println!("mounted {workspace} at {path} (session {id}); Ctrl-C ends the session");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(crate::shutdown_signal());
    let ended = c.call("DELETE", &format!("/v1/sessions/{id}"), None)?;
    if c.opts.json {
        println!("{}", serde_json::to_string(&ended)?);
    } else {
        println!("session {id} ended; {workspace} committed and unmounted");
    }
    Ok(())
}
