//! Errors of the upstream client.

use std::io;

/// Why talking to an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The TCP connection could not be established.
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    /// The TCP connection was not established in time.
    #[error("connect timed out")]
    ConnectTimeout,
    /// The upstream closed the connection before a complete response head.
    #[error("upstream closed the connection before responding")]
    Closed,
    /// The connection failed while exchanging the request or response.
    #[error("upstream connection error: {0}")]
    Io(#[source] io::Error),
    /// The upstream sent something that is not valid HTTP/1.1.
    #[error("invalid response from upstream: {0}")]
    Protocol(&'static str),
    /// The response body stalled past `body_idle_timeout` or outlasted
    /// `body_timeout`.
    #[error("upstream response body timed out")]
    BodyTimeout,
}
