//! Server-rendered HTML pages (templates in `templates/`, checked at compile time): the
//! consent page and a message page for errors shown to people and for logout.
//!
//! A leaf view layer: pages take plain view values and return their rendering failure
//! (`askama::Error`) to the caller, which decides how to answer it (`oauth::page`).
//!
//! Every page is sent with a Content-Security-Policy that forbids scripts and framing
//! (`frame-ancestors 'none'`: a page that takes an action must not be clickjacked) and with
//! `Cache-Control: no-store`.

use askama::Template;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'";

/// What the consent page shows, and the form it posts back.
#[derive(Debug, Clone, Copy)]
pub struct Consent<'a> {
    /// The client's name as registered (empty: the page shows its id).
    pub client_name: &'a str,
    /// The client id.
    pub client_id: &'a str,
    /// Who registered the client, for a self-registered one.
    pub registered_by: Option<&'a str>,
    /// The host serving the client's metadata document, for a client identified by one:
    /// the site that is asking.
    pub document_host: Option<&'a str>,
    /// Where the code will go.
    pub redirect_uri: &'a str,
    /// The scopes asked for.
    pub scopes: &'a [String],
    /// The resources asked for.
    pub resources: &'a [String],
    /// The person asked.
    pub login: &'a str,
    /// The request, posted back as hidden fields.
    pub params: &'a [(&'static str, String)],
    /// The form's proof that this server showed it.
    pub token: &'a str,
    /// Where the form posts.
    pub action: &'a str,
}

/// The consent page's template.
#[derive(Template)]
#[template(path = "consent.html")]
struct ConsentPage<'a> {
    client_name: &'a str,
    client_id: &'a str,
    registered_by: Option<&'a str>,
    document_host: Option<&'a str>,
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

/// A rendered page with the headers every page gets: CSP without scripts, no framing, no
/// caching.
pub fn html(status: StatusCode, body: String) -> Response {
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

/// Renders the consent page.
pub fn consent(view: &Consent<'_>) -> Result<Response, askama::Error> {
    let page = ConsentPage {
        client_name: if view.client_name.is_empty() {
            view.client_id
        } else {
            view.client_name
        },
        client_id: view.client_id,
        registered_by: view.registered_by,
        document_host: view.document_host,
        redirect_uri: view.redirect_uri,
        scopes: view.scopes,
        resources: view.resources,
        login: view.login,
        params: view.params,
        token: view.token,
        action: view.action,
    };
    Ok(html(StatusCode::OK, page.render()?))
}

/// Renders a message page.
pub fn message(
    status: StatusCode,
    title: &str,
    message: &str,
    code: Option<&str>,
) -> Result<Response, askama::Error> {
    let page = MessagePage {
        title,
        message,
        code,
    };
    Ok(html(status, page.render()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consent_page_escapes_what_registrants_control() {
        let view = Consent {
            client_name: "<script>alert(1)</script>",
            client_id: "c1",
            registered_by: Some("mallory@example.com"),
            document_host: None,
            redirect_uri: "https://evil.example/cb?a=\"><b>",
            scopes: &["openid".into()],
            resources: &[],
            login: "alice@example.com",
            params: &[("state", "\"><img src=x>".into())],
            token: "t",
            action: "/authorize/consent",
        };
        let response = consent(&view).unwrap();
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

    #[test]
    fn consent_page_names_a_metadata_documents_host() {
        let view = Consent {
            client_name: "Example <MCP> client",
            client_id: "https://mcp.example.com/client.json",
            registered_by: None,
            document_host: Some("mcp.example.com"),
            redirect_uri: "http://127.0.0.1:3000/callback",
            scopes: &[],
            resources: &["https://gw.example/mcp/docs".into()],
            login: "alice@example.com",
            params: &[],
            token: "t",
            action: "/authorize/consent",
        };
        let body = futures_body(consent(&view).unwrap());
        assert!(body.contains("<code>mcp.example.com</code>"), "{body}");
        assert!(
            body.contains("Example &#60;MCP&#62; client")
                || body.contains("Example &lt;MCP&gt; client"),
            "{body}"
        );
        assert!(!body.contains("registered dynamically"), "{body}");
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
