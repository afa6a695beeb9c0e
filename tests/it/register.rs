//! Dynamic client registration (RFC 7591) and its management API (RFC 7592).

use serde_json::json;

use crate::support::{ALICE, BOB, CI, STRANGER, TestServer, json as read, peer};

fn valid() -> serde_json::Value {
    json!({"redirect_uris": ["https://app.example/cb"], "client_name": "Wiki"})
}

async fn register(
    server: &TestServer,
    from: u8,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    read(
        peer(from)
            .post(server.url("/register"))
            .json(body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn a_caller_with_allow_dcr_registers_and_manages_a_client() {
    let server = TestServer::start().await;
    let response = peer(ALICE)
        .post(server.url("/register"))
        .json(&valid())
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["cache-control"], "no-store");
    let (status, body) = read(response).await;
    assert_eq!(status, 201, "{body}");
    let client_id = body["client_id"].as_str().unwrap().to_owned();
    let secret = body["client_secret"].as_str().unwrap().to_owned();
    let token = body["registration_access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(secret.len(), 43, "a 256-bit secret");
    assert_eq!(body["client_secret_expires_at"], 0);
    assert_eq!(body["token_endpoint_auth_method"], "client_secret_basic");
    assert_eq!(
        body["id_token_signed_response_alg"], "RS256",
        "OIDC's default"
    );
    let uri = body["registration_client_uri"].as_str().unwrap().to_owned();
    assert_eq!(uri, server.url(&format!("/register/{client_id}")));

    // The secret works against the stored hash; the store never saw it in clear.
    let stored = server
        .state()
        .clients
        .get(&client_id)
        .await
        .unwrap()
        .unwrap();
    assert!(stored.secret_matches(&secret));
    assert!(!serde_json::to_string(&*stored).unwrap().contains(&secret));
    assert_eq!(stored.created_by.as_deref(), Some("alice@example.com"));

    // RFC 7592: read, update, delete with the registration access token.
    let client = peer(BOB); // the token is the credential, not the network identity
    let (status, read_back) =
        read(client.get(&uri).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(read_back["client_name"], "Wiki");
    assert!(
        read_back.get("client_secret").is_none(),
        "the secret is shown once"
    );

    let update = json!({"client_id": client_id, "redirect_uris": ["https://app.example/cb2"], "client_name": "Wiki 2"});
    let (status, updated) = read(
        client
            .put(&uri)
            .bearer_auth(&token)
            .json(&update)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["redirect_uris"], json!(["https://app.example/cb2"]));

    let (status, body) = read(client.get(&uri).bearer_auth("wrong").send().await.unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_token"))
    );

    let deleted = client
        .delete(&uri)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let gone = client.get(&uri).bearer_auth(&token).send().await.unwrap();
    assert_eq!(
        gone.status(),
        401,
        "a deleted client and a bad token look alike"
    );
    assert!(
        gone.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
}

#[tokio::test]
async fn update_rules_of_rfc7592() {
    let server = TestServer::start().await;
    let (_, body) = register(&server, ALICE, &valid()).await;
    let uri = body["registration_client_uri"].as_str().unwrap();
    let token = body["registration_access_token"].as_str().unwrap();
    let id = body["client_id"].as_str().unwrap();
    let client = peer(ALICE);
    for (update, code) in [
        (
            json!({"client_id": "someone-else", "redirect_uris": ["https://a.example/cb"]}),
            "invalid_request",
        ),
        (
            json!({"client_id": id, "redirect_uris": ["https://a.example/cb"], "registration_access_token": token}),
            "invalid_request",
        ),
        (
            json!({"client_id": id, "redirect_uris": ["https://a.example/cb"], "client_secret": "wrong"}),
            "invalid_request",
        ),
        (
            json!({"client_id": id, "redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "none"}),
            "invalid_client_metadata",
        ),
        (
            json!({"client_id": id, "redirect_uris": ["data:text/html,x"]}),
            "invalid_redirect_uri",
        ),
    ] {
        let (status, body) = read(
            client
                .put(uri)
                .bearer_auth(token)
                .json(&update)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some(code)),
            "{update}"
        );
    }
}

#[tokio::test]
async fn refused_without_the_grant_and_off_the_tailnet() {
    let server = TestServer::start().await;
    for (who, description) in [
        (BOB, "the caller has no allow_dcr grant"),
        (CI, "the caller has no allow_dcr grant"),
        (STRANGER, "the caller is not on the tailnet"),
    ] {
        let (status, body) = register(&server, who, &valid()).await;
        assert_eq!(status, 403);
        assert_eq!(body["error"], "access_denied");
        assert_eq!(body["error_description"], description);
    }
    assert!(server.state().clients.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn refused_cross_site() {
    let server = TestServer::start().await;
    let origin = server.base.clone();
    for headers in [
        vec![("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-site")],
        vec![("origin", "https://evil.example")],
        vec![
            ("sec-fetch-site", "same-origin"),
            ("origin", "http://127.0.0.1:1"),
        ],
    ] {
        let mut request = peer(ALICE).post(server.url("/register")).json(&valid());
        for (k, v) in &headers {
            request = request.header(*k, *v);
        }
        let (status, body) = read(request.send().await.unwrap()).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("access_denied")),
            "{headers:?}"
        );
        assert!(body.get("client_id").is_none());
    }
    // The same registration from the issuer's own origin is fine.
    let (status, _) = read(
        peer(ALICE)
            .post(server.url("/register"))
            .header("sec-fetch-site", "same-origin")
            .header("origin", origin)
            .json(&valid())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn bad_metadata_is_named() {
    let server = TestServer::start().await;
    let cases = [
        (
            json!({"client_name": "no redirect"}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": "https://a.example/cb"}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb"], "grant_types": ["implicit"]}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb"], "response_types": ["token"]}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "private_key_jwt"}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb"], "id_token_signed_response_alg": "none"}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb"], "id_token_signed_response_alg": "HS256"}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb"], "resources": ["*"]}),
            "invalid_client_metadata",
        ),
        (json!([1, 2, 3]), "invalid_client_metadata"),
    ];
    for (body, code) in cases {
        let (status, answer) = register(&server, ALICE, &body).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some(code)),
            "{body} → {answer}"
        );
    }
    // Not JSON at all.
    let (status, answer) = read(
        peer(ALICE)
            .post(server.url("/register"))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_client_metadata"))
    );
    // Too large.
    let huge =
        json!({"redirect_uris": ["https://a.example/cb"], "client_name": "x".repeat(100_000)});
    let (status, answer) = register(&server, ALICE, &huge).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (413, Some("invalid_request"))
    );
}

#[tokio::test]
async fn bad_redirect_uris_are_refused() {
    let server = TestServer::start().await;
    for uri in [
        "javascript:alert(document.cookie)",
        "data:text/html;base64,PHNjcmlwdD4=",
        "file:///etc/passwd",
        "http://grafana.tail1234.ts.net/callback",
        "https://app.example/cb#fragment",
        "https://user:pw@app.example/cb",
        "not a uri",
        "myapp:/cb",
    ] {
        let (status, body) = register(&server, ALICE, &json!({"redirect_uris": [uri]})).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_redirect_uri")),
            "{uri}"
        );
    }
    for uri in [
        "http://127.0.0.1:9000/cb",
        "http://localhost/cb",
        "com.example.app:/oauth2redirect",
    ] {
        let (status, body) = register(
            &server,
            ALICE,
            &json!({"redirect_uris": [uri], "token_endpoint_auth_method": "none"}),
        )
        .await;
        assert_eq!(status, 201, "{uri}: {body}");
        assert!(
            body.get("client_secret").is_none(),
            "a public client gets no secret"
        );
    }
}
