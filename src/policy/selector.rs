//! Selectors: how a rule's `src` names its callers, and how specific each name is.
//!
//! A selector names a caller by tag, node stable id, login, group or federation — never by
//! node name, which a device's owner chooses. Each selector has a rank; a rule's rank for a
//! caller is that of its most specific selector that selects the caller, and the rule of best
//! rank decides (see [`super::agent`]). From most to least specific:
//! `node:X+fed:Y`, `node:X`, `tag:X+fed:Y`, `tag:X`, `fed:Y`, a login, `group:X`, `*`.

use std::fmt;

use super::file::PolicyFile;
use crate::identity::Identity;

/// One entry of a rule's `src`, parsed when the rule is read (file or tailnet grant).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum Selector {
    /// `node:<StableID>+fed:<table>`: that node, presenting a token of that federation table.
    NodeFed {
        /// The node's stable id.
        node: String,
        /// The federation table's name.
        fed: String,
    },
    /// `node:<StableID>`.
    Node(String),
    /// `tag:<name>+fed:<table>`: a node with that tag, presenting a token of that table.
    TagFed {
        /// The tag, with its `tag:` prefix.
        tag: String,
        /// The federation table's name.
        fed: String,
    },
    /// `tag:<name>` (kept with its prefix, as WhoIs spells tags).
    Tag(String),
    /// `fed:<table>`: a caller whose external token matched that federation table.
    Fed(String),
    /// A user's login, such as `alice@example.com`.
    Login(String),
    /// `group:<name>`, a group of the policy file.
    Group(String),
    /// `*`: every identified caller.
    Any,
}

/// Who a rule is asked about: a tailnet identity, the federation table an external token it
/// presented matched, or both (a CI runner on the tailnet trading its platform's token).
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller<'a> {
    /// The tailnet identity of the connection, if it has one.
    pub identity: Option<&'a Identity>,
    /// The `[[federation]]` table the presented external token matched, if any.
    pub fed: Option<&'a str>,
}

impl<'a> From<&'a Identity> for Caller<'a> {
    fn from(identity: &'a Identity) -> Caller<'a> {
        Caller {
            identity: Some(identity),
            fed: None,
        }
    }
}

impl<'a> From<&'a std::sync::Arc<Identity>> for Caller<'a> {
    fn from(identity: &'a std::sync::Arc<Identity>) -> Caller<'a> {
        Caller::from(identity.as_ref())
    }
}

/// The rank a caller gets when a tailnet grant of tailpass's capability has no `src`: last.
pub const UNSCOPED_GRANT_RANK: u8 = 8;

impl Selector {
    /// Parses a selector, refusing empty names and `+` joins other than one `fed:` with one
    /// `node:` or `tag:`.
    pub fn parse(text: &str) -> Result<Selector, String> {
        let named = |prefix: &str, value: &str| {
            if value.is_empty() {
                Err(format!("selector {text:?}: {prefix} needs a name"))
            } else {
                Ok(value.to_owned())
            }
        };
        if let Some((a, b)) = text.split_once('+') {
            let (subject, fed) = match (a.strip_prefix("fed:"), b.strip_prefix("fed:")) {
                (None, Some(fed)) => (a, fed),
                (Some(fed), None) => (b, fed),
                _ => {
                    return Err(format!(
                        "selector {text:?}: `+` joins exactly one fed: with one node: or tag:"
                    ));
                }
            };
            let fed = named("fed:", fed)?;
            return match Selector::parse(subject)? {
                Selector::Node(node) => Ok(Selector::NodeFed { node, fed }),
                Selector::Tag(tag) => Ok(Selector::TagFed { tag, fed }),
                _ => Err(format!(
                    "selector {text:?}: `+` joins exactly one fed: with one node: or tag:"
                )),
            };
        }
        if text == "*" {
            return Ok(Selector::Any);
        }
        if let Some(tag) = text.strip_prefix("tag:") {
            named("tag:", tag)?;
            return Ok(Selector::Tag(text.to_owned()));
        }
        if let Some(node) = text.strip_prefix("node:") {
            return Ok(Selector::Node(named("node:", node)?));
        }
        if let Some(fed) = text.strip_prefix("fed:") {
            return Ok(Selector::Fed(named("fed:", fed)?));
        }
        if let Some(group) = text.strip_prefix("group:") {
            return Ok(Selector::Group(named("group:", group)?));
        }
        if text.is_empty() || text.chars().any(char::is_whitespace) {
            return Err(format!(
                "selector {text:?} is not a tag, node, group or login"
            ));
        }
        Ok(Selector::Login(text.to_owned()))
    }

