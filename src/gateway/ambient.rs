//! Ambient mode (`ambient = true`, docs/design.md "Contracts": gateway ambient mode): a tailnet
//! caller that presents no token is served with a run token the gateway obtains for it.
//!
//! The gateway holds its own agent token (`client_credentials` from its `source_address`, for
//! its audience: the issuer requires the actor token to cover the audience asked for), renewed
//! before it expires. For a tokenless caller its identity source knows, it asks the issuer for
//! the caller's token by RFC 8693 exchange — `subject_token` the caller's address as the
//! gateway saw it, `subject_token_type` `urn:tailpass:params:oauth:token-type:tailnet-peer`,
//! `actor_token` its own token, `audience` its audience, `expires_in` `ambient_run_lifetime` —
//! which the issuer grants only to a gateway whose rule sets `act_for_peers`, deciding by the
//! caller's own rules. The token goes into the request as `Authorization: Bearer`, so it passes
//! exactly the verification and admission a presented one does (binding to the caller's node,
//! revocations, `models`, budgets).
//!
//! One token per caller node is kept and reused until shortly before it expires: one run per
//! caller node and lifetime, so the run's budget is the caller's. The table is bounded
//! ([`MAX_CALLERS`]; expired entries leave when room is needed, and a full table of live runs
//! refuses newcomers), and each entry is single-flight: a burst of calls from one node waits
//! for one exchange and shares its outcome, success or refusal. A revoked run is not replaced:
//! the caller's ambient calls are refused until that run would have ended (revoking the
//! caller's node stops it for good, as the issuer then refuses the exchange).
//!
//! A page open in a browser on the caller's node must not spend its owner's budget: a
//! tokenless request that `Sec-Fetch-Site` or `Origin` marks as cross-site (the issuer's own
//! rule, [`is_same_origin`]), or whose `Host` is not the public URL's (DNS rebinding), is
//! refused with 403 `cross_site_refused` before anything is asked of the issuer. Requests that
//! carry a token are not ambient and are not subject to this.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use serde::Deserialize;
use tailpass_verify::UnixTime;
use tailpass_verify::claims::{ACCESS_TOKEN_TYPE, TAILNET_PEER_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT};
use tailpass_verify::verifier::{BEARER, DPOP};

use super::admission::Refusal;
use super::meter::CallRecord;
use super::{GatewayError, GatewaySettings, Shared};
use crate::identity::peer::{Conn, peer_address};
use crate::issuer::Issuer;
use crate::oauth::caller::is_same_origin;
use crate::secret::Secret;

/// How long an ambient run lasts at most by default, seconds (`ambient_run_lifetime`).
pub const DEFAULT_RUN_LIFETIME: u64 = 3600;
/// Caller nodes with a run kept at once.
pub const MAX_CALLERS: usize = 10_000;
/// A token is renewed this many seconds before it expires (a quarter of its life, when that
/// is shorter), so that no call starts with a token about to lapse.
const RENEW_BEFORE: u64 = 60;
/// The largest answer read from the issuer.
const MAX_ANSWER: usize = 64 * 1024;
/// The most of an issuer's `error_description` passed on to the caller.
const MAX_DESCRIPTION: usize = 300;
/// The call log's and metrics' label of ambient refusals.
const REASON: &str = "ambient";

/// Ambient mode's state: where and how to ask the issuer, the gateway's own token, and one
/// run token per caller node.
pub struct Ambient {
    http: reqwest::Client,
    token_endpoint: String,
    audience: String,
    run_lifetime: u64,
    /// The public URL: the origin and `Host` an ambient request must name.
    public: Issuer,
    own: Slot,
    runs: std::sync::Mutex<HashMap<String, Arc<Slot>>>,
}

/// A token held for reuse (never logged: [`Secret`] redacts itself).
#[derive(Clone, Debug)]
struct Held {
    token: Secret,
    renew_at: UnixTime,
    expires: UnixTime,
}

impl Held {
    /// A token issued at `now` for `lifetime` seconds.
    fn new(token: String, now: UnixTime, lifetime: u64) -> Held {
        let margin = RENEW_BEFORE.min(lifetime / 4);
        Held {
            token: Secret::from_presented(&token),
            renew_at: now.plus(lifetime.saturating_sub(margin)),
            expires: now.plus(lifetime),
        }
    }
}

