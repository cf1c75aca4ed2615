//! `chaserfs snapshots`: create, list, restore and delete a workspace's snapshots over the
//! API.

use clap::Subcommand;
use serde_json::{json, Value};

use super::workspaces::workspace_detail;
use super::{human_bytes, s, seg, table, Client, ClientOpts};

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

pub fn run(opts: ClientOpts, cmd: SnapshotsCmd) -> anyhow::Result<()> {
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
