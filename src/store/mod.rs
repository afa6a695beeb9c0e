//! Durable state: the [`Store`] trait and its records.
//!
//! What must survive a restart or a crash lives here — clients, authorization codes, refresh
//! token families, revocations, consents and the audit log; and, for replicas sharing one
//! database, the signing keys and HMAC secrets, as blobs sealed before they reach the store
//! (the store never sees a key in clear, nor knows what a key is).
//!
//! The trait speaks in records and outcomes, never in SQL: single-use and rotation rules
//! ("a code is redeemed once", "a spent refresh token revokes its family") are atomic
//! operations of the store, so that a second implementation (PostgreSQL, for replicas) gives
//! the same guarantees. Secrets appear only as [`SecretHash`]es.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tailpass_verify::feed::RevocationKind;
use tailpass_verify::{Thumbprint, UnixTime};

use crate::audit::{AuditEvent, EventKind};
use crate::clients::{Client, ClientId};
use crate::federation::runs::{FederatedRun, FederationBlock, RunMatch};
use crate::identity::Identity;
use crate::secret::SecretHash;

pub(crate) mod codec;
pub mod location;
pub mod postgres;
pub mod snapshot;
pub mod sqlite;

pub use location::{StoreLocation, StoreSettings, StoreUrl};
pub use snapshot::Snapshot;

/// How long a write refused for want of space or an I/O error keeps `/readyz` unready, unless
/// a write commits first: the `Retry-After` the refusal asked for.
pub const WRITE_FAULT_SHOWN: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Occurs when inserting a record whose key already exists.
    #[error("already exists: {0}")]
    Conflict(String),
    /// Occurs when a stored record cannot be decoded (a damaged or foreign database).
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    /// Occurs when the database itself fails (I/O, locking, a refused statement).
    #[error("database error: {0}")]
    Backend(String),
    /// Occurs when the database cannot be reached now (no connection within the pool's
    /// timeout, a connection lost mid-statement): the request may succeed if retried, and the
    /// pool reconnects by itself.
    #[error("database unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// The same error, for a second caller (errors carry only text).
    pub fn duplicate(&self) -> StoreError {
        match self {
            StoreError::Conflict(m) => StoreError::Conflict(m.clone()),
            StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
            StoreError::Backend(m) => StoreError::Backend(m.clone()),
            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        }
    }
}

/// Opens the store `settings` name: the SQLite file, or a pool of connections to PostgreSQL
/// (migrated at open either way).
pub async fn open(settings: &StoreSettings) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match &settings.location {
        StoreLocation::Sqlite(path) => Arc::new(sqlite::SqliteStore::open(path).await?),
        StoreLocation::Postgres(target) => Arc::new(
            postgres::PostgresStore::open(target, settings.ca_file.as_deref(), settings.pool_size)
                .await?,
        ),
    })
}

/// What an authorization code grants, kept until it is redeemed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthCode {
    /// The client the code was issued to.
    pub client_id: ClientId,
    /// The redirect URI it was delivered to; the token request must repeat it.
    pub redirect_uri: String,
    /// Granted scopes.
    pub scope: Vec<String>,
    /// Granted RFC 8707 resources (future audiences).
    pub resources: Vec<String>,
    /// The OIDC nonce to echo in the ID token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// The PKCE challenge (RFC 7636).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkce: Option<crate::pkce::Challenge>,
    /// Who logged in.
    pub identity: Identity,
    /// When they authenticated.
    pub auth_time: UnixTime,
    /// The session id (`sid`), which also names the refresh family its redemption creates.
    pub sid: String,
    /// When the code expires.
    pub expires_at: UnixTime,
}

/// The result of redeeming a code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redemption {
    /// First use: the code is now spent. It carries nothing: the grant read the code before
    /// (`code_state`), and decoding it again inside the write would only lengthen the batch.
    Redeemed,
    /// The code was already used; what it issued should be revoked.
    Replayed(Box<AuthCode>),
    /// Unknown or expired.
    Invalid,
}

/// Where a stored authorization code stands, as read before redeeming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeState {
    /// Not stored, or expired.
    Unknown,
    /// Redeemed already: presenting it again is a replay.
    Spent,
    /// Stored, unexpired and never redeemed.
    Unspent(Box<AuthCode>),
}

