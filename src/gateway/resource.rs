//! RFC 9728 protected-resource metadata: what a client that was refused (401) learns the
//! authorization server from. The gateway as a whole is the resource `<audience>`, its
//! metadata at `/.well-known/oauth-protected-resource`; each MCP route with prefix `P` is the
//! resource `<audience>P`, its metadata at `/.well-known/oauth-protected-resource<P>` (the
//! well-known path inserted before the resource's path, RFC 9728 §3.1), which is where MCP
//! clients look. Every 401 of the gateway names the document of the route refused
//! (`WWW-Authenticate: Bearer resource_metadata="…"`, RFC 9728 §5.1).

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use super::GatewayState;

/// The well-known path of protected-resource metadata.
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// The resource identifier of the route under `prefix` (`""` for the gateway as a whole) of
/// a gateway whose audience is `audience`.
pub fn identifier(audience: &str, prefix: &str) -> String {
    format!("{}{prefix}", audience.trim_end_matches('/'))
}

/// Where the metadata of the route under `prefix` is served, for a gateway reached at
/// `public_url`.
pub fn metadata_url(public_url: &str, prefix: &str) -> String {
    format!("{}{WELL_KNOWN}{prefix}", public_url.trim_end_matches('/'))
}

/// A protected resource's metadata document (RFC 9728 §2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Metadata {
    /// The resource identifier, which tokens for it carry in `aud`.
    pub resource: String,
    /// The issuer whose tokens are accepted.
    pub authorization_servers: Vec<String>,
    /// Tokens come in the `Authorization` header only.
    pub bearer_methods_supported: Vec<&'static str>,
    /// A name for people: the MCP server's name, for its route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_name: Option<String>,
}

impl Metadata {
    /// The metadata of the route under `prefix`, named `name`, of a gateway for `audience`
    /// that trusts `issuer`.
    pub fn new(audience: &str, issuer: &str, prefix: &str, name: Option<&str>) -> Metadata {
        Metadata {
            resource: identifier(audience, prefix),
            authorization_servers: vec![issuer.to_owned()],
            bearer_methods_supported: vec!["header"],
            resource_name: name.map(str::to_owned),
        }
    }
}

impl IntoResponse for Metadata {
    fn into_response(self) -> Response {
        let mut response = axum::Json(self).into_response();
        // Public, like the issuer's discovery: any origin may read it, a cache may keep it.
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
}

/// The metadata routes: the gateway's own, and one per document in `documents` (each
/// served at the well-known path followed by its prefix).
pub fn router(gateway: Metadata, documents: Vec<(String, Metadata)>) -> Router<GatewayState> {
    let mut router = Router::new().route(WELL_KNOWN, get(move || async move { gateway }));
    for (prefix, document) in documents {
        router = router.route(
            &format!("{WELL_KNOWN}{prefix}"),
            get(move || async move { document }),
        );
    }
    router
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routes_resource_and_metadata_url_append_its_prefix() {
        assert_eq!(
            identifier("https://gw.example.ts.net/", "/mcp/docs"),
            "https://gw.example.ts.net/mcp/docs"
        );
        assert_eq!(
            metadata_url("http://127.0.0.1:8080", ""),
            "http://127.0.0.1:8080/.well-known/oauth-protected-resource"
        );
        let document = Metadata::new("https://gw", "https://idp", "/mcp/docs", Some("docs"));
        assert_eq!(
            serde_json::to_value(&document).unwrap(),
            serde_json::json!({
                "resource": "https://gw/mcp/docs",
                "authorization_servers": ["https://idp"],
                "bearer_methods_supported": ["header"],
                "resource_name": "docs",
            })
        );
    }
}
