//! Which token an agent may get: deny by default.
//!
//! Candidate rules, in order: the policy file's `[[rule]]`s whose `src` selects the caller;
//! the tailnet's own grants of our capability (default `tailpass/cap/agent`, same schema), which
//! the tailnet policy already scoped to this caller; and, for a person's node, tsidp grants
//! whose `users` name the person (their `resources` become audiences). The first rule that
//! allows every requested audience and scope decides the lifetime, extra claims and rate.
//! Selectors name tags, node stable ids, logins or groups — never node names.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;
use tailpass_verify::claims::STANDARD_CLAIMS;

use super::file::{PolicyFile, Rule};
use super::tsidp;
use crate::identity::Identity;

/// The default name of tailpass's capability in the tailnet policy.
pub const DEFAULT_CAPABILITY: &str = "tailpass/cap/agent";

/// Where a rule came from, for error messages and the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The policy file's rule number (from 1).
    File(usize),
    /// A grant of tailpass's capability in the tailnet policy.
    Tailnet,
    /// A tsidp grant.
    Tsidp,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(n) => write!(f, "policy rule {n}"),
            Origin::Tailnet => f.write_str("tailnet grant"),
            Origin::Tsidp => f.write_str("tsidp grant"),
        }
    }
}

/// Whether `selector` names the caller.
pub fn selects(selector: &str, identity: &Identity, policy: &PolicyFile) -> bool {
    if selector == "*" {
        return true;
    }
    if selector.starts_with("tag:") {
        return identity.node.tags.iter().any(|t| t == selector);
    }
    if let Some(node) = selector.strip_prefix("node:") {
        return identity.node.stable_id.0 == node;
    }
    let Some(user) = &identity.user else {
        return false;
    };
    match selector.strip_prefix("group:") {
        Some(group) => policy
            .groups
            .get(group)
            .is_some_and(|m| m.contains(&user.login)),
        None => user.login == selector,
    }
}

/// The rules that apply to the caller, in precedence order: the policy file's borrowed, the
/// ones carried by the caller's identity (capability grants, tsidp grants) owned.
fn rules_for<'p>(
    identity: &Identity,
    policy: &'p PolicyFile,
    capability: &str,
) -> Vec<(Origin, Cow<'p, Rule>)> {
    let mut rules: Vec<(Origin, Cow<'p, Rule>)> = policy
        .rules
        .iter()
        .enumerate()
        .filter(|(_, r)| r.src.iter().any(|s| selects(s, identity, policy)))
        .map(|(i, r)| (Origin::File(i + 1), Cow::Borrowed(r)))
        .collect();
    for value in identity.caps.get(capability) {
        match serde_json::from_value::<Rule>(value.clone()) {
            // A grant in the caller's CapMap already applies to it; a `src` narrows further.
            Ok(rule)
                if rule.src.is_empty() || rule.src.iter().any(|s| selects(s, identity, policy)) =>
            {
                if let Some(bad) = rule
                    .claims
                    .keys()
                    .find(|k| STANDARD_CLAIMS.contains(&k.as_str()))
                {
                    tracing::warn!(claim = %bad, "ignoring a {capability} grant that overrides a standard claim");
                    continue;
                }
                rules.push((Origin::Tailnet, Cow::Owned(rule)));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "ignoring a malformed {capability} grant"),
        }
    }
    if let Some(user) = &identity.user {
        for grant in tsidp::grants(identity) {
            if grant.users.iter().any(|u| u == "*" || *u == user.login)
                && !grant.resources.is_empty()
            {
                rules.push((
                    Origin::Tsidp,
                    Cow::Owned(Rule {
                        src: vec![user.login.clone()],
                        audiences: grant.resources,
                        scopes: vec!["*".into()],
                        ..Rule::default()
                    }),
                ));
            }
        }
    }
    rules
}

/// What an agent asks for.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// Requested audiences (`resource` and `audience` together); empty for "the one my rule
    /// allows".
    pub audiences: &'a [String],
    /// Requested scopes, or `None` for the rule's.
    pub scopes: Option<&'a [String]>,
}

/// What the deciding rule grants.
#[derive(Debug, Clone, PartialEq)]
pub struct Granted {
    /// Which rule.
    pub origin: Origin,
    /// The token's audiences.
    pub audiences: Vec<String>,
    /// The token's scopes.
    pub scopes: Vec<String>,
    /// The rule's lifetime cap.
    pub max_lifetime: Option<u64>,
    /// Extra claims, the rule's own.
    pub claims: Arc<BTreeMap<String, Value>>,
    /// The rule's rate, tokens per minute.
    pub tokens_per_minute: Option<u32>,
}

