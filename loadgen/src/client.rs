//! The HTTP client: hyper 1, HTTP/1.1, one keep-alive connection per simulated user,
//! `TCP_NODELAY`, reconnecting when the server closed the connection between requests.
//! Also the target URL, a per-user cookie jar and the WebSocket handshake.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderValue, COOKIE, SET_COOKIE};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

/// How to speak TLS to an `https://` target: the connector (roots, ALPN
/// `http/1.1`) and the name verified and sent as SNI.
#[derive(Clone)]
pub struct Tls {
    /// Why there is no connector (no system roots and no `--cacert`): each
    /// connection fails with it, so a scenario still parses on such a host.
    connector: Result<tokio_rustls::TlsConnector, String>,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish()
    }
}

/// Certificate verification of `https://` targets.
#[derive(Debug, Clone, Default)]
pub enum Verify {
    /// The system's roots (`/etc/ssl/certs`).
    #[default]
    SystemRoots,
    /// The certificates of this PEM bundle (a private CA), instead of the system's.
    CaFile(std::path::PathBuf),
    /// No verification at all (`--insecure`): for a test target only.
    Insecure,
}

/// Accepts any certificate: `--insecure`, never the default.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl Tls {
    /// The client configuration for `host`, built once per run.
    pub fn new(host: &str, verify: &Verify) -> Result<Self, String> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| format!("{host:?} is not a valid TLS server name"))?;
        let connector = match Self::config(verify) {
            Ok(c) => Ok(tokio_rustls::TlsConnector::from(Arc::new(c))),
            // An unreadable --cacert is the user's error now; missing system
            // roots only matter once a connection is made.
            Err(e) if matches!(verify, Verify::SystemRoots) => Err(e),
            Err(e) => return Err(e),
        };
        Ok(Self { connector, name })
    }

    fn config(verify: &Verify) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let mut config = match verify {
            Verify::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                .with_no_client_auth(),
            Verify::SystemRoots | Verify::CaFile(_) => {
                let mut roots = rustls::RootCertStore::empty();
                if let Verify::CaFile(path) = verify {
                    add_pem(&mut roots, path)?;
                } else {
                    let found = rustls_native_certs::load_native_certs();
                    let (added, _) = roots.add_parsable_certificates(found.certs);
                    if added == 0 {
                        return Err(
                            "no system root certificates found (install ca-certificates, or give --cacert FILE)"
                                .into(),
                        );
                    }
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

fn add_pem(roots: &mut rustls::RootCertStore, path: &Path) -> Result<(), String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("--cacert {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--cacert {}: {e}", path.display()))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("--cacert {}: no certificate in it", path.display()));
    }
    Ok(())
}

/// Where the load goes: `http://host:port[/base]` or `https://...`.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    /// `host:port` for the `Host` header.
    pub authority: HeaderValue,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path prefix put before every request path (no trailing slash).
    pub base_path: String,
    /// TLS, for an `https://` target.
    pub tls: Option<Arc<Tls>>,
}

impl Target {
    /// Parses a URL: `http://` or `https://` (verified against the system's roots;
    /// see [`Target::verify`]).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (rest, https) = if let Some(r) = url.strip_prefix("http://") {
            (r, false)
        } else if let Some(r) = url.strip_prefix("https://") {
            (r, true)
        } else {
            return Err(format!("{url:?}: expected http(s)://HOST[:PORT][/PATH]"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
                h.to_owned(),
                p.parse::<u16>()
                    .map_err(|_| format!("{url:?}: bad port {p:?}"))?,
            ),
            _ => (authority.to_owned(), if https { 443 } else { 80 }),
        };
        let authority = HeaderValue::from_str(authority)
            .map_err(|_| format!("{url:?}: bad host {authority:?}"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls = if https {
            Some(Arc::new(Tls::new(&host, &Verify::SystemRoots)?))
        } else {
            None
        };
        Ok(Self {
            url: url.to_owned(),
            authority,
            host,
            port,
            base_path: path.trim_end_matches('/').to_owned(),
            tls,
        })
    }

    /// How an `https://` target's certificate is verified (`--cacert`, `--insecure`);
    /// nothing changes for `http://`.
    pub fn verify(mut self, verify: &Verify) -> Result<Self, String> {
        if self.tls.is_some() {
            self.tls = Some(Arc::new(Tls::new(&self.host, verify)?));
        }
        Ok(self)
    }

    /// Resolves the host once, at the start of a run.
    pub fn resolve(&self) -> Result<SocketAddr, String> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("{} resolves to no address", self.host))
    }
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TCP connect failed.
    #[error("connection error: {0}")]
    Connect(std::io::Error),
    /// The TLS handshake failed (certificate not trusted, no shared version...).
    #[error("TLS handshake error: {0}")]
    Tls(std::io::Error),
    /// HTTP/1.1 protocol or I/O error.
    #[error("http error: {0}")]
    Http(#[from] hyper::Error),
    /// The response did not complete in time.
    #[error("timeout after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
}

