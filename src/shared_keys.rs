//! Signing keys and HMAC secrets kept in the store, sealed: what replicas sharing one database
//! share, so that they publish one JWKS and accept each other's forms and DPoP nonces.
//!
//! [`StoreKeys`] is a [`KeyStorage`] over the store's shared-key records: the manifest (JSON,
//! written compare-and-swap on its version, so two replicas never both rotate), and each key's
//! PKCS#8 bytes sealed under the key-encryption key with its `kid` as associated data. Sealed
//! blobs belong to a *generation*, which the manifest names: a rewrap writes every key and
//! secret again under the new key-encryption key as a new generation, then swaps the manifest,
//! then deletes the old generation, so a reader always finds one whole set. A replica whose
//! key-encryption key is not the manifest's generation's keeps serving the keys it has loaded
//! but refuses to write, and says to restart it with the new key.
//!
//! The secrets (the consent and admin forms' HMAC key, the DPoP nonce key) are created by the
//! first replica, insert-if-absent, and read by the rest.
//!
//! The store is asynchronous and the key ring is not: [`StoreKeys`]'s [`KeyStorage`] methods
//! block on the runtime, so they are called from blocking threads, as every change of the
//! ring is (RSA generation blocks too).

use std::path::Path;
use std::sync::{Arc, Mutex};

use ring::rand::SecureRandom as _;
use tokio::runtime::Handle;
use zeroize::Zeroizing;

use crate::clock::Clock;
use crate::keys::storage::{import, open_dir, parse_key};
use crate::keys::{Kek, KeyEntry, KeyError, KeyRing, KeySettings, KeyStorage, SigningKey};
use crate::store::{Store, StoreError};

/// The shared secret behind the consent and admin UI forms' HMAC.
const FORMS_SECRET: &str = "forms";
/// The shared secret behind DPoP nonces.
const DPOP_NONCE_SECRET: &str = "dpop-nonce";
/// Every shared secret, for a rewrap.
const SECRETS: [&str; 2] = [FORMS_SECRET, DPOP_NONCE_SECRET];
/// A secret's length: an HMAC-SHA256 key.
const SECRET_LEN: usize = 32;
/// The generation of a store's first keys.
const FIRST_GENERATION: u64 = 1;

/// The keys in the store, sealed.
#[derive(Clone)]
pub struct StoreKeys(Arc<Inner>);

struct Inner {
    store: Arc<dyn Store>,
    handle: Handle,
    sealing: Mutex<Sealing>,
}

struct Sealing {
    kek: Kek,
    /// The generation this replica's key-encryption key seals.
    generation: u64,
    /// The manifest's version and generation as last read or written.
    seen: Option<(u64, u64)>,
}

impl std::fmt::Debug for StoreKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKeys(..)")
    }
}

/// The HMAC keys every replica shares.
pub struct SharedSecrets {
    /// The consent and admin UI forms' key.
    pub forms: ring::hmac::Key,
    /// The DPoP nonce key.
    pub dpop_nonce: ring::hmac::Key,
}

fn backend(e: StoreError) -> KeyError {
    KeyError::Backend(e.to_string())
}

fn sealing(what: &str, e: crate::keys::KekError) -> KeyError {
    KeyError::Sealing(format!(
        "{what} in the database {e}; every replica needs the key-encryption key the keys are \
         sealed under (after `tailpass keys rewrap`, point --key-encryption-key-file at the new \
         key and restart)"
    ))
}

