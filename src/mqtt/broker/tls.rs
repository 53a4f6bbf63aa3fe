//! TLS for broker listeners (rustls): the server certificate and key, and optionally a CA
//! whose client certificates are accepted or required (mutual TLS). Builds the acceptor
//! once at start so a bad file is reported before any client connects; it must not read
//! MQTT.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// A TLS listener's files and client-certificate policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListenerConfig {
    /// PEM: the server certificate, then its chain.
    pub cert_file: PathBuf,
    /// PEM: the server's private key.
    pub key_file: PathBuf,
    /// PEM: CA certificates that sign acceptable client certificates.
    pub client_ca_file: Option<PathBuf>,
    /// Refuse clients without a valid certificate (needs `client_ca_file`).
    pub require_client_cert: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {why}")]
    File { path: PathBuf, why: String },
    #[error("require_client_cert needs client_ca_file: which CA signs the clients?")]
    RequireWithoutCa,
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_error(path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

/// Reads the files and builds the acceptor.
pub fn acceptor(config: &TlsListenerConfig) -> Result<TlsAcceptor, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert_file)
        .map_err(|e| file_error(&config.cert_file, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(&config.cert_file, e))?;
    if chain.is_empty() {
        return Err(file_error(&config.cert_file, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key_file)
        .map_err(|e| file_error(&config.key_file, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &config.client_ca_file {
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for cert in
                CertificateDer::pem_file_iter(ca_file).map_err(|e| file_error(ca_file, e))?
            {
                roots
                    .add(cert.map_err(|e| file_error(ca_file, e))?)
                    .map_err(|e| file_error(ca_file, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if config.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None if config.require_client_cert => return Err(TlsError::RequireWithoutCa),
        None => builder.with_no_client_auth(),
    };
    let server = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}
