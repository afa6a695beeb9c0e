//! Who may log in where, for which resources, and with which extra claims.
//!
//! Inputs: the client's access rule (logins, `group:`s, or anyone), the policy file's groups,
//! and the caller's tsidp grants (`users`, `resources`, `extraClaims`). Decisions are pure
//! functions of those, so they are re-run unchanged at every refresh.

use std::collections::BTreeMap;

use serde_json::Value;
use tailpass_verify::claims::STANDARD_CLAIMS;

use super::file::PolicyFile;
use super::tsidp::TsidpGrant;
use crate::clients::Client;
use crate::identity::Identity;

/// Why a login is refused (`access_denied`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginDenied {
    /// Occurs when the caller is a tagged node: it has no user to log in.
    #[error("tagged nodes have no user and cannot log in; agents use the client credentials grant")]
    Tagged,
    /// Occurs when the client's access rule does not include the user.
    #[error("{login} may not log in to client {client}")]
    NotAllowed {
        /// The user.
        login: String,
        /// The client.
        client: String,
    },
}

/// Why a requested resource is refused (`invalid_target`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetDenied {
    /// Occurs when the client's registration does not list the resource.
    #[error("client {client} is not registered for resource {resource}")]
    Client {
        /// The client.
        client: String,
        /// The resource.
        resource: String,
    },
    /// Occurs when no tsidp grant gives the user the resource.
    #[error("no grant allows {login} the resource {resource}")]
    Grant {
        /// The user.
        login: String,
        /// The resource.
        resource: String,
    },
}

/// Why the claims could not be assembled: the tailnet policy is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a tsidp grant's extraClaims tries to override the standard claim {0:?}")]
pub struct ClaimConflict(pub String);

fn in_group(policy: &PolicyFile, groups: &[String], login: &str, selector: &str) -> bool {
    match selector.strip_prefix("group:") {
        Some(group) => {
            groups.iter().any(|g| g == group)
                || policy.groups.get(group).is_some_and(|m| m.contains(login))
        }
        None => selector == "*" || selector == login,
    }
}

/// The user's login, or why there is none.
pub fn login_of(identity: &Identity) -> Result<&str, LoginDenied> {
    identity
        .user
        .as_ref()
        .map(|u| u.login.as_str())
        .ok_or(LoginDenied::Tagged)
}

/// Whether the caller may log in to `client`. `groups` are the caller's groups (policy file and
/// grants), as [`claims`] computes them.
pub fn may_log_in(
    client: &Client,
    identity: &Identity,
    policy: &PolicyFile,
    groups: &[String],
) -> Result<(), LoginDenied> {
    let login = login_of(identity)?;
    if client.users.is_empty()
        || client
            .users
            .iter()
            .any(|s| in_group(policy, groups, login, s))
    {
        Ok(())
    } else {
        Err(LoginDenied::NotAllowed {
            login: login.to_owned(),
            client: client.client_id.0.clone(),
        })
    }
}

/// Whether every requested resource is allowed by the client's registration and by a tsidp
/// grant that names the user.
pub fn check_resources(
    requested: &[String],
    client: &Client,
    identity: &Identity,
    grants: &[TsidpGrant],
) -> Result<(), TargetDenied> {
    let login = identity
        .user
        .as_ref()
        .map(|u| u.login.as_str())
        .unwrap_or_default();
    for resource in requested {
        if !client.resources.iter().any(|r| r == "*" || r == resource) {
            return Err(TargetDenied::Client {
                client: client.client_id.0.clone(),
                resource: resource.clone(),
            });
        }
        let granted = grants.iter().any(|g| {
            g.users.iter().any(|u| u == "*" || u == login)
                && g.resources.iter().any(|r| r == "*" || r == resource)
        });
        if !granted {
            return Err(TargetDenied::Grant {
                login: login.to_owned(),
                resource: resource.clone(),
            });
        }
    }
    Ok(())
}

/// Extra claims and groups for a user.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExtraClaims {
    /// Groups: the policy file's, and any `groups` a grant supplies (a union).
    pub groups: Vec<String>,
    /// Claims for tokens.
    pub claims: BTreeMap<String, Value>,
    /// The subset also shown at `/userinfo` (`includeInUserInfo`).
    pub userinfo: BTreeMap<String, Value>,
}

/// Merges the grants' `extraClaims`: for scalars the first grant wins; arrays are united;
/// `groups` is united with the policy file's groups. A grant naming a standard claim is an
/// error, never a silent overwrite.
pub fn claims(
    identity: &Identity,
    policy: &PolicyFile,
    grants: &[TsidpGrant],
) -> Result<ExtraClaims, ClaimConflict> {
    let mut out = ExtraClaims::default();
    if let Some(user) = &identity.user {
        out.groups = policy.groups_of(&user.login);
    }
    for grant in grants {
        for (name, value) in &grant.extra_claims {
            if name == "groups" {
                for group in value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    if !out.groups.iter().any(|g| g == group) {
                        out.groups.push(group.to_owned());
                    }
                }
                continue;
            }
            if STANDARD_CLAIMS.contains(&name.as_str()) {
                return Err(ClaimConflict(name.clone()));
            }
            merge(&mut out.claims, name, value);
            if grant.include_in_userinfo {
                merge(&mut out.userinfo, name, value);
            }
        }
    }
    Ok(out)
}

