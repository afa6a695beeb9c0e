//! The kill switch: `tailpass revoke --run | --node | --user | --jti` and the admin API behind
//! it, and the revocation of a signing key's `kid` that `tailpass keys revoke` publishes.
//!
//! Revoking is durable first (the store), then visible at once to this server (the revocation
//! index: introspection, userinfo, exchange) and, through the revocation feed, to every
//! gateway within seconds. Revoking a run also kills every run exchanged from it (their tokens
//! name it as parent, root or actor). Revoking a node or a user also refuses new tokens for it
//! until lifted or until `until`, and ends its sessions through `session::end`: refresh
//! families revoked, relying parties told by back-channel logout.
//!
//! Runs minted from external tokens are revoked by what those tokens said
//! ([`revoke_federated`], `tailpass revoke --fed NAME --claim K=V`): every unexpired run
//! recorded for a matching token is revoked as a `run` entry — the kind every gateway already
//! follows —, and a block refuses new trades of matching tokens until `until`.

use serde::{Deserialize, Serialize};
use tailpass_verify::UnixTime;
use tailpass_verify::feed::RevocationKind;

use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::audit_log::AuditError;
use crate::federation::runs::{FederatedRun, FederationBlock, MatchError, RunMatch};
use crate::session::{self, EndError, Reason, Selection};
use crate::store::{Revocation, Store, StoreError};

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// `run`, `node`, `user` or `jti`.
    pub kind: RevocationKind,
    /// The run id, node stable id, login or token id.
    pub value: String,
    /// For nodes and users: refuse new tokens until then (`None`: until lifted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<UnixTime>,
}

/// What a revocation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The revocation as the feed carries it.
    pub revocation: Revocation,
    /// Sessions (refresh families) ended.
    pub sessions_ended: usize,
}

/// Why a revocation or lift was refused.
#[derive(Debug, thiserror::Error)]
pub enum KillError {
    /// Occurs when the value is empty, too long or not printable.
    #[error("the value to revoke must be 1 to 512 printable characters")]
    Value,
    /// Occurs when a refresh family is named: those end through `/revoke` or logout.
    #[error("refresh families are revoked through /revoke or logout")]
    Family,
    /// Occurs when a `kid` is named: a signing key is revoked through `tailpass keys revoke`,
    /// which also takes it out of the JWKS and stops it signing.
    #[error("signing keys are revoked through `tailpass keys revoke` (/admin/api/keys/revoke)")]
    Kid,
    /// Occurs when `until` is given for a kind other than node or user.
    #[error("until applies to node and user revocations")]
    Until,
    /// Occurs when a `--fed` selection is empty or out of bounds.
    #[error(transparent)]
    Selection(#[from] MatchError),
    /// Occurs when the store or the revocation index cannot be written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Occurs when the audit log cannot record it.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// Occurs when the sessions cannot be ended.
    #[error(transparent)]
    Sessions(#[from] EndError),
}

fn check_value(value: &str) -> Result<(), KillError> {
    if value.is_empty() || value.len() > 512 || value.chars().any(char::is_control) {
        return Err(KillError::Value);
    }
    Ok(())
}

fn check(target: &Target) -> Result<(), KillError> {
    check_value(&target.value)?;
    match target.kind {
        RevocationKind::Family => return Err(KillError::Family),
        RevocationKind::Kid => return Err(KillError::Kid),
        _ => {}
    }
    if target.until.is_some() && !matches!(target.kind, RevocationKind::Node | RevocationKind::User)
    {
        return Err(KillError::Until);
    }
    Ok(())
}

/// Revokes `target` at `now` on behalf of `actor`. It borrows what ending sessions does: the
/// store, the index, the audit log and back-channel logout.
pub async fn revoke(
    ctx: session::Ctx<'_>,
    target: &Target,
    actor: &str,
    now: UnixTime,
) -> Result<Report, KillError> {
    check(target)?;
    record(ctx, target, actor, now).await
}

/// Publishes the revocation of every token the key `kid` signed, at `now`, on behalf of
/// `actor`: stored, in the index, on the feed, audited. The caller has already taken the key
/// out of the key ring, so that it signs nothing after `now`.
pub async fn revoke_kid(
    ctx: session::Ctx<'_>,
    kid: &str,
    actor: &str,
    now: UnixTime,
) -> Result<Report, KillError> {
    check_value(kid)?;
    let target = Target {
        kind: RevocationKind::Kid,
        value: kid.to_owned(),
        until: None,
    };
    record(ctx, &target, actor, now).await
}

/// Persists a checked revocation, updates the index, ends what sessions it ends and audits it.
async fn record(
    ctx: session::Ctx<'_>,
    target: &Target,
    actor: &str,
    now: UnixTime,
) -> Result<Report, KillError> {
    let revocation = ctx
        .revocations
        .revoke(ctx.store, target.kind, &target.value, now, target.until)
        .await?;
    let sessions_ended = match target.kind {
        RevocationKind::Node | RevocationKind::User => session::end(
            ctx,
            Selection::AllOf(target.kind, &target.value),
            Reason::KillSwitch,
            now,
        )
        .await?
        .sessions
        .len(),
        _ => 0,
    };
    let mut event = AuditEvent::new(now, EventKind::Revocation, Outcome::Success).detail(format!(
        "{} {} revoked by {actor}; {sessions_ended} sessions ended",
        target.kind.as_str(),
        target.value
    ));
    match target.kind {
        RevocationKind::Run => event.run_id = Some(target.value.clone()),
        RevocationKind::Node => event.node_id = Some(target.value.clone()),
        RevocationKind::User => event.user = Some(target.value.clone()),
        RevocationKind::Jti => event.jti = Some(target.value.clone()),
        RevocationKind::Family | RevocationKind::Kid => {}
    }
    ctx.audit.record(event).await?;
    Ok(Report {
        revocation,
        sessions_ended,
    })
}

/// What to revoke by external token: the runs minted from tokens `selection` matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FedTarget {
    /// The table and the claims (as text) a token must have had.
    #[serde(flatten)]
    pub selection: RunMatch,
    /// Refuse new trades of matching tokens until then (`None`: for the longest lifetime a
    /// run token can have, after which every run minted before the revocation has expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<UnixTime>,
}

/// What a revocation by external token did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FedReport {
    /// One `run` revocation per unexpired run minted from a matching token, as the feed
    /// carries them.
    pub revocations: Vec<Revocation>,
    /// New trades of matching tokens are refused until then.
    pub until: UnixTime,
}

