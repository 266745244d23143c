//! The one HTTP client of the gateway's cold paths: JWKS fetches
//! (`middleware/auth/keys.rs`) and OTLP trace exports (`telemetry/trace.rs`).
//!
//! Both are rare requests to a few hosts (a fetch every few minutes, an
//! export every few seconds) whose answers the gateway must be able to trust,
//! so they share one client instead of each carrying its own: hyper's pooled
//! client ([`hyper_util::client::legacy::Client`]) over a rustls connector
//! ([`hyper_rustls`], ring provider, ALPN `h2` and `http/1.1`), trusting the
//! system roots (`rustls-native-certs`) plus an optional CA bundle
//! (`ca_file`). The hot path (proxying) does not use it.
//!
//! It is bounded in every way a misbehaving server could use: a connect
//! timeout, a total timeout (connect, TLS handshake, request, whole answer),
//! and a cap on the answer's body that counts bytes. Redirects are never
//! followed: a `3xx` is returned as it is, so a key or trace endpoint cannot
//! be moved elsewhere by whoever answers it.
//!
//! `https://` is required for remote hosts; `http://` is accepted only for a
//! loopback host (a sidecar or collector beside the gateway), where there is
//! no network path to protect. [`check_url`] says so at config time (with the
//! key path added by the caller) and [`ColdClient::send`] checks again on
//! every request.
//!
//! A client is built once per config, never per request. Callers outside a
//! tokio runtime (the OpenTelemetry batch processor's own thread) run it on
//! a [`BackgroundRuntime`].

use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

/// Largest JWKS document read (1 MiB; real ones are a few KiB).
pub const MAX_JWKS_BODY: usize = 1 << 20;

/// Idle pooled connections are closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// Idle pooled connections kept per host (cold paths need one or two).
const POOL_MAX_IDLE: usize = 2;

/// Why `http://` is refused for a JWKS URL (appended to the refusal).
pub const JWKS_HTTPS_REASON: &str = "identity providers serve JWKS over https";

/// Why `http://` is refused for an OTLP endpoint (appended to the refusal).
pub const OTLP_HTTPS_REASON: &str = "a collector elsewhere is reached over https";

/// How one client is bounded and whom it trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// Bound of the TCP connect.
    pub connect_timeout: Duration,
    /// Bound of a whole request: connect, TLS handshake, send, whole answer.
    pub timeout: Duration,
    /// Most bytes of an answer's body read; a longer one is an error.
    pub max_body: usize,
    /// PEM CA bundle trusted besides the system roots.
    pub ca_file: Option<PathBuf>,
}

/// Why a request failed. Messages carry the whole cause chain (a TLS
/// verification failure says which), never a body or a header value.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL breaks the https-or-loopback rule, or is not a URL.
    #[error("{0}")]
    Url(String),
    /// Connecting, the TLS handshake or the exchange failed.
    #[error("{0}")]
    Send(String),
    /// The whole request took longer than the total timeout.
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    /// The answer's body is longer than the cap.
    #[error("the answer's body is larger than {0} bytes")]
    TooLarge(usize),
    /// The answer's body failed while being read.
    #[error("reading the answer's body: {0}")]
    Body(String),
}

/// The cold-path client (see the module docs). Cheap to clone: clones share
/// the connection pool.
#[derive(Clone)]
pub struct ColdClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    max_body: usize,
}

