//! Settings: the options of a command, declared once in [`options`] (flag, environment
//! variable, TOML key, default, help), layered and validated into one [`Settings`] ("parse,
//! don't validate": nothing downstream re-checks these).
//!
//! Layering is the same for every command with a file: flag, then environment (clap reads
//! both), then the file ([`file::load`]), then `--dev` defaults, then built-in defaults.
//! Combinations that would be unsafe — plain HTTP on a non-loopback address, a proxy listener
//! reachable from the network — are refused here with a message saying what to do instead.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use tailpass_verify::Alg;
use url::Url;

use crate::client_metadata::{DocumentSettings, Targets};
use crate::clients::redirect::RedirectRules;
use crate::clients::{Client, MetadataRules, Registrant};
use crate::policy::file::PolicyFile;
use crate::store::{StoreLocation, StoreSettings};

pub mod clients;
pub mod duration;
pub mod file;
pub mod options;

pub use duration::Seconds;
pub use file::FileError;
pub use options::{GlobalOptions, IdentityKind, LogFormat, ServeOptions};

use clients::static_clients;
use options::{DEFAULT_STATE_DIR, DEV_KEYS_DIR, DEV_LISTEN, DEV_STATE_DIR};

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Occurs when the configuration file cannot be read, parsed, or has unknown keys.
    #[error(transparent)]
    File(#[from] FileError),
    /// Occurs when settings contradict each other or are unsafe.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

/// Where caller identities come from, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySettings {
    /// `--dev`: every loopback caller is the OS user.
    Dev,
    /// A WhoIs table file.
    Local(PathBuf),
    /// tailscaled's LocalAPI socket.
    Tailscaled(PathBuf),
    /// An embedded node.
    Tsnet {
        /// Its host name on the tailnet.
        hostname: String,
    },
}

/// Where the TLS certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSettings {
    /// PEM files.
    Files {
        /// The certificate chain.
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
    },
    /// tailscaled's certificate for the issuer's host name, through the LocalAPI.
    Tailscaled(PathBuf),
}

/// Paths every command needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// Development mode.
    pub dev: bool,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The keys directory.
    pub keys_dir: PathBuf,
    /// The key-encryption key sealing the keys at rest, if they are sealed.
    pub key_encryption_key_file: Option<PathBuf>,
}

impl Paths {
    /// The admin socket.
    pub fn admin_socket(&self) -> PathBuf {
        self.state_dir.join("admin.sock")
    }

    /// The database file.
    pub fn database(&self) -> PathBuf {
        self.state_dir.join("tailpass.db")
    }
}

/// Validated settings of `tailpass serve`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Directories.
    pub paths: Paths,
    /// Where durable state lives.
    pub store: StoreSettings,
    /// The main listener.
    pub listen: SocketAddr,
    /// The issuer, or `None` in `--dev` to derive it from the bound address.
    pub issuer: Option<Url>,
    /// The `tailscale serve` listener.
    pub proxy_listen: Option<SocketAddr>,
    /// The access token algorithm.
    pub signing_alg: Alg,
    /// Algorithms with an active key.
    pub algs: BTreeSet<Alg>,
    /// Identity source.
    pub identity: IdentitySettings,
    /// How long a WhoIs may take.
    pub identity_timeout: std::time::Duration,
    /// How many WhoIs lookups may be in flight at once.
    pub identity_max_lookups: usize,
    /// The probes' listener (`/healthz`, `/readyz`).
    pub health_listen: Option<SocketAddr>,
    /// TLS, or `None` for plain HTTP on loopback.
    pub tls: Option<TlsSettings>,
    /// Access and ID token lifetime, seconds.
    pub token_lifetime: u64,
    /// Cap on any token's lifetime, seconds.
    pub max_token_lifetime: u64,
    /// Refresh family lifetime, seconds.
    pub refresh_lifetime: u64,
    /// Key rotation interval, seconds.
    pub key_rotation_interval: Option<u64>,
    /// How long audit events are kept, seconds; `None` keeps them forever.
    pub audit_retention: Option<u64>,
    /// Redirect URI rules.
    pub redirect_rules: RedirectRules,
    /// Log format.
    pub log_format: LogFormat,
    /// The local policy (groups, agent rules); empty without `--policy`.
    pub policy: PolicyFile,
    /// The tailnet capability holding agent rules.
    pub agent_capability: String,
    /// Default agent token lifetime, seconds.
    pub agent_token_lifetime: u64,
    /// Requests per minute per node, client or address.
    pub rate_limit: u32,
    /// Revocation feed streams reserved for peers allowed to introspect.
    pub feed_reserved_slots: usize,
    /// Whether DPoP proofs need a server nonce.
    pub dpop_nonce: bool,
    /// The audit log's JSONL mirror.
    pub audit_file: Option<PathBuf>,
    /// Clients from the file.
    pub static_clients: Vec<Client>,
    /// Client ID Metadata Documents: which hosts, which roots, which addresses.
    pub client_metadata: DocumentSettings,
}

