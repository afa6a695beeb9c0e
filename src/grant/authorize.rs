//! `/authorize` and its consent (RFC 6749 §4.1.1, OIDC Core §3.1.2).
//!
//! The person is identified by the connection (no password, no click). The request is
//! checked — client, redirect URI, scopes, PKCE, who may log in and which resources — and
//! answered with a single-use code valid for [`CODE_LIFETIME`] seconds. Until the client and
//! redirect URI are validated, refusals are shown to the user and never redirected (RFC 6749
//! §4.1.2.1), a metadata document that cannot be used (`client_metadata`) among them; after,
//! they go back to the client. A dynamically registered client, or one identified by its
//! metadata document, first gets the person's consent, which records what was approved
//! (scopes, resources, redirect URI, client version): a request for more, or a changed
//! client, asks again. Until then its refusals never name the person, and its resources are
//! checked only after consent.
//!
//! What is answered is an [`Outcome`]; the endpoint turns it into a redirect (with `state`
//! and `iss`, RFC 9207), a page or an error.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use tailpass_verify::UnixTime;

use super::error::{AuthorizeError, Fault, Shown};
use super::{Context, Scopes};
use crate::audit::{AuditEvent, EventKind, Outcome as AuditOutcome};
use crate::client_registry::LookupError;
use crate::clients::{Client, GrantType};
use crate::identity::Identity;
use crate::identity::peer::CallerError;
use crate::pkce::{self, Challenge};
use crate::policy::{login, tsidp};
use crate::secret::Secret;
use crate::store::{AuthCode, Consent};
use crate::tokens;

/// How long a code may wait to be redeemed, seconds.
pub const CODE_LIFETIME: u64 = 60;
/// How long a consent form stays valid, seconds.
const CONSENT_FORM_LIFETIME: u64 = 600;
/// The longest `nonce` accepted, bytes.
pub const MAX_NONCE: usize = 512;

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
    /// A refusal for the user's eyes: the client or redirect URI could not be trusted, or a
    /// consent form was not this server's.
    Show(Shown),
    /// Back to the client with a code.
    Code {
        /// Where to.
        redirect: Redirect,
        /// The code.
        code: Secret,
    },
    /// Back to the client with a refusal.
    Refused {
        /// Where to.
        redirect: Redirect,
        /// Why.
        refusal: AuthorizeError,
        /// What the client is told instead of the refusal's text, when that names the person
        /// and the client has no approval of theirs: a dynamic client's registrant must not
        /// learn who followed their link.
        shown: Option<&'static str>,
    },
    /// The consent page for a dynamically registered client.
    Consent(ConsentRequest),
}

/// Where an answer goes once the client and redirect URI are trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// The registered redirect URI the request named.
    pub uri: String,
    /// The request's `state`, echoed back.
    pub state: Option<String>,
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
    /// The host serving the client's metadata document, for a client identified by one.
    pub document_host: Option<String>,
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

async fn audit_denial(
    ctx: &Context<'_>,
    identity: Option<&Identity>,
    client_id: Option<&str>,
    refusal: &(dyn crate::audit::Refusal + Sync),
) {
    let mut event =
        AuditEvent::new(ctx.now(), EventKind::Authorize, AuditOutcome::Denied).refused(refusal);
    if let Some(identity) = identity {
        event = event.by(identity);
    }
    if let Some(client_id) = client_id {
        event = event.client(client_id);
    }
    if let Err(e) = ctx.audit.record(event).await {
        tracing::error!(error = %e, "could not audit an authorization denial");
    }
}

