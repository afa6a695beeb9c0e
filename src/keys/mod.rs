//! Signing keys: generation, storage, rotation, publication.
//!
//! One active key per enabled algorithm signs; a *next* key per algorithm is published in the
//! JWKS before it ever signs, so relying parties that cache the JWKS already know it when
//! rotation promotes it; *retired* keys stay published until every token they signed has
//! expired, then their files are deleted. `kid` is the RFC 7638 thumbprint.
//!
//! Replicas sharing a storage ([`KeyStorage::shared`]) publish the same keys: each change is
//! made on the latest manifest and written compare-and-swap, so of two replicas rotating at once
//! one rotates and the other reloads; every replica reloads within [`RELOAD_EVERY`] of a change
//! (sooner when the storage notifies it); and a next key signs only once it has been in the
//! manifest for [`PUBLISH_DELAY`], so that every replica publishes it before any signs with it.
//!
//! This module is the only one that sees private key bytes. It does not decide what goes in a
//! token or how long it lives: callers hand it claims and an algorithm.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use tailpass_verify::{Alg, Jwk, JwkSet, UnixTime, VerifyingKey};

use crate::clock::Clock;

mod dir;
pub mod kek;
mod sealed;
mod signed_here;
mod signing;
pub mod storage;

pub use dir::{KeyEntry, KeyState};
pub use kek::{Kek, KekError};
pub use signed_here::SignedHere;
pub use signing::{SigningError, SigningKey};
pub use storage::KeyStorage;

use dir::KeyDir;

/// How often a replica reads a shared manifest again, whatever the notifications say.
pub const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a key must have been in a shared manifest before it may sign (seconds): three
/// reload periods, so a replica that missed a notification and one slow reload still
/// publishes it first. Storage that is not shared needs no delay.
pub const PUBLISH_DELAY: u64 = 3 * RELOAD_EVERY.as_secs();
/// How many times a change that lost a race (or a reload that met a key deleted meanwhile)
/// is tried again before giving up.
const ATTEMPTS: usize = 3;

/// How the key ring behaves.
#[derive(Debug, Clone)]
pub struct KeySettings {
    /// Algorithms that have an active key.
    pub enabled: BTreeSet<Alg>,
    /// How long a retired key stays published: the longest lifetime of any token it may have
    /// signed, plus clock leeway.
    pub retire_after: u64,
    /// Rotate each active key once it has signed for this many seconds; `None` rotates only on
    /// demand.
    pub rotation_interval: Option<u64>,
}

/// Why the key ring failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Occurs when a file or the directory cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Occurs when a key file or the manifest is damaged. Start-up stops rather than replace it.
    #[error(
        "{path} is corrupt: {reason}; refusing to start (restore it from a backup, or move the keys directory away to start over with new keys)"
    )]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Occurs when asked to sign with or rotate an algorithm that is not enabled.
    #[error("algorithm {0} is not enabled")]
    NotEnabled(Alg),
    /// Occurs when no key has this `kid`.
    #[error("no key has kid {0}")]
    UnknownKid(String),
    /// Occurs when key generation or signing fails.
    #[error(transparent)]
    Signing(#[from] SigningError),
    /// Occurs when the keys are sealed and no key-encryption key, or the wrong one, is given,
    /// or a rewrap is asked of keys that are not sealed.
    #[error("{0}")]
    Sealing(String),
    /// Occurs when the key-encryption key cannot be read, or sealing fails.
    #[error(transparent)]
    Kek(#[from] KekError),
    /// Occurs when another replica changed the shared keys between this one's read and its
    /// write: nothing was written, and the ring holds the other's keys now.
    #[error(
        "another replica changed the signing keys at the same moment; nothing was changed here \
         (its keys are loaded now): run it again if it is still needed"
    )]
    Conflict,
    /// Occurs when a rotation would let a next key sign before every replica can have
    /// published it.
    #[error(
        "the next {alg} key was published {age} s ago; every replica publishes it within \
         {PUBLISH_DELAY} s, so it may sign only then: rotate again in {wait} s"
    )]
    TooSoon {
        /// The algorithm.
        alg: Alg,
        /// How long ago the next key was published.
        age: u64,
        /// How long until it may sign.
        wait: u64,
    },
    /// Occurs when the shared storage (the database) fails.
    #[error("key storage: {0}")]
    Backend(String),
    /// Occurs when the key ring's lock was poisoned by a panic elsewhere.
    #[error("key ring state is unavailable")]
    Poisoned,
}

