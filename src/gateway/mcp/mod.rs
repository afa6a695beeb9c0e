//! MCP servers fronted by the gateway (`[[mcp]]`: `name`, `url`, `prefix`), over streamable
//! HTTP, for both protocol generations clients speak: the session-based one (2025-06-18,
//! 2025-11-25: `Mcp-Session-Id`, answers as JSON or server-sent events, a GET stream, DELETE
//! to end the session) and the stateless one (2026-07-28: one request per POST, `Mcp-Method`
//! and `Mcp-Name` headers). A request to `<prefix><rest>` goes to `url` + `<rest>`, query
//! kept.
//!
//! Every request carries a token verified as on upstream routes, whose audience may also be
//! the route's RFC 9728 resource (`<audience><prefix>`). The token's `mcp` claim entry for the
//! server names the tools it may call (globs); a token with none is refused unless
//! `allow_unrestricted`. A `tools/call` of another tool is answered by the gateway with a
//! JSON-RPC error (HTTP 200, code [`jsonrpc::INVALID_PARAMS`], which the SDKs raise to the
//! caller as the call's failure) and never reaches the server; `tools/list` answers list only
//! the allowed tools. The caller's token never reaches the server (the MCP specification
//! forbids passing it through): only the headers MCP's transport defines are forwarded.
//! Every `tools/call` is a call record, and counted by server and outcome.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use futures_util::StreamExt as _;
use http_body_util::BodyExt as _;
use serde::Deserialize;
use tailpass_verify::AccessClaims;
use tailpass_verify::axum::{RouteResource, verify_parts};

use super::meter::{CallLog, CallRecord};
use super::routes::{RESERVED, under};
use super::{GatewayState, Shared, admission, endpoints, resource};

pub mod answer;
pub mod jsonrpc;
pub mod sessions;

/// An `[[mcp]]` table of the configuration file, as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpEntry {
    /// The server's name: the `mcp` claim's key for it, and its name in the call log.
    pub name: String,
    /// Its streamable HTTP endpoint.
    pub url: String,
    /// The gateway path it is reached under.
    pub prefix: String,
}

/// An MCP server fronted by the gateway, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpSettings {
    /// Its name (the `mcp` claim's key).
    pub name: String,
    /// Its endpoint, without a trailing `/`; a request's rest of path is appended.
    pub url: String,
    /// The gateway path it is reached under: `/…`, no trailing `/`.
    pub prefix: String,
}

/// Whether `prefix` is `/`-separated segments of unreserved URL characters.
fn valid_prefix(prefix: &str) -> bool {
    prefix.len() > 1
        && prefix.starts_with('/')
        && !prefix.ends_with('/')
        && endpoints::check_path(prefix).is_ok()
        && prefix.split('/').all(|s| s != ".")
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b))
}

/// Refuses an MCP prefix that covers an upstream's, or one an upstream's (other than the
/// catch-all `""`) covers: MCP routes are matched first, so either would silently take the
/// other's requests.
pub fn check_against_upstreams(
    servers: &[McpSettings],
    upstreams: &[super::UpstreamSettings],
) -> Result<(), String> {
    for server in servers {
        for upstream in upstreams.iter().filter(|u| !u.prefix.is_empty()) {
            if under(&server.prefix, &upstream.prefix) || under(&upstream.prefix, &server.prefix) {
                return Err(format!(
                    "[[mcp]] {:?}: prefix {} overlaps [[upstream]] {:?}'s {}",
                    server.name, server.prefix, upstream.name, upstream.prefix
                ));
            }
        }
    }
    Ok(())
}

impl McpSettings {
    /// The server `name` at `url`, reached under `prefix`.
    pub fn new(name: impl Into<String>, url: impl Into<String>, prefix: impl Into<String>) -> Self {
        McpSettings {
            name: name.into(),
            url: url.into().trim_end_matches('/').to_owned(),
            prefix: prefix.into(),
        }
    }

