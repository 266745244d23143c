//! The one body type of the gateway, for requests and responses alike.
//!
//! An enum rather than a boxed trait object, so the common cases (a streamed
//! upstream or client body, a small buffered JSON error) cost no allocation.
//!
//! A client's request body ([`Upload`], behind [`Body::Limited`]) fails as
//! the client's fault, never the upstream's: over the route's limit
//! ([`BodyTooLarge`], 413, also mid-stream), malformed framing or the
//! client leaving ([`RequestBodyError`], 400 or 499), or nothing received
//! for the request body idle timeout (408). It also tells the edge, through
//! [`UploadState`], whether the gateway is waiting for the client's next
//! bytes, so a route timeout that passes then is answered 408 rather than
//! 504 (while the gateway is busy writing what it read to a slow upstream,
//! it is the upstream's 504). A request without a body never gets one: no
//! allocation on that path.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::error::{BodyTooLarge, BoxError};
use crate::upstream::error::{RequestBodyError, RequestBodyKind};
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
    /// A client's request body with a size limit and an idle timeout.
    Limited(Box<Upload>),
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

    /// A client body limited to `limit` bytes that fails when nothing
    /// arrives for `idle`, with the state the edge reads; a body that is
    /// already complete (no body at all) stays as it is, with no state.
    pub fn limited(inner: Incoming, limit: u64, idle: Duration) -> (Self, Option<UploadState>) {
        if inner.is_end_stream() {
            return (Self::Incoming(inner), None);
        }
        let state = UploadState::default();
        let upload = Upload {
            inner,
            remaining: limit,
            limit,
            idle,
            sleep: None,
            progressed: false,
            waiting: false,
            state: state.clone(),
        };
        (Self::Limited(Box::new(upload)), Some(state))
    }
}

/// Where a client's request body stands; shared by the body and the edge.
#[derive(Debug, Clone, Default)]
pub struct UploadState(Arc<AtomicU8>);

/// Being read, its last poll got data (or it was never polled).
const READING: u8 = 0;
/// Its last poll found nothing: the gateway waits for the client.
const WAITING: u8 = 1;
/// Ended or failed.
const DONE: u8 = 2;

impl UploadState {
    /// Whether the gateway is waiting for the client's next bytes: the
    /// body is unfinished and its last read found nothing.
    pub fn waiting_on_client(&self) -> bool {
        self.0.load(Ordering::Acquire) == WAITING
    }

    fn set(&self, state: u8) {
        self.0.store(state, Ordering::Release);
    }
}

/// A client's request body, limited in size and in idle time.
pub struct Upload {
    inner: Incoming,
    /// Bytes still allowed.
    remaining: u64,
    /// The configured limit, for the error.
    limit: u64,
    /// Longest wait for the next bytes.
    idle: Duration,
    /// The idle timer, armed the first time the body has to wait.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Bytes arrived since the timer was last moved.
    progressed: bool,
    /// What `state` says (`WAITING` or not), so it is stored only on change.
    waiting: bool,
    state: UploadState,
}

impl Upload {
    fn fail(&mut self, e: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state.set(DONE);
        self.sleep = None;
        Poll::Ready(Some(Err(e)))
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > self.remaining {
                        self.remaining = 0;
                        let limit = self.limit;
                        return self.fail(Box::new(BodyTooLarge { limit }));
                    }
                    self.remaining -= n;
                }
                self.progressed = true;
                if self.inner.is_end_stream() {
                    self.state.set(DONE);
                } else if std::mem::take(&mut self.waiting) {
                    self.state.set(READING);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => self.fail(Box::new(RequestBodyError::from_hyper(e))),
            Poll::Ready(None) => {
                self.state.set(DONE);
                self.sleep = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if !std::mem::replace(&mut self.waiting, true) {
                    self.state.set(WAITING);
                }
                // Armed on the first wait, moved (not re-armed) after progress.
                let at = Instant::now() + self.idle;
                match &mut self.sleep {
                    Some(s) => {
                        if std::mem::take(&mut self.progressed) {
                            s.as_mut().reset(at);
                        }
                    }
                    None => {
                        self.progressed = false;
                        self.sleep = Some(Box::pin(tokio::time::sleep_until(at)));
                    }
                }
                match self.sleep.as_mut().map(|s| s.as_mut().poll(cx)) {
                    Some(Poll::Ready(())) => {
                        self.fail(Box::new(RequestBodyError::new(RequestBodyKind::TimedOut)))
                    }
                    _ => Poll::Pending,
                }
            }
        }
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Self::Empty => "Empty",
            Self::Full(_) => "Full",
            Self::Incoming(_) => "Incoming",
            Self::Limited(_) => "Limited",
            Self::H1(_) => "H1",
            Self::Boxed(_) => "Boxed",
        };
        f.debug_tuple("Body").field(&kind).finish()
    }
}

/// A client body's read error, as the client's fault.
fn boxed(e: hyper::Error) -> BoxError {
    Box::new(RequestBodyError::from_hyper(e))
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
            Self::Limited(u) => u.poll_frame(cx),
            Self::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Full(b) => b.is_none(),
            Self::Incoming(b) => b.is_end_stream(),
            Self::Limited(u) => u.inner.is_end_stream(),
            Self::H1(b) => b.is_end_stream(),
            Self::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Incoming(b) => b.size_hint(),
            Self::Limited(u) => u.inner.size_hint(),
            Self::H1(b) => b.size_hint(),
            Self::Boxed(b) => b.size_hint(),
        }
    }
}
