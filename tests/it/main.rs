//! tailpass integration tests: one binary, a module per area. Servers run in-process on
//! ephemeral loopback ports with a temporary state directory; distinct loopback source
//! addresses (127.0.0.2, .3, …) are distinct tailnet peers, resolved through a local identity
//! table in tailscaled's WhoIs shape — the same code path as production.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod admin_ui;
mod agents;
mod ambient;
mod authorize;
mod binary;
mod client_metadata;
mod deploy;
mod discovery;
mod dpop;
mod faults;
mod federation;
mod feed_client;
mod gateway;
mod gateway_budgets;
mod gateway_mcp;
mod gateway_providers;
mod health;
mod hostile;
mod keys;
mod killswitch;
mod localapi;
mod login;
mod metrics;
mod peers;
mod postgres;
mod register;
mod replicas;
mod sessions;
mod support;
mod tls;
