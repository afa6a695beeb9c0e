//! `tailpass policy explain` and `tailpass policy check`: the agent decision spelled out for an
//! operator, and a policy file's mistakes found before a caller meets them.
//!
//! An explanation is the very decision the token endpoint makes ([`super::agent::decide`]),
//! shaped for reading; it never mints, stores or audits anything.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::agent::{self, Ask};
use super::file::PolicyFile;
use super::selector::{Caller, Selector};
use crate::identity::{CapMap, Identity, Node, StableNodeId, User};

/// Whether the token would be issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// A token would be issued.
    Allowed,
    /// The request would be refused.
    Refused,
}

/// What the token endpoint would do for a caller and request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// Allowed or refused.
    pub decision: Decision,
    /// The deciding rule (`policy rule 2`, `tailnet grant 1`), when one decides.
    pub rule: Option<String>,
    /// The token's audiences.
    pub audiences: Vec<String>,
    /// The token's scopes.
    pub scopes: Vec<String>,
    /// Seconds the token would live when the caller asks for no `expires_in`; `None` offline
    /// when the rule sets no cap (the server's default then applies).
    pub lifetime: Option<u64>,
    /// The rule's extra claims.
    pub claims: BTreeMap<String, Value>,
    /// Whether the deciding rule lets this caller, as a gateway, obtain run tokens for
    /// tokenless tailnet callers (ambient mode).
    #[serde(default)]
    pub act_for_peers: bool,
    /// Why it is refused.
    pub reason: Option<String>,
}

/// The caller to explain for, as an operator names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainRequest {
    /// A peer address (resolved by the running server's WhoIs) or a selector (`tag:ci`,
    /// `node:<StableID>`, a login).
    #[serde(rename = "as")]
    pub caller: String,
    /// Requested audiences.
    #[serde(default)]
    pub audience: Vec<String>,
    /// Requested scopes; `None` for the rule's.
    #[serde(default)]
    pub scope: Option<Vec<String>>,
}

/// Explains the agent decision for `caller` (a tailnet identity, a federation table, or
/// both). `lifetimes` is the server's default and ceiling for agent tokens, when known.
pub fn explain<'a>(
    caller: impl Into<Caller<'a>>,
    policy: &PolicyFile,
    capability: &str,
    request: &ExplainRequest,
    lifetimes: Option<(u64, u64)>,
) -> Explanation {
    let ask = Ask {
        audiences: &request.audience,
        scopes: request.scope.as_deref(),
    };
    match agent::decide(caller, policy, capability, ask) {
        Ok(granted) => {
            let lifetime = match (lifetimes, granted.max_lifetime) {
                (Some((default, ceiling)), cap) => {
                    Some(default.min(cap.unwrap_or(u64::MAX)).min(ceiling).max(1))
                }
                (None, cap) => cap,
            };
            Explanation {
                decision: Decision::Allowed,
                rule: Some(granted.origin.to_string()),
                audiences: granted.audiences,
                scopes: granted.scopes,
                lifetime,
                claims: (*granted.claims).clone(),
                act_for_peers: granted.act_for_peers,
                reason: None,
            }
        }
        Err(denied) => Explanation {
            decision: Decision::Refused,
            rule: None,
            audiences: Vec::new(),
            scopes: Vec::new(),
            lifetime: None,
            claims: BTreeMap::new(),
            act_for_peers: false,
            reason: Some(denied.to_string()),
        },
    }
}

/// A stand-in caller for a selector: a tagged node for `tag:`, a node for `node:`, a person
/// for a login, a federated caller off the tailnet for `fed:`, and the node with its
/// federation table for `tag:X+fed:Y` and `node:X+fed:Y`.
#[derive(Debug, Clone, PartialEq)]
pub struct StandIn {
    /// The tailnet identity, with no capability grants (those come only from a live WhoIs),
    /// so only the policy file's rules apply to it.
    pub identity: Option<Identity>,
    /// The federation table its external token would match.
    pub fed: Option<String>,
}

impl StandIn {
    /// The caller the decision is asked about.
    pub fn caller(&self) -> Caller<'_> {
        Caller {
            identity: self.identity.as_ref(),
            fed: self.fed.as_deref(),
        }
    }
}

