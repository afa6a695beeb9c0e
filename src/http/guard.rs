//! Request guards that do not depend on who the caller is.
//!
//! - **Host** (DNS rebinding): a request must name the issuer's host. Otherwise a page on
//!   `evil.example` whose name an attacker re-points at a tailnet address could reach tailpass
//!   with the victim's ambient identity.
//! - **Same origin** (ambient authority): network identity is attached to every request from a
//!   node, like a cookie, so an endpoint that acts on the caller's identity refuses requests
//!   that `Sec-Fetch-Site` or `Origin` mark as coming from another site. Requests from
//!   programs (no such headers) pass: they are not a browser being steered.
//! - **Response headers** every answer carries.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::peer::{Conn, Listener};
use crate::app::AppState;
use crate::oauth::error::Error;

/// Paths answered whatever the `Host`: orchestrators probe health by pod IP.
const HOST_EXEMPT: [&str; 1] = ["/healthz"];

/// Refuses requests whose `Host` is not the issuer's.
pub async fn check_host(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // RFC 9112 §3.2: a request with more than one Host is refused, whatever the path. Two
    // parts of a stack that each read a different one disagree on which site was asked for.
    if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
        return Error::invalid_request("more than one Host header").into_response();
    }
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
        Some(host) if state.issuer.matches_host(&host) => next.run(req).await,
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

/// Proof that a request is not a cross-site browser request. Endpoints that act on the
/// caller's network identity take this extractor.
#[derive(Debug, Clone, Copy)]
pub struct SameOrigin;

/// Whether the request's fetch metadata and `Origin` allow acting on ambient identity.
pub fn is_same_origin(headers: &axum::http::HeaderMap, origin: &str) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        // `same-site` is not enough: every node of a tailnet shares the registrable domain
        // `<tailnet>.ts.net`, so another app on the tailnet is "same-site".
        if !matches!(site.to_str(), Ok("same-origin") | Ok("none")) {
            return false;
        }
    }
    match headers.get(header::ORIGIN) {
        Some(value) => value.to_str().is_ok_and(|v| v == origin),
        None => true,
    }
}

impl FromRequestParts<AppState> for SameOrigin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        if is_same_origin(&parts.headers, state.issuer.origin()) {
            Ok(SameOrigin)
        } else {
            Err(Error::access_denied(
                "cross-site request refused: this endpoint acts on the caller's network identity",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn headers(pairs: &[(&str, &str)]) -> axum::http::HeaderMap {
        let mut req = Request::builder().uri("/register");
        for (k, v) in pairs {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0.headers
    }

    const ORIGIN: &str = "https://idp.tail1234.ts.net";

    #[test]
    fn programs_and_same_origin_pages_pass() {
        assert!(is_same_origin(&headers(&[]), ORIGIN));
        assert!(is_same_origin(
            &headers(&[("sec-fetch-site", "same-origin"), ("origin", ORIGIN)]),
            ORIGIN
        ));
        assert!(is_same_origin(
            &headers(&[("sec-fetch-site", "none")]),
            ORIGIN
        ));
    }

    #[test]
    fn other_sites_are_refused() {
        assert!(!is_same_origin(
            &headers(&[("sec-fetch-site", "cross-site")]),
            ORIGIN
        ));
        assert!(!is_same_origin(
            &headers(&[("sec-fetch-site", "same-site")]),
            ORIGIN
        ));
        assert!(!is_same_origin(
            &headers(&[("origin", "https://evil.tail1234.ts.net")]),
            ORIGIN
        ));
        assert!(!is_same_origin(&headers(&[("origin", "null")]), ORIGIN));
    }
}
