//! The command line (docs/design.md "Contracts": CLI).
//!
//! Every flag has an environment variable `TAILPASS_<FLAG>` and a TOML key, the flag's name in
//! snake_case; precedence is flag, then environment, then file, then `--dev` defaults, then
//! built-in defaults. Parsing here only gives raw values their types; [`crate::config`] merges
//! them with the file and checks that they make sense together.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tailpass_verify::Alg;
use url::Url;

/// tailpass: an OpenID Connect issuer for your tailnet.
#[derive(Debug, Parser)]
#[command(name = "tailpass", version, about, long_about = None)]
pub struct Cli {
    /// Global options.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command understands.
#[derive(Debug, Clone, Default, Args)]
pub struct GlobalArgs {
    /// TOML configuration file; keys are the flags' names in snake_case.
    #[arg(long, global = true, env = "TAILPASS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory: database, admin socket, and keys unless --keys-dir
    /// [default: /var/lib/tailpass, or ./.tailpass with --dev].
    #[arg(long, global = true, env = "TAILPASS_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Signing keys directory [default: STATE_DIR/keys, or ./keys with --dev].
    #[arg(long, global = true, env = "TAILPASS_KEYS_DIR", value_name = "DIR")]
    pub keys_dir: Option<PathBuf>,
    /// Development mode: local identity (every loopback caller is you, with admin rights),
    /// SQLite in ./.tailpass, keys in ./keys, http://127.0.0.1:8765. Explicit flags win.
    #[arg(long, global = true, env = "TAILPASS_DEV")]
    pub dev: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the identity provider.
    Serve(Box<ServeArgs>),
    /// List or rotate signing keys.
    Keys {
        /// The keys action.
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Register, list or remove relying parties.
    Clients {
        /// The clients action.
        #[command(subcommand)]
        action: ClientsAction,
    },
    /// Get an agent token for this node, proving nothing but its tailnet identity.
    Token(TokenArgs),
    /// Revoke a run, node, user or token now (the kill switch), or lift a node or user.
    Revoke(RevokeArgs),
    /// Show the audit log.
    Audit(AuditArgs),
    /// Check a token as a resource server would, and print its claims or why it fails.
    Verify(VerifyArgs),
    /// Run the reference AI gateway: the only holder of the upstream API key.
    Gateway(Box<GatewayArgs>),
    /// Explain the agent policy's decision for a caller, or check a policy file.
    Policy {
        /// The policy action.
        #[command(subcommand)]
        action: PolicyAction,
    },
}

/// `tailpass policy …`.
#[derive(Debug, Clone, Subcommand)]
pub enum PolicyAction {
    /// Which rule decides for a caller, the claims its token would carry, or why it is
    /// refused. Exit status: 0 allowed, 1 refused, 2 bad input.
    Explain(PolicyExplainArgs),
    /// Validate a policy file: unknown keys, bad selectors, dangling groups, and rules of
    /// equal rank that tie. Exit status: 0 valid, 1 findings, 2 unreadable.
    Check {
        /// The policy file.
        file: PathBuf,
    },
}

/// `tailpass policy explain`.
#[derive(Debug, Clone, Args)]
pub struct PolicyExplainArgs {
    /// The caller: a peer address (resolved by the running server's live WhoIs) or a
    /// selector (`tag:ci`, `node:<StableID>`, a login).
    #[arg(long = "as", value_name = "ADDRESS|SELECTOR")]
    pub caller: String,
    /// A requested audience (repeatable).
    #[arg(long, value_name = "A")]
    pub audience: Vec<String>,
    /// A requested scope (repeatable) [default: the deciding rule's].
    #[arg(long, value_name = "S")]
    pub scope: Vec<String>,
    /// Decide from this policy file, offline, instead of asking the running server.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Print `{decision, rule, audiences, scopes, lifetime, claims, reason}` as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `tailpass verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// The token, or `-` to read it from standard input.
    #[arg(value_name = "TOKEN|-")]
    pub token: String,
    /// The issuer [default: the token's `iss`, which is then trusted only for this check].
    #[arg(long, env = "TAILPASS_ISSUER", value_name = "URL")]
    pub issuer: Option<Url>,
    /// The audience the token must carry [default: its first].
    #[arg(long, value_name = "A")]
    pub audience: Option<String>,
    /// The presenting node's stable id, to check `cnf.tailnet_node` [default: not checked,
    /// and said so].
    #[arg(long, value_name = "STABLE_ID")]
    pub node: Option<String>,
}

/// `tailpass gateway`. Flags marked required may come from the `--config` file instead.
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// Address to listen on (required).
    #[arg(long, env = "TAILPASS_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// The URL callers use to reach the gateway (DPoP proofs name it) [default: http://LISTEN].
    #[arg(long, env = "TAILPASS_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<Url>,
    /// The tailpass issuer whose tokens are accepted (required).
    #[arg(long, env = "TAILPASS_ISSUER", value_name = "URL")]
    pub issuer: Option<Url>,
    /// The audience tokens must carry, the gateway's own URL usually (required).
    #[arg(long, env = "TAILPASS_AUDIENCE", value_name = "A")]
    pub audience: Option<String>,
    /// The upstream API's base URL (required).
    #[arg(long, env = "TAILPASS_UPSTREAM", value_name = "URL")]
    pub upstream: Option<Url>,
    /// The file holding the upstream API key, which only the gateway reads (required).
    #[arg(long, env = "TAILPASS_UPSTREAM_KEY_FILE", value_name = "FILE")]
    pub upstream_key_file: Option<PathBuf>,
    /// The API the upstream speaks, which decides the endpoints forwarded [default: openai].
    #[arg(long, env = "TAILPASS_UPSTREAM_API", value_enum)]
    pub upstream_api: Option<crate::gateway::Api>,
    /// The header the upstream key goes in [default: bearer for openai, x-api-key for
    /// anthropic, x-goog-api-key for gemini].
    #[arg(long, env = "TAILPASS_UPSTREAM_AUTH", value_enum)]
    pub upstream_auth: Option<crate::gateway::Auth>,
    /// A request forwarded beyond the API's inference endpoints, as "METHOD /path" after the
    /// prefix (e.g. "POST /v1/batches", "GET /v1/files/{id}"); repeat for several.
    #[arg(
        long = "upstream-paths",
        env = "TAILPASS_UPSTREAM_PATHS",
        value_name = "METHOD /PATH",
        value_delimiter = ','
    )]
    pub upstream_paths: Vec<String>,
    /// A header set on every upstream request whatever the caller sent, as NAME=VALUE (e.g.
    /// OpenAI-Organization=org-x); account headers not pinned are stripped. Repeat for several.
    #[arg(
        long = "upstream-pin-headers",
        env = "TAILPASS_UPSTREAM_PIN_HEADERS",
        value_name = "NAME=VALUE",
        value_delimiter = ','
    )]
    pub upstream_pin_headers: Vec<String>,
    /// LLM output tokens reserved against a run's budget for a call whose body sets no
    /// max_tokens [default: 4096].
    #[arg(long, env = "TAILPASS_DEFAULT_MAX_TOKENS", value_name = "N")]
    pub default_max_tokens: Option<u64>,
    /// Serve tokens without a `models` claim (any model); by default they are refused.
    #[arg(long, env = "TAILPASS_ALLOW_UNRESTRICTED")]
    pub allow_unrestricted: bool,
    /// Refuse tokens (503) once the revocation feed has been unreachable this long, e.g. 30s
    /// [default: 30s].
    #[arg(long, env = "TAILPASS_MAX_FEED_STALENESS", value_name = "DURATION", value_parser = parse_duration)]
    pub max_feed_staleness: Option<u64>,
    /// The longest token lifetime accepted, the issuer's --max-token-lifetime; revocations
    /// are remembered this long [default: 24h].
    #[arg(long, env = "TAILPASS_MAX_TOKEN_LIFETIME", value_name = "DURATION", value_parser = parse_duration)]
    pub max_token_lifetime: Option<u64>,
    /// The local address to reach the issuer from (a tailnet address, on a multi-homed host).
    #[arg(long, env = "TAILPASS_SOURCE_ADDRESS", value_name = "IP")]
    pub source_address: Option<std::net::IpAddr>,
    /// Where presenting nodes' identities come from [default: tailscaled].
    #[arg(long, env = "TAILPASS_IDENTITY", value_enum)]
    pub identity: Option<IdentityKind>,
    /// The identity table for --identity local.
    #[arg(long, env = "TAILPASS_IDENTITY_FILE", value_name = "FILE")]
    pub identity_file: Option<PathBuf>,
    /// tailscaled's LocalAPI socket [default: /var/run/tailscale/tailscaled.sock].
    #[arg(long, env = "TAILPASS_TAILSCALED_SOCKET", value_name = "PATH")]
    pub tailscaled_socket: Option<PathBuf>,
    /// Mirror each call's record to this JSONL file (0600).
    #[arg(long, env = "TAILPASS_AUDIT_FILE", value_name = "FILE")]
    pub audit_file: Option<PathBuf>,
}

