//! The gateway end to end: an agent's token from tailpass, the gateway checking it locally,
//! and a test double of the paid upstream API behind it.
//!
//! The double (which stands in for OpenAI's API, which cannot run here) records every request
//! it receives, so the tests can assert what reached it: the real key and none of the
//! caller's credentials or account headers, only allowed endpoints. Like the real API, it
//! reports a stream's usage only when asked to (`stream_options.include_usage`), and it holds
//! a streamed answer open until the test releases it. When a chat request offers tools, it
//! answers as a model calling the first of them would (a `tool_calls` message, or its first
//! stream delta naming the function). Its Messages endpoint (Anthropic's API) answers with a
//! `tool_use` block for the first tool offered.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::IntoResponse as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tailpass::gateway::{GatewaySettings, RunningGateway, UpstreamSettings};

use crate::agents::{exchange, mint, server};
use crate::authorize::claims;
use crate::support::{CI, CI2, GATEWAY, GATEWAY_NODE, STRANGER, TestServer, admin, ip};

const UPSTREAM_KEY: &str = "sk-upstream-real-key-0123456789";

/// One request as the paid API's double received it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Value,
}

/// A test double of the paid API: what it received, and the gate holding streamed answers.
struct PaidApiDouble {
    seen: Mutex<Vec<Seen>>,
    /// Each streamed answer waits for one permit before its last chunk.
    release: tokio::sync::Semaphore,
}

impl PaidApiDouble {
    fn new() -> PaidApiDouble {
        PaidApiDouble {
            seen: Mutex::new(Vec::new()),
            release: tokio::sync::Semaphore::new(0),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// The function a chat request offers first, which the double's answer calls.
fn first_tool(request: &Value) -> Option<String> {
    request["tools"][0]["function"]["name"]
        .as_str()
        .map(str::to_owned)
}

/// The double's Messages API answer (Anthropic's shapes): a `tool_use` block for the first
/// tool offered, as one message or as its stream of events; usage 12 in, 5 out.
fn anthropic_answer(request: &Value) -> axum::response::Response {
    let tool = request["tools"][0]["name"].as_str().unwrap_or("none");
    let block = json!({"type": "tool_use", "id": "toolu_1", "name": tool, "input": {}});
    let message = |content: Value, output: u64| {
        json!({"id": "msg_1", "type": "message", "role": "assistant", "model": request["model"],
            "content": content, "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": output}})
    };
    if request["stream"] != true {
        return axum::Json(message(json!([block]), 5)).into_response();
    }
    let events = [
        (
            "message_start",
            json!({"type": "message_start", "message": message(json!([]), 1)}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": tool, "input": {}}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
        ),
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        (
            "message_delta",
            json!({"type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 5}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ];
    let text: String = events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect();
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from(text))
        .unwrap()
}

/// The usage the double reports for each answer: 7 in, 3 out (or 300 out when streamed).
async fn paid_api(
    axum::extract::State(api): axum::extract::State<Arc<PaidApiDouble>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
    api.seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: uri.path().to_owned(),
        headers,
        body: request.clone(),
    });
    match (method.as_str(), uri.path()) {
        ("POST", "/v1/chat/completions") => {}
        ("GET", "/v1/files") => {
            return axum::Json(json!({"data": [{"id": "file-abc"}]})).into_response();
        }
        ("DELETE", path) if path.starts_with("/v1/files/") => {
            return axum::Json(json!({"id": "file-abc", "deleted": true})).into_response();
        }
        ("POST", "/v1/batches") => return axum::Json(json!({"id": "batch_1"})).into_response(),
        ("POST", "/v1/files") => return axum::Json(json!({"id": "file-1"})).into_response(),
        ("POST", "/v1/messages") => return anthropic_answer(&request),
        _ => return axum::http::StatusCode::NOT_FOUND.into_response(),
    }
    let tool = first_tool(&request);
    if request["stream"] == true {
        let include_usage = request["stream_options"]["include_usage"] == true;
        let api = api.clone();
        let chunks = futures_util::stream::unfold(0u8, move |step| {
            let api = api.clone();
            let tool = tool.clone();
            async move {
                let chunk = match step {
                    0 => match tool {
                        // The name comes in the call's first delta, the arguments after it.
                        Some(name) => format!(
                            "data: {}\n\ndata: {}\n\n",
                            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [
                                {"index": 0, "id": "call_1", "type": "function", "function": {"name": name, "arguments": ""}}]}}]}),
                            json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                                {"index": 0, "function": {"arguments": "{}"}}]}}]}),
                        ),
                        None => "data: {\"choices\":[{\"delta\":{\"content\":\"chunk-1\"}}]}\n\n"
                            .to_owned(),
                    },
                    1 => {
                        // Held until released: proof of no buffering, and calls in flight.
                        api.release.acquire().await.unwrap().forget();
                        let usage = if include_usage {
                            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":300,\"total_tokens\":400}}\n\n"
                        } else {
                            ""
                        };
                        format!("{usage}data: [DONE]\n\n")
                    }
                    _ => return None,
                };
                Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), step + 1))
            }
        });
        return axum::response::Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(chunks))
            .unwrap();
    }
    let message = match tool {
        Some(name) => json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": name, "arguments": "{}"}}]}),
        None => json!({"content": "hi"}),
    };
    axum::Json(json!({
        "choices": [{"index": 0, "message": message}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    }))
    .into_response()
}

pub(crate) struct Setup {
    pub(crate) server: TestServer,
    pub(crate) gateway: RunningGateway,
    upstream: Arc<PaidApiDouble>,
    dir: tempfile::TempDir,
    _policy_dir: tempfile::TempDir,
}

