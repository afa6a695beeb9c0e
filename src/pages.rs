//! Server-rendered HTML pages (templates in `templates/`, checked at compile time): the
//! consent page and a message page for errors shown to people and for logout.
//!
//! Every page is sent with a Content-Security-Policy that forbids scripts and framing
//! (`frame-ancestors 'none'`: a page that takes an action must not be clickjacked) and with
//! `Cache-Control: no-store`.

use askama::Template;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::grant::authorize::ConsentRequest;
use crate::oauth::error::Error;

const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'";

/// The consent page.
#[derive(Template)]
#[template(path = "consent.html")]
struct ConsentPage<'a> {
    client_name: &'a str,
    client_id: &'a str,
    registered_by: Option<&'a str>,
    redirect_uri: &'a str,
    scopes: &'a [String],
    resources: &'a [String],
    login: &'a str,
    params: &'a [(&'static str, String)],
    token: &'a str,
    action: &'a str,
}

/// A message for a person.
#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    title: &'a str,
    message: &'a str,
    code: Option<&'a str>,
}

/// A rendered page with the headers every page gets (CSP without scripts, no framing,
/// no caching), or `server_error` when rendering failed.
pub fn html(status: StatusCode, rendered: Result<String, askama::Error>) -> Response {
    match rendered {
        Ok(body) => {
            let mut response = (status, body).into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            );
            headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => Error::server_error(&e).into_response(),
    }
}

/// Renders the consent page, posting back to `action`.
pub fn consent(request: &ConsentRequest, action: &str) -> Response {
    let page = ConsentPage {
        client_name: if request.client_name.is_empty() {
            &request.client_id
        } else {
            &request.client_name
        },
        client_id: &request.client_id,
        registered_by: request.registered_by.as_deref(),
        redirect_uri: &request.redirect_uri,
        scopes: &request.scopes,
        resources: &request.resources,
        login: &request.login,
        params: &request.params,
        token: &request.token,
        action,
    };
    html(StatusCode::OK, page.render())
}

/// Renders a message page.
pub fn message(status: StatusCode, title: &str, message: &str, code: Option<&str>) -> Response {
    html(
        status,
        MessagePage {
            title,
            message,
            code,
        }
        .render(),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consent_page_escapes_what_registrants_control() {
        let request = ConsentRequest {
            client_name: "<script>alert(1)</script>".into(),
            client_id: "c1".into(),
            registered_by: Some("mallory@example.com".into()),
            redirect_uri: "https://evil.example/cb?a=\"><b>".into(),
            scopes: vec!["openid".into()],
            resources: vec![],
            login: "alice@example.com".into(),
            params: vec![("state", "\"><img src=x>".into())],
            token: "t".into(),
        };
        let response = consent(&request, "/authorize/consent");
        assert_eq!(response.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        let body = futures_body(response);
        assert!(!body.contains("<script>"), "{body}");
        assert!(!body.contains("\"><img"), "{body}");
        assert!(
            body.contains("&#60;script&#62;") || body.contains("&lt;script&gt;"),
            "escaped, not dropped: {body}"
        );
        assert!(body.contains("mallory@example.com"));
    }

    fn futures_body(response: Response) -> String {
        let bytes = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }
}
