//! [`Verifier`] driven with explicit times and a key made here: each claim check refuses what
//! it must, and nothing else.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};

use super::*;
use crate::feed::{FeedEvent, RevocationKind};

const ISS: &str = "https://idp.example";
const AUD: &str = "https://gw.example";
const NOW: u64 = 1_800_000_000;

struct Signer {
    pair: EcdsaKeyPair,
    keys: KeySet,
}

fn signer() -> Signer {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    let jwks = json!({"keys": [{
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "k1",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    }]});
    Signer {
        pair,
        keys: KeySet::from_jwks(&jwks),
    }
}

impl Signer {
    fn token(&self, header: Value, claims: Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }

    fn access(&self, changes: Value) -> String {
        let mut claims = json!({
            "iss": ISS, "sub": "node:n1", "aud": AUD, "iat": NOW, "nbf": NOW, "exp": NOW + 600,
            "jti": "j1", "client_id": "node:n1", "run_id": "r1",
            "cnf": {"tailnet_node": "n1"},
        });
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        self.token(
            json!({"alg": "ES256", "typ": "at+jwt", "kid": "k1"}),
            claims,
        )
    }
}

const NODE: Presenter<'static> = Presenter {
    node: Some("n1"),
    dpop_jkt: None,
};

fn verifier() -> Verifier {
    Verifier::new(ISS, AUD)
}

#[test]
fn a_good_token_passes_and_each_claim_check_refuses() {
    let s = signer();
    let v = verifier();
    let at = UnixTime(NOW + 1);
    assert!(v.verify(&s.keys, &s.access(json!({})), &NODE, at).is_ok());
    for (what, changes) in [
        ("issuer", json!({"iss": "https://other"})),
        ("audience", json!({"aud": "https://elsewhere"})),
        ("no expiry", json!({"exp": null})),
    ] {
        assert!(
            v.verify(&s.keys, &s.access(changes), &NODE, at).is_err(),
            "{what} must be refused"
        );
    }
    let id_typed = s.token(
        json!({"alg": "ES256", "typ": "JWT", "kid": "k1"}),
        json!({"iss": ISS, "sub": "s", "aud": AUD, "iat": NOW, "exp": NOW + 600, "jti": "j", "client_id": "c"}),
    );
    assert!(
        v.verify(&s.keys, &id_typed, &NODE, at).is_err(),
        "an ID token is not an access token"
    );
    let unknown_kid = s.token(
        json!({"alg": "ES256", "typ": "at+jwt", "kid": "k2"}),
        json!({"iss": ISS, "sub": "s", "aud": AUD, "iat": NOW, "exp": NOW + 600, "jti": "j", "client_id": "c"}),
    );
    assert!(v.verify(&s.keys, &unknown_kid, &NODE, at).is_err());
    let strict = verifier().with_algs(&[Alg::EdDSA]);
    assert!(matches!(
        strict.verify(&s.keys, &s.access(json!({})), &NODE, at),
        Err(VerifyError::Algorithm(Alg::ES256))
    ));
}

#[test]
fn expiry_and_not_before_allow_only_the_leeway() {
    let s = signer();
    let v = verifier().with_leeway(30);
    let token = s.access(json!({}));
    assert!(
        v.verify(&s.keys, &token, &NODE, UnixTime(NOW + 600 + 29))
            .is_ok()
    );
    assert!(
        v.verify(&s.keys, &token, &NODE, UnixTime(NOW + 600 + 30))
            .is_err(),
        "exp is exclusive"
    );
    assert!(v.verify(&s.keys, &token, &NODE, UnixTime(NOW - 30)).is_ok());
    assert!(
        v.verify(&s.keys, &token, &NODE, UnixTime(NOW - 31))
            .is_err()
    );
    assert_eq!(
        verifier().with_leeway(10_000).leeway,
        MAX_LEEWAY,
        "the leeway is capped"
    );
}

