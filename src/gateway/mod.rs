//! `tailpass gateway`: a reference AI gateway, and the only holder of the upstream API key.
//!
//! It is a reverse proxy for one upstream API (OpenAI's, Anthropic's or Gemini's), forwarding
//! only its inference endpoints. Each request must carry a tailpass access token for the
//! gateway's audience, checked locally with `tailpass-verify` (keys fetched from the issuer,
//! revocations followed on its feed, refused while the feed is stale), presented from the node
//! the token is bound to (asked of this gateway's own identity source). The token's `models`
//! claim limits the models (a token without one is refused unless `allow_unrestricted`), its
//! `quota` claim the requests and LLM tokens of its root run. Callers' credentials and account
//! headers never reach the upstream; the key is added here, and each call is audited. In
//! ambient mode ([`ambient`]) a tailnet caller that presents no token is served with a run
//! token the gateway obtains for it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderName, HeaderValue};
use axum::routing::{any, get};
use tailpass_verify::Verifier;
use tailpass_verify::feed::RevocationList;
use tailpass_verify::remote::{Now, RemoteVerifier};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::identity::IdentitySource;
use crate::identity::peer::Listener;

pub mod admission;
pub mod ambient;
pub mod body;
pub mod endpoints;
pub mod headers;
pub mod meter;
pub mod options;
pub mod proxy;
pub mod quota;

pub use endpoints::Api;
pub use headers::Auth;
pub use options::{GatewayIdentity, GatewayOptions};

/// Runs metered at once (distinct root runs with unexpired tokens).
const MAX_RUNS: usize = 100_000;
/// The output limit reserved for a call whose body sets none, by default.
pub const DEFAULT_MAX_TOKENS: u64 = 4_096;
/// How long the revocation feed may be stale before tokens are refused, by default, seconds.
pub const DEFAULT_MAX_FEED_STALENESS: u64 = 30;

/// The upstream API: where calls go, with which key, and what may be sent to it.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Its base URL; a request's path is appended to it.
    pub base_url: String,
    /// The file holding its API key, which only the gateway reads.
    pub key_file: PathBuf,
    /// The API it speaks: its built-in allowlist and usage shapes.
    pub api: Api,
    /// The header the key goes in.
    pub auth: Auth,
    /// Requests allowed beyond the API's inference endpoints (`paths`).
    pub paths: Vec<endpoints::Endpoint>,
    /// Headers set to these values on every upstream request, whatever the caller sent
    /// (`pin_headers`), e.g. `OpenAI-Organization`.
    pub pin_headers: Vec<(HeaderName, HeaderValue)>,
}

impl UpstreamSettings {
    /// An OpenAI-compatible upstream at `base_url` with its key in `key_file`, its key sent as
    /// a bearer token, inference endpoints only, no pinned headers.
    pub fn new(base_url: impl Into<String>, key_file: PathBuf) -> UpstreamSettings {
        UpstreamSettings {
            base_url: base_url.into(),
            key_file,
            api: Api::Openai,
            auth: Auth::Bearer,
            paths: Vec::new(),
            pin_headers: Vec::new(),
        }
    }
}

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
    /// The upstream API.
    pub upstream: UpstreamSettings,
    /// The local address connections to the issuer come from (a tailnet address).
    pub source_address: Option<IpAddr>,
    /// A JSONL mirror of the call log.
    pub audit_file: Option<PathBuf>,
    /// The output limit reserved for a call whose body sets none.
    pub default_max_tokens: u64,
    /// Whether tokens without a `models` claim may call the upstream (any model).
    pub allow_unrestricted: bool,
    /// Tokens are refused while the revocation feed has been stale this long, seconds.
    pub max_feed_staleness: u64,
    /// The longest token lifetime accepted, seconds: the issuer's `max_token_lifetime`, how
    /// long the gateway remembers a revocation.
    pub max_token_lifetime: u64,
    /// Ambient mode, when on: the longest run obtained for a tokenless caller, seconds.
    pub ambient: Option<u64>,
}

