//! The SQLite side of whole-store copies: every table read in one read transaction, written
//! in one write job.

use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params};

use super::audit;
use crate::store::codec::{from_seq, int};
use crate::store::snapshot::{
    BlobRow, ClientRow, CodeRow, ConsentRow, FamilyRow, FederatedRunRow, FederationBlockRow,
    RevocationRow, Snapshot, TABLES, TokenRow, not_empty,
};
use crate::store::{KeyManifest, StoreError};

/// Every row, as of one commit: one read transaction on `c`.
pub(super) fn export(c: &Connection) -> Result<Snapshot, StoreError> {
    let tx = rusqlite::Transaction::new_unchecked(c, TransactionBehavior::Deferred)?;
    let mut s = Snapshot {
        clients: rows(
            &tx,
            "SELECT client_id, created_at, data FROM clients",
            |r| {
                Ok(ClientRow {
                    client_id: r.get(0)?,
                    created_at: r.get(1)?,
                    data: r.get(2)?,
                })
            },
        )?,
        consents: rows(
            &tx,
            "SELECT client_id, user_key, granted_at, data FROM consents",
            |r| {
                Ok(ConsentRow {
                    client_id: r.get(0)?,
                    user_key: r.get(1)?,
                    granted_at: r.get(2)?,
                    data: r.get(3)?,
                })
            },
        )?,
        codes: rows(
            &tx,
            "SELECT code_hash, client_id, expires_at, redeemed_at, replayed_at, data FROM codes",
            |r| {
                Ok(CodeRow {
                    code_hash: r.get(0)?,
                    client_id: r.get(1)?,
                    expires_at: r.get(2)?,
                    redeemed_at: r.get(3)?,
                    replayed_at: r.get(4)?,
                    data: r.get(5)?,
                })
            },
        )?,
        families: rows(
            &tx,
            "SELECT family_id, client_id, user_login, node_id, created_at, expires_at, \
             revoked_at, data FROM refresh_families",
            |r| {
                Ok(FamilyRow {
                    family_id: r.get(0)?,
                    client_id: r.get(1)?,
                    user_login: r.get(2)?,
                    node_id: r.get(3)?,
                    created_at: r.get(4)?,
                    expires_at: r.get(5)?,
                    revoked_at: r.get(6)?,
                    data: r.get(7)?,
                })
            },
        )?,
        tokens: rows(
            &tx,
            "SELECT token_hash, family_id, issued_at, spent_at FROM refresh_tokens",
            |r| {
                Ok(TokenRow {
                    token_hash: r.get(0)?,
                    family_id: r.get(1)?,
                    issued_at: r.get(2)?,
                    spent_at: r.get(3)?,
                })
            },
        )?,
        revocations: rows(
            &tx,
            "SELECT seq, kind, value, revoked_at, until, lifted_at, lift_seq FROM revocations",
            |r| {
                Ok(RevocationRow {
                    seq: r.get(0)?,
                    kind: r.get(1)?,
                    value: r.get(2)?,
                    revoked_at: r.get(3)?,
                    until: r.get(4)?,
                    lifted_at: r.get(5)?,
                    lift_seq: r.get(6)?,
                })
            },
        )?,
        revocation_seq: revocation_counter(&tx)?,
        audit: audit::all(&tx)?,
        audit_horizon: tx.query_row("SELECT seq FROM audit_horizon WHERE id = 1", [], |r| {
            r.get(0)
        })?,
        key_manifest: tx
            .query_row(
                "SELECT version, generation, data FROM key_manifest WHERE id = 1",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get(2)?)),
            )
            .optional()?
            .map(|(version, generation, data)| KeyManifest {
                version: from_seq(version),
                generation: from_seq(generation),
                data,
            }),
        key_blobs: blobs(&tx, "SELECT kid, generation, blob FROM key_blobs")?,
        shared_secrets: blobs(&tx, "SELECT name, generation, blob FROM shared_secrets")?,
        federated_runs: rows(
            &tx,
            "SELECT run_id, table_name, claims, iat, exp FROM federated_runs",
            |r| {
                Ok(FederatedRunRow {
                    run_id: r.get(0)?,
                    table_name: r.get(1)?,
                    claims: r.get(2)?,
                    iat: r.get(3)?,
                    exp: r.get(4)?,
                })
            },
        )?,
        federation_blocks: rows(
            &tx,
            "SELECT table_name, claims, since, until FROM federation_blocks",
            |r| {
                Ok(FederationBlockRow {
                    table_name: r.get(0)?,
                    claims: r.get(1)?,
                    since: r.get(2)?,
                    until: r.get(3)?,
                })
            },
        )?,
    };
    tx.commit()?;
    s.sort();
    Ok(s)
}

