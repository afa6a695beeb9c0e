//! `/authorize` (GET and POST) and the consent form's POST.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use url::Url;

use super::error::{Error, description_chars};
use super::input::{Body, Form, Query, parse_form};
use super::page;
use super::paths;
use crate::grant::authorize::{self, AuthorizeParams, Outcome, Redirect};
use crate::oauth::caller::SameOrigin;
use crate::oauth::caller::{Caller, MaybeCaller};
use crate::state::AppState;

fn accepts_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

/// The redirect back to the client: `pairs`, then `state` and `iss` (RFC 9207).
fn redirect_to(redirect: &Redirect, iss: &str, pairs: &[(&str, &str)]) -> Result<String, Error> {
    // Registered URIs were parsed at registration; this fails for none of them.
    let mut url = Url::parse(&redirect.uri)
        .map_err(|_| Error::invalid_request("the redirect URI is not a URL"))?;
    {
        let mut query = url.query_pairs_mut();
        for (name, value) in pairs {
            query.append_pair(name, value);
        }
        if let Some(state) = &redirect.state {
            query.append_pair("state", state);
        }
        query.append_pair("iss", iss);
    }
    Ok(url.to_string())
}

fn respond(
    state: &AppState,
    outcome: Outcome,
    headers: &HeaderMap,
    status: StatusCode,
) -> Response {
    let location = match outcome {
        Outcome::Show(shown) => return page::error_for(accepts_html(headers), shown.into()),
        Outcome::Consent(request) => return page::consent(&request, paths::AUTHORIZE_CONSENT),
        Outcome::Code { redirect, code } => {
            redirect_to(&redirect, state.issuer.url(), &[("code", code.expose())])
        }
        Outcome::Refused {
            redirect,
            refusal,
            shown,
        } => {
            let description = match shown {
                Some(shown) => shown.into(),
                None => refusal.to_string().into(),
            };
            let description = description_chars(description);
            let pairs = [
                ("error", refusal.code().as_str()),
                ("error_description", &description),
            ];
            redirect_to(&redirect, state.issuer.url(), &pairs)
        }
    };
    match location.map(|l| HeaderValue::from_str(&l)) {
        Ok(Ok(location)) => {
            let mut response = status.into_response();
            response.headers_mut().insert(header::LOCATION, location);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Ok(Err(_)) => Error::invalid_request("the redirect URI cannot be used").into_response(),
        Err(e) => page::error_for(accepts_html(headers), e),
    }
}

/// `GET /authorize`.
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    MaybeCaller(caller): MaybeCaller,
    Query(params): Query<AuthorizeParams>,
) -> Response {
    let outcome = authorize::authorize(&state.grants(), caller, params, false).await;
    respond(&state, outcome, &headers, StatusCode::FOUND)
}

/// `POST /authorize` (form-encoded, OIDC Core §3.1.2.1).
pub async fn post(
    State(state): State<AppState>,
    headers: HeaderMap,
    MaybeCaller(caller): MaybeCaller,
    Form(params): Form<AuthorizeParams>,
) -> Response {
    let outcome = authorize::authorize(&state.grants(), caller, params, false).await;
    respond(&state, outcome, &headers, StatusCode::SEE_OTHER)
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
    let ctx = state.grants();
    let outcome = authorize::consent(&ctx, identity, params, &answer.consent_token, approve).await;
    respond(&state, outcome, &headers, StatusCode::SEE_OTHER)
}
