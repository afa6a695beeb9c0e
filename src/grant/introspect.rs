//! Introspection (RFC 7662): what a token is, told only to whoever may know.
//!
//! A confidential client learns about a token only if the token was issued to it or names it
//! as an audience; a trusted caller (a tailnet caller whose rule has `allow_introspect`)
//! learns about any token. An unknown, expired, revoked or someone else's token is inactive,
//! and nothing more is said. Revocations show at once: access tokens are checked against the
//! revocation index, refresh tokens against their family.

use tailpass_verify::AccessClaims;

use super::Context;
use super::error::Fault;
use crate::identity::Identity;
use crate::policy::agent;
use crate::secret::Secret;
use crate::store::RefreshFamily;
use crate::tokens;

/// Who asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asker<'a> {
    /// An authenticated confidential client, by id: told only of its own tokens.
    Client(&'a str),
    /// A caller allowed to introspect any token.
    Trusted,
}

/// What a token is.
#[derive(Debug, Clone)]
pub enum Introspection {
    /// A live access token of this server, and its claims.
    Access(Box<AccessClaims>),
    /// A live refresh token, and its family.
    Refresh(Box<RefreshFamily>),
    /// Anything else, or a token the asker may not know about.
    Inactive,
}

/// Whether `identity` may introspect any token: its deciding rule says `allow_introspect`.
pub fn may_introspect(ctx: &Context<'_>, identity: &Identity) -> bool {
    agent::may_introspect(identity, ctx.policy.file, ctx.policy.capability)
}

/// Looks `token` up for `asker`. `hint` is RFC 7662 §2.1's `token_type_hint`: only a hint,
/// so the other kind is tried when it does not fit.
pub async fn introspect(
    ctx: &Context<'_>,
    asker: Asker<'_>,
    token: &str,
    hint: Option<&str>,
) -> Result<Introspection, Fault> {
    let now = ctx.now();
    let may_know = |client_id: &str, audiences: &[String]| match asker {
        Asker::Trusted => true,
        Asker::Client(id) => client_id == id || audiences.iter().any(|a| a == id),
    };
    let as_access = || {
        tokens::read_access(token, ctx.keys, ctx.revocations, ctx.issuer.url(), now)
            .ok()
            .filter(|c| may_know(&c.client_id, &c.aud.0))
            .map(|c| Introspection::Access(Box::new(c)))
    };
    let refresh_first = hint == Some("refresh_token");
    if !refresh_first && let Some(access) = as_access() {
        return Ok(access);
    }
    if let Some((family, spent)) = ctx
        .store
        .family_of(&Secret::from_presented(token).ordered_hash())
        .await?
    {
        let live = family.is_live(now)
            && !spent
            && !ctx
                .revocations
                .family_revoked(&family.id, family.created_at);
        return Ok(if live && may_know(&family.client_id.0, &[]) {
            Introspection::Refresh(Box::new(family))
        } else {
            Introspection::Inactive
        });
    }
    if refresh_first && let Some(access) = as_access() {
        return Ok(access);
    }
    Ok(Introspection::Inactive)
}
