//! `POST /introspect` (RFC 7662).
//!
//! Two kinds of caller may ask. An authenticated confidential client learns about a token
//! only if the token was issued to it or names it as an audience. A tailnet caller whose rule
//! has `allow_introspect` (a gateway, say) learns about any token; it is identified by the
//! connection, so cross-site requests are refused. Anything else is `invalid_client`. For an
//! unknown, expired, revoked or someone else's token the answer is `{"active": false}` and
//! nothing more. Revocations show at once: access tokens are checked against the revocation
//! index, refresh tokens against their family.

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tailpass_verify::verifier::{BEARER, DPOP};
use tailpass_verify::{AccessClaims, UnixTime};

use super::error::Error;
use super::input::Form;
use crate::identity::peer::{self, Conn};
use crate::oauth::caller::is_same_origin;
use crate::oauth::client_auth::{self, Presented};
use crate::policy::agent;
use crate::secret::Secret;
use crate::state::AppState;
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
    conn: Option<Extension<Conn>>,
    headers: HeaderMap,
    Form(form): Form<IntrospectForm>,
) -> Result<Response, Error> {
    let presented = client_auth::presented(
        &headers,
        form.client_id.as_deref(),
        form.client_secret.as_deref(),
    )?;
    // `None`: a caller allowed to introspect any token.
    let client = match presented {
        Presented::Secret { .. } => {
            Some(client_auth::authenticate(&state.clients, &presented).await?)
        }
        Presented::Nothing if is_same_origin(&headers, state.issuer.origin()) => {
            let allowed = peer::identify(
                state.identity.as_ref(),
                conn.as_ref().map(|c| &c.0),
                &headers,
            )
            .await
            .is_ok_and(|identity| {
                agent::may_introspect(
                    &identity,
                    &state.settings.policy,
                    &state.settings.agent_capability,
                )
            });
            if !allowed {
                return Err(Error::invalid_client(
                    "introspection requires client authentication or an allow_introspect rule",
                ));
            }
            None
        }
        _ => {
            return Err(Error::invalid_client(
                "introspection requires client authentication",
            ));
        }
    };
    let token = form
        .token
        .as_deref()
        .ok_or_else(|| Error::invalid_request("token is required"))?;
    let caller = client.as_ref().map(|c| c.client_id.0.as_str());
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
        .filter(|c| caller.is_none_or(|id| c.client_id == id || c.aud.contains(id)))
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
        if live && caller.is_none_or(|id| family.client_id.0 == id) {
            let body = ActiveRefresh {
                active: true,
                token_type: "refresh_token",
                client_id: &family.client_id.0,
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
        DPOP
    } else {
        BEARER
    };
    let body = ActiveAccess {
        active: true,
        token_type,
        claims,
    };
    super::no_store(StatusCode::OK, &body)
}
