//! The check of an external token: parsed as a compact JWS whose algorithm tailpass verifies
//! (never `none`, never HMAC: a public key can never be taken for a shared secret), from an
//! issuer some table trusts (an unknown issuer's token makes no request anywhere), signed by
//! a key that issuer publishes for that very algorithm, within its lifetime, for a table's
//! audience, and matching that table's patterns.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};
use tailpass_verify::{Audience, Jws, JwsError, UnixTime};

use super::keys::{IssuerKeys, KeysError};
use super::table::FederationTable;

/// Clock skew allowed on `exp`, `nbf` and `iat`, seconds.
pub const LEEWAY: u64 = 30;

/// Why an external token was refused. Each says which check failed, for the audit log and
/// the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExternalError {
    /// Occurs when the token is not a compact JWS tailpass can verify, or names an
    /// algorithm it refuses (`none`, `HS256`, …).
    #[error("the token is not a JWT tailpass verifies: {0}")]
    Malformed(String),
    /// Occurs when no table trusts the token's issuer.
    #[error("issuer {0:?} is not trusted")]
    UnknownIssuer(String),
    /// Occurs when the issuer's keys cannot be had.
    #[error("the issuer's keys are out of reach: {0}")]
    Keys(KeysError),
    /// Occurs when the issuer publishes no key with the token's `kid`.
    #[error("the issuer publishes no key {0:?}")]
    UnknownKey(String),
    /// Occurs when the signature does not verify, or the key is for another algorithm.
    #[error("the signature does not verify")]
    Signature,
    /// Occurs when the token has expired.
    #[error("the token expired at {0}")]
    Expired(u64),
    /// Occurs when the token is not valid yet.
    #[error("the token is not valid before {0}")]
    NotYetValid(u64),
    /// Occurs when the token is for no audience a table of its issuer expects.
    #[error("the token is not for audience {0:?}")]
    Audience(String),
    /// Occurs when the issuer is trusted but no table's patterns all match; names the first
    /// claim that did not.
    #[error("no federation table of this issuer matches (claim {0:?} does not)")]
    NoMatch(String),
}

impl ExternalError {
    /// A bounded label for the audit log and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ExternalError::Malformed(_) => "malformed",
            ExternalError::UnknownIssuer(_) => "issuer",
            ExternalError::Keys(_) => "keys",
            ExternalError::UnknownKey(_) | ExternalError::Signature => "signature",
            ExternalError::Expired(_) | ExternalError::NotYetValid(_) => "lifetime",
            ExternalError::Audience(_) => "audience",
            ExternalError::NoMatch(_) => "mismatch",
        }
    }
}

/// An external token that verified and matched a table.
#[derive(Debug, Clone, PartialEq)]
pub struct Federated {
    /// The table matched.
    pub table: String,
    /// Its issuer.
    pub iss: String,
    /// The token's subject.
    pub sub: String,
    /// The claims the table's profile carries into the run token's `fed`.
    pub carried: Map<String, Value>,
    /// The run label to use when the request names none.
    pub run_label: Option<String>,
    /// When the external token expires.
    pub exp: UnixTime,
    /// Whether it may be traded once only.
    pub single_use: bool,
    /// What identifies this token for single use: its issuer and `jti`, or a hash of the
    /// whole token when it has none.
    pub replay_key: String,
}

impl Federated {
    /// The run token's `fed` object: issuer, subject, table, and the carried claims.
    pub fn claim(&self) -> Value {
        Value::Object(self.claim_map())
    }

    /// The `fed` object as a map: what a federated run is recorded and selected by
    /// ([`super::runs`]).
    pub fn claim_map(&self) -> Map<String, Value> {
        let mut fed = self.carried.clone();
        fed.insert("iss".into(), Value::String(self.iss.clone()));
        fed.insert("sub".into(), Value::String(self.sub.clone()));
        fed.insert("name".into(), Value::String(self.table.clone()));
        fed
    }
}

