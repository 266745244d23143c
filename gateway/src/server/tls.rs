//! HTTPS termination on the proxy listener: the rustls config (certificates
//! by SNI, versions, ALPN, client certificates), the bounded handshake and
//! its failure reasons, and certificate reload (SIGHUP with the config, and
//! when the files change on disk).
//!
//! The current `rustls::ServerConfig` sits in an [`ArcSwap`]: each
//! handshake loads it once, so a reload applies to new handshakes and
//! never touches a connection in flight. A reload that fails (a file
//! unreadable, a key that does not match its certificate) is logged with
//! the file and counted; the previous certificates keep serving. Session
//! caches and ticket keys are kept across reloads, so resumption survives
//! a rotation.

use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::ProducesTickets;
use rustls::server::{ClientHello, ResolvesServerCert, StoresServerSessions, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{AlertDescription, Error as TlsError, PeerIncompatible, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::tls::{
    load_pair, load_roots, provider, ClientAuth, LoadedPair, TlsConfig, TlsVersion,
};
use crate::context::TlsInfo;

/// Why a handshake failed: the `reason` label of
/// `gateway_tls_handshake_failures_total`, a fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No protocol version in common (a TLS 1.2 client with `min_version = "1.3"`).
    ProtocolVersion,
    /// No cipher suite, key exchange group or signature scheme in common.
    NoSharedCipher,
    /// The client offered ALPN protocols, none of which is served.
    NoAlpn,
    /// The client's certificate failed verification.
    BadCertificate,
    /// mTLS required and the client sent no certificate.
    ClientCertificateRequired,
    /// The client aborted with an alert (often: it does not trust the
    /// gateway's certificate).
    ClientAlert,
    /// Not a TLS handshake (plaintext HTTP on the HTTPS port) or a
    /// malformed one.
    BadMessage,
    /// The handshake did not finish within `server.header_read_timeout`.
    Timeout,
    /// The client closed or reset the connection mid-handshake.
    Eof,
    /// Anything else.
    Other,
}

impl Failure {
    /// Every reason, in label order.
    pub const ALL: [Self; 10] = [
        Self::ProtocolVersion,
        Self::NoSharedCipher,
        Self::NoAlpn,
        Self::BadCertificate,
        Self::ClientCertificateRequired,
        Self::ClientAlert,
        Self::BadMessage,
        Self::Timeout,
        Self::Eof,
        Self::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProtocolVersion => "protocol_version",
            Self::NoSharedCipher => "no_shared_cipher",
            Self::NoAlpn => "no_alpn",
            Self::BadCertificate => "bad_certificate",
            Self::ClientCertificateRequired => "client_certificate_required",
            Self::ClientAlert => "client_alert",
            Self::BadMessage => "bad_message",
            Self::Timeout => "timeout",
            Self::Eof => "eof",
            Self::Other => "other",
        }
    }

    /// The reason of a failed handshake's error.
    pub fn of_io(e: &io::Error) -> Self {
        if let Some(t) = e.get_ref().and_then(|i| i.downcast_ref::<TlsError>()) {
            return Self::of_tls(t);
        }
        match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Self::Eof,
            io::ErrorKind::TimedOut => Self::Timeout,
            _ => Self::Other,
        }
    }

    /// The reason for a rustls error.
    pub fn of_tls(e: &TlsError) -> Self {
        match e {
            TlsError::PeerIncompatible(p) => match p {
                PeerIncompatible::Tls12NotOffered
                | PeerIncompatible::Tls12NotOfferedOrEnabled
                | PeerIncompatible::SupportedVersionsExtensionRequired
                | PeerIncompatible::ServerDoesNotSupportTls12Or13
                | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig => Self::ProtocolVersion,
                _ => Self::NoSharedCipher,
            },
            TlsError::NoApplicationProtocol => Self::NoAlpn,
            TlsError::NoCertificatesPresented => Self::ClientCertificateRequired,
            TlsError::InvalidCertificate(_) => Self::BadCertificate,
            TlsError::AlertReceived(AlertDescription::ProtocolVersion) => Self::ProtocolVersion,
            TlsError::AlertReceived(_) => Self::ClientAlert,
            TlsError::InvalidMessage(_)
            | TlsError::InappropriateMessage { .. }
            | TlsError::InappropriateHandshakeMessage { .. } => Self::BadMessage,
            _ => Self::Other,
        }
    }
}

