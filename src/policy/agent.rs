//! Which token an agent may get: deny by default, one deciding rule, no fall-through.
//!
//! Candidate rules are the policy file's `[[rule]]`s and the tailnet's own grants of our
//! capability (default `tailpass/cap/agent`, same schema), whose `src` selects the caller.
//! tsidp grants are never candidates: they gate login resources and extra claims, and a
//! person's tsidp grant must not turn into an unrestricted agent token.
//!
//! Precedence is deterministic, most specific first: a rule's rank is that of its best
//! selector for the caller ([`Selector::rank`]); ties go to file order, tailnet grants after
//! file rules of the same rank, and a tailnet grant without `src` ranks last. For each
//! requested audience, the best-ranked rule covering it decides; audiences decided by different
//! rules are refused together, so a broader rule never supplies an audience a narrower one
//! restricts. The deciding rule's scopes are final: a scope it does not allow is refused,
//! never looked up in a broader rule.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;
use tailpass_verify::claims::STANDARD_CLAIMS;

use super::file::{PolicyFile, Rule};
use super::selector::{Caller, Selector, UNSCOPED_GRANT_RANK};
use crate::identity::Identity;

/// The default name of tailpass's capability in the tailnet policy.
pub const DEFAULT_CAPABILITY: &str = crate::identity::local::AGENT_CAP;

/// Where a rule came from, for error messages and the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The policy file's rule number (from 1).
    File(usize),
    /// A grant of tailpass's capability in the tailnet policy, numbered from 1 in the order
    /// the caller's WhoIs lists them.
    Tailnet(usize),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(n) => write!(f, "policy rule {n}"),
            Origin::Tailnet(n) => write!(f, "tailnet grant {n}"),
        }
    }
}

/// A candidate rule for a caller, with the rank it has for that caller.
struct Candidate<'p> {
    rank: u8,
    origin: Origin,
    rule: Cow<'p, Rule>,
}

/// The best rank among `rule`'s selectors that select the caller, if any does.
fn rank_of(rule: &Rule, caller: Caller<'_>, policy: &PolicyFile) -> Option<u8> {
    rule.src
        .iter()
        .filter(|s| s.selects(caller, policy))
        .map(Selector::rank)
        .min()
}

/// The rules that apply to the caller, best first: the policy file's borrowed, the tailnet
/// grants carried by the caller's identity (when it has one) owned.
fn candidates<'p>(
    caller: Caller<'_>,
    policy: &'p PolicyFile,
    capability: &str,
) -> Vec<Candidate<'p>> {
    let mut found: Vec<Candidate<'p>> = policy
        .rules
        .iter()
        .enumerate()
        .filter_map(|(i, rule)| {
            rank_of(rule, caller, policy).map(|rank| Candidate {
                rank,
                origin: Origin::File(i + 1),
                rule: Cow::Borrowed(rule),
            })
        })
        .collect();
    let grants = caller
        .identity
        .map(|i| i.caps.get(capability))
        .unwrap_or_default();
    for (i, value) in grants.iter().enumerate() {
        let rule = match serde_json::from_value::<Rule>(value.clone()) {
            Ok(rule) => rule,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a malformed {capability} grant");
                continue;
            }
        };
        if let Some(bad) = rule
            .claims
            .keys()
            .find(|k| STANDARD_CLAIMS.contains(&k.as_str()))
        {
            tracing::warn!(claim = %bad, "ignoring a {capability} grant that overrides a standard claim");
            continue;
        }
        // A grant in the caller's CapMap already applies to it; a `src` narrows further.
        let rank = if rule.src.is_empty() {
            Some(UNSCOPED_GRANT_RANK)
        } else {
            rank_of(&rule, caller, policy)
        };
        if let Some(rank) = rank {
            found.push(Candidate {
                rank,
                origin: Origin::Tailnet(i + 1),
                rule: Cow::Owned(rule),
            });
        }
    }
    // Stable: file order, then tailnet grants, within a rank.
    found.sort_by_key(|c| c.rank);
    found
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
    /// Whether the rule lets the caller obtain run tokens for tailnet peers (ambient mode).
    pub act_for_peers: bool,
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
    /// Occurs when no audience was asked and the deciding rule allows several
    /// (`invalid_target`).
    #[error("name an audience: the rules for {0} allow several")]
    NoAudience(String),
    /// Occurs when two requested audiences are decided by different rules (`invalid_target`):
    /// one token carries one rule's restrictions, so they must be asked for separately.
    #[error(
        "audiences {first} and {second} are decided by different rules ({first_rule}, {second_rule}): ask for them separately"
    )]
    Split {
        /// An audience.
        first: String,
        /// The rule deciding it.
        first_rule: Origin,
        /// An audience another rule decides.
        second: String,
        /// That other rule.
        second_rule: Origin,
    },
    /// Occurs when a person asks for resources together of which one has a deciding rule and
    /// another none (`invalid_target`): the token would carry the restrictions for one only.
    #[error(
        "resource {ruled} is decided by {rule} and {unruled} by no rule: ask for them separately"
    )]
    Unruled {
        /// The resource with a rule.
        ruled: String,
        /// Its rule.
        rule: Origin,
        /// The resource without one.
        unruled: String,
    },
    /// Occurs when the deciding rule does not allow a scope (`invalid_scope`).
    #[error("scope {scope} is outside {rule}, which decides for {caller}")]
    Scope {
        /// The scope.
        scope: String,
        /// The deciding rule.
        rule: Origin,
        /// Who asked.
        caller: String,
    },
}

