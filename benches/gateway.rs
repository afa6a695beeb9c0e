//! Gateway benchmarks, in one process (all on loopback):
//! 1. token verifications per second beside the raw ring ES256 verify rate, same thread;
//! 2. the latency the gateway adds, per provider (OpenAI chat, Anthropic messages, Gemini
//!    generateContent, each as JSON and as a server-sent event stream): the same request sent
//!    to the upstream directly and through the gateway, one at a time, p50 and p99;
//! 3. the time from `killswitch::revoke` (what `tailpass revoke --run` calls) to the gateway
//!    refusing the run's token, measured by calling until refused.
//!
//! The upstream is a local test double of the paid APIs (which cannot run here), answering
//! each provider's shape at once, so what is measured is the gateway.
//!
//! ```text
//! bench/run.sh gateway [--seconds N] [--requests N]
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use serde_json::json;
use tailpass::clock::{Clock, SystemClock};
use tailpass::keys::SigningKey;
use tailpass_verify::binding::Presenter;
use tailpass_verify::claims::{Confirmation, RunClaims};
use tailpass_verify::feed::{FeedEvent, RevocationKind, RevocationList};
use tailpass_verify::{AccessClaims, Alg, Audience, KeySet, UnixTime, Verifier};

mod support;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Measured seconds for each verification figure.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Requests for each latency figure.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Revocations timed.
    #[arg(long, default_value_t = 20)]
    revocations: usize,
    /// Ignored: `cargo bench` passes `--bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

const GATEWAY: &str = "https://gateway.tail1234.ts.net";
const ISSUER: &str = "http://127.0.0.1:1";
const NODE: &str = "nBuildBot42CNTRL";

fn rate(seconds: u64, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut n = 0u64;
    while Instant::now() < deadline {
        for _ in 0..32 {
            f();
        }
        n += 32;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn verification(seconds: u64) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let key = SigningKey::from_pkcs8(Alg::ES256, pkcs8.as_ref()).unwrap();
    let now = UnixTime::now();
    let claims = AccessClaims {
        iss: ISSUER.into(),
        sub: format!("node:{NODE}"),
        aud: Audience(vec![GATEWAY.into()]),
        exp: now.plus(600),
        iat: now,
        nbf: Some(now),
        jti: "bench-jti-0123456789abcdef".into(),
        client_id: format!("node:{NODE}"),
        scope: Some("llm:chat".into()),
        run: RunClaims {
            run_id: Some(tailpass::tokens::new_run_token_ids().1),
            run_label: Some("bench".into()),
            ..RunClaims::default()
        },
        cnf: Some(Confirmation::node(NODE, None)),
        extra: serde_json::from_value(json!({
            "models": ["claude-sonnet", "gpt-small"],
            "quota": {"requests": 500, "tokens": 2_000_000}
        }))
        .unwrap(),
        ..AccessClaims::default()
    };
    let token = key.sign_jwt("at+jwt", &claims).unwrap();
    let keys = KeySet::from_jwks(&json!({"keys": [key.jwk()]}));
    // A realistic revocation list: a thousand entries that do not match.
    let revocations = Arc::new(RevocationList::new());
    for i in 0..1000u64 {
        revocations.apply(&FeedEvent {
            seq: i + 1,
            kind: RevocationKind::Run.into(),
            value: format!("run-{i}"),
            revoked_at: now,
            until: None,
        });
    }
    let verifier = Verifier::new(ISSUER, GATEWAY).with_revocations(revocations);
    let presenter = Presenter {
        node: Some(NODE),
        dpop_jkt: None,
    };
    verifier.verify(&keys, &token, &presenter, now).unwrap();

    let (input, signature) = token.rsplit_once('.').unwrap();
    let signature =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, signature)
            .unwrap();
    let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, pair.public_key().as_ref());
    let raw = rate(seconds, || {
        public
            .verify(
                std::hint::black_box(input.as_bytes()),
                std::hint::black_box(&signature),
            )
            .unwrap();
    });
    let full = rate(seconds, || {
        std::hint::black_box(
            verifier
                .verify(&keys, std::hint::black_box(&token), &presenter, now)
                .unwrap(),
        );
    });
    println!("raw ring ES256 verifications: {raw:.0}/s");
    println!(
        "token verifications:          {full:.0}/s  = {:.0}% of raw (signature, claims, cnf, 1000-entry revocation list)",
        100.0 * full / raw
    );
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1000.0
}

