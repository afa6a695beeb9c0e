//! Where the key ring keeps its keys at rest: the seam between [`super::KeyRing`]'s logic
//! (states, rotation, pruning, publication) and the bytes.
//!
//! A [`KeyStorage`] holds the manifest (which key is next, active or retired) and each key's
//! private bytes by `kid`. Two live in the keys directory: [`super::dir::KeyDir`], PKCS#8 PEM
//! files, and [`super::sealed::SealedDir`], the same bytes sealed under the key-encryption key.
//! A storage shared by replicas (sealed blobs in a database) is one more implementation; the
//! ring does not change.

use std::path::Path;

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

/// Parses a key's PKCS#8 bytes as `entry`'s algorithm and checks that its thumbprint is the
/// `kid` the manifest gives it; `shown` names where the bytes came from.
pub(super) fn parse_key(entry: &KeyEntry, der: &[u8], shown: &str) -> Result<SigningKey, KeyError> {
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
