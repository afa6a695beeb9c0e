//! Load generator: drives a running tailpass over HTTP from chosen loopback addresses (each
//! one a tailnet peer in the server's identity table) and reports throughput and latency.
//! `bench/run.sh` starts the server pinned to one core and this program pinned to another.
//!
//! ```text
//! load code-flow --issuer URL --client-id ID --client-secret=S --redirect-uri U [--from 127.0.0.2]
//! load agent --issuer URL --audience A [--from 127.0.0.3]
//! load client-credentials --token-url URL --client-id ID --client-secret=S [--audience A | --resource R]
//! load floor --issuer URL
//! ```
//!
//! The client side is kept lean so that it is not what is measured: one keep-alive HTTP/1.1
//! connection per worker straight on hyper (no pool, no redirects, no cookie store), on a
//! single-threaded runtime, since the program is pinned to one core anyway.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
    /// Concurrent workers (each with its own connections).
    #[arg(long, global = true, default_value_t = 32)]
    concurrency: usize,
    /// Measured seconds (after one second of warm-up).
    #[arg(long, global = true, default_value_t = 10)]
    seconds: u64,
    /// Requests per second to offer instead of as many as possible (for latency at a load).
    #[arg(long, global = true)]
    rate: Option<u64>,
}

#[derive(Subcommand)]
enum Scenario {
    /// authorize (browser) + token (RP, client_secret_basic, PKCE) + userinfo.
    CodeFlow {
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        client_id: String,
        #[arg(long)]
        client_secret: String,
        #[arg(long)]
        redirect_uri: String,
        /// The browser's address: a user in the identity table.
        #[arg(long, default_value = "127.0.0.2")]
        from: IpAddr,
    },
    /// The agent grant: `client_credentials` with no secret, from a tagged node.
    Agent {
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        audience: String,
        /// The agent's address: a tagged node in the identity table.
        #[arg(long, default_value = "127.0.0.3")]
        from: IpAddr,
        /// A replica's address, for an issuer served by several (repeat): worker `i`
        /// connects to replica `i mod n`, naming the issuer's host.
        #[arg(long = "replica")]
        replicas: Vec<SocketAddr>,
    },
    /// The HTTP floor: `GET /healthz` on the same keep-alive connections, a request the server
    /// answers without a grant, a signature or a write. What any token request costs at
    /// least, measured beside the grants.
    Floor {
        #[arg(long)]
        issuer: String,
    },
    /// `client_credentials` with `client_secret_basic`: the same load against any server.
    ClientCredentials {
        /// The token endpoint.
        #[arg(long)]
        token_url: String,
        #[arg(long)]
        client_id: String,
        /// Give it as `--client-secret=S`: a secret may begin with `-`.
        #[arg(long)]
        client_secret: String,
        /// Sent as `audience`.
        #[arg(long, conflicts_with = "resource")]
        audience: Option<String>,
        /// Sent as `resource` (RFC 8707).
        #[arg(long)]
        resource: Option<String>,
        #[arg(long)]
        scope: Option<String>,
    },
}

const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

/// Where requests go: the address to connect to and the `Host` to name.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    host: String,
}

impl Target {
    fn of(issuer: &str) -> (Target, String) {
        let url = url::Url::parse(issuer).expect("issuer URL");
        let host = url.host_str().expect("issuer host").to_owned();
        let port = url.port_or_known_default().expect("issuer port");
        let addr = format!("{host}:{port}")
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], port)));
        let base = url.path().trim_end_matches('/').to_owned();
        (
            Target {
                addr,
                host: match url.port() {
                    Some(p) => format!("{host}:{p}"),
                    None => host,
                },
            },
            base,
        )
    }
}

/// One keep-alive HTTP/1.1 connection from `from` to `target`, reopened when it closes.
struct Conn {
    from: Option<IpAddr>,
    target: Target,
    sender: Option<SendRequest<Full<Bytes>>>,
}

/// An answer: its status, its `Location` (if any) and its body.
struct Answer {
    status: StatusCode,
    location: Option<String>,
    body: Bytes,
}

impl Conn {
    fn new(from: Option<IpAddr>, target: Target) -> Conn {
        Conn {
            from,
            target,
            sender: None,
        }
    }

    async fn open(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
        if let Some(ip) = self.from {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| e.to_string())?;
        }
        let stream = socket
            .connect(self.target.addr)
            .await
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::task::spawn_local(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn send(
        &mut self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Answer, String> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.sender = Some(self.open().await?);
        }
        let sender = self.sender.as_mut().unwrap();
        sender.ready().await.map_err(|e| e.to_string())?;
        let mut request = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header("host", &self.target.host);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(e) => {
                self.sender = None;
                return Err(e.to_string());
            }
        };
        let status = response.status();
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Answer {
            status,
            location,
            body,
        })
    }
}

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

/// Whether a token endpoint's answer carries an access token.
fn has_access_token(body: &[u8]) -> bool {
    body.windows(16).any(|w| w == b"\"access_token\":\"")
}