/// What `keys list` and the admin API show of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct KeyInfo {
    /// The key's manifest entry.
    #[serde(flatten)]
    pub entry: KeyEntry,
    /// For a retired key, when it leaves the JWKS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_until: Option<UnixTime>,
}

/// An immutable snapshot of the keys; swapped whole on every change.
struct KeySet {
    entries: Vec<KeyEntry>,
    keys: HashMap<String, Arc<SigningKey>>,
    active: BTreeMap<Alg, Arc<SigningKey>>,
    jwks: Arc<JwkSet>,
    /// The published keys, parsed for verifying this server's own tokens.
    verifiers: HashMap<String, Arc<VerifyingKey>>,
}

impl KeySet {
    fn build(entries: Vec<KeyEntry>, keys: HashMap<String, Arc<SigningKey>>) -> KeySet {
        let mut active = BTreeMap::new();
        let mut published = Vec::new();
        let mut verifiers = HashMap::new();
        // Active keys first, then next, then retired: a naive client that takes the first key
        // of an algorithm gets the one that is signing.
        let mut ordered: Vec<&KeyEntry> = entries.iter().collect();
        let rank = |state| match state {
            KeyState::Active => 0,
            KeyState::Next => 1,
            KeyState::Retired => 2,
        };
        ordered.sort_by_key(|e| (rank(e.state), e.alg, std::cmp::Reverse(e.created_at)));
        for entry in ordered {
            if let Some(key) = keys.get(&entry.kid) {
                if entry.state == KeyState::Active {
                    active.insert(entry.alg, key.clone());
                }
                published.push(key.jwk().clone());
                if let Ok(verifier) = VerifyingKey::from_jwk(key.jwk(), key.alg()) {
                    verifiers.insert(entry.kid.clone(), Arc::new(verifier));
                }
            }
        }
        KeySet {
            entries,
            keys,
            active,
            jwks: Arc::new(JwkSet { keys: published }),
            verifiers,
        }
    }
}

/// A change of the keys, made on copies of the manifest and the loaded keys at a time.
type Edit<'a> = dyn FnMut(
        &KeyRing,
        &mut Vec<KeyEntry>,
        &mut HashMap<String, Arc<SigningKey>>,
        UnixTime,
    ) -> Result<(), KeyError>
    + 'a;

/// The server's signing keys.
pub struct KeyRing {
    storage: Box<dyn KeyStorage>,
    settings: KeySettings,
    clock: Arc<dyn Clock>,
    current: RwLock<Arc<KeySet>>,
    /// Serializes changes (rotation, pruning) so that two never interleave their file writes.
    writer: Mutex<()>,
    /// The tokens signed here lately, whose signatures need no check when read back.
    signed: SignedHere,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("storage", &self.storage.location())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// Opens the keys directory, loading every key the manifest names and generating what is
    /// missing: an active and a next key for each enabled algorithm. Expired retired keys are
    /// deleted; active keys of algorithms no longer enabled are retired.
    ///
    /// Generating an RSA key takes a noticeable fraction of a second: call this from a
    /// blocking context.
    pub fn open(
        path: &Path,
        settings: KeySettings,
        clock: Arc<dyn Clock>,
    ) -> Result<KeyRing, KeyError> {
        KeyRing::open_in(Box::new(KeyDir::open(path)?), settings, clock)
    }

