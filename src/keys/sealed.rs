//! Sealed key storage: the keys directory with each private key sealed under the
//! key-encryption key (AES-256-GCM, [`super::kek`]) instead of a PEM file.
//!
//! Files are `KID.GEN.sealed`; the manifest (plain JSON: states and times are not secret) names
//! the generation `GEN` in use. A rewrap writes every key sealed under the new key as
//! generation `GEN + 1`, then writes the manifest — the one atomic swap — then deletes the old
//! generation: a crash before the swap leaves the old set readable, after it the new one, and
//! the stray files of the other generation are deleted at the next start. A directory of plain
//! PEM keys opened with a key-encryption key is sealed the same way, its PEM files deleted.

use std::sync::Mutex;

use super::KeyError;
use super::dir::{Contents, KeyDir, KeyEntry};
use super::kek::Kek;
use super::signing::SigningKey;
use super::storage::{KeyStorage, parse_key};

/// The keys directory, sealed.
#[derive(Debug)]
pub struct SealedDir {
    dir: KeyDir,
    sealing: Mutex<Sealing>,
}

#[derive(Debug)]
struct Sealing {
    kek: Kek,
    generation: u64,
}

fn name(kid: &str, generation: u64) -> String {
    format!("{kid}.{generation}.sealed")
}

impl SealedDir {
    /// Opens `dir` with `kek`: sealing its plain keys if it has some, and deleting files a
    /// crashed rewrap or sealing left behind.
    pub fn open(dir: KeyDir, kek: Kek) -> Result<SealedDir, KeyError> {
        let contents = dir.read_contents()?;
        let sealed = SealedDir {
            dir,
            sealing: Mutex::new(Sealing { kek, generation: 1 }),
        };
        match contents {
            None => {}
            Some(Contents { keys, sealed: None }) => {
                tracing::info!(
                    keys = keys.len(),
                    dir = %sealed.dir.path().display(),
                    "sealing the plain keys under the key-encryption key"
                );
                let plain: Vec<_> = keys
                    .iter()
                    .map(|entry| Ok((entry, sealed.dir.read_pem(&entry.kid)?)))
                    .collect::<Result<_, KeyError>>()?;
                let guard = sealed.lock()?;
                for (entry, der) in &plain {
                    // A damaged PEM file stops here, before it could be deleted.
                    let pem = sealed.dir.key_path(&entry.kid);
                    parse_key(entry, der, &pem.display().to_string())?;
                    sealed.store(&guard.kek, &entry.kid, guard.generation, der)?;
                }
                sealed.dir.write_contents(&keys, Some(guard.generation))?;
            }
            Some(Contents {
                sealed: Some(generation),
                ..
            }) => sealed.lock()?.generation = generation,
        }
        sealed.sweep()?;
        Ok(sealed)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Sealing>, KeyError> {
        self.sealing.lock().map_err(|_| KeyError::Poisoned)
    }

    /// Deletes every key file that is not of the generation in use: PEM files already sealed,
    /// and the other generation of an interrupted rewrap.
    fn sweep(&self) -> Result<(), KeyError> {
        let suffix = format!(".{}.sealed", self.lock()?.generation);
        for stray in self.dir.key_files(|name| !name.ends_with(&suffix))? {
            tracing::info!(file = %stray.display(), "deleting a key file no longer in use");
            self.dir.remove_file(&stray)?;
        }
        Ok(())
    }

    fn store(&self, kek: &Kek, kid: &str, generation: u64, der: &[u8]) -> Result<(), KeyError> {
        let path = self.dir.file(&name(kid, generation));
        let blob = kek.seal(kid, der)?;
        self.dir.write_atomic(&path, &blob)
    }

    fn load(&self, sealing: &Sealing, kid: &str) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyError> {
        let path = self.dir.file(&name(kid, sealing.generation));
        let blob = self.dir.read_file(&path)?;
        sealing
            .kek
            .open(kid, &blob)
            .map_err(|e| KeyError::Sealing(format!("{}: {e}", path.display())))
    }
}

impl KeyStorage for SealedDir {
    fn location(&self) -> String {
        format!("{} (sealed)", self.dir.path().display())
    }

