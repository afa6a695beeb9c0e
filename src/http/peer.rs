//! Who is on the other end of a request: the connection facts the accept loop records, and the
//! extractors that turn them into a tailnet [`Identity`].
//!
//! The identity comes from the connection's peer address, asked of the identity source. The
//! one exception is the proxy listener that exists for `tailscale serve`: there every
//! connection comes from loopback, so the last `X-Forwarded-For` value (the one the local
//! proxy appended) is the peer. The main listener never reads that header. A request marked
//! `Tailscale-Funnel-Request` came from the public internet and has no tailnet identity.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;

use crate::app::AppState;
use crate::identity::{Identity, IdentitySource, WhoisError};
use crate::oauth::error::Error;

/// The header tailscaled adds to requests that arrived through Funnel.
pub const FUNNEL_HEADER: &str = "tailscale-funnel-request";

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The main listener: the peer address is the caller.
    Main,
    /// The `tailscale serve` listener: the last `X-Forwarded-For` value is the caller.
    Proxy,
    /// The admin unix socket: no tailnet identity; file permissions are the credential.
    AdminSocket,
}

/// Facts about a request's connection, attached by the accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    /// The TCP peer; `None` on the unix socket.
    pub remote: Option<SocketAddr>,
    /// The listener.
    pub listener: Listener,
}

/// Why a request has no tailnet identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallerError {
    /// Occurs when the peer is not on the tailnet.
    #[error("the caller is not on the tailnet")]
    NotOnTailnet,
    /// Occurs when the request came through Funnel.
    #[error("funnel requests carry no tailnet identity")]
    Funnel,
    /// Occurs when a request on the proxy listener lacks a usable `X-Forwarded-For`.
    #[error("the proxy listener received a request without X-Forwarded-For")]
    NoForwardedFor,
    /// Occurs when the identity source cannot answer now.
    #[error("the identity source is unavailable")]
    Unavailable,
}

impl From<CallerError> for Error {
    fn from(e: CallerError) -> Error {
        match e {
            CallerError::Unavailable => Error::unavailable(
                "the tailnet identity of the caller cannot be determined right now",
            ),
            other => Error::access_denied(other.to_string()),
        }
    }
}

/// The address to ask WhoIs about.
fn peer_address(conn: Option<&Conn>, headers: &HeaderMap) -> Result<SocketAddr, CallerError> {
    let conn = conn.copied().ok_or(CallerError::NotOnTailnet)?;
    if headers.contains_key(FUNNEL_HEADER) {
        return Err(CallerError::Funnel);
    }
    match conn.listener {
        Listener::Main => conn.remote.ok_or(CallerError::NotOnTailnet),
        Listener::Proxy => {
            // Only the last value: anything before it was sent by the client and merely
            // passed along by the proxy.
            let last = headers
                .get_all("x-forwarded-for")
                .iter()
                .next_back()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .map(str::trim)
                .ok_or(CallerError::NoForwardedFor)?;
            let ip: IpAddr = last.parse().map_err(|_| CallerError::NoForwardedFor)?;
            Ok(SocketAddr::new(ip, 0))
        }
        Listener::AdminSocket => Err(CallerError::NotOnTailnet),
    }
}

/// The identity resolved for this request, cached in its extensions so that several
/// extractors ask WhoIs once.
#[derive(Clone)]
struct Resolved(Result<Arc<Identity>, CallerError>);

/// The identity behind a request, from its connection facts and headers, asked of `source`.
/// Handlers that need it only for some requests call this instead of taking [`Caller`]; the
/// gateway, which has no [`AppState`], calls it with its own source.
pub async fn identify(
    source: &dyn IdentitySource,
    conn: Option<&Conn>,
    headers: &HeaderMap,
) -> Result<Arc<Identity>, CallerError> {
    let addr = peer_address(conn, headers)?;
    source.whois(addr).await.map_err(|e| match e {
        WhoisError::NotOnTailnet => CallerError::NotOnTailnet,
        WhoisError::Unavailable(_) => CallerError::Unavailable,
    })
}

async fn resolve(parts: &mut Parts, state: &AppState) -> Result<Arc<Identity>, CallerError> {
    if let Some(Resolved(done)) = parts.extensions.get::<Resolved>() {
        return done.clone();
    }
    let result = identify(
        state.identity.as_ref(),
        parts.extensions.get::<Conn>(),
        &parts.headers,
    )
    .await;
    parts.extensions.insert(Resolved(result.clone()));
    result
}

/// The caller's tailnet identity; requests without one are refused (403, or 503 when the
/// identity source is down).
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<Identity>);

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        resolve(parts, state).await.map(Caller).map_err(Error::from)
    }
}

/// The caller's identity or why there is none, for handlers that answer the absence
/// themselves (the agent grant answers `invalid_client`).
#[derive(Debug, Clone)]
pub struct MaybeCaller(pub Result<Arc<Identity>, CallerError>);

impl FromRequestParts<AppState> for MaybeCaller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        Ok(MaybeCaller(resolve(parts, state).await))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn address(parts: &Parts) -> Result<SocketAddr, CallerError> {
        peer_address(parts.extensions.get::<Conn>(), &parts.headers)
    }

    fn parts(listener: Listener, headers: &[(&str, &str)]) -> Parts {
        let mut req = Request::builder().uri("/x");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let (mut parts, ()) = req.body(()).unwrap().into_parts();
        parts.extensions.insert(Conn {
            remote: Some("127.0.0.1:5555".parse().unwrap()),
            listener,
        });
        parts
    }

    #[test]
    fn main_listener_ignores_forwarded_for() {
        let p = parts(Listener::Main, &[("x-forwarded-for", "100.64.0.2")]);
        assert_eq!(address(&p), Ok("127.0.0.1:5555".parse().unwrap()));
    }

    #[test]
    fn proxy_listener_takes_the_last_forwarded_for() {
        let p = parts(
            Listener::Proxy,
            &[("x-forwarded-for", "1.2.3.4, 100.64.0.2")],
        );
        assert_eq!(address(&p), Ok("100.64.0.2:0".parse().unwrap()));
        let p = parts(
            Listener::Proxy,
            &[
                ("x-forwarded-for", "100.64.0.9"),
                ("x-forwarded-for", "100.64.0.3"),
            ],
        );
        assert_eq!(address(&p), Ok("100.64.0.3:0".parse().unwrap()));
        let p = parts(Listener::Proxy, &[]);
        assert_eq!(address(&p), Err(CallerError::NoForwardedFor));
        let p = parts(Listener::Proxy, &[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(address(&p), Err(CallerError::NoForwardedFor));
    }

    #[test]
    fn funnel_requests_have_no_identity() {
        let p = parts(Listener::Main, &[("tailscale-funnel-request", "?1")]);
        assert_eq!(address(&p), Err(CallerError::Funnel));
        let p = parts(
            Listener::Proxy,
            &[
                ("tailscale-funnel-request", "?1"),
                ("x-forwarded-for", "100.64.0.2"),
            ],
        );
        assert_eq!(address(&p), Err(CallerError::Funnel));
    }
}
