//! `chaserfs serve`, the daemon: it opens the store (or joins a cluster), loads the API keys
//! and accounts, binds its listeners or takes them and every session over from a running
//! daemon, then serves HTTP until SIGTERM (committing and unmounting every session) or until
//! a successor takes over.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chaserfs_cluster::Cluster;
use chaserfs_engine::Store;
use chaserfs_http::listener;
use chaserfs_service::accounts::Accounts;
use chaserfs_service::service::{Config, Service};
use chaserfs_service::takeover;
use tokio::sync::mpsc::Receiver;

use crate::keys::load_keys;
use crate::store::Joined;
use crate::{ClusterArgs, ServeArgs};

/// How long SIGTERM waits for the requests being served before committing and unmounting.
const DRAIN_ON_STOP: Duration = Duration::from_secs(10);

/// How long a takeover waits for the requests being served to finish.
const DRAIN_WAIT: Duration = Duration::from_secs(30);

/// What a running daemon hands over: its sessions, their descriptors and its listening
/// sockets, and the connection this process acknowledges on once it has readied them.
type Inherited = (
    takeover::Handover,
    Vec<OwnedFd>,
    std::os::unix::net::UnixStream,
);

/// The API keys: (account, BLAKE3 of the key).
type Keys = Vec<(String, blake3::Hash)>;

/// A cluster host's store and cluster, for the figures logged at exit.
type Stats = Option<(Arc<Store>, Arc<Cluster>)>;

