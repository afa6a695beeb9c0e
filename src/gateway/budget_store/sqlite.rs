//! The budgets in a SQLite file of the gateway's own (by default
//! `STATE_DIR/gateway-budgets.sqlite`): one table, created at open, marked as the gateway's by
//! `PRAGMA application_id` so that a file of something else (the issuer's `tailpass.db`, say)
//! is refused rather than written into. WAL with `synchronous = FULL`: a flush that returned
//! survives power loss, at one sync a second. One gateway per file: there is no read-back of
//! other writers.
//!
//! The file is created 0600 (its WAL and shared-memory files take its mode), its directory
//! 0700 when the gateway creates it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};
use tailpass_verify::UnixTime;

use super::BudgetStore;
use crate::gateway::quota::{Delta, Total};
use crate::store::StoreError;

/// `PRAGMA application_id` of a gateway budget file ("tpgb").
const APPLICATION_ID: i64 = 0x7470_6762;
/// The schema's version (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;
/// How long a statement waits for a lock before the flush fails (and is retried next time).
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

const SCHEMA: &str = "CREATE TABLE gateway_budgets (\
        root_run   TEXT PRIMARY KEY, \
        requests   INTEGER NOT NULL, \
        tokens     INTEGER NOT NULL, \
        expires_at INTEGER NOT NULL\
    ) STRICT; \
    CREATE INDEX gateway_budgets_expires_at ON gateway_budgets (expires_at);";

/// Budgets in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteBudgets {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn uint(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn total(row: &rusqlite::Row<'_>) -> rusqlite::Result<Total> {
    Ok(Total {
        run: row.get(0)?,
        requests: uint(row.get(1)?),
        tokens: uint(row.get(2)?),
        expires: UnixTime(uint(row.get(3)?)),
    })
}

/// Creates `path` 0600 (and its directory 0700 when missing), narrowing a wider file.
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        crate::private_fs::ensure_dir(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    crate::private_fs::tighten(path, 0o600)
}

/// Opens the connection, creating the schema in a new file and refusing a foreign one.
fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(backend)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
        .map_err(backend)?;
    let read = |pragma: &str| -> Result<i64, StoreError> {
        conn.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))
            .map_err(backend)
    };
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(backend)?;
    match (read("application_id")?, read("user_version")?) {
        (0, 0) if tables == 0 => conn
            .execute_batch(&format!(
                "BEGIN; {SCHEMA} PRAGMA application_id = {APPLICATION_ID}; \
                 PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(backend)?,
        (APPLICATION_ID, SCHEMA_VERSION) => {}
        (APPLICATION_ID, version) => {
            return Err(StoreError::Corrupt(format!(
                "{}: budget schema version {version}, this gateway knows {SCHEMA_VERSION}",
                path.display()
            )));
        }
        _ => {
            return Err(StoreError::Corrupt(format!(
                "{} is not a gateway budget file; give the gateway a file of its own",
                path.display()
            )));
        }
    }
    Ok(conn)
}

impl SqliteBudgets {
    /// Opens (or creates) the budget file at `path`.
    pub async fn open(path: &Path) -> Result<SqliteBudgets, StoreError> {
        let path = path.to_owned();
        let opened = path.clone();
        let conn = tokio::task::spawn_blocking(move || {
            private_file(&opened)
                .map_err(|e| StoreError::Backend(format!("{}: {e}", opened.display())))?;
            connect(&opened)
        })
        .await
        .map_err(backend)??;
        Ok(SqliteBudgets {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection, off the runtime's threads.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| StoreError::Backend("budget connection poisoned".into()))?;
            f(&mut conn).map_err(|e| match e {
                rusqlite::Error::SqliteFailure(code, _)
                    if matches!(
                        code.code,
                        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                    ) =>
                {
                    StoreError::Unavailable(e.to_string())
                }
                other => backend(other),
            })
        })
        .await
        .map_err(backend)?
    }
}

#[async_trait::async_trait]
impl BudgetStore for SqliteBudgets {
    async fn load(&self, now: UnixTime, limit: usize) -> Result<Vec<Total>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |conn| {
            let mut statement = conn.prepare(
                "SELECT root_run, requests, tokens, expires_at FROM gateway_budgets \
                 WHERE expires_at > ?1 ORDER BY expires_at DESC LIMIT ?2",
            )?;
            statement
                .query_map(params![int(now.0), limit], total)?
                .collect()
        })
        .await
    }

    async fn flush(&self, deltas: &[Delta], _now: UnixTime) -> Result<Vec<Total>, StoreError> {
        if deltas.is_empty() {
            return Ok(Vec::new());
        }
        let deltas = deltas.to_vec();
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let mut totals = Vec::with_capacity(deltas.len());
            {
                let mut statement = tx.prepare_cached(
                    "INSERT INTO gateway_budgets (root_run, requests, tokens, expires_at) \
                     VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (root_run) DO UPDATE SET \
                         requests = requests + excluded.requests, \
                         tokens = tokens + excluded.tokens, \
                         expires_at = max(expires_at, excluded.expires_at) \
                     RETURNING root_run, requests, max(tokens, 0), expires_at",
                )?;
                for delta in &deltas {
                    totals.push(statement.query_row(
                        params![
                            delta.run,
                            int(delta.requests),
                            delta.tokens,
                            int(delta.expires.0)
                        ],
                        total,
                    )?);
                }
            }
            tx.commit()?;
            Ok(totals)
        })
        .await
    }

    async fn sweep(&self, before: UnixTime) -> Result<u64, StoreError> {
        self.with(move |conn| {
            conn.execute(
                "DELETE FROM gateway_budgets WHERE expires_at < ?1",
                params![int(before.0)],
            )
            .map(|n| u64::try_from(n).unwrap_or(u64::MAX))
        })
        .await
    }
}
