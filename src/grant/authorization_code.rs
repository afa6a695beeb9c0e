//! The authorization code grant (RFC 6749 §4.1, OIDC Core §3.1) with PKCE (RFC 7636).
//!
//! `/authorize` identifies the person by the connection (no password, no click), checks the
//! client, redirect URI, scopes, PKCE, who may log in and which resources, and redirects back
//! with a single-use code valid for 60 seconds. Until the client and redirect URI are
//! validated, errors are shown to the user and never redirected (RFC 6749 §4.1.2.1); after,
//! they go back to the client with `state` and `iss` (RFC 9207). A dynamically registered
//! client first gets the user's consent, which records what was approved (scopes, resources,
//! redirect URI, client version): a request for more, or a changed client, asks again. Until
//! then its errors never name the person, and its resources are checked only after consent.
//!
//! The token endpoint redeems the code: same client, same redirect URI, the PKCE verifier; a
//! replayed code revokes everything it issued.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use tailpass_verify::UnixTime;
use tailpass_verify::dpop::Proof;
use tailpass_verify::feed::RevocationKind;
use tailpass_verify::verifier::BEARER;
use url::Url;

use super::{Scopes, TokenResponse};
use crate::audit::{AuditEvent, EventKind, Outcome as AuditOutcome};
use crate::clients::{Client, ClientOrigin, GrantType};
use crate::identity::Identity;
use crate::identity::peer::CallerError;
use crate::oauth::error::{Code, Error};
use crate::pkce::{self, Challenge};
use crate::policy::{login, tsidp};
use crate::secret::SecretHash;
use crate::secret::{Secret, random_token};
use crate::session::{Reason, Selection, Session};
use crate::state::AppState;
use crate::store::{AuthCode, Consent, Redemption, RefreshFamily};
use crate::tokens;

/// How long a code may wait to be redeemed.
pub const CODE_LIFETIME: u64 = 60;
/// How long a consent form stays valid.
const CONSENT_FORM_LIFETIME: u64 = 600;
/// The longest `nonce` accepted.
const MAX_NONCE: usize = 512;

/// The parameters of an authorization request (RFC 6749 §4.1.1, OIDC Core §3.1.2.1,
/// RFC 8707 §2). Unknown parameters are ignored; known ones may not repeat, except
/// `resource`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct AuthorizeParams {
    /// Must be `code`.
    pub response_type: Option<String>,
    /// The client.
    pub client_id: Option<String>,
    /// Where to send the result; must be registered, exactly.
    pub redirect_uri: Option<String>,
    /// Requested scopes.
    pub scope: Option<String>,
    /// Echoed back.
    pub state: Option<String>,
    /// Echoed in the ID token.
    pub nonce: Option<String>,
    /// PKCE challenge.
    pub code_challenge: Option<String>,
    /// PKCE method.
    pub code_challenge_method: Option<String>,
    /// `none`, `login`, `consent`, `select_account`.
    pub prompt: Option<String>,
    /// Maximum authentication age, seconds.
    pub max_age: Option<String>,
    /// An ID token this server issued, naming who the client expects (OIDC Core §3.1.2.1).
    pub id_token_hint: Option<String>,
    /// Only `query`.
    pub response_mode: Option<String>,
    /// Requested resources (RFC 8707).
    #[serde(default)]
    pub resource: Vec<String>,
    /// Request objects are not supported.
    pub request: Option<String>,
    /// Request objects are not supported.
    pub request_uri: Option<String>,
}

impl AuthorizeParams {
    /// The parameters as form pairs, to carry through the consent form.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        let fields: [(&'static str, &Option<String>); 12] = [
            ("response_type", &self.response_type),
            ("client_id", &self.client_id),
            ("redirect_uri", &self.redirect_uri),
            ("scope", &self.scope),
            ("state", &self.state),
            ("nonce", &self.nonce),
            ("code_challenge", &self.code_challenge),
            ("code_challenge_method", &self.code_challenge_method),
            ("prompt", &self.prompt),
            ("max_age", &self.max_age),
            ("id_token_hint", &self.id_token_hint),
            ("response_mode", &self.response_mode),
        ];
        for (name, value) in fields {
            if let Some(value) = value {
                pairs.push((name, value.clone()));
            }
        }
        for resource in &self.resource {
            pairs.push(("resource", resource.clone()));
        }
        pairs
    }

    /// A digest of the request, which the consent form's token covers.
    fn digest(&self) -> Vec<u8> {
        let canonical = serde_json::to_vec(&self.pairs()).unwrap_or_default();
        ring::digest::digest(&ring::digest::SHA256, &canonical)
            .as_ref()
            .to_vec()
    }
}

