//! Revocation by a client of its own token (RFC 7009).
//!
//! Revoking an access token adds its `jti` to the revocation index (and so to the feed);
//! revoking a refresh token ends its session through `session::end` (the whole family,
//! access tokens included; the client, having asked, is not told back by back-channel
//! logout). Another client's token, or no token of this server, is left alone: a client
//! learns nothing from revoking (RFC 7009 §2.2).

use tailpass_verify::feed::RevocationKind;

use super::Context;
use super::error::Fault;
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::clients::Client;
use crate::secret::Secret;
use crate::session::{self, Reason, Selection, Session};
use crate::tokens;

/// Why a revocation request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// Occurs when the client's budget is spent; carries the seconds to wait.
    #[error("rate limit exceeded")]
    RateLimited(u64),
    /// Occurs when the server's own parts fail.
    #[error(transparent)]
    Fault(#[from] Fault),
}

/// Revokes `token` if it is `client`'s.
pub async fn revoke(ctx: &Context<'_>, client: &Client, token: &str) -> Result<(), RevokeError> {
    // Each revocation is a durable write and a feed event: bounded per client.
    ctx.within_rate(
        &format!("revoke:{}", client.client_id.0),
        ctx.rate.per_minute,
    )
    .map_err(RevokeError::RateLimited)?;
    let now = ctx.now();
    let event = |detail: String| {
        AuditEvent::new(now, EventKind::Revocation, Outcome::Success)
            .client(client.client_id.0.clone())
            .detail(detail)
    };
    if let Ok(claims) = tokens::read_access(token, ctx.keys, ctx.revocations, ctx.issuer.url(), now)
        && claims.client_id == client.client_id.0
    {
        ctx.revocations
            .revoke(
                ctx.store,
                RevocationKind::Jti,
                &claims.jti,
                now,
                Some(claims.exp),
            )
            .await
            .map_err(Fault::from)?;
        let mut e = event("access token revoked by its client".into());
        e.jti = Some(claims.jti);
        e.user = claims.profile.preferred_username;
        ctx.audit.record(e).await.map_err(Fault::from)?;
        return Ok(());
    }
    if let Some((family, _)) = ctx
        .store
        .family_of(&Secret::from_presented(token).ordered_hash())
        .await
        .map_err(Fault::from)?
        && family.client_id == client.client_id
    {
        // The client decided this end itself: its session is not told back (see
        // `session::Reason::tells_relying_party`).
        session::end(
            ctx.sessions,
            Selection::One(&Session::from(&family)),
            Reason::ClientRevoked,
            now,
        )
        .await
        .map_err(Fault::from)?;
        let ended = event(format!(
            "refresh family {} revoked by its client",
            family.id
        ))
        .by(&family.identity);
        ctx.audit.record(ended).await.map_err(Fault::from)?;
    }
    Ok(())
}
