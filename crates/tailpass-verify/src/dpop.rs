//! DPoP proofs (RFC 9449): checking a proof, and remembering which proofs were used.
//!
//! A proof is a JWT signed by the client's key, naming the request it is for. Checked here:
//! `typ: dpop+jwt` (§4.2), an algorithm from the allowlist with a *public* `jwk` in the header
//! that verifies the signature, `htm` and `htu` against the request (query and fragment
//! ignored, §4.3), `iat` within a window, `ath` for a presented access token (§7.1), and — by
//! [`ReplayCache`] — that `jti` was not seen before. The result is the key's thumbprint, which
//! a token's `cnf.jkt` must equal.
//!
//! Anyone can sign a well-formed proof with a key of their own, so a proof is remembered only
//! once the request carrying it is otherwise accepted, and each holder (a presenting node, or
//! a key) may occupy only a bounded share of the cache: strangers cannot fill it, and one
//! caller cannot crowd out the rest.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use crate::jws::{Jws, JwsError, VerifyingKey};
use crate::{Jwk, Thumbprint, UnixTime};

/// The `typ` of a DPoP proof.
pub const DPOP_TYP: &str = "dpop+jwt";
/// How old a proof may be, seconds.
pub const MAX_AGE: u64 = 300;
/// How far ahead a proof's clock may be, seconds.
pub const SKEW: u64 = 60;
/// The longest `jti` accepted.
const MAX_JTI: usize = 128;

/// Why a proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    /// Occurs when the proof is not a well-formed JWS, or its algorithm is not accepted
    /// (`none` and HMAC included).
    #[error("DPoP proof: {0}")]
    Jws(#[from] JwsError),
    /// Occurs when a token sent under the `DPoP` scheme comes without a proof.
    #[error("the DPoP scheme needs a DPoP proof header")]
    Missing,
    /// Occurs when `typ` is not `dpop+jwt`.
    #[error("DPoP proof must have typ dpop+jwt")]
    Type,
    /// Occurs when the header has no usable public `jwk`, or a private one.
    #[error("DPoP proof key: {0}")]
    Key(String),
    /// Occurs when a required claim is missing or malformed.
    #[error("DPoP proof claims: {0}")]
    Claims(String),
    /// Occurs when `htm` is not the request's method.
    #[error("DPoP proof is for method {0:?}, not this request's")]
    Method(String),
    /// Occurs when `htu` is not the request's URL.
    #[error("DPoP proof is for URL {0:?}, not this request's")]
    Url(String),
    /// Occurs when `iat` is outside the accepted window.
    #[error("DPoP proof iat {0} is outside the accepted window")]
    Time(u64),
    /// Occurs when `ath` is missing or is not the hash of the presented access token.
    #[error("DPoP proof ath does not match the access token")]
    AccessTokenHash,
    /// Occurs when the proof's `jti` was already used.
    #[error("DPoP proof replayed")]
    Replay,
    /// Occurs when the replay cache is full: refusing is safer than forgetting (§11.1).
    #[error("DPoP replay cache is full; retry shortly")]
    CacheFull,
    /// Occurs when one holder (node or key) has as many proofs remembered as it may: it is
    /// sending proofs faster than the cache lets one caller, and should retry shortly.
    #[error("too many DPoP proofs from this presenter within the window; retry shortly")]
    HolderFull,
}

/// What a proof must match.
#[derive(Debug, Clone, Copy)]
pub struct ProofRequest<'a> {
    /// The HTTP method.
    pub method: &'a str,
    /// The request's absolute URL (query and fragment are ignored).
    pub url: &'a str,
    /// The access token presented with the proof, which `ath` must hash.
    pub access_token: Option<&'a str>,
    /// Now.
    pub now: UnixTime,
    /// How old `iat` may be, seconds.
    pub max_age: u64,
    /// How far in the future `iat` may be (clock skew), seconds.
    pub skew: u64,
}

/// A checked proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// The RFC 7638 thumbprint of the proof's key.
    pub jkt: Thumbprint,
    /// The proof's id.
    pub jti: String,
    /// When it was made.
    pub iat: UnixTime,
    /// The server nonce it carries, if any.
    pub nonce: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    jti: Option<String>,
    htm: Option<String>,
    htu: Option<String>,
    iat: Option<u64>,
    ath: Option<String>,
    nonce: Option<String>,
}

