//! The gateway end to end: an agent's token from tailpass, the gateway checking it locally,
//! and a fake OpenAI-compatible upstream behind it.
//!
//! The upstream is a test double of the paid API (which cannot run here): it records the
//! headers it receives, so the tests can assert it got the real key and none of the caller's
//! credentials, and it holds a streamed answer open until the test has read the first chunk.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method};
use axum::response::IntoResponse as _;
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tailpass::gateway::{GatewaySettings, RunningGateway};

use crate::agents::{exchange, mint, server};
use crate::authorize::claims;
use crate::support::{CI, CI2, GATEWAY, GATEWAY_NODE, TestServer, admin, ip};

const UPSTREAM_KEY: &str = "sk-upstream-real-key-0123456789";

/// The fake upstream's shared state.
#[derive(Default)]
struct Upstream {
    seen: Mutex<Vec<HeaderMap>>,
    release: tokio::sync::Notify,
}

async fn completions(
    axum::extract::State(upstream): axum::extract::State<Arc<Upstream>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    upstream.seen.lock().unwrap().push(headers);
    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
    if request["stream"] == true {
        let upstream = upstream.clone();
        let chunks = futures_util::stream::unfold(0u8, move |step| {
            let upstream = upstream.clone();
            async move {
                let chunk = match step {
                    0 => {
                        "data: {\"choices\":[{\"delta\":{\"content\":\"chunk-1\"}}]}\n\n".to_owned()
                    }
                    1 => {
                        // Held until the caller has the first chunk: proof of no buffering.
                        upstream.release.notified().await;
                        "data: {\"choices\":[],\"usage\":{\"total_tokens\":400}}\n\ndata: [DONE]\n\n"
                            .to_owned()
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
    axum::Json(json!({"choices": [{"message": {"content": "hi"}}], "usage": {"total_tokens": 10}}))
        .into_response()
}

struct Setup {
    server: TestServer,
    gateway: RunningGateway,
    upstream: Arc<Upstream>,
    _dir: tempfile::TempDir,
    _policy_dir: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Setup {
        let (server, policy_dir) = server(&[]).await;
        let upstream = Arc::new(Upstream::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state(upstream.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("upstream.key");
        std::fs::write(&key_file, format!("{UPSTREAM_KEY}\n")).unwrap();
        let table = dir.path().join("peers.json");
        std::fs::write(&table, crate::support::peers_table().to_string()).unwrap();
        let identity = Arc::new(tailpass::identity::local::LocalTable::from_file(&table).unwrap());
        let settings = GatewaySettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            public_url: "http://gateway.invalid".into(),
            issuer: server.url(""),
            audience: GATEWAY.into(),
            upstream: format!("http://{upstream_addr}"),
            upstream_key_file: key_file,
            source_address: Some(ip(GATEWAY_NODE)),
            audit_file: Some(dir.path().join("calls.jsonl")),
        };
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
            _dir: dir,
            _policy_dir: policy_dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.addr())
    }

    /// A chat completion through the gateway from peer `from`, read to its end: status, the
    /// `WWW-Authenticate` header, and the body.
    async fn call(&self, from: u8, token: &str, model: &str) -> (u16, bool, Value) {
        let response = reqwest::Client::builder()
            .local_address(ip(from))
            .build()
            .unwrap()
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

    async fn agent_token(&self) -> String {
        let (status, body) = mint(&self.server, CI, &[("audience", GATEWAY)]).await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }
}

#[tokio::test]
async fn an_agent_reaches_the_upstream_through_the_gateway_which_alone_holds_the_key() {
    let setup = Setup::new().await;
    let token = setup.agent_token().await;

    // A streamed answer arrives in chunks: the first before the upstream sends the rest.
    let response = reqwest::Client::builder()
        .local_address(ip(CI))
        .build()
        .unwrap()
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
    setup.upstream.release.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert!(String::from_utf8(rest).unwrap().contains("[DONE]"));

    let seen = setup.upstream.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0]["authorization"],
        format!("Bearer {UPSTREAM_KEY}").as_str()
    );
    for credential in ["x-api-key", "cookie", "dpop"] {
        assert!(!seen[0].contains_key(credential), "{credential} forwarded");
    }
    assert!(
        !seen[0]
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
    assert!(setup.upstream.seen.lock().unwrap().is_empty());

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
    assert_eq!(setup.upstream.seen.lock().unwrap().len(), 3);

    // The gateway's own metrics count what happened.
    let metrics = reqwest::get(setup.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
    let run = claims(&token)["run_id"].as_str().unwrap().to_owned();
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
    assert!(setup.upstream.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_dpop_bound_token_needs_its_key_at_the_gateway() {
    let setup = Setup::new().await;
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
    let token = minted["access_token"].as_str().unwrap();
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
    assert_eq!(setup.upstream.seen.lock().unwrap().len(), 1);
}
