//! `chaserfs sessions` and `chaserfs mount`: starting, listing and ending sessions over the
//! API; `mount` holds one open until Ctrl-C.

use clap::Subcommand;
use serde_json::{json, Value};

use super::{s, seg, table, Client, ClientOpts};

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
    /// Sessions, oldest first; every host's in a cluster.
    List {
        /// Only sessions in this status (`active`, `ended`, `commit_failed`).
        #[arg(long)]
        status: Option<String>,
        /// Only this workspace's sessions (name or id).
        #[arg(long)]
        workspace: Option<String>,
        /// Cluster mode: only the sessions this host serves.
        #[arg(long)]
        host: Option<String>,
    },
    /// Commit, unmount and end a session: by its id, or a workspace's (name or id) active one.
    End {
        #[arg(value_name = "SESSION_OR_WORKSPACE")]
        target: String,
    },
    /// The operator's view: every account's sessions, with their accounts (an account the
    /// accounts file makes `operator = true`).
    All {
        /// Only this account's sessions.
        #[arg(long)]
        account: Option<String>,
        /// Only sessions in this status (`active`, `ended`, `commit_failed`).
        #[arg(long)]
        status: Option<String>,
        /// Only sessions of this workspace (its id).
        #[arg(long)]
        workspace_id: Option<String>,
        /// Cluster mode: only the sessions this host serves.
        #[arg(long)]
        host: Option<String>,
    },
}

pub fn run(opts: ClientOpts, cmd: SessionsCmd) -> anyhow::Result<()> {
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
        SessionsCmd::List {
            status,
            workspace,
            host,
        } => {
            let mut query = String::from("/v1/sessions?limit=1000");
            for (k, v) in [("status", status), ("workspace", workspace), ("host", host)] {
                if let Some(v) = v {
                    query += &format!("&{k}={}", seg(&v));
                }
            }
            let list = c.all_pages(&query, "sessions")?;
            c.print(&json!({"sessions": list}), |_| session_rows(&list));
        }
        SessionsCmd::All {
            account,
            status,
            workspace_id,
            host,
        } => {
            let mut query = String::from("/v1/admin/sessions?limit=1000");
            let filters = [
                ("account", account),
                ("status", status),
                ("workspace_id", workspace_id),
                ("host", host),
            ];
            for (k, v) in filters {
                if let Some(v) = v {
                    query += &format!("&{k}={}", seg(&v));
                }
            }
            let list = c.all_pages(&query, "sessions")?;
            c.print(&json!({"sessions": list}), |_| {
                let accounts: Vec<String> = list.iter().map(|x| s(&x["account"])).collect();
                session_table(&list, Some(&accounts))
            });
        }
        SessionsCmd::End { target } => {
            let id = session_of(&c, &target)?;
            let sess = c.call("DELETE", &format!("/v1/sessions/{}", seg(&id)), None)?;
            c.print(&sess, |v| session_rows(std::slice::from_ref(v)));
        }
    }
    Ok(())
}

/// The session `target` names: a session id, or else a workspace's active session.
fn session_of(c: &Client, target: &str) -> anyhow::Result<String> {
    if let Ok(sess) = c.call("GET", &format!("/v1/sessions/{}", seg(target)), None) {
        return Ok(s(&sess["id"]));
    }
    let ws = c
        .call("GET", &format!("/v1/workspaces/{}", seg(target)), None)
        .map_err(|e| anyhow::anyhow!("no session or workspace {target}: {e:#}"))?;
    match ws["active_session_id"].as_str() {
        Some(id) => Ok(id.to_string()),
        None => anyhow::bail!("workspace {target} has no active session"),
    }
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
    rt.block_on(crate::signal::shutdown_signal());
    let ended = c.call("DELETE", &format!("/v1/sessions/{id}"), None)?;
    if c.opts.json {
        println!("{}", serde_json::to_string(&ended)?);
    } else {
        println!("session {id} ended; {workspace} committed and unmounted");
    }
    Ok(())
}

fn session_rows(list: &[Value]) {
    session_table(list, None)
}

/// Sessions as a table; with an ACCOUNT column first when `accounts` are given.
fn session_table(list: &[Value], accounts: Option<&[String]>) {
    let rows = list
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let account = accounts.map(|a| a[i].clone());
            account
                .into_iter()
                .chain([
                    s(&x["id"]),
                    s(&x["workspace_id"]),
                    s(&x["mountpoint"]),
                    s(&x["status"]),
                    s(&x["host"]),
                    s(&x["created_at"]),
                    s(&x["ended_at"]),
                ])
                .collect()
        })
        .collect();
    let headers = [
        "ID",
        "WORKSPACE",
        "MOUNTPOINT",
        "STATUS",
        "HOST",
        "STARTED",
        "ENDED",
    ];
    let headers: Vec<&str> = accounts
        .map(|_| "ACCOUNT")
        .into_iter()
        .chain(headers)
        .collect();
    table(&headers, rows);
}
