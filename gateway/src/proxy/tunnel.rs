//! The byte tunnel of an upgraded (WebSocket) connection.

use hyper_util::rt::TokioIo;

use crate::upstream::h1::Conn;

/// Copies bytes both ways between the client's upgraded connection and
/// the upstream connection that answered `101`, until either side closes.
pub(super) async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: Conn) {
    let (mut up, early) = upstream.into_parts();
    let mut client = match client.await {
        Ok(c) => TokioIo::new(c),
        Err(e) => {
            tracing::debug!(error = %e, "client upgrade failed");
            return;
        }
    };
    // Bytes the upstream sent right after its 101 belong to the new protocol.
    if !early.is_empty() {
        if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut client, &early).await {
            tracing::debug!(error = %e, "upgraded connection closed early");
            return;
        }
    }
    match tokio::io::copy_bidirectional(&mut client, &mut up).await {
        Ok((to_up, to_client)) => tracing::debug!(to_up, to_client, "upgraded connection closed"),
        Err(e) => tracing::debug!(error = %e, "upgraded connection ended with an error"),
    }
}
