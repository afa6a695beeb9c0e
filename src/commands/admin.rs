//! The operator's commands — `keys`, `clients`, `revoke` — over the admin API
//! ([`super::admin_client`]), printing its answer for people or, with `--json`, for scripts.

use axum::http::Method;
use serde::de::DeserializeOwned;
use tailpass_verify::UnixTime;
use tailpass_verify::feed::RevocationKind;

use super::{CommandError, fail};
use crate::admin::{
    ClientView, CreatedClient, NewClient, PREFIX, RevokeKeyRequest, RevokedKey, RewrapRequest,
    RotateRequest,
};
use crate::cli::{ClientAddArgs, ClientsAction, KeysAction, RevokeArgs};
use crate::commands::admin_client::{AdminClient, Answer};
use crate::config::GlobalOptions;
use crate::federation::runs::RunMatch;
use crate::keys::{Kek, KeyInfo};
use crate::killswitch::{FedReport, FedTarget, Report, Target};
use crate::store::Revocation;

/// The answer's JSON, or the admin API's refusal as the error to print.
pub(super) fn decode<T: DeserializeOwned>(answer: &Answer) -> Result<T, CommandError> {
    if !(200..300).contains(&answer.status) {
        // Admin errors are OAuth-style JSON: show the description.
        let text = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| {
                v.get("error_description")
                    .or_else(|| v.get("error"))
                    .and_then(|d| d.as_str().map(str::to_owned))
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).into_owned());
        return Err(CommandError(format!("refused ({}): {text}", answer.status)));
    }
    serde_json::from_slice(&answer.body).map_err(fail)
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), CommandError> {
    println!("{}", serde_json::to_string_pretty(value).map_err(fail)?);
    Ok(())
}

/// `tailpass keys …`.
pub async fn keys(global: &GlobalOptions, action: KeysAction) -> Result<(), CommandError> {
    if let KeysAction::NewKek = action {
        // Printed to stdout only, for the operator to save; it is written nowhere.
        println!("{}", *Kek::generate_line().map_err(fail)?);
        return Ok(());
    }
    let admin = AdminClient::new(global).map_err(fail)?;
    let post = |path: &'static str, body: serde_json::Value| {
        let admin = admin.clone();
        async move {
            admin
                .call(Method::POST, &format!("{PREFIX}/keys/{path}"), Some(body))
                .await
                .map_err(fail)
        }
    };
    let (answer, json) = match action {
        KeysAction::NewKek => return Ok(()),
        KeysAction::List { json } => (
            admin
                .call(Method::GET, &format!("{PREFIX}/keys"), None)
                .await
                .map_err(fail)?,
            json,
        ),
        KeysAction::Rotate { alg } => {
            let body = serde_json::to_value(RotateRequest { alg }).map_err(fail)?;
            (post("rotate", body).await?, false)
        }
        KeysAction::Revoke { kid } => {
            let body = serde_json::to_value(RevokeKeyRequest { kid }).map_err(fail)?;
            let revoked: RevokedKey = decode(&post("revoke", body).await?)?;
            return print_json(&revoked);
        }
        KeysAction::Rewrap {
            new_key_encryption_key_file: file,
        } => return rewrap(post, file).await,
    };
    let keys: Vec<KeyInfo> = decode(&answer)?;
    if json {
        return print_json(&keys);
    }
    println!("{:<8} {:<7} {:<44} {:>12}", "STATE", "ALG", "KID", "SINCE");
    for key in keys {
        let state = serde_json::to_value(key.entry.state).map_err(fail)?;
        let since = key
            .entry
            .retired_at
            .or(key.entry.activated_at)
            .unwrap_or(key.entry.created_at);
        println!(
            "{:<8} {:<7} {:<44} {:>12}",
            state.as_str().unwrap_or_default(),
            key.entry.alg,
            key.entry.kid,
            since.0
        );
    }
    Ok(())
}

