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
use crate::clients::GrantType;
use crate::grant::agent::{AgentRequest, MAX_LABEL};
use crate::grant::ambient::{self, PeerExchangeRequest, TAILNET_PEER_TOKEN_TYPE};
use crate::grant::authorization_code::CodeRequest;
use crate::grant::exchange::{self, ACCESS_TOKEN_TYPE, ExchangeRequest, JWT_TYPE};
use crate::grant::federated::{FederatedRequest, ID_TOKEN_TYPE, Presentation};
use crate::grant::refresh::RefreshRequest;

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

/// A form body's bytes: the media type checked, the size bounded.
async fn form_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, Error> {
    if media_type(&req).as_deref() != Some("application/x-www-form-urlencoded") {
        return Err(Error::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let Body(bytes) = Body::from_request(req, state).await?;
    Ok(bytes)
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Form<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        parse_form(&form_bytes(req, state).await?).map(Form)
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

/// A token request (`POST /token`), tagged on `grant_type`, each grant's parameters typed and
/// checked here. A missing `grant_type` or one not supported is refused at once; a grant's
/// missing or malformed parameter is kept as its `invalid_request` (RFC 6749 §5.2), which the
/// endpoint answers only once the client has authenticated, so that a caller who cannot
/// learns nothing about the rest of its request.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `client_id` and `client_secret` from the body (RFC 6749 §2.3.1), if sent there.
    pub client_id: Option<String>,
    /// See `client_id`.
    pub client_secret: Option<String>,
    /// The grant type asked for.
    pub grant_type: GrantType,
    /// The grant's parameters, or why they are refused.
    pub grant: Result<GrantRequest, Error>,
}

/// The grant a token request asks for (RFC 6749 §4.1.3, §4.4.2, §6; RFC 8693 §2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantRequest {
    /// `authorization_code`.
    AuthorizationCode(CodeRequest),
    /// `refresh_token`.
    RefreshToken(RefreshRequest),
    /// `client_credentials`: the agent grant without client authentication, a confidential
    /// client's own token with it.
    ClientCredentials(AgentRequest),
    /// `urn:ietf:params:oauth:grant-type:token-exchange`.
    TokenExchange(ExchangeRequest),
    /// `urn:ietf:params:oauth:grant-type:token-exchange` with a tailnet-peer subject: a
    /// gateway in ambient mode asking for a peer's token.
    PeerExchange(PeerExchangeRequest),
    /// An external token traded for a run token: token exchange with `subject_token_type`
    /// `jwt` or `id_token`, or `urn:ietf:params:oauth:grant-type:jwt-bearer` (RFC 7523).
    Federated(FederatedRequest),
}

impl GrantRequest {
    /// Whether the request is one of the federation grants, the only ones served over
    /// Funnel.
    pub fn is_federated(&self) -> bool {
        matches!(self, GrantRequest::Federated(_))
    }
}

/// Every parameter any grant takes, as sent (RFC 6749, RFC 7636, RFC 8707, RFC 8693,
/// docs/design.md "Contracts"). Only `resource` and `audience` may repeat.
#[derive(Debug, Default, serde::Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    refresh_token: Option<String>,
    scope: Option<String>,
    #[serde(default)]
    resource: Vec<String>,
    #[serde(default)]
    audience: Vec<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    expires_in: Option<String>,
    run_label: Option<String>,
    subject_token: Option<String>,
    subject_token_type: Option<String>,
    actor_token: Option<String>,
    actor_token_type: Option<String>,
    requested_token_type: Option<String>,
    assertion: Option<String>,
}

fn required(value: Option<String>, name: &'static str) -> Result<String, Error> {
    value.ok_or_else(|| Error::invalid_request(format!("{name} is required")))
}

