//! Token exchange for a tailnet peer (ambient mode, docs/design.md "Contracts": ambient
//! exchange): a gateway serving a caller that presented no token obtains, on its behalf, the
//! run token the caller would get by asking itself.
//!
//! The request is an RFC 8693 exchange whose subject is not a token but a tailnet peer — the
//! address the gateway saw it connect from (`subject_token_type` [`TAILNET_PEER_TOKEN_TYPE`]) —
//! and whose `actor_token` is the gateway's own access token. Nothing the gateway says about
//! the peer is taken on trust beyond the address:
//!
//! - the actor token must be this issuer's, unrevoked, bound to the node sending the request,
//!   and cover every audience asked for;
//! - the rule deciding *the requester's* access to that audience, as policy stands now, must
//!   set `act_for_peers`. The rule is decided again rather than read from the actor token,
//!   which does not name it: so taking `act_for_peers` away, or moving the gateway to another
//!   rule, takes effect at the next exchange rather than when the gateway's token expires;
//! - the address is resolved by this issuer's own identity source, by IP alone: a port names a
//!   connection on the gateway's host, which another host's tailscaled could map to another
//!   peer;
//! - the peer's own rules decide, as for the agent grant — audiences, scopes, claims, lifetime
//!   cap, rate — and its node or user revocations refuse it.
//!
//! The token is the peer's (`sub`, `cnf.tailnet_node`), with `act` naming the gateway (its
//! subject, node and run, RFC 8693 §4.1) and a fresh run labelled `ambient via <gateway>`.
//! Revoking the gateway's run therefore revokes every token it obtained this way.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tailpass_verify::binding::Presenter;
use tailpass_verify::claims::{Actor, RunClaims};
use tailpass_verify::dpop::Proof;

use super::agent::{AgentRequest, issue_run_token, lifetime, run_claims};
use super::error::ExchangeError;
use super::exchange::{ACCESS_TOKEN_TYPE, presented};
use super::{Context, Scopes, TokenResponse};
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::identity::peer::CallerError;
use crate::identity::{Identity, WhoisError};
use crate::policy::agent::{self, Ask, describe};
use crate::tokens;

pub use tailpass_verify::claims::TAILNET_PEER_TOKEN_TYPE;

/// An exchange for a tailnet peer, as parsed from the token endpoint's form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerExchangeRequest {
    /// The peer's address, as the gateway saw it (the port is dropped at parsing).
    pub peer: IpAddr,
    /// The gateway's own access token.
    pub actor_token: String,
    /// The peer's token: audiences (by default the actor token's), scopes, lifetime, label.
    pub token: AgentRequest,
}

/// Parses a tailnet-peer `subject_token`: `IP`, `IP:port`, `[IPv6]` or `[IPv6]:port`. The
/// port is not kept (see the module's notes).
pub fn parse_peer(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse::<IpAddr>().ok()
}

/// Records a refused exchange for a peer — by the requester, and once the peer is known, by
/// the peer with the requester as the client — and returns the refusal.
async fn refuse(
    ctx: &Context<'_>,
    requester: &Identity,
    peer: Option<&Identity>,
    refusal: ExchangeError,
) -> ExchangeError {
    let event = AuditEvent::new(ctx.now(), EventKind::TokenExchange, Outcome::Denied);
    let event = match peer {
        Some(peer) => event
            .by(peer)
            .client(tokens::node_subject(&requester.node.stable_id))
            .detail(format!("ambient via {}", requester.node.name)),
        None => event.by(requester),
    }
    .refused(&refusal);
    match ctx.audit.record(event).await {
        Ok(()) => refusal,
        Err(e) => e.into(),
    }
}

