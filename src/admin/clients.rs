//! Clients for administrators: list, read, create and regenerate a secret (shown once), edit,
//! delete. The functions serve both the admin API (the handlers here) and the admin UI.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tailpass_verify::{Alg, UnixTime};

use super::Admin;
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::client_registry::ClientsError;
use crate::clients::{
    AuthMethod, Client, ClientMetadata, ClientOrigin, GrantType, MetadataError, Registrant,
    ValidMetadata,
};
use crate::oauth::error::{Code, Error};
use crate::oauth::input::{Json, Path};
use crate::state::AppState;

/// A client as the admin API shows it: everything but the secret's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientView {
    /// The client id.
    pub client_id: String,
    /// Its name.
    pub client_name: String,
    /// Whether it is public (no secret).
    pub public: bool,
    /// Redirect URIs.
    pub redirect_uris: Vec<String>,
    /// Post-logout redirect URIs.
    pub post_logout_redirect_uris: Vec<String>,
    /// Allowed grants.
    pub grant_types: Vec<GrantType>,
    /// ID token algorithm.
    pub id_token_signed_response_alg: Alg,
    /// Allowed resources.
    pub resources: Vec<String>,
    /// Who may log in (empty: any tailnet user).
    pub users: Vec<String>,
    /// Back-channel logout endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backchannel_logout_uri: Option<String>,
    /// Where it was registered.
    pub origin: ClientOrigin,
    /// When.
    pub created_at: UnixTime,
    /// By whom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
}

impl ClientView {
    fn of(client: &Client, default_alg: Alg) -> ClientView {
        ClientView {
            client_id: client.client_id.0.clone(),
            client_name: client.client_name.clone(),
            public: client.is_public(),
            redirect_uris: client.redirect_uris.clone(),
            post_logout_redirect_uris: client.post_logout_redirect_uris.clone(),
            grant_types: client.grant_types.clone(),
            id_token_signed_response_alg: client.id_token_alg(default_alg),
            resources: client.resources.clone(),
            users: client.users.clone(),
            backchannel_logout_uri: client.backchannel_logout_uri.clone(),
            origin: client.origin,
            created_at: client.created_at,
            created_by: client.created_by.clone(),
        }
    }
}

/// A client to create through the admin API or `tailpass clients add`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NewClient {
    /// Its name.
    pub name: String,
    /// Redirect URIs.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// A public client (PKCE, no secret).
    #[serde(default)]
    pub public: bool,
    /// ID token algorithm.
    #[serde(default)]
    pub id_token_alg: Option<Alg>,
    /// Post-logout redirect URIs.
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
    /// Who may log in.
    #[serde(default)]
    pub users: Vec<String>,
    /// Allowed resources (`*` allowed here: the operator decides).
    #[serde(default)]
    pub resources: Vec<String>,
    /// Back-channel logout endpoint.
    #[serde(default)]
    pub backchannel_logout_uri: Option<String>,
}

/// A created client and its secret, shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedClient {
    /// The client id.
    pub client_id: String,
    /// The secret, for confidential clients. Not stored anywhere in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// The client as stored.
    pub client: ClientView,
}

fn clients_error(e: ClientsError) -> Error {
    match e {
        ClientsError::NotFound => Error::new(Code::NotFound, "no such client"),
        ClientsError::Static(_) => Error::new(Code::InvalidRequest, e.to_string()),
        ClientsError::Store(e) => Error::from(e),
    }
}

/// Every client, as shown to administrators.
pub async fn list(state: &AppState) -> Result<Vec<ClientView>, Error> {
    let alg = state.settings.default_id_token_alg();
    Ok(state
        .clients
        .list()
        .await?
        .iter()
        .map(|c| ClientView::of(c, alg))
        .collect())
}

fn validate(state: &AppState, metadata: ClientMetadata) -> Result<ValidMetadata, Error> {
    metadata
        .validate(&state.settings.metadata_rules(Registrant::Operator))
        .map_err(|e| match e {
            MetadataError::RedirectUri(m) => Error::new(Code::InvalidRedirectUri, m),
            MetadataError::Metadata(m) => Error::new(Code::InvalidClientMetadata, m),
        })
}

async fn audited(
    state: &AppState,
    kind: EventKind,
    actor: &str,
    client_id: &str,
) -> Result<(), Error> {
    let mut event = AuditEvent::new(state.now(), kind, Outcome::Success)
        .client(client_id.to_owned())
        .detail(format!("by {actor}"));
    event.user = Some(actor.to_owned());
    state.audit.record(event).await?;
    Ok(())
}