/// Certificates by SNI: exact names first, then wildcards (`*.example.com`
/// covers one label), else the first pair.
#[derive(Debug)]
struct Resolver {
    pairs: Vec<LoadedPair>,
}

impl Resolver {
    fn pick(&self, sni: Option<&str>) -> Option<&LoadedPair> {
        if let Some(sni) = sni {
            let sni = sni.trim_end_matches('.').to_ascii_lowercase();
            if let Some(p) = self.pairs.iter().find(|p| p.names.contains(&sni)) {
                return Some(p);
            }
            if let Some((label, parent)) = sni.split_once('.') {
                if !label.is_empty() {
                    let found = self.pairs.iter().find(|p| {
                        p.names
                            .iter()
                            .any(|n| n.strip_prefix("*.").is_some_and(|w| w == parent))
                    });
                    if found.is_some() {
                        return found;
                    }
                }
            }
        }
        self.pairs.first()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name()).map(|p| p.key.clone())
    }
}

/// A TLS config that could not be built: which key, what.
#[derive(Debug, Clone)]
pub struct BuildError {
    /// Key path below `server.tls`.
    pub key: String,
    /// The message, naming the file.
    pub message: String,
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "server.tls.{}: {}", self.key, self.message)
    }
}

/// The proxy listener's TLS: the current config, counters, and what the
/// expiry gauge reads.
pub struct Tls {
    config: ArcSwap<ServerConfig>,
    /// (gauge name, notAfter) of each certificate being served.
    expiry: ArcSwap<Vec<(String, SystemTime)>>,
    sessions: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn ProducesTickets>,
    http2: bool,
    failures: [AtomicU64; Failure::ALL.len()],
    /// `[success, failure]`.
    reloads: [AtomicU64; 2],
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("http2", &self.http2)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads the certificates of `cfg`; ALPN offers `h2` only with `http2`.
    pub fn new(cfg: &TlsConfig, http2: bool) -> Result<Self, BuildError> {
        let ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| BuildError {
            key: "certificates".into(),
            message: format!("cannot create session ticket keys: {e}"),
        })?;
        let sessions: Arc<dyn StoresServerSessions> =
            rustls::server::ServerSessionMemoryCache::new(4096);
        let (config, expiry) = build(cfg, http2, &sessions, &ticketer)?;
        Ok(Self {
            config: ArcSwap::from_pointee(config),
            expiry: ArcSwap::from_pointee(expiry),
            sessions,
            ticketer,
            http2,
            failures: Default::default(),
            reloads: Default::default(),
        })
    }

    /// Re-reads every file of `cfg`; on success new handshakes use them,
    /// on failure the current ones keep serving (logged, counted).
    pub fn reload(&self, cfg: &TlsConfig, why: &str) -> Result<(), BuildError> {
        match build(cfg, self.http2, &self.sessions, &self.ticketer) {
            Ok((config, expiry)) => {
                let names: Vec<String> = expiry.iter().map(|(n, _)| n.clone()).collect();
                self.config.store(Arc::new(config));
                self.expiry.store(Arc::new(expiry));
                self.reloads[0].fetch_add(1, Ordering::Relaxed);
                tracing::info!(why, certificates = ?names, "TLS certificates reloaded");
                Ok(())
            }
            Err(e) => {
                self.reloads[1].fetch_add(1, Ordering::Relaxed);
                tracing::error!(why, error = %e, "TLS reload rejected; the previous certificates keep serving");
                Err(e)
            }
        }
    }

    /// Runs the handshake, bounded by `timeout`; a failure is counted.
    pub async fn accept<IO>(&self, io: IO, timeout: Duration) -> Option<(TlsStream<IO>, TlsInfo)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = TlsAcceptor::from(self.config.load_full());
        let failure = match tokio::time::timeout(timeout, acceptor.accept(io)).await {
            Ok(Ok(stream)) => {
                let (_, conn) = stream.get_ref();
                let info = TlsInfo {
                    version: match conn.protocol_version() {
                        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                        _ => "other",
                    },
                    alpn: match conn.alpn_protocol() {
                        Some(b"h2") => "h2",
                        Some(b"http/1.1") => "http/1.1",
                        _ => "",
                    },
                    client_certificate: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
                };
                return Some((stream, info));
            }
            Ok(Err(e)) => {
                let f = Failure::of_io(&e);
                tracing::debug!(reason = f.as_str(), error = %e, "TLS handshake failed");
                f
            }
            Err(_) => Failure::Timeout,
        };
        self.count(failure);
        None
    }

    fn count(&self, f: Failure) {
        if let Some(i) = Failure::ALL.iter().position(|x| *x == f) {
            self.failures[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Appends the TLS families (OpenMetrics text); the expiry gauge is
    /// computed now.
    pub fn write_metrics(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP gateway_tls_handshake_failures TLS handshakes that failed on the proxy listener, by reason");
        let _ = writeln!(out, "# TYPE gateway_tls_handshake_failures counter");
        for (f, n) in Failure::ALL.iter().zip(&self.failures) {
            let _ = writeln!(
                out,
                "gateway_tls_handshake_failures_total{{reason=\"{}\"}} {}",
                f.as_str(),
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP gateway_tls_reloads Certificate reloads (SIGHUP or files changed), by result (success, failure: the previous certificates keep serving)");
        let _ = writeln!(out, "# TYPE gateway_tls_reloads counter");
        for (r, n) in ["success", "failure"].iter().zip(&self.reloads) {
            let _ = writeln!(
                out,
                "gateway_tls_reloads_total{{result=\"{r}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let now = SystemTime::now();
        let samples: Vec<(String, f64)> = self
            .expiry
            .load()
            .iter()
            .map(|(name, not_after)| {
                let secs = match not_after.duration_since(now) {
                    Ok(d) => d.as_secs_f64(),
                    Err(e) => -e.duration().as_secs_f64(),
                };
                (
                    format!("name=\"{}\"", crate::telemetry::metrics::escape_label(name)),
                    secs.floor(),
                )
            })
            .collect();
        crate::telemetry::metrics::write_gauge_family(
            out,
            "gateway_tls_certificate_expiry_seconds",
            "Seconds until the served certificate's notAfter (negative once expired), by its first DNS name",
            &samples,
        );
    }
}

fn build(
    cfg: &TlsConfig,
    http2: bool,
    sessions: &Arc<dyn StoresServerSessions>,
    ticketer: &Arc<dyn ProducesTickets>,
) -> Result<(ServerConfig, Vec<(String, SystemTime)>), BuildError> {
    let provider = provider();
    let mut pairs = Vec::with_capacity(cfg.certificates.len());
    for (i, pair) in cfg.certificates.iter().enumerate() {
        let loaded = load_pair(pair, &provider).map_err(|e| BuildError {
            key: format!("certificates[{i}].{}", e.field),
            message: e.message,
        })?;
        pairs.push(loaded);
    }
    if pairs.is_empty() {
        return Err(BuildError {
            key: "certificates".into(),
            message: "no certificate configured".into(),
        });
    }
    let versions: &[&'static rustls::SupportedProtocolVersion] = match cfg.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let other = |message: String| BuildError {
        key: "min_version".into(),
        message,
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| other(e.to_string()))?;
    let builder = match (cfg.client_auth(), &cfg.client_ca_file) {
        (Some(auth), Some(ca)) => {
            let ca_err = |message: String| BuildError {
                key: "client_ca_file".into(),
                message,
            };
            let roots = load_roots(ca).map_err(ca_err)?;
            let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if auth == ClientAuth::Optional {
                v = v.allow_unauthenticated();
            }
            let v = v
                .build()
                .map_err(|e| ca_err(format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(v)
        }
        _ => builder.with_no_client_auth(),
    };
    let expiry = pairs
        .iter()
        .map(|p| (p.name.clone(), p.not_after))
        .collect();
    let mut config = builder.with_cert_resolver(Arc::new(Resolver { pairs }));
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    config.session_storage = sessions.clone();
    config.ticketer = ticketer.clone();
    Ok((config, expiry))
}

/// What identifies a file's content without reading it: device, inode,
/// mtime and size of what the path points to (symlinks followed, so a
/// Kubernetes Secret volume's `..data` swap shows), or nothing when absent.
type Fingerprint = Option<(u64, u64, Option<SystemTime>, u64)>;

fn fingerprints(files: &[PathBuf]) -> Vec<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .map(|m| (m.dev(), m.ino(), m.modified().ok(), m.len()))
        })
        .collect()
}

/// Polls the current config's TLS files every `watch_interval` and reloads
/// when any changed. `current` gives the config in force (it follows
/// SIGHUP reloads). Stops with `stop`.
pub fn spawn_watcher(
    tls: Arc<Tls>,
    current: impl Fn() -> Option<TlsConfig> + Send + 'static,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen: Option<(Vec<PathBuf>, Vec<Fingerprint>)> = None;
        loop {
            let Some(cfg) = current() else {
                // TLS was removed by a reload: nothing to watch until restart.
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(5)) => continue,
                }
            };
            let files = cfg.files();
            let (tls2, files2) = (tls.clone(), files.clone());
            let previous = seen.take();
            let task = tokio::task::spawn_blocking(move || {
                let now = fingerprints(&files2);
                let changed = match &previous {
                    Some((f, p)) => *f == files2 && *p != now,
                    // First look, or the set of files changed (a SIGHUP
                    // reload already read them): remember only.
                    None => false,
                };
                if changed {
                    let _ = tls2.reload(&cfg, "certificate files changed");
                }
                now
            });
            match task.await {
                Ok(now) => seen = Some((files, now)),
                Err(e) => tracing::error!(error = %e, "certificate watcher failed"),
            }
            let interval = current().map_or(Duration::from_secs(5), |c| c.watch_interval);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> LoadedPair {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap()
        .self_signed(&key)
        .unwrap();
        let dir = std::env::temp_dir().join(format!(
            "gw-tls-res-{}-{}",
            std::process::id(),
            names[0].replace('*', "w")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let p = crate::config::tls::CertificatePair {
            cert_file: dir.join("c.pem"),
            key_file: dir.join("k.pem"),
        };
        std::fs::write(&p.cert_file, cert.pem()).unwrap();
        std::fs::write(&p.key_file, key.serialize_pem()).unwrap();
        load_pair(&p, &provider()).unwrap()
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first() {
        let r = Resolver {
            pairs: vec![
                pair(&["default.test"]),
                pair(&["*.example.com"]),
                pair(&["api.example.com"]),
            ],
        };
        let name = |sni| r.pick(sni).unwrap().name.clone();
        assert_eq!(name(Some("api.example.com")), "api.example.com");
        assert_eq!(name(Some("API.Example.com.")), "api.example.com");
        assert_eq!(name(Some("www.example.com")), "*.example.com");
        assert_eq!(name(Some("a.b.example.com")), "default.test");
        assert_eq!(name(Some("example.com")), "default.test");
        assert_eq!(name(None), "default.test");
    }

    #[test]
    fn failure_reasons_from_rustls_errors() {
        use rustls::CertificateError;
        let io = |e: TlsError| io::Error::new(io::ErrorKind::InvalidData, e);
        let cases = [
            (
                io(PeerIncompatible::Tls12NotOffered.into()),
                Failure::ProtocolVersion,
            ),
            (
                io(PeerIncompatible::NoCipherSuitesInCommon.into()),
                Failure::NoSharedCipher,
            ),
            (io(TlsError::NoApplicationProtocol), Failure::NoAlpn),
            (
                io(TlsError::NoCertificatesPresented),
                Failure::ClientCertificateRequired,
            ),
            (
                io(TlsError::InvalidCertificate(
                    CertificateError::UnknownIssuer,
                )),
                Failure::BadCertificate,
            ),
            (
                io(TlsError::AlertReceived(AlertDescription::UnknownCA)),
                Failure::ClientAlert,
            ),
            (
                io(TlsError::InvalidMessage(
                    rustls::InvalidMessage::InvalidContentType,
                )),
                Failure::BadMessage,
            ),
            (io::Error::from(io::ErrorKind::UnexpectedEof), Failure::Eof),
            (io::Error::other("x"), Failure::Other),
        ];
        for (e, want) in cases {
            assert_eq!(Failure::of_io(&e), want, "{e}");
        }
    }
}
