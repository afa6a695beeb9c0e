//! The application state every handler shares, and how it is opened: keys, store, revocation
//! index, audit writer, logout sender and the caches of the issuer, held in one place. The
//! routers over it are `http::router`'s.
//!
//! State is injected, never global: a test builds its own with a temporary directory, a local
//! identity table and a manual clock. Each part owns its own synchronization; there is no
//! lock around the whole.

use std::sync::Arc;

use tailpass_verify::UnixTime;
use tokio::task::JoinHandle;

use crate::audit_log::AuditLog;
use crate::backchannel::Backchannel;
use crate::client_registry::Clients;
use crate::clock::Clock;
use crate::config::Settings;
use crate::identity::IdentitySource;
use crate::issuer::Issuer;
use crate::keys::{Kek, KeyError, KeyRing, KeySettings};
use crate::revocation::Revocations;
use crate::store::{Store, StoreError};

/// How long `/readyz` waits for the store.
pub const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// What every handler can reach: one shared allocation, so the per-request clones axum makes
/// cost one atomic increment.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`]. Each part guards its own data (no lock spans the state).
pub struct Shared {
    /// The issuer.
    pub issuer: Arc<Issuer>,
    /// Validated settings.
    pub settings: Arc<Settings>,
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// Signing keys.
    pub keys: Arc<KeyRing>,
    /// Caller identities.
    pub identity: Arc<dyn IdentitySource>,
    /// Registered clients.
    pub clients: Arc<Clients>,
    /// The time.
    pub clock: Arc<dyn Clock>,
    /// The audit log.
    pub audit: AuditLog,
    /// Revoked tokens, runs, nodes and users.
    pub revocations: Arc<Revocations>,
    /// Back-channel logout delivery.
    pub backchannel: Backchannel,
    /// Authenticates consent forms and the admin UI's forms (HMAC): a form this server served,
    /// for this user and request, not yet expired. On PostgreSQL every replica shares it (kept
    /// sealed in the database), so a form one rendered is accepted by another.
    pub consent_key: Arc<ring::hmac::Key>,
    /// DPoP server nonces.
    pub dpop_nonces: Arc<crate::dpop::Nonces>,
    /// DPoP proofs already used.
    pub dpop_replay: Arc<crate::dpop::Replay>,
    /// Request rates by node, client or address.
    pub rate: Arc<crate::ratelimit::RateLimiter>,
    /// Revocation feed subscriber slots.
    pub feed_slots: crate::revocation::FeedSlots,
    /// Counters for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The policy file's `[[federation]]` tables with their issuers' key caches: the
    /// external tokens the federation grants accept.
    pub federation: Arc<crate::federation::external::Trust>,
}

/// The background tasks behind a state: await them after the last state handle is dropped, so
/// that queued audit events are committed and logout deliveries attempted.
#[derive(Debug)]
pub struct Tasks(Vec<JoinHandle<()>>);

impl Tasks {
    /// Waits for every task to finish.
    pub async fn finish(self) {
        for task in self.0 {
            let _ = task.await;
        }
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("issuer", &self.issuer.url())
            .finish_non_exhaustive()
    }
}