#[test]
fn a_bound_token_needs_its_node_and_a_revoked_one_is_refused() {
    let s = signer();
    let token = s.access(json!({}));
    let at = UnixTime(NOW + 1);
    let thief = Presenter {
        node: Some("n2"),
        dpop_jkt: None,
    };
    assert!(matches!(
        verifier().verify(&s.keys, &token, &thief, at),
        Err(VerifyError::Binding(_))
    ));
    let unknown_member = s.access(json!({"cnf": {"tailnet_node": "n1", "x5t#S256": "abc"}}));
    assert!(
        verifier()
            .verify(&s.keys, &unknown_member, &NODE, at)
            .is_err()
    );

    let list = Arc::new(RevocationList::new());
    let event: FeedEvent =
        serde_json::from_value(json!({"seq": 1, "kind": "run", "value": "r1", "revoked_at": NOW}))
            .unwrap();
    list.apply(&event);
    let v = verifier().with_revocations(list);
    assert!(matches!(
        v.verify(&s.keys, &token, &NODE, at),
        Err(VerifyError::Revoked(_))
    ));
    let later = s.access(json!({"iat": NOW + 5, "nbf": NOW + 5}));
    assert!(
        v.verify(&s.keys, &later, &NODE, UnixTime(NOW + 6)).is_ok(),
        "a run revocation matches only tokens issued at or before it"
    );
}

#[test]
fn a_token_outliving_the_lifetime_ceiling_is_refused() {
    let s = signer();
    let v = verifier().with_revocations(Arc::new(RevocationList::with_max_lifetime(300)));
    let long = s.access(json!({"exp": NOW + 301}));
    assert!(matches!(
        v.verify(&s.keys, &long, &NODE, UnixTime(NOW + 1)),
        Err(VerifyError::Lifetime { .. })
    ));
}

#[test]
fn every_token_a_revoked_kid_signed_is_refused() {
    let s = signer();
    let token = s.access(json!({}));
    let list = Arc::new(RevocationList::new());
    let v = verifier().with_revocations(list.clone());
    assert!(v.verify(&s.keys, &token, &NODE, UnixTime(NOW + 1)).is_ok());
    let other: FeedEvent =
        serde_json::from_value(json!({"seq": 1, "kind": "kid", "value": "k2", "revoked_at": NOW}))
            .unwrap();
    list.apply(&other);
    assert!(
        v.verify(&s.keys, &token, &NODE, UnixTime(NOW + 1)).is_ok(),
        "another key's revocation"
    );
    let event: FeedEvent =
        serde_json::from_value(json!({"seq": 2, "kind": "kid", "value": "k1", "revoked_at": NOW}))
            .unwrap();
    list.apply(&event);
    let refused = v.verify(&s.keys, &token, &NODE, UnixTime(NOW + 1));
    assert!(
        matches!(
            &refused,
            Err(VerifyError::Revoked(crate::feed::Revoked::Matched { kind: RevocationKind::Kid, value })) if value == "k1"
        ),
        "{refused:?}"
    );
    // Whatever else the token carries: a different run, jti or node changes nothing.
    let another = s.access(json!({"jti": "j9", "run_id": "r9"}));
    assert!(
        v.verify(&s.keys, &another, &NODE, UnixTime(NOW + 1))
            .is_err()
    );
}

#[test]
fn a_routes_resource_is_accepted_as_the_audience_only_on_that_route() {
    let s = signer();
    let v = verifier();
    let at = UnixTime(NOW + 1);
    let docs = format!("{AUD}/mcp/docs");
    let for_route = s.access(json!({"aud": docs}));
    assert!(
        v.verify_for(&s.keys, &for_route, &NODE, Some(&docs), at)
            .is_ok()
    );
    // The verifier's own audience is still accepted on the route.
    let for_gateway = s.access(json!({}));
    assert!(
        v.verify_for(&s.keys, &for_gateway, &NODE, Some(&docs), at)
            .is_ok()
    );
    // Elsewhere (another route, or none) the route's token is refused, naming the audience.
    for elsewhere in [None, Some(format!("{AUD}/mcp/other"))] {
        assert!(matches!(
            v.verify_for(&s.keys, &for_route, &NODE, elsewhere.as_deref(), at),
            Err(VerifyError::Token(ValidationError::Audience(a))) if a == AUD
        ));
    }
    let presented = Presented {
        authorization: Some(&format!("Bearer {for_route}")),
        dpop: None,
        method: "POST",
        url: "https://gw.example/mcp/docs",
        node: Some("n1"),
        resource: Some(&docs),
    };
    let replay = crate::dpop::ReplayCache::new(16, 300);
    assert!(v.verify_presented(&s.keys, &presented, &replay, at).is_ok());
}
