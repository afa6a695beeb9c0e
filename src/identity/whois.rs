//! tailscaled's WhoIs answer (`apitype.WhoIsResponse`) as it appears on the wire, and its
//! conversion into an [`Identity`].
//!
//! The same JSON shape is read from the LocalAPI and from a local identity table, so both
//! backends share one parser. Unknown fields are ignored and `null` is accepted for every list
//! and map, as tailscaled emits both.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use super::{CapMap, Identity, Node, StableNodeId, User};

/// `apitype.WhoIsResponse`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WhoIsResponse {
    /// The peer's node (`tailcfg.Node`).
    pub node: WireNode,
    /// The node's owner (`tailcfg.UserProfile`); for tagged nodes a placeholder.
    #[serde(default)]
    pub user_profile: Option<WireUserProfile>,
    /// Capability grants of the tailnet policy that apply to this peer.
    #[serde(default, deserialize_with = "null_as_default")]
    pub cap_map: BTreeMap<String, Option<Vec<serde_json::Value>>>,
}

/// The parts of `tailcfg.Node` tailpass uses.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WireNode {
    /// The numeric node id.
    #[serde(rename = "ID")]
    pub id: u64,
    /// The stable node id, which survives renames.
    #[serde(rename = "StableID")]
    pub stable_id: String,
    /// The node's FQDN with a trailing dot, e.g. `alice-laptop.tail1234.ts.net.`.
    pub name: String,
    /// The node's public WireGuard key, `nodekey:…`.
    #[serde(default)]
    pub key: Option<String>,
    /// The node's tailnet addresses as prefixes (`100.64.0.2/32`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub addresses: Vec<String>,
    /// ACL tags; a non-empty list means the node has no user.
    #[serde(default, deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
}

/// The parts of `tailcfg.UserProfile` tailpass uses.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WireUserProfile {
    /// The numeric user id.
    #[serde(rename = "ID")]
    pub id: u64,
    /// The login, e.g. `alice@example.com` or `alice@github`.
    #[serde(default)]
    pub login_name: String,
    /// The display name.
    #[serde(default)]
    pub display_name: String,
    /// The avatar URL, often empty.
    #[serde(default, rename = "ProfilePicURL")]
    pub profile_pic_url: String,
}

/// Why a WhoIs answer could not become an identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WhoIsError {
    /// Occurs when the node has no stable id, which every real node has.
    #[error("WhoIs answer has an empty StableID")]
    NoStableId,
    /// Occurs when an untagged node comes without the user that owns it.
    #[error("WhoIs answer for an untagged node has no UserProfile")]
    NoUser,
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

impl WhoIsResponse {
    /// The identity this answer describes. A node with tags has no user, whatever placeholder
    /// profile tailscaled attached (`tagged-devices`).
    pub fn into_identity(self) -> Result<Identity, WhoIsError> {
        if self.node.stable_id.is_empty() {
            return Err(WhoIsError::NoStableId);
        }
        let user = if self.node.tags.is_empty() {
            let profile = self.user_profile.ok_or(WhoIsError::NoUser)?;
            Some(User {
                id: profile.id,
                login: profile.login_name,
                display_name: profile.display_name,
                picture: Some(profile.profile_pic_url).filter(|p| !p.is_empty()),
            })
        } else {
            None
        };
        let fqdn = self.node.name.trim_end_matches('.').to_owned();
        let tailnet = tailnet_of(&fqdn);
        let caps = self
            .cap_map
            .into_iter()
            .map(|(name, values)| (name, values.unwrap_or_default()))
            .collect();
        Ok(Identity {
            user,
            node: Node {
                id: self.node.id,
                stable_id: StableNodeId(self.node.stable_id),
                name: fqdn,
                tags: self.node.tags,
                addresses: self.node.addresses,
                key: self.node.key.filter(|k| !k.is_empty()),
            },
            tailnet,
            caps: CapMap(caps),
        })
    }
}

/// The tailnet's DNS name, which is the node FQDN without its first label
/// (`alice-laptop.tail1234.ts.net` → `tail1234.ts.net`). A bare host name is its own tailnet,
/// which is what `--dev` and hand-written tables produce.
fn tailnet_of(fqdn: &str) -> String {
    match fqdn.split_once('.') {
        Some((_, rest)) if !rest.is_empty() => rest.to_owned(),
        _ => fqdn.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = include_str!("../../tests/fixtures/whois-user.json");
    const TAGGED: &str = include_str!("../../tests/fixtures/whois-tagged.json");

    #[test]
    fn user_fixture_keeps_cap_map_and_profile() {
        let whois: WhoIsResponse = serde_json::from_str(USER).unwrap();
        let id = whois.into_identity().unwrap();
        let user = id.user.as_ref().unwrap();
        assert_eq!(user.login, "alice@example.com");
        assert_eq!(user.id, 3421985709123456);
        assert_eq!(
            user.picture.as_deref(),
            Some("https://lh3.example.com/a/alice.png")
        );
        assert_eq!(id.node.stable_id.0, "nT2k5GQ8Zb11CNTRL");
        assert_eq!(id.node.name, "alice-laptop.tail1234.ts.net");
        assert_eq!(id.tailnet, "tail1234.ts.net");
        assert!(id.node.tags.is_empty(), "Tags: null is an empty list");
        let grants = id.caps.get("tailscale.com/cap/tsidp");
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0]["allow_dcr"], serde_json::json!(true));
    }

    #[test]
    fn tagged_fixture_has_no_user() {
        let whois: WhoIsResponse = serde_json::from_str(TAGGED).unwrap();
        let id = whois.into_identity().unwrap();
        assert!(id.user.is_none());
        assert_eq!(id.node.tags, ["tag:ci", "tag:claude-pr-reviewbot"]);
        assert!(id.caps.0.is_empty(), "CapMap: null is an empty map");
        assert_eq!(id.node.addresses.len(), 2);
    }

    #[test]
    fn untagged_node_without_profile_is_refused() {
        let json = r#"{"Node":{"ID":1,"StableID":"n1","Name":"a.b."}}"#;
        let whois: WhoIsResponse = serde_json::from_str(json).unwrap();
        assert_eq!(whois.into_identity().unwrap_err(), WhoIsError::NoUser);
    }

    #[test]
    fn empty_stable_id_is_refused() {
        let json = r#"{"Node":{"ID":1,"StableID":"","Name":"a.b.","Tags":["tag:x"]}}"#;
        let whois: WhoIsResponse = serde_json::from_str(json).unwrap();
        assert_eq!(whois.into_identity().unwrap_err(), WhoIsError::NoStableId);
    }

    #[test]
    fn tailnet_is_the_name_without_its_host_label() {
        assert_eq!(tailnet_of("a.tail1.ts.net"), "tail1.ts.net");
        assert_eq!(tailnet_of("local"), "local");
        assert_eq!(tailnet_of("weird."), "weird.");
    }
}
