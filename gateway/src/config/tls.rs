//! `[server.tls]` (HTTPS termination) and a route's `hsts`: serde types,
//! and the reading and checking of certificate files that start-up, reload
//! and `gateway check` share.
//!
//! ```toml
//! [server.tls]
//! certificates = [
//!   { cert_file = "certs/api.pem", key_file = "certs/api.key" },
//!   { cert_file = "certs/admin.pem", key_file = "certs/admin.key" },
//! ]
//! min_version = "1.2"            # or "1.3"
//! client_ca_file = "certs/ca.pem" # mTLS (optional)
//! client_auth = "required"        # or "optional"; "required" when a CA is set
//! redirect_listen = "0.0.0.0:80"  # plaintext listener answering 308 to https
//! watch_interval = "5s"           # certificate files polled for changes
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// A certificate file or key larger than this is refused (a chain is a few
/// KiB; a CA bundle a few hundred).
pub const MAX_PEM_FILE: u64 = 4 << 20;

/// `gateway check` warns when a certificate expires sooner than this.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// `[server.tls]`: the proxy listener speaks HTTPS.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chains and keys; chosen by SNI from each certificate's
    /// DNS names (wildcards match one label); the first one is served when
    /// the client sends no SNI or a name none covers.
    pub certificates: Vec<CertificatePair>,
    /// Oldest protocol version accepted.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// CA bundle (PEM) client certificates are verified against (mTLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Whether a client certificate is required (default when
    /// `client_ca_file` is set) or only verified when presented.
    #[serde(default)]
    pub client_auth: Option<ClientAuth>,
    /// A plaintext listener that answers every request with a 308 to the
    /// same host and path over HTTPS.
    #[serde(default)]
    pub redirect_listen: Option<String>,
    /// The port redirects point at; default the proxy listener's own
    /// (set it when a load balancer or Service maps 443 to another port).
    #[serde(default)]
    pub redirect_port: Option<u16>,
    /// How often certificate, key and CA files are checked for changes
    /// (inode, mtime, size, following symlinks).
    #[serde(default = "default_watch_interval", with = "humantime_serde")]
    pub watch_interval: Duration,
}

fn default_watch_interval() -> Duration {
    Duration::from_secs(5)
}

/// One certificate chain and its private key (PEM files).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CertificatePair {
    /// The chain, leaf first (PEM).
    pub cert_file: PathBuf,
    /// The leaf's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// `min_version`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

/// `client_auth`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// The handshake fails without a certificate the CA signed.
    Required,
    /// A certificate is verified when presented; none is accepted.
    Optional,
}

/// A route's `hsts = { max_age = "365d", include_subdomains = true }`:
/// `Strict-Transport-Security` on its responses sent over TLS.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HstsConfig {
    /// How long browsers remember to use HTTPS only.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Covers every subdomain too.
    #[serde(default)]
    pub include_subdomains: bool,
    /// Asks to be put on the browsers' preload list (needs
    /// `include_subdomains` and a `max_age` of a year or more).
    #[serde(default)]
    pub preload: bool,
}

impl HstsConfig {
    /// The header value, e.g. `max-age=31536000; includeSubDomains`.
    pub fn header_value(&self) -> http::HeaderValue {
        let mut v = format!("max-age={}", self.max_age.as_secs());
        if self.include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if self.preload {
            v.push_str("; preload");
        }
        // Digits and fixed ASCII only.
        http::HeaderValue::from_str(&v)
            .unwrap_or_else(|_| http::HeaderValue::from_static("max-age=0"))
    }

    /// Problems as (key under the route's `hsts`, message).
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.preload && !self.include_subdomains {
            out.push((
                "preload",
                "needs include_subdomains = true (the preload list's rule)".to_owned(),
            ));
        }
        if self.preload && self.max_age < Duration::from_secs(365 * 24 * 3600) {
            out.push((
                "preload",
                "needs a max_age of at least 365d (the preload list's rule)".to_owned(),
            ));
        }
        out
    }
}

