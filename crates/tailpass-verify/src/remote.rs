//! The network side of verification (feature `remote`): discovery, the issuer's keys fetched
//! and cached, fetched again when a token names an unknown `kid` (one fetch at a time, at most
//! one per [`MIN_REFETCH`]), and the revocation feed followed with snapshot, resume and
//! reconnect.
//!
//! A verifier that cannot hear the feed does not know what was revoked since. With
//! [`RemoteVerifier::with_max_feed_staleness`] it refuses tokens once the feed is *stale*: no
//! connection to it is open, and nothing has been heard from it for longer than the limit
//! (heard: a connection accepted, any bytes of one — snapshot, event or keep-alive — or its
//! end, up to which it was current). An open connection that is merely quiet is not stale; one
//! that says nothing for [`FEED_IDLE`] (the issuer sends a keep-alive every 15 s) is taken for
//! dead since its last bytes, closed, and reconnected.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde::Deserialize;

use crate::binding::Presenter;
use crate::feed::{FeedEvent, RevocationList, Snapshot};
use crate::sse::{SseEvent, SseParser};
use crate::verifier::{KeySet, Presented, Verifier, VerifyError};
use crate::{AccessClaims, UnixTime};

/// The shortest time between two key fetches caused by unknown `kid`s, so that tokens with
/// made-up key ids cannot turn the verifier into a load on the issuer.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
/// DPoP proofs remembered at most (refused past it, until old ones age out).
const REPLAY_CAPACITY: usize = 200_000;
/// The largest discovery or JWKS document read.
const MAX_DOCUMENT: usize = 256 * 1024;
/// The largest single feed event read.
pub const MAX_EVENT: usize = 1024 * 1024;
/// The longest wait between feed reconnections.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long an open feed connection may say nothing (not even a keep-alive) before it is
/// taken for dead and reconnected: three of the issuer's 15 s keep-alives.
pub const FEED_IDLE: Duration = Duration::from_secs(45);

/// Where a verifier takes the time from (a test's manual clock, or the system's).
#[derive(Clone)]
pub struct Now(pub Arc<dyn Fn() -> UnixTime + Send + Sync>);

impl std::fmt::Debug for Now {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Now")
    }
}

/// Why the issuer could not be reached or understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    /// Occurs when an HTTP request fails or answers an error status.
    #[error("{url}: {message}")]
    Http {
        /// The URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// Occurs when the discovery document names another issuer (RFC 8414 §3.3).
    #[error("discovery names issuer {found:?}, not {expected:?}")]
    IssuerMismatch {
        /// The configured issuer.
        expected: String,
        /// The issuer in the document.
        found: String,
    },
}

#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
    #[serde(default)]
    revocation_feed_endpoint: Option<String>,
}

/// A [`Verifier`] that fetches what it needs from the issuer.
#[derive(Debug)]
pub struct RemoteVerifier {
    verifier: Verifier,
    http: reqwest::Client,
    jwks_uri: String,
    feed_uri: Option<String>,
    keys: RwLock<Arc<KeySet>>,
    replay: crate::dpop::ReplayCache,
    /// Held while fetching keys (single flight); holds when the last fetch happened.
    fetching: tokio::sync::Mutex<Option<Instant>>,
    now: Now,
    /// Tokens are refused when the feed is stale for longer than this, seconds.
    max_feed_staleness: Option<u64>,
    /// When the feed was last heard from (connection accepted, any bytes), by `now`.
    feed_heard: AtomicU64,
    /// Whether a feed connection is open.
    feed_connected: tokio::sync::watch::Sender<bool>,
}

/// Marks the feed connected while alive, disconnected when dropped (the connection ended,
/// or the follower was stopped).
struct Connected<'a>(&'a tokio::sync::watch::Sender<bool>);

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.send_replace(false);
    }
}

/// GETs `url` as JSON: no more than a 256 KiB document, any failure (connection, status,
/// size, parse) a [`RemoteError::Http`] naming the URL. Shared with other fetchers of
/// issuers' documents (a federation's keys), so they are bounded alike.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
) -> Result<T, RemoteError> {
    let fail = |message: String| RemoteError::Http {
        url: url.to_owned(),
        message,
    };
    let response = http
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !response.status().is_success() {
        return Err(fail(format!("status {}", response.status())));
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| fail(e.to_string()))?;
        if body.len() + chunk.len() > MAX_DOCUMENT {
            return Err(fail("document too large".into()));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| fail(e.to_string()))
}

