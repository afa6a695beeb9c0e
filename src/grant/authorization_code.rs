//! Redeeming an authorization code at the token endpoint (RFC 6749 §4.1.3, OIDC Core
//! §3.1.3): same client, same redirect URI, the PKCE verifier (RFC 7636 §4.6); a replayed code
//! revokes everything it issued (RFC 6749 §4.1.2).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tailpass_verify::UnixTime;
use tailpass_verify::dpop::Proof;
use tailpass_verify::feed::RevocationKind;
use tailpass_verify::verifier::BEARER;

use super::error::RedeemError;
use super::{Context, Scopes, TokenResponse};
use crate::audit::{AuditEvent, EventKind, Outcome as AuditOutcome};
use crate::clients::{Client, GrantType};
use crate::pkce;
use crate::secret::{Secret, SecretHash};
use crate::session::{Reason, Selection, Session};
use crate::store::{AuthCode, Redemption, RefreshFamily};

/// A token request of the authorization code grant, as parsed from the token endpoint's form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodeRequest {
    /// The code.
    pub code: String,
    /// The redirect URI of the authorization request.
    pub redirect_uri: String,
    /// The PKCE verifier.
    pub code_verifier: Option<String>,
    /// RFC 8707 §2.2: the resources the access token is for, each one the authorization
    /// request named (MCP clients send it at both endpoints); empty: all of them.
    pub resources: Vec<String>,
}

/// Redeems a code for `client`. `proof` is the request's checked DPoP proof: it binds a public
/// client's refresh tokens.
pub async fn redeem(
    ctx: &Context<'_>,
    client: &Client,
    request: &CodeRequest,
    proof: Option<&Proof>,
) -> Result<TokenResponse, RedeemError> {
    if !client.grant_types.contains(&GrantType::AuthorizationCode) {
        return Err(RedeemError::GrantNotAllowed);
    }
    ctx.within_rate(
        &format!("code-client:{}", client.client_id.0),
        ctx.rate.per_minute,
    )
    .map_err(RedeemError::RateLimited)?;
    let now = ctx.now();
    let hash = Secret::from_presented(&request.code).hash();
    let refuse = |refusal: RedeemError| async move {
        let event = AuditEvent::new(now, EventKind::CodeExchanged, AuditOutcome::Denied)
            .client(client.client_id.0.clone())
            .refused(&refusal);
        match ctx.audit.record(event).await {
            Ok(()) => refusal,
            Err(e) => e.into(),
        }
    };
    let code = match ctx.store.redeem_code(&hash, now).await? {
        Redemption::Invalid => return Err(refuse(RedeemError::Invalid).await),
        Redemption::Replayed(code) => {
            revoke_issued(ctx, &code, &hash, now).await?;
            return Err(refuse(RedeemError::Replayed).await);
        }
        Redemption::Redeemed(code) => code,
    };
    if code.client_id != client.client_id {
        return Err(refuse(RedeemError::OtherClient).await);
    }
    if code.redirect_uri != request.redirect_uri {
        return Err(refuse(RedeemError::RedirectUri).await);
    }
    if let Err(e) = pkce::verify(code.pkce.as_ref(), request.code_verifier.as_deref()) {
        return Err(refuse(e.into()).await);
    }
    if let Some(hit) = ctx.revocations.blocks_issuance(&code.identity, now) {
        return Err(refuse(RedeemError::Revoked(hit.to_string())).await);
    }
    if let Some(other) = request
        .resources
        .iter()
        .find(|r| !code.resources.contains(r))
    {
        return Err(refuse(RedeemError::Target(other.clone())).await);
    }
    // The access token is for what this request names; the refresh family keeps the whole
    // grant, for later tokens to name another of its resources (RFC 8707 §2.2).
    let audience = if request.resources.is_empty() {
        &code.resources
    } else {
        &request.resources
    };
    let scopes = Scopes(code.scope.clone());
    let issued = super::issue_login(
        ctx,
        client,
        super::LoginGrant {
            identity: &code.identity,
            scopes: &scopes,
            resources: audience,
            auth_time: code.auth_time,
            sid: &code.sid,
            nonce: code.nonce.as_deref(),
            access_jti: Some(&jti_for_code(&hash)),
        },
    )?;
    let refresh = client
        .grant_types
        .contains(&GrantType::RefreshToken)
        .then(|| {
            let family = RefreshFamily {
                id: code.sid.clone(),
                client_id: client.client_id.clone(),
                identity: code.identity.clone(),
                scope: code.scope.clone(),
                resources: code.resources.clone(),
                auth_time: code.auth_time,
                sid: code.sid.clone(),
                created_at: now,
                expires_at: now.plus(ctx.lifetimes.refresh),
                revoked_at: None,
                // RFC 9449 §5: a public client's refresh tokens are bound to the key of the
                // proof it redeemed the code with; a confidential client's, to its secret.
                jkt: proof.filter(|_| client.is_public()).map(|p| p.jkt.clone()),
            };
            (family, Secret::generate())
        });
    // The tokens are minted. A replay detected from here on revokes them (the access token by
    // its jti, the family in the store); one detected before has revoked the jti already, and
    // the family is then created revoked: no order leaves a live family.
    let first_token = refresh
        .as_ref()
        .map(|(family, token)| (family, token.hash()));
    let mut event = AuditEvent::new(now, EventKind::CodeExchanged, AuditOutcome::Success)
        .by(&code.identity)
        .client(client.client_id.0.clone());
    event.jti = Some(issued.claims.jti.clone());
    event.audience = issued.claims.aud.0.clone();
    event.scopes = code.scope.clone();
    // The redemption and its event are written side by side (one commit's wait, not two); the
    // tokens are answered only when both are durable. The event records what was minted.
    let (completed, audited) = tokio::join!(
        ctx.store
            .complete_redemption(&hash, first_token.as_ref().map(|(f, h)| (*f, h)), now),
        ctx.audit.record(event)
    );
    let completed = completed?;
    audited?;
    if !completed {
        // A replay came in meanwhile: it revoked the access token (by its jti) and the family
        // was created revoked. The first redemption still answers, so that of two racing
        // redemptions exactly one gets tokens, and they are dead (RFC 6749 §4.1.2).
        tracing::info!(client = %client.client_id, "a code was replayed while its first redemption completed");
    }
    let refresh_token = refresh.map(|(_, token)| token);
    Ok(TokenResponse {
        expires_in: issued.claims.exp.since(issued.claims.iat),
        access_token: issued.access_token,
        token_type: BEARER,
        scope: Some(scopes.joined()),
        refresh_token: refresh_token.map(|t| t.expose().to_owned()),
        id_token: issued.id_token,
        issued_token_type: None,
    })
}

