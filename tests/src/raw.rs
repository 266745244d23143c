//! Raw-socket peers for adversarial tests: an upstream that records the
//! exact bytes it receives and answers from a script (so it can misbehave
//! on cue: late bytes, short bodies, stalls, bad framing), an upstream that
//! resolves paths like common web frameworks do, and a raw client. The
//! scripted upstream also speaks TLS ([`RawUpstream::start_tls`]): it then
//! records the bytes after decryption, and the SNI of each connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// The head exactly as received, request line to the blank line included.
    pub head: Vec<u8>,
    /// The body bytes as received (chunk framing included when chunked).
    pub body: Vec<u8>,
    /// Request method.
    pub method: String,
    /// Request target, verbatim.
    pub target: String,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// Which connection (0-based, in accept order) carried it.
    pub conn: usize,
    /// Its index on that connection.
    pub index: usize,
}

impl RawRequest {
    /// Values of every header named `name` (case-insensitive), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of `name`, if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }

    /// The head as text (lossy).
    pub fn head_text(&self) -> String {
        String::from_utf8_lossy(&self.head).into_owned()
    }
}

/// What the scripted upstream does next on a connection.
#[derive(Debug, Clone)]
pub enum Step {
    /// Write these bytes.
    Write(Vec<u8>),
    /// Sleep.
    Sleep(Duration),
    /// Close the connection (after what was written).
    Close,
    /// Never answer: keep the connection open and read nothing more until
    /// the peer closes it.
    Hang,
    /// TLS only: send a TLS 1.3 `KeyUpdate` (a post-handshake message that
    /// carries no application data, like a late session ticket).
    KeyUpdate,
}

impl Step {
    /// `Write` from text.
    pub fn text(s: &str) -> Self {
        Self::Write(s.as_bytes().to_vec())
    }
}

/// A script: given the request (with its connection and index), the steps
/// to answer it. After the steps the connection reads the next request
/// unless a step closed or hung it.
pub type Script = Arc<dyn Fn(&RawRequest) -> Vec<Step> + Send + Sync>;

/// A raw-socket upstream that records every request's exact bytes.
#[derive(Clone)]
pub struct RawUpstream {
    /// Where it listens (127.0.0.1, a free port).
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<RawRequest>>>,
    conns: Arc<AtomicUsize>,
    tls: Arc<Mutex<TlsLog>>,
}

/// What a TLS upstream saw of its handshakes.
#[derive(Debug, Default, Clone)]
pub struct TlsLog {
    /// The SNI of each completed handshake, in order (`None`: none sent).
    pub sni: Vec<Option<String>>,
    /// Whether each completed handshake resumed a session.
    pub resumed: Vec<bool>,
    /// ALPN protocol agreed on each completed handshake.
    pub alpn: Vec<Option<Vec<u8>>>,
    /// Handshakes that failed, with rustls's reason.
    pub failed: Vec<String>,
}

impl RawUpstream {
    /// Starts an upstream answering with `script`.
    pub async fn start(script: impl Fn(&RawRequest) -> Vec<Step> + Send + Sync + 'static) -> Self {
        Self::listen(None, Arc::new(script)).await
    }

    /// Starts a TLS upstream (rustls, `config`) answering with `script`;
    /// requests are recorded after decryption, exactly as received.
    pub async fn start_tls(
        config: Arc<rustls::ServerConfig>,
        script: impl Fn(&RawRequest) -> Vec<Step> + Send + Sync + 'static,
    ) -> Self {
        Self::listen(Some(config), Arc::new(script)).await
    }

    async fn listen(tls: Option<Arc<rustls::ServerConfig>>, script: Script) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(AtomicUsize::new(0));
        let tls_log = Arc::new(Mutex::new(TlsLog::default()));
        let (reqs, counter, log) = (requests.clone(), conns.clone(), tls_log.clone());
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    return;
                };
                let conn = counter.fetch_add(1, Ordering::SeqCst);
                let (script, reqs, log) = (script.clone(), reqs.clone(), log.clone());
                match &acceptor {
                    None => {
                        tokio::spawn(serve(Plain(s), conn, script, reqs));
                    }
                    Some(a) => {
                        let a = a.clone();
                        tokio::spawn(async move {
                            match a.accept(s).await {
                                Ok(t) => {
                                    {
                                        let c = t.get_ref().1;
                                        let mut log = log.lock().unwrap();
                                        log.sni.push(c.server_name().map(str::to_owned));
                                        log.resumed.push(matches!(
                                            c.handshake_kind(),
                                            Some(rustls::HandshakeKind::Resumed)
                                        ));
                                        log.alpn.push(c.alpn_protocol().map(<[u8]>::to_vec));
                                    }
                                    serve(Tls(Box::new(t)), conn, script, reqs).await;
                                }
                                Err(e) => log.lock().unwrap().failed.push(e.to_string()),
                            }
                        });
                    }
                }
            }
        });
        Self {
            addr,
            requests,
            conns,
            tls: tls_log,
        }
    }

    /// What the TLS upstream saw of handshakes so far.
    pub fn tls(&self) -> TlsLog {
        self.tls.lock().unwrap().clone()
    }

    /// An upstream that answers every request `200` with a fixed body, keep-alive.
    pub async fn ok(body: &'static str) -> Self {
        Self::start(move |_| vec![Step::Write(response(200, &[], body))]).await
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// The last request received, if any.
    pub fn last(&self) -> Option<RawRequest> {
        self.requests.lock().unwrap().last().cloned()
    }

    /// How many connections were accepted.
    pub fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

/// A complete `HTTP/1.1` response with `Content-Length`.
pub fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", body.len());
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

/// A connection of the scripted upstream: plain or TLS.
trait Conn: AsyncRead + AsyncWrite + Unpin + Send {
    /// Sends a TLS `KeyUpdate` (nothing for plain TCP).
    fn key_update(&mut self) -> std::io::Result<()>;
}

struct Plain(TcpStream);
struct Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>);

