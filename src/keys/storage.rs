//! Where the key ring keeps its keys at rest: the seam between [`super::KeyRing`]'s logic
//! (states, rotation, pruning, publication) and the bytes.
//!
//! A [`KeyStorage`] holds the manifest (which key is next, active or retired) and each key's
//! private bytes by `kid`. Two live in the keys directory: [`super::dir::KeyDir`], PKCS#8 PEM
//! files, and [`super::sealed::SealedDir`], the same bytes sealed under the key-encryption key.
//! A storage shared by replicas (sealed blobs in the database, outside this module) is one more
//! implementation: it says it is [`KeyStorage::shared`], and the ring then reads the manifest
//! again before every change, writes it compare-and-swap, and lets a next key sign only once
//! every replica has had time to publish it ([`super::PUBLISH_DELAY`]).

use std::path::Path;

use zeroize::Zeroizing;

use super::KeyError;
use super::dir::{KeyDir, KeyEntry};
use super::kek::Kek;
use super::sealed::SealedDir;
use super::signing::SigningKey;

/// The manifest and the private keys, at rest. Every write is atomic: a crash leaves the old
/// or the new content, never a half-written key or manifest.
pub trait KeyStorage: Send + Sync {
    /// Where the keys are, for operators and errors.
    fn location(&self) -> String;

    /// The manifest's entries, or `None` where no key was ever stored.
    fn read_manifest(&self) -> Result<Option<Vec<KeyEntry>>, KeyError>;

    /// Replaces the manifest.
    fn write_manifest(&self, keys: &[KeyEntry]) -> Result<(), KeyError>;

    /// Loads the key an entry names, checked against its `kid`.
    fn read_key(&self, entry: &KeyEntry) -> Result<SigningKey, KeyError>;

    /// The PKCS#8 bytes of the key an entry names, for copying it into another storage.
    fn read_pkcs8(&self, entry: &KeyEntry) -> Result<Zeroizing<Vec<u8>>, KeyError>;

    /// Whether other processes read and write this storage too. A shared storage's
    /// [`KeyStorage::write_manifest`] fails with [`KeyError::Conflict`] when the manifest
    /// changed since this process last read it.
    fn shared(&self) -> bool {
        false
    }

    /// Stores a new key's PKCS#8 bytes.
    fn write_key(&self, kid: &str, der: &[u8]) -> Result<(), KeyError>;

    /// Deletes a key that is no longer published.
    fn remove_key(&self, kid: &str) -> Result<(), KeyError>;

    /// Re-seals every key of `keys` under `new`, atomically, and seals from now on under it.
    /// Storage that does not seal refuses.
    fn rewrap(&self, keys: &[KeyEntry], new: Kek) -> Result<(), KeyError> {
        let _ = (keys, new);
        Err(KeyError::Sealing(format!(
            "the keys in {} are not sealed: give the current --key-encryption-key-file",
            self.location()
        )))
    }
}

/// The keys directory at `path`: sealed under `kek` when one is given, else plain PEM files.
pub fn open_dir(path: &Path, kek: Option<Kek>) -> Result<Box<dyn KeyStorage>, KeyError> {
    let dir = KeyDir::open(path)?;
    Ok(match kek {
        Some(kek) => Box::new(SealedDir::open(dir, kek)?),
        None => Box::new(dir),
    })
}

/// Copies every key and the manifest of `from` into `to`, which has none yet (a migration from
/// one node's keys directory to the shared storage, keeping the `kid`s). Answers false, copying
/// no manifest, when `from` has no keys or another writer gave `to` a manifest first.
pub fn import(from: &dyn KeyStorage, to: &dyn KeyStorage) -> Result<bool, KeyError> {
    let Some(entries) = from.read_manifest()? else {
        return Ok(false);
    };
    if to.read_manifest()?.is_some() {
        return Ok(false);
    }
    for entry in &entries {
        let der = from.read_pkcs8(entry)?;
        // A damaged key stops here, before anything reads it from `to`.
        parse_key(entry, &der, &from.location())?;
        to.write_key(&entry.kid, &der)?;
    }
    match to.write_manifest(&entries) {
        Ok(()) => Ok(true),
        Err(KeyError::Conflict) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Parses a key's PKCS#8 bytes as `entry`'s algorithm and checks that its thumbprint is the
/// `kid` the manifest gives it; `shown` names where the bytes came from.
pub fn parse_key(entry: &KeyEntry, der: &[u8], shown: &str) -> Result<SigningKey, KeyError> {
    let corrupt = |reason: String| KeyError::Corrupt {
        path: shown.to_owned(),
        reason,
    };
    let key = SigningKey::from_pkcs8(entry.alg, der).map_err(|e| corrupt(e.to_string()))?;
    if key.kid().0 != entry.kid {
        return Err(corrupt(format!(
            "its public key has thumbprint {} but the manifest says {}",
            key.kid(),
            entry.kid
        )));
    }
    Ok(key)
}