/// A double of the three paid APIs: a short answer in each one's shape, JSON or streamed.
async fn upstream() -> std::net::SocketAddr {
    use axum::response::IntoResponse as _;
    let sse = |text: String| {
        axum::response::Response::builder()
            .header("content-type", "text/event-stream")
            .body(axum::body::Body::from(text))
            .unwrap()
    };
    let app = axum::Router::new()
        .route(
            "/v1/chat/completions",
            axum::routing::post(move |body: axum::Json<serde_json::Value>| async move {
                if body["stream"] == true {
                    let chunk = json!({"choices": [{"index": 0, "delta": {"content": "hi"}}]});
                    let usage = json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}});
                    return sse(format!("data: {chunk}\n\ndata: {usage}\n\ndata: [DONE]\n\n"));
                }
                axum::Json(json!({"choices": [{"message": {"content": "hi"}}],
                    "usage": {"prompt_tokens": 9, "completion_tokens": 3}}))
                .into_response()
            }),
        )
        .route(
            "/v1/messages",
            axum::routing::post(move |body: axum::Json<serde_json::Value>| async move {
                if body["stream"] == true {
                    let events = [
                        ("message_start", json!({"type": "message_start", "message": {"usage": {"input_tokens": 9, "output_tokens": 1}}})),
                        ("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}})),
                        ("message_delta", json!({"type": "message_delta", "usage": {"output_tokens": 3}})),
                        ("message_stop", json!({"type": "message_stop"})),
                    ];
                    return sse(events.iter().map(|(e, d)| format!("event: {e}\ndata: {d}\n\n")).collect());
                }
                axum::Json(json!({"type": "message", "content": [{"type": "text", "text": "hi"}],
                    "usage": {"input_tokens": 9, "output_tokens": 3}}))
                .into_response()
            }),
        )
        .route(
            "/v1beta/models/{call}",
            axum::routing::post(move |axum::extract::Path(call): axum::extract::Path<String>| async move {
                let answer = json!({"candidates": [{"content": {"parts": [{"text": "hi"}]}}],
                    "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 3}});
                if call.ends_with(":streamGenerateContent") {
                    return sse(format!("data: {answer}\r\n\r\n"));
                }
                axum::Json(answer).into_response()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// One measured request: where it goes after the base, the header its token goes in, its body.
struct Case {
    label: &'static str,
    prefix: &'static str,
    path: &'static str,
    header: &'static str,
    body: serde_json::Value,
}

fn cases() -> Vec<Case> {
    let chat = json!({"model": "gpt-bench", "messages": [{"role": "user", "content": "hi"}]});
    let message = json!({"model": "claude-sonnet", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]});
    let gemini = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
    let streamed = |mut body: serde_json::Value| {
        body["stream"] = json!(true);
        body
    };
    vec![
        Case {
            label: "openai chat",
            prefix: "/openai",
            path: "/v1/chat/completions",
            header: "authorization",
            body: chat.clone(),
        },
        Case {
            label: "openai chat, streamed",
            prefix: "/openai",
            path: "/v1/chat/completions",
            header: "authorization",
            body: streamed(chat),
        },
        Case {
            label: "anthropic messages",
            prefix: "/anthropic",
            path: "/v1/messages",
            header: "x-api-key",
            body: message.clone(),
        },
        Case {
            label: "anthropic messages, streamed",
            prefix: "/anthropic",
            path: "/v1/messages",
            header: "x-api-key",
            body: streamed(message),
        },
        Case {
            label: "gemini generateContent",
            prefix: "/gemini",
            path: "/v1beta/models/gemini-bench:generateContent",
            header: "x-goog-api-key",
            body: gemini.clone(),
        },
        Case {
            label: "gemini streamGenerateContent",
            prefix: "/gemini",
            path: "/v1beta/models/gemini-bench:streamGenerateContent",
            header: "x-goog-api-key",
            body: gemini,
        },
    ]
}

async fn timed(
    client: &reqwest::Client,
    url: &str,
    header: &str,
    token: &str,
    body: &serde_json::Value,
    n: usize,
) -> Vec<Duration> {
    let value = if header == "authorization" {
        format!("Bearer {token}")
    } else {
        token.to_owned()
    };
    let mut out = Vec::with_capacity(n);
    for _ in 0..n + n / 10 {
        let t = Instant::now();
        let response = client
            .post(url)
            .header(header, &value)
            .json(body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        response.bytes().await.unwrap();
        out.push(t.elapsed());
    }
    // The first tenth warms connections and caches.
    let mut measured = out.split_off(n / 10);
    measured.sort_unstable();
    measured
}

async fn end_to_end(args: &Args) {
    let dir = tempfile::tempdir().unwrap();
    let tagged: serde_json::Value =
        serde_json::from_str(include_str!("../tests/fixtures/whois-tagged.json")).unwrap();
    let mut gateway_node = tagged.clone();
    gateway_node["Node"]["StableID"] = json!("nGateway8CNTRL");
    gateway_node["Node"]["ID"] = json!(1008);
    gateway_node["Node"]["Tags"] = json!(["tag:gateway"]);
    let peers = dir.path().join("peers.json");
    std::fs::write(
        &peers,
        json!({"127.0.0.3": tagged, "127.0.0.8": gateway_node}).to_string(),
    )
    .unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        r#"[[rule]]
src = ["tag:ci"]
audiences = ["https://gateway.tail1234.ts.net"]
claims = { models = ["claude-sonnet", "gpt-bench", "gemini-bench"], quota = { requests = 100000000, tokens = 100000000000 } }
"#,
    )
    .unwrap();
    // The issuer names its port, so pick a free one first.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let settings = support::settings(dir.path(), &peers, &policy, port, &[]);
    let clock = Arc::new(SystemClock) as Arc<dyn Clock>;
    let running = tailpass::server::start(settings, clock.clone())
        .await
        .unwrap();
    let issuer = running.issuer().to_owned();
    let upstream = upstream().await;
    let key_file = dir.path().join("upstream.key");
    std::fs::write(&key_file, "sk-bench").unwrap();
    let identity = Arc::new(tailpass::identity::local::LocalTable::from_file(&peers).unwrap());
    let upstream_at = |name: &str, prefix: &str, api: tailpass::gateway::Api| {
        tailpass::gateway::UpstreamSettings {
            name: name.into(),
            prefix: prefix.into(),
            api,
            auth: match api {
                tailpass::gateway::Api::Openai => tailpass::gateway::Auth::Bearer,
                tailpass::gateway::Api::Anthropic => tailpass::gateway::Auth::XApiKey,
                tailpass::gateway::Api::Gemini => tailpass::gateway::Auth::XGoogApiKey,
            },
            ..tailpass::gateway::UpstreamSettings::new(
                format!("http://{upstream}"),
                key_file.clone(),
            )
        }
    };
    let mut settings = tailpass::gateway::GatewaySettings {
        public_url: "http://gateway.invalid".into(),
        source_address: Some("127.0.0.8".parse().unwrap()),
        ..tailpass::gateway::GatewaySettings::new(
            "127.0.0.1:0".parse().unwrap(),
            issuer.clone(),
            GATEWAY,
            upstream_at("default", "", tailpass::gateway::Api::Openai),
        )
    };
    settings.upstreams.extend([
        upstream_at("openai", "/openai", tailpass::gateway::Api::Openai),
        upstream_at("anthropic", "/anthropic", tailpass::gateway::Api::Anthropic),
        upstream_at("gemini", "/gemini", tailpass::gateway::Api::Gemini),
    ]);
    let gateway = tailpass::gateway::start(settings, identity, clock)
        .await
        .unwrap();
    let agent = reqwest::Client::builder()
        .local_address("127.0.0.3".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let mint = || async {
        let body: serde_json::Value = agent
            .post(format!("{issuer}/token"))
            .form(&[("grant_type", "client_credentials"), ("audience", GATEWAY)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    };
    let token = mint().await;

    println!(
        "{:<30} {:>17} {:>17} {:>17}   ({} requests each)",
        "latency, ms (p50 / p99)", "upstream directly", "through gateway", "added", args.requests
    );
    for case in cases() {
        let direct = timed(
            &agent,
            &format!("http://{upstream}{}", case.path),
            case.header,
            &token,
            &case.body,
            args.requests,
        )
        .await;
        let through = timed(
            &agent,
            &format!("http://{}{}{}", gateway.addr(), case.prefix, case.path),
            case.header,
            &token,
            &case.body,
            args.requests,
        )
        .await;
        let (d50, d99) = (percentile(&direct, 0.5), percentile(&direct, 0.99));
        let (g50, g99) = (percentile(&through, 0.5), percentile(&through, 0.99));
        println!(
            "{:<30} {d50:>8.3} / {d99:<6.3} {g50:>8.3} / {g99:<6.3} {:>8.3} / {:<6.3}",
            case.label,
            g50 - d50,
            g99 - d99
        );
    }

    let state = running.state().unwrap().clone();
    let gateway_url = format!("http://{}/v1/chat/completions", gateway.addr());
    let body = json!({"model": "claude-sonnet", "messages": []});
    let mut times = Vec::new();
    for _ in 0..args.revocations {
        let token = mint().await;
        let run = {
            let payload = token.split('.').nth(1).unwrap();
            let bytes =
                base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                    .unwrap();
            let claims: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            claims["run_id"].as_str().unwrap().to_owned()
        };
        let call = || {
            agent
                .post(&gateway_url)
                .bearer_auth(&token)
                .json(&body)
                .send()
        };
        assert!(call().await.unwrap().status().is_success());
        let start = Instant::now();
        tailpass::killswitch::revoke(
            state.sessions(),
            &tailpass::killswitch::Target {
                kind: RevocationKind::Run,
                value: run,
                until: None,
            },
            "bench",
            state.now(),
        )
        .await
        .unwrap();
        loop {
            let status = call().await.unwrap().status();
            if status == 401 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "still accepted after 10 s"
            );
        }
        times.push(start.elapsed());
    }
    times.sort_unstable();
    println!(
        "revoke --run to refusal at the gateway: median {:.1} ms  max {:.1} ms  ({} runs)",
        percentile(&times, 0.5),
        times.last().unwrap().as_secs_f64() * 1000.0,
        times.len()
    );
    drop(state);
    gateway.shutdown().await;
    running.shutdown().await;
}

fn main() {
    let args = Args::parse();
    verification(args.seconds);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(end_to_end(&args));
}
