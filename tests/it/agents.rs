//! Agents: run-scoped, node-bound tokens with no secret; token exchange; the rules around them.

use serde_json::{Value, json};

use crate::authorize::claims;
use crate::support::{BOB, CI, CI2, GATEWAY, GATEWAY_NODE, STRANGER, TestServer, json as read};

pub const POLICY: &str = r#"
[[rule]]
src = ["tag:ci"]
audiences = ["https://gateway.tail1234.ts.net", "https://docs.tail1234.ts.net"]
scopes = ["llm:chat", "llm:embed"]
max_lifetime = 600
tokens_per_minute = 30
claims = { models = ["claude-sonnet", "gpt-small"], quota = { requests = 3, tokens = 1000 } }

[[rule]]
src = ["tag:gateway"]
audiences = ["https://gateway.tail1234.ts.net"]
allow_introspect = true
"#;

pub const DOCS: &str = "https://docs.tail1234.ts.net";

/// A server with the agent policy above, and extra flags.
pub async fn server(extra: &[&str]) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut args = vec!["--policy", policy.to_str().unwrap()];
    args.extend_from_slice(extra);
    let server = TestServer::with_args(&args).await;
    (server, dir)
}

/// A `/token` request from peer `from`.
pub async fn post_token(server: &TestServer, from: u8, pairs: &[(&str, &str)]) -> (u16, Value) {
    read(
        server
            .peer(from)
            .post(server.url("/token"))
            .form(pairs)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// An agent token request from peer `from`.
pub async fn mint(server: &TestServer, from: u8, form: &[(&str, &str)]) -> (u16, Value) {
    let mut pairs = vec![("grant_type", "client_credentials")];
    pairs.extend_from_slice(form);
    post_token(server, from, &pairs).await
}

/// An RFC 8693 exchange from peer `from`.
pub async fn exchange(
    server: &TestServer,
    from: u8,
    subject: &str,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let mut pairs = vec![
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", subject),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
    ];
    pairs.extend_from_slice(form);
    post_token(server, from, &pairs).await
}

#[tokio::test]
async fn a_tagged_node_gets_a_run_scoped_node_bound_token_without_a_secret() {
    let (server, _dir) = server(&[]).await;
    let (status, body) = mint(
        &server,
        CI,
        &[
            ("audience", GATEWAY),
            ("scope", "llm:chat"),
            ("run_label", "ci #4711"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    let token = body["access_token"].as_str().unwrap();
    let c = claims(token);
    assert_eq!(c["sub"], "node:nBuildBot42CNTRL");
    assert_eq!(
        c["client_id"], c["sub"],
        "no client: client_id is the subject"
    );
    assert_eq!(c["aud"], GATEWAY);
    assert_eq!(c["scope"], "llm:chat");
    assert_eq!(c["run_label"], "ci #4711");
    assert!(
        c["run_id"].as_str().unwrap().len() >= 20,
        "an unguessable run id"
    );
    assert_eq!(c["node"], "buildbot-42.tail1234.ts.net");
    assert_eq!(c["tags"], json!(["tag:ci", "tag:claude-pr-reviewbot"]));
    assert_eq!(c["tailnet"], "tail1234.ts.net");
    assert_eq!(c["cnf"], json!({"tailnet_node": "nBuildBot42CNTRL"}));
    assert_eq!(c["models"], json!(["claude-sonnet", "gpt-small"]));
    assert_eq!(c["quota"], json!({"requests": 3, "tokens": 1000}));
    let header: Value =
        serde_json::from_slice(&base64_url(token.split('.').next().unwrap())).unwrap();
    assert_eq!(header["typ"], "at+jwt");

    // Each request is its own run.
    let (_, again) = mint(&server, CI, &[("audience", GATEWAY)]).await;
    assert_ne!(
        claims(again["access_token"].as_str().unwrap())["run_id"],
        c["run_id"]
    );
    // Without an audience, a rule that names several cannot choose.
    let (status, body) = mint(&server, CI, &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target"))
    );
    // `resource` and `audience` together become aud.
    let (_, both) = mint(&server, CI, &[("resource", GATEWAY), ("audience", DOCS)]).await;
    assert_eq!(
        claims(both["access_token"].as_str().unwrap())["aud"],
        json!([GATEWAY, DOCS])
    );
}

fn base64_url(part: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap()
}

#[tokio::test]
async fn refusals_say_why_to_identified_callers_only() {
    let (server, _dir) = server(&[]).await;
    let (status, body) = mint(&server, STRANGER, &[("audience", GATEWAY)]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    assert_eq!(
        body["error_description"], "the caller is not on the tailnet",
        "no policy detail"
    );
    let (status, body) = mint(&server, BOB, &[("audience", GATEWAY)]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unauthorized_client"))
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("bob@example.com")
    );
    let (status, body) = mint(&server, CI, &[("audience", "https://elsewhere.example")]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target"))
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("https://elsewhere.example")
    );
    let (status, body) = mint(
        &server,
        CI,
        &[("audience", GATEWAY), ("scope", "llm:admin")],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );
    let (status, body) = mint(
        &server,
        CI,
        &[("audience", GATEWAY), ("expires_in", "soon")],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let cross = server
        .peer(CI)
        .post(server.url("/token"))
        .header("sec-fetch-site", "cross-site")
        .form(&[("grant_type", "client_credentials"), ("audience", GATEWAY)])
        .send()
        .await
        .unwrap();
    let (status, body) = read(cross).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("access_denied")),
        "ambient identity, refused cross-site"
    );
    // Every denial is in the audit log with its reason: the stranger's in its minute's
    // aggregate, written once the minute is over.
    server.end_the_minute().await;
    assert_eq!(mint(&server, CI, &[("audience", GATEWAY)]).await.0, 200);
    let denials = server
        .state()
        .store
        .audit(&tailpass::store::AuditFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(denials.iter().any(|r| {
        r.event
            .reason
            .as_deref()
            .is_some_and(|x| x.contains("no rule allows"))
    }));
    assert!(denials.iter().any(|r| {
        r.event.event == tailpass::audit::EventKind::DeniedAggregate
            && r.event.reason.as_deref() == Some("the caller is not on the tailnet")
    }));
}

#[tokio::test]
async fn the_lifetime_is_capped_by_the_rule() {
    let (server, _dir) = server(&[]).await;
    let (_, body) = mint(
        &server,
        CI,
        &[("audience", GATEWAY), ("expires_in", "86400")],
    )
    .await;
    assert_eq!(body["expires_in"], 600);
    let c = claims(body["access_token"].as_str().unwrap());
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 600);
    let (_, body) = mint(&server, CI, &[("audience", GATEWAY), ("expires_in", "60")]).await;
    assert_eq!(body["expires_in"], 60, "shorter is granted as asked");
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after() {
    let (server, _dir) = server(&[]).await;
    for _ in 0..30 {
        assert_eq!(mint(&server, CI, &[("audience", GATEWAY)]).await.0, 200);
    }
    let response = server
        .peer(CI)
        .post(server.url("/token"))
        .form(&[("grant_type", "client_credentials"), ("audience", GATEWAY)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=2).contains(&retry),
        "30 a minute: one every 2 s, got {retry}"
    );
    assert_eq!(
        mint(&server, CI2, &[("audience", GATEWAY)]).await.0,
        200,
        "per node"
    );
}

#[tokio::test]
async fn an_exchange_narrows_nests_act_and_stays_within_the_parent() {
    let (server, _dir) = server(&[]).await;
    let (_, parent) = mint(
        &server,
        CI,
        &[
            ("audience", GATEWAY),
            ("audience", DOCS),
            ("scope", "llm:chat llm:embed"),
            ("run_label", "root"),
        ],
    )
    .await;
    let parent_token = parent["access_token"].as_str().unwrap();
    let p = claims(parent_token);

    let (status, child) = exchange(
        &server,
        CI,
        parent_token,
        &[
            ("audience", GATEWAY),
            ("scope", "llm:chat"),
            ("run_label", "sub-agent"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{child}");
    assert_eq!(
        child["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    let child_token = child["access_token"].as_str().unwrap();
    let c = claims(child_token);
    assert_eq!(
        (c["aud"].clone(), c["scope"].clone()),
        (json!(GATEWAY), json!("llm:chat"))
    );
    assert_eq!(c["sub"], p["sub"], "the subject stays");
    assert_ne!(c["run_id"], p["run_id"]);
    assert_eq!(c["parent_run_id"], p["run_id"]);
    assert_eq!(c["root_run_id"], p["run_id"]);
    assert_eq!(c["act"]["sub"], "node:nBuildBot42CNTRL");
    assert_eq!(c["act"]["run_id"], p["run_id"]);
    assert!(c["exp"].as_u64().unwrap() <= p["exp"].as_u64().unwrap());
    assert_eq!(c["quota"], p["quota"], "children share the root's budget");

    let (_, grandchild) = exchange(&server, CI, child_token, &[("expires_in", "100000")]).await;
    let g = claims(grandchild["access_token"].as_str().unwrap());
    assert_eq!(g["root_run_id"], p["run_id"], "the root stays the root");
    assert_eq!(g["parent_run_id"], c["run_id"]);
    assert_eq!(
        g["act"]["act"]["run_id"], p["run_id"],
        "act nested (RFC 8693 §4.1)"
    );
    assert!(
        g["exp"].as_u64().unwrap() <= c["exp"].as_u64().unwrap(),
        "never after the parent"
    );

    let (status, body) = exchange(&server, CI, child_token, &[("audience", DOCS)]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target"))
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("widening refused")
    );
    let (status, body) = exchange(&server, CI, child_token, &[("scope", "llm:embed")]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("widening refused")
    );
}

#[tokio::test]
async fn a_token_from_another_node_is_refused_at_exchange_and_userinfo() {
    let (server, _dir) = server(&[]).await;
    let (_, body) = mint(&server, CI, &[("audience", GATEWAY)]).await;
    let token = body["access_token"].as_str().unwrap();
    let (status, answer) = exchange(&server, CI2, token, &[]).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert!(
        answer["error_description"]
            .as_str()
            .unwrap()
            .contains("bound to node nBuildBot42CNTRL")
    );
    let stolen = server
        .peer(CI2)
        .get(server.url("/userinfo"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(stolen.status(), 401);
    assert!(
        stolen.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("bound to node")
    );
    let own: Value = server
        .peer(CI)
        .get(server.url("/userinfo"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(own["sub"], "node:nBuildBot42CNTRL");
    let (status, _) = exchange(&server, GATEWAY_NODE, token, &[]).await;
    assert_eq!(status, 400);
}