impl Settings {
    /// The algorithm of ID tokens for clients that registered none: RS256, OIDC Core's
    /// default, while it is enabled.
    pub fn default_id_token_alg(&self) -> Alg {
        if self.algs.contains(&Alg::RS256) {
            Alg::RS256
        } else {
            self.signing_alg
        }
    }

    /// The rules client metadata from `registrant` is validated against.
    pub fn metadata_rules(&self, registrant: Registrant) -> MetadataRules {
        MetadataRules {
            redirect: self.redirect_rules,
            algs: self.algs.clone(),
            registrant,
        }
    }
}

/// Resolves the paths alone, for commands other than `serve` that share its state (their
/// `--config` is `serve`'s file).
pub fn resolve_paths(global: &GlobalOptions) -> Result<Paths, ConfigError> {
    let (file, _) = file::load::<ServeOptions>(global.config.as_deref())?;
    Ok(paths(global.clone().over(file)))
}

/// The directories, from the global options already layered over the file's.
fn paths(global: GlobalOptions) -> Paths {
    let dev = global.dev;
    let state_dir = global.state_dir.unwrap_or_else(|| {
        PathBuf::from(if dev {
            DEV_STATE_DIR
        } else {
            DEFAULT_STATE_DIR
        })
    });
    let keys_dir = global.keys_dir.unwrap_or_else(|| {
        if dev {
            PathBuf::from(DEV_KEYS_DIR)
        } else {
            state_dir.join("keys")
        }
    });
    Paths {
        dev,
        state_dir,
        keys_dir,
        key_encryption_key_file: global.key_encryption_key_file,
    }
}

/// The store: `--store` parsed, or the state directory's SQLite file.
fn store_settings(global: &GlobalOptions, paths: &Paths) -> Result<StoreSettings, ConfigError> {
    store_or(global, paths.database())
}

/// The store of a command that keeps a SQLite file of its own (the gateway's budgets):
/// `--store` parsed, or `default_file` in the state directory (`./.tailpass` with `--dev`, as
/// for `serve`). `global` is already layered over the file's.
pub fn store_with_default(
    global: &GlobalOptions,
    default_file: &str,
) -> Result<StoreSettings, ConfigError> {
    let paths = paths(global.clone());
    store_or(global, paths.state_dir.join(default_file))
}

/// `--store` parsed, or SQLite at `default`; the pool's settings.
fn store_or(global: &GlobalOptions, default: PathBuf) -> Result<StoreSettings, ConfigError> {
    let location = match &global.store {
        Some(url) => url.parse().map_err(|e| invalid(e.to_string()))?,
        None => StoreLocation::Sqlite(default),
    };
    let pool_size = global.store_pool_size();
    if pool_size == 0 {
        return Err(invalid("--store-pool-size must be at least 1"));
    }
    Ok(StoreSettings {
        location,
        ca_file: global.store_ca_file.clone(),
        pool_size,
    })
}

/// Layers flags, environment, file and defaults into the settings of `serve`.
pub fn resolve(global: &GlobalOptions, args: &ServeOptions) -> Result<Settings, ConfigError> {
    resolve_for(global, args, true)
}

