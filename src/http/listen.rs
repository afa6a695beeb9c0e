//! Accept loops: the main TCP listener (plain on loopback, or TLS), the `tailscale serve`
//! proxy listener, and the admin unix socket.
//!
//! Each accepted connection is tagged with a [`Conn`] (peer address and listener) before any
//! routing, so that identity is decided by how the request arrived, never by what it says.
//! Connections are bounded in number and in the time they may take to send headers or finish
//! a TLS handshake; on shutdown the listener stops accepting and open connections are given a
//! grace period to finish.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::identity::peer::{Conn, Listener};

/// Connections served at once per listener; past it, accepting waits.
const MAX_CONNECTIONS: usize = 4_096;
/// Time a client has to send its request headers (slowloris defence).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time open connections get to finish after shutdown begins.
pub const GRACE: Duration = Duration::from_secs(10);

fn builder() -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    builder
}

/// Serves one connection, watched so that shutdown can wait for it.
async fn serve_connection<IO>(io: IO, conn: Conn, app: Router, watcher: Watcher)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = app.map_request(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(conn);
        req
    });
    let builder = builder();
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service))
        .into_owned();
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Serves `app` on a TCP listener until `shutdown`, then drains connections.
pub async fn serve_tcp(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    kind: Listener,
    app: Router,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            remote: Some(remote),
            local: stream.local_addr().ok(),
            listener: kind,
        };
        match &tls {
            None => {
                let served = serve_connection(stream, conn, app.clone(), graceful.watcher());
                tokio::spawn(async move {
                    served.await;
                    drop(permit);
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let app = app.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    match handshake {
                        Ok(Ok(tls_stream)) => {
                            serve_connection(tls_stream, conn, app, watcher).await;
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, %remote, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                    drop(permit);
                });
            }
        }
    }
    drain(graceful).await;
}

/// Serves `app` on the admin unix socket until `shutdown`.
pub async fn serve_unix(listener: UnixListener, app: Router, shutdown: CancellationToken) {
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let conn = Conn {
                    remote: None,
                    local: None,
                    listener: Listener::AdminSocket,
                };
                tokio::spawn(serve_connection(
                    stream,
                    conn,
                    app.clone(),
                    graceful.watcher(),
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drain(graceful).await;
}

async fn drain(graceful: GracefulShutdown) {
    if tokio::time::timeout(GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the grace period; closing them");
    }
}

/// Serves `app` on the embedded tailnet node's listener until `shutdown` (feature `tsnet`).
/// Connections come through the node's own network stack; the peer address it reports is a
/// tailnet address, which the same identity source then resolves.
#[cfg(feature = "tsnet")]
pub async fn serve_tsnet(
    listener: tailscale::netstack::TcpListener,
    app: Router,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(stream) => {
                let conn = Conn {
                    remote: Some(stream.remote_addr()),
                    local: None,
                    listener: Listener::Tailnet,
                };
                let served = serve_connection(stream, conn, app.clone(), graceful.watcher());
                tokio::spawn(async move {
                    served.await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "tailnet accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drain(graceful).await;
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
}
