//! Token exchange (RFC 8693) for sub-agents: an agent trades its token for a narrower child.
//!
//! The subject token must be a tailpass agent token, valid, not revoked, and presented by the
//! node it is bound to — with its DPoP key when it has one — so that a stolen token cannot be
//! exchanged into a child bound to the thief. The child's audiences, scopes and lifetime are
//! subsets of the parent's (its `exp` never later) and of the caller's policy; widening is
//! refused with the reason. The child gets its own run id, with `parent_run_id` and
//! `root_run_id`, and an `act` claim naming the caller, with the parent's actors nested inside
//! (RFC 8693 §4.1).

use std::sync::Arc;

use tailpass_verify::binding::{self, Presenter};
use tailpass_verify::claims::{Actor, Confirmation, RunClaims};
use tailpass_verify::dpop::Proof;
use tailpass_verify::{AccessClaims, Audience};

use super::agent::{AgentRequest, issue_run_token, lifetime};
use super::error::ExchangeError;
use super::{Context, Scopes, TokenResponse};
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::identity::Identity;
use crate::identity::peer::CallerError;
use crate::policy::agent::{self, Ask};
use crate::tokens::{self, mint};

pub use tailpass_verify::claims::{ACCESS_TOKEN_TYPE, TAILNET_PEER_TOKEN_TYPE};
/// RFC 8693 §3: a JWT.
pub const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// A token exchange request, as parsed from the token endpoint's form: the token types are
/// checked there (only access tokens are exchanged and issued).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExchangeRequest {
    /// The parent token.
    pub subject_token: String,
    /// A token of the actor, optional.
    pub actor_token: Option<String>,
    /// The child's audiences, scopes, lifetime and run label: narrower than the parent's.
    pub child: AgentRequest,
}

/// Whether a token type names a token this server can read back (RFC 8693 §3).
pub fn token_type_ok(t: Option<&str>) -> bool {
    matches!(t, Some(ACCESS_TOKEN_TYPE) | Some(JWT_TYPE))
}

/// Reads a presented token and checks that the caller may present it: a node-bound access
/// token of this issuer, unrevoked, bound to the presenter (and its DPoP key).
pub(super) fn presented(
    ctx: &Context<'_>,
    token: &str,
    presenter: &Presenter<'_>,
) -> Result<AccessClaims, String> {
    let claims = tokens::read_access(
        token,
        ctx.keys,
        ctx.revocations,
        ctx.issuer.url(),
        ctx.now(),
    )
    .map_err(|e| e.to_string())?;
    if claims
        .cnf
        .as_ref()
        .and_then(|c| c.tailnet_node.as_ref())
        .is_none()
    {
        return Err("only node-bound agent tokens can be exchanged".into());
    }
    binding::check(claims.cnf.as_ref(), presenter).map_err(|e| e.to_string())?;
    Ok(claims)
}

