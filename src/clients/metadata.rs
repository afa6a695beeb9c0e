//! Client metadata (RFC 7591 §2) as a registrant sends it, and its validation.
//!
//! The same rules apply whatever the door: dynamic registration at `/register`, `tailpass
//! clients add`, the admin API, and static clients in the configuration file. Unknown
//! metadata is ignored as RFC 7591 §2 allows; metadata tailpass does not implement (implicit
//! grant, private-key JWT authentication, `jwks_uri`) is refused rather than silently
//! accepted. A `jwks` key set is the exception: accepted and not kept, since nothing uses it.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use tailpass_verify::Alg;

use super::redirect::{self, RedirectRules};
use super::{AuthMethod, GrantType};

/// The longest client name kept.
const MAX_NAME: usize = 200;
/// The most URIs of one kind a client may register.
const MAX_URIS: usize = 32;

/// Registration metadata as received. Every field is optional on the wire; defaults are
/// applied in [`ClientMetadata::validate`].
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ClientMetadata {
    /// Where codes may be delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_uris: Option<Vec<String>>,
    /// How the client authenticates at the token endpoint; `none` makes a public client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint_auth_method: Option<String>,
    /// The grants the client will use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_types: Option<Vec<String>>,
    /// The response types the client will use; only `code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_types: Option<Vec<String>>,
    /// A human-readable name, shown on the consent page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    /// The ID token signing algorithm; RS256 when absent (OIDC Core §2 / Registration §2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token_signed_response_alg: Option<String>,
    /// Where RP-initiated logout may send the browser back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_logout_redirect_uris: Option<Vec<String>>,
    /// Where back-channel logout tokens are POSTed (OIDC Back-Channel Logout §2.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backchannel_logout_uri: Option<String>,
    /// Whether the logout token must carry `sid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backchannel_logout_session_required: Option<bool>,
    /// tailpass extension: the RFC 8707 resources this client may request tokens for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<String>>,
    /// Present only to be refused: tailpass does not implement `private_key_jwt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// The client's key set by value: accepted and ignored, since no client key is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
}

/// Metadata that passed validation, with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidMetadata {
    /// The client's name.
    pub client_name: String,
    /// Registered redirect URIs, exactly as given.
    pub redirect_uris: Vec<String>,
    /// Registered post-logout redirect URIs.
    pub post_logout_redirect_uris: Vec<String>,
    /// Token endpoint authentication.
    pub token_endpoint_auth_method: AuthMethod,
    /// Allowed grants.
    pub grant_types: Vec<GrantType>,
    /// ID token algorithm, `None` for the RS256 default.
    pub id_token_signed_response_alg: Option<Alg>,
    /// Back-channel logout endpoint.
    pub backchannel_logout_uri: Option<String>,
    /// Whether logout tokens must carry `sid`.
    pub backchannel_logout_session_required: bool,
    /// Resources the client may request.
    pub resources: Vec<String>,
}

/// Why metadata was refused, with the RFC 7591 §3.2.2 error it maps to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// Occurs when a redirect URI (or post-logout redirect URI) breaks the rules in
    /// [`redirect`]. Maps to `invalid_redirect_uri`.
    #[error("{0}")]
    RedirectUri(String),
    /// Occurs when any other field is invalid or unsupported. Maps to
    /// `invalid_client_metadata`.
    #[error("{0}")]
    Metadata(String),
}

/// What validation needs to know about the server.
#[derive(Debug, Clone)]
pub struct MetadataRules {
    /// Redirect URI rules.
    pub redirect: RedirectRules,
    /// Algorithms the server can sign ID tokens with.
    pub algs: BTreeSet<Alg>,
    /// Who registers: operators may register the wildcard resource `*` and any back-channel
    /// logout URI; self-registered clients may not.
    pub registrant: Registrant,
}

/// Who is registering a client, which decides what it may register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registrant {
    /// The CLI, the admin API or the configuration file: trusted with internal endpoints.
    Operator,
    /// Dynamic registration (RFC 7591) by a tailnet user with the `allow_dcr` grant.
    SelfRegistered,
}

fn metadata(msg: impl Into<String>) -> MetadataError {
    MetadataError::Metadata(msg.into())
}