impl RemoteVerifier {
    /// Reads the issuer's discovery document and keys. `http` decides where connections come
    /// from (the feed is for tailnet peers only).
    pub async fn discover(
        http: reqwest::Client,
        verifier: Verifier,
    ) -> Result<RemoteVerifier, RemoteError> {
        let issuer = verifier.issuer().trim_end_matches('/').to_owned();
        let discovery: Discovery =
            get_json(&http, &format!("{issuer}/.well-known/openid-configuration")).await?;
        if discovery.issuer != verifier.issuer() {
            return Err(RemoteError::IssuerMismatch {
                expected: verifier.issuer().to_owned(),
                found: discovery.issuer,
            });
        }
        let document: serde_json::Value = get_json(&http, &discovery.jwks_uri).await?;
        Ok(RemoteVerifier {
            verifier,
            http,
            jwks_uri: discovery.jwks_uri,
            feed_uri: discovery.revocation_feed_endpoint,
            keys: RwLock::new(Arc::new(KeySet::from_jwks(&document))),
            replay: crate::dpop::ReplayCache::new(
                REPLAY_CAPACITY,
                crate::dpop::MAX_AGE + crate::dpop::SKEW,
            ),
            fetching: tokio::sync::Mutex::new(Some(Instant::now())),
            now: Now(Arc::new(UnixTime::now)),
            max_feed_staleness: None,
            feed_heard: AtomicU64::new(UnixTime::now().0),
            feed_connected: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Takes the time from `now` for the feed's freshness and the list's forgetting (the
    /// same clock the caller passes to [`RemoteVerifier::verify_presented`]).
    pub fn with_clock(mut self, now: Now) -> RemoteVerifier {
        self.feed_heard = AtomicU64::new((now.0)().0);
        self.now = now;
        self
    }

    /// Refuses tokens ([`VerifyError::FeedStale`]) while the feed has been stale for longer
    /// than `seconds`. Without it, a verifier cut off from the feed keeps accepting tokens.
    pub fn with_max_feed_staleness(mut self, seconds: u64) -> RemoteVerifier {
        self.max_feed_staleness = Some(seconds);
        self
    }

    /// How long the feed has been stale at `now`, when that is longer than allowed.
    pub fn feed_stale(&self, now: UnixTime) -> Option<u64> {
        let limit = self.max_feed_staleness?;
        self.feed_uri.as_ref()?;
        if *self.feed_connected.borrow() {
            return None;
        }
        let silent = now.since(UnixTime(self.feed_heard.load(Ordering::SeqCst)));
        (silent > limit).then_some(silent)
    }

    /// Whether a feed connection is open, as a channel to wait on (tests, readiness checks).
    pub fn feed_connection(&self) -> tokio::sync::watch::Receiver<bool> {
        self.feed_connected.subscribe()
    }

    /// The DPoP proofs remembered.
    pub fn replay(&self) -> &crate::dpop::ReplayCache {
        &self.replay
    }

    fn heard(&self) {
        let now = (self.now.0)();
        self.feed_heard.fetch_max(now.0, Ordering::SeqCst);
        self.verifier.revocations().forget_expired(now);
    }

    /// The offline part.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The keys held now.
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys
            .read()
            .map(|k| k.clone())
            .unwrap_or_else(|_| Arc::new(KeySet::default()))
    }

    /// Checks `token` as [`Verifier::verify`] does; a token naming a key not held yet causes
    /// one fetch of the issuer's keys, unless one happened within [`MIN_REFETCH`].
    pub async fn verify(
        &self,
        token: &str,
        presenter: &Presenter<'_>,
        now: UnixTime,
    ) -> Result<AccessClaims, VerifyError> {
        match self.verifier.verify(&self.keys(), token, presenter, now) {
            Err(e) if e.is_unknown_key() => {
                self.refetch().await?;
                self.verifier.verify(&self.keys(), token, presenter, now)
            }
            other => other,
        }
    }

    /// Checks a request's token and DPoP proof as [`Verifier::verify_presented`] does, with
    /// the same refetch on an unknown key as [`RemoteVerifier::verify`]; every token is refused
    /// while the feed is stale ([`RemoteVerifier::with_max_feed_staleness`]).
    pub async fn verify_presented(
        &self,
        presented: &Presented<'_>,
        now: UnixTime,
    ) -> Result<AccessClaims, VerifyError> {
        if let Some(silent) = self.feed_stale(now) {
            return Err(VerifyError::FeedStale(silent));
        }
        let check = |keys: &KeySet| {
            self.verifier
                .verify_presented(keys, presented, &self.replay, now)
        };
        match check(&self.keys()) {
            Err(e) if e.is_unknown_key() => {
                self.refetch().await?;
                check(&self.keys())
            }
            other => other,
        }
    }

    async fn refetch(&self) -> Result<(), VerifyError> {
        let before = self.keys();
        let mut last = self.fetching.lock().await;
        if !Arc::ptr_eq(&self.keys(), &before) {
            // Another request fetched while this one waited: use its result.
            return Ok(());
        }
        if last.is_some_and(|t| t.elapsed() < MIN_REFETCH) {
            return Ok(());
        }
        *last = Some(Instant::now());
        let document: serde_json::Value = get_json(&self.http, &self.jwks_uri)
            .await
            .map_err(|e| VerifyError::KeysUnavailable(e.to_string()))?;
        if let Ok(mut keys) = self.keys.write() {
            *keys = Arc::new(KeySet::from_jwks(&document));
        }
        Ok(())
    }

    /// Reads the revocation feed's current state once (its JSON form), for one-shot checks
    /// that do not follow it. Does nothing when the issuer advertises no feed.
    pub async fn load_revocations(&self) -> Result<(), RemoteError> {
        if let Some(url) = &self.feed_uri {
            let snapshot: Snapshot = get_json(&self.http, url).await?;
            self.verifier.revocations().apply_snapshot(&snapshot);
        }
        Ok(())
    }

    /// Follows the revocation feed until the task is aborted: a snapshot first, then events;
    /// on any failure it reconnects with backoff and resumes from the last event applied.
    /// Does nothing when the issuer advertises no feed.
    pub fn follow_feed(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let Some(url) = this.feed_uri.clone() else {
                return;
            };
            let mut backoff = Duration::from_millis(250);
            let mut fresh = true;
            loop {
                match this.read_feed(&url, fresh).await {
                    Ok(()) => backoff = Duration::from_millis(250),
                    Err(message) => {
                        tracing::warn!(url = %url, error = %message, "revocation feed interrupted");
                    }
                }
                fresh = false;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        })
    }

    /// One connection to the feed; returns when it ends. `Ok` when at least one event came.
    async fn read_feed(&self, url: &str, fresh: bool) -> Result<(), String> {
        let list = self.verifier.revocations();
        let mut request = self.http.get(url).header("accept", "text/event-stream");
        if !fresh && list.seq() > 0 {
            request = request.header("last-event-id", list.seq().to_string());
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        self.feed_connected.send_replace(true);
        let _connected = Connected(&self.feed_connected);
        self.heard();
        let mut parser = SseParser::new(MAX_EVENT);
        let mut stream = response.bytes_stream();
        let mut got_any = false;
        loop {
            // A connection that ends (closed, or failed) was current until then; one that went
            // silent was current only until it last said something.
            let chunk = match tokio::time::timeout(FEED_IDLE, stream.next()).await {
                Ok(Some(Ok(chunk))) => chunk,
                Ok(Some(Err(e))) => {
                    self.heard();
                    return Err(e.to_string());
                }
                Ok(None) => {
                    self.heard();
                    break;
                }
                Err(_) => return Err("the feed went silent".into()),
            };
            let events = parser.push(&chunk)?;
            for event in events {
                got_any |= apply_event(list, &event)?;
            }
            self.heard();
        }
        if got_any {
            Ok(())
        } else {
            Err("the feed closed".into())
        }
    }
}

/// Applies one event of the feed's stream to `list`: a `snapshot` replaces it, a
/// `revocation` adds to it, any other event is ignored. Whether the event was one of the
/// feed's; an error when its data is not the JSON its name says.
pub fn apply_event(list: &RevocationList, event: &SseEvent) -> Result<bool, String> {
    match event.name.as_str() {
        "snapshot" => {
            let snapshot: Snapshot =
                serde_json::from_str(&event.data).map_err(|e| e.to_string())?;
            list.apply_snapshot(&snapshot);
        }
        "revocation" => {
            let event: FeedEvent = serde_json::from_str(&event.data).map_err(|e| e.to_string())?;
            list.apply(&event);
        }
        _ => return Ok(false),
    }
    Ok(true)
}