/// What `/authorize` answers.
#[derive(Debug)]
pub enum Outcome {
    /// An error for the user's eyes: the client or redirect URI could not be trusted.
    Show(Error),
    /// A redirect to the client, with a code or an error.
    Redirect(String),
    /// The consent page for a dynamically registered client.
    Consent(ConsentRequest),
}

/// What the consent page shows and carries.
#[derive(Debug, Clone)]
pub struct ConsentRequest {
    /// The client's name (as registered, by whoever registered it).
    pub client_name: String,
    /// The client id.
    pub client_id: String,
    /// Who registered the client.
    pub registered_by: Option<String>,
    /// Where the code will go.
    pub redirect_uri: String,
    /// Requested scopes.
    pub scopes: Vec<String>,
    /// Requested resources.
    pub resources: Vec<String>,
    /// The person asked.
    pub login: String,
    /// The request, to post back.
    pub params: Vec<(&'static str, String)>,
    /// Proof that this server showed this form to this person for this request.
    pub token: String,
}

/// Where errors and codes go once the client and redirect URI are trusted.
struct Target<'a> {
    uri: &'a str,
    state: Option<&'a str>,
    iss: &'a str,
}

impl Target<'_> {
    fn with(&self, pairs: &[(&str, &str)]) -> Outcome {
        let mut url = match Url::parse(self.uri) {
            Ok(url) => url,
            // Registered URIs were parsed at registration; this cannot fail for them.
            Err(_) => {
                return Outcome::Show(Error::invalid_request("the redirect URI is not a URL"));
            }
        };
        {
            let mut query = url.query_pairs_mut();
            for (name, value) in pairs {
                query.append_pair(name, value);
            }
            if let Some(state) = self.state {
                query.append_pair("state", state);
            }
            query.append_pair("iss", self.iss);
        }
        Outcome::Redirect(url.to_string())
    }

    fn error(&self, code: &str, description: &str) -> Outcome {
        let description = crate::oauth::error::description_chars(description.into());
        self.with(&[("error", code), ("error_description", &description)])
    }
}

fn show(description: &'static str) -> Outcome {
    Outcome::Show(Error::invalid_request(description))
}

async fn audit_denial(
    state: &AppState,
    identity: Option<&Identity>,
    client_id: Option<&str>,
    reason: &str,
) {
    let mut event =
        AuditEvent::new(state.now(), EventKind::Authorize, AuditOutcome::Denied).because(reason);
    if let Some(identity) = identity {
        event = event.by(identity);
    }
    if let Some(client_id) = client_id {
        event = event.client(client_id);
    }
    if let Err(e) = state.audit.record(event).await {
        tracing::error!(error = %e, "could not audit an authorization denial");
    }
}

/// Handles an authorization request from `caller`. `approved` is true when the request comes
/// back from a consent form the person approved.
pub async fn authorize(
    state: &AppState,
    caller: Result<Arc<Identity>, CallerError>,
    params: AuthorizeParams,
    approved: bool,
) -> Outcome {
    let Some(client_id) = params.client_id.as_deref() else {
        return show("client_id is required");
    };
    let client = match state.clients.get(client_id).await {
        Ok(Some(client)) => client,
        Ok(None) => {
            audit_denial(
                state,
                caller.as_deref().ok(),
                Some(client_id),
                "unknown client_id",
            )
            .await;
            return show("unknown client_id");
        }
        Err(e) => return Outcome::Show(Error::from(e)),
    };
    let Some(redirect_uri) = params.redirect_uri.as_deref() else {
        return show("redirect_uri is required");
    };
    // Exact, case-sensitive string comparison (RFC 9700 §4.1.3), but for a public client's
    // loopback port (RFC 8252 §7.3).
    if !client.allows_redirect(redirect_uri) {
        audit_denial(
            state,
            caller.as_deref().ok(),
            Some(client_id),
            "redirect_uri is not registered",
        )
        .await;
        return show("redirect_uri is not registered for this client");
    }
    let target = Target {
        uri: redirect_uri,
        state: params.state.as_deref(),
        iss: state.issuer.url(),
    };
    match check_request(state, &client, caller, &params, approved).await {
        Ok(Checked::Issue(grant)) => issue_code(state, &client, grant, &target).await,
        Ok(Checked::Consent(request)) => Outcome::Consent(*request),
        Err(denied) => {
            audit_denial(
                state,
                denied.identity.as_deref(),
                Some(client_id),
                &denied.description,
            )
            .await;
            target.error(denied.code, denied.shown.unwrap_or(&denied.description))
        }
    }
}