    /// Like [`KeyRing::open`], on any [`KeyStorage`] (sealed keys, say).
    pub fn open_in(
        storage: Box<dyn KeyStorage>,
        settings: KeySettings,
        clock: Arc<dyn Clock>,
    ) -> Result<KeyRing, KeyError> {
        let ring = KeyRing {
            storage,
            settings,
            clock,
            current: RwLock::new(Arc::new(KeySet::build(Vec::new(), HashMap::new()))),
            writer: Mutex::new(()),
            signed: SignedHere::default(),
        };
        {
            let _guard = ring.writer.lock().map_err(|_| KeyError::Poisoned)?;
            ring.load()?;
        }
        // Another replica starting at the same moment may win the first write: then its keys
        // are loaded, and the same adjustments are made on them.
        let mut attempt = 0;
        loop {
            match ring.change(&mut |ring, entries, keys, now| {
                for entry in entries.iter_mut() {
                    if entry.state != KeyState::Retired
                        && !ring.settings.enabled.contains(&entry.alg)
                    {
                        entry.state = KeyState::Retired;
                        entry.retired_at = Some(now);
                    }
                }
                for alg in ring.settings.enabled.clone() {
                    ring.fill(alg, entries, keys, now)?;
                }
                Ok(())
            }) {
                Err(KeyError::Conflict) if attempt + 1 < ATTEMPTS => attempt += 1,
                Err(e) => return Err(e),
                Ok(_) => return Ok(ring),
            }
        }
    }

    /// Whether other replicas share these keys.
    pub fn shared(&self) -> bool {
        self.storage.shared()
    }

    /// Reads the manifest again and loads what changed (another replica's rotation, revocation
    /// or pruning). Answers whether anything changed. Blocking.
    pub fn reload(&self) -> Result<bool, KeyError> {
        let _guard = self.writer.lock().map_err(|_| KeyError::Poisoned)?;
        self.load()
    }

    /// Loads the stored manifest and the keys it names that are not loaded yet; the writer lock
    /// is held. A key deleted between the manifest's read and its own (pruned by another
    /// replica) means the manifest moved on: it is read again.
    fn load(&self) -> Result<bool, KeyError> {
        let mut attempt = 0;
        loop {
            let entries = self.storage.read_manifest()?.unwrap_or_default();
            let set = self.snapshot()?;
            if entries == set.entries {
                return Ok(false);
            }
            let mut keys = HashMap::new();
            let mut missing = None;
            for entry in &entries {
                match set.keys.get(&entry.kid) {
                    Some(key) => {
                        keys.insert(entry.kid.clone(), key.clone());
                    }
                    None => match self.storage.read_key(entry) {
                        Ok(key) => {
                            keys.insert(entry.kid.clone(), Arc::new(key));
                        }
                        Err(KeyError::UnknownKid(kid)) => {
                            missing = Some(kid);
                            break;
                        }
                        Err(e) => return Err(e),
                    },
                }
            }
            match missing {
                None => {
                    *self.current.write().map_err(|_| KeyError::Poisoned)? =
                        Arc::new(KeySet::build(entries, keys));
                    return Ok(true);
                }
                Some(kid) if attempt + 1 >= ATTEMPTS => {
                    return Err(KeyError::Corrupt {
                        path: self.storage.location(),
                        reason: format!("the manifest names key {kid}, which is not stored"),
                    });
                }
                Some(_) => attempt += 1,
            }
        }
    }

    fn snapshot(&self) -> Result<Arc<KeySet>, KeyError> {
        self.current
            .read()
            .map(|set| set.clone())
            .map_err(|_| KeyError::Poisoned)
    }

    /// The algorithms that can sign.
    pub fn enabled(&self) -> &BTreeSet<Alg> {
        &self.settings.enabled
    }

    /// The active key of `alg`.
    pub fn active(&self, alg: Alg) -> Result<Arc<SigningKey>, KeyError> {
        self.snapshot()?
            .active
            .get(&alg)
            .cloned()
            .ok_or(KeyError::NotEnabled(alg))
    }

    /// Signs `claims` with the active key of `alg` as a compact JWS of type `typ`.
    pub fn sign_jwt<C: Serialize + ?Sized>(
        &self,
        alg: Alg,
        typ: &str,
        claims: &C,
    ) -> Result<String, KeyError> {
        Ok(self.active(alg)?.sign_jwt(typ, claims)?)
    }

    /// Like [`KeyRing::sign_jwt`], for a token this server will likely read back soon (a
    /// login's access token, presented at `/userinfo` right after): remembered by digest
    /// ([`SignedHere`]), so that reading it skips its signature check. Costs a SHA-256 of the
    /// token and a set update, which a token nobody reads back here should not pay.
    pub fn sign_jwt_to_read_back<C: Serialize + ?Sized>(
        &self,
        alg: Alg,
        typ: &str,
        claims: &C,
    ) -> Result<String, KeyError> {
        let token = self.sign_jwt(alg, typ, claims)?;
        self.signed.remember(&token);
        Ok(token)
    }

