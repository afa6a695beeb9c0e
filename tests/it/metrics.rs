//! `/metrics`: counters move with what the server does, and only tailnet peers may read them.

use crate::agents::{mint, server};
use crate::support::{ALICE, CI, GATEWAY, STRANGER, TestServer};

async fn scrape(server: &TestServer, from: u8) -> (u16, String) {
    let response = server
        .peer(from)
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The value of the series whose line starts with `series`, 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn counters_move_with_a_flow_and_strangers_cannot_read_them() {
    let (server, _dir) = server(&[]).await;
    let (status, before) = scrape(&server, ALICE).await;
    assert_eq!(status, 200);
    let issued = "tailpass_events_total{event=\"agent_token\",outcome=\"success\"}";
    let denied = "tailpass_denials_total{event=\"agent_token\",reason=\"not_on_tailnet\"}";
    let token_requests = "tailpass_http_request_duration_seconds_count{endpoint=\"/token\"}";

    for _ in 0..2 {
        assert_eq!(mint(&server, CI, &[("audience", GATEWAY)]).await.0, 200);
    }
    assert_eq!(
        mint(&server, STRANGER, &[("audience", GATEWAY)]).await.0,
        401
    );

    let (_, after) = scrape(&server, ALICE).await;
    assert_eq!(
        value(&after, issued) - value(&before, issued),
        2.0,
        "{after}"
    );
    assert_eq!(
        value(&after, denied) - value(&before, denied),
        1.0,
        "{after}"
    );
    assert_eq!(
        value(&after, token_requests) - value(&before, token_requests),
        3.0
    );
    assert!(value(&after, "tailpass_signing_keys{state=\"active\"}") >= 1.0);
    assert!(after.contains("# TYPE tailpass_feed_subscribers gauge"));

    let (status, _) = scrape(&server, STRANGER).await;
    assert_eq!(status, 403, "not on the tailnet");
}
