//! DPoP (RFC 9449): proofs at the token endpoint, tokens bound to a key, and their use.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tailpass::dpop::ProofKey;
use tailpass::keys::SigningKey;
use tailpass_verify::{Alg, UnixTime};

use crate::agents::{exchange, server};
use crate::authorize::claims;
use crate::support::{CI, GATEWAY, TestServer, json as read};

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A proof built by hand, for the malformed cases ProofKey would never produce.
fn craft(key: &SigningKey, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(&serde_json::to_vec(header).unwrap()),
        b64(&serde_json::to_vec(claims).unwrap())
    );
    let signature = key.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", b64(&signature))
}

fn public_jwk(key: &SigningKey) -> Value {
    let mut jwk = serde_json::to_value(key.jwk()).unwrap();
    let object = jwk.as_object_mut().unwrap();
    for member in ["kid", "use", "alg"] {
        object.remove(member);
    }
    jwk
}

fn claims_for(url: &str, method: &str, iat: u64) -> Value {
    json!({"jti": tailpass::secret::random_token(12), "htm": method, "htu": url, "iat": iat})
}

async fn mint_with(server: &TestServer, proof: Option<&str>) -> (u16, Value) {
    let mut request = server
        .peer(CI)
        .post(server.url("/token"))
        .form(&[("grant_type", "client_credentials"), ("audience", GATEWAY)]);
    if let Some(proof) = proof {
        request = request.header("DPoP", proof);
    }
    read(request.send().await.unwrap()).await
}

#[tokio::test]
async fn a_correct_proof_binds_the_token_and_bad_ones_are_refused() {
    let (server, _dir) = server(&[]).await;
    let token_url = server.url("/token");
    let key = ProofKey::generate().unwrap();
    let (status, body) = mint_with(
        &server,
        Some(&key.proof("POST", &token_url, None, None).unwrap()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "DPoP");
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["cnf"]["jkt"],
        key.thumbprint().0
    );

    let raw = SigningKey::generate(Alg::ES256).unwrap().0;
    let now = UnixTime::now().0;
    let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": public_jwk(&raw)});
    let mut with_private = public_jwk(&raw);
    with_private["d"] = json!("AAAA");
    let other = SigningKey::generate(Alg::ES256).unwrap().0;
    let replayed = craft(&raw, &header, &claims_for(&token_url, "POST", now));
    assert_eq!(mint_with(&server, Some(&replayed)).await.0, 200);
    let cases: Vec<(&str, String)> = vec![
        (
            "wrong htu",
            craft(
                &raw,
                &header,
                &claims_for(&server.url("/other"), "POST", now),
            ),
        ),
        (
            "wrong htm",
            craft(&raw, &header, &claims_for(&token_url, "GET", now)),
        ),
        (
            "stale iat",
            craft(&raw, &header, &claims_for(&token_url, "POST", now - 600)),
        ),
        (
            "future iat",
            craft(&raw, &header, &claims_for(&token_url, "POST", now + 600)),
        ),
        ("replayed jti", replayed),
        (
            "private key in the header",
            craft(
                &raw,
                &json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": with_private}),
                &claims_for(&token_url, "POST", now),
            ),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&serde_json::to_vec(
                    &json!({"typ": "dpop+jwt", "alg": "none", "jwk": public_jwk(&raw)})
                )
                .unwrap()),
                b64(&serde_json::to_vec(&claims_for(&token_url, "POST", now)).unwrap())
            ),
        ),
        (
            "wrong typ",
            craft(
                &raw,
                &json!({"typ": "JWT", "alg": "ES256", "jwk": public_jwk(&raw)}),
                &claims_for(&token_url, "POST", now),
            ),
        ),
        (
            "signed by another key",
            craft(&other, &header, &claims_for(&token_url, "POST", now)),
        ),
        (
            "no jwk",
            craft(
                &raw,
                &json!({"typ": "dpop+jwt", "alg": "ES256"}),
                &claims_for(&token_url, "POST", now),
            ),
        ),
        ("garbage", "not.a.proof".into()),
    ];
    for (case, proof) in cases {
        let (status, body) = mint_with(&server, Some(&proof)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_dpop_proof")),
            "{case}: {body}"
        );
    }
}

