//! Ambient mode end to end: a tailnet caller that presents no token is served by the gateway
//! with a run token the gateway obtains for it from tailpass, by token exchange with a
//! tailnet-peer subject, which the issuer grants only to a gateway whose rule sets
//! `act_for_peers`.
//!
//! The upstream is a test double of the paid API (which cannot run here): it answers chat
//! completions with a fixed usage and records what it received, so the tests can tell which
//! calls reached it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, Method};
use serde_json::{Value, json};
use tailpass::gateway::{GatewaySettings, RunningGateway, UpstreamSettings};

use crate::agents::{mint, post_token};
use crate::authorize::claims;
use crate::support::{
    BOB, CI, CI2, GATEWAY, GATEWAY_NODE, STRANGER, TestServer, admin, ip, peers_table,
    run_sdk_script, sdk_python,
};

const UPSTREAM_KEY: &str = "sk-upstream-ambient-0123456789";
/// The gateway's public URL: ambient requests must name its host.
const PUBLIC_URL: &str = "http://gateway.invalid";
const PUBLIC_HOST: &str = "gateway.invalid";
const PEER_TYPE: &str = "urn:tailpass:params:oauth:token-type:tailnet-peer";
const ACCESS_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// CI runners may call the gateway for one model; the gateway may act for peers when
/// `act_for_peers`. Bob has no rule.
fn policy(act_for_peers: bool) -> String {
    format!(
        r#"
[[rule]]
src = ["tag:ci"]
audiences = ["{GATEWAY}"]
max_lifetime = 1800
claims = {{ models = ["gpt-small"], quota = {{ requests = 100, tokens = 100000 }} }}

[[rule]]
src = ["tag:gateway"]
audiences = ["{GATEWAY}"]
act_for_peers = {act_for_peers}
"#
    )
}

/// A test double of the paid API: the headers of every request it received.
#[derive(Default)]
struct PaidApiDouble {
    seen: Mutex<Vec<HeaderMap>>,
}

impl PaidApiDouble {
    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn paid_api_double() -> (Arc<PaidApiDouble>, SocketAddr) {
    let api = Arc::new(PaidApiDouble::default());
    let app = Router::new()
        .fallback(
            |axum::extract::State(api): axum::extract::State<Arc<PaidApiDouble>>,
             headers: HeaderMap| async move {
                api.seen.lock().unwrap().push(headers);
                axum::Json(json!({
                    "choices": [{"message": {"content": "hi"}}],
                    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
                }))
            },
        )
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (api, addr)
}

struct Setup {
    server: TestServer,
    gateway: RunningGateway,
    upstream: Arc<PaidApiDouble>,
    dir: tempfile::TempDir,
}

impl Setup {
    /// An issuer with [`policy`] and an ambient gateway in front of the paid API's double.
    async fn new(act_for_peers: bool) -> Setup {
        Setup::with_run_lifetime(act_for_peers, 3600).await
    }

    /// The same, with ambient runs of at most `run_lifetime` seconds.
    async fn with_run_lifetime(act_for_peers: bool, run_lifetime: u64) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let policy_file = dir.path().join("policy.toml");
        std::fs::write(&policy_file, policy(act_for_peers)).unwrap();
        let server = TestServer::with_args(&["--policy", policy_file.to_str().unwrap()]).await;
        let (upstream, upstream_addr) = paid_api_double().await;
        let key_file = dir.path().join("upstream.key");
        std::fs::write(&key_file, UPSTREAM_KEY).unwrap();
        let table = dir.path().join("peers.json");
        std::fs::write(&table, peers_table().to_string()).unwrap();
        let identity = Arc::new(tailpass::identity::local::LocalTable::from_file(&table).unwrap());
        let settings = GatewaySettings {
            public_url: PUBLIC_URL.into(),
            source_address: Some(ip(GATEWAY_NODE)),
            audit_file: Some(dir.path().join("calls.jsonl")),
            ambient: Some(run_lifetime),
            ..GatewaySettings::new(
                "127.0.0.1:0".parse().unwrap(),
                server.url(""),
                GATEWAY,
                UpstreamSettings::new(format!("http://{upstream_addr}"), key_file),
            )
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
            dir,
        }
    }