/// Why the state could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Occurs when the state directory cannot be created or secured.
    #[error("state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Occurs when the keys cannot be loaded (a corrupt key file among them).
    #[error("signing keys: {0}")]
    Keys(#[from] KeyError),
    /// Occurs when the database cannot be opened or migrated.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// Occurs when the store is shared by replicas and no key-encryption key is given.
    #[error(
        "--store is PostgreSQL, where replicas share the signing keys, kept in the database \
         sealed under a key-encryption key: give --key-encryption-key-file (make one with \
         `tailpass keys new-kek`; every replica needs the same)"
    )]
    KekRequired,
    /// Occurs when a `[[federation]]` table's keys cannot be set up (an unreadable
    /// `ca_file`).
    #[error("federation: {0}")]
    Federation(#[from] crate::federation::keys::KeysError),
    /// Occurs when the client metadata documents' settings cannot be used.
    #[error(transparent)]
    ClientMetadata(#[from] crate::client_metadata::DocumentError),
    /// Occurs when the back-channel logout HTTP clients cannot be built (no TLS roots).
    #[error("back-channel logout client: {0}")]
    Backchannel(#[from] reqwest::Error),
}

/// The keys directory's key ring (sealed when a key-encryption key is given), for one node.
async fn open_key_dir(
    settings: &Settings,
    key_settings: KeySettings,
    clock: Arc<dyn Clock>,
) -> Result<KeyRing, OpenError> {
    let keys_dir = settings.paths.keys_dir.clone();
    let kek_file = settings.paths.key_encryption_key_file.clone();
    tokio::task::spawn_blocking(move || {
        let kek = kek_file.as_deref().map(Kek::read).transpose()?;
        KeyRing::open_in(
            crate::keys::storage::open_dir(&keys_dir, kek)?,
            key_settings,
            clock,
        )
    })
    .await
    .map_err(|e| {
        OpenError::Keys(KeyError::Io {
            path: "key loading task".into(),
            source: std::io::Error::other(e.to_string()),
        })
    })?
    .map_err(OpenError::Keys)
}

impl AppState {
    /// Opens keys, store, revocations, audit writer and logout sender for `settings`.
    pub async fn open(
        settings: Settings,
        issuer: Issuer,
        identity: Arc<dyn IdentitySource>,
        clock: Arc<dyn Clock>,
    ) -> Result<(AppState, Tasks), OpenError> {
        let state_dir = settings.paths.state_dir.clone();
        crate::private_fs::ensure_dir(&state_dir).map_err(|source| OpenError::StateDir {
            path: state_dir.display().to_string(),
            source,
        })?;
        let key_settings = KeySettings {
            enabled: settings.algs.clone(),
            // A retired key must verify every token it signed: the longest a token lives,
            // plus a minute of clock skew.
            retire_after: settings.max_token_lifetime + 60,
            rotation_interval: settings.key_rotation_interval,
        };
        // Replicas share PostgreSQL, and with it the keys: refused before connecting.
        let shared_kek = match settings.store.location {
            crate::store::StoreLocation::Postgres(_) => Some(
                settings
                    .paths
                    .key_encryption_key_file
                    .clone()
                    .ok_or(OpenError::KekRequired)?,
            ),
            crate::store::StoreLocation::Sqlite(_) => None,
        };
        let store: Arc<dyn Store> = crate::store::open(&settings.store).await?;
        let (keys, secrets) = if let Some(kek_file) = shared_kek {
            let (keys, secrets) = crate::shared_keys::open(
                store.clone(),
                &kek_file,
                &settings.paths.keys_dir,
                key_settings,
                clock.clone(),
            )
            .await?;
            (keys, Some(secrets))
        } else {
            (
                open_key_dir(&settings, key_settings, clock.clone()).await?,
                None,
            )
        };
        let keys = Arc::new(keys);
        let revocations = Arc::new(Revocations::load(store.as_ref()).await?);
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let (audit, audit_task) =
            AuditLog::start(store.clone(), settings.audit_file.clone(), metrics.clone());
        let (backchannel, backchannel_task) =
            Backchannel::start(keys.clone(), issuer.url().to_owned(), clock.clone())?;
        let documents = crate::client_metadata::Documents::new(
            settings.client_metadata.clone(),
            settings.metadata_rules(crate::clients::Registrant::SelfRegistered),
        )?;
        let clients =
            Clients::new(settings.static_clients.clone(), store.clone()).with_documents(documents);
        let (consent_key, dpop_nonces) = match secrets {
            Some(shared) => (
                shared.forms,
                crate::dpop::Nonces::with_key(shared.dpop_nonce, settings.dpop_nonce),
            ),
            // One process: keys of its own, never written anywhere.
            None => {
                let random_failed = |_| OpenError::StateDir {
                    path: "random source".into(),
                    source: std::io::Error::other("the system random source failed"),
                };
                let consent_key = ring::hmac::Key::generate(
                    ring::hmac::HMAC_SHA256,
                    &ring::rand::SystemRandom::new(),
                )
                .map_err(random_failed)?;
                let nonces =
                    crate::dpop::Nonces::new(settings.dpop_nonce).map_err(random_failed)?;
                (consent_key, nonces)
            }
        };
        let federation = crate::federation::external::Trust::new(&settings.policy.federation)?;
        let feed_slots = crate::revocation::FeedSlots::new(settings.feed_reserved_slots);
        let rate = crate::ratelimit::RateLimiter::new(100_000);
        // Replicas share each budget through the store (counted per minute, flushed every
        // second by the server's upkeep).
        let rate = if store.shared_by_replicas() {
            rate.with_shared_counts()
        } else {
            rate
        };
        let dpop_replay = crate::dpop::Replay::over(
            tailpass_verify::dpop::ReplayCache::new(
                crate::dpop::REPLAY_CAPACITY,
                crate::dpop::MAX_AGE + crate::dpop::SKEW,
            ),
            store.clone(),
        );
        // Every lookup the server makes goes through this one source: bounded once here.
        let identity: Arc<dyn IdentitySource> = Arc::new(crate::identity::bounded::Bounded::new(
            identity,
            settings.identity_timeout,
            settings.identity_max_lookups,
        ));
        Ok((
            AppState(Arc::new(Shared {
                issuer: Arc::new(issuer),
                settings: Arc::new(settings),
                store,
                keys,
                identity,
                clients: Arc::new(clients),
                clock,
                audit,
                revocations,
                backchannel,
                consent_key: Arc::new(consent_key),
                dpop_nonces: Arc::new(dpop_nonces),
                dpop_replay: Arc::new(dpop_replay),
                rate: Arc::new(rate),
                feed_slots,
                metrics,
                federation: Arc::new(federation),
            })),
            Tasks(vec![audit_task, backchannel_task]),
        ))
    }

    /// Whether the store answers a cheap read (an index lookup past the last revocation)
    /// within [`READY_TIMEOUT`] and has not just refused a write for want of space
    /// (`Store::writes_failing`), for `/readyz`. Why not is said in words that name nothing of
    /// the database, since probes are answered with no identity; the detail goes to the log.
    pub async fn store_ready(&self) -> Result<(), &'static str> {
        if self.store.writes_failing() {
            tracing::warn!("readiness: the store refuses writes (disk full or I/O error)");
            return Err("writes failing");
        }
        match tokio::time::timeout(READY_TIMEOUT, self.store.revocations_since(u64::MAX)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: the store failed");
                Err("database error")
            }
            Err(_) => Err("no answer in time"),
        }
    }

    /// The current time.
    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }

    /// What ending a session borrows.
    pub fn sessions(&self) -> crate::session::Ctx<'_> {
        crate::session::Ctx {
            store: self.store.as_ref(),
            revocations: &self.revocations,
            clients: &self.clients,
            backchannel: &self.backchannel,
            audit: &self.audit,
            default_alg: self.settings.default_id_token_alg(),
        }
    }

    /// What the grants borrow.
    pub fn grants(&self) -> crate::grant::Context<'_> {
        let settings = &self.settings;
        crate::grant::Context {
            issuer: &self.issuer,
            keys: &self.keys,
            store: self.store.as_ref(),
            audit: &self.audit,
            revocations: &self.revocations,
            clock: self.clock.as_ref(),
            identity: self.identity.as_ref(),
            clients: &self.clients,
            rate: crate::grant::Rate {
                limiter: &self.rate,
                per_minute: settings.rate_limit,
            },
            policy: crate::grant::Policy {
                file: &settings.policy,
                capability: &settings.agent_capability,
                trust: &self.federation,
            },
            lifetimes: crate::grant::Lifetimes {
                token: settings.token_lifetime,
                agent_token: settings.agent_token_lifetime,
                refresh: settings.refresh_lifetime,
                max_token: settings.max_token_lifetime,
            },
            signing: crate::grant::Signing {
                access: settings.signing_alg,
                id_token: settings.default_id_token_alg(),
            },
            sessions: self.sessions(),
            consent_key: &self.consent_key,
        }
    }
}
