//! The embedded PostgreSQL migrations, applied at open by whichever replica gets there first.
//!
//! Replicas starting together take a session advisory lock ([`LOCK_KEY`]) around the whole
//! check-and-apply, so one applies and the others, once they get the lock, find nothing left
//! to do. Each migration runs in its own transaction with the row that records it in
//! `schema_migrations`.
//!
//! A rolling upgrade runs an older replica beside a newer one, after the newer one migrated.
//! That is safe because of the rule every file in `migrations/postgres/` keeps: a migration
//! only adds (tables, nullable columns, indexes, triggers), never drops or renames what an
//! older release uses. So a replica that finds versions newer than it knows goes on (and
//! says so) rather than refusing, unlike SQLite's single process.

use deadpool_postgres::Pool;
use tailpass_verify::UnixTime;

use crate::store::StoreError;
use crate::store::codec::time;

/// The migrations, in order; version N is `MIGRATIONS[N - 1]`. Only ever append.
pub(super) const MIGRATIONS: [&str; 7] = [
    include_str!("../migrations/postgres/0001_initial.sql"),
    include_str!("../migrations/postgres/0002_replicas.sql"),
    include_str!("../migrations/postgres/0003_shared_keys.sql"),
    include_str!("../migrations/postgres/0004_gateway_budgets.sql"),
    include_str!("../migrations/postgres/0005_federation_replay.sql"),
    include_str!("../migrations/postgres/0006_federated_runs.sql"),
    include_str!("../migrations/postgres/0007_purge_indexes.sql"),
];

/// The advisory lock migrations run under ("tailpass" in ASCII).
const LOCK_KEY: i64 = 0x7461_696c_7061_7373;

/// Applies the migrations the database lacks, under the advisory lock.
pub(super) async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut conn = pool.get().await?;
    conn.execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let applied = apply(&mut conn).await;
    let unlocked = conn
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    // The lock belongs to the session: this connection leaves the pool either way, so a failed
    // unlock cannot leave a pooled connection holding it.
    drop(deadpool_postgres::Object::take(conn));
    applied?;
    unlocked?;
    Ok(())
}

async fn apply(conn: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
    conn.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (\
             version    INTEGER PRIMARY KEY, \
             applied_at BIGINT NOT NULL)",
    )
    .await?;
    let current: i32 = conn
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await?
        .try_get(0)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let version = i32::try_from(index + 1).unwrap_or(i32::MAX);
        if version <= current {
            continue;
        }
        let tx = conn.transaction().await?;
        tx.batch_execute(sql).await.map_err(|e| {
            StoreError::Backend(format!(
                "migration {version} failed: {}",
                StoreError::from(e)
            ))
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[&version, &time(UnixTime::now())],
        )
        .await?;
        tx.commit().await?;
    }
    let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    if current > known {
        tracing::warn!(
            schema = current,
            known,
            "the database's schema is newer than this tailpass knows; going on, as migrations only add (a rolling upgrade)"
        );
    }
    Ok(())
}
