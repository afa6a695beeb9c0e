//! `tailpass token`: an agent asks for a token for itself. It sends no secret: the server
//! knows the node by its tailnet connection. With `--dpop-key` the token is also bound to a
//! key the agent keeps, so a copy of the token alone is useless. With `--helper` it is a key
//! helper: the token alone, cached until shortly before it expires ([`super::token_cache`]).

use std::io::Write as _;

use serde::Deserialize;
use tailpass_verify::UnixTime;

use super::token_cache::{HelperRequest, TokenCache};
use super::{CommandError, fail};
use crate::cli::TokenArgs;
use crate::dpop::ProofKey;

#[derive(Deserialize)]
struct Discovery {
    token_endpoint: String,
}

/// How long each request to the issuer may take: a key helper's caller waits on it.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What matters of the token endpoint's answer; the rest is printed as it came.
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// A token the issuer granted.
struct Minted {
    /// The whole answer, as it came.
    raw: serde_json::Value,
    access_token: String,
    /// `Bearer`, or `DPoP` for a bound token.
    token_type: String,
}

/// `tailpass token`.
pub async fn token(args: TokenArgs) -> Result<(), CommandError> {
    if args.helper {
        return helper(&args).await;
    }
    let minted = mint(&args).await?;
    if args.json {
        print(&serde_json::to_string_pretty(&minted.raw).map_err(fail)?)
    } else {
        print(&minted.access_token)
    }
}

/// `tailpass token --helper`: the cached token when it is still good for long enough, else a
/// new one, cached when it is a bearer token and there is a runtime directory to keep it in.
async fn helper(args: &TokenArgs) -> Result<(), CommandError> {
    let request = HelperRequest::of(args);
    let cache = match args.dpop_key {
        Some(_) => None,
        None => TokenCache::from_env(),
    };
    if let Some(token) = cache
        .as_ref()
        .and_then(|c| c.load(&request, UnixTime::now()))
    {
        return print(&token);
    }
    let minted = mint(args).await?;
    if let Some(cache) = &cache
        && minted.token_type.eq_ignore_ascii_case("bearer")
        && let Err(e) = cache.store(&request, &minted.access_token)
    {
        eprintln!("tailpass: the token is not cached: {e}");
    }
    print(&minted.access_token)
}

/// Writes `line` and a newline to standard output; a closed output is an error, not a panic.
fn print(line: &str) -> Result<(), CommandError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| CommandError(format!("writing the token: {e}")))
}

/// The largest external token read (a CI platform's is a few kilobytes).
const MAX_SUBJECT_TOKEN: u64 = 64 * 1024;

/// The external token in `file`, or on standard input for `-`: its first line, trimmed.
fn read_subject_token(file: &std::path::Path) -> Result<String, CommandError> {
    use std::io::Read as _;
    let mut text = String::new();
    let read = if file.as_os_str() == "-" {
        std::io::stdin()
            .lock()
            .take(MAX_SUBJECT_TOKEN)
            .read_to_string(&mut text)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(MAX_SUBJECT_TOKEN).read_to_string(&mut text))
    };
    read.map_err(|e| CommandError(format!("--subject-token {}: {e}", file.display())))?;
    let token = text.lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        return Err(CommandError(format!(
            "--subject-token {}: no token",
            file.display()
        )));
    }
    Ok(token.to_owned())
}

/// Asks the issuer for a token as `args` say.
async fn mint(args: &TokenArgs) -> Result<Minted, CommandError> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(fail)?;
    let issuer = args.issuer.as_str().trim_end_matches('/');
    let discovery: Discovery = http
        .get(format!("{issuer}/.well-known/openid-configuration"))
        .send()
        .await
        .map_err(fail)?
        .error_for_status()
        .map_err(fail)?
        .json()
        .await
        .map_err(|e| fail(format!("discovery: {e}")))?;
    let key = args
        .dpop_key
        .as_deref()
        .map(ProofKey::load_or_create)
        .transpose()
        .map_err(fail)?;

    let mut form: Vec<(&str, String)> = match &args.subject_token {
        None => vec![("grant_type", "client_credentials".into())],
        Some(file) => vec![
            (
                "grant_type",
                tailpass_verify::claims::TOKEN_EXCHANGE_GRANT.into(),
            ),
            (
                "subject_token_type",
                crate::grant::exchange::JWT_TYPE.into(),
            ),
            ("subject_token", read_subject_token(file)?),
        ],
    };
    form.extend(args.audiences.iter().map(|a| ("audience", a.clone())));
    form.extend(args.resources.iter().map(|r| ("resource", r.clone())));
    if let Some(scope) = &args.scope {
        form.push(("scope", scope.clone()));
    }
    if let Some(secs) = args.expires_in {
        form.push(("expires_in", secs.to_string()));
    }
    if let Some(label) = &args.run_label {
        form.push(("run_label", label.clone()));
    }

    let mut nonce: Option<String> = None;
    // One retry: the server may ask for a DPoP nonce first (RFC 9449 §8).
    for _ in 0..2 {
        let mut request = http.post(&discovery.token_endpoint).form(&form);
        if let Some(key) = &key {
            let proof = key
                .proof("POST", &discovery.token_endpoint, None, nonce.as_deref())
                .map_err(fail)?;
            request = request.header("DPoP", proof);
        }
        let response = request.send().await.map_err(fail)?;
        let status = response.status();
        let fresh_nonce = response
            .headers()
            .get("dpop-nonce")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let raw: serde_json::Value = response.json().await.map_err(fail)?;
        let answer: Answer = serde_json::from_value(raw.clone()).map_err(fail)?;
        if status.is_success() {
            let access_token = answer
                .access_token
                .filter(|t| !t.is_empty())
                .ok_or_else(|| CommandError("the answer holds no access_token".into()))?;
            return Ok(Minted {
                raw,
                access_token,
                token_type: answer.token_type.unwrap_or_else(|| "Bearer".into()),
            });
        }
        if answer.error.as_deref() == Some("use_dpop_nonce")
            && fresh_nonce.is_some()
            && nonce.is_none()
        {
            nonce = fresh_nonce;
            continue;
        }
        return Err(CommandError(format!(
            "refused ({status}): {} {}",
            answer.error.unwrap_or_else(|| "error".into()),
            answer.error_description.unwrap_or_default()
        )));
    }
    Err(CommandError(
        "the server kept asking for a new DPoP nonce".into(),
    ))
}
