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
use super::selector::Selector;
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

/// Explains the agent decision for `identity`. `lifetimes` is the server's default and
/// ceiling for agent tokens, when known.
pub fn explain(
    identity: &Identity,
    policy: &PolicyFile,
    capability: &str,
    request: &ExplainRequest,
    lifetimes: Option<(u64, u64)>,
) -> Explanation {
    let ask = Ask {
        audiences: &request.audience,
        scopes: request.scope.as_deref(),
    };
    match agent::decide(identity, policy, capability, ask) {
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
            reason: Some(denied.to_string()),
        },
    }
}

/// A stand-in caller for a selector: a tagged node for `tag:`, a node for `node:`, a person
/// for a login. It carries no capability grants (those come only from a live WhoIs), so only
/// the policy file's rules apply to it.
pub fn stand_in(selector: &str) -> Result<Identity, String> {
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
    let (user, node) = match Selector::parse(selector)? {
        Selector::Tag(tag) => (None, node("nExplain", vec![tag])),
        Selector::Node(id) => (None, node(&id, Vec::new())),
        Selector::Login(login) => (
            Some(User {
                id: 0,
                login,
                display_name: String::new(),
                picture: None,
            }),
            node("nExplain", Vec::new()),
        ),
        other => {
            return Err(format!(
                "explain for a peer address, tag:, node: or a login, not {other}"
            ));
        }
    };
    Ok(Identity {
        user,
        node,
        tailnet: "explain".into(),
        caps: CapMap::default(),
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
            &ci,
            &policy,
            agent::DEFAULT_CAPABILITY,
            &request("tag:ci", &["https://gw"], None),
            Some((3600, 86400)),
        );
        assert_eq!(e.decision, Decision::Allowed);
        assert_eq!(e.rule.as_deref(), Some("policy rule 1"));
        assert_eq!((e.scopes, e.lifetime), (vec!["llm".to_owned()], Some(600)));
        assert_eq!(e.claims["models"], serde_json::json!(["small"]));
        let e = explain(
            &ci,
            &policy,
            agent::DEFAULT_CAPABILITY,
            &request("tag:ci", &["https://gw"], Some(&["admin"])),
            None,
        );
        assert_eq!(e.decision, Decision::Refused);
        assert!(e.reason.unwrap().contains("policy rule 1"));
    }

    #[test]
    fn stand_ins_follow_their_selector() {
        assert!(stand_in("tag:ci").unwrap().node.tags == ["tag:ci"]);
        assert_eq!(stand_in("node:nX").unwrap().node.stable_id.0, "nX");
        assert_eq!(
            stand_in("alice@example.com").unwrap().user.unwrap().login,
            "alice@example.com"
        );
        assert!(stand_in("group:sre").is_err());
        assert!(stand_in("100.64.0.1").is_err(), "an address is not a login");
        assert!(stand_in("tag:").is_err());
    }
}
