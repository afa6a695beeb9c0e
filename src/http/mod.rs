//! HTTP plumbing shared by every route: request guards ([`guard`]), listeners and TLS
//! ([`listen`], [`tls`]), and the middleware every route gets.

use std::any::Any;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::app::{AppState, REQUEST_TIMEOUT, body_limit};
use crate::oauth::error::{Code, Error};

pub mod guard;
pub mod listen;
pub mod tls;

/// Wraps routes with what every request goes through, outermost first: panic catching,
/// tracing (method and path only — never the query, which may carry codes), security headers,
/// the `Host` check, the time limit, and the body limit.
pub fn layers(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), timed))
        .layer(body_limit())
        .layer(middleware::from_fn(time_limit))
        .layer(middleware::from_fn_with_state(state.clone(), guard::check_host))
        .layer(middleware::from_fn(guard::response_headers))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                tracing::info_span!("request", method = %req.method(), path = %req.uri().path())
            }),
        )
        .layer(CatchPanicLayer::custom(panicked))
        .with_state(state)
}

/// Observes each request's latency by route template (bounded labels; unmatched paths share
/// one).
async fn timed(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let endpoint = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let start = std::time::Instant::now();
    let response = next.run(req).await;
    state.metrics.request(&endpoint, start.elapsed());
    response
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

async fn time_limit(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(response) => response,
        Err(_) => Error::unavailable("the request took too long")
            .with_status(StatusCode::REQUEST_TIMEOUT)
            .into_response(),
    }
}

/// The last line of defence: a bug that panics answers `server_error` instead of closing the
/// connection.
fn panicked(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    Error::server_error(&format!("handler panicked: {message}")).into_response()
}