impl ClientMetadata {
    /// Applies defaults and checks every field.
    pub fn validate(self, rules: &MetadataRules) -> Result<ValidMetadata, MetadataError> {
        if self.jwks_uri.is_some() {
            return Err(metadata(
                "jwks_uri is not supported: tailpass clients authenticate with a secret or, when public, with PKCE",
            ));
        }
        // A key set by value is accepted and ignored: nothing here uses a client's keys
        // (private_key_jwt and request objects stay refused), and registrants such as the
        // OpenID conformance suite always send one. It must at least be a JWK Set's shape.
        if let Some(jwks) = &self.jwks
            && !jwks.get("keys").is_some_and(serde_json::Value::is_array)
        {
            return Err(metadata(
                "jwks must be a JWK Set: an object with a \"keys\" array",
            ));
        }
        let method = match self.token_endpoint_auth_method.as_deref() {
            None => AuthMethod::ClientSecretBasic,
            Some(name) => AuthMethod::parse(name).ok_or_else(|| {
                metadata(format!(
                    "token_endpoint_auth_method {name:?} is not supported (client_secret_basic, client_secret_post, none)"
                ))
            })?,
        };
        let grant_types = match self.grant_types {
            None => vec![GrantType::AuthorizationCode],
            Some(names) if names.is_empty() => vec![GrantType::AuthorizationCode],
            Some(names) => {
                let mut grants = Vec::new();
                for name in &names {
                    let grant = GrantType::parse(name)
                        .filter(|g| g.registrable())
                        .ok_or_else(|| metadata(format!("grant type {name:?} is not supported")))?;
                    if !grants.contains(&grant) {
                        grants.push(grant);
                    }
                }
                grants
            }
        };
        if method == AuthMethod::None && grant_types.contains(&GrantType::ClientCredentials) {
            return Err(metadata(
                "a public client (token_endpoint_auth_method none) cannot use client_credentials",
            ));
        }
        if let Some(types) = &self.response_types
            && types.iter().any(|t| t != "code")
        {
            return Err(metadata("only the response type \"code\" is supported"));
        }
        let redirect_uris = self.redirect_uris.unwrap_or_default();
        check_uris("redirect_uris", &redirect_uris, rules)?;
        if grant_types.contains(&GrantType::AuthorizationCode) && redirect_uris.is_empty() {
            return Err(MetadataError::RedirectUri(
                "redirect_uris is required for the authorization_code grant".into(),
            ));
        }
        let post_logout_redirect_uris = self.post_logout_redirect_uris.unwrap_or_default();
        check_uris(
            "post_logout_redirect_uris",
            &post_logout_redirect_uris,
            rules,
        )?;
        let id_token_signed_response_alg = match self.id_token_signed_response_alg.as_deref() {
            None => None,
            Some(name) => {
                let alg: Alg = name
                    .parse()
                    .map_err(|e: tailpass_verify::alg::UnknownAlg| metadata(e.to_string()))?;
                if !rules.algs.contains(&alg) {
                    return Err(metadata(format!("this server does not sign with {alg}")));
                }
                Some(alg)
            }
        };
        if let Some(uri) = &self.backchannel_logout_uri {
            // A logout URI receives tokens by POST; it must not have a fragment and must be
            // https (or loopback http), the same rules as a redirect URI minus app schemes.
            redirect::check(uri, rules.redirect).map_err(metadata)?;
            if !(uri.starts_with("https:") || uri.starts_with("http:")) {
                return Err(metadata("backchannel_logout_uri must be an http(s) URI"));
            }
            if rules.registrant == Registrant::SelfRegistered {
                redirect::check_dynamic_backchannel(uri, &redirect_uris)
                    .map_err(|reason| metadata(format!("backchannel_logout_uri: {reason}")))?;
            }
        }
        let resources = self.resources.unwrap_or_default();
        if resources.len() > MAX_URIS {
            return Err(metadata(format!("at most {MAX_URIS} resources")));
        }
        for resource in &resources {
            if resource == "*" {
                if rules.registrant != Registrant::Operator {
                    return Err(metadata(
                        "the wildcard resource \"*\" cannot be self-registered",
                    ));
                }
                continue;
            }
            let parsed = url::Url::parse(resource)
                .map_err(|_| metadata(format!("resource {resource:?} is not an absolute URI")))?;
            if parsed.fragment().is_some() {
                return Err(metadata(format!(
                    "resource {resource:?} has a fragment (RFC 8707 §2)"
                )));
            }
        }
        let client_name = self.client_name.unwrap_or_default();
        if client_name.chars().count() > MAX_NAME || client_name.chars().any(char::is_control) {
            return Err(metadata(format!(
                "client_name must be at most {MAX_NAME} printable characters"
            )));
        }
        Ok(ValidMetadata {
            client_name,
            redirect_uris,
            post_logout_redirect_uris,
            token_endpoint_auth_method: method,
            grant_types,
            id_token_signed_response_alg,
            backchannel_logout_uri: self.backchannel_logout_uri,
            backchannel_logout_session_required: self
                .backchannel_logout_session_required
                .unwrap_or(false),
            resources,
        })
    }
}