struct Denied {
    code: &'static str,
    /// Why, for the audit log, and for the client unless `shown` replaces it.
    description: String,
    /// What the client is told instead, when `description` names the person and the client
    /// has no approval of theirs: a dynamic client's registrant must not learn who followed
    /// their link.
    shown: Option<&'static str>,
    identity: Option<Arc<Identity>>,
}

fn denied(
    code: &'static str,
    description: impl Into<String>,
    identity: Option<&Arc<Identity>>,
) -> Denied {
    Denied {
        code,
        description: description.into(),
        shown: None,
        identity: identity.cloned(),
    }
}

impl Denied {
    /// Marks a description that names the person: a dynamically registered client, which
    /// has not been approved yet wherever this is used, is told `anonymous` instead.
    fn naming_the_user(mut self, client: &Client, anonymous: &'static str) -> Denied {
        if client.origin == ClientOrigin::Dynamic {
            self.shown = Some(anonymous);
        }
        self
    }
}

struct Grant {
    identity: Arc<Identity>,
    scopes: Scopes,
    resources: Vec<String>,
    pkce: Option<Challenge>,
    nonce: Option<String>,
}

enum Checked {
    Issue(Grant),
    Consent(Box<ConsentRequest>),
}

async fn check_request(
    state: &AppState,
    client: &Client,
    caller: Result<Arc<Identity>, CallerError>,
    params: &AuthorizeParams,
    approved: bool,
) -> Result<Checked, Denied> {
    if params.request.is_some() {
        return Err(denied(
            "request_not_supported",
            "request objects are not supported",
            None,
        ));
    }
    if params.request_uri.is_some() {
        return Err(denied(
            "request_uri_not_supported",
            "request_uri is not supported",
            None,
        ));
    }
    match params.response_type.as_deref() {
        Some("code") => {}
        Some(_) => {
            return Err(denied(
                "unsupported_response_type",
                "only response_type=code is supported",
                None,
            ));
        }
        None => return Err(denied("invalid_request", "response_type is required", None)),
    }
    if params
        .response_mode
        .as_deref()
        .is_some_and(|m| m != "query")
    {
        return Err(denied(
            "invalid_request",
            "only response_mode=query is supported",
            None,
        ));
    }
    if !client.grant_types.contains(&GrantType::AuthorizationCode) {
        return Err(denied(
            "unauthorized_client",
            "this client may not use the authorization code grant",
            None,
        ));
    }
    let prompts: Vec<&str> = params
        .prompt
        .as_deref()
        .unwrap_or_default()
        .split(' ')
        .filter(|p| !p.is_empty())
        .collect();
    let identity = match caller {
        Ok(identity) => identity,
        Err(CallerError::Unavailable) => {
            return Err(denied(
                "temporarily_unavailable",
                "the tailnet identity of the caller cannot be determined right now",
                None,
            ));
        }
        // OIDC Core §3.1.2.6: a silent request from someone who is not signed in (here: not
        // on the tailnet) is `login_required`.
        Err(e) if prompts.contains(&"none") => {
            return Err(denied("login_required", e.to_string(), None));
        }
        Err(e) => return Err(denied("access_denied", e.to_string(), None)),
    };
    let who = Some(&identity);
    // Each authorization writes a code: bounded per person and per client.
    let user_key = identity
        .user
        .as_ref()
        .map_or_else(|| identity.node.stable_id.0.clone(), |u| u.login.clone());
    for key in [
        format!("authorize-user:{user_key}"),
        format!("authorize-client:{}", client.client_id.0),
    ] {
        if super::within_rate(state, &key, state.settings.rate_limit).is_err() {
            return Err(denied(
                "temporarily_unavailable",
                "too many authorization requests; try again in a minute",
                who,
            ));
        }
    }
    if let Some(hint) = params.id_token_hint.as_deref() {
        let named = tokens::read_id_token_hint(hint, &state.keys, state.issuer.url())
            .map_err(|e| denied("invalid_request", format!("id_token_hint: {e}"), who))?;
        let caller_sub = identity.user.as_ref().map(|u| tokens::user_subject(u.id));
        // The network signs in whoever is at the keyboard; it cannot switch to the account the
        // client expected, so a hint naming someone else is `login_required`.
        if caller_sub.as_deref() != Some(named.sub.as_str()) {
            return Err(denied(
                "login_required",
                "the id_token_hint names someone other than the caller",
                who,
            ));
        }
    }
    let login =
        login::login_of(&identity).map_err(|e| denied("access_denied", e.to_string(), who))?;
    if let Some(hit) = state.revocations.blocks_issuance(&identity, state.now()) {
        return Err(denied("access_denied", hit.to_string(), who)
            .naming_the_user(client, "this account may not sign in right now"));
    }
    let scopes = Scopes::parse(params.scope.as_deref())
        .for_login()
        .map_err(|e| denied("invalid_scope", e, who))?;
    let pkce = pkce::challenge(
        params.code_challenge.as_deref(),
        params.code_challenge_method.as_deref(),
        client.is_public(),
    )
    .map_err(|e| denied("invalid_request", e.to_string(), who))?;
    if prompts.contains(&"none") && prompts.len() > 1 {
        return Err(denied(
            "invalid_request",
            "prompt=none cannot be combined with other values",
            who,
        ));
    }
    // The nonce is stored with the code and echoed in the ID token: bounded like every
    // stored field.
    if params.nonce.as_deref().is_some_and(|n| n.len() > MAX_NONCE) {
        return Err(denied(
            "invalid_request",
            format!("nonce must be at most {MAX_NONCE} bytes"),
            who,
        ));
    }
    // The network authenticates every request afresh, so any max_age is satisfied by
    // auth_time = now; it only has to be a number.
    if params
        .max_age
        .as_deref()
        .is_some_and(|m| m.parse::<u64>().is_err())
    {
        return Err(denied(
            "invalid_request",
            "max_age must be a non-negative integer",
            who,
        ));
    }
    let grants = tsidp::grants(&identity);
    let extra = login::claims(&identity, &state.settings.policy, &grants)
        .map_err(|e| denied("server_error", e.to_string(), who))?;
    login::may_log_in(client, &identity, &state.settings.policy, &extra.groups).map_err(|e| {
        denied("access_denied", e.to_string(), who)
            .naming_the_user(client, "this user may not log in to this client")
    })?;

    // A dynamic client's consent comes before the resource check, whose answer says what the
    // person is granted; what was approved covers this request or the person is asked again.
    if client.origin == ClientOrigin::Dynamic && !approved {
        let asked = asked_consent(client, &scopes, params);
        let consented = state
            .store
            .consent(&client.client_id, &consent_key(&identity))
            .await
            .map_err(|e| denied("server_error", Error::from(e).to_string(), who))?
            .is_some_and(|given| given.covers(&asked));
        if !consented || prompts.contains(&"consent") {
            if prompts.contains(&"none") {
                return Err(denied(
                    "consent_required",
                    "this client needs your consent first",
                    who,
                ));
            }
            return Ok(Checked::Consent(Box::new(ConsentRequest {
                client_name: client.client_name.clone(),
                client_id: client.client_id.0.clone(),
                registered_by: client.created_by.clone(),
                redirect_uri: params.redirect_uri.clone().unwrap_or_default(),
                scopes: scopes.0.clone(),
                resources: params.resource.clone(),
                login: login.to_owned(),
                params: params.pairs(),
                token: consent_token(state, &identity, params, client.version, state.now()),
            })));
        }
    }
    login::check_resources(&params.resource, client, &identity, &grants)
        .map_err(|e| denied("invalid_target", e.to_string(), who))?;
    Ok(Checked::Issue(Grant {
        identity,
        scopes,
        resources: params.resource.clone(),
        pkce,
        nonce: params.nonce.clone(),
    }))
}