/// Exchanges `request.subject_token` for a child token for the caller; `proof` is the
/// request's checked DPoP proof, which a key-bound parent requires and the child is bound to.
pub async fn exchange(
    ctx: &Context<'_>,
    caller: Result<Arc<Identity>, CallerError>,
    request: &ExchangeRequest,
    proof: Option<&Proof>,
) -> Result<TokenResponse, ExchangeError> {
    let now = ctx.now();
    let identity = match caller {
        Ok(identity) => identity,
        Err(CallerError::Unavailable) => return Err(ExchangeError::IdentityUnavailable),
        Err(_) => return Err(ExchangeError::NotOnTailnet),
    };
    let refuse = |refusal: ExchangeError| {
        let identity = identity.clone();
        async move {
            let event = AuditEvent::new(now, EventKind::TokenExchange, Outcome::Denied)
                .by(&identity)
                .refused(&refusal);
            match ctx.audit.record(event).await {
                Ok(()) => refusal,
                Err(e) => e.into(),
            }
        }
    };
    let jkt = proof.map(|p| p.jkt.clone());
    let presenter = Presenter {
        node: Some(&identity.node.stable_id.0),
        dpop_jkt: jkt.as_ref(),
    };
    let parent = match presented(ctx, &request.subject_token, &presenter) {
        Ok(parent) => parent,
        Err(reason) => return Err(refuse(ExchangeError::Subject(reason)).await),
    };
    let actor_sub = match &request.actor_token {
        Some(token) => match presented(ctx, token, &presenter) {
            Ok(actor) => actor.sub,
            Err(reason) => return Err(refuse(ExchangeError::Actor(reason)).await),
        },
        None => match &identity.user {
            Some(user) => tokens::user_subject(user.id),
            None => tokens::node_subject(&identity.node.stable_id),
        },
    };
    let request = &request.child;

    // Narrowing: never more than the parent had.
    let audiences = if request.audiences.is_empty() {
        parent.aud.0.clone()
    } else {
        request.audiences.clone()
    };
    if let Some(wider) = audiences.iter().find(|a| !parent.aud.contains(a)) {
        return Err(refuse(ExchangeError::WiderAudience(wider.clone())).await);
    }
    let parent_scopes = Scopes::parse(parent.scope.as_deref());
    let scopes = match &request.scope {
        Some(scope) => Scopes::parse(Some(scope)),
        None => parent_scopes.clone(),
    };
    if let Some(wider) = scopes.0.iter().find(|s| !parent_scopes.has(s)) {
        return Err(refuse(ExchangeError::WiderScope(wider.clone())).await);
    }
    // And never more than the caller's own rules allow now.
    let granted = match agent::decide(
        &identity,
        ctx.policy.file,
        ctx.policy.capability,
        Ask {
            audiences: &audiences,
            scopes: Some(&scopes.0),
        },
    ) {
        Ok(granted) => granted,
        Err(e) => return Err(refuse(e.into()).await),
    };
    if let Some(hit) = ctx.revocations.blocks_issuance(&identity, now) {
        return Err(refuse(ExchangeError::Revoked(hit.to_string())).await);
    }
    let remaining = parent.exp.since(now);
    if remaining == 0 {
        return Err(refuse(ExchangeError::ParentExpired).await);
    }
    let lifetime = lifetime(ctx, request.expires_in, granted.max_lifetime).min(remaining);
    let label = request
        .run_label
        .clone()
        .or_else(|| parent.run.run_label.clone());
    let parent_run = parent.run.run_id.clone();
    let root_run = parent
        .run
        .root_run_id
        .clone()
        .or_else(|| parent_run.clone());
    let (jti, run_id) = tokens::new_run_token_ids();
    let claims = AccessClaims {
        iss: ctx.issuer.url().to_owned(),
        sub: parent.sub.clone(),
        aud: Audience(audiences.clone()),
        exp: now.plus(lifetime),
        iat: now,
        nbf: Some(now),
        jti,
        client_id: parent.client_id.clone(),
        scope: (!scopes.0.is_empty()).then(|| scopes.joined()),
        auth_time: None,
        sid: None,
        profile: parent.profile.clone(),
        tailnet: mint::tailnet(&identity),
        run: RunClaims {
            run_id: Some(run_id),
            run_label: label.clone(),
            parent_run_id: parent_run.clone(),
            root_run_id: root_run.clone(),
            act: Some(Actor {
                sub: actor_sub,
                nid: Some(identity.node.stable_id.0.clone()),
                run_id: parent_run.clone(),
                act: parent.run.act.clone().map(Box::new),
            }),
        },
        cnf: Some(Confirmation::node(
            &identity.node.stable_id.0,
            jkt.as_ref().map(|k| k.0.clone()),
        )),
        // The parent's policy claims (the gateway's models and quota) carry over: children
        // spend their root run's budget.
        extra: parent.extra.clone(),
    };
    let event = AuditEvent::new(now, EventKind::TokenExchange, Outcome::Success)
        .by(&identity)
        .detail(format!("by {}", granted.origin));
    issue_run_token(ctx, &claims, event, lifetime, Some(ACCESS_TOKEN_TYPE)).await
}
