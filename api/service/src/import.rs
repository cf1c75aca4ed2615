//! Import from GitHub: a workspace created at once in status `importing`, then filled by the
//! real `git clone` into its mounted root (a working tree with its `.git`), and moved to
//! `ready`, or to `failed` with git's reason.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use base64::Engine;
use chaserfs_engine::{roots, Workspace};
use chaserfs_fuse::adapter::MountOptions;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::index::{put, WORKSPACE};
use crate::model::*;
use crate::names::check_image;
use crate::service::Service;

/// Checks `owner/repo` with GitHub's own character rules, so that nothing else (an option, a
/// URL, a path) can reach git's command line.
pub fn parse_github_repo(s: &str) -> ApiResult<(&str, &str)> {
    let bad = || {
        ApiError::bad(
            "invalid_github_repo",
            "github_repo is `owner/repo`: an owner of 1 to 39 letters, digits and inner \
             hyphens, and a repository of 1 to 100 letters, digits, '.', '-' and '_' \
             not starting with '.' or '-'",
        )
    };
    let (owner, repo) = s.split_once('/').ok_or_else(bad)?;
    let owner_ok = (1..=39).contains(&owner.len())
        && owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !owner.starts_with('-')
        && !owner.ends_with('-');
    let repo_ok = (1..=100).contains(&repo.len())
        && repo
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !repo.starts_with('.')
        && !repo.starts_with('-');
    if owner_ok && repo_ok {
        Ok((owner, repo))
    } else {
        Err(bad())
    }
}

impl Service {
    /// Beneath the mount root's root-only imports directory, which no session may enter.
    pub(crate) fn import_mountpoint(&self, id: Uuid) -> PathBuf {
        self.config
            .mount_root
            .join(crate::mountpoint::IMPORTS_DIR)
            .join(id.to_string())
    }

    /// Creates the workspace in status `importing` and starts the clone in the background.
    pub fn import_workspace(
        self: &Arc<Self>,
        account: &str,
        req: ImportWorkspace,
    ) -> ApiResult<WorkspaceView> {
        let (owner, repo) = parse_github_repo(&req.github_repo)?;
        let url = format!(
            "{}/{owner}/{repo}",
            self.config.github_url.trim_end_matches('/')
        );
        let session_type = req.session_type.unwrap_or(SessionType::Sandbox);
        check_image(&req.image, session_type)?;
        self.check_quota(account, req.quota.as_ref())?;
        let rec = {
            let mut ix = self.lock();
            self.check_room(&ix, account, 1, 0)?;
            // A GitHub import mounts the workspace while git runs: it counts as a session.
            self.check_session_room(&ix, account, true)?;
            let name = match req.name {
                Some(n) => ix.name_for(account, Some(n))?,
                None => ix.pick_name(account, Some(repo.trim_end_matches(".git"))),
            };
            let rec = WorkspaceRecord {
                status: WorkspaceStatus::Importing,
                github_repo: Some(req.github_repo.clone()),
                quota: req.quota.unwrap_or_default(),
                ..WorkspaceRecord::new(account, name, session_type, req.image, req.template)
            };
            let id = rec.id;
            roots::create_workspace(&self.store, id, &[put(WORKSPACE, id, &rec)])?;
            ix.put_workspace(rec.clone());
            rec
        };
        let svc = self.clone();
        let id = rec.id;
        let token = self.policy(account).github_token.clone();
        let thread = std::thread::Builder::new()
            .name(format!("import-{id}"))
            .spawn(move || svc.run_import(id, &url, token.as_deref()))
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let mut imports = self.imports.lock();
        imports.retain(|t| !t.is_finished());
        imports.push(thread);
        drop(imports);
        self.view(&rec, 0)
    }

    fn run_import(&self, id: Uuid, url: &str, token: Option<&str>) {
        let started = std::time::Instant::now();
        let outcome = self.clone_into(id, url, token);
        let took = started.elapsed();
        let result = if outcome.is_ok() { "ready" } else { "failed" };
        metrics::histogram!(crate::metrics::IMPORT_SECONDS, "result" => result)
            .record(took.as_secs_f64());
        match &outcome {
            Ok(()) => tracing::info!("import of {url} into {id} done in {took:?}"),
            Err(e) => tracing::warn!("import of {url} into {id} failed after {took:?}: {e}"),
        }
        let mut ix = self.lock();
        // Deletes are refused while importing, so the record is still there.
        let Some(mut rec) = ix.workspaces.get(&id).cloned() else {
            return;
        };
        match outcome {
            Ok(()) => rec.status = WorkspaceStatus::Ready,
            Err(reason) => {
                rec.status = WorkspaceStatus::Failed;
                rec.import_error = Some(reason);
            }
        }
        rec.updated_at = now();
        match self.store.meta_write(&[put(WORKSPACE, id, &rec)]) {
            Ok(()) => ix.put_workspace(rec),
            Err(e) => tracing::error!("recording the import of {id}: {e}"),
        }
    }