async fn issue_code(
    state: &AppState,
    client: &Client,
    grant: Grant,
    target: &Target<'_>,
) -> Outcome {
    let now = state.now();
    let code = Secret::generate();
    let record = AuthCode {
        client_id: client.client_id.clone(),
        redirect_uri: target.uri.to_owned(),
        scope: grant.scopes.0.clone(),
        resources: grant.resources.clone(),
        nonce: grant.nonce,
        pkce: grant.pkce,
        identity: (*grant.identity).clone(),
        auth_time: now,
        sid: random_token(16),
        expires_at: now.plus(CODE_LIFETIME),
    };
    if let Err(e) = state.store.insert_code(&code.hash(), &record).await {
        tracing::error!(error = %e, "cannot store an authorization code");
        return target.error("server_error", "the code could not be issued");
    }
    let mut event = AuditEvent::new(now, EventKind::Authorize, AuditOutcome::Success)
        .by(&grant.identity)
        .client(client.client_id.0.clone());
    event.scopes = grant.scopes.0;
    event.audience = grant.resources;
    if let Err(e) = state.audit.record(event).await {
        tracing::error!(error = %e, "cannot audit an authorization");
        return target.error("server_error", "the code could not be issued");
    }
    target.with(&[("code", code.expose())])
}

/// What approving `params` for `client` consents to.
fn asked_consent(client: &Client, scopes: &Scopes, params: &AuthorizeParams) -> Consent {
    Consent {
        scopes: scopes.0.clone(),
        resources: params.resource.clone(),
        redirect_uris: params.redirect_uri.iter().cloned().collect(),
        client_version: client.version,
    }
}

