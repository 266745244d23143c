//! Listeners, the HTTP/1.1 + h2c accept loop (and HTTPS with HTTP/2 over
//! TLS, `tls`), the edge of the request path, graceful drain and config
//! reload.

pub mod hsts;
mod io;
pub mod limits;
pub mod sanitize;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::Either;
use http::header::{HeaderValue, CONTENT_LENGTH, HOST};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use crate::body::{Body, UploadState};
use crate::config::{self, Config, ConfigErrors, Overrides, Source};
use crate::context::TlsInfo;
use crate::error::{self, BodyTooLarge, BoxError};
use crate::middleware::ratelimit::LimiterFailed;
use crate::proxy::ClientAddr;
use crate::request_id::{self, X_REQUEST_ID};
use crate::runtime::Runtime;
use crate::stack::RouteService;
use crate::telemetry::{Record, Telemetry, TimedBody, UpstreamInfo};
use crate::timer::PooledTimer;
use crate::upstream::error::{RequestBodyError, RequestBodyKind};
use crate::{admin, error::GatewayError};
use tokio::time::Instant;

use io::{ConnStats, CountingStream};
use limits::Connections;

/// State shared by every connection: the current runtime and where the
/// config came from.
#[derive(Debug)]
pub struct Shared {
    runtime: ArcSwap<Runtime>,
    /// Metrics that live across reloads.
    pub telemetry: Telemetry,
    source: Source,
    overrides: Overrides,
    /// Both listeners' connection caps (fixed at start).
    pub connections: Connections,
    /// HTTPS on the proxy listener (`server.tls`, fixed at start; its
    /// certificates reload).
    pub tls: Option<Arc<tls::Tls>>,
}

impl Shared {
    /// The runtime new requests use.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Validates `config` and, only if valid, swaps it in for new requests.
    /// In-flight requests finish on the runtime they started with.
    pub fn apply(&self, config: Config) -> Result<(), ConfigErrors> {
        config::validate::validate(&config)?;
        let old = self.runtime.load_full();
        if old.config.server.listen != config.server.listen
            || old.config.server.admin_listen != config.server.admin_listen
        {
            tracing::warn!("listener addresses changed: they take effect only on restart");
        }
        if old.config.server.max_connections != config.server.max_connections {
            tracing::warn!("server.max_connections changed: it takes effect only on restart");
        }
        if config.telemetry.tracing != old.config.telemetry.tracing {
            tracing::warn!("telemetry.tracing changed: it takes effect only on restart");
        }
        if crate::telemetry::buckets(&config) != self.telemetry.metrics.buckets() {
            tracing::warn!("histogram buckets or SLO thresholds changed: new buckets take effect only on restart");
        }
        let new_tls = config.server.tls.clone();
        let tls_changed = old.config.server.tls.as_ref().map(|t| &t.redirect_listen)
            != new_tls.as_ref().map(|t| &t.redirect_listen)
            || old.config.server.tls.is_some() != new_tls.is_some();
        if tls_changed {
            tracing::warn!("server.tls turned on or off, or its redirect_listen changed: it takes effect only on restart");
        }
        let new = Runtime::build(config, Some(&old), &self.telemetry)?;
        self.runtime.store(Arc::new(new));
        // Certificates (validated above): new handshakes use them.
        if let (Some(tls), Some(cfg)) = (&self.tls, &new_tls) {
            let _ = tls.reload(cfg, "config reload");
        }
        Ok(())
    }

    /// Re-reads the config source; keeps the running config on any error.
    pub fn reload(&self) -> Result<(), ConfigErrors> {
        let config = config::load(&self.source, &self.overrides)?;
        self.apply(config)
    }
}

