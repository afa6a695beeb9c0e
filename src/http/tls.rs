//! TLS for the main listener: from PEM files, or from tailscaled's certificate for the
//! issuer's host name (the node's `*.ts.net` name), fetched through the LocalAPI and refreshed
//! while running so that renewals need no restart.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::identity::tailscaled::LocalApi;

/// How often tailscaled's certificate is fetched again; tailscaled renews it well before
/// expiry, so twice a day is ample.
const REFRESH: Duration = Duration::from_secs(12 * 3_600);

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Occurs when a PEM file cannot be read or holds no usable certificate or key.
    #[error("{path}: {message}")]
    Pem {
        /// The file (or `tailscaled`).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Occurs when rustls refuses the certificate and key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// Occurs when tailscaled cannot provide a certificate.
    #[error("tailscaled certificate for {domain}: {message}")]
    Tailscaled {
        /// The host name.
        domain: String,
        /// Why.
        message: String,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_error(path: &str, message: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// Parses a certificate chain and private key from PEM bytes.
fn certified_key(pem_chain: &[u8], pem_key: &[u8], origin: &str) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem_chain)
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(origin, e))?;
    if chain.is_empty() {
        return Err(pem_error(origin, "no certificate found"));
    }
    let key = PrivateKeyDer::from_pem_slice(pem_key).map_err(|e| pem_error(origin, e))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(TlsError::Rustls)?;
    Ok(CertifiedKey::new(chain, signing))
}

fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A certificate that can be replaced while the server runs.
#[derive(Debug)]
pub struct SwappableCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().map(|cert| cert.clone())
    }
}

/// TLS from a certificate chain file and a key file.
pub fn from_files(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let read =
        |path: &Path| std::fs::read(path).map_err(|e| pem_error(&path.display().to_string(), e));
    let certified = certified_key(&read(cert)?, &read(key)?, &cert.display().to_string())?;
    server_config(Arc::new(SwappableCert(RwLock::new(Arc::new(certified)))))
}

async fn fetch(api: &LocalApi, domain: &str) -> Result<CertifiedKey, TlsError> {
    let pair = api
        .cert_pair(domain)
        .await
        .map_err(|e| TlsError::Tailscaled {
            domain: domain.to_owned(),
            message: e.to_string(),
        })?;
    // `type=pair` is the key followed by the chain, both PEM, in one body.
    certified_key(&pair, &pair, "tailscaled")
}

/// TLS from tailscaled's certificate for `domain`, refreshed in the background until
/// `shutdown` fires.
pub async fn from_tailscaled(
    api: LocalApi,
    domain: String,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<Arc<ServerConfig>, TlsError> {
    let first = fetch(&api, &domain).await?;
    let cert = Arc::new(SwappableCert(RwLock::new(Arc::new(first))));
    let refreshed = cert.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(REFRESH) => {}
            }
            match fetch(&api, &domain).await {
                Ok(fresh) => {
                    if let Ok(mut current) = refreshed.0.write() {
                        *current = Arc::new(fresh);
                        tracing::info!(%domain, "reloaded tailscaled certificate");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "certificate refresh failed; keeping the current one")
                }
            }
        }
    });
    server_config(cert)
}
