//! The PostgreSQL store: one database shared by every replica.
//!
//! Each method is one transaction on a pooled connection ([`connect`]). What the trait makes
//! atomic holds across processes because each transaction locks what it decides on before
//! deciding: a code's row (`SELECT … FOR UPDATE`) before redeeming or completing it, a refresh
//! token's row and its family's before rotating, a consent's row before joining it, and a
//! counter row before taking a revocation's or an audit event's number. Under PostgreSQL's
//! default READ COMMITTED a second transaction waiting on such a lock reads the row as the
//! first left it, so of two replicas redeeming one code at once exactly one wins and the other
//! sees the replay. A write is answered after its `COMMIT` returns, i.e. once it is durable
//! under the server's `synchronous_commit`.
//!
//! Records are JSON beside the columns that are queried, as in SQLite; the schema is
//! `migrations/postgres/` ([`migrate`]).

use std::path::Path;
use std::sync::Arc;

use deadpool_postgres::Pool;
use tailpass_verify::UnixTime;
use tailpass_verify::feed::RevocationKind;
use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

use super::codec::{decode, encode, from_seq, from_time, int, time};
use super::{
    AuditFilter, AuditRecord, AuthCode, CodeState, Consent, KeyManifest, RateCount, Redemption,
    RefreshFamily, Revocation, Rotation, Snapshot, Store, StoreError,
};
use crate::audit::AuditEvent;
use crate::clients::{Client, ClientId};
use crate::federation::runs::{FederatedRun, FederationBlock, RunMatch};
use crate::secret::SecretHash;

mod audit;
mod connect;
mod listen;
mod migrate;
mod snapshot;

pub use connect::PostgresTarget;

/// A store in a PostgreSQL database.
#[derive(Debug)]
pub struct PostgresStore {
    pool: Pool,
    /// For the key notifications' connection, outside the pool.
    connector: connect::Connector,
}

/// Column `i` of `row`; a value of the wrong type is a corrupt row.
fn get<'a, T: FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, StoreError> {
    row.try_get(i)
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A family's record with its revocation column applied.
fn family_of_row(data: &str, revoked_at: Option<i64>) -> Result<RefreshFamily, StoreError> {
    let mut family: RefreshFamily = decode(data)?;
    family.revoked_at = revoked_at.map(from_time);
    Ok(family)
}

const REVOCATION_COLUMNS: &str = "seq, kind, value, revoked_at, until, lifted_at, lift_seq";

fn revocation(row: &Row) -> Result<Revocation, StoreError> {
    Ok(Revocation {
        seq: from_seq(get(row, 0)?),
        kind: get::<&str>(row, 1)?
            .parse::<RevocationKind>()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        value: get(row, 2)?,
        revoked_at: from_time(get(row, 3)?),
        until: get::<Option<i64>>(row, 4)?.map(from_time),
        lifted_at: get::<Option<i64>>(row, 5)?.map(from_time),
        lift_seq: get::<Option<i64>>(row, 6)?.map(from_seq),
    })
}

/// The next number of the revocation sequence (revocations and lifts), inside `tx`: the
/// counter row stays locked until `tx` commits, so numbers are taken in commit order.
async fn next_revocation_seq(tx: &deadpool_postgres::Transaction<'_>) -> Result<i64, StoreError> {
    get(
        &tx.query_one(
            "UPDATE counters SET value = value + 1 WHERE name = 'revocation' RETURNING value",
            &[],
        )
        .await?,
        0,
    )
}