/// Handles an authorization request from `caller`. `approved` is true when the request comes
/// back from a consent form the person approved.
pub async fn authorize(
    ctx: &Context<'_>,
    caller: Result<Arc<Identity>, CallerError>,
    params: AuthorizeParams,
    approved: bool,
) -> Outcome {
    let Some(client_id) = params.client_id.as_deref() else {
        return Outcome::Show(Shown::NoClientId);
    };
    let client = match ctx.clients.lookup(client_id).await {
        Ok(Some(client)) => client,
        Ok(None) => {
            let shown = Shown::UnknownClient;
            audit_denial(ctx, caller.as_deref().ok(), Some(client_id), &shown).await;
            return Outcome::Show(shown);
        }
        Err(LookupError::Document(e)) => {
            let shown = Shown::ClientMetadata(e);
            audit_denial(ctx, caller.as_deref().ok(), Some(client_id), &shown).await;
            return Outcome::Show(shown);
        }
        Err(LookupError::Store(e)) => return Outcome::Show(Shown::Fault(Fault::Store(e))),
    };
    let Some(redirect_uri) = params.redirect_uri.as_deref() else {
        return Outcome::Show(Shown::NoRedirectUri);
    };
    // Exact, case-sensitive string comparison (RFC 9700 §4.1.3), but for a public client's
    // loopback port (RFC 8252 §7.3).
    if !client.allows_redirect(redirect_uri) {
        let shown = Shown::UnregisteredRedirectUri;
        audit_denial(ctx, caller.as_deref().ok(), Some(client_id), &shown).await;
        return Outcome::Show(shown);
    }
    let redirect = Redirect {
        uri: redirect_uri.to_owned(),
        state: params.state.clone(),
    };
    match check_request(ctx, &client, caller, &params, approved).await {
        Ok(Checked::Issue(grant)) => issue_code(ctx, &client, grant, redirect).await,
        Ok(Checked::Consent(request)) => Outcome::Consent(*request),
        Err(denied) => {
            audit_denial(
                ctx,
                denied.identity.as_deref(),
                Some(client_id),
                &denied.refusal,
            )
            .await;
            Outcome::Refused {
                redirect,
                refusal: denied.refusal,
                shown: denied.shown,
            }
        }
    }
}

struct Denied {
    refusal: AuthorizeError,
    /// What the client is told instead, when the refusal names the person (see
    /// [`Outcome::Refused`]).
    shown: Option<&'static str>,
    identity: Option<Arc<Identity>>,
}

fn denied(refusal: AuthorizeError, identity: Option<&Arc<Identity>>) -> Denied {
    Denied {
        refusal,
        shown: None,
        identity: identity.cloned(),
    }
}

