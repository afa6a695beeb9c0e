//! `tailpass policy explain` and `tailpass policy check`.
//!
//! Both report through their exit status, for scripts and CI: explain exits 0 when a token
//! would be issued, 1 when refused, 2 on bad input; check exits 0 for a valid file, 1 with
//! findings, 2 when the file cannot be read or parsed.

use axum::http::Method;

use super::{CommandError, fail};
use crate::admin::PREFIX;
use crate::cli::{PolicyAction, PolicyExplainArgs};
use crate::commands::admin_client::AdminClient;
use crate::config::GlobalOptions;
use crate::policy::agent::DEFAULT_CAPABILITY;
use crate::policy::explain::{self, Decision, ExplainRequest, Explanation};
use crate::policy::file::PolicyFile;

/// How a policy command ended, as its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed, or a valid file (0).
    Yes,
    /// Refused, or a file with findings (1).
    No,
}

/// Runs `tailpass policy …`. An `Err` is bad input (exit status 2).
pub async fn policy(global: &GlobalOptions, action: PolicyAction) -> Result<Verdict, CommandError> {
    match action {
        PolicyAction::Explain(args) => explain(global, args).await,
        PolicyAction::Check { file } => {
            let policy = PolicyFile::load(&file).map_err(fail)?;
            let findings = policy.overlaps();
            for finding in &findings {
                println!("{}: {finding}", file.display());
            }
            if findings.is_empty() {
                println!(
                    "{}: ok ({} rules, {} groups)",
                    file.display(),
                    policy.rules.len(),
                    policy.groups.len()
                );
                Ok(Verdict::Yes)
            } else {
                Ok(Verdict::No)
            }
        }
    }
}

async fn explain(global: &GlobalOptions, args: PolicyExplainArgs) -> Result<Verdict, CommandError> {
    let request = ExplainRequest {
        caller: args.caller,
        audience: args.audience,
        scope: (!args.scope.is_empty()).then_some(args.scope),
    };
    let explanation: Explanation = match &args.policy {
        Some(path) => {
            let policy = PolicyFile::load(path).map_err(fail)?;
            let stand_in = explain::stand_in(&request.caller).map_err(|e| {
                CommandError(format!(
                    "{e} (offline, with --policy; a peer address needs the running server)"
                ))
            })?;
            explain::explain(
                stand_in.caller(),
                &policy,
                DEFAULT_CAPABILITY,
                &request,
                None,
            )
        }
        None => {
            let body = serde_json::to_value(&request).map_err(fail)?;
            let answer = AdminClient::new(global)
                .map_err(fail)?
                .call(
                    Method::POST,
                    &format!("{PREFIX}/policy/explain"),
                    Some(body),
                )
                .await
                .map_err(fail)?;
            super::admin::decode(&answer)?
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&explanation).map_err(fail)?
        );
    } else {
        print_explanation(&explanation);
    }
    Ok(match explanation.decision {
        Decision::Allowed => Verdict::Yes,
        Decision::Refused => Verdict::No,
    })
}

fn print_explanation(e: &Explanation) {
    match e.decision {
        Decision::Allowed => {
            println!("allowed by {}", e.rule.as_deref().unwrap_or("?"));
            println!("  audiences: {}", e.audiences.join(" "));
            println!("  scopes:    {}", e.scopes.join(" "));
            match e.lifetime {
                Some(s) => println!("  lifetime:  {s} s"),
                None => println!("  lifetime:  the server's default"),
            }
            for (name, value) in &e.claims {
                println!("  claim {name} = {value}");
            }
            if e.act_for_peers {
                println!("  act_for_peers: may obtain run tokens for tokenless tailnet callers");
            }
        }
        Decision::Refused => {
            println!("refused: {}", e.reason.as_deref().unwrap_or("?"));
        }
    }
}
