//! A local identity table: peer IP → WhoIs answer, in tailscaled's exact JSON shape.
//!
//! For tests, demos and `--dev`, where no tailscaled is reachable. Tests give several loopback
//! addresses (127.0.0.2, 127.0.0.3, …) distinct identities, so a client that binds its source
//! address is a different tailnet peer through the same code path as production. An address
//! missing from the table is not on the tailnet; only `--dev` maps every loopback address to
//! one default identity.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use super::whois::{WhoIsError, WhoIsResponse};
use super::{Identity, IdentitySource, WhoisError};

/// The tsidp capability name, as tailscaled delivers it in the CapMap.
pub const TSIDP_CAP: &str = "tailscale.com/cap/tsidp";
/// The default name of tailpass's own capability (agent rules) in the CapMap.
pub const AGENT_CAP: &str = "tailpass/cap/agent";

/// Peer IP → identity, fixed at start-up.
#[derive(Debug, Default)]
pub struct LocalTable {
    entries: HashMap<IpAddr, Arc<Identity>>,
    loopback_default: Option<Arc<Identity>>,
}

/// Why an identity table could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LocalTableError {
    /// Occurs when the file cannot be read.
    #[error("cannot read identity file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Occurs when the file is not a JSON object of WhoIs answers.
    #[error("identity file {path} is not a JSON object of WhoIs answers: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// Occurs when a key of the object is not an IP address.
    #[error("identity file {path}: {key:?} is not an IP address")]
    BadAddress {
        /// The file.
        path: String,
        /// The offending key.
        key: String,
    },
    /// Occurs when an entry is not a usable identity.
    #[error("identity file {path}: entry {key}: {source}")]
    BadEntry {
        /// The file.
        path: String,
        /// The entry's address.
        key: String,
        /// What is wrong with it.
        source: WhoIsError,
    },
}

impl LocalTable {
    /// Loads a table from a JSON file: `{"<ip>": <WhoIsResponse>, …}`.
    pub fn from_file(path: &Path) -> Result<LocalTable, LocalTableError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| LocalTableError::Read {
            path: shown.clone(),
            source,
        })?;
        let raw: HashMap<String, WhoIsResponse> =
            serde_json::from_str(&text).map_err(|source| LocalTableError::Parse {
                path: shown.clone(),
                source,
            })?;
        let mut entries = HashMap::with_capacity(raw.len());
        for (key, whois) in raw {
            let ip: IpAddr = key.parse().map_err(|_| LocalTableError::BadAddress {
                path: shown.clone(),
                key: key.clone(),
            })?;
            let identity = whois
                .into_identity()
                .map_err(|source| LocalTableError::BadEntry {
                    path: shown.clone(),
                    key,
                    source,
                })?;
            entries.insert(ip.to_canonical(), Arc::new(identity));
        }
        Ok(LocalTable {
            entries,
            loopback_default: None,
        })
    }

    /// The `--dev` table: every loopback address is the current OS user on one node named
    /// `local`, with the admin and client-registration grants.
    pub fn dev() -> LocalTable {
        LocalTable {
            entries: HashMap::new(),
            loopback_default: Some(Arc::new(dev_identity())),
        }
    }

    /// How many addresses the table names.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table names no address.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn lookup(&self, ip: IpAddr) -> Option<Arc<Identity>> {
        let ip = ip.to_canonical();
        if let Some(found) = self.entries.get(&ip) {
            return Some(found.clone());
        }
        match &self.loopback_default {
            Some(default) if ip.is_loopback() => Some(default.clone()),
            _ => None,
        }
    }
}

#[async_trait::async_trait]
impl IdentitySource for LocalTable {
    /// A table (and `--dev`) stands for tailscaled on test and developer machines: OS sockets
    /// and the serve proxy, never an embedded node.
    fn vouches_for(&self, arrival: super::Arrival) -> bool {
        !matches!(arrival, super::Arrival::EmbeddedNode)
    }

    async fn whois(&self, peer: SocketAddr) -> Result<Arc<Identity>, WhoisError> {
        self.lookup(peer.ip()).ok_or(WhoisError::NotOnTailnet)
    }
}

