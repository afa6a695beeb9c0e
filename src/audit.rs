//! The audit log: one event for every issuance, exchange, refresh, revocation, registration
//! and denial.
//!
//! Events are written by group commit. [`AuditLog::record`] hands the event to a single writer
//! task and waits until the transaction holding it has committed; the writer takes everything
//! queued (up to [`MAX_BATCH`]) into one transaction. So a token is never returned before its
//! event is durable, yet the store sees a few transactions per second rather than one per
//! token. The queue is bounded: when the store falls behind, callers wait instead of memory
//! growing.
//!
//! This module records and queries; it does not decide what is worth recording — callers do,
//! and every decision that denies says why in [`AuditEvent::reason`].
//!
//! Two rules keep the log from being a lever for strangers. A denial of a caller with no
//! tailnet identity (no node, no user) is never written as itself: it is counted in
//! `/metrics` and folded into one `denied_aggregate` event per event kind and reason per
//! minute, with its count, so no amount of unidentified traffic writes more than a bounded
//! number of rows or delays an issuance's commit. And every stored field is capped in length
//! ([`MAX_FIELD`], [`MAX_ITEMS`]).

use std::collections::HashMap;
use std::sync::Mutex;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tailpass_verify::UnixTime;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{mpsc, oneshot};

use crate::identity::Identity;
use crate::store::{Store, StoreError};

/// The most events committed in one transaction.
pub const MAX_BATCH: usize = 512;
/// The most events waiting for the writer.
const QUEUE: usize = 8_192;
/// The longest stored text field, in bytes; longer values are cut at a character boundary.
pub const MAX_FIELD: usize = 256;
/// The most entries of a stored list (tags, audiences, scopes).
pub const MAX_ITEMS: usize = 32;
/// The most distinct (event, reason) counts in one minute's aggregate; the rest share one.
const MAX_AGGREGATES: usize = 64;
/// The reason of aggregated denials beyond [`MAX_AGGREGATES`].
const OTHER_REASONS: &str = "other reasons";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A client was registered (admin, CLI or RFC 7591).
    ClientRegistered,
    /// A client's metadata changed (RFC 7592 or admin).
    ClientUpdated,
    /// A client was deleted.
    ClientDeleted,
    /// Signing keys were rotated.
    KeysRotated,
    /// A request for an authorization code (`/authorize`).
    Authorize,
    /// A user approved a dynamically registered client.
    Consent,
    /// A token was issued by the authorization code grant.
    CodeExchanged,
    /// A refresh token was used.
    Refresh,
    /// An agent (or confidential client) used the client credentials grant.
    AgentToken,
    /// An RFC 8693 token exchange.
    TokenExchange,
    /// A token or refresh family was revoked (RFC 7009 or kill switch).
    Revocation,
    /// A revocation was lifted.
    RevocationLifted,
    /// A user's session ended (RP-initiated logout or admin).
    Logout,
    /// A call passed through the gateway.
    GatewayCall,
    /// Denials of callers with no tailnet identity in one minute, counted (`detail`).
    DeniedAggregate,
}

impl EventKind {
    /// The name in the log and in metrics (the serialized form).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ClientRegistered => "client_registered",
            EventKind::ClientUpdated => "client_updated",
            EventKind::ClientDeleted => "client_deleted",
            EventKind::KeysRotated => "keys_rotated",
            EventKind::Authorize => "authorize",
            EventKind::Consent => "consent",
            EventKind::CodeExchanged => "code_exchanged",
            EventKind::Refresh => "refresh",
            EventKind::AgentToken => "agent_token",
            EventKind::TokenExchange => "token_exchange",
            EventKind::Revocation => "revocation",
            EventKind::RevocationLifted => "revocation_lifted",
            EventKind::Logout => "logout",
            EventKind::GatewayCall => "gateway_call",
            EventKind::DeniedAggregate => "denied_aggregate",
        }
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done as asked.
    Success,
    /// Refused by policy or validation; [`AuditEvent::reason`] says why.
    Denied,
    /// Failed on the server's side.
    Error,
}

impl Outcome {
    /// The name in the log and in metrics (the serialized form).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        }
    }
}

/// A typed reason for refusing a request: its text is what the caller and the audit log are
/// told, and its label (`snake_case`, one of a fixed set per type) names it in metrics, so
/// that their label sets stay bounded and never carry identifiers.
pub trait Refusal: std::fmt::Display {
    /// The label.
    fn label(&self) -> &'static str;
}

