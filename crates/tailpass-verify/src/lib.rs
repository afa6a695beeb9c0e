//! Claim types and offline verification of tokens issued by tailpass.
//!
//! This crate is what a resource server (the AI gateway, an internal API) links to check a
//! tailpass token without calling the issuer on each request. It owns the wire shapes both
//! sides agree on — algorithms, JSON Web Keys, claims — so the issuer mints through the very
//! types a verifier parses.
//!
//! It is deliberately not a server: no database, no HTTP server, no policy. Anything that needs
//! the issuer's state (introspection, the revocation feed's source) lives in the `tailpass`
//! crate.

pub mod alg;
pub mod binding;
pub mod claims;
pub mod dpop;
pub mod jwk;
pub mod jws;
pub mod time;
pub mod validate;

pub use alg::Alg;
pub use claims::{AccessClaims, Audience, IdClaims};
pub use jwk::{Jwk, JwkSet, Thumbprint};
pub use jws::{Jws, JwsError, VerifyingKey};
pub use time::UnixTime;
pub use validate::{Expect, ValidationError};