impl TokenForm {
    /// `resource` and `audience` together, in order, without repeats.
    fn audiences(&mut self) -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        for a in self.resource.drain(..).chain(self.audience.drain(..)) {
            if !all.contains(&a) {
                all.push(a);
            }
        }
        all
    }

    /// The parameters an agent-style request shares with token exchange.
    fn agent(&mut self) -> Result<AgentRequest, Error> {
        let expires_in = match self.expires_in.as_deref() {
            Some(text) => Some(text.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                Error::invalid_request("expires_in must be a positive number of seconds")
            })?),
            None => None,
        };
        let run_label = match self.run_label.take() {
            Some(l) if l.chars().count() > MAX_LABEL || l.chars().any(char::is_control) => {
                return Err(Error::invalid_request(format!(
                    "run_label must be at most {MAX_LABEL} printable characters"
                )));
            }
            label => label,
        };
        Ok(AgentRequest {
            audiences: self.audiences(),
            scope: self.scope.take(),
            expires_in,
            run_label,
        })
    }

    fn exchange(mut self) -> Result<GrantRequest, Error> {
        let subject_token = required(self.subject_token.take(), "subject_token")?;
        let peer = self.subject_token_type.as_deref() == Some(TAILNET_PEER_TOKEN_TYPE);
        let external = matches!(
            self.subject_token_type.as_deref(),
            Some(JWT_TYPE | ID_TOKEN_TYPE)
        );
        if !peer && !external && self.subject_token_type.as_deref() != Some(ACCESS_TOKEN_TYPE) {
            return Err(Error::invalid_request(format!(
                "subject_token_type must be {ACCESS_TOKEN_TYPE}, {TAILNET_PEER_TOKEN_TYPE}, \
                 {JWT_TYPE} or {ID_TOKEN_TYPE}"
            )));
        }
        if self
            .requested_token_type
            .as_deref()
            .is_some_and(|t| t != ACCESS_TOKEN_TYPE)
        {
            return Err(Error::invalid_request(format!(
                "only {ACCESS_TOKEN_TYPE} can be requested"
            )));
        }
        if self.actor_token.is_some() && !exchange::token_type_ok(self.actor_token_type.as_deref())
        {
            return Err(Error::invalid_request(format!(
                "actor_token_type must be {ACCESS_TOKEN_TYPE}"
            )));
        }
        if external {
            if self.actor_token.is_some() {
                return Err(Error::invalid_request(
                    "an external subject_token is exchanged without an actor_token",
                ));
            }
            return Ok(GrantRequest::Federated(FederatedRequest {
                token: subject_token,
                presentation: Presentation::Exchange,
                run: self.agent()?,
            }));
        }
        if peer {
            let peer = ambient::parse_peer(&subject_token).ok_or_else(|| {
                Error::invalid_request(
                    "a tailnet-peer subject_token is an IP address, with or without a port",
                )
            })?;
            let actor_token = required(self.actor_token.take(), "actor_token")?;
            return Ok(GrantRequest::PeerExchange(PeerExchangeRequest {
                peer,
                actor_token,
                token: self.agent()?,
            }));
        }
        Ok(GrantRequest::TokenExchange(ExchangeRequest {
            subject_token,
            actor_token: self.actor_token.take(),
            child: self.agent()?,
        }))
    }
}

impl TokenRequest {
    /// Parses a token request's form body.
    pub fn parse(bytes: &[u8]) -> Result<TokenRequest, Error> {
        let mut form: TokenForm = parse_form(bytes)?;
        let name = required(form.grant_type.take(), "grant_type")?;
        let grant_type = GrantType::parse(&name).ok_or_else(|| {
            Error::new(
                Code::UnsupportedGrantType,
                format!("grant_type {name:?} is not supported"),
            )
        })?;
        let client_id = form.client_id.take();
        let client_secret = form.client_secret.take();
        let grant = match grant_type {
            GrantType::AuthorizationCode => (|| {
                Ok(GrantRequest::AuthorizationCode(CodeRequest {
                    code: required(form.code.take(), "code")?,
                    redirect_uri: required(form.redirect_uri.take(), "redirect_uri")?,
                    code_verifier: form.code_verifier.take(),
                    resources: std::mem::take(&mut form.resource),
                }))
            })(),
            GrantType::RefreshToken => {
                required(form.refresh_token.take(), "refresh_token").map(|refresh_token| {
                    GrantRequest::RefreshToken(RefreshRequest {
                        refresh_token,
                        scope: form.scope.take(),
                        resources: std::mem::take(&mut form.resource),
                    })
                })
            }
            GrantType::ClientCredentials => form.agent().map(GrantRequest::ClientCredentials),
            GrantType::TokenExchange => form.exchange(),
            GrantType::JwtBearer => (|| {
                Ok(GrantRequest::Federated(FederatedRequest {
                    token: required(form.assertion.take(), "assertion")?,
                    presentation: Presentation::Assertion,
                    run: form.agent()?,
                }))
            })(),
        };
        Ok(TokenRequest {
            client_id,
            client_secret,
            grant_type,
            grant,
        })
    }
}

impl<S: Send + Sync> FromRequest<S> for TokenRequest {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        TokenRequest::parse(&form_bytes(req, state).await?)
    }
}

#[cfg(test)]
mod token_request_tests {
    use super::*;

    fn parse(body: &str) -> Result<GrantRequest, Error> {
        TokenRequest::parse(body.as_bytes())?.grant
    }

