//! [`HeaderRules`]: a route's `request_headers` or `response_headers`,
//! compiled once per config load (templates parsed, names and static values
//! built), applied per request in the order remove, set, add.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use prometheus_client::metrics::counter::Counter;

use crate::config::edge::{parse_template, HeaderRulesConfig, Part};
use crate::middleware::auth::Claims;

/// What a template needs from the request, known at load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Uses {
    /// `{request_id}`.
    pub request_id: bool,
    /// `{client_ip}`.
    pub client_ip: bool,
    /// `{claim.NAME}`.
    pub claims: bool,
}

impl Uses {
    fn merge(&mut self, o: Self) {
        self.request_id |= o.request_id;
        self.client_ip |= o.client_ip;
        self.claims |= o.claims;
    }
}

#[derive(Debug, Clone)]
enum Piece {
    Lit(Box<str>),
    RequestId,
    ClientIp,
    Claim(Box<str>),
}

/// A header value template.
#[derive(Debug, Clone)]
enum Template {
    /// No placeholder left (or only `{route}`): built at load.
    Static(HeaderValue),
    /// Exactly `{request_id}`: the id's value itself, no copy.
    RequestId,
    /// Anything else: rendered per request.
    Dynamic(Box<[Piece]>),
}

/// What a template resolved to for one request.
#[derive(Debug)]
enum Resolved {
    Value(HeaderValue),
    /// A claim it names is missing (absent, null or an object), or the
    /// request has no id/context: the rule does nothing (a `set` still
    /// removes the header).
    Empty,
    /// Not a valid header value (a claim with a control character or
    /// non-ASCII text): dropped and counted.
    Invalid,
}

/// What placeholders resolve from, per request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Vars<'a> {
    /// The request id.
    pub request_id: Option<&'a HeaderValue>,
    /// The one client address of the request context.
    pub client_ip: Option<IpAddr>,
    /// The verified token's claims, when a token was verified.
    pub claims: Option<&'a Claims>,
}

impl Template {
    /// From a validated template string; `None` if it is not one.
    fn compile(s: &str, route: &str) -> Option<(Self, Uses)> {
        let parts = parse_template(s).ok()?;
        let mut uses = Uses::default();
        let mut pieces: Vec<Piece> = Vec::with_capacity(parts.len());
        for p in parts {
            let piece = match p {
                Part::Lit(l) => Piece::Lit(l.into()),
                // Known at load: folded into the text.
                Part::Route => Piece::Lit(route.into()),
                Part::RequestId => {
                    uses.request_id = true;
                    Piece::RequestId
                }
                Part::ClientIp => {
                    uses.client_ip = true;
                    Piece::ClientIp
                }
                Part::Claim(c) => {
                    uses.claims = true;
                    Piece::Claim(c.into())
                }
            };
            // Adjacent literals (text and a folded route) become one.
            match (pieces.last_mut(), piece) {
                (Some(Piece::Lit(prev)), Piece::Lit(l)) => *prev = format!("{prev}{l}").into(),
                (_, piece) => pieces.push(piece),
            }
        }
        let t = match pieces.as_slice() {
            [] => Self::Static(HeaderValue::from_static("")),
            [Piece::Lit(l)] => Self::Static(HeaderValue::from_str(l).ok()?),
            [Piece::RequestId] => Self::RequestId,
            _ => Self::Dynamic(pieces.into_boxed_slice()),
        };
        Some((t, uses))
    }

    fn resolve(&self, v: &Vars<'_>) -> Resolved {
        let pieces = match self {
            Self::Static(h) if h.is_empty() => return Resolved::Empty,
            Self::Static(h) => return Resolved::Value(h.clone()),
            Self::RequestId => {
                return v
                    .request_id
                    .map_or(Resolved::Empty, |id| Resolved::Value(id.clone()))
            }
            Self::Dynamic(p) => p,
        };
        let mut out = String::with_capacity(64);
        for p in pieces.iter() {
            let ok = match p {
                Piece::Lit(l) => {
                    out.push_str(l);
                    true
                }
                Piece::RequestId => v
                    .request_id
                    .and_then(|id| id.to_str().ok())
                    .map(|id| out.push_str(id))
                    .is_some(),
                Piece::ClientIp => v
                    .client_ip
                    .map(|ip| {
                        let _ = write!(out, "{ip}");
                    })
                    .is_some(),
                Piece::Claim(name) => claim(&mut out, v.claims.and_then(|c| c.get(&**name))),
            };
            if !ok {
                return Resolved::Empty;
            }
        }
        if out.is_empty() {
            return Resolved::Empty;
        }
        // Visible ASCII, space and tab only, as the literal text: `http`
        // would accept obs-text (bytes over 0x7f), which upstreams read as
        // Latin-1 or UTF-8 as they please.
        if !out
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        {
            return Resolved::Invalid;
        }
        HeaderValue::from_str(&out).map_or(Resolved::Invalid, Resolved::Value)
    }
}

