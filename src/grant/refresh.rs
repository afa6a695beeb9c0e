//! The refresh token grant (RFC 6749 §6), with rotation (RFC 9700 §4.14.2).
//!
//! Each use spends the presented token and returns a new one; presenting a spent token means
//! it leaked, so its whole family is revoked, access tokens included. Scopes and resources may
//! narrow, never widen. The person is re-checked at each refresh: the node is resolved again
//! by its tailnet address through the identity source, and a node or user that is gone, a
//! revoked one, or grants that no longer allow the client or the session's resources end the
//! session (family revoked, relying party told). A family also has an absolute
//! lifetime, whatever the refreshes. A public client's family redeemed with a DPoP proof is
//! bound to that key (RFC 9449 §5): each refresh needs a proof by it.

use axum::http::StatusCode;
use tailpass_verify::dpop::Proof;
use tailpass_verify::verifier::BEARER;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::{LoginGrant, Scopes, TokenResponse, check_login, issue_login};
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::clients::{Client, GrantType};
use crate::identity::{Identity, WhoisError};
use crate::oauth::error::{Code, Error};
use crate::secret::Secret;
use crate::session::{self, Reason, Selection, Session};
use crate::state::AppState;
use crate::store::{RefreshFamily, Rotation};

/// A token request of the refresh grant.
#[derive(Debug, Clone)]
pub struct RefreshRequest<'a> {
    /// The refresh token.
    pub refresh_token: Option<&'a str>,
    /// Narrower scopes, if asked.
    pub scope: Option<&'a str>,
    /// Narrower resources, if asked.
    pub resources: &'a [String],
    /// The request's checked DPoP proof, required by the key of a bound family.
    pub proof: Option<Proof>,
}

fn invalid_grant(description: &'static str) -> Error {
    Error::new(Code::InvalidGrant, description)
}

/// Refreshes for `client`.
pub async fn refresh(
    state: &AppState,
    client: &Client,
    request: RefreshRequest<'_>,
) -> Result<TokenResponse, Error> {
    if !client.grant_types.contains(&GrantType::RefreshToken) {
        return Err(Error::new(
            Code::UnauthorizedClient,
            "this client may not use refresh tokens",
        ));
    }
    let presented = request
        .refresh_token
        .ok_or_else(|| Error::invalid_request("refresh_token is required"))?;
    let hash = Secret::from_presented(presented).hash();
    let now = state.now();
    let audit = |outcome, reason: Option<&str>| {
        let mut event =
            AuditEvent::new(now, EventKind::Refresh, outcome).client(client.client_id.0.clone());
        event.reason = reason.map(str::to_owned);
        event
    };

    // Check what is asked before spending the token, so that a refused narrowing does not
    // cost the client its session.
    let Some((family, _)) = state
        .store
        .family_of(&hash)
        .await?
        .filter(|(f, _)| f.client_id == client.client_id)
    else {
        state
            .audit
            .record(audit(Outcome::Denied, Some("unknown refresh token")))
            .await?;
        return Err(invalid_grant("invalid refresh token"));
    };
    if !family.is_live(now) {
        return refuse_inactive(state, audit(Outcome::Denied, None).by(&family.identity)).await;
    }
    // RFC 9449 §5: a bound refresh token is refused without a proof by its key, before it is
    // spent, so a thief without the key cannot even cost the client its session.
    if let Some(bound) = &family.jkt
        && request.proof.as_ref().map(|p| &p.jkt) != Some(bound)
    {
        let reason = "the refresh token is bound to a DPoP key; a proof by that key is required";
        state
            .audit
            .record(audit(Outcome::Denied, Some(reason)).by(&family.identity))
            .await?;
        return Err(Error::new(Code::InvalidDpopProof, reason).with_status(StatusCode::BAD_REQUEST));
    }
    let scopes = match request.scope {
        Some(_) => Scopes::parse(request.scope),
        None => Scopes(family.scope.clone()),
    };
    if !scopes.within(&family.scope) {
        return Err(Error::new(
            Code::InvalidScope,
            "a refresh may narrow the scopes, never widen them",
        ));
    }
    let resources = if request.resources.is_empty() {
        family.resources.clone()
    } else {
        request.resources.to_vec()
    };
    if !resources.iter().all(|r| family.resources.contains(r)) {
        return Err(Error::new(
            Code::InvalidTarget,
            "a refresh may narrow the resources, never widen them",
        ));
    }
    if let Some(hit) = state.revocations.blocks_issuance(&family.identity, now) {
        state
            .audit
            .record(audit(Outcome::Denied, Some(&hit.to_string())).by(&family.identity))
            .await?;
        return Err(Error::new(Code::InvalidGrant, hit.to_string()));
    }
    // The person as the tailnet describes them now, not as they were at login: a node or user
    // that is gone, or grants that no longer allow this client or these resources, end the
    // session rather than only this refresh.
    let identity = match current_identity(state, &family.identity).await {
        Ok(identity) => identity,
        Err(Gone::Unavailable) => {
            return Err(Error::unavailable(
                "the tailnet identity of the session's node cannot be determined right now",
            ));
        }
        Err(Gone::Node) => {
            let reason = "the session's node or user is no longer on the tailnet";
            end_session(state, client, &family, reason).await?;
            return Err(Error::new(Code::InvalidGrant, reason));
        }
    };
    if let Some(hit) = state.revocations.blocks_issuance(&identity, now) {
        end_session(state, client, &family, &hit.to_string()).await?;
        return Err(Error::new(Code::InvalidGrant, hit.to_string()));
    }
    if let Err(refused) = check_login(state, client, &identity, &family.resources) {
        let reason = refused
            .description()
            .unwrap_or("policy no longer allows this session");
        end_session(state, client, &family, reason).await?;
        return Err(refused);
    }

    let replacement = Secret::generate();
    let family = match state
        .store
        .rotate_refresh(&hash, &replacement.hash(), &client.client_id, now)
        .await?
    {
        Rotation::Rotated(family) => family,
        Rotation::Unknown => return Err(invalid_grant("invalid refresh token")),
        Rotation::Inactive(family) => {
            return refuse_inactive(state, audit(Outcome::Denied, None).by(&family.identity)).await;
        }
        Rotation::Reused(family) => {
            // The store revoked the family with the detection; `end` indexes it and tells the
            // relying party, a session ended by this server (OIDC Back-Channel Logout 1.0 §2).
            session::end(
                state.into(),
                Selection::One(&Session::from(&family)),
                Reason::RefreshReused,
                now,
            )
            .await?;
            let reason = "a spent refresh token was presented again; the session is revoked";
            state
                .audit
                .record(audit(Outcome::Denied, Some(reason)).by(&family.identity))
                .await?;
            return Err(invalid_grant(
                "refresh token reused: the whole session is revoked",
            ));
        }
    };
    let issued = issue_login(
        state,
        client,
        LoginGrant {
            identity: &identity,
            scopes: &scopes,
            resources: &resources,
            auth_time: family.auth_time,
            sid: &family.sid,
            nonce: None,
            access_jti: None,
        },
    )?;
    let mut event = audit(Outcome::Success, None).by(&identity);
    event.jti = Some(issued.claims.jti.clone());
    event.audience = issued.claims.aud.0.clone();
    event.scopes = scopes.0.clone();
    state.audit.record(event).await?;
    Ok(TokenResponse {
        expires_in: issued.claims.exp.since(issued.claims.iat),
        access_token: issued.access_token,
        token_type: BEARER,
        scope: Some(scopes.joined()),
        refresh_token: Some(replacement.expose().to_owned()),
        id_token: issued.id_token,
        issued_token_type: None,
    })
}