fn check_uris(field: &str, uris: &[String], rules: &MetadataRules) -> Result<(), MetadataError> {
    if uris.len() > MAX_URIS {
        return Err(MetadataError::RedirectUri(format!(
            "{field}: at most {MAX_URIS} URIs"
        )));
    }
    for uri in uris {
        redirect::check(uri, rules.redirect)
            .map_err(|reason| MetadataError::RedirectUri(format!("{field}: {reason}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> MetadataRules {
        MetadataRules {
            redirect: RedirectRules::default(),
            algs: [Alg::ES256, Alg::RS256].into_iter().collect(),
            registrant: Registrant::SelfRegistered,
        }
    }

    fn meta(json: serde_json::Value) -> ClientMetadata {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn defaults_make_a_confidential_code_client() {
        let valid = meta(serde_json::json!({"redirect_uris": ["https://app.example/cb"]}))
            .validate(&rules())
            .unwrap();
        assert_eq!(
            valid.token_endpoint_auth_method,
            AuthMethod::ClientSecretBasic
        );
        assert_eq!(valid.grant_types, vec![GrantType::AuthorizationCode]);
        assert_eq!(valid.id_token_signed_response_alg, None);
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (serde_json::json!({}), "redirect_uris is required"),
            (
                serde_json::json!({"redirect_uris": ["javascript:alert(1)"]}),
                "scheme",
            ),
            (
                serde_json::json!({"redirect_uris": ["https://a.example/cb"], "grant_types": ["implicit"]}),
                "implicit",
            ),
            (
                serde_json::json!({"redirect_uris": ["https://a.example/cb"], "response_types": ["token"]}),
                "code",
            ),
            (
                serde_json::json!({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "private_key_jwt"}),
                "private_key_jwt",
            ),
            (
                serde_json::json!({"redirect_uris": ["https://a.example/cb"], "id_token_signed_response_alg": "HS256"}),
                "HS256",
            ),
            (
                serde_json::json!({"redirect_uris": ["https://a.example/cb"], "id_token_signed_response_alg": "EdDSA"}),
                "EdDSA",
            ),
            (
                serde_json::json!({"redirect_uris": ["https://a.example/cb"], "jwks_uri": "https://a.example/jwks"}),
                "jwks",
            ),
            (
                serde_json::json!({"redirect_uris": ["https://a.example/cb"], "resources": ["*"]}),
                "wildcard",
            ),
            (
                serde_json::json!({"redirect_uris": ["https://a.example/cb"], "resources": ["not a uri"]}),
                "absolute",
            ),
            (
                serde_json::json!({"redirect_uris": ["https://a.example/cb"], "client_name": "a\u{0007}b"}),
                "printable",
            ),
            (
                serde_json::json!({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "none", "grant_types": ["client_credentials"]}),
                "public client",
            ),
            (
                serde_json::json!({"redirect_uris": ["https://a.example/cb"], "post_logout_redirect_uris": ["data:x"]}),
                "post_logout_redirect_uris",
            ),
        ];
        for (json, needle) in cases {
            let err = meta(json.clone()).validate(&rules()).unwrap_err();
            assert!(err.to_string().contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn redirect_errors_are_distinguished_from_metadata_errors() {
        let err = meta(serde_json::json!({"redirect_uris": ["file:///x"]}))
            .validate(&rules())
            .unwrap_err();
        assert!(matches!(err, MetadataError::RedirectUri(_)));
        let err = meta(serde_json::json!({"redirect_uris": ["https://a.example/cb"], "grant_types": ["password"]}))
            .validate(&rules())
            .unwrap_err();
        assert!(matches!(err, MetadataError::Metadata(_)));
    }

    #[test]
    fn a_registration_carrying_jwks_is_accepted_and_the_key_set_ignored() {
        let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0", "use": "sig"}]});
        let valid =
            meta(serde_json::json!({"redirect_uris": ["https://a.example/cb"], "jwks": jwks}))
                .validate(&rules())
                .unwrap();
        assert_eq!(
            valid,
            meta(serde_json::json!({"redirect_uris": ["https://a.example/cb"]}))
                .validate(&rules())
                .unwrap(),
            "the key set changes nothing"
        );
        let err = meta(serde_json::json!({"redirect_uris": ["https://a.example/cb"], "jwks": jwks, "token_endpoint_auth_method": "private_key_jwt"}))
            .validate(&rules())
            .unwrap_err();
        assert!(err.to_string().contains("private_key_jwt"), "{err}");
        let err = meta(
            serde_json::json!({"redirect_uris": ["https://a.example/cb"], "jwks": "not a key set"}),
        )
        .validate(&rules())
        .unwrap_err();
        assert!(err.to_string().contains("JWK Set"), "{err}");
    }

    #[test]
    fn public_client_and_chosen_algorithm() {
        let valid = meta(serde_json::json!({
            "redirect_uris": ["com.example.app:/cb"],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "id_token_signed_response_alg": "ES256",
            "resources": ["https://gateway.example/"],
        }))
        .validate(&rules())
        .unwrap();
        assert_eq!(valid.token_endpoint_auth_method, AuthMethod::None);
        assert_eq!(valid.id_token_signed_response_alg, Some(Alg::ES256));
        assert_eq!(valid.resources, ["https://gateway.example/"]);
    }
}
