//! The one error type of every OAuth/OIDC endpoint, and its JSON response.
//!
//! Codes are those of RFC 6749 §5.2 and the specifications that extend it (RFC 6750 §3.1,
//! RFC 7591 §3.2.2, RFC 8707 §2, RFC 9449 §7). The response is always JSON with
//! `Cache-Control: no-store`; `invalid_client` and `invalid_token` carry the
//! `WWW-Authenticate` challenge their RFCs ask for. `server_error` never carries inner text to
//! the client: the cause is logged instead.

use std::borrow::Cow;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::federation::ExternalError;
use crate::grant::error::{
    AgentError, AuthorizeError, ExchangeError, Fault, FederationError, LoginRefused, RedeemError,
    RefreshError, Shown,
};
use crate::grant::revoke::RevokeError;
use crate::killswitch::KillError;
use crate::policy::agent::Denied;

/// An error code and the status it is sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The request is missing a parameter, repeats one, or is malformed.
    InvalidRequest,
    /// Client authentication failed, or an agent is not on the tailnet (401).
    InvalidClient,
    /// The code, refresh token or subject token is invalid, expired, revoked or mismatched.
    InvalidGrant,
    /// The client or caller may not use this grant.
    UnauthorizedClient,
    /// The grant type is not supported.
    UnsupportedGrantType,
    /// The response type is not supported.
    UnsupportedResponseType,
    /// The scope is invalid or exceeds what may be granted.
    InvalidScope,
    /// The resource or audience is not allowed (RFC 8707).
    InvalidTarget,
    /// The access token is invalid (RFC 6750, 401).
    InvalidToken,
    /// The DPoP proof is invalid (RFC 9449).
    InvalidDpopProof,
    /// The DPoP proof needs a server nonce (RFC 9449 §8).
    UseDpopNonce,
    /// The caller or user is not allowed (403).
    AccessDenied,
    /// A redirect URI is invalid (RFC 7591).
    InvalidRedirectUri,
    /// Client metadata is invalid (RFC 7591).
    InvalidClientMetadata,
    /// Too many requests (429 with `Retry-After`), or the identity source is down (503).
    TemporarilyUnavailable,
    /// No such endpoint (404).
    NotFound,
    /// The method is not allowed on this endpoint (405).
    MethodNotAllowed,
    /// The body is larger than allowed (413).
    PayloadTooLarge,
    /// Something failed on the server's side (500).
    ServerError,
    /// A silent authorization needs the person signed in (OIDC Core §3.1.2.6).
    LoginRequired,
    /// A silent authorization needs the person's consent (OIDC Core §3.1.2.6).
    ConsentRequired,
    /// Request objects are not supported (OIDC Core §3.1.2.6).
    RequestNotSupported,
    /// Request objects by reference are not supported (OIDC Core §3.1.2.6).
    RequestUriNotSupported,
}

impl Code {
    /// The `error` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidRequest | Code::MethodNotAllowed | Code::PayloadTooLarge => {
                "invalid_request"
            }
            Code::InvalidClient => "invalid_client",
            Code::InvalidGrant => "invalid_grant",
            Code::UnauthorizedClient => "unauthorized_client",
            Code::UnsupportedGrantType => "unsupported_grant_type",
            Code::UnsupportedResponseType => "unsupported_response_type",
            Code::InvalidScope => "invalid_scope",
            Code::InvalidTarget => "invalid_target",
            Code::InvalidToken => "invalid_token",
            Code::InvalidDpopProof => "invalid_dpop_proof",
            Code::UseDpopNonce => "use_dpop_nonce",
            Code::AccessDenied => "access_denied",
            Code::InvalidRedirectUri => "invalid_redirect_uri",
            Code::InvalidClientMetadata => "invalid_client_metadata",
            Code::TemporarilyUnavailable => "temporarily_unavailable",
            Code::NotFound => "not_found",
            Code::ServerError => "server_error",
            Code::LoginRequired => "login_required",
            Code::ConsentRequired => "consent_required",
            Code::RequestNotSupported => "request_not_supported",
            Code::RequestUriNotSupported => "request_uri_not_supported",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Code::InvalidClient | Code::InvalidToken | Code::InvalidDpopProof => {
                StatusCode::UNAUTHORIZED
            }
            Code::AccessDenied => StatusCode::FORBIDDEN,
            Code::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Which `WWW-Authenticate` scheme an authentication error challenges with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// HTTP Basic (client authentication).
    Basic,
    /// Bearer tokens (RFC 6750).
    Bearer,
    /// DPoP-bound tokens (RFC 9449).
    Dpop,
}

