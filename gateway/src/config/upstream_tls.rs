//! `https://` upstream endpoints and `[upstreams.NAME.tls]`: how the
//! gateway verifies an upstream's certificate and which one it presents.
//!
//! An endpoint is `https://host:port` (TLS), `http://host:port` or a bare
//! `host:port` (plaintext, as before). The rustls `ClientConfig` of an
//! upstream is built once when its config loads (validation builds it and
//! the config keeps it, see [`UpstreamTlsConfig::client`]), never per
//! request: trust anchors from `ca_file` or, by default, the system's roots
//! (`rustls-native-certs`); the optional client certificate (mTLS); ALPN
//! `http/1.1` only (the client speaks HTTP/1.1); TLS 1.2 and 1.3 with the
//! ring provider; session resumption (tickets and session ids) on.
//! Verification is on unless `insecure_skip_verify = true`, which is logged
//! as a warning at every load and printed by `gateway check`.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Deserialize;

use super::Config;

/// `[upstreams.NAME.tls]`: applies to the upstream's `https://` endpoints.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM bundle of the CAs trusted for the upstream's certificates
    /// (relative to the config file). Default: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain presented to the upstream (mTLS); needs
    /// `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Name sent as SNI and verified in the certificate. Default: each
    /// endpoint's host.
    pub server_name: Option<String>,
    /// Accept any certificate (tests only): the connection is encrypted
    /// but not authenticated. Logged as a warning at every load.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// The client config, built once by validation (see [`Self::client`]).
    #[serde(skip)]
    built: OnceLock<Result<UpstreamTlsClient, String>>,
}

impl PartialEq for UpstreamTlsConfig {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.ca_file,
            &self.cert_file,
            &self.key_file,
            &self.server_name,
            self.insecure_skip_verify,
        ) == (
            &other.ca_file,
            &other.cert_file,
            &other.key_file,
            &other.server_name,
            other.insecure_skip_verify,
        )
    }
}

/// A built client config and a digest of what it was built from (files'
/// contents included), so a reload that changed nothing keeps endpoints
/// and their pooled connections, and one that changed a file does not.
#[derive(Debug, Clone)]
pub struct UpstreamTlsClient {
    /// The rustls client config shared by the upstream's endpoints.
    pub config: Arc<ClientConfig>,
    /// Digest of the settings and file contents.
    pub fingerprint: u64,
}

/// Whether an endpoint speaks TLS, and its `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointAddr {
    /// `https://`.
    pub tls: bool,
    /// `host:port`.
    pub authority: http::uri::Authority,
}

/// Parses `https://host:port`, `http://host:port` or `host:port`.
pub fn parse_endpoint(ep: &str) -> Result<EndpointAddr, String> {
    let (tls, rest) = if let Some(r) = ep.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = ep.strip_prefix("http://") {
        (false, r)
    } else if ep.contains("://") {
        return Err(format!(
            "{ep:?}: the scheme must be http:// or https:// (or none: plaintext)"
        ));
    } else {
        (false, ep)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let bad = || format!("invalid endpoint {ep:?} (expected [https://]host:port)");
    let authority = http::uri::Authority::try_from(rest).map_err(|_| bad())?;
    if authority.port_u16().is_none()
        || authority.host().is_empty()
        || authority.as_str().contains('@')
    {
        return Err(bad());
    }
    Ok(EndpointAddr { tls, authority })
}

/// The name an endpoint's certificate is verified against (and sent as
/// SNI when it is a DNS name): `server_name`, else the endpoint's host.
pub fn server_name(
    configured: Option<&str>,
    authority: &http::uri::Authority,
) -> Result<ServerName<'static>, String> {
    let host = configured.unwrap_or_else(|| {
        let h = authority.host();
        h.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(h)
    });
    ServerName::try_from(host.to_owned())
        .map_err(|_| format!("{host:?} is not a valid TLS server name (DNS name or IP address)"))
}

impl UpstreamTlsConfig {
    /// Makes the file paths relative to `base` (the config's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [&mut self.ca_file, &mut self.cert_file, &mut self.key_file]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Whether any key is set (the table is there for a reason).
    fn is_set(&self) -> bool {
        *self != Self::default()
    }

