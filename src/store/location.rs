//! Where the durable state lives: `--store sqlite:PATH | postgres://…`, and the pool's
//! settings.
//!
//! The setting is kept as given ([`StoreUrl`]) until it is resolved: a `postgres://` URL may
//! carry a password, so the raw text is never shown — not in `Debug`, not in an error, not by
//! the command line's own messages (parsing the flag cannot fail, so clap never echoes it).

use std::path::PathBuf;

use super::postgres::PostgresTarget;

/// The `--store` setting as given, unparsed. Its `Debug` shows the backend only.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl(String);

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.parse() {
            Ok(location) => write!(f, "StoreUrl({location})"),
            Err(_) => f.write_str("StoreUrl(<invalid>)"),
        }
    }
}

impl std::str::FromStr for StoreUrl {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<StoreUrl, Self::Err> {
        Ok(StoreUrl(s.to_owned()))
    }
}

impl<'de> serde::Deserialize<'de> for StoreUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<StoreUrl, D::Error> {
        String::deserialize(d).map(StoreUrl)
    }
}

/// Why `--store` was refused. The message never repeats the setting.
#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    /// Occurs when the scheme is neither `sqlite:` nor `postgres://`.
    #[error("--store must be sqlite:PATH or postgres://USER@HOST/DATABASE?sslmode=…")]
    Scheme,
    /// Occurs when `sqlite:` names no path.
    #[error("--store sqlite: needs a path (sqlite:/var/lib/tailpass/tailpass.db)")]
    NoPath,
    /// Occurs when the PostgreSQL URL does not parse.
    #[error("--store: not a valid PostgreSQL URL: {0}")]
    Postgres(String),
}

impl StoreUrl {
    /// The backend and its address.
    pub fn parse(&self) -> Result<StoreLocation, LocationError> {
        let text = self.0.trim();
        if let Some(path) = text.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(LocationError::NoPath);
            }
            return Ok(StoreLocation::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return PostgresTarget::parse(text).map(|t| StoreLocation::Postgres(Box::new(t)));
        }
        Err(LocationError::Scheme)
    }
}

/// Where the durable state lives, parsed. `Display` and `Debug` never show a password.
#[derive(Debug, Clone)]
pub enum StoreLocation {
    /// One SQLite file (the default: `tailpass.db` in the state directory).
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by replicas.
    Postgres(Box<PostgresTarget>),
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            StoreLocation::Postgres(target) => target.fmt(f),
        }
    }
}

/// The store's resolved settings.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// Which backend, where.
    pub location: StoreLocation,
    /// PEM roots that replace the system's when verifying the database's certificate
    /// (`sslmode=require`).
    pub ca_file: Option<PathBuf>,
    /// Most connections one process keeps to PostgreSQL.
    pub pool_size: usize,
}

/// The default pool size: enough for a busy replica's writers and readers, small enough that
/// a dozen replicas stay within PostgreSQL's default `max_connections` of 100… with room.
pub const DEFAULT_POOL_SIZE: usize = 16;

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(s: &str) -> Result<StoreLocation, LocationError> {
        s.parse::<StoreUrl>().unwrap().parse()
    }

    #[test]
    fn sqlite_and_postgres_locations_parse() {
        assert!(
            matches!(parse("sqlite:/tmp/x.db"), Ok(StoreLocation::Sqlite(p)) if p == Path::new("/tmp/x.db"))
        );
        assert!(
            matches!(parse("sqlite:rel.db"), Ok(StoreLocation::Sqlite(p)) if p == Path::new("rel.db"))
        );
        assert!(matches!(parse("sqlite:"), Err(LocationError::NoPath)));
        assert!(matches!(parse("mysql://x"), Err(LocationError::Scheme)));
        for mode in ["disable", "prefer", "require"] {
            let url = format!("postgres://u:pw@db.example:5433/tp?sslmode={mode}");
            assert!(
                matches!(parse(&url), Ok(StoreLocation::Postgres(_))),
                "{mode}"
            );
        }
        assert!(matches!(
            parse("postgres://u@h/d?sslmode=sometimes"),
            Err(LocationError::Postgres(_))
        ));
    }

    #[test]
    fn a_password_is_never_shown() {
        let url: StoreUrl = "postgres://tailpass:hunter2@db.example:5433/tp?sslmode=require"
            .parse()
            .unwrap();
        let location = url.parse().unwrap();
        for shown in [
            format!("{url:?}"),
            format!("{location}"),
            format!("{location:?}"),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("db.example"), "{shown}");
        }
        let bad: StoreUrl = "postgres://u:hunter2@h/d?sslmode=sometimes"
            .parse()
            .unwrap();
        let error = bad.parse().unwrap_err().to_string();
        assert!(!error.contains("hunter2"), "{error}");
        assert!(!format!("{bad:?}").contains("hunter2"));
    }
}