/// The settings CLI commands need when no server is running and they open the state
/// themselves: like `serve`'s, but an issuer is not required.
pub fn resolve_offline(global: &GlobalOptions) -> Result<Settings, ConfigError> {
    resolve_for(global, &ServeOptions::default(), false)
}

fn resolve_for(
    global: &GlobalOptions,
    args: &ServeOptions,
    serving: bool,
) -> Result<Settings, ConfigError> {
    let (file_global, file) = file::load::<ServeOptions>(global.config.as_deref())?;
    let global = global.clone().over(file_global);
    let paths = paths(global.clone());
    let store = store_settings(&global, &paths)?;
    let dev = paths.dev;
    let options = args.clone().over(file);

    let signing_alg = options.signing_alg();
    let mut algs = BTreeSet::from([signing_alg]);
    if !options.no_rs256 {
        algs.insert(Alg::RS256);
    }
    algs.extend(options.enable_alg.iter().copied());

    let issuer = options.issuer.clone();
    if serving && !dev && issuer.is_none() {
        return Err(invalid(
            "--issuer is required (or use --dev to try tailpass locally)",
        ));
    }
    let listen = match (options.listen, &issuer) {
        (Some(listen), _) => listen,
        (None, Some(url)) if !dev => default_listen(url)?,
        (None, _) => DEV_LISTEN,
    };
    if let Some(url) = &issuer {
        check_issuer(url)?;
    }

    let identity = match (options.identity, options.identity_file.clone()) {
        (Some(IdentityKind::Local) | None, Some(path)) => IdentitySettings::Local(path),
        (Some(IdentityKind::Local), None) if dev => IdentitySettings::Dev,
        (Some(IdentityKind::Local), None) => {
            return Err(invalid("--identity local needs --identity-file"));
        }
        (None, None) if dev => IdentitySettings::Dev,
        (None | Some(IdentityKind::Tailscaled), None) => {
            IdentitySettings::Tailscaled(options.tailscaled_socket())
        }
        (Some(IdentityKind::Tailscaled | IdentityKind::Tsnet), Some(_)) => {
            return Err(invalid("--identity-file only applies to --identity local"));
        }
        (Some(IdentityKind::Tsnet), None) => IdentitySettings::Tsnet {
            hostname: options.hostname(),
        },
    };
    // A build without the `tsnet` feature refuses `--identity tsnet` when it starts; the
    // settings themselves are checked the same way in every build.

    let tls = match (options.tls_cert.clone(), options.tls_key.clone()) {
        (Some(cert), Some(key)) => Some(TlsSettings::Files { cert, key }),
        (None, None) => match &identity {
            IdentitySettings::Tailscaled(socket) if !listen.ip().is_loopback() => {
                Some(TlsSettings::Tailscaled(socket.clone()))
            }
            _ => None,
        },
        _ => return Err(invalid("--tls-cert and --tls-key go together")),
    };
    if tls.is_none() && !listen.ip().is_loopback() {
        return Err(invalid(format!(
            "refusing plain HTTP on {listen}: plain HTTP is only served on loopback. Give \
             --tls-cert and --tls-key, use --identity tailscaled for the node's certificate, \
             or listen on loopback behind `tailscale serve` with --proxy-listen"
        )));
    }
    let proxy_listen = options.proxy_listen;
    if let Some(proxy) = proxy_listen
        && !proxy.ip().is_loopback()
    {
        return Err(invalid(format!(
            "--proxy-listen {proxy} must be a loopback address: it trusts X-Forwarded-For, \
             which only the local `tailscale serve` may set"
        )));
    }

    let token_lifetime = options.token_lifetime().secs();
    let max_token_lifetime = options.max_token_lifetime().secs();
    let refresh_lifetime = options.refresh_lifetime().secs();
    let rotation = options.key_rotation_interval().secs();
    let audit_retention = options.audit_retention().secs();
    if token_lifetime == 0 || token_lifetime > max_token_lifetime {
        return Err(invalid(format!(
            "token_lifetime ({token_lifetime}s) must be positive and at most max_token_lifetime ({max_token_lifetime}s)"
        )));
    }
    if refresh_lifetime == 0 {
        return Err(invalid("refresh_lifetime must be positive"));
    }
    let identity_timeout = options.identity_timeout().secs();
    if identity_timeout == 0 {
        return Err(invalid("identity_timeout must be positive"));
    }
    let identity_max_lookups = options.identity_max_lookups();
    if identity_max_lookups == 0 {
        return Err(invalid("identity_max_lookups must be positive"));
    }

    let mut settings = Settings {
        paths,
        store,
        listen,
        issuer,
        proxy_listen,
        signing_alg,
        algs,
        identity,
        identity_timeout: std::time::Duration::from_secs(identity_timeout),
        identity_max_lookups,
        health_listen: options.health_listen,
        tls,
        token_lifetime,
        max_token_lifetime,
        refresh_lifetime,
        key_rotation_interval: (rotation > 0).then_some(rotation),
        audit_retention: (audit_retention > 0).then_some(audit_retention),
        redirect_rules: RedirectRules {
            allow_http: options.allow_http_redirect_uris,
        },
        log_format: options.log_format(),
        policy: match &options.policy {
            Some(path) => PolicyFile::load(path).map_err(|e| invalid(e.to_string()))?,
            None => PolicyFile::default(),
        },
        agent_capability: options.agent_capability(),
        agent_token_lifetime: options
            .agent_token_lifetime()
            .secs()
            .clamp(1, max_token_lifetime),
        rate_limit: options.rate_limit(),
        feed_reserved_slots: options
            .feed_reserved_slots()
            .min(crate::revocation::MAX_SUBSCRIBERS),
        dpop_nonce: options.dpop_nonce,
        audit_file: options.audit_file.clone(),
        static_clients: Vec::new(),
        client_metadata: DocumentSettings {
            hosts: options.client_metadata_hosts.clone(),
            ca_file: options.client_metadata_ca_file.clone(),
            // Loopback documents only for trying tailpass on one machine: `--dev` also makes
            // every loopback caller an administrator, so it is never a production setting.
            targets: if dev {
                Targets::DevLoopback
            } else {
                Targets::Public
            },
        },
    };
    settings.static_clients = static_clients(&options.client, &settings)?;
    Ok(settings)
}

