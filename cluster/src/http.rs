//! The HTTP client for a plain-HTTP object store: connections that acknowledge what they
//! receive at once.
//!
//! Garage's S3 server leaves Nagle's algorithm on and writes a response's headers and its
//! body apart. The body then waits for the client to acknowledge the headers, and Linux
//! delays that acknowledgement up to 40 ms on a connection it has seen go back and forth (a
//! kept-alive one). Measured with curl on the cluster's Garage, one connection kept alive:
//! 39 of 40 ranged GETs of 1,000 bytes took over 35 ms (first byte at 1.4 ms, the last at
//! 42-48 ms), against none with quick acknowledgements. A cold host's reads that fetch one
//! object at a time (a lookup's tree node, a small file, the middle of a file) each paid it.
//!
//! So each read from such a connection first sets `TCP_QUICKACK`: an acknowledgement the
//! kernel holds is sent now, and the socket leaves its delayed mode (which it re-enters as
//! requests go out, hence on every read). HTTPS and proxied endpoints keep object_store's
//! own client ([`plain_http_without_proxy`] says which).

use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector as TcpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService,
};
use object_store::ClientOptions;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower::ServiceExt;

/// The environment variables object_store's client takes a proxy from, as curl does.
const PROXY_VARS: [&str; 6] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
];

/// Whether some proxy variable is set (requests then go through the proxy).
pub(crate) fn proxied() -> bool {
    PROXY_VARS
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|p| !p.is_empty()))
}

/// Whether requests to `endpoint` go straight to it over plain HTTP: those this client
/// serves.
pub(crate) fn plain_http_without_proxy(endpoint: &str) -> bool {
    endpoint.starts_with("http://") && !proxied()
}

/// Makes [`QuickAckClient`]s: plain HTTP/1.1, connections kept alive and reused.
#[derive(Debug)]
pub(crate) struct QuickAckConnector {
    pub(crate) connect_timeout: Duration,
    /// Each attempt's bound, its response's body included (as reqwest's `timeout`): a
    /// request stalled on a dying node fails and is retried, not waited out.
    pub(crate) attempt_timeout: Duration,
}

impl HttpConnector for QuickAckConnector {
    fn connect(&self, _: &ClientOptions) -> object_store::Result<HttpClient> {
        let mut tcp = TcpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(self.connect_timeout));
        // reqwest's: a kept-alive connection to a vanished host is found before a request
        // spends its attempt on it.
        tcp.set_keepalive(Some(Duration::from_secs(15)));
        tcp.set_keepalive_interval(Some(Duration::from_secs(15)));
        tcp.set_keepalive_retries(Some(3));
        let connector: Connector = tcp.map_response(quick_ack_stream);
        // With a timer, idle connections close after the pool's idle timeout (90 s).
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(HttpClient::new(QuickAckClient {
            client,
            attempt_timeout: self.attempt_timeout,
        }))
    }
}

fn quick_ack_stream(io: TokioIo<TcpStream>) -> TokioIo<QuickAckStream> {
    TokioIo::new(QuickAckStream(io.into_inner()))
}

type Connector =
    tower::util::MapResponse<TcpConnector, fn(TokioIo<TcpStream>) -> TokioIo<QuickAckStream>>;

#[derive(Debug)]
struct QuickAckClient {
    client: Client<Connector, object_store::client::HttpRequestBody>,
    attempt_timeout: Duration,
}

#[async_trait::async_trait]
impl HttpService for QuickAckClient {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let deadline = tokio::time::Instant::now() + self.attempt_timeout;
        let response = tokio::time::timeout_at(deadline, self.client.request(req))
            .await
            .map_err(|e| HttpError::new(HttpErrorKind::Timeout, e))?
            .map_err(|e| HttpError::new(error_kind(&e), e))?;
        let (parts, body) = response.into_parts();
        let body = DeadlineBody {
            body,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
        };
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
    }
}

