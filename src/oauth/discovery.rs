//! Provider metadata: `/.well-known/openid-configuration` (OIDC Discovery 1.0) and
//! `/.well-known/oauth-authorization-server` (RFC 8414), one document for both.
//!
//! It advertises only what this server implements: relying parties configure themselves from
//! it, and a capability listed but missing fails them at the worst moment.

use axum::extract::State;
use axum::response::Response;
use serde::Serialize;
use tailpass_verify::Alg;

use super::paths;
use crate::app::AppState;

/// The metadata document.
#[derive(Debug, Serialize)]
pub struct Metadata {
    /// The issuer.
    pub issuer: String,
    /// The JWK Set.
    pub jwks_uri: String,
    /// Dynamic registration.
    pub registration_endpoint: String,
    /// Subject identifier types (OIDC Core §8): one `sub` per person for every client.
    pub subject_types_supported: Vec<&'static str>,
    /// ID token signing algorithms.
    pub id_token_signing_alg_values_supported: Vec<Alg>,
}

/// Builds the document for this server.
pub fn document(state: &AppState) -> Metadata {
    let issuer = &state.issuer;
    Metadata {
        issuer: issuer.url().to_owned(),
        jwks_uri: issuer.endpoint(paths::JWKS),
        registration_endpoint: issuer.endpoint(paths::REGISTER),
        subject_types_supported: vec!["public"],
        id_token_signing_alg_values_supported: state.keys.enabled().iter().copied().collect(),
    }
}

/// `GET` either well-known path. Public, so any origin may read it.
pub async fn metadata(State(state): State<AppState>) -> Response {
    super::public_document(&document(&state))
}