impl TlsConfig {
    /// Makes relative file paths relative to `base` (the config's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        let files = self
            .certificates
            .iter_mut()
            .flat_map(|p| [&mut p.cert_file, &mut p.key_file])
            .chain(self.client_ca_file.as_mut());
        for p in files {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// The effective client-certificate policy.
    pub fn client_auth(&self) -> Option<ClientAuth> {
        self.client_ca_file
            .as_ref()
            .map(|_| self.client_auth.unwrap_or(ClientAuth::Required))
    }

    /// Every file read for TLS: what the watcher polls.
    pub fn files(&self) -> Vec<PathBuf> {
        self.certificates
            .iter()
            .flat_map(|p| [p.cert_file.clone(), p.key_file.clone()])
            .chain(self.client_ca_file.clone())
            .collect()
    }

    /// Every problem as (key path below `server.tls`, message): syntax of
    /// the settings, then each pair read and checked (chain parses, key
    /// matches, not expired at `now`) and the CA bundle read.
    pub fn check(&self, now: SystemTime) -> Vec<(String, String)> {
        let mut errs = Vec::new();
        if self.certificates.is_empty() {
            errs.push((
                "certificates".to_owned(),
                "needs at least one { cert_file, key_file }".to_owned(),
            ));
        }
        if self.watch_interval < Duration::from_millis(100) {
            errs.push((
                "watch_interval".to_owned(),
                "must be at least 100ms".to_owned(),
            ));
        }
        if self.redirect_port == Some(0) {
            errs.push((
                "redirect_port".to_owned(),
                "must be a port number (1-65535)".to_owned(),
            ));
        }
        if self.client_auth.is_some() && self.client_ca_file.is_none() {
            errs.push((
                "client_auth".to_owned(),
                "needs client_ca_file (the CA client certificates are verified against)".to_owned(),
            ));
        }
        let provider = provider();
        for (i, pair) in self.certificates.iter().enumerate() {
            match load_pair(pair, &provider) {
                Ok(p) => {
                    if p.not_after <= now {
                        errs.push((
                            format!("certificates[{i}].cert_file"),
                            format!(
                                "certificate {} ({}) expired {} ago",
                                pair.cert_file.display(),
                                p.name,
                                humantime_serde::re::humantime::format_duration(whole_secs(
                                    now.duration_since(p.not_after).unwrap_or_default()
                                ))
                            ),
                        ));
                    }
                }
                Err(e) => errs.push((format!("certificates[{i}].{}", e.field), e.message)),
            }
        }
        if let Some(ca) = &self.client_ca_file {
            if let Err(m) = load_roots(ca) {
                errs.push(("client_ca_file".to_owned(), m));
            }
        }
        errs
    }

    /// Warnings for `gateway check`: certificates expiring within
    /// [`EXPIRY_WARNING`] of `now`.
    pub fn warnings(&self, now: SystemTime) -> Vec<String> {
        let provider = provider();
        let mut out = Vec::new();
        for (i, pair) in self.certificates.iter().enumerate() {
            let Ok(p) = load_pair(pair, &provider) else {
                continue;
            };
            if let Ok(left) = p.not_after.duration_since(now) {
                if left < EXPIRY_WARNING {
                    out.push(format!(
                        "server.tls.certificates[{i}].cert_file: certificate {} ({}) expires in {}",
                        pair.cert_file.display(),
                        p.name,
                        humantime_serde::re::humantime::format_duration(whole_secs(left))
                    ));
                }
            }
        }
        out
    }
}

fn whole_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

/// The crypto provider every TLS config of the gateway uses: ring (builds
/// with a C compiler alone, no cmake or NASM as aws-lc-rs needs).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate pair read and checked.
#[derive(Debug, Clone)]
pub struct LoadedPair {
    /// Chain and signing key, ready for rustls.
    pub key: Arc<CertifiedKey>,
    /// The leaf's DNS names (subject alternative names), lowercase.
    pub names: Vec<String>,
    /// The leaf's first DNS name, else the cert file's name: the
    /// `name` label of the expiry gauge.
    pub name: String,
    /// The leaf's notAfter.
    pub not_after: SystemTime,
}

/// Why a pair cannot be used: which file (`cert_file` or `key_file`), what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairError {
    /// `cert_file` or `key_file`.
    pub field: &'static str,
    /// The message, naming the file.
    pub message: String,
}