/// Issues the tailnet peer `request.peer` a run token on the request of `caller` (a gateway),
/// whose actor token is checked against the request's DPoP proof `proof` when it is bound to a
/// key. The peer's token is bound to the peer's node, never to the gateway's key.
pub async fn exchange(
    ctx: &Context<'_>,
    caller: Result<Arc<Identity>, CallerError>,
    request: &PeerExchangeRequest,
    proof: Option<&Proof>,
) -> Result<TokenResponse, ExchangeError> {
    let now = ctx.now();
    let gateway = match caller {
        Ok(identity) => identity,
        Err(CallerError::Unavailable) => return Err(ExchangeError::IdentityUnavailable),
        Err(_) => return Err(ExchangeError::NotOnTailnet),
    };
    let jkt = proof.map(|p| p.jkt.clone());
    let presenter = Presenter {
        node: Some(&gateway.node.stable_id.0),
        dpop_jkt: jkt.as_ref(),
    };
    let actor = match presented(ctx, &request.actor_token, &presenter) {
        Ok(actor) => actor,
        Err(reason) => {
            return Err(refuse(ctx, &gateway, None, ExchangeError::Actor(reason)).await);
        }
    };
    let audiences = if request.token.audiences.is_empty() {
        actor.aud.0.clone()
    } else {
        request.token.audiences.clone()
    };
    if let Some(outside) = audiences.iter().find(|a| !actor.aud.contains(a)) {
        let refusal = ExchangeError::Actor(format!("the token is not for audience {outside}"));
        return Err(refuse(ctx, &gateway, None, refusal).await);
    }
    // The requester's own rule for the audience, as policy stands now.
    let ask = Ask {
        audiences: &audiences,
        scopes: Some(&[]),
    };
    let acting = match agent::decide(&gateway, ctx.policy.file, ctx.policy.capability, ask) {
        Ok(granted) if granted.act_for_peers => granted.origin,
        Ok(granted) => {
            let refusal = ExchangeError::ActForPeers(format!(
                "{}, which decides for {}, does not set act_for_peers",
                granted.origin,
                describe(&gateway)
            ));
            return Err(refuse(ctx, &gateway, None, refusal).await);
        }
        Err(denied) => {
            let refusal = ExchangeError::ActForPeers(format!(
                "no rule lets {} act for tailnet peers: {denied}",
                describe(&gateway)
            ));
            return Err(refuse(ctx, &gateway, None, refusal).await);
        }
    };
    if let Some(hit) = ctx.revocations.blocks_issuance(&gateway, now) {
        let refusal = ExchangeError::Revoked(hit.to_string());
        return Err(refuse(ctx, &gateway, None, refusal).await);
    }
    // The peer, as this issuer's identity source knows it.
    let peer = match ctx.identity.whois(SocketAddr::new(request.peer, 0)).await {
        Ok(peer) => peer,
        Err(WhoisError::Unavailable(_)) => return Err(ExchangeError::IdentityUnavailable),
        Err(WhoisError::NotOnTailnet) => {
            let refusal = ExchangeError::PeerNotOnTailnet(request.peer);
            return Err(refuse(ctx, &gateway, None, refusal).await);
        }
    };
    // The peer's own rules, exactly as if it had asked for an agent token itself.
    let scopes = request
        .token
        .scope
        .as_deref()
        .map(|s| Scopes::parse(Some(s)).0);
    let ask = Ask {
        audiences: &audiences,
        scopes: scopes.as_deref(),
    };
    let decided = agent::decide(&peer, ctx.policy.file, ctx.policy.capability, ask);
    let per_minute = decided
        .as_ref()
        .ok()
        .and_then(|g| g.tokens_per_minute)
        .unwrap_or(ctx.rate.per_minute);
    ctx.within_rate(&format!("node:{}", peer.node.stable_id), per_minute)
        .map_err(ExchangeError::RateLimited)?;
    let granted = match decided {
        Ok(granted) => granted,
        Err(denied) => {
            return Err(refuse(ctx, &gateway, Some(&peer), ExchangeError::Peer(denied)).await);
        }
    };
    if let Some(hit) = ctx.revocations.blocks_issuance(&peer, now) {
        let refusal = ExchangeError::Revoked(hit.to_string());
        return Err(refuse(ctx, &gateway, Some(&peer), refusal).await);
    }
    let lifetime = lifetime(ctx, request.token.expires_in, granted.max_lifetime);
    let deciding = granted.origin;
    let run = RunClaims {
        run_label: Some(
            request
                .token
                .run_label
                .clone()
                .unwrap_or_else(|| format!("ambient via {}", gateway.node.name)),
        ),
        act: Some(Actor {
            sub: actor.sub.clone(),
            nid: Some(gateway.node.stable_id.0.clone()),
            run_id: actor.run.run_id.clone(),
            act: None,
        }),
        ..RunClaims::default()
    };
    let claims = run_claims(ctx, &peer, granted, run, None, lifetime);
    let event = AuditEvent::new(now, EventKind::TokenExchange, Outcome::Success)
        .by(&peer)
        .client(actor.sub)
        .detail(format!(
            "ambient via {} by {deciding}; act_for_peers by {acting}",
            gateway.node.name
        ));
    issue_run_token(ctx, &claims, event, lifetime, Some(ACCESS_TOKEN_TYPE)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_an_address_with_or_without_a_port() {
        for (text, ip) in [
            ("100.64.0.7", "100.64.0.7"),
            ("100.64.0.7:41234", "100.64.0.7"),
            ("fd7a:115c:a1e0::7", "fd7a:115c:a1e0::7"),
            ("[fd7a:115c:a1e0::7]", "fd7a:115c:a1e0::7"),
            ("[fd7a:115c:a1e0::7]:443", "fd7a:115c:a1e0::7"),
        ] {
            assert_eq!(parse_peer(text), ip.parse().ok(), "{text}");
        }
        for bad in [
            "",
            "gateway",
            "100.64.0.7:x",
            "[100.64.0.7]:99999",
            "fd7a::1:443]",
        ] {
            assert_eq!(parse_peer(bad), None, "{bad}");
        }
    }
}
