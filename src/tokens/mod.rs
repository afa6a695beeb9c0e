//! The tokens this server issues: subject identifiers, claim assembly ([`mint`]), and reading
//! back its own access tokens ([`read_access`]) for `/userinfo`, introspection, revocation and
//! token exchange.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tailpass_verify::validate::{self, Expect, Registered, ValidationError};
use tailpass_verify::{AccessClaims, Jws, UnixTime};

use crate::identity::StableNodeId;
use crate::keys::KeyRing;
use crate::revocation::{Hit, Revocations};

pub mod mint;

/// `typ` of access tokens (RFC 9068 §2.1), defined once with the verifiers that check it.
pub use tailpass_verify::verifier::ACCESS_TYP;
/// `typ` of ID tokens.
pub const ID_TYP: &str = "JWT";
/// Clock skew tolerated when reading tokens: the same as any verifier's default.
pub use tailpass_verify::verifier::DEFAULT_LEEWAY as LEEWAY;

/// `sub` for a person: tsidp's form, so relying parties can migrate (docs/design.md "Contracts").
pub fn user_subject(user_id: u64) -> String {
    format!("userid:{user_id:x}")
}

/// `sub` for a tagged node.
pub fn node_subject(node: &StableNodeId) -> String {
    format!("node:{node}")
}

/// `sub` for a federated caller with no tailnet identity: its table and its external `sub`.
pub fn federated_subject(table: &str, external_sub: &str) -> String {
    format!("fed:{table}:{external_sub}")
}

/// `sub` for a confidential client using client credentials.
pub fn client_subject(client_id: &str) -> String {
    format!("client:{client_id}")
}

/// The `jti` and the run id of a new run token, from the operating system's CSPRNG through the
/// identifier reserve (every agent token and exchange needs both; see
/// [`crate::secret::fill_identifier`]).
///
/// The run id's format is [`crate::secret::run_id`]'s.
pub fn new_run_token_ids() -> (String, String) {
    let mut random = [[0u8; 16]; 2];
    crate::secret::fill_identifier(random.as_flattened_mut());
    let [jti, run] = random;
    (URL_SAFE_NO_PAD.encode(jti), crate::secret::run_id(run))
}

/// Why an access token presented to this server is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Occurs when the token is malformed, badly signed, expired, of the wrong type or from
    /// another issuer.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// Occurs when the token, its run, node, user or session was revoked.
    #[error("{0}")]
    Revoked(Hit),
}

/// Reads an access token this server issued: signature with a published key, `typ`,
/// issuer, time, and revocation. It does not check `cnf`; callers that accept bound tokens
/// check the binding against the presenter.
pub fn read_access(
    token: &str,
    keys: &KeyRing,
    revocations: &Revocations,
    issuer: &str,
    now: UnixTime,
) -> Result<AccessClaims, TokenError> {
    let (claims, kid) =
        read_signed::<AccessClaims>(token, keys, issuer, ACCESS_TYP, now, |c| Registered {
            iss: &c.iss,
            aud: &c.aud,
            exp: c.exp,
            iat: c.iat,
            nbf: c.nbf,
        })?;
    if let Some(hit) = revocations.check(&claims, Some(&kid)) {
        return Err(TokenError::Revoked(hit));
    }
    Ok(claims)
}

/// Reads a token of type `typ` this server signed, checking signature, type, issuer and time;
/// its claims and the `kid` of the key that signed it.
pub fn read_signed<C: serde::de::DeserializeOwned>(
    token: &str,
    keys: &KeyRing,
    issuer: &str,
    typ: &'static str,
    now: UnixTime,
    registered: impl Fn(&C) -> Registered<'_>,
) -> Result<(C, String), ValidationError> {
    let jws = Jws::parse(token)?;
    let kid = jws.header.kid.clone().unwrap_or_default();
    let key = keys
        .verifying_key(&kid)
        .ok()
        .flatten()
        .ok_or_else(|| ValidationError::UnknownKey(kid.clone()))?;
    // A token signed here lately is known good; its key must still be published (above).
    if !keys.signed_here(token) {
        jws.verify(&key)?;
    }
    let claims: C = jws.claims()?;
    let expect = Expect {
        issuer,
        audience: None,
        typ,
        leeway: LEEWAY,
    };
    validate::check(&jws, registered(&claims), &expect, now)?;
    Ok((claims, kid))
}

