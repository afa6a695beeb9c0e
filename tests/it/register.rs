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

#[tokio::test]
async fn a_redirect_uri_with_a_space_tab_or_control_character_is_refused() {
    let server = TestServer::start().await;
    for uri in [
        "https://app.example/c b",
        "https://app.example/cb\t",
        "https://app.ex\nample/cb",
        " https://app.example/cb",
        "https://app.example/cb\u{0}",
    ] {
        let (status, body) = register(&server, ALICE, &json!({"redirect_uris": [uri]})).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_redirect_uri")),
            "{uri:?}: {body}"
        );
        let (status, body) = register(
            &server,
            ALICE,
            &json!({"redirect_uris": ["https://app.example/cb"], "post_logout_redirect_uris": [uri]}),
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_redirect_uri")),
            "post-logout {uri:?}: {body}"
        );
    }
    assert!(
        server.state().clients.list().await.unwrap().is_empty(),
        "nothing stored"
    );
}

#[tokio::test]
async fn a_registration_carrying_jwks_is_accepted_and_the_key_set_ignored() {
    let server = TestServer::start().await;
    // The shape of the OpenID conformance suite's dynamic registration.
    let jwks = json!({"keys": [{
        "kty": "RSA", "e": "AQAB", "use": "sig", "kid": "conformance", "alg": "RS256",
        "n": "sZ7Cv0vZ3G2s9O8Wl8w2c2m0ZbJ3lZ8JHq0dYp5Qv8b4r2R0rXJY0r8b6e3Q4sZVQ"
    }]});
    let (status, body) = register(
        &server,
        ALICE,
        &json!({
            "redirect_uris": ["https://conformance.example/test/callback"],
            "client_name": "conformance",
            "jwks": jwks,
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
        }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(body.get("jwks").is_none(), "the key set is not kept");
    let stored = server
        .state()
        .clients
        .get(body["client_id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(
        !serde_json::to_string(&*stored).unwrap().contains("sZ7Cv0"),
        "nor stored"
    );
    let client_id = body["client_id"].as_str().unwrap().to_owned();
    // Still unsupported, jwks or not.
    for (extra, needle) in [
        (
            json!({"token_endpoint_auth_method": "private_key_jwt"}),
            "private_key_jwt",
        ),
        (
            json!({"jwks_uri": "https://conformance.example/jwks"}),
            "jwks_uri",
        ),
        (json!({"jwks": "not a key set"}), "JWK Set"),
    ] {
        let mut request =
            json!({"redirect_uris": ["https://conformance.example/cb"], "jwks": jwks});
        for (k, v) in extra.as_object().unwrap() {
            request[k] = v.clone();
        }
        let (status, body) = register(&server, ALICE, &request).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_client_metadata")),
            "{request}"
        );
        assert!(
            body["error_description"].as_str().unwrap().contains(needle),
            "{body}"
        );
    }
    // Request objects stay unsupported at /authorize: registering jwks does not enable them.
    let mut url = url::Url::parse(&server.url("/authorize")).unwrap();
    url.query_pairs_mut().extend_pairs([
        ("response_type", "code"),
        ("client_id", &client_id),
        ("redirect_uri", "https://conformance.example/test/callback"),
        ("scope", "openid"),
        ("request", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"),
    ]);
    let back = peer(ALICE).get(url.as_str()).send().await.unwrap();
    assert_eq!(back.status(), 302);
    let location = url::Url::parse(back.headers()["location"].to_str().unwrap()).unwrap();
    assert!(
        location
            .query_pairs()
            .any(|(k, v)| k == "error" && v == "request_not_supported"),
        "{location}"
    );
}

#[tokio::test]
async fn an_undecodable_path_parameter_is_an_oauth_json_error() {
    let server = TestServer::start().await;
    let (_, registered) = register(&server, ALICE, &valid()).await;
    let token = registered["registration_access_token"].as_str().unwrap();
    for path in ["/register/%FF", "/register/%C3%28", "/register/a%ED%A0%80b"] {
        let response = peer(ALICE)
            .get(server.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["cache-control"], "no-store", "{path}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{path}"
        );
        let (status, body) = read(response).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{path}: {body}"
        );
    }
    // The admin API, through its socket, answers alike.
    for method in [
        axum::http::Method::GET,
        axum::http::Method::DELETE,
        axum::http::Method::POST,
    ] {
        let path = if method == axum::http::Method::POST {
            "/admin/api/clients/%FF/secret"
        } else {
            "/admin/api/clients/%FF"
        };
        let (status, body) = crate::support::admin(&server, method.clone(), path, None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{method} {path}: {body}"
        );
    }
}

#[tokio::test]
async fn a_failed_allowed_users_write_leaves_no_client_behind() {
    let server = TestServer::start().await;
    // From now on every change to a stored client fails, in the real database: a creation
    // that wrote the client first and its access rule second would leave it open to all.
    let db = rusqlite::Connection::open(server.state_dir().join("tailpass.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    db.execute_batch(
        "CREATE TRIGGER test_client_updates_fail BEFORE UPDATE ON clients \
         BEGIN SELECT RAISE(ABORT, 'client updates fail in this test'); END;",
    )
    .unwrap();
    let (status, created) = crate::support::admin(
        &server,
        axum::http::Method::POST,
        "/admin/api/clients",
        Some(json!({"name": "ledger", "redirect_uris": [crate::login::REDIRECT], "users": ["bob@example.com"]})),
    )
    .await;
    let stored = server.state().clients.list().await.unwrap();
    assert!(
        stored.iter().all(|c| c.users == ["bob@example.com"]),
        "no client without its access rule: {stored:?}"
    );
    assert_eq!(status, 201, "one write, which succeeds: {created}");
    assert_eq!(created["client"]["users"], json!(["bob@example.com"]));
    let id = created["client_id"].as_str().unwrap();
    let back = crate::authorize::open(
        &server,
        ALICE,
        &crate::authorize::authorize_url(&server, id, &[]),
    )
    .await
    .unwrap();
    assert_eq!(
        crate::login::param(&back, "error").as_deref(),
        Some("access_denied"),
        "Alice is not in the access rule"
    );
}

#[tokio::test]
async fn a_self_registered_backchannel_logout_uri_is_https_on_a_redirect_host_and_never_internal() {
    let server = TestServer::start().await;
    let redirect = "https://wiki.example/cb";
    for uri in [
        "http://wiki.example/logout",
        "https://elsewhere.example/logout",
        "https://127.0.0.1/logout",
        "https://localhost/logout",
        "https://169.254.169.254/latest/meta-data/",
        "https://[fd00:ec2::254]/",
        "https://[::ffff:127.0.0.1]/logout",
    ] {
        let (status, body) = register(
            &server,
            ALICE,
            &json!({"redirect_uris": [redirect, "https://169.254.169.254/cb", "https://[fd00:ec2::254]/cb", "https://127.0.0.1/cb"],
                    "backchannel_logout_uri": uri}),
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_client_metadata")),
            "{uri}: {body}"
        );
    }
    let (status, body) = register(
        &server,
        ALICE,
        &json!({"redirect_uris": [redirect], "backchannel_logout_uri": "https://wiki.example/logout"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // An operator may point a client at an internal endpoint.
    let (id, _) = crate::login::register(
        &server,
        json!({"name": "internal", "redirect_uris": [crate::login::REDIRECT],
               "backchannel_logout_uri": "http://127.0.0.1:9/logout"}),
    )
    .await;
    assert!(!id.is_empty());
}
