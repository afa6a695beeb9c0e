//! How the SQLite store keeps the audit log: each distinct context once, one small row per
//! event (schema and reasons in `migrations/sqlite/0003_audit_contexts.sql`).
//!
//! An agent that mints a thousand tokens under one rule produces a thousand events that differ
//! only in time, run and jti. Writing the shared part once per batch, not once per event, is
//! what keeps the audit log from costing more than the signature it records.

use std::borrow::Cow;
use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension as _, params, params_from_iter};
use serde::{Deserialize, Serialize};
use tailpass_verify::UnixTime;

use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::store::codec::{decode, encode, from_seq, from_time, next_seq, seq_floor, time};
use crate::store::{AuditFilter, AuditRecord, StoreError};

/// How many characters of a run id name its zone: a tailpass run id's creation millisecond.
const ZONE_PREFIX: usize = 10;

/// The zone of `run_id`: its first [`ZONE_PREFIX`] characters (SQL `substr(run_id, 1, 10)`).
fn zone_prefix(run_id: &str) -> &str {
    run_id
        .char_indices()
        .nth(ZONE_PREFIX)
        .map_or(run_id, |(end, _)| run_id.get(..end).unwrap_or(run_id))
}

/// The part of an event that repeats across events: everything but time, run, lineage and jti.
/// Its JSON is the key of `audit_context`; field names are those of [`AuditEvent`].
#[derive(Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Context<'a> {
    event: EventKind,
    outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refusal: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node_id: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node_name: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "<[String]>::is_empty")]
    tags: Cow<'a, [String]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_id: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "<[String]>::is_empty")]
    audience: Cow<'a, [String]>,
    #[serde(default, skip_serializing_if = "<[String]>::is_empty")]
    scopes: Cow<'a, [String]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    detail: Option<Cow<'a, str>>,
}

impl<'a> Context<'a> {
    fn of(e: &'a AuditEvent) -> Context<'a> {
        let borrow = |s: &'a Option<String>| s.as_deref().map(Cow::Borrowed);
        Context {
            event: e.event,
            outcome: e.outcome,
            reason: borrow(&e.reason),
            refusal: borrow(&e.refusal),
            user: borrow(&e.user),
            node_id: borrow(&e.node_id),
            node_name: borrow(&e.node_name),
            tags: Cow::Borrowed(&e.tags),
            client_id: borrow(&e.client_id),
            audience: Cow::Borrowed(&e.audience),
            scopes: Cow::Borrowed(&e.scopes),
            detail: borrow(&e.detail),
        }
    }
}

/// The per-event values of a row, beside its context.
struct Row {
    seq: i64,
    time: i64,
    run_id: Option<String>,
    run_label: Option<String>,
    parent_run_id: Option<String>,
    root_run_id: Option<String>,
    jti: Option<String>,
}

impl Row {
    fn into_record(self, context: Context<'static>) -> AuditRecord {
        let owned = |s: Option<Cow<'static, str>>| s.map(Cow::into_owned);
        AuditRecord {
            seq: from_seq(self.seq),
            event: AuditEvent {
                time: from_time(self.time),
                event: context.event,
                outcome: context.outcome,
                reason: owned(context.reason),
                refusal: owned(context.refusal),
                user: owned(context.user),
                node_id: owned(context.node_id),
                node_name: owned(context.node_name),
                tags: context.tags.into_owned(),
                client_id: owned(context.client_id),
                run_id: self.run_id,
                run_label: self.run_label,
                parent_run_id: self.parent_run_id,
                root_run_id: self.root_run_id,
                jti: self.jti,
                audience: context.audience.into_owned(),
                scopes: context.scopes.into_owned(),
                detail: owned(context.detail),
            },
        }
    }
}

/// Appends `events` inside the current write job, in order.
pub(super) fn append(c: &Connection, events: &[AuditEvent]) -> Result<(), StoreError> {
    write(c, events.iter().map(|e| (e, None)))
}

/// Writes `records` with their own `seq`s (increasing, above every stored one) inside the
/// current write job: an import into an empty store ([`crate::store::Store::import`]).
pub(super) fn import(c: &Connection, records: &[AuditRecord]) -> Result<(), StoreError> {
    write(
        c,
        records
            .iter()
            .map(|r| (&r.event, Some(i64::try_from(r.seq).unwrap_or(i64::MAX)))),
    )
}

/// Every event, oldest first, inside the current (read) transaction.
pub(super) fn all(c: &Connection) -> Result<Vec<AuditRecord>, StoreError> {
    let mut query = c.prepare(
        "SELECT a.seq, a.time, a.run_id, a.run_label, a.parent_run_id, a.root_run_id, a.jti, \
         c.data FROM audit a JOIN audit_context c ON c.id = a.context ORDER BY a.seq",
    )?;
    let rows = query.query_map([], row)?;
    rows.map(|r| {
        let (row, data) = r?;
        Ok(row.into_record(decode(&data)?))
    })
    .collect()
}

/// A row of [`select`]'s columns: the per-event values and the context's JSON.
fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Row, String)> {
    Ok((
        Row {
            seq: r.get(0)?,
            time: r.get(1)?,
            run_id: r.get(2)?,
            run_label: r.get(3)?,
            parent_run_id: r.get(4)?,
            root_run_id: r.get(5)?,
            jti: r.get(6)?,
        },
        r.get::<_, String>(7)?,
    ))
}

