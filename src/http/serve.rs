//! The accept loop shared by the webhook and admin listeners: plain HTTP/1.1, h2c and TLS, with
//! a cap on connections and the timeouts hyper does not enforce on its own.
//!
//! `axum::serve` and axum-server have no header, idle or connection limits: a client that sends
//! half a request line keeps its connection (and, with enough of them, every file descriptor)
//! forever. Here each connection is served by hyper-util's auto builder (HTTP/1.1 or HTTP/2 by
//! preface or ALPN) and watched by a small per-connection [`Watchdog`]:
//!
//! - a connection's first request must have its complete headers within
//!   `header_read_timeout_ms` of the accept (the TLS handshake is part of it);
//! - with no request in flight, a kept-alive connection is closed after
//!   `keep_alive_idle_timeout_ms`, or `header_read_timeout_ms` after a next request's first
//!   byte if its headers are not complete by then (HTTP/1.1; HTTP/2 clients send frames between
//!   requests, so only the idle rule applies there);
//! - while a request is in flight the watchdog leaves the connection alone: its body has the
//!   listener's `body_read_timeout_ms` from the moment its headers are read, on every route and
//!   every HTTP/2 stream ([`super::deadline`]), and the sink its own timeouts.
//!
//! Each request carries its peer's address as axum's `ConnectInfo<SocketAddr>` (limits keyed
//! by peer, logs of refused attempts).
//!
//! A connection closes with a linger (`close_linger_ms`, see [`Tracked`]), so an answer given
//! before a body was read (401, 413, 415, 429, all with `Connection: close`) reaches the client
//! instead of being destroyed by a TCP reset.
//!
//! At `max_connections` the loop stops accepting until a connection closes. Shutdown stops
//! accepting, asks every connection to finish gracefully (in-flight requests complete, idle
//! connections close) and waits for them; the caller bounds that wait.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::config::ConnectionsConfig;
use super::deadline::{self, DeadlineBody};

