//! Servers on PostgreSQL (`--store postgres://…`), end to end: an agent token minted,
//! introspected, its run revoked and refused; replicas on one database sharing their keys — one
//! JWKS, a rotation on one published by the others before any signs with it, a revoked key gone
//! from every JWKS, a consent form rendered by one accepted by another — and no start without a
//! key-encryption key. Each runs on a fresh database of the cluster `TAILPASS_TEST_POSTGRES`
//! names; skipped without it, required with `TAILPASS_REQUIRE_POSTGRES=1`.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use axum::http::Method;
use serde_json::json;

use crate::agents::{mint, server};
use crate::authorize::{authorize_url, claims, open};
use crate::killswitch::{introspect_as_gateway, revoke_run};
use crate::login::{REDIRECT, param};
use crate::sessions::{hidden_fields, submit_consent};
use crate::support::{ALICE, CI, GATEWAY, TestServer, admin, json as read, peer};

/// The cluster's URL, or `None` (said on stderr) without one.
pub fn cluster() -> Option<url::Url> {
    match std::env::var("TAILPASS_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url::Url::parse(&url).unwrap()),
        _ => {
            assert!(
                std::env::var("TAILPASS_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "TAILPASS_REQUIRE_POSTGRES=1 but TAILPASS_TEST_POSTGRES is not set"
            );
            let _ = writeln!(std::io::stderr(), "skipped: TAILPASS_TEST_POSTGRES not set");
            None
        }
    }
}

async fn admin_sql(cluster: &url::Url, sql: &str) {
    let (client, connection) = tokio_postgres::connect(cluster.as_str(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(connection);
    client.batch_execute(sql).await.unwrap();
    drop(client);
    let _ = task.await;
}

/// A fresh database of the cluster, for one test.
pub struct Database {
    cluster: url::Url,
    name: String,
    /// Its URL, for `--store`.
    pub url: url::Url,
}

impl Database {
    /// Creates a database no other test uses.
    pub async fn create(cluster: &url::Url) -> Database {
        let name = format!("it_{:016x}", rand_suffix());
        admin_sql(cluster, &format!("CREATE DATABASE {name}")).await;
        let mut url = cluster.clone();
        url.set_path(&name);
        Database {
            cluster: cluster.clone(),
            name,
            url,
        }
    }

    /// A fresh database of the cluster, or `None` (said) without a cluster.
    pub async fn fresh() -> Option<Database> {
        Some(Database::create(&cluster()?).await)
    }

    /// Drops it, whoever is still connected.
    pub async fn drop(self) {
        admin_sql(
            &self.cluster,
            &format!("DROP DATABASE {} WITH (FORCE)", self.name),
        )
        .await;
    }
}

#[tokio::test]
async fn a_server_on_postgres_mints_introspects_and_revokes() {
    let Some(cluster) = cluster() else {
        return;
    };
    let database = Database::create(&cluster).await;
    let kek = Kek::new();
    let kek_path = kek.path();
    let (server, _dir) = server(&[
        "--store",
        database.url.as_str(),
        "--key-encryption-key-file",
        &kek_path,
    ])
    .await;

    let (status, minted) = mint(&server, CI, &[("audience", GATEWAY), ("scope", "llm:chat")]).await;
    assert_eq!(status, 200, "{minted}");
    let token = minted["access_token"].as_str().unwrap().to_owned();
    assert_eq!(introspect_as_gateway(&server, &token).await["active"], true);
    let run = claims(&token)["run_id"].as_str().unwrap().to_owned();
    revoke_run(&server, &run).await;
    assert_eq!(
        introspect_as_gateway(&server, &token).await,
        json!({"active": false})
    );
    let (status, audit) = admin(&server, Method::GET, "/admin/api/audit?limit=50", None).await;
    assert_eq!(status, 200, "{audit}");
    assert!(audit.to_string().contains("agent_token"), "{audit}");

    drop(server.stop().await);
    database.drop().await;
}

/// A suffix no other test run picks at the same moment.
fn rand_suffix() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32)
}

/// A TCP proxy in front of the cluster that a test can cut (every connection dropped, new ones
/// refused) and restore, so that one server loses its database while other tests sharing the
/// cluster go on.
struct CutProxy {
    addr: std::net::SocketAddr,
    generation: tokio::sync::watch::Sender<u64>,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CutProxy {
    async fn start(target: std::net::SocketAddr) -> CutProxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (gen_tx, is_cut) = (generation.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if is_cut.load(Ordering::SeqCst) {
                    continue;
                }
                let mut changed = gen_tx.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = changed.changed() => {}
                    }
                });
            }
        });
        CutProxy {
            addr,
            generation,
            cut,
        }
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_server_cut_off_from_its_database_answers_503_keeps_discovery_and_recovers() {
    use crate::support::peer;
    let Some(cluster) = cluster() else {
        return;
    };
    let database = Database::create(&cluster).await;
    let target = std::net::SocketAddr::new(
        cluster.host_str().unwrap().parse().unwrap(),
        cluster.port().unwrap(),
    );
    let proxy = CutProxy::start(target).await;
    let mut proxied = database.url.clone();
    proxied.set_port(Some(proxy.addr.port())).unwrap();
    let kek = Kek::new();
    let kek_path = kek.path();
    let (server, _dir) = server(&[
        "--store",
        proxied.as_str(),
        "--store-pool-size",
        "2",
        "--key-encryption-key-file",
        &kek_path,
    ])
    .await;
    let ask = [("audience", GATEWAY)];
    assert_eq!(mint(&server, CI, &ask).await.0, 200);

    proxy.cut();
    let response = peer(CI)
        .post(server.url("/token"))
        .form(&[("grant_type", "client_credentials"), ("audience", GATEWAY)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/jwks.json",
        "/healthz",
    ] {
        let status = peer(CI)
            .get(server.url(path))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{path} keeps serving");
    }
    let ready = peer(CI).get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "/readyz reports the store");

    proxy.restore();
    let mut recovered = false;
    for _ in 0..100 {
        if mint(&server, CI, &ask).await.0 == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(recovered, "the server recovers without a restart");
    let ready = peer(CI).get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    drop(server.stop().await);
    database.drop().await;
}

/// A key-encryption key file (0600) replicas share.
struct Kek(tempfile::TempDir);

impl Kek {
    fn new() -> Kek {
        let dir = tempfile::tempdir().unwrap();
        let line = tailpass::keys::Kek::generate_line().unwrap();
        let path = dir.path().join("kek");
        std::fs::write(&path, format!("{}\n", *line)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Kek(dir)
    }

    fn path(&self) -> String {
        self.0.path().join("kek").to_str().unwrap().to_owned()
    }
}

/// `n` replicas on one database, sharing a key-encryption key.
async fn replicas(db: &Database, kek: &Kek, n: usize) -> Vec<TestServer> {
    let kek_path = kek.path();
    let mut servers = Vec::new();
    for _ in 0..n {
        servers.push(
            TestServer::with_args(&[
                "--store",
                db.url.as_str(),
                "--key-encryption-key-file",
                &kek_path,
            ])
            .await,
        );
    }
    servers
}

async fn jwks_kids(server: &TestServer) -> Vec<String> {
    let (status, jwks) = read(
        peer(ALICE)
            .get(server.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let mut kids: Vec<String> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    kids.sort();
    kids
}

/// Waits, boundedly, until `server`'s JWKS satisfies `want` (a reload is due within
/// `tailpass::keys::RELOAD_EVERY`, sooner on a notification).
async fn until_jwks(server: &TestServer, want: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let kids = jwks_kids(server).await;
        if want(&kids) {
            return kids;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the JWKS never got there: {kids:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn active_kid(server: &TestServer, alg: tailpass_verify::Alg) -> String {
    server.state().keys.active(alg).unwrap().kid().0.clone()
}

#[tokio::test]
async fn replicas_publish_one_jwks_and_a_rotation_is_published_before_it_signs() {
    let Some(db) = Database::fresh().await else {
        return;
    };
    let kek = Kek::new();
    let servers = replicas(&db, &kek, 3).await;
    let (a, b, c) = (&servers[0], &servers[1], &servers[2]);
    let first = jwks_kids(a).await;
    assert_eq!(jwks_kids(b).await, first);
    assert_eq!(jwks_kids(c).await, first);

    // Rotation on A, once its next key has been published long enough: what A signs with now,
    // B and C already published (it was the next key).
    a.clock.advance(tailpass::keys::PUBLISH_DELAY);
    let (status, rotated) = admin(a, Method::POST, "/admin/api/keys/rotate", Some(json!({}))).await;
    assert_eq!(status, 200, "{rotated}");
    let alg = tailpass_verify::Alg::ES256;
    let signing = active_kid(a, alg);
    for other in [b, c] {
        assert!(jwks_kids(other).await.contains(&signing));
    }
    let after = jwks_kids(a).await;
    let new_next: Vec<String> = after
        .iter()
        .filter(|k| !first.contains(k))
        .cloned()
        .collect();
    assert!(!new_next.is_empty(), "a new next key: {after:?}");
    // B and C publish the new next key within seconds…
    for other in [b, c] {
        until_jwks(other, |kids| new_next.iter().all(|k| kids.contains(k))).await;
    }
    // …and none of them may sign with it yet: a rotation anywhere is refused for now.
    for server in [a, b, c] {
        let (status, refused) = admin(
            server,
            Method::POST,
            "/admin/api/keys/rotate",
            Some(json!({})),
        )
        .await;
        assert_eq!(status, 400, "{refused}");
        assert!(refused.to_string().contains("rotate again in"), "{refused}");
        assert!(!new_next.contains(&active_kid(server, alg)));
    }
    for server in servers {
        drop(server.stop().await);
    }
    db.drop().await;
}

#[tokio::test]
async fn a_key_revoked_on_one_replica_leaves_every_jwks() {
    let Some(db) = Database::fresh().await else {
        return;
    };
    let kek = Kek::new();
    let servers = replicas(&db, &kek, 2).await;
    let (a, b) = (&servers[0], &servers[1]);
    let kid = active_kid(a, tailpass_verify::Alg::ES256);
    assert!(jwks_kids(b).await.contains(&kid));
    let (status, revoked) = admin(
        a,
        Method::POST,
        "/admin/api/keys/revoke",
        Some(json!({"kid": kid})),
    )
    .await;
    assert_eq!(status, 200, "{revoked}");
    assert!(!jwks_kids(a).await.contains(&kid));
    until_jwks(b, |kids| !kids.contains(&kid)).await;
    assert_ne!(active_kid(b, tailpass_verify::Alg::ES256), kid);
    for server in servers {
        drop(server.stop().await);
    }
    db.drop().await;
}

#[tokio::test]
async fn a_consent_form_rendered_by_one_replica_is_accepted_by_another() {
    let Some(db) = Database::fresh().await else {
        return;
    };
    let kek = Kek::new();
    let servers = replicas(&db, &kek, 2).await;
    let (a, b) = (&servers[0], &servers[1]);
    let (status, registered) = read(
        peer(ALICE)
            .post(a.url("/register"))
            .json(&json!({"redirect_uris": [REDIRECT], "client_name": "Wiki"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{registered}");
    let id = registered["client_id"].as_str().unwrap().to_owned();
    let page = open(a, ALICE, &authorize_url(a, &id, &[]))
        .await
        .unwrap_err();
    assert_eq!(page.0, 200, "a consent page from A");
    let fields = hidden_fields(&page.1);
    let approved = submit_consent(b, ALICE, &fields, "approve", &b.base).await;
    assert_eq!(approved.status(), 303, "B accepts A's form");
    let back = url::Url::parse(approved.headers()["location"].to_str().unwrap()).unwrap();
    assert!(param(&back, "code").is_some());
    for server in servers {
        drop(server.stop().await);
    }
    db.drop().await;
}

#[tokio::test]
async fn a_server_on_postgres_does_not_start_without_a_key_encryption_key() {
    let Some(db) = Database::fresh().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cli = <tailpass::cli::Cli as clap::Parser>::try_parse_from([
        "tailpass",
        "--dev",
        "--state-dir",
        dir.path().join("state").to_str().unwrap(),
        "--store",
        db.url.as_str(),
        "serve",
        "--listen",
        "127.0.0.1:0",
    ])
    .unwrap();
    let tailpass::cli::Command::Serve(args) = cli.command else {
        unreachable!()
    };
    let settings = tailpass::config::resolve(&cli.global, &args).unwrap();
    let refused =
        tailpass::server::start(settings, std::sync::Arc::new(tailpass::clock::SystemClock))
            .await
            .unwrap_err();
    assert!(
        refused.to_string().contains("--key-encryption-key-file"),
        "{refused}"
    );
    db.drop().await;
}
