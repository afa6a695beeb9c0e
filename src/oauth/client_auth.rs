//! Client authentication at the token, introspection and revocation endpoints
//! (RFC 6749 §2.3): HTTP Basic, the secret in the form, or — for public clients — the client
//! id alone. Using two methods at once is refused (RFC 6749 §2.3). Every failure is the same
//! `invalid_client`, so a caller cannot learn which client ids exist.

use std::sync::Arc;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::client_registry::Clients;
use crate::clients::Client;
use crate::oauth::error::Error;

/// What a request presented to identify its client.
#[derive(Clone, PartialEq, Eq)]
pub enum Presented {
    /// Nothing: no client (the agent grant), or an error for endpoints that need one.
    Nothing,
    /// A client id without a secret: a public client.
    Public(String),
    /// A client id and a secret, by Basic or in the form.
    Secret {
        /// The client id.
        id: String,
        /// The secret, in clear, in memory only.
        secret: String,
    },
}

impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Presented::Nothing => f.write_str("Nothing"),
            Presented::Public(id) => write!(f, "Public({id})"),
            Presented::Secret { id, .. } => write!(f, "Secret({id}, <redacted>)"),
        }
    }
}

fn form_decode(value: &str) -> Option<String> {
    url::form_urlencoded::parse(format!("x={value}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
}

/// The encoded part of an `Authorization: Basic` header, or `None` without the header.
///
/// A header that is present is a claim to authenticate: one that is not Basic with
/// credentials (`Basic` alone, another scheme, bytes that are not text) is `invalid_client`,
/// never read as "no authentication" — that would turn a failed client login into the agent
/// grant, whose credential is the connection.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<&str>, Error> {
    let malformed = || Error::invalid_client("malformed Basic credentials");
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Error::invalid_client("more than one Authorization header"));
    }
    let (scheme, encoded) = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().split_once(' '))
        .ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(Error::invalid_client(
            "client authentication here is HTTP Basic or the form's client_secret",
        ));
    }
    match encoded.trim() {
        "" => Err(malformed()),
        encoded => Ok(Some(encoded)),
    }
}

/// Reads the client's credentials from the `Authorization` header and the form's
/// `client_id`/`client_secret`.
pub fn presented(
    headers: &HeaderMap,
    form_id: Option<&str>,
    form_secret: Option<&str>,
) -> Result<Presented, Error> {
    let basic = basic_credentials(headers)?;
    match (basic, form_secret) {
        (Some(_), Some(_)) => Err(Error::invalid_request(
            "the client authenticated twice (Basic and client_secret): use one method",
        )),
        (Some(encoded), None) => {
            let decoded = STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| Error::invalid_client("malformed Basic credentials"))?;
            let (id, secret) = decoded
                .split_once(':')
                .ok_or_else(|| Error::invalid_client("malformed Basic credentials"))?;
            // RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
            let (id, secret) = (
                form_decode(id)
                    .ok_or_else(|| Error::invalid_client("malformed Basic credentials"))?,
                form_decode(secret)
                    .ok_or_else(|| Error::invalid_client("malformed Basic credentials"))?,
            );
            if id.is_empty() {
                return Err(Error::invalid_client("malformed Basic credentials"));
            }
            if form_id.is_some_and(|f| f != id) {
                return Err(Error::invalid_request(
                    "client_id differs from the Basic credentials",
                ));
            }
            Ok(Presented::Secret { id, secret })
        }
        (None, Some(secret)) => match form_id {
            Some(id) => Ok(Presented::Secret {
                id: id.to_owned(),
                secret: secret.to_owned(),
            }),
            None => Err(Error::invalid_request("client_secret without client_id")),
        },
        (None, None) => Ok(match form_id {
            Some(id) => Presented::Public(id.to_owned()),
            None => Presented::Nothing,
        }),
    }
}

/// The client the credentials prove, or `invalid_client`.
pub async fn authenticate(clients: &Clients, presented: &Presented) -> Result<Arc<Client>, Error> {
    let failed = || Error::invalid_client("client authentication failed");
    let (id, secret) = match presented {
        Presented::Nothing => return Err(Error::invalid_client("client authentication required")),
        Presented::Public(id) => (id, None),
        Presented::Secret { id, secret } => (id, Some(secret)),
    };
    let client = clients.get(id).await?.ok_or_else(failed)?;
    match (client.is_public(), secret) {
        (true, None) => Ok(client),
        (false, Some(secret)) if client.secret_matches(secret) => Ok(client),
        _ => Err(failed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn basic(raw: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = format!("Basic {}", STANDARD.encode(raw));
        headers.insert(AUTHORIZATION, HeaderValue::from_str(&value).unwrap());
        headers
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let p = presented(&basic("my%20client:s%3Acret"), None, None).unwrap();
        assert_eq!(
            p,
            Presented::Secret {
                id: "my client".into(),
                secret: "s:cret".into()
            }
        );
    }

    #[test]
    fn two_methods_or_mismatched_ids_are_refused() {
        assert!(presented(&basic("a:b"), Some("a"), Some("b")).is_err());
        assert!(presented(&basic("a:b"), Some("other"), None).is_err());
        assert!(presented(&basic("no-colon"), None, None).is_err());
        assert!(presented(&HeaderMap::new(), None, Some("secret")).is_err());
    }

    #[test]
    fn basic_with_no_credentials_is_invalid_client_not_no_authentication() {
        for raw in ["Basic", "Basic ", "basic   ", "Bearer abc", "Basic Og=="] {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, HeaderValue::from_str(raw).unwrap());
            let refused = presented(&headers, None, None);
            assert!(
                matches!(&refused, Err(e) if e.code() == crate::oauth::error::Code::InvalidClient),
                "{raw:?} gave {refused:?}"
            );
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_bytes(b"Basic \xff").unwrap(),
        );
        assert!(presented(&headers, None, None).is_err());
    }

    #[test]
    fn form_and_public_and_nothing() {
        let h = HeaderMap::new();
        assert_eq!(
            presented(&h, Some("c"), Some("s")).unwrap(),
            Presented::Secret {
                id: "c".into(),
                secret: "s".into()
            }
        );
        assert_eq!(
            presented(&h, Some("c"), None).unwrap(),
            Presented::Public("c".into())
        );
        assert_eq!(presented(&h, None, None).unwrap(), Presented::Nothing);
        assert!(
            !format!("{:?}", presented(&h, Some("c"), Some("hunter2")).unwrap())
                .contains("hunter2")
        );
    }
}
