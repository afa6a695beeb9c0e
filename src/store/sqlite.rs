//! The embedded SQLite store: one file in the state directory, WAL mode.
//!
//! Writes go through a pool of exactly one connection, reads through a few read-only ones:
//! SQLite admits one writer at a time, and queueing writers here rather than inside SQLite
//! avoids `SQLITE_BUSY` on lock upgrades. `synchronous = NORMAL` in WAL mode survives a crash
//! of the process (every committed transaction is in the WAL); a power loss can lose the last
//! transactions before a checkpoint, the usual trade of WAL deployments. Records are stored as
//! JSON beside the few columns that are queried, so the schema stays small and readable.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row as _, Sqlite, SqlitePool};
use tailpass_verify::UnixTime;

use super::{
    AuditFilter, AuditRecord, AuthCode, IssuedFromCode, Redemption, RefreshFamily, Revocation,
    RevocationKind, Rotation, Store, StoreError,
};
use crate::audit::AuditEvent;
use crate::clients::{Client, ClientId};
use crate::secret::SecretHash;

/// Read connections kept open.
const READERS: u32 = 4;

/// A store in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

fn backend(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(db.message().to_owned())
        }
        _ => StoreError::Backend(e.to_string()),
    }
}

fn time(t: UnixTime) -> i64 {
    i64::try_from(t.0).unwrap_or(i64::MAX)
}

fn from_time(t: i64) -> UnixTime {
    UnixTime(u64::try_from(t).unwrap_or(0))
}

fn encode<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl SqliteStore {
    /// Opens (creating if needed, mode 0600) the database at `path` and applies the embedded
    /// migrations.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if !path.exists() {
            create_private(path).map_err(|e| {
                StoreError::Backend(format!("cannot create {}: {e}", path.display()))
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(backend)?;
        sqlx::migrate!("src/store/migrations/sqlite")
            .run(&writer)
            .await
            .map_err(|e| StoreError::Backend(format!("migration failed: {e}")))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options.read_only(true))
            .await
            .map_err(backend)?;
        Ok(SqliteStore { writer, reader })
    }

    /// Opens a private in-memory-like database in a temporary file; for tests.
    pub async fn open_in(dir: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open(&dir.join("tailpass.db")).await
    }
}

fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(drop)
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn insert_client(&self, client: &Client) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO clients (client_id, created_at, data) VALUES (?, ?, ?)")
            .bind(&client.client_id.0)
            .bind(time(client.created_at))
            .bind(encode(client)?)
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn client(&self, id: &ClientId) -> Result<Option<Client>, StoreError> {
        let row = sqlx::query("SELECT data FROM clients WHERE client_id = ?")
            .bind(&id.0)
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        row.map(|r| decode(r.get::<&str, _>(0))).transpose()
    }

    async fn clients(&self) -> Result<Vec<Client>, StoreError> {
        let rows = sqlx::query("SELECT data FROM clients ORDER BY created_at, client_id")
            .fetch_all(&self.reader)
            .await
            .map_err(backend)?;
        rows.iter().map(|r| decode(r.get::<&str, _>(0))).collect()
    }

    async fn update_client(&self, client: &Client) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE clients SET data = ? WHERE client_id = ?")
            .bind(encode(client)?)
            .bind(&client.client_id.0)
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_client(&self, id: &ClientId) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await.map_err(backend)?;
        let done = sqlx::query("DELETE FROM clients WHERE client_id = ?")
            .bind(&id.0)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("DELETE FROM consents WHERE client_id = ?")
            .bind(&id.0)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn insert_code(&self, hash: &SecretHash, code: &AuthCode) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO codes (code_hash, client_id, expires_at, data) VALUES (?, ?, ?, ?)",
        )
        .bind(hash.to_hex())
        .bind(&code.client_id.0)
        .bind(time(code.expires_at))
        .bind(encode(code)?)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn redeem_code(
        &self,
        hash: &SecretHash,
        now: UnixTime,
    ) -> Result<Redemption, StoreError> {
        let mut tx = self.writer.begin().await.map_err(backend)?;
        let row = sqlx::query(
            "SELECT data, expires_at, redeemed_at, issued FROM codes WHERE code_hash = ?",
        )
        .bind(hash.to_hex())
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        let Some(row) = row else {
            return Ok(Redemption::Invalid);
        };
        let code: AuthCode = decode(row.get::<&str, _>(0))?;
        if row.get::<Option<i64>, _>(2).is_some() {
            let issued = match row.get::<Option<&str>, _>(3) {
                Some(text) => decode(text)?,
                None => IssuedFromCode::default(),
            };
            return Ok(Redemption::Replayed(code, issued));
        }
        if time(now) > row.get::<i64, _>(1) {
            return Ok(Redemption::Invalid);
        }
        sqlx::query("UPDATE codes SET redeemed_at = ? WHERE code_hash = ?")
            .bind(time(now))
            .bind(hash.to_hex())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(Redemption::Redeemed(code))
    }

    async fn record_code_issue(
        &self,
        hash: &SecretHash,
        issued: &IssuedFromCode,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE codes SET issued = ? WHERE code_hash = ?")
            .bind(encode(issued)?)
            .bind(hash.to_hex())
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn insert_family(
        &self,
        family: &RefreshFamily,
        token: &SecretHash,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await.map_err(backend)?;
        sqlx::query(
            "INSERT INTO refresh_families (family_id, client_id, user_login, node_id, created_at, expires_at, data) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&family.id)
        .bind(&family.client_id.0)
        .bind(family.identity.user.as_ref().map(|u| u.login.as_str()))
        .bind(&family.identity.node.stable_id.0)
        .bind(time(family.created_at))
        .bind(time(family.expires_at))
        .bind(encode(family)?)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family_id, issued_at) VALUES (?, ?, ?)",
        )
        .bind(token.to_hex())
        .bind(&family.id)
        .bind(time(now))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn rotate_refresh(
        &self,
        presented: &SecretHash,
        replacement: &SecretHash,
        client: &ClientId,
        now: UnixTime,
    ) -> Result<Rotation, StoreError> {
        let mut tx = self.writer.begin().await.map_err(backend)?;
        let row = sqlx::query(
            "SELECT f.data, f.revoked_at, t.spent_at FROM refresh_tokens t \
             JOIN refresh_families f ON f.family_id = t.family_id WHERE t.token_hash = ?",
        )
        .bind(presented.to_hex())
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        let Some(row) = row else {
            return Ok(Rotation::Unknown);
        };
        let mut family: RefreshFamily = decode(row.get::<&str, _>(0))?;
        if family.client_id != *client {
            return Ok(Rotation::Unknown);
        }
        family.revoked_at = row.get::<Option<i64>, _>(1).map(from_time);
        if !family.is_live(now) {
            return Ok(Rotation::Inactive(family));
        }
        if row.get::<Option<i64>, _>(2).is_some() {
            // RFC 9700 §4.14.2: a spent refresh token presented again means it leaked; end the
            // whole family so that neither the thief nor the client can go on with it.
            sqlx::query("UPDATE refresh_families SET revoked_at = ? WHERE family_id = ?")
                .bind(time(now))
                .bind(&family.id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
            family.revoked_at = Some(now);
            return Ok(Rotation::Reused(family));
        }
        sqlx::query("UPDATE refresh_tokens SET spent_at = ? WHERE token_hash = ?")
            .bind(time(now))
            .bind(presented.to_hex())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family_id, issued_at) VALUES (?, ?, ?)",
        )
        .bind(replacement.to_hex())
        .bind(&family.id)
        .bind(time(now))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(Rotation::Rotated(family))
    }

    async fn family_of(
        &self,
        token: &SecretHash,
    ) -> Result<Option<(RefreshFamily, bool)>, StoreError> {
        let row = sqlx::query(
            "SELECT f.data, f.revoked_at, t.spent_at FROM refresh_tokens t \
             JOIN refresh_families f ON f.family_id = t.family_id WHERE t.token_hash = ?",
        )
        .bind(token.to_hex())
        .fetch_optional(&self.reader)
        .await
        .map_err(backend)?;
        row.map(|r| {
            let mut family: RefreshFamily = decode(r.get::<&str, _>(0))?;
            family.revoked_at = r.get::<Option<i64>, _>(1).map(from_time);
            Ok((family, r.get::<Option<i64>, _>(2).is_some()))
        })
        .transpose()
    }

    async fn revoke_family(&self, id: &str, now: UnixTime) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE refresh_families SET revoked_at = ? WHERE family_id = ? AND revoked_at IS NULL",
        )
        .bind(time(now))
        .bind(id)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn revoke_families_of(
        &self,
        kind: RevocationKind,
        value: &str,
        now: UnixTime,
    ) -> Result<Vec<RefreshFamily>, StoreError> {
        let statement = match kind {
            RevocationKind::User => {
                "UPDATE refresh_families SET revoked_at = ? \
                 WHERE user_login = ? AND revoked_at IS NULL AND expires_at > ? RETURNING data"
            }
            RevocationKind::Node => {
                "UPDATE refresh_families SET revoked_at = ? \
                 WHERE node_id = ? AND revoked_at IS NULL AND expires_at > ? RETURNING data"
            }
            RevocationKind::Run | RevocationKind::Jti | RevocationKind::Family => {
                return Ok(Vec::new());
            }
        };
        let mut tx = self.writer.begin().await.map_err(backend)?;
        let rows = sqlx::query(statement)
            .bind(time(now))
            .bind(value)
            .bind(time(now))
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        rows.iter()
            .map(|r| {
                let mut family: RefreshFamily = decode(r.get::<&str, _>(0))?;
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
        let row = sqlx::query(
            "INSERT INTO revocations (kind, value, revoked_at, until) VALUES (?, ?, ?, ?) RETURNING seq",
        )
        .bind(kind.as_str())
        .bind(value)
        .bind(time(revoked_at))
        .bind(until.map(time))
        .fetch_one(&self.writer)
        .await
        .map_err(backend)?;
        Ok(Revocation {
            seq: u64::try_from(row.get::<i64, _>(0)).unwrap_or(0),
            kind,
            value: value.to_owned(),
            revoked_at,
            until,
            lifted_at: None,
        })
    }

    async fn lift_revocations(
        &self,
        kind: RevocationKind,
        value: &str,
        now: UnixTime,
    ) -> Result<Vec<Revocation>, StoreError> {
        let rows = sqlx::query(
            "UPDATE revocations SET lifted_at = ? WHERE kind = ? AND value = ? AND lifted_at IS NULL \
             RETURNING seq, kind, value, revoked_at, until, lifted_at",
        )
        .bind(time(now))
        .bind(kind.as_str())
        .bind(value)
        .fetch_all(&self.writer)
        .await
        .map_err(backend)?;
        rows.iter().map(revocation_row).collect()
    }

    async fn revocations_since(&self, seq: u64) -> Result<Vec<Revocation>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, kind, value, revoked_at, until, lifted_at FROM revocations WHERE seq > ? ORDER BY seq",
        )
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .fetch_all(&self.reader)
        .await
        .map_err(backend)?;
        rows.iter().map(revocation_row).collect()
    }

    async fn has_consent(&self, client: &ClientId, user: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM consents WHERE client_id = ? AND user_key = ?")
            .bind(&client.0)
            .bind(user)
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        Ok(row.is_some())
    }

    async fn insert_consent(
        &self,
        client: &ClientId,
        user: &str,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO consents (client_id, user_key, granted_at) VALUES (?, ?, ?) \
             ON CONFLICT (client_id, user_key) DO NOTHING",
        )
        .bind(&client.0)
        .bind(user)
        .bind(time(now))
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn append_audit(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::with_capacity(events.len());
        for event in events {
            rows.push((
                event,
                encode(event)?,
                encode(&event.event)?,
                encode(&event.outcome)?,
            ));
        }
        let mut tx = self.writer.begin().await.map_err(backend)?;
        // 12 parameters a row; SQLite allows 32766 a statement, so 512-event batches fit.
        let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO audit (time, event, outcome, user_login, node_id, client_id, run_id, \
             parent_run_id, root_run_id, jti, data) ",
        );
        insert.push_values(rows.iter(), |mut b, (event, data, kind, outcome)| {
            b.push_bind(time(event.time))
                .push_bind(kind.trim_matches('"'))
                .push_bind(outcome.trim_matches('"'))
                .push_bind(event.user.as_deref())
                .push_bind(event.node_id.as_deref())
                .push_bind(event.client_id.as_deref())
                .push_bind(event.run_id.as_deref())
                .push_bind(event.parent_run_id.as_deref())
                .push_bind(event.root_run_id.as_deref())
                .push_bind(event.jti.as_deref())
                .push_bind(data.as_str());
        });
        insert.build().execute(&mut *tx).await.map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let mut query: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT seq, data FROM audit WHERE 1 = 1");
        if let Some(run) = &filter.run {
            query
                .push(" AND (run_id = ")
                .push_bind(run)
                .push(" OR parent_run_id = ")
                .push_bind(run)
                .push(" OR root_run_id = ")
                .push_bind(run)
                .push(")");
        }
        if let Some(node) = &filter.node {
            query.push(" AND node_id = ").push_bind(node);
        }
        if let Some(user) = &filter.user {
            query.push(" AND user_login = ").push_bind(user);
        }
        if let Some(event) = &filter.event {
            query
                .push(" AND event = ")
                .push_bind(encode(event)?.trim_matches('"').to_owned());
        }
        if let Some(since) = filter.since {
            query.push(" AND time >= ").push_bind(time(since));
        }
        let limit = i64::from(filter.limit.clamp(1, 10_000));
        let rows = if let Some(after) = filter.after_seq {
            query
                .push(" AND seq > ")
                .push_bind(i64::try_from(after).unwrap_or(i64::MAX))
                .push(" ORDER BY seq ASC LIMIT ")
                .push_bind(limit);
            query
                .build()
                .fetch_all(&self.reader)
                .await
                .map_err(backend)?
        } else {
            query.push(" ORDER BY seq DESC LIMIT ").push_bind(limit);
            let mut rows = query
                .build()
                .fetch_all(&self.reader)
                .await
                .map_err(backend)?;
            rows.reverse();
            rows
        };
        rows.iter()
            .map(|r| {
                Ok(AuditRecord {
                    seq: u64::try_from(r.get::<i64, _>(0)).unwrap_or(0),
                    event: decode(r.get::<&str, _>(1))?,
                })
            })
            .collect()
    }

    async fn purge(&self, now: UnixTime, grace: u64, horizon: UnixTime) -> Result<u64, StoreError> {
        let mut tx = self.writer.begin().await.map_err(backend)?;
        let codes = sqlx::query("DELETE FROM codes WHERE expires_at < ?")
            .bind(time(now.minus(grace)))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let families = sqlx::query(
            "DELETE FROM refresh_families WHERE expires_at < ? OR (revoked_at IS NOT NULL AND revoked_at < ?)",
        )
        .bind(time(now))
        .bind(time(horizon))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        // A revocation can go once no token it matches can still be valid, and it no longer
        // blocks new tokens (lifted, expired, or a kind that never blocks issuance).
        let revocations = sqlx::query(
            "DELETE FROM revocations WHERE revoked_at < ? AND \
             (lifted_at IS NOT NULL OR (until IS NOT NULL AND until < ?) OR kind IN ('run', 'jti', 'family'))",
        )
        .bind(time(horizon))
        .bind(time(now))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(codes.rows_affected() + families.rows_affected() + revocations.rows_affected())
    }
}