#[tokio::test]
async fn a_dpop_bound_token_needs_its_key_at_userinfo_and_exchange() {
    let (server, _dir) = server(&[]).await;
    let key = ProofKey::generate().unwrap();
    let (_, body) = mint_with(
        &server,
        Some(
            &key.proof("POST", &server.url("/token"), None, None)
                .unwrap(),
        ),
    )
    .await;
    let token = body["access_token"].as_str().unwrap();
    let userinfo = server.url("/userinfo");
    let call = |scheme: &'static str, proof: Option<String>| {
        let mut request = server
            .peer(CI)
            .get(&userinfo)
            .header("authorization", format!("{scheme} {token}"));
        if let Some(proof) = proof {
            request = request.header("DPoP", proof);
        }
        request.send()
    };
    let bare = call("Bearer", None).await.unwrap();
    assert_eq!(bare.status(), 401, "without its key");
    assert!(
        bare.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("DPoP proof")
    );
    let thief = ProofKey::generate().unwrap();
    assert_eq!(
        call(
            "DPoP",
            Some(thief.proof("GET", &userinfo, Some(token), None).unwrap())
        )
        .await
        .unwrap()
        .status(),
        401,
        "another key"
    );
    assert_eq!(
        call(
            "DPoP",
            Some(
                key.proof("GET", &userinfo, Some("another token"), None)
                    .unwrap()
            )
        )
        .await
        .unwrap()
        .status(),
        401,
        "a proof for another token (ath)"
    );
    let ok = call(
        "DPoP",
        Some(key.proof("GET", &userinfo, Some(token), None).unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), 200);

    let (status, body) = exchange(&server, CI, token, &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "no proof: no exchange"
    );
    let proof = key
        .proof("POST", &server.url("/token"), None, None)
        .unwrap();
    let response = server
        .peer(CI)
        .post(server.url("/token"))
        .header("DPoP", proof)
        .form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", token),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
        ])
        .send()
        .await
        .unwrap();
    let (status, child) = read(response).await;
    assert_eq!(status, 200, "{child}");
    assert_eq!(
        claims(child["access_token"].as_str().unwrap())["cnf"]["jkt"],
        key.thumbprint().0
    );
}