/// Starts the daemon, and serves until SIGTERM or until a successor takes over.
pub(crate) fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let ServeArgs {
        config: _,
        data_dir,
        listen,
        api_keys_file,
        accounts_file,
        mount_root,
        github_url,
        commit_interval,
        metrics_listen,
        takeover,
        max_connections,
        header_timeout,
        import_max_bytes,
        max_archive_streams,
        session_retention,
        trust,
        cluster,
    } = args;
    if takeover {
        // A stop or a reload sent to the service while this process takes over (it is the
        // main process from its MAINPID on) must not kill it before it serves: held until
        // its handlers are set (`serve_http`). First thing, before any thread starts (every
        // thread inherits the mask, and a signal goes to any thread not blocking it); child
        // processes start with an empty mask (std resets it).
        block_stop_signals();
    }
    let commit_interval = Duration::from_secs(commit_interval.max(1));
    raise_open_files_limit();
    let limits = listener::Limits {
        max_connections: max_connections.max(1),
        header_timeout: Duration::from_secs(header_timeout.max(1)),
    };
    chaserfs_http::metrics::install().map_err(|e| anyhow::anyhow!("metrics: {e}"))?;
    // Taking over: the running daemon hands over its sessions and sockets and closes the
    // store; it exits once this process has readied every session (see takeover.rs). Any
    // error before then returns them all to it.
    let started = Instant::now();
    let inherited = if takeover {
        if cluster.s3_endpoint.is_some() {
            bail!("--takeover is not supported for cluster hosts");
        }
        Some(takeover::request(&data_dir).map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    let (store, joined) = open_store(&cluster, &data_dir, &listen, takeover)?;
    if let Some((host, c)) = &joined {
        if api_keys_file.is_none() {
            bail!("a cluster host needs --api-keys-file: every host serves the same keys");
        }
        start_cluster_host(&cluster, host, &store, c)?;
    }
    let stats = joined.as_ref().map(|(_, c)| (store.clone(), c.clone()));
    let host = joined.map(|(h, _)| h);
    let data_dir = data_dir.canonicalize()?;
    make_mount_root(&mount_root)?;
    let keys = load_keys(&data_dir, api_keys_file.as_deref())?;
    let accounts = load_accounts(accounts_file.as_deref(), api_keys_file.is_none())?;
    let config = Config {
        data_dir: data_dir.clone(),
        mount_root: mount_root.canonicalize()?,
        commit_interval,
        github_url,
        accounts,
        host,
        trust: chaserfs_service::service::Trust {
            suid: trust.insecure_suid,
            dev: trust.insecure_dev,
            privileged_xattrs: trust.insecure_privileged_xattrs,
        },
        import_max_bytes,
        max_archive_streams,
    };
    let (svc, listeners) = match inherited {
        None => start(store, config, keys, &listen, metrics_listen.as_deref())?,
        Some(inherited) => take_over(store, config, keys, inherited, started)?,
    };
    run_daemon(svc, listeners, data_dir, limits, session_retention, stats)
}

/// Opens the store; when taking over, as soon as the old daemon's exit has released it.
fn open_store(
    cluster: &ClusterArgs,
    data_dir: &Path,
    listen: &str,
    takeover: bool,
) -> anyhow::Result<(Arc<Store>, Option<Joined>)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match cluster.open_store(data_dir, listen) {
            Err(e) if takeover && std::time::Instant::now() < deadline => {
                tracing::debug!("store not free yet: {e:#}");
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// A cluster host's own work: its figures logged, and collections if it runs them.
fn start_cluster_host(
    cluster: &ClusterArgs,
    host: &str,
    store: &Arc<Store>,
    c: &Arc<Cluster>,
) -> anyhow::Result<()> {
    tracing::info!(
        "cluster host {host}: objects in {}, records in etcd, cache {} MiB",
        cluster.s3_endpoint.as_deref().unwrap_or(""),
        cluster.cache_size >> 20
    );
    spawn_cluster_stats(store.clone(), c.clone());
    if cluster.gc_interval > 0 {
        spawn_cluster_gc(
            store.clone(),
            c.clone(),
            Duration::from_secs(cluster.gc_interval),
            Duration::from_secs(cluster.gc_grace),
        )?;
    }
    Ok(())
}

/// Creates the directory sessions mount below, and in it the one imports mount their new
/// workspace in, where no other local user may look.
fn make_mount_root(mount_root: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(mount_root)?;
    let imports = mount_root.join(chaserfs_service::mountpoint::IMPORTS_DIR);
    std::fs::create_dir_all(&imports)?;
    std::fs::set_permissions(
        &imports,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    Ok(())
}

/// The accounts and their limits. The operator's token serves every account only while the
/// operator's `default` is the only one (`shared`: no keys file); with a keys file, the
/// accounts file names who may use it.
fn load_accounts(file: Option<&Path>, shared: bool) -> anyhow::Result<Accounts> {
    Accounts::load(
        file,
        std::env::var("CHASER_GITHUB_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        shared,
    )
    .map_err(anyhow::Error::msg)
}

/// A fresh start: the service over the store, and the listeners bound anew.
fn start(
    store: Arc<Store>,
    config: Config,
    keys: Keys,
    listen: &str,
    metrics_listen: Option<&str>,
) -> anyhow::Result<(Arc<Service>, takeover::Listeners)> {
    let svc = Service::new(store, config, keys).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let bind = |addr: &str, what: &str| -> anyhow::Result<OwnedFd> {
        let l =
            std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}{what}"))?;
        Ok(l.into())
    };
    let listeners = takeover::Listeners {
        api: bind(listen, "")?,
        metrics: match metrics_listen {
            Some(addr) => Some(bind(addr, " (--metrics-listen)")?),
            None => None,
        },
    };
    Ok((svc, listeners))
}

/// Taking over: the service adopts the old daemon's sessions, and its listening sockets are
/// this daemon's.
fn take_over(
    store: Arc<Store>,
    config: Config,
    keys: Keys,
    (handover, fds, conn): Inherited,
    started: Instant,
) -> anyhow::Result<(Arc<Service>, takeover::Listeners)> {
    let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
    let api = fds[handover.api_listener].take().context("no API socket")?;
    let metrics = handover.metrics_listener.and_then(|i| fds[i].take());
    let (svc, adopted) = Service::taking_over(store, config, keys, &handover, &mut fds)
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    // Under systemd this process becomes the service's main one before the old one exits
    // (the unit says NotifyAccess=all). If systemd cannot be told, the takeover stops here:
    // it would take the old one's exit for the service's and stop this process. The old one
    // serves on (and says so) if this fails.
    crate::notify::send(&format!("MAINPID={}", std::process::id())).context(
        "telling systemd this process is the service's main one (MAINPID=); the running \
         daemon serves on",
    )?;
    takeover::acknowledge(conn).map_err(anyhow::Error::msg)?;
    svc.serve_adopted(adopted);
    tracing::info!(
        "took over {} sessions from process {} in {:.0} ms",
        handover.sessions.len(),
        handover.pid,
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok((svc, takeover::Listeners { api, metrics }))
}

/// Runs the daemon on its own runtime: the takeover socket, the committer, then HTTP until
/// SIGTERM (then the shutdown) or until a successor takes over (then the process exits).
fn run_daemon(
    svc: Arc<Service>,
    listeners: takeover::Listeners,
    data_dir: PathBuf,
    limits: listener::Limits,
    session_retention: Duration,
    stats: Stats,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (requests, mut successor) = tokio::sync::mpsc::channel(1);
        // A data dir that cannot hold a socket (some FUSE and network filesystems) costs
        // only the takeover, not the daemon.
        if let Err(e) = takeover::listen(&data_dir, requests) {
            tracing::warn!(
                "no takeover socket at {}: {e}; serve --takeover cannot replace this daemon",
                takeover::socket_path(&data_dir).display()
            );
        }
        spawn_committer(svc.clone(), session_retention)?;
        let app = router(&svc, &listeners, limits)?;
        let listeners = Arc::new(listeners);
        serve_http(&svc, &app, &listeners, limits, &mut successor).await?;
        shutdown(&svc, stats).await
    })
}

/// Commits every mounted workspace each commit interval, and forgets sessions that ended
/// longer ago than `session_retention`: on a thread of its own, never queued behind requests.
fn spawn_committer(committer: Arc<Service>, session_retention: Duration) -> anyhow::Result<()> {
    on_own_thread("commit", move || loop {
        std::thread::sleep(committer.config().commit_interval);
        committer.commit_all();
        match committer.prune_sessions(session_retention) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                "forgot {n} sessions that ended over {} ago",
                humantime::format_duration(session_retention)
            ),
            Err(e) => tracing::warn!("pruning ended sessions: {}", e.message),
        }
    })?;
    Ok(())
}

/// The API's routes; `GET /metrics` among them, or served on its own listener.
fn router(
    svc: &Arc<Service>,
    listeners: &takeover::Listeners,
    limits: listener::Limits,
) -> anyhow::Result<axum::Router> {
    let mut app = chaserfs_http::router(svc.clone());
    match &listeners.metrics {
        Some(fd) => {
            let metrics = tcp_listener(fd)?;
            tracing::info!("metrics on http://{}/metrics", metrics.local_addr()?);
            let routes = chaserfs_http::metrics_router(svc.clone());
            tokio::spawn(listener::serve(
                metrics,
                routes,
                limits,
                std::future::pending(),
            ));
        }
        None => app = app.merge(chaserfs_http::metrics_router(svc.clone())),
    }
    Ok(app)
}

/// Serves HTTP until SIGTERM, or until a successor takes over (asked by `serve --takeover`,
/// or started here at SIGHUP): then this process hands its sessions and sockets over and exits. A takeover refused (requests still running) or
/// failed serves again.
async fn serve_http(
    svc: &Arc<Service>,
    app: &axum::Router,
    listeners: &Arc<takeover::Listeners>,
    limits: listener::Limits,
    successor: &mut Receiver<takeover::Request>,
) -> anyhow::Result<()> {
    // Registered once, so a signal that comes while a takeover drains or hands over is kept
    // for the loop below (a refused or failed takeover serves on, then stops if asked).
    // SIGHUP (`systemctl reload`) starts a successor that takes over (`notify.rs`).
    use tokio::signal::unix::{signal, SignalKind};
    let mut reload = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // A successor blocked these until now (see `serve`): pending ones arrive here.
    unblock_stop_signals();
    loop {
        let listener = tcp_listener(&listeners.api)?;
        tracing::info!("listening on {}", listener.local_addr()?);
        eprintln!("chaserfs: listening on http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut server = tokio::spawn(listener::serve(listener, app.clone(), limits, async move {
            let _ = stopped.await;
        }));
        crate::notify::ready();
        // Without a takeover socket the channel is closed and only a signal ends this.
        let request = loop {
            tokio::select! {
                _ = term.recv() => break None,
                _ = int.recv() => break None,
                _ = reload.recv() => crate::notify::reload(),
                Some(r) = successor.recv() => break Some(r),
            }
        };
        let _ = stop.send(());
        let Some(request) = request else {
            crate::notify::notify("STOPPING=1");
            // Requests in flight get a while to finish; a client that holds its request
            // open longer does not hold up the commit of every session.
            match tokio::time::timeout(DRAIN_ON_STOP, &mut server).await {
                Ok(served) => served??,
                Err(_) => {
                    tracing::warn!(
                        "requests still running after {} s; stopping without them",
                        DRAIN_ON_STOP.as_secs()
                    );
                    server.abort();
                }
            }
            return Ok(());
        };
        // Requests being served finish first; new connections wait in the backlog.
        if tokio::time::timeout(DRAIN_WAIT, &mut server).await.is_err() {
            let why = format!("requests still running after {} s", DRAIN_WAIT.as_secs());
            tracing::warn!("takeover refused: {why}");
            takeover::refuse(request, &why);
            continue;
        }
        let (s, l) = (svc.clone(), listeners.clone());
        match tokio::task::spawn_blocking(move || takeover::answer(&s, request, &l)).await? {
            Ok(()) => {
                eprintln!("chaserfs: handed over to a successor");
                std::process::exit(0);
            }
            Err(e) => tracing::warn!("takeover failed: {e}; serving again"),
        }
    }
}

