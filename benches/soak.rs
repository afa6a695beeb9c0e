//! Soak: drives a running `tailpass serve` with a steady mixed load for many minutes and
//! watches the server process for growth. `bench/soak.sh` starts the server (a local identity
//! table: a user and a tagged node on loopback addresses) pinned to one core and this program
//! pinned to another.
//!
//! The mix, at `--rate` HTTP requests per second in all: agent grants (`client_credentials`
//! from the tagged node), code flows (authorize → token with PKCE → userinfo) of a confidential
//! client, refresh grants on the refresh tokens those give, RFC 8693 exchanges of agent tokens
//! for narrower children, and revocations — RFC 7009 `/revoke` of access and refresh tokens
//! and kill-switch revocations of agent runs through the admin API (`tailpass revoke --run`'s
//! call), each checked by presenting the revoked token again. Beside it, `--subscribers`
//! revocation-feed readers connect (SSE), read for a few seconds, and leave, over and over.
//! Every answer is checked (status and shape); an error is counted, and printed once per kind.
//!
//! Every `--sample-every` seconds it appends a CSV row: elapsed seconds, the server's RSS (KiB)
//! and open file descriptors (`/proc`), the SQLite files' size in the state directory, p50 and
//! p99 of the window's requests, the window's requests and errors, and the feed subscribers
//! connected, then the RSS's parts (anonymous, file-backed, shared memory, KiB) and the
//! server's threads. At the end it prints a summary and the verdict of docs/benchmarks.md
//! "Soak": RSS and fds at the end within 10 % of their minute-2 values, and no errors; it exits
//! 1 on FAIL.
//!
//! ```text
//! soak --issuer URL --client-id ID --client-secret=S --redirect-uri U --server-pid PID
//!      --state-dir DIR --csv FILE [--minutes 10] [--rate 1500]
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::Parser;
use futures_util::StreamExt as _;
use serde_json::Value;

#[derive(Parser)]
struct Args {
    /// The issuer's URL (the server listens there).
    #[arg(long)]
    issuer: String,
    /// The confidential client of the code flows.
    #[arg(long)]
    client_id: String,
    /// Its secret (pass as `--client-secret=VALUE`: a secret may begin with `-`).
    #[arg(long)]
    client_secret: String,
    /// Its registered redirect URI.
    #[arg(long)]
    redirect_uri: String,
    /// The agents' audience, which the server's policy grants the tagged node.
    #[arg(long, default_value = "https://gateway.tail1234.ts.net")]
    audience: String,
    /// The agents' scope.
    #[arg(long, default_value = "llm:chat")]
    scope: String,
    /// The person's address (a user with an `allow_admin_ui` grant in the identity table).
    #[arg(long, default_value = "127.0.0.2")]
    user_from: IpAddr,
    /// The agents' address (a tagged node in the identity table).
    #[arg(long, default_value = "127.0.0.3")]
    agent_from: IpAddr,
    /// The server's process id, whose RSS and fds are sampled.
    #[arg(long)]
    server_pid: u32,
    /// The server's state directory, whose SQLite files are measured.
    #[arg(long)]
    state_dir: PathBuf,
    /// Where the CSV goes.
    #[arg(long)]
    csv: PathBuf,
    /// How long to run.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// HTTP requests per second offered, all operations together.
    #[arg(long, default_value_t = 1500)]
    rate: u64,
    /// Concurrent request workers.
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// Revocation-feed subscribers connecting and leaving.
    #[arg(long, default_value_t = 16)]
    subscribers: usize,
    /// One operation in this many is a revocation (they stay in the index and the feed for
    /// the tokens' lifetime, so their rate sets how much the server must hold).
    #[arg(long, default_value_t = 100)]
    revoke_every: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10)]
    sample_every: u64,
}

const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Tokens kept for later operations, per kind: the oldest are forgotten beyond this.
const POOL: usize = 512;
/// Latencies kept per window, beyond which a window's percentiles are of its first ones.
const WINDOW_CAP: usize = 1 << 20;
/// How long one request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a feed subscriber waits for its snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);

/// One operation of the mix.
#[derive(Debug, Clone, Copy)]
enum Op {
    Agent,
    CodeFlow,
    Refresh,
    Exchange,
    RevokeAccess,
    RevokeRefresh,
    RevokeRun,
}

