//! TLS from certificate files: the main listener speaks HTTPS and the issuer is https.

use crate::support::{ALICE, TestServer, ip};

#[tokio::test]
async fn serves_https_from_pem_files() {
    let dir = tempfile::tempdir().unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let server = TestServer::with_args(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .await;
    assert!(
        server.base.starts_with("https://127.0.0.1:"),
        "{}",
        server.base
    );

    let trusting = reqwest::Client::builder()
        .local_address(ip(ALICE))
        .add_root_certificate(
            reqwest::Certificate::from_pem(generated.cert.pem().as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    let doc: serde_json::Value = trusting
        .get(server.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["issuer"], server.base);

    // Plain HTTP to the TLS port gets no answer worth the name.
    let plain = server.base.replace("https://", "http://");
    let answer = reqwest::Client::new()
        .get(format!("{plain}/healthz"))
        .send()
        .await;
    assert!(
        answer.is_err(),
        "plain HTTP to the TLS port must fail, not be answered: {answer:?}"
    );
}

#[tokio::test]
async fn a_bad_certificate_file_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "garbage").unwrap();
    let argv = [
        "tailpass",
        "--dev",
        "--state-dir",
        dir.path().join("s").to_str().unwrap(),
        "--keys-dir",
        dir.path().join("k").to_str().unwrap(),
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--no-rs256",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        cert.to_str().unwrap(),
    ]
    .map(str::to_owned);
    let cli = <tailpass::cli::Cli as clap::Parser>::try_parse_from(argv).unwrap();
    let tailpass::cli::Command::Serve(args) = cli.command else {
        unreachable!()
    };
    let settings = tailpass::config::resolve(&cli.global, &args).unwrap();
    let err = tailpass::server::start(settings, std::sync::Arc::new(tailpass::clock::SystemClock))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cert.pem"), "{err}");
}
