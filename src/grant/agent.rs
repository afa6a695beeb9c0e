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
use tailpass_verify::{AccessClaims, Audience, UnixTime};

use super::{Scopes, TokenResponse};
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::clients::{Client, GrantType};
use crate::identity::Identity;
use crate::identity::peer::CallerError;
use crate::oauth::error::{Code, Error};
use crate::policy::agent::{self, Ask, Denied};
use crate::secret::random_token;
use crate::state::AppState;
use crate::tokens::{self, ACCESS_TYP, mint};

/// The longest `run_label` kept.
const MAX_LABEL: usize = 200;

/// An agent's token request.
#[derive(Debug, Clone)]
pub struct AgentRequest<'a> {
    /// `resource` and `audience` values together.
    pub audiences: Vec<String>,
    /// Requested scopes.
    pub scope: Option<&'a str>,
    /// Requested lifetime, seconds.
    pub expires_in: Option<&'a str>,
    /// Free text for the claims and the audit log.
    pub run_label: Option<&'a str>,
    /// A checked DPoP proof, to bind the token to its key.
    pub proof: Option<Proof>,
    /// The connection's address, to rate-limit callers that are not on the tailnet.
    pub peer: Option<IpAddr>,
}

/// Checks `run_label`.
pub fn run_label(label: Option<&str>) -> Result<Option<String>, Error> {
    match label {
        Some(l) if l.chars().count() > MAX_LABEL || l.chars().any(char::is_control) => {
            Err(Error::invalid_request(format!(
                "run_label must be at most {MAX_LABEL} printable characters"
            )))
        }
        Some(l) => Ok(Some(l.to_owned())),
        None => Ok(None),
    }
}

/// The lifetime to grant: what was asked (or the default), within the rule's cap and the
/// server's.
pub fn lifetime(
    state: &AppState,
    asked: Option<&str>,
    rule_cap: Option<u64>,
) -> Result<u64, Error> {
    let asked = match asked {
        Some(text) => Some(text.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            Error::invalid_request("expires_in must be a positive number of seconds")
        })?),
        None => None,
    };
    let mut lifetime = asked.unwrap_or(state.settings.agent_token_lifetime);
    if let Some(cap) = rule_cap {
        lifetime = lifetime.min(cap);
    }
    Ok(lifetime.min(state.settings.max_token_lifetime).max(1))
}

fn denial(now: UnixTime, reason: &str) -> AuditEvent {
    AuditEvent::new(now, EventKind::AgentToken, Outcome::Denied).because(reason)
}

/// The OAuth error for a policy refusal, shared by the agent grant and token exchange.
pub(super) fn denied_error(e: &Denied) -> Error {
    let code = match e {
        Denied::NoRule(_) => Code::UnauthorizedClient,
        Denied::Audience { .. }
        | Denied::NoAudience(_)
        | Denied::Split { .. }
        | Denied::Unruled { .. } => Code::InvalidTarget,
        Denied::Scope { .. } => Code::InvalidScope,
    };
    Error::new(code, e.to_string())
}

