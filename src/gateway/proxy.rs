//! The proxied call: its upstream found by prefix, the caller's token checked, the endpoint,
//! model and budget enforced, its credentials and account headers stripped and that
//! upstream's key put in their place, the answer streamed back.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use tailpass_verify::axum::{ExternalUrl, PresenterNode, verify_parts};

use super::admission::{Admitted, Refusal, admit};
use super::headers::{HOP_BY_HOP, upstream_headers};
use super::meter::{AnswerScanner, CallRecord, Meter};
use super::routes::Target;
use super::{GatewayState, Shared};
use crate::identity::peer::{Conn, identify};

/// The presenter's node, as this gateway's identity source says (none over Funnel or for a
/// stranger), set in `parts` for verification with the URL the caller addressed; shared by
/// every route the gateway checks tokens on.
pub(super) async fn presenter(state: &Shared, parts: &mut Parts) -> Option<String> {
    let node = identify(
        state.identity.as_ref(),
        parts.extensions.get::<Conn>(),
        &parts.headers,
    )
    .await
    .ok()
    .map(|id| id.node.stable_id.0.clone());
    if let Some(node) = &node {
        parts.extensions.insert(PresenterNode(node.clone()));
    }
    let url = format!(
        "{}{}",
        state.public_url.trim_end_matches('/'),
        parts.uri.path()
    );
    parts.extensions.insert(ExternalUrl(url));
    node
}

/// Any request under an upstream's prefix: the token verified, the call admitted, forwarded.
pub async fn proxy(State(state): State<GatewayState>, request: Request) -> Response {
    let started = Instant::now();
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let Some(target) = state.routes.find(&path) else {
        let refusal = Refusal::no_route(&path);
        state.log.record(&CallRecord {
            time: state.clock.now(),
            status: refusal.status.as_u16(),
            refused: Some(refusal.description.clone()),
            reason: refusal.reason,
            ..CallRecord::default()
        });
        return refusal.into_response();
    };
    target.route.lift_token(&mut parts.headers);
    let node = presenter(&state, &mut parts).await;
    let now = state.clock.now();
    if let Err(refused) = super::ambient::authorize(&state, &mut parts, node.as_deref(), now).await
    {
        return refused;
    }
    let claims = match verify_parts(&state.verifier, &parts, now).await {
        Ok(claims) => claims,
        Err(refused) => {
            tracing::info!(error = %refused.0, "gateway refused a token");
            let reason = match refused.0 {
                tailpass_verify::VerifyError::FeedStale(_) => "feed",
                _ => "token",
            };
            state.log.record(&CallRecord {
                time: now,
                node,
                status: refused.status().0.as_u16(),
                refused: Some(refused.0.to_string()),
                reason,
                ..CallRecord::default()
            });
            let metadata = super::resource::metadata_url(&state.public_url, "");
            return refused.into_response_with_metadata(Some(&metadata));
        }
    };
    let mut record = CallRecord {
        time: now,
        run_id: claims.run.run_id.clone(),
        root_run_id: claims.budget_run().map(str::to_owned),
        sub: claims.sub.clone(),
        node,
        upstream: Some(target.route.name.clone()),
        ..CallRecord::default()
    };
    let method = parts.method.clone();
    let admitted = admit(&state, target, &claims, &method, body, &mut record, now).await;
    let forwarded = match admitted {
        Ok(admitted) => forward(&state, target, &parts, admitted, record, started).await,
        Err(refusal) => Err((refusal, record)),
    };
    forwarded.unwrap_or_else(|(refusal, mut record)| {
        record.status = refusal.status.as_u16();
        record.refused = Some(refusal.description.clone());
        record.reason = refusal.reason;
        state.log.record(&record);
        refusal.into_response()
    })
}

/// Sends an admitted call upstream and streams the answer back, metered; the refusal and the
/// call's record when the upstream cannot be reached.
async fn forward(
    state: &Shared,
    target: Target<'_>,
    parts: &Parts,
    admitted: Admitted,
    record: CallRecord,
    started: Instant,
) -> Result<Response, (Refusal, CallRecord)> {
    let Admitted {
        shaped,
        reservation,
    } = admitted;
    let route = target.route;
    let upstream_url = route.upstream_url(target.rest, parts.uri.query());
    let headers = upstream_headers(&parts.headers, route.key.as_ref(), &route.pin_headers);
    let asked = Instant::now();
    let sent = state
        .http
        .request(parts.method.clone(), &upstream_url)
        .headers(headers)
        .body(shaped.body)
        .send()
        .await;
    state.log.metrics().upstream(asked.elapsed());
    let upstream = match sent {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(error = %e, "upstream unreachable");
            // Never connected: nothing reached the upstream, nothing is charged. Otherwise the
            // request may have run, and the reservation stands (dropped unsettled).
            if e.is_connect()
                && let Some(reservation) = reservation
            {
                reservation.settle(0);
            }
            return Err((Refusal::upstream(), record));
        }
    };
    let mut response = Response::builder().status(upstream.status());
    let event_stream = upstream
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if let Some(out) = response.headers_mut() {
        for (name, value) in upstream.headers() {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                out.append(name.clone(), value.clone());
            }
        }
    }
    let status = upstream.status().as_u16();
    let meter = Meter {
        record: CallRecord { status, ..record },
        scanner: AnswerScanner::new(event_stream),
        started,
        reservation,
        log: state.log.clone(),
    };
    // Each chunk goes to the caller as it comes; the meter watches it go by and closes the
    // call's record before the end of the stream is passed on (so a caller that has read the
    // whole answer finds it charged), or when the caller leaves.
    let stream = futures_util::stream::unfold(
        (upstream.bytes_stream(), Some(meter)),
        |(mut body, mut meter)| async move {
            match body.next().await {
                Some(chunk) => {
                    if let (Ok(bytes), Some(m)) = (&chunk, meter.as_mut()) {
                        m.scanner.push(bytes);
                    }
                    Some((chunk, (body, meter)))
                }
                None => {
                    drop(meter.take());
                    None
                }
            }
        },
    );
    Ok(response
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| Refusal::upstream().into_response()))
}