/// Opens the shared key ring and secrets in `store`, sealed under the key-encryption key in
/// `kek_file`. On a store with no keys yet, the keys of `keys_dir` are imported when it has
/// some (a single node moving to a shared database keeps its `kid`s); otherwise keys are
/// generated.
pub async fn open(
    store: Arc<dyn Store>,
    kek_file: &Path,
    keys_dir: &Path,
    settings: KeySettings,
    clock: Arc<dyn Clock>,
) -> Result<(KeyRing, SharedSecrets), KeyError> {
    let kek = Kek::read(kek_file)?;
    let manifest = store.key_manifest().await.map_err(backend)?;
    let storage = StoreKeys(Arc::new(Inner {
        store,
        handle: Handle::current(),
        sealing: Mutex::new(Sealing {
            kek,
            generation: manifest.as_ref().map_or(FIRST_GENERATION, |m| m.generation),
            seen: None,
        }),
    }));
    let ring_storage = storage.clone();
    let (kek_file, keys_dir) = (kek_file.to_owned(), keys_dir.to_owned());
    let ring = tokio::task::spawn_blocking(move || {
        if manifest.is_none() && keys_dir.join("manifest.json").exists() {
            let from = open_dir(&keys_dir, Some(Kek::read(&kek_file)?))?;
            if import(from.as_ref(), &ring_storage)? {
                tracing::info!(
                    from = %from.location(),
                    "signing keys imported into the database; the keys directory is no longer read"
                );
            }
        }
        KeyRing::open_in(Box::new(ring_storage), settings, clock)
    })
    .await
    .map_err(|e| KeyError::Backend(format!("key loading task: {e}")))??;
    let key = |bytes: &[u8]| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes);
    let secrets = SharedSecrets {
        forms: key(&storage.secret(FORMS_SECRET).await?),
        dpop_nonce: key(&storage.secret(DPOP_NONCE_SECRET).await?),
    };
    Ok((ring, secrets))
}

impl StoreKeys {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Sealing>, KeyError> {
        self.0.sealing.lock().map_err(|_| KeyError::Poisoned)
    }

    /// Runs a store call to completion from a blocking thread.
    fn block<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, KeyError> {
        self.0.handle.block_on(call).map_err(backend)
    }

    /// The generation to read: the manifest's, as last seen.
    fn reading(&self) -> Result<u64, KeyError> {
        let sealing = self.lock()?;
        Ok(sealing.seen.map_or(sealing.generation, |(_, g)| g))
    }

    /// Refuses a write unless this replica's key-encryption key seals the manifest's
    /// generation (a rewrap elsewhere moved it).
    fn check_writable(sealing: &Sealing) -> Result<(), KeyError> {
        match sealing.seen {
            Some((_, generation)) if generation != sealing.generation => Err(KeyError::Sealing(
                "the keys in the database were re-sealed under another key-encryption key; this \
                 replica serves the keys it has but changes none: point \
                 --key-encryption-key-file at the new key and restart it"
                    .into(),
            )),
            _ => Ok(()),
        }
    }

    /// The shared secret `name`, created (random, sealed) by the first replica that asks.
    async fn secret(&self, name: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let store = &self.0.store;
        let generation = self.reading()?;
        let blob = match store
            .shared_secret(name, generation)
            .await
            .map_err(backend)?
        {
            Some(blob) => blob,
            None => {
                let mut fresh = Zeroizing::new([0u8; SECRET_LEN]);
                ring::rand::SystemRandom::new()
                    .fill(fresh.as_mut())
                    .map_err(|_| KeyError::Kek(crate::keys::KekError::Random))?;
                let sealed = self.lock()?.kek.seal_secret(name, fresh.as_ref())?;
                store
                    .insert_shared_secret(name, generation, &sealed)
                    .await
                    .map_err(backend)?
            }
        };
        let opened = self
            .lock()?
            .kek
            .open_secret(name, &blob)
            .map_err(|e| sealing(&format!("shared secret {name}"), e))?;
        if opened.len() != SECRET_LEN {
            return Err(KeyError::Corrupt {
                path: self.location(),
                reason: format!("shared secret {name} is not {SECRET_LEN} bytes"),
            });
        }
        Ok(opened)
    }

    /// A generation no other rewrap picks: random, so two racing rewraps write apart and only
    /// the one whose manifest swap wins is read.
    fn fresh_generation() -> Result<u64, KeyError> {
        let mut bytes = [0u8; 8];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyError::Kek(crate::keys::KekError::Random))?;
        Ok((u64::from_be_bytes(bytes) >> 1).max(FIRST_GENERATION + 1))
    }
}

impl KeyStorage for StoreKeys {
    fn location(&self) -> String {
        "the database (sealed)".into()
    }

