//! Per-route edge rules: the CORS policy (`cors = { ... }`) and the request
//! and response header rules (`request_headers`, `response_headers`).
//!
//! Serde types, the header-value template language and every check with its
//! key path ([`check_route`], called by [`super::validate`]). Compiled once
//! per config load into the layers of `middleware::edge`.
//!
//! Templates: literal text with placeholders `{request_id}`, `{client_ip}`,
//! `{route}` and `{claim.NAME}` (a claim of the verified JWT); `{{` and `}}`
//! are literal braces. `{route}` is substituted at load; the others per
//! request.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use http::header::{self, HeaderName};
use serde::Deserialize;

use super::{AuthMode, AuthProviderConfig, RouteConfig};

/// A route's `cors = { allow_origins = [...], ... }`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins (`scheme://host[:port]`) allowed to read responses, or
    /// `["*"]` for any (then `allow_credentials` must be false).
    pub allow_origins: Vec<String>,
    /// Methods a preflight allows (`Access-Control-Allow-Methods`); `["*"]`
    /// for any (without credentials only). Default `GET, HEAD, POST`.
    #[serde(default = "default_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight allows (`Access-Control-Allow-Headers`);
    /// `["*"]` for any (without credentials only).
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers scripts may read (`Access-Control-Expose-Headers`);
    /// `["*"]` for any (without credentials only).
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// `Access-Control-Allow-Credentials: true` (cookies, `Authorization`).
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight (`Access-Control-Max-Age`);
    /// none by default (browsers then use 5 s).
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
}

fn default_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into(), "POST".into()]
}

/// `request_headers = { add = {...}, set = {...}, remove = [...] }` (and the
/// same for `response_headers`). Applied in the order remove, set, add.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HeaderRulesConfig {
    /// Values appended (kept beside any existing value).
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Values that replace every existing value of the header (a set
    /// whose value resolves empty or invalid removes the header).
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers removed.
    #[serde(default)]
    pub remove: Vec<String>,
}

impl HeaderRulesConfig {
    /// Whether the rules do nothing.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.set.is_empty() && self.remove.is_empty()
    }

    /// Whether any value uses a `{claim.NAME}` placeholder.
    pub fn uses_claims(&self) -> bool {
        self.add
            .values()
            .chain(self.set.values())
            .any(|v| parse_template(v).is_ok_and(|t| t.iter().any(|p| matches!(p, Part::Claim(_)))))
    }
}

/// One piece of a parsed header-value template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Literal text.
    Lit(String),
    /// `{request_id}`.
    RequestId,
    /// `{client_ip}`: the one client address of the request context.
    ClientIp,
    /// `{route}`: the route's name.
    Route,
    /// `{claim.NAME}`: a claim of the verified token.
    Claim(String),
}

/// Parses a template (see the module docs). Literal text must be visible
/// ASCII, space or tab, so every resolved value is a valid header value
/// unless a placeholder's own value is not.
pub fn parse_template(s: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|p| p.1) == Some('{') => {
                chars.next();
                lit.push('{');
            }
            '}' if chars.peek().map(|p| p.1) == Some('}') => {
                chars.next();
                lit.push('}');
            }
            '}' => return Err(format!("unmatched '}}' at byte {i} (write '}}}}' for a brace)")),
            '{' => {
                let rest = &s[i + 1..];
                let end = rest
                    .find('}')
                    .ok_or_else(|| format!("unclosed '{{' at byte {i}"))?;
                let name = &rest[..end];
                let part = match name {
                    "request_id" => Part::RequestId,
                    "client_ip" => Part::ClientIp,
                    "route" => Part::Route,
                    _ => match name.strip_prefix("claim.") {
                        Some(c) if !c.is_empty() && !c.contains('{') => Part::Claim(c.to_owned()),
                        _ => {
                            return Err(format!(
                                "unknown placeholder {{{name}}} (known: {{request_id}}, {{client_ip}}, {{route}}, {{claim.NAME}})"
                            ))
                        }
                    },
                };
                // Skip the placeholder's characters and its '}'.
                for _ in 0..name.chars().count() + 1 {
                    chars.next();
                }
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                parts.push(part);
            }
            c if c == '\t' || (' '..='~').contains(&c) => lit.push(c),
            c => {
                return Err(format!(
                    "character {c:?} is not allowed in a header value (visible ASCII, space and tab only)"
                ))
            }
        }
    }
    if !lit.is_empty() {
        parts.push(Part::Lit(lit));
    }
    Ok(parts)
}

