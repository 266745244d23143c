//! What may be compressed, as pure functions of the response head, and the
//! header changes a compressed response gets.

use http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE,
    ETAG, VARY,
};
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::config::{Algorithm, CompressionLevel, RouteCompressionConfig};

/// A route's compression rules, built once per config load.
#[derive(Debug, Clone)]
pub struct RoutePolicy {
    /// Codings in server preference order.
    pub algorithms: Vec<Algorithm>,
    /// Media ranges, lowercase: `(type, subtype)` where either may be `*`
    /// and the subtype may be `*+suffix`.
    types: Vec<(String, String)>,
    /// Responses declaring fewer bytes are sent as is.
    pub min_size: u64,
    /// Encoder level.
    pub level: CompressionLevel,
}

impl RoutePolicy {
    /// From validated config.
    pub fn new(cfg: &RouteCompressionConfig) -> Self {
        let types = cfg
            .content_types
            .iter()
            .filter_map(|t| {
                let (a, b) = t.split_once('/')?;
                Some((a.to_ascii_lowercase(), b.to_ascii_lowercase()))
            })
            .collect();
        Self {
            algorithms: cfg.algorithms.clone(),
            types,
            min_size: cfg.min_size.0,
            level: cfg.level,
        }
    }

    /// Whether the media type of `content_type` is on the allow-list.
    pub fn type_allowed(&self, content_type: &str) -> bool {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        let Some((ty, sub)) = essence.split_once('/') else {
            return false;
        };
        self.types.iter().any(|(t, s)| {
            let type_ok = t == "*" || t.eq_ignore_ascii_case(ty);
            let sub_ok = s == "*"
                || s.eq_ignore_ascii_case(sub)
                || s.strip_prefix('*').is_some_and(|suffix| {
                    sub.len() > suffix.len()
                        && sub
                            .get(sub.len() - suffix.len()..)
                            .is_some_and(|end| end.eq_ignore_ascii_case(suffix))
                });
            type_ok && sub_ok
        })
    }

    /// Whether a response with `status` and `headers` would be compressed
    /// for a client that accepts a coding: so whether it varies on
    /// `Accept-Encoding`. Not for: 1xx (101 upgrades included), 204, 304,
    /// 206 or any `Content-Range`; a body already coded (anything but
    /// `identity`); `Cache-Control: no-transform`; a media type not on the
    /// list (or none); a declared `Content-Length` under `min_size`.
    pub fn eligible(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        if status.is_informational()
            || matches!(
                status,
                StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED | StatusCode::PARTIAL_CONTENT
            )
            || headers.contains_key(CONTENT_RANGE)
        {
            return false;
        }
        let coded = headers.get_all(CONTENT_ENCODING).iter().any(|v| {
            v.to_str().map_or(true, |v| {
                v.split(',')
                    .map(str::trim)
                    .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
            })
        });
        if coded || no_transform(headers) {
            return false;
        }
        let typed = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| self.type_allowed(t));
        if !typed {
            return false;
        }
        // A length we cannot read is treated as unknown: compressed.
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        declared.is_none_or(|n| n >= self.min_size)
    }
}

/// `Cache-Control: no-transform` (RFC 9111 5.2.2.6) in any field.
pub fn no_transform(headers: &HeaderMap) -> bool {
    headers.get_all(CACHE_CONTROL).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
        })
    })
}

/// Adds `Accept-Encoding` to `Vary` unless it (or `*`) is already there.
pub fn vary_accept_encoding(headers: &mut HeaderMap) {
    let present = headers.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .map(str::trim)
                .any(|n| n == "*" || n.eq_ignore_ascii_case(http::header::ACCEPT_ENCODING.as_str()))
        })
    });
    if !present {
        headers.append(VARY, HeaderValue::from_static("accept-encoding"));
    }
}

