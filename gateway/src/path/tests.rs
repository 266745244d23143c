#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

const REJECT: PathOptions = PathOptions {
    encoded_slash: EncodedSlash::Reject,
};
const KEEP: PathOptions = PathOptions {
    encoded_slash: EncodedSlash::Keep,
};

#[test]
fn normal_form_table() {
    let cases: &[(&str, &str)] = &[
        ("/", "/"),
        ("/api/hello", "/api/hello"),
        ("/api/hello/", "/api/hello/"),
        // dot segments, RFC 3986 §5.2.4
        ("/api/hello/../profile", "/api/profile"),
        ("/a/./b/.", "/a/b/"),
        ("/a/b/..", "/a/"),
        ("/a/b/../", "/a/"),
        ("/a/.", "/a/"),
        ("/.", "/"),
        ("/..", "/"),
        // `..` above the root is dropped
        ("/../a", "/a"),
        ("/a/../../../b", "/b"),
        ("/../../", "/"),
        // encoded dots are dots
        ("/api/hello/%2e%2e/profile", "/api/profile"),
        ("/api/hello/%2e%2E/profile", "/api/profile"),
        ("/api/hello/.%2E/profile", "/api/profile"),
        ("/api/hello/%2E./profile", "/api/profile"),
        ("/a/%2e/b", "/a/b"),
        ("/a/%2e%2e%2e/b", "/a/.../b"),
        // unreserved decoded, other hex upper-cased, not decoded
        ("/%41", "/A"),
        ("/api/%68ello", "/api/hello"),
        ("/%7e%7E%2d%5F%30", "/~~-_0"),
        ("/a%20b", "/a%20b"),
        ("/a%2ab%3a", "/a%2Ab%3A"),
        ("/%252e%252e/x", "/%252e%252e/x"),
        ("/caf%C3%a9", "/caf%C3%A9"),
        // empty segments collapse before dot segments are resolved
        ("//a///b", "/a/b"),
        ("//", "/"),
        ("/a//", "/a/"),
        ("/api/hello//../profile", "/api/profile"),
        // names that only look like dot segments
        ("/.well-known/x", "/.well-known/x"),
        ("/a/.../b", "/a/.../b"),
        ("/a/..b/c.", "/a/..b/c."),
        ("*", "*"),
        // raw non-ASCII (hyper lets it through) is kept as is
        ("/é/./x", "/é/x"),
    ];
    for (raw, want) in cases {
        assert_eq!(normalize(raw, REJECT).as_deref(), Ok(*want), "{raw}");
        // Normal form is a fixed point, and borrowed.
        let again = normalize(want, REJECT).unwrap();
        assert!(matches!(again, Cow::Borrowed(_)), "{want} not borrowed");
        assert_eq!(again, *want);
    }
}

#[test]
fn refused_table() {
    use PathError::*;
    let cases: &[(&str, PathError)] = &[
        ("", NotAbsolute),
        ("api/hello", NotAbsolute),
        ("**", NotAbsolute),
        ("/a%", InvalidEscape),
        ("/a%4", InvalidEscape),
        ("/a%zz", InvalidEscape),
        ("/a%g0", InvalidEscape),
        ("/api/hello/..%2fprofile", EncodedSlash),
        ("/api/hello/%2e%2e%2fprofile", EncodedSlash),
        ("/a%2Fb", EncodedSlash),
        ("/api/hello/..\\profile", Backslash),
        ("/api/hello/..%5cprofile", Backslash),
        ("/api/hello/..%5Cprofile", Backslash),
        ("/api/hello/..;/profile", PathParameter),
        ("/a;jsessionid=1", PathParameter),
        ("/api/hello/..%3B/profile", PathParameter),
        ("/a%3bb", PathParameter),
        ("/a%00", ControlByte),
        ("/a%0a", ControlByte),
        ("/a%1F", ControlByte),
        ("/a%7f", ControlByte),
        ("/a\u{0}", ControlByte),
        ("/a\t", ControlByte),
    ];
    for (raw, want) in cases {
        assert_eq!(normalize(raw, REJECT), Err(*want), "{raw:?}");
        if *want != EncodedSlash {
            assert_eq!(normalize(raw, KEEP), Err(*want), "{raw:?} (keep)");
        }
    }
}