/// Writes a claim as a header value would carry it (as `forward_claims`
/// does: a string as is, a number or boolean as JSON, a list of strings
/// space-separated); `false` when it is missing or has no such form.
fn claim(out: &mut String, v: Option<&serde_json::Value>) -> bool {
    use serde_json::Value;
    match v {
        Some(Value::String(s)) => out.push_str(s),
        Some(Value::Number(n)) => {
            let _ = write!(out, "{n}");
        }
        Some(Value::Bool(b)) => {
            let _ = write!(out, "{b}");
        }
        Some(Value::Array(a)) => {
            let mut first = true;
            for s in a.iter().filter_map(Value::as_str) {
                if !first {
                    out.push(' ');
                }
                out.push_str(s);
                first = false;
            }
            if first {
                return false;
            }
        }
        _ => return false,
    }
    true
}

/// One side's rules of a route.
#[derive(Debug, Clone)]
pub struct HeaderRules {
    remove: Box<[HeaderName]>,
    set: Box<[(HeaderName, Template)]>,
    add: Box<[(HeaderName, Template)]>,
    uses: Uses,
    /// Values dropped because they resolved to an invalid header value.
    dropped: Option<Counter>,
    route: std::sync::Arc<str>,
}

impl HeaderRules {
    /// Compiles validated rules of route `route` (entries validation would
    /// refuse are skipped); `dropped` counts values that resolved invalid.
    pub fn new(cfg: &HeaderRulesConfig, route: &str, dropped: Option<Counter>) -> Self {
        let mut uses = Uses::default();
        let mut compile = |map: &std::collections::BTreeMap<String, String>| {
            map.iter()
                .filter_map(|(n, v)| {
                    let name = HeaderName::from_bytes(n.as_bytes()).ok()?;
                    let (t, u) = Template::compile(v, route)?;
                    uses.merge(u);
                    Some((name, t))
                })
                .collect::<Box<[_]>>()
        };
        let set = compile(&cfg.set);
        let add = compile(&cfg.add);
        Self {
            remove: cfg
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
            set,
            add,
            uses,
            dropped,
            route: route.into(),
        }
    }

    /// What the rules read from the request.
    pub fn uses(&self) -> Uses {
        self.uses
    }

    fn invalid(&self, name: &HeaderName) {
        if let Some(c) = &self.dropped {
            c.inc();
        }
        tracing::debug!(route = %self.route, header = %name, "header rule value is not a valid header value: dropped");
    }

    /// Applies the rules to `h`: remove, then set (replacing every value;
    /// a value that resolves to nothing removes the header, so a client's
    /// copy never survives a `set`), then add (appended).
    pub fn apply(&self, h: &mut HeaderMap, v: &Vars<'_>) {
        for n in self.remove.iter() {
            h.remove(n);
        }
        for (n, t) in self.set.iter() {
            match t.resolve(v) {
                Resolved::Value(x) => {
                    h.insert(n, x);
                }
                Resolved::Empty => {
                    h.remove(n);
                }
                Resolved::Invalid => {
                    h.remove(n);
                    self.invalid(n);
                }
            }
        }
        for (n, t) in self.add.iter() {
            match t.resolve(v) {
                Resolved::Value(x) => {
                    h.append(n, x);
                }
                Resolved::Empty => {}
                Resolved::Invalid => self.invalid(n),
            }
        }
    }

