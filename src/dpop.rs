//! DPoP (RFC 9449) at this server: checking the proof that comes with a request — through
//! `tailpass_verify::dpop`, plus the replay cache and, when configured, server nonces (§8) —
//! and the proof key that `tailpass token --dpop-key` and tests sign proofs with.
//!
//! A proof is used once. This process's [`Replay`] cache is the first, cheap check; on a
//! store shared by replicas (PostgreSQL) the store also records each proof it accepts, so a
//! proof used at one replica is refused at every other ([`remember`]).
//!
//! Nonces are stateless: a nonce is a one-minute time bucket and its HMAC under a key this
//! process generated, valid for a few minutes. Replicas would share the key; until then a
//! client that meets another replica simply gets a fresh nonce and retries (§8.1).

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde::Serialize;
use tailpass_verify::dpop::{self, DpopError, Proof, ProofRequest, ReplayCache};
use tailpass_verify::{Alg, Thumbprint, UnixTime};

use crate::store::{Store, StoreError};

use crate::keys::{SigningError, SigningKey};
use crate::secret::random_token;

/// The request header carrying a proof.
pub const HEADER: &str = "dpop";
pub use tailpass_verify::dpop::{MAX_AGE, SKEW};
/// Proofs remembered at most; past it new proofs are refused until old ones expire.
pub const REPLAY_CAPACITY: usize = 200_000;
/// A nonce's time bucket, seconds.
const NONCE_BUCKET: u64 = 60;
/// Buckets a nonce stays valid for.
const NONCE_BUCKETS_VALID: u64 = 5;

/// Server nonces, and whether proofs must carry one.
pub struct Nonces {
    key: hmac::Key,
    required: bool,
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nonces")
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

impl Nonces {
    /// Nonces under a fresh key.
    pub fn new(required: bool) -> Result<Nonces, ring::error::Unspecified> {
        Ok(Nonces {
            key: hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())?,
            required,
        })
    }

    /// Nonces under `key`: the one every replica shares, so a nonce one issued is valid at
    /// all.
    pub fn with_key(key: hmac::Key, required: bool) -> Nonces {
        Nonces { key, required }
    }

    /// Whether proofs must carry a nonce.
    pub fn required(&self) -> bool {
        self.required
    }

    /// A nonce valid from now for a few minutes.
    pub fn issue(&self, now: UnixTime) -> String {
        let bucket = (now.0 / NONCE_BUCKET).to_be_bytes();
        let tag = hmac::sign(&self.key, &bucket);
        let mut raw = bucket.to_vec();
        raw.extend_from_slice(tag.as_ref().get(..16).unwrap_or_default());
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Whether `nonce` was issued here recently.
    pub fn valid(&self, nonce: &str, now: UnixTime) -> bool {
        let Ok(raw) = URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        let (Some(bucket), Some(mac)) = (raw.get(..8), raw.get(8..)) else {
            return false;
        };
        let Ok(bytes) = <[u8; 8]>::try_from(bucket) else {
            return false;
        };
        let issued = u64::from_be_bytes(bytes);
        let current = now.0 / NONCE_BUCKET;
        let fresh = issued <= current && current - issued < NONCE_BUCKETS_VALID;
        let tag = hmac::sign(&self.key, bucket);
        fresh
            && tag
                .as_ref()
                .get(..16)
                .is_some_and(|t| bool::from(subtle::ConstantTimeEq::ct_eq(t, mac)))
    }
}

/// Why a request's DPoP proof is refused, or cannot be used up. Endpoints answer each as
/// RFC 9449 says (`oauth::error` maps them once).
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    /// Occurs when a request carries more than one `DPoP` header (§4.3).
    #[error("more than one DPoP header")]
    SeveralHeaders,
    /// Occurs when the `DPoP` header is not text.
    #[error("the DPoP header is not text")]
    NotText,
    /// Occurs when the proof does not check (signature, claims, time), or was used before.
    #[error(transparent)]
    Invalid(DpopError),
    /// Occurs when proofs must carry a fresh server nonce and this one does not: the client
    /// retries with `nonce` (§8).
    #[error("a fresh DPoP nonce is required")]
    NonceRequired {
        /// The nonce to retry with.
        nonce: String,
    },
    /// Occurs when the replay cache is full: refusing is safer than forgetting.
    #[error(transparent)]
    CacheFull(DpopError),
    /// Occurs when one holder has as many proofs remembered as it may; it retries once its
    /// oldest proofs have aged out ([`MAX_AGE`] + [`SKEW`]).
    #[error(transparent)]
    HolderFull(DpopError),
    /// Occurs when the shared store cannot record the proof: refusing is safer than letting a
    /// proof be used twice.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The proofs already used: this process's bounded cache and, when replicas share the store,
/// the store's record of every proof any of them accepted.
pub struct Replay {
    cache: ReplayCache,
    shared: Option<Arc<dyn Store>>,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("remembered", &self.cache.len())
            .field("shared", &self.shared.is_some())
            .finish()
    }
}

