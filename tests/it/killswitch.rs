//! The kill switch, the revocation feed, and the audit trail of a run.

use std::time::Duration;

use axum::http::Method;
use futures_util::StreamExt as _;
use serde_json::{Value, json};

use crate::agents::{exchange, mint, server};
use crate::authorize::{VERIFIER, claims, code, redeem, token};
use crate::login::{REDIRECT, register};
use crate::support::{ALICE, CI, GATEWAY, GATEWAY_NODE, STRANGER, TestServer, admin, json as read};

/// A server-sent event: its type, id and JSON data.
#[derive(Debug)]
pub struct Sse {
    pub event: String,
    pub id: Option<u64>,
    pub data: Value,
}

/// Reads server-sent events from a streaming response.
pub struct SseReader {
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<axum::body::Bytes>>,
    buffer: String,
}

impl SseReader {
    pub async fn open(server: &TestServer, from: u8, last_event_id: Option<u64>) -> SseReader {
        let mut request = server
            .peer(from)
            .get(server.url("/revocations"))
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        SseReader {
            stream: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next event, waiting at most a generous 30 s.
    pub async fn next(&mut self) -> Sse {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let mut event = Sse {
                        event: "message".into(),
                        id: None,
                        data: Value::Null,
                    };
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("event:") {
                            event.event = v.trim().into();
                        } else if let Some(v) = line.strip_prefix("id:") {
                            event.id = v.trim().parse().ok();
                        } else if let Some(v) = line.strip_prefix("data:") {
                            event.data = serde_json::from_str(v.trim()).unwrap();
                        }
                    }
                    if event.data != Value::Null {
                        return event;
                    }
                    continue; // a keep-alive comment
                }
                let chunk = self.stream.next().await.expect("stream open").unwrap();
                self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        })
        .await
        .expect("an event within 30 s")
    }
}

pub async fn introspect_as_gateway(server: &TestServer, token: &str) -> Value {
    read(
        server
            .peer(GATEWAY_NODE)
            .post(server.url("/introspect"))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap(),
    )
    .await
    .1
}

/// Revokes `run` through the admin API.
pub async fn revoke_run(server: &TestServer, run: &str) {
    let (status, report) = admin(
        server,
        Method::POST,
        "/admin/api/revocations",
        Some(json!({"kind": "run", "value": run})),
    )
    .await;
    assert_eq!(status, 201, "{report}");
}

