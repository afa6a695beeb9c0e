//! The options of `tailpass serve` and the global options, each declared once: its flag, its
//! environment variable `TAILPASS_<FLAG>`, its TOML key (the field's name, which is the flag in
//! snake_case), its default and its `--help` text (the doc comment).
//!
//! One struct serves as the command line (clap) and as the file's section (serde). Layering is
//! [`ServeOptions::over`]: what the command line or the environment gives (clap reads both)
//! over what the file gives; a default, stated beside its field (`= default`), applies only to
//! what neither gives, and `--dev`'s defaults are applied by [`crate::config`] before it.

use std::net::SocketAddr;
use std::path::PathBuf;

use tailpass_verify::Alg;
use url::Url;

use super::clients::ClientEntry;
use super::duration::Seconds;
use crate::store::StoreUrl;

/// How one layer of a setting goes over the layer below (the file's).
pub trait Layer {
    /// `self` where it is given, else `below`.
    fn over(self, below: Self) -> Self;
}

/// A value: given or not.
impl<T> Layer for Option<T> {
    fn over(self, below: Self) -> Self {
        self.or(below)
    }
}

/// A switch: on if either layer turns it on (a flag can only turn it on).
impl Layer for bool {
    fn over(self, below: Self) -> Self {
        self || below
    }
}

/// A list: a non-empty one replaces the one below rather than adding to it.
impl<T> Layer for Vec<T> {
    fn over(self, below: Self) -> Self {
        if self.is_empty() { below } else { self }
    }
}

/// A setting that may be unset, and the type it has once its default fills it.
pub trait Optional {
    /// The value's type.
    type Value;
    /// The value, or `default()` when unset.
    fn or_default(self, default: impl FnOnce() -> Self::Value) -> Self::Value;
}

impl<T> Optional for Option<T> {
    type Value = T;

    fn or_default(self, default: impl FnOnce() -> T) -> T {
        self.unwrap_or_else(default)
    }
}

/// Declares a command's options once. Each field is a clap argument (its doc comment the
/// `--help` text; give it `#[arg(long, env = "TAILPASS_<FLAG>")]`) and a key of the TOML file
/// (its name). A field written `name: Option<T> = default` also gets an accessor `name()`
/// returning the value or that default. The struct gets [`Layer`]-wise `over`, the one merge.
macro_rules! options {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                $field_vis:vis $field:ident : $ty:ty $(= $default:expr)?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, clap::Args, serde::Deserialize)]
        #[serde(default)]
        $vis struct $name {
            $(
                $(#[$field_meta])*
                $field_vis $field: $ty,
            )*
        }

        impl $name {
            /// These options over `below` (the file's), setting by setting: a value given
            /// here wins, a switch is on if either turns it on, a non-empty list replaces.
            pub fn over(self, below: Self) -> Self {
                Self {
                    $( $field: $crate::config::options::Layer::over(self.$field, below.$field), )*
                }
            }

            $($(
                #[doc = concat!("`", stringify!($field), "`, or its default `", stringify!($default), "`.")]
                $field_vis fn $field(&self) -> <$ty as $crate::config::options::Optional>::Value {
                    $crate::config::options::Optional::or_default(self.$field.clone(), || $default)
                }
            )?)*
        }
    };
}
pub(crate) use options;

/// Where state lives by default outside `--dev`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tailpass";
/// `--dev`'s state directory.
pub const DEV_STATE_DIR: &str = ".tailpass";
/// `--dev`'s keys directory (outside `--dev`, `STATE_DIR/keys`).
pub const DEV_KEYS_DIR: &str = "keys";
/// `--dev`'s listen address.
pub const DEV_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    8765,
));

