//! `Accept-Encoding` (RFC 9110 12.5.3), parsed without allocation and
//! bounded: the client's preference (q-values, `q=0` refusal, `*`,
//! `identity`) against the route's codings in server order.

use http::header::ACCEPT_ENCODING;
use http::HeaderMap;

use crate::config::Algorithm;

/// Longest `Accept-Encoding` (all its fields together) read; a longer one
/// is treated as asking for no coding (real clients send under 100 bytes).
pub const MAX_HEADER_BYTES: usize = 1024;
/// Most list elements read; more is treated like [`MAX_HEADER_BYTES`].
pub const MAX_ELEMENTS: usize = 32;

/// A q-value in thousandths (`q=0.5` is 500); `1000` when absent.
pub type Q = u16;

/// What the response should be coded with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Negotiated {
    /// As is.
    Identity,
    /// Compressed with this coding.
    Coding(Algorithm),
}

impl Negotiated {
    /// The token (`identity`, `gzip`, `br`, `zstd`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Coding(a) => a.as_str(),
        }
    }
}

/// The q-values the client gave for the codings we care about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Weights {
    codings: [Option<Q>; 3],
    identity: Option<Q>,
    star: Option<Q>,
}

/// Calls `f(coding, q)` for each well-formed element of every
/// `Accept-Encoding` field, codings lowercased by the caller's compare
/// (`eq_ignore_ascii_case`). `None` when the header is over the bounds:
/// the caller then acts as if only `identity` were acceptable.
fn elements(headers: &HeaderMap, mut f: impl FnMut(&str, Q)) -> Option<()> {
    let mut total = 0usize;
    let mut count = 0usize;
    for v in headers.get_all(ACCEPT_ENCODING) {
        total = total.saturating_add(v.len());
        if total > MAX_HEADER_BYTES {
            return None;
        }
        // Not visible ASCII: the field is ignored as malformed.
        let Ok(v) = v.to_str() else { continue };
        for el in v.split(',') {
            let el = el.trim_matches([' ', '\t']);
            if el.is_empty() {
                continue;
            }
            count += 1;
            if count > MAX_ELEMENTS {
                return None;
            }
            let mut parts = el.split(';');
            let coding = parts.next().unwrap_or("").trim_matches([' ', '\t']);
            if coding.is_empty() {
                continue;
            }
            let mut q = Some(1000);
            for p in parts {
                let Some((k, v)) = p.split_once('=') else {
                    q = None;
                    break;
                };
                if k.trim_matches([' ', '\t']).eq_ignore_ascii_case("q") {
                    q = qvalue(v.trim_matches([' ', '\t']));
                    break;
                }
            }
            // An element with a malformed weight is ignored (not trusted
            // to mean either "yes" or "no").
            if let Some(q) = q {
                f(coding, q);
            }
        }
    }
    Some(())
}

