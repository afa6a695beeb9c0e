//! The command line (docs/design.md "Contracts": CLI): the `tailpass` command and its
//! subcommands.
//!
//! The options of `serve` and `gateway` and the global options are declared once, with their
//! environment variables and TOML keys, in [`crate::config::options`] and
//! [`crate::gateway::options`]; the one-shot commands' flags are here, flags only. Parsing here
//! only gives raw values their types; [`crate::config`] layers them over the file and checks
//! that they make sense together.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tailpass_verify::Alg;
use url::Url;

use crate::config::{GlobalOptions, Seconds, ServeOptions};
use crate::gateway::options::GatewayOptions;

/// tailpass: an OpenID Connect issuer for your tailnet.
#[derive(Debug, Parser)]
#[command(name = "tailpass", version, about, long_about = None)]
pub struct Cli {
    /// Global options.
    #[command(flatten)]
    pub global: GlobalOptions,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the identity provider.
    Serve(Box<ServeOptions>),
    /// List, rotate or revoke signing keys, or manage their key-encryption key.
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
    Gateway(Box<GatewayOptions>),
    /// Explain the agent policy's decision for a caller, or check a policy file.
    Policy {
        /// The policy action.
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Copy the durable state: an online backup.
    Store {
        /// The store action.
        #[command(subcommand)]
        action: StoreAction,
    },
}

/// `tailpass store …`.
#[derive(Debug, Clone, Subcommand)]
pub enum StoreAction {
    /// Take an online, consistent copy of a store into FILE (created, mode 0600; refused if
    /// it exists) while the server goes on writing: a SQLite database, which `store migrate
    /// --from sqlite:FILE` restores.
    Backup {
        /// The store to copy: `sqlite:PATH` or `postgres://…`.
        #[arg(long, value_name = "URL")]
        from: crate::store::StoreUrl,
        /// Where the copy goes.
        file: PathBuf,
    },
    /// Copy every client, consent, code, refresh family, revocation and audit event, federated
    /// run and federation block, and the shared keys, from one store into another, empty one (numbers kept), then verify the
    /// copy by re-reading it. Keys kept in files (a keys directory) stay files.
    Migrate {
        /// The store to copy: `sqlite:PATH` or `postgres://…`.
        #[arg(long, value_name = "URL")]
        from: crate::store::StoreUrl,
        /// The empty store to copy into: `sqlite:PATH` or `postgres://…`.
        #[arg(long, value_name = "URL")]
        to: crate::store::StoreUrl,
        /// PEM roots that replace the system's when verifying a PostgreSQL server's
        /// certificate (`sslmode=require`).
        #[arg(long, value_name = "FILE")]
        store_ca_file: Option<PathBuf>,
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
    #[arg(long, value_name = "URL")]
    pub issuer: Option<Url>,
    /// The audience the token must carry [default: its first].
    #[arg(long, value_name = "A")]
    pub audience: Option<String>,
    /// The presenting node's stable id, to check `cnf.tailnet_node` [default: not checked,
    /// and said so].
    #[arg(long, value_name = "STABLE_ID")]
    pub node: Option<String>,
}

/// `tailpass token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The issuer.
    #[arg(long, value_name = "URL")]
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
    /// Trade an external token instead (a CI platform's OIDC token, e.g. GitHub Actions'),
    /// read from FILE or from standard input with `-` (never from the command line, where
    /// other users see it): an RFC 8693 exchange that a `[[federation]]` table of the issuer
    /// must match. Off the tailnet the issuer requires --dpop-key.
    #[arg(long, value_name = "FILE", conflicts_with = "helper")]
    pub subject_token: Option<PathBuf>,
    /// Print the whole token response as JSON instead of the token alone.
    #[arg(long, conflicts_with = "helper")]
    pub json: bool,
    /// Act as a key helper (Claude Code's `apiKeyHelper`, an SDK's key callback): print the
    /// token alone, reusing one cached in `$XDG_RUNTIME_DIR/tailpass/` (mode 0700, files
    /// 0600) until shortly before it expires — at `exp` minus the larger of 60 s and a tenth
    /// of its lifetime. Without `XDG_RUNTIME_DIR` (an existing directory) nothing is cached
    /// and every call mints a token; DPoP-bound tokens (`--dpop-key`) are never cached.
    #[arg(long)]
    pub helper: bool,
}

/// `tailpass revoke`.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["run", "node", "user", "jti", "fed"])))]
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
    /// A `[[federation]]` table: every unexpired run minted from its external tokens whose
    /// claims match every --claim, and new trades of such tokens until --until (by default
    /// for the server's max_token_lifetime).
    #[arg(long, value_name = "NAME", requires = "claim", conflicts_with = "lift")]
    pub fed: Option<String>,
    /// With --fed: a claim the external token had, compared as text (repeat for several).
    #[arg(long, value_name = "K=V", requires = "fed")]
    pub claim: Vec<String>,
    /// For --node, --user and --fed: refuse new tokens until then (a duration like 2h, or a
    /// time).
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
    /// The runs minted from external tokens of this `[[federation]]` table whose claims
    /// match every --claim, each with its events.
    #[arg(long, value_name = "NAME", requires = "claim", conflicts_with_all = ["run", "node", "user", "gateway_logs"])]
    pub fed: Option<String>,
    /// With --fed: a claim the external token had, compared as text (repeat for several).
    #[arg(long, value_name = "K=V", requires = "fed")]
    pub claim: Vec<String>,
    /// Events since then (a duration like 1h meaning "the last hour", or a time).
    #[arg(long, value_name = "T", value_parser = parse_since)]
    pub since: Option<u64>,
    /// At most this many events, the newest.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Print JSON lines.
    #[arg(long)]
    pub json: bool,
    /// A gateway's call log (its `--audit-file`, JSONL) whose calls are merged in, by time,
    /// under the same filters: with `--run`, the calls of that run and of every run exchanged
    /// from it. Repeat for several gateways. Unreadable lines are skipped and counted.
    #[arg(long = "gateway-log", value_name = "FILE")]
    pub gateway_logs: Vec<PathBuf>,
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
    /// Revoke a compromised key: dropped from the JWKS at once (replaced if it was signing),
    /// and every token it signed refused through the revocation feed.
    Revoke {
        /// The key's id.
        kid: String,
    },
    /// Print a new key-encryption key (32 random bytes, base64 on one line): save it to a
    /// file of mode 0600 and give it as --key-encryption-key-file.
    NewKek,
    /// Re-seal every stored key under a new key-encryption key (the current one is
    /// --key-encryption-key-file).
    Rewrap {
        /// The new key-encryption key's file (mode 0600).
        #[arg(long, value_name = "FILE")]
        new_key_encryption_key_file: PathBuf,
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
    let secs = value.parse::<Seconds>().map_err(|e| e.to_string())?.secs();
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

#[cfg(test)]
mod tests {
    use clap::{ArgAction, CommandFactory as _};

    use super::*;
    use crate::config::file::keys_of;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The flags `command` declares itself: help and version left out, global flags only on
    /// the top-level command.
    fn own_flags(command: &clap::Command) -> Vec<&clap::Arg> {
        command
            .get_arguments()
            .filter(|arg| {
                !matches!(
                    arg.get_action(),
                    ArgAction::Help
                        | ArgAction::HelpShort
                        | ArgAction::HelpLong
                        | ArgAction::Version
                )
            })
            .collect()
    }

    /// The contract: every flag of `serve` and `gateway`, and every global flag, is also the
    /// variable `TAILPASS_<FLAG>` and the TOML key `<flag>` (snake_case) — the field the
    /// file's loader reads — and every key is a flag. A new option without them fails here.
    #[test]
    fn every_serve_gateway_and_global_flag_has_its_variable_and_toml_key() {
        let cli = Cli::command();
        let sub = |name: &str| cli.find_subcommand(name).map(own_flags).unwrap();
        let sections = [
            ("global", own_flags(&cli), keys_of::<GlobalOptions>()),
            ("serve", sub("serve"), keys_of::<ServeOptions>()),
            ("gateway", sub("gateway"), keys_of::<GatewayOptions>()),
        ];
        for (name, flags, keys) in sections {
            assert!(flags.len() >= 4, "{name} has its flags");
            for arg in &flags {
                let long = arg
                    .get_long()
                    .unwrap_or_else(|| panic!("{name}: {arg} has no --flag"));
                let env = format!("TAILPASS_{}", long.to_ascii_uppercase().replace('-', "_"));
                assert_eq!(
                    arg.get_env().and_then(|e| e.to_str()),
                    Some(env.as_str()),
                    "{name} --{long}"
                );
                let key = long.replace('-', "_");
                assert_eq!(
                    arg.get_id().as_str(),
                    key,
                    "{name} --{long} is the field {key}"
                );
                if (name, long) == ("global", "config") {
                    // The file cannot name another file.
                    assert!(!keys.contains(&"config"));
                    continue;
                }
                assert!(
                    keys.contains(&key.as_str()),
                    "{name} --{long}: no TOML key {key}"
                );
            }
            for key in keys {
                let is_flag = flags.iter().any(|arg| arg.get_id().as_str() == *key);
                // `[[client]]` and `[[mcp]]` tables exist only in the file.
                assert!(
                    is_flag || [("serve", "client"), ("gateway", "mcp")].contains(&(name, *key)),
                    "{name}: key {key} has no flag"
                );
            }
        }
    }

    /// The contract: the one-shot commands (everything but `serve` and `gateway`, at every
    /// depth) take flags only — no environment variable.
    #[test]
    fn one_shot_commands_read_no_environment() {
        fn check(command: &clap::Command, path: &str) -> usize {
            for arg in own_flags(command) {
                assert_eq!(arg.get_env(), None, "`{path}` {arg} reads the environment");
            }
            1 + command
                .get_subcommands()
                .map(|sub| check(sub, &format!("{path} {}", sub.get_name())))
                .sum::<usize>()
        }
        let cli = Cli::command();
        let mut checked = 0;
        for command in cli.get_subcommands() {
            if !matches!(command.get_name(), "serve" | "gateway") {
                checked += check(command, command.get_name());
            }
        }
        assert!(checked >= 6, "token, revoke, audit, verify, policy, …");
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
        // --fed needs a claim, a claim needs --fed, and --fed is not lifted.
        assert!(Cli::try_parse_from(["tailpass", "revoke", "--fed", "github"]).is_err());
        assert!(Cli::try_parse_from(["tailpass", "revoke", "--claim", "run_id=1"]).is_err());
        assert!(
            Cli::try_parse_from([
                "tailpass", "revoke", "--fed", "gh", "--claim", "a=b", "--lift"
            ])
            .is_err()
        );
        assert!(
            Cli::try_parse_from([
                "tailpass", "revoke", "--fed", "gh", "--run", "r1", "--claim", "a=b"
            ])
            .is_err()
        );
        assert!(
            Cli::try_parse_from([
                "tailpass", "revoke", "--fed", "gh", "--claim", "a=b", "--claim", "c=d", "--until",
                "2h"
            ])
            .is_ok()
        );
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli =
            Cli::try_parse_from(["tailpass", "serve", "--dev", "--state-dir", "/tmp/x"]).unwrap();
        assert!(cli.global.dev);
        assert_eq!(cli.global.state_dir, Some(PathBuf::from("/tmp/x")));
    }
}