/// The stand-in caller for `selector` (see [`StandIn`]).
pub fn stand_in(selector: &str) -> Result<StandIn, String> {
    let node = |stable_id: &str, tags: Vec<String>| Node {
        id: 0,
        stable_id: StableNodeId(stable_id.to_owned()),
        name: "explain.".into(),
        tags,
        addresses: Vec::new(),
        key: None,
    };
    if selector.parse::<std::net::IpAddr>().is_ok()
        || selector.parse::<std::net::SocketAddr>().is_ok()
    {
        return Err(format!(
            "{selector} is a peer address: only a live WhoIs can say who it is"
        ));
    }
    let (user, node, fed) = match Selector::parse(selector)? {
        Selector::Fed(fed) => {
            return Ok(StandIn {
                identity: None,
                fed: Some(fed),
            });
        }
        Selector::TagFed { tag, fed } => (None, node("nExplain", vec![tag]), Some(fed)),
        Selector::NodeFed { node: id, fed } => (None, node(&id, Vec::new()), Some(fed)),
        Selector::Tag(tag) => (None, node("nExplain", vec![tag]), None),
        Selector::Node(id) => (None, node(&id, Vec::new()), None),
        Selector::Login(login) => (
            Some(User {
                id: 0,
                login,
                display_name: String::new(),
                picture: None,
            }),
            node("nExplain", Vec::new()),
            None,
        ),
        other => {
            return Err(format!(
                "explain for a peer address, tag:, node:, fed: or a login, not {other}"
            ));
        }
    };
    Ok(StandIn {
        identity: Some(Identity {
            user,
            node,
            tailnet: "explain".into(),
            caps: CapMap::default(),
        }),
        fed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(caller: &str, audience: &[&str], scope: Option<&[&str]>) -> ExplainRequest {
        ExplainRequest {
            caller: caller.into(),
            audience: audience.iter().map(|a| (*a).to_owned()).collect(),
            scope: scope.map(|s| s.iter().map(|a| (*a).to_owned()).collect()),
        }
    }

    #[test]
    fn explains_the_deciding_rule_and_why_a_request_is_refused() {
        let policy = PolicyFile::parse(
            "[[rule]]\nsrc = [\"tag:ci\"]\naudiences = [\"https://gw\"]\nscopes = [\"llm\"]\nmax_lifetime = 600\n\
             claims = { models = [\"small\"] }\n\
             [[rule]]\nsrc = [\"*\"]\naudiences = [\"*\"]\nscopes = [\"*\"]\n",
        )
        .unwrap();
        let ci = stand_in("tag:ci").unwrap();
        let e = explain(
            ci.caller(),
            &policy,
            agent::DEFAULT_CAPABILITY,
            &request("tag:ci", &["https://gw"], None),
            Some((3600, 86400)),
        );
        assert_eq!(e.decision, Decision::Allowed);
        assert_eq!(e.rule.as_deref(), Some("policy rule 1"));
        assert_eq!((e.scopes, e.lifetime), (vec!["llm".to_owned()], Some(600)));
        assert_eq!(e.claims["models"], serde_json::json!(["small"]));
        assert!(!e.act_for_peers);
        let gateway = PolicyFile::parse(
            "[[rule]]\nsrc = [\"tag:gateway\"]\naudiences = [\"https://gw\"]\nact_for_peers = true\n",
        )
        .unwrap();
        let explained = explain(
            stand_in("tag:gateway").unwrap().caller(),
            &gateway,
            agent::DEFAULT_CAPABILITY,
            &request("tag:gateway", &["https://gw"], None),
            None,
        );
        assert!(
            explained.act_for_peers,
            "the rule's act_for_peers is explained"
        );
        let e = explain(
            ci.caller(),
            &policy,
            agent::DEFAULT_CAPABILITY,
            &request("tag:ci", &["https://gw"], Some(&["admin"])),
            None,
        );
        assert_eq!(e.decision, Decision::Refused);
        assert!(e.reason.unwrap().contains("policy rule 1"));
    }

    #[test]
    fn federated_callers_are_explained_by_their_table() {
        let policy = PolicyFile::parse(
            "[[federation]]\nname = \"github\"\nissuer = \"https://token.actions.githubusercontent.com\"\n\
             audience = \"https://idp\"\nsubject = \"*\"\n\
             [[rule]]\nsrc = [\"fed:github\"]\naudiences = [\"https://gw\"]\nmax_lifetime = 300\n\
             [[rule]]\nsrc = [\"tag:ci+fed:github\"]\naudiences = [\"https://gw\"]\n",
        )
        .unwrap();
        let rule_for = |who: &str| {
            let stand_in = stand_in(who).unwrap();
            explain(
                stand_in.caller(),
                &policy,
                agent::DEFAULT_CAPABILITY,
                &request(who, &["https://gw"], None),
                None,
            )
            .rule
        };
        assert_eq!(rule_for("fed:github").as_deref(), Some("policy rule 1"));
        assert_eq!(
            rule_for("tag:ci+fed:github").as_deref(),
            Some("policy rule 2")
        );
        assert_eq!(rule_for("tag:ci"), None, "the token is needed");
    }

    #[test]
    fn stand_ins_follow_their_selector() {
        let identity = |s: &str| stand_in(s).unwrap().identity.unwrap();
        assert!(identity("tag:ci").node.tags == ["tag:ci"]);
        assert_eq!(identity("node:nX").node.stable_id.0, "nX");
        assert_eq!(
            identity("alice@example.com").user.unwrap().login,
            "alice@example.com"
        );
        let federated = stand_in("fed:github").unwrap();
        assert_eq!(
            (federated.identity, federated.fed.as_deref()),
            (None, Some("github"))
        );
        let joined = stand_in("tag:ci+fed:github").unwrap();
        assert_eq!(joined.fed.as_deref(), Some("github"));
        assert!(joined.identity.unwrap().node.tags == ["tag:ci"]);
        assert!(stand_in("group:sre").is_err());
        assert!(stand_in("100.64.0.1").is_err(), "an address is not a login");
        assert!(stand_in("tag:").is_err());
    }
}
