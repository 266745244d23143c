//! The WebSocket of the meetings service (`GET /ws`, `GET /api/meetings/{id}/ws`): every
//! text or binary message is echoed back; pings are answered and closes completed by
//! tungstenite itself.

use futures_util::{SinkExt, StreamExt};
use http::header::{HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::body::{self, MockBody};
use super::state::State;

/// Whether a header holds `token` in its comma-separated list (case-insensitive).
fn has_token(value: Option<&HeaderValue>, token: &str) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Answers a WebSocket handshake with 101 and echoes on the upgraded connection, or
/// answers 426 when the request is not a handshake.
pub(crate) fn upgrade(state: &State, mut req: Request<Incoming>) -> Response<MockBody> {
    let headers = req.headers();
    let key = headers.get(SEC_WEBSOCKET_KEY);
    let is_handshake = has_token(headers.get(CONNECTION), "upgrade")
        && has_token(headers.get(UPGRADE), "websocket")
        && headers
            .get("sec-websocket-version")
            .is_some_and(|v| v == "13");
    let accept = match key {
        Some(key) if is_handshake => derive_accept_key(key.as_bytes()),
        _ => {
            let mut res = body::error(
                StatusCode::UPGRADE_REQUIRED,
                "expected a WebSocket handshake",
            );
            res.headers_mut()
                .insert(UPGRADE, HeaderValue::from_static("websocket"));
            return res;
        }
    };
    let Ok(accept) = HeaderValue::from_str(&accept) else {
        return body::error(StatusCode::INTERNAL_SERVER_ERROR, "bad accept key");
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                echo(ws, shutdown).await;
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let mut res = body::response(StatusCode::SWITCHING_PROTOCOLS, MockBody::empty());
    let headers = res.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    res
}

/// Echoes data messages until the peer closes, the connection breaks or the mock shuts down.
async fn echo(mut ws: WebSocketStream<TokioIo<Upgraded>>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let message = tokio::select! {
            message = ws.next() => message,
            _ = shutdown.changed() => {
                let _ = ws.close(None).await;
                return;
            }
        };
        match message {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                if ws.send(message).await.is_err() {
                    return;
                }
            }
            // Pongs to pings and the reply to a close are queued by tungstenite and go out
            // on the next read.
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(error = %e, "websocket closed with an error");
                return;
            }
            None => return,
        }
    }
}
