//! The options of `tailpass gateway`, declared once like `serve`'s (flag, environment
//! variable `TAILPASS_<FLAG>`, TOML key, default, help), and their resolution into
//! [`GatewaySettings`]. The file is read by the same loader as `serve`'s
//! ([`crate::config::file::load`]): top-level keys, the global options' and these.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;
use url::Url;

use super::{Api, Auth, DEFAULT_MAX_FEED_STALENESS, DEFAULT_MAX_TOKENS, GatewaySettings};
use super::{UpstreamSettings, endpoints, headers};
use crate::config::options::options;
use crate::config::{ConfigError, GlobalOptions, IdentityKind, Seconds, file};

/// A header pinned on every upstream request: `NAME=VALUE` on the command line, a
/// `NAME = "VALUE"` entry of the `upstream_pin_headers` table in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinHeader {
    /// The header's name, as given.
    pub name: String,
    /// Its value, as given.
    pub value: String,
}

impl std::str::FromStr for PinHeader {
    type Err = String;

    fn from_str(pin: &str) -> Result<PinHeader, String> {
        let (name, value) = pin
            .split_once('=')
            .ok_or_else(|| format!("{pin:?}: expected NAME=VALUE"))?;
        Ok(PinHeader {
            name: name.to_owned(),
            value: value.to_owned(),
        })
    }
}

/// The `upstream` setting: on the command line and in the environment the single upstream's
/// base URL; in the file that, or `[[upstream]]` tables for several.
#[derive(Debug, Clone, PartialEq)]
pub enum UpstreamOption {
    /// One upstream at this base URL, under no prefix, described by the `upstream_*` options.
    Url(Url),
    /// Several, each under its own prefix.
    Tables(Vec<UpstreamTable>),
}

impl std::str::FromStr for UpstreamOption {
    type Err = url::ParseError;

    fn from_str(text: &str) -> Result<UpstreamOption, url::ParseError> {
        Url::parse(text).map(UpstreamOption::Url)
    }
}

