//! The refresh token grant (RFC 6749 §6), with rotation (RFC 9700 §4.14.2).
//!
//! Each use spends the presented token and returns a new one; presenting a spent token means
//! it leaked, so its whole family is revoked, access tokens included. Scopes and resources may
//! narrow, never widen. Policy is re-checked at each refresh: a user since revoked, or no
//! longer allowed by the client's access rule, gets nothing. A family also has an absolute
//! lifetime, whatever the refreshes. A public client's family redeemed with a DPoP proof is
//! bound to that key (RFC 9449 §5): each refresh needs a proof by it.

use axum::http::StatusCode;
use tailpass_verify::dpop::Proof;

use super::{LoginGrant, Scopes, TokenResponse, issue_login};
use crate::app::AppState;
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::clients::{Client, GrantType};
use crate::oauth::error::{Code, Error};
use crate::secret::Secret;
use crate::store::{RevocationKind, Rotation};

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

    let replacement = Secret::generate();
    let family = match state
        .store
        .rotate_refresh(&hash, &replacement.hash(), &client.client_id, now)
        .await?
    {
        Rotation::Rotated(family) => family,
        Rotation::Unknown => return Err(invalid_grant("invalid refresh token")),
        Rotation::Inactive(family) => {
            state
                .audit
                .record(
                    audit(Outcome::Denied, Some("refresh family revoked or expired"))
                        .by(&family.identity),
                )
                .await?;
            return Err(invalid_grant(
                "the refresh token was revoked or has expired",
            ));
        }
        Rotation::Reused(family) => {
            state
                .revocations
                .revoke(
                    state.store.as_ref(),
                    RevocationKind::Family,
                    &family.id,
                    now,
                    None,
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
            identity: &family.identity,
            scopes: &scopes,
            resources: &resources,
            auth_time: family.auth_time,
            sid: &family.sid,
            nonce: None,
            access_jti: None,
        },
    )?;
    let mut event = audit(Outcome::Success, None).by(&family.identity);
    event.jti = Some(issued.claims.jti.clone());
    event.audience = issued.claims.aud.0.clone();
    event.scopes = scopes.0.clone();
    state.audit.record(event).await?;
    Ok(TokenResponse {
        access_token: issued.access_token,
        token_type: "Bearer",
        expires_in: state.settings.token_lifetime,
        scope: Some(scopes.joined()),
        refresh_token: Some(replacement.expose().to_owned()),
        id_token: issued.id_token,
        issued_token_type: None,
    })
}