impl Denied {
    /// The refusal's label, for metrics: the variant, never its values.
    pub fn label(&self) -> &'static str {
        match self {
            Denied::NoRule(_) => "no_rule",
            Denied::Audience { .. } => "audience",
            Denied::NoAudience(_) => "no_audience",
            Denied::Split { .. } => "split",
            Denied::Unruled { .. } => "unruled",
            Denied::Scope { .. } => "scope",
        }
    }
}

/// A caller of the policy as rules name it, for messages: its identity ([`describe`]), its
/// federation table, or both.
pub fn describe_caller(caller: Caller<'_>) -> String {
    match (caller.identity, caller.fed) {
        (Some(identity), Some(fed)) => format!("{} with fed:{fed}", describe(identity)),
        (Some(identity), None) => describe(identity),
        (None, Some(fed)) => format!("fed:{fed}"),
        (None, None) => "an unidentified caller".to_owned(),
    }
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

/// The rule deciding some audiences, with the first audience it decides.
type Decider<'r, 'a> = Option<(&'a str, &'r Candidate<'r>)>;

/// The one rule deciding `audiences`, and the first audience no rule covers; two audiences
/// decided by different rules are refused.
fn deciding<'r, 'a>(
    rules: &'r [Candidate<'r>],
    audiences: &'a [String],
) -> Result<(Decider<'r, 'a>, Option<&'a str>), Denied> {
    let mut decider: Decider<'r, 'a> = None;
    let mut unruled = None;
    for audience in audiences {
        let Some(rule) = rules.iter().find(|c| allows(&c.rule.audiences, audience)) else {
            unruled = unruled.or(Some(audience.as_str()));
            continue;
        };
        match decider {
            None => decider = Some((audience, rule)),
            Some((first, other)) if other.origin != rule.origin => {
                return Err(Denied::Split {
                    first: first.to_owned(),
                    first_rule: other.origin,
                    second: audience.clone(),
                    second_rule: rule.origin,
                });
            }
            Some(_) => {}
        }
    }
    Ok((decider, unruled))
}

/// Decides an agent's request: the one rule that decides, and what it grants. The caller is
/// a tailnet identity, or (for a federated mint) a federation table with or without one.
pub fn decide<'a>(
    who: impl Into<Caller<'a>>,
    policy: &PolicyFile,
    capability: &str,
    ask: Ask<'_>,
) -> Result<Granted, Denied> {
    let who = who.into();
    // Who asked is spelled out only when refusing.
    let caller = || describe_caller(who);
    let rules = candidates(who, policy, capability);
    let Some(best) = rules.first() else {
        return Err(Denied::NoRule(caller()));
    };
    let audiences: Vec<String> = if ask.audiences.is_empty() {
        // "The one my rule allows": the best rule's single named audience.
        match best
            .rule
            .audiences
            .iter()
            .filter(|a| *a != "*")
            .collect::<Vec<_>>()[..]
        {
            [one] => vec![one.clone()],
            _ => return Err(Denied::NoAudience(caller())),
        }
    } else {
        ask.audiences.to_vec()
    };
    let (decider, unruled) = deciding(&rules, &audiences)?;
    if let Some(audience) = unruled {
        return Err(Denied::Audience {
            audience: audience.to_owned(),
            caller: caller(),
        });
    }
    let Some((_, decider)) = decider else {
        return Err(Denied::NoAudience(caller()));
    };
    let rule = &decider.rule;
    let scopes: Vec<String> = match ask.scopes {
        Some(asked) => asked.to_vec(),
        None => rule.scopes.iter().filter(|s| *s != "*").cloned().collect(),
    };
    if let Some(scope) = scopes.iter().find(|s| !allows(&rule.scopes, s)) {
        return Err(Denied::Scope {
            scope: scope.clone(),
            rule: decider.origin,
            caller: caller(),
        });
    }
    Ok(Granted {
        origin: decider.origin,
        audiences,
        scopes,
        max_lifetime: rule.max_lifetime,
        claims: rule.claims.clone(),
        tokens_per_minute: rule.tokens_per_minute,
        act_for_peers: rule.act_for_peers,
    })
}