/// One audit event. Never holds a secret or a token: only their identifiers (`jti`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When it happened.
    pub time: UnixTime,
    /// What happened.
    pub event: EventKind,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it was denied or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The refusal's typed reason, a short `snake_case` label from a bounded set (see
    /// [`Refusal`]): what metrics count denials by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// The user's login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The node's stable id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// The node's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The node's tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The client involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The run's label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_label: Option<String>,
    /// The parent run of an exchanged token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_run_id: Option<String>,
    /// The root run of an exchanged token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_run_id: Option<String>,
    /// The token's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The token's audiences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audience: Vec<String>,
    /// The token's scopes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Anything else worth keeping (a key id, a revoked value…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AuditEvent {
    /// An event with no subject yet.
    pub fn new(time: UnixTime, event: EventKind, outcome: Outcome) -> AuditEvent {
        AuditEvent {
            time,
            event,
            outcome,
            reason: None,
            refusal: None,
            user: None,
            node_id: None,
            node_name: None,
            tags: Vec::new(),
            client_id: None,
            run_id: None,
            run_label: None,
            parent_run_id: None,
            root_run_id: None,
            jti: None,
            audience: Vec::new(),
            scopes: Vec::new(),
            detail: None,
        }
    }

    /// Sets who acted: user, node and tags from a tailnet identity.
    pub fn by(mut self, identity: &Identity) -> AuditEvent {
        self.user = identity.user.as_ref().map(|u| u.login.clone());
        self.node_id = Some(identity.node.stable_id.0.clone());
        self.node_name = Some(identity.node.name.clone());
        self.tags = identity.node.tags.clone();
        self
    }

    /// Sets the reason.
    pub fn because(mut self, reason: impl Into<String>) -> AuditEvent {
        self.reason = Some(reason.into());
        self
    }

    /// Sets the reason from a typed refusal: its text, and its label.
    pub fn refused(mut self, refusal: &dyn Refusal) -> AuditEvent {
        self.reason = Some(refusal.to_string());
        self.refusal = Some(refusal.label().to_owned());
        self
    }

    /// Sets the client.
    pub fn client(mut self, client_id: impl Into<String>) -> AuditEvent {
        self.client_id = Some(client_id.into());
        self
    }

    /// Sets the free-form detail.
    pub fn detail(mut self, detail: impl Into<String>) -> AuditEvent {
        self.detail = Some(detail.into());
        self
    }

    /// Whether the event is a denial of a caller with no tailnet identity: one a stranger can
    /// cause at will, recorded only in aggregate.
    fn is_unidentified_denial(&self) -> bool {
        self.outcome == Outcome::Denied && self.node_id.is_none() && self.user.is_none()
    }

    /// Caps every text field at [`MAX_FIELD`] bytes and every list at [`MAX_ITEMS`] entries.
    fn bounded(mut self) -> AuditEvent {
        for field in [
            &mut self.reason,
            &mut self.refusal,
            &mut self.user,
            &mut self.node_id,
            &mut self.node_name,
            &mut self.client_id,
            &mut self.run_id,
            &mut self.run_label,
            &mut self.parent_run_id,
            &mut self.root_run_id,
            &mut self.jti,
            &mut self.detail,
        ]
        .into_iter()
        .flatten()
        {
            cap(field);
        }
        for list in [&mut self.tags, &mut self.audience, &mut self.scopes] {
            list.truncate(MAX_ITEMS);
            list.iter_mut().for_each(cap);
        }
        self
    }
}

/// Cuts `text` to at most [`MAX_FIELD`] bytes, at a character boundary, marking the cut.
fn cap(text: &mut String) {
    if text.len() <= MAX_FIELD {
        return;
    }
    let mut end = MAX_FIELD - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
}

/// One minute's denials of unidentified callers, counted by event kind and reason.
#[derive(Debug, Default)]
struct Aggregate {
    /// The minute (Unix time / 60) being counted.
    minute: u64,
    counts: HashMap<(EventKind, String), u64>,
}

