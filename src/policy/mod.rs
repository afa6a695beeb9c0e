//! What a caller may do, decided from its identity: deny by default.
//!
//! Inputs are the tailnet's capability grants carried in the WhoIs answer (tsidp's
//! `tailscale.com/cap/tsidp` schema, [`tsidp`]) and the local policy file ([`file`]): groups,
//! and agent rules. [`login`] decides for people logging in to apps. This module only
//! decides; it never mints, stores or answers HTTP.

pub mod agent;
pub mod explain;
pub mod file;
pub mod login;
pub mod selector;
pub mod tsidp;