/// Headers no rule may touch: they describe one connection (hop-by-hop),
/// frame the message, route it, or carry the request id.
fn never(name: &HeaderName) -> Option<&'static str> {
    const HOP: [&str; 10] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
    ];
    if HOP.contains(&name.as_str()) {
        return Some("a hop-by-hop header (it describes one connection) cannot be set by a rule");
    }
    if name == header::HOST {
        return Some("Host cannot be changed by a rule: requests are routed by it");
    }
    if name == header::CONTENT_LENGTH {
        return Some("Content-Length frames the message: a rule cannot change it");
    }
    if name == "x-request-id" {
        return Some("X-Request-Id is the gateway's request id: a rule cannot change it");
    }
    None
}

/// Request headers the gateway owns for the client's identity: the
/// forwarding headers (written from the request context) and `Via`.
const FORWARDING: [&str; 7] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-proto",
    "x-real-ip",
    "via",
];

/// Which side a set of rules applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

/// Every problem in a route's `cors`, `request_headers` and
/// `response_headers`, as (key path below the route, message).
pub fn check_route(
    route: &RouteConfig,
    auth: &BTreeMap<String, AuthProviderConfig>,
) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    if let Some(c) = &route.cors {
        check_cors(c, &mut errs);
        if !route.methods.is_empty()
            && !route
                .methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case("OPTIONS"))
        {
            errs.push((
                "methods".into(),
                "a route with cors must list \"OPTIONS\" (preflights are OPTIONS requests, answered by the cors policy)".into(),
            ));
        }
    }
    // Identity headers: every provider's forward_claims targets (the edge
    // strips them on every route; auth alone sets them).
    let identity: HashSet<String> = auth
        .values()
        .flat_map(|a| a.forward_claims.values())
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let claims_ok = route.auth.as_ref().is_some_and(|a| a.mode != AuthMode::Off);
    for (key, rules, side) in [
        ("request_headers", &route.request_headers, Side::Request),
        ("response_headers", &route.response_headers, Side::Response),
    ] {
        let Some(rules) = rules else { continue };
        let ctx = RuleCheck {
            side,
            route_name: &route.name,
            identity: &identity,
            cors: route.cors.is_some(),
            claims_ok,
        };
        ctx.check(key, rules, &mut errs);
    }
    errs
}

fn check_cors(c: &CorsConfig, errs: &mut Vec<(String, String)>) {
    let mut push = |k: String, m: String| errs.push((format!("cors.{k}"), m));
    if c.allow_origins.is_empty() {
        push(
            "allow_origins".into(),
            "list at least one origin (or \"*\")".into(),
        );
    }
    let any = c.allow_origins.iter().any(|o| o == "*");
    if any && c.allow_origins.len() > 1 {
        push(
            "allow_origins".into(),
            "\"*\" allows every origin: list it alone".into(),
        );
    }
    for (i, o) in c.allow_origins.iter().enumerate() {
        if o != "*" {
            if let Err(m) = check_origin(o) {
                push(format!("allow_origins[{i}]"), m);
            }
        }
    }
    if c.allow_credentials {
        for (key, list) in [
            ("allow_origins", &c.allow_origins),
            ("allow_methods", &c.allow_methods),
            ("allow_headers", &c.allow_headers),
            ("expose_headers", &c.expose_headers),
        ] {
            if list.iter().any(|v| v == "*") {
                push(
                    key.into(),
                    "\"*\" cannot be combined with allow_credentials = true (browsers refuse it: list the values)".into(),
                );
            }
        }
    }
    for (i, m) in c.allow_methods.iter().enumerate() {
        if m != "*" && http::Method::from_bytes(m.as_bytes()).is_err() {
            push(
                format!("allow_methods[{i}]"),
                format!("invalid method {m:?}"),
            );
        }
    }
    for (key, list) in [
        ("allow_headers", &c.allow_headers),
        ("expose_headers", &c.expose_headers),
    ] {
        for (i, h) in list.iter().enumerate() {
            if h != "*" && HeaderName::from_bytes(h.as_bytes()).is_err() {
                push(format!("{key}[{i}]"), format!("invalid header name {h:?}"));
            }
        }
    }
    if c.max_age.is_some_and(|d| d > Duration::from_secs(86_400)) {
        push(
            "max_age".into(),
            "at most 24h (browsers cap it lower: Chromium 2h, Firefox 24h)".into(),
        );
    }
}

