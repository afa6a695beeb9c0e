//! Running the server: open the state, bind the listeners, keep the keys and the store tidy,
//! and shut down cleanly on SIGTERM.
//!
//! [`start`] returns a handle so that tests run the real server in-process on an ephemeral
//! port; [`run`] is `tailpass serve`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::clock::Clock;
use crate::config::{IdentitySettings, Settings, TlsSettings};
use crate::http::listen;
use crate::http::tls::{self, TlsError};
use crate::identity::IdentitySource;
use crate::identity::local::{LocalTable, LocalTableError};
use crate::identity::peer::Listener;
use crate::identity::tailscaled::{LocalApi, Tailscaled};
use crate::oauth::paths;
use crate::state::{AppState, OpenError, Tasks};

/// How often keys are checked for scheduled rotation and expiry.
const KEY_UPKEEP: Duration = Duration::from_secs(60);
/// How often expired codes, families and revocations are purged (from the store and from the
/// revocation index). Each purge holds the writer while it deletes, and every write waits for
/// it: purged every ten seconds, a purge is a sixth of what a minute's is, and what expired is
/// gone within seconds. An empty purge costs a few index lookups.
const PURGE_EVERY: Duration = Duration::from_secs(10);
/// How often the minute's aggregate of unidentified denials is written.
const AGGREGATE_EVERY: Duration = Duration::from_secs(60);
/// How long a redeemed code is kept past its expiry, to recognise a replay.
const CODE_GRACE: u64 = 600;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Occurs when a listener cannot bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Occurs when the state cannot be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Occurs when the identity table is unusable.
    #[error(transparent)]
    Identity(#[from] LocalTableError),
    /// Occurs when TLS cannot be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Occurs when another server already serves this state directory.
    #[error("another tailpass is running with state directory {0} (its admin socket answers)")]
    AlreadyRunning(String),
    /// Occurs when no issuer URL can be formed from the bound address.
    #[error("cannot form an issuer URL: {0}")]
    Issuer(String),
    /// Occurs when the embedded tailnet node cannot start.
    #[error("embedded tailnet node: {0}")]
    Tsnet(String),
}

/// A running server.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    proxy_addr: Option<SocketAddr>,
    health_addr: Option<SocketAddr>,
    admin_socket: PathBuf,
    state: Option<AppState>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    background: Option<Tasks>,
}

impl Running {
    /// The main listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy listener's address.
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        self.proxy_addr
    }

    /// The probes' listener's address (`--health-listen`).
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_addr
    }

    /// The admin socket's path.
    pub fn admin_socket(&self) -> &Path {
        &self.admin_socket
    }

    /// The issuer URL.
    pub fn issuer(&self) -> &str {
        self.state
            .as_ref()
            .map(|s| s.issuer.url())
            .unwrap_or_default()
    }

    /// The shared state, for tests that need to look inside.
    pub fn state(&self) -> Option<&AppState> {
        self.state.as_ref()
    }

    /// Stops accepting, lets open requests finish, commits the last audit events.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        // The last handles to the audit log and the logout sender go with the state; they
        // then drain their queues and stop, the open minute's denial aggregate included.
        if let Some(state) = self.state.take()
            && let Err(e) = state.audit.flush_aggregates(None).await
        {
            tracing::error!(error = %e, "could not write the last denial aggregate");
        }
        if let Some(background) = self.background.take() {
            background.finish().await;
        }
        let _ = std::fs::remove_file(&self.admin_socket);
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// The identity source, and the embedded node when there is one (it also listens).
async fn identity_source(
    settings: &Settings,
) -> Result<(Arc<dyn IdentitySource>, Option<EmbeddedNode>), ServeError> {
    Ok(match &settings.identity {
        IdentitySettings::Dev => (Arc::new(LocalTable::dev()), None),
        IdentitySettings::Local(path) => (Arc::new(LocalTable::from_file(path)?), None),
        IdentitySettings::Tailscaled(socket) => (Arc::new(Tailscaled::new(socket.clone())), None),
        #[cfg(feature = "tsnet")]
        IdentitySettings::Tsnet { hostname } => {
            crate::private_fs::ensure_dir(&settings.paths.state_dir)
                .map_err(|e| ServeError::Tsnet(e.to_string()))?;
            let node = crate::identity::tsnet::Tsnet::join(&settings.paths.state_dir, hostname)
                .await
                .map_err(|e| ServeError::Tsnet(e.to_string()))?;
            (Arc::new(node.clone()), Some(node))
        }
        #[cfg(not(feature = "tsnet"))]
        IdentitySettings::Tsnet { .. } => {
            return Err(ServeError::Tsnet(
                "this build has no `tsnet` feature".into(),
            ));
        }
    })
}

/// The embedded tailnet node, which also listens.
#[cfg(feature = "tsnet")]
type EmbeddedNode = crate::identity::tsnet::Tsnet;
/// Without the `tsnet` feature there is never an embedded node.
#[cfg(not(feature = "tsnet"))]
type EmbeddedNode = std::convert::Infallible;