#[tokio::test]
async fn server_nonces_when_required() {
    let (server, _dir) = server(&["--dpop-nonce"]).await;
    let key = ProofKey::generate().unwrap();
    let url = server.url("/token");
    let response = server
        .peer(CI)
        .post(&url)
        .header("DPoP", key.proof("POST", &url, None, None).unwrap())
        .form(&[("grant_type", "client_credentials"), ("audience", GATEWAY)])
        .send()
        .await
        .unwrap();
    let nonce = response.headers()["dpop-nonce"]
        .to_str()
        .unwrap()
        .to_owned();
    let (status, body) = read(response).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("use_dpop_nonce"))
    );
    let (status, body) = mint_with(
        &server,
        Some(&key.proof("POST", &url, None, Some(&nonce)).unwrap()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = mint_with(
        &server,
        Some(&key.proof("POST", &url, None, Some("forged")).unwrap()),
    )
    .await;
    assert_eq!(status, 400);
}

/// A code-flow token request from a relying party, with a DPoP proof when `key` is given.
async fn code_flow_token(
    server: &TestServer,
    client: (&str, Option<&str>),
    form: &[(&str, &str)],
    key: Option<&ProofKey>,
) -> (u16, Value) {
    let mut pairs = form.to_vec();
    let mut request = server.peer(1).post(server.url("/token"));
    match client.1 {
        Some(secret) => request = request.basic_auth(client.0, Some(secret)),
        None => pairs.push(("client_id", client.0)),
    }
    if let Some(key) = key {
        request = request.header(
            "DPoP",
            key.proof("POST", &server.url("/token"), None, None)
                .unwrap(),
        );
    }
    read(request.form(&pairs).send().await.unwrap()).await
}

#[tokio::test]
async fn a_public_clients_refresh_token_is_bound_to_its_dpop_key() {
    use crate::authorize::{VERIFIER, code};
    use crate::login::{REDIRECT, register};
    let (server, _dir) = server(&[]).await;
    let (public, _) = register(
        &server,
        json!({"name": "cli", "redirect_uris": [REDIRECT], "public": true}),
    )
    .await;
    let key = ProofKey::generate().unwrap();
    let thief = ProofKey::generate().unwrap();
    let c = code(&server, crate::support::ALICE, &public, &[]).await;
    let redeem = [
        ("grant_type", "authorization_code"),
        ("code", c.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    let (status, body) = code_flow_token(&server, (&public, None), &redeem, Some(&key)).await;
    assert_eq!(status, 200, "{body}");
    let mut refresh_token = body["refresh_token"].as_str().unwrap().to_owned();
    for (proof, why) in [(None, "no proof"), (Some(&thief), "another key")] {
        let (status, body) = code_flow_token(
            &server,
            (&public, None),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh_token),
            ],
            proof,
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_dpop_proof")),
            "{why}: {body}"
        );
    }
    for _ in 0..2 {
        let (status, body) = code_flow_token(
            &server,
            (&public, None),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh_token),
            ],
            Some(&key),
        )
        .await;
        assert_eq!(
            status, 200,
            "the bound key refreshes, and the refused tries spent nothing: {body}"
        );
        refresh_token = body["refresh_token"].as_str().unwrap().to_owned();
    }
    let (status, _) = code_flow_token(
        &server,
        (&public, None),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh_token),
        ],
        None,
    )
    .await;
    assert_eq!(status, 400, "the rotated token stays bound");

    // A confidential client's refresh tokens are bound to its secret, not to a key.
    let (confidential, secret) =
        register(&server, json!({"name": "app", "redirect_uris": [REDIRECT]})).await;
    let secret = secret.unwrap();
    let c = code(&server, crate::support::ALICE, &confidential, &[]).await;
    let redeem = [
        ("grant_type", "authorization_code"),
        ("code", c.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    let (status, body) =
        code_flow_token(&server, (&confidential, Some(&secret)), &redeem, Some(&key)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = code_flow_token(
        &server,
        (&confidential, Some(&secret)),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", body["refresh_token"].as_str().unwrap()),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_strangers_dpop_proofs_never_take_room_in_the_issuers_replay_cache() {
    use crate::support::{CI, GATEWAY, STRANGER};
    let (server, _dir) = crate::agents::server(&[]).await;
    let token_url = server.url("/token");
    let key = ProofKey::generate().unwrap();
    for _ in 0..20 {
        let answer = server
            .peer(STRANGER)
            .post(&token_url)
            .header("dpop", key.proof("POST", &token_url, None, None).unwrap())
            .form(&[("grant_type", "client_credentials"), ("audience", GATEWAY)])
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 401);
    }
    assert!(
        server.state().dpop_replay.is_empty(),
        "refused requests used up no proof"
    );
    let proof = key.proof("POST", &token_url, None, None).unwrap();
    let send = || {
        server
            .peer(CI)
            .post(&token_url)
            .header("dpop", proof.clone())
            .form(&[("grant_type", "client_credentials"), ("audience", GATEWAY)])
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 200);
    assert_eq!(
        server.state().dpop_replay.len(),
        1,
        "the accepted proof is used up"
    );
    let (status, body) = crate::support::json(send().await.unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_dpop_proof"))
    );
}