/// Registers a client for `actor`; its secret, for a confidential client, is in the answer
/// and nowhere else.
pub async fn create(state: &AppState, actor: &str, new: NewClient) -> Result<CreatedClient, Error> {
    let metadata = ClientMetadata {
        redirect_uris: Some(new.redirect_uris),
        token_endpoint_auth_method: Some(
            if new.public {
                AuthMethod::None
            } else {
                AuthMethod::ClientSecretBasic
            }
            .as_str()
            .into(),
        ),
        grant_types: Some(vec!["authorization_code".into(), "refresh_token".into()]),
        client_name: Some(new.name),
        id_token_signed_response_alg: new.id_token_alg.map(|a| a.as_str().into()),
        post_logout_redirect_uris: Some(new.post_logout_redirect_uris),
        backchannel_logout_uri: new.backchannel_logout_uri,
        resources: Some(new.resources),
        ..ClientMetadata::default()
    };
    let valid = validate(state, metadata)?;
    let issued = state
        .clients
        .create(
            valid,
            new.users,
            ClientOrigin::Admin,
            state.now(),
            Some(actor.to_owned()),
        )
        .await
        .map_err(clients_error)?;
    audited(
        state,
        EventKind::ClientRegistered,
        actor,
        &issued.client.client_id.0,
    )
    .await?;
    Ok(CreatedClient {
        client_id: issued.client.client_id.0.clone(),
        client_secret: issued.secret.as_ref().map(|s| s.expose().to_owned()),
        client: ClientView::of(&issued.client, state.settings.default_id_token_alg()),
    })
}

/// What an administrator may change on a client.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientEdit {
    /// Its name.
    pub name: String,
    /// Redirect URIs.
    pub redirect_uris: Vec<String>,
    /// Who may log in (empty: any tailnet user).
    pub users: Vec<String>,
    /// Allowed resources.
    pub resources: Vec<String>,
}

async fn stored(state: &AppState, client_id: &str) -> Result<Client, Error> {
    let client = state
        .clients
        .get(client_id)
        .await?
        .ok_or_else(|| Error::new(Code::NotFound, "no such client"))?;
    Ok(Client::clone(&client))
}

/// Changes a client's name, redirect URIs, access rule and resources.
pub async fn edit(
    state: &AppState,
    actor: &str,
    client_id: &str,
    change: ClientEdit,
) -> Result<ClientView, Error> {
    let mut client = stored(state, client_id).await?;
    let alg = state.settings.default_id_token_alg();
    let mut metadata = client.metadata(alg);
    metadata.client_name = Some(change.name);
    metadata.redirect_uris = Some(change.redirect_uris);
    metadata.resources = Some(change.resources);
    client.apply_metadata(validate(state, metadata)?);
    client.users = change.users;
    state.clients.update(&client).await.map_err(clients_error)?;
    audited(state, EventKind::ClientUpdated, actor, client_id).await?;
    Ok(ClientView::of(&client, alg))
}

/// Gives a confidential client a new secret, returned once; the old one stops working.
pub async fn regenerate_secret(
    state: &AppState,
    actor: &str,
    client_id: &str,
) -> Result<CreatedClient, Error> {
    let mut client = stored(state, client_id).await?;
    if client.is_public() {
        return Err(Error::invalid_request("a public client has no secret"));
    }
    let secret = crate::secret::Secret::generate();
    client.secret_sha256 = Some(secret.hash());
    state.clients.update(&client).await.map_err(clients_error)?;
    let mut event = AuditEvent::new(state.now(), EventKind::ClientUpdated, Outcome::Success)
        .client(client_id.to_owned())
        .detail(format!("secret regenerated by {actor}"));
    event.user = Some(actor.to_owned());
    state.audit.record(event).await?;
    Ok(CreatedClient {
        client_id: client_id.to_owned(),
        client_secret: Some(secret.expose().to_owned()),
        client: ClientView::of(&client, state.settings.default_id_token_alg()),
    })
}

/// Removes a client.
pub async fn delete(state: &AppState, actor: &str, client_id: &str) -> Result<(), Error> {
    state
        .clients
        .delete(client_id)
        .await
        .map_err(clients_error)?;
    audited(state, EventKind::ClientDeleted, actor, client_id).await
}

pub(super) async fn list_clients(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Response, Error> {
    Ok(axum::Json(list(&state).await?).into_response())
}

pub(super) async fn get_client(
    State(state): State<AppState>,
    _: Admin,
    Path(client_id): Path<String>,
) -> Result<Response, Error> {
    let client = stored(&state, &client_id).await?;
    Ok(axum::Json(ClientView::of(
        &client,
        state.settings.default_id_token_alg(),
    ))
    .into_response())
}

pub(super) async fn create_client(
    State(state): State<AppState>,
    admin: Admin,
    Json(new): Json<NewClient>,
) -> Result<Response, Error> {
    let body = create(&state, &admin.actor, new).await?;
    Ok(crate::oauth::no_store(StatusCode::CREATED, &body))
}

pub(super) async fn delete_client(
    State(state): State<AppState>,
    admin: Admin,
    Path(client_id): Path<String>,
) -> Result<StatusCode, Error> {
    delete(&state, &admin.actor, &client_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn edit_client(
    State(state): State<AppState>,
    admin: Admin,
    Path(client_id): Path<String>,
    Json(change): Json<ClientEdit>,
) -> Result<axum::Json<ClientView>, Error> {
    Ok(axum::Json(
        edit(&state, &admin.actor, &client_id, change).await?,
    ))
}

pub(super) async fn new_secret(
    State(state): State<AppState>,
    admin: Admin,
    Path(client_id): Path<String>,
) -> Result<Response, Error> {
    let body = regenerate_secret(&state, &admin.actor, &client_id).await?;
    Ok(crate::oauth::no_store(StatusCode::OK, &body))
}
