//! The TOML configuration file (`--config`), read the same way for every command that has one
//! (`serve` and the commands sharing its state, and `gateway`): top-level keys, each the name
//! of a global option or of one of the command's options, and nothing else.

use std::path::Path;

use serde::de::DeserializeOwned;

use super::options::GlobalOptions;

/// Why the configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Occurs when the file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Occurs when the file is not valid TOML or a value is not what its key takes.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The TOML error, naming the key.
        message: String,
    },
    /// Occurs when a key is neither a global option nor one of the command's.
    #[error("{path}: unknown key `{key}`; the keys are the flags' names in snake_case")]
    UnknownKey {
        /// The file.
        path: String,
        /// The key.
        key: String,
    },
}

/// Reads the file at `path` (none: every option unset) as the global options and a command's
/// options `T`. Both read the same top-level keys, each only its own; a key that neither
/// declares is an error, so a misspelt setting is never silently ignored.
pub fn load<T: DeserializeOwned + Default>(
    path: Option<&Path>,
) -> Result<(GlobalOptions, T), FileError> {
    let Some(path) = path else {
        return Ok((GlobalOptions::default(), T::default()));
    };
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&text, &shown)
}

/// Parses a file's `text` (read from `shown`, which errors name) as the global options and a
/// command's options `T`, refusing a key that neither declares. [`load`] without the reading.
pub fn parse<T: DeserializeOwned>(
    text: &str,
    shown: &str,
) -> Result<(GlobalOptions, T), FileError> {
    let parse = |e: toml::de::Error| FileError::Parse {
        path: shown.to_owned(),
        message: e.to_string(),
    };
    let table: toml::Table = toml::from_str(text).map_err(parse)?;
    let (global_keys, command_keys) = (keys_of::<GlobalOptions>(), keys_of::<T>());
    if let Some(key) = table
        .keys()
        .find(|key| !global_keys.contains(&key.as_str()) && !command_keys.contains(&key.as_str()))
    {
        return Err(FileError::UnknownKey {
            path: shown.to_owned(),
            key: key.clone(),
        });
    }
    Ok((
        toml::from_str(text).map_err(parse)?,
        toml::from_str(text).map_err(parse)?,
    ))
}

/// The keys a struct deserialized by serde's derive reads (its field names after renaming,
/// skipped fields left out), learnt by asking it to deserialize itself from a probe that
/// records them.
pub fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut keys: &'static [&'static str] = &[];
    let _ = T::deserialize(KeyProbe(&mut keys));
    keys
}

/// A deserializer that only records the field names a struct asks for.
struct KeyProbe<'a>(&'a mut &'static [&'static str]);

/// The probe's only answer: nothing to deserialize.
#[derive(Debug)]
struct Probed;

impl std::fmt::Display for Probed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("probed")
    }
}

impl std::error::Error for Probed {}

impl serde::de::Error for Probed {
    fn custom<M: std::fmt::Display>(_: M) -> Probed {
        Probed
    }
}

impl<'de> serde::Deserializer<'de> for KeyProbe<'_> {
    type Error = Probed;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Probed> {
        Err(Probed)
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Probed> {
        *self.0 = fields;
        Err(Probed)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::options::ServeOptions;

    fn load_text(text: &str) -> Result<(GlobalOptions, ServeOptions), FileError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tailpass.toml");
        std::fs::write(&path, text).unwrap();
        load(Some(&path))
    }

    #[test]
    fn keys_are_the_field_names_without_skipped_ones() {
        assert_eq!(
            keys_of::<GlobalOptions>(),
            [
                "state_dir",
                "keys_dir",
                "key_encryption_key_file",
                "store",
                "store_ca_file",
                "store_pool_size",
                "dev"
            ]
        );
        assert!(keys_of::<ServeOptions>().contains(&"enable_alg"));
    }

    #[test]
    fn each_section_reads_its_own_keys() {
        let (global, serve) = load_text("dev = true\nlisten = \"127.0.0.1:1\"\n").unwrap();
        assert!(global.dev);
        assert_eq!(serve.listen, Some("127.0.0.1:1".parse().unwrap()));
    }

    #[test]
    fn refusals_name_the_file_and_the_key() {
        for (text, needle) in [
            ("listne = 1", "unknown key `listne`"),
            ("config = \"other.toml\"", "unknown key `config`"),
            ("token_lifetime = \"1w\"", "token_lifetime"),
            ("dev = 3", "dev"),
            ("listen = ", "tailpass.toml"),
        ] {
            let err = load_text(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
            assert!(err.contains("tailpass.toml"), "{text}: {err}");
        }
        let err = load::<ServeOptions>(Some(Path::new("/nonexistent/tailpass.toml"))).unwrap_err();
        assert!(matches!(err, FileError::Read { .. }), "{err}");
    }
}