    /// Mounts the workspace privately, runs `git clone` into it, unmounts and commits.
    fn clone_into(&self, id: Uuid, url: &str, token: Option<&str>) -> Result<(), String> {
        let path = self.import_mountpoint(id);
        let rel = path.strip_prefix(&self.config.mount_root).expect("beneath");
        let (dir, made) = crate::mountpoint::open_beneath(&self.config.mount_root, rel, 0o700)
            .map_err(|e| format!("import mountpoint: {}", e.message))?;
        let at = crate::mountpoint::Mountpoint {
            dir,
            path: path.clone(),
            made,
        };
        let ws = Arc::new(Workspace::open(self.store.clone(), id).map_err(|e| e.to_string())?);
        {
            let ix = self.lock();
            if let Some(rec) = ix.workspaces.get(&id) {
                ws.set_limits(self.limits_of(&ix, rec).map_err(|e| e.message)?);
            }
        }
        let mount = self
            .mount(ws.clone(), &at, MountOptions::default())
            .map_err(|e| e.message.clone())?;
        let cloned = self.git_clone(url, token, &path, &ws);
        if let Err(e) = mount.umount_and_join() {
            tracing::warn!("unmounting {}: {e}; detaching", path.display());
            crate::sessions::detach(&path);
        }
        let committed = ws.commit(true).map_err(|e| e.to_string());
        drop(ws);
        let _ = std::fs::remove_dir(&path);
        cloned.and(committed.map(|_| ()))
    }

    /// Runs git until it exits, committing the workspace every commit interval meanwhile so
    /// a large import's overlay stays bounded. git sees none of the daemon's environment
    /// (its cloud credentials included) and no user or system git config; the account's token
    /// is sent to the GitHub base URL only, never to a host a redirect names.
    fn git_clone(
        &self,
        url: &str,
        token: Option<&str>,
        into: &std::path::Path,
        ws: &Workspace,
    ) -> Result<(), String> {
        let mut git = Command::new("git");
        git.args(["clone", "--quiet", "--no-local", "--"])
            .arg(url)
            .arg(into)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", "/nonexistent")
            .env("LC_ALL", "C")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            // Never wait for a password; give up on a stalled transfer.
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .env("GIT_HTTP_LOW_SPEED_LIMIT", "1000")
            .env("GIT_HTTP_LOW_SPEED_TIME", "60");
        // The operator's proxy and CA settings are not secrets, and a host may need them.
        for (k, v) in std::env::vars_os() {
            let name = k.to_string_lossy().to_ascii_lowercase();
            if matches!(
                name.as_str(),
                "http_proxy"
                    | "https_proxy"
                    | "no_proxy"
                    | "ssl_cert_file"
                    | "ssl_cert_dir"
                    | "git_ssl_cainfo"
            ) {
                git.env(k, v);
            }
        }
        if let Some(token) = token {
            // In git's environment, not its arguments: other users can read arguments in /proc.
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
            let scope = format!(
                "http.{}/.extraHeader",
                self.config.github_url.trim_end_matches('/')
            );
            git.env("GIT_CONFIG_COUNT", "1")
                .env("GIT_CONFIG_KEY_0", scope)
                .env(
                    "GIT_CONFIG_VALUE_0",
                    format!("Authorization: Basic {basic}"),
                );
        }
        let mut child = git.spawn().map_err(|e| format!("running git: {e}"))?;
        // Read stderr on the side so a chatty git never blocks on a full pipe.
        let mut stderr = child.stderr.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        let mut last_commit = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                break status;
            }
            if last_commit.elapsed() >= self.config.commit_interval {
                if let Err(e) = ws.commit(false) {
                    tracing::warn!("periodic commit of import {}: {e}", ws.id());
                }
                last_commit = std::time::Instant::now();
            }
            if self.stopping.load(Ordering::SeqCst) {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the daemon stopped while the import ran".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let stderr = reader.join().unwrap_or_default();
        if status.success() {
            return Ok(());
        }
        let mut reason = stderr.trim().to_string();
        if let Some(token) = token {
            reason = reason.replace(token, "***");
        }
        if reason.len() > 1000 {
            let mut cut = 1000;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        Err(format!("git clone failed ({status}): {reason}"))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_github_repo;

    #[test]
    fn github_repo_selectors() {
        for ok in [
            "octocat/Hello-World",
            "a/b",
            "rust-lang/rust.vim",
            "x-1/y_z.git",
        ] {
            assert!(parse_github_repo(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "owner",
            "owner/",
            "/repo",
            "a/b/c",
            "-o/repo",
            "owner-/repo",
            "owner/-repo",
            "owner/.repo",
            "owner/..",
            "own er/repo",
            "owner/re po",
            "https://evil.example/x",
            "owner/repo?x=1",
            "owner/repo#x",
            "--upload-pack=touch/x",
            "owner/repo\n",
            "ow\u{e9}ner/repo",
            &format!("{}/r", "o".repeat(40)),
            &format!("o/{}", "r".repeat(101)),
        ] {
            assert!(parse_github_repo(bad).is_err(), "{bad:?}");
        }
    }
}