/// What a person approved on a dynamically registered client's consent page: a later request
/// within it needs no new approval, anything more — another scope, resource or redirect URI,
/// or the client's metadata changed since ([`crate::clients::Client::version`]) — asks again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    /// Approved scopes.
    pub scopes: Vec<String>,
    /// Approved RFC 8707 resources.
    pub resources: Vec<String>,
    /// Redirect URIs codes were approved for.
    pub redirect_uris: Vec<String>,
    /// The version of the client's metadata the person saw.
    pub client_version: u64,
}

impl Consent {
    /// Whether this approval covers `request`: the same client version, and every scope,
    /// resource and redirect URI of the request approved.
    pub fn covers(&self, request: &Consent) -> bool {
        let within =
            |asked: &[String], approved: &[String]| asked.iter().all(|a| approved.contains(a));
        self.client_version == request.client_version
            && within(&request.scopes, &self.scopes)
            && within(&request.resources, &self.resources)
            && within(&request.redirect_uris, &self.redirect_uris)
    }

    /// This approval joined with an `earlier` one of the same client version; an approval of
    /// another version replaces it.
    pub fn joined(mut self, earlier: Option<Consent>) -> Consent {
        let Some(earlier) = earlier.filter(|e| e.client_version == self.client_version) else {
            return self;
        };
        for (into, from) in [
            (&mut self.scopes, earlier.scopes),
            (&mut self.resources, earlier.resources),
            (&mut self.redirect_uris, earlier.redirect_uris),
        ] {
            for item in from {
                if !into.contains(&item) {
                    into.push(item);
                }
            }
        }
        self
    }
}

/// A refresh-token family: every refresh token descending from one authorization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshFamily {
    /// The family id.
    pub id: String,
    /// The client.
    pub client_id: ClientId,
    /// Who it was issued to.
    pub identity: Identity,
    /// Granted scopes (a refresh may narrow, never widen them).
    pub scope: Vec<String>,
    /// Granted resources.
    pub resources: Vec<String>,
    /// When the user authenticated.
    pub auth_time: UnixTime,
    /// The session id.
    pub sid: String,
    /// When the family was created.
    pub created_at: UnixTime,
    /// The absolute end of the family, whatever the refreshes.
    pub expires_at: UnixTime,
    /// When it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<UnixTime>,
    /// The DPoP key a public client's refresh tokens are bound to (RFC 9449 §5): set when the
    /// code was redeemed with a proof; each refresh then needs a proof by the same key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<Thumbprint>,
}

impl RefreshFamily {
    /// Whether the family can still issue tokens at `now`.
    pub fn is_live(&self, now: UnixTime) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

/// The result of presenting a refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The token was current: it is now spent and the replacement is current.
    Rotated(RefreshFamily),
    /// The token had already been spent: the whole family has been revoked.
    Reused(RefreshFamily),
    /// The family was revoked or has expired.
    Inactive(RefreshFamily),
    /// No such token.
    Unknown,
}

/// A revocation: tokens matching `kind`/`value` issued at or before `revoked_at` are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Its position in the revocation feed.
    pub seq: u64,
    /// What it matches.
    pub kind: RevocationKind,
    /// The matched value.
    pub value: String,
    /// When it was made.
    pub revoked_at: UnixTime,
    /// For nodes and users: new tokens are refused until then (`None`: until lifted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<UnixTime>,
    /// When new tokens were allowed again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifted_at: Option<UnixTime>,
    /// The lift's own position in the store's revocation sequence (the same numbers as
    /// `seq`), so that a replica reading back [`Store::revocations_since`] learns of a lift
    /// as it learns of a revocation. `None` when not lifted (or lifted by an older release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lift_seq: Option<u64>,
}

impl Revocation {
    /// A revocation just made, numbered `seq`: not lifted.
    pub fn new(
        seq: u64,
        kind: RevocationKind,
        value: &str,
        revoked_at: UnixTime,
        until: Option<UnixTime>,
    ) -> Revocation {
        Revocation {
            seq,
            kind,
            value: value.to_owned(),
            revoked_at,
            until,
            lifted_at: None,
            lift_seq: None,
        }
    }

    /// Where the row last changed in the revocation sequence: its lift, or else its making.
    /// [`Store::revocations_since`] answers by it.
    pub fn position(&self) -> u64 {
        self.lift_seq.unwrap_or(0).max(self.seq)
    }
}