    /// A chat completion from peer `from` with `headers` (a `Host` naming the gateway's
    /// public URL unless they set one): status and JSON body.
    async fn call(&self, from: u8, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut request = reqwest::Client::builder()
            .local_address(ip(from))
            .build()
            .unwrap()
            .post(format!(
                "http://{}/v1/chat/completions",
                self.gateway.addr()
            ))
            .json(&json!({"model": "gpt-small", "messages": [{"role": "user", "content": "hi"}]}));
        if !headers.iter().any(|(name, _)| *name == "host") {
            request = request.header("host", PUBLIC_HOST);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The gateway's call log, one JSON object per call.
    fn call_log(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("calls.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The run of the last call in the log.
    fn last_run(&self) -> String {
        let log = self.call_log();
        let last = log.last().expect("a call was logged");
        last["run_id"].as_str().expect("with a run").to_owned()
    }

    /// Revokes `kind`/`value` with the admin API and waits until the gateway has the feed
    /// event.
    async fn revoke(&self, kind: &str, value: &str) {
        let (status, report) = admin(
            &self.server,
            Method::POST,
            "/admin/api/revocations",
            Some(json!({"kind": kind, "value": value})),
        )
        .await;
        assert_eq!(status, 201, "{report}");
        let seq = self.server.state().revocations.last_seq();
        let revocations = self.gateway.verifier().verifier().revocations().clone();
        let arrived = tokio::task::spawn_blocking(move || {
            revocations.wait_for_seq(seq, Duration::from_secs(30))
        })
        .await
        .unwrap();
        assert!(arrived, "the gateway received the feed event");
    }
}

#[tokio::test]
async fn a_tokenless_caller_is_served_one_run_per_node_until_the_kill_switch_stops_it() {
    let setup = Setup::new(true).await;

    let (status, body) = setup.call(CI, &[]).await;
    assert_eq!(status, 200, "{body}");
    let seen = setup.upstream.seen.lock().unwrap().clone();
    assert_eq!(
        seen[0]["authorization"],
        format!("Bearer {UPSTREAM_KEY}").as_str(),
        "the upstream sees its key, never the obtained token"
    );
    let log = setup.call_log();
    let first = log.last().unwrap();
    assert_eq!(first["node"], "nBuildBot42CNTRL", "{first}");
    assert_eq!(first["sub"], "node:nBuildBot42CNTRL");
    assert_eq!(first["tokens"], 10, "charged to the caller's run");
    let run = setup.last_run();

    // The same run serves the next call; another node gets a run of its own.
    assert_eq!(setup.call(CI, &[]).await.0, 200);
    assert_eq!(setup.last_run(), run, "one run per caller node");
    assert_eq!(setup.call(CI2, &[]).await.0, 200);
    let other = setup.last_run();
    assert_ne!(other, run);

    // The issuer audited each exchange under the caller, with the gateway as the actor.
    let (status, events) = admin(
        &setup.server,
        Method::GET,
        &format!("/admin/api/audit?run={run}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{events}");
    let issued = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "token_exchange")
        .unwrap_or_else(|| panic!("no token_exchange event in {events}"));
    assert_eq!(issued["node_id"], "nBuildBot42CNTRL", "{issued}");
    assert_eq!(issued["client_id"], "node:nGateway8CNTRL", "{issued}");
    assert_eq!(
        issued["run_label"],
        "ambient via nGateway8CNTRL.tail1234.ts.net"
    );

    // Revoking the run refuses the caller's ambient calls: the run is not replaced...
    setup.revoke("run", &run).await;
    let before = setup.upstream.calls();
    let (status, body) = setup.call(CI, &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_token")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{body}"
    );
    assert_eq!(
        setup.upstream.calls(),
        before,
        "the refused call reached no upstream"
    );
    // ...until it would have ended (min(3600 s asked, the rule's 1800 s), renewed 60 s early):
    // then the caller gets a new run, as documented.
    setup.server.clock.advance(1800 - 60);
    assert_eq!(setup.call(CI, &[]).await.0, 200);
    assert_ne!(
        setup.last_run(),
        run,
        "a new run after the revoked one's lifetime"
    );

    // Revoking the node stops it for good: its held token is refused, and once that is due
    // for renewal the issuer refuses the exchange.
    assert_eq!(setup.call(CI2, &[]).await.0, 200, "CI2's next run");
    setup.revoke("node", "nCiRunner7CNTRL").await;
    let (status, body) = setup.call(CI2, &[]).await;
    assert_eq!(status, 401, "{body}");
    setup.server.clock.advance(1800);
    let (status, body) = setup.call(CI2, &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("ambient_refused")),
        "{body}"
    );
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains("nCiRunner7CNTRL"), "{body}");
    assert_eq!(
        setup.call_log().last().unwrap()["reason"],
        "ambient",
        "the refusal is in the call log"
    );
    // CI, whose node is not revoked, is served again.
    assert_eq!(setup.call(CI, &[]).await.0, 200);
}

#[tokio::test]
async fn revoking_the_gateways_own_run_ends_the_runs_it_obtained_and_the_gateway_recovers() {
    // Ambient runs of 300 s, renewed before the gateway's own 900 s token is.
    let setup = Setup::with_run_lifetime(true, 300).await;
    assert_eq!(setup.call(CI, &[]).await.0, 200);
    let run = setup.last_run();
    let (status, events) = admin(
        &setup.server,
        Method::GET,
        "/admin/api/audit?node=nGateway8CNTRL",
        None,
    )
    .await;
    assert_eq!(status, 200, "{events}");
    let own_run = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "agent_token" && e["outcome"] == "success")
        .and_then(|e| e["run_id"].as_str())
        .unwrap_or_else(|| panic!("the gateway's own token in {events}"))
        .to_owned();

    setup.revoke("run", &own_run).await;
    let (status, body) = setup.call(CI, &[]).await;
    assert_eq!(
        status, 401,
        "the caller's token names the gateway's run: {body}"
    );
    // Once the caller's run is due for renewal, the issuer refuses the revoked actor token and
    // the gateway, with a new token of its own, obtains the caller a new run in the same call.
    setup.server.clock.advance(300 - 60);
    let (status, body) = setup.call(CI, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(setup.last_run(), run);
}

#[tokio::test]
async fn the_official_openai_sdk_without_any_key_is_served_in_ambient_mode() {
    let Some(python) = sdk_python() else { return };
    let setup = Setup::new(true).await;
    let (ok, report) = run_sdk_script(
        &python,
        "ambient_openai.py",
        &[
            ("GATEWAY_URL", format!("http://{}/v1", setup.gateway.addr())),
            ("GATEWAY_HOST", PUBLIC_HOST.to_owned()),
            ("LOCAL_ADDRESS", ip(CI).to_string()),
        ],
    )
    .await;
    assert!(ok, "{report}");
    assert_eq!(report, json!({"content": "hi", "total_tokens": 10}));
    let log = setup.call_log();
    let call = log.last().unwrap();
    assert_eq!(
        (call["status"].as_u64(), call["node"].as_str()),
        (Some(200), Some("nBuildBot42CNTRL")),
        "{call}"
    );
    assert!(call["run_id"].is_string(), "{call}");
}

#[tokio::test]
async fn cross_site_and_misaddressed_tokenless_calls_are_refused_before_any_upstream() {
    let setup = Setup::new(true).await;
    for (why, headers) in [
        ("cross-site fetch", vec![("sec-fetch-site", "cross-site")]),
        (
            "same-site is another app of the tailnet",
            vec![("sec-fetch-site", "same-site")],
        ),
        ("a foreign origin", vec![("origin", "http://evil.example")]),
        (
            "DNS rebinding: another Host",
            vec![("host", "evil.example")],
        ),
    ] {
        let (status, body) = setup.call(CI, &headers).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("cross_site_refused")),
            "{why}: {body}"
        );
    }
    // The gateway's Host by address is not its public name either.
    let addr = setup.gateway.addr().to_string();
    assert_eq!(setup.call(CI, &[("host", addr.as_str())]).await.0, 403);
    assert_eq!(setup.upstream.calls(), 0, "nothing reached the upstream");
    assert!(
        setup.call_log().iter().all(|c| c["reason"] == "ambient"),
        "each refusal is logged"
    );

