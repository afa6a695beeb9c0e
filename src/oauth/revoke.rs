//! `POST /revoke` (RFC 7009): a client revokes its own access or refresh token.
//!
//! Revoking an access token adds its `jti` to the revocation index (and so to the feed);
//! revoking a refresh token ends its session through `session::end` (the whole family, access
//! tokens included; the client, having asked, is not told back by back-channel logout). The
//! answer is 200 whatever the token was (RFC 7009 §2.2): a client learns nothing from revoking.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::error::Error;
use super::input::Form;
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::oauth::client_auth;
use crate::secret::Secret;
use crate::session::{self, Reason, Selection, Session};
use crate::state::AppState;
use crate::tokens;
use tailpass_verify::feed::RevocationKind;

/// The request.
#[derive(Debug, Deserialize)]
pub struct RevokeForm {
    token: Option<String>,
    #[serde(default)]
    token_type_hint: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// `POST /revoke`.
pub async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<RevokeForm>,
) -> Result<StatusCode, Error> {
    let presented = client_auth::presented(
        &headers,
        form.client_id.as_deref(),
        form.client_secret.as_deref(),
    )?;
    let client = client_auth::authenticate(&state.clients, &presented).await?;
    // Each revocation is a durable write and a feed event: bounded per client.
    crate::grant::within_rate(
        &state,
        &format!("revoke:{}", client.client_id.0),
        state.settings.rate_limit,
    )?;
    let token = form
        .token
        .as_deref()
        .ok_or_else(|| Error::invalid_request("token is required"))?;
    let _hint = form.token_type_hint;
    let now = state.now();
    let store = state.store.as_ref();

    let event = |detail: String| {
        AuditEvent::new(now, EventKind::Revocation, Outcome::Success)
            .client(client.client_id.0.clone())
            .detail(detail)
    };
    if let Ok(claims) = tokens::read_access(
        token,
        &state.keys,
        &state.revocations,
        state.issuer.url(),
        now,
    ) && claims.client_id == client.client_id.0
    {
        state
            .revocations
            .revoke(
                store,
                RevocationKind::Jti,
                &claims.jti,
                now,
                Some(claims.exp),
            )
            .await?;
        let mut e = event("access token revoked by its client".into());
        e.jti = Some(claims.jti);
        e.user = claims.profile.preferred_username;
        state.audit.record(e).await?;
        return Ok(StatusCode::OK);
    }
    if let Some((family, _)) = store
        .family_of(&Secret::from_presented(token).hash())
        .await?
        && family.client_id == client.client_id
    {
        // The client decided this end itself: its session is not told back (see
        // `session::Reason::tells_relying_party`).
        session::end(
            (&state).into(),
            Selection::One(&Session::from(&family)),
            Reason::ClientRevoked,
            now,
        )
        .await?;
        state
            .audit
            .record(
                event(format!(
                    "refresh family {} revoked by its client",
                    family.id
                ))
                .by(&family.identity),
            )
            .await?;
    }
    Ok(StatusCode::OK)
}