/// `tailpass token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The issuer.
    #[arg(long, env = "TAILPASS_ISSUER", value_name = "URL")]
    pub issuer: Url,
    /// An audience; repeat for several.
    #[arg(long = "audience", value_name = "A")]
    pub audiences: Vec<String>,
    /// An RFC 8707 resource (an audience too); repeat for several.
    #[arg(long = "resource", value_name = "R")]
    pub resources: Vec<String>,
    /// Space-separated scopes.
    #[arg(long)]
    pub scope: Option<String>,
    /// Requested lifetime in seconds (capped by policy).
    #[arg(long, value_name = "SECS")]
    pub expires_in: Option<u64>,
    /// Free text recorded in the token and the audit log, e.g. a CI run number.
    #[arg(long, value_name = "LABEL")]
    pub run_label: Option<String>,
    /// Bind the token to this DPoP key (PKCS#8 PEM, P-256; created if missing).
    #[arg(long, value_name = "FILE")]
    pub dpop_key: Option<PathBuf>,
    /// Print the whole token response as JSON instead of the token alone.
    #[arg(long)]
    pub json: bool,
}

/// `tailpass revoke`.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["run", "node", "user", "jti"])))]
pub struct RevokeArgs {
    /// A run id: the run and every run exchanged from it.
    #[arg(long)]
    pub run: Option<String>,
    /// A node's stable id: its tokens, its sessions, and new tokens until lifted.
    #[arg(long)]
    pub node: Option<String>,
    /// A user's login: their tokens, their sessions, and new tokens until lifted.
    #[arg(long)]
    pub user: Option<String>,
    /// One token's id.
    #[arg(long)]
    pub jti: Option<String>,
    /// For --node and --user: refuse new tokens until then (a duration like 2h, or a time).
    #[arg(long, value_name = "T", value_parser = parse_until)]
    pub until: Option<u64>,
    /// Allow new tokens for the node or user again (revoked tokens stay revoked).
    #[arg(long)]
    pub lift: bool,
}