impl Op {
    /// The mix: a fixed cycle of twenty, with every `revoke_every`-th operation a
    /// revocation, the three kinds in turn.
    fn nth(n: u64, revoke_every: u64) -> Op {
        if revoke_every > 0 && n % revoke_every == revoke_every - 1 {
            return match (n / revoke_every) % 3 {
                0 => Op::RevokeAccess,
                1 => Op::RevokeRefresh,
                _ => Op::RevokeRun,
            };
        }
        match n % 20 {
            0..=7 => Op::Agent,
            8..=10 => Op::CodeFlow,
            11..=15 => Op::Refresh,
            _ => Op::Exchange,
        }
    }

    /// HTTP requests it makes, for pacing.
    fn cost(self) -> u32 {
        match self {
            Op::Agent | Op::Refresh | Op::Exchange => 1,
            Op::CodeFlow => 3,
            Op::RevokeAccess | Op::RevokeRefresh | Op::RevokeRun => 2,
        }
    }
}

/// Counters shared by the workers, the subscribers and the sampler.
#[derive(Default)]
struct Stats {
    /// This window's request latencies, in microseconds.
    window: Mutex<Vec<u32>>,
    window_errors: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    /// Errors by kind; the first of each kind is printed.
    kinds: Mutex<BTreeMap<String, u64>>,
    subscribers: AtomicUsize,
    feed_connections: AtomicU64,
    feed_revocations: AtomicU64,
    /// Operations started later than their slot by more than a second (the server was behind).
    late: AtomicU64,
}

impl Stats {
    fn ok(&self, started: Instant) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        let mut window = self.window.lock().unwrap();
        if window.len() < WINDOW_CAP {
            window.push(us);
        }
    }

    fn error(&self, kind: &str, detail: &str) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.window_errors.fetch_add(1, Ordering::Relaxed);
        let mut kinds = self.kinds.lock().unwrap();
        let count = kinds.entry(kind.to_owned()).or_insert(0);
        *count += 1;
        if *count == 1 {
            let detail: String = detail.chars().take(300).collect();
            eprintln!("error [{kind}]: {detail}");
        }
    }
}

/// A bounded pool of tokens, oldest first.
#[derive(Default)]
struct Pool(Mutex<VecDeque<String>>);

impl Pool {
    fn put(&self, token: String) {
        let mut q = self.0.lock().unwrap();
        if q.len() >= POOL {
            q.pop_front();
        }
        q.push_back(token);
    }

    fn take_oldest(&self) -> Option<String> {
        self.0.lock().unwrap().pop_front()
    }

    fn newest(&self) -> Option<String> {
        self.0.lock().unwrap().back().cloned()
    }
}

/// One worker's connections, as each peer: used one request at a time, each keeps one
/// connection open for the whole run, so the server's open sockets stay level.
struct Peers {
    /// The person's browser, and the admin API's caller (the same tailnet user).
    user: reqwest::Client,
    /// The relying party, which is no tailnet identity.
    rp: reqwest::Client,
    /// The tagged node.
    agent: reqwest::Client,
}

impl Peers {
    fn new(args: &Args) -> Peers {
        Peers {
            user: client(Some(args.user_from)),
            rp: client(None),
            agent: client(Some(args.agent_from)),
        }
    }
}

struct Soak {
    stats: Stats,
    issuer: String,
    origin: String,
    authorize: String,
    args: Args,
    agent_tokens: Pool,
    access_tokens: Pool,
    refresh_tokens: Pool,
}

/// What a failed step says: its kind (for counting) and the detail printed once.
struct Failure {
    kind: String,
    detail: String,
}

fn fail(kind: impl Into<String>, detail: impl std::fmt::Display) -> Failure {
    Failure {
        kind: kind.into(),
        detail: detail.to_string(),
    }
}

fn client(from: Option<IpAddr>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(1);
    if let Some(ip) = from {
        builder = builder.local_address(ip);
    }
    builder.build().unwrap()
}

/// The claims of a JWT, unverified (the soak only reads its own tokens' run ids).
fn claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

