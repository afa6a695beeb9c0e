//! Why a grant did not issue: one enum per grant, of typed reasons. A reason's text is the
//! `error_description` the caller gets and the audit log keeps; its label (see
//! [`Refusal`]) names it in metrics. The token endpoint maps each enum to its OAuth error
//! once, in `oauth::error`; no grant knows the wire codes.

use crate::audit::Refusal;
use crate::audit_log::AuditError;
use crate::federation::ExternalError;
use crate::keys::KeyError;
use crate::policy::agent::Denied;
use crate::policy::login::{ClaimConflict, LoginDenied, TargetDenied};
use crate::session::EndError;
use crate::store::StoreError;

/// A failure of the server's own parts while granting: the caller is told `server_error`
/// and the cause is logged, never sent.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    /// Occurs when the store cannot be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Occurs when the audit log cannot record the grant: nothing is handed out unrecorded.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// Occurs when a token cannot be signed.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// Occurs when a session cannot be ended.
    #[error(transparent)]
    Session(#[from] EndError),
}

impl Fault {
    /// Whether the failure is the database being out of reach (answered 503, and retried),
    /// rather than a fault of the server's own.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Fault::Store(StoreError::Unavailable(_))
            | Fault::Audit(AuditError::Unavailable(_))
            | Fault::Session(EndError::Store(StoreError::Unavailable(_)))
            | Fault::Session(EndError::Audit(AuditError::Unavailable(_))) => true,
            Fault::Store(_) | Fault::Audit(_) | Fault::Keys(_) | Fault::Session(_) => false,
        }
    }
}