/// How object_store's retries treat a failed request, as it classifies reqwest's errors:
/// `Request` (not sent, retried) only where hyper says the connection closed or the message
/// was cut short, `Interrupted` (retried if idempotent) for a reset or an early end, and
/// `Unknown` (not retried) for the rest.
fn error_kind(e: &hyper_util::client::legacy::Error) -> HttpErrorKind {
    if e.is_connect() {
        return HttpErrorKind::Connect;
    }
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_closed() || h.is_incomplete_message() || h.is_body_write_aborted() {
                return HttpErrorKind::Request;
            }
            if h.is_timeout() {
                return HttpErrorKind::Timeout;
            }
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::TimedOut => return HttpErrorKind::Timeout,
                io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof => return HttpErrorKind::Interrupted,
                _ => {}
            }
        }
        source = err.source();
    }
    HttpErrorKind::Unknown
}

/// A response's body that fails once its attempt's deadline passes.
struct DeadlineBody {
    body: hyper::body::Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for DeadlineBody {
    type Data = bytes::Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                return Poll::Ready(
                    frame.map(|f| f.map_err(|e| HttpError::new(HttpErrorKind::Interrupted, e))),
                )
            }
            Poll::Pending => {}
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(HttpError::new(
                HttpErrorKind::Timeout,
                io::Error::new(io::ErrorKind::TimedOut, "no whole answer in time"),
            )))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A TCP stream that asks for quick acknowledgements before each read (see the module's
/// comment).
struct QuickAckStream(TcpStream);

impl QuickAckStream {
    fn quick_ack(&self) {
        let on: libc::c_int = 1;
        // SAFETY: a valid socket descriptor this stream owns, and an int option of the size
        // given. A failure (an old kernel) only leaves the kernel's default.
        #[allow(unsafe_code)]
        unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

impl AsyncRead for QuickAckStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.quick_ack();
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuickAckStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl Connection for QuickAckStream {
    fn connected(&self) -> Connected {
        self.0.connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Sets `fd`'s `TCP_QUICKACK` (0 puts the socket in delayed-acknowledgement mode), or
    /// with `None` reads it: whether the kernel would acknowledge the next segment at once.
    #[allow(unsafe_code)]
    fn quick_ack(fd: i32, set: Option<bool>) -> bool {
        let mut on = libc::c_int::from(set.unwrap_or(false));
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let ptr = (&mut on as *mut libc::c_int).cast();
        // SAFETY: a valid socket, and an int option with its size.
        let r = unsafe {
            match set {
                Some(_) => libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_QUICKACK, ptr, len),
                None => libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_QUICKACK, ptr, &mut len),
            }
        };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
        on != 0
    }

    /// A request and its answer (in one segment: nothing waits for an acknowledgement),
    /// read with the socket put in delayed-acknowledgement mode first, as the kernel puts a
    /// kept-alive connection; whether it acknowledges at once after the read.
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        stream: &mut S,
        fd: i32,
        server: &mut std::net::TcpStream,
    ) -> bool {
        stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut request = [0u8; 18];
        server.read_exact(&mut request).unwrap();
        quick_ack(fd, Some(false));
        assert!(
            !quick_ack(fd, None),
            "TCP_QUICKACK 0 left quick-ack mode on"
        );
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\nhello").unwrap();
        let mut answer = [0u8; 24];
        stream.read_exact(&mut answer).await.unwrap();
        quick_ack(fd, None)
    }

    /// Each read through [`QuickAckStream`] puts its socket back in quick-ack mode, which a
    /// plain socket's reads leave off: there, the acknowledgement of an answer's headers
    /// waited up to 40 ms, and Garage's body with it.
    #[test]
    fn each_read_puts_the_socket_back_in_quick_ack_mode() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();

            let quick = TcpStream::connect(addr).await.unwrap();
            let (mut server, _) = listener.accept().unwrap();
            let fd = quick.as_raw_fd();
            let mut quick = QuickAckStream(quick);
            for _ in 0..3 {
                assert!(exchange(&mut quick, fd, &mut server).await);
            }
        });
    }
}
