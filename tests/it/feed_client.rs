//! The verifier's feed follower against a feed that drops its connection: it resumes with
//! `Last-Event-ID` from the last event it applied and keeps what the snapshot gave it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::HeaderMap;
use axum::routing::{MethodRouter, get};
use futures_util::StreamExt as _;
use serde_json::json;
use tailpass_verify::claims::RunClaims;
use tailpass_verify::remote::RemoteVerifier;
use tailpass_verify::{AccessClaims, UnixTime, Verifier};

#[derive(Default)]
struct Feed {
    connections: Mutex<Vec<Option<String>>>,
}

fn event(name: &str, seq: u64, data: serde_json::Value) -> String {
    format!("event: {name}\nid: {seq}\ndata: {data}\n\n")
}

async fn revocations(
    axum::extract::State(feed): axum::extract::State<Arc<Feed>>,
    headers: HeaderMap,
) -> axum::response::Response {
    let resume = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let first = {
        let mut connections = feed.connections.lock().unwrap();
        connections.push(resume);
        connections.len() == 1
    };
    // Recent revocations: the follower forgets those no token can match any more.
    let revoked_at = UnixTime::now().0;
    let body = if first {
        // A snapshot, then the connection ends (a restart, a proxy timeout...).
        let snapshot = json!({"seq": 5, "events": [
            {"seq": 5, "kind": "run", "value": "r1", "revoked_at": revoked_at}
        ]});
        Body::from(event("snapshot", 5, snapshot))
    } else {
        let next = json!({"seq": 6, "kind": "run", "value": "r2", "revoked_at": revoked_at});
        let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(event(
            "revocation",
            6,
            next,
        )))])
        .chain(futures_util::stream::pending());
        Body::from_stream(chunks)
    };
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap()
}

fn run(id: &str) -> AccessClaims {
    AccessClaims {
        iat: UnixTime::now().minus(60),
        run: RunClaims {
            run_id: Some(id.into()),
            ..RunClaims::default()
        },
        ..AccessClaims::default()
    }
}

/// Serves an issuer with no keys whose revocation feed is `feed`; its base URL.
async fn issuer(feed: MethodRouter) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let discovery = json!({
        "issuer": base,
        "jwks_uri": format!("{base}/jwks"),
        "revocation_feed_endpoint": format!("{base}/revocations"),
    });
    let app = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || {
                let d = discovery.clone();
                async move { axum::Json(d) }
            }),
        )
        .route("/jwks", get(|| async { axum::Json(json!({"keys": []})) }))
        .route("/revocations", feed);
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

#[tokio::test]
async fn the_follower_resumes_after_a_dropped_connection() {
    let feed = Arc::new(Feed::default());
    let base = issuer(get(revocations).with_state(feed.clone())).await;

    let remote = Arc::new(
        RemoteVerifier::discover(reqwest::Client::new(), Verifier::new(&base, "aud"))
            .await
            .unwrap(),
    );
    let follower = remote.follow_feed();
    let list = remote.verifier().revocations().clone();
    let waiting = list.clone();
    let arrived =
        tokio::task::spawn_blocking(move || waiting.wait_for_seq(6, Duration::from_secs(30)))
            .await
            .unwrap();
    assert!(arrived, "the event after the reconnection was applied");
    assert_eq!(
        *feed.connections.lock().unwrap(),
        vec![None, Some("5".to_owned())],
        "the second connection resumed after the snapshot's sequence"
    );
    assert!(
        list.check(&run("r1"), None).is_err(),
        "kept from the snapshot"
    );
    assert!(
        list.check(&run("r2"), None).is_err(),
        "from the resumed stream"
    );
    assert!(list.check(&run("r3"), None).is_ok());
    follower.abort();
}

#[tokio::test]
async fn a_feed_naming_a_kind_the_verifier_does_not_know_refuses_every_token() {
    let revoked_at = UnixTime::now().0;
    // A newer issuer's snapshot: a known kind, and one this verifier has never heard of.
    let snapshot = json!({"seq": 2, "events": [
        {"seq": 1, "kind": "run", "value": "r1", "revoked_at": revoked_at},
        {"seq": 2, "kind": "client", "value": "c-old", "revoked_at": revoked_at}
    ]});
    let base = issuer(get(move || {
        let s = snapshot.clone();
        async move { axum::Json(s) }
    }))
    .await;

    let remote = RemoteVerifier::discover(reqwest::Client::new(), Verifier::new(&base, "aud"))
        .await
        .unwrap();
    remote.load_revocations().await.unwrap();
    let list = remote.verifier().revocations();
    assert_eq!(list.seq(), 2, "the snapshot was read, not refused");
    let refused = list.check(&run("r3"), None).unwrap_err();
    assert!(
        refused.to_string().contains("\"client\""),
        "a token matching nothing known is refused: {refused}"
    );
}