    /// The client config built at validation, or built now (a config that
    /// skipped validation, as in tests); the error names the failure.
    pub fn client(&self) -> Result<UpstreamTlsClient, String> {
        self.built
            .get_or_init(|| {
                self.build(&mut Roots::default()).map_err(|errs| {
                    errs.into_iter()
                        .map(|(k, m)| format!("tls.{k}: {m}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
            })
            .clone()
    }

    /// Builds the client config; errors are `(key, message)` with the key
    /// relative to the `tls` table.
    fn build(&self, roots: &mut Roots) -> Result<UpstreamTlsClient, Vec<(String, String)>> {
        let mut errs = Vec::new();
        let mut digest = std::hash::DefaultHasher::new();
        (
            &self.ca_file,
            &self.cert_file,
            &self.key_file,
            &self.server_name,
            self.insecure_skip_verify,
        )
            .hash(&mut digest);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let store = if self.insecure_skip_verify {
            if self.ca_file.is_some() {
                errs.push((
                    "ca_file".into(),
                    "has no effect with insecure_skip_verify = true: remove one".into(),
                ));
            }
            None
        } else if let Some(path) = &self.ca_file {
            match read(path).and_then(|pem| {
                pem.hash(&mut digest);
                ca_store(&pem)
            }) {
                Ok(s) => Some(Arc::new(s)),
                Err(m) => {
                    errs.push(("ca_file".into(), format!("{}: {m}", path.display())));
                    None
                }
            }
        } else {
            match roots.system() {
                Ok(s) => Some(s),
                Err(m) => {
                    errs.push(("ca_file".into(), m));
                    None
                }
            }
        };
        if let Some(n) = &self.server_name {
            if let Err(m) = ServerName::try_from(n.as_str()) {
                errs.push(("server_name".into(), format!("{n:?}: {m}")));
            }
        }
        let identity = match (&self.cert_file, &self.key_file) {
            (None, None) => None,
            (Some(_), None) => {
                errs.push(("key_file".into(), "required with cert_file".into()));
                None
            }
            (None, Some(_)) => {
                errs.push(("cert_file".into(), "required with key_file".into()));
                None
            }
            (Some(c), Some(k)) => {
                let chain = read(c).and_then(|pem| {
                    pem.hash(&mut digest);
                    let chain = CertificateDer::pem_slice_iter(&pem)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| format!("not a PEM certificate chain: {e}"))?;
                    if chain.is_empty() {
                        return Err("no certificate in the file".to_owned());
                    }
                    Ok(chain)
                });
                let key = read(k).and_then(|pem| {
                    pem.hash(&mut digest);
                    PrivateKeyDer::from_pem_slice(&pem)
                        .map_err(|e| format!("no PEM private key: {e}"))
                });
                match (chain, key) {
                    (Ok(chain), Ok(key)) => Some((chain, key)),
                    (chain, key) => {
                        if let Err(m) = chain {
                            errs.push(("cert_file".into(), format!("{}: {m}", c.display())));
                        }
                        if let Err(m) = key {
                            errs.push(("key_file".into(), format!("{}: {m}", k.display())));
                        }
                        None
                    }
                }
            }
        };
        if !errs.is_empty() {
            return Err(errs);
        }
        let builder = match ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
        {
            Ok(b) => b,
            Err(e) => return Err(vec![(String::new(), e.to_string())]),
        };
        let builder = match store {
            Some(store) => builder.with_root_certificates(store),
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider))),
        };
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
                vec![(
                    "key_file".to_owned(),
                    format!("does not fit cert_file (or is unsupported): {e}"),
                )]
            })?,
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = rustls::client::Resumption::default();
        Ok(UpstreamTlsClient {
            config: Arc::new(config),
            fingerprint: digest.finish(),
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read: {e}"))
}

fn ca_store(pem: &[u8]) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
        store
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    if store.is_empty() {
        return Err("no certificate in the file".into());
    }
    Ok(store)
}

/// The system's roots, loaded at most once per config load.
#[derive(Default)]
struct Roots(Option<Result<Arc<RootCertStore>, String>>);

impl Roots {
    fn system(&mut self) -> Result<Arc<RootCertStore>, String> {
        self.0
            .get_or_insert_with(|| {
                let found = rustls_native_certs::load_native_certs();
                let mut store = RootCertStore::empty();
                let (added, _) = store.add_parsable_certificates(found.certs);
                if added == 0 {
                    let why = found
                        .errors
                        .first()
                        .map_or_else(|| "none found".to_owned(), ToString::to_string);
                    return Err(format!(
                        "no system root certificate could be loaded ({why}); install ca-certificates or set ca_file"
                    ));
                }
                Ok(Arc::new(store))
            })
            .clone()
    }
}

/// Validates every upstream's endpoints' TLS settings and builds the
/// client configs (kept in the config for [`UpstreamTlsConfig::client`]);
/// returns `(key path, message)` for each error. Logs the
/// `insecure_skip_verify` warning (this runs at every load).
pub(crate) fn check(config: &Config) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    let mut roots = Roots::default();
    for (name, up) in &config.upstreams {
        let p = format!("upstreams.{name}");
        let mut any_tls = false;
        for (i, ep) in up.endpoints.iter().enumerate() {
            let Ok(addr) = parse_endpoint(ep) else {
                continue; // reported by validate
            };
            if addr.tls {
                any_tls = true;
                if up.tls.server_name.is_none() {
                    if let Err(m) = server_name(None, &addr.authority) {
                        errs.push((
                            format!("{p}.endpoints[{i}]"),
                            format!("{m}; set {p}.tls.server_name"),
                        ));
                    }
                }
            }
        }
        if !any_tls {
            if up.tls.is_set() {
                tracing::warn!(upstream = %name, "{p}.tls is set but no endpoint is https://: it has no effect");
            }
            continue;
        }
        match up.tls.build(&mut roots) {
            Ok(client) => {
                let _ = up.tls.built.set(Ok(client));
            }
            Err(e) => errs.extend(e.into_iter().map(|(k, m)| {
                let key = if k.is_empty() {
                    format!("{p}.tls")
                } else {
                    format!("{p}.tls.{k}")
                };
                (key, m)
            })),
        }
        if up.tls.insecure_skip_verify {
            tracing::warn!(upstream = %name, "{}", insecure_warning(name));
        }
    }
    errs
}

