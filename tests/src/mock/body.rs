//! The one response body type of the mock and the helpers that build responses with it.
//!
//! A body is either a buffer sent at once, `n` bytes repeated from a static 64 KiB chunk
//! (so `/bytes/200000000` allocates nothing), or the request body streamed straight back
//! (`/api/echo`). Keeping this an enum rather than a boxed body keeps the hot path free of
//! allocations beyond the response itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Size of the static chunk `/bytes/{n}` is cut from.
const CHUNK_LEN: usize = 64 * 1024;

/// The bytes `/bytes/{n}` sends, repeated.
static CHUNK: [u8; CHUNK_LEN] = [b'x'; CHUNK_LEN];

/// `content-type: application/json`.
pub(crate) const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Largest JSON request body a handler reads (bigger ones get 413).
pub(crate) const JSON_BODY_LIMIT: usize = 1024 * 1024;

/// A response body of the mock upstream.
#[derive(Debug)]
pub(crate) enum MockBody {
    /// One buffer, sent at once (`None` once sent).
    Full(Option<Bytes>),
    /// `remaining` bytes cut from a static chunk.
    Repeat {
        /// Bytes still to send.
        remaining: u64,
    },
    /// The request body, streamed back as it arrives.
    Stream(Incoming),
}

impl MockBody {
    /// An empty body.
    pub(crate) fn empty() -> Self {
        Self::Full(None)
    }

    /// A body of exactly these bytes.
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self::Full((!bytes.is_empty()).then_some(bytes))
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Repeat { remaining } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let n = usize::try_from(*remaining).map_or(CHUNK_LEN, |r| r.min(CHUNK_LEN));
                *remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
            }
            Self::Stream(incoming) => Pin::new(incoming).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(bytes) => bytes.is_none(),
            Self::Repeat { remaining } => *remaining == 0,
            Self::Stream(incoming) => incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Repeat { remaining } => SizeHint::with_exact(*remaining),
            Self::Stream(incoming) => incoming.size_hint(),
        }
    }
}

/// A response with this status and body and no headers yet.
pub(crate) fn response(status: StatusCode, body: MockBody) -> Response<MockBody> {
    let mut res = Response::new(body);
    *res.status_mut() = status;
    res
}

/// A JSON response of already-serialized bytes.
pub(crate) fn json_bytes(status: StatusCode, bytes: impl Into<Bytes>) -> Response<MockBody> {
    let mut res = response(status, MockBody::full(bytes));
    res.headers_mut().insert(CONTENT_TYPE, APPLICATION_JSON);
    res
}

/// A JSON response of a serializable value.
pub(crate) fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<MockBody> {
    match serde_json::to_vec(value) {
        Ok(bytes) => json_bytes(status, bytes),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "serialization failed"),
    }
}

/// `{"error": message}` with this status.
pub(crate) fn error(status: StatusCode, message: &str) -> Response<MockBody> {
    json(status, &serde_json::json!({ "error": message }))
}

/// The 404 every unknown path gets.
pub(crate) fn not_found() -> Response<MockBody> {
    json_bytes(
        StatusCode::NOT_FOUND,
        Bytes::from_static(br#"{"error":"not found"}"#),
    )
}

/// Reads a whole request body of at most `limit` bytes; a longer one gives a 413 response,
/// a broken one a 400.
pub(crate) async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, Response<MockBody>> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        )),
        Err(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "could not read request body",
        )),
    }
}

/// Reads and parses a JSON request body; failures become 400 (or 413) responses.
pub(crate) async fn read_json<T: DeserializeOwned>(
    body: Incoming,
) -> Result<T, Response<MockBody>> {
    let bytes = read_body(body, JSON_BODY_LIMIT).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}")))
}

/// Reads and discards a request body, returning how many bytes it had, without buffering.
pub(crate) async fn drain(mut body: Incoming) -> Result<u64, hyper::Error> {
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            received += data.len() as u64;
        }
    }
    Ok(received)
}