/// Refuses a token of a revoked or expired family, recording `event` with the reason.
async fn refuse_inactive(state: &AppState, event: AuditEvent) -> Result<TokenResponse, Error> {
    state
        .audit
        .record(event.because("refresh family revoked or expired"))
        .await?;
    Err(invalid_grant(
        "the refresh token was revoked or has expired",
    ))
}

/// Why a session's node could not be found again.
enum Gone {
    /// The address is no longer the same node of the same user (or no node at all).
    Node,
    /// The identity source cannot answer now; the session is left as it is.
    Unavailable,
}

/// The node's first tailnet address, as WhoIs takes it (the port does not matter here).
fn tailnet_address(identity: &Identity) -> Option<SocketAddr> {
    identity.node.addresses.iter().find_map(|prefix| {
        let ip = prefix.split('/').next()?.parse::<IpAddr>().ok()?;
        Some(SocketAddr::new(ip, 0))
    })
}

/// The identity behind the session's node now: asked of the identity source by the node's
/// tailnet address, and still the same node of the same user.
async fn current_identity(state: &AppState, then: &Identity) -> Result<Arc<Identity>, Gone> {
    let address = tailnet_address(then).ok_or(Gone::Node)?;
    let now = state.identity.whois(address).await.map_err(|e| match e {
        WhoisError::NotOnTailnet => Gone::Node,
        WhoisError::Unavailable(_) => Gone::Unavailable,
    })?;
    let same_user = match (&now.user, &then.user) {
        (Some(a), Some(b)) => a.id == b.id,
        _ => false,
    };
    if now.node.stable_id == then.node.stable_id && same_user {
        Ok(now)
    } else {
        Err(Gone::Node)
    }
}

/// Ends the family's session through `session::end` (revoked, its tokens refused, the relying
/// party told) and records why the refresh was refused.
async fn end_session(
    state: &AppState,
    client: &Client,
    family: &RefreshFamily,
    reason: &str,
) -> Result<(), Error> {
    session::end(
        state.into(),
        Selection::One(&Session::from(family)),
        Reason::NoLongerAllowed,
        state.now(),
    )
    .await?;
    let event = AuditEvent::new(state.now(), EventKind::Refresh, Outcome::Denied)
        .client(client.client_id.0.clone())
        .by(&family.identity)
        .because(reason);
    state.audit.record(event).await?;
    Ok(())
}
