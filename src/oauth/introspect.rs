//! `POST /introspect` (RFC 7662).
//!
//! Only an authenticated confidential client may ask, and it learns about a token only if the
//! token was issued to it or names it as an audience; for anything else — unknown, expired,
//! revoked, someone else's — the answer is `{"active": false}` and nothing more. Revocations
//! show at once: access tokens are checked against the revocation index, refresh tokens
//! against their family.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tailpass_verify::{AccessClaims, UnixTime};

use super::error::Error;
use super::input::Form;
use crate::app::AppState;
use crate::client_auth::{self, Presented};
use crate::secret::Secret;
use crate::tokens;

/// The request.
#[derive(Debug, Deserialize)]
pub struct IntrospectForm {
    token: Option<String>,
    #[serde(default)]
    token_type_hint: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// An active access token: its claims, whose `username` doubles as RFC 7662's.
#[derive(Debug, Serialize)]
struct ActiveAccess<'a> {
    active: bool,
    token_type: &'static str,
    #[serde(flatten)]
    claims: &'a AccessClaims,
}

#[derive(Debug, Serialize)]
struct ActiveRefresh<'a> {
    active: bool,
    token_type: &'static str,
    client_id: &'a str,
    scope: String,
    sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<&'a str>,
    iat: UnixTime,
    exp: UnixTime,
}

#[derive(Debug, Serialize)]
struct Inactive {
    active: bool,
}

/// `POST /introspect`.
pub async fn introspect(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<IntrospectForm>,
) -> Result<Response, Error> {
    let presented = client_auth::presented(
        &headers,
        form.client_id.as_deref(),
        form.client_secret.as_deref(),
    )?;
    if !matches!(presented, Presented::Secret { .. }) {
        return Err(Error::invalid_client(
            "introspection requires client authentication",
        ));
    }
    let client = client_auth::authenticate(&state.clients, &presented).await?;
    let token = form
        .token
        .as_deref()
        .ok_or_else(|| Error::invalid_request("token is required"))?;
    let caller = client.client_id.0.as_str();
    let inactive = || super::no_store(StatusCode::OK, &Inactive { active: false });
    let now = state.now();

    // RFC 7662 §2.1: the hint is only a hint; try the other kind when it does not fit.
    let refresh_first = form.token_type_hint.as_deref() == Some("refresh_token");
    let as_access = || {
        tokens::read_access(
            token,
            &state.keys,
            &state.revocations,
            state.issuer.url(),
            now,
        )
        .ok()
        .filter(|c| c.client_id == caller || c.aud.contains(caller))
    };
    if !refresh_first && let Some(claims) = as_access() {
        return Ok(active_access(&claims));
    }
    if let Some((family, spent)) = state
        .store
        .family_of(&Secret::from_presented(token).hash())
        .await?
    {
        let live = family.is_live(now)
            && !spent
            && !state
                .revocations
                .family_revoked(&family.id, family.created_at);
        if live && family.client_id == client.client_id {
            let body = ActiveRefresh {
                active: true,
                token_type: "refresh_token",
                client_id: caller,
                scope: family.scope.join(" "),
                sub: family
                    .identity
                    .user
                    .as_ref()
                    .map(|u| tokens::user_subject(u.id))
                    .unwrap_or_default(),
                username: family.identity.user.as_ref().map(|u| u.login.as_str()),
                iat: family.created_at,
                exp: family.expires_at,
            };
            return Ok(super::no_store(StatusCode::OK, &body));
        }
        return Ok(inactive());
    }
    if refresh_first && let Some(claims) = as_access() {
        return Ok(active_access(&claims));
    }
    Ok(inactive())
}

fn active_access(claims: &AccessClaims) -> Response {
    let token_type = if claims.cnf.as_ref().is_some_and(|c| c.jkt.is_some()) {
        "DPoP"
    } else {
        "Bearer"
    };
    let body = ActiveAccess {
        active: true,
        token_type,
        claims,
    };
    super::no_store(StatusCode::OK, &body)
}