/// The head of a response about to be compressed with `coding`:
/// `Content-Encoding` set, `Content-Length` and `Accept-Ranges` removed
/// (ranges of the identity body do not apply to the coded one), a strong
/// `ETag` made weak (RFC 9110 8.8.1: the coded bytes differ, yet the
/// representation is the same, so a conditional request still matches:
/// `If-None-Match` compares weakly, and upstreams answer it with 304 as
/// nginx's gzip filter relies on).
pub fn mark_compressed(headers: &mut HeaderMap, coding: Algorithm) {
    headers.remove(CONTENT_ENCODING);
    headers.insert(CONTENT_ENCODING, HeaderValue::from_static(coding.as_str()));
    headers.remove(CONTENT_LENGTH);
    headers.remove(ACCEPT_RANGES);
    if let Some(etag) = headers.get(ETAG) {
        let b = etag.as_bytes();
        if b.first() == Some(&b'"') {
            let mut weak = Vec::with_capacity(b.len() + 2);
            weak.extend_from_slice(b"W/");
            weak.extend_from_slice(b);
            match HeaderValue::from_bytes(&weak) {
                Ok(v) => {
                    headers.insert(ETAG, v);
                }
                Err(_) => {
                    headers.remove(ETAG);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    fn policy() -> RoutePolicy {
        RoutePolicy::new(&RouteCompressionConfig::default())
    }

    #[test]
    fn content_types() {
        let p = policy();
        for (t, want) in [
            ("text/html", true),
            ("TEXT/Plain; charset=utf-8", true),
            ("text/event-stream", true),
            ("application/json", true),
            ("application/json;charset=utf-8", true),
            ("application/problem+json", true),
            ("application/vnd.api+json", true),
            ("application/+json", false),
            ("application/atom+xml", true),
            ("image/svg+xml", true),
            ("image/png", false),
            ("application/octet-stream", false),
            ("application/zip", false),
            ("", false),
            ("json", false),
        ] {
            assert_eq!(p.type_allowed(t), want, "{t:?}");
        }
        let any = RoutePolicy::new(&RouteCompressionConfig {
            content_types: vec!["*/*".into()],
            ..RouteCompressionConfig::default()
        });
        assert!(any.type_allowed("image/png"));
    }

    #[test]
    fn eligibility() {
        let p = policy();
        let ok = StatusCode::OK;
        let json = [("content-type", "application/json")];
        assert!(p.eligible(ok, &h(&json)));
        assert!(p.eligible(ok, &h(&[json[0], ("content-length", "1024")])));
        assert!(!p.eligible(ok, &h(&[json[0], ("content-length", "1023")])));
        assert!(p.eligible(ok, &h(&[json[0], ("content-encoding", "identity")])));
        assert!(!p.eligible(ok, &h(&[json[0], ("content-encoding", "gzip")])));
        assert!(!p.eligible(ok, &h(&[json[0], ("content-encoding", "identity, br")])));
        assert!(!p.eligible(
            ok,
            &h(&[json[0], ("cache-control", "public, No-Transform")])
        ));
        assert!(!p.eligible(ok, &h(&[json[0], ("content-range", "bytes 0-1/2")])));
        assert!(!p.eligible(ok, &h(&[("content-type", "image/png")])));
        assert!(!p.eligible(ok, &h(&[])));
        for s in [101, 103, 204, 206, 304] {
            assert!(
                !p.eligible(StatusCode::from_u16(s).unwrap(), &h(&json)),
                "{s}"
            );
        }
        for s in [201, 404, 500] {
            assert!(
                p.eligible(StatusCode::from_u16(s).unwrap(), &h(&json)),
                "{s}"
            );
        }
    }

    #[test]
    fn head_changes() {
        let mut m = h(&[
            ("content-length", "5000"),
            ("accept-ranges", "bytes"),
            ("etag", "\"v1\""),
            ("vary", "Origin"),
        ]);
        vary_accept_encoding(&mut m);
        mark_compressed(&mut m, Algorithm::Br);
        assert_eq!(m["content-encoding"], "br");
        assert!(!m.contains_key("content-length") && !m.contains_key("accept-ranges"));
        assert_eq!(m["etag"], "W/\"v1\"");
        let vary: Vec<_> = m.get_all("vary").iter().collect();
        assert_eq!(vary, ["Origin", "accept-encoding"]);
        // Already there (any case), or `*`: not added twice.
        for v in ["Accept-Encoding", "origin, ACCEPT-ENCODING", "*"] {
            let mut m = h(&[("vary", v)]);
            vary_accept_encoding(&mut m);
            assert_eq!(m.get_all("vary").iter().count(), 1, "{v}");
        }
        // A weak ETag stays as it is.
        let mut m = h(&[("etag", "W/\"v1\"")]);
        mark_compressed(&mut m, Algorithm::Gzip);
        assert_eq!(m["etag"], "W/\"v1\"");
    }
}