/// Why an agent gets nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Occurs when no rule selects the caller (`unauthorized_client`).
    #[error("no rule allows {0}")]
    NoRule(String),
    /// Occurs when no rule allows an audience (`invalid_target`).
    #[error("audience {audience} is outside the rules for {caller}")]
    Audience {
        /// The audience.
        audience: String,
        /// Who asked.
        caller: String,
    },
    /// Occurs when no audience was asked and the rules allow several (`invalid_target`).
    #[error("name an audience: the rules for {0} allow several")]
    NoAudience(String),
    /// Occurs when the rules that allow the audiences do not allow a scope (`invalid_scope`).
    #[error("scope {scope} is outside the rules for {caller}")]
    Scope {
        /// The scope.
        scope: String,
        /// Who asked.
        caller: String,
    },
}

/// A caller as rules name it, for messages: `node nX (tag:ci)` or `alice@example.com`.
pub fn describe(identity: &Identity) -> String {
    match &identity.user {
        Some(user) => format!("{} on node {}", user.login, identity.node.stable_id),
        None => format!(
            "node {} ({})",
            identity.node.stable_id,
            identity.node.tags.join(", ")
        ),
    }
}

fn allows(list: &[String], item: &str) -> bool {
    list.iter().any(|a| a == "*" || a == item)
}

