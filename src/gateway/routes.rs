//! Which upstream a request is for: each `[[upstream]]` owns a path prefix (`/anthropic`), and
//! a request to `<prefix><rest>` goes to that upstream's base URL plus `<rest>`, with that
//! upstream's key in that upstream's header and no other. The longest matching prefix wins,
//! and a prefix matches only at a segment boundary (`/openai` is not a prefix of
//! `/openaix/…`), so no request can be steered to another provider's key by its spelling.

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};

use super::endpoints::{Api, Endpoints};
use super::headers::Auth;
use super::{GatewayError, UpstreamSettings};

/// One upstream, ready to forward to.
#[derive(Debug)]
pub struct Route {
    /// Its name (`[[upstream]]` `name`), for the call log and metrics.
    pub name: String,
    /// The path prefix it owns: `""` or `/segment[/segment…]`.
    pub prefix: String,
    /// Its base URL, without a trailing `/`.
    pub base_url: String,
    /// Its key's header and value (marked sensitive so it is never logged).
    pub key: Option<(HeaderName, HeaderValue)>,
    /// The API it speaks.
    pub api: Api,
    /// What may be forwarded to it.
    pub endpoints: Endpoints,
    /// Headers pinned on every request to it.
    pub pin_headers: Vec<(HeaderName, HeaderValue)>,
}

impl Route {
    /// The provider key header in which this route also takes the caller's token, so a tool
    /// that only knows how to set its provider's API key works unchanged (`x-api-key` on
    /// Anthropic's routes, `x-goog-api-key` on Gemini's).
    pub fn token_header(&self) -> Option<HeaderName> {
        match self.api {
            Api::Openai => None,
            Api::Anthropic => Some(HeaderName::from_static("x-api-key")),
            Api::Gemini => Some(HeaderName::from_static("x-goog-api-key")),
        }
    }

    /// Moves a token presented in this route's provider key header into `Authorization:
    /// Bearer`, where the verifier reads it, unless the request already has an
    /// `Authorization`. Both headers are stripped before the upstream sees the request.
    pub fn lift_token(&self, headers: &mut HeaderMap) {
        if headers.contains_key(header::AUTHORIZATION) {
            return;
        }
        let Some(name) = self.token_header() else {
            return;
        };
        let lifted = headers
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .map(|token| format!("{} {}", tailpass_verify::verifier::BEARER, token.trim()))
            .and_then(|value| HeaderValue::from_str(&value).ok());
        if let Some(mut value) = lifted {
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
    }

    /// The upstream URL for `rest` (the path after the prefix) and the request's `query`. On
    /// Gemini's routes a `key` query parameter (the API's other way of passing a key) is
    /// dropped: whatever a caller put there is not for the upstream.
    pub fn upstream_url(&self, rest: &str, query: Option<&str>) -> String {
        let mut url = format!("{}{rest}", self.base_url);
        let query = query.map(|q| match self.api {
            Api::Gemini => q
                .split('&')
                .filter(|pair| pair.split('=').next() != Some("key"))
                .collect::<Vec<_>>()
                .join("&"),
            Api::Openai | Api::Anthropic => q.to_owned(),
        });
        if let Some(query) = query.filter(|q| !q.is_empty()) {
            url.push('?');
            url.push_str(&query);
        }
        url
    }
}

/// Where one request goes: its route, and the rest of its path after the route's prefix (`/`
/// at least), which is what the allowlist matches and what is appended to the base URL.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The route.
    pub route: &'a Route,
    /// The path after the prefix.
    pub rest: &'a str,
}

/// The gateway's upstreams, by prefix.
#[derive(Debug)]
pub struct Routes {
    /// Longest prefix first.
    routes: Vec<Route>,
}

/// Paths the gateway answers itself, which no upstream or MCP prefix may cover.
pub const RESERVED: &[&str] = &["/healthz", "/metrics", "/.well-known"];

