//! `tailpass audit`: the issuer's audit log through the admin API, for people or, with
//! `--json`, as JSON lines; with `--gateway-log`, merged with gateways' call logs into one
//! timeline ([`super::timeline`]), each line saying where it came from.

use std::collections::BTreeSet;

use axum::http::Method;

use super::admin::decode;
use super::timeline::{Entry, LoggedCall, MAX_RUNS, Selection, Timeline, run_tree};
use super::{CommandError, fail};
use crate::admin::{AuditQuery, PREFIX};
use crate::cli::AuditArgs;
use crate::commands::admin_client::AdminClient;
use crate::config::GlobalOptions;
use crate::federation::runs::{FederatedRun, RunMatch};
use crate::store::AuditRecord;

/// The most events the admin API answers at once.
const MAX_PAGE: u32 = 10_000;

/// `tailpass audit`.
pub async fn audit(global: &GlobalOptions, args: AuditArgs) -> Result<(), CommandError> {
    let admin = AdminClient::new(global).map_err(fail)?;
    if let Some(table) = &args.fed {
        return federated(&admin, table, &args).await;
    }
    let query = AuditQuery {
        run: args.run.clone(),
        node: args.node.clone(),
        user: args.user.clone(),
        since: args.since,
        after: None,
        limit: Some(args.limit),
    };
    let records = events(&admin, &query).await?;
    if args.gateway_logs.is_empty() {
        for record in &records {
            if args.json {
                println!("{}", serde_json::to_string(record).map_err(fail)?);
            } else {
                println!("{}", issuer_line(record, false));
            }
        }
        return Ok(());
    }
    merged(&admin, query, records, &args).await
}

/// `tailpass audit --fed NAME --claim K=V …`: the runs minted from matching external
/// tokens, each with its events (its issuance, its revocation, the runs exchanged from it),
/// in the log's order, the newest `--limit`.
async fn federated(admin: &AdminClient, table: &str, args: &AuditArgs) -> Result<(), CommandError> {
    let selection = RunMatch {
        table: table.to_owned(),
        claims: RunMatch::parse_claims(args.claim.iter().map(String::as_str))
            .map_err(CommandError)?,
    };
    let body = serde_json::to_value(&selection).map_err(fail)?;
    let answer = admin
        .call(
            Method::POST,
            &format!("{PREFIX}/federated-runs"),
            Some(body),
        )
        .await
        .map_err(fail)?;
    let runs: Vec<FederatedRun> = decode(&answer)?;
    let mut records = Vec::new();
    for run in runs {
        let query = AuditQuery {
            run: Some(run.run_id),
            since: args.since,
            limit: Some(args.limit),
            ..AuditQuery::default()
        };
        records.extend(events(admin, &query).await?);
    }
    records.sort_by_key(|r| r.seq);
    records.dedup_by_key(|r| r.seq);
    let limit = usize::try_from(args.limit.clamp(1, MAX_PAGE)).unwrap_or(usize::MAX);
    let skip = records.len().saturating_sub(limit);
    for record in records.iter().skip(skip) {
        if args.json {
            println!("{}", serde_json::to_string(record).map_err(fail)?);
        } else {
            println!("{}", issuer_line(record, false));
        }
    }
    Ok(())
}

/// The events `query` selects.
async fn events(admin: &AdminClient, query: &AuditQuery) -> Result<Vec<AuditRecord>, CommandError> {
    let query = serde_html_form::to_string(query).map_err(fail)?;
    let answer = admin
        .call(Method::GET, &format!("{PREFIX}/audit?{query}"), None)
        .await
        .map_err(fail)?;
    decode(&answer)
}

/// `tailpass audit --gateway-log …`: the issuer's events (with `--run`, those of every run
/// exchanged from it, generation by generation) and the calls of the logs, in one timeline.
async fn merged(
    admin: &AdminClient,
    query: AuditQuery,
    mut records: Vec<AuditRecord>,
    args: &AuditArgs,
) -> Result<(), CommandError> {
    let mut selection = Selection {
        node: args.node.clone(),
        since: args.since,
        ..Selection::default()
    };
    if let Some(run) = &args.run {
        // The store answers a run's own events and its children's; each child's children
        // are asked for in turn.
        let mut asked = BTreeSet::from([run.clone()]);
        loop {
            let tree = run_tree(run, &records);
            let room = MAX_RUNS.saturating_sub(asked.len());
            let next: Vec<String> = tree.difference(&asked).take(room).cloned().collect();
            if next.is_empty() {
                selection.run = Some((run.clone(), tree));
                break;
            }
            for child in next {
                asked.insert(child.clone());
                let more = events(
                    admin,
                    &AuditQuery {
                        run: Some(child),
                        ..query.clone()
                    },
                )
                .await?;
                records.extend(more);
            }
            records.sort_by_key(|r| r.seq);
            records.dedup_by_key(|r| r.seq);
        }
    }
    if args.user.is_some() {
        selection.user_runs = Some(
            records
                .iter()
                .filter_map(|r| r.event.run_id.clone())
                .collect(),
        );
    }
    let limit = usize::try_from(args.limit.clamp(1, MAX_PAGE)).unwrap_or(usize::MAX);
    let mut timeline = Timeline::new(limit);
    for record in records {
        timeline.issuer(record);
    }
    let logs = args.gateway_logs.clone();
    let timeline = tokio::task::spawn_blocking(move || read_logs(timeline, &logs, &selection))
        .await
        .map_err(fail)??;
    for entry in timeline.into_entries() {
        let line = match (&entry, args.json) {
            (Entry::Issuer(record), true) => {
                let mut value = serde_json::to_value(record).map_err(fail)?;
                if let Some(object) = value.as_object_mut() {
                    object.insert("source".into(), "issuer".into());
                }
                value.to_string()
            }
            (Entry::Issuer(record), false) => issuer_line(record, true),
            (Entry::Gateway(call), true) => {
                let mut value = serde_json::to_value(call).map_err(fail)?;
                if let Some(object) = value.as_object_mut() {
                    object.insert("source".into(), "gateway".into());
                    object.insert("event".into(), call.event().into());
                }
                value.to_string()
            }
            (Entry::Gateway(call), false) => gateway_line(call),
        };
        println!("{line}");
    }
    Ok(())
}

