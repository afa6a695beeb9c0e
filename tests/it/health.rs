//! The probes' listener (`--health-listen`): `/healthz` and `/readyz` only, for anyone who
//! reaches it, whatever `Host` it names; and `/readyz` beside `/healthz` on the main listener.

use crate::support::{ALICE, TestServer, peer};

#[tokio::test]
async fn the_health_listener_answers_health_and_readiness_and_nothing_else() {
    let server = TestServer::with_args(&["--health-listen", "127.0.0.1:0"]).await;
    let addr = server.running().health_addr().unwrap();
    assert_ne!(addr, server.running().addr());
    // A probe has no tailnet identity and names the pod's address, not the issuer.
    let probe = reqwest::Client::new();
    let get = |path: &str| {
        probe
            .get(format!("http://{addr}{path}"))
            .header("host", "10.1.2.3:9999")
            .send()
    };
    let healthz = get("/healthz").await.unwrap();
    assert_eq!(healthz.status(), 200);
    assert_eq!(
        healthz.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"status": "ok"})
    );
    let readyz = get("/readyz").await.unwrap();
    assert_eq!(readyz.status(), 200);
    assert_eq!(
        readyz.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"status": "ready"})
    );
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/jwks.json",
        "/metrics",
        "/admin/api/keys",
        "/token",
    ] {
        assert_eq!(get(path).await.unwrap().status(), 404, "{path}");
    }
}

#[tokio::test]
async fn readiness_is_served_on_the_main_listener_too() {
    let server = TestServer::start().await;
    assert!(server.running().health_addr().is_none());
    let readyz = peer(ALICE).get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), 200);
    assert_eq!(
        readyz.json::<serde_json::Value>().await.unwrap()["status"],
        "ready"
    );
}