impl Soak {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// Sends one request and reads its JSON answer (`Null` when there is no body), timing it;
    /// only a failure to get an answer at all is an error here.
    async fn call(
        &self,
        step: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<(u16, Value), Failure> {
        let started = Instant::now();
        let response = request
            .send()
            .await
            .map_err(|e| fail(format!("{step}: transport"), e))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| fail(format!("{step}: body"), e))?;
        // Not JSON: kept as text, which no shape check accepts.
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        self.stats.ok(started);
        Ok((status, body))
    }

    /// Sends one request that must answer `want` with a body holding every string member of
    /// `members`.
    async fn expect(
        &self,
        step: &str,
        request: reqwest::RequestBuilder,
        want: u16,
        members: &[&str],
    ) -> Result<Value, Failure> {
        let (status, body) = self.call(step, request).await?;
        if status != want {
            return Err(fail(format!("{step}: {status}"), &body));
        }
        if let Some(missing) = members.iter().find(|m| !body[**m].is_string()) {
            return Err(fail(format!("{step}: no {missing}"), &body));
        }
        Ok(body)
    }

    /// A request that must be refused with an OAuth error `error` (any 4xx).
    async fn refused(
        &self,
        step: &str,
        request: reqwest::RequestBuilder,
        error: &str,
    ) -> Result<(), Failure> {
        let (status, body) = self.call(step, request).await?;
        if !(400..500).contains(&status) || body["error"] != error {
            return Err(fail(
                format!("{step}: {status} not {error}"),
                format!("{status} {body}"),
            ));
        }
        Ok(())
    }

    async fn run(&self, peers: &Peers, op: Op) -> Result<(), Failure> {
        match op {
            Op::Agent => self.agent_grant(peers).await.map(drop),
            Op::CodeFlow => self.code_flow(peers).await,
            Op::Refresh => match self.refresh_tokens.take_oldest() {
                Some(token) => self.refresh(peers, &token).await,
                None => self.code_flow(peers).await,
            },
            Op::Exchange => match self.agent_tokens.newest() {
                Some(token) => self.exchange(peers, &token).await.map(drop),
                None => self.agent_grant(peers).await.map(drop),
            },
            Op::RevokeAccess => match self.access_tokens.take_oldest() {
                Some(token) => self.revoke_access(peers, &token).await,
                None => self.code_flow(peers).await,
            },
            Op::RevokeRefresh => match self.refresh_tokens.take_oldest() {
                Some(token) => self.revoke_refresh(peers, &token).await,
                None => self.code_flow(peers).await,
            },
            Op::RevokeRun => match self.agent_tokens.take_oldest() {
                Some(token) => self.revoke_run(peers, &token).await,
                None => self.agent_grant(peers).await.map(drop),
            },
        }
    }

    async fn agent_grant(&self, peers: &Peers) -> Result<String, Failure> {
        let request = peers.agent.post(self.url("/token")).form(&[
            ("grant_type", "client_credentials"),
            ("audience", &self.args.audience),
            ("scope", &self.args.scope),
            ("run_label", "soak"),
        ]);
        let body = self
            .expect("agent grant", request, 200, &["access_token", "token_type"])
            .await?;
        let token = body["access_token"].as_str().unwrap_or_default().to_owned();
        self.agent_tokens.put(token.clone());
        Ok(token)
    }

    /// An RFC 8693 exchange of an agent token for a child with the same audience and scope.
    async fn exchange(&self, peers: &Peers, parent: &str) -> Result<String, Failure> {
        let request = peers
            .agent
            .post(self.url("/token"))
            .form(&self.exchange_form(parent));
        let body = self
            .expect(
                "exchange",
                request,
                200,
                &["access_token", "issued_token_type"],
            )
            .await?;
        Ok(body["access_token"].as_str().unwrap_or_default().to_owned())
    }

