//! Signing keys through the admin API: list, rotate, revoke a compromised key, and re-seal
//! them under a new key-encryption key.

use std::path::PathBuf;

use axum::extract::State;
use serde::{Deserialize, Serialize};
use tailpass_verify::Alg;

use super::{Admin, SocketAdmin};
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::keys::{Kek, KeyError, KeyInfo, KeyRing};
use crate::killswitch::Report;
use crate::oauth::error::Error;
use crate::oauth::input::Json;
use crate::state::AppState;

pub(super) async fn list_keys(
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

/// The body of `POST /admin/api/keys/revoke`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RevokeKeyRequest {
    /// The compromised key.
    pub kid: String,
}

/// What revoking a key did.
#[derive(Debug, Serialize, Deserialize)]
pub struct RevokedKey {
    /// The `kid` revocation as the feed carries it.
    pub revocation: Report,
    /// The keys now.
    pub keys: Vec<KeyInfo>,
}

/// The body of `POST /admin/api/keys/rewrap` (admin socket only: it names a file on the
/// server's host).
#[derive(Debug, Serialize, Deserialize)]
pub struct RewrapRequest {
    /// The new key-encryption key's file, as the server sees it.
    pub new_key_encryption_key_file: PathBuf,
}

/// An operator's mistake as a refusal; the server's own failures as server errors.
fn refusal(e: KeyError) -> Error {
    match e {
        KeyError::NotEnabled(alg) => {
            Error::invalid_request(format!("algorithm {alg} is not enabled"))
        }
        e @ (KeyError::UnknownKid(_)
        | KeyError::Sealing(_)
        | KeyError::Kek(_)
        | KeyError::TooSoon { .. }
        | KeyError::Conflict) => Error::invalid_request(e.to_string()),
        other => Error::from(other),
    }
}

/// Runs a key ring change off the async workers (RSA generation, file writes).
async fn blocking<T: Send + 'static>(
    state: &AppState,
    change: impl FnOnce(&KeyRing) -> Result<T, KeyError> + Send + 'static,
) -> Result<T, Error> {
    let keys = state.keys.clone();
    tokio::task::spawn_blocking(move || change(&keys))
        .await
        .map_err(|e| Error::server_error(&e))?
        .map_err(refusal)
}

async fn audit(
    state: &AppState,
    kind: EventKind,
    actor: &str,
    detail: String,
) -> Result<(), Error> {
    let mut event = AuditEvent::new(state.now(), kind, Outcome::Success).detail(detail);
    event.user = Some(actor.to_owned());
    state.audit.record(event).await?;
    Ok(())
}

/// Rotates the signing keys (all enabled algorithms, or one) for `actor`.
pub async fn rotate(
    state: &AppState,
    actor: &str,
    alg: Option<Alg>,
) -> Result<Vec<KeyInfo>, Error> {
    let rotated = blocking(state, move |keys| keys.rotate(alg)).await?;
    let active: Vec<String> = rotated
        .iter()
        .filter(|k| k.entry.state == crate::keys::KeyState::Active)
        .map(|k| format!("{}:{}", k.entry.alg, k.entry.kid))
        .collect();
    let detail = format!("active now {}", active.join(", "));
    audit(state, EventKind::KeysRotated, actor, detail).await?;
    Ok(rotated)
}

/// Revokes the key `kid` for `actor` (docs/design.md "Contracts": revocation feed, `kid`):
/// dropped from the JWKS at once (replaced first if it was signing), then every token it
/// signed refused here and, through the feed, by every verifier.
pub async fn revoke(state: &AppState, actor: &str, kid: String) -> Result<RevokedKey, Error> {
    let dropped = kid.clone();
    let keys = blocking(state, move |keys| keys.revoke(&dropped)).await?;
    let revocation =
        crate::killswitch::revoke_kid(state.sessions(), &kid, actor, state.now()).await?;
    Ok(RevokedKey { revocation, keys })
}

/// Re-seals every stored key under the key-encryption key in `file`, for `actor`.
pub async fn rewrap(state: &AppState, actor: &str, file: PathBuf) -> Result<(), Error> {
    let shown = file.display().to_string();
    blocking(state, move |keys| keys.rewrap(Kek::read(&file)?)).await?;
    let detail = format!("keys re-sealed under the key-encryption key {shown}");
    audit(state, EventKind::KeysRewrapped, actor, detail).await
}

pub(super) async fn rotate_keys(
    State(state): State<AppState>,
    admin: Admin,
    Json(request): Json<RotateRequest>,
) -> Result<axum::Json<Vec<KeyInfo>>, Error> {
    Ok(axum::Json(rotate(&state, &admin.actor, request.alg).await?))
}

pub(super) async fn revoke_key(
    State(state): State<AppState>,
    admin: Admin,
    Json(request): Json<RevokeKeyRequest>,
) -> Result<axum::Json<RevokedKey>, Error> {
    Ok(axum::Json(revoke(&state, &admin.actor, request.kid).await?))
}

pub(super) async fn rewrap_keys(
    State(state): State<AppState>,
    admin: SocketAdmin,
    Json(request): Json<RewrapRequest>,
) -> Result<axum::Json<serde_json::Value>, Error> {
    rewrap(&state, &admin.actor, request.new_key_encryption_key_file).await?;
    Ok(axum::Json(serde_json::json!({"rewrapped": true})))
}