/// `tailpass audit`.
#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// Events of this run and of runs exchanged from it.
    #[arg(long)]
    pub run: Option<String>,
    /// Events of this node (stable id).
    #[arg(long)]
    pub node: Option<String>,
    /// Events of this user (login).
    #[arg(long)]
    pub user: Option<String>,
    /// Events since then (a duration like 1h meaning "the last hour", or a time).
    #[arg(long, value_name = "T", value_parser = parse_since)]
    pub since: Option<u64>,
    /// At most this many events, the newest.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Print JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// Where caller identities come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `tailpass serve`.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8765 with --dev].
    #[arg(long, env = "TAILPASS_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// The issuer URL relying parties see [default with --dev: http://LISTEN].
    #[arg(long, env = "TAILPASS_ISSUER", value_name = "URL")]
    pub issuer: Option<Url>,
    /// A second, loopback-only listener for `tailscale serve`: the only place where the last
    /// X-Forwarded-For value is taken as the caller's address.
    #[arg(long, env = "TAILPASS_PROXY_LISTEN", value_name = "ADDR:PORT")]
    pub proxy_listen: Option<SocketAddr>,
    /// Algorithm of access tokens [default: ES256]. ID tokens use the client's registered
    /// algorithm; a client that registered none gets RS256, OIDC's default, unless --no-rs256,
    /// in which case it gets this one.
    #[arg(long, env = "TAILPASS_SIGNING_ALG", value_name = "ALG", value_parser = parse_alg)]
    pub signing_alg: Option<Alg>,
    /// Do not keep an RS256 key (clients must then register another ID token algorithm).
    #[arg(long, env = "TAILPASS_NO_RS256")]
    pub no_rs256: bool,
    /// Another algorithm clients may choose for their ID tokens (EdDSA, say); repeat for
    /// several.
    #[arg(long = "enable-alg", env = "TAILPASS_ENABLE_ALG", value_name = "ALG", value_parser = parse_alg, value_delimiter = ',')]
    pub enable_algs: Vec<Alg>,
    /// Where caller identities come from [default: tailscaled, or a local table with --dev].
    #[arg(long, env = "TAILPASS_IDENTITY", value_enum)]
    pub identity: Option<IdentityKind>,
    /// The identity table for --identity local: {"<ip>": <WhoIs answer>, ...}.
    #[arg(long, env = "TAILPASS_IDENTITY_FILE", value_name = "FILE")]
    pub identity_file: Option<PathBuf>,
    /// tailscaled's LocalAPI socket [default: /var/run/tailscale/tailscaled.sock].
    #[arg(long, env = "TAILPASS_TAILSCALED_SOCKET", value_name = "PATH")]
    pub tailscaled_socket: Option<PathBuf>,
    /// Host name of the embedded node (--identity tsnet) [default: tailpass].
    #[arg(long, env = "TAILPASS_HOSTNAME", value_name = "NAME")]
    pub hostname: Option<String>,
    /// TLS certificate chain (PEM).
    #[arg(
        long,
        env = "TAILPASS_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(
        long,
        env = "TAILPASS_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Lifetime of access and ID tokens, e.g. 15m, 1h [default: 1h].
    #[arg(long, env = "TAILPASS_TOKEN_LIFETIME", value_name = "DURATION", value_parser = parse_duration)]
    pub token_lifetime: Option<u64>,
    /// The longest lifetime any policy may grant a token [default: 24h]. Retired keys stay
    /// published this long.
    #[arg(long, env = "TAILPASS_MAX_TOKEN_LIFETIME", value_name = "DURATION", value_parser = parse_duration)]
    pub max_token_lifetime: Option<u64>,
    /// Absolute lifetime of a refresh-token family [default: 30d].
    #[arg(long, env = "TAILPASS_REFRESH_LIFETIME", value_name = "DURATION", value_parser = parse_duration)]
    pub refresh_lifetime: Option<u64>,
    /// Keep audit events this long, e.g. 400d; older ones are dropped in whole ranges, never
    /// one by one. `0` keeps them forever [default: 0].
    #[arg(long, env = "TAILPASS_AUDIT_RETENTION", value_name = "DURATION", value_parser = parse_duration)]
    pub audit_retention: Option<u64>,
    /// Rotate signing keys this often, e.g. 30d; `0` rotates only on demand [default: 90d].
    #[arg(long, env = "TAILPASS_KEY_ROTATION_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    pub key_rotation_interval: Option<u64>,
    /// Accept http:// redirect URIs to non-loopback hosts.
    #[arg(long, env = "TAILPASS_ALLOW_HTTP_REDIRECT_URIS")]
    pub allow_http_redirect_uris: bool,
    /// Local policy file (TOML): groups, and agent rules.
    #[arg(long, env = "TAILPASS_POLICY", value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// The tailnet capability holding agent rules [default: tailpass/cap/agent].
    #[arg(long, env = "TAILPASS_AGENT_CAPABILITY", value_name = "NAME")]
    pub agent_capability: Option<String>,
    /// Default lifetime of agent tokens, e.g. 15m; rules and requests may shorten it
    /// [default: 15m].
    #[arg(long, env = "TAILPASS_AGENT_TOKEN_LIFETIME", value_name = "DURATION", value_parser = parse_duration)]
    pub agent_token_lifetime: Option<u64>,
    /// Token and authorization requests per minute per node (or client, or unidentified
    /// address), unless a rule sets tokens_per_minute [default: 600].
    #[arg(long, env = "TAILPASS_RATE_LIMIT", value_name = "PER_MINUTE")]
    pub rate_limit: Option<u32>,
    /// Revocation feed streams kept for peers whose rule has allow_introspect (gateways), so
    /// other subscribers cannot crowd them out [default: 64].
    #[arg(long, env = "TAILPASS_FEED_RESERVED_SLOTS", value_name = "N")]
    pub feed_reserved_slots: Option<usize>,
    /// Require a server nonce in DPoP proofs (RFC 9449 §8).
    #[arg(long, env = "TAILPASS_DPOP_NONCE")]
    pub dpop_nonce: bool,
    /// Also append every audit event to this file, one JSON object per line.
    #[arg(long, env = "TAILPASS_AUDIT_FILE", value_name = "FILE")]
    pub audit_file: Option<PathBuf>,
    /// Log format [default: text].
    #[arg(long, env = "TAILPASS_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

