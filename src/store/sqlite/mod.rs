//! The embedded SQLite store: one file in the state directory, WAL mode.
//!
//! Writes go to one writer thread that commits them in groups ([`worker`]); reads use a few
//! read-only connections. `synchronous = FULL` in WAL mode syncs the WAL at every commit, so an
//! answered write survives power loss, not only a crash of the process (`NORMAL` would sync
//! only at checkpoints, losing the last answered commits on an OS crash). Group commit keeps
//! that to one sync per batch of writes. Records are stored as JSON beside
//! the few columns that are queried, so the schema stays small and readable. Migrations are
//! embedded in the binary and applied at open, tracked by `PRAGMA user_version`.

use std::path::Path;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension as _, params};
use tailpass_verify::UnixTime;
use tailpass_verify::feed::RevocationKind;

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
mod snapshot;
mod worker;

use worker::Worker;

/// Schema versions, in order; version N is `MIGRATIONS[N - 1]`.
const MIGRATIONS: [&str; 11] = [
    include_str!("../migrations/sqlite/0001_initial.sql"),
    include_str!("../migrations/sqlite/0002_audit_lean_indexes.sql"),
    include_str!("../migrations/sqlite/0003_audit_contexts.sql"),
    include_str!("../migrations/sqlite/0004_code_replay.sql"),
    include_str!("../migrations/sqlite/0005_consent_record.sql"),
    include_str!("../migrations/sqlite/0006_audit_retention.sql"),
    include_str!("../migrations/sqlite/0007_revocation_lifts.sql"),
    include_str!("../migrations/sqlite/0008_shared_keys.sql"),
    include_str!("../migrations/sqlite/0009_federation_replay.sql"),
    include_str!("../migrations/sqlite/0010_federated_runs.sql"),
    include_str!("../migrations/sqlite/0011_purge_indexes.sql"),
];

/// The most rows one step of [`SqliteStore::purge`] deletes. Each step is a write job of its
/// own, so the writes queued meanwhile commit between two steps: after a long downtime, say,
/// a million expired codes are a thousand short pauses of the writer, not one long one.
const PURGE_STEP: i64 = 1_000;

/// The housekeeping deletes of [`SqliteStore::purge`], in its order, each deleting at most
/// `:step` rows. Each must find its rows through an index: it holds the writer, so every
/// write waits for it. `:now` is now; `:cutoff` the codes' (now less the grace in which a
/// replay is still recognised); `:horizon` the time before which no token a revocation or a
/// revoked family matches can still be valid.
const PURGES: [&str; 6] = [
    "DELETE FROM codes WHERE rowid IN \
     (SELECT rowid FROM codes WHERE expires_at < :cutoff LIMIT :step)",
    "DELETE FROM refresh_families WHERE rowid IN (SELECT rowid FROM refresh_families \
     WHERE expires_at < :now OR (revoked_at IS NOT NULL AND revoked_at < :horizon) LIMIT :step)",
    // A revocation can go once no token it matches can still be valid, and it no longer
    // blocks new tokens (lifted, expired, or a kind that never blocks).
    "DELETE FROM revocations WHERE rowid IN (SELECT rowid FROM revocations \
     WHERE revoked_at < :horizon AND (lifted_at IS NOT NULL OR (until IS NOT NULL AND until < :now) \
     OR kind IN ('run', 'jti', 'family')) LIMIT :step)",
    "DELETE FROM federation_replay WHERE rowid IN \
     (SELECT rowid FROM federation_replay WHERE expires_at < :now LIMIT :step)",
    "DELETE FROM federated_runs WHERE rowid IN \
     (SELECT rowid FROM federated_runs WHERE exp < :now LIMIT :step)",
    "DELETE FROM federation_blocks WHERE rowid IN \
     (SELECT rowid FROM federation_blocks WHERE until <= :now LIMIT :step)",
];

/// A store in one SQLite file.
#[derive(Debug)]
pub struct SqliteStore {
    worker: Worker,
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let version = i64::try_from(index + 1).unwrap_or(i64::MAX);
        if version <= current {
            continue;
        }
        conn.execute_batch(&format!(
            "BEGIN; {sql}; PRAGMA user_version = {version}; COMMIT;"
        ))
        .map_err(|e| StoreError::Backend(format!("migration {version} failed: {e}")))?;
    }
    let after: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if usize::try_from(after).unwrap_or(usize::MAX) > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "the database is at schema version {after}, newer than this tailpass knows"
        )));
    }
    Ok(())
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

