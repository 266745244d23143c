//! The live SLO page: `/slo/ui`, and `/slo` when the request's `Accept`
//! prefers `text/html` over `application/json`.
//!
//! One HTML document (`slo_page.html`), its style and script inline, built
//! into the binary: no external script, font or image, so it works on an
//! air-gapped host. The script polls `/slo` (JSON) and redraws the tables
//! and a canvas chart in place; it writes data into the DOM with
//! `textContent` only (SLO and route names come from config, treated as
//! untrusted). The page is served with a Content-Security-Policy that allows
//! exactly its one inline script and one inline style by SHA-256 hash
//! (computed once from the embedded file), `connect-src 'self'` for the
//! polling, and Trusted Types enforcement so an HTML sink can never take a
//! string.
//!
//! Negotiation follows RFC 9110 §12.5.1: the most specific media range that
//! matches a type gives its quality (`q`, default 1); HTML is served only
//! when its quality is strictly higher than JSON's, so no `Accept`, `*/*`
//! (curl), `application/json` and Prometheus-style lists keep JSON, and a
//! browser's `text/html,…,*/*;q=0.8` gets the page.

use std::sync::LazyLock;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response};
use sha2::{Digest, Sha256};

use crate::body::Body;

/// The page, as served.
const PAGE: &str = include_str!("slo_page.html");

/// Media ranges read from `Accept` (all values together); the rest are
/// ignored, so a huge header costs bounded work.
const MAX_RANGES: usize = 64;

/// What `/slo` answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The JSON report (the default).
    Json,
    /// The HTML page.
    Html,
}

/// The representation of `/slo` that `headers` (`Accept`) prefer: HTML only
/// when `text/html` has a strictly higher quality than `application/json`.
pub fn negotiate(headers: &HeaderMap) -> Format {
    let html = quality(headers, "text", "html");
    let json = quality(headers, "application", "json");
    if html > json {
        Format::Html
    } else {
        Format::Json
    }
}

/// The quality (0..=1000, thousandths) `Accept` gives `ty/sub`: that of the
/// most specific matching range (`ty/sub`, then `ty/*`, then `*/*`), the
/// highest among equally specific ones; 1000 when there is no `Accept` at
/// all, 0 when no range matches. A range with a malformed `q` is ignored.
fn quality(headers: &HeaderMap, ty: &str, sub: &str) -> u16 {
    let mut values = headers.get_all(header::ACCEPT).iter().peekable();
    if values.peek().is_none() {
        return 1000;
    }
    let mut best: Option<(u8, u16)> = None;
    let ranges = values
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .take(MAX_RANGES);
    for range in ranges {
        let mut parts = range.split(';');
        let Some((t, s)) = parts.next().and_then(|m| m.trim().split_once('/')) else {
            continue;
        };
        let (t, s) = (t.trim(), s.trim());
        let specificity = match (t == "*", s == "*") {
            (true, true) => 0,
            (false, true) if t.eq_ignore_ascii_case(ty) => 1,
            (false, false) if t.eq_ignore_ascii_case(ty) && s.eq_ignore_ascii_case(sub) => 2,
            _ => continue,
        };
        let mut q = Some(1000);
        for param in parts {
            if let Some((k, v)) = param.split_once('=') {
                if k.trim().eq_ignore_ascii_case("q") {
                    q = parse_q(v.trim());
                    // Parameters after q are accept-ext, not the range's.
                    break;
                }
            }
        }
        let Some(q) = q else { continue };
        best = match best {
            Some((bs, bq)) if bs > specificity || (bs == specificity && bq >= q) => best,
            _ => Some((specificity, q)),
        };
    }
    best.map_or(0, |(_, q)| q)
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in
/// thousandths.
fn parse_q(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// The contents of the first `<open…>…</close>` element of `page`.
fn inline_element<'a>(page: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = page.find(open)?;
    let body = start + page.get(start..)?.find('>')? + 1;
    let end = body + page.get(body..)?.find(close)?;
    page.get(body..end)
}

/// `'sha256-…'`: a CSP hash source of `text`.
fn hash_source(text: &str) -> String {
    format!("'sha256-{}'", base64(&Sha256::digest(text.as_bytes())))
}

/// Standard base64 with padding (CSP hash sources use it).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            let c = if i <= chunk.len() {
                ALPHABET
                    .get((n >> (18 - 6 * i) & 63) as usize)
                    .copied()
                    .unwrap_or(b'=')
            } else {
                b'='
            };
            out.push(char::from(c));
        }
    }
    out
}

