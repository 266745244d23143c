//! The one body type of the gateway, for requests and responses alike.
//!
//! An enum rather than a boxed trait object, so the common cases (a streamed
//! upstream or client body, a small buffered JSON error) cost no allocation.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

use crate::error::{BodyTooLarge, BoxError};
use crate::upstream::h1::H1Body;

/// A request or response body.
#[derive(Default)]
pub enum Body {
    /// No body at all.
    #[default]
    Empty,
    /// A complete body held in memory (errors, admin answers).
    Full(Option<Bytes>),
    /// A streamed body from a client or an upstream, passed through as is.
    Incoming(Incoming),
    /// A client's request body that fails once it exceeds `remaining` bytes.
    Limited {
        /// The client's body.
        inner: Incoming,
        /// Bytes still allowed.
        remaining: u64,
        /// The configured limit, for the error.
        limit: u64,
    },
    /// An upstream response body, read from the upstream connection as it
    /// is consumed.
    H1(Box<H1Body>),
    /// Anything else (transformations by middleware).
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
}

impl Body {
    /// A body holding `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full(Some(bytes.into()))
    }

    /// A client body limited to `limit` bytes.
    pub fn limited(inner: Incoming, limit: u64) -> Self {
        Self::Limited {
            inner,
            remaining: limit,
            limit,
        }
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Self::Empty => "Empty",
            Self::Full(_) => "Full",
            Self::Incoming(_) => "Incoming",
            Self::Limited { .. } => "Limited",
            Self::H1(_) => "H1",
            Self::Boxed(_) => "Boxed",
        };
        f.debug_tuple("Body").field(&kind).finish()
    }
}

fn boxed(e: hyper::Error) -> BoxError {
    Box::new(e)
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Incoming(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|o| o.map(|r| r.map_err(boxed))),
            Self::H1(b) => b.poll_frame(cx),
            Self::Limited {
                inner,
                remaining,
                limit,
            } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        let n = data.len() as u64;
                        if n > *remaining {
                            *remaining = 0;
                            return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                                limit: *limit,
                            }))));
                        }
                        *remaining -= n;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                other => other.map(|o| o.map(|r| r.map_err(boxed))),
            },
            Self::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Full(b) => b.is_none(),
            Self::Incoming(b) | Self::Limited { inner: b, .. } => b.is_end_stream(),
            Self::H1(b) => b.is_end_stream(),
            Self::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Incoming(b) | Self::Limited { inner: b, .. } => b.size_hint(),
            Self::H1(b) => b.size_hint(),
            Self::Boxed(b) => b.size_hint(),
        }
    }
}
