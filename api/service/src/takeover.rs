//! Graceful takeover: a new daemon takes every mounted session over from the running one
//! without unmounting anything (as EdenFS does). The old daemon stops serving HTTP (its
//! listening sockets stay open, so connections wait in the backlog), stops its sessions'
//! FUSE readers (requests wait in the kernel), commits each workspace durably, closes the
//! store, and passes the listening sockets and each session's `/dev/fuse` descriptor
//! (`SCM_RIGHTS`), with the kernel's inode references, over `DATA_DIR/takeover.sock`. The
//! new daemon opens the store and readies every session; only then does the old one exit.
//! All or nothing: until then the old daemon keeps its copies of every descriptor, and if
//! the new one fails at any step, the old one opens the store again and serves everything.
//!
//! The protocol, over a Unix stream socket; a frame is a 4-byte big-endian length and JSON:
//! 1. new → old: `chaserfs takeover 2\n`.
//! 2. old → new: a frame, [`Reply`]; with a handover, then its descriptors in messages of
//!    one byte and up to [`FDS_PER_MESSAGE`] descriptors each. The store is closed by then.
//! 3. new → old: a frame `{"ok": true}` once it has opened the store and readied every
//!    session, reading no request yet.
//! 4. old → new: a frame `{"done": true}`; the old daemon exits 0 and the new one starts
//!    serving. Without step 3 (the new daemon failed, or took longer than [`ADOPT_WAIT`]),
//!    the old one opens the store again once the new one has let go of it, and serves its
//!    sessions and HTTP again; a new daemon that gets no step 4 exits without serving.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chaserfs_engine::{Store, Workspace};
use chaserfs_fuse::adapter::{FuseAdapter, MountOptions};
use chaserfs_fuse::mount::{self, FuseMount, Prepared, Stopped};
use chaserfs_fuse::offer::KernelOffer;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::model::{SessionRecord, SessionStatus};
use crate::service::{Config, Mounted, Service};
use chaserfs_fuse::mount::session_config;

const REQUEST: &str = "chaserfs takeover 2\n";
const FDS_PER_MESSAGE: usize = 200;
/// How long either side waits for the other's next message.
const PEER_WAIT: Duration = Duration::from_secs(60);
/// How long the old daemon waits for the new one to open the store and ready every session.
const ADOPT_WAIT: Duration = Duration::from_secs(120);
/// How long a failed successor may keep the store before the old daemon kills it.
const SUCCESSOR_GRACE: Duration = Duration::from_secs(30);

/// Where a daemon listens for its successor.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("takeover.sock")
}

/// What the old daemon answers a takeover request.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Refused(String),
    Handover(Handover),
}

/// Everything a successor needs besides the store. Descriptors are named by their index in
/// the order they are sent.
#[derive(Serialize, Deserialize)]
pub struct Handover {
    pub pid: u32,
    pub api_listener: usize,
    pub metrics_listener: Option<usize>,
    pub sessions: Vec<HandedSession>,
}

#[derive(Serialize, Deserialize)]
pub struct HandedSession {
    pub id: Uuid,
    pub fd: usize,
    /// The kernel's references per inode: `(inode, lookups not yet forgotten)`.
    pub refs: Vec<(u64, u64)>,
    pub offer: KernelOffer,
}

/// The listening sockets a daemon serves HTTP on, handed over with the sessions.
pub struct Listeners {
    pub api: OwnedFd,
    pub metrics: Option<OwnedFd>,
}

/// Sessions a successor has readied but does not serve yet (see [`Service::serve_adopted`]).
pub struct Adopted(Vec<AdoptedSession>);

type AdoptedSession = (SessionRecord, Arc<Workspace>, Prepared);

impl Adopted {
    pub fn ids(&self) -> std::collections::HashSet<Uuid> {
        self.0.iter().map(|(rec, _, _)| rec.id).collect()
    }
}

/// A successor's takeover request, accepted on the socket; the old daemon answers it once
/// its HTTP server has stopped (see [`answer`]).
pub struct Request {
    conn: UnixStream,
    /// The successor's process, stopped if it keeps the store after a failed handover.
    peer: Option<i32>,
}