/// The prefix of the HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Serves `router` on `listener` (over TLS when `tls` is given) until `stop` is cancelled, then
/// finishes gracefully (see the module docs). Every request body must arrive within
/// `body_timeout` of its headers.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<ServerConfig>>,
    limits: &ConnectionsConfig,
    body_timeout: Duration,
    stop: CancellationToken,
) -> io::Result<()> {
    let builder = Arc::new(builder(limits));
    let timeouts = Timeouts {
        header: Duration::from_millis(limits.header_read_timeout_ms),
        idle: Duration::from_millis(limits.keep_alive_idle_timeout_ms),
        linger: Duration::from_millis(limits.close_linger_ms),
        body: body_timeout,
    };
    let tls = tls.map(TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the slot semaphore is never closed"),
            () = stop.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the listener survives.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            builder: builder.clone(),
            router: router.clone(),
            tls: tls.clone(),
            timeouts,
            watcher: graceful.watcher(),
            peer,
        };
        tokio::spawn(async move {
            connection.run(stream).await;
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

fn builder(limits: &ConnectionsConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The watchdog enforces header and idle timeouts (hyper's timer would also close
        // kept-alive connections at the header timeout).
        .header_read_timeout(None);
    let interval = limits.http2_keep_alive_interval_ms;
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .keep_alive_interval((interval > 0).then(|| Duration::from_millis(interval)))
        .keep_alive_timeout(Duration::from_millis(limits.http2_keep_alive_timeout_ms));
    builder
}

#[derive(Debug, Clone, Copy)]
struct Timeouts {
    header: Duration,
    idle: Duration,
    linger: Duration,
    body: Duration,
}

struct Connection {
    builder: Arc<auto::Builder<TokioExecutor>>,
    router: Router,
    tls: Option<TlsAcceptor>,
    timeouts: Timeouts,
    watcher: hyper_util::server::graceful::Watcher,
    peer: SocketAddr,
}

impl Connection {
    async fn run(self, stream: TcpStream) {
        let activity = Arc::new(Mutex::new(Activity::new()));
        let deadline = Instant::now() + self.timeouts.header;
        match self.tls.clone() {
            None => {
                let io = Tracked::new(stream, activity.clone(), self.timeouts.linger);
                self.serve(io, activity).await
            }
            Some(acceptor) => {
                let Ok(Ok(tls)) = tokio::time::timeout_at(deadline, acceptor.accept(stream)).await
                else {
                    tracing::debug!("TLS handshake failed or timed out");
                    return;
                };
                let io = Tracked::new(tls, activity.clone(), self.timeouts.linger);
                self.serve(io, activity).await
            }
        }
    }

    async fn serve<S>(self, io: Tracked<S>, activity: Arc<Mutex<Activity>>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            builder,
            router,
            tls: _,
            timeouts,
            watcher,
            peer,
        } = self;
        let requests = activity.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let router = router.clone();
            let done = Busy::start(&requests);
            let (parts, body) = request.into_parts();
            let (body, expired) = DeadlineBody::new(body, timeouts.body);
            let mut request = Request::from_parts(parts, Body::new(body));
            request.extensions_mut().insert(ConnectInfo(peer));
            async move {
                let response = router.oneshot(request).await.map(|response| {
                    if expired.fired() {
                        deadline::timed_out(response, timeouts.body)
                    } else {
                        response
                    }
                });
                drop(done);
                response
            }
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        let connection = watcher.watch(connection);
        tokio::select! {
            result = connection => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            () = watchdog(&activity, timeouts) => {
                tracing::debug!("closing a connection that exceeded its header or idle timeout");
            }
        }
    }
}

/// What the watchdog needs to know about one connection.
struct Activity {
    /// Requests in flight.
    busy: usize,
    /// When the connection last had no request in flight (accept, or the end of the last one).
    idle_since: Instant,
    /// Whether a request has completed yet (the first one runs on the header timeout alone).
    served: bool,
    /// When the first byte after `idle_since` arrived (a next request has begun).
    read_since_idle: Option<Instant>,
    /// Whether the client speaks HTTP/2 (frames arrive between requests).
    http2: bool,
    /// Whether any byte was read yet.
    started: bool,
}

impl Activity {
    fn new() -> Self {
        Activity {
            busy: 0,
            idle_since: Instant::now(),
            served: false,
            read_since_idle: None,
            http2: false,
            started: false,
        }
    }

    /// When the connection must be closed, or `None` while a request is in flight.
    fn deadline(&self, t: Timeouts) -> Option<Instant> {
        if self.busy > 0 {
            return None;
        }
        if !self.served {
            return Some(self.idle_since + t.header);
        }
        let idle = self.idle_since + t.idle;
        match self.read_since_idle {
            Some(first_byte) if !self.http2 => Some(idle.min(first_byte + t.header)),
            _ => Some(idle),
        }
    }
}

/// Marks a request in flight until dropped.
struct Busy(Arc<Mutex<Activity>>);

impl Busy {
    fn start(activity: &Arc<Mutex<Activity>>) -> Busy {
        let mut a = lock(activity);
        a.busy += 1;
        a.read_since_idle = None;
        drop(a);
        Busy(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut a = lock(&self.0);
        a.busy -= 1;
        if a.busy == 0 {
            a.idle_since = Instant::now();
            a.served = true;
            a.read_since_idle = None;
        }
    }
}

fn lock(activity: &Mutex<Activity>) -> std::sync::MutexGuard<'_, Activity> {
    activity.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resolves when the connection is past its deadline.
async fn watchdog(activity: &Mutex<Activity>, timeouts: Timeouts) {
    loop {
        let deadline = lock(activity).deadline(timeouts);
        let now = Instant::now();
        match deadline {
            Some(deadline) if deadline <= now => return,
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            // A request is in flight; look again later.
            None => tokio::time::sleep(timeouts.header.min(timeouts.idle)).await,
        }
    }
}

/// A stream that tells the watchdog when bytes arrive, and closes with a linger: after its
/// write side is shut, what the client still sends (the rest of a body the bridge answered
/// early) is read and dropped for up to `linger`, so the kernel does not answer it with a reset
/// that would destroy the response before the client reads it.
struct Tracked<S> {
    inner: S,
    activity: Arc<Mutex<Activity>>,
    linger: Duration,
    closing: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Tracked<S> {
    fn new(inner: S, activity: Arc<Mutex<Activity>>, linger: Duration) -> Self {
        Tracked {
            inner,
            activity,
            linger,
            closing: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            let mut a = lock(&self.activity);
            if !a.started {
                a.started = true;
                a.http2 = read.starts_with(H2_PREFACE);
            }
            if a.busy == 0 && a.read_since_idle.is_none() {
                a.read_since_idle = Some(Instant::now());
            }
        }
        result
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.closing.is_none() {
            if let Err(e) = std::task::ready!(Pin::new(&mut this.inner).poll_shutdown(cx)) {
                return Poll::Ready(Err(e));
            }
            this.closing = Some(Box::pin(tokio::time::sleep(this.linger)));
        }
        let mut scratch = [0u8; 8192];
        loop {
            if let Some(timer) = this.closing.as_mut() {
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(()));
                }
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
