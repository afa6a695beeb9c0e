//! tailpass: an OpenID Connect issuer for a tailnet.
//!
//! The network already knows who is calling: tailscaled answers "who is this address?" with
//! the user, the node, its tags and its capability grants. tailpass turns that answer into
//! short-lived signed tokens — for people logging in to internal apps, and for agents and CI
//! jobs on tagged nodes that hold no secret at all. See `ARCHITECTURE.md` for the map.

pub mod admin;
pub mod audit;
pub mod audit_log;
pub mod backchannel;
pub mod cli;
pub mod client_metadata;
pub mod client_registry;
pub mod clients;
pub mod clock;
pub mod commands;
pub mod config;
pub mod dpop;
pub mod federation;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz_targets;
pub mod gateway;
pub mod grant;
pub mod http;
pub mod identity;
pub mod issuer;
pub mod keys;
pub mod killswitch;
pub mod metrics;
pub mod oauth;
pub mod pages;
pub mod pkce;
pub mod policy;
pub mod private_fs;
pub mod ratelimit;
pub mod revocation;
pub mod secret;
pub mod server;
pub mod session;
pub mod shared_keys;
pub mod state;
pub mod store;
pub mod tokens;
pub mod unix_http;
