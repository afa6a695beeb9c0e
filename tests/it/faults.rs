//! Faults: the server killed with SIGKILL under load, its disk full, its identity source
//! stalled. Each asserts what a client sees meanwhile and that nothing answered is lost.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::io::AsyncBufReadExt as _;
use tokio::process::{Child, Command};

use crate::authorize::authorize_url;
use crate::login::register;
use crate::support::{ALICE, CI, TestServer, json, peer, peers_table};

const BIN: &str = env!("CARGO_BIN_EXE_tailpass");

/// Polls `done` every 20 ms until it holds, for at most `bound`; whether it did.
async fn eventually(bound: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + bound;
    while Instant::now() < until {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

// --- The identity source stalling ------------------------------------------------------------

/// Test double of tailscaled's LocalAPI (no tailscaled can run in CI): it answers WhoIs from
/// the test tailnet's table, or, while stalled, accepts each connection, reads its request and
/// never answers, holding it until the client hangs up. It counts the connections open at once.
struct StallingTailscaled {
    stalled: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl StallingTailscaled {
    fn start(path: &std::path::Path) -> StallingTailscaled {
        let table: Arc<HashMap<IpAddr, serde_json::Value>> = Arc::new(
            peers_table()
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.parse().unwrap(), v.clone()))
                .collect(),
        );
        let stalled = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let listener = UnixListener::bind(path).unwrap();
        let task = tokio::spawn({
            let (stalled, open, most) = (stalled.clone(), open.clone(), most.clone());
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let (stalled, open, table) = (stalled.clone(), open.clone(), table.clone());
                    tokio::spawn(async move {
                        serve_one(stream, &stalled, &table).await;
                        open.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            }
        });
        StallingTailscaled {
            stalled,
            open,
            most,
            task,
        }
    }

    fn stall(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::SeqCst);
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn most(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }

    fn reset_most(&self) {
        self.most.store(self.open(), Ordering::SeqCst);
    }
}

impl Drop for StallingTailscaled {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One LocalAPI connection: a `GET /localapi/v0/whois?addr=…` answered from `table`, or, while
/// stalled, held unanswered until the client closes it.
async fn serve_one(
    mut stream: UnixStream,
    stalled: &AtomicBool,
    table: &HashMap<IpAddr, serde_json::Value>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    if stalled.load(Ordering::SeqCst) {
        // Never answers; returns once the client gives up and hangs up.
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        return;
    }
    let head = String::from_utf8_lossy(&head);
    let target = head.split(' ').nth(1).unwrap_or_default();
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let addr = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "addr")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let ip = addr
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| addr.parse::<IpAddr>());
    let (status, body) = match ip.ok().and_then(|ip| table.get(&ip)) {
        Some(answer) => ("200 OK", answer.to_string()),
        None => ("404 Not Found", "no match for IP:port".to_owned()),
    };
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The agent policy of these tests: `tag:ci` may get tokens for one audience.
const AGENT_POLICY: &str = r#"
[[rule]]
src = ["tag:ci"]
audiences = ["https://api.example"]
"#;

/// A server whose identity source is the stalling double, with a 3 s deadline and at most
/// `lookups` WhoIs in flight.
async fn behind_a_stalling_tailscaled(lookups: usize) -> (TestServer, StallingTailscaled) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tailscaled.sock");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, AGENT_POLICY).unwrap();
    let double = StallingTailscaled::start(&socket);
    let (socket, policy, lookups) = (
        socket.to_str().unwrap().to_owned(),
        policy.to_str().unwrap().to_owned(),
        lookups.to_string(),
    );
    let server = TestServer::in_dir(
        dir,
        &[
            "--policy",
            &policy,
            "--identity-timeout",
            "3s",
            "--identity-max-lookups",
            &lookups,
        ],
        &["--identity", "tailscaled", "--tailscaled-socket", &socket],
    )
    .await;
    (server, double)
}

/// An agent token request from the CI runner: status, body, `Retry-After`, and how long the
/// answer took.
async fn agent_grant(server: &TestServer) -> (u16, serde_json::Value, Option<String>, Duration) {
    let started = Instant::now();
    let response = server
        .peer(CI)
        .post(server.url("/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("audience", "https://api.example"),
        ])
        .send()
        .await
        .unwrap();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = json(response).await;
    (status, body, retry_after, started.elapsed())
}

/// The identity deadline of [`behind_a_stalling_tailscaled`], and the most an answer may take
/// past it (a debug build on a busy machine).
const DEADLINE: Duration = Duration::from_secs(3);
const MARGIN: Duration = Duration::from_secs(2);

/// A tailscaled that accepts connections and never answers: the agent grant is refused with
/// 503 `temporarily_unavailable` and `Retry-After` within the identity deadline and a margin,
/// `/authorize` redirects `temporarily_unavailable` back to the client (RFC 6749 §4.1.2.1: a
/// 503 cannot travel through a redirect) as quickly, nothing is left holding a connection to
/// tailscaled afterwards, and once it answers again so does the server.
#[tokio::test]
async fn a_stalled_identity_source_is_503_within_its_deadline_and_the_server_recovers() {
    let (server, double) = behind_a_stalling_tailscaled(8).await;
    let (status, body, _, _) = agent_grant(&server).await;
    assert_eq!(status, 200, "answering at first: {body}");
    let (client_id, _) = register(
        &server,
        serde_json::json!({"name": "app", "redirect_uris": [crate::login::REDIRECT]}),
    )
    .await;

    double.stall(true);
    let (status, body, retry_after, took) = agent_grant(&server).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("temporarily_unavailable")),
        "{body}"
    );
    assert!(retry_after.is_some(), "a 503 says when to retry");
    assert!(
        took >= DEADLINE - Duration::from_millis(100) && took < DEADLINE + MARGIN,
        "refused at the deadline: {took:?}"
    );

    let started = Instant::now();
    let response = server
        .peer(crate::support::ALICE)
        .get(authorize_url(&server, &client_id, &[]))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(response.status(), 302);
    let back = url::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
    assert!(back.as_str().starts_with(crate::login::REDIRECT), "{back}");
    assert_eq!(
        crate::login::param(&back, "error").as_deref(),
        Some("temporarily_unavailable"),
        "{back}"
    );
    assert!(took < DEADLINE + MARGIN, "{took:?}");

    assert!(
        eventually(Duration::from_secs(10), || double.open() == 0).await,
        "a lookup given up on hangs up: {} connections to tailscaled still open",
        double.open()
    );

    double.stall(false);
    let (status, body, _, _) = agent_grant(&server).await;
    assert_eq!(status, 200, "recovered without a restart: {body}");
}

