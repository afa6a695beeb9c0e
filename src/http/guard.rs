//! Request guards every route gets, whatever the caller:
//!
//! - **Host** (DNS rebinding): a request carries one `Host`, and on the issuer it must name
//!   the issuer's host. Otherwise a page on `evil.example` whose name an attacker re-points at
//!   a tailnet address could reach tailpass with the victim's ambient identity. (The
//!   same-origin check, which endpoints acting on that identity add, is
//!   `oauth::caller::SameOrigin`.)
//! - **Response headers** every answer carries.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::identity::peer::{Conn, Listener};
use crate::issuer::Issuer;
use crate::oauth::error::Error;

/// Paths answered whatever the `Host`: orchestrators probe health by pod IP.
const HOST_EXEMPT: [&str; 1] = ["/healthz"];

/// Refuses requests with more than one `Host`, and, given an issuer, requests whose `Host`
/// is not the issuer's.
pub async fn check_host(
    State(issuer): State<Option<Arc<Issuer>>>,
    req: Request,
    next: Next,
) -> Response {
    // RFC 9112 §3.2: a request with more than one Host is refused, whatever the path. Two
    // parts of a stack that each read a different one disagree on which site was asked for.
    if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
        return Error::invalid_request("more than one Host header").into_response();
    }
    let Some(issuer) = issuer else {
        return next.run(req).await;
    };
    let on_socket = req
        .extensions()
        .get::<Conn>()
        .is_some_and(|c| c.listener == Listener::AdminSocket);
    if on_socket || HOST_EXEMPT.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
    match host {
        Some(host) if issuer.matches_host(&host) => next.run(req).await,
        _ => Error::invalid_request("the Host header does not name this issuer").into_response(),
    }
}

/// Adds headers every response should carry.
pub async fn response_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
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
    response
}
