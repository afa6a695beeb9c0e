//! Claim assembly: what goes into an ID token or an access token for a person, built from the
//! identity captured at login, the grant, and policy.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use tailpass_verify::claims::{Audience, Profile, TailnetClaims};
use tailpass_verify::{AccessClaims, Alg, IdClaims, UnixTime};

use super::user_subject;
use crate::identity::Identity;
use crate::secret::random_token;

/// An email-shaped value for a login. Most logins are email addresses already. GitHub and
/// passkey accounts have logins like `alice@github` and `alice@passkey`, which relying parties
/// that insist on an email address reject; as tsidp does, the issuer's host is appended
/// (`alice@github.idp.tail1234.ts.net`), so the value has a domain and stays unique and stable.
pub fn email_for(login: &str, issuer_host: &str) -> String {
    if login.ends_with("@github") || login.ends_with("@passkey") {
        format!("{login}.{issuer_host}")
    } else {
        login.to_owned()
    }
}

/// An ID token's `at_hash` for `access_token` (OIDC Core §3.1.3.6): the left half of the
/// digest of the hash the ID token's algorithm uses — SHA-256 for ES256 and RS256, SHA-512 for
/// Ed25519 — base64url without padding.
pub fn at_hash(alg: Alg, access_token: &str) -> String {
    let hash = match alg {
        Alg::ES256 | Alg::RS256 => &ring::digest::SHA256,
        Alg::EdDSA => &ring::digest::SHA512,
    };
    let digest = ring::digest::digest(hash, access_token.as_bytes());
    let bytes = digest.as_ref();
    URL_SAFE_NO_PAD.encode(bytes.get(..bytes.len() / 2).unwrap_or(bytes))
}

/// The login's local part (`alice` for `alice@example.com`).
fn username_for(login: &str) -> String {
    login.split('@').next().unwrap_or(login).to_owned()
}

/// A person's profile claims.
pub fn profile(identity: &Identity, groups: &[String], issuer_host: &str) -> Profile {
    match &identity.user {
        Some(user) => Profile {
            email: Some(email_for(&user.login, issuer_host)),
            name: Some(user.display_name.clone()).filter(|n| !n.is_empty()),
            preferred_username: Some(user.login.clone()),
            username: Some(username_for(&user.login)),
            uid: Some(user.id),
            picture: user.picture.clone(),
            groups: groups.to_vec(),
        },
        None => Profile {
            groups: groups.to_vec(),
            ..Profile::default()
        },
    }
}

/// The node's tailnet claims (tsidp's `node`, `nid`, `tags`, `tailnet`).
pub fn tailnet(identity: &Identity) -> TailnetClaims {
    TailnetClaims {
        node: Some(identity.node.name.clone()),
        nid: Some(identity.node.id),
        tags: identity.node.tags.clone(),
        tailnet: Some(identity.tailnet.clone()),
    }
}

/// What a person's tokens are issued for.
#[derive(Debug, Clone, Copy)]
pub struct Login<'a> {
    /// Who logged in.
    pub identity: &'a Identity,
    /// The client.
    pub client_id: &'a str,
    /// Granted scopes.
    pub scope: &'a [String],
    /// Granted resources.
    pub resources: &'a [String],
    /// Groups.
    pub groups: &'a [String],
    /// Policy claims, for the ID token.
    pub extra: &'a BTreeMap<String, Value>,
    /// The policy claims also shown at `/userinfo` (`includeInUserInfo`), which is what the
    /// access token carries: `/userinfo` answers from it.
    pub userinfo_extra: &'a BTreeMap<String, Value>,
    /// The claims of the agent rule deciding the resources (a gateway's `models`, `quota`):
    /// a person's token for a resource carries the restrictions an agent's would. They win
    /// over `userinfo_extra` on a shared name.
    pub restrictions: Option<&'a BTreeMap<String, Value>>,
    /// When the user authenticated.
    pub auth_time: UnixTime,
    /// The session, which is also the refresh family.
    pub sid: &'a str,
    /// The nonce to echo.
    pub nonce: Option<&'a str>,
    /// The issuer's host name, for email-shaped values of `@github` logins.
    pub issuer_host: &'a str,
    /// The access token's id.
    pub access_jti: &'a str,
}