/// An origin as browsers send it: `scheme://host[:port]`, no path, no
/// trailing slash, no user info.
fn check_origin(o: &str) -> Result<(), String> {
    let bad =
        || format!("invalid origin {o:?}: write scheme://host[:port] (no path, no trailing slash)");
    let (scheme, rest) = o.split_once("://").ok_or_else(bad)?;
    if scheme.is_empty()
        || !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return Err(bad());
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', '*']) || rest.ends_with(':') {
        return Err(bad());
    }
    let authority = http::uri::Authority::try_from(rest).map_err(|_| bad())?;
    if authority.host().is_empty() {
        return Err(bad());
    }
    Ok(())
}

struct RuleCheck<'a> {
    side: Side,
    route_name: &'a str,
    identity: &'a HashSet<String>,
    cors: bool,
    claims_ok: bool,
}

impl RuleCheck<'_> {
    fn check(&self, key: &str, rules: &HeaderRulesConfig, errs: &mut Vec<(String, String)>) {
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        let names = rules
            .remove
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("{key}.remove[{i}]"), n, "remove"))
            .chain(
                rules
                    .set
                    .keys()
                    .map(|n| (format!("{key}.set.{n:?}"), n, "set")),
            )
            .chain(
                rules
                    .add
                    .keys()
                    .map(|n| (format!("{key}.add.{n:?}"), n, "add")),
            );
        for (path, name, list) in names {
            match self.name(name, list) {
                Err(m) => errs.push((path, m)),
                Ok(lower) => {
                    if let Some(other) = seen.insert(lower, list) {
                        errs.push((
                            path,
                            format!("{name:?} is already in {key}.{other}: name a header in one list only"),
                        ));
                    }
                }
            }
        }
        for (list, map) in [("set", &rules.set), ("add", &rules.add)] {
            for (name, value) in map {
                if let Err(m) = self.value(value) {
                    errs.push((format!("{key}.{list}.{name:?}"), m));
                }
            }
        }
    }

    /// The header name, lower-cased, or why no rule may name it.
    fn name(&self, name: &str, list: &str) -> Result<String, String> {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{name:?} is not a valid header name"))?;
        if let Some(m) = never(&n) {
            return Err(m.into());
        }
        let s = n.as_str();
        if self.side == Side::Request {
            if self.identity.contains(s) {
                return Err(format!(
                    "{name:?} is an identity header (an auth provider's forward_claims target): only auth sets it"
                ));
            }
            if FORWARDING.contains(&s) {
                return Err(format!(
                    "{name:?} is written by the gateway from the client's address: a rule cannot change it"
                ));
            }
        }
        if self.side == Side::Response && self.cors {
            if s.starts_with("access-control-") {
                return Err(format!(
                    "{name:?}: the route's cors policy writes the CORS headers"
                ));
            }
            if n == header::VARY && list != "add" {
                return Err(
                    "the route's cors policy adds `Vary: Origin`: use add, not set or remove, for Vary"
                        .into(),
                );
            }
        }
        Ok(s.to_owned())
    }

    fn value(&self, value: &str) -> Result<(), String> {
        let parts = parse_template(value)?;
        if !self.claims_ok && parts.iter().any(|p| matches!(p, Part::Claim(_))) {
            return Err(
                "{claim.NAME} needs the route to verify tokens (auth with mode required or optional)"
                    .into(),
            );
        }
        // The route name is substituted at load: the result must be a
        // header value too.
        if parts.contains(&Part::Route) && http::HeaderValue::from_str(self.route_name).is_err() {
            return Err("the route's name is not a valid header value".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::config::Config;

    #[test]
    fn templates_parse_placeholders_and_escaped_braces() {
        assert_eq!(
            parse_template("id={request_id} ip={client_ip} r={route} u={claim.sub}{{x}}").unwrap(),
            vec![
                Part::Lit("id=".into()),
                Part::RequestId,
                Part::Lit(" ip=".into()),
                Part::ClientIp,
                Part::Lit(" r=".into()),
                Part::Route,
                Part::Lit(" u=".into()),
                Part::Claim("sub".into()),
                Part::Lit("{x}".into()),
            ]
        );
        assert_eq!(
            parse_template("{claim.https://example.com/tenant}").unwrap(),
            vec![Part::Claim("https://example.com/tenant".into())]
        );
        assert_eq!(parse_template("").unwrap(), vec![]);
        for bad in [
            "{nope}",
            "{claim.}",
            "{request_id",
            "a}b",
            "caf\u{e9}",
            "a\nb",
            "{}",
        ] {
            assert!(parse_template(bad).is_err(), "{bad:?} parsed");
        }
    }

    proptest::proptest! {
        /// Any text parses or is refused with a message, never a panic;
        /// plain text without braces is one literal, itself.
        #[test]
        fn templates_never_panic(s in "\\PC{0,40}", plain in "[ -z|~\t]{1,40}") {
            let _ = parse_template(&s);
            proptest::prop_assert_eq!(parse_template(&plain).unwrap(), vec![Part::Lit(plain.clone())]);
        }
    }

    #[test]
    fn config_validation_reports_edge_errors_with_their_key_paths() {
        let c = Config::from_toml(
            r#"
            [upstreams.u]
            endpoints = ["127.0.0.1:1"]
            [[routes]]
            name = "r"
            prefix = "/"
            upstream = "u"
            cors = { allow_origins = ["*"], allow_credentials = true }
            response_headers = { set = { "X-A" = "{nope}" } }
            "#,
        )
        .unwrap();
        let e = crate::config::validate::validate(&c)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("routes[0].cors.allow_origins: \"*\" cannot be combined"),
            "{e}"
        );
        assert!(
            e.contains("routes[0].response_headers.set.\"X-A\": unknown placeholder"),
            "{e}"
        );
    }

    fn errors(route_extra: &str) -> Vec<String> {
        let text = format!(
            r#"
            [auth.jwt]
            forward_claims = {{ sub = "X-User-Id" }}
            [[auth.jwt.keys]]
            algorithms = ["HS256"]
            secret_env = "UNUSED_IN_THIS_TEST"
            [upstreams.u]
            endpoints = ["127.0.0.1:1"]
            [[routes]]
            name = "r"
            prefix = "/"
            upstream = "u"
            {route_extra}
            "#
        );
        let c = Config::from_toml(&text).unwrap();
        check_route(&c.routes[0], &c.auth)
            .into_iter()
            .map(|(k, m)| format!("routes[0].{k}: {m}"))
            .collect()
    }

    #[test]
    fn a_good_policy_and_rules_pass() {
        let e = errors(
            r#"
            auth = { provider = "jwt" }
            cors = { allow_origins = ["https://app.example.com", "http://127.0.0.1:8080"], allow_methods = ["GET", "PUT"], allow_headers = ["X-Custom", "Authorization"], expose_headers = ["X-Request-Id"], allow_credentials = true, max_age = "10m" }
            request_headers = { add = { "X-Tenant" = "{claim.tenant}" }, set = { "X-Route" = "{route}" }, remove = ["Cookie"] }
            response_headers = { add = { "Vary" = "Accept" }, set = { "X-Served-By" = "gw {request_id}" }, remove = ["Server"] }
            "#,
        );
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn wildcard_with_credentials_names_the_key() {
        let e = errors(
            r#"cors = { allow_origins = ["*"], allow_headers = ["*"], allow_credentials = true }"#,
        );
        assert!(
            e.iter().any(|m| m.starts_with(
                "routes[0].cors.allow_origins: \"*\" cannot be combined with allow_credentials"
            )),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("routes[0].cors.allow_headers: ")),
            "{e:?}"
        );
        assert!(errors(r#"cors = { allow_origins = ["*"] }"#).is_empty());
    }

    #[test]
    fn origins_must_be_scheme_host_port() {
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://*.example.com",
            "https://user@app.example.com",
            "https://",
            "https://app.example.com:",
            "://x",
        ] {
            let e = errors(&format!(
                r#"cors = {{ allow_origins = ["https://ok.example", "{bad}"] }}"#
            ));
            assert_eq!(e.len(), 1, "{bad}: {e:?}");
            assert!(
                e[0].starts_with("routes[0].cors.allow_origins[1]: invalid origin"),
                "{e:?}"
            );
        }
        for good in [
            "https://app.example.com",
            "http://127.0.0.1:3000",
            "http://[::1]:8080",
        ] {
            let e = errors(&format!(r#"cors = {{ allow_origins = ["{good}"] }}"#));
            assert!(e.is_empty(), "{good}: {e:?}");
        }
    }

    #[test]
    fn cors_lists_are_checked() {
        let e = errors(
            r#"cors = { allow_origins = [], allow_methods = ["G E T"], allow_headers = ["bad header"], max_age = "2d" }
            methods = ["GET"]"#,
        );
        for key in [
            "routes[0].cors.allow_origins: ",
            "routes[0].cors.allow_methods[0]: ",
            "routes[0].cors.allow_headers[0]: ",
            "routes[0].cors.max_age: ",
            "routes[0].methods: ",
        ] {
            assert!(e.iter().any(|m| m.starts_with(key)), "{key} missing: {e:?}");
        }
    }

    #[test]
    fn rules_cannot_touch_owned_headers() {
        let e = errors(
            r#"
            auth = { provider = "jwt" }
            cors = { allow_origins = ["*"] }
            request_headers = { set = { "Connection" = "x", "Host" = "x", "X-User-Id" = "x", "X-Forwarded-For" = "x", "bad name" = "x" }, remove = ["x-request-id", "Transfer-Encoding"] }
            response_headers = { set = { "Access-Control-Allow-Origin" = "*", "Vary" = "x" }, remove = ["Content-Length"] }
            "#,
        );
        for key in [
            r#"routes[0].request_headers.set."Connection": a hop-by-hop"#,
            r#"routes[0].request_headers.set."Host": Host"#,
            r#"routes[0].request_headers.set."X-User-Id": "X-User-Id" is an identity header"#,
            r#"routes[0].request_headers.set."X-Forwarded-For": "#,
            r#"routes[0].request_headers.set."bad name": "#,
            r#"routes[0].request_headers.remove[0]: X-Request-Id"#,
            r#"routes[0].request_headers.remove[1]: a hop-by-hop"#,
            r#"routes[0].response_headers.set."Access-Control-Allow-Origin": "#,
            r#"routes[0].response_headers.set."Vary": "#,
            r#"routes[0].response_headers.remove[0]: Content-Length"#,
        ] {
            assert!(e.iter().any(|m| m.starts_with(key)), "{key} missing: {e:?}");
        }
        assert_eq!(e.len(), 10, "{e:?}");
        // Identity headers are request-side only; CORS headers are free
        // without a cors policy.
        let e = errors(
            r#"response_headers = { set = { "X-User-Id" = "x", "Access-Control-Allow-Origin" = "*" } }"#,
        );
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn values_and_duplicates_are_checked() {
        let e = errors(
            r#"
            request_headers = { add = { "X-A" = "{claim.sub}", "X-B" = "{oops}", "x-c" = "1" }, set = { "X-C" = "2" } }
            response_headers = { add = { "X-D" = "bad\u00e9" } }
            "#,
        );
        for key in [
            r#"routes[0].request_headers.add."X-A": {claim.NAME} needs the route to verify tokens"#,
            r#"routes[0].request_headers.add."X-B": unknown placeholder {oops}"#,
            r#"routes[0].request_headers.add."x-c": "x-c" is already in request_headers.set"#,
            r#"routes[0].response_headers.add."X-D": character"#,
        ] {
            assert!(e.iter().any(|m| m.starts_with(key)), "{key} missing: {e:?}");
        }
        assert_eq!(e.len(), 4, "{e:?}");
    }
}
