//! Pages for people, as the OAuth endpoints and the admin UI answer them: `pages`' views
//! rendered, a rendering failure answered as `server_error`, and an OAuth error shown as a
//! page to browsers.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::error::Error;
use crate::grant::authorize::ConsentRequest;
use crate::pages;

/// A rendered page, or `server_error` when rendering failed.
pub fn rendered(page: Result<Response, askama::Error>) -> Response {
    page.unwrap_or_else(|e| Error::server_error(&e).into_response())
}

/// The consent page for `request`, posting back to `action`.
pub fn consent(request: &ConsentRequest, action: &str) -> Response {
    rendered(pages::consent(&pages::Consent {
        client_name: &request.client_name,
        client_id: &request.client_id,
        registered_by: request.registered_by.as_deref(),
        document_host: request.document_host.as_deref(),
        redirect_uri: &request.redirect_uri,
        scopes: &request.scopes,
        resources: &request.resources,
        login: &request.login,
        params: &request.params,
        token: &request.token,
        action,
    }))
}

/// A message page.
pub fn message(status: StatusCode, title: &str, message: &str, code: Option<&str>) -> Response {
    rendered(pages::message(status, title, message, code))
}

/// Shows an OAuth error to a person: an HTML page for browsers, the JSON error otherwise.
pub fn error_for(accepts_html: bool, error: Error) -> Response {
    if !accepts_html {
        return error.into_response();
    }
    let description = error
        .description()
        .unwrap_or("The request could not be completed.")
        .to_owned();
    message(
        error.status(),
        "Sign-in failed",
        &description,
        Some(error.code().as_str()),
    )
}
