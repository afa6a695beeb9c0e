//! A small client of tailscaled's LocalAPI, over its unix socket.
//!
//! Written here rather than taken from `tailscale-localapi`, which drops the `CapMap` that
//! tsidp-style grants live in. Each call opens a fresh connection: when tailscaled restarts or
//! the socket appears late, the next call simply succeeds, with no reconnect state to repair.
//! Answers are size-limited and time-limited, so a wedged daemon costs a 503, not a hung
//! request.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use hyper::body::Bytes;

use super::whois::WhoIsResponse;
use super::{Identity, IdentitySource, WhoisError};
use crate::unix_http::{self, UnixHttpError, UnixRequest};

/// The default path of tailscaled's LocalAPI socket on Linux.
pub const DEFAULT_SOCKET: &str = "/var/run/tailscale/tailscaled.sock";

/// The `Host` the LocalAPI expects; it refuses others as a DNS-rebinding guard.
const LOCALAPI_HOST: &str = "local-tailscaled.sock";

/// The largest LocalAPI answer read: WhoIs answers are a few kilobytes, certificates less
/// than ten.
const MAX_ANSWER: usize = 1 << 20;

/// How long one LocalAPI call may take, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A LocalAPI client bound to one socket path.
#[derive(Debug, Clone)]
pub struct LocalApi {
    socket: PathBuf,
}

/// Why a LocalAPI call failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalApiError {
    /// Occurs when tailscaled cannot be reached or does not answer in time.
    #[error(transparent)]
    Transport(#[from] UnixHttpError),
    /// Occurs when tailscaled answers with an unexpected status.
    #[error("LocalAPI answered {status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The start of the answer's text.
        body: String,
    },
    /// Occurs when the answer is not the JSON expected.
    #[error("LocalAPI answer is not valid: {0}")]
    Decode(String),
}

impl LocalApi {
    /// A client of the LocalAPI at `socket`. Nothing is opened until the first call.
    pub fn new(socket: impl Into<PathBuf>) -> LocalApi {
        LocalApi {
            socket: socket.into(),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET path_and_query`, returning the status and the body.
    async fn get(&self, path_and_query: &str) -> Result<(u16, Bytes), LocalApiError> {
        let request = UnixRequest {
            method: Method::GET,
            path: path_and_query,
            host: LOCALAPI_HOST,
            json: None,
            max_answer: MAX_ANSWER,
            timeout: CALL_TIMEOUT,
        };
        Ok(unix_http::send(&self.socket, request).await?)
    }

    /// Asks tailscaled who is behind `peer`. `Ok(None)` means the address is no tailnet node.
    pub async fn whois(&self, peer: SocketAddr) -> Result<Option<WhoIsResponse>, LocalApiError> {
        let addr =
            url::form_urlencoded::byte_serialize(peer.to_string().as_bytes()).collect::<String>();
        let (status, body) = self.get(&format!("/localapi/v0/whois?addr={addr}")).await?;
        match status {
            200 => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| LocalApiError::Decode(e.to_string())),
            // tailscaled answers 404 "no match for IP:port" for an address it does not know.
            404 => Ok(None),
            other => Err(status_error(other, &body)),
        }
    }

    /// The node's TLS certificate chain and private key for `domain`, both PEM, as
    /// tailscaled's ACME client keeps them (`type=pair` answers key then chain).
    pub async fn cert_pair(&self, domain: &str) -> Result<Vec<u8>, LocalApiError> {
        let domain = url::form_urlencoded::byte_serialize(domain.as_bytes()).collect::<String>();
        let (status, body) = self
            .get(&format!("/localapi/v0/cert/{domain}?type=pair"))
            .await?;
        match status {
            200 => Ok(body.to_vec()),
            other => Err(status_error(other, &body)),
        }
    }
}

fn status_error(status: u16, body: &[u8]) -> LocalApiError {
    let text = String::from_utf8_lossy(body.get(..200).unwrap_or(body))
        .trim()
        .to_owned();
    LocalApiError::Status { status, body: text }
}

/// The tailscaled identity backend.
#[derive(Debug, Clone)]
pub struct Tailscaled {
    api: LocalApi,
}

impl Tailscaled {
    /// An identity source asking the LocalAPI at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Tailscaled {
        Tailscaled {
            api: LocalApi::new(socket),
        }
    }
}

#[async_trait::async_trait]
impl IdentitySource for Tailscaled {
    /// tailscaled knows the peers of its tailnet interface: connections made to a tailnet
    /// address (or to loopback, whose peers are local and never tailnet addresses), and those
    /// `tailscale serve` forwards. A connection to another address came from another network.
    fn vouches_for(&self, arrival: super::Arrival) -> bool {
        match arrival {
            super::Arrival::OsSocket { local: Some(ip) } => {
                ip.is_loopback() || super::is_tailnet_address(ip)
            }
            super::Arrival::OsSocket { local: None } | super::Arrival::EmbeddedNode => false,
            super::Arrival::ServeProxy => true,
        }
    }

    async fn whois(&self, peer: SocketAddr) -> Result<Arc<Identity>, WhoisError> {
        match self.api.whois(peer).await {
            Ok(Some(answer)) => answer.into_identity().map(Arc::new).map_err(|e| {
                tracing::warn!(error = %e, "tailscaled returned an unusable WhoIs answer");
                WhoisError::Unavailable(e.to_string())
            }),
            Ok(None) => Err(WhoisError::NotOnTailnet),
            Err(e) => {
                tracing::warn!(error = %e, "WhoIs failed");
                Err(WhoisError::Unavailable(e.to_string()))
            }
        }
    }
}