/// A string is a URL, an array the tables; each form's own errors are kept (an untagged enum
/// would only say that neither matched).
impl<'de> Deserialize<'de> for UpstreamOption {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UpstreamOption;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a base URL, or [[upstream]] tables")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<UpstreamOption, E> {
                Url::parse(text)
                    .map(UpstreamOption::Url)
                    .map_err(|e| E::custom(format!("upstream {text:?}: {e}")))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<UpstreamOption, A::Error> {
                Vec::<UpstreamTable>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(UpstreamOption::Tables)
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

/// One `[[upstream]]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTable {
    /// Its name, in the call log and metrics: letters, digits, `-` and `_`.
    pub name: String,
    /// Its base URL; the path after the prefix is appended to it.
    pub base_url: Url,
    /// The file holding its key (required unless `auth = "none"`).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The header its key goes in [default: by `api`].
    #[serde(default)]
    pub auth: Option<Auth>,
    /// The API it speaks [default: openai].
    #[serde(default)]
    pub api: Option<Api>,
    /// The path prefix routed to it, e.g. `/anthropic`.
    pub prefix: String,
    /// Requests allowed beyond the API's inference endpoints, as "METHOD /path".
    #[serde(default)]
    pub paths: Vec<String>,
    /// Headers set on every request to it, whatever the caller sent.
    #[serde(default)]
    pub pin_headers: BTreeMap<String, String>,
}

/// The file's `upstream_pin_headers`: a table of names to values.
fn pins_from_table<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<PinHeader>, D::Error> {
    Ok(BTreeMap::<String, String>::deserialize(deserializer)?
        .into_iter()
        .map(|(name, value)| PinHeader { name, value })
        .collect())
}

options! {
    /// `tailpass gateway`. Options marked required may come from the `--config` file instead.
    pub struct GatewayOptions {
        /// Address to listen on (required).
        #[arg(long, env = "TAILPASS_LISTEN", value_name = "ADDR:PORT")]
        pub listen: Option<SocketAddr>,
        /// The URL callers use to reach the gateway (DPoP proofs name it)
        /// [default: http://LISTEN].
        #[arg(long, env = "TAILPASS_PUBLIC_URL", value_name = "URL")]
        pub public_url: Option<Url>,
        /// The tailpass issuer whose tokens are accepted (required).
        #[arg(long, env = "TAILPASS_ISSUER", value_name = "URL")]
        pub issuer: Option<Url>,
        /// The audience tokens must carry, the gateway's own URL usually (required).
        #[arg(long, env = "TAILPASS_AUDIENCE", value_name = "A")]
        pub audience: Option<String>,
        /// The upstream API's base URL (required, unless the file has `[[upstream]]` tables,
        /// one per provider, each with its own prefix and key).
        #[arg(long, env = "TAILPASS_UPSTREAM", value_name = "URL")]
        pub upstream: Option<UpstreamOption>,
        /// The file holding the upstream API key, which only the gateway reads (required).
        #[arg(long, env = "TAILPASS_UPSTREAM_KEY_FILE", value_name = "FILE")]
        pub upstream_key_file: Option<PathBuf>,
        /// The API the upstream speaks, which decides the endpoints forwarded
        /// [default: openai].
        #[arg(long, env = "TAILPASS_UPSTREAM_API", value_enum)]
        pub upstream_api: Option<Api> = Api::default(),
        /// The header the upstream key goes in [default: bearer for openai, x-api-key for
        /// anthropic, x-goog-api-key for gemini].
        #[arg(long, env = "TAILPASS_UPSTREAM_AUTH", value_enum)]
        pub upstream_auth: Option<Auth>,
        /// A request forwarded beyond the API's inference endpoints, as "METHOD /path" after
        /// the prefix (e.g. "POST /v1/batches", "GET /v1/files/{id}"); repeat for several.
        #[arg(long, env = "TAILPASS_UPSTREAM_PATHS", value_name = "METHOD /PATH", value_delimiter = ',')]
        pub upstream_paths: Vec<String>,
        /// A header set on every upstream request whatever the caller sent, as NAME=VALUE (e.g.
        /// OpenAI-Organization=org-x); account headers not pinned are stripped. Repeat for
        /// several.
        #[arg(long, env = "TAILPASS_UPSTREAM_PIN_HEADERS", value_name = "NAME=VALUE", value_delimiter = ',')]
        #[serde(deserialize_with = "pins_from_table")]
        pub upstream_pin_headers: Vec<PinHeader>,
        /// LLM output tokens reserved against a run's budget for a call whose body sets no
        /// max_tokens [default: 4096].
        #[arg(long, env = "TAILPASS_DEFAULT_MAX_TOKENS", value_name = "N")]
        pub default_max_tokens: Option<u64> = DEFAULT_MAX_TOKENS,
        /// Serve tokens without a `models` claim (any model); by default they are refused.
        #[arg(long, env = "TAILPASS_ALLOW_UNRESTRICTED")]
        pub allow_unrestricted: bool,
        /// Refuse tokens (503) once the revocation feed has been unreachable this long, e.g.
        /// 30s [default: 30s].
        #[arg(long, env = "TAILPASS_MAX_FEED_STALENESS", value_name = "DURATION")]
        pub max_feed_staleness: Option<Seconds> = Seconds(DEFAULT_MAX_FEED_STALENESS),
        /// The longest token lifetime accepted, the issuer's --max-token-lifetime; revocations
        /// are remembered this long [default: 24h].
        #[arg(long, env = "TAILPASS_MAX_TOKEN_LIFETIME", value_name = "DURATION")]
        pub max_token_lifetime: Option<Seconds> =
            Seconds(tailpass_verify::feed::DEFAULT_MAX_LIFETIME),
        /// The local address to reach the issuer from (a tailnet address, on a multi-homed
        /// host).
        #[arg(long, env = "TAILPASS_SOURCE_ADDRESS", value_name = "IP")]
        pub source_address: Option<IpAddr>,
        /// Where presenting nodes' identities come from [default: tailscaled].
        #[arg(long, env = "TAILPASS_IDENTITY", value_enum)]
        pub identity: Option<IdentityKind>,
        /// The identity table for --identity local.
        #[arg(long, env = "TAILPASS_IDENTITY_FILE", value_name = "FILE")]
        pub identity_file: Option<PathBuf>,
        /// tailscaled's LocalAPI socket [default: /var/run/tailscale/tailscaled.sock].
        #[arg(long, env = "TAILPASS_TAILSCALED_SOCKET", value_name = "PATH")]
        pub tailscaled_socket: Option<PathBuf> =
            PathBuf::from(crate::identity::tailscaled::DEFAULT_SOCKET),
        /// Mirror each call's record to this JSONL file (0600).
        #[arg(long, env = "TAILPASS_AUDIT_FILE", value_name = "FILE")]
        pub audit_file: Option<PathBuf>,
        /// MCP servers fronted: only in the file, as `[[mcp]]` tables (`name`, `url`,
        /// `prefix`).
        #[arg(skip)]
        pub mcp: Vec<super::mcp::McpEntry>,
        /// Serve tailnet callers that present no token with a run token the gateway obtains
        /// for them from the issuer (ambient mode); needs a rule with act_for_peers for the
        /// gateway. Cross-site browser requests are refused.
        #[arg(long, env = "TAILPASS_AMBIENT")]
        pub ambient: bool,
        /// How long an ambient caller's run lasts at most (its rule's max_lifetime may cap
        /// it): one run per caller node and lifetime [default: 1h].
        #[arg(long, env = "TAILPASS_AMBIENT_RUN_LIFETIME", value_name = "DURATION")]
        pub ambient_run_lifetime: Option<Seconds> = Seconds(super::ambient::DEFAULT_RUN_LIFETIME),
    }
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

/// The header an API reads its key from.
pub fn default_auth(api: Api) -> Auth {
    match api {
        Api::Openai => Auth::Bearer,
        Api::Anthropic => Auth::XApiKey,
        Api::Gemini => Auth::XGoogApiKey,
    }
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

impl GatewaySettings {
    /// Layers flags (environment included) over the `--config` file and the defaults; the
    /// settings and the identity source to use. Of the global options `--dev`, `--config`
    /// (to find the file), `--state-dir` and the store's (`--store`, `--store-ca-file`,
    /// `--store-pool-size`: where budgets persist) matter here.
    pub fn resolve(
        global: &GlobalOptions,
        args: &GatewayOptions,
    ) -> Result<(GatewaySettings, GatewayIdentity), ConfigError> {
        let (file_global, file) = file::load::<GatewayOptions>(global.config.as_deref())?;
        let global = global.clone().over(file_global);
        let dev = global.dev;
        let options = args.clone().over(file);
        let required = |name: &str| {
            invalid(format!(
                "--{name} is required (flag, TAILPASS_ variable or config file)"
            ))
        };
        let trimmed = |u: &Url| u.as_str().trim_end_matches('/').to_owned();
        let listen = options.listen.ok_or_else(|| required("listen"))?;
        let issuer = options
            .issuer
            .as_ref()
            .map(trimmed)
            .ok_or_else(|| required("issuer"))?;
        let audience = options
            .audience
            .clone()
            .ok_or_else(|| required("audience"))?;
        let upstreams = match &options.upstream {
            None => return Err(required("upstream")),
            Some(UpstreamOption::Url(url)) => vec![single_upstream(&options, trimmed(url))?],
            Some(UpstreamOption::Tables(tables)) => upstream_tables(&options, tables)?,
        };
        let identity = match (options.identity, options.identity_file.clone()) {
            (Some(IdentityKind::Local) | None, Some(path)) => GatewayIdentity::Local(path),
            (Some(IdentityKind::Local) | None, None) if dev => GatewayIdentity::Dev,
            (Some(IdentityKind::Local), None) => {
                return Err(invalid("--identity local needs --identity-file"));
            }
            (None | Some(IdentityKind::Tailscaled), None) => {
                GatewayIdentity::Tailscaled(options.tailscaled_socket())
            }
            (Some(IdentityKind::Tsnet), _) => {
                return Err(invalid(
                    "the gateway asks tailscaled or a local table; tsnet is not supported",
                ));
            }
            (Some(IdentityKind::Tailscaled), Some(_)) => {
                return Err(invalid("--identity-file only applies to --identity local"));
            }
        };
        let settings = GatewaySettings {
            listen,
            public_url: options
                .public_url
                .as_ref()
                .map(trimmed)
                .unwrap_or_else(|| format!("http://{listen}")),
            issuer,
            audience,
            upstreams,
            mcp: super::mcp::McpSettings::from_entries(&options.mcp).map_err(invalid)?,
            source_address: options.source_address,
            audit_file: options.audit_file.clone(),
            default_max_tokens: options.default_max_tokens(),
            allow_unrestricted: options.allow_unrestricted,
            max_feed_staleness: options.max_feed_staleness().secs(),
            max_token_lifetime: options.max_token_lifetime().secs(),
            budget_store: Some(crate::config::store_with_default(
                &global,
                super::budget_store::DEFAULT_FILE,
            )?),
            ambient: options
                .ambient
                .then(|| options.ambient_run_lifetime().secs()),
        };
        Ok((settings, identity))
    }
}

/// Parses `paths` entries (`"METHOD /path"`) of the upstream `what`.
fn parse_paths(what: &str, paths: &[String]) -> Result<Vec<endpoints::Endpoint>, ConfigError> {
    paths
        .iter()
        .map(|p| endpoints::Endpoint::parse(p).map_err(|e| invalid(format!("{what}: {e}"))))
        .collect()
}

/// The single upstream of `--upstream URL` and the `upstream_*` options.
fn single_upstream(
    options: &GatewayOptions,
    base_url: String,
) -> Result<UpstreamSettings, ConfigError> {
    let api = options.upstream_api();
    Ok(UpstreamSettings {
        name: super::DEFAULT_UPSTREAM.to_owned(),
        prefix: String::new(),
        base_url,
        key_file: options.upstream_key_file.clone().ok_or_else(|| {
            invalid("--upstream-key-file is required (flag, TAILPASS_ variable or config file)")
        })?,
        api,
        auth: options.upstream_auth.unwrap_or_else(|| default_auth(api)),
        paths: parse_paths("upstream_paths", &options.upstream_paths)?,
        pin_headers: options
            .upstream_pin_headers
            .iter()
            .map(|pin| headers::parse_pin(&pin.name, &pin.value).map_err(invalid))
            .collect::<Result<_, _>>()?,
    })
}

/// The upstreams of `[[upstream]]` tables: names and prefixes unique, each prefix a plain
/// path, a key file for each that sends one. The single-upstream options do not mix with
/// them (each table says its own).
fn upstream_tables(
    options: &GatewayOptions,
    tables: &[UpstreamTable],
) -> Result<Vec<UpstreamSettings>, ConfigError> {
    let single = [
        ("upstream_key_file", options.upstream_key_file.is_some()),
        ("upstream_auth", options.upstream_auth.is_some()),
        ("upstream_paths", !options.upstream_paths.is_empty()),
        (
            "upstream_pin_headers",
            !options.upstream_pin_headers.is_empty(),
        ),
    ];
    if let Some((name, _)) = single.iter().find(|(_, set)| *set) {
        return Err(invalid(format!(
            "{name} applies to a single --upstream URL; with [[upstream]] tables, set it in each table"
        )));
    }
    if tables.is_empty() {
        return Err(invalid("upstream = []: name at least one upstream"));
    }
    let mut names = std::collections::BTreeSet::new();
    let mut prefixes = std::collections::BTreeSet::new();
    tables
        .iter()
        .map(|table| {
            let what = format!("[[upstream]] {:?}", table.name);
            let name_ok = !table.name.is_empty()
                && table
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
            if !name_ok {
                return Err(invalid(format!(
                    "{what}: a name is letters, digits, '-' and '_'"
                )));
            }
            if !names.insert(table.name.as_str()) {
                return Err(invalid(format!("{what}: the name is used twice")));
            }
            super::routes::check_prefix(&table.prefix)
                .map_err(|e| invalid(format!("{what}: {e}")))?;
            if !prefixes.insert(table.prefix.as_str()) {
                return Err(invalid(format!("{what}: another upstream has this prefix")));
            }
            if !matches!(table.base_url.scheme(), "http" | "https") {
                return Err(invalid(format!("{what}: base_url must be http(s)")));
            }
            let api = table.api.unwrap_or_default();
            let auth = table.auth.unwrap_or_else(|| default_auth(api));
            let key_file = match (&table.key_file, auth) {
                (Some(file), _) => file.clone(),
                (None, Auth::None) => PathBuf::new(),
                (None, _) => {
                    return Err(invalid(format!(
                        "{what}: key_file is required unless auth = \"none\""
                    )));
                }
            };
            Ok(UpstreamSettings {
                name: table.name.clone(),
                prefix: table.prefix.clone(),
                base_url: table.base_url.as_str().trim_end_matches('/').to_owned(),
                key_file,
                api,
                auth,
                paths: parse_paths(&format!("{what} paths"), &table.paths)?,
                pin_headers: table
                    .pin_headers
                    .iter()
                    .map(|(name, value)| {
                        headers::parse_pin(name, value).map_err(|e| invalid(format!("{what}: {e}")))
                    })
                    .collect::<Result<_, _>>()?,
            })
        })
        .collect()
}
