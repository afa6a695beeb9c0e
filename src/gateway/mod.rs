//! `tailpass gateway`: a reference AI gateway, and the only holder of the upstream API key.
//!
//! It is a reverse proxy for an OpenAI-compatible API. Each request must carry a tailpass
//! access token for the gateway's audience, checked locally with `tailpass-verify` (keys
//! fetched from the issuer, revocations followed on its feed), presented from the node the
//! token is bound to (asked of this gateway's own identity source). The token's `models` claim
//! limits the models, its `quota` claim the requests and LLM tokens of its root run. Callers'
//! credentials never reach the upstream; the key is added here, and each call is audited.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::http::HeaderValue;
use axum::routing::{any, get};
use tailpass_verify::Verifier;
use tailpass_verify::remote::RemoteVerifier;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::http::peer::Listener;
use crate::identity::IdentitySource;

pub mod meter;
pub mod proxy;
pub mod quota;

/// Runs metered at once (distinct root runs with unexpired tokens).
const MAX_RUNS: usize = 100_000;

/// The gateway's settings, resolved.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Where it listens.
    pub listen: SocketAddr,
    /// The URL callers use to reach it (DPoP proofs' `htu`).
    pub public_url: String,
    /// The issuer trusted.
    pub issuer: String,
    /// The audience tokens must carry.
    pub audience: String,
    /// The upstream API's base URL.
    pub upstream: String,
    /// The file holding the upstream API key.
    pub upstream_key_file: PathBuf,
    /// The local address connections to the issuer come from (a tailnet address).
    pub source_address: Option<IpAddr>,
    /// A JSONL mirror of the call log.
    pub audit_file: Option<PathBuf>,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Occurs when the upstream key file cannot be read or is empty.
    #[error("upstream key file {0}: {1}")]
    Key(String, String),
    /// Occurs when the issuer cannot be reached or understood.
    #[error("issuer: {0}")]
    Issuer(#[from] tailpass_verify::remote::RemoteError),
    /// Occurs on I/O failures (listening, the audit file).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Occurs when the HTTP client cannot be built.
    #[error("http client: {0}")]
    Client(String),
}

/// What the proxy handler shares.
#[derive(Clone)]
pub struct GatewayState(Arc<Shared>);

impl std::ops::Deref for GatewayState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`GatewayState`].
pub struct Shared {
    /// Token checks.
    pub verifier: Arc<RemoteVerifier>,
    /// Who presents a token.
    pub identity: Arc<dyn IdentitySource>,
    /// Budgets by root run.
    pub quotas: Arc<quota::Quotas>,
    /// Call records.
    pub log: meter::CallLog,
    /// The client for the upstream.
    pub http: reqwest::Client,
    /// The upstream's base URL.
    pub upstream: String,
    /// `Bearer <key>`, marked sensitive so it is never logged.
    pub upstream_authorization: HeaderValue,
    /// The URL callers use.
    pub public_url: String,
    /// The time.
    pub clock: Arc<dyn Clock>,
}