    /// The file's `[[mcp]]` tables, validated.
    pub fn from_entries(entries: &[McpEntry]) -> Result<Vec<McpSettings>, String> {
        let servers: Vec<McpSettings> = entries
            .iter()
            .map(|e| McpSettings::new(&e.name, &e.url, &e.prefix))
            .collect();
        McpSettings::validate(&servers)?;
        Ok(servers)
    }

    /// Refuses a list with an empty or repeated name, a URL that is not http(s), or a prefix
    /// that is not `/…` without a trailing `/`, takes the gateway's own paths, or nests in
    /// another's.
    pub fn validate(servers: &[McpSettings]) -> Result<(), String> {
        for (i, server) in servers.iter().enumerate() {
            let bad = |why: &str| format!("[[mcp]] {:?}: {why}", server.name);
            if server.name.is_empty() {
                return Err(bad("name must not be empty"));
            }
            match url::Url::parse(&server.url) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
                _ => return Err(bad("url must be an http:// or https:// URL")),
            }
            if !valid_prefix(&server.prefix) {
                return Err(bad(
                    "prefix must start with '/', not end with one, and hold only letters, \
                     digits and - . _ ~ (no '..', '//')",
                ));
            }
            if RESERVED
                .iter()
                .any(|r| under(&server.prefix, r) || under(r, &server.prefix))
            {
                return Err(bad("prefix takes one of the gateway's own paths"));
            }
            for other in servers.iter().take(i) {
                if other.name == server.name {
                    return Err(bad("name is used twice"));
                }
                if under(&server.prefix, &other.prefix) || under(&other.prefix, &server.prefix) {
                    return Err(bad(&format!(
                        "prefix overlaps {:?}'s {}",
                        other.name, other.prefix
                    )));
                }
            }
        }
        Ok(())
    }
}

/// An MCP route as served: the server, what its refusals and tokens name, and its sessions.
#[derive(Debug)]
pub struct McpRoute {
    /// The server.
    pub server: McpSettings,
    /// Its RFC 9728 resource identifier, `<audience><prefix>`, accepted as a token's `aud`.
    pub resource: String,
    /// Where its protected-resource metadata is, named by its 401s.
    pub metadata_url: String,
    /// Its sessions, each bound to the subject that opened it.
    pub sessions: sessions::Sessions,
}

impl McpRoute {
    /// The route of `server` on a gateway for `audience` reached at `public_url`.
    pub fn new(server: McpSettings, audience: &str, public_url: &str) -> McpRoute {
        McpRoute {
            resource: resource::identifier(audience, &server.prefix),
            metadata_url: resource::metadata_url(public_url, &server.prefix),
            sessions: sessions::Sessions::default(),
            server,
        }
    }
}

/// The routes of `routes`: each prefix, and everything under it.
pub fn router(routes: &[Arc<McpRoute>]) -> Router<GatewayState> {
    let mut router = Router::new();
    for route in routes {
        let handler = {
            let route = route.clone();
            move |state: State<GatewayState>, request: Request| serve(state, route, request)
        };
        router = router
            .route(&route.server.prefix, any(handler.clone()))
            .route(&format!("{}/{{*rest}}", route.server.prefix), any(handler));
    }
    router
}

/// A refusal of the gateway's own: an error JSON body (`error`, `error_description`, or a
/// JSON-RPC error), `no-store`.
#[derive(Debug, Clone)]
struct Refusal {
    status: StatusCode,
    /// The call log's and metrics' label.
    reason: &'static str,
    body: serde_json::Value,
    description: String,
}

impl Refusal {
    fn oauth(status: StatusCode, reason: &'static str, code: &str, description: String) -> Self {
        Refusal {
            status,
            reason,
            body: serde_json::json!({"error": code, "error_description": description}),
            description,
        }
    }

