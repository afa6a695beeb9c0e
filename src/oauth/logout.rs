//! `/logout`: RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0), GET and POST.
//!
//! With an `id_token_hint` from this server, the session it names ends — refresh family and
//! access tokens revoked, back-channel logout sent — provided the person asking is the one the
//! token is for. The browser goes back only to a post-logout redirect URI registered for that
//! client, exactly; anything else is shown, never redirected.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use url::Url;

use super::error::Error;
use super::input::{Form, Query};
use super::page;
use crate::identity::Identity;
use crate::identity::peer::CallerError;
use crate::oauth::caller::MaybeCaller;
use crate::session;
use crate::state::AppState;
use crate::tokens;

/// The logout request.
#[derive(Debug, Default, Deserialize)]
pub struct LogoutParams {
    id_token_hint: Option<String>,
    post_logout_redirect_uri: Option<String>,
    state: Option<String>,
    client_id: Option<String>,
}

enum Done {
    Redirect(String),
    Page(String),
}

/// `GET /logout`.
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    MaybeCaller(caller): MaybeCaller,
    Query(params): Query<LogoutParams>,
) -> Response {
    respond(logout(&state, caller, params).await, &headers)
}

/// `POST /logout`.
pub async fn post(
    State(state): State<AppState>,
    headers: HeaderMap,
    MaybeCaller(caller): MaybeCaller,
    Form(params): Form<LogoutParams>,
) -> Response {
    respond(logout(&state, caller, params).await, &headers)
}

fn respond(result: Result<Done, Error>, headers: &HeaderMap) -> Response {
    let html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    match result {
        Ok(Done::Redirect(location)) => match HeaderValue::from_str(&location) {
            Ok(location) => {
                let mut response = StatusCode::FOUND.into_response();
                response.headers_mut().insert(header::LOCATION, location);
                response
            }
            Err(_) => Error::invalid_request("unusable post_logout_redirect_uri").into_response(),
        },
        Ok(Done::Page(client)) => page::message(
            StatusCode::OK,
            "Signed out",
            &format!("You are signed out of {client}."),
            None,
        ),
        Err(error) => page::error_for(html, error),
    }
}

async fn logout(
    state: &AppState,
    caller: Result<Arc<Identity>, CallerError>,
    params: LogoutParams,
) -> Result<Done, Error> {
    let hint = match params.id_token_hint.as_deref() {
        Some(token) => Some(
            tokens::read_id_token_hint(token, &state.keys, state.issuer.url())
                .map_err(|e| Error::invalid_request(format!("id_token_hint: {e}")))?,
        ),
        None => None,
    };
    let client_id = match (&hint, params.client_id.as_deref()) {
        (Some(hint), Some(given))
            if hint
                .azp
                .as_deref()
                .or(hint.aud.0.first().map(String::as_str))
                != Some(given) =>
        {
            return Err(Error::invalid_request(
                "client_id does not match the id_token_hint",
            ));
        }
        (Some(hint), _) => hint.azp.clone().or_else(|| hint.aud.0.first().cloned()),
        (None, given) => given.map(str::to_owned),
    };
    let client = match &client_id {
        Some(id) => state.clients.get(id).await?,
        None => None,
    };
    if let Some(uri) = params.post_logout_redirect_uri.as_deref()
        && !client
            .as_ref()
            .is_some_and(|c| c.post_logout_redirect_uris.iter().any(|r| r == uri))
    {
        return Err(Error::invalid_request(
            "post_logout_redirect_uri is not registered for this client",
        ));
    }
    if let (Some(hint), Some(client)) = (&hint, &client) {
        let identity = caller.map_err(Error::from)?;
        let own = identity
            .user
            .as_ref()
            .is_some_and(|u| tokens::user_subject(u.id) == hint.sub);
        if !own {
            return Err(Error::access_denied(
                "this logout request is for another user",
            ));
        }
        if let Some(sid) = &hint.sid {
            let ended = session::Session {
                family: sid.clone(),
                sid: sid.clone(),
                client_id: client.client_id.clone(),
                identity: (*identity).clone(),
            };
            session::end(
                state.sessions(),
                session::Selection::One(&ended),
                session::Reason::Logout,
                state.now(),
            )
            .await?;
        }
    }
    match params.post_logout_redirect_uri {
        Some(uri) => {
            let mut url = Url::parse(&uri)
                .map_err(|_| Error::invalid_request("unusable post_logout_redirect_uri"))?;
            if let Some(s) = &params.state {
                url.query_pairs_mut().append_pair("state", s);
            }
            Ok(Done::Redirect(url.to_string()))
        }
        None => Ok(Done::Page(
            client
                .map(|c| {
                    if c.client_name.is_empty() {
                        c.client_id.0.clone()
                    } else {
                        c.client_name.clone()
                    }
                })
                .unwrap_or_else(|| "this app".into()),
        )),
    }
}
