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

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
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

/// Whether a revocation can still matter: a token it matches may be unexpired, or it still
/// refuses new tokens.
fn live(state: &AppState, r: &Revocation, now: UnixTime) -> bool {
    let horizon = r
        .revoked_at
        .plus(state.settings.max_token_lifetime + crate::tokens::LEEWAY);
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

async fn snapshot(state: &AppState) -> Result<Snapshot, Error> {
    let events = events_since(state, 0).await?;
    let seq = events
        .iter()
        .map(|e| e.seq)
        .max()
        .unwrap_or(0)
        .max(state.revocations.last_seq());
    Ok(Snapshot { seq, events })
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
        let body = match query.since {
            Some(since) => Snapshot {
                seq: state.revocations.last_seq(),
                events: events_since(&state, since).await?,
            },
            None => snapshot(&state).await?,
        };
        return Ok(super::no_store(axum::http::StatusCode::OK, &body));
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
            let head = snap.seq;
            (vec![snapshot_event(&snap)], head)
        }
    };
    let stream = events(state, receiver, first, head, permit);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn snapshot_event(snapshot: &Snapshot) -> Event {
    Event::default()
        .event("snapshot")
        .id(snapshot.seq.to_string())
        .json_data(snapshot)
        .unwrap_or_default()
}

fn revocation_event(event: &FeedEvent) -> Event {
    Event::default()
        .event("revocation")
        .id(event.seq.to_string())
        .json_data(event)
        .unwrap_or_default()
}

struct Feed {
    state: AppState,
    receiver: broadcast::Receiver<Revocation>,
    pending: std::collections::VecDeque<Event>,
    head: u64,
    _permit: Arc<OwnedSemaphorePermit>,
}

fn events(
    state: AppState,
    receiver: broadcast::Receiver<Revocation>,
    first: Vec<Event>,
    head: u64,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    let feed = Feed {
        state,
        receiver,
        pending: first.into(),
        head,
        _permit: Arc::new(permit),
    };
    stream::unfold(feed, |mut feed| async move {
        loop {
            if let Some(event) = feed.pending.pop_front() {
                return Some((Ok(event), feed));
            }
            match feed.receiver.recv().await {
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
                    feed.pending.push_back(snapshot_event(&snap));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}
