//! `POST /token`: parses the request into one of the grants and answers its result.
//!
//! Grants that carry their own proof (a code with PKCE, a refresh token) may be called from
//! browsers, so their answers allow any origin; nothing else does.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::{Code, Error};
use super::input::Form;
use crate::app::AppState;
use crate::client_auth;
use crate::grant::authorization_code::{self, CodeRequest};
use crate::grant::refresh::{self, RefreshRequest};

/// Every parameter any grant takes (RFC 6749, RFC 7636, RFC 8707, RFC 8693, DESIGN
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
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// The grants, by `grant_type`.
enum Grant<'a> {
    AuthorizationCode(CodeRequest<'a>),
    Refresh(RefreshRequest<'a>),
}

impl TokenForm {
    fn grant(&self) -> Result<Grant<'_>, Error> {
        match self.grant_type.as_deref() {
            Some("authorization_code") => Ok(Grant::AuthorizationCode(CodeRequest {
                code: self.code.as_deref(),
                redirect_uri: self.redirect_uri.as_deref(),
                code_verifier: self.code_verifier.as_deref(),
            })),
            Some("refresh_token") => Ok(Grant::Refresh(RefreshRequest {
                refresh_token: self.refresh_token.as_deref(),
                scope: self.scope.as_deref(),
                resources: &self.resource,
            })),
            Some(other) => Err(Error::new(
                Code::UnsupportedGrantType,
                format!("grant_type {other:?} is not supported"),
            )),
            None => Err(Error::invalid_request("grant_type is required")),
        }
    }
}

/// `POST /token`.
pub async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> Response {
    match exchange(&state, &headers, &form).await {
        Ok(body) => {
            let mut response = super::no_store(StatusCode::OK, &body);
            response.headers_mut().insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
            response
        }
        Err(error) => error.into_response(),
    }
}

async fn exchange(
    state: &AppState,
    headers: &HeaderMap,
    form: &TokenForm,
) -> Result<crate::grant::TokenResponse, Error> {
    let grant = form.grant()?;
    let presented = client_auth::presented(
        headers,
        form.client_id.as_deref(),
        form.client_secret.as_deref(),
    )?;
    let client = client_auth::authenticate(&state.clients, &presented).await?;
    match grant {
        Grant::AuthorizationCode(request) => {
            authorization_code::redeem(state, &client, request).await
        }
        Grant::Refresh(request) => refresh::refresh(state, &client, request).await,
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
