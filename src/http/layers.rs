//! The middleware every route of the issuer and of the gateway goes through, outermost first:
//! panic catching, tracing (method and path only — never the query, which may carry codes),
//! security headers, the `Host` check, the time limit, the body limit, and request latency.
//!
//! The layers take only what they need ([`Layers`]), never a handler's state, so that both
//! servers wrap their routers in the same ones. Their own refusals (a timeout, a panic, a bad
//! `Host`) are OAuth JSON errors.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use super::guard;
use crate::issuer::Issuer;
use crate::metrics::Metrics;
use crate::oauth::error::Error;

/// What the shared layers need to know about the server they wrap.
#[derive(Debug, Clone)]
pub struct Layers {
    /// Where each request's latency is observed by route template (the issuer's `/metrics`);
    /// `None` observes nothing.
    pub metrics: Option<Arc<Metrics>>,
    /// The issuer whose host a request's `Host` must name. `None` checks only that there is
    /// at most one `Host`: for a server with no name of its own to hold requests to.
    pub host: Option<Arc<Issuer>>,
    /// The largest body an extractor reads; past it the answer is 413.
    pub body_limit: usize,
    /// How long a handler may take to answer (until its response starts; a streamed body is
    /// not limited).
    pub time_limit: Duration,
}

impl Layers {
    /// Wraps `routes` (routes and fallbacks alike) in every layer.
    pub fn apply(&self, routes: Router) -> Router {
        let routes = match &self.metrics {
            Some(metrics) => routes.layer(middleware::from_fn_with_state(metrics.clone(), timed)),
            None => routes,
        };
        let time_limit = self.time_limit;
        routes
            .layer(DefaultBodyLimit::max(self.body_limit))
            .layer(middleware::from_fn(move |req: Request, next: Next| {
                limited(time_limit, req, next)
            }))
            .layer(middleware::from_fn_with_state(
                self.host.clone(),
                guard::check_host,
            ))
            .layer(middleware::from_fn(guard::response_headers))
            .layer(
                TraceLayer::new_for_http().make_span_with(|req: &Request| {
                    tracing::info_span!("request", method = %req.method(), path = %req.uri().path())
                }),
            )
            .layer(CatchPanicLayer::custom(panicked))
    }
}

/// Observes each request's latency by route template (bounded labels; unmatched paths share
/// one).
async fn timed(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let start = std::time::Instant::now();
    let response = next.run(req).await;
    metrics.request(&endpoint, start.elapsed());
    response
}

async fn limited(limit: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
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