/// One token and how it is obtained: single-flight, the last refusal shared with the callers
/// that waited for the attempt that met it.
#[derive(Default)]
struct Slot {
    /// Attempts finished, read before waiting to know whether one ended meanwhile.
    finished: AtomicU64,
    state: tokio::sync::Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    held: Option<Held>,
    refused: Option<Refusal>,
}

impl Slot {
    /// The held token if it is not yet due for renewal, else a new one from `fetch`; callers
    /// that arrive while an attempt runs wait for it and share its outcome.
    async fn get<F, Fut>(&self, now: UnixTime, fetch: F) -> Result<Held, Refusal>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Held, Refusal>>,
    {
        let seen = self.finished.load(Ordering::Acquire);
        let mut state = self.state.lock().await;
        if let Some(held) = state.held.as_ref().filter(|h| now < h.renew_at) {
            return Ok(held.clone());
        }
        if self.finished.load(Ordering::Acquire) != seen
            && let Some(refused) = &state.refused
        {
            return Err(refused.clone());
        }
        let fetched = fetch().await;
        self.finished.fetch_add(1, Ordering::AcqRel);
        match fetched {
            Ok(held) => {
                *state = SlotState {
                    held: Some(held.clone()),
                    refused: None,
                };
                Ok(held)
            }
            Err(refused) => {
                state.refused = Some(refused.clone());
                Err(refused)
            }
        }
    }

    /// Forgets the held token if it is still `refused` (not one obtained meanwhile), so that
    /// the next call obtains a new one.
    async fn forget(&self, refused: &Held) {
        let mut state = self.state.lock().await;
        if state
            .held
            .as_ref()
            .is_some_and(|h| h.token.expose() == refused.token.expose())
        {
            state.held = None;
        }
    }

    /// Whether nobody is using the slot and it holds nothing valid at `now`.
    fn is_idle(&self, now: UnixTime) -> bool {
        self.state
            .try_lock()
            .is_ok_and(|s| s.held.as_ref().is_none_or(|h| h.expires <= now))
    }
}

/// Why the token endpoint gave no token.
enum Failed {
    /// It could not be reached, or answered with something other than a token or an error.
    Unavailable,
    /// Its rate limit refused.
    RateLimited,
    /// It refused, with this OAuth error (both cut to [`MAX_DESCRIPTION`]).
    Refused { error: String, description: String },
}

impl Failed {
    /// The refusal the caller gets; `what` names the token that was asked for.
    fn refusal(self, what: &str) -> Refusal {
        match self {
            Failed::Unavailable => unavailable(),
            Failed::RateLimited => refusal(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("the issuer's rate limit refused {what}; try again in a minute"),
            ),
            Failed::Refused { error, description } => refusal(
                StatusCode::FORBIDDEN,
                "ambient_refused",
                format!("the issuer refused {what}: {error}: {description}"),
            ),
        }
    }
}

/// What matters of the token endpoint's answer.
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// What matters of the issuer's metadata (RFC 8414).
#[derive(Deserialize)]
struct Metadata {
    token_endpoint: String,
}

/// Whether a request carries a token of its own: an `Authorization`, or a provider's key
/// header, in which callers may present their token too. An empty value presents nothing
/// (SDKs given an empty key send `x-api-key:` or `Authorization: Bearer` with nothing after),
/// nor does a scheme alone.
pub fn presents_token(headers: &HeaderMap) -> bool {
    let credential = |value: &HeaderValue| match value.to_str().map(str::trim) {
        Ok("") => false,
        Ok(text) => match text.split_once(' ') {
            Some((_, rest)) => !rest.trim().is_empty(),
            None => !(text.eq_ignore_ascii_case(BEARER) || text.eq_ignore_ascii_case(DPOP)),
        },
        // Not text: a credential of some kind, which verification refuses.
        Err(_) => true,
    };
    [
        header::AUTHORIZATION.as_str(),
        "x-api-key",
        "x-goog-api-key",
    ]
    .iter()
    .any(|name| headers.get_all(*name).iter().any(credential))
}