impl Aggregate {
    /// Counts one denial at `minute`; returns the previous minute's events when the minute
    /// has moved on.
    fn count(&mut self, minute: u64, event: EventKind, reason: &str) -> Vec<AuditEvent> {
        let done = if minute > self.minute {
            self.take_before(minute)
        } else {
            Vec::new()
        };
        let key = if self.counts.len() < MAX_AGGREGATES
            || self.counts.contains_key(&(event, reason.to_owned()))
        {
            (event, reason.to_owned())
        } else {
            (event, OTHER_REASONS.to_owned())
        };
        *self.counts.entry(key).or_insert(0) += 1;
        done
    }

    /// The aggregate events of minutes before `minute`, leaving the counts empty.
    fn take_before(&mut self, minute: u64) -> Vec<AuditEvent> {
        if minute <= self.minute {
            return Vec::new();
        }
        let counted = std::mem::take(&mut self.counts);
        let at = UnixTime(self.minute.saturating_mul(60).saturating_add(59));
        self.minute = minute;
        let mut events: Vec<AuditEvent> = counted
            .into_iter()
            .map(|((event, reason), count)| {
                AuditEvent::new(at, EventKind::DeniedAggregate, Outcome::Denied)
                    .because(reason)
                    .detail(format!(
                        "{{\"event\":\"{}\",\"count\":{count}}}",
                        event.as_str()
                    ))
            })
            .collect();
        events.sort_by(|a, b| a.detail.cmp(&b.detail).then(a.reason.cmp(&b.reason)));
        events
    }
}

/// Why an event could not be recorded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// Occurs when the store refused the batch; the caller must not hand out what it was
    /// about to issue.
    #[error("audit store failed: {0}")]
    Store(String),
    /// Occurs when the writer has stopped (server shutting down).
    #[error("audit writer is not running")]
    Closed,
}

struct Pending {
    event: AuditEvent,
    done: oneshot::Sender<Result<(), AuditError>>,
}

/// A handle for recording events; cheap to clone.
#[derive(Clone, Debug)]
pub struct AuditLog {
    tx: mpsc::Sender<Pending>,
    aggregate: Arc<Mutex<Aggregate>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.event.fmt(f)
    }
}

impl AuditLog {
    /// Starts the writer. It stops once every handle is dropped and the queue is drained;
    /// await the returned task to be sure the last events are committed.
    pub fn start(
        store: Arc<dyn Store>,
        mirror: Option<PathBuf>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> (AuditLog, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(writer(store, mirror, metrics.clone(), rx));
        let log = AuditLog {
            tx,
            aggregate: Arc::default(),
            metrics,
        };
        (log, task)
    }

    /// Records `event`, returning once it is committed. A denial of a caller with no tailnet
    /// identity returns at once: it is counted, and written only in its minute's aggregate.
    pub async fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        let event = event.bounded();
        if event.is_unidentified_denial() {
            self.metrics
                .event(event.event, event.outcome, event.refusal.as_deref());
            let minute = event.time.0 / 60;
            let reason = event.reason.as_deref().unwrap_or("denied");
            let finished = match self.aggregate.lock() {
                Ok(mut aggregate) => aggregate.count(minute, event.event, reason),
                Err(_) => Vec::new(),
            };
            return self.enqueue(finished).await;
        }
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Pending { event, done })
            .await
            .map_err(|_| AuditError::Closed)?;
        wait.await.map_err(|_| AuditError::Closed)?
    }

    /// Writes the aggregates of minutes before `now`'s (all of them with `None`, at
    /// shutdown). Called each minute by the server's upkeep, so a quiet minute still ends.
    pub async fn flush_aggregates(&self, now: Option<UnixTime>) -> Result<(), AuditError> {
        let minute = now.map_or(u64::MAX, |t| t.0 / 60);
        let finished = match self.aggregate.lock() {
            Ok(mut aggregate) => aggregate.take_before(minute),
            Err(_) => Vec::new(),
        };
        self.enqueue(finished).await
    }

    /// Queues events without waiting for their commit: nobody's answer depends on them.
    async fn enqueue(&self, events: Vec<AuditEvent>) -> Result<(), AuditError> {
        for event in events {
            let (done, _) = oneshot::channel();
            self.tx
                .send(Pending { event, done })
                .await
                .map_err(|_| AuditError::Closed)?;
        }
        Ok(())
    }
}

