//! `tailpass store backup`: an online copy of the durable state.
//!
//! The command takes flags only (a one-shot command): the store it copies is named by
//! `--from`, never by the environment or a configuration file.

use crate::cli::StoreAction;
use crate::store::StoreLocation;
use crate::store::sqlite::SqliteStore;

use super::{CommandError, fail};

/// Runs a `tailpass store` action, its progress on standard error.
pub async fn store(action: StoreAction) -> Result<(), CommandError> {
    match action {
        StoreAction::Backup { from, file } => match from.parse().map_err(fail)? {
            StoreLocation::Sqlite(path) => {
                let pages = SqliteStore::backup(&path, &file).await.map_err(fail)?;
                eprintln!("copied {pages} pages of {} to {}", path.display(), file.display());
                Ok(())
            }
            StoreLocation::Postgres(_) => Err(CommandError(
                "tailpass store backup copies a SQLite store; a PostgreSQL store is backed up with the database's own tools (pg_dump)".into(),
            )),
        },
    }
}
