//! The middleware every route of the issuer and of the gateway goes through, outermost first:
//! panic catching, tracing (method and path only — never the query, which may carry codes),
//! then one front door: security headers, the `Host` check, the time limit and request
//! latency; and the body limit.
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
        let front = Arc::new(Front {
            metrics: self.metrics.clone(),
            host: self.host.clone(),
            time_limit: self.time_limit,
        });
        routes
            .layer(DefaultBodyLimit::max(self.body_limit))
            .layer(middleware::from_fn_with_state(front, front_door))
            .layer(
                // At debug level: at the default level nothing in a request's span is
                // printed, and building one costs each request more than parsing its form.
                TraceLayer::new_for_http().make_span_with(|req: &Request| {
                    tracing::debug_span!("request", method = %req.method(), path = %req.uri().path())
                }),
            )
            .layer(CatchPanicLayer::custom(panicked))
    }
}

/// What the front door needs: where latency goes, whose `Host` to hold requests to, and how
/// long a handler may take.
#[derive(Debug)]
struct Front {
    metrics: Option<Arc<Metrics>>,
    host: Option<Arc<Issuer>>,
    time_limit: Duration,
}

/// The guards, the time limit, latency by route template, and the response headers, in one
/// middleware: each layer of its own would clone the route's service and box a future for
/// every request.
async fn front_door(State(front): State<Arc<Front>>, req: Request, next: Next) -> Response {
    let mut response = match guard::host_refusal(front.host.as_deref(), &req) {
        Some(refusal) => refusal.into_response(),
        None => {
            let start = std::time::Instant::now();
            // The route template is shared (a reference count), not copied per request.
            let endpoint = front.metrics.as_ref().map(|_| {
                req.extensions()
                    .get::<axum::extract::MatchedPath>()
                    .cloned()
            });
            let response = match tokio::time::timeout(front.time_limit, next.run(req)).await {
                Ok(response) => response,
                Err(_) => Error::unavailable("the request took too long")
                    .with_status(StatusCode::REQUEST_TIMEOUT)
                    .into_response(),
            };
            if let (Some(metrics), Some(endpoint)) = (&front.metrics, endpoint) {
                let endpoint = endpoint.as_ref().map_or("unmatched", |p| p.as_str());
                metrics.request(endpoint, start.elapsed());
            }
            response
        }
    };
    guard::add_response_headers(response.headers_mut());
    response
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