/// A running gateway.
#[derive(Debug)]
pub struct Handle {
    /// Where the proxy listener is bound.
    pub proxy_addr: SocketAddr,
    /// Where the admin listener is bound.
    pub admin_addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Handle {
    /// The shared state (runtime, reload).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Re-reads the config source and applies it if valid (SIGHUP).
    pub fn reload(&self) -> Result<(), ConfigErrors> {
        let r = self.shared.reload();
        self.shared.telemetry.metrics.reload(r.is_ok());
        match &r {
            Ok(()) => tracing::info!(source = %self.shared.source, "config reloaded"),
            Err(errs) => {
                for e in &errs.0 {
                    tracing::error!(error = %e, "config reload rejected; the old config keeps serving");
                }
            }
        }
        r
    }

    /// Stops accepting and starts draining in-flight requests.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the gateway has drained and stopped.
    pub async fn wait(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "server task failed");
        }
    }
}

/// Pending connections a listener queues before the kernel drops SYNs
/// (clamped by `net.core.somaxconn`). The runtime's default is 128: a burst
/// of new connections (clients reconnecting after a deploy) overflowed it
/// and waited a 1 s SYN retransmit (seen by the fault suite's SIGHUP run).
/// nginx uses 511; this is the usual `somaxconn` of current kernels.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` (`host:port`) with [`LISTEN_BACKLOG`] and `SO_REUSEADDR`,
/// trying each address it resolves to.
async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        let bound = socket
            .set_reuseaddr(true)
            .and_then(|()| socket.bind(a))
            .and_then(|()| socket.listen(LISTEN_BACKLOG));
        match bound {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr:?} resolves to no address"),
        )
    }))
}

