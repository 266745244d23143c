//! [`CompressBody`]: a response body compressed as it streams.
//!
//! Each upstream data frame is written into the encoder; whenever the
//! upstream has nothing more for now (its body returns `Pending`), the
//! encoder is flushed and what it produced is sent, so a streamed response
//! (SSE, chunked progress) reaches the client frame by frame, decodable,
//! while a body that arrives in one burst is compressed in large blocks.
//! Nothing is buffered beyond the encoder's window and one output block.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use async_compression::tokio::write::{BrotliEncoder, GzipEncoder, ZstdEncoder};
use async_compression::Level;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use tokio::io::AsyncWrite;

use crate::body::Body;
use crate::config::{Algorithm, CompressionLevel};
use crate::error::BoxError;

/// Output gathered before a block is sent without waiting for a flush.
const BLOCK: usize = 32 * 1024;

/// br and zstd windows of 2^19 = 512 KiB instead of their 4 MiB and
/// 2 MiB defaults for streams: an encoder lives as long as its response,
/// and a gateway holds thousands (long SSE streams among them); API
/// responses gain little from matches further back. gzip's is 32 KiB.
const WINDOW_LOG: u32 = 19;
/// [`WINDOW_LOG`] as brotli's parameter type.
const BROTLI_WINDOW_LOG: i32 = 19;

/// One encoder, writing into memory.
enum Encoder {
    Gzip(GzipEncoder<Vec<u8>>),
    /// Boxed: brotli's state is kilobytes, the others' a pointer or two.
    Br(Box<BrotliEncoder<Vec<u8>>>),
    Zstd(ZstdEncoder<Vec<u8>>),
}

/// The level of `algorithm` for `level` (see [`CompressionLevel`]).
fn level(algorithm: Algorithm, level: CompressionLevel) -> Level {
    match (algorithm, level) {
        (Algorithm::Gzip, CompressionLevel::Default) => Level::Precise(6),
        (Algorithm::Br, CompressionLevel::Default) => Level::Precise(4),
        (Algorithm::Zstd, CompressionLevel::Default) => Level::Precise(3),
        (Algorithm::Gzip, CompressionLevel::Fastest) => Level::Precise(1),
        (Algorithm::Br, CompressionLevel::Fastest) => Level::Precise(0),
        (Algorithm::Zstd, CompressionLevel::Fastest) => Level::Precise(1),
        (Algorithm::Gzip, CompressionLevel::Best) => Level::Precise(9),
        (Algorithm::Br, CompressionLevel::Best) => Level::Precise(11),
        (Algorithm::Zstd, CompressionLevel::Best) => Level::Precise(19),
    }
}

impl Encoder {
    fn new(algorithm: Algorithm, l: CompressionLevel) -> Self {
        let out = Vec::new();
        let q = level(algorithm, l);
        match algorithm {
            Algorithm::Gzip => Self::Gzip(GzipEncoder::with_quality(out, q)),
            Algorithm::Br => {
                let params = async_compression::brotli::EncoderParams::default()
                    .quality(q)
                    .window_size(BROTLI_WINDOW_LOG);
                Self::Br(Box::new(BrotliEncoder::with_params(out, params)))
            }
            Algorithm::Zstd => Self::Zstd(ZstdEncoder::with_quality_and_params(
                out,
                q,
                &[async_compression::zstd::CParameter::window_log(WINDOW_LOG)],
            )),
        }
    }

    fn writer(&mut self) -> Pin<&mut (dyn AsyncWrite + Unpin)> {
        let w: &mut (dyn AsyncWrite + Unpin) = match self {
            Self::Gzip(e) => e,
            Self::Br(e) => &mut **e,
            Self::Zstd(e) => e,
        };
        Pin::new(w)
    }

    fn output(&mut self) -> &mut Vec<u8> {
        match self {
            Self::Gzip(e) => e.get_mut(),
            Self::Br(e) => e.get_mut(),
            Self::Zstd(e) => e.get_mut(),
        }
    }

    /// Takes what the encoder produced so far.
    fn take(&mut self) -> Bytes {
        Bytes::from(std::mem::take(self.output()))
    }

    /// Writes all of `data` (the encoder's sink is memory: never pending,
    /// but a `Pending` is passed on rather than trusted to not happen).
    fn poll_write_all(
        &mut self,
        cx: &mut Context<'_>,
        mut data: &[u8],
    ) -> Poll<std::io::Result<()>> {
        while !data.is_empty() {
            let n = ready!(self.writer().poll_write(cx, data))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            data = &data[n..];
        }
        Poll::Ready(Ok(()))
    }
}

/// Byte and response counters of one route and coding.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Responses compressed.
    pub responses: Counter,
    /// Bytes read from the upstream body.
    pub bytes_in: Counter,
    /// Bytes sent after compression.
    pub bytes_out: Counter,
}

/// Where a [`CompressBody`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the upstream body.
    Reading,
    /// The upstream body ended: write the coding's end.
    Finishing,
    /// Everything sent but maybe trailers.
    Done,
}

/// A body compressed as it streams; see the module documentation.
pub struct CompressBody {
    inner: Body,
    encoder: Encoder,
    state: State,
    /// Input written since the last flush.
    unflushed: bool,
    trailers: Option<HeaderMap>,
    counters: Option<Counters>,
}