/// The page's Content-Security-Policy: nothing but its own inline script
/// and style (by hash), polling its own origin, and `data:` images (the
/// empty favicon).
fn policy(page: &str) -> String {
    let hashes = |open, close| {
        inline_element(page, open, close).map_or_else(|| "'none'".to_owned(), hash_source)
    };
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'; \
         require-trusted-types-for 'script'; trusted-types 'none'",
        hashes("<script", "</script>"),
        hashes("<style", "</style>"),
    )
}

static CSP: LazyLock<HeaderValue> = LazyLock::new(|| {
    HeaderValue::from_str(&policy(PAGE))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
});

/// The page with its headers: the CSP, `Cache-Control: no-store` (live
/// data), `X-Content-Type-Options: nosniff`, no referrer.
pub fn page() -> Response<Body> {
    let mut r = Response::new(Body::full(Bytes::from_static(PAGE.as_bytes())));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CONTENT_SECURITY_POLICY, CSP.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn accept(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::ACCEPT, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn json_stays_the_default_and_browsers_get_the_page() {
        use Format::{Html, Json};
        let cases: &[(&[&str], Format)] = &[
            (&[], Json),
            (&["*/*"], Json), // curl
            (&["application/json"], Json),
            (&["text/html"], Html),
            (&["TEXT/HTML"], Html),
            // Chromium and Firefox navigations.
            (
                &["text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"],
                Html,
            ),
            (
                &["text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"],
                Html,
            ),
            // Prometheus' scrape Accept.
            (
                &["application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"],
                Json,
            ),
            (&["text/*"], Html),
            (&["application/*"], Json),
            (&["text/html;q=0.9, application/json"], Json),
            (&["text/html, application/json"], Json), // a tie keeps JSON
            (&["application/json;q=0.5, text/html;q=0.501"], Html),
            (&["text/html;q=0"], Json),
            (&["*/*;q=0.5, text/html;q=0.1"], Json), // the specific range wins
            (&["text/*;q=0.1, text/html;q=0.9, */*;q=0.2"], Html),
            (&["text/html;level=1;q=0.7, */*;q=0.6"], Html),
            (&["text/html;q=0.7;ext=1, */*;q=0.6"], Html),
            // Two headers are one list.
            (&["application/json;q=0.2", "text/html"], Html),
            // Malformed q: that range is ignored.
            (&["text/html;q=2, application/json;q=0.1"], Json),
            (&["text/html;q=0.1234"], Json),
            (&["text/html;q=abc"], Json),
            (&["text/html;q=1.5"], Json),
            (&["html, text, /, ;;, */"], Json),
            (&["image/png"], Json), // nothing acceptable: the default
        ];
        for (values, want) in cases {
            assert_eq!(negotiate(&accept(values)), *want, "Accept: {values:?}");
        }
        // Bounded: ranges past the cap are not read.
        let long = format!("{}text/html", "a/b, ".repeat(MAX_RANGES));
        assert_eq!(negotiate(&accept(&[&long])), Format::Json);
    }

    #[test]
    fn q_values_parse_as_the_grammar_says() {
        for (v, q) in [
            ("1", Some(1000)),
            ("1.", Some(1000)),
            ("1.000", Some(1000)),
            ("0", Some(0)),
            ("0.8", Some(800)),
            ("0.05", Some(50)),
            ("0.001", Some(1)),
            ("1.001", None),
            ("0.0001", None),
            ("2", None),
            ("", None),
            ("-0", None),
            ("0.+1", None),
        ] {
            assert_eq!(parse_q(v), q, "{v:?}");
        }
    }

    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
        // sha256("") as CSP writes it (`openssl dgst -sha256 -binary | base64`).
        assert_eq!(
            hash_source(""),
            "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"
        );
    }

    #[test]
    fn the_page_is_self_contained_and_its_policy_allows_exactly_its_inline_code() {
        // One script and one style, inline; nothing loaded from elsewhere.
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert_eq!(PAGE.matches("<style").count(), 1);
        for banned in [
            "src=",
            "href=\"http",
            "url(",
            "@import",
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            " style=",
            " onload=",
            " onclick=",
            "eval(",
        ] {
            assert!(!PAGE.contains(banned), "the page contains {banned:?}");
        }
        let script = inline_element(PAGE, "<script", "</script>").unwrap();
        let style = inline_element(PAGE, "<style", "</style>").unwrap();
        assert!(script.contains("textContent") && style.contains("canvas"));
        let csp = policy(PAGE);
        assert!(csp.starts_with("default-src 'none'; "), "{csp}");
        assert!(csp.contains(&format!("script-src {};", hash_source(script))));
        assert!(csp.contains(&format!("style-src {};", hash_source(style))));
        assert!(csp.contains("connect-src 'self'; img-src data:;"));

        let r = page();
        let h = r.headers();
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], csp.as_str());
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
}
