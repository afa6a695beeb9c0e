//! What each CLI command does, on top of the library: the operator's commands through the
//! admin API ([`admin`], over the admin socket or in-process: [`admin_client`]), the agent's
//! `tailpass token` ([`token`]), and `tailpass verify` ([`verify`]).

pub mod admin;
pub mod admin_client;
pub mod policy;
pub mod store;
pub mod token;
pub mod verify;

pub use admin::{audit, clients, keys, revoke};

/// A failed command, with the message to print.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CommandError(pub String);

fn fail(e: impl std::fmt::Display) -> CommandError {
    CommandError(e.to_string())
}
