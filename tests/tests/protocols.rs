//! HTTP/2 (h2c) clients and WebSocket upgrades through the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use e2e::harness::{config, simple, start_gateway, WAIT};
use e2e::mock::{MockOptions, MockUpstream};
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn http2_prior_knowledge_clients_are_proxied() {
    let up = MockUpstream::start(MockOptions::default()).await.unwrap();
    let gw = start_gateway(config("", &simple("up", &[up.addr()], ""))).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    // Several concurrent streams on one connection.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let client = client.clone();
        let addr = gw.proxy_addr;
        tasks.push(tokio::spawn(async move {
            let req = Request::get(format!("http://{addr}/headers?i={i}"))
                .body(Full::<Bytes>::default())
                .unwrap();
            let resp = tokio::time::timeout(WAIT, client.request(req))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(resp.version(), http::Version::HTTP_2);
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["uri"], format!("/headers?i={i}"));
            assert_eq!(v["headers"]["via"], "2 gateway");
            assert_eq!(v["headers"]["x-forwarded-host"], addr.to_string());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled() {
    let up = MockUpstream::start(MockOptions::default()).await.unwrap();
    // Upgrades are forwarded only on routes with `websocket = true`.
    let routes = format!("{}websocket = true\n", simple("up", &[up.addr()], ""));
    let gw = start_gateway(config("", &routes)).await;
    let stream = tokio::net::TcpStream::connect(gw.proxy_addr).await.unwrap();
    let (mut ws, resp) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(format!("ws://{}/ws", gw.proxy_addr), stream),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().get("x-request-id").is_some());
    for i in 0..20 {
        let msg = format!("hello {i}");
        ws.send(Message::text(msg.clone())).await.unwrap();
        let echo = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), msg);
    }
    let big = vec![7u8; 256 * 1024];
    ws.send(Message::binary(big.clone())).await.unwrap();
    let echo = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo.into_data().as_ref(), big.as_slice());
    ws.close(None).await.unwrap();
}