    fn exchange_form<'a>(&'a self, parent: &'a str) -> [(&'a str, &'a str); 6] {
        [
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", parent),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("audience", &self.args.audience),
            ("scope", &self.args.scope),
            ("run_label", "soak child"),
        ]
    }

    /// authorize (the person's browser) → token (the RP, PKCE, client_secret_basic) →
    /// userinfo; keeps the access and refresh tokens for later operations.
    async fn code_flow(&self, peers: &Peers) -> Result<(), Failure> {
        let started = Instant::now();
        let response = peers
            .user
            .get(&self.authorize)
            .send()
            .await
            .map_err(|e| fail("authorize: transport", e))?;
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let _ = response.bytes().await;
        let location = location.ok_or_else(|| fail(format!("authorize: {status}"), status))?;
        let url = url::Url::parse(&location).map_err(|e| fail("authorize: bad location", e))?;
        let pair = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        if pair("state").as_deref() != Some("soak") {
            return Err(fail("authorize: state", &location));
        }
        let code = pair("code").ok_or_else(|| fail("authorize: no code", &location))?;
        self.stats.ok(started);

        let request = peers
            .rp
            .post(self.url("/token"))
            .basic_auth(&self.args.client_id, Some(&self.args.client_secret))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", &self.args.redirect_uri),
                ("code_verifier", VERIFIER),
            ]);
        let tokens = self
            .expect(
                "code token",
                request,
                200,
                &["access_token", "id_token", "refresh_token"],
            )
            .await?;
        let access = tokens["access_token"].as_str().unwrap_or_default();
        let request = peers.rp.get(self.url("/userinfo")).bearer_auth(access);
        self.expect("userinfo", request, 200, &["sub"]).await?;
        self.access_tokens.put(access.to_owned());
        self.refresh_tokens.put(
            tokens["refresh_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        Ok(())
    }

    fn refresh_request(&self, peers: &Peers, token: &str) -> reqwest::RequestBuilder {
        peers
            .rp
            .post(self.url("/token"))
            .basic_auth(&self.args.client_id, Some(&self.args.client_secret))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", token)])
    }

    /// A refresh grant; the rotated refresh token goes back to the pool.
    async fn refresh(&self, peers: &Peers, token: &str) -> Result<(), Failure> {
        let body = self
            .expect(
                "refresh",
                self.refresh_request(peers, token),
                200,
                &["access_token", "refresh_token"],
            )
            .await?;
        self.access_tokens
            .put(body["access_token"].as_str().unwrap_or_default().to_owned());
        self.refresh_tokens.put(
            body["refresh_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        Ok(())
    }

    fn revoke_request(&self, peers: &Peers, token: &str, hint: &str) -> reqwest::RequestBuilder {
        peers
            .rp
            .post(self.url("/revoke"))
            .basic_auth(&self.args.client_id, Some(&self.args.client_secret))
            .form(&[("token", token), ("token_type_hint", hint)])
    }

    /// RFC 7009 revocation of an access token by its client, then the token presented again.
    async fn revoke_access(&self, peers: &Peers, token: &str) -> Result<(), Failure> {
        let (status, body) = self
            .call(
                "revoke access",
                self.revoke_request(peers, token, "access_token"),
            )
            .await?;
        if status != 200 {
            return Err(fail(format!("revoke access: {status}"), &body));
        }
        let (status, body) = self
            .call(
                "userinfo after revoke",
                peers.rp.get(self.url("/userinfo")).bearer_auth(token),
            )
            .await?;
        if status != 401 {
            return Err(fail(
                format!("userinfo after revoke: {status}"),
                format!("a revoked access token answered {status} {body}"),
            ));
        }
        Ok(())
    }

    /// RFC 7009 revocation of a refresh token (its session ends), then the token used again.
    async fn revoke_refresh(&self, peers: &Peers, token: &str) -> Result<(), Failure> {
        let (status, body) = self
            .call(
                "revoke refresh",
                self.revoke_request(peers, token, "refresh_token"),
            )
            .await?;
        if status != 200 {
            return Err(fail(format!("revoke refresh: {status}"), &body));
        }
        self.refused(
            "refresh after revoke",
            self.refresh_request(peers, token),
            "invalid_grant",
        )
        .await
    }

    /// The kill switch on an agent run through the admin API, as `tailpass revoke --run` asks
    /// it; then an exchange of the run's token, which must be refused.
    async fn revoke_run(&self, peers: &Peers, token: &str) -> Result<(), Failure> {
        let run_id = claims(token)
            .and_then(|c| c["run_id"].as_str().map(str::to_owned))
            .ok_or_else(|| fail("agent token: no run_id", "an agent token without run_id"))?;
        let request = peers
            .user
            .post(self.url("/admin/api/revocations"))
            .header("origin", &self.origin)
            .json(&serde_json::json!({"kind": "run", "value": run_id}));
        let report = self.expect("revoke run", request, 201, &[]).await?;
        if report["revocation"]["value"] != run_id.as_str() {
            return Err(fail("revoke run: report", &report));
        }
        self.refused(
            "exchange after revoke",
            peers
                .agent
                .post(self.url("/token"))
                .form(&self.exchange_form(token)),
            "invalid_grant",
        )
        .await
    }
}

/// One feed subscriber: connects, checks the snapshot comes first, reads for `hold`, leaves.
async fn subscribe(soak: &Soak, client: &reqwest::Client, hold: Duration) -> Result<(), Failure> {
    let started = Instant::now();
    let response = client
        .get(soak.url("/revocations"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .map_err(|e| fail("feed: transport", e))?;
    let status = response.status().as_u16();
    if status != 200 {
        let body = response.text().await.unwrap_or_default();
        return Err(fail(format!("feed: {status}"), body));
    }
    let is_sse = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !is_sse {
        return Err(fail(
            "feed: content type",
            format!("{:?}", response.headers()),
        ));
    }
    soak.stats.subscribers.fetch_add(1, Ordering::Relaxed);
    soak.stats.feed_connections.fetch_add(1, Ordering::Relaxed);
    let outcome = read_feed(soak, response, started, hold).await;
    soak.stats.subscribers.fetch_sub(1, Ordering::Relaxed);
    outcome
}

async fn read_feed(
    soak: &Soak,
    response: reqwest::Response,
    started: Instant,
    hold: Duration,
) -> Result<(), Failure> {
    let mut stream = response.bytes_stream();
    let until = started + hold;
    // The current line, bounded: only `event:` lines are read, and they are short.
    let mut line: Vec<u8> = Vec::new();
    let mut snapshot = false;
    loop {
        let wait = if snapshot {
            until.saturating_duration_since(Instant::now())
        } else {
            (started + SNAPSHOT_TIMEOUT).saturating_duration_since(Instant::now())
        };
        let chunk = match tokio::time::timeout(wait, stream.next()).await {
            Err(_) if snapshot => return Ok(()),
            Err(_) => return Err(fail("feed: no snapshot", "no snapshot within 5 s")),
            Ok(None) => return Err(fail("feed: ended", "the server closed the stream")),
            Ok(Some(Err(e))) => return Err(fail("feed: read", e)),
            Ok(Some(Ok(chunk))) => chunk,
        };
        for byte in chunk {
            if byte != b'\n' {
                if line.len() < 64 {
                    line.push(byte);
                }
                continue;
            }
            match line.as_slice() {
                b"event: snapshot" | b"event:snapshot" if !snapshot => {
                    snapshot = true;
                    soak.stats.ok(started);
                }
                b"event: revocation" | b"event:revocation" if snapshot => {
                    soak.stats.feed_revocations.fetch_add(1, Ordering::Relaxed);
                }
                l if !snapshot && l.starts_with(b"event:") => {
                    return Err(fail(
                        "feed: first event",
                        String::from_utf8_lossy(l).into_owned(),
                    ));
                }
                _ => {}
            }
            line.clear();
        }
    }
}

/// One sample of the server.
#[derive(Debug, Clone, Copy)]
struct Sample {
    elapsed_s: u64,
    rss_kb: u64,
    /// The parts of the RSS: anonymous memory (the heaps, stacks), mapped files (the binary,
    /// libraries, SQLite's WAL index) and shared anonymous memory, from `/proc/PID/status`.
    anon_kb: u64,
    file_kb: u64,
    shmem_kb: u64,
    threads: u64,
    fds: u64,
    db_bytes: u64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    errors: u64,
    subscribers: usize,
}

/// A `/proc/PID/status` field's number (KiB for the memory ones), or 0.
fn status_field(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

/// The SQLite database, its WAL and shared memory: every `*.db`, `*-wal` and `*-shm` file.
fn db_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.ends_with(".db") || name.ends_with("-wal") || name.ends_with("-shm")
                })
                .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                .sum()
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[i] as f64 / 1000.0
}

fn sample(soak: &Soak, elapsed_s: u64, last_requests: &mut u64) -> Sample {
    let mut window = std::mem::take(&mut *soak.stats.window.lock().unwrap());
    window.sort_unstable();
    let requests = soak.stats.requests.load(Ordering::Relaxed);
    let status = std::fs::read_to_string(format!("/proc/{}/status", soak.args.server_pid))
        .unwrap_or_default();
    let sample = Sample {
        elapsed_s,
        rss_kb: status_field(&status, "VmRSS"),
        anon_kb: status_field(&status, "RssAnon"),
        file_kb: status_field(&status, "RssFile"),
        shmem_kb: status_field(&status, "RssShmem"),
        threads: status_field(&status, "Threads"),
        fds: fds(soak.args.server_pid),
        db_bytes: db_bytes(&soak.args.state_dir),
        p50_ms: percentile(&window, 0.50),
        p99_ms: percentile(&window, 0.99),
        requests: requests - *last_requests,
        errors: soak.stats.window_errors.swap(0, Ordering::Relaxed),
        subscribers: soak.stats.subscribers.load(Ordering::Relaxed),
    };
    *last_requests = requests;
    sample
}

/// Whether `end` is within 10 % of `base`.
fn within(base: u64, end: u64) -> bool {
    base > 0 && (end as f64 - base as f64).abs() <= base as f64 * 0.10
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let issuer = args.issuer.trim_end_matches('/').to_owned();
    let origin = url::Url::parse(&issuer)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| issuer.clone());
    let mut authorize = url::Url::parse(&format!("{issuer}/authorize")).unwrap();
    authorize.query_pairs_mut().extend_pairs([
        ("response_type", "code"),
        ("client_id", args.client_id.as_str()),
        ("redirect_uri", args.redirect_uri.as_str()),
        ("scope", "openid profile email offline_access"),
        ("state", "soak"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ]);
    let soak = Arc::new(Soak {
        stats: Stats::default(),
        issuer,
        origin,
        authorize: authorize.to_string(),
        agent_tokens: Pool::default(),
        access_tokens: Pool::default(),
        refresh_tokens: Pool::default(),
        args,
    });
    let mut csv = std::fs::File::create(&soak.args.csv).unwrap();
    writeln!(
        csv,
        "elapsed_s,rss_kb,fds,db_bytes,p50_ms,p99_ms,requests,errors,subscribers,anon_kb,file_kb,shmem_kb,threads"
    )
    .unwrap();

    let start = Instant::now();
    let deadline = start + Duration::from_secs(soak.args.minutes * 60);
    // The load goes on a little past the last sample, which so sees it running.
    let load_end = deadline + Duration::from_secs(3);
    let counter = Arc::new(AtomicU64::new(0));
    let workers = soak.args.workers.max(1);
    // Each worker offers rate / workers requests per second; an operation of n requests
    // takes n slots.
    let slot = Duration::from_secs_f64(workers as f64 / soak.args.rate.max(1) as f64);
    let mut tasks = Vec::new();
    for i in 0..workers {
        let (soak, counter) = (soak.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let peers = Peers::new(&soak.args);
            let mut next = start + slot.mul_f64(i as f64 / workers as f64);
            while next < load_end {
                tokio::time::sleep_until(next.into()).await;
                let op = Op::nth(
                    counter.fetch_add(1, Ordering::Relaxed),
                    soak.args.revoke_every,
                );
                if let Err(f) = soak.run(&peers, op).await {
                    soak.stats.error(&f.kind, &f.detail);
                }
                next += slot * op.cost();
                let now = Instant::now();
                if next + Duration::from_secs(1) < now {
                    // Behind: offer the load from now on rather than in a burst.
                    soak.stats.late.fetch_add(1, Ordering::Relaxed);
                    next = now;
                }
            }
        }));
    }
    for i in 0..soak.args.subscribers {
        let soak = soak.clone();
        tasks.push(tokio::spawn(async move {
            // Each subscriber its own connection pool, so that leaving closes its connection.
            let client = reqwest::Client::builder()
                .local_address(soak.args.agent_from)
                .build()
                .unwrap();
            let mut n = i as u64;
            while Instant::now() < load_end {
                // Holds of 2 to 8 s, spread over subscribers and turns.
                let hold = Duration::from_millis(2_000 + (n * 7_919) % 6_000);
                let hold = hold.min(load_end.saturating_duration_since(Instant::now()));
                if let Err(f) = subscribe(&soak, &client, hold).await {
                    soak.stats.error(&f.kind, &f.detail);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                n += soak.args.subscribers as u64;
            }
        }));
    }

    let every = Duration::from_secs(soak.args.sample_every.max(1));
    let mut samples: Vec<Sample> = Vec::new();
    let mut last_requests = 0;
    let mut tick = start + every;
    while tick <= deadline {
        tokio::time::sleep_until(tick.into()).await;
        let s = sample(&soak, (tick - start).as_secs(), &mut last_requests);
        writeln!(
            csv,
            "{},{},{},{},{:.2},{:.2},{},{},{},{},{},{},{}",
            s.elapsed_s,
            s.rss_kb,
            s.fds,
            s.db_bytes,
            s.p50_ms,
            s.p99_ms,
            s.requests,
            s.errors,
            s.subscribers,
            s.anon_kb,
            s.file_kb,
            s.shmem_kb,
            s.threads
        )
        .unwrap();
        csv.flush().unwrap();
        println!(
            "{:>4}s  rss {:>7} KiB (anon {:>7})  fds {:>4}  db {:>6.1} MiB  p50 {:>6.2} ms  p99 {:>7.2} ms  {:>6} req  {} err  {} feed",
            s.elapsed_s,
            s.rss_kb,
            s.anon_kb,
            s.fds,
            s.db_bytes as f64 / 1_048_576.0,
            s.p50_ms,
            s.p99_ms,
            s.requests,
            s.errors,
            s.subscribers
        );
        samples.push(s);
        tick += every;
    }
    for task in tasks {
        // In-flight requests end within their timeout.
        let _ = tokio::time::timeout(REQUEST_TIMEOUT * 2, task).await;
    }

    let Some(end) = samples.last().copied() else {
        eprintln!("no sample taken: run for at least --sample-every seconds");
        std::process::exit(2);
    };
    let base = samples
        .iter()
        .find(|s| s.elapsed_s >= 120)
        .copied()
        .unwrap_or(end);
    let stats = &soak.stats;
    let errors = stats.errors.load(Ordering::Relaxed);
    let rss_ok = within(base.rss_kb, end.rss_kb);
    let fds_ok = within(base.fds, end.fds);
    let p99 = samples.iter().map(|s| s.p99_ms).filter(|p| p.is_finite());
    let p99_min = p99.clone().fold(f64::INFINITY, f64::min);
    let p99_max = p99.fold(0.0, f64::max);
    println!(
        "soak {} min at {}/s offered: {} requests ({:.0}/s), {errors} errors, {} late starts",
        soak.args.minutes,
        soak.args.rate,
        stats.requests.load(Ordering::Relaxed),
        stats.requests.load(Ordering::Relaxed) as f64 / (soak.args.minutes * 60).max(1) as f64,
        stats.late.load(Ordering::Relaxed),
    );
    println!(
        "rss  at {}s {} KiB, at end {} KiB: ratio {:.3}",
        base.elapsed_s,
        base.rss_kb,
        end.rss_kb,
        end.rss_kb as f64 / base.rss_kb.max(1) as f64
    );
    println!(
        "fds  at {}s {}, at end {}: ratio {:.3}",
        base.elapsed_s,
        base.fds,
        end.fds,
        end.fds as f64 / base.fds.max(1) as f64
    );
    println!(
        "db   at {}s {:.1} MiB, at end {:.1} MiB",
        base.elapsed_s,
        base.db_bytes as f64 / 1_048_576.0,
        end.db_bytes as f64 / 1_048_576.0
    );
    println!("p99  per window {p99_min:.2} to {p99_max:.2} ms");
    println!(
        "feed {} connections, {} revocation events read",
        stats.feed_connections.load(Ordering::Relaxed),
        stats.feed_revocations.load(Ordering::Relaxed)
    );
    for (kind, count) in stats.kinds.lock().unwrap().iter() {
        println!("error {kind}: {count}");
    }
    let pass = rss_ok && fds_ok && errors == 0;
    println!(
        "{}: rss {} fds {} errors {}",
        if pass { "PASS" } else { "FAIL" },
        if rss_ok {
            "ok"
        } else {
            "off by more than 10 %"
        },
        if fds_ok {
            "ok"
        } else {
            "off by more than 10 %"
        },
        if errors == 0 { "none" } else { "some" },
    );
    if !pass {
        std::process::exit(1);
    }
}