/// Binds both listeners and starts serving `config` (already validated).
pub async fn start(
    config: Config,
    source: Source,
    overrides: Overrides,
) -> std::io::Result<Handle> {
    let proxy = bind(&config.server.listen).await?;
    let admin = bind(&config.server.admin_listen).await?;
    let (proxy_addr, admin_addr) = (proxy.local_addr()?, admin.local_addr()?);
    let server_cfg = config.server.clone();
    let tls = match &server_cfg.tls {
        Some(t) => Some(Arc::new(tls::Tls::new(t, server_cfg.http2).map_err(
            |e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
        )?)),
        None => None,
    };
    let redirect = match server_cfg
        .tls
        .as_ref()
        .and_then(|t| t.redirect_listen.as_ref())
    {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let telemetry = Telemetry::new(&config)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let runtime = Runtime::build(config, None, &telemetry)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let shared = Arc::new(Shared {
        runtime: ArcSwap::from_pointee(runtime),
        telemetry,
        source,
        overrides,
        connections: Connections::new(server_cfg.max_connections),
        tls: tls.clone(),
    });
    let shutdown = CancellationToken::new();
    if let Some(tls) = tls {
        let s = shared.clone();
        tls::spawn_watcher(
            tls,
            move || s.runtime().config.server.tls.clone(),
            shutdown.clone(),
        );
    }
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // The header-read deadline is armed per request: pooled timers.
        .timer(PooledTimer::new())
        .header_read_timeout(server_cfg.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = if server_cfg.http2 {
        builder
    } else {
        builder.http1_only()
    };
    let ctx = Arc::new(ConnCtx {
        shared: shared.clone(),
        builder,
        header_timeout: server_cfg.header_read_timeout,
        body_idle_timeout: server_cfg.body_idle_timeout,
        redirect_slots: Arc::new(Semaphore::new(REDIRECT_MAX_CONNECTIONS)),
        https_port: server_cfg
            .tls
            .as_ref()
            .and_then(|t| t.redirect_port)
            .unwrap_or(proxy_addr.port()),
    });
    let task = tokio::spawn(run(
        ctx,
        proxy,
        admin,
        redirect,
        shutdown.clone(),
        server_cfg.drain_timeout,
    ));
    Ok(Handle {
        proxy_addr,
        admin_addr,
        shared,
        shutdown,
        task,
    })
}

struct ConnCtx {
    shared: Arc<Shared>,
    builder: auto::Builder<TokioExecutor>,
    header_timeout: Duration,
    /// `server.body_idle_timeout`: a request body silent this long is a 408.
    body_idle_timeout: Duration,
    /// Connections the redirect listener holds at once.
    redirect_slots: Arc<Semaphore>,
    /// The proxy listener's port: where redirects point.
    https_port: u16,
}

/// Connections the plaintext redirect listener (`server.tls.redirect_listen`)
/// holds at once; each answers one request within `header_read_timeout`.
const REDIRECT_MAX_CONNECTIONS: usize = 1024;

#[derive(Clone, Copy)]
enum Kind {
    Proxy,
    Admin,
    Redirect,
}

async fn run(
    ctx: Arc<ConnCtx>,
    proxy: TcpListener,
    admin: TcpListener,
    redirect: Option<TcpListener>,
    stop: CancellationToken,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let (accepted, kind) = tokio::select! {
            () = stop.cancelled() => break,
            r = proxy.accept() => (r, Kind::Proxy),
            r = admin.accept() => (r, Kind::Admin),
            r = async {
                match &redirect {
                    Some(l) => l.accept().await,
                    None => std::future::pending().await,
                }
            } => (r, Kind::Redirect),
        };
        match accepted {
            Ok((stream, peer)) => {
                let permit = match kind {
                    Kind::Proxy => ctx.shared.connections.proxy.admit(),
                    Kind::Admin => ctx.shared.connections.admin.admit(),
                    Kind::Redirect => ctx.redirect_slots.clone().try_acquire_owned().ok(),
                };
                // Over the listener's cap: closed at once, counted (as
                // Envoy's listener limit), so the reserve of descriptors
                // for upstream connections and the other listener holds.
                let Some(permit) = permit else {
                    drop(stream);
                    continue;
                };
                tokio::spawn(accept_conn(
                    ctx.clone(),
                    stream,
                    peer,
                    kind,
                    graceful.watcher(),
                    permit,
                ));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop((proxy, admin, redirect));
    tracing::info!(connections = graceful.count(), ?drain, "draining");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed; closing remaining connections");
    }
    // Spans of the drained requests are queued: export them, bounded.
    if let Some(t) = ctx.shared.telemetry.tracing.clone() {
        t.shutdown().await;
    }
}

/// A new connection: the TLS handshake first on an HTTPS proxy listener
/// (bounded by `server.header_read_timeout`), then HTTP.
async fn accept_conn(
    ctx: Arc<ConnCtx>,
    stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    watcher: Watcher,
    permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let stats = Arc::new(ConnStats::default());
    // The stream answers 408 itself when hyper drops it after a header
    // timeout (no second descriptor), and holds the listener's permit.
    let io = CountingStream::new(stream, stats.clone(), permit);
    match (kind, &ctx.shared.tls) {
        (Kind::Proxy, Some(tls)) => {
            let Some((io, info)) = tls.accept(io, ctx.header_timeout).await else {
                return;
            };
            serve_conn(ctx, io, stats, peer, kind, watcher, Some(info)).await;
        }
        (Kind::Redirect, _) => serve_redirect(ctx, io, stats, watcher).await,
        _ => serve_conn(ctx, io, stats, peer, kind, watcher, None).await,
    }
}

/// Serves HTTP on `io`: the plain socket or its TLS stream (generic, so
/// the plaintext path reads and writes the socket directly). `tls` is
/// given to every request as an extension.
async fn serve_conn<I>(
    ctx: Arc<ConnCtx>,
    io: I,
    stats: Arc<ConnStats>,
    peer: SocketAddr,
    kind: Kind,
    watcher: Watcher,
    tls: Option<TlsInfo>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let svc = {
        let ctx = ctx.clone();
        let stats = stats.clone();
        let client = ClientAddr::new(peer);
        hyper::service::service_fn(move |mut req: Request<Incoming>| {
            if let Some(info) = tls {
                req.extensions_mut().insert(info);
            }
            dispatch(&ctx, &stats, &client, kind, req)
        })
    };
    let conn = watcher.watch(
        ctx.builder
            .serve_connection_with_upgrades(io, svc)
            .into_owned(),
    );
    tokio::pin!(conn);
    // hyper's header timeout starts with HTTP/1 parsing; this one also covers
    // a client that never sends enough bytes to pick a protocol. It is
    // dropped once a request arrives, not polled for the connection's life.
    let mut first = Some(Box::pin(tokio::time::sleep(ctx.header_timeout)));
    let result = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = conn.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        if let Some(sleep) = &mut first {
            if stats.requests() > 0 {
                first = None;
            } else if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
        }
        Poll::Pending
    })
    .await;
    // The 408 is written in plaintext on the socket: never inside TLS
    // (a TLS client just sees the connection close).
    let plaintext = tls.is_none();
    let Some(result) = result else {
        if plaintext && stats.has_partial_request() {
            // Written when `conn` (and with it the stream) drops, below.
            stats.answer_408_on_close();
        }
        return;
    };
    if let Err(e) = result {
        let header_timeout = e
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout);
        if header_timeout && plaintext && stats.has_partial_request() {
            stats.answer_408_on_close();
        } else {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// The plaintext redirect listener: one request per connection, answered
/// 308 to the same host and path over HTTPS; the whole exchange bounded by
/// `server.header_read_timeout`.
async fn serve_redirect(
    ctx: Arc<ConnCtx>,
    io: CountingStream,
    stats: Arc<ConnStats>,
    watcher: Watcher,
) {
    let port = ctx.https_port;
    let svc = {
        let stats = stats.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            stats.request_started();
            let resp = redirect_response(&req, port);
            stats.request_done();
            std::future::ready(Ok::<_, Infallible>(resp.map(TimedBody::plain)))
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.header_timeout)
        .max_buf_size(16 * 1024)
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), svc);
    let conn = watcher.watch(conn);
    match tokio::time::timeout(ctx.header_timeout, conn).await {
        Ok(Err(e)) if e.is_timeout() && stats.has_partial_request() => {
            stats.answer_408_on_close();
        }
        Err(_) if stats.has_partial_request() => stats.answer_408_on_close(),
        _ => {}
    }
}

/// `308 Permanent Redirect` to `https://{host}{path}` (the HTTPS port
/// added unless 443); a missing, repeated or invalid `Host` is a 400.
fn redirect_response<B>(req: &Request<B>, https_port: u16) -> Response<Body> {
    let id = request_id::accept_or_generate(req.headers());
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(h), None) => Some(h.as_bytes()),
        (None, None) => req.uri().authority().map(|a| a.as_str().as_bytes()),
        _ => None,
    };
    let name = host
        .filter(|h| sanitize::valid_authority(h))
        .and_then(|h| std::str::from_utf8(h).ok())
        .map(|h| match h.find(']') {
            Some(end) if h.starts_with('[') => &h[..=end],
            _ => h.split(':').next().unwrap_or(h),
        });
    let Some(name) = name else {
        let mut r = error::render(
            &GatewayError::BadRequest("missing or invalid Host header"),
            &id,
        );
        r.headers_mut().insert(X_REQUEST_ID, id);
        return r;
    };
    let path = req
        .uri()
        .path_and_query()
        .map(http::uri::PathAndQuery::as_str)
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    let location = if https_port == 443 {
        format!("https://{name}{path}")
    } else {
        format!("https://{name}:{https_port}{path}")
    };
    let mut r = Response::new(Body::Empty);
    *r.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(http::header::LOCATION, v);
    }
    h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    h.insert(X_REQUEST_ID, id);
    r
}

