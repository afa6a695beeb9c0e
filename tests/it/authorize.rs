//! The authorization endpoint and code redemption, edge by edge.

use serde_json::{Value, json};
use url::Url;

use crate::login::{REDIRECT, param, register};
use crate::support::{ALICE, BOB, CAROL, CI, GATEWAY, MALLORY, TestServer, json as read, peer};

/// RFC 7636 appendix B.
pub const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
pub const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

/// `/authorize?…` with a code flow's usual parameters, overridden or removed by `changes`
/// (an empty value removes the parameter).
pub fn authorize_url(server: &TestServer, client_id: &str, changes: &[(&str, &str)]) -> String {
    let mut params: Vec<(String, String)> = [
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", REDIRECT),
        ("scope", "openid profile email"),
        ("state", "st4te"),
        ("nonce", "n0nce"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (name, value) in changes {
        params.retain(|(k, _)| k != name || name == &"resource");
        if !value.is_empty() {
            params.push((name.to_string(), value.to_string()));
        }
    }
    let mut url = Url::parse(&server.url("/authorize")).unwrap();
    url.query_pairs_mut().extend_pairs(params);
    url.to_string()
}

/// Opens an authorization URL from peer `from`; the redirect's URL, or the shown answer.
pub async fn open(server: &TestServer, from: u8, url: &str) -> Result<Url, (u16, String)> {
    let response = server.peer(from).get(url).send().await.unwrap();
    let status = response.status().as_u16();
    match response.headers().get("location") {
        Some(location) if status == 302 => Ok(Url::parse(location.to_str().unwrap()).unwrap()),
        _ => Err((status, response.text().await.unwrap())),
    }
}

/// A code for `client_id`, obtained by peer `from`.
pub async fn code(
    server: &TestServer,
    from: u8,
    client_id: &str,
    changes: &[(&str, &str)],
) -> String {
    let back = open(server, from, &authorize_url(server, client_id, changes))
        .await
        .unwrap();
    param(&back, "code").unwrap_or_else(|| panic!("no code: {back}"))
}

/// A token request with Basic authentication when a secret is given.
pub async fn token(
    server: &TestServer,
    client: (&str, Option<&str>),
    form: &[(&str, &str)],
) -> (u16, Value) {
    let mut pairs: Vec<(&str, &str)> = form.to_vec();
    let mut request = server.peer(1).post(server.url("/token"));
    match client.1 {
        Some(secret) => request = request.basic_auth(client.0, Some(secret)),
        None => pairs.push(("client_id", client.0)),
    }
    read(request.form(&pairs).send().await.unwrap()).await
}

pub async fn redeem(
    server: &TestServer,
    client: (&str, Option<&str>),
    code: &str,
    verifier: &str,
) -> (u16, Value) {
    token(
        server,
        client,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ],
    )
    .await
}

pub fn claims(jwt: &str) -> Value {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

async fn confidential(server: &TestServer) -> (String, String) {
    let (id, secret) = register(server, json!({"name": "app", "redirect_uris": [REDIRECT]})).await;
    (id, secret.unwrap())
}

#[tokio::test]
async fn pkce_verifier_is_checked_at_the_token_endpoint() {
    let server = TestServer::start().await;
    let (id, secret) = confidential(&server).await;
    let client = (id.as_str(), Some(secret.as_str()));
    let too_long = "a".repeat(129);
    let bad_chars = format!("{}!", &VERIFIER[..43]);
    let wrong = VERIFIER.replace('d', "e");
    for verifier in [
        &VERIFIER[..42],
        too_long.as_str(),
        bad_chars.as_str(),
        wrong.as_str(),
    ] {
        let c = code(&server, ALICE, &id, &[]).await;
        let (status, body) = redeem(&server, client, &c, verifier).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant")),
            "{verifier}: {body}"
        );
    }
    let c = code(&server, ALICE, &id, &[]).await;
    let (status, body) = token(
        &server,
        client,
        &[
            ("grant_type", "authorization_code"),
            ("code", &c),
            ("redirect_uri", REDIRECT),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error_description"].as_str()),
        (400, Some("code_verifier is required"))
    );
    let c = code(&server, ALICE, &id, &[]).await;
    let (status, body) = redeem(&server, client, &c, VERIFIER).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "openid profile email");
}

#[tokio::test]
async fn plain_pkce_is_refused_for_public_clients_only() {
    let server = TestServer::start().await;
    let (public, _) = register(
        &server,
        json!({"name": "spa", "redirect_uris": [REDIRECT], "public": true}),
    )
    .await;
    let back = open(
        &server,
        ALICE,
        &authorize_url(
            &server,
            &public,
            &[
                ("code_challenge", VERIFIER),
                ("code_challenge_method", "plain"),
            ],
        ),
    )
    .await
    .unwrap();
    assert_eq!(param(&back, "error").as_deref(), Some("invalid_request"));
    assert!(param(&back, "error_description").unwrap().contains("S256"));
    let back = open(
        &server,
        ALICE,
        &authorize_url(
            &server,
            &public,
            &[("code_challenge", ""), ("code_challenge_method", "")],
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        param(&back, "error").as_deref(),
        Some("invalid_request"),
        "a public client must use PKCE"
    );

    let (id, secret) = confidential(&server).await;
    let c = code(
        &server,
        ALICE,
        &id,
        &[
            ("code_challenge", VERIFIER),
            ("code_challenge_method", "plain"),
        ],
    )
    .await;
    let (status, _) = redeem(&server, (&id, Some(&secret)), &c, VERIFIER).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_replayed_code_fails_and_revokes_what_it_issued() {
    let server = TestServer::start().await;
    let (id, secret) = confidential(&server).await;
    let client = (id.as_str(), Some(secret.as_str()));
    let c = code(&server, ALICE, &id, &[]).await;
    let (status, first) = redeem(&server, client, &c, VERIFIER).await;
    assert_eq!(status, 200);
    let (status, second) = redeem(&server, client, &c, VERIFIER).await;
    assert_eq!(
        (status, second["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let access = first["access_token"].as_str().unwrap();
    let userinfo = peer(1)
        .get(server.url("/userinfo"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(userinfo.status(), 401, "the first access token is revoked");
    let (status, body) = token(
        &server,
        client,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", first["refresh_token"].as_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "and its refresh token"
    );
    let (_, introspected) = token_introspect(&server, client, access).await;
    assert_eq!(introspected, json!({"active": false}));
}

pub async fn token_introspect(
    server: &TestServer,
    client: (&str, Option<&str>),
    token: &str,
) -> (u16, Value) {
    let request = server
        .peer(1)
        .post(server.url("/introspect"))
        .form(&[("token", token)]);
    let request = match client.1 {
        Some(secret) => request.basic_auth(client.0, Some(secret)),
        None => request,
    };
    read(request.send().await.unwrap()).await
}

#[tokio::test]
async fn redirect_uri_must_match_exactly() {
    let server = TestServer::start().await;
    let (id, secret) = confidential(&server).await;
    for uri in [
        "http://127.0.0.1:9/Callback",
        "HTTP://127.0.0.1:9/callback",
        "http://127.0.0.1:9/callback/",
        "http://127.0.0.1:9/callback?x=1",
    ] {
        let shown = open(
            &server,
            ALICE,
            &authorize_url(&server, &id, &[("redirect_uri", uri)]),
        )
        .await
        .unwrap_err();
        assert_eq!(shown.0, 400, "{uri}: shown, never redirected");
        assert!(shown.1.contains("redirect_uri"), "{}", shown.1);
    }
    let c = code(&server, ALICE, &id, &[]).await;
    let (status, body) = token(
        &server,
        (&id, Some(&secret)),
        &[
            ("grant_type", "authorization_code"),
            ("code", &c),
            ("redirect_uri", "http://127.0.0.1:9/other"),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
}

#[tokio::test]
async fn the_redirect_uris_own_query_is_kept_and_state_and_iss_added() {
    let server = TestServer::start().await;
    let with_query = "http://127.0.0.1:9/cb?tenant=acme";
    let (id, _) = register(
        &server,
        json!({"name": "app", "redirect_uris": [with_query]}),
    )
    .await;
    let back = open(
        &server,
        ALICE,
        &authorize_url(&server, &id, &[("redirect_uri", with_query)]),
    )
    .await
    .unwrap();
    assert_eq!(param(&back, "tenant").as_deref(), Some("acme"));
    assert_eq!(param(&back, "state").as_deref(), Some("st4te"));
    assert_eq!(param(&back, "iss").as_deref(), Some(server.base.as_str()));
    assert!(param(&back, "code").is_some());
}

#[tokio::test]
async fn missing_required_parameters() {
    let server = TestServer::start().await;
    let (id, secret) = confidential(&server).await;
    let shown = open(
        &server,
        ALICE,
        &authorize_url(&server, &id, &[("client_id", "")]),
    )
    .await
    .unwrap_err();
    assert!(shown.1.contains("client_id is required"));
    let shown = open(
        &server,
        ALICE,
        &authorize_url(&server, &id, &[("redirect_uri", "")]),
    )
    .await
    .unwrap_err();
    assert!(shown.1.contains("redirect_uri is required"));
    let shown = open(
        &server,
        ALICE,
        &authorize_url(&server, "no-such-client", &[]),
    )
    .await
    .unwrap_err();
    assert!(shown.1.contains("unknown client_id"));
    let back = open(
        &server,
        ALICE,
        &authorize_url(&server, &id, &[("response_type", "")]),
    )
    .await
    .unwrap();
    assert_eq!(param(&back, "error").as_deref(), Some("invalid_request"));

    let client = (id.as_str(), Some(secret.as_str()));
    let c = code(&server, ALICE, &id, &[]).await;
    for (form, needle) in [
        (
            vec![("code", c.as_str()), ("redirect_uri", REDIRECT)],
            "grant_type is required",
        ),
        (
            vec![
                ("grant_type", "authorization_code"),
                ("redirect_uri", REDIRECT),
            ],
            "code is required",
        ),
        (
            vec![("grant_type", "authorization_code"), ("code", c.as_str())],
            "redirect_uri is required",
        ),
        (
            vec![("grant_type", "refresh_token")],
            "refresh_token is required",
        ),
    ] {
        let (status, body) = token(&server, client, &form).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{form:?}"
        );
        assert_eq!(body["error_description"], needle);
    }
    let (status, body) = read(
        peer(1)
            .post(server.url("/token"))
            .form(&[("grant_type", "authorization_code"), ("code", &c)])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "no client authentication"
    );
    let wrong = peer(1)
        .post(server.url("/token"))
        .basic_auth(&id, Some("wrong"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", "x")])
        .send()
        .await
        .unwrap();
    assert!(
        wrong.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    assert_eq!(read(wrong).await.0, 401);
    let repeated = peer(1)
        .post(server.url("/token"))
        .basic_auth(&id, Some(&secret))
        .body("grant_type=refresh_token&grant_type=authorization_code")
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    let (status, body) = read(repeated).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "a repeated parameter"
    );
}

#[tokio::test]
async fn unsupported_grant_and_response_types() {
    let server = TestServer::start().await;
    let (id, secret) = confidential(&server).await;
    for grant in [
        "password",
        "implicit",
        "urn:ietf:params:oauth:grant-type:device_code",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
    ] {
        let (status, body) = token(&server, (&id, Some(&secret)), &[("grant_type", grant)]).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("unsupported_grant_type")),
            "{grant}"
        );
    }
    for response_type in ["token", "id_token", "code id_token"] {
        let back = open(
            &server,
            ALICE,
            &authorize_url(&server, &id, &[("response_type", response_type)]),
        )
        .await
        .unwrap();
        assert_eq!(
            param(&back, "error").as_deref(),
            Some("unsupported_response_type"),
            "{response_type}"
        );
    }
}

#[tokio::test]
async fn tagged_nodes_strangers_and_funnel_get_access_denied() {
    let server = TestServer::start().await;
    let (id, _) = confidential(&server).await;
    let back = open(&server, CI, &authorize_url(&server, &id, &[]))
        .await
        .unwrap();
    assert_eq!(param(&back, "error").as_deref(), Some("access_denied"));
    assert!(
        param(&back, "error_description")
            .unwrap()
            .contains("tagged")
    );
    let back = open(
        &server,
        crate::support::STRANGER,
        &authorize_url(&server, &id, &[]),
    )
    .await
    .unwrap();
    assert_eq!(param(&back, "error").as_deref(), Some("access_denied"));
    let funnel = server
        .peer(ALICE)
        .get(authorize_url(&server, &id, &[]))
        .header("tailscale-funnel-request", "?1")
        .send()
        .await
        .unwrap();
    let back = Url::parse(funnel.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(param(&back, "error").as_deref(), Some("access_denied"));
    assert!(
        param(&back, "error_description")
            .unwrap()
            .contains("funnel")
    );
}

#[tokio::test]
async fn the_client_access_rule_decides_who_logs_in() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[groups]\nfinance = [\"bob@example.com\"]\n").unwrap();
    let server = TestServer::with_args(&["--policy", policy.to_str().unwrap()]).await;
    let (id, _) = register(
        &server,
        json!({"name": "ledger", "redirect_uris": [REDIRECT], "users": ["group:finance"]}),
    )
    .await;
    let back = open(&server, ALICE, &authorize_url(&server, &id, &[]))
        .await
        .unwrap();
    assert_eq!(param(&back, "error").as_deref(), Some("access_denied"));
    assert_eq!(
        param(&back, "error_description").as_deref(),
        Some(format!("alice@example.com may not log in to client {id}").as_str())
    );
    assert!(
        param(
            &open(&server, BOB, &authorize_url(&server, &id, &[]))
                .await
                .unwrap(),
            "code"
        )
        .is_some()
    );
}

#[tokio::test]
async fn scopes_prompt_and_max_age() {
    let server = TestServer::start().await;
    let (id, secret) = confidential(&server).await;
    let c = code(
        &server,
        ALICE,
        &id,
        &[
            ("scope", "openid,profile,email"),
            ("prompt", "none"),
            ("max_age", "0"),
        ],
    )
    .await;
    let (status, body) = redeem(&server, (&id, Some(&secret)), &c, VERIFIER).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["scope"], "openid profile email",
        "Portainer's comma-separated scopes"
    );
    let id_token = claims(body["id_token"].as_str().unwrap());
    assert!(
        id_token["auth_time"].as_u64().unwrap() >= id_token["iat"].as_u64().unwrap() - 1,
        "auth_time is now"
    );
    assert_eq!(id_token["nonce"], "n0nce");
    let back = open(
        &server,
        ALICE,
        &authorize_url(&server, &id, &[("scope", "openid admin")]),
    )
    .await
    .unwrap();
    assert_eq!(param(&back, "error").as_deref(), Some("invalid_scope"));
    let back = open(
        &server,
        ALICE,
        &authorize_url(&server, &id, &[("prompt", "none login")]),
    )
    .await
    .unwrap();
    assert_eq!(param(&back, "error").as_deref(), Some("invalid_request"));
}

#[tokio::test]
async fn a_persons_gateway_token_carries_the_restrictions_an_agent_token_would() {
    // Without the rule's claims, a person's code-flow token for the gateway had no `models`,
    // no `quota` and the default lifetime: an unrestricted pass to the upstream key.
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[rule]]\nsrc = [\"*\"]\naudiences = [\"{GATEWAY}\"]\nmax_lifetime = 120\n\
             claims = {{ models = [\"small\"], quota = {{ requests = 5 }} }}\n"
        ),
    )
    .unwrap();
    let server = TestServer::with_args(&["--policy", policy.to_str().unwrap()]).await;
    let (id, secret) = register(
        &server,
        json!({"name": "gw-app", "redirect_uris": [REDIRECT], "resources": [GATEWAY]}),
    )
    .await;
    let secret = secret.unwrap();
    let c = code(&server, CAROL, &id, &[("resource", GATEWAY)]).await;
    let (status, body) = redeem(&server, (&id, Some(&secret)), &c, VERIFIER).await;
    assert_eq!(status, 200, "{body}");
    let access = claims(body["access_token"].as_str().unwrap());
    assert_eq!(access["models"], json!(["small"]));
    assert_eq!(access["quota"], json!({"requests": 5}));
    assert!(
        access["exp"].as_u64().unwrap() - access["iat"].as_u64().unwrap() <= 120,
        "the rule's lifetime cap: {access}"
    );
    assert!(body["expires_in"].as_u64().unwrap() <= 120);
    // A token without a resource is not for the gateway and carries none of it.
    let c = code(&server, CAROL, &id, &[]).await;
    let (_, body) = redeem(&server, (&id, Some(&secret)), &c, VERIFIER).await;
    assert!(
        claims(body["access_token"].as_str().unwrap())
            .get("models")
            .is_none()
    );
}

#[tokio::test]
async fn resources_address_the_access_token_and_never_the_id_token() {
    let server = TestServer::start().await;
    let (id, secret) = register(
        &server,
        json!({"name": "gw-app", "redirect_uris": [REDIRECT], "resources": [GATEWAY]}),
    )
    .await;
    let secret = secret.unwrap();
    let c = code(&server, CAROL, &id, &[("resource", GATEWAY)]).await;
    let (status, body) = redeem(&server, (&id, Some(&secret)), &c, VERIFIER).await;
    assert_eq!(status, 200, "{body}");
    let access = claims(body["access_token"].as_str().unwrap());
    assert_eq!(
        access["aud"],
        json!([GATEWAY, server.base]),
        "the resource and the issuer (userinfo), never the client"
    );
    let id_token = claims(body["id_token"].as_str().unwrap());
    assert_eq!(id_token["aud"], id.as_str(), "the client alone");
    assert!(id_token.get("azp").is_none(), "one audience needs no azp");

    // Narrowing keeps the resource; widening is refused.
    let refresh = body["refresh_token"].as_str().unwrap();
    let (status, body) = token(
        &server,
        (&id, Some(&secret)),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("resource", "https://elsewhere.example"),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target"))
    );
    let (status, body) = token(
        &server,
        (&id, Some(&secret)),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("resource", GATEWAY),
            ("scope", "openid"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "openid");
    // RFC 6749 §6: measured against the original grant, which had no `groups`.
    let refresh = body["refresh_token"].as_str().unwrap();
    let (status, body) = token(
        &server,
        (&id, Some(&secret)),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("scope", "openid groups"),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope")),
        "{body}"
    );
    let (status, body) = token(
        &server,
        (&id, Some(&secret)),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("scope", "openid email"),
        ],
    )
    .await;
    assert_eq!(
        (status, body["scope"].as_str()),
        (200, Some("openid email")),
        "back to the original grant is not widening"
    );

    // A resource the client is not registered for, or the user has no grant for.
    let back = open(
        &server,
        CAROL,
        &authorize_url(&server, &id, &[("resource", "https://elsewhere.example")]),
    )
    .await
    .unwrap();
    assert_eq!(param(&back, "error").as_deref(), Some("invalid_target"));
    let back = open(
        &server,
        BOB,
        &authorize_url(&server, &id, &[("resource", GATEWAY)]),
    )
    .await
    .unwrap();
    assert_eq!(param(&back, "error").as_deref(), Some("invalid_target"));
}

#[tokio::test]
async fn extra_claims_merge_groups_unite_and_standard_claims_are_protected() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[groups]\nstaff = [\"carol@example.com\"]\n").unwrap();
    let server = TestServer::with_args(&["--policy", policy.to_str().unwrap()]).await;
    let (id, secret) = confidential(&server).await;
    let c = code(&server, CAROL, &id, &[]).await;
    let (_, body) = redeem(&server, (&id, Some(&secret)), &c, VERIFIER).await;
    let id_token = claims(body["id_token"].as_str().unwrap());
    assert_eq!(id_token["team"], "data", "scalars: the first grant wins");
    assert_eq!(id_token["envs"], json!(["dev", "prod"]), "arrays: a union");
    assert_eq!(
        id_token["groups"],
        json!(["staff", "analysts", "oncall"]),
        "policy groups and grant groups"
    );
    let userinfo: Value = peer(1)
        .get(server.url("/userinfo"))
        .bearer_auth(body["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(userinfo["team"], "data", "includeInUserInfo");
    assert_eq!(
        userinfo["envs"],
        json!(["dev"]),
        "only the includeInUserInfo grant's claims"
    );
    assert_eq!(userinfo["groups"], json!(["staff", "analysts", "oncall"]));

    let back = open(&server, MALLORY, &authorize_url(&server, &id, &[]))
        .await
        .unwrap();
    assert_eq!(param(&back, "error").as_deref(), Some("server_error"));
    assert!(
        param(&back, "error_description")
            .unwrap()
            .contains("'email'"),
        "an override is an error, not a silent overwrite"
    );
}

#[tokio::test]
async fn a_public_clients_loopback_redirect_uri_matches_any_port() {
    let server = TestServer::start().await;
    let registered = [
        "http://127.0.0.1/callback",
        "http://[::1]/cb",
        "http://localhost/cb",
    ];
    let (public, _) = register(
        &server,
        json!({"name": "cli", "redirect_uris": registered, "public": true}),
    )
    .await;
    for requested in [
        "http://127.0.0.1:51234/callback",
        "http://[::1]:8080/cb",
        "http://localhost:3000/cb",
        "http://127.0.0.1/callback",
    ] {
        let back = open(
            &server,
            ALICE,
            &authorize_url(&server, &public, &[("redirect_uri", requested)]),
        )
        .await
        .unwrap();
        assert!(
            back.as_str().starts_with(requested),
            "the code goes to the port the app listens on: {back}"
        );
        let c = param(&back, "code").unwrap();
        let (status, body) = token(
            &server,
            (&public, None),
            &[
                ("grant_type", "authorization_code"),
                ("code", &c),
                ("redirect_uri", requested),
                ("code_verifier", VERIFIER),
            ],
        )
        .await;
        assert_eq!(status, 200, "{requested}: {body}");
    }
    for requested in [
        "http://127.0.0.1:51234/callback/",
        "http://127.0.0.1:51234/Callback",
        "http://127.0.0.2:51234/callback",
        "https://127.0.0.1:51234/callback",
        "http://127.0.0.1.nip.io:51234/callback",
        "http://localhost:3000/callback",
    ] {
        let shown = open(
            &server,
            ALICE,
            &authorize_url(&server, &public, &[("redirect_uri", requested)]),
        )
        .await
        .unwrap_err();
        assert_eq!(shown.0, 400, "{requested}: shown, never redirected");
    }
    // Only public clients: a confidential client's loopback URI matches exactly.
    let (confidential, _) = confidential(&server).await;
    let shown = open(
        &server,
        ALICE,
        &authorize_url(
            &server,
            &confidential,
            &[("redirect_uri", "http://127.0.0.1:10/callback")],
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(shown.0, 400);
}

#[tokio::test]
async fn prompt_none_off_the_tailnet_or_for_someone_else_is_login_required() {
    use crate::support::STRANGER;
    let server = TestServer::start().await;
    let (id, secret) = confidential(&server).await;
    let silent = authorize_url(&server, &id, &[("prompt", "none")]);
    let back = open(&server, STRANGER, &silent).await.unwrap();
    assert_eq!(param(&back, "error").as_deref(), Some("login_required"));
    let loud = authorize_url(&server, &id, &[]);
    let back = open(&server, STRANGER, &loud).await.unwrap();
    assert_eq!(param(&back, "error").as_deref(), Some("access_denied"));

    // Alice's ID token as the hint: for Alice a code, for Carol login_required.
    let c = code(&server, ALICE, &id, &[]).await;
    let (_, body) = redeem(&server, (&id, Some(&secret)), &c, VERIFIER).await;
    let hint = body["id_token"].as_str().unwrap();
    let hinted = authorize_url(&server, &id, &[("prompt", "none"), ("id_token_hint", hint)]);
    let back = open(&server, ALICE, &hinted).await.unwrap();
    assert!(param(&back, "code").is_some(), "{back}");
    let back = open(&server, CAROL, &hinted).await.unwrap();
    assert_eq!(param(&back, "error").as_deref(), Some("login_required"));
    let forged = authorize_url(&server, &id, &[("id_token_hint", "e30.e30.x")]);
    let back = open(&server, ALICE, &forged).await.unwrap();
    assert_eq!(param(&back, "error").as_deref(), Some("invalid_request"));
}

#[tokio::test]
async fn the_code_flow_is_rate_limited_per_user_and_per_client() {
    let server = TestServer::with_args(&["--rate-limit", "2"]).await;
    let (id, secret) = confidential(&server).await;
    let url = authorize_url(&server, &id, &[]);
    for _ in 0..2 {
        assert!(param(&open(&server, ALICE, &url).await.unwrap(), "code").is_some());
    }
    let back = open(&server, ALICE, &url).await.unwrap();
    assert_eq!(
        param(&back, "error").as_deref(),
        Some("temporarily_unavailable")
    );
    // The client's budget is spent too: Carol is refused for it as well.
    let back = open(&server, CAROL, &url).await.unwrap();
    assert_eq!(
        param(&back, "error").as_deref(),
        Some("temporarily_unavailable")
    );
    // And the token endpoint bounds code redemptions per client.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (status, _) = redeem(&server, (&id, Some(&secret)), "no-such-code", VERIFIER).await;
        statuses.push(status);
    }
    assert_eq!(statuses, [400, 400, 429]);
}

#[tokio::test]
async fn standard_scopes_the_server_does_not_serve_are_ignored_not_refused() {
    let server = TestServer::start().await;
    let (id, secret) = confidential(&server).await;
    let c = code(
        &server,
        ALICE,
        &id,
        &[("scope", "openid address email phone")],
    )
    .await;
    let (status, body) = redeem(&server, (&id, Some(&secret)), &c, VERIFIER).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "openid email");
    let back = open(
        &server,
        ALICE,
        &authorize_url(&server, &id, &[("scope", "openid payroll")]),
    )
    .await
    .unwrap();
    assert_eq!(param(&back, "error").as_deref(), Some("invalid_scope"));
}
