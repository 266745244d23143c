//! Response compression per route: `gzip`, `br`, `zstd`, negotiated from
//! `Accept-Encoding` ([`accept`]), applied as the body streams ([`body`]),
//! only to responses the route's rules allow ([`policy`]).
//!
//! The layer sits inside the cache, so the cache stores the coded bytes
//! (its byte bound counts what it holds) and one variant per coding: the
//! cache keys a compressing route's entries by [`accept::negotiate`]'s
//! result, the same function this layer uses, so `gzip, deflate, br` and
//! `br;q=1, gzip` share the `br` entry.
//!
//! Why not tower-http's `CompressionLayer`: its choice among codings is
//! not the route's server order and is not callable by the cache, it
//! neither weakens `ETag`s nor respects `no-transform`, and its body would
//! be boxed into ours anyway; async-compression's encoders do the coding.

pub mod accept;
pub mod body;
pub mod policy;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Method, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use pin_project_lite::pin_project;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tower::{Layer, Service};

pub use accept::{negotiate, Negotiated};
pub use body::{CompressBody, Counters};
pub use policy::RoutePolicy;

use crate::body::Body;
use crate::config::Algorithm;

/// The marker a compressed response carries in its extensions: which
/// coding, and the identity length the upstream declared, if it did (the
/// cache reads it: a compressed body of a known-length response ends, so
/// it may be gathered to be stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compressed {
    /// The coding applied.
    pub coding: Algorithm,
    /// The upstream's `Content-Length`, if declared.
    pub identity_len: Option<u64>,
}

/// Compresses a route's responses per its [`RoutePolicy`].
#[derive(Debug, Clone)]
pub struct CompressionLayer {
    policy: Arc<RoutePolicy>,
    counters: Option<Arc<[Counters; 3]>>,
}

impl CompressionLayer {
    /// A layer applying `policy`, counting into `counters` (by
    /// [`Algorithm::index`]) when telemetry is on.
    pub fn new(policy: RoutePolicy, counters: Option<[Counters; 3]>) -> Self {
        Self {
            policy: Arc::new(policy),
            counters: counters.map(Arc::new),
        }
    }
}

impl<S> Layer<S> for CompressionLayer {
    type Service = Compression<S>;

    fn layer(&self, inner: S) -> Compression<S> {
        Compression {
            inner,
            policy: self.policy.clone(),
            counters: self.counters.clone(),
        }
    }
}

/// The compression middleware.
#[derive(Debug, Clone)]
pub struct Compression<S> {
    inner: S,
    policy: Arc<RoutePolicy>,
    counters: Option<Arc<[Counters; 3]>>,
}

impl<S> Service<Request<Body>> for Compression<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // HEAD: no body to code (the head is left as the upstream sent it).
        let chosen = (req.method() != Method::HEAD)
            .then(|| negotiate(req.headers(), &self.policy.algorithms));
        ResponseFuture {
            inner: self.inner.call(req),
            chosen,
            policy: self.policy.clone(),
            counters: self.counters.clone(),
        }
    }
}

pin_project! {
    /// The future of [`Compression`]: the inner response, then its head
    /// rewritten and its body wrapped when it is to be compressed.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        chosen: Option<Negotiated>,
        policy: Arc<RoutePolicy>,
        counters: Option<Arc<[Counters; 3]>>,
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = ready!(this.inner.poll(cx))?;
        if !this.policy.eligible(resp.status(), resp.headers()) {
            return Poll::Ready(Ok(resp));
        }
        // Eligible: the representation depends on Accept-Encoding, whatever
        // this client asked, so shared caches keep the variants apart.
        policy::vary_accept_encoding(resp.headers_mut());
        let Some(Negotiated::Coding(coding)) = *this.chosen else {
            return Poll::Ready(Ok(resp));
        };
        let identity_len = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        policy::mark_compressed(resp.headers_mut(), coding);
        resp.extensions_mut().insert(Compressed {
            coding,
            identity_len,
        });
        let counters = this.counters.as_ref().map(|c| c[coding.index()].clone());
        let resp = resp.map(|b| {
            Body::Boxed(UnsyncBoxBody::new(CompressBody::new(
                b,
                coding,
                this.policy.level,
                counters,
            )))
        });
        Poll::Ready(Ok(resp))
    }
}

