//! Claim types and offline verification of tokens issued by tailpass.
//!
//! This crate is what a resource server (the AI gateway, an internal API) links to check a
//! tailpass token without calling the issuer on each request. It owns the wire shapes both
//! sides agree on — algorithms, JSON Web Keys, claims — so the issuer mints through the very
//! types a verifier parses.
//!
//! It is deliberately not a server: no database, no HTTP server, no policy. [`Verifier`] is the
//! offline check; with the `remote` feature, `remote::RemoteVerifier` fetches discovery and
//! keys and follows the revocation feed; with `axum`, a middleware and an extractor sit on top.

pub mod alg;
#[cfg(feature = "axum")]
pub mod axum;
pub mod binding;
pub mod claims;
pub mod dpop;
pub mod feed;
pub mod glob;
pub mod jwk;
pub mod jws;
#[cfg(feature = "remote")]
pub mod remote;
pub mod sse;
pub mod time;
pub mod validate;
pub mod verifier;

pub use alg::Alg;
pub use claims::{AccessClaims, Audience, IdClaims};
pub use jwk::{Jwk, JwkSet, Thumbprint};
pub use jws::{Jws, JwsError, VerifyingKey};
pub use time::UnixTime;
pub use validate::{Expect, ValidationError};
pub use verifier::{KeySet, Presented, Verifier, VerifyError};
