//! Entry points for the cargo-fuzz targets in `fuzz/` (not a public API).
//!
//! Each function feeds untrusted bytes to one parser the way the gateway
//! does at run time, through the crate's own code, and asserts the
//! invariants that must hold for any input. A panic here is the fuzzer's
//! signal, so harness set-up may fail loudly; the code under test never may.
//! The parsers themselves stay `pub(crate)` or private where they are.
#![allow(clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::body::Body;
use crate::config::{AuthProviderConfig, Config, UpstreamConfig};
use crate::middleware::auth::Verifier;
use crate::middleware::cache::codec;
use crate::middleware::cache::policy::{self, CacheControl, RouteRules};
use crate::middleware::cache::Entry;
use crate::path::{self, EncodedSlash, PathOptions};
use crate::upstream::h1::{self, Exchange};
use crate::upstream::Upstream;

/// The upstream side of [`h1_response`]: a loopback listener and a pool
/// pointing at it, on a current-thread runtime built once per process.
struct H1Rig {
    rt: tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    upstream: Upstream,
}

fn h1_rig() -> &'static H1Rig {
    static RIG: OnceLock<H1Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        // No idle connections: every input gets a fresh connection, so a
        // run does not depend on the inputs before it.
        let cfg: UpstreamConfig = toml::from_str(&format!(
            "endpoints = [\"{addr}\"]\npool_max_idle = 0\nconnect_timeout = \"5s\""
        ))
        .expect("upstream config");
        let upstream = Upstream::new("fuzz", &cfg, None);
        H1Rig {
            rt,
            listener,
            upstream,
        }
    })
}

/// Upstream response bytes through the real client: `h1::send` on a
/// loopback connection whose peer answers the request with `data` (written
/// in three pieces, so heads and chunks also arrive split) and then closes.
/// The response head is parsed, the body decoded with its framing
/// (`Content-Length`, chunked, close-delimited) and collected.
///
/// `data` starting with `HEAD\n` makes the request a `HEAD` (a body that
/// must then be ignored); the rest is the response.
///
/// Invariants: the response forwarded has one framing (not both
/// `Transfer-Encoding` and `Content-Length`, at most one `Content-Length`),
/// and a body that completes without error has exactly the length that
/// `Content-Length` declares (none on HEAD, 1xx, 204, 304).
pub fn h1_response(data: &[u8]) {
    let (method, data) = match data.strip_prefix(b"HEAD\n") {
        Some(rest) => (Method::HEAD, rest),
        None => (Method::GET, data),
    };
    let rig = h1_rig();
    rig.rt.block_on(async {
        let upstream_side = async {
            let Ok((mut sock, _)) = rig.listener.accept().await else {
                return;
            };
            // Read the request head before answering, so closing never
            // resets a connection with unread bytes.
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let (a, rest) = data.split_at(data.len() / 3);
            let (b, c) = rest.split_at(rest.len() / 2);
            for piece in [a, b, c] {
                if sock.write_all(piece).await.is_err() {
                    return;
                }
                // Let the client read what has arrived so far.
                tokio::task::yield_now().await;
            }
            let _ = sock.shutdown().await;
        };
        let client_side = async {
            let Ok(guard) = rig.upstream.pick(&[]) else {
                return;
            };
            let mut req = Request::new(Body::Empty);
            *req.method_mut() = method.clone();
            *req.uri_mut() = http::Uri::from_static("/fuzz");
            let Ok(exchange) = h1::send(
                guard,
                rig.upstream.pool,
                &rig.upstream.timers,
                req,
                &h1::Plain,
            )
            .await
            else {
                return;
            };
            let resp = match exchange {
                Exchange::Response(r) => r,
                Exchange::Upgrade(..) => return,
            };
            let h = resp.headers();
            // One framing downstream (RFC 9112 §6.3): never both, and one
            // Content-Length value at most.
            assert!(
                !(h.contains_key(TRANSFER_ENCODING) && h.contains_key(CONTENT_LENGTH)),
                "Transfer-Encoding and Content-Length both forwarded"
            );
            assert!(
                h.get_all(CONTENT_LENGTH).iter().count() <= 1,
                "several Content-Length fields forwarded"
            );
            let declared = single_content_length(h);
            let status = resp.status();
            let Ok(body) = resp.into_body().collect().await else {
                return;
            };
            let body = body.to_bytes();
            if method == Method::HEAD
                || status.is_informational()
                || status == StatusCode::NO_CONTENT
                || status == StatusCode::NOT_MODIFIED
            {
                assert!(body.is_empty(), "body on a response that has none");
            } else if let Some(n) = declared {
                assert_eq!(
                    body.len() as u64,
                    n,
                    "body length differs from Content-Length"
                );
            }
        };
        tokio::join!(upstream_side, client_side);
    });
}