impl std::fmt::Debug for CompressBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompressBody")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl CompressBody {
    /// `inner` compressed with `algorithm` at `level`, counted in
    /// `counters`.
    pub fn new(
        inner: Body,
        algorithm: Algorithm,
        level: CompressionLevel,
        counters: Option<Counters>,
    ) -> Self {
        if let Some(c) = &counters {
            c.responses.inc();
        }
        Self {
            inner,
            encoder: Encoder::new(algorithm, level),
            state: State::Reading,
            unflushed: false,
            trailers: None,
            counters,
        }
    }

    fn emit(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        let out = self.encoder.take();
        if out.is_empty() {
            return None;
        }
        if let Some(c) = &self.counters {
            c.bytes_out.inc_by(out.len() as u64);
        }
        Some(Ok(Frame::data(out)))
    }
}

impl http_body::Body for CompressBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match this.state {
                State::Reading => match Pin::new(&mut this.inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => {
                            if let Some(c) = &this.counters {
                                c.bytes_in.inc_by(data.len() as u64);
                            }
                            ready!(this.encoder.poll_write_all(cx, &data))?;
                            this.unflushed |= !data.is_empty();
                            if this.encoder.output().len() >= BLOCK {
                                if let Some(f) = this.emit() {
                                    return Poll::Ready(Some(f));
                                }
                            }
                        }
                        Err(frame) => {
                            if let Ok(t) = frame.into_trailers() {
                                this.trailers = Some(t);
                            }
                        }
                    },
                    Poll::Ready(Some(Err(e))) => {
                        this.state = State::Done;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Poll::Ready(None) => this.state = State::Finishing,
                    Poll::Pending => {
                        // Nothing more for now: send what was given so far,
                        // decodable, before waiting.
                        if !std::mem::take(&mut this.unflushed) {
                            return Poll::Pending;
                        }
                        ready!(this.encoder.writer().poll_flush(cx))?;
                        match this.emit() {
                            Some(f) => return Poll::Ready(Some(f)),
                            None => return Poll::Pending,
                        }
                    }
                },
                State::Finishing => {
                    ready!(this.encoder.writer().poll_shutdown(cx))?;
                    this.state = State::Done;
                    if let Some(f) = this.emit() {
                        return Poll::Ready(Some(f));
                    }
                }
                State::Done => {
                    return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use http_body_util::BodyExt;

    use super::*;

    /// Decodes `data`, or as much of it as is there when it is cut short
    /// (then without error): what a streaming client can show so far.
    pub(crate) async fn decode(algorithm: Algorithm, data: &[u8]) -> Vec<u8> {
        use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZstdDecoder};
        use tokio::io::{AsyncRead, AsyncReadExt as _};
        let mut r: Pin<Box<dyn AsyncRead + Send + '_>> = match algorithm {
            Algorithm::Gzip => Box::pin(GzipDecoder::new(data)),
            Algorithm::Br => Box::pin(BrotliDecoder::new(data)),
            Algorithm::Zstd => Box::pin(ZstdDecoder::new(data)),
        };
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    #[tokio::test]
    async fn round_trips_every_coding_and_level_with_trailers() {
        let text = "hello compression ".repeat(5000);
        for a in Algorithm::ALL {
            for l in [
                CompressionLevel::Default,
                CompressionLevel::Fastest,
                CompressionLevel::Best,
            ] {
                let counters = Counters::default();
                let inner = Body::full(text.clone());
                let body = CompressBody::new(inner, a, l, Some(counters.clone()));
                let collected = body.collect().await.unwrap().to_bytes();
                assert!(collected.len() < text.len() / 10, "{a:?} {l:?}");
                assert_eq!(decode(a, &collected).await, text.as_bytes(), "{a:?} {l:?}");
                assert_eq!(counters.responses.get(), 1);
                assert_eq!(counters.bytes_in.get(), text.len() as u64);
                assert_eq!(counters.bytes_out.get(), collected.len() as u64);
            }
        }
    }

    #[tokio::test]
    async fn empty_body_is_a_valid_stream() {
        for a in Algorithm::ALL {
            let body = CompressBody::new(Body::Empty, a, CompressionLevel::Default, None);
            let collected = body.collect().await.unwrap().to_bytes();
            assert_eq!(decode(a, &collected).await, b"", "{a:?}");
        }
    }

    /// The upstream sends one chunk then stalls: the first chunk comes out
    /// decodable before the upstream goes on.
    #[tokio::test]
    async fn flushes_when_the_upstream_stalls() {
        for a in Algorithm::ALL {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
            let stream = http_body_util::StreamBody::new(tokio_stream_rx(rx));
            let inner = Body::Boxed(http_body_util::combinators::UnsyncBoxBody::new(stream));
            let mut body = CompressBody::new(inner, a, CompressionLevel::Default, None);
            tx.send(Ok(Frame::data(Bytes::from_static(b"data: first\n\n"))))
                .await
                .unwrap();
            let first = tokio::time::timeout(std::time::Duration::from_secs(10), body.frame())
                .await
                .expect("the first chunk comes out while the upstream stalls")
                .unwrap()
                .unwrap()
                .into_data()
                .unwrap();
            let mut got = first.to_vec();
            // A streaming decoder sees the first event already.
            let partial = decode(a, &got).await;
            assert_eq!(partial, b"data: first\n\n", "{a:?}");
            tx.send(Ok(Frame::data(Bytes::from_static(b"data: second\n\n"))))
                .await
                .unwrap();
            drop(tx);
            while let Some(f) = body.frame().await {
                got.extend_from_slice(&f.unwrap().into_data().unwrap());
            }
            assert_eq!(decode(a, &got).await, b"data: first\n\ndata: second\n\n");
        }
    }

    fn tokio_stream_rx<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Send {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
