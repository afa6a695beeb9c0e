//! Clients identified by a Client ID Metadata Document (MCP 2025-11-25): the document served
//! over real TLS on loopback (allowed only because test servers run with `--dev`), fetched,
//! checked and cached by the issuer; the code flow with PKCE and consent; and the documents
//! that are refused, shown to the person and never redirected.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use url::Url;

use crate::authorize::{VERIFIER, authorize_url, claims, open};
use crate::login::{REDIRECT, param};
use crate::sessions::{hidden_fields, submit_consent};
use crate::support::{CAROL, GATEWAY, TestServer, json as read};

/// A site serving metadata documents over HTTPS, counting fetches per path.
#[derive(Default)]
struct Site {
    /// Path → (body, Cache-Control).
    documents: Mutex<HashMap<String, (String, Option<&'static str>)>>,
    fetches: Mutex<HashMap<String, usize>>,
}

impl Site {
    fn put(&self, path: &str, body: String, cache_control: Option<&'static str>) {
        self.documents
            .lock()
            .unwrap()
            .insert(path.to_owned(), (body, cache_control));
    }

    fn fetches(&self, path: &str) -> usize {
        self.fetches.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

async fn document(State(site): State<Arc<Site>>, Path(path): Path<String>) -> Response {
    *site
        .fetches
        .lock()
        .unwrap()
        .entry(path.clone())
        .or_default() += 1;
    if path == "endless.json" {
        // No Content-Length: a body that never stops, cut by the reader's bound.
        let chunks = futures_util::stream::repeat_with(|| {
            Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b' '; 8192]))
        });
        return axum::body::Body::from_stream(chunks).into_response();
    }
    let Some((body, cache_control)) = site.documents.lock().unwrap().get(&path).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    if let Some(value) = cache_control {
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static(value));
    }
    response
}