/// Binds the admin socket, refusing to start if another server answers on it and removing a
/// stale one left by a crash. The state directory is 0700, so the socket is private from the
/// moment it exists; its own mode is then set to 0600 as well.
async fn admin_listener(path: &Path) -> Result<UnixListener, ServeError> {
    let bind_error = |source| ServeError::Bind {
        addr: path.display().to_string(),
        source,
    };
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ServeError::AlreadyRunning(
                path.parent().unwrap_or(path).display().to_string(),
            ));
        }
        std::fs::remove_file(path).map_err(bind_error)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_error)?;
    }
    Ok(listener)
}

/// Starts the server with `settings`, reading time from `clock`.
pub async fn start(settings: Settings, clock: Arc<dyn Clock>) -> Result<Running, ServeError> {
    // reqwest and rustls may both pull in a crypto provider; choose one explicitly, or the
    // first TLS handshake panics inside a task (docs/design.md "Notes for maintainers").
    let _ = rustls::crypto::ring::default_provider().install_default();

    let main = bind(settings.listen).await?;
    let addr = main.local_addr().map_err(|source| ServeError::Bind {
        addr: settings.listen.to_string(),
        source,
    })?;
    let issuer_url = match &settings.issuer {
        Some(url) => url.clone(),
        None => {
            let scheme = if settings.tls.is_some() {
                "https"
            } else {
                "http"
            };
            Url::parse(&format!("{scheme}://{addr}"))
                .map_err(|e| ServeError::Issuer(format!("{addr}: {e}")))?
        }
    };
    let issuer = crate::issuer::Issuer::new(&issuer_url);
    let (identity, embedded) = identity_source(&settings).await?;
    let shutdown = CancellationToken::new();

    let tls = match &settings.tls {
        None => None,
        Some(TlsSettings::Files { cert, key }) => Some(tls::from_files(cert, key)?),
        Some(TlsSettings::Tailscaled(socket)) => {
            let host = issuer_url.host_str().unwrap_or_default().to_owned();
            Some(tls::from_tailscaled(LocalApi::new(socket.clone()), host, shutdown.clone()).await?)
        }
    };
    let proxy = match settings.proxy_listen {
        Some(proxy) => Some(bind(proxy).await?),
        None => None,
    };
    let proxy_addr = proxy.as_ref().and_then(|l| l.local_addr().ok());
    let health = match settings.health_listen {
        Some(health) => Some(bind(health).await?),
        None => None,
    };
    let health_addr = health.as_ref().and_then(|l| l.local_addr().ok());

    let socket_path = settings.paths.admin_socket();
    let (state, background) = AppState::open(settings.clone(), issuer, identity, clock).await?;
    let admin = admin_listener(&socket_path).await?;

    let router = crate::http::router::router(state.clone());
    let mut tasks = vec![tokio::spawn(listen::serve_tcp(
        main,
        tls.map(TlsAcceptor::from),
        Listener::Main,
        router.clone(),
        shutdown.clone(),
    ))];
    if let Some(proxy) = proxy {
        tasks.push(tokio::spawn(listen::serve_tcp(
            proxy,
            None,
            Listener::Proxy,
            router.clone(),
            shutdown.clone(),
        )));
    }
    if let Some(health) = health {
        tasks.push(tokio::spawn(listen::serve_tcp(
            health,
            None,
            Listener::Health,
            crate::http::router::health_router(state.clone()),
            shutdown.clone(),
        )));
    }
    if let Some(node) = embedded {
        tasks.push(
            serve_embedded(
                node,
                settings.listen.port(),
                router.clone(),
                shutdown.clone(),
            )
            .await?,
        );
    }
    tasks.push(tokio::spawn(listen::serve_unix(
        admin,
        crate::http::router::admin_socket_router(state.clone()),
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(upkeep(state.clone(), shutdown.clone())));

    tracing::info!(%addr, issuer = state.issuer.url(), "tailpass listening");
    Ok(Running {
        addr,
        proxy_addr,
        health_addr,
        admin_socket: socket_path,
        state: Some(state),
        shutdown,
        tasks,
        background: Some(background),
    })
}

/// Listens on the embedded node's tailnet address as well.
#[cfg(feature = "tsnet")]
async fn serve_embedded(
    node: EmbeddedNode,
    port: u16,
    router: axum::Router,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, ServeError> {
    let listener = node
        .listen(port)
        .await
        .map_err(|e| ServeError::Tsnet(e.to_string()))?;
    Ok(tokio::spawn(listen::serve_tsnet(
        listener, router, shutdown,
    )))
}

#[cfg(not(feature = "tsnet"))]
async fn serve_embedded(
    node: EmbeddedNode,
    _: u16,
    _: axum::Router,
    _: CancellationToken,
) -> Result<JoinHandle<()>, ServeError> {
    match node {}
}

/// Waits for the next key notification; forever when there is none (or no longer one).
async fn key_change(changes: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    if let Some(receiver) = changes
        && receiver.changed().await.is_ok()
    {
        return;
    }
    *changes = None;
    std::future::pending::<()>().await;
}

/// Reloads shared keys off the async workers (the key storage blocks).
async fn reload_keys(state: &AppState) {
    let keys = state.keys.clone();
    match tokio::task::spawn_blocking(move || keys.reload()).await {
        Ok(Ok(true)) => tracing::debug!("signing keys reloaded: another replica changed them"),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not reload the shared signing keys"),
        Err(e) => tracing::error!(error = %e, "key reload task failed"),
    }
}

/// Scheduled key rotation, retired-key expiry, store purging, reading back the revocations and
/// key changes other replicas made (shared keys: at each notification, and every
/// [`crate::keys::RELOAD_EVERY`] whatever the notifications), and sharing rate counts with them.
async fn upkeep(state: AppState, shutdown: CancellationToken) {
    let shared = state.keys.shared();
    let mut key_changes = if shared {
        state.store.key_changes()
    } else {
        None
    };
    let mut reload_tick = tokio::time::interval(crate::keys::RELOAD_EVERY);
    reload_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut keys_tick = tokio::time::interval(KEY_UPKEEP);
    let mut purge_tick = tokio::time::interval(PURGE_EVERY);
    let mut aggregate_tick = tokio::time::interval(AGGREGATE_EVERY);
    let mut revocations_tick = tokio::time::interval(crate::revocation::POLL_EVERY);
    revocations_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rate_tick = tokio::time::interval(crate::ratelimit::FLUSH_EVERY);
    rate_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = rate_tick.tick(), if state.rate.is_shared() => {
                if let Err(e) = state.rate.flush(state.store.as_ref(), state.now()).await {
                    tracing::warn!(error = %e, "could not share rate counts");
                }
            }
            () = key_change(&mut key_changes) => reload_keys(&state).await,
            _ = reload_tick.tick(), if shared => reload_keys(&state).await,
            _ = revocations_tick.tick() => {
                if let Err(e) = state.revocations.refresh(state.store.as_ref()).await {
                    tracing::warn!(error = %e, "could not read back revocations");
                }
            }
            _ = aggregate_tick.tick() => {
                if let Err(e) = state.audit.flush_aggregates(Some(state.now())).await {
                    tracing::error!(error = %e, "could not write the denial aggregate");
                }
            }
            _ = keys_tick.tick() => {
                let keys = state.keys.clone();
                match tokio::task::spawn_blocking(move || keys.maintain()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "key upkeep failed"),
                    Err(e) => tracing::error!(error = %e, "key upkeep task failed"),
                }
            }
            _ = purge_tick.tick() => {
                let started = std::time::Instant::now();
                let now = state.now();
                let horizon = now.minus(state.settings.max_token_lifetime + 60);
                let forgotten = state.revocations.forget(horizon, now);
                if forgotten > 0 {
                    tracing::debug!(forgotten, "revocations no valid token can match forgotten");
                }
                match state.store.purge(now, CODE_GRACE, horizon).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(
                        purged = n,
                        took_ms = started.elapsed().as_millis(),
                        "purged expired state"
                    ),
                    Err(e) => tracing::error!(error = %e, "purge failed"),
                }
                if let Some(retention) = state.settings.audit_retention {
                    match state.store.purge_audit_before(now.minus(retention)).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(events = n, "audit events past retention dropped"),
                        Err(e) => tracing::error!(error = %e, "audit retention purge failed"),
                    }
                }
            }
        }
    }
}