    /// How specific the selector is: 0 is the most specific.
    pub fn rank(&self) -> u8 {
        match self {
            Selector::NodeFed { .. } => 0,
            Selector::Node(_) => 1,
            Selector::TagFed { .. } => 2,
            Selector::Tag(_) => 3,
            Selector::Fed(_) => 4,
            Selector::Login(_) => 5,
            Selector::Group(_) => 6,
            Selector::Any => 7,
        }
    }

    /// Whether the selector names the caller. `fed:Y` selects a caller whose external token
    /// matched table `Y`; a `+` join needs both halves. `*` and every other selector name
    /// tailnet identities only: a federated caller off the tailnet is selected by `fed:`
    /// alone, so that a rule written for the tailnet never reaches a CI job elsewhere.
    pub fn selects<'a>(&self, caller: impl Into<Caller<'a>>, policy: &PolicyFile) -> bool {
        let caller = caller.into();
        let fed_is = |name: &str| caller.fed == Some(name);
        let tagged = |tag: &str| {
            caller
                .identity
                .is_some_and(|i| i.node.tags.iter().any(|t| t == tag))
        };
        let node_is = |node: &str| caller.identity.is_some_and(|i| i.node.stable_id.0 == node);
        let login = || {
            caller
                .identity
                .and_then(|i| i.user.as_ref())
                .map(|u| &u.login)
        };
        match self {
            Selector::Any => caller.identity.is_some(),
            Selector::Tag(tag) => tagged(tag),
            Selector::Node(node) => node_is(node),
            Selector::NodeFed { node, fed } => node_is(node) && fed_is(fed),
            Selector::TagFed { tag, fed } => tagged(tag) && fed_is(fed),
            Selector::Fed(fed) => fed_is(fed),
            Selector::Login(wanted) => login().is_some_and(|l| l == wanted),
            Selector::Group(group) => login().is_some_and(|l| {
                policy
                    .groups
                    .get(group)
                    .is_some_and(|members| members.contains(l))
            }),
        }
    }

    /// The federation table the selector names, if it names one.
    pub fn fed(&self) -> Option<&str> {
        match self {
            Selector::NodeFed { fed, .. } | Selector::TagFed { fed, .. } | Selector::Fed(fed) => {
                Some(fed)
            }
            _ => None,
        }
    }
}

impl TryFrom<String> for Selector {
    type Error = String;

    fn try_from(text: String) -> Result<Selector, String> {
        Selector::parse(&text)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::NodeFed { node, fed } => write!(f, "node:{node}+fed:{fed}"),
            Selector::Node(node) => write!(f, "node:{node}"),
            Selector::TagFed { tag, fed } => write!(f, "{tag}+fed:{fed}"),
            Selector::Tag(tag) => f.write_str(tag),
            Selector::Fed(fed) => write!(f, "fed:{fed}"),
            Selector::Login(login) => f.write_str(login),
            Selector::Group(group) => write!(f, "group:{group}"),
            Selector::Any => f.write_str("*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_run_from_node_to_anyone() {
        let order = [
            "node:n1+fed:github",
            "node:n1",
            "tag:ci+fed:github",
            "tag:ci",
            "fed:github",
            "alice@example.com",
            "group:sre",
            "*",
        ];
        let ranks: Vec<u8> = order
            .iter()
            .map(|s| Selector::parse(s).unwrap().rank())
            .collect();
        assert_eq!(ranks, [0, 1, 2, 3, 4, 5, 6, 7]);
        for s in order {
            assert_eq!(Selector::parse(s).unwrap().to_string(), s, "round trip");
        }
        assert_eq!(
            Selector::parse("fed:github+tag:ci").unwrap(),
            Selector::parse("tag:ci+fed:github").unwrap()
        );
    }

    #[test]
    fn malformed_selectors_are_refused() {
        for bad in [
            "",
            "tag:",
            "node:",
            "group:",
            "fed:",
            "tag:a+tag:b",
            "fed:a+fed:b",
            "group:x+fed:y",
            "alice+fed:y",
            "tag:a+fed:",
            "two words",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad:?}");
        }
    }
}
