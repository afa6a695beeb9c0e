//! How the PostgreSQL store keeps the audit log: one row per event, written a whole batch per
//! statement (group commit), numbered from a locked counter.
//!
//! The counter row (`counters.audit`) is locked by the appending transaction until it
//! commits, so replicas append one batch at a time and `seq` order is commit order: a reader
//! paging with `after_seq` never skips an event that commits later with a lower number. Each
//! event's `seq` is `max(time × 10⁶, previous + 1)`, as in SQLite.

use deadpool_postgres::GenericClient as _;
use tailpass_verify::UnixTime;
use tokio_postgres::types::ToSql;

use super::get;
use crate::audit::AuditEvent;
use crate::store::codec::{decode, encode, from_seq, next_seq, seq_floor, time};
use crate::store::{AuditFilter, AuditRecord, StoreError};

/// Inserts a batch of events, one array per column (in this order).
pub(super) const INSERT: &str = "INSERT INTO audit (seq, time, event, outcome, user_login, \
     node_id, client_id, run_id, parent_run_id, root_run_id, data) \
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
     $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[])";

/// Appends `events` in one transaction and one statement.
pub(super) async fn append(
    conn: &mut deadpool_postgres::Object,
    events: &[AuditEvent],
) -> Result<(), StoreError> {
    let tx = conn.transaction().await?;
    let counter = tx
        .prepare_cached("SELECT value FROM counters WHERE name = 'audit' FOR UPDATE")
        .await?;
    let mut last: i64 = get(&tx.query_one(&counter, &[]).await?, 0)?;
    let n = events.len();
    let (mut seqs, mut times) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut kinds, mut outcomes, mut data) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut users, mut nodes, mut clients) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut runs, mut parents, mut roots) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for e in events {
        last = next_seq(e.time, last);
        seqs.push(last);
        times.push(time(e.time));
        kinds.push(e.event.as_str());
        outcomes.push(e.outcome.as_str());
        users.push(e.user.as_deref());
        nodes.push(e.node_id.as_deref());
        clients.push(e.client_id.as_deref());
        runs.push(e.run_id.as_deref());
        parents.push(e.parent_run_id.as_deref());
        roots.push(e.root_run_id.as_deref());
        data.push(encode(e)?);
    }
    let insert = tx.prepare_cached(INSERT).await?;
    tx.execute(
        &insert,
        &[
            &seqs, &times, &kinds, &outcomes, &users, &nodes, &clients, &runs, &parents, &roots,
            &data,
        ],
    )
    .await?;
    let advance = tx
        .prepare_cached("UPDATE counters SET value = $1 WHERE name = 'audit'")
        .await?;
    tx.execute(&advance, &[&last]).await?;
    tx.commit().await?;
    Ok(())
}

/// Lists the events `filter` selects, oldest first.
pub(super) async fn query(
    conn: &deadpool_postgres::Object,
    filter: &AuditFilter,
) -> Result<Vec<AuditRecord>, StoreError> {
    let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    // Each value is bound as a numbered parameter; the SQL text holds only placeholders.
    let mut bind = |value: Box<dyn ToSql + Sync + Send>| {
        args.push(value);
        format!("${}", args.len())
    };
    let mut sql = String::from("SELECT seq, data FROM audit WHERE true");
    if let Some(run) = &filter.run {
        let p = bind(Box::new(run.clone()));
        sql.push_str(&format!(
            " AND (run_id = {p} OR parent_run_id = {p} OR root_run_id = {p})"
        ));
    }
    if let Some(node) = &filter.node {
        sql.push_str(&format!(" AND node_id = {}", bind(Box::new(node.clone()))));
    }
    if let Some(user) = &filter.user {
        sql.push_str(&format!(
            " AND user_login = {}",
            bind(Box::new(user.clone()))
        ));
    }
    if let Some(event) = filter.event {
        sql.push_str(&format!(" AND event = {}", bind(Box::new(event.as_str()))));
    }
    if let Some(since) = filter.since {
        let floor = bind(Box::new(seq_floor(since)));
        let since = bind(Box::new(time(since)));
        sql.push_str(&format!(" AND seq >= {floor} AND time >= {since}"));
    }
    let limit = i64::from(filter.limit.clamp(1, 10_000));
    match filter.after_seq {
        Some(after) => {
            let after = bind(Box::new(i64::try_from(after).unwrap_or(i64::MAX)));
            let limit = bind(Box::new(limit));
            sql.push_str(&format!(
                " AND seq > {after} ORDER BY seq ASC LIMIT {limit}"
            ));
        }
        None => {
            let limit = bind(Box::new(limit));
            sql.push_str(&format!(" ORDER BY seq DESC LIMIT {limit}"));
        }
    }
    let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref() as _).collect();
    let rows = conn.query(&sql, &params).await?;
    let mut records = rows
        .iter()
        .map(|row| {
            Ok(AuditRecord {
                seq: from_seq(get(row, 0)?),
                event: decode(&get::<String>(row, 1)?)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    if filter.after_seq.is_none() {
        records.reverse();
    }
    Ok(records)
}

/// Drops the events before `before` as one range from the log's start: the horizon moves up
/// to `before`'s seq floor (never down), then the events below it go. The triggers refuse any
/// deletion above the horizon.
pub(super) async fn purge_before(
    conn: &mut deadpool_postgres::Object,
    before: UnixTime,
) -> Result<u64, StoreError> {
    let tx = conn.transaction().await?;
    tx.execute(
        "UPDATE audit_horizon SET seq = greatest(seq, $1) WHERE id = 1",
        &[&seq_floor(before)],
    )
    .await?;
    let events = tx
        .execute(
            "DELETE FROM audit WHERE seq < (SELECT seq FROM audit_horizon WHERE id = 1)",
            &[],
        )
        .await?;
    tx.commit().await?;
    Ok(events)
}
