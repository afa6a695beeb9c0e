//! The issuer's routers: every OAuth, admin and UI route, `/healthz` and `/metrics`, behind the
//! shared layers ([`super::layers`]) with the issuer's limits and `Host`.

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
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics));
    serve(routes, state)
}

/// What the admin socket serves: the admin API and health.
pub fn admin_socket_router(state: AppState) -> Router {
    let routes = crate::admin::routes().route("/healthz", get(healthz));
    serve(routes, state)
}

/// Routes over `state`, with OAuth errors for unknown paths and methods, in the issuer's
/// layers: its metrics, its `Host`, its limits.
fn serve(routes: Router<AppState>, state: AppState) -> Router {
    let layers = Layers {
        metrics: Some(state.metrics.clone()),
        host: Some(state.issuer.clone()),
        body_limit: BODY_LIMIT,
        time_limit: REQUEST_TIMEOUT,
    };
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