/// Writes `s` into the store, which must be empty, inside the current write job.
pub(super) fn import(c: &Connection, s: &Snapshot) -> Result<(), StoreError> {
    refuse_unless_empty(c)?;
    let mut insert =
        c.prepare("INSERT INTO clients (client_id, created_at, data) VALUES (?1, ?2, ?3)")?;
    for r in &s.clients {
        insert.execute(params![r.client_id, r.created_at, r.data])?;
    }
    let mut insert = c.prepare(
        "INSERT INTO consents (client_id, user_key, granted_at, data) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for r in &s.consents {
        insert.execute(params![r.client_id, r.user_key, r.granted_at, r.data])?;
    }
    let mut insert = c.prepare(
        "INSERT INTO codes (code_hash, client_id, expires_at, redeemed_at, replayed_at, data) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for r in &s.codes {
        insert.execute(params![
            r.code_hash,
            r.client_id,
            r.expires_at,
            r.redeemed_at,
            r.replayed_at,
            r.data
        ])?;
    }
    let mut insert = c.prepare(
        "INSERT INTO refresh_families (family_id, client_id, user_login, node_id, created_at, \
         expires_at, revoked_at, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for r in &s.families {
        insert.execute(params![
            r.family_id,
            r.client_id,
            r.user_login,
            r.node_id,
            r.created_at,
            r.expires_at,
            r.revoked_at,
            r.data
        ])?;
    }
    let mut insert = c.prepare(
        "INSERT INTO refresh_tokens (token_hash, family_id, issued_at, spent_at) \
         VALUES (?1, ?2, ?3, ?4)",
    )?;
    for r in &s.tokens {
        insert.execute(params![r.token_hash, r.family_id, r.issued_at, r.spent_at])?;
    }
    let mut insert = c.prepare(
        "INSERT INTO revocations (seq, kind, value, revoked_at, until, lifted_at, lift_seq) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for r in &s.revocations {
        insert.execute(params![
            r.seq,
            r.kind,
            r.value,
            r.revoked_at,
            r.until,
            r.lifted_at,
            r.lift_seq
        ])?;
    }
    // The AUTOINCREMENT counter is the revocation sequence (lifts advance it too): set to the
    // snapshot's, so the next revocation or lift is numbered after every imported one.
    let floor = s.next_revocation_floor();
    if floor > 0 {
        let set = c.execute(
            "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'revocations'",
            params![floor],
        )?;
        if set == 0 {
            c.execute(
                "INSERT INTO sqlite_sequence (name, seq) VALUES ('revocations', ?1)",
                params![floor],
            )?;
        }
    }
    audit::import(c, &s.audit)?;
    c.execute(
        "UPDATE audit_horizon SET seq = ?1 WHERE id = 1",
        params![s.audit_horizon],
    )?;
    if let Some(m) = &s.key_manifest {
        c.execute(
            "INSERT INTO key_manifest (id, version, generation, data) VALUES (1, ?1, ?2, ?3)",
            params![int(m.version), int(m.generation), m.data],
        )?;
    }
    for (table, column, rows) in [
        ("key_blobs", "kid", &s.key_blobs),
        ("shared_secrets", "name", &s.shared_secrets),
    ] {
        let mut insert = c.prepare(&format!(
            "INSERT INTO {table} ({column}, generation, blob) VALUES (?1, ?2, ?3)"
        ))?;
        for r in rows {
            insert.execute(params![r.name, r.generation, r.blob])?;
        }
    }
    let mut insert = c.prepare(
        "INSERT INTO federated_runs (run_id, table_name, claims, iat, exp) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for r in &s.federated_runs {
        insert.execute(params![r.run_id, r.table_name, r.claims, r.iat, r.exp])?;
    }
    let mut insert = c.prepare(
        "INSERT INTO federation_blocks (table_name, claims, since, until) \
         VALUES (?1, ?2, ?3, ?4)",
    )?;
    for r in &s.federation_blocks {
        insert.execute(params![r.table_name, r.claims, r.since, r.until])?;
    }
    Ok(())
}

/// Refuses unless every table a snapshot fills is empty and the sequences are at their start.
fn refuse_unless_empty(c: &Connection) -> Result<(), StoreError> {
    for table in TABLES {
        let any: bool =
            c.query_row(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), [], |r| {
                r.get(0)
            })?;
        if any {
            return Err(not_empty(table));
        }
    }
    if revocation_counter(c)? != 0 {
        return Err(not_empty("the revocation sequence has started"));
    }
    let horizon: i64 = c.query_row("SELECT seq FROM audit_horizon WHERE id = 1", [], |r| {
        r.get(0)
    })?;
    if horizon != 0 {
        return Err(not_empty("the audit log was purged"));
    }
    Ok(())
}

/// The last number of the revocation sequence (0 before the first revocation).
fn revocation_counter(c: &Connection) -> Result<i64, StoreError> {
    Ok(c.query_row(
        "SELECT seq FROM sqlite_sequence WHERE name = 'revocations'",
        [],
        |r| r.get(0),
    )
    .optional()?
    .unwrap_or(0))
}

fn rows<T>(
    c: &Connection,
    sql: &str,
    f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let mut statement = c.prepare(sql)?;
    let rows = statement.query_map([], f)?;
    Ok(rows.collect::<rusqlite::Result<Vec<T>>>()?)
}

fn blobs(c: &Connection, sql: &str) -> Result<Vec<BlobRow>, StoreError> {
    rows(c, sql, |r| {
        Ok(BlobRow {
            name: r.get(0)?,
            generation: r.get(1)?,
            blob: r.get(2)?,
        })
    })
}