/// RFC 9110 12.4.2: `0[.ddd]` or `1[.000]`, in thousandths.
pub fn qvalue(s: &str) -> Option<Q> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths: Q = 0;
    for (i, b) in frac.bytes().enumerate() {
        let scale = [100, 10, 1][i];
        thousandths += Q::from(b - b'0') * scale;
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

fn weights(headers: &HeaderMap) -> Option<Weights> {
    let mut w = Weights::default();
    elements(headers, |coding, q| {
        let slot = if coding == "*" {
            &mut w.star
        } else if coding.eq_ignore_ascii_case("identity") {
            &mut w.identity
        } else if let Some(a) = Algorithm::ALL.into_iter().find(|a| {
            coding.eq_ignore_ascii_case(a.as_str())
                || (*a == Algorithm::Gzip && coding.eq_ignore_ascii_case("x-gzip"))
        }) {
            &mut w.codings[a.index()]
        } else {
            return;
        };
        // Listed twice: the higher weight (a client contradicting itself
        // is not worth refusing for).
        *slot = Some(slot.map_or(q, |old| old.max(q)));
    })?;
    Some(w)
}

/// The coding for a request with `headers`, among `offered` (server
/// preference order):
///
/// - no `Accept-Encoding`: identity (RFC 9110 allows any coding, but
///   clients that send none often cannot decode one; nginx and Envoy send
///   identity too);
/// - each coding's weight is its own element's, else `*`'s, else 0; `q=0`
///   refuses; the highest weight wins, ties go to the server's order;
/// - identity wins when the client weights it (its own element, else `*`)
///   above every offered coding, and when none is acceptable; a tie goes
///   to compression; unlisted, it counts as the lowest weight;
/// - a header over [`MAX_HEADER_BYTES`] or [`MAX_ELEMENTS`]: identity.
pub fn negotiate(headers: &HeaderMap, offered: &[Algorithm]) -> Negotiated {
    if !headers.contains_key(ACCEPT_ENCODING) {
        return Negotiated::Identity;
    }
    let Some(w) = weights(headers) else {
        return Negotiated::Identity;
    };
    let mut best: Option<(Algorithm, Q)> = None;
    for &a in offered {
        let q = w.codings[a.index()].or(w.star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, bq)| q > bq) {
            best = Some((a, q));
        }
    }
    // Unlisted identity is acceptable (RFC 9110 12.5.3) but not preferred:
    // `gzip;q=0.5` asks for gzip.
    let identity = w.identity.or(w.star).unwrap_or(1);
    match best {
        Some((a, q)) if q >= identity => Negotiated::Coding(a),
        _ => Negotiated::Identity,
    }
}

