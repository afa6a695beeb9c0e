//! The admin API: clients and keys now, revocations and the audit log as they arrive.
//!
//! Served twice from one router: under `/admin/api/` on the HTTP listener, to callers whose
//! live WhoIs carries the `allow_admin_ui` grant (refused cross-site), and on the admin unix
//! socket `STATE_DIR/admin.sock`, whose file mode (0600) is the credential. The CLI speaks to
//! the socket, so a change made from the command line goes through the running server and its
//! caches; with no server running it drives the same router in-process ([`client`]).

use axum::Router;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tailpass_verify::{Alg, UnixTime};

use crate::app::AppState;
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::clients::{
    AuthMethod, Client, ClientMetadata, ClientOrigin, ClientsError, GrantType, MetadataError,
};
use crate::http::guard::is_same_origin;
use crate::http::peer::{Caller, Conn, Listener};
use crate::keys::{KeyError, KeyInfo};
use crate::oauth::error::{Code, Error};
use crate::oauth::input::Json;
use crate::policy::tsidp;

pub mod client;

/// The admin API's path prefix on the HTTP listener and the socket.
pub const PREFIX: &str = "/admin/api";

/// Proof that the request may administer: it came over the admin socket, or from a same-origin
/// caller whose live WhoIs grants `allow_admin_ui`.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Who, for the audit log.
    pub actor: String,
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        if parts
            .extensions
            .get::<Conn>()
            .is_some_and(|c| c.listener == Listener::AdminSocket)
        {
            return Ok(Admin {
                actor: "admin-socket".into(),
            });
        }
        if !is_same_origin(parts, state.issuer.origin()) {
            return Err(Error::access_denied("cross-site request refused"));
        }
        let Caller(caller) = Caller::from_request_parts(parts, state).await?;
        if !tsidp::may_administer(&caller) {
            return Err(Error::access_denied(
                "the caller has no allow_admin_ui grant",
            ));
        }
        Ok(Admin {
            actor: caller
                .user
                .as_ref()
                .map(|u| u.login.clone())
                .unwrap_or_else(|| caller.node.name.clone()),
        })
    }
}

/// The admin routes, mounted under [`PREFIX`].
pub fn routes() -> Router<AppState> {
    Router::new().nest(
        PREFIX,
        Router::new()
            .route("/clients", get(list_clients).post(create_client))
            .route(
                "/clients/{client_id}",
                get(get_client).delete(delete_client),
            )
            .route("/keys", get(list_keys))
            .route("/keys/rotate", post(rotate_keys)),
    )
}

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

async fn list_clients(State(state): State<AppState>, _: Admin) -> Result<Response, Error> {
    let alg = state.settings.default_id_token_alg();
    let views: Vec<ClientView> = state
        .clients
        .list()
        .await?
        .iter()
        .map(|c| ClientView::of(c, alg))
        .collect();
    Ok(axum::Json(views).into_response())
}

async fn get_client(
    State(state): State<AppState>,
    _: Admin,
    Path(client_id): Path<String>,
) -> Result<Response, Error> {
    let client = state
        .clients
        .get(&client_id)
        .await?
        .ok_or_else(|| Error::new(Code::NotFound, "no such client"))?;
    Ok(axum::Json(ClientView::of(
        &client,
        state.settings.default_id_token_alg(),
    ))
    .into_response())
}

async fn create_client(
    State(state): State<AppState>,
    admin: Admin,
    Json(new): Json<NewClient>,
) -> Result<Response, Error> {
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
    let valid = metadata
        .validate(&state.settings.metadata_rules(true))
        .map_err(|e| match e {
            MetadataError::RedirectUri(m) => Error::new(Code::InvalidRedirectUri, m),
            MetadataError::Metadata(m) => Error::new(Code::InvalidClientMetadata, m),
        })?;
    let now = state.now();
    let mut issued = state
        .clients
        .create(valid, ClientOrigin::Admin, now, Some(admin.actor.clone()))
        .await
        .map_err(clients_error)?;
    if !new.users.is_empty() {
        issued.client.users = new.users;
        state
            .clients
            .update(&issued.client)
            .await
            .map_err(clients_error)?;
    }
    let mut event = AuditEvent::new(now, EventKind::ClientRegistered, Outcome::Success)
        .client(issued.client.client_id.0.clone())
        .detail(format!("by {}", admin.actor));
    event.user = Some(admin.actor);
    state.audit.record(event).await?;
    let body = CreatedClient {
        client_id: issued.client.client_id.0.clone(),
        client_secret: issued.secret.as_ref().map(|s| s.expose().to_owned()),
        client: ClientView::of(&issued.client, state.settings.default_id_token_alg()),
    };
    Ok(crate::oauth::no_store(StatusCode::CREATED, &body))
}

async fn delete_client(
    State(state): State<AppState>,
    admin: Admin,
    Path(client_id): Path<String>,
) -> Result<StatusCode, Error> {
    state
        .clients
        .delete(&client_id)
        .await
        .map_err(clients_error)?;
    let mut event = AuditEvent::new(state.now(), EventKind::ClientDeleted, Outcome::Success)
        .client(client_id)
        .detail(format!("by {}", admin.actor));
    event.user = Some(admin.actor);
    state.audit.record(event).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_keys(
    State(state): State<AppState>,
    _: Admin,
) -> Result<axum::Json<Vec<KeyInfo>>, Error> {
    Ok(axum::Json(state.keys.list()?))
}

/// The body of `POST /admin/api/keys/rotate`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RotateRequest {
    /// Only this algorithm (default: all enabled).
    #[serde(default)]
    pub alg: Option<Alg>,
}

async fn rotate_keys(
    State(state): State<AppState>,
    admin: Admin,
    Json(request): Json<RotateRequest>,
) -> Result<axum::Json<Vec<KeyInfo>>, Error> {
    let keys = state.keys.clone();
    // RSA generation takes a while; keep it off the async workers.
    let rotated = tokio::task::spawn_blocking(move || keys.rotate(request.alg))
        .await
        .map_err(|e| Error::server_error(&e))?
        .map_err(|e| match e {
            KeyError::NotEnabled(alg) => {
                Error::invalid_request(format!("algorithm {alg} is not enabled"))
            }
            other => Error::from(other),
        })?;
    let active: Vec<String> = rotated
        .iter()
        .filter(|k| k.entry.state == crate::keys::KeyState::Active)
        .map(|k| format!("{}:{}", k.entry.alg, k.entry.kid))
        .collect();
    let mut event = AuditEvent::new(state.now(), EventKind::KeysRotated, Outcome::Success)
        .detail(format!("active now {}", active.join(", ")));
    event.user = Some(admin.actor);
    state.audit.record(event).await?;
    Ok(axum::Json(rotated))
}
