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

use crate::authorize::authorize_url;
use crate::login::register;
use crate::support::{CI, TestServer, json, peers_table};

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
