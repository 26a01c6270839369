//! The HTTP server loop: the router on hyper with the limits `axum::serve` leaves out.
//!
//! `axum::serve` gives hyper no timer, so hyper's header timeout is inert, and it accepts
//! connections without bound: a client that opens connections and trickles bytes
//! (slowloris) holds sockets and memory for as long as it likes. Here every connection
//! holds a permit of a semaphore (over [`Limits::max_connections`], a new connection is
//! closed at once), request headers must arrive within [`Limits::header_timeout`] once
//! they have begun (hyper's timer), a connection that moves no byte for
//! [`Limits::idle_timeout`] is closed (idle keep-alive sockets, silent clients, readers
//! that take nothing), a request body must
//! keep arriving ([`Limits::body_timeout`] between frames), a handler must answer within
//! [`Limits::request_timeout`] (408), and request bodies are capped
//! ([`Limits::max_body_bytes`], 413). At shutdown, connections are asked to finish their
//! request and close; those still open after [`Limits::shutdown_grace`] are dropped.

use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// Connection and request limits (settings `max_connections`, `header_timeout_s`, ...).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Open connections at most; more are closed as they arrive.
    pub max_connections: usize,
    /// Time to receive a request's headers, once they have begun.
    pub header_timeout: Duration,
    /// Longest wait between two frames of a request body.
    pub body_timeout: Duration,
    /// Time for a handler to produce its response (not the streaming of its body).
    pub request_timeout: Duration,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// A connection that moves no byte either way for this long is asked to close
    /// (an idle keep-alive socket closes at once), and dropped after twice as long (a
    /// reader too slow to take its response).
    pub idle_timeout: Duration,
    /// How long shutdown waits for open connections.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_body_bytes: 4 << 20,
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Serves `router` on `listener` under `limits` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    // One body cap: the tower layer (413 before reading, on Content-Length or as the
    // body streams); axum's own 2 MB default for extractors is turned off so the setting
    // means what it says.
    let router = router.layer((
        axum::extract::DefaultBodyLimit::disable(),
        tower_http::limit::RequestBodyLimitLayer::new(limits.max_body_bytes),
        tower_http::timeout::RequestBodyTimeoutLayer::new(limits.body_timeout),
        tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ),
    ));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Closed (dropped) to ask every connection to finish; `open` counts them.
    let (stop_tx, stop_rx) = watch::channel(());
    let (open_tx, open_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream); // over the cap: closed at once
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let mut stop = stop_rx.clone();
        let open = open_rx.clone();
        tokio::spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(limits.header_timeout))
                .keep_alive_timeout(limits.header_timeout);
            let watched = Watched::new(stream);
            let last = watched.last.clone();
            let mut conn =
                pin!(builder.serve_connection_with_upgrades(TokioIo::new(watched), service));
            let mut asked = false;
            let mut tick =
                tokio::time::interval((limits.idle_timeout / 4).max(Duration::from_millis(50)));
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    _ = stop.changed(), if !asked => {
                        asked = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = tick.tick() => {
                        let idle = last.idle();
                        if idle >= 2 * limits.idle_timeout {
                            break; // dropped: the peer takes nothing
                        }
                        if idle >= limits.idle_timeout && !asked {
                            asked = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
            drop(open);
            drop(permit);
        });
    }
    drop(listener);
    drop(stop_tx);
    drop(open_rx);
    // Every connection task holds a receiver of `open`; closed() resolves when the last
    // one ends.
    if tokio::time::timeout(limits.shutdown_grace, open_tx.closed())
        .await
        .is_err()
    {
        tracing::info!(
            "shutdown: connections still open after {:.0} s are dropped",
            limits.shutdown_grace.as_secs_f64()
        );
    }
    Ok(())
}

/// When a connection last moved a byte (milliseconds since it was accepted).
#[derive(Debug)]
struct LastActivity {
    start: Instant,
    at_ms: AtomicU64,
}

impl LastActivity {
    fn touch(&self) {
        self.at_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.at_ms.load(Ordering::Relaxed)))
    }
}

/// A socket that records when bytes last moved through it, either way.
struct Watched {
    inner: TcpStream,
    last: Arc<LastActivity>,
}

impl Watched {
    fn new(inner: TcpStream) -> Self {
        Self {
            inner,
            last: Arc::new(LastActivity {
                start: Instant::now(),
                at_ms: AtomicU64::new(0),
            }),
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.last.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.last.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.last.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
