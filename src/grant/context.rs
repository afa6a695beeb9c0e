//! What a grant may reach: a context of borrowed parts, so that a grant runs against a
//! temporary store, a local identity table and a manual clock as well as against the
//! server's state, and says by its signature what it touches.

use tailpass_verify::{Alg, UnixTime};

use crate::audit_log::AuditLog;
use crate::client_registry::Clients;
use crate::clock::Clock;
use crate::federation::external::Trust;
use crate::identity::IdentitySource;
use crate::issuer::Issuer;
use crate::keys::KeyRing;
use crate::policy::file::PolicyFile;
use crate::ratelimit::RateLimiter;
use crate::revocation::Revocations;
use crate::session;
use crate::store::Store;

/// How long what a grant issues lives, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// A person's access and ID tokens, and a confidential client's access tokens.
    pub token: u64,
    /// An agent token, when the request names no `expires_in`.
    pub agent_token: u64,
    /// A refresh family, from its code's redemption (absolute, whatever the refreshes).
    pub refresh: u64,
    /// The cap on any token's lifetime.
    pub max_token: u64,
}

/// Which algorithms a grant signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signing {
    /// Access tokens.
    pub access: Alg,
    /// ID tokens of clients that registered no `id_token_signed_response_alg`.
    pub id_token: Alg,
}

/// The policy a grant decides by.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// The local policy file (groups, agent rules).
    pub file: &'a PolicyFile,
    /// The tailnet capability that carries agent rules.
    pub capability: &'a str,
    /// The external issuers trusted (the policy file's `[[federation]]` tables), with their
    /// key caches.
    pub trust: &'a Trust,
}

/// Request budgets: per node, client or address, per minute, by the context's clock.
#[derive(Clone, Copy)]
pub struct Rate<'a> {
    /// The shared limiter.
    pub limiter: &'a RateLimiter,
    /// The default budget, requests per minute.
    pub per_minute: u32,
}

/// The parts every grant, consent and redemption borrows from the server's state.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    /// The issuer (its URL is every token's `iss`).
    pub issuer: &'a Issuer,
    /// The signing keys.
    pub keys: &'a KeyRing,
    /// Codes, refresh families and consents.
    pub store: &'a dyn Store,
    /// The audit log: a grant's answer waits for its event to commit.
    pub audit: &'a AuditLog,
    /// Revoked runs, nodes, users and tokens.
    pub revocations: &'a Revocations,
    /// The time.
    pub clock: &'a dyn Clock,
    /// The identity source, to find a session's person again at refresh.
    pub identity: &'a dyn IdentitySource,
    /// Registered clients.
    pub clients: &'a Clients,
    /// Request budgets.
    pub rate: Rate<'a>,
    /// Who may get what.
    pub policy: Policy<'a>,
    /// How long tokens and families live.
    pub lifetimes: Lifetimes,
    /// Which algorithms sign.
    pub signing: Signing,
    /// Ending sessions (store, index, back-channel logout).
    pub sessions: session::Ctx<'a>,
    /// Authenticates consent forms (HMAC): a form this process served, for this person and
    /// request, not yet expired.
    pub consent_key: &'a ring::hmac::Key,
}

impl Context<'_> {
    /// The current time, by the context's clock.
    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }

    /// Takes one request from `key`'s budget of `per_minute`; `Err` carries the seconds to
    /// wait. Shared by every grant that rate-limits.
    pub fn within_rate(&self, key: &str, per_minute: u32) -> Result<(), u64> {
        self.rate.limiter.check(key, per_minute, self.now())
    }
}