/// The identity `--dev` gives every loopback caller, built as a WhoIs answer so that it goes
/// through the same parser as every other source.
fn dev_identity() -> Identity {
    let login_user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| {
            !u.is_empty()
                && u.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        })
        .unwrap_or_else(|| "dev".to_owned());
    let uid = os_uid().unwrap_or(1000);
    let json = serde_json::json!({
        "Node": {
            "ID": 1,
            "StableID": "nDevLocalNode",
            "Name": "local.",
            "User": uid,
            "Addresses": ["127.0.0.1/32", "::1/128"],
            "Tags": [],
        },
        "UserProfile": {
            "ID": uid,
            "LoginName": format!("{login_user}@localhost"),
            "DisplayName": login_user,
            "ProfilePicURL": "",
        },
        "CapMap": {
            TSIDP_CAP: [{
                "users": ["*"],
                "resources": ["*"],
                "allow_admin_ui": true,
                "allow_dcr": true,
            }],
            // tsidp grants never grant agent tokens; on a developer's machine anything goes.
            AGENT_CAP: [{"audiences": ["*"], "scopes": ["*"]}],
        },
    });
    // The JSON above is fixed and well-formed; should parsing ever fail the fallback is a
    // tagged identity with no rights at all rather than a panic.
    serde_json::from_value::<WhoIsResponse>(json)
        .ok()
        .and_then(|w| w.into_identity().ok())
        .unwrap_or_else(|| Identity {
            user: None,
            node: super::Node {
                id: 1,
                stable_id: super::StableNodeId("nDevLocalNode".into()),
                name: "local".into(),
                tags: vec!["tag:dev".into()],
                addresses: vec![],
                key: None,
            },
            tailnet: "local".into(),
            caps: super::CapMap::default(),
        })
}

/// The real user id of this process, read from the owner of `/proc/self`.
fn os_uid() -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self")
        .ok()
        .map(|m| u64::from(m.uid()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_table(json: &str) -> tempfile::NamedTempFile {
        use std::io::Write as _;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(json.as_bytes()).unwrap();
        f
    }

    #[tokio::test]
    async fn distinct_addresses_resolve_to_distinct_identities() {
        let user = include_str!("../../tests/fixtures/whois-user.json");
        let tagged = include_str!("../../tests/fixtures/whois-tagged.json");
        let f = write_table(&format!(
            r#"{{"127.0.0.2": {user}, "127.0.0.3": {tagged}}}"#
        ));
        let table = LocalTable::from_file(f.path()).unwrap();
        let a = table
            .whois("127.0.0.2:5000".parse().unwrap())
            .await
            .unwrap();
        let b = table
            .whois("127.0.0.3:5000".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(a.user.as_ref().unwrap().login, "alice@example.com");
        assert!(b.is_tagged());
        assert_eq!(
            table.whois("127.0.0.9:1".parse().unwrap()).await,
            Err(WhoisError::NotOnTailnet)
        );
        // An IPv4-mapped IPv6 peer (a dual-stack listener) is the same peer.
        let mapped: SocketAddr = "[::ffff:127.0.0.2]:5000".parse().unwrap();
        assert_eq!(table.whois(mapped).await.unwrap(), a);
    }

    #[tokio::test]
    async fn dev_table_covers_loopback_only() {
        let table = LocalTable::dev();
        let me = table.whois("127.0.0.5:1".parse().unwrap()).await.unwrap();
        assert!(me.user.as_ref().unwrap().login.ends_with("@localhost"));
        assert_eq!(
            me.caps.get(TSIDP_CAP)[0]["allow_dcr"],
            serde_json::json!(true)
        );
        assert_eq!(table.whois("[::1]:1".parse().unwrap()).await.unwrap(), me);
        assert_eq!(
            table.whois("100.64.0.1:1".parse().unwrap()).await,
            Err(WhoisError::NotOnTailnet)
        );
    }

    #[test]
    fn bad_files_are_refused_with_their_reason() {
        let f = write_table(r#"{"not-an-ip": {"Node":{"ID":1,"StableID":"n","Name":"a."}}}"#);
        assert!(matches!(
            LocalTable::from_file(f.path()),
            Err(LocalTableError::BadAddress { .. })
        ));
        let f = write_table("[1,2]");
        assert!(matches!(
            LocalTable::from_file(f.path()),
            Err(LocalTableError::Parse { .. })
        ));
        assert!(matches!(
            LocalTable::from_file(Path::new("/nonexistent/x.json")),
            Err(LocalTableError::Read { .. })
        ));
    }
}
