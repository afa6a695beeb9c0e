//! The federation grants (docs/design.md "Federation"): a token another issuer signed — a
//! GitHub Actions or GitLab CI job's OIDC token, a Kubernetes service-account token — traded
//! for a tailpass run token, by RFC 8693 exchange (`subject_token_type` `jwt` or `id_token`)
//! or as an RFC 7523 assertion (`grant_type` jwt-bearer).
//!
//! The external token is checked by [`Trust::verify`](crate::federation::external::Trust)
//! against the policy file's `[[federation]]` tables; the table it matched makes the caller
//! selectable as `fed:<table>`, and the caller's rules decide as for the agent grant
//! (audiences, scopes, claims, lifetime cap, rate). Then:
//!
//! - a caller on the tailnet keeps its own subject (`node:<StableID>`, or its person's) and its
//!   token is bound to its node (`cnf.tailnet_node`, and `cnf.jkt` with a DPoP proof); its
//!   node and user revocations refuse it;
//! - a caller with no tailnet identity (or arriving over Funnel) must send a DPoP proof: its
//!   token's subject is `fed:<table>:<external sub>` and it is bound to that key only
//!   (`cnf.jkt`), so that the run token is worth nothing to whoever reads it off a CI log;
//! - the run token carries `fed` (issuer, subject, table and the profile's claims) and, unless
//!   the request names one, the profile's run label (GitHub: `<run_id>/<run_attempt>`);
//! - every trade records its run and `fed` claims (`Store::insert_federated_run`) before
//!   signing, and a trade whose token matches a stored block (`tailpass revoke --fed`) is
//!   refused;
//! - a `single_use` table's token is traded once: its replay key is claimed in the store, by
//!   hash, until the token expires; a second trade is `invalid_grant`.
//!
//! The run token's lifetime is the request's or the default, within the deciding rule's cap
//! and the server's; it is not cut to the external token's remaining life, which for a CI
//! platform is minutes (GitHub: 5) while the job it authorizes runs longer. The external
//! token is good for the trade only while it is valid.

use std::net::IpAddr;
use std::sync::Arc;

use tailpass_verify::claims::{Confirmation, Profile, RunClaims};
use tailpass_verify::dpop::Proof;
use tailpass_verify::{AccessClaims, Audience};

use super::agent::{AgentRequest, issue_run_token, lifetime, run_claims};
use super::error::FederationError;
use super::exchange::ACCESS_TOKEN_TYPE;
use super::{Context, Scopes, TokenResponse};
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::federation::Federated;
use crate::federation::external::LEEWAY;
use crate::federation::runs::{FederatedRun, RunMatch};
use crate::identity::Identity;
use crate::identity::peer::CallerError;
use crate::policy::agent::{self, Ask};
use crate::policy::selector::Caller;
use crate::secret::SecretHash;
use crate::tokens;

/// RFC 8693 §3: an OpenID Connect ID token (GitHub's and GitLab's job tokens are ones).
pub const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";

/// How the external token was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presentation {
    /// RFC 8693: the `subject_token` of a token exchange; answered with `issued_token_type`.
    Exchange,
    /// RFC 7523 §2.1: the `assertion` of the jwt-bearer grant.
    Assertion,
}

/// A federation grant request, as parsed from the token endpoint's form.
#[derive(Clone, PartialEq, Eq)]
pub struct FederatedRequest {
    /// The external token (never logged: see the `Debug` impl).
    pub token: String,
    /// How it came.
    pub presentation: Presentation,
    /// The run token's audiences, scopes, lifetime and label.
    pub run: AgentRequest,
}

impl std::fmt::Debug for FederatedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederatedRequest")
            .field("token", &"<redacted>")
            .field("presentation", &self.presentation)
            .field("run", &self.run)
            .finish()
    }
}

/// Records a refused federation request — by the tailnet identity when there is one, else
/// (counted in its minute's aggregate, never written one by one) by the federated subject
/// when the token verified — and returns the refusal.
async fn refuse(
    ctx: &Context<'_>,
    identity: Option<&Identity>,
    fed: Option<&Federated>,
    refusal: FederationError,
) -> FederationError {
    let mut event =
        AuditEvent::new(ctx.now(), EventKind::FederatedToken, Outcome::Denied).refused(&refusal);
    if let Some(identity) = identity {
        event = event.by(identity);
    }
    if let Some(fed) = fed {
        event = event
            .client(tokens::federated_subject(&fed.table, &fed.sub))
            .detail(describe(fed));
    }
    match ctx.audit.record(event).await {
        Ok(()) => refusal,
        Err(e) => e.into(),
    }
}

