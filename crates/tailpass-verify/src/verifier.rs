//! The whole check of an access token at a resource server, offline: signature with a
//! published key, algorithm allowlist, `typ`, issuer, audience, time, binding and revocation.
//! Network parts (fetching keys, following the feed) live in `remote`, behind a feature.

use std::collections::HashMap;
use std::sync::Arc;

use crate::binding::{self, BindingError, Presenter};
use crate::feed::{RevocationList, Revoked};
use crate::validate::{self, Expect, Registered, ValidationError};
use crate::{AccessClaims, Alg, Jws, UnixTime, VerifyingKey};

/// `typ` of access tokens (RFC 9068 §2.1).
pub const ACCESS_TYP: &str = "at+jwt";
/// The `Authorization` scheme of an access token bound to nothing, and its `token_type` in
/// token and introspection answers (RFC 6750 §2.1, §6.1.1). Schemes compare case-insensitively.
pub const BEARER: &str = "Bearer";
/// The `Authorization` scheme of a DPoP-bound access token, and its `token_type` (RFC 9449
/// §7.1, §5).
pub const DPOP: &str = "DPoP";

/// Clock skew tolerated by default, seconds.
pub const DEFAULT_LEEWAY: u64 = 30;
pub use crate::feed::MAX_LEEWAY;

/// The issuer's published keys, parsed once, by `kid`.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, VerifyingKey>,
}

impl KeySet {
    /// Parses a JWKS document, keeping the signing keys this crate can verify with and
    /// skipping the rest (a new key type at the issuer must not break old verifiers).
    pub fn from_jwks(document: &serde_json::Value) -> KeySet {
        KeySet::parse(document, false)
    }

    /// Parses another issuer's JWKS document (a federation's), where a key may omit `alg`:
    /// it then verifies only the algorithm its type implies (RSA: RS256, P-256: ES256,
    /// Ed25519: EdDSA), so a token's header can never pick another one for it.
    pub fn from_external_jwks(document: &serde_json::Value) -> KeySet {
        KeySet::parse(document, true)
    }