/// The future hyper holds for each request.
type Dispatched =
    Either<Edge, Pin<Box<dyn Future<Output = Result<Response<TimedBody>, Infallible>> + Send>>>;

fn dispatch(
    ctx: &ConnCtx,
    stats: &Arc<ConnStats>,
    client: &ClientAddr,
    kind: Kind,
    req: Request<Incoming>,
) -> Dispatched {
    stats.request_started();
    match kind {
        Kind::Proxy => Either::Left(Edge::start(ctx, stats.clone(), client.clone(), req)),
        // The redirect listener has its own service (`serve_redirect`).
        Kind::Admin | Kind::Redirect => {
            let (shared, stats) = (ctx.shared.clone(), stats.clone());
            Either::Right(Box::pin(async move {
                let resp = admin::handle(&shared, req).await;
                stats.request_done();
                Ok(resp.map(TimedBody::plain))
            }))
        }
    }
}

/// The edge of the request path (layer 1 of `stack`): request id, routing,
/// body limit, client context; then the route's stack; errors rendered once.
///
/// Written by hand rather than as an `async fn`: hyper stores and moves this
/// future for every request, and a generated one carried every local of
/// both the proxy and the admin path (about 1.6 KB). This one holds the
/// route's boxed future and what the edge needs to finish the response.
pub(crate) struct Edge {
    state: EdgeState,
    record: Option<Box<Record>>,
    id: HeaderValue,
    stats: Arc<ConnStats>,
    /// Where the request body stands (requests with a body only): a route
    /// timeout passing while the gateway waits for it is the client's 408.
    upload: Option<UploadState>,
}