fn refusal(status: StatusCode, code: &'static str, description: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: REASON,
        code,
        description: description.into(),
    }
}

fn unavailable() -> Refusal {
    refusal(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the issuer could not be asked for an ambient token; try again",
    )
}

/// Reads at most [`MAX_ANSWER`] bytes of an answer.
async fn read_bounded(response: reqwest::Response) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.ok()?;
        if body.len() + chunk.len() > MAX_ANSWER {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(body)
}

/// Cuts a description the issuer sent to [`MAX_DESCRIPTION`] characters.
fn cut(text: &str) -> String {
    text.chars().take(MAX_DESCRIPTION).collect()
}

impl Ambient {
    /// Ambient mode for a gateway with `settings`, asking the issuer through `http` (which
    /// connects from the gateway's `source_address`), whose token endpoint it looks up now.
    pub async fn discover(
        http: reqwest::Client,
        settings: &GatewaySettings,
        run_lifetime: u64,
    ) -> Result<Ambient, GatewayError> {
        let public = url::Url::parse(&settings.public_url)
            .map_err(|e| GatewayError::Ambient(format!("public URL: {e}")))?;
        let metadata_url = format!(
            "{}/.well-known/oauth-authorization-server",
            settings.issuer.trim_end_matches('/')
        );
        let failed = |e: String| GatewayError::Ambient(format!("{metadata_url}: {e}"));
        let response = http
            .get(&metadata_url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| failed(e.to_string()))?;
        let body = read_bounded(response)
            .await
            .ok_or_else(|| failed("unreadable or too large".into()))?;
        let metadata: Metadata =
            serde_json::from_slice(&body).map_err(|e| failed(e.to_string()))?;
        Ok(Ambient {
            http,
            token_endpoint: metadata.token_endpoint,
            audience: settings.audience.clone(),
            run_lifetime,
            public: Issuer::new(&public),
            own: Slot::default(),
            runs: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Whether a tokenless request may act on its sender's network identity: not cross-site,
    /// and addressed to the gateway's public name.
    fn same_origin(&self, parts: &Parts) -> bool {
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()));
        is_same_origin(&parts.headers, self.public.origin())
            && host.is_some_and(|h| self.public.matches_host(h))
    }

    /// The slot of caller `node`, made if need be; when the table is full, expired entries
    /// leave first, and a table full of live runs refuses.
    fn slot(&self, node: &str, now: UnixTime) -> Result<Arc<Slot>, Refusal> {
        let mut runs = self.runs.lock().map_err(|_| unavailable())?;
        if let Some(slot) = runs.get(node) {
            return Ok(slot.clone());
        }
        if runs.len() >= MAX_CALLERS {
            runs.retain(|_, slot| !slot.is_idle(now));
        }
        if runs.len() >= MAX_CALLERS {
            return Err(refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "too many ambient callers at once; present a token",
            ));
        }
        let slot = Arc::new(Slot::default());
        runs.insert(node.to_owned(), slot.clone());
        Ok(slot)
    }