/// The rule deciding the resources of a person's login, if any decides them: a person's
/// token for a gateway carries the same restrictions (claims, lifetime) an agent token for
/// that audience would. Resources no rule covers are governed by the login policy alone; a
/// mix of the two, or of two rules, is refused.
pub fn decide_resources(
    identity: &Identity,
    policy: &PolicyFile,
    capability: &str,
    resources: &[String],
) -> Result<Option<Granted>, Denied> {
    let rules = candidates(identity.into(), policy, capability);
    let (ruled, unruled) = deciding(&rules, resources)?;
    match (ruled, unruled) {
        (None, _) => Ok(None),
        (Some((resource, rule)), Some(other)) => Err(Denied::Unruled {
            ruled: resource.to_owned(),
            rule: rule.origin,
            unruled: other.to_owned(),
        }),
        (Some((_, rule)), None) => Ok(Some(Granted {
            origin: rule.origin,
            audiences: resources.to_vec(),
            scopes: Vec::new(),
            max_lifetime: rule.rule.max_lifetime,
            claims: rule.rule.claims.clone(),
            tokens_per_minute: rule.rule.tokens_per_minute,
            act_for_peers: rule.rule.act_for_peers,
        })),
    }
}

/// Whether a rule for the caller lets it use the introspection endpoint.
pub fn may_introspect(identity: &Identity, policy: &PolicyFile, capability: &str) -> bool {
    candidates(identity.into(), policy, capability)
        .iter()
        .any(|c| c.rule.allow_introspect)
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

    fn sel(s: &str) -> Selector {
        Selector::parse(s).unwrap()
    }

    /// The decision for one audience and the rule's own scopes.
    fn for_audience(
        identity: &Identity,
        p: &PolicyFile,
        audience: &str,
    ) -> Result<Granted, Denied> {
        decide(
            identity,
            p,
            DEFAULT_CAPABILITY,
            ask(&[audience.to_owned()], None),
        )
    }

    fn ask<'a>(audiences: &'a [String], scopes: Option<&'a [String]>) -> Ask<'a> {
        Ask { audiences, scopes }
    }

    #[test]
    fn selectors() {
        let p = policy("[groups]\nsre = [\"alice@example.com\"]\n");
        let node = ci(serde_json::json!({}));
        assert!(sel("tag:ci").selects(&node, &p));
        assert!(sel("node:nBuildBot42CNTRL").selects(&node, &p));
        assert!(
            !sel("buildbot-42.tail1234.ts.net").selects(&node, &p),
            "never by name"
        );
        assert!(!sel("tag:prod").selects(&node, &p));
        assert!(sel("group:sre").selects(&alice(), &p));
        assert!(sel("alice@example.com").selects(&alice(), &p));
        assert!(!sel("group:sre").selects(&node, &p));
        assert!(
            !sel("tag:ci+fed:github").selects(&node, &p),
            "a + join needs both halves"
        );
        let with_token = Caller {
            identity: Some(&node),
            fed: Some("github"),
        };
        assert!(sel("tag:ci+fed:github").selects(with_token, &p));
        assert!(sel("node:nBuildBot42CNTRL+fed:github").selects(with_token, &p));
        assert!(!sel("tag:prod+fed:github").selects(with_token, &p));
        assert!(!sel("tag:ci+fed:gitlab").selects(with_token, &p));
        let off_tailnet = Caller {
            identity: None,
            fed: Some("github"),
        };
        assert!(sel("fed:github").selects(off_tailnet, &p));
        assert!(!sel("fed:gitlab").selects(off_tailnet, &p));
        assert!(
            !sel("*").selects(off_tailnet, &p),
            "* names tailnet callers only"
        );
        assert!(!sel("tag:ci+fed:github").selects(off_tailnet, &p));
    }

    #[test]
    fn a_federated_caller_is_decided_by_its_best_selector() {
        let p = policy(
            r#"
            [[federation]]
            name = "github"
            issuer = "https://token.actions.githubusercontent.com"
            audience = "https://idp.example"
            subject = "*"

            [[rule]]
            src = ["fed:github"]
            audiences = ["https://gw"]
            max_lifetime = 300

            [[rule]]
            src = ["tag:ci+fed:github"]
            audiences = ["https://gw"]
            max_lifetime = 600
            "#,
        );
        let node = ci(serde_json::json!({}));
        let on_tailnet = Caller {
            identity: Some(&node),
            fed: Some("github"),
        };
        let off_tailnet = Caller {
            identity: None,
            fed: Some("github"),
        };
        let audience = ["https://gw".to_owned()];
        let decided = |who| decide(who, &p, DEFAULT_CAPABILITY, ask(&audience, None));
        assert_eq!(decided(on_tailnet).unwrap().origin, Origin::File(2));
        assert_eq!(decided(off_tailnet).unwrap().origin, Origin::File(1));
        assert!(matches!(decided((&node).into()), Err(Denied::NoRule(_))));
        assert!(
            PolicyFile::parse("[[rule]]\nsrc = [\"fed:nope\"]\naudiences = [\"a\"]\n")
                .unwrap_err()
                .contains("no [[federation]] table")
        );
        assert!(
            PolicyFile::parse(
                "[[rule]]\nsrc = [\"*\"]\naudiences = [\"a\"]\nclaims = { fed = \"x\" }\n"
            )
            .is_err(),
            "a rule cannot pass for a federated token"
        );
    }

    #[test]
    fn a_scope_the_deciding_rule_refuses_never_falls_through_to_a_broader_rule() {
        // The restricted rule decides for tag:ci; the catch-all would allow anything, with no
        // models, no quota and no lifetime cap.
        let p = policy(
            "[[rule]]\nsrc = [\"tag:ci\"]\naudiences = [\"https://gw\"]\nscopes = [\"read\"]\nmax_lifetime = 600\n\
             claims = { models = [\"small\"] }\n\
             [[rule]]\nsrc = [\"*\"]\naudiences = [\"*\"]\nscopes = [\"*\"]\n",
        );
        let node = ci(serde_json::json!({}));
        let gw = ["https://gw".to_owned()];
        let g = decide(
            &node,
            &p,
            DEFAULT_CAPABILITY,
            ask(&gw, Some(&["read".into()])),
        )
        .unwrap();
        assert_eq!(
            (g.origin, g.max_lifetime, g.claims["models"].clone()),
            (Origin::File(1), Some(600), serde_json::json!(["small"]))
        );
        let refused = decide(
            &node,
            &p,
            DEFAULT_CAPABILITY,
            ask(&gw, Some(&["write".into()])),
        );
        assert!(
            matches!(&refused, Err(Denied::Scope { scope, rule: Origin::File(1), .. }) if scope == "write"),
            "{refused:?}"
        );
        // The same holds for rules of equal rank: the first in the file decides.
        let p = policy(
            "[[rule]]\nsrc = [\"tag:ci\"]\naudiences = [\"https://gw\"]\nscopes = [\"read\"]\nmax_lifetime = 300\n\
             [[rule]]\nsrc = [\"tag:ci\"]\naudiences = [\"https://gw\"]\nscopes = [\"read\", \"write\"]\nmax_lifetime = 60\n",
        );
        assert!(matches!(
            decide(
                &node,
                &p,
                DEFAULT_CAPABILITY,
                ask(&gw, Some(&["write".into()]))
            ),
            Err(Denied::Scope {
                rule: Origin::File(1),
                ..
            })
        ));
        let g = decide(&node, &p, DEFAULT_CAPABILITY, ANYTHING).unwrap();
        assert_eq!(
            (g.audiences, g.scopes),
            (gw.to_vec(), vec!["read".to_owned()]),
            "defaults from the rule"
        );
    }

    #[test]
    fn a_broader_rule_never_supplies_an_audience_a_narrower_one_restricts() {
        let p = policy(
            "[[rule]]\nsrc = [\"*\"]\naudiences = [\"https://docs\", \"https://gw\"]\nscopes = [\"*\"]\n\
             [[rule]]\nsrc = [\"tag:ci\"]\naudiences = [\"https://gw\"]\nclaims = { models = [\"small\"] }\n",
        );
        let node = ci(serde_json::json!({}));
        // The gateway is decided by the tag rule although the catch-all comes first in the file.
        let g = for_audience(&node, &p, "https://gw").unwrap();
        assert_eq!(g.origin, Origin::File(2));
        assert_eq!(g.claims["models"], serde_json::json!(["small"]));
        // Docs alone comes from the catch-all.
        let g = for_audience(&node, &p, "https://docs").unwrap();
        assert_eq!(g.origin, Origin::File(1));
        // Both in one token would let the catch-all's (absent) restrictions cover the gateway.
        let both = ["https://docs".to_owned(), "https://gw".to_owned()];
        assert!(matches!(
            decide(&node, &p, DEFAULT_CAPABILITY, ask(&both, None)),
            Err(Denied::Split {
                first_rule: Origin::File(1),
                second_rule: Origin::File(2),
                ..
            })
        ));
        assert!(matches!(
            for_audience(&node, &p, "https://other"),
            Err(Denied::Audience { .. })
        ));
    }

    #[test]
    fn the_most_specific_selector_decides_whatever_the_file_order() {
        let p = policy(
            "[groups]\nsre = [\"alice@example.com\"]\n\
             [[rule]]\nsrc = [\"group:sre\"]\naudiences = [\"https://gw\"]\nmax_lifetime = 1\n\
             [[rule]]\nsrc = [\"alice@example.com\"]\naudiences = [\"https://gw\"]\nmax_lifetime = 2\n\
             [[rule]]\nsrc = [\"*\", \"node:nT2k5GQ8Zb11CNTRL\"]\naudiences = [\"https://gw\"]\nmax_lifetime = 3\n",
        );
        let mut alice = alice();
        alice.caps = Default::default();
        let gw = ["https://gw".to_owned()];
        let g = decide(&alice, &p, DEFAULT_CAPABILITY, ask(&gw, None)).unwrap();
        assert_eq!(g.origin, Origin::File(3), "node: beats a login and a group");
        let p = policy(
            "[groups]\nsre = [\"alice@example.com\"]\n\
             [[rule]]\nsrc = [\"group:sre\"]\naudiences = [\"https://gw\"]\nmax_lifetime = 1\n\
             [[rule]]\nsrc = [\"alice@example.com\"]\naudiences = [\"https://gw\"]\nmax_lifetime = 2\n",
        );
        let g = decide(&alice, &p, DEFAULT_CAPABILITY, ask(&gw, None)).unwrap();
        assert_eq!((g.origin, g.max_lifetime), (Origin::File(2), Some(2)));
    }

    #[test]
    fn a_persons_gateway_resource_carries_the_deciding_rules_restrictions() {
        let p = policy(
            "[[rule]]\nsrc = [\"*\"]\naudiences = [\"https://gw\"]\nmax_lifetime = 600\nclaims = { models = [\"small\"] }\n",
        );
        let me = alice();
        let g = decide_resources(&me, &p, DEFAULT_CAPABILITY, &["https://gw".into()])
            .unwrap()
            .unwrap();
        assert_eq!(
            (g.max_lifetime, g.claims["models"].clone()),
            (Some(600), serde_json::json!(["small"]))
        );
        assert_eq!(
            decide_resources(&me, &p, DEFAULT_CAPABILITY, &["https://wiki".into()]).unwrap(),
            None,
            "a resource no rule covers has no restrictions to carry"
        );
        assert!(matches!(
            decide_resources(
                &me,
                &p,
                DEFAULT_CAPABILITY,
                &["https://wiki".into(), "https://gw".into()]
            ),
            Err(Denied::Unruled { .. })
        ));
    }

    #[test]
    fn act_for_peers_comes_from_the_deciding_rule_of_the_file_or_the_tailnet() {
        let p = policy(
            "[[rule]]\nsrc = [\"tag:ci\"]\naudiences = [\"https://gw\"]\nact_for_peers = true\n\
             [[rule]]\nsrc = [\"*\"]\naudiences = [\"https://docs\"]\n",
        );
        let node = ci(serde_json::json!({}));
        assert!(for_audience(&node, &p, "https://gw").unwrap().act_for_peers);
        assert!(
            !for_audience(&node, &p, "https://docs")
                .unwrap()
                .act_for_peers,
            "only for the audiences of the rule that says so"
        );
        // The capability grant has the same schema.
        let node = ci(serde_json::json!({DEFAULT_CAPABILITY: [
            {"audiences": ["https://other"], "act_for_peers": true}
        ]}));
        let empty = PolicyFile::default();
        assert!(
            for_audience(&node, &empty, "https://other")
                .unwrap()
                .act_for_peers
        );
        let node = ci(serde_json::json!({DEFAULT_CAPABILITY: [{"audiences": ["https://other"]}]}));
        assert!(
            !for_audience(&node, &empty, "https://other")
                .unwrap()
                .act_for_peers
        );
    }

    #[test]
    fn tsidp_grants_never_grant_agent_tokens() {
        // Alice's fixture carries a tsidp grant with users * and resources *: it gates what she
        // may log in to, and gives her no agent token.
        let p = PolicyFile::default();
        let refused = decide(
            &alice(),
            &p,
            DEFAULT_CAPABILITY,
            ask(&["https://anything".into()], None),
        );
        assert!(matches!(refused, Err(Denied::NoRule(_))), "{refused:?}");
    }

    #[test]
    fn tailnet_grants_count_and_an_unscoped_one_ranks_last() {
        let p = PolicyFile::default();
        let node = ci(
            serde_json::json!({DEFAULT_CAPABILITY: [{"audiences": ["https://gw"], "claims": {"models": ["m1"]}}]}),
        );
        let g = decide(&node, &p, DEFAULT_CAPABILITY, ANYTHING).unwrap();
        assert_eq!(
            (g.origin, g.claims["models"].clone()),
            (Origin::Tailnet(1), serde_json::json!(["m1"]))
        );
        let sneaky = ci(
            serde_json::json!({DEFAULT_CAPABILITY: [{"audiences": ["*"], "claims": {"sub": "root"}}]}),
        );
        assert!(matches!(
            for_audience(&sneaky, &p, "x"),
            Err(Denied::NoRule(_))
        ));
        // A file rule for the tag outranks an unscoped grant; a grant naming the tag comes
        // after the file's rule of the same rank.
        let p = policy("[[rule]]\nsrc = [\"*\"]\naudiences = [\"https://gw\"]\nmax_lifetime = 5\n");
        let node = ci(serde_json::json!({DEFAULT_CAPABILITY: [
            {"audiences": ["https://gw"], "max_lifetime": 7},
            {"src": ["tag:ci"], "audiences": ["https://gw"], "max_lifetime": 9}
        ]}));
        let g = for_audience(&node, &p, "https://gw").unwrap();
        assert_eq!((g.origin, g.max_lifetime), (Origin::Tailnet(2), Some(9)));
        let mut plain = ci(
            serde_json::json!({DEFAULT_CAPABILITY: [{"audiences": ["https://gw"], "max_lifetime": 7}]}),
        );
        let g = for_audience(&plain, &p, "https://gw").unwrap();
        assert_eq!(g.origin, Origin::File(1), "a grant without src ranks last");
        plain.caps = Default::default();
        assert!(decide(&plain, &PolicyFile::default(), DEFAULT_CAPABILITY, ANYTHING).is_err());
    }
}
