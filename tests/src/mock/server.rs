//! The listener: accepts TCP connections (`TCP_NODELAY`), serves each with hyper's
//! auto-detecting builder (HTTP/1.1 keep-alive, or h2c with prior knowledge, upgrades
//! allowed), and drains gracefully on shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::options::{Fault, LatencyRule, MockOptions};
use super::router;
use super::state::State;

/// How long open connections get to finish their requests once shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause after an accept error (such as running out of file descriptors) before retrying.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Most concurrent HTTP/2 streams per connection.
const H2_MAX_STREAMS: u32 = 1024;

/// A running mock upstream. Dropping it stops the server too, without waiting.
#[derive(Debug)]
pub struct MockUpstream {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl MockUpstream {
    /// Binds `opts.listen`, starts serving in the background and returns once the socket
    /// listens. Fails when the address cannot be bound or `opts.id` is no valid header value.
    pub async fn start(opts: MockOptions) -> io::Result<MockUpstream> {
        let tls = opts.tls.as_ref().map(|t| t.acceptor()).transpose()?;
        let listener = TcpListener::bind(opts.listen).await?;
        let addr = listener.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let state = Arc::new(State::new(&opts, shutdown_rx.clone())?);
        let task = tokio::spawn(serve(listener, tls, Arc::clone(&state), shutdown_rx));
        Ok(MockUpstream {
            addr,
            state,
            shutdown,
            task: Some(task),
        })
    }

    /// The address it listens on (with the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests received whose path starts with `path_prefix`, faulted ones included,
    /// `/_mock` ones excluded. Counted per distinct path up to
    /// [`MAX_PATHS`](super::stats::MAX_PATHS) paths; requests to paths beyond that only
    /// count in [`total_hits`](Self::total_hits) (and in `hits("")`).
    pub fn hits(&self, path_prefix: &str) -> u64 {
        self.state.stats.hits(path_prefix)
    }

    /// All requests received, `/_mock` ones excluded.
    pub fn total_hits(&self) -> u64 {
        self.state.stats.total()
    }

    /// Adds an active fault (see [`Fault`]).
    pub fn set_fault(&self, fault: Fault) {
        self.state.faults.add(fault);
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.state.faults.clear();
    }

    /// Sets a latency rule, replacing the one with the same prefix.
    pub fn set_latency(&self, rule: LatencyRule) {
        self.state.latency.set(rule);
    }

    /// Stops accepting, lets open requests finish (up to 5 s), then closes every connection.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "mock-upstream server task failed");
            }
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Accepts until shutdown, then drains.
async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(H2_MAX_STREAMS);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(connection(
                        stream,
                        tls.clone(),
                        builder.clone(),
                        Arc::clone(&state),
                        shutdown.clone(),
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.shutdown().await;
    }
}

/// Serves one connection (after its TLS handshake in TLS mode, bounded) until it closes,
/// or shuts it down gracefully when told to.
async fn connection(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    builder: auto::Builder<TokioExecutor>,
    state: Arc<State>,
    shutdown: watch::Receiver<bool>,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
    let Some(acceptor) = tls else {
        return serve_io(stream, builder, state, shutdown).await;
    };
    match tokio::time::timeout(super::tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => serve_io(tls, builder, state, shutdown).await,
        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!("TLS handshake timed out"),
    }
}

async fn serve_io<I>(
    io: I,
    builder: auto::Builder<TokioExecutor>,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| router::handle(Arc::clone(&state), req));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