/// A running gateway.
pub struct RunningGateway {
    addr: SocketAddr,
    verifier: Arc<RemoteVerifier>,
    quotas: Arc<quota::Quotas>,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningGateway {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its verifier (keys and revocation list), for tests and tools that wait on the feed.
    pub fn verifier(&self) -> &Arc<RemoteVerifier> {
        &self.verifier
    }

    /// Its budgets.
    pub fn quotas(&self) -> &Arc<quota::Quotas> {
        &self.quotas
    }

    /// Stops listening and following the feed.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

fn read_key(path: &std::path::Path) -> Result<HeaderValue, GatewayError> {
    let shown = path.display().to_string();
    let key = std::fs::read_to_string(path)
        .map_err(|e| GatewayError::Key(shown.clone(), e.to_string()))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(GatewayError::Key(shown, "empty".into()));
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
        .map_err(|_| GatewayError::Key(shown, "not a valid header value".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

impl GatewaySettings {
    /// Resolves the command line.
    pub fn from_args(args: &crate::cli::GatewayArgs) -> GatewaySettings {
        GatewaySettings {
            listen: args.listen,
            public_url: args
                .public_url
                .as_ref()
                .map(|u| u.as_str().trim_end_matches('/').to_owned())
                .unwrap_or_else(|| format!("http://{}", args.listen)),
            issuer: args.issuer.as_str().trim_end_matches('/').to_owned(),
            audience: args.audience.clone(),
            upstream: args.upstream.as_str().trim_end_matches('/').to_owned(),
            upstream_key_file: args.upstream_key_file.clone(),
            source_address: args.source_address,
            audit_file: args.audit_file.clone(),
        }
    }
}

/// `tailpass gateway`: starts, serves until SIGINT or SIGTERM, stops.
pub async fn run(args: &crate::cli::GatewayArgs, dev: bool) -> anyhow::Result<()> {
    use crate::cli::IdentityKind;
    let identity: Arc<dyn IdentitySource> = match (args.identity, &args.identity_file) {
        (Some(IdentityKind::Local) | None, Some(file)) => {
            Arc::new(crate::identity::local::LocalTable::from_file(file)?)
        }
        (Some(IdentityKind::Local) | None, None) if dev => {
            Arc::new(crate::identity::local::LocalTable::dev())
        }
        (Some(IdentityKind::Local), None) => {
            anyhow::bail!("--identity local needs --identity-file")
        }
        (None | Some(IdentityKind::Tailscaled), None) => {
            Arc::new(crate::identity::tailscaled::Tailscaled::new(
                args.tailscaled_socket
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(crate::identity::tailscaled::DEFAULT_SOCKET)),
            ))
        }
        (Some(IdentityKind::Tsnet), _) => {
            anyhow::bail!("the gateway asks tailscaled or a local table; tsnet is not supported")
        }
        (Some(IdentityKind::Tailscaled), Some(_)) => {
            anyhow::bail!("--identity-file only applies to --identity local")
        }
    };
    let settings = GatewaySettings::from_args(args);
    let running = start(settings, identity, Arc::new(crate::clock::SystemClock)).await?;
    tracing::info!(addr = %running.addr(), "gateway listening");
    crate::server::wait_for_signal().await;
    running.shutdown().await;
    Ok(())
}

/// Starts the gateway: reads the key, discovers the issuer, follows its feed, listens.
pub async fn start(
    settings: GatewaySettings,
    identity: Arc<dyn IdentitySource>,
    clock: Arc<dyn Clock>,
) -> Result<RunningGateway, GatewayError> {
    let upstream_authorization = read_key(&settings.upstream_key_file)?;
    let mut issuer_client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(10));
    if let Some(ip) = settings.source_address {
        issuer_client = issuer_client.local_address(ip);
    }
    let issuer_client = issuer_client
        .build()
        .map_err(|e| GatewayError::Client(e.to_string()))?;
    let verifier = Arc::new(
        RemoteVerifier::discover(
            issuer_client,
            Verifier::new(settings.issuer.clone(), settings.audience.clone()),
        )
        .await?,
    );
    let feed = verifier.follow_feed();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| GatewayError::Client(e.to_string()))?;
    let quotas = Arc::new(quota::Quotas::new(MAX_RUNS));
    let state = GatewayState(Arc::new(Shared {
        verifier: verifier.clone(),
        identity,
        quotas: quotas.clone(),
        log: meter::CallLog::open(settings.audit_file.as_deref())?,
        http,
        upstream: settings.upstream.clone(),
        upstream_authorization,
        public_url: settings.public_url.clone(),
        clock,
    }));
    let metrics = state.log.metrics().clone();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics.render() }
            }),
        )
        .fallback(any(proxy::proxy))
        .with_state(state);
    let listener = TcpListener::bind(settings.listen).await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let serve = tokio::spawn(crate::http::listen::serve_tcp(
        listener,
        None,
        Listener::Main,
        app,
        shutdown.clone(),
    ));
    Ok(RunningGateway {
        addr,
        verifier,
        quotas,
        shutdown,
        tasks: vec![feed, serve],
    })
}
