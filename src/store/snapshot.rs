//! A whole store as rows: what `tailpass store migrate` and `store backup` of PostgreSQL
//! copy from one backend to the other ([`super::Store::export`], [`super::Store::import`]).
//!
//! Rows are the columns both backends store alike (records as the same JSON text, times as
//! seconds), so a copy is opaque: nothing is decoded but the audit events, which SQLite keeps
//! split into contexts and per-event rows. The replica-coordination tables (DPoP proofs, rate
//! counts) and the used federation tokens are ephemeral — each matters for minutes — and are
//! not copied. The federated runs and federation blocks are copied: they are what
//! `tailpass revoke --fed` and `audit --fed` select by, and a block must outlive a move.

/// A client row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRow {
    /// The client id.
    pub client_id: String,
    /// When it was registered (seconds).
    pub created_at: i64,
    /// The client record, JSON.
    pub data: String,
}

/// An authorization code row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeRow {
    /// The hash of the code.
    pub code_hash: String,
    /// Its client.
    pub client_id: String,
    /// When it expires.
    pub expires_at: i64,
    /// When it was redeemed.
    pub redeemed_at: Option<i64>,
    /// When a replay was detected.
    pub replayed_at: Option<i64>,
    /// The code record, JSON.
    pub data: String,
}

/// A refresh family row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyRow {
    /// The family id.
    pub family_id: String,
    /// Its client.
    pub client_id: String,
    /// The user's login, if a user's.
    pub user_login: Option<String>,
    /// The node's stable id.
    pub node_id: String,
    /// When it was created.
    pub created_at: i64,
    /// Its absolute end.
    pub expires_at: i64,
    /// When it was revoked.
    pub revoked_at: Option<i64>,
    /// The family record, JSON.
    pub data: String,
}

/// A refresh token row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// The hash of the token.
    pub token_hash: String,
    /// Its family.
    pub family_id: String,
    /// When it was issued.
    pub issued_at: i64,
    /// When it was spent (rotated).
    pub spent_at: Option<i64>,
}

/// A revocation row, its numbers kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationRow {
    /// Its number in the revocation sequence.
    pub seq: i64,
    /// What it matches, as the database writes it.
    pub kind: String,
    /// The matched value.
    pub value: String,
    /// When it was made.
    pub revoked_at: i64,
    /// Until when new tokens are refused.
    pub until: Option<i64>,
    /// When it was lifted.
    pub lifted_at: Option<i64>,
    /// The lift's number in the same sequence.
    pub lift_seq: Option<i64>,
}

/// A consent row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRow {
    /// The client.
    pub client_id: String,
    /// The user (subject).
    pub user_key: String,
    /// When it was last given.
    pub granted_at: i64,
    /// The consent record, JSON (`None`: a row from before consents recorded it).
    pub data: Option<String>,
}

/// A sealed key or shared secret, opaque.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRow {
    /// The key's `kid`, or the secret's name.
    pub name: String,
    /// Its generation.
    pub generation: i64,
    /// The sealed bytes.
    pub blob: Vec<u8>,
}

/// A run minted from an external token (`federated_runs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedRunRow {
    /// The run id.
    pub run_id: String,
    /// The table its external token matched.
    pub table_name: String,
    /// The run token's `fed` object, JSON.
    pub claims: String,
    /// When the run token was issued.
    pub iat: i64,
    /// When it expires.
    pub exp: i64,
}

/// A refusal of new trades (`federation_blocks`); its row number is not kept, the rows are
/// numbered again in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationBlockRow {
    /// The table.
    pub table_name: String,
    /// The claims, JSON.
    pub claims: String,
    /// When it was made.
    pub since: i64,
    /// When it ends.
    pub until: i64,
}

