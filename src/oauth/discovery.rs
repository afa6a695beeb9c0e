//! Provider metadata: `/.well-known/openid-configuration` (OIDC Discovery 1.0) and
//! `/.well-known/oauth-authorization-server` (RFC 8414), one document for both.
//!
//! It advertises only what this server implements: relying parties configure themselves from
//! it, and a capability listed but missing fails them at the worst moment.

use crate::clients::GrantType;
use axum::extract::State;
use axum::response::Response;
use serde::Serialize;
use tailpass_verify::Alg;

use super::paths;
use crate::state::AppState;

/// The metadata document.
#[derive(Debug, Serialize)]
pub struct Metadata {
    /// The issuer.
    pub issuer: String,
    /// The authorization endpoint.
    pub authorization_endpoint: String,
    /// The token endpoint.
    pub token_endpoint: String,
    /// The userinfo endpoint.
    pub userinfo_endpoint: String,
    /// The JWK Set.
    pub jwks_uri: String,
    /// Dynamic registration.
    pub registration_endpoint: String,
    /// Introspection.
    pub introspection_endpoint: String,
    /// Revocation.
    pub revocation_endpoint: String,
    /// RP-initiated logout.
    pub end_session_endpoint: String,
    /// The revocation feed gateways subscribe to (docs/design.md "Contracts").
    pub revocation_feed_endpoint: String,
    /// Scopes a person may request.
    pub scopes_supported: Vec<&'static str>,
    /// Only the code flow.
    pub response_types_supported: Vec<&'static str>,
    /// Only query responses.
    pub response_modes_supported: Vec<&'static str>,
    /// Grants.
    pub grant_types_supported: Vec<&'static str>,
    /// Subject identifier types (OIDC Core §8): one `sub` per person for every client.
    pub subject_types_supported: Vec<&'static str>,
    /// ID token signing algorithms.
    pub id_token_signing_alg_values_supported: Vec<Alg>,
    /// Client authentication methods at the token endpoint.
    pub token_endpoint_auth_methods_supported: Vec<&'static str>,
    /// Client authentication at introspection.
    pub introspection_endpoint_auth_methods_supported: Vec<&'static str>,
    /// Client authentication at revocation.
    pub revocation_endpoint_auth_methods_supported: Vec<&'static str>,
    /// PKCE methods.
    pub code_challenge_methods_supported: Vec<&'static str>,
    /// Claims tokens may carry.
    pub claims_supported: Vec<&'static str>,
    /// DPoP proof algorithms (RFC 9449 §5.1).
    pub dpop_signing_alg_values_supported: Vec<Alg>,
    /// `iss` in authorization responses (RFC 9207).
    pub authorization_response_iss_parameter_supported: bool,
    /// Back-channel logout (OIDC Back-Channel Logout §2.1).
    pub backchannel_logout_supported: bool,
    /// Logout tokens carry `sid`.
    pub backchannel_logout_session_supported: bool,
    /// Request objects are not supported.
    pub request_parameter_supported: bool,
    /// Request URIs are not supported.
    pub request_uri_parameter_supported: bool,
    /// The `claims` parameter is not supported.
    pub claims_parameter_supported: bool,
    /// Clients may use the https URL of their metadata document as `client_id`
    /// (draft-ietf-oauth-client-id-metadata-document, MCP 2025-11-25): true when
    /// `client_metadata_hosts` is set.
    pub client_id_metadata_document_supported: bool,
}

/// Builds the document for this server.
pub fn document(state: &AppState) -> Metadata {
    let issuer = &state.issuer;
    let client_auth = vec!["client_secret_basic", "client_secret_post"];
    Metadata {
        issuer: issuer.url().to_owned(),
        authorization_endpoint: issuer.endpoint(paths::AUTHORIZE),
        token_endpoint: issuer.endpoint(paths::TOKEN),
        userinfo_endpoint: issuer.endpoint(paths::USERINFO),
        jwks_uri: issuer.endpoint(paths::JWKS),
        registration_endpoint: issuer.endpoint(paths::REGISTER),
        introspection_endpoint: issuer.endpoint(paths::INTROSPECT),
        revocation_endpoint: issuer.endpoint(paths::REVOKE),
        end_session_endpoint: issuer.endpoint(paths::LOGOUT),
        revocation_feed_endpoint: issuer.endpoint(paths::REVOCATIONS),
        scopes_supported: vec!["openid", "profile", "email", "groups", "offline_access"],
        response_types_supported: vec!["code"],
        response_modes_supported: vec!["query"],
        // RFC 7523 is served only with a [[federation]] table to verify assertions against.
        grant_types_supported: GrantType::ALL
            .into_iter()
            .filter(|g| *g != GrantType::JwtBearer || !state.federation.is_empty())
            .map(GrantType::as_str)
            .collect(),
        subject_types_supported: vec!["public"],
        id_token_signing_alg_values_supported: state.keys.enabled().iter().copied().collect(),
        token_endpoint_auth_methods_supported: vec![
            "client_secret_basic",
            "client_secret_post",
            "none",
        ],
        introspection_endpoint_auth_methods_supported: client_auth.clone(),
        revocation_endpoint_auth_methods_supported: vec![
            "client_secret_basic",
            "client_secret_post",
            "none",
        ],
        code_challenge_methods_supported: vec!["S256", "plain"],
        claims_supported: vec![
            "iss",
            "sub",
            "aud",
            "exp",
            "iat",
            "nbf",
            "jti",
            "nonce",
            "auth_time",
            "sid",
            "azp",
            "email",
            "name",
            "preferred_username",
            "username",
            "uid",
            "picture",
            "groups",
            "node",
            "nid",
            "tags",
            "tailnet",
            "key",
            "addresses",
        ],
        dpop_signing_alg_values_supported: Alg::ALL.to_vec(),
        authorization_response_iss_parameter_supported: true,
        backchannel_logout_supported: true,
        backchannel_logout_session_supported: true,
        request_parameter_supported: false,
        request_uri_parameter_supported: false,
        claims_parameter_supported: false,
        client_id_metadata_document_supported: state.clients.documents_enabled(),
    }
}

/// `GET` either well-known path. Public, so any origin may read it.
pub async fn metadata(State(state): State<AppState>) -> Response {
    super::public_document(&document(&state))
}