/// Whether `path` is `prefix` or under it, at a segment boundary.
pub fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Checks that `prefix` is `""` or `/segment[/segment…]` without a trailing `/`, dot segments,
/// encoded separators or the gateway's own paths.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Ok(());
    }
    let bad = |why: &str| Err(format!("prefix {prefix:?}: {why}"));
    if !prefix.starts_with('/') || prefix.ends_with('/') {
        return bad("must start with '/' and not end with one");
    }
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !prefix
        .get(1..)
        .unwrap_or_default()
        .split('/')
        .all(segment_ok)
    {
        return bad("segments are letters, digits, '-', '_' and '.'");
    }
    if RESERVED.iter().any(|r| under(prefix, r)) {
        return bad("the gateway serves this path itself");
    }
    Ok(())
}

fn read_key(
    upstream: &UpstreamSettings,
) -> Result<Option<(HeaderName, HeaderValue)>, GatewayError> {
    if upstream.auth == Auth::None {
        return Ok(None);
    }
    let shown = upstream.key_file.display().to_string();
    let key = std::fs::read_to_string(&upstream.key_file)
        .map_err(|e| GatewayError::Key(shown.clone(), e.to_string()))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(GatewayError::Key(shown, "empty".into()));
    }
    upstream
        .auth
        .header(key)
        .map_err(|e| GatewayError::Key(shown, e))
}

impl Routes {
    /// The routes of `upstreams`, each with its key read from its file.
    pub fn new(upstreams: &[UpstreamSettings]) -> Result<Routes, GatewayError> {
        let mut routes = upstreams
            .iter()
            .map(|upstream| {
                Ok(Route {
                    name: upstream.name.clone(),
                    prefix: upstream.prefix.clone(),
                    base_url: upstream.base_url.trim_end_matches('/').to_owned(),
                    key: read_key(upstream)?,
                    api: upstream.api,
                    endpoints: Endpoints::new(upstream.api, &upstream.paths),
                    pin_headers: upstream.pin_headers.clone(),
                })
            })
            .collect::<Result<Vec<_>, GatewayError>>()?;
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok(Routes { routes })
    }

    /// Where a request for `path` goes, if an upstream's prefix covers it.
    pub fn find<'a>(&'a self, path: &'a str) -> Option<Target<'a>> {
        self.routes.iter().find_map(|route| {
            let rest = path.strip_prefix(route.prefix.as_str())?;
            match rest {
                "" => Some(Target { route, rest: "/" }),
                rest if rest.starts_with('/') => Some(Target { route, rest }),
                _ => None,
            }
        })
    }