/// Adds each log's selected calls to `timeline`, saying on standard error how many lines of
/// each were skipped as unreadable.
fn read_logs(
    mut timeline: Timeline,
    logs: &[std::path::PathBuf],
    selection: &Selection,
) -> Result<Timeline, CommandError> {
    for (index, path) in logs.iter().enumerate() {
        let opened = |e: std::io::Error| CommandError(format!("{}: {e}", path.display()));
        let file = std::fs::File::open(path).map_err(opened)?;
        let index = u64::try_from(index).unwrap_or(u64::MAX);
        let bad = timeline
            .gateway_log(index, std::io::BufReader::new(file), selection)
            .map_err(opened)?;
        if bad > 0 {
            eprintln!(
                "tailpass: {}: {bad} line(s) that are not call records skipped",
                path.display()
            );
        }
    }
    Ok(timeline)
}

/// A time for people: RFC 3339, or the raw seconds when it has none.
fn when(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

/// `name=value` for each value present.
fn fields<'a>(line: &mut String, pairs: impl IntoIterator<Item = (&'a str, Option<String>)>) {
    for (name, value) in pairs {
        if let Some(value) = value {
            line.push_str(&format!(" {name}={value}"));
        }
    }
}

/// An issuer event for people: time, event, outcome, who, then its fields; `source=issuer`
/// first among them in a merged timeline.
fn issuer_line(record: &AuditRecord, merged: bool) -> String {
    let e = &record.event;
    let who = e
        .user
        .clone()
        .or_else(|| e.node_id.clone())
        .unwrap_or_else(|| "-".into());
    let mut line = format!(
        "{} {:<15} {:<8} {who}",
        when(e.time.0),
        e.event.as_str(),
        e.outcome.as_str()
    );
    if merged {
        line.push_str(" source=issuer");
    }
    fields(
        &mut line,
        [
            ("client", e.client_id.clone()),
            ("run", e.run_id.clone()),
            ("parent", e.parent_run_id.clone()),
            ("label", e.run_label.clone()),
            ("jti", e.jti.clone()),
            ("reason", e.reason.clone()),
            ("detail", e.detail.clone()),
        ],
    );
    if !e.audience.is_empty() {
        line.push_str(&format!(" aud={}", e.audience.join(",")));
    }
    line
}

/// A gateway call for people, in the issuer events' layout.
fn gateway_line(call: &LoggedCall) -> String {
    let who = Some(call.sub.clone())
        .filter(|s| !s.is_empty())
        .or_else(|| call.node.clone())
        .unwrap_or_else(|| "-".into());
    let mut line = format!(
        "{} {:<15} {:<8} {who} source=gateway",
        when(call.time.0),
        call.event(),
        call.outcome()
    );
    let text = |name: &str| {
        call.rest.get(name).and_then(|v| match v {
            serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Array(items) if !items.is_empty() => Some(
                items
                    .iter()
                    .filter_map(|i| i.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            _ => None,
        })
    };
    let root = call
        .root_run_id
        .clone()
        .filter(|r| Some(r) != call.run_id.as_ref());
    fields(
        &mut line,
        [
            ("run", call.run_id.clone()),
            ("root", root),
            ("node", call.node.clone()),
            ("upstream", text("upstream")),
            ("model", text("model")),
            ("tools_offered", text("tools_offered")),
            ("tools_called", text("tools_called")),
            ("mcp", call.mcp_server.clone()),
            ("tool", text("mcp_tool")),
            ("tokens_in", text("tokens_in")),
            ("tokens_out", text("tokens_out")),
            ("status", Some(call.status.to_string())),
            ("latency_ms", text("latency_ms")),
            ("reason", text("reason")),
            ("refused", call.refused.clone()),
        ],
    );
    line
}