impl GatewaySettings {
    /// Settings with the defaults for everything but where it listens, whose tokens it
    /// takes, and its upstream (public URL `http://LISTEN`).
    pub fn new(
        listen: SocketAddr,
        issuer: impl Into<String>,
        audience: impl Into<String>,
        upstream: UpstreamSettings,
    ) -> GatewaySettings {
        GatewaySettings {
            listen,
            public_url: format!("http://{listen}"),
            issuer: issuer.into(),
            audience: audience.into(),
            upstream,
            source_address: None,
            audit_file: None,
            default_max_tokens: DEFAULT_MAX_TOKENS,
            allow_unrestricted: false,
            max_feed_staleness: DEFAULT_MAX_FEED_STALENESS,
            max_token_lifetime: tailpass_verify::feed::DEFAULT_MAX_LIFETIME,
            ambient: None,
        }
    }
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
    /// Occurs when the options or the configuration file are refused.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Occurs when the identity table (`--identity-file`) cannot be loaded.
    #[error(transparent)]
    Identity(#[from] crate::identity::local::LocalTableError),
    /// Occurs when ambient mode cannot start (the public URL, the issuer's token endpoint).
    #[error("ambient mode: {0}")]
    Ambient(String),
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
    /// The upstream key's header and value (marked sensitive so it is never logged).
    pub upstream_key: Option<(HeaderName, HeaderValue)>,
    /// What may be forwarded.
    pub endpoints: endpoints::Endpoints,
    /// Headers pinned on every upstream request.
    pub pin_headers: Vec<(HeaderName, HeaderValue)>,
    /// The output limit reserved for a call whose body sets none.
    pub default_max_tokens: u64,
    /// Whether tokens without a `models` claim are served.
    pub allow_unrestricted: bool,
    /// The URL callers use.
    pub public_url: String,
    /// The time.
    pub clock: Arc<dyn Clock>,
    /// Ambient mode: run tokens obtained for tokenless tailnet callers, when on.
    pub ambient: Option<ambient::Ambient>,
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

fn read_key(
    upstream: &UpstreamSettings,
) -> Result<Option<(HeaderName, HeaderValue)>, GatewayError> {
    if upstream.auth == Auth::None {
        return Ok(None);
    }
    let shown = upstream.key_file.display().to_string();
    let key = std::fs::read_to_string(&upstream.key_file)
        .map_err(|e| GatewayError::Key(shown.clone(), e.to_string()))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(GatewayError::Key(shown, "empty".into()));
    }
    upstream
        .auth
        .header(key)
        .map_err(|e| GatewayError::Key(shown, e))
}

/// `tailpass gateway`: starts, serves until SIGINT or SIGTERM, stops.
pub async fn run(
    global: &crate::config::GlobalOptions,
    args: &GatewayOptions,
) -> Result<(), GatewayError> {
    let (settings, identity) = GatewaySettings::resolve(global, args)?;
    let identity: Arc<dyn IdentitySource> = match identity {
        GatewayIdentity::Local(file) => {
            Arc::new(crate::identity::local::LocalTable::from_file(&file)?)
        }
        GatewayIdentity::Dev => Arc::new(crate::identity::local::LocalTable::dev()),
        GatewayIdentity::Tailscaled(socket) => {
            Arc::new(crate::identity::tailscaled::Tailscaled::new(socket))
        }
    };
    let running = start(settings, identity, Arc::new(crate::clock::SystemClock)).await?;
    tracing::info!(addr = %running.addr(), "gateway listening");
    crate::http::listen::wait_for_signal().await;
    running.shutdown().await;
    Ok(())
}

/// How long a call may take until its answer starts: an upstream that does not stream
/// answers only once the whole generation is done, so this is minutes, not seconds.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// The shared HTTP layers, as the gateway takes them. No `Host` name is required, only a
/// single `Host`: the gateway is reached by address or by whichever name the tailnet gives it
/// and knows none of them, and nothing it does rests on ambient authority (every call carries
/// a token, which a rebinding page does not have) — except ambient mode, which checks a
/// tokenless call's `Host` against the public URL itself ([`ambient`]). No route latency:
/// calls are metered by
/// [`meter`]. Bodies are bounded by [`admission::MAX_REQUEST`].
fn layers() -> crate::http::Layers {
    crate::http::Layers {
        metrics: None,
        host: None,
        body_limit: admission::MAX_REQUEST,
        time_limit: CALL_TIMEOUT,
    }
}

/// Starts the gateway: reads the key, discovers the issuer, follows its feed, listens.
pub async fn start(
    settings: GatewaySettings,
    identity: Arc<dyn IdentitySource>,
    clock: Arc<dyn Clock>,
) -> Result<RunningGateway, GatewayError> {
    let upstream_key = read_key(&settings.upstream)?;
    let mut issuer_client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(10));
    if let Some(ip) = settings.source_address {
        issuer_client = issuer_client.local_address(ip);
    }
    let issuer_client = issuer_client
        .build()
        .map_err(|e| GatewayError::Client(e.to_string()))?;
    let ambient = match settings.ambient {
        Some(run_lifetime) => {
            Some(ambient::Ambient::discover(issuer_client.clone(), &settings, run_lifetime).await?)
        }
        None => None,
    };
    let revocations = Arc::new(RevocationList::with_max_lifetime(
        settings.max_token_lifetime,
    ));
    let feed_clock = clock.clone();
    let verifier = Arc::new(
        RemoteVerifier::discover(
            issuer_client,
            Verifier::new(settings.issuer.clone(), settings.audience.clone())
                .with_revocations(revocations),
        )
        .await?
        .with_clock(Now(Arc::new(move || feed_clock.now())))
        .with_max_feed_staleness(settings.max_feed_staleness),
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
        upstream: settings.upstream.base_url.clone(),
        upstream_key,
        endpoints: endpoints::Endpoints::new(settings.upstream.api, &settings.upstream.paths),
        pin_headers: settings.upstream.pin_headers.clone(),
        default_max_tokens: settings.default_max_tokens,
        allow_unrestricted: settings.allow_unrestricted,
        public_url: settings.public_url.clone(),
        clock,
        ambient,
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
    let app = layers().apply(app);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigError, IdentityKind};