/// Accepts takeover requests on `DATA_DIR/takeover.sock` and passes each on to `serve`,
/// which must stop HTTP and call [`answer`].
pub fn listen(
    data_dir: &Path,
    requests: tokio::sync::mpsc::Sender<Request>,
) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let path = socket_path(data_dir);
    // A socket left by an earlier daemon: this one holds the store, so that one is gone.
    let _ = std::fs::remove_file(&path);
    // Bound inside a fresh root-only directory and made 0600 before it is moved into place,
    // so no other user can ever reach it.
    let private = data_dir.join(format!(".takeover-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let bound = private.join("sock");
    let listener = std::os::unix::net::UnixListener::bind(&bound);
    let listener = listener.and_then(|l| {
        std::fs::set_permissions(&bound, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&bound, &path)?;
        Ok(l)
    });
    let _ = std::fs::remove_dir_all(&private);
    let listener = listener?;
    let me = nix::unistd::geteuid().as_raw();
    std::thread::Builder::new()
        .name("takeover".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut conn = conn;
                // Only a process of the daemon's own user may take its sessions.
                let peer =
                    nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials);
                if peer.as_ref().map(|c| c.uid()) != Ok(me) {
                    let why = "takeover requests are taken from the daemon's own user only";
                    let _ = write_frame(&mut conn, &Reply::Refused(why.into()));
                    continue;
                }
                let _ = conn.set_read_timeout(Some(PEER_WAIT));
                let mut line = String::new();
                // One short line: a longer one is not a request.
                let ok = BufReader::new((&conn).take(REQUEST.len() as u64 + 1))
                    .read_line(&mut line)
                    .is_ok();
                if !ok || line != REQUEST {
                    let why = format!("unknown takeover request {:?}", line.trim_end());
                    let _ = write_frame(&mut conn, &Reply::Refused(why));
                    continue;
                }
                let peer = peer.ok().map(|c| c.pid());
                if requests.blocking_send(Request { conn, peer }).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}

/// Refuses a takeover request.
pub fn refuse(req: Request, why: &str) {
    let mut conn = req.conn;
    let _ = write_frame(&mut conn, &Reply::Refused(why.to_string()));
}

/// Answers a takeover request: refuses it if the service cannot hand over, or stops every
/// session and hands them over. Ok means the successor has everything and this process
/// must exit now, without unmounting; on an error, sessions are served here again and the
/// caller serves HTTP again.
pub fn answer(svc: &Service, req: Request, listeners: &Listeners) -> Result<(), String> {
    let mut conn = req.conn;
    if let Err(why) = svc.can_hand_over() {
        let _ = write_frame(&mut conn, &Reply::Refused(why.clone()));
        return Err(why);
    }
    svc.hand_over(req.peer, |sessions, session_fds| {
        let sent = send_handover(&mut conn, listeners, sessions, session_fds);
        if sent.is_err() {
            // The successor, if still there, must hear it is not taking over before this
            // daemon waits for the store it may hold.
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
        sent
    })
}

/// Sends the handover and its descriptors, and waits for the successor to ready every session.
fn send_handover(
    conn: &mut UnixStream,
    listeners: &Listeners,
    sessions: Vec<HandedSession>,
    session_fds: &[OwnedFd],
) -> Result<(), String> {
    let mut fds: Vec<RawFd> = vec![listeners.api.as_raw_fd()];
    let metrics_listener = listeners.metrics.as_ref().map(|m| {
        fds.push(m.as_raw_fd());
        1
    });
    let base = fds.len();
    let sessions = sessions
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            s.fd = base + i;
            s
        })
        .collect();
    fds.extend(session_fds.iter().map(|f| f.as_raw_fd()));
    let handover = Handover {
        pid: std::process::id(),
        api_listener: 0,
        metrics_listener,
        sessions,
    };
    write_frame(conn, &Reply::Handover(handover)).map_err(|e| e.to_string())?;
    for batch in fds.chunks(FDS_PER_MESSAGE) {
        mount::send_fds(&*conn, b"F", batch).map_err(|e| e.to_string())?;
    }
    conn.set_read_timeout(Some(ADOPT_WAIT))
        .map_err(|e| e.to_string())?;
    let ack: serde_json::Value =
        read_frame(conn).map_err(|e| format!("the successor did not ready the sessions: {e}"))?;
    if ack["ok"] != true {
        return Err(format!("the successor answered {ack}"));
    }
    write_frame(conn, &serde_json::json!({"done": true})).map_err(|e| e.to_string())
}

