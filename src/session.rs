//! Ending sessions: the one place that does it ([`end`]). A session is one login of one person
//! to one client: its `sid` names the refresh family and is carried by every token issued in
//! it. Ending it revokes the family in the store, adds it to the revocation index (so its
//! access tokens are refused at once, here and through the feed), records it in the audit log,
//! and — unless the client itself asked for the end — tells the relying party by OpenID
//! Connect Back-Channel Logout 1.0 if it registered a `backchannel_logout_uri`.
//!
//! Every way a session ends goes through [`end`]: RP-initiated logout, a refresh that finds the
//! person gone or no longer allowed, a reused refresh token, a replayed authorization code, the
//! kill switch, and a client revoking its refresh token (RFC 7009). Which of them tell the
//! relying party is the contract in `docs/design.md` (Tokens), decided by [`Reason`].

use tailpass_verify::feed::RevocationKind;
use tailpass_verify::{Alg, UnixTime};

use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::audit_log::{AuditError, AuditLog};
use crate::backchannel::Backchannel;
use crate::client_registry::Clients;
use crate::clients::ClientId;
use crate::identity::Identity;
use crate::revocation::Revocations;
use crate::secret::ordered_token;
use crate::store::{RefreshFamily, Store, StoreError};
use crate::tokens::user_subject;

/// A new session id: [`ordered_token`] of 16 random bytes. Unguessable, and ordered as
/// sessions begin, so that the refresh families and tokens indexed by it are added at the end
/// of their indexes: a random id would dirty a random page of each index per login, which was
/// much of what a code flow's commit wrote.
pub fn new_sid() -> String {
    ordered_token(16)
}

/// What ending a session needs, borrowed from the server's state.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    /// Where refresh families live.
    pub store: &'a dyn Store,
    /// The revocation index (and, through it, the feed).
    pub revocations: &'a Revocations,
    /// The clients, to find each session's back-channel logout URI.
    pub clients: &'a Clients,
    /// Back-channel logout delivery.
    pub backchannel: &'a Backchannel,
    /// The audit log.
    pub audit: &'a AuditLog,
    /// The server's ID token algorithm, for clients that chose none (logout tokens are signed
    /// as the client's ID tokens are).
    pub default_alg: Alg,
}

/// One session, by what is known of it without reading the store again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Its refresh family's id (the `sid` itself, for families made at code redemption).
    pub family: String,
    /// The session id its tokens carry.
    pub sid: String,
    /// The client it belongs to: the one relying party to tell.
    pub client_id: ClientId,
    /// Who it was issued to.
    pub identity: Identity,
}

impl From<&RefreshFamily> for Session {
    fn from(family: &RefreshFamily) -> Session {
        Session {
            family: family.id.clone(),
            sid: family.sid.clone(),
            client_id: family.client_id.clone(),
            identity: family.identity.clone(),
        }
    }
}

/// Which sessions end.
#[derive(Debug, Clone)]
pub enum Selection<'a> {
    /// One session.
    One(&'a Session),
    /// Every live session of a user (by login, [`RevocationKind::User`]) or node (by stable
    /// id, [`RevocationKind::Node`]); any other kind selects none.
    AllOf(RevocationKind, &'a str),
}

/// Why sessions end. It labels the audit event and decides whether relying parties are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The person logged out through the relying party (OpenID Connect RP-Initiated Logout).
    Logout,
    /// A refresh found the session's node or user gone from the tailnet, revoked, or no longer
    /// allowed by policy.
    NoLongerAllowed,
    /// A spent refresh token was presented again: it may have been stolen (RFC 9700 §4.14.2).
    RefreshReused,
    /// An authorization code was redeemed twice: it may have been stolen (RFC 6749 §4.1.2).
    CodeReplayed,
    /// An operator revoked the session's user or node (the kill switch).
    KillSwitch,
    /// The client revoked its own refresh token (RFC 7009).
    ClientRevoked,
}

