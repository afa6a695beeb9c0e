//! Dynamic client registration: `POST /register` (RFC 7591) and the management endpoints
//! `GET`/`PUT`/`DELETE /register/{client_id}` (RFC 7592).
//!
//! Registering needs the `allow_dcr` grant (or `--dev` loopback) and is refused cross-site:
//! otherwise any page a user visits could register a client as them. Management needs only
//! the registration access token issued with the client, compared in constant time; an
//! unknown client and a wrong token are answered alike.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::error::{Code, Error};
use super::input::{Bearer, Body, Path};
use crate::audit::{AuditEvent, EventKind, Outcome, Refusal};
use crate::client_registry::ClientsError;
use crate::clients::{AuthMethod, Client, ClientMetadata, ClientOrigin, MetadataError, Registrant};
use crate::oauth::caller::{Caller, SameOrigin};
use crate::oauth::{no_store, paths};
use crate::policy::tsidp;
use crate::state::AppState;

/// A registration response (RFC 7591 §3.2.1, RFC 7592 §3).
#[derive(Debug, Serialize)]
struct Registration {
    client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret: Option<String>,
    client_id_issued_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret_expires_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    registration_access_token: Option<String>,
    registration_client_uri: String,
    #[serde(flatten)]
    metadata: ClientMetadata,
}

fn metadata_error(e: MetadataError) -> Error {
    match e {
        MetadataError::RedirectUri(m) => Error::new(Code::InvalidRedirectUri, m),
        MetadataError::Metadata(m) => Error::new(Code::InvalidClientMetadata, m),
    }
}

fn parse_metadata<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| {
        Error::new(
            Code::InvalidClientMetadata,
            format!("invalid JSON metadata: {e}"),
        )
    })
}

fn view(state: &AppState, client: &Client) -> Registration {
    Registration {
        client_id: client.client_id.0.clone(),
        client_secret: None,
        client_id_issued_at: client.created_at.0,
        client_secret_expires_at: client.secret_sha256.as_ref().map(|_| 0),
        registration_access_token: None,
        registration_client_uri: state.issuer.endpoint(&format!(
            "{}/{}",
            paths::REGISTER,
            client.client_id
        )),
        metadata: client.metadata(state.settings.default_id_token_alg()),
    }
}

/// The RFC 7592 answer to a client that vanished between lookup and change; a store that
/// cannot take the write now (out of reach, its disk full) is 503 with `Retry-After`.
fn management_error(e: ClientsError) -> Error {
    match e {
        ClientsError::NotFound => Error::invalid_token("unknown client"),
        ClientsError::Store(store) => store.into(),
        other => Error::server_error(&other),
    }
}

/// Why a registration was refused, as the audit log and metrics name it.
#[derive(Debug, thiserror::Error)]
enum Refused {
    /// The caller holds no tsidp grant with `allow_dcr`.
    #[error("the caller has no allow_dcr grant")]
    NoGrant,
    /// The metadata breaks the registration rules.
    #[error(transparent)]
    Metadata(MetadataError),
}

impl Refusal for Refused {
    fn label(&self) -> &'static str {
        match self {
            Refused::NoGrant => "no_dcr_grant",
            Refused::Metadata(MetadataError::RedirectUri(_)) => "redirect_uri",
            Refused::Metadata(MetadataError::Metadata(_)) => "metadata",
        }
    }
}

/// `POST /register`.
pub async fn register(
    State(state): State<AppState>,
    _: SameOrigin,
    Caller(caller): Caller,
    Body(body): Body,
) -> Result<Response, Error> {
    let now = state.now();
    let registrant = caller
        .user
        .as_ref()
        .map(|u| u.login.clone())
        .unwrap_or_else(|| caller.node.name.clone());
    let refuse = |refusal: Refused| {
        AuditEvent::new(now, EventKind::ClientRegistered, Outcome::Denied)
            .by(&caller)
            .refused(&refusal)
    };
    if !tsidp::may_register(&caller) {
        state.audit.record(refuse(Refused::NoGrant)).await?;
        return Err(Error::access_denied(Refused::NoGrant.to_string()));
    }
    let metadata: ClientMetadata = parse_metadata(&body)?;
    let valid = match metadata.validate(&state.settings.metadata_rules(Registrant::SelfRegistered))
    {
        Ok(valid) => valid,
        Err(e) => {
            state
                .audit
                .record(refuse(Refused::Metadata(e.clone())))
                .await?;
            return Err(metadata_error(e));
        }
    };
    let issued = state
        .clients
        .create(
            valid,
            Vec::new(),
            ClientOrigin::Dynamic,
            now,
            Some(registrant),
        )
        .await
        .map_err(management_error)?;
    state
        .audit
        .record(
            AuditEvent::new(now, EventKind::ClientRegistered, Outcome::Success)
                .by(&caller)
                .client(issued.client.client_id.0.clone()),
        )
        .await?;
    let mut body = view(&state, &issued.client);
    body.client_secret = issued.secret.as_ref().map(|s| s.expose().to_owned());
    body.registration_access_token = issued
        .registration_token
        .as_ref()
        .map(|s| s.expose().to_owned());
    Ok(no_store(StatusCode::CREATED, &body))
}

