//! Request ids: accepted from the client when sane, generated otherwise,
//! forwarded upstream and returned to the client.

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

/// `X-Request-Id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being handled (a request extension).
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

/// Longest client-supplied id we keep; longer ones are replaced.
const MAX_LEN: usize = 128;

/// Returns the client's `X-Request-Id` if it is short visible ASCII, or a
/// fresh random 128-bit id in hex.
pub fn accept_or_generate(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= MAX_LEN && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    generate()
}

/// A fresh random id: 32 lowercase hex digits.
pub fn generate() -> HeaderValue {
    let mut buf = [0u8; 32];
    hex_into(&mut buf, &fastrand::u128(..).to_be_bytes());
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Writes `bytes` in lower-case hex into `out` (twice as long): request,
/// trace and span ids, with no formatter on the request path.
pub fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 15)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_client_ids_and_replaces_others() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(accept_or_generate(&h), "abc-123");
        h.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(accept_or_generate(&h), "has space");
        h.insert(
            X_REQUEST_ID,
            HeaderValue::from_str(&"x".repeat(129)).unwrap(),
        );
        assert_eq!(accept_or_generate(&h).len(), 32);
    }

    #[test]
    fn generated_ids_are_hex_and_distinct() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
    }
}
