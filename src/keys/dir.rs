//! The keys directory on disk: a manifest saying which key is next, active or retired, and
//! one file per key (mode 0600), in a directory of mode 0700. [`KeyDir`] itself is the plain
//! [`KeyStorage`]: each key a PKCS#8 PEM file; `super::sealed` keeps sealed files in the same
//! directory through the helpers here.
//!
//! Files are written to a temporary name and renamed, so a crash never leaves a half-written
//! key or manifest. A file that is unreadable, does not parse, or whose public key does not
//! match the `kid` the manifest gives it stops start-up: it is never replaced, because
//! replacing a key silently breaks every relying party that cached it.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tailpass_verify::{Alg, UnixTime};
use zeroize::Zeroizing;

use super::KeyError;
use super::signing::SigningKey;
use super::storage::{KeyStorage, parse_key};

const MANIFEST: &str = "manifest.json";
const MANIFEST_VERSION: u32 = 1;
const PEM_LABEL: &str = "PRIVATE KEY";

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Published in the JWKS, not yet signing: relying parties learn it before they meet it.
    Next,
    /// Signing new tokens.
    Active,
    /// No longer signing; published until every token it signed has expired.
    Retired,
}

impl KeyState {
    /// The name in the manifest and in metrics (the serialized form).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Next => "next",
            KeyState::Active => "active",
            KeyState::Retired => "retired",
        }
    }
}

/// One key's line in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    /// The RFC 7638 thumbprint, also the file's stem.
    pub kid: String,
    /// The key's algorithm.
    pub alg: Alg,
    /// Its state.
    pub state: KeyState,
    /// When it was generated (and first published).
    pub created_at: UnixTime,
    /// When it started signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_at: Option<UnixTime>,
    /// When it stopped signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<UnixTime>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    version: u32,
    keys: Vec<KeyEntry>,
    /// For sealed keys, the generation of the files that hold them (`KID.GEN.sealed`); absent
    /// for plain PEM files. Bumped by a rewrap: writing the manifest is the swap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<u64>,
}

/// What the manifest says: the keys, and whether (in which generation) they are sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Contents {
    /// The keys.
    pub keys: Vec<KeyEntry>,
    /// The generation of sealed files, `None` for PEM files.
    pub sealed: Option<u64>,
}

/// A keys directory.
#[derive(Debug)]
pub struct KeyDir {
    path: PathBuf,
}

