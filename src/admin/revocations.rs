//! The kill switch through the admin API: revoke a run, node, user or token, or the runs
//! minted from matching external tokens; lift a node or user; list what is revoked and the
//! runs an external-token selection matches.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::Admin;
use crate::federation::runs::{FederatedRun, RunMatch};
use crate::killswitch::{self, FedReport, FedTarget, Target};
use crate::oauth::error::Error;
use crate::oauth::input::Json;
use crate::state::AppState;
use crate::store::Revocation;
use tailpass_verify::UnixTime;

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

/// `POST /admin/api/revocations/federated`: the runs minted from matching external tokens
/// revoked, and new trades of such tokens refused until `until` (by default for the server's
/// `max_token_lifetime`).
pub(super) async fn revoke_federated(
    State(state): State<AppState>,
    admin: Admin,
    Json(target): Json<FedTarget>,
) -> Result<Response, Error> {
    let now = state.now();
    let default_until = UnixTime(now.0.saturating_add(state.settings.max_token_lifetime));
    let report: FedReport =
        killswitch::revoke_federated(state.sessions(), &target, default_until, &admin.actor, now)
            .await?;
    Ok((StatusCode::CREATED, axum::Json(report)).into_response())
}

/// `POST /admin/api/federated-runs`: the recorded runs a selection (table and claims, in
/// the body) matches, oldest first.
pub(super) async fn federated_runs(
    State(state): State<AppState>,
    _: Admin,
    Json(selection): Json<RunMatch>,
) -> Result<axum::Json<Vec<FederatedRun>>, Error> {
    Ok(axum::Json(
        killswitch::federated_runs(state.store.as_ref(), &selection).await?,
    ))
}