/// `scheme://host[:port]/path`, normalized by the URL parser (lowercase scheme and host,
/// default port dropped), without query or fragment.
fn without_query(url: &str) -> Option<String> {
    let mut parsed = url::Url::parse(url).ok()?;
    parsed.set_query(None);
    parsed.set_fragment(None);
    Some(parsed.to_string())
}

/// The `ath` value for an access token: base64url of its SHA-256 (RFC 9449 §4.2).
pub fn access_token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

/// Checks a proof against the request it came with. Replay is checked separately, by
/// [`ReplayCache::remember`], once everything else holds.
pub fn check_proof(proof: &str, request: &ProofRequest<'_>) -> Result<Proof, DpopError> {
    let jws = Jws::parse(proof)?;
    if !jws
        .header
        .typ
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case(DPOP_TYP))
    {
        return Err(DpopError::Type);
    }
    let jwk_value = jws
        .header
        .jwk
        .as_ref()
        .ok_or_else(|| DpopError::Key("the header has no jwk".into()))?;
    let jwk = Jwk::parse_public(jwk_value).map_err(|e| DpopError::Key(e.to_string()))?;
    let key = VerifyingKey::from_jwk(&jwk, jws.alg).map_err(|e| DpopError::Key(e.to_string()))?;
    jws.verify(&key)?;
    let claims: Claims = jws.claims().map_err(|e| DpopError::Claims(e.to_string()))?;
    let jti = claims
        .jti
        .filter(|j| !j.is_empty() && j.len() <= MAX_JTI)
        .ok_or_else(|| DpopError::Claims("jti is missing or too long".into()))?;
    let htm = claims
        .htm
        .ok_or_else(|| DpopError::Claims("htm is missing".into()))?;
    if htm != request.method {
        return Err(DpopError::Method(htm));
    }
    let htu = claims
        .htu
        .ok_or_else(|| DpopError::Claims("htu is missing".into()))?;
    if without_query(&htu).is_none() || without_query(&htu) != without_query(request.url) {
        return Err(DpopError::Url(htu));
    }
    let iat = claims
        .iat
        .ok_or_else(|| DpopError::Claims("iat is missing".into()))?;
    if iat > request.now.plus(request.skew).0 || iat < request.now.minus(request.max_age).0 {
        return Err(DpopError::Time(iat));
    }
    if let Some(token) = request.access_token
        && claims.ath.as_deref() != Some(access_token_hash(token).as_str())
    {
        return Err(DpopError::AccessTokenHash);
    }
    Ok(Proof {
        jkt: jwk.thumbprint(),
        jti,
        iat: UnixTime(iat),
        nonce: claims.nonce,
    })
}

/// Proofs one holder may have remembered at once, by default: about 28 a second sustained
/// over the window, far above what one agent's calls need.
pub const DEFAULT_PER_HOLDER: usize = 10_000;

/// The `jti`s of proofs seen within the window, so that each proof is used once. Bounded:
/// entries leave when the window has passed; when the cache is full, or the holder's share
/// is, new proofs are refused.
#[derive(Debug)]
pub struct ReplayCache {
    inner: Mutex<Seen>,
    capacity: usize,
    per_holder: usize,
    window: u64,
}

#[derive(Debug, Default)]
struct Seen {
    keys: HashSet<String>,
    /// Insertion order with expiry and holder; expiries grow with insertion, so the front
    /// expires first.
    order: VecDeque<(UnixTime, String, String)>,
    /// Proofs remembered per holder.
    holders: HashMap<String, usize>,
}

impl ReplayCache {
    /// A cache holding at most `capacity` proofs, each for `window` seconds (the proof age
    /// accepted plus the clock skew), at most [`DEFAULT_PER_HOLDER`] of them per holder.
    pub fn new(capacity: usize, window: u64) -> ReplayCache {
        ReplayCache {
            inner: Mutex::new(Seen::default()),
            capacity,
            per_holder: DEFAULT_PER_HOLDER.min(capacity),
            window,
        }
    }

    /// Lets each holder have at most `per_holder` proofs remembered at once.
    pub fn with_per_holder(mut self, per_holder: usize) -> ReplayCache {
        self.per_holder = per_holder;
        self
    }

    /// Records `proof` with its key as the holder, or refuses it if seen before or if the
    /// cache (or the key's share of it) is full. Call it once the request is otherwise
    /// accepted.
    pub fn remember(&self, proof: &Proof, now: UnixTime) -> Result<(), DpopError> {
        self.remember_for(&proof.jkt.0, proof, now)
    }

