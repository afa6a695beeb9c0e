//! The PostgreSQL side of whole-store copies: every table read in one `REPEATABLE READ`
//! transaction (one snapshot of the database), written in one transaction.

use tokio_postgres::IsolationLevel;

use super::get;
use crate::audit::AuditEvent;
use crate::store::codec::{decode, encode, from_seq, int};
use crate::store::snapshot::{
    BlobRow, ClientRow, CodeRow, ConsentRow, FamilyRow, FederatedRunRow, FederationBlockRow,
    RevocationRow, Snapshot, TABLES, TokenRow, not_empty,
};
use crate::store::{AuditRecord, KeyManifest, StoreError};

/// Audit events per `INSERT … SELECT FROM unnest(…)` of an import.
const AUDIT_CHUNK: usize = 5_000;

/// Every row, as of one snapshot of the database.
pub(super) async fn export(conn: &mut deadpool_postgres::Object) -> Result<Snapshot, StoreError> {
    let tx = conn
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let q = |sql: &'static str| {
        let tx = &tx;
        async move { tx.query(sql, &[]).await.map_err(StoreError::from) }
    };
    let clients = q("SELECT client_id, created_at, data FROM clients")
        .await?
        .iter()
        .map(|r| {
            Ok(ClientRow {
                client_id: get(r, 0)?,
                created_at: get(r, 1)?,
                data: get(r, 2)?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    let consents = q("SELECT client_id, user_key, granted_at, data FROM consents")
        .await?
        .iter()
        .map(|r| {
            Ok(ConsentRow {
                client_id: get(r, 0)?,
                user_key: get(r, 1)?,
                granted_at: get(r, 2)?,
                data: get(r, 3)?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    let codes =
        q("SELECT code_hash, client_id, expires_at, redeemed_at, replayed_at, data FROM codes")
            .await?
            .iter()
            .map(|r| {
                Ok(CodeRow {
                    code_hash: get(r, 0)?,
                    client_id: get(r, 1)?,
                    expires_at: get(r, 2)?,
                    redeemed_at: get(r, 3)?,
                    replayed_at: get(r, 4)?,
                    data: get(r, 5)?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
    let families = q(
        "SELECT family_id, client_id, user_login, node_id, created_at, expires_at, \
         revoked_at, data FROM refresh_families",
    )
    .await?
    .iter()
    .map(|r| {
        Ok(FamilyRow {
            family_id: get(r, 0)?,
            client_id: get(r, 1)?,
            user_login: get(r, 2)?,
            node_id: get(r, 3)?,
            created_at: get(r, 4)?,
            expires_at: get(r, 5)?,
            revoked_at: get(r, 6)?,
            data: get(r, 7)?,
        })
    })
    .collect::<Result<_, StoreError>>()?;
    let tokens = q("SELECT token_hash, family_id, issued_at, spent_at FROM refresh_tokens")
        .await?
        .iter()
        .map(|r| {
            Ok(TokenRow {
                token_hash: get(r, 0)?,
                family_id: get(r, 1)?,
                issued_at: get(r, 2)?,
                spent_at: get(r, 3)?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    let revocations =
        q("SELECT seq, kind, value, revoked_at, until, lifted_at, lift_seq FROM revocations")
            .await?
            .iter()
            .map(|r| {
                Ok(RevocationRow {
                    seq: get(r, 0)?,
                    kind: get(r, 1)?,
                    value: get(r, 2)?,
                    revoked_at: get(r, 3)?,
                    until: get(r, 4)?,
                    lifted_at: get(r, 5)?,
                    lift_seq: get(r, 6)?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
    let revocation_seq = get(
        &tx.query_one("SELECT value FROM counters WHERE name = 'revocation'", &[])
            .await?,
        0,
    )?;
    let audit = q("SELECT seq, data FROM audit ORDER BY seq")
        .await?
        .iter()
        .map(|r| {
            Ok(AuditRecord {
                seq: from_seq(get(r, 0)?),
                event: decode::<AuditEvent>(get::<&str>(r, 1)?)?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    let audit_horizon = get(
        &tx.query_one("SELECT seq FROM audit_horizon WHERE id = 1", &[])
            .await?,
        0,
    )?;
    let key_manifest = tx
        .query_opt(
            "SELECT version, generation, data FROM key_manifest WHERE id = 1",
            &[],
        )
        .await?
        .map(|r| {
            Ok::<_, StoreError>(KeyManifest {
                version: from_seq(get(&r, 0)?),
                generation: from_seq(get(&r, 1)?),
                data: get(&r, 2)?,
            })
        })
        .transpose()?;
    let blobs = |rows: Vec<tokio_postgres::Row>| {
        rows.iter()
            .map(|r| {
                Ok(BlobRow {
                    name: get(r, 0)?,
                    generation: get(r, 1)?,
                    blob: get(r, 2)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()
    };
    let key_blobs = blobs(q("SELECT kid, generation, blob FROM key_blobs").await?)?;
    let shared_secrets = blobs(q("SELECT name, generation, blob FROM shared_secrets").await?)?;
    let federated_runs = q("SELECT run_id, table_name, claims, iat, exp FROM federated_runs")
        .await?
        .iter()
        .map(|r| {
            Ok(FederatedRunRow {
                run_id: get(r, 0)?,
                table_name: get(r, 1)?,
                claims: get(r, 2)?,
                iat: get(r, 3)?,
                exp: get(r, 4)?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    let federation_blocks = q("SELECT table_name, claims, since, until FROM federation_blocks")
        .await?
        .iter()
        .map(|r| {
            Ok(FederationBlockRow {
                table_name: get(r, 0)?,
                claims: get(r, 1)?,
                since: get(r, 2)?,
                until: get(r, 3)?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    tx.commit().await?;
    let mut s = Snapshot {
        clients,
        consents,
        codes,
        families,
        tokens,
        revocations,
        revocation_seq,
        audit,
        audit_horizon,
        key_manifest,
        key_blobs,
        shared_secrets,
        federated_runs,
        federation_blocks,
    };
    s.sort();
    Ok(s)
}

/// Writes `s` into the database, which must be empty, in one transaction.
pub(super) async fn import(
    conn: &mut deadpool_postgres::Object,
    s: &Snapshot,
) -> Result<(), StoreError> {
    let tx = conn.transaction().await?;
    // Both counters locked first: no revocation, lift or audit event of a running replica
    // commits between the emptiness check and the import.
    let counters = tx
        .query(
            "SELECT name, value FROM counters WHERE name IN ('revocation', 'audit') \
             ORDER BY name FOR UPDATE",
            &[],
        )
        .await?;
    for table in TABLES {
        let any: bool = get(
            &tx.query_one(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), &[])
                .await?,
            0,
        )?;
        if any {
            return Err(not_empty(table));
        }
    }
    for row in &counters {
        if get::<i64>(row, 1)? != 0 {
            return Err(not_empty("a sequence has started"));
        }
    }
    let horizon: i64 = get(
        &tx.query_one("SELECT seq FROM audit_horizon WHERE id = 1", &[])
            .await?,
        0,
    )?;
    if horizon != 0 {
        return Err(not_empty("the audit log was purged"));
    }

    let insert = tx
        .prepare("INSERT INTO clients (client_id, created_at, data) VALUES ($1, $2, $3)")
        .await?;
    for r in &s.clients {
        tx.execute(&insert, &[&r.client_id, &r.created_at, &r.data])
            .await?;
    }
    let insert = tx
        .prepare(
            "INSERT INTO consents (client_id, user_key, granted_at, data) VALUES ($1, $2, $3, $4)",
        )
        .await?;
    for r in &s.consents {
        tx.execute(
            &insert,
            &[&r.client_id, &r.user_key, &r.granted_at, &r.data],
        )
        .await?;
    }
    let insert = tx
        .prepare(
            "INSERT INTO codes (code_hash, client_id, expires_at, redeemed_at, replayed_at, data) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await?;
    for r in &s.codes {
        tx.execute(
            &insert,
            &[
                &r.code_hash,
                &r.client_id,
                &r.expires_at,
                &r.redeemed_at,
                &r.replayed_at,
                &r.data,
            ],
        )
        .await?;
    }
    let insert = tx
        .prepare(
            "INSERT INTO refresh_families (family_id, client_id, user_login, node_id, created_at, \
             expires_at, revoked_at, data) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .await?;
    for r in &s.families {
        tx.execute(
            &insert,
            &[
                &r.family_id,
                &r.client_id,
                &r.user_login,
                &r.node_id,
                &r.created_at,
                &r.expires_at,
                &r.revoked_at,
                &r.data,
            ],
        )
        .await?;
    }
    let insert = tx
        .prepare(
            "INSERT INTO refresh_tokens (token_hash, family_id, issued_at, spent_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .await?;
    for r in &s.tokens {
        tx.execute(
            &insert,
            &[&r.token_hash, &r.family_id, &r.issued_at, &r.spent_at],
        )
        .await?;
    }
    let insert = tx
        .prepare(
            "INSERT INTO revocations (seq, kind, value, revoked_at, until, lifted_at, lift_seq) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .await?;
    for r in &s.revocations {
        tx.execute(
            &insert,
            &[
                &r.seq,
                &r.kind,
                &r.value,
                &r.revoked_at,
                &r.until,
                &r.lifted_at,
                &r.lift_seq,
            ],
        )
        .await?;
    }
    let insert = tx.prepare(super::audit::INSERT).await?;
    for chunk in s.audit.chunks(AUDIT_CHUNK) {
        let seqs: Vec<i64> = chunk.iter().map(|r| int(r.seq)).collect();
        let times: Vec<i64> = chunk
            .iter()
            .map(|r| crate::store::codec::time(r.event.time))
            .collect();
        let kinds: Vec<&str> = chunk.iter().map(|r| r.event.event.as_str()).collect();
        let outcomes: Vec<&str> = chunk.iter().map(|r| r.event.outcome.as_str()).collect();
        let users: Vec<Option<&str>> = chunk.iter().map(|r| r.event.user.as_deref()).collect();
        let nodes: Vec<Option<&str>> = chunk.iter().map(|r| r.event.node_id.as_deref()).collect();
        let clients: Vec<Option<&str>> =
            chunk.iter().map(|r| r.event.client_id.as_deref()).collect();
        let runs: Vec<Option<&str>> = chunk.iter().map(|r| r.event.run_id.as_deref()).collect();
        let parents: Vec<Option<&str>> = chunk
            .iter()
            .map(|r| r.event.parent_run_id.as_deref())
            .collect();
        let roots: Vec<Option<&str>> = chunk
            .iter()
            .map(|r| r.event.root_run_id.as_deref())
            .collect();
        let data = chunk
            .iter()
            .map(|r| encode(&r.event))
            .collect::<Result<Vec<_>, _>>()?;
        tx.execute(
            &insert,
            &[
                &seqs, &times, &kinds, &outcomes, &users, &nodes, &clients, &runs, &parents,
                &roots, &data,
            ],
        )
        .await?;
    }
    tx.execute(
        "UPDATE counters SET value = $1 WHERE name = 'revocation'",
        &[&s.next_revocation_floor()],
    )
    .await?;
    tx.execute(
        "UPDATE counters SET value = $1 WHERE name = 'audit'",
        &[&s.audit_floor()],
    )
    .await?;
    tx.execute(
        "UPDATE audit_horizon SET seq = $1 WHERE id = 1",
        &[&s.audit_horizon],
    )
    .await?;
    if let Some(m) = &s.key_manifest {
        tx.execute(
            "INSERT INTO key_manifest (id, version, generation, data) VALUES (1, $1, $2, $3)",
            &[&int(m.version), &int(m.generation), &m.data],
        )
        .await?;
    }
    for (sql, rows) in [
        (
            "INSERT INTO key_blobs (kid, generation, blob) VALUES ($1, $2, $3)",
            &s.key_blobs,
        ),
        (
            "INSERT INTO shared_secrets (name, generation, blob) VALUES ($1, $2, $3)",
            &s.shared_secrets,
        ),
    ] {
        let insert = tx.prepare(sql).await?;
        for r in rows {
            tx.execute(&insert, &[&r.name, &r.generation, &r.blob])
                .await?;
        }
    }
    let insert = tx
        .prepare(
            "INSERT INTO federated_runs (run_id, table_name, claims, iat, exp) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    for r in &s.federated_runs {
        tx.execute(
            &insert,
            &[&r.run_id, &r.table_name, &r.claims, &r.iat, &r.exp],
        )
        .await?;
    }
    let insert = tx
        .prepare(
            "INSERT INTO federation_blocks (table_name, claims, since, until) \
             VALUES ($1, $2, $3, $4)",
        )
        .await?;
    for r in &s.federation_blocks {
        tx.execute(&insert, &[&r.table_name, &r.claims, &r.since, &r.until])
            .await?;
    }
    tx.commit().await?;
    Ok(())
}
