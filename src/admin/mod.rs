//! The admin API (clients, keys, the kill switch and the audit log) and the admin UI over it
//! ([`ui`]).
//!
//! Served twice from one router: under `/admin/api/` on the HTTP listener, to callers whose
//! live WhoIs carries the `allow_admin_ui` grant (refused cross-site), and on the admin unix
//! socket `STATE_DIR/admin.sock`, whose file mode (0600) is the credential. The CLI speaks to
//! the socket, so a change made from the command line goes through the running server and its
//! caches; with no server running it drives the same router in-process
//! (`commands::admin_client`).

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::routing::{get, post};

use crate::identity::peer::{Conn, Listener};
use crate::oauth::caller::{Caller, is_same_origin};
use crate::oauth::error::Error;
use crate::policy::tsidp;
use crate::state::AppState;

mod audit;
pub mod clients;
mod csrf;
pub mod keys;
pub mod policy;
mod revocations;
pub mod ui;

pub use audit::AuditQuery;
pub use clients::{ClientView, CreatedClient, NewClient};
pub use keys::{RevokeKeyRequest, RevokedKey, RewrapRequest, RotateRequest};

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
        if via_socket(parts) {
            return Ok(Admin {
                actor: "admin-socket".into(),
            });
        }
        if !is_same_origin(&parts.headers, state.issuer.origin()) {
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

/// Whether the request came over the admin socket, whose file mode is the credential.
fn via_socket(parts: &Parts) -> bool {
    parts
        .extensions
        .get::<Conn>()
        .is_some_and(|c| c.listener == Listener::AdminSocket)
}

/// Proof that the request came over the admin socket, for operations that name files on the
/// server's host (a rewrap's new key-encryption key): a tailnet administrator must not pick
/// which of the server's files it reads.
#[derive(Debug, Clone)]
pub struct SocketAdmin {
    /// Who, for the audit log.
    pub actor: String,
}

impl FromRequestParts<AppState> for SocketAdmin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Error> {
        if via_socket(parts) {
            Ok(SocketAdmin {
                actor: "admin-socket".into(),
            })
        } else {
            Err(Error::access_denied("only over the admin socket"))
        }
    }
}

/// The admin routes, mounted under [`PREFIX`].
pub fn routes() -> Router<AppState> {
    Router::new().nest(
        PREFIX,
        Router::new()
            .route(
                "/clients",
                get(clients::list_clients).post(clients::create_client),
            )
            .route(
                "/clients/{client_id}",
                get(clients::get_client)
                    .patch(clients::edit_client)
                    .delete(clients::delete_client),
            )
            .route("/clients/{client_id}/secret", post(clients::new_secret))
            .route("/keys", get(keys::list_keys))
            .route("/keys/rotate", post(keys::rotate_keys))
            .route("/keys/revoke", post(keys::revoke_key))
            .route("/keys/rewrap", post(keys::rewrap_keys))
            .route(
                "/revocations",
                get(revocations::list).post(revocations::revoke),
            )
            .route("/revocations/lift", post(revocations::lift))
            .route(
                "/revocations/federated",
                post(revocations::revoke_federated),
            )
            .route("/federated-runs", post(revocations::federated_runs))
            .route("/audit", get(audit::query))
            .route("/policy/explain", post(policy::explain_policy)),
    )
}