/// The new daemon's side: asks the daemon on `data_dir` to hand over, and returns what it
/// sent with the descriptors, and the connection, for [`acknowledge`] once every session is
/// ready. Dropping the connection instead gives everything back to the old daemon.
pub fn request(data_dir: &Path) -> Result<(Handover, Vec<OwnedFd>, UnixStream), String> {
    let path = socket_path(data_dir);
    let mut conn = UnixStream::connect(&path)
        .map_err(|e| format!("no daemon to take over at {}: {e}", path.display()))?;
    conn.set_read_timeout(Some(PEER_WAIT))
        .map_err(|e| e.to_string())?;
    conn.write_all(REQUEST.as_bytes())
        .map_err(|e| e.to_string())?;
    let handover = match read_frame::<Reply>(&mut conn).map_err(|e| e.to_string())? {
        Reply::Refused(why) => return Err(format!("the running daemon refused: {why}")),
        Reply::Handover(h) => h,
    };
    let wanted = 1 + handover.metrics_listener.map_or(0, |_| 1) + handover.sessions.len();
    let mut fds = Vec::with_capacity(wanted);
    while fds.len() < wanted {
        let mut byte = [0u8; 1];
        let (n, got) =
            mount::recv_fds(&conn, &mut byte, FDS_PER_MESSAGE).map_err(|e| e.to_string())?;
        if n == 0 || got.is_empty() {
            return Err("the running daemon stopped sending descriptors".into());
        }
        fds.extend(got);
    }
    Ok((handover, fds, conn))
}

/// Tells the old daemon every session is ready here, and waits for its word that it leaves
/// them to this process. An error means it kept them: this process must not serve them.
pub fn acknowledge(mut conn: UnixStream) -> Result<(), String> {
    write_frame(&mut conn, &serde_json::json!({"ok": true})).map_err(|e| e.to_string())?;
    let done: serde_json::Value =
        read_frame(&mut conn).map_err(|e| format!("the running daemon kept its sessions: {e}"))?;
    if done["done"] != true {
        return Err(format!("the running daemon answered {done}"));
    }
    Ok(())
}

fn write_frame(w: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    let body = serde_json::to_vec(value)?;
    w.write_all(&(body.len() as u32).to_be_bytes())?;
    w.write_all(&body)
}

fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    r.read_exact(&mut body)?;
    Ok(serde_json::from_slice(&body)?)
}

fn options(rec: &SessionRecord) -> MountOptions {
    MountOptions {
        xattrs: rec.xattrs,
        read_only: rec.snapshot_id.is_some(),
    }
}

/// Serves a stopped session again, in this process.
fn resume(mounts: &mut HashMap<Uuid, Mounted>, id: Uuid, s: Stopped, options: MountOptions) {
    let Some(m) = mounts.get_mut(&id) else {
        return;
    };
    let cfg = session_config();
    let adapter = FuseAdapter::new(m.ws.clone(), options);
    match FuseMount::prepare(adapter, s.device, &s.mountpoint, &cfg, s.offer)
        .and_then(Prepared::start)
    {
        Ok(f) => m.mount = Some(f),
        // Left unmounted: the periodic commit ends the session (see `commit_all`).
        Err(e) => tracing::error!("serving session {id} again: {e}"),
    }
}

impl Service {
    /// As [`Service::new`], readying the sessions a running daemon handed over instead of
    /// ending them; [`Service::serve_adopted`] serves them.
    pub fn taking_over(
        store: Arc<Store>,
        config: Config,
        keys: Vec<(String, blake3::Hash)>,
        handover: &Handover,
        fds: &mut [Option<std::os::fd::OwnedFd>],
    ) -> ApiResult<(Arc<Service>, Adopted)> {
        let svc = Self::load(store, config, keys)?;
        let adopted = svc.adopt(handover, fds)?;
        Ok((svc, adopted))
    }