impl Replay {
    /// This process's cache alone: enough when no other process serves the same store.
    pub fn local(cache: ReplayCache) -> Replay {
        Replay {
            cache,
            shared: None,
        }
    }

    /// The cache, and `store` too when it is shared by replicas
    /// ([`Store::shared_by_replicas`]); a store of one process costs no write per proof.
    pub fn over(cache: ReplayCache, store: Arc<dyn Store>) -> Replay {
        Replay {
            cache,
            shared: store.shared_by_replicas().then_some(store),
        }
    }

    /// The in-memory cache.
    pub fn cache(&self) -> &ReplayCache {
        &self.cache
    }

    /// Proofs this process remembers.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether this process remembers no proof.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

/// The proof a request carries, if any. More than one `DPoP` header is an error (§4.3).
pub fn proof_header(headers: &HeaderMap) -> Result<Option<&str>, ProofError> {
    let mut values = headers.get_all(HEADER).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ProofError::SeveralHeaders);
    }
    first
        .map(|v| v.to_str().map_err(|_| ProofError::NotText))
        .transpose()
}

/// Checks a request's proof: signature and claims, nonce when required, and that it was not
/// used before. It records nothing: once the request is accepted, [`remember`] uses the proof
/// up, so that a stranger's refused requests never take room in the replay cache.
pub fn check_request(
    proof: &str,
    method: &str,
    url: &str,
    access_token: Option<&str>,
    nonces: &Nonces,
    replay: &Replay,
    now: UnixTime,
) -> Result<Proof, ProofError> {
    let request = ProofRequest {
        method,
        url,
        access_token,
        now,
        max_age: MAX_AGE,
        skew: SKEW,
    };
    let proof = dpop::check_proof(proof, &request).map_err(ProofError::Invalid)?;
    if nonces.required() && !proof.nonce.as_deref().is_some_and(|n| nonces.valid(n, now)) {
        return Err(ProofError::NonceRequired {
            nonce: nonces.issue(now),
        });
    }
    if replay.cache.seen(&proof) {
        return Err(ProofError::Invalid(DpopError::Replay));
    }
    Ok(proof)
}

/// Uses up an accepted request's proof, charged to `holder` (the presenting node or client),
/// each of which has a bounded share of the cache. A proof raced in by a twin request is
/// refused here, and that request's answer with it. On a store shared by replicas the proof is
/// then claimed in the store too: one used at another replica (a twin raced in there) is
/// refused with the same error as a local replay. Callers use a proof up before the answer
/// is built, so nothing made for the request goes out when it is refused here.
pub async fn remember(
    replay: &Replay,
    holder: &str,
    proof: &Proof,
    now: UnixTime,
) -> Result<(), ProofError> {
    replay
        .cache
        .remember_for(holder, proof, now)
        .map_err(|e| match e {
            DpopError::CacheFull => ProofError::CacheFull(e),
            DpopError::HolderFull => ProofError::HolderFull(e),
            other => ProofError::Invalid(other),
        })?;
    if let Some(store) = &replay.shared {
        // Kept while any replica could still accept the proof: up to MAX_AGE after its iat,
        // plus SKEW for replicas' clocks differing.
        let expires_at = proof.iat.plus(MAX_AGE + SKEW);
        if !store
            .claim_dpop_proof(&proof.jkt.0, &proof.jti, expires_at)
            .await?
        {
            return Err(ProofError::Invalid(DpopError::Replay));
        }
    }
    Ok(())
}