/// The client a registration access token manages, or `invalid_token`.
async fn authorized(state: &AppState, client_id: &str, token: &Bearer) -> Result<Client, Error> {
    let client = state.clients.get(client_id).await?;
    match client {
        Some(client)
            if client.origin == ClientOrigin::Dynamic
                && client
                    .registration_token_sha256
                    .as_ref()
                    .is_some_and(|h| h.matches(&token.0)) =>
        {
            Ok((*client).clone())
        }
        _ => Err(Error::invalid_token(
            "unknown client or invalid registration access token",
        )),
    }
}

/// `GET /register/{client_id}`.
pub async fn read(
    State(state): State<AppState>,
    Path(client_id): Path<String>,
    token: Bearer,
) -> Result<Response, Error> {
    let client = authorized(&state, &client_id, &token).await?;
    Ok(no_store(StatusCode::OK, &view(&state, &client)))
}

/// The body of an RFC 7592 update: the full metadata plus fields that must echo the client.
#[derive(Debug, Deserialize)]
struct UpdateRequest {
    client_id: String,
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    registration_access_token: Option<serde_json::Value>,
    #[serde(default)]
    registration_client_uri: Option<serde_json::Value>,
    #[serde(default)]
    client_secret_expires_at: Option<serde_json::Value>,
    #[serde(default)]
    client_id_issued_at: Option<serde_json::Value>,
    #[serde(flatten)]
    metadata: ClientMetadata,
}

/// `PUT /register/{client_id}`: replaces the client's metadata (RFC 7592 §2.2).
pub async fn update(
    State(state): State<AppState>,
    Path(client_id): Path<String>,
    token: Bearer,
    Body(body): Body,
) -> Result<Response, Error> {
    let mut client = authorized(&state, &client_id, &token).await?;
    let request: UpdateRequest = parse_metadata(&body)?;
    if request.client_id != client.client_id.0 {
        return Err(Error::invalid_request(
            "client_id does not match the client being updated",
        ));
    }
    if request.registration_access_token.is_some()
        || request.registration_client_uri.is_some()
        || request.client_secret_expires_at.is_some()
        || request.client_id_issued_at.is_some()
    {
        return Err(Error::invalid_request(
            "registration_access_token, registration_client_uri, client_secret_expires_at and client_id_issued_at must not be sent (RFC 7592 §2.2)",
        ));
    }
    if let Some(secret) = &request.client_secret
        && !client.secret_matches(secret)
    {
        return Err(Error::invalid_request("client_secret does not match"));
    }
    let valid = request
        .metadata
        .validate(&state.settings.metadata_rules(Registrant::SelfRegistered))
        .map_err(metadata_error)?;
    if (valid.token_endpoint_auth_method == AuthMethod::None) != client.is_public() {
        return Err(Error::new(
            Code::InvalidClientMetadata,
            "a client cannot switch between public and confidential; register a new one",
        ));
    }
    client.apply_metadata(valid);
    state
        .clients
        .update(&client)
        .await
        .map_err(management_error)?;
    state
        .audit
        .record(
            AuditEvent::new(state.now(), EventKind::ClientUpdated, Outcome::Success)
                .client(client_id),
        )
        .await?;
    Ok(no_store(StatusCode::OK, &view(&state, &client)))
}

/// `DELETE /register/{client_id}`.
pub async fn delete(
    State(state): State<AppState>,
    Path(client_id): Path<String>,
    token: Bearer,
) -> Result<StatusCode, Error> {
    let client = authorized(&state, &client_id, &token).await?;
    state
        .clients
        .delete(&client.client_id.0)
        .await
        .map_err(management_error)?;
    state
        .audit
        .record(
            AuditEvent::new(state.now(), EventKind::ClientDeleted, Outcome::Success)
                .client(client_id),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
