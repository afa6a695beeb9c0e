//! The tailscaled backend against a test double of its LocalAPI: no tailscaled (and no tailnet
//! control plane) can run in CI, so a small server on a unix socket answers
//! `GET /localapi/v0/whois` with the fixtures' JSON, the way tailscaled does.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tailpass::identity::tailscaled::Tailscaled;
use tailpass::identity::{IdentitySource, WhoisError};
use tokio::task::JoinHandle;

use crate::support::{ALICE, CI, STRANGER, TestServer, ip, json, peer, peers_table};

/// Test double of tailscaled's LocalAPI (WhoIs only).
struct FakeTailscaled {
    path: PathBuf,
    task: JoinHandle<()>,
    asked: Arc<Mutex<Vec<String>>>,
    cert_pem: String,
}

#[derive(Clone)]
struct Double {
    table: Arc<HashMap<IpAddr, serde_json::Value>>,
    asked: Arc<Mutex<Vec<String>>>,
    /// The `type=pair` answer for domain 127.0.0.1: key then certificate, PEM.
    pair: Arc<String>,
}

async fn cert(
    State(double): State<Double>,
    axum::extract::Path(domain): axum::extract::Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if domain != "127.0.0.1" || q.get("type").map(String::as_str) != Some("pair") {
        return (StatusCode::NOT_FOUND, "no such certificate").into_response();
    }
    double.pair.as_str().to_owned().into_response()
}

async fn whois(
    State(double): State<Double>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    // The real LocalAPI refuses other Host values (DNS rebinding defence).
    if headers.get("host").and_then(|h| h.to_str().ok()) != Some("local-tailscaled.sock") {
        return (StatusCode::FORBIDDEN, "bad Host").into_response();
    }
    let Some(addr) = q.get("addr") else {
        return (StatusCode::BAD_REQUEST, "missing 'addr' parameter").into_response();
    };
    double.asked.lock().unwrap().push(addr.clone());
    let ip = addr
        .parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| addr.parse::<IpAddr>());
    match ip.ok().and_then(|ip| double.table.get(&ip)) {
        Some(answer) => axum::Json(answer.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, "no match for IP:port").into_response(),
    }
}

impl FakeTailscaled {
    async fn start(path: &Path) -> FakeTailscaled {
        let table: HashMap<IpAddr, serde_json::Value> = peers_table()
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.clone()))
            .collect();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let cert_pem = generated.cert.pem();
        let pair = format!("{}{}", generated.signing_key.serialize_pem(), cert_pem);
        let double = Double {
            table: Arc::new(table),
            asked: asked.clone(),
            pair: Arc::new(pair),
        };
        let app = Router::new()
            .route("/localapi/v0/whois", get(whois))
            .route("/localapi/v0/cert/{domain}", get(cert))
            .with_state(double);
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeTailscaled {
            path: path.to_owned(),
            task,
            asked,
            cert_pem,
        }
    }

    /// tailscaled goes away: the socket disappears.
    fn stop(self) {
        self.task.abort();
        std::fs::remove_file(&self.path).unwrap();
    }
}

#[tokio::test]
async fn whois_keeps_cap_map_and_tells_unknown_from_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tailscaled.sock");
    let backend = Tailscaled::new(&socket);
    let peer_addr: SocketAddr = (ip(ALICE), 41641).into();

    assert!(
        matches!(
            backend.whois(peer_addr).await,
            Err(WhoisError::Unavailable(_))
        ),
        "no socket yet"
    );

    let double = FakeTailscaled::start(&socket).await;
    let alice = backend.whois(peer_addr).await.unwrap();
    assert_eq!(alice.user.as_ref().unwrap().login, "alice@example.com");
    let grant = &alice.caps.get("tailscale.com/cap/tsidp")[0];
    assert_eq!(
        grant["extraClaims"]["groups"],
        serde_json::json!(["eng", "sre"]),
        "CapMap kept"
    );
    let ci = backend.whois((ip(CI), 5000).into()).await.unwrap();
    assert!(ci.is_tagged());
    assert_eq!(
        backend.whois((ip(STRANGER), 1).into()).await,
        Err(WhoisError::NotOnTailnet)
    );
    assert_eq!(
        double.asked.lock().unwrap()[0],
        "127.0.0.2:41641",
        "the port is passed on"
    );

    double.stop();
    assert!(
        matches!(
            backend.whois(peer_addr).await,
            Err(WhoisError::Unavailable(_))
        ),
        "socket gone"
    );

    let _double = FakeTailscaled::start(&socket).await;
    assert_eq!(
        backend.whois(peer_addr).await.unwrap(),
        alice,
        "back without a restart"
    );
}

#[tokio::test]
async fn server_answers_503_while_tailscaled_is_down_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tailscaled.sock");
    let double = FakeTailscaled::start(&socket).await;
    let socket_arg = socket.to_str().unwrap().to_owned();
    let server = TestServer::in_dir(
        dir,
        &[],
        &[
            "--identity",
            "tailscaled",
            "--tailscaled-socket",
            &socket_arg,
        ],
    )
    .await;
    let body = serde_json::json!({"redirect_uris": ["https://app.example/cb"]});
    let register = || peer(ALICE).post(server.url("/register")).json(&body).send();

    let (status, _) = json(register().await.unwrap()).await;
    assert_eq!(status, 201);

    double.stop();
    let (status, answer) = json(register().await.unwrap()).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (503, Some("temporarily_unavailable"))
    );
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/jwks.json",
        "/healthz",
    ] {
        assert_eq!(
            peer(ALICE)
                .get(server.url(path))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "{path} keeps serving"
        );
    }

    let _double = FakeTailscaled::start(&socket).await;
    let (status, _) = json(register().await.unwrap()).await;
    assert_eq!(status, 201, "recovered without a restart");
}

#[tokio::test]
async fn tls_from_tailscaleds_certificate() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tailscaled.sock");
    let double = FakeTailscaled::start(&socket).await;
    let api = tailpass::identity::tailscaled::LocalApi::new(&socket);
    let token = tokio_util::sync::CancellationToken::new();
    let missing =
        tailpass::http::tls::from_tailscaled(api.clone(), "other.example".into(), token.clone())
            .await;
    assert!(missing.unwrap_err().to_string().contains("other.example"));

    let config = tailpass::http::tls::from_tailscaled(api, "127.0.0.1".into(), token.clone())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/", get(|| async { "over tailscaled's certificate" }));
    let served = tokio::spawn(tailpass::http::listen::serve_tcp(
        listener,
        Some(tokio_rustls::TlsAcceptor::from(config)),
        tailpass::identity::peer::Listener::Main,
        app,
        token.clone(),
    ));
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(double.cert_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let body = client
        .get(format!("https://{addr}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "over tailscaled's certificate");
    token.cancel();
    served.await.unwrap();
}