/// An OAuth error response.
#[derive(Debug, Clone)]
pub struct Error {
    code: Code,
    description: Option<Cow<'static, str>>,
    status: Option<StatusCode>,
    retry_after: Option<u64>,
    challenge: Option<Scheme>,
    dpop_nonce: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_description: Option<&'a str>,
}

impl Error {
    /// An error with this code and description.
    pub fn new(code: Code, description: impl Into<Cow<'static, str>>) -> Error {
        Error {
            code,
            description: Some(description_chars(description.into())),
            status: None,
            retry_after: None,
            challenge: None,
            dpop_nonce: None,
        }
    }

    /// `invalid_request`.
    pub fn invalid_request(description: impl Into<Cow<'static, str>>) -> Error {
        Error::new(Code::InvalidRequest, description)
    }

    /// `access_denied`.
    pub fn access_denied(description: impl Into<Cow<'static, str>>) -> Error {
        Error::new(Code::AccessDenied, description)
    }

    /// `invalid_client`, challenging with Basic.
    pub fn invalid_client(description: impl Into<Cow<'static, str>>) -> Error {
        Error::new(Code::InvalidClient, description).challenge(Scheme::Basic)
    }

    /// `invalid_token`, challenging with Bearer.
    pub fn invalid_token(description: impl Into<Cow<'static, str>>) -> Error {
        Error::new(Code::InvalidToken, description).challenge(Scheme::Bearer)
    }

    /// `server_error`. The cause is logged here and not sent.
    pub fn server_error(cause: &dyn std::fmt::Display) -> Error {
        tracing::error!(error = %cause, "internal error");
        Error {
            code: Code::ServerError,
            description: None,
            status: None,
            retry_after: None,
            challenge: None,
            dpop_nonce: None,
        }
    }

    /// 503 `temporarily_unavailable`, e.g. tailscaled is down.
    pub fn unavailable(description: impl Into<Cow<'static, str>>) -> Error {
        Error::new(Code::TemporarilyUnavailable, description)
    }

    /// 429 with `Retry-After`.
    pub fn rate_limited(retry_after: u64) -> Error {
        let mut e = Error::new(Code::TemporarilyUnavailable, "rate limit exceeded");
        e.status = Some(StatusCode::TOO_MANY_REQUESTS);
        e.retry_after = Some(retry_after.max(1));
        e
    }

    /// Sets the `WWW-Authenticate` challenge.
    pub fn challenge(mut self, scheme: Scheme) -> Error {
        self.challenge = Some(scheme);
        self
    }

    /// Overrides the status.
    pub fn with_status(mut self, status: StatusCode) -> Error {
        self.status = Some(status);
        self
    }

    /// Sends a fresh DPoP nonce with the error (RFC 9449 §8).
    pub fn with_dpop_nonce(mut self, nonce: String) -> Error {
        self.dpop_nonce = Some(nonce);
        self
    }

    /// The error code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The description, if any.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status.unwrap_or_else(|| self.code.status())
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.description {
            Some(d) => write!(f, "{}: {d}", self.code.as_str()),
            None => f.write_str(self.code.as_str()),
        }
    }
}

/// Keeps a description within the characters RFC 6749 §4.1.2.1 and §5.2 allow
/// (`%x20-21 / %x23-5B / %x5D-7E`): `"` becomes `'`, `\` becomes `/`, anything else outside
/// printable ASCII becomes `?`. Descriptions quote client input (a scope, a URI), so they are
/// cleaned where every error is made, for `/authorize` redirects and JSON bodies alike.
pub fn description_chars<'a>(text: Cow<'a, str>) -> Cow<'a, str> {
    let allowed = |c: char| matches!(c, ' '..='~') && c != '"' && c != '\\';
    if text.chars().all(allowed) {
        return text;
    }
    Cow::Owned(
        text.chars()
            .map(|c| match c {
                '"' => '\'',
                '\\' => '/',
                c if allowed(c) => c,
                _ => '?',
            })
            .collect(),
    )
}

