//! axum support (feature `axum`): a middleware that refuses requests without a valid token and
//! an extractor for the verified claims.
//!
//! ```ignore
//! let app = Router::new()
//!     .route("/v1/things", get(|Verified(claims): Verified| async move { claims.sub }))
//!     .layer(axum::middleware::from_fn_with_state(verifier.clone(), require_token));
//! ```
//! The presenting node (for `cnf.tailnet_node`) comes from a [`PresenterNode`] extension that
//! an earlier layer sets from the resource server's own identity source; without one, a
//! node-bound token is refused.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::remote::RemoteVerifier;
use crate::verifier::{BEARER, Presented, VerifyError};
use crate::{AccessClaims, UnixTime};

/// The stable id of the node presenting the request, set by an earlier layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenterNode(pub String);

/// The absolute URL the client addressed (`https://gw.example.ts.net/v1/x`), set by an earlier
/// layer when the server is behind a proxy; otherwise `http://<Host><path>` is assumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalUrl(pub String);

/// The RFC 9728 resource identifier of the route addressed, set by an earlier layer: a token
/// whose `aud` is it is accepted there too, beside the verifier's own audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteResource(pub String);

/// The claims of the request's verified token.
#[derive(Debug, Clone)]
pub struct Verified(pub AccessClaims);

/// A refusal: 401 with the RFC 6750 error and the reason; 503 `temporarily_unavailable` when
/// the verifier cannot decide (keys or revocation feed out of reach, replay cache full), 429
/// when one presenter sends DPoP proofs faster than the replay cache lets it.
#[derive(Debug, Clone)]
pub struct Unauthorized(pub VerifyError);

impl Unauthorized {
    /// The status and RFC error code of this refusal.
    pub fn status(&self) -> (StatusCode, &'static str) {
        use crate::dpop::DpopError;
        match &self.0 {
            VerifyError::KeysUnavailable(_)
            | VerifyError::FeedStale(_)
            | VerifyError::Dpop(DpopError::CacheFull) => {
                (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
            }
            VerifyError::Dpop(DpopError::HolderFull) => {
                (StatusCode::TOO_MANY_REQUESTS, "temporarily_unavailable")
            }
            VerifyError::Dpop(_) => (StatusCode::UNAUTHORIZED, "invalid_dpop_proof"),
            _ => (StatusCode::UNAUTHORIZED, "invalid_token"),
        }
    }
}

impl Unauthorized {
    /// The refusal's response, its `WWW-Authenticate` challenge naming `resource_metadata`
    /// when given: the URL of the resource's RFC 9728 metadata, from which a client finds the
    /// authorization server to ask (RFC 9728 §5.1).
    pub fn into_response_with_metadata(self, resource_metadata: Option<&str>) -> Response {
        let (status, code) = self.status();
        let reason = self.0.to_string();
        let body = serde_json::json!({"error": code, "error_description": reason});
        let metadata = resource_metadata
            .map(|url| format!(", resource_metadata=\"{}\"", url.replace(['"', '\\'], "")))
            .unwrap_or_default();
        let challenge = format!(
            "{BEARER} error=\"{code}\", error_description=\"{}\"{metadata}",
            reason.replace(['"', '\\'], "'")
        );
        let mut response = (status, axum::Json(body)).into_response();
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status != StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        self.into_response_with_metadata(None)
    }
}

/// Verifies the request in `parts` against `verifier` at `now`.
pub async fn verify_parts(
    verifier: &RemoteVerifier,
    parts: &Parts,
    now: UnixTime,
) -> Result<AccessClaims, Unauthorized> {
    let text = |name: header::HeaderName| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let url = match parts.extensions.get::<ExternalUrl>() {
        Some(url) => url.0.clone(),
        None => format!(
            "http://{}{}",
            text(header::HOST).unwrap_or("localhost"),
            parts.uri.path()
        ),
    };
    let presented = Presented {
        authorization: text(header::AUTHORIZATION),
        dpop: parts.headers.get("dpop").and_then(|v| v.to_str().ok()),
        method: parts.method.as_str(),
        url: &url,
        node: parts
            .extensions
            .get::<PresenterNode>()
            .map(|n| n.0.as_str()),
        resource: parts
            .extensions
            .get::<RouteResource>()
            .map(|r| r.0.as_str()),
    };
    verifier
        .verify_presented(&presented, now)
        .await
        .map_err(Unauthorized)
}

/// Middleware (`axum::middleware::from_fn_with_state`): answers 401 unless the request carries
/// a valid token, and makes its claims available as [`Verified`].
pub async fn require_token(
    State(verifier): State<Arc<RemoteVerifier>>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    match verify_parts(&verifier, &parts, UnixTime::now()).await {
        Ok(claims) => {
            parts.extensions.insert(Verified(claims));
            next.run(Request::from_parts(parts, body)).await
        }
        Err(refused) => refused.into_response(),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Verified {
    type Rejection = Unauthorized;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Verified>()
            .cloned()
            .ok_or(Unauthorized(VerifyError::Missing))
    }
}