    /// `ARGV` (whose subcommand must be `gateway`), resolved; a refusal of the command line
    /// itself is an error too.
    fn resolve(argv: &[&str]) -> Result<(GatewaySettings, GatewayIdentity), ConfigError> {
        let (global, args) =
            crate::config::options::parse_for_test::<GatewayOptions>("gateway", argv)
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        GatewaySettings::resolve(&global, &args)
    }

    /// A config file holding `text`, and its path.
    fn config(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gateway.toml");
        std::fs::write(&file, text).unwrap();
        let path = file.to_str().unwrap().to_owned();
        (dir, path)
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/gateway.example.toml");
        let (_, file) = crate::config::file::load::<GatewayOptions>(Some(&path)).unwrap();
        assert_eq!(
            file.upstream.as_ref().unwrap().as_str(),
            "https://api.openai.com/"
        );
        assert_eq!(file.upstream_api, Some(Api::Openai));
        assert_eq!(file.identity, Some(IdentityKind::Tailscaled));
    }

    #[test]
    fn the_config_file_supplies_settings_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gateway.toml");
        std::fs::write(
            &file,
            r#"
            listen = "127.0.0.1:8080"
            issuer = "https://idp.example.ts.net/"
            audience = "https://gw.example.ts.net"
            upstream = "https://api.example.com"
            upstream_key_file = "/etc/tailpass/upstream.key"
            identity = "local"
            identity_file = "/etc/tailpass/peers.json"
            "#,
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let (settings, identity) = resolve(&["tailpass", "--config", path, "gateway"]).unwrap();
        assert_eq!(settings.issuer, "https://idp.example.ts.net");
        assert_eq!(settings.public_url, "http://127.0.0.1:8080");
        assert_eq!(
            identity,
            GatewayIdentity::Local("/etc/tailpass/peers.json".into())
        );
        let (settings, _) = resolve(&[
            "tailpass",
            "--config",
            path,
            "gateway",
            "--audience",
            "https://other.example",
        ])
        .unwrap();
        assert_eq!(settings.audience, "https://other.example");

        std::fs::write(&file, "listen = \"127.0.0.1:1\"\nupstream_url = \"x\"\n").unwrap();
        let err = resolve(&["tailpass", "--config", path, "gateway"]).unwrap_err();
        assert!(err.to_string().contains("upstream_url"), "{err}");
        let err = resolve(&["tailpass", "gateway", "--listen", "127.0.0.1:1"]).unwrap_err();
        assert!(err.to_string().contains("--issuer is required"), "{err}");
    }

