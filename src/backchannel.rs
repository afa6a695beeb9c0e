//! OIDC Back-Channel Logout 1.0: when a session ends at this server (`session::end`:
//! RP-initiated logout, a reused refresh token, a replayed code, a refresh no longer allowed,
//! an operator revoking the user or node), each relying party that registered a
//! `backchannel_logout_uri` receives a signed logout token by POST.
//!
//! Each client has its own bounded queue, drained by its own task, so deliveries to different
//! relying parties run concurrently and one slow or black-holed relying party delays only its
//! own logouts, never another's nor the request that ended the session. A queue exists only
//! while it holds deliveries; the number of queues and each queue's length are bounded, and a
//! delivery that does not fit is dropped with a warning rather than growing memory. Each
//! delivery is tried twice, five seconds each.
//!
//! Self-registered clients' logout URIs were checked at registration (https, on a redirect
//! URI's host, no internal address); they are checked again here, and their host names are
//! resolved through a resolver that drops loopback, link-local and metadata addresses, so a
//! name that points inside cannot turn the server into a proxy to internal services.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tailpass_verify::claims::{Audience, BACKCHANNEL_LOGOUT_EVENT, LOGOUT_TYP, LogoutClaims};
use tailpass_verify::{Alg, UnixTime};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::clients::redirect::{check_dynamic_backchannel, is_internal_ip};
use crate::clients::{Client, ClientOrigin};
use crate::clock::Clock;
use crate::keys::KeyRing;
use crate::secret::random_token;

/// Deliveries waiting at most for one client.
const QUEUE_PER_CLIENT: usize = 32;
/// Clients with deliveries waiting at most (each has a queue and a sending task).
const MAX_QUEUES: usize = 256;
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
    /// Whether the client registered itself: its URI's addresses are then filtered.
    dynamic: bool,
}

/// What every client's sending task shares.
struct Sender {
    keys: Arc<KeyRing>,
    issuer: String,
    clock: Arc<dyn Clock>,
    /// For operators' clients, which may be internal services.
    trusted: reqwest::Client,
    /// For self-registered clients: internal addresses are never connected to.
    external: reqwest::Client,
    queues: Queues,
    tasks: TaskTracker,
}

/// A handle to queue logout notifications.
#[derive(Clone)]
pub struct Backchannel {
    sender: Arc<Sender>,
    /// Dropped with the last handle, which lets the task from [`Backchannel::start`] end.
    _alive: mpsc::Sender<()>,
}

impl std::fmt::Debug for Backchannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backchannel").finish_non_exhaustive()
    }
}

/// A DNS resolver that leaves out internal addresses ([`is_internal_ip`]) and fails when
/// nothing else is left, for deliveries to self-registered clients.
struct ExternalOnly;

impl reqwest::dns::Resolve for ExternalOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let external: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !is_internal_ip(a.ip()))
                .collect();
            if external.is_empty() {
                return Err(format!("{host} resolves to no address outside this host").into());
            }
            Ok(Box::new(external.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

fn http_client(external_only: bool) -> reqwest::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(ATTEMPT_TIMEOUT);
    if external_only {
        builder.dns_resolver(Arc::new(ExternalOnly)).build()
    } else {
        builder.build()
    }
}

impl Backchannel {
    /// Starts sending. The returned task ends once every handle is dropped and every queued
    /// delivery has been tried.
    pub fn start(
        keys: Arc<KeyRing>,
        issuer: String,
        clock: Arc<dyn Clock>,
    ) -> Result<(Backchannel, tokio::task::JoinHandle<()>), reqwest::Error> {
        let sender = Arc::new(Sender {
            keys,
            issuer,
            clock,
            trusted: http_client(false)?,
            external: http_client(true)?,
            queues: Queues::default(),
            tasks: TaskTracker::new(),
        });
        let (alive, mut ended) = mpsc::channel::<()>(1);
        let tasks = sender.tasks.clone();
        let task = tokio::spawn(async move {
            while ended.recv().await.is_some() {}
            tasks.close();
            tasks.wait().await;
        });
        Ok((
            Backchannel {
                sender,
                _alive: alive,
            },
            task,
        ))
    }

    /// Tells `client` that the session `sid` (of `sub`, when the session has a user) ended, if
    /// it asked to be told. Called by `session::end`, the one place a session ends.
    pub fn notify(&self, client: &Client, alg: Alg, sub: Option<&str>, sid: &str) {
        let Some(uri) = &client.backchannel_logout_uri else {
            return;
        };
        let dynamic = client.origin == ClientOrigin::Dynamic;
        if dynamic && let Err(reason) = check_dynamic_backchannel(uri, &client.redirect_uris) {
            tracing::warn!(client = %client.client_id, %reason, "back-channel logout URI refused; delivery dropped");
            return;
        }
        let delivery = Delivery {
            uri: uri.clone(),
            client_id: client.client_id.0.clone(),
            alg,
            sub: sub.map(str::to_owned),
            sid: Some(sid.to_owned()),
            dynamic,
        };
        if let Err(why) = self.sender.enqueue(delivery) {
            tracing::warn!(client = %client.client_id, why, "back-channel logout delivery dropped");
        }
    }
}

/// The queue of each client that has deliveries waiting. A queue is created with its first
/// delivery and removed, under the same lock, once found empty, so no delivery is ever left on
/// a queue nobody drains.
#[derive(Default)]
struct Queues(Mutex<HashMap<String, mpsc::Sender<Delivery>>>);

impl Queues {
    /// Puts a delivery on its client's queue. A receiver comes back when the queue is new:
    /// the caller must start draining it.
    fn put(&self, delivery: Delivery) -> Result<Option<mpsc::Receiver<Delivery>>, &'static str> {
        let Ok(mut queues) = self.0.lock() else {
            return Err("the queue table is poisoned");
        };
        if let Some(queue) = queues.get(&delivery.client_id) {
            return queue
                .try_send(delivery)
                .map(|()| None)
                .map_err(|_| "this client's queue is full");
        }
        if queues.len() >= MAX_QUEUES {
            return Err("too many clients have deliveries waiting");
        }
        let (tx, rx) = mpsc::channel(QUEUE_PER_CLIENT);
        let client_id = delivery.client_id.clone();
        if tx.try_send(delivery).is_err() {
            return Err("a new queue refused its first delivery");
        }
        queues.insert(client_id, tx);
        Ok(Some(rx))
    }

    /// The next delivery of `client_id`'s queue, or `None` once it is empty, the queue then
    /// removed.
    fn next(&self, client_id: &str, rx: &mut mpsc::Receiver<Delivery>) -> Option<Delivery> {
        let mut queues = self.0.lock().ok()?;
        match rx.try_recv() {
            Ok(delivery) => Some(delivery),
            Err(_) => {
                queues.remove(client_id);
                None
            }
        }
    }
}