    #[test]
    fn each_grant_type_parses_into_its_variant_with_typed_fields() {
        let code = TokenRequest::parse(
            b"grant_type=authorization_code&code=c&redirect_uri=https://a/cb&code_verifier=v&client_id=x",
        )
        .unwrap();
        assert_eq!(code.client_id.as_deref(), Some("x"));
        assert_eq!(code.grant_type, GrantType::AuthorizationCode);
        assert_eq!(
            code.grant.unwrap(),
            GrantRequest::AuthorizationCode(CodeRequest {
                code: "c".into(),
                redirect_uri: "https://a/cb".into(),
                code_verifier: Some("v".into()),
                resources: Vec::new(),
            })
        );
        let agent = parse(
            "grant_type=client_credentials&resource=a&audience=b&audience=a&expires_in=60&run_label=r1",
        )
        .unwrap();
        assert_eq!(
            agent,
            GrantRequest::ClientCredentials(AgentRequest {
                audiences: vec!["a".into(), "b".into()],
                scope: None,
                expires_in: Some(60),
                run_label: Some("r1".into()),
            })
        );
        let exchange = parse(&format!(
            "grant_type={}&subject_token=t&subject_token_type={ACCESS_TOKEN_TYPE}&scope=read",
            GrantType::TokenExchange.as_str()
        ))
        .unwrap();
        let GrantRequest::TokenExchange(exchange) = exchange else {
            panic!("not an exchange: {exchange:?}");
        };
        assert_eq!(exchange.subject_token, "t");
        assert_eq!(exchange.child.scope.as_deref(), Some("read"));
        let peer = parse(&format!(
            "grant_type={}&subject_token=%5Bfd7a%3A115c%3Aa1e0%3A%3A7%5D%3A4711&subject_token_type={TAILNET_PEER_TOKEN_TYPE}&actor_token=gw&actor_token_type={ACCESS_TOKEN_TYPE}&audience=https://gw&expires_in=3600",
            GrantType::TokenExchange.as_str()
        ))
        .unwrap();
        assert_eq!(
            peer,
            GrantRequest::PeerExchange(PeerExchangeRequest {
                peer: "fd7a:115c:a1e0::7".parse().unwrap(),
                actor_token: "gw".into(),
                token: AgentRequest {
                    audiences: vec!["https://gw".into()],
                    expires_in: Some(3600),
                    ..Default::default()
                },
            })
        );
        assert_eq!(
            parse("grant_type=refresh_token&refresh_token=r").unwrap(),
            GrantRequest::RefreshToken(RefreshRequest {
                refresh_token: "r".into(),
                ..Default::default()
            })
        );
    }

    #[test]
    fn a_grants_parameter_errors_wait_for_client_authentication() {
        let request =
            TokenRequest::parse(b"grant_type=authorization_code&client_id=x&client_secret=s")
                .unwrap();
        assert_eq!(request.client_secret.as_deref(), Some("s"));
        assert_eq!(
            request.grant.unwrap_err().description(),
            Some("code is required")
        );
    }

    #[test]
    fn missing_or_malformed_parameters_are_named() {
        let cases = [
            ("code=c", Code::InvalidRequest, "grant_type is required"),
            (
                "grant_type=password",
                Code::UnsupportedGrantType,
                "password",
            ),
            (
                "grant_type=authorization_code&redirect_uri=x",
                Code::InvalidRequest,
                "code is required",
            ),
            (
                "grant_type=authorization_code&code=c",
                Code::InvalidRequest,
                "redirect_uri is required",
            ),
            (
                "grant_type=refresh_token",
                Code::InvalidRequest,
                "refresh_token is required",
            ),
            (
                "grant_type=client_credentials&expires_in=0",
                Code::InvalidRequest,
                "expires_in",
            ),
            (
                "grant_type=client_credentials&expires_in=ten",
                Code::InvalidRequest,
                "expires_in",
            ),
            (
                "grant_type=client_credentials&run_label=a%0Ab",
                Code::InvalidRequest,
                "run_label",
            ),
            (
                "grant_type=urn:ietf:params:oauth:grant-type:token-exchange",
                Code::InvalidRequest,
                "subject_token is required",
            ),
            (
                "grant_type=urn:ietf:params:oauth:grant-type:token-exchange&subject_token=t&subject_token_type=x",
                Code::InvalidRequest,
                "subject_token_type",
            ),
            (
                "grant_type=client_credentials&scope=a&scope=b",
                Code::InvalidRequest,
                "repeated",
            ),
            (
                "grant_type=urn:ietf:params:oauth:grant-type:token-exchange&subject_token=gw.example&subject_token_type=urn:tailpass:params:oauth:token-type:tailnet-peer&actor_token=t&actor_token_type=urn:ietf:params:oauth:token-type:access_token",
                Code::InvalidRequest,
                "IP address",
            ),
            (
                "grant_type=urn:ietf:params:oauth:grant-type:token-exchange&subject_token=100.64.0.7&subject_token_type=urn:tailpass:params:oauth:token-type:tailnet-peer",
                Code::InvalidRequest,
                "actor_token is required",
            ),
        ];
        for (body, code, needle) in cases {
            let e = parse(body).unwrap_err();
            assert_eq!(e.code(), code, "{body}");
            assert!(e.description().unwrap().contains(needle), "{body}: {e}");
        }
        let long = format!(
            "grant_type=client_credentials&run_label={}",
            "x".repeat(MAX_LABEL + 1)
        );
        assert!(parse(&long).is_err());
        let longest = format!(
            "grant_type=client_credentials&run_label={}",
            "é".repeat(MAX_LABEL)
        );
        assert!(
            parse(&longest).is_ok(),
            "the limit counts characters, not bytes"
        );
    }
}