/// One worker's connections for the code flow: the browser's and the RP's.
struct CodeFlow {
    browser: Conn,
    rp: Conn,
    authorize: Rc<str>,
    token: Rc<str>,
    userinfo: Rc<str>,
    basic: Rc<str>,
    redirect_uri: Rc<str>,
}

#[derive(serde::Deserialize)]
struct Tokens {
    access_token: String,
}

impl CodeFlow {
    async fn once(&mut self) -> Result<(), String> {
        let answer = self
            .browser
            .send(Method::GET, &self.authorize, &[], Bytes::new())
            .await?;
        let location = answer
            .location
            .ok_or_else(|| format!("authorize answered {}", answer.status))?;
        let url = url::Url::parse(&location).map_err(|e| e.to_string())?;
        let code = url
            .query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .ok_or_else(|| format!("no code in {location}"))?;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", &code)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("code_verifier", VERIFIER)
            .finish();
        let answer = self
            .rp
            .send(
                Method::POST,
                &self.token,
                &[FORM, ("authorization", &self.basic)],
                Bytes::from(form),
            )
            .await?;
        let tokens: Tokens = serde_json::from_slice(&answer.body).map_err(|_| {
            format!(
                "token answered {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            )
        })?;
        let bearer = format!("Bearer {}", tokens.access_token);
        let info = self
            .rp
            .send(
                Method::GET,
                &self.userinfo,
                &[("authorization", &bearer)],
                Bytes::new(),
            )
            .await?;
        if !info.status.is_success() {
            return Err(format!("userinfo answered {}", info.status));
        }
        Ok(())
    }
}

/// One worker's connection for a `client_credentials` token request: the agent grant (no
/// `authorization`, the caller's address is the credential) or a client's (Basic).
struct TokenGrant {
    conn: Conn,
    path: Rc<str>,
    authorization: Option<Rc<str>>,
    body: Bytes,
}

impl TokenGrant {
    /// One token request; fails unless a token comes back.
    async fn once(&mut self) -> Result<(), String> {
        let with_auth;
        let headers: &[(&str, &str)] = match &self.authorization {
            Some(value) => {
                with_auth = [FORM, ("authorization", value.as_ref())];
                &with_auth
            }
            None => &[FORM],
        };
        let answer = self
            .conn
            .send(Method::POST, &self.path, headers, self.body.clone())
            .await?;
        if !answer.status.is_success() || !has_access_token(&answer.body) {
            return Err(format!(
                "token answered {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            ));
        }
        Ok(())
    }
}

/// One worker's connection for the floor: `GET` of a path that must answer 200.
struct Probe {
    conn: Conn,
    path: Rc<str>,
}

impl Probe {
    async fn once(&mut self) -> Result<(), String> {
        let answer = self
            .conn
            .send(Method::GET, &self.path, &[], Bytes::new())
            .await?;
        if answer.status != StatusCode::OK {
            return Err(format!("{} answered {}", self.path, answer.status));
        }
        Ok(())
    }
}

/// What one worker does, over and over.
trait Work: 'static {
    async fn once(&mut self) -> Result<(), String>;
}

impl Work for CodeFlow {
    async fn once(&mut self) -> Result<(), String> {
        CodeFlow::once(self).await
    }
}

impl Work for TokenGrant {
    async fn once(&mut self) -> Result<(), String> {
        TokenGrant::once(self).await
    }
}

impl Work for Probe {
    async fn once(&mut self) -> Result<(), String> {
        Probe::once(self).await
    }
}

/// Runs `concurrency` workers made by `make`, as fast as possible or at `rate` per second.
async fn drive<W: Work>(
    concurrency: usize,
    seconds: u64,
    rate: Option<u64>,
    make: impl Fn(usize) -> W,
) -> (Vec<u32>, u64, f64) {
    let warm_until = Instant::now() + Duration::from_secs(1);
    let start = warm_until;
    let deadline = start + Duration::from_secs(seconds);
    let interval = rate.map(|r| Duration::from_secs_f64(concurrency as f64 / r as f64));
    let mut workers = Vec::new();
    for i in 0..concurrency {
        let mut work = make(i);
        workers.push(tokio::task::spawn_local(async move {
            // Warm-up: connections, caches.
            while Instant::now() < warm_until {
                let _ = work.once().await;
            }
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut next = start
                + interval
                    .map(|d| d.mul_f64(i as f64 / concurrency as f64))
                    .unwrap_or_default();
            while Instant::now() < deadline {
                if let Some(d) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += d;
                }
                let t = Instant::now();
                match work.once().await {
                    Ok(()) => latencies.push(t.elapsed().as_micros() as u32),
                    Err(e) => {
                        errors += 1;
                        if errors == 1 {
                            eprintln!("error: {e}");
                        }
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (l, e) = w.await.unwrap();
        all.extend(l);
        errors += e;
    }
    (all, errors, start.elapsed().as_secs_f64())
}

fn report(name: &str, mut latencies: Vec<u32>, errors: u64, elapsed: f64) {
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map(|us| *us as f64 / 1000.0)
            .unwrap_or(f64::NAN)
    };
    println!(
        "{name}: {:.0}/s  ({} ok, {errors} errors in {elapsed:.1}s)  latency ms p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        latencies.len() as f64 / elapsed,
        latencies.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0),
    );
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, run(args));
}

async fn run(args: Args) {
    match args.scenario {
        Scenario::CodeFlow {
            issuer,
            client_id,
            client_secret,
            redirect_uri,
            from,
        } => {
            let (target, base) = Target::of(&issuer);
            let mut authorize = url::Url::parse(&format!("{issuer}/authorize")).unwrap();
            authorize.query_pairs_mut().extend_pairs([
                ("response_type", "code"),
                ("client_id", &client_id),
                ("redirect_uri", &redirect_uri),
                ("scope", "openid profile email"),
                ("state", "s"),
                ("code_challenge", CHALLENGE),
                ("code_challenge_method", "S256"),
            ]);
            let authorize: Rc<str> = format!(
                "{}?{}",
                authorize.path(),
                authorize.query().unwrap_or_default()
            )
            .into();
            let basic: Rc<str> = basic(&client_id, &client_secret).into();
            let (token, userinfo): (Rc<str>, Rc<str>) = (
                format!("{base}/token").into(),
                format!("{base}/userinfo").into(),
            );
            let redirect_uri: Rc<str> = redirect_uri.into();
            let (latencies, errors, elapsed) =
                drive(args.concurrency, args.seconds, args.rate, |_| CodeFlow {
                    browser: Conn::new(Some(from), target.clone()),
                    rp: Conn::new(None, target.clone()),
                    authorize: authorize.clone(),
                    token: token.clone(),
                    userinfo: userinfo.clone(),
                    basic: basic.clone(),
                    redirect_uri: redirect_uri.clone(),
                })
                .await;
            report(
                "code flows (authorize + token + userinfo)",
                latencies,
                errors,
                elapsed,
            );
        }
        Scenario::Agent {
            issuer,
            audience,
            from,
            replicas,
        } => {
            let (target, base) = Target::of(&issuer);
            let token: Rc<str> = format!("{base}/token").into();
            let body = Bytes::from(
                url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("grant_type", "client_credentials")
                    .append_pair("audience", &audience)
                    .append_pair("run_label", "load")
                    .finish(),
            );
            let (latencies, errors, elapsed) =
                drive(args.concurrency, args.seconds, args.rate, |i| {
                    let mut target = target.clone();
                    if let Some(addr) = replicas.get(i % replicas.len().max(1)) {
                        target.addr = *addr;
                    }
                    TokenGrant {
                        conn: Conn::new(Some(from), target),
                        path: token.clone(),
                        authorization: None,
                        body: body.clone(),
                    }
                })
                .await;
            report("agent tokens over HTTP", latencies, errors, elapsed);
        }
        Scenario::Floor { issuer } => {
            let (target, base) = Target::of(&issuer);
            let path: Rc<str> = format!("{base}/healthz").into();
            let (latencies, errors, elapsed) =
                drive(args.concurrency, args.seconds, args.rate, |_| Probe {
                    conn: Conn::new(None, target.clone()),
                    path: path.clone(),
                })
                .await;
            report("HTTP floor (GET /healthz)", latencies, errors, elapsed);
        }
        Scenario::ClientCredentials {
            token_url,
            client_id,
            client_secret,
            audience,
            resource,
            scope,
        } => {
            let url = url::Url::parse(&token_url).expect("token URL");
            let origin = url.origin().ascii_serialization();
            let (target, _) = Target::of(&origin);
            let path: Rc<str> = url.path().into();
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials");
            if let Some(a) = &audience {
                form.append_pair("audience", a);
            }
            if let Some(r) = &resource {
                form.append_pair("resource", r);
            }
            if let Some(s) = &scope {
                form.append_pair("scope", s);
            }
            let body = Bytes::from(form.finish());
            let basic: Rc<str> = basic(&client_id, &client_secret).into();
            let (latencies, errors, elapsed) =
                drive(args.concurrency, args.seconds, args.rate, |_| TokenGrant {
                    conn: Conn::new(None, target.clone()),
                    path: path.clone(),
                    authorization: Some(basic.clone()),
                    body: body.clone(),
                })
                .await;
            report("client_credentials tokens", latencies, errors, elapsed);
        }
    }
}

/// `Authorization: Basic` for a client: id and secret form-encoded first (RFC 6749 §2.3.1).
fn basic(client_id: &str, client_secret: &str) -> String {
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        form_encode(client_id),
        form_encode(client_secret)
    ));
    format!("Basic {credentials}")
}

/// `application/x-www-form-urlencoded` encoding, as RFC 6749 §2.3.1 asks of Basic credentials.
fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
