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
#[error("TLS handshake with the upstream failed (server name {server_name:?})")]
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::io::Write;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A CA-signed certificate for `localhost`: (server config, client
    /// config trusting the CA).
    fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// Serves one TLS 1.3 handshake on `l` by hand, holding back the
    /// `NewSessionTicket` records rustls emits at its end; on each message
    /// from `go`, sends what is held plus what the closure adds (data,
    /// close_notify) as raw records. The socket stays open until `go` closes.
    fn server(
        l: std::net::TcpListener,
        config: Arc<rustls::ServerConfig>,
        go: mpsc::Receiver<fn(&mut rustls::ServerConnection)>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let (mut sock, _) = l.accept().unwrap();
            let mut tls = rustls::ServerConnection::new(config).unwrap();
            while tls.is_handshaking() {
                while tls.wants_write() {
                    tls.write_tls(&mut sock).unwrap();
                }
                if tls.read_tls(&mut sock).unwrap() == 0 {
                    return;
                }
                tls.process_new_packets().unwrap();
            }
            // Handshake done: the tickets are queued, not sent.
            assert!(tls.wants_write(), "rustls queued session tickets");
            while let Ok(add) = go.recv() {
                add(&mut tls);
                let mut out = Vec::new();
                while tls.wants_write() {
                    tls.write_tls(&mut out).unwrap();
                }
                sock.write_all(&out).unwrap();
            }
        })
    }

    fn peek_has_bytes(io: &UpstreamIo) -> bool {
        let mut probe = [MaybeUninit::<u8>::uninit(); 1];
        matches!(socket2::SockRef::from(io.tcp()).peek(&mut probe), Ok(n) if n > 0)
    }

    async fn wait_readable(io: &UpstreamIo) {
        for _ in 0..500 {
            if peek_has_bytes(io) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("nothing arrived");
    }

    async fn connect(
        server_config: &Arc<rustls::ServerConfig>,
        client: &Arc<rustls::ClientConfig>,
    ) -> (UpstreamIo, mpsc::Sender<fn(&mut rustls::ServerConnection)>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        server(l, server_config.clone(), rx);
        let tls = EndpointTls::new(
            client.clone(),
            ServerName::try_from("localhost").unwrap(),
            0,
        );
        let tcp = TcpStream::connect(addr).await.unwrap();
        let io = tokio::time::timeout(Duration::from_secs(10), tls.handshake(tcp))
            .await
            .unwrap()
            .unwrap();
        (io, tx)
    }

    /// Session tickets that arrive while a connection is pooled keep it
    /// (a `MSG_PEEK` would see bytes and discard it); data, close_notify
    /// or EOF after them discard it.
    #[tokio::test]
    async fn session_tickets_on_an_idle_connection_keep_it_data_and_close_notify_do_not() {
        let (server_config, client) = configs();

        let (mut io, go) = connect(&server_config, &client).await;
        assert!(!io.looks_closed(), "fresh and quiet");
        go.send(|_| {}).unwrap(); // the held-back tickets
        wait_readable(&io).await;
        assert!(peek_has_bytes(&io), "a MSG_PEEK check would discard it");
        assert!(!io.looks_closed(), "tickets only: healthy");
        assert!(!peek_has_bytes(&io), "the tickets were consumed");
        assert!(!io.looks_closed(), "still healthy on a second look");
        go.send(|s| s.send_close_notify()).unwrap();
        wait_readable(&io).await;
        assert!(io.looks_closed(), "close_notify: closed");

        let (mut io, go) = connect(&server_config, &client).await;
        go.send(|s| {
            s.writer().write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        })
        .unwrap();
        wait_readable(&io).await;
        assert!(io.looks_closed(), "tickets and stray data: discarded");

        let (mut io, go) = connect(&server_config, &client).await;
        drop(go); // the server closes the socket without close_notify
        for _ in 0..500 {
            if io.looks_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("EOF not seen");
    }
}
