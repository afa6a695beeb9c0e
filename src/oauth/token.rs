//! `POST /token`: parses the request into one of the grants and answers its result.
//!
//! - `authorization_code` and `refresh_token` carry their own proof (a code with PKCE, a
//!   refresh token), so browsers may call them: their answers allow any origin.
//! - `client_credentials` without client authentication is the agent grant, and
//!   `urn:ietf:params:oauth:grant-type:token-exchange` acts for the calling node: both rest on
//!   the connection's ambient identity, so they refuse cross-site requests and send no CORS
//!   headers.
//! - The federation grants — token exchange of an external `jwt` or `id_token`, and
//!   `urn:ietf:params:oauth:grant-type:jwt-bearer` — take no client authentication either: the
//!   external token is the credential (with the connection's identity when it has one). Over
//!   Funnel (`Tailscale-Funnel-Request`) they are the only grants served; any other is
//!   `unsupported_grant_type` there.

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::Error;
use super::input::{GrantRequest, TokenRequest};
use super::paths;
use crate::clients::GrantType;
use crate::dpop;
use crate::grant::{
    TokenResponse, agent, ambient, authorization_code, exchange, federated, refresh,
};
use crate::identity::peer::{self, Conn};
use crate::oauth::caller::is_same_origin;
use crate::oauth::client_auth::{self, Presented};
use crate::state::AppState;

/// `POST /token`.
pub async fn token(
    State(state): State<AppState>,
    conn: Option<Extension<Conn>>,
    headers: HeaderMap,
    request: TokenRequest,
) -> Response {
    let browser_safe = matches!(
        request.grant_type,
        GrantType::AuthorizationCode | GrantType::RefreshToken
    );
    match exchange_for(&state, conn.map(|c| c.0), &headers, &request).await {
        Ok(body) => {
            let mut response = super::no_store(StatusCode::OK, &body);
            if browser_safe {
                response.headers_mut().insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
            }
            response
        }
        Err(error) => error.into_response(),
    }
}