    /// Posts `form` to the token endpoint: the token and its lifetime, or why there is none.
    async fn ask(&self, form: &[(&str, &str)], now: UnixTime) -> Result<Held, Failed> {
        let response = self
            .http
            .post(&self.token_endpoint)
            .form(form)
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "the issuer could not be reached for an ambient token");
                Failed::Unavailable
            })?;
        let status = response.status();
        let body = read_bounded(response).await.ok_or(Failed::Unavailable)?;
        let answer: Option<Answer> = serde_json::from_slice(&body).ok();
        match (status, answer) {
            (
                StatusCode::OK,
                Some(Answer {
                    access_token: Some(token),
                    expires_in: Some(lifetime),
                    ..
                }),
            ) => Ok(Held::new(token, now, lifetime)),
            (StatusCode::TOO_MANY_REQUESTS, _) => Err(Failed::RateLimited),
            (status, Some(answer)) if status.is_client_error() => Err(Failed::Refused {
                error: cut(answer.error.as_deref().unwrap_or("error")),
                description: cut(answer.error_description.as_deref().unwrap_or("")),
            }),
            (status, _) => {
                tracing::warn!(%status, "the issuer answered an ambient token request oddly");
                Err(Failed::Unavailable)
            }
        }
    }

    /// The gateway's own agent token, for its audience.
    async fn own_token(&self, now: UnixTime) -> Result<Held, Refusal> {
        let form = [
            ("grant_type", "client_credentials"),
            ("audience", self.audience.as_str()),
            ("run_label", "ambient gateway"),
        ];
        let fetch = || async {
            self.ask(&form, now)
                .await
                .map_err(|f| f.refusal("the gateway its own token"))
        };
        self.own.get(now, fetch).await
    }

    /// A new run token for the caller at `peer`.
    async fn exchange(&self, peer: SocketAddr, now: UnixTime) -> Result<Held, Refusal> {
        let subject = peer.to_string();
        let lifetime = self.run_lifetime.to_string();
        // Twice at most: when the issuer refuses the gateway's own token (its run revoked,
        // say), once more with a new one.
        let mut retried = false;
        loop {
            let own = self.own_token(now).await?;
            let form = [
                ("grant_type", TOKEN_EXCHANGE_GRANT),
                ("subject_token", subject.as_str()),
                ("subject_token_type", TAILNET_PEER_TOKEN_TYPE),
                ("actor_token", own.token.expose()),
                ("actor_token_type", ACCESS_TOKEN_TYPE),
                ("requested_token_type", ACCESS_TOKEN_TYPE),
                ("audience", self.audience.as_str()),
                ("expires_in", lifetime.as_str()),
            ];
            let asked = self.ask(&form, now).await;
            match &asked {
                Err(Failed::Refused { error, description })
                    if error == "invalid_grant" && description.starts_with("actor_token") =>
                {
                    self.own.forget(&own).await;
                    if !retried {
                        retried = true;
                        continue;
                    }
                }
                _ => {}
            }
            return asked.map_err(|f| f.refusal("an ambient token for this caller"));
        }
    }

    /// The run token of caller `node` at `peer`: the one held, or a new one.
    async fn token_for(
        &self,
        node: &str,
        peer: SocketAddr,
        now: UnixTime,
    ) -> Result<Held, Refusal> {
        let slot = self.slot(node, now)?;
        slot.get(now, || self.exchange(peer, now)).await
    }
}