#[test]
fn kept_encoded_slash_is_data_and_never_next_to_dots() {
    let n = normalize_detailed("/files/a%2fb/./c", KEEP).unwrap();
    assert_eq!(n.path, "/files/a%2Fb/c");
    assert!(n.encoded_slash);
    let n = normalize_detailed("/files/a%2Fb", KEEP).unwrap();
    assert!(matches!(n.path, Cow::Borrowed(_)));
    assert!(n.encoded_slash);
    // `%2F` is not a separator, so `..` after it climbs one real segment.
    assert_eq!(
        normalize("/files/a%2Fb/../c", KEEP).as_deref(),
        Ok("/files/c")
    );
    assert!(!normalize_detailed("/files/x", KEEP).unwrap().encoded_slash);
    for raw in [
        "/files/..%2Fadmin",
        "/files/..%2f..%2fadmin",
        "/files/a%2F..",
        "/files/a%2F.%2Fb",
        "/files/%2e%2e%2Fadmin",
    ] {
        assert_eq!(
            normalize(raw, KEEP),
            Err(PathError::DotSegmentWithEncodedSlash),
            "{raw}"
        );
    }
}

#[test]
fn fast_path_borrows_and_agrees_with_the_slow_path() {
    for p in [
        "/",
        "/a",
        "/a/",
        "/api/v1/users/7",
        "/.x",
        "/x.",
        "/...",
        "/a-b_c~d",
    ] {
        assert!(is_normal(p.as_bytes()), "{p}");
        assert_eq!(normalize_slow(p, REJECT).unwrap().path, p);
    }
    for p in [
        "//", "/a//b", "/.", "/..", "/a/./b", "/a/../b", "/a%41", "/a;b", "/a\\b",
    ] {
        assert!(!is_normal(p.as_bytes()), "{p}");
    }
}

#[test]
fn uri_is_rebuilt_only_when_the_path_changes_and_keeps_the_query() {
    let mut uri: Uri = "/api/hello/../profile?a=%2e%2e&b=/../".parse().unwrap();
    assert_eq!(normalize_uri(&mut uri), Ok(false));
    assert_eq!(uri.path(), "/api/profile");
    assert_eq!(uri.query(), Some("a=%2e%2e&b=/../"));

    let mut uri: Uri = "http://example.com/a/%2e/b%2fc?q".parse().unwrap();
    assert_eq!(normalize_uri(&mut uri), Ok(true));
    assert_eq!(uri.to_string(), "http://example.com/a/b%2Fc?q");

    let mut uri: Uri = "/a/../b;x?q".parse().unwrap();
    assert_eq!(normalize_uri(&mut uri), Err(PathError::PathParameter));
    assert_eq!(uri, "/a/../b;x?q");

    let mut uri: Uri = "http://example.com".parse().unwrap();
    assert_eq!(normalize_uri(&mut uri), Ok(false));
    assert_eq!(uri.path(), "/");
}

#[test]
fn errors_are_400_with_a_public_message() {
    for e in [
        PathError::NotAbsolute,
        PathError::InvalidEscape,
        PathError::EncodedSlash,
        PathError::Backslash,
        PathError::PathParameter,
        PathError::ControlByte,
        PathError::DotSegmentWithEncodedSlash,
    ] {
        assert_eq!(e.to_string(), e.message());
        let g = GatewayError::from(e);
        assert!(matches!(g, GatewayError::BadRequest(m) if m == e.message()));
    }
}

// ---- differential tests -------------------------------------------------

/// The byte the escape `%XX` at `i` of `p` stands for.
fn escape_at(p: &str, i: usize) -> Option<u8> {
    p.get(i + 1..i + 3)
        .and_then(|h| u8::from_str_radix(h, 16).ok())
}

/// Decodes unreserved escapes and upper-cases the hex of the others, and
/// nothing else: the "same unreserved-decoding" both sides go through.
fn canon(p: &str) -> String {
    let b = p.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(v) = escape_at(p, i) {
                if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
                    out.push(char::from(v));
                } else {
                    out.push_str(&format!("%{v:02X}"));
                }
                i += 3;
                continue;
            }
        }
        out.push(char::from(b[i]));
        i += 1;
    }
    out
}

