//! OIDC Back-Channel Logout 1.0: when a user's session ends — RP-initiated logout, or an
//! operator revoking the user — each relying party that registered a `backchannel_logout_uri`
//! receives a signed logout token by POST.
//!
//! Deliveries go through a bounded queue to one sender task, so that a slow or dead relying
//! party never holds up the request that ended the session; a full queue drops the delivery
//! with a warning rather than growing. Each delivery is tried twice, five seconds each.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tailpass_verify::claims::{Audience, BACKCHANNEL_LOGOUT_EVENT, LogoutClaims};
use tailpass_verify::{Alg, UnixTime};
use tokio::sync::mpsc;

use crate::clients::Client;
use crate::clock::Clock;
use crate::keys::KeyRing;
use crate::secret::random_token;
use crate::tokens::LOGOUT_TYP;

/// Deliveries waiting at most.
const QUEUE: usize = 1_024;
/// Time for one delivery attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a logout token is valid: long enough to arrive, short enough to be useless later.
const LOGOUT_TOKEN_LIFETIME: u64 = 120;

#[derive(Debug)]
struct Delivery {
    uri: String,
    client_id: String,
    alg: Alg,
    sub: Option<String>,
    sid: Option<String>,
}

/// A handle to queue logout notifications.
#[derive(Debug, Clone)]
pub struct Backchannel {
    tx: mpsc::Sender<Delivery>,
}

impl Backchannel {
    /// Starts the sender task. It stops when every handle is dropped.
    pub fn start(
        keys: Arc<KeyRing>,
        issuer: String,
        clock: Arc<dyn Clock>,
    ) -> (Backchannel, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(send_all(rx, keys, issuer, clock));
        (Backchannel { tx }, task)
    }

    /// Tells `client` that the session `sid` of `sub` ended, if it asked to be told.
    pub fn notify(&self, client: &Client, alg: Alg, sub: &str, sid: &str) {
        let Some(uri) = &client.backchannel_logout_uri else {
            return;
        };
        let delivery = Delivery {
            uri: uri.clone(),
            client_id: client.client_id.0.clone(),
            alg,
            sub: Some(sub.to_owned()),
            sid: Some(sid.to_owned()),
        };
        if self.tx.try_send(delivery).is_err() {
            tracing::warn!(client = %client.client_id, "back-channel logout queue full; delivery dropped");
        }
    }
}

async fn send_all(
    mut rx: mpsc::Receiver<Delivery>,
    keys: Arc<KeyRing>,
    issuer: String,
    clock: Arc<dyn Clock>,
) {
    let http = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(ATTEMPT_TIMEOUT)
        .build()
    {
        Ok(http) => http,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the back-channel HTTP client");
            return;
        }
    };
    while let Some(delivery) = rx.recv().await {
        let now = clock.now();
        let token = match logout_token(&keys, &issuer, &delivery, now) {
            Ok(token) => token,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign a logout token");
                continue;
            }
        };
        let mut delivered = false;
        for attempt in 1..=2 {
            let sent = http
                .post(&delivery.uri)
                .form(&[("logout_token", token.as_str())])
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => {
                    delivered = true;
                    break;
                }
                Ok(response) => {
                    tracing::warn!(client = %delivery.client_id, status = %response.status(), attempt, "back-channel logout refused")
                }
                Err(e) => {
                    tracing::warn!(client = %delivery.client_id, error = %e, attempt, "back-channel logout failed")
                }
            }
        }
        if delivered {
            tracing::info!(client = %delivery.client_id, "back-channel logout delivered");
        }
    }
}

fn logout_token(
    keys: &KeyRing,
    issuer: &str,
    delivery: &Delivery,
    now: UnixTime,
) -> Result<String, crate::keys::KeyError> {
    let claims = LogoutClaims {
        iss: issuer.to_owned(),
        aud: Audience::one(delivery.client_id.clone()),
        iat: now,
        exp: now.plus(LOGOUT_TOKEN_LIFETIME),
        jti: random_token(16),
        sub: delivery.sub.clone(),
        sid: delivery.sid.clone(),
        events: BTreeMap::from([(BACKCHANNEL_LOGOUT_EVENT.to_owned(), serde_json::json!({}))]),
    };
    keys.sign_jwt(delivery.alg, LOGOUT_TYP, &claims)
}