/// The consent record's user key: the person, not the node.
fn consent_key(identity: &Identity) -> String {
    identity
        .user
        .as_ref()
        .map(|u| crate::tokens::user_subject(u.id))
        .unwrap_or_default()
}

/// What a consent form's token covers: the person, the request, the version of the client
/// they were shown, and the form's expiry.
fn consent_message(
    identity: &Identity,
    params: &AuthorizeParams,
    client_version: u64,
    expires: u64,
) -> Vec<u8> {
    let mut message = format!(
        "tailpass-consent-v2|{}|{client_version}|{expires}|",
        consent_key(identity)
    )
    .into_bytes();
    message.extend(params.digest());
    message
}

fn consent_token(
    state: &AppState,
    identity: &Identity,
    params: &AuthorizeParams,
    client_version: u64,
    now: UnixTime,
) -> String {
    let expires = now.plus(CONSENT_FORM_LIFETIME).0;
    let message = consent_message(identity, params, client_version, expires);
    let tag = ring::hmac::sign(&state.consent_key, &message);
    format!("{expires}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// Why a consent submission was refused (shown, never redirected: nothing is trusted yet).
fn bad_consent() -> Error {
    Error::access_denied("the consent form is invalid or has expired; start the login again")
}

/// Handles the person's answer on the consent page: on approval the consent is stored and the
/// request proceeds; on refusal the client gets `access_denied`.
pub async fn consent(
    state: &AppState,
    identity: Arc<Identity>,
    params: AuthorizeParams,
    token: &str,
    approve: bool,
) -> Outcome {
    let now = state.now();
    let client_id = params.client_id.clone().unwrap_or_default();
    let Ok(Some(client)) = state.clients.get(&client_id).await else {
        return Outcome::Show(bad_consent());
    };
    // A client changed since the form was shown fails here: the person approved what it was.
    let valid = token.split_once('.').is_some_and(|(expires, mac)| {
        let Ok(expires) = expires.parse::<u64>() else {
            return false;
        };
        let Ok(mac) = URL_SAFE_NO_PAD.decode(mac) else {
            return false;
        };
        let message = consent_message(&identity, &params, client.version, expires);
        now.0 < expires && ring::hmac::verify(&state.consent_key, &message, &mac).is_ok()
    });
    if !valid {
        return Outcome::Show(bad_consent());
    }
    let mut event = AuditEvent::new(
        now,
        EventKind::Consent,
        if approve {
            AuditOutcome::Success
        } else {
            AuditOutcome::Denied
        },
    )
    .by(&identity)
    .client(client_id.clone());
    if !approve {
        event = event.because("the user declined");
    }
    if let Err(e) = state.audit.record(event).await {
        return Outcome::Show(Error::from(e));
    }
    let Some(redirect_uri) = params
        .redirect_uri
        .as_deref()
        .filter(|r| client.allows_redirect(r))
    else {
        return Outcome::Show(bad_consent());
    };
    if !approve {
        let target = Target {
            uri: redirect_uri,
            state: params.state.as_deref(),
            iss: state.issuer.url(),
        };
        return target.error("access_denied", "the user declined");
    }
    let approved = asked_consent(&client, &Scopes::parse(params.scope.as_deref()), &params);
    if let Err(e) = state
        .store
        .insert_consent(&client.client_id, &consent_key(&identity), &approved, now)
        .await
    {
        return Outcome::Show(Error::from(e));
    }
    authorize(state, Ok(identity), params, true).await
}

/// A token request of the authorization code grant.
#[derive(Debug, Clone)]
pub struct CodeRequest<'a> {
    /// The code.
    pub code: Option<&'a str>,
    /// The redirect URI of the authorization request.
    pub redirect_uri: Option<&'a str>,
    /// The PKCE verifier.
    pub code_verifier: Option<&'a str>,
    /// The request's checked DPoP proof: it binds a public client's refresh tokens.
    pub proof: Option<Proof>,
}

fn invalid_grant(description: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(Code::InvalidGrant, description)
}

/// Redeems a code for `client`.
pub async fn redeem(
    state: &AppState,
    client: &Client,
    request: CodeRequest<'_>,
) -> Result<TokenResponse, Error> {
    if !client.grant_types.contains(&GrantType::AuthorizationCode) {
        return Err(Error::new(
            Code::UnauthorizedClient,
            "this client may not use the authorization code grant",
        ));
    }
    super::within_rate(
        state,
        &format!("code-client:{}", client.client_id.0),
        state.settings.rate_limit,
    )?;
    let presented = request
        .code
        .ok_or_else(|| Error::invalid_request("code is required"))?;
    let redirect_uri = request
        .redirect_uri
        .ok_or_else(|| Error::invalid_request("redirect_uri is required"))?;
    let now = state.now();
    let hash = Secret::from_presented(presented).hash();
    let deny = |reason: String| async move {
        let event = AuditEvent::new(now, EventKind::CodeExchanged, AuditOutcome::Denied)
            .client(client.client_id.0.clone())
            .because(reason.clone());
        state.audit.record(event).await.map(|()| reason)
    };
    let code = match state.store.redeem_code(&hash, now).await? {
        Redemption::Invalid => {
            return Err(invalid_grant(deny("invalid or expired code".into()).await?));
        }
        Redemption::Replayed(code) => {
            revoke_issued(state, &code, &hash, now).await?;
            return Err(invalid_grant(
                deny("code already used; the tokens issued from it are revoked".into()).await?,
            ));
        }
        Redemption::Redeemed(code) => code,
    };
    if code.client_id != client.client_id {
        return Err(invalid_grant(
            deny("the code was issued to another client".into()).await?,
        ));
    }
    if code.redirect_uri != redirect_uri {
        return Err(invalid_grant(
            deny("redirect_uri does not match the authorization request".into()).await?,
        ));
    }
    if let Err(e) = pkce::verify(code.pkce.as_ref(), request.code_verifier) {
        return Err(invalid_grant(deny(e.to_string()).await?));
    }
    if let Some(hit) = state.revocations.blocks_issuance(&code.identity, now) {
        return Err(invalid_grant(deny(hit.to_string()).await?));
    }
    let scopes = Scopes(code.scope.clone());
    let issued = super::issue_login(
        state,
        client,
        super::LoginGrant {
            identity: &code.identity,
            scopes: &scopes,
            resources: &code.resources,
            auth_time: code.auth_time,
            sid: &code.sid,
            nonce: code.nonce.as_deref(),
            access_jti: Some(&jti_for_code(&hash)),
        },
    )?;
    let refresh = client
        .grant_types
        .contains(&GrantType::RefreshToken)
        .then(|| {
            let family = RefreshFamily {
                id: code.sid.clone(),
                client_id: client.client_id.clone(),
                identity: code.identity.clone(),
                scope: code.scope.clone(),
                resources: code.resources.clone(),
                auth_time: code.auth_time,
                sid: code.sid.clone(),
                created_at: now,
                expires_at: now.plus(state.settings.refresh_lifetime),
                revoked_at: None,
                // RFC 9449 §5: a public client's refresh tokens are bound to the key of the
                // proof it redeemed the code with; a confidential client's, to its secret.
                jkt: request
                    .proof
                    .as_ref()
                    .filter(|_| client.is_public())
                    .map(|p| p.jkt.clone()),
            };
            (family, Secret::generate())
        });
    // The tokens are minted; they go out only if no replay was detected meanwhile. A replay
    // detected from here on revokes them (the access token by its jti, the family in the
    // store), one detected before makes this refuse: no order leaves a live family.
    let first_token = refresh
        .as_ref()
        .map(|(family, token)| (family, token.hash()));
    let completed = state
        .store
        .complete_redemption(&hash, first_token.as_ref().map(|(f, h)| (*f, h)), now)
        .await?;
    if !completed {
        return Err(invalid_grant(
            deny("code already used; the tokens issued from it are revoked".into()).await?,
        ));
    }
    let refresh_token = refresh.map(|(_, token)| token);
    let mut event = AuditEvent::new(now, EventKind::CodeExchanged, AuditOutcome::Success)
        .by(&code.identity)
        .client(client.client_id.0.clone());
    event.jti = Some(issued.claims.jti.clone());
    event.audience = issued.claims.aud.0.clone();
    event.scopes = code.scope.clone();
    state.audit.record(event).await?;
    Ok(TokenResponse {
        expires_in: issued.claims.exp.since(issued.claims.iat),
        access_token: issued.access_token,
        token_type: BEARER,
        scope: Some(scopes.joined()),
        refresh_token: refresh_token.map(|t| t.expose().to_owned()),
        id_token: issued.id_token,
        issued_token_type: None,
    })
}

/// The id of the access token a code is exchanged for, derived from the code's hash: a replay
/// then knows which token to revoke without the first exchange writing it down. Unguessable,
/// as the code is.
fn jti_for_code(hash: &SecretHash) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("tailpass-code-jti:{}", hash.to_hex()).as_bytes(),
    );
    URL_SAFE_NO_PAD.encode(digest.as_ref().get(..16).unwrap_or_default())
}

