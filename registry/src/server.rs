//! The HTTP server loop: the router on hyper with the limits `axum::serve` leaves out.
//!
//! `axum::serve` gives hyper no timer, so hyper's header timeout is inert, and it accepts
//! connections without bound: a client that opens connections and trickles bytes
//! (slowloris) holds sockets and memory for as long as it likes. Here every connection
//! holds a permit of a semaphore (over [`Limits::max_connections`], a new connection is
//! closed at once), request headers must arrive within [`Limits::header_timeout`]
//! (hyper's timer, which also closes idle keep-alive connections), a request body must
//! keep arriving ([`Limits::body_timeout`] between frames), a handler must answer within
//! [`Limits::request_timeout`] (408), and request bodies are capped
//! ([`Limits::max_body_bytes`], 413). At shutdown, connections are asked to finish their
//! request and close; those still open after [`Limits::shutdown_grace`] are dropped.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Connection and request limits (settings `max_connections`, `header_timeout_s`, ...).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Open connections at most; more are closed as they arrive.
    pub max_connections: usize,
    /// Time to receive a request's headers (and the longest a keep-alive connection
    /// waits idle for the next request).
    pub header_timeout: Duration,
    /// Longest wait between two frames of a request body.
    pub body_timeout: Duration,
    /// Time for a handler to produce its response (not the streaming of its body).
    pub request_timeout: Duration,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
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
    let router = router.layer((
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
                    eprintln!("accept: {e}");
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
            let mut conn =
                pin!(builder.serve_connection_with_upgrades(TokioIo::new(stream), service));
            let mut asked = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    _ = stop.changed(), if !asked => {
                        asked = true;
                        conn.as_mut().graceful_shutdown();
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
        eprintln!(
            "shutdown: connections still open after {:.0} s are dropped",
            limits.shutdown_grace.as_secs_f64()
        );
    }
    Ok(())
}
