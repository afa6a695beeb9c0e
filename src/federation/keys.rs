//! An external issuer's signing keys, fetched only from where its `[[federation]]` table
//! says: its `jwks_uri`, or the `jwks_uri` of its discovery document, which must then be on
//! the issuer's own host. Keys are cached; a token with an unknown `kid` makes one refetch at
//! most every [`MIN_REFETCH`], and callers waiting on a fetch share it (single flight), so
//! a stream of tokens with made-up key ids costs the issuer one request per period.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tailpass_verify::KeySet;
use tailpass_verify::remote::RemoteError;
use url::Url;

use super::table::{FederationTable, fetchable};

/// The least time between two fetches of one issuer's keys.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
/// How long one fetch may take, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an issuer's keys could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    /// Occurs when the discovery document or the key set cannot be fetched or read.
    #[error("{url}: {message}")]
    Fetch {
        /// What was fetched.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// Occurs when discovery names another issuer, or a `jwks_uri` off the issuer's host.
    #[error("discovery of {issuer}: {message}")]
    Discovery {
        /// The issuer.
        issuer: String,
        /// What is wrong.
        message: String,
    },
    /// Occurs when the table's CA file cannot be read.
    #[error("ca_file {0}")]
    Ca(String),
}

#[derive(Debug, Default)]
struct Fetching {
    /// When the last fetch was attempted.
    at: Option<Instant>,
    /// The key set's URL, once known.
    jwks_uri: Option<Url>,
}

/// One issuer's keys.
#[derive(Debug)]
pub struct IssuerKeys {
    issuer: String,
    http: reqwest::Client,
    keys: RwLock<Arc<KeySet>>,
    fetching: tokio::sync::Mutex<Fetching>,
}

#[derive(serde::Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: Url,
}

/// `url` as JSON, fetched only when [`fetchable`], bounded as the issuer's own documents are
/// ([`tailpass_verify::remote::get_json`]).
async fn get_json(http: &reqwest::Client, url: &Url) -> Result<serde_json::Value, KeysError> {
    let fail = |message: String| KeysError::Fetch {
        url: url.to_string(),
        message,
    };
    if !fetchable(url) {
        return Err(fail("only https is fetched".into()));
    }
    tailpass_verify::remote::get_json(http, url.as_str())
        .await
        .map_err(|e| match e {
            RemoteError::Http { message, .. } => fail(message),
            other => fail(other.to_string()),
        })
}

impl IssuerKeys {
    /// The keys of `table`'s issuer, none fetched yet. Connections trust the system's roots,
    /// or the table's `ca_file` instead when it has one; redirects are not followed.
    pub fn new(table: &FederationTable) -> Result<IssuerKeys, KeysError> {
        let mut http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT);
        if let Some(file) = &table.ca_file {
            let shown = file.display().to_string();
            let pem = std::fs::read(file).map_err(|e| KeysError::Ca(format!("{shown}: {e}")))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| KeysError::Ca(format!("{shown}: {e}")))?;
            if certs.is_empty() {
                return Err(KeysError::Ca(format!("{shown}: no certificate")));
            }
            http = http.tls_built_in_root_certs(false);
            for cert in certs {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http.build().map_err(|e| KeysError::Fetch {
            url: table.issuer.clone(),
            message: e.to_string(),
        })?;
        Ok(IssuerKeys {
            issuer: table.issuer.clone(),
            http,
            keys: RwLock::new(Arc::new(KeySet::default())),
            fetching: tokio::sync::Mutex::new(Fetching {
                at: None,
                jwks_uri: table.jwks_uri.clone(),
            }),
        })
    }

    /// The keys held now.
    pub fn current(&self) -> Arc<KeySet> {
        self.keys.read().map(|k| Arc::clone(&k)).unwrap_or_default()
    }

    /// A key set holding `kid` if the issuer publishes it: the cached one, or a fresh one when
    /// `kid` is unknown and the last fetch is [`MIN_REFETCH`] old (the cached one otherwise).
    pub async fn for_kid(&self, kid: &str) -> Result<Arc<KeySet>, KeysError> {
        let cached = self.current();
        if cached.get(kid).is_some() {
            return Ok(cached);
        }
        let mut fetching = self.fetching.lock().await;
        // Someone else's fetch may have brought it while this caller waited.
        let cached = self.current();
        if cached.get(kid).is_some() || fetching.at.is_some_and(|at| at.elapsed() < MIN_REFETCH) {
            return Ok(cached);
        }
        fetching.at = Some(Instant::now());
        let jwks_uri = match fetching.jwks_uri.clone() {
            Some(uri) => uri,
            None => {
                let uri = self.discover().await?;
                fetching.jwks_uri = Some(uri.clone());
                uri
            }
        };
        let document = get_json(&self.http, &jwks_uri).await?;
        let keys = Arc::new(KeySet::from_external_jwks(&document));
        if let Ok(mut slot) = self.keys.write() {
            *slot = Arc::clone(&keys);
        }
        Ok(keys)
    }

    /// The `jwks_uri` of the issuer's discovery document, which must name the issuer itself
    /// and keep its keys on the issuer's host.
    async fn discover(&self) -> Result<Url, KeysError> {
        let bad = |message: String| KeysError::Discovery {
            issuer: self.issuer.clone(),
            message,
        };
        let issuer = Url::parse(&self.issuer).map_err(|e| bad(e.to_string()))?;
        let url = Url::parse(&format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        ))
        .map_err(|e| bad(e.to_string()))?;
        let document: Discovery = serde_json::from_value(get_json(&self.http, &url).await?)
            .map_err(|e| bad(e.to_string()))?;
        if document.issuer != self.issuer {
            return Err(bad(format!("it names issuer {:?}", document.issuer)));
        }
        if document.jwks_uri.host_str() != issuer.host_str() {
            return Err(bad(format!(
                "its jwks_uri {} is not on the issuer's host",
                document.jwks_uri
            )));
        }
        Ok(document.jwks_uri)
    }
}
