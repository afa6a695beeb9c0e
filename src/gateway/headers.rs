//! The headers an upstream receives: the caller's minus its credentials, hop-by-hop headers
//! and the headers that pick which account pays; plus the upstream key in the header its API
//! reads, the account headers the operator pinned, and `Accept-Encoding: identity` (the
//! gateway reads usage out of the answer, which a compressed answer would hide).

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};

/// Request headers never forwarded: the caller's credentials (the upstream key replaces them)
/// and hop-by-hop headers.
const STRIPPED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "x-goog-api-key",
    "api-key",
    "openai-api-key",
    "anthropic-api-key",
    "dpop",
    "host",
    "content-length",
    "accept-encoding",
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

/// Request headers that choose the account or project billed under the upstream key: never
/// taken from the caller, only from the operator's `upstream_pin_headers`.
pub const BILLING: &[&str] = &[
    "openai-organization",
    "openai-project",
    "x-goog-user-project",
];

/// Response headers not passed back (hop-by-hop, or recomputed).
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "te",
    "trailer",
    "upgrade",
    "set-cookie",
];

/// Where the upstream key goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Auth {
    /// `Authorization: Bearer <key>` (OpenAI).
    Bearer,
    /// `x-api-key: <key>` (Anthropic).
    XApiKey,
    /// `x-goog-api-key: <key>` (Gemini).
    XGoogApiKey,
    /// No key (an upstream that needs none).
    None,
}

impl Auth {
    /// The header the key goes in and its value (marked sensitive), from the key's text.
    pub fn header(self, key: &str) -> Result<Option<(HeaderName, HeaderValue)>, String> {
        let (name, value) = match self {
            Auth::Bearer => (header::AUTHORIZATION, format!("Bearer {key}")),
            Auth::XApiKey => (HeaderName::from_static("x-api-key"), key.to_owned()),
            Auth::XGoogApiKey => (HeaderName::from_static("x-goog-api-key"), key.to_owned()),
            Auth::None => return Ok(None),
        };
        let mut value =
            HeaderValue::from_str(&value).map_err(|_| "not a valid header value".to_owned())?;
        value.set_sensitive(true);
        Ok(Some((name, value)))
    }
}

/// Parses one pinned header (`NAME=VALUE`), refusing headers the gateway sets itself.
pub fn parse_pin(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let bad = |why: &str| format!("pinned header {name:?}: {why}");
    let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad("bad name"))?;
    if STRIPPED.contains(&name.as_str()) {
        return Err(bad("the gateway sets this header itself"));
    }
    let value = HeaderValue::from_str(value.trim()).map_err(|_| bad("bad value"))?;
    Ok((name, value))
}

/// The upstream's request headers, from the caller's.
pub fn upstream_headers(
    caller: &HeaderMap,
    key: Option<&(HeaderName, HeaderValue)>,
    pinned: &[(HeaderName, HeaderValue)],
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in caller {
        let name_str = name.as_str();
        let dropped = STRIPPED.contains(&name_str)
            || BILLING.contains(&name_str)
            || pinned.iter().any(|(p, _)| p == name);
        if !dropped {
            headers.append(name.clone(), value.clone());
        }
    }
    for (name, value) in pinned {
        headers.insert(name.clone(), value.clone());
    }
    if let Some((name, value)) = key {
        headers.insert(name.clone(), value.clone());
    }
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_headers_come_from_the_operator_never_the_caller() {
        let mut caller = HeaderMap::new();
        caller.insert(
            "openai-organization",
            HeaderValue::from_static("org-caller"),
        );
        caller.insert("openai-project", HeaderValue::from_static("proj-caller"));
        caller.insert("x-goog-user-project", HeaderValue::from_static("p"));
        caller.insert("accept-encoding", HeaderValue::from_static("gzip"));
        caller.insert("x-api-key", HeaderValue::from_static("caller-key"));
        caller.insert("openai-beta", HeaderValue::from_static("assistants=v2"));
        let pinned = vec![parse_pin("OpenAI-Organization", "org-x").unwrap()];
        let key = Auth::XApiKey.header("sk-real").unwrap();
        let headers = upstream_headers(&caller, key.as_ref(), &pinned);
        assert_eq!(headers["openai-organization"], "org-x");
        assert!(!headers.contains_key("openai-project"));
        assert!(!headers.contains_key("x-goog-user-project"));
        assert_eq!(headers["x-api-key"], "sk-real");
        assert_eq!(headers["accept-encoding"], "identity");
        assert_eq!(headers["openai-beta"], "assistants=v2");
        assert!(parse_pin("Authorization", "x").is_err());
        assert!(parse_pin("bad name", "x").is_err());
    }
}
