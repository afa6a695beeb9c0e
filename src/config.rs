//! Server settings: raw flags, environment and TOML file merged into one validated
//! [`Settings`] ("parse, don't validate": nothing downstream re-checks these).
//!
//! Precedence is flag, then environment (clap reads both), then the file, then `--dev`
//! defaults, then built-in defaults. Combinations that would be unsafe — plain HTTP on a
//! non-loopback address, a proxy listener reachable from the network — are refused here with a
//! message saying what to do instead.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tailpass_verify::{Alg, UnixTime};
use url::Url;

use crate::cli::{GlobalArgs, IdentityKind, LogFormat, ServeArgs, parse_duration};
use crate::clients::redirect::RedirectRules;
use crate::clients::{Client, ClientId, ClientMetadata, ClientOrigin, MetadataRules, Registrant};
use crate::policy::file::PolicyFile;
use crate::secret::SecretHash;

/// Where state lives by default outside `--dev`.
const DEFAULT_STATE_DIR: &str = "/var/lib/tailpass";
/// `--dev`'s listen address.
const DEV_LISTEN: &str = "127.0.0.1:8765";

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Occurs when the configuration file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Occurs when the file is not valid TOML or has unknown keys.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The TOML error.
        message: String,
    },
    /// Occurs when settings contradict each other or are unsafe.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

/// A duration in the file: seconds, or a string such as `"15m"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum FileDuration {
    Seconds(u64),
    Text(String),
}

impl FileDuration {
    /// The duration in seconds; `key` names it in the error.
    pub(crate) fn seconds(&self, key: &str) -> Result<u64, ConfigError> {
        match self {
            FileDuration::Seconds(n) => Ok(*n),
            FileDuration::Text(text) => {
                parse_duration(text).map_err(|e| invalid(format!("{key}: {e}")))
            }
        }
    }
}

/// A static client in the file (`[[client]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileClient {
    client_id: String,
    #[serde(default)]
    client_name: Option<String>,
    /// The SHA-256 (hex) of the secret; the file never holds a secret in clear.
    #[serde(default)]
    secret_sha256: Option<SecretHash>,
    #[serde(default)]
    token_endpoint_auth_method: Option<String>,
    #[serde(default)]
    redirect_uris: Vec<String>,
    #[serde(default)]
    post_logout_redirect_uris: Vec<String>,
    #[serde(default)]
    grant_types: Option<Vec<String>>,
    #[serde(default)]
    id_token_signed_response_alg: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    backchannel_logout_uri: Option<String>,
    #[serde(default)]
    backchannel_logout_session_required: Option<bool>,
}

/// The TOML file: the flags of `serve` and the global flags, plus `[[client]]` tables.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    state_dir: Option<PathBuf>,
    keys_dir: Option<PathBuf>,
    dev: Option<bool>,
    listen: Option<SocketAddr>,
    issuer: Option<Url>,
    proxy_listen: Option<SocketAddr>,
    signing_alg: Option<String>,
    no_rs256: Option<bool>,
    enable_alg: Option<Vec<String>>,
    identity: Option<IdentityKind>,
    identity_file: Option<PathBuf>,
    tailscaled_socket: Option<PathBuf>,
    hostname: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    token_lifetime: Option<FileDuration>,
    max_token_lifetime: Option<FileDuration>,
    refresh_lifetime: Option<FileDuration>,
    key_rotation_interval: Option<FileDuration>,
    audit_retention: Option<FileDuration>,
    allow_http_redirect_uris: Option<bool>,
    policy: Option<PathBuf>,
    agent_capability: Option<String>,
    agent_token_lifetime: Option<FileDuration>,
    rate_limit: Option<u32>,
    feed_reserved_slots: Option<usize>,
    dpop_nonce: Option<bool>,
    audit_file: Option<PathBuf>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    client: Vec<FileClient>,
}