options! {
    /// Options every command understands (given before or after the subcommand).
    pub struct GlobalOptions {
        /// TOML configuration file; keys are the flags' names in snake_case.
        #[arg(long, global = true, env = "TAILPASS_CONFIG", value_name = "FILE")]
        #[serde(skip)]
        pub config: Option<PathBuf>,
        /// State directory: database, admin socket, and keys unless --keys-dir; the gateway's
        /// budgets [default: /var/lib/tailpass, or ./.tailpass with --dev].
        #[arg(long, global = true, env = "TAILPASS_STATE_DIR", value_name = "DIR")]
        pub state_dir: Option<PathBuf>,
        /// Signing keys directory [default: STATE_DIR/keys, or ./keys with --dev].
        #[arg(long, global = true, env = "TAILPASS_KEYS_DIR", value_name = "DIR")]
        pub keys_dir: Option<PathBuf>,
        /// Seal the private keys at rest under this key-encryption key (AES-256-GCM): a file
        /// of mode 0600 (or 0440 for a Kubernetes Secret) holding 32 random bytes, base64 on one line (`tailpass keys new-kek`).
        #[arg(long, global = true, env = "TAILPASS_KEY_ENCRYPTION_KEY_FILE", value_name = "FILE")]
        pub key_encryption_key_file: Option<PathBuf>,
        /// Where durable state lives: sqlite:PATH, or
        /// postgres://USER:PASSWORD@HOST:PORT/DATABASE?sslmode=disable|prefer|require, shared by
        /// replicas (for the gateway, where run budgets persist, shared by gateway replicas on
        /// PostgreSQL) [default: sqlite:STATE_DIR/tailpass.db; the gateway's:
        /// sqlite:STATE_DIR/gateway-budgets.sqlite].
        #[arg(long, global = true, env = "TAILPASS_STORE", value_name = "URL", hide_env_values = true)]
        pub store: Option<StoreUrl>,
        /// PEM certificates that verify the database's certificate with sslmode=require,
        /// instead of the system's roots.
        #[arg(long, global = true, env = "TAILPASS_STORE_CA_FILE", value_name = "FILE")]
        pub store_ca_file: Option<PathBuf>,
        /// Most connections to PostgreSQL this process keeps [default: 16].
        #[arg(long, global = true, env = "TAILPASS_STORE_POOL_SIZE", value_name = "N")]
        pub store_pool_size: Option<usize> = crate::store::location::DEFAULT_POOL_SIZE,
        /// Development mode: local identity (every loopback caller is you, with admin rights),
        /// SQLite in ./.tailpass, keys in ./keys, http://127.0.0.1:8765. Explicit flags win.
        #[arg(long, global = true, env = "TAILPASS_DEV")]
        pub dev: bool,
    }
}

/// Where caller identities come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityKind {
    /// A JSON table of WhoIs answers (--identity-file).
    Local,
    /// tailscaled's LocalAPI (--tailscaled-socket).
    Tailscaled,
    /// An embedded tailnet node (cargo feature `tsnet`).
    Tsnet,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

