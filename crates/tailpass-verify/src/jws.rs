//! Compact JWS parsing and signature verification (RFC 7515), with ring.
//!
//! Strict by construction: the header's `alg` must be one of [`Alg`]'s (so `none` and HMAC
//! cannot even be expressed), it must match the algorithm of the key that verifies it (RFC 8725
//! §3.1), and `crit` headers are refused as not understood (RFC 7515 §4.1.11). Public keys are
//! parsed once into [`VerifyingKey`]s; verifying then costs one ring call.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::jwk::{JwkError, PublicKey};
use crate::{Alg, Jwk};

/// The largest token accepted, to bound work on hostile input.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a JWS was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    /// Occurs when the token is not three base64url parts with a JSON header and payload.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// Occurs when `alg` is not ES256, EdDSA or RS256 (`none` and `HS256` included).
    #[error("algorithm {0:?} is not accepted")]
    Algorithm(String),
    /// Occurs when the header carries `crit` extensions.
    #[error("critical header extensions are not supported")]
    Critical,
    /// Occurs when the key's algorithm differs from the header's.
    #[error("the token's algorithm does not match its key")]
    KeyMismatch,
    /// Occurs when the signature does not verify.
    #[error("bad signature")]
    Signature,
    /// Occurs when the claims are not the JSON expected.
    #[error("invalid claims: {0}")]
    Claims(String),
}

/// The protected header.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Header {
    /// The algorithm, as written.
    pub alg: String,
    /// The key id.
    #[serde(default)]
    pub kid: Option<String>,
    /// The media type (`at+jwt`, `dpop+jwt`, `logout+jwt`).
    #[serde(default)]
    pub typ: Option<String>,
    /// An embedded public key (DPoP proofs, RFC 9449 §4.2).
    #[serde(default)]
    pub jwk: Option<serde_json::Value>,
    /// Critical extensions; any is refused.
    #[serde(default)]
    pub crit: Option<serde_json::Value>,
}

/// A parsed, not yet verified, compact JWS.
#[derive(Debug, Clone)]
pub struct Jws<'a> {
    /// The header.
    pub header: Header,
    /// The header's algorithm.
    pub alg: Alg,
    signing_input: &'a str,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

impl<'a> Jws<'a> {
    /// Splits and decodes `token`, checking the header's algorithm and extensions.
    pub fn parse(token: &'a str) -> Result<Jws<'a>, JwsError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwsError::Malformed("too long"));
        }
        let (signing_input, signature) = token
            .rsplit_once('.')
            .ok_or(JwsError::Malformed("expected three parts"))?;
        let (header, payload) = signing_input
            .split_once('.')
            .ok_or(JwsError::Malformed("expected three parts"))?;
        if payload.contains('.') {
            return Err(JwsError::Malformed("expected three parts"));
        }
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| JwsError::Malformed("a part is not base64url"))
        };
        let header: Header = serde_json::from_slice(&decode(header)?)
            .map_err(|_| JwsError::Malformed("the header is not a JSON object"))?;
        let alg: Alg = header
            .alg
            .parse()
            .map_err(|_| JwsError::Algorithm(header.alg.clone()))?;
        if header.crit.is_some() {
            return Err(JwsError::Critical);
        }
        Ok(Jws {
            header,
            alg,
            signing_input,
            payload: decode(payload)?,
            signature: decode(signature)?,
        })
    }

    /// Verifies the signature with `key`.
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), JwsError> {
        if key.alg != self.alg {
            return Err(JwsError::KeyMismatch);
        }
        if key.verify(self.signing_input.as_bytes(), &self.signature) {
            Ok(())
        } else {
            Err(JwsError::Signature)
        }
    }

    /// The payload as `C`. Call only after [`Jws::verify`].
    pub fn claims<C: DeserializeOwned>(&self) -> Result<C, JwsError> {
        serde_json::from_slice(&self.payload).map_err(|e| JwsError::Claims(e.to_string()))
    }
}