/// Many more requests at once than `--identity-max-lookups` behind a stalled tailscaled: no more
/// than the bound ever wait on it (the double never sees more connections at once), the rest
/// are refused at once — well before the deadline the waiting ones answer at — and every
/// answer is a JSON 503 with `Retry-After`.
#[tokio::test]
async fn lookups_past_the_bound_are_refused_at_once_not_queued() {
    const BOUND: usize = 4;
    const REQUESTS: usize = 40;
    let (server, double) = behind_a_stalling_tailscaled(BOUND).await;
    double.stall(true);
    double.reset_most();
    let server = Arc::new(server);
    let answers = futures_util::future::join_all((0..REQUESTS).map(|_| {
        let server = server.clone();
        async move { agent_grant(&server).await }
    }))
    .await;
    for (status, body, retry_after, _) in &answers {
        assert_eq!(
            (*status, body["error"].as_str()),
            (503, Some("temporarily_unavailable")),
            "{body}"
        );
        assert!(retry_after.is_some());
    }
    let at_once = answers
        .iter()
        .filter(|(_, _, _, took)| *took < DEADLINE - Duration::from_millis(500))
        .count();
    let waited = answers.len() - at_once;
    assert!(
        waited <= BOUND && at_once >= REQUESTS - BOUND,
        "{waited} waited for the deadline, {at_once} refused at once"
    );
    assert!(
        double.most() <= BOUND,
        "tailscaled saw {} lookups at once, more than the bound {BOUND}",
        double.most()
    );
    assert!(
        answers
            .iter()
            .all(|(_, _, _, took)| *took < DEADLINE + MARGIN),
        "every answer within the deadline and a margin"
    );

    double.stall(false);
    assert!(
        eventually(Duration::from_secs(10), || double.open() == 0).await,
        "the stalled lookups hung up"
    );
    let (status, body, _, _) = agent_grant(&server).await;
    assert_eq!(status, 200, "{body}");
}