/// The reference: the WHATWG URL parser (`url` crate) resolving the path.
///
/// Mapping between the two, by design:
/// - WHATWG keeps empty segments (`/a//../b` → `/a/b`); we collapse them
///   first, as nginx does (→ `/b`). So the reference is given the input
///   with runs of `/` collapsed.
/// - WHATWG treats `.`, `%2e` and the mixed forms `.%2E`, `%2e.`, `%2E%2e`
///   (any case) as dot segments, as we do after decoding; it decodes
///   nothing else and keeps hex case, so its result goes through [`canon`].
/// - WHATWG takes `\` as `/` in http URLs and keeps invalid escapes and
///   `;`: we refuse all of them, so only accepted inputs are compared.
fn reference(input: &str) -> String {
    let mut collapsed = String::with_capacity(input.len());
    for c in input.chars() {
        if !(c == '/' && collapsed.ends_with('/')) {
            collapsed.push(c);
        }
    }
    let u = url::Url::parse(&format!("http://h{collapsed}")).unwrap();
    canon(u.path())
}

/// Fully percent-decodes (every escape, once), as a lenient upstream does.
fn decode_all(p: &str) -> Vec<u8> {
    let b = p.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(v) = escape_at(p, i) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The path a lenient framework serves (Spring, Tomcat, Express static,
/// nginx): everything decoded, `;` parameters removed, `\` as `/`, empty
/// and dot segments resolved.
fn lenient(p: &str) -> Vec<u8> {
    let decoded: Vec<u8> = decode_all(p)
        .into_iter()
        .map(|c| if c == b'\\' { b'/' } else { c })
        .collect();
    let mut out: Vec<&[u8]> = Vec::new();
    // Whether the last segment leaves a trailing slash (empty, `.`, `..`).
    let mut trailing = false;
    for seg in decoded.split(|&c| c == b'/').skip(1) {
        let seg = seg.split(|&c| c == b';').next().unwrap_or_default();
        trailing = matches!(seg, b"" | b"." | b"..");
        match seg {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut r = Vec::new();
    for s in &out {
        r.push(b'/');
        r.extend_from_slice(s);
    }
    if r.is_empty() || trailing {
        r.push(b'/');
    }
    r
}

fn generated(n: usize) -> Vec<String> {
    const CHARS: &[u8] = b"/.%2eEfFa;\\0415cC3B";
    const TOKENS: &[&str] = &[
        "/", "/", "/", ".", "..", "%2e", "%2E", "%2f", "%2F", "a", "b", "%41", "%61", ";", "\\",
        "%5c", "%00", "%", "%4", "%3B", "%25", "%20", "e", "F", "1", "~", "%7e", "-", "%2e%2e",
        ".%2E", "%2E.",
    ];
    let mut rng = fastrand::Rng::with_seed(0x11_0001);
    (0..n)
        .map(|i| {
            let mut s = String::new();
            if rng.u8(..) < 240 {
                s.push('/');
            }
            let len = rng.usize(0..14);
            for _ in 0..len {
                if i % 2 == 0 {
                    s.push(char::from(CHARS[rng.usize(..CHARS.len())]));
                } else {
                    s.push_str(TOKENS[rng.usize(..TOKENS.len())]);
                }
            }
            s
        })
        .collect()
}

#[test]
fn differential_against_the_url_crate_and_a_lenient_upstream() {
    let inputs = generated(60_000);
    let mut accepted = [0usize; 2];
    for input in &inputs {
        // The fast path says "normal" only when the slow one agrees.
        if input.starts_with('/') && is_normal(input.as_bytes()) {
            let slow = normalize_slow(input, REJECT).map(|n| n.path);
            assert_eq!(
                slow.as_deref(),
                Ok(input.as_str()),
                "fast path on {input:?}"
            );
        }
        for (k, opts) in [REJECT, KEEP].into_iter().enumerate() {
            let Ok(out) = normalize(input, opts) else {
                continue;
            };
            accepted[k] += 1;
            // Same place as the reference resolves the input to.
            assert_eq!(out, reference(input), "input {input:?} ({opts:?})");
            // Normal form: a fixed point, borrowed.
            assert!(
                matches!(normalize(&out, opts), Ok(Cow::Borrowed(o)) if o == out),
                "not idempotent: {input:?} -> {out:?}"
            );
            assert!(
                !out.contains("//") && out.starts_with('/'),
                "{input:?} -> {out:?}"
            );
            if opts == REJECT {
                // What a lenient upstream serves for the forwarded path is
                // that path (decoded): nothing left for it to resolve, and
                // it is where it would have taken the raw input.
                assert_eq!(lenient(&out), decode_all(&out), "{input:?} -> {out:?}");
                assert_eq!(lenient(input), lenient(&out), "{input:?} -> {out:?}");
            }
        }
    }
    // The generator must exercise the accepting side substantially.
    assert!(
        accepted[0] > 10_000 && accepted[1] > accepted[0],
        "{accepted:?}"
    );
}
