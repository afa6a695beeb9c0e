//! The agent grant: `client_credentials` with no client authentication, where the caller's
//! tailnet identity is the credential (docs/design.md "Contracts": agent grant request). A tagged CI
//! runner or a person's laptop gets a short-lived, run-scoped token bound to its node — and
//! to its DPoP key when it sent a proof — without holding any secret.
//!
//! Confidential clients may still use `client_credentials` with their secret ([`client`]);
//! their tokens have subject `client:<id>`.

use std::net::IpAddr;
use std::sync::Arc;

use tailpass_verify::claims::{Confirmation, Profile, RunClaims};
use tailpass_verify::dpop::Proof;
use tailpass_verify::verifier::{BEARER, DPOP};
use tailpass_verify::{AccessClaims, Audience};

use super::error::AgentError;
use super::{Context, Scopes, TokenResponse};
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::audit_log::AuditError;
use crate::clients::{Client, GrantType};
use crate::identity::Identity;
use crate::identity::peer::CallerError;
use crate::keys::KeyError;
use crate::policy::agent::{self, Ask};
use crate::secret::random_token;
use crate::tokens::{self, ACCESS_TYP, mint};

/// The longest `run_label` kept.
pub const MAX_LABEL: usize = 200;

/// An agent's token request, as parsed from the token endpoint's form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentRequest {
    /// `resource` and `audience` values together, in order, without repeats.
    pub audiences: Vec<String>,
    /// Requested scopes, when the request names any.
    pub scope: Option<String>,
    /// Requested lifetime, seconds (positive).
    pub expires_in: Option<u64>,
    /// Free text for the claims and the audit log: at most [`MAX_LABEL`] printable
    /// characters.
    pub run_label: Option<String>,
}

/// The lifetime to grant: what was asked (or the default), within the rule's cap and the
/// server's.
pub fn lifetime(ctx: &Context<'_>, asked: Option<u64>, rule_cap: Option<u64>) -> u64 {
    let mut lifetime = asked.unwrap_or(ctx.lifetimes.agent_token);
    if let Some(cap) = rule_cap {
        lifetime = lifetime.min(cap);
    }
    lifetime.min(ctx.lifetimes.max_token).max(1)
}

/// Records a refused agent request; returns the refusal for the caller.
async fn refuse(
    ctx: &Context<'_>,
    identity: Option<&Identity>,
    client: Option<&Client>,
    refusal: AgentError,
) -> AgentError {
    let mut event =
        AuditEvent::new(ctx.now(), EventKind::AgentToken, Outcome::Denied).refused(&refusal);
    if let Some(identity) = identity {
        event = event.by(identity);
    }
    if let Some(client) = client {
        event = event.client(client.client_id.0.clone());
    }
    match ctx.audit.record(event).await {
        Ok(()) => refusal,
        Err(e) => e.into(),
    }
}

/// Issues an agent token to the caller.
///
/// `peer` is the connection's address, which rate-limits callers that are not on the
/// tailnet; `proof` a checked DPoP proof, which binds the token to its key.
pub async fn agent(
    ctx: &Context<'_>,
    caller: Result<Arc<Identity>, CallerError>,
    peer: Option<IpAddr>,
    request: &AgentRequest,
    proof: Option<&Proof>,
) -> Result<TokenResponse, AgentError> {
    let now = ctx.now();
    let identity = match caller {
        Ok(identity) => identity,
        Err(CallerError::Unavailable) => return Err(AgentError::IdentityUnavailable),
        Err(_) => {
            // Not on the tailnet: no policy detail in the answer, and a rate on the address
            // so that strangers cannot fill the audit log.
            let key = peer
                .map(|ip| format!("addr:{ip}"))
                .unwrap_or_else(|| "addr:unknown".into());
            ctx.within_rate(&key, ctx.rate.per_minute)
                .map_err(AgentError::RateLimited)?;
            return Err(refuse(ctx, None, None, AgentError::NotOnTailnet).await);
        }
    };
    let scopes = request.scope.as_deref().map(|s| Scopes::parse(Some(s)).0);
    let ask = Ask {
        audiences: &request.audiences,
        scopes: scopes.as_deref(),
    };
    let decided = agent::decide(&identity, ctx.policy.file, ctx.policy.capability, ask);
    let per_minute = decided
        .as_ref()
        .ok()
        .and_then(|g| g.tokens_per_minute)
        .unwrap_or(ctx.rate.per_minute);
    ctx.within_rate(&format!("node:{}", identity.node.stable_id), per_minute)
        .map_err(AgentError::RateLimited)?;
    let granted = match decided {
        Ok(granted) => granted,
        Err(e) => return Err(refuse(ctx, Some(&identity), None, e.into()).await),
    };
    if let Some(hit) = ctx.revocations.blocks_issuance(&identity, now) {
        let refusal = AgentError::Revoked(hit.to_string());
        return Err(refuse(ctx, Some(&identity), None, refusal).await);
    }
    let lifetime = lifetime(ctx, request.expires_in, granted.max_lifetime);
    let origin = granted.origin;
    let run = RunClaims {
        run_label: request.run_label.clone(),
        ..RunClaims::default()
    };
    let jkt = proof.map(|p| p.jkt.0.clone());
    let claims = run_claims(ctx, &identity, granted, run, jkt, lifetime);
    let event = AuditEvent::new(now, EventKind::AgentToken, Outcome::Success)
        .by(&identity)
        .detail(format!("by {origin}"));
    issue_run_token(ctx, &claims, event, lifetime, None).await
}

