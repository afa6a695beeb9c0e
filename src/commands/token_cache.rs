//! The cache behind `tailpass token --helper`: tools that call a key helper before every
//! request (Claude Code's `apiKeyHelper`, an SDK's key callback) get the same token back until
//! shortly before it expires, instead of a new token, and a new run, each time.
//!
//! A token is a bearer credential, so it is kept only where it does not outlive the login:
//! `$XDG_RUNTIME_DIR/tailpass/` (a per-user tmpfs on systemd systems, removed at logout), a
//! directory of mode 0700 whose files are 0600. Without `XDG_RUNTIME_DIR` there is no cache
//! and every call mints. Each file is named by a hash of the request (issuer, audiences,
//! resources, scopes, lifetime, label), so different requests never share a token, and is
//! replaced whole through a rename, so concurrent helpers never read half a file. DPoP-bound
//! tokens are not cached: they are useless without their proof key, which the caller of a
//! key helper does not hold.
//!
//! A cached token's claims are read without checking its signature: it is this user's own
//! file, and the claims only decide whether to mint again; whoever receives the token checks
//! it.

use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tailpass_verify::UnixTime;
use tailpass_verify::claims::{Audience, Confirmation};
use tailpass_verify::jws::Jws;

use crate::cli::TokenArgs;
use crate::secret::SecretHash;

/// The least time a reused token still has to live, in seconds.
pub const MIN_REMAINING: u64 = 60;
/// The largest cache file read; a token is far smaller.
const MAX_FILE: u64 = 64 * 1024;
/// The version of the cache's file format and key, part of every key.
const FORMAT: u32 = 1;

/// What a helper asks for: everything that changes which token the issuer mints, in the
/// canonical form its cache key hashes (order and repetition of audiences and scopes do
/// not matter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HelperRequest {
    format: u32,
    issuer: String,
    audiences: Vec<String>,
    resources: Vec<String>,
    scopes: Vec<String>,
    expires_in: Option<u64>,
    run_label: Option<String>,
}

impl HelperRequest {
    /// The request `args` make.
    pub fn of(args: &TokenArgs) -> HelperRequest {
        let sorted = |values: &mut Vec<String>| {
            values.sort();
            values.dedup();
        };
        let mut audiences = args.audiences.clone();
        let mut resources = args.resources.clone();
        let mut scopes: Vec<String> = args
            .scope
            .as_deref()
            .unwrap_or_default()
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        sorted(&mut audiences);
        sorted(&mut resources);
        sorted(&mut scopes);
        HelperRequest {
            format: FORMAT,
            issuer: issuer_of(args.issuer.as_str()).to_owned(),
            audiences,
            resources,
            scopes,
            expires_in: args.expires_in,
            run_label: args.run_label.clone(),
        }
    }

    /// The cache file's name: a hash of the request, which names nothing in it.
    fn file_name(&self) -> String {
        let canonical = serde_json::to_string(self).unwrap_or_default();
        format!("token-{}.jwt", SecretHash::of(&canonical).to_hex())
    }
}

/// An issuer URL as tokens name it (no trailing slash).
fn issuer_of(url: &str) -> &str {
    url.trim_end_matches('/')
}

/// The claims that decide whether a cached token may be handed out again.
#[derive(Debug, Deserialize)]
struct Freshness {
    iss: String,
    aud: Audience,
    exp: UnixTime,
    iat: UnixTime,
    #[serde(default)]
    cnf: Option<Confirmation>,
}

/// Why a cached token is not reused (for tests and the curious).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// Not a JWT whose claims read.
    Unreadable,
    /// Another issuer's.
    Issuer,
    /// Missing an audience or resource asked for.
    Audience,
    /// Bound to a DPoP key.
    Bound,
    /// Past `exp - max(MIN_REMAINING, lifetime / 10)`.
    Expiring,
}

/// Whether `token` may answer `request` at `now`: same issuer, every audience asked for, not
/// DPoP-bound, and at least the larger of [`MIN_REMAINING`] and a tenth of its lifetime left.
pub fn reusable(token: &str, request: &HelperRequest, now: UnixTime) -> Result<(), Stale> {
    let claims: Freshness = Jws::parse(token)
        .and_then(|jws| jws.claims())
        .map_err(|_| Stale::Unreadable)?;
    if issuer_of(&claims.iss) != request.issuer {
        return Err(Stale::Issuer);
    }
    let wanted = request.audiences.iter().chain(&request.resources);
    if !wanted.into_iter().all(|a| claims.aud.0.contains(a)) {
        return Err(Stale::Audience);
    }
    if claims.cnf.is_some_and(|c| c.jkt.is_some()) {
        return Err(Stale::Bound);
    }
    let lifetime = claims.exp.0.saturating_sub(claims.iat.0);
    let margin = MIN_REMAINING.max(lifetime / 10);
    if now.0 >= claims.exp.0.saturating_sub(margin) {
        return Err(Stale::Expiring);
    }
    Ok(())
}

