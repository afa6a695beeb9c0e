//! Who the caller is and whether it may act: the extractors of the issuer's handlers (OAuth
//! and admin) that need the state and answer OAuth errors.
//!
//! - [`Caller`] and [`MaybeCaller`]: the caller's tailnet identity, from how the connection
//!   arrived (`identity::peer::identify`), asked once per request.
//! - [`SameOrigin`] (ambient authority): network identity is attached to every request from a
//!   node, like a cookie, so an endpoint that acts on the caller's identity refuses requests
//!   that `Sec-Fetch-Site` or `Origin` mark as coming from another site. Requests from
//!   programs (no such headers) pass: they are not a browser being steered.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use super::error::Error;
use crate::identity::Identity;
use crate::identity::peer::{CallerError, Conn, identify};
use crate::state::AppState;

/// The identity resolved for this request, cached in its extensions so that several
/// extractors ask WhoIs once.
#[derive(Clone)]
struct Resolved(Result<Arc<Identity>, CallerError>);

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