/// The paid API's double on a loopback port.
async fn paid_api_double() -> (Arc<PaidApiDouble>, SocketAddr) {
    let upstream = Arc::new(PaidApiDouble::new());
    let app = Router::new()
        .fallback(paid_api)
        .with_state(upstream.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (upstream, addr)
}

impl Setup {
    async fn new() -> Setup {
        Setup::with(|_| {}).await
    }

    /// A server with the agent policy, and a gateway whose settings `configure` adjusts.
    async fn with(configure: impl FnOnce(&mut GatewaySettings)) -> Setup {
        let (server, policy_dir) = server(&[]).await;
        Setup::in_front_of(server, policy_dir, configure).await
    }

    pub(crate) async fn in_front_of(
        server: TestServer,
        policy_dir: tempfile::TempDir,
        configure: impl FnOnce(&mut GatewaySettings),
    ) -> Setup {
        let (upstream, upstream_addr) = paid_api_double().await;
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("upstream.key");
        std::fs::write(&key_file, format!("{UPSTREAM_KEY}\n")).unwrap();
        let table = dir.path().join("peers.json");
        std::fs::write(&table, crate::support::peers_table().to_string()).unwrap();
        let identity = Arc::new(tailpass::identity::local::LocalTable::from_file(&table).unwrap());
        let mut settings = GatewaySettings {
            public_url: "http://gateway.invalid".into(),
            source_address: Some(ip(GATEWAY_NODE)),
            audit_file: Some(dir.path().join("calls.jsonl")),
            ..GatewaySettings::new(
                "127.0.0.1:0".parse().unwrap(),
                server.url(""),
                GATEWAY,
                UpstreamSettings::new(format!("http://{upstream_addr}"), key_file),
            )
        };
        configure(&mut settings);
        let gateway = tailpass::gateway::start(
            settings,
            identity,
            server.clock.clone() as Arc<dyn tailpass::clock::Clock>,
        )
        .await
        .unwrap();
        Setup {
            server,
            gateway,
            upstream,
            dir,
            _policy_dir: policy_dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.addr())
    }

    /// A client connecting from peer `from`.
    fn peer(&self, from: u8) -> reqwest::Client {
        reqwest::Client::builder()
            .local_address(ip(from))
            .build()
            .unwrap()
    }

    /// A chat completion through the gateway from peer `from`, read to its end: status, the
    /// `WWW-Authenticate` header, and the body.
    pub(crate) async fn call(&self, from: u8, token: &str, model: &str) -> (u16, bool, Value) {
        let response = self
            .peer(from)
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(token)
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let challenge = response.headers().contains_key("www-authenticate");
        let text = response.text().await.unwrap();
        (
            status,
            challenge,
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
    }

    /// Any request through the gateway from CI with `token`: status and JSON body.
    async fn send(&self, method: Method, path: &str, token: &str) -> (u16, Value) {
        let response = self
            .peer(CI)
            .request(method, self.url(path))
            .bearer_auth(token)
            .json(&json!({"model": "gpt-small"}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn agent_token(&self) -> String {
        self.token_of(CI).await
    }

    /// A gateway token minted for peer `from`.
    async fn token_of(&self, from: u8) -> String {
        let (status, body) = mint(&self.server, from, &[("audience", GATEWAY)]).await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The gateway's call log, one JSON object per call.
    fn call_log(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("calls.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// Waits (up to 30 s) for `done`, which the gateway makes true in its own time, e.g. once it
/// notices a caller went away. Not a timing assertion: only the outcome is checked.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting until {what}");
}

#[tokio::test]
async fn an_agent_reaches_the_upstream_through_the_gateway_which_alone_holds_the_key() {
    let setup = Setup::new().await;
    let token = setup.agent_token().await;

    // A streamed answer arrives in chunks: the first before the upstream sends the rest.
    let response = setup
        .peer(CI)
        .post(setup.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .header("x-api-key", "caller-sent-key")
        .header("cookie", "session=caller")
        .json(&json!({"model": "claude-sonnet", "stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(30), body.next())
        .await
        .expect("the first chunk arrives while the upstream still holds the rest")
        .unwrap()
        .unwrap();
    assert!(std::str::from_utf8(&first).unwrap().contains("chunk-1"));
    setup.upstream.release.add_permits(1);
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert!(String::from_utf8(rest).unwrap().contains("[DONE]"));

    let seen = setup.upstream.seen();
    assert_eq!(seen.len(), 1);
    let headers = &seen[0].headers;
    assert_eq!(
        headers["authorization"],
        format!("Bearer {UPSTREAM_KEY}").as_str()
    );
    for credential in ["x-api-key", "cookie", "dpop"] {
        assert!(!headers.contains_key(credential), "{credential} forwarded");
    }
    assert!(
        !headers
            .values()
            .any(|v| v.to_str().unwrap_or("").contains(&token)),
        "the caller's token never reaches the upstream"
    );
    // The streamed usage was charged to the run.
    let run = claims(&token)["run_id"].as_str().unwrap().to_owned();
    assert_eq!(setup.gateway.quotas().used(&run), Some((1, 400)));
}

#[tokio::test]
async fn models_and_quotas_from_the_token_are_enforced_and_children_share_the_root_budget() {
    let setup = Setup::new().await;
    let token = setup.agent_token().await;
    let (status, _, body) = setup.call(CI, &token, "gpt-4-huge").await;
    assert_eq!(status, 403);
    assert_eq!(body["error"], "model_not_allowed");
    assert!(setup.upstream.seen().is_empty());

    // The policy's quota is 3 requests per run.
    for _ in 0..3 {
        assert_eq!(setup.call(CI, &token, "gpt-small").await.0, 200);
    }
    let (status, _, body) = setup.call(CI, &token, "gpt-small").await;
    assert_eq!(status, 429);
    assert_eq!(body["error"], "quota_exceeded");

    let (status, child) = exchange(&setup.server, CI, &token, &[("audience", GATEWAY)]).await;
    assert_eq!(status, 200, "{child}");
    let child = child["access_token"].as_str().unwrap();
    assert_eq!(
        setup.call(CI, child, "gpt-small").await.0,
        429,
        "a child spends its root run's budget"
    );
    assert_eq!(setup.upstream.seen().len(), 3);

    // The gateway's own metrics count what happened.
    let metrics = setup.metrics().await;
    for line in [
        "tailpass_gateway_calls_total{status=\"200\",refused=\"\"} 3",
        "tailpass_gateway_calls_total{status=\"403\",refused=\"model\"} 1",
        "tailpass_gateway_calls_total{status=\"429\",refused=\"quota\"} 2",
        "tailpass_gateway_upstream_seconds_count{target=\"upstream\"} 3",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn a_revoked_run_is_refused_once_the_feed_event_arrives() {
    let setup = Setup::new().await;
    let token = setup.agent_token().await;
    assert_eq!(setup.call(CI, &token, "gpt-small").await.0, 200);
    revoke_run(&setup, &run_of(&token)).await;
    let (status, _, body) = setup.call(CI, &token, "gpt-small").await;
    assert_eq!(status, 401);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{body}"
    );
}

/// A compact JWS with `header` and `claims`, signed by `sign`.
fn forge(header: &Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

#[tokio::test]
async fn tokens_the_gateway_refuses_are_refused_with_the_reason() {
    let setup = Setup::new().await;
    let token = setup.agent_token().await;
    let mut parts = token.split('.');
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap()).unwrap();
    let good = claims(&token);

    let mut cases: Vec<(String, u8, &str)> = vec![(token.clone(), CI2, "bound to node")];

    let (_, docs) = mint(
        &setup.server,
        CI,
        &[("audience", "https://docs.tail1234.ts.net")],
    )
    .await;
    cases.push((
        docs["access_token"].as_str().unwrap().to_owned(),
        CI,
        "not for audience",
    ));

    let mut none_header = header.clone();
    none_header["alg"] = json!("none");
    cases.push((
        format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(none_header.to_string()),
            URL_SAFE_NO_PAD.encode(good.to_string())
        ),
        CI,
        "not accepted",
    ));

    // HS256 keyed with the issuer's public key (the classic algorithm confusion).
    let jwks: Value = reqwest::get(setup.server.url("/.well-known/jwks.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let public = jwks["keys"][0].to_string();
    let mut hs_header = header.clone();
    hs_header["alg"] = json!("HS256");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, public.as_bytes());
    cases.push((
        forge(&hs_header, &good, |m| {
            ring::hmac::sign(&key, m).as_ref().to_vec()
        }),
        CI,
        "not accepted",
    ));

    // A key of our own, under a kid the issuer never published.
    let rng = ring::rand::SystemRandom::new();
    let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let own = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    let mut unknown_kid = header.clone();
    unknown_kid["kid"] = json!("made-up-kid");
    cases.push((
        forge(&unknown_kid, &good, |m| {
            own.sign(&rng, m).unwrap().as_ref().to_vec()
        }),
        CI,
        "unknown signing key",
    ));
    // The issuer's kid, our signature.
    cases.push((
        forge(&header, &good, |m| {
            own.sign(&rng, m).unwrap().as_ref().to_vec()
        }),
        CI,
        "bad signature",
    ));

    // Signed by the issuer, bound by a member no verifier knows.
    let mut strange: tailpass_verify::AccessClaims = serde_json::from_value(good.clone()).unwrap();
    if let Some(cnf) = strange.cnf.as_mut() {
        cnf.unknown.insert(
            "x5t#S256".into(),
            json!("bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"),
        );
    }
    let state = setup.server.state();
    let strange = state
        .keys
        .sign_jwt(state.settings.signing_alg, "at+jwt", &strange)
        .unwrap();
    cases.push((strange, CI, "does not understand"));

    for (token, from, reason) in &cases {
        let (status, challenge, body) = setup.call(*from, token, "gpt-small").await;
        assert_eq!(status, 401, "{reason}");
        assert!(challenge);
        assert_eq!(body["error"], "invalid_token", "{reason}: {body}");
        assert!(
            body["error_description"].as_str().unwrap().contains(reason),
            "{reason}: {body}"
        );
    }

    // And once time has passed its expiry (the gateway shares the test's clock).
    setup.server.clock.advance(600 + 60);
    let (status, _, body) = setup.call(CI, &token, "gpt-small").await;
    assert_eq!(status, 401);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );
    assert!(setup.upstream.seen().is_empty());
}

#[tokio::test]
async fn a_dpop_bound_token_needs_its_key_at_the_gateway() {
    let setup = Setup::new().await;
    let (token, key) = dpop_token(&setup).await;
    let token = token.as_str();
    // The URL callers use, as the gateway was told (`public_url`).
    let htu = "http://gateway.invalid/v1/chat/completions";
    let send = |scheme: &'static str, proof: Option<String>| {
        let mut request = reqwest::Client::builder()
            .local_address(ip(CI))
            .build()
            .unwrap()
            .post(setup.url("/v1/chat/completions"))
            .header("authorization", format!("{scheme} {token}"))
            .json(&json!({"model": "gpt-small", "messages": []}));
        if let Some(proof) = proof {
            request = request.header("dpop", proof);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or_default())
        }
    };
    let good = key.proof("POST", htu, Some(token), None).unwrap();
    assert_eq!(send("DPoP", Some(good.clone())).await.0, 200);
    let (status, body) = send("DPoP", Some(good)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_dpop_proof")),
        "replayed: {body}"
    );
    let (status, body) = send("Bearer", None).await;
    assert_eq!(status, 401, "without its key: {body}");
    let thief = tailpass::dpop::ProofKey::generate().unwrap();
    let stolen = thief.proof("POST", htu, Some(token), None).unwrap();
    let (status, body) = send("DPoP", Some(stolen)).await;
    assert_eq!(status, 401, "another key: {body}");
    assert!(
        body["error_description"].as_str().unwrap().contains("key"),
        "{body}"
    );
    assert_eq!(setup.upstream.seen().len(), 1);
}

/// Sends `METHOD path` from CI as raw HTTP/1.1, so the path reaches the gateway exactly as
/// written (HTTP clients normalize `..` away); the status and JSON body.
async fn raw_request(setup: &Setup, method: &str, path: &str, token: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip(CI), 0)).unwrap();
    let mut stream = socket.connect(setup.gateway.addr()).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: gateway.invalid\r\nauthorization: Bearer {token}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_token_limited_to_one_model_cannot_delete_files_under_the_shared_key() {
    let setup = Setup::new().await;
    let token = setup.agent_token().await;
    for (method, path) in [
        (Method::DELETE, "/v1/files/file-abc"),
        (Method::GET, "/v1/files"),
        (Method::POST, "/v1/batches"),
        (Method::GET, "/v1/chat/completions"),
    ] {
        let (status, body) = setup.send(method.clone(), path, &token).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("endpoint_not_allowed")),
            "{method} {path}: {body}"
        );
    }
    for path in [
        "/v1/chat/completions/../../v1/files/file-abc",
        "/v1/files%2Ffile-abc",
        "/v1//files",
    ] {
        let (status, body) = raw_request(&setup, "DELETE", path, &token).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{path}: {body}"
        );
    }
    assert!(
        setup.upstream.seen().is_empty(),
        "nothing but inference reaches the upstream"
    );
    assert_eq!(setup.call(CI, &token, "gpt-small").await.0, 200);
    let metrics = setup.metrics().await;
    for line in [
        "tailpass_gateway_calls_total{status=\"403\",refused=\"endpoint\"} 4",
        "tailpass_gateway_calls_total{status=\"400\",refused=\"endpoint\"} 3",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    let run = claims(&token)["run_id"].as_str().unwrap().to_owned();
    let refused: Vec<Value> = setup
        .call_log()
        .into_iter()
        .filter(|c| c["reason"] == "endpoint")
        .collect();
    assert_eq!(refused.len(), 7);
    assert!(
        refused.iter().all(|c| c["run_id"] == run.as_str()),
        "{refused:?}"
    );

    // What the operator opts in is forwarded; the rest stays refused.
    let setup = Setup::with(|s| {
        s.upstreams[0].paths =
            vec![tailpass::gateway::endpoints::Endpoint::parse("POST /v1/batches").unwrap()];
    })
    .await;
    let token = setup.agent_token().await;
    assert_eq!(setup.send(Method::POST, "/v1/batches", &token).await.0, 200);
    assert_eq!(
        setup
            .send(Method::DELETE, "/v1/files/file-abc", &token)
            .await
            .0,
        403
    );
    let seen = setup.upstream.seen();
    assert_eq!(
        seen.iter()
            .map(|s| (s.method.as_str(), s.path.as_str()))
            .collect::<Vec<_>>(),
        [("POST", "/v1/batches")]
    );
}

fn run_of(token: &str) -> String {
    claims(token)["run_id"].as_str().unwrap().to_owned()
}

/// What the gateway reserves for a call with `body` and output limit `max_tokens`: the limit
/// plus a token per 4 bytes of body.
fn reservation_of(body: &Value, max_tokens: u64) -> u64 {
    max_tokens + (body.to_string().len() as u64).div_ceil(4)
}

/// A streamed chat completion from CI, left open (the double holds its end until released).
async fn open_stream(setup: &Setup, token: &str, body: Value) -> reqwest::Response {
    let response = setup
        .peer(CI)
        .post(setup.url("/v1/chat/completions"))
        .bearer_auth(token)
        .header("accept-encoding", "gzip, br")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response
}

#[tokio::test]
async fn a_streamed_call_cannot_hide_its_usage_from_the_run_budget() {
    let setup = Setup::new().await;
    let token = setup.agent_token().await;
    let run = claims(&token)["run_id"].as_str().unwrap().to_owned();
    // The caller asks for no usage report and for a compressed answer the gateway can't read.
    let body = json!({"model": "gpt-small", "stream": true, "max_tokens": 50,
                      "stream_options": {"include_usage": false}, "messages": []});
    let response = open_stream(&setup, &token, body).await;
    setup.upstream.release.add_permits(1);
    let text = response.text().await.unwrap();
    assert!(text.contains("\"usage\""), "{text}");
    let seen = setup.upstream.seen();
    assert_eq!(seen[0].body["stream_options"]["include_usage"], true);
    assert_eq!(seen[0].headers["accept-encoding"], "identity");
    assert_eq!(
        setup.gateway.quotas().used(&run),
        Some((1, 100 + 300)),
        "input plus output tokens, as the upstream reported them"
    );
    assert_eq!(setup.gateway.quotas().reserved(&run), Some(0));
}

#[tokio::test]
async fn concurrent_calls_cannot_overshoot_the_token_budget_by_more_than_one_reservation() {
    let setup = Setup::new().await;
    let token = setup.agent_token().await;
    let run = run_of(&token);
    // The policy's budget is 1000 tokens; each call reserves 600 plus its input estimate.
    let body = json!({"model": "gpt-small", "stream": true, "max_tokens": 600, "messages": []});
    let reservation = reservation_of(&body, 600);
    let first = open_stream(&setup, &token, body.clone()).await;
    let second = open_stream(&setup, &token, body.clone()).await;
    assert_eq!(setup.gateway.quotas().reserved(&run), Some(2 * reservation));
    // 2 × 620 is over the budget by less than one reservation; a third call, which would
    // start with the budget already spoken for, is refused.
    let (status, _, refused) = setup.call(CI, &token, "gpt-small").await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (429, Some("quota_exceeded"))
    );
    setup.upstream.release.add_permits(2);
    first.text().await.unwrap();
    second.text().await.unwrap();
    assert_eq!(setup.gateway.quotas().used(&run), Some((2, 800)));
    assert_eq!(setup.gateway.quotas().reserved(&run), Some(0));
    assert_eq!(setup.upstream.seen().len(), 2);
}

#[tokio::test]
async fn a_call_cut_short_before_its_usage_arrives_is_charged_its_reservation() {
    let setup = Setup::new().await;
    let token = setup.agent_token().await;
    let run = run_of(&token);
    let body = json!({"model": "gpt-small", "stream": true, "max_tokens": 200, "messages": []});
    let reservation = reservation_of(&body, 200);
    let response = open_stream(&setup, &token, body).await;
    let mut chunks = response.bytes_stream();
    assert!(chunks.next().await.is_some(), "the first chunk");
    drop(chunks);
    let quotas = setup.gateway.quotas().clone();
    until("the gateway settles the abandoned call", || {
        quotas.reserved(&run) == Some(0)
    })
    .await;
    assert_eq!(quotas.used(&run), Some((1, reservation)));
}

#[tokio::test]
async fn a_caller_cannot_pick_the_account_billed_under_the_shared_key() {
    let setup = Setup::with(|s| {
        s.upstreams[0].pin_headers = vec![
            tailpass::gateway::headers::parse_pin("OpenAI-Organization", "org-operator").unwrap(),
        ];
    })
    .await;
    let token = setup.agent_token().await;
    let response = setup
        .peer(CI)
        .post(setup.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .header("openai-organization", "org-caller")
        .header("openai-project", "proj-caller")
        .json(&json!({"model": "gpt-small", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = setup.upstream.seen();
    let headers = &seen[0].headers;
    assert_eq!(
        headers
            .get_all("openai-organization")
            .iter()
            .collect::<Vec<_>>(),
        ["org-operator"]
    );
    assert!(!headers.contains_key("openai-project"), "{headers:?}");
}

#[tokio::test]
async fn a_token_without_a_models_claim_is_refused_unless_the_gateway_allows_unrestricted() {
    let setup = Setup::new().await;
    // The gateway node's rule grants the gateway audience with no claims at all.
    let unrestricted = setup.token_of(GATEWAY_NODE).await;
    assert!(claims(&unrestricted).get("models").is_none());
    let (status, _, body) = setup.call(GATEWAY_NODE, &unrestricted, "gpt-4-huge").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("model_not_allowed")),
        "{body}"
    );
    assert!(setup.upstream.seen().is_empty());

    let setup = Setup::with(|s| s.allow_unrestricted = true).await;
    let unrestricted = setup.token_of(GATEWAY_NODE).await;
    assert_eq!(
        setup
            .call(GATEWAY_NODE, &unrestricted, "gpt-4-huge")
            .await
            .0,
        200
    );
}

/// A DPoP-bound gateway token for CI, with its proof key.
async fn dpop_token(setup: &Setup) -> (String, tailpass::dpop::ProofKey) {
    let key = tailpass::dpop::ProofKey::generate().unwrap();
    let token_url = setup.server.url("/token");
    let proof = key.proof("POST", &token_url, None, None).unwrap();
    let minted: Value = setup
        .server
        .peer(CI)
        .post(&token_url)
        .header("dpop", proof)
        .form(&[("grant_type", "client_credentials"), ("audience", GATEWAY)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(minted["token_type"], "DPoP", "{minted}");
    (minted["access_token"].as_str().unwrap().to_owned(), key)
}

/// A DPoP call to the chat endpoint from peer `from`: its status.
async fn dpop_call(setup: &Setup, from: u8, token: &str, proof: String) -> u16 {
    setup
        .peer(from)
        .post(setup.url("/v1/chat/completions"))
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", proof)
        .json(&json!({"model": "gpt-small", "messages": []}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_strangers_dpop_proofs_never_take_room_in_the_gateways_replay_cache() {
    let setup = Setup::new().await;
    let (token, key) = dpop_token(&setup).await;
    let htu = "http://gateway.invalid/v1/chat/completions";
    let thief = tailpass::dpop::ProofKey::generate().unwrap();
    // Well-formed proofs, each fresh, with requests that are not otherwise accepted: from off
    // the tailnet, from the wrong node, with a made-up token, with the wrong key.
    let forged = format!(
        "{}.e30.AAAA",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"x"}"#)
    );
    for _ in 0..10 {
        for (from, token, signer) in [
            (STRANGER, token.as_str(), &key),
            (CI2, token.as_str(), &key),
            (CI, forged.as_str(), &thief),
            (CI, token.as_str(), &thief),
        ] {
            let proof = signer.proof("POST", htu, Some(token), None).unwrap();
            assert_eq!(dpop_call(&setup, from, token, proof).await, 401);
        }
    }
    let replay = setup.gateway.verifier().replay();
    assert_eq!(replay.len(), 0, "no refused request's proof is remembered");
    let proof = key.proof("POST", htu, Some(&token), None).unwrap();
    assert_eq!(dpop_call(&setup, CI, &token, proof).await, 200);
    assert_eq!(replay.len(), 1);
    assert_eq!(setup.upstream.seen().len(), 1);
}

/// Revokes `run` through the admin API and waits until the gateway has the feed event.
/// Waits until the gateway's copy of the feed holds every revocation the server has made.
pub(crate) async fn feed_caught_up(setup: &Setup) {
    let seq = setup.server.state().revocations.last_seq();
    let revocations = setup.gateway.verifier().verifier().revocations().clone();
    let arrived =
        tokio::task::spawn_blocking(move || revocations.wait_for_seq(seq, Duration::from_secs(30)))
            .await
            .unwrap();
    assert!(arrived, "the gateway received the feed events");
}

async fn revoke_run(setup: &Setup, run: &str) {
    let (status, report) = admin(
        &setup.server,
        Method::POST,
        "/admin/api/revocations",
        Some(json!({"kind": "run", "value": run})),
    )
    .await;
    assert_eq!(status, 201, "{report}");
    let seq = setup.server.state().revocations.last_seq();
    let revocations = setup.gateway.verifier().verifier().revocations().clone();
    let arrived =
        tokio::task::spawn_blocking(move || revocations.wait_for_seq(seq, Duration::from_secs(30)))
            .await
            .unwrap();
    assert!(arrived, "the gateway received the feed event");
}

#[tokio::test]
async fn the_gateways_copy_of_the_feed_forgets_revocations_once_no_token_they_match_is_valid() {
    // Agent tokens of tag:ci live 600 s; the gateway is told tokens live at most that long.
    let setup = Setup::with(|s| s.max_token_lifetime = 600).await;
    let first = setup.agent_token().await;
    revoke_run(&setup, &run_of(&first)).await;
    let list = setup.gateway.verifier().verifier().revocations().clone();
    assert_eq!(list.len(), 1);
    let (status, _, body) = setup.call(CI, &first, "gpt-small").await;
    assert_eq!(status, 401, "{body}");

    // A token living longer than the gateway remembers revocations is refused outright.
    let long_lived = setup.token_of(GATEWAY_NODE).await;
    let (status, _, body) = setup.call(GATEWAY_NODE, &long_lived, "gpt-small").await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("longer than the 600 s"),
        "{body}"
    );

    // Once every token of the first run has expired (plus the leeway), its entry goes.
    setup
        .server
        .clock
        .advance(600 + tailpass_verify::feed::MAX_LEEWAY);
    let second = setup.agent_token().await;
    revoke_run(&setup, &run_of(&second)).await;
    assert_eq!(list.len(), 1, "only the second run's revocation is kept");
    assert_eq!(setup.call(CI, &second, "gpt-small").await.0, 401);
}

/// A TCP relay in front of the issuer that the test can cut, as a network partition would.
/// Each connection leaves from its caller's own loopback address, so the issuer still sees
/// which tailnet peer it is.
struct Relay {
    cut: tokio_util::sync::CancellationToken,
}

impl Relay {
    fn start(listener: tokio::net::TcpListener, target: SocketAddr) -> Relay {
        let cut = tokio_util::sync::CancellationToken::new();
        let stop = cut.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut inbound, from)) = accepted else {
                    continue;
                };
                let stop = stop.clone();
                tokio::spawn(async move {
                    let socket = tokio::net::TcpSocket::new_v4().unwrap();
                    socket.bind(SocketAddr::new(from.ip(), 0)).unwrap();
                    let mut outbound = socket.connect(target).await.unwrap();
                    tokio::select! {
                        () = stop.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Relay { cut }
    }
}

/// Waits until the gateway's feed connection is `open`.
async fn feed_is(setup: &Setup, open: bool) {
    let mut connection = setup.gateway.verifier().feed_connection();
    let changed =
        tokio::time::timeout(Duration::from_secs(30), connection.wait_for(|c| *c == open)).await;
    assert!(
        matches!(changed, Ok(Ok(_))),
        "the feed connection never became {open}"
    );
}

#[tokio::test]
async fn a_gateway_cut_off_from_the_revocation_feed_refuses_tokens_once_it_is_stale() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let (server, policy_dir) = server(&["--issuer", &issuer]).await;
    let relay = Relay::start(listener, server.running().addr());
    let setup = Setup::in_front_of(server, policy_dir, |_| {}).await;
    feed_is(&setup, true).await;
    let token = setup.agent_token().await;
    assert_eq!(setup.call(CI, &token, "gpt-small").await.0, 200);

    // Connected but quiet (nothing revoked for two minutes) is not stale.
    setup.server.clock.advance(120);
    assert_eq!(setup.call(CI, &token, "gpt-small").await.0, 200);

    relay.cut.cancel();
    feed_is(&setup, false).await;
    setup.server.clock.advance(10);
    assert_eq!(
        setup.call(CI, &token, "gpt-small").await.0,
        200,
        "not stale yet: 10 s of the 30 s allowed"
    );
    setup.server.clock.advance(21);
    let (status, _, body) = setup.call(CI, &token, "gpt-small").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("temporarily_unavailable")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("revocation feed"),
        "{body}"
    );
    assert_eq!(
        setup.upstream.seen().len(),
        3,
        "the stale call never reached it"
    );
    let metrics = setup.metrics().await;
    let line = "tailpass_gateway_calls_total{status=\"503\",refused=\"feed\"} 1";
    assert!(metrics.contains(line), "{line} in {metrics}");
}

/// The agent policy, with the CI runners' gateway tokens limited to some tools.
const TOOLS_POLICY: &str = r#"
[[rule]]
src = ["tag:ci"]
audiences = ["https://gateway.tail1234.ts.net"]
scopes = ["llm:chat"]
max_lifetime = 600
claims = { models = ["gpt-small", "claude-sonnet"], tools = ["get_weather", "read_*"] }
"#;

/// A server with [`TOOLS_POLICY`], and a gateway in front of the double.
async fn tools_setup() -> Setup {
    tools_setup_with(|_| {}).await
}

/// [`tools_setup`], with the gateway's settings adjusted by `configure`.
async fn tools_setup_with(configure: impl FnOnce(&mut GatewaySettings)) -> Setup {
    let policy_dir = tempfile::tempdir().unwrap();
    let policy = policy_dir.path().join("policy.toml");
    std::fs::write(&policy, TOOLS_POLICY).unwrap();
    let server = TestServer::with_args(&["--policy", policy.to_str().unwrap()]).await;
    Setup::in_front_of(server, policy_dir, configure).await
}

/// A chat completion offering `tools` (function names) through the gateway from CI.
async fn call_with_tools(
    setup: &Setup,
    token: &str,
    tools: &[&str],
    stream: bool,
) -> reqwest::Response {
    let tools: Vec<Value> = tools
        .iter()
        .map(|name| json!({"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}))
        .collect();
    setup
        .peer(CI)
        .post(setup.url("/v1/chat/completions"))
        .bearer_auth(token)
        .json(&json!({"model": "gpt-small", "stream": stream, "messages": [], "tools": tools}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn tools_outside_the_tokens_tools_claim_never_reach_the_upstream_and_tool_calls_are_logged() {
    let setup = tools_setup().await;
    let token = setup.agent_token().await;
    assert_eq!(
        claims(&token)["tools"],
        json!(["get_weather", "read_*"]),
        "the rule's claim is in the token"
    );

    // Allowed tools go through, and the model's call comes back.
    let response = call_with_tools(&setup, &token, &["get_weather", "read_file"], false).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    // Streamed, the call is read from the deltas.
    let response = call_with_tools(&setup, &token, &["read_file"], true).await;
    assert_eq!(response.status(), 200);
    setup.upstream.release.add_permits(1);
    let text = response.text().await.unwrap();
    assert!(text.contains("read_file"), "{text}");

    // A tool outside the claim: refused before anything reaches the upstream.
    let response = call_with_tools(&setup, &token, &["get_weather", "delete_repo"], false).await;
    assert_eq!(response.status(), 403);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "tool_not_allowed");
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains("delete_repo"), "{description}");
    assert_eq!(
        setup.upstream.seen().len(),
        2,
        "the refused call never arrived"
    );
    let arrived: Vec<Value> = setup
        .upstream
        .seen()
        .iter()
        .map(|s| s.body["tools"].clone())
        .collect();
    assert!(
        !arrived
            .iter()
            .any(|t| t.to_string().contains("delete_repo")),
        "{arrived:?}"
    );

    let log = setup.call_log();
    let fields = |line: &Value| {
        (
            line["status"].clone(),
            line["tools_offered"].clone(),
            line["tools_called"].clone(),
            line["reason"].clone(),
        )
    };
    assert_eq!(
        log.iter().map(fields).collect::<Vec<_>>(),
        [
            (
                json!(200),
                json!(["get_weather", "read_file"]),
                json!(["get_weather"]),
                Value::Null
            ),
            (
                json!(200),
                json!(["read_file"]),
                json!(["read_file"]),
                Value::Null
            ),
            (
                json!(403),
                json!(["get_weather", "delete_repo"]),
                Value::Null,
                json!("tool")
            ),
        ]
    );

    let metrics = setup.metrics().await;
    for line in [
        "tailpass_gateway_tools_offered_total{tool=\"get_weather\"} 2",
        "tailpass_gateway_tools_offered_total{tool=\"read_file\"} 2",
        "tailpass_gateway_tools_offered_total{tool=\"delete_repo\"} 1",
        "tailpass_gateway_tool_calls_total{tool=\"get_weather\"} 1",
        "tailpass_gateway_tool_calls_total{tool=\"read_file\"} 1",
        "tailpass_gateway_calls_total{status=\"403\",refused=\"tool\"} 1",
        "tailpass_gateway_calls_total{status=\"200\",refused=\"\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert!(!metrics.contains("tool_calls_total{tool=\"delete_repo\"}"));
}

#[tokio::test]
async fn a_token_without_a_tools_claim_may_offer_any_tool() {
    let setup = Setup::new().await;
    let token = setup.agent_token().await;
    assert_eq!(claims(&token)["tools"], Value::Null);
    let response = call_with_tools(&setup, &token, &["delete_repo"], false).await;
    assert_eq!(response.status(), 200);
    assert_eq!(setup.upstream.seen().len(), 1);
    let log = setup.call_log();
    assert_eq!(log[0]["tools_called"], json!(["delete_repo"]));
}

/// `body` as it is, posted to `path` through the gateway from CI: status and JSON answer.
async fn post_bytes(setup: &Setup, path: &str, token: &str, body: &[u8]) -> (u16, Value) {
    let response = setup
        .peer(CI)
        .post(setup.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_body_two_parsers_could_read_two_ways_never_reaches_the_upstream() {
    let files = || vec![tailpass::gateway::endpoints::Endpoint::parse("POST /v1/files").unwrap()];
    let setup = tools_setup_with(|s| s.upstreams[0].paths = files()).await;
    let token = setup.agent_token().await;
    let hidden = r#"{"model": "gpt-small", "messages": [], "tools": [{"type": "function", "function": {"name": "get_weather", "name": "delete_repo"}}]}"#;
    let model_twice = r#"{"model": "gpt-small", "messages": [], "model": "gpt-large"}"#;
    let bom = "\u{feff}{\"model\": \"gpt-small\", \"messages\": [], \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"delete_repo\"}}]}";
    let lone_surrogate = r#"{"model": "gpt-small", "messages": [{"role": "user", "content": "\udc00"}], "tools": []}"#;
    for body in [
        hidden,
        model_twice,
        bom,
        lone_surrogate,
        "[]",
        "model=gpt-small",
    ] {
        let (status, answer) =
            post_bytes(&setup, "/v1/chat/completions", &token, body.as_bytes()).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("invalid_request")),
            "{body}: {answer}"
        );
    }
    // An opted-in endpoint may take any body, but one the gateway cannot read offers tools it
    // cannot check, which a token limiting its tools is refused.
    let upload = b"--b\r\ncontent-disposition: form-data; name=\"file\"\r\n\r\n{}\r\n--b--\r\n";
    let (status, answer) = post_bytes(&setup, "/v1/files", &token, upload).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_request"))
    );
    assert!(
        setup.upstream.seen().is_empty(),
        "nothing reached the upstream"
    );

    let strict = r#"{"model": "gpt-small", "messages": [], "tools": [{"type": "function", "function": {"name": "get_weather"}}]}"#;
    let (status, _) = post_bytes(&setup, "/v1/chat/completions", &token, strict.as_bytes()).await;
    assert_eq!(status, 200);
    assert_eq!(setup.upstream.seen().len(), 1);
    let refusals = setup
        .call_log()
        .iter()
        .filter(|line| line["status"] == 400)
        .count();
    assert_eq!(refusals, 7, "each refusal is in the call log");

    // Without a tools claim, the upload goes through unread.
    let open = Setup::with(|s| s.upstreams[0].paths = files()).await;
    let token = open.agent_token().await;
    assert_eq!(post_bytes(&open, "/v1/files", &token, upload).await.0, 200);
    assert_eq!(open.upstream.seen()[0].path, "/v1/files");
}

#[tokio::test]
async fn openais_sdk_sees_its_tool_calls_and_the_refusal_of_a_tool_outside_the_claim() {
    let Some(python) = crate::support::sdk_python() else {
        return;
    };
    let setup = tools_setup().await;
    let token = setup.agent_token().await;
    // The streamed answer's end is held until released: release it ahead.
    setup.upstream.release.add_permits(1);
    let (ok, report) = crate::support::run_sdk_script(
        &python,
        "openai_tools.py",
        &[
            ("GATEWAY_URL", setup.url("")),
            ("TOKEN", token),
            ("LOCAL_ADDRESS", ip(CI).to_string()),
        ],
    )
    .await;
    assert!(ok, "{report}");
    assert_eq!(report["called"], json!(["get_weather"]));
    assert_eq!(report["streamed"], json!(["read_file"]));
    assert_eq!(report["refused"]["status"], 403);
    assert_eq!(report["refused"]["body"]["error"], "tool_not_allowed");
    let description = report["refused"]["body"]["error_description"].to_string();
    assert!(description.contains("delete_repo"), "{description}");
    assert_eq!(
        setup.upstream.seen().len(),
        2,
        "the refused call never arrived"
    );
    let called: Vec<Value> = setup
        .call_log()
        .iter()
        .map(|l| l["tools_called"].clone())
        .collect();
    assert_eq!(
        called,
        [json!(["get_weather"]), json!(["read_file"]), Value::Null]
    );
}

#[tokio::test]
async fn anthropics_sdk_sees_its_tool_use_and_the_refusal_of_a_tool_outside_the_claim() {
    let Some(python) = crate::support::sdk_python() else {
        return;
    };
    let setup = tools_setup_with(|settings| {
        settings.upstreams[0].api = tailpass::gateway::Api::Anthropic;
        settings.upstreams[0].auth = tailpass::gateway::Auth::XApiKey;
    })
    .await;
    let token = setup.agent_token().await;
    let (ok, report) = crate::support::run_sdk_script(
        &python,
        "anthropic_tools.py",
        &[
            ("GATEWAY_URL", setup.url("")),
            ("TOKEN", token),
            ("LOCAL_ADDRESS", ip(CI).to_string()),
        ],
    )
    .await;
    assert!(ok, "{report}");
    assert_eq!(report["called"], json!(["get_weather"]));
    assert_eq!(report["streamed"], json!(["read_file"]));
    assert_eq!(report["final"], json!(["read_file"]));
    assert_eq!(report["refused"]["status"], 403);
    assert_eq!(report["refused"]["body"]["error"], "tool_not_allowed");
    let seen = setup.upstream.seen();
    assert_eq!(seen.len(), 2, "the refused call never arrived");
    assert_eq!(seen[0].headers["x-api-key"], UPSTREAM_KEY);
    let log: Vec<(Value, Value, Value)> = setup
        .call_log()
        .iter()
        .map(|l| {
            (
                l["tools_offered"].clone(),
                l["tools_called"].clone(),
                l["tokens"].clone(),
            )
        })
        .collect();
    assert_eq!(
        log,
        [
            (
                json!(["get_weather", "read_file"]),
                json!(["get_weather"]),
                json!(17)
            ),
            (json!(["read_file"]), json!(["read_file"]), json!(17)),
            (
                json!(["get_weather", "delete_repo"]),
                Value::Null,
                Value::Null
            ),
        ]
    );
}

/// `tailpass audit --run R --gateway-log …`, the real binary against the running issuer's
/// admin socket and this gateway's real call log: the run's issuer events (its mint, its
/// child's and grandchild's exchanges) and its tree's calls (refused ones included), in the
/// order they happened, each saying where it came from; another run's calls and a log's
/// unreadable lines left out, the latter counted. A middle run's audit is its own subtree.
#[tokio::test]
async fn the_audit_merges_a_runs_issuer_events_with_its_gateway_calls_in_order() {
    let setup = Setup::new().await;
    let clock = &setup.server.clock;
    let root = setup.agent_token().await;
    let run = run_of(&root);
    clock.advance(1);
    assert_eq!(setup.call(CI, &root, "gpt-small").await.0, 200);
    clock.advance(1);
    let (status, child) = exchange(&setup.server, CI, &root, &[("audience", GATEWAY)]).await;
    assert_eq!(status, 200, "{child}");
    let child = child["access_token"].as_str().unwrap().to_owned();
    clock.advance(1);
    let other = setup.token_of(CI2).await;
    assert_eq!(setup.call(CI2, &other, "gpt-small").await.0, 200);
    assert_eq!(setup.call(CI, &child, "gpt-small").await.0, 200);
    assert_eq!(setup.call(CI, &child, "gpt-4-huge").await.0, 403);
    clock.advance(1);
    let (status, grandchild) = exchange(&setup.server, CI, &child, &[("audience", GATEWAY)]).await;
    assert_eq!(status, 200, "{grandchild}");
    let grandchild = grandchild["access_token"].as_str().unwrap().to_owned();
    assert_eq!(setup.call(CI, &grandchild, "gpt-small").await.0, 200);

    // A second gateway's log, with a line cut short and a call of another run.
    let second = setup.dir.path().join("second.jsonl");
    let foreign = setup.call_log()[1].clone();
    assert_eq!(foreign["run_id"], run_of(&other).as_str());
    std::fs::write(&second, format!("{{\"time\": 12\n{foreign}\n")).unwrap();

    let audit = |run: &str, json: bool| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tailpass"));
        command
            .arg("--state-dir")
            .arg(setup.server.state_dir())
            .args(["audit", "--run", run, "--gateway-log"])
            .arg(setup.dir.path().join("calls.jsonl"))
            .arg("--gateway-log")
            .arg(&second);
        if json {
            command.arg("--json");
        }
        command.output()
    };
    let json_lines = |stdout: Vec<u8>| -> Vec<Value> {
        String::from_utf8(stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    /// Each line's source, event, run and model.
    fn story(lines: &[Value]) -> Vec<[String; 4]> {
        lines
            .iter()
            .map(|l| {
                ["source", "event", "run_id", "model"]
                    .map(|k| l[k].as_str().unwrap_or("-").to_owned())
            })
            .collect()
    }
    let entry = |parts: [&str; 4]| parts.map(str::to_owned);

    let out = audit(&run, true).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("second.jsonl: 1 line(s)"),
        "the bad line is counted: {stderr}"
    );
    let lines = json_lines(out.stdout);
    let (child_run, grandchild_run) = (run_of(&child), run_of(&grandchild));
    let child_story = [
        entry(["issuer", "token_exchange", &child_run, "-"]),
        entry(["gateway", "gateway.call", &child_run, "gpt-small"]),
        entry(["gateway", "gateway.call", &child_run, "gpt-4-huge"]),
        entry(["issuer", "token_exchange", &grandchild_run, "-"]),
        entry(["gateway", "gateway.call", &grandchild_run, "gpt-small"]),
    ];
    let mut root_story = vec![
        entry(["issuer", "agent_token", &run, "-"]),
        entry(["gateway", "gateway.call", &run, "gpt-small"]),
    ];
    root_story.extend(child_story.iter().cloned());
    assert_eq!(story(&lines), root_story);
    let times: Vec<u64> = lines.iter().map(|l| l["time"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert_eq!(lines[3]["root_run_id"], run.as_str());
    assert_eq!(
        lines[3]["tokens"], 10,
        "what the gateway logged comes through"
    );
    assert_eq!(lines[4]["reason"], "model");

    let out = audit(&child_run, true).await.unwrap();
    assert_eq!(
        story(&json_lines(out.stdout)),
        child_story,
        "a middle run's tree: it and what was exchanged from it, generation by generation"
    );

    // For people: the audit's own layout, each line naming its source.
    let out = audit(&run, false).await.unwrap();
    let human = String::from_utf8(out.stdout).unwrap();
    let human: Vec<&str> = human.lines().collect();
    assert_eq!(human.len(), 7, "{human:?}");
    assert!(
        human[0].contains("agent_token") && human[0].contains("source=issuer"),
        "{human:?}"
    );
    assert!(
        human[4].contains("gateway.call")
            && human[4].contains("denied")
            && human[4].contains("source=gateway")
            && human[4].contains("model=gpt-4-huge"),
        "{human:?}"
    );
}

/// The README's OpenAI SDK setup, for real: the official SDK with `tailpass token --helper`
/// (the real binary) as its `api_key` callable. The SDK runs the helper before each request;
/// the helper hands back its cached token, so both calls are one run, which the gateway
/// charges and logs. The issuer's table also puts the CI node at 127.0.0.1, where the helper
/// binary connects from.
#[tokio::test]
async fn the_openai_sdk_with_the_token_helper_as_its_key_spends_one_run() {
    let Some(python) = crate::support::sdk_python() else {
        return;
    };
    let policy_dir = tempfile::tempdir().unwrap();
    let policy = policy_dir.path().join("policy.toml");
    std::fs::write(&policy, crate::agents::POLICY).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut table = crate::support::peers_table();
    table["127.0.0.1"] = table[ip(CI).to_string()].clone();
    let table_file = dir.path().join("peers.json");
    std::fs::write(&table_file, table.to_string()).unwrap();
    let server = TestServer::in_dir(
        dir,
        &["--policy", policy.to_str().unwrap()],
        &["--identity-file", table_file.to_str().unwrap()],
    )
    .await;
    let setup = Setup::in_front_of(server, policy_dir, |_| {}).await;
    let runtime = tempfile::tempdir().unwrap();
    let (ok, report) = crate::support::run_sdk_script(
        &python,
        "key_helper.py",
        &[
            ("TAILPASS_BIN", env!("CARGO_BIN_EXE_tailpass").to_owned()),
            ("ISSUER", setup.server.url("")),
            ("AUDIENCE", GATEWAY.to_owned()),
            ("GATEWAY_URL", setup.url("")),
            ("LOCAL_ADDRESS", ip(CI).to_string()),
            (
                "XDG_RUNTIME_DIR",
                runtime.path().to_str().unwrap().to_owned(),
            ),
        ],
    )
    .await;
    assert!(ok, "{report}");
    assert_eq!(report["contents"], json!(["hi", "hi"]));
    assert_eq!(
        report["helper_calls"], 2,
        "the SDK asks before each request"
    );
    assert_eq!(report["distinct_tokens"], 1, "and gets the cached token");

    let calls = setup.call_log();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0]["run_id"], calls[1]["run_id"]);
    assert_eq!(calls[0]["node"], "nBuildBot42CNTRL");
    let run = calls[0]["run_id"].as_str().unwrap();
    assert_eq!(setup.gateway.quotas().used(run), Some((2, 20)));
    let seen = setup.upstream.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter()
            .all(|s| s.headers["authorization"] == format!("Bearer {UPSTREAM_KEY}").as_str()),
        "the upstream sees its own key, never the token"
    );
}
