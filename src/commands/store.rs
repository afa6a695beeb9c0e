//! `tailpass store backup` and `store migrate`: copies of the durable state.
//!
//! The commands take flags only (one-shot commands): the stores are named by `--from` and
//! `--to`, never by the environment or a configuration file.

use crate::cli::StoreAction;
use std::path::PathBuf;

use crate::store::sqlite::SqliteStore;
use crate::store::{Snapshot, StoreLocation, StoreSettings, StoreUrl};

use super::{CommandError, fail};

/// Runs a `tailpass store` action, its progress on standard error.
pub async fn store(action: StoreAction) -> Result<(), CommandError> {
    match action {
        StoreAction::Backup { from, file } => match from.parse().map_err(fail)? {
            StoreLocation::Sqlite(path) => {
                let pages = SqliteStore::backup(&path, &file).await.map_err(fail)?;
                eprintln!(
                    "copied {pages} pages of {} to {}",
                    path.display(),
                    file.display()
                );
                Ok(())
            }
            StoreLocation::Postgres(_) => backup_postgres(&from, &file).await,
        },
        StoreAction::Migrate {
            from,
            to,
            store_ca_file,
        } => migrate(&from, &to, store_ca_file).await,
    }
}

/// Copies the PostgreSQL store `from` (one consistent read) into a new SQLite `file`
/// (created with mode 0600, refused if it exists), which `store migrate --from sqlite:FILE`
/// restores.
async fn backup_postgres(from: &StoreUrl, file: &std::path::Path) -> Result<(), CommandError> {
    let source = open(from, None).await?;
    // Created here, never over an existing file; SQLite then takes the empty file as new.
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(file)
            .map_err(|e| CommandError(format!("cannot create {}: {e}", file.display())))?;
    }
    let target = SqliteStore::open(file).await.map_err(fail)?;
    let snapshot = source.export().await.map_err(fail)?;
    report("read", &snapshot);
    crate::store::Store::import(&target, &snapshot)
        .await
        .map_err(fail)?;
    let copy = crate::store::Store::export(&target).await.map_err(fail)?;
    verify(&snapshot, &copy)?;
    eprintln!("copied the store to {}", file.display());
    Ok(())
}

/// Connections a copy keeps to PostgreSQL: one read or write at a time.
const POOL: usize = 2;

/// Copies the store `from` into the empty store `to`, then reads `to` back and compares.
async fn migrate(
    from: &StoreUrl,
    to: &StoreUrl,
    ca_file: Option<PathBuf>,
) -> Result<(), CommandError> {
    let source = open(from, ca_file.clone()).await?;
    let target = open(to, ca_file).await?;
    eprintln!("reading the source store (one consistent read)");
    let snapshot = source.export().await.map_err(fail)?;
    report("read", &snapshot);
    eprintln!("writing the target store (one transaction)");
    target.import(&snapshot).await.map_err(fail)?;
    let copy = target.export().await.map_err(fail)?;
    verify(&snapshot, &copy)?;
    report("verified", &copy);
    eprintln!(
        "done; DPoP proofs and rate counts are not copied (they matter for minutes); signing \
         keys kept in files (a keys directory) are not in the store and stay files: on \
         PostgreSQL the server imports its keys directory into the database at its first start"
    );
    Ok(())
}

/// Opens the store `url` names (migrated at open).
async fn open(
    url: &StoreUrl,
    ca_file: Option<PathBuf>,
) -> Result<std::sync::Arc<dyn crate::store::Store>, CommandError> {
    let settings = StoreSettings {
        location: url.parse().map_err(fail)?,
        ca_file,
        pool_size: POOL,
    };
    crate::store::open(&settings).await.map_err(fail)
}

/// Prints each table's rows.
fn report(what: &str, s: &Snapshot) {
    for (table, rows) in s.counts() {
        eprintln!("{what} {rows} {table}");
    }
}

/// Fails unless the copy read back is the snapshot, saying which tables differ.
fn verify(snapshot: &Snapshot, copy: &Snapshot) -> Result<(), CommandError> {
    if snapshot == copy {
        return Ok(());
    }
    let differ: Vec<String> = snapshot
        .counts()
        .iter()
        .zip(copy.counts())
        .map(|((table, want), (_, got))| format!("{table}: {want} read, {got} written"))
        .collect();
    Err(CommandError(format!(
        "the copy read back differs from the source: {}",
        differ.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> StoreUrl {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn migrate_copies_a_store_and_refuses_a_non_empty_target() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
        let source = SqliteStore::open(&a).await.unwrap();
        crate::store::tests::populate(&source).await;
        let (from, to) = (
            url(&format!("sqlite:{}", a.display())),
            url(&format!("sqlite:{}", b.display())),
        );
        migrate(&from, &to, None).await.unwrap();
        let copy = SqliteStore::open(&b).await.unwrap();
        use crate::store::Store as _;
        assert_eq!(copy.export().await.unwrap(), source.export().await.unwrap());
        assert!(migrate(&from, &to, None).await.is_err());
    }

    #[tokio::test]
    async fn migrate_moves_a_sqlite_store_to_postgres() {
        let Some(db) = crate::store::postgres::tests::TestDb::create().await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.db");
        let source = SqliteStore::open(&a).await.unwrap();
        crate::store::tests::populate(&source).await;
        migrate(
            &url(&format!("sqlite:{}", a.display())),
            &url(&db.url()),
            None,
        )
        .await
        .unwrap();
        use crate::store::Store as _;
        assert_eq!(
            db.store.export().await.unwrap(),
            source.export().await.unwrap()
        );
        db.drop().await;
    }

    #[tokio::test]
    async fn a_postgres_backup_restores_with_migrate() {
        let Some(db) = crate::store::postgres::tests::TestDb::create().await else {
            return;
        };
        use crate::store::Store as _;
        crate::store::tests::populate(&db.store).await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("backup.db");
        let from = url(&db.url());
        store(StoreAction::Backup {
            from: from.clone(),
            file: file.clone(),
        })
        .await
        .unwrap();
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Never over an existing file.
        assert!(
            store(StoreAction::Backup {
                from,
                file: file.clone()
            })
            .await
            .is_err()
        );
        let Some(restored) = crate::store::postgres::tests::TestDb::create().await else {
            return;
        };
        migrate(
            &url(&format!("sqlite:{}", file.display())),
            &url(&restored.url()),
            None,
        )
        .await
        .unwrap();
        assert_eq!(
            restored.store.export().await.unwrap(),
            db.store.export().await.unwrap()
        );
        restored.drop().await;
        db.drop().await;
    }
}