impl Reason {
    /// The reason as the audit log records it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Logout => "logout",
            Reason::NoLongerAllowed => "no longer allowed",
            Reason::RefreshReused => "refresh token reused",
            Reason::CodeReplayed => "authorization code replayed",
            Reason::KillSwitch => "revoked by an operator",
            Reason::ClientRevoked => "refresh token revoked by its client",
        }
    }

    /// Whether the relying party is told. OpenID Connect Back-Channel Logout 1.0 §2: the OP
    /// tells the RPs of a session that it ended at the OP. Every end decided by this server
    /// is told; a client that revoked its own refresh token (RFC 7009) decided the end itself,
    /// and it is the session's only relying party, so there is nobody left to tell.
    pub fn tells_relying_party(self) -> bool {
        !matches!(self, Reason::ClientRevoked)
    }
}

/// What [`end`] ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ended {
    /// The sessions ended.
    pub sessions: Vec<Session>,
    /// How many back-channel logout deliveries were queued.
    pub notified: usize,
}

/// Why sessions could not be ended (all of them are server failures).
#[derive(Debug, thiserror::Error)]
pub enum EndError {
    /// Occurs when the store or the revocation index cannot be written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Occurs when the audit log cannot record the end.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// Ends the selected sessions at `now`: each refresh family revoked in the store (a no-op for
/// one the store revoked already, as replay detection does inside its transaction), added to
/// the revocation index, recorded in the audit log, and its relying party told when `reason`
/// says so and the client registered a back-channel logout URI. Delivery is queued, never
/// awaited.
pub async fn end(
    ctx: Ctx<'_>,
    selection: Selection<'_>,
    reason: Reason,
    now: UnixTime,
) -> Result<Ended, EndError> {
    let sessions = match selection {
        Selection::One(session) => {
            ctx.store.revoke_family(&session.family, now).await?;
            vec![session.clone()]
        }
        Selection::AllOf(kind, value) => ctx
            .store
            .revoke_families_of(kind, value, now)
            .await?
            .iter()
            .map(Session::from)
            .collect(),
    };
    let mut notified = 0;
    for session in &sessions {
        ctx.revocations
            .revoke(
                ctx.store,
                RevocationKind::Family,
                &session.family,
                now,
                None,
            )
            .await?;
        if reason.tells_relying_party() && tell(ctx, session).await {
            notified += 1;
        }
        let event = AuditEvent::new(now, EventKind::Logout, Outcome::Success)
            .client(session.client_id.0.clone())
            .by(&session.identity)
            .because(reason.as_str())
            .detail(format!("session {} ended", session.sid));
        ctx.audit.record(event).await?;
    }
    Ok(Ended { sessions, notified })
}

/// Queues a logout token for the session's client if it registered a URI; true if queued.
/// A client that cannot be read now is not told (its session is ended all the same).
async fn tell(ctx: Ctx<'_>, session: &Session) -> bool {
    // Metadata-document clients have no back-channel logout: nothing to fetch for them.
    let client = match ctx.clients.registered(&session.client_id.0).await {
        Ok(Some(client)) => client,
        Ok(None) => return false,
        Err(e) => {
            tracing::warn!(client = %session.client_id, error = %e, "client unreadable; back-channel logout not sent");
            return false;
        }
    };
    if client.backchannel_logout_uri.is_none() {
        return false;
    }
    let sub = session.identity.user.as_ref().map(|u| user_subject(u.id));
    let alg = client.id_token_alg(ctx.default_alg);
    ctx.backchannel
        .notify(&client, alg, sub.as_deref(), &session.sid);
    true
}

#[cfg(test)]
mod tests {
    use super::{Reason, new_sid};

    #[test]
    fn every_end_but_a_client_revoking_its_own_token_tells_the_relying_party() {
        let told = [
            Reason::Logout,
            Reason::NoLongerAllowed,
            Reason::RefreshReused,
            Reason::CodeReplayed,
            Reason::KillSwitch,
        ];
        assert!(told.iter().all(|r| r.tells_relying_party()));
        assert!(!Reason::ClientRevoked.tells_relying_party());
    }

    #[test]
    fn session_ids_sort_as_their_sessions_began_and_are_not_repeated() {
        let ids: Vec<String> = (0..200).map(|_| new_sid()).collect();
        for pair in ids.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert_ne!(a, b);
            if a[..12] != b[..12] {
                assert!(a < b, "{a} sorts after the later {b}");
            }
        }
        assert!(ids.iter().all(|id| id.len() == 34));
    }
}
