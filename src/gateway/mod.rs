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

/// The gateway's TOML file (`--config`): its flags' names in snake_case, plus the global
/// flags, which it accepts and does not use.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayFile {
    listen: Option<SocketAddr>,
    public_url: Option<url::Url>,
    issuer: Option<url::Url>,
    audience: Option<String>,
    upstream: Option<url::Url>,
    upstream_key_file: Option<PathBuf>,
    source_address: Option<IpAddr>,
    identity: Option<crate::cli::IdentityKind>,
    identity_file: Option<PathBuf>,
    tailscaled_socket: Option<PathBuf>,
    audit_file: Option<PathBuf>,
    dev: Option<bool>,
    state_dir: Option<PathBuf>,
    keys_dir: Option<PathBuf>,
}

/// Where presenting nodes' identities come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayIdentity {
    /// tailscaled's LocalAPI socket.
    Tailscaled(PathBuf),
    /// A WhoIs table file.
    Local(PathBuf),
    /// `--dev`: every loopback caller is the OS user's node.
    Dev,
}

impl GatewaySettings {
    /// Resolves flags (environment included) over the `--config` file; the settings and the
    /// identity source to use.
    pub fn resolve(
        global: &crate::cli::GlobalArgs,
        args: &crate::cli::GatewayArgs,
    ) -> anyhow::Result<(GatewaySettings, GatewayIdentity)> {
        use crate::cli::IdentityKind;
        let file: GatewayFile = match &global.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            }
            None => GatewayFile::default(),
        };
        let _ = (&file.state_dir, &file.keys_dir);
        let required = |name: &str| {
            anyhow::anyhow!("--{name} is required (flag, TAILPASS_ variable or config file)")
        };
        let listen = args
            .listen
            .or(file.listen)
            .ok_or_else(|| required("listen"))?;
        let trimmed = |u: &url::Url| u.as_str().trim_end_matches('/').to_owned();
        let settings = GatewaySettings {
            listen,
            public_url: args
                .public_url
                .as_ref()
                .or(file.public_url.as_ref())
                .map(trimmed)
                .unwrap_or_else(|| format!("http://{listen}")),
            issuer: args
                .issuer
                .as_ref()
                .or(file.issuer.as_ref())
                .map(trimmed)
                .ok_or_else(|| required("issuer"))?,
            audience: args
                .audience
                .clone()
                .or(file.audience)
                .ok_or_else(|| required("audience"))?,
            upstream: args
                .upstream
                .as_ref()
                .or(file.upstream.as_ref())
                .map(trimmed)
                .ok_or_else(|| required("upstream"))?,
            upstream_key_file: args
                .upstream_key_file
                .clone()
                .or(file.upstream_key_file)
                .ok_or_else(|| required("upstream-key-file"))?,
            source_address: args.source_address.or(file.source_address),
            audit_file: args.audit_file.clone().or(file.audit_file),
        };
        let dev = global.dev || file.dev.unwrap_or(false);
        let identity_file = args.identity_file.clone().or(file.identity_file);
        let identity = match (args.identity.or(file.identity), identity_file) {
            (Some(IdentityKind::Local) | None, Some(path)) => GatewayIdentity::Local(path),
            (Some(IdentityKind::Local) | None, None) if dev => GatewayIdentity::Dev,
            (Some(IdentityKind::Local), None) => {
                anyhow::bail!("--identity local needs --identity-file")
            }
            (None | Some(IdentityKind::Tailscaled), None) => GatewayIdentity::Tailscaled(
                args.tailscaled_socket
                    .clone()
                    .or(file.tailscaled_socket)
                    .unwrap_or_else(|| PathBuf::from(crate::identity::tailscaled::DEFAULT_SOCKET)),
            ),
            (Some(IdentityKind::Tsnet), _) => {
                anyhow::bail!(
                    "the gateway asks tailscaled or a local table; tsnet is not supported"
                )
            }
            (Some(IdentityKind::Tailscaled), Some(_)) => {
                anyhow::bail!("--identity-file only applies to --identity local")
            }
        };
        Ok((settings, identity))
    }
}

/// `tailpass gateway`: starts, serves until SIGINT or SIGTERM, stops.
pub async fn run(
    global: &crate::cli::GlobalArgs,
    args: &crate::cli::GatewayArgs,
) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn resolve(argv: &[&str]) -> anyhow::Result<(GatewaySettings, GatewayIdentity)> {
        let cli = Cli::try_parse_from(argv)?;
        let Command::Gateway(args) = cli.command else {
            anyhow::bail!("not the gateway command")
        };
        GatewaySettings::resolve(&cli.global, &args)
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let file: GatewayFile =
            toml::from_str(include_str!("../../deploy/gateway.example.toml")).unwrap();
        assert_eq!(file.upstream.unwrap().as_str(), "https://api.openai.com/");
        assert_eq!(file.identity, Some(crate::cli::IdentityKind::Tailscaled));
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
}
