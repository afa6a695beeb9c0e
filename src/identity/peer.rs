//! Who is on the other end of a request: the connection facts the accept loop records
//! ([`Conn`]), and [`identify`], which weighs how a connection arrived and asks the identity
//! source about its peer. The issuer's extractors (`oauth::caller`) and the gateway both call
//! it.
//!
//! The identity comes from the connection's peer address, asked of the identity source. The
//! one exception is the proxy listener that exists for `tailscale serve`: there every
//! connection comes from loopback, so the last `X-Forwarded-For` value (the one the local
//! proxy appended) is the peer. The main listener never reads that header. A request marked
//! `Tailscale-Funnel-Request` came from the public internet and has no tailnet identity.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::http::HeaderMap;

use super::{Arrival, Identity, IdentitySource, WhoisError};

/// The header tailscaled adds to requests that arrived through Funnel.
pub const FUNNEL_HEADER: &str = "tailscale-funnel-request";

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The main listener: the peer address is the caller.
    Main,
    /// The `tailscale serve` listener: the last `X-Forwarded-For` value is the caller.
    Proxy,
    /// The embedded tailnet node's listener (`--identity tsnet`).
    Tailnet,
    /// The admin unix socket: no tailnet identity; file permissions are the credential.
    AdminSocket,
    /// The probes' listener (`--health-listen`): health only, no identity.
    Health,
}

/// Facts about a request's connection, attached by the accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    /// The TCP peer; `None` on the unix socket.
    pub remote: Option<SocketAddr>,
    /// This end's address (the one the peer connected to), when known.
    pub local: Option<SocketAddr>,
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
    /// Occurs when the connection arrived a way the identity source cannot vouch for (the
    /// OS listener beside an embedded node, an address off the tailnet interface).
    #[error("the connection did not arrive through the tailnet")]
    NotThroughTailnet,
    /// Occurs when the identity source cannot answer now.
    #[error("the identity source is unavailable")]
    Unavailable,
}

/// The address to ask WhoIs about: the connection's peer, or on the proxy listener the last
/// `X-Forwarded-For` value. The gateway names a tokenless caller to the issuer by it (ambient
/// mode).
pub fn peer_address(conn: Option<&Conn>, headers: &HeaderMap) -> Result<SocketAddr, CallerError> {
    let conn = conn.copied().ok_or(CallerError::NotOnTailnet)?;
    if headers.contains_key(FUNNEL_HEADER) {
        return Err(CallerError::Funnel);
    }
    match conn.listener {
        Listener::Main | Listener::Tailnet => conn.remote.ok_or(CallerError::NotOnTailnet),
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
        // Neither vouches for anyone: the socket's mode is its credential, and probes get
        // health only.
        Listener::AdminSocket | Listener::Health => Err(CallerError::NotOnTailnet),
    }
}

/// The identity behind a request, from its connection facts and headers, asked of `source`.
/// Handlers that need it only for some requests call this instead of taking the `Caller`
/// extractor; the gateway, which has no issuer state, calls it with its own source.
pub async fn identify(
    source: &dyn IdentitySource,
    conn: Option<&Conn>,
    headers: &HeaderMap,
) -> Result<Arc<Identity>, CallerError> {
    let addr = peer_address(conn, headers)?;
    // The one place a connection's way in is weighed: a source vouches only for connections
    // that reached it the way it can see.
    let arrival = match conn.map(|c| (c.listener, c.local)) {
        Some((Listener::Tailnet, _)) => Arrival::EmbeddedNode,
        Some((Listener::Proxy, _)) => Arrival::ServeProxy,
        Some((_, local)) => Arrival::OsSocket {
            local: local.map(|a| a.ip()),
        },
        None => return Err(CallerError::NotOnTailnet),
    };
    if !source.vouches_for(arrival) {
        return Err(CallerError::NotThroughTailnet);
    }
    source.whois(addr).await.map_err(|e| match e {
        WhoisError::NotOnTailnet => CallerError::NotOnTailnet,
        WhoisError::Unavailable(_) => CallerError::Unavailable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use axum::http::request::Parts;

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
            local: Some("127.0.0.1:443".parse().unwrap()),
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

    /// A test double of the embedded tsnet node (which needs a control plane to exist): it
    /// knows every address, and vouches as the real one does, for its own listener only.
    struct EmbeddedNodeDouble;

    #[async_trait::async_trait]
    impl IdentitySource for EmbeddedNodeDouble {
        fn vouches_for(&self, arrival: Arrival) -> bool {
            arrival == Arrival::EmbeddedNode
        }
        async fn whois(&self, _: SocketAddr) -> Result<Arc<Identity>, WhoisError> {
            let json = include_str!("../../tests/fixtures/whois-tagged.json");
            let whois: crate::identity::whois::WhoIsResponse = serde_json::from_str(json).unwrap();
            Ok(Arc::new(whois.into_identity().unwrap()))
        }
    }

    fn conn(listener: Listener, remote: &str, local: &str) -> Conn {
        Conn {
            remote: Some(remote.parse().unwrap()),
            local: Some(local.parse().unwrap()),
            listener,
        }
    }

    #[tokio::test]
    async fn an_os_listener_beside_an_embedded_node_takes_no_one_for_a_tailnet_peer() {
        // A pod or LAN host with a source address in 100.64.0.0/10 reaching the OS socket.
        let headers = HeaderMap::new();
        let os = conn(Listener::Main, "100.64.0.7:40000", "10.1.0.4:443");
        assert_eq!(
            identify(&EmbeddedNodeDouble, Some(&os), &headers)
                .await
                .err(),
            Some(CallerError::NotThroughTailnet)
        );
        let proxied = conn(Listener::Proxy, "127.0.0.1:40000", "127.0.0.1:9000");
        let mut forwarded = HeaderMap::new();
        forwarded.insert("x-forwarded-for", "100.64.0.7".parse().unwrap());
        assert_eq!(
            identify(&EmbeddedNodeDouble, Some(&proxied), &forwarded)
                .await
                .err(),
            Some(CallerError::NotThroughTailnet)
        );
        let tailnet = conn(Listener::Tailnet, "100.64.0.7:40000", "100.64.0.1:443");
        assert!(
            identify(&EmbeddedNodeDouble, Some(&tailnet), &headers)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn tailscaled_is_asked_only_about_connections_to_the_tailnet_interface() {
        // No socket is needed: a connection made to a LAN address is refused before any WhoIs.
        let source = crate::identity::tailscaled::Tailscaled::new("/nonexistent/tailscaled.sock");
        let headers = HeaderMap::new();
        let lan = conn(Listener::Main, "100.64.0.7:40000", "192.168.1.20:443");
        assert_eq!(
            identify(&source, Some(&lan), &headers).await.err(),
            Some(CallerError::NotThroughTailnet)
        );
        for (listener, local) in [
            (Listener::Main, "100.100.1.1:443"),
            (Listener::Main, "[fd7a:115c:a1e0::1]:443"),
            (Listener::Main, "127.0.0.1:443"),
            (Listener::Proxy, "127.0.0.1:9000"),
        ] {
            let c = conn(listener, "100.64.0.7:40000", local);
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-for", "100.64.0.7".parse().unwrap());
            // Vouched for, so tailscaled is asked, and (no socket here) is unavailable.
            assert_eq!(
                identify(&source, Some(&c), &h).await.err(),
                Some(CallerError::Unavailable),
                "{local}"
            );
        }
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
