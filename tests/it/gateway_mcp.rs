//! MCP servers fronted by the gateway, end to end with the official MCP Python SDK on both
//! sides: a real SDK server (`tests/sdk/mcp_server.py`) behind an `[[mcp]]` route, the SDK's
//! client (`tests/sdk/mcp_client.py`) in front, speaking the stateless 2026-07-28 protocol
//! and the session-based 2025-11-25 one, with tailpass tokens whose `mcp` claim allows only
//! `search`. The server records every request and every tool it runs, so the tests see what
//! reached it. And the RFC 9728 discovery the SDK's OAuth client starts from.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tailpass::gateway::mcp::McpSettings;
use tailpass::gateway::{GatewaySettings, RunningGateway, UpstreamSettings};
use tokio::io::AsyncBufReadExt as _;

use crate::agents::mint;
use crate::authorize::claims;
use crate::support::{CI, CI2, GATEWAY_NODE, TestServer, ip, run_sdk_script, sdk_python};

/// The loopback address the gateway listens on in these tests (no peer uses it).
pub const GATEWAY_IP: [u8; 4] = [127, 0, 0, 60];

/// The SDK's MCP server, running as a child process (killed when dropped).
pub struct McpServer {
    _child: tokio::process::Child,
    pub port: u16,
    record: PathBuf,
}

impl McpServer {
    pub async fn start(python: &std::path::Path, dir: &std::path::Path) -> McpServer {
        let record = dir.join("mcp-server.jsonl");
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/mcp_server.py");
        let mut child = tokio::process::Command::new(python)
            .arg(script)
            .env("MCP_RECORD_FILE", &record)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("mcp-server.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the MCP server did not start within 60 s")
            .unwrap()
            .expect("the MCP server exited before listening");
        let port = serde_json::from_str::<Value>(&first).unwrap()["port"]
            .as_u64()
            .unwrap();
        McpServer {
            _child: child,
            port: u16::try_from(port).unwrap(),
            record: record.clone(),
        }
    }

    /// What reached it: each request (`method`, `path`, `headers`) and each tool run.
    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The tools it ran, in order.
    pub fn tools_run(&self) -> Vec<String> {
        self.records()
            .iter()
            .filter_map(|r| r["tool"].as_str().map(str::to_owned))
            .collect()
    }
}

/// tailpass, the SDK's MCP server, and a gateway fronting it as `docs` under `/mcp/docs`.
struct Setup {
    server: TestServer,
    gateway: RunningGateway,
    mcp: McpServer,
    /// The gateway's URL, which is also its audience.
    public_url: String,
    dir: tempfile::TempDir,
    _policy_dir: tempfile::TempDir,
}

impl Setup {
    async fn new(python: &std::path::Path) -> Setup {
        Setup::with(python, None).await
    }