// --- The real binary, killed and restarted ---------------------------------------------------

/// `tailpass serve` as a process of its own, and how to reach it.
struct Served {
    child: Child,
    at: Arc<Target>,
}

/// Where a served process answers: its issuer, and where its state is.
struct Target {
    issuer: String,
    /// The state directory as this test reaches it (through `/proc/PID/root` when the server
    /// runs in a mount namespace of its own).
    state: PathBuf,
}

impl std::ops::Deref for Served {
    type Target = Target;
    fn deref(&self) -> &Target {
        &self.at
    }
}

/// The files a served process needs beside its state: keys, the identity table, the policy.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        crate::support::copy_dir(
            &crate::support::keys_template(&[
                tailpass_verify::Alg::ES256,
                tailpass_verify::Alg::RS256,
            ]),
            &keys,
        );
        std::fs::write(dir.path().join("peers.json"), peers_table().to_string()).unwrap();
        std::fs::write(dir.path().join("policy.toml"), AGENT_POLICY).unwrap();
        Setup { dir }
    }

    /// The end of the served processes' log, for a failure's message.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.path("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `tailpass … serve` with its state in `state`, on an ephemeral port; `wrap` is a command
    /// line to run it under (its last word is followed by tailpass's own).
    async fn serve(&self, state: &Path, wrap: &[&str]) -> Served {
        let mut argv: Vec<String> = wrap.iter().map(|s| s.to_string()).collect();
        argv.push(BIN.into());
        for arg in [
            "--dev",
            "--state-dir",
            state.to_str().unwrap(),
            "--keys-dir",
            self.path("keys").to_str().unwrap(),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--identity-file",
            self.path("peers.json").to_str().unwrap(),
            "--policy",
            self.path("policy.toml").to_str().unwrap(),
            "--rate-limit",
            "1000000",
        ] {
            argv.push(arg.into());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("server.log"))
            .unwrap();
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .env("TAILPASS_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let issuer = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(issuer) = line.trim().strip_prefix("issuer") {
                    return issuer.trim().to_owned();
                }
            }
            panic!(
                "tailpass exited before printing its issuer: {}",
                std::fs::read_to_string(self.path("server.log")).unwrap_or_default()
            );
        })
        .await
        .expect("tailpass did not start in time");
        // Keep reading, so that the banner's pipe never fills.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let pid = child.id().unwrap();
        let state = if wrap.is_empty() {
            state.to_owned()
        } else {
            PathBuf::from(format!("/proc/{pid}/root")).join(state.strip_prefix("/").unwrap())
        };
        Served {
            child,
            at: Arc::new(Target { issuer, state }),
        }
    }
}

