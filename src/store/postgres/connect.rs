//! Reaching PostgreSQL: the parsed URL ([`PostgresTarget`]), TLS by `sslmode`, the bounded
//! pool, and how the driver's errors become [`StoreError`]s.
//!
//! `sslmode` means what it means to libpq, except that `require` also authenticates the
//! server: `disable` never uses TLS; `prefer` uses it when the server offers it, without
//! checking the certificate (encryption against eavesdroppers, not against an active
//! attacker); `require` refuses a server without TLS or whose certificate does not verify
//! against the system roots, or against `--store-ca-file` when given.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime as TlsTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::StoreError;
use crate::store::location::LocationError;

/// How long to wait for a connection: from the pool, or a new one to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A parsed `postgres://` URL. `Display` and `Debug` leave the password out.
#[derive(Clone)]
pub struct PostgresTarget {
    config: tokio_postgres::Config,
}

/// How to make a connection outside the pool (the key notifications' listener).
#[derive(Clone)]
pub struct Connector {
    /// The connection settings.
    pub config: tokio_postgres::Config,
    /// TLS by `sslmode`.
    pub tls: MakeRustlsConnect,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector(..)")
    }
}

impl std::fmt::Debug for PostgresTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgresTarget({self})")
    }
}

impl std::fmt::Display for PostgresTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.config;
        f.write_str("postgres://")?;
        if let Some(user) = c.get_user() {
            write!(f, "{user}@")?;
        }
        for (i, host) in c.get_hosts().iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match host {
                Host::Tcp(name) => f.write_str(name)?,
                Host::Unix(path) => write!(f, "{}", path.display())?,
            }
            if let Some(port) = c.get_ports().get(i) {
                write!(f, ":{port}")?;
            }
        }
        write!(f, "/{}", c.get_dbname().unwrap_or(""))?;
        let mode = match c.get_ssl_mode() {
            SslMode::Disable => "disable",
            SslMode::Require => "require",
            _ => "prefer",
        };
        write!(f, "?sslmode={mode}")
    }
}

impl PostgresTarget {
    /// Parses a `postgres://` URL (libpq's form; `sslmode` one of `disable`, `prefer` — the
    /// default — or `require`).
    pub fn parse(url: &str) -> Result<PostgresTarget, LocationError> {
        // The driver's messages name the offending option, never its value.
        let config = url
            .parse::<tokio_postgres::Config>()
            .map_err(|e| LocationError::Postgres(e.to_string()))?;
        if config.get_hosts().is_empty() {
            return Err(LocationError::Postgres("no host".into()));
        }
        Ok(PostgresTarget { config })
    }

    /// The same server and credentials, another database (tests make one each).
    pub fn with_dbname(&self, dbname: &str) -> PostgresTarget {
        let mut config = self.config.clone();
        config.dbname(dbname);
        PostgresTarget { config }
    }

    /// What makes one connection: the configuration (with [`CONNECT_TIMEOUT`] and the
    /// application name unless the URL sets them) and the TLS connector of its `sslmode`.
    pub fn connector(&self, ca_file: Option<&Path>) -> Result<Connector, StoreError> {
        let mut config = self.config.clone();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("tailpass");
        }
        let tls = tls(config.get_ssl_mode(), ca_file)?;
        Ok(Connector { config, tls })
    }

    /// A bounded pool of connections: at most `size`, each made within [`CONNECT_TIMEOUT`],
    /// a caller waiting at most as long for one. A connection found closed is dropped and a
    /// new one made, so the pool recovers by itself once the database is back.
    pub fn pool(&self, ca_file: Option<&Path>, size: usize) -> Result<Pool, StoreError> {
        let Connector { config, tls } = self.connector(ca_file)?;
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(size.max(1))
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot build the connection pool: {e}")))
    }
}

/// The TLS connector for `mode`, with ring as its provider (never the process default).
fn tls(mode: SslMode, ca_file: Option<&Path>) -> Result<MakeRustlsConnect, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Backend(format!("TLS: {e}")))?;
    let config = match mode {
        SslMode::Disable => builder
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth(),
        SslMode::Require => builder
            .with_root_certificates(roots(ca_file)?)
            .with_no_client_auth(),
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

/// The roots a database certificate is verified against: `ca_file`'s, or the system's.
fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, StoreError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let shown = path.display();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| StoreError::Backend(format!("--store-ca-file {shown}: {e}")))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| StoreError::Backend(format!("--store-ca-file {shown}: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| StoreError::Backend(format!("--store-ca-file {shown}: {e}")))?;
            }
            if roots.is_empty() {
                return Err(StoreError::Backend(format!(
                    "--store-ca-file {shown}: no certificate"
                )));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(StoreError::Backend(
                    "sslmode=require: no system root certificate found; give --store-ca-file"
                        .into(),
                ));
            }
        }
    }
    Ok(roots)
}

/// `sslmode=prefer`'s verifier: any certificate is accepted (as libpq does without
/// `sslrootcert`), the handshake's signatures are still checked.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: TlsTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Whether a server error means the database is out of reach for now: connection
/// exceptions (class 08), an operator intervention such as a shutdown (57), or insufficient
/// resources such as too many connections (53).
fn unreachable_state(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "57" | "53"))
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> StoreError {
        if let Some(db) = e.as_db_error() {
            let code = db.code();
            let message = format!("{} ({})", db.message(), code.code());
            if *code == tokio_postgres::error::SqlState::UNIQUE_VIOLATION {
                return StoreError::Conflict(message);
            }
            if unreachable_state(code.code()) {
                return StoreError::Unavailable(message);
            }
            return StoreError::Backend(message);
        }
        if e.is_closed() {
            return StoreError::Unavailable(e.to_string());
        }
        StoreError::Backend(e.to_string())
    }
}

impl From<PoolError> for StoreError {
    fn from(e: PoolError) -> StoreError {
        match e {
            // No connection in time, or none could be made: the database is out of reach.
            PoolError::Timeout(_) | PoolError::Backend(_) => StoreError::Unavailable(e.to_string()),
            other => StoreError::Backend(other.to_string()),
        }
    }
}
