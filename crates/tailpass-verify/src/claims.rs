//! The claims of tailpass tokens, as types: the issuer mints through them and verifiers parse
//! them, so the two cannot drift apart.
//!
//! Names follow RFC 7519, RFC 9068 (access tokens), OIDC Core (ID tokens), RFC 8693 (`act`),
//! RFC 7800/9449 (`cnf`) and tsidp's tailnet claims, so relying parties can migrate from it.
//! Policy-defined claims (`extraClaims`, the gateway's `models` and `quota` among them) that
//! have no field here land in `extra`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::{self, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::UnixTime;

/// `aud`: one audience or several (RFC 7519 §4.1.3). A single audience is written as a
/// string, several as an array; both forms are read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audience(pub Vec<String>);

impl Audience {
    /// One audience.
    pub fn one(aud: impl Into<String>) -> Audience {
        Audience(vec![aud.into()])
    }

    /// Whether `aud` is among the audiences.
    pub fn contains(&self, aud: &str) -> bool {
        self.0.iter().any(|a| a == aud)
    }
}

impl Serialize for Audience {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => serializer.serialize_str(one),
            many => many.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        match Raw::deserialize(deserializer) {
            Ok(Raw::One(one)) => Ok(Audience(vec![one])),
            Ok(Raw::Many(many)) => Ok(Audience(many)),
            Err(_) => Err(de::Error::custom(
                "aud must be a string or an array of strings",
            )),
        }
    }
}

/// The actor of a delegated token (RFC 8693 §4.1): who acts for the subject, and who acted
/// for that actor, nested.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The actor's subject.
    pub sub: String,
    /// The actor's node (stable id), when it is a tailnet node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nid: Option<String>,
    /// The actor's run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The previous actor in the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

/// `cnf`: what a token is bound to (RFC 7800 §3.1). A verifier checks every member and refuses
/// a token with a member it does not know (docs/design.md "Contracts": binding), which is why unknown
/// members are kept in `unknown` rather than dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// The stable id of the node the token was issued to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tailnet_node: Option<String>,
    /// The RFC 7638 thumbprint of the DPoP key (RFC 9449 §6.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
    /// Members this version does not understand.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
}

impl Confirmation {
    /// The binding of an agent token: its node, and its DPoP key when the request had a proof.
    pub fn node(stable_id: &str, jkt: Option<String>) -> Confirmation {
        Confirmation {
            tailnet_node: Some(stable_id.to_owned()),
            jkt,
            unknown: BTreeMap::new(),
        }
    }
}

/// The gateway's budget for a run (`quota` claim).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Upstream requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// LLM tokens, as counted from the upstream's `usage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
}

/// An access token (RFC 9068), for people and agents alike.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Subject: `userid:<hex>`, `node:<StableID>` or `client:<client_id>`.
    pub sub: String,
    /// Audiences.
    pub aud: Audience,
    /// Expiry.
    pub exp: UnixTime,
    /// Issued at.
    pub iat: UnixTime,
    /// Not before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<UnixTime>,
    /// Token id.
    pub jti: String,
    /// The client the token was issued to (`sub` for agents without a client).
    pub client_id: String,
    /// Granted scopes, space-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// When the user authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<UnixTime>,
    /// The session (and refresh family) the token belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// The person's profile, for `/userinfo`.
    #[serde(flatten)]
    pub profile: Profile,
    /// The tailnet node the token was issued to.
    #[serde(flatten)]
    pub tailnet: TailnetClaims,
    /// The run, for agent tokens.
    #[serde(flatten)]
    pub run: RunClaims,
    /// Binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// Policy claims without a field of their own; shared, since one policy rule's claims go
    /// into every token it grants.
    #[serde(flatten)]
    pub extra: Arc<BTreeMap<String, Value>>,
}

/// A person's profile claims (OIDC Core §5.1, and tsidp's `username`/`uid`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Email-shaped login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The login name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
    /// The login's local part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The numeric user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u64>,
    /// The avatar URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub picture: Option<String>,
    /// Groups, from the policy file and tsidp grants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// What the tailnet says about the node (tsidp's claims).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TailnetClaims {
    /// The node's name (FQDN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The numeric node id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nid: Option<u64>,
    /// The node's tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The tailnet's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tailnet: Option<String>,
}

