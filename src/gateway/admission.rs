//! Whether a call whose token verified may go upstream, in the order its checks run: the
//! token names its models (unless the gateway allows unrestricted tokens), the endpoint is
//! forwarded, the body fits and reads as its endpoint's (strict JSON for the built-in ones),
//! the model is allowed, every tool the request offers the model is
//! allowed by the token's `tools` claim (any tool without one), and the run's budget admits
//! the call, reserving its estimated LLM tokens. A refusal is a JSON error with a bounded
//! reason label for the call log and metrics.

use axum::body::Body;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use tailpass_verify::{AccessClaims, UnixTime};

use super::Shared;
use super::body::{Shaped, Unreadable};
use super::endpoints::{Cost, Refused};
use super::meter::CallRecord;
use super::quota::{QuotaError, Reservation};
use super::routes::Target;

/// The largest request body forwarded (prompts can be long, not unbounded).
pub const MAX_REQUEST: usize = 8 * 1024 * 1024;

/// Why the gateway does not forward a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The answer's status.
    pub status: StatusCode,
    /// The metrics label: `model`, `endpoint`, `tool`, `quota` or `other`.
    pub reason: &'static str,
    /// The `error` value.
    pub code: &'static str,
    /// The `error_description`.
    pub description: String,
}

impl Refusal {
    fn model(description: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::FORBIDDEN,
            reason: "model",
            code: "model_not_allowed",
            description: description.into(),
        }
    }

    /// No upstream's prefix covers `path`.
    pub fn no_route(path: &str) -> Refusal {
        Refusal {
            status: StatusCode::NOT_FOUND,
            reason: "endpoint",
            code: "not_found",
            description: format!("no upstream of this gateway serves {path:?}"),
        }
    }

    /// The request offers the model `tool`, which the token's `tools` claim does not allow.
    fn tool(tool: &str) -> Refusal {
        Refusal {
            status: StatusCode::FORBIDDEN,
            reason: "tool",
            code: "tool_not_allowed",
            description: super::tools::refused_description(tool),
        }
    }

    /// The body is not what its endpoint takes, read strictly.
    fn unreadable(e: Unreadable) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            reason: "other",
            code: "invalid_request",
            description: e.to_string(),
        }
    }

    /// The token limits the tools a request may offer and the body could not be read for them.
    fn tools_unread() -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            reason: "tool",
            code: "invalid_request",
            description: "this token limits the tools a request may offer, and this body is \
                          not a JSON object the gateway can read them in"
                .into(),
        }
    }

    /// The upstream could not be reached or answered nonsense.
    pub fn upstream() -> Refusal {
        Refusal {
            status: StatusCode::BAD_GATEWAY,
            reason: "other",
            code: "upstream_unavailable",
            description: "the upstream did not answer".into(),
        }
    }
}

impl From<Refused> for Refusal {
    fn from(e: Refused) -> Refusal {
        let (status, code) = match e {
            Refused::UnsafePath(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Refused::NotAllowed(..) => (StatusCode::FORBIDDEN, "endpoint_not_allowed"),
        };
        Refusal {
            status,
            reason: "endpoint",
            code,
            description: e.to_string(),
        }
    }
}

impl From<QuotaError> for Refusal {
    fn from(e: QuotaError) -> Refusal {
        Refusal {
            status: StatusCode::TOO_MANY_REQUESTS,
            reason: "quota",
            code: "quota_exceeded",
            description: e.to_string(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.code, "error_description": self.description});
        let mut response = (self.status, axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// A call cleared to go upstream.
#[derive(Debug)]
pub struct Admitted {
    /// The body to send, and what was read from it.
    pub shaped: Shaped,
    /// The LLM tokens held for it, when its run has a token budget.
    pub reservation: Option<Reservation>,
}

/// Checks a verified call (`claims`) to `method` at `target` with `body`, at `now`. The
/// call's `record` gets the model the call is for and the tools it offers (as the call log
/// keeps them) as soon as they are known, refused or not.
pub async fn admit(
    state: &Shared,
    target: Target<'_>,
    claims: &AccessClaims,
    method: &Method,
    body: Body,
    record: &mut CallRecord,
    now: UnixTime,
) -> Result<Admitted, Refusal> {
    let allowed = claims.models();
    if allowed.is_none() && !state.allow_unrestricted {
        return Err(Refusal::model(
            "this gateway serves only tokens that name their models (a models claim)",
        ));
    }
    let endpoint = target.route.endpoints.check(method, target.rest)?;
    let body = http_body_util::Limited::new(body, MAX_REQUEST)
        .collect()
        .await
        .map_err(|_| Refusal {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            reason: "other",
            code: "invalid_request",
            description: format!("the request body is larger than {MAX_REQUEST} bytes"),
        })?
        .to_bytes();
    let shaped = super::body::shape(body, &endpoint, state.default_max_tokens)
        .map_err(Refusal::unreadable)?;
    record.model.clone_from(&shaped.model);
    record.tools_offered = super::tools::bounded(&shaped.tools);
    if let Some(allowed) = allowed {
        match &shaped.model {
            Some(model) if tailpass_verify::glob::any(allowed.iter().copied(), model) => {}
            Some(model) => {
                return Err(Refusal::model(format!(
                    "model {model:?} is not allowed for this token"
                )));
            }
            None if endpoint.cost != Cost::Free => {
                return Err(Refusal::model(
                    "this token allows named models only; the request names none",
                ));
            }
            None => {}
        }
    }
    if let Some(allowed) = claims.tools() {
        if shaped.unread {
            return Err(Refusal::tools_unread());
        }
        if let Some(tool) = super::tools::first_refused(&allowed, &shaped.tools) {
            return Err(Refusal::tool(tool));
        }
    }
    let reservation = match (claims.quota(), claims.budget_run()) {
        (Some(quota), Some(run)) => {
            Some(
                state
                    .quotas
                    .admit(run, quota, shaped.reservation, claims.exp, now)?,
            )
        }
        _ => None,
    };
    Ok(Admitted {
        shaped,
        reservation,
    })
}