/// Issues an agent token to the caller.
pub async fn agent(
    state: &AppState,
    caller: Result<Arc<Identity>, CallerError>,
    request: AgentRequest<'_>,
) -> Result<TokenResponse, Error> {
    let now = state.now();
    let identity = match caller {
        Ok(identity) => identity,
        Err(CallerError::Unavailable) => return Err(Error::from(CallerError::Unavailable)),
        Err(e) => {
            // Not on the tailnet: no policy detail in the answer, and a rate on the address
            // so that strangers cannot fill the audit log.
            let key = request
                .peer
                .map(|ip| format!("addr:{ip}"))
                .unwrap_or_else(|| "addr:unknown".into());
            super::within_rate(state, &key, state.settings.rate_limit)?;
            state.audit.record(denial(now, &e.to_string())).await?;
            return Err(Error::invalid_client("the caller is not on the tailnet"));
        }
    };
    let scopes = request.scope.map(|s| Scopes::parse(Some(s)).0);
    let ask = Ask {
        audiences: &request.audiences,
        scopes: scopes.as_deref(),
    };
    let decided = agent::decide(
        &identity,
        &state.settings.policy,
        &state.settings.agent_capability,
        ask,
    );
    let per_minute = decided
        .as_ref()
        .ok()
        .and_then(|g| g.tokens_per_minute)
        .unwrap_or(state.settings.rate_limit);
    super::within_rate(
        state,
        &format!("node:{}", identity.node.stable_id),
        per_minute,
    )?;
    let granted = match decided {
        Ok(granted) => granted,
        Err(e) => {
            state
                .audit
                .record(denial(now, &e.to_string()).by(&identity))
                .await?;
            return Err(denied_error(&e));
        }
    };
    if let Some(hit) = state.revocations.blocks_issuance(&identity, now) {
        state
            .audit
            .record(denial(now, &hit.to_string()).by(&identity))
            .await?;
        return Err(Error::access_denied(hit.to_string()));
    }
    let label = run_label(request.run_label)?;
    let lifetime = lifetime(state, request.expires_in, granted.max_lifetime)?;
    let subject = match &identity.user {
        Some(user) => tokens::user_subject(user.id),
        None => tokens::node_subject(&identity.node.stable_id),
    };
    let jkt = request.proof.as_ref().map(|p| p.jkt.0.clone());
    let (jti, run_id) = tokens::new_run_token_ids();
    let claims = AccessClaims {
        iss: state.issuer.url().to_owned(),
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
            mint::profile(&identity, &[], state.issuer.host())
        } else {
            Profile::default()
        },
        tailnet: mint::tailnet(&identity),
        run: RunClaims {
            run_id: Some(run_id),
            run_label: label,
            ..RunClaims::default()
        },
        cnf: Some(Confirmation::node(&identity.node.stable_id.0, jkt)),
        extra: granted.claims,
    };
    let event = AuditEvent::new(now, EventKind::AgentToken, Outcome::Success)
        .by(&identity)
        .detail(format!("by {}", granted.origin));
    issue_run_token(state, &claims, event, lifetime, None).await
}

/// Signs a run token, records its audit event with the run's facts (run, parent and root run,
/// jti, audience, scopes) once committed, and answers.
pub(super) async fn issue_run_token(
    state: &AppState,
    claims: &AccessClaims,
    mut event: AuditEvent,
    lifetime: u64,
    issued_token_type: Option<&'static str>,
) -> Result<TokenResponse, Error> {
    let access_token = state
        .keys
        .sign_jwt(state.settings.signing_alg, ACCESS_TYP, claims)?;
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
    state.audit.record(event).await?;
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
    state: &AppState,
    client: &Client,
    request: AgentRequest<'_>,
) -> Result<TokenResponse, Error> {
    if !client.grant_types.contains(&GrantType::ClientCredentials) {
        return Err(Error::new(
            Code::UnauthorizedClient,
            "this client may not use client_credentials",
        ));
    }
    super::within_rate(
        state,
        &format!("client:{}", client.client_id),
        state.settings.rate_limit,
    )?;
    let now = state.now();
    let audiences = if request.audiences.is_empty() {
        match client.resources.as_slice() {
            [one] if one != "*" => vec![one.clone()],
            _ => {
                return Err(Error::new(
                    Code::InvalidTarget,
                    "name an audience (resource)",
                ));
            }
        }
    } else {
        request.audiences.clone()
    };
    if let Some(outside) = audiences
        .iter()
        .find(|a| !client.resources.iter().any(|r| r == "*" || r == *a))
    {
        let reason = format!(
            "client {} is not registered for resource {outside}",
            client.client_id
        );
        state
            .audit
            .record(denial(now, &reason).client(client.client_id.0.clone()))
            .await?;
        return Err(Error::new(Code::InvalidTarget, reason));
    }
    if request.scope.is_some_and(|s| !s.trim().is_empty()) {
        return Err(Error::new(
            Code::InvalidScope,
            "client credentials carry no scopes",
        ));
    }
    let lifetime = lifetime(
        state,
        request.expires_in,
        Some(state.settings.token_lifetime),
    )?;
    let subject = tokens::client_subject(&client.client_id.0);
    let jkt = request.proof.as_ref().map(|p| p.jkt.0.clone());
    let claims = AccessClaims {
        iss: state.issuer.url().to_owned(),
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
    let access_token = state
        .keys
        .sign_jwt(state.settings.signing_alg, ACCESS_TYP, &claims)?;
    let mut event = AuditEvent::new(now, EventKind::AgentToken, Outcome::Success)
        .client(client.client_id.0.clone());
    event.jti = Some(claims.jti.clone());
    event.audience = audiences;
    state.audit.record(event).await?;
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
