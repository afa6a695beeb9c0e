//! `POST /token`: parses the request into one of the grants and answers its result.
//!
//! - `authorization_code` and `refresh_token` carry their own proof (a code with PKCE, a
//!   refresh token), so browsers may call them: their answers allow any origin.
//! - `client_credentials` without client authentication is the agent grant, and
//!   `urn:ietf:params:oauth:grant-type:token-exchange` acts for the calling node: both rest on
//!   the connection's ambient identity, so they refuse cross-site requests and send no CORS
//!   headers.

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::{Code, Error};
use super::input::Form;
use super::paths;
use crate::dpop;
use crate::grant::TokenResponse;
use crate::grant::agent::{self, AgentRequest};
use crate::grant::authorization_code::{self, CodeRequest};
use crate::grant::exchange::{self, ExchangeRequest};
use crate::grant::refresh::{self, RefreshRequest};
use crate::identity::peer::{self, Conn};
use crate::oauth::caller::is_same_origin;
use crate::oauth::client_auth::{self, Presented};
use crate::state::AppState;

/// The token exchange grant type (RFC 8693 §2.1).
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// Every parameter any grant takes (RFC 6749, RFC 7636, RFC 8707, RFC 8693, docs/design.md
/// "Contracts"). Only `resource` and `audience` may repeat.
#[derive(Debug, Default, Deserialize)]
pub struct TokenForm {
    grant_type: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    refresh_token: Option<String>,
    scope: Option<String>,
    #[serde(default)]
    resource: Vec<String>,
    #[serde(default)]
    audience: Vec<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    expires_in: Option<String>,
    run_label: Option<String>,
    subject_token: Option<String>,
    subject_token_type: Option<String>,
    actor_token: Option<String>,
    actor_token_type: Option<String>,
    requested_token_type: Option<String>,
}

/// The grants, by `grant_type`.
enum Grant {
    AuthorizationCode,
    Refresh,
    ClientCredentials,
    TokenExchange,
}

impl TokenForm {
    fn grant(&self) -> Result<Grant, Error> {
        match self.grant_type.as_deref() {
            Some("authorization_code") => Ok(Grant::AuthorizationCode),
            Some("refresh_token") => Ok(Grant::Refresh),
            Some("client_credentials") => Ok(Grant::ClientCredentials),
            Some(TOKEN_EXCHANGE) => Ok(Grant::TokenExchange),
            Some(other) => Err(Error::new(
                Code::UnsupportedGrantType,
                format!("grant_type {other:?} is not supported"),
            )),
            None => Err(Error::invalid_request("grant_type is required")),
        }
    }

    /// `resource` and `audience` together, in order, without repeats.
    fn audiences(&self) -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        for a in self.resource.iter().chain(&self.audience) {
            if !all.contains(a) {
                all.push(a.clone());
            }
        }
        all
    }
}

/// `POST /token`.
pub async fn token(
    State(state): State<AppState>,
    conn: Option<Extension<Conn>>,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> Response {
    let grant = match form.grant() {
        Ok(grant) => grant,
        Err(error) => return error.into_response(),
    };
    let browser_safe = matches!(grant, Grant::AuthorizationCode | Grant::Refresh);
    match exchange_for(&state, conn.map(|c| c.0), &headers, &form, grant).await {
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
    form: &TokenForm,
    grant: Grant,
) -> Result<TokenResponse, Error> {
    let dpop = proof(state, headers)?;
    let response = grant_for(state, conn, headers, form, grant, dpop.clone()).await?;
    if let Some(proof) = &dpop {
        let holder = match (&form.client_id, conn.and_then(|c| c.remote)) {
            (Some(id), _) => format!("client:{id}"),
            (None, Some(addr)) => format!("addr:{}", addr.ip()),
            (None, None) => format!("jkt:{}", proof.jkt),
        };
        dpop::remember(&state.dpop_replay, &holder, proof, state.now())
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

async fn grant_for(
    state: &AppState,
    conn: Option<Conn>,
    headers: &HeaderMap,
    form: &TokenForm,
    grant: Grant,
    dpop: Option<tailpass_verify::dpop::Proof>,
) -> Result<TokenResponse, Error> {
    let presented = client_auth::presented(
        headers,
        form.client_id.as_deref(),
        form.client_secret.as_deref(),
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
    match grant {
        Grant::AuthorizationCode => {
            let client = client_auth::authenticate(&state.clients, &presented).await?;
            let request = CodeRequest {
                code: form.code.as_deref(),
                redirect_uri: form.redirect_uri.as_deref(),
                code_verifier: form.code_verifier.as_deref(),
                proof: dpop.clone(),
            };
            authorization_code::redeem(state, &client, request).await
        }
        Grant::Refresh => {
            let client = client_auth::authenticate(&state.clients, &presented).await?;
            let request = RefreshRequest {
                refresh_token: form.refresh_token.as_deref(),
                scope: form.scope.as_deref(),
                resources: &form.resource,
                proof: dpop.clone(),
            };
            refresh::refresh(state, &client, request).await
        }
        Grant::ClientCredentials => {
            let request = AgentRequest {
                audiences: form.audiences(),
                scope: form.scope.as_deref(),
                expires_in: form.expires_in.as_deref(),
                run_label: form.run_label.as_deref(),
                proof: dpop.clone(),
                peer: conn.and_then(|c| c.remote).map(|a| a.ip()),
            };
            if presented == Presented::Nothing {
                same_origin()?;
                let caller = peer::identify(state.identity.as_ref(), conn.as_ref(), headers).await;
                agent::agent(state, caller, request).await
            } else {
                let client = client_auth::authenticate(&state.clients, &presented).await?;
                agent::client(state, &client, request).await
            }
        }
        Grant::TokenExchange => {
            same_origin()?;
            let request = ExchangeRequest {
                subject_token: form.subject_token.as_deref(),
                subject_token_type: form.subject_token_type.as_deref(),
                actor_token: form.actor_token.as_deref(),
                actor_token_type: form.actor_token_type.as_deref(),
                requested_token_type: form.requested_token_type.as_deref(),
                audiences: form.audiences(),
                scope: form.scope.as_deref(),
                expires_in: form.expires_in.as_deref(),
                run_label: form.run_label.as_deref(),
                proof: dpop.clone(),
            };
            let caller = peer::identify(state.identity.as_ref(), conn.as_ref(), headers).await;
            exchange::exchange(state, caller, request).await
        }
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