impl Denied {
    /// Marks a refusal that names the person: a dynamically registered client, which has
    /// not been approved yet wherever this is used, is told `anonymous` instead.
    fn naming_the_user(mut self, client: &Client, anonymous: &'static str) -> Denied {
        if client.needs_consent() {
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
    ctx: &Context<'_>,
    client: &Client,
    caller: Result<Arc<Identity>, CallerError>,
    params: &AuthorizeParams,
    approved: bool,
) -> Result<Checked, Denied> {
    use AuthorizeError as E;
    if params.request.is_some() {
        return Err(denied(E::RequestObject, None));
    }
    if params.request_uri.is_some() {
        return Err(denied(E::RequestUri, None));
    }
    match params.response_type.as_deref() {
        Some("code") => {}
        Some(_) => return Err(denied(E::ResponseType, None)),
        None => return Err(denied(E::NoResponseType, None)),
    }
    if params
        .response_mode
        .as_deref()
        .is_some_and(|m| m != "query")
    {
        return Err(denied(E::ResponseMode, None));
    }
    if !client.grant_types.contains(&GrantType::AuthorizationCode) {
        return Err(denied(E::GrantNotAllowed, None));
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
        Err(CallerError::Unavailable) => return Err(denied(E::IdentityUnavailable, None)),
        // OIDC Core §3.1.2.6: a silent request from someone who is not signed in (here: not
        // on the tailnet) is `login_required`.
        Err(e) if prompts.contains(&"none") => {
            return Err(denied(E::LoginRequired(e.to_string()), None));
        }
        Err(e) => return Err(denied(E::NotOnTailnet(e.to_string()), None)),
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
        if ctx.within_rate(&key, ctx.rate.per_minute).is_err() {
            return Err(denied(E::RateLimited, who));
        }
    }
    if let Some(hint) = params.id_token_hint.as_deref() {
        let named = tokens::read_id_token_hint(hint, ctx.keys, ctx.issuer.url())
            .map_err(|e| denied(E::IdTokenHint(e.to_string()), who))?;
        let caller_sub = identity.user.as_ref().map(|u| tokens::user_subject(u.id));
        // The network signs in whoever is at the keyboard; it cannot switch to the account the
        // client expected, so a hint naming someone else is `login_required`.
        if caller_sub.as_deref() != Some(named.sub.as_str()) {
            return Err(denied(E::OtherAccount, who));
        }
    }
    let login = login::login_of(&identity).map_err(|e| denied(E::NoLogin(e), who))?;
    if let Some(hit) = ctx.revocations.blocks_issuance(&identity, ctx.now()) {
        return Err(denied(E::Revoked(hit.to_string()), who)
            .naming_the_user(client, "this account may not sign in right now"));
    }
    let scopes = Scopes::parse(params.scope.as_deref())
        .for_login()
        .map_err(|e| denied(E::Scope(e), who))?;
    let pkce = pkce::challenge(
        params.code_challenge.as_deref(),
        params.code_challenge_method.as_deref(),
        client.is_public(),
    )
    .map_err(|e| denied(E::Pkce(e), who))?;
    if prompts.contains(&"none") && prompts.len() > 1 {
        return Err(denied(E::PromptNone, who));
    }
    // The nonce is stored with the code and echoed in the ID token: bounded like every
    // stored field.
    if params.nonce.as_deref().is_some_and(|n| n.len() > MAX_NONCE) {
        return Err(denied(E::Nonce, who));
    }
    // The network authenticates every request afresh, so any max_age is satisfied by
    // auth_time = now; it only has to be a number.
    if params
        .max_age
        .as_deref()
        .is_some_and(|m| m.parse::<u64>().is_err())
    {
        return Err(denied(E::MaxAge, who));
    }
    let grants = tsidp::grants(&identity);
    let extra = login::claims(&identity, ctx.policy.file, &grants)
        .map_err(|e| denied(E::Claims(e), who))?;
    login::may_log_in(client, &identity, ctx.policy.file, &extra.groups).map_err(|e| {
        denied(E::NotAllowed(e), who)
            .naming_the_user(client, "this user may not log in to this client")
    })?;

    // A dynamic client's consent comes before the resource check, whose answer says what the
    // person is granted; what was approved covers this request or the person is asked again.
    if client.needs_consent() && !approved {
        let asked = asked_consent(client, &scopes, params);
        let consented = ctx
            .store
            .consent(&client.client_id, &consent_key(&identity))
            .await
            .map_err(|e| denied(E::Fault(Fault::Store(e)), who))?
            .is_some_and(|given| given.covers(&asked));
        if !consented || prompts.contains(&"consent") {
            if prompts.contains(&"none") {
                return Err(denied(E::ConsentRequired, who));
            }
            return Ok(Checked::Consent(Box::new(ConsentRequest {
                client_name: client.client_name.clone(),
                client_id: client.client_id.0.clone(),
                registered_by: client.created_by.clone(),
                document_host: client.document_host(),
                redirect_uri: params.redirect_uri.clone().unwrap_or_default(),
                scopes: scopes.0.clone(),
                resources: params.resource.clone(),
                login: login.to_owned(),
                params: params.pairs(),
                token: consent_token(ctx, &identity, params, client.version, ctx.now()),
            })));
        }
    }
    login::check_resources(&params.resource, client, &identity, &grants)
        .map_err(|e| denied(E::Resource(e), who))?;
    Ok(Checked::Issue(Grant {
        identity,
        scopes,
        resources: params.resource.clone(),
        pkce,
        nonce: params.nonce.clone(),
    }))
}

async fn issue_code(
    ctx: &Context<'_>,
    client: &Client,
    grant: Grant,
    redirect: Redirect,
) -> Outcome {
    let now = ctx.now();
    let code = Secret::generate_ordered();
    let record = AuthCode {
        client_id: client.client_id.clone(),
        redirect_uri: redirect.uri.clone(),
        scope: grant.scopes.0.clone(),
        resources: grant.resources.clone(),
        nonce: grant.nonce,
        pkce: grant.pkce,
        identity: (*grant.identity).clone(),
        auth_time: now,
        sid: crate::session::new_sid(),
        expires_at: now.plus(CODE_LIFETIME),
    };
    let fault = |fault: Fault, redirect: Redirect| {
        tracing::error!(error = %fault, "cannot issue an authorization code");
        Outcome::Refused {
            redirect,
            refusal: AuthorizeError::Fault(fault),
            shown: None,
        }
    };
    let mut event = AuditEvent::new(now, EventKind::Authorize, AuditOutcome::Success)
        .by(&grant.identity)
        .client(client.client_id.0.clone());
    event.scopes = grant.scopes.0;
    event.audience = grant.resources;
    // The code and its event are written side by side (one commit's wait, not two); the code
    // is handed out only when both are durable. A refusal may leave the event of a code never
    // handed out, never a code without its event.
    let code_hash = code.ordered_hash();
    let (stored, audited) = tokio::join!(
        ctx.store.insert_code(&code_hash, &record),
        ctx.audit.record(event)
    );
    if let Err(e) = stored {
        return fault(e.into(), redirect);
    }
    if let Err(e) = audited {
        return fault(e.into(), redirect);
    }
    Outcome::Code { redirect, code }
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
        .map(|u| tokens::user_subject(u.id))
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
    ctx: &Context<'_>,
    identity: &Identity,
    params: &AuthorizeParams,
    client_version: u64,
    now: UnixTime,
) -> String {
    let expires = now.plus(CONSENT_FORM_LIFETIME).0;
    let message = consent_message(identity, params, client_version, expires);
    let tag = ring::hmac::sign(ctx.consent_key, &message);
    format!("{expires}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// Whether `token` is a consent form this process served for this person, request and client
/// version, and not yet expired.
fn consent_valid(
    ctx: &Context<'_>,
    identity: &Identity,
    params: &AuthorizeParams,
    client: &Client,
    token: &str,
) -> bool {
    token.split_once('.').is_some_and(|(expires, mac)| {
        let Ok(expires) = expires.parse::<u64>() else {
            return false;
        };
        let Ok(mac) = URL_SAFE_NO_PAD.decode(mac) else {
            return false;
        };
        let message = consent_message(identity, params, client.version, expires);
        ctx.now().0 < expires && ring::hmac::verify(ctx.consent_key, &message, &mac).is_ok()
    })
}

/// Handles the person's answer on the consent page: on approval the consent is stored and the
/// request proceeds; on refusal the client gets `access_denied`.
pub async fn consent(
    ctx: &Context<'_>,
    identity: Arc<Identity>,
    params: AuthorizeParams,
    token: &str,
    approve: bool,
) -> Outcome {
    let now = ctx.now();
    let client_id = params.client_id.clone().unwrap_or_default();
    let Ok(Some(client)) = ctx.clients.get(&client_id).await else {
        return Outcome::Show(Shown::BadConsent);
    };
    // A client changed since the form was shown fails here: the person approved what it was.
    if !consent_valid(ctx, &identity, &params, &client, token) {
        return Outcome::Show(Shown::BadConsent);
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
        event = event.refused(&AuthorizeError::Declined);
    }
    if let Err(e) = ctx.audit.record(event).await {
        return Outcome::Show(Shown::Fault(e.into()));
    }
    let Some(redirect_uri) = params
        .redirect_uri
        .as_deref()
        .filter(|r| client.allows_redirect(r))
    else {
        return Outcome::Show(Shown::BadConsent);
    };
    if !approve {
        return Outcome::Refused {
            redirect: Redirect {
                uri: redirect_uri.to_owned(),
                state: params.state.clone(),
            },
            refusal: AuthorizeError::Declined,
            shown: None,
        };
    }
    let approved = asked_consent(&client, &Scopes::parse(params.scope.as_deref()), &params);
    if let Err(e) = ctx
        .store
        .insert_consent(&client.client_id, &consent_key(&identity), &approved, now)
        .await
    {
        return Outcome::Show(Shown::Fault(e.into()));
    }
    authorize(ctx, Ok(identity), params, true).await
}