/// Quotes a value for an auth-param (RFC 9110 §11.2): backslash-escapes `"` and `\`, drops
/// control characters.
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = Body {
            error: self.code.as_str(),
            error_description: self.description.as_deref(),
        };
        let mut response = (self.status(), axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        // Every 503 says when to try again (RFC 9110 §10.2.3): what it reports is transient.
        let retry_after = self.retry_after.or_else(|| {
            (self.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(UNAVAILABLE_RETRY_AFTER)
        });
        if let Some(secs) = retry_after
            && let Ok(value) = HeaderValue::from_str(&secs.to_string())
        {
            headers.insert(header::RETRY_AFTER, value);
        }
        if let Some(scheme) = self.challenge {
            let mut challenge = match scheme {
                Scheme::Basic => "Basic realm=\"tailpass\"".to_owned(),
                Scheme::Bearer => "Bearer realm=\"tailpass\"".to_owned(),
                Scheme::Dpop => "DPoP realm=\"tailpass\", algs=\"ES256 EdDSA RS256\"".to_owned(),
            };
            if scheme != Scheme::Basic {
                challenge.push_str(&format!(", error={}", quoted(self.code.as_str())));
                if let Some(d) = &self.description {
                    challenge.push_str(&format!(", error_description={}", quoted(d)));
                }
            }
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                headers.insert(header::WWW_AUTHENTICATE, value);
            }
        }
        if let Some(nonce) = self.dpop_nonce
            && let Ok(value) = HeaderValue::from_str(&nonce)
        {
            headers.insert("dpop-nonce", value);
        }
        response
    }
}

// A request without a tailnet identity is refused (403), or 503 when the source is down.
impl From<crate::identity::peer::CallerError> for Error {
    fn from(e: crate::identity::peer::CallerError) -> Error {
        use crate::identity::peer::CallerError;
        match e {
            CallerError::Unavailable => Error::unavailable(
                "the tailnet identity of the caller cannot be determined right now",
            ),
            other => Error::access_denied(other.to_string()),
        }
    }
}

// RFC 9449: a refused proof is `invalid_dpop_proof` (401; endpoints that answer 400 say so),
// a missing nonce `use_dpop_nonce` with the nonce to retry with, a full replay cache 503 and
// a holder over its share 429.
impl From<crate::dpop::ProofError> for Error {
    fn from(e: crate::dpop::ProofError) -> Error {
        use crate::dpop::{MAX_AGE, ProofError, SKEW};
        match e {
            ProofError::NonceRequired { nonce } => {
                Error::new(Code::UseDpopNonce, "a fresh DPoP nonce is required")
                    .with_dpop_nonce(nonce)
            }
            ProofError::CacheFull(inner) => Error::unavailable(inner.to_string()),
            ProofError::HolderFull(_) => Error::rate_limited(MAX_AGE + SKEW),
            ProofError::Store(e) => Error::from(e),
            other => Error::new(Code::InvalidDpopProof, other.to_string()),
        }
    }
}

// Failures of the server's own parts become `server_error`, their cause logged, never sent.
impl From<crate::audit_log::AuditError> for Error {
    fn from(e: crate::audit_log::AuditError) -> Error {
        match e {
            crate::audit_log::AuditError::Unavailable(_) => store_unavailable(&e),
            other => Error::server_error(&other),
        }
    }
}

// A database out of reach is 503 `temporarily_unavailable` with `Retry-After` (the pool
// reconnects by itself); any other store failure is the server's own.
impl From<crate::store::StoreError> for Error {
    fn from(e: crate::store::StoreError) -> Error {
        match e {
            crate::store::StoreError::Unavailable(_) => store_unavailable(&e),
            other => Error::server_error(&other),
        }
    }
}

/// The answer while the database cannot be reached: 503 with `Retry-After`; the cause logged.
fn store_unavailable(cause: &dyn std::fmt::Display) -> Error {
    tracing::warn!(error = %cause, "database unavailable");
    let mut refused = Error::unavailable("the database cannot be reached right now");
    refused.retry_after = Some(UNAVAILABLE_RETRY_AFTER);
    refused
}