/// Which audit events to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Events of this run, its parent chain's children included (`run_id` or `root_run_id`).
    pub run: Option<String>,
    /// Events of this node (stable id).
    pub node: Option<String>,
    /// Events of this user (login).
    pub user: Option<String>,
    /// Events of this kind.
    pub event: Option<EventKind>,
    /// Events at or after this time.
    pub since: Option<UnixTime>,
    /// Events after this sequence number (paging).
    pub after_seq: Option<u64>,
    /// At most this many events (newest last).
    pub limit: u32,
}

/// An audit event with its position in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The position in the log, increasing.
    pub seq: u64,
    /// The event.
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// Requests admitted for one rate-limit key in one window (a minute): a delta to add, or a
/// total read back ([`Store::add_rate_counts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateCount {
    /// The limiter's key (a node, a client).
    pub key: String,
    /// The window: unix time / 60.
    pub window: u64,
    /// Requests.
    pub count: u64,
}

/// The manifest of the shared signing keys, as stored: opaque to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyManifest {
    /// Bumped by every write; a write names the version it replaces (compare-and-swap).
    pub version: u64,
    /// The generation of sealed blobs it reads (a rewrap writes a new one, then swaps).
    pub generation: u64,
    /// The manifest itself (JSON, written and read by the key storage).
    pub data: String,
}

