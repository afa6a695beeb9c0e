//! A minimal HTTP/1.1 client over a unix socket, for tailscaled's LocalAPI and for the CLI
//! talking to a running server's admin socket.
//!
//! One connection per request: both peers may restart at any time, and a fresh connection
//! means there is no broken keep-alive state to notice and repair. Answers are bounded in size
//! and time.

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// Why a request over the socket failed.
#[derive(Debug, thiserror::Error)]
pub enum UnixHttpError {
    /// Occurs when the socket is missing or nobody listens on it.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Occurs when the exchange fails midway or the answer is too large.
    #[error("request over {path} failed: {message}")]
    Http {
        /// The socket path.
        path: String,
        /// What failed.
        message: String,
    },
    /// Occurs when the peer does not answer in time.
    #[error("{path} did not answer within {timeout:?}")]
    Timeout {
        /// The socket path.
        path: String,
        /// The limit.
        timeout: Duration,
    },
}

impl UnixHttpError {
    /// Whether nothing is listening (so a CLI may fall back to opening state directly).
    pub fn is_not_running(&self) -> bool {
        matches!(self, UnixHttpError::Connect { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused))
    }
}

/// A request to send.
#[derive(Debug)]
pub struct UnixRequest<'a> {
    /// The method.
    pub method: Method,
    /// The path and query.
    pub path: &'a str,
    /// The `Host` header the peer expects.
    pub host: &'a str,
    /// A JSON body, if any.
    pub json: Option<Vec<u8>>,
    /// The largest answer accepted.
    pub max_answer: usize,
    /// The time limit, connection included.
    pub timeout: Duration,
}

/// Sends `request` to the socket at `socket`, returning the status and body.
pub async fn send(socket: &Path, request: UnixRequest<'_>) -> Result<(u16, Bytes), UnixHttpError> {
    let path = socket.display().to_string();
    let timeout = request.timeout;
    tokio::time::timeout(timeout, exchange(socket, request))
        .await
        .map_err(|_| UnixHttpError::Timeout { path, timeout })?
}

async fn exchange(socket: &Path, request: UnixRequest<'_>) -> Result<(u16, Bytes), UnixHttpError> {
    let path = socket.display().to_string();
    let http = |e: &dyn std::fmt::Display| UnixHttpError::Http {
        path: path.clone(),
        message: e.to_string(),
    };
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| UnixHttpError::Connect {
            path: path.clone(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http(&e))?;
    // Ends with this exchange however it ends: given up on at its deadline, the connection
    // must not outlive it waiting on a peer that never answers (one leaked task and socket
    // per timed-out call to a hung tailscaled).
    let _driver = AbortOnDrop(tokio::spawn(conn));
    let mut builder = Request::builder()
        .method(request.method)
        .uri(request.path)
        .header(hyper::header::HOST, request.host);
    if request.json.is_some() {
        builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let body = Full::new(Bytes::from(request.json.unwrap_or_default()));
    let req = builder.body(body).map_err(|e| http(&e))?;
    let response = sender.send_request(req).await.map_err(|e| http(&e))?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), request.max_answer)
        .collect()
        .await
        .map_err(|e| http(&*e))?
        .to_bytes();
    Ok((status, body))
}

/// A spawned task aborted when this is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