/// Seconds a client is asked to wait on a 503: the database out of reach or its disk full, the
/// identity source stalled or saturated.
const UNAVAILABLE_RETRY_AFTER: u64 = 5;

impl From<crate::session::EndError> for Error {
    fn from(e: crate::session::EndError) -> Error {
        match e {
            crate::session::EndError::Store(store) => store.into(),
            crate::session::EndError::Audit(audit) => audit.into(),
        }
    }
}

impl From<crate::keys::KeyError> for Error {
    fn from(e: crate::keys::KeyError) -> Error {
        Error::server_error(&e)
    }
}

// The grants' refusals, mapped to the wire here and nowhere else. Each arm names the code; the
// description is the refusal's text.

impl From<Fault> for Error {
    fn from(e: Fault) -> Error {
        match e {
            Fault::Store(store) => store.into(),
            Fault::Audit(audit) => audit.into(),
            Fault::Session(session) => session.into(),
            Fault::Keys(keys) => Error::server_error(&keys),
        }
    }
}

/// The code of an agent policy refusal (docs/design.md "Contracts": agent grant request).
fn denied_code(e: &Denied) -> Code {
    match e {
        Denied::NoRule(_) => Code::UnauthorizedClient,
        Denied::Audience { .. }
        | Denied::NoAudience(_)
        | Denied::Split { .. }
        | Denied::Unruled { .. } => Code::InvalidTarget,
        Denied::Scope { .. } => Code::InvalidScope,
    }
}

impl From<LoginRefused> for Error {
    fn from(e: LoginRefused) -> Error {
        let code = match &e {
            LoginRefused::Claims(_) | LoginRefused::NotAllowed(_) => Code::InvalidGrant,
            LoginRefused::Resource(_) => Code::InvalidTarget,
            LoginRefused::Policy(denied) => denied_code(denied),
        };
        Error::new(code, e.to_string())
    }
}

impl From<AgentError> for Error {
    fn from(e: AgentError) -> Error {
        let code = match e {
            AgentError::Fault(fault) => return fault.into(),
            AgentError::NotOnTailnet => return Error::invalid_client(e.to_string()),
            AgentError::IdentityUnavailable => Code::TemporarilyUnavailable,
            AgentError::RateLimited(retry_after) => return Error::rate_limited(retry_after),
            AgentError::Denied(ref denied) => denied_code(denied),
            AgentError::Revoked(_) => Code::AccessDenied,
            AgentError::GrantNotAllowed => Code::UnauthorizedClient,
            AgentError::NoAudience | AgentError::Resource { .. } => Code::InvalidTarget,
            AgentError::Scopes => Code::InvalidScope,
        };
        Error::new(code, e.to_string())
    }
}

impl From<FederationError> for Error {
    fn from(e: FederationError) -> Error {
        let code = match e {
            FederationError::Fault(fault) => return fault.into(),
            FederationError::NotConfigured => Code::UnsupportedGrantType,
            FederationError::IdentityUnavailable => Code::TemporarilyUnavailable,
            FederationError::RateLimited(retry_after) => return Error::rate_limited(retry_after),
            // The issuer's keys out of reach is ours to retry, not the caller's fault.
            FederationError::External(ExternalError::Keys(_)) => Code::TemporarilyUnavailable,
            FederationError::External(_) | FederationError::Replayed => Code::InvalidGrant,
            // RFC 9449 §5: at the token endpoint, a proof problem is a 400.
            FederationError::DpopRequired => {
                return Error::new(Code::InvalidDpopProof, e.to_string())
                    .with_status(StatusCode::BAD_REQUEST);
            }
            FederationError::Denied(ref denied) => denied_code(denied),
            FederationError::Revoked(_) => Code::AccessDenied,
        };
        Error::new(code, e.to_string())
    }
}

