//! The HTTP client: hyper 1, HTTP/1.1, one keep-alive connection per simulated user,
//! `TCP_NODELAY`, reconnecting when the server closed the connection between requests.
//! Also the target URL, a per-user cookie jar and the WebSocket handshake.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderValue, COOKIE, SET_COOKIE};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Where the load goes: `http://host:port[/base]`.
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
}

impl Target {
    /// Parses a URL; only `http://` is supported.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            if url.starts_with("https://") {
                format!(
                    "{url:?}: https is not supported; the gateway is measured over plain HTTP/1.1"
                )
            } else {
                format!("{url:?}: expected http://HOST[:PORT][/PATH]")
            }
        })?;
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
            _ => (authority.to_owned(), 80),
        };
        let authority = HeaderValue::from_str(authority)
            .map_err(|_| format!("{url:?}: bad host {authority:?}"))?;
        Ok(Self {
            url: url.to_owned(),
            authority,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            base_path: path.trim_end_matches('/').to_owned(),
        })
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
    /// HTTP/1.1 protocol or I/O error.
    #[error("http error: {0}")]
    Http(#[from] hyper::Error),
    /// The response did not complete in time.
    #[error("timeout after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
}

type Sender = SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, ClientError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(ClientError::Connect)?;
    stream.set_nodelay(true).map_err(ClientError::Connect)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
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
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let mut sender = match self.sender.take() {
            Some(mut s) if !s.is_closed() => match s.ready().await {
                Ok(()) => s,
                Err(_) => connect(addr).await?,
            },
            _ => connect(addr).await?,
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
    if n >= MIB && n % MIB == 0 {
        format!("{} MiB", n / MIB)
    } else if n >= KIB && n % KIB == 0 {
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
    let mut sender = connect(addr).await?;
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
        assert!(Target::parse("https://x").unwrap_err().contains("https"));
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
