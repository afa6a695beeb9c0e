//! Request extractors whose rejections are OAuth errors in JSON, not axum's plain text.
//!
//! Forms and queries are parsed with `serde_html_form`: a parameter declared as a `Vec` may
//! repeat (`resource`, `audience`), any other parameter given twice is refused, as RFC 6749
//! §3.1 requires. Bodies are bounded by the router's body limit; past it the answer is 413.
//! Path parameters that do not decode are refused the same way ([`Path`]).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use tailpass_verify::verifier::{BEARER, DPOP};

use super::error::{Code, Error};

/// A form body (`application/x-www-form-urlencoded`).
#[derive(Debug, Clone)]
pub struct Form<T>(pub T);

/// A JSON body (`application/json`).
#[derive(Debug, Clone)]
pub struct Json<T>(pub T);

/// A query string.
#[derive(Debug, Clone)]
pub struct Query<T>(pub T);

/// A raw body, bounded by the body limit.
#[derive(Debug, Clone)]
pub struct Body(pub Bytes);

fn body_error(rejection: BytesRejection) -> Error {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::new(Code::PayloadTooLarge, "request body too large")
    } else {
        Error::invalid_request("the request body could not be read")
    }
}

fn media_type(req: &Request) -> Option<String> {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
}

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(Body)
            .map_err(body_error)
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Form<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if media_type(&req).as_deref() != Some("application/x-www-form-urlencoded") {
            return Err(Error::invalid_request(
                "the body must be application/x-www-form-urlencoded",
            ));
        }
        let Body(bytes) = Body::from_request(req, state).await?;
        parse_form(&bytes).map(Form)
    }
}

/// Parses form or query bytes into `T`, naming the problem.
pub fn parse_form<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    serde_html_form::from_bytes(bytes).map_err(|e| {
        let detail = e.to_string();
        let detail = if detail == "unsupported value" {
            "a parameter is repeated".to_owned()
        } else {
            detail
        };
        Error::invalid_request(format!("invalid parameters: {detail}"))
    })
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if media_type(&req).as_deref() != Some("application/json") {
            return Err(Error::invalid_request("the body must be application/json"));
        }
        let Body(bytes) = Body::from_request(req, state).await?;
        serde_json::from_slice(&bytes)
            .map(Json)
            .map_err(|e| Error::invalid_request(format!("invalid JSON body: {e}")))
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parse_form(parts.uri.query().unwrap_or_default().as_bytes()).map(Query)
    }
}

/// Path parameters. A segment that is not valid percent-encoded UTF-8, or does not fit `T`,
/// is refused as `invalid_request` in JSON with `no-store`, like every other bad input,
/// rather than with axum's plain-text rejection.
#[derive(Debug, Clone)]
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            // The rejection's text may quote the raw segment; it is not echoed back.
            Err(_) => Err(Error::invalid_request(
                "a path parameter is not valid percent-encoded UTF-8",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Params {
        grant_type: String,
        #[serde(default)]
        resource: Vec<String>,
    }

    #[test]
    fn repeatable_and_single_parameters() {
        let p: Params = parse_form(b"grant_type=x&resource=a&resource=b").unwrap();
        assert_eq!(p.resource, ["a", "b"]);
        let err = parse_form::<Params>(b"grant_type=x&grant_type=y").unwrap_err();
        assert_eq!(err.code(), Code::InvalidRequest);
        assert!(err.description().unwrap().contains("repeated"));
        let err = parse_form::<Params>(b"resource=a").unwrap_err();
        assert!(err.description().unwrap().contains("grant_type"));
    }
}

/// A bearer token from `Authorization: Bearer …` (RFC 6750 §2.1). Missing or malformed is
/// `invalid_token` with a Bearer challenge.
#[derive(Clone)]
pub struct Bearer(pub String);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(<redacted>)")
    }
}

/// The credentials of an `Authorization` header with the given scheme, if present.
pub fn authorization<'a>(parts: &'a Parts, scheme: &str) -> Option<&'a str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (given, rest) = value.split_once(' ')?;
    given
        .eq_ignore_ascii_case(scheme)
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

impl<S: Send + Sync> FromRequestParts<S> for Bearer {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        authorization(parts, BEARER)
            .map(|t| Bearer(t.to_owned()))
            .ok_or_else(|| Error::invalid_token("a bearer token is required"))
    }
}

/// An access token from `Authorization: Bearer …` or `Authorization: DPoP …` (RFC 9449 §7.1).
#[derive(Clone)]
pub struct AccessToken {
    /// The token.
    pub token: String,
    /// Whether it came with the DPoP scheme.
    pub dpop: bool,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("dpop", &self.dpop)
            .finish_non_exhaustive()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AccessToken {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(token) = authorization(parts, DPOP) {
            return Ok(AccessToken {
                token: token.to_owned(),
                dpop: true,
            });
        }
        authorization(parts, BEARER)
            .map(|t| AccessToken {
                token: t.to_owned(),
                dpop: false,
            })
            .ok_or_else(|| Error::invalid_token("an access token is required"))
    }
}
