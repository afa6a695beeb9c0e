//! The issuer's routers: every OAuth, admin and UI route, `/healthz`, `/readyz` and `/metrics`,
//! behind the shared layers ([`super::layers`]) with the issuer's limits and `Host`; and the
//! probes' router of `--health-listen`, with health alone.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;

use super::layers::Layers;
use crate::oauth::caller::Caller;
use crate::oauth::error::{Code, Error};
use crate::state::AppState;

/// The largest request body read (forms, registration metadata).
pub const BODY_LIMIT: usize = 64 * 1024;
/// How long a request may take, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The public HTTP application: OAuth endpoints, the admin API, health.
pub fn router(state: AppState) -> Router {
    let routes = crate::oauth::routes()
        .merge(crate::admin::routes())
        .merge(crate::admin::ui::routes())
        .merge(health());
    serve(routes.route("/metrics", get(metrics)), state)
}

/// What the admin socket serves: the admin API and health.
pub fn admin_socket_router(state: AppState) -> Router {
    serve(crate::admin::routes().merge(health()), state)
}

/// What `--health-listen` serves: `/healthz` and `/readyz` only, for orchestrators' probes,
/// which reach the server by an address of their own: no identity, and no `Host` check (only
/// that there is at most one).
pub fn health_router(state: AppState) -> Router {
    let layers = Layers {
        metrics: None,
        host: None,
        body_limit: BODY_LIMIT,
        time_limit: REQUEST_TIMEOUT,
    };
    wrap(health(), state, &layers)
}

/// The health routes: liveness and readiness.
fn health() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// Routes over `state` in the issuer's layers: its metrics, its `Host`, its limits.
fn serve(routes: Router<AppState>, state: AppState) -> Router {
    let layers = Layers {
        metrics: Some(state.metrics.clone()),
        host: Some(state.issuer.clone()),
        body_limit: BODY_LIMIT,
        time_limit: REQUEST_TIMEOUT,
    };
    wrap(routes, state, &layers)
}

/// Routes over `state`, with OAuth errors for unknown paths and methods, in `layers`.
fn wrap(routes: Router<AppState>, state: AppState, layers: &Layers) -> Router {
    layers.apply(
        routes
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .with_state(state),
    )
}

async fn not_found() -> Error {
    Error::new(Code::NotFound, "no such endpoint")
}

async fn method_not_allowed() -> Error {
    Error::new(
        Code::MethodNotAllowed,
        "method not allowed on this endpoint",
    )
}

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: 200 while the store answers, else 503 saying so (docs/design.md
/// "Contracts": health and unavailability). Discovery, JWKS and `/healthz` do not depend on it.
async fn readyz(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    match state.store_ready().await {
        Ok(()) => (
            axum::http::StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ready"})),
        ),
        Err(reason) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "unavailable", "store": reason})),
        ),
    }
}

/// `GET /metrics`: for tailnet peers (a Prometheus on the tailnet), in Prometheus text format.
async fn metrics(
    State(state): State<AppState>,
    Caller(_): Caller,
) -> impl axum::response::IntoResponse {
    let mut keys: std::collections::BTreeMap<&'static str, u64> = std::collections::BTreeMap::new();
    for info in state.keys.list().unwrap_or_default() {
        *keys.entry(info.entry.state.as_str()).or_insert(0) += 1;
    }
    let gauges = crate::metrics::Gauges {
        keys: keys.into_iter().collect(),
        revocations: state.revocations.len() as u64,
        feed_subscribers: state.feed_slots.in_use() as u64,
    };
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(&gauges),
    )
}
