//! The grants: what each way of getting a token checks and issues, one file each. Endpoint
//! handlers in `oauth` parse and answer; the decisions live here, as functions of a
//! [`Context`] borrowed from the server's state, each returning its own error enum
//! ([`error`]).

use serde::Serialize;
use tailpass_verify::{AccessClaims, UnixTime};

use crate::clients::Client;
use crate::identity::Identity;
use crate::policy::agent as agent_policy;
use crate::policy::{login, tsidp};
use crate::tokens::mint::{self, Login};
use crate::tokens::{ACCESS_TYP, ID_TYP};

pub mod agent;
pub mod ambient;
pub mod authorization_code;
pub mod authorize;
mod context;
pub mod error;
pub mod exchange;
pub mod federated;
#[cfg(test)]
mod flows;
pub mod introspect;
pub mod refresh;
pub mod revoke;

pub use context::{Context, Lifetimes, Policy, Rate, Signing};
use error::{IssueError, LoginRefused};

/// Scopes a person may request at `/authorize`: OIDC's, `groups`, and `offline_access`.
const LOGIN_SCOPES: [&str; 5] = ["openid", "profile", "email", "groups", "offline_access"];

/// OIDC's standard scopes for claims this server has no source for: ignored, not refused.
const UNSERVED_STANDARD_SCOPES: [&str; 2] = ["address", "phone"];

/// A set of scopes, in request order, without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(pub Vec<String>);

impl Scopes {
    /// Splits a `scope` parameter on spaces and, for clients like Portainer that send
    /// `openid,profile,email`, on commas.
    pub fn parse(raw: Option<&str>) -> Scopes {
        let mut scopes: Vec<String> = Vec::new();
        for scope in raw
            .unwrap_or_default()
            .split([' ', ','])
            .filter(|s| !s.is_empty())
        {
            if !scopes.iter().any(|s| s == scope) {
                scopes.push(scope.to_owned());
            }
        }
        Scopes(scopes)
    }

    /// The scopes a person's login is granted: the standard scopes this server does not serve
    /// (`address`, `phone`) are dropped, as OIDC Core §3.1.2.1 and §5.4 ask, and any other
    /// scope outside [`LOGIN_SCOPES`] is refused.
    pub fn for_login(self) -> Result<Scopes, String> {
        let kept: Vec<String> = self
            .0
            .into_iter()
            .filter(|s| !UNSERVED_STANDARD_SCOPES.contains(&s.as_str()))
            .collect();
        match kept.iter().find(|s| !LOGIN_SCOPES.contains(&s.as_str())) {
            Some(unknown) => Err(format!(
                "scope {unknown:?} is not supported (supported: {})",
                LOGIN_SCOPES.join(" ")
            )),
            None => Ok(Scopes(kept)),
        }
    }

    /// Whether `scope` is present.
    pub fn has(&self, scope: &str) -> bool {
        self.0.iter().any(|s| s == scope)
    }

    /// Whether every scope here is also in `other`.
    pub fn within(&self, other: &[String]) -> bool {
        self.0.iter().all(|s| other.contains(s))
    }

    /// The space-separated form.
    pub fn joined(&self) -> String {
        self.0.join(" ")
    }
}

/// A successful token response (RFC 6749 §5.1, OIDC Core §3.1.3.3, RFC 8693 §2.2.1).
#[derive(Debug, Clone, Serialize)]
pub struct TokenResponse {
    /// The access token.
    pub access_token: String,
    /// `Bearer`, or `DPoP` for DPoP-bound tokens.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Granted scopes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The refresh token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The ID token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// For token exchange: the type of `access_token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_token_type: Option<&'static str>,
}

/// The tokens issued to a person's client.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The signed access token.
    pub access_token: String,
    /// Its claims, for the audit log and code bookkeeping.
    pub claims: AccessClaims,
    /// The signed ID token, when `openid` was granted.
    pub id_token: Option<String>,
}

