//! Distinct loopback addresses are distinct tailnet peers: the identity follows the source
//! address of the connection, and an address that is not in the table is no one.

use axum::http::Method;

use crate::support::{ALICE, BOB, CI, STRANGER, TestServer, get_json, ip, json, peer};

#[tokio::test]
async fn two_addresses_two_identities_and_a_stranger() {
    let server = TestServer::start().await;
    let identity = server.state().identity.clone();
    let alice = identity.whois((ip(ALICE), 40000).into()).await.unwrap();
    let ci = identity.whois((ip(CI), 40000).into()).await.unwrap();
    assert_eq!(alice.user.as_ref().unwrap().login, "alice@example.com");
    assert!(ci.is_tagged());
    assert_eq!(ci.node.stable_id.0, "nBuildBot42CNTRL");
    assert_ne!(alice.node.stable_id, ci.node.stable_id);
    assert!(identity.whois((ip(STRANGER), 40000).into()).await.is_err());
}

#[tokio::test]
async fn the_server_sees_the_connection_source() {
    // The admin API over HTTP is the identity-dependent endpoint of this layer: Alice holds
    // allow_admin_ui, Bob and the CI node do not, the stranger is nobody.
    let server = TestServer::start().await;
    let url = server.url("/admin/api/clients");
    let (status, _) = get_json(ALICE, &url).await;
    assert_eq!(status, 200);
    let (status, body) = get_json(BOB, &url).await;
    assert_eq!(
        (status, body["error_description"].as_str()),
        (403, Some("the caller has no allow_admin_ui grant"))
    );
    let (status, _) = get_json(CI, &url).await;
    assert_eq!(status, 403);
    let (status, body) = get_json(STRANGER, &url).await;
    assert_eq!(
        (status, body["error_description"].as_str()),
        (403, Some("the caller is not on the tailnet"))
    );
}

#[tokio::test]
async fn headers_cannot_claim_an_identity_on_the_main_listener() {
    let server = TestServer::start().await;
    // A stranger that claims to be Alice by X-Forwarded-For or tailscale serve's identity
    // headers is still a stranger.
    let (status, _) = json(
        peer(STRANGER)
            .get(server.url("/admin/api/clients"))
            .header("x-forwarded-for", ip(ALICE).to_string())
            .header("tailscale-user-login", "alice@example.com")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn the_proxy_listener_trusts_the_last_forwarded_for_only() {
    let server = TestServer::with_args(&["--proxy-listen", "127.0.0.1:0"]).await;
    let proxy = server.running().proxy_addr().unwrap();
    let url = format!("http://{proxy}/admin/api/clients");
    // The issuer's Host, as tailscale serve forwards it.
    let host = server.base.trim_start_matches("http://").to_owned();
    let get = |xff: &'static str| {
        let url = url.clone();
        let host = host.clone();
        async move {
            let mut req = peer(1).get(&url).header("host", host);
            if !xff.is_empty() {
                req = req.header("x-forwarded-for", xff);
            }
            req.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(get("127.0.0.2").await, 200, "Alice through the proxy");
    assert_eq!(
        get("127.0.0.2, 127.0.0.4").await,
        403,
        "the last value (Bob) counts"
    );
    assert_eq!(get("").await, 403, "no X-Forwarded-For, no identity");
    let funnel = peer(1)
        .get(&url)
        .header("host", host.clone())
        .header("x-forwarded-for", "127.0.0.2")
        .header("tailscale-funnel-request", "?1")
        .send()
        .await
        .unwrap();
    let (status, body) = json(funnel).await;
    assert_eq!(
        (status, body["error_description"].as_str()),
        (403, Some("funnel requests carry no tailnet identity"))
    );
}

#[tokio::test]
async fn the_admin_socket_needs_no_identity() {
    let server = TestServer::start().await;
    let (status, body) =
        crate::support::admin(&server, Method::GET, "/admin/api/clients", None).await;
    assert_eq!(status, 200);
    assert!(body.as_array().unwrap().is_empty());
}
