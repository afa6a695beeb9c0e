//! One signing key: a pre-parsed ring key pair with its public JWK.
//!
//! Keys are parsed once, when loaded; signing then costs one ring call. The compact JWS is
//! assembled here directly (RFC 7515 §7.1) instead of through a JWT library that would re-parse
//! the key on every call (docs/design.md "Tokens").

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use serde::Serialize;
use tailpass_verify::jwk::PublicKey;
use tailpass_verify::{Alg, Jwk, Thumbprint};
use zeroize::Zeroizing;

/// The size of generated RSA keys.
const RSA_BITS: usize = 2048;

enum Pair {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
    Rs256(RsaKeyPair),
}

/// A private key ready to sign, and the public half tailpass publishes.
pub struct SigningKey {
    alg: Alg,
    kid: Thumbprint,
    jwk: Jwk,
    pair: Pair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Why a key could not be made, loaded or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    /// Occurs when PKCS#8 bytes are not a valid private key for the algorithm.
    #[error("not a valid {alg} private key: {reason}")]
    Rejected {
        /// The algorithm the key was expected to be for.
        alg: Alg,
        /// ring's or rsa's reason.
        reason: String,
    },
    /// Occurs when the operating system's random source fails.
    #[error("random source failed")]
    Random,
    /// Occurs when claims cannot be serialized.
    #[error("cannot serialize claims: {0}")]
    Claims(String),
}

impl SigningKey {
    /// Generates a new key for `alg`, returning it and its PKCS#8 DER encoding (to be written
    /// to disk; zeroed when dropped).
    pub fn generate(alg: Alg) -> Result<(SigningKey, Zeroizing<Vec<u8>>), SigningError> {
        let rng = SystemRandom::new();
        let der =
            match alg {
                Alg::ES256 => {
                    EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                        .map_err(|_| SigningError::Random)?
                        .as_ref()
                        .to_vec()
                }
                Alg::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| SigningError::Random)?
                    .as_ref()
                    .to_vec(),
                // ring cannot generate RSA keys; the rsa crate can, and ring loads its PKCS#8.
                Alg::RS256 => {
                    use rsa::pkcs8::EncodePrivateKey as _;
                    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, RSA_BITS)
                        .map_err(|e| SigningError::Rejected {
                            alg,
                            reason: e.to_string(),
                        })?;
                    key.to_pkcs8_der()
                        .map_err(|e| SigningError::Rejected {
                            alg,
                            reason: e.to_string(),
                        })?
                        .as_bytes()
                        .to_vec()
                }
            };
        let der = Zeroizing::new(der);
        let key = SigningKey::from_pkcs8(alg, &der)?;
        Ok((key, der))
    }

    /// Loads a key of algorithm `alg` from PKCS#8 DER.
    pub fn from_pkcs8(alg: Alg, der: &[u8]) -> Result<SigningKey, SigningError> {
        let rejected = |e: ring::error::KeyRejected| SigningError::Rejected {
            alg,
            reason: e.to_string(),
        };
        let (pair, key) = match alg {
            Alg::ES256 => {
                let pair = EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    der,
                    &SystemRandom::new(),
                )
                .map_err(rejected)?;
                // An uncompressed SEC1 point: 0x04 ‖ x ‖ y, 32 bytes each.
                let point = pair.public_key().as_ref();
                let (x, y) = match (point.get(1..33), point.get(33..65)) {
                    (Some(x), Some(y)) => (x, y),
                    _ => {
                        return Err(SigningError::Rejected {
                            alg,
                            reason: "unexpected public key length".into(),
                        });
                    }
                };
                let key = PublicKey::EC {
                    crv: "P-256".into(),
                    x: URL_SAFE_NO_PAD.encode(x),
                    y: URL_SAFE_NO_PAD.encode(y),
                };
                (Pair::Es256(pair), key)
            }
            Alg::EdDSA => {
                let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(rejected)?;
                let key = PublicKey::OKP {
                    crv: "Ed25519".into(),
                    x: URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
                };
                (Pair::EdDsa(pair), key)
            }
            Alg::RS256 => {
                let pair = RsaKeyPair::from_pkcs8(der).map_err(rejected)?;
                let parts: signature::RsaPublicKeyComponents<Vec<u8>> = pair.public().into();
                let key = PublicKey::RSA {
                    n: URL_SAFE_NO_PAD.encode(&parts.n),
                    e: URL_SAFE_NO_PAD.encode(&parts.e),
                };
                (Pair::Rs256(pair), key)
            }
        };
        let mut jwk = Jwk {
            key,
            kid: None,
            use_: Some("sig".into()),
            alg: Some(alg),
        };
        let kid = jwk.thumbprint();
        jwk.kid = Some(kid.0.clone());
        Ok(SigningKey {
            alg,
            kid,
            jwk,
            pair,
        })
    }

    /// The algorithm this key signs with.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The key id: the RFC 7638 thumbprint of the public key.
    pub fn kid(&self) -> &Thumbprint {
        &self.kid
    }

    /// The public key as published in the JWKS.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// Signs `message` (a JWS signing input), returning the raw signature.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SigningError> {
        let rng = SystemRandom::new();
        match &self.pair {
            Pair::Es256(pair) => pair
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| SigningError::Random),
            Pair::EdDsa(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            Pair::Rs256(pair) => {
                let mut out = vec![0u8; pair.public().modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut out)
                    .map_err(|_| SigningError::Random)?;
                Ok(out)
            }
        }
    }

    /// Signs `claims` as a compact JWS with header `{"alg","kid","typ"}`.
    pub fn sign_jwt<C: Serialize + ?Sized>(
        &self,
        typ: &str,
        claims: &C,
    ) -> Result<String, SigningError> {
        #[derive(Serialize)]
        struct Header<'a> {
            alg: Alg,
            kid: &'a str,
            typ: &'a str,
        }
        let header = serde_json::to_vec(&Header {
            alg: self.alg,
            kid: &self.kid.0,
            typ,
        })
        .map_err(|e| SigningError::Claims(e.to_string()))?;
        let payload =
            serde_json::to_vec(claims).map_err(|e| SigningError::Claims(e.to_string()))?;
        // The whole JWS is assembled in one buffer, each part encoded in place; the signature
        // (RSA 4096 at most: 512 bytes, 683 encoded) fits the reserve.
        let mut jws = Vec::with_capacity((header.len() + payload.len()) * 4 / 3 + 700);
        push_base64url(&mut jws, &header)?;
        jws.push(b'.');
        push_base64url(&mut jws, &payload)?;
        let signature = self.sign(&jws)?;
        jws.push(b'.');
        push_base64url(&mut jws, &signature)?;
        String::from_utf8(jws).map_err(|e| SigningError::Claims(e.to_string()))
    }
}