/// `tailpass serve`: starts, prints where to go in `--dev`, and runs until SIGTERM or Ctrl-C.
pub async fn run(settings: Settings) -> Result<(), ServeError> {
    let dev = settings.paths.dev;
    let state_dir = settings.paths.state_dir.clone();
    let keys_dir = settings.paths.keys_dir.clone();
    let running = start(settings, Arc::new(crate::clock::SystemClock)).await?;
    if dev {
        let issuer = running.issuer().to_owned();
        println!(
            "tailpass is running in development mode: every loopback caller is you, with admin rights."
        );
        println!("  issuer     {issuer}");
        println!("  discovery  {issuer}{}", paths::OPENID_CONFIGURATION);
        println!("  jwks       {issuer}{}", paths::JWKS);
        println!("  register   {issuer}{}", paths::REGISTER);
        println!("  admin UI   {issuer}/admin");
        println!("  admin API  {issuer}{}/clients", crate::admin::PREFIX);
        println!(
            "  state      {}   keys {}",
            state_dir.display(),
            keys_dir.display()
        );
        println!("try (an agent token for this machine, no secret needed):");
        println!(
            "  curl -s -d grant_type=client_credentials -d audience=https://api.example {issuer}{}",
            paths::TOKEN
        );
    }
    listen::wait_for_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}