impl std::fmt::Debug for ColdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColdClient")
            .field("timeout", &self.timeout)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl ColdClient {
    /// Builds a client: reads the system roots and `ca_file`. Needs no
    /// runtime; requests must run inside one. The error is a message for
    /// the `ca_file` key.
    pub fn new(settings: &ClientSettings) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::debug!(error = %e, "a system root certificate could not be read");
        }
        let (_, ignored) = roots.add_parsable_certificates(native.certs);
        if ignored > 0 {
            tracing::debug!(ignored, "unusable system root certificates skipped");
        }
        if let Some(path) = &settings.ca_file {
            for cert in load_ca_file(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
            }
        }
        if roots.is_empty() {
            tracing::warn!("no trusted root certificate (none in the system store, no ca_file): every https request will fail");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(POOL_MAX_IDLE)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(https);
        Ok(Self {
            inner,
            timeout: settings.timeout,
            max_body: settings.max_body,
        })
    }

    /// Sends `req` and reads the whole answer, within the total timeout and
    /// the body cap. Any status is an answer (a `3xx` is not followed).
    pub async fn send(&self, req: Request<Bytes>) -> Result<Response<Bytes>, ClientError> {
        check_uri(req.uri(), "").map_err(ClientError::Url)?;
        let max = self.max_body;
        let exchange = async {
            let resp = self
                .inner
                .request(req.map(Full::new))
                .await
                .map_err(|e| ClientError::Send(describe(&e)))?;
            let declared = resp
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > max as u64) {
                return Err(ClientError::TooLarge(max));
            }
            let (head, body) = resp.into_parts();
            let body = Limited::new(body, max).collect().await.map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    ClientError::TooLarge(max)
                } else {
                    ClientError::Body(describe(e.as_ref()))
                }
            })?;
            Ok(Response::from_parts(head, body.to_bytes()))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?
    }

    /// `GET uri` (see [`ColdClient::send`]).
    pub async fn get(&self, uri: &Uri) -> Result<Response<Bytes>, ClientError> {
        let req = Request::get(uri.clone())
            .body(Bytes::new())
            .map_err(|e| ClientError::Url(e.to_string()))?;
        self.send(req).await
    }
}

/// Parses `url` and applies the rule: `https://host...`, or `http://` to a
/// loopback host only. `reason` ends the refusal of a remote `http://`
/// ([`JWKS_HTTPS_REASON`], [`OTLP_HTTPS_REASON`]). The message is for the
/// URL's key path.
pub fn check_url(url: &str, reason: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .trim()
        .parse()
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    check_uri(&uri, reason)?;
    Ok(uri)
}

fn check_uri(uri: &Uri, reason: &str) -> Result<(), String> {
    let Some(host) = uri.host().filter(|h| !h.is_empty()) else {
        return Err(format!("{uri:?} has no host"));
    };
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if is_loopback(host) => Ok(()),
        Some("http") => {
            let mut m = String::from("http:// is only allowed to a loopback address");
            if !reason.is_empty() {
                m.push_str("; ");
                m.push_str(reason);
            }
            Err(m)
        }
        _ => Err(format!("{uri} must be an https:// URL")),
    }
}

/// `localhost`, `127.0.0.0/8` or `::1` (IPv6 literals in brackets).
pub fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

/// The certificates of a PEM bundle; at least one, or a message naming the
/// file.
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: invalid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no CERTIFICATE block (a PEM CA bundle is expected)",
            path.display()
        ));
    }
    Ok(certs)
}

/// An error and its causes in one line; a certificate the roots do not
/// vouch for gets a hint about `ca_file`.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut bad_cert = false;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let msg = err.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        if let Some(rustls::Error::InvalidCertificate(c)) = rustls_error(err) {
            bad_cert = true;
            let msg = format!("invalid peer certificate: {c:?}");
            if !out.contains(&msg) {
                out.push_str(": ");
                out.push_str(&msg);
            }
        }
        cur = err.source();
    }
    if bad_cert {
        out.push_str(
            " (TLS verification failed: the server's certificate is not trusted by the system roots or ca_file, or does not name this host)",
        );
    }
    out
}

/// The rustls error inside `err`, through the `io::Error`s that wrap it
/// (tokio-rustls wraps it in one, hyper-rustls in another).
fn rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = err;
    for _ in 0..4 {
        if let Some(tls) = cur.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let inner = cur.downcast_ref::<std::io::Error>()?.get_ref()?;
        cur = inner;
    }
    None
}

/// A current-thread tokio runtime on a thread of its own, for a caller that
/// is not on a tokio runtime (the OpenTelemetry batch processor exports from
/// its own thread with a plain executor). Dropping it stops the thread.
#[derive(Debug)]
pub struct BackgroundRuntime {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl BackgroundRuntime {
    /// Starts the runtime on a thread named `name`.
    pub fn start(name: &str) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(Self {
            handle,
            _stop: stop,
        })
    }

    /// Runs `fut` on the runtime and waits for it from any executor; `None`
    /// when the runtime stopped first.
    pub async fn run<F>(&self, fut: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut).await.ok()
    }
}

#[cfg(test)]
mod tests;