/// The registered claims read before any table is looked at.
#[derive(Deserialize)]
struct Registered {
    iss: String,
    sub: String,
    #[serde(default)]
    aud: Audience,
    exp: UnixTime,
    #[serde(default)]
    nbf: Option<UnixTime>,
    #[serde(default)]
    iat: Option<UnixTime>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

/// The tables trusted, with their issuers' keys (one key cache per issuer, shared by its
/// tables).
#[derive(Debug, Default)]
pub struct Trust {
    tables: Vec<(FederationTable, Arc<IssuerKeys>)>,
}

/// The unverified payload's `iss`, to pick the tables; nothing is trusted from it.
fn claimed_issuer(jws: &Jws<'_>) -> Option<String> {
    #[derive(Deserialize)]
    struct Iss {
        iss: String,
    }
    jws.claims::<Iss>().ok().map(|c| c.iss)
}

impl Trust {
    /// Trust in `tables` (already checked by [`super::table::check_all`]).
    pub fn new(tables: &[FederationTable]) -> Result<Trust, KeysError> {
        let mut by_issuer: BTreeMap<String, Arc<IssuerKeys>> = BTreeMap::new();
        let mut out = Vec::with_capacity(tables.len());
        for table in tables {
            let keys = match by_issuer.get(&table.issuer) {
                Some(keys) => Arc::clone(keys),
                None => {
                    let keys = Arc::new(IssuerKeys::new(table)?);
                    by_issuer.insert(table.issuer.clone(), Arc::clone(&keys));
                    keys
                }
            };
            out.push((table.clone(), keys));
        }
        Ok(Trust { tables: out })
    }

    /// Whether any table is configured.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// The table named `name`.
    pub fn table(&self, name: &str) -> Option<&FederationTable> {
        self.tables.iter().map(|(t, _)| t).find(|t| t.name == name)
    }