    /// Every route, longest prefix first.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(name: &str, prefix: &str, api: Api, dir: &std::path::Path) -> UpstreamSettings {
        let key_file = dir.join(format!("{name}.key"));
        std::fs::write(&key_file, format!("key-of-{name}\n")).unwrap();
        UpstreamSettings {
            name: name.into(),
            prefix: prefix.into(),
            api,
            auth: super::super::options::default_auth(api),
            ..UpstreamSettings::new(format!("https://{name}.example/"), key_file)
        }
    }

    #[test]
    fn the_longest_prefix_wins_at_a_segment_boundary_and_each_route_has_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let routes = Routes::new(&[
            upstream("openai", "/openai", Api::Openai, dir.path()),
            upstream("anthropic", "/anthropic", Api::Anthropic, dir.path()),
            upstream("fallback", "", Api::Openai, dir.path()),
            upstream("vertex", "/openai/vertex", Api::Gemini, dir.path()),
        ])
        .unwrap();
        let find = |path: &'static str| routes.find(path).map(|t| (t.route.name.as_str(), t.rest));
        assert_eq!(
            find("/openai/v1/chat/completions"),
            Some(("openai", "/v1/chat/completions"))
        );
        assert_eq!(
            find("/openai/vertex/v1beta/models"),
            Some(("vertex", "/v1beta/models"))
        );
        assert_eq!(find("/openai"), Some(("openai", "/")));
        assert_eq!(
            find("/openaix/v1/chat/completions"),
            Some(("fallback", "/openaix/v1/chat/completions"))
        );
        assert_eq!(
            find("/anthropic/v1/messages"),
            Some(("anthropic", "/v1/messages"))
        );
        let anthropic = routes.find("/anthropic/v1/messages").unwrap().route;
        let (name, value) = anthropic.key.as_ref().unwrap();
        assert_eq!(
            (name.as_str(), value.to_str().unwrap()),
            ("x-api-key", "key-of-anthropic")
        );
        assert!(value.is_sensitive());
        let openai = routes.find("/openai/v1/models").unwrap().route;
        let (name, value) = openai.key.as_ref().unwrap();
        assert_eq!(
            (name.as_str(), value.to_str().unwrap()),
            ("authorization", "Bearer key-of-openai")
        );
        let only_prefixed =
            Routes::new(&[upstream("openai", "/openai", Api::Openai, dir.path())]).unwrap();
        assert!(only_prefixed.find("/v1/chat/completions").is_none());
    }

    #[test]
    fn a_token_in_the_providers_key_header_is_lifted_on_that_providers_routes_only() {
        let dir = tempfile::tempdir().unwrap();
        let routes = Routes::new(&[
            upstream("openai", "/openai", Api::Openai, dir.path()),
            upstream("anthropic", "/anthropic", Api::Anthropic, dir.path()),
            upstream("gemini", "/gemini", Api::Gemini, dir.path()),
        ])
        .unwrap();
        let lifted = |path: &str, header: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header, HeaderValue::from_static("tok"));
            routes.find(path).unwrap().route.lift_token(&mut headers);
            headers
                .get(header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            lifted("/anthropic/v1/messages", "x-api-key").as_deref(),
            Some("Bearer tok")
        );
        assert_eq!(
            lifted("/gemini/v1beta/models", "x-goog-api-key").as_deref(),
            Some("Bearer tok")
        );
        assert_eq!(lifted("/openai/v1/models", "x-api-key"), None);
        assert_eq!(lifted("/anthropic/v1/messages", "x-goog-api-key"), None);
        let mut both = HeaderMap::new();
        both.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer first"),
        );
        both.insert("x-api-key", HeaderValue::from_static("second"));
        routes
            .find("/anthropic/v1/messages")
            .unwrap()
            .route
            .lift_token(&mut both);
        assert_eq!(both[header::AUTHORIZATION], "Bearer first");
    }

    #[test]
    fn a_key_in_a_gemini_query_never_reaches_the_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let routes = Routes::new(&[
            upstream("gemini", "/gemini", Api::Gemini, dir.path()),
            upstream("openai", "/openai", Api::Openai, dir.path()),
        ])
        .unwrap();
        let Target {
            route: gemini,
            rest,
        } = routes
            .find("/gemini/v1beta/models/m:streamGenerateContent")
            .unwrap();
        assert_eq!(
            gemini.upstream_url(rest, Some("alt=sse&key=caller-token&keyx=1")),
            "https://gemini.example/v1beta/models/m:streamGenerateContent?alt=sse&keyx=1"
        );
        assert_eq!(
            gemini.upstream_url(rest, Some("key=x")),
            "https://gemini.example/v1beta/models/m:streamGenerateContent"
        );
        let Target {
            route: openai,
            rest,
        } = routes.find("/openai/v1/models").unwrap();
        assert_eq!(
            openai.upstream_url(rest, Some("key=1")),
            "https://openai.example/v1/models?key=1"
        );
    }

    #[test]
    fn prefixes_are_plain_segments_away_from_the_gateways_own_paths() {
        for ok in ["", "/openai", "/llm/anthropic", "/v1.2"] {
            assert!(check_prefix(ok).is_ok(), "{ok}");
        }
        for bad in [
            "openai",
            "/openai/",
            "/a//b",
            "/a/../b",
            "/a%2Fb",
            "/metrics",
            "/.well-known/x",
            "/healthz",
            "/a b",
        ] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }
}