/// RFC 6749 §4.1.2: a code used twice may have been stolen; revoke what the first use issued —
/// its session (refresh family), and its access token.
async fn revoke_issued(
    state: &AppState,
    code: &AuthCode,
    hash: &SecretHash,
    now: UnixTime,
) -> Result<(), Error> {
    // The store revoked the family already, with the replay's detection; `end` indexes it
    // and tells the relying party, whose ID token named the session (OIDC Back-Channel
    // Logout 1.0 §2). A client without refresh tokens has no family, but its session is told
    // all the same.
    let session = Session {
        family: code.sid.clone(),
        sid: code.sid.clone(),
        client_id: code.client_id.clone(),
        identity: code.identity.clone(),
    };
    crate::session::end(
        state.into(),
        Selection::One(&session),
        Reason::CodeReplayed,
        now,
    )
    .await?;
    let store = state.store.as_ref();
    state
        .revocations
        .revoke(
            store,
            RevocationKind::Jti,
            &jti_for_code(hash),
            now,
            Some(code.expires_at.plus(state.settings.max_token_lifetime)),
        )
        .await?;
    let event = AuditEvent::new(now, EventKind::Revocation, AuditOutcome::Success)
        .by(&code.identity)
        .client(code.client_id.0.clone())
        .because("authorization code replayed");
    state.audit.record(event).await?;
    Ok(())
}
