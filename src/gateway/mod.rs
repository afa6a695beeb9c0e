//! `tailpass gateway`: a reference AI gateway, and the only holder of the upstream API keys.
//!
//! It is a reverse proxy for model APIs (OpenAI's, Anthropic's, Gemini's and compatible ones),
//! each under its own path prefix ([`routes`]), forwarding only their inference endpoints.
//! Each request must carry a tailpass access token for the
//! gateway's audience, checked locally with `tailpass-verify` (keys fetched from the issuer,
//! revocations followed on its feed, refused while the feed is stale), presented from the node
//! the token is bound to (asked of this gateway's own identity source). The token's `models`
//! claim limits the models (a token without one is refused unless `allow_unrestricted`), its
//! `tools` claim the tools a request may offer the model, its `quota` claim the requests and
//! LLM tokens of its root run (kept in memory, written behind to a [`budget_store`] so they
//! survive restarts and are shared by replicas on PostgreSQL). Callers' credentials and
//! account headers never reach the upstream; the key is added here, and each call is audited.
//! In ambient mode ([`ambient`]) a tailnet caller that presents no token is served with a run
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
pub mod budget_store;
pub mod endpoints;
pub mod headers;
pub mod mcp;
pub mod meter;
pub mod options;
pub mod proxy;
pub mod quota;
pub mod resource;
pub mod routes;
pub mod strict_json;
pub mod tools;

pub use endpoints::Api;
pub use headers::Auth;
pub use options::{GatewayIdentity, GatewayOptions};

/// Runs metered at once (distinct root runs with unexpired tokens).
const MAX_RUNS: usize = 100_000;
/// The name of the single upstream given by flags.
pub const DEFAULT_UPSTREAM: &str = "default";
/// The output limit reserved for a call whose body sets none, by default.
pub const DEFAULT_MAX_TOKENS: u64 = 4_096;
/// How long the revocation feed may be stale before tokens are refused, by default, seconds.
pub const DEFAULT_MAX_FEED_STALENESS: u64 = 30;