options! {
    /// `tailpass serve`.
    pub struct ServeOptions {
        /// Address to listen on [default: 127.0.0.1:8765 with --dev].
        #[arg(long, env = "TAILPASS_LISTEN", value_name = "ADDR:PORT")]
        pub listen: Option<SocketAddr>,
        /// The issuer URL relying parties see [default with --dev: http://LISTEN].
        #[arg(long, env = "TAILPASS_ISSUER", value_name = "URL")]
        pub issuer: Option<Url>,
        /// A second, loopback-only listener for `tailscale serve`: the only place where the
        /// last X-Forwarded-For value is taken as the caller's address.
        #[arg(long, env = "TAILPASS_PROXY_LISTEN", value_name = "ADDR:PORT")]
        pub proxy_listen: Option<SocketAddr>,
        /// Algorithm of access tokens [default: ES256]. ID tokens use the client's registered
        /// algorithm; a client that registered none gets RS256, OIDC's default, unless
        /// --no-rs256, in which case it gets this one.
        #[arg(long, env = "TAILPASS_SIGNING_ALG", value_name = "ALG")]
        pub signing_alg: Option<Alg> = Alg::ES256,
        /// Do not keep an RS256 key (clients must then register another ID token algorithm).
        #[arg(long, env = "TAILPASS_NO_RS256")]
        pub no_rs256: bool,
        /// Another algorithm clients may choose for their ID tokens (EdDSA, say); repeat for
        /// several.
        #[arg(long, env = "TAILPASS_ENABLE_ALG", value_name = "ALG", value_delimiter = ',')]
        pub enable_alg: Vec<Alg>,
        /// Where caller identities come from [default: tailscaled, or a local table with
        /// --dev].
        #[arg(long, env = "TAILPASS_IDENTITY", value_enum)]
        pub identity: Option<IdentityKind>,
        /// How long a WhoIs may take before the request answers temporarily_unavailable (503),
        /// e.g. 2s [default: 2s].
        #[arg(long, env = "TAILPASS_IDENTITY_TIMEOUT", value_name = "DURATION")]
        pub identity_timeout: Option<Seconds> = Seconds(2),
        /// WhoIs lookups waiting on the identity source at once; past it, a request answers
        /// temporarily_unavailable (503) at once rather than queueing behind a stalled source
        /// [default: 256].
        #[arg(long, env = "TAILPASS_IDENTITY_MAX_LOOKUPS", value_name = "N")]
        pub identity_max_lookups: Option<usize> = crate::identity::bounded::DEFAULT_MAX_LOOKUPS,
        /// A listener serving only /healthz and /readyz, with no identity and no Host check,
        /// for orchestrators' probes.
        #[arg(long, env = "TAILPASS_HEALTH_LISTEN", value_name = "ADDR:PORT")]
        pub health_listen: Option<SocketAddr>,
        /// The identity table for --identity local: {"<ip>": <WhoIs answer>, ...}.
        #[arg(long, env = "TAILPASS_IDENTITY_FILE", value_name = "FILE")]
        pub identity_file: Option<PathBuf>,
        /// tailscaled's LocalAPI socket [default: /var/run/tailscale/tailscaled.sock].
        #[arg(long, env = "TAILPASS_TAILSCALED_SOCKET", value_name = "PATH")]
        pub tailscaled_socket: Option<PathBuf> =
            PathBuf::from(crate::identity::tailscaled::DEFAULT_SOCKET),
        /// Host name of the embedded node (--identity tsnet) [default: tailpass].
        #[arg(long, env = "TAILPASS_HOSTNAME", value_name = "NAME")]
        pub hostname: Option<String> = "tailpass".to_owned(),
        /// TLS certificate chain (PEM).
        #[arg(long, env = "TAILPASS_TLS_CERT", value_name = "FILE", requires = "tls_key")]
        pub tls_cert: Option<PathBuf>,
        /// TLS private key (PEM).
        #[arg(long, env = "TAILPASS_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
        pub tls_key: Option<PathBuf>,
        /// Lifetime of access and ID tokens, e.g. 15m, 1h [default: 1h].
        #[arg(long, env = "TAILPASS_TOKEN_LIFETIME", value_name = "DURATION")]
        pub token_lifetime: Option<Seconds> = Seconds::hours(1),
        /// The longest lifetime any policy may grant a token [default: 24h]. Retired keys stay
        /// published this long.
        #[arg(long, env = "TAILPASS_MAX_TOKEN_LIFETIME", value_name = "DURATION")]
        pub max_token_lifetime: Option<Seconds> =
            Seconds(tailpass_verify::feed::DEFAULT_MAX_LIFETIME),
        /// Absolute lifetime of a refresh-token family [default: 30d].
        #[arg(long, env = "TAILPASS_REFRESH_LIFETIME", value_name = "DURATION")]
        pub refresh_lifetime: Option<Seconds> = Seconds::days(30),
        /// Keep audit events this long, e.g. 400d; older ones are dropped in whole ranges,
        /// never one by one. `0` keeps them forever [default: 0].
        #[arg(long, env = "TAILPASS_AUDIT_RETENTION", value_name = "DURATION")]
        pub audit_retention: Option<Seconds> = Seconds(0),
        /// Rotate signing keys this often, e.g. 30d; `0` rotates only on demand
        /// [default: 90d].
        #[arg(long, env = "TAILPASS_KEY_ROTATION_INTERVAL", value_name = "DURATION")]
        pub key_rotation_interval: Option<Seconds> = Seconds::days(90),
        /// Accept http:// redirect URIs to non-loopback hosts.
        #[arg(long, env = "TAILPASS_ALLOW_HTTP_REDIRECT_URIS")]
        pub allow_http_redirect_uris: bool,
        /// Hosts (globs, `*` any run of characters) whose https URLs clients may use as their
        /// client_id: a Client ID Metadata Document (MCP 2025-11-25), fetched from that URL
        /// (public addresses only; loopback too with --dev). Empty turns them off
        /// [default: none].
        #[arg(long, env = "TAILPASS_CLIENT_METADATA_HOSTS", value_name = "GLOB", value_delimiter = ',')]
        pub client_metadata_hosts: Vec<String>,
        /// PEM certificates that verify client metadata hosts' certificates, instead of the
        /// built-in roots.
        #[arg(long, env = "TAILPASS_CLIENT_METADATA_CA_FILE", value_name = "FILE")]
        pub client_metadata_ca_file: Option<PathBuf>,
        /// Local policy file (TOML): groups, and agent rules.
        #[arg(long, env = "TAILPASS_POLICY", value_name = "FILE")]
        pub policy: Option<PathBuf>,
        /// The tailnet capability holding agent rules [default: tailpass/cap/agent].
        #[arg(long, env = "TAILPASS_AGENT_CAPABILITY", value_name = "NAME")]
        pub agent_capability: Option<String> = crate::policy::agent::DEFAULT_CAPABILITY.to_owned(),
        /// Default lifetime of agent tokens, e.g. 15m; rules and requests may shorten it
        /// [default: 15m].
        #[arg(long, env = "TAILPASS_AGENT_TOKEN_LIFETIME", value_name = "DURATION")]
        pub agent_token_lifetime: Option<Seconds> = Seconds::minutes(15),
        /// Token and authorization requests per minute per node (or client, or unidentified
        /// address), unless a rule sets tokens_per_minute [default: 600].
        #[arg(long, env = "TAILPASS_RATE_LIMIT", value_name = "PER_MINUTE")]
        pub rate_limit: Option<u32> = 600,
        /// Revocation feed streams kept for peers whose rule has allow_introspect (gateways),
        /// so other subscribers cannot crowd them out [default: 64].
        #[arg(long, env = "TAILPASS_FEED_RESERVED_SLOTS", value_name = "N")]
        pub feed_reserved_slots: Option<usize> = 64,
        /// Require a server nonce in DPoP proofs (RFC 9449 §8).
        #[arg(long, env = "TAILPASS_DPOP_NONCE")]
        pub dpop_nonce: bool,
        /// Also append every audit event to this file, one JSON object per line.
        #[arg(long, env = "TAILPASS_AUDIT_FILE", value_name = "FILE")]
        pub audit_file: Option<PathBuf>,
        /// Log format [default: text].
        #[arg(long, env = "TAILPASS_LOG_FORMAT", value_enum)]
        pub log_format: Option<LogFormat> = LogFormat::Text,
        /// Static clients: only in the file, as `[[client]]` tables.
        #[arg(skip)]
        pub client: Vec<ClientEntry>,
    }
}

/// Parses `argv` as `tailpass`'s global options and one subcommand `name` with options `T`,
/// the way the real command line does, for tests of modules that must not depend on `cli`.
#[cfg(test)]
pub(crate) fn parse_for_test<T: clap::Args + clap::FromArgMatches>(
    name: &'static str,
    argv: &[&str],
) -> Result<(GlobalOptions, T), clap::Error> {
    use clap::{Args as _, FromArgMatches as _};
    let command = GlobalOptions::augment_args(clap::Command::new("tailpass"))
        .subcommand(T::augment_args(clap::Command::new(name)))
        .subcommand_required(true);
    let matches = command.try_get_matches_from(argv)?;
    let global = GlobalOptions::from_arg_matches(&matches)?;
    let sub = matches
        .subcommand_matches(name)
        .ok_or_else(|| clap::Error::new(clap::error::ErrorKind::MissingSubcommand))?;
    Ok((global, T::from_arg_matches(sub)?))
}