/// Revokes at `now`, on behalf of `actor`, every unexpired run minted from an external token
/// `target` matches (each a `run` revocation: stored, in the index, on the feed, audited with
/// its run id), and stores a block refusing new trades of matching tokens until
/// `target.until`, or `default_until` when it names none. The block is stored first, so that
/// a trade racing the revocation is either refused or recorded before the runs are read.
pub async fn revoke_federated(
    ctx: session::Ctx<'_>,
    target: &FedTarget,
    default_until: UnixTime,
    actor: &str,
    now: UnixTime,
) -> Result<FedReport, KillError> {
    target.selection.check()?;
    let until = target.until.unwrap_or(default_until);
    let block = FederationBlock {
        selection: target.selection.clone(),
        since: now,
        until,
    };
    ctx.store.insert_federation_block(&block).await?;
    let described = describe(&target.selection);
    let mut revocations = Vec::new();
    for run in ctx.store.federated_runs(&target.selection).await? {
        if run.exp <= now {
            continue;
        }
        let revocation = ctx
            .revocations
            .revoke(ctx.store, RevocationKind::Run, &run.run_id, now, None)
            .await?;
        let mut event = AuditEvent::new(now, EventKind::Revocation, Outcome::Success).detail(
            format!("run {} revoked by {actor}: {described}", run.run_id),
        );
        event.run_id = Some(run.run_id);
        ctx.audit.record(event).await?;
        revocations.push(revocation);
    }
    let event = AuditEvent::new(now, EventKind::Revocation, Outcome::Success).detail(format!(
        "{described} revoked by {actor}: {} runs, new trades refused until {}",
        revocations.len(),
        until.0
    ));
    ctx.audit.record(event).await?;
    Ok(FedReport { revocations, until })
}

/// The recorded runs minted from external tokens `selection` matches, oldest first
/// (`tailpass audit --fed`).
pub async fn federated_runs(
    store: &dyn Store,
    selection: &RunMatch,
) -> Result<Vec<FederatedRun>, KillError> {
    selection.check()?;
    Ok(store.federated_runs(selection).await?)
}

/// A selection as the audit names it: `fed:NAME K=V …`.
fn describe(selection: &RunMatch) -> String {
    let mut text = format!("fed:{}", selection.table);
    for (k, v) in &selection.claims {
        text.push_str(&format!(" {k}={v}"));
    }
    text
}

/// Allows new tokens for a node or user again at `now`. Tokens revoked stay revoked.
pub async fn lift(
    ctx: session::Ctx<'_>,
    target: &Target,
    actor: &str,
    now: UnixTime,
) -> Result<Vec<Revocation>, KillError> {
    check(target)?;
    let lifted = ctx
        .revocations
        .lift(ctx.store, target.kind, &target.value, now)
        .await?;
    let event =
        AuditEvent::new(now, EventKind::RevocationLifted, Outcome::Success).detail(format!(
            "{} {} lifted by {actor} ({} revocations)",
            target.kind.as_str(),
            target.value,
            lifted.len()
        ));
    ctx.audit.record(event).await?;
    Ok(lifted)
}