impl std::fmt::Display for PairError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.len() > MAX_PEM_FILE {
        return Err(format!(
            "{} is {} bytes, more than the {MAX_PEM_FILE} a PEM file may have",
            path.display(),
            meta.len()
        ));
    }
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Reads the certificates of a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate (\"-----BEGIN CERTIFICATE-----\") in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// Reads a CA bundle into a root store.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for (i, c) in load_certs(path)?.into_iter().enumerate() {
        roots
            .add(c)
            .map_err(|e| format!("{}: certificate {i}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// Reads a pair: every certificate of the chain parses as X.509, the key
/// parses and matches the leaf's public key.
pub fn load_pair(
    pair: &CertificatePair,
    provider: &CryptoProvider,
) -> Result<LoadedPair, PairError> {
    let cert_err = |message: String| PairError {
        field: "cert_file",
        message,
    };
    let key_err = |message: String| PairError {
        field: "key_file",
        message,
    };
    let chain = load_certs(&pair.cert_file).map_err(cert_err)?;
    let mut leaf = None;
    for (i, der) in chain.iter().enumerate() {
        let parsed = <x509_cert::Certificate as x509_cert::der::Decode>::from_der(der.as_ref())
            .map_err(|e| {
                cert_err(format!(
                    "{}: certificate {i} of the chain is not valid X.509: {e}",
                    pair.cert_file.display()
                ))
            })?;
        if i == 0 {
            leaf = Some(parsed);
        }
    }
    let Some(leaf) = leaf else {
        return Err(cert_err(format!(
            "{}: empty chain",
            pair.cert_file.display()
        )));
    };
    let pem = read_pem(&pair.key_file).map_err(key_err)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        key_err(format!(
            "{}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it: {e}",
            pair.key_file.display()
        ))
    })?;
    let signing = provider.key_provider.load_private_key(key).map_err(|e| {
        key_err(format!(
            "{}: unusable private key: {e}",
            pair.key_file.display()
        ))
    })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        key_err(format!(
            "{}: private key does not match the certificate in {} ({e})",
            pair.key_file.display(),
            pair.cert_file.display()
        ))
    })?;
    let names = dns_names(&leaf);
    let name = names.first().cloned().unwrap_or_else(|| {
        pair.cert_file
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    });
    Ok(LoadedPair {
        key: Arc::new(certified),
        names,
        name,
        not_after: leaf.tbs_certificate.validity.not_after.to_system_time(),
    })
}

/// The DNS names of a certificate's subject alternative names, lowercase.
fn dns_names(cert: &x509_cert::Certificate) -> Vec<String> {
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;
    match cert.tbs_certificate.get::<SubjectAltName>() {
        Ok(Some((_, san))) => san
            .0
            .iter()
            .filter_map(|n| match n {
                GeneralName::DnsName(d) => Some(d.as_str().to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsts_header_values() {
        let h = HstsConfig {
            max_age: Duration::from_secs(365 * 24 * 3600),
            include_subdomains: true,
            preload: true,
        };
        assert_eq!(
            h.header_value(),
            "max-age=31536000; includeSubDomains; preload"
        );
        assert!(h.check().is_empty());
        let h = HstsConfig {
            max_age: Duration::from_secs(60),
            include_subdomains: false,
            preload: true,
        };
        assert_eq!(h.header_value(), "max-age=60; preload");
        assert_eq!(h.check().len(), 2);
    }

    #[test]
    fn tls_settings_parse() {
        let t: TlsConfig = toml::from_str(
            "certificates = [{ cert_file = \"a.pem\", key_file = \"a.key\" }]\nmin_version = \"1.3\"\nclient_ca_file = \"ca.pem\"\nclient_auth = \"optional\"\nwatch_interval = \"1s\"\n",
        )
        .unwrap();
        assert_eq!(t.min_version, TlsVersion::Tls13);
        assert_eq!(t.client_auth(), Some(ClientAuth::Optional));
        assert_eq!(t.watch_interval, Duration::from_secs(1));
        let err = toml::from_str::<TlsConfig>("certificates = []\nmin_version = \"1.1\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("1.1"), "{err}");
    }

    fn pair(
        dir: &Path,
        tag: &str,
        names: &[&str],
        key: Option<&rcgen::KeyPair>,
    ) -> CertificatePair {
        let own = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let cert = params.self_signed(&own).unwrap();
        let cert_file = dir.join(format!("{tag}.pem"));
        let key_file = dir.join(format!("{tag}.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.unwrap_or(&own).serialize_pem()).unwrap();
        CertificatePair {
            cert_file,
            key_file,
        }
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gw-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_pair_loads_with_its_names_and_a_mismatched_key_is_named() {
        let dir = tmp("pairs");
        let p = pair(&dir, "a", &["api.example.com", "*.example.com"], None);
        let loaded = load_pair(&p, &provider()).unwrap();
        assert_eq!(loaded.names, ["api.example.com", "*.example.com"]);
        assert_eq!(loaded.name, "api.example.com");
        let other = rcgen::KeyPair::generate().unwrap();
        let bad = pair(&dir, "b", &["b.example.com"], Some(&other));
        let e = load_pair(&bad, &provider()).unwrap_err();
        assert_eq!(e.field, "key_file");
        assert!(e.message.contains("does not match"), "{e}");
        assert!(e.message.contains("b.key"), "{e}");
        let cfg = TlsConfig {
            certificates: vec![p, bad],
            min_version: TlsVersion::Tls12,
            client_ca_file: None,
            client_auth: None,
            redirect_listen: None,
            redirect_port: None,
            watch_interval: Duration::from_secs(5),
        };
        let errs = cfg.check(SystemTime::now());
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].0, "certificates[1].key_file");
        std::fs::write(&cfg.certificates[0].cert_file, "garbage").unwrap();
        let errs = cfg.check(SystemTime::now());
        assert_eq!(errs[0].0, "certificates[0].cert_file", "{errs:?}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
