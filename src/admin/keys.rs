//! Signing keys through the admin API: list, rotate.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use tailpass_verify::Alg;

use super::Admin;
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::keys::{KeyError, KeyInfo};
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

/// Rotates the signing keys (all enabled algorithms, or one) for `actor`.
pub async fn rotate(
    state: &AppState,
    actor: &str,
    alg: Option<Alg>,
) -> Result<Vec<KeyInfo>, Error> {
    let keys = state.keys.clone();
    // RSA generation takes a while; keep it off the async workers.
    let rotated = tokio::task::spawn_blocking(move || keys.rotate(alg))
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
    event.user = Some(actor.to_owned());
    state.audit.record(event).await?;
    Ok(rotated)
}

pub(super) async fn rotate_keys(
    State(state): State<AppState>,
    admin: Admin,
    Json(request): Json<RotateRequest>,
) -> Result<axum::Json<Vec<KeyInfo>>, Error> {
    Ok(axum::Json(rotate(&state, &admin.actor, request.alg).await?))
}