    fn parse(document: &serde_json::Value, infer_alg: bool) -> KeySet {
        let keys = document
            .get("keys")
            .and_then(serde_json::Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|value| {
                let mut jwk = crate::Jwk::parse_public(value).ok()?;
                if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
                    return None;
                }
                if infer_alg && jwk.alg.is_none() {
                    jwk.alg = match &jwk.key {
                        crate::jwk::PublicKey::RSA { .. } => Some(Alg::RS256),
                        crate::jwk::PublicKey::EC { crv, .. } if crv == "P-256" => Some(Alg::ES256),
                        crate::jwk::PublicKey::OKP { crv, .. } if crv == "Ed25519" => {
                            Some(Alg::EdDSA)
                        }
                        _ => None,
                    };
                }
                let kid = jwk.kid.clone()?;
                let key = VerifyingKey::from_published(&jwk).ok()?;
                Some((kid, key))
            })
            .collect();
        KeySet { keys }
    }

    /// The key with id `kid`.
    pub fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.get(kid)
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Why a token was refused. Its message is the reason, fit for a `WWW-Authenticate` error
/// description and for logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Occurs when no token was presented.
    #[error("no access token")]
    Missing,
    /// Occurs when the token is malformed, badly signed, of the wrong type, for another issuer
    /// or audience, or outside its lifetime.
    #[error(transparent)]
    Token(#[from] ValidationError),
    /// Occurs when the token's algorithm is valid but not allowed here.
    #[error("algorithm {0} is not allowed here")]
    Algorithm(Alg),
    /// Occurs when the token has no `kid`, so no published key can be chosen.
    #[error("the token names no signing key (kid)")]
    NoKeyId,
    /// Occurs when the presenter does not satisfy the token's `cnf`.
    #[error(transparent)]
    Binding(#[from] BindingError),
    /// Occurs when the revocation feed revoked the token.
    #[error(transparent)]
    Revoked(#[from] Revoked),
    /// Occurs when the DPoP proof sent with the token is refused.
    #[error(transparent)]
    Dpop(#[from] crate::dpop::DpopError),
    /// Occurs when the authorization scheme is neither `Bearer` nor `DPoP`, or a DPoP-bound
    /// token is sent as a bearer token.
    #[error("{0}")]
    Scheme(&'static str),
    /// Occurs when the issuer's keys cannot be fetched.
    #[error("the issuer's keys are unavailable: {0}")]
    KeysUnavailable(String),
    /// Occurs when the revocation feed has not been heard from for longer than allowed, so a
    /// revocation may have been missed: tokens are refused until it is back.
    #[error("the revocation feed has been unreachable for {0} s; retry shortly")]
    FeedStale(u64),
    /// Occurs when a token is valid for longer than this verifier remembers revocations
    /// ([`RevocationList::max_lifetime`]), so a revocation of it could have been forgotten.
    #[error("the token is valid for {lifetime} s, longer than the {max} s this verifier accepts")]
    Lifetime {
        /// `exp - iat`.
        lifetime: u64,
        /// The longest lifetime accepted.
        max: u64,
    },
}

impl VerifyError {
    /// Whether the error means "this verifier lacks the key", so fetching the issuer's keys
    /// again may help.
    pub fn is_unknown_key(&self) -> bool {
        matches!(self, VerifyError::Token(ValidationError::UnknownKey(_)))
    }
}

/// A request's credentials as they arrived: what [`Verifier::verify_presented`] reads.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
    /// The `DPoP` header.
    pub dpop: Option<&'a str>,
    /// The request method.
    pub method: &'a str,
    /// The request's absolute URL, as the client addressed it (the proof's `htu`).
    pub url: &'a str,
    /// The presenting node's stable id, from the resource server's own identity source.
    pub node: Option<&'a str>,
    /// A resource accepted as the token's audience beside the verifier's own: the RFC 9728
    /// resource identifier of the route addressed (`<audience><prefix>` for a gateway's MCP
    /// route), which a client that discovered the route's metadata asks its token for.
    pub resource: Option<&'a str>,
}

impl Presented<'_> {
    /// The token and whether it came under the `DPoP` scheme (RFC 9449 §7.1).
    pub fn token(&self) -> Result<(&str, bool), VerifyError> {
        let header = self.authorization.ok_or(VerifyError::Missing)?;
        let (scheme, token) = header
            .split_once(' ')
            .ok_or(VerifyError::Scheme("malformed Authorization header"))?;
        let token = token.trim();
        if scheme.eq_ignore_ascii_case(BEARER) {
            Ok((token, false))
        } else if scheme.eq_ignore_ascii_case(DPOP) {
            Ok((token, true))
        } else {
            Err(VerifyError::Scheme(
                "the Authorization scheme must be Bearer or DPoP",
            ))
        }
    }
}

/// What a token must be to be accepted here.
#[derive(Debug, Clone)]
pub struct Verifier {
    issuer: String,
    audience: String,
    algs: Vec<Alg>,
    leeway: u64,
    revocations: Arc<RevocationList>,
}

impl Verifier {
    /// A verifier for tokens from `issuer` for `audience`, accepting ES256, EdDSA and RS256
    /// with [`DEFAULT_LEEWAY`] and an empty revocation list.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Verifier {
        Verifier {
            issuer: issuer.into(),
            audience: audience.into(),
            algs: vec![Alg::ES256, Alg::EdDSA, Alg::RS256],
            leeway: DEFAULT_LEEWAY,
            revocations: Arc::new(RevocationList::new()),
        }
    }

    /// Accepts only these algorithms.
    pub fn with_algs(mut self, algs: &[Alg]) -> Verifier {
        self.algs = algs.to_vec();
        self
    }

    /// Tolerates this much clock skew, seconds, at most [`MAX_LEEWAY`] (the revocation list
    /// keeps entries that much past the tokens they match).
    pub fn with_leeway(mut self, leeway: u64) -> Verifier {
        self.leeway = leeway.min(MAX_LEEWAY);
        self
    }

    /// Consults this revocation list (fed by the issuer's feed).
    pub fn with_revocations(mut self, revocations: Arc<RevocationList>) -> Verifier {
        self.revocations = revocations;
        self
    }

    /// The issuer trusted.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audience required.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The revocation list consulted.
    pub fn revocations(&self) -> &Arc<RevocationList> {
        &self.revocations
    }

    /// Checks a request's token and DPoP proof as presented, with `keys`; the claims when
    /// both are accepted. `replay` remembers proofs already used.
    pub fn verify_presented(
        &self,
        keys: &KeySet,
        presented: &Presented<'_>,
        replay: &crate::dpop::ReplayCache,
        now: UnixTime,
    ) -> Result<AccessClaims, VerifyError> {
        let (token, dpop_scheme) = presented.token()?;
        let proof = match presented.dpop {
            Some(proof) => {
                let proof = crate::dpop::check_proof(
                    proof,
                    &crate::dpop::ProofRequest {
                        method: presented.method,
                        url: presented.url,
                        access_token: Some(token),
                        now,
                        max_age: crate::dpop::MAX_AGE,
                        skew: self.leeway.max(crate::dpop::SKEW),
                    },
                )?;
                Some(proof)
            }
            None if dpop_scheme => return Err(crate::dpop::DpopError::Missing.into()),
            None => None,
        };
        let claims = self.verify_for(
            keys,
            token,
            &Presenter {
                node: presented.node,
                dpop_jkt: proof.as_ref().map(|p| &p.jkt),
            },
            presented.resource,
            now,
        )?;
        let bound_to_key = claims.cnf.as_ref().is_some_and(|c| c.jkt.is_some());
        if bound_to_key && !dpop_scheme {
            return Err(VerifyError::Scheme(
                "a DPoP-bound token must be sent with the DPoP scheme",
            ));
        }
        if let Some(proof) = &proof {
            // Only now, with the token verified and its binding checked, is the proof
            // remembered, charged to the presenting node (or the token's subject off the
            // tailnet): a stranger's proofs never reach the cache.
            replay.remember_for(presented.node.unwrap_or(&claims.sub), proof, now)?;
        }
        Ok(claims)
    }

    /// Checks `token` as presented by `presenter` at `now`, with `keys`; the claims when it
    /// is accepted.
    pub fn verify(
        &self,
        keys: &KeySet,
        token: &str,
        presenter: &Presenter<'_>,
        now: UnixTime,
    ) -> Result<AccessClaims, VerifyError> {
        self.verify_for(keys, token, presenter, None, now)
    }

    /// [`Verifier::verify`], accepting as the audience either the verifier's own or
    /// `resource` (see [`Presented::resource`]).
    pub fn verify_for(
        &self,
        keys: &KeySet,
        token: &str,
        presenter: &Presenter<'_>,
        resource: Option<&str>,
        now: UnixTime,
    ) -> Result<AccessClaims, VerifyError> {
        let jws = Jws::parse(token).map_err(ValidationError::from)?;
        if !self.algs.contains(&jws.alg) {
            return Err(VerifyError::Algorithm(jws.alg));
        }
        let kid = jws.header.kid.as_deref().ok_or(VerifyError::NoKeyId)?;
        let key = keys
            .get(kid)
            .ok_or_else(|| ValidationError::UnknownKey(kid.to_owned()))?;
        jws.verify(key).map_err(ValidationError::from)?;
        let claims: AccessClaims = jws.claims().map_err(ValidationError::from)?;
        // The route's own resource when the token names it, else the verifier's audience
        // (which a refusal then names).
        let audience = match resource {
            Some(resource) if claims.aud.contains(resource) => resource,
            _ => self.audience.as_str(),
        };
        validate::check(
            &jws,
            Registered {
                iss: &claims.iss,
                aud: &claims.aud,
                exp: claims.exp,
                iat: claims.iat,
                nbf: claims.nbf,
            },
            &Expect {
                issuer: &self.issuer,
                audience: Some(audience),
                typ: ACCESS_TYP,
                leeway: self.leeway,
            },
            now,
        )?;
        binding::check(claims.cnf.as_ref(), presenter)?;
        let lifetime = claims.exp.0.saturating_sub(claims.iat.0);
        let max = self.revocations.max_lifetime();
        if lifetime > max {
            return Err(VerifyError::Lifetime { lifetime, max });
        }
        self.revocations.check(&claims, Some(kid))?;
        Ok(claims)
    }
}

#[cfg(test)]
#[path = "verifier_tests.rs"]
mod tests;