    #[test]
    fn upstream_settings_come_from_the_file_and_flags_replace_them() {
        let (_dir, path) = config(
            r#"
            listen = "127.0.0.1:8080"
            issuer = "https://idp.example.ts.net"
            audience = "https://gw.example.ts.net"
            upstream = "https://api.anthropic.com"
            upstream_key_file = "/etc/tailpass/upstream.key"
            upstream_api = "anthropic"
            upstream_paths = ["POST /v1/messages/batches"]
            upstream_pin_headers = { "anthropic-beta" = "files-api-2025-04-14" }
            default_max_tokens = 1000
            allow_unrestricted = true
            max_feed_staleness = "1m"
            max_token_lifetime = 3600
            "#,
        );
        let path = path.as_str();
        let (settings, _) = resolve(&["tailpass", "--config", path, "gateway"]).unwrap();
        let upstream = &settings.upstream;
        assert_eq!(
            (upstream.api, upstream.auth),
            (Api::Anthropic, Auth::XApiKey)
        );
        assert_eq!(
            upstream.paths,
            vec![endpoints::Endpoint::parse("POST /v1/messages/batches").unwrap()]
        );
        assert_eq!(upstream.pin_headers[0].0.as_str(), "anthropic-beta");
        assert_eq!(
            (
                settings.default_max_tokens,
                settings.allow_unrestricted,
                settings.max_feed_staleness,
                settings.max_token_lifetime
            ),
            (1000, true, 60, 3600)
        );
        let (settings, _) = resolve(&[
            "tailpass",
            "--config",
            path,
            "gateway",
            "--upstream-api",
            "gemini",
            "--upstream-paths",
            "GET /v1beta/files",
            "--upstream-pin-headers",
            "x-goog-user-project=billing-1",
            "--max-feed-staleness",
            "10s",
        ])
        .unwrap();
        let upstream = &settings.upstream;
        assert_eq!(
            (upstream.api, upstream.auth),
            (Api::Gemini, Auth::XGoogApiKey)
        );
        assert_eq!(upstream.paths.len(), 1);
        assert_eq!(upstream.pin_headers[0].1, "billing-1");
        assert_eq!(settings.max_feed_staleness, 10);

        for (flag, value, error) in [
            ("--upstream-paths", "DELETE /v1/../files", "'..'"),
            (
                "--upstream-pin-headers",
                "authorization=x",
                "sets this header itself",
            ),
            ("--upstream-pin-headers", "no-equals-sign", "NAME=VALUE"),
        ] {
            let err = resolve(&["tailpass", "--config", path, "gateway", flag, value]).unwrap_err();
            assert!(err.to_string().contains(error), "{flag} {value}: {err}");
        }
    }
}
