//! JSON Web Keys (RFC 7517) and their RFC 7638 thumbprints.
//!
//! Only public keys are representable: a key set or a DPoP header that carries private
//! members is refused by [`Jwk::parse_public`] rather than silently stripped.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::Alg;

/// The key material of a public JWK, tagged by `kty`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kty")]
pub enum PublicKey {
    /// An elliptic-curve key (RFC 7518 §6.2); tailpass uses `crv: P-256` only.
    EC {
        /// The curve name.
        crv: String,
        /// The x coordinate, base64url.
        x: String,
        /// The y coordinate, base64url.
        y: String,
    },
    /// An RSA key (RFC 7518 §6.3).
    RSA {
        /// The modulus, base64url big-endian.
        n: String,
        /// The public exponent, base64url big-endian.
        e: String,
    },
    /// An octet key pair (RFC 8037); tailpass uses `crv: Ed25519` only.
    OKP {
        /// The curve name.
        crv: String,
        /// The public key, base64url.
        x: String,
    },
}

/// A public JSON Web Key with the members tailpass publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// The key material.
    #[serde(flatten)]
    pub key: PublicKey,
    /// The key id; tailpass always sets it to the key's RFC 7638 thumbprint.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kid: Option<String>,
    /// The intended use; `sig` for every key tailpass publishes.
    #[serde(rename = "use", skip_serializing_if = "Option::is_none", default)]
    pub use_: Option<String>,
    /// The algorithm this key is for.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub alg: Option<Alg>,
}

/// A JWK Set document (RFC 7517 §5), as served at the issuer's `jwks_uri`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwkSet {
    /// The keys, in publication order.
    pub keys: Vec<Jwk>,
}

/// An RFC 7638 JWK SHA-256 thumbprint, base64url without padding.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Thumbprint(pub String);

impl std::fmt::Display for Thumbprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a JWK was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    /// Occurs when the JWK carries private key members (`d`, `p`, …) where only a public key
    /// may appear.
    #[error("the JWK contains private key material")]
    PrivateMembers,
    /// Occurs when the JSON is not a JWK of a supported key type.
    #[error("malformed or unsupported JWK: {0}")]
    Malformed(String),
}

/// Members that only private (or symmetric) keys have (RFC 7518 §6.2.2, §6.3.2, §6.4).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

impl Jwk {
    /// Parses a JWK that must be public, refusing private and symmetric key members.
    pub fn parse_public(value: &serde_json::Value) -> Result<Jwk, JwkError> {
        let object = value
            .as_object()
            .ok_or_else(|| JwkError::Malformed("not a JSON object".into()))?;
        if PRIVATE_MEMBERS.iter().any(|m| object.contains_key(*m)) {
            return Err(JwkError::PrivateMembers);
        }
        serde_json::from_value(value.clone()).map_err(|e| JwkError::Malformed(e.to_string()))
    }

    /// The RFC 7638 thumbprint of this key: SHA-256 over the required members in
    /// lexicographic order, without whitespace.
    pub fn thumbprint(&self) -> Thumbprint {
        // serde_json writes struct fields in declaration order, which is declared here in the
        // lexicographic order RFC 7638 §3.2 requires.
        #[derive(Serialize)]
        struct Ec<'a> {
            crv: &'a str,
            kty: &'static str,
            x: &'a str,
            y: &'a str,
        }
        #[derive(Serialize)]
        struct Rsa<'a> {
            e: &'a str,
            kty: &'static str,
            n: &'a str,
        }
        #[derive(Serialize)]
        struct Okp<'a> {
            crv: &'a str,
            kty: &'static str,
            x: &'a str,
        }
        let canonical = match &self.key {
            PublicKey::EC { crv, x, y } => serde_json::to_vec(&Ec {
                crv,
                kty: "EC",
                x,
                y,
            }),
            PublicKey::RSA { n, e } => serde_json::to_vec(&Rsa { e, kty: "RSA", n }),
            PublicKey::OKP { crv, x } => serde_json::to_vec(&Okp { crv, kty: "OKP", x }),
        }
        .unwrap_or_default();
        let digest = ring::digest::digest(&ring::digest::SHA256, &canonical);
        Thumbprint(URL_SAFE_NO_PAD.encode(digest.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example key and thumbprint of RFC 7638 §3.1.
    #[test]
    fn rfc7638_example_thumbprint() {
        let jwk = Jwk {
            key: PublicKey::RSA {
                n: "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw".into(),
                e: "AQAB".into(),
            },
            kid: Some("2011-04-29".into()),
            use_: None,
            alg: Some(Alg::RS256),
        };
        assert_eq!(
            jwk.thumbprint().0,
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn private_members_are_refused() {
        let value = serde_json::json!({"kty":"EC","crv":"P-256","x":"a","y":"b","d":"secret"});
        assert_eq!(Jwk::parse_public(&value), Err(JwkError::PrivateMembers));
        let symmetric = serde_json::json!({"kty":"oct","k":"c2VjcmV0"});
        assert_eq!(Jwk::parse_public(&symmetric), Err(JwkError::PrivateMembers));
    }

    #[test]
    fn public_ec_key_parses_and_ignores_extra_members() {
        let value =
            serde_json::json!({"kty":"EC","crv":"P-256","x":"a","y":"b","kid":"k1","ext":true});
        let jwk = Jwk::parse_public(&value).map_err(|e| e.to_string());
        assert_eq!(
            jwk.map(|j| j.key),
            Ok(PublicKey::EC {
                crv: "P-256".into(),
                x: "a".into(),
                y: "b".into()
            })
        );
    }
}