enum EdgeState {
    /// The route's service was not ready yet (rare: its layers are).
    Waiting(Box<(RouteService, Request<Body>)>),
    /// The route's service is handling the request.
    Running(<RouteService as Service<Request<Body>>>::Future),
    /// Answered at the edge (no route, body too large) or by a failed
    /// `poll_ready`.
    Answered(Option<Result<Response<Body>, BoxError>>),
}

impl Edge {
    fn start(
        ctx: &ConnCtx,
        stats: Arc<ConnStats>,
        client: ClientAddr,
        req: Request<Incoming>,
    ) -> Self {
        let start = Instant::now();
        let id = request_id::accept_or_generate(req.headers());
        let (record, routed, upload) =
            prepare(&ctx.shared, client, req, &id, start, ctx.body_idle_timeout);
        let mut edge = Self::new(routed, record, id, stats);
        edge.upload = upload;
        edge
    }

    /// The edge future of a routed request (or of the error to answer).
    fn new(
        routed: Result<(RouteService, Request<Body>), GatewayError>,
        record: Option<Box<Record>>,
        id: HeaderValue,
        stats: Arc<ConnStats>,
    ) -> Self {
        let state = match routed {
            Ok((mut svc, req)) => {
                // The layers are always ready: ask once without a waker and
                // call at once, so the request is not stored to wait.
                let mut cx = Context::from_waker(Waker::noop());
                match svc.poll_ready(&mut cx) {
                    Poll::Ready(Ok(())) => EdgeState::Running(svc.call(req)),
                    Poll::Ready(Err(e)) => EdgeState::Answered(Some(Err(e))),
                    Poll::Pending => EdgeState::Waiting(Box::new((svc, req))),
                }
            }
            Err(e) => EdgeState::Answered(Some(Ok(error::render(&e, &id)))),
        };
        Self {
            state,
            record,
            id,
            stats,
            upload: None,
        }
    }

