//! `POST /introspect` (RFC 7662): who asks, and the answer's shape; what the token is, is
//! decided by `grant::introspect`.
//!
//! Two kinds of caller may ask: an authenticated confidential client, or a tailnet caller
//! whose rule has `allow_introspect` (a gateway, say), identified by the connection, so
//! cross-site requests are refused. Anything else is `invalid_client`. An inactive token is
//! answered `{"active": false}` and nothing more.

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tailpass_verify::verifier::{BEARER, DPOP};
use tailpass_verify::{AccessClaims, UnixTime};

use super::error::Error;
use super::input::Form;
use crate::grant::introspect::{self, Asker, Introspection};
use crate::identity::peer::{self, Conn};
use crate::oauth::caller::is_same_origin;
use crate::oauth::client_auth::{self, Presented};
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
    let ctx = state.grants();
    let client = match presented {
        Presented::Secret { .. } => {
            Some(client_auth::authenticate(&state.clients, &presented).await?)
        }
        Presented::Nothing if is_same_origin(&headers, state.issuer.origin()) => {
            let caller = peer::identify(
                state.identity.as_ref(),
                conn.as_ref().map(|c| &c.0),
                &headers,
            )
            .await;
            if !caller.is_ok_and(|identity| introspect::may_introspect(&ctx, &identity)) {
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
    let asker = match &client {
        Some(client) => Asker::Client(&client.client_id.0),
        None => Asker::Trusted,
    };
    let found = introspect::introspect(&ctx, asker, token, form.token_type_hint.as_deref()).await?;
    Ok(match found {
        Introspection::Access(claims) => {
            let token_type = if claims.cnf.as_ref().is_some_and(|c| c.jkt.is_some()) {
                DPOP
            } else {
                BEARER
            };
            let body = ActiveAccess {
                active: true,
                token_type,
                claims: &claims,
            };
            super::no_store(StatusCode::OK, &body)
        }
        Introspection::Refresh(family) => {
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
            super::no_store(StatusCode::OK, &body)
        }
        Introspection::Inactive => super::no_store(StatusCode::OK, &Inactive { active: false }),
    })
}
