//! The kill switch through the admin API: revoke a run, node, user or token; lift a node or
//! user; list what is revoked.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::Admin;
use crate::killswitch::{self, Target};
use crate::oauth::error::Error;
use crate::oauth::input::Json;
use crate::state::AppState;
use crate::store::Revocation;

/// `POST /admin/api/revocations`.
pub(super) async fn revoke(
    State(state): State<AppState>,
    admin: Admin,
    Json(target): Json<Target>,
) -> Result<Response, Error> {
    let report = killswitch::revoke(state.sessions(), &target, &admin.actor, state.now()).await?;
    Ok((StatusCode::CREATED, axum::Json(report)).into_response())
}

/// `POST /admin/api/revocations/lift`.
pub(super) async fn lift(
    State(state): State<AppState>,
    admin: Admin,
    Json(target): Json<Target>,
) -> Result<axum::Json<Vec<Revocation>>, Error> {
    Ok(axum::Json(
        killswitch::lift(state.sessions(), &target, &admin.actor, state.now()).await?,
    ))
}

/// `GET /admin/api/revocations`: every stored revocation, lifted ones included.
pub(super) async fn list(
    State(state): State<AppState>,
    _: Admin,
) -> Result<axum::Json<Vec<Revocation>>, Error> {
    let mut all = state.store.revocations_since(0).await?;
    all.sort_by_key(|r| r.seq);
    Ok(axum::Json(all))
}