    /// The `set` and `add` headers for a response the gateway renders
    /// itself from an error (its own headers win over these, and `remove`
    /// does not apply: they are the gateway's error contract).
    pub fn error_headers(&self, v: &Vars<'_>) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::new();
        for (n, t) in self.set.iter().chain(self.add.iter()) {
            match t.resolve(v) {
                Resolved::Value(x) => out.push((n.clone(), x)),
                Resolved::Empty => {}
                Resolved::Invalid => self.invalid(n),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn rules(toml: &str, counter: Option<Counter>) -> HeaderRules {
        #[derive(serde::Deserialize)]
        struct W {
            r: HeaderRulesConfig,
        }
        let w: W = toml::from_str(toml).unwrap();
        HeaderRules::new(&w.r, "users", counter)
    }

    fn claims(json: serde_json::Value) -> Claims {
        json.as_object().unwrap().clone()
    }

    #[test]
    fn remove_set_add_in_that_order_with_placeholders() {
        let r = rules(
            r#"r = { remove = ["Cookie", "X-Debug"], set = { "X-Route" = "{route}", "X-Tenant" = "t-{claim.tenant}", "X-Id" = "{request_id}" }, add = { "X-Who" = "{claim.sub}@{client_ip}", "X-Roles" = "{claim.roles}", "X-N" = "{claim.n}" } }"#,
            None,
        );
        assert_eq!(
            r.uses(),
            Uses {
                request_id: true,
                client_ip: true,
                claims: true
            }
        );
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_static("a=1"));
        h.insert("x-debug", HeaderValue::from_static("1"));
        h.insert("x-tenant", HeaderValue::from_static("forged"));
        h.append("x-tenant", HeaderValue::from_static("forged-2"));
        h.insert("x-who", HeaderValue::from_static("client"));
        let id = HeaderValue::from_static("req-7");
        let c = claims(
            serde_json::json!({"sub": "u1", "tenant": "acme", "roles": ["a", "b"], "n": 42}),
        );
        r.apply(
            &mut h,
            &Vars {
                request_id: Some(&id),
                client_ip: Some("192.0.2.1".parse().unwrap()),
                claims: Some(&c),
            },
        );
        assert!(!h.contains_key("cookie") && !h.contains_key("x-debug"));
        assert_eq!(h["x-route"], "users");
        let tenant: Vec<_> = h.get_all("x-tenant").iter().collect();
        assert_eq!(tenant, ["t-acme"]);
        assert_eq!(h["x-id"], "req-7");
        let who: Vec<_> = h.get_all("x-who").iter().collect();
        assert_eq!(who, ["client", "u1@192.0.2.1"]);
        assert_eq!(h["x-roles"], "a b");
        assert_eq!(h["x-n"], "42");
    }

    #[test]
    fn a_missing_claim_removes_a_set_header_and_adds_nothing() {
        let r = rules(
            r#"r = { set = { "X-Tenant" = "t-{claim.tenant}" }, add = { "X-Org" = "{claim.org}" } }"#,
            None,
        );
        let mut h = HeaderMap::new();
        h.insert("x-tenant", HeaderValue::from_static("forged"));
        for c in [
            None,
            Some(claims(serde_json::json!({"tenant": null, "org": {"a": 1}}))),
            Some(claims(serde_json::json!({"tenant": [], "org": [1, 2]}))),
        ] {
            r.apply(
                &mut h,
                &Vars {
                    claims: c.as_ref(),
                    ..Vars::default()
                },
            );
            assert!(h.is_empty(), "{h:?}");
        }
    }

    #[test]
    fn an_invalid_resolved_value_is_dropped_and_counted_never_a_panic() {
        let counter = Counter::default();
        let r = rules(
            r#"r = { set = { "X-Name" = "{claim.name}" }, add = { "X-Sub" = "{claim.sub}" } }"#,
            Some(counter.clone()),
        );
        let mut h = HeaderMap::new();
        h.insert("x-name", HeaderValue::from_static("forged"));
        for bad in ["line\r\nX-Injected: 1", "Jos\u{e9}", "nul\0"] {
            let c = claims(serde_json::json!({"name": bad, "sub": bad}));
            r.apply(
                &mut h,
                &Vars {
                    claims: Some(&c),
                    ..Vars::default()
                },
            );
            assert!(h.is_empty(), "{bad:?}: {h:?}");
            assert!(r
                .error_headers(&Vars {
                    claims: Some(&c),
                    ..Vars::default()
                })
                .is_empty());
        }
        assert_eq!(counter.get(), 12);
    }

    #[test]
    fn static_values_are_built_once_and_error_headers_skip_remove() {
        let r = rules(
            r#"r = { remove = ["Server"], set = { "X-A" = "{{literal}} {route}" }, add = { "X-B" = "{request_id}" } }"#,
            None,
        );
        assert!(matches!(r.set[0].1, Template::Static(_)));
        assert!(matches!(r.add[0].1, Template::RequestId));
        assert_eq!(
            r.uses(),
            Uses {
                request_id: true,
                ..Uses::default()
            }
        );
        let id = HeaderValue::from_static("id-1");
        let e = r.error_headers(&Vars {
            request_id: Some(&id),
            ..Vars::default()
        });
        assert_eq!(
            e,
            vec![
                (
                    HeaderName::from_static("x-a"),
                    HeaderValue::from_static("{literal} users")
                ),
                (
                    HeaderName::from_static("x-b"),
                    HeaderValue::from_static("id-1")
                ),
            ]
        );
    }
}
