//! `/authorize` (GET and POST) and the consent form's POST.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::input::{Body, Form, Query, parse_form};
use super::page;
use super::paths;
use crate::grant::authorization_code::{self, AuthorizeParams, Outcome};
use crate::oauth::caller::{Caller, MaybeCaller, SameOrigin};
use crate::state::AppState;

fn accepts_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

fn respond(outcome: Outcome, headers: &HeaderMap, status: StatusCode) -> Response {
    match outcome {
        Outcome::Show(error) => page::error_for(accepts_html(headers), error),
        Outcome::Consent(request) => page::consent(&request, paths::AUTHORIZE_CONSENT),
        Outcome::Redirect(location) => match HeaderValue::from_str(&location) {
            Ok(location) => {
                let mut response = status.into_response();
                response.headers_mut().insert(header::LOCATION, location);
                response
                    .headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                response
            }
            Err(_) => {
                crate::oauth::error::Error::invalid_request("the redirect URI cannot be used")
                    .into_response()
            }
        },
    }
}

/// `GET /authorize`.
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    MaybeCaller(caller): MaybeCaller,
    Query(params): Query<AuthorizeParams>,
) -> Response {
    let outcome = authorization_code::authorize(&state, caller, params, false).await;
    respond(outcome, &headers, StatusCode::FOUND)
}

/// `POST /authorize` (form-encoded, OIDC Core §3.1.2.1).
pub async fn post(
    State(state): State<AppState>,
    headers: HeaderMap,
    MaybeCaller(caller): MaybeCaller,
    Form(params): Form<AuthorizeParams>,
) -> Response {
    let outcome = authorization_code::authorize(&state, caller, params, false).await;
    respond(outcome, &headers, StatusCode::SEE_OTHER)
}

#[derive(Debug, Deserialize)]
struct Answer {
    consent_token: String,
    decision: String,
}

/// `POST /authorize/consent`: the consent page's form. Same-origin only: the network identity
/// is ambient, so another site must not be able to approve on the user's behalf.
pub async fn consent(
    State(state): State<AppState>,
    _: SameOrigin,
    headers: HeaderMap,
    Caller(identity): Caller,
    Body(body): Body,
) -> Response {
    // The same body holds the original request and the answer.
    let parsed = parse_form::<AuthorizeParams>(&body)
        .and_then(|p| parse_form::<Answer>(&body).map(|a| (p, a)));
    let (params, answer) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => return page::error_for(accepts_html(&headers), e),
    };
    let approve = answer.decision == "approve";
    let outcome =
        authorization_code::consent(&state, identity, params, &answer.consent_token, approve).await;
    respond(outcome, &headers, StatusCode::SEE_OTHER)
}