/// `tailpass keys rewrap`: the new key checked here first, then named to the server by its
/// absolute path (the server reads it itself; the key never crosses the socket).
async fn rewrap<F, A>(post: F, file: std::path::PathBuf) -> Result<(), CommandError>
where
    F: Fn(&'static str, serde_json::Value) -> A,
    A: std::future::Future<Output = Result<Answer, CommandError>>,
{
    Kek::read(&file).map_err(fail)?;
    let file = std::fs::canonicalize(&file).map_err(fail)?;
    let body = serde_json::to_value(RewrapRequest {
        new_key_encryption_key_file: file.clone(),
    })
    .map_err(fail)?;
    decode::<serde_json::Value>(&post("rewrap", body).await?)?;
    eprintln!(
        "Every key is now sealed under {}. Point --key-encryption-key-file (or \
         key_encryption_key_file) at it before the next start; the old key no longer opens them.",
        file.display()
    );
    Ok(())
}

/// `tailpass clients …`.
pub async fn clients(global: &GlobalOptions, action: ClientsAction) -> Result<(), CommandError> {
    let admin = AdminClient::new(global).map_err(fail)?;
    match action {
        ClientsAction::Add(args) => add_client(&admin, args).await,
        ClientsAction::List { json } => {
            let answer = admin
                .call(Method::GET, &format!("{PREFIX}/clients"), None)
                .await
                .map_err(fail)?;
            let clients: Vec<ClientView> = decode(&answer)?;
            if json {
                return print_json(&clients);
            }
            println!(
                "{:<24} {:<8} {:<24} REDIRECT URIS",
                "CLIENT ID", "TYPE", "NAME"
            );
            for c in clients {
                let kind = if c.public { "public" } else { "secret" };
                println!(
                    "{:<24} {:<8} {:<24} {}",
                    c.client_id,
                    kind,
                    c.client_name,
                    c.redirect_uris.join(" ")
                );
            }
            Ok(())
        }
        ClientsAction::Rm { client_id } => {
            let answer = admin
                .call(
                    Method::DELETE,
                    &format!("{PREFIX}/clients/{client_id}"),
                    None,
                )
                .await
                .map_err(fail)?;
            if answer.status == 204 {
                eprintln!("removed {client_id}");
                Ok(())
            } else {
                decode::<serde_json::Value>(&answer).map(drop)
            }
        }
    }
}

async fn add_client(admin: &AdminClient, args: ClientAddArgs) -> Result<(), CommandError> {
    let new = NewClient {
        name: args.name,
        redirect_uris: args.redirect_uris,
        public: args.public,
        id_token_alg: args.id_token_alg,
        post_logout_redirect_uris: args.post_logout_redirect_uris,
        users: args.users,
        resources: args.resources,
        backchannel_logout_uri: args.backchannel_logout_uri,
    };
    let body = serde_json::to_value(&new).map_err(fail)?;
    let answer = admin
        .call(Method::POST, &format!("{PREFIX}/clients"), Some(body))
        .await
        .map_err(fail)?;
    let created: CreatedClient = decode(&answer)?;
    // The secret is printed once, to stdout only; it is stored nowhere in clear.
    print_json(&serde_json::json!({
        "client_id": created.client_id,
        "client_secret": created.client_secret,
    }))?;
    if created.client_secret.is_some() {
        eprintln!(
            "Store the client_secret now: tailpass keeps only its hash and cannot show it again."
        );
    }
    Ok(())
}

/// `tailpass revoke`.
pub async fn revoke(global: &GlobalOptions, args: RevokeArgs) -> Result<(), CommandError> {
    if let Some(table) = &args.fed {
        return revoke_federated(global, table, &args).await;
    }
    let (kind, value) = match (&args.run, &args.node, &args.user, &args.jti) {
        (Some(v), _, _, _) => (RevocationKind::Run, v.clone()),
        (_, Some(v), _, _) => (RevocationKind::Node, v.clone()),
        (_, _, Some(v), _) => (RevocationKind::User, v.clone()),
        (_, _, _, Some(v)) => (RevocationKind::Jti, v.clone()),
        _ => return Err(CommandError("name what to revoke".into())),
    };
    let target = Target {
        kind,
        value,
        until: args.until.map(UnixTime),
    };
    let admin = AdminClient::new(global).map_err(fail)?;
    let body = serde_json::to_value(&target).map_err(fail)?;
    if args.lift {
        let answer = admin
            .call(
                Method::POST,
                &format!("{PREFIX}/revocations/lift"),
                Some(body),
            )
            .await
            .map_err(fail)?;
        let lifted: Vec<Revocation> = decode(&answer)?;
        eprintln!(
            "lifted {} revocation(s) of {} {}: new tokens are allowed again",
            lifted.len(),
            kind.as_str(),
            target.value
        );
        return Ok(());
    }
    let answer = admin
        .call(Method::POST, &format!("{PREFIX}/revocations"), Some(body))
        .await
        .map_err(fail)?;
    let report: Report = decode(&answer)?;
    print_json(&report)?;
    if !answer.via_server {
        eprintln!(
            "No server was running: the revocation is stored and takes effect when it starts."
        );
    }
    Ok(())
}

/// `tailpass revoke --fed NAME --claim K=V …`: prints the report, one `run` revocation per
/// run ended and the time until which new trades are refused.
async fn revoke_federated(
    global: &GlobalOptions,
    table: &str,
    args: &RevokeArgs,
) -> Result<(), CommandError> {
    let target = FedTarget {
        selection: RunMatch {
            table: table.to_owned(),
            claims: RunMatch::parse_claims(args.claim.iter().map(String::as_str))
                .map_err(CommandError)?,
        },
        until: args.until.map(UnixTime),
    };
    let admin = AdminClient::new(global).map_err(fail)?;
    let body = serde_json::to_value(&target).map_err(fail)?;
    let answer = admin
        .call(
            Method::POST,
            &format!("{PREFIX}/revocations/federated"),
            Some(body),
        )
        .await
        .map_err(fail)?;
    let report: FedReport = decode(&answer)?;
    print_json(&report)?;
    if !answer.via_server {
        eprintln!(
            "No server was running: the revocation is stored and takes effect when it starts."
        );
    }
    Ok(())
}
