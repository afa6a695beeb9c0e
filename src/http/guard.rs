//! Request guards every route gets, whatever the caller:
//!
//! - **Host** (DNS rebinding): a request carries one `Host`, and on the issuer it must name
//!   the issuer's host. Otherwise a page on `evil.example` whose name an attacker re-points at
//!   a tailnet address could reach tailpass with the victim's ambient identity. (The
//!   same-origin check, which endpoints acting on that identity add, is
//!   `oauth::caller::SameOrigin`.)
//! - **Response headers** every answer carries.
//!
//! Both are plain functions, run by the one front middleware of [`super::layers`].

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, header};

use crate::identity::peer::{Conn, Listener};
use crate::issuer::Issuer;
use crate::oauth::error::Error;

/// Paths answered whatever the `Host`: orchestrators probe health by pod IP.
const HOST_EXEMPT: [&str; 1] = ["/healthz"];

/// Why `req` is refused for its `Host`: more than one, or, given an issuer, one that is not
/// the issuer's. `None` lets it through.
pub fn host_refusal(issuer: Option<&Issuer>, req: &Request) -> Option<Error> {
    // RFC 9112 §3.2: a request with more than one Host is refused, whatever the path. Two
    // parts of a stack that each read a different one disagree on which site was asked for.
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Some(Error::invalid_request("more than one Host header"));
    }
    let issuer = issuer?;
    let on_socket = req
        .extensions()
        .get::<Conn>()
        .is_some_and(|c| c.listener == Listener::AdminSocket);
    if on_socket || HOST_EXEMPT.contains(&req.uri().path()) {
        return None;
    }
    let host = first
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    match host {
        Some(host) if issuer.matches_host(host) => None,
        _ => Some(Error::invalid_request(
            "the Host header does not name this issuer",
        )),
    }
}

/// Adds the headers every response carries.
pub fn add_response_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // `same-origin`, not `no-referrer`: nothing leaks to other sites, and browsers keep
    // sending `Origin` on this site's own form posts (with `no-referrer` they send
    // `Origin: null`, which the same-origin check must refuse).
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}