/// One upstream API: where calls go, with which key, and what may be sent to it.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Its name, in the call log and metrics.
    pub name: String,
    /// The path prefix that routes to it (`/anthropic`); `""` for the single upstream given by
    /// flags.
    pub prefix: String,
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
    /// An OpenAI-compatible upstream named `default` at `base_url` with its key in
    /// `key_file`, under no prefix, its key sent as a bearer token, inference endpoints only,
    /// no pinned headers.
    pub fn new(base_url: impl Into<String>, key_file: PathBuf) -> UpstreamSettings {
        UpstreamSettings {
            name: DEFAULT_UPSTREAM.to_owned(),
            prefix: String::new(),
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
    /// The upstream APIs, each under its own prefix.
    pub upstreams: Vec<UpstreamSettings>,
    /// The MCP servers fronted (`[[mcp]]`).
    pub mcp: Vec<mcp::McpSettings>,
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
    /// Where budgets persist (the global `--store`; for `tailpass gateway` by default
    /// `STATE_DIR/gateway-budgets.sqlite`); `None` keeps them in memory only, lost at restart.
    pub budget_store: Option<crate::store::StoreSettings>,
    /// Ambient mode, when on: the longest run obtained for a tokenless caller, seconds.
    pub ambient: Option<u64>,
}

impl GatewaySettings {
    /// Settings with the defaults for everything but where it listens, whose tokens it
    /// takes, and its one upstream (public URL `http://LISTEN`); more go in `upstreams`.
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
            upstreams: vec![upstream],
            mcp: Vec::new(),
            source_address: None,
            audit_file: None,
            default_max_tokens: DEFAULT_MAX_TOKENS,
            allow_unrestricted: false,
            max_feed_staleness: DEFAULT_MAX_FEED_STALENESS,
            max_token_lifetime: tailpass_verify::feed::DEFAULT_MAX_LIFETIME,
            budget_store: None,
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
    /// Occurs when the budget store cannot be opened or its totals read at start (the gateway
    /// does not start with budgets it cannot know).
    #[error("budget store: {0}")]
    Budgets(crate::store::StoreError),
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
    /// The client for the upstreams.
    pub http: reqwest::Client,
    /// The upstreams, by prefix, each with its key and allowlist.
    pub routes: routes::Routes,
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
    /// The budget flusher: stopped (with a last flush) once nothing can charge any more.
    flusher: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
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

    /// Stops listening and following the feed, then flushes the budgets' last charges.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
        if let Some((stop, flusher)) = self.flusher {
            stop.cancel();
            let _ = flusher.await;
        }
    }
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

/// The MCP routes of `settings`, and the RFC 9728 metadata routes: the gateway's and each
/// MCP route's.
fn mcp_routes(settings: &GatewaySettings) -> (Vec<Arc<mcp::McpRoute>>, Router<GatewayState>) {
    let (audience, issuer) = (&settings.audience, &settings.issuer);
    let routes: Vec<Arc<mcp::McpRoute>> = settings
        .mcp
        .iter()
        .map(|server| {
            Arc::new(mcp::McpRoute::new(
                server.clone(),
                audience,
                &settings.public_url,
            ))
        })
        .collect();
    let documents = settings
        .mcp
        .iter()
        .map(|server| {
            let document =
                resource::Metadata::new(audience, issuer, &server.prefix, Some(&server.name));
            (server.prefix.clone(), document)
        })
        .collect();
    let gateway = resource::Metadata::new(audience, issuer, "", None);
    (routes, resource::router(gateway, documents))
}

/// Starts the gateway: reads the key, discovers the issuer, follows its feed, listens.
pub async fn start(
    settings: GatewaySettings,
    identity: Arc<dyn IdentitySource>,
    clock: Arc<dyn Clock>,
) -> Result<RunningGateway, GatewayError> {
    let routes = routes::Routes::new(&settings.upstreams)?;
    mcp::McpSettings::validate(&settings.mcp)
        .and_then(|()| mcp::check_against_upstreams(&settings.mcp, &settings.upstreams))
        .map_err(|e| GatewayError::Config(crate::config::ConfigError::Invalid(e)))?;
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
    let log = meter::CallLog::open(settings.audit_file.as_deref())?;
    let flusher = match &settings.budget_store {
        Some(store) => {
            let store = budget_store::open(store)
                .await
                .map_err(GatewayError::Budgets)?;
            let flusher = budget_store::Flusher::new(
                store,
                quotas.clone(),
                log.metrics().clone(),
                clock.clone(),
            );
            flusher
                .load(MAX_RUNS)
                .await
                .map_err(GatewayError::Budgets)?;
            Some(flusher)
        }
        None => None,
    };
    let state = GatewayState(Arc::new(Shared {
        verifier: verifier.clone(),
        identity,
        quotas: quotas.clone(),
        log,
        http,
        routes,
        default_max_tokens: settings.default_max_tokens,
        allow_unrestricted: settings.allow_unrestricted,
        public_url: settings.public_url.clone(),
        clock,
        ambient,
    }));
    let metrics = state.log.metrics().clone();
    let (mcp_routes, metadata) = mcp_routes(&settings);
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics.render() }
            }),
        )
        .merge(mcp::router(&mcp_routes))
        .merge(metadata)
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
        flusher: flusher.map(|flusher| {
            let stop = CancellationToken::new();
            (stop.clone(), flusher.spawn(stop))
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigError;

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
        let path = path.to_str().unwrap();
        let (settings, identity) = resolve(&["tailpass", "--config", path, "gateway"]).unwrap();
        let routes: Vec<_> = settings
            .upstreams
            .iter()
            .map(|u| (u.name.as_str(), u.prefix.as_str(), u.api, u.auth))
            .collect();
        assert_eq!(
            routes,
            [
                ("openai", "/openai", Api::Openai, Auth::Bearer),
                ("anthropic", "/anthropic", Api::Anthropic, Auth::XApiKey),
                ("gemini", "/gemini", Api::Gemini, Auth::XGoogApiKey),
                ("openrouter", "/openrouter", Api::Openai, Auth::Bearer),
                ("local", "/local", Api::Openai, Auth::None),
            ]
        );
        assert_eq!(
            settings.upstreams[2].base_url,
            "https://generativelanguage.googleapis.com"
        );
        assert!(matches!(identity, GatewayIdentity::Tailscaled(_)));
    }

    #[test]
    fn upstream_tables_are_checked_and_do_not_mix_with_the_single_upstream_options() {
        let base = r#"
            listen = "127.0.0.1:8080"
            issuer = "https://idp.example.ts.net"
            audience = "https://gw.example.ts.net"
        "#;
        let table = |name: &str, prefix: &str, extra: &str| {
            format!(
                "[[upstream]]\nname = {name:?}\nprefix = {prefix:?}\nbase_url = \"https://x.example\"\nkey_file = \"/k\"\n{extra}\n"
            )
        };
        let (_dir, path) = config(&format!(
            "{base}{}{}",
            table(
                "a",
                "/a",
                "api = \"anthropic\"\npaths = [\"POST /v1/messages/batches\"]"
            ),
            table("b", "", "pin_headers = { \"OpenAI-Project\" = \"p\" }")
        ));
        let (settings, _) = resolve(&["tailpass", "--config", &path, "gateway"]).unwrap();
        assert_eq!(settings.upstreams.len(), 2);
        assert_eq!(
            (
                settings.upstreams[0].auth,
                settings.upstreams[0].paths.len()
            ),
            (Auth::XApiKey, 1)
        );
        assert_eq!(
            settings.upstreams[1].pin_headers[0].0.as_str(),
            "openai-project"
        );
        // --upstream URL on the command line replaces the file's tables.
        let (settings, _) = resolve(&[
            "tailpass",
            "--config",
            &path,
            "gateway",
            "--upstream",
            "https://one.example",
            "--upstream-key-file",
            "/k1",
        ])
        .unwrap();
        assert_eq!(
            (
                settings.upstreams.len(),
                settings.upstreams[0].prefix.as_str()
            ),
            (1, "")
        );
        for (text, error) in [
            (table("a", "/a", "") + &table("a", "/b", ""), "used twice"),
            (
                table("a", "/a", "") + &table("b", "/a", ""),
                "another upstream",
            ),
            (table("a", "/a/", ""), "must start with '/'"),
            (table("a", "/metrics", ""), "serves this path itself"),
            (table("a b", "/a", ""), "letters, digits"),
            (
                table("a", "/a", "auth = \"bearer\"\nwhat = 1"),
                "unknown field",
            ),
            (
                "[[upstream]]\nname = \"a\"\nprefix = \"/a\"\nbase_url = \"https://x.example\"\n"
                    .into(),
                "key_file is required",
            ),
            (table("a", "/a", "paths = [\"POST /v1/../files\"]"), "'..'"),
        ] {
            let (_dir, path) = config(&format!("{base}{text}"));
            let err = resolve(&["tailpass", "--config", &path, "gateway"]).unwrap_err();
            assert!(err.to_string().contains(error), "{text}: {err}");
        }
        let (_dir, path) = config(&format!(
            "{base}upstream_key_file = \"/k\"\n{}",
            table("a", "/a", "")
        ));
        let err = resolve(&["tailpass", "--config", &path, "gateway"]).unwrap_err();
        assert!(
            err.to_string().contains("applies to a single --upstream"),
            "{err}"
        );
        let (_dir, path) = config(&format!(
            "{base}[[upstream]]\nname = \"free\"\nprefix = \"/free\"\nbase_url = \"http://10.0.0.1\"\nauth = \"none\"\n"
        ));
        assert!(resolve(&["tailpass", "--config", &path, "gateway"]).is_ok());
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
        let upstream = &settings.upstreams[0];
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
        let upstream = &settings.upstreams[0];
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

    #[test]
    fn budgets_persist_in_the_state_dir_unless_the_global_store_says_where() {
        use crate::store::StoreLocation;
        let required = [
            "--listen",
            "127.0.0.1:1",
            "--issuer",
            "https://idp.example",
            "--audience",
            "https://gw.example",
            "--upstream",
            "https://api.example",
            "--upstream-key-file",
            "/k",
        ];
        let location = |global: &[&str]| {
            let mut argv = vec!["tailpass"];
            argv.extend_from_slice(global);
            argv.push("gateway");
            argv.extend_from_slice(&required);
            resolve(&argv).unwrap().0.budget_store.unwrap().location
        };
        let sqlite = |global: &[&str]| match location(global) {
            StoreLocation::Sqlite(path) => path,
            StoreLocation::Postgres(_) => panic!("{global:?}: not SQLite"),
        };
        assert_eq!(
            sqlite(&[]),
            PathBuf::from("/var/lib/tailpass/gateway-budgets.sqlite")
        );
        assert_eq!(
            sqlite(&["--dev"]),
            PathBuf::from(".tailpass/gateway-budgets.sqlite")
        );
        assert_eq!(
            sqlite(&["--state-dir", "/srv/gw"]),
            PathBuf::from("/srv/gw/gateway-budgets.sqlite")
        );
        assert_eq!(
            sqlite(&["--store", "sqlite:/srv/budgets.db"]),
            PathBuf::from("/srv/budgets.db")
        );
        assert!(matches!(
            location(&["--store", "postgres://gw:pw@db.example/tailpass"]),
            StoreLocation::Postgres(_)
        ));
        let (_dir, path) = config("store = \"postgres://gw:pw@db.example/tailpass\"\n");
        let mut argv = vec!["tailpass", "--config", path.as_str(), "gateway"];
        argv.extend_from_slice(&required);
        assert!(matches!(
            resolve(&argv).unwrap().0.budget_store.unwrap().location,
            StoreLocation::Postgres(_)
        ));
    }

    #[test]
    fn mcp_servers_come_from_the_files_tables_validated() {
        let base = r#"
            listen = "127.0.0.1:8080"
            issuer = "https://idp.example.ts.net"
            audience = "https://gw.example.ts.net"
            upstream = "https://api.openai.com"
            upstream_key_file = "/etc/tailpass/upstream.key"
            "#;
        let (_dir, path) = config(&format!(
            "{base}\n[[mcp]]\nname = \"docs\"\nurl = \"http://docs.internal:9000/mcp/\"\nprefix = \"/mcp/docs\"\n"
        ));
        let (settings, _) = resolve(&["tailpass", "--config", &path, "gateway"]).unwrap();
        assert_eq!(
            settings.mcp,
            vec![mcp::McpSettings::new(
                "docs",
                "http://docs.internal:9000/mcp",
                "/mcp/docs"
            )]
        );
        for (table, error) in [
            (
                "name = \"docs\"\nurl = \"http://d/mcp\"\nprefix = \"/healthz\"",
                "gateway's own",
            ),
            ("name = \"docs\"\nurl = \"http://d/mcp\"", "prefix"),
            (
                "name = \"docs\"\nurl = \"http://d/mcp\"\nprefix = \"/d\"\ntoken = \"x\"",
                "token",
            ),
        ] {
            let (_dir, path) = config(&format!("{base}\n[[mcp]]\n{table}\n"));
            let err = resolve(&["tailpass", "--config", &path, "gateway"]).unwrap_err();
            assert!(err.to_string().contains(error), "{table}: {err}");
        }
        let upstream = UpstreamSettings {
            name: "openai".into(),
            prefix: "/mcp/openai".into(),
            ..UpstreamSettings::new("https://api.openai.com", "/k".into())
        };
        let docs = mcp::McpSettings::new("docs", "http://d/mcp", "/mcp");
        let err =
            mcp::check_against_upstreams(std::slice::from_ref(&docs), &[upstream]).unwrap_err();
        assert!(err.contains("overlaps [[upstream]] \"openai\""), "{err}");
        let catch_all = UpstreamSettings::new("https://api.openai.com", "/k".into());
        assert!(mcp::check_against_upstreams(&[docs], &[catch_all]).is_ok());
    }
}
