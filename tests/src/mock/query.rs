//! Percent-decoding of query strings and path segments (`?name=J%C3%BCrgen+M`).

use std::borrow::Cow;

/// The `key=value` pairs of a query string, decoded (`+` as space), in order.
pub(crate) fn pairs(query: Option<&str>) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key, true), decode(value, true))
        })
}

/// The first value of `key` in a query string.
pub(crate) fn get<'a>(query: Option<&'a str>, key: &str) -> Option<Cow<'a, str>> {
    pairs(query).find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Percent-decodes `s` (and `+` as a space when `plus_as_space`); bad escapes stay as they
/// are, invalid UTF-8 becomes U+FFFD.
pub(crate) fn decode(s: &str, plus_as_space: bool) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || (plus_as_space && b == b'+')) {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' if plus_as_space => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(decoded) => {
                        out.push(decoded);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            _ => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}
