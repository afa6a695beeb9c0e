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

use super::agent::{issue_run_token, lifetime, run_label};
use super::{Scopes, TokenResponse};
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::identity::Identity;
use crate::identity::peer::CallerError;
use crate::oauth::error::{Code, Error};
use crate::policy::agent::{self, Ask};
use crate::state::AppState;
use crate::tokens::{self, mint};

/// RFC 8693 §3: an access token.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// RFC 8693 §3: a JWT.
pub const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// A token exchange request.
#[derive(Debug, Clone)]
pub struct ExchangeRequest<'a> {
    /// The parent token.
    pub subject_token: Option<&'a str>,
    /// Its type.
    pub subject_token_type: Option<&'a str>,
    /// A token of the actor, optional.
    pub actor_token: Option<&'a str>,
    /// Its type.
    pub actor_token_type: Option<&'a str>,
    /// Only access tokens are issued.
    pub requested_token_type: Option<&'a str>,
    /// Narrower audiences.
    pub audiences: Vec<String>,
    /// Narrower scopes.
    pub scope: Option<&'a str>,
    /// Requested lifetime.
    pub expires_in: Option<&'a str>,
    /// The child run's label.
    pub run_label: Option<&'a str>,
    /// A checked DPoP proof.
    pub proof: Option<Proof>,
}

fn invalid_grant(description: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(Code::InvalidGrant, description)
}

fn token_type_ok(t: Option<&str>) -> bool {
    matches!(t, Some(ACCESS_TOKEN_TYPE) | Some(JWT_TYPE))
}

/// Reads a presented token and checks that the caller may present it.
fn presented(
    state: &AppState,
    token: &str,
    presenter: &Presenter<'_>,
) -> Result<AccessClaims, String> {
    let claims = tokens::read_access(
        token,
        &state.keys,
        &state.revocations,
        state.issuer.url(),
        state.now(),
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

/// Exchanges `request.subject_token` for a child token for the caller.
pub async fn exchange(
    state: &AppState,
    caller: Result<Arc<Identity>, CallerError>,
    request: ExchangeRequest<'_>,
) -> Result<TokenResponse, Error> {
    let now = state.now();
    let identity = match caller {
        Ok(identity) => identity,
        Err(CallerError::Unavailable) => return Err(Error::from(CallerError::Unavailable)),
        Err(_) => return Err(Error::invalid_client("the caller is not on the tailnet")),
    };
    let deny = |reason: String| {
        let identity = identity.clone();
        async move {
            let event = AuditEvent::new(now, EventKind::TokenExchange, Outcome::Denied)
                .by(&identity)
                .because(reason.clone());
            state.audit.record(event).await.map(|()| reason)
        }
    };
    let subject_token = request
        .subject_token
        .ok_or_else(|| Error::invalid_request("subject_token is required"))?;
    if !token_type_ok(request.subject_token_type) {
        return Err(Error::invalid_request(format!(
            "subject_token_type must be {ACCESS_TOKEN_TYPE}"
        )));
    }
    if request
        .requested_token_type
        .is_some_and(|t| t != ACCESS_TOKEN_TYPE)
    {
        return Err(Error::invalid_request(format!(
            "only {ACCESS_TOKEN_TYPE} can be requested"
        )));
    }
    let jkt = request.proof.as_ref().map(|p| p.jkt.clone());
    let presenter = Presenter {
        node: Some(&identity.node.stable_id.0),
        dpop_jkt: jkt.as_ref(),
    };
    let parent = match presented(state, subject_token, &presenter) {
        Ok(parent) => parent,
        Err(reason) => {
            return Err(invalid_grant(
                deny(format!("subject_token: {reason}")).await?,
            ));
        }
    };
    let actor_sub = match request.actor_token {
        Some(token) => {
            if !token_type_ok(request.actor_token_type) {
                return Err(Error::invalid_request(format!(
                    "actor_token_type must be {ACCESS_TOKEN_TYPE}"
                )));
            }
            match presented(state, token, &presenter) {
                Ok(actor) => actor.sub,
                Err(reason) => {
                    return Err(invalid_grant(deny(format!("actor_token: {reason}")).await?));
                }
            }
        }
        None => match &identity.user {
            Some(user) => tokens::user_subject(user.id),
            None => tokens::node_subject(&identity.node.stable_id),
        },
    };

    // Narrowing: never more than the parent had.
    let audiences = if request.audiences.is_empty() {
        parent.aud.0.clone()
    } else {
        request.audiences.clone()
    };
    if let Some(wider) = audiences.iter().find(|a| !parent.aud.contains(a)) {
        let reason = deny(format!(
            "widening refused: audience {wider} is not in the parent token"
        ))
        .await?;
        return Err(Error::new(Code::InvalidTarget, reason));
    }
    let parent_scopes = Scopes::parse(parent.scope.as_deref());
    let scopes = match request.scope {
        Some(_) => Scopes::parse(request.scope),
        None => parent_scopes.clone(),
    };
    if let Some(wider) = scopes.0.iter().find(|s| !parent_scopes.has(s)) {
        let reason = deny(format!(
            "widening refused: scope {wider} is not in the parent token"
        ))
        .await?;
        return Err(Error::new(Code::InvalidScope, reason));
    }
    // And never more than the caller's own rules allow now.
    let granted = match agent::decide(
        &identity,
        &state.settings.policy,
        &state.settings.agent_capability,
        Ask {
            audiences: &audiences,
            scopes: Some(&scopes.0),
        },
    ) {
        Ok(granted) => granted,
        Err(e) => {
            let code = super::agent::denied_error(&e).code();
            return Err(Error::new(code, deny(e.to_string()).await?));
        }
    };
    if let Some(hit) = state.revocations.blocks_issuance(&identity, now) {
        return Err(Error::access_denied(deny(hit.to_string()).await?));
    }
    let remaining = parent.exp.since(now);
    if remaining == 0 {
        return Err(invalid_grant(
            deny("the parent token has expired".into()).await?,
        ));
    }
    let lifetime = lifetime(state, request.expires_in, granted.max_lifetime)?.min(remaining);
    let label = run_label(request.run_label)?.or_else(|| parent.run.run_label.clone());
    let parent_run = parent.run.run_id.clone();
    let root_run = parent
        .run
        .root_run_id
        .clone()
        .or_else(|| parent_run.clone());
    let (jti, run_id) = tokens::new_run_token_ids();
    let claims = AccessClaims {
        iss: state.issuer.url().to_owned(),
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
    issue_run_token(state, &claims, event, lifetime, Some(ACCESS_TOKEN_TYPE)).await
}
