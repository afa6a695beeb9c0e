//! The budgets in the PostgreSQL store's database (table `gateway_budgets`, the store's
//! migration 0004), shared by every gateway replica on it. The pool and TLS are the store's
//! ([`crate::store::postgres::migrated_pool`]).
//!
//! A flush is one statement: the deltas added (rows taken in run order, so replicas flushing
//! overlapping runs never deadlock), the new totals returned, and beside them every row
//! another replica changed since this one's previous flush. Rows carry `updated_at` from the
//! database's clock, and each flush reads from its previous one's start less
//! [`READ_BACK_MARGIN_MS`], so a replica's transaction that committed late is still seen.

use std::path::Path;
use std::sync::Mutex;

use deadpool_postgres::Pool;
use tailpass_verify::UnixTime;
use tokio_postgres::Row;

use super::BudgetStore;
use crate::gateway::quota::{Delta, Total};
use crate::store::StoreError;
use crate::store::postgres::PostgresTarget;

/// How far before its previous flush a flush reads back other replicas' changes: longer than
/// any flush transaction takes (the pool's timeouts are five seconds).
const READ_BACK_MARGIN_MS: i64 = 10_000;

/// The database's clock, in milliseconds.
const DB_NOW_MS: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// Budgets in a PostgreSQL database shared by gateway replicas.
#[derive(Debug)]
pub struct PostgresBudgets {
    pool: Pool,
    /// Where the next read-back starts: the database's time at the previous flush or load.
    since_ms: Mutex<i64>,
}

fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn uint(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn total(row: &Row) -> Result<Total, StoreError> {
    let get = |i: usize| -> Result<i64, StoreError> {
        row.try_get(i)
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    };
    Ok(Total {
        run: row
            .try_get(0)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        requests: uint(get(1)?),
        tokens: uint(get(2)?),
        expires: UnixTime(uint(get(3)?)),
    })
}

impl PostgresBudgets {
    /// Connects to `target` (the store's pool, at most `pool_size` connections, TLS roots
    /// from `ca_file`) and brings the schema up to date.
    pub async fn open(
        target: &PostgresTarget,
        ca_file: Option<&Path>,
        pool_size: usize,
    ) -> Result<PostgresBudgets, StoreError> {
        Ok(PostgresBudgets {
            pool: crate::store::postgres::migrated_pool(target, ca_file, pool_size).await?,
            since_ms: Mutex::new(0),
        })
    }

    async fn db_now_ms(conn: &deadpool_postgres::Object) -> Result<i64, StoreError> {
        conn.query_one(DB_NOW_MS, &[])
            .await?
            .try_get(0)
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    fn since(&self) -> i64 {
        self.since_ms
            .lock()
            .map(|s| *s)
            .unwrap_or(0)
            .saturating_sub(READ_BACK_MARGIN_MS)
    }

    fn advance(&self, to: i64) {
        if let Ok(mut since) = self.since_ms.lock() {
            *since = (*since).max(to);
        }
    }
}

#[async_trait::async_trait]
impl BudgetStore for PostgresBudgets {
    async fn load(&self, now: UnixTime, limit: usize) -> Result<Vec<Total>, StoreError> {
        let conn = self.pool.get().await?;
        let started = Self::db_now_ms(&conn).await?;
        let rows = conn
            .query(
                "SELECT root_run, requests, greatest(tokens, 0), expires_at FROM gateway_budgets \
                 WHERE expires_at > $1 ORDER BY expires_at DESC LIMIT $2",
                &[&int(now.0), &i64::try_from(limit).unwrap_or(i64::MAX)],
            )
            .await?;
        let totals = rows.iter().map(total).collect::<Result<_, _>>()?;
        self.advance(started);
        Ok(totals)
    }

    async fn flush(&self, deltas: &[Delta], now: UnixTime) -> Result<Vec<Total>, StoreError> {
        let runs: Vec<&str> = deltas.iter().map(|d| d.run.as_str()).collect();
        let requests: Vec<i64> = deltas.iter().map(|d| int(d.requests)).collect();
        let tokens: Vec<i64> = deltas.iter().map(|d| d.tokens).collect();
        let expires: Vec<i64> = deltas.iter().map(|d| int(d.expires.0)).collect();
        let since = self.since();
        let conn = self.pool.get().await?;
        let started = Self::db_now_ms(&conn).await?;
        let statement = conn
            .prepare_cached(
                "WITH d AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) \
                     AS u(run, requests, tokens, expires)), \
                 added AS (INSERT INTO gateway_budgets (root_run, requests, tokens, expires_at, updated_at) \
                     SELECT run, requests, tokens, expires, $5 FROM d ORDER BY run \
                     ON CONFLICT (root_run) DO UPDATE SET \
                         requests = gateway_budgets.requests + EXCLUDED.requests, \
                         tokens = gateway_budgets.tokens + EXCLUDED.tokens, \
                         expires_at = greatest(gateway_budgets.expires_at, EXCLUDED.expires_at), \
                         updated_at = EXCLUDED.updated_at \
                     RETURNING root_run, requests, greatest(tokens, 0), expires_at) \
                 SELECT * FROM added \
                 UNION ALL \
                 SELECT root_run, requests, greatest(tokens, 0), expires_at FROM gateway_budgets \
                 WHERE updated_at >= $6 AND expires_at > $7 AND root_run NOT IN (SELECT run FROM d)",
            )
            .await?;
        let rows = conn
            .query(
                &statement,
                &[
                    &runs,
                    &requests,
                    &tokens,
                    &expires,
                    &started,
                    &since,
                    &int(now.0),
                ],
            )
            .await?;
        let totals = rows.iter().map(total).collect::<Result<_, _>>()?;
        self.advance(started);
        Ok(totals)
    }

    async fn sweep(&self, before: UnixTime) -> Result<u64, StoreError> {
        Ok(self
            .pool
            .get()
            .await?
            .execute(
                "DELETE FROM gateway_budgets WHERE expires_at < $1",
                &[&int(before.0)],
            )
            .await?)
    }
}