    /// As [`Setup::new`], with the gateway in ambient mode when `ambient` gives its longest
    /// run (its rule sets `act_for_peers` in every setup; only ambient mode uses it).
    async fn with(python: &std::path::Path, ambient: Option<u64>) -> Setup {
        // The gateway's address is chosen first: it is its audience, which the policy names.
        let listen = std::net::TcpListener::bind((std::net::IpAddr::from(GATEWAY_IP), 0))
            .unwrap()
            .local_addr()
            .unwrap();
        let public_url = format!("http://{listen}");
        let policy_dir = tempfile::tempdir().unwrap();
        let policy = policy_dir.path().join("policy.toml");
        std::fs::write(
            &policy,
            format!(
                r#"
[[rule]]
src = ["tag:ci"]
audiences = ["{public_url}", "{public_url}/mcp/docs"]
max_lifetime = 600
claims = {{ mcp = {{ docs = ["search"], down = ["*"] }} }}

[[rule]]
src = ["tag:gateway"]
audiences = ["{public_url}"]
allow_introspect = true
act_for_peers = true
"#
            ),
        )
        .unwrap();
        let server = TestServer::with_args(&["--policy", policy.to_str().unwrap()]).await;
        let dir = tempfile::tempdir().unwrap();
        let mcp = McpServer::start(python, dir.path()).await;
        let key_file = dir.path().join("upstream.key");
        std::fs::write(&key_file, "sk-unused\n").unwrap();
        let table = dir.path().join("peers.json");
        std::fs::write(&table, crate::support::peers_table().to_string()).unwrap();
        let identity = Arc::new(tailpass::identity::local::LocalTable::from_file(&table).unwrap());
        let settings = GatewaySettings {
            public_url: public_url.clone(),
            source_address: Some(ip(GATEWAY_NODE)),
            audit_file: Some(dir.path().join("calls.jsonl")),
            ambient,
            mcp: vec![
                McpSettings::new(
                    "docs",
                    format!("http://127.0.0.1:{}/mcp", mcp.port),
                    "/mcp/docs",
                ),
                // Nothing listens there.
                McpSettings::new("down", "http://127.0.0.1:9/mcp", "/mcp/down"),
            ],
            ..GatewaySettings::new(
                listen,
                server.url(""),
                public_url.clone(),
                // No model API is called here; the upstream is never reached.
                UpstreamSettings::new("http://127.0.0.1:9", key_file),
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
            mcp,
            public_url,
            dir,
            _policy_dir: policy_dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.addr())
    }

    /// A token minted by peer `from` for `audience`.
    async fn token(&self, from: u8, audience: &str) -> String {
        let (status, body) = mint(&self.server, from, &[("audience", audience)]).await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// The SDK client's report, run from CI's address with `token` in protocol `mode`.
    async fn client(&self, python: &std::path::Path, token: &str, mode: &str) -> Value {
        let (ok, report) = run_sdk_script(
            python,
            "mcp_client.py",
            &[
                ("MCP_URL", self.url("/mcp/docs")),
                ("MCP_TOKEN", token.to_owned()),
                ("MCP_MODE", mode.to_owned()),
                ("MCP_LOCAL_ADDRESS", ip(CI).to_string()),
            ],
        )
        .await;
        assert!(ok, "mcp_client.py failed: {report}");
        report
    }

    fn call_log(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("calls.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn the_sdk_client_calls_only_the_tools_its_token_allows_and_the_token_stays_here() {
    let Some(python) = sdk_python() else { return };
    let setup = Setup::new(&python).await;
    let token = setup.token(CI, &setup.public_url).await;
    let run_id = claims(&token)["run_id"].as_str().unwrap().to_owned();

    for (mode, protocol) in [("auto", "2026-07-28"), ("legacy", "2025-11-25")] {
        let report = setup.client(&python, &token, mode).await;
        assert_eq!(report["protocol"], protocol, "{report}");
        assert_eq!(
            report["tools"],
            json!(["search"]),
            "{mode}: listing filtered"
        );
        assert_eq!(
            report["allowed"],
            json!({"error": null, "text": "found: tailpass"}),
            "{mode}"
        );
        let denied = report["denied"]["error"].as_str().unwrap_or_default();
        assert!(
            denied.contains("\"delete_everything\" is not allowed for this token"),
            "{mode}: the SDK raises the refusal to its caller: {report}"
        );
    }

    // The denied tool never ran; the allowed one ran once per protocol.
    assert_eq!(setup.mcp.tools_run(), ["search", "search"]);
    // No request reached the server with the caller's token or any credential header; the
    // session-based protocol's GET stream and DELETE did reach it, with the session id.
    let requests: Vec<Value> = setup
        .mcp
        .records()
        .into_iter()
        .filter(|r| r.get("method").is_some())
        .collect();
    for request in &requests {
        let headers = request["headers"].as_object().unwrap();
        for name in ["authorization", "dpop", "cookie", "x-api-key"] {
            assert!(
                !headers.contains_key(name),
                "{name} reached the server: {request}"
            );
        }
        assert!(
            !request.to_string().contains(&token),
            "the token reached the server: {request}"
        );
    }
    let method_seen = |method: &str| {
        requests
            .iter()
            .any(|r| r["method"] == method && r["headers"]["mcp-session-id"].is_string())
    };
    assert!(method_seen("GET") && method_seen("DELETE"), "{requests:?}");

    // Every tool call is in the call log, with the run and the outcome.
    let calls: Vec<Value> = setup
        .call_log()
        .into_iter()
        .filter(|c| c["mcp_tool"].is_string())
        .collect();
    assert_eq!(calls.len(), 4, "{calls:?}");
    for call in &calls {
        assert_eq!(call["mcp_server"], "docs");
        assert_eq!(call["run_id"], run_id.as_str());
        assert_eq!(call["node"], "nBuildBot42CNTRL");
        assert_eq!(call["status"], 200);
    }
    let allowed: Vec<&Value> = calls.iter().filter(|c| c["mcp_tool"] == "search").collect();
    assert_eq!(allowed.len(), 2);
    assert!(
        allowed
            .iter()
            .all(|c| c["tool_error"] == false && c["refused"].is_null())
    );
    let refused: Vec<&Value> = calls
        .iter()
        .filter(|c| c["mcp_tool"] == "delete_everything")
        .collect();
    assert_eq!(refused.len(), 2);
    assert!(refused.iter().all(|c| c["reason"] == "mcp"));
    let metrics = setup.metrics().await;
    assert!(
        metrics.contains("tailpass_gateway_mcp_calls_total{server=\"docs\",outcome=\"ok\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tailpass_gateway_mcp_calls_total{server=\"docs\",outcome=\"refused\"} 2")
            && metrics.contains("tailpass_gateway_upstream_seconds_count{target=\"mcp\"}")
            && !metrics.contains("target=\"upstream\""),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_token_for_the_routes_resource_works_there_only_and_one_without_an_entry_is_refused() {
    let Some(python) = sdk_python() else { return };
    let setup = Setup::new(&python).await;
    // A token whose audience is the route's RFC 9728 resource, as an MCP client asks for.
    let resource = format!("{}/mcp/docs", setup.public_url);
    let token = setup.token(CI, &resource).await;
    let report = setup.client(&python, &token, "auto").await;
    assert_eq!(report["tools"], json!(["search"]), "{report}");
    assert_eq!(report["allowed"]["text"], "found: tailpass");
    // Not on the gateway's other routes.
    let peer = reqwest::Client::builder()
        .local_address(ip(CI))
        .build()
        .unwrap();
    let response = peer
        .post(setup.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .json(&json!({"model": "gpt-small", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // The gateway node's token names no MCP server: refused before the server is asked.
    let before = setup.mcp.records().len();
    let other = setup.token(GATEWAY_NODE, &setup.public_url).await;
    let response = reqwest::Client::builder()
        .local_address(ip(GATEWAY_NODE))
        .build()
        .unwrap()
        .post(setup.url("/mcp/docs"))
        .bearer_auth(&other)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "mcp_not_allowed", "{body}");

    // A batch and a body that is not JSON-RPC get JSON-RPC errors, never reaching it.
    for (body, code) in [
        (
            json!([{"jsonrpc": "2.0", "id": 1, "method": "ping"}]),
            -32600,
        ),
        (
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}}),
            -32600,
        ),
    ] {
        let response = peer
            .post(setup.url("/mcp/docs"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["code"], code, "{answer}");
    }
    // Routing headers that disagree with the body are refused: the body is what was checked.
    let response = peer
        .post(setup.url("/mcp/docs"))
        .bearer_auth(&token)
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "delete_everything")
        .json(&json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                      "params": {"name": "search", "arguments": {"query": "x"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["id"], 5, "{answer}");
    // A path that could be read as another is refused.
    let response = peer
        .get(setup.url("/mcp/docs/a%2F..%2Fadmin"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        setup.mcp.records().len(),
        before,
        "nothing more reached the server"
    );

    // A server the gateway cannot reach: 502, and the tool call counted as such.
    let response = peer
        .post(setup.url("/mcp/down"))
        .bearer_auth(setup.token(CI, &setup.public_url).await)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "anything", "arguments": {}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "upstream_unavailable", "{body}");
    let metrics = setup.metrics().await;
    assert!(
        metrics.contains(
            "tailpass_gateway_mcp_calls_total{server=\"down\",outcome=\"unavailable\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_refused_client_finds_the_issuer_from_the_routes_rfc_9728_metadata() {
    let Some(python) = sdk_python() else { return };
    let setup = Setup::new(&python).await;
    let metadata = format!(
        "{}/.well-known/oauth-protected-resource/mcp/docs",
        setup.public_url
    );

    // Every 401 names the metadata of the route refused.
    let response = reqwest::Client::new()
        .post(setup.url("/mcp/docs"))
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.starts_with("Bearer ")
            && challenge.contains(&format!("resource_metadata=\"{metadata}\"")),
        "{challenge}"
    );
    let response = reqwest::Client::new()
        .post(setup.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains(&format!(
            "resource_metadata=\"{}/.well-known/oauth-protected-resource\"",
            setup.public_url
        )),
        "{challenge}"
    );

    // The documents: the route's resource and the gateway's, each naming the issuer.
    let issuer = setup.server.url("");
    let issuer = issuer.trim_end_matches('/');
    let route: Value = reqwest::get(&metadata).await.unwrap().json().await.unwrap();
    assert_eq!(route["resource"], format!("{}/mcp/docs", setup.public_url));
    assert_eq!(route["authorization_servers"], json!([issuer]));
    assert_eq!(route["bearer_methods_supported"], json!(["header"]));
    let whole: Value = reqwest::get(setup.url("/.well-known/oauth-protected-resource"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(whole["resource"], setup.public_url.as_str());

    // The SDK's own discovery gets from the 401 to tailpass's authorization server metadata.
    let (ok, report) = run_sdk_script(
        &python,
        "mcp_discovery.py",
        &[
            ("MCP_URL", setup.url("/mcp/docs")),
            ("MCP_LOCAL_ADDRESS", ip(CI).to_string()),
        ],
    )
    .await;
    assert!(ok, "{report}");
    assert_eq!(report["status"], 401);
    assert_eq!(report["resource_metadata"], metadata.as_str());
    assert_eq!(report["resource"], format!("{}/mcp/docs", setup.public_url));
    assert_eq!(report["resource_allowed"], true, "{report}");
    assert_eq!(report["issuer"], issuer);
    assert_eq!(report["issuer_matches"], true, "{report}");
    assert_eq!(report["token_endpoint"], format!("{issuer}/token"));
}

#[tokio::test]
async fn a_session_is_only_its_openers_and_its_streamed_listing_is_filtered() {
    let Some(python) = sdk_python() else { return };
    let setup = Setup::new(&python).await;
    let (ci, ci2) = (
        setup.token(CI, &setup.public_url).await,
        setup.token(CI2, &setup.public_url).await,
    );
    let post = |from: u8, token: &str, session: Option<&str>, body: Value| {
        let mut request = reqwest::Client::builder()
            .local_address(ip(from))
            .build()
            .unwrap()
            .post(setup.url("/mcp/docs"))
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .json(&body);
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request.send()
    };
    let opened = post(
        CI,
        &ci,
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}}}),
    )
    .await
    .unwrap();
    assert_eq!(opened.status(), 200);
    let session = opened.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    opened.text().await.unwrap();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let acked = post(CI, &ci, Some(&session), initialized).await.unwrap();
    assert_eq!(acked.status(), 202);
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}});

    // Another agent's token (another node, the same rule) cannot use the session.
    let hijack = post(CI2, &ci2, Some(&session), list.clone()).await.unwrap();
    assert_eq!(hijack.status(), 404);
    let answer: Value = hijack.json().await.unwrap();
    assert_eq!(answer["error"]["code"], -32600, "{answer}");

    // Its opener can; the listing comes as server-sent events, filtered.
    let listed = post(CI, &ci, Some(&session), list).await.unwrap();
    assert_eq!(listed.status(), 200);
    assert_eq!(listed.headers()["content-type"], "text/event-stream");
    let events = listed.text().await.unwrap();
    let data = events
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or_else(|| panic!("no event: {events}"));
    let message: Value = serde_json::from_str(data).unwrap();
    let names: Vec<&str> = message["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["search"]);
}

#[tokio::test]
async fn a_tokenless_tailnet_caller_gets_its_own_rules_mcp_tools_in_ambient_mode() {
    let Some(python) = sdk_python() else { return };
    let setup = Setup::with(&python, Some(600)).await;
    // The SDK client sends no Authorization at all; the gateway obtains CI's token for it.
    let report = setup.client(&python, "", "auto").await;
    assert_eq!(
        report["tools"],
        json!(["search"]),
        "CI's own mcp claim decides"
    );
    assert_eq!(
        report["allowed"],
        json!({"error": null, "text": "found: tailpass"})
    );
    assert!(
        report["denied"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("is not allowed for this token"),
        "{report}"
    );
    assert_eq!(setup.mcp.tools_run(), ["search"]);
    let calls: Vec<Value> = setup
        .call_log()
        .into_iter()
        .filter(|c| c["mcp_tool"].is_string())
        .collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    let run = calls[0]["run_id"]
        .as_str()
        .expect("an ambient run")
        .to_owned();
    for call in &calls {
        assert_eq!(
            call["run_id"],
            run.as_str(),
            "one run for the caller's node"
        );
        assert_eq!(call["node"], "nBuildBot42CNTRL");
        assert_eq!(call["sub"], "node:nBuildBot42CNTRL");
    }
    // Without ambient mode the same tokenless client is refused.
    let plain = Setup::new(&python).await;
    let (ok, _) = run_sdk_script(
        &python,
        "mcp_client.py",
        &[
            ("MCP_URL", plain.url("/mcp/docs")),
            ("MCP_TOKEN", String::new()),
            ("MCP_LOCAL_ADDRESS", ip(CI).to_string()),
        ],
    )
    .await;
    assert!(
        !ok,
        "a tokenless client is refused unless the gateway is ambient"
    );
    assert!(plain.mcp.tools_run().is_empty());
}