/// Whether a response coded with `coding` (a `Content-Encoding` value:
/// one coding, or none for identity) may be sent to a request with
/// `headers`: its weight is above 0 (for identity: unless refused with
/// `identity;q=0` or `*;q=0`). Used by the cache to check that a stored
/// variant suits the request before serving it.
pub fn accepts(headers: &HeaderMap, coding: Option<&str>) -> bool {
    let coding = coding
        .map(|c| c.trim_matches([' ', '\t']))
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"));
    let Some(coding) = coding else {
        // Identity: acceptable unless refused (an over-long header refuses
        // nothing).
        let Some(w) = weights(headers) else {
            return true;
        };
        return w.identity.or(w.star).unwrap_or(1000) > 0;
    };
    if coding.contains(',') {
        // Several codings stacked: the client would have to accept each;
        // rare enough to treat as a miss.
        return false;
    }
    let (mut own, mut star) = (None::<Q>, None::<Q>);
    let gzip = coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip");
    let within = elements(headers, |c, q| {
        let same = c.eq_ignore_ascii_case(coding)
            || (gzip && (c.eq_ignore_ascii_case("gzip") || c.eq_ignore_ascii_case("x-gzip")));
        if same {
            own = Some(own.map_or(q, |o| o.max(q)));
        } else if c == "*" {
            star = Some(star.map_or(q, |o| o.max(q)));
        }
    });
    within.is_some() && own.or(star).unwrap_or(0) > 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use Algorithm::{Br, Gzip, Zstd};

    fn h(values: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for v in values {
            m.append(ACCEPT_ENCODING, v.parse().unwrap());
        }
        m
    }

    fn n(values: &[&str], offered: &[Algorithm]) -> &'static str {
        negotiate(&h(values), offered).as_str()
    }

    const ALL: &[Algorithm] = &[Zstd, Br, Gzip];

    #[test]
    fn negotiates_per_rfc_9110() {
        for (ae, offered, want) in [
            (&[][..], ALL, "identity"),
            (&[""][..], ALL, "identity"),
            (&["gzip"], ALL, "gzip"),
            (&["gzip, deflate, br"], ALL, "br"),
            (&["br;q=1, gzip"], ALL, "br"),
            (&["deflate, gzip, br, zstd"], ALL, "zstd"),
            (&["deflate, gzip, br, zstd"], &[Gzip, Br], "gzip"),
            (&["gzip;q=0.5, br;q=0.8"], ALL, "br"),
            (&["gzip;q=1.0, br;q=0.999"], ALL, "gzip"),
            (&["GZIP;Q=0.5"], ALL, "gzip"),
            (&["x-gzip"], ALL, "gzip"),
            (&["*"], ALL, "zstd"),
            (&["*", "zstd;q=0"], ALL, "br"),
            (&["*;q=0"], ALL, "identity"),
            (&["br;q=0, gzip;q=0"], ALL, "identity"),
            (&["deflate"], ALL, "identity"),
            (&["identity"], ALL, "identity"),
            (&["gzip;q=0.5, identity"], ALL, "identity"),
            (&["gzip;q=0.5, identity;q=0.5"], ALL, "gzip"),
            (&["gzip;q=0.5, *;q=0.4"], ALL, "gzip"),
            (&["gzip", "br"], ALL, "br"),
            (&["  gzip ;  q=0.3 ,br ; q = 0.2 "], ALL, "gzip"),
            // Malformed weights: the element is ignored.
            (&["br;q=2, gzip"], ALL, "gzip"),
            (&["br;q=0.1234, gzip;q=0.1"], ALL, "gzip"),
            (&["br;q=, gzip;q=0.1"], ALL, "gzip"),
            (&["br;q=-1"], ALL, "identity"),
            (&["br;level=3;q=0.5, gzip;q=0.1"], ALL, "br"),
            (&["br;bogus"], ALL, "identity"),
            (&[",,, , gzip,,"], ALL, "gzip"),
            (&[";q=1"], ALL, "identity"),
        ] {
            assert_eq!(n(ae, offered), want, "{ae:?} offered {offered:?}");
        }
    }

    #[test]
    fn bounded() {
        let long = format!("{}gzip", " ".repeat(MAX_HEADER_BYTES));
        assert_eq!(n(&[&long], ALL), "identity");
        let many = vec!["deflate"; MAX_ELEMENTS].join(",") + ",gzip";
        assert_eq!(n(&[&many], ALL), "identity");
        let fits = vec!["deflate"; MAX_ELEMENTS - 1].join(",") + ",gzip";
        assert_eq!(n(&[&fits], ALL), "gzip");
        // Identity is never refused by an over-long header.
        assert!(accepts(&h(&[&long]), None));
        assert!(!accepts(&h(&[&long]), Some("gzip")));
    }

    #[test]
    fn qvalues() {
        for (s, q) in [
            ("1", Some(1000)),
            ("1.", Some(1000)),
            ("1.000", Some(1000)),
            ("1.001", None),
            ("0", Some(0)),
            ("0.5", Some(500)),
            ("0.05", Some(50)),
            ("0.001", Some(1)),
            ("0.0001", None),
            ("2", None),
            ("", None),
            (".5", None),
            ("0.x", None),
            ("01", None),
        ] {
            assert_eq!(qvalue(s), q, "{s:?}");
        }
    }

    #[test]
    fn acceptability_of_stored_codings() {
        let ae = h(&["gzip, deflate;q=0.5, identity;q=0"]);
        assert!(accepts(&ae, Some("gzip")));
        assert!(accepts(&ae, Some("x-gzip")));
        assert!(accepts(&ae, Some("Deflate")));
        assert!(!accepts(&ae, Some("br")));
        assert!(!accepts(&ae, None));
        assert!(!accepts(&ae, Some("identity")));
        assert!(!accepts(&ae, Some("gzip, br")));
        assert!(accepts(&HeaderMap::new(), None));
        assert!(!accepts(&HeaderMap::new(), Some("gzip")));
        assert!(accepts(&h(&["*"]), Some("compress")));
        assert!(!accepts(&h(&["*, br;q=0"]), Some("br")));
        assert!(!accepts(&h(&["*;q=0"]), None));
        assert!(accepts(&h(&["*;q=0, identity"]), None));
    }

    proptest::proptest! {
        /// Any header: no panic, and the choice is something offered and
        /// acceptable, or identity.
        #[test]
        fn never_panics_and_chooses_an_acceptable_coding(
            values in proptest::collection::vec("[ -~]{0,80}", 0..4),
        ) {
            let mut m = HeaderMap::new();
            for v in &values {
                if let Ok(v) = http::HeaderValue::from_str(v) {
                    m.append(ACCEPT_ENCODING, v);
                }
            }
            match negotiate(&m, ALL) {
                Negotiated::Coding(a) => proptest::prop_assert!(accepts(&m, Some(a.as_str()))),
                Negotiated::Identity => {}
            }
        }
    }
}
