//! The JWS algorithms tailpass signs with and accepts.
//!
//! A closed enum rather than a string: a verifier can only ever be asked for an algorithm this
//! crate implements, so `none` and the HMAC family are unrepresentable (RFC 8725 §3.1–3.2).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A JWS signature algorithm (RFC 7518 §3.1, RFC 8037 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Alg {
    /// ECDSA on P-256 with SHA-256: the default for access tokens, cheapest to sign.
    ES256,
    /// Ed25519.
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256: OIDC Core's default ID token algorithm.
    RS256,
}

impl Alg {
    /// Every algorithm, in the order discovery lists them.
    pub const ALL: [Alg; 3] = [Alg::ES256, Alg::EdDSA, Alg::RS256];

    /// The `alg` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::ES256 => "ES256",
            Alg::EdDSA => "EdDSA",
            Alg::RS256 => "RS256",
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Occurs when a string names no algorithm tailpass supports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported algorithm {0:?} (expected ES256, EdDSA or RS256)")]
pub struct UnknownAlg(pub String);

impl FromStr for Alg {
    type Err = UnknownAlg;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ES256" => Ok(Alg::ES256),
            "EdDSA" => Ok(Alg::EdDSA),
            "RS256" => Ok(Alg::RS256),
            other => Err(UnknownAlg(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_supported_names() {
        assert_eq!("ES256".parse(), Ok(Alg::ES256));
        assert_eq!("EdDSA".parse(), Ok(Alg::EdDSA));
        assert_eq!("RS256".parse(), Ok(Alg::RS256));
        for bad in ["none", "HS256", "es256", ""] {
            assert!(bad.parse::<Alg>().is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn serde_round_trip_uses_header_names() {
        let json = serde_json::to_string(&Alg::EdDSA).unwrap_or_default();
        assert_eq!(json, "\"EdDSA\"");
        assert!(serde_json::from_str::<Alg>("\"none\"").is_err());
    }
}
