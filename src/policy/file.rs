//! The local policy file (`--policy FILE`, TOML): what the tailnet cannot say.
//!
//! ```toml
//! [groups]                       # WhoIs carries no groups: they are defined here
//! sre = ["alice@example.com", "bob@example.com"]
//!
//! [[rule]]                       # agent rules; same schema as the tailpass/cap/agent grant
//! src = ["tag:ci", "group:sre"]
//! audiences = ["https://gateway.tail1234.ts.net"]
//! scopes = ["llm"]
//! max_lifetime = 900
//! claims = { models = ["claude-sonnet"], quota = { requests = 200, tokens = 500000 } }
//! tokens_per_minute = 60
//!
//! [[rule]]                       # a gateway that serves tokenless tailnet callers
//! src = ["tag:gateway"]
//! audiences = ["https://gateway.tail1234.ts.net"]
//! act_for_peers = true
//!
//! [[federation]]                 # an external issuer whose tokens become run tokens
//! name = "github"
//! profile = "github"
//! issuer = "https://token.actions.githubusercontent.com"
//! audience = "https://idp.tail1234.ts.net"
//! subject = "repo:octo-org/*"
//!
//! [[rule]]                       # workflows of octo-org, wherever they run
//! src = ["fed:github"]
//! audiences = ["https://gateway.tail1234.ts.net"]
//! ```
//!
//! Selectors name callers by tag, node stable id, login, group or federation table — never by
//! node name, which a device's owner chooses. A `fed:` selector must name a table of the file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::selector::Selector;
use crate::federation::table::{self, FederationTable};

/// One rule: who (`src`) may get what. Shared by the policy file's `[[rule]]` tables and the
/// tailnet capability `tailpass/cap/agent` (docs/design.md "Contracts": policy capability).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Selectors: `tag:x`, `node:<StableID>`, a login, `group:x`, `fed:x` (joined to a
    /// node or tag with `+`), or `*`.
    #[serde(default)]
    pub src: Vec<Selector>,
    /// Audiences (resources) tokens may be for; `*` for any.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Scopes tokens may carry; `*` for any.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The longest lifetime granted, seconds.
    #[serde(default)]
    pub max_lifetime: Option<u64>,
    /// Claims added to the token (the gateway's `models` and `quota`, for instance); shared
    /// with every token the rule grants.
    #[serde(default)]
    pub claims: Arc<BTreeMap<String, Value>>,
    /// Token requests per minute per node.
    #[serde(default)]
    pub tokens_per_minute: Option<u32>,
    /// Whether the caller may use the introspection endpoint.
    #[serde(default)]
    pub allow_introspect: bool,
    /// Whether the caller — a gateway in ambient mode — may obtain run tokens for tokenless
    /// tailnet peers, for this rule's audiences, by token exchange with a tailnet-peer subject
    /// (docs/design.md "Contracts": ambient exchange). The peer's own rules still decide
    /// what it gets.
    #[serde(default)]
    pub act_for_peers: bool,
}

/// The policy file's contents.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Group name (without `group:`) → logins.
    #[serde(default)]
    pub groups: BTreeMap<String, BTreeSet<String>>,
    /// Agent rules.
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
    /// External issuers trusted for federated run tokens (`[[federation]]`).
    #[serde(default)]
    pub federation: Vec<FederationTable>,
}