/// Without `--listen`: an http issuer on a loopback address is listened on as is; anything
/// else on every interface at the issuer's port.
fn default_listen(issuer: &Url) -> Result<SocketAddr, ConfigError> {
    let port = issuer
        .port_or_known_default()
        .ok_or_else(|| invalid("the issuer URL has no port"))?;
    match issuer.host() {
        Some(url::Host::Ipv4(ip)) if issuer.scheme() == "http" && ip.is_loopback() => {
            Ok(SocketAddr::from((ip, port)))
        }
        _ => Ok(SocketAddr::from(([0, 0, 0, 0], port))),
    }
}

/// OIDC Discovery §3: the issuer is an https URL (http allowed here for loopback and `tailscale
/// serve` set-ups) with no query or fragment.
fn check_issuer(url: &Url) -> Result<(), ConfigError> {
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err(invalid(format!(
            "issuer {url} must be an http(s) URL with a host"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(format!(
            "issuer {url} must not have a query or fragment"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tailpass ARGV` (whose subcommand must be `serve`), resolved.
    fn serve(argv: &[&str]) -> Result<Settings, ConfigError> {
        let mut full = vec!["tailpass"];
        full.extend_from_slice(argv);
        let (global, args) = options::parse_for_test::<ServeOptions>("serve", &full)
            .map_err(|e| invalid(e.to_string()))?;
        resolve(&global, &args)
    }

    fn with_file(toml: &str, argv: &[&str]) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().map_err(|e| invalid(e.to_string()))?;
        let path = dir.path().join("tailpass.toml");
        std::fs::write(&path, toml).map_err(|e| invalid(e.to_string()))?;
        let mut full = vec!["--config", path.to_str().unwrap_or_default()];
        full.extend_from_slice(argv);
        serve(&full)
    }

    #[test]
    fn dev_defaults() {
        let s = serve(&["serve", "--dev"]).unwrap();
        assert_eq!(s.listen, "127.0.0.1:8765".parse().unwrap());
        assert_eq!(s.paths.state_dir, PathBuf::from(".tailpass"));
        assert_eq!(s.paths.keys_dir, PathBuf::from("keys"));
        assert_eq!(s.identity, IdentitySettings::Dev);
        assert_eq!(s.algs, BTreeSet::from([Alg::ES256, Alg::RS256]));
        assert_eq!(s.tls, None);
    }

    #[test]
    fn explicit_flags_beat_dev_defaults_and_the_file() {
        let s = with_file(
            "listen = \"127.0.0.1:9000\"\nsigning_alg = \"EdDSA\"\ntoken_lifetime = \"15m\"\n",
            &[
                "serve",
                "--dev",
                "--listen",
                "127.0.0.1:9001",
                "--state-dir",
                "/tmp/s",
            ],
        )
        .unwrap();
        assert_eq!(
            s.listen,
            "127.0.0.1:9001".parse().unwrap(),
            "flag beats file"
        );
        assert_eq!(s.signing_alg, Alg::EdDSA, "file beats default");
        assert_eq!(s.token_lifetime, 900);
        assert_eq!(s.paths.state_dir, PathBuf::from("/tmp/s"));
        assert_eq!(
            s.paths.keys_dir,
            PathBuf::from("keys"),
            "--dev keys dir stays"
        );
    }

    #[test]
    fn the_store_defaults_to_sqlite_in_the_state_dir_and_is_chosen_by_flag_or_file() {
        let s = serve(&["serve", "--dev", "--state-dir", "/tmp/s"]).unwrap();
        assert!(
            matches!(&s.store.location, StoreLocation::Sqlite(p) if p == std::path::Path::new("/tmp/s/tailpass.db"))
        );
        assert_eq!(s.store.pool_size, 16);
        let s = serve(&["serve", "--dev", "--store", "sqlite:/srv/other.db"]).unwrap();
        assert!(
            matches!(&s.store.location, StoreLocation::Sqlite(p) if p == std::path::Path::new("/srv/other.db"))
        );
        let s = with_file(
            "store = \"postgres://tp:hunter2@db.example/tp?sslmode=require\"\nstore_pool_size = 4\n",
            &["serve", "--dev"],
        )
        .unwrap();
        assert!(matches!(&s.store.location, StoreLocation::Postgres(_)));
        assert_eq!(s.store.pool_size, 4);
        assert!(
            !format!("{s:?}").contains("hunter2"),
            "settings never show it"
        );
        let refused = serve(&[
            "serve",
            "--dev",
            "--store",
            "postgres://tp:hunter2@db.example/tp?sslmode=maybe",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            refused.contains("--store") && !refused.contains("hunter2"),
            "{refused}"
        );
        assert!(serve(&["serve", "--dev", "--store-pool-size", "0"]).is_err());
    }

    #[test]
    fn keys_default_under_state_dir_outside_dev() {
        let s = serve(&[
            "serve",
            "--issuer",
            "http://127.0.0.1:8080",
            "--state-dir",
            "/srv/tp",
        ])
        .unwrap();
        assert_eq!(s.paths.keys_dir, PathBuf::from("/srv/tp/keys"));
        assert_eq!(
            s.listen,
            "127.0.0.1:8080".parse().unwrap(),
            "a loopback http issuer is listened on as is"
        );
        assert_eq!(s.tls, None);
    }

    #[test]
    fn unsafe_combinations_are_refused() {
        let cases: [(&[&str], &str); 6] = [
            (
                &[
                    "serve",
                    "--issuer",
                    "https://idp.example",
                    "--listen",
                    "0.0.0.0:8080",
                    "--identity",
                    "local",
                    "--identity-file",
                    "x.json",
                ],
                "plain HTTP",
            ),
            (
                &["serve", "--dev", "--proxy-listen", "0.0.0.0:9000"],
                "loopback",
            ),
            (&["serve"], "--issuer is required"),
            (
                &["serve", "--dev", "--issuer", "https://idp.example/?x=1"],
                "query",
            ),
            (
                &["serve", "--dev", "--token-lifetime", "2d"],
                "max_token_lifetime",
            ),
            (
                &["serve", "--dev", "--identity-max-lookups", "0"],
                "identity_max_lookups",
            ),
        ];
        for (argv, needle) in cases {
            let err = serve(argv).unwrap_err().to_string();
            assert!(err.contains(needle), "{argv:?}: {err}");
        }
    }

    #[test]
    fn tailscaled_on_a_tailnet_address_uses_its_certificate() {
        let s = serve(&[
            "serve",
            "--issuer",
            "https://idp.tail1234.ts.net",
            "--listen",
            "100.64.0.9:443",
        ])
        .unwrap();
        assert!(matches!(s.tls, Some(TlsSettings::Tailscaled(_))));
    }

    #[test]
    fn bad_durations_name_the_setting() {
        let err = serve(&["serve", "--dev", "--refresh-lifetime", "1w"]).unwrap_err();
        assert!(err.to_string().contains("--refresh-lifetime"), "{err}");
        let err = with_file("refresh_lifetime = \"2 weeks\"\n", &["serve", "--dev"]).unwrap_err();
        assert!(err.to_string().contains("refresh_lifetime"), "{err}");
        let s = with_file(
            "refresh_lifetime = 86400\nagent_token_lifetime = \"30s\"\n",
            &["serve", "--dev", "--key-rotation-interval", "7d"],
        )
        .unwrap();
        assert_eq!(
            (
                s.refresh_lifetime,
                s.agent_token_lifetime,
                s.key_rotation_interval
            ),
            (86_400, 30, Some(604_800))
        );
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let err = with_file("listne = \"127.0.0.1:1\"\n", &["serve", "--dev"]).unwrap_err();
        assert!(err.to_string().contains("listne"), "{err}");
    }

    #[test]
    fn static_clients_hold_hashes_only() {
        let hash = crate::secret::SecretHash::of("s3cret").to_hex();
        let toml = format!(
            "[[client]]\nclient_id = \"grafana\"\nsecret_sha256 = \"{hash}\"\nredirect_uris = [\"https://grafana.example/cb\"]\nusers = [\"group:admins\"]\n\n\
             [[client]]\nclient_id = \"cli\"\ntoken_endpoint_auth_method = \"none\"\nredirect_uris = [\"http://127.0.0.1/cb\"]\n"
        );
        let s = with_file(&toml, &["serve", "--dev"]).unwrap();
        assert_eq!(s.static_clients.len(), 2);
        assert!(s.static_clients[0].secret_matches("s3cret"));
        assert!(s.static_clients[1].is_public());
        let missing = with_file(
            "[[client]]\nclient_id = \"x\"\nredirect_uris = [\"https://a.example/cb\"]\n",
            &["serve", "--dev"],
        )
        .unwrap_err();
        assert!(
            missing.to_string().contains("secret_sha256 is required"),
            "{missing}"
        );
        let clear = with_file(
            "[[client]]\nclient_id = \"x\"\nsecret = \"plain\"\nredirect_uris = [\"https://a.example/cb\"]\n",
            &["serve", "--dev"],
        )
        .unwrap_err();
        assert!(
            clear.to_string().contains("secret"),
            "a clear secret key is refused: {clear}"
        );
    }

    #[test]
    fn the_example_configuration_is_valid() {
        let example = include_str!("../../deploy/tailpass.example.toml");
        let s = with_file(example, &["serve"]).unwrap();
        assert_eq!(s.issuer.unwrap().as_str(), "https://idp.tail1234.ts.net/");
        assert!(matches!(s.tls, Some(TlsSettings::Tailscaled(_))));
        assert_eq!(s.static_clients[0].client_id.0, "grafana");
        assert_eq!(s.log_format, LogFormat::Json);
    }
}
