//! The audit log's writer: [`AuditLog::record`] commits an [`AuditEvent`] durably before
//! its caller answers.
//!
//! Events are written by group commit. [`AuditLog::record`] hands the event to a single writer
//! task and waits until the transaction holding it has committed; the writer takes everything
//! queued (up to [`MAX_BATCH`]) into one transaction, and hands the store the next batch while
//! one is committing (two at most, answered in order). So a token is never returned before its
//! event is durable, yet the store sees a few transactions per second rather than one per
//! token. The queue is bounded: when the store falls behind, callers wait instead of memory
//! growing. Committed events are counted in `/metrics`.
//!
//! A denial of a caller with no tailnet identity (no node, no user) is never written as
//! itself: it is counted in `/metrics` and folded into one `denied_aggregate` event per event
//! kind and reason per minute, with its count, so no amount of unidentified traffic writes
//! more than a bounded number of rows or delays an issuance's commit.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt as _;
use futures_util::stream::FuturesOrdered;
use tailpass_verify::UnixTime;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{mpsc, oneshot};

use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::store::{Store, StoreError};

/// The most events committed in one transaction.
pub const MAX_BATCH: usize = 512;
/// The most events waiting for the writer.
const QUEUE: usize = 8_192;
/// The batches handed to the store at once. Two: while one commits, the next is already
/// queued behind it, so an event waits for the commit under way and its own, not also for
/// the writer to come back from the one before.
const IN_FLIGHT: usize = 2;
/// The most distinct (event, reason) counts in one minute's aggregate; the rest share one.
const MAX_AGGREGATES: usize = 64;
/// The reason of aggregated denials beyond [`MAX_AGGREGATES`].
const OTHER_REASONS: &str = "other reasons";

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
    /// Occurs when the database cannot be reached: nothing is handed out until it can.
    #[error("audit store unavailable: {0}")]
    Unavailable(String),
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
    // Batches whose commit is awaited, oldest first: they finish in the order they were
    // handed to the store, so the mirror keeps the store's order.
    let mut committing = FuturesOrdered::new();
    let mut open = true;
    while open || !committing.is_empty() {
        tokio::select! {
            biased;
            Some(committed) = committing.next(), if !committing.is_empty() => {
                finish(committed, &metrics, mirror_file.as_mut()).await;
            }
            taken = rx.recv_many(&mut batch, MAX_BATCH), if open && committing.len() < IN_FLIGHT => {
                if taken == 0 {
                    open = false;
                    continue;
                }
                let mut replies = Vec::with_capacity(taken);
                let events: Arc<[AuditEvent]> = batch
                    .drain(..)
                    .map(|pending| {
                        replies.push(pending.done);
                        pending.event
                    })
                    .collect();
                let store = store.clone();
                committing.push_back(async move {
                    let result = store
                        .append_audit(events.clone())
                        .await
                        .map_err(|e: StoreError| match e {
                            StoreError::Unavailable(_) => AuditError::Unavailable(e.to_string()),
                            other => AuditError::Store(other.to_string()),
                        });
                    Committed { events, replies, result }
                });
            }
            else => break,
        }
    }
}

/// A batch the store has answered for.
struct Committed {
    events: Arc<[AuditEvent]>,
    replies: Vec<oneshot::Sender<Result<(), AuditError>>>,
    result: Result<(), AuditError>,
}

/// Counts a committed batch, copies it to the mirror, and answers its callers.
async fn finish(
    committed: Committed,
    metrics: &crate::metrics::Metrics,
    mirror: Option<&mut tokio::fs::File>,
) {
    let Committed {
        events,
        replies,
        result,
    } = committed;
    match &result {
        Err(e) => tracing::error!(error = %e, events = events.len(), "audit batch not committed"),
        Ok(()) => {
            // Aggregated denials were counted one by one as they happened.
            for event in events
                .iter()
                .filter(|e| e.event != EventKind::DeniedAggregate)
            {
                metrics.event(event.event, event.outcome, event.refusal.as_deref());
            }
            if let Some(file) = mirror {
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
        }
    }
    for done in replies {
        let _ = done.send(result.clone());
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_event_is_committed_before_its_answer_and_mirrored_in_the_stores_order() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            crate::store::sqlite::SqliteStore::open_in(dir.path())
                .await
                .unwrap(),
        );
        let mirror = dir.path().join("audit.jsonl");
        let (log, writer) = AuditLog::start(
            store.clone(),
            Some(mirror.clone()),
            Arc::new(crate::metrics::Metrics::default()),
        );
        // Enough callers at once that batches queue behind one another.
        let callers: Vec<_> = (0..300)
            .map(|i| {
                let log = log.clone();
                let store = store.clone();
                tokio::spawn(async move {
                    let client = format!("client-{i}");
                    let event =
                        AuditEvent::new(UnixTime(1_000), EventKind::AgentToken, Outcome::Success)
                            .client(client.clone());
                    log.record(event).await.unwrap();
                    // Answered, so already in the store.
                    let filter = crate::store::AuditFilter {
                        limit: 1_000,
                        ..Default::default()
                    };
                    let found = store.audit(&filter).await.unwrap();
                    assert!(
                        found
                            .iter()
                            .any(|r| r.event.client_id.as_deref() == Some(&client)),
                        "{client} answered before its commit"
                    );
                })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap();
        }
        drop(log);
        writer.await.unwrap();
        let filter = crate::store::AuditFilter {
            limit: 1_000,
            ..Default::default()
        };
        let stored: Vec<String> = store
            .audit(&filter)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|r| r.event.client_id)
            .collect();
        let mirrored: Vec<String> = std::fs::read_to_string(&mirror)
            .unwrap()
            .lines()
            .map(|line| {
                let event: AuditEvent = serde_json::from_str(line).unwrap();
                event.client_id.unwrap()
            })
            .collect();
        assert_eq!(stored.len(), 300);
        assert_eq!(mirrored, stored, "the mirror follows the store's order");
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
}
