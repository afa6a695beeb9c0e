//! Gateway budgets that last: a run's budget survives a gateway restart (the same SQLite
//! file), and gateways sharing one PostgreSQL database share it (skipped without
//! `TAILPASS_TEST_POSTGRES`, required with `TAILPASS_REQUIRE_POSTGRES=1`). Tokens come from a
//! real tailpass issuer; behind the gateways, a test double of the paid upstream API (which
//! cannot run here) answering every chat completion with 7 tokens in and 3 out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use serde_json::{Value, json};
use tailpass::gateway::{GatewaySettings, RunningGateway, UpstreamSettings};
use tailpass::store::{StoreSettings, StoreUrl};

use crate::agents::{mint, server};
use crate::authorize::claims;
use crate::support::{CI, GATEWAY, GATEWAY_NODE, TestServer, ip};

/// The policy's quota for CI's gateway tokens (`agents::POLICY`).
const REQUESTS: u64 = 3;

/// The paid API's double: every call used 7 + 3 tokens.
async fn paid_api_double() -> SocketAddr {
    let app = Router::new().fallback(|| async {
        axum::Json(json!({
            "choices": [{"message": {"content": "hi"}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
        }))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// What gateways in front of one issuer and one upstream share.
struct Site {
    server: TestServer,
    upstream: SocketAddr,
    dir: tempfile::TempDir,
    _policy: tempfile::TempDir,
}

impl Site {
    async fn new() -> Site {
        let (server, policy) = server(&[]).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("upstream.key"), "sk-upstream\n").unwrap();
        std::fs::write(
            dir.path().join("peers.json"),
            crate::support::peers_table().to_string(),
        )
        .unwrap();
        Site {
            server,
            upstream: paid_api_double().await,
            dir,
            _policy: policy,
        }
    }

    /// A gateway whose budgets persist in `store`.
    async fn gateway(&self, store: &str) -> RunningGateway {
        let settings = GatewaySettings {
            source_address: Some(ip(GATEWAY_NODE)),
            budget_store: Some(StoreSettings {
                location: store.parse::<StoreUrl>().unwrap().parse().unwrap(),
                ca_file: None,
                pool_size: 2,
            }),
            ..GatewaySettings::new(
                "127.0.0.1:0".parse().unwrap(),
                self.server.url(""),
                GATEWAY,
                UpstreamSettings::new(
                    format!("http://{}", self.upstream),
                    self.dir.path().join("upstream.key"),
                ),
            )
        };
        let identity = Arc::new(
            tailpass::identity::local::LocalTable::from_file(&self.dir.path().join("peers.json"))
                .unwrap(),
        );
        tailpass::gateway::start(
            settings,
            identity,
            self.server.clock.clone() as Arc<dyn tailpass::clock::Clock>,
        )
        .await
        .unwrap()
    }

    /// A gateway token of a new run of CI's, and the run.
    async fn token(&self) -> (String, String) {
        let (status, body) = mint(&self.server, CI, &[("audience", GATEWAY)]).await;
        assert_eq!(status, 200, "{body}");
        let token = body["access_token"].as_str().unwrap().to_owned();
        let run = claims(&token)["run_id"].as_str().unwrap().to_owned();
        (token, run)
    }
}

/// A chat completion from CI through `gateway`: status and the `error` of a refusal.
async fn call(gateway: &RunningGateway, token: &str) -> (u16, Value) {
    let response = reqwest::Client::builder()
        .local_address(ip(CI))
        .build()
        .unwrap()
        .post(format!("http://{}/v1/chat/completions", gateway.addr()))
        .bearer_auth(token)
        // A small output limit, so that a few calls in flight at once reserve well within the
        // run's 1000 tokens and the request budget is what runs out.
        .json(&json!({
            "model": "gpt-small",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}]
        }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["error"].clone())
}

/// Waits, bounded, until `gateway` knows `run` has used `used` (requests, tokens).
async fn until_used(gateway: &RunningGateway, run: &str, used: (u64, u64)) {
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        while gateway.quotas().used(run) != Some(used) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "{run}: {:?}, never {used:?}",
        gateway.quotas().used(run)
    );
}

#[tokio::test]
async fn gateway_budget_survives_a_restart_on_its_sqlite_file() {
    let site = Site::new().await;
    let file = site.dir.path().join("state").join("gateway-budgets.sqlite");
    let store = format!("sqlite:{}", file.display());
    let (token, run) = site.token().await;

    let first = site.gateway(&store).await;
    for _ in 0..REQUESTS - 1 {
        assert_eq!(call(&first, &token).await.0, 200);
    }
    assert_eq!(first.quotas().used(&run), Some((2, 20)));
    // Stopped in order: its last charges are flushed, though less than a second passed.
    first.shutdown().await;

    let second = site.gateway(&store).await;
    assert_eq!(
        second.quotas().used(&run),
        Some((2, 20)),
        "loaded at start from the file"
    );
    assert_eq!(call(&second, &token).await.0, 200, "the third of three");
    assert_eq!(
        call(&second, &token).await,
        (429, json!("quota_exceeded")),
        "the budget the first gateway spent stays spent"
    );
    second.shutdown().await;

    let third = site.gateway(&store).await;
    assert_eq!(third.quotas().used(&run), Some((3, 30)));
    assert_eq!(call(&third, &token).await.0, 429);
    let metrics = reqwest::get(format!("http://{}/metrics", third.addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tailpass_gateway_budget_flush_errors_total 0"),
        "{metrics}"
    );
    third.shutdown().await;
}

#[tokio::test]
async fn gateways_on_one_postgres_database_share_a_runs_budget() {
    let Some(database) = crate::postgres::Database::fresh().await else {
        return;
    };
    let site = Site::new().await;
    let store = database.url.to_string();
    let (a, b) = (site.gateway(&store).await, site.gateway(&store).await);

    // Calls spaced by a flush: each gateway admits by the shared total, exactly.
    let (token, run) = site.token().await;
    assert_eq!(call(&a, &token).await.0, 200);
    until_used(&b, &run, (1, 10)).await;
    assert_eq!(call(&b, &token).await.0, 200);
    until_used(&a, &run, (2, 10 * 2)).await;
    assert_eq!(call(&a, &token).await.0, 200);
    until_used(&b, &run, (3, 10 * 3)).await;
    assert_eq!(call(&b, &token).await, (429, json!("quota_exceeded")));
    assert_eq!(call(&a, &token).await, (429, json!("quota_exceeded")));

    // A burst at both within one flush interval: within the documented bound, at most what
    // each of the N gateways admits by itself (N × the limit), never less than the limit; once
    // the charges are read back, both refuse.
    let (token, run) = site.token().await;
    let burst = |gateway| {
        let token = token.clone();
        async move {
            let calls = (0..REQUESTS).map(|_| call(gateway, &token));
            futures_util::future::join_all(calls).await
        }
    };
    let (at_a, at_b) = tokio::join!(burst(&a), burst(&b));
    let admitted = at_a.iter().chain(&at_b).filter(|(s, _)| *s == 200).count() as u64;
    assert!(
        (REQUESTS..=2 * REQUESTS).contains(&admitted),
        "{admitted} admitted: {at_a:?} {at_b:?}"
    );
    until_used(&a, &run, (admitted, 10 * admitted)).await;
    until_used(&b, &run, (admitted, 10 * admitted)).await;
    assert_eq!(call(&a, &token).await.0, 429);
    assert_eq!(call(&b, &token).await.0, 429);

    a.shutdown().await;
    b.shutdown().await;
    database.drop().await;
}
