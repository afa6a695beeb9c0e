//! Sessions after login: consent for self-registered clients, refresh rotation and reuse,
//! survival across a restart, introspection's rules, and logout with back-channel
//! notification.

use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};
use tailpass_verify::claims::{BACKCHANNEL_LOGOUT_EVENT, LogoutClaims};
use tailpass_verify::{JwkSet, Jws, VerifyingKey};
use tokio::sync::mpsc;
use url::Url;

use crate::authorize::{
    VERIFIER, authorize_url, claims, code, open, redeem, token, token_introspect,
};
use crate::login::{REDIRECT, alice_sub, param, register};
use crate::support::{ALICE, BOB, TestServer, json as read, peer};

/// Hidden inputs of an HTML form, unescaped.
pub fn hidden_fields(html: &str) -> Vec<(String, String)> {
    let unescape = |s: &str| {
        s.replace("&#34;", "\"")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&#x27;", "'")
            .replace("&#60;", "<")
            .replace("&lt;", "<")
            .replace("&#62;", ">")
            .replace("&gt;", ">")
            .replace("&#38;", "&")
            .replace("&amp;", "&")
    };
    html.split("<input type=\"hidden\" ")
        .skip(1)
        .filter_map(|rest| {
            let name = rest.split("name=\"").nth(1)?.split('"').next()?;
            let value = rest.split("value=\"").nth(1)?.split('"').next()?;
            Some((unescape(name), unescape(value)))
        })
        .collect()
}

