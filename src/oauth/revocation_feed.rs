//! The revocation feed (docs/design.md "Contracts": revocation feed), at `revocation_feed_endpoint`.
//!
//! Gateways verify JWTs offline; this feed is how "kill this run" reaches them within seconds.
//! With `Accept: text/event-stream` it is a server-sent event stream: first a `snapshot`
//! event carrying the current sequence number and every live revocation, then one
//! `revocation` event per new revocation, each with its sequence number as the event id, so
//! that a client resumes with `Last-Event-ID`. Otherwise it answers JSON, `?since=<seq>` for
//! pollers. A revocation leaves the feed once no token it could match can still be valid.
//!
//! Any tailnet peer may read it; subscribers are bounded, and a subscriber that falls behind
//! gets a fresh snapshot rather than an unbounded queue.
//!
//! A snapshot is the revocation index's snapshot base (`revocation::SnapshotBase`: one read
//! of the store's live revocations, redone once older than `SNAPSHOT_BASE_AGE`) plus what was
//! stored after it, serialized straight from both: subscribers coming and going cost a read of
//! recent rows and one serialization each, not a copy of every stored revocation.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use tailpass_verify::UnixTime;
use tailpass_verify::feed::RevocationKind;
pub use tailpass_verify::feed::{FeedEvent, Snapshot};
use tokio::sync::{OwnedSemaphorePermit, broadcast};

use super::error::Error;
use super::input::Query;
use crate::oauth::caller::Caller;
use crate::revocation::SnapshotBase;
use crate::state::AppState;
use crate::store::Revocation;

impl From<&Revocation> for FeedEvent {
    fn from(r: &Revocation) -> FeedEvent {
        FeedEvent {
            seq: r.seq,
            kind: r.kind.into(),
            value: r.value.clone(),
            revoked_at: r.revoked_at,
            until: r.until,
        }
    }
}

/// Seconds after a revocation during which a token it matches may still be valid.
fn token_horizon(state: &AppState) -> u64 {
    state.settings.max_token_lifetime + crate::tokens::LEEWAY
}

/// Whether a revocation can still matter: a token it matches may be unexpired, or it still
/// refuses new tokens.
fn live(state: &AppState, r: &Revocation, now: UnixTime) -> bool {
    let horizon = r.revoked_at.plus(token_horizon(state));
    let blocking = r.lifted_at.is_none()
        && r.until.is_none_or(|u| now < u)
        && matches!(r.kind, RevocationKind::Node | RevocationKind::User);
    now < horizon || blocking
}

async fn events_since(state: &AppState, since: u64) -> Result<Vec<FeedEvent>, Error> {
    let now = state.now();
    Ok(state
        .store
        .revocations_since(since)
        .await?
        .iter()
        // A row read back for its lift alone was announced before: a lift is no feed event.
        .filter(|r| r.seq > since && live(state, r, now))
        .map(FeedEvent::from)
        .collect())
}

/// The feed's state now: the snapshot base and what was stored after it.
struct SnapshotView {
    seq: u64,
    base: Arc<SnapshotBase>,
    recent: Vec<FeedEvent>,
}

impl SnapshotView {
    /// The snapshot as JSON (a [`Snapshot`]), in pieces: the base's are shared, not copied.
    fn json(&self) -> [Bytes; 4] {
        let mut recent = Vec::new();
        for event in &self.recent {
            if !recent.is_empty() || !self.base.events.is_empty() {
                recent.push(b',');
            }
            push_json(&mut recent, event);
        }
        [
            Bytes::from(format!("{{\"seq\":{},\"events\":[", self.seq)),
            self.base.events.clone(),
            Bytes::from(recent),
            Bytes::from_static(b"]}"),
        ]
    }
}

/// Appends `event` as JSON, which cannot fail for its plain fields.
fn push_json(out: &mut Vec<u8>, event: &FeedEvent) {
    if let Err(e) = serde_json::to_writer(out, event) {
        tracing::error!(error = %e, "a feed event did not serialize");
    }
}

/// The snapshot base, read from the store when the one kept is missing or too old: the
/// revocations that may still be live ([`crate::store::Store::live_revocations`]), not every
/// row kept until the next purge, whose number grows between purges.
async fn snapshot_base(state: &AppState) -> Result<Arc<SnapshotBase>, Error> {
    let now = state.now();
    if let Some(base) = state.revocations.snapshot_base(now) {
        return Ok(base);
    }
    // Applied before the read, so stored by then: a row up to it is in the read if live.
    let applied = state.revocations.last_seq();
    let rows = state
        .store
        .live_revocations(now.minus(token_horizon(state)), now)
        .await?;
    let mut events = Vec::new();
    for r in rows.iter().filter(|r| live(state, r, now)) {
        if !events.is_empty() {
            events.push(b',');
        }
        push_json(&mut events, &FeedEvent::from(r));
    }
    let base = Arc::new(SnapshotBase {
        read_at: now,
        seq: rows.iter().map(|r| r.seq).max().unwrap_or(0).max(applied),
        events: Bytes::from(events),
    });
    state.revocations.keep_snapshot_base(base.clone());
    Ok(base)
}