    /// Verifies `token` at `now` and finds the first table (in file order) it matches. With
    /// `audience`, only tables whose audience it is are considered (RFC 7523 assertions).
    pub async fn verify(
        &self,
        token: &str,
        audience: Option<&str>,
        now: UnixTime,
    ) -> Result<Federated, ExternalError> {
        let jws = Jws::parse(token).map_err(|e| ExternalError::Malformed(e.to_string()))?;
        let issuer =
            claimed_issuer(&jws).ok_or_else(|| ExternalError::Malformed("no iss claim".into()))?;
        let candidates: Vec<_> = self
            .tables
            .iter()
            .filter(|(t, _)| t.issuer == issuer)
            .collect();
        let Some((_, keys)) = candidates.first() else {
            return Err(ExternalError::UnknownIssuer(issuer));
        };
        let kid = jws
            .header
            .kid
            .clone()
            .ok_or_else(|| ExternalError::Malformed("no kid in the header".into()))?;
        let set = keys.for_kid(&kid).await.map_err(ExternalError::Keys)?;
        let key = set
            .get(&kid)
            .ok_or_else(|| ExternalError::UnknownKey(kid.clone()))?;
        jws.verify(key).map_err(|e| match e {
            JwsError::KeyMismatch | JwsError::Signature => ExternalError::Signature,
            other => ExternalError::Malformed(other.to_string()),
        })?;
        let claims: Registered = jws
            .claims()
            .map_err(|e| ExternalError::Malformed(e.to_string()))?;
        if now.minus(LEEWAY) >= claims.exp {
            return Err(ExternalError::Expired(claims.exp.0));
        }
        let not_before = claims.nbf.into_iter().chain(claims.iat).max();
        if let Some(not_before) = not_before
            && now.plus(LEEWAY) < not_before
        {
            return Err(ExternalError::NotYetValid(not_before.0));
        }
        let mut mismatch = None;
        for (table, _) in &candidates {
            if audience.is_some_and(|a| a != table.audience)
                || !claims.aud.contains(&table.audience)
            {
                continue;
            }
            match table.mismatch(&claims.sub, &claims.rest) {
                None => return Ok(federated(table, &claims, token)),
                Some(claim) => {
                    mismatch.get_or_insert(claim);
                }
            }
        }
        Err(match mismatch {
            Some(claim) => ExternalError::NoMatch(claim),
            None => ExternalError::Audience(
                audience
                    .map(str::to_owned)
                    .or_else(|| candidates.first().map(|(t, _)| t.audience.clone()))
                    .unwrap_or_default(),
            ),
        })
    }
}

fn federated(table: &FederationTable, claims: &Registered, token: &str) -> Federated {
    use base64::Engine as _;
    let replay_key = match &claims.jti {
        Some(jti) => format!("{}#{jti}", claims.iss),
        None => {
            let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
            format!(
                "{}#sha256:{}",
                claims.iss,
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
            )
        }
    };
    Federated {
        table: table.name.clone(),
        iss: claims.iss.clone(),
        sub: claims.sub.clone(),
        carried: table.profile.carried(&claims.rest),
        run_label: table.profile.run_label(&claims.rest),
        exp: claims.exp,
        single_use: table.single_use(),
        replay_key,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;
    use tailpass_verify::Alg;

    use super::*;
    use crate::keys::SigningKey;

    /// A test double of GitHub's OIDC issuer (which cannot be reached here): discovery and a
    /// JWKS on loopback, counting JWKS fetches, signing with a real RSA key.
    struct Issuer {
        url: String,
        key: SigningKey,
        fetches: Arc<AtomicUsize>,
    }

    async fn issuer() -> Issuer {
        let (key, _) = SigningKey::generate(Alg::RS256).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let fetches = Arc::new(AtomicUsize::new(0));
        let jwks = json!({"keys": [key.jwk()]});
        let (counter, discovery) = (
            fetches.clone(),
            json!({"issuer": url, "jwks_uri": format!("{url}/.well-known/jwks")}),
        );
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || async move { axum::Json(discovery) }),
            )
            .route(
                "/.well-known/jwks",
                axum::routing::get(move || {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let jwks = jwks.clone();
                    async move { axum::Json(jwks) }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Issuer { url, key, fetches }
    }

    const NOW: UnixTime = UnixTime(1_800_000_000);

    /// GitHub Actions' claim set, for a push to main of octo-org/octo-repo.
    fn github_claims(issuer: &str) -> Value {
        json!({
            "jti": "example-id", "sub": "repo:octo-org/octo-repo:ref:refs/heads/main",
            "aud": "https://idp.example.ts.net", "ref": "refs/heads/main", "sha": "abc",
            "repository": "octo-org/octo-repo", "repository_owner": "octo-org",
            "repository_id": "74", "repository_owner_id": "65", "actor_id": "12",
            "run_id": "123", "run_number": "10", "run_attempt": "1",
            "repository_visibility": "private", "actor": "octocat",
            "workflow": "CI", "head_ref": "", "base_ref": "", "event_name": "push",
            "ref_type": "branch", "job_workflow_ref": "octo-org/octo-repo/.github/workflows/ci.yml@refs/heads/main",
            "runner_environment": "github-hosted", "environment": "prod",
            "iss": issuer, "nbf": NOW.0 - 10, "exp": NOW.0 + 300, "iat": NOW.0 - 10
        })
    }

    fn table(issuer: &str) -> FederationTable {
        FederationTable {
            name: "github".into(),
            issuer: issuer.into(),
            audience: "https://idp.example.ts.net".into(),
            jwks_uri: None,
            profile: super::super::Profile::Github,
            subject: "repo:octo-org/*".into(),
            claims: [("repository".to_owned(), "octo-org/*".to_owned())].into(),
            ca_file: None,
            single_use: None,
        }
    }

    fn sign(issuer: &Issuer, claims: &Value) -> String {
        issuer.key.sign_jwt("JWT", claims).unwrap()
    }

    #[tokio::test]
    async fn a_matching_github_token_is_federated_with_its_claims() {
        let github = issuer().await;
        let trust = Trust::new(&[table(&github.url)]).unwrap();
        let token = sign(&github, &github_claims(&github.url));
        let fed = trust.verify(&token, None, NOW).await.unwrap();
        assert_eq!(
            (
                fed.table.as_str(),
                fed.sub.as_str(),
                fed.run_label.as_deref()
            ),
            (
                "github",
                "repo:octo-org/octo-repo:ref:refs/heads/main",
                Some("123/1")
            )
        );
        assert!(fed.single_use);
        assert_eq!(fed.replay_key, format!("{}#example-id", github.url));
        let claim = fed.claim();
        assert_eq!(claim["repository"], "octo-org/octo-repo");
        assert_eq!(claim["name"], "github");
        assert_eq!(claim["iss"], github.url.as_str());
        assert!(claim.get("sha").is_none());

        // The immutable form of the subject matches a pattern written for it.
        let mut immutable = table(&github.url);
        immutable.subject = "repo:octo-org@65/octo-repo@74:*".into();
        let trust = Trust::new(&[immutable]).unwrap();
        let mut claims = github_claims(&github.url);
        claims["sub"] = json!("repo:octo-org@65/octo-repo@74:ref:refs/heads/main");
        assert!(
            trust
                .verify(&sign(&github, &claims), None, NOW)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn tokens_that_do_not_hold_are_refused_each_with_its_reason() {
        let github = issuer().await;
        let trust = Trust::new(&[table(&github.url)]).unwrap();
        let with = |edit: &dyn Fn(&mut Value)| {
            let mut claims = github_claims(&github.url);
            edit(&mut claims);
            sign(&github, &claims)
        };
        let refused = |token: String, audience: Option<&'static str>| {
            let trust = &trust;
            async move { trust.verify(&token, audience, NOW).await.unwrap_err() }
        };
        let other_repo = with(&|c| {
            c["repository"] = json!("evil-org/octo-repo");
        });
        assert_eq!(
            refused(other_repo, None).await,
            ExternalError::NoMatch("repository".into())
        );
        let other_sub = with(&|c| c["sub"] = json!("repo:evil-org/x:ref:refs/heads/main"));
        assert_eq!(
            refused(other_sub, None).await,
            ExternalError::NoMatch("sub".into())
        );
        let wrong_aud = with(&|c| c["aud"] = json!("https://elsewhere.example"));
        assert!(matches!(
            refused(wrong_aud, None).await,
            ExternalError::Audience(_)
        ));
        let right_token = with(&|_| {});
        assert!(matches!(
            refused(right_token, Some("https://other-audience.example")).await,
            ExternalError::Audience(_)
        ));
        let expired = with(&|c| c["exp"] = json!(NOW.0 - LEEWAY - 1));
        assert!(matches!(
            refused(expired, None).await,
            ExternalError::Expired(_)
        ));
        let early = with(&|c| c["nbf"] = json!(NOW.0 + LEEWAY + 60));
        assert!(matches!(
            refused(early, None).await,
            ExternalError::NotYetValid(_)
        ));
        let stranger = with(&|c| c["iss"] = json!("https://token.evil.example"));
        assert_eq!(
            refused(stranger, None).await,
            ExternalError::UnknownIssuer("https://token.evil.example".into())
        );

        // alg confusion: HS256 keyed with the issuer's public key, and an unsigned token.
        let header = |alg: &str| {
            URL_SAFE_NO_PAD.encode(format!(
                "{{\"alg\":\"{alg}\",\"kid\":\"{}\"}}",
                github.key.kid().0
            ))
        };
        let payload = URL_SAFE_NO_PAD.encode(github_claims(&github.url).to_string());
        let input = format!("{}.{payload}", header("HS256"));
        let public = serde_json::to_vec(github.key.jwk()).unwrap();
        let hmac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &public),
            input.as_bytes(),
        );
        let confused = format!("{input}.{}", URL_SAFE_NO_PAD.encode(hmac.as_ref()));
        assert!(matches!(
            refused(confused, None).await,
            ExternalError::Malformed(_)
        ));
        let unsigned = format!("{}.{payload}.", header("none"));
        assert!(matches!(
            refused(unsigned, None).await,
            ExternalError::Malformed(_)
        ));

        // Signed by another key under the issuer's kid.
        let (other, _) = SigningKey::generate(Alg::RS256).unwrap();
        let forged = other.sign_jwt("JWT", &github_claims(&github.url)).unwrap();
        let mut parts = forged.splitn(2, '.');
        let (_, rest) = (parts.next(), parts.next().unwrap());
        let forged = format!("{}.{rest}", header("RS256"));
        assert_eq!(refused(forged, None).await, ExternalError::Signature);
    }

    #[tokio::test]
    async fn unknown_key_ids_refetch_at_most_once_a_period_and_share_the_fetch() {
        let github = issuer().await;
        let trust = Arc::new(Trust::new(&[table(&github.url)]).unwrap());
        let good = sign(&github, &github_claims(&github.url));
        assert!(trust.verify(&good, None, NOW).await.is_ok());
        assert_eq!(github.fetches.load(Ordering::SeqCst), 1);
        // Tokens with made-up key ids, many at once: no further fetch inside the period.
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"made-up"}"#);
        let payload = URL_SAFE_NO_PAD.encode(github_claims(&github.url).to_string());
        let bogus = format!("{header}.{payload}.c2ln");
        let attempts: Vec<_> = (0..20)
            .map(|_| {
                let (trust, bogus) = (trust.clone(), bogus.clone());
                tokio::spawn(async move { trust.verify(&bogus, None, NOW).await })
            })
            .collect();
        for attempt in attempts {
            assert_eq!(
                attempt.await.unwrap().unwrap_err(),
                ExternalError::UnknownKey("made-up".into())
            );
        }
        assert_eq!(github.fetches.load(Ordering::SeqCst), 1);
        assert!(trust.verify(&good, None, NOW).await.is_ok());
    }
}
