//! The HTTP/1.1 listener loop with the bounds a public server needs, under both the API and the admin API:
//! a cap on open connections per listener (so a flood on the API port cannot starve the admin port), a deadline
//! for request headers that also closes idle keep-alive connections (slow-header sockets), a write deadline
//! (a client that stops reading is cut, which drops its response stream and frees its KV blocks), no Nagle delay,
//! and the shutdown phases: stop accepting and let requests finish, then close what is left.

#![deny(clippy::indexing_slicing)]

mod io;
pub mod shutdown;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use shutdown::{Phase, ShutdownSignal};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower::ServiceExt;

/// Per-listener connection limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Open connections at most; more are accepted and closed at once.
    pub max_connections: usize,
    /// A request's headers must arrive within this (and an idle keep-alive connection closes after it).
    pub header_timeout: Duration,
    /// A write that makes no progress for this long closes the connection.
    pub write_timeout: Duration,
}

/// Serves `app` on `listener` until the shutdown reaches `Draining` (then in-flight requests finish) and
/// returns once every connection has closed, or at `Deadline` (remaining connections are dropped).
pub async fn serve(listener: TcpListener, app: Router, limits: ConnLimits, shutdown: ShutdownSignal) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.reached(Phase::Draining) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, _) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(max = limits.max_connections, "connection limit reached; closing a new connection");
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (app, signal) = (app.clone(), shutdown.clone());
                conns.spawn(async move {
                    connection(tcp, app, limits, signal).await;
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    tokio::select! {
        _ = async { while conns.join_next().await.is_some() {} } => {}
        _ = shutdown.reached(Phase::Deadline) => {
            // Give streams a moment to send their final event, then drop what is left.
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while conns.join_next().await.is_some() {}
            })
            .await;
            conns.abort_all();
        }
    }
}

/// One connection: HTTP/1.1 with keep-alive, ended gracefully at `Draining`.
async fn connection(tcp: tokio::net::TcpStream, app: Router, limits: ConnLimits, shutdown: ShutdownSignal) {
    // The peer's address rides along as axum's ConnectInfo (the admin listener throttles sign-in per address).
    let peer = tcp.peer_addr().ok();
    let io = TokioIo::new(io::WriteDeadline::new(tcp, limits.write_timeout));
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let mut req = req.map(axum::body::Body::new);
        if let Some(addr) = peer {
            req.extensions_mut().insert(axum::extract::ConnectInfo(addr));
        }
        app.clone().oneshot(req)
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(256 << 10)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = shutdown.reached(Phase::Draining) => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::AsyncWriteExt;

    /// Set when the response stream is dropped (the connection was cut and the body with it).
    struct Dropped(Arc<AtomicBool>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_cut_and_its_stream_dropped() {
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = dropped.clone();
        let app = Router::new().route(
            "/",
            axum::routing::get(move || {
                let guard = Dropped(flag.clone());
                let chunks = async_stream::stream! {
                    let _guard = guard;
                    loop {
                        yield Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(vec![b'x'; 64 << 10]));
                    }
                };
                async move { axum::body::Body::from_stream(chunks) }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ConnLimits {
            max_connections: 4,
            header_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_millis(300),
        };
        tokio::spawn(serve(listener, app, limits, ShutdownSignal::never()));
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut conn = socket.connect(addr).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        // Never read: the kernel's buffers fill, the server's writes stall, the deadline cuts the connection.
        let t0 = std::time::Instant::now();
        while !dropped.load(Ordering::Acquire) {
            assert!(t0.elapsed() < Duration::from_secs(20), "the stalled response was never cut");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(conn);
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_closed_at_once() {
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ConnLimits {
            max_connections: 2,
            header_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
        };
        tokio::spawn(serve(listener, app, limits, ShutdownSignal::never()));
        let _held: Vec<_> = futures::future::join_all((0..2).map(|_| tokio::net::TcpStream::connect(addr))).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(2), tokio::io::AsyncReadExt::read(&mut third, &mut buf))
            .await
            .expect("the server closes the connection past the cap")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
}
