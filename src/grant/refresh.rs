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

use tailpass_verify::dpop::Proof;
use tailpass_verify::verifier::BEARER;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::error::RefreshError;
use super::{Context, LoginGrant, Scopes, TokenResponse, check_login, issue_login};
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::clients::{Client, GrantType};
use crate::identity::{Identity, WhoisError};
use crate::secret::Secret;
use crate::session::{self, Reason, Selection, Session};
use crate::store::{RefreshFamily, Rotation};

/// A token request of the refresh grant, as parsed from the token endpoint's form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefreshRequest {
    /// The refresh token.
    pub refresh_token: String,
    /// Narrower scopes, if asked.
    pub scope: Option<String>,
    /// Narrower resources, if asked.
    pub resources: Vec<String>,
}

/// Refreshes for `client`. `proof` is the request's checked DPoP proof, which the key of a
/// bound family requires.
pub async fn refresh(
    ctx: &Context<'_>,
    client: &Client,
    request: &RefreshRequest,
    proof: Option<&Proof>,
) -> Result<TokenResponse, RefreshError> {
    if !client.grant_types.contains(&GrantType::RefreshToken) {
        return Err(RefreshError::GrantNotAllowed);
    }
    let hash = Secret::from_presented(&request.refresh_token).ordered_hash();
    let now = ctx.now();
    let event = |outcome| {
        AuditEvent::new(now, EventKind::Refresh, outcome).client(client.client_id.0.clone())
    };
    let refuse = |refusal: RefreshError, by: Option<&Identity>| {
        let mut denied = event(Outcome::Denied).refused(&refusal);
        if let Some(identity) = by {
            denied = denied.by(identity);
        }
        async move {
            match ctx.audit.record(denied).await {
                Ok(()) => refusal,
                Err(e) => e.into(),
            }
        }
    };

    // Check what is asked before spending the token, so that a refused narrowing does not
    // cost the client its session.
    let Some((family, _)) = ctx
        .store
        .family_of(&hash)
        .await?
        .filter(|(f, _)| f.client_id == client.client_id)
    else {
        return Err(refuse(RefreshError::Unknown, None).await);
    };
    if !family.is_live(now) {
        return Err(refuse(RefreshError::Inactive, Some(&family.identity)).await);
    }
    // RFC 9449 §5: a bound refresh token is refused without a proof by its key, before it is
    // spent, so a thief without the key cannot even cost the client its session.
    if let Some(bound) = &family.jkt
        && proof.map(|p| &p.jkt) != Some(bound)
    {
        return Err(refuse(RefreshError::KeyRequired, Some(&family.identity)).await);
    }
    let scopes = match &request.scope {
        Some(scope) => Scopes::parse(Some(scope)),
        None => Scopes(family.scope.clone()),
    };
    if !scopes.within(&family.scope) {
        return Err(RefreshError::WiderScope);
    }
    let resources = if request.resources.is_empty() {
        family.resources.clone()
    } else {
        request.resources.clone()
    };
    if !resources.iter().all(|r| family.resources.contains(r)) {
        return Err(RefreshError::WiderResources);
    }
    if let Some(hit) = ctx.revocations.blocks_issuance(&family.identity, now) {
        let refusal = RefreshError::Revoked(hit.to_string());
        return Err(refuse(refusal, Some(&family.identity)).await);
    }
    // The person as the tailnet describes them now, not as they were at login: a node or user
    // that is gone, or grants that no longer allow this client or these resources, end the
    // session rather than only this refresh.
    let identity = match current_identity(ctx, &family.identity).await {
        Ok(identity) => identity,
        Err(Gone::Unavailable) => return Err(RefreshError::IdentityUnavailable),
        Err(Gone::Node) => return Err(end_session(ctx, client, &family, RefreshError::Gone).await),
    };
    if let Some(hit) = ctx.revocations.blocks_issuance(&identity, now) {
        let refusal = RefreshError::Revoked(hit.to_string());
        return Err(end_session(ctx, client, &family, refusal).await);
    }
    if let Err(refused) = check_login(ctx, client, &identity, &family.resources) {
        return Err(end_session(ctx, client, &family, refused.into()).await);
    }

    let replacement = Secret::generate_ordered();
    let family = match ctx
        .store
        .rotate_refresh(&hash, &replacement.ordered_hash(), &client.client_id, now)
        .await?
    {
        Rotation::Rotated(family) => family,
        Rotation::Unknown => return Err(RefreshError::Unknown),
        Rotation::Inactive(family) => {
            return Err(refuse(RefreshError::Inactive, Some(&family.identity)).await);
        }
        Rotation::Reused(family) => {
            // The store revoked the family with the detection; `end` indexes it and tells the
            // relying party, a session ended by this server (OIDC Back-Channel Logout 1.0 §2).
            session::end(
                ctx.sessions,
                Selection::One(&Session::from(&family)),
                Reason::RefreshReused,
                now,
            )
            .await?;
            return Err(refuse(RefreshError::Reused, Some(&family.identity)).await);
        }
    };
    let issued = issue_login(
        ctx,
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
    let mut success = event(Outcome::Success).by(&identity);
    success.jti = Some(issued.claims.jti.clone());
    success.audience = issued.claims.aud.0.clone();
    success.scopes = scopes.0.clone();
    ctx.audit.record(success).await?;
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
async fn current_identity(ctx: &Context<'_>, then: &Identity) -> Result<Arc<Identity>, Gone> {
    let address = tailnet_address(then).ok_or(Gone::Node)?;
    let now = ctx.identity.whois(address).await.map_err(|e| match e {
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
/// party told) and records why the refresh was refused; returns the refusal for the caller.
async fn end_session(
    ctx: &Context<'_>,
    client: &Client,
    family: &RefreshFamily,
    refusal: RefreshError,
) -> RefreshError {
    let ended = session::end(
        ctx.sessions,
        Selection::One(&Session::from(family)),
        Reason::NoLongerAllowed,
        ctx.now(),
    )
    .await;
    if let Err(e) = ended {
        return e.into();
    }
    let event = AuditEvent::new(ctx.now(), EventKind::Refresh, Outcome::Denied)
        .client(client.client_id.0.clone())
        .by(&family.identity)
        .refused(&refusal);
    match ctx.audit.record(event).await {
        Ok(()) => refusal,
        Err(e) => e.into(),
    }
}
