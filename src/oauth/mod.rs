//! The OAuth 2.0 / OpenID Connect endpoints, one file each.
//!
//! Handlers are thin: extract, call one domain operation, map its error into
//! [`error::Error`]. They never touch SQL, keys or policy directly.

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::state::AppState;

pub mod authorize;
pub mod caller;
pub mod client_auth;
pub mod discovery;
pub mod error;
pub mod input;
pub mod introspect;
pub mod jwks;
pub mod logout;
pub mod page;
pub mod register;
pub mod revocation_feed;
pub mod revoke;
pub mod token;
pub mod userinfo;

/// Endpoint paths, shared by the router and the discovery document.
pub mod paths {
    /// OpenID Provider metadata (OIDC Discovery §4).
    pub const OPENID_CONFIGURATION: &str = "/.well-known/openid-configuration";
    /// Authorization server metadata (RFC 8414 §3).
    pub const OAUTH_METADATA: &str = "/.well-known/oauth-authorization-server";
    /// The JWK Set.
    pub const JWKS: &str = "/.well-known/jwks.json";
    /// Dynamic client registration (RFC 7591); `/register/{client_id}` is RFC 7592's.
    pub const REGISTER: &str = "/register";
    /// The authorization endpoint.
    pub const AUTHORIZE: &str = "/authorize";
    /// Where the consent page posts.
    pub const AUTHORIZE_CONSENT: &str = "/authorize/consent";
    /// The token endpoint.
    pub const TOKEN: &str = "/token";
    /// The userinfo endpoint.
    pub const USERINFO: &str = "/userinfo";
    /// Token introspection (RFC 7662).
    pub const INTROSPECT: &str = "/introspect";
    /// Token revocation (RFC 7009).
    pub const REVOKE: &str = "/revoke";
    /// RP-initiated logout (`end_session_endpoint`).
    pub const LOGOUT: &str = "/logout";
    /// The revocation feed (`revocation_feed_endpoint`).
    pub const REVOCATIONS: &str = "/revocations";
}

/// The OAuth routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(paths::OPENID_CONFIGURATION, get(discovery::metadata))
        .route(paths::OAUTH_METADATA, get(discovery::metadata))
        .route(paths::JWKS, get(jwks::jwks))
        .route(paths::REGISTER, axum::routing::post(register::register))
        .route(paths::AUTHORIZE, get(authorize::get).post(authorize::post))
        .route(
            paths::AUTHORIZE_CONSENT,
            axum::routing::post(authorize::consent),
        )
        .route(
            paths::TOKEN,
            axum::routing::post(token::token).options(token::preflight),
        )
        .route(
            paths::USERINFO,
            get(userinfo::userinfo).post(userinfo::userinfo),
        )
        .route(
            paths::INTROSPECT,
            axum::routing::post(introspect::introspect),
        )
        .route(paths::REVOKE, axum::routing::post(revoke::revoke))
        .route(paths::LOGOUT, get(logout::get).post(logout::post))
        .route(paths::REVOCATIONS, get(revocation_feed::feed))
        .route(
            "/register/{client_id}",
            get(register::read)
                .put(register::update)
                .delete(register::delete),
        )
}

/// A public, cacheable JSON document (discovery, JWKS) that any origin may read.
pub fn public_document<T: Serialize>(body: &T) -> Response {
    let mut response = axum::Json(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// A JSON answer that carries a credential (a secret, a token) and must not be cached
/// (RFC 6749 §5.1).
pub fn no_store<T: Serialize>(status: StatusCode, body: &T) -> Response {
    // Sized for a signed token or two, so the common answer is written without regrowing.
    let mut bytes = Vec::with_capacity(2048);
    let mut response = match serde_json::to_writer(&mut bytes, body) {
        Ok(()) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(e) => return error::Error::server_error(&e).into_response(),
    };
    mark_no_store(response.headers_mut());
    response
}

/// Marks a response as not to be stored (`Cache-Control: no-store`, `Pragma: no-cache`).
pub fn mark_no_store(headers: &mut axum::http::HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}