impl Sender {
    /// Queues a delivery, starting a task for its client's queue if it is new.
    fn enqueue(self: &Arc<Self>, delivery: Delivery) -> Result<(), &'static str> {
        let client_id = delivery.client_id.clone();
        if let Some(rx) = self.queues.put(delivery)? {
            self.tasks.spawn(self.clone().drain(client_id, rx));
        }
        Ok(())
    }

    /// Sends one client's deliveries in order until its queue is empty.
    async fn drain(self: Arc<Self>, client_id: String, mut rx: mpsc::Receiver<Delivery>) {
        while let Some(delivery) = self.queues.next(&client_id, &mut rx) {
            self.deliver(&delivery).await;
        }
    }

    async fn deliver(&self, delivery: &Delivery) {
        let token = match logout_token(&self.keys, &self.issuer, delivery, self.clock.now()) {
            Ok(token) => token,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign a logout token");
                return;
            }
        };
        let http = if delivery.dynamic {
            &self.external
        } else {
            &self.trusted
        };
        for attempt in 1..=2 {
            let sent = http
                .post(&delivery.uri)
                .form(&[("logout_token", token.as_str())])
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => {
                    tracing::info!(client = %delivery.client_id, "back-channel logout delivered");
                    return;
                }
                Ok(response) => {
                    tracing::warn!(client = %delivery.client_id, status = %response.status(), attempt, "back-channel logout refused")
                }
                Err(e) => {
                    tracing::warn!(client = %delivery.client_id, error = %e, attempt, "back-channel logout failed")
                }
            }
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

#[cfg(test)]
mod tests {
    use reqwest::dns::Resolve as _;

    use super::*;

    fn delivery(client: &str) -> Delivery {
        Delivery {
            uri: "https://rp.example/logout".into(),
            client_id: client.into(),
            alg: Alg::ES256,
            sub: None,
            sid: None,
            dynamic: false,
        }
    }

    #[test]
    fn queues_are_bounded_per_client_and_in_number() {
        let queues = Queues::default();
        let mut first = queues.put(delivery("a")).unwrap().expect("a new queue");
        for _ in 1..QUEUE_PER_CLIENT {
            assert!(
                queues.put(delivery("a")).unwrap().is_none(),
                "the same queue"
            );
        }
        assert!(queues.put(delivery("a")).is_err(), "a full queue refuses");
        let mut others = Vec::new();
        for i in 1..MAX_QUEUES {
            others.push(queues.put(delivery(&format!("c{i}"))).unwrap().unwrap());
        }
        assert!(queues.put(delivery("one too many")).is_err());
        // Drained, a queue goes away and makes room; its client starts afresh.
        for _ in 0..QUEUE_PER_CLIENT {
            assert!(queues.next("a", &mut first).is_some());
        }
        assert!(queues.next("a", &mut first).is_none());
        assert!(queues.put(delivery("one too many")).unwrap().is_some());
        assert!(
            queues.put(delivery("a")).is_err(),
            "the table is full again"
        );
        drop(others);
    }

    #[tokio::test]
    async fn a_name_that_resolves_only_inside_is_not_connected_to() {
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let resolved = ExternalOnly.resolve(name).await;
        assert!(resolved.is_err(), "localhost resolves to loopback only");
    }
}
