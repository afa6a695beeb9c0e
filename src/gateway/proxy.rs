//! The proxied call: the caller's token checked, its model and budget enforced, its
//! credentials stripped and the upstream key put in their place, the answer streamed back.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use http_body_util::BodyExt as _;
use tailpass_verify::axum::{ExternalUrl, PresenterNode, verify_parts};

use super::GatewayState;
use super::meter::{CallRecord, Meter, UsageScanner};
use crate::http::peer::{Conn, identify};

/// The largest request body forwarded (prompts can be long, not unbounded).
pub const MAX_REQUEST: usize = 8 * 1024 * 1024;

/// Request headers never forwarded: the caller's credentials (the upstream key replaces them)
/// and hop-by-hop headers.
const STRIPPED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "api-key",
    "openai-api-key",
    "anthropic-api-key",
    "dpop",
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

/// Response headers not passed back (hop-by-hop, or recomputed).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "te",
    "trailer",
    "upgrade",
    "set-cookie",
];

fn refusal(status: StatusCode, code: &str, description: &str) -> Response {
    let body = serde_json::json!({"error": code, "error_description": description});
    let mut response = (status, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Any request under the gateway's prefix.
pub async fn proxy(State(state): State<GatewayState>, request: Request) -> Response {
    let started = Instant::now();
    let (mut parts, body) = request.into_parts();
    // The presenter's node, as this gateway's identity source says (none over Funnel).
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
    let now = state.clock.now();
    let claims = match verify_parts(&state.verifier, &parts, now).await {
        Ok(claims) => claims,
        Err(refused) => {
            tracing::info!(error = %refused.0, "gateway refused a token");
            state.log.record(&CallRecord {
                time: now,
                node,
                status: 401,
                refused: Some(refused.0.to_string()),
                ..CallRecord::default()
            });
            return refused.into_response();
        }
    };
    let mut record = CallRecord {
        time: now,
        run_id: claims.run.run_id.clone(),
        root_run_id: claims.budget_run().map(str::to_owned),
        sub: claims.sub.clone(),
        node,
        ..CallRecord::default()
    };
    let refuse = |record: &mut CallRecord, status: StatusCode, code: &str, why: String| {
        record.status = status.as_u16();
        record.refused = Some(why.clone());
        state.log.record(record);
        refusal(status, code, &why)
    };

    let body = match http_body_util::Limited::new(body, MAX_REQUEST)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return refuse(
                &mut record,
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                format!("the request body is larger than {MAX_REQUEST} bytes"),
            );
        }
    };
    let request_json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    record.model = request_json
        .as_ref()
        .and_then(|v| v.get("model"))
        .and_then(|m| m.as_str())
        .map(str::to_owned);
    if let Some(allowed) = claims.models() {
        match &record.model {
            Some(model) if allowed.contains(&model.as_str()) => {}
            Some(model) => {
                let why = format!("model {model:?} is not allowed for this token");
                return refuse(&mut record, StatusCode::FORBIDDEN, "model_not_allowed", why);
            }
            None if parts.method == axum::http::Method::POST => {
                let why = "this token allows named models only; the request names none".into();
                return refuse(&mut record, StatusCode::FORBIDDEN, "model_not_allowed", why);
            }
            None => {}
        }
    }
    if let (Some(quota), Some(run)) = (claims.quota(), record.root_run_id.clone())
        && let Err(e) = state.quotas.admit(&run, quota, claims.exp, now)
    {
        return refuse(
            &mut record,
            StatusCode::TOO_MANY_REQUESTS,
            "quota_exceeded",
            e.to_string(),
        );
    }

    let upstream_url = format!(
        "{}{}",
        state.upstream.trim_end_matches('/'),
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if !STRIPPED.contains(&name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(header::AUTHORIZATION, state.upstream_authorization.clone());
    let asked = Instant::now();
    let sent = state
        .http
        .request(parts.method.clone(), &upstream_url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    state.log.metrics().upstream(asked.elapsed());
    let upstream = match sent {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(error = %e, "upstream unreachable");
            return refuse(
                &mut record,
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "the upstream did not answer".into(),
            );
        }
    };
    record.status = upstream.status().as_u16();
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
    let meter = Meter {
        record,
        scanner: UsageScanner::new(event_stream),
        started,
        quotas: Arc::clone(&state.quotas),
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
    response
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| {
            refusal(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "bad answer",
            )
        })
}
