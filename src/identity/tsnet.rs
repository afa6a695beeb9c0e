//! The embedded tailnet node (cargo feature `tsnet`): tailpass joins the tailnet itself through
//! the `tailscale` crate (tailscale-rs, pure Rust), with no tailscaled on the host.
//!
//! What this mode cannot see: the crate's public API gives each peer's node — stable id, name,
//! tags, addresses, node key — but neither the owner's login nor the tailnet's app capability
//! grants. So every peer is an identity without a user (people cannot log in to apps this way;
//! use the `tailscaled` backend for that) and with an empty capability map: agents are given
//! their rights by the local policy file, selected by `tag:` or `node:<StableID>`.
//!
//! No control plane is reachable from CI, so this backend is covered by compiling it and by the
//! identity trait's tests; joining is bounded by a timeout because the crate's constructor
//! waits forever when control is unreachable.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tailscale::{Config, Device};

use super::{CapMap, Identity, IdentitySource, Node, StableNodeId, WhoisError};

/// How long joining the tailnet may take.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The node's key file, inside the state directory.
const KEY_FILE: &str = "tsnet-keys.json";

/// Why the embedded node could not start.
#[derive(Debug, thiserror::Error)]
pub enum TsnetError {
    /// Occurs when the key file cannot be read, written or secured.
    #[error("tsnet key file: {0}")]
    Keys(String),
    /// Occurs when the control plane does not answer in time.
    #[error("could not join the tailnet within {0:?} (is TS_AUTHKEY set and control reachable?)")]
    Timeout(Duration),
    /// Occurs when the device fails.
    #[error("tailnet device: {0}")]
    Device(String),
}

/// An embedded tailnet node answering "who is this address?" from its peer map.
#[derive(Clone)]
pub struct Tsnet {
    device: Arc<Device>,
}

impl std::fmt::Debug for Tsnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tsnet").finish_non_exhaustive()
    }
}

impl Tsnet {
    /// Joins the tailnet as `hostname`, keeping the node's keys in `state_dir` (mode 0600) and
    /// reading the auth key from `TS_AUTHKEY` on first start.
    pub async fn join(state_dir: &Path, hostname: &str) -> Result<Tsnet, TsnetError> {
        let key_file = state_dir.join(KEY_FILE);
        let mut config = Config::default_with_key_file(&key_file)
            .await
            .map_err(|e| TsnetError::Keys(e.to_string()))?;
        // tailscale-rs writes its key file world-readable (docs/design.md "Notes for maintainers"); the node key is
        // the node's identity on the tailnet.
        if key_file.exists() {
            crate::private_fs::tighten(&key_file, 0o600)
                .map_err(|e| TsnetError::Keys(e.to_string()))?;
        }
        config.requested_hostname = Some(hostname.to_owned());
        config.client_name = Some("tailpass".to_owned());
        let auth_key = std::env::var("TS_AUTHKEY").ok().filter(|k| !k.is_empty());
        let device = tokio::time::timeout(JOIN_TIMEOUT, Device::new(&config, auth_key))
            .await
            .map_err(|_| TsnetError::Timeout(JOIN_TIMEOUT))?
            .map_err(|e| TsnetError::Device(e.to_string()))?;
        if key_file.exists() {
            crate::private_fs::tighten(&key_file, 0o600)
                .map_err(|e| TsnetError::Keys(e.to_string()))?;
        }
        Ok(Tsnet {
            device: Arc::new(device),
        })
    }

    /// Listens on the node's tailnet IPv4 address at `port`.
    pub async fn listen(&self, port: u16) -> Result<tailscale::netstack::TcpListener, TsnetError> {
        let ip = self
            .device
            .ipv4_addr()
            .await
            .map_err(|e| TsnetError::Device(e.to_string()))?;
        self.device
            .tcp_listen(SocketAddr::new(IpAddr::V4(ip), port))
            .await
            .map_err(|e| TsnetError::Device(e.to_string()))
    }
}

#[async_trait::async_trait]
impl IdentitySource for Tsnet {
    /// Only connections through the embedded node itself: the OS listener beside it may be
    /// reached from any network with any source address.
    fn vouches_for(&self, arrival: super::Arrival) -> bool {
        arrival == super::Arrival::EmbeddedNode
    }

    async fn whois(&self, peer: SocketAddr) -> Result<Arc<Identity>, WhoisError> {
        let node = self
            .device
            .peer_by_tailnet_ip(peer.ip().to_canonical())
            .await
            .map_err(|e| WhoisError::Unavailable(e.to_string()))?
            .ok_or(WhoisError::NotOnTailnet)?;
        let name = node.hostname.trim_end_matches('.').to_owned();
        Ok(Arc::new(Identity {
            // The owner's login is not exposed by tailscale-rs: see the module documentation.
            user: None,
            node: Node {
                id: u64::try_from(node.id).unwrap_or_default(),
                stable_id: StableNodeId(node.stable_id.0.clone()),
                name,
                tags: node.tags.clone(),
                addresses: vec![
                    node.tailnet_address.ipv4.to_string(),
                    node.tailnet_address.ipv6.to_string(),
                ],
                key: Some(node.node_key.to_string()),
            },
            tailnet: node.tailnet.clone().unwrap_or_default(),
            caps: CapMap::default(),
        }))
    }
}
