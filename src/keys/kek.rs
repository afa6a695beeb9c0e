//! The key-encryption key (docs/design.md "Contracts": key storage): 32 random bytes, written
//! base64 on one line as `openssl rand -base64 32` writes them, in a file only its owner may
//! read. Private signing keys at rest are sealed under it with AES-256-GCM.
//!
//! A sealed blob is `MAGIC ‖ nonce ‖ ciphertext ‖ tag`: a fresh random 96-bit nonce per seal,
//! kept beside the ciphertext, and the key's `kid` as associated data, so a blob copied under
//! another `kid` does not open. Errors name the file, never the key.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};
use zeroize::Zeroizing;

/// The key's length: AES-256.
pub const KEK_LEN: usize = 32;
/// The first bytes of every sealed blob: the format, so that a later one can be told apart.
const MAGIC: &[u8; 4] = b"TPS1";
/// What the associated data starts with, before the `kid`: the purpose of the blob.
const AAD_PREFIX: &[u8] = b"tailpass signing key\0";
/// The same for a shared HMAC secret, before its name: a secret never opens as a key.
const SECRET_PREFIX: &[u8] = b"tailpass shared secret\0";

/// Why a key-encryption key could not be read, or a blob not sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    /// Occurs when the file cannot be read.
    #[error("key-encryption key {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Occurs when the file may be read by its group or by others.
    #[error(
        "key-encryption key {path} has mode {mode:o}; it must be readable by its owner only \
         (chmod 600)"
    )]
    Mode {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// Occurs when the file is not one line of base64 holding exactly 32 bytes.
    #[error(
        "key-encryption key {path} must be one line of base64 holding {KEK_LEN} bytes, as \
         `tailpass keys new-kek` or `openssl rand -base64 32` writes it: {reason}"
    )]
    Format {
        /// The file.
        path: String,
        /// What is wrong (never the content).
        reason: &'static str,
    },
    /// Occurs when the system random source fails.
    #[error("the system random source failed")]
    Random,
    /// Occurs when a blob does not open: another key-encryption key sealed it, it was changed,
    /// or it belongs to another key.
    #[error(
        "does not open under this key-encryption key (another key sealed it, or it was altered or moved)"
    )]
    Open,
}

/// A key-encryption key, ready to seal and open.
pub struct Kek {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    /// A key from its 32 bytes (`None` only if ring refuses them, which AES-256 never does).
    pub fn from_bytes(bytes: &[u8; KEK_LEN]) -> Option<Kek> {
        let key = UnboundKey::new(&AES_256_GCM, bytes).ok()?;
        Some(Kek {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        })
    }

    /// Reads the key from `path`: refused if others may read it or its group may write it, or
    /// if it is not one line of base64 holding exactly 32 bytes. Group read is allowed because
    /// that is how Kubernetes mounts a Secret for a pod's `fsGroup` (0440); 0600 elsewhere.
    pub fn read(path: &Path) -> Result<Kek, KekError> {
        let shown = || path.display().to_string();
        let io = |source| KekError::Io {
            path: shown(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o037 != 0 {
            return Err(KekError::Mode {
                path: shown(),
                mode,
            });
        }
        let text = Zeroizing::new(std::fs::read(path).map_err(io)?);
        let format = |reason| KekError::Format {
            path: shown(),
            reason,
        };
        let line = text.strip_suffix(b"\n").unwrap_or(&text);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.contains(&b'\n') {
            return Err(format("more than one line"));
        }
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(line)
                .map_err(|_| format("not base64"))?,
        );
        let bytes: &[u8; KEK_LEN] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| format("wrong length"))?;
        Kek::from_bytes(bytes).ok_or_else(|| format("not an AES-256 key"))
    }

    /// A new key, as the line its file holds (base64 of 32 bytes from the system RNG).
    pub fn generate_line() -> Result<Zeroizing<String>, KekError> {
        let mut bytes = Zeroizing::new([0u8; KEK_LEN]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| KekError::Random)?;
        Ok(Zeroizing::new(
            base64::engine::general_purpose::STANDARD.encode(bytes.as_ref()),
        ))
    }

    /// Seals `plaintext`, the private key `kid`, into a blob only this key opens, and only as
    /// `kid`.
    pub fn seal(&self, kid: &str, plaintext: &[u8]) -> Result<Vec<u8>, KekError> {
        self.seal_with(aad(AAD_PREFIX, kid), plaintext)
    }

    /// Opens a blob [`Kek::seal`] made for `kid`.
    pub fn open(&self, kid: &str, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KekError> {
        self.open_with(aad(AAD_PREFIX, kid), blob)
    }

    /// Seals the shared secret `name` (an HMAC key replicas share), which opens only as that
    /// secret, never as a signing key.
    pub fn seal_secret(&self, name: &str, plaintext: &[u8]) -> Result<Vec<u8>, KekError> {
        self.seal_with(aad(SECRET_PREFIX, name), plaintext)
    }

    /// Opens a blob [`Kek::seal_secret`] made for `name`.
    pub fn open_secret(&self, name: &str, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KekError> {
        self.open_with(aad(SECRET_PREFIX, name), blob)
    }

    fn seal_with(&self, aad: Vec<u8>, plaintext: &[u8]) -> Result<Vec<u8>, KekError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| KekError::Random)?;
        let mut sealed = Zeroizing::new(plaintext.to_vec());
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut *sealed,
            )
            .map_err(|_| KekError::Random)?;
        let mut blob = Vec::with_capacity(MAGIC.len() + NONCE_LEN + sealed.len());
        blob.extend_from_slice(MAGIC);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        Ok(blob)
    }

    fn open_with(&self, aad: Vec<u8>, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KekError> {
        let rest = blob.strip_prefix(MAGIC.as_slice()).ok_or(KekError::Open)?;
        if rest.len() < NONCE_LEN {
            return Err(KekError::Open);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| KekError::Open)?;
        let mut buffer = Zeroizing::new(ciphertext.to_vec());
        let len = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut buffer)
            .map_err(|_| KekError::Open)?
            .len();
        buffer.truncate(len);
        Ok(buffer)
    }
}