/// Decides an agent's request.
pub fn decide(
    identity: &Identity,
    policy: &PolicyFile,
    capability: &str,
    ask: Ask<'_>,
) -> Result<Granted, Denied> {
    // Who asked is spelled out only when refusing.
    let caller = || describe(identity);
    let rules = rules_for(identity, policy, capability);
    if rules.is_empty() {
        return Err(Denied::NoRule(caller()));
    }
    let audiences: Vec<String> = if ask.audiences.is_empty() {
        let mut named: Vec<String> = rules
            .iter()
            .flat_map(|(_, r)| r.audiences.iter().filter(|a| *a != "*").cloned())
            .collect();
        named.dedup();
        match named.as_slice() {
            [one] => vec![one.clone()],
            _ => return Err(Denied::NoAudience(caller())),
        }
    } else {
        ask.audiences.to_vec()
    };
    let covering: Vec<&(Origin, Cow<'_, Rule>)> = rules
        .iter()
        .filter(|(_, r)| audiences.iter().all(|a| allows(&r.audiences, a)))
        .collect();
    if covering.is_empty() {
        let outside = audiences
            .iter()
            .find(|a| !rules.iter().any(|(_, r)| allows(&r.audiences, a)))
            .or_else(|| audiences.first())
            .cloned()
            .unwrap_or_default();
        return Err(Denied::Audience {
            audience: outside,
            caller: caller(),
        });
    }
    for (origin, rule) in &covering {
        let scopes: Vec<String> = match ask.scopes {
            Some(asked) => asked.to_vec(),
            None => rule.scopes.iter().filter(|s| *s != "*").cloned().collect(),
        };
        if scopes.iter().all(|s| allows(&rule.scopes, s)) {
            return Ok(Granted {
                origin: *origin,
                audiences,
                scopes,
                max_lifetime: rule.max_lifetime,
                claims: rule.claims.clone(),
                tokens_per_minute: rule.tokens_per_minute,
            });
        }
    }
    let asked = ask.scopes.unwrap_or_default();
    let scope = asked
        .iter()
        .find(|s| !covering.iter().any(|(_, r)| allows(&r.scopes, s)))
        .cloned()
        .unwrap_or_default();
    Err(Denied::Scope {
        scope,
        caller: caller(),
    })
}

/// Whether a rule for the caller lets it use the introspection endpoint.
pub fn may_introspect(identity: &Identity, policy: &PolicyFile, capability: &str) -> bool {
    rules_for(identity, policy, capability)
        .iter()
        .any(|(_, r)| r.allow_introspect)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::whois::WhoIsResponse;

    /// A request naming no audience and no scope: the rule's defaults.
    const ANYTHING: Ask<'static> = Ask {
        audiences: &[],
        scopes: None,
    };

    fn ci(caps: serde_json::Value) -> Identity {
        let mut whois: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/whois-tagged.json")).unwrap();
        whois["CapMap"] = caps;
        serde_json::from_value::<WhoIsResponse>(whois)
            .unwrap()
            .into_identity()
            .unwrap()
    }

    fn alice() -> Identity {
        serde_json::from_str::<WhoIsResponse>(include_str!("../../tests/fixtures/whois-user.json"))
            .unwrap()
            .into_identity()
            .unwrap()
    }

    fn policy(text: &str) -> PolicyFile {
        PolicyFile::parse(text).unwrap()
    }

    #[test]
    fn selectors() {
        let p = policy("[groups]\nsre = [\"alice@example.com\"]\n");
        let node = ci(serde_json::json!({}));
        assert!(selects("tag:ci", &node, &p));
        assert!(selects("node:nBuildBot42CNTRL", &node, &p));
        assert!(
            !selects("buildbot-42.tail1234.ts.net", &node, &p),
            "never by name"
        );
        assert!(!selects("tag:prod", &node, &p));
        assert!(selects("group:sre", &alice(), &p));
        assert!(selects("alice@example.com", &alice(), &p));
        assert!(!selects("group:sre", &node, &p));
    }

    #[test]
    fn first_rule_covering_audience_and_scope_decides() {
        let p = policy(
            "[[rule]]\nsrc = [\"tag:ci\"]\naudiences = [\"https://gw\"]\nscopes = [\"read\"]\nmax_lifetime = 300\n\
             [[rule]]\nsrc = [\"tag:ci\"]\naudiences = [\"https://gw\"]\nscopes = [\"read\", \"write\"]\nmax_lifetime = 60\n",
        );
        let node = ci(serde_json::json!({}));
        let gw = ["https://gw".to_owned()];
        let g = decide(
            &node,
            &p,
            DEFAULT_CAPABILITY,
            Ask {
                audiences: &gw,
                scopes: Some(&["read".into()]),
            },
        )
        .unwrap();
        assert_eq!((g.origin, g.max_lifetime), (Origin::File(1), Some(300)));
        let g = decide(
            &node,
            &p,
            DEFAULT_CAPABILITY,
            Ask {
                audiences: &gw,
                scopes: Some(&["write".into()]),
            },
        )
        .unwrap();
        assert_eq!(g.origin, Origin::File(2));
        let g = decide(&node, &p, DEFAULT_CAPABILITY, ANYTHING).unwrap();
        assert_eq!(
            (g.audiences, g.scopes),
            (gw.to_vec(), vec!["read".to_owned()]),
            "defaults from the rule"
        );
        assert!(matches!(
            decide(
                &node,
                &p,
                DEFAULT_CAPABILITY,
                Ask {
                    audiences: &["https://other".into()],
                    scopes: None
                }
            ),
            Err(Denied::Audience { .. })
        ));
        assert!(matches!(
            decide(
                &node,
                &p,
                DEFAULT_CAPABILITY,
                Ask {
                    audiences: &gw,
                    scopes: Some(&["admin".into()])
                }
            ),
            Err(Denied::Scope { .. })
        ));
        let mut plain_alice = alice();
        plain_alice.caps = Default::default();
        assert!(matches!(
            decide(
                &plain_alice,
                &p,
                DEFAULT_CAPABILITY,
                Ask {
                    audiences: &gw,
                    scopes: None
                }
            ),
            Err(Denied::NoRule(_))
        ));
    }

    #[test]
    fn tailnet_grants_and_tsidp_grants_count_too() {
        let p = PolicyFile::default();
        let node = ci(
            serde_json::json!({DEFAULT_CAPABILITY: [{"audiences": ["https://gw"], "claims": {"models": ["m1"]}}]}),
        );
        let g = decide(&node, &p, DEFAULT_CAPABILITY, ANYTHING).unwrap();
        assert_eq!(
            (g.origin, g.claims["models"].clone()),
            (Origin::Tailnet, serde_json::json!(["m1"]))
        );
        let sneaky = ci(
            serde_json::json!({DEFAULT_CAPABILITY: [{"audiences": ["*"], "claims": {"sub": "root"}}]}),
        );
        assert!(matches!(
            decide(
                &sneaky,
                &p,
                DEFAULT_CAPABILITY,
                Ask {
                    audiences: &["x".into()],
                    scopes: None
                }
            ),
            Err(Denied::NoRule(_))
        ));
        let g = decide(
            &alice(),
            &p,
            DEFAULT_CAPABILITY,
            Ask {
                audiences: &["https://anything".into()],
                scopes: None,
            },
        )
        .unwrap();
        assert_eq!(
            g.origin,
            Origin::Tsidp,
            "alice's fixture grant: users * resources *"
        );
    }
}
