//! What a caller may do, decided from its identity: deny by default.
//!
//! Inputs are the tailnet's capability grants carried in the WhoIs answer (tsidp's
//! `tailscale.com/cap/tsidp` schema, [`tsidp`]) and, for agents, tailpass's own rules. This
//! module only decides; it never mints, stores or answers HTTP.

pub mod tsidp;
