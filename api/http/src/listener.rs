//! Serving HTTP to clients that may be hostile: every connection must send its request
//! headers within a deadline (idle keep-alive connections included), and connections are
//! capped; at the cap a new connection closes the one idle longest, so idle connections
//! cannot lock everyone out. Requests in flight are never cut.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

/// Limits on the clients of one listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// How long a connection may take to send a request's headers, and stay idle between
    /// requests.
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(30),
        }
    }
}

/// One open connection, as the cap sees it.
struct Conn {
    /// Requests being served on it.
    in_flight: AtomicUsize,
    /// When its last request ended (ms since the server started), or when it was accepted.
    idle_since: AtomicU64,
    /// Asks it to close once its request in flight, if any, is answered.
    close: Notify,
}

struct Conns {
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    /// Signalled when a connection ends.
    ended: Notify,
    started: Instant,
}

impl Conns {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Makes room for one more connection: closes the one idle longest, or waits for one to
    /// end if every connection is busy.
    async fn make_room(&self, max: usize) {
        loop {
            let ended = self.ended.notified();
            {
                let open = self.open.lock();
                if open.len() < max {
                    return;
                }
                let idlest = open
                    .values()
                    .filter(|c| c.in_flight.load(Ordering::SeqCst) == 0)
                    .min_by_key(|c| c.idle_since.load(Ordering::SeqCst));
                if let Some(c) = idlest {
                    // Marked busy-forever so it is not picked twice while it closes.
                    c.idle_since.store(u64::MAX, Ordering::SeqCst);
                    c.close.notify_one();
                }
            }
            ended.await;
        }
    }
}

/// Counts a request in flight on a connection for as long as it lives.
struct InFlight(Arc<Conn>, Arc<Conns>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.idle_since.store(self.1.now_ms(), Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then lets every connection finish
/// its request in flight and returns once all are closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let conns = Arc::new(Conns {
        open: Mutex::new(HashMap::new()),
        ended: Notify::new(),
        started: Instant::now(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut next_id = 0u64;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = conns.make_room(limits.max_connections) => {}
        }
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, say: the listener stays, and so does the daemon.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let id = next_id;
        let conn = Arc::new(Conn {
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(conns.now_ms()),
            close: Notify::new(),
        });
        conns.open.lock().insert(id, conn.clone());
        let (app, conns, mut stop) = (app.clone(), conns.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let service = {
                let (conn, conns) = (conn.clone(), conns.clone());
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    conn.in_flight.fetch_add(1, Ordering::SeqCst);
                    let counted = InFlight(conn.clone(), conns.clone());
                    let app = app.clone();
                    async move {
                        let resp = app.oneshot(req.map(axum::body::Body::new)).await;
                        drop(counted);
                        resp
                    }
                })
            };
            let http = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(http);
            let mut closing = false;
            loop {
                tokio::select! {
                    r = http.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!("connection: {e}");
                        }
                        break;
                    }
                    _ = conn.close.notified(), if !closing => {
                        closing = true;
                        http.as_mut().graceful_shutdown();
                    }
                    _ = stop.wait_for(|s| *s), if !closing => {
                        closing = true;
                        http.as_mut().graceful_shutdown();
                    }
                }
            }
            conns.open.lock().remove(&id);
            conns.ended.notify_waiters();
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    loop {
        let ended = conns.ended.notified();
        if conns.open.lock().is_empty() {
            return Ok(());
        }
        ended.await;
    }
}