fn aad(prefix: &[u8], name: &str) -> Vec<u8> {
    [prefix, name.as_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn write(dir: &Path, name: &str, content: &[u8], mode: u32) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn fresh(dir: &Path, name: &str) -> Kek {
        let line = Kek::generate_line().unwrap();
        Kek::read(&write(dir, name, format!("{}\n", *line).as_bytes(), 0o600)).unwrap()
    }

    #[test]
    fn a_blob_round_trips_under_its_key_and_kid() {
        let tmp = tempfile::tempdir().unwrap();
        let kek = fresh(tmp.path(), "kek");
        let blob = kek.seal("kid-1", b"private bytes").unwrap();
        assert!(!blob.windows(13).any(|w| w == b"private bytes"));
        assert_eq!(
            kek.open("kid-1", &blob).unwrap().as_slice(),
            b"private bytes"
        );
        // A fresh nonce per seal: the same bytes never seal the same way twice.
        assert_ne!(kek.seal("kid-1", b"private bytes").unwrap(), blob);
    }

    #[test]
    fn another_key_does_not_open_a_blob() {
        let tmp = tempfile::tempdir().unwrap();
        let blob = fresh(tmp.path(), "a").seal("kid-1", b"secret").unwrap();
        assert!(matches!(
            fresh(tmp.path(), "b").open("kid-1", &blob),
            Err(KekError::Open)
        ));
    }

    #[test]
    fn a_tampered_blob_does_not_open() {
        let tmp = tempfile::tempdir().unwrap();
        let kek = fresh(tmp.path(), "kek");
        let blob = kek.seal("kid-1", b"secret").unwrap();
        for i in 0..blob.len() {
            let mut tampered = blob.clone();
            tampered[i] ^= 1;
            assert!(kek.open("kid-1", &tampered).is_err(), "byte {i}");
        }
        assert!(kek.open("kid-1", &blob[..blob.len() - 1]).is_err());
        assert!(kek.open("kid-1", &blob[..8]).is_err());
    }

    #[test]
    fn a_secret_never_opens_as_a_key_nor_a_key_as_a_secret() {
        let tmp = tempfile::tempdir().unwrap();
        let kek = fresh(tmp.path(), "kek");
        let secret = kek.seal_secret("consent", b"hmac").unwrap();
        assert_eq!(
            kek.open_secret("consent", &secret).unwrap().as_slice(),
            b"hmac"
        );
        assert!(kek.open("consent", &secret).is_err());
        assert!(kek.open_secret("dpop", &secret).is_err());
        let key = kek.seal("consent", b"key").unwrap();
        assert!(kek.open_secret("consent", &key).is_err());
    }

    #[test]
    fn a_blob_moved_to_another_kid_does_not_open() {
        let tmp = tempfile::tempdir().unwrap();
        let kek = fresh(tmp.path(), "kek");
        let blob = kek.seal("kid-1", b"secret").unwrap();
        assert!(matches!(kek.open("kid-2", &blob), Err(KekError::Open)));
    }

    #[test]
    fn a_file_others_may_read_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let line = Kek::generate_line().unwrap();
        for mode in [0o604, 0o644, 0o660, 0o606] {
            let path = write(tmp.path(), "kek", line.as_bytes(), mode);
            let err = Kek::read(&path).unwrap_err();
            assert!(matches!(err, KekError::Mode { .. }), "{mode:o}: {err}");
            assert!(err.to_string().contains(&path.display().to_string()));
        }
        let path = write(tmp.path(), "kek", line.as_bytes(), 0o400);
        assert!(Kek::read(&path).is_ok(), "stricter than 0600 is fine");
        for mode in [0o440, 0o640] {
            let path = write(tmp.path(), "kek", line.as_bytes(), mode);
            assert!(
                Kek::read(&path).is_ok(),
                "{mode:o}: a Secret mounted for the pod's group"
            );
        }
    }

    #[test]
    fn bad_lengths_and_formats_are_refused_without_showing_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
        let line = b64(32);
        for content in [
            b64(31),
            b64(33),
            b64(16),
            String::new(),
            "not base64!".to_owned(),
            format!("{line}\n{line}\n"),
            format!("{line} extra"),
        ] {
            let path = write(tmp.path(), "kek", content.as_bytes(), 0o600);
            let err = Kek::read(&path).unwrap_err();
            assert!(matches!(err, KekError::Format { .. }), "{content:?}: {err}");
            assert!(err.to_string().contains(&path.display().to_string()));
            assert!(!err.to_string().contains(&line));
        }
        let missing = Kek::read(&tmp.path().join("missing")).unwrap_err();
        assert!(matches!(missing, KekError::Io { .. }));
        // `openssl rand -base64 32` ends its line with a newline; so may a Windows editor.
        for ending in ["", "\n", "\r\n"] {
            let path = write(
                tmp.path(),
                "kek",
                format!("{line}{ending}").as_bytes(),
                0o600,
            );
            assert!(Kek::read(&path).is_ok(), "{ending:?}");
        }
    }

    #[test]
    fn generated_lines_are_32_random_bytes() {
        let a = Kek::generate_line().unwrap();
        let b = Kek::generate_line().unwrap();
        assert_ne!(*a, *b);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a.as_bytes())
            .unwrap();
        assert_eq!(decoded.len(), KEK_LEN);
        assert!(!a.contains('\n'));
    }
}