/// The claims of a fresh run token for `identity`, as its deciding rule `granted` allows:
/// its subject, profile and tailnet claims, a new run id (beside `run`'s other members),
/// bound to its node (and to `jkt`), with the rule's claims, living `lifetime` seconds. Shared
/// by the agent grant and the exchange for a tailnet peer, whose token is the one the peer
/// would get by asking itself.
pub(super) fn run_claims(
    ctx: &Context<'_>,
    identity: &Identity,
    granted: agent::Granted,
    run: RunClaims,
    jkt: Option<String>,
    lifetime: u64,
) -> AccessClaims {
    let now = ctx.now();
    let subject = match &identity.user {
        Some(user) => tokens::user_subject(user.id),
        None => tokens::node_subject(&identity.node.stable_id),
    };
    let (jti, run_id) = tokens::new_run_token_ids();
    AccessClaims {
        iss: ctx.issuer.url().to_owned(),
        sub: subject.clone(),
        aud: Audience(granted.audiences),
        exp: now.plus(lifetime),
        iat: now,
        nbf: Some(now),
        jti,
        client_id: subject,
        scope: (!granted.scopes.is_empty()).then(|| granted.scopes.join(" ")),
        auth_time: None,
        sid: None,
        profile: if identity.user.is_some() {
            mint::profile(identity, &[], ctx.issuer.host())
        } else {
            Profile::default()
        },
        tailnet: mint::tailnet(identity),
        run: RunClaims {
            run_id: Some(run_id),
            ..run
        },
        cnf: Some(Confirmation::node(&identity.node.stable_id.0, jkt)),
        extra: granted.claims,
    }
}

/// Signs a run token, records its audit event with the run's facts (run, parent and root run,
/// jti, audience, scopes) once committed, and answers.
pub(super) async fn issue_run_token<E: From<KeyError> + From<AuditError>>(
    ctx: &Context<'_>,
    claims: &AccessClaims,
    mut event: AuditEvent,
    lifetime: u64,
    issued_token_type: Option<&'static str>,
) -> Result<TokenResponse, E> {
    let access_token = ctx.keys.sign_jwt(ctx.signing.access, ACCESS_TYP, claims)?;
    event.run_id = claims.run.run_id.clone();
    event.run_label = claims.run.run_label.clone();
    event.parent_run_id = claims.run.parent_run_id.clone();
    event.root_run_id = claims.run.root_run_id.clone();
    event.jti = Some(claims.jti.clone());
    event.audience = claims.aud.0.clone();
    event.scopes = claims
        .scope
        .as_deref()
        .map(|s| s.split(' ').map(str::to_owned).collect())
        .unwrap_or_default();
    ctx.audit.record(event).await?;
    let bound_to_key = claims.cnf.as_ref().is_some_and(|c| c.jkt.is_some());
    Ok(TokenResponse {
        access_token,
        token_type: if bound_to_key { DPOP } else { BEARER },
        expires_in: lifetime,
        scope: claims.scope.clone(),
        refresh_token: None,
        id_token: None,
        issued_token_type,
    })
}

/// `client_credentials` with a client secret: a token for the client itself, for the
/// resources its registration lists. Client credentials carry no scopes.
pub async fn client(
    ctx: &Context<'_>,
    client: &Client,
    request: &AgentRequest,
    proof: Option<&Proof>,
) -> Result<TokenResponse, AgentError> {
    if !client.grant_types.contains(&GrantType::ClientCredentials) {
        return Err(AgentError::GrantNotAllowed);
    }
    ctx.within_rate(&format!("client:{}", client.client_id), ctx.rate.per_minute)
        .map_err(AgentError::RateLimited)?;
    let now = ctx.now();
    let audiences = if request.audiences.is_empty() {
        match client.resources.as_slice() {
            [one] if one != "*" => vec![one.clone()],
            _ => return Err(AgentError::NoAudience),
        }
    } else {
        request.audiences.clone()
    };
    if let Some(outside) = audiences
        .iter()
        .find(|a| !client.resources.iter().any(|r| r == "*" || r == *a))
    {
        let refusal = AgentError::Resource {
            client: client.client_id.0.clone(),
            resource: outside.clone(),
        };
        return Err(refuse(ctx, None, Some(client), refusal).await);
    }
    if request
        .scope
        .as_deref()
        .is_some_and(|s| !s.trim().is_empty())
    {
        return Err(AgentError::Scopes);
    }
    let lifetime = lifetime(ctx, request.expires_in, Some(ctx.lifetimes.token));
    let subject = tokens::client_subject(&client.client_id.0);
    let jkt = proof.map(|p| p.jkt.0.clone());
    let claims = AccessClaims {
        iss: ctx.issuer.url().to_owned(),
        sub: subject,
        aud: Audience(audiences.clone()),
        exp: now.plus(lifetime),
        iat: now,
        nbf: Some(now),
        jti: random_token(16),
        client_id: client.client_id.0.clone(),
        scope: None,
        auth_time: None,
        sid: None,
        profile: Profile::default(),
        tailnet: Default::default(),
        run: RunClaims::default(),
        cnf: jkt.clone().map(|jkt| Confirmation {
            tailnet_node: None,
            jkt: Some(jkt),
            unknown: Default::default(),
        }),
        extra: Default::default(),
    };
    let access_token = ctx.keys.sign_jwt(ctx.signing.access, ACCESS_TYP, &claims)?;
    let mut event = AuditEvent::new(now, EventKind::AgentToken, Outcome::Success)
        .client(client.client_id.0.clone());
    event.jti = Some(claims.jti.clone());
    event.audience = audiences;
    ctx.audit.record(event).await?;
    Ok(TokenResponse {
        access_token,
        token_type: if jkt.is_some() { DPOP } else { BEARER },
        expires_in: lifetime,
        scope: None,
        refresh_token: None,
        id_token: None,
        issued_token_type: None,
    })
}