type Sender = SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr, tls: Option<&Tls>) -> Result<Sender, ClientError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(ClientError::Connect)?;
    stream.set_nodelay(true).map_err(ClientError::Connect)?;
    let Some(tls) = tls else {
        return handshake(stream).await;
    };
    let connector = tls
        .connector
        .as_ref()
        .map_err(|e| ClientError::Tls(std::io::Error::other(e.clone())))?;
    let stream = connector
        .connect(tls.name.clone(), stream)
        .await
        .map_err(ClientError::Tls)?;
    handshake(stream).await
}

async fn handshake<IO>(io: IO) -> Result<Sender, ClientError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        // The connection ends when the server closes it or the sender is dropped; either
        // way the next request reconnects, and errors surface on that request.
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

/// One simulated user's connection.
#[derive(Debug, Default)]
pub struct Conn {
    sender: Option<Sender>,
}

impl Conn {
    /// Sends `req` on the kept connection, opening one if needed. A connection the server
    /// closed while idle is replaced before the request is written, never after.
    pub async fn send(
        &mut self,
        addr: SocketAddr,
        tls: Option<&Tls>,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let mut sender = match self.sender.take() {
            Some(mut s) if !s.is_closed() => match s.ready().await {
                Ok(()) => s,
                Err(_) => connect(addr, tls).await?,
            },
            _ => connect(addr, tls).await?,
        };
        sender.ready().await?;
        let res = sender.send_request(req).await;
        self.sender = Some(sender);
        Ok(res?)
    }

    /// Drops the connection.
    pub fn close(&mut self) {
        self.sender = None;
    }
}

/// Default of the most response-body bytes kept for checks and extraction
/// (`--max-body-size`, a request's `max_body_size`): 4 MiB.
pub const DEFAULT_MAX_BODY: u64 = 4 * 1024 * 1024;

/// A byte count in words: `4 MiB`, `64 KiB`, `100 B`.
pub fn format_size(n: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;
    if n >= MIB && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else if n >= KIB && n.is_multiple_of(KIB) {
        format!("{} KiB", n / KIB)
    } else {
        format!("{n} B")
    }
}

/// What [`read_body`] read.
#[derive(Debug, Default)]
pub struct ReadBody {
    /// Body bytes received.
    pub bytes: u64,
    /// The kept bytes (empty unless asked to keep).
    pub kept: Vec<u8>,
    /// The body was longer than the bytes one may keep: reading stopped there, the rest
    /// was never read, and the connection must be closed.
    pub over_limit: bool,
}

/// Reads a body to its end: the byte count, and the bytes when `keep`. A kept body stops
/// at `max_keep` bytes: past it reading ends with `over_limit` (an endless body never
/// grows memory); a body that is only counted is read to its end (its memory is one
/// frame at a time, and the request's timeout bounds its time).
pub async fn read_body(body: Incoming, keep: bool, max_keep: u64) -> Result<ReadBody, ClientError> {
    let mut body = body;
    let mut out = ReadBody::default();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            let len = data.len() as u64;
            out.bytes = out.bytes.saturating_add(len);
            if keep {
                if out.bytes > max_keep {
                    out.over_limit = true;
                    return Ok(out);
                }
                out.kept.extend_from_slice(&data);
            }
        }
    }
    Ok(out)
}