/// Every durable row of a store, as of one commit, each table in its key's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Clients.
    pub clients: Vec<ClientRow>,
    /// Consents.
    pub consents: Vec<ConsentRow>,
    /// Authorization codes.
    pub codes: Vec<CodeRow>,
    /// Refresh families.
    pub families: Vec<FamilyRow>,
    /// Refresh tokens.
    pub tokens: Vec<TokenRow>,
    /// Revocations.
    pub revocations: Vec<RevocationRow>,
    /// The last number the revocation sequence gave (revocations and lifts): the target goes
    /// on after it.
    pub revocation_seq: i64,
    /// The audit log, its `seq`s kept.
    pub audit: Vec<super::AuditRecord>,
    /// The audit retention horizon (events below it were purged).
    pub audit_horizon: i64,
    /// The shared signing keys' manifest.
    pub key_manifest: Option<super::KeyManifest>,
    /// Sealed signing keys.
    pub key_blobs: Vec<BlobRow>,
    /// Sealed shared secrets.
    pub shared_secrets: Vec<BlobRow>,
    /// Runs minted from external tokens.
    pub federated_runs: Vec<FederatedRunRow>,
    /// Refusals of new trades.
    pub federation_blocks: Vec<FederationBlockRow>,
}

impl Snapshot {
    /// Puts every table in its key's order (byte order of text keys), whatever order the
    /// database answered in, so that two snapshots of the same rows are equal.
    pub fn sort(&mut self) {
        self.clients
            .sort_by(|a, b| (a.created_at, &a.client_id).cmp(&(b.created_at, &b.client_id)));
        self.consents
            .sort_by(|a, b| (&a.client_id, &a.user_key).cmp(&(&b.client_id, &b.user_key)));
        self.codes.sort_by(|a, b| a.code_hash.cmp(&b.code_hash));
        self.families.sort_by(|a, b| a.family_id.cmp(&b.family_id));
        self.tokens.sort_by(|a, b| a.token_hash.cmp(&b.token_hash));
        self.revocations.sort_by_key(|r| r.seq);
        self.audit.sort_by_key(|r| r.seq);
        self.federated_runs.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        self.federation_blocks.sort_by(|a, b| {
            (a.since, &a.table_name, &a.claims, a.until).cmp(&(
                b.since,
                &b.table_name,
                &b.claims,
                b.until,
            ))
        });
        for blobs in [&mut self.key_blobs, &mut self.shared_secrets] {
            blobs.sort_by(|a, b| (&a.name, a.generation).cmp(&(&b.name, b.generation)));
        }
    }

    /// The number of rows of each table, by table name (for progress and verification).
    pub fn counts(&self) -> [(&'static str, usize); 12] {
        [
            ("clients", self.clients.len()),
            ("consents", self.consents.len()),
            ("codes", self.codes.len()),
            ("refresh families", self.families.len()),
            ("refresh tokens", self.tokens.len()),
            ("revocations", self.revocations.len()),
            ("audit events", self.audit.len()),
            ("key manifest", usize::from(self.key_manifest.is_some())),
            ("sealed keys", self.key_blobs.len()),
            ("shared secrets", self.shared_secrets.len()),
            ("federated runs", self.federated_runs.len()),
            ("federation blocks", self.federation_blocks.len()),
        ]
    }

    /// The revocation counter a target must continue from: the snapshot's, or any higher
    /// number its rows carry.
    pub fn next_revocation_floor(&self) -> i64 {
        self.revocations
            .iter()
            .map(|r| r.seq.max(r.lift_seq.unwrap_or(0)))
            .fold(self.revocation_seq, i64::max)
    }

    /// The audit counter a target must continue from: the last event's `seq`, or the horizon.
    pub fn audit_floor(&self) -> i64 {
        self.audit
            .iter()
            .map(|r| i64::try_from(r.seq).unwrap_or(i64::MAX))
            .fold(self.audit_horizon, i64::max)
    }
}

/// The tables a snapshot fills, each empty in a store that may import one.
pub(crate) const TABLES: [&str; 12] = [
    "clients",
    "consents",
    "codes",
    "refresh_families",
    "refresh_tokens",
    "revocations",
    "audit",
    "key_manifest",
    "key_blobs",
    "shared_secrets",
    "federated_runs",
    "federation_blocks",
];

/// Why a store refuses an import: what it holds already.
pub(crate) fn not_empty(what: &str) -> super::StoreError {
    super::StoreError::Conflict(format!(
        "the target store is not empty ({what}); an import needs a new, empty store"
    ))
}
