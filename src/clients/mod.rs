//! Relying parties: what each registered client is. The registry that finds and changes them
//! over the store is `client_registry`.
//!
//! Clients come from three places — the configuration file (static, read-only), the admin API
//! and CLI, and dynamic registration (RFC 7591) — and share one type, [`Client`]. A client's
//! secret exists in clear only in the response that creates it; tailpass keeps its SHA-256.
//!
//! This module does not authenticate requests at the token endpoint; it only answers whether
//! a presented secret is the client's ([`Client::secret_matches`]).

use std::fmt;

use serde::{Deserialize, Serialize};
use tailpass_verify::{Alg, UnixTime};

use crate::secret::{SecretHash, random_token};

pub mod metadata;
pub mod redirect;

pub use metadata::{ClientMetadata, MetadataError, MetadataRules, Registrant, ValidMetadata};

/// A client identifier.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientId(pub String);

impl ClientId {
    /// A new random, unguessable client id.
    pub fn generate() -> ClientId {
        ClientId(random_token(16))
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a client authenticates at the token endpoint (RFC 7591 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// HTTP Basic with the client id and secret (RFC 6749 §2.3.1).
    ClientSecretBasic,
    /// The secret as a form parameter.
    ClientSecretPost,
    /// A public client: no secret; PKCE S256 is mandatory.
    None,
}

impl AuthMethod {
    /// Parses the RFC 7591 name.
    pub fn parse(name: &str) -> Option<AuthMethod> {
        match name {
            "client_secret_basic" => Some(AuthMethod::ClientSecretBasic),
            "client_secret_post" => Some(AuthMethod::ClientSecretPost),
            "none" => Some(AuthMethod::None),
            _ => None,
        }
    }

    /// The RFC 7591 name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
            AuthMethod::None => "none",
        }
    }
}

/// A grant a client may use. Its registered name ([`GrantType::as_str`]) is written once: it
/// is what registration metadata, stored records, discovery and `/token`'s `grant_type` use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum GrantType {
    /// The authorization code grant.
    AuthorizationCode,
    /// Refresh tokens.
    RefreshToken,
    /// Client credentials with the client's secret.
    ClientCredentials,
    /// RFC 8693 token exchange.
    TokenExchange,
    /// RFC 7523: a JWT another issuer signed, as the grant (federation, never a client's).
    JwtBearer,
}

impl GrantType {
    /// Every grant type, in the order discovery lists them.
    pub const ALL: [GrantType; 5] = [
        GrantType::AuthorizationCode,
        GrantType::RefreshToken,
        GrantType::ClientCredentials,
        GrantType::TokenExchange,
        GrantType::JwtBearer,
    ];

    /// Whether a client may register for the grant: the federation grant (RFC 7523) is the
    /// external token's, never a registered client's.
    pub fn registrable(self) -> bool {
        self != GrantType::JwtBearer
    }

    /// Parses the grant type's registered name.
    pub fn parse(name: &str) -> Option<GrantType> {
        GrantType::ALL.into_iter().find(|g| g.as_str() == name)
    }

    /// The registered name (RFC 6749 §4, RFC 8693 §2.1).
    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::AuthorizationCode => "authorization_code",
            GrantType::RefreshToken => "refresh_token",
            GrantType::ClientCredentials => "client_credentials",
            GrantType::TokenExchange => tailpass_verify::claims::TOKEN_EXCHANGE_GRANT,
            GrantType::JwtBearer => "urn:ietf:params:oauth:grant-type:jwt-bearer",
        }
    }
}

impl TryFrom<String> for GrantType {
    type Error = String;

    fn try_from(name: String) -> Result<GrantType, String> {
        GrantType::parse(&name).ok_or_else(|| format!("unknown grant type {name:?}"))
    }
}

impl From<GrantType> for &'static str {
    fn from(grant: GrantType) -> &'static str {
        grant.as_str()
    }
}

/// Where a client was registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientOrigin {
    /// The configuration file; changed only by editing it.
    Config,
    /// The admin API or `tailpass clients add`.
    Admin,
    /// Dynamic registration (RFC 7591); shows a consent page before its first code.
    Dynamic,
    /// A Client ID Metadata Document: the client id is the document's https URL, fetched
    /// by `client_metadata`, never stored; shows a consent page like a dynamic client.
    Metadata,
}

/// A registered client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    /// The client id.
    pub client_id: ClientId,
    /// A human-readable name.
    #[serde(default)]
    pub client_name: String,
    /// The SHA-256 of the client secret; `None` for a public client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_sha256: Option<SecretHash>,
    /// How it authenticates at the token endpoint.
    pub token_endpoint_auth_method: AuthMethod,
    /// Registered redirect URIs, matched exactly.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Registered post-logout redirect URIs, matched exactly.
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
    /// Allowed grants.
    pub grant_types: Vec<GrantType>,
    /// ID token algorithm; `None` means RS256, OIDC's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token_signed_response_alg: Option<Alg>,
    /// RFC 8707 resources the client may request (`*` for any, operators only).
    #[serde(default)]
    pub resources: Vec<String>,
    /// Who may log in to this client: logins, `group:`s, or `*`; empty means any tailnet user.
    #[serde(default)]
    pub users: Vec<String>,
    /// Back-channel logout endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backchannel_logout_uri: Option<String>,
    /// Whether logout tokens must carry `sid`.
    #[serde(default)]
    pub backchannel_logout_session_required: bool,
    /// Where it was registered.
    pub origin: ClientOrigin,
    /// The SHA-256 of the RFC 7592 registration access token (dynamic clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_token_sha256: Option<SecretHash>,
    /// When it was registered.
    pub created_at: UnixTime,
    /// Who registered it: a login or node name, or `admin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// The version of its registered metadata, raised by every change to it (an RFC 7592
    /// update, an administrator's edit): a consent given to an older version is asked again.
    #[serde(default)]
    pub version: u64,
}

