//! Who is calling: the tailnet identity behind a peer address.
//!
//! The rest of the server sees one type, [`Identity`], produced by one trait,
//! [`IdentitySource`], whatever answers the question — a local table ([`local`]), tailscaled's
//! LocalAPI ([`tailscaled`]) or, with the `tsnet` feature, an embedded node ([`tsnet`]). An
//! identity never comes from anything the client can write (headers, parameters): only from
//! the connection's peer address.
//!
//! This module does not decide what an identity may do; that is `policy`'s job.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub mod bounded;
pub mod local;
pub mod peer;
pub mod tailscaled;
#[cfg(feature = "tsnet")]
pub mod tsnet;
pub mod whois;

/// A node's stable id (`tailcfg.StableNodeID`), which survives renames. Policy selects nodes
/// by it, never by name, which the device's owner chooses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StableNodeId(pub String);

impl fmt::Display for StableNodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The person a node belongs to. Tagged nodes have none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The numeric user id; `sub` is `userid:<hex of this>`.
    pub id: u64,
    /// The login name, e.g. `alice@example.com` or `alice@github`.
    pub login: String,
    /// The display name.
    pub display_name: String,
    /// The avatar URL, when there is one.
    pub picture: Option<String>,
}

/// The calling device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The numeric node id.
    pub id: u64,
    /// The stable node id.
    pub stable_id: StableNodeId,
    /// The node's FQDN without the trailing dot.
    pub name: String,
    /// ACL tags (`tag:ci`); empty for a user's node.
    pub tags: Vec<String>,
    /// The node's tailnet addresses as prefixes.
    pub addresses: Vec<String>,
    /// The node's public key (`nodekey:…`), when known.
    pub key: Option<String>,
}

/// Capability grants of the tailnet policy: capability name → the list of JSON values the
/// matching grants carry. Kept raw here; `policy` gives the values their schema.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CapMap(pub BTreeMap<String, Vec<serde_json::Value>>);

impl CapMap {
    /// The values granted under `name`, or none.
    pub fn get(&self, name: &str) -> &[serde_json::Value] {
        self.0.get(name).map(Vec::as_slice).unwrap_or_default()
    }
}

/// Everything the tailnet says about a caller. Serializable because an authorization code
/// and a refresh family keep the identity they were issued to: the relying party that redeems
/// them is not on the user's node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The node's owner; `None` for a tagged node.
    pub user: Option<User>,
    /// The calling node.
    pub node: Node,
    /// The tailnet's DNS name (`tail1234.ts.net`).
    pub tailnet: String,
    /// The caller's capability grants.
    pub caps: CapMap,
}

impl Identity {
    /// Whether this caller is a tagged node (a workload, not a person).
    pub fn is_tagged(&self) -> bool {
        self.user.is_none()
    }
}

/// Why no identity could be had for a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WhoisError {
    /// Occurs when the address belongs to no node of the tailnet (or, with a local table, is
    /// not in it). Such a caller is unidentified and learns nothing about policy.
    #[error("the peer is not on the tailnet")]
    NotOnTailnet,
    /// Occurs when the identity backend cannot answer (tailscaled down, socket missing). The
    /// request fails with 503 and the next one tries again.
    #[error("identity source unavailable: {0}")]
    Unavailable(String),
}

/// How a connection reached tailpass: what an identity source needs to know before it may
/// vouch for the peer address. A source only knows who holds an address on the tailnet; it
/// must not be asked about a connection that could have come from somewhere else with the
/// same source address (a pod network or a LAN using 100.64.0.0/10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Through an OS socket, addressed to `local` (this end's address).
    OsSocket {
        /// The address the connection was made to, when known.
        local: Option<IpAddr>,
    },
    /// Through the loopback listener for `tailscale serve`, which names the peer in
    /// `X-Forwarded-For`.
    ServeProxy,
    /// Through the embedded tailnet node's own network stack.
    EmbeddedNode,
}

/// Whether `ip` is in the tailnet's address ranges (100.64.0.0/10, fd7a:115c:a1e0::/48).
pub fn is_tailnet_address(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            a == 100 && (64..128).contains(&b)
        }
        IpAddr::V6(v6) => v6.segments().starts_with(&[0xfd7a, 0x115c, 0xa1e0]),
    }
}

/// Resolves a peer address to the identity behind it.
#[async_trait::async_trait]
pub trait IdentitySource: Send + Sync + 'static {
    /// Whether this source can vouch for a connection that arrived this way. Asked before
    /// every lookup; a connection it cannot vouch for has no identity.
    fn vouches_for(&self, arrival: Arrival) -> bool;

    /// The identity of the peer at `peer`. The port matters to tailscaled (userspace
    /// networking maps connections by it); backends that do not need it ignore it.
    async fn whois(&self, peer: SocketAddr) -> Result<Arc<Identity>, WhoisError>;
}
