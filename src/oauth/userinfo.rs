//! `/userinfo` (OIDC Core §5.3), GET and POST, with an access token.
//!
//! Answers from the access token itself — its profile, tailnet claims and the policy claims
//! marked `includeInUserInfo` — after checking it is this server's, unexpired and not revoked,
//! and that whoever presents it may: a node-bound token only from its node, a DPoP-bound token
//! only with a proof by its key (RFC 9449 §7). A revoked token is refused although it is still
//! a well-signed JWT.

use std::collections::BTreeMap;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use tailpass_verify::binding::{self, Presenter};
use tailpass_verify::claims::{Profile, RunClaims, TailnetClaims};

use super::error::{Code, Error, Scheme};
use super::input::AccessToken;
use super::paths;
use crate::dpop;
use crate::identity::peer::{self, Conn};
use crate::state::AppState;
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
    run: RunClaims,
    #[serde(flatten)]
    extra: std::sync::Arc<BTreeMap<String, Value>>,
}

/// `GET`/`POST /userinfo`.
pub async fn userinfo(
    State(state): State<AppState>,
    method: Method,
    conn: Option<Extension<Conn>>,
    headers: HeaderMap,
    token: AccessToken,
) -> Result<Response, Error> {
    let scheme = if token.dpop {
        Scheme::Dpop
    } else {
        Scheme::Bearer
    };
    let refuse = |reason: String| Error::new(Code::InvalidToken, reason).challenge(scheme);
    let now = state.now();
    let claims = tokens::read_access(
        &token.token,
        &state.keys,
        &state.revocations,
        state.issuer.url(),
        now,
    )
    .map_err(|e| refuse(e.to_string()))?;
    if let Some(cnf) = &claims.cnf {
        let node = match cnf.tailnet_node {
            Some(_) => peer::identify(
                state.identity.as_ref(),
                conn.as_ref().map(|c| &c.0),
                &headers,
            )
            .await
            .ok()
            .map(|identity| identity.node.stable_id.0.clone()),
            None => None,
        };
        let proof = match (token.dpop, dpop::proof_header(&headers)?) {
            (true, Some(proof)) => Some(dpop::check_request(
                proof,
                method.as_str(),
                &state.issuer.endpoint(paths::USERINFO),
                Some(&token.token),
                &state.dpop_nonces,
                &state.dpop_replay,
                now,
            )?),
            _ => None,
        };
        let presenter = Presenter {
            node: node.as_deref(),
            dpop_jkt: proof.as_ref().map(|p| &p.jkt),
        };
        binding::check(Some(cnf), &presenter).map_err(|e| refuse(e.to_string()))?;
        // Accepted: only now is the proof used up, charged to the presenting node.
        if let Some(proof) = &proof {
            let holder = node.as_deref().unwrap_or(claims.sub.as_str());
            dpop::remember(&state.dpop_replay, holder, proof, now).await?;
        }
    }
    let body = UserInfo {
        sub: claims.sub,
        profile: claims.profile,
        tailnet: claims.tailnet,
        run: claims.run,
        extra: claims.extra,
    };
    let mut response = axum::Json(body).into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}
