//! Proof Key for Code Exchange (RFC 7636).
//!
//! Public clients must use `S256`; `plain` is accepted only from confidential clients, which
//! also prove themselves with a secret (RFC 9700 §2.1.1). Challenges and verifiers are checked
//! for length and alphabet (RFC 7636 §4.1–4.2) before anything is compared, and the comparison
//! is constant-time.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

/// A transformation method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    /// `BASE64URL(SHA256(verifier))`.
    S256,
    /// The verifier itself.
    #[serde(rename = "plain")]
    Plain,
}

/// A code challenge from an authorization request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// The challenge.
    pub value: String,
    /// Its method.
    pub method: Method,
}

/// Why PKCE failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PkceError {
    /// Occurs when a public client sends no challenge.
    #[error("public clients must send a code_challenge with code_challenge_method S256")]
    Required,
    /// Occurs when `plain` (or no method) comes from a public client.
    #[error("public clients must use code_challenge_method S256")]
    PlainForPublic,
    /// Occurs when the method is neither `S256` nor `plain`.
    #[error("code_challenge_method must be S256 or plain")]
    UnknownMethod,
    /// Occurs when a method comes without a challenge.
    #[error("code_challenge_method given without code_challenge")]
    MethodWithoutChallenge,
    /// Occurs when the challenge is too short, too long or has characters outside the
    /// unreserved set.
    #[error("code_challenge is malformed")]
    BadChallenge,
    /// Occurs when the token request lacks the verifier the code needs.
    #[error("code_verifier is required")]
    MissingVerifier,
    /// Occurs when the verifier is too short, too long, or has characters outside the
    /// unreserved set.
    #[error("code_verifier must be 43 to 128 characters of [A-Za-z0-9-._~]")]
    BadVerifier,
    /// Occurs when the verifier does not match the challenge.
    #[error("code_verifier does not match the code_challenge")]
    Mismatch,
    /// Occurs when a verifier is sent for a code issued without a challenge.
    #[error("code_verifier sent, but the authorization request had no code_challenge")]
    Unexpected,
}

fn well_formed(value: &str) -> bool {
    (43..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// The challenge an authorization request carries, checked for the client kind.
pub fn challenge(
    value: Option<&str>,
    method: Option<&str>,
    public_client: bool,
) -> Result<Option<Challenge>, PkceError> {
    let method = match method {
        None => None,
        Some("S256") => Some(Method::S256),
        Some("plain") => Some(Method::Plain),
        Some(_) => return Err(PkceError::UnknownMethod),
    };
    let Some(value) = value else {
        if method.is_some() {
            return Err(PkceError::MethodWithoutChallenge);
        }
        return if public_client {
            Err(PkceError::Required)
        } else {
            Ok(None)
        };
    };
    // RFC 7636 §4.3: without a method, the challenge is plain.
    let method = method.unwrap_or(Method::Plain);
    if public_client && method == Method::Plain {
        return Err(PkceError::PlainForPublic);
    }
    let shaped = match method {
        Method::S256 => {
            value.len() == 43 && URL_SAFE_NO_PAD.decode(value).is_ok_and(|d| d.len() == 32)
        }
        Method::Plain => well_formed(value),
    };
    if !shaped {
        return Err(PkceError::BadChallenge);
    }
    Ok(Some(Challenge {
        value: value.to_owned(),
        method,
    }))
}

/// Checks a token request's verifier against the code's challenge.
pub fn verify(challenge: Option<&Challenge>, verifier: Option<&str>) -> Result<(), PkceError> {
    let (challenge, verifier) = match (challenge, verifier) {
        (None, None) => return Ok(()),
        (None, Some(_)) => return Err(PkceError::Unexpected),
        (Some(_), None) => return Err(PkceError::MissingVerifier),
        (Some(c), Some(v)) => (c, v),
    };
    if !well_formed(verifier) {
        return Err(PkceError::BadVerifier);
    }
    let derived = match challenge.method {
        Method::S256 => {
            let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
            URL_SAFE_NO_PAD.encode(digest.as_ref())
        }
        Method::Plain => verifier.to_owned(),
    };
    if derived.as_bytes().ct_eq(challenge.value.as_bytes()).into() {
        Ok(())
    } else {
        Err(PkceError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    #[test]
    fn rfc7636_appendix_b() {
        let c = challenge(Some(CHALLENGE), Some("S256"), true).unwrap();
        assert_eq!(verify(c.as_ref(), Some(VERIFIER)), Ok(()));
    }

    #[test]
    fn verifier_shape_and_match() {
        let c = challenge(Some(CHALLENGE), Some("S256"), true).unwrap();
        let c = c.as_ref();
        assert_eq!(
            verify(c, Some(&VERIFIER[..42])),
            Err(PkceError::BadVerifier),
            "too short"
        );
        assert_eq!(
            verify(c, Some(&"a".repeat(129))),
            Err(PkceError::BadVerifier),
            "too long"
        );
        let bad_char = format!("{}!", &VERIFIER[..43]);
        assert_eq!(
            verify(c, Some(&bad_char)),
            Err(PkceError::BadVerifier),
            "bad characters"
        );
        let wrong = VERIFIER.replace('d', "e");
        assert_eq!(verify(c, Some(&wrong)), Err(PkceError::Mismatch));
        assert_eq!(verify(c, None), Err(PkceError::MissingVerifier));
        assert_eq!(verify(None, Some(VERIFIER)), Err(PkceError::Unexpected));
        assert_eq!(verify(None, None), Ok(()));
    }

    #[test]
    fn challenge_rules_by_client_kind() {
        assert_eq!(challenge(None, None, true), Err(PkceError::Required));
        assert_eq!(challenge(None, None, false), Ok(None));
        assert_eq!(
            challenge(Some(VERIFIER), Some("plain"), true),
            Err(PkceError::PlainForPublic)
        );
        assert_eq!(
            challenge(Some(VERIFIER), None, true),
            Err(PkceError::PlainForPublic)
        );
        let plain = challenge(Some(VERIFIER), Some("plain"), false).unwrap();
        assert_eq!(verify(plain.as_ref(), Some(VERIFIER)), Ok(()));
        assert_eq!(
            challenge(Some(CHALLENGE), Some("S512"), false),
            Err(PkceError::UnknownMethod)
        );
        assert_eq!(
            challenge(None, Some("S256"), false),
            Err(PkceError::MethodWithoutChallenge)
        );
        assert_eq!(
            challenge(Some("short"), Some("S256"), false),
            Err(PkceError::BadChallenge)
        );
        assert_eq!(
            challenge(Some(&"A".repeat(43)), Some("S256"), false).map(|c| c.is_some()),
            Ok(true)
        );
        assert_eq!(
            challenge(Some(&"x".repeat(43)), Some("S256"), false),
            Err(PkceError::BadChallenge),
            "not the base64url of 32 bytes"
        );
        assert_eq!(
            challenge(Some("a b"), Some("plain"), false),
            Err(PkceError::BadChallenge)
        );
    }
}