    /// Renders a failure, sets the request id and hands the record to the
    /// response body, which finishes it.
    fn finish(&mut self, result: Result<Response<Body>, BoxError>) -> Response<TimedBody> {
        let id = &self.id;
        let mut resp = match result {
            Ok(r) => r,
            Err(mut e) => {
                // The route's timeout passed while the gateway was waiting
                // for the client's body: the client was too slow. Layers
                // outside the timeout (CORS, header rules, HSTS) may have
                // wrapped it: their headers stay on the 408.
                if error::chain_has::<tower::timeout::error::Elapsed>(e.as_ref())
                    && self
                        .upload
                        .as_ref()
                        .is_some_and(UploadState::waiting_on_client)
                {
                    let headers = error::decorations(e.as_ref());
                    let slow: BoxError = Box::new(RequestBodyError::new(RequestBodyKind::TimedOut));
                    e = if headers.is_empty() {
                        slow
                    } else {
                        Box::new(error::Decorated {
                            headers,
                            source: slow,
                        })
                    };
                }
                let c = error::classify(e.as_ref());
                let route = self.record.as_ref().map_or("", |r| r.route_name());
                if c.blame == error::Blame::Client {
                    // 401/403/429 floods must not flood the log too.
                    tracing::debug!(request_id = ?id, route, status = c.status.as_u16(), error = %ErrorChain(e.as_ref()), "request refused");
                } else {
                    tracing::warn!(request_id = ?id, route, status = c.status.as_u16(), blame = ?c.blame, error = %ErrorChain(e.as_ref()), "request failed");
                }
                error::render(e.as_ref(), id)
            }
        };
        self.stats.request_done();
        resp.headers_mut().insert(X_REQUEST_ID, id.clone());
        let (mut parts, body) = resp.into_parts();
        match self.record.take() {
            Some(mut r) => {
                let upstream = parts.extensions.remove::<UpstreamInfo>();
                r.head(parts.status.as_u16(), &parts.extensions, upstream);
                if parts.extensions.remove::<LimiterFailed>().is_some() {
                    r.limiter_failed();
                }
                Response::from_parts(parts, TimedBody::new(body, r))
            }
            None => Response::from_parts(parts, TimedBody::plain(body)),
        }
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        // Dropped unanswered: hyper gave the request up because the client
        // left (closed its connection, reset its h2 stream) before the
        // response head. Logged and counted as 499 (nginx's "client closed
        // request"), never a gateway or upstream error; the upstream
        // exchange, dropped with it, recorded nothing against the endpoint.
        if let Some(mut r) = self.record.take() {
            r.head(
                error::CLIENT_CLOSED_REQUEST.as_u16(),
                &http::Extensions::new(),
                None,
            );
            drop(TimedBody::new(Body::Empty, r));
        }
    }
}

impl Future for Edge {
    type Output = Result<Response<TimedBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            let result = match &mut this.state {
                EdgeState::Running(f) => ready!(f.as_mut().poll(cx)),
                EdgeState::Waiting(w) => match ready!(w.0.poll_ready(cx)) {
                    Ok(()) => {
                        let EdgeState::Waiting(w) =
                            std::mem::replace(&mut this.state, EdgeState::Answered(None))
                        else {
                            unreachable!("matched above")
                        };
                        let (mut svc, req) = *w;
                        this.state = EdgeState::Running(svc.call(req));
                        continue;
                    }
                    Err(e) => Err(e),
                },
                EdgeState::Answered(r) => r
                    .take()
                    .unwrap_or_else(|| Err("edge future polled after completion".into())),
            };
            return Poll::Ready(Ok(this.finish(result)));
        }
    }
}