    fn rpc(
        status: StatusCode,
        reason: &'static str,
        id: &serde_json::Value,
        code: i64,
        description: String,
    ) -> Self {
        Refusal {
            status,
            reason,
            body: jsonrpc::error(id, code, &description),
            description,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// A request to an MCP route: the token verified, then the call checked and forwarded.
async fn serve(
    State(state): State<GatewayState>,
    route: Arc<McpRoute>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let (mut parts, body) = request.into_parts();
    let node = super::proxy::presenter(&state, &mut parts).await;
    parts
        .extensions
        .insert(RouteResource(route.resource.clone()));
    let now = state.clock.now();
    if let Err(refused) = super::ambient::authorize(&state, &mut parts, node.as_deref(), now).await
    {
        return refused;
    }
    let mut record = CallRecord {
        time: now,
        node,
        mcp_server: Some(route.server.name.clone()),
        ..CallRecord::default()
    };
    let claims = match verify_parts(&state.verifier, &parts, now).await {
        Ok(claims) => claims,
        Err(refused) => {
            tracing::info!(error = %refused.0, server = %route.server.name, "gateway refused a token");
            record.reason = match refused.0 {
                tailpass_verify::VerifyError::FeedStale(_) => "feed",
                _ => "token",
            };
            record.status = refused.status().0.as_u16();
            record.refused = Some(refused.0.to_string());
            state.log.record(&record);
            return refused.into_response_with_metadata(Some(&route.metadata_url));
        }
    };
    record.run_id = claims.run.run_id.clone();
    record.root_run_id = claims.budget_run().map(str::to_owned);
    record.sub = claims.sub.clone();
    let call = Call {
        state: &state,
        route: &route,
        claims: &claims,
        started,
        now,
    };
    match call.exchange(&parts, body, &mut record).await {
        Ok(response) => response,
        Err(refusal) => {
            record.status = refusal.status.as_u16();
            record.refused = Some(refusal.description.clone());
            record.reason = refusal.reason;
            record.latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(0);
            if record.mcp_tool.is_some() {
                let outcome = match refusal.status {
                    StatusCode::BAD_GATEWAY => "unavailable",
                    _ => "refused",
                };
                state.log.metrics().mcp_call(&route.server.name, outcome);
            }
            state.log.record(&record);
            refusal.into_response()
        }
    }
}

/// The tools a verified token may call on a server: any, or those its globs match.
#[derive(Debug, Clone)]
enum Tools {
    Any,
    Globs(Vec<String>),
}

impl Tools {
    fn allows(&self, tool: &str) -> bool {
        match self {
            Tools::Any => true,
            Tools::Globs(globs) => {
                tailpass_verify::glob::any(globs.iter().map(String::as_str), tool)
            }
        }
    }
}

/// One verified request to an MCP route.
struct Call<'a> {
    state: &'a Shared,
    route: &'a McpRoute,
    claims: &'a AccessClaims,
    started: Instant,
    now: tailpass_verify::UnixTime,
}

/// Request headers forwarded to an MCP server: those its transport defines (and the client's
/// `User-Agent`); every other one — credentials, cookies, account headers — stays here.
fn server_headers(caller: &HeaderMap) -> HeaderMap {
    const FORWARDED: &[&str] = &["accept", "content-type", "last-event-id", "user-agent"];
    let mut headers = HeaderMap::new();
    for (name, value) in caller {
        let name_str = name.as_str();
        if FORWARDED.contains(&name_str) || name_str.starts_with("mcp-") {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    headers
}

/// Whether a request header, when present, agrees with the body (2026-07-28's `Mcp-Method`
/// and `Mcp-Name` mirror it, and a server may route on them): the gateway decides on what the
/// server will run, so the two must not differ.
fn header_agrees(headers: &HeaderMap, name: &str, body: Option<&str>) -> bool {
    headers
        .get_all(name)
        .iter()
        .all(|v| v.to_str().ok() == body)
}

impl Call<'_> {
    /// Checks the request and forwards it; the server's answer, watched, or the refusal.
    async fn exchange(
        &self,
        parts: &Parts,
        body: Body,
        record: &mut CallRecord,
    ) -> Result<Response, Refusal> {
        let server = &self.route.server;
        let tools = match self.claims.mcp_tools(&server.name) {
            Some(globs) => Tools::Globs(globs.into_iter().map(str::to_owned).collect()),
            None if self.state.allow_unrestricted => Tools::Any,
            None => {
                return Err(Refusal::oauth(
                    StatusCode::FORBIDDEN,
                    "mcp",
                    "mcp_not_allowed",
                    format!(
                        "this token has no mcp entry for the MCP server {:?}",
                        server.name
                    ),
                ));
            }
        };
        let path = parts.uri.path();
        let rest = path
            .strip_prefix(server.prefix.as_str())
            .unwrap_or_default();
        endpoints::check_path(rest).map_err(|e| {
            Refusal::oauth(
                StatusCode::BAD_REQUEST,
                "endpoint",
                "invalid_request",
                e.to_string(),
            )
        })?;
        let (bytes, incoming) = match parts.method {
            Method::POST => {
                let bytes = http_body_util::Limited::new(body, admission::MAX_REQUEST)
                    .collect()
                    .await
                    .map_err(|_| {
                        Refusal::oauth(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "other",
                            "invalid_request",
                            format!(
                                "the request body is larger than {} bytes",
                                admission::MAX_REQUEST
                            ),
                        )
                    })?
                    .to_bytes();
                let incoming = jsonrpc::Incoming::parse(&bytes).map_err(|e| {
                    Refusal::rpc(
                        StatusCode::BAD_REQUEST,
                        "other",
                        &serde_json::Value::Null,
                        e.code(),
                        e.to_string(),
                    )
                })?;
                (bytes, Some(incoming))
            }
            Method::GET | Method::DELETE => (axum::body::Bytes::new(), None),
            _ => {
                return Err(Refusal::oauth(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "endpoint",
                    "invalid_request",
                    format!("{} is not a method of MCP's streamable HTTP", parts.method),
                ));
            }
        };
        let (mut call_id, mut list) = (None, false);
        if let Some(incoming) = &incoming {
            let method = incoming.method();
            if method.is_some() && !header_agrees(&parts.headers, "mcp-method", method) {
                return Err(Refusal::rpc(
                    StatusCode::BAD_REQUEST,
                    "mcp",
                    &serde_json::Value::Null,
                    jsonrpc::INVALID_REQUEST,
                    "the Mcp-Method header does not match the body's method".into(),
                ));
            }
            if let jsonrpc::Incoming::Request { method, id, tool } = incoming {
                list = method == "tools/list";
                if let Some(tool) = tool {
                    record.mcp_tool = Some(tool.clone());
                    if !header_agrees(&parts.headers, "mcp-name", Some(tool)) {
                        return Err(Refusal::rpc(
                            StatusCode::BAD_REQUEST,
                            "mcp",
                            id,
                            jsonrpc::INVALID_REQUEST,
                            "the Mcp-Name header does not match params.name".into(),
                        ));
                    }
                    if !tools.allows(tool) {
                        return Err(Refusal::rpc(
                            StatusCode::OK,
                            "mcp",
                            id,
                            jsonrpc::INVALID_PARAMS,
                            format!("tool {tool:?} is not allowed for this token"),
                        ));
                    }
                    call_id = Some(id.clone());
                }
            }
        }
        // A session is its opener's: an id from anyone else is unknown here.
        let session = parts
            .headers
            .get("mcp-session-id")
            .map(|v| v.to_str().unwrap_or_default());
        if let Some(id) = session {
            self.route
                .sessions
                .check(id, &self.claims.sub, self.now)
                .map_err(|e| {
                    Refusal::rpc(
                        StatusCode::NOT_FOUND,
                        "mcp",
                        &serde_json::Value::Null,
                        jsonrpc::INVALID_REQUEST,
                        e.to_string(),
                    )
                })?;
        }
        let target = format!(
            "{}{rest}{}",
            server.url,
            parts
                .uri
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default()
        );
        let asked = Instant::now();
        let sent = self
            .state
            .http
            .request(parts.method.clone(), &target)
            .headers(server_headers(&parts.headers))
            .body(bytes)
            .send()
            .await;
        self.state.log.metrics().mcp_server(asked.elapsed());
        let answer = sent.map_err(|e| {
            tracing::warn!(error = %e, server = %server.name, "MCP server unreachable");
            Refusal::oauth(
                StatusCode::BAD_GATEWAY,
                "other",
                "upstream_unavailable",
                format!("the MCP server {:?} did not answer", server.name),
            )
        });
        let answer = answer?;
        if answer.status() == StatusCode::UNAUTHORIZED {
            // The server wants credentials of its own, which the gateway does not send: not
            // the caller's token's fault, so not a 401 that would send it to its issuer.
            return Err(Refusal::oauth(
                StatusCode::BAD_GATEWAY,
                "other",
                "upstream_unavailable",
                format!("the MCP server {:?} refused the gateway", server.name),
            ));
        }
        self.follow_session(&parts.method, session, &answer)?;
        Ok(self.relay(answer, tools, call_id, list, record.clone()))
    }

    /// Remembers a session the server opened for this caller, forgets one it ended.
    fn follow_session(
        &self,
        method: &Method,
        session: Option<&str>,
        answer: &reqwest::Response,
    ) -> Result<(), Refusal> {
        let sessions = &self.route.sessions;
        match session {
            None => {
                let Some(opened) = answer.headers().get("mcp-session-id") else {
                    return Ok(());
                };
                let opened = opened.to_str().unwrap_or_default();
                sessions
                    .open(opened, &self.claims.sub, self.now)
                    .map_err(|e| {
                        Refusal::oauth(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "other",
                            "temporarily_unavailable",
                            e.to_string(),
                        )
                    })
            }
            Some(id) => {
                if *method == Method::DELETE && answer.status().is_success() {
                    sessions.end(id);
                }
                Ok(())
            }
        }
    }

    /// The server's answer streamed back, watched: listings filtered, a call's outcome read
    /// and its record written when the answer ends.
    fn relay(
        &self,
        answer: reqwest::Response,
        tools: Tools,
        call_id: Option<serde_json::Value>,
        list: bool,
        record: CallRecord,
    ) -> Response {
        let status = answer.status();
        let sse = answer
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let mut response = Response::builder().status(status);
        if let Some(out) = response.headers_mut() {
            for (name, value) in answer.headers() {
                // The server's own challenge is not the caller's business: the caller
                // authenticates to the gateway only.
                let dropped = super::headers::HOP_BY_HOP.contains(&name.as_str())
                    || name == header::WWW_AUTHENTICATE;
                if !dropped {
                    out.append(name.clone(), value.clone());
                }
            }
        }
        let allowed: Option<answer::Allowed> = match tools {
            Tools::Any => None,
            globs => Some(Box::new(move |name: &str| globs.allows(name))),
        };
        let watch = answer::Watch::new(sse, allowed, call_id.clone(), list);
        let closing = call_id.map(|_| Closing {
            record: CallRecord {
                status: status.as_u16(),
                ..record
            },
            started: self.started,
            log: self.state.log.clone(),
            failed: None,
        });
        let stream = futures_util::stream::unfold(
            (answer.bytes_stream(), Some(watch), closing),
            |(mut body, watch, mut closing)| async move {
                let mut watch = watch?;
                match body.next().await {
                    Some(Ok(chunk)) => match watch.push(&chunk) {
                        Ok(out) => {
                            if let Some(c) = closing.as_mut() {
                                c.failed = watch.failed;
                            }
                            Some((
                                Ok(axum::body::Bytes::from(out)),
                                (body, Some(watch), closing),
                            ))
                        }
                        Err(e) => Some((Err(std::io::Error::other(e)), (body, None, closing))),
                    },
                    Some(Err(e)) => Some((Err(std::io::Error::other(e)), (body, None, closing))),
                    None => {
                        let out = watch.finish();
                        if let Some(c) = closing.as_mut() {
                            c.failed = watch.failed;
                        }
                        // The record is written before the end of the answer is passed on.
                        drop(closing.take());
                        Some((Ok(axum::body::Bytes::from(out)), (body, None, None)))
                    }
                }
            },
        );
        response
            .body(Body::from_stream(stream))
            .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
    }
}

/// A forwarded `tools/call`'s record, written when its answer ends (or the caller leaves).
struct Closing {
    record: CallRecord,
    started: Instant,
    log: CallLog,
    failed: Option<bool>,
}

impl Drop for Closing {
    fn drop(&mut self) {
        self.record.tool_error = self.failed;
        let outcome = match self.failed {
            Some(false) => "ok",
            Some(true) => "tool_error",
            None => "unknown",
        };
        if let Some(server) = &self.record.mcp_server {
            self.log.metrics().mcp_call(server, outcome);
        }
        self.record.latency_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(0);
        self.log.record(&self.record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(list: &[(&str, &str, &str)]) -> Result<(), String> {
        McpSettings::validate(
            &list
                .iter()
                .map(|(n, u, p)| McpSettings::new(*n, *u, *p))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn servers_need_unique_names_http_urls_and_prefixes_of_their_own() {
        assert_eq!(
            servers(&[
                ("docs", "http://127.0.0.1:9000/mcp", "/mcp/docs"),
                ("tickets", "https://tickets.example/mcp/", "/mcp/tickets"),
            ]),
            Ok(())
        );
        for (list, error) in [
            (vec![("", "http://a/mcp", "/a")], "name"),
            (vec![("a", "ftp://a/mcp", "/a")], "url"),
            (vec![("a", "not a url", "/a")], "url"),
            (vec![("a", "http://a/mcp", "a")], "prefix must"),
            (vec![("a", "http://a/mcp", "/a/")], "prefix must"),
            (vec![("a", "http://a/mcp", "/")], "prefix must"),
            (vec![("a", "http://a/mcp", "/a/../b")], "prefix must"),
            (vec![("a", "http://a/mcp", "/a/{x}")], "prefix must"),
            (
                vec![("a", "http://a/mcp", "/.well-known/x")],
                "gateway's own",
            ),
            (vec![("a", "http://a/mcp", "/metrics")], "gateway's own"),
            (vec![("a", "http://a/mcp", "/healthz/a")], "gateway's own"),
            (
                vec![("a", "http://a/mcp", "/a"), ("a", "http://b/mcp", "/b")],
                "twice",
            ),
            (
                vec![
                    ("a", "http://a/mcp", "/mcp"),
                    ("b", "http://b/mcp", "/mcp/b"),
                ],
                "overlaps",
            ),
        ] {
            let err = servers(&list).unwrap_err();
            assert!(err.contains(error), "{list:?}: {err}");
        }
        // A sibling sharing a string prefix does not overlap.
        assert_eq!(
            servers(&[("a", "http://a/", "/mcp"), ("b", "http://b/", "/mcp2")]),
            Ok(())
        );
    }

    #[test]
    fn only_the_transports_headers_reach_the_server() {
        let mut caller = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer tok"),
            ("dpop", "proof"),
            ("cookie", "a=b"),
            ("x-api-key", "k"),
            ("x-custom-secret", "s"),
            ("accept", "application/json, text/event-stream"),
            ("content-type", "application/json"),
            ("mcp-session-id", "s1"),
            ("mcp-protocol-version", "2025-11-25"),
            ("last-event-id", "e7"),
            ("mcp-name", "search"),
        ] {
            caller.insert(name, HeaderValue::from_static(value));
        }
        let headers = server_headers(&caller);
        let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "accept",
                "accept-encoding",
                "content-type",
                "last-event-id",
                "mcp-name",
                "mcp-protocol-version",
                "mcp-session-id"
            ]
        );
    }
}