/// The one `Content-Length` of a response without `Transfer-Encoding`.
fn single_content_length(h: &HeaderMap) -> Option<u64> {
    if h.contains_key(TRANSFER_ENCODING) {
        return None;
    }
    let mut values = h.get_all(CONTENT_LENGTH).iter();
    let v = values.next()?;
    if values.next().is_some() {
        return None;
    }
    v.to_str().ok()?.trim().parse().ok()
}

/// Header lines `name: value` (one per line); lines starting with `> `
/// are request headers, the others response headers. Lines that are not a
/// valid field are skipped.
fn header_lines(data: &[u8]) -> (HeaderMap, HeaderMap) {
    let mut req = HeaderMap::new();
    let mut resp = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (map, line) = match line.strip_prefix(b"> ") {
            Some(l) => (&mut req, l),
            None => (&mut resp, line),
        };
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        let value = value[1..].trim_ascii();
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.trim_ascii()),
            HeaderValue::from_bytes(value),
        ) {
            map.append(n, v);
        }
    }
    (req, resp)
}

/// Times an entry is looked at: its whole life and far past it.
const LOOK_AT: [Duration; 6] = [
    Duration::ZERO,
    Duration::from_millis(999),
    Duration::from_secs(1),
    Duration::from_secs(3600),
    Duration::from_secs(100 * 365 * 86_400),
    Duration::MAX,
];

/// A fixed wall clock (Unix ms) so runs are reproducible.
const NOW_UNIX_MS: u64 = 1_780_000_000_000;

/// `Cache-Control` and `Age` as the cache reads them: the directives, the
/// storage decision for a `200` to a GET (with the request's headers), and
/// for a storable response the entry's age, freshness and remaining life
/// at several later times, then its Redis form decoded back.
///
/// `data`: header lines, see [`header_lines`].
pub fn cache_control(data: &[u8]) {
    let (req, resp) = header_lines(data);
    let cc = CacheControl::parse(&resp);
    let rules = RouteRules {
        default_ttl: Duration::from_secs(5),
        share_authorized: false,
        stale_while_revalidate: Duration::from_secs(1),
        stale_if_error: Duration::from_secs(2),
    };
    let Some(life) = policy::storable(&req, StatusCode::OK, &resp, &rules) else {
        return;
    };
    assert!(
        !cc.no_store && !cc.private && !cc.no_cache,
        "stored: {cc:?}"
    );
    let _ = policy::explicitly_shared(&resp);
    let initial_age = policy::age_seconds(&resp);
    let stored = Instant::now();
    let vary_values = life.vary.iter().map(|n| req.get(n).cloned()).collect();
    let entry = Entry {
        status: StatusCode::OK,
        headers: resp,
        body: Bytes::from_static(b"body"),
        stored,
        initial_age,
        life,
        vary_values,
    };
    assert!(entry.matches(&req), "a variant must match its own request");
    look_at(&entry, stored);
}

/// Ages, freshness, remaining life and the Redis round trip of `e` at
/// times from `stored` on.
fn look_at(e: &Entry, stored: Instant) {
    let mut last_age = Duration::ZERO;
    for d in LOOK_AT {
        let Some(now) = stored.checked_add(d) else {
            continue;
        };
        let age = e.age(now);
        assert!(age >= last_age, "age went back: {age:?} < {last_age:?}");
        last_age = age;
        let _ = e.freshness(now);
        let _ = codec::remaining_life(e, now);
        let bytes = Bytes::from(codec::encode(e, now, NOW_UNIX_MS));
        let back = codec::decode(bytes, now, NOW_UNIX_MS).expect("an encoded entry decodes");
        assert_same(e, &back);
    }
}

fn assert_same(a: &Entry, b: &Entry) {
    assert_eq!(a.status, b.status);
    assert_eq!(a.headers, b.headers);
    assert_eq!(a.body, b.body);
    assert_eq!(a.life, b.life);
    assert_eq!(a.vary_values, b.vary_values);
}

/// The Redis entry codec on untrusted bytes: decode, and for what decodes,
/// freshness and remaining life over time and encode → decode giving the
/// same entry back.
pub fn cache_codec(data: &[u8]) {
    let now = Instant::now();
    let Some(e) = codec::decode(Bytes::copy_from_slice(data), now, NOW_UNIX_MS) else {
        return;
    };
    let bytes = Bytes::from(codec::encode(&e, now, NOW_UNIX_MS));
    let back = codec::decode(bytes, now, NOW_UNIX_MS).expect("a re-encoded entry decodes");
    assert_same(&e, &back);
    look_at(&e, now);
}

