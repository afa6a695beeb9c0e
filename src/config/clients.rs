//! Static clients: the `[[client]]` tables of the configuration file, registered by the
//! operator and validated like an operator's registration through the admin API.

use std::collections::BTreeSet;

use serde::Deserialize;
use tailpass_verify::UnixTime;

use super::{ConfigError, Settings, invalid};
use crate::clients::{Client, ClientId, ClientMetadata, ClientOrigin, Registrant};
use crate::secret::SecretHash;

/// A static client in the file (`[[client]]`), as written; validated into a [`Client`] at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    client_id: String,
    #[serde(default)]
    client_name: Option<String>,
    /// The SHA-256 (hex) of the secret; the file never holds a secret in clear.
    #[serde(default)]
    secret_sha256: Option<SecretHash>,
    #[serde(default)]
    token_endpoint_auth_method: Option<String>,
    #[serde(default)]
    redirect_uris: Vec<String>,
    #[serde(default)]
    post_logout_redirect_uris: Vec<String>,
    #[serde(default)]
    grant_types: Option<Vec<String>>,
    #[serde(default)]
    id_token_signed_response_alg: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    backchannel_logout_uri: Option<String>,
    #[serde(default)]
    backchannel_logout_session_required: Option<bool>,
}

/// The file's clients, validated as an operator's registrations under `settings`' rules.
pub(super) fn static_clients(
    entries: &[ClientEntry],
    settings: &Settings,
) -> Result<Vec<Client>, ConfigError> {
    let rules = settings.metadata_rules(Registrant::Operator);
    let mut seen = BTreeSet::new();
    let mut clients = Vec::with_capacity(entries.len());
    for entry in entries {
        let id = &entry.client_id;
        if id.is_empty() || !seen.insert(id.clone()) {
            return Err(invalid(format!(
                "[[client]] {id:?}: client_id must be unique and non-empty"
            )));
        }
        let meta = ClientMetadata {
            redirect_uris: Some(entry.redirect_uris.clone()),
            token_endpoint_auth_method: entry.token_endpoint_auth_method.clone(),
            // Operators' clients refresh unless told otherwise; RFC 7591's default (code only)
            // is for self-registration.
            grant_types: Some(
                entry
                    .grant_types
                    .clone()
                    .unwrap_or_else(|| vec!["authorization_code".into(), "refresh_token".into()]),
            ),
            response_types: None,
            client_name: entry.client_name.clone(),
            id_token_signed_response_alg: entry.id_token_signed_response_alg.clone(),
            post_logout_redirect_uris: Some(entry.post_logout_redirect_uris.clone()),
            backchannel_logout_uri: entry.backchannel_logout_uri.clone(),
            backchannel_logout_session_required: entry.backchannel_logout_session_required,
            resources: Some(entry.resources.clone()),
            jwks_uri: None,
            jwks: None,
        }
        .validate(&rules)
        .map_err(|e| invalid(format!("[[client]] {id:?}: {e}")))?;
        let mut client = Client::from_metadata(
            ClientId(id.clone()),
            meta,
            ClientOrigin::Config,
            UnixTime(0),
            Some("config".into()),
        );
        match (client.is_public(), &entry.secret_sha256) {
            (true, Some(_)) => {
                return Err(invalid(format!(
                    "[[client]] {id:?}: a public client has no secret_sha256"
                )));
            }
            (false, None) => {
                return Err(invalid(format!(
                    "[[client]] {id:?}: secret_sha256 is required (the SHA-256 hex of the secret; \
                     `printf %s SECRET | sha256sum`), or token_endpoint_auth_method = \"none\""
                )));
            }
            _ => {}
        }
        client.secret_sha256 = entry.secret_sha256.clone();
        client.users = entry.users.clone();
        clients.push(client);
    }
    Ok(clients)
}