/// Inserts a family and its first token inside `tx`.
async fn insert_family(
    tx: &deadpool_postgres::Transaction<'_>,
    family: &RefreshFamily,
    token: &SecretHash,
    now: UnixTime,
) -> Result<(), StoreError> {
    let statement = tx
        .prepare_cached(
            "INSERT INTO refresh_families (family_id, client_id, user_login, node_id, created_at, expires_at, data) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .await?;
    tx.execute(
        &statement,
        &[
            &family.id,
            &family.client_id.0,
            &family.identity.user.as_ref().map(|u| u.login.as_str()),
            &family.identity.node.stable_id.0,
            &time(family.created_at),
            &time(family.expires_at),
            &encode(family)?,
        ],
    )
    .await?;
    let statement = tx
        .prepare_cached(
            "INSERT INTO refresh_tokens (token_hash, family_id, issued_at) VALUES ($1, $2, $3)",
        )
        .await?;
    tx.execute(&statement, &[&token.to_hex(), &family.id, &time(now)])
        .await?;
    Ok(())
}

/// The stored consent inside `tx`, its row locked.
async fn locked_consent(
    tx: &deadpool_postgres::Transaction<'_>,
    client: &str,
    user: &str,
) -> Result<Option<Consent>, StoreError> {
    let row = tx
        .query_opt(
            "SELECT data FROM consents WHERE client_id = $1 AND user_key = $2 FOR UPDATE",
            &[&client, &user],
        )
        .await?;
    match row
        .map(|r| get::<Option<String>>(&r, 0))
        .transpose()?
        .flatten()
    {
        Some(data) => decode(&data).map(Some),
        None => Ok(None),
    }
}

/// A pool of at most `pool_size` connections to `target` (TLS roots from `ca_file` when given)
/// on a schema brought up to date: the embedded migrations applied under an advisory lock.
/// What [`PostgresStore::open`] stands on, and what a part of tailpass that keeps its own
/// tables in this one schema uses (the gateway's budgets), so that one schema is managed in
/// one place.
pub async fn migrated_pool(
    target: &PostgresTarget,
    ca_file: Option<&Path>,
    pool_size: usize,
) -> Result<Pool, StoreError> {
    let pool = target.pool(ca_file, pool_size)?;
    migrate::migrate(&pool).await?;
    Ok(pool)
}

impl PostgresStore {
    /// Connects to `target` with a pool of at most `pool_size` connections (TLS roots from
    /// `ca_file` when given) and applies the embedded migrations under an advisory lock.
    pub async fn open(
        target: &PostgresTarget,
        ca_file: Option<&Path>,
        pool_size: usize,
    ) -> Result<PostgresStore, StoreError> {
        let pool = migrated_pool(target, ca_file, pool_size).await?;
        Ok(PostgresStore {
            pool,
            connector: target.connector(ca_file)?,
        })
    }

    async fn conn(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.pool.get().await?)
    }
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn export(&self) -> Result<Snapshot, StoreError> {
        snapshot::export(&mut self.conn().await?).await
    }

    async fn import(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        snapshot::import(&mut self.conn().await?, snapshot).await
    }

    async fn insert_client(&self, client: &Client) -> Result<(), StoreError> {
        self.conn()
            .await?
            .execute(
                "INSERT INTO clients (client_id, created_at, data) VALUES ($1, $2, $3)",
                &[
                    &client.client_id.0,
                    &time(client.created_at),
                    &encode(client)?,
                ],
            )
            .await?;
        Ok(())
    }

    async fn client(&self, id: &ClientId) -> Result<Option<Client>, StoreError> {
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached("SELECT data FROM clients WHERE client_id = $1")
            .await?;
        let row = conn.query_opt(&statement, &[&id.0]).await?;
        row.map(|r| decode(get::<&str>(&r, 0)?)).transpose()
    }

    async fn clients(&self) -> Result<Vec<Client>, StoreError> {
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT data FROM clients ORDER BY created_at, client_id",
                &[],
            )
            .await?;
        rows.iter().map(|r| decode(get::<&str>(r, 0)?)).collect()
    }

    async fn update_client(&self, client: &Client) -> Result<bool, StoreError> {
        let changed = self
            .conn()
            .await?
            .execute(
                "UPDATE clients SET data = $1 WHERE client_id = $2",
                &[&encode(client)?, &client.client_id.0],
            )
            .await?;
        Ok(changed == 1)
    }

    async fn delete_client(&self, id: &ClientId) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let deleted = tx
            .execute("DELETE FROM clients WHERE client_id = $1", &[&id.0])
            .await?;
        tx.execute("DELETE FROM consents WHERE client_id = $1", &[&id.0])
            .await?;
        tx.commit().await?;
        Ok(deleted == 1)
    }

    async fn insert_code(&self, hash: &SecretHash, code: &AuthCode) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached(
                "INSERT INTO codes (code_hash, client_id, expires_at, data) VALUES ($1, $2, $3, $4)",
            )
            .await?;
        conn.execute(
            &statement,
            &[
                &hash.to_hex(),
                &code.client_id.0,
                &time(code.expires_at),
                &encode(code)?,
            ],
        )
        .await?;
        Ok(())
    }

    async fn code_state(&self, hash: &SecretHash, now: UnixTime) -> Result<CodeState, StoreError> {
        let conn = self.conn().await?;
        let select = conn
            .prepare_cached("SELECT data, expires_at, redeemed_at FROM codes WHERE code_hash = $1")
            .await?;
        let Some(row) = conn.query_opt(&select, &[&hash.to_hex()]).await? else {
            return Ok(CodeState::Unknown);
        };
        let expires_at: i64 = get(&row, 1)?;
        let redeemed_at: Option<i64> = get(&row, 2)?;
        Ok(if redeemed_at.is_some() {
            CodeState::Spent
        } else if time(now) > expires_at {
            CodeState::Unknown
        } else {
            CodeState::Unspent(Box::new(decode(get::<&str>(&row, 0)?)?))
        })
    }

    async fn redeem_code(
        &self,
        hash: &SecretHash,
        family: Option<(&RefreshFamily, &SecretHash)>,
        now: UnixTime,
    ) -> Result<Redemption, StoreError> {
        let hash = hash.to_hex();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        // The row lock makes a concurrent redemption wait for this one's commit, then read
        // the row as this one left it (with its family created).
        let select = tx
            .prepare_cached(
                "SELECT expires_at, CASE WHEN redeemed_at IS NOT NULL THEN data END \
                 FROM codes WHERE code_hash = $1 FOR UPDATE",
            )
            .await?;
        let Some(row) = tx.query_opt(&select, &[&hash]).await? else {
            return Ok(Redemption::Invalid);
        };
        let expires_at: i64 = get(&row, 0)?;
        // The record itself is read only for a replay, which revokes what it issued.
        if let Some(data) = get::<Option<&str>>(&row, 1)? {
            let code: AuthCode = decode(data)?;
            // The first redemption created its family in its own step: revoked here.
            let mark = tx
                .prepare_cached(
                    "UPDATE codes SET replayed_at = coalesce(replayed_at, $1) WHERE code_hash = $2",
                )
                .await?;
            tx.execute(&mark, &[&time(now), &hash]).await?;
            let revoke = tx
                .prepare_cached(
                    "UPDATE refresh_families SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
                )
                .await?;
            tx.execute(&revoke, &[&time(now), &code.sid]).await?;
            tx.commit().await?;
            return Ok(Redemption::Replayed(Box::new(code)));
        }
        if time(now) > expires_at {
            return Ok(Redemption::Invalid);
        }
        let redeem = tx
            .prepare_cached("UPDATE codes SET redeemed_at = $1 WHERE code_hash = $2")
            .await?;
        tx.execute(&redeem, &[&time(now), &hash]).await?;
        if let Some((family, token)) = family {
            insert_family(&tx, family, token, now).await?;
        }
        tx.commit().await?;
        Ok(Redemption::Redeemed)
    }

    async fn insert_family(
        &self,
        family: &RefreshFamily,
        token: &SecretHash,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        insert_family(&tx, family, token, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn rotate_refresh(
        &self,
        presented: &SecretHash,
        replacement: &SecretHash,
        client: &ClientId,
        now: UnixTime,
    ) -> Result<Rotation, StoreError> {
        let presented = presented.to_hex();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        // Both rows locked: a concurrent rotation of the same token waits, then finds it spent.
        let select = tx
            .prepare_cached(
                "SELECT f.data, f.revoked_at, t.spent_at FROM refresh_tokens t \
                 JOIN refresh_families f ON f.family_id = t.family_id WHERE t.token_hash = $1 \
                 FOR UPDATE OF t, f",
            )
            .await?;
        let Some(row) = tx.query_opt(&select, &[&presented]).await? else {
            return Ok(Rotation::Unknown);
        };
        let mut family = family_of_row(get(&row, 0)?, get(&row, 1)?)?;
        let spent_at: Option<i64> = get(&row, 2)?;
        if family.client_id != *client {
            return Ok(Rotation::Unknown);
        }
        if !family.is_live(now) {
            return Ok(Rotation::Inactive(family));
        }
        if spent_at.is_some() {
            // RFC 9700 §4.14.2: a spent refresh token presented again means it leaked; end the
            // whole family so that neither the thief nor the client goes on.
            let revoke = tx
                .prepare_cached("UPDATE refresh_families SET revoked_at = $1 WHERE family_id = $2")
                .await?;
            tx.execute(&revoke, &[&time(now), &family.id]).await?;
            tx.commit().await?;
            family.revoked_at = Some(now);
            return Ok(Rotation::Reused(family));
        }
        let spend = tx
            .prepare_cached("UPDATE refresh_tokens SET spent_at = $1 WHERE token_hash = $2")
            .await?;
        tx.execute(&spend, &[&time(now), &presented]).await?;
        let insert = tx
            .prepare_cached(
                "INSERT INTO refresh_tokens (token_hash, family_id, issued_at) VALUES ($1, $2, $3)",
            )
            .await?;
        tx.execute(&insert, &[&replacement.to_hex(), &family.id, &time(now)])
            .await?;
        tx.commit().await?;
        Ok(Rotation::Rotated(family))
    }

    async fn family_of(
        &self,
        token: &SecretHash,
    ) -> Result<Option<(RefreshFamily, bool)>, StoreError> {
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached(
                "SELECT f.data, f.revoked_at, t.spent_at FROM refresh_tokens t \
                 JOIN refresh_families f ON f.family_id = t.family_id WHERE t.token_hash = $1",
            )
            .await?;
        let row = conn.query_opt(&statement, &[&token.to_hex()]).await?;
        row.map(|row| {
            let family = family_of_row(get(&row, 0)?, get(&row, 1)?)?;
            Ok((family, get::<Option<i64>>(&row, 2)?.is_some()))
        })
        .transpose()
    }

    async fn revoke_family(&self, id: &str, now: UnixTime) -> Result<bool, StoreError> {
        let changed = self
            .conn()
            .await?
            .execute(
                "UPDATE refresh_families SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
                &[&time(now), &id],
            )
            .await?;
        Ok(changed == 1)
    }

    async fn revoke_families_of(
        &self,
        kind: RevocationKind,
        value: &str,
        now: UnixTime,
    ) -> Result<Vec<RefreshFamily>, StoreError> {
        let statement = match kind {
            RevocationKind::User => {
                "UPDATE refresh_families SET revoked_at = $1 \
                 WHERE user_login = $2 AND revoked_at IS NULL AND expires_at > $1 RETURNING data"
            }
            RevocationKind::Node => {
                "UPDATE refresh_families SET revoked_at = $1 \
                 WHERE node_id = $2 AND revoked_at IS NULL AND expires_at > $1 RETURNING data"
            }
            RevocationKind::Run
            | RevocationKind::Jti
            | RevocationKind::Family
            | RevocationKind::Kid => {
                return Ok(Vec::new());
            }
        };
        let rows = self
            .conn()
            .await?
            .query(statement, &[&time(now), &value])
            .await?;
        rows.iter()
            .map(|row| {
                let mut family: RefreshFamily = decode(get::<&str>(row, 0)?)?;
                family.revoked_at = Some(now);
                Ok(family)
            })
            .collect()
    }

    async fn insert_revocation(
        &self,
        kind: RevocationKind,
        value: &str,
        revoked_at: UnixTime,
        until: Option<UnixTime>,
    ) -> Result<Revocation, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        // The counter row stays locked until commit: numbers are taken in commit order, so the
        // feed, resuming after N, never misses a revocation numbered below N.
        let seq = next_revocation_seq(&tx).await?;
        tx.execute(
            "INSERT INTO revocations (seq, kind, value, revoked_at, until) VALUES ($1, $2, $3, $4, $5)",
            &[&seq, &kind.as_str(), &value, &time(revoked_at), &until.map(time)],
        )
        .await?;
        tx.commit().await?;
        Ok(Revocation::new(
            from_seq(seq),
            kind,
            value,
            revoked_at,
            until,
        ))
    }

    async fn lift_revocations(
        &self,
        kind: RevocationKind,
        value: &str,
        now: UnixTime,
    ) -> Result<Vec<Revocation>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let live = tx
            .query_opt(
                "SELECT 1 FROM revocations WHERE kind = $1 AND value = $2 AND lifted_at IS NULL LIMIT 1",
                &[&kind.as_str(), &value],
            )
            .await?;
        if live.is_none() {
            return Ok(Vec::new());
        }
        // The counter first: it stays locked until commit, so the lift is numbered in commit
        // order with the revocations (a reader past it has seen it), and the UPDATE below,
        // a statement started after the lock, sees every revocation numbered before it.
        let lift_seq = next_revocation_seq(&tx).await?;
        let rows = tx
            .query(
                &format!(
                    "UPDATE revocations SET lifted_at = $1, lift_seq = $4 WHERE kind = $2 AND value = $3 \
                     AND lifted_at IS NULL RETURNING {REVOCATION_COLUMNS}"
                ),
                &[&time(now), &kind.as_str(), &value, &lift_seq],
            )
            .await?;
        let mut lifted = rows.iter().map(revocation).collect::<Result<Vec<_>, _>>()?;
        tx.commit().await?;
        lifted.sort_by_key(|r| r.seq);
        Ok(lifted)
    }

    async fn revocations_since(&self, seq: u64) -> Result<Vec<Revocation>, StoreError> {
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached(&format!(
                "SELECT {REVOCATION_COLUMNS} FROM revocations WHERE seq > $1 OR lift_seq > $1 \
                 ORDER BY greatest(seq, coalesce(lift_seq, 0))"
            ))
            .await?;
        let rows = conn
            .query(&statement, &[&i64::try_from(seq).unwrap_or(i64::MAX)])
            .await?;
        rows.iter().map(revocation).collect()
    }

    async fn live_revocations(
        &self,
        horizon: UnixTime,
        now: UnixTime,
    ) -> Result<Vec<Revocation>, StoreError> {
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached(&format!(
                "SELECT {REVOCATION_COLUMNS} FROM revocations WHERE revoked_at >= $1 \
                 OR (kind IN ('node', 'user') AND lifted_at IS NULL AND (until IS NULL OR until > $2)) \
                 ORDER BY seq"
            ))
            .await?;
        let rows = conn
            .query(&statement, &[&time(horizon), &time(now)])
            .await?;
        rows.iter().map(revocation).collect()
    }

    async fn consent(&self, client: &ClientId, user: &str) -> Result<Option<Consent>, StoreError> {
        let row = self
            .conn()
            .await?
            .query_opt(
                "SELECT data FROM consents WHERE client_id = $1 AND user_key = $2",
                &[&client.0, &user],
            )
            .await?;
        match row
            .map(|r| get::<Option<String>>(&r, 0))
            .transpose()?
            .flatten()
        {
            Some(data) => decode(&data).map(Some),
            None => Ok(None),
        }
    }

    async fn insert_consent(
        &self,
        client: &ClientId,
        user: &str,
        approved: &Consent,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        // The row exists (approving nothing) before it is locked, so two first approvals at
        // once are joined too rather than one overwriting the other.
        tx.execute(
            "INSERT INTO consents (client_id, user_key, granted_at) VALUES ($1, $2, $3) \
             ON CONFLICT (client_id, user_key) DO NOTHING",
            &[&client.0, &user, &time(now)],
        )
        .await?;
        let joined = approved
            .clone()
            .joined(locked_consent(&tx, &client.0, user).await?);
        tx.execute(
            "UPDATE consents SET granted_at = $3, data = $4 WHERE client_id = $1 AND user_key = $2",
            &[&client.0, &user, &time(now), &encode(&joined)?],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn append_audit(&self, events: Arc<[AuditEvent]>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        audit::append(&mut self.conn().await?, &events).await
    }

    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        audit::query(&self.conn().await?, filter).await
    }

    async fn purge(&self, now: UnixTime, grace: u64, horizon: UnixTime) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let codes = tx
            .execute(
                "DELETE FROM codes WHERE expires_at < $1",
                &[&time(now.minus(grace))],
            )
            .await?;
        let families = tx
            .execute(
                "DELETE FROM refresh_families WHERE expires_at < $1 OR (revoked_at IS NOT NULL AND revoked_at < $2)",
                &[&time(now), &time(horizon)],
            )
            .await?;
        // A revocation can go once no token it matches can still be valid, and it no longer
        // blocks new tokens (lifted, expired, or a kind that never blocks).
        let revocations = tx
            .execute(
                "DELETE FROM revocations WHERE revoked_at < $1 AND \
                 (lifted_at IS NOT NULL OR (until IS NOT NULL AND until < $2) OR kind IN ('run', 'jti', 'family'))",
                &[&time(horizon), &time(now)],
            )
            .await?;
        let proofs = tx
            .execute(
                "DELETE FROM dpop_proofs WHERE expires_at < $1",
                &[&time(now)],
            )
            .await?;
        let replay = tx
            .execute(
                "DELETE FROM federation_replay WHERE expires_at < $1",
                &[&time(now)],
            )
            .await?;
        let runs = tx
            .execute("DELETE FROM federated_runs WHERE exp < $1", &[&time(now)])
            .await?;
        let blocks = tx
            .execute(
                "DELETE FROM federation_blocks WHERE until <= $1",
                &[&time(now)],
            )
            .await?;
        let window = i64::try_from(now.0 / 60).unwrap_or(i64::MAX);
        let rates = tx
            .execute(
                "DELETE FROM rate_counts WHERE bucket < $1",
                &[&window.saturating_sub(1)],
            )
            .await?;
        tx.commit().await?;
        Ok(codes
            .saturating_add(families)
            .saturating_add(revocations)
            .saturating_add(proofs)
            .saturating_add(replay)
            .saturating_add(runs)
            .saturating_add(blocks)
            .saturating_add(rates))
    }

    // --- Replica coordination: what replicas must agree on beyond records ---

    fn shared_by_replicas(&self) -> bool {
        true
    }

    async fn insert_federated_run(&self, run: &FederatedRun) -> Result<(), StoreError> {
        let claims = encode(&run.claims)?;
        let conn = self.conn().await?;
        conn.execute(
            "INSERT INTO federated_runs (run_id, table_name, claims, iat, exp) \
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &run.run_id,
                &run.table,
                &claims,
                &time(run.iat),
                &time(run.exp),
            ],
        )
        .await?;
        Ok(())
    }

    async fn federated_runs(&self, selection: &RunMatch) -> Result<Vec<FederatedRun>, StoreError> {
        let conn = self.conn().await?;
        let rows = conn
            .query(
                "SELECT run_id, claims, iat, exp FROM federated_runs \
                 WHERE table_name = $1 ORDER BY iat, run_id",
                &[&selection.table],
            )
            .await?;
        let mut runs = Vec::new();
        for row in &rows {
            let claims: serde_json::Map<String, serde_json::Value> =
                decode(&get::<String>(row, 1)?)?;
            if selection.matches(&selection.table, &claims) {
                runs.push(FederatedRun {
                    run_id: get(row, 0)?,
                    table: selection.table.clone(),
                    claims,
                    iat: from_time(get(row, 2)?),
                    exp: from_time(get(row, 3)?),
                });
            }
        }
        Ok(runs)
    }

    async fn insert_federation_block(&self, block: &FederationBlock) -> Result<(), StoreError> {
        let claims = encode(&block.selection.claims)?;
        let conn = self.conn().await?;
        conn.execute(
            "INSERT INTO federation_blocks (table_name, claims, since, until) \
             VALUES ($1, $2, $3, $4)",
            &[
                &block.selection.table,
                &claims,
                &time(block.since),
                &time(block.until),
            ],
        )
        .await?;
        Ok(())
    }

    async fn federation_blocks(
        &self,
        table: &str,
        now: UnixTime,
    ) -> Result<Vec<FederationBlock>, StoreError> {
        let conn = self.conn().await?;
        let rows = conn
            .query(
                "SELECT claims, since, until FROM federation_blocks \
                 WHERE table_name = $1 AND until > $2 ORDER BY id",
                &[&table, &time(now)],
            )
            .await?;
        let mut blocks = Vec::new();
        for row in &rows {
            blocks.push(FederationBlock {
                selection: RunMatch {
                    table: table.to_owned(),
                    claims: decode(&get::<String>(row, 0)?)?,
                },
                since: from_time(get(row, 1)?),
                until: from_time(get(row, 2)?),
            });
        }
        Ok(blocks)
    }

    async fn claim_federated_token(
        &self,
        key: &str,
        expires_at: UnixTime,
    ) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached(
                "INSERT INTO federation_replay (key, expires_at) VALUES ($1, $2) \
                 ON CONFLICT (key) DO NOTHING",
            )
            .await?;
        // The primary key decides: of two replicas trading one token, one inserts a row.
        let inserted = conn.execute(&statement, &[&key, &time(expires_at)]).await?;
        Ok(inserted == 1)
    }

    async fn claim_dpop_proof(
        &self,
        jkt: &str,
        jti: &str,
        expires_at: UnixTime,
    ) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached(
                "INSERT INTO dpop_proofs (jkt, jti, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (jkt, jti) DO NOTHING",
            )
            .await?;
        // The primary key decides: of two replicas inserting one proof, one inserts a row.
        let inserted = conn
            .execute(&statement, &[&jkt, &jti, &time(expires_at)])
            .await?;
        Ok(inserted == 1)
    }

    async fn add_rate_counts(&self, counts: &[RateCount]) -> Result<Vec<RateCount>, StoreError> {
        if counts.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&str> = counts.iter().map(|c| c.key.as_str()).collect();
        let windows: Vec<i64> = counts
            .iter()
            .map(|c| i64::try_from(c.window).unwrap_or(i64::MAX))
            .collect();
        let deltas: Vec<i64> = counts
            .iter()
            .map(|c| i64::try_from(c.count).unwrap_or(i64::MAX))
            .collect();
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached(
                // Rows in key order, so that replicas flushing overlapping keys lock them in
                // the same order (no deadlock); a key with nothing to add is only read.
                "WITH d AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u(k, b, c)), \
                 added AS (INSERT INTO rate_counts (key, bucket, count) \
                     SELECT k, b, c FROM d WHERE c > 0 ORDER BY k, b \
                     ON CONFLICT (key, bucket) DO UPDATE SET count = rate_counts.count + EXCLUDED.count \
                     RETURNING key, bucket, count) \
                 SELECT key, bucket, count FROM added \
                 UNION ALL \
                 SELECT r.key, r.bucket, r.count FROM rate_counts r JOIN d ON r.key = d.k AND r.bucket = d.b \
                 WHERE d.c = 0",
            )
            .await?;
        let rows = conn.query(&statement, &[&keys, &windows, &deltas]).await?;
        rows.iter()
            .map(|row| {
                Ok(RateCount {
                    key: get(row, 0)?,
                    window: from_seq(get(row, 1)?),
                    count: from_seq(get(row, 2)?),
                })
            })
            .collect()
    }

    // --- end of replica coordination ---

    async fn purge_audit_before(&self, before: UnixTime) -> Result<u64, StoreError> {
        audit::purge_before(&mut self.conn().await?, before).await
    }

    // Shared keys

    async fn key_manifest(&self) -> Result<Option<KeyManifest>, StoreError> {
        let row = self
            .conn()
            .await?
            .query_opt(
                "SELECT version, generation, data FROM key_manifest WHERE id = 1",
                &[],
            )
            .await?;
        row.map(|r| {
            Ok(KeyManifest {
                version: from_seq(get(&r, 0)?),
                generation: from_seq(get(&r, 1)?),
                data: get(&r, 2)?,
            })
        })
        .transpose()
    }

    async fn swap_key_manifest(
        &self,
        expected: Option<u64>,
        generation: u64,
        data: &str,
    ) -> Result<Option<u64>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        // A second writer waits on the row, then finds the version moved: one winner.
        let written = match expected {
            None => {
                tx.execute(
                    "INSERT INTO key_manifest (id, version, generation, data) VALUES (1, 1, $1, $2) \
                     ON CONFLICT (id) DO NOTHING",
                    &[&int(generation), &data],
                )
                .await?
            }
            Some(version) => {
                tx.execute(
                    "UPDATE key_manifest SET version = version + 1, generation = $1, data = $2 \
                     WHERE id = 1 AND version = $3",
                    &[&int(generation), &data, &int(version)],
                )
                .await?
            }
        };
        if written != 1 {
            return Ok(None);
        }
        let version = expected.map_or(1, |v| v + 1);
        // Delivered to every listener when the transaction commits, never before.
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&listen::CHANNEL, &version.to_string()],
        )
        .await?;
        tx.commit().await?;
        Ok(Some(version))
    }

    async fn insert_key_blob(
        &self,
        kid: &str,
        generation: u64,
        blob: &[u8],
    ) -> Result<(), StoreError> {
        self.conn()
            .await?
            .execute(
                "INSERT INTO key_blobs (kid, generation, blob) VALUES ($1, $2, $3) \
                 ON CONFLICT (kid, generation) DO NOTHING",
                &[&kid, &int(generation), &blob],
            )
            .await?;
        Ok(())
    }

    async fn key_blob(&self, kid: &str, generation: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let row = self
            .conn()
            .await?
            .query_opt(
                "SELECT blob FROM key_blobs WHERE kid = $1 AND generation = $2",
                &[&kid, &int(generation)],
            )
            .await?;
        row.map(|r| get(&r, 0)).transpose()
    }

    async fn delete_key_blob(&self, kid: &str) -> Result<(), StoreError> {
        self.conn()
            .await?
            .execute("DELETE FROM key_blobs WHERE kid = $1", &[&kid])
            .await?;
        Ok(())
    }

    async fn delete_key_generation(&self, generation: u64) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        tx.execute(
            "DELETE FROM key_blobs WHERE generation = $1",
            &[&int(generation)],
        )
        .await?;
        tx.execute(
            "DELETE FROM shared_secrets WHERE generation = $1",
            &[&int(generation)],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn shared_secret(
        &self,
        name: &str,
        generation: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let row = self
            .conn()
            .await?
            .query_opt(
                "SELECT blob FROM shared_secrets WHERE name = $1 AND generation = $2",
                &[&name, &int(generation)],
            )
            .await?;
        row.map(|r| get(&r, 0)).transpose()
    }

    async fn insert_shared_secret(
        &self,
        name: &str,
        generation: u64,
        blob: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let conn = self.conn().await?;
        conn.execute(
            "INSERT INTO shared_secrets (name, generation, blob) VALUES ($1, $2, $3) \
             ON CONFLICT (name, generation) DO NOTHING",
            &[&name, &int(generation), &blob],
        )
        .await?;
        // The row is committed either way (ours, or the first writer's): read it back.
        let row = conn
            .query_one(
                "SELECT blob FROM shared_secrets WHERE name = $1 AND generation = $2",
                &[&name, &int(generation)],
            )
            .await?;
        get(&row, 0)
    }

    fn key_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        tokio::runtime::Handle::try_current()
            .ok()
            .map(|_| listen::start(self.connector.clone()))
    }
}

#[cfg(test)]
pub(crate) mod tests;