fn io_error(path: &Path, source: std::io::Error) -> KeyError {
    KeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl KeyDir {
    /// Opens `path`, creating it with mode 0700 if missing and tightening it to 0700 if wider.
    pub fn open(path: &Path) -> Result<KeyDir, KeyError> {
        crate::private_fs::ensure_dir(path).map_err(|e| io_error(path, e))?;
        Ok(KeyDir {
            path: path.to_owned(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The plain PEM file of a key.
    pub(super) fn key_path(&self, kid: &str) -> PathBuf {
        self.path.join(format!("{kid}.pem"))
    }

    /// What the manifest says, or `None` for a directory that has never held keys. Key files
    /// without a manifest are an error: which of them is active cannot be guessed.
    pub(super) fn read_contents(&self) -> Result<Option<Contents>, KeyError> {
        let manifest = self.path.join(MANIFEST);
        let text = match fs::read_to_string(&manifest) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(stray) = self.key_files(|_| true)?.first() {
                    return Err(KeyError::Corrupt {
                        path: stray.display().to_string(),
                        reason: format!("key file present but {MANIFEST} is missing"),
                    });
                }
                return Ok(None);
            }
            Err(e) => return Err(io_error(&manifest, e)),
        };
        let parsed: Manifest = serde_json::from_str(&text).map_err(|e| KeyError::Corrupt {
            path: manifest.display().to_string(),
            reason: e.to_string(),
        })?;
        if parsed.version != MANIFEST_VERSION {
            return Err(KeyError::Corrupt {
                path: manifest.display().to_string(),
                reason: format!("unsupported manifest version {}", parsed.version),
            });
        }
        Ok(Some(Contents {
            keys: parsed.keys,
            sealed: parsed.sealed,
        }))
    }

    /// Replaces the manifest atomically.
    pub(super) fn write_contents(
        &self,
        keys: &[KeyEntry],
        sealed: Option<u64>,
    ) -> Result<(), KeyError> {
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            keys: keys.to_vec(),
            sealed,
        };
        let mut text = serde_json::to_vec_pretty(&manifest).map_err(|e| KeyError::Corrupt {
            path: self.path.join(MANIFEST).display().to_string(),
            reason: e.to_string(),
        })?;
        text.push(b'\n');
        self.write_atomic(&self.path.join(MANIFEST), &text)
    }

    /// The path of a key's file named `name` in this directory.
    pub(super) fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Reads a key's file, narrowing its mode to 0600 first.
    pub(super) fn read_file(&self, path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        crate::private_fs::tighten(path, 0o600).map_err(|e| io_error(path, e))?;
        Ok(Zeroizing::new(
            fs::read(path).map_err(|e| io_error(path, e))?,
        ))
    }

    /// Deletes a file; one already gone is fine.
    pub(super) fn remove_file(&self, path: &Path) -> Result<(), KeyError> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(path, e)),
        }
    }

    /// The key files (`.pem` or `.sealed`) whose name `keep` accepts.
    pub(super) fn key_files(&self, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>, KeyError> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.path).map_err(|e| io_error(&self.path, e))? {
            let entry = entry.map_err(|e| io_error(&self.path, e))?;
            let path = entry.path();
            let is_key = path
                .extension()
                .is_some_and(|ext| ext == "pem" || ext == "sealed");
            if is_key && path.file_name().and_then(|n| n.to_str()).is_some_and(&keep) {
                found.push(path);
            }
        }
        Ok(found)
    }

    /// Reads the plain PEM file of a key, as PKCS#8 DER.
    pub(super) fn read_pem(&self, kid: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let path = self.key_path(kid);
        let pem = self.read_file(&path)?;
        let corrupt = |reason: String| KeyError::Corrupt {
            path: path.display().to_string(),
            reason,
        };
        let (label, der) = pem_rfc7468::decode_vec(&pem).map_err(|e| corrupt(e.to_string()))?;
        let der = Zeroizing::new(der);
        if label != PEM_LABEL {
            return Err(corrupt(format!(
                "expected a {PEM_LABEL} PEM, found {label}"
            )));
        }
        Ok(der)
    }

    /// Deletes a key's plain PEM file.
    pub(super) fn remove_pem(&self, kid: &str) -> Result<(), KeyError> {
        self.remove_file(&self.key_path(kid))
    }

    /// Writes `bytes` to `path` (mode 0600) through a temporary file and a rename, durably.
    pub(super) fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
        let tmp = path.with_extension("tmp");
        // A leftover temporary file from a crash is garbage; create_new below must not fail on it.
        let _ = fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_error(&tmp, e))?;
        file.write_all(bytes).map_err(|e| io_error(&tmp, e))?;
        file.sync_all().map_err(|e| io_error(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| io_error(path, e))?;
        // Make the rename itself durable.
        if let Ok(dir) = fs::File::open(&self.path) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

/// Plain storage: each key a PKCS#8 PEM file, readable by whoever can read the directory.
impl KeyStorage for KeyDir {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn read_manifest(&self) -> Result<Option<Vec<KeyEntry>>, KeyError> {
        match self.read_contents()? {
            Some(Contents {
                sealed: Some(_), ..
            }) => Err(KeyError::Sealing(format!(
                "the keys in {} are sealed under a key-encryption key; give \
                 --key-encryption-key-file",
                self.path.display()
            ))),
            other => Ok(other.map(|c| c.keys)),
        }
    }

    fn write_manifest(&self, keys: &[KeyEntry]) -> Result<(), KeyError> {
        self.write_contents(keys, None)
    }

    fn read_pkcs8(&self, entry: &KeyEntry) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        self.read_pem(&entry.kid)
    }

    fn read_key(&self, entry: &KeyEntry) -> Result<SigningKey, KeyError> {
        let der = self.read_pem(&entry.kid)?;
        parse_key(
            entry,
            &der,
            &self.key_path(&entry.kid).display().to_string(),
        )
    }

    fn write_key(&self, kid: &str, der: &[u8]) -> Result<(), KeyError> {
        let path = self.key_path(kid);
        let pem = pem_rfc7468::encode_string(PEM_LABEL, pem_rfc7468::LineEnding::LF, der).map_err(
            |e| KeyError::Corrupt {
                path: path.display().to_string(),
                reason: e.to_string(),
            },
        )?;
        let pem = Zeroizing::new(pem);
        self.write_atomic(&path, pem.as_bytes())
    }

    fn remove_key(&self, kid: &str) -> Result<(), KeyError> {
        self.remove_pem(kid)
    }
}

#[cfg(test)]
mod state_names {
    use super::KeyState;

    #[test]
    fn names_are_the_serialized_forms() {
        for state in [KeyState::Next, KeyState::Active, KeyState::Retired] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
    }
}
