//! The HTTP server shell: the issuer's routers ([`router`]), the layers every route of the
//! issuer and of the gateway gets ([`layers`]), request guards ([`guard`]), and listeners and
//! TLS ([`listen`], [`tls`]).
//!
//! It sits on top: it knows the handlers (`oauth`, `admin`) and the state, and nothing below
//! it knows it. The gateway is built on its layers and listeners, so it must not know the
//! gateway.

pub mod guard;
pub mod layers;
pub mod listen;
pub mod router;
pub mod tls;

pub use layers::Layers;
