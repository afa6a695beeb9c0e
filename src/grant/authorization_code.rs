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
use crate::store::{AuthCode, CodeState, Redemption, RefreshFamily};

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
    let hash = Secret::from_presented(&request.code).ordered_hash();
    let refuse = |refusal: RedeemError| async move {
        let event = AuditEvent::new(now, EventKind::CodeExchanged, AuditOutcome::Denied)
            .client(client.client_id.0.clone())
            .refused(&refusal);
        match ctx.audit.record(event).await {
            Ok(()) => refusal,
            Err(e) => e.into(),
        }
    };
    // Read first: the checks and the minting need the code, and only a redemption that
    // passes them spends it, with its refresh family, in one write.
    let code = match ctx.store.code_state(&hash, now).await? {
        CodeState::Unknown => return Err(refuse(RedeemError::Invalid).await),
        CodeState::Spent => return Err(spend(ctx, &hash, now, RedeemError::Replayed, refuse).await),
        CodeState::Unspent(code) => code,
    };
    if let Err(refusal) = check(ctx, client, request, &code, now) {
        // A refused attempt still spends the code, as a stolen code's first use would.
        return Err(spend(ctx, &hash, now, refusal, refuse).await);
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
            (family, Secret::generate_ordered())
        });
    let first_token = refresh
        .as_ref()
        .map(|(family, token)| (family, token.ordered_hash()));
    let mut event = AuditEvent::new(now, EventKind::CodeExchanged, AuditOutcome::Success)
        .by(&code.identity)
        .client(client.client_id.0.clone());
    event.jti = Some(issued.claims.jti.clone());
    event.audience = issued.claims.aud.0.clone();
    event.scopes = code.scope.clone();
    // The tokens are minted. The redemption (with the family) and their event are written
    // side by side, one commit's wait; the tokens are answered only when both are durable.
    // The event records what was minted: if another redemption of the code won meanwhile,
    // this one is its replay, refused, and what the code issued is revoked.
    let (redeemed, audited) = tokio::join!(
        ctx.store
            .redeem_code(&hash, first_token.as_ref().map(|(f, h)| (*f, h)), now),
        ctx.audit.record(event)
    );
    match redeemed? {
        Redemption::Redeemed => {}
        Redemption::Replayed(code) => {
            revoke_issued(ctx, &code, &hash, now).await?;
            return Err(refuse(RedeemError::Replayed).await);
        }
        Redemption::Invalid => return Err(refuse(RedeemError::Invalid).await),
    }
    audited?;
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

/// Whether `code` may be exchanged by `client` with `request`: same client and redirect URI,
/// the PKCE verifier, no revocation of its identity, and only resources it was granted.
fn check(
    ctx: &Context<'_>,
    client: &Client,
    request: &CodeRequest,
    code: &AuthCode,
    now: UnixTime,
) -> Result<(), RedeemError> {
    if code.client_id != client.client_id {
        return Err(RedeemError::OtherClient);
    }
    if code.redirect_uri != request.redirect_uri {
        return Err(RedeemError::RedirectUri);
    }
    pkce::verify(code.pkce.as_ref(), request.code_verifier.as_deref())?;
    if let Some(hit) = ctx.revocations.blocks_issuance(&code.identity, now) {
        return Err(RedeemError::Revoked(hit.to_string()));
    }
    if let Some(other) = request
        .resources
        .iter()
        .find(|r| !code.resources.contains(r))
    {
        return Err(RedeemError::Target(other.clone()));
    }
    Ok(())
}

/// Spends a code whose exchange is refused with `refusal`, and records the refusal. A code
/// found spent already was replayed: what its first redemption issued is revoked.
async fn spend<F, R>(
    ctx: &Context<'_>,
    hash: &SecretHash,
    now: UnixTime,
    refusal: RedeemError,
    refuse: F,
) -> RedeemError
where
    F: FnOnce(RedeemError) -> R,
    R: std::future::Future<Output = RedeemError>,
{
    let refusal = match ctx.store.redeem_code(hash, None, now).await {
        Err(e) => return e.into(),
        Ok(Redemption::Replayed(code)) => match revoke_issued(ctx, &code, hash, now).await {
            Ok(()) => RedeemError::Replayed,
            Err(e) => return e,
        },
        Ok(Redemption::Redeemed | Redemption::Invalid) => refusal,
    };
    refuse(refusal).await
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