/// Appends `bytes` to `out` in unpadded base64url.
fn push_base64url(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), SigningError> {
    let too_large = || SigningError::Claims("the token is too large to encode".into());
    let start = out.len();
    let len = base64::encoded_len(bytes.len(), false).ok_or_else(too_large)?;
    out.resize(start + len, 0);
    let tail = out.get_mut(start..).ok_or_else(too_large)?;
    let written = URL_SAFE_NO_PAD
        .encode_slice(bytes, tail)
        .map_err(|_| too_large())?;
    out.truncate(start + written);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify(alg: Alg, jwk: &Jwk, jws: &str) -> bool {
        let parts: Vec<&str> = jws.split('.').collect();
        let input = format!("{}.{}", parts[0], parts[1]);
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let b = |s: &str| URL_SAFE_NO_PAD.decode(s).unwrap();
        match (&jwk.key, alg) {
            (PublicKey::EC { x, y, .. }, Alg::ES256) => {
                let mut point = vec![4u8];
                point.extend(b(x));
                point.extend(b(y));
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(input.as_bytes(), &sig)
                    .is_ok()
            }
            (PublicKey::OKP { x, .. }, Alg::EdDSA) => {
                signature::UnparsedPublicKey::new(&signature::ED25519, b(x))
                    .verify(input.as_bytes(), &sig)
                    .is_ok()
            }
            (PublicKey::RSA { n, e }, Alg::RS256) => {
                signature::RsaPublicKeyComponents { n: b(n), e: b(e) }
                    .verify(
                        &signature::RSA_PKCS1_2048_8192_SHA256,
                        input.as_bytes(),
                        &sig,
                    )
                    .is_ok()
            }
            _ => false,
        }
    }

    #[test]
    fn each_algorithm_signs_what_its_jwk_verifies() {
        for alg in Alg::ALL {
            let (key, der) = SigningKey::generate(alg).unwrap();
            let jws = key
                .sign_jwt("at+jwt", &serde_json::json!({"sub": "x"}))
                .unwrap();
            assert!(verify(alg, key.jwk(), &jws), "{alg} signature must verify");
            // Reloading the DER gives the same public key and kid.
            let again = SigningKey::from_pkcs8(alg, &der).unwrap();
            assert_eq!(again.kid(), key.kid());
            assert_eq!(again.jwk(), key.jwk());
            // The kid is the thumbprint of the published key.
            assert_eq!(key.jwk().kid.as_deref(), Some(key.kid().0.as_str()));
            let header: serde_json::Value = serde_json::from_slice(
                &URL_SAFE_NO_PAD
                    .decode(jws.split('.').next().unwrap())
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(header["alg"], alg.as_str());
            assert_eq!(header["typ"], "at+jwt");
            assert_eq!(header["kid"], key.kid().0.as_str());
        }
    }

    #[test]
    fn a_tampered_token_fails_verification() {
        let (key, _) = SigningKey::generate(Alg::ES256).unwrap();
        let jws = key
            .sign_jwt("JWT", &serde_json::json!({"sub": "a"}))
            .unwrap();
        let forged_payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"b"}"#);
        let mut parts: Vec<&str> = jws.split('.').collect();
        parts[1] = &forged_payload;
        assert!(!verify(Alg::ES256, key.jwk(), &parts.join(".")));
    }

    #[test]
    fn wrong_algorithm_or_garbage_is_rejected() {
        let (_, der) = SigningKey::generate(Alg::ES256).unwrap();
        assert!(SigningKey::from_pkcs8(Alg::RS256, &der).is_err());
        assert!(SigningKey::from_pkcs8(Alg::EdDSA, &der).is_err());
        assert!(SigningKey::from_pkcs8(Alg::ES256, b"garbage").is_err());
    }
}