fn merge(into: &mut BTreeMap<String, Value>, name: &str, value: &Value) {
    match (into.get_mut(name), value) {
        (None, _) => {
            into.insert(name.to_owned(), value.clone());
        }
        (Some(Value::Array(existing)), Value::Array(more)) => {
            for item in more {
                if !existing.contains(item) {
                    existing.push(item.clone());
                }
            }
        }
        // Scalars, objects and mismatched kinds: the first grant wins.
        (Some(_), _) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::{AuthMethod, ClientId, ClientOrigin, GrantType};
    use crate::identity::whois::WhoIsResponse;
    use tailpass_verify::UnixTime;

    fn alice() -> Identity {
        serde_json::from_str::<WhoIsResponse>(include_str!("../../tests/fixtures/whois-user.json"))
            .unwrap()
            .into_identity()
            .unwrap()
    }

    fn client(users: &[&str], resources: &[&str]) -> Client {
        Client {
            client_id: ClientId("c".into()),
            client_name: String::new(),
            secret_sha256: None,
            token_endpoint_auth_method: AuthMethod::None,
            redirect_uris: vec![],
            post_logout_redirect_uris: vec![],
            grant_types: vec![GrantType::AuthorizationCode],
            id_token_signed_response_alg: None,
            resources: resources.iter().map(|s| s.to_string()).collect(),
            users: users.iter().map(|s| s.to_string()).collect(),
            backchannel_logout_uri: None,
            backchannel_logout_session_required: false,
            origin: ClientOrigin::Admin,
            registration_token_sha256: None,
            created_at: UnixTime(0),
            created_by: None,
            version: 0,
        }
    }

    fn grant(json: serde_json::Value) -> TsidpGrant {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn access_rule_by_login_group_or_anyone() {
        let policy = PolicyFile::parse("[groups]\nsre = [\"alice@example.com\"]\n").unwrap();
        let id = alice();
        assert!(may_log_in(&client(&[], &[]), &id, &policy, &[]).is_ok());
        assert!(may_log_in(&client(&["alice@example.com"], &[]), &id, &policy, &[]).is_ok());
        assert!(may_log_in(&client(&["group:sre"], &[]), &id, &policy, &[]).is_ok());
        assert!(may_log_in(&client(&["group:eng"], &[]), &id, &policy, &["eng".into()]).is_ok());
        assert_eq!(
            may_log_in(
                &client(&["bob@example.com", "group:ops"], &[]),
                &id,
                &policy,
                &[]
            ),
            Err(LoginDenied::NotAllowed {
                login: "alice@example.com".into(),
                client: "c".into()
            })
        );
    }

    #[test]
    fn resources_need_the_client_and_a_grant_for_the_user() {
        let id = alice();
        let grants = [grant(
            serde_json::json!({"users": ["alice@example.com"], "resources": ["https://gw"]}),
        )];
        let want = ["https://gw".to_owned()];
        assert!(check_resources(&want, &client(&[], &["https://gw"]), &id, &grants).is_ok());
        assert!(matches!(
            check_resources(&want, &client(&[], &[]), &id, &grants),
            Err(TargetDenied::Client { .. })
        ));
        let others = [grant(
            serde_json::json!({"users": ["bob@example.com"], "resources": ["*"]}),
        )];
        assert!(matches!(
            check_resources(&want, &client(&[], &["*"]), &id, &others),
            Err(TargetDenied::Grant { .. })
        ));
    }

    #[test]
    fn extra_claims_merge_first_scalar_wins_arrays_unite() {
        let policy = PolicyFile::parse("[groups]\nsre = [\"alice@example.com\"]\n").unwrap();
        let grants = [
            grant(
                serde_json::json!({"extraClaims": {"team": "platform", "envs": ["dev"], "groups": ["eng"]}, "includeInUserInfo": true}),
            ),
            grant(
                serde_json::json!({"extraClaims": {"team": "other", "envs": ["prod", "dev"], "groups": ["sre", "ops"]}}),
            ),
        ];
        let merged = claims(&alice(), &policy, &grants).unwrap();
        assert_eq!(merged.claims["team"], "platform");
        assert_eq!(merged.claims["envs"], serde_json::json!(["dev", "prod"]));
        assert_eq!(merged.groups, ["sre", "eng", "ops"]);
        assert_eq!(
            merged.userinfo.get("envs"),
            Some(&serde_json::json!(["dev"]))
        );
        assert!(!merged.claims.contains_key("groups"));
    }

    #[test]
    fn overriding_a_standard_claim_is_an_error() {
        let grants = [grant(
            serde_json::json!({"extraClaims": {"email": "ceo@example.com"}}),
        )];
        assert_eq!(
            claims(&alice(), &PolicyFile::default(), &grants),
            Err(ClaimConflict("email".into()))
        );
    }
}