    // A page of the gateway's own origin, or a program, is served.
    let same_origin = [("sec-fetch-site", "same-origin"), ("origin", PUBLIC_URL)];
    assert_eq!(setup.call(CI, &same_origin).await.0, 200);
    // A call with its own token is not ambient: the checks do not apply to it.
    let (status, token) = mint(&setup.server, CI, &[("audience", GATEWAY)]).await;
    assert_eq!(status, 200, "{token}");
    let bearer = format!("Bearer {}", token["access_token"].as_str().unwrap());
    let presented = [
        ("authorization", bearer.as_str()),
        ("sec-fetch-site", "cross-site"),
        ("host", addr.as_str()),
    ];
    assert_eq!(setup.call(CI, &presented).await.0, 200);

    // Off the tailnet there is no one to act for: 401 as without ambient mode.
    let (status, body) = setup.call(STRANGER, &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_token")),
        "{body}"
    );
    // A caller on the tailnet whose own rules give it nothing is refused with the reason.
    let (status, body) = setup.call(BOB, &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("ambient_refused")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("no rule allows"),
        "{body}"
    );
    // An SDK given an empty key sends an empty key header: that presents no token.
    assert_eq!(setup.call(CI, &[("x-api-key", "")]).await.0, 200);
    assert_eq!(setup.upstream.calls(), 3);
}