/// The run an agent token belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunClaims {
    /// This token's run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Free text the caller gave (a CI run number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_label: Option<String>,
    /// The run this one was exchanged from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_run_id: Option<String>,
    /// The first run of the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_run_id: Option<String>,
    /// Who acts (RFC 8693).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
}

/// An OpenID Connect ID token (OIDC Core §2) with tsidp's tailnet claims.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdClaims {
    /// Issuer.
    pub iss: String,
    /// Subject.
    pub sub: String,
    /// Audiences: the client alone. Resources never go into an ID token, so an ID token and
    /// an access token are never addressed to the same party.
    pub aud: Audience,
    /// Expiry.
    pub exp: UnixTime,
    /// Issued at.
    pub iat: UnixTime,
    /// Not before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<UnixTime>,
    /// Token id.
    pub jti: String,
    /// The nonce of the authorization request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// When the user authenticated.
    pub auth_time: UnixTime,
    /// The session id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// The authorized party, present when there are several audiences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azp: Option<String>,
    /// The access token's hash (OIDC Core §3.1.3.6): the left half of its digest under the ID
    /// token's algorithm's hash, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_hash: Option<String>,
    /// Profile.
    #[serde(flatten)]
    pub profile: Profile,
    /// Tailnet node.
    #[serde(flatten)]
    pub tailnet: TailnetClaims,
    /// The node's public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The node's tailnet addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Policy claims.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// RFC 8693 §2.1: the token exchange grant type.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// RFC 8693 §3: an access token, as a subject, actor or issued token type.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The subject token type of ambient mode (docs/design.md "Contracts": ambient exchange): the
/// subject is a tailnet peer, named by the address a gateway saw it connect from
/// (`IP`, `IP:port` or `[IPv6]:port`), which the issuer resolves itself. Only a gateway whose
/// rule has `act_for_peers` may present it, with its own access token as `actor_token`.
pub const TAILNET_PEER_TOKEN_TYPE: &str = "urn:tailpass:params:oauth:token-type:tailnet-peer";

/// The event member of a logout token (OIDC Back-Channel Logout §2.4).
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// `typ` of back-channel logout tokens (OIDC Back-Channel Logout §2.4): the issuer signs with
/// it, and a relying party reading [`LogoutClaims`] checks it.
pub const LOGOUT_TYP: &str = "logout+jwt";

/// An OIDC Back-Channel Logout token (`typ` [`LOGOUT_TYP`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogoutClaims {
    /// Issuer.
    pub iss: String,
    /// The client told.
    pub aud: Audience,
    /// Issued at.
    pub iat: UnixTime,
    /// Expiry.
    pub exp: UnixTime,
    /// Token id.
    pub jti: String,
    /// The user logged out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The session ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// `{"http://schemas.openid.net/event/backchannel-logout": {}}`.
    pub events: BTreeMap<String, Value>,
}

/// Claim names with a defined meaning, which policy `extraClaims` may not override.
pub const STANDARD_CLAIMS: &[&str] = &[
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
    "at_hash",
    "client_id",
    "scope",
    "email",
    "name",
    "preferred_username",
    "username",
    "uid",
    "picture",
    "node",
    "nid",
    "tags",
    "tailnet",
    "key",
    "addresses",
    "run_id",
    "run_label",
    "parent_run_id",
    "root_run_id",
    "act",
    "cnf",
    "fed",
    "events",
    "email_verified",
    "acr",
    "amr",
];

impl AccessClaims {
    /// The `models` claim: the model ids or globs ([`crate::glob`]) the gateway lets this
    /// token use. `None` when the claim is absent (no model restriction); a malformed claim
    /// allows no model.
    pub fn models(&self) -> Option<Vec<&str>> {
        let value = self.extra.get("models")?;
        Some(
            value
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default(),
        )
    }

    /// The `tools` claim: globs of the tool names a request may declare to a model. `None`
    /// when absent (any tool); a malformed claim allows no tool.
    pub fn tools(&self) -> Option<Vec<&str>> {
        let value = self.extra.get("tools")?;
        Some(
            value
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default(),
        )
    }