    /// Records `proof` for `holder` (the presenting node, or whoever the accepted request
    /// was authenticated as), as [`ReplayCache::remember`] does.
    pub fn remember_for(
        &self,
        holder: &str,
        proof: &Proof,
        now: UnixTime,
    ) -> Result<(), DpopError> {
        let mut seen = self.inner.lock().map_err(|_| DpopError::CacheFull)?;
        while seen
            .order
            .front()
            .is_some_and(|(expires, _, _)| *expires <= now)
        {
            if let Some((_, key, owner)) = seen.order.pop_front() {
                seen.keys.remove(&key);
                if let Some(count) = seen.holders.get_mut(&owner) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        seen.holders.remove(&owner);
                    }
                }
            }
        }
        let key = format!("{}:{}", proof.jkt, proof.jti);
        if seen.keys.contains(&key) {
            return Err(DpopError::Replay);
        }
        if seen.keys.len() >= self.capacity {
            return Err(DpopError::CacheFull);
        }
        if seen.holders.get(holder).copied().unwrap_or(0) >= self.per_holder {
            return Err(DpopError::HolderFull);
        }
        seen.keys.insert(key.clone());
        *seen.holders.entry(holder.to_owned()).or_insert(0) += 1;
        seen.order
            .push_back((now.plus(self.window), key, holder.to_owned()));
        Ok(())
    }

    /// Whether `proof` is already remembered: the replay check before a request is accepted,
    /// which records nothing, so that refused requests take no room.
    pub fn seen(&self, proof: &Proof) -> bool {
        let key = format!("{}:{}", proof.jkt, proof.jti);
        self.inner.lock().map_or(true, |s| s.keys.contains(&key))
    }

    /// How many proofs are remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|s| s.keys.len()).unwrap_or(0)
    }

    /// Whether no proof is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proof(jti: &str) -> Proof {
        Proof {
            jkt: Thumbprint("k".into()),
            jti: jti.into(),
            iat: UnixTime(100),
            nonce: None,
        }
    }

    #[test]
    fn a_proof_is_used_once_and_forgotten_after_the_window() {
        let cache = ReplayCache::new(10, 60);
        assert_eq!(cache.remember(&proof("a"), UnixTime(100)), Ok(()));
        assert_eq!(
            cache.remember(&proof("a"), UnixTime(101)),
            Err(DpopError::Replay)
        );
        assert_eq!(
            cache.remember(&proof("a"), UnixTime(160)),
            Ok(()),
            "the window has passed"
        );
    }

    #[test]
    fn a_full_cache_refuses_rather_than_forgets() {
        let cache = ReplayCache::new(2, 60);
        cache
            .remember(&proof("a"), UnixTime(100))
            .unwrap_or_default();
        cache
            .remember(&proof("b"), UnixTime(100))
            .unwrap_or_default();
        assert_eq!(
            cache.remember(&proof("c"), UnixTime(110)),
            Err(DpopError::CacheFull)
        );
        assert_eq!(
            cache.remember(&proof("c"), UnixTime(160)),
            Ok(()),
            "room once a and b expire"
        );
    }

    #[test]
    fn one_presenter_cannot_take_the_whole_replay_cache() {
        let cache = ReplayCache::new(10, 60).with_per_holder(2);
        assert_eq!(cache.remember_for("nA", &proof("a"), UnixTime(100)), Ok(()));
        assert_eq!(cache.remember_for("nA", &proof("b"), UnixTime(100)), Ok(()));
        assert_eq!(
            cache.remember_for("nA", &proof("c"), UnixTime(100)),
            Err(DpopError::HolderFull)
        );
        assert_eq!(
            cache.remember_for("nB", &proof("c"), UnixTime(100)),
            Ok(()),
            "another presenter still has room"
        );
        assert_eq!(
            cache.remember_for("nA", &proof("d"), UnixTime(160)),
            Ok(()),
            "the share frees up as its proofs age out"
        );
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn urls_compare_without_query_and_with_normalization() {
        assert_eq!(
            without_query("HTTPS://IdP.example:443/token?x=1#f"),
            without_query("https://idp.example/token")
        );
        assert_ne!(
            without_query("https://idp.example/token"),
            without_query("https://idp.example/token2")
        );
    }
}