/// What a person's tokens are for.
#[derive(Debug, Clone, Copy)]
pub struct LoginGrant<'a> {
    /// Who logged in (as captured at `/authorize`).
    pub identity: &'a Identity,
    /// Granted scopes.
    pub scopes: &'a Scopes,
    /// Granted resources.
    pub resources: &'a [String],
    /// When the person authenticated.
    pub auth_time: UnixTime,
    /// The session and refresh family.
    pub sid: &'a str,
    /// The nonce to echo in the ID token.
    pub nonce: Option<&'a str>,
    /// The access token's id, when the caller must know it in advance; random otherwise.
    pub access_jti: Option<&'a str>,
}

/// Checks that `identity` may log in to `client` and get `resources`, as the client and the
/// identity's grants stand now, and returns the extra claims its tokens carry.
pub fn check_login(
    ctx: &Context<'_>,
    client: &Client,
    identity: &Identity,
    resources: &[String],
) -> Result<login::ExtraClaims, LoginRefused> {
    let grants = tsidp::grants(identity);
    let extra = login::claims(identity, ctx.policy.file, &grants)?;
    login::may_log_in(client, identity, ctx.policy.file, &extra.groups)?;
    login::check_resources(resources, client, identity, &grants)?;
    Ok(extra)
}

/// Mints a person's access token (and ID token for `openid`), re-checking policy first: who
/// may log in to the client and which resources, as the client and grants stand now.
pub fn issue_login(
    ctx: &Context<'_>,
    client: &Client,
    grant: LoginGrant<'_>,
) -> Result<Issued, IssueError> {
    let extra = check_login(ctx, client, grant.identity, grant.resources)?;
    let restricted = agent_policy::decide_resources(
        grant.identity,
        ctx.policy.file,
        ctx.policy.capability,
        grant.resources,
    )
    .map_err(LoginRefused::from)?;
    let now = ctx.now();
    let random_jti;
    let access_jti = match grant.access_jti {
        Some(jti) => jti,
        None => {
            random_jti = crate::secret::random_token(16);
            &random_jti
        }
    };
    let login = Login {
        identity: grant.identity,
        client_id: &client.client_id.0,
        scope: &grant.scopes.0,
        resources: grant.resources,
        groups: &extra.groups,
        extra: &extra.claims,
        userinfo_extra: &extra.userinfo,
        restrictions: restricted.as_ref().map(|g| &*g.claims),
        auth_time: grant.auth_time,
        sid: grant.sid,
        nonce: grant.nonce,
        issuer_host: ctx.issuer.host(),
        access_jti,
    };
    let lifetime = match restricted.as_ref().and_then(|g| g.max_lifetime) {
        Some(cap) => ctx.lifetimes.token.min(cap),
        None => ctx.lifetimes.token,
    };
    let claims = login.access_claims(ctx.issuer.url(), now, lifetime);
    // Read back at `/userinfo` right after, usually: remembered so that it is not re-verified.
    let access_token = ctx
        .keys
        .sign_jwt_to_read_back(ctx.signing.access, ACCESS_TYP, &claims)?;
    let id_token = if grant.scopes.has("openid") {
        let alg = client.id_token_alg(ctx.signing.id_token);
        let at_hash = mint::at_hash(alg, &access_token);
        let id_claims = login.id_claims(ctx.issuer.url(), now, ctx.lifetimes.token, Some(at_hash));
        Some(ctx.keys.sign_jwt(alg, ID_TYP, &id_claims)?)
    } else {
        None
    };
    Ok(Issued {
        access_token,
        claims,
        id_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_scopes_without_claims_are_ignored_not_refused() {
        assert_eq!(
            Scopes::parse(Some("openid address email phone"))
                .for_login()
                .unwrap()
                .0,
            ["openid", "email"]
        );
        assert!(Scopes::parse(Some("openid addresses")).for_login().is_err());
    }

    #[test]
    fn scopes_split_on_spaces_and_commas() {
        assert_eq!(
            Scopes::parse(Some("openid,profile,email")).0,
            ["openid", "profile", "email"]
        );
        assert_eq!(
            Scopes::parse(Some("openid  profile openid")).0,
            ["openid", "profile"]
        );
        assert_eq!(Scopes::parse(Some("openid, email")).0, ["openid", "email"]);
        assert!(Scopes::parse(None).0.is_empty());
        assert!(
            Scopes::parse(Some("openid offline_access"))
                .for_login()
                .is_ok()
        );
        assert!(Scopes::parse(Some("openid admin")).for_login().is_err());
    }
}