/// The id of the access token a code is exchanged for, derived from the code's hash: a replay
/// then knows which token to revoke without the first exchange writing it down. Unguessable,
/// as the code is.
fn jti_for_code(hash: &SecretHash) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("tailpass-code-jti:{}", hash.to_hex()).as_bytes(),
    );
    URL_SAFE_NO_PAD.encode(digest.as_ref().get(..16).unwrap_or_default())
}

/// RFC 6749 §4.1.2: a code used twice may have been stolen; revoke what the first use issued —
/// its session (refresh family), and its access token.
async fn revoke_issued(
    ctx: &Context<'_>,
    code: &AuthCode,
    hash: &SecretHash,
    now: UnixTime,
) -> Result<(), RedeemError> {
    // The store revoked the family already, with the replay's detection; `end` indexes it
    // and tells the relying party, whose ID token named the session (OIDC Back-Channel
    // Logout 1.0 §2). A client without refresh tokens has no family, but its session is told
    // all the same.
    let session = Session {
        family: code.sid.clone(),
        sid: code.sid.clone(),
        client_id: code.client_id.clone(),
        identity: code.identity.clone(),
    };
    crate::session::end(
        ctx.sessions,
        Selection::One(&session),
        Reason::CodeReplayed,
        now,
    )
    .await?;
    ctx.revocations
        .revoke(
            ctx.store,
            RevocationKind::Jti,
            &jti_for_code(hash),
            now,
            Some(code.expires_at.plus(ctx.lifetimes.max_token)),
        )
        .await?;
    let event = AuditEvent::new(now, EventKind::Revocation, AuditOutcome::Success)
        .by(&code.identity)
        .client(code.client_id.0.clone())
        .because("authorization code replayed");
    ctx.audit.record(event).await?;
    Ok(())
}