impl Target {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// The admin API over the admin socket.
    async fn admin(
        &self,
        method: axum::http::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let socket = self.state.join("admin.sock");
        let request = tailpass::unix_http::UnixRequest {
            method,
            path,
            host: "tailpass-admin",
            json: body.map(|b| b.to_string().into_bytes()),
            max_answer: 16 << 20,
            timeout: Duration::from_secs(30),
        };
        let (status, bytes) = tailpass::unix_http::send(&socket, request).await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    /// `PRAGMA integrity_check` of the database as its files stand, taken while no write is
    /// in flight: the database and its WAL are copied out (SQLite resolves the magic link of
    /// `/proc/PID/root` to this test's own root, so cannot open them in place), and the copy
    /// is opened, replaying the WAL as a restart would.
    fn integrity(&self) -> String {
        let copy = tempfile::tempdir().unwrap();
        for name in ["tailpass.db", "tailpass.db-wal"] {
            let from = self.state.join(name);
            if from.exists() {
                std::fs::copy(&from, copy.path().join(name)).unwrap();
            }
        }
        let conn = rusqlite::Connection::open(copy.path().join("tailpass.db")).unwrap();
        conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap()
    }
}

impl Served {
    /// SIGKILL (what `Child::kill` sends on Unix), and the wait for it.
    async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// What the load got a success answer for.
#[derive(Default)]
struct Answered {
    /// Dynamically registered clients: id and secret.
    clients: Vec<(String, String)>,
    /// Agent runs minted: run id and token.
    runs: Vec<(String, String)>,
    /// Runs revoked through the admin API, and their tokens.
    revoked: Vec<(String, String)>,
}

/// Registers a client as Alice (RFC 7591); its id and secret when answered 201.
async fn register_client(client: &reqwest::Client, served: &Target) -> Option<(String, String)> {
    let body = serde_json::json!({"redirect_uris": ["https://app.example/cb"]});
    let response = client
        .post(served.url("/register"))
        .json(&body)
        .send()
        .await
        .ok()?;
    if response.status() != 201 {
        return None;
    }
    let created: serde_json::Value = response.json().await.ok()?;
    Some((
        created["client_id"].as_str()?.to_owned(),
        created["client_secret"].as_str()?.to_owned(),
    ))
}

/// An agent token for the CI runner; its run id and token when answered 200.
async fn mint_run(client: &reqwest::Client, served: &Target) -> Option<(String, String)> {
    let response = client
        .post(served.url("/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("audience", "https://api.example"),
        ])
        .send()
        .await
        .ok()?;
    if response.status() != 200 {
        return None;
    }
    let answer: serde_json::Value = response.json().await.ok()?;
    let token = answer["access_token"].as_str()?.to_owned();
    let run = crate::authorize::claims(&token)["run_id"]
        .as_str()?
        .to_owned();
    Some((run, token))
}

/// How the registered client `id` fares at the token endpoint with `secret`: 400
/// `invalid_grant` for a bogus code means it authenticated; 401 `invalid_client` that it did not.
async fn authenticates(served: &Served, id: &str, secret: &str) -> (u16, serde_json::Value) {
    json(
        peer(ALICE)
            .post(served.url("/token"))
            .basic_auth(id, Some(secret))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", "no-such-code"),
                ("redirect_uri", "https://app.example/cb"),
                ("code_verifier", crate::authorize::VERIFIER),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// The CI runner presents `token` at `/userinfo`: the status.
async fn userinfo(served: &Served, token: &str) -> u16 {
    peer(CI)
        .get(served.url("/userinfo"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The kinds of the audit events of `run`.
async fn run_events(served: &Served, run: &str) -> Vec<String> {
    let (status, events) = served
        .admin(
            axum::http::Method::GET,
            &format!("/admin/api/audit?run={run}&limit=50"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{events}");
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect()
}

/// Drives registrations, agent grants and admin revocations from `workers` tasks each, until
/// `stop`; every write answered with success is in `answered`.
fn load(
    served: &Arc<Target>,
    workers: usize,
    stop: &Arc<AtomicBool>,
    answered: &Arc<Mutex<Answered>>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (to, until, into) = (served.clone(), stop.clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            let alice = peer(ALICE);
            while !until.load(Ordering::SeqCst) {
                match register_client(&alice, &to).await {
                    Some(c) => into.lock().unwrap().clients.push(c),
                    None => return,
                }
            }
        }));
        let (to, until, into) = (served.clone(), stop.clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            let ci = peer(CI);
            while !until.load(Ordering::SeqCst) {
                let Some((run, token)) = mint_run(&ci, &to).await else {
                    return;
                };
                into.lock().unwrap().runs.push((run.clone(), token.clone()));
                // Every third run is revoked by the operator right away.
                if run.as_bytes().last().is_some_and(|b| b % 3 == 0) {
                    let request = tailpass::unix_http::UnixRequest {
                        method: axum::http::Method::POST,
                        path: "/admin/api/revocations",
                        host: "tailpass-admin",
                        json: Some(
                            serde_json::json!({"kind": "run", "value": run})
                                .to_string()
                                .into_bytes(),
                        ),
                        max_answer: 1 << 20,
                        timeout: Duration::from_secs(30),
                    };
                    match tailpass::unix_http::send(&to.state.join("admin.sock"), request).await {
                        Ok((201, _)) => into.lock().unwrap().revoked.push((run, token)),
                        _ => return,
                    }
                }
            }
        }));
    }
    tasks
}

/// SIGKILL while registrations, agent grants (each a run and an audit event) and admin
/// revocations are in flight, then a restart on the same state directory: every write that was
/// answered is there — each registered client authenticates, each minted run's events are
/// listed, each revoked run's token is still refused — and the database passes
/// `PRAGMA integrity_check`.
#[tokio::test]
async fn every_answered_write_survives_sigkill_under_load() {
    let setup = Setup::new();
    let state = setup.path("state");
    let served = setup.serve(&state, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(Mutex::new(Answered::default()));
    let tasks = load(&served.at, 4, &stop, &answered);
    // Load until each kind has been answered a few times, then kill mid-flight.
    let loaded = eventually(Duration::from_secs(60), || {
        let a = answered.lock().unwrap();
        a.clients.len() >= 150 && a.runs.len() >= 150 && a.revoked.len() >= 30
    })
    .await;
    assert!(loaded, "the load got answers");
    let in_flight = tasks.iter().filter(|t| !t.is_finished()).count();
    assert!(in_flight > 0, "requests were in flight at the kill");
    served.kill().await;
    for task in tasks {
        task.await.unwrap();
    }
    let answered = std::mem::take(&mut *answered.lock().unwrap());

    let served = setup.serve(&state, &[]).await;
    assert_eq!(served.integrity(), "ok");
    for (id, secret) in &answered.clients {
        let (status, answer) = authenticates(&served, id, secret).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("invalid_grant")),
            "registered client {id} answered, then lost: {answer}"
        );
    }
    let revoked: std::collections::HashSet<&str> =
        answered.revoked.iter().map(|(r, _)| r.as_str()).collect();
    for (run, _) in &answered.runs {
        let kinds = run_events(&served, run).await;
        assert!(
            kinds.iter().any(|k| k == "agent_token"),
            "run {run} answered, its event lost: {kinds:?}"
        );
        if revoked.contains(run.as_str()) {
            assert!(kinds.iter().any(|k| k == "revocation"), "{run}: {kinds:?}");
        }
    }
    for (run, token) in &answered.revoked {
        assert_eq!(
            userinfo(&served, token).await,
            401,
            "revoked run {run} accepted"
        );
    }
    eprintln!(
        "answered before SIGKILL and found after restart: {} clients, {} runs, {} revocations",
        answered.clients.len(),
        answered.runs.len(),
        answered.revoked.len()
    );
    served.kill().await;
}

// --- A full disk ------------------------------------------------------------------------------

/// Whether this process may mount a tmpfs in a mount namespace of its own (root, or
/// `CAP_SYS_ADMIN`). Without it the full-disk test is skipped, saying why, unless
/// `TAILPASS_REQUIRE_MOUNT=1` (set by `.ci/run`), which makes it fail instead.
fn can_mount() -> bool {
    let probe = tempfile::tempdir().unwrap();
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs '{}'",
        probe.path().display()
    );
    let mounted = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .stderr(std::process::Stdio::piped())
        .output();
    let reason = match mounted {
        Ok(out) if out.status.success() => return true,
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        Err(e) => format!("unshare: {e}"),
    };
    assert!(
        std::env::var("TAILPASS_REQUIRE_MOUNT").as_deref() != Ok("1"),
        "TAILPASS_REQUIRE_MOUNT=1 but a tmpfs cannot be mounted: {reason}"
    );
    eprintln!("skipped: cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {reason}");
    false
}

/// Fills the file system holding `dir` with `dir/filler` until it is out of space.
fn fill(dir: &Path) -> u64 {
    use std::io::Write as _;
    let mut file = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0xa5u8; 16 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
    let _ = file.sync_all();
    written
}

/// The server's state directory on a 4 MiB tmpfs (in a mount namespace of the server's own, so
/// nothing outlives it), filled up: writes are refused 503 `temporarily_unavailable` with
/// `Retry-After` — never 500 — while discovery, JWKS, introspection and a resource server's
/// verification of a token still answer; once the filler is deleted the same process takes
/// writes again, everything answered before is there, and the database is intact.
#[tokio::test]
async fn a_full_disk_is_503_with_retry_after_and_writes_resume_when_space_returns() {
    if !can_mount() {
        return;
    }
    let setup = Setup::new();
    let state = setup.path("state");
    std::fs::create_dir(&state).unwrap();
    let script = format!(
        "mount -t tmpfs -o size=4m,mode=0700 tmpfs '{}' && exec \"$@\"",
        state.display()
    );
    let served = setup
        .serve(&state, &["unshare", "-m", "sh", "-c", &script, "sh"])
        .await;
    let alice = peer(ALICE);
    let ci = peer(CI);
    let mut clients = Vec::new();
    let mut runs = Vec::new();
    for _ in 0..5 {
        clients.push(register_client(&alice, &served).await.unwrap());
        runs.push(mint_run(&ci, &served).await.unwrap());
    }

    let filled = fill(&served.state);
    assert!(filled > 0);
    // Writes go on while the WAL has room it already took; then each is refused as
    // unavailable, and none is a 500.
    let mut refusal = None;
    for i in 0..5_000 {
        let body = serde_json::json!({"redirect_uris": ["https://app.example/cb"]});
        let response = alice
            .post(served.url("/register"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").cloned();
        let (_, answer) = json(response).await;
        match status {
            201 => clients.push((
                answer["client_id"].as_str().unwrap().to_owned(),
                answer["client_secret"].as_str().unwrap().to_owned(),
            )),
            503 => {
                refusal = Some((answer, retry_after, i));
                break;
            }
            other => panic!(
                "a write on a full disk answered {other}: {answer}\n{}",
                setup.log_tail()
            ),
        }
    }
    let (answer, retry_after, after) = refusal.expect("a full disk refuses writes");
    assert_eq!(answer["error"], "temporarily_unavailable", "{answer}");
    assert!(retry_after.is_some(), "503 with Retry-After");
    // An agent grant's audit event cannot be committed either: no token is handed out.
    let (status, answer, retry_after, _) = {
        let started = Instant::now();
        let response = ci
            .post(served.url("/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("audience", "https://api.example"),
            ])
            .send()
            .await
            .unwrap();
        let retry_after = response.headers().get("retry-after").cloned();
        let (status, answer) = json(response).await;
        (status, answer, retry_after, started.elapsed())
    };
    assert_eq!(
        (status, answer["error"].as_str()),
        (503, Some("temporarily_unavailable")),
        "{answer}"
    );
    assert!(retry_after.is_some());

    // Readiness says the store is failing; reads answer meanwhile.
    let (status, ready) = json(alice.get(served.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(
        (status, ready["store"].as_str()),
        (503, Some("writes failing")),
        "{ready}"
    );
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/jwks.json",
    ] {
        let response = alice.get(served.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let (id, secret) = &clients[0];
    let (_, token) = &runs[0];
    let introspected = alice
        .post(served.url("/introspect"))
        .basic_auth(id, Some(secret))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(introspected.status(), 200);
    let verified = verify(&served, token).await;
    assert!(
        verified.0,
        "a resource server still verifies: {}",
        verified.1
    );

    // Space returns: the same process writes again.
    std::fs::remove_file(served.state.join("filler")).unwrap();
    let mut resumed = None;
    for _ in 0..100 {
        if let Some(client) = register_client(&alice, &served).await {
            resumed = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    clients.push(resumed.expect("writes resume once space returns"));
    runs.push(mint_run(&ci, &served).await.expect("agent grants too"));
    for (id, secret) in &clients {
        let (status, answer) = authenticates(&served, id, secret).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("invalid_grant")),
            "{id}: {answer}"
        );
    }
    for (run, _) in &runs {
        let kinds = run_events(&served, run).await;
        assert!(kinds.iter().any(|k| k == "agent_token"), "{run}: {kinds:?}");
    }
    let (status, ready) = json(alice.get(served.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(status, 200, "ready again: {ready}");
    assert_eq!(served.integrity(), "ok");
    eprintln!(
        "filled {filled} bytes; {after} registrations answered before the first 503; {} clients and {} runs kept",
        clients.len(),
        runs.len()
    );
    served.kill().await;
}

/// `tailpass verify -` against the served issuer, as a resource server checks `token`:
/// whether it verified, and its standard error.
async fn verify(served: &Target, token: &str) -> (bool, String) {
    let mut child = Command::new(BIN)
        .args(["verify", "-", "--issuer", &served.issuer])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(token.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