/// Records the refusal of an external token that did not verify or match: its issuer and
/// subject as it claims them, marked unverified (a caller with no tailnet identity is only
/// counted, so what it claims is never written).
async fn refuse_unverified(
    ctx: &Context<'_>,
    identity: Option<&Identity>,
    token: &str,
    refusal: FederationError,
) -> FederationError {
    #[derive(serde::Deserialize)]
    struct Claimed {
        iss: Option<String>,
        sub: Option<String>,
    }
    let mut event =
        AuditEvent::new(ctx.now(), EventKind::FederatedToken, Outcome::Denied).refused(&refusal);
    if let Some(identity) = identity {
        event = event.by(identity);
    }
    let claimed = tailpass_verify::Jws::parse(token)
        .ok()
        .and_then(|jws| jws.claims::<Claimed>().ok());
    if let Some(claimed) = claimed {
        event = event.detail(format!(
            "unverified: iss {} sub {}",
            claimed.iss.as_deref().unwrap_or("-"),
            claimed.sub.as_deref().unwrap_or("-")
        ));
    }
    match ctx.audit.record(event).await {
        Ok(()) => refusal,
        Err(e) => e.into(),
    }
}

/// The audit detail of a federated token: its table and issuer (the external subject is the
/// event's `client_id`, the run label its `run_label`; the whole `fed` claim would not fit a
/// stored field).
fn describe(fed: &Federated) -> String {
    format!("fed:{} iss {}", fed.table, fed.iss)
}

/// The refusal of a trade a stored block covers (read from the store at each trade, so every
/// replica refuses from the block's commit on), if one does.
async fn blocked(
    ctx: &Context<'_>,
    fed: &Federated,
    now: tailpass_verify::UnixTime,
) -> Result<Option<FederationError>, FederationError> {
    let claims = fed.claim_map();
    let blocks = ctx.store.federation_blocks(&fed.table, now).await?;
    Ok(blocks
        .into_iter()
        .find(|b| b.blocks(&fed.table, &claims, now))
        .map(|block| {
            FederationError::Revoked(format!(
                "runs of fed:{} with {} are revoked; new trades are refused until {}",
                fed.table,
                describe_selection(&block.selection),
                block.until.0
            ))
        }))
}

/// A selection as the refusal names it: `K=V` pairs.
fn describe_selection(selection: &RunMatch) -> String {
    let pairs: Vec<String> = selection
        .claims
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    pairs.join(" ")
}

/// What names an external token in the store: a hash of its replay key, of fixed size.
fn replay_key(fed: &Federated) -> String {
    SecretHash::of(&fed.replay_key).to_hex()
}

