//! Three replicas on one PostgreSQL database behave as one issuer. Each is an in-process
//! server on its own loopback address (127.0.1.1–3) and the same port, all with the issuer
//! `http://idp.test:PORT`, which clients resolve to the replica they mean to reach — as a
//! Tailscale Service name reaches one of its hosts. They share the store and the key-encryption
//! key. Skipped without `TAILPASS_TEST_POSTGRES`, required with `TAILPASS_REQUIRE_POSTGRES=1`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use axum::http::Method;
use serde_json::{Value, json};

use crate::agents::{POLICY, mint};
use crate::authorize::{VERIFIER, claims, code, redeem, token};
use crate::killswitch::{SseReader, introspect_as_gateway, revoke_run};
use crate::login::register;
use crate::postgres::{Database, cluster};
use crate::support::{
    ALICE, CI, GATEWAY, GATEWAY_NODE, TestServer, admin, json as read, peers_table,
};

/// The issuer's host name, which clients resolve to one replica or another.
const NAME: &str = "idp.test";

/// Replicas sharing one database, a key-encryption key and a policy.
pub struct Replicas {
    pub servers: Vec<TestServer>,
    _shared: tempfile::TempDir,
    pub database: Database,
}

impl Replicas {
    /// `n` replicas on a fresh database of the test cluster, or `None` without one.
    pub async fn start(n: u8) -> Option<Replicas> {
        let database = Database::create(&cluster()?).await;
        let shared = tempfile::tempdir().unwrap();
        let kek = shared.path().join("kek");
        write_private(&kek, &tailpass::keys::kek::Kek::generate_line().unwrap());
        let policy = shared.path().join("policy.toml");
        std::fs::write(&policy, POLICY).unwrap();
        let port = free_port();
        let issuer = format!("http://{NAME}:{port}");
        let mut servers: Vec<TestServer> = Vec::new();
        for i in 1..=n {
            let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 1, i)), port);
            let dir = tempfile::tempdir().unwrap();
            // One set of keys: the first replica's, sealed under the shared key.
            if let Some(first) = servers.first() {
                std::os::unix::fs::symlink(first.keys_dir(), dir.path().join("keys")).unwrap();
            }
            let table = dir.path().join("peers.json");
            std::fs::write(&table, peers_table().to_string()).unwrap();
            let listen = addr.to_string();
            let args = [
                "--listen",
                listen.as_str(),
                "--issuer",
                issuer.as_str(),
                "--store",
                database.url.as_str(),
                "--key-encryption-key-file",
                kek.to_str().unwrap(),
                "--policy",
                policy.to_str().unwrap(),
            ];
            let mut server =
                TestServer::in_dir(dir, &args, &["--identity-file", table.to_str().unwrap()]).await;
            server.resolve = Some((NAME.to_owned(), addr));
            servers.push(server);
        }
        Some(Replicas {
            servers,
            _shared: shared,
            database,
        })
    }

    /// Stops every replica and drops the database.
    pub async fn stop(self) {
        for server in self.servers {
            drop(server.stop().await);
        }
        self.database.drop().await;
    }
}