/// Why a person may not have a token now: the login policy, as the client and the person's
/// grants stand at issuance.
#[derive(Debug, thiserror::Error)]
pub enum LoginRefused {
    /// Occurs when the person's grants give conflicting or forbidden claims.
    #[error(transparent)]
    Claims(#[from] ClaimConflict),
    /// Occurs when the person may not log in to this client.
    #[error(transparent)]
    NotAllowed(#[from] LoginDenied),
    /// Occurs when a resource is not the client's or the person's to have.
    #[error(transparent)]
    Resource(#[from] TargetDenied),
    /// Occurs when an agent rule decides the resources and refuses them together.
    #[error(transparent)]
    Policy(#[from] Denied),
}

/// Why the agent grant, or `client_credentials` with a secret, refused.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Occurs when the connection has no tailnet identity.
    #[error("the caller is not on the tailnet")]
    NotOnTailnet,
    /// Occurs when the identity source cannot answer now.
    #[error("the tailnet identity of the caller cannot be determined right now")]
    IdentityUnavailable,
    /// Occurs when the caller's budget is spent; carries the seconds to wait.
    #[error("rate limit exceeded")]
    RateLimited(u64),
    /// Occurs when policy refuses.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// Occurs when the caller's run, node or user is revoked.
    #[error("{0}")]
    Revoked(String),
    /// Occurs when a confidential client is not registered for `client_credentials`.
    #[error("this client may not use client_credentials")]
    GrantNotAllowed,
    /// Occurs when a confidential client names no audience and has no single one.
    #[error("name an audience (resource)")]
    NoAudience,
    /// Occurs when a confidential client asks for a resource it is not registered for.
    #[error("client {client} is not registered for resource {resource}")]
    Resource {
        /// The client.
        client: String,
        /// The resource.
        resource: String,
    },
    /// Occurs when a confidential client asks for scopes.
    #[error("client credentials carry no scopes")]
    Scopes,
    /// Occurs when the server's own parts fail.
    #[error(transparent)]
    Fault(#[from] Fault),
}

/// Why token exchange (RFC 8693) refused.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Occurs when the connection has no tailnet identity.
    #[error("the caller is not on the tailnet")]
    NotOnTailnet,
    /// Occurs when the identity source cannot answer now.
    #[error("the tailnet identity of the caller cannot be determined right now")]
    IdentityUnavailable,
    /// Occurs when the subject token is not one the caller may exchange.
    #[error("subject_token: {0}")]
    Subject(String),
    /// Occurs when the actor token is not one the caller may present.
    #[error("actor_token: {0}")]
    Actor(String),
    /// Occurs when the child would have an audience its parent lacks.
    #[error("widening refused: audience {0} is not in the parent token")]
    WiderAudience(String),
    /// Occurs when the child would have a scope its parent lacks.
    #[error("widening refused: scope {0} is not in the parent token")]
    WiderScope(String),
    /// Occurs when the caller's own rules refuse the child.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// Occurs when the caller's run, node or user is revoked.
    #[error("{0}")]
    Revoked(String),
    /// Occurs when the parent token has no time left.
    #[error("the parent token has expired")]
    ParentExpired,
    /// Occurs when the requester asks for a tailnet peer's token and the rule deciding its
    /// own access to the audience does not set `act_for_peers` (or no rule does).
    #[error("{0}")]
    ActForPeers(String),
    /// Occurs when the tailnet-peer subject's address belongs to no node of the tailnet, as
    /// this issuer's identity source sees it.
    #[error("subject_token: {0} is not on the tailnet")]
    PeerNotOnTailnet(std::net::IpAddr),
    /// Occurs when the tailnet peer's own rules refuse the token it would get.
    #[error("{0}")]
    Peer(Denied),
    /// Occurs when the tailnet peer's budget of token requests is spent; carries the seconds
    /// to wait.
    #[error("rate limit exceeded")]
    RateLimited(u64),
    /// Occurs when the server's own parts fail.
    #[error(transparent)]
    Fault(#[from] Fault),
}

/// Why a federation grant (an external token traded for a run token) refused.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// Occurs when the policy file has no `[[federation]]` table: the grant is not served.
    #[error("no [[federation]] table is configured: external tokens are not accepted")]
    NotConfigured,
    /// Occurs when the identity source cannot answer now.
    #[error("the tailnet identity of the caller cannot be determined right now")]
    IdentityUnavailable,
    /// Occurs when the caller's budget is spent; carries the seconds to wait.
    #[error("rate limit exceeded")]
    RateLimited(u64),
    /// Occurs when the external token does not verify or matches no table.
    #[error("external token: {0}")]
    External(ExternalError),
    /// Occurs when a caller with no tailnet identity sends no DPoP proof: its run token
    /// could not be bound to anything.
    #[error("a caller off the tailnet must send a DPoP proof: its run token is bound to that key")]
    DpopRequired,
    /// Occurs when policy refuses.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// Occurs when the caller's node or user is revoked, or its external token's claims.
    #[error("{0}")]
    Revoked(String),
    /// Occurs when a single-use external token is presented again.
    #[error("external token: already used")]
    Replayed,
    /// Occurs when the server's own parts fail.
    #[error(transparent)]
    Fault(#[from] Fault),
}

/// Why a refresh (RFC 6749 §6) refused.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// Occurs when the client is not registered for refresh tokens.
    #[error("this client may not use refresh tokens")]
    GrantNotAllowed,
    /// Occurs when the token is not one of this client's.
    #[error("invalid refresh token")]
    Unknown,
    /// Occurs when the token's family was revoked or has expired.
    #[error("the refresh token was revoked or has expired")]
    Inactive,
    /// Occurs when a bound family's token comes without a proof by its key (RFC 9449 §5).
    #[error("the refresh token is bound to a DPoP key; a proof by that key is required")]
    KeyRequired,
    /// Occurs when more scopes are asked than the family has.
    #[error("a refresh may narrow the scopes, never widen them")]
    WiderScope,
    /// Occurs when more resources are asked than the family has.
    #[error("a refresh may narrow the resources, never widen them")]
    WiderResources,
    /// Occurs when the session's run, node or user is revoked.
    #[error("{0}")]
    Revoked(String),
    /// Occurs when the identity source cannot say who the session's node is now.
    #[error("the tailnet identity of the session's node cannot be determined right now")]
    IdentityUnavailable,
    /// Occurs when the session's node or user has left the tailnet: the session ends.
    #[error("the session's node or user is no longer on the tailnet")]
    Gone,
    /// Occurs when policy no longer allows the session: the session ends.
    #[error(transparent)]
    Login(#[from] LoginRefused),
    /// Occurs when a spent token is presented again: the session ends (RFC 9700 §4.14.2).
    #[error("refresh token reused: the whole session is revoked")]
    Reused,
    /// Occurs when the server's own parts fail.
    #[error(transparent)]
    Fault(#[from] Fault),
}

/// Why redeeming an authorization code refused.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    /// Occurs when the client is not registered for the authorization code grant.
    #[error("this client may not use the authorization code grant")]
    GrantNotAllowed,
    /// Occurs when the client's budget is spent; carries the seconds to wait.
    #[error("rate limit exceeded")]
    RateLimited(u64),
    /// Occurs when the code is unknown or expired.
    #[error("invalid or expired code")]
    Invalid,
    /// Occurs when the code was redeemed before: what it issued is revoked (RFC 6749 §4.1.2).
    #[error("code already used; the tokens issued from it are revoked")]
    Replayed,
    /// Occurs when another client presents the code.
    #[error("the code was issued to another client")]
    OtherClient,
    /// Occurs when the redirect URI differs from the authorization request's.
    #[error("redirect_uri does not match the authorization request")]
    RedirectUri,
    /// Occurs when the PKCE verifier does not match (RFC 7636 §4.6).
    #[error(transparent)]
    Pkce(#[from] crate::pkce::PkceError),
    /// Occurs when a `resource` was not one the authorization request named (RFC 8707 §2.2).
    #[error("resource {0:?} was not part of the authorization request")]
    Target(String),
    /// Occurs when the person's run, node or user is revoked.
    #[error("{0}")]
    Revoked(String),
    /// Occurs when policy no longer allows the login.
    #[error(transparent)]
    Login(#[from] LoginRefused),
    /// Occurs when the server's own parts fail.
    #[error(transparent)]
    Fault(#[from] Fault),
}

macro_rules! faults_into {
    ($($grant:ident),*) => {$(
        impl From<StoreError> for $grant {
            fn from(e: StoreError) -> $grant {
                $grant::Fault(Fault::Store(e))
            }
        }
        impl From<AuditError> for $grant {
            fn from(e: AuditError) -> $grant {
                $grant::Fault(Fault::Audit(e))
            }
        }
        impl From<KeyError> for $grant {
            fn from(e: KeyError) -> $grant {
                $grant::Fault(Fault::Keys(e))
            }
        }
        impl From<EndError> for $grant {
            fn from(e: EndError) -> $grant {
                $grant::Fault(Fault::Session(e))
            }
        }
    )*};
}

faults_into!(
    AgentError,
    ExchangeError,
    FederationError,
    RefreshError,
    RedeemError
);

/// What issuing a person's tokens may fail with: policy, or the server's parts.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// Occurs when policy no longer allows the login.
    #[error(transparent)]
    Login(#[from] LoginRefused),
    /// Occurs when a token cannot be signed.
    #[error(transparent)]
    Keys(#[from] KeyError),
}

impl From<IssueError> for RefreshError {
    fn from(e: IssueError) -> RefreshError {
        match e {
            IssueError::Login(e) => RefreshError::Login(e),
            IssueError::Keys(e) => e.into(),
        }
    }
}

impl From<IssueError> for RedeemError {
    fn from(e: IssueError) -> RedeemError {
        match e {
            IssueError::Login(e) => RedeemError::Login(e),
            IssueError::Keys(e) => e.into(),
        }
    }
}

impl Refusal for Denied {
    fn label(&self) -> &'static str {
        Denied::label(self)
    }
}

impl Refusal for LoginRefused {
    fn label(&self) -> &'static str {
        match self {
            LoginRefused::Claims(_) => "claims",
            LoginRefused::NotAllowed(_) => "login_not_allowed",
            LoginRefused::Resource(_) => "resource",
            LoginRefused::Policy(denied) => denied.label(),
        }
    }
}

impl Refusal for AgentError {
    fn label(&self) -> &'static str {
        match self {
            AgentError::NotOnTailnet => "not_on_tailnet",
            AgentError::IdentityUnavailable => "identity_unavailable",
            AgentError::RateLimited(_) => "rate_limited",
            AgentError::Denied(denied) => denied.label(),
            AgentError::Revoked(_) => "revoked",
            AgentError::GrantNotAllowed => "grant_not_allowed",
            AgentError::NoAudience => "no_audience",
            AgentError::Resource { .. } => "resource",
            AgentError::Scopes => "scope",
            AgentError::Fault(_) => "server_error",
        }
    }
}

impl Refusal for ExchangeError {
    fn label(&self) -> &'static str {
        match self {
            ExchangeError::NotOnTailnet => "not_on_tailnet",
            ExchangeError::IdentityUnavailable => "identity_unavailable",
            ExchangeError::Subject(_) => "subject_token",
            ExchangeError::Actor(_) => "actor_token",
            ExchangeError::WiderAudience(_) => "wider_audience",
            ExchangeError::WiderScope(_) => "wider_scope",
            ExchangeError::Denied(denied) => denied.label(),
            ExchangeError::Revoked(_) => "revoked",
            ExchangeError::ParentExpired => "parent_expired",
            ExchangeError::ActForPeers(_) => "act_for_peers",
            ExchangeError::PeerNotOnTailnet(_) => "peer_not_on_tailnet",
            ExchangeError::Peer(Denied::NoRule(_)) => "peer_no_rule",
            ExchangeError::Peer(denied) => denied.label(),
            ExchangeError::RateLimited(_) => "rate_limited",
            ExchangeError::Fault(_) => "server_error",
        }
    }
}

impl Refusal for FederationError {
    fn label(&self) -> &'static str {
        match self {
            FederationError::NotConfigured => "not_configured",
            FederationError::IdentityUnavailable => "identity_unavailable",
            FederationError::RateLimited(_) => "rate_limited",
            FederationError::External(e) => e.label(),
            FederationError::DpopRequired => "dpop_required",
            FederationError::Denied(denied) => denied.label(),
            FederationError::Revoked(_) => "revoked",
            FederationError::Replayed => "replayed",
            FederationError::Fault(_) => "server_error",
        }
    }
}

impl Refusal for RefreshError {
    fn label(&self) -> &'static str {
        match self {
            RefreshError::GrantNotAllowed => "grant_not_allowed",
            RefreshError::Unknown => "unknown_token",
            RefreshError::Inactive => "inactive_family",
            RefreshError::KeyRequired => "dpop_key_required",
            RefreshError::WiderScope => "wider_scope",
            RefreshError::WiderResources => "wider_resources",
            RefreshError::Revoked(_) => "revoked",
            RefreshError::IdentityUnavailable => "identity_unavailable",
            RefreshError::Gone => "gone",
            RefreshError::Login(refused) => refused.label(),
            RefreshError::Reused => "reused",
            RefreshError::Fault(_) => "server_error",
        }
    }
}

impl Refusal for RedeemError {
    fn label(&self) -> &'static str {
        match self {
            RedeemError::GrantNotAllowed => "grant_not_allowed",
            RedeemError::RateLimited(_) => "rate_limited",
            RedeemError::Invalid => "invalid_code",
            RedeemError::Replayed => "replayed",
            RedeemError::OtherClient => "other_client",
            RedeemError::RedirectUri => "redirect_uri",
            RedeemError::Pkce(_) => "pkce",
            RedeemError::Target(_) => "resource",
            RedeemError::Revoked(_) => "revoked",
            RedeemError::Login(refused) => refused.label(),
            RedeemError::Fault(_) => "server_error",
        }
    }
}

/// Why `/authorize` refused a request whose client and redirect URI are trusted: the refusal
/// goes back to the client (RFC 6749 §4.1.2.1, OIDC Core §3.1.2.6).
#[derive(Debug, thiserror::Error)]
pub enum AuthorizeError {
    /// Occurs when a request object is sent (OIDC Core §6).
    #[error("request objects are not supported")]
    RequestObject,
    /// Occurs when a request object is sent by reference.
    #[error("request_uri is not supported")]
    RequestUri,
    /// Occurs when the response type is not `code`.
    #[error("only response_type=code is supported")]
    ResponseType,
    /// Occurs when no response type is named.
    #[error("response_type is required")]
    NoResponseType,
    /// Occurs when a response mode other than `query` is asked.
    #[error("only response_mode=query is supported")]
    ResponseMode,
    /// Occurs when the client is not registered for the authorization code grant.
    #[error("this client may not use the authorization code grant")]
    GrantNotAllowed,
    /// Occurs when the identity source cannot answer now.
    #[error("the tailnet identity of the caller cannot be determined right now")]
    IdentityUnavailable,
    /// Occurs when a silent request (`prompt=none`) comes from off the tailnet.
    #[error("{0}")]
    LoginRequired(String),
    /// Occurs when the request comes from off the tailnet.
    #[error("{0}")]
    NotOnTailnet(String),
    /// Occurs when the person's or the client's budget of authorizations is spent.
    #[error("too many authorization requests; try again in a minute")]
    RateLimited,
    /// Occurs when `id_token_hint` is not an ID token of this server.
    #[error("id_token_hint: {0}")]
    IdTokenHint(String),
    /// Occurs when `id_token_hint` names someone other than the caller.
    #[error("the id_token_hint names someone other than the caller")]
    OtherAccount,
    /// Occurs when the caller is a tagged node, which has no login.
    #[error(transparent)]
    NoLogin(LoginDenied),
    /// Occurs when the person's node or user is revoked.
    #[error("{0}")]
    Revoked(String),
    /// Occurs when a scope is not one a person may ask for.
    #[error("{0}")]
    Scope(String),
    /// Occurs when the PKCE challenge is missing or malformed (RFC 7636 §4.4.1).
    #[error(transparent)]
    Pkce(#[from] crate::pkce::PkceError),
    /// Occurs when `prompt=none` is combined with other values.
    #[error("prompt=none cannot be combined with other values")]
    PromptNone,
    /// Occurs when the nonce is longer than is stored.
    #[error("nonce must be at most {max} bytes", max = super::authorize::MAX_NONCE)]
    Nonce,
    /// Occurs when `max_age` is not a number.
    #[error("max_age must be a non-negative integer")]
    MaxAge,
    /// Occurs when the person's grants give conflicting claims (a fault of the grants).
    #[error(transparent)]
    Claims(ClaimConflict),
    /// Occurs when the person may not log in to this client.
    #[error(transparent)]
    NotAllowed(LoginDenied),
    /// Occurs when a silent request needs the person's consent first.
    #[error("this client needs your consent first")]
    ConsentRequired,
    /// Occurs when a resource is not the client's or the person's to have.
    #[error(transparent)]
    Resource(TargetDenied),
    /// Occurs when the person declines on the consent page.
    #[error("the user declined")]
    Declined,
    /// Occurs when the code cannot be stored or its issuance recorded (the cause is logged).
    #[error("the code could not be issued")]
    Fault(Fault),
}

/// Why `/authorize` or the consent form refused without redirecting: nothing about the client
/// or redirect URI can be trusted yet, so the person is shown the refusal.
#[derive(Debug, thiserror::Error)]
pub enum Shown {
    /// Occurs when no client is named.
    #[error("client_id is required")]
    NoClientId,
    /// Occurs when the client is not registered.
    #[error("unknown client_id")]
    UnknownClient,
    /// Occurs when no redirect URI is named.
    #[error("redirect_uri is required")]
    NoRedirectUri,
    /// Occurs when the redirect URI is not one the client registered.
    #[error("redirect_uri is not registered for this client")]
    UnregisteredRedirectUri,
    /// Occurs when a consent form is not one this process served, or has expired.
    #[error("the consent form is invalid or has expired; start the login again")]
    BadConsent,
    /// Occurs when the client id is a metadata document's URL that could not be used.
    #[error(transparent)]
    ClientMetadata(crate::client_metadata::DocumentError),
    /// Occurs when the server's own parts fail (the cause is logged, never shown).
    #[error(transparent)]
    Fault(#[from] Fault),
}

impl Refusal for AuthorizeError {
    fn label(&self) -> &'static str {
        match self {
            AuthorizeError::RequestObject => "request_object",
            AuthorizeError::RequestUri => "request_uri",
            AuthorizeError::ResponseType | AuthorizeError::NoResponseType => "response_type",
            AuthorizeError::ResponseMode => "response_mode",
            AuthorizeError::GrantNotAllowed => "grant_not_allowed",
            AuthorizeError::IdentityUnavailable => "identity_unavailable",
            AuthorizeError::LoginRequired(_) | AuthorizeError::NotOnTailnet(_) => "not_on_tailnet",
            AuthorizeError::RateLimited => "rate_limited",
            AuthorizeError::IdTokenHint(_) => "id_token_hint",
            AuthorizeError::OtherAccount => "other_account",
            AuthorizeError::NoLogin(_) => "no_login",
            AuthorizeError::Revoked(_) => "revoked",
            AuthorizeError::Scope(_) => "scope",
            AuthorizeError::Pkce(_) => "pkce",
            AuthorizeError::PromptNone => "prompt",
            AuthorizeError::Nonce => "nonce",
            AuthorizeError::MaxAge => "max_age",
            AuthorizeError::Claims(_) => "claims",
            AuthorizeError::NotAllowed(_) => "login_not_allowed",
            AuthorizeError::ConsentRequired => "consent_required",
            AuthorizeError::Resource(_) => "resource",
            AuthorizeError::Declined => "declined",
            AuthorizeError::Fault(_) => "server_error",
        }
    }
}

impl Refusal for Shown {
    fn label(&self) -> &'static str {
        match self {
            Shown::NoClientId => "no_client_id",
            Shown::UnknownClient => "unknown_client",
            Shown::NoRedirectUri => "no_redirect_uri",
            Shown::UnregisteredRedirectUri => "redirect_uri",
            Shown::BadConsent => "bad_consent",
            Shown::ClientMetadata(_) => "client_metadata",
            Shown::Fault(_) => "server_error",
        }
    }
}
