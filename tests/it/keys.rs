//! Signing keys as relying parties see them: the JWKS per algorithm, rotation with next keys
//! published ahead and retired keys kept, file modes, and refusal of a damaged key file.

use std::os::unix::fs::PermissionsExt as _;

use axum::http::Method;
use tailpass_verify::{Alg, JwkSet};

use crate::support::{ALICE, TestServer, admin, peer};

async fn jwks(server: &TestServer) -> JwkSet {
    peer(ALICE)
        .get(server.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn kids(set: &JwkSet, alg: Alg) -> Vec<String> {
    set.keys
        .iter()
        .filter(|k| k.alg == Some(alg))
        .filter_map(|k| k.kid.clone())
        .collect()
}

#[tokio::test]
async fn jwks_for_each_algorithm() {
    for (args, expected) in [
        (vec!["--signing-alg", "ES256"], vec![Alg::ES256, Alg::RS256]),
        (vec!["--signing-alg", "EdDSA"], vec![Alg::EdDSA, Alg::RS256]),
        (vec!["--signing-alg", "RS256"], vec![Alg::RS256]),
        (
            vec!["--signing-alg", "ES256", "--no-rs256"],
            vec![Alg::ES256],
        ),
    ] {
        let server = TestServer::with_args(&args).await;
        let response = peer(ALICE)
            .get(server.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["access-control-allow-origin"], "*");
        let raw: serde_json::Value = response.json().await.unwrap();
        let set: JwkSet = serde_json::from_value(raw.clone()).unwrap();
        let mut algs: Vec<Alg> = set.keys.iter().filter_map(|k| k.alg).collect();
        algs.sort();
        algs.dedup();
        assert_eq!(algs, expected, "{args:?}");
        for (key, raw) in set.keys.iter().zip(raw["keys"].as_array().unwrap()) {
            assert_eq!(
                key.kid.as_deref(),
                Some(key.thumbprint().0.as_str()),
                "kid is the RFC 7638 thumbprint"
            );
            assert_eq!(key.use_.as_deref(), Some("sig"));
            assert!(
                raw.get("d").is_none(),
                "no private member is ever published"
            );
        }
        for alg in expected {
            assert_eq!(kids(&set, alg).len(), 2, "{alg}: an active and a next key");
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn rotation_publishes_next_before_it_signs_and_keeps_retired() {
    let server = TestServer::start().await;
    let before = jwks(&server).await;
    let es = kids(&before, Alg::ES256);
    let (old_active, old_next) = (es[0].clone(), es[1].clone());
    assert_eq!(
        server.state().keys.active(Alg::ES256).unwrap().kid().0,
        old_active
    );

    let (status, _) = admin(
        &server,
        Method::POST,
        "/admin/api/keys/rotate",
        Some(serde_json::json!({"alg": "ES256"})),
    )
    .await;
    assert_eq!(status, 200);
    let after = jwks(&server).await;
    let es = kids(&after, Alg::ES256);
    assert_eq!(es.len(), 3, "active, new next, retired: {es:?}");
    assert_eq!(
        es[0], old_next,
        "the key published as next is the one that now signs"
    );
    assert_eq!(
        server.state().keys.active(Alg::ES256).unwrap().kid().0,
        old_next
    );
    assert!(es.contains(&old_active), "the retired key is still served");
    let new_next = es
        .iter()
        .find(|k| **k != old_next && **k != old_active)
        .unwrap()
        .clone();
    assert!(server.state().keys.published(&new_next).unwrap().is_some());
    assert_eq!(
        kids(&after, Alg::RS256),
        kids(&before, Alg::RS256),
        "only ES256 rotated"
    );

    // Once every token the retired key signed has expired, it leaves the JWKS.
    server
        .clock
        .advance(server.state().settings.max_token_lifetime + 61);
    assert!(server.state().keys.maintain().unwrap());
    let later = jwks(&server).await;
    assert!(!kids(&later, Alg::ES256).contains(&old_active));
    assert!(!server.keys_dir().join(format!("{old_active}.pem")).exists());
}

#[tokio::test]
async fn rotating_an_algorithm_that_is_not_enabled_is_a_clear_error() {
    let server = TestServer::start().await;
    let (status, body) = admin(
        &server,
        Method::POST,
        "/admin/api/keys/rotate",
        Some(serde_json::json!({"alg": "EdDSA"})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("EdDSA")
    );
}

#[tokio::test]
async fn key_files_and_state_are_private() {
    let server = TestServer::start().await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&server.keys_dir()), 0o700);
    assert_eq!(mode(&server.state_dir()), 0o700);
    assert_eq!(mode(&server.state_dir().join("tailpass.db")), 0o600);
    assert_eq!(mode(server.running().admin_socket()), 0o600);
    for entry in std::fs::read_dir(server.keys_dir()).unwrap() {
        assert_eq!(mode(&entry.unwrap().path()), 0o600);
    }
}

#[tokio::test]
async fn a_restart_keeps_the_keys() {
    let server = TestServer::start().await;
    let before = jwks(&server).await;
    let dir = server.stop().await;
    let table = dir.path().join("peers.json");
    let table = table.to_str().unwrap().to_owned();
    let server = TestServer::in_dir(dir, &[], &["--identity-file", &table]).await;
    assert_eq!(jwks(&server).await, before);
}

#[tokio::test]
async fn a_corrupt_key_file_stops_start_up_and_is_not_replaced() {
    let server = TestServer::start().await;
    let active = server
        .state()
        .keys
        .active(Alg::ES256)
        .unwrap()
        .kid()
        .0
        .clone();
    let dir = server.stop().await;
    let file = dir.path().join("keys").join(format!("{active}.pem"));
    std::fs::write(&file, "not a key at all").unwrap();

    let state = dir.path().join("state");
    let keys = dir.path().join("keys");
    let argv = [
        "tailpass",
        "--dev",
        "--state-dir",
        state.to_str().unwrap(),
        "--keys-dir",
        keys.to_str().unwrap(),
        "serve",
        "--listen",
        "127.0.0.1:0",
    ];
    let parsed = <tailpass::cli::Cli as clap::Parser>::try_parse_from(argv).unwrap();
    let tailpass::cli::Command::Serve(args) = parsed.command else {
        unreachable!()
    };
    let settings = tailpass::config::resolve(&parsed.global, &args).unwrap();
    let err = tailpass::server::start(settings, std::sync::Arc::new(tailpass::clock::SystemClock))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&active) && err.contains("corrupt"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a key at all");
}

/// The `kid` of a compact JWS's header.
fn kid_of(jwt: &str) -> String {
    use base64::Engine as _;
    let header = jwt.split('.').next().unwrap();
    let header: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn revoking_a_kid_drops_it_refuses_what_it_signed_and_another_key_signs() {
    use crate::agents::{mint, server};
    use crate::support::{CI, GATEWAY, GATEWAY_NODE, json};

    let (server, _dir) = server(&[]).await;
    let (_, body) = mint(&server, CI, &[("audience", GATEWAY)]).await;
    let token = body["access_token"].as_str().unwrap().to_owned();
    let kid = kid_of(&token);
    let introspect = |token: String| {
        let request = server
            .peer(GATEWAY_NODE)
            .post(server.url("/introspect"))
            .form(&[("token", token)]);
        async move { json(request.send().await.unwrap()).await.1 }
    };
    let userinfo = |token: String| {
        let request = server
            .peer(CI)
            .get(server.url("/userinfo"))
            .bearer_auth(token);
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(introspect(token.clone()).await["active"], true);
    assert_eq!(userinfo(token.clone()).await, 200);

    let (status, revoked) = admin(
        &server,
        Method::POST,
        "/admin/api/keys/revoke",
        Some(serde_json::json!({"kid": kid})),
    )
    .await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["revocation"]["revocation"]["kind"], "kid");
    let published: Vec<String> = jwks(&server)
        .await
        .keys
        .iter()
        .filter_map(|k| k.kid.clone())
        .collect();
    assert!(!published.contains(&kid), "gone from the JWKS at once");
    assert_eq!(
        kids(&jwks(&server).await, Alg::ES256).len(),
        2,
        "active and next"
    );

    assert_eq!(
        introspect(token.clone()).await,
        serde_json::json!({"active": false})
    );
    assert_eq!(userinfo(token.clone()).await, 401);
    // The feed carries it for every verifier.
    let (_, feed) = json(
        server
            .peer(GATEWAY_NODE)
            .get(server.url("/revocations?since=0"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        feed["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "kid" && e["value"] == kid.as_str()),
        "{feed}"
    );

    let (_, body) = mint(&server, CI, &[("audience", GATEWAY)]).await;
    let fresh = body["access_token"].as_str().unwrap().to_owned();
    assert_ne!(kid_of(&fresh), kid, "another key signs");
    assert_eq!(introspect(fresh.clone()).await["active"], true);
    assert_eq!(userinfo(fresh).await, 200);

    let (status, _) = admin(
        &server,
        Method::POST,
        "/admin/api/keys/revoke",
        Some(serde_json::json!({"kid": kid})),
    )
    .await;
    assert_eq!(status, 400, "an unknown kid is refused");
}

/// A key-encryption key file (mode 0600) in `dir`.
fn kek_file(dir: &std::path::Path, name: &str) -> String {
    let path = dir.join(name);
    let line = tailpass::keys::Kek::generate_line().unwrap();
    std::fs::write(&path, format!("{}\n", *line)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_str().unwrap().to_owned()
}

fn key_files(server_dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(server_dir.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "manifest.json")
        .collect()
}

#[tokio::test]
async fn sealed_keys_serve_the_same_jwks_and_rewrap_to_a_new_key_encryption_key() {
    let kek_dir = tempfile::tempdir().unwrap();
    let (old, new) = (
        kek_file(kek_dir.path(), "old.kek"),
        kek_file(kek_dir.path(), "new.kek"),
    );
    let server = TestServer::with_args(&["--key-encryption-key-file", &old]).await;
    let before = jwks(&server).await;
    assert_eq!(before.keys.len(), 4, "active and next per algorithm");
    let dir = server.stop().await;
    let files = key_files(dir.path());
    assert!(
        files.iter().all(|n| n.ends_with(".1.sealed")),
        "the plain keys were sealed: {files:?}"
    );
    let table = dir.path().join("peers.json");
    let table = table.to_str().unwrap().to_owned();
    let server = TestServer::in_dir(
        dir,
        &["--key-encryption-key-file", &old],
        &["--identity-file", &table],
    )
    .await;
    assert_eq!(jwks(&server).await, before);

    let (status, body) = admin(
        &server,
        Method::POST,
        "/admin/api/keys/rewrap",
        Some(serde_json::json!({"new_key_encryption_key_file": new})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // A tailnet administrator cannot make the server read a file of their choosing.
    let over_http = peer(ALICE)
        .post(server.url("/admin/api/keys/rewrap"))
        .header("origin", server.url(""))
        .json(&serde_json::json!({"new_key_encryption_key_file": new}))
        .send()
        .await
        .unwrap();
    assert_eq!(over_http.status(), 403);
    let dir = server.stop().await;
    assert!(
        key_files(dir.path())
            .iter()
            .all(|n| n.ends_with(".2.sealed"))
    );
    let server = TestServer::in_dir(
        dir,
        &["--key-encryption-key-file", &new],
        &["--identity-file", &table],
    )
    .await;
    assert_eq!(
        jwks(&server).await,
        before,
        "the same keys, under the new key"
    );
}