/// Writes `events` in order, each numbered by the `seq` given with it or else by the audit
/// rule ([`next_seq`]); a given `seq` must be above the previous one.
fn write<'e>(
    c: &Connection,
    events: impl Iterator<Item = (&'e AuditEvent, Option<i64>)>,
) -> Result<(), StoreError> {
    let mut last: i64 = c
        .prepare_cached("SELECT coalesce(max(seq), 0) FROM audit")?
        .query_row([], |r| r.get(0))?;
    // Context ids of this job only: an id is never trusted past the transaction it was read in.
    // Consecutive events usually share their context (one node minting under one rule), so the
    // previous one is compared before the map is hashed.
    let mut contexts: HashMap<Context<'_>, i64> = HashMap::new();
    let mut previous: Option<(Context<'_>, i64)> = None;
    // The seq range of each run-id prefix in this job: its zones.
    let mut zones: Vec<(&str, i64, i64)> = Vec::new();
    let mut insert = c.prepare_cached(
        "INSERT INTO audit (seq, time, context, run_id, run_label, parent_run_id, root_run_id, jti) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for (e, given) in events {
        let context = Context::of(e);
        let id = match &previous {
            Some((same, id)) if *same == context => *id,
            _ => {
                let id = match contexts.get(&context) {
                    Some(id) => *id,
                    None => {
                        let id = context_id(c, &context)?;
                        contexts.insert(Context::of(e), id);
                        id
                    }
                };
                previous = Some((context, id));
                id
            }
        };
        last = match given {
            Some(seq) if seq > last => seq,
            Some(seq) => {
                return Err(StoreError::Corrupt(format!(
                    "audit event {seq} is not above the previous one ({last})"
                )));
            }
            None => next_seq(e.time, last),
        };
        if let Some(run_id) = &e.run_id {
            let prefix = zone_prefix(run_id);
            // Prefixes arrive almost in order (creation time), so the newest zone usually fits.
            match zones.iter_mut().rev().find(|(p, _, _)| *p == prefix) {
                Some((_, _, end)) => *end = last,
                None => zones.push((prefix, last, last)),
            }
        }
        insert.execute(params![
            last,
            time(e.time),
            id,
            e.run_id,
            e.run_label,
            e.parent_run_id,
            e.root_run_id,
            e.jti,
        ])?;
    }
    let mut zone = c.prepare_cached(
        "INSERT INTO audit_run_zone (prefix, first_seq, last_seq) VALUES (?1, ?2, ?3)",
    )?;
    for (prefix, first, end) in zones {
        zone.execute(params![prefix, first, end])?;
    }
    Ok(())
}

/// The id of `context`, stored if new.
fn context_id(c: &Connection, context: &Context<'_>) -> Result<i64, StoreError> {
    let data = encode(context)?;
    c.prepare_cached(
        "INSERT INTO audit_context (event, outcome, user_login, node_id, client_id, data) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (data) DO NOTHING",
    )?
    .execute(params![
        context.event.as_str(),
        context.outcome.as_str(),
        context.user,
        context.node_id,
        context.client_id,
        data,
    ])?;
    c.prepare_cached("SELECT id FROM audit_context WHERE data = ?1")?
        .query_row([&data], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::Corrupt("an audit context vanished while it was written".into()))
}

/// Drops the events before `before` as one range from the log's start: the horizon moves up
/// to `before`'s seq floor (never down), then the events, run zones and contexts below it go.
/// The triggers of migration 0006 refuse any deletion above the horizon.
pub(super) fn purge_before(c: &Connection, before: UnixTime) -> Result<u64, StoreError> {
    let floor = seq_floor(before);
    c.execute(
        "UPDATE audit_horizon SET seq = max(seq, ?1) WHERE id = 1",
        params![floor],
    )?;
    let events = c.execute(
        "DELETE FROM audit WHERE seq < (SELECT seq FROM audit_horizon WHERE id = 1)",
        [],
    )?;
    c.execute(
        "DELETE FROM audit_run_zone WHERE last_seq < (SELECT seq FROM audit_horizon WHERE id = 1)",
        [],
    )?;
    if events > 0 {
        c.execute(
            "DELETE FROM audit_context WHERE NOT EXISTS \
             (SELECT 1 FROM audit WHERE audit.context = audit_context.id)",
            [],
        )?;
    }
    Ok(u64::try_from(events).unwrap_or(u64::MAX))
}

/// Lists the events `filter` selects, oldest first.
pub(super) fn query(c: &Connection, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
    let (sql, args) = select(filter);
    let mut query = c.prepare(&sql)?;
    let rows = query.query_map(params_from_iter(args), row)?;
    let mut records = rows
        .map(|row| {
            let (row, data) = row?;
            Ok(row.into_record(decode(&data)?))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    if filter.after_seq.is_none() {
        records.reverse();
    }
    Ok(records)
}

/// The statement that lists what `filter` selects (newest first unless paging), and its
/// parameters.
pub(super) fn select(filter: &AuditFilter) -> (String, Vec<rusqlite::types::Value>) {
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    // Each value is bound as a numbered parameter; the SQL text holds only placeholders.
    let mut bind = |value: rusqlite::types::Value| {
        args.push(value);
        format!("?{}", args.len())
    };
    let mut sql = String::from(
        "SELECT a.seq, a.time, a.run_id, a.run_label, a.parent_run_id, a.root_run_id, a.jti, \
         c.data FROM audit a JOIN audit_context c ON c.id = a.context WHERE 1 = 1",
    );
    if let Some(run) = &filter.run {
        let p = bind(run.clone().into());
        let prefix = bind(zone_prefix(run).to_owned().into());
        sql.push_str(&format!(
            " AND a.seq IN (SELECT e.seq FROM audit_run_zone z JOIN audit e \
             ON e.seq BETWEEN z.first_seq AND z.last_seq WHERE z.prefix = {prefix} AND e.run_id = {p} \
             UNION ALL SELECT seq FROM audit WHERE parent_run_id = {p} \
             UNION ALL SELECT seq FROM audit WHERE root_run_id = {p})"
        ));
    }
    // The filters on the shared part select contexts first; the dictionary is small.
    let mut context = Vec::new();
    if let Some(node) = &filter.node {
        context.push(format!("node_id = {}", bind(node.clone().into())));
    }
    if let Some(user) = &filter.user {
        context.push(format!("user_login = {}", bind(user.clone().into())));
    }
    if let Some(event) = filter.event {
        context.push(format!(
            "event = {}",
            bind(event.as_str().to_owned().into())
        ));
    }
    if !context.is_empty() {
        sql.push_str(&format!(
            " AND a.context IN (SELECT id FROM audit_context WHERE {})",
            context.join(" AND ")
        ));
    }
    if let Some(since) = filter.since {
        // seq >= time * 1e6 for every row, so this range on the key loses nothing.
        let floor = bind(seq_floor(since).into());
        let since = bind(time(since).into());
        sql.push_str(&format!(" AND a.seq >= {floor} AND a.time >= {since}"));
    }
    let limit = i64::from(filter.limit.clamp(1, 10_000));
    match filter.after_seq {
        Some(after) => {
            let after = bind(i64::try_from(after).unwrap_or(i64::MAX).into());
            sql.push_str(&format!(
                " AND a.seq > {after} ORDER BY a.seq ASC LIMIT {}",
                bind(limit.into())
            ));
        }
        None => sql.push_str(&format!(
            " ORDER BY a.seq DESC LIMIT {}",
            bind(limit.into())
        )),
    }
    (sql, args)
}