    /// Why this daemon cannot hand over now, if it cannot.
    fn can_hand_over(&self) -> Result<(), String> {
        if self.store.is_cluster() {
            return Err("takeover is not supported for cluster hosts".into());
        }
        if self.imports.lock().iter().any(|t| !t.is_finished()) {
            return Err("an import is running; try again when it has ended".into());
        }
        // The store closes for the handover once every use of it has ended: a collection
        // would hold the sessions stopped for as long as it runs.
        if self.store.collecting() {
            return Err("a collection is running; try again when it has ended".into());
        }
        if let Some(why) = self.store.failure() {
            return Err(format!(
                "the store does not take writes ({why}); it is healing"
            ));
        }
        if let Some((id, _)) = self.mounts.lock().iter().find(|(_, m)| m.mount.is_none()) {
            return Err(format!(
                "session {id} ended but its final commit failed; it is retried periodically"
            ));
        }
        Ok(())
    }

    /// Stops every session's FUSE readers, commits each workspace durably, and calls `send`
    /// with what a successor needs. If anything fails, sessions are served here again. On
    /// success the sessions are gone from this service, their mounts left to the successor.
    fn hand_over(
        &self,
        successor: Option<i32>,
        send: impl FnOnce(Vec<HandedSession>, &[OwnedFd]) -> Result<(), String>,
    ) -> Result<(), String> {
        // Read before the mounts lock, which is taken after the index lock elsewhere.
        let opts: HashMap<Uuid, MountOptions> = {
            let ix = self.index.lock();
            ix.sessions
                .values()
                .filter(|s| s.status != SessionStatus::Ended)
                .map(|s| (s.id, options(s)))
                .collect()
        };
        let mut mounts = self.mounts.lock();
        let ids: Vec<Uuid> = mounts.keys().copied().collect();
        let fuse: Vec<FuseMount> = ids
            .iter()
            .filter_map(|id| mounts.get_mut(id).and_then(|m| m.mount.take()))
            .collect();
        let mut stopped = Vec::new();
        let mut failure = None;
        for (id, s) in ids.iter().zip(FuseMount::stop(fuse)) {
            match s {
                Ok(s) => stopped.push((*id, s)),
                // Not seen in practice: the stop only talks to a socket pair of its own. The
                // takeover is refused then, so the session's changes stay here (its mount
                // gone, the periodic commit ends it) instead of leaving with nobody.
                Err(e) => {
                    tracing::error!("stopping session {id}: {e}; it cannot be served");
                    failure = Some(format!("stopping session {id}: {e}"));
                }
            }
        }
        let mut handed = Vec::new();
        for (id, s) in stopped.iter().filter(|_| failure.is_none()) {
            let ws = &mounts[id].ws;
            if let Err(e) = ws.commit(true) {
                failure = Some(format!("committing session {id}: {e}"));
                break;
            }
            handed.push(HandedSession {
                id: *id,
                fd: 0,
                refs: ws.kernel_refs(),
                offer: s.offer,
            });
        }
        let fds: Vec<OwnedFd> = match stopped
            .iter()
            .map(|(_, s)| s.device.try_clone())
            .collect::<Result<_, _>>()
        {
            Ok(fds) => fds,
            Err(e) => {
                failure.get_or_insert(format!("copying a session's descriptor: {e}"));
                Vec::new()
            }
        };
        let result = match failure {
            Some(e) => Err(e),
            None => {
                // Every session is committed; the successor opens the store next.
                self.store.release();
                let sent = send(handed, &fds);
                if sent.is_err() {
                    self.reopen_store(successor);
                }
                sent
            }
        };
        match result {
            Ok(()) => {
                mounts.clear();
                // The successor holds the connections now; this process exits holding its
                // copies, which is harmless.
                std::mem::forget(stopped);
                Ok(())
            }
            Err(e) => {
                tracing::warn!("takeover failed ({e}); serving the sessions again");
                drop(fds);
                for (id, s) in stopped {
                    resume(
                        &mut mounts,
                        id,
                        s,
                        opts.get(&id).copied().unwrap_or_default(),
                    );
                }
                Err(e)
            }
        }
    }

