//! The gateway in front of every provider at once, driven by the official OpenAI and
//! Anthropic Python SDKs (`tests/sdk/providers.py`) and by plain HTTP for Gemini.
//!
//! Behind the gateway are test doubles of the three paid APIs, which cannot run here. Each
//! speaks its provider's wire format as the SDKs parse it, JSON and server-sent events, with
//! usage where the provider puts it, and each records every request it receives, so the tests
//! can assert what reached which provider: only its own key, in its own header, none of the
//! caller's credentials, and only allowed endpoints.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::IntoResponse as _;
use base64::Engine as _;
use serde_json::{Value, json};
use tailpass::gateway::{Api, Auth, GatewaySettings, RunningGateway, UpstreamSettings};

use crate::agents::mint;
use crate::support::{CI, CI2, GATEWAY, GATEWAY_NODE, TestServer, ip, run_sdk_script, sdk_python};

const POLICY: &str = r#"
[[rule]]
src = ["tag:ci"]
audiences = ["https://gateway.tail1234.ts.net"]
max_lifetime = 600
claims = { models = ["gpt-test*", "claude-test*", "gemini-test*", "text-embedding-test"], quota = { requests = 50, tokens = 1000000 } }

[[rule]]
src = ["node:nCiRunner7CNTRL"]
audiences = ["https://gateway.tail1234.ts.net"]
max_lifetime = 600
claims = { models = ["gpt-test*", "claude-test*", "gemini-test*"], quota = { requests = 2 } }

[[rule]]
src = ["tag:gateway"]
audiences = ["https://gateway.tail1234.ts.net"]
"#;

/// One request as a provider's double received it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    query: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A test double of one paid API: what it received.
#[derive(Default)]
struct Double {
    seen: Mutex<Vec<Seen>>,
}

impl Double {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn sse(events: &[(Option<&str>, Value)], done: bool) -> axum::response::Response {
    let mut text = String::new();
    for (event, data) in events {
        if let Some(event) = event {
            text.push_str(&format!("event: {event}\n"));
        }
        text.push_str(&format!("data: {data}\n\n"));
    }
    if done {
        text.push_str("data: [DONE]\n\n");
    }
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from(text))
        .unwrap()
}

/// OpenAI's API: chat completions (with tool calls when tools are offered, and usage in a
/// stream only when `stream_options.include_usage` asks for it), responses, embeddings.
fn openai(method: &Method, path: &str, request: &Value) -> axum::response::Response {
    let model = request["model"].as_str().unwrap_or("?");
    let tools = request["tools"].as_array().is_some_and(|t| !t.is_empty());
    let stream = request["stream"] == true;
    match (method.as_str(), path) {
        ("POST", "/v1/chat/completions") if stream => {
            let chunk = |delta: Value, finish: Value| {
                json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                    "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            };
            let mut events = vec![
                (
                    None,
                    chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                ),
                (None, chunk(json!({"content": "Hel"}), Value::Null)),
                (None, chunk(json!({"content": "lo"}), Value::Null)),
            ];
            if tools {
                events.push((
                    None,
                    chunk(
                        json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": ""}}]}),
                        Value::Null,
                    ),
                ));
                events.push((
                    None,
                    chunk(
                        json!({"tool_calls": [{"index": 0,
                    "function": {"arguments": "{\"city\":\"Paris\"}"}}]}),
                        Value::Null,
                    ),
                ));
            }
            events.push((None, chunk(json!({}), json!("stop"))));
            if request["stream_options"]["include_usage"] == true {
                events.push((
                    None,
                    json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
                    "created": 1, "model": model, "choices": [],
                    "usage": {"prompt_tokens": 21, "completion_tokens": 8, "total_tokens": 29}}),
                ));
            }
            sse(&events, true)
        }
        ("POST", "/v1/chat/completions") => {
            let tool_calls = tools.then(|| {
                json!([{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}])
            });
            axum::Json(
                json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                "model": model, "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Hello", "tool_calls": tool_calls}}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}}),
            )
            .into_response()
        }
        ("POST", "/v1/responses") => {
            let response = |status: &str, usage: Value| {
                json!({"id": "resp_1", "object": "response", "created_at": 1, "status": status,
                    "model": model, "output": [{"type": "message", "id": "msg_1",
                    "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": "Hello", "annotations": []}]}],
                    "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
                    "usage": usage})
            };
            let usage = json!({"input_tokens": 11, "output_tokens": 6, "total_tokens": 17,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0}});
            if !stream {
                return axum::Json(response("completed", usage)).into_response();
            }
            let delta = |n: u64, delta: &str| {
                json!({"type": "response.output_text.delta", "sequence_number": n,
                    "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": delta,
                    "logprobs": []})
            };
            sse(
                &[
                    (
                        Some("response.created"),
                        json!({"type": "response.created",
                        "sequence_number": 0, "response": response("in_progress", Value::Null)}),
                    ),
                    (Some("response.output_text.delta"), delta(1, "Hel")),
                    (Some("response.output_text.delta"), delta(2, "lo")),
                    (
                        Some("response.completed"),
                        json!({"type": "response.completed",
                        "sequence_number": 3, "response": response("completed", usage)}),
                    ),
                ],
                false,
            )
        }
        ("POST", "/v1/embeddings") => {
            let vector = [0.25f32, 0.5, 0.75];
            let embedding = if request["encoding_format"] == "base64" {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            axum::Json(json!({"object": "list", "model": model,
                "data": [{"object": "embedding", "index": 0, "embedding": embedding}],
                "usage": {"prompt_tokens": 4, "total_tokens": 4}}))
            .into_response()
        }
        _ => axum::http::StatusCode::NOT_FOUND.into_response(),
    }
}