/// Durable state. Every method is atomic.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Adds a client; [`StoreError::Conflict`] if its id exists.
    async fn insert_client(&self, client: &Client) -> Result<(), StoreError>;
    /// The client with this id.
    async fn client(&self, id: &ClientId) -> Result<Option<Client>, StoreError>;
    /// Every stored client, oldest first.
    async fn clients(&self) -> Result<Vec<Client>, StoreError>;
    /// Replaces a client; false if there is none with its id.
    async fn update_client(&self, client: &Client) -> Result<bool, StoreError>;
    /// Deletes a client and its consents; false if there was none.
    async fn delete_client(&self, id: &ClientId) -> Result<bool, StoreError>;

    /// Stores a new authorization code under the hash of its value.
    async fn insert_code(&self, hash: &SecretHash, code: &AuthCode) -> Result<(), StoreError>;
    /// Where the code under this hash stands at `now`, without changing it: the grant reads
    /// it to check and mint before the one write that spends it.
    async fn code_state(&self, hash: &SecretHash, now: UnixTime) -> Result<CodeState, StoreError>;
    /// Redeems a code: the first call at or before its expiry gets it and, in the same atomic
    /// step, creates `family` with its first token (when the client gets refresh tokens);
    /// every later call learns it was replayed. A replay, in the same atomic step, marks the
    /// code and revokes the refresh family named by the code's `sid`, so no order of two
    /// redemptions leaves a live family.
    async fn redeem_code(
        &self,
        hash: &SecretHash,
        family: Option<(&RefreshFamily, &SecretHash)>,
        now: UnixTime,
    ) -> Result<Redemption, StoreError>;
    /// Creates a refresh family whose first token has hash `token`.
    async fn insert_family(
        &self,
        family: &RefreshFamily,
        token: &SecretHash,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// Spends `presented` and makes `replacement` current, or reports why not (revoking the
    /// family when `presented` was already spent). A token of another client is `Unknown` and
    /// left untouched.
    async fn rotate_refresh(
        &self,
        presented: &SecretHash,
        replacement: &SecretHash,
        client: &ClientId,
        now: UnixTime,
    ) -> Result<Rotation, StoreError>;
    /// The family a refresh token belongs to, and whether the token itself is spent.
    async fn family_of(
        &self,
        token: &SecretHash,
    ) -> Result<Option<(RefreshFamily, bool)>, StoreError>;
    /// Revokes a family; false if unknown or already revoked.
    async fn revoke_family(&self, id: &str, now: UnixTime) -> Result<bool, StoreError>;
    /// Revokes every live family of a user (by login) or node (by stable id), returning them.
    async fn revoke_families_of(
        &self,
        kind: RevocationKind,
        value: &str,
        now: UnixTime,
    ) -> Result<Vec<RefreshFamily>, StoreError>;

    /// Appends a revocation, assigning its feed sequence number.
    async fn insert_revocation(
        &self,
        kind: RevocationKind,
        value: &str,
        revoked_at: UnixTime,
        until: Option<UnixTime>,
    ) -> Result<Revocation, StoreError>;
    /// Lifts the live revocations of `kind`/`value` (new tokens allowed again), returning them.
    /// The lift takes one new number of the revocation sequence (`lift_seq`), so that every
    /// reader of [`Store::revocations_since`] learns of it.
    async fn lift_revocations(
        &self,
        kind: RevocationKind,
        value: &str,
        now: UnixTime,
    ) -> Result<Vec<Revocation>, StoreError>;
    /// Revocations made or lifted after `seq` (whose [`Revocation::position`] is above it),
    /// in the order of their position, each as it stands now.
    async fn revocations_since(&self, seq: u64) -> Result<Vec<Revocation>, StoreError>;
    /// The revocations that may still matter at `now`, in sequence order, each as it stands
    /// now: those made at or after `horizon` (a token they match may be unexpired), and node
    /// and user revocations still refusing new tokens. The revocation feed's snapshot base
    /// reads these rather than every stored row, so that what it reads stays the size of
    /// what is live instead of growing with the revocations kept until the next purge.
    async fn live_revocations(
        &self,
        horizon: UnixTime,
        now: UnixTime,
    ) -> Result<Vec<Revocation>, StoreError>;

    /// What the user (by subject) approved for the client, if anything.
    async fn consent(&self, client: &ClientId, user: &str) -> Result<Option<Consent>, StoreError>;
    /// Records the user's approval of the client, joined atomically with what they approved
    /// before for the same client version ([`Consent::joined`]).
    async fn insert_consent(
        &self,
        client: &ClientId,
        user: &str,
        approved: &Consent,
        now: UnixTime,
    ) -> Result<(), StoreError>;

    /// Appends audit events in one transaction.
    async fn append_audit(&self, events: Arc<[AuditEvent]>) -> Result<(), StoreError>;
    /// Lists audit events, oldest first.
    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError>;

    /// Deletes what can no longer matter at `now`: codes past expiry (kept `grace` seconds
    /// more to detect replays), families and revocations past `horizon`, DPoP proofs past
    /// their `expires_at`, rate counts of windows before the last, federated runs past their
    /// `exp` and federation blocks past their `until`.
    async fn purge(&self, now: UnixTime, grace: u64, horizon: UnixTime) -> Result<u64, StoreError>;
    // --- Replica coordination: DPoP proofs and rate counts shared by replicas ---

    /// Whether other processes may serve this store at once (replicas on PostgreSQL). When
    /// not, a process's memory is the whole picture, and the methods of this block answer
    /// without writing.
    fn shared_by_replicas(&self) -> bool;
    /// Whether the last write was refused for want of space or an I/O error, and that only a
    /// few seconds ago with none committed since: `/readyz` says so, though reads still
    /// answer. It clears on the next committed write, or by itself after
    /// [`WRITE_FAULT_SHOWN`], so a probe that takes the server out of rotation cannot keep it
    /// out once the writes that would succeed again stop coming. A store that cannot tell
    /// answers false.
    fn writes_failing(&self) -> bool {
        false
    }
    /// Records the DPoP proof `jti` of the key `jkt` as used, until `expires_at`; false if it
    /// was recorded already (a replay, possibly at another replica). A store no other process
    /// shares records nothing and answers true: the process's own cache is the record.
    async fn claim_dpop_proof(
        &self,
        jkt: &str,
        jti: &str,
        expires_at: UnixTime,
    ) -> Result<bool, StoreError>;
    /// Adds each count to its key's shared total for its window (at most one count per key
    /// and window), and answers every total as it stands after the addition, in any order.
    /// A store no other process shares answers
    /// the counts as given.
    async fn add_rate_counts(&self, counts: &[RateCount]) -> Result<Vec<RateCount>, StoreError>;

    // --- end of replica coordination ---

    /// Drops the audit events older than `before`, as one range from the log's start (and the
    /// contexts and run zones only they used); the log refuses any other deletion. Returns
    /// how many events went.
    async fn purge_audit_before(&self, before: UnixTime) -> Result<u64, StoreError>;

    // Shared keys: sealed signing keys and HMAC secrets for replicas sharing the store.

    /// Records the external token `key` (a hash naming it, see `grant::federated`) as
    /// traded, until `expires_at`; false if it was recorded already — a replay, possibly at
    /// another replica. Unlike DPoP proofs this is written on every backend, so a restart
    /// does not make a used token good again.
    async fn claim_federated_token(
        &self,
        key: &str,
        expires_at: UnixTime,
    ) -> Result<bool, StoreError>;

    // Federated runs: what the kill switch and the audit select by external claims.

    /// Records a run minted from an external token, kept until its `exp`.
    async fn insert_federated_run(&self, run: &FederatedRun) -> Result<(), StoreError>;
    /// The recorded runs `selection` matches (its table, every claim equal as text), oldest
    /// first, expired ones not yet purged included.
    async fn federated_runs(&self, selection: &RunMatch) -> Result<Vec<FederatedRun>, StoreError>;
    /// Stores a refusal of new trades of matching external tokens, kept until its `until`.
    async fn insert_federation_block(&self, block: &FederationBlock) -> Result<(), StoreError>;
    /// The refusals of `table` still in force at `now`, oldest first. Read at every trade of
    /// that table, so every replica sees a block as soon as it is committed.
    async fn federation_blocks(
        &self,
        table: &str,
        now: UnixTime,
    ) -> Result<Vec<FederationBlock>, StoreError>;

    /// The signing keys' manifest, if one was ever written.
    async fn key_manifest(&self) -> Result<Option<KeyManifest>, StoreError>;
    /// Writes the manifest if the stored one is still at version `expected` (`None`: there is
    /// none yet), answering its new version; `None` (nothing written) when another writer got
    /// there first. On PostgreSQL the commit notifies every replica listening
    /// ([`Store::key_changes`]).
    async fn swap_key_manifest(
        &self,
        expected: Option<u64>,
        generation: u64,
        data: &str,
    ) -> Result<Option<u64>, StoreError>;
    /// Stores the sealed key `kid` of `generation` unless one is there already (a `kid` is the
    /// key's thumbprint: the same `kid` is the same key).
    async fn insert_key_blob(
        &self,
        kid: &str,
        generation: u64,
        blob: &[u8],
    ) -> Result<(), StoreError>;
    /// The sealed key `kid` of `generation`.
    async fn key_blob(&self, kid: &str, generation: u64) -> Result<Option<Vec<u8>>, StoreError>;
    /// Deletes the key `kid`, every generation of it.
    async fn delete_key_blob(&self, kid: &str) -> Result<(), StoreError>;
    /// Deletes every sealed key and secret of `generation` (the set a rewrap replaced).
    async fn delete_key_generation(&self, generation: u64) -> Result<(), StoreError>;
    /// The sealed secret `name` of `generation`.
    async fn shared_secret(
        &self,
        name: &str,
        generation: u64,
    ) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores the sealed secret `name` of `generation` unless one is there already, and
    /// answers the one stored: of replicas creating it at once, all get the first one's.
    async fn insert_shared_secret(
        &self,
        name: &str,
        generation: u64,
        blob: &[u8],
    ) -> Result<Vec<u8>, StoreError>;
    /// A channel that changes when another process may have changed the key manifest
    /// (PostgreSQL's LISTEN, on a connection of its own, reconnecting by itself); `None` where
    /// there is no such notification, and readers poll. Its value means nothing; each change
    /// is a reason to read the manifest again.
    fn key_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    // Whole-store copies (`tailpass store migrate`, `store backup`).

    /// Every durable row, as of one commit (one read transaction; `REPEATABLE READ` on
    /// PostgreSQL), each table sorted by its key ([`Snapshot::sort`]). DPoP proofs and rate
    /// counts are ephemeral and left out.
    async fn export(&self) -> Result<Snapshot, StoreError>;
    /// Writes `snapshot` into this store in one transaction, keeping every revocation's and
    /// audit event's number and continuing the sequences after them. Refused
    /// ([`StoreError::Conflict`]) unless the store is empty: no row in any table a snapshot
    /// holds, its revocation counter and audit horizon at zero.
    async fn import(&self, snapshot: &Snapshot) -> Result<(), StoreError>;
}

#[cfg(test)]
pub(crate) mod tests;
