//! The byte stream of an upstream connection: plain TCP or TLS over it
//! (`https://` endpoints), the TLS handshake that is part of connecting,
//! and the take-out check of a pooled TLS connection.
//!
//! [`UpstreamIo`] is an enum with the plaintext arm first: the plaintext
//! hot path pays one branch per read or write, nothing else (no boxing, no
//! dynamic dispatch); the TLS stream is boxed so the enum stays as small as
//! a `TcpStream`.
//!
//! A pooled TLS connection cannot be checked with a `MSG_PEEK` alone: a
//! TLS 1.3 server sends `NewSessionTicket` records after the handshake,
//! which arrive on an idle connection and would make every pooled
//! connection look unusable. [`UpstreamIo::looks_closed`] feeds what the
//! socket holds to rustls instead (read without waiting, straight from the
//! kernel: the runtime's readiness may not have seen it yet) and discards
//! the connection only when that yields application data, a `close_notify`,
//! EOF or an error; handshake messages (tickets, key updates) leave it
//! healthy.

use std::io::{self, Read};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How an endpoint's connections are secured: its upstream's client
/// config and the name verified in its certificate.
#[derive(Clone)]
pub struct EndpointTls {
    connector: TlsConnector,
    name: ServerName<'static>,
    /// Digest of the settings it was built from (a reload keeps the
    /// endpoint only when it is unchanged).
    pub(crate) fingerprint: u64,
}

impl std::fmt::Debug for EndpointTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointTls")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl EndpointTls {
    /// TLS with `config`, verifying `name`.
    pub fn new(
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
        fingerprint: u64,
    ) -> Self {
        Self {
            connector: TlsConnector::from(config),
            name,
            fingerprint,
        }
    }

    /// The name sent as SNI (when a DNS name) and verified.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.name
    }

    /// Runs the client handshake over `tcp`.
    pub(crate) async fn handshake(&self, tcp: TcpStream) -> Result<UpstreamIo, TlsHandshakeError> {
        match self.connector.connect(self.name.clone(), tcp).await {
            Ok(s) => Ok(UpstreamIo::Tls(Box::new(s))),
            Err(source) => Err(TlsHandshakeError {
                server_name: self.name.to_str().into_owned(),
                source,
            }),
        }
    }
}

/// The TLS handshake with an upstream failed: its certificate did not
/// verify (untrusted issuer, wrong name, expired), it asked for a client
/// certificate that was refused, or it does not speak TLS. Carried inside
/// [`super::error::UpstreamError::Connect`]: a connect failure, the
/// upstream's fault, and no byte of the request was sent.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake failed (server name {server_name:?}): {source}")]
pub struct TlsHandshakeError {
    /// The name verified.
    pub server_name: String,
    /// What rustls said.
    #[source]
    pub source: io::Error,
}

impl TlsHandshakeError {
    /// As an `io::Error`, keeping this error as its inner value.
    pub fn into_io(self) -> io::Error {
        let kind = self.source.kind();
        io::Error::new(kind, self)
    }
}

/// An upstream connection's stream.
#[derive(Debug)]
pub enum UpstreamIo {
    /// Plain TCP (`http://` and bare `host:port` endpoints).
    Plain(TcpStream),
    /// TLS (`https://` endpoints).
    Tls(Box<TlsStream<TcpStream>>),
}

impl UpstreamIo {
    /// The TCP stream below.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => s.get_ref().0,
        }
    }

    /// Whether TLS data may be waiting in rustls to be written out (a
    /// write may return once its bytes are taken into a record, before
    /// the socket took them): callers flush after the last write of a
    /// message. Always false for plain TCP.
    #[inline]
    pub fn needs_flush(&self) -> bool {
        matches!(self, Self::Tls(_))
    }

    /// Whether a pooled connection is unusable: the upstream closed it or
    /// sent bytes nobody asked for (a stray response would be read as the
    /// answer to the next, unrelated request). A healthy idle connection
    /// has nothing to read (plain TCP), or only TLS handshake messages such
    /// as session tickets (TLS). Never waits.
    pub fn looks_closed(&mut self) -> bool {
        match self {
            Self::Plain(s) => {
                // One non-blocking MSG_PEEK asks the kernel itself: the
                // runtime's readiness may not have seen bytes that arrived
                // since its last poll of the driver.
                let mut probe = [MaybeUninit::<u8>::uninit(); 1];
                match socket2::SockRef::from(&*s).peek(&mut probe) {
                    // Data, or 0 = EOF.
                    Ok(_) => true,
                    Err(e) => e.kind() != io::ErrorKind::WouldBlock,
                }
            }
            Self::Tls(s) => tls_looks_closed(s),
        }
    }
}

/// Records processed per take-out check at most (session tickets are a
/// few hundred bytes; a peer that keeps sending is not healthy).
const TAKE_OUT_READS: usize = 16;

fn tls_looks_closed(s: &mut TlsStream<TcpStream>) -> bool {
    let (tcp, session) = s.get_mut();
    let mut sock = Kernel(socket2::SockRef::from(&*tcp));
    for _ in 0..TAKE_OUT_READS {
        match session.process_new_packets() {
            Err(_) => return true,
            Ok(state) if state.peer_has_closed() || state.plaintext_bytes_to_read() > 0 => {
                return true
            }
            Ok(_) => {}
        }
        match session.read_tls(&mut sock) {
            // EOF without close_notify.
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
    true
}

/// Reads straight from the socket (non-blocking), bypassing the runtime's
/// readiness cache.
struct Kernel<'a>(socket2::SockRef<'a>);

impl Read for Kernel<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl AsyncRead for UpstreamIo {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}