/// SIGTERM: commit every session durably and unmount before exiting 0.
async fn shutdown(svc: &Arc<Service>, stats: Stats) -> anyhow::Result<()> {
    let s: Arc<Service> = svc.clone();
    on_own_thread("shutdown", move || s.shutdown())?.await?;
    if let Some((store, cluster)) = stats {
        tracing::info!("{}", cluster_stats(&store, &cluster));
    }
    eprintln!("chaserfs: stopped");
    Ok(())
}

/// Raises the soft limit on open descriptors to the hard one: every session, connection and
/// RocksDB file takes one, and running out fails writes (the default soft limit is 1,024).
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("raising the open files limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("reading the open files limit: {e}"),
    }
}

/// Runs `work` on a thread of its own (inside the runtime's context); the receiver yields
/// once it has returned.
fn on_own_thread(
    name: &str,
    work: impl FnOnce() + Send + 'static,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<()>> {
    let (done, finished) = tokio::sync::oneshot::channel();
    let rt = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _rt = rt.enter();
            work();
            let _ = done.send(());
        })?;
    Ok(finished)
}

/// A tokio listener on another descriptor of `fd`'s socket: the socket outlives it.
fn tcp_listener(fd: &OwnedFd) -> anyhow::Result<tokio::net::TcpListener> {
    let l = std::net::TcpListener::from(fd.try_clone()?);
    l.set_nonblocking(true)?;
    Ok(tokio::net::TcpListener::from_std(l)?)
}

