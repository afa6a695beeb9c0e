//! `/userinfo` (OIDC Core §5.3), GET and POST, with a bearer access token.
//!
//! Answers from the access token itself — its profile, tailnet claims and the policy claims
//! marked `includeInUserInfo` — after checking it is this server's, unexpired and not revoked.
//! A revoked token is refused here although it is still a well-signed JWT.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use tailpass_verify::claims::{Profile, TailnetClaims};

use super::error::Error;
use super::input::Bearer;
use crate::app::AppState;
use crate::tokens;

/// The userinfo response.
#[derive(Debug, Serialize)]
struct UserInfo {
    sub: String,
    #[serde(flatten)]
    profile: Profile,
    #[serde(flatten)]
    tailnet: TailnetClaims,
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

/// `GET`/`POST /userinfo`.
pub async fn userinfo(
    State(state): State<AppState>,
    Bearer(token): Bearer,
) -> Result<Response, Error> {
    let claims = tokens::read_access(
        &token,
        &state.keys,
        &state.revocations,
        state.issuer.url(),
        state.now(),
    )
    .map_err(|e| Error::invalid_token(e.to_string()))?;
    let body = UserInfo {
        sub: claims.sub,
        profile: claims.profile,
        tailnet: claims.tailnet,
        extra: claims.extra,
    };
    let mut response = axum::Json(body).into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}