impl From<ExchangeError> for Error {
    fn from(e: ExchangeError) -> Error {
        let code = match e {
            ExchangeError::Fault(fault) => return fault.into(),
            ExchangeError::NotOnTailnet => return Error::invalid_client(e.to_string()),
            ExchangeError::IdentityUnavailable => Code::TemporarilyUnavailable,
            ExchangeError::Subject(_) | ExchangeError::Actor(_) | ExchangeError::ParentExpired => {
                Code::InvalidGrant
            }
            ExchangeError::WiderAudience(_) => Code::InvalidTarget,
            ExchangeError::WiderScope(_) => Code::InvalidScope,
            ExchangeError::Denied(ref denied) => denied_code(denied),
            ExchangeError::Revoked(_) => Code::AccessDenied,
            // The client is the gateway: it is not authorized to act for peers.
            ExchangeError::ActForPeers(_) => Code::UnauthorizedClient,
            // The subject (a peer) is what is refused, as for every other subject here.
            ExchangeError::PeerNotOnTailnet(_) | ExchangeError::Peer(Denied::NoRule(_)) => {
                Code::InvalidGrant
            }
            ExchangeError::Peer(ref denied) => denied_code(denied),
            ExchangeError::RateLimited(retry_after) => return Error::rate_limited(retry_after),
        };
        Error::new(code, e.to_string())
    }
}

impl From<RefreshError> for Error {
    fn from(e: RefreshError) -> Error {
        let code = match e {
            RefreshError::Login(refused) => return refused.into(),
            RefreshError::Fault(fault) => return fault.into(),
            RefreshError::GrantNotAllowed => Code::UnauthorizedClient,
            RefreshError::Unknown
            | RefreshError::Inactive
            | RefreshError::Revoked(_)
            | RefreshError::Gone
            | RefreshError::Reused => Code::InvalidGrant,
            // RFC 9449 §5: at the token endpoint, a proof problem is a 400.
            RefreshError::KeyRequired => {
                return Error::new(Code::InvalidDpopProof, e.to_string())
                    .with_status(StatusCode::BAD_REQUEST);
            }
            RefreshError::WiderScope => Code::InvalidScope,
            RefreshError::WiderResources => Code::InvalidTarget,
            RefreshError::IdentityUnavailable => Code::TemporarilyUnavailable,
        };
        Error::new(code, e.to_string())
    }
}

impl From<RedeemError> for Error {
    fn from(e: RedeemError) -> Error {
        let code = match e {
            RedeemError::Login(refused) => return refused.into(),
            RedeemError::Fault(fault) => return fault.into(),
            RedeemError::RateLimited(retry_after) => return Error::rate_limited(retry_after),
            RedeemError::GrantNotAllowed => Code::UnauthorizedClient,
            RedeemError::Target(_) => Code::InvalidTarget,
            RedeemError::Invalid
            | RedeemError::Replayed
            | RedeemError::OtherClient
            | RedeemError::RedirectUri
            | RedeemError::Pkce(_)
            | RedeemError::Revoked(_) => Code::InvalidGrant,
        };
        Error::new(code, e.to_string())
    }
}

impl From<RevokeError> for Error {
    fn from(e: RevokeError) -> Error {
        match e {
            RevokeError::RateLimited(retry_after) => Error::rate_limited(retry_after),
            RevokeError::Fault(fault) => fault.into(),
        }
    }
}

impl From<KillError> for Error {
    fn from(e: KillError) -> Error {
        match e {
            KillError::Value
            | KillError::Family
            | KillError::Kid
            | KillError::Until
            | KillError::Selection(_) => Error::invalid_request(e.to_string()),
            // A store out of reach or out of space is 503 here too, like every write's.
            KillError::Store(e) => e.into(),
            KillError::Audit(e) => e.into(),
            KillError::Sessions(e) => e.into(),
        }
    }
}

