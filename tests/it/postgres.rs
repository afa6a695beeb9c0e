//! One server on PostgreSQL (`--store postgres://…`), end to end: an agent token minted,
//! introspected, its run revoked and refused. Runs on a fresh database of the cluster
//! `TAILPASS_TEST_POSTGRES` names; skipped without it, required with
//! `TAILPASS_REQUIRE_POSTGRES=1`.

use std::io::Write as _;

use axum::http::Method;
use serde_json::json;

use crate::agents::{mint, server};
use crate::authorize::claims;
use crate::killswitch::{introspect_as_gateway, revoke_run};
use crate::support::{CI, GATEWAY, admin};

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
    let (server, _dir) = server(&["--store", database.url.as_str()]).await;

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
    let (server, _dir) = server(&["--store", proxied.as_str(), "--store-pool-size", "2"]).await;
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