/// The edge's path normaliser, with and without kept encoded slashes, and
/// on a URI as the edge calls it. For every accepted path the result is in
/// normal form: it starts with `/`, has no empty segment but a trailing
/// one, no `.` or `..` segment (also not between kept `%2F`s), no `;`,
/// `\`, control byte or escaped unreserved character, and normalising it
/// again gives it back unchanged.
pub fn path(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    for encoded_slash in [EncodedSlash::Reject, EncodedSlash::Keep] {
        let opts = PathOptions { encoded_slash };
        let Ok(out) = path::normalize(raw, opts) else {
            continue;
        };
        if raw == "*" {
            assert_eq!(out, "*");
            continue;
        }
        assert_normal(&out, encoded_slash);
        let again = path::normalize(&out, opts);
        assert_eq!(
            again.as_deref(),
            Ok(&*out),
            "not idempotent: {raw:?} -> {out:?}"
        );
    }
    if raw.starts_with('/') {
        if let Ok(mut uri) = http::Uri::try_from(raw) {
            let query = uri.query().map(str::to_owned);
            if path::normalize_uri(&mut uri).is_ok() {
                assert_normal(uri.path(), EncodedSlash::Keep);
                assert_eq!(uri.query(), query.as_deref(), "query changed");
            }
        }
    }
}

fn assert_normal(out: &str, encoded_slash: EncodedSlash) {
    assert!(out.starts_with('/'), "not absolute: {out:?}");
    let body = &out[1..];
    let segments: Vec<&str> = body.split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        assert!(!seg.is_empty() || last, "empty segment in {out:?}");
        let pieces: Vec<&str> = if encoded_slash == EncodedSlash::Keep {
            seg.split("%2F").collect()
        } else {
            vec![seg]
        };
        for p in pieces {
            assert!(p != "." && p != "..", "dot segment in {out:?}");
        }
    }
    assert!(!out.contains("//"), "empty segment in {out:?}");
    let b = out.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        assert!(
            !c.is_ascii_control() && c != b';' && c != b'\\',
            "byte {c:#x} in {out:?}"
        );
        if c == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            let v = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
            let v = v.unwrap_or_else(|| panic!("bad escape in {out:?}"));
            assert!(
                !(v.is_ascii_alphanumeric() || b"-._~".contains(&v)),
                "escaped unreserved {v:#x} in {out:?}"
            );
            if encoded_slash == EncodedSlash::Reject {
                assert_ne!(v, b'/', "encoded slash kept in {out:?}");
            }
        }
    }
}

/// The HMAC secret of [`jwt`]'s provider (64 bytes: long enough for every
/// HMAC algorithm, RFC 7518 §3.2).
const JWT_SECRET: &str = "fuzz-secret-fuzz-secret-fuzz-secret-fuzz-secret-fuzz-secret-fuzz";
const JWT_SECRET_ENV: &str = "GATEWAY_FUZZ_JWT_SECRET";

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        std::env::set_var(JWT_SECRET_ENV, JWT_SECRET);
        let cfg: AuthProviderConfig = toml::from_str(&format!(
            r#"
            issuers = ["https://issuer.test"]
            audiences = ["gateway"]
            leeway = "30s"
            forward_claims = {{ sub = "x-user-id", roles = "x-user-roles" }}
            [[keys]]
            kid = "k1"
            algorithms = ["HS256"]
            secret_env = "{JWT_SECRET_ENV}"
            [[keys]]
            algorithms = ["HS256", "HS384"]
            secret_env = "{JWT_SECRET_ENV}"
            "#
        ))
        .expect("provider config");
        Verifier::new("fuzz", &cfg).expect("verifier")
    })
}

/// A bearer token through the provider's verification, as the auth layer
/// runs it: header pre-parse (`alg`, `kid`, `crit`), key choice, signature,
/// registered claims.
///
/// `data` starting with `T` is the rest as a raw token. Otherwise it is
/// `HEADER_JSON\nCLAIMS_JSON`, encoded and signed with the provider's
/// HS256 secret, so the claim checks (times, `iss`, `aud`) see arbitrary
/// JSON behind a valid signature.
pub fn jwt(data: &[u8]) {
    let v = verifier();
    if let Some(raw) = data.strip_prefix(b"T") {
        if let Ok(token) = std::str::from_utf8(raw) {
            let _ = jsonwebtoken::decode_header(token);
            let _ = v.check(token);
        }
        return;
    }
    let (header, claims) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"{}"[..]),
    };
    let mut token = base64url(header);
    token.push('.');
    token.push_str(&base64url(claims));
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let Ok(sig) =
        jsonwebtoken::crypto::sign(token.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
    else {
        return;
    };
    token.push('.');
    token.push_str(&sig);
    let checked = v.check(&token);
    // `Checked` is not nameable here; its Debug form says which it is.
    if format!("{checked:?}").starts_with("Ok(Valid(") {
        assert_accepted(header, claims);
    }
}