/// Logs the object traffic and cache figures every minute they changed.
fn spawn_cluster_stats(store: Arc<Store>, cluster: Arc<Cluster>) {
    std::thread::spawn(move || {
        let mut last = String::new();
        loop {
            std::thread::sleep(Duration::from_secs(60));
            let now = cluster_stats(&store, &cluster);
            if now != last {
                tracing::info!("{now}");
                last = now;
            }
        }
    });
}

/// A cluster host's object traffic and cache figures since start.
fn cluster_stats(store: &Store, cluster: &Cluster) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let s = &cluster.objects.stats;
    let c = store.cache_stats();
    // Reads that fetched for themselves; prefetched objects count as local.
    let reads = (c.hits + c.misses - c.prefetched).max(1);
    format!(
        "cluster objects: fetched {} in {} requests ({} MiB, {} ahead of reads), uploaded {} \
         in {} packs ({} MiB), {} chunks found in S3 already; {} objects indexed; cache {} of \
         {} MiB, {:.1}% of {} reads local",
        s.fetched.load(Relaxed),
        s.get_requests.load(Relaxed),
        s.fetched_bytes.load(Relaxed) >> 20,
        c.prefetched,
        s.uploaded.load(Relaxed),
        s.packs_uploaded.load(Relaxed),
        s.uploaded_bytes.load(Relaxed) >> 20,
        s.deduplicated.load(Relaxed),
        cluster.index.len(),
        c.bytes >> 20,
        c.limit >> 20,
        100.0 * c.hits as f64 / reads as f64,
        reads
    )
}

/// Every `interval`, one collection across the cluster, if no other host is collecting.
fn spawn_cluster_gc(
    store: Arc<Store>,
    cluster: Arc<Cluster>,
    interval: Duration,
    grace: Duration,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("cluster-gc".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            let started = std::time::Instant::now();
            match chaserfs_cluster::gc::collect(&store, &cluster, grace) {
                Ok(r) => {
                    chaserfs_service::metrics::record_gc(
                        started.elapsed(),
                        r.deleted_packs as u64,
                        r.freed_bytes,
                    );
                    tracing::info!("cluster gc: {r}")
                }
                Err(chaserfs_engine::FsError::Busy(_)) => {}
                Err(e) => tracing::error!("cluster gc: {e}"),
            }
        })?;
    Ok(())
}

/// SIGTERM, SIGINT and SIGHUP: what systemd or an operator sends the daemon.
fn stop_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    set
}

fn block_stop_signals() {
    if let Err(e) = stop_signals().thread_block() {
        tracing::warn!("blocking signals during the takeover: {e}");
    }
}

fn unblock_stop_signals() {
    if let Err(e) = stop_signals().thread_unblock() {
        tracing::warn!("unblocking signals: {e}");
    }
}