    fn read_manifest(&self) -> Result<Option<Vec<KeyEntry>>, KeyError> {
        Ok(self.dir.read_contents()?.map(|c| c.keys))
    }

    fn write_manifest(&self, keys: &[KeyEntry]) -> Result<(), KeyError> {
        let generation = self.lock()?.generation;
        self.dir.write_contents(keys, Some(generation))
    }

    fn read_key(&self, entry: &KeyEntry) -> Result<SigningKey, KeyError> {
        let sealing = self.lock()?;
        let der = self.load(&sealing, &entry.kid)?;
        let shown = self.dir.file(&name(&entry.kid, sealing.generation));
        parse_key(entry, &der, &shown.display().to_string())
    }

    fn read_pkcs8(&self, entry: &KeyEntry) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyError> {
        let sealing = self.lock()?;
        self.load(&sealing, &entry.kid)
    }

    fn write_key(&self, kid: &str, der: &[u8]) -> Result<(), KeyError> {
        let sealing = self.lock()?;
        self.store(&sealing.kek, kid, sealing.generation, der)
    }

    fn remove_key(&self, kid: &str) -> Result<(), KeyError> {
        let generation = self.lock()?.generation;
        self.dir.remove_file(&self.dir.file(&name(kid, generation)))
    }

    fn rewrap(&self, keys: &[KeyEntry], new: Kek) -> Result<(), KeyError> {
        let mut sealing = self.lock()?;
        let next = sealing.generation + 1;
        // Every key opens under the current key before anything is written.
        let opened: Vec<_> = keys
            .iter()
            .map(|entry| Ok((entry, self.load(&sealing, &entry.kid)?)))
            .collect::<Result<_, KeyError>>()?;
        for (entry, der) in &opened {
            self.store(&new, &entry.kid, next, der)?;
        }
        // The swap: from here on the new generation is the one read.
        self.dir.write_contents(keys, Some(next))?;
        let old = sealing.generation;
        *sealing = Sealing {
            kek: new,
            generation: next,
        };
        for entry in keys {
            self.dir
                .remove_file(&self.dir.file(&name(&entry.kid, old)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tailpass_verify::{Alg, UnixTime};

    use super::*;
    use crate::clock::ManualClock;
    use crate::keys::{KeyRing, KeySettings};

    fn kek(byte: u8) -> Kek {
        Kek::from_bytes(&[byte; 32]).unwrap()
    }

    fn settings() -> KeySettings {
        KeySettings {
            enabled: [Alg::ES256, Alg::EdDSA].into_iter().collect(),
            retire_after: 3_600,
            rotation_interval: None,
        }
    }

    fn ring(path: &std::path::Path, kek: Option<Kek>) -> Result<KeyRing, KeyError> {
        let clock = Arc::new(ManualClock::new(UnixTime(1_000_000)));
        KeyRing::open_in(
            super::super::storage::open_dir(path, kek)?,
            settings(),
            clock,
        )
    }

    fn files(path: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn kids(ring: &KeyRing) -> Vec<String> {
        ring.list()
            .unwrap()
            .into_iter()
            .map(|k| k.entry.kid)
            .collect()
    }

    #[test]
    fn sealed_keys_are_not_in_clear_at_rest_and_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let first = kids(&ring(tmp.path(), Some(kek(1))).unwrap());
        let names = files(tmp.path());
        assert!(
            names
                .iter()
                .all(|n| n == "manifest.json" || n.ends_with(".1.sealed"))
        );
        for name in &names {
            let bytes = std::fs::read(tmp.path().join(name)).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"),
                "{name}"
            );
        }
        assert_eq!(kids(&ring(tmp.path(), Some(kek(1))).unwrap()), first);
    }

    #[test]
    fn sealed_keys_need_the_right_key_encryption_key() {
        let tmp = tempfile::tempdir().unwrap();
        ring(tmp.path(), Some(kek(1))).unwrap();
        let wrong = ring(tmp.path(), Some(kek(2))).unwrap_err();
        assert!(matches!(wrong, KeyError::Sealing(_)), "{wrong}");
        let none = ring(tmp.path(), None).unwrap_err();
        assert!(
            none.to_string().contains("--key-encryption-key-file"),
            "{none}"
        );
    }

    #[test]
    fn a_sealed_key_moved_to_another_kid_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ids = kids(&ring(tmp.path(), Some(kek(1))).unwrap());
        let (a, b) = (&ids[0], &ids[1]);
        std::fs::copy(tmp.path().join(name(b, 1)), tmp.path().join(name(a, 1))).unwrap();
        assert!(matches!(
            ring(tmp.path(), Some(kek(1))),
            Err(KeyError::Sealing(_))
        ));
    }

    #[test]
    fn plain_keys_are_sealed_when_a_key_encryption_key_is_given() {
        let tmp = tempfile::tempdir().unwrap();
        let plain = kids(&ring(tmp.path(), None).unwrap());
        assert!(files(tmp.path()).iter().any(|n| n.ends_with(".pem")));
        assert_eq!(kids(&ring(tmp.path(), Some(kek(1))).unwrap()), plain);
        assert!(files(tmp.path()).iter().all(|n| !n.ends_with(".pem")));
    }

    #[test]
    fn rewrap_reseals_every_key_under_the_new_key_encryption_key() {
        let tmp = tempfile::tempdir().unwrap();
        let ring1 = ring(tmp.path(), Some(kek(1))).unwrap();
        let before = kids(&ring1);
        ring1.rewrap(kek(2)).unwrap();
        // The running ring seals new keys under the new key too.
        ring1.rotate(Some(Alg::ES256)).unwrap();
        let after = kids(&ring1);
        drop(ring1);
        assert!(
            files(tmp.path())
                .iter()
                .all(|n| n == "manifest.json" || n.ends_with(".2.sealed"))
        );
        assert!(matches!(
            ring(tmp.path(), Some(kek(1))),
            Err(KeyError::Sealing(_))
        ));
        let reopened = ring(tmp.path(), Some(kek(2))).unwrap();
        assert_eq!(kids(&reopened), after);
        assert!(before.iter().all(|k| after.contains(k)));
    }

    #[test]
    fn rewrap_of_plain_keys_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let plain = ring(tmp.path(), None).unwrap();
        assert!(matches!(plain.rewrap(kek(2)), Err(KeyError::Sealing(_))));
    }

    #[test]
    fn a_rewrap_interrupted_before_the_swap_leaves_the_old_set_readable() {
        let tmp = tempfile::tempdir().unwrap();
        let ids = kids(&ring(tmp.path(), Some(kek(1))).unwrap());
        // The new generation half-written, the manifest not yet swapped.
        let new = kek(2);
        std::fs::write(
            tmp.path().join(name(&ids[0], 2)),
            new.seal(&ids[0], b"whatever").unwrap(),
        )
        .unwrap();
        assert_eq!(kids(&ring(tmp.path(), Some(kek(1))).unwrap()), ids);
        assert!(
            !tmp.path().join(name(&ids[0], 2)).exists(),
            "stray generation deleted"
        );
    }

    #[test]
    fn a_rewrap_interrupted_after_the_swap_leaves_the_new_set_readable() {
        let tmp = tempfile::tempdir().unwrap();
        let ring1 = ring(tmp.path(), Some(kek(1))).unwrap();
        let ids = kids(&ring1);
        // Keep a copy of the old generation, as if the deletion after the swap never ran.
        let old: Vec<_> = ids
            .iter()
            .map(|kid| (kid, std::fs::read(tmp.path().join(name(kid, 1))).unwrap()))
            .collect();
        ring1.rewrap(kek(2)).unwrap();
        drop(ring1);
        for (kid, bytes) in old {
            std::fs::write(tmp.path().join(name(kid, 1)), bytes).unwrap();
        }
        assert_eq!(kids(&ring(tmp.path(), Some(kek(2))).unwrap()), ids);
        assert!(files(tmp.path()).iter().all(|n| !n.ends_with(".1.sealed")));
    }
}
