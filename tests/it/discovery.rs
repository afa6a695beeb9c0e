//! Provider metadata: both well-known documents, their fields, and that everything they
//! advertise is really there.

use crate::support::{ALICE, TestServer, get_json, json, peer};

#[tokio::test]
async fn both_documents_agree_and_name_this_issuer() {
    let server = TestServer::start().await;
    let client = peer(ALICE);
    let oidc = client
        .get(server.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        oidc.headers()["access-control-allow-origin"],
        "*",
        "discovery is public"
    );
    let (status, oidc) = json(oidc).await;
    assert_eq!(status, 200);
    let (_, oauth) = get_json(
        ALICE,
        &server.url("/.well-known/oauth-authorization-server"),
    )
    .await;
    assert_eq!(oidc, oauth);
    assert_eq!(oidc["issuer"], server.base);
    assert_eq!(oidc["jwks_uri"], server.url("/.well-known/jwks.json"));
    assert_eq!(oidc["registration_endpoint"], server.url("/register"));
    assert_eq!(
        oidc["subject_types_supported"],
        serde_json::json!(["public"])
    );
    assert_eq!(
        oidc["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256", "RS256"])
    );
}

#[tokio::test]
async fn every_advertised_endpoint_exists() {
    let server = TestServer::start().await;
    let client = peer(ALICE);
    let (_, doc) = get_json(ALICE, &server.url("/.well-known/openid-configuration")).await;
    for (name, value) in doc.as_object().unwrap() {
        if !(name.ends_with("_endpoint") || name.ends_with("_uri")) {
            continue;
        }
        let url = value.as_str().unwrap();
        assert!(url.starts_with(&server.base), "{name} is on this issuer");
        let get = client.get(url).send().await.unwrap().status().as_u16();
        let post = client.post(url).send().await.unwrap().status().as_u16();
        assert!(
            get < 500 && post < 500,
            "{name} = {url} answers GET {get}, POST {post}: bad input is never a server error"
        );
        assert!(
            [get, post].iter().any(|s| ![404, 405].contains(s)),
            "{name} = {url} is advertised but not served (GET {get}, POST {post})"
        );
    }
}

#[tokio::test]
async fn algorithms_follow_the_configuration() {
    let server = TestServer::with_args(&["--signing-alg", "EdDSA", "--no-rs256"]).await;
    let (_, doc) = get_json(ALICE, &server.url("/.well-known/openid-configuration")).await;
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        serde_json::json!(["EdDSA"])
    );
}

#[tokio::test]
async fn a_foreign_host_header_is_refused_but_health_answers() {
    let server = TestServer::start().await;
    let client = peer(ALICE);
    let (status, body) = json(
        client
            .get(server.url("/.well-known/openid-configuration"))
            .header("host", "evil.example")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let health = client
        .get(server.url("/healthz"))
        .header("host", "10.1.2.3:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_json() {
    let server = TestServer::start().await;
    let client = peer(ALICE);
    let (status, body) = get_json(ALICE, &server.url("/no/such/thing")).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, body) = json(
        client
            .delete(server.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (405, Some("invalid_request"))
    );
}
