//! An OTLP/HTTP trace receiver for tests: a hyper server on `127.0.0.1:0`
//! (plain, or HTTPS with a test certificate) that decodes `ExportTraceServiceRequest`s (protobuf, the official
//! definitions from `opentelemetry-proto`) and keeps every span it got.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;

/// A span as received, with its resource's `service.name`.
#[derive(Debug, Clone)]
pub struct Received {
    /// `service.name` of the resource that sent it.
    pub service: String,
    /// The span.
    pub span: Span,
}

impl Received {
    /// Trace id in hex.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// Span id in hex.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// Parent span id in hex ("" for a root).
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    /// SERVER, CLIENT, ...
    pub fn kind(&self) -> SpanKind {
        SpanKind::try_from(self.span.kind).unwrap_or(SpanKind::Unspecified)
    }

    /// A string attribute.
    pub fn str(&self, key: &str) -> Option<String> {
        match attr(&self.span.attributes, key)? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// An integer attribute.
    pub fn int(&self, key: &str) -> Option<i64> {
        match attr(&self.span.attributes, key)? {
            any_value::Value::IntValue(i) => Some(*i),
            _ => None,
        }
    }

    /// The string attribute `key` of the event `name`.
    pub fn event(&self, name: &str, key: &str) -> Option<String> {
        let e = self.span.events.iter().find(|e| e.name == name)?;
        match attr(&e.attributes, key)? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The receiver.
#[derive(Debug, Clone)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    tls: bool,
    spans: Arc<Mutex<Vec<Received>>>,
    requests: Arc<Mutex<u64>>,
    authorization: Arc<Mutex<Option<String>>>,
}

impl OtlpReceiver {
    /// Binds `127.0.0.1:0` and serves until the runtime ends.
    pub async fn start() -> Self {
        Self::serve(None).await
    }

    /// Like [`OtlpReceiver::start`], over HTTPS (ALPN `h2`, `http/1.1`) with this
    /// certificate and key: a collector behind TLS.
    pub async fn start_tls(tls: &crate::mock::MockTls) -> Self {
        Self::serve(Some(tls.acceptor().unwrap())).await
    }

    async fn serve(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = Self {
            addr: listener.local_addr().unwrap(),
            tls: tls.is_some(),
            spans: Arc::default(),
            requests: Arc::default(),
            authorization: Arc::default(),
        };
        let state = r.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.handle(req).await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        Some(acceptor) => {
                            // A client that fails verification aborts the handshake.
                            let Ok(Ok(stream)) = tokio::time::timeout(
                                std::time::Duration::from_secs(10),
                                acceptor.accept(stream),
                            )
                            .await
                            else {
                                return;
                            };
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        r
    }

    /// `http://127.0.0.1:PORT/v1/traces` (`https://` in TLS mode).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/v1/traces", self.addr)
    }

    /// The `authorization` header of the last export, if it had one.
    pub fn authorization(&self) -> Option<String> {
        self.authorization.lock().unwrap().clone()
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// Export requests received so far.
    pub fn requests(&self) -> u64 {
        *self.requests.lock().unwrap()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let answer = |status: StatusCode, body: Vec<u8>| {
            Response::builder()
                .status(status)
                .header("content-type", "application/x-protobuf")
                .body(Full::new(Bytes::from(body)))
                .unwrap()
        };
        if req.uri().path() != "/v1/traces" || req.method() != http::Method::POST {
            return answer(StatusCode::NOT_FOUND, Vec::new());
        }
        let ctype = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let encoded = req
            .headers()
            .get("content-encoding")
            .is_some_and(|v| v.as_bytes() != b"identity");
        let authorization = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = req.into_body().collect().await.unwrap().to_bytes();
        // The gateway's exporter sends uncompressed protobuf; anything else
        // is a test failure worth seeing.
        assert_eq!(ctype, "application/x-protobuf", "OTLP/HTTP protobuf");
        assert!(!encoded, "unexpected content-encoding");
        let export =
            ExportTraceServiceRequest::decode(body).expect("valid ExportTraceServiceRequest");
        let mut got = Vec::new();
        for rs in export.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| attr(&r.attributes, "service.name"))
                .and_then(|v| match v {
                    any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    got.push(Received {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        self.spans.lock().unwrap().extend(got);
        *self.requests.lock().unwrap() += 1;
        *self.authorization.lock().unwrap() = authorization;
        answer(
            StatusCode::OK,
            ExportTraceServiceResponse::default().encode_to_vec(),
        )
    }
}
