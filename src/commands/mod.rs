//! What each CLI command does, on top of the library: the operator's commands through the
//! admin API ([`admin`], over the admin socket or in-process: [`admin_client`]), the audit
//! log ([`audit`], merged with gateways' call logs by [`timeline`]), the agent's
//! `tailpass token` ([`token`], and its key-helper cache, [`token_cache`]), and
//! `tailpass verify` ([`verify`]).

pub mod admin;
pub mod admin_client;
pub mod audit;
pub mod policy;
pub mod store;
pub mod timeline;
pub mod token;
pub mod token_cache;
pub mod verify;

pub use admin::{clients, keys, revoke};
pub use audit::audit;

/// A failed command, with the message to print.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CommandError(pub String);

fn fail(e: impl std::fmt::Display) -> CommandError {
    CommandError(e.to_string())
}