/// Routing and the edge checks, without holding borrows across an await.
/// Returns the request's telemetry record (for the matched route, or the
/// `unmatched` one) and either the route's service with the request or the
/// error to answer.
#[allow(clippy::type_complexity)]
fn prepare(
    shared: &Shared,
    client: ClientAddr,
    mut req: Request<Incoming>,
    id: &HeaderValue,
    start: Instant,
    body_idle_timeout: Duration,
) -> (
    Option<Box<Record>>,
    Result<(RouteService, Request<Body>), GatewayError>,
    Option<UploadState>,
) {
    let rt = shared.runtime.load();
    // The one sanitation pass (sanitize.rs), before anything reads the head.
    let sanitized = sanitize::sanitize(&mut req, &client, &rt.edge, id);
    // The path normalised once (path.rs), the URI rewritten with it: the
    // router, every layer and the upstream see only the normalised path.
    let path = crate::path::normalize_uri(req.uri_mut());
    let sanitized = sanitized.and_then(|ctx| path.map(|_| ctx).map_err(GatewayError::from));
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(http::uri::Authority::as_str));
    let routed =
        sanitized.and_then(|ctx| Ok((rt.router.route(req.method(), host, req.uri().path())?, ctx)));
    // A kept `%2F` only on a route that allows it.
    let routed = routed.and_then(|(route, ctx)| {
        crate::path::check_encoded_slash(path == Ok(true), route.allow_encoded_slash)?;
        Ok((route, ctx))
    });
    let (telemetry, client_ip) = match &routed {
        Ok((route, ctx)) => (&route.telemetry, ctx.client_ip()),
        Err(_) => (&rt.unmatched, client.addr.ip()),
    };
    let record =
        (telemetry.enabled || telemetry.access_log.enabled || shared.telemetry.tracing.is_some())
            .then(|| {
                Record::start(
                    telemetry.clone(),
                    &shared.telemetry,
                    start,
                    &req,
                    host,
                    id.clone(),
                    client_ip,
                )
            });
    let (route, mut ctx) = match routed {
        Ok(r) => r,
        Err(e) => return (record, Err(e), None),
    };
    if content_length(req.headers()).is_some_and(|len| len > route.max_body) {
        return (
            record,
            Err(BodyTooLarge {
                limit: route.max_body,
            }
            .into()),
            None,
        );
    }
    let (mut parts, body) = req.into_parts();
    parts.headers.insert(X_REQUEST_ID, id.clone());
    if ctx.websocket() && !route.websocket {
        // Not on this route: forwarded as a plain request.
        parts.headers.remove(http::header::UPGRADE);
        ctx.set_websocket(false);
    }
    parts.extensions.insert(ctx);
    if let Some(parent) = record.as_deref().and_then(Record::span_parent) {
        parts.extensions.insert(parent);
    }
    let (body, upload) = Body::limited(body, route.max_body, body_idle_timeout);
    let req = Request::from_parts(parts, body);
    (record, Ok((route.service.clone(), req)), upload)
}

fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Displays an error with its whole cause chain.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}

/// A JSON response for the admin listener.
pub(crate) fn json(status: http::StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::util::BoxCloneSyncService;

    /// Not ready on its first `poll_ready` (waking the caller), then ready
    /// or failing; answers 200.
    #[derive(Clone)]
    struct Slow {
        polls: Arc<AtomicUsize>,
        fail: bool,
    }

    impl Service<Request<Body>> for Slow {
        type Response = Response<Body>;
        type Error = BoxError;
        type Future = std::future::Ready<Result<Response<Body>, BoxError>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            if self.polls.fetch_add(1, Ordering::SeqCst) == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if self.fail {
                return Poll::Ready(Err("upstream pool closed".into()));
            }
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _req: Request<Body>) -> Self::Future {
            std::future::ready(Ok(Response::new(Body::full("ok"))))
        }
    }

    fn edge(fail: bool) -> (Edge, Arc<AtomicUsize>, Arc<ConnStats>) {
        let polls = Arc::new(AtomicUsize::new(0));
        let svc = BoxCloneSyncService::new(Slow {
            polls: polls.clone(),
            fail,
        });
        let stats = Arc::new(ConnStats::default());
        stats.request_started();
        let e = Edge::new(
            Ok((svc, Request::new(Body::Empty))),
            None,
            HeaderValue::from_static("req-1"),
            stats.clone(),
        );
        (e, polls, stats)
    }

    /// The edge's response, or a failed test if it never comes.
    async fn within(e: Edge) -> Response<TimedBody> {
        match tokio::time::timeout(Duration::from_secs(10), e).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(never)) => match never {},
            Err(_) => panic!("the edge future never completed"),
        }
    }

    #[tokio::test]
    async fn a_route_service_not_ready_at_once_is_called_once_ready() {
        let (e, polls, stats) = edge(false);
        let resp = within(e).await;
        assert_eq!(resp.status(), http::StatusCode::OK);
        assert_eq!(resp.headers()[X_REQUEST_ID], "req-1");
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        assert!(!stats.has_partial_request());
    }

    #[tokio::test]
    async fn a_failing_poll_ready_is_answered_as_an_error_with_the_request_id() {
        let (e, _, _) = edge(true);
        let resp = within(e).await;
        assert!(resp.status().is_server_error(), "{}", resp.status());
        assert_eq!(resp.headers()[X_REQUEST_ID], "req-1");
    }
}