impl FileConfig {
    fn load(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }
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

/// Resolves the paths alone, for commands other than `serve`.
pub fn resolve_paths(global: &GlobalArgs) -> Result<Paths, ConfigError> {
    let file = FileConfig::load(global.config.as_deref())?;
    Ok(paths(global, &file))
}

fn paths(global: &GlobalArgs, file: &FileConfig) -> Paths {
    let dev = global.dev || file.dev.unwrap_or(false);
    let state_dir = global
        .state_dir
        .clone()
        .or_else(|| file.state_dir.clone())
        .unwrap_or_else(|| PathBuf::from(if dev { ".tailpass" } else { DEFAULT_STATE_DIR }));
    let keys_dir = global
        .keys_dir
        .clone()
        .or_else(|| file.keys_dir.clone())
        .unwrap_or_else(|| {
            if dev {
                PathBuf::from("keys")
            } else {
                state_dir.join("keys")
            }
        });
    Paths {
        dev,
        state_dir,
        keys_dir,
    }
}

/// Merges flags, environment, file and defaults into the settings of `serve`.
pub fn resolve(global: &GlobalArgs, args: &ServeArgs) -> Result<Settings, ConfigError> {
    resolve_for(global, args, true)
}

/// The settings CLI commands need when no server is running and they open the state
/// themselves: like `serve`'s, but an issuer is not required.
pub fn resolve_offline(global: &GlobalArgs) -> Result<Settings, ConfigError> {
    resolve_for(global, &ServeArgs::default(), false)
}

fn resolve_for(
    global: &GlobalArgs,
    args: &ServeArgs,
    serving: bool,
) -> Result<Settings, ConfigError> {
    let file = FileConfig::load(global.config.as_deref())?;
    let paths = paths(global, &file);
    let dev = paths.dev;

    let signing_alg = match (&args.signing_alg, &file.signing_alg) {
        (Some(alg), _) => *alg,
        (None, Some(name)) => name
            .parse()
            .map_err(|e: tailpass_verify::alg::UnknownAlg| invalid(format!("signing_alg: {e}")))?,
        (None, None) => Alg::ES256,
    };
    let no_rs256 = args.no_rs256 || file.no_rs256.unwrap_or(false);
    let mut algs = BTreeSet::from([signing_alg]);
    if !no_rs256 {
        algs.insert(Alg::RS256);
    }
    if !args.enable_algs.is_empty() {
        algs.extend(args.enable_algs.iter().copied());
    } else {
        for name in file.enable_alg.iter().flatten() {
            algs.insert(
                name.parse()
                    .map_err(|e: tailpass_verify::alg::UnknownAlg| {
                        invalid(format!("enable_alg: {e}"))
                    })?,
            );
        }
    }

    let issuer = args.issuer.clone().or(file.issuer.clone());
    if serving && !dev && issuer.is_none() {
        return Err(invalid(
            "--issuer is required (or use --dev to try tailpass locally)",
        ));
    }
    let listen = match (args.listen.or(file.listen), &issuer) {
        (Some(listen), _) => listen,
        (None, Some(url)) if !dev => default_listen(url)?,
        (None, _) => DEV_LISTEN
            .parse()
            .map_err(|_| invalid("internal: bad dev listen address"))?,
    };
    if let Some(url) = &issuer {
        check_issuer(url)?;
    }

    let identity_file = args.identity_file.clone().or(file.identity_file.clone());
    let socket = args
        .tailscaled_socket
        .clone()
        .or(file.tailscaled_socket.clone())
        .unwrap_or_else(|| PathBuf::from(crate::identity::tailscaled::DEFAULT_SOCKET));
    let kind = args.identity.or(file.identity);
    let identity = match (kind, identity_file) {
        (Some(IdentityKind::Local) | None, Some(path)) => IdentitySettings::Local(path),
        (Some(IdentityKind::Local), None) if dev => IdentitySettings::Dev,
        (Some(IdentityKind::Local), None) => {
            return Err(invalid("--identity local needs --identity-file"));
        }
        (None, None) if dev => IdentitySettings::Dev,
        (None | Some(IdentityKind::Tailscaled), None) => {
            IdentitySettings::Tailscaled(socket.clone())
        }
        (Some(IdentityKind::Tailscaled | IdentityKind::Tsnet), Some(_)) => {
            return Err(invalid("--identity-file only applies to --identity local"));
        }
        (Some(IdentityKind::Tsnet), None) => IdentitySettings::Tsnet {
            hostname: args
                .hostname
                .clone()
                .or(file.hostname.clone())
                .unwrap_or_else(|| "tailpass".to_owned()),
        },
    };
    // A build without the `tsnet` feature refuses `--identity tsnet` when it starts; the
    // settings themselves are checked the same way in every build.

    let tls_cert = args.tls_cert.clone().or(file.tls_cert.clone());
    let tls_key = args.tls_key.clone().or(file.tls_key.clone());
    let tls = match (tls_cert, tls_key) {
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
    let proxy_listen = args.proxy_listen.or(file.proxy_listen);
    if let Some(proxy) = proxy_listen
        && !proxy.ip().is_loopback()
    {
        return Err(invalid(format!(
            "--proxy-listen {proxy} must be a loopback address: it trusts X-Forwarded-For, \
             which only the local `tailscale serve` may set"
        )));
    }

    let seconds =
        |flag: Option<u64>, from_file: &Option<FileDuration>, key: &str, default: u64| match (
            flag, from_file,
        ) {
            (Some(n), _) => Ok(n),
            (None, Some(d)) => d.seconds(key),
            (None, None) => Ok(default),
        };
    let token_lifetime = seconds(
        args.token_lifetime,
        &file.token_lifetime,
        "token_lifetime",
        3_600,
    )?;
    let max_token_lifetime = seconds(
        args.max_token_lifetime,
        &file.max_token_lifetime,
        "max_token_lifetime",
        86_400,
    )?;
    let refresh_lifetime = seconds(
        args.refresh_lifetime,
        &file.refresh_lifetime,
        "refresh_lifetime",
        30 * 86_400,
    )?;
    let rotation = seconds(
        args.key_rotation_interval,
        &file.key_rotation_interval,
        "key_rotation_interval",
        90 * 86_400,
    )?;
    let audit_retention = seconds(
        args.audit_retention,
        &file.audit_retention,
        "audit_retention",
        0,
    )?;
    if token_lifetime == 0 || token_lifetime > max_token_lifetime {
        return Err(invalid(format!(
            "token_lifetime ({token_lifetime}s) must be positive and at most max_token_lifetime ({max_token_lifetime}s)"
        )));
    }
    if refresh_lifetime == 0 {
        return Err(invalid("refresh_lifetime must be positive"));
    }

    let redirect_rules = RedirectRules {
        allow_http: args.allow_http_redirect_uris || file.allow_http_redirect_uris.unwrap_or(false),
    };
    let mut settings = Settings {
        paths,
        listen,
        issuer,
        proxy_listen,
        signing_alg,
        algs,
        identity,
        tls,
        token_lifetime,
        max_token_lifetime,
        refresh_lifetime,
        key_rotation_interval: (rotation > 0).then_some(rotation),
        audit_retention: (audit_retention > 0).then_some(audit_retention),
        redirect_rules,
        log_format: args
            .log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Text),
        policy: match args.policy.as_ref().or(file.policy.as_ref()) {
            Some(path) => PolicyFile::load(path).map_err(|e| invalid(e.to_string()))?,
            None => PolicyFile::default(),
        },
        agent_capability: args
            .agent_capability
            .clone()
            .or(file.agent_capability.clone())
            .unwrap_or_else(|| crate::policy::agent::DEFAULT_CAPABILITY.to_owned()),
        agent_token_lifetime: seconds(
            args.agent_token_lifetime,
            &file.agent_token_lifetime,
            "agent_token_lifetime",
            900,
        )?
        .clamp(1, max_token_lifetime),
        rate_limit: args.rate_limit.or(file.rate_limit).unwrap_or(600),
        feed_reserved_slots: args
            .feed_reserved_slots
            .or(file.feed_reserved_slots)
            .unwrap_or(64)
            .min(crate::revocation::MAX_SUBSCRIBERS),
        dpop_nonce: args.dpop_nonce || file.dpop_nonce.unwrap_or(false),
        audit_file: args.audit_file.clone().or(file.audit_file.clone()),
        static_clients: Vec::new(),
    };
    settings.static_clients = static_clients(&file.client, &settings)?;
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

fn static_clients(entries: &[FileClient], settings: &Settings) -> Result<Vec<Client>, ConfigError> {
    let rules = settings.metadata_rules(Registrant::Operator);
    let mut seen = BTreeSet::new();
    let mut clients = Vec::with_capacity(entries.len());
    for entry in entries {
        let id = &entry.client_id;
        if id.is_empty() || !seen.insert(id.clone()) {
            return Err(invalid(format!(
                "[[client]] {id:?}: client_id must be unique and non-empty"
            )));
        }
        let meta = ClientMetadata {
            redirect_uris: Some(entry.redirect_uris.clone()),
            token_endpoint_auth_method: entry.token_endpoint_auth_method.clone(),
            // Operators' clients refresh unless told otherwise; RFC 7591's default (code only)
            // is for self-registration.
            grant_types: Some(
                entry
                    .grant_types
                    .clone()
                    .unwrap_or_else(|| vec!["authorization_code".into(), "refresh_token".into()]),
            ),
            response_types: None,
            client_name: entry.client_name.clone(),
            id_token_signed_response_alg: entry.id_token_signed_response_alg.clone(),
            post_logout_redirect_uris: Some(entry.post_logout_redirect_uris.clone()),
            backchannel_logout_uri: entry.backchannel_logout_uri.clone(),
            backchannel_logout_session_required: entry.backchannel_logout_session_required,
            resources: Some(entry.resources.clone()),
            jwks_uri: None,
            jwks: None,
        }
        .validate(&rules)
        .map_err(|e| invalid(format!("[[client]] {id:?}: {e}")))?;
        let mut client = Client::from_metadata(
            ClientId(id.clone()),
            meta,
            ClientOrigin::Config,
            UnixTime(0),
            Some("config".into()),
        );
        match (client.is_public(), &entry.secret_sha256) {
            (true, Some(_)) => {
                return Err(invalid(format!(
                    "[[client]] {id:?}: a public client has no secret_sha256"
                )));
            }
            (false, None) => {
                return Err(invalid(format!(
                    "[[client]] {id:?}: secret_sha256 is required (the SHA-256 hex of the secret; \
                     `printf %s SECRET | sha256sum`), or token_endpoint_auth_method = \"none\""
                )));
            }
            _ => {}
        }
        client.secret_sha256 = entry.secret_sha256.clone();
        client.users = entry.users.clone();
        clients.push(client);
    }
    Ok(clients)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser as _;

    fn serve(argv: &[&str]) -> Result<Settings, ConfigError> {
        let mut full = vec!["tailpass"];
        full.extend_from_slice(argv);
        let cli = Cli::try_parse_from(full).map_err(|e| invalid(e.to_string()))?;
        match cli.command {
            Command::Serve(args) => resolve(&cli.global, &args),
            _ => Err(invalid("not serve")),
        }
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
        let cases: [(&[&str], &str); 5] = [
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
        let example = include_str!("../deploy/tailpass.example.toml");
        let s = with_file(example, &["serve"]).unwrap();
        assert_eq!(s.issuer.unwrap().as_str(), "https://idp.tail1234.ts.net/");
        assert!(matches!(s.tls, Some(TlsSettings::Tailscaled(_))));
        assert_eq!(s.static_clients[0].client_id.0, "grafana");
        assert_eq!(s.log_format, LogFormat::Json);
    }
}