/// The site on 127.0.0.1, with a certificate for `localhost` from a throwaway root; the
/// root's PEM file, for `--client-metadata-ca-file`.
async fn site(dir: &std::path::Path) -> (Arc<Site>, SocketAddr, std::path::PathBuf) {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let ca = dir.join("metadata-ca.pem");
    std::fs::write(&ca, generated.cert.pem()).unwrap();
    let certs = vec![CertificateDer::from(generated.cert.der().to_vec())];
    let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let site = Arc::new(Site::default());
    let app = Router::new()
        .route("/{path}", axum::routing::get(document))
        .with_state(site.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    (site, addr, ca)
}

/// A public client's document naming itself `client_id`.
fn document_for(client_id: &str, name: &str) -> Value {
    json!({
        "client_id": client_id,
        "client_name": name,
        "client_uri": "https://notes.example",
        "logo_uri": "https://notes.example/logo.png",
        "redirect_uris": [REDIRECT],
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    })
}

async fn issuer_with_documents(ca: &std::path::Path, hosts: &str) -> TestServer {
    TestServer::with_args(&[
        "--client-metadata-hosts",
        hosts,
        "--client-metadata-ca-file",
        ca.to_str().unwrap(),
    ])
    .await
}

/// A token request from a public client.
async fn token(server: &TestServer, form: &[(&str, &str)]) -> (u16, Value) {
    read(
        server
            .peer(CAROL)
            .post(server.url("/token"))
            .form(form)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn a_client_identified_by_its_metadata_document_signs_in_with_pkce_and_consent() {
    let dir = tempfile::tempdir().unwrap();
    let (site, addr, ca) = site(dir.path()).await;
    let id = format!("https://localhost:{}/notes.json", addr.port());
    site.put(
        "notes.json",
        document_for(&id, "Notes MCP client").to_string(),
        Some("public, max-age=300"),
    );
    let server = issuer_with_documents(&ca, "localhost").await;

    let (_, discovery) = read(
        server
            .peer(CAROL)
            .get(server.url("/.well-known/oauth-authorization-server"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(discovery["client_id_metadata_document_supported"], true);
    assert!(
        discovery["code_challenge_methods_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("S256"))
    );

    // The consent page names the client as its document does, and the site asking.
    let ask = [("resource", GATEWAY), ("scope", "openid offline_access")];
    let page = open(&server, CAROL, &authorize_url(&server, &id, &ask))
        .await
        .unwrap_err();
    assert_eq!(page.0, 200, "a consent page: {}", page.1);
    assert!(page.1.contains("Notes MCP client"), "{}", page.1);
    assert!(page.1.contains("<code>localhost</code>"), "{}", page.1);
    assert!(page.1.contains(GATEWAY), "the resource is shown");
    let approved = submit_consent(
        &server,
        CAROL,
        &hidden_fields(&page.1),
        "approve",
        &server.base,
    )
    .await;
    assert_eq!(approved.status(), 303);
    let back = Url::parse(approved.headers()["location"].to_str().unwrap()).unwrap();
    let code = param(&back, "code").expect("a code after consent");

    // RFC 8707 at the token endpoint too, as MCP clients send it.
    let (status, body) = token(
        &server,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
            ("client_id", &id),
            ("resource", GATEWAY),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let access = claims(body["access_token"].as_str().unwrap());
    assert_eq!(access["aud"], json!([GATEWAY, server.base]));
    assert_eq!(access["client_id"], id.as_str());
    assert_eq!(
        claims(body["id_token"].as_str().unwrap())["aud"],
        id.as_str()
    );
    assert!(
        body.get("refresh_token").is_none(),
        "offline_access grants nothing the document did not ask for: {body}"
    );

    // Consent is remembered by the URL: the next login goes straight through, and a resource
    // at the token endpoint must be one the authorization request named.
    let back = open(&server, CAROL, &authorize_url(&server, &id, &ask))
        .await
        .unwrap();
    let code = param(&back, "code").expect("no second consent");
    let (status, body) = token(
        &server,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
            ("client_id", &id),
            ("resource", "https://elsewhere.example"),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target"))
    );

    // A public client: no PKCE, no code.
    let back = open(
        &server,
        CAROL,
        &authorize_url(
            &server,
            &id,
            &[("code_challenge", ""), ("code_challenge_method", "")],
        ),
    )
    .await
    .unwrap();
    assert_eq!(param(&back, "error").as_deref(), Some("invalid_request"));

    // Every lookup above (authorize, consent, token) was served by one fetch: max-age holds.
    assert_eq!(site.fetches("notes.json"), 1);

    // Lookups at once of a document not yet fetched share one fetch.
    let busy = format!("https://localhost:{}/busy.json", addr.port());
    site.put("busy.json", document_for(&busy, "Busy").to_string(), None);
    let busy_url = authorize_url(&server, &busy, &[]);
    let pages =
        futures_util::future::join_all((0..8).map(|_| open(&server, CAROL, &busy_url))).await;
    assert!(
        pages
            .iter()
            .all(|p| p.as_ref().is_err_and(|(status, _)| *status == 200))
    );
    assert_eq!(site.fetches("busy.json"), 1, "one fetch for eight lookups");

    // A changed document is another version: Carol is asked again.
    site.put(
        "notes.json",
        document_for(&id, "Notes MCP client, renamed").to_string(),
        Some("no-store"),
    );
    let fresh = issuer_with_documents(&ca, "localhost").await;
    let first = open(&fresh, CAROL, &authorize_url(&fresh, &id, &[]))
        .await
        .unwrap_err();
    assert_eq!(first.0, 200);
    assert!(first.1.contains("renamed"));
    let before = site.fetches("notes.json");
    let _ = open(&fresh, CAROL, &authorize_url(&fresh, &id, &[])).await;
    assert_eq!(
        site.fetches("notes.json"),
        before + 1,
        "no-store: fetched again"
    );
}

/// The shown refusal of an authorization request: status, JSON error and description; it is
/// never a redirect.
async fn shown(server: &TestServer, client_id: &str, changes: &[(&str, &str)]) -> (u16, String) {
    let answer = open(server, CAROL, &authorize_url(server, client_id, changes))
        .await
        .expect_err("shown, never redirected");
    let error: Value = serde_json::from_str(&answer.1).unwrap();
    assert_eq!(error["error"], "invalid_request", "{error}");
    (
        answer.0,
        error["error_description"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn documents_that_cannot_be_trusted_are_refused_on_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let (site, addr, ca) = site(dir.path()).await;
    let base = format!("https://localhost:{}", addr.port());
    let good = format!("{base}/good.json");
    site.put("good.json", document_for(&good, "Good").to_string(), None);
    let mismatch = format!("{base}/mismatch.json");
    site.put(
        "mismatch.json",
        document_for(&format!("{base}/someone-else.json"), "Impostor").to_string(),
        None,
    );
    let secret = format!("{base}/secret.json");
    let mut confidential = document_for(&secret, "Secret");
    confidential["token_endpoint_auth_method"] = "client_secret_basic".into();
    site.put("secret.json", confidential.to_string(), None);
    let big = format!("{base}/big.json");
    let mut oversized = document_for(&big, "Big");
    oversized["padding"] = "x".repeat(70 * 1024).into();
    site.put("big.json", oversized.to_string(), None);
    let server = issuer_with_documents(&ca, "localhost,10.0.0.1").await;

    for (client_id, changes, expected) in [
        (
            "https://unlisted.example/client.json",
            &[][..],
            "host this server does not fetch",
        ),
        (&mismatch, &[][..], "client_id is not its URL"),
        (&secret, &[][..], "must be public"),
        (&big, &[][..], "larger than 65536 bytes"),
        (
            &format!("{base}/endless.json"),
            &[][..],
            "larger than 65536 bytes",
        ),
        (
            "https://10.0.0.1/client.json",
            &[][..],
            "non-public address (10.0.0.1)",
        ),
        (
            &format!("{base}/missing.json"),
            &[][..],
            "answered HTTP 404",
        ),
        (
            &good,
            &[("redirect_uri", "http://127.0.0.1:9/elsewhere")][..],
            "redirect_uri is not registered",
        ),
    ] {
        let (status, description) = shown(&server, client_id, changes).await;
        assert_eq!(status, 400, "{client_id}: {description}");
        assert!(
            description.contains(expected),
            "{client_id}: {description:?} should say {expected:?}"
        );
    }
    assert_eq!(site.fetches("big.json"), 1, "fetched, refused by its size");
    // Nothing is fetched for a URL whose host is not listed, or that is not public.
    assert_eq!(site.fetches("client.json"), 0);

    // Without client_metadata_hosts, a URL is just an unknown client, and discovery says so.
    let off = TestServer::start().await;
    let (status, description) = shown(&off, &good, &[]).await;
    assert_eq!((status, description.as_str()), (400, "unknown client_id"));
    let (_, discovery) = read(
        off.peer(CAROL)
            .get(off.url("/.well-known/openid-configuration"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(discovery["client_id_metadata_document_supported"], false);
    assert_eq!(
        site.fetches("good.json"),
        1,
        "only the issuer that lists the host fetched"
    );
}

/// Peers as usual, but Carol's tsidp grant lets her sign in for any resource (here: the
/// gateway's MCP route, whose address the test picks).
fn peers_with_carol_granted_any_resource() -> Value {
    let mut table = crate::support::peers_table();
    for whois in table.as_object_mut().unwrap().values_mut() {
        if whois["UserProfile"]["LoginName"] == "carol@example.com" {
            whois["CapMap"]["tailscale.com/cap/tsidp"][0]["resources"] = json!(["*"]);
        }
    }
    table
}

#[tokio::test]
async fn the_mcp_sdks_oauth_client_registers_by_metadata_document_and_calls_a_tool() {
    use crate::gateway_mcp::{GATEWAY_IP, McpServer};
    use crate::support::{GATEWAY_NODE, ip, run_sdk_script, sdk_python};
    use tailpass::gateway::mcp::McpSettings;
    use tailpass::gateway::{GatewaySettings, UpstreamSettings};

    let Some(python) = sdk_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (site, addr, ca) = site(dir.path()).await;
    let client_id = format!("https://localhost:{}/sdk-client.json", addr.port());
    let redirect = "http://127.0.0.1:9/sdk-callback";
    site.put(
        "sdk-client.json",
        json!({
            "client_id": client_id,
            "client_name": "SDK CIMD client",
            "redirect_uris": [redirect],
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        })
        .to_string(),
        Some("max-age=600"),
    );

    // The gateway's address first: it is its audience, which the policy names.
    let listen = std::net::TcpListener::bind((std::net::IpAddr::from(GATEWAY_IP), 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let public_url = format!("http://{listen}");
    let route = format!("{public_url}/mcp/docs");
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            r#"
[[rule]]
src = ["carol@example.com"]
audiences = ["{route}"]
claims = {{ mcp = {{ docs = ["search"] }} }}

[[rule]]
src = ["tag:gateway"]
audiences = ["{public_url}"]
allow_introspect = true
"#
        ),
    )
    .unwrap();
    let server_dir = tempfile::tempdir().unwrap();
    let table = server_dir.path().join("peers.json");
    std::fs::write(&table, peers_with_carol_granted_any_resource().to_string()).unwrap();
    let server = TestServer::in_dir(
        server_dir,
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--client-metadata-hosts",
            "localhost",
            "--client-metadata-ca-file",
            ca.to_str().unwrap(),
        ],
        &["--identity-file", table.to_str().unwrap()],
    )
    .await;
    let mcp = McpServer::start(&python, dir.path()).await;
    let key_file = dir.path().join("upstream.key");
    std::fs::write(&key_file, "sk-unused\n").unwrap();
    let identity = Arc::new(tailpass::identity::local::LocalTable::from_file(&table).unwrap());
    let settings = GatewaySettings {
        public_url: public_url.clone(),
        source_address: Some(ip(GATEWAY_NODE)),
        mcp: vec![McpSettings::new(
            "docs",
            format!("http://127.0.0.1:{}/mcp", mcp.port),
            "/mcp/docs",
        )],
        ..GatewaySettings::new(
            listen,
            server.url(""),
            public_url.clone(),
            // No model API is called here; the upstream is never reached.
            UpstreamSettings::new("http://127.0.0.1:9", key_file),
        )
    };
    let _gateway = tailpass::gateway::start(
        settings,
        identity,
        server.clock.clone() as Arc<dyn tailpass::clock::Clock>,
    )
    .await
    .unwrap();

    let (ok, report) = run_sdk_script(
        &python,
        "mcp_cimd.py",
        &[
            ("MCP_URL", route.clone()),
            ("MCP_CLIENT_ID", client_id.clone()),
            ("MCP_REDIRECT_URI", redirect.to_owned()),
            ("MCP_LOCAL_ADDRESS", ip(CAROL).to_string()),
        ],
    )
    .await;
    assert!(ok, "mcp_cimd.py failed: {report}");
    // The SDK used the document's URL as its client id, with PKCE S256 and the route as
    // its resource; Carol saw the document's name and host, approved, and the tool ran.
    assert_eq!(report["client_id"], client_id.as_str(), "{report}");
    let asked = &report["authorize_query"];
    assert_eq!(asked["client_id"], json!([client_id]), "{report}");
    assert_eq!(asked["code_challenge_method"], json!(["S256"]), "{report}");
    assert_eq!(asked["resource"], json!([route]), "{report}");
    let page = report["consent_page"]["text"].as_str().unwrap();
    assert_eq!(report["consent_page"]["status"], 200, "{page}");
    assert!(
        page.contains("SDK CIMD client") && page.contains("<code>localhost</code>"),
        "{page}"
    );
    assert_eq!(report["consent_status"], 303, "{report}");
    assert_eq!(
        report["tools"],
        json!(["search"]),
        "the listing is the token's: {report}"
    );
    assert_eq!(report["search_error"], false, "{report}");
    assert_eq!(mcp.tools_run(), ["search"]);
    let access = claims(report["access_token"].as_str().unwrap());
    assert_eq!(access["client_id"], client_id.as_str());
    assert!(
        access["aud"].as_array().unwrap().contains(&json!(route)),
        "{access}"
    );
    assert_eq!(access["mcp"], json!({"docs": ["search"]}), "{access}");
    assert_eq!(
        site.fetches("sdk-client.json"),
        1,
        "one fetch, cached for the rest"
    );
}
