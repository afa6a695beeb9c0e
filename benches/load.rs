//! Load generator: drives a running tailpass over HTTP from chosen loopback addresses (each
//! one a tailnet peer in the server's identity table) and reports throughput and latency.
//! `bench/run.sh` starts the server pinned to one core and this program pinned to another.
//!
//! ```text
//! load code-flow --issuer URL --client-id ID --client-secret S --redirect-uri U [--from 127.0.0.2]
//! load agent --issuer URL --audience A [--from 127.0.0.3]
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
    /// Concurrent workers.
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
        /// A replica's address, for an issuer served by several (repeat): the issuer's host
        /// is resolved to each in turn, request by request.
        #[arg(long = "replica")]
        replicas: Vec<std::net::SocketAddr>,
    },
    /// `client_credentials` by a confidential client (client_secret_basic), against any
    /// OAuth server: the same load for tailpass and a peer implementation (`bench/run.sh peer`).
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

fn client(from: Option<IpAddr>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(1024);
    if let Some(ip) = from {
        builder = builder.local_address(ip);
    }
    builder.build().unwrap()
}

struct CodeFlow {
    browser: reqwest::Client,
    rp: reqwest::Client,
    authorize: String,
    token: String,
    userinfo: String,
    client_id: String,
    client_secret: String,
    redirect_uri: String,
}

impl CodeFlow {
    async fn once(&self) -> Result<(), String> {
        let response = self
            .browser
            .get(&self.authorize)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let location = response
            .headers()
            .get("location")
            .ok_or_else(|| format!("authorize answered {}", response.status()))?
            .to_str()
            .map_err(|e| e.to_string())?;
        let url = url::Url::parse(location).map_err(|e| e.to_string())?;
        let code = url
            .query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .ok_or_else(|| format!("no code in {location}"))?;
        let tokens: serde_json::Value = self
            .rp
            .post(&self.token)
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", &self.redirect_uri),
                ("code_verifier", VERIFIER),
            ])
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let access = tokens["access_token"]
            .as_str()
            .ok_or_else(|| format!("token: {tokens}"))?;
        let info = self
            .rp
            .get(&self.userinfo)
            .bearer_auth(access)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !info.status().is_success() {
            return Err(format!("userinfo answered {}", info.status()));
        }
        Ok(())
    }
}

/// One agent token request; fails unless a token comes back.
async fn agent_once(client: &reqwest::Client, token: &str, audience: &str) -> Result<(), String> {
    let response = client
        .post(token)
        .form(&[
            ("grant_type", "client_credentials"),
            ("audience", audience),
            ("run_label", "load"),
        ])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() || !body["access_token"].is_string() {
        return Err(format!("token answered {status}: {body}"));
    }
    Ok(())
}

/// One `client_credentials` request with Basic authentication and a form body; fails unless
/// an access token comes back.
async fn client_credentials_once(
    client: &reqwest::Client,
    token_url: &str,
    client_id: &str,
    client_secret: &str,
    form: &[(&str, String)],
) -> Result<(), String> {
    let response = client
        .post(token_url)
        .basic_auth(client_id, Some(client_secret))
        .form(form)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() || !body["access_token"].is_string() {
        return Err(format!("token answered {status}: {body}"));
    }
    Ok(())
}

/// Runs `work` from `concurrency` workers, as fast as possible or at `rate` per second.
async fn drive<F, Fut>(
    concurrency: usize,
    seconds: u64,
    rate: Option<u64>,
    work: F,
) -> (Vec<u32>, u64, f64)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let work = Arc::new(work);
    // Warm-up: connections, caches.
    let warm_until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < warm_until {
        let _ = work().await;
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let interval = rate.map(|r| Duration::from_secs_f64(concurrency as f64 / r as f64));
    let mut workers = Vec::new();
    for i in 0..concurrency {
        let work = work.clone();
        workers.push(tokio::spawn(async move {
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
                match work().await {
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

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match args.scenario {
        Scenario::CodeFlow {
            issuer,
            client_id,
            client_secret,
            redirect_uri,
            from,
        } => {
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
            let flow = Arc::new(CodeFlow {
                browser: client(Some(from)),
                rp: client(None),
                authorize: authorize.to_string(),
                token: format!("{issuer}/token"),
                userinfo: format!("{issuer}/userinfo"),
                client_id,
                client_secret,
                redirect_uri,
            });
            let (latencies, errors, elapsed) =
                drive(args.concurrency, args.seconds, args.rate, move || {
                    let flow = flow.clone();
                    async move { flow.once().await }
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
            let host = url::Url::parse(&issuer)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_default();
            let clients: Arc<Vec<reqwest::Client>> = Arc::new(if replicas.is_empty() {
                vec![client(Some(from))]
            } else {
                replicas
                    .iter()
                    .map(|addr| {
                        reqwest::Client::builder()
                            .pool_max_idle_per_host(1024)
                            .local_address(from)
                            .resolve(&host, *addr)
                            .build()
                            .unwrap()
                    })
                    .collect()
            });
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let token = Arc::new(format!("{issuer}/token"));
            let audience = Arc::new(audience);
            let (latencies, errors, elapsed) =
                drive(args.concurrency, args.seconds, args.rate, move || {
                    let turn = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let client = clients[turn % clients.len()].clone();
                    let (token, audience) = (token.clone(), audience.clone());
                    async move { agent_once(&client, &token, &audience).await }
                })
                .await;
            report("agent tokens over HTTP", latencies, errors, elapsed);
        }
        Scenario::ClientCredentials {
            token_url,
            client_id,
            client_secret,
            audience,
            resource,
            scope,
        } => {
            let mut form = vec![("grant_type", "client_credentials".to_owned())];
            form.extend(audience.map(|a| ("audience", a)));
            form.extend(resource.map(|r| ("resource", r)));
            form.extend(scope.map(|s| ("scope", s)));
            let client = client(None);
            let fixed = Arc::new((token_url, client_id, client_secret, form));
            let (latencies, errors, elapsed) =
                drive(args.concurrency, args.seconds, args.rate, move || {
                    let (client, fixed) = (client.clone(), fixed.clone());
                    async move {
                        let (token_url, id, secret, form) = &*fixed;
                        client_credentials_once(&client, token_url, id, secret, form).await
                    }
                })
                .await;
            report("client_credentials tokens", latencies, errors, elapsed);
        }
    }
}
