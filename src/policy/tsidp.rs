//! tsidp's capability grant, `tailscale.com/cap/tsidp`, as the tailnet policy file writes it:
//!
//! ```json
//! {"users": ["*"], "resources": ["https://gateway.example"], "extraClaims": {"team": "sre"},
//!  "includeInUserInfo": true, "allow_admin_ui": true, "allow_dcr": true}
//! ```
//!
//! The grants in a caller's CapMap are the ones whose `src` matched that caller, so each grant
//! applies to it as given. A value that does not parse is skipped with a warning rather than
//! failing the request: one bad rule in the tailnet policy must not lock everyone out, and a
//! skipped grant can only take rights away.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::identity::Identity;
use crate::identity::local::TSIDP_CAP;

/// One tsidp grant.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct TsidpGrant {
    /// Which users the grant's `resources` and claims are for (`*` for all).
    #[serde(default)]
    pub users: Vec<String>,
    /// RFC 8707 resources the user may request tokens for (`*` for any).
    #[serde(default)]
    pub resources: Vec<String>,
    /// Claims added to the user's tokens.
    #[serde(default, rename = "extraClaims")]
    pub extra_claims: Map<String, Value>,
    /// Whether `extraClaims` also appear at `/userinfo`.
    #[serde(default, rename = "includeInUserInfo")]
    pub include_in_userinfo: bool,
    /// Access to the admin UI and API.
    #[serde(default)]
    pub allow_admin_ui: bool,
    /// Dynamic client registration.
    #[serde(default)]
    pub allow_dcr: bool,
}

/// The caller's tsidp grants.
pub fn grants(identity: &Identity) -> Vec<TsidpGrant> {
    identity
        .caps
        .get(TSIDP_CAP)
        .iter()
        .filter_map(|value| match TsidpGrant::deserialize(value) {
            Ok(grant) => Some(grant),
            Err(e) => {
                tracing::warn!(node = %identity.node.stable_id, error = %e, "ignoring malformed {TSIDP_CAP} grant");
                None
            }
        })
        .collect()
}

/// Whether the caller may use the admin UI and API.
pub fn may_administer(identity: &Identity) -> bool {
    grants(identity).iter().any(|g| g.allow_admin_ui)
}

/// Whether the caller may register clients dynamically.
pub fn may_register(identity: &Identity) -> bool {
    grants(identity).iter().any(|g| g.allow_dcr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::whois::WhoIsResponse;

    fn with_caps(caps: Value) -> Identity {
        let mut whois: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/whois-user.json")).unwrap();
        whois["CapMap"] = caps;
        serde_json::from_value::<WhoIsResponse>(whois)
            .unwrap()
            .into_identity()
            .unwrap()
    }

    #[test]
    fn flags_come_from_any_grant() {
        let id = with_caps(serde_json::json!({TSIDP_CAP: [{"users": ["*"]}, {"allow_dcr": true}]}));
        assert!(may_register(&id));
        assert!(!may_administer(&id));
    }

    #[test]
    fn malformed_grants_grant_nothing() {
        let id = with_caps(serde_json::json!({TSIDP_CAP: [{"allow_admin_ui": "yes"}, 42]}));
        assert!(grants(&id).is_empty());
        assert!(!may_administer(&id));
    }

    #[test]
    fn fixture_grant_parses_fully() {
        let id = with_caps(
            serde_json::from_str::<Value>(include_str!("../../tests/fixtures/whois-user.json"))
                .unwrap()["CapMap"]
                .clone(),
        );
        let g = &grants(&id)[0];
        assert!(g.allow_admin_ui && g.allow_dcr && g.include_in_userinfo);
        assert_eq!(g.extra_claims["team"], "platform");
    }
}