impl Login<'_> {
    fn subject(&self) -> String {
        self.identity
            .user
            .as_ref()
            .map(|u| user_subject(u.id))
            .unwrap_or_default()
    }

    /// An RFC 9068 access token's claims, addressed to the requested resources plus the
    /// issuer (the userinfo resource) when `openid` was granted or no resource was asked for.
    /// Never to the `client_id`: a relying party whose ID-token check ignores `typ` must not
    /// take an access token for an ID token.
    pub fn access_claims(&self, issuer: &str, now: UnixTime, lifetime: u64) -> AccessClaims {
        let mut aud: Vec<String> = self.resources.to_vec();
        let openid = self.scope.iter().any(|s| s == "openid");
        if (openid || aud.is_empty()) && !aud.iter().any(|a| a == issuer) {
            aud.push(issuer.to_owned());
        }
        let mut extra = self.userinfo_extra.clone();
        if let Some(restrictions) = self.restrictions {
            extra.extend(restrictions.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        AccessClaims {
            iss: issuer.to_owned(),
            sub: self.subject(),
            aud: Audience(aud),
            exp: now.plus(lifetime),
            iat: now,
            nbf: Some(now),
            jti: self.access_jti.to_owned(),
            client_id: self.client_id.to_owned(),
            scope: Some(self.scope.join(" ")),
            auth_time: Some(self.auth_time),
            sid: Some(self.sid.to_owned()),
            profile: profile(self.identity, self.groups, self.issuer_host),
            tailnet: tailnet(self.identity),
            run: Default::default(),
            cnf: None,
            extra: std::sync::Arc::new(extra),
        }
    }

    /// An ID token's claims, addressed to the client alone (OIDC Core §2), with the access
    /// token's `at_hash` when one is issued beside it.
    pub fn id_claims(
        &self,
        issuer: &str,
        now: UnixTime,
        lifetime: u64,
        at_hash: Option<String>,
    ) -> IdClaims {
        IdClaims {
            iss: issuer.to_owned(),
            sub: self.subject(),
            aud: Audience::one(self.client_id),
            exp: now.plus(lifetime),
            iat: now,
            nbf: Some(now),
            jti: random_token(16),
            nonce: self.nonce.map(str::to_owned),
            auth_time: self.auth_time,
            sid: Some(self.sid.to_owned()),
            azp: None,
            at_hash,
            profile: profile(self.identity, self.groups, self.issuer_host),
            tailnet: tailnet(self.identity),
            key: self.identity.node.key.clone(),
            addresses: self.identity.node.addresses.clone(),
            extra: self.extra.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_and_passkey_logins_get_an_email_shaped_value() {
        let host = "idp.tail1234.ts.net";
        assert_eq!(email_for("alice@example.com", host), "alice@example.com");
        assert_eq!(
            email_for("alice@github", host),
            "alice@github.idp.tail1234.ts.net"
        );
        assert_eq!(
            email_for("bob@passkey", host),
            "bob@passkey.idp.tail1234.ts.net"
        );
        assert_eq!(email_for("carol@github.io", host), "carol@github.io");
    }

    #[test]
    fn at_hash_is_the_left_half_of_the_digest() {
        // OIDC Core §3.1.3.6's construction, checked against a digest computed here.
        let token = "eyJhbGciOiJFUzI1NiJ9.e30.sig";
        let full = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        assert_eq!(
            at_hash(Alg::ES256, token),
            URL_SAFE_NO_PAD.encode(&full.as_ref()[..16])
        );
        assert_eq!(at_hash(Alg::RS256, token).len(), 22);
        assert_eq!(at_hash(Alg::EdDSA, token).len(), 43, "32 bytes of SHA-512");
        assert_ne!(at_hash(Alg::ES256, token), at_hash(Alg::ES256, "other"));
    }

    #[test]
    fn username_is_the_local_part() {
        assert_eq!(username_for("alice@example.com"), "alice");
        assert_eq!(username_for("noat"), "noat");
    }
}