async fn writer(
    store: Arc<dyn Store>,
    mirror: Option<PathBuf>,
    metrics: Arc<crate::metrics::Metrics>,
    mut rx: mpsc::Receiver<Pending>,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    let mut mirror_file = match &mirror {
        Some(path) => open_mirror(path).await,
        None => None,
    };
    let mut replies = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let events: Arc<[AuditEvent]> = batch
            .drain(..)
            .map(|pending| {
                replies.push(pending.done);
                pending.event
            })
            .collect();
        let result = store
            .append_audit(events.clone())
            .await
            .map_err(|e: StoreError| AuditError::Store(e.to_string()));
        if result.is_ok() {
            // Aggregated denials were counted one by one as they happened.
            for event in events
                .iter()
                .filter(|e| e.event != EventKind::DeniedAggregate)
            {
                metrics.event(event.event, event.outcome, event.refusal.as_deref());
            }
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, events = events.len(), "audit batch not committed");
        } else if let Some(file) = mirror_file.as_mut() {
            // The mirror is a convenience copy for log shippers; the store is the record.
            let mut lines = Vec::new();
            for event in events.iter() {
                if serde_json::to_writer(&mut lines, event).is_ok() {
                    lines.push(b'\n');
                }
            }
            if let Err(e) = file.write_all(&lines).await {
                tracing::warn!(error = %e, "audit mirror write failed");
            }
        }
        for done in replies.drain(..) {
            let _ = done.send(result.clone());
        }
    }
}

async fn open_mirror(path: &std::path::Path) -> Option<tokio::fs::File> {
    match tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .await
    {
        Ok(file) => Some(file),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot open audit mirror; continuing without it");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_fields_are_capped_at_a_character_boundary() {
        let mut event = AuditEvent::new(UnixTime(1), EventKind::Authorize, Outcome::Denied)
            .client("é".repeat(30_000))
            .because("x".repeat(10));
        event.scopes = vec!["s".repeat(1000); 100];
        let event = event.bounded();
        let client = event.client_id.unwrap();
        assert!(
            client.len() <= MAX_FIELD && client.ends_with('…'),
            "{}",
            client.len()
        );
        assert_eq!(event.reason.as_deref(), Some("xxxxxxxxxx"));
        assert_eq!(event.scopes.len(), MAX_ITEMS);
        assert!(event.scopes.iter().all(|s| s.len() <= MAX_FIELD));
    }

    #[test]
    fn unidentified_denials_fold_into_one_event_per_reason_and_minute() {
        let mut aggregate = Aggregate::default();
        let minute = 29_000_000;
        for _ in 0..1000 {
            assert!(
                aggregate
                    .count(minute, EventKind::Authorize, "unknown client_id")
                    .is_empty()
            );
        }
        for i in 0..200 {
            aggregate.count(minute, EventKind::Authorize, &format!("reason {i}"));
        }
        let done = aggregate.count(minute + 1, EventKind::AgentToken, "not on the tailnet");
        assert_eq!(
            done.len(),
            MAX_AGGREGATES + 1,
            "bounded, the rest under one reason"
        );
        let unknown = done
            .iter()
            .find(|e| e.reason.as_deref() == Some("unknown client_id"))
            .unwrap();
        assert_eq!(unknown.event, EventKind::DeniedAggregate);
        assert_eq!(
            unknown.detail.as_deref(),
            Some("{\"event\":\"authorize\",\"count\":1000}")
        );
        assert_eq!(unknown.time, UnixTime(minute * 60 + 59));
        let other = done
            .iter()
            .find(|e| e.reason.as_deref() == Some(OTHER_REASONS))
            .unwrap();
        assert!(
            other
                .detail
                .as_deref()
                .unwrap()
                .contains(&format!("\"count\":{}", 200 - (MAX_AGGREGATES - 1)))
        );
        assert!(
            aggregate.take_before(minute + 1).is_empty(),
            "the new minute is still open"
        );
        assert_eq!(aggregate.take_before(u64::MAX).len(), 1);
    }

    #[test]
    fn names_are_the_serialized_forms() {
        use EventKind::*;
        for kind in [
            ClientRegistered,
            ClientUpdated,
            ClientDeleted,
            KeysRotated,
            Authorize,
            Consent,
            CodeExchanged,
            Refresh,
            AgentToken,
            TokenExchange,
            Revocation,
            RevocationLifted,
            Logout,
            GatewayCall,
            DeniedAggregate,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        for outcome in [Outcome::Success, Outcome::Denied, Outcome::Error] {
            assert_eq!(serde_json::to_value(outcome).unwrap(), outcome.as_str());
        }
    }
}