fn write_private(path: &std::path::Path, text: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// A port free on 127.0.1.1, which the other replica addresses are then very likely to have
/// free too.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.1.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `check` holds, for at most `limit`; how long it took, or `None`.
async fn within<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The revocation feed's events since `since`, as a poller reads them from `server`.
async fn feed_since(server: &TestServer, since: u64) -> Vec<Value> {
    let (status, body) = read(
        server
            .peer(GATEWAY_NODE)
            .get(server.url(&format!("/revocations?since={since}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_token_minted_on_one_replica_is_introspected_on_another_and_revoked_on_a_third() {
    let Some(replicas) = Replicas::start(3).await else {
        return;
    };
    let [a, b, c] = &replicas.servers[..] else {
        unreachable!()
    };
    let (status, minted) = mint(a, CI, &[("audience", GATEWAY), ("scope", "llm:chat")]).await;
    assert_eq!(status, 200, "{minted}");
    let token = minted["access_token"].as_str().unwrap().to_owned();
    assert_eq!(introspect_as_gateway(b, &token).await["active"], true);
    let run = claims(&token)["run_id"].as_str().unwrap().to_owned();
    let head = feed_since(a, 0).await.len() as u64;
    revoke_run(c, &run).await;
    // A's feed reports it, and A and B refuse the token, within a second.
    let reported = within(Duration::from_secs(1), || async {
        feed_since(a, head)
            .await
            .iter()
            .any(|e| e["kind"] == "run" && e["value"] == run.as_str())
    })
    .await;
    assert!(reported.is_some(), "A's feed never reported C's revocation");
    for replica in [a, b] {
        let refused = within(Duration::from_secs(1), || async {
            introspect_as_gateway(replica, &token).await == json!({"active": false})
        })
        .await;
        assert!(
            refused.is_some(),
            "a replica still accepts the revoked token"
        );
    }
    replicas.stop().await;
}

/// Two replicas and a confidential client registered on the first.
async fn two_with_a_client() -> Option<(Replicas, String, Option<String>)> {
    let replicas = Replicas::start(2).await?;
    let body = json!({"name": "app", "redirect_uris": [crate::login::REDIRECT]});
    let (id, secret) = register(&replicas.servers[0], body).await;
    Some((replicas, id, secret))
}

#[tokio::test]
async fn two_replicas_redeeming_one_code_at_once_have_exactly_one_winner_whose_session_is_revoked()
{
    let Some((replicas, id, secret)) = two_with_a_client().await else {
        return;
    };
    let [a, b] = &replicas.servers[..] else {
        unreachable!()
    };
    let client = (id.as_str(), secret.as_deref());
    for round in 0..100 {
        let c = code(a, ALICE, &id, &[]).await;
        let (one, two) = tokio::join!(
            redeem(a, client, &c, VERIFIER),
            redeem(b, client, &c, VERIFIER)
        );
        let wins = [&one, &two].iter().filter(|(s, _)| *s == 200).count();
        assert_eq!(wins, 1, "round {round}: {one:?} {two:?}");
        let (won, lost) = if one.0 == 200 {
            (&one, &two)
        } else {
            (&two, &one)
        };
        assert_eq!(lost.1["error"], "invalid_grant", "round {round}");
        // The replay revoked what the code issued: the winner's session is dead.
        let refresh = won.1["refresh_token"].as_str().unwrap();
        let form = [("grant_type", "refresh_token"), ("refresh_token", refresh)];
        let (status, body) = token(b, client, &form).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant")),
            "round {round}"
        );
    }
    replicas.stop().await;
}

#[tokio::test]
async fn two_replicas_refreshing_one_token_at_once_have_exactly_one_winner_and_end_the_family() {
    let Some((replicas, id, secret)) = two_with_a_client().await else {
        return;
    };
    let [a, b] = &replicas.servers[..] else {
        unreachable!()
    };
    let client = (id.as_str(), secret.as_deref());
    for round in 0..100 {
        let c = code(a, ALICE, &id, &[]).await;
        let (status, tokens) = redeem(a, client, &c, VERIFIER).await;
        assert_eq!(status, 200, "{tokens}");
        let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
        ];
        let (one, two) = tokio::join!(token(a, client, &form), token(b, client, &form));
        let winners: Vec<&(u16, Value)> = [&one, &two]
            .into_iter()
            .filter(|(s, _)| *s == 200)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {one:?} {two:?}");
        let loser = if one.0 == 200 { &two } else { &one };
        assert_eq!(loser.1["error"], "invalid_grant", "round {round}");
        // The reuse revoked the whole family: the winner's new token is dead too.
        let rotated = winners[0].1["refresh_token"].as_str().unwrap();
        let again = [("grant_type", "refresh_token"), ("refresh_token", rotated)];
        assert_eq!(token(b, client, &again).await.0, 400, "round {round}");
    }
    replicas.stop().await;
}

#[tokio::test]
async fn every_replica_sees_a_client_registered_on_another() {
    let Some(replicas) = Replicas::start(2).await else {
        return;
    };
    let [a, b] = &replicas.servers[..] else {
        unreachable!()
    };
    let (id, _) = register(
        a,
        json!({"name": "app", "redirect_uris": [crate::login::REDIRECT]}),
    )
    .await;
    let (status, listed) = admin(b, Method::GET, &format!("/admin/api/clients/{id}"), None).await;
    assert_eq!(status, 200, "{listed}");
    replicas.stop().await;
}

/// A `tailpass serve` process, a replica of the others on the same database.
struct Process {
    child: tokio::process::Child,
    client: reqwest::Client,
    base: String,
}

impl Process {
    async fn spawn(
        dir: &std::path::Path,
        keys: &std::path::Path,
        shared: &std::path::Path,
        database: &url::Url,
        addr: SocketAddr,
    ) -> Process {
        let issuer = format!("http://{NAME}:{}", addr.port());
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tailpass"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--keys-dir")
            .arg(keys)
            .arg("--key-encryption-key-file")
            .arg(shared.join("kek"))
            .arg("--store")
            .arg(database.as_str())
            .args(["serve", "--listen", &addr.to_string(), "--issuer", &issuer])
            .args(["--identity", "local", "--identity-file"])
            .arg(shared.join("peers.json"))
            .arg("--policy")
            .arg(shared.join("policy.toml"))
            .args(["--rate-limit", "1000000"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let client = reqwest::Client::builder()
            .resolve(NAME, addr)
            .local_address(crate::support::ip(CI))
            .build()
            .unwrap();
        let process = Process {
            child,
            client,
            base: issuer,
        };
        let up = within(Duration::from_secs(30), || async {
            process
                .client
                .get(format!("{}/healthz", process.base))
                .send()
                .await
                .is_ok()
        })
        .await;
        assert!(
            up.is_some(),
            "replica at {addr} did not start: {:?}",
            dir.join("log")
        );
        process
    }

    /// Mints an agent token; its jti when answered.
    async fn mint(&self) -> Option<String> {
        let response = self
            .client
            .post(format!("{}/token", self.base))
            .form(&[("grant_type", "client_credentials"), ("audience", GATEWAY)])
            .send()
            .await
            .ok()?;
        if response.status() != 200 {
            return None;
        }
        let body: Value = response.json().await.ok()?;
        let token = body["access_token"].as_str()?;
        claims(token)["jti"].as_str().map(str::to_owned)
    }
}

#[tokio::test]
async fn a_replica_killed_under_load_loses_nothing_it_answered() {
    let Some(cluster) = cluster() else {
        return;
    };
    let database = Database::create(&cluster).await;
    let shared = tempfile::tempdir().unwrap();
    write_private(
        &shared.path().join("kek"),
        &tailpass::keys::kek::Kek::generate_line().unwrap(),
    );
    std::fs::write(shared.path().join("peers.json"), peers_table().to_string()).unwrap();
    std::fs::write(
        shared.path().join("policy.toml"),
        format!("[[rule]]\nsrc = [\"tag:ci\"]\naudiences = [\"{GATEWAY}\"]\n"),
    )
    .unwrap();
    let keys = shared.path().join("keys");
    let port = free_port();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let addr = |i| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 1, i)), port);
    let mut first = Process::spawn(one.path(), &keys, shared.path(), &database.url, addr(1)).await;
    let second = Process::spawn(two.path(), &keys, shared.path(), &database.url, addr(2)).await;

    // Eight callers mint on the first replica until it dies; each keeps what was answered.
    let first_ref = &first;
    let answered = std::sync::Mutex::new(Vec::new());
    let load = async {
        let callers = (0..8).map(|_| async {
            let mut misses = 0;
            while misses < 3 {
                match first_ref.mint().await {
                    Some(jti) => answered.lock().unwrap().push(jti),
                    None => misses += 1,
                }
            }
        });
        futures_util::future::join_all(callers).await;
    };
    let kill = async {
        let enough = within(Duration::from_secs(30), || async {
            answered.lock().unwrap().len() >= 400
        })
        .await;
        assert!(enough.is_some(), "the load did not get going");
        // SIGKILL: no shutdown, no flush.
        let pid = first_ref.child.id().unwrap().to_string();
        let killed = tokio::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .await
            .unwrap();
        assert!(killed.success());
    };
    tokio::join!(load, kill);
    let _ = first.child.wait().await;
    let answered = answered.into_inner().unwrap();

    // Every token that was answered has its committed audit event.
    let (client, connection) =
        tokio_postgres::connect(database.url.as_str(), tokio_postgres::NoTls)
            .await
            .unwrap();
    let task = tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT data::jsonb->>'jti' FROM audit WHERE event = 'agent_token' AND outcome = 'success'",
            &[],
        )
        .await
        .unwrap();
    let audited: std::collections::HashSet<String> = rows
        .iter()
        .filter_map(|r| r.get::<_, Option<String>>(0))
        .collect();
    let lost: Vec<&String> = answered.iter().filter(|j| !audited.contains(*j)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} answered tokens unaudited",
        lost.len(),
        answered.len()
    );
    drop(client);
    let _ = task.await;
    // The other replica serves on.
    assert!(second.mint().await.is_some());
    drop(second);
    database.drop().await;
}

