//! Claim checks after the signature: type, issuer, audience and time (RFC 9068 §4,
//! RFC 8725 §3.8–3.11). Every failure names its reason, so a refusal can say why.

use crate::UnixTime;
use crate::claims::Audience;
use crate::jws::{Jws, JwsError};

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// Occurs when the JWS itself is refused (shape, algorithm, signature).
    #[error(transparent)]
    Jws(#[from] JwsError),
    /// Occurs when no published key has the token's `kid`.
    #[error("unknown signing key {0:?}")]
    UnknownKey(String),
    /// Occurs when the header's `typ` is not the one expected (an ID token used as an
    /// access token, for instance).
    #[error("token type {found:?} where {expected:?} was expected")]
    Type {
        /// The expected type.
        expected: &'static str,
        /// The type found.
        found: Option<String>,
    },
    /// Occurs when `iss` is not the expected issuer.
    #[error("issuer {0:?} is not trusted")]
    Issuer(String),
    /// Occurs when the token is not for this audience.
    #[error("the token is not for audience {0:?}")]
    Audience(String),
    /// Occurs when the token has expired.
    #[error("the token expired at {0}")]
    Expired(u64),
    /// Occurs when the token is not valid yet (`nbf`, or `iat` in the future).
    #[error("the token is not valid before {0}")]
    NotYetValid(u64),
}

/// What a token must be.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// The issuer.
    pub issuer: &'a str,
    /// An audience the token must carry, if any.
    pub audience: Option<&'a str>,
    /// The header `typ` (`at+jwt` for access tokens).
    pub typ: &'static str,
    /// Allowed clock skew, seconds.
    pub leeway: u64,
}

/// Whether a header `typ` is `expected`, allowing the `application/` prefix (RFC 7515 §4.1.9).
fn type_matches(found: Option<&str>, expected: &str) -> bool {
    found.is_some_and(|t| {
        let t = t.strip_prefix("application/").unwrap_or(t);
        t.eq_ignore_ascii_case(expected)
    })
}

/// The registered claims every check reads.
#[derive(Debug, Clone, Copy)]
pub struct Registered<'a> {
    /// `iss`.
    pub iss: &'a str,
    /// `aud`.
    pub aud: &'a Audience,
    /// `exp`.
    pub exp: UnixTime,
    /// `iat`.
    pub iat: UnixTime,
    /// `nbf`.
    pub nbf: Option<UnixTime>,
}

/// Checks type, issuer, audience and times.
pub fn check(
    jws: &Jws<'_>,
    claims: Registered<'_>,
    expect: &Expect<'_>,
    now: UnixTime,
) -> Result<(), ValidationError> {
    if !type_matches(jws.header.typ.as_deref(), expect.typ) {
        return Err(ValidationError::Type {
            expected: expect.typ,
            found: jws.header.typ.clone(),
        });
    }
    if claims.iss != expect.issuer {
        return Err(ValidationError::Issuer(claims.iss.to_owned()));
    }
    if let Some(aud) = expect.audience
        && !claims.aud.contains(aud)
    {
        return Err(ValidationError::Audience(aud.to_owned()));
    }
    if now.minus(expect.leeway) >= claims.exp {
        return Err(ValidationError::Expired(claims.exp.0));
    }
    let not_before = claims.nbf.unwrap_or(claims.iat).max(claims.iat);
    if now.plus(expect.leeway) < not_before {
        return Err(ValidationError::NotYetValid(not_before.0));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_compare_without_the_application_prefix() {
        assert!(type_matches(Some("at+jwt"), "at+jwt"));
        assert!(type_matches(Some("application/AT+JWT"), "at+jwt"));
        assert!(!type_matches(Some("JWT"), "at+jwt"));
        assert!(!type_matches(None, "at+jwt"));
    }
}