fn insecure_warning(name: &str) -> String {
    format!("upstreams.{name}.tls.insecure_skip_verify = true: the certificates of its https:// endpoints are NOT verified (anyone on the path can impersonate them); for tests only")
}

/// Warnings `gateway check` prints: every upstream that skips
/// certificate verification.
pub fn warnings(config: &Config) -> Vec<String> {
    config
        .upstreams
        .iter()
        .filter(|(_, u)| {
            u.tls.insecure_skip_verify
                && u.endpoints
                    .iter()
                    .any(|e| parse_endpoint(e).is_ok_and(|a| a.tls))
        })
        .map(|(n, _)| insecure_warning(n))
        .collect()
}

/// `insecure_skip_verify`: any certificate is accepted; the handshake's
/// signatures are still checked (the peer holds the key of the certificate
/// it sent, whatever that certificate is).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn endpoints_take_an_optional_scheme() {
        let a = parse_endpoint("https://api.internal:8443").unwrap();
        assert!(a.tls);
        assert_eq!(a.authority.as_str(), "api.internal:8443");
        let a = parse_endpoint("http://127.0.0.1:80").unwrap();
        assert!(!a.tls);
        let a = parse_endpoint("[::1]:80").unwrap();
        assert!(!a.tls);
        for bad in [
            "ftp://x:1",
            "https://x",
            "https://user@x:1",
            "localhost",
            "https://",
            "https://x:1/path",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_server_name_is_the_host_unless_configured() {
        let a: http::uri::Authority = "api.internal:443".parse().unwrap();
        assert_eq!(
            server_name(None, &a).unwrap(),
            ServerName::try_from("api.internal").unwrap()
        );
        assert_eq!(
            server_name(Some("other.example"), &a).unwrap(),
            ServerName::try_from("other.example").unwrap()
        );
        let v6: http::uri::Authority = "[::1]:443".parse().unwrap();
        assert!(matches!(
            server_name(None, &v6).unwrap(),
            ServerName::IpAddress(_)
        ));
    }

    fn tls_errors(toml: &str) -> Vec<String> {
        let c = Config::from_toml(toml).unwrap();
        check(&c)
            .into_iter()
            .map(|(k, m)| format!("{k}: {m}"))
            .collect()
    }

    #[test]
    fn bad_tls_settings_name_their_key() {
        let dir = std::env::temp_dir().join(format!("gw-uptls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not pem").unwrap();
        let errs = tls_errors(&format!(
            r#"
            [upstreams.a]
            endpoints = ["https://a.internal:443"]
            [upstreams.a.tls]
            ca_file = "{missing}"
            cert_file = "{junk}"
            server_name = "bad name!"
            [upstreams.b]
            endpoints = ["https://b.internal:443"]
            [upstreams.b.tls]
            ca_file = "{junk}"
            insecure_skip_verify = true
            "#,
            missing = dir.join("missing.pem").display(),
            junk = junk.display(),
        ));
        let has = |k: &str| errs.iter().any(|e| e.starts_with(k));
        assert!(has("upstreams.a.tls.ca_file: "), "{errs:?}");
        assert!(has("upstreams.a.tls.key_file: required"), "{errs:?}");
        assert!(has("upstreams.a.tls.server_name: "), "{errs:?}");
        assert!(has("upstreams.b.tls.ca_file: has no effect"), "{errs:?}");
        assert_eq!(errs.len(), 4, "{errs:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_valid_config_is_built_once_and_kept() {
        let c = Config::from_toml(
            r#"
            [upstreams.a]
            endpoints = ["https://a.internal:443", "127.0.0.1:80"]
            [upstreams.a.tls]
            insecure_skip_verify = true
            "#,
        )
        .unwrap();
        assert!(check(&c).is_empty());
        let tls = &c.upstreams["a"].tls;
        let one = tls.client().unwrap();
        let two = tls.client().unwrap();
        assert!(Arc::ptr_eq(&one.config, &two.config));
        assert_eq!(one.config.alpn_protocols, [b"http/1.1".to_vec()]);
        assert_eq!(warnings(&c).len(), 1);
        assert!(warnings(&c)[0].contains("NOT verified"));
    }
}