/// The ambient hook of a proxied request, before its token is verified: for a tokenless
/// request from `node` (the caller's node, as the gateway's identity source says) with ambient
/// mode on, refuses it when it is cross-site, else puts the caller's run token in its
/// `Authorization`. Any other request passes untouched (one without a token from a caller the
/// source does not know is then refused by verification, 401). A refusal is recorded in the
/// call log and answered.
pub async fn authorize(
    state: &Shared,
    parts: &mut Parts,
    node: Option<&str>,
    now: UnixTime,
) -> Result<(), Response> {
    let (Some(ambient), Some(node)) = (&state.ambient, node) else {
        return Ok(());
    };
    if presents_token(&parts.headers) {
        return Ok(());
    }
    let obtained = if ambient.same_origin(parts) {
        match peer_address(parts.extensions.get::<Conn>(), &parts.headers) {
            Ok(peer) => ambient.token_for(node, peer, now).await,
            Err(_) => Err(unavailable()),
        }
    } else {
        Err(refusal(
            StatusCode::FORBIDDEN,
            "cross_site_refused",
            "cross-site request refused: a tokenless call acts on the caller's network \
             identity; send it from a program, or present a token",
        ))
    };
    let refused = match obtained.map(|held| {
        HeaderValue::from_str(&format!("Bearer {}", held.token.expose())).map(|mut value| {
            value.set_sensitive(true);
            value
        })
    }) {
        Ok(Ok(value)) => {
            parts.headers.insert(header::AUTHORIZATION, value);
            return Ok(());
        }
        Ok(Err(_)) => unavailable(),
        Err(refused) => refused,
    };
    state.log.record(&CallRecord {
        time: now,
        node: Some(node.to_owned()),
        status: refused.status.as_u16(),
        refused: Some(refused.description.clone()),
        reason: refused.reason,
        ..CallRecord::default()
    });
    Err(refused.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(token: &str, now: UnixTime) -> Result<Held, Refusal> {
        Ok(Held::new(token.into(), now, 100))
    }

    #[tokio::test]
    async fn a_slot_reuses_its_token_until_renewal_is_due() {
        let slot = Slot::default();
        let t0 = UnixTime(1_000);
        let first = slot.get(t0, || async { held("a", t0) }).await.unwrap();
        assert_eq!(first.token.expose(), "a");
        // 100 s tokens are renewed 25 s early.
        let later = t0.plus(74);
        let reused = slot
            .get(later, || async { held("b", later) })
            .await
            .unwrap();
        assert_eq!(reused.token.expose(), "a");
        let due = t0.plus(75);
        let renewed = slot.get(due, || async { held("c", due) }).await.unwrap();
        assert_eq!(renewed.token.expose(), "c");
        assert!(!slot.is_idle(due), "it holds a live token");
        assert!(slot.is_idle(due.plus(100)), "an expired token leaves");
    }

    #[tokio::test]
    async fn a_burst_waits_for_one_attempt_and_shares_its_refusal() {
        let slot = Arc::new(Slot::default());
        let now = UnixTime(1_000);
        let attempts = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let (slot, attempts, gate) = (slot.clone(), attempts.clone(), gate.clone());
                tokio::spawn(async move {
                    slot.get(now, || async move {
                        attempts.fetch_add(1, Ordering::SeqCst);
                        gate.acquire().await.unwrap().forget();
                        Err(refusal(StatusCode::FORBIDDEN, "ambient_refused", "no"))
                    })
                    .await
                })
            })
            .collect();
        // On this single-threaded runtime the calls run in order: once the first attempt has
        // started, the seven others wait on the slot.
        while attempts.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(8);
        for call in calls {
            assert_eq!(call.await.unwrap().unwrap_err().code, "ambient_refused");
        }
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            1,
            "waiters share the attempt that ended while they waited"
        );
        // A later call tries again.
        let retried = slot.get(now, || async { held("x", now) }).await.unwrap();
        assert_eq!(retried.token.expose(), "x");
    }

    #[test]
    fn ambient_mode_is_off_by_default_and_its_run_lifetime_defaults_to_an_hour() {
        let resolve = |extra: &[&str], file: &str| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("gateway.toml");
            std::fs::write(
                &path,
                format!(
                    "listen = \"127.0.0.1:1\"\nissuer = \"https://idp.example\"\n\
                     audience = \"https://gw.example\"\nupstream = \"https://api.example\"\n\
                     upstream_key_file = \"/k\"\n{file}"
                ),
            )
            .unwrap();
            let mut argv = vec!["tailpass", "--config", path.to_str().unwrap(), "gateway"];
            argv.extend_from_slice(extra);
            let (global, args) = crate::config::options::parse_for_test::<
                super::super::GatewayOptions,
            >("gateway", &argv)
            .unwrap();
            GatewaySettings::resolve(&global, &args).unwrap().0.ambient
        };
        assert_eq!(resolve(&[], ""), None);
        assert_eq!(resolve(&["--ambient"], ""), Some(DEFAULT_RUN_LIFETIME));
        assert_eq!(
            resolve(&[], "ambient = true\nambient_run_lifetime = \"30m\"\n"),
            Some(1800)
        );
        assert_eq!(
            resolve(&["--ambient-run-lifetime", "2h"], "ambient = true\n"),
            Some(7200),
            "the flag wins"
        );
    }

    #[test]
    fn only_requests_without_any_credential_are_ambient() {
        let mut headers = HeaderMap::new();
        assert!(!presents_token(&headers));
        for (name, value, presents) in [
            ("authorization", "Bearer eyJ.x.y", true),
            ("authorization", "DPoP eyJ.x.y", true),
            ("authorization", "Basic dXNlcg==", true),
            ("authorization", "eyJ.x.y", true),
            ("authorization", "Bearer ", false),
            ("authorization", "bearer", false),
            ("authorization", "", false),
            ("x-api-key", "eyJ.x.y", true),
            ("x-api-key", "", false),
            ("x-goog-api-key", "eyJ.x.y", true),
            ("x-goog-api-key", " ", false),
        ] {
            headers.clear();
            headers.insert(name, HeaderValue::from_str(value).unwrap());
            assert_eq!(presents_token(&headers), presents, "{name}: {value:?}");
        }
    }
}