#[derive(Debug, Clone)]
enum Material {
    Ec(Vec<u8>),
    Ed(Vec<u8>),
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

/// A public key parsed for verification, with the one algorithm it verifies.
#[derive(Debug, Clone)]
pub struct VerifyingKey {
    alg: Alg,
    material: Material,
}

impl VerifyingKey {
    /// Parses a public JWK for `alg`. The JWK's own `alg`, if any, must agree; its key type
    /// and curve must fit the algorithm.
    pub fn from_jwk(jwk: &Jwk, alg: Alg) -> Result<VerifyingKey, JwkError> {
        if jwk.alg.is_some_and(|a| a != alg) {
            return Err(JwkError::Malformed(format!(
                "key is for {:?}, not {alg}",
                jwk.alg
            )));
        }
        let b64 = |s: &str| {
            URL_SAFE_NO_PAD
                .decode(s)
                .map_err(|_| JwkError::Malformed("a member is not base64url".into()))
        };
        let material = match (&jwk.key, alg) {
            (PublicKey::EC { crv, x, y }, Alg::ES256) if crv == "P-256" => {
                let (x, y) = (b64(x)?, b64(y)?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(JwkError::Malformed("P-256 coordinates are 32 bytes".into()));
                }
                let mut point = Vec::with_capacity(65);
                point.push(4);
                point.extend(x);
                point.extend(y);
                Material::Ec(point)
            }
            (PublicKey::OKP { crv, x }, Alg::EdDSA) if crv == "Ed25519" => {
                let x = b64(x)?;
                if x.len() != 32 {
                    return Err(JwkError::Malformed("Ed25519 keys are 32 bytes".into()));
                }
                Material::Ed(x)
            }
            (PublicKey::RSA { n, e }, Alg::RS256) => Material::Rsa {
                n: b64(n)?,
                e: b64(e)?,
            },
            _ => {
                return Err(JwkError::Malformed(format!("key type does not fit {alg}")));
            }
        };
        Ok(VerifyingKey { alg, material })
    }

    /// Parses a published JWK for the algorithm it names.
    pub fn from_published(jwk: &Jwk) -> Result<VerifyingKey, JwkError> {
        let alg = jwk
            .alg
            .ok_or_else(|| JwkError::Malformed("published key without alg".into()))?;
        VerifyingKey::from_jwk(jwk, alg)
    }

    /// The algorithm this key verifies.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// Whether `signature` is a valid signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.material {
            Material::Ec(point) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, signature)
                    .is_ok()
            }
            Material::Ed(key) => UnparsedPublicKey::new(&signature::ED25519, key)
                .verify(message, signature)
                .is_ok(),
            Material::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature)
                .is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: &str) -> String {
        URL_SAFE_NO_PAD.encode(v)
    }

    #[test]
    fn refuses_none_and_hmac_and_crit() {
        for alg in ["none", "HS256", "ES384"] {
            let token = format!("{}.{}.", b64(&format!(r#"{{"alg":"{alg}"}}"#)), b64("{}"));
            assert_eq!(
                Jws::parse(&token).map(|_| ()),
                Err(JwsError::Algorithm(alg.into())),
                "{alg}"
            );
        }
        let token = format!(
            "{}.{}.",
            b64(r#"{"alg":"ES256","crit":["exp"]}"#),
            b64("{}")
        );
        assert_eq!(Jws::parse(&token).map(|_| ()), Err(JwsError::Critical));
    }

    #[test]
    fn refuses_malformed_shapes() {
        for token in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "!!.e30.AA",
            &"a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(
                matches!(Jws::parse(token), Err(JwsError::Malformed(_))),
                "{token:.20}"
            );
        }
    }

    #[test]
    fn key_must_fit_the_algorithm() {
        let ec = Jwk {
            key: PublicKey::EC {
                crv: "P-256".into(),
                x: URL_SAFE_NO_PAD.encode([1u8; 32]),
                y: URL_SAFE_NO_PAD.encode([2u8; 32]),
            },
            kid: None,
            use_: None,
            alg: None,
        };
        assert!(VerifyingKey::from_jwk(&ec, Alg::ES256).is_ok());
        assert!(VerifyingKey::from_jwk(&ec, Alg::RS256).is_err());
        assert!(VerifyingKey::from_jwk(&ec, Alg::EdDSA).is_err());
    }
}