    /// The `mcp` claim's entry for MCP server `server`: globs of the tools this token may call
    /// there. `None` when the claim or the server's entry is absent; a malformed entry allows
    /// no tool.
    pub fn mcp_tools(&self, server: &str) -> Option<Vec<&str>> {
        let entry = self.extra.get("mcp")?.as_object().map(|m| m.get(server));
        match entry {
            // A claim that is not an object names no server, and so allows none.
            None => Some(Vec::new()),
            Some(None) => None,
            Some(Some(globs)) => Some(
                globs
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default(),
            ),
        }
    }

    /// The `quota` claim: the run's budget at the gateway. A malformed claim is a budget of
    /// zero, never an unlimited one.
    pub fn quota(&self) -> Option<Quota> {
        let value = self.extra.get("quota")?;
        Some(serde_json::from_value(value.clone()).unwrap_or(Quota {
            requests: Some(0),
            tokens: Some(0),
        }))
    }

    /// The run whose budget this token spends: the root of its chain, or its own run.
    pub fn budget_run(&self) -> Option<&str> {
        self.run
            .root_run_id
            .as_deref()
            .or(self.run.run_id.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audience_reads_both_forms_and_writes_the_short_one() {
        let one: Audience = serde_json::from_str("\"a\"").unwrap_or_default();
        assert_eq!(one, Audience::one("a"));
        assert_eq!(serde_json::to_string(&one).unwrap_or_default(), "\"a\"");
        let many: Audience = serde_json::from_str("[\"a\",\"b\"]").unwrap_or_default();
        assert_eq!(
            serde_json::to_string(&many).unwrap_or_default(),
            "[\"a\",\"b\"]"
        );
        assert!(serde_json::from_str::<Audience>("1").is_err());
    }

    #[test]
    fn tools_and_mcp_claims_fail_closed_when_malformed() {
        let claims = |extra: Value| AccessClaims {
            extra: serde_json::from_value(extra).unwrap_or_default(),
            ..AccessClaims::default()
        };
        let none = claims(serde_json::json!({}));
        assert_eq!((none.tools(), none.mcp_tools("docs")), (None, None));
        let some = claims(serde_json::json!({
            "tools": ["read_*"], "mcp": {"docs": ["search", 7]}
        }));
        assert_eq!(some.tools(), Some(vec!["read_*"]));
        assert_eq!(some.mcp_tools("docs"), Some(vec!["search"]));
        assert_eq!(some.mcp_tools("other"), None);
        let bad = claims(serde_json::json!({"tools": "read_*", "mcp": ["docs"]}));
        assert_eq!(bad.tools(), Some(vec![]));
        assert_eq!(bad.mcp_tools("docs"), Some(vec![]));
        let bad_entry = claims(serde_json::json!({"mcp": {"docs": "search"}}));
        assert_eq!(bad_entry.mcp_tools("docs"), Some(vec![]));
    }

    #[test]
    fn unknown_cnf_members_are_kept_to_be_refused() {
        let cnf: Confirmation =
            serde_json::from_str(r#"{"tailnet_node":"n1","x5t#S256":"abc"}"#).unwrap_or_default();
        assert_eq!(cnf.tailnet_node.as_deref(), Some("n1"));
        assert!(cnf.unknown.contains_key("x5t#S256"));
    }

    #[test]
    fn access_claims_round_trip_with_extra_claims() {
        let json = serde_json::json!({
            "iss": "https://idp", "sub": "node:n1", "aud": ["gw"], "exp": 2, "iat": 1, "jti": "j",
            "client_id": "node:n1", "run_id": "r1", "tags": ["tag:ci"],
            "cnf": {"tailnet_node": "n1"}, "models": ["m1"], "quota": {"requests": 5}
        });
        let claims: AccessClaims = serde_json::from_value(json.clone()).expect("parses");
        assert_eq!(claims.run.run_id.as_deref(), Some("r1"));
        assert_eq!(claims.tailnet.tags, ["tag:ci"]);
        assert_eq!(claims.extra["models"], serde_json::json!(["m1"]));
        let back = serde_json::to_value(&claims).expect("serializes");
        assert_eq!(back["aud"], "gw");
        assert_eq!(back["quota"], serde_json::json!({"requests": 5}));
    }
}