/// What a token the provider accepted must have had: no `crit` header, an
/// `exp`, the configured issuer and one configured audience.
fn assert_accepted(header: &[u8], claims: &[u8]) {
    let header: serde_json::Value = serde_json::from_slice(header).expect("accepted header");
    assert!(header.get("crit").is_none(), "accepted a crit header");
    let claims: serde_json::Value = serde_json::from_slice(claims).expect("accepted claims");
    assert!(claims.get("exp").is_some(), "accepted without exp");
    assert_eq!(
        claims["iss"], "https://issuer.test",
        "accepted another issuer"
    );
    let aud = &claims["aud"];
    let ok = aud == "gateway"
        || aud
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "gateway"));
    assert!(ok, "accepted another audience: {aud}");
}

/// Unpadded base64url (RFC 4648 §5), as JWS compact form uses.
fn base64url(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=c.len() {
            out.push(char::from(ABC[(n >> (18 - 6 * i)) as usize & 63]));
        }
    }
    out
}

/// `Accept-Encoding` fields (one per line of `data`, as several fields)
/// through the compression layer's negotiation, for every order of the
/// server's codings, and the cache's check of a stored coding.
///
/// Invariants: never panics; the coding chosen is one offered and one the
/// request accepts; identity is chosen when the header is over its bounds.
pub fn accept_encoding(data: &[u8]) {
    use crate::config::Algorithm::{Br, Gzip, Zstd};
    use crate::middleware::compression::accept::{self, Negotiated};
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(http::header::ACCEPT_ENCODING, v);
        }
    }
    let over = headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .map(HeaderValue::len)
        .sum::<usize>()
        > accept::MAX_HEADER_BYTES;
    for offered in [&[Zstd, Br, Gzip][..], &[Gzip, Br], &[Br], &[]] {
        match accept::negotiate(&headers, offered) {
            Negotiated::Coding(a) => {
                assert!(offered.contains(&a), "{a:?} not offered");
                assert!(
                    accept::accepts(&headers, Some(a.as_str())),
                    "{a:?} not accepted"
                );
                assert!(!over, "coded despite an over-long header");
            }
            Negotiated::Identity => {}
        }
    }
    for coding in [
        None,
        Some("gzip"),
        Some("deflate"),
        Some("identity"),
        Some("a, b"),
    ] {
        let _ = accept::accepts(&headers, coding);
    }
}

/// A config file's text through what `gateway check` runs: TOML parse,
/// path resolution, validation. File contents (secrets, PEM) are not read
/// by validation; none are touched.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut config) = Config::from_toml(text) else {
        return;
    };
    config.resolve_paths(std::path::Path::new("/nonexistent"));
    let _ = crate::config::validate::validate(&config);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn base64url_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url(i.as_bytes()), o);
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn jwt_harness_reaches_claim_checks() {
        // A signed token with good claims verifies: the harness's signing
        // matches the provider's key, so fuzzed claims are really checked.
        let claims = format!(
            r#"{{"exp":{},"iss":"https://issuer.test","aud":"gateway","sub":"u"}}"#,
            jsonwebtoken::get_current_timestamp() + 600
        );
        let header = br#"{"alg":"HS256","typ":"JWT"}"#;
        let mut token = base64url(header);
        token.push('.');
        token.push_str(&base64url(claims.as_bytes()));
        let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
        let sig =
            jsonwebtoken::crypto::sign(token.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
                .unwrap();
        token.push('.');
        token.push_str(&sig);
        let checked = verifier().check(&token).unwrap();
        assert!(format!("{checked:?}").starts_with("Valid"), "{checked:?}");
    }

    /// Every committed seed of every fuzz target, through its harness:
    /// inputs that once crashed are kept as seeds, so this is their
    /// regression test on the stable toolchain.
    #[test]
    fn committed_seed_corpora_pass() {
        type Harness = (&'static str, fn(&[u8]));
        let targets: [Harness; 7] = [
            ("h1_response", h1_response),
            ("path", path),
            ("cache_control", cache_control),
            ("cache_codec", cache_codec),
            ("jwt_preparse", jwt),
            ("config", config),
            ("accept_encoding", accept_encoding),
        ];
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        for (target, harness) in targets {
            let mut seeds = 0;
            for file in std::fs::read_dir(corpus.join(target)).unwrap() {
                let file = file.unwrap().path();
                if !file
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("seed-")
                {
                    continue;
                }
                let data = std::fs::read(&file).unwrap();
                let run = std::panic::catch_unwind(|| harness(&data));
                assert!(run.is_ok(), "{target}: {} fails", file.display());
                seeds += 1;
            }
            assert!(seeds >= 3, "{target}: only {seeds} seeds");
        }
    }
}