/// `tailpass keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// List keys: active, next and retired.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Retire the active key, promote the next one, publish a new next key.
    Rotate {
        /// Only this algorithm [default: every enabled one].
        #[arg(long, value_parser = parse_alg)]
        alg: Option<Alg>,
    },
}

/// `tailpass clients …`.
#[derive(Debug, Subcommand)]
pub enum ClientsAction {
    /// Register a client; prints its client_id and client_secret once, as JSON.
    Add(ClientAddArgs),
    /// List clients.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a client.
    Rm {
        /// The client id.
        client_id: String,
    },
}

/// `tailpass clients add`.
#[derive(Debug, Clone, Args)]
pub struct ClientAddArgs {
    /// A name for people.
    #[arg(long)]
    pub name: String,
    /// A redirect URI; repeat for several.
    #[arg(long = "redirect-uri", value_name = "URI")]
    pub redirect_uris: Vec<String>,
    /// A public client: no secret, PKCE required.
    #[arg(long)]
    pub public: bool,
    /// ID token algorithm [default: RS256].
    #[arg(long, value_parser = parse_alg)]
    pub id_token_alg: Option<Alg>,
    /// A post-logout redirect URI; repeat for several.
    #[arg(long = "post-logout-redirect-uri", value_name = "URI")]
    pub post_logout_redirect_uris: Vec<String>,
    /// Who may log in: a login or group:NAME; repeat for several [default: any tailnet user].
    #[arg(long = "user", value_name = "LOGIN|group:NAME")]
    pub users: Vec<String>,
    /// An RFC 8707 resource the client may request; repeat for several.
    #[arg(long = "resource", value_name = "URI")]
    pub resources: Vec<String>,
    /// OIDC back-channel logout endpoint.
    #[arg(long)]
    pub backchannel_logout_uri: Option<String>,
}