/// Anthropic's Messages API: a `tool_use` block when tools are offered; streams as
/// `message_start` … `message_stop`, usage in `message_start` and `message_delta`.
fn anthropic(method: &Method, path: &str, request: &Value) -> axum::response::Response {
    let model = request["model"].as_str().unwrap_or("?");
    let tools = request["tools"].as_array().is_some_and(|t| !t.is_empty());
    match (method.as_str(), path) {
        ("POST", "/v1/messages/count_tokens") => {
            axum::Json(json!({"input_tokens": 9})).into_response()
        }
        ("POST", "/v1/messages") if request["stream"] == true => {
            let mut events = vec![
                (
                    "message_start",
                    json!({"type": "message_start", "message": {"id": "msg_1",
                    "type": "message", "role": "assistant", "model": model, "content": [],
                    "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": 30, "cache_read_input_tokens": 4, "output_tokens": 1}}}),
                ),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
                ),
                ("ping", json!({"type": "ping"})),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": "Hel"}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": "lo"}}),
                ),
                (
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ),
            ];
            if tools {
                events.extend([
                    ("content_block_start", json!({"type": "content_block_start", "index": 1,
                        "content_block": {"type": "tool_use", "id": "toolu_1", "name": "search", "input": {}}})),
                    ("content_block_delta", json!({"type": "content_block_delta", "index": 1,
                        "delta": {"type": "input_json_delta", "partial_json": "{\"q\": \"x\"}"}})),
                    ("content_block_stop", json!({"type": "content_block_stop", "index": 1})),
                ]);
            }
            events.extend([
                (
                    "message_delta",
                    json!({"type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                    "usage": {"output_tokens": 12}}),
                ),
                ("message_stop", json!({"type": "message_stop"})),
            ]);
            let events: Vec<_> = events.into_iter().map(|(e, d)| (Some(e), d)).collect();
            sse(&events, false)
        }
        ("POST", "/v1/messages") => {
            let mut content = vec![json!({"type": "text", "text": "Hello"})];
            if tools {
                content.push(json!({"type": "tool_use", "id": "toolu_1", "name": "search", "input": {"q": "x"}}));
            }
            axum::Json(
                json!({"id": "msg_1", "type": "message", "role": "assistant",
                "model": model, "content": content, "stop_reason": "end_turn",
                "stop_sequence": null, "usage": {"input_tokens": 12, "output_tokens": 6}}),
            )
            .into_response()
        }
        _ => axum::http::StatusCode::NOT_FOUND.into_response(),
    }
}

