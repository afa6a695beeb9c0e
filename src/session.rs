//! Ending sessions. A session is one login of one person to one client: its `sid` names the
//! refresh family and is carried by every token issued in it. Ending it revokes the family
//! and, through the revocation index, its access tokens; a relying party that registered a
//! back-channel logout URI is told.

use tailpass_verify::UnixTime;
use tailpass_verify::feed::RevocationKind;

use crate::app::AppState;
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::clients::Client;
use crate::identity::Identity;
use crate::store::StoreError;

/// Ends session `sid` of `sub` at `client`.
pub async fn end(
    state: &AppState,
    client: &Client,
    identity: Option<&Identity>,
    sub: &str,
    sid: &str,
    now: UnixTime,
) -> Result<(), crate::oauth::error::Error> {
    let store = state.store.as_ref();
    store.revoke_family(sid, now).await?;
    state
        .revocations
        .revoke(store, RevocationKind::Family, sid, now, None)
        .await?;
    let alg = client.id_token_alg(state.settings.default_id_token_alg());
    state.backchannel.notify(client, alg, sub, sid);
    let mut event = AuditEvent::new(now, EventKind::Logout, Outcome::Success)
        .client(client.client_id.0.clone())
        .detail(format!("session {sid} ended"));
    if let Some(identity) = identity {
        event = event.by(identity);
    }
    state.audit.record(event).await?;
    Ok(())
}

/// Ends every live session of a user (by login) or node (by stable id): each family is
/// revoked, and each relying party that asked is told. Returns how many ended.
pub async fn end_all_of(
    state: &AppState,
    kind: RevocationKind,
    value: &str,
    now: UnixTime,
) -> Result<usize, StoreError> {
    let families = state.store.revoke_families_of(kind, value, now).await?;
    for family in &families {
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
        if let Ok(Some(client)) = state.clients.get(&family.client_id.0).await
            && let Some(user) = &family.identity.user
        {
            let alg = client.id_token_alg(state.settings.default_id_token_alg());
            state.backchannel.notify(
                &client,
                alg,
                &crate::tokens::user_subject(user.id),
                &family.sid,
            );
        }
    }
    Ok(families.len())
}
