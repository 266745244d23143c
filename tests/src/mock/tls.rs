//! HTTPS for the mock (`--tls-cert FILE --tls-key FILE`): every endpoint, the JWKS
//! included, served over TLS 1.2/1.3 (rustls, ring provider) with ALPN `h2` and
//! `http/1.1`, so a client's certificate verification can be tested against a CA of the
//! test's own.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Bound of one TLS handshake: a client that connects and stays silent is dropped.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate chain and key the mock serves HTTPS with (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockTls {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl MockTls {
    /// Reads both files; fails (naming the file) when one is missing, holds no
    /// certificate or key, or when the key does not match the certificate.
    pub(crate) fn acceptor(&self) -> io::Result<TlsAcceptor> {
        let bad = |path: &PathBuf, e: &dyn std::fmt::Display| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: {e}", path.display()),
            )
        };
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| bad(&self.cert, &e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&self.cert, &e))?;
        if certs.is_empty() {
            return Err(bad(&self.cert, &"no CERTIFICATE block"));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| bad(&self.key, &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&self.cert, &e))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| bad(&self.key, &e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}