    /// Whether `token` is, byte for byte, one this ring signed lately to read back
    /// ([`KeyRing::sign_jwt_to_read_back`], [`SignedHere`]): its
    /// signature is known good, though whether its key is still published is not.
    pub fn signed_here(&self, token: &str) -> bool {
        self.signed.contains(token)
    }

    /// The published key set: active, next and not yet expired retired keys.
    pub fn jwks(&self) -> Result<Arc<JwkSet>, KeyError> {
        Ok(self.snapshot()?.jwks.clone())
    }

    /// The published key with this `kid`, for verifying tokens this server issued.
    pub fn published(&self, kid: &str) -> Result<Option<Jwk>, KeyError> {
        Ok(self.snapshot()?.keys.get(kid).map(|k| k.jwk().clone()))
    }

    /// The published key with this `kid`, parsed for verification.
    pub fn verifying_key(&self, kid: &str) -> Result<Option<Arc<VerifyingKey>>, KeyError> {
        Ok(self.snapshot()?.verifiers.get(kid).cloned())
    }

    /// Every key in the manifest, for operators.
    pub fn list(&self) -> Result<Vec<KeyInfo>, KeyError> {
        let set = self.snapshot()?;
        Ok(set
            .entries
            .iter()
            .map(|entry| KeyInfo {
                entry: entry.clone(),
                published_until: entry.retired_at.map(|t| t.plus(self.settings.retire_after)),
            })
            .collect())
    }

    /// Rotates `alg` (or every enabled algorithm): the active key retires, the next key
    /// becomes active, and a new next key is generated and published. Blocking (RSA
    /// generation).
    pub fn rotate(&self, alg: Option<Alg>) -> Result<Vec<KeyInfo>, KeyError> {
        let algs: Vec<Alg> = match alg {
            Some(alg) if !self.settings.enabled.contains(&alg) => {
                return Err(KeyError::NotEnabled(alg));
            }
            Some(alg) => vec![alg],
            None => self.settings.enabled.iter().copied().collect(),
        };
        self.change(&mut |ring, entries, keys, now| {
            for &alg in &algs {
                ring.rotate_one(alg, true, entries, keys, now)?;
            }
            Ok(())
        })?;
        self.list()
    }

    /// Drops the key `kid` at once — from the JWKS, the verifying keys and storage — for a
    /// compromised key (docs/design.md "Contracts": revocation feed, `kid`). An active key is
    /// first replaced by rotating its algorithm; a next key gets a new next key. The caller
    /// publishes the `kid` revocation, which refuses what it signed. Blocking (RSA
    /// generation).
    pub fn revoke(&self, kid: &str) -> Result<Vec<KeyInfo>, KeyError> {
        // A revocation is wanted whatever else changed meanwhile: a lost race is tried again
        // on the other replica's keys.
        let mut attempt = 0;
        let mut alg = None;
        loop {
            let changed = self.change(&mut |ring, entries, keys, now| {
                let entry = entries
                    .iter()
                    .find(|e| e.kid == kid)
                    .cloned()
                    .ok_or_else(|| KeyError::UnknownKid(kid.to_owned()))?;
                // The compromised key stops signing at once: its next key takes over even if
                // it is younger than the publication delay (the one exception to it).
                if entry.state == KeyState::Active {
                    ring.rotate_one(entry.alg, false, entries, keys, now)?;
                }
                entries.retain(|e| e.kid != kid);
                keys.remove(kid);
                if ring.settings.enabled.contains(&entry.alg) {
                    ring.fill(entry.alg, entries, keys, now)?;
                }
                alg = Some(entry.alg);
                Ok(())
            });
            match changed {
                Err(KeyError::Conflict) if attempt + 1 < ATTEMPTS => attempt += 1,
                Err(e) => return Err(e),
                Ok(_) => break,
            }
        }
        if let Some(alg) = alg {
            tracing::warn!(%kid, %alg, "signing key revoked and dropped");
        }
        self.list()
    }