/// The cache directory, `$XDG_RUNTIME_DIR/tailpass`.
#[derive(Debug, Clone)]
pub struct TokenCache {
    dir: PathBuf,
}

impl TokenCache {
    /// The cache under the session's runtime directory, or `None` when `XDG_RUNTIME_DIR` is
    /// unset, not an absolute path (the XDG rule) or not an existing directory (the helper
    /// never creates a runtime directory, which could land on durable storage): then
    /// nothing is cached.
    pub fn from_env() -> Option<TokenCache> {
        TokenCache::in_runtime(PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR")?))
    }

    /// The cache under `runtime` when it is an absolute path to an existing directory.
    fn in_runtime(runtime: PathBuf) -> Option<TokenCache> {
        (runtime.is_absolute() && runtime.is_dir()).then(|| TokenCache::in_runtime_dir(&runtime))
    }

    /// The cache under `runtime`, a runtime directory.
    pub fn in_runtime_dir(runtime: &Path) -> TokenCache {
        TokenCache {
            dir: runtime.join("tailpass"),
        }
    }

    /// The cached token for `request`, if there is one that [`reusable`] accepts at `now`.
    /// A file that is not a private regular file of the directory's owner is ignored.
    pub fn load(&self, request: &HelperRequest, now: UnixTime) -> Option<String> {
        let path = self.dir.join(request.file_name());
        let dir = std::fs::symlink_metadata(&self.dir).ok()?;
        let meta = std::fs::symlink_metadata(&path).ok()?;
        let private = dir.is_dir()
            && dir.permissions().mode() & 0o077 == 0
            && meta.is_file()
            && meta.permissions().mode() & 0o077 == 0
            && meta.uid() == dir.uid();
        if !private {
            return None;
        }
        let mut token = String::new();
        std::fs::File::open(&path)
            .ok()?
            .take(MAX_FILE)
            .read_to_string(&mut token)
            .ok()?;
        let token = token.trim().to_owned();
        reusable(&token, request, now).ok().map(|()| token)
    }

    /// Keeps `token` as the answer to `request`, replacing any earlier one.
    pub fn store(&self, request: &HelperRequest, token: &str) -> std::io::Result<()> {
        crate::private_fs::ensure_dir(&self.dir)?;
        crate::private_fs::replace(&self.dir, &request.file_name(), token.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    const ISSUER: &str = "https://idp.tail1234.ts.net";
    const GATEWAY: &str = "https://gateway.tail1234.ts.net";

    fn args(extra: &[&str]) -> TokenArgs {
        let mut argv = vec!["tailpass", "token", "--helper", "--issuer", ISSUER];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Token(args) => args,
            _ => unreachable!(),
        }
    }

    /// An unsigned token with these claims (the cache never checks signatures).
    fn token(claims: serde_json::Value) -> String {
        let part = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.c2ln",
            part(serde_json::json!({"alg": "ES256", "typ": "at+jwt"})),
            part(claims)
        )
    }

    fn lived(iat: u64, exp: u64) -> String {
        token(
            serde_json::json!({"iss": ISSUER, "aud": [GATEWAY, ISSUER], "iat": iat, "exp": exp,
                                 "cnf": {"tailnet_node": "nCi"}}),
        )
    }

    #[test]
    fn a_token_is_reused_until_the_larger_of_a_minute_and_a_tenth_of_its_lifetime_is_left() {
        let request = HelperRequest::of(&args(&["--audience", GATEWAY]));
        let at = |t| UnixTime(t);
        // An hour's token: refreshed in its last six minutes.
        let hour = lived(1000, 4600);
        assert_eq!(reusable(&hour, &request, at(1000)), Ok(()));
        assert_eq!(reusable(&hour, &request, at(4239)), Ok(()));
        assert_eq!(reusable(&hour, &request, at(4240)), Err(Stale::Expiring));
        assert_eq!(reusable(&hour, &request, at(9000)), Err(Stale::Expiring));
        // Five minutes: the last minute.
        let short = lived(1000, 1300);
        assert_eq!(reusable(&short, &request, at(1239)), Ok(()));
        assert_eq!(reusable(&short, &request, at(1240)), Err(Stale::Expiring));
        // A minute or less: never reused.
        assert_eq!(
            reusable(&lived(1000, 1060), &request, at(1000)),
            Err(Stale::Expiring)
        );
    }

    #[test]
    fn only_a_token_of_the_issuer_for_every_audience_asked_and_unbound_is_reused() {
        let now = UnixTime(1000);
        let request = HelperRequest::of(&args(&["--audience", GATEWAY]));
        let with = |claims| reusable(&token(claims), &request, now);
        let base = serde_json::json!({"iss": ISSUER, "aud": GATEWAY, "iat": 1000, "exp": 4600});
        assert_eq!(with(base.clone()), Ok(()));
        let mut other = base.clone();
        other["iss"] = "https://other.example".into();
        assert_eq!(with(other), Err(Stale::Issuer));
        let mut slash = base.clone();
        slash["iss"] = format!("{ISSUER}/").into();
        assert_eq!(with(slash), Ok(()), "the same issuer, spelled with a slash");
        let mut narrower = base.clone();
        narrower["aud"] = "https://docs.tail1234.ts.net".into();
        assert_eq!(with(narrower), Err(Stale::Audience));
        let mut bound = base.clone();
        bound["cnf"] = serde_json::json!({"tailnet_node": "n", "jkt": "abc"});
        assert_eq!(with(bound), Err(Stale::Bound));
        assert_eq!(
            reusable("not a token", &request, now),
            Err(Stale::Unreadable)
        );
        let resources = HelperRequest::of(&args(&["--resource", GATEWAY, "--audience", ISSUER]));
        assert_eq!(reusable(&lived(1000, 4600), &resources, now), Ok(()));
    }

    #[test]
    fn the_key_is_the_request_in_canonical_form() {
        let name = |extra: &[&str]| HelperRequest::of(&args(extra)).file_name();
        let base = name(&["--audience", "a", "--audience", "b", "--scope", "x y"]);
        assert_eq!(
            base,
            name(&["--audience", "b", "--audience", "a", "--scope", "y,x"])
        );
        assert_ne!(base, name(&["--audience", "a", "--scope", "x y"]));
        assert_ne!(base, name(&["--audience", "a", "--audience", "b"]));
        assert_ne!(
            base,
            name(&[
                "--audience",
                "a",
                "--audience",
                "b",
                "--scope",
                "x y",
                "--expires-in",
                "60"
            ])
        );
        assert_ne!(name(&["--audience", "a"]), name(&["--resource", "a"]));
        assert!(
            !base.contains(ISSUER) && !base.contains("tail1234"),
            "{base}"
        );
    }

    #[test]
    fn only_an_existing_absolute_runtime_directory_holds_a_cache() {
        let runtime = tempfile::tempdir().unwrap();
        assert!(TokenCache::in_runtime(runtime.path().to_owned()).is_some());
        assert!(TokenCache::in_runtime(runtime.path().join("gone")).is_none());
        assert!(TokenCache::in_runtime(PathBuf::from("relative/run")).is_none());
        let file = runtime.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(TokenCache::in_runtime(file).is_none());
    }

    #[test]
    fn concurrent_helpers_never_read_a_torn_file() {
        let runtime = tempfile::tempdir().unwrap();
        let cache = TokenCache::in_runtime_dir(runtime.path());
        let request = HelperRequest::of(&args(&["--audience", GATEWAY]));
        let now = UnixTime::now();
        // Tokens of different lengths, so that a mix of two would not read as either.
        let tokens: Vec<String> = (0..4)
            .map(|i| {
                token(
                    serde_json::json!({"iss": ISSUER, "aud": GATEWAY, "iat": now.0,
                                         "exp": now.0 + 3600, "pad": "x".repeat(i * 500)}),
                )
            })
            .collect();
        cache.store(&request, &tokens[0]).unwrap();
        std::thread::scope(|scope| {
            for token in &tokens {
                let (cache, request) = (&cache, &request);
                scope.spawn(move || {
                    for _ in 0..200 {
                        cache.store(request, token).unwrap();
                    }
                });
            }
            for _ in 0..500 {
                let read = cache.load(&request, now).expect("always a whole token");
                assert!(tokens.contains(&read));
            }
        });
        let left = std::fs::read_dir(runtime.path().join("tailpass"))
            .unwrap()
            .count();
        assert_eq!(left, 1, "no temporary file is left behind");
    }

    #[test]
    fn the_cache_keeps_private_files_and_refuses_others() {
        let runtime = tempfile::tempdir().unwrap();
        let cache = TokenCache::in_runtime_dir(runtime.path());
        let request = HelperRequest::of(&args(&["--audience", GATEWAY]));
        let now = UnixTime::now();
        assert_eq!(cache.load(&request, now), None);
        let fresh = lived(now.0, now.0 + 3600);
        cache.store(&request, &fresh).unwrap();
        let dir = runtime.path().join("tailpass");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join(request.file_name());
        assert_eq!(mode(&file), 0o600);
        assert_eq!(cache.load(&request, now), Some(fresh.clone()));
        // Another request's file is another file.
        let other = HelperRequest::of(&args(&["--audience", ISSUER]));
        assert_eq!(cache.load(&other, now), None);
        // A file others may read is not trusted.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(cache.load(&request, now), None);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        // An expiring token is not handed out, and a new one replaces it.
        let expiring = lived(now.0 - 3500, now.0 + 100);
        cache.store(&request, &expiring).unwrap();
        assert_eq!(cache.load(&request, now), None);
        cache.store(&request, &fresh).unwrap();
        assert_eq!(cache.load(&request, now), Some(fresh));
        // A symlink planted in its place is not followed.
        std::fs::remove_file(&file).unwrap();
        let planted = runtime.path().join("planted");
        std::fs::write(&planted, lived(now.0, now.0 + 3600)).unwrap();
        std::os::unix::fs::symlink(&planted, &file).unwrap();
        assert_eq!(cache.load(&request, now), None);
    }
}