impl SqliteStore {
    /// Opens (creating if needed, mode 0600) the database at `path` and applies the embedded
    /// migrations.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if !path.exists() {
            create_private(path).map_err(|e| {
                StoreError::Backend(format!("cannot create {}: {e}", path.display()))
            })?;
        }
        let owned = path.to_owned();
        let conn = tokio::task::spawn_blocking(move || {
            let conn = worker::open_writer(&owned)?;
            migrate(&conn)?;
            Ok::<_, StoreError>(conn)
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))??;
        Ok(SqliteStore {
            worker: Worker::start(conn, path)?,
        })
    }

    /// Copies the database at `path` into `file` (created with mode 0600; refused if it
    /// exists) with SQLite's online backup API, while other connections go on writing: the
    /// copy is taken in one step, inside one read transaction of the source, so it is the
    /// database as of one commit. Answers how many pages were copied.
    pub async fn backup(path: &Path, file: &Path) -> Result<u64, StoreError> {
        if !path.exists() {
            return Err(StoreError::Backend(format!(
                "{} does not exist",
                path.display()
            )));
        }
        create_private(file)
            .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", file.display())))?;
        let (path, file) = (path.to_owned(), file.to_owned());
        tokio::task::spawn_blocking(move || {
            let source = Connection::open_with_flags(
                &path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            source.busy_timeout(std::time::Duration::from_secs(5))?;
            let mut copy = Connection::open(&file)?;
            let backup = rusqlite::backup::Backup::new(&source, &mut copy)?;
            // All pages in one step: one read transaction of the source, so one commit's state.
            let done = backup.step(-1)?;
            if done != rusqlite::backup::StepResult::Done {
                return Err(StoreError::Backend(
                    "the backup did not complete (the source was busy); try again".into(),
                ));
            }
            let pages = u64::try_from(backup.progress().pagecount).unwrap_or(0);
            Ok(pages)
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    /// Opens `tailpass.db` in `dir`; for tests.
    pub async fn open_in(dir: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open(&dir.join("tailpass.db")).await
    }
}

/// The consent a user gave a client; a row from before consents recorded what they approved
/// (its `data` is NULL) approves nothing.
fn consent_of(c: &Connection, client: &str, user: &str) -> Result<Option<Consent>, StoreError> {
    let data: Option<Option<String>> = c
        .prepare_cached("SELECT data FROM consents WHERE client_id = ?1 AND user_key = ?2")?
        .query_row(params![client, user], |r| r.get(0))
        .optional()?;
    match data.flatten() {
        Some(data) => decode(&data).map(Some),
        None => Ok(None),
    }
}

/// A refresh family and its first token, as their rows store them.
struct FamilyRow {
    id: String,
    client: String,
    user: Option<String>,
    node: String,
    created: i64,
    expires: i64,
    data: String,
    token: String,
}

impl FamilyRow {
    fn of(family: &RefreshFamily, token: &SecretHash) -> Result<FamilyRow, StoreError> {
        Ok(FamilyRow {
            id: family.id.clone(),
            client: family.client_id.0.clone(),
            user: family.identity.user.as_ref().map(|u| u.login.clone()),
            node: family.identity.node.stable_id.0.clone(),
            created: time(family.created_at),
            expires: time(family.expires_at),
            data: encode(family)?,
            token: token.to_hex(),
        })
    }

    fn insert(&self, c: &Connection, now: UnixTime) -> Result<(), StoreError> {
        c.prepare_cached(
            "INSERT INTO refresh_families (family_id, client_id, user_login, node_id, created_at, expires_at, data) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![self.id, self.client, self.user, self.node, self.created, self.expires, self.data])?;
        c.prepare_cached(
            "INSERT INTO refresh_tokens (token_hash, family_id, issued_at) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![self.token, self.id, time(now)])?;
        Ok(())
    }
}

/// A revocation as its row stores it.
struct RevocationRow {
    seq: i64,
    kind: String,
    value: String,
    revoked_at: i64,
    until: Option<i64>,
    lifted_at: Option<i64>,
    lift_seq: Option<i64>,
}

fn revocation_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RevocationRow> {
    Ok(RevocationRow {
        seq: row.get(0)?,
        kind: row.get(1)?,
        value: row.get(2)?,
        revoked_at: row.get(3)?,
        until: row.get(4)?,
        lifted_at: row.get(5)?,
        lift_seq: row.get(6)?,
    })
}

fn revocation(row: RevocationRow) -> Result<Revocation, StoreError> {
    Ok(Revocation {
        seq: from_seq(row.seq),
        kind: row
            .kind
            .parse::<RevocationKind>()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        value: row.value,
        revoked_at: from_time(row.revoked_at),
        until: row.until.map(from_time),
        lifted_at: row.lifted_at.map(from_time),
        lift_seq: row.lift_seq.map(from_seq),
    })
}

const REVOCATION_COLUMNS: &str = "seq, kind, value, revoked_at, until, lifted_at, lift_seq";

/// A stored code's record, expiry and redemption time, by the hex of its hash.
fn code_row(
    c: &rusqlite::Connection,
    hash: &str,
) -> Result<Option<(String, i64, Option<i64>)>, StoreError> {
    Ok(
        c.prepare_cached("SELECT data, expires_at, redeemed_at FROM codes WHERE code_hash = ?1")?
            .query_row(params![hash], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?,
    )
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn export(&self) -> Result<Snapshot, StoreError> {
        self.worker.read(snapshot::export).await
    }

    async fn import(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let snapshot = snapshot.clone();
        self.worker
            .write(move |c| snapshot::import(c, &snapshot))
            .await
    }

    async fn insert_client(&self, client: &Client) -> Result<(), StoreError> {
        let (id, created, data) = (
            client.client_id.0.clone(),
            time(client.created_at),
            encode(client)?,
        );
        self.worker
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO clients (client_id, created_at, data) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![id, created, data])?;
                Ok(())
            })
            .await
    }

    async fn client(&self, id: &ClientId) -> Result<Option<Client>, StoreError> {
        let id = id.0.clone();
        self.worker
            .read(move |c| {
                let data: Option<String> = c
                    .prepare_cached("SELECT data FROM clients WHERE client_id = ?1")?
                    .query_row(params![id], |r| r.get(0))
                    .optional()?;
                data.map(|d| decode(&d)).transpose()
            })
            .await
    }

    async fn clients(&self) -> Result<Vec<Client>, StoreError> {
        self.worker
            .read(|c| {
                let mut statement =
                    c.prepare_cached("SELECT data FROM clients ORDER BY created_at, client_id")?;
                let rows = statement.query_map([], |r| r.get::<_, String>(0))?;
                rows.map(|d| decode(&d?)).collect()
            })
            .await
    }

    async fn update_client(&self, client: &Client) -> Result<bool, StoreError> {
        let (id, data) = (client.client_id.0.clone(), encode(client)?);
        self.worker
            .write(move |c| {
                let changed = c
                    .prepare_cached("UPDATE clients SET data = ?1 WHERE client_id = ?2")?
                    .execute(params![data, id])?;
                Ok(changed == 1)
            })
            .await
    }

    async fn delete_client(&self, id: &ClientId) -> Result<bool, StoreError> {
        let id = id.0.clone();
        self.worker
            .write(move |c| {
                let deleted = c
                    .prepare_cached("DELETE FROM clients WHERE client_id = ?1")?
                    .execute(params![id])?;
                c.prepare_cached("DELETE FROM consents WHERE client_id = ?1")?
                    .execute(params![id])?;
                Ok(deleted == 1)
            })
            .await
    }

    async fn insert_code(&self, hash: &SecretHash, code: &AuthCode) -> Result<(), StoreError> {
        let (hash, client, expires, data) = (
            hash.to_hex(),
            code.client_id.0.clone(),
            time(code.expires_at),
            encode(code)?,
        );
        self.worker
            .write(move |c| {
                c.prepare_cached("INSERT INTO codes (code_hash, client_id, expires_at, data) VALUES (?1, ?2, ?3, ?4)")?
                    .execute(params![hash, client, expires, data])?;
                Ok(())
            })
            .await
    }

    async fn code_state(&self, hash: &SecretHash, now: UnixTime) -> Result<CodeState, StoreError> {
        let hash = hash.to_hex();
        // Read where `redeem_code` will write next: its cache holds the code's pages.
        self.worker
            .peek(move |c| {
                Ok(match code_row(c, &hash)? {
                    None => CodeState::Unknown,
                    Some((_, _, Some(_))) => CodeState::Spent,
                    Some((_, expires_at, None)) if time(now) > expires_at => CodeState::Unknown,
                    Some((data, _, None)) => CodeState::Unspent(Box::new(decode(&data)?)),
                })
            })
            .await
    }

    async fn redeem_code(
        &self,
        hash: &SecretHash,
        family: Option<(&RefreshFamily, &SecretHash)>,
        now: UnixTime,
    ) -> Result<Redemption, StoreError> {
        let hash = hash.to_hex();
        let row = family.map(|(f, t)| FamilyRow::of(f, t)).transpose()?;
        self.worker
            .write(move |c| {
                // The record itself is read only for a replay, which revokes what it issued.
                let Some((expires_at, replayed)) = c
                    .prepare_cached(
                        "SELECT expires_at, CASE WHEN redeemed_at IS NOT NULL THEN data END \
                         FROM codes WHERE code_hash = ?1",
                    )?
                    .query_row(params![hash], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?))
                    })
                    .optional()?
                else {
                    return Ok(Redemption::Invalid);
                };
                if let Some(data) = replayed {
                    let code: AuthCode = decode(&data)?;
                    // The first redemption created its family in its own step: revoked here.
                    c.prepare_cached(
                        "UPDATE codes SET replayed_at = COALESCE(replayed_at, ?1) WHERE code_hash = ?2",
                    )?
                    .execute(params![time(now), hash])?;
                    c.prepare_cached(
                        "UPDATE refresh_families SET revoked_at = ?1 WHERE family_id = ?2 AND revoked_at IS NULL",
                    )?
                    .execute(params![time(now), code.sid])?;
                    return Ok(Redemption::Replayed(Box::new(code)));
                }
                if time(now) > expires_at {
                    return Ok(Redemption::Invalid);
                }
                c.prepare_cached("UPDATE codes SET redeemed_at = ?1 WHERE code_hash = ?2")?
                    .execute(params![time(now), hash])?;
                if let Some(row) = &row {
                    row.insert(c, now)?;
                }
                Ok(Redemption::Redeemed)
            })
            .await
    }

    async fn insert_family(
        &self,
        family: &RefreshFamily,
        token: &SecretHash,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        let row = FamilyRow::of(family, token)?;
        self.worker.write(move |c| row.insert(c, now)).await
    }

    async fn rotate_refresh(
        &self,
        presented: &SecretHash,
        replacement: &SecretHash,
        client: &ClientId,
        now: UnixTime,
    ) -> Result<Rotation, StoreError> {
        let (presented, replacement, client) =
            (presented.to_hex(), replacement.to_hex(), client.clone());
        self.worker
            .write(move |c| {
                let row: Option<(String, Option<i64>, Option<i64>)> = c
                    .prepare_cached(
                        "SELECT f.data, f.revoked_at, t.spent_at FROM refresh_tokens t \
                         JOIN refresh_families f ON f.family_id = t.family_id WHERE t.token_hash = ?1",
                    )?
                    .query_row(params![presented], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()?;
                let Some((data, revoked_at, spent_at)) = row else {
                    return Ok(Rotation::Unknown);
                };
                let mut family: RefreshFamily = decode(&data)?;
                if family.client_id != client {
                    return Ok(Rotation::Unknown);
                }
                family.revoked_at = revoked_at.map(from_time);
                if !family.is_live(now) {
                    return Ok(Rotation::Inactive(family));
                }
                if spent_at.is_some() {
                    // RFC 9700 §4.14.2: a spent refresh token presented again means it leaked;
                    // end the whole family so that neither the thief nor the client goes on.
                    c.prepare_cached("UPDATE refresh_families SET revoked_at = ?1 WHERE family_id = ?2")?
                        .execute(params![time(now), family.id])?;
                    family.revoked_at = Some(now);
                    return Ok(Rotation::Reused(family));
                }
                c.prepare_cached("UPDATE refresh_tokens SET spent_at = ?1 WHERE token_hash = ?2")?
                    .execute(params![time(now), presented])?;
                c.prepare_cached("INSERT INTO refresh_tokens (token_hash, family_id, issued_at) VALUES (?1, ?2, ?3)")?
                    .execute(params![replacement, family.id, time(now)])?;
                Ok(Rotation::Rotated(family))
            })
            .await
    }

    async fn family_of(
        &self,
        token: &SecretHash,
    ) -> Result<Option<(RefreshFamily, bool)>, StoreError> {
        let token = token.to_hex();
        self.worker
            .read(move |c| {
                let row: Option<(String, Option<i64>, Option<i64>)> = c
                    .prepare_cached(
                        "SELECT f.data, f.revoked_at, t.spent_at FROM refresh_tokens t \
                         JOIN refresh_families f ON f.family_id = t.family_id WHERE t.token_hash = ?1",
                    )?
                    .query_row(params![token], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()?;
                row.map(|(data, revoked_at, spent_at)| {
                    let mut family: RefreshFamily = decode(&data)?;
                    family.revoked_at = revoked_at.map(from_time);
                    Ok((family, spent_at.is_some()))
                })
                .transpose()
            })
            .await
    }

    async fn revoke_family(&self, id: &str, now: UnixTime) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.worker
            .write(move |c| {
                let changed = c
                    .prepare_cached("UPDATE refresh_families SET revoked_at = ?1 WHERE family_id = ?2 AND revoked_at IS NULL")?
                    .execute(params![time(now), id])?;
                Ok(changed == 1)
            })
            .await
    }

    async fn revoke_families_of(
        &self,
        kind: RevocationKind,
        value: &str,
        now: UnixTime,
    ) -> Result<Vec<RefreshFamily>, StoreError> {
        let statement = match kind {
            RevocationKind::User => {
                "UPDATE refresh_families SET revoked_at = ?1 \
                 WHERE user_login = ?2 AND revoked_at IS NULL AND expires_at > ?1 RETURNING data"
            }
            RevocationKind::Node => {
                "UPDATE refresh_families SET revoked_at = ?1 \
                 WHERE node_id = ?2 AND revoked_at IS NULL AND expires_at > ?1 RETURNING data"
            }
            RevocationKind::Run
            | RevocationKind::Jti
            | RevocationKind::Family
            | RevocationKind::Kid => {
                return Ok(Vec::new());
            }
        };
        let value = value.to_owned();
        self.worker
            .write(move |c| {
                let mut query = c.prepare_cached(statement)?;
                let rows = query.query_map(params![time(now), value], |r| r.get::<_, String>(0))?;
                rows.map(|data| {
                    let mut family: RefreshFamily = decode(&data?)?;
                    family.revoked_at = Some(now);
                    Ok(family)
                })
                .collect()
            })
            .await
    }

    async fn insert_revocation(
        &self,
        kind: RevocationKind,
        value: &str,
        revoked_at: UnixTime,
        until: Option<UnixTime>,
    ) -> Result<Revocation, StoreError> {
        let stored = value.to_owned();
        let seq = self
            .worker
            .write(move |c| {
                Ok(c.prepare_cached(
                    "INSERT INTO revocations (kind, value, revoked_at, until) VALUES (?1, ?2, ?3, ?4) RETURNING seq",
                )?
                .query_row(params![kind.as_str(), stored, time(revoked_at), until.map(time)], |r| r.get::<_, i64>(0))?)
            })
            .await?;
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
        let value = value.to_owned();
        self.worker
            .write(move |c| {
                let live = c
                    .prepare_cached(
                        "SELECT 1 FROM revocations WHERE kind = ?1 AND value = ?2 AND lifted_at IS NULL",
                    )?
                    .exists(params![kind.as_str(), value])?;
                if !live {
                    return Ok(Vec::new());
                }
                // The lift's number is the next of the rows' own AUTOINCREMENT sequence
                // (advanced here, so no later revocation reuses it).
                let lift_seq: i64 = c
                    .prepare_cached(
                        "UPDATE sqlite_sequence SET seq = seq + 1 WHERE name = 'revocations' RETURNING seq",
                    )?
                    .query_row([], |r| r.get(0))?;
                let mut query = c.prepare_cached(&format!(
                    "UPDATE revocations SET lifted_at = ?1, lift_seq = ?4 \
                     WHERE kind = ?2 AND value = ?3 AND lifted_at IS NULL RETURNING {REVOCATION_COLUMNS}"
                ))?;
                let rows = query.query_map(
                    params![time(now), kind.as_str(), value, lift_seq],
                    revocation_row,
                )?;
                let mut lifted = rows
                    .map(|r| revocation(r?))
                    .collect::<Result<Vec<_>, _>>()?;
                lifted.sort_by_key(|r| r.seq);
                Ok(lifted)
            })
            .await
    }

    async fn revocations_since(&self, seq: u64) -> Result<Vec<Revocation>, StoreError> {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        self.worker
            .read(move |c| {
                let mut query = c.prepare_cached(&format!(
                    "SELECT {REVOCATION_COLUMNS} FROM revocations WHERE seq > ?1 OR lift_seq > ?1 \
                     ORDER BY max(seq, coalesce(lift_seq, 0))"
                ))?;
                let rows = query.query_map(params![seq], revocation_row)?;
                rows.map(|r| revocation(r?)).collect()
            })
            .await
    }

    async fn live_revocations(
        &self,
        horizon: UnixTime,
        now: UnixTime,
    ) -> Result<Vec<Revocation>, StoreError> {
        self.worker
            .read(move |c| {
                let mut query = c.prepare_cached(&format!(
                    "SELECT {REVOCATION_COLUMNS} FROM revocations WHERE revoked_at >= ?1 \
                     OR (kind IN ('node', 'user') AND lifted_at IS NULL AND (until IS NULL OR until > ?2)) \
                     ORDER BY seq"
                ))?;
                let rows = query.query_map(params![time(horizon), time(now)], revocation_row)?;
                rows.map(|r| revocation(r?)).collect()
            })
            .await
    }

    async fn consent(&self, client: &ClientId, user: &str) -> Result<Option<Consent>, StoreError> {
        let (client, user) = (client.0.clone(), user.to_owned());
        self.worker
            .read(move |c| consent_of(c, &client, &user))
            .await
    }

    async fn insert_consent(
        &self,
        client: &ClientId,
        user: &str,
        approved: &Consent,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        let (client, user, approved) = (client.0.clone(), user.to_owned(), approved.clone());
        self.worker
            .write(move |c| {
                let data = encode(&approved.clone().joined(consent_of(c, &client, &user)?))?;
                c.prepare_cached(
                    "INSERT INTO consents (client_id, user_key, granted_at, data) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (client_id, user_key) DO UPDATE SET granted_at = ?3, data = ?4",
                )?
                .execute(params![client, user, time(now), data])?;
                Ok(())
            })
            .await
    }

    async fn append_audit(&self, events: Arc<[AuditEvent]>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        // The rows are bound from the shared events on the writer thread: no copy of each
        // field on the way, and the JSON encoding is off the request path.
        self.worker.write(move |c| audit::append(c, &events)).await
    }

    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let filter = filter.clone();
        self.worker.read(move |c| audit::query(c, &filter)).await
    }

    // --- Replica coordination: one process, so memory is the whole picture ---

    fn shared_by_replicas(&self) -> bool {
        false
    }

    fn writes_failing(&self) -> bool {
        self.worker.writes_failing()
    }

    async fn claim_dpop_proof(
        &self,
        _jkt: &str,
        _jti: &str,
        _expires_at: UnixTime,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn add_rate_counts(&self, counts: &[RateCount]) -> Result<Vec<RateCount>, StoreError> {
        Ok(counts.to_vec())
    }

    async fn claim_federated_token(
        &self,
        key: &str,
        expires_at: UnixTime,
    ) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.worker
            .write(move |c| {
                let inserted = c.execute(
                    "INSERT INTO federation_replay (key, expires_at) VALUES (?1, ?2) \
                     ON CONFLICT (key) DO NOTHING",
                    params![key, time(expires_at)],
                )?;
                Ok(inserted == 1)
            })
            .await
    }

    // --- end of replica coordination ---

    async fn insert_federated_run(&self, run: &FederatedRun) -> Result<(), StoreError> {
        let claims = encode(&run.claims)?;
        let (run_id, table) = (run.run_id.clone(), run.table.clone());
        let (iat, exp) = (time(run.iat), time(run.exp));
        self.worker
            .write(move |c| {
                c.execute(
                    "INSERT INTO federated_runs (run_id, table_name, claims, iat, exp) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![run_id, table, claims, iat, exp],
                )?;
                Ok(())
            })
            .await
    }

    async fn federated_runs(&self, selection: &RunMatch) -> Result<Vec<FederatedRun>, StoreError> {
        let selection = selection.clone();
        self.worker
            .read(move |c| {
                let mut statement = c.prepare_cached(
                    "SELECT run_id, claims, iat, exp FROM federated_runs \
                     WHERE table_name = ?1 ORDER BY iat, run_id",
                )?;
                let mut rows = statement.query(params![selection.table])?;
                // Filtered row by row: only matching runs are held.
                let mut runs = Vec::new();
                while let Some(row) = rows.next()? {
                    let claims: serde_json::Map<String, serde_json::Value> =
                        decode(&row.get::<_, String>(1)?)?;
                    if selection.matches(&selection.table, &claims) {
                        runs.push(FederatedRun {
                            run_id: row.get(0)?,
                            table: selection.table.clone(),
                            claims,
                            iat: from_time(row.get(2)?),
                            exp: from_time(row.get(3)?),
                        });
                    }
                }
                Ok(runs)
            })
            .await
    }

    async fn insert_federation_block(&self, block: &FederationBlock) -> Result<(), StoreError> {
        let claims = encode(&block.selection.claims)?;
        let table = block.selection.table.clone();
        let (since, until) = (time(block.since), time(block.until));
        self.worker
            .write(move |c| {
                c.execute(
                    "INSERT INTO federation_blocks (table_name, claims, since, until) \
                     VALUES (?1, ?2, ?3, ?4)",
                    params![table, claims, since, until],
                )?;
                Ok(())
            })
            .await
    }

    async fn federation_blocks(
        &self,
        table: &str,
        now: UnixTime,
    ) -> Result<Vec<FederationBlock>, StoreError> {
        let table = table.to_owned();
        self.worker
            .read(move |c| {
                let mut statement = c.prepare_cached(
                    "SELECT claims, since, until FROM federation_blocks \
                     WHERE table_name = ?1 AND until > ?2 ORDER BY id",
                )?;
                let rows = statement.query_map(params![table, time(now)], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })?;
                let mut blocks = Vec::new();
                for row in rows {
                    let (claims, since, until) = row?;
                    blocks.push(FederationBlock {
                        selection: RunMatch {
                            table: table.clone(),
                            claims: decode(&claims)?,
                        },
                        since: from_time(since),
                        until: from_time(until),
                    });
                }
                Ok(blocks)
            })
            .await
    }

    async fn purge_audit_before(&self, before: UnixTime) -> Result<u64, StoreError> {
        self.worker
            .write(move |c| audit::purge_before(c, before))
            .await
    }

    async fn purge(&self, now: UnixTime, grace: u64, horizon: UnixTime) -> Result<u64, StoreError> {
        let (now, cutoff, horizon) = (time(now), time(now.minus(grace)), time(horizon));
        let mut purged = 0_u64;
        for sql in PURGES {
            loop {
                let deleted = self
                    .worker
                    .write(move |c| {
                        let mut delete = c.prepare_cached(sql)?;
                        // Each statement names only some of the times.
                        for (name, value) in [
                            (":now", now),
                            (":cutoff", cutoff),
                            (":horizon", horizon),
                            (":step", PURGE_STEP),
                        ] {
                            if let Some(i) = delete.parameter_index(name)? {
                                delete.raw_bind_parameter(i, value)?;
                            }
                        }
                        Ok(delete.raw_execute()?)
                    })
                    .await?;
                purged = purged.saturating_add(u64::try_from(deleted).unwrap_or(u64::MAX));
                if i64::try_from(deleted).unwrap_or(i64::MAX) < PURGE_STEP {
                    break;
                }
            }
        }
        Ok(purged)
    }

    // Shared keys

    async fn key_manifest(&self) -> Result<Option<KeyManifest>, StoreError> {
        self.worker
            .read(|c| {
                c.prepare_cached("SELECT version, generation, data FROM key_manifest WHERE id = 1")?
                    .query_row([], |r| {
                        Ok(KeyManifest {
                            version: from_seq(r.get(0)?),
                            generation: from_seq(r.get(1)?),
                            data: r.get(2)?,
                        })
                    })
                    .optional()
                    .map_err(StoreError::from)
            })
            .await
    }

    async fn swap_key_manifest(
        &self,
        expected: Option<u64>,
        generation: u64,
        data: &str,
    ) -> Result<Option<u64>, StoreError> {
        let data = data.to_owned();
        self.worker
            .write(move |c| {
                let written = match expected {
                    None => c.execute(
                        "INSERT INTO key_manifest (id, version, generation, data) VALUES (1, 1, ?1, ?2) \
                         ON CONFLICT (id) DO NOTHING",
                        params![int(generation), data],
                    )?,
                    Some(version) => c.execute(
                        "UPDATE key_manifest SET version = version + 1, generation = ?1, data = ?2 \
                         WHERE id = 1 AND version = ?3",
                        params![int(generation), data, int(version)],
                    )?,
                };
                Ok((written == 1).then(|| expected.map_or(1, |v| v + 1)))
            })
            .await
    }

    async fn insert_key_blob(
        &self,
        kid: &str,
        generation: u64,
        blob: &[u8],
    ) -> Result<(), StoreError> {
        let (kid, blob) = (kid.to_owned(), blob.to_vec());
        self.worker
            .write(move |c| {
                c.execute(
                    "INSERT INTO key_blobs (kid, generation, blob) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (kid, generation) DO NOTHING",
                    params![kid, int(generation), blob],
                )?;
                Ok(())
            })
            .await
    }

    async fn key_blob(&self, kid: &str, generation: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let kid = kid.to_owned();
        self.worker
            .read(move |c| {
                c.prepare_cached("SELECT blob FROM key_blobs WHERE kid = ?1 AND generation = ?2")?
                    .query_row(params![kid, int(generation)], |r| r.get(0))
                    .optional()
                    .map_err(StoreError::from)
            })
            .await
    }

    async fn delete_key_blob(&self, kid: &str) -> Result<(), StoreError> {
        let kid = kid.to_owned();
        self.worker
            .write(move |c| {
                c.execute("DELETE FROM key_blobs WHERE kid = ?1", params![kid])?;
                Ok(())
            })
            .await
    }

    async fn delete_key_generation(&self, generation: u64) -> Result<(), StoreError> {
        self.worker
            .write(move |c| {
                c.execute(
                    "DELETE FROM key_blobs WHERE generation = ?1",
                    params![int(generation)],
                )?;
                c.execute(
                    "DELETE FROM shared_secrets WHERE generation = ?1",
                    params![int(generation)],
                )?;
                Ok(())
            })
            .await
    }

    async fn shared_secret(
        &self,
        name: &str,
        generation: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let name = name.to_owned();
        self.worker
            .read(move |c| secret_of(c, &name, generation))
            .await
    }

    async fn insert_shared_secret(
        &self,
        name: &str,
        generation: u64,
        blob: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let (name, blob) = (name.to_owned(), blob.to_vec());
        self.worker
            .write(move |c| {
                c.execute(
                    "INSERT INTO shared_secrets (name, generation, blob) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (name, generation) DO NOTHING",
                    params![name, int(generation), blob],
                )?;
                secret_of(c, &name, generation)?
                    .ok_or_else(|| StoreError::Corrupt(format!("shared secret {name} vanished")))
            })
            .await
    }
}

/// The sealed secret `name` of `generation`.
fn secret_of(c: &Connection, name: &str, generation: u64) -> Result<Option<Vec<u8>>, StoreError> {
    c.prepare_cached("SELECT blob FROM shared_secrets WHERE name = ?1 AND generation = ?2")?
        .query_row(params![name, int(generation)], |r| r.get(0))
        .optional()
        .map_err(StoreError::from)
}

#[cfg(test)]
pub(crate) mod tests;
