//! The login flow with a real relying-party library (`openidconnect`): discovery, authorize
//! from Alice's node, code exchange with PKCE S256, ID token verified against the JWKS,
//! userinfo, refresh, introspection, revocation — for every ID token algorithm, confidential
//! and public clients.

use axum::http::Method;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdToken, CoreJwsSigningAlgorithm, CoreProviderMetadata,
    CoreRevocableToken as StandardRevocableToken, CoreUserInfoClaims,
};
use openidconnect::{
    AccessTokenHash, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken,
    IntrospectionUrl, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, RedirectUrl,
    RevocationUrl, Scope, TokenIntrospectionResponse, TokenResponse,
};
use url::Url;

use crate::support::{ALICE, TestServer, admin};

pub const REDIRECT: &str = "http://127.0.0.1:9/callback";

/// Alice's `sub`: tsidp's `userid:<hex>` of her user id in the fixture.
pub fn alice_sub() -> String {
    let id = crate::support::fixture("whois-user.json")["UserProfile"]["ID"]
        .as_u64()
        .unwrap();
    format!("userid:{id:x}")
}

/// Registers a client through the admin socket; returns its id and secret.
pub async fn register(server: &TestServer, body: serde_json::Value) -> (String, Option<String>) {
    let (status, created) = admin(server, Method::POST, "/admin/api/clients", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    (
        created["client_id"].as_str().unwrap().to_owned(),
        created["client_secret"].as_str().map(str::to_owned),
    )
}

/// The browser of peer `from` opens `url` and is redirected: the `Location`.
pub async fn follow(server: &TestServer, from: u8, url: &str) -> Url {
    let response = server.peer(from).get(url).send().await.unwrap();
    assert_eq!(response.status(), 302, "{}", response.text().await.unwrap());
    Url::parse(response.headers()["location"].to_str().unwrap()).unwrap()
}

pub fn param(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

async fn full_flow(server: &TestServer, alg: Option<&str>, public: bool) {
    let mut body = serde_json::json!({"name": "rp", "redirect_uris": [REDIRECT], "public": public});
    if let Some(alg) = alg {
        body["id_token_alg"] = alg.into();
    }
    let (client_id, secret) = register(server, body).await;
    assert_eq!(secret.is_none(), public);
    let http = server.client_builder().build().unwrap();
    let metadata =
        CoreProviderMetadata::discover_async(IssuerUrl::new(server.base.clone()).unwrap(), &http)
            .await
            .unwrap();
    let client = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(client_id.clone()),
        secret.map(ClientSecret::new),
    )
    .set_redirect_uri(RedirectUrl::new(REDIRECT.into()).unwrap())
    .set_introspection_url(IntrospectionUrl::new(server.url("/introspect")).unwrap())
    .set_revocation_url(RevocationUrl::new(server.url("/revoke")).unwrap());

    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (authorize_url, csrf, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("profile".into()))
        .add_scope(Scope::new("email".into()))
        .set_pkce_challenge(challenge)
        .url();
    let back = follow(server, ALICE, authorize_url.as_str()).await;
    assert_eq!(
        param(&back, "state").as_deref(),
        Some(csrf.secret().as_str())
    );
    assert_eq!(
        param(&back, "iss").as_deref(),
        Some(server.base.as_str()),
        "RFC 9207"
    );
    let code = param(&back, "code").unwrap();

    let tokens = client
        .exchange_code(AuthorizationCode::new(code))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .unwrap();
    let id_token = tokens.id_token().expect("an ID token for scope openid");
    let expected_alg = alg.unwrap_or("RS256");
    let header: serde_json::Value =
        serde_json::from_slice(&base64_url(id_token.to_string().split('.').next().unwrap()))
            .unwrap();
    assert_eq!(header["alg"], expected_alg);
    let claims = id_token
        .claims(&client.id_token_verifier(), &nonce)
        .unwrap();
    assert_eq!(claims.subject().as_str(), alice_sub());
    assert_eq!(
        claims.email().map(|e| e.as_str()),
        Some("alice@example.com")
    );
    assert_eq!(
        claims.preferred_username().map(|u| u.as_str()),
        Some("alice@example.com")
    );
    assert!(claims.auth_time().is_some());
    let signing_alg = id_token.signing_alg().unwrap();
    let verifier = client.id_token_verifier();
    let signing_key = id_token.signing_key(&verifier).unwrap();
    assert_eq!(
        claims.access_token_hash(),
        Some(
            &AccessTokenHash::from_token(tokens.access_token(), signing_alg, signing_key).unwrap()
        ),
        "at_hash matches the access token"
    );
    // An ID-token verifier that ignores `typ` and accepts ES256 (as go-oidc's does) must still
    // refuse the access token: it is not addressed to the client.
    let lax = client
        .id_token_verifier()
        .set_allowed_algs(vec![CoreJwsSigningAlgorithm::EcdsaP256Sha256])
        .allow_all_jose_types();
    let posing: CoreIdToken = tokens.access_token().secret().parse().unwrap();
    let refused = posing.claims(&lax, |_: Option<&Nonce>| Ok(()));
    assert!(
        matches!(refused, Err(ClaimsVerificationError::InvalidAudience(_))),
        "{refused:?}"
    );

    let at_header: serde_json::Value = serde_json::from_slice(&base64_url(
        tokens.access_token().secret().split('.').next().unwrap(),
    ))
    .unwrap();
    assert_eq!(
        (at_header["typ"].as_str(), at_header["alg"].as_str()),
        (Some("at+jwt"), Some("ES256")),
        "RFC 9068 access token"
    );

    let userinfo: CoreUserInfoClaims = client
        .user_info(tokens.access_token().clone(), None)
        .unwrap()
        .request_async(&http)
        .await
        .unwrap();
    assert_eq!(
        userinfo.subject().as_str(),
        alice_sub(),
        "one sub everywhere"
    );
    assert_eq!(
        userinfo.email().map(|e| e.as_str()),
        Some("alice@example.com")
    );

    let refreshed = client
        .exchange_refresh_token(tokens.refresh_token().expect("a refresh token"))
        .unwrap()
        .request_async(&http)
        .await
        .unwrap();
    assert_ne!(
        refreshed.refresh_token().unwrap().secret(),
        tokens.refresh_token().unwrap().secret(),
        "rotated"
    );

    if !public {
        let introspection = client
            .introspect(refreshed.access_token())
            .request_async(&http)
            .await
            .unwrap();
        assert!(introspection.active());
        assert_eq!(introspection.sub(), Some(alice_sub().as_str()));
        assert_eq!(
            introspection.client_id().map(|c| c.as_str()),
            Some(client_id.as_str())
        );
    }
    client
        .revoke_token(StandardRevocableToken::AccessToken(
            refreshed.access_token().clone(),
        ))
        .unwrap()
        .request_async(&http)
        .await
        .unwrap();
    if !public {
        let after = client
            .introspect(refreshed.access_token())
            .request_async(&http)
            .await
            .unwrap();
        assert!(!after.active(), "a revoked JWT is inactive");
    }
    let refused: Result<CoreUserInfoClaims, _> = client
        .user_info(refreshed.access_token().clone(), None)
        .unwrap()
        .request_async(&http)
        .await;
    assert!(refused.is_err(), "userinfo refuses a revoked access token");
}

fn base64_url(part: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap()
}

#[tokio::test]
async fn openidconnect_rp_for_every_algorithm_confidential_and_public() {
    let server = TestServer::https(&["--enable-alg", "EdDSA"]).await;
    for alg in [Some("ES256"), Some("EdDSA"), Some("RS256"), None] {
        for public in [false, true] {
            full_flow(&server, alg, public).await;
        }
    }
}