/// Gemini's API: `generateContent`, and `streamGenerateContent` as server-sent events
/// (`alt=sse`), each event carrying the usage so far.
fn gemini(method: &Method, path: &str, query: &str) -> axum::response::Response {
    let Some((model, verb)) = path
        .strip_prefix("/v1beta/models/")
        .and_then(|rest| rest.split_once(':'))
    else {
        return axum::http::StatusCode::NOT_FOUND.into_response();
    };
    let answer = |text: &str, out: u64| {
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
            "index": 0}], "modelVersion": model,
            "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": out,
            "totalTokenCount": 8 + out}})
    };
    match (method.as_str(), verb) {
        ("POST", "generateContent") => axum::Json(answer("Hello", 4)).into_response(),
        ("POST", "streamGenerateContent") if query.contains("alt=sse") => {
            // Gemini ends its event lines with CRLF.
            let text = format!(
                "data: {}\r\n\r\ndata: {}\r\n\r\n",
                answer("Hel", 2),
                answer("lo", 5)
            );
            axum::response::Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from(text))
                .unwrap()
        }
        _ => axum::http::StatusCode::NOT_FOUND.into_response(),
    }
}

async fn start_double(api: Api) -> (Arc<Double>, SocketAddr) {
    let double = Arc::new(Double::default());
    let recorder = double.clone();
    let app = Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let double = recorder.clone();
            async move {
                let request: Value = serde_json::from_slice(&body).unwrap_or_default();
                let query = uri.query().unwrap_or_default().to_owned();
                double.seen.lock().unwrap().push(Seen {
                    method: method.clone(),
                    path: uri.path().to_owned(),
                    query: query.clone(),
                    headers,
                    body,
                });
                match api {
                    Api::Openai => openai(&method, uri.path(), &request),
                    Api::Anthropic => anthropic(&method, uri.path(), &request),
                    Api::Gemini => gemini(&method, uri.path(), &query),
                }
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (double, addr)
}

/// The three providers' keys: each must reach its own upstream only.
const KEYS: [(&str, Api, &str); 3] = [
    ("openai", Api::Openai, "sk-openai-real-0001"),
    ("anthropic", Api::Anthropic, "sk-ant-real-0002"),
    ("gemini", Api::Gemini, "AIza-gemini-real-0003"),
];

struct Providers {
    server: TestServer,
    gateway: RunningGateway,
    doubles: Vec<(&'static str, Arc<Double>)>,
    dir: tempfile::TempDir,
}

impl Providers {
    async fn start() -> Providers {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.toml");
        std::fs::write(&policy, POLICY).unwrap();
        let server = TestServer::with_args(&["--policy", policy.to_str().unwrap()]).await;
        let mut upstreams = Vec::new();
        let mut doubles = Vec::new();
        for (name, api, key) in KEYS {
            let (double, addr) = start_double(api).await;
            let key_file = dir.path().join(format!("{name}.key"));
            std::fs::write(&key_file, key).unwrap();
            upstreams.push(UpstreamSettings {
                name: name.into(),
                prefix: format!("/{name}"),
                api,
                auth: match api {
                    Api::Openai => Auth::Bearer,
                    Api::Anthropic => Auth::XApiKey,
                    Api::Gemini => Auth::XGoogApiKey,
                },
                ..UpstreamSettings::new(format!("http://{addr}"), key_file)
            });
            doubles.push((name, double));
        }
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
                upstreams.remove(0),
            )
        };
        settings.upstreams.extend(upstreams);
        let gateway = tailpass::gateway::start(
            settings,
            identity,
            server.clock.clone() as Arc<dyn tailpass::clock::Clock>,
        )
        .await
        .unwrap();
        Providers {
            server,
            gateway,
            doubles,
            dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.addr())
    }

    async fn token(&self, from: u8) -> String {
        let (status, body) = mint(&self.server, from, &[("audience", GATEWAY)]).await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    fn seen(&self, name: &str) -> Vec<Seen> {
        self.doubles
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, d)| d.seen())
            .unwrap()
    }

    fn call_log(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("calls.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Every double received only its own key, in its own header, and never any of `tokens`
    /// (in a header, the query or the body).
    fn assert_keys_stay_home(&self, tokens: &[&str]) {
        for (name, api, key) in KEYS {
            let header = match api {
                Api::Openai => "authorization",
                Api::Anthropic => "x-api-key",
                Api::Gemini => "x-goog-api-key",
            };
            for seen in self.seen(name) {
                let expected = if api == Api::Openai {
                    format!("Bearer {key}")
                } else {
                    key.to_owned()
                };
                assert_eq!(
                    seen.headers[header],
                    expected.as_str(),
                    "{name} {}",
                    seen.path
                );
                for (other, _, other_key) in KEYS {
                    if other != name {
                        let leaked = seen
                            .headers
                            .values()
                            .any(|v| v.to_str().unwrap_or_default().contains(other_key));
                        assert!(!leaked, "{other}'s key reached {name}");
                    }
                }
                for credential in ["authorization", "x-api-key", "x-goog-api-key"] {
                    if credential != header {
                        assert!(
                            !seen.headers.contains_key(credential),
                            "{name} got a {credential} header"
                        );
                    }
                }
                let everything = format!(
                    "{:?} {} {}",
                    seen.headers,
                    seen.query,
                    String::from_utf8_lossy(&seen.body)
                );
                for token in tokens {
                    assert!(
                        !everything.contains(token),
                        "a caller's token reached {name}"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn the_official_sdks_reach_each_provider_through_the_gateway_with_only_its_own_key() {
    let Some(python) = sdk_python() else {
        return;
    };
    let setup = Providers::start().await;
    let token = setup.token(CI).await;
    let quota_token = setup.token(CI2).await;
    let (ok, report) = run_sdk_script(
        &python,
        "providers.py",
        &[
            ("GATEWAY", setup.url("")),
            ("PEER", ip(CI).to_string()),
            ("TOKEN", token.clone()),
            ("QUOTA_PEER", ip(CI2).to_string()),
            ("QUOTA_TOKEN", quota_token.clone()),
        ],
    )
    .await;
    assert!(ok, "{report}");

    // OpenAI: chat (with a tool call), a stream whose usage the gateway asked for, the
    // Responses API both ways, embeddings; a model outside the token and a files listing
    // refused with the SDK's own errors.
    assert_eq!(
        report["openai_chat"],
        json!({"content": "Hello", "tool_calls": ["get_weather"], "usage": [20, 5]})
    );
    assert_eq!(
        report["openai_chat_stream"],
        json!({"content": "Hello", "tool_calls": ["get_weather"], "usage": [21, 8]}),
        "the SDK did not ask for usage; the gateway did"
    );
    assert_eq!(
        report["openai_responses"],
        json!({"text": "Hello", "usage": [11, 6]})
    );
    assert_eq!(report["openai_responses_stream"]["text"], "Hello");
    assert_eq!(report["openai_responses_stream"]["usage"], json!([11, 6]));
    assert_eq!(
        report["openai_embeddings"],
        json!({"dimensions": 3, "first": 0.25})
    );
    assert_eq!(
        (
            &report["openai_forbidden_model"]["error"],
            &report["openai_forbidden_model"]["status"],
            &report["openai_forbidden_model"]["code"]
        ),
        (
            &json!("PermissionDeniedError"),
            &json!(403),
            &json!("model_not_allowed")
        )
    );
    assert_eq!(report["openai_files"]["status"], 403, "{report}");
    assert_eq!(report["openai_files"]["code"], "endpoint_not_allowed");

    // Anthropic: messages with a tool use, the same with the token in x-api-key, the SDK's
    // stream helper, count_tokens; refusals as the SDK's errors.
    let message = json!({"text": "Hello", "tool_uses": ["search"], "usage": [12, 6]});
    assert_eq!(report["anthropic_messages"], message);
    assert_eq!(report["anthropic_messages_by_key_header"], message);
    assert_eq!(
        report["anthropic_stream"],
        json!({"text": "Hello", "tool_uses": ["search"], "usage": [30, 12]})
    );
    assert_eq!(report["anthropic_count_tokens"], 9);
    assert_eq!(report["anthropic_forbidden_model"]["status"], 403);
    assert_eq!(
        report["anthropic_forbidden_model"]["code"],
        "model_not_allowed"
    );
    assert_eq!(report["anthropic_batches"]["status"], 403, "{report}");

    // One run's budget across providers: two requests, then both SDKs see 429.
    assert_eq!(report["quota_openai_1"], "Hello");
    assert_eq!(report["quota_anthropic_1"], "Hello");
    for step in ["quota_openai_2", "quota_anthropic_2"] {
        assert_eq!(
            (
                &report[step]["error"],
                &report[step]["status"],
                &report[step]["code"]
            ),
            (
                &json!("RateLimitError"),
                &json!(429),
                &json!("quota_exceeded")
            ),
            "{step}: {report}"
        );
    }

    // What reached the doubles: only allowed endpoints, each provider's own key.
    let paths = |name: &str| -> Vec<String> {
        setup
            .seen(name)
            .iter()
            .map(|s| format!("{} {}", s.method, s.path))
            .collect()
    };
    assert_eq!(
        paths("openai"),
        [
            "POST /v1/chat/completions",
            "POST /v1/chat/completions",
            "POST /v1/responses",
            "POST /v1/responses",
            "POST /v1/embeddings",
            "POST /v1/chat/completions",
        ]
    );
    assert_eq!(
        paths("anthropic"),
        [
            "POST /v1/messages",
            "POST /v1/messages",
            "POST /v1/messages",
            "POST /v1/messages/count_tokens",
            "POST /v1/messages",
        ]
    );
    assert!(paths("gemini").is_empty());
    for seen in setup.seen("anthropic") {
        assert!(
            seen.headers.contains_key("anthropic-version"),
            "provider headers pass through"
        );
    }
    setup.assert_keys_stay_home(&[&token, &quota_token]);

    // The call log: each call's upstream, model and usage in and out.
    let log = setup.call_log();
    let find = |upstream: &str, model: &str, tokens_out: u64| {
        log.iter().find(|r| {
            r["upstream"] == upstream && r["model"] == model && r["tokens_out"] == tokens_out
        })
    };
    let streamed = find("openai", "gpt-test-mini", 8).expect("the OpenAI stream's record");
    assert_eq!(
        (&streamed["tokens_in"], &streamed["tokens"]),
        (&json!(21), &json!(29))
    );
    let streamed = find("anthropic", "claude-test", 12).expect("the Anthropic stream's record");
    assert_eq!(
        (&streamed["tokens_in"], &streamed["tokens"]),
        (&json!(34), &json!(46)),
        "input counts cache reads"
    );
    assert_eq!(
        (&streamed["tools_offered"], &streamed["tools_called"]),
        (&json!(["search"]), &json!(["search"])),
        "the tool use is read out of the Anthropic stream"
    );
    let streamed = find("openai", "gpt-test-mini", 8).unwrap();
    assert_eq!(
        (&streamed["tools_offered"], &streamed["tools_called"]),
        (&json!(["get_weather"]), &json!(["get_weather"])),
        "the tool call is read out of the OpenAI stream's deltas"
    );
    let embedding = log
        .iter()
        .find(|r| r["model"] == "text-embedding-test")
        .unwrap();
    assert_eq!(
        (&embedding["tokens_in"], &embedding["tokens"]),
        (&json!(4), &json!(4))
    );
    let refused: Vec<_> = log
        .iter()
        .filter(|r| r["reason"] == "model")
        .map(|r| (r["upstream"].clone(), r["model"].clone()))
        .collect();
    assert_eq!(
        refused,
        [
            (json!("openai"), json!("gpt-5-expensive")),
            (json!("anthropic"), json!("claude-opus-expensive"))
        ]
    );
}

#[tokio::test]
async fn gemini_over_plain_http_with_its_own_key_header_metered_and_limited() {
    let setup = Providers::start().await;
    let token = setup.token(CI).await;
    let client = crate::support::peer(CI);
    let call = |path: &str, model: &str, header: (&'static str, String)| {
        client
            .post(setup.url(&format!("/gemini/v1beta/models/{model}:{path}")))
            .header(header.0, header.1)
            .json(&json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}))
            .send()
    };
    let answer = call(
        "generateContent",
        "gemini-test-flash",
        ("x-goog-api-key", token.clone()),
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(
        body["candidates"][0]["content"]["parts"][0]["text"],
        "Hello"
    );

    // Streamed, with the token as a bearer and a caller's `key` in the query, which the
    // upstream must not see.
    let streamed = call(
        "streamGenerateContent?alt=sse&key=caller-secret",
        "gemini-test-pro",
        ("authorization", format!("Bearer {token}")),
    )
    .await
    .unwrap();
    assert_eq!(streamed.status(), 200);
    let text = streamed.text().await.unwrap();
    assert_eq!(text.matches("data: ").count(), 2, "{text}");

    let forbidden = call(
        "generateContent",
        "gemini-ultra",
        ("x-goog-api-key", token.clone()),
    )
    .await
    .unwrap();
    assert_eq!(forbidden.status(), 403);
    let body: Value = forbidden.json().await.unwrap();
    assert_eq!(body["error"], "model_not_allowed");

    // The model is read from the path for Gemini, and a path the API's allowlist lacks
    // reaches nothing.
    let files = client
        .get(setup.url("/gemini/v1beta/files"))
        .header("x-goog-api-key", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(files.status(), 403);

    // Quota: the CI2 rule allows two requests per run.
    let limited = setup.token(CI2).await;
    let from_ci2 = crate::support::peer(CI2);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = from_ci2
            .post(setup.url("/gemini/v1beta/models/gemini-test:generateContent"))
            .header("x-goog-api-key", &limited)
            .json(&json!({"contents": []}))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429]);

    let seen = setup.seen("gemini");
    assert_eq!(
        seen.iter()
            .map(|s| format!("{} {}", s.path, s.query))
            .collect::<Vec<_>>(),
        [
            "/v1beta/models/gemini-test-flash:generateContent ",
            "/v1beta/models/gemini-test-pro:streamGenerateContent alt=sse",
            "/v1beta/models/gemini-test:generateContent ",
            "/v1beta/models/gemini-test:generateContent ",
        ]
    );
    setup.assert_keys_stay_home(&[&token, &limited, "caller-secret"]);
    let log = setup.call_log();
    let stream = log
        .iter()
        .find(|r| r["model"] == "gemini-test-pro")
        .unwrap();
    assert_eq!(
        (
            &stream["upstream"],
            &stream["tokens_in"],
            &stream["tokens_out"]
        ),
        (&json!("gemini"), &json!(8), &json!(5)),
        "cumulative usage is counted once"
    );
}

#[tokio::test]
async fn requests_outside_every_allowlist_never_reach_any_upstream() {
    let setup = Providers::start().await;
    let token = setup.token(CI).await;
    let client = crate::support::peer(CI);
    for (method, path, status) in [
        (Method::GET, "/openai/v1/files", 403),
        (Method::DELETE, "/openai/v1/files/file-1", 403),
        (Method::POST, "/openai/v1%2f..%2ffiles", 400),
        (Method::POST, "/openai/v1/chat%2Fcompletions", 400),
        (Method::POST, "/anthropic/v1/messages/batches", 403),
        (Method::POST, "/anthropic/v1/chat/completions", 403),
        (Method::GET, "/gemini/v1beta/cachedContents", 403),
        (
            Method::POST,
            "/gemini/v1beta/tunedModels/x:generateContent",
            403,
        ),
        (Method::POST, "/openaix/v1/chat/completions", 404),
        (Method::POST, "/v1/chat/completions", 404),
        (Method::POST, "/openai", 403),
    ] {
        let response = client
            .request(method.clone(), setup.url(path))
            .bearer_auth(&token)
            .json(&json!({"model": "gpt-test"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "{method} {path}: {body}");
    }
    for (name, _, _) in KEYS {
        assert!(setup.seen(name).is_empty(), "{name} received a request");
    }
}