/// A client's DPoP key (ES256), kept as a PKCS#8 PEM file.
pub struct ProofKey {
    key: SigningKey,
}

impl std::fmt::Debug for ProofKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProofKey")
            .field("jkt", &self.thumbprint())
            .finish()
    }
}

#[derive(Serialize)]
struct ProofClaims<'a> {
    jti: String,
    htm: &'a str,
    htu: &'a str,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ath: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
}

impl ProofKey {
    /// A new key, in memory only.
    pub fn generate() -> Result<ProofKey, SigningError> {
        Ok(ProofKey {
            key: SigningKey::generate(Alg::ES256)?.0,
        })
    }

    /// Loads the key at `path`, creating it (P-256, mode 0600) if the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<ProofKey, String> {
        let show = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        match std::fs::read(path) {
            Ok(pem) => {
                let (label, der) = pem_rfc7468::decode_vec(&pem).map_err(|e| show(&e))?;
                if label != "PRIVATE KEY" {
                    return Err(show(&"expected a PKCS#8 PRIVATE KEY PEM"));
                }
                let key = SigningKey::from_pkcs8(Alg::ES256, &der).map_err(|e| show(&e))?;
                Ok(ProofKey { key })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::io::Write as _;
                use std::os::unix::fs::OpenOptionsExt as _;
                let (key, der) = SigningKey::generate(Alg::ES256).map_err(|e| show(&e))?;
                let pem =
                    pem_rfc7468::encode_string("PRIVATE KEY", pem_rfc7468::LineEnding::LF, &der)
                        .map_err(|e| show(&e))?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| show(&e))?;
                file.write_all(pem.as_bytes()).map_err(|e| show(&e))?;
                Ok(ProofKey { key })
            }
            Err(e) => Err(show(&e)),
        }
    }

    /// The thumbprint tokens bound to this key carry as `cnf.jkt`.
    pub fn thumbprint(&self) -> Thumbprint {
        self.key.kid().clone()
    }

    /// A proof for `method url`, for presenting `access_token` when given.
    pub fn proof(
        &self,
        method: &str,
        url: &str,
        access_token: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<String, SigningError> {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.proof_at(method, url, access_token, nonce, UnixTime(iat))
    }

    /// A proof dated `iat` (tests of stale proofs).
    pub fn proof_at(
        &self,
        method: &str,
        url: &str,
        access_token: Option<&str>,
        nonce: Option<&str>,
        iat: UnixTime,
    ) -> Result<String, SigningError> {
        #[derive(Serialize)]
        struct Header<'a> {
            typ: &'static str,
            alg: Alg,
            jwk: &'a tailpass_verify::Jwk,
        }
        let mut jwk = self.key.jwk().clone();
        jwk.kid = None;
        jwk.use_ = None;
        jwk.alg = None;
        let header = serde_json::to_vec(&Header {
            typ: dpop::DPOP_TYP,
            alg: Alg::ES256,
            jwk: &jwk,
        })
        .map_err(|e| SigningError::Claims(e.to_string()))?;
        let claims = ProofClaims {
            jti: random_token(16),
            htm: method,
            htu: url,
            iat: iat.0,
            ath: access_token.map(dpop::access_token_hash),
            nonce,
        };
        let payload =
            serde_json::to_vec(&claims).map_err(|e| SigningError::Claims(e.to_string()))?;
        let mut jws = URL_SAFE_NO_PAD.encode(header);
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(payload));
        let signature = self.key.sign(jws.as_bytes())?;
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(jws)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_proof_from_the_key_checks_and_cannot_be_replayed() {
        let key = ProofKey::generate().unwrap();
        let nonces = Nonces::new(false).unwrap();
        let replay = Replay::local(ReplayCache::new(100, MAX_AGE + SKEW));
        let now = UnixTime::now();
        let url = "https://idp.example/token";
        let proof = key.proof_at("POST", url, None, None, now).unwrap();
        let checked = check_request(&proof, "POST", url, None, &nonces, &replay, now).unwrap();
        assert_eq!(checked.jkt, key.thumbprint());
        assert!(replay.is_empty(), "checking records nothing");
        remember(&replay, "node:n1", &checked, now).await.unwrap();
        let again = check_request(&proof, "POST", url, None, &nonces, &replay, now).unwrap_err();
        assert!(again.to_string().contains("replayed"));
        assert!(
            remember(&replay, "node:n1", &checked, now).await.is_err(),
            "a raced twin"
        );
    }

    /// Two replicas over one PostgreSQL database: a proof used at A is refused at B, with the
    /// error a local replay gets, though B's own cache never saw it.
    #[tokio::test]
    async fn a_proof_used_at_one_replica_is_refused_at_another() {
        let Some(db) = crate::store::postgres::tests::TestDb::create().await else {
            return;
        };
        let cache = || ReplayCache::new(100, MAX_AGE + SKEW);
        let a = Replay::over(cache(), Arc::new(db.replica().await));
        let b = Replay::over(cache(), Arc::new(db.replica().await));
        let key = ProofKey::generate().unwrap();
        let nonces = Nonces::new(false).unwrap();
        let now = UnixTime::now();
        let url = "https://idp.example/token";
        let proof = key.proof_at("POST", url, None, None, now).unwrap();
        let at_a = check_request(&proof, "POST", url, None, &nonces, &a, now).unwrap();
        remember(&a, "node:n1", &at_a, now).await.unwrap();
        let local = check_request(&proof, "POST", url, None, &nonces, &a, now).unwrap_err();
        // B's cache has not seen it: the check passes, the durable claim refuses.
        let at_b = check_request(&proof, "POST", url, None, &nonces, &b, now).unwrap();
        let remote = remember(&b, "node:n1", &at_b, now).await.unwrap_err();
        assert!(
            matches!(remote, ProofError::Invalid(DpopError::Replay)),
            "{remote:?}"
        );
        assert_eq!(remote.to_string(), local.to_string(), "the same refusal");
        // Another proof of the same key is fresh everywhere.
        let next = key.proof_at("POST", url, None, None, now).unwrap();
        let next = check_request(&next, "POST", url, None, &nonces, &b, now).unwrap();
        remember(&b, "node:n1", &next, now).await.unwrap();
        db.drop().await;
    }

    #[tokio::test]
    async fn one_process_remembers_proofs_in_memory_only() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            crate::store::sqlite::SqliteStore::open_in(dir.path())
                .await
                .unwrap(),
        );
        let replay = Replay::over(ReplayCache::new(100, MAX_AGE + SKEW), store);
        assert!(replay.shared.is_none(), "no write per proof on SQLite");
    }

    #[test]
    fn nonces_expire_and_cannot_be_forged() {
        let nonces = Nonces::new(true).unwrap();
        let now = UnixTime(1_000_000);
        let nonce = nonces.issue(now);
        assert!(nonces.valid(&nonce, now.plus(200)));
        assert!(!nonces.valid(&nonce, now.plus(NONCE_BUCKET * NONCE_BUCKETS_VALID + 60)));
        assert!(
            !Nonces::new(true).unwrap().valid(&nonce, now),
            "another key"
        );
        assert!(!nonces.valid("garbage", now));
    }

    #[test]
    fn the_key_file_is_created_private_and_reloaded() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dpop.pem");
        let first = ProofKey::load_or_create(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = ProofKey::load_or_create(&path).unwrap();
        assert_eq!(first.thumbprint(), again.thumbprint());
    }
}