fn now() -> u64 {
    tailpass_verify::UnixTime::now().0
}

/// A point in time: Unix seconds, an RFC 3339 time, or a duration counted from now by `sign`.
fn parse_time(value: &str, forward: bool) -> Result<u64, String> {
    if let Ok(at) =
        time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
    {
        return u64::try_from(at.unix_timestamp()).map_err(|_| format!("{value:?} is before 1970"));
    }
    if value.len() >= 9 && value.bytes().all(|b| b.is_ascii_digit()) {
        return value
            .parse()
            .map_err(|_| format!("{value:?} is not a time"));
    }
    let secs = parse_duration(value)?;
    Ok(if forward {
        now().saturating_add(secs)
    } else {
        now().saturating_sub(secs)
    })
}

fn parse_until(value: &str) -> Result<u64, String> {
    parse_time(value, true)
}

fn parse_since(value: &str) -> Result<u64, String> {
    parse_time(value, false)
}

fn parse_alg(value: &str) -> Result<Alg, String> {
    value
        .parse()
        .map_err(|e: tailpass_verify::alg::UnknownAlg| e.to_string())
}

/// Parses a duration: whole seconds (`3600`) or a number with a unit `s`, `m`, `h`, `d`.
pub fn parse_duration(value: &str) -> Result<u64, String> {
    let value = value.trim();
    let (digits, unit) = match value.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => value.split_at(at),
        None => (value, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{value:?} is not a duration (e.g. 90s, 15m, 1h, 30d)"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("{value:?}: unknown unit {unit:?} (s, m, h, d)")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{value:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3600"), Ok(3600));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("1h"), Ok(3600));
        assert_eq!(parse_duration("30d"), Ok(2_592_000));
        for bad in ["", "h", "1w", "-1", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn times_for_until_and_since() {
        let t = now();
        assert!((parse_until("2h").unwrap() as i64 - (t + 7200) as i64).abs() <= 2);
        assert!((parse_since("1h").unwrap() as i64 - (t - 3600) as i64).abs() <= 2);
        assert_eq!(parse_until("2026-11-22T12:00:00Z"), Ok(1_795_348_800));
        assert_eq!(parse_since("1795348800"), Ok(1_795_348_800));
        assert!(parse_until("tomorrow").is_err());
    }

    #[test]
    fn revoke_needs_exactly_one_target() {
        assert!(Cli::try_parse_from(["tailpass", "revoke"]).is_err());
        assert!(Cli::try_parse_from(["tailpass", "revoke", "--run", "a", "--node", "b"]).is_err());
        assert!(Cli::try_parse_from(["tailpass", "revoke", "--run", "r1"]).is_ok());
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli =
            Cli::try_parse_from(["tailpass", "serve", "--dev", "--state-dir", "/tmp/x"]).unwrap();
        assert!(cli.global.dev);
        assert_eq!(cli.global.state_dir, Some(PathBuf::from("/tmp/x")));
    }
}