    /// Re-seals every stored key under `new` (docs/design.md "Contracts": key storage), and
    /// seals new keys under it from now on. Refused unless the keys are sealed and the current
    /// key-encryption key opens every one. Blocking.
    pub fn rewrap(&self, new: Kek) -> Result<(), KeyError> {
        let _guard = self.writer.lock().map_err(|_| KeyError::Poisoned)?;
        if self.storage.shared() {
            self.load()?;
        }
        let set = self.snapshot()?;
        if let Err(e) = self.storage.rewrap(&set.entries, new) {
            if matches!(e, KeyError::Conflict) {
                self.load()?;
            }
            return Err(e);
        }
        tracing::info!(
            keys = set.entries.len(),
            "keys re-sealed under a new key-encryption key"
        );
        Ok(())
    }

    /// Periodic upkeep: rotates keys whose interval has passed and drops retired keys whose
    /// tokens have all expired. Returns whether anything changed. Blocking.
    pub fn maintain(&self) -> Result<bool, KeyError> {
        let changed = self.change(&mut |ring, entries, keys, now| {
            let Some(interval) = ring.settings.rotation_interval else {
                return Ok(());
            };
            let due: Vec<Alg> = entries
                .iter()
                .filter(|e| e.state == KeyState::Active)
                .filter(|e| now.since(e.activated_at.unwrap_or(e.created_at)) >= interval)
                .map(|e| e.alg)
                .collect();
            for alg in due {
                match ring.rotate_one(alg, true, entries, keys, now) {
                    Ok(()) => tracing::info!(%alg, "scheduled key rotation"),
                    // Its next key is too young to sign yet: a later round rotates.
                    Err(KeyError::TooSoon { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        });
        match changed {
            // Another replica rotated first: its keys are loaded, which is a change here.
            Err(KeyError::Conflict) => Ok(true),
            other => other,
        }
    }

    /// Applies `edit` to a copy of the latest keys (read again first when shared), drops the
    /// retired keys whose tokens have all expired, and commits: the manifest first, then the
    /// keys it no longer names are deleted. On failure the keys `edit` generated are deleted
    /// again; on a lost race the other replica's keys are loaded and [`KeyError::Conflict`]
    /// answered. Answers whether anything changed.
    fn change(&self, edit: &mut Edit<'_>) -> Result<bool, KeyError> {
        let _guard = self.writer.lock().map_err(|_| KeyError::Poisoned)?;
        if self.storage.shared() {
            self.load()?;
        }
        let set = self.snapshot()?;
        let mut entries = set.entries.clone();
        let mut keys = set.keys.clone();
        let now = self.clock.now();
        let edited = edit(self, &mut entries, &mut keys, now);
        let added: Vec<String> = keys
            .keys()
            .filter(|kid| !set.keys.contains_key(*kid))
            .cloned()
            .collect();
        let written = edited.and_then(|()| {
            self.prune(&mut entries, &mut keys, now);
            if entries == set.entries {
                return Ok(false);
            }
            self.commit(entries, keys).map(|()| true)
        });
        match written {
            Ok(changed) => {
                let current = self.snapshot()?;
                for kid in set.keys.keys().filter(|k| !current.keys.contains_key(*k)) {
                    self.storage.remove_key(kid)?;
                }
                Ok(changed)
            }
            Err(e) => {
                for kid in &added {
                    if let Err(cleanup) = self.storage.remove_key(kid) {
                        tracing::warn!(%kid, error = %cleanup, "could not delete an unused new key");
                    }
                }
                if matches!(e, KeyError::Conflict) {
                    self.load()?;
                }
                Err(e)
            }
        }
    }

    /// Retires the active key of `alg`, promotes its next key, and generates a new next key.
    /// With `wait`, refused ([`KeyError::TooSoon`]) while the next key is younger than the
    /// publication delay of shared storage. Works on copies: nothing is visible until
    /// [`KeyRing::commit`].
    fn rotate_one(
        &self,
        alg: Alg,
        wait: bool,
        entries: &mut Vec<KeyEntry>,
        keys: &mut HashMap<String, Arc<SigningKey>>,
        now: UnixTime,
    ) -> Result<(), KeyError> {
        let delay = if self.storage.shared() {
            PUBLISH_DELAY
        } else {
            0
        };
        if wait
            && let Some(next) = entries
                .iter()
                .find(|e| e.alg == alg && e.state == KeyState::Next)
        {
            let age = now.since(next.created_at);
            if age < delay {
                return Err(KeyError::TooSoon {
                    alg,
                    age,
                    wait: delay - age,
                });
            }
        }
        let mut promoted = false;
        for entry in entries.iter_mut().filter(|e| e.alg == alg) {
            match entry.state {
                KeyState::Active => {
                    entry.state = KeyState::Retired;
                    entry.retired_at = Some(now);
                }
                KeyState::Next if !promoted => {
                    entry.state = KeyState::Active;
                    entry.activated_at = Some(now);
                    promoted = true;
                }
                KeyState::Next | KeyState::Retired => {}
            }
        }
        // A new next key, and an active one too if there was no next key to promote.
        self.fill(alg, entries, keys, now)
    }

    /// Makes sure `alg` has an active and a next key.
    fn fill(
        &self,
        alg: Alg,
        entries: &mut Vec<KeyEntry>,
        keys: &mut HashMap<String, Arc<SigningKey>>,
        now: UnixTime,
    ) -> Result<(), KeyError> {
        let has = |entries: &Vec<KeyEntry>, state| {
            entries.iter().any(|e| e.alg == alg && e.state == state)
        };
        if !has(entries, KeyState::Active) {
            if let Some(next) = entries
                .iter_mut()
                .find(|e| e.alg == alg && e.state == KeyState::Next)
            {
                next.state = KeyState::Active;
                next.activated_at = Some(now);
            } else {
                let entry = self.generate(alg, KeyState::Active, now, keys)?;
                entries.push(entry);
            }
        }
        if !has(entries, KeyState::Next) {
            let entry = self.generate(alg, KeyState::Next, now, keys)?;
            entries.push(entry);
        }
        Ok(())
    }

    fn generate(
        &self,
        alg: Alg,
        state: KeyState,
        now: UnixTime,
        keys: &mut HashMap<String, Arc<SigningKey>>,
    ) -> Result<KeyEntry, KeyError> {
        let (key, der) = SigningKey::generate(alg)?;
        self.storage.write_key(&key.kid().0, &der)?;
        tracing::info!(%alg, kid = %key.kid(), ?state, "generated signing key");
        let entry = KeyEntry {
            kid: key.kid().0.clone(),
            alg,
            state,
            created_at: now,
            activated_at: (state == KeyState::Active).then_some(now),
            retired_at: None,
        };
        keys.insert(entry.kid.clone(), Arc::new(key));
        Ok(entry)
    }

    /// Drops retired keys whose every token has expired (their files go once the manifest no
    /// longer names them).
    fn prune(
        &self,
        entries: &mut Vec<KeyEntry>,
        keys: &mut HashMap<String, Arc<SigningKey>>,
        now: UnixTime,
    ) {
        let retire_after = self.settings.retire_after;
        entries.retain(|e| {
            let expired = e.state == KeyState::Retired
                && e.retired_at.is_none_or(|t| now >= t.plus(retire_after));
            if expired {
                keys.remove(&e.kid);
                tracing::info!(kid = %e.kid, "retired key no longer published; deleted");
            }
            !expired
        });
    }

    /// Writes the manifest and swaps the in-memory snapshot.
    fn commit(
        &self,
        entries: Vec<KeyEntry>,
        keys: HashMap<String, Arc<SigningKey>>,
    ) -> Result<(), KeyError> {
        self.storage.write_manifest(&entries)?;
        let mut keys = keys;
        keys.retain(|kid, _| entries.iter().any(|e| &e.kid == kid));
        let set = Arc::new(KeySet::build(entries, keys));
        *self.current.write().map_err(|_| KeyError::Poisoned)? = set;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::clock::ManualClock;

    fn settings(algs: &[Alg]) -> KeySettings {
        KeySettings {
            enabled: algs.iter().copied().collect(),
            retire_after: 3_600,
            rotation_interval: Some(86_400),
        }
    }

    fn open(path: &Path, algs: &[Alg], clock: &Arc<ManualClock>) -> Result<KeyRing, KeyError> {
        KeyRing::open(path, settings(algs), clock.clone())
    }

    fn state_of(ring: &KeyRing, kid: &str) -> Option<KeyState> {
        ring.list()
            .unwrap()
            .into_iter()
            .find(|k| k.entry.kid == kid)
            .map(|k| k.entry.state)
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn fresh_directory_gets_active_and_next_keys_with_tight_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let clock = Arc::new(ManualClock::new(UnixTime(1_000_000)));
        let ring = open(&dir, &[Alg::ES256, Alg::EdDSA], &clock).unwrap();
        let list = ring.list().unwrap();
        assert_eq!(list.len(), 4, "an active and a next key per algorithm");
        assert_eq!(
            ring.jwks().unwrap().keys.len(),
            4,
            "next keys are published too"
        );
        assert_eq!(mode(&dir), 0o700);
        for info in &list {
            assert_eq!(mode(&dir.join(format!("{}.pem", info.entry.kid))), 0o600);
        }
        assert_eq!(mode(&dir.join("manifest.json")), 0o600);
        // The first published key of each algorithm is the one that signs.
        let jwks = ring.jwks().unwrap();
        let first_es = jwks
            .keys
            .iter()
            .find(|k| k.alg == Some(Alg::ES256))
            .unwrap();
        assert_eq!(
            first_es.kid.as_deref(),
            Some(ring.active(Alg::ES256).unwrap().kid().0.as_str())
        );
    }

    #[test]
    fn reopening_keeps_the_same_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(UnixTime(1_000_000)));
        let first = open(tmp.path(), &[Alg::ES256], &clock)
            .unwrap()
            .list()
            .unwrap();
        let second = open(tmp.path(), &[Alg::ES256], &clock)
            .unwrap()
            .list()
            .unwrap();
        assert_eq!(first, second);
    }

    #[test]
    fn wide_permissions_are_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(UnixTime(1_000_000)));
        let ring = open(tmp.path(), &[Alg::ES256], &clock).unwrap();
        let kid = ring.active(Alg::ES256).unwrap().kid().0.clone();
        let file = tmp.path().join(format!("{kid}.pem"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        drop(ring);
        open(tmp.path(), &[Alg::ES256], &clock).unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(tmp.path()), 0o700);
    }

    #[test]
    fn rotation_promotes_next_and_keeps_retired_published_until_expiry() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(UnixTime(1_000_000)));
        let ring = open(tmp.path(), &[Alg::ES256], &clock).unwrap();
        let old_active = ring.active(Alg::ES256).unwrap().kid().0.clone();
        let old_next = ring
            .list()
            .unwrap()
            .into_iter()
            .find(|k| k.entry.state == KeyState::Next)
            .unwrap()
            .entry
            .kid;
        clock.advance(10);
        ring.rotate(Some(Alg::ES256)).unwrap();
        assert_eq!(ring.active(Alg::ES256).unwrap().kid().0, old_next);
        assert_eq!(state_of(&ring, &old_active), Some(KeyState::Retired));
        let published: Vec<_> = ring
            .jwks()
            .unwrap()
            .keys
            .iter()
            .filter_map(|k| k.kid.clone())
            .collect();
        assert_eq!(published.len(), 3, "active, new next, retired");
        assert!(published.contains(&old_active));
        // Still published one second before every token it signed has expired…
        clock.advance(3_599);
        assert!(!ring.maintain().unwrap());
        assert!(ring.published(&old_active).unwrap().is_some());
        // …and gone, file included, once they have.
        clock.advance(1);
        assert!(ring.maintain().unwrap());
        assert!(ring.published(&old_active).unwrap().is_none());
        assert!(!tmp.path().join(format!("{old_active}.pem")).exists());
    }