impl Conn for Plain {
    fn key_update(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Conn for Tls {
    fn key_update(&mut self) -> std::io::Result<()> {
        self.0
            .get_mut()
            .1
            .refresh_traffic_keys()
            .map_err(std::io::Error::other)
    }
}

macro_rules! delegate_io {
    ($t:ty, $($f:tt)+) => {
        impl AsyncRead for $t {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.$($f)+).poll_read(cx, buf)
            }
        }
        impl AsyncWrite for $t {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.$($f)+).poll_write(cx, buf)
            }
            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.$($f)+).poll_flush(cx)
            }
            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.$($f)+).poll_shutdown(cx)
            }
        }
    };
}
delegate_io!(Plain, 0);
delegate_io!(Tls, 0);

async fn serve(mut s: impl Conn, conn: usize, script: Script, log: Arc<Mutex<Vec<RawRequest>>>) {
    let mut buf = Vec::new();
    let mut index = 0;
    loop {
        let Some(req) = read_request(&mut s, &mut buf, conn, index).await else {
            return;
        };
        index += 1;
        log.lock().unwrap().push(req.clone());
        for step in script(&req) {
            match step {
                Step::Write(b) => {
                    if s.write_all(&b).await.is_err() || s.flush().await.is_err() {
                        return;
                    }
                }
                Step::Sleep(d) => tokio::time::sleep(d).await,
                Step::Close => {
                    let _ = s.shutdown().await;
                    return;
                }
                Step::Hang => {
                    let mut sink = [0u8; 4096];
                    while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                    return;
                }
                Step::KeyUpdate => {
                    if s.key_update().is_err() || s.flush().await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Reads one request (head, then a `Content-Length` or chunked body).
async fn read_request(
    s: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    conn: usize,
    index: usize,
) -> Option<RawRequest> {
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        fill(s, buf).await?;
    };
    let head: Vec<u8> = buf.drain(..end).collect();
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut parts = first.splitn(3, ' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_string(), v.trim().to_string()))
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        // Copy chunks verbatim until the last chunk and the trailer end.
        loop {
            if let Some(end) = buf.windows(5).position(|w| w == b"0\r\n\r\n") {
                let at_line_start = end == 0 || buf[..end].ends_with(b"\r\n");
                if at_line_start {
                    body.extend(buf.drain(..end + 5));
                    break;
                }
            }
            fill(s, buf).await?;
        }
    } else if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while buf.len() < len {
            fill(s, buf).await?;
        }
        body.extend(buf.drain(..len));
    }
    Some(RawRequest {
        head,
        body,
        method,
        target,
        headers,
        conn,
        index,
    })
}

async fn fill(s: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 8192];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// The path a lenient framework (Spring, Tomcat, Express static, nginx)
/// would serve for `target`: query dropped, `;` path parameters removed,
/// percent-decoded (`%2F` too), `\` taken as `/`, `//` collapsed and dot
/// segments resolved.
pub fn framework_path(target: &str) -> String {
    let path = target.split('?').next().unwrap_or_default();
    let decoded = percent_decode(path).replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        let seg = seg.split(';').next().unwrap_or_default();
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut p = String::from("/");
    p.push_str(&out.join("/"));
    p
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // Two hex digits, checked as bytes: slicing `s` could split a
        // multi-byte character (a panic), and `from_str_radix` takes `+5`.
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// An upstream that resolves each request's path like a lenient framework
/// ([`framework_path`]) and answers `200` with that path as its body
/// (`served: /api/profile`), recording what it received.
pub async fn framework_upstream() -> RawUpstream {
    RawUpstream::start(|req| {
        let body = format!("served: {}", framework_path(&req.target));
        vec![Step::Write(response(200, &[], &body))]
    })
    .await
}

/// Sends raw bytes to `addr` and reads until the peer closes or `timeout`
/// passes; returns everything read.
pub async fn exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, s.read_to_end(&mut out)).await;
    out
}

/// Sends one raw request (it should say `Connection: close`) and returns
/// the response's status code and the whole response as text.
pub async fn raw_request(addr: SocketAddr, bytes: &str) -> (u16, String) {
    let out = exchange(addr, bytes.as_bytes(), Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framework_path_resolves_like_a_lenient_server() {
        assert_eq!(framework_path("/api/hello/../profile"), "/api/profile");
        assert_eq!(framework_path("/api/hello/%2e%2e/profile"), "/api/profile");
        assert_eq!(framework_path("/api/hello/..%2fprofile"), "/api/profile");
        assert_eq!(framework_path("/api/hello/..;/profile"), "/api/profile");
        assert_eq!(framework_path("/api//x?q=1"), "/api/x");
        assert_eq!(framework_path("/a/%+5/%9é"), "/a/%+5/%9é");
    }
}