/// `{route, encoding}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EncodingLabels {
    route: Arc<str>,
    encoding: &'static str,
}

/// `{route, encoding, direction}`: `in` is identity bytes read, `out`
/// coded bytes sent.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    route: Arc<str>,
    encoding: &'static str,
    direction: &'static str,
}

/// The compression metric families.
#[derive(Debug, Clone, Default)]
pub struct CompressionMetrics {
    responses: Family<EncodingLabels, Counter>,
    bytes: Family<BytesLabels, Counter>,
}

impl CompressionMetrics {
    /// Registers `gateway_compressed_responses` and
    /// `gateway_compression_bytes` (OpenMetrics adds `_total`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "gateway_compressed_responses",
            "Responses the gateway compressed, by route and coding",
            self.responses.clone(),
        );
        registry.register(
            "gateway_compression_bytes",
            "Body bytes through the gateway's compression, by route, coding and direction (in: identity bytes read, out: coded bytes sent)",
            self.bytes.clone(),
        );
    }

    /// The counters of route `route`, by [`Algorithm::index`].
    pub fn route(&self, route: &str) -> [Counters; 3] {
        let route: Arc<str> = Arc::from(route);
        Algorithm::ALL.map(|a| {
            let bytes = |direction| {
                self.bytes.get_or_create_owned(&BytesLabels {
                    route: route.clone(),
                    encoding: a.as_str(),
                    direction,
                })
            };
            Counters {
                responses: self.responses.get_or_create_owned(&EncodingLabels {
                    route: route.clone(),
                    encoding: a.as_str(),
                }),
                bytes_in: bytes("in"),
                bytes_out: bytes("out"),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::{HeaderValue, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::config::RouteCompressionConfig;
    use crate::error::BoxError;

    type Head = &'static [(&'static str, &'static str)];

    /// A compressing service whose upstream answers `status`, `headers`
    /// and `body`.
    fn svc(
        status: u16,
        headers: Head,
        body: &'static str,
    ) -> impl Service<Request<Body>, Response = Response<Body>, Error = BoxError, Future = impl Send>
           + Clone {
        let inner = tower::service_fn(move |_r: Request<Body>| async move {
            let mut r = Response::new(Body::full(body));
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            for (k, v) in headers {
                r.headers_mut().append(*k, HeaderValue::from_static(v));
            }
            Ok::<_, BoxError>(r)
        });
        CompressionLayer::new(RoutePolicy::new(&RouteCompressionConfig::default()), None)
            .layer(inner)
    }

    fn req(method: &str, ae: Option<&str>) -> Request<Body> {
        let mut b = Request::builder().method(method).uri("/");
        if let Some(ae) = ae {
            b = b.header("accept-encoding", ae);
        }
        b.body(Body::Empty).unwrap()
    }

    const BIG: &str = include_str!("mod.rs");

    #[tokio::test]
    async fn compresses_what_the_rules_allow() {
        const JSON: Head = &[("content-type", "application/json"), ("etag", "\"e\"")];
        for (ae, coding) in [
            ("gzip", Algorithm::Gzip),
            ("gzip, deflate, br", Algorithm::Br),
            ("zstd, br", Algorithm::Zstd),
        ] {
            let r = svc(200, JSON, BIG)
                .oneshot(req("GET", Some(ae)))
                .await
                .unwrap();
            assert_eq!(r.headers()["content-encoding"], coding.as_str());
            assert_eq!(r.headers()["vary"], "accept-encoding");
            assert_eq!(r.headers()["etag"], "W/\"e\"");
            assert_eq!(r.extensions().get::<Compressed>().unwrap().coding, coding);
            let bytes = r.into_body().collect().await.unwrap().to_bytes();
            assert!(bytes.len() < BIG.len());
            assert_eq!(body::tests::decode(coding, &bytes).await, BIG.as_bytes());
        }
    }

    #[tokio::test]
    async fn leaves_alone_what_it_must() {
        const JSON: (&str, &str) = ("content-type", "application/json");
        // (status, headers, method, Accept-Encoding, Vary expected)
        let cases: [(u16, Head, &str, Option<&str>, bool); 9] = [
            // Client asks for nothing: identity, but the response varies.
            (200, &[JSON], "GET", None, true),
            (200, &[JSON], "GET", Some("deflate"), true),
            (200, &[JSON], "HEAD", Some("gzip"), true),
            (
                200,
                &[JSON, ("content-encoding", "gzip")],
                "GET",
                Some("gzip"),
                false,
            ),
            (
                200,
                &[JSON, ("cache-control", "no-transform")],
                "GET",
                Some("gzip"),
                false,
            ),
            (
                200,
                &[("content-type", "image/png")],
                "GET",
                Some("gzip"),
                false,
            ),
            (
                200,
                &[JSON, ("content-length", "10")],
                "GET",
                Some("gzip"),
                false,
            ),
            (
                206,
                &[JSON, ("content-range", "bytes 0-9/99")],
                "GET",
                Some("gzip"),
                false,
            ),
            (304, &[JSON], "GET", Some("gzip"), false),
        ];
        for (i, (status, head, method, ae, vary)) in cases.into_iter().enumerate() {
            let r = svc(status, head, BIG)
                .oneshot(req(method, ae))
                .await
                .unwrap();
            let ce = r.headers().get("content-encoding").cloned();
            assert!(
                ce.is_none() || head.iter().any(|(k, _)| *k == "content-encoding"),
                "case {i}: {ce:?}"
            );
            assert_eq!(r.headers().contains_key("vary"), vary, "case {i}");
            assert!(r.extensions().get::<Compressed>().is_none(), "case {i}");
            let bytes = r.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(bytes, BIG.as_bytes(), "case {i}");
        }
    }

    type Cached = crate::middleware::cache::Cache<
        Compression<tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>>,
    >;

    /// Cache (`max_body`) over compression over an upstream answering
    /// 8 x [`BIG`] as `text/plain` with its length and `max-age=60`,
    /// counting its calls; and the store, and the identity length.
    fn cached(
        max_body: u64,
    ) -> (
        Cached,
        Arc<crate::middleware::cache::ResponseCache>,
        Arc<AtomicUsize>,
        usize,
    ) {
        use crate::config::{ByteSize, RouteCacheConfig};
        use crate::middleware::cache::{CacheLayer, ResponseCache, RouteCache};
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let big = BIG.repeat(8);
        let len = big.len();
        let inner =
            tower::util::BoxCloneSyncService::new(tower::service_fn(move |_r: Request<Body>| {
                h.fetch_add(1, Ordering::SeqCst);
                let body = big.clone();
                async move {
                    let mut r = Response::new(Body::full(body));
                    let hm = r.headers_mut();
                    hm.insert("content-type", HeaderValue::from_static("text/plain"));
                    hm.insert("content-length", HeaderValue::from(len));
                    hm.insert("cache-control", HeaderValue::from_static("max-age=60"));
                    Ok::<_, BoxError>(r)
                }
            }));
        let cfg = RouteCompressionConfig::default();
        let zipped = CompressionLayer::new(RoutePolicy::new(&cfg), None).layer(inner);
        let store = Arc::new(ResponseCache::new(1 << 24));
        let cache_cfg = RouteCacheConfig {
            ttl: std::time::Duration::from_secs(60),
            max_body: ByteSize(max_body),
            share_authorized: false,
            stale_while_revalidate: std::time::Duration::ZERO,
            stale_if_error: std::time::Duration::ZERO,
            redis: false,
        };
        let route = RouteCache::new("r", &cache_cfg, store.clone())
            .with_codings(Some(cfg.algorithms.clone()));
        (CacheLayer::new(route).layer(zipped), store, hits, len)
    }

    /// Inside the cache: one entry per negotiated coding, weighed by the
    /// coded bytes it holds; raw headers that negotiate the same coding
    /// share it; an unsafe request drops every variant.
    #[tokio::test(start_paused = true)]
    async fn the_cache_stores_one_coded_variant_per_coding() {
        let (s, store, hits, len) = cached(1 << 20);
        let get = |ae: &'static str| {
            let s = s.clone();
            async move {
                let r = s.oneshot(req("GET", Some(ae))).await.unwrap();
                let x = r.headers()["x-cache"].to_str().unwrap().to_owned();
                let ce = r
                    .headers()
                    .get("content-encoding")
                    .map(|v| v.to_str().unwrap().to_owned());
                let body = r.into_body().collect().await.unwrap().to_bytes();
                (x, ce, body)
            }
        };
        let (x, ce, gz) = get("gzip").await;
        assert_eq!((x.as_str(), ce.as_deref()), ("MISS", Some("gzip")));
        let (x, _, again) = get("gzip").await;
        assert_eq!((x.as_str(), again), ("HIT", gz.clone()));
        let (x, ce, _) = get("gzip, deflate, br").await;
        assert_eq!((x.as_str(), ce.as_deref()), ("MISS", Some("br")));
        let (x, ce, _) = get("br;q=1, gzip").await;
        assert_eq!((x.as_str(), ce.as_deref()), ("HIT", Some("br")));
        let (x, ce, plain) = get("identity").await;
        assert_eq!((x.as_str(), ce), ("MISS", None));
        assert_eq!(plain.len(), len);
        assert_eq!(hits.load(Ordering::SeqCst), 3);
        assert_eq!(store.len(), 3);
        // Weighed by what is held: the identity copy plus two small coded
        // ones, not three identity copies.
        let bytes = store.bytes() as usize;
        assert!(bytes < len + len / 4, "{bytes} bytes for {len}-byte bodies");
        assert!(bytes > len + gz.len(), "{bytes}");
        let post = s.clone().oneshot(req("POST", None)).await.unwrap();
        assert_eq!(post.status(), 200);
        assert_eq!(store.len(), 0);
    }

    /// A coded body over `max_body` is sent whole, decodable, and not
    /// stored; the next request goes upstream again.
    #[tokio::test(start_paused = true)]
    async fn a_coded_body_over_max_body_is_streamed_not_stored() {
        let (s, store, hits, len) = cached(256);
        for _ in 0..2 {
            let r = s.clone().oneshot(req("GET", Some("gzip"))).await.unwrap();
            assert_eq!(r.headers()["x-cache"], "MISS");
            assert_eq!(r.headers()["cache-status"], "gateway; fwd=miss");
            let body = r.into_body().collect().await.unwrap().to_bytes();
            assert!(body.len() > 256);
            let plain = body::tests::decode(Algorithm::Gzip, &body).await;
            assert_eq!(plain.len(), len);
            assert_eq!(plain, BIG.repeat(8).as_bytes());
        }
        assert_eq!(store.len(), 0);
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn counts_responses_and_bytes() {
        let m = CompressionMetrics::default();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let inner = tower::service_fn(move |_r: Request<Body>| {
            h.fetch_add(1, Ordering::SeqCst);
            async move {
                let mut r = Response::new(Body::full(BIG));
                r.headers_mut()
                    .insert("content-type", HeaderValue::from_static("text/plain"));
                Ok::<_, BoxError>(r)
            }
        });
        let s = CompressionLayer::new(
            RoutePolicy::new(&RouteCompressionConfig::default()),
            Some(m.route("r")),
        )
        .layer(inner);
        let r = s.oneshot(req("GET", Some("br"))).await.unwrap();
        let out = r.into_body().collect().await.unwrap().to_bytes().len();
        let c = &m.route("r")[Algorithm::Br.index()];
        assert_eq!(c.responses.get(), 1);
        assert_eq!(c.bytes_in.get(), BIG.len() as u64);
        assert_eq!(c.bytes_out.get(), out as u64);
        let mut reg = Registry::default();
        m.register(&mut reg);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(
            text.contains(r#"gateway_compressed_responses_total{route="r",encoding="br"} 1"#),
            "{text}"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }
}