#[tokio::test]
async fn a_gateway_resumes_the_feed_on_another_replica_by_its_last_event_id() {
    let Some(replicas) = Replicas::start(2).await else {
        return;
    };
    let [a, b] = &replicas.servers[..] else {
        unreachable!()
    };
    revoke_run(a, "run-one").await;
    let seen = feed_since(a, 0).await;
    let last = seen
        .iter()
        .find(|e| e["value"] == "run-one")
        .and_then(|e| e["seq"].as_u64())
        .unwrap();
    revoke_run(a, "run-two").await;
    let known = within(Duration::from_secs(1), || async {
        feed_since(b, last)
            .await
            .iter()
            .any(|e| e["value"] == "run-two")
    })
    .await;
    assert!(known.is_some(), "B never read back A's revocation");
    // A gateway that had read A's feed up to `last` resumes on B, by the same numbers.
    let mut resumed = SseReader::open(b, GATEWAY_NODE, Some(last)).await;
    let missed = resumed.next().await;
    assert_eq!(
        (missed.event.as_str(), missed.data["value"].as_str()),
        ("revocation", Some("run-two"))
    );
    assert!(missed.id.is_some_and(|id| id > last), "{missed:?}");
    // An open stream would hold the server's graceful shutdown.
    drop(resumed);
    replicas.stop().await;
}

#[tokio::test]
async fn a_dpop_proof_used_at_one_replica_is_refused_at_another() {
    let Some(replicas) = Replicas::start(2).await else {
        return;
    };
    let [a, b] = &replicas.servers[..] else {
        unreachable!()
    };
    let key = tailpass::dpop::ProofKey::generate().unwrap();
    // One issuer, so one token endpoint URL for every replica.
    let proof = key.proof("POST", &a.url("/token"), None, None).unwrap();
    let mint_at = |server: &TestServer| {
        let request = server
            .peer(CI)
            .post(server.url("/token"))
            .header("DPoP", proof.clone())
            .form(&[("grant_type", "client_credentials"), ("audience", GATEWAY)]);
        async move { read(request.send().await.unwrap()).await }
    };
    let (status, body) = mint_at(a).await;
    assert_eq!(
        (status, body["token_type"].as_str()),
        (200, Some("DPoP")),
        "{body}"
    );
    let (status, body) = mint_at(b).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_dpop_proof")),
        "{body}"
    );
    replicas.stop().await;
}
