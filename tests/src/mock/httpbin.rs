//! httpbin-like endpoints for testing the gateway itself: sized bodies, delays, any status,
//! request-header echo, streaming uploads, cacheable responses and chosen response headers.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE,
};
use http::request::Parts;
use http::{Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};

use super::body::{self, drain, json, MockBody};
use super::query;
use super::state::State;

/// Longest delay `/delay/{ms}` waits (five minutes).
const MAX_DELAY_MS: u64 = 300_000;
/// Most headers `/response-headers` sets.
const MAX_RESPONSE_HEADERS: usize = 64;

const OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");

/// Reads and drops the request body, so the connection stays reusable; a broken body
/// answers 400.
async fn discard(body: Incoming) -> Result<u64, Response<MockBody>> {
    drain(body)
        .await
        .map_err(|_| body::error(StatusCode::BAD_REQUEST, "could not read request body"))
}

/// `GET /bytes/{n}`: exactly `n` bytes, streamed from a static buffer.
pub(crate) fn bytes(n: &str) -> Response<MockBody> {
    let Ok(n) = n.parse::<u64>() else {
        return body::error(StatusCode::BAD_REQUEST, "n must be a non-negative integer");
    };
    let mut res = body::response(StatusCode::OK, MockBody::Repeat { remaining: n });
    res.headers_mut().insert(CONTENT_TYPE, OCTET_STREAM);
    res.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(n));
    res
}

/// `GET|POST /delay/{ms}`: waits, then 200.
pub(crate) async fn delay(ms: &str, body: Incoming) -> Response<MockBody> {
    let Ok(ms) = ms.parse::<u64>() else {
        return body::error(StatusCode::BAD_REQUEST, "ms must be a non-negative integer");
    };
    if let Err(res) = discard(body).await {
        return res;
    }
    let ms = ms.min(MAX_DELAY_MS);
    super::timer::sleep(Duration::from_millis(ms)).await;
    json(StatusCode::OK, &json!({ "delay_ms": ms }))
}

/// `ANY /status/{code}`: that status (200..=599), with `{"status": code}` unless the status
/// forbids a body.
pub(crate) async fn status(code: &str, body: Incoming) -> Response<MockBody> {
    let status = code
        .parse::<u16>()
        .ok()
        .filter(|c| (200..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok());
    let Some(status) = status else {
        return body::error(StatusCode::BAD_REQUEST, "code must be within 200..=599");
    };
    if let Err(res) = discard(body).await {
        return res;
    }
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return body::response(status, MockBody::empty());
    }
    json(status, &json!({ "status": status.as_u16() }))
}

/// `GET /headers`: the request headers as received (values of a repeated header joined
/// with `", "`), with the method, URI and HTTP version.
pub(crate) fn headers(parts: &Parts) -> Response<MockBody> {
    let mut headers = Map::new();
    for name in parts.headers.keys() {
        let values: Vec<String> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        headers.insert(name.as_str().to_owned(), values.join(", ").into());
    }
    json(
        StatusCode::OK,
        &json!({
            "headers": headers,
            "method": parts.method.as_str(),
            "uri": parts.uri.to_string(),
            "version": format!("{:?}", parts.version),
        }),
    )
}

/// `POST|PUT /upload`: reads the body as it streams in and reports its size.
pub(crate) async fn upload(body: Incoming) -> Response<MockBody> {
    match discard(body).await {
        Ok(received) => json(StatusCode::OK, &json!({ "received": received })),
        Err(res) => res,
    }
}

/// `GET /cache/{secs}`: cacheable for `secs`, with a count of how often the mock served it.
pub(crate) fn cache(state: &State, secs: &str) -> Response<MockBody> {
    let Ok(secs) = secs.parse::<u64>() else {
        return body::error(
            StatusCode::BAD_REQUEST,
            "secs must be a non-negative integer",
        );
    };
    let served = state.cache_served.fetch_add(1, Relaxed) + 1;
    let mut res = json(
        StatusCode::OK,
        &json!({ "served": served, "max_age": secs }),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("public, max-age={secs}")) {
        res.headers_mut().insert(CACHE_CONTROL, value);
    }
    res
}

/// `GET /response-headers?Name=Value&...`: sets those headers on the response.
pub(crate) fn response_headers(parts: &Parts) -> Response<MockBody> {
    let mut set = HeaderMap::new();
    let mut echoed = Map::new();
    for (name, value) in query::pairs(parts.uri.query()).take(MAX_RESPONSE_HEADERS) {
        let (Ok(header), Ok(header_value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) else {
            return body::error(StatusCode::BAD_REQUEST, "invalid header name or value");
        };
        if header == CONTENT_LENGTH || header == http::header::TRANSFER_ENCODING {
            return body::error(StatusCode::BAD_REQUEST, "framing headers cannot be set");
        }
        echoed.insert(header.as_str().to_owned(), Value::from(value.as_ref()));
        set.append(header, header_value);
    }
    let mut res = json(StatusCode::OK, &echoed);
    // Extending replaces a default header (content-type) and keeps repeated names.
    res.headers_mut().extend(set);
    res
}
