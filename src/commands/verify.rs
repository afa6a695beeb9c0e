//! `tailpass verify`: a token checked exactly as a resource server checks it (the issuer's
//! keys fetched, its revocation feed read once), then its claims printed, or the reason it
//! fails.

use std::io::Read as _;

use tailpass_verify::remote::RemoteVerifier;
use tailpass_verify::{AccessClaims, Jws, UnixTime, Verifier};

use super::{CommandError, fail};
use crate::cli::VerifyArgs;

/// The largest token read from standard input.
const MAX_INPUT: u64 = 64 * 1024;

/// Runs `tailpass verify`.
pub async fn verify(args: VerifyArgs) -> Result<(), CommandError> {
    let token = if args.token == "-" {
        let mut input = String::new();
        std::io::stdin()
            .take(MAX_INPUT)
            .read_to_string(&mut input)
            .map_err(fail)?;
        input.trim().to_owned()
    } else {
        args.token.trim().to_owned()
    };
    // Unverified, only to pick defaults: nothing printed comes from here.
    let parsed = Jws::parse(&token).ok();
    let unverified: Option<AccessClaims> = parsed.as_ref().and_then(|j| j.claims().ok());
    let kid = parsed.and_then(|j| j.header.kid);
    let issuer = match (&args.issuer, &unverified) {
        (Some(issuer), _) => issuer.as_str().trim_end_matches('/').to_owned(),
        (None, Some(claims)) => claims.iss.clone(),
        (None, None) => return Err(CommandError("refused: malformed token".into())),
    };
    let audience = match (&args.audience, &unverified) {
        (Some(audience), _) => audience.clone(),
        (None, Some(claims)) => claims.aud.0.first().cloned().unwrap_or_default(),
        (None, None) => String::new(),
    };
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(fail)?;
    let remote = RemoteVerifier::discover(http, Verifier::new(issuer, audience))
        .await
        .map_err(|e| CommandError(format!("cannot reach the issuer: {e}")))?;
    // The feed's current state, once, so revoked tokens are reported as such.
    if let Err(e) = remote.load_revocations().await {
        eprintln!("note: revocations not checked: {e}");
    }
    // Without --node the binding to a node cannot be checked here: say so rather than pass.
    let bound_node = unverified
        .as_ref()
        .and_then(|c| c.cnf.as_ref())
        .and_then(|c| c.tailnet_node.clone());
    let node = args.node.clone().or(bound_node.clone());
    let presenter = tailpass_verify::binding::Presenter {
        node: node.as_deref(),
        dpop_jkt: None,
    };
    let dpop_key = unverified
        .as_ref()
        .and_then(|c| c.cnf.as_ref())
        .and_then(|c| c.jkt.clone());
    let result = match remote.verify(&token, &presenter, UnixTime::now()).await {
        // A DPoP-bound token cannot be presented from here. The binding is checked after the
        // signature and claims, so reaching it means those held; revocation comes last, so
        // check it here.
        Err(tailpass_verify::VerifyError::Binding(
            tailpass_verify::binding::BindingError::ProofRequired,
        )) => match unverified.clone() {
            Some(claims) => remote
                .verifier()
                .revocations()
                .check(&claims, kid.as_deref())
                .map(|()| claims)
                .map_err(tailpass_verify::VerifyError::from),
            None => Err(tailpass_verify::VerifyError::Missing),
        },
        other => other,
    };
    match result {
        Ok(claims) => {
            let out = serde_json::to_string_pretty(&claims).map_err(fail)?;
            println!("{out}");
            if args.node.is_none()
                && let Some(bound) = bound_node
            {
                eprintln!("note: bound to node {bound}; pass --node to check the presenter");
            }
            if let Some(jkt) = dpop_key {
                eprintln!("note: bound to DPoP key {jkt}; only its holder can present it");
            }
            Ok(())
        }
        Err(e) => Err(CommandError(format!("refused: {e}"))),
    }
}
