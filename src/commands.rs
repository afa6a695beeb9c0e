//! What each CLI command does, on top of the library: `serve` runs the server; `keys` and
//! `clients` call the admin API ([`crate::admin::client`]) and print its answer for people or,
//! with `--json`, for scripts.

use axum::http::Method;
use serde::de::DeserializeOwned;

use crate::admin::client::{AdminClient, Answer};
use crate::admin::{ClientView, CreatedClient, NewClient, PREFIX, RotateRequest};
use crate::cli::{ClientAddArgs, ClientsAction, GlobalArgs, KeysAction};
use crate::keys::KeyInfo;

/// A failed command, with the message to print.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CommandError(pub String);

fn fail(e: impl std::fmt::Display) -> CommandError {
    CommandError(e.to_string())
}

fn decode<T: DeserializeOwned>(answer: &Answer) -> Result<T, CommandError> {
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
pub async fn keys(global: &GlobalArgs, action: KeysAction) -> Result<(), CommandError> {
    let admin = AdminClient::new(global).map_err(fail)?;
    let (answer, json) = match action {
        KeysAction::List { json } => (
            admin
                .call(Method::GET, &format!("{PREFIX}/keys"), None)
                .await
                .map_err(fail)?,
            json,
        ),
        KeysAction::Rotate { alg } => {
            let body = serde_json::to_value(RotateRequest { alg }).map_err(fail)?;
            (
                admin
                    .call(Method::POST, &format!("{PREFIX}/keys/rotate"), Some(body))
                    .await
                    .map_err(fail)?,
                false,
            )
        }
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

/// `tailpass clients …`.
pub async fn clients(global: &GlobalArgs, action: ClientsAction) -> Result<(), CommandError> {
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