/// Sends a WebSocket handshake on a fresh connection: `Ok(status)`; on 101 the upgraded
/// connection is dropped at once (a client that disconnects).
pub async fn websocket_handshake(
    addr: SocketAddr,
    tls: Option<&Tls>,
    mut req: Request<Full<Bytes>>,
) -> Result<u16, ClientError> {
    let key = {
        let mut raw = [0u8; 16];
        raw.iter_mut().for_each(|b| *b = fastrand::u8(..));
        base64::engine::general_purpose::STANDARD.encode(raw)
    };
    let h = req.headers_mut();
    h.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("upgrade"),
    );
    h.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert("sec-websocket-version", HeaderValue::from_static("13"));
    if let Ok(v) = HeaderValue::from_str(&key) {
        h.insert("sec-websocket-key", v);
    }
    let mut sender = connect(addr, tls).await?;
    sender.ready().await?;
    let mut res = sender.send_request(req).await?;
    let status = res.status().as_u16();
    if status == 101 {
        if let Ok(upgraded) = hyper::upgrade::on(&mut res).await {
            drop(upgraded);
        }
    }
    Ok(status)
}

/// A user's cookies: names and values from `Set-Cookie`, sent back on every request.
#[derive(Debug, Default, Clone)]
pub struct CookieJar {
    cookies: Vec<(String, String)>,
}

/// Most cookies a jar keeps.
const MAX_COOKIES: usize = 64;

impl CookieJar {
    /// Takes the `Set-Cookie` headers of a response (a `Max-Age=0` or empty value removes).
    pub fn store(&mut self, headers: &http::HeaderMap) {
        for v in headers.get_all(SET_COOKIE) {
            let Ok(v) = v.to_str() else { continue };
            let mut parts = v.split(';');
            let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
                continue;
            };
            let (name, value) = (name.trim(), value.trim());
            let expired = parts.any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
            self.cookies.retain(|(n, _)| n != name);
            if !expired && !value.is_empty() && self.cookies.len() < MAX_COOKIES {
                self.cookies.push((name.to_owned(), value.to_owned()));
            }
        }
    }

    /// Adds the `Cookie` header when there are cookies.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        if self.cookies.is_empty() {
            return;
        }
        let joined = self
            .cookies
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        if let Ok(v) = HeaderValue::from_str(&joined) {
            headers.insert(COOKIE, v);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn targets_parse() {
        let t = Target::parse("http://127.0.0.1:8080/base/").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 8080));
        assert_eq!(t.base_path, "/base");
        assert_eq!(Target::parse("http://example").unwrap().port, 80);
        let t = Target::parse("https://localhost/").unwrap();
        assert_eq!(t.port, 443);
        assert!(t.tls.is_some());
        assert!(Target::parse("http://x").unwrap().tls.is_none());
        assert!(Target::parse("ftp://x").is_err());
        assert!(Target::parse("http://x:abc").is_err());
    }

    #[test]
    fn cookies_round_trip() {
        let mut jar = CookieJar::default();
        let mut h = http::HeaderMap::new();
        h.append(SET_COOKIE, HeaderValue::from_static("sid=abc; Path=/"));
        h.append(SET_COOKIE, HeaderValue::from_static("x=1"));
        jar.store(&h);
        let mut out = http::HeaderMap::new();
        jar.apply(&mut out);
        assert_eq!(out[COOKIE], "sid=abc; x=1");
        let mut h = http::HeaderMap::new();
        h.append(SET_COOKIE, HeaderValue::from_static("sid=; Max-Age=0"));
        jar.store(&h);
        let mut out = http::HeaderMap::new();
        jar.apply(&mut out);
        assert_eq!(out[COOKIE], "x=1");
    }
}
