//! HTTPS for the webhook listener: rustls with PEM certificate and key files.
//!
//! The files are read once at start-up (and by `entity-bridge check`), so a bad certificate
//! fails fast with the file named. rustls runs with the *ring* provider chosen explicitly
//! (never the process default), TLS 1.2 and 1.3, ALPN `h2` + `http/1.1`. The handshake runs in
//! [`super::serve`] within the header timeout. Certificates are not reloaded while running:
//! rotate them with a (rolling) restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use serde::{Deserialize, Serialize};

/// `[http.tls]`: serve the webhook listener over HTTPS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server certificate, followed by any intermediate certificates.
    pub cert_file: PathBuf,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1/RSA or SEC1/EC). Keep it
    /// readable by the bridge's user only; its content is never logged.
    pub key_file: PathBuf,
}

/// Why the TLS configuration could not be loaded. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not the PEM expected.
    #[error("`{path}`: {detail}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("certificate `{cert}` with key `{key}`: {source}")]
    Rustls {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        source: rustls::Error,
    },
}

impl TlsConfig {
    /// Reads and checks both files and builds the rustls server configuration.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let cert_pem = read(&self.cert_file)?;
        let key_pem = read(&self.key_file)?;
        let pem_err = |path: &Path, detail: String| TlsError::Pem {
            path: path.to_owned(),
            detail,
        };
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err(&self.cert_file, format!("not a PEM certificate file: {e}")))?;
        if chain.is_empty() {
            return Err(pem_err(
                &self.cert_file,
                "contains no `CERTIFICATE` block".into(),
            ));
        }
        // The error text of a key parse never includes key bytes.
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            pem_err(
                &self.key_file,
                format!("no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
            )
        })?;
        let rustls_err = |source| TlsError::Rustls {
            cert: self.cert_file.clone(),
            key: self.key_file.clone(),
            source,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(rustls_err)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(rustls_err)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}