/// The request's DPoP proof, checked, for the token endpoint (errors are 400 here, §5.1).
fn proof(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<tailpass_verify::dpop::Proof>, Error> {
    let Some(header) = dpop::proof_header(headers)
        .map_err(|e| Error::from(e).with_status(StatusCode::BAD_REQUEST))?
    else {
        return Ok(None);
    };
    let url = state.issuer.endpoint(paths::TOKEN);
    dpop::check_request(
        header,
        "POST",
        &url,
        None,
        &state.dpop_nonces,
        &state.dpop_replay,
        state.now(),
    )
    .map(Some)
    .map_err(Error::from)
    .map_err(|e| {
        if e.status() == StatusCode::UNAUTHORIZED {
            e.with_status(StatusCode::BAD_REQUEST)
        } else {
            e
        }
    })
}

/// Runs the grant, then uses up its DPoP proof: only an accepted request's proof takes room
/// in the replay cache, charged to the client, or else to the presenting address.
async fn exchange_for(
    state: &AppState,
    conn: Option<Conn>,
    headers: &HeaderMap,
    request: &TokenRequest,
) -> Result<TokenResponse, Error> {
    let dpop = proof(state, headers)?;
    let response = grant_for(state, conn, headers, request, dpop.as_ref()).await?;
    if let Some(proof) = &dpop {
        let holder = match (&request.client_id, conn.and_then(|c| c.remote)) {
            (Some(id), _) => format!("client:{id}"),
            (None, Some(addr)) => format!("addr:{}", addr.ip()),
            (None, None) => format!("jkt:{}", proof.jkt),
        };
        dpop::remember(&state.dpop_replay, &holder, proof, state.now())
            .await
            .map_err(Error::from)
            .map_err(|e| {
                if e.status() == StatusCode::UNAUTHORIZED {
                    e.with_status(StatusCode::BAD_REQUEST)
                } else {
                    e
                }
            })?;
    }
    Ok(response)
}

/// Authenticates the client where the grant needs one, and runs the grant.
async fn grant_for(
    state: &AppState,
    conn: Option<Conn>,
    headers: &HeaderMap,
    request: &TokenRequest,
    proof: Option<&tailpass_verify::dpop::Proof>,
) -> Result<TokenResponse, Error> {
    // Funnel brings the public internet: only the external token can say who it is.
    if headers.contains_key(peer::FUNNEL_HEADER)
        && !request.grant.as_ref().is_ok_and(GrantRequest::is_federated)
    {
        return Err(Error::new(
            super::error::Code::UnsupportedGrantType,
            "over Funnel, /token serves only the federation grants",
        ));
    }
    // The assertion grant exists only where some issuer is trusted: without a table it is
    // unsupported whatever its parameters (and discovery does not advertise it).
    if request.grant_type == GrantType::JwtBearer && state.federation.is_empty() {
        return Err(Error::new(
            super::error::Code::UnsupportedGrantType,
            "no external issuer is trusted here ([[federation]] tables)",
        ));
    }
    let presented = client_auth::presented(
        headers,
        request.client_id.as_deref(),
        request.client_secret.as_deref(),
    )?;
    let same_origin = || {
        if is_same_origin(headers, state.issuer.origin()) {
            Ok(())
        } else {
            Err(Error::access_denied(
                "cross-site request refused: this grant acts on the caller's network identity",
            ))
        }
    };
    // The client authenticates (or, for grants on the caller's network identity, the request
    // is same-origin) before the grant's own parameters are looked at.
    let client = match (request.grant_type, &presented) {
        (GrantType::TokenExchange | GrantType::JwtBearer, _)
        | (GrantType::ClientCredentials, Presented::Nothing) => {
            same_origin()?;
            None
        }
        _ => Some(client_auth::authenticate(&state.clients, &presented).await?),
    };
    let grant = request.grant.as_ref().map_err(Clone::clone)?;
    let ctx = state.grants();
    let ctx = &ctx;
    match (grant, client) {
        (GrantRequest::AuthorizationCode(code), Some(client)) => {
            Ok(authorization_code::redeem(ctx, &client, code, proof).await?)
        }
        (GrantRequest::RefreshToken(token), Some(client)) => {
            Ok(refresh::refresh(ctx, &client, token, proof).await?)
        }
        (GrantRequest::ClientCredentials(agent_request), Some(client)) => {
            Ok(agent::client(ctx, &client, agent_request, proof).await?)
        }
        (GrantRequest::ClientCredentials(agent_request), None) => {
            let caller = peer::identify(state.identity.as_ref(), conn.as_ref(), headers).await;
            let address = conn.and_then(|c| c.remote).map(|a| a.ip());
            Ok(agent::agent(ctx, caller, address, agent_request, proof).await?)
        }
        (GrantRequest::TokenExchange(exchange_request), _) => {
            let caller = peer::identify(state.identity.as_ref(), conn.as_ref(), headers).await;
            Ok(exchange::exchange(ctx, caller, exchange_request, proof).await?)
        }
        (GrantRequest::PeerExchange(peer_request), _) => {
            let caller = peer::identify(state.identity.as_ref(), conn.as_ref(), headers).await;
            Ok(ambient::exchange(ctx, caller, peer_request, proof).await?)
        }
        (GrantRequest::Federated(federated_request), _) => {
            let caller = peer::identify(state.identity.as_ref(), conn.as_ref(), headers).await;
            let address = conn.and_then(|c| c.remote).map(|a| a.ip());
            Ok(federated::grant(ctx, caller, address, federated_request, proof).await?)
        }
        (_, None) => Err(Error::server_error(
            &"a grant that needs a client was not given one",
        )),
    }
}

/// `OPTIONS /token`: the CORS preflight of browser-based public clients.
pub async fn preflight() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type, authorization, dpop"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    response
}