impl Client {
    /// Builds a client from validated metadata.
    pub fn from_metadata(
        client_id: ClientId,
        meta: ValidMetadata,
        origin: ClientOrigin,
        now: UnixTime,
        created_by: Option<String>,
    ) -> Client {
        Client {
            client_id,
            client_name: meta.client_name,
            secret_sha256: None,
            token_endpoint_auth_method: meta.token_endpoint_auth_method,
            redirect_uris: meta.redirect_uris,
            post_logout_redirect_uris: meta.post_logout_redirect_uris,
            grant_types: meta.grant_types,
            id_token_signed_response_alg: meta.id_token_signed_response_alg,
            resources: meta.resources,
            users: Vec::new(),
            backchannel_logout_uri: meta.backchannel_logout_uri,
            backchannel_logout_session_required: meta.backchannel_logout_session_required,
            origin,
            registration_token_sha256: None,
            created_at: now,
            created_by,
            version: 0,
        }
    }

    /// Replaces the registered metadata, keeping identity, secret and provenance, and raises
    /// the version, so that people who consented to what it was are asked again.
    pub fn apply_metadata(&mut self, meta: ValidMetadata) {
        self.version = self.version.saturating_add(1);
        self.client_name = meta.client_name;
        self.token_endpoint_auth_method = meta.token_endpoint_auth_method;
        self.redirect_uris = meta.redirect_uris;
        self.post_logout_redirect_uris = meta.post_logout_redirect_uris;
        self.grant_types = meta.grant_types;
        self.id_token_signed_response_alg = meta.id_token_signed_response_alg;
        self.resources = meta.resources;
        self.backchannel_logout_uri = meta.backchannel_logout_uri;
        self.backchannel_logout_session_required = meta.backchannel_logout_session_required;
    }

    /// Whether `uri` is one of this client's redirect URIs: exactly, or for a public client
    /// a loopback `http` URI that differs only by its port ([`redirect::matches`]).
    pub fn allows_redirect(&self, uri: &str) -> bool {
        self.redirect_uris
            .iter()
            .any(|registered| redirect::matches(registered, uri, self.is_public()))
    }

    /// Whether the person is asked before this client's first code: it registered itself
    /// (dynamically, or by a metadata document), not through an administrator.
    pub fn needs_consent(&self) -> bool {
        matches!(self.origin, ClientOrigin::Dynamic | ClientOrigin::Metadata)
    }

    /// The host of a metadata document client's URL, which the consent page shows so the
    /// person sees which site is asking; `None` for registered clients.
    pub fn document_host(&self) -> Option<String> {
        if self.origin != ClientOrigin::Metadata {
            return None;
        }
        url::Url::parse(&self.client_id.0)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
    }

    /// Whether this is a public client (no secret, PKCE mandatory).
    pub fn is_public(&self) -> bool {
        self.token_endpoint_auth_method == AuthMethod::None
    }

    /// Whether `presented` is this client's secret (constant-time). Always false for a public
    /// client.
    pub fn secret_matches(&self, presented: &str) -> bool {
        self.secret_sha256
            .as_ref()
            .is_some_and(|hash| hash.matches(presented))
    }

    /// The ID token algorithm to use: the registered one, else the server's default for
    /// clients that chose none (RS256 while it is enabled, OIDC Core §2).
    pub fn id_token_alg(&self, server_default: Alg) -> Alg {
        self.id_token_signed_response_alg.unwrap_or(server_default)
    }

    /// The RFC 7591 metadata view of this client, as `/register` answers it.
    pub fn metadata(&self, default_alg: Alg) -> ClientMetadata {
        ClientMetadata {
            redirect_uris: Some(self.redirect_uris.clone()),
            token_endpoint_auth_method: Some(self.token_endpoint_auth_method.as_str().into()),
            grant_types: Some(self.grant_types.iter().map(|g| g.as_str().into()).collect()),
            response_types: Some(vec!["code".into()]),
            client_name: Some(self.client_name.clone()),
            id_token_signed_response_alg: Some(self.id_token_alg(default_alg).as_str().into()),
            post_logout_redirect_uris: Some(self.post_logout_redirect_uris.clone()),
            backchannel_logout_uri: self.backchannel_logout_uri.clone(),
            backchannel_logout_session_required: Some(self.backchannel_logout_session_required),
            resources: Some(self.resources.clone()),
            jwks_uri: None,
            jwks: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::GrantType;

    #[test]
    fn a_grant_types_name_parses_serializes_and_deserializes_as_one() {
        for grant in GrantType::ALL {
            assert_eq!(GrantType::parse(grant.as_str()), Some(grant));
            let json = serde_json::to_string(&grant).unwrap();
            assert_eq!(json, format!("\"{}\"", grant.as_str()));
            assert_eq!(serde_json::from_str::<GrantType>(&json).unwrap(), grant);
        }
        assert_eq!(GrantType::parse("password"), None);
        let unknown = serde_json::from_str::<GrantType>("\"implicit\"").unwrap_err();
        assert!(unknown.to_string().contains("implicit"), "{unknown}");
    }
}