/// Why the policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Occurs when the file cannot be read.
    #[error("cannot read policy {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Occurs when the file is not valid.
    #[error("policy {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl PolicyFile {
    /// Reads and checks a policy file.
    pub fn load(path: &Path) -> Result<PolicyFile, PolicyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: shown.clone(),
            source,
        })?;
        PolicyFile::parse(&text).map_err(|message| PolicyError::Invalid {
            path: shown,
            message,
        })
    }

    /// Parses and checks policy TOML.
    pub fn parse(text: &str) -> Result<PolicyFile, String> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| e.to_string())?;
        table::check_all(&file.federation).map_err(|e| e.to_string())?;
        for (i, rule) in file.rules.iter().enumerate() {
            if rule.src.is_empty() {
                return Err(format!(
                    "rule {}: src is empty, so it matches nobody",
                    i + 1
                ));
            }
            if rule.claims.contains_key("fed") {
                return Err(format!(
                    "rule {}: claim \"fed\" is the federation grants' own",
                    i + 1
                ));
            }
            for selector in &rule.src {
                if let Selector::Group(group) = selector
                    && !file.groups.contains_key(group)
                {
                    return Err(format!("rule {}: unknown group {group:?}", i + 1));
                }
                if let Some(fed) = selector.fed()
                    && !file.federation.iter().any(|t| t.name == fed)
                {
                    return Err(format!(
                        "rule {}: no [[federation]] table is named {fed:?}",
                        i + 1
                    ));
                }
            }
        }
        Ok(file)
    }

    /// Rules that tie: two rules with selectors of equal rank that can select the same
    /// caller (the same selector, or groups sharing a member) and a shared audience. File
    /// order decides such a tie, which is rarely what the author meant; `tailpass policy
    /// check` reports each pair.
    pub fn overlaps(&self) -> Vec<String> {
        let mut found = Vec::new();
        for (i, a) in self.rules.iter().enumerate() {
            for (j, b) in self.rules.iter().enumerate().skip(i + 1) {
                let shared_audience = a
                    .audiences
                    .iter()
                    .find(|x| b.audiences.iter().any(|y| x == &y || *x == "*" || y == "*"));
                let Some(audience) = shared_audience else {
                    continue;
                };
                let tie = a.src.iter().find_map(|x| {
                    b.src
                        .iter()
                        .find(|y| x.rank() == y.rank() && self.may_select_alike(x, y))
                        .map(|y| (x, y))
                });
                if let Some((x, y)) = tie {
                    found.push(format!(
                        "rules {} and {} tie: {x} and {y} have the same rank and both cover \
                         audience {audience}; rule {} decides by file order",
                        i + 1,
                        j + 1,
                        i + 1
                    ));
                }
            }
        }
        found
    }

    /// Whether two selectors of equal rank can select one caller.
    fn may_select_alike(&self, a: &Selector, b: &Selector) -> bool {
        match (a, b) {
            (Selector::Group(x), Selector::Group(y)) => {
                x == y
                    || self
                        .groups
                        .get(x)
                        .zip(self.groups.get(y))
                        .is_some_and(|(m, n)| !m.is_disjoint(n))
            }
            _ => a == b,
        }
    }

    /// The groups (without `group:`) a login belongs to.
    pub fn groups_of(&self, login: &str) -> Vec<String> {
        self.groups
            .iter()
            .filter(|(_, members)| members.contains(login))
            .map(|(name, _)| name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_groups_and_rules() {
        let file = PolicyFile::parse(
            r#"
            [groups]
            sre = ["alice@example.com"]
            [[rule]]
            src = ["tag:ci", "group:sre"]
            audiences = ["https://gw"]
            max_lifetime = 900
            claims = { models = ["m1"], quota = { requests = 10 } }
            "#,
        )
        .unwrap();
        assert_eq!(file.groups_of("alice@example.com"), ["sre"]);
        assert!(file.groups_of("bob@example.com").is_empty());
        assert_eq!(file.rules[0].max_lifetime, Some(900));
        assert_eq!(file.rules[0].claims["quota"]["requests"], 10);
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let file = PolicyFile::parse(include_str!("../../deploy/policy.example.toml")).unwrap();
        assert_eq!(file.rules.len(), 3);
        assert_eq!(file.groups_of("bob@example.com"), ["sre"]);
        assert!(file.rules[2].allow_introspect);
    }

    #[test]
    fn rules_of_equal_rank_for_one_caller_and_audience_are_reported() {
        let file = PolicyFile::parse(
            "[groups]\na = [\"x@example.com\"]\nb = [\"x@example.com\"]\n\
             [[rule]]\nsrc = [\"tag:ci\"]\naudiences = [\"https://gw\"]\n\
             [[rule]]\nsrc = [\"tag:ci\"]\naudiences = [\"*\"]\n\
             [[rule]]\nsrc = [\"node:n1\"]\naudiences = [\"https://gw\"]\n\
             [[rule]]\nsrc = [\"group:a\"]\naudiences = [\"https://docs\"]\n\
             [[rule]]\nsrc = [\"group:b\"]\naudiences = [\"https://docs\"]\n\
             [[rule]]\nsrc = [\"tag:ci\"]\naudiences = [\"https://other\"]\n",
        )
        .unwrap();
        let found = file.overlaps();
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(found[0].starts_with("rules 1 and 2 tie"));
        assert!(found[1].starts_with("rules 2 and 6 tie"), "{found:#?}");
        assert!(found[2].starts_with("rules 4 and 5 tie"));
    }

    #[test]
    fn refuses_typos_and_dangling_groups() {
        assert!(PolicyFile::parse("[[rule]]\nsrc = [\"tag:ci\"]\naudience = [\"x\"]\n").is_err());
        let err = PolicyFile::parse("[[rule]]\nsrc = [\"group:nope\"]\n").unwrap_err();
        assert!(err.contains("nope"));
        assert!(
            PolicyFile::parse("[[rule]]\naudiences = [\"x\"]\n")
                .unwrap_err()
                .contains("src")
        );
    }
}