/// Reads an ID token this server issued, as an `id_token_hint`: signature, type and issuer,
/// but not expiry — a relying party may send a hint long after the ID token expired
/// (OIDC RP-Initiated Logout §2).
pub fn read_id_token_hint(
    token: &str,
    keys: &KeyRing,
    issuer: &str,
) -> Result<tailpass_verify::IdClaims, ValidationError> {
    let jws = Jws::parse(token)?;
    let kid = jws.header.kid.clone().unwrap_or_default();
    let key = keys
        .verifying_key(&kid)
        .ok()
        .flatten()
        .ok_or(ValidationError::UnknownKey(kid))?;
    jws.verify(&key)?;
    let claims: tailpass_verify::IdClaims = jws.claims()?;
    let expect = Expect {
        issuer,
        audience: None,
        typ: ID_TYP,
        leeway: LEEWAY,
    };
    // Check everything at the time the token was issued: only expiry is waived.
    let registered = Registered {
        iss: &claims.iss,
        aud: &claims.aud,
        exp: claims.exp,
        iat: claims.iat,
        nbf: claims.nbf,
    };
    validate::check(&jws, registered, &expect, claims.iat)?;
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token read back by the ring that signed it skips only the signature check: the same
    /// bytes read by another ring on the same keys (a replica, a restart) verify in full, a
    /// forged payload under the real signature is refused by both, and once its key is revoked
    /// the remembered token is refused too.
    #[test]
    fn tokens_signed_here_read_back_without_a_signature_check_and_nothing_else_is_waived() {
        use std::collections::BTreeSet;
        use std::sync::Arc;

        use tailpass_verify::jws::JwsError;
        use tailpass_verify::{Alg, Audience};

        use crate::clock::ManualClock;
        use crate::keys::KeySettings;

        #[derive(serde::Serialize, serde::Deserialize)]
        struct Claims {
            iss: String,
            aud: Audience,
            exp: UnixTime,
            iat: UnixTime,
        }
        fn registered(c: &Claims) -> Registered<'_> {
            Registered {
                iss: &c.iss,
                aud: &c.aud,
                exp: c.exp,
                iat: c.iat,
                nbf: None,
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let now = UnixTime(1_000_000);
        let clock = Arc::new(ManualClock::new(now));
        let settings = KeySettings {
            enabled: BTreeSet::from([Alg::ES256]),
            retire_after: 3_600,
            rotation_interval: None,
        };
        let here = KeyRing::open(tmp.path(), settings.clone(), clock.clone()).unwrap();
        let replica = KeyRing::open(tmp.path(), settings, clock).unwrap();
        let claims = Claims {
            iss: "https://idp.example".into(),
            aud: Audience(vec!["https://rs.example".into()]),
            exp: now.plus(60),
            iat: now,
        };
        let token = here
            .sign_jwt_to_read_back(Alg::ES256, ACCESS_TYP, &claims)
            .unwrap();
        let read = |ring: &KeyRing, token: &str, issuer: &str| {
            read_signed(token, ring, issuer, ACCESS_TYP, now, registered).map(|(c, _)| c.aud)
        };
        let idp = "https://idp.example";
        let unkept = here.sign_jwt(Alg::ES256, ACCESS_TYP, &claims).unwrap();
        assert!(
            !here.signed_here(&unkept),
            "only tokens signed to read back"
        );
        assert_eq!(read(&here, &unkept, idp).unwrap(), claims.aud);
        assert!(here.signed_here(&token) && !replica.signed_here(&token));
        assert_eq!(read(&here, &token, idp).unwrap(), claims.aud);
        assert_eq!(read(&replica, &token, idp).unwrap(), claims.aud);
        // The payload swapped for another audience, the signature kept.
        let parts: Vec<&str> = token.split('.').collect();
        let forged_payload = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&Claims {
                aud: Audience(vec!["https://other.example".into()]),
                ..claims
            })
            .unwrap(),
        );
        let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
        for ring in [&here, &replica] {
            assert!(matches!(
                read(ring, &forged, idp),
                Err(ValidationError::Jws(JwsError::Signature))
            ));
        }
        // A wrong issuer is refused even for a token remembered here.
        assert!(matches!(
            read(&here, &token, "https://else.example"),
            Err(ValidationError::Issuer(_))
        ));
        let kid = here.active(Alg::ES256).unwrap().kid().0.clone();
        here.revoke(&kid).unwrap();
        assert!(matches!(
            read(&here, &token, idp),
            Err(ValidationError::UnknownKey(_))
        ));
    }

    #[test]
    fn run_token_ids_are_distinct_128_bit_values() {
        let pairs: Vec<(String, String)> = (0..500).map(|_| super::new_run_token_ids()).collect();
        let jtis: std::collections::BTreeSet<&String> = pairs.iter().map(|p| &p.0).collect();
        assert_eq!(jtis.len(), pairs.len());
        assert!(
            pairs
                .iter()
                .all(|(jti, run)| jti.len() == 22 && !run.contains(jti.as_str()))
        );
    }

    #[test]
    fn run_ids_are_unique_time_ordered_and_long() {
        let ids: Vec<String> = (0..2000).map(|_| super::new_run_token_ids().1).collect();
        let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        for pair in ids.windows(2) {
            assert!(
                pair[0][..10] <= pair[1][..10],
                "time prefixes never go back"
            );
        }
        assert!(ids.iter().all(|id| {
            id.len() == 36
                && id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        }));
    }

    #[test]
    fn subjects_are_typed_and_never_collide() {
        assert_eq!(user_subject(0xc2847229e6780), "userid:c2847229e6780");
        assert_eq!(user_subject(255), "userid:ff", "lowercase hex, no padding");
        assert_eq!(
            node_subject(&StableNodeId("nCi7CNTRL".into())),
            "node:nCi7CNTRL"
        );
        assert_eq!(client_subject("grafana"), "client:grafana");
    }
}
