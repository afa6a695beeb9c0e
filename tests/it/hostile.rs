//! Regressions from the hostile-request battery: requests no well-behaved client sends, each
//! answered with the RFC error in JSON rather than read the friendly way.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::agents::{self, mint, post_token};
use crate::support::{CI, ip};

/// Sends `request` as raw bytes from peer `from` and returns the status line and body.
async fn raw(server: &crate::support::TestServer, from: u8, request: &str) -> (String, String) {
    let addr: std::net::SocketAddr = server
        .base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((ip(from), 0).into()).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

#[tokio::test]
async fn a_request_with_two_host_headers_is_refused() {
    let (server, _dir) = agents::server(&[]).await;
    let host = server
        .base
        .trim_start_matches("http://")
        .trim_end_matches('/');
    for path in ["/.well-known/openid-configuration", "/healthz"] {
        let (status, body) = raw(
            &server,
            CI,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        assert!(status.contains(" 400 "), "{path}: {status}");
        assert!(body.contains("invalid_request"), "{path}: {body}");
    }
    let (status, _) = raw(
        &server,
        CI,
        &format!(
            "GET /.well-known/openid-configuration HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(status.contains(" 200 "), "one Host is served: {status}");
}

#[tokio::test]
async fn basic_with_no_credentials_is_invalid_client_not_an_agent_token() {
    let (server, _dir) = agents::server(&[]).await;
    // Without any Authorization header the CI node gets its agent token: the control case.
    let (status, body) = mint(&server, CI, &[("audience", crate::support::GATEWAY)]).await;
    assert_eq!(status, 200, "{body}");
    for header in ["Basic", "Basic ", "basic  ", "Bearer x", "Basic Og=="] {
        let answer = server
            .peer(CI)
            .post(server.url("/token"))
            .header("authorization", header)
            .form(&[
                ("grant_type", "client_credentials"),
                ("audience", crate::support::GATEWAY),
            ])
            .send()
            .await
            .unwrap();
        let (status, body) = crate::support::json(answer).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client")),
            "{header:?}: {body}"
        );
        assert!(body.get("access_token").is_none());
    }
}

#[tokio::test]
async fn error_descriptions_never_carry_quotes_or_backslashes() {
    let (server, _dir) = agents::server(&[]).await;
    let (status, body) = mint(
        &server,
        CI,
        &[
            ("scope", "llm:chat \"x\\y\" é"),
            ("audience", "https://gateway.tail1234.ts.net"),
        ],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description
            .chars()
            .all(|c| (' '..='~').contains(&c) && c != '"' && c != '\\'),
        "{description}"
    );
    let (_, body) = post_token(&server, CI, &[("grant_type", "x\"\\\u{1}")]).await;
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(
        !description.contains('"') && !description.contains('\\'),
        "{description}"
    );
}

/// Every audit event the server has stored, oldest first.
async fn stored_events(server: &crate::support::TestServer) -> Vec<tailpass::audit::AuditEvent> {
    let all = tailpass::store::AuditFilter {
        limit: 10_000,
        ..Default::default()
    };
    let records = server.state().store.audit(&all).await.unwrap();
    records.into_iter().map(|r| r.event).collect()
}

#[tokio::test]
async fn strangers_with_unknown_client_ids_write_no_audit_row_each_and_fields_are_capped() {
    use crate::support::{ALICE, STRANGER};
    let (server, _dir) = agents::server(&[]).await;
    let before = stored_events(&server).await.len();
    let huge = "x".repeat(4_000);
    for _ in 0..50 {
        let url = crate::authorize::authorize_url(&server, &huge, &[]);
        let answer = server.peer(STRANGER).get(&url).send().await.unwrap();
        assert_eq!(answer.status(), 400);
    }
    for _ in 0..5 {
        assert_eq!(mint(&server, STRANGER, &[]).await.0, 401);
    }
    assert_eq!(
        stored_events(&server).await.len(),
        before,
        "no durable write for callers off the tailnet"
    );
    // They are counted in /metrics as they happen…
    let metrics = server
        .peer(ALICE)
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tailpass_events_total{event=\"authorize\",outcome=\"denied\"} 50"),
        "{metrics}"
    );
    // …and land in the log as one aggregate per reason once their minute is over.
    server.end_the_minute().await;
    // The aggregate is queued without waiting; a recorded event behind it commits after it.
    let (status, _) = mint(
        &server,
        crate::support::CI,
        &[("audience", crate::support::GATEWAY)],
    )
    .await;
    assert_eq!(status, 200);
    let events = stored_events(&server).await;
    let aggregates: Vec<_> = events
        .iter()
        .filter(|e| e.event == tailpass::audit::EventKind::DeniedAggregate)
        .collect();
    assert_eq!(aggregates.len(), 2, "{aggregates:#?}");
    let unknown = aggregates
        .iter()
        .find(|e| e.reason.as_deref() == Some("unknown client_id"))
        .unwrap();
    assert_eq!(
        unknown.detail.as_deref(),
        Some("{\"event\":\"authorize\",\"count\":50}")
    );

    // A tailnet caller's denial is itemized, with its fields capped.
    let url = crate::authorize::authorize_url(&server, &huge, &[]);
    let answer = server.peer(ALICE).get(&url).send().await.unwrap();
    assert_eq!(answer.status(), 400);
    let events = stored_events(&server).await;
    let alices = events
        .iter()
        .rev()
        .find(|e| e.event == tailpass::audit::EventKind::Authorize)
        .unwrap();
    let client = alices.client_id.as_deref().unwrap();
    assert!(
        client.len() <= tailpass::audit::MAX_FIELD,
        "{}",
        client.len()
    );
}

#[tokio::test]
async fn revoke_is_rate_limited_per_client() {
    let server = crate::support::TestServer::with_args(&["--rate-limit", "3"]).await;
    let (id, secret) = crate::login::register(
        &server,
        serde_json::json!({"name": "rp", "redirect_uris": [crate::login::REDIRECT]}),
    )
    .await;
    let secret = secret.unwrap();
    let revoke = || {
        server
            .peer(crate::support::ALICE)
            .post(server.url("/revoke"))
            .basic_auth(&id, Some(&secret))
            .form(&[("token", "not-a-token")])
            .send()
    };
    for _ in 0..3 {
        assert_eq!(revoke().await.unwrap().status(), 200);
    }
    let limited = revoke().await.unwrap();
    assert_eq!(limited.status(), 429);
    assert_eq!(
        limited.headers()["retry-after"],
        "20",
        "3 a minute: one every 20 s"
    );
    // The limiter reads the server's clock: moving it refills the bucket, no sleeping.
    server.clock.advance(20);
    assert_eq!(revoke().await.unwrap().status(), 200);
    assert_eq!(revoke().await.unwrap().status(), 429);
}

#[tokio::test]
async fn an_oversized_nonce_is_refused_not_stored_with_the_code() {
    use crate::support::ALICE;
    let server = crate::support::TestServer::start().await;
    let (id, _) = crate::login::register(
        &server,
        serde_json::json!({"name": "rp", "redirect_uris": [crate::login::REDIRECT]}),
    )
    .await;
    let nonce = "n".repeat(4_000);
    let url = crate::authorize::authorize_url(&server, &id, &[("nonce", &nonce)]);
    let back = crate::authorize::open(&server, ALICE, &url).await.unwrap();
    assert_eq!(
        crate::login::param(&back, "error").as_deref(),
        Some("invalid_request")
    );
    assert!(crate::login::param(&back, "code").is_none());
}