    /// After a failed takeover: opens the store again, once the successor (which may hold it
    /// still, until it exits) has let go of it. A successor that still holds it after
    /// [`SUCCESSOR_GRACE`] (hung, stopped) is killed: the sessions are this daemon's again.
    fn reopen_store(&self, successor: Option<i32>) {
        let started = std::time::Instant::now();
        let mut next_warning = Duration::from_secs(10);
        let mut killed = false;
        loop {
            match self.store.reopen() {
                Ok(()) => return,
                Err(e) if started.elapsed() >= next_warning => {
                    tracing::warn!("the store is still held elsewhere after a takeover: {e}");
                    next_warning += Duration::from_secs(10);
                }
                Err(_) => {}
            }
            if let (Some(pid), false) = (successor, killed) {
                if started.elapsed() >= SUCCESSOR_GRACE {
                    tracing::warn!(
                        "killing process {pid}, the failed successor, which holds the store"
                    );
                    let pid = nix::unistd::Pid::from_raw(pid);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    killed = true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The new daemon's side: readies every handed session on its connection, all or
    /// nothing: an error leaves them all to the old daemon.
    pub(crate) fn adopt(
        &self,
        handover: &Handover,
        fds: &mut [Option<OwnedFd>],
    ) -> ApiResult<Adopted> {
        let mut ready = Vec::with_capacity(handover.sessions.len());
        for h in &handover.sessions {
            let device = fds
                .get_mut(h.fd)
                .and_then(Option::take)
                .ok_or_else(|| ApiError::internal("no descriptor"));
            let one = device.and_then(|d| self.adopt_one(h, d)).map_err(|e| {
                ApiError::internal(format!("taking over session {}: {}", h.id, e.message))
            })?;
            ready.push(one);
        }
        Ok(Adopted(ready))
    }

    /// Starts serving the sessions [`Service::adopt`] readied, once the old daemon has left
    /// them to this one, and ends any other session the records call active.
    pub fn serve_adopted(&self, adopted: Adopted) {
        // Only now: until the old daemon let go, nothing here may change what it will serve.
        if let Err(e) = self.recover(&adopted.ids()) {
            tracing::error!("ending sessions a previous run left: {}", e.message);
        }
        for (rec, ws, prepared) in adopted.0 {
            let mount = match prepared.start() {
                Ok(m) => Some(m),
                // Left unmounted: the periodic commit ends the session (see `commit_all`).
                Err(e) => {
                    tracing::error!("serving session {}: {e}", rec.id);
                    None
                }
            };
            self.mounts.lock().insert(rec.id, Mounted { ws, mount });
            tracing::info!(
                target: "chaserfs::session",
                session = %rec.id,
                workspace = %rec.workspace_id,
                mountpoint = %rec.mountpoint.display(),
                "session taken over"
            );
        }
    }

    fn adopt_one(&self, h: &HandedSession, device: OwnedFd) -> ApiResult<AdoptedSession> {
        let (rec, limits) = {
            let ix = self.index.lock();
            let rec = ix
                .sessions
                .get(&h.id)
                .filter(|s| s.status == SessionStatus::Active)
                .cloned()
                .ok_or_else(|| ApiError::internal("no active session record"))?;
            let limits = ix
                .workspaces
                .get(&rec.workspace_id)
                .map(|w| self.limits_of(&ix, w))
                .transpose()?;
            (rec, limits)
        };
        let ws = match rec.snapshot_id {
            Some(snap) => {
                let ws = Workspace::open_snapshot(self.store.clone(), snap)?;
                ws.inherit_refs(&h.refs);
                ws
            }
            None => {
                let ws = Workspace::open_referenced(self.store.clone(), rec.workspace_id, &h.refs)?;
                if let Some(limits) = limits {
                    ws.set_limits(limits);
                }
                ws
            }
        };
        let ws = Arc::new(ws);
        let cfg = session_config();
        let adapter = FuseAdapter::new(ws.clone(), options(&rec));
        let prepared = FuseMount::prepare(adapter, device, &rec.mountpoint, &cfg, h.offer)
            .map_err(|e| {
                ApiError::internal(format!("serving {}: {e}", rec.mountpoint.display()))
            })?;
        Ok((rec, ws, prepared))
    }
}