/// Trades the external token of `request` for a run token. `caller` is the connection's
/// tailnet identity (`Funnel` and not-on-tailnet alike mean none), `peer` its address (which
/// rate-limits callers with no identity before anything is fetched), `proof` the request's
/// checked DPoP proof, required of callers with no tailnet identity.
pub async fn grant(
    ctx: &Context<'_>,
    caller: Result<Arc<Identity>, CallerError>,
    peer: Option<IpAddr>,
    request: &FederatedRequest,
    proof: Option<&Proof>,
) -> Result<TokenResponse, FederationError> {
    if ctx.policy.trust.is_empty() {
        return Err(FederationError::NotConfigured);
    }
    let now = ctx.now();
    let identity = match caller {
        Ok(identity) => Some(identity),
        Err(CallerError::Unavailable) => return Err(FederationError::IdentityUnavailable),
        Err(_) => None,
    };
    let identity = identity.as_deref();
    if identity.is_none() {
        // A stranger until its token verifies: rated by address before any key is fetched.
        let key = peer
            .map(|ip| format!("addr:{ip}"))
            .unwrap_or_else(|| "addr:unknown".into());
        ctx.within_rate(&key, ctx.rate.per_minute)
            .map_err(FederationError::RateLimited)?;
    }
    let fed = match ctx.policy.trust.verify(&request.token, None, now).await {
        Ok(fed) => fed,
        Err(e) => {
            let refusal = FederationError::External(e);
            return Err(refuse_unverified(ctx, identity, &request.token, refusal).await);
        }
    };
    if identity.is_none() && proof.is_none() {
        let refusal = FederationError::DpopRequired;
        return Err(refuse(ctx, identity, Some(&fed), refusal).await);
    }
    let scopes = request
        .run
        .scope
        .as_deref()
        .map(|s| Scopes::parse(Some(s)).0);
    let ask = Ask {
        audiences: &request.run.audiences,
        scopes: scopes.as_deref(),
    };
    let who = Caller {
        identity,
        fed: Some(&fed.table),
    };
    let decided = agent::decide(who, ctx.policy.file, ctx.policy.capability, ask);
    let per_minute = decided
        .as_ref()
        .ok()
        .and_then(|g| g.tokens_per_minute)
        .unwrap_or(ctx.rate.per_minute);
    let subject = tokens::federated_subject(&fed.table, &fed.sub);
    let rate_key = match identity {
        Some(identity) => format!("node:{}", identity.node.stable_id),
        None => subject.clone(),
    };
    ctx.within_rate(&rate_key, per_minute)
        .map_err(FederationError::RateLimited)?;
    let granted = match decided {
        Ok(granted) => granted,
        Err(denied) => {
            return Err(refuse(ctx, identity, Some(&fed), denied.into()).await);
        }
    };
    if let Some(hit) = identity.and_then(|i| ctx.revocations.blocks_issuance(i, now)) {
        let refusal = FederationError::Revoked(hit.to_string());
        return Err(refuse(ctx, identity, Some(&fed), refusal).await);
    }
    // A kill switch on matching external tokens (`tailpass revoke --fed`).
    if let Some(refusal) = blocked(ctx, &fed, now).await? {
        return Err(refuse(ctx, identity, Some(&fed), refusal).await);
    }
    // Used up only once everything else said yes, and before anything is signed.
    if fed.single_use
        && !ctx
            .store
            .claim_federated_token(&replay_key(&fed), fed.exp.plus(LEEWAY))
            .await?
    {
        return Err(refuse(ctx, identity, Some(&fed), FederationError::Replayed).await);
    }
    let lifetime = lifetime(ctx, request.run.expires_in, granted.max_lifetime);
    let origin = granted.origin;
    let run = RunClaims {
        run_label: request.run.run_label.clone().or(fed.run_label.clone()),
        ..RunClaims::default()
    };
    let jkt = proof.map(|p| p.jkt.0.clone());
    let mut claims = match identity {
        Some(identity) => run_claims(ctx, identity, granted, run, jkt, lifetime),
        None => off_tailnet_claims(ctx, &subject, granted, run, jkt, lifetime),
    };
    let mut extra = (*claims.extra).clone();
    extra.insert("fed".into(), fed.claim());
    claims.extra = Arc::new(extra);
    // Recorded before signing, so that a kill switch finding no row means no such token.
    if let Some(run_id) = &claims.run.run_id {
        let record = FederatedRun {
            run_id: run_id.clone(),
            table: fed.table.clone(),
            claims: fed.claim_map(),
            iat: claims.iat,
            exp: claims.exp,
        };
        ctx.store.insert_federated_run(&record).await?;
        // Checked again once the run is recorded: the kill switch stores its block before it
        // reads the runs, so a trade racing it either sees the block here or is found there.
        if let Some(refusal) = blocked(ctx, &fed, now).await? {
            return Err(refuse(ctx, identity, Some(&fed), refusal).await);
        }
    }
    let mut event = AuditEvent::new(now, EventKind::FederatedToken, Outcome::Success)
        .client(subject)
        .detail(format!("{}; by {origin}", describe(&fed)));
    if let Some(identity) = identity {
        event = event.by(identity);
    }
    let issued_token_type = match request.presentation {
        Presentation::Exchange => Some(ACCESS_TOKEN_TYPE),
        Presentation::Assertion => None,
    };
    issue_run_token(ctx, &claims, event, lifetime, issued_token_type).await
}

/// The claims of a run token for a federated caller with no tailnet identity: its
/// `fed:<table>:<sub>` subject as `sub` and `client_id`, no tailnet claims, bound to its DPoP
/// key `jkt` alone.
fn off_tailnet_claims(
    ctx: &Context<'_>,
    subject: &str,
    granted: agent::Granted,
    run: RunClaims,
    jkt: Option<String>,
    lifetime: u64,
) -> AccessClaims {
    let now = ctx.now();
    let (jti, run_id) = tokens::new_run_token_ids();
    AccessClaims {
        iss: ctx.issuer.url().to_owned(),
        sub: subject.to_owned(),
        aud: Audience(granted.audiences),
        exp: now.plus(lifetime),
        iat: now,
        nbf: Some(now),
        jti,
        client_id: subject.to_owned(),
        scope: (!granted.scopes.is_empty()).then(|| granted.scopes.join(" ")),
        auth_time: None,
        sid: None,
        profile: Profile::default(),
        tailnet: Default::default(),
        run: RunClaims {
            run_id: Some(run_id),
            ..run
        },
        cnf: Some(Confirmation {
            tailnet_node: None,
            jkt,
            unknown: Default::default(),
        }),
        extra: granted.claims,
    }
}