#[tokio::test]
async fn revoking_a_run_kills_parent_and_child_and_the_feed_says_so() {
    let (server, _dir) = server(&[]).await;
    let mut feed = SseReader::open(&server, GATEWAY_NODE, None).await;
    let snapshot = feed.next().await;
    assert_eq!(snapshot.event, "snapshot");
    let head = snapshot.data["seq"].as_u64().unwrap();
    assert_eq!(snapshot.id, Some(head));

    let (_, parent) = mint(&server, CI, &[("audience", GATEWAY), ("scope", "llm:chat")]).await;
    let parent_token = parent["access_token"].as_str().unwrap().to_owned();
    let run = claims(&parent_token)["run_id"].as_str().unwrap().to_owned();
    let (_, child) = exchange(&server, CI, &parent_token, &[]).await;
    let child_token = child["access_token"].as_str().unwrap().to_owned();
    for token in [&parent_token, &child_token] {
        let answer = introspect_as_gateway(&server, token).await;
        assert_eq!(answer["active"], true, "{answer}");
    }

    revoke_run(&server, &run).await;
    let event = feed.next().await;
    assert_eq!(event.event, "revocation");
    assert_eq!(event.data["kind"], "run");
    assert_eq!(event.data["value"], run.as_str());
    assert!(event.id.unwrap() > head);
    assert!(
        event.data["revoked_at"].as_u64().unwrap()
            >= claims(&parent_token)["iat"].as_u64().unwrap()
    );

    for token in [&parent_token, &child_token] {
        assert_eq!(
            introspect_as_gateway(&server, token).await,
            json!({"active": false}),
            "at once"
        );
    }
    let (_, polled) = read(
        server
            .peer(GATEWAY_NODE)
            .get(server.url(&format!("/revocations?since={head}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        polled["events"][0]["value"],
        run.as_str(),
        "pollers see it too"
    );

    // A subscriber resuming from the snapshot's id gets what it missed, and no snapshot.
    let mut resumed = SseReader::open(&server, GATEWAY_NODE, Some(head)).await;
    let missed = resumed.next().await;
    assert_eq!(
        (missed.event.as_str(), missed.data["value"].as_str()),
        ("revocation", Some(run.as_str()))
    );
}

/// Mints an agent token and revokes its run; returns the run id.
async fn revoke_a_run(server: &TestServer) -> String {
    let (_, agent) = mint(server, CI, &[("audience", GATEWAY), ("scope", "llm:chat")]).await;
    let run = claims(agent["access_token"].as_str().unwrap())["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    revoke_run(server, &run).await;
    run
}

#[tokio::test]
async fn a_new_subscriber_s_snapshot_holds_every_revocation_once_those_since_the_last_included() {
    let (server, _dir) = server(&[]).await;
    let early = revoke_a_run(&server).await;
    // The first subscriber's snapshot reads the store in full, and that read is kept...
    let mut first = SseReader::open(&server, GATEWAY_NODE, None).await;
    let before = first.next().await;
    assert_eq!(before.event, "snapshot");
    assert_eq!(before.data["events"][0]["value"], early.as_str());
    // ... so the next one, a moment later, is that read plus what was stored since.
    let late = revoke_a_run(&server).await;
    let mut second = SseReader::open(&server, GATEWAY_NODE, None).await;
    let snapshot = second.next().await;
    assert_eq!(snapshot.event, "snapshot");
    let values: Vec<&str> = snapshot.data["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["value"].as_str().unwrap())
        .collect();
    assert_eq!(
        values,
        [early.as_str(), late.as_str()],
        "{:?}",
        snapshot.data
    );
    let seq = snapshot.data["seq"].as_u64().unwrap();
    assert_eq!(snapshot.id, Some(seq));
    assert_eq!(Some(seq), snapshot.data["events"][1]["seq"].as_u64());
    assert!(seq > before.data["seq"].as_u64().unwrap());
    // The first subscriber hears of the late one as an event, and pollers get the same snapshot.
    let event = first.next().await;
    assert_eq!(
        (event.event.as_str(), event.data["value"].as_str()),
        ("revocation", Some(late.as_str()))
    );
    let (status, polled) = read(
        server
            .peer(GATEWAY_NODE)
            .get(server.url("/revocations"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, &polled), (200, &snapshot.data));
}

#[tokio::test]
async fn the_feed_is_for_the_tailnet() {
    let (server, _dir) = server(&[]).await;
    let response = server
        .peer(STRANGER)
        .get(server.url("/revocations"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
}

#[tokio::test]
async fn a_revoked_node_cannot_mint_until_lifted() {
    let (server, _dir) = server(&[]).await;
    let (_, before) = mint(&server, CI, &[("audience", GATEWAY)]).await;
    let revoked = json!({"kind": "node", "value": "nBuildBot42CNTRL"});
    assert_eq!(
        admin(
            &server,
            Method::POST,
            "/admin/api/revocations",
            Some(revoked.clone())
        )
        .await
        .0,
        201
    );
    let (status, body) = mint(&server, CI, &[("audience", GATEWAY)]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("access_denied"))
    );
    assert_eq!(
        introspect_as_gateway(&server, before["access_token"].as_str().unwrap()).await["active"],
        false
    );
    assert_eq!(
        admin(
            &server,
            Method::POST,
            "/admin/api/revocations/lift",
            Some(revoked)
        )
        .await
        .0,
        200
    );
    // Times are whole seconds and a revocation covers tokens issued at or before it, so a
    // token is new only from the next second on.
    server.clock.advance(1);
    let (status, after) = mint(&server, CI, &[("audience", GATEWAY)]).await;
    assert_eq!(status, 200);
    assert_eq!(
        introspect_as_gateway(&server, after["access_token"].as_str().unwrap()).await["active"],
        true
    );
    assert_eq!(
        introspect_as_gateway(&server, before["access_token"].as_str().unwrap()).await["active"],
        false,
        "revoked stays revoked"
    );
}

/// Revokes the user Alice through the admin API.
async fn revoke_alice(server: &TestServer) -> (u16, Value) {
    admin(
        server,
        Method::POST,
        "/admin/api/revocations",
        Some(json!({"kind": "user", "value": "alice@example.com"})),
    )
    .await
}

#[tokio::test]
async fn revoking_a_user_ends_their_sessions() {
    let (server, _dir) = server(&[]).await;
    let (id, secret) = register(&server, json!({"name": "app", "redirect_uris": [REDIRECT]})).await;
    let secret = secret.unwrap();
    let c = code(&server, ALICE, &id, &[]).await;
    let (_, tokens) = redeem(&server, (&id, Some(&secret)), &c, VERIFIER).await;
    let (status, report) = revoke_alice(&server).await;
    assert_eq!((status, report["sessions_ended"].as_u64()), (201, Some(1)));
    let (status, _) = token(
        &server,
        (&id, Some(&secret)),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(status, 400, "the session is over");
    let userinfo = server
        .peer(1)
        .get(server.url("/userinfo"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(userinfo.status(), 401);
    let back = crate::authorize::open(
        &server,
        ALICE,
        &crate::authorize::authorize_url(&server, &id, &[]),
    )
    .await
    .unwrap();
    assert_eq!(
        crate::login::param(&back, "error").as_deref(),
        Some("access_denied"),
        "no new login until lifted"
    );
}

#[tokio::test]
async fn the_audit_lists_every_step_of_a_run() {
    let (server, _dir) = server(&[]).await;
    let (_, parent) = mint(
        &server,
        CI,
        &[("audience", GATEWAY), ("run_label", "nightly #12")],
    )
    .await;
    let parent_token = parent["access_token"].as_str().unwrap();
    let run = claims(parent_token)["run_id"].as_str().unwrap().to_owned();
    let (_, child) = exchange(&server, CI, parent_token, &[]).await;
    let child_run = claims(child["access_token"].as_str().unwrap())["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, refused) = exchange(
        &server,
        CI,
        parent_token,
        &[("audience", "https://docs.tail1234.ts.net")],
    )
    .await;
    assert_eq!(refused["error"], "invalid_target");
    admin(
        &server,
        Method::POST,
        "/admin/api/revocations",
        Some(json!({"kind": "run", "value": run})),
    )
    .await;
    mint(&server, CI, &[("audience", GATEWAY)]).await; // another run: not listed

    let (status, events) = admin(
        &server,
        Method::GET,
        &format!("/admin/api/audit?run={run}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let steps: Vec<(String, String, Option<String>)> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().into(),
                e["outcome"].as_str().unwrap().into(),
                e["run_id"].as_str().map(Into::into),
            )
        })
        .collect();
    assert_eq!(
        steps,
        vec![
            ("agent_token".into(), "success".into(), Some(run.clone())),
            (
                "token_exchange".into(),
                "success".into(),
                Some(child_run.clone())
            ),
            ("revocation".into(), "success".into(), Some(run.clone())),
        ],
        "{events}"
    );
    let first = &events[0];
    assert_eq!(first["run_label"], "nightly #12");
    assert_eq!(first["node_id"], "nBuildBot42CNTRL");
    assert_eq!(first["tags"], json!(["tag:ci", "tag:claude-pr-reviewbot"]));
    assert_eq!(first["audience"], json!([GATEWAY]));
    assert!(first["jti"].is_string());
    assert_eq!(events[1]["parent_run_id"], run.as_str());
}

#[tokio::test]
async fn revoking_a_user_tells_the_relying_party_of_each_session() {
    let (server, _dir) = server(&[]).await;
    let (id, secret, mut received) = crate::sessions::client_told_of_logouts(&server).await;
    let c = code(&server, ALICE, &id, &[]).await;
    let (status, tokens) = redeem(&server, (&id, Some(&secret)), &c, VERIFIER).await;
    assert_eq!(status, 200, "{tokens}");
    let sid = crate::sessions::sid_of(&tokens);
    let (status, report) = revoke_alice(&server).await;
    assert_eq!((status, report["sessions_ended"].as_u64()), (201, Some(1)));
    crate::sessions::told_alice_ended(&mut received, &id, &sid).await;
}
