//! `POST /revoke` (RFC 7009): a client revokes its own access or refresh token
//! (`grant::revoke`). The answer is 200 whatever the token was (RFC 7009 §2.2).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::error::Error;
use super::input::Form;
use crate::grant::revoke;
use crate::oauth::client_auth;
use crate::state::AppState;

/// The request.
#[derive(Debug, Deserialize)]
pub struct RevokeForm {
    token: Option<String>,
    /// Only a hint (RFC 7009 §2.1): both kinds are tried whatever it says.
    #[serde(default, rename = "token_type_hint")]
    _token_type_hint: Option<String>,
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
    let token = form
        .token
        .as_deref()
        .ok_or_else(|| Error::invalid_request("token is required"))?;
    revoke::revoke(&state.grants(), &client, token).await?;
    Ok(StatusCode::OK)
}