impl AuthorizeError {
    /// The code an authorization refusal is redirected with (RFC 6749 §4.1.2.1, OIDC Core
    /// §3.1.2.6).
    pub fn code(&self) -> Code {
        match self {
            AuthorizeError::RequestObject => Code::RequestNotSupported,
            AuthorizeError::RequestUri => Code::RequestUriNotSupported,
            AuthorizeError::ResponseType => Code::UnsupportedResponseType,
            AuthorizeError::NoResponseType
            | AuthorizeError::ResponseMode
            | AuthorizeError::IdTokenHint(_)
            | AuthorizeError::Pkce(_)
            | AuthorizeError::PromptNone
            | AuthorizeError::Nonce
            | AuthorizeError::MaxAge => Code::InvalidRequest,
            AuthorizeError::GrantNotAllowed => Code::UnauthorizedClient,
            AuthorizeError::IdentityUnavailable | AuthorizeError::RateLimited => {
                Code::TemporarilyUnavailable
            }
            AuthorizeError::LoginRequired(_) | AuthorizeError::OtherAccount => Code::LoginRequired,
            AuthorizeError::NotOnTailnet(_)
            | AuthorizeError::NoLogin(_)
            | AuthorizeError::Revoked(_)
            | AuthorizeError::NotAllowed(_)
            | AuthorizeError::Declined => Code::AccessDenied,
            AuthorizeError::Scope(_) => Code::InvalidScope,
            AuthorizeError::Fault(fault) if fault.is_unavailable() => Code::TemporarilyUnavailable,
            AuthorizeError::Claims(_) | AuthorizeError::Fault(_) => Code::ServerError,
            AuthorizeError::ConsentRequired => Code::ConsentRequired,
            AuthorizeError::Resource(_) => Code::InvalidTarget,
        }
    }
}

impl From<Shown> for Error {
    fn from(e: Shown) -> Error {
        match e {
            Shown::BadConsent => Error::access_denied(e.to_string()),
            Shown::Fault(fault) => fault.into(),
            Shown::NoClientId
            | Shown::UnknownClient
            | Shown::NoRedirectUri
            | Shown::UnregisteredRedirectUri
            | Shown::ClientMetadata(_) => Error::invalid_request(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_rfcs() {
        assert_eq!(
            Error::invalid_client("x").status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(Error::invalid_token("x").status(), StatusCode::UNAUTHORIZED);
        assert_eq!(Error::access_denied("x").status(), StatusCode::FORBIDDEN);
        assert_eq!(
            Error::new(Code::InvalidGrant, "x").status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            Error::rate_limited(3).status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }

    #[test]
    fn an_unreachable_database_is_503_with_retry_after_and_other_store_errors_500() {
        use crate::store::StoreError;
        let cases = [
            StoreError::Unavailable("no connection within 5s".into()),
            StoreError::Backend("disk I/O error".into()),
        ];
        let [down, failed] = cases.map(|e| Error::from(Fault::Store(e)).into_response());
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(down.headers()[header::RETRY_AFTER], "5");
        assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(failed.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn every_503_says_when_to_retry() {
        use crate::identity::peer::CallerError;
        for response in [
            Error::from(CallerError::Unavailable).into_response(),
            Error::from(AgentError::IdentityUnavailable).into_response(),
            Error::from(RefreshError::IdentityUnavailable).into_response(),
        ] {
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        }
        let limited = Error::rate_limited(7).into_response();
        assert_eq!(
            limited.headers()[header::RETRY_AFTER],
            "7",
            "a 429 keeps its own"
        );
    }

    #[test]
    fn response_is_json_no_store_with_challenge() {
        let response = Error::invalid_token("token \"expired\"").into_response();
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        let challenge = response.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap();
        assert_eq!(
            challenge,
            "Bearer realm=\"tailpass\", error=\"invalid_token\", error_description=\"token 'expired'\""
        );
    }

    #[test]
    fn error_descriptions_with_quotes_backslashes_or_non_ascii_are_cleaned() {
        let e = Error::invalid_request(format!("scope {:?} \\ é\t\u{7f}", "a\"b"));
        let d = e.description().unwrap();
        assert!(
            d.chars()
                .all(|c| (' '..='~').contains(&c) && c != '"' && c != '\\'),
            "{d}"
        );
        assert_eq!(d, "scope 'a/'b' / ???");
        let kept = Error::invalid_request("plain words: fine");
        assert!(matches!(kept.description, Some(Cow::Borrowed(_))));
    }

    #[test]
    fn server_error_hides_its_cause() {
        let e = Error::server_error(&"database password is hunter2");
        assert_eq!(e.description(), None);
        assert_eq!(e.to_string(), "server_error");
    }

    #[test]
    fn rate_limit_sets_retry_after() {
        let response = Error::rate_limited(7).into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
    }
}