#[tokio::test]
async fn a_gateway_whose_rule_lacks_act_for_peers_serves_no_tokenless_caller() {
    let setup = Setup::new(false).await;
    let (status, body) = setup.call(CI, &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("ambient_refused")),
        "{body}"
    );
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains("unauthorized_client"), "{body}");
    assert!(description.contains("act_for_peers"), "{body}");
    assert_eq!(setup.upstream.calls(), 0);
}

/// The exchange for a tailnet peer, sent from `from` with `actor` as the actor token.
async fn for_peer(server: &TestServer, from: u8, peer: &str, actor: &str) -> (u16, Value) {
    post_token(
        server,
        from,
        &[
            ("grant_type", EXCHANGE),
            ("subject_token", peer),
            ("subject_token_type", PEER_TYPE),
            ("actor_token", actor),
            ("actor_token_type", ACCESS_TYPE),
            ("audience", GATEWAY),
            ("expires_in", "3600"),
        ],
    )
    .await
}

#[tokio::test]
async fn the_issuer_mints_a_peers_token_only_for_a_gateway_acting_for_peers() {
    let dir = tempfile::tempdir().unwrap();
    let policy_file = dir.path().join("policy.toml");
    std::fs::write(&policy_file, policy(true)).unwrap();
    let server = TestServer::with_args(&["--policy", policy_file.to_str().unwrap()]).await;
    let (status, own) = mint(&server, GATEWAY_NODE, &[("audience", GATEWAY)]).await;
    assert_eq!(status, 200, "{own}");
    let own = own["access_token"].as_str().unwrap();

    let ci = format!("{}:41234", ip(CI));
    let (status, body) = for_peer(&server, GATEWAY_NODE, &ci, own).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issued_token_type"], ACCESS_TYPE);
    assert_eq!(
        body["expires_in"], 1800,
        "the caller's rule caps the lifetime"
    );
    let c = claims(body["access_token"].as_str().unwrap());
    assert_eq!(c["sub"], "node:nBuildBot42CNTRL");
    assert_eq!(c["cnf"], json!({"tailnet_node": "nBuildBot42CNTRL"}));
    assert_eq!(c["models"], json!(["gpt-small"]));
    assert_eq!(c["act"]["sub"], "node:nGateway8CNTRL");
    assert_eq!(c["act"]["run_id"], claims(own)["run_id"]);

    // The actor token is the gateway's, bound to it: CI cannot present it.
    let (status, body) = for_peer(&server, CI, &ci, own).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with("actor_token"),
        "{body}"
    );
    // Nor may CI act for peers with its own token: its rule does not say act_for_peers.
    let (_, ci_own) = mint(&server, CI, &[("audience", GATEWAY)]).await;
    let ci_own = ci_own["access_token"].as_str().unwrap();
    let (status, body) = for_peer(&server, CI, &ip(CI2).to_string(), ci_own).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unauthorized_client")),
        "{body}"
    );
    // An address off the tailnet, and a caller without a rule, are refused.
    let (status, body) = for_peer(&server, GATEWAY_NODE, &ip(STRANGER).to_string(), own).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("not on the tailnet")
    );
    let (status, body) = for_peer(&server, GATEWAY_NODE, &ip(BOB).to_string(), own).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    // Not an address at all.
    let (status, body) = for_peer(&server, GATEWAY_NODE, "ci.tail1234.ts.net", own).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    // The caller's node revocation refuses it.
    let (status, _) = admin(
        &server,
        Method::POST,
        "/admin/api/revocations",
        Some(json!({"kind": "node", "value": "nBuildBot42CNTRL"})),
    )
    .await;
    assert_eq!(status, 201);
    server.clock.advance(1);
    let (status, body) = for_peer(&server, GATEWAY_NODE, &ci, own).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("access_denied")),
        "{body}"
    );
}