    #[test]
    fn scheduled_rotation_happens_when_the_interval_has_passed() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(UnixTime(1_000_000)));
        let ring = open(tmp.path(), &[Alg::EdDSA], &clock).unwrap();
        let before = ring.active(Alg::EdDSA).unwrap().kid().0.clone();
        clock.advance(86_399);
        assert!(!ring.maintain().unwrap());
        clock.advance(1);
        assert!(ring.maintain().unwrap());
        assert_ne!(ring.active(Alg::EdDSA).unwrap().kid().0, before);
    }

    #[test]
    fn rotating_an_algorithm_that_is_not_enabled_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(UnixTime(1_000_000)));
        let ring = open(tmp.path(), &[Alg::ES256], &clock).unwrap();
        assert!(matches!(
            ring.rotate(Some(Alg::RS256)),
            Err(KeyError::NotEnabled(Alg::RS256))
        ));
        assert!(matches!(
            ring.sign_jwt(Alg::EdDSA, "JWT", &serde_json::json!({})),
            Err(KeyError::NotEnabled(Alg::EdDSA))
        ));
    }

    #[test]
    fn corrupt_key_file_stops_start_up_and_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(UnixTime(1_000_000)));
        let ring = open(tmp.path(), &[Alg::ES256], &clock).unwrap();
        let kid = ring.active(Alg::ES256).unwrap().kid().0.clone();
        drop(ring);
        let file = tmp.path().join(format!("{kid}.pem"));
        std::fs::write(
            &file,
            "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = open(tmp.path(), &[Alg::ES256], &clock).unwrap_err();
        assert!(matches!(err, KeyError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(&kid));
        assert!(
            std::fs::read_to_string(&file)
                .unwrap()
                .contains("not base64")
        );
    }

    #[test]
    fn key_swapped_under_another_kid_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(UnixTime(1_000_000)));
        let ring = open(tmp.path(), &[Alg::ES256], &clock).unwrap();
        let list = ring.list().unwrap();
        drop(ring);
        let (a, b) = (&list[0].entry.kid, &list[1].entry.kid);
        let b_pem = std::fs::read(tmp.path().join(format!("{b}.pem"))).unwrap();
        std::fs::write(tmp.path().join(format!("{a}.pem")), b_pem).unwrap();
        let err = open(tmp.path(), &[Alg::ES256], &clock).unwrap_err();
        assert!(err.to_string().contains("thumbprint"), "{err}");
    }

    #[test]
    fn key_files_without_a_manifest_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(UnixTime(1_000_000)));
        open(tmp.path(), &[Alg::ES256], &clock).unwrap();
        std::fs::remove_file(tmp.path().join("manifest.json")).unwrap();
        assert!(matches!(
            open(tmp.path(), &[Alg::ES256], &clock),
            Err(KeyError::Corrupt { .. })
        ));
    }

    #[test]
    fn revoking_the_active_key_drops_it_and_another_key_signs() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(UnixTime(1_000_000)));
        let ring = open(tmp.path(), &[Alg::ES256], &clock).unwrap();
        let revoked = ring.active(Alg::ES256).unwrap().kid().0.clone();
        ring.revoke(&revoked).unwrap();
        assert!(ring.published(&revoked).unwrap().is_none());
        assert!(ring.verifying_key(&revoked).unwrap().is_none());
        assert!(!tmp.path().join(format!("{revoked}.pem")).exists());
        let active = ring.active(Alg::ES256).unwrap().kid().0.clone();
        assert_ne!(active, revoked);
        let states: Vec<_> = ring.list().unwrap().iter().map(|k| k.entry.state).collect();
        assert_eq!(states.len(), 2, "an active and a new next key: {states:?}");
        assert!(states.contains(&KeyState::Next));
        // Reopening keeps it gone.
        drop(ring);
        let ring = open(tmp.path(), &[Alg::ES256], &clock).unwrap();
        assert!(ring.published(&revoked).unwrap().is_none());
        assert!(matches!(
            ring.revoke(&revoked),
            Err(KeyError::UnknownKid(_))
        ));
    }

    #[test]
    fn disabling_an_algorithm_retires_its_active_key() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(UnixTime(1_000_000)));
        let ring = open(tmp.path(), &[Alg::ES256, Alg::EdDSA], &clock).unwrap();
        let ed = ring.active(Alg::EdDSA).unwrap().kid().0.clone();
        drop(ring);
        let ring = open(tmp.path(), &[Alg::ES256], &clock).unwrap();
        assert_eq!(state_of(&ring, &ed), Some(KeyState::Retired));
        assert!(ring.active(Alg::EdDSA).is_err());
        assert!(
            ring.published(&ed).unwrap().is_some(),
            "its tokens may still be live"
        );
    }
}