fn revocation_row(row: &sqlx::sqlite::SqliteRow) -> Result<Revocation, StoreError> {
    let kind: &str = row.get(1);
    Ok(Revocation {
        seq: u64::try_from(row.get::<i64, _>(0)).unwrap_or(0),
        kind: RevocationKind::parse(kind)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown revocation kind {kind:?}")))?,
        value: row.get(2),
        revoked_at: from_time(row.get(3)),
        until: row.get::<Option<i64>, _>(4).map(from_time),
        lifted_at: row.get::<Option<i64>, _>(5).map(from_time),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::audit::{EventKind, Outcome};
    use crate::clients::{AuthMethod, ClientOrigin, GrantType};
    use crate::identity::Identity;
    use crate::identity::whois::WhoIsResponse;
    use crate::secret::Secret;

    fn alice() -> Identity {
        let json = include_str!("../../tests/fixtures/whois-user.json");
        serde_json::from_str::<WhoIsResponse>(json)
            .unwrap()
            .into_identity()
            .unwrap()
    }

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).await.unwrap();
        (dir, store)
    }

    fn client(id: &str) -> Client {
        Client {
            client_id: ClientId(id.into()),
            client_name: "Grafana".into(),
            secret_sha256: Some(Secret::generate().hash()),
            token_endpoint_auth_method: AuthMethod::ClientSecretBasic,
            redirect_uris: vec!["https://grafana.example/cb".into()],
            post_logout_redirect_uris: vec![],
            grant_types: vec![GrantType::AuthorizationCode],
            id_token_signed_response_alg: None,
            resources: vec![],
            users: vec![],
            backchannel_logout_uri: None,
            backchannel_logout_session_required: false,
            origin: ClientOrigin::Admin,
            registration_token_sha256: None,
            created_at: UnixTime(1),
            created_by: None,
        }
    }

    fn code(expires_at: u64) -> AuthCode {
        AuthCode {
            client_id: ClientId("c1".into()),
            redirect_uri: "https://grafana.example/cb".into(),
            scope: vec!["openid".into()],
            resources: vec![],
            nonce: Some("n".into()),
            pkce: None,
            identity: alice(),
            auth_time: UnixTime(100),
            sid: "s1".into(),
            expires_at: UnixTime(expires_at),
        }
    }

    fn c1() -> ClientId {
        ClientId("c1".into())
    }

    fn family(id: &str, expires_at: u64) -> RefreshFamily {
        RefreshFamily {
            id: id.into(),
            client_id: ClientId("c1".into()),
            identity: alice(),
            scope: vec!["openid".into(), "offline_access".into()],
            resources: vec![],
            auth_time: UnixTime(100),
            sid: "s1".into(),
            created_at: UnixTime(100),
            expires_at: UnixTime(expires_at),
            revoked_at: None,
        }
    }

    #[tokio::test]
    async fn clients_round_trip_and_conflict() {
        let (_dir, store) = store().await;
        let c = client("c1");
        store.insert_client(&c).await.unwrap();
        assert!(matches!(
            store.insert_client(&c).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.client(&c.client_id).await.unwrap(), Some(c.clone()));
        let mut changed = c.clone();
        changed.client_name = "Grafana prod".into();
        assert!(store.update_client(&changed).await.unwrap());
        assert_eq!(store.clients().await.unwrap(), vec![changed]);
        assert!(store.delete_client(&c.client_id).await.unwrap());
        assert!(!store.delete_client(&c.client_id).await.unwrap());
        assert!(!store.update_client(&c).await.unwrap());
    }

    #[tokio::test]
    async fn a_code_is_redeemed_exactly_once_even_under_concurrency() {
        let (_dir, store) = store().await;
        let store = Arc::new(store);
        let hash = Secret::generate().hash();
        store.insert_code(&hash, &code(160)).await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (store, hash) = (store.clone(), hash.clone());
            tasks.push(tokio::spawn(async move {
                store.redeem_code(&hash, UnixTime(120)).await
            }));
        }
        let mut redeemed = 0;
        let mut replayed = 0;
        for task in tasks {
            match task.await.unwrap().unwrap() {
                Redemption::Redeemed(c) => {
                    assert_eq!(c, code(160));
                    redeemed += 1;
                }
                Redemption::Replayed(..) => replayed += 1,
                Redemption::Invalid => panic!("a known, unexpired code is never invalid"),
            }
        }
        assert_eq!((redeemed, replayed), (1, 15));
    }

    #[tokio::test]
    async fn replay_reports_what_the_code_issued_and_expiry_is_enforced() {
        let (_dir, store) = store().await;
        let hash = Secret::generate().hash();
        store.insert_code(&hash, &code(160)).await.unwrap();
        assert!(matches!(
            store.redeem_code(&hash, UnixTime(160)).await.unwrap(),
            Redemption::Redeemed(_)
        ));
        let issued = IssuedFromCode {
            family_id: Some("f1".into()),
            access_jti: Some("j1".into()),
        };
        store.record_code_issue(&hash, &issued).await.unwrap();
        assert_eq!(
            store.redeem_code(&hash, UnixTime(161)).await.unwrap(),
            Redemption::Replayed(code(160), issued)
        );
        let late = Secret::generate().hash();
        store.insert_code(&late, &code(160)).await.unwrap();
        assert_eq!(
            store.redeem_code(&late, UnixTime(161)).await.unwrap(),
            Redemption::Invalid
        );
        let unknown = Secret::generate().hash();
        assert_eq!(
            store.redeem_code(&unknown, UnixTime(100)).await.unwrap(),
            Redemption::Invalid
        );
    }

    #[tokio::test]
    async fn refresh_rotation_and_reuse_revokes_the_family() {
        let (_dir, store) = store().await;
        let (t1, t2, t3) = (
            Secret::generate().hash(),
            Secret::generate().hash(),
            Secret::generate().hash(),
        );
        store
            .insert_family(&family("f1", 10_000), &t1, UnixTime(100))
            .await
            .unwrap();
        assert!(matches!(
            store
                .rotate_refresh(&t1, &t2, &c1(), UnixTime(200))
                .await
                .unwrap(),
            Rotation::Rotated(_)
        ));
        // t1 is spent: presenting it again revokes the family, t2 included.
        match store
            .rotate_refresh(&t1, &t3, &c1(), UnixTime(300))
            .await
            .unwrap()
        {
            Rotation::Reused(f) => assert_eq!(f.revoked_at, Some(UnixTime(300))),
            other => panic!("expected reuse, got {other:?}"),
        }
        assert!(matches!(
            store
                .rotate_refresh(&t2, &t3, &c1(), UnixTime(301))
                .await
                .unwrap(),
            Rotation::Inactive(_)
        ));
        assert_eq!(
            store
                .rotate_refresh(&t3, &t1, &c1(), UnixTime(301))
                .await
                .unwrap(),
            Rotation::Unknown
        );
        let (family, spent) = store.family_of(&t2).await.unwrap().unwrap();
        assert_eq!((family.revoked_at, spent), (Some(UnixTime(300)), false));
        assert!(
            store.family_of(&t1).await.unwrap().unwrap().1,
            "t1 is spent"
        );
    }

    #[tokio::test]
    async fn another_clients_refresh_token_is_unknown_and_left_alone() {
        let (_dir, store) = store().await;
        let (t1, t2) = (Secret::generate().hash(), Secret::generate().hash());
        store
            .insert_family(&family("f1", 10_000), &t1, UnixTime(100))
            .await
            .unwrap();
        let other = ClientId("c2".into());
        assert_eq!(
            store
                .rotate_refresh(&t1, &t2, &other, UnixTime(200))
                .await
                .unwrap(),
            Rotation::Unknown
        );
        assert!(matches!(
            store
                .rotate_refresh(&t1, &t2, &c1(), UnixTime(201))
                .await
                .unwrap(),
            Rotation::Rotated(_)
        ));
    }

    #[tokio::test]
    async fn a_family_ends_at_its_absolute_lifetime() {
        let (_dir, store) = store().await;
        let (t1, t2) = (Secret::generate().hash(), Secret::generate().hash());
        store
            .insert_family(&family("f1", 1_000), &t1, UnixTime(100))
            .await
            .unwrap();
        assert!(matches!(
            store
                .rotate_refresh(&t1, &t2, &c1(), UnixTime(1_000))
                .await
                .unwrap(),
            Rotation::Inactive(_)
        ));
    }

    #[tokio::test]
    async fn families_of_a_user_or_node_are_revoked_together() {
        let (_dir, store) = store().await;
        store
            .insert_family(
                &family("f1", 10_000),
                &Secret::generate().hash(),
                UnixTime(100),
            )
            .await
            .unwrap();
        store
            .insert_family(
                &family("f2", 10_000),
                &Secret::generate().hash(),
                UnixTime(100),
            )
            .await
            .unwrap();
        let gone = store
            .revoke_families_of(RevocationKind::User, "alice@example.com", UnixTime(200))
            .await
            .unwrap();
        assert_eq!(gone.len(), 2);
        let again = store
            .revoke_families_of(RevocationKind::Node, "nT2k5GQ8Zb11CNTRL", UnixTime(201))
            .await
            .unwrap();
        assert!(
            again.is_empty(),
            "already revoked families are not revoked twice"
        );
        assert!(!store.revoke_family("f1", UnixTime(202)).await.unwrap());
    }

    #[tokio::test]
    async fn revocations_are_sequenced_lifted_and_purged() {
        let (_dir, store) = store().await;
        let a = store
            .insert_revocation(RevocationKind::Run, "r1", UnixTime(100), None)
            .await
            .unwrap();
        let b = store
            .insert_revocation(RevocationKind::Node, "n1", UnixTime(101), None)
            .await
            .unwrap();
        assert!(b.seq > a.seq);
        assert_eq!(
            store.revocations_since(a.seq).await.unwrap(),
            vec![b.clone()]
        );
        let lifted = store
            .lift_revocations(RevocationKind::Node, "n1", UnixTime(150))
            .await
            .unwrap();
        assert_eq!(lifted.len(), 1);
        assert_eq!(lifted[0].lifted_at, Some(UnixTime(150)));
        // Both are still needed while tokens issued before them may be valid…
        store.purge(UnixTime(200), 0, UnixTime(100)).await.unwrap();
        assert_eq!(store.revocations_since(0).await.unwrap().len(), 2);
        // …and gone once none can be.
        store
            .purge(UnixTime(5_000), 0, UnixTime(4_000))
            .await
            .unwrap();
        assert!(store.revocations_since(0).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_unlifted_node_revocation_outlives_the_token_horizon() {
        let (_dir, store) = store().await;
        store
            .insert_revocation(RevocationKind::Node, "n1", UnixTime(100), None)
            .await
            .unwrap();
        store
            .purge(UnixTime(5_000), 0, UnixTime(4_000))
            .await
            .unwrap();
        assert_eq!(
            store.revocations_since(0).await.unwrap().len(),
            1,
            "it still blocks new tokens"
        );
    }

    #[tokio::test]
    async fn consent_is_per_client_and_user() {
        let (_dir, store) = store().await;
        let c = ClientId("c1".into());
        assert!(!store.has_consent(&c, "userid:1").await.unwrap());
        store
            .insert_consent(&c, "userid:1", UnixTime(1))
            .await
            .unwrap();
        store
            .insert_consent(&c, "userid:1", UnixTime(2))
            .await
            .unwrap();
        assert!(store.has_consent(&c, "userid:1").await.unwrap());
        assert!(!store.has_consent(&c, "userid:2").await.unwrap());
    }

    #[tokio::test]
    async fn audit_is_queryable_by_run_and_append_only() {
        let (_dir, store) = store().await;
        let mut events = Vec::new();
        for i in 0..600u64 {
            let mut e =
                AuditEvent::new(UnixTime(1_000 + i), EventKind::AgentToken, Outcome::Success);
            e.run_id = Some(format!("run{}", i % 3));
            if i % 3 == 1 {
                e.parent_run_id = Some("run0".into());
                e.root_run_id = Some("run0".into());
            }
            events.push(e);
        }
        store.append_audit(&events).await.unwrap();
        let filter = AuditFilter {
            run: Some("run0".into()),
            limit: 1_000,
            ..Default::default()
        };
        assert_eq!(
            store.audit(&filter).await.unwrap().len(),
            400,
            "run0 and its children"
        );
        let newest = AuditFilter {
            limit: 5,
            ..Default::default()
        };
        let page = store.audit(&newest).await.unwrap();
        assert_eq!(page.len(), 5);
        assert_eq!(page[4].event.time, UnixTime(1_599), "newest last");
        let since = AuditFilter {
            since: Some(UnixTime(1_590)),
            limit: 100,
            ..Default::default()
        };
        assert_eq!(store.audit(&since).await.unwrap().len(), 10);
        let after = AuditFilter {
            after_seq: Some(page[0].seq),
            limit: 2,
            ..Default::default()
        };
        assert_eq!(store.audit(&after).await.unwrap()[0].seq, page[1].seq);
        let tamper = sqlx::query("DELETE FROM audit")
            .execute(&store.writer)
            .await;
        assert!(tamper.unwrap_err().to_string().contains("append-only"));
        let tamper = sqlx::query("UPDATE audit SET outcome = 'denied'")
            .execute(&store.writer)
            .await;
        assert!(tamper.is_err());
    }

    #[tokio::test]
    async fn database_file_is_private_and_reopens() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = SqliteStore::open(&path).await.unwrap();
        store.insert_client(&client("c1")).await.unwrap();
        drop(store);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.clients().await.unwrap().len(), 1);
    }
}