    fn read_manifest(&self) -> Result<Option<Vec<KeyEntry>>, KeyError> {
        let Some(manifest) = self.block(self.0.store.key_manifest())? else {
            return Ok(None);
        };
        let entries = serde_json::from_str(&manifest.data).map_err(|e| KeyError::Corrupt {
            path: format!("{} manifest", self.location()),
            reason: e.to_string(),
        })?;
        self.lock()?.seen = Some((manifest.version, manifest.generation));
        Ok(Some(entries))
    }

    fn write_manifest(&self, keys: &[KeyEntry]) -> Result<(), KeyError> {
        let (expected, generation) = {
            let sealing = self.lock()?;
            Self::check_writable(&sealing)?;
            (sealing.seen.map(|(v, _)| v), sealing.generation)
        };
        let data = serde_json::to_string(keys).map_err(|e| KeyError::Backend(e.to_string()))?;
        match self.block(self.0.store.swap_key_manifest(expected, generation, &data))? {
            Some(version) => {
                self.lock()?.seen = Some((version, generation));
                Ok(())
            }
            None => Err(KeyError::Conflict),
        }
    }

    fn read_key(&self, entry: &KeyEntry) -> Result<SigningKey, KeyError> {
        let der = self.read_pkcs8(entry)?;
        parse_key(
            entry,
            &der,
            &format!("key {} in {}", entry.kid, self.location()),
        )
    }

    fn read_pkcs8(&self, entry: &KeyEntry) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let generation = self.reading()?;
        let blob = self
            .block(self.0.store.key_blob(&entry.kid, generation))?
            .ok_or_else(|| KeyError::UnknownKid(entry.kid.clone()))?;
        self.lock()?
            .kek
            .open(&entry.kid, &blob)
            .map_err(|e| sealing(&format!("key {}", entry.kid), e))
    }

    fn write_key(&self, kid: &str, der: &[u8]) -> Result<(), KeyError> {
        let (blob, generation) = {
            let sealing = self.lock()?;
            Self::check_writable(&sealing)?;
            (sealing.kek.seal(kid, der)?, sealing.generation)
        };
        self.block(self.0.store.insert_key_blob(kid, generation, &blob))
    }

    fn remove_key(&self, kid: &str) -> Result<(), KeyError> {
        self.block(self.0.store.delete_key_blob(kid))
    }

    fn rewrap(&self, keys: &[KeyEntry], new: Kek) -> Result<(), KeyError> {
        let store = &self.0.store;
        let (old, expected) = {
            let sealing = self.lock()?;
            Self::check_writable(&sealing)?;
            (sealing.generation, sealing.seen.map(|(v, _)| v))
        };
        let next = Self::fresh_generation()?;
        // Every key and secret opens under the current key before the new set is written.
        let mut keys_sealed = Vec::with_capacity(keys.len());
        for entry in keys {
            let der = self.read_pkcs8(entry)?;
            keys_sealed.push((entry.kid.clone(), new.seal(&entry.kid, &der)?));
        }
        let mut secrets_sealed = Vec::new();
        for name in SECRETS {
            if let Some(blob) = self.block(store.shared_secret(name, old))? {
                let opened = self
                    .lock()?
                    .kek
                    .open_secret(name, &blob)
                    .map_err(|e| sealing(&format!("shared secret {name}"), e))?;
                secrets_sealed.push((name, new.seal_secret(name, &opened)?));
            }
        }
        for (kid, blob) in &keys_sealed {
            self.block(store.insert_key_blob(kid, next, blob))?;
        }
        for (name, blob) in &secrets_sealed {
            self.block(store.insert_shared_secret(name, next, blob))?;
        }
        let data = serde_json::to_string(keys).map_err(|e| KeyError::Backend(e.to_string()))?;
        // The swap: from here on every replica reads the new generation.
        let Some(version) = self.block(store.swap_key_manifest(expected, next, &data))? else {
            self.block(store.delete_key_generation(next))?;
            return Err(KeyError::Conflict);
        };
        {
            let mut sealing = self.lock()?;
            sealing.kek = new;
            sealing.generation = next;
            sealing.seen = Some((version, next));
        }
        self.block(store.delete_key_generation(old))
    }

    fn shared(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests;