pub async fn submit_consent(
    server: &TestServer,
    from: u8,
    fields: &[(String, String)],
    decision: &str,
    origin: &str,
) -> reqwest::Response {
    let mut form: Vec<(String, String)> = fields.to_vec();
    form.push(("decision".into(), decision.into()));
    server
        .peer(from)
        .post(server.url("/authorize/consent"))
        .header("origin", origin)
        .header("sec-fetch-site", "same-origin")
        .form(&form)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_self_registered_client_asks_each_user_once() {
    let server = TestServer::start().await;
    let (status, registered) = read(
        peer(ALICE)
            .post(server.url("/register"))
            .json(&json!({"redirect_uris": [REDIRECT], "client_name": "Wiki"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
    let id = registered["client_id"].as_str().unwrap().to_owned();

    let page = open(&server, ALICE, &authorize_url(&server, &id, &[]))
        .await
        .unwrap_err();
    assert_eq!(page.0, 200, "a consent page, not a code");
    assert!(page.1.contains("Wiki") && page.1.contains("alice@example.com"));
    let fields = hidden_fields(&page.1);
    assert!(fields.iter().any(|(k, _)| k == "consent_token"));

    // Another site cannot approve for Alice; nor can a tampered form.
    let cross = server
        .peer(ALICE)
        .post(server.url("/authorize/consent"))
        .header("sec-fetch-site", "cross-site")
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    let mut tampered = fields.clone();
    for (k, v) in &mut tampered {
        if k == "scope" {
            *v = "openid profile email groups".into();
        }
    }
    assert_eq!(
        submit_consent(&server, ALICE, &tampered, "approve", &server.base)
            .await
            .status(),
        403
    );
    // Nor can Bob replay Alice's form.
    assert_eq!(
        submit_consent(&server, BOB, &fields, "approve", &server.base)
            .await
            .status(),
        403
    );

    let approved = submit_consent(&server, ALICE, &fields, "approve", &server.base).await;
    assert_eq!(approved.status(), 303);
    let back = Url::parse(approved.headers()["location"].to_str().unwrap()).unwrap();
    assert!(param(&back, "code").is_some());
    // Once: the next login goes straight through.
    let back = open(&server, ALICE, &authorize_url(&server, &id, &[]))
        .await
        .unwrap();
    assert!(param(&back, "code").is_some());
    // Per user: Bob has not consented; with prompt=none he gets consent_required.
    let back = open(
        &server,
        BOB,
        &authorize_url(&server, &id, &[("prompt", "none")]),
    )
    .await
    .unwrap();
    assert_eq!(param(&back, "error").as_deref(), Some("consent_required"));
    let page = open(&server, BOB, &authorize_url(&server, &id, &[]))
        .await
        .unwrap_err();
    let declined =
        submit_consent(&server, BOB, &hidden_fields(&page.1), "deny", &server.base).await;
    let back = Url::parse(declined.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(param(&back, "error").as_deref(), Some("access_denied"));
    // Pages that act forbid framing.
    let framed = server
        .peer(ALICE)
        .get(authorize_url(&server, &id, &[("prompt", "consent")]))
        .send()
        .await
        .unwrap();
    assert!(
        framed.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
}

async fn login(server: &TestServer, id: &str, secret: &str) -> Value {
    let c = code(server, ALICE, id, &[]).await;
    let (status, body) = redeem(server, (id, Some(secret)), &c, VERIFIER).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn a_reused_refresh_token_revokes_its_whole_family() {
    let server = TestServer::start().await;
    let (id, secret) = register(&server, json!({"name": "app", "redirect_uris": [REDIRECT]})).await;
    let secret = secret.unwrap();
    let client = (id.as_str(), Some(secret.as_str()));
    let first = login(&server, &id, &secret).await;
    let r1 = first["refresh_token"].as_str().unwrap();
    let (status, second) = token(
        &server,
        client,
        &[("grant_type", "refresh_token"), ("refresh_token", r1)],
    )
    .await;
    assert_eq!(status, 200);
    let r2 = second["refresh_token"].as_str().unwrap();
    let (_, introspected) = token_introspect(&server, client, r2).await;
    assert_eq!(
        (
            introspected["active"].as_bool(),
            introspected["token_type"].as_str()
        ),
        (Some(true), Some("refresh_token"))
    );

    let (status, body) = token(
        &server,
        client,
        &[("grant_type", "refresh_token"), ("refresh_token", r1)],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("reused")
    );
    let (status, _) = token(
        &server,
        client,
        &[("grant_type", "refresh_token"), ("refresh_token", r2)],
    )
    .await;
    assert_eq!(status, 400, "the current token of the family is dead too");
    assert_eq!(
        userinfo_status(&server, &second).await,
        401,
        "and the family's access tokens"
    );
    assert_eq!(
        token_introspect(&server, client, r2).await.1,
        json!({"active": false})
    );
}

#[tokio::test]
async fn a_refresh_token_survives_a_restart() {
    let server = TestServer::start().await;
    let (id, secret) = register(&server, json!({"name": "app", "redirect_uris": [REDIRECT]})).await;
    let secret = secret.unwrap();
    let tokens = login(&server, &id, &secret).await;
    let dir = server.stop().await;
    let table = dir.path().join("peers.json").to_str().unwrap().to_owned();
    let server = TestServer::in_dir(dir, &[], &["--identity-file", &table]).await;
    let (status, body) = token(
        &server,
        (&id, Some(&secret)),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        claims(body["id_token"].as_str().unwrap())["sub"],
        alice_sub()
    );
}

#[tokio::test]
async fn introspection_is_for_authenticated_clients_about_their_tokens() {
    let server = TestServer::start().await;
    let (a, a_secret) = register(&server, json!({"name": "a", "redirect_uris": [REDIRECT]})).await;
    let (b, b_secret) = register(&server, json!({"name": "b", "redirect_uris": [REDIRECT]})).await;
    let (public, _) = register(
        &server,
        json!({"name": "p", "redirect_uris": [REDIRECT], "public": true}),
    )
    .await;
    let tokens = login(&server, &a, a_secret.as_deref().unwrap()).await;
    let access = tokens["access_token"].as_str().unwrap();
    let (status, body) = token_introspect(&server, (&a, a_secret.as_deref()), access).await;
    assert_eq!((status, body["active"].as_bool()), (200, Some(true)));
    assert_eq!(body["scope"], "openid profile email");
    let (status, body) = token_introspect(&server, (&b, b_secret.as_deref()), access).await;
    assert_eq!(
        (status, body),
        (200, json!({"active": false})),
        "another client's token"
    );
    let (status, body) = read(
        peer(1)
            .post(server.url("/introspect"))
            .form(&[("token", access), ("client_id", &public)])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let (status, body) = token_introspect(&server, (&a, a_secret.as_deref()), "garbage").await;
    assert_eq!((status, body), (200, json!({"active": false})));
}

#[derive(Clone)]
struct Rp(mpsc::Sender<String>);

async fn backchannel(State(rp): State<Rp>, body: String) -> &'static str {
    let _ = rp.0.send(body).await;
    "ok"
}

/// A relying party's back-channel logout endpoint: a test double of an app that receives
/// logout tokens.
pub async fn test_rp() -> (String, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::channel(8);
    let app = axum::Router::new()
        .route("/backchannel", post(backchannel))
        .with_state(Rp(tx));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/backchannel"), rx)
}

#[tokio::test]
async fn logout_ends_the_session_and_tells_the_relying_party() {
    let server = TestServer::start().await;
    let (uri, mut received) = test_rp().await;
    let after = "http://127.0.0.1:9/signed-out";
    let (id, secret) = register(
        &server,
        json!({
            "name": "app", "redirect_uris": [REDIRECT], "backchannel_logout_uri": uri,
            "post_logout_redirect_uris": [after], "id_token_alg": "ES256"
        }),
    )
    .await;
    let secret = secret.unwrap();
    let tokens = login(&server, &id, &secret).await;
    let id_token = tokens["id_token"].as_str().unwrap();
    let sid = claims(id_token)["sid"].as_str().unwrap().to_owned();

    let logout = |from: u8, redirect: &str| {
        let mut url = Url::parse(&server.url("/logout")).unwrap();
        url.query_pairs_mut()
            .append_pair("id_token_hint", id_token)
            .append_pair("post_logout_redirect_uri", redirect)
            .append_pair("state", "bye");
        server.peer(from).get(url.to_string()).send()
    };
    assert_eq!(
        logout(ALICE, "http://127.0.0.1:9/elsewhere")
            .await
            .unwrap()
            .status(),
        400,
        "unregistered: shown, not redirected"
    );
    assert_eq!(
        logout(BOB, after).await.unwrap().status(),
        403,
        "Bob cannot end Alice's session"
    );

    let response = logout(ALICE, after).await.unwrap();
    assert_eq!(response.status(), 302);
    let back = Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(
        (back.path(), param(&back, "state").as_deref()),
        ("/signed-out", Some("bye"))
    );

    let body = tokio::time::timeout(Duration::from_secs(30), received.recv())
        .await
        .expect("logout token delivered")
        .unwrap();
    let (name, logout_token) = url::form_urlencoded::parse(body.as_bytes()).next().unwrap();
    assert_eq!(name, "logout_token");
    let jwks: JwkSet = peer(1)
        .get(server.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jws = Jws::parse(&logout_token).unwrap();
    assert_eq!(jws.header.typ.as_deref(), Some("logout+jwt"));
    let kid = jws.header.kid.clone().unwrap();
    let jwk = jwks
        .keys
        .iter()
        .find(|k| k.kid.as_deref() == Some(kid.as_str()))
        .unwrap();
    jws.verify(&VerifyingKey::from_published(jwk).unwrap())
        .expect("signed by the issuer");
    let logout_claims: LogoutClaims = jws.claims().unwrap();
    assert_eq!(logout_claims.iss, server.base);
    assert!(logout_claims.aud.contains(&id));
    assert_eq!(logout_claims.sid.as_deref(), Some(sid.as_str()));
    assert_eq!(logout_claims.sub.as_deref(), Some(alice_sub().as_str()));
    assert!(logout_claims.events.contains_key(BACKCHANNEL_LOGOUT_EVENT));

    let (status, _) = token(
        &server,
        (&id, Some(&secret)),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(status, 400, "the session's refresh token is dead");
    assert_eq!(
        userinfo_status(&server, &tokens).await,
        401,
        "and its access token"
    );
}

/// A relying party whose back-channel endpoint takes every request and never answers; each
/// request that arrives is reported on the channel.
async fn black_holed_rp() -> (String, mpsc::UnboundedReceiver<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new()
        .route(
            "/backchannel",
            post(
                |State(arrived): State<mpsc::UnboundedSender<()>>| async move {
                    let _ = arrived.send(());
                    std::future::pending::<()>().await;
                    "never"
                },
            ),
        )
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/backchannel"), rx)
}

/// Logs Alice in to `id` and ends that session by RP-initiated logout.
async fn login_and_log_out(server: &TestServer, id: &str, secret: &str, after: &str) {
    let tokens = login(server, id, secret).await;
    let mut url = Url::parse(&server.url("/logout")).unwrap();
    url.query_pairs_mut()
        .append_pair("id_token_hint", tokens["id_token"].as_str().unwrap())
        .append_pair("post_logout_redirect_uri", after);
    let response = server
        .peer(ALICE)
        .get(url.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
}

#[tokio::test]
async fn a_black_holed_relying_party_does_not_delay_other_logouts() {
    let server = TestServer::start().await;
    let after = "http://127.0.0.1:9/signed-out";
    let (hole, mut arrived) = black_holed_rp().await;
    let (healthy, mut received) = test_rp().await;
    let mut clients = Vec::new();
    for uri in [&hole, &healthy] {
        let (id, secret) = register(
            &server,
            json!({"name": "app", "redirect_uris": [REDIRECT], "backchannel_logout_uri": uri,
                   "post_logout_redirect_uris": [after]}),
        )
        .await;
        clients.push((id, secret.unwrap()));
    }
    // The black-holed relying party's delivery is under way, and will not end by itself.
    login_and_log_out(&server, &clients[0].0, &clients[0].1, after).await;
    tokio::time::timeout(Duration::from_secs(30), arrived.recv())
        .await
        .expect("the first delivery reaches the black hole")
        .unwrap();
    // The other relying party is told while that attempt still hangs: had it waited behind
    // it, the black hole would have seen its retry first.
    login_and_log_out(&server, &clients[1].0, &clients[1].1, after).await;
    let body = tokio::time::timeout(Duration::from_secs(30), received.recv())
        .await
        .expect("the healthy relying party is told")
        .unwrap();
    assert!(body.starts_with("logout_token="));
    assert!(
        arrived.try_recv().is_err(),
        "delivered while the black hole's first attempt was still pending"
    );
}

/// Registers a client as Alice through `/register`; its id, registration URI and token.
async fn self_register(server: &TestServer, metadata: Value) -> (String, String, String) {
    let (status, registered) = read(
        peer(ALICE)
            .post(server.url("/register"))
            .json(&metadata)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{registered}");
    let field = |name: &str| registered[name].as_str().unwrap().to_owned();
    (
        field("client_id"),
        field("registration_client_uri"),
        field("registration_access_token"),
    )
}

/// Whether opening the authorization URL shows the consent page (else it must redirect with a
/// code); the page's form when it does.
async fn asks(server: &TestServer, from: u8, url: &str) -> Option<Vec<(String, String)>> {
    match open(server, from, url).await {
        Ok(back) => {
            assert!(param(&back, "code").is_some(), "{back}");
            None
        }
        Err((200, page)) => Some(hidden_fields(&page)),
        Err(other) => panic!("neither a code nor a consent page: {other:?}"),
    }
}

#[tokio::test]
async fn consent_records_what_was_approved_and_more_asks_again() {
    let server = TestServer::start().await;
    let other = "http://127.0.0.1:9/other";
    let (id, uri, token) = self_register(
        &server,
        json!({"redirect_uris": [REDIRECT, other], "client_name": "Wiki"}),
    )
    .await;
    let fields = asks(&server, ALICE, &authorize_url(&server, &id, &[]))
        .await
        .expect("asked the first time");
    let approved = submit_consent(&server, ALICE, &fields, "approve", &server.base).await;
    assert_eq!(approved.status(), 303);

    // Within what was approved: no question.
    assert!(
        asks(&server, ALICE, &authorize_url(&server, &id, &[]))
            .await
            .is_none()
    );
    assert!(
        asks(
            &server,
            ALICE,
            &authorize_url(&server, &id, &[("scope", "openid")])
        )
        .await
        .is_none()
    );
    // More scopes, or another redirect URI: asked again.
    let more = authorize_url(&server, &id, &[("scope", "openid profile email groups")]);
    assert!(asks(&server, ALICE, &more).await.is_some(), "another scope");
    let elsewhere = authorize_url(&server, &id, &[("redirect_uri", other)]);
    let form = asks(&server, ALICE, &elsewhere).await;
    assert!(form.is_some(), "another redirect URI");
    let back = open(
        &server,
        ALICE,
        &authorize_url(&server, &id, &[("redirect_uri", other), ("prompt", "none")]),
    )
    .await
    .unwrap();
    assert_eq!(param(&back, "error").as_deref(), Some("consent_required"));

    // An RFC 7592 update of the client asks again, and a form shown before it is void.
    let (status, _) = read(
        peer(ALICE)
            .put(&uri)
            .bearer_auth(&token)
            .json(&json!({"client_id": id, "redirect_uris": [REDIRECT, other], "client_name": "Wiki, now with more"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        asks(&server, ALICE, &authorize_url(&server, &id, &[]))
            .await
            .is_some(),
        "asked again after the update"
    );
    let stale = submit_consent(&server, ALICE, &form.unwrap(), "approve", &server.base).await;
    assert_eq!(stale.status(), 403, "approved before the update");
}

#[tokio::test]
async fn a_redirected_error_before_consent_never_names_the_user() {
    let server = TestServer::start().await;
    let (id, _, _) = self_register(
        &server,
        json!({"redirect_uris": [REDIRECT], "client_name": "Wiki", "resources": [crate::support::GATEWAY]}),
    )
    .await;
    // Bob has no grant for the resource: he is asked first, and only then told.
    let with_resource = authorize_url(&server, &id, &[("resource", crate::support::GATEWAY)]);
    let fields = asks(&server, BOB, &with_resource)
        .await
        .expect("consent comes before the resource check");
    let answered = submit_consent(&server, BOB, &fields, "approve", &server.base).await;
    let back = Url::parse(answered.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(param(&back, "error").as_deref(), Some("invalid_target"));

    // Carol, revoked, has approved nothing: the client learns she was refused, not who she is.
    let (status, _) = crate::support::admin(
        &server,
        axum::http::Method::POST,
        "/admin/api/revocations",
        Some(json!({"kind": "user", "value": "carol@example.com"})),
    )
    .await;
    assert_eq!(status, 201);
    let back = open(
        &server,
        crate::support::CAROL,
        &authorize_url(&server, &id, &[]),
    )
    .await
    .unwrap();
    assert_eq!(param(&back, "error").as_deref(), Some("access_denied"));
    let description = param(&back, "error_description").unwrap();
    assert!(!description.contains("carol"), "{description}");
    assert!(!back.as_str().contains("carol"), "{back}");
    // The audit log keeps the reason.
    let audit = server
        .state()
        .store
        .audit(&tailpass::store::AuditFilter {
            user: Some("carol@example.com".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        audit.iter().any(|r| r
            .event
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("carol@example.com"))),
        "{audit:?}"
    );
}

#[tokio::test]
async fn a_refresh_re_resolves_the_person_and_a_gone_node_or_lost_grant_ends_the_family() {
    use crate::support::{CAROL, GATEWAY, loopback_peers, with_tailnet_addresses};
    let server = TestServer::start().await;
    let (id, secret) = register(
        &server,
        json!({"name": "app", "redirect_uris": [REDIRECT], "resources": [GATEWAY]}),
    )
    .await;
    let secret = secret.unwrap();
    let client = (id.as_str(), Some(secret.as_str()));
    let alice = login(&server, &id, &secret).await;
    let c = code(&server, CAROL, &id, &[("resource", GATEWAY)]).await;
    let (status, carol) = redeem(&server, client, &c, VERIFIER).await;
    assert_eq!(status, 200, "{carol}");
    let c = code(&server, BOB, &id, &[]).await;
    let (status, bob) = redeem(&server, client, &c, VERIFIER).await;
    assert_eq!(status, 200, "{bob}");

    // The tailnet changes while the server is down: Alice's node leaves, Carol's grant no
    // longer gives her the gateway, Bob is as he was.
    let dir = server.stop().await;
    let mut peers = loopback_peers();
    let carol_ip = crate::support::ip(CAROL).to_string();
    peers[&carol_ip]["CapMap"]["tailscale.com/cap/tsidp"][0]["resources"] = json!([]);
    peers
        .as_object_mut()
        .unwrap()
        .remove(&crate::support::ip(ALICE).to_string());
    let table = dir.path().join("peers.json");
    std::fs::write(&table, with_tailnet_addresses(peers).to_string()).unwrap();
    let server = TestServer::in_dir(dir, &[], &["--identity-file", table.to_str().unwrap()]).await;
    let refresh = |tokens: &Value| {
        let token = tokens["refresh_token"].as_str().unwrap().to_owned();
        let server = &server;
        async move {
            crate::authorize::token(
                server,
                client,
                &[("grant_type", "refresh_token"), ("refresh_token", &token)],
            )
            .await
        }
    };

    let (status, body) = refresh(&bob).await;
    assert_eq!(status, 200, "Bob's node is still his: {body}");
    for (who, tokens, code) in [
        ("alice", &alice, "invalid_grant"),
        ("carol", &carol, "invalid_target"),
    ] {
        let (status, body) = refresh(tokens).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some(code)),
            "{who}: {body}"
        );
        // The family is over, not just this refresh: the same token again finds it revoked,
        // and its access token is refused.
        let (status, body) = refresh(tokens).await;
        assert_eq!(status, 400, "{who}");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("revoked"),
            "{who}: {body}"
        );
        assert_eq!(userinfo_status(&server, tokens).await, 401, "{who}");
    }
}

/// Registers a confidential client whose back-channel logout endpoint is a fresh [`test_rp`]:
/// its id, its secret, and the logout tokens it receives.
pub async fn client_told_of_logouts(
    server: &TestServer,
) -> (String, String, mpsc::Receiver<String>) {
    let (uri, received) = test_rp().await;
    let (id, secret) = register(
        server,
        json!({"name": "app", "redirect_uris": [REDIRECT], "backchannel_logout_uri": uri}),
    )
    .await;
    (id, secret.unwrap(), received)
}

/// The session id of a token response's ID token.
pub fn sid_of(tokens: &Value) -> String {
    claims(tokens["id_token"].as_str().unwrap())["sid"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Asserts that the session of a token response is over: its refresh token is refused, and
/// so is its access token.
async fn assert_session_over(server: &TestServer, client: (&str, Option<&str>), tokens: &Value) {
    let refresh = [
        ("grant_type", "refresh_token"),
        ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
    ];
    assert_eq!(
        token(server, client, &refresh).await.0,
        400,
        "the session's refresh token is dead"
    );
    assert_eq!(
        userinfo_status(server, tokens).await,
        401,
        "and its access token"
    );
}

/// The status `/userinfo` answers for a token response's access token.
async fn userinfo_status(server: &TestServer, tokens: &Value) -> u16 {
    peer(1)
        .get(server.url("/userinfo"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The claims of the next logout token the relying party receives.
pub async fn next_logout(received: &mut mpsc::Receiver<String>) -> LogoutClaims {
    let body = tokio::time::timeout(Duration::from_secs(30), received.recv())
        .await
        .expect("a logout token is delivered")
        .unwrap();
    let (name, logout_token) = url::form_urlencoded::parse(body.as_bytes()).next().unwrap();
    assert_eq!(name, "logout_token");
    let jws = Jws::parse(&logout_token).unwrap();
    assert_eq!(jws.header.typ.as_deref(), Some("logout+jwt"));
    let claims: LogoutClaims = jws.claims().unwrap();
    assert!(claims.events.contains_key(BACKCHANNEL_LOGOUT_EVENT));
    claims
}

/// Asserts that the next logout token the relying party receives is for it (`client_id`) and
/// says Alice's session `sid` ended.
pub async fn told_alice_ended(received: &mut mpsc::Receiver<String>, client_id: &str, sid: &str) {
    let told = next_logout(received).await;
    assert!(told.aud.contains(client_id));
    assert_eq!(told.sid.as_deref(), Some(sid));
    assert_eq!(told.sub.as_deref(), Some(alice_sub().as_str()));
}

#[tokio::test]
async fn a_reused_refresh_token_ends_the_session_and_tells_the_relying_party() {
    let server = TestServer::start().await;
    let (id, secret, mut received) = client_told_of_logouts(&server).await;
    let client = (id.as_str(), Some(secret.as_str()));
    let first = login(&server, &id, &secret).await;
    let sid = sid_of(&first);
    let r1 = first["refresh_token"].as_str().unwrap();
    let refresh = [("grant_type", "refresh_token"), ("refresh_token", r1)];
    assert_eq!(token(&server, client, &refresh).await.0, 200);
    assert_eq!(token(&server, client, &refresh).await.0, 400, "reused");

    told_alice_ended(&mut received, &id, &sid).await;
}

#[tokio::test]
async fn a_replayed_code_ends_the_session_and_tells_the_relying_party() {
    let server = TestServer::start().await;
    let (id, secret, mut received) = client_told_of_logouts(&server).await;
    let client = (id.as_str(), Some(secret.as_str()));
    let c = code(&server, ALICE, &id, &[]).await;
    let (status, tokens) = redeem(&server, client, &c, VERIFIER).await;
    assert_eq!(status, 200, "{tokens}");
    let sid = sid_of(&tokens);
    let (status, body) = redeem(&server, client, &c, VERIFIER).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    told_alice_ended(&mut received, &id, &sid).await;
    assert_session_over(&server, client, &tokens).await;
}

#[tokio::test]
async fn a_client_revoking_its_refresh_token_ends_the_session_without_being_told_back() {
    let server = TestServer::start().await;
    let (id, secret, mut received) = client_told_of_logouts(&server).await;
    let client = (id.as_str(), Some(secret.as_str()));
    let revoked = login(&server, &id, &secret).await;
    let revoked_sid = sid_of(&revoked);
    let response = peer(1)
        .post(server.url("/revoke"))
        .basic_auth(&id, Some(&secret))
        .form(&[("token", revoked["refresh_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_session_over(&server, client, &revoked).await;

    // A client's deliveries go out in order: had the revocation queued one, it would arrive
    // before the logout that follows.
    let logged_out = login(&server, &id, &secret).await;
    let logged_out_sid = sid_of(&logged_out);
    assert_ne!(logged_out_sid, revoked_sid);
    let mut url = Url::parse(&server.url("/logout")).unwrap();
    url.query_pairs_mut()
        .append_pair("id_token_hint", logged_out["id_token"].as_str().unwrap());
    let response = server
        .peer(ALICE)
        .get(url.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let told = next_logout(&mut received).await;
    assert_eq!(
        told.sid.as_deref(),
        Some(logged_out_sid.as_str()),
        "the first logout token is the logout's, not the revocation's"
    );
}

#[tokio::test]
async fn a_refresh_that_finds_the_node_gone_ends_the_session_and_tells_the_relying_party() {
    use crate::support::loopback_peers;
    let server = TestServer::start().await;
    let (id, secret, mut received) = client_told_of_logouts(&server).await;
    let alice = login(&server, &id, &secret).await;
    let sid = sid_of(&alice);

    // Alice's node leaves the tailnet while the server is down.
    let dir = server.stop().await;
    let mut peers = loopback_peers();
    peers
        .as_object_mut()
        .unwrap()
        .remove(&crate::support::ip(ALICE).to_string());
    let table = dir.path().join("peers.json");
    std::fs::write(
        &table,
        crate::support::with_tailnet_addresses(peers).to_string(),
    )
    .unwrap();
    let server = TestServer::in_dir(dir, &[], &["--identity-file", table.to_str().unwrap()]).await;
    let refresh = [
        ("grant_type", "refresh_token"),
        ("refresh_token", alice["refresh_token"].as_str().unwrap()),
    ];
    let (status, body) = token(&server, (&id, Some(&secret)), &refresh).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    told_alice_ended(&mut received, &id, &sid).await;
}