async fn snapshot(state: &AppState) -> Result<SnapshotView, Error> {
    let base = snapshot_base(state).await?;
    let recent = events_since(state, base.seq).await?;
    let seq = recent
        .iter()
        .map(|e| e.seq)
        .max()
        .unwrap_or(0)
        .max(base.seq)
        .max(state.revocations.last_seq());
    Ok(SnapshotView { seq, base, recent })
}

/// The polling parameters.
#[derive(Debug, Default, Deserialize)]
pub struct FeedQuery {
    since: Option<u64>,
}

/// `GET /revocations`.
pub async fn feed(
    State(state): State<AppState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    Query(query): Query<FeedQuery>,
) -> Result<Response, Error> {
    let wants_stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !wants_stream {
        let ok = axum::http::StatusCode::OK;
        return Ok(match query.since {
            Some(since) => {
                let body = Snapshot {
                    seq: state.revocations.last_seq(),
                    events: events_since(&state, since).await?,
                };
                super::no_store(ok, &body)
            }
            None => {
                let json: Vec<u8> = snapshot(&state).await?.json().concat();
                let mut response = (
                    ok,
                    [(header::CONTENT_TYPE, "application/json")],
                    Body::from(json),
                )
                    .into_response();
                super::mark_no_store(response.headers_mut());
                response
            }
        });
    }
    let privileged = crate::policy::agent::may_introspect(
        &caller,
        &state.settings.policy,
        &state.settings.agent_capability,
    );
    let permit = state
        .feed_slots
        .acquire(privileged)
        .ok_or_else(|| Error::unavailable("too many revocation feed subscribers"))?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    // Subscribe before reading, so that nothing falls between the read and the stream.
    let receiver = state.revocations.subscribe();
    let (first, head) = match resume {
        Some(since) => {
            let missed = events_since(&state, since).await?;
            let head = missed.iter().map(|e| e.seq).max().unwrap_or(since);
            (
                missed.iter().map(revocation_event).collect::<Vec<_>>(),
                head,
            )
        }
        None => {
            let snap = snapshot(&state).await?;
            (snapshot_event(&snap), snap.seq)
        }
    };
    let stream = events(state, receiver, first, head, permit);
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// A keep-alive comment after this long without an event.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The server-sent event of a snapshot, in pieces (the base's shared).
fn snapshot_event(snapshot: &SnapshotView) -> Vec<Bytes> {
    let head = format!("event: snapshot\nid: {}\ndata: ", snapshot.seq);
    let mut pieces = vec![Bytes::from(head)];
    pieces.extend(snapshot.json());
    pieces.push(Bytes::from_static(b"\n\n"));
    pieces
}

fn revocation_event(event: &FeedEvent) -> Bytes {
    let mut out = format!("event: revocation\nid: {}\ndata: ", event.seq).into_bytes();
    push_json(&mut out, event);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

struct Feed {
    state: AppState,
    receiver: broadcast::Receiver<Revocation>,
    pending: VecDeque<Bytes>,
    head: u64,
    quiet_until: tokio::time::Instant,
    _permit: OwnedSemaphorePermit,
}

/// The stream's bytes: `first`, then each revocation after `head`, a fresh snapshot for a
/// subscriber that fell behind, and a keep-alive comment after [`KEEP_ALIVE`] of silence.
fn events(
    state: AppState,
    receiver: broadcast::Receiver<Revocation>,
    first: Vec<Bytes>,
    head: u64,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    let feed = Feed {
        state,
        receiver,
        pending: first.into(),
        head,
        quiet_until: tokio::time::Instant::now() + KEEP_ALIVE,
        _permit: permit,
    };
    stream::unfold(feed, |mut feed| async move {
        loop {
            if let Some(piece) = feed.pending.pop_front() {
                feed.quiet_until = tokio::time::Instant::now() + KEEP_ALIVE;
                return Some((Ok(piece), feed));
            }
            let received = tokio::select! {
                received = feed.receiver.recv() => received,
                () = tokio::time::sleep_until(feed.quiet_until) => {
                    feed.quiet_until = tokio::time::Instant::now() + KEEP_ALIVE;
                    return Some((Ok(Bytes::from_static(b":\n\n")), feed));
                }
            };
            match received {
                Ok(r) if r.seq > feed.head => {
                    feed.head = r.seq;
                    feed.pending
                        .push_back(revocation_event(&FeedEvent::from(&r)));
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Too far behind to replay one by one: start over from a snapshot.
                    let snap = snapshot(&feed.state).await.ok()?;
                    feed.head = snap.seq;
                    feed.pending.extend(snapshot_event(&snap));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}
